//! The heartbeat port in process, over real sockets on 127.0.0.1, with a table of tokens in
//! place of TokenReview: slow and half-sent requests, the connection limit, TLS and its reload.
//! Needs no cluster.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use kube::api::ObjectMeta;
use kube::runtime::{reflector, watcher};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use drainscaler::listener::{self, ConnLimits, ReloadingCert};
use drainscaler::metrics::Metrics;
use drainscaler::observe::heartbeats::Heartbeats;
use drainscaler::observe::pods::CachedPod;
use drainscaler::server::{self, RequestLimits, ServerState};
use drainscaler::tokens::{Limits, Reviewer, SystemClock, TokenCache};

/// Every token named here belongs to pod demo/chat-a.
struct Tokens(HashMap<String, ()>);

impl Reviewer for Tokens {
    fn review(&self, token: String) -> BoxFuture<'static, Result<TokenReviewStatus, String>> {
        let known = self.0.contains_key(&token);
        Box::pin(async move {
            Ok(TokenReviewStatus {
                authenticated: Some(known),
                audiences: Some(vec!["drainscaler".to_owned()]),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:demo:chat".to_owned()),
                    extra: Some(BTreeMap::from([
                        (
                            "authentication.kubernetes.io/pod-name".to_owned(),
                            vec!["chat-a".to_owned()],
                        ),
                        (
                            "authentication.kubernetes.io/pod-uid".to_owned(),
                            vec!["uid-a".to_owned()],
                        ),
                    ])),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            })
        })
    }
}

