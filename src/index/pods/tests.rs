//! The pod index, tested by applying watch events to it and to a cache side by side: it must
//! always answer what a scan of the whole cache answers.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::Event;
use proptest::prelude::{Just, Strategy, prop, prop_oneof, proptest};

use super::PodIndex;
use crate::observe::pods::{CachedPod, parse_selector};

struct PodBuilder(CachedPod);

fn pod(namespace: &str, name: &str) -> PodBuilder {
    let mut p = CachedPod::default();
    p.metadata.namespace = Some(namespace.to_owned());
    p.metadata.name = Some(name.to_owned());
    PodBuilder(p)
}

impl PodBuilder {
    fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_owned(), value.to_owned());
        self
    }

    fn build(self) -> CachedPod {
        self.0
    }
}

/// A pod cache and its index, changed together as the controller's pod watch changes them.
struct Cache {
    store: Store<CachedPod>,
    writer: Writer<CachedPod>,
    index: PodIndex,
}

impl Cache {
    fn new() -> Cache {
        let (store, writer) = reflector::store::<CachedPod>();
        Cache {
            store,
            writer,
            index: PodIndex::default(),
        }
    }

    fn event(&mut self, event: Event<CachedPod>) {
        self.index.apply(&event);
        self.writer.apply_watcher_event(&event);
    }

    fn apply(&mut self, pod: PodBuilder) {
        self.event(Event::Apply(pod.build()));
    }

    fn delete(&mut self, pod: PodBuilder) {
        self.event(Event::Delete(pod.build()));
    }

    /// The names the index gives for `selector` in `namespace`.
    fn selected(&self, namespace: &str, selector: &str) -> Vec<String> {
        let selector = parse_selector(selector).expect("a selector");
        self.index
            .selected(&self.store, namespace, &selector)
            .iter()
            .map(|p| p.name_any())
            .collect()
    }

    /// The same answer from a scan of the whole cache, as `observe` read pods before.
    fn scanned(&self, namespace: &str, selector: &Selector) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .state_filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace) && selector.matches(p.labels())
            })
            .iter()
            .map(|p| p.name_any())
            .collect();
        names.sort();
        names
    }
}

#[test]
fn a_target_reads_its_pods_as_they_are_added_changed_and_deleted() {
    let mut cache = Cache::new();
    cache.apply(pod("a", "chat-1").label("app", "chat"));
    cache.apply(pod("a", "chat-2").label("app", "chat"));
    cache.apply(pod("a", "game-1").label("app", "game"));
    assert_eq!(cache.selected("a", "app=chat"), ["chat-1", "chat-2"]);
    // An update that keeps the labels keeps the pod, with its new fields.
    let mut updated = pod("a", "chat-1").label("app", "chat").build();
    updated.metadata.uid = Some("u2".to_owned());
    cache.event(Event::Apply(updated));
    let selector = parse_selector("app=chat").expect("a selector");
    let pods = cache.index.selected(&cache.store, "a", &selector);
    assert_eq!(pods[0].metadata.uid.as_deref(), Some("u2"));
    cache.delete(pod("a", "chat-2").label("app", "chat"));
    assert_eq!(cache.selected("a", "app=chat"), ["chat-1"]);
    cache.delete(pod("a", "chat-1").label("app", "chat"));
    assert!(cache.selected("a", "app=chat").is_empty());
    assert_eq!(cache.selected("a", "app=game"), ["game-1"]);
}

#[test]
fn a_relabelled_pod_leaves_one_target_and_joins_another() {
    let mut cache = Cache::new();
    cache.apply(pod("a", "p").label("app", "chat"));
    cache.apply(pod("a", "q").label("app", "chat"));
    cache.apply(pod("a", "p").label("app", "game"));
    assert_eq!(cache.selected("a", "app=chat"), ["q"]);
    assert_eq!(cache.selected("a", "app=game"), ["p"]);
    // Losing every label leaves every target that needs one.
    cache.apply(pod("a", "q"));
    assert!(cache.selected("a", "app=chat").is_empty());
    assert!(
        cache
            .selected("a", "app in (chat,game),track=stable")
            .is_empty()
    );
    cache.apply(pod("a", "q").label("app", "chat").label("track", "stable"));
    assert_eq!(
        cache.selected("a", "app in (chat,game),track=stable"),
        ["q"]
    );
}

#[test]
fn a_target_reads_only_the_pods_of_its_own_namespace() {
    let mut cache = Cache::new();
    cache.apply(pod("a", "chat-1").label("app", "chat"));
    cache.apply(pod("b", "chat-1").label("app", "chat"));
    cache.apply(pod("b", "chat-2").label("app", "chat"));
    assert_eq!(cache.selected("a", "app=chat"), ["chat-1"]);
    assert_eq!(cache.selected("b", "app=chat"), ["chat-1", "chat-2"]);
    assert!(cache.selected("c", "app=chat").is_empty());
    // Deleting a pod of one namespace leaves its namesake in another.
    cache.delete(pod("b", "chat-1").label("app", "chat"));
    assert_eq!(cache.selected("a", "app=chat"), ["chat-1"]);
    assert_eq!(cache.selected("b", "app=chat"), ["chat-2"]);
    // Without a label requirement to narrow by, still only the namespace's own pods.
    assert_eq!(cache.selected("b", "app"), ["chat-2"]);
}

