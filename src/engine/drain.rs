//! Scale-in as a plan over instances: which to drain, which drains to cancel, which drained
//! instances are removable, and how far the replica count may fall so that the workload's own
//! deletion order removes exactly those. Pure, no I/O.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::api::{OnLost, OnTimeout, TargetKind};
use crate::engine::metric_replicas;
use crate::engine::{
    Draining, Event, EventReason, Heartbeat, HeartbeatState, Instance, InstanceCounts, Observation,
    Phase, PodReport, Reading, Time,
};
use crate::policy::{Heartbeat as HeartbeatPolicy, HeartbeatSource, MetricTarget, Policy};

/// The deletion cost given to removable pods so that the ReplicaSet deletes them first.
pub const REMOVABLE_DELETION_COST: i32 = i32::MIN;

/// What to do to instances, and the replica count that results.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainPlan {
    /// `spec.replicas` to write.
    pub replicas: u32,
    /// Pods to mark draining.
    pub start: Vec<String>,
    /// Draining pods to put back into service.
    pub cancel: Vec<String>,
    /// Removable pods to give the lowest deletion cost, so that they rank first.
    pub mark_removable: Vec<String>,
    /// Pods the lowered count removes, and why they may go.
    pub remove: Vec<Removal>,
    /// Lost pods to delete so that their workload recreates them.
    pub replace: Vec<String>,
    /// Serving pods to hold back: out of the serving Service, not draining.
    pub hold: Vec<String>,
    /// Held-back pods to put back into the serving Service.
    pub release: Vec<String>,
    /// Removable pods wait because others rank before them for deletion.
    pub blocked: bool,
    /// A Deployment rollout is in progress: nothing starts draining or goes, and the count is
    /// held (or raised for load) until it ends.
    pub rollout: bool,
    pub events: Vec<Event>,
}

