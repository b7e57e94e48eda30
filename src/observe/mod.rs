//! Gathering an `Observation` for one policy: the target's scale subresource, its pods from the
//! shared cache, Prometheus readings and heartbeats. Needs a client.

pub mod heartbeats;
pub mod pods;
pub mod prometheus;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};

use crate::api::{ScalingPolicy, TargetKind};
use crate::engine::{Heartbeat, Observation, Reading, Time};
use crate::error::Error;
use crate::observe::heartbeats::{Heartbeats, PodKey};
use crate::observe::prometheus::Prometheus;
use crate::policy::{HeartbeatSource, Policy, Source};

/// What observing reads from.
#[derive(Clone)]
pub struct Sources {
    pub client: Client,
    pub pods: Store<Pod>,
    pub heartbeats: Heartbeats,
    /// The controller-wide `--prometheus-url`.
    pub prometheus: Option<Prometheus>,
    /// When this controller began collecting heartbeats (it became leader).
    pub heartbeats_since: Time,
}

/// The target as its scale subresource shows it.
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
}

/// Reads the target's scale subresource; `Blocked` when it does not exist or has no usable
/// selector.
pub async fn target(
    client: &Client,
    namespace: &str,
    policy: &Policy,
) -> Result<Result<Target, Blocked>, Error> {
    target_named(client, namespace, policy.target.kind, &policy.target.name).await
}

/// `target` from the kind and name alone, for a policy that may not validate (one being
/// deleted).
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
    let kind_label = kind_name(kind);
    let scale = match scale {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Ok(Err(Blocked::TargetNotFound(format!(
                "{kind_label} {namespace}/{name} does not exist: create it or fix spec.targetRef"
            ))));
        }
        Err(source) => return Err(Error::ReadScale { source }),
    };
    let raw = scale
        .status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let selector = match pods::parse_selector(&raw) {
        Ok(s) => s,
        Err(why) => {
            return Ok(Err(Blocked::TargetNotFound(format!(
                "{kind_label} {namespace}/{name} has no usable pod selector yet: {why}"
            ))));
        }
    };
    let replicas = scale
        .spec
        .and_then(|s| s.replicas)
        .map_or(0, |r| u32::try_from(r).unwrap_or(0));
    // `/scale` does not show where a StatefulSet's ordinals begin, and planning from the
    // wrong start would count ordinals that do not exist.
    let ordinals_start = match kind {
        TargetKind::Deployment => 0,
        TargetKind::StatefulSet => {
            let set = Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|source| Error::ReadScale { source })?;
            set.spec
                .and_then(|s| s.ordinals)
                .and_then(|o| o.start)
                .map_or(0, |s| u32::try_from(s).unwrap_or(0))
        }
    };
    Ok(Ok(Target {
        replicas,
        selector,
        ordinals_start,
        resource_version: scale.metadata.resource_version,
    }))
}

/// Another policy or a HorizontalPodAutoscaler that scales the same target, from the
/// controller's caches. Of two policies the older one keeps it.
pub fn conflicts(
    policies: &Store<ScalingPolicy>,
    autoscalers: &Store<HorizontalPodAutoscaler>,
    sp: &ScalingPolicy,
    namespace: &str,
) -> Option<Blocked> {
    let target = &sp.spec.target_ref;
    let mine = (sp.creation_timestamp(), sp.name_any());
    let older = policies.state().into_iter().find(|other| {
        other.namespace().as_deref() == Some(namespace)
            && other.spec.target_ref.kind == target.kind
            && other.spec.target_ref.name == target.name
            && (other.creation_timestamp(), other.name_any()) < mine
    });
    if let Some(other) = older {
        return Some(Blocked::Conflict(format!(
            "ScalingPolicy {} already scales {} {}: delete one of the two policies",
            other.name_any(),
            kind_name(target.kind),
            target.name
        )));
    }
    let hpa = autoscalers.state().into_iter().find(|h| {
        h.namespace().as_deref() == Some(namespace)
            && hpa_scales(h)
                .is_some_and(|(kind, name)| kind == kind_name(target.kind) && name == target.name)
    });
    hpa.map(|h| {
        Blocked::Conflict(format!(
            "HorizontalPodAutoscaler {} also scales {} {}: delete it, drainscaler replaces it",
            h.name_any(),
            kind_name(target.kind),
            target.name
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
pub async fn readings(
    sources: &Sources,
    namespace: &str,
    policy: &Policy,
    reuse: Option<&BTreeMap<String, Reading>>,
    now: Time,
) -> BTreeMap<String, Reading> {
    let wants_prometheus = policy
        .metrics
        .iter()
        .any(|m| matches!(m.source, Source::Prometheus { .. }))
        || matches!(
            policy.heartbeat.as_ref().map(|h| &h.source),
            Some(HeartbeatSource::Prometheus { .. })
        );
    let server = if wants_prometheus && reuse.is_none() {
        Some(
            Prometheus::for_policy(
                &sources.client,
                namespace,
                policy.prometheus.as_ref(),
                sources.prometheus.as_ref(),
            )
            .await
            .map_err(|e| e.to_string()),
        )
    } else {
        None
    };

    let mut readings = BTreeMap::new();
    for m in &policy.metrics {
        if let Source::Prometheus { query } = &m.source {
            let reading = match (&server, reuse.and_then(|r| r.get(&m.name))) {
                (_, Some(kept)) => kept.clone(),
                (server, None) => match server {
                    Some(Ok(p)) => p.reading(query).await,
                    Some(Err(why)) => Reading::Unavailable {
                        reason: why.clone(),
                    },
                    None => Reading::Unavailable {
                        reason: "no Prometheus server".to_owned(),
                    },
                },
            };
            readings.insert(m.name.clone(), reading);
        }
    }

    if let (Some(HeartbeatSource::Prometheus { query }), Some(Ok(p))) =
        (policy.heartbeat.as_ref().map(|h| &h.source), &server)
    {
        match p.per_pod(query).await {
            Ok(by_pod) => {
                for (pod, sessions) in by_pod {
                    sources.heartbeats.record(
                        PodKey::new(namespace, &pod),
                        None,
                        Heartbeat {
                            at: now,
                            sessions: sessions.round() as u64,
                            // A sample cannot say the pod knew of its drain; the engine
                            // waits one timeout after the drain mark instead.
                            draining: false,
                        },
                    );
                }
            }
            // Pods simply miss their heartbeat; after the timeout they are Lost, but only while
            // others still report, so a broken query does not replace everything.
            Err(why) => tracing::warn!(namespace, query, %why, "heartbeat query failed"),
        }
    }
    readings
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
    let pods: Vec<std::sync::Arc<Pod>> = sources.pods.state_filter(|p| {
        p.metadata.namespace.as_deref() == Some(namespace)
            && pods::is_active(p)
            && target.selector.matches(p.labels())
    });
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
