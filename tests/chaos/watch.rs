//! What the soak sees of the cluster while it runs, from `kubectl get -w` streams (restarted when
//! the API server drops them): every replica count the Deployment asks for, and every pod
//! deletion with the sessions the pod held when it was deleted.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{http, pod_ready};

/// A pod as last seen.
#[derive(Clone, Debug, Default)]
pub struct PodSeen {
    pub name: String,
    pub uid: String,
    pub ip: String,
    pub ready: bool,
    pub draining: bool,
}

/// A pod that got a deletionTimestamp, and what it held then.
#[derive(Clone, Debug)]
pub struct Removal {
    pub pod: PodSeen,
    /// Seconds since the soak started.
    pub at: f64,
    /// Sessions the pod reported on `/sessions` just after the deletion was seen; `None` when
    /// it no longer answered. It refuses new sessions once told to terminate, so this is at most
    /// what it held at the deletion.
    pub sessions: Option<u64>,
}

#[derive(Default)]
pub struct Seen {
    pub pods: BTreeMap<String, PodSeen>,
    pub removals: Vec<Removal>,
    /// (seconds since start, spec.replicas) for every change seen.
    pub replicas: Vec<(f64, i64)>,
}

pub struct Watcher {
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    children: Arc<Mutex<Vec<Child>>>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watcher {
    /// Watches the pods labelled `app={app}` and the Deployment `app` in `ns`.
    pub fn start(ns: &str, app: &str, started: Instant) -> Watcher {
        let mut w = Watcher {
            seen: Arc::default(),
            stop: Arc::default(),
            children: Arc::default(),
            threads: Vec::new(),
        };
        let pods = vec![
            "-n".to_owned(),
            ns.to_owned(),
            "get".to_owned(),
            "pods".to_owned(),
            "-l".to_owned(),
            format!("app={app}"),
        ];
        let deployment = vec![
            "-n".to_owned(),
            ns.to_owned(),
            "get".to_owned(),
            "deployment".to_owned(),
            app.to_owned(),
        ];
        for (args, on_pod) in [(pods, true), (deployment, false)] {
            let (seen, stop, children) = (
                Arc::clone(&w.seen),
                Arc::clone(&w.stop),
                Arc::clone(&w.children),
            );
            w.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    stream(&args, &children, &stop, |object| {
                        let at = started.elapsed().as_secs_f64();
                        if on_pod {
                            pod_event(&seen, object, at);
                        } else if let Some(r) = object["spec"]["replicas"].as_i64() {
                            let mut s = lock(&seen);
                            if s.replicas.last().is_none_or(|&(_, last)| last != r) {
                                s.replicas.push((at, r));
                            }
                        }
                    });
                    // The stream ended (an API server restart): watch again after a moment.
                    std::thread::sleep(Duration::from_millis(500));
                }
            }));
        }
        w
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for mut c in lock(&self.children).drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Runs `kubectl ARGS -w -o json` and hands each object to `each` until the stream ends.
fn stream(
    args: &[String],
    children: &Mutex<Vec<Child>>,
    stop: &AtomicBool,
    mut each: impl FnMut(&Value),
) {
    let kubectl = std::env::var("DRAINSCALER_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let Ok(mut child) = Command::new(kubectl)
        .args(args)
        .args(["-w", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return;
    };
    let Some(out) = child.stdout.take() else {
        return;
    };
    let pid = child.id();
    lock(children).push(child);
    for object in serde_json::Deserializer::from_reader(BufReader::new(out)).into_iter::<Value>() {
        let Ok(object) = object else { break };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        each(&object);
    }
    let mut children = lock(children);
    if let Some(i) = children.iter().position(|c| c.id() == pid) {
        let mut c = children.remove(i);
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn pod_event(seen: &Mutex<Seen>, pod: &Value, at: f64) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let now = PodSeen {
        name: text(&pod["metadata"]["name"]),
        uid: text(&pod["metadata"]["uid"]),
        ip: text(&pod["status"]["podIP"]),
        ready: pod_ready(pod),
        draining: pod["metadata"]["annotations"]["drainscaler.io/draining"] == "true",
    };
    let deleted = !pod["metadata"]["deletionTimestamp"].is_null();
    let first_deletion = {
        let mut s = lock(seen);
        let before = s.pods.insert(now.uid.clone(), now.clone());
        let known = s.removals.iter().any(|r| r.pod.uid == now.uid);
        // What it was before the deletion: the deletion itself fails readiness.
        (deleted && !known).then(|| before.unwrap_or_else(|| now.clone()))
    };
    let Some(mut pod) = first_deletion else {
        return;
    };
    if pod.ip.is_empty() {
        pod.ip = now.ip;
    }
    let sessions = (!pod.ip.is_empty())
        .then(|| http("GET", &format!("{}:8080", pod.ip), "/sessions", &[], ""))
        .and_then(|(status, body)| {
            (status == 200)
                .then(|| serde_json::from_str::<Value>(&body).ok())
                .flatten()
        })
        .and_then(|v| v["active"].as_u64());
    lock(seen).removals.push(Removal { pod, at, sessions });
}
