//! The decision engine: `(policy, observation, history, now) -> decision`. Pure: no I/O, no
//! clock, no randomness. The controller and the simulator both drive it.

mod behavior;
mod drain;
mod history;
mod hold;
mod replicas;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::policy::{Policy, Source};

pub use behavior::{Limit, RateLimited, limit_rate, stabilize};
pub use drain::REMOVABLE_DELETION_COST;
pub use drain::{DrainPlan, MAX_POD_REPORTS, Removal, RemovalCause, deletion_order};
pub use history::next_history;
pub use replicas::metric_replicas;

/// A point in time, in milliseconds since the Unix epoch. The engine never reads a clock;
/// callers pass `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub i64);

impl Time {
    pub fn from_secs(secs: i64) -> Time {
        Time(secs.saturating_mul(1000))
    }
    pub fn millis(self) -> i64 {
        self.0
    }
    pub fn plus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
    pub fn minus(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
    /// How long after `earlier` this is; zero if it is not later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

/// A metric value as read, or why it could not be read. Never a sentinel number.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Value(f64),
    Unavailable {
        reason: String,
    },
    /// Not known yet, and not a failure: a new leader waits up to one heartbeat timeout for
    /// the instances to report. It holds the count like a failed reading but does not count
    /// towards the fallback.
    Pending {
        reason: String,
    },
}

/// What the controller (or simulator) saw at `now`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// `spec.replicas` of the target, through its scale subresource.
    pub replicas: u32,
    /// Readings of the `prometheus` metrics by metric name; a missing name is unavailable.
    /// `sessions` metrics are derived from `instances`.
    pub readings: BTreeMap<String, Reading>,
    /// The target's pods.
    pub instances: Vec<Instance>,
    /// A StatefulSet's first ordinal (`spec.ordinals.start`); 0 for a Deployment.
    pub ordinals_start: u32,
    /// Since when heartbeats have been collected (the leader's start). Nothing is declared
    /// Lost before one heartbeat timeout has passed since then.
    pub heartbeats_since: Time,
}

/// One pod of the target, pruned to what decisions need.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Instance {
    pub name: String,
    pub created: Time,
    /// Bound to a node.
    pub scheduled: bool,
    pub phase: Phase,
    pub ready: bool,
    /// When the pod started running; heartbeats are expected from then on.
    pub started: Option<Time>,
    pub restarts: u32,
    /// Has a deletion timestamp: already on its way out.
    pub terminating: bool,
    /// `controller.kubernetes.io/pod-deletion-cost`.
    pub deletion_cost: i32,
    /// StatefulSet ordinal.
    pub ordinal: Option<u32>,
    /// Since when the pod has been draining, from its annotation.
    pub draining_since: Option<Time>,
    /// Held back (`spec.drain.holdBack`), from its annotation: out of the serving Service but
    /// not draining. Ignored on a draining pod.
    pub held_back: bool,
    /// The ReplicaSet (or other controller) that owns the pod: pods of two ReplicaSets mean a
    /// Deployment rollout.
    pub owner: Option<String>,
    /// The pod's drains that were cancelled and that it may not have heard the end of.
    pub cancelled_drain: Option<CancelledDrain>,
    /// Since when the kubelet has reported the pod not Ready; `None` while it is Ready or when
    /// the time is not known. A Silent pod is Lost only when this corroborates it.
    pub not_ready_since: Option<Time>,
    /// The latest heartbeat.
    pub heartbeat: Option<Heartbeat>,
}

/// Drains of a pod that were cancelled: the first began at `from`, the last was cancelled at
/// `at`. Between the two the pod may have believed it drained, and may believe so still if it
/// never heard the cancel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CancelledDrain {
    pub from: Time,
    pub at: Time,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    #[default]
    Pending,
    Unknown,
    Running,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    pub at: Time,
    pub sessions: u64,
    /// The count was taken while the pod knew it was draining: an earlier reply told it
    /// `drain: true` for this drain, or it said it read its annotation. Only such a count can
    /// end a Push drain: a zero that crossed the drain mark in flight was counted while the pod
    /// still took new sessions.
    pub draining: bool,
}

