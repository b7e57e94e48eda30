//! In-memory indexes the controller keeps between reconciles, changed synchronously and tested
//! by applying objects: which policy selects which pods, the cached pods by label (`pods`), who
//! scales each target (`targets`), the last Prometheus readings of each policy, and when it last
//! made its newest recommendation. None matters across restarts. No I/O.

pub mod pods;
pub mod targets;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;

use crate::api::ScalingPolicy;
use crate::engine::{History, Reading, Recommendation, Time};
use crate::observe::pods::CachedPod;

/// Each policy's pod selector by namespace, so that a pod change triggers its policies. A pod
/// is matched only against the selectors that require one of its labels (or no label value at
/// all), not against every policy of its namespace.
#[derive(Default)]
pub struct SelectorIndex {
    by_namespace: RwLock<HashMap<String, Selectors>>,
}

#[derive(Default)]
struct Selectors {
    of: HashMap<ObjectRef<ScalingPolicy>, Selector>,
    /// Policies by a label their selector requires (`pods::label`): every value of its first
    /// `=` or `in` requirement.
    by_label: HashMap<String, HashSet<ObjectRef<ScalingPolicy>>>,
    /// Policies whose selector requires no label value (only `key`, `!key`, `!=`, `notin`).
    any: HashSet<ObjectRef<ScalingPolicy>>,
}

impl Selectors {
    fn insert(&mut self, policy: ObjectRef<ScalingPolicy>, selector: Selector) {
        if self.of.get(&policy) == Some(&selector) {
            return;
        }
        self.remove(&policy);
        match pods::required_labels(&selector) {
            Some(labels) => {
                for l in labels {
                    self.by_label.entry(l).or_default().insert(policy.clone());
                }
            }
            None => {
                self.any.insert(policy.clone());
            }
        }
        self.of.insert(policy, selector);
    }

    fn remove(&mut self, policy: &ObjectRef<ScalingPolicy>) {
        let Some(selector) = self.of.remove(policy) else {
            return;
        };
        match pods::required_labels(&selector) {
            Some(labels) => {
                for l in labels {
                    if let Some(policies) = self.by_label.get_mut(&l) {
                        policies.remove(policy);
                        if policies.is_empty() {
                            self.by_label.remove(&l);
                        }
                    }
                }
            }
            None => {
                self.any.remove(policy);
            }
        }
    }
}

impl SelectorIndex {
    /// Records the selector of `policy`'s target, or forgets it (`None`: the policy does not act).
    pub fn set(&self, policy: ObjectRef<ScalingPolicy>, selector: Option<Selector>) {
        let namespace = policy.namespace.clone().unwrap_or_default();
        let mut map = self
            .by_namespace
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match selector {
            Some(s) => map.entry(namespace).or_default().insert(policy, s),
            None => {
                if let Some(selectors) = map.get_mut(&namespace) {
                    selectors.remove(&policy);
                    if selectors.of.is_empty() {
                        map.remove(&namespace);
                    }
                }
            }
        }
    }

    /// Keeps only the policies `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&ObjectRef<ScalingPolicy>) -> bool) {
        let mut map = self
            .by_namespace
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for selectors in map.values_mut() {
            let gone: Vec<ObjectRef<ScalingPolicy>> =
                selectors.of.keys().filter(|p| !keep(p)).cloned().collect();
            for policy in &gone {
                selectors.remove(policy);
            }
        }
        map.retain(|_, selectors| !selectors.of.is_empty());
    }

    /// The policies whose target selects `pod`.
    pub fn policies_for(&self, pod: &CachedPod) -> Vec<ObjectRef<ScalingPolicy>> {
        let map = self
            .by_namespace
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(selectors) = pod.metadata.namespace.as_ref().and_then(|ns| map.get(ns)) else {
            return Vec::new();
        };
        let labels = pod.labels();
        // A pod has one value per key, so a policy is reached through one of its labels at most.
        labels
            .iter()
            .filter_map(|(key, value)| selectors.by_label.get(&pods::label(key, value)))
            .flatten()
            .chain(&selectors.any)
            .filter(|policy| selectors.of.get(*policy).is_some_and(|s| s.matches(labels)))
            .cloned()
            .collect()
    }
}

