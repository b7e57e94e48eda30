//! Benchmark of `drainscaler simulate --tune`: a 7-day trace at 15 s steps (40,321 rows, a
//! daily cycle with a weekly swell, up to about 40 instances), the chat policy, the command's
//! defaults (budget, threads; sessions stepped every `TUNE_SESSION_STEP`, default 1s). One
//! search takes tens of seconds, so it is timed once, not sampled; it prints the figures and
//! the load average. The target is under a minute.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use drainscaler::check::single_resource;
use drainscaler::policy::parse_duration;
use drainscaler::simulate::trace::Trace;
use drainscaler::simulate::tune::{TuneOptions, table, tune};
use drainscaler::simulate::{Options, prepare};

/// The chat policy: scale on requests and sessions, never cut a session.
const POLICY: &str = r#"
apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: chat, namespace: demo}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: chat}
  minReplicas: 2
  maxReplicas: 100
  interval: 15s
  metrics:
    - name: rps
      prometheus: {query: "sum(rate(app_requests_total[1m]))"}
      target: {type: AverageValue, averageValue: "100"}
    - name: sessions
      sessions: {}
      target: {type: AverageValue, averageValue: 60}
  heartbeat: {source: Push, timeout: 30s}
  drain: {timeout: 30m, onTimeout: Keep}
  behavior:
    scaleDown: {stabilizationWindowSeconds: 300}
"#;

/// Seven days at 15 s: load follows a daily sine from 5% to 100% of a peak that swells over
/// the week; at the top, 5 arrivals/s for 10 minutes each need about 40 instances.
fn week() -> String {
    let mut csv = String::from("time,rps,arrivals\n");
    for row in 0..=7 * 24 * 60 * 4 {
        let t = f64::from(row) * 15.0;
        let daily = 0.525 - 0.475 * (t / 86_400.0 * std::f64::consts::TAU).cos();
        let weekly = 0.8 + 0.2 * (t / (7.0 * 86_400.0) * std::f64::consts::PI).sin();
        let load = daily * weekly;
        let _ = writeln!(csv, "{},{:.2},{:.4}", row * 15, 3_000.0 * load, 5.0 * load);
    }
    csv
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names nothing here skips the run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"tune".contains(&a))
    {
        return;
    }
    let session_step = std::env::var("TUNE_SESSION_STEP")
        .ok()
        .map(|s| parse_duration(&s).expect("TUNE_SESSION_STEP is a duration such as 1s"))
        .unwrap_or(Duration::from_secs(1));
    let (resource, policy) = single_resource(POLICY).expect("valid policy");
    let trace = Trace::parse("week.csv", &week()).expect("valid trace");
    let options = Options {
        step: session_step,
        ..Options::default()
    };
    let prepared = prepare(&policy, &trace, &options).expect("prepared");
    let tune_options = TuneOptions::default();
    println!(
        "tune: {} rows (7 days at 15s), sessions every {}s, budget {}, {} threads, load average before: {}",
        trace.times.len(),
        session_step.as_secs_f64(),
        tune_options.budget,
        tune_options.threads,
        load_average()
    );
    let started = Instant::now();
    let tuned = tune(&resource, &policy, &prepared, &trace, &tune_options).expect("tunes");
    let took = started.elapsed();
    print!("{}", table(&tuned));
    assert!(
        tuned.best().is_some(),
        "the bench's policy has an acceptable variant"
    );
    println!(
        "tune: {} variants in {:.1} s ({:.0} ms each, wall), load average after: {}",
        tuned.tried.len(),
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / tuned.tried.len() as f64,
        load_average()
    );
}
