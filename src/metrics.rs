//! The controller's own metrics, served on `/metrics` in the OpenMetrics text format.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::Decision;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub namespace: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// Every metric, registered once at start-up.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub errors: Family<StepLabels, Counter>,
    pub decision_seconds: Histogram,
    pub desired: Family<PolicyLabels, Gauge>,
    pub current: Family<PolicyLabels, Gauge>,
    pub draining: Family<PolicyLabels, Gauge>,
    pub sessions: Family<PolicyLabels, Gauge>,
    pub lost: Family<PolicyLabels, Gauge>,
    pub heartbeats: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("drainscaler");
        let reconciles = Counter::default();
        let errors = Family::<StepLabels, Counter>::default();
        let decision_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        let desired = Family::<PolicyLabels, Gauge>::default();
        let current = Family::<PolicyLabels, Gauge>::default();
        let draining = Family::<PolicyLabels, Gauge>::default();
        let sessions = Family::<PolicyLabels, Gauge>::default();
        let lost = Family::<PolicyLabels, Gauge>::default();
        let heartbeats = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by the step that failed",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time from observing to reporting one policy",
            decision_seconds.clone(),
        );
        registry.register(
            "desired_replicas",
            "Serving replicas wanted",
            desired.clone(),
        );
        registry.register("current_replicas", "Serving replicas", current.clone());
        registry.register("draining_instances", "Instances draining", draining.clone());
        registry.register(
            "sessions",
            "Sessions reported by heartbeats",
            sessions.clone(),
        );
        registry.register(
            "lost_instances",
            "Instances that stopped heartbeating",
            lost.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeat requests, by result",
            heartbeats.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            decision_seconds,
            desired,
            current,
            draining,
            sessions,
            lost,
            heartbeats,
        }
    }
}

impl Metrics {
    pub fn observe_decision(&self, namespace: &str, policy: &str, d: &Decision) {
        let labels = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        let set = |f: &Family<PolicyLabels, Gauge>, v: u64| {
            f.get_or_create(&labels)
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&self.desired, u64::from(d.desired));
        set(&self.current, u64::from(d.current));
        set(&self.draining, u64::from(d.instances.draining));
        set(&self.sessions, d.instances.sessions);
        set(&self.lost, u64::from(d.instances.lost));
    }

    pub fn error(&self, step: &str) {
        self.errors
            .get_or_create(&StepLabels {
                step: step.to_owned(),
            })
            .inc();
    }

    pub fn heartbeat(&self, result: &str) {
        self.heartbeats
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Records the time since `started` when dropped, so early returns are measured too.
    pub fn timer(&self, started: Instant) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            started,
        }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .decision_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}
