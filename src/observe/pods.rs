//! The target's pods: pruning cached pods to the fields decisions use, label selectors as the
//! scale subresource writes them, and pod -> `engine::Instance`. No I/O.

use k8s_openapi::api::core::v1::{ContainerStateRunning, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time as KubeTime};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::core::{Expression, Selector};
use serde::Deserialize;

use crate::engine::{CancelledDrain, Heartbeat, Instance, Phase, Time};
use crate::names::{
    CANCELLED_DRAIN_FROM_ANNOTATION, DELETION_COST_ANNOTATION, DRAIN_CANCELLED_AT_ANNOTATION,
    DRAINING_ANNOTATION, DRAINING_SINCE_ANNOTATION, HELD_BACK_ANNOTATION, POD_INDEX_LABEL,
};

/// Annotations the controller reads; all others are dropped from the cache.
const KEPT_ANNOTATIONS: [&str; 6] = [
    DRAINING_ANNOTATION,
    HELD_BACK_ANNOTATION,
    DRAINING_SINCE_ANNOTATION,
    CANCELLED_DRAIN_FROM_ANNOTATION,
    DRAIN_CANCELLED_AT_ANNOTATION,
    DELETION_COST_ANNOTATION,
];

/// A pod as the controller caches and reads it: the fields `instance`, the selector index and
/// the heartbeat server use, with the names and shapes of `Pod`'s. A `Pod` is 2.4 KB before any
/// of its strings (its spec 1.5 KB, nearly all of it fields left empty); this is under 0.6 KB,
/// and what the API server sends beyond it is skipped while parsing, never held.
#[derive(Resource, Deserialize, Clone, Debug, Default, PartialEq)]
#[resource(inherit = Pod)]
pub struct CachedPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<CachedPodSpec>,
    #[serde(default)]
    pub status: Option<CachedPodStatus>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Option<Vec<PodCondition>>,
    #[serde(default)]
    pub start_time: Option<KubeTime>,
    #[serde(default)]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub restart_count: i32,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub state: Option<CachedContainerState>,
}

#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
pub struct CachedContainerState {
    #[serde(default)]
    pub running: Option<ContainerStateRunning>,
}

impl From<Pod> for CachedPod {
    fn from(pod: Pod) -> CachedPod {
        CachedPod {
            metadata: pod.metadata,
            spec: pod.spec.map(|s| CachedPodSpec {
                node_name: s.node_name,
            }),
            status: pod.status.map(|s| CachedPodStatus {
                phase: s.phase,
                conditions: s.conditions,
                start_time: s.start_time,
                container_statuses: s.container_statuses.map(|cs| {
                    cs.into_iter()
                        .map(|c| CachedContainerStatus {
                            name: c.name,
                            restart_count: c.restart_count,
                            ready: c.ready,
                            state: c.state.map(|st| CachedContainerState {
                                running: st.running,
                            }),
                        })
                        .collect()
                }),
            }),
        }
    }
}

/// Strips a watched pod's metadata to what `instance` reads, so that 10,000 cached pods stay
/// small (`CachedPod` already leaves out the rest of the pod).
pub fn prune(pod: &mut CachedPod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.generate_name = None;
    // Only the controlling owner is kept: its name tells a rollout apart.
    if let Some(owners) = meta.owner_references.as_mut() {
        owners.retain(|o| o.controller == Some(true));
        for o in owners.iter_mut() {
            o.uid = String::new();
            o.api_version = String::new();
        }
    }
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| KEPT_ANNOTATIONS.contains(&k.as_str()));
    }
    // Conditions' free text is for people; `instance` reads their type, status and time.
    if let Some(conditions) = pod.status.as_mut().and_then(|s| s.conditions.as_mut()) {
        for c in conditions.iter_mut() {
            c.message = None;
            c.reason = None;
        }
    }
}

