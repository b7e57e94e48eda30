//! The fault-injection soak (issue 9, item 8): waves of long sessions through the demo app while
//! faults land at seeded times, and the invariants checked throughout: no session cut (by the
//! traffic generator's count and by the node's record), no pod removed while it held sessions
//! (the policy drains with `onTimeout: Keep`), replicas within [min, max], and a return to the
//! steady state after the last fault.

pub mod faults;
pub mod proxy;
pub mod record;
pub mod report;
pub mod rng;
pub mod watch;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chaos::faults::Kind;
use crate::chaos::proxy::PartitionProxy;
use crate::chaos::report::{RoundReport, Violation};
use crate::chaos::rng::Rng;
use crate::chaos::watch::Watcher;
use crate::support::{
    AppOptions, Controller, FakePrometheus, Namespace, apply, http, install_crd, kubectl,
    kubectl_result, listen_host, map_image, policy, ready_replicas, real_node, repo,
    session_app_with, status_condition, traffic,
};

pub const MIN_REPLICAS: i64 = 2;
pub const MAX_REPLICAS: i64 = 5;
/// Sessions per replica the policy aims at.
const PER_REPLICA: f64 = 10.0;
/// The policy's heartbeat timeout, in seconds.
pub const HEARTBEAT_TIMEOUT: f64 = 10.0;
/// Longest session; drains last at most this long.
const MAX_SESSION: Duration = Duration::from_secs(40);
/// The steady state must come back within this long after the last fault: the longest drain,
/// the heartbeat timeout, the scale-down window and a lease, with slack for a loaded machine.
const RECOVERY_BOUND: Duration = Duration::from_secs(150);

/// One round's settings.
pub struct Config {
    pub seed: u64,
    /// How long faults keep coming after the warm-up.
    pub fault_phase: Duration,
    pub kinds: Vec<Kind>,
    /// Run the phase over until every kind was injected once (the CI rounds).
    pub cover_all: bool,
}

impl Config {
    /// The faults from `DRAINSCALER_CHAOS_FAULTS` (default: all but the API server restart,
    /// which `DRAINSCALER_CHAOS_APISERVER=1` adds, and which needs a private plane).
    pub fn from_env(seed: u64, fault_phase: Duration) -> Result<Config, String> {
        let mut kinds = match std::env::var("DRAINSCALER_CHAOS_FAULTS") {
            Ok(list) => Kind::parse_list(&list)?,
            Err(_) => Kind::ALL
                .into_iter()
                .filter(|k| *k != Kind::ApiServerRestart)
                .collect(),
        };
        if std::env::var_os("DRAINSCALER_CHAOS_APISERVER").is_some()
            && !kinds.contains(&Kind::ApiServerRestart)
        {
            kinds.push(Kind::ApiServerRestart);
        }
        if kinds.contains(&Kind::ApiServerRestart) && shared_plane() {
            return Err("the apiserver-restart fault would restart the shared plane's API server (port 16443), which other tests use: run it on a private plane (benches/chaos.sh --private-plane, or see tests/cluster/README.md \"A second, private plane\"), or set DRAINSCALER_CHAOS_SHARED_PLANE=1 when nothing else uses this plane".to_owned());
        }
        if kinds.is_empty() {
            return Err("DRAINSCALER_CHAOS_FAULTS names no fault".to_owned());
        }
        Ok(Config {
            seed,
            fault_phase,
            kinds,
            cover_all: false,
        })
    }
}

fn shared_plane() -> bool {
    let server = std::env::var("DRAINSCALER_APISERVER").unwrap_or_default();
    (server.is_empty() || server.ends_with(":16443"))
        && std::env::var_os("DRAINSCALER_CHAOS_SHARED_PLANE").is_none()
}

