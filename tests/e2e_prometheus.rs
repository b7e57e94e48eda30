//! The Prometheus path against the local control plane: a Secret is sent only once it opts in,
//! the API server refuses credentials over plain http and unbounded time budgets, and a deleted
//! policy's series leave `/metrics`. Run with `DRAINSCALER_E2E=1` after `scripts/cluster up`
//! and `eval "$(scripts/cluster env)"`.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::{
    Controller, Namespace, apply, condition, enabled, http, install_crd, kubectl, kubectl_result,
    policy, sample, session_app,
};

/// A Prometheus stand-in on 127.0.0.1 that answers every query with the scalar 1 and keeps the
/// head of every request it was sent; over TLS when given a server config.
struct Recorder {
    url: String,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    fn start(tls: Option<Arc<rustls::ServerConfig>>) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().expect("an address"));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (Arc::clone(&heads), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        match &tls {
                            None => answer(stream, &h),
                            Some(config) => {
                                let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config))
                                else {
                                    continue;
                                };
                                answer(rustls::StreamOwned::new(conn, stream), &h);
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Recorder { url, heads, stop }
    }

    fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(mut stream: impl Read + Write, heads: &Mutex<Vec<String>>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    heads
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(String::from_utf8_lossy(&raw).to_lowercase());
    let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"1"]}}"#;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`:
/// the CA's PEM and a rustls server config with the server's certificate.
fn tls_for_loopback(dir: &Path) -> (String, Arc<rustls::ServerConfig>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=drainscaler-e2e-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "server.ext",
    ]);
    let read = |f: &str| std::fs::read(dir.join(f)).expect("read a PEM file");
    let certs = CertificateDer::pem_slice_iter(&read("server.pem"))
        .collect::<Result<Vec<_>, _>>()
        .expect("the server certificate");
    let key = PrivateKeyDer::from_pem_slice(&read("server.key")).expect("the server key");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("a server config");
    let ca = String::from_utf8(read("ca.pem")).expect("a PEM is text");
    (ca, Arc::new(config))
}

fn wait_for(timeout: Duration, what: &str, check: impl FnMut() -> bool) {
    support::wait_for(timeout, what, check);
}

fn ready(ns: &str, policy: &str) -> Option<(String, String, String)> {
    condition(ns, policy, "Ready")
}

/// A policy on one Prometheus metric of the server at `url`, with `extra` lines under
/// `spec.prometheus`.
fn prometheus_policy(ns: &str, url: &str, extra: &str) -> String {
    policy(
        ns,
        "chat",
        &format!(
            r#"  minReplicas: 1
  maxReplicas: 2
  interval: 2s
  metrics:
  - name: rps
    prometheus: {{query: "vector(1)"}}
    target: {{type: Value, value: "1000"}}
  prometheus:
    address: {url}
{extra}"#
        ),
    )
}

