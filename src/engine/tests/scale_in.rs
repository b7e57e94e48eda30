//! Scale-in as a plan over instances: victims, cancellation, the removable rule, the
//! ReplicaSet-order guard, StatefulSets, lost instances and their replacement, and the
//! reasons reported along the way.

use crate::api::{OnLost, OnTimeout};
use crate::engine::drain::REMOVABLE_DELETION_COST;
use crate::engine::tests::{condition, events, names, run, sessions, wanting};
use crate::engine::{
    ConditionType, Decision, EventReason, HeartbeatState, MAX_POD_REPORTS, Removal, RemovalCause,
};
use crate::testing::{
    ObservationBuilder, PodBuilder, ago, history, observation, pod, policy, rules, secs,
};

fn removed(d: &Decision) -> Vec<(&str, RemovalCause)> {
    d.plan
        .remove
        .iter()
        .map(|r| (r.pod.as_str(), r.cause))
        .collect()
}

fn mixed_pods() -> Vec<PodBuilder> {
    vec![
        pod("a").ready().sessions(5),
        pod("b").ready().sessions(1),
        pod("c").not_ready().sessions(9),
        pod("d").sessions(7).heartbeat_at(ago(60)), // Lost: silent, not Ready since created
        pod("e").ready().sessions(0),
    ]
}

#[test]
fn victims_are_lost_or_not_ready_pods_first_then_those_with_fewest_sessions() {
    // (serving wanted, pods drained)
    let cases: [(u32, &[&str]); 4] = [
        (4, &["d"]),
        (3, &["d", "c"]),
        (2, &["d", "c", "e"]),
        (1, &["d", "c", "e", "b"]),
    ];
    for (serving, drained) in cases {
        let d = run(sessions(), wanting(serving, mixed_pods()), history());
        let mut started = names(&d.plan.start);
        started.sort_unstable();
        let mut expected = drained.to_vec();
        expected.sort_unstable();
        assert_eq!(started, expected, "scaling in to {serving}");
    }
}

#[test]
fn pods_that_have_not_reported_count_as_holding_the_most_sessions() {
    let d = run(
        sessions(),
        wanting(
            1,
            [
                pod("quiet").ready().started(ago(10)), // no heartbeat yet: unknown
                pod("busy").ready().sessions(500),
            ],
        ),
        history(),
    );
    assert_eq!(names(&d.plan.start), ["busy"]);
}

#[test]
fn victims_with_equal_sessions_follow_the_replica_set_order() {
    let d = run(
        sessions(),
        wanting(
            2,
            [
                pod("old").ready().sessions(2).started(ago(3000)),
                pod("new").ready().sessions(2).started(ago(100)),
                pod("mid").ready().sessions(2).started(ago(2000)),
            ],
        ),
        history(),
    );
    assert_eq!(names(&d.plan.start), ["new"], "the newest goes first");

    let d = run(
        sessions(),
        wanting(
            2,
            [
                pod("old").ready().sessions(2).started(ago(3000)).cost(-5),
                pod("new").ready().sessions(2).started(ago(100)),
                pod("mid").ready().sessions(2).started(ago(2000)),
            ],
        ),
        history(),
    );
    assert_eq!(
        names(&d.plan.start),
        ["old"],
        "the lowest deletion cost goes first"
    );
}

#[test]
fn drain_started_events_say_which_pod_and_why() {
    let d = run(
        sessions(),
        wanting(
            2,
            [
                pod("a").ready().sessions(4),
                pod("b").ready().sessions(1),
                pod("c").ready().sessions(9),
            ],
        ),
        history(),
    );
    assert_eq!(
        events(&d, EventReason::DrainStarted),
        ["draining pod b (1 sessions) to scale in to 2 serving replicas"]
    );
    assert_eq!(d.replicas, 3, "the count falls only once b is removable");
    assert!(d.plan.remove.is_empty());
}

#[test]
fn load_coming_back_cancels_drains_with_the_most_sessions_first() {
    let pods = || {
        vec![
            pod("s1").ready().sessions(20),
            pod("s2").ready().sessions(20),
            pod("few").ready().sessions(1).draining_since(ago(60)),
            pod("many").ready().sessions(8).draining_since(ago(60)),
            // Has not reported yet: counts as holding the most.
            pod("unknown")
                .ready()
                .started(ago(100))
                .draining_since(ago(60)),
        ]
    };
    let p = sessions().heartbeat(secs(120));
    let d = run(p.clone(), wanting(3, pods()), history());
    assert_eq!(names(&d.plan.cancel), ["unknown"]);
    assert_eq!(d.replicas, 5, "no scale-up while a drain can be cancelled");

    let d = run(p.clone(), wanting(4, pods()), history());
    assert_eq!(names(&d.plan.cancel), ["unknown", "many"]);
    assert_eq!(
        events(&d, EventReason::DrainCancelled),
        [
            "load is back: pod unknown serves again",
            "load is back: pod many serves again"
        ]
    );
    assert_eq!(d.replicas, 5);

    let d = run(p, wanting(7, pods()), history());
    assert_eq!(d.plan.cancel.len(), 3, "every drain is cancelled first");
    assert_eq!(d.replicas, 7, "then the count rises");
    assert!(d.plan.start.is_empty());
}