/// The demo app built from this checkout (the plane's built-in image may be older), as an image
/// name mapped on the local node. Built once per test process; named by its source's hash, so
/// that a rebuild never replaces a binary that running pods use. On the real node, the plane's
/// image of the app (`scripts/cluster up` builds it from this checkout and imports it when its
/// content changed).
fn app_image() -> &'static str {
    if real_node() {
        return "drainscaler/session-app:dev";
    }
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = repo().join("examples/session-app");
        let mut hash = Sha256::new();
        for file in ["main.go", "go.mod"] {
            hash.update(std::fs::read(dir.join(file)).expect("the session app's source"));
        }
        let tag: String = hash
            .finalize()
            .iter()
            .take(6)
            .map(|b| format!("{b:02x}"))
            .collect();
        let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("session-app-{tag}"));
        if !bin.exists() {
            let tmp = bin.with_extension(format!("tmp{}", std::process::id()));
            let ok = Command::new("go")
                .args(["build", "-trimpath", "-o"])
                .arg(&tmp)
                .arg(".")
                .current_dir(&dir)
                .env("CGO_ENABLED", "0")
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "go build examples/session-app (is Go on PATH?)");
            std::fs::rename(&tmp, &bin).expect("the built session app");
        }
        let image = format!("drainscaler/session-app-chaos-{tag}");
        map_image(&image, bin.to_str().expect("a UTF-8 path"));
        image
    })
}

/// The app: the demo session app sending heartbeats from its pod IP to `heartbeat_url`, with a
/// Service that routes to serving pods only.
pub fn app(ns: &str, heartbeat_url: &str) -> String {
    session_app_with(
        ns,
        "chat",
        MIN_REPLICAS as u32,
        heartbeat_url,
        &AppOptions {
            image: app_image(),
            args: r#"["--max-sessions=200", "--max-session-length=5m"]"#,
            scraped: false,
            heartbeats_from_pod_ip: true,
        },
    )
}

/// The policy under test: sessions at 10 per replica plus a Prometheus metric that asks for
/// little (so that the sessions decide, and Prometheus going down is a failing metric), drains
/// that never remove a pod with sessions (`onTimeout: Keep`), lost pods replaced.
pub fn policy_spec(prometheus: &str, edited: bool) -> String {
    let (interval, window, drain) = if edited {
        ("3s", 20, "20m")
    } else {
        ("2s", 10, "10m")
    };
    format!(
        r#"  minReplicas: {MIN_REPLICAS}
  maxReplicas: {MAX_REPLICAS}
  interval: {interval}
  prometheus: {{address: "{prometheus}", timeout: 1s}}
  metrics:
  - name: sessions
    sessions: {{}}
    target: {{type: AverageValue, averageValue: "{PER_REPLICA}"}}
  - name: rps
    prometheus: {{query: "sum(rate(app_requests_total[1m]))"}}
    target: {{type: AverageValue, averageValue: "100"}}
  heartbeat: {{source: Push, timeout: {HEARTBEAT_TIMEOUT}s, onLost: Replace}}
  drain: {{timeout: {drain}, onTimeout: Keep}}
  fallback: {{failureThreshold: 3, replicas: 3}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: {window}}}
"#
    )
}

/// A round in progress.
pub struct Soak {
    pub ns: Namespace,
    pub replicas: Vec<Controller>,
    pub proxy: PartitionProxy,
    pub prometheus: FakePrometheus,
    pub rng: Rng,
    pub report: RoundReport,
    pub edited: bool,
    deck: Vec<Kind>,
    started: Instant,
    /// Replicas started to replace exited ones.
    pub restarts: u32,
}

impl Soak {
    /// Seconds since the round started.
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub fn log(&self, line: &str) {
        eprintln!(
            "[chaos seed={} +{:.1}s] {line}",
            self.report.seed,
            self.now()
        );
    }

    pub fn violation(&mut self, fault: Option<Kind>, message: String) {
        self.log(&format!("VIOLATION {message}"));
        self.report.violations.push(Violation { fault, message });
    }

    /// One pass of upkeep, about every quarter second: replicas that exited are replaced, as
    /// their Deployment would.
    pub fn tick(&mut self) {
        let mut changed = false;
        for i in 0..self.replicas.len() {
            if self.replicas[i].exited().is_some() {
                let old = self.replicas[i].addr.clone();
                self.replicas[i] = Controller::start(&self.ns.0, &[]);
                self.restarts += 1;
                self.log(&format!(
                    "replica on {old} exited; started one on {}",
                    self.replicas[i].addr
                ));
                changed = true;
            }
        }
        if changed {
            self.proxy
                .set_backends(self.replicas.iter().map(|c| c.addr.clone()).collect());
        }
        std::thread::sleep(Duration::from_millis(250));
    }

