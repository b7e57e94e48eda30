//! The fault-injection soak (tests/chaos): waves of long sessions through the demo app while
//! the controller's leader is killed or frozen past its lease, the pods' heartbeats are cut in
//! either direction (for all pods or some), Prometheus goes down, pods turn not Ready, and the
//! policy is edited, paused and deleted mid-drain; then no session may have been cut, no pod
//! removed while it held sessions, replicas must have stayed in [min, max], and the steady
//! state must come back. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up` and
//! `eval "$(scripts/cluster env)"`.
//!
//! A few fixed seeds run here; `benches/chaos.sh ROUNDS [SEED]` runs many rounds (the test
//! `chaos_rounds`, with `DRAINSCALER_CHAOS_ROUNDS`) and prints a table. Every round prints its
//! seed and its faults; a seed replays the same faults in the same order (up to timing).
//! `DRAINSCALER_CHAOS_FAULTS=partition,leader-kill` limits the kinds of fault.

mod chaos;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chaos::Config;
use chaos::faults::Kind;
use chaos::proxy::{Cut, Partition, PartitionProxy};
use chaos::report::{RoundReport, table};
use chaos::rng::Rng;
use support::{
    Controller, FakePrometheus, Namespace, active_sessions, apply, enabled, http, install_crd,
    live_pods, pods, policy, ready_replicas, traffic, traffic_summary, wait_for,
};

fn run(cfg: &Config) -> RoundReport {
    let report = chaos::round(cfg);
    eprintln!("{}", report.text());
    report
}

/// The fault phase of a CI round: it runs over until each of the round's kinds was injected.
const CI_PHASE: Duration = Duration::from_secs(50);

/// A CI round: a fixed seed and the kinds it covers (each is dealt before any repeats). The two
/// rounds run at once and together inject every fault but the API server restart.
fn ci_round(test: &str, seed: u64, kinds: &[Kind]) {
    if !enabled(test) {
        return;
    }
    let report = run(&Config {
        seed,
        fault_phase: CI_PHASE,
        kinds: kinds.to_vec(),
        cover_all: true,
    });
    assert!(report.passed(), "{}", report.text());
}

#[test]
fn a_killed_leader_partitions_of_all_pods_prometheus_down_a_pause_and_an_edit_cut_no_session() {
    ci_round(
        "a_killed_leader_partitions_of_all_pods_prometheus_down_a_pause_and_an_edit_cut_no_session",
        1,
        &[
            Kind::LeaderKill,
            Kind::PartitionRequestsAll,
            Kind::PartitionRepliesSome,
            Kind::PrometheusDown,
            Kind::PolicyPause,
            Kind::PolicyEdit,
        ],
    );
}

#[test]
fn a_frozen_leader_partitions_of_some_pods_pods_not_ready_and_a_deleted_policy_cut_no_session() {
    ci_round(
        "a_frozen_leader_partitions_of_some_pods_pods_not_ready_and_a_deleted_policy_cut_no_session",
        2,
        &[
            Kind::LeaderFreeze,
            Kind::PartitionRequestsSome,
            Kind::PartitionRepliesAll,
            Kind::NotReady,
            Kind::PolicyDelete,
        ],
    );
}

