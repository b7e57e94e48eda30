//! drainscaler deployed from `manifests/` as a user would, through `examples/demo` (which adapts
//! them to the local node) or, on the real node (`DRAINSCALER_NODE=kubelet`), through
//! `examples/demo/node` with drainscaler's image built from the Dockerfile's final stage
//! (`scripts/cluster drainscaler-image`, which `scripts/e2e` runs just before): two replicas
//! with in-cluster config from their ServiceAccount, one leader behind the heartbeat Service,
//! a wave of sessions scaled up and drained down without a drop, and a leader that dies and is
//! replaced. Run with `DRAINSCALER_E2E=1` after
//! `scripts/cluster up` and `eval "$(scripts/cluster env)"`.
//!
//! The manifests name their namespaces (`drainscaler-system`, `demo`) and cluster-scoped RBAC,
//! so this is the only test that touches them; it removes them before and after.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use drainscaler::leader::{LEASE_DURATION, RETRY_PERIOD};
use serde_json::Value;
use support::{
    POLICY_COLUMNS, apply, drains_started, dropped_log_end, dropped_sessions_since, enabled,
    event_reasons, follow_pod_logs, http, install_crd, kubectl, kubectl_json, kubectl_result,
    live_pods, map_image, pod_count, pod_name, pod_ready, policy_table, real_node,
    release_policies, repo, sample, spec_replicas, traffic, traffic_summary, wait_for,
};

const SYSTEM_NS: &str = "drainscaler-system";
const APP_NS: &str = "demo";
const CONTROLLERS: &str = "app.kubernetes.io/name=drainscaler";
const LEADER: &str = "app.kubernetes.io/name=drainscaler,drainscaler.io/leader=true";
const CHAT: &str = "app=chat";
const ACCEPTED_HEARTBEATS: &str = r#"drainscaler_heartbeats_total{result="accepted"}"#;

/// Removes what `kubectl apply -k examples/demo` creates, except the CRD that other tests share.
/// Says what failed rather than panicking, since it also runs while a failed test unwinds.
fn uninstall() {
    // The controller goes first: while it runs it puts its finalizer back on a policy whose
    // finalizer was released before the policy was being deleted. With it gone, the policy's
    // finalizer is released and the app's namespace can go.
    let steps: [&[&str]; 4] = [
        &[
            "delete",
            "namespace",
            SYSTEM_NS,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ],
        &[
            "delete",
            "namespace",
            APP_NS,
            "--ignore-not-found",
            "--wait=false",
        ],
        &[
            "delete",
            "clusterrole/drainscaler",
            "clusterrole/drainscaler-prometheus-secrets",
            "clusterrolebinding/drainscaler",
            "clusterrole/drainscaler-view",
            "clusterrole/drainscaler-edit",
            "--ignore-not-found",
        ],
        &[
            "delete",
            "validatingadmissionpolicybinding/drainscaler-pod-writes",
            "validatingadmissionpolicy/drainscaler-pod-writes",
            "--ignore-not-found",
        ],
    ];
    for args in steps {
        let (ok, _, err) = kubectl_result(args, None);
        if !ok {
            eprintln!("kubectl {}: {err}", args.join(" "));
        }
    }
    release_policies(APP_NS);
    let wait: &[&str] = &[
        "wait",
        "--for=delete",
        "namespace",
        APP_NS,
        "--timeout=120s",
    ];
    let (ok, _, err) = kubectl_result(wait, None);
    if !ok && !err.contains("not found") {
        eprintln!("kubectl {}: {err}", wait.join(" "));
    }
}

/// Uninstalls on drop, so that a failed run leaves nothing for the next.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        if std::env::var_os("DRAINSCALER_E2E_KEEP").is_none() {
            uninstall();
        }
    }
}

fn controller_logs() -> String {
    kubectl_result(
        &[
            "-n",
            SYSTEM_NS,
            "logs",
            "-l",
            CONTROLLERS,
            "--tail=40",
            "--prefix",
        ],
        None,
    )
    .1
}

fn leaders() -> Vec<String> {
    live_pods(SYSTEM_NS, LEADER).iter().map(pod_name).collect()
}

/// Both controller pods Ready and exactly one of them labelled leader; returns the leader.
fn controllers_settled() -> Option<String> {
    let pods = live_pods(SYSTEM_NS, CONTROLLERS);
    let leaders = leaders();
    (pods.len() == 2 && pods.iter().all(pod_ready) && leaders.len() == 1)
        .then(|| leaders[0].clone())
}

