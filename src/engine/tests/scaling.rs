//! Metrics to a serving count: several metrics, activation and zero, failing metrics, the
//! fallback, and the `paused` and `dryRun` modes.

use crate::engine::behavior::LimitKind;
use crate::engine::tests::{condition, events, run};
use crate::engine::{ConditionType, EventReason, Mode, Reading};
use crate::testing::{PolicyBuilder, ago, history, observation, pod, policy, rules, secs};

/// Rates wide enough not to interfere, no stabilization.
fn quick() -> PolicyBuilder {
    policy()
        .max(100)
        .scale_up(rules().percent(1000, 15))
        .scale_down(rules().percent(100, 15))
}

#[test]
fn several_metrics_take_the_largest_count_any_of_them_asks_for() {
    let d = run(
        quick().average("rps", 100.0).average("queue", 10.0),
        observation()
            .replicas(4)
            .reading("rps", 300.0)
            .reading("queue", 70.0),
        history(),
    );
    assert_eq!(d.recommendation, 7);
    assert_eq!(d.desired, 7);
    let asks: Vec<Option<u32>> = d.metrics.iter().map(|m| m.replicas).collect();
    assert_eq!(asks, [Some(3), Some(7)]);
    let active = condition(&d, ConditionType::ScalingActive);
    assert_eq!(active.reason, "ValidMetricFound");
    assert_eq!(
        active.message,
        "computing replicas from metrics: rps asks for 3, queue asks for 7"
    );
}

#[test]
fn the_sessions_metric_sums_what_the_instances_report() {
    let d = run(
        quick().heartbeat(secs(30)).sessions_metric(80.0),
        observation().pods([
            pod("a").ready().sessions(100),
            pod("b").ready().sessions(150),
            pod("c").ready().sessions(130),
        ]),
        history(),
    );
    assert_eq!(d.metrics[0].reading, Reading::Value(380.0));
    assert_eq!(d.recommendation, 5);
    assert_eq!(d.instances.sessions, 380);
}

#[test]
fn the_sessions_metric_waits_one_timeout_for_heartbeats_after_a_restart() {
    let seen = || {
        observation().pods([
            pod("a").ready().sessions(100),
            pod("b").ready(), // has not reported yet
        ])
    };
    let p = quick().heartbeat(secs(30)).sessions_metric(80.0);
    let d = run(p.clone(), seen().heartbeats_since(ago(10)), history());
    assert_eq!(
        d.metrics[0].reading,
        Reading::Pending {
            reason: "waiting for heartbeats: 1 of 2 instances have not reported yet".to_owned()
        }
    );
    assert_eq!(d.desired, 2, "a pending metric holds the count");
    let active = condition(&d, ConditionType::ScalingActive);
    assert_eq!(
        (active.status, active.reason),
        (false, "WaitingForHeartbeats")
    );
    assert!(
        active
            .message
            .contains("metric sessions is waiting for heartbeats: 1 of 2"),
        "{}",
        active.message
    );
    assert!(
        events(&d, EventReason::MetricUnavailable).is_empty(),
        "waiting is not a failure"
    );

    // Not a failure: the fallback does not come closer, and earlier failures stand.
    let fb = p.clone().fallback(1, 5);
    let d = run(fb.clone(), seen().heartbeats_since(ago(10)), history());
    assert!(!d.fallback_active, "no fallback for a new leader's wait");
    assert_eq!(d.failures, 0);
    let c = condition(&d, ConditionType::Fallback);
    assert_eq!((c.status, c.reason), (false, "MetricsPending"));
    let d = run(
        fb.fallback(3, 5),
        seen().heartbeats_since(ago(10)),
        history().failures(2),
    );
    assert_eq!((d.failures, d.fallback_active), (2, false));

    let d = run(p, seen().heartbeats_since(ago(30)), history());
    assert_eq!(d.metrics[0].reading, Reading::Value(100.0));
    assert_eq!(d.metrics[0].replicas, Some(2));
}