    /// Keeps a fault in place for `d` (the fault's length, not a wait for a condition).
    pub fn hold(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.tick();
        }
    }

    /// Ticks until `check` holds or `timeout` passes; returns whether it held.
    fn until(&mut self, timeout: Duration, mut check: impl FnMut(&mut Soak) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.tick();
        }
    }

    /// The next fault: the kinds are dealt from a deck shuffled by the seed, so that a round
    /// injects every kind it was given before it repeats one.
    fn deal(&mut self, kinds: &[Kind]) -> Kind {
        if self.deck.is_empty() {
            self.deck = kinds.to_vec();
            for i in (1..self.deck.len()).rev() {
                let j = usize::try_from(self.rng.below(i as u64 + 1)).unwrap_or(0);
                self.deck.swap(i, j);
            }
        }
        self.deck.pop().unwrap_or(Kind::PolicyEdit)
    }

    pub fn leader_replica(&self) -> Option<usize> {
        let leader = self.proxy.leader()?;
        self.replicas.iter().position(|c| c.addr == leader)
    }

    pub fn apply_policy(&self) {
        apply(&policy(
            &self.ns.0,
            "chat",
            &policy_spec(&self.prometheus.url(), self.edited),
        ));
    }

    pub fn patch_policy(&self, patch: &str) {
        kubectl(&[
            "-n",
            &self.ns.0,
            "patch",
            "scalingpolicy",
            "chat",
            "--type=merge",
            "-p",
            patch,
        ]);
    }
}

/// A read that may fail while the API server restarts: `None` then, and the caller looks
/// again on its next tick rather than failing the round.
fn read(args: &[&str]) -> Option<Value> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let (ok, out, _) = kubectl_result(&all, None);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// The app's pods, terminating ones left out; `None` while they cannot be read.
fn app_pods(ns: &str) -> Option<Vec<Value>> {
    let list = read(&["-n", ns, "get", "pods", "-l", "app=chat"])?;
    Some(
        list["items"]
            .as_array()?
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect(),
    )
}

fn draining_pods(ns: &str) -> usize {
    app_pods(ns).map_or(0, |pods| {
        pods.iter()
            .filter(|p| p["metadata"]["annotations"]["drainscaler.io/draining"] == "true")
            .count()
    })
}

/// Sessions open on the app's live pods, asked of each pod.
fn open_sessions(pods: &[Value]) -> u64 {
    pods.iter()
        .filter_map(|p| p["status"]["podIP"].as_str())
        .map(|ip| {
            let (_, body) = http("GET", &format!("{ip}:8080"), "/sessions", &[], "");
            serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["active"].as_u64())
                .unwrap_or(0)
        })
        .sum()
}

fn replicas_for(sessions: f64) -> i64 {
    // `as` is safe: the value is a small, non-negative whole number.
    #[allow(clippy::cast_possible_truncation)]
    let n = (sessions / PER_REPLICA).ceil() as i64;
    n.clamp(MIN_REPLICAS, MAX_REPLICAS)
}