/// Heartbeats the controller in `pod` accepted, from its own `/metrics`.
fn accepted_heartbeats(pod: &str) -> f64 {
    let p = kubectl_json(&["-n", SYSTEM_NS, "get", "pod", pod]);
    let Some(ip) = p["status"]["podIP"].as_str() else {
        return 0.0;
    };
    let (_, page) = http("GET", &format!("{ip}:8081"), "/metrics", &[], "");
    sample(&page, ACCEPTED_HEARTBEATS).unwrap_or(0.0)
}

/// Deletes the leader's pod with `flags` and waits up to `within` for another pod to carry the
/// leader label and receive heartbeats; returns that pod.
fn kill_leader(leader: &str, flags: &[&str], within: Duration) -> String {
    let killed = Instant::now();
    let mut args = vec!["-n", SYSTEM_NS, "delete", "pod", leader];
    args.extend(flags);
    kubectl(&args);
    let mut successor = String::new();
    wait_for(
        within,
        "another pod to take the leader label",
        || match leaders().as_slice() {
            [one] if one != leader => {
                successor = one.clone();
                true
            }
            _ => false,
        },
    );
    eprintln!(
        "{successor} took over from {leader} ({}) in {:.1}s",
        flags.join(" "),
        killed.elapsed().as_secs_f64()
    );
    wait_for(
        Duration::from_secs(30),
        "heartbeats to reach the new leader",
        || accepted_heartbeats(&successor) > 0.0,
    );
    successor
}

/// The user the controller's pods act as (manifests/base/admission.yaml names it).
const CONTROLLER_USER: &str = "system:serviceaccount:drainscaler-system:drainscaler";

/// Patches pod `name` in the app's namespace as the controller's ServiceAccount would (the
/// test impersonates it); the API server's refusal, if any, as its code and message.
fn patch_as_controller(name: &str, patch: kube::api::Patch<Value>) -> Result<(), (u16, String)> {
    use k8s_openapi::api::core::v1::Pod;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut config = kube::Config::infer().await.expect("the plane's kubeconfig");
        config.auth_info.impersonate = Some(CONTROLLER_USER.to_owned());
        let client = kube::Client::try_from(config).expect("a client");
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, APP_NS);
        match pods
            .patch(name, &kube::api::PatchParams::default(), &patch)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) => Err((status.code, status.message)),
            Err(e) => panic!("patching {name} as {CONTROLLER_USER}: {e}"),
        }
    })
}

/// manifests/base/admission.yaml: the controller's ServiceAccount may write its own marks on a
/// pod (what the wave below needs) and nothing else, whatever RBAC allows.
fn the_controller_may_write_only_its_marks_on_pods() {
    use kube::api::Patch;
    let pod = "admission-check";
    // Never scheduled (no scheduler has that name), so it stays as written.
    apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  namespace: {APP_NS}\n  \
         labels: {{app: admission-check}}\n  annotations: {{owner: test}}\nspec:\n  \
         schedulerName: nobody\n  containers: [{{name: main, image: docker.io/library/busybox}}]\n"
    ));
    let allowed = [
        serde_json::json!({"metadata": {"labels": {"drainscaler.io/serving": "false"},
            "annotations": {"drainscaler.io/draining": "true",
                "controller.kubernetes.io/pod-deletion-cost": "-1000"}}}),
        serde_json::json!({"metadata": {"labels": {"drainscaler.io/serving": null},
            "annotations": {"drainscaler.io/draining": null,
                "controller.kubernetes.io/pod-deletion-cost": null}}}),
    ];
    for patch in allowed {
        if let Err((code, message)) = patch_as_controller(pod, Patch::Merge(patch.clone())) {
            panic!("the controller's own marks were refused ({code}): {patch}: {message}");
        }
    }
    let refused = [
        (
            "a label of the user's",
            Patch::Merge(serde_json::json!(
            {"metadata": {"labels": {"app": "hijacked"}}})),
        ),
        (
            "removing a label",
            Patch::Merge(serde_json::json!(
            {"metadata": {"labels": {"app": null}}})),
        ),
        (
            "an annotation of the user's",
            Patch::Merge(serde_json::json!(
            {"metadata": {"annotations": {"owner": "drainscaler"}}})),
        ),
        (
            "the image",
            Patch::Strategic(serde_json::json!(
            {"spec": {"containers": [{"name": "main", "image": "docker.io/evil/image"}]}})),
        ),
        (
            "a deadline",
            Patch::Merge(serde_json::json!(
            {"spec": {"activeDeadlineSeconds": 1}})),
        ),
        (
            "a finalizer",
            Patch::Merge(serde_json::json!(
            {"metadata": {"finalizers": ["example.com/hold"]}})),
        ),
    ];
    for (what, patch) in refused {
        match patch_as_controller(pod, patch) {
            Ok(()) => panic!("the controller's ServiceAccount could change {what} on a pod"),
            Err((code, message)) => {
                assert_eq!(code, 403, "{what}: {message}");
                assert!(
                    message.contains("drainscaler-pod-writes"),
                    "{what} refused, but not by the admission policy: {message}"
                );
            }
        }
    }
    let after = kubectl_json(&["-n", APP_NS, "get", "pod", pod]);
    assert_eq!(after["metadata"]["labels"]["app"], "admission-check");
    assert_eq!(after["metadata"]["annotations"]["owner"], "test");
    assert_eq!(
        after["spec"]["containers"][0]["image"],
        "docker.io/library/busybox"
    );
    kubectl(&["-n", APP_NS, "delete", "pod", pod, "--wait=false"]);
}