#[test]
fn a_prometheus_secret_is_sent_only_once_it_opts_in() {
    if !enabled("a_prometheus_secret_is_sent_only_once_it_opts_in") {
        return;
    }
    install_crd();
    let ns = Namespace::new("prometheus-secret-opt-in");
    let controller = Controller::start(&ns.0, &[]);
    apply(&session_app(
        &ns.0,
        "chat",
        1,
        &format!("http://{}", controller.addr),
    ));
    // Over TLS, so that no field newer than the CRDs of other worktrees sharing the plane is
    // needed (allowInsecureCredentials would be pruned by theirs).
    let dir = std::env::temp_dir().join(format!("drainscaler-{}", ns.0));
    std::fs::create_dir_all(&dir).expect("a directory for certificates");
    let (ca, tls) = tls_for_loopback(&dir);
    let prometheus = Recorder::start(Some(tls));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca).expect("write the CA");
    let ca_arg = format!("--from-file=ca.pem={}", ca_file.display());
    kubectl(&[
        "-n", &ns.0, "create", "secret", "generic", "prom-ca", &ca_arg,
    ]);
    kubectl(&[
        "-n",
        &ns.0,
        "label",
        "secret",
        "prom-ca",
        "drainscaler.io/prometheus-auth=true",
    ]);
    kubectl(&[
        "-n",
        &ns.0,
        "create",
        "secret",
        "generic",
        "prom-token",
        "--from-literal=token=hunter2-e2e",
    ]);
    let server = |timeout: &str| {
        prometheus_policy(
            &ns.0,
            &prometheus.url,
            &format!(
                "    bearerTokenSecret: {{name: prom-token, key: token}}\n    caSecret: {{name: prom-ca, key: ca.pem}}\n    timeout: {timeout}\n"
            ),
        )
    };
    apply(&server("5s"));

    wait_for(
        Duration::from_secs(60),
        "Ready=False PrometheusAuth",
        || ready(&ns.0, "chat").is_some_and(|(s, r, _)| s == "False" && r == "PrometheusAuth"),
    );
    let (_, _, message) = ready(&ns.0, "chat").expect("Ready");
    assert!(
        message.contains("kubectl label secret prom-token drainscaler.io/prometheus-auth=true"),
        "{message}"
    );
    assert!(
        prometheus.heads().is_empty(),
        "Prometheus was queried before the Secret opted in: {:?}",
        prometheus.heads()
    );

    kubectl(&[
        "-n",
        &ns.0,
        "label",
        "secret",
        "prom-token",
        "drainscaler.io/prometheus-auth=true",
    ]);
    // Nothing watches Secrets: the blocked policy would be looked at again within 30s by
    // itself; a new generation makes it at once.
    apply(&server("4s"));
    wait_for(
        Duration::from_secs(60),
        "Ready=True once the Secret opts in",
        || ready(&ns.0, "chat").is_some_and(|(s, _, _)| s == "True"),
    );
    wait_for(Duration::from_secs(30), "a query with the token", || {
        prometheus
            .heads()
            .iter()
            .any(|h| h.contains("authorization: bearer hunter2-e2e"))
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_api_server_refuses_credentials_over_plain_http_and_unbounded_time_budgets() {
    if !enabled("the_api_server_refuses_credentials_over_plain_http_and_unbounded_time_budgets") {
        return;
    }
    install_crd();
    let ns = Namespace::new("prometheus-schema");
    let insecure = prometheus_policy(
        &ns.0,
        "http://prometheus.monitoring:9090",
        "    bearerTokenSecret: {name: prom-token, key: token}\n",
    );
    let (ok, _, err) = kubectl_result(&["apply", "-f", "-"], Some(&insecure));
    assert!(!ok, "credentials over plain http were accepted");
    assert!(err.contains("allowInsecureCredentials: true"), "{err}");

    let slow = prometheus_policy(
        &ns.0,
        "https://prometheus.monitoring:9090",
        "    timeout: 5m\n",
    );
    let (ok, _, err) = kubectl_result(&["apply", "-f", "-"], Some(&slow));
    assert!(!ok, "a 5m Prometheus timeout was accepted");
    assert!(
        err.contains("prometheus.timeout must be between 100ms and 30s"),
        "{err}"
    );

    let fine = prometheus_policy(
        &ns.0,
        "https://prometheus.monitoring:9090",
        "    bearerTokenSecret: {name: prom-token, key: token}\n    timeout: 30s\n",
    );
    let (ok, _, err) = kubectl_result(&["apply", "-f", "-"], Some(&fine));
    assert!(ok, "a valid policy was refused: {err}");
}

#[test]
fn a_deleted_policys_series_leave_the_metrics_page() {
    if !enabled("a_deleted_policys_series_leave_the_metrics_page") {
        return;
    }
    install_crd();
    let ns = Namespace::new("prometheus-deleted-series");
    let controller = Controller::start(&ns.0, &[]);
    apply(&session_app(
        &ns.0,
        "chat",
        1,
        &format!("http://{}", controller.addr),
    ));
    let prometheus = Recorder::start(None);
    apply(&prometheus_policy(&ns.0, &prometheus.url, ""));
    let series = format!(
        r#"drainscaler_desired_replicas{{namespace="{}",policy="chat"}}"#,
        ns.0
    );
    let page = || http("GET", &controller.metrics_addr, "/metrics", &[], "").1;
    wait_for(Duration::from_secs(60), "the policy's series", || {
        sample(&page(), &series).is_some()
    });
    kubectl(&[
        "-n",
        &ns.0,
        "delete",
        "scalingpolicy",
        "chat",
        "--wait=true",
    ]);
    // The controller forgets deleted policies once a minute.
    wait_for(Duration::from_secs(150), "the series to go", || {
        !page().contains(&format!(r#"namespace="{}",policy="chat""#, ns.0))
    });
}
