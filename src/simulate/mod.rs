//! `drainscaler simulate`: replays a traffic trace through a policy with the real engine and a
//! synthetic clock, beside two baselines (`hpa`, `oracle`); and `tune`, which searches a
//! policy's knobs on a trace. Pure apart from the caller reading the files, `plot::render`
//! writing the picture and `history::fetch` reading Prometheus.

pub mod history;
pub mod plot;
pub mod report;
pub mod runs;
pub mod sessions;
pub mod trace;
pub mod tune;
pub mod world;

use std::time::Duration;

use crate::check;
use crate::policy::{MetricTarget, Policy, Source, fmt_duration, fmt_number};
use crate::simulate::report::Report;
use crate::simulate::runs::{Outcomes, Setup, run_all};
use crate::simulate::trace::{Trace, TraceError};

/// The name of the trace column that holds new sessions per second.
pub const ARRIVALS_COLUMN: &str = "arrivals";

/// The knobs of a simulation, as the command line gives them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub seed: u64,
    /// `minReplicas` when absent.
    pub initial_replicas: Option<u32>,
    /// From a pod's creation to its readiness.
    pub startup: Duration,
    /// Sessions one instance holds at most.
    pub capacity: u32,
    /// The mean of the exponential session length.
    pub session_length: Duration,
    /// How often sessions arrive and end.
    pub step: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            seed: 1,
            initial_replicas: None,
            startup: Duration::from_secs(30),
            capacity: 100,
            session_length: Duration::from_secs(600),
            step: Duration::from_secs(1),
        }
    }
}

/// What went wrong, by step.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The policy file is not one valid ScalingPolicy.
    #[error("{}", .errors.iter().map(|e| format!("{file}: {e}")).collect::<Vec<_>>().join("\n"))]
    LoadPolicy { file: String, errors: Vec<String> },
    /// The trace does not parse, or does not fit the policy.
    #[error(transparent)]
    ReadTrace(#[from] TraceError),
    /// A command-line value is out of range.
    #[error("--{flag}: {message}")]
    CheckOptions { flag: &'static str, message: String },
    /// The picture could not be drawn or written.
    #[error("drawing {file}: {message}")]
    Plot { file: String, message: String },
}

impl SimulateError {
    /// A stable name for the step that failed.
    pub fn label(&self) -> &'static str {
        match self {
            SimulateError::LoadPolicy { .. } => "load_policy",
            SimulateError::ReadTrace(_) => "read_trace",
            SimulateError::CheckOptions { .. } => "check_options",
            SimulateError::Plot { .. } => "plot",
        }
    }
}

/// The finished simulation.
#[derive(Clone, Debug)]
pub struct Simulation {
    pub policy_name: String,
    pub outcomes: Outcomes,
    /// Things the user should know about how the policy was run.
    pub notes: Vec<String>,
}

/// Loads the one ScalingPolicy in `yaml` and validates it.
pub fn load_policy(file: &str, yaml: &str) -> Result<(String, Policy), SimulateError> {
    check::single_policy(yaml).map_err(|errors| SimulateError::LoadPolicy {
        file: file.to_owned(),
        errors,
    })
}

/// Runs the three runs over `trace`.
pub fn simulate(
    policy_name: &str,
    policy: &Policy,
    trace: &Trace,
    options: &Options,
) -> Result<Simulation, SimulateError> {
    let prepared = prepare(policy, trace, options)?;
    let outcomes = run_all(&prepared.setup(&prepared.policy, trace));
    Ok(Simulation {
        policy_name: policy_name.to_owned(),
        outcomes,
        notes: prepared.notes,
    })
}

/// A policy and options checked against a trace, ready to run: what every run over the trace
/// shares, whichever variant of the policy it runs (`tune` runs many).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The policy as simulated (`paused` and `dryRun` cleared).
    pub policy: Policy,
    /// Things the user should know about how the policy was run.
    pub notes: Vec<String>,
    columns: Vec<Option<usize>>,
    arrivals: Option<usize>,
    seed: u64,
    initial_replicas: u32,
    startup_ms: i64,
    capacity: u32,
    session_ms: i64,
    step_ms: i64,
}

impl Prepared {
    /// The setup of a run of `policy` (this policy or a variant with the same metrics) over
    /// `trace` (the trace this was prepared on).
    pub fn setup<'a>(&self, policy: &'a Policy, trace: &'a Trace) -> Setup<'a> {
        Setup {
            policy,
            trace,
            columns: self.columns.clone(),
            arrivals: self.arrivals,
            seed: self.seed,
            initial_replicas: self.initial_replicas,
            startup_ms: self.startup_ms,
            capacity: self.capacity,
            session_ms: self.session_ms,
            step_ms: self.step_ms,
        }
    }
}

