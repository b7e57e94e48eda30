//! `simulate --tune`: searches a policy's knobs (metric targets, stabilization windows, rate
//! policies, drain timeout and onTimeout) on a trace for the cheapest variants that drop no
//! session and reject at most a bound, each run through the real engine on the same sessions.
//! Deterministic for a seed: a seeded sample of the knobs, then coordinate descent from the
//! best. Pure, no I/O (runs spread over threads, with results kept in candidate order).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{
    Behavior, DrainSpec, OnTimeout, Quantity, RuleType, ScalingPolicy, ScalingRule, ScalingRules,
    SelectPolicy, TargetType,
};
use crate::policy::{self, Policy, fmt_duration, fmt_number};
use crate::simulate::runs::run_drainscaler;
use crate::simulate::sessions::SplitMix64;
use crate::simulate::trace::Trace;
use crate::simulate::{Prepared, SimulateError};

/// Factors applied to each metric's target.
const TARGET_FACTORS: [f64; 11] = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0];
/// Scale-down stabilization windows tried, in seconds (the policy's own is added).
const DOWN_WINDOWS: [i32; 7] = [0, 60, 120, 300, 600, 900, 1800];
/// Scale-up stabilization windows tried, in seconds (the policy's own is added).
const UP_WINDOWS: [i32; 5] = [0, 30, 60, 120, 300];
/// Drain timeouts tried, in seconds (the policy's own is added).
const DRAIN_TIMEOUTS: [u64; 6] = [300, 900, 1800, 3600, 7200, 14_400];

/// A named set of rate policies for one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rate {
    pub name: String,
    /// `None`: the policy's own (or the HPA default when it sets none).
    pub rules: Option<(SelectPolicy, Vec<ScalingRule>)>,
}

fn rule(type_: RuleType, value: i32, period_seconds: i32) -> ScalingRule {
    ScalingRule {
        type_,
        value,
        period_seconds,
    }
}

fn rate(name: &str, select: SelectPolicy, rules: Vec<ScalingRule>) -> Rate {
    Rate {
        name: name.to_owned(),
        rules: Some((select, rules)),
    }
}

fn up_rates() -> Vec<Rate> {
    vec![
        Rate {
            name: "as given".to_owned(),
            rules: None,
        },
        rate(
            "hpa default",
            SelectPolicy::Max,
            vec![
                rule(RuleType::Percent, 100, 15),
                rule(RuleType::Pods, 4, 15),
            ],
        ),
        rate(
            "fast",
            SelectPolicy::Max,
            vec![
                rule(RuleType::Percent, 200, 15),
                rule(RuleType::Pods, 10, 15),
            ],
        ),
        rate(
            "2 pods/min",
            SelectPolicy::Max,
            vec![rule(RuleType::Pods, 2, 60)],
        ),
    ]
}

fn down_rates() -> Vec<Rate> {
    vec![
        Rate {
            name: "as given".to_owned(),
            rules: None,
        },
        rate(
            "hpa default",
            SelectPolicy::Max,
            vec![rule(RuleType::Percent, 100, 15)],
        ),
        rate(
            "10%/min",
            SelectPolicy::Max,
            vec![rule(RuleType::Percent, 10, 60)],
        ),
        rate(
            "1 pod/min",
            SelectPolicy::Max,
            vec![rule(RuleType::Pods, 1, 60)],
        ),
        rate(
            "5 pods/min",
            SelectPolicy::Max,
            vec![rule(RuleType::Pods, 5, 60)],
        ),
    ]
}

/// How the search runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TuneOptions {
    pub seed: u64,
    /// The most rejected sessions a result may have.
    pub max_rejected: u64,
    /// Candidates drawn at random before the descent.
    pub sampled: usize,
    /// The most candidates run in all.
    pub budget: usize,
    /// Rows of the Pareto table.
    pub rows: usize,
    /// Threads that run candidates.
    pub threads: usize,
}

