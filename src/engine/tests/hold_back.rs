//! Holding back the likely next victims (`spec.drain.holdBack`): which pods are held back and
//! released, that held-back pods count as replicas and leave only through a drain, and that
//! pods whose count is not known are never spare capacity.

use crate::engine::tests::{events, names, run, sessions, wanting};
use crate::engine::{Decision, EventReason};
use crate::testing::{PodBuilder, PolicyBuilder, ago, history, pod, policy, rules, secs};

/// The `sessions` policy (pushed heartbeats, `rps` alone sets the desired serving count) with
/// up to 2 pods held back under 95 sessions each; one more is held back only under 90
/// (`ENTRY_BAND`, 5% under).
fn holding() -> PolicyBuilder {
    sessions().hold_back(2, 95)
}

fn ready(name: &str, sessions: u64) -> PodBuilder {
    pod(name).ready().sessions(sessions)
}

fn held(name: &str, sessions: u64) -> PodBuilder {
    pod(name).ready().sessions(sessions).held_back()
}

fn decide(serving: u32, pods: Vec<PodBuilder>) -> Decision {
    run(holding(), wanting(serving, pods), history())
}

#[test]
fn the_emptiest_pods_are_held_back_while_the_others_stay_under_the_entry_ceiling() {
    // 280 sessions: with one held back the other 4 hold 70 each (under 90); with two, 93.
    let d = decide(
        5,
        vec![
            ready("a", 80),
            ready("b", 80),
            ready("c", 80),
            ready("d", 30),
            ready("e", 10),
        ],
    );
    assert_eq!(names(&d.plan.hold), ["e"]);
    assert!(d.plan.release.is_empty());
    assert_eq!(d.instances.held_back, 1);
    assert_eq!(d.plan.replicas, 5, "holding back changes no count");
    assert!(d.plan.start.is_empty());
    let said = events(&d, EventReason::HeldBack);
    assert_eq!(said.len(), 1);
    assert!(said[0].contains("pod e (10 sessions)"), "{said:?}");
    assert!(said[0].contains("other 4 serving pods"), "{said:?}");
}

#[test]
fn held_back_pods_stay_held_until_the_others_would_pass_the_ceiling() {
    // 274 sessions over the 3 that serve: 91 each, above the entry ceiling (90) but under the
    // release ceiling (95): both stay held.
    let pods = |d_sessions: u64| {
        vec![
            ready("a", 92),
            ready("b", 92),
            ready("c", 80),
            held("d", d_sessions),
            held("e", 0),
        ]
    };
    let d = decide(5, pods(10));
    assert!(
        d.plan.hold.is_empty() && d.plan.release.is_empty(),
        "{:?}",
        d.plan
    );
    assert_eq!(d.instances.held_back, 2);
    // 294: the 3 would hold 98 each; with one held back, 4 hold 74. The fuller one serves.
    let d = decide(5, pods(30));
    assert_eq!(names(&d.plan.release), ["d"]);
    assert!(d.plan.hold.is_empty());
    assert_eq!(d.instances.held_back, 1);
    let said = events(&d, EventReason::HoldReleased);
    assert!(
        said[0].contains("more sessions each than the ceiling"),
        "{said:?}"
    );
}

#[test]
fn held_back_pods_are_released_before_any_scale_up() {
    let d = decide(
        6,
        vec![
            ready("a", 90),
            ready("b", 90),
            ready("c", 90),
            held("d", 5),
            held("e", 0),
        ],
    );
    assert_eq!(names(&d.plan.release), ["d", "e"]);
    assert!(d.plan.hold.is_empty());
    assert_eq!(d.instances.held_back, 0);
    assert_eq!(d.plan.replicas, 6);
    let said = events(&d, EventReason::HoldReleased);
    assert!(said[0].contains("load is back"), "{said:?}");
}

#[test]
fn held_back_pods_count_as_current_replicas() {
    let d = decide(
        5,
        vec![
            ready("a", 60),
            ready("b", 60),
            ready("c", 60),
            held("d", 5),
            held("e", 0),
        ],
    );
    assert_eq!(d.current, 5);
    assert_eq!(d.desired, 5);
    assert_eq!(d.plan.replicas, 5);
    assert!(d.plan.start.is_empty() && d.plan.remove.is_empty());
}

#[test]
fn a_held_back_pod_is_drained_first_and_not_removed_while_it_may_hold_sessions() {
    // "e" holds more than "c", but it was set aside as the next victim.
    let d = decide(
        4,
        vec![
            ready("a", 60),
            ready("b", 60),
            ready("c", 10),
            ready("d", 60),
            held("e", 20),
        ],
    );
    assert_eq!(names(&d.plan.start), ["e"]);
    assert!(d.plan.remove.is_empty(), "{:?}", d.plan.remove);
    assert_eq!(d.plan.replicas, 5, "the drained pod keeps its place");
    assert!(!d.plan.release.contains(&"e".to_owned()));
    // An empty held-back pod is not removable either: no heartbeat since its drain began says
    // so yet.
    let d = decide(2, vec![ready("a", 60), ready("b", 60), held("e", 0)]);
    assert_eq!(names(&d.plan.start), ["e"]);
    assert!(d.plan.remove.is_empty());
}