/// `benches/chaos.sh`: `DRAINSCALER_CHAOS_ROUNDS` rounds from seed `DRAINSCALER_CHAOS_SEED`
/// (default 1000) on, each round's JSON appended to `DRAINSCALER_CHAOS_OUT` if set, then the
/// table. Fails if any round did.
#[test]
fn chaos_rounds() {
    let Some(rounds) = std::env::var("DRAINSCALER_CHAOS_ROUNDS")
        .ok()
        .and_then(|r| r.parse::<u64>().ok())
    else {
        eprintln!("skipping chaos_rounds: set DRAINSCALER_CHAOS_ROUNDS (benches/chaos.sh does)");
        return;
    };
    if !enabled("chaos_rounds") {
        return;
    }
    let first = std::env::var("DRAINSCALER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1000);
    let phase = std::env::var("DRAINSCALER_CHAOS_PHASE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let out = std::env::var("DRAINSCALER_CHAOS_OUT").ok();
    let mut reports = Vec::new();
    for seed in first..first + rounds {
        let cfg = Config::from_env(seed, phase).unwrap_or_else(|e| panic!("{e}"));
        let report = run(&cfg);
        if let Some(path) = &out {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            writeln!(f, "{}", report.json()).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
        reports.push(report);
    }
    let table = table(&reports);
    println!("{table}");
    assert!(
        reports.iter().all(RoundReport::passed),
        "{table}\n{}",
        reports
            .iter()
            .filter(|r| !r.passed())
            .map(RoundReport::text)
            .collect::<String>()
    );
}

/// `benches/chaos.sh --report FILE...`: the table over rounds already run, read from the JSON
/// lines that `DRAINSCALER_CHAOS_OUT` collected (`DRAINSCALER_CHAOS_REPORT`, files separated by
/// `:`). Fails if any of them failed.
#[test]
fn chaos_report() {
    let Ok(files) = std::env::var("DRAINSCALER_CHAOS_REPORT") else {
        eprintln!(
            "skipping chaos_report: set DRAINSCALER_CHAOS_REPORT (benches/chaos.sh --report does)"
        );
        return;
    };
    let mut reports = Vec::new();
    for file in files.split(':').filter(|f| !f.is_empty()) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{file}:{}: not JSON: {e}", i + 1));
            reports.push(
                RoundReport::from_json(&value).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1)),
            );
        }
    }
    assert!(!reports.is_empty(), "no rounds in {files}");
    let mut seeds: Vec<u64> = reports.iter().map(|r| r.seed).collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(
        seeds.len(),
        reports.len(),
        "a seed appears twice: the same round counted twice?"
    );
    let table = table(&reports);
    println!("{table}");
    assert!(reports.iter().all(RoundReport::passed), "{table}");
}

// The harness's own parts, on loopback without the plane.

#[test]
fn a_round_read_back_from_its_json_is_the_same_round() {
    use chaos::report::{FaultRecord, Violation};
    let round = RoundReport {
        seed: 7,
        replay: "benches/chaos.sh 1 7".to_owned(),
        faults: vec![FaultRecord {
            kind: Kind::PartitionRepliesSome,
            start: 1.5,
            end: 9.25,
            detail: "2 pods".to_owned(),
        }],
        opened: 120,
        cut_by_generator: 1,
        cut_by_node: 2,
        early_removals: 3,
        recovery: Some(Duration::from_millis(4_500)),
        violations: vec![Violation {
            fault: Some(Kind::PartitionRepliesSome),
            message: "a session was cut".to_owned(),
        }],
    };
    let back = RoundReport::from_json(&round.json()).expect("it reads back");
    assert_eq!(back.text(), round.text());
    assert_eq!(table(&[back]), table(std::slice::from_ref(&round)));
    let mut lying = round.json();
    lying["passed"] = serde_json::Value::Bool(true);
    assert!(
        RoundReport::from_json(&lying).is_err(),
        "a failed round read as passed"
    );
    let mut unknown = round.json();
    unknown["faults"][0]["kind"] = "meteor".into();
    assert!(RoundReport::from_json(&unknown).is_err());
}

