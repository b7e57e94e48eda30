//! Gathering an `Observation` for one policy: the target's count (watched, or its scale
//! subresource), its pods from the shared cache, Prometheus readings and heartbeats. Needs a client.

pub mod heartbeats;
pub mod pods;
pub mod prometheus;
pub mod scales;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::core::Selector;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::api::{ScalingPolicy, TargetKind};
use crate::engine::{Heartbeat, Observation, Reading, Time};
use crate::error::Error;
use crate::index::pods::PodIndex;
use crate::index::targets::{Scales, TargetIndex};
use crate::observe::heartbeats::{Heartbeats, PodKey};
use crate::observe::pods::CachedPod;
use crate::observe::prometheus::Prometheus;
use crate::observe::prometheus::decode::PerPod;
use crate::observe::prometheus::tenancy;
use crate::observe::scales::{Scale, ScaleCache, target_of};
use crate::policy::{HeartbeatSource, Policy, Source};

/// What observing reads from.
#[derive(Clone)]
pub struct Sources {
    pub client: Client,
    pub pods: Store<CachedPod>,
    /// `pods` by namespace and label, changed by the same watch events.
    pub pod_index: Arc<PodIndex>,
    pub heartbeats: Heartbeats,
    /// The controller-wide `--prometheus-url`.
    pub prometheus: Option<Prometheus>,
    /// When this controller began collecting heartbeats (it became leader).
    pub heartbeats_since: Time,
    /// With `--prometheus-namespace-label`: the label every selector of a policy's queries must
    /// match with the policy's namespace.
    pub namespace_label: Option<String>,
}

/// The target as its scale subresource shows it (or the watched object, the same fields).
#[derive(Clone, Debug)]
pub struct Target {
    pub replicas: u32,
    pub selector: Selector,
    /// The scale's resourceVersion: a write of the count carries it, so that it fails if the
    /// count changed after it was read.
    pub resource_version: Option<String>,
    /// A StatefulSet's `spec.ordinals.start`; 0 for a Deployment.
    pub ordinals_start: u32,
}

/// What a decision was computed from, as writes must name it: each observed pod's UID by
/// name, so that a write cannot hit a pod recreated under the same name since.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodUids(pub HashMap<String, String>);

impl PodUids {
    pub fn of(&self, pod: &str) -> Option<&str> {
        self.0.get(pod).map(String::as_str)
    }
}

/// Why a policy must not act, found while observing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    TargetNotFound(String),
    Conflict(String),
    /// The policy's Prometheus credentials cannot be used (a Secret missing, not opted in, or
    /// malformed).
    PrometheusAuth(String),
    /// A query cannot be run as the controller requires (with `--prometheus-namespace-label`,
    /// one that reads another namespace or cannot be parsed).
    InvalidQuery(String),
}

/// The target's count, selector and version: from the watched cache, or, when the cache does not
/// hold it or `through` asks for it (the last write on the cached version conflicted: the cache
/// may lag), through `/scale`. `Blocked` when it does not exist or has no usable selector.
pub async fn target(
    client: &Client,
    cache: &ScaleCache,
    through: bool,
    namespace: &str,
    policy: &Policy,
) -> Result<Result<Target, Blocked>, Error> {
    let (kind, name) = (policy.target.kind, policy.target.name.as_str());
    match cache.target(kind, namespace, name) {
        Some(cached) if !through => Ok(cached),
        _ => target_named(client, namespace, kind, name).await,
    }
}

