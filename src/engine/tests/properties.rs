//! Property tests for the invariants of DESIGN.md §7 over random policies, observations,
//! histories and times:
//! (a) counts stay within `[minReplicas, maxReplicas]` plus draining pods, and an
//!     out-of-range start only moves inward;
//! (b) no pod holding (or possibly holding) sessions is removed, made removable or deleted by
//!     the workload before its drain completed, it was Lost, or its drain timed out with
//!     `onTimeout: Remove`;
//! (c) failing metrics never lower the serving count, except through the fallback;
//! (d) a decision is stable when run again over its own history.
//!
//! The removable rule is restated here from DESIGN.md §3 rather than taken from the engine,
//! and the workload's deletion is simulated from the written `replicas` by the ReplicaSet's
//! own ranking, which may not yet have seen the deletion costs written with it.

use std::collections::{BTreeMap, BTreeSet};

use proptest::collection::vec;
use proptest::strategy::{Just, Strategy};
use proptest::test_runner::{Config, FileFailurePersistence};
use proptest::{
    bool as pbool, option, prop_assert, prop_assert_eq, prop_compose, prop_oneof, proptest, sample,
};

use crate::api::{OnLost, OnTimeout, RuleType, SelectPolicy, TargetKind};
use crate::engine::drain::{CANCEL_PROPAGATION, REMOVABLE_DELETION_COST};
use crate::engine::{
    CancelledDrain, Decision, DrainPlan, Heartbeat, History, Instance, Mode, Observation, Phase,
    Reading, Recommendation, Removal, RemovalCause, ScaleEvent, Time, decide, next_history,
};
use crate::policy::{
    Behavior, Drain, Fallback, Heartbeat as HeartbeatPolicy, HeartbeatSource, HoldBack, Metric,
    MetricTarget, Policy, RatePolicy, Rules, Source, Target, default_behavior,
};
use crate::testing::{NOW, ago, observation, pod, policy, secs};

fn arb_rules() -> impl Strategy<Value = Rules> {
    let rate = (
        pbool::ANY,
        1u32..5,
        10u32..200,
        sample::select(vec![15u64, 60, 300]),
    )
        .prop_map(|(pods, n, pct, period)| RatePolicy {
            kind: if pods {
                RuleType::Pods
            } else {
                RuleType::Percent
            },
            value: if pods { n } else { pct },
            period: secs(period),
        });
    let select = prop_oneof![
        3 => Just(SelectPolicy::Max),
        1 => Just(SelectPolicy::Min),
        1 => Just(SelectPolicy::Disabled),
    ];
    (
        sample::select(vec![0u64, 0, 30, 300]),
        select,
        vec(rate, 1..3),
    )
        .prop_map(|(window, select, policies)| Rules {
            stabilization_window: secs(window),
            select,
            policies,
        })
}

fn arb_behavior() -> impl Strategy<Value = Behavior> {
    prop_oneof![
        Just(default_behavior()),
        (arb_rules(), arb_rules()).prop_map(|(scale_up, scale_down)| Behavior {
            scale_up,
            scale_down
        }),
    ]
}

/// Metric kinds: 0 Prometheus AverageValue, 1 Prometheus Value, 2 sessions (AverageValue;
/// Prometheus AverageValue when the policy has no heartbeats).
fn arb_metric() -> impl Strategy<Value = (u8, f64, f64)> {
    (
        prop_oneof![2 => Just(0u8), 1 => Just(1), 1 => Just(2)],
        sample::select(vec![10.0, 50.0, 100.0, 200.0]),
        sample::select(vec![0.0, 0.0, 5.0, 50.0]),
    )
}

