//! `drainscaler run` when things go wrong or change: load returning mid-drain, lost instances,
//! Prometheus stopping and coming back, controller restarts, and leader handover when the leader
//! stops or is killed. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up` and
//! `eval "$(scripts/cluster env)"`.

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drainscaler::leader::{LEASE_DURATION, RETRY_PERIOD};
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use support::{
    Controller, FakePrometheus, Namespace, app_with_controller, apply, condition, container_pid,
    draining, dropped_sessions, enabled, event_reasons, http, install_crd, kubectl, kubectl_json,
    leader_and_standby, leader_label, live_pods, pod_exists, pod_sessions, pods, policy,
    policy_events, ready_replicas, sample, session_app, sessions_spec, signal, spec_replicas,
    start_draining, status_condition, traffic, traffic_summary, wait_for,
};

fn has_event(ns: &str, reason: &str) -> bool {
    event_reasons(ns, "chat").iter().any(|(_, r)| r == reason)
}

#[test]
fn load_returning_mid_drain_cancels_the_drain_before_adding_pods() {
    if !enabled("load_returning_mid_drain_cancels_the_drain_before_adding_pods") {
        return;
    }
    install_crd();
    let ns = Namespace::new("cancel-drain");
    let controller = Controller::start(&ns.0, &[]);
    let first = start_draining(&ns, &controller, 18, 60);
    let drained = draining(&ns.0);

    let second = traffic(
        &ns.0,
        "chat",
        &[
            "-shape",
            "constant:5",
            "-duration",
            "10s",
            "-fixed-length",
            "40s",
            "-seed",
            "3",
        ],
    );
    wait_for(Duration::from_secs(60), "the drain to be cancelled", || {
        draining(&ns.0).is_empty() && has_event(&ns.0, "DrainCancelled")
    });
    for pod in &drained {
        assert!(
            pod_exists(&ns.0, pod),
            "drained pod {pod} was removed instead of reused"
        );
    }
    wait_for(Duration::from_secs(60), "a scale-up past three", || {
        spec_replicas(&ns.0, "chat") >= 4
    });
    let (a, b) = (traffic_summary(second), traffic_summary(first));
    assert_eq!(
        (a["dropped"].as_u64(), b["dropped"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(dropped_sessions(&ns.0), 0);
}

/// How a controller goes away mid-drain.
#[derive(Clone, Copy, Debug)]
enum Exit {
    /// SIGTERM, as Kubernetes stops a pod: it releases the lease.
    Graceful,
    /// SIGKILL, as a crashed node or the OOM killer: nothing released, nothing finished.
    Killed,
}

/// A controller that goes away (`exit`) mid-drain and is started again: the drain lives on the
/// pod, so the new one carries it on and removes the pod only once it is empty. With
/// `Exit::Killed` the kill comes as soon as the drain mark appears, before the drained pod
/// can be empty, so before the scale write that would remove it.
fn restart_mid_drain(name: &str, exit: Exit) {
    install_crd();
    let ns = Namespace::new(name);
    let mut controller = Controller::start(&ns.0, &[]);
    let load = start_draining(&ns, &controller, 12, 25);
    match exit {
        Exit::Graceful => controller.stop(),
        Exit::Killed => controller.kill(),
    }
    // Nothing changes the marks now: take them.
    let drained = draining(&ns.0);
    assert!(!drained.is_empty(), "no drain survived the {exit:?} exit");
    assert_eq!(
        spec_replicas(&ns.0, "chat"),
        3,
        "scaled in before the drained pod was empty"
    );
    // The drain is in progress, not over: the pod still holds sessions.
    for pod in &drained {
        let held = pod_sessions(&ns.0, pod);
        assert!(
            held > 0,
            "pod {pod} was already empty when the controller went"
        );
    }

    // The instances keep sending heartbeats to the old address: start on the same one.
    let _again = Controller::start_on(&ns.0, &controller.addr, &[]);
    wait_for(Duration::from_secs(120), "the drained pods to go", || {
        drained.iter().all(|p| !pod_exists(&ns.0, p))
    });
    let summary = traffic_summary(load);
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{summary}");
    assert_eq!(dropped_sessions(&ns.0), 0);
    // The drain was not trivial: each drained pod still held sessions when the controller went
    // (checked above from the app itself), so it held them when its drain began. A DrainStarted
    // event cannot show that here: events are published after the mark, and the exit may come
    // in between, which is the point of the killed case.
}

#[test]
fn a_restarted_controller_keeps_the_drain_and_removes_the_pod_only_once_empty() {
    if !enabled("a_restarted_controller_keeps_the_drain_and_removes_the_pod_only_once_empty") {
        return;
    }
    restart_mid_drain("restart-mid-drain", Exit::Graceful);
}

#[test]
fn a_controller_killed_right_after_marking_a_drain_loses_neither_the_drain_nor_a_session() {
    if !enabled(
        "a_controller_killed_right_after_marking_a_drain_loses_neither_the_drain_nor_a_session",
    ) {
        return;
    }
    restart_mid_drain("killed-mid-drain", Exit::Killed);
}

#[test]
fn a_lost_instance_is_replaced() {
    if !enabled("a_lost_instance_is_replaced") {
        return;
    }
    let (ns, _controller) = app_with_controller("lost-instance", 2);
    wait_for(Duration::from_secs(90), "two ready pods", || {
        ready_replicas(&ns.0, "chat") == 2
    });
    apply(&policy(
        &ns.0,
        "chat",
        r#"  minReplicas: 2
  maxReplicas: 2
  interval: 2s
  metrics:
  - name: sessions
    sessions: {}
    target: {type: AverageValue, averageValue: "10"}
  heartbeat: {source: Push, timeout: 5s, onLost: Replace}
"#,
    ));
    let victim = pods(&ns.0, "chat")[0].0.clone();
    let pid = container_pid(&ns.0, &victim).expect("the victim's process");
    signal(pid, "STOP");
    // The app itself is frozen, not some other process. A signal is delivered when the process
    // next runs, so the stop shows a moment after `kill` returns.
    let status = || std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status().contains("Name:\tsession-app"),
        "pid {pid} is not the victim's app:\n{}",
        status()
    );
    wait_for(Duration::from_secs(10), "the victim's app to stop", || {
        status().contains("State:\tT")
    });
    wait_for(
        Duration::from_secs(60),
        "the lost pod to be deleted",
        || !pods(&ns.0, "chat").iter().any(|(n, _)| n == &victim),
    );
    signal(pid, "CONT");
    wait_for(Duration::from_secs(30), "the InstanceLost event", || {
        has_event(&ns.0, "InstanceLost")
    });
    wait_for(Duration::from_secs(90), "a replacement", || {
        ready_replicas(&ns.0, "chat") == 2
    });
}

#[test]
fn a_prometheus_metric_scales_the_target() {
    if !enabled("a_prometheus_metric_scales_the_target") {
        return;
    }
    require_prometheus();
    let (ns, _controller) = app_with_controller("prometheus-metric", 1);
    apply(&policy(
        &ns.0,
        "chat",
        r#"  minReplicas: 1
  maxReplicas: 5
  interval: 2s
  metrics:
  - name: rps
    prometheus: {query: "vector(35)"}
    target: {type: AverageValue, averageValue: "10"}
"#,
    ));
    wait_for(Duration::from_secs(60), "four replicas", || {
        spec_replicas(&ns.0, "chat") == 4
    });
    let (status, _, message) = condition(&ns.0, "chat", "ScalingActive").expect("ScalingActive");
    assert_eq!(status, "True", "{message}");
}

/// The plane's Prometheus, which the controllers started here query (`PROMETHEUS_URL` from
/// `scripts/cluster env`). Without it these tests could not test what they say: fail.
fn require_prometheus() {
    assert!(
        std::env::var_os("PROMETHEUS_URL").is_some(),
        "PROMETHEUS_URL is not set: run `eval \"$(scripts/cluster env)\"` first"
    );
}

#[test]
fn a_second_replica_takes_over_when_the_leader_stops() {
    if !enabled("a_second_replica_takes_over_when_the_leader_stops") {
        return;
    }
    let (ns, [one, two], mut first, second) = leader_and_standby("leader-handover");
    let (one, two) = (&one, &two);
    apply(&session_app(
        &ns.0,
        "chat",
        1,
        &format!("http://{}", second.addr),
    ));
    assert!(!second.logs().contains("leading"), "two leaders");

    first.stop();
    assert_eq!(
        leader_label(&ns.0, one),
        "false",
        "a stopped leader keeps its label"
    );
    wait_for(Duration::from_secs(30), "the second to lead", || {
        second.logs().contains("leading") && leader_label(&ns.0, two) == "true"
    });
    apply(&policy(&ns.0, "chat", &sessions_spec(2)));
    wait_for(
        Duration::from_secs(60),
        "the new leader to reconcile",
        || condition(&ns.0, "chat", "Ready").is_some_and(|(s, _, _)| s == "True"),
    );
}

/// The spec of the policies on the fake Prometheus: `rps` at 10 per replica, 1 to 6 replicas
/// decided every `interval`, a fallback of 5 replicas after 3 failed readings, and scale-in
/// without stabilization or drains, so that a metric wrongly read as low would scale down at
/// once.
fn prometheus_spec(prometheus: &FakePrometheus, interval: &str) -> String {
    format!(
        r#"  minReplicas: 1
  maxReplicas: 6
  interval: {interval}
  prometheus: {{address: "{}", timeout: 1s}}
  metrics:
  - name: rps
    prometheus: {{query: "sum(rate(requests_total[1m]))"}}
    target: {{type: AverageValue, averageValue: "10"}}
  fallback: {{failureThreshold: 3, replicas: 5}}
  drain: {{timeout: 0s}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 0}}
"#,
        prometheus.url()
    )
}

/// Reconciles the controller has finished, from its `/metrics`; fails the test when the page
/// cannot be read, rather than reading none.
fn reconciles_done(controller: &Controller) -> f64 {
    let (code, page) = http("GET", &controller.metrics_addr, "/metrics", &[], "");
    assert_eq!(code, 200, "GET {}/metrics: {page}", controller.metrics_addr);
    sample(&page, "drainscaler_reconcile_duration_seconds_count").unwrap_or_else(|| {
        panic!(
            "{}/metrics has no drainscaler_reconcile_duration_seconds_count:\n{page}",
            controller.metrics_addr
        )
    })
}

/// The policy `chat`'s status.
fn status(ns: &str) -> Value {
    let mut sp = kubectl_json(&["-n", ns, "get", "scalingpolicy", "chat"]);
    sp["status"].take()
}

#[test]
fn prometheus_going_down_holds_the_count_falls_back_after_the_threshold_and_recovers() {
    if !enabled("prometheus_going_down_holds_the_count_falls_back_after_the_threshold_and_recovers")
    {
        return;
    }
    let mut prometheus = FakePrometheus::start(25.0);
    let (ns, controller) = app_with_controller("prometheus-down", 1);
    // Readings 10s apart leave time to change a pod between two of them and look.
    let interval = Duration::from_secs(10);
    apply(&policy(&ns.0, "chat", &prometheus_spec(&prometheus, "10s")));
    wait_for(Duration::from_secs(60), "three replicas for 25 rps", || {
        spec_replicas(&ns.0, "chat") == 3
    });
    let (fallback, reason, message) = condition(&ns.0, "chat", "Fallback").expect("Fallback");
    assert_eq!(
        (fallback.as_str(), reason.as_str()),
        ("False", "MetricsAvailable"),
        "{message}"
    );

    prometheus.stop();
    // The second failed reading came after the last look that still saw fewer failures; the
    // next reading comes at least one interval after it.
    let mut second_reading_after = Instant::now();
    wait_for(
        Duration::from_secs(45),
        "two failed readings, one short of the threshold",
        || {
            let asked = Instant::now();
            let failures = status(&ns.0)["consecutiveFailures"].as_u64();
            let replicas = spec_replicas(&ns.0, "chat");
            assert_eq!(
                replicas, 3,
                "the count was not held after {failures:?} failed readings"
            );
            if failures.unwrap_or(0) < 2 {
                second_reading_after = asked;
            }
            failures == Some(2)
        },
    );
    // A pod changes before the next reading, as pods do: the reconcile this triggers reuses
    // the last reading and must not count it as another failure.
    let done = reconciles_done(&controller);
    let pod = &pods(&ns.0, "chat")[0].0;
    kubectl(&[
        "-n",
        &ns.0,
        "annotate",
        "pod",
        pod,
        "e2e.drainscaler.io/touched=true",
    ]);
    wait_for(
        Duration::from_secs(10),
        "the reconcile of the pod change",
        || reconciles_done(&controller) > done,
    );
    let failures = status(&ns.0)["consecutiveFailures"].as_u64();
    // Only a status read before the next reading can tell: fail, rather than pass unchecked,
    // if this machine was too slow.
    assert!(
        second_reading_after.elapsed() < interval,
        "the next reading may have come before the status was read ({:?} after the second): too slow to check the pod-change reconcile",
        second_reading_after.elapsed()
    );
    assert_eq!(
        failures,
        Some(2),
        "the reconcile of a pod change between two readings counted the reused failed reading again"
    );

    // Fallback reasons in the order seen.
    let mut reasons: Vec<String> = Vec::new();
    wait_for(
        Duration::from_secs(40),
        "the fallback of five replicas",
        || {
            // The status first: the controller scales before it writes the status, so a
            // status that shows the fallback comes with five replicas.
            let status = status(&ns.0);
            let replicas = spec_replicas(&ns.0, "chat");
            assert!(
                replicas == 3 || replicas == 5,
                "{replicas} replicas while Prometheus is down: only the 3 held or the fallback of 5 are right"
            );
            let Some((fallback, reason, message)) = status_condition(&status, "Fallback") else {
                return false;
            };
            if reasons.last() != Some(&reason) {
                reasons.push(reason.clone());
            }
            if fallback != "True" {
                return false;
            }
            let failures = status["consecutiveFailures"].as_u64().unwrap_or(0);
            assert!(
                failures >= 3,
                "the fallback applies after {failures} failed readings, below the threshold of 3: {message}"
            );
            assert_eq!(
                replicas, 5,
                "the fallback is active at {replicas} replicas: {message}"
            );
            true
        },
    );
    assert_eq!(
        reasons,
        ["MetricsFailing", "FallbackActive"],
        "the Fallback condition's reasons after two failed readings"
    );
    // Events are published after the scale and the status: wait for them.
    wait_for(
        Duration::from_secs(30),
        "the MetricUnavailable and FallbackActive events",
        || has_event(&ns.0, "MetricUnavailable") && has_event(&ns.0, "FallbackActive"),
    );

    prometheus.set(15.0);
    prometheus.restart();
    wait_for(
        Duration::from_secs(60),
        "the fallback to end and two replicas for 15 rps",
        || {
            let status = status(&ns.0);
            let replicas = spec_replicas(&ns.0, "chat");
            assert!(
                replicas >= 2,
                "{replicas} replicas, below the 2 that 15 rps asks for"
            );
            let ended = status_condition(&status, "Fallback")
                .is_some_and(|(s, r, _)| s == "False" && r == "MetricsAvailable");
            ended && replicas == 2
        },
    );
    let status = status(&ns.0);
    let (active, reason, message) =
        status_condition(&status, "ScalingActive").expect("ScalingActive");
    assert_eq!(
        (active.as_str(), reason.as_str()),
        ("True", "ValidMetricFound"),
        "{message}"
    );
    assert!(message.contains("rps asks for 2"), "{message}");
    assert!(
        status["consecutiveFailures"].is_null(),
        "failures still counted after recovery: {status}"
    );
}

/// Who holds the controllers' lease in `ns`.
fn lease_holder(ns: &str) -> String {
    let lease = kubectl_json(&["-n", ns, "get", "lease", "drainscaler"]);
    lease["spec"]["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A time in the controllers' lease in `ns` (`renewTime`, `acquireTime`), on this machine's
/// clock.
fn lease_time(ns: &str, field: &str) -> SystemTime {
    let lease = kubectl_json(&["-n", ns, "get", "lease", "drainscaler"]);
    let text = lease["spec"][field]
        .as_str()
        .unwrap_or_else(|| panic!("the lease has no {field}: {lease}"));
    let t: Timestamp = text
        .parse()
        .unwrap_or_else(|e| panic!("the lease's {field} {text}: {e}"));
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(t.as_nanosecond()).expect("a time after 1970"))
}

/// The policy `chat`'s events of `reason`, as (note, times seen).
fn events_of(ns: &str, reason: &str) -> Vec<(String, u64)> {
    policy_events(ns, "chat", Some(reason))
        .iter()
        .map(|e| {
            (
                e["message"].as_str().unwrap_or_default().to_owned(),
                // Repeats fold into the event's series (events.k8s.io/v1).
                e["series"]["count"]
                    .as_u64()
                    .or_else(|| e["count"].as_u64())
                    .unwrap_or(1),
            )
        })
        .collect()
}

#[test]
fn a_killed_leader_hands_over_within_the_lease_duration_without_scaling_twice() {
    if !enabled("a_killed_leader_hands_over_within_the_lease_duration_without_scaling_twice") {
        return;
    }
    let prometheus = FakePrometheus::start(25.0);
    let (ns, mut first) = app_with_controller("leader-killed", 1);
    wait_for(Duration::from_secs(30), "the first to lead", || {
        first.logs().contains("leading")
    });
    let second = Controller::start(&ns.0, &[]);
    wait_for(Duration::from_secs(30), "the second to wait", || {
        second.logs().contains("waiting for the lease")
    });
    apply(&policy(&ns.0, "chat", &prometheus_spec(&prometheus, "2s")));
    wait_for(
        Duration::from_secs(60),
        "the leader to scale to three for 25 rps and say so",
        || spec_replicas(&ns.0, "chat") == 3 && !events_of(&ns.0, "ScaledUp").is_empty(),
    );
    assert!(
        !second.logs().contains("leading"),
        "two leaders:\n{}",
        second.logs()
    );
    assert_eq!(
        reconciles_done(&second),
        0.0,
        "the waiting replica reconciled"
    );
    let holder = lease_holder(&ns.0);
    let scaled_at = status(&ns.0)["lastScaleTime"].clone();
    assert!(!scaled_at.is_null(), "no lastScaleTime after scaling");

    first.kill();
    let killed = Instant::now();
    assert_eq!(
        lease_holder(&ns.0),
        holder,
        "the killed leader's lease did not stay until it expired"
    );
    // Nothing renews the lease now: its last renewal is final.
    let renewed = lease_time(&ns.0, "renewTime");
    // The second counts LEASE_DURATION from when it first read the last renewal, which it
    // reads at most RETRY_PERIOD after it was made, and tries every RETRY_PERIOD; the rest is
    // slack for a loaded machine. A deadline, not a claim about speed.
    wait_for(
        LEASE_DURATION + 2 * RETRY_PERIOD + Duration::from_secs(10),
        "the second to take over",
        || {
            let replicas = spec_replicas(&ns.0, "chat");
            assert_eq!(replicas, 3, "the replicas changed during the handover");
            second.logs().contains("leading")
        },
    );
    let took = killed.elapsed();
    eprintln!("took over {:.1}s after the kill", took.as_secs_f64());
    let successor = lease_holder(&ns.0);
    assert!(
        !successor.is_empty() && successor != holder,
        "the lease is still held by {successor:?}, not the second"
    );
    // What the lease rules guarantee, on the one clock of this machine: no replica takes the
    // lease before it went LEASE_DURATION without renewal (the second starts counting when it
    // reads the renewal, which is after it was made).
    let acquired = lease_time(&ns.0, "acquireTime");
    assert!(
        acquired >= renewed + LEASE_DURATION,
        "the second took the lease at {acquired:?}, before it expired at {:?} (last renewed {renewed:?})",
        renewed + LEASE_DURATION
    );

    wait_for(
        Duration::from_secs(30),
        "three reconciles by the new leader",
        || {
            let replicas = spec_replicas(&ns.0, "chat");
            assert_eq!(replicas, 3, "the new leader changed the replicas");
            reconciles_done(&second) >= 3.0
        },
    );
    let status = status(&ns.0);
    assert_eq!(status["desiredReplicas"], 3, "{status}");
    assert_eq!(
        status["lastScaleTime"], scaled_at,
        "the new leader scaled: {status}"
    );
    let scaled_up = events_of(&ns.0, "ScaledUp");
    assert!(
        matches!(scaled_up.as_slice(), [(note, 1)] if note.contains("from 1 to 3")),
        "ScaledUp events: {scaled_up:?}"
    );
    assert!(
        events_of(&ns.0, "ScaledDown").is_empty(),
        "{:?}",
        event_reasons(&ns.0, "chat")
    );
}

#[test]
fn a_dry_run_reports_what_it_would_do_and_changes_nothing() {
    if !enabled("a_dry_run_reports_what_it_would_do_and_changes_nothing") {
        return;
    }
    let (ns, _controller) = app_with_controller("dry-run", 1);
    apply(&policy(
        &ns.0,
        "chat",
        r#"  minReplicas: 1
  maxReplicas: 5
  interval: 2s
  dryRun: true
  metrics:
  - name: rps
    prometheus: {query: "vector(35)"}
    target: {type: AverageValue, averageValue: "10"}
"#,
    ));
    wait_for(Duration::from_secs(60), "the dry-run decision", || {
        condition(&ns.0, "chat", "ScalingActive").is_some_and(|(_, r, _)| r == "DryRun")
    });
    let sp = kubectl_json(&["-n", &ns.0, "get", "scalingpolicy", "chat"]);
    assert_eq!(sp["status"]["desiredReplicas"], 4, "{}", sp["status"]);
    assert_eq!(
        spec_replicas(&ns.0, "chat"),
        1,
        "a dry run scaled the target"
    );
}

#[test]
fn prometheus_heartbeats_drive_the_drain() {
    if !enabled("prometheus_heartbeats_drive_the_drain") {
        return;
    }
    require_prometheus();
    install_crd();
    let ns = Namespace::new("prometheus-heartbeats");
    let _controller = Controller::start(&ns.0, &[]);
    // Nothing listens there: sessions are known from Prometheus only.
    apply(&session_app(&ns.0, "chat", 2, "http://127.0.0.1:9"));
    wait_for(Duration::from_secs(90), "two ready pods", || {
        ready_replicas(&ns.0, "chat") == 2
    });
    apply(&policy(
        &ns.0,
        "chat",
        &format!(
            r#"  minReplicas: 1
  maxReplicas: 2
  interval: 2s
  metrics:
  - name: sessions
    sessions: {{}}
    target: {{type: AverageValue, averageValue: "10"}}
  heartbeat:
    source: Prometheus
    query: sum by (pod) (app_active_sessions{{namespace="{}"}})
    timeout: 60s
  drain: {{timeout: 5m, onTimeout: Keep}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 2}}
"#,
            ns.0
        ),
    ));
    let mut drained = Vec::new();
    wait_for(Duration::from_secs(120), "the scale-in to one pod", || {
        for (name, draining) in pods(&ns.0, "chat") {
            if draining && !drained.contains(&name) {
                drained.push(name);
            }
        }
        spec_replicas(&ns.0, "chat") == 1 && pods(&ns.0, "chat").len() == 1
    });
    let left = &pods(&ns.0, "chat")[0].0;
    assert!(!drained.contains(left), "the drained pod stayed: {left}");
    wait_for(
        Duration::from_secs(30),
        "the DrainStarted and DrainCompleted events",
        || has_event(&ns.0, "DrainStarted") && has_event(&ns.0, "DrainCompleted"),
    );
}

/// The ReplicaSets that own the live pods of `chat`.
fn replica_sets(ns: &str) -> std::collections::BTreeSet<String> {
    live_pods(ns, "app=chat")
        .iter()
        .filter_map(|p| p["metadata"]["ownerReferences"][0]["name"].as_str())
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_rollout_holds_scale_in_until_it_ends_without_raising_the_count() {
    if !enabled("a_rollout_holds_scale_in_until_it_ends_without_raising_the_count") {
        return;
    }
    let prometheus = FakePrometheus::start(25.0);
    let (ns, _controller) = app_with_controller("rollout", 3);
    apply(&policy(
        &ns.0,
        "chat",
        &format!(
            r#"  minReplicas: 1
  maxReplicas: 6
  interval: 2s
  prometheus: {{address: "{}", timeout: 1s}}
  metrics:
  - name: rps
    prometheus: {{query: "sum(rate(requests_total[1m]))"}}
    target: {{type: AverageValue, averageValue: "10"}}
  heartbeat: {{source: Push, timeout: 30s}}
  drain: {{timeout: 10m}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 0}}
"#,
            prometheus.url()
        ),
    ));
    wait_for(Duration::from_secs(90), "three ready replicas", || {
        ready_replicas(&ns.0, "chat") == 3
            && condition(&ns.0, "chat", "Ready").is_some_and(|(s, _, _)| s == "True")
    });

    // A rollout that cannot finish: the new template's pods never turn ready, so the
    // Deployment keeps pods of two ReplicaSets.
    kubectl(&[
        "-n",
        &ns.0,
        "patch",
        "deployment",
        "chat",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/template/spec/containers/0/readinessProbe/httpGet/path", "value": "/never-ready"}]"#,
    ]);
    wait_for(Duration::from_secs(60), "pods of two ReplicaSets", || {
        replica_sets(&ns.0).len() == 2
    });

    // The load falls to one replica's worth, but the Deployment would pick which pods a lower
    // count removes, and the rollout replaces the old pods anyway: nothing drains, and the
    // surge's extra pods do not raise the count either.
    prometheus.set(5.0);
    wait_for(
        Duration::from_secs(30),
        "scale-in to wait for the rollout",
        || condition(&ns.0, "chat", "Draining").is_some_and(|(_, r, _)| r == "WaitingForRollout"),
    );
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(
            spec_replicas(&ns.0, "chat"),
            3,
            "the count changed during a rollout"
        );
        assert!(
            pods(&ns.0, "chat").iter().all(|(_, draining)| !draining),
            "a pod drains during a rollout"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Once the rollout is undone one ReplicaSet is left: pods drain, report no sessions, go.
    kubectl(&["-n", &ns.0, "rollout", "undo", "deployment/chat"]);
    wait_for(Duration::from_secs(90), "one replica", || {
        spec_replicas(&ns.0, "chat") == 1
    });
    wait_for(
        Duration::from_secs(30),
        "the DrainStarted and DrainCompleted events",
        || has_event(&ns.0, "DrainStarted") && has_event(&ns.0, "DrainCompleted"),
    );
}