impl Instance {
    /// Sessions as far as they are known: a pod that never ran holds none; one that has not
    /// reported is unknown (and treated as holding sessions).
    pub fn sessions(&self) -> Option<u64> {
        match (self.heartbeat, self.started) {
            (Some(h), _) => Some(h.sessions),
            (None, None) => Some(0),
            (None, Some(_)) => None,
        }
    }
}

/// What the engine remembers between decisions; lives in the policy's status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Raw recommendations, oldest first, for the stabilization windows. A run of equal
    /// recommendations keeps one entry, so that a steady policy does not rewrite its status:
    /// each entry's time is when it was last made, except the newest, which is still being
    /// made and keeps the time its run began (see `latest_made`).
    pub recommendations: Vec<Recommendation>,
    /// When the newest recommendation was last made. Known only in the memory of the
    /// controller that made it (it is not written to status); when unknown, as after a restart,
    /// the newest counts as made just now, which holds it in the windows the longest.
    pub latest_made: Option<Time>,
    /// Changes of the serving replica count, oldest first, for the rate policies.
    pub scale_events: Vec<ScaleEvent>,
    /// Consecutive decisions in which some metric could not be read.
    pub consecutive_failures: u32,
}

impl History {
    /// The recommendations as the windows see them at `now`: the newest one counts as made
    /// at `latest_made`, or at `now` when that is unknown.
    pub fn in_force(&self, now: Time) -> Vec<Recommendation> {
        let mut recs = self.recommendations.clone();
        if let Some(newest) = recs.last_mut() {
            newest.time = newest.time.max(self.latest_made.unwrap_or(now));
        }
        recs
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub time: Time,
    pub replicas: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleEvent {
    pub time: Time,
    pub from: u32,
    pub to: u32,
}

/// Whether the decision may be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Act,
    /// `dryRun`: report what would be done, change nothing.
    DryRun,
    /// `paused`: decide nothing new.
    Paused,
}

/// One metric's part in the decision.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricOutcome {
    pub name: String,
    pub reading: Reading,
    /// The serving replica count this metric asks for; `None` when it could not be read.
    pub replicas: Option<u32>,
    /// Above its activation threshold.
    pub active: bool,
}

/// Instance counts for status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstanceCounts {
    pub ready: u32,
    pub draining: u32,
    /// Held back after the decision: serving no new sessions, not draining.
    pub held_back: u32,
    /// Sent no heartbeat for one timeout (Lost ones included).
    pub silent: u32,
    pub lost: u32,
    /// Known sessions over all instances.
    pub sessions: u64,
}

/// A draining instance, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draining {
    pub pod: String,
    pub since: Time,
    /// Known only once the pod reported after its drain began.
    pub sessions: Option<u64>,
}

/// One pod as the heartbeats show it, for status: a client cannot read heartbeats otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodReport {
    pub pod: String,
    /// Sessions in its latest heartbeat; `None` until it reports.
    pub sessions: Option<u64>,
    pub heartbeat: HeartbeatState,
    /// When it last reported, given only while it is Silent or Lost: a reporting pod's time
    /// moves with every heartbeat and would rewrite the status at every decision.
    pub last_heartbeat: Option<Time>,
}

/// Where a pod stands with its heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HeartbeatState {
    /// Silent, and not Ready for as long: it counts as gone.
    Lost,
    /// No heartbeat for one timeout; still counted with its last report.
    Silent,
    /// Has not reported yet and is not overdue (a new pod, or a new leader still waiting).
    Awaited,
    /// Reported within the timeout.
    Reporting,
}

