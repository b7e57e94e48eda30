//! The three runs over one trace, driven in lockstep by a synthetic clock: `drainscaler` (the
//! real engine and drain rules), `hpa` (the HPA algorithm from the engine's free functions,
//! scale-in without drain) and `oracle` (just enough instances at every step). Pure, no I/O.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::engine::{
    self, History, Observation, Reading, Recommendation, ScaleEvent, Time, limit_rate,
    metric_replicas, next_history, stabilize,
};
use crate::policy::Policy;
use crate::simulate::sessions::Arrivals;
use crate::simulate::trace::Trace;
use crate::simulate::world::{Tally, World};

/// What the runs read: the policy, the trace, which column feeds each metric, and the knobs.
#[derive(Clone, Debug)]
pub struct Setup<'a> {
    pub policy: &'a Policy,
    pub trace: &'a Trace,
    /// For each policy metric, the trace column it reads; `None` for `sessions` metrics.
    pub columns: Vec<Option<usize>>,
    /// The `arrivals` column, when sessions are simulated.
    pub arrivals: Option<usize>,
    pub seed: u64,
    pub initial_replicas: u32,
    pub startup_ms: i64,
    pub capacity: u32,
    pub session_ms: i64,
    pub step_ms: i64,
}

impl Setup<'_> {
    fn readings(&self, row: usize) -> BTreeMap<String, Reading> {
        self.policy
            .metrics
            .iter()
            .zip(&self.columns)
            .filter_map(|(m, c)| {
                c.map(|c| (m.name.clone(), Reading::Value(self.trace.value(c, row))))
            })
            .collect()
    }

    /// Metric values in policy order; `sessions` metrics read `sessions`.
    fn values(&self, row: usize, sessions: u64) -> impl Iterator<Item = f64> + '_ {
        self.columns.iter().map(move |c| match c {
            Some(c) => self.trace.value(*c, row),
            None => sessions as f64,
        })
    }
}

/// The state of a run at one decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    pub t_ms: i64,
    /// The replica count in effect right after the decision.
    pub replicas: u32,
    /// The serving count the run wants.
    pub desired: u32,
    pub draining: u32,
    pub sessions: u64,
    /// Sessions dropped so far.
    pub dropped: u64,
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Replicas times milliseconds, integrated over the trace.
    pub replica_ms: i64,
    pub peak_replicas: u32,
    /// Times the replica count changed.
    pub scale_events: u64,
    pub tally: Tally,
    /// How long each completed drain took.
    pub drains_ms: Vec<i64>,
    pub timeline: Vec<Point>,
}

/// The three runs of one simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcomes {
    pub drainscaler: Outcome,
    pub hpa: Outcome,
    pub oracle: Outcome,
}

/// One way of choosing replicas, stepped by the shared clock.
trait Run {
    fn replicas(&self) -> u32;
    fn sessions(&self) -> u64;
    fn draining(&self) -> u32;
    fn tally(&self) -> Tally;
    /// Sessions end and pods finish starting (the oracle also resizes to the load).
    fn advance(&mut self, now: i64, row: usize);
    /// Decides at `now`; returns the serving count wanted.
    fn decide(&mut self, now: i64, row: usize) -> u32;
    /// New sessions arrive.
    fn admit(&mut self, now: i64, row: usize, lengths: &[i64]);
    fn drains_ms(&mut self) -> Vec<i64>;
}

/// The policy as written, through the real engine and drain rules.
struct Drainscaler<'a> {
    setup: &'a Setup<'a>,
    world: World,
    history: History,
}

impl Run for Drainscaler<'_> {
    fn replicas(&self) -> u32 {
        self.world.replicas()
    }
    fn sessions(&self) -> u64 {
        self.world.sessions()
    }
    fn draining(&self) -> u32 {
        self.world.draining()
    }
    fn tally(&self) -> Tally {
        self.world.tally
    }
    fn advance(&mut self, now: i64, _row: usize) {
        self.world.advance(now);
    }
    fn decide(&mut self, now: i64, row: usize) -> u32 {
        let policy = self.setup.policy;
        let seen = Observation {
            replicas: self.world.replicas(),
            readings: self.setup.readings(row),
            instances: self.world.instances(now, policy.heartbeat.is_some()),
            heartbeats_since: Time(0),
            ordinals_start: 0,
        };
        let decision = engine::decide(policy, &seen, &self.history, Time(now));
        self.history = next_history(policy, &self.history, &decision, Time(now));
        self.world.apply(&decision.plan, now);
        decision.desired
    }
    fn admit(&mut self, now: i64, _row: usize, lengths: &[i64]) {
        self.world.admit(now, lengths);
    }
    fn drains_ms(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.world.drains_ms)
    }
}

