//! The Prometheus client against a tiny local server: bounded answers, no redirects, the
//! query form it sends, and the Secret opt-in.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use reqwest::header::HeaderValue;

use super::fake::{Answer, Server};
use super::{
    ConnectError, MAX_RESPONSE_BYTES, Prometheus, base64, header, http_client, secret_key,
};
use crate::engine::{Reading, Time};
use crate::names::PROMETHEUS_AUTH_LABEL;

/// A guard against a hang, not a speed assertion: every test here ends long before.
const GUARD: Duration = Duration::from_secs(60);

fn client(url: &str, authorization: Option<&str>) -> Prometheus {
    Prometheus {
        http: http_client(reqwest::Client::builder(), url).expect("a client"),
        address: url.to_owned(),
        authorization: authorization.map(|a| HeaderValue::from_str(a).expect("a header")),
        timeout: Duration::from_secs(5),
    }
}

fn json(body: &str) -> Answer {
    Answer::Full {
        status: 200,
        headers: vec!["Content-Type: application/json".to_owned()],
        body: body.as_bytes().to_vec(),
    }
}

async fn reading(p: &Prometheus, query: &str) -> Reading {
    tokio::time::timeout(GUARD, p.reading(query))
        .await
        .expect("the query ends")
}

fn reason(r: &Reading) -> String {
    match r {
        Reading::Unavailable { reason } => reason.clone(),
        other => panic!("expected a failed reading, got {other:?}"),
    }
}

#[tokio::test]
async fn a_query_is_posted_with_its_timeout_and_answered() {
    let server = Server::start(json(
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"7"]}]}}"#,
    ));
    let p = client(&server.url(), Some("Bearer t0ken"));
    assert_eq!(reading(&p, "sum(up)").await, Reading::Value(7.0));
    let raw = server.seen.raw().join("\n");
    assert!(raw.starts_with("POST /api/v1/query "), "{raw}");
    assert!(raw.contains("query=sum%28up%29"), "{raw}");
    assert!(raw.contains("timeout=5000ms"), "{raw}");
    assert!(
        raw.to_lowercase().contains("authorization: bearer t0ken"),
        "{raw}"
    );
}

#[tokio::test]
async fn an_endless_answer_is_cut_at_the_bound_not_read_to_the_end() {
    let server = Server::start(Answer::Endless);
    let p = client(&server.url(), None);
    let why = reason(&reading(&p, "up").await);
    assert!(why.contains("larger than 8 MiB"), "{why}");
    drop(server);
}

#[tokio::test]
async fn an_answer_that_declares_more_than_the_bound_is_refused_before_reading() {
    let length = u64::try_from(MAX_RESPONSE_BYTES).expect("fits") + 1;
    let server = Server::start(Answer::Declares { length });
    let p = client(&server.url(), None);
    let why = reason(&reading(&p, "up").await);
    assert!(why.contains("larger than 8 MiB"), "{why}");
}

#[tokio::test]
async fn an_answer_just_under_the_bound_is_read() {
    // A valid answer padded with whitespace to one byte under the bound.
    let body = r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"2"]}}"#;
    let padded = format!("{body}{}", " ".repeat(MAX_RESPONSE_BYTES - body.len()));
    let server = Server::start(json(&padded));
    let p = client(&server.url(), None);
    assert_eq!(reading(&p, "2").await, Reading::Value(2.0));
}

#[tokio::test]
async fn a_redirect_is_not_followed_so_credentials_stay_with_the_named_address() {
    let elsewhere = Server::start(json(
        r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"1"]}}"#,
    ));
    let redirecting = Server::start(Answer::Full {
        status: 307,
        headers: vec![format!("Location: {}/api/v1/query", elsewhere.url())],
        body: Vec::new(),
    });
    let p = client(&redirecting.url(), Some("Bearer secret"));
    let why = reason(&reading(&p, "up").await);
    assert!(why.contains("does not follow redirects"), "{why}");
    assert_eq!(elsewhere.seen.requests(), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_prometheus_error_is_passed_on_in_its_own_words() {
    let server = Server::start(Answer::Full {
        status: 400,
        headers: Vec::new(),
        body: br#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:4: parse error"}"#.to_vec(),
    });
    let p = client(&server.url(), None);
    let why = reason(&reading(&p, "sum(").await);
    assert!(
        why.contains("HTTP 400: bad_data: invalid parameter"),
        "{why}"
    );
}

#[tokio::test]
async fn a_heartbeat_query_asks_for_one_series_more_than_allowed() {
    let server = Server::start(json(
        r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pod":"a"},"value":[1700000000,"0.5"]}]}}"#,
    ));
    let p = client(&server.url(), None);
    let got = tokio::time::timeout(GUARD, p.per_pod("x", Time(1_700_000_001_000)))
        .await
        .expect("the query ends")
        .expect("per pod");
    assert_eq!(got.samples["a"].sessions, 1);
    let raw = server.seen.raw().join("\n");
    assert!(raw.contains("limit=10001"), "{raw}");
}

#[tokio::test]
async fn a_refused_connection_says_why() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = closed.local_addr().expect("an address");
    drop(closed);
    let p = client(&format!("http://{addr}"), None);
    let why = reason(&reading(&p, "up").await);
    assert!(why.starts_with("the query failed: "), "{why}");
    assert!(why.to_lowercase().contains("refused"), "{why}");
}

fn secret(labels: &[(&str, &str)], data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("prom".to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}

#[test]
fn a_secret_without_the_opt_in_label_is_not_used() {
    let address = "https://prometheus.example";
    for labels in [
        &[][..],
        &[(PROMETHEUS_AUTH_LABEL, "false")][..],
        &[("other", "true")][..],
    ] {
        let s = secret(labels, &[("token", "hunter2")]);
        let err = secret_key(&s, "prom", "token", address).expect_err("not opted in");
        assert!(matches!(err, ConnectError::NotOptedIn { .. }), "{err}");
        assert!(err.needs_a_fix());
        let message = err.to_string();
        assert!(
            message.contains("kubectl label secret prom drainscaler.io/prometheus-auth=true"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[test]
fn a_secret_drainscaler_may_not_read_or_that_is_missing_needs_a_fix_and_says_which() {
    let forbidden = ConnectError::SecretForbidden {
        name: "prom".to_owned(),
    };
    assert!(forbidden.needs_a_fix());
    assert!(
        forbidden
            .to_string()
            .contains("ClusterRole drainscaler-prometheus-secrets"),
        "{forbidden}"
    );
    assert!(
        ConnectError::SecretNotFound {
            name: "prom".to_owned()
        }
        .needs_a_fix()
    );
    assert!(!ConnectError::NoServer.needs_a_fix());
}

#[test]
fn a_secret_that_opts_in_is_used() {
    let s = secret(&[(PROMETHEUS_AUTH_LABEL, "true")], &[("token", "hunter2")]);
    let token = secret_key(&s, "prom", "token", "https://p").expect("opted in");
    assert_eq!(token, b"hunter2");
    let err = secret_key(&s, "prom", "other", "https://p").expect_err("no such key");
    assert!(matches!(err, ConnectError::MissingKey { .. }), "{err}");
}

#[test]
fn a_credential_that_cannot_be_a_header_is_refused_without_repeating_it() {
    let err = header("prom", "token", "Bearer hunter2\nInjected: yes").expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("Secret prom key token"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn basic_auth_is_standard_base64() {
    assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    assert_eq!(base64(b"a"), "YQ==");
    assert_eq!(base64(b"ab"), "YWI=");
}