#[test]
fn a_silent_pod_is_not_spare_capacity() {
    // 190 sessions. The silent pod (still Ready) reported none, but nothing is known of it
    // now: 4 pods are capacity, so one held back leaves 3 under 90 (63 each), two would leave
    // 2 at 95. Counted as capacity it would have let two be held.
    let pods = vec![
        ready("a", 60),
        ready("b", 60),
        ready("c", 60),
        ready("d", 10),
        pod("s").ready().sessions(0).heartbeat_at(ago(60)),
    ];
    let d = decide(5, pods);
    assert_eq!(names(&d.plan.hold), ["d"]);
    assert_eq!(d.instances.silent, 1);
}

#[test]
fn a_pod_that_has_not_reported_counts_as_full_and_is_never_held() {
    // "n" has run but not reported: it counts as holding the ceiling (95), so 325 sessions
    // over 4 capable pods: one held back leaves 108 each.
    let pods = vec![
        ready("a", 80),
        ready("b", 80),
        ready("c", 70),
        ready("d", 0),
        pod("n").ready(),
    ];
    let d = decide(5, pods);
    assert!(d.plan.hold.is_empty(), "{:?}", d.plan.hold);
}

#[test]
fn a_held_back_pod_that_falls_silent_serves_again() {
    let pods = vec![
        ready("a", 10),
        ready("b", 10),
        ready("c", 10),
        pod("d")
            .ready()
            .sessions(0)
            .heartbeat_at(ago(60))
            .held_back(),
    ];
    let d = decide(4, pods);
    assert_eq!(names(&d.plan.release), ["d"]);
    // The others hold 30 sessions: the emptiest of them is held back instead.
    assert_eq!(d.plan.hold.len(), 2, "{:?}", d.plan.hold);
    assert!(!d.plan.hold.contains(&"d".to_owned()));
}

#[test]
fn at_most_max_pods_are_held_back_and_one_pod_always_serves() {
    let d = decide(3, vec![ready("a", 0), ready("b", 0), ready("c", 0)]);
    assert_eq!(d.plan.hold.len(), 2);
    let one = run(holding(), wanting(1, vec![ready("a", 0)]), history());
    assert!(one.plan.hold.is_empty());
}

#[test]
fn a_statefulset_holds_back_its_highest_ordinals() {
    let d = run(
        holding().statefulset(),
        wanting(
            4,
            vec![
                ready("s-0", 5).ordinal(0),
                ready("s-1", 80).ordinal(1),
                ready("s-2", 70).ordinal(2),
                ready("s-3", 30).ordinal(3),
            ],
        ),
        history(),
    );
    assert_eq!(names(&d.plan.hold), ["s-3"]);
}

#[test]
fn a_broad_heartbeat_outage_releases_every_held_back_pod() {
    let stale = |name: &str| pod(name).ready().sessions(10).heartbeat_at(ago(60));
    let d = decide(
        4,
        vec![
            stale("a"),
            stale("b"),
            stale("c"),
            held("d", 0).heartbeat_at(ago(60)),
        ],
    );
    assert_eq!(names(&d.plan.release), ["d"]);
    assert!(d.plan.hold.is_empty());
}

#[test]
fn a_policy_without_hold_back_holds_nothing_and_releases_what_it_finds_held() {
    let plain = || {
        policy()
            .max(20)
            .average("rps", 100.0)
            .heartbeat(secs(30))
            .scale_up(rules().percent(1000, 15))
            .scale_down(rules().percent(100, 15))
    };
    let pods = || {
        vec![
            ready("a", 60),
            ready("b", 60),
            ready("c", 10),
            ready("d", 0),
        ]
    };
    let d = run(plain(), wanting(3, pods()), history());
    assert!(d.plan.hold.is_empty() && d.plan.release.is_empty());
    assert_eq!(names(&d.plan.start), ["d"]);
    // A mark left by an earlier spec is released and plays no part in choosing victims.
    let mut marked = pods();
    marked[2] = held("c", 10);
    let m = run(plain(), wanting(3, marked), history());
    assert_eq!(names(&m.plan.release), ["c"]);
    assert_eq!(m.plan.start, d.plan.start);
    assert_eq!(m.plan.replicas, d.plan.replicas);
}

#[test]
fn a_paused_policy_changes_no_hold() {
    let d = run(
        holding().paused(),
        wanting(3, vec![ready("a", 0), ready("b", 0), held("c", 0)]),
        history(),
    );
    assert!(d.plan.hold.is_empty() && d.plan.release.is_empty());
    assert_eq!(d.instances.held_back, 1);
}

#[test]
fn one_more_pod_is_held_back_only_with_room_under_the_entry_band() {
    // 276 sessions: with "d" held back the other 3 would hold 92 each, under the ceiling (95)
    // but not under the entry ceiling (90): nothing is held, where held it would stay.
    let pods = |d: PodBuilder| vec![ready("a", 92), ready("b", 92), ready("c", 92), d];
    let d = decide(4, pods(ready("d", 0)));
    assert!(d.plan.hold.is_empty(), "{:?}", d.plan.hold);
    let kept = decide(4, pods(held("d", 0)));
    assert!(kept.plan.release.is_empty(), "{:?}", kept.plan.release);
    assert_eq!(kept.instances.held_back, 1);
}
