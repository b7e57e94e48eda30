//! The binary run as `kubectl-drainscaler` (a symlink, as kubectl finds plugins on the PATH):
//! the view of saved objects, and errors a person can act on. No cluster needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const NOW: &str = "2026-11-29T08:00:00Z";

/// This process's scratch directory.
fn scratch() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// A `kubectl-drainscaler` symlink to the built binary; made once, as tests run in threads.
fn plugin() -> PathBuf {
    static LINK: OnceLock<PathBuf> = OnceLock::new();
    LINK.get_or_init(|| {
        let link = scratch().join("kubectl-drainscaler");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_drainscaler"), &link).expect("symlink");
        link
    })
    .clone()
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plugin/chat.yaml")
        .display()
        .to_string()
}

/// Runs the plugin with no kubeconfig around; returns (success, stdout, stderr).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let home = scratch().join("home");
    let mut cmd = Command::new(plugin());
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("NO_COLOR")
        .env("HOME", &home);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the plugin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn run_as_kubectl_drainscaler_it_shows_a_saved_policy_without_colour_on_a_pipe() {
    let (ok, out, err) = run(&["--from-file", &fixture(), "--now", NOW, "chat"], &[]);
    assert!(ok, "{err}");
    assert_eq!(err, "");
    assert!(
        out.starts_with("ScalingPolicy prod/chat  ->  Deployment/chat  (min 2, max 10)\n"),
        "{out}"
    );
    for line in [
        "Replicas:   current 4, desired 3; 26 sessions",
        "  sessions  26           / 10 per replica  wants 3",
        "  Draining=True DrainInProgress (10m ago): 2 instances draining",
        "  NAME              STATE           SESSIONS  HEARTBEAT  AGE",
        "  chat-5d8f7-bbbbb  draining 2m30s  3         <30s       50m",
        "  chat-5d8f7-eeeee  lost            4         5m ago     40m",
        "  20m  ScaledUp           scaled up from 3 to 5 replicas: sessions asks for 5",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in\n{out}");
    }
    assert!(!out.contains('\x1b'), "colour on a pipe:\n{out}");
}

#[test]
fn a_namespace_filters_the_file_and_json_is_for_scripts() {
    let (ok, out, err) = run(&["--from-file", &fixture(), "-n", "dev"], &[]);
    assert!(ok, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim(), "No ScalingPolicies found in namespace dev.");

    let (ok, out, err) = run(
        &["--from-file", &fixture(), "-n", "prod", "-o", "json"],
        &[],
    );
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(json["policies"][0]["name"], "chat");
    assert_eq!(
        json["policies"][0]["pods"].as_array().map(Vec::len),
        Some(6)
    );
}

#[test]
fn an_unknown_policy_says_which_there_are() {
    let (ok, out, err) = run(&["--from-file", &fixture(), "chta"], &[]);
    assert!(!ok);
    assert_eq!(out, "");
    assert_eq!(
        err.trim(),
        "error: no ScalingPolicy \"chta\" in any namespace; there are: chat"
    );
}

#[test]
fn a_missing_or_unreadable_file_is_named_with_the_reason() {
    let (ok, _, err) = run(&["--from-file", "/nonexistent/saved.yaml"], &[]);
    assert!(!ok);
    assert!(
        err.starts_with("error: reading /nonexistent/saved.yaml: No such file or directory"),
        "{err}"
    );
    let cargo_toml = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let (ok, _, err) = run(&["--from-file", cargo_toml.to_str().expect("utf-8")], &[]);
    assert!(!ok);
    assert!(
        err.contains("Cargo.toml is not a saved list of objects (kubectl get scalingpolicy,pods,events -o yaml)"),
        "{err}"
    );
}

#[test]
fn without_a_cluster_it_says_so_and_offers_from_file() {
    let (ok, _, err) = run(&[], &[("KUBECONFIG", "/nonexistent/kubeconfig")]);
    assert!(!ok);
    assert!(err.starts_with("error: no cluster to talk to: "), "{err}");
    assert!(err.contains("--from-file"), "{err}");
}

#[test]
fn an_unreachable_cluster_is_named_by_the_chosen_context() {
    let kubeconfig = scratch().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        r#"apiVersion: v1
kind: Config
clusters:
- {name: one, cluster: {server: "https://127.0.0.1:1"}}
- {name: two, cluster: {server: "https://127.0.0.1:2"}}
users: [{name: u, user: {token: t}}]
contexts:
- {name: one, context: {cluster: one, user: u, namespace: ns1}}
- {name: two, context: {cluster: two, user: u}}
current-context: one
"#,
    )
    .expect("write the kubeconfig");
    let path = kubeconfig.to_str().expect("utf-8");
    let (ok, _, err) = run(&["--kubeconfig", path], &[]);
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot reach the cluster at https://127.0.0.1:1/"),
        "{err}"
    );
    let (ok, _, err) = run(&["--context", "two"], &[("KUBECONFIG", path)]);
    assert!(!ok);
    assert!(
        err.starts_with("error: cannot reach the cluster at https://127.0.0.1:2/"),
        "{err}"
    );
}

/// Runs the plugin on a pseudo-terminal (util-linux `script`); returns what the terminal got.
fn on_a_terminal(args: &[&str], no_color: Option<&str>) -> String {
    let command = std::iter::once(plugin().display().to_string())
        .chain(args.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &command, "/dev/null"])
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        cmd.env("NO_COLOR", v);
    }
    let out = cmd.output().expect("run script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn on_a_terminal_it_is_coloured_unless_no_color_is_set() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipping: no `script` to make a terminal");
        return;
    }
    let args = ["--from-file", &fixture(), "--now", NOW];
    let coloured = on_a_terminal(&args, None);
    assert!(coloured.contains("\x1b[31mlost"), "{coloured}");
    let plain = on_a_terminal(&args, Some("1"));
    assert!(plain.contains("lost"), "{plain}");
    assert!(!plain.contains('\x1b'), "{plain}");
    // An empty NO_COLOR does not count (no-color.org).
    assert!(on_a_terminal(&args, Some("")).contains('\x1b'));
}
