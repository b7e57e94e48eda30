//! The controller's own metrics, served on `/metrics` in the OpenMetrics text format.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::{Method, Request};
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{ConditionType, Decision};

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
pub struct VerbLabels {
    pub verb: String,
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
    pub reconcile_seconds: Histogram,
    /// How late each reading of a policy's metrics was taken after its interval.
    pub read_lateness: Histogram,
    pub desired: Family<PolicyLabels, Gauge>,
    pub current: Family<PolicyLabels, Gauge>,
    pub draining: Family<PolicyLabels, Gauge>,
    pub sessions: Family<PolicyLabels, Gauge>,
    pub lost: Family<PolicyLabels, Gauge>,
    pub silent: Family<PolicyLabels, Gauge>,
    pub fallback_active: Family<PolicyLabels, Gauge>,
    /// 1 while the engine's `Heartbeats` condition is False (a broad heartbeat outage).
    pub heartbeats_missing: Family<PolicyLabels, Gauge>,
    pub ready: Family<PolicyLabels, Gauge>,
    /// Start of the oldest drain under way, in Unix seconds; no series while none drains.
    pub oldest_drain: Family<PolicyLabels, Gauge>,
    pub drain_timeout: Family<PolicyLabels, Gauge>,
    pub leader: Gauge,
    pub heartbeats: Family<ResultLabels, Counter>,
    pub token_reviews: Family<ResultLabels, Counter>,
    pub http_refused: Family<ResultLabels, Counter>,
    pub api_requests: Family<VerbLabels, Counter>,
    pub api_seconds: Family<VerbLabels, Histogram, fn() -> Histogram>,
    pub fenced_writes: Family<ResultLabels, Counter>,
    /// The policies that have per-policy series, so that those of a deleted policy can go.
    policies: Mutex<HashSet<PolicyLabels>>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to 2.5 s in steps of 1.5x, fine enough to read a p99 from.
    Histogram::new(exponential_buckets(0.0005, 1.5, 22))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("drainscaler");
        let reconciles = Counter::default();
        let errors = Family::<StepLabels, Counter>::default();
        let reconcile_seconds = latency_histogram();
        // From the interval's own jitter to a controller far behind; 1 s is a bound users ask.
        let read_lateness = Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]);
        let desired = Family::<PolicyLabels, Gauge>::default();
        let current = Family::<PolicyLabels, Gauge>::default();
        let draining = Family::<PolicyLabels, Gauge>::default();
        let sessions = Family::<PolicyLabels, Gauge>::default();
        let lost = Family::<PolicyLabels, Gauge>::default();
        let silent = Family::<PolicyLabels, Gauge>::default();
        let fallback_active = Family::<PolicyLabels, Gauge>::default();
        let heartbeats_missing = Family::<PolicyLabels, Gauge>::default();
        let ready = Family::<PolicyLabels, Gauge>::default();
        let oldest_drain = Family::<PolicyLabels, Gauge>::default();
        let drain_timeout = Family::<PolicyLabels, Gauge>::default();
        let leader = Gauge::default();
        let heartbeats = Family::<ResultLabels, Counter>::default();
        let token_reviews = Family::<ResultLabels, Counter>::default();
        let http_refused = Family::<ResultLabels, Counter>::default();
        let api_requests = Family::<VerbLabels, Counter>::default();
        let api_seconds: Family<VerbLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let fenced_writes = Family::<ResultLabels, Counter>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by the step that failed",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time from observing to reporting one policy",
            reconcile_seconds.clone(),
        );
        registry.register(
            "read_lateness_seconds",
            "How long after its interval a policy's metrics were read again (0 when on time)",
            read_lateness.clone(),
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
            "silent_instances",
            "Instances that sent no heartbeat for one timeout (lost ones included)",
            silent.clone(),
        );
        registry.register(
            "fallback_active",
            "1 while the fallback replica count applies because metrics kept failing",
            fallback_active.clone(),
        );
        registry.register(
            "heartbeats_missing",
            "1 while the Heartbeats condition is False: more of the policy's instances are silent than report",
            heartbeats_missing.clone(),
        );
        registry.register(
            "policy_ready",
            "1 when the last reconcile of the policy reported Ready, 0 when it was blocked",
            ready.clone(),
        );
        registry.register(
            "oldest_drain_start_timestamp_seconds",
            "When the oldest drain under way began, in Unix seconds (absent while none drains)",
            oldest_drain.clone(),
        );
        registry.register(
            "drain_timeout_seconds",
            "The policy's spec.drain.timeout (0: drains are not waited for)",
            drain_timeout.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the lease and reconciles",
            leader.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeat requests, by result",
            heartbeats.clone(),
        );
        registry.register(
            "token_reviews",
            "Heartbeat tokens by how they were identified: hit, refused_cached, coalesced, \
             reviewed (a TokenReview sent), refused_unread, throttled, review_failed",
            token_reviews.clone(),
        );
        registry.register(
            "http_refused",
            "Heartbeat connections and requests refused by a limit: connections, concurrency, \
             body_timeout, tls_handshake",
            http_refused.clone(),
        );
        registry.register(
            "api_requests",
            "Requests sent to the Kubernetes API, by verb (a watch counts once, when opened)",
            api_requests.clone(),
        );
        registry.register(
            "api_request_duration_seconds",
            "Time until the Kubernetes API answered, by verb (watches are not timed)",
            api_seconds.clone(),
        );
        registry.register(
            "fenced_writes",
            "Writes to the Kubernetes API, sent or refused because leadership was not fresh",
            fenced_writes.clone(),
        );
        Metrics {
            registry,
            reconciles,
            errors,
            reconcile_seconds,
            read_lateness,
            desired,
            current,
            draining,
            sessions,
            lost,
            silent,
            fallback_active,
            heartbeats_missing,
            ready,
            oldest_drain,
            drain_timeout,
            leader,
            heartbeats,
            token_reviews,
            http_refused,
            api_requests,
            api_seconds,
            fenced_writes,
            policies: Mutex::default(),
        }
    }
}