/// What keeps the round from the steady state now, or `None` in it: the policy ready and
/// agreeing with the Deployment, every pod Ready, serving and not draining, no pod terminating,
/// and a replica count that matches the load (within the policy's 10% tolerance, with the peak
/// of the last `window` samples for the scale-down window).
fn unsettled(ns: &str, recent_peak: f64) -> Option<String> {
    let sp = kubectl_result(
        &["-n", ns, "get", "scalingpolicy", "chat", "-o", "json"],
        None,
    );
    if !sp.0 {
        return Some("the policy cannot be read".to_owned());
    }
    let sp: Value = serde_json::from_str(&sp.1).unwrap_or(Value::Null);
    if status_condition(&sp["status"], "Ready").is_none_or(|(s, _, _)| s != "True") {
        return Some("the policy is not Ready".to_owned());
    }
    let desired = sp["status"]["desiredReplicas"].as_i64();
    let Some(deployment) = read(&["-n", ns, "get", "deployment", "chat"]) else {
        return Some("the Deployment cannot be read".to_owned());
    };
    let spec = deployment["spec"]["replicas"].as_i64().unwrap_or(-1);
    if desired != Some(spec) {
        return Some(format!(
            "desired {desired:?} but the Deployment asks for {spec}"
        ));
    }
    let Some(all) = read(&["-n", ns, "get", "pods", "-l", "app=chat"]) else {
        return Some("the pods cannot be read".to_owned());
    };
    let all = all["items"].as_array().cloned().unwrap_or_default();
    if all.len() != usize::try_from(spec).unwrap_or(0) {
        return Some(format!("{} pods for {spec} replicas", all.len()));
    }
    for p in &all {
        let name = crate::support::pod_name(p);
        if !p["metadata"]["deletionTimestamp"].is_null() {
            return Some(format!("{name} is terminating"));
        }
        if p["metadata"]["annotations"]["drainscaler.io/draining"] == "true" {
            return Some(format!("{name} is draining"));
        }
        if !crate::support::pod_ready(p) {
            return Some(format!("{name} is not Ready"));
        }
    }
    let sessions = open_sessions(&all);
    #[allow(clippy::cast_precision_loss)]
    let low = replicas_for(sessions as f64 / 1.1);
    let high = replicas_for(recent_peak.max(sessions as f64) * 1.1);
    if spec < low || spec > high {
        return Some(format!(
            "{spec} replicas for {sessions} sessions (peak {recent_peak}): want {low}..={high}"
        ));
    }
    None
}

/// The bench command that deals the same faults with the same seed.
fn replay(cfg: &Config) -> String {
    let kinds: Vec<&str> = cfg.kinds.iter().map(|k| k.name()).collect();
    format!(
        "DRAINSCALER_CHAOS_FAULTS={} DRAINSCALER_CHAOS_PHASE_SECS={} benches/chaos.sh 1 {}{}",
        kinds.join(","),
        cfg.fault_phase.as_secs(),
        cfg.seed,
        if cfg.kinds.contains(&Kind::ApiServerRestart) {
            " --private-plane"
        } else {
            ""
        }
    )
}

