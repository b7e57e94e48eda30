//! Applying a `Decision` in `Mode::Act`: cancel drains, release held-back pods, start drains,
//! hold back pods, mark removable pods, patch `/scale`, delete lost pods. Every write is a merge patch that states the end value,
//! under one field manager, so repeating it changes nothing. Every write names exactly what it
//! was decided on: pod writes carry the pod's UID, the count carries the resourceVersion of
//! the scale it was computed from. Leadership is checked right before each write. Needs a
//! client.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::api::TargetKind;
use crate::engine::{CancelledDrain, Decision, Instance, Mode, Observation, Time};
use crate::error::Error;
use crate::leader::Leadership;
use crate::names::{
    CANCELLED_DRAIN_FROM_ANNOTATION, DELETION_COST_ANNOTATION, DRAIN_CANCELLED_AT_ANNOTATION,
    DRAINING_ANNOTATION, DRAINING_SINCE_ANNOTATION, FIELD_MANAGER, HELD_BACK_ANNOTATION,
    REMOVABLE_DELETION_COST, SERVING_LABEL,
};
use crate::observe::pods::timestamp;
use crate::observe::{PodUids, Target};
use crate::policy::Policy;

/// What was changed, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub scaled_to: Option<u32>,
    pub pods_patched: usize,
    pub pods_deleted: usize,
}

/// Where `act` writes, and the leadership every write needs.
pub struct Writer<'a> {
    pub client: &'a Client,
    pub namespace: &'a str,
    pub leadership: &'a Leadership,
}

impl Writer<'_> {
    /// Fails unless a write may start now; called right before each one.
    pub fn may_write(&self, write: impl FnOnce() -> String) -> Result<(), Error> {
        self.leadership.check().map_err(|source| Error::NotLeading {
            write: write(),
            source,
        })
    }
}

/// What the decision was computed from: the target's scale and the observed pods' UIDs.
pub struct Basis<'a> {
    pub target: &'a Target,
    pub uids: &'a PodUids,
}

/// Carries out `decision`; does nothing unless its mode is `Act`.
pub async fn act(
    w: &Writer<'_>,
    policy: &Policy,
    seen: &Observation,
    basis: &Basis<'_>,
    decision: &Decision,
    now: Time,
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    if decision.mode != Mode::Act {
        return Ok(applied);
    }
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), w.namespace);
    let plan = &decision.plan;
    let cost_of = |name: &str| {
        seen.instances
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.deletion_cost)
    };
    let uid_of = |pod: &str| {
        basis.uids.of(pod).ok_or_else(|| Error::PodWithoutUid {
            pod: pod.to_owned(),
        })
    };

    for pod in &plan.cancel {
        let ours = cost_of(pod) == Some(REMOVABLE_DELETION_COST);
        let record = cancelled_drain(seen.instances.iter().find(|i| &i.name == pod), now);
        applied.pods_patched +=
            patch_pod(w, &pods, pod, uid_of(pod)?, cancel_patch(ours, record)).await?;
    }
    // Released before any scale-up, so that they serve before new pods are asked for.
    for pod in &plan.release {
        applied.pods_patched += patch_pod(w, &pods, pod, uid_of(pod)?, release_patch()).await?;
    }
    for pod in &plan.start {
        applied.pods_patched += patch_pod(w, &pods, pod, uid_of(pod)?, drain_patch(now)).await?;
    }
    for pod in &plan.hold {
        applied.pods_patched += patch_pod(w, &pods, pod, uid_of(pod)?, hold_patch()).await?;
    }
    // The pods the lower count removes rank first already; marking them again is harmless and
    // guards against a cache that has not seen the mark yet.
    let removable = plan
        .mark_removable
        .iter()
        .chain(plan.remove.iter().map(|r| &r.pod))
        .filter(|p| cost_of(p) != Some(REMOVABLE_DELETION_COST));
    for pod in removable {
        applied.pods_patched += patch_pod(w, &pods, pod, uid_of(pod)?, removable_patch()).await?;
    }

    if decision.replicas != seen.replicas {
        let version = basis
            .target
            .resource_version
            .as_deref()
            .filter(|v| !v.is_empty())
            .ok_or(Error::UnversionedScale)?;
        w.may_write(|| format!("scale to {}", decision.replicas))?;
        patch_scale(w, policy, version, decision.replicas).await?;
        applied.scaled_to = Some(decision.replicas);
    }

    for pod in &plan.replace {
        let uid = uid_of(pod)?;
        w.may_write(|| format!("delete pod {pod}"))?;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_owned()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(pod, &params).await {
            Ok(_) => applied.pods_deleted += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(kube::Error::Api(e)) if another_uid(&e) => replaced(pod, uid, &e.message),
            Err(source) => {
                return Err(Error::DeletePod {
                    pod: pod.clone(),
                    source,
                });
            }
        }
    }
    Ok(applied)
}

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    }
}

