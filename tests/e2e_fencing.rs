//! Fenced leadership and writes that cannot hit the wrong object, on the local control plane: a
//! leader frozen (SIGSTOP) past its lease and woken (SIGCONT) writes nothing and exits while
//! the new leader carries on; UID and resourceVersion preconditions as the API server applies
//! them. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up` and
//! `eval "$(scripts/cluster env)"`.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use drainscaler::act::{self, Basis, Writer};
use drainscaler::api::TargetKind;
use drainscaler::engine::{self, DrainPlan, History, Mode, Observation};
use drainscaler::error::Error;
use drainscaler::leader::{LEASE_DURATION, Leadership, RETRY_PERIOD};
use drainscaler::observe::{self, PodUids, scales};
use drainscaler::testing::{NOW, pod, policy as policy_builder};
use serde_json::Value;
use support::{
    Controller, FakePrometheus, Namespace, app_with_controller, apply, dropped_log_end,
    dropped_sessions_since, enabled, http, install_crd, kubectl, kubectl_json, leader_and_standby,
    leader_label, pod_exists, pods, policy, ready_replicas, sample, session_app, signal,
    spec_replicas, start_draining_via, traffic_summary, wait_for,
};

/// A TCP relay to one backend at a time, on the address pods reach (`support::listen_host`: the
/// host's loopback for the local node, the node's address on the real one), standing in for
/// the heartbeat Service that follows the leader label: `switch` sends new connections to another backend and cuts
/// the open ones, as endpoints changing would.
struct Relay {
    addr: String,
    backend: Arc<Mutex<String>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(backend: &str) -> Relay {
        let listener = TcpListener::bind((support::listen_host().as_str(), 0))
            .expect("a port for the relay (on the real node, run inside the plane's namespace)");
        let addr = listener
            .local_addr()
            .expect("the relay's address")
            .to_string();
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let relay = Relay {
            addr,
            backend: Arc::new(Mutex::new(backend.to_owned())),
            open: Arc::default(),
            stop: Arc::default(),
        };
        let (backend, open, stop) = (
            Arc::clone(&relay.backend),
            Arc::clone(&relay.open),
            Arc::clone(&relay.stop),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let to = backend
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&to) else {
                    continue;
                };
                let mut kept = open.lock().unwrap_or_else(PoisonError::into_inner);
                for s in [&client, &server] {
                    if let Ok(s) = s.try_clone() {
                        kept.push(s);
                    }
                }
                pipe(&client, &server);
                pipe(&server, &client);
            }
        });
        relay
    }

    fn switch(&self, backend: &str) {
        *self.backend.lock().unwrap_or_else(PoisonError::into_inner) = backend.to_owned();
        for s in self
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Sends SIGCONT on drop, so that a failing test does not leave a stopped process behind.
struct Frozen(u32);

impl Frozen {
    fn stop(pid: u32) -> Frozen {
        signal(pid, "STOP");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn draining(ns: &str) -> Vec<String> {
    pods(ns, "chat")
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect()
}

/// Reconciles a controller has finished, from its `/metrics`.
fn reconciles_done(controller: &Controller) -> f64 {
    let (_, page) = http("GET", &controller.metrics_addr, "/metrics", &[], "");
    sample(&page, "drainscaler_reconcile_duration_seconds_count").unwrap_or(0.0)
}

/// The log lines a controller wrote after byte `from`.
fn logs_since(controller: &Controller, from: usize) -> String {
    let logs = controller.logs();
    logs.get(from..).unwrap_or_default().to_owned()
}

/// Lines of `logs` that report a write made: acting on a decision, or a fenced write sent.
fn write_lines(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| l.contains(" acted") || l.contains("acted "))
        .collect()
}

#[test]
fn a_leader_frozen_past_its_lease_and_woken_writes_nothing_while_the_new_one_carries_on() {
    if !enabled(
        "a_leader_frozen_past_its_lease_and_woken_writes_nothing_while_the_new_one_carries_on",
    ) {
        return;
    }
    let dropped_from = dropped_log_end();
    let (ns, [one, two], mut first, mut second) = leader_and_standby("frozen-leader");
    let (one, two) = (&one, &two);
    let relay = Relay::start(&first.addr);
    // Long sessions, so that the drain is still under way across the handover.
    let load = start_draining_via(&ns, &relay.addr, 12, 75);
    let drained = draining(&ns.0);
    let replicas_before = spec_replicas(&ns.0, "chat");

    let frozen = Frozen::stop(first.pid());
    let froze = Instant::now();
    // Nothing the stopped process does can reach its log: what follows is after it woke.
    let woke_from = first.logs().len();
    wait_for(
        LEASE_DURATION + RETRY_PERIOD + Duration::from_secs(10),
        "the second to take over",
        || second.logs().contains("leading"),
    );
    let took = froze.elapsed();
    // The first renewed at most a retry period (plus the time a renewal takes) before it
    // froze; the second counts the lease from when it first saw that renewal.
    assert!(
        took >= LEASE_DURATION - RETRY_PERIOD - Duration::from_secs(1),
        "took over {took:?} after the freeze, before the lease could expire"
    );
    relay.switch(&second.addr);
    wait_for(
        Duration::from_secs(30),
        "the new leader to reconcile",
        || reconciles_done(&second) >= 3.0 && leader_label(&ns.0, two) == "true",
    );
    // Frozen longer than the heartbeat timeout (20s): what the first last saw says every pod
    // went silent, so a woken leader acting on it would misjudge them all.
    while froze.elapsed() < Duration::from_secs(25) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut seen_during_handover = Vec::new();
    drop(frozen);
    wait_for(Duration::from_secs(30), "the woken first to exit", || {
        seen_during_handover.push(spec_replicas(&ns.0, "chat"));
        first.exited().is_some()
    });
    let after = logs_since(&first, woke_from);
    assert!(
        after.contains("the lease was not renewed within the renew deadline")
            || after.contains("another replica holds the lease"),
        "the woken first did not say why it stopped leading:\n{after}"
    );
    assert!(
        write_lines(&after).is_empty(),
        "the woken first wrote:\n{after}"
    );
    assert!(
        !first.exited().is_some_and(|s| s.success()),
        "the first exited as if stopped on purpose"
    );
    assert_eq!(
        leader_label(&ns.0, one),
        "false",
        "the woken first kept its leader label"
    );
    assert!(
        seen_during_handover.iter().all(|r| *r >= replicas_before),
        "replicas fell while the first woke: {seen_during_handover:?} from {replicas_before}"
    );

    // The new leader carries the drain through: the drained pods go once their sessions end,
    // and none went before.
    wait_for(
        Duration::from_secs(150),
        "the new leader to remove the drained pods",
        || {
            let gone: Vec<&String> = drained.iter().filter(|p| !pod_exists(&ns.0, p)).collect();
            if !gone.is_empty() {
                assert_eq!(
                    dropped_sessions_since(&ns.0, dropped_from),
                    0,
                    "a drained pod went with sessions: {gone:?}"
                );
            }
            gone.len() == drained.len()
        },
    );
    let summary = traffic_summary(load);
    assert_eq!(summary["dropped"].as_u64(), Some(0), "{summary}");
    assert_eq!(dropped_sessions_since(&ns.0, dropped_from), 0);
    assert!(
        second.exited().is_none(),
        "the new leader stopped:\n{}",
        second.logs()
    );
}

/// The spec of a policy on the fake Prometheus: `rps` at 10 per replica, 1 to `max` replicas,
/// read every 30s (and at once on a spec change), with a Prometheus timeout long enough to
/// outlast a freeze.
fn prometheus_spec(prometheus: &FakePrometheus, max: u32) -> String {
    format!(
        r#"  minReplicas: 1
  maxReplicas: {max}
  interval: 30s
  prometheus: {{address: "{}", timeout: 25s}}
  metrics:
  - name: rps
    prometheus: {{query: "sum(rate(requests_total[1m]))"}}
    target: {{type: AverageValue, averageValue: "10"}}
  drain: {{timeout: 0s}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: 0}}
"#,
        prometheus.url()
    )
}

/// Makes `holder` the holder of the Lease `drainscaler` in `ns`, renewed now.
fn usurp_lease(ns: &str, holder: &str) {
    let stamp = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"])
        .output()
        .expect("date");
    let stamp = String::from_utf8_lossy(&stamp.stdout).trim().to_owned();
    let patch = format!(
        r#"{{"spec": {{"holderIdentity": "{holder}", "renewTime": "{stamp}", "acquireTime": "{stamp}", "leaseDurationSeconds": 300}}}}"#
    );
    kubectl(&[
        "-n",
        ns,
        "patch",
        "lease",
        "drainscaler",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

#[test]
fn a_leader_frozen_mid_reconcile_does_not_write_what_it_decides_when_it_wakes() {
    if !enabled("a_leader_frozen_mid_reconcile_does_not_write_what_it_decides_when_it_wakes") {
        return;
    }
    let prometheus = FakePrometheus::start(25.0);
    let (ns, mut leader) = app_with_controller("woken-leader", 1);
    wait_for(Duration::from_secs(30), "the controller to lead", || {
        leader.logs().contains("leading")
    });
    apply(&policy(&ns.0, "chat", &prometheus_spec(&prometheus, 6)));
    wait_for(Duration::from_secs(60), "three replicas for 25 rps", || {
        spec_replicas(&ns.0, "chat") == 3
    });

    // The next reading asks for five replicas, and its answer is held back: the leader is
    // frozen while it waits for it, between reading the scale and writing the count.
    prometheus.set(45.0);
    prometheus.delay(Duration::from_secs(5));
    let asked = prometheus.received();
    apply(&policy(&ns.0, "chat", &prometheus_spec(&prometheus, 7)));
    wait_for(Duration::from_secs(30), "the leader to query", || {
        prometheus.received() > asked
    });
    let frozen = Frozen::stop(leader.pid());
    let froze = Instant::now();
    let woke_from = leader.logs().len();
    // Another replica takes the lease once it expires; nobody else scales the target, so any
    // change to it from here on is the woken leader's.
    while froze.elapsed() < LEASE_DURATION + RETRY_PERIOD {
        std::thread::sleep(Duration::from_millis(200));
    }
    usurp_lease(&ns.0, "e2e-other-replica");
    let version =
        kubectl_json(&["-n", &ns.0, "get", "deployment", "chat"])["metadata"]["resourceVersion"]
            .clone();
    // The answer is waiting in its socket: on waking, the reconcile goes straight on to decide
    // five replicas and write them.
    drop(frozen);
    wait_for(Duration::from_secs(30), "the woken leader to exit", || {
        assert_eq!(
            spec_replicas(&ns.0, "chat"),
            3,
            "the woken leader scaled on a lease it no longer held"
        );
        leader.exited().is_some()
    });
    let after = logs_since(&leader, woke_from);
    eprintln!("the woken leader's log:\n{after}");
    assert!(write_lines(&after).is_empty(), "it wrote:\n{after}");
    let deployment = kubectl_json(&["-n", &ns.0, "get", "deployment", "chat"]);
    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(
        deployment["metadata"]["resourceVersion"], version,
        "the Deployment changed after the leader woke"
    );
    let lease = kubectl_json(&["-n", &ns.0, "get", "lease", "drainscaler"]);
    assert_eq!(
        lease["spec"]["holderIdentity"], "e2e-other-replica",
        "the woken leader took the lease back"
    );
}

/// A client for the plane, as the controller builds one.
async fn plane_client() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_default()
        .await
        .expect("a client for the local plane (KUBECONFIG)")
}

/// A decision to scale `chat` from `from` to `to` and to start draining `drain`.
fn decision(
    from: u32,
    to: u32,
    drain: &str,
) -> (drainscaler::policy::Policy, Observation, engine::Decision) {
    let mut p = policy_builder().build();
    p.target.name = "chat".to_owned();
    let seen = Observation {
        replicas: from,
        ordinals_start: 0,
        readings: Default::default(),
        instances: vec![pod(drain).ready().build()],
        heartbeats_since: NOW,
    };
    let mut d = engine::decide(&p, &seen, &History::default(), NOW);
    d.mode = Mode::Act;
    d.replicas = to;
    d.plan = DrainPlan {
        replicas: to,
        start: vec![drain.to_owned()],
        ..DrainPlan::default()
    };
    (p, seen, d)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_refuses_a_count_changed_since_it_was_read_and_a_pod_of_another_uid() {
    if !enabled("the_api_server_refuses_a_count_changed_since_it_was_read_and_a_pod_of_another_uid")
    {
        return;
    }
    install_crd();
    let ns = Namespace::new("preconditions");
    apply(&session_app(&ns.0, "chat", 2, "http://127.0.0.1:9"));
    // Two pods that are Ready: a pod picked while the ReplicaSet still settles may be gone
    // before the test looks at it again.
    wait_for(Duration::from_secs(90), "two ready pods", || {
        ready_replicas(&ns.0, "chat") == 2 && pods(&ns.0, "chat").len() == 2
    });
    let victim = pods(&ns.0, "chat")[0].0.clone();
    let client = plane_client().await;
    let leadership = Leadership::monotonic();
    leadership.renewed(leadership.now());
    let writer = Writer {
        client: &client,
        namespace: &ns.0,
        leadership: &leadership,
    };

    // Read the count as a reconcile does, from the watched Deployment; its version is the one
    // `/scale` shows (the status may still move: wait until both agree).
    let (scales, watches) = scales::watch(&client, Some(&ns.0));
    let (p, seen, d) = decision(2, 1, &victim);
    let mut agreed = false;
    for _ in 0..120 {
        let through = observe::target(&client, &scales, true, &ns.0, &p).await;
        if let (Some(Ok(cached)), Ok(Ok(read))) = (
            scales.target(TargetKind::Deployment, &ns.0, "chat"),
            through,
        ) && cached.resource_version == read.resource_version
        {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        agreed,
        "the watched Deployment never showed /scale's version"
    );
    let target = observe::target(&client, &scales, false, &ns.0, &p)
        .await
        .expect("the scale")
        .expect("a target");
    // Then someone else changes the count.
    kubectl(&["-n", &ns.0, "scale", "deployment", "chat", "--replicas=4"]);
    // This pod's UID is not the one observed: it stands for a pod recreated under its name.
    let uids = PodUids(HashMap::from([(
        victim.clone(),
        "0000-not-this-pod".to_owned(),
    )]));
    let basis = Basis {
        target: &target,
        uids: &uids,
    };
    let result = act::act(&writer, &p, &seen, &basis, &d, NOW).await;
    assert!(
        matches!(&result, Err(Error::ScaleChanged { .. })),
        "{result:?}"
    );
    assert_eq!(
        spec_replicas(&ns.0, "chat"),
        4,
        "the stale count overwrote the change"
    );
    let annotations =
        kubectl_json(&["-n", &ns.0, "get", "pod", &victim])["metadata"]["annotations"].clone();
    assert!(
        annotations.get("drainscaler.io/draining").is_none(),
        "a pod of another UID was marked draining: {annotations}"
    );

    // With the pod's real UID and a fresh read, both writes land.
    let uid = kubectl_json(&["-n", &ns.0, "get", "pod", &victim])["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let uids = PodUids(HashMap::from([(victim.clone(), uid)]));
    let (p, seen, d) = decision(4, 3, &victim);
    // The Deployment's status moves while its new pods start, and each move is a new
    // resourceVersion: read the watched cache again and retry, as the next reconcile would.
    let mut tries = 0;
    let applied = loop {
        let target = observe::target(&client, &scales, false, &ns.0, &p)
            .await
            .expect("the scale")
            .expect("a target");
        let basis = Basis {
            target: &target,
            uids: &uids,
        };
        match act::act(&writer, &p, &seen, &basis, &d, NOW).await {
            Err(Error::ScaleChanged { .. }) if tries < 20 => tries += 1,
            other => break other.expect("writes on what was read"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!((applied.pods_patched, applied.scaled_to), (1, Some(3)));
    assert_eq!(spec_replicas(&ns.0, "chat"), 3);
    let pod: Value = kubectl_json(&["-n", &ns.0, "get", "pod", &victim]);
    assert_eq!(
        pod["metadata"]["annotations"]["drainscaler.io/draining"],
        "true"
    );

    // A delete of another UID is refused too.
    let (p, seen, mut d) = decision(3, 3, &victim);
    d.plan = DrainPlan {
        replicas: 3,
        replace: vec![victim.clone()],
        ..DrainPlan::default()
    };
    let uids = PodUids(HashMap::from([(
        victim.clone(),
        "0000-not-this-pod".to_owned(),
    )]));
    let basis = Basis {
        target: &target,
        uids: &uids,
    };
    let applied = act::act(&writer, &p, &seen, &basis, &d, NOW)
        .await
        .expect("a refused delete is not an error");
    assert_eq!(applied.pods_deleted, 0);
    let pod: Value = kubectl_json(&["-n", &ns.0, "get", "pod", &victim]);
    assert!(
        pod["metadata"]["deletionTimestamp"].is_null(),
        "a pod of another UID was deleted"
    );
    for w in watches {
        w.abort();
    }
}
