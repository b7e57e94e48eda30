//! Which ScalingPolicies or HorizontalPodAutoscalers scale each target, changed by the same
//! watch events as their caches, so that a reconcile finds a conflict on its own target without
//! scanning every policy. No I/O.

use std::collections::{BTreeSet, HashMap};
use std::sync::{PoisonError, RwLock};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time as KubeTime;
use kube::ResourceExt;
use kube::runtime::watcher::Event;

use crate::api::ScalingPolicy;
use crate::observe::{hpa_scales, kind_name};

/// A scaled object: its namespace, its kind as `scaleTargetRef` names it, and its name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

/// One object that scales a target, ordered oldest first (then by name), the order in which
/// conflicting policies keep their target.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scaler {
    pub created: Option<KubeTime>,
    pub name: String,
}

/// What an indexed kind scales.
pub trait Scales {
    fn target(&self) -> Option<Target>;

    fn scaler(&self) -> Scaler
    where
        Self: ResourceExt,
    {
        Scaler {
            created: self.creation_timestamp(),
            name: self.name_any(),
        }
    }
}

impl Scales for ScalingPolicy {
    fn target(&self) -> Option<Target> {
        Some(Target {
            namespace: self.namespace()?,
            kind: kind_name(self.spec.target_ref.kind).to_owned(),
            name: self.spec.target_ref.name.clone(),
        })
    }
}

impl Scales for HorizontalPodAutoscaler {
    fn target(&self) -> Option<Target> {
        let (kind, name) = hpa_scales(self)?;
        Some(Target {
            namespace: self.namespace()?,
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// The scalers of each target.
pub struct TargetIndex<K> {
    state: RwLock<State>,
    kind: std::marker::PhantomData<fn(&K)>,
}

impl<K> Default for TargetIndex<K> {
    fn default() -> Self {
        TargetIndex {
            state: RwLock::default(),
            kind: std::marker::PhantomData,
        }
    }
}

#[derive(Default)]
struct State {
    live: Targets,
    /// A re-list in progress, swapped in when it ends, as the cache does.
    relist: Targets,
}

#[derive(Default)]
struct Targets {
    /// What each object (by namespace and name) scales, so that it can be unindexed when its
    /// target changes or it goes.
    of: HashMap<(String, String), (Target, Scaler)>,
    scalers: HashMap<Target, BTreeSet<Scaler>>,
}

impl Targets {
    fn insert<K: Scales + ResourceExt>(&mut self, obj: &K) {
        self.remove(obj);
        let Some(target) = obj.target() else {
            return;
        };
        let scaler = obj.scaler();
        self.scalers
            .entry(target.clone())
            .or_default()
            .insert(scaler.clone());
        self.of.insert(key(obj), (target, scaler));
    }

    fn remove<K: ResourceExt>(&mut self, obj: &K) {
        let Some((target, scaler)) = self.of.remove(&key(obj)) else {
            return;
        };
        if let Some(scalers) = self.scalers.get_mut(&target) {
            scalers.remove(&scaler);
            if scalers.is_empty() {
                self.scalers.remove(&target);
            }
        }
    }
}

fn key<K: ResourceExt>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

impl<K: Scales + ResourceExt> TargetIndex<K> {
    /// Changes the index as `Writer::apply_watcher_event` changes the cache.
    pub fn apply(&self, event: &Event<K>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(obj) => state.live.insert(obj),
            Event::Delete(obj) => state.live.remove(obj),
            Event::Init => state.relist = Targets::default(),
            Event::InitApply(obj) => state.relist.insert(obj),
            Event::InitDone => state.live = std::mem::take(&mut state.relist),
        }
    }

    /// The objects that scale `target`, oldest first.
    pub fn scalers(&self, target: &Target) -> Vec<Scaler> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .live
            .scalers
            .get(target)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use kube::runtime::watcher::Event;

    use super::{Scaler, Target, TargetIndex};
    use crate::api::ScalingPolicy;

    fn policy(namespace: &str, name: &str, target: &str, created: i64) -> ScalingPolicy {
        crate::testing::deployment_policy(namespace, name, target, created)
    }

    fn deployment(namespace: &str, name: &str) -> Target {
        Target {
            namespace: namespace.to_owned(),
            kind: "Deployment".to_owned(),
            name: name.to_owned(),
        }
    }

    fn names(scalers: Vec<Scaler>) -> Vec<String> {
        scalers.into_iter().map(|s| s.name).collect()
    }

    #[test]
    fn the_policies_of_a_target_are_listed_oldest_first() {
        let index = TargetIndex::<ScalingPolicy>::default();
        index.apply(&Event::Apply(policy("a", "young", "chat", 200)));
        index.apply(&Event::Apply(policy("a", "old", "chat", 100)));
        index.apply(&Event::Apply(policy("a", "game", "game", 50)));
        index.apply(&Event::Apply(policy("b", "elsewhere", "chat", 10)));
        assert_eq!(
            names(index.scalers(&deployment("a", "chat"))),
            ["old", "young"]
        );
        assert_eq!(
            names(index.scalers(&deployment("b", "chat"))),
            ["elsewhere"]
        );
        assert!(index.scalers(&deployment("c", "chat")).is_empty());
    }

    #[test]
    fn a_policy_whose_target_changes_or_that_goes_leaves_its_old_target() {
        let index = TargetIndex::<ScalingPolicy>::default();
        index.apply(&Event::Apply(policy("a", "p", "chat", 100)));
        index.apply(&Event::Apply(policy("a", "q", "chat", 200)));
        index.apply(&Event::Apply(policy("a", "p", "game", 100)));
        assert_eq!(names(index.scalers(&deployment("a", "chat"))), ["q"]);
        assert_eq!(names(index.scalers(&deployment("a", "game"))), ["p"]);
        index.apply(&Event::Delete(policy("a", "q", "chat", 200)));
        assert!(index.scalers(&deployment("a", "chat")).is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_when_it_ends() {
        let index = TargetIndex::<ScalingPolicy>::default();
        index.apply(&Event::Apply(policy("a", "gone", "chat", 100)));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(policy("a", "new", "chat", 300)));
        assert_eq!(names(index.scalers(&deployment("a", "chat"))), ["gone"]);
        index.apply(&Event::InitDone);
        assert_eq!(names(index.scalers(&deployment("a", "chat"))), ["new"]);
    }

    #[test]
    fn an_autoscaler_is_indexed_under_the_kind_and_name_it_scales() {
        let index = TargetIndex::<HorizontalPodAutoscaler>::default();
        let hpa = crate::testing::deployment_hpa("a", "chat-hpa", "chat");
        index.apply(&Event::Apply(hpa.clone()));
        assert_eq!(names(index.scalers(&deployment("a", "chat"))), ["chat-hpa"]);
        let statefulset = Target {
            kind: "StatefulSet".to_owned(),
            ..deployment("a", "chat")
        };
        assert!(index.scalers(&statefulset).is_empty());
        index.apply(&Event::Delete(hpa));
        assert!(index.scalers(&deployment("a", "chat")).is_empty());
    }
}