impl Default for TuneOptions {
    fn default() -> TuneOptions {
        TuneOptions {
            seed: 1,
            max_rejected: 0,
            sampled: 16,
            budget: 160,
            rows: 5,
            threads: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// One point of the search space: an index into each knob's values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Knobs(pub Vec<usize>);

/// How many values a knob takes.
#[derive(Clone, Debug)]
struct Dimension {
    values: usize,
}

/// The search space of one policy.
#[derive(Clone, Debug)]
pub struct Space {
    base: ScalingPolicy,
    /// Metric index and original target of each metric whose target is tuned.
    targets: Vec<(usize, TargetType, f64)>,
    down_windows: Vec<i32>,
    up_windows: Vec<i32>,
    up_rates: Vec<Rate>,
    down_rates: Vec<Rate>,
    drain_timeouts: Vec<u64>,
    on_timeouts: [OnTimeout; 2],
    given: Knobs,
    dimensions: Vec<Dimension>,
}

/// With `value` added when it is not there, sorted; and its index.
fn with_value<T: Ord + Copy>(values: &[T], value: T) -> (Vec<T>, usize) {
    let mut out = values.to_vec();
    if !out.contains(&value) {
        out.push(value);
    }
    out.sort_unstable();
    let at = out.iter().position(|v| *v == value).unwrap_or(0);
    (out, at)
}

impl Space {
    /// The knobs of `resource` (whose validated form is `policy`).
    pub fn new(resource: &ScalingPolicy, policy: &Policy) -> Space {
        let targets: Vec<(usize, TargetType, f64)> = policy
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| match m.target {
                policy::MetricTarget::Value(v) => (i, TargetType::Value, v),
                policy::MetricTarget::AverageValue(v) => (i, TargetType::AverageValue, v),
            })
            .collect();
        let secs = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
        let (down_windows, down_at) = with_value(
            &DOWN_WINDOWS,
            secs(policy.behavior.scale_down.stabilization_window),
        );
        let (up_windows, up_at) = with_value(
            &UP_WINDOWS,
            secs(policy.behavior.scale_up.stabilization_window),
        );
        let (drain_timeouts, drain_at) =
            with_value(&DRAIN_TIMEOUTS, policy.drain.timeout.as_secs());
        let on_timeouts = [OnTimeout::Keep, OnTimeout::Remove];
        let on_at = usize::from(policy.drain.on_timeout == OnTimeout::Remove);
        let given_factor = TARGET_FACTORS
            .iter()
            .position(|f| *f == 1.0)
            .unwrap_or_default();
        let mut given = vec![given_factor; targets.len()];
        given.extend([down_at, up_at, 0, 0, drain_at, on_at]);
        // In the order of `given`: each target, then the behavior and drain knobs.
        let mut dimensions: Vec<Dimension> = targets
            .iter()
            .map(|_| Dimension {
                values: TARGET_FACTORS.len(),
            })
            .collect();
        for values in [
            down_windows.len(),
            up_windows.len(),
            up_rates().len(),
            down_rates().len(),
            drain_timeouts.len(),
            on_timeouts.len(),
        ] {
            dimensions.push(Dimension { values });
        }
        Space {
            base: resource.clone(),
            targets,
            down_windows,
            up_windows,
            up_rates: up_rates(),
            down_rates: down_rates(),
            drain_timeouts,
            on_timeouts,
            given: Knobs(given),
            dimensions,
        }
    }

    /// The policy as given.
    pub fn given(&self) -> &Knobs {
        &self.given
    }

    /// The resource with `knobs` applied.
    pub fn resource(&self, knobs: &Knobs) -> ScalingPolicy {
        let k = &knobs.0;
        let mut out = self.base.clone();
        out.metadata.managed_fields = None;
        out.metadata.resource_version = None;
        out.metadata.uid = None;
        out.metadata.creation_timestamp = None;
        out.metadata.generation = None;
        out.status = None;
        let spec = &mut out.spec;
        for (slot, (metric, type_, original)) in self.targets.iter().enumerate() {
            if k[slot] == self.given.0[slot] {
                continue;
            }
            let value = Some(Quantity(quantity(original * TARGET_FACTORS[k[slot]])));
            let target = &mut spec.metrics[*metric].target;
            match type_ {
                TargetType::Value => target.value = value,
                TargetType::AverageValue => target.average_value = value,
            }
        }
        let n = self.targets.len();
        let behavior = spec.behavior.get_or_insert_with(Behavior::default);
        let down = behavior
            .scale_down
            .get_or_insert_with(ScalingRules::default);
        down.stabilization_window_seconds = Some(self.down_windows[k[n]]);
        if let Some((select, rules)) = &self.down_rates[k[n + 3]].rules {
            down.select_policy = Some(*select);
            down.policies = Some(rules.clone());
        }
        let up = behavior.scale_up.get_or_insert_with(ScalingRules::default);
        up.stabilization_window_seconds = Some(self.up_windows[k[n + 1]]);
        if let Some((select, rules)) = &self.up_rates[k[n + 2]].rules {
            up.select_policy = Some(*select);
            up.policies = Some(rules.clone());
        }
        spec.drain = DrainSpec {
            timeout: fmt_duration(Duration::from_secs(self.drain_timeouts[k[n + 4]])),
            on_timeout: self.on_timeouts[k[n + 5]],
            hold_back: spec.drain.hold_back,
        };
        out
    }

    /// The knobs in words, one cell each: targets, down window, up window, up rate, down
    /// rate, drain.
    pub fn describe(&self, knobs: &Knobs) -> [String; 6] {
        let k = &knobs.0;
        let n = self.targets.len();
        let resource = self.resource(knobs);
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|(metric, type_, _)| {
                let m = &resource.spec.metrics[*metric];
                let q = match type_ {
                    TargetType::Value => m.target.value.as_ref(),
                    TargetType::AverageValue => m.target.average_value.as_ref(),
                };
                format!("{} {}", m.name, q.map_or("?", |q| q.0.as_str()))
            })
            .collect();
        let on = match self.on_timeouts[k[n + 5]] {
            OnTimeout::Keep => "Keep",
            OnTimeout::Remove => "Remove",
        };
        [
            targets.join(", "),
            format!("{}s", self.down_windows[k[n]]),
            format!("{}s", self.up_windows[k[n + 1]]),
            self.up_rates[k[n + 2]].name.clone(),
            self.down_rates[k[n + 3]].name.clone(),
            format!(
                "{} {on}",
                fmt_duration(Duration::from_secs(self.drain_timeouts[k[n + 4]]))
            ),
        ]
    }

    fn sample(&self, rng: &mut SplitMix64) -> Knobs {
        Knobs(
            self.dimensions
                .iter()
                .map(|d| (rng.next_u64() % d.values as u64) as usize)
                .collect(),
        )
    }
}

/// A target value as a quantity: up to three decimals, no trailing zeros.
fn quantity(v: f64) -> String {
    let text = fmt_number((v * 1000.0).round() / 1000.0);
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// What one candidate did on the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Score {
    pub replica_ms: i64,
    pub rejected: u64,
    pub dropped: u64,
    pub peak: u32,
}

/// One candidate run, or why it is not a valid policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tried {
    pub knobs: Knobs,
    pub score: Result<Score, String>,
}

