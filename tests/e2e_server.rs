//! drainscaler's two ports against the local control plane: heartbeats on one, metrics and
//! probes on the other; and heartbeat identity with real tokens and TokenReviews. Run with
//! `DRAINSCALER_E2E=1` after `scripts/cluster up` and `eval "$(scripts/cluster env)"`.

mod support;

use std::time::Duration;

use support::{Controller, Namespace, apply, enabled, http, install_crd, kubectl, wait_for};

#[test]
fn metrics_and_probes_are_on_their_own_port_and_a_standby_is_ready_but_takes_no_heartbeat() {
    if !enabled(
        "metrics_and_probes_are_on_their_own_port_and_a_standby_is_ready_but_takes_no_heartbeat",
    ) {
        return;
    }
    install_crd();
    let ns = Namespace::new("two-ports");
    let leader = Controller::start(&ns.0, &[]);
    wait_for(Duration::from_secs(60), "the leader to be ready", || {
        http("GET", &leader.metrics_addr, "/readyz", &[], "").0 == 200
    });
    let (status, page) = http("GET", &leader.metrics_addr, "/metrics", &[], "");
    assert_eq!(status, 200);
    assert!(page.contains("drainscaler_reconciles_total"), "{page}");
    // Neither port serves the other's paths.
    assert_eq!(http("GET", &leader.addr, "/metrics", &[], "").0, 404);
    assert_eq!(http("GET", &leader.addr, "/healthz", &[], "").0, 404);
    assert_eq!(
        http(
            "POST",
            &leader.metrics_addr,
            "/v1/heartbeats",
            &[],
            r#"{"sessions": 1}"#
        )
        .0,
        404
    );
    // The leader answers heartbeats (401: no token), the standby refuses them (503) and is
    // still ready and alive: it is there to take over. Leadership must be fresh for the leader
    // to answer: on a loaded machine a renewal may lag a moment, so wait for it.
    let mut answer = (0, String::new());
    wait_for(
        Duration::from_secs(30),
        "the leader to answer heartbeats",
        || {
            answer = http(
                "POST",
                &leader.addr,
                "/v1/heartbeats",
                &[],
                r#"{"sessions": 1}"#,
            );
            answer.0 == 401
        },
    );
    let standby = Controller::start(&ns.0, &[]);
    for path in ["/healthz", "/readyz"] {
        let (status, body) = http("GET", &standby.metrics_addr, path, &[], "");
        assert_eq!((status, body.as_str()), (200, "ok\n"), "standby {path}");
    }
    let (status, body) = http(
        "POST",
        &standby.addr,
        "/v1/heartbeats",
        &[],
        r#"{"sessions": 1}"#,
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not the leader"), "{body}");
}

#[test]
fn the_token_of_a_pod_recreated_under_the_same_name_is_forbidden() {
    if !enabled("the_token_of_a_pod_recreated_under_the_same_name_is_forbidden") {
        return;
    }
    install_crd();
    let ns = Namespace::new("recreated-pod");
    // Never scheduled: the server needs only the pod in its cache and a token bound to it.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: solo, namespace: {}}}\n\
         spec:\n  schedulerName: drainscaler-test-unscheduled\n  \
         containers: [{{name: app, image: drainscaler/session-app:dev}}]\n",
        ns.0
    );
    apply(&pod);
    let controller = Controller::start(&ns.0, &[]);
    let token = kubectl(&[
        "-n",
        &ns.0,
        "create",
        "token",
        "default",
        "--audience=drainscaler",
        "--bound-object-kind=Pod",
        "--bound-object-name=solo",
    ]);
    let bearer = format!("Bearer {}", token.trim());
    let send = || {
        http(
            "POST",
            &controller.addr,
            "/v1/heartbeats",
            &[("Authorization", &bearer)],
            r#"{"sessions": 2}"#,
        )
    };
    wait_for(
        Duration::from_secs(60),
        "a heartbeat from solo accepted",
        || send().0 == 200,
    );
    let uid = || {
        kubectl(&[
            "-n",
            &ns.0,
            "get",
            "pod",
            "solo",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    let first_uid = uid();
    kubectl(&[
        "-n",
        &ns.0,
        "delete",
        "pod",
        "solo",
        "--wait=true",
        "--grace-period=0",
        "--force",
    ]);
    apply(&pod);
    let second_uid = uid();
    assert_ne!(first_uid, second_uid, "the pod was recreated");
    // The old token, still cached as the first pod's, speaks for no one once the new pod is
    // in the cache.
    let mut last = (0, String::new());
    wait_for(
        Duration::from_secs(30),
        "the old token to be refused",
        || {
            last = send();
            last.0 == 403
        },
    );
    assert!(
        last.1.contains("earlier pod of the same name"),
        "{}",
        last.1
    );
}