/// Condition types the engine decides (the controller adds `Ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConditionType {
    ScalingActive,
    AbleToScale,
    ScalingLimited,
    Draining,
    Fallback,
    /// Only for policies with a heartbeat source.
    Heartbeats,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::ScalingActive => "ScalingActive",
            ConditionType::AbleToScale => "AbleToScale",
            ConditionType::ScalingLimited => "ScalingLimited",
            ConditionType::Draining => "Draining",
            ConditionType::Fallback => "Fallback",
            ConditionType::Heartbeats => "Heartbeats",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: ConditionType,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Event reasons, as `kubectl describe` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventReason {
    ScaledUp,
    ScaledDown,
    DrainStarted,
    DrainCancelled,
    DrainCompleted,
    DrainTimedOut,
    InstanceLost,
    InstanceSilent,
    HeartbeatsMissing,
    MetricUnavailable,
    FallbackActive,
    /// Nothing is scaled or drained because the target cannot be planned over.
    ScalingHeld,
    /// A pod stops taking new sessions ahead of a likely scale-in (`spec.drain.holdBack`).
    HeldBack,
    /// A held-back pod takes new sessions again.
    HoldReleased,
}

impl EventReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EventReason::ScaledUp => "ScaledUp",
            EventReason::ScaledDown => "ScaledDown",
            EventReason::DrainStarted => "DrainStarted",
            EventReason::DrainCancelled => "DrainCancelled",
            EventReason::DrainCompleted => "DrainCompleted",
            EventReason::DrainTimedOut => "DrainTimedOut",
            EventReason::InstanceLost => "InstanceLost",
            EventReason::InstanceSilent => "InstanceSilent",
            EventReason::HeartbeatsMissing => "HeartbeatsMissing",
            EventReason::MetricUnavailable => "MetricUnavailable",
            EventReason::FallbackActive => "FallbackActive",
            EventReason::ScalingHeld => "ScalingHeld",
            EventReason::HeldBack => "HeldBack",
            EventReason::HoldReleased => "HoldReleased",
        }
    }

    pub fn is_warning(self) -> bool {
        matches!(
            self,
            EventReason::DrainTimedOut
                | EventReason::InstanceLost
                | EventReason::InstanceSilent
                | EventReason::HeartbeatsMissing
                | EventReason::MetricUnavailable
                | EventReason::FallbackActive
                | EventReason::ScalingHeld
        )
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub reason: EventReason,
    pub message: String,
}

/// Everything decided at `now`, with the reasons for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub mode: Mode,
    /// Serving replicas before the decision: `spec.replicas` less draining pods.
    pub current: u32,
    /// Serving replicas wanted after behavior and limits.
    pub desired: u32,
    /// The largest count any metric asked for, before stabilization and limits; recorded in
    /// the history.
    pub recommendation: u32,
    /// `spec.replicas` to write: `desired` plus pods still draining, less those removed now.
    pub replicas: u32,
    pub limit: Limit,
    pub metrics: Vec<MetricOutcome>,
    /// Some metric could not be read this time.
    pub metrics_failed: bool,
    /// Consecutive decisions with a failed metric, this one included.
    pub failures: u32,
    pub fallback_active: bool,
    pub plan: DrainPlan,
    pub instances: InstanceCounts,
    pub draining: Vec<Draining>,
    /// Per pod, with a heartbeat source only; Lost and Silent first, at most
    /// `MAX_POD_REPORTS`.
    pub pods: Vec<PodReport>,
    pub conditions: Vec<Condition>,
    pub events: Vec<Event>,
}

impl Decision {
    pub fn scales(&self, observed: u32) -> bool {
        self.replicas != observed
    }
}

