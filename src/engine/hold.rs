//! Holding back the likely next victims of a scale-in (`spec.drain.holdBack`): while the other
//! serving pods could hold every session under a per-pod ceiling, the emptiest pods (a
//! StatefulSet's highest ordinals) stop taking new sessions, so that they empty before a
//! scale-in picks them and their drains are short. A held-back pod is not draining: it keeps
//! its sessions, counts as a replica and is removed only through a drain. Pure, no I/O.

use std::cmp::{Ordering, Reverse};
use std::collections::BTreeSet;

use crate::api::TargetKind;
use crate::engine::drain::{DrainPlan, Liveness};
use crate::engine::{Event, EventReason, Instance, Phase, Time};
use crate::policy::{HoldBack, Policy};

/// The hold-back part of a plan: pods to hold back and to release, and how many are held
/// back after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holds {
    pub hold: Vec<String>,
    pub release: Vec<String>,
    pub held: u32,
    pub events: Vec<Event>,
}

/// Why every held-back pod serves again, if it must.
fn release_all_because(
    policy: &Policy,
    live: &Liveness,
    plan: &DrainPlan,
    desired: u32,
    current: u32,
) -> Option<&'static str> {
    if policy.drain.hold_back.is_none() || policy.heartbeat.is_none() {
        Some("the policy no longer holds pods back")
    } else if desired > current || !plan.cancel.is_empty() {
        Some("load is back, and held-back pods serve before any pod is added")
    } else if live.outage.is_some() {
        Some("most instances are silent, so their sessions cannot be known")
    } else if plan.rollout {
        Some("a rollout is in progress")
    } else {
        None
    }
}

/// Decides the held-back set after the drain plan: which serving pods to hold back and which
/// to release. `current` and `desired` are the serving counts before and after the decision;
/// held-back pods are among them.
pub fn plan(
    policy: &Policy,
    pods: &[&Instance],
    live: &Liveness,
    plan: &DrainPlan,
    desired: u32,
    current: u32,
    now: Time,
) -> Holds {
    let names = |v: &[String]| -> BTreeSet<String> { v.iter().cloned().collect() };
    let (start, cancel) = (names(&plan.start), names(&plan.cancel));
    let removed: BTreeSet<&str> = plan.remove.iter().map(|r| r.pod.as_str()).collect();
    // Serving after the plan: not draining (or its drain cancelled now), not removed now.
    let serving: Vec<bool> = pods
        .iter()
        .map(|p| {
            let draining = (p.draining_since.is_some() && !cancel.contains(&p.name))
                || start.contains(&p.name);
            !draining && !removed.contains(p.name.as_str())
        })
        .collect();
    let marked: Vec<usize> = (0..pods.len())
        .filter(|&i| serving[i] && pods[i].held_back)
        .collect();
    let mut holds = Holds::default();

    let settings = policy
        .drain
        .hold_back
        .filter(|_| policy.heartbeat.is_some());
    let reason = release_all_because(policy, live, plan, desired, current);
    let (Some(settings), None) = (settings, reason) else {
        let why = reason.unwrap_or_default();
        for &i in &marked {
            release(&mut holds, pods[i], why);
        }
        return holds;
    };

    // Spare capacity comes only from pods whose count is known now: reported within the
    // heartbeat timeout, Running and Ready. A Silent pod, or one that has not reported (to
    // this leader) yet, may hold anything.
    let timeout = policy.heartbeat.as_ref().map(|hb| hb.timeout);
    let eligible = |i: usize| {
        let p = pods[i];
        serving[i]
            && p.phase == Phase::Running
            && p.ready
            && !live.silent[i]
            && p.heartbeat
                .zip(timeout)
                .is_some_and(|(h, t)| now.since(h.at) < t)
    };
    let ceiling = settings.session_ceiling;
    // Every session on a serving pod must fit; a pod of unknown count counts as full.
    let demand: u64 = (0..pods.len())
        .filter(|&i| serving[i])
        .map(|i| pods[i].sessions().unwrap_or(ceiling))
        .fold(0, u64::saturating_add);
    let capable = (0..pods.len()).filter(|&i| eligible(i)).count() as u64;
    // The others hold every session under the ceiling with `k` pods held back.
    let fits = |k: u64, ceiling: u64| k < capable && demand <= ceiling.saturating_mul(capable - k);

    let order = likely_victims_first(policy.target.kind, pods);
    let mut kept: Vec<usize> = marked.iter().copied().filter(|&i| eligible(i)).collect();
    kept.sort_by(&order);
    for &i in marked.iter().filter(|&&i| !eligible(i)) {
        release(
            &mut holds,
            pods[i],
            "its session count is not known now (no heartbeat within the timeout, or not Ready)",
        );
    }
    // Keep while the others stay under the ceiling; release the fullest first.
    let max = u64::from(settings.max_pods);
    let mut k = (kept.len() as u64).min(max);
    while k > 0 && !fits(k, ceiling) {
        k -= 1;
    }
    for &i in &kept[usize::try_from(k).unwrap_or(usize::MAX).min(kept.len())..] {
        release(
            &mut holds,
            pods[i],
            "the other serving pods would hold more sessions each than the ceiling",
        );
    }
    kept.truncate(usize::try_from(k).unwrap_or(usize::MAX));
    // Hold more only with room to spare under the ceiling.
    let entry = entry_ceiling(settings);
    let mut candidates: Vec<usize> = (0..pods.len())
        .filter(|&i| eligible(i) && !pods[i].held_back)
        .collect();
    candidates.sort_by(&order);
    for i in candidates {
        if k >= max || !fits(k + 1, entry) {
            break;
        }
        k += 1;
        kept.push(i);
        holds.hold.push(pods[i].name.clone());
        holds.events.push(Event {
            reason: EventReason::HeldBack,
            message: format!(
                "holding back pod {} ({} sessions) as a likely next victim: the other {} serving pods can hold all {demand} sessions under {ceiling} each",
                pods[i].name,
                pods[i].sessions().unwrap_or(0),
                capable - k
            ),
        });
    }
    holds.held = u32::try_from(kept.len()).unwrap_or(u32::MAX);
    holds
}

