//! One policy as `kubectl drainscaler` shows it: replicas, metrics against their targets, the
//! conditions that are not at their healthy value, the target's pods and the last decisions,
//! built from the policy's status, its pods and its events. `-o json` prints it as it is.
//! Pure, no I/O.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{HeartbeatState, ScalingPolicy, TargetKind, TargetType};
use crate::engine::ConditionType;
use crate::names::{
    DELETION_COST_ANNOTATION, DRAINING_ANNOTATION, DRAINING_SINCE_ANNOTATION, HELD_BACK_ANNOTATION,
    READY_CONDITION, REMOVABLE_DELETION_COST,
};
use crate::plugin::objects::PolicyEvent;

/// The most decisions shown, newest first.
pub const MAX_DECISIONS: usize = 8;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub namespace: String,
    pub name: String,
    /// `Deployment/chat`.
    pub target: String,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub current_replicas: Option<i32>,
    pub desired_replicas: Option<i32>,
    pub sessions: Option<i64>,
    /// Pods held back (`spec.drain.holdBack`) when there are any.
    pub held_back: Option<i32>,
    /// `spec.heartbeat.timeout`: a Reporting pod sent a heartbeat within it.
    pub heartbeat_timeout: Option<String>,
    pub metrics: Vec<MetricView>,
    /// Only those not at their healthy value.
    pub conditions: Vec<ConditionView>,
    pub pods: Vec<PodView>,
    /// Why the target's pods could not be told (its pod selector is unknown), when so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods_unknown: Option<String>,
    /// Newest first.
    pub decisions: Vec<DecisionView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricView {
    pub name: String,
    /// As read; absent when the reading failed.
    pub value: Option<String>,
    pub target: String,
    pub target_type: TargetType,
    pub desired_replicas: Option<i32>,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub since: Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    pub state: PodState,
    pub ready: bool,
    pub draining_since: Option<Time>,
    /// Sessions it last reported (a draining pod: since its drain began); absent when unknown.
    pub sessions: Option<i64>,
    /// Absent when the policy has no heartbeat source or the status does not list the pod.
    pub heartbeat: Option<HeartbeatState>,
    /// Given only for Silent and Lost pods.
    pub last_heartbeat: Option<Time>,
    pub created: Option<Time>,
}

/// What a pod is doing, the most telling first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PodState {
    /// Being deleted.
    Terminating,
    /// Silent, and not Ready for as long.
    Lost,
    /// Drained (or timed out) and ranked first for deletion.
    Removable,
    Draining,
    /// No heartbeat for one timeout.
    Silent,
    /// Held back by `spec.drain.holdBack`: keeps its sessions and takes no new ones; the first
    /// to drain, or serving again when load returns.
    HeldBack,
    Serving,
    /// Not Ready yet, not draining.
    NotReady,
}

impl PodState {
    pub fn as_str(self) -> &'static str {
        match self {
            PodState::Terminating => "terminating",
            PodState::Lost => "lost",
            PodState::Removable => "removable",
            PodState::Draining => "draining",
            PodState::Silent => "silent",
            PodState::HeldBack => "held back",
            PodState::Serving => "serving",
            PodState::NotReady => "not ready",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    pub time: Option<Time>,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
}

/// The view of `policy` from its target's `pods` and the `events` about it.
pub fn view(policy: &ScalingPolicy, pods: &[&Pod], events: &[&PolicyEvent]) -> PolicyView {
    let spec = &policy.spec;
    let status = policy.status.clone().unwrap_or_default();
    let kind = match spec.target_ref.kind {
        TargetKind::Deployment => "Deployment",
        TargetKind::StatefulSet => "StatefulSet",
    };
    PolicyView {
        namespace: policy.namespace().unwrap_or_default(),
        name: policy.name_any(),
        target: format!("{kind}/{}", spec.target_ref.name),
        min_replicas: spec.min_replicas,
        max_replicas: spec.max_replicas,
        current_replicas: status.current_replicas,
        desired_replicas: status.desired_replicas,
        sessions: status.instances.as_ref().map(|i| i.sessions),
        held_back: status
            .instances
            .as_ref()
            .map(|i| i.held_back)
            .filter(|n| *n > 0),
        heartbeat_timeout: spec.heartbeat.as_ref().map(|h| h.timeout.clone()),
        metrics: metrics(policy),
        conditions: status
            .conditions
            .iter()
            .filter(|c| healthy(&c.type_) != Some(c.status.as_str()))
            .map(|c| ConditionView {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                since: c.last_transition_time.clone(),
            })
            .collect(),
        pods: pod_views(policy, pods),
        pods_unknown: None,
        decisions: decisions(policy, events),
    }
}

/// The status a condition has when all is well; `None` for types this version does not know.
fn healthy(type_: &str) -> Option<&'static str> {
    let types = [
        (READY_CONDITION, "True"),
        (ConditionType::ScalingActive.as_str(), "True"),
        (ConditionType::AbleToScale.as_str(), "True"),
        (ConditionType::ScalingLimited.as_str(), "False"),
        (ConditionType::Draining.as_str(), "False"),
        (ConditionType::Fallback.as_str(), "False"),
        (ConditionType::Heartbeats.as_str(), "True"),
    ];
    types.iter().find(|(t, _)| *t == type_).map(|(_, s)| *s)
}

