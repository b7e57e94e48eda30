//! The faults the soak injects, each as inject, hold for a seeded time, heal.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::chaos::Soak;
use crate::chaos::proxy::{Cut, Partition};
use crate::support::{http, kubectl, kubectl_result, live_pods, pod_name, signal};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The leading controller replica is SIGKILLed.
    LeaderKill,
    /// The leading replica is SIGSTOPped past the lease duration, then SIGCONTed.
    LeaderFreeze,
    /// Heartbeats from every pod never reach the controller.
    PartitionRequestsAll,
    /// Heartbeats from some pods never reach the controller.
    PartitionRequestsSome,
    /// The controller gets every pod's heartbeats; its replies are lost.
    PartitionRepliesAll,
    /// The controller gets some pods' heartbeats; its replies to them are lost.
    PartitionRepliesSome,
    /// The policy's Prometheus refuses connections.
    PrometheusDown,
    /// The API server is stopped and started again (a private plane only).
    ApiServerRestart,
    /// Some pods fail readiness while they keep their sessions and heartbeats.
    NotReady,
    /// The policy's spec is changed (interval, stabilization, drain timeout).
    PolicyEdit,
    /// The policy is paused, then resumed.
    PolicyPause,
    /// The policy is deleted, then created again.
    PolicyDelete,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::LeaderKill,
        Kind::LeaderFreeze,
        Kind::PartitionRequestsAll,
        Kind::PartitionRequestsSome,
        Kind::PartitionRepliesAll,
        Kind::PartitionRepliesSome,
        Kind::PrometheusDown,
        Kind::ApiServerRestart,
        Kind::NotReady,
        Kind::PolicyEdit,
        Kind::PolicyPause,
        Kind::PolicyDelete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::LeaderKill => "leader-kill",
            Kind::LeaderFreeze => "leader-freeze",
            Kind::PartitionRequestsAll => "partition-requests-all",
            Kind::PartitionRequestsSome => "partition-requests-some",
            Kind::PartitionRepliesAll => "partition-replies-all",
            Kind::PartitionRepliesSome => "partition-replies-some",
            Kind::PrometheusDown => "prometheus-down",
            Kind::ApiServerRestart => "apiserver-restart",
            Kind::NotReady => "not-ready",
            Kind::PolicyEdit => "policy-edit",
            Kind::PolicyPause => "policy-pause",
            Kind::PolicyDelete => "policy-delete",
        }
    }

    /// Parses a comma-separated list of names; `partition` stands for the four partitions,
    /// `leader` for both leader faults, `policy` for the three policy faults.
    pub fn parse_list(list: &str) -> Result<Vec<Kind>, String> {
        let mut kinds = Vec::new();
        for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let matched: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| k.name() == word || k.name().starts_with(&format!("{word}-")))
                .collect();
            if matched.is_empty() {
                let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                return Err(format!(
                    "unknown fault {word:?} in DRAINSCALER_CHAOS_FAULTS: use a comma-separated list of {} (or the prefixes leader, partition, partition-requests, partition-replies, policy)",
                    names.join(", ")
                ));
            }
            kinds.extend(matched);
        }
        kinds.sort();
        kinds.dedup();
        Ok(kinds)
    }
}

/// The lease is 15s (`drainscaler::leader::LEASE_DURATION`); a freeze outlasts it.
const FREEZE: (u64, u64) = (17, 25);
/// Partitions shorter and longer than the policy's 10s heartbeat timeout.
const PARTITION: (u64, u64) = (4, 30);
const OUTAGE: (u64, u64) = (4, 20);