/// The HorizontalPodAutoscaler: the same targets and behavior from the engine's free
/// functions, its own history, and scale-in by lowering the count with no drain.
struct Hpa<'a> {
    setup: &'a Setup<'a>,
    world: World,
    recommendations: Vec<Recommendation>,
    events: Vec<ScaleEvent>,
}

impl Hpa<'_> {
    fn desired(&self, current: u32, row: usize, now: Time) -> (u32, u32) {
        let policy = self.setup.policy;
        let mut asked = 0;
        let mut active = false;
        for (m, v) in policy
            .metrics
            .iter()
            .zip(self.setup.values(row, self.world.sessions()))
        {
            asked = asked.max(metric_replicas(m.target, v, current, policy.tolerance));
            active |= v > m.activation;
        }
        // Idle metrics ask for zero; active ones for at least one (KEDA's activation).
        let recommendation = if active { asked.max(1) } else { 0 };
        let desired = if current > policy.max_replicas {
            policy.max_replicas
        } else if current < policy.min_replicas {
            policy.min_replicas
        } else {
            let stable = stabilize(
                &policy.behavior,
                &self.recommendations,
                recommendation,
                current,
                now,
            );
            let limited = limit_rate(policy, &self.events, current, stable.replicas, now).replicas;
            if current == 0 && active {
                limited.max(1)
            } else {
                limited
            }
        };
        (desired, recommendation)
    }
}

impl Run for Hpa<'_> {
    fn replicas(&self) -> u32 {
        self.world.replicas()
    }
    fn sessions(&self) -> u64 {
        self.world.sessions()
    }
    fn draining(&self) -> u32 {
        0
    }
    fn tally(&self) -> Tally {
        self.world.tally
    }
    fn advance(&mut self, now: i64, _row: usize) {
        self.world.advance(now);
    }
    fn decide(&mut self, now: i64, row: usize) -> u32 {
        let at = Time(now);
        let current = self.world.replicas();
        let (desired, recommendation) = self.desired(current, row, at);
        let cutoff = at.minus(self.setup.policy.history_horizon());
        self.recommendations.retain(|r| r.time > cutoff);
        self.recommendations.push(Recommendation {
            time: at,
            replicas: recommendation,
        });
        self.events.retain(|e| e.time > cutoff);
        if desired != current {
            self.events.push(ScaleEvent {
                time: at,
                from: current,
                to: desired,
            });
        }
        self.world.scale(desired, now);
        desired
    }
    fn admit(&mut self, now: i64, _row: usize, lengths: &[i64]) {
        self.world.admit(now, lengths);
    }
    fn drains_ms(&mut self) -> Vec<i64> {
        Vec::new()
    }
}

/// Exactly enough instances for the load it can see at every step, started instantly, with
/// sessions spread freely over them: a lower bound on cost.
struct Oracle<'a> {
    setup: &'a Setup<'a>,
    replicas: u32,
    /// End times of the sessions held.
    ends: BinaryHeap<Reverse<i64>>,
    tally: Tally,
}

impl Oracle<'_> {
    /// `ceil(value / target)` for each metric (the engine's rounding, from zero), and room for
    /// every session when sessions are simulated; within `[min, max]`.
    fn need(&self, row: usize, sessions: u64) -> u32 {
        let policy = self.setup.policy;
        let capacity = u64::from(self.setup.capacity);
        let mut need = policy
            .metrics
            .iter()
            .zip(self.setup.values(row, sessions))
            .map(|(m, v)| metric_replicas(m.target, v, 0, 0.0))
            .max()
            .unwrap_or(0);
        if self.setup.arrivals.is_some() {
            let for_sessions = u32::try_from(sessions.div_ceil(capacity)).unwrap_or(u32::MAX);
            need = need.max(for_sessions);
        }
        need.clamp(policy.min_replicas, policy.max_replicas)
    }
}

impl Run for Oracle<'_> {
    fn replicas(&self) -> u32 {
        self.replicas
    }
    fn sessions(&self) -> u64 {
        self.ends.len() as u64
    }
    fn draining(&self) -> u32 {
        0
    }
    fn tally(&self) -> Tally {
        self.tally
    }
    fn advance(&mut self, now: i64, row: usize) {
        while self.ends.peek().is_some_and(|Reverse(end)| *end <= now) {
            self.ends.pop();
        }
        self.replicas = self.need(row, self.sessions());
    }
    fn decide(&mut self, _now: i64, _row: usize) -> u32 {
        self.replicas
    }
    fn admit(&mut self, now: i64, row: usize, lengths: &[i64]) {
        if lengths.is_empty() {
            return;
        }
        let wanted = self.sessions() + lengths.len() as u64;
        self.replicas = self.replicas.max(self.need(row, wanted));
        let room = u64::from(self.replicas) * u64::from(self.setup.capacity);
        for &length in lengths {
            if self.sessions() < room {
                self.ends.push(Reverse(now + length));
                self.tally.started += 1;
            } else {
                self.tally.rejected += 1;
            }
        }
    }
    fn drains_ms(&mut self) -> Vec<i64> {
        Vec::new()
    }
}