/// How far under the ceiling the others must stay for one more pod to be held back: a count
/// hovering at the ceiling then does not hold and release a pod at every decision. On the
/// session traces (examples/traces/README.md) 5% halves the releases for the ceiling against
/// none, for about half a percent of replica-seconds; 10% costs 3%.
pub const ENTRY_BAND: f64 = 0.05;

/// The per-pod count under which one more pod is held back: `ENTRY_BAND` under the ceiling,
/// at least one session under it.
fn entry_ceiling(settings: HoldBack) -> u64 {
    let ceiling = settings.session_ceiling;
    let band = ((ceiling as f64) * ENTRY_BAND).ceil() as u64;
    ceiling.saturating_sub(band.max(1))
}

fn release(holds: &mut Holds, pod: &Instance, why: &str) {
    holds.release.push(pod.name.clone());
    holds.events.push(Event {
        reason: EventReason::HoldReleased,
        message: format!("pod {} takes new sessions again: {why}", pod.name),
    });
}

/// Orders pods by how soon a scale-in would pick them: a StatefulSet's highest ordinals; a
/// Deployment's emptiest pods, then in its deletion order.
fn likely_victims_first<'a>(
    kind: TargetKind,
    pods: &'a [&Instance],
) -> impl Fn(&usize, &usize) -> Ordering + 'a {
    move |&a, &b| match kind {
        TargetKind::StatefulSet => Reverse(pods[a].ordinal)
            .cmp(&Reverse(pods[b].ordinal))
            .then(a.cmp(&b)),
        TargetKind::Deployment => pods[a]
            .sessions()
            .cmp(&pods[b].sessions())
            .then_with(|| crate::engine::drain::by_deletion_order(pods)(a, b)),
    }
}