/// Whether the workload still counts the pod: Succeeded and Failed pods are replaced by it.
pub fn is_active(pod: &CachedPod) -> bool {
    !matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod as the engine sees it. `now` stands in for a draining pod whose since-annotation is
/// missing or unreadable, so that its drain starts over rather than times out at once.
pub fn instance(pod: &CachedPod, heartbeat: Option<Heartbeat>, now: Time) -> Instance {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let annotations = meta.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let status = pod.status.as_ref();
    let phase = match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => Phase::Running,
        Some("Pending") | None => Phase::Pending,
        Some(_) => Phase::Unknown,
    };
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let condition = |type_: &str| {
        conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .is_some_and(|c| c.status == "True")
    };
    let ready_condition = conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    let ready = ready_condition.is_some_and(|c| c.status == "True");
    // Since when the kubelet says it is not Ready: the condition's last transition, or the
    // pod's creation when it never reported one.
    let not_ready_since = (!ready).then(|| {
        ready_condition
            .and_then(|c| c.last_transition_time.as_ref())
            .or(meta.creation_timestamp.as_ref())
            .map(|t| time(t.0))
    });
    let containers = status.and_then(|s| s.container_statuses.as_ref());
    // The latest container start: heartbeats are expected once every container runs. A pod
    // in phase Unknown (its node stopped reporting) did run: it may hold sessions.
    let started = if phase != Phase::Pending {
        containers
            .into_iter()
            .flatten()
            .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
            .map(|t| time(t.0))
            .max()
            .or_else(|| {
                status
                    .and_then(|s| s.start_time.as_ref())
                    .map(|t| time(t.0))
            })
    } else {
        None
    };
    let restarts = containers
        .into_iter()
        .flatten()
        .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
        .sum();
    let stamp = |key: &str| {
        annotation(key)
            .and_then(|s| s.parse::<Timestamp>().ok())
            .map(time)
    };
    // An unreadable record of a cancelled drain counts as one that never ends: the pod may
    // believe it drains, so its unreadiness corroborates nothing.
    let cancelled_drain = match (
        annotation(CANCELLED_DRAIN_FROM_ANNOTATION),
        annotation(DRAIN_CANCELLED_AT_ANNOTATION),
    ) {
        (None, None) => None,
        _ => Some(CancelledDrain {
            from: stamp(CANCELLED_DRAIN_FROM_ANNOTATION).unwrap_or(Time(i64::MIN)),
            at: stamp(DRAIN_CANCELLED_AT_ANNOTATION).unwrap_or(Time(i64::MAX)),
        }),
    };
    let draining_since = (annotation(DRAINING_ANNOTATION) == Some("true")).then(|| {
        annotation(DRAINING_SINCE_ANNOTATION)
            .and_then(|s| s.parse::<Timestamp>().ok())
            .map_or(now, time)
    });
    Instance {
        ordinal: ordinal(pod),
        created: meta
            .creation_timestamp
            .as_ref()
            .map_or(Time(0), |t| time(t.0)),
        scheduled: pod.spec.as_ref().is_some_and(|s| s.node_name.is_some())
            || condition("PodScheduled"),
        phase,
        ready,
        not_ready_since: not_ready_since.flatten(),
        started,
        restarts,
        terminating: meta.deletion_timestamp.is_some(),
        deletion_cost: annotation(DELETION_COST_ANNOTATION)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        // A drain supersedes a hold: the drain's marks decide.
        held_back: draining_since.is_none() && annotation(HELD_BACK_ANNOTATION) == Some("true"),
        draining_since,
        cancelled_drain,
        owner: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| o.name.clone()),
        heartbeat,
        name,
    }
}

/// The StatefulSet ordinal: its pod-index label, or the name's numeric suffix.
fn ordinal(pod: &CachedPod) -> Option<u32> {
    let labels = pod.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(POD_INDEX_LABEL))
        .and_then(|i| i.parse().ok())
        .or_else(|| {
            let name = pod.metadata.name.as_deref()?;
            name.rsplit_once('-')?.1.parse().ok()
        })
}

pub fn time(t: Timestamp) -> Time {
    Time(t.as_millisecond())
}

