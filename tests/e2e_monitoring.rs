//! The gauges the monitoring manifests' alerts read, from a real controller's `/metrics` on the
//! local plane: `drainscaler_leader` once it leads, `drainscaler_policy_ready` 0 while a policy
//! is blocked (its target missing) and 1 once it reconciles, with its drain timeout, heartbeat
//! and silence gauges. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up` and
//! `eval "$(scripts/cluster env)"`.

mod support;

use std::time::Duration;

use support::{
    Controller, Namespace, apply, condition, enabled, http, install_crd, policy, sample,
    session_app, sessions_spec, wait_for,
};

#[test]
fn the_alerting_gauges_follow_a_blocked_policy_and_its_recovery() {
    if !enabled("the_alerting_gauges_follow_a_blocked_policy_and_its_recovery") {
        return;
    }
    install_crd();
    let ns = Namespace::new("monitoring-gauges");
    let controller = Controller::start(&ns.0, &[]);
    let page = || http("GET", &controller.metrics_addr, "/metrics", &[], "").1;
    let series = |family: &str| {
        format!(
            r#"drainscaler_{family}{{namespace="{}",policy="chat"}}"#,
            ns.0
        )
    };

    wait_for(Duration::from_secs(60), "drainscaler_leader 1", || {
        sample(&page(), "drainscaler_leader") == Some(1.0)
    });

    // The Deployment does not exist yet: the policy is blocked (Ready False, TargetNotFound).
    apply(&policy(&ns.0, "chat", &sessions_spec(30)));
    wait_for(Duration::from_secs(60), "the policy to be blocked", || {
        condition(&ns.0, "chat", "Ready").is_some_and(|(status, _, _)| status == "False")
    });
    wait_for(Duration::from_secs(30), "policy_ready 0", || {
        sample(&page(), &series("policy_ready")) == Some(0.0)
    });

    apply(&session_app(
        &ns.0,
        "chat",
        1,
        &format!("http://{}", controller.addr),
    ));
    wait_for(Duration::from_secs(90), "policy_ready 1", || {
        sample(&page(), &series("policy_ready")) == Some(1.0)
    });
    let now = page();
    for (family, value) in [
        ("drain_timeout_seconds", 300.0),
        ("fallback_active", 0.0),
        ("heartbeats_missing", 0.0),
    ] {
        assert_eq!(
            sample(&now, &series(family)),
            Some(value),
            "{} in\n{now}",
            series(family)
        );
    }
    assert!(
        sample(&now, &series("silent_instances")).is_some(),
        "{} missing from\n{now}",
        series("silent_instances")
    );
    assert!(
        !now.contains(&series("oldest_drain_start_timestamp_seconds")),
        "nothing drains, yet\n{now}"
    );
}