/// Runs one round and reports what it found; panics only when the round cannot be set up.
pub fn round(cfg: &Config) -> RoundReport {
    install_crd();
    let ns = Namespace::new(&format!("chaos-{}", cfg.seed));
    let prometheus = FakePrometheus::start(50.0);
    let replicas = vec![Controller::start(&ns.0, &[]), Controller::start(&ns.0, &[])];
    let proxy = PartitionProxy::start(
        &listen_host(),
        replicas.iter().map(|c| c.addr.clone()).collect(),
    );
    let mut soak = Soak {
        ns,
        replicas,
        proxy,
        prometheus,
        rng: Rng::new(cfg.seed),
        report: RoundReport {
            seed: cfg.seed,
            replay: replay(cfg),
            ..RoundReport::default()
        },
        edited: false,
        deck: Vec::new(),
        started: Instant::now(),
        restarts: 0,
    };
    let faults: Vec<&str> = cfg.kinds.iter().map(|k| k.name()).collect();
    soak.log(&format!(
        "namespace {}, faults {}, proxy {}",
        soak.ns.0,
        faults.join(","),
        soak.proxy.url()
    ));
    assert!(
        soak.until(Duration::from_secs(30), |s| s.proxy.leader().is_some()),
        "no controller replica took the lease within 30s"
    );
    apply(&app(&soak.ns.0, &soak.proxy.url()));
    let ns = soak.ns.0.clone();
    assert!(
        soak.until(Duration::from_secs(90), |_| ready_replicas(&ns, "chat")
            == MIN_REPLICAS),
        "the app's pods did not become ready within 90s"
    );
    let record_start = match record::node_record_end() {
        Ok(end) => end,
        Err(e) => {
            soak.violation(None, e);
            return soak.report;
        }
    };
    let watcher = Watcher::start(&ns, "chat", soak.started);
    soak.apply_policy();

    // Waves of long sessions for the warm-up, the faults (the phase may run over to inject every
    // kind once) and a little after.
    let warmup = Duration::from_secs(20);
    let over = Duration::from_secs(if cfg.cover_all { 110 } else { 20 });
    let load_for = warmup + cfg.fault_phase + over;
    let load_end = Instant::now() + load_for;
    let out = std::env::temp_dir().join(format!("drainscaler-chaos-{}.json", ns));
    let load = traffic(
        &ns,
        "chat",
        &[
            "-shape",
            "wave:1.2:1.0:50s",
            "-duration",
            &format!("{}s", load_for.as_secs()),
            "-mean-length",
            "15s",
            "-max-length",
            &format!("{}s", MAX_SESSION.as_secs()),
            "-seed",
            &cfg.seed.to_string(),
            "-out",
            out.to_str().expect("a UTF-8 path"),
        ],
    );
    soak.hold(warmup);

    // With `cover_all`, every kind once at least, while the load lasts.
    let phase_end = Instant::now() + cfg.fault_phase;
    let mut dealt = 0;
    while (Instant::now() < phase_end || (cfg.cover_all && dealt < cfg.kinds.len()))
        && Instant::now() + Duration::from_secs(20) < load_end
    {
        let gap = soak.rng.secs(2, 6);
        soak.hold(gap);
        let kind = soak.deal(&cfg.kinds);
        dealt += 1;
        // Most faults land mid-drain, where a mistake cuts sessions.
        if soak.rng.chance(70) {
            let ns = soak.ns.0.clone();
            soak.until(Duration::from_secs(10), |_| draining_pods(&ns) > 0);
        }
        soak.inject(kind);
    }
    let missed: Vec<&str> = cfg
        .kinds
        .iter()
        .filter(|k| !soak.report.faults.iter().any(|f| f.kind == **k))
        .map(|k| k.name())
        .collect();
    if cfg.cover_all && !missed.is_empty() {
        // Not a failure of drainscaler's: said, so that a seed that covers less is noticed.
        soak.log(&format!(
            "the load ended before these faults could be injected: {missed:?}"
        ));
    }
    let last_fault = Instant::now();

    // Back to the steady state.
    let mut peaks: Vec<(Instant, f64)> = Vec::new();
    let mut why = String::new();
    let recovered = soak.until(RECOVERY_BOUND, |s| {
        let Some(pods) = app_pods(&s.ns.0) else {
            why = "the pods cannot be read".to_owned();
            return false;
        };
        #[allow(clippy::cast_precision_loss)]
        let sessions = open_sessions(&pods) as f64;
        peaks.push((Instant::now(), sessions));
        peaks.retain(|(t, _)| t.elapsed() < Duration::from_secs(30));
        let peak = peaks.iter().map(|(_, v)| *v).fold(0.0, f64::max);
        match unsettled(&s.ns.0, peak) {
            Some(w) => {
                why = w;
                false
            }
            None => true,
        }
    });
    if recovered {
        soak.report.recovery = Some(last_fault.elapsed());
        soak.log(&format!(
            "steady state {:.1}s after the last fault",
            last_fault.elapsed().as_secs_f64()
        ));
    } else {
        soak.violation(
            None,
            format!(
                "no steady state within {}s of the last fault: {why}",
                RECOVERY_BOUND.as_secs()
            ),
        );
    }

    // The sessions' fates, once the last has ended.
    let summary = load.wait_with_output().map(|o| o.status.success());
    if summary.as_ref().is_ok_and(|ok| !ok) || summary.is_err() {
        soak.violation(None, "the traffic generator failed".to_owned());
    }
    judge(&mut soak, &watcher, record_start, &out);
    drop(watcher);
    let _ = std::fs::remove_file(&out);
    soak.report.clone()
}