/// Whether the API server refused a pod write because the pod's UID is not the one the write
/// names: a delete's UID precondition fails with 409 Conflict; a patch that sets another
/// `metadata.uid` fails validation with 422 Invalid, the UID being immutable.
pub fn another_uid(status: &kube::core::Status) -> bool {
    status.code == 409
        || (status.code == 422
            && status
                .details
                .as_ref()
                .is_some_and(|d| d.causes.iter().any(|c| c.field == "metadata.uid")))
}

/// A pod of that name exists, but not the one observed: it was recreated since.
fn replaced(pod: &str, uid: &str, why: &str) {
    tracing::info!(
        pod,
        uid,
        why,
        "the pod was replaced since it was observed; leaving the new one alone"
    );
}

/// Patches `pod` if it is still the one with `uid`; returns how many pods were patched.
pub(crate) async fn patch_pod(
    w: &Writer<'_>,
    pods: &Api<Pod>,
    pod: &str,
    uid: &str,
    patch: Value,
) -> Result<usize, Error> {
    w.may_write(|| format!("patch pod {pod}"))?;
    match pods
        .patch(pod, &params(), &Patch::Merge(&with_uid(patch, uid)))
        .await
    {
        Ok(_) => Ok(1),
        // Gone already: the next observation will not list it.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(0),
        Err(kube::Error::Api(e)) if another_uid(&e) => {
            replaced(pod, uid, &e.message);
            Ok(0)
        }
        Err(source) => Err(Error::PatchPod {
            pod: pod.to_owned(),
            source,
        }),
    }
}

async fn patch_scale(
    w: &Writer<'_>,
    policy: &Policy,
    version: &str,
    replicas: u32,
) -> Result<(), Error> {
    let body = scale_patch(version, replicas);
    let patch = Patch::Merge(&body);
    let name = &policy.target.name;
    let result = match policy.target.kind {
        TargetKind::Deployment => {
            Api::<Deployment>::namespaced(w.client.clone(), w.namespace)
                .patch_scale(name, &params(), &patch)
                .await
        }
        TargetKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(w.client.clone(), w.namespace)
                .patch_scale(name, &params(), &patch)
                .await
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::ScaleChanged {
            source: kube::Error::Api(e),
        }),
        Err(source) => Err(Error::PatchScale { source }),
    }
}

/// Sets the count if the scale is still at `version`, as the HPA's update does; otherwise the
/// API server answers 409 Conflict.
pub fn scale_patch(version: &str, replicas: u32) -> Value {
    json!({
        "metadata": {"resourceVersion": version},
        "spec": {"replicas": replicas},
    })
}

/// `patch` made to apply to the pod with `uid` only: the API server refuses a patch whose
/// `metadata.uid` differs from the object's (422 Invalid: the UID is immutable).
pub fn with_uid(mut patch: Value, uid: &str) -> Value {
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("uid".to_owned(), Value::String(uid.to_owned()));
    }
    patch
}

/// Marks a pod draining: annotated for the app and the downward API, out of the serving
/// Service's selection. A hold ends with it: the drain's marks decide from now on.
pub fn drain_patch(now: Time) -> Value {
    json!({"metadata": {
        "annotations": {
            DRAINING_ANNOTATION: "true",
            DRAINING_SINCE_ANNOTATION: timestamp(now).to_string(),
            HELD_BACK_ANNOTATION: null,
        },
        "labels": {SERVING_LABEL: "false"},
    }})
}

/// Holds a pod back: out of the serving Service's selection, but not draining (its heartbeat
/// replies still say `drain: false`, and it keeps its sessions). The annotation lets a new
/// leader find the held-back set on the pods.
pub fn hold_patch() -> Value {
    json!({"metadata": {
        "annotations": {HELD_BACK_ANNOTATION: "true"},
        "labels": {SERVING_LABEL: "false"},
    }})
}