/// One moment of the clock and what is due at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tick {
    at: i64,
    /// The trace row in effect: the last with time at or before `at` (the first before it).
    row: usize,
    decision: bool,
    step: bool,
}

/// The synthetic clock: decisions every interval, session steps every step (only when
/// sessions are simulated), and every trace row, up to the last row's time.
struct Clock<'a> {
    times: &'a [i64],
    end: i64,
    interval: i64,
    step: Option<i64>,
    next_decision: i64,
    next_step: Option<i64>,
    next_row: usize,
    row: usize,
}

impl<'a> Clock<'a> {
    fn new(times: &'a [i64], interval: i64, step: Option<i64>) -> Clock<'a> {
        Clock {
            times,
            end: times.last().copied().unwrap_or(0),
            interval: interval.max(1),
            step: step.map(|s| s.max(1)),
            next_decision: 0,
            next_step: step.map(|_| 0),
            next_row: 0,
            row: 0,
        }
    }
}

impl Iterator for Clock<'_> {
    type Item = Tick;

    fn next(&mut self) -> Option<Tick> {
        let decision = Some(self.next_decision).filter(|&t| t <= self.end);
        let step = self.next_step.filter(|&t| t <= self.end);
        let row = self.times.get(self.next_row).copied();
        let at = [decision, step, row].into_iter().flatten().min()?;
        let tick_decision = decision == Some(at);
        if tick_decision {
            self.next_decision += self.interval;
        }
        let tick_step = step == Some(at);
        if let (true, Some(s)) = (tick_step, self.step) {
            self.next_step = Some(at + s);
        }
        while self.times.get(self.next_row).is_some_and(|&t| t <= at) {
            self.row = self.next_row;
            self.next_row += 1;
        }
        Some(Tick {
            at,
            row: self.row,
            decision: tick_decision,
            step: tick_step,
        })
    }
}

/// Per-run bookkeeping the clock loop keeps.
#[derive(Default)]
struct Meter {
    replica_ms: i64,
    peak: u32,
    scale_events: u64,
    timeline: Vec<Point>,
}

fn world(setup: &Setup<'_>) -> World {
    World::new(
        setup.policy.target.kind,
        setup.policy.target.name.as_str(),
        setup.initial_replicas,
        setup.startup_ms,
        setup.capacity,
    )
}

/// Runs `drainscaler`, `hpa` and `oracle` over the trace in lockstep, with the same
/// arrivals and session lengths for all three.
pub fn run_all(setup: &Setup<'_>) -> Outcomes {
    let mut drainscaler = Drainscaler {
        setup,
        world: world(setup),
        history: History::default(),
    };
    let mut hpa = Hpa {
        setup,
        world: world(setup),
        recommendations: Vec::new(),
        events: Vec::new(),
    };
    let mut oracle = Oracle {
        setup,
        replicas: setup.initial_replicas,
        ends: BinaryHeap::new(),
        tally: Tally::default(),
    };
    let mut runs: [&mut dyn Run; 3] = [&mut drainscaler, &mut hpa, &mut oracle];
    let [md, mh, mo] = drive(setup, &mut runs);
    let [d, h, o] = runs;
    Outcomes {
        drainscaler: finish(d, md),
        hpa: finish(h, mh),
        oracle: finish(o, mo),
    }
}

/// The `drainscaler` run alone, exactly as `run_all` runs it: the same arrivals and lengths
/// for the same seed, so that variants of a policy are compared on the same sessions.
pub fn run_drainscaler(setup: &Setup<'_>) -> Outcome {
    let mut drainscaler = Drainscaler {
        setup,
        world: world(setup),
        history: History::default(),
    };
    let mut runs: [&mut dyn Run; 1] = [&mut drainscaler];
    let [meter] = drive(setup, &mut runs);
    let [run] = runs;
    finish(run, meter)
}