impl DrainPlan {
    /// Changes nothing.
    pub fn hold(replicas: u32) -> DrainPlan {
        DrainPlan {
            replicas,
            ..DrainPlan::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub pod: String,
    pub cause: RemovalCause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovalCause {
    /// A heartbeat taken while the pod knew it drained reported zero sessions (or the pod
    /// never ran).
    Drained,
    /// The pod is Lost: silent, and not Ready for as long.
    Lost,
    /// The drain timed out with `onTimeout: Remove`.
    TimedOut,
    /// The policy drains nothing (no heartbeats, zero drain timeout): the HPA's scale-in.
    Undrained,
}

/// Whether a pod that has run has sent no heartbeat for one timeout. Nothing is Silent until
/// one timeout has passed since heartbeats began to be collected. Silence alone proves nothing
/// about the pod: the path between it and the controller may be what broke.
pub fn is_silent(policy: &Policy, seen: &Observation, pod: &Instance, now: Time) -> bool {
    let (Some(hb), Some(started)) = (&policy.heartbeat, pod.started) else {
        return false;
    };
    if pod.phase == Phase::Pending {
        return false;
    }
    let last = pod
        .heartbeat
        .map_or(started, |h| h.at.max(started))
        .max(seen.heartbeats_since);
    now.since(last) >= hb.timeout
}

/// How long after a drain was cancelled a pod may still come to believe it drains: a reply
/// computed from a cache that had not seen the cancel yet, or the downward API's annotation
/// file, which the kubelet refreshes about once a minute.
pub const CANCEL_PROPAGATION: Duration = Duration::from_secs(120);

/// Kubernetes corroborates a Silent pod's silence: the kubelet has reported it not Ready for
/// at least one heartbeat timeout as well. Not when the pod went not Ready while it may have
/// believed it drained: apps commonly fail readiness on purpose while they drain, and a pod cut
/// off from the controller never hears that its drain was cancelled. Each drain's start is
/// moved one timeout earlier so that a node clock behind the controller's cannot make a
/// drain's own unreadiness look older than the drain.
fn corroborated(policy: &Policy, pod: &Instance, now: Time) -> bool {
    let (Some(hb), Some(not_ready)) = (&policy.heartbeat, pod.not_ready_since) else {
        return false;
    };
    let in_this_drain = pod
        .draining_since
        .is_some_and(|since| not_ready >= since.minus(hb.timeout));
    let in_a_cancelled_drain = pod.cancelled_drain.is_some_and(|c| {
        not_ready >= c.from.minus(hb.timeout)
            && not_ready <= c.at.plus(hb.timeout).plus(CANCEL_PROPAGATION)
    });
    !pod.ready && !in_this_drain && !in_a_cancelled_drain && now.since(not_ready) >= hb.timeout
}

/// What the heartbeats say about a policy's pods at `now`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Liveness {
    /// Per pod: sent no heartbeat for one timeout.
    pub silent: Vec<bool>,
    /// Per pod: Silent and not Ready for one timeout, outside a broad outage.
    pub lost: Vec<bool>,
    /// Most pods whose state is known are Silent at once: the path, not the pods, has most
    /// likely broken.
    pub outage: Option<Outage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    pub silent: usize,
    /// Silent pods plus those that reported within the timeout; pods too new to be due are in
    /// neither, so that new pods do not hide an outage that will silence them too.
    pub known: usize,
}

/// Silent and Lost pods, and whether their silence is a broad outage. During a broad outage
/// nothing is Lost: replacing or removing pods cannot mend a broken path and would cut the
/// sessions they still hold.
pub fn liveness(policy: &Policy, seen: &Observation, pods: &[&Instance], now: Time) -> Liveness {
    let silent: Vec<bool> = pods
        .iter()
        .map(|p| is_silent(policy, seen, p, now))
        .collect();
    let timeout = policy.heartbeat.as_ref().map(|hb| hb.timeout);
    let reporting = pods
        .iter()
        .zip(&silent)
        .filter(|(p, s)| {
            !**s && timeout.is_some_and(|t| p.heartbeat.is_some_and(|h| now.since(h.at) < t))
        })
        .count();
    let silent_n = silent.iter().filter(|&&s| s).count();
    let outage = (silent_n > reporting).then_some(Outage {
        silent: silent_n,
        known: silent_n + reporting,
    });
    let lost = pods
        .iter()
        .zip(&silent)
        .map(|(p, &s)| s && outage.is_none() && corroborated(policy, p, now))
        .collect();
    Liveness {
        silent,
        lost,
        outage,
    }
}

/// Why a draining pod may be removed now, if it may.
fn removable(
    policy: &Policy,
    pod: &Instance,
    lost: bool,
    since: Time,
    now: Time,
) -> Option<RemovalCause> {
    if !policy.drains() {
        return Some(RemovalCause::Undrained);
    }
    if lost {
        return Some(RemovalCause::Lost);
    }
    if let Some(hb) = &policy.heartbeat {
        let reported_empty = pod
            .heartbeat
            .is_some_and(|h| h.sessions == 0 && counts_after_drain(hb, &h, since));
        if reported_empty || pod.started.is_none() {
            return Some(RemovalCause::Drained);
        }
    }
    let timed_out = now.since(since) >= policy.drain.timeout;
    match (
        timed_out,
        policy.heartbeat.is_some(),
        policy.drain.on_timeout,
    ) {
        // Without heartbeats no sessions are known: the timeout is the whole drain.
        (true, false, _) => Some(RemovalCause::Drained),
        (true, true, OnTimeout::Remove) => Some(RemovalCause::TimedOut),
        _ => None,
    }
}

/// Whether a heartbeat's count was taken after the pod stopped taking new sessions for the
/// drain that began at `since`. A pushed count must have been taken while the pod knew it was
/// draining. A Prometheus sample cannot say so: it counts only once the drain marks have had
/// one heartbeat timeout to take the pod out of its Services.
pub fn counts_after_drain(hb: &HeartbeatPolicy, h: &Heartbeat, since: Time) -> bool {
    match hb.source {
        HeartbeatSource::Push => h.draining && h.at > since,
        HeartbeatSource::Prometheus { .. } => h.at >= since.plus(hb.timeout),
    }
}

/// "3 sessions" or "unknown sessions", formatted in place.
struct Sessions(Option<u64>);

impl fmt::Display for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(n) => write!(f, "{n} sessions"),
            None => f.write_str("unknown sessions"),
        }
    }
}