/// Decides the replica count and the drains for one policy at `now`.
pub fn decide(policy: &Policy, seen: &Observation, history: &History, now: Time) -> Decision {
    let pods: Vec<&Instance> = seen
        .instances
        .iter()
        .filter(|i| !i.terminating && in_ordinal_range(policy, seen, i))
        .collect();
    let draining_now = pods.iter().filter(|i| i.draining_since.is_some()).count();
    let current = seen
        .replicas
        .saturating_sub(u32::try_from(draining_now).unwrap_or(u32::MAX));

    let live = drain::liveness(policy, seen, &pods, now);
    let metrics = read_metrics(policy, seen, &pods, &live, current, now);
    let metrics_failed = metrics
        .iter()
        .any(|m| matches!(m.reading, Reading::Unavailable { .. }));
    let pending = metrics
        .iter()
        .any(|m| matches!(m.reading, Reading::Pending { .. }));
    // A pending reading neither counts nor clears earlier failures.
    let failures = if metrics_failed {
        history.consecutive_failures.saturating_add(1)
    } else if pending {
        history.consecutive_failures
    } else {
        0
    };
    let fallback = policy
        .fallback
        .filter(|f| metrics_failed && failures >= f.failure_threshold);
    let any_active = metrics.iter().any(|m| m.active);
    let all_failed = metrics.iter().all(|m| m.replicas.is_none());

    // A failed metric holds the current count, so it can only keep or raise the maximum.
    // Idle metrics mean zero only where zero is allowed: with minReplicas of 1 or more the
    // activation thresholds play no part and the metrics size the workload (as in KEDA).
    let idle = policy.min_replicas == 0 && !any_active;
    let recommendation = if metrics.iter().all(|m| m.replicas.is_some()) && idle {
        0
    } else {
        let asked = metrics
            .iter()
            .map(|m| m.replicas.unwrap_or(current))
            .max()
            .unwrap_or(current);
        if any_active { asked.max(1) } else { asked }
    };

    // A broad heartbeat outage holds the serving count, whatever other metrics say: the
    // instances' state cannot be known, and a scale-in would start drains that cannot end.
    let recommendation = if live.outage.is_some() {
        recommendation.max(current)
    } else {
        recommendation
    };

    let mut events = Vec::new();
    let (desired, limit) = if policy.paused {
        (current, Limit::within_range())
    } else if current > policy.max_replicas {
        (policy.max_replicas, Limit::too_many(policy.max_replicas))
    } else if current < policy.min_replicas {
        (policy.min_replicas, Limit::too_few(policy.min_replicas))
    } else if let Some(f) = fallback {
        // Upward at once; downward through the drain plan like any scale-in.
        (f.replicas, Limit::fallback(f.replicas))
    } else {
        let stable = stabilize(
            &policy.behavior,
            &history.in_force(now),
            recommendation,
            current,
            now,
        );
        let limited = limit_rate(policy, &history.scale_events, current, stable.replicas, now);
        let desired = if current == 0 && any_active {
            limited.replicas.max(1)
        } else {
            limited.replicas
        };
        (desired, limited.limit.with_stabilization(stable.reason))
    };

    for m in metrics.iter().filter(|m| m.replicas.is_none()) {
        if let Reading::Unavailable { reason } = &m.reading {
            events.push(Event {
                reason: EventReason::MetricUnavailable,
                message: format!(
                    "metric {} could not be read: {reason}; holding {current} replicas",
                    m.name
                ),
            });
        }
    }
    if let Some(f) = fallback {
        events.push(Event {
            reason: EventReason::FallbackActive,
            message: format!(
                "metrics failed {failures} times in a row (threshold {}); moving to the fallback of {} replicas",
                f.failure_threshold, f.replicas
            ),
        });
    }

    let mut plan = if policy.paused {
        DrainPlan::hold(seen.replicas)
    } else {
        drain::plan(policy, seen, &pods, &live.lost, desired, now)
    };
    let held_back = if policy.paused {
        // Letting go of the target releases them; until then they are what they are.
        pods.iter()
            .filter(|p| p.held_back && p.draining_since.is_none())
            .count() as u32
    } else {
        let holds = hold::plan(policy, &pods, &live, &plan, desired, current, now);
        plan.hold = holds.hold;
        plan.release = holds.release;
        plan.events.extend(holds.events);
        holds.held
    };
    events.extend(silence_events(policy, &pods, &live));
    let mut instances = drain::counts(&pods, &live);
    instances.held_back = held_back;
    let draining = drain::draining_status(&pods, &plan);
    let pod_reports = if policy.heartbeat.is_some() {
        drain::pod_reports(&pods, &live)
    } else {
        Vec::new()
    };
    events.append(&mut plan.events);

    let replicas = plan.replicas;
    if replicas > seen.replicas {
        // Say what asked for more, unless a limit or the fallback decided the count.
        let why = if limit.applied || fallback.is_some() {
            limit.message.clone()
        } else {
            let asks: Vec<String> = metrics
                .iter()
                .filter_map(|m| m.replicas.map(|r| format!("{} asks for {r}", m.name)))
                .collect();
            asks.join(", ")
        };
        events.push(Event {
            reason: EventReason::ScaledUp,
            message: format!(
                "scaled up from {} to {replicas} replicas: {why}",
                seen.replicas
            ),
        });
    } else if replicas < seen.replicas {
        let how = if policy.drains() {
            "after draining"
        } else {
            "without draining (no heartbeat source and drain.timeout 0s)"
        };
        events.push(Event {
            reason: EventReason::ScaledDown,
            message: format!(
                "scaled down from {} to {replicas} replicas {how}",
                seen.replicas
            ),
        });
    }

    let mode = if policy.paused {
        Mode::Paused
    } else if policy.dry_run {
        Mode::DryRun
    } else {
        Mode::Act
    };
    let conditions = conditions(ConditionInputs {
        policy,
        mode,
        metrics: &metrics,
        all_failed,
        pending,
        failures,
        fallback_active: fallback.is_some(),
        limit: &limit,
        plan: &plan,
        instances,
        current,
        desired,
        live: &live,
    });
    Decision {
        mode,
        current,
        desired,
        recommendation,
        replicas,
        limit,
        metrics,
        metrics_failed,
        failures,
        fallback_active: fallback.is_some(),
        plan,
        instances,
        draining,
        pods: pod_reports,
        conditions,
        events,
    }
}