/// Steps the runs through the trace with the shared clock and arrivals.
fn drive<const N: usize>(setup: &Setup<'_>, runs: &mut [&mut dyn Run; N]) -> [Meter; N] {
    let mut meters: [Meter; N] = std::array::from_fn(|_| Meter::default());
    let mut arrivals = Arrivals::new(setup.seed, setup.session_ms);
    let mut lengths = Vec::new();
    let interval = i64::try_from(setup.policy.interval.as_millis()).unwrap_or(i64::MAX);
    let clock = Clock::new(
        &setup.trace.times,
        interval,
        setup.arrivals.map(|_| setup.step_ms),
    );
    let mut last = 0;
    for tick in clock {
        lengths.clear();
        if let (true, Some(column)) = (tick.step, setup.arrivals) {
            let rate = setup.trace.value(column, tick.row);
            arrivals.step(rate, setup.step_ms, &mut lengths);
        }
        for (run, meter) in runs.iter_mut().zip(meters.iter_mut()) {
            let before = run.replicas();
            meter.replica_ms += i64::from(before) * (tick.at - last);
            run.advance(tick.at, tick.row);
            if tick.decision {
                let desired = run.decide(tick.at, tick.row);
                meter.timeline.push(Point {
                    t_ms: tick.at,
                    replicas: run.replicas(),
                    desired,
                    draining: run.draining(),
                    sessions: run.sessions(),
                    dropped: run.tally().dropped,
                });
            }
            run.admit(tick.at, tick.row, &lengths);
            let after = run.replicas();
            meter.peak = meter.peak.max(after);
            if after != before {
                meter.scale_events += 1;
            }
        }
        last = tick.at;
    }
    meters
}

fn finish(run: &mut dyn Run, meter: Meter) -> Outcome {
    Outcome {
        replica_ms: meter.replica_ms,
        peak_replicas: meter.peak,
        scale_events: meter.scale_events,
        tally: run.tally(),
        drains_ms: run.drains_ms(),
        timeline: meter.timeline,
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, Setup, Tick, run_all};
    use crate::check::single_policy;
    use crate::simulate::trace::Trace;

    const POLICY: &str = r#"
apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {name: unit}
spec:
  targetRef: {apiVersion: apps/v1, kind: Deployment, name: app}
  minReplicas: 1
  maxReplicas: 5
  interval: 30s
  metrics:
    - name: rps
      prometheus: {query: "x"}
      target: {type: AverageValue, averageValue: "100"}
  drain: {timeout: 0s}
"#;

    #[test]
    fn the_oracle_runs_exactly_enough_instances_within_min_and_max() {
        let (_, policy) = single_policy(POLICY).expect("valid policy");
        let trace = Trace::parse("t.csv", "time,rps\n0,250\n60,950\n120,0\n").expect("trace");
        let setup = Setup {
            policy: &policy,
            trace: &trace,
            columns: vec![trace.column("rps")],
            arrivals: None,
            seed: 1,
            initial_replicas: 1,
            startup_ms: 0,
            capacity: 100,
            session_ms: 600_000,
            step_ms: 1_000,
        };
        let oracle = run_all(&setup).oracle;
        let counts: Vec<(i64, u32)> = oracle
            .timeline
            .iter()
            .map(|p| (p.t_ms, p.replicas))
            .collect();
        // ceil(250/100) = 3; ceil(950/100) = 10, held to maxReplicas 5; 0 is raised to 1.
        assert_eq!(
            counts,
            vec![(0, 3), (30_000, 3), (60_000, 5), (90_000, 5), (120_000, 1)]
        );
        assert_eq!(oracle.replica_ms, (3 * 60 + 5 * 60) * 1000);
        assert_eq!(oracle.peak_replicas, 5);
        assert_eq!(oracle.scale_events, 3);
    }

    fn tick(at: i64, row: usize, decision: bool, step: bool) -> Tick {
        Tick {
            at,
            row,
            decision,
            step,
        }
    }

    #[test]
    fn the_clock_merges_decisions_steps_and_rows_up_to_the_last_row() {
        let times = [0, 2_500, 4_000];
        let ticks: Vec<Tick> = Clock::new(&times, 2_000, Some(1_500)).collect();
        assert_eq!(
            ticks,
            vec![
                tick(0, 0, true, true),
                tick(1_500, 0, false, true),
                tick(2_000, 0, true, false),
                tick(2_500, 1, false, false),
                tick(3_000, 1, false, true),
                tick(4_000, 2, true, false),
            ]
        );
    }

    #[test]
    fn without_sessions_the_clock_only_stops_at_decisions_and_rows() {
        let times = [0, 30_000];
        let ticks: Vec<i64> = Clock::new(&times, 15_000, None).map(|t| t.at).collect();
        assert_eq!(ticks, vec![0, 15_000, 30_000]);
    }
}