/// The session count a draining pod reported after its drain began.
fn sessions_since(pod: &Instance, since: Time) -> Option<u64> {
    match pod.heartbeat {
        Some(h) if h.at > since => Some(h.sessions),
        _ if pod.started.is_none() => Some(0),
        _ => None,
    }
}

/// The `sessions` metric. Silent pods count with their last report; a broad outage makes the
/// reading fail (it holds the count) rather than fall; pods that never reported are unknown,
/// never zero. Unavailable while heartbeats are too new to be trusted and some running pod has
/// not reported.
pub fn sessions_reading(
    policy: &Policy,
    seen: &Observation,
    pods: &[&Instance],
    live: &Liveness,
    metric: SessionsMetric,
    now: Time,
) -> Reading {
    let Some(hb) = &policy.heartbeat else {
        return Reading::Unavailable {
            reason: "the policy has no heartbeat source".to_owned(),
        };
    };
    if let Some(o) = live.outage {
        return Reading::Unavailable {
            reason: format!(
                "{} of {} instances sent no heartbeat for {}s: the sessions they hold cannot be known",
                o.silent,
                o.known,
                hb.timeout.as_secs()
            ),
        };
    }
    let (mut unknown, mut total) = (0u32, 0u64);
    for p in pods {
        match p.sessions() {
            Some(s) => total = total.saturating_add(s),
            None => unknown = unknown.saturating_add(1),
        }
    }
    if unknown > 0 && now.since(seen.heartbeats_since) < hb.timeout {
        return Reading::Pending {
            reason: format!(
                "waiting for heartbeats: {unknown} of {} instances have not reported yet",
                pods.len()
            ),
        };
    }
    Reading::Value(with_unknown(total as f64, unknown, metric))
}

/// The metric's target and the count it is read against, for estimating unknown pods.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SessionsMetric {
    pub target: MetricTarget,
    pub current: u32,
    pub tolerance: f64,
}

/// Known sessions plus an estimate for pods that never reported, as the HPA treats pods
/// without metrics: when the known pods alone would lower the count, each unknown pod counts as
/// holding the target; otherwise as holding nothing.
fn with_unknown(known: f64, unknown: u32, m: SessionsMetric) -> f64 {
    if unknown == 0 || metric_replicas(m.target, known, m.current, m.tolerance) >= m.current {
        return known;
    }
    let per_pod = match m.target {
        MetricTarget::AverageValue(t) => t,
        MetricTarget::Value(t) => t / f64::from(m.current.max(1)),
    };
    known + f64::from(unknown) * per_pod
}

/// Instance counts for status.
pub fn counts(pods: &[&Instance], live: &Liveness) -> InstanceCounts {
    let mut counts = InstanceCounts::default();
    for (i, p) in pods.iter().enumerate() {
        if p.draining_since.is_some() {
            counts.draining += 1;
        } else if p.ready {
            counts.ready += 1;
        }
        if live.silent[i] {
            counts.silent += 1;
        }
        if live.lost[i] {
            counts.lost += 1;
        }
        counts.sessions = counts.sessions.saturating_add(p.sessions().unwrap_or(0));
    }
    counts
}

/// Pods that stay draining after the plan, for status.
pub fn draining_status(pods: &[&Instance], plan: &DrainPlan) -> Vec<Draining> {
    let gone: BTreeSet<&str> = plan
        .cancel
        .iter()
        .map(String::as_str)
        .chain(plan.remove.iter().map(|r| r.pod.as_str()))
        .collect();
    pods.iter()
        .filter_map(|p| p.draining_since.map(|since| (p, since)))
        .filter(|(p, _)| !gone.contains(p.name.as_str()))
        .map(|(p, since)| Draining {
            pod: p.name.clone(),
            since,
            sessions: sessions_since(p, since),
        })
        .collect()
}

/// The most pods a status lists one by one; a status object must stay small.
pub const MAX_POD_REPORTS: usize = 100;

