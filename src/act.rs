//! Applying a `Decision` in `Mode::Act`: cancel drains, start drains, mark removable pods,
//! patch `/scale`, delete lost pods. Every write is a merge patch that states the end value,
//! under one field manager, so repeating it changes nothing. Needs a client.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::api::TargetKind;
use crate::engine::{Decision, Mode, Observation, Time};
use crate::error::Error;
use crate::names::{
    DELETION_COST_ANNOTATION, DRAINING_ANNOTATION, DRAINING_SINCE_ANNOTATION, FIELD_MANAGER,
    REMOVABLE_DELETION_COST, SERVING_LABEL,
};
use crate::observe::pods::timestamp;
use crate::policy::Policy;

/// What was changed, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub scaled_to: Option<u32>,
    pub pods_patched: usize,
    pub pods_deleted: usize,
}

/// Carries out `decision`; does nothing unless its mode is `Act`.
pub async fn act(
    client: &Client,
    namespace: &str,
    policy: &Policy,
    seen: &Observation,
    decision: &Decision,
    now: Time,
) -> Result<Applied, Error> {
    let mut applied = Applied::default();
    if decision.mode != Mode::Act {
        return Ok(applied);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let plan = &decision.plan;
    let cost_of = |name: &str| {
        seen.instances
            .iter()
            .find(|i| i.name == name)
            .map(|i| i.deletion_cost)
    };

    for pod in &plan.cancel {
        let ours = cost_of(pod) == Some(REMOVABLE_DELETION_COST);
        patch_pod(&pods, &params, pod, cancel_patch(ours)).await?;
        applied.pods_patched += 1;
    }
    for pod in &plan.start {
        patch_pod(&pods, &params, pod, drain_patch(now)).await?;
        applied.pods_patched += 1;
    }
    // The pods the lower count removes rank first already; marking them again is harmless and
    // guards against a cache that has not seen the mark yet.
    let removable = plan
        .mark_removable
        .iter()
        .chain(plan.remove.iter().map(|r| &r.pod))
        .filter(|p| cost_of(p) != Some(REMOVABLE_DELETION_COST));
    for pod in removable {
        patch_pod(&pods, &params, pod, removable_patch()).await?;
        applied.pods_patched += 1;
    }

    if decision.replicas != seen.replicas {
        patch_scale(client, namespace, policy, &params, decision.replicas).await?;
        applied.scaled_to = Some(decision.replicas);
    }

    for pod in &plan.replace {
        match pods.delete(pod, &DeleteParams::default()).await {
            Ok(_) => applied.pods_deleted += 1,
            Err(kube::Error::Api(e)) if e.code == 404 => {}
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

async fn patch_pod(
    pods: &Api<Pod>,
    params: &PatchParams,
    pod: &str,
    patch: Value,
) -> Result<(), Error> {
    match pods.patch(pod, params, &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        // Gone already: the next observation will not list it.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(source) => Err(Error::PatchPod {
            pod: pod.to_owned(),
            source,
        }),
    }
}

async fn patch_scale(
    client: &Client,
    namespace: &str,
    policy: &Policy,
    params: &PatchParams,
    replicas: u32,
) -> Result<(), Error> {
    let patch = Patch::Merge(json!({"spec": {"replicas": replicas}}));
    let name = &policy.target.name;
    let result = match policy.target.kind {
        TargetKind::Deployment => {
            Api::<Deployment>::namespaced(client.clone(), namespace)
                .patch_scale(name, params, &patch)
                .await
        }
        TargetKind::StatefulSet => {
            Api::<StatefulSet>::namespaced(client.clone(), namespace)
                .patch_scale(name, params, &patch)
                .await
        }
    };
    result
        .map(|_| ())
        .map_err(|source| Error::PatchScale { source })
}

/// Marks a pod draining: annotated for the app and the downward API, out of the serving
/// Service's selection.
pub fn drain_patch(now: Time) -> Value {
    json!({"metadata": {
        "annotations": {
            DRAINING_ANNOTATION: "true",
            DRAINING_SINCE_ANNOTATION: timestamp(now).to_string(),
        },
        "labels": {SERVING_LABEL: "false"},
    }})
}

/// Puts a draining pod back into service; drops the deletion cost only if drainscaler set it.
pub fn cancel_patch(drop_cost: bool) -> Value {
    let mut annotations = json!({
        DRAINING_ANNOTATION: null,
        DRAINING_SINCE_ANNOTATION: null,
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
    use serde_json::json;

    use super::{cancel_patch, drain_patch, removable_patch};
    use crate::engine::Time;

    #[test]
    fn a_drain_annotates_the_pod_and_takes_it_out_of_service() {
        assert_eq!(
            drain_patch(Time::from_secs(1_700_000_000)),
            json!({"metadata": {
                "annotations": {
                    "drainscaler.io/draining": "true",
                    "drainscaler.io/draining-since": "2023-11-14T22:13:20Z",
                },
                "labels": {"drainscaler.io/serving": "false"},
            }})
        );
    }

    #[test]
    fn cancelling_a_drain_removes_the_annotations_and_serves_again() {
        assert_eq!(
            cancel_patch(true),
            json!({"metadata": {
                "annotations": {
                    "drainscaler.io/draining": null,
                    "drainscaler.io/draining-since": null,
                    "controller.kubernetes.io/pod-deletion-cost": null,
                },
                "labels": {"drainscaler.io/serving": "true"},
            }})
        );
        assert!(
            cancel_patch(false)["metadata"]["annotations"]
                .get("controller.kubernetes.io/pod-deletion-cost")
                .is_none()
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