#[test]
fn lost_draining_pods_are_not_put_back_into_service() {
    let d = run(
        sessions(),
        wanting(
            2,
            [
                pod("s").ready().sessions(20),
                pod("gone")
                    .sessions(3)
                    .heartbeat_at(ago(100))
                    .draining_since(ago(60)),
            ],
        ),
        history(),
    );
    assert!(d.plan.cancel.is_empty());
    assert_eq!(d.replicas, 3, "a new pod serves beside the lost one");
    assert!(
        d.plan.remove.is_empty(),
        "nothing is removed while the count rises"
    );
}

#[test]
fn statefulsets_cancel_the_lowest_ordinals_first() {
    let pods = (0..6).map(|i| {
        let p = pod(&format!("web-{i}"))
            .ordinal(i)
            .ready()
            .sessions(u64::from(10 - i));
        if i >= 3 { p.draining_since(ago(60)) } else { p }
    });
    let d = run(sessions().statefulset(), wanting(4, pods), history());
    assert_eq!(names(&d.plan.cancel), ["web-3"]);
    assert_eq!(d.replicas, 6);
}

#[test]
fn statefulsets_drain_the_highest_ordinals_whatever_their_sessions() {
    let pods = (0..5).map(|i| {
        pod(&format!("web-{i}"))
            .ordinal(i)
            .ready()
            .sessions(u64::from(i) * 10)
    });
    let d = run(sessions().statefulset(), wanting(3, pods), history());
    assert_eq!(names(&d.plan.start), ["web-4", "web-3"]);
}

#[test]
fn statefulsets_remove_a_drained_pod_only_once_every_higher_ordinal_may_go() {
    let pods = |four_done: bool| {
        (0..5).map(move |i| {
            let p = pod(&format!("web-{i}")).ordinal(i).ready();
            match i {
                3 => p.sessions(0).draining_since(ago(60)),
                4 if four_done => p.sessions(0).draining_since(ago(60)),
                4 => p.sessions(6).draining_since(ago(60)),
                _ => p.sessions(10),
            }
        })
    };
    let d = run(sessions().statefulset(), wanting(3, pods(false)), history());
    assert!(d.plan.remove.is_empty(), "web-3 waits behind web-4");
    assert_eq!(d.replicas, 5);

    let d = run(sessions().statefulset(), wanting(3, pods(true)), history());
    assert_eq!(
        removed(&d),
        [
            ("web-4", RemovalCause::Drained),
            ("web-3", RemovalCause::Drained)
        ]
    );
    assert_eq!(d.replicas, 3);
}

/// One draining pod `d` described by `draining`, at the front of the deletion order (it is
/// the only pod that is not ready), beside two serving pods; the load wants two.
fn one_draining(draining: PodBuilder) -> ObservationBuilder {
    wanting(
        2,
        [
            pod("s1").ready().sessions(10),
            pod("s2").ready().sessions(10),
            draining.not_ready(),
        ],
    )
}

#[test]
fn a_draining_pod_is_removable_once_it_reports_zero_sessions_after_the_drain_began() {
    // (the draining pod, removal)
    let p = sessions().heartbeat(secs(120));
    let cases = [
        (
            pod("d").sessions(0).heartbeat_at(ago(10)),
            Some(RemovalCause::Drained),
        ),
        (pod("d").sessions(3).heartbeat_at(ago(10)), None),
        (pod("d").sessions(0).heartbeat_at(ago(70)), None), // reported before the drain
        (pod("d").sessions(0).heartbeat_at(ago(60)), None), // reported as it began
        (pod("d").pending(), Some(RemovalCause::Drained)),  // never ran: holds nothing
    ];
    for (draining, expected) in cases {
        let what = format!("{draining:?}");
        let d = run(
            p.clone(),
            one_draining(draining.draining_since(ago(60))),
            history(),
        );
        let expected: Vec<(&str, RemovalCause)> = expected.map(|c| ("d", c)).into_iter().collect();
        assert_eq!(removed(&d), expected, "{what}");
        assert_eq!(
            d.replicas,
            if expected.is_empty() { 3 } else { 2 },
            "{what}"
        );
    }
}

#[test]
fn a_draining_pod_that_fails_readiness_for_its_drain_and_goes_silent_is_not_lost() {
    // The demo app, like many, fails readiness while it drains. A partition then silences it:
    // its unreadiness began with the drain and proves nothing.
    let p = sessions();
    let draining = |not_ready: u64| {
        one_draining(
            pod("d")
                .sessions(4)
                .heartbeat_at(ago(120))
                .draining_since(ago(200))
                .not_ready_since(ago(not_ready)),
        )
    };
    let d = run(p.clone(), draining(195), history());
    assert!(d.plan.remove.is_empty(), "removed {:?}", d.plan.remove);
    assert_eq!((d.instances.silent, d.instances.lost), (1, 0));
    // Within one timeout before the drain began still counts as the drain's (clock skew).
    assert!(
        run(p.clone(), draining(225), history())
            .plan
            .remove
            .is_empty()
    );
    // Not Ready well before its drain began: that unreadiness was not the drain's.
    let d = run(p, draining(600), history());
    assert_eq!(removed(&d), [("d", RemovalCause::Lost)]);
}

