//! Helpers for end-to-end tests on the local control plane (`scripts/cluster up`, then
//! `eval "$(scripts/cluster env)"`). Tests run only when `DRAINSCALER_E2E` is set.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

mod pod_logs;
pub use pod_logs::PodEnd;
use pod_logs::PodLogs;
#[allow(unused_imports)] // used by some test crates only
pub use pod_logs::pod_end;

/// Whether the plane runs a real kubelet (`DRAINSCALER_NODE=kubelet`). Pod IPs exist only in
/// the plane's network namespace there, so the test binaries run inside it
/// (`scripts/cluster netns-exec`), with the controllers and the traffic generator they start.
pub fn real_node() -> bool {
    std::env::var("DRAINSCALER_NODE").is_ok_and(|mode| mode == "kubelet")
}

/// Where the controllers a test starts listen, so that pods reach their heartbeat port: the
/// host's loopback, which the local node's pods share, or on the real node the node's address
/// on the pod bridge (`DRAINSCALER_NODE_IP`). Anything else pods must reach (a relay, a proxy)
/// listens there too.
pub fn listen_host() -> String {
    if real_node() {
        std::env::var("DRAINSCALER_NODE_IP").unwrap_or_else(|_| {
            panic!("DRAINSCALER_NODE_IP is not set: run `eval \"$(scripts/cluster env)\"` first")
        })
    } else {
        "127.0.0.1".to_owned()
    }
}

/// On the real node, the logs of each test namespace's pods, followed from `Namespace::new`
/// until its drop: the record of sessions cut there (`dropped_sessions`).
static POD_LOGS: Mutex<std::collections::BTreeMap<String, Arc<PodLogs>>> =
    Mutex::new(std::collections::BTreeMap::new());

/// A ScalingPolicy named after its Deployment `target` in `ns`, with `spec` (the lines after
/// `targetRef`, indented two spaces).
pub fn policy(ns: &str, target: &str, spec: &str) -> String {
    format!(
        r#"apiVersion: drainscaler.io/v1alpha1
kind: ScalingPolicy
metadata: {{name: {target}, namespace: {ns}}}
spec:
  targetRef: {{apiVersion: apps/v1, kind: Deployment, name: {target}}}
{spec}"#
    )
}

/// A policy spec on the `sessions` metric (10 per replica, 1 to 4 replicas, decided every 2s),
/// drained with `onTimeout: Keep`, scaling down after `scale_down_window` seconds.
pub fn sessions_spec(scale_down_window: u32) -> String {
    format!(
        r#"  minReplicas: 1
  maxReplicas: 4
  interval: 2s
  metrics:
  - name: sessions
    sessions: {{}}
    target: {{type: AverageValue, averageValue: "10"}}
  heartbeat: {{source: Push, timeout: 20s}}
  drain: {{timeout: 5m, onTimeout: Keep}}
  behavior:
    scaleDown: {{stabilizationWindowSeconds: {scale_down_window}}}
"#
    )
}

/// The usual start of a test: the CRD, a fresh namespace, a controller scoped to it, and the
/// demo app `chat` with `replicas` pods sending heartbeats to that controller.
pub fn app_with_controller(namespace: &str, replicas: u32) -> (Namespace, Controller) {
    install_crd();
    let ns = Namespace::new(namespace);
    let controller = Controller::start(&ns.0, &[]);
    apply(&session_app(
        &ns.0,
        "chat",
        replicas,
        &format!("http://{}", controller.addr),
    ));
    (ns, controller)
}

