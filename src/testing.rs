//! Test support: builders for engine fixtures, so that tests and benchmarks read like the
//! situation they set up (`policy().min(2).max(10)`, `pod("a").ready().sessions(3)`). Compiled
//! into the library so that benchmarks and integration tests can use it too; production code
//! never calls it. Pure, no I/O.
//!
//! Times are seconds on a fixed test clock: `NOW` is the moment decisions are made and
//! `ago(s)` is `s` seconds before it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{OnLost, OnTimeout, RuleType, SelectPolicy, TargetKind};
use crate::engine::{
    Heartbeat, History, Instance, Observation, Phase, Reading, Recommendation, ScaleEvent, Time,
};
use crate::policy::{
    self, Drain, Fallback, Heartbeat as HeartbeatPolicy, HeartbeatSource, Metric, MetricTarget,
    Policy, RatePolicy, Rules, Source, Target,
};

/// The moment test decisions are made: far enough from the epoch that `ago` never underflows.
pub const NOW: Time = Time(1_000_000_000);

/// `s` seconds before `NOW`.
pub fn ago(s: u64) -> Time {
    NOW.minus(secs(s))
}

/// `s` seconds after `NOW`.
pub fn later(s: u64) -> Time {
    NOW.plus(secs(s))
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A Deployment policy for `app` between 1 and 10 replicas with the HPA's default behavior,
/// no metrics, no heartbeats and a 30m drain that removes on timeout.
pub fn policy() -> PolicyBuilder {
    PolicyBuilder(Policy {
        target: Target {
            kind: TargetKind::Deployment,
            name: "app".to_owned(),
        },
        min_replicas: 1,
        max_replicas: 10,
        interval: secs(15),
        tolerance: 0.1,
        metrics: Vec::new(),
        heartbeat: None,
        drain: Drain {
            timeout: secs(30 * 60),
            on_timeout: OnTimeout::Remove,
            hold_back: None,
        },
        behavior: policy::default_behavior(),
        fallback: None,
        prometheus: None,
        paused: false,
        dry_run: false,
    })
}

#[derive(Clone, Debug)]
pub struct PolicyBuilder(Policy);

impl PolicyBuilder {
    pub fn build(self) -> Policy {
        self.0
    }
    pub fn min(mut self, n: u32) -> Self {
        self.0.min_replicas = n;
        self
    }
    pub fn max(mut self, n: u32) -> Self {
        self.0.max_replicas = n;
        self
    }
    pub fn tolerance(mut self, t: f64) -> Self {
        self.0.tolerance = t;
        self
    }
    pub fn statefulset(mut self) -> Self {
        self.0.target.kind = TargetKind::StatefulSet;
        self
    }
    /// A Prometheus metric with a per-replica target.
    pub fn average(self, name: &str, per_replica: f64) -> Self {
        self.metric(
            name,
            prometheus(name),
            MetricTarget::AverageValue(per_replica),
        )
    }
    /// A Prometheus metric with a whole-workload target.
    pub fn value(self, name: &str, total: f64) -> Self {
        self.metric(name, prometheus(name), MetricTarget::Value(total))
    }
    /// The `sessions` metric (sessions from heartbeats) with a per-replica target.
    pub fn sessions_metric(self, per_replica: f64) -> Self {
        self.metric(
            "sessions",
            Source::Sessions,
            MetricTarget::AverageValue(per_replica),
        )
    }
    fn metric(mut self, name: &str, source: Source, target: MetricTarget) -> Self {
        self.0.metrics.push(Metric {
            name: name.to_owned(),
            source,
            target,
            activation: 0.0,
        });
        self
    }
    /// The activation threshold of the metric added last.
    pub fn activation(mut self, threshold: f64) -> Self {
        if let Some(m) = self.0.metrics.last_mut() {
            m.activation = threshold;
        }
        self
    }
    /// Pushed heartbeats, Lost after `timeout`, replaced one at a time.
    pub fn heartbeat(mut self, timeout: Duration) -> Self {
        self.0.heartbeat = Some(HeartbeatPolicy {
            source: HeartbeatSource::Push,
            timeout,
            on_lost: OnLost::Replace,
            max_concurrent_replacements: 1,
        });
        self
    }
    /// Heartbeats read from Prometheus with `query`.
    pub fn prometheus_heartbeats(mut self, query: &str) -> Self {
        if let Some(h) = &mut self.0.heartbeat {
            h.source = HeartbeatSource::Prometheus {
                query: query.to_owned(),
            };
        }
        self
    }
    pub fn on_lost(mut self, on_lost: OnLost) -> Self {
        if let Some(h) = &mut self.0.heartbeat {
            h.on_lost = on_lost;
        }
        self
    }
    pub fn max_replacements(mut self, n: u32) -> Self {
        if let Some(h) = &mut self.0.heartbeat {
            h.max_concurrent_replacements = n;
        }
        self
    }
    pub fn drain(mut self, timeout: Duration, on_timeout: OnTimeout) -> Self {
        self.0.drain = Drain {
            timeout,
            on_timeout,
            hold_back: self.0.drain.hold_back,
        };
        self
    }
    /// Holds back up to `max_pods` likely victims while the others stay under `ceiling`
    /// sessions each.
    pub fn hold_back(mut self, max_pods: u32, ceiling: u64) -> Self {
        self.0.drain.hold_back = Some(policy::HoldBack {
            max_pods,
            session_ceiling: ceiling,
        });
        self
    }
    pub fn scale_up(mut self, rules: RulesBuilder) -> Self {
        self.0.behavior.scale_up = rules.0;
        self
    }
    pub fn scale_down(mut self, rules: RulesBuilder) -> Self {
        self.0.behavior.scale_down = rules.0;
        self
    }
    pub fn fallback(mut self, failure_threshold: u32, replicas: u32) -> Self {
        self.0.fallback = Some(Fallback {
            failure_threshold,
            replicas,
        });
        self
    }
    pub fn paused(mut self) -> Self {
        self.0.paused = true;
        self
    }
    pub fn dry_run(mut self) -> Self {
        self.0.dry_run = true;
        self
    }
}

fn prometheus(name: &str) -> Source {
    Source::Prometheus {
        query: format!("sum({name})"),
    }
}

/// Scaling rules for one direction: no stabilization window, `selectPolicy: Max`, no rate
/// policies until added.
pub fn rules() -> RulesBuilder {
    RulesBuilder(Rules {
        stabilization_window: Duration::ZERO,
        select: SelectPolicy::Max,
        policies: Vec::new(),
    })
}

#[derive(Clone, Debug)]
pub struct RulesBuilder(Rules);

impl RulesBuilder {
    pub fn build(self) -> Rules {
        self.0
    }
    pub fn window(mut self, seconds: u64) -> Self {
        self.0.stabilization_window = secs(seconds);
        self
    }
    pub fn select(mut self, select: SelectPolicy) -> Self {
        self.0.select = select;
        self
    }
    /// At most `value` pods per `period` seconds.
    pub fn pods(self, value: u32, period: u64) -> Self {
        self.rate(RuleType::Pods, value, period)
    }
    /// At most `value` percent per `period` seconds.
    pub fn percent(self, value: u32, period: u64) -> Self {
        self.rate(RuleType::Percent, value, period)
    }
    fn rate(mut self, kind: RuleType, value: u32, period: u64) -> Self {
        self.0.policies.push(RatePolicy {
            kind,
            value,
            period: secs(period),
        });
        self
    }
}

/// A pod of the target, created and started an hour ago, scheduled and running but not ready,
/// with no heartbeat and no drain.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder {
        pod: Instance {
            name: name.to_owned(),
            created: ago(3600),
            scheduled: true,
            phase: Phase::Running,
            ready: false,
            started: Some(ago(3600)),
            ..Instance::default()
        },
        sessions: None,
        heartbeat_at: None,
        untold: false,
    }
}