/// The search's results: every candidate tried, in the order tried, and the Pareto front.
#[derive(Clone, Debug)]
pub struct Tuned {
    pub space: Space,
    pub tried: Vec<Tried>,
    /// Indices into `tried`: the cheapest candidates that drop nothing and reject at most the
    /// bound, each rejecting fewer than the one before; cheapest first.
    pub front: Vec<usize>,
    /// Index into `tried` of the policy as given.
    pub given: usize,
    pub max_rejected: u64,
}

impl Tuned {
    /// The cheapest acceptable candidate.
    pub fn best(&self) -> Option<&Tried> {
        self.front.first().map(|&i| &self.tried[i])
    }
}

/// Whether a score meets the bounds.
fn acceptable(score: &Score, max_rejected: u64) -> bool {
    score.dropped == 0 && score.rejected <= max_rejected
}

/// The order of candidates: acceptable ones by cost, then rejections, then the fewest knobs
/// changed from the policy as given (so that a change that saves nothing is not proposed);
/// the others by how far they miss.
type Rank = (u8, u64, u64, i64, u64, usize, Knobs);

fn rank(t: &Tried, max_rejected: u64, given: &Knobs) -> Rank {
    let changed = t
        .knobs
        .0
        .iter()
        .zip(&given.0)
        .filter(|(a, b)| a != b)
        .count();
    match &t.score {
        Ok(s) if acceptable(s, max_rejected) => {
            (0, 0, 0, s.replica_ms, s.rejected, changed, t.knobs.clone())
        }
        Ok(s) => (
            1,
            s.dropped,
            s.rejected.saturating_sub(max_rejected),
            s.replica_ms,
            s.rejected,
            changed,
            t.knobs.clone(),
        ),
        Err(_) => (2, 0, 0, 0, 0, changed, t.knobs.clone()),
    }
}

