//! `kubectl drainscaler` against the local control plane: kubectl finds the plugin on the PATH
//! and it shows a policy that just scaled up on load. Run with `DRAINSCALER_E2E=1` after
//! `scripts/cluster up` and `eval "$(scripts/cluster env)"`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{
    app_with_controller, apply, event_reasons, kubectl_result, policy, sessions_spec,
    spec_replicas, steady_load, traffic_summary, wait_for,
};

/// Puts a `kubectl-drainscaler` symlink to the built binary first on the PATH, as a user
/// installs the plugin.
fn install_plugin() {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the plugin");
    let link = dir.join("kubectl-drainscaler");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_drainscaler"), &link).expect("symlink");
    let path = std::env::var("PATH").unwrap_or_default();
    // SAFETY: the only test in this file sets it first, before it starts any thread.
    unsafe { std::env::set_var("PATH", format!("{}:{path}", dir.display())) };
}

/// `kubectl drainscaler ARGS`; fails the test if it fails.
fn kubectl_drainscaler(args: &[&str]) -> String {
    let mut all = vec!["drainscaler"];
    all.extend(args);
    let (ok, out, err) = kubectl_result(&all, None);
    assert!(ok, "kubectl drainscaler {}: {err}", args.join(" "));
    out
}

#[test]
fn kubectl_drainscaler_shows_a_policy_that_scaled_up_with_its_pods_and_reasons() {
    if !support::enabled("kubectl_drainscaler_shows_a_policy_that_scaled_up") {
        return;
    }
    install_plugin();
    let (ns, controller) = app_with_controller("plugin", 1);
    wait_for(Duration::from_secs(90), "one ready pod", || {
        support::ready_replicas(&ns.0, "chat") == 1
    });
    // A long scale-down window keeps the count up while the view is read.
    apply(&policy(&ns.0, "chat", &sessions_spec(600)));

    // About 3 sessions a second for 15s, each 60s long: ~45 sessions, 4 pods wanted.
    let load = steady_load(&ns.0, "chat", 3, 15, 60, 3);
    wait_for(Duration::from_secs(60), "a scale-up", || {
        spec_replicas(&ns.0, "chat") >= 3
    });
    wait_for(Duration::from_secs(30), "the ScaledUp event", || {
        event_reasons(&ns.0, "chat")
            .iter()
            .any(|(_, r)| r == "ScaledUp")
    });
    // New pods are shown from their creation; wait until three serve and report.
    let mut out = String::new();
    wait_for(
        Duration::from_secs(90),
        "three serving pods in the view",
        || {
            out = kubectl_drainscaler(&["-n", &ns.0, "chat"]);
            out.lines().filter(|l| l.contains(" serving ")).count() >= 3
        },
    );
    eprintln!("kubectl drainscaler -n {} chat:\n{out}", ns.0);
    let header = format!(
        "ScalingPolicy {}/chat  ->  Deployment/chat  (min 1, max 4)",
        ns.0
    );
    assert!(out.starts_with(&header), "{out}");
    for want in [
        "Replicas:   current ",
        "Metrics:\n  sessions  ",
        "/ 10 per replica  wants ",
        "  NAME ",
        " serving ",
        "<20s",
        "Last decisions:",
        "ScaledUp",
        "scaled up from 1 to ",
    ] {
        assert!(
            out.contains(want),
            "no {want:?} in\n{out}\n{}",
            controller.logs()
        );
    }
    assert!(!out.contains('\x1b'), "colour on a pipe:\n{out}");

    let all = kubectl_drainscaler(&["-A", "-o", "json"]);
    let all: serde_json::Value = serde_json::from_str(&all).expect("JSON");
    let listed = all["policies"].as_array().cloned().unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|p| p["namespace"] == ns.0.as_str() && p["name"] == "chat"),
        "-A does not list {}/chat",
        ns.0
    );

    // The context's namespace is the default, as with kubectl.
    let (ok, _, err) = kubectl_result(&["drainscaler", "absent"], None);
    assert!(!ok);
    assert!(
        err.contains("no ScalingPolicy \"absent\" in namespace default"),
        "{err}"
    );
    let _ = traffic_summary(load);
}