#[derive(Clone, Debug)]
pub struct PodBuilder {
    pod: Instance,
    sessions: Option<u64>,
    heartbeat_at: Option<Time>,
    untold: bool,
}

impl PodBuilder {
    /// The instance. A pod given `sessions` or `heartbeat_at` has heartbeated: at `NOW` unless
    /// said otherwise, with zero sessions unless said otherwise.
    pub fn build(self) -> Instance {
        let mut pod = self.pod;
        // Not Ready since creation, unless said otherwise.
        pod.not_ready_since = if pod.ready {
            None
        } else {
            pod.not_ready_since.or(Some(pod.created))
        };
        if self.sessions.is_some() || self.heartbeat_at.is_some() {
            pod.heartbeat = Some(Heartbeat {
                at: self.heartbeat_at.unwrap_or(NOW),
                sessions: self.sessions.unwrap_or(0),
                // A draining pod reports having heard of its drain unless `untold`.
                draining: pod.draining_since.is_some() && !self.untold,
            });
        }
        pod
    }
    pub fn ready(mut self) -> Self {
        self.pod.ready = true;
        self
    }
    pub fn not_ready(mut self) -> Self {
        self.pod.ready = false;
        self
    }
    /// Not Ready since `at` (the Ready condition's last transition).
    pub fn not_ready_since(mut self, at: Time) -> Self {
        self.pod.ready = false;
        self.pod.not_ready_since = Some(at);
        self
    }
    /// Its drains from `from` were cancelled at `at`.
    pub fn cancelled_drain(mut self, from: Time, at: Time) -> Self {
        self.pod.cancelled_drain = Some(crate::engine::CancelledDrain { from, at });
        self
    }
    /// Its heartbeat was counted before it heard of its drain: the zero that crosses the drain
    /// mark in flight.
    pub fn untold(mut self) -> Self {
        self.untold = true;
        self
    }
    pub fn sessions(mut self, n: u64) -> Self {
        self.sessions = Some(n);
        self
    }
    pub fn heartbeat_at(mut self, at: Time) -> Self {
        self.heartbeat_at = Some(at);
        self
    }
    pub fn draining_since(mut self, since: Time) -> Self {
        self.pod.draining_since = Some(since);
        self
    }
    /// Carries the held-back mark (`spec.drain.holdBack`).
    pub fn held_back(mut self) -> Self {
        self.pod.held_back = true;
        self
    }
    pub fn created(mut self, at: Time) -> Self {
        self.pod.created = at;
        self
    }
    pub fn started(mut self, at: Time) -> Self {
        self.pod.started = Some(at);
        self
    }
    /// Scheduled but its containers never started: pending, not ready, holding nothing.
    pub fn pending(mut self) -> Self {
        self.pod.phase = Phase::Pending;
        self.pod.started = None;
        self.pod.ready = false;
        self
    }
    /// Not bound to a node yet.
    pub fn unscheduled(mut self) -> Self {
        self.pod.scheduled = false;
        self.pending()
    }
    pub fn phase(mut self, phase: Phase) -> Self {
        self.pod.phase = phase;
        self
    }
    pub fn terminating(mut self) -> Self {
        self.pod.terminating = true;
        self
    }
    /// Owned by the ReplicaSet (or StatefulSet) `owner`.
    pub fn owner(mut self, owner: &str) -> Self {
        self.pod.owner = Some(owner.to_owned());
        self
    }
    pub fn cost(mut self, deletion_cost: i32) -> Self {
        self.pod.deletion_cost = deletion_cost;
        self
    }
    pub fn ordinal(mut self, n: u32) -> Self {
        self.pod.ordinal = Some(n);
        self
    }
    pub fn restarts(mut self, n: u32) -> Self {
        self.pod.restarts = n;
        self
    }
}