prop_compose! {
    fn arb_policy()(
        statefulset in pbool::weighted(0.3),
        min in 0u32..4,
        span in 0u32..8,
        tolerance in sample::select(vec![0.0, 0.1]),
        metrics in vec(arb_metric(), 1..=3),
        heartbeat in option::weighted(0.7, (10u64..120, pbool::ANY, 1u32..3)),
        drain_timeout in sample::select(vec![0u64, 30, 300, 1800]),
        remove_on_timeout in pbool::ANY,
        behavior in arb_behavior(),
        fallback in option::weighted(0.4, (1u32..4, 0u32..100)),
        paused in pbool::weighted(0.1),
        dry_run in pbool::weighted(0.1),
        hold_back in option::weighted(0.4, (1u32..4, sample::select(vec![5u64, 20, 95]))),
    ) -> Policy {
        let max = min.max(1) + span;
        // Valid only with heartbeats and with fewer pods than maxReplicas.
        let hold_back = hold_back
            .filter(|&(pods, _)| heartbeat.is_some() && pods < max)
            .map(|(max_pods, session_ceiling)| HoldBack { max_pods, session_ceiling });
        let heartbeat = heartbeat.map(|(timeout, replace, n)| HeartbeatPolicy {
            source: HeartbeatSource::Push,
            timeout: secs(timeout),
            on_lost: if replace { OnLost::Replace } else { OnLost::Keep },
            max_concurrent_replacements: n,
        });
        let metrics = metrics
            .into_iter()
            .enumerate()
            .map(|(i, (kind, target, activation))| {
                let name = format!("m{i}");
                let (source, target) = match kind {
                    2 if heartbeat.is_some() => (Source::Sessions, MetricTarget::AverageValue(target)),
                    1 => (Source::Prometheus { query: name.clone() }, MetricTarget::Value(target)),
                    _ => (Source::Prometheus { query: name.clone() }, MetricTarget::AverageValue(target)),
                };
                Metric { name, source, target, activation }
            })
            .collect();
        Policy {
            target: Target {
                kind: if statefulset { TargetKind::StatefulSet } else { TargetKind::Deployment },
                name: "app".to_owned(),
            },
            min_replicas: min,
            max_replicas: max,
            interval: secs(15),
            tolerance,
            metrics,
            heartbeat,
            drain: Drain {
                timeout: secs(drain_timeout),
                on_timeout: if remove_on_timeout { OnTimeout::Remove } else { OnTimeout::Keep },
                hold_back,
            },
            behavior,
            fallback: fallback.map(|(failure_threshold, pick)| Fallback {
                failure_threshold,
                replicas: min + pick % (max - min + 1),
            }),
            prometheus: None,
            paused,
            dry_run,
        }
    }
}

prop_compose! {
    /// A pod without name or ordinal: random scheduling, phase, readiness, deletion cost,
    /// drain, heartbeat (before or after the drain began, sessions zero or not, or none), and
    /// now and then of a second ReplicaSet.
    fn arb_pod()(
        scheduled in pbool::weighted(0.9),
        phase in prop_oneof![1 => Just(Phase::Pending), 1 => Just(Phase::Unknown), 6 => Just(Phase::Running)],
        started in 0u64..7200,
        ready in pbool::weighted(0.75),
        restarts in 0u32..3,
        terminating in pbool::weighted(0.1),
        cost in sample::select(vec![0, 0, 0, -5, 5, REMOVABLE_DELETION_COST]),
        draining in option::weighted(0.35, 0u64..3600),
        heartbeat in option::weighted(0.8, (0u64..600, prop_oneof![2 => Just(0u64), 3 => 1u64..20], pbool::ANY)),
        not_ready_for in option::weighted(0.8, 0u64..600),
        cancelled in option::weighted(0.2, (0u64..900, 0u64..300)),
        created in 0u64..7200,
        // Now and then a pod of a second ReplicaSet: a rollout.
        new_replica_set in pbool::weighted(0.05),
        held_back in pbool::weighted(0.15),
    ) -> Instance {
        let phase = if scheduled { phase } else { Phase::Pending };
        let started = (phase != Phase::Pending).then(|| ago(started));
        let ready = phase == Phase::Running && ready;
        Instance {
            name: String::new(),
            created: ago(created),
            scheduled,
            phase,
            ready,
            not_ready_since: not_ready_for.filter(|_| !ready).map(ago),
            cancelled_drain: cancelled.map(|(from, lasted)| CancelledDrain {
                from: ago(from),
                at: ago(from.saturating_sub(lasted)),
            }),
            started,
            restarts,
            terminating,
            deletion_cost: cost,
            ordinal: None,
            draining_since: draining.map(ago),
            held_back,
            owner: Some(if new_replica_set { "chat-new" } else { "chat-old" }.to_owned()),
            // A pod that never ran has never heartbeated.
            heartbeat: heartbeat
                .filter(|_| started.is_some())
                .map(|(at, sessions, draining)| Heartbeat { at: ago(at), sessions, draining }),
        }
    }
}

fn arb_reading() -> impl Strategy<Value = Option<Reading>> {
    prop_oneof![
        6 => (0u32..3000).prop_map(|v| Some(Reading::Value(f64::from(v)))),
        1 => Just(Some(Reading::Unavailable { reason: "timeout".to_owned() })),
        1 => Just(Some(Reading::Pending { reason: "waiting".to_owned() })),
        1 => Just(None),
    ]
}