#[test]
fn a_pod_cut_off_before_its_drain_was_cancelled_is_not_taken_for_lost() {
    // Found by the soak: told to drain, the pod failed readiness; its heartbeats were then cut
    // and the drain cancelled. It never heard the cancel, so it stays not Ready and silent,
    // still holding its sessions.
    let seen = |not_ready: u64| {
        wanting(
            3,
            [
                pod("a").ready().sessions(3),
                pod("b").ready().sessions(4),
                pod("c")
                    .sessions(6)
                    .heartbeat_at(ago(100))
                    .cancelled_drain(ago(110), ago(60))
                    .not_ready_since(ago(not_ready)),
            ],
        )
    };
    let d = run(sessions(), seen(105), history());
    assert!(d.plan.replace.is_empty(), "replaced {:?}", d.plan.replace);
    assert_eq!((d.instances.silent, d.instances.lost), (1, 0));
    // Not Ready well before that drain: not the drain's doing.
    assert_eq!(
        names(&run(sessions(), seen(900), history()).plan.replace),
        ["c"]
    );
    // Not Ready long after the cancel could have reached it: not the drain's doing either.
    let later = wanting(
        3,
        [
            pod("a").ready().sessions(3),
            pod("b").ready().sessions(4),
            pod("c")
                .sessions(6)
                .heartbeat_at(ago(100))
                .cancelled_drain(ago(1000), ago(900))
                .not_ready_since(ago(100)),
        ],
    );
    assert_eq!(
        names(&run(sessions(), later, history()).plan.replace),
        ["c"]
    );
}

#[test]
fn a_zero_counted_before_the_pod_heard_of_its_drain_does_not_end_the_drain() {
    // The race: the pod counted 0 and sent it while the drain mark was being written; the
    // heartbeat arrives after the mark, but the pod still took sessions when it counted.
    let p = sessions().heartbeat(secs(120));
    let d = run(
        p.clone(),
        one_draining(
            pod("d")
                .sessions(0)
                .heartbeat_at(ago(10))
                .untold()
                .draining_since(ago(60)),
        ),
        history(),
    );
    assert!(d.plan.remove.is_empty(), "removed {:?}", d.plan.remove);
    assert!(d.plan.mark_removable.is_empty());
    assert_eq!(d.replicas, 3);
    // The next heartbeat, counted after the reply told it to drain, ends it.
    let d = run(
        p,
        one_draining(
            pod("d")
                .sessions(0)
                .heartbeat_at(ago(5))
                .draining_since(ago(60)),
        ),
        history(),
    );
    assert_eq!(removed(&d), [("d", RemovalCause::Drained)]);
}

#[test]
fn a_prometheus_zero_ends_a_drain_only_once_the_marks_had_a_timeout_to_take_effect() {
    // A sample cannot say the pod knew of its drain; the marks get one heartbeat timeout
    // (30 s) to take the pod out of its Services first.
    let p = sessions().prometheus_heartbeats("sum by (pod) (sessions)");
    let seen = |drain_began: u64| {
        one_draining(
            pod("d")
                .sessions(0)
                .heartbeat_at(ago(5))
                .untold()
                .draining_since(ago(drain_began)),
        )
    };
    assert!(run(p.clone(), seen(20), history()).plan.remove.is_empty());
    assert!(run(p.clone(), seen(34), history()).plan.remove.is_empty());
    assert_eq!(
        removed(&run(p, seen(35), history())),
        [("d", RemovalCause::Drained)]
    );
}

#[test]
fn pods_that_never_reported_count_as_holding_the_target_when_the_rest_would_scale_in() {
    // Four pods at 10 sessions, two new ones that never reported (past the leader's wait):
    // counting them as zero would ask for 40/80 -> 1 replica.
    let p = policy()
        .max(20)
        .heartbeat(secs(30))
        .sessions_metric(80.0)
        .scale_down(rules().percent(100, 15));
    let mut pods: Vec<PodBuilder> = (0..4)
        .map(|i| pod(&format!("s{i}")).ready().sessions(10))
        .collect();
    pods.push(pod("new1").ready().started(ago(60)));
    pods.push(pod("new2").ready().started(ago(60)));
    let d = run(p.clone(), observation().pods(pods), history());
    assert_eq!(
        d.metrics[0].reading,
        crate::engine::Reading::Value(200.0),
        "40 known + 2 x 80"
    );
    assert_eq!(d.recommendation, 3);
    // Scaling up, the unknown pods count as holding nothing (as the HPA does).
    let mut pods: Vec<PodBuilder> = (0..2)
        .map(|i| pod(&format!("s{i}")).ready().sessions(100))
        .collect();
    pods.push(pod("new1").ready().started(ago(60)));
    let d = run(p, observation().pods(pods), history());
    assert_eq!(d.metrics[0].reading, crate::engine::Reading::Value(200.0));
}

#[test]
fn a_broad_outage_makes_the_sessions_metric_fail_instead_of_falling() {
    let p = policy()
        .max(20)
        .heartbeat(secs(30))
        .sessions_metric(10.0)
        .scale_down(rules().percent(100, 15));
    let d = run(
        p,
        observation().pods([
            pod("a").ready().sessions(30).heartbeat_at(ago(60)),
            pod("b").ready().sessions(30).heartbeat_at(ago(60)),
            pod("c").ready().sessions(0),
        ]),
        history(),
    );
    assert!(
        matches!(&d.metrics[0].reading, crate::engine::Reading::Unavailable { reason } if reason.starts_with("2 of 3 instances sent no heartbeat for 30s")),
        "{:?}",
        d.metrics[0].reading
    );
    assert!(d.metrics_failed);
    assert_eq!(d.desired, 3, "the count holds");
}