/// A StatefulSet pod whose ordinal lies beyond `spec.replicas` is being deleted by the
/// StatefulSet controller already: like a terminating pod, it is no longer planned over.
fn in_ordinal_range(policy: &Policy, seen: &Observation, pod: &Instance) -> bool {
    let (Some(ordinal), crate::api::TargetKind::StatefulSet) = (pod.ordinal, policy.target.kind)
    else {
        return true;
    };
    let start = u64::from(seen.ordinals_start);
    (start..start + u64::from(seen.replicas)).contains(&u64::from(ordinal))
}

fn read_metrics(
    policy: &Policy,
    seen: &Observation,
    pods: &[&Instance],
    live: &drain::Liveness,
    current: u32,
    now: Time,
) -> Vec<MetricOutcome> {
    policy
        .metrics
        .iter()
        .map(|m| {
            let reading = match &m.source {
                Source::Prometheus { .. } => {
                    seen.readings
                        .get(&m.name)
                        .cloned()
                        .unwrap_or_else(|| Reading::Unavailable {
                            reason: "no reading was taken".to_owned(),
                        })
                }
                Source::Sessions => drain::sessions_reading(
                    policy,
                    seen,
                    pods,
                    live,
                    drain::SessionsMetric {
                        target: m.target,
                        current,
                        tolerance: policy.tolerance,
                    },
                    now,
                ),
            };
            let (replicas, active) = match &reading {
                Reading::Value(v) => (
                    Some(metric_replicas(m.target, *v, current, policy.tolerance)),
                    *v > m.activation,
                ),
                Reading::Unavailable { .. } | Reading::Pending { .. } => (None, false),
            };
            MetricOutcome {
                name: m.name.clone(),
                reading,
                replicas,
                active,
            }
        })
        .collect()
}

