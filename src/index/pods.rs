//! The cached pods' names by namespace and label, changed by the same watch events as the pod
//! cache, so that a reconcile reads only the pods its target's selector can match instead of
//! scanning every cached pod. No I/O.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock};

use kube::core::{Expression, Selector, SelectorExt};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::observe::pods::CachedPod;

/// A pod's name, shared by the places that list it.
type Name = Arc<str>;
/// A label as `key` NUL `value` (neither may hold a NUL), shared likewise.
type Label = Arc<str>;

/// Which cached pods carry which labels. Holds names, not pods: the pods are read from the
/// cache, which stays the one copy.
#[derive(Default)]
pub struct PodIndex {
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    live: Namespaces,
    /// A re-list in progress, swapped in when it ends, as the cache does: pods that went away
    /// while the watch was down leave the index then.
    relist: Namespaces,
}

#[derive(Default)]
struct Namespaces(HashMap<String, Labelled>);

#[derive(Default)]
struct Labelled {
    /// Each pod's labels, so that they can be unindexed when it changes or goes.
    pods: HashMap<Name, Vec<Label>>,
    by_label: HashMap<Label, HashSet<Name>>,
}

/// A label as the indexes key it.
pub(crate) fn label(key: &str, value: &str) -> String {
    format!("{key}\0{value}")
}

/// The labels of which a pod must carry one to match `selector`: the values of its first `=` or
/// `in` requirement; `None` when it requires no label value.
pub(crate) fn required_labels(selector: &Selector) -> Option<Vec<String>> {
    selector
        .clone()
        .into_iter()
        .find_map(|requirement| match requirement {
            Expression::Equal(key, value) => Some(vec![label(&key, &value)]),
            Expression::In(key, values) => Some(values.iter().map(|v| label(&key, v)).collect()),
            _ => None,
        })
}

impl Labelled {
    fn insert(&mut self, name: &str, labels: Option<&std::collections::BTreeMap<String, String>>) {
        let name: Name = match self.pods.get_key_value(name) {
            Some((kept, _)) => Arc::clone(kept),
            None => Arc::from(name),
        };
        self.remove(&name);
        let mut own = Vec::new();
        for (key, value) in labels.into_iter().flatten() {
            let text = label(key, value);
            let shared: Label = match self.by_label.get_key_value(text.as_str()) {
                Some((kept, _)) => Arc::clone(kept),
                None => Arc::from(text),
            };
            self.by_label
                .entry(Arc::clone(&shared))
                .or_default()
                .insert(Arc::clone(&name));
            own.push(shared);
        }
        self.pods.insert(name, own);
    }

    fn remove(&mut self, name: &str) {
        let Some(labels) = self.pods.remove(name) else {
            return;
        };
        for l in labels {
            if let Some(names) = self.by_label.get_mut(&*l) {
                names.remove(name);
                if names.is_empty() {
                    self.by_label.remove(&*l);
                }
            }
        }
    }

    /// The pods that may match `selector`: those carrying the label of its narrowest `=` or
    /// `in` requirement, or every pod when it has none (say, only `!key` or `notin`).
    fn candidates(&self, selector: &Selector) -> Vec<Name> {
        let mut narrowest: Option<(usize, Vec<&HashSet<Name>>)> = None;
        for requirement in selector.clone() {
            let sets: Vec<&HashSet<Name>> = match &requirement {
                Expression::Equal(key, value) => self
                    .by_label
                    .get(label(key, value).as_str())
                    .into_iter()
                    .collect(),
                // A pod has one value per key, so these sets do not overlap.
                Expression::In(key, values) => values
                    .iter()
                    .filter_map(|v| self.by_label.get(label(key, v).as_str()))
                    .collect(),
                _ => continue,
            };
            let size = sets.iter().map(|s| s.len()).sum();
            if narrowest.as_ref().is_none_or(|(n, _)| size < *n) {
                narrowest = Some((size, sets));
            }
        }
        match narrowest {
            Some((_, sets)) => sets.into_iter().flatten().cloned().collect(),
            None => self.pods.keys().cloned().collect(),
        }
    }
}

impl Namespaces {
    fn insert(&mut self, pod: &CachedPod) {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        self.0
            .entry(namespace)
            .or_default()
            .insert(&pod.name_any(), pod.metadata.labels.as_ref());
    }

    fn remove(&mut self, pod: &CachedPod) {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(labelled) = self.0.get_mut(namespace) {
            labelled.remove(&pod.name_any());
            if labelled.pods.is_empty() {
                self.0.remove(namespace);
            }
        }
    }
}

impl PodIndex {
    /// Changes the index as `Writer::apply_watcher_event` changes the cache.
    pub fn apply(&self, event: &Event<CachedPod>) {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(pod) => state.live.insert(pod),
            Event::Delete(pod) => state.live.remove(pod),
            Event::Init => state.relist = Namespaces::default(),
            Event::InitApply(pod) => state.relist.insert(pod),
            Event::InitDone => state.live = std::mem::take(&mut state.relist),
        }
    }

    /// The pods of `namespace` in `pods` that `selector` selects, by name. Each is checked
    /// against the selector as the cache holds it, so the answer is the cache's even while the
    /// index is a watch event ahead of it.
    pub fn selected(
        &self,
        pods: &Store<CachedPod>,
        namespace: &str,
        selector: &Selector,
    ) -> Vec<Arc<CachedPod>> {
        let mut names = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            match state.live.0.get(namespace) {
                Some(labelled) => labelled.candidates(selector),
                None => return Vec::new(),
            }
        };
        names.sort_unstable();
        names
            .iter()
            .filter_map(|name| pods.get(&ObjectRef::<CachedPod>::new(name).within(namespace)))
            .filter(|p| {
                p.meta().namespace.as_deref() == Some(namespace) && selector.matches(p.labels())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
