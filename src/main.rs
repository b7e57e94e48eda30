//! The command line: `crd`, `check` (and `run`, `simulate` as they land). The only anyhow.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;

use drainscaler::api::ScalingPolicy;
use drainscaler::check;

/// A Kubernetes autoscaler that drains session-holding instances before removing them.
#[derive(Parser)]
#[command(name = "drainscaler", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ScalingPolicy CustomResourceDefinition as YAML.
    Crd,
    /// Validate ScalingPolicy files offline and explain what is wrong.
    Check {
        /// YAML files with one or more documents; `-` reads standard input.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { files } => check_files(&files),
    }
}

fn crd_yaml() -> anyhow::Result<String> {
    serde_saphyr::to_string(&ScalingPolicy::crd()).context("rendering the CRD as YAML")
}

fn check_files(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for path in files {
        let shown = path.display().to_string();
        let text = if shown == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading standard input")?
        } else {
            std::fs::read_to_string(path).with_context(|| format!("reading {shown}"))?
        };
        match check::check(&text) {
            Ok(report) => {
                for line in report.lines(&shown) {
                    println!("{line}");
                }
                ok &= report.ok();
            }
            Err(why) => {
                println!("{shown}: {why}");
                ok = false;
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