/// Each pod's heartbeat state and latest count, Lost and Silent first, then by name, at most
/// `MAX_POD_REPORTS`.
pub fn pod_reports(pods: &[&Instance], live: &Liveness) -> Vec<PodReport> {
    let state = |i: usize, p: &Instance| {
        if live.lost[i] {
            HeartbeatState::Lost
        } else if live.silent[i] {
            HeartbeatState::Silent
        } else if p.heartbeat.is_some() {
            HeartbeatState::Reporting
        } else {
            HeartbeatState::Awaited
        }
    };
    // Ordered and cut by reference first: a large workload costs no allocation per pod.
    let mut order: Vec<(HeartbeatState, &str, usize)> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| (state(i, p), p.name.as_str(), i))
        .collect();
    if order.len() > MAX_POD_REPORTS {
        order.select_nth_unstable(MAX_POD_REPORTS - 1);
        order.truncate(MAX_POD_REPORTS);
    }
    order.sort_unstable();
    order
        .into_iter()
        .map(|(heartbeat, name, i)| {
            let quiet = matches!(heartbeat, HeartbeatState::Lost | HeartbeatState::Silent);
            let p = pods[i];
            PodReport {
                pod: name.to_owned(),
                sessions: p.heartbeat.map(|h| h.sessions),
                heartbeat,
                last_heartbeat: p.heartbeat.filter(|_| quiet).map(|h| h.at),
            }
        })
        .collect()
}

/// A pod's place in a ReplicaSet's deletion order. `class` is the ReplicaSet's ranking up to
/// the deletion cost (unscheduled, pending, not ready, lowest cost first): pods of one class
/// may be deleted in any order. The rest only picks among them: the most recently started,
/// most restarted, newest first, then by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct DeletionKey<'a> {
    class: (bool, Phase, bool, i32),
    started: Reverse<Option<Time>>,
    restarts: Reverse<u32>,
    created: Reverse<Time>,
    name: &'a str,
}

fn deletion_key<'a>(p: &'a Instance) -> DeletionKey<'a> {
    DeletionKey {
        class: (p.scheduled, p.phase, p.ready, p.deletion_cost),
        started: Reverse(p.started),
        restarts: Reverse(p.restarts),
        created: Reverse(p.created),
        name: &p.name,
    }
}

/// A StatefulSet deletes the highest ordinal first.
fn ordinal_key(p: &Instance) -> Reverse<u32> {
    Reverse(p.ordinal.unwrap_or(u32::MAX))
}

/// The order in which the workload deletes pods on a scale-in, first victim first: highest
/// ordinal for a StatefulSet; for a ReplicaSet unscheduled, pending, not ready, lowest
/// deletion cost, then the most recently started, most restarted, newest.
pub fn deletion_order(kind: TargetKind, pods: &[&Instance]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    match kind {
        TargetKind::StatefulSet => order.sort_by_key(|&i| ordinal_key(pods[i])),
        TargetKind::Deployment => {
            let keys: Vec<DeletionKey<'_>> = pods.iter().map(|p| deletion_key(p)).collect();
            order.sort_by(|&a, &b| keys[a].cmp(&keys[b]));
        }
    }
    order
}

/// The `n` first of `candidates` in the order of `key`, then `tie` (which must be total:
/// end it with the index, so that the result does not depend on the selection algorithm).
/// Only the chosen few are sorted; keys are computed once, `tie` only for equal keys.
fn first<K: Ord>(
    candidates: Vec<usize>,
    n: usize,
    key: impl Fn(usize) -> K,
    tie: impl Fn(usize, usize) -> Ordering,
) -> Vec<usize> {
    let n = n.min(candidates.len());
    if n == 0 {
        return Vec::new();
    }
    let mut keyed: Vec<(K, usize)> = candidates.into_iter().map(|i| (key(i), i)).collect();
    let order = |a: &(K, usize), b: &(K, usize)| a.0.cmp(&b.0).then_with(|| tie(a.1, b.1));
    if n < keyed.len() {
        keyed.select_nth_unstable_by(n - 1, order);
        keyed.truncate(n);
    }
    keyed.sort_unstable_by(order);
    keyed.into_iter().map(|(_, i)| i).collect()
}

/// Orders pods by the ReplicaSet's deletion order, then by index.
pub(crate) fn by_deletion_order<'a>(
    pods: &'a [&Instance],
) -> impl Fn(usize, usize) -> Ordering + 'a {
    move |a, b| {
        deletion_key(pods[a])
            .cmp(&deletion_key(pods[b]))
            .then(a.cmp(&b))
    }
}