#[test]
fn a_lost_draining_pod_is_removable() {
    let d = run(
        sessions(),
        one_draining(
            pod("d")
                .sessions(5)
                .heartbeat_at(ago(45))
                .draining_since(ago(60)),
        ),
        history(),
    );
    assert_eq!(removed(&d), [("d", RemovalCause::Lost)]);
    assert_eq!(
        events(&d, EventReason::InstanceLost),
        [
            "pod d sent no heartbeat while draining and Kubernetes has reported it not Ready as long: it is Lost; removing it"
        ]
    );
}

#[test]
fn a_timed_out_drain_removes_the_pod_only_with_on_timeout_remove() {
    let draining = || {
        one_draining(
            pod("d")
                .sessions(3)
                .heartbeat_at(ago(5))
                .draining_since(ago(31 * 60)),
        )
    };
    let d = run(sessions(), draining(), history());
    assert_eq!(removed(&d), [("d", RemovalCause::TimedOut)]);
    assert_eq!(
        events(&d, EventReason::DrainTimedOut),
        ["pod d still held 3 sessions after the drain timeout; removing it (onTimeout: Remove)"]
    );

    let keep = sessions().drain(secs(30 * 60), OnTimeout::Keep);
    let d = run(keep.clone(), draining(), history());
    assert!(
        d.plan.remove.is_empty(),
        "onTimeout: Keep never removes a pod with sessions"
    );
    assert_eq!(d.replicas, 3);

    let d = run(
        keep,
        one_draining(
            pod("d")
                .sessions(3)
                .heartbeat_at(ago(5))
                .draining_since(ago(86_400)),
        ),
        history(),
    );
    assert!(d.plan.remove.is_empty(), "not even a day later");
}

#[test]
fn without_heartbeats_a_draining_pod_is_removable_when_the_drain_times_out() {
    let p = || {
        policy()
            .max(20)
            .average("rps", 100.0)
            .scale_down(rules().percent(100, 15))
            .drain(secs(300), OnTimeout::Keep)
    };
    let d = run(
        p(),
        one_draining(pod("d").draining_since(ago(299))),
        history(),
    );
    assert!(d.plan.remove.is_empty());
    let d = run(
        p(),
        one_draining(pod("d").draining_since(ago(300))),
        history(),
    );
    assert_eq!(removed(&d), [("d", RemovalCause::Drained)]);
    assert_eq!(d.replicas, 2);
}

#[test]
fn a_zero_drain_timeout_without_heartbeats_scales_in_like_the_hpa() {
    let p = policy()
        .max(20)
        .average("rps", 100.0)
        .scale_down(rules().percent(100, 15))
        .drain(secs(0), OnTimeout::Keep);
    let d = run(
        p,
        wanting(2, (0..5).map(|i| pod(&format!("p{i}")).ready())),
        history(),
    );
    assert_eq!(d.replicas, 2, "the count falls at once");
    assert!(d.plan.start.is_empty(), "no drain marks");
    assert!(d.plan.mark_removable.is_empty());
    assert_eq!(d.plan.remove.len(), 3);
    assert!(
        d.plan
            .remove
            .iter()
            .all(|r| r.cause == RemovalCause::Undrained)
    );
    assert!(events(&d, EventReason::DrainStarted).is_empty());
    assert_eq!(
        events(&d, EventReason::ScaledDown),
        [
            "scaled down from 5 to 2 replicas without draining (no heartbeat source and drain.timeout 0s)"
        ]
    );
}

#[test]
fn a_removable_pod_behind_a_serving_one_waits_and_is_marked_for_deletion() {
    // `s` is not ready, so the ReplicaSet would delete it before `d`.
    let d = run(
        sessions(),
        wanting(
            2,
            [
                pod("s").not_ready().sessions(4),
                pod("t").ready().sessions(4),
                pod("d").ready().sessions(0).draining_since(ago(60)),
            ],
        ),
        history(),
    );
    assert!(d.plan.remove.is_empty());
    assert!(d.plan.blocked);
    assert_eq!(names(&d.plan.mark_removable), ["d"]);
    assert_eq!(d.replicas, 3);
    let c = condition(&d, ConditionType::Draining);
    assert_eq!((c.status, c.reason), (true, "WaitingForRemovalOrder"));
}

