//! The objects `kubectl drainscaler` reads, wherever they come from: policies, pods and the
//! events about policies; parsed from saved files (`kubectl get ... -o yaml`) and matched to a
//! policy's target by ownership. Pure, no I/O.

use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSeries as CoreEventSeries, Pod};
use k8s_openapi::api::events::v1::Event as EventsEvent;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::Value;

use crate::api::{ScalingPolicy, TargetKind};

/// What a view is built from.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub policies: Vec<ScalingPolicy>,
    pub pods: Vec<Pod>,
    pub events: Vec<PolicyEvent>,
}

/// An event about a ScalingPolicy, from either events API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvent {
    pub namespace: String,
    pub policy: String,
    /// When it last happened.
    pub time: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub type_: String,
    pub reason: String,
    pub message: String,
    /// How many times it happened.
    pub count: i32,
}

const POLICY_KIND: &str = "ScalingPolicy";

impl PolicyEvent {
    /// The event if it is about a ScalingPolicy.
    pub fn from_core(e: &CoreEvent) -> Option<PolicyEvent> {
        let about = &e.involved_object;
        if about.kind.as_deref() != Some(POLICY_KIND) {
            return None;
        }
        let series = e.series.as_ref();
        let time = series
            .and_then(|s| s.last_observed_time.as_ref())
            .map(|t| t.0)
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.first_timestamp.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
        Some(PolicyEvent {
            namespace: about
                .namespace
                .clone()
                .or_else(|| e.metadata.namespace.clone())
                .unwrap_or_default(),
            policy: about.name.clone().unwrap_or_default(),
            time,
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: series.and_then(|s| s.count).or(e.count).unwrap_or(1),
        })
    }

    /// The event if it is about a ScalingPolicy (`events.k8s.io/v1`), read as the core API
    /// serves the same event.
    pub fn from_events(e: &EventsEvent) -> Option<PolicyEvent> {
        let core = CoreEvent {
            involved_object: e.regarding.clone()?,
            message: e.note.clone(),
            type_: e.type_.clone(),
            reason: e.reason.clone(),
            count: e.deprecated_count,
            last_timestamp: e.deprecated_last_timestamp.clone(),
            first_timestamp: e.deprecated_first_timestamp.clone(),
            event_time: e.event_time.clone(),
            series: e.series.as_ref().map(|s| CoreEventSeries {
                count: Some(s.count),
                last_observed_time: Some(s.last_observed_time.clone()),
            }),
            metadata: e.metadata.clone(),
            ..CoreEvent::default()
        };
        PolicyEvent::from_core(&core)
    }
}

/// Objects from the text of a saved file: YAML or JSON, one or more documents, each an object or
/// a `List` of them. Kinds other than ScalingPolicy, Pod and Event are skipped.
pub fn parse(text: &str) -> Result<Objects, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    let mut objects = Objects::default();
    for doc in docs.into_iter().filter(|d| !d.is_null()) {
        add(&mut objects, doc)?;
    }
    Ok(objects)
}

fn add(objects: &mut Objects, doc: Value) -> Result<(), String> {
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_owned();
    let name = doc["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let what = |e: serde_json::Error| format!("{kind} {name}: {e}");
    match kind.as_str() {
        _ if kind.ends_with("List") => {
            if let Value::Array(items) = doc["items"].clone() {
                for item in items {
                    add(objects, item)?;
                }
            }
        }
        POLICY_KIND => objects
            .policies
            .push(serde_json::from_value(doc).map_err(what)?),
        "Pod" => objects
            .pods
            .push(serde_json::from_value(doc).map_err(what)?),
        "Event" if api_version.starts_with("events.k8s.io/") => {
            let e: EventsEvent = serde_json::from_value(doc).map_err(what)?;
            objects.events.extend(PolicyEvent::from_events(&e));
        }
        "Event" => {
            let e: CoreEvent = serde_json::from_value(doc).map_err(what)?;
            objects.events.extend(PolicyEvent::from_core(&e));
        }
        "" => return Err("a document without a kind".to_owned()),
        _ => {}
    }
    Ok(())
}

/// Whether `pod` belongs to `policy`'s target: a StatefulSet owns its pods, a Deployment owns
/// them through ReplicaSets named after it and the pod's template hash.
pub fn belongs_to(policy: &ScalingPolicy, pod: &Pod) -> bool {
    if pod.namespace() != policy.namespace() {
        return false;
    }
    let target = &policy.spec.target_ref;
    let owners = pod.owner_references();
    match target.kind {
        TargetKind::StatefulSet => owners
            .iter()
            .any(|o| o.kind == "StatefulSet" && o.name == target.name),
        TargetKind::Deployment => {
            let Some(hash) = pod.labels().get("pod-template-hash") else {
                return false;
            };
            let replica_set = format!("{}-{hash}", target.name);
            owners
                .iter()
                .any(|o| o.kind == "ReplicaSet" && o.name == replica_set)
        }
    }
}

/// The events about `policy`.
pub fn events_of<'a>(policy: &ScalingPolicy, events: &'a [PolicyEvent]) -> Vec<&'a PolicyEvent> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    events
        .iter()
        .filter(|e| e.namespace == namespace && e.policy == name)
        .collect()
}
