//! `Decision -> ScalingPolicyStatus`: counts, metrics, drains, history and conditions, with
//! `lastTransitionTime` kept while a condition's status holds (pure); plus the status patch,
//! skipped when nothing changed (needs a client).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time as KubeTime};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::api::{
    DrainingStatus, HeartbeatState, InstancesStatus, MetricStatus, PodStatus, RecommendationStatus,
    ScaleEventStatus, ScalingPolicy, ScalingPolicyStatus,
};
use crate::engine::{
    self, Decision, History, Mode, PodReport, Reading, Recommendation, ScaleEvent, Time,
};
use crate::error::Error;
use crate::names::{FIELD_MANAGER, READY_CONDITION, ShellReason};
use crate::observe::pods::{time, timestamp};
use crate::policy::fmt_number;

/// The `Ready` condition the shell decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub status: bool,
    pub reason: ShellReason,
    pub message: String,
}

impl Ready {
    /// The `Ready` condition as `conditions` takes it.
    fn wanted(&self) -> (&'static str, bool, &str, String) {
        (
            READY_CONDITION,
            self.status,
            self.reason.as_str(),
            self.message.clone(),
        )
    }
}

/// The engine's history as the status last recorded it.
pub fn history(status: Option<&ScalingPolicyStatus>) -> History {
    let Some(s) = status else {
        return History::default();
    };
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    History {
        recommendations: s
            .recommendations
            .iter()
            .map(|r| Recommendation {
                time: time(r.time.0),
                replicas: count(r.replicas),
            })
            .collect(),
        scale_events: s
            .scale_events
            .iter()
            .map(|e| ScaleEvent {
                time: time(e.time.0),
                from: count(e.from),
                to: count(e.to),
            })
            .collect(),
        consecutive_failures: s.consecutive_failures.map_or(0, count),
        latest_made: None,
    }
}

fn kube_time(t: Time) -> KubeTime {
    KubeTime(timestamp(t))
}

fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The status after a decision. `observed` is the `spec.replicas` the decision started from;
/// `next` the history after it.
pub fn render(
    prev: Option<&ScalingPolicyStatus>,
    generation: Option<i64>,
    observed: u32,
    decision: &Decision,
    next: &History,
    ready: &Ready,
    now: Time,
) -> ScalingPolicyStatus {
    let scaled = decision.mode == Mode::Act && decision.replicas != observed;
    let metrics = decision
        .metrics
        .iter()
        .map(|m| MetricStatus {
            name: m.name.clone(),
            value: match m.reading {
                Reading::Value(v) => Some(fmt_number(v)),
                Reading::Unavailable { .. } | Reading::Pending { .. } => None,
            },
            desired_replicas: m.replicas.map(int),
            error: match &m.reading {
                Reading::Value(_) => None,
                Reading::Unavailable { reason } | Reading::Pending { reason } => {
                    Some(reason.clone())
                }
            },
        })
        .collect();
    let mut wanted = vec![ready.wanted()];
    wanted.extend(
        decision
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status, c.reason, c.message.clone())),
    );
    ScalingPolicyStatus {
        observed_generation: generation,
        current_replicas: Some(int(decision.current)),
        desired_replicas: Some(int(decision.desired)),
        last_scale_time: if scaled {
            Some(kube_time(now))
        } else {
            prev.and_then(|p| p.last_scale_time.clone())
        },
        metrics,
        instances: Some(InstancesStatus {
            ready: int(decision.instances.ready),
            draining: int(decision.instances.draining),
            held_back: int(decision.instances.held_back),
            silent: int(decision.instances.silent),
            lost: int(decision.instances.lost),
            sessions: i64::try_from(decision.instances.sessions).unwrap_or(i64::MAX),
        }),
        draining: decision
            .draining
            .iter()
            .map(|d| DrainingStatus {
                pod: d.pod.clone(),
                since: kube_time(d.since),
                sessions: d.sessions.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            })
            .collect(),
        pods: decision.pods.iter().map(pod_status).collect(),
        recommendations: next
            .recommendations
            .iter()
            .map(|r| RecommendationStatus {
                time: kube_time(r.time),
                replicas: int(r.replicas),
            })
            .collect(),
        scale_events: next
            .scale_events
            .iter()
            .map(|e| ScaleEventStatus {
                time: kube_time(e.time),
                from: int(e.from),
                to: int(e.to),
            })
            .collect(),
        consecutive_failures: (next.consecutive_failures > 0)
            .then(|| int(next.consecutive_failures)),
        conditions: conditions(
            prev.map_or(&[][..], |p| &p.conditions),
            &wanted,
            generation,
            now,
        ),
    }
}