/// The most StatefulSet ordinals without a pod, below its highest live one, that a plan
/// stands in for: one per ordinal, so a hostile or mistaken `spec.replicas` or pod-index label
/// cannot make a decision allocate without bound.
pub const MAX_EMPTY_ORDINALS: u64 = 10_000;

/// Stand-ins for the StatefulSet ordinals in `[start, start + replicas)` that have no live pod:
/// never started, so holding nothing and never Lost. Those above the highest live ordinal are
/// all alike and go first on a scale-in, so at most `desired` of them are made: more would
/// only be removed again. `None` when the ordinals missing below the highest live one exceed
/// `MAX_EMPTY_ORDINALS`.
fn empty_slots(
    start: u32,
    replicas: u32,
    desired: u32,
    pods: &[&Instance],
) -> Option<Vec<Instance>> {
    let (start, end) = (u64::from(start), u64::from(start) + u64::from(replicas));
    let live: BTreeSet<u64> = pods
        .iter()
        .filter_map(|p| p.ordinal.map(u64::from))
        .filter(|o| (start..end).contains(o))
        .collect();
    let above = live.last().map_or(start, |&o| o + 1);
    let missing_below = (above - start) - live.len() as u64;
    if missing_below > MAX_EMPTY_ORDINALS {
        return None;
    }
    let trailing = (end - above).min(u64::from(desired));
    let slot = |o: u64| Instance {
        ordinal: Some(u32::try_from(o).unwrap_or(u32::MAX)),
        ..Instance::default()
    };
    Some(
        (start..above)
            .filter(|o| !live.contains(o))
            .chain(above..above + trailing)
            .map(slot)
            .collect(),
    )
}

/// Pods of more than one owner: a Deployment rolling out a new ReplicaSet.
fn in_rollout(pods: &[&Instance]) -> bool {
    let mut owners = pods.iter().filter_map(|p| p.owner.as_deref());
    owners
        .next()
        .is_some_and(|first| owners.any(|other| other != first))
}

/// Holds everything: the StatefulSet's ordinals are too sparse to plan over.
fn too_many_empty_ordinals(seen: &Observation) -> DrainPlan {
    let mut plan = DrainPlan::hold(seen.replicas);
    plan.events.push(Event {
        reason: EventReason::ScalingHeld,
        message: format!(
            "the StatefulSet has more than {MAX_EMPTY_ORDINALS} ordinals without a pod below its highest pod (spec.replicas {}, ordinals from {}): holding the count and every drain; set spec.replicas to the pods it runs",
            seen.replicas, seen.ordinals_start
        ),
    });
    plan
}