/// Runs one candidate.
fn evaluate(
    space: &Space,
    knobs: &Knobs,
    prepared: &Prepared,
    trace: &Trace,
) -> Result<Score, String> {
    let resource = space.resource(knobs);
    let mut policy = policy::validate(&resource.spec).map_err(|e| e.to_string())?;
    policy.paused = false;
    policy.dry_run = false;
    let outcome = run_drainscaler(&prepared.setup(&policy, trace));
    Ok(Score {
        replica_ms: outcome.replica_ms,
        rejected: outcome.tally.rejected,
        dropped: outcome.tally.dropped,
        peak: outcome.peak_replicas,
    })
}

/// Runs the candidates not run yet, over `threads` threads; results keep the input order.
fn run_batch(
    space: &Space,
    batch: &[Knobs],
    prepared: &Prepared,
    trace: &Trace,
    threads: usize,
) -> Vec<Result<Score, String>> {
    let threads = threads.clamp(1, batch.len().max(1));
    let mut results: Vec<Option<Result<Score, String>>> = vec![None; batch.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                scope.spawn(move || {
                    batch
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(threads)
                        .map(|(i, k)| (i, evaluate(space, k, prepared, trace)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            // A worker only panics on a bug; its candidates then show an error.
            if let Ok(done) = worker.join() {
                for (i, r) in done {
                    results[i] = Some(r);
                }
            }
        }
    });
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("the run stopped on an internal error".to_owned())))
        .collect()
}

/// The search state: every candidate tried, by knobs.
struct Search<'a> {
    space: &'a Space,
    prepared: &'a Prepared,
    trace: &'a Trace,
    options: &'a TuneOptions,
    tried: Vec<Tried>,
    seen: BTreeMap<Knobs, usize>,
}

impl Search<'_> {
    /// Runs those of `candidates` not tried yet, within the budget.
    fn try_all(&mut self, candidates: Vec<Knobs>) {
        let mut fresh = Vec::new();
        for k in candidates {
            if self.tried.len() + fresh.len() >= self.options.budget {
                break;
            }
            if !self.seen.contains_key(&k) && !fresh.contains(&k) {
                fresh.push(k);
            }
        }
        let scores = run_batch(
            self.space,
            &fresh,
            self.prepared,
            self.trace,
            self.options.threads,
        );
        for (knobs, score) in fresh.into_iter().zip(scores) {
            self.seen.insert(knobs.clone(), self.tried.len());
            self.tried.push(Tried { knobs, score });
        }
    }

    fn best(&self) -> Option<&Tried> {
        self.tried
            .iter()
            .min_by_key(|t| rank(t, self.options.max_rejected, self.space.given()))
    }

    fn out_of_budget(&self) -> bool {
        self.tried.len() >= self.options.budget
    }
}