struct ConditionInputs<'a> {
    policy: &'a Policy,
    mode: Mode,
    metrics: &'a [MetricOutcome],
    all_failed: bool,
    pending: bool,
    failures: u32,
    fallback_active: bool,
    limit: &'a Limit,
    plan: &'a DrainPlan,
    instances: InstanceCounts,
    current: u32,
    desired: u32,
    live: &'a drain::Liveness,
}

/// Warnings for Silent pods that are kept (still Ready, or in a broad outage), and for the
/// outage itself; Lost pods get theirs from the plan.
fn silence_events(policy: &Policy, pods: &[&Instance], live: &drain::Liveness) -> Vec<Event> {
    let Some(hb) = &policy.heartbeat else {
        return Vec::new();
    };
    let timeout = hb.timeout.as_secs();
    let mut events = Vec::new();
    if let Some(o) = live.outage {
        events.push(Event {
            reason: EventReason::HeartbeatsMissing,
            message: format!(
                "{} of {} instances sent no heartbeat for {timeout}s at once: most likely the path to drainscaler is broken (network, NetworkPolicy, the heartbeat Service, TokenReview), not the instances; replacing and removing nothing for silence and holding the count",
                o.silent, o.known
            ),
        });
        return events;
    }
    for (i, p) in pods.iter().enumerate() {
        if live.silent[i] && !live.lost[i] {
            let last = p.heartbeat.map_or("no count yet".to_owned(), |h| {
                format!("{} sessions", h.sessions)
            });
            events.push(Event {
                reason: EventReason::InstanceSilent,
                message: format!(
                    "pod {} sent no heartbeat for {timeout}s but Kubernetes does not report it not Ready for as long: keeping it and its last count ({last})",
                    p.name
                ),
            });
        }
    }
    events
}

/// Why the first pending metric is pending.
fn pending_reason(metrics: &[MetricOutcome]) -> String {
    metrics
        .iter()
        .find_map(|m| match &m.reading {
            Reading::Pending { reason } => Some(format!("metric {} is {reason}", m.name)),
            _ => None,
        })
        .unwrap_or_default()
}