#[test]
fn from_zero_any_metric_above_its_activation_threshold_starts_one_replica() {
    // (rps, activation, desired) with 0 running and minReplicas 0
    let cases = [
        (50.0, 10.0, 1),
        (10.0, 10.0, 0), // at the threshold: idle
        (5.0, 10.0, 0),
        (0.5, 0.0, 1),
        (0.0, 0.0, 0),
    ];
    for (value, activation, desired) in cases {
        let d = run(
            quick().min(0).average("rps", 100.0).activation(activation),
            observation().replicas(0).reading("rps", value),
            history(),
        );
        assert_eq!(d.desired, desired, "{value} rps, activation {activation}");
        assert_eq!(d.metrics[0].active, value > activation);
    }
}

#[test]
fn from_zero_the_default_behavior_adds_at_most_four_pods() {
    let d = run(
        policy().min(0).max(100).average("rps", 100.0),
        observation().replicas(0).reading("rps", 5000.0),
        history(),
    );
    assert_eq!((d.desired, d.limit.kind), (4, LimitKind::ScaleUpLimit));
}

#[test]
fn from_zero_one_replica_starts_even_when_scale_up_rules_allow_none() {
    let d = run(
        quick()
            .min(0)
            .average("rps", 100.0)
            .scale_up(rules().percent(100, 60)),
        observation().replicas(0).reading("rps", 500.0),
        history(),
    );
    assert_eq!(d.desired, 1, "100% of nothing is nothing; activation wins");
}

#[test]
fn when_every_metric_is_idle_the_count_falls_to_zero() {
    let d = run(
        quick()
            .min(0)
            .average("rps", 100.0)
            .activation(5.0)
            .average("queue", 1.0),
        observation()
            .replicas(3)
            .reading("rps", 4.0)
            .reading("queue", 0.0),
        history(),
    );
    assert_eq!(d.recommendation, 0);
    assert_eq!(d.desired, 0);
}

#[test]
fn one_active_metric_keeps_the_workload_up() {
    let d = run(
        quick()
            .min(0)
            .average("rps", 100.0)
            .activation(5.0)
            .average("queue", 1.0),
        observation()
            .replicas(3)
            .reading("rps", 4.0)
            .reading("queue", 2.0),
        history(),
    );
    assert_eq!(d.recommendation, 2);
}

#[test]
fn activation_thresholds_matter_only_for_scaling_to_and_from_zero() {
    // With minReplicas 2 the workload never goes idle; below the activation threshold the
    // metric still sizes it (KEDA: the activation value is ignored when minReplicaCount > 0).
    let d = run(
        quick().min(2).average("rps", 100.0).activation(500.0),
        observation().replicas(6).reading("rps", 400.0),
        history(),
    );
    assert_eq!(d.recommendation, 4);
    assert_eq!(d.desired, 4);
}

#[test]
fn a_metric_without_a_reading_holds_the_current_count() {
    let d = run(
        quick().average("rps", 100.0),
        observation().replicas(5),
        history(),
    );
    assert_eq!((d.recommendation, d.desired, d.replicas), (5, 5, 5));
    assert!(d.metrics_failed);
    assert_eq!(
        d.metrics[0].reading,
        Reading::Unavailable {
            reason: "no reading was taken".to_owned()
        }
    );
    assert_eq!(
        events(&d, EventReason::MetricUnavailable),
        ["metric rps could not be read: no reading was taken; holding 5 replicas"]
    );
    let active = condition(&d, ConditionType::ScalingActive);
    assert_eq!((active.status, active.reason), (false, "FailedGetMetrics"));
}

#[test]
fn a_failing_metric_never_lets_the_others_scale_down() {
    let seen = |rps: f64| {
        observation()
            .replicas(6)
            .reading("rps", rps)
            .failing("queue", "prometheus: connection refused")
    };
    let p = quick().average("rps", 100.0).average("queue", 10.0);
    let d = run(p.clone(), seen(200.0), history());
    assert_eq!(d.desired, 6, "rps asks for 2, queue is unknown");
    let d = run(p, seen(900.0), history());
    assert_eq!(
        d.desired, 9,
        "scaling up on the metrics that were read is safe"
    );
    let active = condition(&d, ConditionType::ScalingActive);
    assert_eq!((active.status, active.reason), (true, "ValidMetricFound"));
}

