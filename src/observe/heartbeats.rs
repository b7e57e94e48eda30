//! The latest heartbeat of every pod, in memory: fed by the HTTP server (Push) or by a
//! per-pod Prometheus query, read when observing. Lost on restart by design: a new leader
//! waits one heartbeat timeout (`Observation.heartbeats_since`) before declaring anything Lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::engine::{Heartbeat, Time};

/// A pod, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: &str, name: &str) -> PodKey {
        PodKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    heartbeat: Heartbeat,
}

#[derive(Clone, Debug)]
struct Keyed {
    /// The pod's UID when the sender proved it, so a recreated pod with the same name does not
    /// inherit its predecessor's heartbeat.
    uid: Option<String>,
    entry: Entry,
    /// The drain (its `draining-since` mark) that the last reply told the pod about with
    /// `drain: true`; `None` when the last reply said `drain: false`.
    told_drain: Option<String>,
}

/// Shared by the server and the reconcilers.
#[derive(Clone, Debug, Default)]
pub struct Heartbeats {
    inner: Arc<Mutex<HashMap<PodKey, Keyed>>>,
}

impl Heartbeats {
    pub fn record(&self, pod: PodKey, uid: Option<String>, heartbeat: Heartbeat) {
        self.record_reply(pod, uid, heartbeat, None);
    }

    /// Records a pushed heartbeat and the drain its reply tells the pod about, if any.
    pub fn record_reply(
        &self,
        pod: PodKey,
        uid: Option<String>,
        heartbeat: Heartbeat,
        told_drain: Option<String>,
    ) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(
            pod,
            Keyed {
                uid,
                entry: Entry { heartbeat },
                told_drain,
            },
        );
    }

    /// The drain that the last reply to this very pod (same UID when known) announced.
    pub fn told_drain(&self, pod: &PodKey, uid: Option<&str>) -> Option<String> {
        let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let k = map.get(pod)?;
        match (&k.uid, uid) {
            (Some(a), Some(b)) if a != b => None,
            _ => k.told_drain.clone(),
        }
    }

    /// The latest heartbeat of `pod`, if it came from this very pod (same UID when known).
    pub fn latest(&self, pod: &PodKey, uid: Option<&str>) -> Option<Heartbeat> {
        let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let k = map.get(pod)?;
        match (&k.uid, uid) {
            (Some(a), Some(b)) if a != b => None,
            _ => Some(k.entry.heartbeat),
        }
    }

    /// Forgets heartbeats older than `before`, so pods that are gone do not pile up.
    pub fn forget_before(&self, before: Time) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, k| k.entry.heartbeat.at >= before);
    }

    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::{Heartbeats, PodKey};
    use crate::engine::{Heartbeat, Time};

    fn beat(secs: i64, sessions: u64) -> Heartbeat {
        Heartbeat {
            at: Time::from_secs(secs),
            sessions,
            draining: false,
        }
    }

    #[test]
    fn the_latest_heartbeat_wins() {
        let hb = Heartbeats::default();
        let pod = PodKey::new("demo", "chat-a");
        hb.record(pod.clone(), None, beat(1, 5));
        hb.record(pod.clone(), None, beat(2, 3));
        assert_eq!(hb.latest(&pod, None), Some(beat(2, 3)));
    }

    #[test]
    fn a_recreated_pod_does_not_inherit_its_predecessors_heartbeat() {
        let hb = Heartbeats::default();
        let pod = PodKey::new("demo", "chat-0");
        hb.record(pod.clone(), Some("uid-1".to_owned()), beat(1, 5));
        assert_eq!(hb.latest(&pod, Some("uid-2")), None);
        assert_eq!(hb.latest(&pod, Some("uid-1")), Some(beat(1, 5)));
    }

    #[test]
    fn old_heartbeats_are_forgotten() {
        let hb = Heartbeats::default();
        hb.record(PodKey::new("demo", "a"), None, beat(1, 1));
        hb.record(PodKey::new("demo", "b"), None, beat(10, 1));
        hb.forget_before(Time::from_secs(5));
        assert_eq!(hb.len(), 1);
    }
}