/// The target read through its `/scale` subresource (and a StatefulSet's ordinals through the
/// StatefulSet), from its kind and name alone: for a policy that may not validate (one being
/// deleted), and when the cache cannot answer.
pub async fn target_named(
    client: &Client,
    namespace: &str,
    kind: TargetKind,
    name: &str,
) -> Result<Result<Target, Blocked>, Error> {
    let scale = match kind {
        TargetKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_scale(name)
                .await
        }
        TargetKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get_scale(name)
                .await
        }
    };
    let scale = match scale {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Ok(Err(Blocked::TargetNotFound(format!(
                "{} {namespace}/{name} does not exist: create it or fix spec.targetRef",
                kind_name(kind)
            ))));
        }
        Err(source) => return Err(Error::ReadScale { source }),
    };
    let raw = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    // `/scale` does not show where a StatefulSet's ordinals begin, and planning from the
    // wrong start would count ordinals that do not exist.
    let ordinals_start = match kind {
        TargetKind::Deployment => None,
        TargetKind::StatefulSet => Api::<StatefulSet>::namespaced(client.clone(), namespace)
            .get(name)
            .await
            .map_err(|source| Error::ReadScale { source })?
            .spec
            .and_then(|s| s.ordinals)
            .and_then(|o| o.start),
    };
    let read = Scale {
        replicas: scale.spec.and_then(|s| s.replicas).unwrap_or(0),
        selector: pods::parse_selector(&raw),
        ordinals_start,
        resource_version: scale.metadata.resource_version,
    };
    Ok(target_of(kind, namespace, name, read))
}

/// Another policy or a HorizontalPodAutoscaler that scales the same target, from the indexes of
/// the controller's caches. Of two policies the older one keeps it.
pub fn conflicts(
    policies: &TargetIndex<ScalingPolicy>,
    autoscalers: &TargetIndex<HorizontalPodAutoscaler>,
    sp: &ScalingPolicy,
) -> Option<Blocked> {
    let target = sp.target()?;
    let kind = &target.kind;
    let mine = sp.scaler();
    // Oldest first: the one that keeps the target.
    let older = policies
        .scalers(&target)
        .into_iter()
        .next()
        .filter(|other| *other < mine);
    if let Some(other) = older {
        return Some(Blocked::Conflict(format!(
            "ScalingPolicy {} already scales {kind} {}: delete one of the two policies",
            other.name, target.name
        )));
    }
    autoscalers.scalers(&target).into_iter().next().map(|h| {
        Blocked::Conflict(format!(
            "HorizontalPodAutoscaler {} also scales {kind} {}: delete it, drainscaler replaces it",
            h.name, target.name
        ))
    })
}

/// The kind and name of the target an HPA scales.
pub fn hpa_scales(hpa: &HorizontalPodAutoscaler) -> Option<(&str, &str)> {
    hpa.spec.as_ref().map(|s| {
        (
            s.scale_target_ref.kind.as_str(),
            s.scale_target_ref.name.as_str(),
        )
    })
}

/// Keeps of an HPA only what `conflicts` reads, so the cache stays small.
pub fn prune_hpa(hpa: &mut HorizontalPodAutoscaler) {
    hpa.metadata.managed_fields = None;
    hpa.metadata.annotations = None;
    hpa.metadata.labels = None;
    hpa.status = None;
    if let Some(spec) = hpa.spec.as_mut() {
        spec.metrics = None;
        spec.behavior = None;
    }
}

pub fn kind_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Deployment => "Deployment",
        TargetKind::StatefulSet => "StatefulSet",
    }
}

