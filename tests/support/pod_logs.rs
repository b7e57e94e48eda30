//! Sessions cut on the real node (`DRAINSCALER_NODE=kubelet`), from the session app's own
//! logs: it logs the sessions it holds at SIGTERM and as each ends after it, then "no sessions
//! left, exiting". The kubelet deletes a pod's logs with the pod, so every app container's
//! log is followed (`kubectl logs -f`) from the moment it runs. `scripts/sessions-cut` reads
//! the same lines for the demo.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{kubectl_bin, kubectl_json, wait_for};

/// What a pod's log says of its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEnd {
    pub pod: String,
    /// Sessions it held when SIGTERM came.
    pub held_at_sigterm: u64,
    /// Sessions it still held when it died: 0 when it logged that it exited with none.
    pub held_at_death: u64,
    /// Their ids, sorted, as the client sent them (the traffic generator's session ids; the
    /// app adds `#N` to an id already open, which is taken off here).
    pub ids_at_death: Vec<String>,
}

/// The end a session app's log records, if it got SIGTERM.
pub fn pod_end(pod: &str, log: &str) -> Option<PodEnd> {
    // slog's text format: ` key=value`, the value quoted when it must be.
    let field = |line: &str, key: &str| -> Option<String> {
        let rest = &line[line.find(&format!(" {key}="))? + key.len() + 2..];
        let value = if let Some(quoted) = rest.strip_prefix('"') {
            &quoted[..quoted.find('"')?]
        } else {
            rest.split_whitespace().next().unwrap_or_default()
        };
        Some(value.to_owned())
    };
    let open = |line: &str| -> Option<u64> { field(line, "open")?.parse().ok() };
    let mut end: Option<PodEnd> = None;
    let mut held: BTreeSet<String> = BTreeSet::new();
    for line in log.lines() {
        if line.contains(r#"msg="terminating:"#) {
            let count = open(line)?;
            held = field(line, "sessions")?
                .split(',')
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
                .collect();
            end = Some(PodEnd {
                pod: pod.to_owned(),
                held_at_sigterm: count,
                held_at_death: count,
                ids_at_death: Vec::new(),
            });
        } else if let Some(e) = end.as_mut() {
            if line.contains(r#"msg="session over after SIGTERM""#) {
                e.held_at_death = open(line)?;
                held.remove(&field(line, "id")?);
            } else if line.contains(r#"msg="no sessions left, exiting""#) {
                e.held_at_death = 0;
                held.clear();
            }
        }
    }
    if let Some(e) = end.as_mut() {
        e.ids_at_death = held
            .iter()
            .map(|key| {
                key.split_once('#')
                    .map_or(key.as_str(), |(id, _)| id)
                    .to_owned()
            })
            .collect();
    }
    end
}

/// Follows the log of container `app` of every pod in a namespace until dropped.
pub struct PodLogs {
    ns: String,
    dir: PathBuf,
    followers: Arc<Mutex<BTreeMap<String, Child>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PodLogs {
    pub fn follow(ns: &str) -> PodLogs {
        let dir = std::env::temp_dir().join(format!("drainscaler-pod-logs-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for pod logs");
        let followers = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (ns, dir, followers, stop) =
                (ns.to_owned(), dir.clone(), followers.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    follow_running(&ns, &dir, &followers);
                    std::thread::sleep(Duration::from_millis(500));
                }
            })
        };
        PodLogs {
            ns: ns.to_owned(),
            dir,
            followers,
            stop,
            thread: Some(thread),
        }
    }

    /// The ends of the pods that got SIGTERM, once no pod of the namespace is terminating any
    /// more and the logs of the pods that are gone have been read to their end; fails the test
    /// when a pod is gone without a SIGTERM record.
    pub fn ends(&self) -> Vec<PodEnd> {
        self.ends_checked().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`PodLogs::ends`], with a pod gone without a record as an error: "nothing cut" must
    /// mean every pod that went away said what it held when it went.
    pub fn ends_checked(&self) -> Result<Vec<PodEnd>, String> {
        wait_for(Duration::from_secs(120), "no pod to be terminating", || {
            kubectl_json(&["-n", &self.ns, "get", "pods"])["items"]
                .as_array()
                .is_none_or(|pods| {
                    pods.iter()
                        .all(|p| p["metadata"]["deletionTimestamp"].is_null())
                })
        });
        let living = kubectl_json(&["-n", &self.ns, "get", "pods"])["items"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (pod, child) in followers.iter_mut() {
            // A gone pod's stream ends with its container; give it a moment to.
            while !living.contains(pod) && Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let followed: Vec<String> = followers.keys().cloned().collect();
        drop(followers);
        let mut ends = Vec::new();
        for entry in std::fs::read_dir(&self.dir)
            .expect("the pod log directory")
            .flatten()
        {
            let path = entry.path();
            let Some(pod) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            ends.extend(pod_end(pod, &log));
        }
        ends.sort_by(|a, b| a.pod.cmp(&b.pod));
        for pod in followed.iter().filter(|p| !living.contains(p)) {
            if !ends.iter().any(|e| &e.pod == pod) {
                return Err(format!(
                    "pod {pod} is gone and its log ({}) holds no SIGTERM record: it died without SIGTERM, or its log was not read to the end",
                    self.dir.join(format!("{pod}.log")).display()
                ));
            }
        }
        Ok(ends)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Starts a `kubectl logs -f` for every running pod that has none (or whose stream ended
/// while the container still runs: it started too early, or broke; it reads from the start).
fn follow_running(ns: &str, dir: &Path, followers: &Mutex<BTreeMap<String, Child>>) {
    let Ok(out) = Command::new(kubectl_bin())
        .args(["-n", ns, "get", "pods", "-o", "json"])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let pods: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let running = pods["items"].as_array().into_iter().flatten().filter(|p| {
        p["spec"]["containers"][0]["name"] == "app"
            && !p["status"]["containerStatuses"][0]["state"]["running"].is_null()
    });
    let mut followers = followers.lock().unwrap_or_else(PoisonError::into_inner);
    for pod in running.filter_map(|p| p["metadata"]["name"].as_str()) {
        let alive = followers
            .get_mut(pod)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if alive {
            continue;
        }
        let Ok(file) = File::create(dir.join(format!("{pod}.log"))) else {
            continue;
        };
        let child = Command::new(kubectl_bin())
            .args(["-n", ns, "logs", "-f", &format!("pod/{pod}"), "-c", "app"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn();
        if let Ok(child) = child {
            followers.insert(pod.to_owned(), child);
        }
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for child in followers.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
