//! The command line: `run`, `crd`, `check`, `simulate`; and, invoked as `kubectl-drainscaler`,
//! the kubectl plugin. The only anyhow.

use std::io::{BufWriter, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::Timestamp;
use kube::CustomResourceExt;

use drainscaler::api::ScalingPolicy;
use drainscaler::check;
use drainscaler::controller::{self, RunConfig};
use drainscaler::fence::{DeadlineLayer, FenceLayer};
use drainscaler::health::{Health, HealthLimits};
use drainscaler::leader::{API_DEADLINE, Elector, Leadership};
use drainscaler::listener::{self, ConnLimits, ReloadingCert};
use drainscaler::metrics::{ApiLayer, Metrics};
use drainscaler::names::{FIELD_MANAGER, LEADER_LABEL};
use drainscaler::observe::heartbeats::Heartbeats;
use drainscaler::observe::prometheus::Prometheus;
use drainscaler::plugin::render::{Paint, render_all};
use drainscaler::plugin::{self, PluginError, Scope};
use drainscaler::policy::parse_duration;
use drainscaler::server::{self, RequestLimits, ServerState};
use drainscaler::simulate::history;
use drainscaler::simulate::plot::{self, Format};
use drainscaler::simulate::trace::Trace;
use drainscaler::simulate::tune::{self, TuneOptions};
use drainscaler::simulate::{self, Options};
use drainscaler::tokens::{self, KubeReviewer, SystemClock, TokenCache};

/// A Kubernetes autoscaler that drains session-holding instances before removing them.
#[derive(Parser)]
#[command(name = "drainscaler", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: reconcile ScalingPolicies and take heartbeats.
    Run(RunArgs),
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
#[command(group(clap::ArgGroup::new("source").required(true).args(["trace", "prometheus"])))]
struct SimulateArgs {
    /// The ScalingPolicy to try (a YAML file with exactly one).
    #[arg(long, value_name = "POLICY.yaml")]
    policy: PathBuf,
    /// CSV with a header: `time` (seconds or timestamps), then one column per metric by name,
    /// and optionally `arrivals` (new sessions per second).
    #[arg(long, value_name = "TRACE.csv")]
    trace: Option<PathBuf>,
    /// Build the trace from this Prometheus's history instead: each of the policy's
    /// Prometheus metrics read with its own query over --since, a column by the metric's name.
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// With --prometheus: how far back to read, such as 7d, 36h or 90m.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = since, requires = "prometheus")]
    since: Duration,
    /// With --prometheus: the end of the range, in RFC 3339 [default: now].
    #[arg(long, value_name = "TIME", requires = "prometheus")]
    until: Option<Timestamp>,
    /// With --prometheus: the resolution of the trace, one row per step. (How often sessions
    /// arrive and end is --session-step.)
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = duration, requires = "prometheus")]
    step: Duration,
    /// With --prometheus: a query for new sessions per second, the trace's `arrivals`, such
    /// as sum(rate(app_sessions_opened_total[1m])). Without it no sessions are simulated.
    #[arg(long, value_name = "PROMQL", requires = "prometheus")]
    arrivals_query: Option<String>,
    /// With --prometheus: also write the fetched trace to this CSV, to run again with --trace.
    #[arg(long, value_name = "FILE", requires = "prometheus")]
    save_trace: Option<PathBuf>,
    /// With --prometheus: the longest one page of a query may take.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration, requires = "prometheus")]
    query_timeout: Duration,
    /// Seed for session lengths (and the tuner's search); the same seed gives the same output.
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
    session_step: Duration,
    /// `table` for people; `json` for scripts (its field names are stable).
    #[arg(long, value_enum, default_value_t = OutputFormat::Table, conflicts_with = "tune")]
    output: OutputFormat,
    /// Also draw the runs to this file (.svg or .png).
    #[arg(long, value_name = "OUT.svg|OUT.png", conflicts_with = "tune")]
    plot: Option<PathBuf>,
    /// Search the policy's knobs (metric targets, stabilization windows, rate policies, drain
    /// timeout and onTimeout) on the trace, and print the cheapest variants that drop no
    /// session and reject at most --max-rejected.
    #[arg(long)]
    tune: bool,
    /// With --tune: the most sessions a variant may reject.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "tune")]
    max_rejected: u64,
    /// With --tune: write the cheapest variant to this file as a ScalingPolicy.
    #[arg(long, value_name = "FILE", requires = "tune")]
    write_policy: Option<PathBuf>,
    /// With --tune: the most variants to run.
    #[arg(long, value_name = "N", default_value_t = TuneOptions::default().budget, requires = "tune")]
    tune_budget: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