prop_compose! {
    /// Pods in slots: a missing slot is a pod being created (a Deployment's count is above
    /// its pods) or a StatefulSet ordinal being replaced. Every pod has an ordinal below
    /// `spec.replicas`.
    fn arb_observation()(
        slots in vec(option::weighted(0.85, arb_pod()), 0..10),
        readings in vec(arb_reading(), 3),
        heartbeats_since in prop_oneof![Just(86_400u64), 0u64..300],
        ordinals_start in prop_oneof![3 => Just(0u32), 1 => 1u32..20],
        // Now and then more live pods than spec.replicas (a scale-in the workload has not
        // carried out yet, or pods outside the count).
        surplus in prop_oneof![4 => Just(0usize), 1 => 1usize..3],
    ) -> Observation {
        let mut instances = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            if let Some(p) = slot {
                let ordinal = ordinals_start + u32::try_from(i).unwrap_or(u32::MAX);
                instances.push(Instance {
                    name: format!("pod-{i}"),
                    ordinal: Some(ordinal),
                    ..p.clone()
                });
            }
        }
        let readings = readings
            .into_iter()
            .enumerate()
            .filter_map(|(i, r)| r.map(|r| (format!("m{i}"), r)))
            .collect();
        Observation {
            replicas: u32::try_from(slots.len().saturating_sub(surplus)).unwrap_or(u32::MAX),
            readings,
            instances,
            heartbeats_since: ago(heartbeats_since),
            ordinals_start,
        }
    }
}

prop_compose! {
    fn arb_history()(
        recs in vec((0u64..900, 0u32..16), 0..20),
        events in vec((0u64..900, 0u32..16, 0u32..16), 0..6),
        consecutive_failures in 0u32..5,
        latest_known in pbool::ANY,
    ) -> History {
        let mut recommendations: Vec<Recommendation> = recs
            .into_iter()
            .map(|(t, replicas)| Recommendation { time: ago(t), replicas })
            .collect();
        recommendations.sort_by_key(|r| r.time);
        let mut scale_events: Vec<ScaleEvent> = events
            .into_iter()
            .map(|(t, from, to)| ScaleEvent { time: ago(t), from, to })
            .collect();
        scale_events.sort_by_key(|e| e.time);
        let latest_made = if latest_known { recommendations.last().map(|r| r.time) } else { None };
        History { recommendations, latest_made, scale_events, consecutive_failures }
    }
}

/// DESIGN.md §3.3 and §3.5: may a draining pod go?
fn may_go(policy: &Policy, seen: &Observation, pod: &Instance, since: Time, now: Time) -> bool {
    if !policy.drains() || pod.started.is_none() {
        // The HPA's scale-in; or a pod that never ran and holds nothing.
        return true;
    }
    let lost = lost(policy, seen, pod, now);
    // Only a count taken while the pod knew of this drain: a zero sent before it was told may
    // have crossed the drain mark while the pod still took sessions.
    let reported_empty = policy.heartbeat.is_some()
        && pod
            .heartbeat
            .is_some_and(|h| h.draining && h.at > since && h.sessions == 0);
    let timed_out = now.since(since) >= policy.drain.timeout
        && (policy.drain.on_timeout == OnTimeout::Remove || policy.heartbeat.is_none());
    lost || reported_empty || timed_out
}