/// Checks the invariants on what was recorded.
fn judge(soak: &mut Soak, watcher: &Watcher, record_start: u64, out: &std::path::Path) {
    let ns = soak.ns.0.clone();
    let generated = match record::generated(out) {
        Ok(g) => g,
        Err(e) => {
            soak.violation(None, e);
            return;
        }
    };
    soak.report.opened = generated.opened;
    soak.report.cut_by_generator = generated.dropped;
    if generated.abandoned > 0 {
        soak.violation(
            None,
            format!(
                "{} sessions were still open when the generator gave up on them",
                generated.abandoned
            ),
        );
    }
    let kills = match record::node_kills(&ns, record_start) {
        Ok(k) => k,
        Err(e) => {
            soak.violation(None, e);
            return;
        }
    };
    soak.report.cut_by_node = kills.iter().map(|k| k.sessions).sum();
    let (only_node, only_generator) = record::mismatches(&kills, &generated);
    if !only_node.is_empty() || !only_generator.is_empty() {
        soak.violation(
            None,
            format!(
                "the node's record and the generator disagree: cut by the node only {only_node:?}, by the generator only {only_generator:?}"
            ),
        );
    }
    let events = crate::support::policy_events(&ns, "chat", None);
    let seen = watcher
        .seen
        .lock()
        .map(|s| (s.removals.clone(), s.replicas.clone()));
    let (removals, replica_counts) = seen.unwrap_or_default();
    for (at, r) in replica_counts {
        if !(MIN_REPLICAS..=MAX_REPLICAS).contains(&r) {
            let fault = soak.report.fault_at(at, HEARTBEAT_TIMEOUT).map(|f| f.kind);
            soak.violation(
                fault,
                format!("the Deployment asked for {r} replicas at +{at:.1}s, outside [{MIN_REPLICAS}, {MAX_REPLICAS}]"),
            );
        }
    }
    let mut early = 0;
    for removal in &removals {
        let killed: u64 = kills
            .iter()
            .filter(|k| k.of(&removal.pod))
            .map(|k| k.sessions)
            .sum();
        let at_sigterm: u64 = kills
            .iter()
            .filter(|k| k.of(&removal.pod))
            .map(|k| k.held_at_sigterm)
            .sum();
        let held = removal.sessions.unwrap_or(0).max(killed).max(at_sigterm);
        if held == 0 {
            continue;
        }
        early += 1;
        let fault = soak.report.fault_at(removal.at, HEARTBEAT_TIMEOUT).cloned();
        let said: Vec<String> = events
            .iter()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| m.contains(&removal.pod.name))
            .map(str::to_owned)
            .collect();
        soak.violation(
            fault.as_ref().map(|f| f.kind),
            format!(
                "pod {} was deleted at +{:.1}s holding {held} sessions ({} of them cut by the kill; it was {}draining and {}Ready) {}; the controller said: {said:?}",
                removal.pod.name,
                removal.at,
                killed,
                if removal.pod.draining { "" } else { "not " },
                if removal.pod.ready { "" } else { "not " },
                fault.map_or("with no fault in force".to_owned(), |f| format!("during {}", f.describe())),
            ),
        );
    }
    // Kills of pods the watch did not see deleted (it restarts across API server restarts).
    for k in kills.iter().filter(|k| {
        (k.sessions > 0 || k.held_at_sigterm > 0) && !removals.iter().any(|r| k.of(&r.pod))
    }) {
        early += 1;
        soak.violation(
            None,
            format!(
                "the node ended pod {} ({}) at {} holding {} sessions, {} of them cut",
                k.pod, k.reason, k.time, k.held_at_sigterm, k.sessions
            ),
        );
    }
    soak.report.early_removals = early;
    if generated.dropped > 0 || soak.report.cut_by_node > 0 {
        let mut by_pod: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
        for (_, pod) in &generated.dropped_sessions {
            *by_pod.entry(pod.as_str()).or_default() += 1;
        }
        let by_node: Vec<String> = kills
            .iter()
            .filter(|k| k.sessions > 0)
            .map(|k| format!("{} {} ({})", k.pod, k.sessions, k.reason))
            .collect();
        soak.violation(
            None,
            format!(
                "sessions cut: {} by the generator's count {by_pod:?}, {} by the node's record {by_node:?}",
                generated.dropped, soak.report.cut_by_node
            ),
        );
    }
}