pub type Readings = BTreeMap<String, Reading>;

struct Kept {
    generation: Option<i64>,
    reused: Reused,
}

/// Readings taken earlier in the interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Reused {
    /// When they were taken.
    pub at: Time,
    pub readings: Readings,
    /// The consecutive failures before they were taken, so that a decision on them counts
    /// their failures once, however often they are reused.
    pub failures_before: u32,
}

/// How close before its due time a reconcile reads anyway; that reading stands for the one due.
pub const EARLY: Duration = Duration::from_millis(100);

/// When a policy reads its metrics: once per `interval`, at its own phase within the interval,
/// drawn from its UID. Policies created together, or all of them when a controller starts, are
/// reconciled in a burst; without a phase each would keep reading (and writing its status) in
/// that burst every interval, and their API calls would queue behind each other. The UID
/// outlives restarts and leader changes, so every controller keeps the same phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    interval: i64,
    phase: i64,
}

impl Cadence {
    /// The cadence of the policy named by `identity` (its UID, or its namespace and name).
    pub fn new(interval: Duration, identity: &str) -> Cadence {
        let interval = i64::try_from(interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        // FNV-1a: stable across processes and versions, unlike the standard library's hasher.
        let hash = identity.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let phase = i64::try_from(hash % interval.unsigned_abs()).unwrap_or(0);
        Cadence { interval, phase }
    }

    pub fn of(policy: &ScalingPolicy, interval: Duration) -> Cadence {
        match &policy.metadata.uid {
            Some(uid) => Cadence::new(interval, uid),
            None => Cadence::new(interval, &ObjectRef::from_obj(policy).to_string()),
        }
    }

    /// When the reading after one taken at `at` is due: the first of the policy's phase points
    /// more than `EARLY` after `at`. So readings are never more than `interval + EARLY` apart,
    /// and a policy that read at its phase point reads again exactly one interval later.
    pub fn due(&self, at: Time) -> Time {
        let after =
            at.0.saturating_add(i64::try_from(EARLY.as_millis()).unwrap_or(0));
        let ahead = (self.phase - after).rem_euclid(self.interval);
        Time(after.saturating_add(if ahead == 0 { self.interval } else { ahead }))
    }

    /// Whether a reading taken at `at` still stands at `now`.
    pub fn stands(&self, at: Time, now: Time) -> bool {
        now.plus(EARLY) < self.due(at)
    }
}

/// The last Prometheus readings of each policy and when they were taken. Reconciles triggered
/// by pod changes between two intervals reuse them, so Prometheus is read (and failures count
/// towards the fallback) once per interval.
#[derive(Default)]
pub struct ReadingCache {
    kept: RwLock<HashMap<ObjectRef<ScalingPolicy>, Kept>>,
}

impl ReadingCache {
    /// Readings of the same spec generation not yet due again at `now`, with their time.
    pub fn fresh(
        &self,
        policy: &ObjectRef<ScalingPolicy>,
        generation: Option<i64>,
        cadence: &Cadence,
        now: Time,
    ) -> Option<Reused> {
        let map = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        let kept = map.get(policy)?;
        let young = cadence.stands(kept.reused.at, now);
        (young && kept.generation == generation).then(|| kept.reused.clone())
    }

    /// When the policy's last readings were taken, whatever their generation.
    pub fn taken_at(&self, policy: &ObjectRef<ScalingPolicy>) -> Option<Time> {
        let map = self.kept.read().unwrap_or_else(PoisonError::into_inner);
        map.get(policy).map(|kept| kept.reused.at)
    }