/// Two controllers scoped to a fresh namespace `namespace`, each standing in for one of two
/// stand-in pods (the controller's own, which it labels as leader): the first leading, the
/// second waiting for the lease. Returns the namespace, the stand-in pods' names and the two.
pub fn leader_and_standby(namespace: &str) -> (Namespace, [String; 2], Controller, Controller) {
    install_crd();
    let ns = Namespace::new(namespace);
    apply(&session_app(&ns.0, "standin", 2, "http://127.0.0.1:9"));
    wait_for(Duration::from_secs(90), "two stand-in pods", || {
        pods(&ns.0, "standin").len() == 2
    });
    let standins: Vec<String> = pods(&ns.0, "standin").into_iter().map(|(n, _)| n).collect();
    let [one, two] = [standins[0].clone(), standins[1].clone()];
    let first = Controller::start(&ns.0, &[&format!("--pod-name={one}")]);
    wait_for(Duration::from_secs(30), "the first to lead", || {
        first.logs().contains("leading") && leader_label(&ns.0, &one) == "true"
    });
    let second = Controller::start(&ns.0, &[&format!("--pod-name={two}")]);
    wait_for(Duration::from_secs(30), "the second to wait", || {
        second.logs().contains("waiting for the lease") && leader_label(&ns.0, &two) == "false"
    });
    (ns, [one, two], first, second)
}

/// The `drainscaler.io/leader` label of pod `pod` in `ns` ("" without one).
pub fn leader_label(ns: &str, pod: &str) -> String {
    let p = kubectl_json(&["-n", ns, "get", "pod", pod]);
    p["metadata"]["labels"]["drainscaler.io/leader"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Whether e2e tests should run; says why not when they should not.
pub fn enabled(test: &str) -> bool {
    if std::env::var_os("DRAINSCALER_E2E").is_some() {
        return true;
    }
    eprintln!(
        "skipping {test}: set DRAINSCALER_E2E=1 after `scripts/cluster up` and `eval \"$(scripts/cluster env)\"`"
    );
    false
}

fn kubectl_bin() -> String {
    std::env::var("DRAINSCALER_KUBECTL").unwrap_or_else(|_| "kubectl".to_owned())
}

/// Runs kubectl; returns (success, stdout, stderr).
pub fn kubectl_result(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut cmd = Command::new(kubectl_bin());
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl stdin");
    }
    let out = child.wait_with_output().expect("kubectl output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs kubectl and fails the test if it fails.
pub fn kubectl(args: &[&str]) -> String {
    let (ok, out, err) = kubectl_result(args, None);
    assert!(ok, "kubectl {}: {err}", args.join(" "));
    out
}

pub fn kubectl_json(args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all)).expect("kubectl JSON")
}

pub fn apply(yaml: &str) {
    let (ok, _, err) = kubectl_result(&["apply", "-f", "-"], Some(yaml));
    assert!(ok, "kubectl apply: {err}\n{yaml}");
}

/// Polls `check` until it holds or `timeout` passes; the pause is between polls of a real
/// condition.
pub fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {}s waiting for {what}",
            timeout.as_secs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs the checked-in CRD (idempotent).
pub fn install_crd() {
    let path = repo().join("crds/scalingpolicy.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=drainscaler-e2e",
        "-f",
        path.to_str().expect("utf-8 path"),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/scalingpolicies.drainscaler.io",
        "--timeout=30s",
    ]);
}

/// A namespace for one test, deleted afterwards.
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(test: &str) -> Namespace {
        let suffix = std::process::id() ^ (Instant::now().elapsed().subsec_nanos());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "e2e-{}-{:x}",
            test.replace('_', "-").chars().take(40).collect::<String>(),
            (suffix ^ nanos) & 0xffff
        );
        kubectl(&["create", "namespace", &name]);
        if real_node() {
            POD_LOGS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(name.clone(), Arc::new(PodLogs::follow(&name)));
        }
        Namespace(name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let followed = POD_LOGS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
        drop(followed);
        if std::env::var_os("DRAINSCALER_E2E_KEEP").is_none() {
            let _ = kubectl_result(&["delete", "namespace", &self.0, "--wait=false"], None);
            release_policies(&self.0);
        }
    }
}

/// On the real node, follows the logs of the app pods of a namespace that `Namespace::new` did
/// not make (the manifests' `demo`), from now until the guard is dropped, so that
/// `dropped_sessions` can count there; nothing on the local node, whose kill record is global.
pub struct Followed(Option<String>);

pub fn follow_pod_logs(ns: &str) -> Followed {
    if !real_node() {
        return Followed(None);
    }
    POD_LOGS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(ns.to_owned(), Arc::new(PodLogs::follow(ns)));
    Followed(Some(ns.to_owned()))
}

