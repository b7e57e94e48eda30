//! A policy's life cycle on the local control plane: deleted, paused or put in dry run while
//! a pod drains, drainscaler lets go of the target and no pod is left out of its Service with
//! the lowest deletion cost. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up` and
//! `eval "$(scripts/cluster env)"`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    Controller, Namespace, dropped_sessions, enabled, install_crd, kubectl, kubectl_json,
    kubectl_result, pod_sessions, policy, policy_events, spec_replicas, start_draining,
    status_condition, traffic_summary, wait_for,
};

const FINALIZER: &str = "drainscaler.io/restore-pods";

/// Why `pod` still carries a drain mark, if it does.
fn marked(ns: &str, pod: &str) -> Option<String> {
    let p = kubectl_json(&["-n", ns, "get", "pod", pod]);
    let meta = &p["metadata"];
    let annotations = &meta["annotations"];
    for key in [
        "drainscaler.io/draining",
        "drainscaler.io/draining-since",
        "controller.kubernetes.io/pod-deletion-cost",
    ] {
        if !annotations[key].is_null() {
            return Some(format!("annotation {key}: {}", annotations[key]));
        }
    }
    let serving = &meta["labels"]["drainscaler.io/serving"];
    (serving != "true").then(|| format!("label drainscaler.io/serving: {serving}"))
}

/// The `DrainCancelled` notes about the policy `chat`.
fn cancellations(ns: &str) -> Vec<String> {
    policy_events(ns, "chat", Some("DrainCancelled"))
        .iter()
        .filter_map(|e| e["message"].as_str().map(str::to_owned))
        .collect()
}