/// The one accepted token; it expires in 2100, so that every call gives the same token.
fn token() -> String {
    let claims = serde_json::json!({"aud": "drainscaler", "exp": 4_102_444_800_u64});
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(limits: ConnLimits, requests: RequestLimits, tls: Option<TlsAcceptor>) -> Server {
    let metrics = Arc::new(Metrics::default());
    let cache = TokenCache::new(
        Arc::new(Tokens(HashMap::from([(token(), ())]))),
        Arc::new(SystemClock),
        Limits::default(),
        Arc::clone(&metrics),
    );
    let state = Arc::new(ServerState::new(
        cache,
        Heartbeats::default(),
        Arc::clone(&metrics),
        false,
        &requests,
    ));
    let (store, mut writer) = reflector::store::<CachedPod>();
    writer.apply_watcher_event(&watcher::Event::Apply(CachedPod {
        metadata: ObjectMeta {
            name: Some("chat-a".to_owned()),
            namespace: Some("demo".to_owned()),
            uid: Some("uid-a".to_owned()),
            ..ObjectMeta::default()
        },
        ..CachedPod::default()
    }));
    state.lead(store);
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let addr = socket.local_addr().expect("an address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listener::serve(
        socket,
        server::heartbeat_router(state),
        limits,
        tls,
        Arc::clone(&metrics),
        async move {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        metrics,
        _stop: stop,
    }
}

fn heartbeat_request(sessions: u32, close: bool) -> Vec<u8> {
    let body = format!(r#"{{"sessions": {sessions}}}"#);
    format!(
        "POST /v1/heartbeats HTTP/1.1\r\nHost: drainscaler\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        token(),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// Sends one heartbeat on `stream` and returns the status line's code.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, close: bool) -> u16 {
    if stream
        .write_all(&heartbeat_request(3, close))
        .await
        .is_err()
    {
        return 0;
    }
    read_status(stream).await
}

/// Reads one response head and its Content-Length body; 0 when the connection ended first.
async fn read_status<S: AsyncRead + Unpin>(stream: &mut S) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return 0,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return 0,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A connection that sent half a request head and nothing more.
async fn half_sent(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /v1/heartbeats HTTP/1.1\r\nHost: drainscaler\r\nAuthoriz")
        .await
        .expect("half a request");
    s
}

/// Whether the server closed `s` (without answering anything but perhaps an error status).
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // hyper may answer 408 before closing; keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

fn refused(metrics: &Metrics, limit: &str) -> u64 {
    let page = metrics.encode().expect("metrics");
    let prefix = format!("drainscaler_http_refused_total{{result=\"{limit}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_cut_at_the_header_timeout_while_real_heartbeats_are_served() {
    let server = start(
        ConnLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(2),
            ..ConnLimits::default()
        },
        RequestLimits::default(),
        None,
    )
    .await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(half_sent(server.addr).await);
    }
    for _ in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        assert_eq!(
            exchange(&mut s, true).await,
            200,
            "a real heartbeat is served"
        );
    }
    // Each half-sent request is cut by the server, not left open for ever.
    for s in &mut slow {
        assert!(
            closed_by_server(s, Duration::from_secs(20)).await,
            "a half-sent request still open after 20s (header timeout 2s)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_are_closed_and_a_kept_alive_pod_is_still_served() {
    let server = start(
        ConnLimits {
            max_connections: 16,
            header_read_timeout: Duration::from_secs(30),
            ..ConnLimits::default()
        },
        RequestLimits::default(),
        None,
    )
    .await;
    // The pod's own connection, kept alive, opened before the flood.
    let mut pod = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(exchange(&mut pod, false).await, 200);
    let mut slow = Vec::new();
    for _ in 0..15 {
        slow.push(half_sent(server.addr).await);
    }
    // The limit is reached: more connections are closed at once.
    for _ in 0..20 {
        let mut extra = half_sent(server.addr).await;
        assert!(closed_by_server(&mut extra, Duration::from_secs(10)).await);
    }
    assert_eq!(refused(&server.metrics, "connections"), 20);
    assert_eq!(
        exchange(&mut pod, false).await,
        200,
        "the kept-alive pod is served"
    );
    // Once the flood goes, new connections are served again.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        if exchange(&mut s, true).await == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection served 10s after the flood"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let server = start(
        ConnLimits::default(),
        RequestLimits {
            body_read_timeout: Duration::from_secs(1),
            concurrent_requests: 16,
        },
        None,
    )
    .await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(
        format!(
            "POST /v1/heartbeats HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 20\r\n\r\n{{\"sess",
            token()
        )
        .as_bytes(),
    )
    .await
    .expect("a partial body");
    let status = tokio::time::timeout(Duration::from_secs(10), read_status(&mut s)).await;
    assert_eq!(status, Ok(408), "no answer within 10s (body timeout 1s)");
    assert_eq!(refused(&server.metrics, "body_timeout"), 1);
}

/// A fresh self-signed certificate for 127.0.0.1, written to `dir` as cert.pem and key.pem.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a cert");
    let pem = made.cert.pem();
    // Written aside and renamed, as a Secret volume swaps its files at once.
    for (name, text) in [
        ("cert.pem", pem.clone()),
        ("key.pem", made.signing_key.serialize_pem()),
    ] {
        let aside = dir.join(format!(".{name}.new"));
        std::fs::write(&aside, text).expect("write");
        std::fs::rename(&aside, dir.join(name)).expect("rename");
    }
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drainscaler-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// A TLS connection that trusts only `ca`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).expect("a root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("a name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_over_tls_use_the_certificate_from_the_files_as_they_change() {
    let dir = temp_dir("tls");
    let first = write_cert(&dir);
    let cert =
        Arc::new(ReloadingCert::load(&dir.join("cert.pem"), &dir.join("key.pem")).expect("loads"));
    let server = start(
        ConnLimits::default(),
        RequestLimits::default(),
        Some(cert.acceptor().expect("an acceptor")),
    )
    .await;
    let mut s = tls_connect(server.addr, &first).await.expect("TLS");
    assert_eq!(exchange(&mut s, true).await, 200);
    // Plain HTTP on the TLS port is not served.
    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    assert_eq!(exchange(&mut plain, true).await, 0);

    // The files change (cert-manager renewed them): the watcher picks the new pair up.
    let _watch = cert.watch(Duration::from_millis(50));
    let second = write_cert(&dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        if let Ok(s) = tls_connect(server.addr, &second).await {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(exchange(&mut s, true).await, 200);
    assert!(
        tls_connect(server.addr, &first).await.is_err(),
        "the old certificate is no longer served"
    );

    // Unusable files are refused and the last good pair stays in use.
    std::fs::write(dir.join("key.pem"), "not a key").expect("write");
    let e = cert.reload().expect_err("a bad key");
    assert!(e.to_string().contains("key.pem"), "{e}");
    let mut s = tls_connect(server.addr, &second)
        .await
        .expect("still served");
    assert_eq!(exchange(&mut s, true).await, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused_at_load() {
    let dir = temp_dir("mismatch");
    write_cert(&dir);
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("a cert");
    std::fs::write(dir.join("key.pem"), other.signing_key.serialize_pem()).expect("write");
    let e =
        ReloadingCert::load(&dir.join("cert.pem"), &dir.join("key.pem")).expect_err("mismatched");
    assert!(e.to_string().contains("does not match"), "{e}");
    let e =
        ReloadingCert::load(&dir.join("missing.pem"), &dir.join("key.pem")).expect_err("missing");
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