#[test]
fn during_a_rollout_drained_pods_wait_for_it_to_end() {
    // `d` is drained and first in the deletion order, but pods of two ReplicaSets mean the
    // Deployment would share a lower count out between them.
    let pods = |new_rs: &str| {
        [
            pod("d")
                .owner("chat-old")
                .not_ready()
                .sessions(0)
                .draining_since(ago(60)),
            pod("s").owner("chat-old").ready().sessions(4),
            pod("t").owner(new_rs).ready().sessions(4),
        ]
    };
    let d = run(sessions(), wanting(2, pods("chat-new")), history());
    assert!(d.plan.remove.is_empty());
    assert!(d.plan.rollout);
    assert_eq!(d.replicas, 3);
    let c = condition(&d, ConditionType::Draining);
    assert_eq!((c.status, c.reason), (true, "WaitingForRollout"));
    assert!(
        c.message.contains("a rollout is in progress"),
        "{}",
        c.message
    );
    // Lower load starts no drains: the surge's extra pods must not raise the count either.
    let surge = |new_rs: &str| {
        pods(new_rs)
            .into_iter()
            .chain([pod("u").owner(new_rs).not_ready().sessions(0)])
    };
    let d = run(
        sessions(),
        wanting(1, surge("chat-new")).replicas(3),
        history(),
    );
    assert!(d.plan.start.is_empty());
    assert!(d.plan.remove.is_empty());
    assert_eq!(d.replicas, 3);
    let undrained = [
        pod("s").owner("chat-old").ready().sessions(4),
        pod("t").owner("chat-new").ready().sessions(4),
    ];
    let d = run(sessions(), wanting(1, undrained).replicas(2), history());
    assert_eq!(d.replicas, 2);
    let c = condition(&d, ConditionType::Draining);
    assert_eq!((c.status, c.reason), (false, "WaitingForRollout"));
    // Scaling up is not held, and once one ReplicaSet is left the drained pod goes.
    let d = run(sessions(), wanting(4, pods("chat-new")), history());
    assert_eq!(d.replicas, 4);
    let d = run(sessions(), wanting(2, pods("chat-old")), history());
    assert_eq!(removed(&d), [("d", RemovalCause::Drained)]);
    assert_eq!(d.replicas, 2);
    // Without drains the HPA's behavior stands: the workload picks.
    let hpa_like = policy()
        .max(20)
        .average("rps", 100.0)
        .scale_down(rules().percent(100, 15))
        .drain(secs(0), OnTimeout::Keep);
    let d = run(hpa_like, wanting(2, pods("chat-new")), history());
    assert!(!d.plan.rollout);
    assert_eq!(d.replicas, 2);
}

#[test]
fn a_removable_pod_tied_with_a_serving_one_waits_for_its_deletion_cost() {
    // Same ReplicaSet rank up to the deletion cost: the ReplicaSet may pick either.
    let pods = |cost: i32| {
        [
            pod("s").ready().sessions(4),
            pod("d")
                .ready()
                .sessions(0)
                .draining_since(ago(60))
                .cost(cost),
        ]
    };
    let d = run(sessions(), wanting(1, pods(0)), history());
    assert!(d.plan.remove.is_empty());
    assert_eq!(names(&d.plan.mark_removable), ["d"]);

    // Once marked it ranks first, and the count falls.
    let d = run(
        sessions(),
        wanting(1, pods(REMOVABLE_DELETION_COST)),
        history(),
    );
    assert_eq!(
        d.plan.remove,
        [Removal {
            pod: "d".to_owned(),
            cause: RemovalCause::Drained
        }]
    );
    assert!(d.plan.mark_removable.is_empty());
    assert!(!d.plan.blocked);
    assert_eq!(d.replicas, 1);
    assert_eq!(
        events(&d, EventReason::DrainCompleted),
        ["pod d drained; removing it"]
    );
}

#[test]
fn the_count_falls_only_by_the_removable_pods_at_the_front_of_the_deletion_order() {
    let d = run(
        sessions(),
        wanting(
            1,
            [
                pod("s").ready().sessions(9),
                pod("d1")
                    .ready()
                    .sessions(0)
                    .draining_since(ago(60))
                    .cost(-10),
                pod("d2")
                    .ready()
                    .sessions(2)
                    .draining_since(ago(60))
                    .cost(-5),
                pod("d3")
                    .ready()
                    .sessions(0)
                    .draining_since(ago(60))
                    .cost(0),
            ],
        ),
        history(),
    );
    assert_eq!(removed(&d), [("d1", RemovalCause::Drained)]);
    assert_eq!(names(&d.plan.mark_removable), ["d3"]);
    assert!(d.plan.blocked);
    assert_eq!(d.replicas, 3);
}

#[test]
fn lost_is_declared_only_one_timeout_after_heartbeats_began_to_be_collected() {
    let seen = |since: u64| {
        observation()
            .reading("rps", 200.0)
            .heartbeats_since(ago(since))
            .pods([
                pod("a").ready().sessions(3),
                pod("b").sessions(3).heartbeat_at(ago(600)),
            ])
    };
    let d = run(sessions(), seen(10), history());
    assert_eq!(d.instances.lost, 0, "a new leader waits");
    assert!(d.plan.replace.is_empty());
    let d = run(sessions(), seen(30), history());
    assert_eq!(d.instances.lost, 1);
}

#[test]
fn pods_that_never_started_are_never_lost() {
    let d = run(
        sessions(),
        observation().reading("rps", 200.0).pods([
            pod("a").ready().sessions(3),
            pod("b").pending().created(ago(3600)),
            pod("c").unscheduled().created(ago(3600)),
        ]),
        history(),
    );
    assert_eq!(d.instances.lost, 0);
}