/// Searches `resource`'s knobs on `trace`.
pub fn tune(
    resource: &ScalingPolicy,
    policy: &Policy,
    prepared: &Prepared,
    trace: &Trace,
    options: &TuneOptions,
) -> Result<Tuned, SimulateError> {
    if options.budget == 0 {
        return Err(SimulateError::CheckOptions {
            flag: "tune-budget",
            message: "must be at least 1 candidate".to_owned(),
        });
    }
    let space = Space::new(resource, policy);
    let mut search = Search {
        space: &space,
        prepared,
        trace,
        options,
        tried: Vec::new(),
        seen: BTreeMap::new(),
    };
    let mut rng = SplitMix64::new(options.seed ^ 0x7475_6e65);
    let mut first = vec![space.given().clone()];
    first.extend((0..options.sampled).map(|_| space.sample(&mut rng)));
    search.try_all(first);
    // Coordinate descent: each knob in turn over all its values, from the best so far, until
    // a whole sweep finds nothing better or the budget is spent.
    loop {
        let before = search.best().map(|t| t.knobs.clone());
        for (d, dimension) in space.dimensions.iter().enumerate() {
            let Some(centre) = search.best().map(|t| t.knobs.clone()) else {
                break;
            };
            let around = (0..dimension.values)
                .map(|v| {
                    let mut k = centre.clone();
                    k.0[d] = v;
                    k
                })
                .collect();
            search.try_all(around);
            if search.out_of_budget() {
                break;
            }
        }
        let after = search.best().map(|t| t.knobs.clone());
        if after == before || search.out_of_budget() {
            break;
        }
    }
    let tried = search.tried;
    let given = search.seen.get(space.given()).copied().unwrap_or(0);
    let front = pareto(&tried, options.max_rejected, options.rows, space.given());
    Ok(Tuned {
        space,
        tried,
        front,
        given,
        max_rejected: options.max_rejected,
    })
}

/// The acceptable candidates that no other beats on both cost and rejections, cheapest first,
/// at most `rows`.
fn pareto(tried: &[Tried], max_rejected: u64, rows: usize, given: &Knobs) -> Vec<usize> {
    let mut ok: Vec<usize> = (0..tried.len())
        .filter(|&i| {
            tried[i]
                .score
                .as_ref()
                .is_ok_and(|s| acceptable(s, max_rejected))
        })
        .collect();
    ok.sort_by_key(|&i| rank(&tried[i], max_rejected, given));
    let mut front: Vec<usize> = Vec::new();
    let mut fewest = u64::MAX;
    for i in ok {
        let rejected = tried[i].score.as_ref().map_or(u64::MAX, |s| s.rejected);
        if rejected < fewest {
            fewest = rejected;
            front.push(i);
        }
    }
    front.truncate(rows);
    front
}

/// The Pareto table, with the policy as given below it for comparison.
pub fn table(tuned: &Tuned) -> String {
    let header = [
        "#",
        "replica-seconds",
        "vs given",
        "rejected",
        "dropped",
        "peak",
        "targets",
        "down window",
        "up window",
        "up rate",
        "down rate",
        "drain",
    ];
    let given_cost = tuned.tried[tuned.given]
        .score
        .as_ref()
        .map_or(0, |s| s.replica_ms);
    let row = |label: String, t: &Tried| -> Vec<String> {
        let mut cells = vec![label];
        match &t.score {
            Ok(s) => {
                cells.push(fmt_number(s.replica_ms as f64 / 1000.0));
                cells.push(if given_cost > 0 {
                    format!("{:.3}x", s.replica_ms as f64 / given_cost as f64)
                } else {
                    "-".to_owned()
                });
                cells.push(s.rejected.to_string());
                cells.push(s.dropped.to_string());
                cells.push(s.peak.to_string());
            }
            Err(_) => cells.extend(["invalid", "-", "-", "-", "-"].map(str::to_owned)),
        }
        cells.extend(tuned.space.describe(&t.knobs));
        cells
    };
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for (n, &i) in tuned.front.iter().enumerate() {
        rows.push(row((n + 1).to_string(), &tuned.tried[i]));
    }
    rows.push(row("given".to_owned(), &tuned.tried[tuned.given]));
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                if (1..=5).contains(&c) {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The chosen candidate as a ScalingPolicy YAML document, with a comment saying where it
/// came from.
pub fn policy_yaml(tuned: &Tuned, tried: &Tried, origin: &str) -> Result<String, String> {
    let resource = tuned.space.resource(&tried.knobs);
    let body = serde_saphyr::to_string(&resource).map_err(|e| e.to_string())?;
    let score = tried
        .score
        .as_ref()
        .map(|s| {
            format!(
                "{} replica-seconds, {} sessions rejected, {} dropped",
                fmt_number(s.replica_ms as f64 / 1000.0),
                s.rejected,
                s.dropped
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "# Tuned by drainscaler simulate --tune on {origin}: {score}.\n{body}"
    ))
}

#[cfg(test)]
mod tests;