/// DESIGN.md §4: no heartbeat for one timeout, counted from the pod's start and from when
/// heartbeats began to be collected. Silence is not zero.
fn silent(policy: &Policy, seen: &Observation, pod: &Instance, now: Time) -> bool {
    policy.heartbeat.as_ref().is_some_and(|hb| {
        let heard = pod.heartbeat.map(|h| h.at);
        let last = [heard, pod.started, Some(seen.heartbeats_since)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(seen.heartbeats_since);
        pod.started.is_some() && pod.phase != Phase::Pending && now.since(last) >= hb.timeout
    })
}

/// DESIGN.md §4: Lost is Silent corroborated by Kubernetes (not Ready for one timeout too),
/// and never while most of the policy's pods are Silent at once (of those Silent or reporting
/// within the timeout: a pod too new to be due tells nothing).
fn lost(policy: &Policy, seen: &Observation, pod: &Instance, now: Time) -> bool {
    let Some(hb) = &policy.heartbeat else {
        return false;
    };
    // Terminating pods, and StatefulSet pods past spec.replicas, are leaving.
    let live: Vec<&Instance> = seen
        .instances
        .iter()
        .filter(|p| !p.terminating && fills_a_slot(policy, seen, p))
        .collect();
    let quiet = live.iter().filter(|p| silent(policy, seen, p, now)).count();
    let reporting = live
        .iter()
        .filter(|p| !silent(policy, seen, p, now))
        .filter(|p| p.heartbeat.is_some_and(|h| now.since(h.at) < hb.timeout))
        .count();
    let broad = quiet > reporting;
    // An app may fail readiness on purpose once it drains: that corroborates nothing.
    let not_ready_long = !pod.ready
        && pod.not_ready_since.is_some_and(|t| {
            now.since(t) >= hb.timeout
                && pod.draining_since.is_none_or(|d| t < d.minus(hb.timeout))
                // Nor while it may have believed in a drain since cancelled.
                && pod.cancelled_drain.is_none_or(|c| {
                    t < c.from.minus(hb.timeout)
                        || t > c.at.plus(hb.timeout).plus(CANCEL_PROPAGATION)
                })
        });
    silent(policy, seen, pod, now) && not_ready_long && !broad
}

/// The pods after the decision is carried out, before the workload acts on `replicas`. Their
/// deletion costs are those written (see `written_cost`); whether the workload has seen them
/// yet is `deletable`'s concern.
fn applied(seen: &Observation, d: &Decision, now: Time) -> Vec<Instance> {
    let started: BTreeSet<&str> = d.plan.start.iter().map(String::as_str).collect();
    let cancelled: BTreeSet<&str> = d.plan.cancel.iter().map(String::as_str).collect();
    let removed: BTreeSet<&str> = d.plan.remove.iter().map(|r| r.pod.as_str()).collect();
    seen.instances
        .iter()
        .filter(|p| !p.terminating)
        .map(|p| {
            let mut p = p.clone();
            // A victim removed at once never carries a mark, but its drain began now.
            let chosen_and_removed =
                removed.contains(p.name.as_str()) && p.draining_since.is_none();
            if started.contains(p.name.as_str()) || chosen_and_removed {
                p.draining_since = Some(now);
            }
            if cancelled.contains(p.name.as_str()) {
                p.draining_since = None;
            }
            if d.plan.hold.contains(&p.name) {
                p.held_back = true;
            }
            // A drain's marks replace a hold's (the controller's drain patch clears it).
            if d.plan.release.contains(&p.name) || p.draining_since.is_some() {
                p.held_back = false;
            }
            p.deletion_cost = written_cost(&p, d);
            p
        })
        .collect()
}

/// A pod's deletion cost once the decision's patches land: the lowest on the pods the plan
/// marks or removes (the controller marks both), none on a cancelled pod that drainscaler had
/// marked.
fn written_cost(p: &Instance, d: &Decision) -> i32 {
    let marked = d.plan.mark_removable.contains(&p.name);
    let removed = d.plan.remove.iter().any(|r| r.pod == p.name);
    let cancelled = d.plan.cancel.contains(&p.name);
    if marked || removed {
        REMOVABLE_DELETION_COST
    } else if cancelled && p.deletion_cost == REMOVABLE_DELETION_COST {
        0
    } else {
        p.deletion_cost
    }
}

/// The ReplicaSet controller's scale-down ranking (`ActivePodsWithRanks.Less` in Kubernetes'
/// pkg/controller/controller_utils.go), its rules 1 to 4 in its order: unassigned before
/// assigned, then Pending before Unknown before Running, then not ready before ready, then the
/// lower `controller.kubernetes.io/pod-deletion-cost`. Its later rules (pods doubled up on a
/// node, time since ready, restarts, age) are left out: pods equal up to here go in any order.
fn rank(p: &Instance, deletion_cost: i32) -> (bool, Phase, bool, i32) {
    (p.scheduled, p.phase, p.ready, deletion_cost)
}

/// Whether a pod counts towards `spec.replicas`: for a StatefulSet, only ordinals in
/// `[start, start + replicas)`.
fn fills_a_slot(policy: &Policy, seen: &Observation, p: &Instance) -> bool {
    let start = u64::from(seen.ordinals_start);
    policy.target.kind == TargetKind::Deployment
        || p.ordinal
            .is_none_or(|o| (start..start + u64::from(seen.replicas)).contains(&u64::from(o)))
}

/// Every pod the workload might delete once `replicas` is written, ranking each pod by either
/// of the two deletion costs `costs` gives it: the controller patches costs just before the
/// count, but the ReplicaSet controller learns of pods and of its count through separate
/// watches, so it may rank by the new count with none, some or all of the new costs. A pod may
/// go unless at least the excess rank before it whichever costs are seen.
fn deletable<'a>(
    kind: TargetKind,
    seen: &Observation,
    pods: &'a [Instance],
    replicas: u32,
    costs: impl Fn(&Instance) -> [i32; 2],
) -> Vec<&'a Instance> {
    match kind {
        TargetKind::StatefulSet => pods
            .iter()
            .filter(|p| {
                u64::from(p.ordinal.unwrap_or(u32::MAX))
                    >= u64::from(seen.ordinals_start) + u64::from(replicas)
            })
            .collect(),
        TargetKind::Deployment => {
            let excess = pods.len().saturating_sub(replicas as usize);
            // Each pod's place at its earliest and at its latest.
            let earliest = |p: &Instance| {
                let [a, b] = costs(p);
                rank(p, a.min(b))
            };
            let latest = |p: &Instance| {
                let [a, b] = costs(p);
                rank(p, a.max(b))
            };
            pods.iter()
                .filter(|p| {
                    let before = pods.iter().filter(|q| latest(q) < earliest(p)).count();
                    before < excess
                })
                .collect()
        }
    }
}