/// Plans drains, cancellations, removals and the replica count that serves `desired`;
/// `lost` is `is_lost` for each pod.
pub fn plan(
    policy: &Policy,
    seen: &Observation,
    pods: &[&Instance],
    lost: &[bool],
    desired: u32,
    now: Time,
) -> DrainPlan {
    let kind = policy.target.kind;
    // A StatefulSet keeps every ordinal below `spec.replicas` and a lower count deletes the
    // highest ordinals, whatever is missing beneath them. An ordinal without a live pod (being
    // replaced, or not created yet) will be back, so planning counts it as a slot that serves
    // and holds nothing; counting pods instead would delete a draining pod with sessions.
    let empty = match kind {
        TargetKind::StatefulSet => {
            match empty_slots(seen.ordinals_start, seen.replicas, desired, pods) {
                Some(empty) => empty,
                None => return too_many_empty_ordinals(seen),
            }
        }
        TargetKind::Deployment => Vec::new(),
    };
    let real = pods.len();
    let slots: Vec<&Instance> = pods.iter().copied().chain(&empty).collect();
    let pods = slots.as_slice();
    let lost: Vec<bool> = lost
        .iter()
        .copied()
        .chain(empty.iter().map(|_| false))
        .collect();
    let mut since: Vec<Option<Time>> = pods.iter().map(|p| p.draining_since).collect();
    let mut plan = DrainPlan::default();
    let desired_n = desired as usize;
    let active = |since: &[Option<Time>]| since.iter().filter(|s| s.is_none()).count();
    // Sorting 1,000 pods would dominate a decision: each step selects only the few pods it
    // needs and orders those. Unknown sessions count as the most.
    let sessions: Vec<u64> = pods
        .iter()
        .map(|p| p.sessions().unwrap_or(u64::MAX))
        .collect();
    let by_index = |a: usize, b: usize| a.cmp(&b);
    let holds_back = policy.drain.hold_back.is_some();

    // 1. Load came back: put draining pods back into service before adding new ones.
    let serving = active(&since);
    if serving < desired_n {
        let cancellable: Vec<usize> = (0..pods.len())
            .filter(|&i| since[i].is_some() && !lost[i])
            .collect();
        let wanted = desired_n - serving;
        let cancelled = match kind {
            TargetKind::StatefulSet => first(cancellable, wanted, |i| pods[i].ordinal, by_index),
            TargetKind::Deployment => first(
                cancellable,
                wanted,
                |i| (Reverse(sessions[i]), pods[i].name.as_str()),
                by_index,
            ),
        };
        for i in cancelled {
            since[i] = None;
            plan.cancel.push(pods[i].name.clone());
            plan.events.push(Event {
                reason: EventReason::DrainCancelled,
                message: format!("load is back: pod {} serves again", pods[i].name),
            });
        }
    }

    // While a rollout runs, a lower count is shared out between the old and new ReplicaSets
    // by the Deployment, whatever the pods' deletion costs, and the rollout replaces the old
    // pods anyway: nothing new drains and nothing drained may rely on a lower count.
    plan.rollout = kind == TargetKind::Deployment && policy.drains() && in_rollout(pods);

    // 2. Too many serving: choose victims.
    let serving = active(&since);
    let mut victims = Vec::new();
    if serving > desired_n && !plan.rollout {
        let candidates: Vec<usize> = (0..pods.len()).filter(|&i| since[i].is_none()).collect();
        let wanted = serving - desired_n;
        victims = match kind {
            TargetKind::StatefulSet => {
                first(candidates, wanted, |i| Reverse(pods[i].ordinal), by_index)
            }
            // Held-back pods were set aside to be the next victims.
            TargetKind::Deployment => first(
                candidates,
                wanted,
                |i| {
                    let held = holds_back && pods[i].held_back;
                    (!lost[i] && pods[i].ready, !held, sessions[i])
                },
                by_deletion_order(pods),
            ),
        };
        for &i in &victims {
            since[i] = Some(now);
        }
    }

    // 3. Which draining pods may go, and 4. how many the deletion order lets go now: the
    // pods ranked before every pod that may not go, counting a ReplicaSet class (which it
    // deletes in any order) only when all of it may go.
    let causes: Vec<Option<RemovalCause>> = (0..pods.len())
        .map(|i| match since[i] {
            Some(_) if i >= real => Some(RemovalCause::Drained),
            Some(s) => removable(policy, pods[i], lost[i], s, now),
            None => None,
        })
        .collect();
    let ok = |i: usize| causes[i].is_some();
    let scaling_up = active(&since) < desired_n;
    let removed: Vec<usize> = if scaling_up || plan.rollout {
        Vec::new()
    } else if !policy.drains() {
        // Nothing to wait for: the workload picks, as under the HPA.
        (0..pods.len()).filter(|&i| ok(i)).collect()
    } else {
        let removable: Vec<usize> = (0..pods.len()).filter(|&i| ok(i)).collect();
        let blocked = (0..pods.len()).filter(|&i| !ok(i));
        match kind {
            TargetKind::StatefulSet => {
                let stop = blocked.map(|i| (ordinal_key(pods[i]), i)).min();
                let mut removed: Vec<usize> = removable
                    .into_iter()
                    .filter(|&i| stop.is_none_or(|s| (ordinal_key(pods[i]), i) < s))
                    .collect();
                removed.sort_by_key(|&i| (ordinal_key(pods[i]), i));
                removed
            }
            TargetKind::Deployment => {
                let class = |i: usize| deletion_key(pods[i]).class;
                let stop = blocked.map(class).min();
                let mut removed: Vec<usize> = removable
                    .into_iter()
                    .filter(|&i| stop.is_none_or(|s| class(i) < s))
                    .collect();
                let order = by_deletion_order(pods);
                removed.sort_unstable_by(|&a, &b| order(a, b));
                removed
            }
        }
    };
    let still_draining = since.iter().filter(|s| s.is_some()).count() - removed.len();
    let replicas = if plan.rollout {
        // The rollout's surge pods are not in the count: planning from pods would raise it
        // with every pod the surge adds. Hold it, or raise it for load.
        (desired_n + still_draining).max(seen.replicas as usize)
    } else {
        desired_n + still_draining
    };
    plan.replicas = u32::try_from(replicas).unwrap_or(u32::MAX);
    let mut is_removed = vec![false; pods.len()];
    for &i in &removed {
        is_removed[i] = true;
    }

    // Empty slots need no drain marks, removals or events.
    for &i in victims.iter().filter(|&&i| i < real) {
        if policy.drains() && !is_removed[i] {
            plan.start.push(pods[i].name.clone());
            plan.events.push(Event {
                reason: EventReason::DrainStarted,
                message: format!(
                    "draining pod {} ({}) to scale in to {desired} serving replicas",
                    pods[i].name,
                    Sessions(pods[i].sessions())
                ),
            });
        }
    }
    for &i in removed.iter().filter(|&&i| i < real) {
        let cause = causes[i].unwrap_or(RemovalCause::Undrained);
        plan.remove.push(Removal {
            pod: pods[i].name.clone(),
            cause,
        });
        let message = match cause {
            RemovalCause::Drained => Some((
                EventReason::DrainCompleted,
                format!("pod {} drained; removing it", pods[i].name),
            )),
            RemovalCause::Lost => Some((
                EventReason::InstanceLost,
                format!(
                    "pod {} sent no heartbeat while draining and Kubernetes has reported it not Ready as long: it is Lost; removing it",
                    pods[i].name
                ),
            )),
            RemovalCause::TimedOut => Some((
                EventReason::DrainTimedOut,
                format!(
                    "pod {} still held {} sessions after the drain timeout; removing it (onTimeout: Remove)",
                    pods[i].name,
                    sessions_since(pods[i], since[i].unwrap_or(now))
                        .map_or("unknown".to_owned(), |s| s.to_string())
                ),
            )),
            RemovalCause::Undrained => None,
        };
        if let Some((reason, message)) = message {
            plan.events.push(Event { reason, message });
        }
    }
    if policy.drains() {
        for i in (0..pods.len()).filter(|&i| ok(i) && !is_removed[i]) {
            plan.blocked = true;
            // The StatefulSet controller ignores deletion costs: only ordinals count.
            if i < real
                && kind == TargetKind::Deployment
                && pods[i].deletion_cost != REMOVABLE_DELETION_COST
            {
                plan.mark_removable.push(pods[i].name.clone());
            }
        }
    }

    // 5. Lost pods still serving are replaced, a few at a time, and only while others report.
    if let Some(hb) = &policy.heartbeat {
        let others_report = pods
            .iter()
            .zip(&lost)
            .any(|(p, &l)| !l && p.heartbeat.is_some_and(|h| now.since(h.at) < hb.timeout));
        let in_flight = seen.instances.iter().filter(|p| p.terminating).count() as u32;
        let budget = hb.max_concurrent_replacements.saturating_sub(in_flight) as usize;
        let serving_lost = (0..pods.len()).filter(|&i| lost[i] && since[i].is_none());
        for i in serving_lost {
            let replace =
                hb.on_lost == OnLost::Replace && others_report && plan.replace.len() < budget;
            let what = if replace {
                plan.replace.push(pods[i].name.clone());
                "replacing it".to_owned()
            } else if hb.on_lost == OnLost::Keep {
                "keeping it (onLost: Keep)".to_owned()
            } else if !others_report {
                "not replacing it while no instance reports".to_owned()
            } else {
                "waiting to replace it".to_owned()
            };
            plan.events.push(Event {
                reason: EventReason::InstanceLost,
                message: format!(
                    "pod {} sent no heartbeat and was not Ready for {}s: it is Lost; {what}",
                    pods[i].name,
                    hb.timeout.as_secs()
                ),
            });
        }
    }
    plan
}