#[test]
fn a_started_pod_that_never_reports_is_lost_one_timeout_after_it_started() {
    let seen = |started: u64| {
        observation().reading("rps", 200.0).pods([
            pod("a").ready().sessions(3),
            pod("b").started(ago(started)).not_ready_since(ago(started)),
        ])
    };
    assert_eq!(run(sessions(), seen(29), history()).instances.lost, 0);
    assert_eq!(run(sessions(), seen(30), history()).instances.lost, 1);
}

#[test]
fn lost_pods_are_replaced_while_other_instances_heartbeat() {
    let d = run(
        sessions(),
        wanting(
            2,
            [
                pod("ok").ready().sessions(3),
                pod("gone").sessions(3).heartbeat_at(ago(40)),
            ],
        ),
        history(),
    );
    assert_eq!(names(&d.plan.replace), ["gone"]);
    assert_eq!(
        events(&d, EventReason::InstanceLost),
        ["pod gone sent no heartbeat and was not Ready for 30s: it is Lost; replacing it"]
    );
    assert_eq!(d.replicas, 2, "replacing keeps the count");
}

#[test]
fn a_broad_outage_replaces_and_removes_nothing_and_holds_the_count() {
    // Every pod silent at once, two of them draining and not Ready as long: the path to the
    // controller broke, not the pods.
    let d = run(
        sessions(),
        wanting(
            1,
            [
                pod("a").ready().sessions(3).heartbeat_at(ago(40)),
                pod("b").sessions(5).heartbeat_at(ago(40)),
                pod("c")
                    .sessions(2)
                    .heartbeat_at(ago(40))
                    .draining_since(ago(100)),
            ],
        ),
        history(),
    );
    assert!(d.plan.replace.is_empty(), "replaced {:?}", d.plan.replace);
    assert!(d.plan.remove.is_empty(), "removed {:?}", d.plan.remove);
    assert!(d.plan.start.is_empty(), "drains started {:?}", d.plan.start);
    assert_eq!((d.instances.silent, d.instances.lost), (3, 0));
    assert!(events(&d, EventReason::InstanceLost).is_empty());
    assert_eq!(
        events(&d, EventReason::HeartbeatsMissing),
        [
            "3 of 3 instances sent no heartbeat for 30s at once: most likely the path to drainscaler is broken (network, NetworkPolicy, the heartbeat Service, TokenReview), not the instances; replacing and removing nothing for silence and holding the count"
        ]
    );
    let c = condition(&d, ConditionType::Heartbeats);
    assert_eq!((c.status, c.reason), (false, "HeartbeatsMissing"));
    assert_eq!(d.replicas, 3, "the count holds");
}

#[test]
fn heartbeats_recover_by_themselves_when_the_instances_report_again() {
    let d = run(
        sessions(),
        wanting(
            2,
            [pod("a").ready().sessions(3), pod("b").ready().sessions(5)],
        ),
        history(),
    );
    let c = condition(&d, ConditionType::Heartbeats);
    assert_eq!((c.status, c.reason), (true, "HeartbeatsReceived"));
    assert_eq!(d.instances.silent, 0);
    assert!(events(&d, EventReason::HeartbeatsMissing).is_empty());
}

#[test]
fn policies_without_heartbeats_have_no_heartbeats_condition() {
    let d = run(
        policy().average("rps", 100.0),
        wanting(2, [pod("a").ready(), pod("b").ready()]),
        history(),
    );
    assert!(
        !d.conditions
            .iter()
            .any(|c| c.type_ == ConditionType::Heartbeats)
    );
}

#[test]
fn a_silent_pod_that_kubernetes_still_reports_ready_is_kept_with_its_last_count() {
    let d = run(
        sessions(),
        wanting(
            3,
            [
                pod("a").ready().sessions(3),
                pod("b").ready().sessions(4),
                pod("quiet").ready().sessions(6).heartbeat_at(ago(600)),
            ],
        ),
        history(),
    );
    assert!(d.plan.replace.is_empty());
    assert_eq!((d.instances.silent, d.instances.lost), (1, 0));
    assert_eq!(d.instances.sessions, 13, "its last count still counts");
    assert_eq!(
        events(&d, EventReason::InstanceSilent),
        [
            "pod quiet sent no heartbeat for 30s but Kubernetes does not report it not Ready for as long: keeping it and its last count (6 sessions)"
        ]
    );
    let c = condition(&d, ConditionType::Heartbeats);
    assert_eq!((c.status, c.reason), (true, "SomeInstancesSilent"));
}

#[test]
fn a_silent_pod_not_ready_for_less_than_the_timeout_is_not_lost_yet() {
    let seen = |not_ready: u64| {
        wanting(
            3,
            [
                pod("a").ready().sessions(3),
                pod("b").ready().sessions(4),
                pod("quiet")
                    .sessions(6)
                    .heartbeat_at(ago(600))
                    .not_ready_since(ago(not_ready)),
            ],
        )
    };
    let d = run(sessions(), seen(29), history());
    assert_eq!((d.instances.silent, d.instances.lost), (1, 0));
    assert!(d.plan.replace.is_empty());
    let d = run(sessions(), seen(30), history());
    assert_eq!((d.instances.silent, d.instances.lost), (1, 1));
    assert_eq!(names(&d.plan.replace), ["quiet"]);
}

