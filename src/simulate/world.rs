//! The simulated workload: pods that start, hold sticky sessions and drain, and the
//! ReplicaSet (or StatefulSet) that creates pods and deletes them in `engine::deletion_order`
//! when the replica count changes. Shared by the `drainscaler` and `hpa` runs. Pure, no I/O.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::api::TargetKind;
use crate::engine::{
    DrainPlan, Heartbeat, Instance, Phase, REMOVABLE_DELETION_COST, Time, deletion_order,
};

/// What happened to sessions over a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Sessions accepted by an instance.
    pub started: u64,
    /// Sessions that found no ready, non-draining instance with room.
    pub rejected: u64,
    /// Sessions cut because their instance was removed.
    pub dropped: u64,
}

/// One pod: what the engine sees of it, and the end times of the sessions it holds.
#[derive(Clone, Debug)]
struct Pod {
    instance: Instance,
    ready_at: i64,
    ends: BinaryHeap<Reverse<i64>>,
}

impl Pod {
    fn sessions(&self) -> u64 {
        self.ends.len() as u64
    }
}

/// Pods and their sessions. Times are milliseconds from the start of the trace.
#[derive(Clone, Debug)]
pub struct World {
    kind: TargetKind,
    prefix: String,
    startup_ms: i64,
    capacity: u64,
    pods: Vec<Pod>,
    /// `spec.replicas` of the target.
    replicas: u32,
    next_id: u64,
    active: u64,
    pub tally: Tally,
    /// How long each completed drain took, from its start to the pod's removal.
    pub drains_ms: Vec<i64>,
    /// Scratch space for routing, kept to avoid an allocation per step.
    room: BinaryHeap<Reverse<(u64, usize)>>,
}

impl World {
    /// A workload of `replicas` pods that are ready at time 0.
    pub fn new(
        kind: TargetKind,
        prefix: &str,
        replicas: u32,
        startup_ms: i64,
        capacity: u32,
    ) -> World {
        let mut world = World {
            kind,
            prefix: prefix.to_owned(),
            startup_ms,
            capacity: u64::from(capacity),
            pods: Vec::new(),
            replicas: 0,
            next_id: 0,
            active: 0,
            tally: Tally::default(),
            drains_ms: Vec::new(),
            room: BinaryHeap::new(),
        };
        world.reconcile(replicas, -startup_ms);
        world.advance(0);
        world
    }

    /// `spec.replicas`; also the number of pods, since pods come and go at once.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// Sessions held now.
    pub fn sessions(&self) -> u64 {
        self.active
    }

    /// Pods marked draining.
    pub fn draining(&self) -> u32 {
        self.pods
            .iter()
            .filter(|p| p.instance.draining_since.is_some())
            .count() as u32
    }

    /// Ends the sessions that are over by `now` and makes pods whose startup is over ready.
    pub fn advance(&mut self, now: i64) {
        for pod in &mut self.pods {
            while pod.ends.peek().is_some_and(|Reverse(end)| *end <= now) {
                pod.ends.pop();
                self.active -= 1;
            }
            if !pod.instance.ready && pod.ready_at <= now {
                pod.instance.phase = Phase::Running;
                pod.instance.ready = true;
                pod.instance.started = Some(Time(pod.ready_at));
            }
        }
    }

    /// Routes new sessions, each to the least-loaded ready pod with room that is neither
    /// draining nor held back (a Service selecting on the serving label); a
    /// session with nowhere to go is rejected.
    pub fn admit(&mut self, now: i64, lengths: &[i64]) {
        if lengths.is_empty() {
            return;
        }
        self.room.clear();
        for (i, pod) in self.pods.iter().enumerate() {
            let open = pod.instance.ready
                && pod.instance.draining_since.is_none()
                && !pod.instance.held_back;
            if open && pod.sessions() < self.capacity {
                self.room.push(Reverse((pod.sessions(), i)));
            }
        }
        for &length in lengths {
            let Some(Reverse((held, i))) = self.room.pop() else {
                self.tally.rejected += 1;
                continue;
            };
            self.pods[i].ends.push(Reverse(now + length));
            self.active += 1;
            self.tally.started += 1;
            if held + 1 < self.capacity {
                self.room.push(Reverse((held + 1, i)));
            }
        }
    }