pub fn timestamp(t: Time) -> Timestamp {
    Timestamp::from_millisecond(t.0).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Parses a label selector as the scale subresource writes it (`status.selector`):
/// `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
pub fn parse_selector(raw: &str) -> Result<Selector, String> {
    let mut exprs = Vec::new();
    for part in split_top_level(raw) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        exprs.push(parse_requirement(part).ok_or_else(|| {
            format!("cannot read label selector requirement {part:?} in {raw:?}")
        })?);
    }
    if exprs.is_empty() {
        return Err("the target's selector is empty: it would select every pod".to_owned());
    }
    Ok(exprs.into_iter().collect())
}

fn split_top_level(raw: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, ch) in raw.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&raw[start..]);
    parts
}

fn parse_requirement(part: &str) -> Option<Expression> {
    let set = |values: &str| -> Option<std::collections::BTreeSet<String>> {
        let inner = values.trim().strip_prefix('(')?.strip_suffix(')')?;
        Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some((key, values)) = part.split_once(" notin ") {
        return Some(Expression::NotIn(key.trim().to_owned(), set(values)?));
    }
    if let Some((key, values)) = part.split_once(" in ") {
        return Some(Expression::In(key.trim().to_owned(), set(values)?));
    }
    if let Some((key, value)) = part.split_once("!=") {
        return Some(Expression::NotEqual(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Some(Expression::Equal(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    if let Some(key) = part.strip_prefix('!') {
        return Some(Expression::DoesNotExist(key.trim().to_owned()));
    }
    let valid = part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    valid.then(|| Expression::Exists(part.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ContainerStateRunning, Pod, PodCondition};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        ManagedFieldsEntry, OwnerReference, Time as KubeTime,
    };
    use kube::core::SelectorExt;

    use super::{CachedPod, instance, parse_selector, prune, time, timestamp};
    use crate::engine::{Heartbeat, Phase, Time};
    use crate::names::{
        DELETION_COST_ANNOTATION, DRAINING_ANNOTATION, DRAINING_SINCE_ANNOTATION,
        HELD_BACK_ANNOTATION,
    };

    struct PodBuilder(Pod);

    fn pod(name: &str) -> PodBuilder {
        let mut p = Pod::default();
        p.metadata.name = Some(name.to_owned());
        p.metadata.namespace = Some("demo".to_owned());
        p.metadata.creation_timestamp = Some(KubeTime(timestamp(Time::from_secs(100))));
        PodBuilder(p)
    }

    impl PodBuilder {
        fn running_since(mut self, secs: i64) -> Self {
            let status = self.0.status.get_or_insert_with(Default::default);
            status.phase = Some("Running".to_owned());
            status.container_statuses = Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                name: "app".to_owned(),
                restart_count: 2,
                state: Some(k8s_openapi::api::core::v1::ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(KubeTime(timestamp(Time::from_secs(secs)))),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]);
            self.0.spec.get_or_insert_with(Default::default).node_name = Some("node-1".to_owned());
            self
        }
        fn ready(mut self) -> Self {
            let status = self.0.status.get_or_insert_with(Default::default);
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(PodCondition {
                    type_: "Ready".to_owned(),
                    status: "True".to_owned(),
                    ..Default::default()
                });
            self
        }
        fn condition(mut self, type_: &str, status: &str, since: i64) -> Self {
            let s = self.0.status.get_or_insert_with(Default::default);
            s.conditions
                .get_or_insert_with(Vec::new)
                .push(PodCondition {
                    type_: type_.to_owned(),
                    status: status.to_owned(),
                    last_transition_time: Some(KubeTime(timestamp(Time::from_secs(since)))),
                    ..Default::default()
                });
            self
        }
        fn phase(mut self, phase: &str) -> Self {
            self.0.status.get_or_insert_with(Default::default).phase = Some(phase.to_owned());
            self
        }
        fn annotation(mut self, k: &str, v: &str) -> Self {
            self.0
                .metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(k.to_owned(), v.to_owned());
            self
        }
        fn build(self) -> CachedPod {
            CachedPod::from(self.0)
        }
    }

    #[test]
    fn a_running_ready_pod_becomes_a_scheduled_started_instance() {
        let p = pod("chat-abc").running_since(200).ready().build();
        let hb = Heartbeat {
            at: Time::from_secs(210),
            sessions: 4,
            draining: false,
        };
        let i = instance(&p, Some(hb), Time::from_secs(300));
        assert_eq!(i.name, "chat-abc");
        assert!(i.scheduled && i.ready);
        assert_eq!(i.phase, Phase::Running);
        assert_eq!(i.started, Some(Time::from_secs(200)));
        assert_eq!(i.restarts, 2);
        assert_eq!(i.created, Time::from_secs(100));
        assert_eq!(i.heartbeat, Some(hb));
        assert_eq!(i.draining_since, None);
        assert!(!i.terminating);
    }

    #[test]
    fn a_pod_whose_node_stopped_reporting_did_run_and_may_hold_sessions() {
        // Phase Unknown: the node is lost, not the pod's history.
        let p = pod("chat-abc")
            .running_since(200)
            .phase("Unknown")
            .condition("Ready", "Unknown", 250)
            .build();
        let i = instance(&p, None, Time::from_secs(300));
        assert_eq!(i.phase, Phase::Unknown);
        assert_eq!(i.started, Some(Time::from_secs(200)));
        assert_eq!(i.sessions(), None, "unknown, not zero");
        assert_eq!(i.not_ready_since, Some(Time::from_secs(250)));
    }

    #[test]
    fn not_ready_since_is_the_ready_conditions_last_transition() {
        let p = pod("a")
            .running_since(200)
            .condition("Ready", "False", 230)
            .build();
        let i = instance(&p, None, Time::from_secs(300));
        assert!(!i.ready);
        assert_eq!(i.not_ready_since, Some(Time::from_secs(230)));
        // Never reported a Ready condition: not Ready since it was created.
        let i = instance(&pod("b").running_since(200).build(), None, Time(0));
        assert_eq!(i.not_ready_since, Some(Time::from_secs(100)));
        // Ready: none.
        let i = instance(&pod("c").running_since(200).ready().build(), None, Time(0));
        assert_eq!(i.not_ready_since, None);
    }

    #[test]
    fn a_pending_pod_has_not_started_and_holds_no_sessions() {
        let i = instance(&pod("chat-new").build(), None, Time::from_secs(300));
        assert_eq!(i.phase, Phase::Pending);
        assert!(!i.scheduled);
        assert_eq!(i.started, None);
        assert_eq!(i.sessions(), Some(0));
    }

    #[test]
    fn drain_annotations_and_deletion_cost_are_read() {
        let since = timestamp(Time::from_secs(250)).to_string();
        let p = pod("chat-0")
            .running_since(200)
            .annotation(DRAINING_ANNOTATION, "true")
            .annotation(DRAINING_SINCE_ANNOTATION, &since)
            .annotation(DELETION_COST_ANNOTATION, "-2147483648")
            .build();
        let i = instance(&p, None, Time::from_secs(300));
        assert_eq!(i.draining_since, Some(Time::from_secs(250)));
        assert_eq!(i.deletion_cost, i32::MIN);
        assert_eq!(i.ordinal, Some(0));
    }

    #[test]
    fn the_held_back_mark_is_read_unless_the_pod_drains() {
        let held = pod("chat-0")
            .running_since(200)
            .annotation(HELD_BACK_ANNOTATION, "true")
            .build();
        assert!(instance(&held, None, Time::from_secs(300)).held_back);
        let mut pruned = held.clone();
        prune(&mut pruned);
        assert!(instance(&pruned, None, Time::from_secs(300)).held_back);
        let draining = pod("chat-0")
            .running_since(200)
            .annotation(HELD_BACK_ANNOTATION, "true")
            .annotation(DRAINING_ANNOTATION, "true")
            .build();
        assert!(!instance(&draining, None, Time::from_secs(300)).held_back);
    }

    #[test]
    fn a_draining_pod_without_a_readable_since_drains_from_now() {
        let p = pod("chat-x")
            .annotation(DRAINING_ANNOTATION, "true")
            .annotation(DRAINING_SINCE_ANNOTATION, "yesterday")
            .build();
        let i = instance(&p, None, Time::from_secs(300));
        assert_eq!(i.draining_since, Some(Time::from_secs(300)));
    }

    #[test]
    fn pruning_keeps_what_instances_read_and_drops_the_rest() {
        let mut p = pod("chat-abc")
            .running_since(200)
            .ready()
            .annotation(DRAINING_ANNOTATION, "true")
            .annotation("kubectl.kubernetes.io/last-applied-configuration", "{...}")
            .build();
        p.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        let owner = |name: &str, controller| OwnerReference {
            api_version: "apps/v1".to_owned(),
            kind: "ReplicaSet".to_owned(),
            name: name.to_owned(),
            uid: "c0ffee".to_owned(),
            controller: Some(controller),
            ..OwnerReference::default()
        };
        p.metadata.owner_references = Some(vec![owner("other", false), owner("chat-7d9", true)]);
        let before = instance(&p, None, Time::from_secs(300));
        assert_eq!(before.owner.as_deref(), Some("chat-7d9"));
        prune(&mut p);
        assert_eq!(p.metadata.managed_fields, None);
        assert_eq!(p.metadata.annotations.as_ref().map(|a| a.len()), Some(1));
        assert_eq!(p.metadata.owner_references.as_ref().map(Vec::len), Some(1));
        assert_eq!(instance(&p, None, Time::from_secs(300)), before);
    }

    #[test]
    fn a_watched_pod_parses_into_the_cache_as_the_full_pod_converts() {
        // What the API server sends, with fields the cache does not keep.
        let json = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "chat-7d9-abc", "namespace": "demo", "uid": "u-1",
                "creationTimestamp": "2026-11-29T10:00:00Z",
                "labels": {"app": "chat"},
                "annotations": {"drainscaler.io/draining": "true"},
            },
            "spec": {
                "nodeName": "node-1",
                "containers": [{"name": "app", "image": "chat:1", "ports": [{"containerPort": 80}]}],
            },
            "status": {
                "phase": "Running",
                "podIP": "10.0.0.7",
                "startTime": "2026-11-29T10:00:01Z",
                "conditions": [{"type": "Ready", "status": "True",
                                "lastTransitionTime": "2026-11-29T10:00:05Z"}],
                "containerStatuses": [{
                    "name": "app", "ready": true, "restartCount": 1, "image": "chat:1",
                    "imageID": "sha256:0", "started": true,
                    "state": {"running": {"startedAt": "2026-11-29T10:00:04Z"}},
                    "lastState": {"terminated": {"exitCode": 1}},
                }],
            },
        });
        let full: Pod = serde_json::from_value(json.clone()).expect("a pod");
        let cached: CachedPod = serde_json::from_value(json).expect("a cached pod");
        assert_eq!(cached, CachedPod::from(full));
        let i = instance(&cached, None, Time::from_secs(0));
        assert!(i.scheduled && i.ready);
        assert_eq!(i.restarts, 1);
        assert!(i.started.is_some() && i.draining_since.is_some());
    }

    #[test]
    fn selectors_from_the_scale_subresource_are_parsed() {
        let s = parse_selector("app=chat,tier in (a, b),!legacy,track!=canary").expect("parses");
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(s.matches(&labels(&[("app", "chat"), ("tier", "b")])));
        assert!(!s.matches(&labels(&[("app", "chat"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[("app", "chat"), ("tier", "a"), ("legacy", "")])));
        assert!(!s.matches(&labels(&[
            ("app", "chat"),
            ("tier", "a"),
            ("track", "canary")
        ])));
        assert!(parse_selector("").is_err());
    }

    #[test]
    fn times_round_trip_through_timestamps() {
        let t = Time(1_700_000_000_123);
        assert_eq!(time(timestamp(t)), t);
    }
}