fn metrics(policy: &ScalingPolicy) -> Vec<MetricView> {
    let status = policy.status.as_ref();
    policy
        .spec
        .metrics
        .iter()
        .map(|m| {
            let read = status.and_then(|s| s.metrics.iter().find(|r| r.name == m.name));
            let target = match m.target.type_ {
                TargetType::AverageValue => m.target.average_value.as_ref(),
                TargetType::Value => m.target.value.as_ref(),
            };
            MetricView {
                name: m.name.clone(),
                value: read.and_then(|r| r.value.clone()),
                target: target.map(|q| q.0.clone()).unwrap_or_default(),
                target_type: m.target.type_,
                desired_replicas: read.and_then(|r| r.desired_replicas),
                error: read.and_then(|r| r.error.clone()),
            }
        })
        .collect()
}

fn pod_views(policy: &ScalingPolicy, pods: &[&Pod]) -> Vec<PodView> {
    let status = policy.status.clone().unwrap_or_default();
    let mut views: Vec<PodView> = pods
        .iter()
        .map(|pod| {
            let name = pod.name_any();
            let report = status.pods.iter().find(|p| p.name == name);
            let drain = status.draining.iter().find(|d| d.pod == name);
            let marks = Marks::of(pod);
            let heartbeat = report.map(|r| r.heartbeat);
            let draining_since = marks
                .draining
                .then(|| {
                    marks
                        .since
                        .clone()
                        .or_else(|| drain.map(|d| d.since.clone()))
                })
                .flatten();
            // A draining pod's count is the one it sent since its drain began.
            let sessions = match drain {
                Some(d) if marks.draining => d.sessions,
                _ => report.and_then(|r| r.sessions),
            };
            PodView {
                state: state(pod, &marks, heartbeat),
                name,
                ready: pod_ready(pod),
                draining_since,
                sessions,
                heartbeat,
                last_heartbeat: report.and_then(|r| r.last_heartbeat.clone()),
                created: pod.metadata.creation_timestamp.clone(),
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name));
    views
}

/// What the controller wrote on a pod.
struct Marks {
    draining: bool,
    since: Option<Time>,
    /// The lowest deletion cost: first in line for removal.
    removable: bool,
    held: bool,
}

impl Marks {
    fn of(pod: &Pod) -> Marks {
        let annotations = pod.annotations();
        Marks {
            draining: annotations.get(DRAINING_ANNOTATION).map(String::as_str) == Some("true"),
            since: annotations
                .get(DRAINING_SINCE_ANNOTATION)
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(Time),
            removable: annotations
                .get(DELETION_COST_ANNOTATION)
                .and_then(|c| c.parse::<i32>().ok())
                == Some(REMOVABLE_DELETION_COST),
            held: annotations.get(HELD_BACK_ANNOTATION).map(String::as_str) == Some("true"),
        }
    }
}

/// The most telling state: on its way out, then what heartbeats and drains say, then readiness.
fn state(pod: &Pod, marks: &Marks, heartbeat: Option<HeartbeatState>) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        PodState::Terminating
    } else if heartbeat == Some(HeartbeatState::Lost) {
        PodState::Lost
    } else if marks.draining && marks.removable {
        PodState::Removable
    } else if marks.draining {
        PodState::Draining
    } else if heartbeat == Some(HeartbeatState::Silent) {
        PodState::Silent
    } else if marks.held {
        PodState::HeldBack
    } else if pod_ready(pod) {
        PodState::Serving
    } else {
        PodState::NotReady
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The newest events about the policy; without events (expired, or not saved), the replica
/// changes its status records, which carry no reason.
fn decisions(policy: &ScalingPolicy, events: &[&PolicyEvent]) -> Vec<DecisionView> {
    let mut events: Vec<&PolicyEvent> = events.to_vec();
    events.sort_by_key(|e| std::cmp::Reverse(e.time));
    let mut out: Vec<DecisionView> = events
        .iter()
        .take(MAX_DECISIONS)
        .map(|e| DecisionView {
            time: e.time.map(Time),
            type_: e.type_.clone(),
            reason: e.reason.clone(),
            message: e.message.clone(),
            count: e.count,
        })
        .collect();
    if out.is_empty() {
        let scale_events = policy
            .status
            .as_ref()
            .map(|s| s.scale_events.clone())
            .unwrap_or_default();
        out = scale_events
            .iter()
            .rev()
            .take(MAX_DECISIONS)
            .map(|e| DecisionView {
                time: Some(e.time.clone()),
                type_: "Normal".to_owned(),
                reason: if e.to > e.from { "ScaledUp" } else { "ScaledDown" }.to_owned(),
                message: format!(
                    "from {} to {} serving replicas (from status.scaleEvents; the reason is in the events)",
                    e.from, e.to
                ),
                count: 1,
            })
            .collect();
    }
    out
}