/// Checks the options and matches the policy's metrics to the trace's columns.
pub fn prepare(
    policy: &Policy,
    trace: &Trace,
    options: &Options,
) -> Result<Prepared, SimulateError> {
    let millis = |flag: &'static str, d: Duration, min_ms: i64| {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        if ms < min_ms {
            Err(SimulateError::CheckOptions {
                flag,
                message: format!(
                    "must be at least {}, got {}",
                    fmt_duration(Duration::from_millis(min_ms.unsigned_abs())),
                    fmt_duration(d)
                ),
            })
        } else {
            Ok(ms)
        }
    };
    let step_ms = millis("session-step", options.step, 1)?;
    let session_ms = millis("session-length", options.session_length, 1)?;
    let startup_ms = millis("startup", options.startup, 0)?;
    if options.capacity == 0 {
        return Err(SimulateError::CheckOptions {
            flag: "capacity",
            message: "must be at least 1 session per instance".to_owned(),
        });
    }

    let mut notes = Vec::new();
    let mut policy = policy.clone();
    if policy.paused || policy.dry_run {
        notes.push(format!(
            "spec.{} is ignored: the simulation shows what the policy would do when it acts",
            if policy.paused { "paused" } else { "dryRun" }
        ));
        policy.paused = false;
        policy.dry_run = false;
    }

    let mut columns = Vec::with_capacity(policy.metrics.len());
    for m in &policy.metrics {
        columns.push(match m.source {
            Source::Sessions => None,
            Source::Prometheus { .. } => Some(trace.column(&m.name).ok_or_else(|| {
                trace.header_error(format!(
                    "no column {:?} for metric {}; a metric reads the column with its name, and the trace has: {}",
                    m.name,
                    m.name,
                    header_names(trace)
                ))
            })?),
        });
    }
    let arrivals = trace.column(ARRIVALS_COLUMN);
    if let Some(c) = arrivals {
        let bad = trace.series(c).iter().position(|&v| v < 0.0);
        if let Some(row) = bad {
            return Err(trace
                .cell_error(
                    c,
                    row,
                    format!(
                        "arrivals must be 0 or more sessions per second, got {}",
                        trace.value(c, row)
                    ),
                )
                .into());
        }
    } else if policy.metrics.iter().any(|m| m.source == Source::Sessions) {
        notes.push(format!(
            "the trace has no {ARRIVALS_COLUMN:?} column: no sessions are simulated and the sessions metric reads 0"
        ));
    }

    if arrivals.is_some() {
        for m in &policy.metrics {
            if let (Source::Sessions, MetricTarget::AverageValue(per)) = (&m.source, m.target)
                && per * (1.0 + policy.tolerance) >= f64::from(options.capacity)
            {
                // Full instances cannot report more than their capacity, so the metric never
                // rises past its tolerance band and the count never grows on sessions.
                notes.push(format!(
                    "metric {} targets {} sessions per replica (scaling up only above {} with the tolerance) but --capacity is {}: instances fill up before the metric asks for more, so expect rejected sessions",
                    m.name,
                    fmt_number(per),
                    fmt_number(per * (1.0 + policy.tolerance)),
                    options.capacity
                ));
            }
        }
        if let Some(h) = policy.drain.hold_back
            && h.session_ceiling >= u64::from(options.capacity)
        {
            // The serving instances fill up before the held-back ones are released, and the
            // sessions turned away show in no heartbeat.
            notes.push(format!(
                "drain.holdBack.sessionCeiling is {} but --capacity is {}: while pods are held back the others fill up and turn sessions away before the ceiling releases them; set the ceiling below the capacity",
                h.session_ceiling, options.capacity
            ));
        }
    }

    Ok(Prepared {
        initial_replicas: options.initial_replicas.unwrap_or(policy.min_replicas),
        policy,
        notes,
        columns,
        arrivals,
        seed: options.seed,
        startup_ms,
        capacity: options.capacity,
        session_ms,
        step_ms,
    })
}

impl Simulation {
    /// The report: table or JSON.
    pub fn report(&self) -> Report<'_> {
        Report::new(&self.outcomes)
    }
}

fn header_names(trace: &Trace) -> String {
    trace.columns.join(", ")
}