impl Soak {
    /// Injects one fault of `kind`, holds it, heals it, and records it.
    pub fn inject(&mut self, kind: Kind) {
        let start = self.now();
        let detail = match kind {
            Kind::LeaderKill => self.leader_kill(),
            Kind::LeaderFreeze => {
                let hold = self.rng.secs(FREEZE.0, FREEZE.1);
                self.leader_freeze(hold)
            }
            Kind::PartitionRequestsAll
            | Kind::PartitionRequestsSome
            | Kind::PartitionRepliesAll
            | Kind::PartitionRepliesSome => {
                let hold = self.rng.secs(PARTITION.0, PARTITION.1);
                self.partition(kind, hold)
            }
            Kind::PrometheusDown => {
                let hold = self.rng.secs(OUTAGE.0, OUTAGE.1);
                self.prometheus.stop();
                self.hold(hold);
                self.prometheus.restart();
                format!("{}s", hold.as_secs())
            }
            Kind::ApiServerRestart => {
                let hold = self.rng.secs(2, 10);
                self.apiserver_restart(hold)
            }
            Kind::NotReady => {
                let hold = self.rng.secs(OUTAGE.0, OUTAGE.1 + 5);
                self.not_ready(hold)
            }
            Kind::PolicyEdit => {
                self.edited = !self.edited;
                self.apply_policy();
                if self.edited {
                    "interval 3s, scale-down window 20s, drain timeout 20m"
                } else {
                    "back to interval 2s, window 10s, drain timeout 10m"
                }
                .to_owned()
            }
            Kind::PolicyPause => {
                let hold = self.rng.secs(OUTAGE.0, OUTAGE.1);
                self.patch_policy(r#"{"spec":{"paused":true}}"#);
                self.hold(hold);
                self.patch_policy(r#"{"spec":{"paused":false}}"#);
                format!("{}s", hold.as_secs())
            }
            Kind::PolicyDelete => {
                let hold = self.rng.secs(OUTAGE.0, OUTAGE.1);
                self.policy_delete(hold)
            }
        };
        let end = self.now();
        self.log(&format!(
            "fault {} +{start:.1}s..+{end:.1}s {detail}",
            kind.name()
        ));
        self.report.faults.push(crate::chaos::report::FaultRecord {
            kind,
            start,
            end,
            detail,
        });
    }

    fn leader_kill(&mut self) -> String {
        let Some(i) = self.leader_replica() else {
            return "no replica answered as leader; nothing killed".to_owned();
        };
        let old = self.replicas[i].addr.clone();
        self.replicas[i].kill();
        // The fault lasts until another replica answers heartbeats.
        let deadline = Instant::now() + Duration::from_secs(45);
        while Instant::now() < deadline && self.proxy.leader().is_none_or(|l| l == old) {
            self.tick();
        }
        format!(
            "killed the replica on {old}; {} took over",
            self.proxy.leader().unwrap_or_default()
        )
    }

    fn leader_freeze(&mut self, hold: Duration) -> String {
        let Some(i) = self.leader_replica() else {
            return "no replica answered as leader; nothing frozen".to_owned();
        };
        let (pid, addr) = (self.replicas[i].pid(), self.replicas[i].addr.clone());
        signal(pid, "STOP");
        self.hold(hold);
        signal(pid, "CONT");
        format!("froze the replica on {addr} for {}s", hold.as_secs())
    }

    fn partition(&mut self, kind: Kind, hold: Duration) -> String {
        let cut = match kind {
            Kind::PartitionRequestsAll | Kind::PartitionRequestsSome => Cut::Requests,
            _ => Cut::Replies,
        };
        let some = matches!(
            kind,
            Kind::PartitionRequestsSome | Kind::PartitionRepliesSome
        );
        let (only, pods) = if some {
            let chosen = self.some_pods();
            let ips: BTreeSet<IpAddr> = chosen
                .iter()
                .filter_map(|(_, ip)| ip.parse().ok())
                .collect();
            let names: Vec<String> = chosen.into_iter().map(|(n, _)| n).collect();
            (Some(ips), names.join(" "))
        } else {
            (None, "all pods".to_owned())
        };
        let dropped = self.proxy.dropped_chunks();
        self.proxy.partition(Partition {
            cut: Some(cut),
            only,
        });
        self.hold(hold);
        self.proxy.heal();
        format!(
            "{}s, {pods}, {} chunks dropped",
            hold.as_secs(),
            self.proxy.dropped_chunks() - dropped
        )
    }

    fn not_ready(&mut self, hold: Duration) -> String {
        let chosen = self.some_pods();
        let switch = |on: bool| {
            for (_, ip) in &chosen {
                http(
                    "POST",
                    &format!("{ip}:8080"),
                    &format!("/ready?on={on}"),
                    &[],
                    "",
                );
            }
        };
        switch(false);
        self.hold(hold);
        switch(true);
        let names: Vec<&str> = chosen.iter().map(|(n, _)| n.as_str()).collect();
        format!("{}s, {}", hold.as_secs(), names.join(" "))
    }

    fn policy_delete(&mut self, hold: Duration) -> String {
        let ns = self.ns.0.clone();
        kubectl(&["-n", &ns, "delete", "scalingpolicy", "chat", "--wait=false"]);
        self.hold(hold);
        // A finalizer may hold the policy until the controller has restored the pods.
        let deadline = Instant::now() + Duration::from_secs(60);
        while kubectl_result(&["-n", &ns, "get", "scalingpolicy", "chat"], None).0 {
            if Instant::now() > deadline {
                self.violation(
                    Some(Kind::PolicyDelete),
                    "the deleted policy was still there 60s after its deletion".to_owned(),
                );
                break;
            }
            self.tick();
        }
        self.apply_policy();
        format!("deleted for {}s", hold.as_secs())
    }

    /// Stops the plane's API server (SIGTERM), keeps it down for `down`, and starts the same
    /// command line again, as `scripts/cluster` did, so that no port or flag is guessed.
    fn apiserver_restart(&mut self, down: Duration) -> String {
        let state = std::env::var("DRAINSCALER_CLUSTER_STATE").unwrap_or_default();
        let process = match ApiServer::find(&state) {
            Ok(p) => p,
            Err(e) => {
                self.violation(Some(Kind::ApiServerRestart), e);
                return "not restarted".to_owned();
            }
        };
        signal(process.pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::path::Path::new(&format!("/proc/{}", process.pid)).exists()
            && Instant::now() < deadline
        {
            self.tick();
        }
        self.hold(down);
        if let Err(e) = process.start_again(&state) {
            self.violation(Some(Kind::ApiServerRestart), e);
            return "not started again".to_owned();
        }
        let back = self.until_ready(Duration::from_secs(90), || {
            kubectl_result(&["get", "--raw", "/readyz"], None).0
        });
        if !back {
            self.violation(
                Some(Kind::ApiServerRestart),
                "the API server was not ready 90s after it was started again".to_owned(),
            );
        }
        format!("down {}s", down.as_secs())
    }

    fn until_ready(&mut self, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while !check() {
            if Instant::now() >= deadline {
                return false;
            }
            self.tick();
        }
        true
    }

    /// Between one and all but one of the live pods, seeded, as (name, IP).
    fn some_pods(&mut self) -> Vec<(String, String)> {
        let mut pods: Vec<(String, String)> = live_pods(&self.ns.0, "app=chat")
            .iter()
            .map(|p| {
                (
                    pod_name(p),
                    p["status"]["podIP"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .filter(|(_, ip)| !ip.is_empty())
            .collect();
        pods.sort();
        let n = 1 + self.rng.below(pods.len().saturating_sub(1).max(1) as u64);
        let mut chosen = Vec::new();
        for _ in 0..n {
            if pods.is_empty() {
                break;
            }
            let i = usize::try_from(self.rng.below(pods.len() as u64)).unwrap_or(0);
            chosen.push(pods.remove(i));
        }
        chosen
    }
}

/// The plane's running API server, as `scripts/cluster` started it.
struct ApiServer {
    pid: u32,
    argv: Vec<String>,
    env: Vec<(String, String)>,
}

impl ApiServer {
    fn find(state: &str) -> Result<ApiServer, String> {
        let pidfile = format!("{state}/run/kube-apiserver.pid");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                format!("no API server pid in {pidfile}: set DRAINSCALER_CLUSTER_STATE with `eval \"$(scripts/cluster env)\"` for the plane under test")
            })?;
        let split = |raw: Vec<u8>| -> Vec<String> {
            raw.split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let read = |what: &str| {
            std::fs::read(format!("/proc/{pid}/{what}"))
                .map(split)
                .map_err(|e| format!("the API server (pid {pid}) from {pidfile}: {e}"))
        };
        let argv = read("cmdline")?;
        let env = read("environ")?
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        // Only the API server that this test's kubeconfig talks to.
        let url = std::env::var("DRAINSCALER_APISERVER").unwrap_or_default();
        let port = url.rsplit(':').next().unwrap_or_default();
        let serves = argv
            .windows(2)
            .any(|w| w[0] == "--secure-port" && w[1] == port)
            || argv.iter().any(|a| *a == format!("--secure-port={port}"));
        if !serves {
            return Err(format!(
                "the API server in {pidfile} does not serve {url} (DRAINSCALER_APISERVER): not restarting another plane's"
            ));
        }
        Ok(ApiServer { pid, argv, env })
    }

    fn start_again(&self, state: &str) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{state}/logs/kube-apiserver.log"))
            .map_err(|e| format!("the API server's log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new("setsid")
            .args(&self.argv)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting the API server again: {e}"))?;
        // `scripts/cluster` finds it by this file; setsid execs in place, so the pid is the
        // server's.
        std::fs::write(
            format!("{state}/run/kube-apiserver.pid"),
            format!("{}\n", child.id()),
        )
        .map_err(|e| format!("the API server's pid file: {e}"))?;
        Ok(())
    }
}