fn check_safety(policy: &Policy, seen: &Observation, d: &Decision) -> Result<(), String> {
    let now = NOW;
    let pods: BTreeMap<&str, &Instance> = seen
        .instances
        .iter()
        .filter(|p| !p.terminating)
        .map(|p| (p.name.as_str(), p))
        .collect();
    let after = applied(seen, d, now);
    let after_by_name: BTreeMap<&str, &Instance> =
        after.iter().map(|p| (p.name.as_str(), p)).collect();
    let judge = |name: &str, what: &str| -> Result<(), String> {
        if !policy.drains() {
            // The HPA's scale-in: the policy asked for no drain at all.
            return Ok(());
        }
        let p = after_by_name
            .get(name)
            .ok_or_else(|| format!("{what} names {name}, which is not a live pod"))?;
        let since = p
            .draining_since
            .ok_or_else(|| format!("{what} names {name}, which is not draining"))?;
        if may_go(policy, seen, p, since, now) {
            Ok(())
        } else {
            Err(format!(
                "{what} names {name}, which may still hold sessions: {p:?}"
            ))
        }
    };
    for r in &d.plan.remove {
        judge(&r.pod, "plan.remove")?;
    }
    for name in &d.plan.mark_removable {
        judge(name, "plan.mark_removable")?;
    }
    for name in &d.plan.replace {
        let p = pods
            .get(name.as_str())
            .ok_or(format!("replace names unknown {name}"))?;
        let replaces = policy
            .heartbeat
            .as_ref()
            .is_some_and(|h| h.on_lost == OnLost::Replace);
        if !replaces || p.draining_since.is_some() || !lost(policy, seen, p, now) {
            return Err(format!(
                "replaces {name}, which is not a serving lost pod: {p:?}"
            ));
        }
    }
    if policy.drains() && d.mode != Mode::Paused {
        // What the workload deletes because of this write: pods beyond `spec.replicas` already
        // go, ranked by the costs they had, whatever drainscaler writes.
        let observed = |p: &Instance| {
            pods.get(p.name.as_str())
                .map_or(p.deletion_cost, |o| o.deletion_cost)
        };
        let anyway: BTreeSet<&str> =
            deletable(policy.target.kind, seen, &after, seen.replicas, |p| {
                [observed(p); 2]
            })
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let either = |p: &Instance| [observed(p), p.deletion_cost];
        for p in deletable(policy.target.kind, seen, &after, d.replicas, either) {
            if !anyway.contains(p.name.as_str()) {
                judge(&p.name, &format!("writing replicas {}", d.replicas))?;
            }
        }
    }
    Ok(())
}