impl Metrics {
    /// Records a decision that was reported, for a policy whose `spec.drain.timeout` is
    /// `drain_timeout`.
    pub fn observe_decision(
        &self,
        namespace: &str,
        policy: &str,
        drain_timeout: Duration,
        d: &Decision,
    ) {
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
        set(&self.silent, u64::from(d.instances.silent));
        set(&self.fallback_active, u64::from(d.fallback_active));
        let missing = d
            .conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Heartbeats && !c.status);
        set(&self.heartbeats_missing, u64::from(missing));
        set(&self.ready, 1);
        set(&self.drain_timeout, drain_timeout.as_secs());
        match d.draining.iter().map(|x| x.since).min() {
            // Whole seconds, rounded down: an alert on `time() - this` fires no later.
            Some(since) => {
                self.oldest_drain
                    .get_or_create(&labels)
                    .set(since.millis().div_euclid(1000));
            }
            None => {
                self.oldest_drain.remove(&labels);
            }
        }
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(labels);
    }

    /// Records that a policy was blocked: its `Ready` condition is False.
    pub fn blocked(&self, namespace: &str, policy: &str) {
        let labels = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        self.ready.get_or_create(&labels).set(0);
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(labels);
    }

    /// Records whether this replica leads (holds the lease and reconciles).
    pub fn leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Removes the series of every policy for which `live(namespace, policy)` is false, so that
    /// deleted policies do not stay on `/metrics` with their last values.
    pub fn retain_policies(&self, live: impl Fn(&str, &str) -> bool) {
        let mut policies = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        policies.retain(|labels| {
            let keep = live(&labels.namespace, &labels.policy);
            if !keep {
                for family in [
                    &self.desired,
                    &self.current,
                    &self.draining,
                    &self.sessions,
                    &self.lost,
                    &self.silent,
                    &self.fallback_active,
                    &self.heartbeats_missing,
                    &self.ready,
                    &self.oldest_drain,
                    &self.drain_timeout,
                ] {
                    family.remove(labels);
                }
            }
            keep
        });
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

    pub fn token_review(&self, result: &str) {
        self.token_reviews
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn refused(&self, limit: &str) {
        self.http_refused
            .get_or_create(&ResultLabels {
                result: limit.to_owned(),
            })
            .inc();
    }

    /// Counts one write the fence let through (`sent`) or stopped (`refused`).
    pub fn fenced_write(&self, result: &str) {
        self.fenced_writes
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts one request to the Kubernetes API. `verb` is the HTTP method, or `watch` for a
    /// GET with `watch=true` (long-running, so not comparable with the others).
    pub fn api_request(&self, verb: &str) {
        self.api_requests
            .get_or_create(&VerbLabels {
                verb: verb.to_owned(),
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

/// The `verb` label of an API request: its HTTP method, or `watch` for a GET that watches.
pub fn api_verb<'a>(method: &'a Method, query: Option<&str>) -> &'a str {
    let watch = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    if watch { "watch" } else { method.as_str() }
}

/// Counts every request the Kubernetes client sends, by verb, and times it until the response
/// headers arrive (watches are counted, not timed: they stay open).
#[derive(Clone)]
pub struct ApiLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for ApiLayer {
    type Service = ApiService<S>;
    fn layer(&self, inner: S) -> ApiService<S> {
        ApiService {
            inner,
            metrics: Arc::clone(&self.0),
        }
    }
}

#[derive(Clone)]
pub struct ApiService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<Request<B>> for ApiService<S>
where
    S: tower::Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let verb = api_verb(request.method(), request.uri().query()).to_owned();
        self.metrics.api_request(&verb);
        let started = Instant::now();
        let metrics = Arc::clone(&self.metrics);
        let response = self.inner.call(request);
        Box::pin(async move {
            let result = response.await;
            if verb != "watch" {
                metrics
                    .api_seconds
                    .get_or_create(&VerbLabels { verb })
                    .observe(started.elapsed().as_secs_f64());
            }
            result
        })
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Method;

    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::Request;
    use tower::{Layer, ServiceExt};

    use super::{ApiLayer, Metrics, api_verb};
    use crate::testing::{NOW, history, observation, policy};

    #[tokio::test]
    async fn the_api_layer_counts_every_request_and_times_all_but_watches() {
        let metrics = Arc::new(Metrics::default());
        let api = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>("answer")
        });
        let layered = ApiLayer(Arc::clone(&metrics)).layer(api);
        for uri in ["/api/v1/pods", "/api/v1/pods?watch=true", "/api/v1/pods"] {
            let request = Request::get(uri).body(()).expect("a request");
            let answer = layered.clone().oneshot(request).await;
            assert_eq!(answer, Ok("answer"));
        }
        let page = metrics.encode().expect("metrics encode");
        for line in [
            r#"drainscaler_api_requests_total{verb="GET"} 2"#,
            r#"drainscaler_api_requests_total{verb="watch"} 1"#,
            r#"drainscaler_api_request_duration_seconds_count{verb="GET"} 2"#,
        ] {
            assert!(page.contains(line), "{line} missing from\n{page}");
        }
        assert!(!page.contains(r#"drainscaler_api_request_duration_seconds_count{verb="watch"}"#));
    }

    #[test]
    fn the_series_of_a_deleted_policy_are_removed_and_the_others_kept() {
        let metrics = Metrics::default();
        let decision = crate::engine::decide(
            &policy().build(),
            &observation().build(),
            &history().build(),
            NOW,
        );
        let timeout = Duration::from_secs(60);
        metrics.observe_decision("demo", "chat", timeout, &decision);
        metrics.observe_decision("demo", "gone", timeout, &decision);
        metrics.observe_decision("other", "chat", timeout, &decision);
        metrics.retain_policies(|namespace, policy| (namespace, policy) != ("demo", "gone"));
        let page = metrics.encode().expect("metrics encode");
        for family in [
            "desired_replicas",
            "current_replicas",
            "draining_instances",
            "sessions",
            "lost_instances",
            "silent_instances",
            "fallback_active",
            "heartbeats_missing",
            "policy_ready",
            "drain_timeout_seconds",
        ] {
            let kept = format!(r#"drainscaler_{family}{{namespace="demo",policy="chat"}}"#);
            let other = format!(r#"drainscaler_{family}{{namespace="other",policy="chat"}}"#);
            assert!(page.contains(&kept), "{kept} missing from\n{page}");
            assert!(page.contains(&other), "{other} missing from\n{page}");
        }
        assert!(!page.contains(r#"policy="gone""#), "{page}");
    }

    #[test]
    fn the_oldest_drain_is_exported_while_one_runs_and_removed_after() {
        let metrics = Metrics::default();
        let mut decision = crate::engine::decide(
            &policy().build(),
            &observation().build(),
            &history().build(),
            NOW,
        );
        let drain = |pod: &str, millis: i64| crate::engine::Draining {
            pod: pod.to_owned(),
            since: crate::engine::Time(millis),
            sessions: None,
        };
        decision.draining = vec![drain("b", 1_700_000_090_000), drain("a", 1_700_000_000_999)];
        decision.fallback_active = true;
        decision.instances.silent = 3;
        decision.conditions.push(crate::engine::Condition {
            type_: crate::engine::ConditionType::Heartbeats,
            status: false,
            reason: "HeartbeatsMissing",
            message: "3 of 4 instances sent no heartbeat".to_owned(),
        });
        metrics.observe_decision("demo", "chat", Duration::from_secs(600), &decision);
        let page = metrics.encode().expect("metrics encode");
        for line in [
            r#"drainscaler_oldest_drain_start_timestamp_seconds{namespace="demo",policy="chat"} 1700000000"#,
            r#"drainscaler_drain_timeout_seconds{namespace="demo",policy="chat"} 600"#,
            r#"drainscaler_fallback_active{namespace="demo",policy="chat"} 1"#,
            r#"drainscaler_silent_instances{namespace="demo",policy="chat"} 3"#,
            r#"drainscaler_policy_ready{namespace="demo",policy="chat"} 1"#,
            r#"drainscaler_heartbeats_missing{namespace="demo",policy="chat"} 1"#,
        ] {
            assert!(page.contains(line), "{line} missing from\n{page}");
        }
        decision.draining.clear();
        decision
            .conditions
            .retain(|c| c.reason != "HeartbeatsMissing");
        metrics.observe_decision("demo", "chat", Duration::from_secs(600), &decision);
        metrics.blocked("demo", "chat");
        let page = metrics.encode().expect("metrics encode");
        assert!(
            !page.contains("drainscaler_oldest_drain_start_timestamp_seconds{"),
            "{page}"
        );
        assert!(
            page.contains(r#"drainscaler_heartbeats_missing{namespace="demo",policy="chat"} 0"#),
            "{page}"
        );
        assert!(
            page.contains(r#"drainscaler_policy_ready{namespace="demo",policy="chat"} 0"#),
            "{page}"
        );
    }

    #[test]
    fn api_requests_are_counted_by_method_and_watches_apart() {
        assert_eq!(api_verb(&Method::GET, None), "GET");
        assert_eq!(api_verb(&Method::GET, Some("limit=500")), "GET");
        assert_eq!(
            api_verb(&Method::GET, Some("watch=true&resourceVersion=1")),
            "watch"
        );
        assert_eq!(api_verb(&Method::PATCH, Some("fieldManager=x")), "PATCH");
    }
}