#[test]
fn a_policy_whose_selector_changes_reads_the_pods_of_the_new_one() {
    let mut cache = Cache::new();
    cache.apply(pod("a", "v1-1").label("app", "chat").label("version", "v1"));
    cache.apply(pod("a", "v2-1").label("app", "chat").label("version", "v2"));
    cache.apply(
        pod("a", "other")
            .label("app", "other")
            .label("version", "v2"),
    );
    assert_eq!(cache.selected("a", "app=chat"), ["v1-1", "v2-1"]);
    assert_eq!(cache.selected("a", "app=chat,version=v2"), ["v2-1"]);
    assert_eq!(cache.selected("a", "version=v2"), ["other", "v2-1"]);
    assert_eq!(cache.selected("a", "app=chat,version!=v2"), ["v1-1"]);
    assert_eq!(cache.selected("a", "version in (v1,v3)"), ["v1-1"]);
    assert_eq!(cache.selected("a", "app notin (other)"), ["v1-1", "v2-1"]);
    assert!(cache.selected("a", "app=chat,version=v3").is_empty());
}

#[test]
fn a_relist_replaces_the_index_when_it_ends_as_it_replaces_the_cache() {
    let mut cache = Cache::new();
    cache.apply(pod("a", "gone").label("app", "chat"));
    cache.apply(pod("a", "kept").label("app", "chat"));
    cache.event(Event::Init);
    cache.event(Event::InitApply(
        pod("a", "kept").label("app", "chat").build(),
    ));
    cache.event(Event::InitApply(
        pod("a", "new").label("app", "chat").build(),
    ));
    // Until the relist ends the cache answers from the old list, and so does the index.
    assert_eq!(cache.selected("a", "app=chat"), ["gone", "kept"]);
    cache.event(Event::InitDone);
    assert_eq!(cache.selected("a", "app=chat"), ["kept", "new"]);
    // The pod deleted while the watch was down is gone from the index too, not just filtered.
    let state = cache.index.state.read().expect("not poisoned");
    let mut names: Vec<&str> = state.live.0["a"].pods.keys().map(|n| &**n).collect();
    names.sort_unstable();
    assert_eq!(names, ["kept", "new"]);
}

/// One watch event over a few namespaces, names and labels, so that pods often collide.
fn event() -> impl Strategy<Value = Event<CachedPod>> {
    let labels = prop::collection::btree_map(
        prop::sample::select(vec!["app", "track", "tier"]),
        prop::sample::select(vec!["chat", "game", "x"]),
        0..3,
    );
    let a_pod = (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["p1", "p2", "p3", "p4"]),
        labels,
    )
        .prop_map(|(namespace, name, labels)| {
            let mut p = pod(namespace, name);
            for (k, v) in labels {
                p = p.label(k, v);
            }
            p.build()
        });
    prop_oneof![
        6 => a_pod.clone().prop_map(Event::Apply),
        3 => a_pod.clone().prop_map(Event::Delete),
        1 => Just(Event::Init),
        2 => a_pod.prop_map(Event::InitApply),
        1 => Just(Event::InitDone),
    ]
}

proptest! {
    #[test]
    fn the_index_always_answers_what_a_scan_of_the_cache_answers(
        events in prop::collection::vec(event(), 0..60)
    ) {
        let selectors: Vec<Selector> = [
            "app=chat",
            "app=game,track=chat",
            "app in (chat,x)",
            "app in (chat,game),tier!=x",
            "track notin (x)",
            "!tier",
            "app",
        ]
        .iter()
        .map(|s| parse_selector(s).expect("a selector"))
        .collect();
        let mut cache = Cache::new();
        for e in events {
            cache.event(e);
            for namespace in ["a", "b", "c"] {
                for selector in &selectors {
                    let names: Vec<String> = cache
                        .index
                        .selected(&cache.store, namespace, selector)
                        .iter()
                        .map(|p| p.name_any())
                        .collect();
                    assert_eq!(names, cache.scanned(namespace, selector), "{selector}");
                }
            }
        }
    }
}

#[test]
fn pods_that_change_or_go_leave_nothing_behind_in_the_index() {
    let mut cache = Cache::new();
    cache.apply(pod("a", "p").label("app", "chat"));
    cache.apply(pod("a", "p").label("app", "game"));
    {
        let state = cache.index.state.read().expect("not poisoned");
        let labelled = &state.live.0["a"];
        assert_eq!(labelled.by_label.len(), 1, "only the pod's current label");
        assert!(labelled.by_label.contains_key("app\0game"));
    }
    cache.delete(pod("a", "p").label("app", "game"));
    let state = cache.index.state.read().expect("not poisoned");
    assert!(state.live.0.is_empty(), "no namespace, label or name kept");
}
