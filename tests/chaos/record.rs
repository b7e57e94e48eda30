//! The two independent counts of cut sessions: the local node's kill records
//! (`DRAINSCALER_DROPPED_LOG`) and the traffic generator's per-connection fates, matched
//! connection by connection.

use std::collections::BTreeSet;

use serde_json::Value;

/// One kill that cut sessions, as the node recorded it.
#[derive(Clone, Debug)]
pub struct Kill {
    pub pod: String,
    pub uid: String,
    pub reason: String,
    pub time: String,
    pub sessions: u64,
    /// The clients' addresses of the connections it cut.
    pub remotes: Vec<String>,
}

fn dropped_log() -> Result<String, String> {
    std::env::var("DRAINSCALER_DROPPED_LOG").map_err(|_| {
        "DRAINSCALER_DROPPED_LOG is not set: run `eval \"$(scripts/cluster env)\"` so that the node's record of cut sessions can be read".to_owned()
    })
}

/// Where the node's record ends now.
pub fn node_record_end() -> Result<u64, String> {
    let path = dropped_log()?;
    std::fs::metadata(&path)
        .map(|m| m.len())
        .map_err(|e| format!("the node's record of cut sessions {path} cannot be read: {e}"))
}

/// The node's kills in `ns` recorded after byte `start`. An unreadable record is an error, never
/// "nothing was cut".
pub fn node_kills(ns: &str, start: u64) -> Result<Vec<Kill>, String> {
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
        kills.push(Kill {
            pod: text("pod"),
            uid: text("uid"),
            reason: text("reason"),
            time: text("time"),
            sessions: v["sessions"].as_u64().unwrap_or(0),
            remotes: v["dropped"]
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
    /// Client addresses of the sessions it saw cut, with their pods.
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
                        s["local"].as_str().unwrap_or_default().to_owned(),
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

/// Connections one side saw cut and the other did not, each as `client address (pod)`.
pub fn mismatches(kills: &[Kill], generated: &Generated) -> (Vec<String>, Vec<String>) {
    let by_node: BTreeSet<&str> = kills
        .iter()
        .flat_map(|k| k.remotes.iter().map(String::as_str))
        .collect();
    let by_generator: BTreeSet<&str> = generated
        .dropped_sessions
        .iter()
        .map(|(local, _)| local.as_str())
        .collect();
    let only_node = kills
        .iter()
        .flat_map(|k| {
            k.remotes
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