impl Drop for Followed {
    fn drop(&mut self) {
        if let Some(ns) = &self.0 {
            let followed = POD_LOGS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(ns);
            drop(followed);
        }
    }
}

/// On the real node, what the logs of `ns`'s app pods say of their ends (`PodLogs::ends`); an
/// error when `ns` is not followed or a pod went without a record.
pub fn pod_ends(ns: &str) -> Result<Vec<PodEnd>, String> {
    // Not under the lock: the ends wait for terminating pods, and other tests make namespaces.
    let logs = POD_LOGS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(ns)
        .cloned()
        .ok_or_else(|| {
            format!("on the real node sessions cut are counted from pod logs followed from Namespace::new or follow_pod_logs, and {ns} is not followed")
        })?;
    logs.ends_checked()
}

/// Takes the controller's finalizer off every policy in `ns`: with the test's controller
/// stopped, nothing else would, and the namespace would never finish terminating.
pub fn release_policies(ns: &str) {
    let (ok, names, _) = kubectl_result(&["-n", ns, "get", "scalingpolicies", "-o", "name"], None);
    if !ok {
        return;
    }
    for name in names.lines().filter(|l| !l.is_empty()) {
        let _ = kubectl_result(
            &[
                "-n",
                ns,
                "patch",
                name,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ],
            None,
        );
    }
}

/// Why a controller did not start, with its log.
enum Failed {
    AddressInUse(String),
    Exited(String),
}

/// `drainscaler run` scoped to one namespace, stopped on drop.
pub struct Controller {
    child: Child,
    /// The heartbeat port.
    pub addr: String,
    /// `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: String,
    pub log: PathBuf,
}

