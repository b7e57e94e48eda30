//! Applying a `Decision` in `Mode::Act`: cancel drains, start drains, mark removable pods,
//! patch `/scale`, delete lost pods; and restoring the pods a policy marked when it lets go of
//! its target (deleted, paused, dry run). Every write is a merge patch that states the end
//! value, under one field manager, so repeating it changes nothing. Needs a client, except
//! `to_restore` and the patches.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

use crate::api::TargetKind;
use crate::engine::{Decision, Instance, Mode, Observation, Time};
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

/// A pod's drain marks, as restoring reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marks {
    pub pod: String,
    /// Carries the draining annotation.
    pub draining: bool,
    /// Carries the deletion cost drainscaler gives removable pods.
    pub removable: bool,
    pub terminating: bool,
}

impl Marks {
    pub fn of_instance(i: &Instance) -> Marks {
        Marks {
            pod: i.name.clone(),
            draining: i.draining_since.is_some(),
            removable: i.deletion_cost == REMOVABLE_DELETION_COST,
            terminating: i.terminating,
        }
    }

    pub fn of_pod(p: &Pod) -> Marks {
        let annotation = |key: &str| p.annotations().get(key).map(String::as_str);
        Marks {
            pod: p.name_any(),
            draining: annotation(DRAINING_ANNOTATION) == Some("true"),
            removable: annotation(DELETION_COST_ANNOTATION).and_then(|c| c.parse::<i32>().ok())
                == Some(REMOVABLE_DELETION_COST),
            terminating: p.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// A pod to put back into service, and whether the deletion cost on it is drainscaler's to
/// drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub pod: String,
    pub drop_cost: bool,
}

/// The pods to put back into service when drainscaler lets go of a target whose `spec.replicas`
/// is `replicas`: every pod it marked, except terminating ones (on their way out) and, while the
/// workload's controller still has a lower count to carry out (more live pods than `replicas`),
/// the removable ones: that count removes them, and unmarking them would let the controller
/// pick a pod that holds sessions instead. Pure.
pub fn to_restore(pods: &[Marks], replicas: u32) -> Vec<Restore> {
    let live = pods.iter().filter(|p| !p.terminating).count();
    let scale_in_under_way = live > usize::try_from(replicas).unwrap_or(usize::MAX);
    pods.iter()
        .filter(|p| !p.terminating && (p.draining || p.removable))
        .filter(|p| !(p.removable && scale_in_under_way))
        .map(|p| Restore {
            pod: p.pod.clone(),
            drop_cost: p.removable,
        })
        .collect()
}

/// The marks on the pods `selector` picks in `namespace`, listed from the API server rather
/// than the cache: a mark written by the reconcile just before must not be missed when nothing
/// will look again (the policy is going away). Needs a client.
pub async fn marked_pods(
    client: &Client,
    namespace: &str,
    selector: &Selector,
) -> Result<Vec<Marks>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&selector.to_string()))
        .await
        .map_err(|source| Error::ListPods { source })?;
    Ok(list.items.iter().map(Marks::of_pod).collect())
}

/// Puts `pods` back into service: no draining annotations, serving again, and the deletion
/// cost dropped where it is drainscaler's. Needs a client.
pub async fn restore(client: &Client, namespace: &str, pods: &[Restore]) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    for r in pods {
        patch_pod(&api, &params, &r.pod, cancel_patch(r.drop_cost)).await?;
    }
    Ok(())
}

/// Clears the marks `restored` took off, in an observation taken before.
pub fn forget_marks(instances: &mut [Instance], restored: &[Restore]) {
    for i in instances.iter_mut() {
        if let Some(r) = restored.iter().find(|r| r.pod == i.name) {
            i.draining_since = None;
            if r.drop_cost {
                i.deletion_cost = 0;
            }
        }
    }
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

    use super::{
        Marks, REMOVABLE_DELETION_COST, Restore, cancel_patch, drain_patch, forget_marks,
        removable_patch, to_restore,
    };
    use crate::engine::{Instance, Time};

    fn marks(pod: &str) -> Marks {
        Marks {
            pod: pod.to_owned(),
            draining: false,
            removable: false,
            terminating: false,
        }
    }

    fn draining(pod: &str) -> Marks {
        Marks {
            draining: true,
            ..marks(pod)
        }
    }

    fn removable(pod: &str) -> Marks {
        Marks {
            removable: true,
            ..draining(pod)
        }
    }

    fn restored(pods: &[(&str, bool)]) -> Vec<Restore> {
        pods.iter()
            .map(|&(pod, drop_cost)| Restore {
                pod: pod.to_owned(),
                drop_cost,
            })
            .collect()
    }

    #[test]
    fn letting_go_restores_every_marked_pod_and_drops_only_its_own_cost() {
        let pods = [marks("a"), draining("b"), removable("c")];
        assert_eq!(to_restore(&pods, 3), restored(&[("b", false), ("c", true)]));
    }

    #[test]
    fn a_removable_pod_stays_marked_while_the_lower_count_is_still_being_carried_out() {
        // Three live pods for two replicas: the ReplicaSet is about to remove the cheapest one.
        let pods = [marks("a"), draining("b"), removable("c")];
        assert_eq!(to_restore(&pods, 2), restored(&[("b", false)]));
    }

    #[test]
    fn terminating_pods_are_left_to_go() {
        let gone = Marks {
            terminating: true,
            ..removable("c")
        };
        let pods = [marks("a"), draining("b"), gone];
        // The terminating pod does not count as live: two live pods for two replicas.
        assert_eq!(to_restore(&pods, 2), restored(&[("b", false)]));
    }

    #[test]
    fn a_cost_left_without_a_drain_is_dropped_too() {
        let stray = Marks {
            removable: true,
            ..marks("a")
        };
        assert_eq!(to_restore(&[stray], 1), restored(&[("a", true)]));
    }

    #[test]
    fn a_restored_pod_is_decided_on_as_serving_with_only_its_own_cost_dropped() {
        let instance = |name: &str, cost: i32| Instance {
            name: name.to_owned(),
            draining_since: Some(Time::from_secs(100)),
            deletion_cost: cost,
            ..Instance::default()
        };
        let mut instances = vec![
            instance("a", REMOVABLE_DELETION_COST),
            instance("b", 7),
            instance("c", REMOVABLE_DELETION_COST),
        ];
        forget_marks(&mut instances, &restored(&[("a", true), ("b", false)]));
        let left: Vec<(Option<Time>, i32)> = instances
            .iter()
            .map(|i| (i.draining_since, i.deletion_cost))
            .collect();
        assert_eq!(
            left,
            [
                (None, 0),
                (None, 7),
                (Some(Time::from_secs(100)), REMOVABLE_DELETION_COST)
            ]
        );
    }

    #[test]
    fn nothing_marked_restores_nothing() {
        assert!(to_restore(&[marks("a"), marks("b")], 1).is_empty());
    }

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
