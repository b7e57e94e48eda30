//! The two independent counts of cut sessions: the node's side and the traffic generator's
//! per-connection fates, matched connection by connection. The node's side is, on the local
//! node, its kill records (`DRAINSCALER_DROPPED_LOG`), matched by the client's address; on the
//! real node, the app pods' own logs (what each held at SIGTERM and still held when it died,
//! `support::pod_ends`), matched by session id.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::chaos::watch::PodSeen;
use crate::support::{pod_ends, real_node};

/// One pod's end that cut sessions, or (on the real node) that came while it held some.
#[derive(Clone, Debug)]
pub struct Kill {
    pub pod: String,
    /// Empty on the real node, where a pod's log is known by the pod's name.
    pub uid: String,
    pub reason: String,
    pub time: String,
    /// Sessions cut: those the pod held when it was killed.
    pub sessions: u64,
    /// Sessions it held when it was told to terminate (SIGTERM on the real node; on the local
    /// node, which records only kills, the same as `sessions`).
    pub held_at_sigterm: u64,
    /// The connections it cut, by the key the generator's result is matched on (`session_key`):
    /// the client's address on the local node, the session id on the real node.
    pub cut: Vec<String>,
}

impl Kill {
    /// Whether this is the end of the pod the watch saw.
    pub fn of(&self, pod: &PodSeen) -> bool {
        if self.uid.is_empty() {
            self.pod == pod.name
        } else {
            self.uid == pod.uid
        }
    }
}

/// What a session of the generator's result is matched on: on the local node the client's
/// address (the node's record holds the connections it destroyed), on the real node the
/// session id (the app logs the ids it holds).
fn session_key(session: &Value) -> String {
    let key = if real_node() { "id" } else { "local" };
    session[key].as_str().unwrap_or_default().to_owned()
}

fn dropped_log() -> Result<String, String> {
    std::env::var("DRAINSCALER_DROPPED_LOG").map_err(|_| {
        "DRAINSCALER_DROPPED_LOG is not set: run `eval \"$(scripts/cluster env)\"` so that the node's record of cut sessions can be read".to_owned()
    })
}

/// Where the node's record ends now (the real node's record is the test namespace's own).
pub fn node_record_end() -> Result<u64, String> {
    if real_node() {
        return Ok(0);
    }
    let path = dropped_log()?;
    std::fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|e| format!("the node's record of cut sessions {path} cannot be read: {e}"))
}

/// The node's kills in `ns` recorded after byte `start`. An unreadable record is an error, never
/// "nothing was cut".
pub fn node_kills(ns: &str, start: u64) -> Result<Vec<Kill>, String> {
    if real_node() {
        return Ok(pod_ends(ns)?
            .into_iter()
            .filter(|e| e.held_at_sigterm > 0 || e.held_at_death > 0)
            .map(|e| Kill {
                pod: e.pod,
                uid: String::new(),
                reason: "SIGTERM, by its log".to_owned(),
                time: String::new(),
                sessions: e.held_at_death,
                held_at_sigterm: e.held_at_sigterm,
                cut: e.ids_at_death,
            })
            .collect());
    }
    let path = dropped_log()?;
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("the node's record of cut sessions {path} cannot be read: {e}"))?;
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    if start > bytes.len() {
        return Err(format!(
            "the node's record {path} shrank below the {start} bytes it had when the round began: it was truncated, so this round's kills are unknown"
        ));
    }
    let mut kills = Vec::new();
    for line in String::from_utf8_lossy(&bytes[start..]).lines() {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("a line of {path} is not JSON ({e}): {line}"))?;
        if v["namespace"] != ns {
            continue;
        }
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let sessions = v["sessions"].as_u64().unwrap_or(0);
        kills.push(Kill {
            pod: text("pod"),
            uid: text("uid"),
            reason: text("reason"),
            time: text("time"),
            sessions,
            held_at_sigterm: sessions,
            cut: v["dropped"]
                .as_array()
                .map(|d| {
                    d.iter()
                        .filter_map(|c| c["remote"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        });
    }
    Ok(kills)
}

/// The generator's result file (`-out`): every session with its fate.
pub struct Generated {
    pub opened: u64,
    pub dropped: u64,
    pub abandoned: u64,
    /// The sessions it saw cut (by `session_key`), with their pods.
    pub dropped_sessions: Vec<(String, String)>,
}

pub fn generated(path: &std::path::Path) -> Result<Generated, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("the traffic generator's result {}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the traffic generator's result is not JSON: {e}"))?;
    let count = |k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("the traffic generator's result has no {k}"))
    };
    let dropped_sessions = v["sessions"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|s| s["outcome"] == "dropped")
                .map(|s| {
                    (
                        session_key(s),
                        s["pod"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Generated {
        opened: count("opened")?,
        dropped: count("dropped")?,
        abandoned: count("abandoned")?,
        dropped_sessions,
    })
}

/// Connections one side saw cut and the other did not, each as `key (pod)`.
pub fn mismatches(kills: &[Kill], generated: &Generated) -> (Vec<String>, Vec<String>) {
    let by_node: BTreeSet<&str> = kills
        .iter()
        .flat_map(|k| k.cut.iter().map(String::as_str))
        .collect();
    let by_generator: BTreeSet<&str> = generated
        .dropped_sessions
        .iter()
        .map(|(local, _)| local.as_str())
        .collect();
    let only_node = kills
        .iter()
        .flat_map(|k| {
            k.cut
                .iter()
                .filter(|r| !by_generator.contains(r.as_str()))
                .map(move |r| format!("{r} ({})", k.pod))
        })
        .collect();
    let only_generator = generated
        .dropped_sessions
        .iter()
        .filter(|(local, _)| !by_node.contains(local.as_str()))
        .map(|(local, pod)| format!("{local} ({pod})"))
        .collect();
    (only_node, only_generator)
}
