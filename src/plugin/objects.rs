//! The objects `kubectl drainscaler` reads, wherever they come from: policies, their targets'
//! pod selectors, pods and the events about policies; parsed from saved files (`kubectl get
//! ... -o yaml`) and matched to a policy's target by its label selector, as the controller
//! matches them. Pure, no I/O.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSeries as CoreEventSeries, Pod};
use k8s_openapi::api::events::v1::Event as EventsEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use serde_json::Value;

use crate::api::{ScalingPolicy, TargetKind};

/// What a view is built from.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub policies: Vec<ScalingPolicy>,
    /// The Deployments and StatefulSets that policies target, with their pod selectors.
    pub workloads: Vec<Workload>,
    pub pods: Vec<Pod>,
    pub events: Vec<PolicyEvent>,
}

/// A policy's target as far as matching pods goes: its pod selector, or why there is none to
/// use (the same reasons the controller has for not acting).
#[derive(Clone, Debug)]
pub struct Workload {
    pub namespace: String,
    pub kind: TargetKind,
    pub name: String,
    pub selector: Result<Selector, String>,
}

impl Workload {
    /// A saved Deployment or StatefulSet, its selector from `spec.selector`.
    fn saved(
        namespace: String,
        kind: TargetKind,
        name: String,
        selector: Option<LabelSelector>,
    ) -> Workload {
        let what = match kind {
            TargetKind::Deployment => "Deployment",
            TargetKind::StatefulSet => "StatefulSet",
        };
        let selector = selector
            .ok_or_else(|| "it has no spec.selector".to_owned())
            .and_then(|s| {
                Selector::try_from(s).map_err(|e| format!("its spec.selector cannot be read: {e}"))
            })
            .and_then(|s| {
                if s.selects_all() {
                    // The controller refuses it too: it would select every pod.
                    Err("its selector is empty: it would select every pod".to_owned())
                } else {
                    Ok(s)
                }
            })
            .map_err(|why| format!("{what} {namespace}/{name}: {why}"));
        Workload {
            namespace,
            kind,
            name,
            selector,
        }
    }
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
        "Deployment" => {
            let d: Deployment = serde_json::from_value(doc).map_err(what)?;
            objects.workloads.push(Workload::saved(
                d.namespace().unwrap_or_default(),
                TargetKind::Deployment,
                d.name_any(),
                d.spec.map(|s| s.selector),
            ));
        }
        "StatefulSet" => {
            let s: StatefulSet = serde_json::from_value(doc).map_err(what)?;
            objects.workloads.push(Workload::saved(
                s.namespace().unwrap_or_default(),
                TargetKind::StatefulSet,
                s.name_any(),
                s.spec.map(|s| s.selector),
            ));
        }
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

/// The target of `policy` among `workloads`.
pub fn target_of<'a>(policy: &ScalingPolicy, workloads: &'a [Workload]) -> Option<&'a Workload> {
    let target = &policy.spec.target_ref;
    let namespace = policy.namespace().unwrap_or_default();
    workloads
        .iter()
        .find(|w| w.namespace == namespace && w.kind == target.kind && w.name == target.name)
}

/// Whether `pod` is one of `workload`'s: in its namespace and matched by its label selector,
/// as the controller counts pods (ownership is not asked: a pod relabelled out of the
/// selector is not the target's any more, and one that matches it is counted).
pub fn belongs_to(workload: &Workload, selector: &Selector, pod: &Pod) -> bool {
    pod.namespace().as_deref() == Some(workload.namespace.as_str())
        && selector.matches(pod.labels())
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