#[test]
fn draining_pods_cut_off_from_the_controller_while_ready_are_not_removed() {
    // The partition seen in the field: 7 pods, two draining with 3 and 5 sessions, their
    // heartbeats dropped for 60 s while the kubelet still reports them Ready.
    let quiet = |name: &str, n: u64| {
        pod(name)
            .ready()
            .sessions(n)
            .heartbeat_at(ago(60))
            .draining_since(ago(90))
    };
    let mut pods: Vec<PodBuilder> = (0..5)
        .map(|i| pod(&format!("s{i}")).ready().sessions(4))
        .collect();
    pods.push(quiet("d1", 3));
    pods.push(quiet("d2", 5));
    let d = run(sessions(), wanting(5, pods), history());
    assert!(d.plan.remove.is_empty(), "removed {:?}", d.plan.remove);
    assert!(d.plan.replace.is_empty(), "replaced {:?}", d.plan.replace);
    assert!(d.plan.mark_removable.is_empty());
    assert_eq!(d.replicas, 7, "both draining pods stay counted");
    assert_eq!((d.instances.silent, d.instances.lost), (2, 0));
}

#[test]
fn replacements_are_bounded_by_max_concurrent_replacements_less_terminating_pods() {
    let lost = |name: &str| pod(name).sessions(1).heartbeat_at(ago(40));
    let seen = |terminating: usize| {
        wanting(
            7,
            [
                pod("ok1").ready().sessions(3),
                pod("ok2").ready().sessions(3),
                pod("ok3").ready().sessions(3),
                pod("ok4").ready().sessions(3),
                lost("l1"),
                lost("l2"),
                lost("l3"),
            ],
        )
        .pods((0..terminating).map(|i| pod(&format!("t{i}")).ready().terminating()))
    };
    let p = sessions().max_replacements(2);
    assert_eq!(
        names(&run(p.clone(), seen(0), history()).plan.replace),
        ["l1", "l2"]
    );
    let d = run(p.clone(), seen(1), history());
    assert_eq!(names(&d.plan.replace), ["l1"]);
    assert_eq!(
        events(&d, EventReason::InstanceLost)[1..],
        [
            "pod l2 sent no heartbeat and was not Ready for 30s: it is Lost; waiting to replace it",
            "pod l3 sent no heartbeat and was not Ready for 30s: it is Lost; waiting to replace it"
        ]
    );
    assert!(run(p, seen(2), history()).plan.replace.is_empty());
}

#[test]
fn on_lost_keep_reports_lost_pods_and_leaves_them() {
    let d = run(
        sessions().on_lost(OnLost::Keep),
        wanting(
            2,
            [
                pod("ok").ready().sessions(3),
                pod("gone").sessions(3).heartbeat_at(ago(40)),
            ],
        ),
        history(),
    );
    assert!(d.plan.replace.is_empty());
    assert_eq!(d.instances.lost, 1);
    assert_eq!(
        events(&d, EventReason::InstanceLost),
        [
            "pod gone sent no heartbeat and was not Ready for 30s: it is Lost; keeping it (onLost: Keep)"
        ]
    );
}

#[test]
fn scaled_up_and_scaled_down_events_say_from_what_to_what_and_why() {
    let d = run(
        sessions().scale_up(rules().pods(2, 60)),
        wanting(
            9,
            [pod("a").ready().sessions(3), pod("b").ready().sessions(3)],
        ),
        history(),
    );
    assert_eq!(
        events(&d, EventReason::ScaledUp),
        [
            "scaled up from 2 to 4 replicas: the desired replica count is increasing faster than the maximum scale rate (9 wanted, 4 allowed)"
        ]
    );
    let d = run(
        sessions(),
        wanting(
            1,
            [
                pod("a").ready().sessions(3),
                pod("b").not_ready().sessions(0).draining_since(ago(60)),
            ],
        ),
        history(),
    );
    assert_eq!(
        events(&d, EventReason::ScaledDown),
        ["scaled down from 2 to 1 replicas after draining"]
    );
}

#[test]
fn the_draining_condition_counts_drains_in_progress() {
    let d = run(
        sessions(),
        wanting(
            1,
            [
                pod("a").ready().sessions(3),
                pod("b").ready().sessions(2).draining_since(ago(60)),
            ],
        ),
        history(),
    );
    let c = condition(&d, ConditionType::Draining);
    assert_eq!(
        (c.status, c.reason, c.message.as_str()),
        (true, "DrainInProgress", "1 instances draining")
    );
    assert_eq!(d.draining.len(), 1);
    assert_eq!(d.draining[0].sessions, Some(2));

    let d = run(
        sessions(),
        wanting(1, [pod("a").ready().sessions(3)]),
        history(),
    );
    let c = condition(&d, ConditionType::Draining);
    assert_eq!((c.status, c.reason), (false, "NoDrains"));
}

