//! The controller's own metrics, served on `/metrics` in the OpenMetrics text format.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::http::{Method, Request};
use futures::future::BoxFuture;
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
    pub desired: Family<PolicyLabels, Gauge>,
    pub current: Family<PolicyLabels, Gauge>,
    pub draining: Family<PolicyLabels, Gauge>,
    pub sessions: Family<PolicyLabels, Gauge>,
    pub lost: Family<PolicyLabels, Gauge>,
    pub heartbeats: Family<ResultLabels, Counter>,
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
        let desired = Family::<PolicyLabels, Gauge>::default();
        let current = Family::<PolicyLabels, Gauge>::default();
        let draining = Family::<PolicyLabels, Gauge>::default();
        let sessions = Family::<PolicyLabels, Gauge>::default();
        let lost = Family::<PolicyLabels, Gauge>::default();
        let heartbeats = Family::<ResultLabels, Counter>::default();
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
            desired,
            current,
            draining,
            sessions,
            lost,
            heartbeats,
            api_requests,
            api_seconds,
            fenced_writes,
            policies: Mutex::default(),
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
        self.policies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(labels);
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
        metrics.observe_decision("demo", "chat", &decision);
        metrics.observe_decision("demo", "gone", &decision);
        metrics.observe_decision("other", "chat", &decision);
        metrics.retain_policies(|namespace, policy| (namespace, policy) != ("demo", "gone"));
        let page = metrics.encode().expect("metrics encode");
        for family in [
            "desired_replicas",
            "current_replicas",
            "draining_instances",
            "sessions",
            "lost_instances",
        ] {
            let kept = format!(r#"drainscaler_{family}{{namespace="demo",policy="chat"}}"#);
            let other = format!(r#"drainscaler_{family}{{namespace="other",policy="chat"}}"#);
            assert!(page.contains(&kept), "{kept} missing from\n{page}");
            assert!(page.contains(&other), "{other} missing from\n{page}");
        }
        assert!(!page.contains(r#"policy="gone""#), "{page}");
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
