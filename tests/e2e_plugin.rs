//! `kubectl drainscaler` against the local control plane: kubectl finds the plugin on the PATH
//! and it shows a policy that just scaled up on load. Run with `DRAINSCALER_E2E=1` after
//! `scripts/cluster up` and `eval "$(scripts/cluster env)"`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{
    app_with_controller, apply, event_reasons, kubectl_result, policy, sessions_spec,
    spec_replicas, traffic, traffic_summary, wait_for,
};

/// A directory holding a `kubectl-drainscaler` symlink to the built binary, for the PATH.
fn plugin_dir() -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the plugin");
    let link = dir.join("kubectl-drainscaler");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_drainscaler"), &link).expect("symlink");
    dir
}

/// `kubectl drainscaler ARGS` with the plugin first on the PATH; fails the test if it fails.
fn kubectl_drainscaler(dir: &Path, args: &[&str]) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    // SAFETY: set before any thread of this test reads the environment; tests in this file do
    // not run concurrently with another writer of PATH.
    unsafe { std::env::set_var("PATH", format!("{}:{path}", dir.display())) };
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
    let dir = plugin_dir();
    let (ns, controller) = app_with_controller("plugin", 1);
    wait_for(Duration::from_secs(90), "one ready pod", || {
        support::ready_replicas(&ns.0, "chat") == 1
    });
    // A long scale-down window keeps the count up while the view is read.
    apply(&policy(&ns.0, "chat", &sessions_spec(600)));

    // About 3 sessions a second for 15s, each 60s long: ~45 sessions, 4 pods wanted.
    let load = traffic(
        &ns.0,
        "chat",
        &[
            "-shape",
            "constant:3",
            "-duration",
            "15s",
            "-fixed-length",
            "60s",
            "-seed",
            "3",
        ],
    );
    wait_for(Duration::from_secs(60), "a scale-up", || {
        spec_replicas(&ns.0, "chat") >= 3
    });
    wait_for(Duration::from_secs(30), "the ScaledUp event", || {
        event_reasons(&ns.0, "chat")
            .iter()
            .any(|(_, r)| r == "ScaledUp")
    });
    // The status lists every pod once the new ones report.
    wait_for(Duration::from_secs(60), "every pod reporting", || {
        let out = kubectl_drainscaler(&dir, &["-n", &ns.0, "chat", "-o", "json"]);
        let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        let pods = json["policies"][0]["pods"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        pods.len() >= 3 && pods.iter().all(|p| p["heartbeat"] == "Reporting")
    });

    let out = kubectl_drainscaler(&dir, &["-n", &ns.0, "chat"]);
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
    let serving = out.lines().filter(|l| l.contains(" serving ")).count();
    assert!(serving >= 3, "{serving} serving pods in\n{out}");
    assert!(!out.contains('\x1b'), "colour on a pipe:\n{out}");

    // The context's namespace is the default, as with kubectl.
    let (ok, _, err) = kubectl_result(&["drainscaler", "absent"], None);
    assert!(!ok);
    assert!(
        err.contains("no ScalingPolicy \"absent\" in namespace default"),
        "{err}"
    );
    let _ = traffic_summary(load);
}