fn duration(raw: &str) -> Result<Duration, String> {
    parse_duration(raw)
}

/// A duration that may also be in days, as `--since 7d`.
fn since(raw: &str) -> Result<Duration, String> {
    match raw.strip_suffix('d').map(str::parse::<u64>) {
        Some(Ok(days)) => Ok(Duration::from_secs(days.saturating_mul(86_400))),
        _ => parse_duration(raw).map_err(|why| format!("{why}; days are written such as 7d")),
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// Prometheus for policies without spec.prometheus, such as http://prometheus.monitoring:9090.
    #[arg(long, env = "DRAINSCALER_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// On a Prometheus shared by tenants: every series selector of a policy's queries must
    /// match this label (such as `namespace`) with the policy's own namespace. Enforced on the
    /// parsed PromQL; a query that selects another value of the label is refused.
    #[arg(long, env = "DRAINSCALER_PROMETHEUS_NAMESPACE_LABEL")]
    prometheus_namespace_label: Option<String>,
    /// Address for heartbeats (POST /v1/heartbeats) and nothing else.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Address for /metrics, /healthz and /readyz, apart from heartbeats so that a
    /// NetworkPolicy can open one port without the other.
    #[arg(long, default_value = "0.0.0.0:8081")]
    metrics_listen: SocketAddr,
    /// PEM certificate (chain) for TLS on the heartbeat port; read again when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// How often the TLS files are checked for a change.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    tls_reload_period: Duration,
    /// Heartbeat connections open at once; more are closed on accept.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_connections: usize,
    /// Heartbeats handled at once; more are answered 503.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_concurrent_heartbeats: usize,
    /// The longest until a request's headers are in, counted from when the connection is
    /// ready for it: this is also how long a kept-alive connection may stay idle.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    header_read_timeout: Duration,
    /// The longest to receive a heartbeat's body once its headers are in.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    body_read_timeout: Duration,
    /// TokenReviews in flight at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    max_concurrent_token_reviews: usize,
    /// TokenReviews per second for tokens never accepted before (a pod renewing its cached
    /// token is not limited); the burst is four times this.
    #[arg(long, value_name = "N", default_value_t = 50)]
    token_reviews_per_second: u32,
    /// Watch ScalingPolicies and pods in this namespace only.
    #[arg(long)]
    namespace: Option<String>,
    /// The Lease that elects the leader.
    #[arg(long, default_value = "drainscaler")]
    lease_name: String,
    /// The Lease's namespace (default: this pod's namespace, from POD_NAMESPACE or its
    /// ServiceAccount; outside a cluster, the kubeconfig context's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's pod, labelled as leader so that the heartbeat Service selects it.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Policies reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Accept unauthenticated heartbeats that name their pod ({"pod": "ns/name"}). Development only.
    #[arg(long)]
    insecure_dev_heartbeats: bool,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// `kubectl drainscaler`: what drainscaler sees of a policy (or of every policy in a
/// namespace) in one screen. kubectl runs it as `kubectl-drainscaler` from the PATH.
#[derive(Parser)]
#[command(name = "kubectl-drainscaler", version)]
struct PluginCli {
    /// The ScalingPolicy to show; every one in the namespace when absent.
    name: Option<String>,
    /// The namespace [default: the context's].
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// `text` for people; `json` for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = PluginOutput::Text)]
    output: PluginOutput,
    /// The kubeconfig context to use [default: the current one].
    #[arg(long)]
    context: Option<String>,
    /// The kubeconfig file [default: KUBECONFIG, else ~/.kube/config, else in-cluster].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Read saved objects instead of the cluster, such as the output of
    /// `kubectl get scalingpolicy,pods,events -o yaml` (`-` reads standard input). Without
    /// `-n`, every policy in the file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["context", "kubeconfig"])]
    from_file: Option<PathBuf>,
    /// Count ages from this RFC 3339 time instead of the clock, such as when the file was saved.
    #[arg(long, value_name = "TIME")]
    now: Option<Timestamp>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PluginOutput {
    Text,
    Json,
}

/// Whether this process was started under the plugin's name (a symlink or a copy).
fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .is_some_and(|stem| stem == "kubectl-drainscaler")
}

fn main() -> ExitCode {
    if invoked_as_plugin() {
        return match kubectl_plugin(&PluginCli::parse()) {
            Ok(code) => code,
            // A PluginError names its cause already.
            Err(e) if e.downcast_ref::<PluginError>().is_some() => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
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
        Command::Run(args) => {
            limit_malloc_arenas();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(daemon(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { files } => check_files(&files),
        Command::Simulate(args) => simulate_trace(&args),
    }
}

/// At most two malloc arenas rather than glibc's default of eight per core: the controller's
/// threads share long-lived caches, and every arena keeps the pages freed in it (measured with
/// `benches/controller.sh`, see the README). Before any thread starts.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: mallopt changes allocator settings only; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

/// Gives the pages malloc holds free back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only returns free memory; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

fn kubectl_plugin(cli: &PluginCli) -> anyhow::Result<ExitCode> {
    let now = cli.now.unwrap_or_else(Timestamp::now);
    let (objects, scope) = match &cli.from_file {
        Some(path) => {
            let shown = path.display().to_string();
            let text = if shown == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(path)
            }
            .map_err(|source| PluginError::ReadFile {
                path: shown.clone(),
                source,
            })?;
            let scope = match &cli.namespace {
                Some(ns) => Scope::Namespace(ns.clone()),
                None => Scope::All,
            };
            (plugin::from_text(&shown, &text)?, scope)
        }
        None => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(from_cluster(cli))?
        }
    };
    let views = plugin::views(&objects, &scope, cli.name.as_deref())?;
    let text = match cli.output {
        PluginOutput::Json => plugin::to_json(&views).context("rendering JSON")?,
        PluginOutput::Text if views.is_empty() => {
            eprintln!("{}", plugin::none_found(&scope));
            String::new()
        }
        PluginOutput::Text => {
            let stdout = std::io::stdout();
            let colour =
                stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            render_all(&views, now, Paint { on: colour })
        }
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.context("writing the view")?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn from_cluster(cli: &PluginCli) -> Result<(plugin::objects::Objects, Scope), PluginError> {
    // kube shares rustls; ring is the one provider compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let conn = plugin::connect(cli.kubeconfig.as_deref(), cli.context.as_deref()).await?;
    let scope = match (&cli.namespace, cli.all_namespaces) {
        (_, true) => Scope::All,
        (Some(ns), false) => Scope::Namespace(ns.clone()),
        (None, false) => Scope::Namespace(conn.namespace.clone()),
    };
    let objects = plugin::load(&conn.client, &conn.url, &scope, cli.name.as_deref()).await?;
    Ok((objects, scope))
}

fn simulate_trace(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.plot {
        Format::of(path)?;
    }
    let policy_file = args.policy.display().to_string();
    let yaml = read(&args.policy)?;
    let (name, policy) = simulate::load_policy(&policy_file, &yaml)?;
    let (trace, origin) = match (&args.trace, &args.prometheus) {
        (Some(path), _) => {
            let file = path.display().to_string();
            (Trace::parse(&file, &read(path)?)?, file)
        }
        (None, Some(url)) => trace_from_prometheus(args, &policy, url)?,
        (None, None) => anyhow::bail!("give --trace FILE or --prometheus URL"),
    };
    let options = Options {
        seed: args.seed,
        initial_replicas: args.initial_replicas,
        startup: args.startup,
        capacity: args.capacity,
        session_length: args.session_length,
        step: args.session_step,
    };
    if args.tune {
        return tune_policy(args, &yaml, &policy_file, &trace, &origin, &options);
    }
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
    finish_output(written)?;
    Ok(ExitCode::SUCCESS)
}

/// A reader that stopped early (`| head`) is not an error.
fn finish_output(written: std::io::Result<()>) -> anyhow::Result<()> {
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}

/// `simulate --prometheus`: the trace from the policy's queries over the range, saved when
/// asked; and words for where it came from.
fn trace_from_prometheus(
    args: &SimulateArgs,
    policy: &drainscaler::policy::Policy,
    url: &str,
) -> anyhow::Result<(Trace, String)> {
    let prometheus = Prometheus::plain(url)
        .context("--prometheus")?
        .with_timeout(args.query_timeout);
    let columns = history::columns(policy, args.arrivals_query.as_deref());
    let until = args.until.unwrap_or_else(Timestamp::now).as_millisecond();
    let range = history::Range::ending(until, args.since, args.step)?;
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |p: &history::Progress<'_>| {
        if terminal {
            eprint!(
                "\r\x1b[Kreading {} from {url}: page {}/{}",
                p.column, p.done, p.total
            );
            if p.done == p.total {
                eprintln!();
            }
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let fetched = runtime.block_on(history::fetch(&prometheus, &columns, range, &mut progress));
    if terminal && fetched.is_err() {
        eprintln!();
    }
    let fetched = fetched?;
    for note in &fetched.notes {
        eprintln!("note: {note}");
    }
    if let Some(path) = &args.save_trace {
        std::fs::write(path, history::to_csv(&fetched.trace))
            .with_context(|| format!("writing --save-trace {}", path.display()))?;
        eprintln!(
            "saved the trace to {} ({} rows); run it again with --trace {}",
            path.display(),
            fetched.trace.times.len(),
            path.display()
        );
    }
    let origin = format!(
        "{url} from {} to {} every {}",
        history::rfc3339(range.start_ms),
        history::rfc3339(range.end_ms),
        drainscaler::policy::fmt_duration(args.step)
    );
    Ok((fetched.trace, origin))
}

/// `simulate --tune`: the Pareto table, and the cheapest variant written when asked.
fn tune_policy(
    args: &SimulateArgs,
    yaml: &str,
    policy_file: &str,
    trace: &Trace,
    origin: &str,
    options: &Options,
) -> anyhow::Result<ExitCode> {
    let (resource, policy) = drainscaler::check::single_resource(yaml).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(|e| format!("{policy_file}: {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    let prepared = simulate::prepare(&policy, trace, options)?;
    for note in &prepared.notes {
        eprintln!("note: {note}");
    }
    let tune_options = TuneOptions {
        seed: args.seed,
        max_rejected: args.max_rejected,
        budget: args.tune_budget,
        ..TuneOptions::default()
    };
    let tuned = tune::tune(&resource, &policy, &prepared, trace, &tune_options)?;
    let acceptable = tuned.front.len();
    let mut out = BufWriter::new(std::io::stdout().lock());
    let summary = format!(
        "{} variants of {policy_file} run on {} rows ({origin}), seed {}: {acceptable} on the front of those that drop no session and reject at most {}\n",
        tuned.tried.len(),
        trace.times.len(),
        args.seed,
        args.max_rejected
    );
    let written = out
        .write_all(summary.as_bytes())
        .and_then(|()| out.write_all(tune::table(&tuned).as_bytes()))
        .and_then(|()| out.flush());
    finish_output(written)?;
    let Some(best) = tuned.best() else {
        eprintln!(
            "error: no variant dropped no session and rejected at most {} sessions; raise --max-rejected, --tune-budget or maxReplicas",
            args.max_rejected
        );
        return Ok(ExitCode::FAILURE);
    };
    if let Some(path) = &args.write_policy {
        let text = tune::policy_yaml(&tuned, best, origin)
            .map_err(|e| anyhow::anyhow!("rendering the tuned policy: {e}"))?;
        std::fs::write(path, text)
            .with_context(|| format!("writing --write-policy {}", path.display()))?;
        eprintln!("wrote variant 1 to {}", path.display());
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

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `drainscaler run`: serve, win the lease, reconcile until terminated or the lease is lost.
async fn daemon(args: RunArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    // kube and the Prometheus client share rustls; ring is the one provider compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Arc::new(Metrics::default());
    let leadership = Leadership::monotonic();
    let (client, fenced) = api_clients(&metrics, &leadership)
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let prometheus = args
        .prometheus_url
        .as_deref()
        .map(Prometheus::plain)
        .transpose()
        .context("--prometheus-url")?;
    let heartbeats = Heartbeats::default();
    let tokens = TokenCache::new(
        Arc::new(KubeReviewer::new(client.clone())),
        Arc::new(SystemClock),
        tokens::Limits {
            concurrent_reviews: args.max_concurrent_token_reviews,
            unknown_per_second: args.token_reviews_per_second,
            unknown_burst: args.token_reviews_per_second.saturating_mul(4),
            ..tokens::Limits::default()
        },
        Arc::clone(&metrics),
    );
    let state = Arc::new(ServerState::new(
        tokens,
        heartbeats.clone(),
        Arc::clone(&metrics),
        args.insecure_dev_heartbeats,
        &RequestLimits {
            body_read_timeout: args.body_read_timeout,
            concurrent_requests: args.max_concurrent_heartbeats,
        },
    ));
    state.follow(leadership.clone());
    if args.insecure_dev_heartbeats {
        tracing::warn!("accepting unauthenticated heartbeats (--insecure-dev-heartbeats)");
    }
    let health = Arc::new(Health::new(HealthLimits::default()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cert = Arc::new(ReloadingCert::load(cert, key).context("--tls-cert-file")?);
            cert.watch(args.tls_reload_period);
            Some(cert.acceptor().context("--tls-cert-file")?)
        }
        _ => None,
    };
    let limits = ConnLimits {
        max_connections: args.max_connections,
        header_read_timeout: args.header_read_timeout,
        ..ConnLimits::default()
    };
    let heartbeat_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let ops_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("--metrics-listen {}", args.metrics_listen))?;
    tracing::info!(
        heartbeats = %args.listen,
        tls = tls.is_some(),
        metrics = %args.metrics_listen,
        "serving heartbeats, and metrics and probes"
    );
    let server_task = tokio::spawn(listener::serve(
        heartbeat_listener,
        server::heartbeat_router(Arc::clone(&state)),
        limits.clone(),
        tls,
        Arc::clone(&metrics),
        stopped(),
    ));
    let ops_task = tokio::spawn(listener::serve(
        ops_listener,
        server::ops_router(Arc::clone(&metrics), Arc::clone(&health)),
        ConnLimits {
            max_connections: 64,
            ..limits
        },
        None,
        Arc::clone(&metrics),
        stopped(),
    ));
    tokio::spawn(async move {
        terminated().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = args.pod_name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "drainscaler".to_owned()),
            std::process::id()
        )
    });
    let own_pod = args
        .pod_name
        .as_ref()
        .map(|name| (lease_namespace.clone(), name.clone()));
    label_leader(&client, own_pod.as_ref(), false).await;
    let elector = Elector::new(
        client.clone(),
        &lease_namespace,
        &args.lease_name,
        &identity,
        leadership.clone(),
    );
    tracing::info!(identity, lease = args.lease_name, "waiting for the lease");
    tokio::select! {
        _ = elector.acquire() => {},
        _ = stopped() => {
            let _ = tokio::join!(server_task, ops_task);
            return Ok(());
        }
    }
    tracing::info!(identity, "leading");
    metrics.leading(true);
    let renewals = leadership.clone();
    health.leading(renewals.now(), Some(Box::new(move |now| renewals.age(now))));
    label_leader(&client, own_pod.as_ref(), true).await;

    let config = RunConfig {
        namespace: args.namespace.clone(),
        concurrency: args.concurrency,
        prometheus,
        prometheus_namespace_label: args.prometheus_namespace_label.clone(),
        reporter_instance: args.pod_name.clone(),
        health: Arc::clone(&health),
        leadership,
    };
    let lead_state = Arc::clone(&state);
    let lead_health = Arc::clone(&health);
    // The elector first: a process woken from a freeze finds its renewal overdue and stops
    // before the controller goes on with a reconcile that was under way.
    let lost = tokio::select! {
        biased;
        _ = elector.hold() => true,
        result = controller::run(
            fenced,
            config,
            heartbeats,
            Arc::clone(&metrics),
            move |pods| {
                lead_state.lead(pods);
                lead_health.synced();
                // Filling the pod cache parsed every page of the first list; those buffers are
                // free now, and the cache lasts.
                release_free_memory();
            },
            stopped(),
        ) => {
            result.map_err(|e| anyhow::anyhow!(e))?;
            false
        }
    };
    // Leadership is over (`hold` returned, or `release` below): no heartbeat is answered from
    // here on, and the fenced client writes nothing.
    state.unlead();
    metrics.leading(false);
    health.standing_by();
    label_leader(&client, own_pod.as_ref(), false).await;
    if lost {
        anyhow::bail!("lost the lease; exiting so that a fresh replica takes part again");
    }
    elector.release().await;
    let _ = tokio::join!(server_task, ops_task);
    Ok(())
}

/// Two clients for the API server that count every request they send on `metrics` and give
/// each call but a watch `API_DEADLINE`: one for the lease, the leader label and token reviews,
/// and one fenced by `leadership` for everything the controller writes.
async fn api_clients(
    metrics: &Arc<Metrics>,
    leadership: &Leadership,
) -> anyhow::Result<(kube::Client, kube::Client)> {
    let config = kube::Config::infer().await?;
    let plain = kube::client::ClientBuilder::try_from(config.clone())?
        .with_layer(&ApiLayer(Arc::clone(metrics)))
        .with_layer(&DeadlineLayer(API_DEADLINE))
        .build();
    let fenced = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&ApiLayer(Arc::clone(metrics)))
        .with_layer(&FenceLayer {
            leadership: leadership.clone(),
            metrics: Arc::clone(metrics),
        })
        .with_layer(&DeadlineLayer(API_DEADLINE))
        .build();
    Ok((plain, fenced))
}

/// Sets this replica's leader label, so that the heartbeat Service routes to the leader only.
async fn label_leader(client: &kube::Client, pod: Option<&(String, String)>, leading: bool) {
    let Some((namespace, name)) = pod else {
        return;
    };
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"labels": {LEADER_LABEL: leading.to_string()}}});
    let params = kube::api::PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..kube::api::PatchParams::default()
    };
    if let Err(e) = pods
        .patch(name, &params, &kube::api::Patch::Merge(&patch))
        .await
    {
        tracing::warn!(error = %e, pod = name, "could not set the leader label");
    }
}