#[test]
fn a_statefulset_with_a_missing_ordinal_never_deletes_a_pod_that_is_still_draining() {
    // web-2 is being replaced: the StatefulSet keeps ordinals below spec.replicas, so
    // lowering the count by pods rather than ordinals would delete web-3 or web-4.
    let pods = [0, 1, 3, 4].map(|i| pod(&format!("web-{i}")).ordinal(i).ready().sessions(10));
    let d = run(
        sessions().statefulset(),
        wanting(3, pods.clone()).replicas(5),
        history(),
    );
    assert_eq!(names(&d.plan.start), ["web-4", "web-3"]);
    assert_eq!(d.replicas, 5, "both drains still hold sessions");

    let draining = [0, 1, 3, 4].map(|i| {
        let p = pod(&format!("web-{i}")).ordinal(i).ready().sessions(10);
        if i == 4 { p.draining_since(ago(60)) } else { p }
    });
    let d = run(
        sessions().statefulset(),
        wanting(4, draining).replicas(5),
        history(),
    );
    assert!(d.plan.cancel.is_empty(), "web-2 will be back: four serve");
    assert_eq!(d.replicas, 5);
}

#[test]
fn a_statefulset_drops_missing_top_ordinals_without_draining_anyone() {
    let pods = (0..3).map(|i| pod(&format!("web-{i}")).ordinal(i).ready().sessions(10));
    let d = run(
        sessions().statefulset(),
        wanting(3, pods).replicas(5),
        history(),
    );
    assert!(d.plan.start.is_empty());
    assert!(d.plan.remove.is_empty(), "nothing real is removed");
    assert_eq!(d.replicas, 3);
}

#[test]
fn a_statefulset_whose_ordinals_start_above_zero_plans_over_its_own_ordinals() {
    // spec.ordinals.start 10: web-10..web-12 with 3 replicas. Counting ordinals from 0 would
    // see ten missing slots below them, and the count would run away.
    let pods = (10..13).map(|i| pod(&format!("web-{i}")).ordinal(i).ready().sessions(10));
    let seen = || wanting(3, pods.clone()).replicas(3).ordinals_start(10);
    let d = run(sessions().statefulset(), seen(), history());
    assert_eq!(d.replicas, 3, "steady");
    assert!(d.plan.start.is_empty());
    let d = run(
        sessions().statefulset(),
        wanting(
            2,
            (10..13).map(|i| pod(&format!("web-{i}")).ordinal(i).ready().sessions(10)),
        )
        .replicas(3)
        .ordinals_start(10),
        history(),
    );
    assert_eq!(names(&d.plan.start), ["web-12"]);
    assert_eq!(d.replicas, 3, "web-12 drains first");
}

#[test]
fn a_huge_statefulset_count_is_planned_without_a_slot_per_replica() {
    // spec.replicas near u32::MAX over three pods: the missing top ordinals go at once, and
    // the plan makes no stand-in for each of them.
    let pods = (0..3).map(|i| pod(&format!("web-{i}")).ordinal(i).ready().sessions(10));
    let d = run(
        sessions().statefulset(),
        wanting(3, pods).replicas(u32::MAX - 1),
        history(),
    );
    assert_eq!(d.replicas, 20, "moves inward to maxReplicas at once");
    assert!(d.plan.start.is_empty());
    assert!(d.plan.remove.is_empty(), "nothing real is removed");
}

#[test]
fn a_statefulset_pod_with_an_absurd_ordinal_holds_the_plan_instead_of_allocating() {
    let mut pods: Vec<PodBuilder> = (0..3)
        .map(|i| pod(&format!("web-{i}")).ordinal(i).ready().sessions(10))
        .collect();
    pods.push(pod("stray").ordinal(4_000_000_000).ready().sessions(1));
    let d = run(
        sessions().statefulset(),
        wanting(2, pods).replicas(u32::MAX - 1),
        history(),
    );
    assert_eq!(d.replicas, u32::MAX - 1, "held");
    assert!(d.plan.start.is_empty() && d.plan.remove.is_empty());
    assert_eq!(events(&d, EventReason::ScalingHeld).len(), 1);
}

#[test]
fn status_lists_each_pods_heartbeat_lost_and_silent_first_and_at_most_a_hundred() {
    let mut pods = mixed_pods();
    pods.push(pod("f").ready().sessions(3).heartbeat_at(ago(60))); // Silent, still Ready
    pods.extend((0..120).map(|i| pod(&format!("p{i:03}")).ready().sessions(1)));
    let seen = observation()
        .replicas(125)
        .reading("rps", 12_500.0)
        .pods(pods);
    let d = run(sessions().max(200), seen, history());
    assert_eq!(d.pods.len(), MAX_POD_REPORTS);
    let first: Vec<(&str, HeartbeatState, Option<u64>, bool)> = d.pods[..4]
        .iter()
        .map(|p| {
            (
                p.pod.as_str(),
                p.heartbeat,
                p.sessions,
                p.last_heartbeat.is_some(),
            )
        })
        .collect();
    assert_eq!(
        first,
        [
            ("d", HeartbeatState::Lost, Some(7), true),
            ("f", HeartbeatState::Silent, Some(3), true),
            ("a", HeartbeatState::Reporting, Some(5), false),
            ("b", HeartbeatState::Reporting, Some(1), false),
        ]
    );
    assert_eq!(d.pods[1].last_heartbeat, Some(ago(60)));
}

#[test]
fn a_policy_without_heartbeats_lists_no_pods() {
    let p = policy().average("rps", 100.0);
    let seen = observation()
        .replicas(2)
        .reading("rps", 200.0)
        .pods([pod("a").ready(), pod("b").ready()]);
    assert!(run(p, seen, history()).pods.is_empty());
}