    /// Keeps only the policies `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&ObjectRef<ScalingPolicy>) -> bool) {
        self.kept
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|policy, _| keep(policy));
    }

    pub fn keep(&self, policy: ObjectRef<ScalingPolicy>, generation: Option<i64>, taken: Reused) {
        self.kept
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                policy,
                Kept {
                    generation,
                    reused: taken,
                },
            );
    }
}

/// When each policy's newest recommendation was last made, which its status leaves out so that
/// a steady policy does not rewrite it (`History::latest_made`).
#[derive(Default)]
pub struct LatestMade {
    made: RwLock<HashMap<ObjectRef<ScalingPolicy>, Recommendation>>,
}

impl LatestMade {
    /// Fills in `history.latest_made` when this controller made its newest recommendation.
    pub fn fill(&self, policy: &ObjectRef<ScalingPolicy>, history: &mut History) {
        let map = self.made.read().unwrap_or_else(PoisonError::into_inner);
        if let (Some(made), Some(newest)) = (map.get(policy), history.recommendations.last())
            && made.replicas == newest.replicas
            && made.time >= newest.time
        {
            history.latest_made = Some(made.time);
        }
    }

    /// Keeps only the policies `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&ObjectRef<ScalingPolicy>) -> bool) {
        self.made
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|policy, _| keep(policy));
    }

    /// Remembers the recommendation `history` says was made last, if any.
    pub fn keep(&self, policy: ObjectRef<ScalingPolicy>, history: &History) {
        if let (Some(time), Some(newest)) = (history.latest_made, history.recommendations.last()) {
            self.made
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    policy,
                    Recommendation {
                        time,
                        replicas: newest.replicas,
                    },
                );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use kube::runtime::reflector::ObjectRef;

    use super::{Cadence, EARLY, LatestMade, ReadingCache, Readings, Reused, SelectorIndex};
    use crate::api::ScalingPolicy;
    use crate::engine::{History, Reading, Recommendation, Time};
    use crate::observe::pods::{CachedPod, parse_selector};

    fn policy(ns: &str, name: &str) -> ObjectRef<ScalingPolicy> {
        ObjectRef::new(name).within(ns)
    }

    fn pod(ns: &str, app: &str) -> CachedPod {
        let mut p = CachedPod::default();
        p.metadata.namespace = Some(ns.to_owned());
        p.metadata.labels = Some(BTreeMap::from([("app".to_owned(), app.to_owned())]));
        p
    }

    #[test]
    fn a_pod_triggers_the_policies_that_select_it_in_its_namespace() {
        let index = SelectorIndex::default();
        index.set(policy("a", "chat"), parse_selector("app=chat").ok());
        index.set(policy("a", "game"), parse_selector("app=game").ok());
        index.set(policy("b", "chat"), parse_selector("app=chat").ok());
        assert_eq!(index.policies_for(&pod("a", "chat")), [policy("a", "chat")]);
        assert!(index.policies_for(&pod("c", "chat")).is_empty());
        index.set(policy("a", "chat"), None);
        assert!(index.policies_for(&pod("a", "chat")).is_empty());
    }

    #[test]
    fn a_policy_whose_selector_changes_is_triggered_by_the_pods_of_the_new_one_only() {
        let index = SelectorIndex::default();
        index.set(policy("a", "chat"), parse_selector("app=chat").ok());
        index.set(policy("a", "chat"), parse_selector("app in (game,x)").ok());
        assert!(index.policies_for(&pod("a", "chat")).is_empty());
        assert_eq!(index.policies_for(&pod("a", "game")), [policy("a", "chat")]);
        // A selector that requires no label value is checked against every pod.
        index.set(policy("a", "chat"), parse_selector("app notin (game)").ok());
        assert_eq!(index.policies_for(&pod("a", "chat")), [policy("a", "chat")]);
        assert!(index.policies_for(&pod("a", "game")).is_empty());
        index.set(policy("a", "chat"), None);
        assert!(index.by_namespace.read().expect("not poisoned").is_empty());
    }

    proptest::proptest! {
        #[test]
        fn a_pod_triggers_exactly_the_policies_a_scan_of_every_selector_finds(
            steps in proptest::collection::vec(
                (0..2usize, 0..3usize, proptest::option::of(0..6usize), 0..3usize, 0..3usize),
                0..40,
            )
        ) {
            use kube::ResourceExt;
            use kube::core::{Selector, SelectorExt};
            use std::collections::HashMap;

            let selectors = [
                "app=chat", "app=game", "app in (chat,game)", "app notin (chat)", "app", "!app",
            ];
            let namespaces = ["a", "b"];
            let apps = ["chat", "game", "x"];
            let index = SelectorIndex::default();
            let mut shadow: HashMap<ObjectRef<ScalingPolicy>, Selector> = HashMap::new();
            for (ns, name, selector, pod_ns, app) in steps {
                let p = policy(namespaces[ns], &format!("p{name}"));
                let selector = selector.map(|i| parse_selector(selectors[i]).expect("parses"));
                match &selector {
                    Some(s) => shadow.insert(p.clone(), s.clone()),
                    None => shadow.remove(&p),
                };
                index.set(p, selector);
                let pod = pod(namespaces[pod_ns % 2], apps[app]);
                let mut got = index.policies_for(&pod);
                got.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));
                let mut want: Vec<ObjectRef<ScalingPolicy>> = shadow
                    .iter()
                    .filter(|(p, s)| {
                        p.namespace == pod.metadata.namespace && s.matches(pod.labels())
                    })
                    .map(|(p, _)| p.clone())
                    .collect();
                want.sort_by_key(|p| (p.namespace.clone(), p.name.clone()));
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    fn readings(v: f64) -> Readings {
        BTreeMap::from([("rps".to_owned(), Reading::Value(v))])
    }

    #[test]
    fn readings_are_reused_until_due_again_with_the_same_spec() {
        let cache = ReadingCache::default();
        let p = policy("a", "chat");
        let cadence = Cadence::new(Duration::from_secs(15), "uid-1");
        assert_eq!(cache.fresh(&p, Some(1), &cadence, Time::from_secs(0)), None);
        let taken = Reused {
            at: Time::from_secs(100),
            readings: readings(3.0),
            failures_before: 2,
        };
        cache.keep(p.clone(), Some(1), taken.clone());
        let due = cadence.due(taken.at);
        let just_before = due.minus(Duration::from_millis(101));
        assert_eq!(cache.fresh(&p, Some(1), &cadence, just_before), Some(taken));
        // The requeue for when it is due reads afresh, and so does a reconcile just before.
        assert_eq!(cache.fresh(&p, Some(1), &cadence, due), None);
        assert_eq!(cache.fresh(&p, Some(1), &cadence, due.minus(EARLY)), None);
        // An edited spec may query something else.
        assert_eq!(
            cache.fresh(&p, Some(1 + 1), &cadence, Time::from_secs(101)),
            None
        );
        // When they were taken is known whatever the generation, to tell a late reading.
        assert_eq!(cache.taken_at(&p), Some(Time::from_secs(100)));
        assert_eq!(cache.taken_at(&policy("a", "other")), None);
    }

    proptest::proptest! {
        /// Readings come at the policy's phase, never more than an interval (and `EARLY`) apart,
        /// and, once at the phase, exactly one interval apart.
        #[test]
        fn a_policy_reads_at_its_own_phase_at_most_one_interval_apart(
            interval_ms in 1u64..3_600_000,
            identity in "[a-z0-9-]{0,40}",
            at in 0i64..4_000_000_000_000,
        ) {
            let interval = Duration::from_millis(interval_ms);
            let cadence = Cadence::new(interval, &identity);
            let at = Time(at);
            let due = cadence.due(at);
            proptest::prop_assert!(due > at.plus(EARLY), "{due:?} too soon after {at:?}");
            proptest::prop_assert!(due <= at.plus(interval).plus(EARLY), "{due:?} too late after {at:?}");
            // The same phase whatever the reading it follows.
            let other = cadence.due(at.plus(Duration::from_millis(interval_ms / 3 + 7)));
            proptest::prop_assert_eq!((other.0 - due.0).rem_euclid(i64::try_from(interval_ms).unwrap_or(1)), 0);
            // A reading taken when due is next due one interval later (one taken within `EARLY`
            // of it stands for it).
            if interval > EARLY {
                proptest::prop_assert_eq!(cadence.due(due), due.plus(interval));
            }
            // One taken exactly `EARLY` before a phase point is not due at that point.
            proptest::prop_assert_eq!(cadence.due(due.minus(EARLY)), due.plus(interval));
            proptest::prop_assert!(cadence.stands(at, at));
            proptest::prop_assert!(!cadence.stands(at, due.minus(EARLY)));
        }
    }

    #[test]
    fn policies_created_together_spread_their_readings_over_the_interval() {
        // 1,000 UIDs as the API server makes them (version 4 UUIDs), read every 15 s: about 67
        // in each second of the interval rather than all in the second they were created.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut per_second = [0u32; 15];
        let created = Time::from_secs(1_700_000_000);
        for _ in 0..1000 {
            let (a, b) = (next(), next());
            let uid = format!(
                "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                b >> 52,
                b & 0xffff_ffff_ffff
            );
            let due = Cadence::new(Duration::from_secs(15), &uid).due(created);
            let second = usize::try_from(due.since(created).as_secs()).unwrap_or(99);
            per_second[second.min(14)] += 1;
        }
        let (least, most) = (
            per_second.iter().min().copied().unwrap_or(0),
            per_second.iter().max().copied().unwrap_or(0),
        );
        assert!(least >= 40 && most <= 100, "{per_second:?}");
    }

    #[test]
    fn the_time_a_recommendation_was_last_made_applies_only_to_the_same_newest_one() {
        let made = LatestMade::default();
        let p = policy("a", "chat");
        let status = |replicas| History {
            recommendations: vec![Recommendation {
                time: Time::from_secs(100),
                replicas,
            }],
            ..History::default()
        };
        let mut after = status(4);
        after.latest_made = Some(Time::from_secs(160));
        made.keep(p.clone(), &after);

        let mut h = status(4);
        made.fill(&p, &mut h);
        assert_eq!(h.latest_made, Some(Time::from_secs(160)));
        // Another leader wrote a different newest one: unknown, so the cautious reading.
        let mut h = status(5);
        made.fill(&p, &mut h);
        assert_eq!(h.latest_made, None);
        let mut h = status(4);
        made.fill(&policy("a", "other"), &mut h);
        assert_eq!(h.latest_made, None);
    }

    #[test]
    fn deleted_policies_are_forgotten() {
        let index = SelectorIndex::default();
        let cache = ReadingCache::default();
        let (gone, live) = (policy("a", "gone"), policy("a", "live"));
        for p in [&gone, &live] {
            index.set(p.clone(), Some(parse_selector("app=chat").expect("parses")));
            cache.keep(
                p.clone(),
                Some(1),
                Reused {
                    at: Time::from_secs(100),
                    readings: readings(1.0),
                    failures_before: 0,
                },
            );
        }
        index.retain(|p| *p == live);
        cache.retain(|p| *p == live);
        let at = Time::from_secs(100).plus(EARLY);
        let cadence = Cadence::new(Duration::from_secs(15), "uid-1");
        assert!(cadence.stands(Time::from_secs(100), at));
        assert!(cache.fresh(&gone, Some(1), &cadence, at).is_none());
        assert!(cache.fresh(&live, Some(1), &cadence, at).is_some());
        assert_eq!(index.policies_for(&pod("a", "chat")), [live]);
    }
}
