//! HPA semantics, case by case against `pkg/controller/podautoscaler`: tolerance,
//! stabilization windows, rate policies and the reason each limit reports.

use crate::api::SelectPolicy;
use crate::engine::behavior::LimitKind;
use crate::engine::tests::{condition, run};
use crate::engine::{ConditionType, Recommendation, Time, stabilize};
use crate::policy::default_behavior;
use crate::testing::{NOW, PolicyBuilder, ago, history, observation, policy, rules, secs};

/// One rps metric at 100 per replica, up to 100 replicas, with no stabilization and rates
/// wide enough not to interfere unless a test sets its own.
fn rps() -> PolicyBuilder {
    policy()
        .max(100)
        .average("rps", 100.0)
        .scale_up(rules().percent(1000, 15))
        .scale_down(rules().percent(100, 15))
}

#[test]
fn readings_within_the_tolerance_keep_the_current_count() {
    // (current, rps, tolerance, recommendation)
    let cases = [
        (5, 525.0, 0.1, 5), // ratio 1.05
        (5, 560.0, 0.1, 6), // ratio 1.12: ceil(5.6)
        (5, 460.0, 0.1, 5), // ratio 0.92
        (5, 440.0, 0.1, 5), // ratio 0.88: out of tolerance, but ceil(4.4) is 5
        (5, 390.0, 0.1, 4), // ratio 0.78
        (5, 510.0, 0.0, 6), // no tolerance at all
        (5, 500.0, 0.0, 5),
        (10, 1150.0, 0.2, 10), // a wider tolerance
        (10, 1250.0, 0.2, 13),
    ];
    for (current, value, tolerance, expected) in cases {
        let d = run(
            rps().tolerance(tolerance),
            observation().replicas(current).reading("rps", value),
            history(),
        );
        assert_eq!(
            d.recommendation, expected,
            "{current} replicas at {value} rps, tolerance {tolerance}"
        );
        assert_eq!(d.metrics[0].replicas, Some(expected));
    }
}

#[test]
fn value_targets_scale_the_current_count_by_the_usage_ratio() {
    // (current, total, recommendation) for a whole-workload target of 50
    let cases = [
        (4, 100.0, 8),
        (4, 52.0, 4),
        (4, 20.0, 2),
        (3, 51.0, 3),
        (3, 70.0, 5),
    ];
    for (current, value, expected) in cases {
        let d = run(
            policy().max(100).value("queue", 50.0),
            observation().replicas(current).reading("queue", value),
            history(),
        );
        assert_eq!(d.recommendation, expected, "{current} replicas at {value}");
    }
}

#[test]
fn scale_down_takes_the_highest_recommendation_in_its_window() {
    let p = rps().scale_down(rules().window(300).percent(100, 15));
    let h = history().rec(ago(250), 8).rec(ago(100), 6).rec(ago(20), 4);
    let d = run(p, observation().replicas(10).reading("rps", 300.0), h);
    assert_eq!(d.recommendation, 3);
    assert_eq!(d.desired, 8);
    assert_eq!(
        condition(&d, ConditionType::AbleToScale).reason,
        "ScaleDownStabilized"
    );
}

#[test]
fn scale_up_takes_the_lowest_recommendation_in_its_window() {
    let p = rps().scale_up(rules().window(60).percent(1000, 15));
    let h = history().rec(ago(90), 2).rec(ago(50), 5).rec(ago(10), 7);
    let d = run(p, observation().replicas(3).reading("rps", 900.0), h);
    assert_eq!(d.recommendation, 9);
    assert_eq!(d.desired, 5, "the 2 is older than the 60s window");
    assert_eq!(
        condition(&d, ConditionType::AbleToScale).reason,
        "ScaleUpStabilized"
    );
}

#[test]
fn stabilization_windows_are_measured_back_from_now() {
    let behavior = {
        let mut b = default_behavior();
        b.scale_down.stabilization_window = secs(300);
        b
    };
    let recs = [Recommendation {
        time: Time::from_secs(1000),
        replicas: 8,
    }];
    // (now in seconds, replicas) for a recommendation of 3 with 10 running
    let cases = [(1000, 8), (1299, 8), (1300, 3), (5000, 3)];
    for (now, expected) in cases {
        let s = stabilize(&behavior, &recs, 3, 10, Time::from_secs(now));
        assert_eq!(s.replicas, expected, "at {now}s");
    }
}

#[test]
fn a_recommendation_between_the_windows_keeps_the_current_count() {
    // Up window holds a 4 (no higher than 4), down window an 8 (no lower than 8): with 6
    // running, neither direction may move.
    let mut behavior = default_behavior();
    behavior.scale_up.stabilization_window = secs(60);
    behavior.scale_down.stabilization_window = secs(60);
    let recs = [
        Recommendation {
            time: ago(30),
            replicas: 4,
        },
        Recommendation {
            time: ago(20),
            replicas: 8,
        },
    ];
    assert_eq!(stabilize(&behavior, &recs, 2, 6, NOW).replicas, 6);
    assert_eq!(stabilize(&behavior, &recs, 10, 6, NOW).replicas, 6);
}