    /// The pods as the engine observes them; with `heartbeats`, every running pod reports its
    /// exact session count at `now`.
    pub fn instances(&self, now: i64, heartbeats: bool) -> Vec<Instance> {
        self.pods
            .iter()
            .map(|pod| {
                let mut instance = pod.instance.clone();
                if heartbeats && instance.phase == Phase::Running {
                    instance.heartbeat = Some(Heartbeat {
                        at: Time(now),
                        sessions: pod.sessions(),
                        // The simulated app learns of its drain at once.
                        draining: instance.draining_since.is_some(),
                    });
                }
                instance
            })
            .collect()
    }

    /// Carries out a drain plan the way the controller does: cancel and start drains, hold
    /// back and release pods, give
    /// removable pods the lowest deletion cost, delete Lost pods, then write the replica count.
    pub fn apply(&mut self, plan: &DrainPlan, now: i64) {
        for pod in &mut self.pods {
            let name = pod.instance.name.as_str();
            if plan.cancel.iter().any(|c| c == name) {
                pod.instance.draining_since = None;
                // A pod back in service must not keep the cost that puts it first in line.
                pod.instance.deletion_cost = 0;
            }
            if plan.start.iter().any(|s| s == name) {
                pod.instance.draining_since = Some(Time(now));
                // The drain's marks replace the hold's.
                pod.instance.held_back = false;
            }
            if plan.hold.iter().any(|h| h == name) {
                pod.instance.held_back = true;
            }
            if plan.release.iter().any(|r| r == name) {
                pod.instance.held_back = false;
            }
            if plan.mark_removable.iter().any(|m| m == name) {
                pod.instance.deletion_cost = REMOVABLE_DELETION_COST;
            }
        }
        for name in &plan.replace {
            if let Some(i) = self.pods.iter().position(|p| &p.instance.name == name) {
                self.remove(i, now);
            }
        }
        self.reconcile(plan.replicas, now);
    }

    /// Sets `spec.replicas`; the workload creates pods or deletes them in its own order, and
    /// the sessions on deleted pods are dropped.
    pub fn scale(&mut self, replicas: u32, now: i64) {
        self.reconcile(replicas, now);
    }

    fn reconcile(&mut self, replicas: u32, now: i64) {
        self.replicas = replicas;
        let target = replicas as usize;
        if self.pods.len() > target {
            let order = {
                let refs: Vec<&Instance> = self.pods.iter().map(|p| &p.instance).collect();
                deletion_order(self.kind, &refs)
            };
            let mut doomed: Vec<usize> = order[..self.pods.len() - target].to_vec();
            // Remove from the back so that earlier indices stay valid.
            doomed.sort_unstable_by(|a, b| b.cmp(a));
            for i in doomed {
                self.remove(i, now);
            }
        }
        while self.pods.len() < target {
            self.create(now);
        }
    }

    fn remove(&mut self, i: usize, now: i64) {
        let pod = self.pods.remove(i);
        let held = pod.sessions();
        self.active -= held;
        self.tally.dropped += held;
        if let Some(since) = pod.instance.draining_since {
            self.drains_ms.push(now - since.0);
        }
    }

    fn create(&mut self, now: i64) {
        let id = self.next_id;
        self.next_id += 1;
        let ordinal = match self.kind {
            TargetKind::StatefulSet => {
                let taken: Vec<u32> = self
                    .pods
                    .iter()
                    .filter_map(|p| p.instance.ordinal)
                    .collect();
                (0u32..).find(|o| !taken.contains(o))
            }
            TargetKind::Deployment => None,
        };
        let ready_at = now + self.startup_ms;
        let mut pod = Pod {
            instance: Instance {
                name: format!("{}-{id:06}", self.prefix),
                created: Time(now),
                scheduled: true,
                phase: Phase::Pending,
                ordinal,
                ..Instance::default()
            },
            ready_at,
            ends: BinaryHeap::new(),
        };
        if ready_at <= now {
            pod.instance.phase = Phase::Running;
            pod.instance.ready = true;
            pod.instance.started = Some(Time(ready_at));
        }
        self.pods.push(pod);
    }
}