fn pod_status(p: &PodReport) -> PodStatus {
    PodStatus {
        name: p.pod.clone(),
        sessions: p.sessions.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
        heartbeat: match p.heartbeat {
            engine::HeartbeatState::Reporting => HeartbeatState::Reporting,
            engine::HeartbeatState::Awaited => HeartbeatState::Awaited,
            engine::HeartbeatState::Silent => HeartbeatState::Silent,
            engine::HeartbeatState::Lost => HeartbeatState::Lost,
        },
        last_heartbeat: p.last_heartbeat.map(kube_time),
    }
}

/// The status of a policy that must not act: everything last reported stays, `Ready` says why.
pub fn render_blocked(
    prev: Option<&ScalingPolicyStatus>,
    generation: Option<i64>,
    ready: &Ready,
    now: Time,
) -> ScalingPolicyStatus {
    let mut status = prev.cloned().unwrap_or_default();
    let others: Vec<(&str, bool, &str, String)> = status
        .conditions
        .iter()
        .filter(|c| c.type_ != READY_CONDITION)
        .map(|c| {
            (
                c.type_.as_str(),
                c.status == "True",
                c.reason.as_str(),
                c.message.clone(),
            )
        })
        .collect();
    let mut wanted = vec![ready.wanted()];
    wanted.extend(others);
    let conds = conditions(&status.conditions, &wanted, generation, now);
    status.conditions = conds;
    status.observed_generation = generation;
    status
}