/// What the controller saw: no readings, no pods, heartbeats collected for a day. Unless
/// `replicas` is given, `spec.replicas` is the number of pods that are not terminating.
pub fn observation() -> ObservationBuilder {
    ObservationBuilder {
        replicas: None,
        readings: BTreeMap::new(),
        pods: Vec::new(),
        heartbeats_since: ago(86_400),
        ordinals_start: 0,
    }
}

#[derive(Clone, Debug)]
pub struct ObservationBuilder {
    replicas: Option<u32>,
    readings: BTreeMap<String, Reading>,
    pods: Vec<Instance>,
    heartbeats_since: Time,
    ordinals_start: u32,
}

impl ObservationBuilder {
    pub fn build(self) -> Observation {
        let alive = self.pods.iter().filter(|p| !p.terminating).count();
        Observation {
            replicas: self
                .replicas
                .unwrap_or_else(|| u32::try_from(alive).unwrap_or(u32::MAX)),
            readings: self.readings,
            instances: self.pods,
            heartbeats_since: self.heartbeats_since,
            ordinals_start: self.ordinals_start,
        }
    }
    /// A StatefulSet whose ordinals begin at `start` (`spec.ordinals.start`).
    pub fn ordinals_start(mut self, start: u32) -> Self {
        self.ordinals_start = start;
        self
    }
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = Some(n);
        self
    }
    pub fn reading(mut self, metric: &str, value: f64) -> Self {
        self.readings
            .insert(metric.to_owned(), Reading::Value(value));
        self
    }
    pub fn failing(mut self, metric: &str, reason: &str) -> Self {
        self.readings.insert(
            metric.to_owned(),
            Reading::Unavailable {
                reason: reason.to_owned(),
            },
        );
        self
    }
    pub fn pods(mut self, pods: impl IntoIterator<Item = PodBuilder>) -> Self {
        self.pods.extend(pods.into_iter().map(PodBuilder::build));
        self
    }
    /// `n` ready pods `p0`, `p1`, ... that report `sessions` each, with ordinals.
    pub fn ready_pods(self, n: u32, sessions: u64) -> Self {
        self.pods((0..n).map(|i| pod(&format!("p{i}")).ordinal(i).ready().sessions(sessions)))
    }
    pub fn heartbeats_since(mut self, since: Time) -> Self {
        self.heartbeats_since = since;
        self
    }
}