/// Puts a held-back pod back into the serving Service's selection.
pub fn release_patch() -> Value {
    json!({"metadata": {
        "annotations": {HELD_BACK_ANNOTATION: null},
        "labels": {SERVING_LABEL: "true"},
    }})
}

/// The record a cancel leaves: from the first drain the pod may still believe in (this one,
/// or an earlier cancelled one) to now.
pub fn cancelled_drain(pod: Option<&Instance>, now: Time) -> CancelledDrain {
    let this = pod.and_then(|p| p.draining_since).unwrap_or(now);
    let from = pod
        .and_then(|p| p.cancelled_drain)
        .map_or(this, |earlier| earlier.from.min(this));
    CancelledDrain { from, at: now }
}

/// Puts a draining pod back into service, recording the cancelled drain (so that a pod that
/// never hears of the cancel is not taken for Lost); drops the deletion cost only if
/// drainscaler set it.
pub fn cancel_patch(drop_cost: bool, cancelled: CancelledDrain) -> Value {
    let mut annotations = json!({
        DRAINING_ANNOTATION: null,
        DRAINING_SINCE_ANNOTATION: null,
        HELD_BACK_ANNOTATION: null,
        CANCELLED_DRAIN_FROM_ANNOTATION: timestamp(cancelled.from).to_string(),
        DRAIN_CANCELLED_AT_ANNOTATION: timestamp(cancelled.at).to_string(),
    });
    if drop_cost {
        annotations[DELETION_COST_ANNOTATION] = Value::Null;
    }
    json!({"metadata": {
        "annotations": annotations,
        "labels": {SERVING_LABEL: "true"},
    }})
}