/// 512 cases keep the suite fast; `PROPTEST_CASES=100000` searches harder.
fn config() -> Config {
    let base = Config::default();
    let deep = std::env::var_os("PROPTEST_CASES").is_some();
    Config {
        cases: if deep { base.cases } else { 512 },
        // A failing case is saved beside this file (proptest-regressions/) and replayed first
        // on every run once committed.
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    /// Invariant 2.
    #[test]
    fn counts_stay_within_min_and_max_plus_draining_pods(
        policy in arb_policy(), seen in arb_observation(), history in arb_history()
    ) {
        let d = decide(&policy, &seen, &history, NOW);
        let (min, max) = (policy.min_replicas, policy.max_replicas);
        if policy.paused {
            prop_assert_eq!(d.desired, d.current);
            prop_assert_eq!(d.replicas, seen.replicas);
            return Ok(());
        }
        let (low, high) = if d.current > max {
            (max, d.current)
        } else if d.current < min {
            (d.current, min)
        } else {
            (min, max)
        };
        prop_assert!(
            (low..=high).contains(&d.desired),
            "desired {} outside [{}, {}] from {}", d.desired, low, high, d.current
        );
        // Pods still draining after the plan that the count keeps: a StatefulSet pod past
        // spec.replicas is leaving and kept by none. A pod missing from the count (being
        // created, or an ordinal being replaced) is no reason for a higher count.
        let after = applied(&seen, &d, NOW);
        let removed: BTreeSet<&str> = d.plan.remove.iter().map(|r| r.pod.as_str()).collect();
        let draining: Vec<&Instance> = after
            .iter()
            .filter(|p| p.draining_since.is_some() && !removed.contains(p.name.as_str()))
            .filter(|p| fills_a_slot(&policy, &seen, p))
            .collect();
        let slack = u32::try_from(draining.len()).unwrap_or(u32::MAX);
        prop_assert!(d.replicas >= d.desired, "replicas {} below desired {}", d.replicas, d.desired);
        let held = if d.plan.rollout {
            // A rollout holds the count where it is (scale-in waits for it to end).
            seen.replicas
        } else if policy.target.kind == TargetKind::StatefulSet {
            // A StatefulSet keeps every ordinal below a draining pod it keeps, with a pod or
            // without one.
            draining
                .iter()
                .filter_map(|p| p.ordinal)
                .map(|o| o.saturating_sub(seen.ordinals_start) + 1)
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        prop_assert!(
            d.replicas <= (d.desired + slack).max(held),
            "replicas {} above desired {} plus {} draining (held at {})",
            d.replicas, d.desired, slack, held
        );
        if d.plan.rollout {
            prop_assert!(d.plan.start.is_empty(), "drains started in a rollout: {:?}", d.plan.start);
            prop_assert!(d.plan.remove.is_empty(), "removed in a rollout: {:?}", d.plan.remove);
        }
    }

    /// Invariant 1, for every list in the plan and for what the workload deletes.
    #[test]
    fn no_pod_that_may_hold_sessions_is_removed_before_its_drain_ends(
        policy in arb_policy(), seen in arb_observation(), history in arb_history()
    ) {
        let d = decide(&policy, &seen, &history, NOW);
        if let Err(why) = check_safety(&policy, &seen, &d) {
            return Err(proptest::test_runner::TestCaseError::fail(format!("{why}\n{d:#?}")));
        }
    }

    /// Invariant 3.
    #[test]
    fn failing_metrics_never_lower_the_serving_count_except_through_the_fallback(
        policy in arb_policy(), seen in arb_observation(), history in arb_history()
    ) {
        let d = decide(&policy, &seen, &history, NOW);
        if !d.metrics_failed || policy.paused {
            return Ok(());
        }
        let (min, max) = (policy.min_replicas, policy.max_replicas);
        let in_range = (min..=max).contains(&d.current);
        match (d.fallback_active, policy.fallback) {
            (true, Some(f)) if in_range => prop_assert_eq!(d.desired, f.replicas),
            (true, _) => prop_assert!(d.current > max || d.desired >= d.current),
            (false, _) => {
                prop_assert!(d.current > max || d.desired >= d.current,
                    "desired {} below current {}", d.desired, d.current);
                // With more pods than spec.replicas the workload is removing some already.
                let surplus = seen.instances.iter().filter(|p| !p.terminating).count()
                    > seen.replicas as usize;
                if d.desired >= d.current && !surplus {
                    prop_assert!(d.plan.start.is_empty(), "drains started: {:?}", d.plan.start);
                }
            }
        }
    }

    /// (d) Same observation, own history: the same decision, where no scale event was
    /// recorded (a recorded event belongs with an observation in which it happened).
    #[test]
    fn a_decision_over_its_own_history_is_the_same_decision(
        policy in arb_policy(), seen in arb_observation(), history in arb_history()
    ) {
        let first = decide(&policy, &seen, &history, NOW);
        if first.metrics_failed || (first.mode == Mode::Act && first.desired != first.current) {
            return Ok(());
        }
        let next = next_history(&policy, &history, &first, NOW);
        let again = decide(&policy, &seen, &next, NOW);
        prop_assert_eq!(again.desired, first.desired);
        prop_assert_eq!(again.replicas, first.replicas);
        prop_assert_eq!(&again.plan, &first.plan);
    }

    /// (d) The decision carried out (drains started and cancelled, removed pods gone, new
    /// pods created) and decided again at once: no reversal, no new drains or cancellations.
    #[test]
    fn a_carried_out_decision_does_not_flap(
        policy in arb_policy(), seen in arb_observation(), history in arb_history()
    ) {
        let average_only = policy.metrics.iter().all(|m| {
            matches!(m.source, Source::Prometheus { .. })
                && matches!(m.target, MetricTarget::AverageValue(_))
        });
        let first = decide(&policy, &seen, &history, NOW);
        let in_range = (policy.min_replicas..=policy.max_replicas).contains(&first.current);
        if !average_only
            || first.metrics_failed
            || first.mode != Mode::Act
            || !in_range
            || policy.target.kind != TargetKind::Deployment
            // A rollout holds scale-in until it ends, so the decision is not carried out.
            || first.plan.rollout
        {
            return Ok(());
        }
        let next = next_history(&policy, &history, &first, NOW);
        let carried = carry_out(&seen, &first, NOW);
        let again = decide(&policy, &carried, &next, NOW);
        prop_assert_eq!(again.current, first.desired);
        prop_assert_eq!(again.desired, first.desired);
        prop_assert!(again.plan.start.is_empty(), "new drains: {:?}", again.plan.start);
        prop_assert!(again.plan.cancel.is_empty(), "cancelled: {:?}", again.plan.cancel);
        prop_assert!(again.plan.hold.is_empty(), "held back again: {:?}", again.plan.hold);
        prop_assert!(again.plan.release.is_empty(), "released: {:?}", again.plan.release);
    }

    /// Holding back: only pods whose count is known now, never more than `maxPods`, never a
    /// pod the plan drains or removes, only while the others hold every session under the
    /// ceiling, and none while the serving count rises. Held-back pods count as serving
    /// replicas: the serving counts are those of the same policy without holdBack.
    #[test]
    fn held_back_pods_are_known_bounded_under_the_ceiling_and_change_no_count(
        policy in arb_policy(), seen in arb_observation(), history in arb_history()
    ) {
        let d = decide(&policy, &seen, &history, NOW);
        let mut plain = policy.clone();
        plain.drain.hold_back = None;
        let p = decide(&plain, &seen, &history, NOW);
        prop_assert_eq!(d.current, p.current);
        prop_assert_eq!(d.desired, p.desired);
        let after = applied(&seen, &d, NOW);
        let removed: BTreeSet<&str> = d.plan.remove.iter().map(|r| r.pod.as_str()).collect();
        let serving: Vec<&Instance> = after
            .iter()
            .filter(|q| q.draining_since.is_none() && !removed.contains(q.name.as_str()))
            .filter(|q| in_range(&policy, &seen, q))
            .collect();
        let held: Vec<&Instance> = serving.iter().copied().filter(|q| q.held_back).collect();
        if policy.paused {
            // Letting go of the target releases held-back pods (the controller's restore).
            prop_assert!(d.plan.hold.is_empty() && d.plan.release.is_empty());
            return Ok(());
        }
        let Some(settings) = policy.drain.hold_back else {
            prop_assert!(d.plan.hold.is_empty(), "held back without holdBack: {:?}", d.plan.hold);
            prop_assert!(held.is_empty(), "still held back without holdBack: {:?}", held);
            return Ok(());
        };
        for name in &d.plan.hold {
            let Some(q) = seen.instances.iter().find(|q| &q.name == name) else {
                return Err(proptest::test_runner::TestCaseError::fail(format!("holds back unknown {name}")));
            };
            prop_assert!(
                q.ready && q.phase == Phase::Running && !q.terminating
                    && q.heartbeat.is_some_and(|h| NOW.since(h.at) < policy.heartbeat.as_ref().map_or(secs(0), |hb| hb.timeout)),
                "held back a pod whose count is not known now: {:?}", q
            );
            prop_assert!(!d.plan.start.contains(name) && !removed.contains(name.as_str()));
        }
        prop_assert!(held.len() as u64 <= u64::from(settings.max_pods), "{} held back", held.len());
        if d.desired > d.current {
            prop_assert!(held.is_empty(), "held back while scaling up: {:?}", held);
        }
        if !held.is_empty() {
            let ceiling = settings.session_ceiling;
            let demand: u64 = serving.iter().map(|q| q.sessions().unwrap_or(ceiling)).sum();
            let hb = policy.heartbeat.as_ref().map_or(secs(0), |hb| hb.timeout);
            let capacity = serving
                .iter()
                .filter(|q| !q.held_back && q.ready && q.phase == Phase::Running)
                .filter(|q| q.heartbeat.is_some_and(|h| NOW.since(h.at) < hb))
                .count() as u64;
            prop_assert!(capacity >= 1, "nothing serves");
            prop_assert!(
                demand <= ceiling * capacity,
                "{} sessions over {} serving pods pass the ceiling {}", demand, capacity, ceiling
            );
        }
    }
}

/// Whether a pod lies within a StatefulSet's ordinal range (always, for a Deployment).
fn in_range(policy: &Policy, seen: &Observation, p: &Instance) -> bool {
    match (policy.target.kind, p.ordinal) {
        (TargetKind::StatefulSet, Some(o)) => {
            let start = u64::from(seen.ordinals_start);
            (start..start + u64::from(seen.replicas)).contains(&u64::from(o))
        }
        _ => true,
    }
}

/// The observation after the controller carried out `d` and the ReplicaSet caught up.
fn carry_out(seen: &Observation, d: &Decision, now: Time) -> Observation {
    let removed: BTreeSet<&str> = d.plan.remove.iter().map(|r| r.pod.as_str()).collect();
    let replaced: BTreeSet<&str> = d.plan.replace.iter().map(String::as_str).collect();
    let mut instances: Vec<Instance> = applied(seen, d, now)
        .into_iter()
        .filter(|p| !removed.contains(p.name.as_str()) && !replaced.contains(p.name.as_str()))
        .collect();
    // Pods beyond the count go, first in the ReplicaSet's ranking, once it has seen the costs.
    instances.sort_by_key(|p| rank(p, p.deletion_cost));
    let excess = instances.len().saturating_sub(d.replicas as usize);
    instances.drain(..excess);
    let missing = (d.replicas as usize).saturating_sub(instances.len());
    instances.extend((0..missing).map(|i| Instance {
        name: format!("new-{i}"),
        created: now,
        scheduled: true,
        phase: Phase::Running,
        ready: true,
        started: Some(now),
        ..Instance::default()
    }));
    Observation {
        replicas: d.replicas,
        readings: seen.readings.clone(),
        instances,
        heartbeats_since: seen.heartbeats_since,
        ordinals_start: seen.ordinals_start,
    }
}

#[test]
fn the_reference_rule_agrees_with_the_engine_on_a_known_case() {
    // Guards the test's own restatement of the rule against drifting into vacuity.
    let policy = policy().heartbeat(secs(30)).build();
    let seen = observation().build();
    let draining = || pod("d").ready().draining_since(ago(60));
    assert!(!may_go(
        &policy,
        &seen,
        &draining().sessions(3).build(),
        ago(60),
        NOW
    ));
    assert!(may_go(
        &policy,
        &seen,
        &draining().sessions(0).build(),
        ago(60),
        NOW
    ));
    // The zero that crossed the drain mark before the pod heard of it.
    let untold = draining().sessions(0).untold().build();
    assert!(!may_go(&policy, &seen, &untold, ago(60), NOW));
}

#[test]
fn the_reference_workload_may_not_have_seen_the_marks_written_with_the_count() {
    // A drained pod and one serving sessions, equal in the ReplicaSet's ranking: a decision
    // that marks the drained pod and lowers the count at once may delete either.
    let policy = policy().heartbeat(secs(30)).build();
    let drained = || pod("drained").ready().draining_since(ago(60)).sessions(0);
    let serving = || pod("serving").ready().sessions(5);
    let seen = observation().pods([drained(), serving()]).build();
    let mut d = decide(&policy, &seen, &History::default(), NOW);
    d.replicas = 1;
    d.plan = DrainPlan {
        replicas: 1,
        mark_removable: vec!["drained".to_owned()],
        remove: vec![Removal {
            pod: "drained".to_owned(),
            cause: RemovalCause::Drained,
        }],
        ..DrainPlan::default()
    };
    assert!(check_safety(&policy, &seen, &d).is_err());
    // Marked in an earlier decision, the drained pod ranks first.
    let marked = drained().cost(REMOVABLE_DELETION_COST);
    let seen = observation().pods([marked, serving()]).build();
    assert_eq!(check_safety(&policy, &seen, &d), Ok(()));
}
