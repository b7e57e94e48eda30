//! `drainscaler run` against the local control plane: validation, heartbeat authentication,
//! scaling up on load and draining down without dropping a session. Run with
//! `DRAINSCALER_E2E=1` after `scripts/cluster up` and `eval "$(scripts/cluster env)"`.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::{
    Controller, Namespace, POLICY_COLUMNS, active_sessions, app_with_controller, apply, condition,
    draining, dropped_sessions, enabled, event_reasons, http, install_crd, kubectl, kubectl_json,
    kubectl_result, pod_exists, pod_name, pod_sessions, pods, policy, policy_events, policy_table,
    ready_replicas, sessions_spec, spec_replicas, steady_load, traffic_summary, wait_for,
};

#[test]
fn an_invalid_policy_is_rejected_by_the_api_server_with_the_reason() {
    if !enabled("an_invalid_policy_is_rejected_by_the_api_server_with_the_reason") {
        return;
    }
    install_crd();
    let ns = Namespace::new("invalid-policy");
    let bad = policy(
        &ns.0,
        "chat",
        r#"  minReplicas: 5
  maxReplicas: 2
  metrics:
  - name: rps
    prometheus: {query: "vector(1)"}
    target: {type: AverageValue, averageValue: "10"}
"#,
    );
    let (ok, _, err) = kubectl_result(&["apply", "-f", "-"], Some(&bad));
    assert!(!ok, "an invalid policy was accepted");
    assert!(
        err.contains("minReplicas must be less than or equal to maxReplicas"),
        "{err}"
    );
}

#[test]
fn a_policy_for_a_missing_target_is_not_ready_says_why_and_changes_nothing() {
    if !enabled("a_policy_for_a_missing_target_is_not_ready_says_why_and_changes_nothing") {
        return;
    }
    install_crd();
    let ns = Namespace::new("missing-target");
    let _controller = Controller::start(&ns.0, &["--insecure-dev-heartbeats"]);
    apply(&policy(&ns.0, "absent", &sessions_spec(4)));
    wait_for(
        Duration::from_secs(30),
        "Ready=False TargetNotFound",
        || {
            condition(&ns.0, "absent", "Ready")
                .is_some_and(|(s, r, _)| s == "False" && r == "TargetNotFound")
        },
    );
    let (_, _, message) = condition(&ns.0, "absent", "Ready").expect("Ready");
    assert!(message.contains("does not exist"), "{message}");
    wait_for(Duration::from_secs(30), "a TargetNotFound warning", || {
        event_reasons(&ns.0, "absent")
            .iter()
            .any(|(t, r)| t == "Warning" && r == "TargetNotFound")
    });

    let (header, table) = policy_table(&ns.0);
    assert_eq!(header, POLICY_COLUMNS);
    assert!(table.contains("False"), "{table}");
    let described = kubectl(&["-n", &ns.0, "describe", "scalingpolicy", "absent"]);
    for want in ["TargetNotFound", "Ready", "Events:", "does not exist"] {
        assert!(
            described.contains(want),
            "describe lacks {want}:\n{described}"
        );
    }
}