/// The policy's Prometheus readings at `now` (the `prometheus` heartbeat source records its
/// heartbeats on the way). With `reuse`, Prometheus is not queried and those readings stand (a
/// reconcile between two intervals). Independent of the target, so it runs alongside `target`.
/// All of the policy's queries share one time budget (`spec.prometheus.timeout`), so a slow
/// server holds a reconcile slot no longer than that. `Blocked` when the policy's credentials
/// cannot be used as they are: retrying will not help, the user must fix them.
pub async fn readings(
    sources: &Sources,
    namespace: &str,
    policy: &Policy,
    reuse: Option<&BTreeMap<String, Reading>>,
    now: Time,
) -> Result<BTreeMap<String, Reading>, Blocked> {
    let metric_queries: Vec<(&str, &str)> = policy
        .metrics
        .iter()
        .filter_map(|m| match &m.source {
            Source::Prometheus { query } => Some((m.name.as_str(), query.as_str())),
            Source::Sessions => None,
        })
        .collect();
    let heartbeat_query = match policy.heartbeat.as_ref().map(|h| &h.source) {
        Some(HeartbeatSource::Prometheus { query }) => Some(query.as_str()),
        _ => None,
    };
    let (metric_queries, heartbeat_query) =
        scoped_queries(sources, namespace, metric_queries, heartbeat_query)?;
    let metric_queries: Vec<(&str, &str)> = metric_queries
        .iter()
        .map(|(name, query)| (*name, query.as_str()))
        .collect();
    let heartbeat_query = heartbeat_query.as_deref();
    if let Some(kept) = reuse {
        return Ok(metric_queries
            .iter()
            .map(|(name, _)| {
                let reading = kept.get(*name).cloned().unwrap_or(Reading::Unavailable {
                    reason: "not read yet".to_owned(),
                });
                ((*name).to_owned(), reading)
            })
            .collect());
    }
    if metric_queries.is_empty() && heartbeat_query.is_none() {
        return Ok(BTreeMap::new());
    }

    let budget = policy
        .prometheus
        .as_ref()
        .map(|p| p.timeout)
        .or(sources.prometheus.as_ref().map(Prometheus::timeout))
        .unwrap_or(prometheus::DEFAULT_TIMEOUT);
    let deadline = tokio::time::Instant::now() + budget;
    let over_budget = || {
        format!(
            "the policy's Prometheus queries took longer than their time budget of {}s \
             (spec.prometheus.timeout, shared by all of them)",
            budget.as_secs_f64()
        )
    };
    let connect = Prometheus::for_policy(
        &sources.client,
        namespace,
        policy.prometheus.as_ref(),
        sources.prometheus.as_ref(),
    );
    let server = match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => Err(over_budget()),
        Ok(Err(e)) if e.needs_a_fix() => {
            return Err(Blocked::PrometheusAuth(format!(
                "the Prometheus server cannot be used: {e}"
            )));
        }
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(p)) => Ok(p),
    };
    let server = match server {
        Ok(p) => p,
        Err(reason) => {
            if heartbeat_query.is_some() {
                tracing::warn!(namespace, %reason, "heartbeat query not run");
            }
            return Ok(metric_queries
                .iter()
                .map(|(name, _)| {
                    let reason = reason.clone();
                    ((*name).to_owned(), Reading::Unavailable { reason })
                })
                .collect());
        }
    };

    let metrics = futures::future::join_all(metric_queries.iter().map(|(name, query)| {
        let server = &server;
        async move {
            let reading = tokio::time::timeout_at(deadline, server.reading(query))
                .await
                .unwrap_or_else(|_| Reading::Unavailable {
                    reason: over_budget(),
                });
            ((*name).to_owned(), reading)
        }
    }));
    let heartbeats = async {
        let query = heartbeat_query?;
        let answer = tokio::time::timeout_at(deadline, server.per_pod(query, now))
            .await
            .unwrap_or_else(|_| Err(over_budget()));
        Some((query, answer))
    };
    let (readings, heartbeats) = tokio::join!(metrics, heartbeats);
    match heartbeats {
        Some((_, Ok(per_pod))) => record_heartbeats(sources, namespace, &per_pod),
        // Pods simply miss their heartbeat; silence is not zero, and a broken query does not
        // make anything Lost on its own.
        Some((query, Err(why))) => tracing::warn!(namespace, query, %why, "heartbeat query failed"),
        None => {}
    }
    Ok(readings.into_iter().collect())
}