/// A pod draining mid-way under the policy `chat`: three pods, one marked while it still holds
/// sessions. Returns the namespace, the controller, the drained pods and the traffic.
fn mid_drain(name: &str) -> (Namespace, Controller, Vec<String>, std::process::Child) {
    install_crd();
    let ns = Namespace::new(name);
    let controller = Controller::start(&ns.0, &[]);
    let load = start_draining(&ns, &controller, 12, 25);
    let drained = support::draining(&ns.0);
    for pod in &drained {
        assert!(
            pod_sessions(&ns.0, pod) > 0,
            "pod {pod} was already empty: not mid-drain"
        );
    }
    let sp = kubectl_json(&["-n", &ns.0, "get", "scalingpolicy", "chat"]);
    assert!(
        sp["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER)),
        "a policy that drained carries no {FINALIZER} finalizer: {}",
        sp["metadata"]
    );
    (ns, controller, drained, load)
}

fn assert_restored(ns: &str, drained: &[String]) {
    for pod in drained {
        assert_eq!(
            marked(ns, pod),
            None,
            "pod {pod} still carries a drain mark"
        );
    }
}

#[test]
fn deleting_a_policy_mid_drain_puts_its_pods_back_into_service_and_lets_it_go() {
    if !enabled("deleting_a_policy_mid_drain_puts_its_pods_back_into_service_and_lets_it_go") {
        return;
    }
    let (ns, _controller, drained, load) = mid_drain("delete-mid-drain");
    kubectl(&[
        "-n",
        &ns.0,
        "delete",
        "scalingpolicy",
        "chat",
        "--wait=false",
    ]);
    wait_for(Duration::from_secs(30), "the policy to be gone", || {
        let (found, _, err) = kubectl_result(&["-n", &ns.0, "get", "scalingpolicy", "chat"], None);
        assert!(found || err.contains("NotFound"), "{err}");
        !found
    });
    // The finalizer went only after the restore: no wait needed.
    assert_restored(&ns.0, &drained);
    assert_eq!(
        spec_replicas(&ns.0, "chat"),
        3,
        "a deleted policy changed the replica count"
    );
    wait_for(Duration::from_secs(30), "the DrainCancelled event", || {
        cancellations(&ns.0)
            .iter()
            .any(|n| n.contains("being deleted") && drained.iter().all(|p| n.contains(p.as_str())))
    });
    let summary = traffic_summary(load);
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{summary}");
    assert_eq!(dropped_sessions(&ns.0), 0);
}

/// Sets `field` (`paused` or `dryRun`) on the policy mid-drain: the drain is cancelled, its pod
/// serves again and the count holds, while the finalizer stays for a later deletion.
fn letting_go_mid_drain(name: &str, field: &str, scaling_active: (&str, &str)) {
    let (ns, _controller, drained, load) = mid_drain(name);
    kubectl(&[
        "-n",
        &ns.0,
        "patch",
        "scalingpolicy",
        "chat",
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"{field}":true}}}}"#),
    ]);
    wait_for(
        Duration::from_secs(30),
        "the drained pods to serve again",
        || drained.iter().all(|p| marked(&ns.0, p).is_none()),
    );
    wait_for(Duration::from_secs(30), "the DrainCancelled event", || {
        cancellations(&ns.0).iter().any(|n| {
            n.starts_with(&format!("spec.{field}:"))
                && drained.iter().all(|p| n.contains(p.as_str()))
        })
    });
    // The status written once the marks are gone shows no drain and says why.
    wait_for(Duration::from_secs(30), "a status without drains", || {
        let sp = kubectl_json(&["-n", &ns.0, "get", "scalingpolicy", "chat"]);
        let status = &sp["status"];
        let observed = status["observedGeneration"] == sp["metadata"]["generation"];
        let active = status_condition(status, "ScalingActive")
            .is_some_and(|(s, r, _)| (s.as_str(), r.as_str()) == scaling_active);
        observed && active && status["draining"].as_array().is_none_or(Vec::is_empty)
    });
    assert_restored(&ns.0, &drained);
    assert_eq!(
        spec_replicas(&ns.0, "chat"),
        3,
        "spec.{field} changed the replica count"
    );
    let sp: Value = kubectl_json(&["-n", &ns.0, "get", "scalingpolicy", "chat"]);
    assert!(
        sp["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER)),
        "spec.{field} dropped the finalizer"
    );
    let summary = traffic_summary(load);
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{summary}");
    assert_eq!(dropped_sessions(&ns.0), 0);
    // Nothing drains again while it lasts.
    assert!(
        support::draining(&ns.0).is_empty(),
        "a pod drains under spec.{field}"
    );
}

#[test]
fn pausing_a_policy_mid_drain_cancels_the_drain_and_holds_the_count() {
    if !enabled("pausing_a_policy_mid_drain_cancels_the_drain_and_holds_the_count") {
        return;
    }
    letting_go_mid_drain("pause-mid-drain", "paused", ("False", "Paused"));
}

#[test]
fn a_dry_run_set_mid_drain_cancels_the_drain_and_holds_the_count() {
    if !enabled("a_dry_run_set_mid_drain_cancels_the_drain_and_holds_the_count") {
        return;
    }
    letting_go_mid_drain("dry-run-mid-drain", "dryRun", ("True", "DryRun"));
}

#[test]
fn a_policy_whose_target_is_gone_is_deleted_without_delay() {
    if !enabled("a_policy_whose_target_is_gone_is_deleted_without_delay") {
        return;
    }
    install_crd();
    let ns = Namespace::new("delete-no-target");
    let _controller = Controller::start(&ns.0, &[]);
    support::apply(&policy(&ns.0, "absent", &support::sessions_spec(4)));
    wait_for(Duration::from_secs(30), "the finalizer", || {
        let sp = kubectl_json(&["-n", &ns.0, "get", "scalingpolicy", "absent"]);
        sp["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
    });
    kubectl(&[
        "-n",
        &ns.0,
        "delete",
        "scalingpolicy",
        "absent",
        "--wait=false",
    ]);
    wait_for(Duration::from_secs(30), "the policy to be gone", || {
        !kubectl_result(&["-n", &ns.0, "get", "scalingpolicy", "absent"], None).0
    });
}