#[test]
fn without_recent_recommendations_the_new_one_applies_unchanged() {
    let s = stabilize(&default_behavior(), &[], 7, 3, NOW);
    assert_eq!(s.replicas, 7);
    assert_eq!(s.reason, None);
}

#[test]
fn scale_up_is_limited_to_four_pods_or_double_per_fifteen_seconds() {
    // The HPA's default scale-up: the larger of +4 pods and +100% per 15s.
    // (current, wanted, allowed)
    let cases = [
        (1, 50, 5),
        (2, 50, 6),
        (4, 50, 8),
        (5, 50, 10),
        (10, 50, 20),
        (30, 50, 50),
    ];
    for (current, wanted, allowed) in cases {
        let d = run(
            policy().max(100).average("rps", 100.0),
            observation()
                .replicas(current)
                .reading("rps", f64::from(wanted) * 100.0),
            history(),
        );
        assert_eq!(d.desired, allowed, "from {current} towards {wanted}");
        let expected = if allowed < wanted {
            LimitKind::ScaleUpLimit
        } else {
            LimitKind::DesiredWithinRange
        };
        assert_eq!(d.limit.kind, expected, "from {current} towards {wanted}");
    }
}

#[test]
fn scale_down_by_default_waits_five_minutes_then_may_remove_everything_at_once() {
    let p = policy().min(1).max(100).average("rps", 100.0);
    let high = history().rec(ago(200), 10);
    let d = run(
        p.clone(),
        observation().replicas(10).reading("rps", 100.0),
        high,
    );
    assert_eq!(d.desired, 10, "a 10 within the 300s window holds the count");

    let old = history().rec(ago(301), 10);
    let d = run(p, observation().replicas(10).reading("rps", 100.0), old);
    assert_eq!(d.desired, 1);
    assert_eq!(d.limit.kind, LimitKind::DesiredWithinRange);
}

#[test]
fn percent_rounds_up_when_scaling_up() {
    // (current, percent, allowed)
    let cases = [
        (3, 50, 5),
        (1, 10, 2),
        (10, 10, 11),
        (10, 25, 13),
        (7, 100, 14),
        (20, 5, 21),
        (50, 10, 55), // exactly 55: no floating-point overshoot to 56
        (25, 12, 28),
    ];
    for (current, percent, allowed) in cases {
        let d = run(
            rps().scale_up(rules().percent(percent, 60)),
            observation().replicas(current).reading("rps", 10_000.0),
            history(),
        );
        assert_eq!(d.desired, allowed, "{current} + {percent}%");
        assert_eq!(d.limit.kind, LimitKind::ScaleUpLimit);
    }
}

#[test]
fn percent_truncates_when_scaling_down() {
    // (current, percent, allowed): the count may fall to floor(current * (1 - percent/100))
    let cases = [
        (5, 50, 2),
        (3, 50, 1),
        (10, 10, 9),
        (10, 70, 3),
        (9, 30, 6),
        (10, 90, 1), // exactly 1: no floating-point undershoot to 0
        (5, 80, 1),
    ];
    for (current, percent, allowed) in cases {
        let d = run(
            rps().min(0).scale_down(rules().percent(percent, 60)),
            observation().replicas(current).reading("rps", 0.0),
            history(),
        );
        assert_eq!(d.desired, allowed, "{current} - {percent}%");
        assert_eq!(d.limit.kind, LimitKind::ScaleDownLimit);
    }
}

#[test]
fn pods_policies_add_or_remove_at_most_their_value_per_period() {
    let up = run(
        rps().scale_up(rules().pods(2, 60)),
        observation().replicas(3).reading("rps", 2000.0),
        history(),
    );
    assert_eq!(up.desired, 5);
    let down = run(
        rps().scale_down(rules().pods(2, 60)),
        observation().replicas(9).reading("rps", 100.0),
        history(),
    );
    assert_eq!(down.desired, 7);
}

#[test]
fn scale_events_within_the_period_use_up_the_allowance() {
    let p = rps().scale_up(rules().pods(4, 60));
    // (events as (seconds ago, from, to), current, allowed)
    type Past = &'static [(u64, u32, u32)];
    let cases: [(Past, u32, u32); 6] = [
        (&[], 4, 8),
        (&[(30, 2, 4)], 4, 6),             // 2 of the 4 are used
        (&[(30, 2, 4), (10, 4, 6)], 6, 6), // all used: hold
        (&[(60, 2, 4)], 4, 8),             // exactly one period ago: outside it
        (&[(61, 2, 4)], 4, 8),
        (&[(30, 6, 4)], 4, 10), // a scale-down in the period: start counts from 6
    ];
    for (past, current, allowed) in cases {
        let h = past
            .iter()
            .fold(history(), |h, &(s, from, to)| h.event(ago(s), from, to));
        let d = run(
            p.clone(),
            observation().replicas(current).reading("rps", 5000.0),
            h,
        );
        assert_eq!(d.desired, allowed, "after {past:?} at {current}");
    }
}