/// The policy's queries as they are sent: with `--prometheus-namespace-label`, each restricted to
/// the policy's namespace.
#[allow(clippy::type_complexity)]
fn scoped_queries<'a>(
    sources: &Sources,
    namespace: &str,
    metrics: Vec<(&'a str, &str)>,
    heartbeat: Option<&str>,
) -> Result<(Vec<(&'a str, String)>, Option<String>), Blocked> {
    let scope = |what: &str, query: &str| match &sources.namespace_label {
        None => Ok(query.to_owned()),
        Some(label) => tenancy::enforce(query, label, namespace).map_err(|why| {
            Blocked::InvalidQuery(format!(
                "the {what} cannot run on this controller's shared Prometheus, which restricts \
                 each policy to its own namespace: {why}"
            ))
        }),
    };
    let metrics = metrics
        .into_iter()
        .map(|(name, query)| Ok((name, scope(&format!("query of metric {name}"), query)?)))
        .collect::<Result<Vec<_>, Blocked>>()?;
    let heartbeat = heartbeat
        .map(|query| scope("heartbeat query", query))
        .transpose()?;
    Ok((metrics, heartbeat))
}

/// Records the usable samples of a heartbeat query as the heartbeats of the pods they name, in
/// `namespace`. A sample counts only for the pod that holds its name now: not for a pod that
/// did not exist yet when it was taken, nor for another UID than the one the series carries; and
/// it is keyed by that pod's UID, so a recreated pod of the same name does not inherit it.
pub fn record_heartbeats(sources: &Sources, namespace: &str, per_pod: &PerPod) {
    for unusable in &per_pod.unusable {
        tracing::warn!(
            namespace,
            pod = unusable.pod,
            reason = unusable.reason,
            "heartbeat sample not usable"
        );
    }
    for (name, sample) in &per_pod.samples {
        let Some(pod) = sources
            .pods
            .get(&ObjectRef::<CachedPod>::new(name).within(namespace))
        else {
            continue;
        };
        let Some(uid) = pod.metadata.uid.clone() else {
            continue;
        };
        if sample.uid.as_ref().is_some_and(|u| *u != uid) {
            tracing::debug!(
                namespace,
                pod = name,
                "heartbeat sample of an earlier pod of that name"
            );
            continue;
        }
        // The kubelet's start time when known (nothing ran before it), else creation.
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .or(pod.metadata.creation_timestamp.as_ref())
            .map(|t| pods::time(t.0));
        if started.is_some_and(|t| sample.at < t) {
            tracing::debug!(
                namespace,
                pod = name,
                "heartbeat sample from before the pod started"
            );
            continue;
        }
        sources.heartbeats.record(
            PodKey::new(namespace, name),
            Some(uid),
            Heartbeat {
                at: sample.at,
                sessions: sample.sessions,
                // A sample cannot say the pod knew of its drain; the engine waits one timeout
                // after the drain mark instead.
                draining: false,
            },
        );
    }
}

/// The target's pods from the cache with their heartbeats, and `readings`, at `now`; and the
/// UIDs of those pods.
pub fn observe(
    sources: &Sources,
    namespace: &str,
    target: &Target,
    readings: BTreeMap<String, Reading>,
    now: Time,
) -> (Observation, PodUids) {
    let mut pods = sources
        .pod_index
        .selected(&sources.pods, namespace, &target.selector);
    pods.retain(|p| pods::is_active(p));
    let instances = pods
        .iter()
        .map(|p| {
            let key = PodKey::new(namespace, &p.name_any());
            let heartbeat = sources.heartbeats.latest(&key, p.metadata.uid.as_deref());
            pods::instance(p, heartbeat, now)
        })
        .collect();
    let uids = pods
        .iter()
        .filter_map(|p| Some((p.name_any(), p.metadata.uid.clone()?)))
        .collect();
    let observation = Observation {
        replicas: target.replicas,
        ordinals_start: target.ordinals_start,
        readings,
        instances,
        heartbeats_since: sources.heartbeats_since,
    };
    (observation, PodUids(uids))
}

#[cfg(test)]
mod tests;