/// Whether `user` may `verb` ScalingPolicies in the app's namespace, by `kubectl auth can-i`.
fn may(user: &str, verb: &str) -> bool {
    let args = [
        "auth",
        "can-i",
        verb,
        "scalingpolicies.drainscaler.io",
        "-n",
        APP_NS,
        "--as",
        user,
    ];
    let (_, out, _) = kubectl_result(&args, None);
    out.trim() == "yes"
}

/// manifests/base/rbac.yaml's aggregated roles: the built-in view role reads policies (what
/// `kubectl drainscaler` needs), edit writes them.
fn people_with_view_read_policies_and_only_edit_writes_them() {
    for (user, role) in [("a-viewer", "view"), ("an-editor", "edit")] {
        kubectl(&[
            "-n",
            APP_NS,
            "create",
            "rolebinding",
            user,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }
    // The controller-manager aggregates the rules into the built-in roles.
    wait_for(
        Duration::from_secs(60),
        "the view and edit roles to take in drainscaler's rules",
        || may("a-viewer", "list") && may("an-editor", "patch"),
    );
    assert!(may("a-viewer", "watch") && may("a-viewer", "get"));
    assert!(
        !may("a-viewer", "patch") && !may("a-viewer", "create"),
        "view may write policies"
    );
    assert!(!may("nobody", "list"), "anyone may list policies");
}

/// drainscaler's image as the real node's containerd has it.
const IMAGE: &str = "docker.io/drainscaler/drainscaler:dev";
/// The heartbeat Service's ClusterIP that `examples/demo/node` pins (the plane has no DNS).
const HEARTBEAT_IP: &str = "10.96.0.80";

/// Deploys through `examples/demo/node` on the real node, drainscaler from its image, with this
/// plane's Prometheus (on the node's address) as scripts/demo adds it.
fn deploy_on_the_real_node() {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run `eval \"$(scripts/cluster env)\"` first")
        })
    };
    let state = var("DRAINSCALER_CLUSTER_STATE");
    let images = std::process::Command::new("ctr")
        .args(["--address", &format!("{state}/run/containerd.sock")])
        .args(["--namespace", "k8s.io", "images", "ls", "-q"])
        .output()
        .expect("run ctr (Debian's containerd package)");
    assert!(
        String::from_utf8_lossy(&images.stdout)
            .lines()
            .any(|l| l == IMAGE),
        "the node has no {IMAGE}: build it with `scripts/cluster drainscaler-image` (scripts/e2e does)"
    );
    assert_eq!(
        var("DRAINSCALER_SERVICE_CIDR"),
        "10.96.0.0/16",
        "examples/demo/node pins the heartbeat Service at {HEARTBEAT_IP}, which must be in the plane's Service range"
    );
    let prometheus_port = var("PROMETHEUS_URL")
        .rsplit_once(':')
        .map(|(_, port)| port.to_owned())
        .expect("PROMETHEUS_URL with a port");
    let overlay =
        std::env::temp_dir().join(format!("drainscaler-e2e-manifests-{}", std::process::id()));
    std::fs::create_dir_all(&overlay).expect("a directory for the overlay");
    // kustomize wants a relative path to a resource directory.
    let up = "../".repeat(overlay.components().count() - 1);
    let node = repo().join("examples/demo/node");
    let node = format!("{up}{}", node.display().to_string().trim_start_matches('/'));
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {node}
patches:
  - target: {{kind: Deployment, name: drainscaler}}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --prometheus-url=http://{}:{prometheus_port}