/// Conditions in the order given, keeping a condition's `lastTransitionTime` while its status
/// is unchanged.
fn conditions(
    prev: &[Condition],
    wanted: &[(&str, bool, &str, String)],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    wanted
        .iter()
        .map(|(type_, status, reason, message)| {
            let status = if *status { "True" } else { "False" };
            let since = prev
                .iter()
                .find(|c| c.type_ == *type_ && c.status == status)
                .map_or_else(|| kube_time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: (*type_).to_owned(),
                status: status.to_owned(),
                reason: (*reason).to_owned(),
                message: message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Writes `status` unless it equals what the policy shows. Returns whether it wrote.
pub async fn patch(
    client: &Client,
    sp: &ScalingPolicy,
    status: &ScalingPolicyStatus,
) -> Result<bool, Error> {
    if sp.status.as_ref() == Some(status) {
        return Ok(false);
    }
    let namespace = sp.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<ScalingPolicy> = Api::namespaced(client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    // A merge patch replaces lists whole, and patch_body clears the fields the new status
    // omits, so stale entries do not linger.
    api.patch_status(&sp.name_any(), &params, &Patch::Merge(patch_body(status)))
        .await
        .map(|_| true)
        .map_err(|source| Error::PatchStatus { source })
}

/// Every status field, so that a merge patch clears the ones the new status leaves out.
const STATUS_FIELDS: [&str; 12] = [
    "observedGeneration",
    "currentReplicas",
    "desiredReplicas",
    "lastScaleTime",
    "metrics",
    "instances",
    "draining",
    "pods",
    "recommendations",
    "scaleEvents",
    "consecutiveFailures",
    "conditions",
];

/// The merge patch that makes the status exactly `status`: lists are replaced whole and fields
/// it omits are cleared.
pub fn patch_body(status: &ScalingPolicyStatus) -> serde_json::Value {
    let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(fields) = body.as_object_mut() {
        for key in STATUS_FIELDS {
            fields
                .entry(key.to_owned())
                .or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": body })
}

#[cfg(test)]
mod tests {
    use crate::api::{HeartbeatState, ScalingPolicySpec, ScalingPolicyStatus};
    use crate::engine::{self, Heartbeat, Instance, Observation, Phase, Reading, Time};
    use crate::names::ShellReason;
    use crate::policy::{Policy, validate};

    use super::{Ready, history, patch_body, render, render_blocked};

    fn policy() -> Policy {
        let spec: ScalingPolicySpec = serde_saphyr::from_str(
            r#"
targetRef: {kind: Deployment, name: chat}
minReplicas: 1
maxReplicas: 10
metrics:
  - name: rps
    prometheus: {query: "sum(rate(x[1m]))"}
    target: {type: AverageValue, averageValue: "100"}
heartbeat: {source: Push, timeout: 30s}
"#,
        )
        .expect("spec parses");
        validate(&spec).expect("valid")
    }

    fn pod(name: &str, sessions: u64) -> Instance {
        Instance {
            name: name.to_owned(),
            scheduled: true,
            phase: Phase::Running,
            ready: true,
            started: Some(Time::from_secs(0)),
            heartbeat: Some(Heartbeat {
                at: Time::from_secs(995),
                sessions,
                draining: false,
            }),
            ..Instance::default()
        }
    }

    fn seen(rps: Reading) -> Observation {
        Observation {
            ordinals_start: 0,
            replicas: 2,
            readings: [("rps".to_owned(), rps)].into_iter().collect(),
            instances: vec![pod("chat-a", 3), pod("chat-b", 4)],
            heartbeats_since: Time::from_secs(0),
        }
    }

    fn ready() -> Ready {
        Ready {
            status: true,
            reason: ShellReason::Reconciled,
            message: "ok".to_owned(),
        }
    }

    fn rendered(
        prev: Option<&ScalingPolicyStatus>,
        rps: Reading,
        now: Time,
    ) -> ScalingPolicyStatus {
        let p = policy();
        let h = history(prev);
        let s = seen(rps);
        let d = engine::decide(&p, &s, &h, now);
        let next = engine::next_history(&p, &h, &d, now);
        render(prev, Some(3), s.replicas, &d, &next, &ready(), now)
    }

    #[test]
    fn a_scale_up_is_reported_with_counts_metrics_and_conditions() {
        let now = Time::from_secs(1000);
        let st = rendered(None, Reading::Value(500.0), now);
        assert_eq!(st.observed_generation, Some(3));
        assert_eq!(st.current_replicas, Some(2));
        assert_eq!(st.desired_replicas, Some(5));
        assert!(st.last_scale_time.is_some());
        assert_eq!(st.metrics[0].value.as_deref(), Some("500"));
        assert_eq!(st.metrics[0].desired_replicas, Some(5));
        let instances = st.instances.expect("instances");
        assert_eq!((instances.ready, instances.sessions), (2, 7));
        let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            [
                "Ready",
                "ScalingActive",
                "AbleToScale",
                "ScalingLimited",
                "Draining",
                "Fallback",
                "Heartbeats",
            ]
        );
        assert_eq!(st.recommendations.len(), 1);
    }

    #[test]
    fn pods_are_listed_with_their_sessions_and_a_silent_one_with_its_last_heartbeat() {
        let now = Time::from_secs(1000);
        let p = policy();
        let mut s = seen(Reading::Value(150.0));
        s.instances[1].heartbeat = Some(Heartbeat {
            at: Time::from_secs(900),
            sessions: 4,
            draining: false,
        });
        let h = history(None);
        let d = engine::decide(&p, &s, &h, now);
        let next = engine::next_history(&p, &h, &d, now);
        let st = render(None, Some(3), s.replicas, &d, &next, &ready(), now);
        let listed: Vec<(&str, Option<i64>, HeartbeatState, bool)> = st
            .pods
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.sessions,
                    p.heartbeat,
                    p.last_heartbeat.is_some(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("chat-b", Some(4), HeartbeatState::Silent, true),
                ("chat-a", Some(3), HeartbeatState::Reporting, false),
            ]
        );
        assert_eq!(
            st.pods[0].last_heartbeat.as_ref().map(|t| t.0.as_second()),
            Some(900)
        );
    }

    #[test]
    fn a_failed_metric_is_reported_with_its_reason_and_counted() {
        let now = Time::from_secs(1000);
        let st = rendered(
            None,
            Reading::Unavailable {
                reason: "the query returned no samples".to_owned(),
            },
            now,
        );
        assert_eq!(st.metrics[0].value, None);
        assert_eq!(
            st.metrics[0].error.as_deref(),
            Some("the query returned no samples")
        );
        assert_eq!(st.consecutive_failures, Some(1));
        assert_eq!(history(Some(&st)).consecutive_failures, 1);
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let first = rendered(None, Reading::Value(150.0), Time::from_secs(1000));
        let second = rendered(Some(&first), Reading::Value(150.0), Time::from_secs(1015));
        for (a, b) in first.conditions.iter().zip(&second.conditions) {
            assert_eq!(
                a.last_transition_time, b.last_transition_time,
                "{}",
                a.type_
            );
        }
        let failing = rendered(
            Some(&second),
            Reading::Unavailable {
                reason: "down".to_owned(),
            },
            Time::from_secs(1030),
        );
        let fallback = |s: &ScalingPolicyStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "ScalingActive")
                .cloned()
                .expect("ScalingActive")
        };
        assert_ne!(
            fallback(&failing).last_transition_time,
            fallback(&second).last_transition_time
        );
    }

    #[test]
    fn a_steady_policy_renders_the_same_status_so_nothing_is_written() {
        // Every 15s for longer than the 300s window, with heartbeats arriving.
        let at = |prev: Option<&ScalingPolicyStatus>, rps: f64, now: Time| {
            let p = policy();
            let h = history(prev);
            let mut s = seen(Reading::Value(rps));
            for i in &mut s.instances {
                i.heartbeat = i.heartbeat.map(|hb| Heartbeat {
                    at: now.minus(std::time::Duration::from_secs(5)),
                    ..hb
                });
            }
            let d = engine::decide(&p, &s, &h, now);
            let next = engine::next_history(&p, &h, &d, now);
            render(prev, Some(3), s.replicas, &d, &next, &ready(), now)
        };
        let first = at(None, 150.0, Time::from_secs(1000));
        assert_eq!(first.desired_replicas, Some(2));
        let mut last = first.clone();
        for i in 1..30 {
            last = at(Some(&last), 150.0, Time::from_secs(1000 + 15 * i));
        }
        assert_eq!(last, first);
        let changed = at(Some(&last), 160.0, Time::from_secs(1450));
        assert_ne!(changed, first, "a new value is a change");
    }

    #[test]
    fn history_round_trips_through_status() {
        let first = rendered(None, Reading::Value(500.0), Time::from_secs(1000));
        let h = history(Some(&first));
        assert_eq!(h.recommendations.len(), first.recommendations.len());
        assert_eq!(h.scale_events.len(), first.scale_events.len());
        assert_eq!(h.recommendations[0].time, Time::from_secs(1000));
    }

    #[test]
    fn a_blocked_policy_keeps_its_last_report_and_says_why() {
        let first = rendered(None, Reading::Value(150.0), Time::from_secs(1000));
        let blocked = render_blocked(
            Some(&first),
            Some(4),
            &Ready {
                status: false,
                reason: ShellReason::TargetNotFound,
                message: "Deployment demo/chat does not exist".to_owned(),
            },
            Time::from_secs(1015),
        );
        let ready = &blocked.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "TargetNotFound")
        );
        assert_eq!(blocked.observed_generation, Some(4));
        assert_eq!(blocked.desired_replicas, first.desired_replicas);
        assert_eq!(blocked.conditions.len(), first.conditions.len());
    }

    #[test]
    fn the_status_patch_clears_what_the_new_status_leaves_out() {
        let st = rendered(None, Reading::Value(150.0), Time::from_secs(1000));
        let body = patch_body(&st);
        assert!(body["status"]["draining"].is_null());
        assert!(body["status"]["consecutiveFailures"].is_null());
        assert_eq!(body["status"]["desiredReplicas"], 2);
        let all: ScalingPolicyStatus = serde_json::from_value(serde_json::json!({
            "observedGeneration": 1, "currentReplicas": 1, "desiredReplicas": 1,
            "lastScaleTime": "2026-01-01T00:00:00Z",
            "metrics": [{"name": "x"}],
            "instances": {"ready": 1, "draining": 0, "lost": 0, "sessions": 0},
            "draining": [{"pod": "a", "since": "2026-01-01T00:00:00Z"}],
            "pods": [{"name": "a", "heartbeat": "Reporting"}],
            "recommendations": [{"time": "2026-01-01T00:00:00Z", "replicas": 1}],
            "scaleEvents": [{"time": "2026-01-01T00:00:00Z", "from": 1, "to": 2}],
            "consecutiveFailures": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "R", "message": "",
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }))
        .expect("status parses");
        let keys = serde_json::to_value(&all).expect("serializes");
        assert_eq!(
            keys.as_object().map(|o| o.len()),
            Some(super::STATUS_FIELDS.len()),
            "STATUS_FIELDS lists every status field"
        );
    }
}