/// A port free a moment ago on the address pods reach (`listen_host`).
fn free_addr() -> String {
    let host = listen_host();
    let port = TcpListener::bind((host.as_str(), 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| {
            panic!(
                "no free port on {host} ({e}); on the real node run the tests inside the plane's network namespace: scripts/cluster netns-exec"
            )
        })
        .port();
    format!("{host}:{port}")
}

impl Controller {
    /// Starts on a free port. The port is free when the kernel names it but not held until the
    /// controller binds it, and another process may take it first: a controller that cannot
    /// bind exits, and another port is tried.
    pub fn start(ns: &str, extra: &[&str]) -> Controller {
        const ATTEMPTS: u32 = 5;
        for attempt in 1..=ATTEMPTS {
            let addr = free_addr();
            match Controller::try_start_on(ns, &addr, extra) {
                Ok(c) => return c,
                Err(Failed::AddressInUse(log)) if attempt < ATTEMPTS => {
                    eprintln!("a port was taken before the controller bound it: {log}");
                }
                Err(Failed::AddressInUse(log) | Failed::Exited(log)) => {
                    panic!("the controller did not start:\n{log}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts with heartbeats on a given address, such as a stopped controller's.
    pub fn start_on(ns: &str, addr: &str, extra: &[&str]) -> Controller {
        Controller::try_start_on(ns, addr, extra).unwrap_or_else(|failed| match failed {
            Failed::AddressInUse(log) | Failed::Exited(log) => {
                panic!("the controller did not start on {addr}:\n{log}")
            }
        })
    }

    fn try_start_on(ns: &str, addr: &str, extra: &[&str]) -> Result<Controller, Failed> {
        let addr = addr.to_owned();
        let metrics_addr = free_addr();
        let log = std::env::temp_dir().join(format!(
            "drainscaler-{ns}-{}-{}.log",
            addr.replace([':', '.'], "-"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let file = std::fs::File::create(&log).expect("controller log");
        let mut args = vec![
            "run".to_owned(),
            format!("--namespace={ns}"),
            format!("--lease-namespace={ns}"),
            format!("--listen={addr}"),
            format!("--metrics-listen={metrics_addr}"),
        ];
        if let Ok(url) = std::env::var("PROMETHEUS_URL") {
            args.push(format!("--prometheus-url={url}"));
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new(env!("CARGO_BIN_EXE_drainscaler"))
            .args(&args)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start drainscaler run");
        let mut c = Controller {
            child,
            addr,
            metrics_addr,
            log,
        };
        // Ours answers only once its log says it listens: a /healthz answer alone may come
        // from whoever took the port. Either port may be taken (a bind error, another try).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = c.child.try_wait() {
                let log = format!("exited with {status}:\n{}", c.logs());
                return Err(if log.contains("Address already in use") {
                    Failed::AddressInUse(log)
                } else {
                    Failed::Exited(log)
                });
            }
            if c.logs()
                .contains("serving heartbeats, and metrics and probes")
                && http("GET", &c.metrics_addr, "/healthz", &[], "").0 == 200
            {
                return Ok(c);
            }
            if Instant::now() >= deadline {
                c.kill();
                panic!(
                    "timed out after 30s waiting for the controller to listen on {} and {}:\n{}",
                    c.addr,
                    c.metrics_addr,
                    c.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the process with SIGTERM, as Kubernetes does, and waits for it.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the process with SIGKILL, as a crashed node or the OOM killer would: it cannot
    /// release the lease or clear its leader label.
    pub fn kill(&mut self) {
        // `Child::kill` sends SIGKILL on Unix.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process, for `signal`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, once it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// A minimal HTTP/1.1 request; returns the status and body.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    if stream.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut raw = String::new();
    let _ = stream.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A stand-in Prometheus on 127.0.0.1 for a policy's `spec.prometheus.address`: it answers
/// every instant query (`/api/v1/query`, GET or form POST) with one sample of the value last
/// set. `stop` closes its port, so that queries are refused as when Prometheus is down;
/// `restart` listens on the same port again; `delay` holds each answer back.
pub struct FakePrometheus {
    pub addr: SocketAddr,
    value: Arc<Mutex<f64>>,
    queries: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    delay: Arc<Mutex<Duration>>,
    serving: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl FakePrometheus {
    pub fn start(value: f64) -> FakePrometheus {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the fake Prometheus");
        let addr = listener
            .local_addr()
            .expect("the fake Prometheus's address");
        let mut prometheus = FakePrometheus {
            addr,
            value: Arc::new(Mutex::new(value)),
            queries: Arc::default(),
            received: Arc::default(),
            delay: Arc::default(),
            serving: None,
        };
        prometheus.serve(listener);
        prometheus
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `value` from the next query on.
    pub fn set(&self, value: f64) {
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = value;
    }

    /// Instant queries answered so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }

    /// Instant queries received so far, answered or still held back.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    /// Answers each query `delay` after it arrived, from the next one on.
    pub fn delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Closes the port: connections are refused until `restart`.
    pub fn stop(&mut self) {
        self.halt();
        assert!(
            TcpStream::connect(self.addr).is_err(),
            "the stopped fake Prometheus on {} still accepts connections",
            self.addr
        );
    }

    /// Listens on the same port again.
    pub fn restart(&mut self) {
        if self.serving.is_some() {
            return;
        }
        let listener = TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("listening again on {}: {e}", self.addr));
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        // Non-blocking, so that the thread notices `halt` and drops the listener.
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let halted = Arc::new(AtomicBool::new(false));
        let (value, queries, stop) = (
            Arc::clone(&self.value),
            Arc::clone(&self.queries),
            Arc::clone(&halted),
        );
        let (received, delay) = (Arc::clone(&self.received), Arc::clone(&self.delay));
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let v = *value.lock().unwrap_or_else(PoisonError::into_inner);
                        let d = *delay.lock().unwrap_or_else(PoisonError::into_inner);
                        if answer_query(stream, v, d, &received) {
                            queries.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        self.serving = Some((halted, thread));
    }

    fn halt(&mut self) {
        if let Some((halted, thread)) = self.serving.take() {
            halted.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Reads one HTTP request; answers an instant query with one sample of `value`, `delay` after
/// it arrived, and anything else with 404. Returns whether it was an instant query.
fn answer_query(mut stream: TcpStream, value: f64, delay: Duration, received: &AtomicU64) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read_more = |raw: &mut Vec<u8>| match stream.read(&mut buf) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            raw.extend_from_slice(&buf[..n]);
            true
        }
    };
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(&mut raw) {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    // A POSTed query is a form in the body.
    let length = head
        .lines()
        .find_map(|line| {
            let (name, v) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while raw.len() < head_end + length {
        if !read_more(&mut raw) {
            return false;
        }
    }
    let mut words = head.split_whitespace();
    let (method, target) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = target.split('?').next().unwrap_or_default();
    let query = matches!(method, "GET" | "POST") && path == "/api/v1/query";
    if query {
        received.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(delay);
    }
    let (status, body) = if query {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        (
            "200 OK",
            format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now:.3},"{value}"]}}]}}}}"#
            ),
        )
    } else {
        (
            "404 Not Found",
            r#"{"status":"error","errorType":"not_found","error":"not found"}"#.to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    query
}

/// The demo session app as a Deployment plus a Service that routes to serving pods only.
pub fn session_app(ns: &str, name: &str, replicas: u32, heartbeat_url: &str) -> String {
    session_app_with(ns, name, replicas, heartbeat_url, &AppOptions::default())
}

/// What a test changes in the demo session app's Deployment.
pub struct AppOptions<'a> {
    pub image: &'a str,
    /// The app's arguments, as a YAML flow list.
    pub args: &'a str,
    /// Whether Prometheus (the plane's, by the pod annotations) scrapes the pods.
    pub scraped: bool,
    /// Sends heartbeats from the pod's IP (`HEARTBEAT_SOURCE_IP`), so that a proxy can tell
    /// the pods apart.
    pub heartbeats_from_pod_ip: bool,
}

impl Default for AppOptions<'_> {
    fn default() -> Self {
        AppOptions {
            image: "drainscaler/session-app:dev",
            args: r#"["--max-sessions=100"]"#,
            scraped: true,
            heartbeats_from_pod_ip: false,
        }
    }
}

/// [`session_app`] with `options`.
pub fn session_app_with(
    ns: &str,
    name: &str,
    replicas: u32,
    heartbeat_url: &str,
    options: &AppOptions,
) -> String {
    let AppOptions { image, args, .. } = options;
    let annotations = if options.scraped {
        "\n      annotations: {prometheus.io/scrape: \"true\", prometheus.io/port: \"8080\"}"
    } else {
        ""
    };
    let source_ip = if options.heartbeats_from_pod_ip {
        "\n        - {name: HEARTBEAT_SOURCE_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}"
    } else {
        ""
    };
    // The local node runs only the pods that ask for it; the real node's scheduler takes the rest.
    let scheduler = if real_node() {
        ""
    } else {
        "\n      schedulerName: localnode"
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata:
      labels: {{app: {name}, drainscaler.io/serving: "true"}}{annotations}
    spec:{scheduler}
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: {image}
        args: {args}
        env:
        - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
        - {{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
        - {{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}{source_ip}
        - {{name: HEARTBEAT_URL, value: "{heartbeat_url}"}}
        - {{name: HEARTBEAT_INTERVAL, value: "1s"}}
        ports:
        - {{name: session, containerPort: 7000}}
        - {{name: http, containerPort: 8080}}
        readinessProbe: {{httpGet: {{path: /readyz, port: http}}, periodSeconds: 1, failureThreshold: 1}}
        volumeMounts:
        - {{name: drainscaler-token, mountPath: /var/run/secrets/drainscaler.io/serviceaccount, readOnly: true}}
      volumes:
      - name: drainscaler-token
        projected:
          sources:
          - serviceAccountToken: {{audience: drainscaler, expirationSeconds: 600, path: token}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}, drainscaler.io/serving: "true"}}
  ports:
  - {{name: session, port: 7000, targetPort: session}}
"#
    )
}

/// The pods of `chat` in `ns` marked draining.
pub fn draining(ns: &str) -> Vec<String> {
    pods(ns, "chat")
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(n, _)| n)
        .collect()
}

/// Three pods holding at most `sessions` long sessions under a policy that wants
/// `ceil(sessions / 10)` of them: at least one drains. Returns the traffic generator.
pub fn start_draining(
    ns: &Namespace,
    controller: &Controller,
    sessions: u32,
    session_secs: u32,
) -> std::process::Child {
    start_draining_via(ns, &controller.addr, sessions, session_secs)
}

/// [`start_draining`] with the pods sending heartbeats to `heartbeat_addr` (a relay, say).
pub fn start_draining_via(
    ns: &Namespace,
    heartbeat_addr: &str,
    sessions: u32,
    session_secs: u32,
) -> std::process::Child {
    apply(&session_app(
        &ns.0,
        "chat",
        3,
        &format!("http://{heartbeat_addr}"),
    ));
    wait_for(Duration::from_secs(90), "three ready pods", || {
        ready_replicas(&ns.0, "chat") == 3
    });
    let load = traffic(
        &ns.0,
        "chat",
        &[
            "-shape",
            "constant:4",
            "-duration",
            "10s",
            "-max-sessions",
            &sessions.to_string(),
            "-fixed-length",
            &format!("{session_secs}s"),
            "-seed",
            "2",
        ],
    );
    // The policy decides on the whole load, not on part of it still arriving.
    wait_for(Duration::from_secs(30), "every session to open", || {
        active_sessions(&ns.0, "chat") >= u64::from(sessions)
    });
    apply(&policy(&ns.0, "chat", &sessions_spec(2)));
    wait_for(Duration::from_secs(60), "a drain", || {
        !draining(&ns.0).is_empty()
    });
    load
}

/// Pod names of `app` in `ns` with their drain annotation.
pub fn pods(ns: &str, app: &str) -> Vec<(String, bool)> {
    app_pods(ns, app)
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["metadata"]["annotations"]["drainscaler.io/draining"] == "true",
            )
        })
        .collect()
}

/// The pod objects labelled `app={app}` in `ns`, terminating ones included.
fn app_pods(ns: &str, app: &str) -> Vec<Value> {
    let mut list = kubectl_json(&["-n", ns, "get", "pods", "-l", &format!("app={app}")]);
    match list["items"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

pub fn ready_replicas(ns: &str, deployment: &str) -> i64 {
    let d = kubectl_json(&["-n", ns, "get", "deployment", deployment]);
    d["status"]["readyReplicas"].as_i64().unwrap_or(0)
}

pub fn spec_replicas(ns: &str, deployment: &str) -> i64 {
    let d = kubectl_json(&["-n", ns, "get", "deployment", deployment]);
    d["spec"]["replicas"].as_i64().unwrap_or(0)
}

/// The policy's condition of `type_`, as (status, reason, message).
pub fn condition(ns: &str, policy: &str, type_: &str) -> Option<(String, String, String)> {
    let sp = kubectl_json(&["-n", ns, "get", "scalingpolicy", policy]);
    status_condition(&sp["status"], type_)
}

/// A condition of `type_` in a policy status, as (status, reason, message).
pub fn status_condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    let c = status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

/// The events about `policy`, only those of `reason` if given.
pub fn policy_events(ns: &str, policy: &str, reason: Option<&str>) -> Vec<Value> {
    let mut selector = format!("involvedObject.name={policy},involvedObject.kind=ScalingPolicy");
    if let Some(r) = reason {
        selector.push_str(&format!(",reason={r}"));
    }
    let mut list = kubectl_json(&["-n", ns, "get", "events", "--field-selector", &selector]);
    match list["items"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// Types and reasons of the events about `policy`.
pub fn event_reasons(ns: &str, policy: &str) -> Vec<(String, String)> {
    policy_events(ns, policy, None)
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Sessions the local node dropped in `ns` (killed with the pod that held them); on the real
/// node, the sessions its pods' logs say they held when they died.
pub fn dropped_sessions(ns: &str) -> u64 {
    dropped_sessions_since(ns, 0)
}

/// On the real node: the sessions `ns`'s pods held when they died, by their logs.
fn held_at_death(ns: &str) -> u64 {
    let ends = pod_ends(ns).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{ns}: pods that got SIGTERM, by their logs: {ends:?}");
    ends.iter().map(|e| e.held_at_death).sum()
}

/// The local node's record of sessions it killed: the file `DRAINSCALER_DROPPED_LOG` names.
/// The node creates it when it starts, so a missing variable or file fails the test: "nothing
/// dropped" must mean the record was read.
fn dropped_log() -> PathBuf {
    let path = std::env::var_os("DRAINSCALER_DROPPED_LOG").map(PathBuf::from);
    let path = path.unwrap_or_else(|| {
        panic!(
            "DRAINSCALER_DROPPED_LOG is not set, so dropped sessions cannot be counted: run `eval \"$(scripts/cluster env)\"` first"
        )
    });
    assert!(
        path.is_file(),
        "the local node's dropped-sessions log {} does not exist: is the plane up (`scripts/cluster up`)?",
        path.display()
    );
    path
}

/// Where the local node's drop records end now, so that a test sharing a namespace name with
/// earlier runs counts only its own (`dropped_sessions_since`).
pub fn dropped_log_end() -> u64 {
    if real_node() {
        return 0; // the pod logs a test namespace follows are its own
    }
    let path = dropped_log();
    std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .len()
}

/// Sessions the local node dropped in `ns` in records written after `start` (from
/// `dropped_log_end`); from the beginning if the log was truncated since.
pub fn dropped_sessions_since(ns: &str, start: u64) -> u64 {
    if real_node() {
        return held_at_death(ns);
    }
    let path = dropped_log();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let start = usize::try_from(start)
        .ok()
        .filter(|&s| s <= bytes.len())
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&bytes[start..]);
    // The node appends whole lines; a line still being written has no newline yet.
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    complete
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| {
                panic!("{}: a record that is not JSON ({e}): {l}", path.display())
            })
        })
        .filter(|v| v["namespace"] == ns)
        .map(|v| {
            // A kill whose sockets could not be listed may have dropped any number.
            let error = v["error"].as_str().unwrap_or_default();
            assert!(
                error.is_empty(),
                "the local node could not count the sessions of pod {} it killed: {error}",
                v["pod"]
            );
            v["sessions"].as_u64().unwrap_or_else(|| {
                panic!("{}: a record without a session count: {v}", path.display())
            })
        })
        .sum()
}

/// The traffic generator against `service`, running in the background.
pub fn traffic(ns: &str, service: &str, args: &[&str]) -> Child {
    let bin = std::env::var("DRAINSCALER_CLUSTER_STATE")
        .map(|s| PathBuf::from(s).join("bin/traffic"))
        .unwrap_or_else(|_| PathBuf::from("traffic"));
    Command::new(bin)
        .args(["-n", ns, "-service", service, "-port", "session"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the traffic generator")
}

/// `per_second` new sessions a second for `secs` seconds, each `length` seconds long, to the
/// Service `service` in `ns`, drawn from `seed`.
pub fn steady_load(
    ns: &str,
    service: &str,
    per_second: u32,
    secs: u32,
    length: u32,
    seed: u32,
) -> Child {
    traffic(
        ns,
        service,
        &[
            "-shape",
            &format!("constant:{per_second}"),
            "-duration",
            &format!("{secs}s"),
            "-fixed-length",
            &format!("{length}s"),
            "-seed",
            &seed.to_string(),
        ],
    )
}

/// Waits for the traffic generator and returns its JSON summary.
pub fn traffic_summary(child: Child) -> Value {
    let out = child.wait_with_output().expect("traffic output");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The process running `pod`'s first container, as the host sees it: on the local node the
/// container ID is `localnode://PID`; on the real node it is `containerd://ID`, and the plane's
/// containerd (its socket under `DRAINSCALER_CLUSTER_STATE`) names the task's PID, the
/// container's init process (the app itself: the images have no shell or init).
pub fn container_pid(ns: &str, pod: &str) -> Option<u32> {
    let p = kubectl_json(&["-n", ns, "get", "pod", pod]);
    let id = p["status"]["containerStatuses"][0]["containerID"].as_str()?;
    if let Some(pid) = id.strip_prefix("localnode://") {
        return pid.parse().ok();
    }
    let id = id.strip_prefix("containerd://")?;
    let state = std::env::var("DRAINSCALER_CLUSTER_STATE").unwrap_or_else(|_| {
        panic!("DRAINSCALER_CLUSTER_STATE is not set: run `eval \"$(scripts/cluster env)\"` first")
    });
    let out = Command::new("ctr")
        .args(["--address", &format!("{state}/run/containerd.sock")])
        .args(["--namespace", "k8s.io", "tasks", "ls"])
        .output()
        .expect("run ctr (Debian's containerd package)");
    assert!(
        out.status.success(),
        "ctr tasks ls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // TASK PID STATUS
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next()? == id).then(|| cols.next()?.parse().ok())?
        })
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Whether a pod of that name exists (terminating or not).
pub fn pod_exists(ns: &str, pod: &str) -> bool {
    kubectl_result(&["-n", ns, "get", "pod", pod], None).0
}

/// Sessions open on the app's pods now, asked of each pod (`GET /sessions`).
pub fn active_sessions(ns: &str, app: &str) -> u64 {
    app_pods(ns, app)
        .iter()
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

/// Sessions open on one pod now, asked of the pod (`GET /sessions`); fails the test when the
/// pod cannot answer.
pub fn pod_sessions(ns: &str, pod: &str) -> u64 {
    let p = kubectl_json(&["-n", ns, "get", "pod", pod]);
    let ip = p["status"]["podIP"]
        .as_str()
        .unwrap_or_else(|| panic!("pod {pod} has no IP: {}", p["status"]));
    let (code, body) = http("GET", &format!("{ip}:8080"), "/sessions", &[], "");
    assert_eq!(code, 200, "GET /sessions on pod {pod}: {body}");
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["active"].as_u64())
        .unwrap_or_else(|| panic!("pod {pod} answered /sessions with {body}"))
}

/// The drains `policy` started, from its DrainStarted events ("draining pod NAME (N sessions)
/// ..."): each pod with the sessions the controller knew it held then (`None`: unknown).
pub fn drains_started(ns: &str, policy: &str) -> Vec<(String, Option<u64>)> {
    policy_events(ns, policy, Some("DrainStarted"))
        .iter()
        .map(|e| {
            let note = e["message"].as_str().unwrap_or_default();
            let parsed = note.strip_prefix("draining pod ").and_then(|rest| {
                let (pod, rest) = rest.split_once(" (")?;
                let (count, _) = rest.split_once(')')?;
                let sessions = match count {
                    "unknown sessions" => None,
                    n => Some(n.strip_suffix(" sessions")?.parse().ok()?),
                };
                Some((pod.to_owned(), sessions))
            });
            parsed.unwrap_or_else(|| panic!("a DrainStarted event in an unknown form: {note}"))
        })
        .collect()
}

/// The columns of `kubectl get scalingpolicies` (the CRD's additionalPrinterColumns).
pub const POLICY_COLUMNS: [&str; 10] = [
    "NAME", "TARGET", "MIN", "MAX", "CURRENT", "DESIRED", "SESSIONS", "DRAINING", "READY", "AGE",
];

/// The header of `kubectl get scalingpolicies` in `ns`, and the whole table.
pub fn policy_table(ns: &str) -> (Vec<String>, String) {
    let table = kubectl(&["-n", ns, "get", "scalingpolicies"]);
    let header = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (header, table)
}

/// Runs containers of `image` on the local node as the local binary `path`.
pub fn map_image(image: &str, path: &str) {
    let status = Command::new(repo().join("scripts/cluster"))
        .args(["image-map", image, path])
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/cluster image-map");
    assert!(status.success(), "scripts/cluster image-map {image} {path}");
}

/// Pods matching `selector` in `ns` that are not terminating.
pub fn live_pods(ns: &str, selector: &str) -> Vec<Value> {
    let list = kubectl_json(&["-n", ns, "get", "pods", "-l", selector]);
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Pods matching `selector` in `ns`, terminating ones included.
pub fn pod_count(ns: &str, selector: &str) -> usize {
    let list = kubectl_json(&["-n", ns, "get", "pods", "-l", selector]);
    list["items"].as_array().map_or(0, Vec::len)
}

pub fn pod_name(pod: &Value) -> String {
    pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The value of one sample (`name{labels}` exactly as exposed) in a Prometheus text page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