#[cfg(test)]
mod tests {
    use super::World;
    use crate::api::TargetKind;
    use crate::engine::{DrainPlan, REMOVABLE_DELETION_COST};

    fn world(replicas: u32) -> World {
        World::new(TargetKind::Deployment, "app", replicas, 30_000, 2)
    }

    #[test]
    fn sessions_go_to_the_least_loaded_pod_and_are_rejected_without_room() {
        let mut w = world(2);
        w.admit(0, &[10_000, 10_000, 10_000, 10_000, 10_000]);
        assert_eq!(w.sessions(), 4);
        assert_eq!(w.tally.started, 4);
        assert_eq!(w.tally.rejected, 1);
        w.advance(10_000);
        assert_eq!(w.sessions(), 0);
    }

    #[test]
    fn new_pods_take_sessions_only_once_started() {
        let mut w = world(1);
        w.scale(2, 1_000);
        w.admit(1_000, &[60_000, 60_000, 60_000]);
        assert_eq!(w.tally.rejected, 1, "the new pod is still starting");
        w.advance(31_000);
        w.admit(31_000, &[60_000]);
        assert_eq!(w.tally.rejected, 1);
        assert_eq!(w.sessions(), 3);
    }

    #[test]
    fn scaling_in_deletes_the_newest_pod_and_drops_its_sessions() {
        let mut w = world(1);
        w.scale(2, 1_000);
        w.advance(31_000);
        w.admit(31_000, &[600_000, 600_000, 600_000]);
        // Both were empty: the older pod took two sessions, the new one one.
        w.scale(1, 40_000);
        assert_eq!(w.tally.dropped, 1);
        assert_eq!(w.sessions(), 2);
    }

    #[test]
    fn held_back_pods_take_no_new_sessions_keep_theirs_and_take_them_again_once_released() {
        let mut w = world(2);
        w.admit(0, &[60_000, 60_000]);
        let names: Vec<String> = w
            .instances(0, true)
            .iter()
            .map(|i| i.name.clone())
            .collect();
        let hold = DrainPlan {
            replicas: 2,
            hold: vec![names[1].clone()],
            ..DrainPlan::default()
        };
        w.apply(&hold, 0);
        let seen = w.instances(0, true);
        assert!(seen[1].held_back && seen[1].draining_since.is_none());
        assert_eq!(
            seen[1].heartbeat.map(|h| h.sessions),
            Some(1),
            "it keeps its session"
        );
        // Room for one more on the serving pod only (capacity 2).
        w.admit(0, &[60_000, 60_000]);
        assert_eq!(w.tally.rejected, 1);
        assert_eq!(w.draining(), 0, "held back is not draining");
        let release = DrainPlan {
            replicas: 2,
            release: vec![names[1].clone()],
            ..DrainPlan::default()
        };
        w.apply(&release, 0);
        w.admit(0, &[60_000]);
        assert_eq!(w.tally.rejected, 1);
        assert_eq!(w.sessions(), 4);
    }

    #[test]
    fn removable_pods_are_deleted_first_and_their_drain_time_is_recorded() {
        let mut w = world(2);
        let first = w.instances(0, true)[0].name.clone();
        let start = DrainPlan {
            replicas: 2,
            start: vec![first.clone()],
            ..DrainPlan::default()
        };
        w.apply(&start, 0);
        assert_eq!(w.draining(), 1);
        let remove = DrainPlan {
            replicas: 1,
            mark_removable: vec![first.clone()],
            ..DrainPlan::default()
        };
        w.apply(&remove, 15_000);
        let left = w.instances(15_000, true);
        assert_eq!(left.len(), 1);
        assert_ne!(left[0].name, first);
        assert_ne!(left[0].deletion_cost, REMOVABLE_DELETION_COST);
        assert_eq!(w.drains_ms, vec![15_000]);
    }
}