#[test]
fn scale_down_allowance_counts_replicas_removed_in_the_period() {
    let p = rps().scale_down(rules().pods(3, 60));
    let d = run(
        p.clone(),
        observation().replicas(8).reading("rps", 100.0),
        history().event(ago(20), 10, 8),
    );
    assert_eq!(d.desired, 7, "2 of 3 already removed in the period");
    let d = run(
        p,
        observation().replicas(7).reading("rps", 100.0),
        history().event(ago(20), 10, 7),
    );
    assert_eq!(d.desired, 7, "the allowance is used up");
    assert_eq!(d.limit.kind, LimitKind::ScaleDownLimit);
}

#[test]
fn select_policy_chooses_between_rate_policies() {
    // Scale up from 10 with +2 pods or +50% per minute.
    let up = |select| {
        run(
            rps().scale_up(rules().pods(2, 60).percent(50, 60).select(select)),
            observation().replicas(10).reading("rps", 5000.0),
            history(),
        )
        .desired
    };
    assert_eq!(up(SelectPolicy::Max), 15, "Max allows the most change");
    assert_eq!(up(SelectPolicy::Min), 12, "Min allows the least change");
    assert_eq!(
        up(SelectPolicy::Disabled),
        10,
        "Disabled forbids scaling up"
    );

    // Scale down from 10 with -2 pods or -50% per minute.
    let down = |select| {
        run(
            rps().scale_down(rules().pods(2, 60).percent(50, 60).select(select)),
            observation().replicas(10).reading("rps", 100.0),
            history(),
        )
        .desired
    };
    assert_eq!(down(SelectPolicy::Max), 5, "Max allows the most change");
    assert_eq!(down(SelectPolicy::Min), 8, "Min allows the least change");
    assert_eq!(
        down(SelectPolicy::Disabled),
        10,
        "Disabled forbids scaling down"
    );
}

#[test]
fn disabled_directions_report_their_limit() {
    let d = run(
        rps().scale_up(rules().select(SelectPolicy::Disabled)),
        observation().replicas(4).reading("rps", 900.0),
        history(),
    );
    assert_eq!((d.desired, d.limit.kind), (4, LimitKind::ScaleUpLimit));
    let d = run(
        rps().scale_down(rules().select(SelectPolicy::Disabled)),
        observation().replicas(4).reading("rps", 100.0),
        history(),
    );
    assert_eq!((d.desired, d.limit.kind), (4, LimitKind::ScaleDownLimit));
}

#[test]
fn each_limit_reports_its_reason() {
    // (min, max, current, rps, up pods per minute, desired, reason, ScalingLimited)
    let cases = [
        (1, 10, 4, 500.0, 4, 5, LimitKind::DesiredWithinRange, false),
        (1, 10, 4, 2000.0, 4, 8, LimitKind::ScaleUpLimit, true),
        (1, 10, 4, 2000.0, 100, 10, LimitKind::TooManyReplicas, true),
        (1, 6, 4, 2000.0, 4, 6, LimitKind::TooManyReplicas, true),
        (3, 10, 6, 100.0, 4, 3, LimitKind::TooFewReplicas, true),
        (1, 10, 4, 400.0, 4, 4, LimitKind::DesiredWithinRange, false),
    ];
    for (min, max, current, value, pods, desired, kind, limited) in cases {
        let d = run(
            rps().min(min).max(max).scale_up(rules().pods(pods, 60)),
            observation().replicas(current).reading("rps", value),
            history(),
        );
        let what = format!("[{min}, {max}] at {current} with {value} rps");
        assert_eq!((d.desired, d.limit.kind), (desired, kind), "{what}");
        let c = condition(&d, ConditionType::ScalingLimited);
        assert_eq!((c.status, c.reason), (limited, kind.as_str()), "{what}");
    }
}

#[test]
fn a_scale_down_rate_limit_above_min_replicas_reports_scale_down_limit() {
    let d = run(
        rps().min(2).scale_down(rules().pods(1, 60)),
        observation().replicas(6).reading("rps", 100.0),
        history(),
    );
    assert_eq!((d.desired, d.limit.kind), (5, LimitKind::ScaleDownLimit));
    assert!(
        d.limit.message.contains("(1 wanted, 5 allowed)"),
        "{}",
        d.limit.message
    );
}

#[test]
fn a_count_outside_the_range_moves_to_the_nearest_bound_first() {
    let d = run(
        rps().min(2).max(5),
        observation().replicas(8).reading("rps", 800.0),
        history(),
    );
    assert_eq!((d.desired, d.limit.kind), (5, LimitKind::TooManyReplicas));
    let d = run(
        rps().min(4).max(10),
        observation().replicas(1).reading("rps", 100.0),
        history(),
    );
    assert_eq!((d.desired, d.limit.kind), (4, LimitKind::TooFewReplicas));
}

#[test]
fn able_to_scale_says_ready_when_no_window_held_the_count() {
    let d = run(
        rps(),
        observation().replicas(4).reading("rps", 600.0),
        history(),
    );
    let c = condition(&d, ConditionType::AbleToScale);
    assert_eq!((c.status, c.reason), (true, "ReadyForNewScale"));
}
