//! The command line: `crd`, `check`, `simulate` (and `run` as it lands). The only anyhow.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;

use drainscaler::api::ScalingPolicy;
use drainscaler::check;
use drainscaler::policy::parse_duration;
use drainscaler::simulate::plot::{self, Format};
use drainscaler::simulate::trace::Trace;
use drainscaler::simulate::{self, Options};

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
    /// Replay a traffic trace through a policy with the real engine, beside the HPA and an
    /// oracle, and report cost, sessions and drains.
    Simulate(SimulateArgs),
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// The ScalingPolicy to try (a YAML file with exactly one).
    #[arg(long, value_name = "POLICY.yaml")]
    policy: PathBuf,
    /// CSV with a header: `time` (seconds or timestamps), then one column per metric by name,
    /// and optionally `arrivals` (new sessions per second).
    #[arg(long, value_name = "TRACE.csv")]
    trace: PathBuf,
    /// Seed for session lengths; the same seed gives the same output.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Replicas at the start [default: minReplicas].
    #[arg(long, value_name = "N")]
    initial_replicas: Option<u32>,
    /// From a pod's creation to its readiness.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    startup: Duration,
    /// Sessions one instance holds at most.
    #[arg(long, value_name = "N", default_value_t = 100)]
    capacity: u32,
    /// Mean session length (exponentially distributed).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration)]
    session_length: Duration,
    /// How often sessions arrive and end.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration)]
    step: Duration,
    /// `table` for people; `json` for scripts (its field names are stable).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// Also draw the runs to this file (.svg or .png).
    #[arg(long, value_name = "OUT.svg|OUT.png")]
    plot: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

fn duration(raw: &str) -> Result<Duration, String> {
    parse_duration(raw)
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
        Command::Simulate(args) => simulate_trace(&args),
    }
}

fn simulate_trace(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.plot {
        Format::of(path)?;
    }
    let policy_file = args.policy.display().to_string();
    let yaml = read(&args.policy)?;
    let (name, policy) = simulate::load_policy(&policy_file, &yaml)?;
    let trace_file = args.trace.display().to_string();
    let trace = Trace::parse(&trace_file, &read(&args.trace)?)?;
    let options = Options {
        seed: args.seed,
        initial_replicas: args.initial_replicas,
        startup: args.startup,
        capacity: args.capacity,
        session_length: args.session_length,
        step: args.step,
    };
    let sim = simulate::simulate(&name, &policy, &trace, &options)?;
    if let Some(path) = &args.plot {
        plot::render(path, &sim, &policy, &trace)?;
    }
    for note in &sim.notes {
        eprintln!("note: {note}");
    }
    let report = sim.report();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = match args.output {
        OutputFormat::Table => out.write_all(report.table().as_bytes()),
        OutputFormat::Json => report.write_json(&mut out).map_err(std::io::Error::from),
    }
    .and_then(|()| out.flush());
    match written {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the report")?,
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
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