"#,
            var("DRAINSCALER_NODE_IP")
        ),
    )
    .expect("the overlay");
    kubectl(&["apply", "-k", overlay.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_dir_all(&overlay);
    let deployed = kubectl_json(&["-n", SYSTEM_NS, "get", "deployment", "drainscaler"]);
    assert_eq!(
        deployed["spec"]["template"]["spec"]["containers"][0]["image"],
        "drainscaler/drainscaler:dev",
        "manifests/ no longer names the image scripts/cluster drainscaler-image builds"
    );
}

fn policy() -> Value {
    kubectl_json(&["-n", APP_NS, "get", "scalingpolicy", "chat"])
}

#[test]
fn the_manifests_run_in_cluster_scale_a_wave_without_drops_and_survive_losing_the_leader() {
    if !enabled(
        "the_manifests_run_in_cluster_scale_a_wave_without_drops_and_survive_losing_the_leader",
    ) {
        return;
    }
    let started = Instant::now();
    uninstall();
    let _installed = Installed;
    install_crd();
    let drops_from = dropped_log_end();
    // On the real node, the chat pods' own logs are the record of sessions cut: followed from
    // before they start.
    let _logs = follow_pod_logs(APP_NS);
    if real_node() {
        deploy_on_the_real_node();
    } else {
        map_image("drainscaler/drainscaler", env!("CARGO_BIN_EXE_drainscaler"));
        kubectl(&[
            "apply",
            "-k",
            repo().join("examples/demo").to_str().expect("utf-8 path"),
        ]);
    }

    let mut leader = String::new();
    wait_for(
        Duration::from_secs(120),
        "both controller pods Ready, exactly one leader",
        || match controllers_settled() {
            Some(l) => {
                leader = l;
                true
            }
            None => false,
        },
    );
    wait_for(Duration::from_secs(120), "two ready chat pods", || {
        let pods = live_pods(APP_NS, CHAT);
        pods.len() == 2 && pods.iter().all(pod_ready)
    });
    the_controller_may_write_only_its_marks_on_pods();
    people_with_view_read_policies_and_only_edit_writes_them();

    // ~3 sessions a second for 40s, ~30s each (up to 90s): ~90 at the peak with 10 a pod
    // wanted. The tail keeps sessions arriving after the peak, and the generator sends each to
    // the pod with the fewest, so the pods removed on the way down (30s after the load falls)
    // still hold sessions and must be drained.
    let wave = repo().join("tests/fixtures/manifests-wave.csv");
    let mut load = traffic(
        APP_NS,
        "chat",
        &[
            "-shape",
            &format!("trace:{}", wave.display()),
            "-duration",
            "60s",
            "-mean-length",
            "30s",
            "-max-length",
            "90s",
            "-seed",
            "7",
        ],
    );
    let mut most_replicas = 0;
    let mut most_sessions = 0;
    wait_for(
        Duration::from_secs(360),
        "a scale-up above 2 and the drain back down to 2 after the wave",
        || {
            let replicas = spec_replicas(APP_NS, "chat");
            if replicas > 2 && most_replicas <= 2 {
                eprintln!(
                    "scaled to {replicas} at {:.0}s",
                    started.elapsed().as_secs_f64()
                );
            }
            most_replicas = most_replicas.max(replicas);
            let status = &policy()["status"];
            most_sessions =
                most_sessions.max(status["instances"]["sessions"].as_i64().unwrap_or(0));
            let draining = status["instances"]["draining"].as_i64().unwrap_or(0);
            let wave_over = matches!(load.try_wait(), Ok(Some(_)));
            wave_over
                && most_replicas > 2
                && replicas == 2
                && draining == 0
                && pod_count(APP_NS, CHAT) == 2
        },
    );
    eprintln!(
        "scaled to {most_replicas} and back to 2 by {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let summary = traffic_summary(load);
    eprintln!("traffic: {summary}");
    assert_eq!(summary["dropped"], 0, "the generator saw drops: {summary}");
    assert!(summary["opened"].as_u64().unwrap_or(0) > 50, "{summary}");
    assert_eq!(
        dropped_sessions_since(APP_NS, drops_from),
        0,
        "the node dropped sessions (by the local node's record, or the real node's pod logs)"
    );
    assert!(
        most_sessions > 0,
        "no heartbeat reached the leader: status.instances.sessions stayed 0\n{}",
        controller_logs()
    );
    assert!(
        accepted_heartbeats(&leader) > 0.0,
        "the leader's /metrics counts no accepted heartbeat"
    );
    // Events are published after the act and the status: wait for them.
    let mut reasons = BTreeSet::new();
    wait_for(
        Duration::from_secs(30),
        "the ScaledUp, DrainStarted and DrainCompleted events",
        || {
            reasons = event_reasons(APP_NS, "chat")
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            ["ScaledUp", "DrainStarted", "DrainCompleted"]
                .iter()
                .all(|want| reasons.contains(*want))
        },
    );
    // Zero drops mean something only if a pod removed on the way down still held sessions
    // when its drain began.
    let drains = drains_started(APP_NS, "chat");
    let held = drains.iter().any(|(pod, sessions)| {
        sessions.is_some_and(|n| n > 0)
            && !live_pods(APP_NS, CHAT).iter().any(|p| &pod_name(p) == pod)
    });
    assert!(
        held,
        "no pod removed on the way down held sessions when its drain began, so zero drops prove \
         nothing: {drains:?}"
    );

    let (header, table) = policy_table(APP_NS);
    assert_eq!(header, POLICY_COLUMNS, "{table}");
    let described = kubectl(&["-n", APP_NS, "describe", "scalingpolicy", "chat"]);
    for want in [
        "Conditions:",
        "Ready",
        "Reconciled",
        "ScalingActive",
        "AbleToScale",
        "Events:",
    ] {
        assert!(
            described.contains(want),
            "describe lacks {want}:\n{described}"
        );
    }

    assert_eq!(
        leaders(),
        [leader.clone()],
        "the lease did not stay with one leader through the wave\n{}",
        controller_logs()
    );
    // Every watch the leader opened was allowed by manifests/base/rbac.yaml: one that is not
    // fails quietly on a loop (a reconcile falls back to reading /scale, more slowly).
    let (_, log, _) = kubectl_result(&["-n", SYSTEM_NS, "logs", &leader], None);
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("watch failed") && l.contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "the controller's role does not allow a watch it opens:\n{}",
        refused.join("\n")
    );
    // The leader is deleted: it releases the lease on SIGTERM and another replica takes the
    // label, and with it the heartbeats.
    let successor = kill_leader(&leader, &["--wait=false"], LEASE_DURATION);
    // The next one is killed outright and cannot release: the lease runs out LEASE_DURATION
    // after its last renewal (which a standby may see up to RETRY_PERIOD late), and a standby
    // tries every RETRY_PERIOD (the rest is slack for a loaded machine).
    let successor = kill_leader(
        &successor,
        &["--grace-period=0", "--force"],
        LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(10),
    );

    // And keeps reconciling: a spec change is observed and acted on.
    kubectl(&[
        "-n",
        APP_NS,
        "patch",
        "scalingpolicy",
        "chat",
        "--type=merge",
        "-p",
        r#"{"spec":{"minReplicas":3}}"#,
    ]);
    wait_for(
        Duration::from_secs(60),
        "the new leader to observe minReplicas 3 and scale to 3",
        || {
            let sp = policy();
            let observed = sp["status"]["observedGeneration"] == sp["metadata"]["generation"];
            let pods = live_pods(APP_NS, CHAT);
            observed
                && spec_replicas(APP_NS, "chat") == 3
                && pods.len() == 3
                && pods.iter().all(pod_ready)
        },
    );
    wait_for(
        Duration::from_secs(60),
        "the replacement controller pod Ready beside the leader",
        || controllers_settled().is_some_and(|l| l == successor),
    );
    eprintln!(
        "in-cluster scenario took {:.0}s",
        started.elapsed().as_secs_f64()
    );
}