/// An empty history.
pub fn history() -> HistoryBuilder {
    HistoryBuilder(History::default(), false)
}

/// A history; the time of each recommendation is exactly known unless `restarted`.
#[derive(Clone, Debug)]
pub struct HistoryBuilder(History, bool);

impl HistoryBuilder {
    pub fn build(mut self) -> History {
        if !self.1 {
            self.0.latest_made = self.0.recommendations.last().map(|r| r.time);
        }
        self.0
    }
    /// As read back from status by a controller that did not make the newest recommendation:
    /// when it was last made is unknown.
    pub fn restarted(mut self) -> Self {
        self.1 = true;
        self
    }
    /// A recommendation of `replicas` made at `at`.
    pub fn rec(mut self, at: Time, replicas: u32) -> Self {
        self.0
            .recommendations
            .push(Recommendation { time: at, replicas });
        self
    }
    /// A change of the serving count from `from` to `to` at `at`.
    pub fn event(mut self, at: Time, from: u32, to: u32) -> Self {
        self.0.scale_events.push(ScaleEvent { time: at, from, to });
        self
    }
    pub fn failures(mut self, n: u32) -> Self {
        self.0.consecutive_failures = n;
        self
    }
}

/// Proptest's settings for a fuzzing property: `default` inputs in the normal test run, or
/// `PROPTEST_CASES` of them for a longer run. A failing input is kept in proptest-regressions/
/// and tried first on every later run.
#[cfg(test)]
pub fn fuzz_config(default: u32) -> proptest::test_runner::Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    proptest::test_runner::Config {
        cases,
        ..proptest::test_runner::Config::default()
    }
}

/// An autoscaling/v2 HorizontalPodAutoscaler `name` in `namespace` that scales the Deployment
/// `deployment` (up to 3 replicas).
pub fn deployment_hpa(
    namespace: &str,
    name: &str,
    deployment: &str,
) -> k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler {
    use k8s_openapi::api::autoscaling::v2::{
        CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
    };
    let mut hpa = HorizontalPodAutoscaler::default();
    hpa.metadata.name = Some(name.to_owned());
    hpa.metadata.namespace = Some(namespace.to_owned());
    hpa.spec = Some(HorizontalPodAutoscalerSpec {
        scale_target_ref: CrossVersionObjectReference {
            kind: "Deployment".to_owned(),
            name: deployment.to_owned(),
            ..CrossVersionObjectReference::default()
        },
        max_replicas: 3,
        ..HorizontalPodAutoscalerSpec::default()
    });
    hpa
}

/// A ScalingPolicy `name` in `namespace` for the Deployment `target`, created at `created`
/// (seconds since the epoch), with no metrics: for tests of who scales what.
pub fn deployment_policy(
    namespace: &str,
    name: &str,
    target: &str,
    created: i64,
) -> crate::api::ScalingPolicy {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as KubeTime;
    let mut sp: crate::api::ScalingPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "drainscaler.io/v1alpha1",
        "kind": "ScalingPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "targetRef": {"kind": "Deployment", "name": target},
            "maxReplicas": 5,
            "metrics": [],
        },
    }))
    .expect("a policy");
    sp.metadata.creation_timestamp = Some(KubeTime(
        k8s_openapi::jiff::Timestamp::from_second(created).expect("a time"),
    ));
    sp
}
