//! Letting go of a target: when a policy is deleted, paused or put in dry run, the pods it
//! marked for draining or held back are put back into service, so that none is left out of its Service with
//! the lowest deletion cost and nobody to finish its drain. `to_restore` and `forget_marks` are
//! pure; `marked_pods` and `restore` need a client.

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::Selector;
use kube::{Api, Client, ResourceExt};

use crate::act::{Writer, cancel_patch, cancelled_drain, patch_pod, release_patch};
use crate::engine::{CancelledDrain, Instance, Time};
use crate::error::Error;
use crate::names::REMOVABLE_DELETION_COST;
use crate::observe::PodUids;
use crate::observe::pods::{self, CachedPod};

/// A pod's drain marks, as restoring reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marks {
    pub pod: String,
    pub uid: Option<String>,
    /// Carries the draining annotation.
    pub draining: bool,
    /// Carries the deletion cost drainscaler gives removable pods.
    pub removable: bool,
    /// Carries the held-back mark (and so is out of the serving Service).
    pub held_back: bool,
    pub terminating: bool,
    /// The record a cancel at the time of reading leaves on the pod.
    pub cancelled: CancelledDrain,
}

impl Marks {
    /// `i`'s marks at `now`, with its UID.
    pub fn of_instance(i: &Instance, uid: Option<&str>, now: Time) -> Marks {
        Marks {
            pod: i.name.clone(),
            uid: uid.map(str::to_owned),
            draining: i.draining_since.is_some(),
            removable: i.deletion_cost == REMOVABLE_DELETION_COST,
            held_back: i.held_back,
            terminating: i.terminating,
            cancelled: cancelled_drain(Some(i), now),
        }
    }

    /// The marks of the observed `instances` at `now`.
    pub fn of_observed(instances: &[Instance], uids: &PodUids, now: Time) -> Vec<Marks> {
        instances
            .iter()
            .map(|i| Marks::of_instance(i, uids.of(&i.name), now))
            .collect()
    }
}

/// A pod to put back into service, and whether the deletion cost on it is drainscaler's to
/// drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restore {
    pub pod: String,
    pub uid: Option<String>,
    pub drop_cost: bool,
    pub cancelled: CancelledDrain,
    /// Only held back: released, with no record of a drain.
    pub held_only: bool,
}

/// The pods to put back into service when drainscaler lets go of a target whose `spec.replicas`
/// is `replicas`: every pod it marked, except terminating ones (on their way out) and, while the
/// workload's controller still has a lower count to carry out (more live pods than `replicas`),
/// the removable ones: that count removes them, and unmarking them would let the controller
/// pick a pod that holds sessions instead.
pub fn to_restore(pods: &[Marks], replicas: u32) -> Vec<Restore> {
    let live = pods.iter().filter(|p| !p.terminating).count();
    let scale_in_under_way = live > usize::try_from(replicas).unwrap_or(usize::MAX);
    pods.iter()
        .filter(|p| !p.terminating && (p.draining || p.removable || p.held_back))
        .filter(|p| !(p.removable && scale_in_under_way))
        .map(|p| Restore {
            pod: p.pod.clone(),
            uid: p.uid.clone(),
            drop_cost: p.removable,
            cancelled: p.cancelled,
            held_only: p.held_back && !p.draining && !p.removable,
        })
        .collect()
}

/// Clears the marks `restored` took off, in an observation taken before.
pub fn forget_marks(instances: &mut [Instance], restored: &[Restore]) {
    for i in instances.iter_mut() {
        if let Some(r) = restored.iter().find(|r| r.pod == i.name) {
            i.draining_since = None;
            i.held_back = false;
            if r.drop_cost {
                i.deletion_cost = 0;
            }
        }
    }
}

/// The marks on the pods `selector` picks in `namespace`, listed from the API server rather
/// than the cache: a mark written by the reconcile just before must not be missed when nothing
/// will look again (the policy is going away). Needs a client.
pub async fn marked_pods(
    client: &Client,
    namespace: &str,
    selector: &Selector,
    now: Time,
) -> Result<Vec<Marks>, Error> {
    // Listed into the cache's shape: `instance` reads it, and the rest is never parsed.
    let api: Api<CachedPod> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&selector.to_string()))
        .await
        .map_err(|source| Error::ListPods { source })?;
    Ok(list
        .items
        .iter()
        .map(|p| Marks::of_instance(&pods::instance(p, None, now), p.uid().as_deref(), now))
        .collect())
}

/// Puts `pods` back into service, each only if it is still the pod with the UID seen: no
/// draining annotations, serving again, and the deletion cost dropped where it is
/// drainscaler's. Returns how many were patched. Needs a client.
pub async fn restore(w: &Writer<'_>, pods: &[Restore]) -> Result<usize, Error> {
    let api: Api<Pod> = Api::namespaced(w.client.clone(), w.namespace);
    let mut patched = 0;
    for r in pods {
        let uid = r
            .uid
            .as_deref()
            .ok_or_else(|| Error::PodWithoutUid { pod: r.pod.clone() })?;
        let patch = if r.held_only {
            release_patch()
        } else {
            cancel_patch(r.drop_cost, r.cancelled)
        };
        patched += patch_pod(w, &api, &r.pod, uid, patch).await?;
    }
    Ok(patched)
}

#[cfg(test)]
mod tests {
    use super::{Marks, Restore, forget_marks, to_restore};
    use crate::engine::{CancelledDrain, Instance, REMOVABLE_DELETION_COST, Time};

    const CANCELLED: CancelledDrain = CancelledDrain {
        from: Time(1_000),
        at: Time(2_000),
    };

    fn marks(pod: &str) -> Marks {
        Marks {
            pod: pod.to_owned(),
            uid: Some(format!("uid-{pod}")),
            draining: false,
            removable: false,
            held_back: false,
            terminating: false,
            cancelled: CANCELLED,
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
                uid: Some(format!("uid-{pod}")),
                drop_cost,
                cancelled: CANCELLED,
                held_only: false,
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
    fn a_held_back_pod_is_released_without_a_record_of_a_drain() {
        let held = Marks {
            held_back: true,
            ..marks("h")
        };
        let mut expected = restored(&[("h", false)]);
        expected[0].held_only = true;
        assert_eq!(to_restore(&[marks("a"), held], 2), expected);
    }

    #[test]
    fn nothing_marked_restores_nothing() {
        assert!(to_restore(&[marks("a"), marks("b")], 1).is_empty());
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
}