/// Ranks a removable pod first for the workload's next scale-in.
pub fn removable_patch() -> Value {
    json!({"metadata": {"annotations": {
        DELETION_COST_ANNOTATION: REMOVABLE_DELETION_COST.to_string(),
    }}})
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex, PoisonError};

    use axum::http::{Method, Request, Response};
    use bytes::Bytes;
    use http_body_util::Full;
    use kube::Client;
    use kube::core::Selector;
    use serde_json::{Value, json};

    use super::{
        Applied, Basis, Writer, act, cancel_patch, cancelled_drain, drain_patch, hold_patch,
        release_patch, removable_patch, scale_patch, with_uid,
    };
    use crate::engine::{
        self, CancelledDrain, Decision, DrainPlan, History, Mode, Observation, Time,
    };
    use crate::error::Error;
    use crate::leader::{Clock, Leadership, ManualClock, NotLeading, WRITE_WINDOW};
    use crate::observe::{PodUids, Target};
    use crate::policy::Policy;
    use crate::testing::{NOW, pod, policy};

    /// One request the fake API server received: method, path and JSON body.
    type Seen = (Method, String, Value);

    /// A fake API server that records every request and answers `status_of(method, path)`;
    /// `on_request` runs as each request arrives.
    fn fake_api(
        status_of: impl Fn(&Method, &str) -> u16 + Send + Sync + 'static,
        on_request: impl Fn() + Send + Sync + 'static,
    ) -> (Client, Arc<Mutex<Vec<Seen>>>) {
        let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let kept = Arc::clone(&log);
        let (status_of, on_request) = (Arc::new(status_of), Arc::new(on_request));
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let (log, status_of, on_request) = (
                Arc::clone(&kept),
                Arc::clone(&status_of),
                Arc::clone(&on_request),
            );
            async move {
                on_request();
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("a request body");
                let sent = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let path = parts.uri.path().to_owned();
                let code = status_of(&parts.method, &path);
                log.lock().unwrap_or_else(PoisonError::into_inner).push((
                    parts.method.clone(),
                    path.clone(),
                    sent,
                ));
                let answer = if code == 422 {
                    // As the API server answers a patch that sets another UID.
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Invalid", "code": 422,
                        "message": "metadata.uid: Invalid value: field is immutable",
                        "details": {"kind": "Pod", "causes": [{"reason": "FieldValueInvalid",
                            "message": "field is immutable", "field": "metadata.uid"}]}})
                } else if code != 200 {
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "reason": "Conflict", "code": code,
                        "message": "Precondition failed"})
                } else if path.ends_with("/scale") {
                    json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                        "metadata": {"name": "app"}, "spec": {"replicas": 1}})
                } else {
                    json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p"}})
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(answer.to_string())))
                    .expect("a response");
                Ok::<_, Infallible>(response)
            }
        });
        (Client::new(service, "ns"), log)
    }

    /// Three pods `a`, `b` and `c` at 3 replicas: drain `a`, replace `c`, scale to 2.
    fn world() -> (Policy, Observation, Decision) {
        let policy = policy().build();
        let seen = Observation {
            replicas: 3,
            ordinals_start: 0,
            readings: Default::default(),
            instances: ["a", "b", "c"].map(|n| pod(n).ready().build()).to_vec(),
            heartbeats_since: NOW,
        };
        let mut decision = engine::decide(&policy, &seen, &History::default(), NOW);
        decision.mode = Mode::Act;
        decision.replicas = 2;
        decision.plan = DrainPlan {
            replicas: 2,
            start: vec!["a".to_owned()],
            replace: vec!["c".to_owned()],
            ..DrainPlan::default()
        };
        (policy, seen, decision)
    }

    fn target() -> Target {
        Target {
            replicas: 3,
            selector: Selector::default(),
            resource_version: Some("41".to_owned()),
            ordinals_start: 0,
        }
    }

    fn uids() -> PodUids {
        PodUids(HashMap::from(
            [("a", "uid-a"), ("b", "uid-b"), ("c", "uid-c")]
                .map(|(n, u)| (n.to_owned(), u.to_owned())),
        ))
    }

    async fn run(
        client: &Client,
        leadership: &Leadership,
        target: &Target,
    ) -> Result<Applied, Error> {
        let (policy, seen, decision) = world();
        let writer = Writer {
            client,
            namespace: "ns",
            leadership,
        };
        let uids = uids();
        let basis = Basis {
            target,
            uids: &uids,
        };
        act(&writer, &policy, &seen, &basis, &decision, NOW).await
    }

    fn fresh() -> (Arc<ManualClock>, Leadership) {
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        leadership.renewed(clock.now());
        (clock, leadership)
    }

    fn requests(log: &Mutex<Vec<Seen>>) -> Vec<Seen> {
        log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    #[tokio::test]
    async fn every_write_names_the_pod_uid_or_the_scale_version_it_was_decided_on() {
        let (client, log) = fake_api(|_, _| 200, || {});
        let (_clock, leadership) = fresh();
        let applied = run(&client, &leadership, &target()).await;
        assert!(
            matches!(&applied, Ok(a) if a.pods_patched == 1 && a.pods_deleted == 1 && a.scaled_to == Some(2)),
            "{applied:?}"
        );
        let sent = requests(&log);
        let [
            (patch, pod_a, drain),
            (scale, scale_path, count),
            (delete, pod_c, options),
        ] = sent.as_slice()
        else {
            panic!("three writes expected: {sent:#?}");
        };
        assert_eq!(
            (patch, pod_a.as_str()),
            (&Method::PATCH, "/api/v1/namespaces/ns/pods/a")
        );
        assert_eq!(drain["metadata"]["uid"], "uid-a");
        assert_eq!(
            drain["metadata"]["annotations"]["drainscaler.io/draining"],
            "true"
        );
        assert_eq!(
            (scale, scale_path.as_str()),
            (
                &Method::PATCH,
                "/apis/apps/v1/namespaces/ns/deployments/app/scale"
            )
        );
        assert_eq!(
            count,
            &json!({"metadata": {"resourceVersion": "41"}, "spec": {"replicas": 2}})
        );
        assert_eq!(
            (delete, pod_c.as_str()),
            (&Method::DELETE, "/api/v1/namespaces/ns/pods/c")
        );
        assert_eq!(options["preconditions"], json!({"uid": "uid-c"}));
    }

    #[tokio::test]
    async fn held_back_pods_are_released_first_and_held_with_their_uid_and_no_count_change() {
        let (client, log) = fake_api(|_, _| 200, || {});
        let (_clock, leadership) = fresh();
        let (policy, seen, mut decision) = world();
        decision.replicas = 3;
        decision.plan = DrainPlan {
            replicas: 3,
            hold: vec!["b".to_owned()],
            release: vec!["c".to_owned()],
            ..DrainPlan::default()
        };
        let writer = Writer {
            client: &client,
            namespace: "ns",
            leadership: &leadership,
        };
        let (target, uids) = (target(), uids());
        let basis = Basis {
            target: &target,
            uids: &uids,
        };
        let applied = act(&writer, &policy, &seen, &basis, &decision, NOW).await;
        assert!(
            matches!(&applied, Ok(a) if a.pods_patched == 2 && a.scaled_to.is_none()),
            "{applied:?}"
        );
        let sent = requests(&log);
        let paths: Vec<(&Method, &str)> = sent.iter().map(|(m, p, _)| (m, p.as_str())).collect();
        assert_eq!(
            paths,
            [
                (&Method::PATCH, "/api/v1/namespaces/ns/pods/c"),
                (&Method::PATCH, "/api/v1/namespaces/ns/pods/b"),
            ]
        );
        assert_eq!(sent[0].2, with_uid(release_patch(), "uid-c"));
        assert_eq!(sent[1].2, with_uid(hold_patch(), "uid-b"));
    }

    #[tokio::test]
    async fn a_leader_whose_renewal_is_stale_writes_nothing() {
        let (client, log) = fake_api(|_, _| 200, || {});
        let (clock, leadership) = fresh();
        clock.advance(WRITE_WINDOW);
        let refused = run(&client, &leadership, &target()).await;
        assert!(
            matches!(&refused, Err(Error::NotLeading { source: NotLeading::Stale { .. }, write }) if write == "patch pod a"),
            "{refused:?}"
        );
        assert_eq!(requests(&log), Vec::new());
    }

    #[tokio::test]
    async fn leadership_going_stale_mid_batch_stops_the_writes_after_it() {
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        leadership.renewed(clock.now());
        // The process freezes while its first write is under way.
        let frozen = Arc::clone(&clock);
        let (client, log) = fake_api(|_, _| 200, move || frozen.advance(WRITE_WINDOW));
        let refused = run(&client, &leadership, &target()).await;
        assert!(
            matches!(&refused, Err(Error::NotLeading { write, .. }) if write == "scale to 2"),
            "{refused:?}"
        );
        let sent = requests(&log);
        assert_eq!(sent.len(), 1, "{sent:#?}");
    }

    #[tokio::test]
    async fn a_count_changed_since_it_was_read_fails_the_write_and_nothing_follows_it() {
        let (client, log) = fake_api(
            |method, path| {
                if *method == Method::PATCH && path.ends_with("/scale") {
                    409
                } else {
                    200
                }
            },
            || {},
        );
        let (_clock, leadership) = fresh();
        let failed = run(&client, &leadership, &target()).await;
        assert!(
            matches!(&failed, Err(Error::ScaleChanged { .. })),
            "{failed:?}"
        );
        let sent = requests(&log);
        assert!(
            !sent.iter().any(|(m, _, _)| *m == Method::DELETE),
            "a pod was deleted after the count failed: {sent:#?}"
        );
    }

    #[tokio::test]
    async fn a_scale_read_without_a_resource_version_is_not_written() {
        let (client, log) = fake_api(|_, _| 200, || {});
        let (_clock, leadership) = fresh();
        let unversioned = Target {
            resource_version: None,
            ..target()
        };
        let failed = run(&client, &leadership, &unversioned).await;
        assert!(
            matches!(&failed, Err(Error::UnversionedScale)),
            "{failed:?}"
        );
        assert!(
            !requests(&log).iter().any(|(_, p, _)| p.ends_with("/scale")),
            "the count was written"
        );
    }

    #[tokio::test]
    async fn a_pod_recreated_under_the_same_name_is_left_alone() {
        // The API server refuses a patch of another UID with 422 and a delete with 409.
        let (client, log) = fake_api(
            |method, path| match (method.as_str(), path.rsplit('/').next()) {
                ("PATCH", Some("a")) => 422,
                ("DELETE", Some("c")) => 409,
                _ => 200,
            },
            || {},
        );
        let (_clock, leadership) = fresh();
        let applied = run(&client, &leadership, &target()).await;
        assert_eq!(
            applied.ok(),
            Some(Applied {
                scaled_to: Some(2),
                pods_patched: 0,
                pods_deleted: 0,
            })
        );
        assert_eq!(requests(&log).len(), 3);
    }

    #[tokio::test]
    async fn another_invalid_patch_is_an_error_not_a_replaced_pod() {
        let (client, _log) = fake_api(
            |method, path| match (method.as_str(), path.rsplit('/').next()) {
                ("PATCH", Some("a")) => 403,
                _ => 200,
            },
            || {},
        );
        let (_clock, leadership) = fresh();
        let failed = run(&client, &leadership, &target()).await;
        assert!(
            matches!(&failed, Err(Error::PatchPod { pod, .. }) if pod == "a"),
            "{failed:?}"
        );
    }

    #[test]
    fn the_uid_goes_into_the_patch_metadata_and_the_version_into_the_scale() {
        assert_eq!(
            with_uid(removable_patch(), "u-1"),
            json!({"metadata": {
                "uid": "u-1",
                "annotations": {"controller.kubernetes.io/pod-deletion-cost": "-2147483648"},
            }})
        );
        assert_eq!(
            scale_patch("7", 4),
            json!({"metadata": {"resourceVersion": "7"}, "spec": {"replicas": 4}})
        );
    }

    #[test]
    fn a_drain_annotates_the_pod_and_takes_it_out_of_service() {
        assert_eq!(
            drain_patch(Time::from_secs(1_700_000_000)),
            json!({"metadata": {
                "annotations": {
                    "drainscaler.io/draining": "true",
                    "drainscaler.io/draining-since": "2023-11-14T22:13:20Z",
                    "drainscaler.io/held-back": null,
                },
                "labels": {"drainscaler.io/serving": "false"},
            }})
        );
    }

    #[test]
    fn a_cancel_records_the_earliest_drain_the_pod_may_still_believe_in() {
        let draining = pod("a").draining_since(Time::from_secs(500)).build();
        assert_eq!(
            cancelled_drain(Some(&draining), Time::from_secs(600)),
            CancelledDrain {
                from: Time::from_secs(500),
                at: Time::from_secs(600)
            }
        );
        // An earlier drain was cancelled too, perhaps unheard: the record reaches back to it.
        let mut again = draining.clone();
        again.cancelled_drain = Some(CancelledDrain {
            from: Time::from_secs(100),
            at: Time::from_secs(200),
        });
        assert_eq!(
            cancelled_drain(Some(&again), Time::from_secs(600)).from,
            Time::from_secs(100)
        );
    }

    #[test]
    fn cancelling_a_drain_removes_the_annotations_records_the_drain_and_serves_again() {
        let record = CancelledDrain {
            from: Time::from_secs(1_700_000_000),
            at: Time::from_secs(1_700_000_060),
        };
        assert_eq!(
            cancel_patch(true, record),
            json!({"metadata": {
                "annotations": {
                    "drainscaler.io/draining": null,
                    "drainscaler.io/draining-since": null,
                    "drainscaler.io/held-back": null,
                    "drainscaler.io/cancelled-drain-from": "2023-11-14T22:13:20Z",
                    "drainscaler.io/drain-cancelled-at": "2023-11-14T22:14:20Z",
                    "controller.kubernetes.io/pod-deletion-cost": null,
                },
                "labels": {"drainscaler.io/serving": "true"},
            }})
        );
        assert!(
            cancel_patch(false, record)["metadata"]["annotations"]
                .get("controller.kubernetes.io/pod-deletion-cost")
                .is_none()
        );
    }

    #[test]
    fn holding_back_takes_the_pod_out_of_service_without_draining_it_and_releasing_puts_it_back() {
        let hold = hold_patch();
        assert_eq!(
            hold,
            json!({"metadata": {
                "annotations": {"drainscaler.io/held-back": "true"},
                "labels": {"drainscaler.io/serving": "false"},
            }})
        );
        assert!(
            hold["metadata"]["annotations"]
                .get("drainscaler.io/draining")
                .is_none(),
            "a held-back pod is not told to drain"
        );
        assert_eq!(
            release_patch(),
            json!({"metadata": {
                "annotations": {"drainscaler.io/held-back": null},
                "labels": {"drainscaler.io/serving": "true"},
            }})
        );
    }

    #[test]
    fn a_removable_pod_gets_the_lowest_deletion_cost() {
        assert_eq!(
            removable_patch(),
            json!({"metadata": {"annotations": {
                "controller.kubernetes.io/pod-deletion-cost": "-2147483648",
            }}})
        );
    }
}