/// The real node's record of cut sessions: what a pod's log says it held at SIGTERM and when
/// it died, by id, and the match with the generator's dropped sessions.
#[test]
fn a_pods_log_names_the_sessions_it_died_holding_and_each_is_matched_with_the_generators() {
    use chaos::record::{Generated, Kill, mismatches};
    let log = r#"time=2026-11-29T08:33:01.000Z level=INFO msg="session app listening" pod=chat-1
time=2026-11-29T08:34:08.802Z level=INFO msg="terminating: refusing new sessions, waiting for open ones to end" signal=terminated open=3 sessions=s4,s7,s7#2
time=2026-11-29T08:34:09.100Z level=INFO msg="session over after SIGTERM" id=s4 abandoned=false open=2
"#;
    let end = support::pod_end("chat-1", log).expect("a SIGTERM record");
    assert_eq!((end.held_at_sigterm, end.held_at_death), (3, 2));
    assert_eq!(end.ids_at_death, ["s7", "s7"]);
    let clean = format!(
        "{log}time=2026-11-29T08:34:10.000Z level=INFO msg=\"session over after SIGTERM\" id=s7 abandoned=false open=1\n\
         time=2026-11-29T08:34:11.000Z level=INFO msg=\"session over after SIGTERM\" id=s7#2 abandoned=false open=0\n\
         time=2026-11-29T08:34:11.000Z level=INFO msg=\"no sessions left, exiting\"\n"
    );
    let end = support::pod_end("chat-1", &clean).expect("a SIGTERM record");
    assert_eq!((end.held_at_death, end.ids_at_death.len()), (0, 0));
    assert!(
        support::pod_end("chat-2", "time=x level=INFO msg=\"serving\"\n").is_none(),
        "a pod that got no SIGTERM has no end"
    );

    let kill = Kill {
        pod: "chat-1".to_owned(),
        uid: String::new(),
        reason: "SIGTERM, by its log".to_owned(),
        time: String::new(),
        sessions: 1,
        held_at_sigterm: 3,
        cut: vec!["s7".to_owned()],
    };
    let generated = |dropped: &[(&str, &str)]| Generated {
        opened: 10,
        dropped: dropped.len() as u64,
        abandoned: 0,
        dropped_sessions: dropped
            .iter()
            .map(|(id, pod)| ((*id).to_owned(), (*pod).to_owned()))
            .collect(),
    };
    let (node, client) = mismatches(std::slice::from_ref(&kill), &generated(&[("s7", "chat-1")]));
    assert!(node.is_empty() && client.is_empty(), "{node:?} {client:?}");
    let (node, client) = mismatches(&[kill], &generated(&[("s9", "chat-1")]));
    assert_eq!(
        (node, client),
        (
            vec!["s7 (chat-1)".to_owned()],
            vec!["s9 (chat-1)".to_owned()]
        )
    );
}

/// A stand-in controller replica: answers every request with `status` and a body naming
/// itself; counts the heartbeats it received.
struct FakeReplica {
    addr: String,
    requests: Arc<AtomicU64>,
}

impl FakeReplica {
    fn start(status: u16, name: &'static str) -> FakeReplica {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = listener.local_addr().expect("an address").to_string();
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let counted = Arc::clone(&counted);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    // One request per connection is enough: `support::http` closes after one.
                    if let Ok(n @ 1..) = stream.read(&mut buf) {
                        // The proxy's leader probes send `{}`; heartbeats carry sessions.
                        if String::from_utf8_lossy(&buf[..n]).contains("sessions") {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                        let body = format!("{{\"replica\":\"{name}\"}}");
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                });
            }
        });
        FakeReplica { addr, requests }
    }
}

/// A request through the proxy from `source`, as (status, body); status 0 when no answer came.
fn through(proxy: &PartitionProxy, source: &str) -> (u16, String) {
    let socket = connect_from(source, proxy.addr);
    let Some(mut stream) = socket else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let body = r#"{"sessions":1}"#;
    let _ = write!(
        stream,
        "POST /v1/heartbeats HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

/// A TCP connection to `to` from the local address `source` (a pod IP on loopback), as the
/// session app's heartbeat client makes with `HEARTBEAT_SOURCE_IP`.
fn connect_from(source: &str, to: SocketAddr) -> Option<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .ok()?;
    let from = SocketAddr::new(source.parse().ok()?, 0);
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(from).ok()?;
        socket.connect(to).await.ok()
    })?;
    let stream = stream.into_std().ok()?;
    stream.set_nonblocking(false).ok()?;
    Some(stream)
}