#[test]
fn a_heartbeat_cannot_speak_for_another_pod() {
    if !enabled("a_heartbeat_cannot_speak_for_another_pod") {
        return;
    }
    let (ns, controller) = app_with_controller("forged-heartbeat", 2);
    wait_for(Duration::from_secs(90), "two ready pods", || {
        ready_replicas(&ns.0, "chat") == 2
    });
    let names: Vec<String> = pods(&ns.0, "chat").into_iter().map(|(n, _)| n).collect();
    let (a, b) = (&names[0], &names[1]);
    let token = kubectl(&[
        "-n",
        &ns.0,
        "create",
        "token",
        "default",
        "--audience=drainscaler",
        "--bound-object-kind=Pod",
        &format!("--bound-object-name={a}"),
    ]);
    let bearer = format!("Bearer {}", token.trim());
    let post = |headers: &[(&str, &str)], body: &str| {
        http("POST", &controller.addr, "/v1/heartbeats", headers, body)
    };

    let (status, body) = post(&[("Authorization", &bearer)], r#"{"sessions": 1}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"drain":false}"#));
    let (status, body) = post(
        &[("Authorization", &bearer)],
        &format!(r#"{{"sessions": 1, "pod": "{}/{b}"}}"#, ns.0),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = post(&[], &format!(r#"{{"sessions": 1, "pod": "{}/{b}"}}"#, ns.0));
    assert_eq!(status, 401, "{body}");
    let wrong_audience = kubectl(&[
        "-n",
        &ns.0,
        "create",
        "token",
        "default",
        "--bound-object-kind=Pod",
        &format!("--bound-object-name={a}"),
    ]);
    let (status, body) = post(
        &[(
            "Authorization",
            &format!("Bearer {}", wrong_audience.trim()),
        )],
        r#"{"sessions": 1}"#,
    );
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(&[("Authorization", &bearer)], r#"{"sessions": -1}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"), "{body}");
}

#[test]
fn load_scales_up_and_scale_in_drains_then_removes_only_drained_pods_without_dropping_sessions() {
    if !enabled("load_scales_up_and_scale_in_drains_then_removes_only_drained_pods") {
        return;
    }
    let (ns, controller) = app_with_controller("scale-up-down", 1);
    wait_for(Duration::from_secs(90), "one ready pod", || {
        ready_replicas(&ns.0, "chat") == 1
    });
    apply(&policy(&ns.0, "chat", &sessions_spec(4)));

    // About 3 sessions a second for 20s, each 15s long: ~45 sessions at the peak.
    let load = steady_load(&ns.0, "chat", 3, 20, 15, 1);
    wait_for(Duration::from_secs(60), "a scale-up", || {
        spec_replicas(&ns.0, "chat") >= 3
    });

    // Every pod that goes away must have been draining first.
    let mut drained = BTreeSet::new();
    let mut seen = BTreeSet::new();
    wait_for(
        Duration::from_secs(180),
        "the scale-in back to one pod",
        || {
            let now = pods(&ns.0, "chat");
            for (name, draining) in &now {
                seen.insert(name.clone());
                if *draining {
                    drained.insert(name.clone());
                }
            }
            now.len() == 1 && spec_replicas(&ns.0, "chat") == 1
        },
    );
    let remaining: BTreeSet<String> = pods(&ns.0, "chat").into_iter().map(|(n, _)| n).collect();
    let removed: BTreeSet<String> = seen.difference(&remaining).cloned().collect();
    assert!(!removed.is_empty(), "nothing was removed");
    assert!(
        removed.is_subset(&drained),
        "removed {removed:?} but only {drained:?} were drained\n{}",
        controller.logs()
    );
    let summary = traffic_summary(load);
    assert_eq!(
        summary["dropped"], 0,
        "the traffic generator saw drops: {summary}"
    );
    assert_eq!(
        dropped_sessions(&ns.0),
        0,
        "the local node dropped sessions"
    );
    assert!(summary["opened"].as_u64().unwrap_or(0) > 20, "{summary}");
    // Events are published after the act and the status: wait for them.
    wait_for(
        Duration::from_secs(30),
        "the ScaledUp, DrainStarted, DrainCompleted and ScaledDown events",
        || {
            let reasons: Vec<String> = event_reasons(&ns.0, "chat")
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            ["ScaledUp", "DrainStarted", "DrainCompleted", "ScaledDown"]
                .iter()
                .all(|want| reasons.iter().any(|r| r == want))
        },
    );
}

#[test]
fn a_second_policy_or_an_hpa_on_the_same_target_is_a_conflict() {
    if !enabled("a_second_policy_or_an_hpa_on_the_same_target_is_a_conflict") {
        return;
    }
    let (ns, _controller) = app_with_controller("conflict", 1);
    apply(&policy(&ns.0, "chat", &sessions_spec(4)));
    wait_for(
        Duration::from_secs(30),
        "the first policy to be Ready",
        || condition(&ns.0, "chat", "Ready").is_some_and(|(s, _, _)| s == "True"),
    );
    let second = policy(&ns.0, "chat", &sessions_spec(4))
        .replace("name: chat, namespace", "name: chat-two, namespace");
    apply(&second);
    wait_for(
        Duration::from_secs(30),
        "the second policy to conflict",
        || {
            condition(&ns.0, "chat-two", "Ready").is_some_and(|(s, r, m)| {
                s == "False" && r == "Conflict" && m.contains("ScalingPolicy chat")
            })
        },
    );
    assert!(
        condition(&ns.0, "chat", "Ready").is_some_and(|(s, _, _)| s == "True"),
        "the older policy keeps its target"
    );
    kubectl(&["-n", &ns.0, "delete", "scalingpolicy", "chat-two"]);
    kubectl(&[
        "-n",
        &ns.0,
        "autoscale",
        "deployment",
        "chat",
        "--min=1",
        "--max=3",
    ]);
    wait_for(Duration::from_secs(60), "the HPA conflict", || {
        condition(&ns.0, "chat", "Ready").is_some_and(|(s, r, m)| {
            s == "False" && r == "Conflict" && m.contains("HorizontalPodAutoscaler")
        })
    });
    assert!(
        event_reasons(&ns.0, "chat")
            .iter()
            .any(|(t, r)| t == "Warning" && r == "Conflict")
    );
    // The HPA's removal is watched: the policy acts again without waiting out its 30s
    // blocked requeue.
    kubectl(&["-n", &ns.0, "delete", "hpa", "chat"]);
    wait_for(
        Duration::from_secs(25),
        "the policy to be Ready once the HPA is gone",
        || condition(&ns.0, "chat", "Ready").is_some_and(|(s, _, _)| s == "True"),
    );
}

#[test]
fn the_api_server_rejects_each_cel_rule_with_its_message() {
    if !enabled("the_api_server_rejects_each_cel_rule_with_its_message") {
        return;
    }
    install_crd();
    let ns = Namespace::new("cel-rules");
    let rps = r#"  - name: rps
    prometheus: {query: "vector(1)"}
    target: {type: AverageValue, averageValue: "10"}
"#;
    let with_rps = |head: &str| format!("{head}  metrics:\n{rps}");
    // (the spec after targetRef, the message the API server must give)
    let cases: Vec<(String, &str)> = vec![
        (
            with_rps(
                "  minReplicas: 1\n  maxReplicas: 4\n  fallback: {failureThreshold: 3, replicas: 9}\n",
            ),
            "fallback.replicas must lie within [minReplicas, maxReplicas]",
        ),
        (
            format!("  maxReplicas: 4\n  metrics:\n{rps}{rps}"),
            "metric names must be unique",
        ),
        (
            r#"  maxReplicas: 4
  metrics:
  - name: sessions
    sessions: {}
    target: {type: AverageValue, averageValue: "10"}
"#
            .to_owned(),
            "a sessions metric needs a heartbeat source: add spec.heartbeat",
        ),
        (
            with_rps("  maxReplicas: 4\n  interval: 500ms\n"),
            "interval must be at least 1s",
        ),
        (
            r#"  maxReplicas: 4
  metrics:
  - name: rps
    prometheus: {query: "vector(1)"}
    sessions: {}
    target: {type: AverageValue, averageValue: "10"}
  heartbeat: {source: Push}
"#
            .to_owned(),
            "a metric has exactly one source: set either prometheus or sessions",
        ),
        (
            r#"  maxReplicas: 4
  metrics:
  - name: rps
    prometheus: {query: "vector(1)"}
    target: {type: AverageValue}
"#
            .to_owned(),
            "target type AverageValue needs averageValue",
        ),
        (
            r#"  maxReplicas: 4
  metrics:
  - name: rps
    prometheus: {query: "vector(1)"}
    target: {type: AverageValue, averageValue: "lots"}
"#
            .to_owned(),
            "must be a Kubernetes quantity, such as 100, 0.5 or 250m",
        ),
        (
            with_rps("  maxReplicas: 4\n  heartbeat: {source: Prometheus}\n"),
            "heartbeat source Prometheus needs a query",
        ),
        (
            with_rps("  maxReplicas: 4\n  heartbeat: {source: Push, timeout: 100ms}\n"),
            "heartbeat.timeout must be at least 1s",
        ),
    ];
    let mut wrong = Vec::new();
    for (spec, message) in &cases {
        let yaml = policy(&ns.0, "chat", spec);
        let (ok, _, err) = kubectl_result(&["apply", "--dry-run=server", "-f", "-"], Some(&yaml));
        if ok || !err.contains(message) {
            wrong.push(format!(
                "wanted {message:?}, got {}: {err}\n{yaml}",
                if ok { "accepted" } else { "rejected" }
            ));
        }
    }
    // The same rules accept a policy that keeps them.
    let fine = policy(&ns.0, "chat", &with_rps("  maxReplicas: 4\n"));
    let (ok, _, err) = kubectl_result(&["apply", "--dry-run=server", "-f", "-"], Some(&fine));
    assert!(ok, "a valid policy was rejected: {err}");
    let (ok, _, err) = kubectl_result(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&fine.replace("apiVersion: apps/v1, kind", "apiVersion: apps/v2, kind")),
    );
    if ok || !err.contains("targetRef.apiVersion must be apps/v1") {
        wrong.push(format!("apps/v2 targetRef: accepted {ok}: {err}"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n---\n"));
}

#[test]
fn a_policy_the_schema_accepts_but_validation_rejects_is_not_ready_warns_and_changes_nothing() {
    if !enabled(
        "a_policy_the_schema_accepts_but_validation_rejects_is_not_ready_warns_and_changes_nothing",
    ) {
        return;
    }
    let (ns, _controller) = app_with_controller("invalid-semantics", 1);
    wait_for(Duration::from_secs(90), "one ready pod", || {
        ready_replicas(&ns.0, "chat") == 1
    });
    // A quantity the schema takes, but a target of 0 per replica means nothing. Valid, the
    // policy would scale to its minimum of 3 at once.
    let spec = |average: &str| {
        format!(
            r#"  minReplicas: 3
  maxReplicas: 5
  interval: 2s
  metrics:
  - name: rps
    prometheus: {{query: "vector(1)"}}
    target: {{type: AverageValue, averageValue: "{average}"}}
"#
        )
    };
    apply(&policy(&ns.0, "chat", &spec("0")));
    wait_for(Duration::from_secs(30), "Ready=False InvalidPolicy", || {
        condition(&ns.0, "chat", "Ready")
            .is_some_and(|(s, r, _)| s == "False" && r == "InvalidPolicy")
    });
    let (_, _, message) = condition(&ns.0, "chat", "Ready").expect("Ready");
    assert!(
        message.contains("spec.metrics[0].target.averageValue")
            && message.contains("must be greater than 0"),
        "{message}"
    );
    // The status is written after every act there would be: none came.
    assert_eq!(
        spec_replicas(&ns.0, "chat"),
        1,
        "an invalid policy scaled the target"
    );
    assert!(
        pods(&ns.0, "chat").iter().all(|(_, draining)| !draining),
        "an invalid policy drained a pod"
    );
    wait_for(Duration::from_secs(30), "an InvalidPolicy warning", || {
        policy_events(&ns.0, "chat", Some("InvalidPolicy"))
            .iter()
            .any(|e| {
                e["type"] == "Warning"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("must be greater than 0"))
            })
    });

    // Fixed, it acts: the test could tell an acting policy from a blocked one.
    apply(&policy(&ns.0, "chat", &spec("10")));
    wait_for(
        Duration::from_secs(60),
        "the fixed policy to scale to 3",
        || {
            spec_replicas(&ns.0, "chat") == 3
                && condition(&ns.0, "chat", "Ready").is_some_and(|(s, _, _)| s == "True")
        },
    );
}

/// `drain.holdBack` on a real Service: with three pods kept by `minReplicas` and a few
/// sessions, the emptiest pod is held back (serving label "false", the annotation, the status
/// count, a HeldBack event) and not drained; the Service sends it no new sessions, so it
/// empties while the others serve. When load asks for more pods it serves again before any
/// pod is added. No session is cut throughout.
#[test]
fn a_held_back_pod_takes_no_new_sessions_and_serves_again_when_load_returns() {
    if !enabled("a_held_back_pod_takes_no_new_sessions_and_serves_again_when_load_returns") {
        return;
    }
    let (ns, controller) = app_with_controller("hold-back", 3);
    wait_for(Duration::from_secs(90), "three ready pods", || {
        ready_replicas(&ns.0, "chat") == 3
    });
    apply(&policy(
        &ns.0,
        "chat",
        r#"  minReplicas: 3
  maxReplicas: 4
  interval: 2s
  metrics:
  - name: sessions
    sessions: {}
    target: {type: AverageValue, averageValue: "10"}
  heartbeat: {source: Push, timeout: 20s}
  drain: {timeout: 5m, onTimeout: Keep, holdBack: {maxPods: 1, sessionCeiling: 8}}
"#,
    ));

    // About 6 sessions open at a time: two pods hold them under 8 each, so one is held back.
    let light = steady_load(&ns.0, "chat", 1, 90, 6, 11);
    let held_back = || -> Vec<(String, String)> {
        let list = kubectl_json(&["-n", &ns.0, "get", "pods", "-l", "app=chat"]);
        list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["annotations"]["drainscaler.io/held-back"] == "true")
            .map(|p| {
                let serving = p["metadata"]["labels"]["drainscaler.io/serving"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                (pod_name(p), serving)
            })
            .collect()
    };
    wait_for(Duration::from_secs(60), "a pod held back", || {
        held_back().len() == 1
    });
    let (pod, serving) = held_back().remove(0);
    assert_eq!(
        serving, "false",
        "the held-back pod {pod} is still selected"
    );
    assert!(draining(&ns.0).is_empty(), "held back is not draining");
    let status = kubectl_json(&["-n", &ns.0, "get", "scalingpolicy", "chat"]);
    assert_eq!(
        status["status"]["instances"]["heldBack"], 1,
        "{}",
        status["status"]
    );
    // `kubectl get -o wide` counts it; the default table stays as it was.
    let wide = kubectl(&["-n", &ns.0, "get", "scalingpolicy", "chat", "-o", "wide"]);
    let mut lines = wide
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    let (header, row) = (
        lines.next().unwrap_or_default(),
        lines.next().unwrap_or_default(),
    );
    let held = header.iter().position(|h| *h == "HELD");
    assert_eq!(held.and_then(|i| row.get(i)), Some(&"1"), "{wide}");
    let table = kubectl(&["-n", &ns.0, "get", "scalingpolicy", "chat"]);
    assert!(!table.contains("HELD"), "{table}");

    // Its sessions end and no new ones come, while the load goes on to the others.
    wait_for(
        Duration::from_secs(40),
        "the held-back pod to empty",
        || pod_sessions(&ns.0, &pod) == 0,
    );
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(
            pod_sessions(&ns.0, &pod),
            0,
            "a new session reached the held-back pod {pod}"
        );
        assert_eq!(held_back().len(), 1, "{}", controller.logs());
    }
    assert!(active_sessions(&ns.0, "chat") > 0, "the load stopped early");
    assert_eq!(spec_replicas(&ns.0, "chat"), 3);
    assert!(pod_exists(&ns.0, &pod), "the held-back pod was removed");

    // About 50 sessions ask for more pods than there are: the held pod serves again first.
    let heavy = steady_load(&ns.0, "chat", 5, 20, 10, 12);
    wait_for(Duration::from_secs(60), "the hold released", || {
        held_back().is_empty()
    });
    let p = kubectl_json(&["-n", &ns.0, "get", "pod", &pod]);
    assert_eq!(
        p["metadata"]["labels"]["drainscaler.io/serving"], "true",
        "{}",
        p["metadata"]
    );
    wait_for(Duration::from_secs(60), "the scale-up to 4", || {
        spec_replicas(&ns.0, "chat") == 4
    });
    wait_for(
        Duration::from_secs(30),
        "a session on the released pod",
        || pod_sessions(&ns.0, &pod) > 0,
    );
    wait_for(
        Duration::from_secs(30),
        "the HeldBack and HoldReleased events",
        || {
            let reasons: Vec<String> = event_reasons(&ns.0, "chat")
                .into_iter()
                .map(|(_, r)| r)
                .collect();
            ["HeldBack", "HoldReleased"]
                .iter()
                .all(|want| reasons.iter().any(|r| r == want))
        },
    );
    for summary in [traffic_summary(light), traffic_summary(heavy)] {
        assert_eq!(summary["dropped"], 0, "sessions cut: {summary}");
        assert!(summary["opened"].as_u64().unwrap_or(0) > 15, "{summary}");
    }
    assert_eq!(
        dropped_sessions(&ns.0),
        0,
        "the node's record of cut sessions"
    );
}