#[test]
fn failures_below_the_threshold_hold_the_count() {
    let d = run(
        quick().average("rps", 100.0).fallback(3, 8),
        observation()
            .replicas(4)
            .failing("rps", "timeout")
            .pods((0..4).map(|i| pod(&format!("p{i}")).ready())),
        history().failures(1),
    );
    assert!(!d.fallback_active);
    assert_eq!(d.desired, 4);
    let c = condition(&d, ConditionType::Fallback);
    assert_eq!((c.status, c.reason), (false, "MetricsFailing"));
    assert_eq!(
        c.message,
        "2 consecutive failed readings; holding the current count"
    );
}

#[test]
fn after_failure_threshold_failures_the_fallback_count_applies_upward_at_once() {
    let d = run(
        quick()
            .average("rps", 100.0)
            .fallback(3, 8)
            .scale_up(rules().pods(1, 60)),
        observation().replicas(4).failing("rps", "timeout"),
        history().failures(2),
    );
    assert!(d.fallback_active);
    assert_eq!(d.desired, 8, "no rate limit on the way up to the fallback");
    assert_eq!(d.replicas, 8);
    let c = condition(&d, ConditionType::Fallback);
    assert_eq!((c.status, c.reason), (true, "FallbackActive"));
    assert_eq!(
        c.message,
        "metrics failed 3 times in a row (threshold 3); running 8 replicas"
    );
    assert_eq!(
        events(&d, EventReason::FallbackActive),
        ["metrics failed 3 times in a row (threshold 3); moving to the fallback of 8 replicas"]
    );
}

#[test]
fn the_fallback_count_is_reached_downward_only_through_draining() {
    let d = run(
        quick()
            .average("rps", 100.0)
            .heartbeat(secs(30))
            .fallback(1, 2),
        observation().failing("rps", "timeout").ready_pods(4, 10),
        history(),
    );
    assert!(d.fallback_active);
    assert_eq!(d.desired, 2);
    assert_eq!(d.plan.start.len(), 2, "two pods drain");
    assert!(d.plan.remove.is_empty(), "none is removed with sessions");
    assert_eq!(d.replicas, 4);
}

#[test]
fn readings_that_recover_end_the_fallback_and_reset_the_count() {
    let d = run(
        quick().average("rps", 100.0).fallback(3, 8),
        observation().replicas(4).reading("rps", 400.0),
        history().failures(7),
    );
    assert!(!d.fallback_active);
    assert!(!d.metrics_failed);
    assert_eq!(d.desired, 4);
    let c = condition(&d, ConditionType::Fallback);
    assert_eq!((c.status, c.reason), (false, "MetricsAvailable"));
}

#[test]
fn paused_changes_nothing_and_says_why() {
    let d = run(
        quick().average("rps", 100.0).heartbeat(secs(30)).paused(),
        observation()
            .reading("rps", 100.0)
            .ready_pods(4, 0)
            .pods([pod("d").ready().sessions(0).draining_since(ago(60))]),
        history(),
    );
    assert_eq!(d.mode, Mode::Paused);
    assert_eq!((d.current, d.desired, d.replicas), (4, 4, 5));
    assert!(d.plan.start.is_empty() && d.plan.remove.is_empty() && d.plan.cancel.is_empty());
    assert!(d.plan.mark_removable.is_empty() && d.plan.replace.is_empty());
    let c = condition(&d, ConditionType::ScalingActive);
    assert_eq!((c.status, c.reason), (false, "Paused"));
}

#[test]
fn dry_run_decides_and_reports_what_it_would_do() {
    let d = run(
        quick().average("rps", 100.0).heartbeat(secs(30)).dry_run(),
        observation().reading("rps", 200.0).ready_pods(4, 3),
        history(),
    );
    assert_eq!(d.mode, Mode::DryRun);
    assert_eq!(d.desired, 2);
    assert_eq!(d.plan.start.len(), 2, "the plan says what would be drained");
    let c = condition(&d, ConditionType::ScalingActive);
    assert_eq!((c.status, c.reason), (true, "DryRun"));
    assert_eq!(
        c.message,
        "spec.dryRun is true: would run 2 serving replicas, changing nothing"
    );
}