fn wait_for_leader(proxy: &PartitionProxy, addr: &str) {
    wait_for(
        Duration::from_secs(10),
        "the proxy to find the leader",
        || proxy.leader().as_deref() == Some(addr),
    );
}

#[test]
fn the_proxy_routes_heartbeats_to_the_replica_that_leads() {
    let (follower, leader) = (
        FakeReplica::start(503, "follower"),
        FakeReplica::start(200, "leader"),
    );
    let proxy = PartitionProxy::start(
        "127.0.0.1",
        vec![follower.addr.clone(), leader.addr.clone()],
    );
    wait_for_leader(&proxy, &leader.addr);
    let (status, body) = through(&proxy, "127.0.0.1");
    assert_eq!((status, body.as_str()), (200, r#"{"replica":"leader"}"#));

    // The leader moves: the proxy follows.
    let next = FakeReplica::start(200, "next");
    proxy.set_backends(vec![follower.addr.clone(), next.addr.clone()]);
    wait_for_leader(&proxy, &next.addr);
    assert_eq!(through(&proxy, "127.0.0.1").1, r#"{"replica":"next"}"#);
}

#[test]
fn a_partition_of_requests_holds_them_and_one_of_replies_delivers_them_unanswered() {
    let leader = FakeReplica::start(200, "leader");
    let proxy = PartitionProxy::start("127.0.0.1", vec![leader.addr.clone()]);
    wait_for_leader(&proxy, &leader.addr);
    let received = || leader.requests.load(Ordering::SeqCst);

    proxy.partition(Partition {
        cut: Some(Cut::Requests),
        only: None,
    });
    let before = received();
    assert_eq!(
        through(&proxy, "127.10.200.1").0,
        0,
        "a request crossed a partition"
    );
    assert_eq!(
        received(),
        before,
        "the controller got a request through a partition"
    );

    proxy.partition(Partition {
        cut: Some(Cut::Replies),
        only: None,
    });
    let before = received();
    assert_eq!(
        through(&proxy, "127.10.200.1").0,
        0,
        "a reply crossed a partition"
    );
    assert_eq!(
        received(),
        before + 1,
        "the request did not reach the controller"
    );

    proxy.heal();
    assert_eq!(
        through(&proxy, "127.10.200.1").0,
        200,
        "the healed path does not answer"
    );
    assert!(
        proxy.dropped_chunks() >= 2,
        "dropped {}",
        proxy.dropped_chunks()
    );
}

#[test]
fn a_partition_of_some_pods_cuts_only_their_addresses() {
    let leader = FakeReplica::start(200, "leader");
    let proxy = PartitionProxy::start("127.0.0.1", vec![leader.addr.clone()]);
    wait_for_leader(&proxy, &leader.addr);
    let cut: IpAddr = "127.10.200.2".parse().expect("an address");
    proxy.partition(Partition {
        cut: Some(Cut::Requests),
        only: Some(BTreeSet::from([cut])),
    });
    assert_eq!(
        through(&proxy, "127.10.200.2").0,
        0,
        "the partitioned pod got through"
    );
    assert_eq!(
        through(&proxy, "127.10.200.3").0,
        200,
        "another pod was cut too"
    );
}

#[test]
fn a_seed_gives_the_same_schedule_and_fault_lists_parse_with_clear_errors() {
    let draw = |seed| {
        let mut rng = Rng::new(seed);
        (0..20)
            .map(|_| rng.secs(2, 30).as_secs())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(7), draw(7));
    assert_ne!(draw(7), draw(8));
    assert!(draw(7).iter().all(|s| (2..=30).contains(s)));

    assert_eq!(
        Kind::parse_list("leader, policy-pause").expect("parses"),
        [Kind::LeaderKill, Kind::LeaderFreeze, Kind::PolicyPause]
    );
    assert_eq!(Kind::parse_list("partition").expect("parses").len(), 4);
    let e = Kind::parse_list("leader,partiton").expect_err("a typo");
    assert!(
        e.contains("\"partiton\"") && e.contains("partition-requests-all"),
        "{e}"
    );
}

/// The race the soak found (seed 2 of an earlier CI round): a pod that learned of its drain
/// from a heartbeat reply fails readiness, as apps do while draining. If its heartbeats are then
/// cut and the drain is cancelled, the pod cannot hear `drain: false`: it stays not Ready and
/// silent, which is not a sign that it died, and it still holds sessions.
#[test]
fn a_partitioned_pod_whose_drain_is_cancelled_is_not_replaced() {
    if !enabled("a_partitioned_pod_whose_drain_is_cancelled_is_not_replaced") {
        return;
    }
    install_crd();
    let ns = Namespace::new("chaos-cancelled-drain");
    let controller = Controller::start(&ns.0, &[]);
    let proxy = PartitionProxy::start(&support::listen_host(), vec![controller.addr.clone()]);
    wait_for_leader(&proxy, &controller.addr);
    let prometheus = FakePrometheus::start(50.0);
    let mut app = chaos::app(&ns.0, &proxy.url());
    app = app.replacen(
        &format!("replicas: {}", chaos::MIN_REPLICAS),
        "replicas: 3",
        1,
    );
    apply(&app);
    wait_for(Duration::from_secs(90), "three ready pods", || {
        ready_replicas(&ns.0, "chat") == 3
    });
    let long = |sessions: u32, seed: &str| {
        traffic(
            &ns.0,
            "chat",
            &[
                "-shape",
                "constant:5",
                "-duration",
                "20s",
                "-max-sessions",
                &sessions.to_string(),
                "-fixed-length",
                "100s",
                "-seed",
                seed,
            ],
        )
    };
    let first = long(18, "1");
    wait_for(Duration::from_secs(30), "18 open sessions", || {
        active_sessions(&ns.0, "chat") >= 18
    });
    apply(&policy(
        &ns.0,
        "chat",
        &chaos::policy_spec(&prometheus.url(), false),
    ));
    // 18 sessions want two pods: one drains, and learns it from a heartbeat reply.
    let mut victim = (String::new(), String::new());
    wait_for(
        Duration::from_secs(60),
        "a pod that knows it drains",
        || {
            live_pods(&ns.0, "app=chat").iter().any(|p| {
                let ip = p["status"]["podIP"].as_str().unwrap_or_default();
                let (_, body) = http("GET", &format!("{ip}:8080"), "/sessions", &[], "");
                let knows = p["metadata"]["annotations"]["drainscaler.io/draining"] == "true"
                    && body.contains(r#""draining":true"#);
                if knows {
                    victim = (support::pod_name(p), ip.to_owned());
                }
                knows
            })
        },
    );
    let (pod, ip) = victim;
    proxy.partition(Partition {
        cut: Some(Cut::Requests),
        only: Some(BTreeSet::from([ip.parse().expect("a pod IP")])),
    });
    // The load comes back: the drain is cancelled, which the pod cannot hear.
    let second = long(30, "2");
    wait_for(Duration::from_secs(60), "the drain to be cancelled", || {
        !pods(&ns.0, "chat").iter().any(|(n, d)| n == &pod && *d)
    });
    // Past the heartbeat timeout and then some, the pod must still be there.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        assert!(
            !live_pods(&ns.0, "app=chat")
                .iter()
                .all(|p| support::pod_name(p) != pod),
            "{pod}, silent behind a partition and not Ready for a drain that was cancelled, was removed holding sessions: {:?}",
            support::policy_events(&ns.0, "chat", None)
                .iter()
                .filter_map(|e| e["message"].as_str().map(str::to_owned))
                .filter(|m| m.contains(&pod))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    proxy.heal();
    let (a, b) = (traffic_summary(first), traffic_summary(second));
    assert_eq!(
        (a["dropped"].as_u64(), b["dropped"].as_u64()),
        (Some(0), Some(0)),
        "{a}\n{b}"
    );
}