fn conditions(c: ConditionInputs<'_>) -> Vec<Condition> {
    let scaling_active = match c.mode {
        Mode::Paused => Condition {
            type_: ConditionType::ScalingActive,
            status: false,
            reason: "Paused",
            message: "spec.paused is true: no scaling or draining until it is cleared".to_owned(),
        },
        _ if c.all_failed && c.pending && c.failures == 0 => Condition {
            type_: ConditionType::ScalingActive,
            status: false,
            reason: "WaitingForHeartbeats",
            message: format!(
                "this controller began leading less than one heartbeat timeout ago and {}; holding the current count",
                pending_reason(c.metrics)
            ),
        },
        _ if c.all_failed => Condition {
            type_: ConditionType::ScalingActive,
            status: false,
            reason: "FailedGetMetrics",
            message: format!(
                "no metric could be read ({} in a row); holding the current count",
                c.failures
            ),
        },
        Mode::DryRun => Condition {
            type_: ConditionType::ScalingActive,
            status: true,
            reason: "DryRun",
            message: format!(
                "spec.dryRun is true: would run {} serving replicas, changing nothing",
                c.desired
            ),
        },
        Mode::Act => {
            let read: Vec<String> = c
                .metrics
                .iter()
                .filter_map(|m| m.replicas.map(|r| format!("{} asks for {r}", m.name)))
                .collect();
            Condition {
                type_: ConditionType::ScalingActive,
                status: true,
                reason: "ValidMetricFound",
                message: format!("computing replicas from metrics: {}", read.join(", ")),
            }
        }
    };
    let able = Condition {
        type_: ConditionType::AbleToScale,
        status: true,
        reason: c.limit.stabilization.unwrap_or("ReadyForNewScale"),
        message: match c.limit.stabilization {
            Some("ScaleDownStabilized") => {
                "recent recommendations were higher than the current one, applying the highest recent recommendation"
                    .to_owned()
            }
            Some(_) => {
                "recent recommendations were lower than the current one, applying the lowest recent recommendation"
                    .to_owned()
            }
            None => "the last scale time was sufficiently old to allow scaling".to_owned(),
        },
    };
    let limited = Condition {
        type_: ConditionType::ScalingLimited,
        status: c.limit.kind != behavior::LimitKind::DesiredWithinRange,
        reason: c.limit.kind.as_str(),
        message: c.limit.message.clone(),
    };
    let draining = if c.instances.draining > 0 {
        Condition {
            type_: ConditionType::Draining,
            status: true,
            reason: if c.plan.rollout {
                "WaitingForRollout"
            } else if c.plan.blocked {
                "WaitingForRemovalOrder"
            } else {
                "DrainInProgress"
            },
            message: format!(
                "{} instances draining{}",
                c.instances.draining,
                if c.plan.rollout {
                    "; a rollout is in progress (pods of several ReplicaSets), so drained instances wait until it ends: the Deployment, not the deletion order, decides which pods a lower count removes"
                } else if c.plan.blocked {
                    "; drained instances wait until they rank first for deletion"
                } else {
                    ""
                }
            ),
        }
    } else if c.plan.rollout && c.desired < c.current {
        Condition {
            type_: ConditionType::Draining,
            status: false,
            reason: "WaitingForRollout",
            message: format!(
                "scaling in to {} waits until the rollout in progress (pods of several ReplicaSets) ends",
                c.desired
            ),
        }
    } else {
        Condition {
            type_: ConditionType::Draining,
            status: false,
            reason: "NoDrains",
            message: "no instance is draining".to_owned(),
        }
    };
    let fallback = match (c.fallback_active, c.policy.fallback) {
        (true, Some(f)) => Condition {
            type_: ConditionType::Fallback,
            status: true,
            reason: "FallbackActive",
            message: format!(
                "metrics failed {} times in a row (threshold {}); running {} replicas",
                c.failures, f.failure_threshold, f.replicas
            ),
        },
        _ if c.failures > 0 => Condition {
            type_: ConditionType::Fallback,
            status: false,
            reason: "MetricsFailing",
            message: format!(
                "{} consecutive failed readings; holding the current count",
                c.failures
            ),
        },
        _ if c.pending => Condition {
            type_: ConditionType::Fallback,
            status: false,
            reason: "MetricsPending",
            message: format!(
                "{}: not counted as a failure for one heartbeat timeout after a leader change",
                pending_reason(c.metrics)
            ),
        },
        _ => Condition {
            type_: ConditionType::Fallback,
            status: false,
            reason: "MetricsAvailable",
            message: "every metric was read".to_owned(),
        },
    };
    let mut all = vec![scaling_active, able, limited, draining, fallback];
    if let Some(hb) = &c.policy.heartbeat {
        all.push(heartbeats_condition(hb, c.instances, c.live));
    }
    all
}

fn heartbeats_condition(
    hb: &crate::policy::Heartbeat,
    instances: InstanceCounts,
    live: &drain::Liveness,
) -> Condition {
    let timeout = hb.timeout.as_secs();
    match live.outage {
        Some(o) => Condition {
            type_: ConditionType::Heartbeats,
            status: false,
            reason: "HeartbeatsMissing",
            message: format!(
                "{} of {} instances sent no heartbeat for {timeout}s: replacing and removing nothing for silence, and the sessions metric holds the count until they report again",
                o.silent, o.known
            ),
        },
        None if instances.silent > 0 => Condition {
            type_: ConditionType::Heartbeats,
            status: true,
            reason: "SomeInstancesSilent",
            message: format!(
                "{} instances sent no heartbeat for {timeout}s ({} of them also not Ready as long, so Lost); the rest report",
                instances.silent, instances.lost
            ),
        },
        None => Condition {
            type_: ConditionType::Heartbeats,
            status: true,
            reason: "HeartbeatsReceived",
            message: "every running instance reports".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests;
