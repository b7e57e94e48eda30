//! `handle_heartbeat` without an API server: a table of tokens stands in for TokenReview and
//! a pod cache is filled by hand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use kube::api::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

use super::{
    ApiError, HeartbeatReply, MAX_SESSIONS_PER_POD, RequestLimits, ServerState, handle_heartbeat,
};
use crate::metrics::Metrics;
use crate::observe::heartbeats::{Heartbeats, PodKey};
use crate::observe::pods::CachedPod;
use crate::tokens::{Limits, Reviewer, SystemClock, TokenCache};

/// Tokens and the pod (name, UID) each is bound to, in namespace `demo`.
#[derive(Default)]
struct Tokens {
    bound: HashMap<String, (String, String)>,
    reviews: AtomicUsize,
}

impl Reviewer for Arc<Tokens> {
    fn review(&self, token: String) -> BoxFuture<'static, Result<TokenReviewStatus, String>> {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        let found = self.bound.get(&token).cloned();
        Box::pin(async move {
            let Some((pod, uid)) = found else {
                return Ok(TokenReviewStatus {
                    authenticated: Some(false),
                    ..TokenReviewStatus::default()
                });
            };
            Ok(TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec!["drainscaler".to_owned()]),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:demo:chat".to_owned()),
                    extra: Some(BTreeMap::from([
                        (
                            "authentication.kubernetes.io/pod-name".to_owned(),
                            vec![pod],
                        ),
                        ("authentication.kubernetes.io/pod-uid".to_owned(), vec![uid]),
                    ])),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            })
        })
    }
}

/// A JWT-shaped token for audience drainscaler, unique by `name`; it expires in 2100, so that
/// every call gives the same token.
fn token(name: &str) -> String {
    let claims = serde_json::json!({"aud": ["drainscaler"], "exp": 4_102_444_800_u64, "sub": name});
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

fn pod(name: &str, uid: &str, draining: bool) -> CachedPod {
    let annotations = draining
        .then(|| BTreeMap::from([("drainscaler.io/draining".to_owned(), "true".to_owned())]));
    CachedPod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("demo".to_owned()),
            uid: Some(uid.to_owned()),
            annotations,
            ..ObjectMeta::default()
        },
        ..CachedPod::default()
    }
}

fn cache_of(pods: Vec<CachedPod>) -> Store<CachedPod> {
    let (store, mut writer) = reflector::store::<CachedPod>();
    for p in pods {
        writer.apply_watcher_event(&watcher::Event::Apply(p));
    }
    store
}

/// A server whose tokens are `bound` (token name -> pod name, UID), leading over `pods`
/// unless `pods` is `None`.
fn server(bound: &[(&str, &str, &str)], pods: Option<Vec<CachedPod>>, dev: bool) -> ServerState {
    let tokens = Tokens {
        bound: bound
            .iter()
            .map(|(t, p, u)| (token(t), ((*p).to_owned(), (*u).to_owned())))
            .collect(),
        reviews: AtomicUsize::new(0),
    };
    let metrics = Arc::new(Metrics::default());
    let cache = TokenCache::new(
        Arc::new(Arc::new(tokens)),
        Arc::new(SystemClock),
        Limits::default(),
        Arc::clone(&metrics),
    );
    let state = ServerState::new(
        cache,
        Heartbeats::default(),
        metrics,
        dev,
        &RequestLimits::default(),
    );
    if let Some(pods) = pods {
        state.lead(cache_of(pods));
    }
    state
}

fn bearer(name: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    let value = HeaderValue::from_str(&format!("Bearer {}", token(name))).expect("a header");
    h.insert(header::AUTHORIZATION, value);
    h
}

async fn send(
    state: &ServerState,
    headers: &HeaderMap,
    body: &str,
) -> Result<HeartbeatReply, ApiError> {
    handle_heartbeat(state, headers, body.as_bytes()).await
}

fn recorded(state: &ServerState, name: &str, uid: &str) -> Option<u64> {
    state
        .heartbeats
        .latest(&PodKey::new("demo", name), Some(uid))
        .map(|h| h.sessions)
}

#[tokio::test]
async fn a_heartbeat_is_recorded_for_the_tokens_pod_and_answered_with_its_drain_flag() {
    let state = server(
        &[("a", "chat-a", "uid-a"), ("b", "chat-b", "uid-b")],
        Some(vec![
            pod("chat-a", "uid-a", false),
            pod("chat-b", "uid-b", true),
        ]),
        false,
    );
    let reply = send(&state, &bearer("a"), r#"{"sessions": 3}"#).await;
    assert_eq!(reply, Ok(HeartbeatReply { drain: false }));
    assert_eq!(recorded(&state, "chat-a", "uid-a"), Some(3));
    let reply = send(&state, &bearer("b"), r#"{"sessions": 0}"#).await;
    assert_eq!(reply, Ok(HeartbeatReply { drain: true }));
    assert_eq!(recorded(&state, "chat-b", "uid-b"), Some(0));
}

#[tokio::test]
async fn a_token_of_an_earlier_pod_with_the_same_name_is_forbidden() {
    // chat-0 was deleted and recreated: the token still carries the old pod's UID.
    let state = server(
        &[("old", "chat-0", "uid-old")],
        Some(vec![pod("chat-0", "uid-new", false)]),
        false,
    );
    let e = send(&state, &bearer("old"), r#"{"sessions": 0}"#)
        .await
        .expect_err("forbidden");
    assert_eq!((e.status, e.result), (StatusCode::FORBIDDEN, "forbidden"));
    assert!(
        e.message.contains("earlier pod of the same name"),
        "{}",
        e.message
    );
    assert_eq!(state.heartbeats.len(), 0, "nothing recorded");
}

#[tokio::test]
async fn a_heartbeat_speaks_only_for_its_sender() {
    let state = server(
        &[("a", "chat-a", "uid-a")],
        Some(vec![
            pod("chat-a", "uid-a", false),
            pod("chat-b", "uid-b", false),
        ]),
        false,
    );
    let e = send(
        &state,
        &bearer("a"),
        r#"{"sessions": 0, "pod": "demo/chat-b"}"#,
    )
    .await
    .expect_err("forbidden");
    assert_eq!(e.status, StatusCode::FORBIDDEN);
    assert!(e.message.contains("demo/chat-a"), "{}", e.message);
    assert_eq!(recorded(&state, "chat-b", "uid-b"), None);
    // Naming its own pod is fine.
    let reply = send(
        &state,
        &bearer("a"),
        r#"{"sessions": 1, "pod": "demo/chat-a"}"#,
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
}

#[tokio::test]
async fn a_pod_drainscaler_does_not_know_is_404() {
    let state = server(&[("a", "chat-a", "uid-a")], Some(vec![]), false);
    let e = send(&state, &bearer("a"), r#"{"sessions": 1}"#)
        .await
        .expect_err("unknown");
    assert_eq!((e.status, e.result), (StatusCode::NOT_FOUND, "unknown_pod"));
    assert!(e.message.contains("demo/chat-a"), "{}", e.message);
}

#[tokio::test]
async fn a_replica_that_does_not_lead_answers_503_without_reviewing_the_token() {
    let state = server(&[("a", "chat-a", "uid-a")], None, false);
    let e = send(&state, &bearer("a"), r#"{"sessions": 1}"#)
        .await
        .expect_err("not leader");
    assert_eq!(
        (e.status, e.result),
        (StatusCode::SERVICE_UNAVAILABLE, "not_leader")
    );
    assert!(e.message.contains("retry"), "{}", e.message);
    assert_eq!(state.heartbeats.len(), 0);
}

#[tokio::test]
async fn a_heartbeat_without_an_accepted_token_is_401() {
    let state = server(&[], Some(vec![pod("chat-a", "uid-a", false)]), false);
    for headers in [HeaderMap::new(), bearer("unknown")] {
        let e = send(&state, &headers, r#"{"sessions": 1}"#)
            .await
            .expect_err("unauthenticated");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{}", e.message);
    }
    // Naming a pod proves nothing outside development mode.
    let e = send(
        &state,
        &HeaderMap::new(),
        r#"{"sessions": 1, "pod": "demo/chat-a"}"#,
    )
    .await
    .expect_err("unauthenticated");
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert_eq!(state.heartbeats.len(), 0);
}

#[tokio::test]
async fn development_mode_takes_the_named_pod_without_a_token() {
    let state = server(&[], Some(vec![pod("chat-a", "uid-a", true)]), true);
    let reply = send(
        &state,
        &HeaderMap::new(),
        r#"{"sessions": 2, "pod": "demo/chat-a"}"#,
    )
    .await;
    assert_eq!(reply, Ok(HeartbeatReply { drain: true }));
    assert_eq!(recorded(&state, "chat-a", "uid-a"), Some(2));
}

#[tokio::test]
async fn a_session_count_above_the_maximum_is_400_and_says_the_maximum() {
    let state = server(
        &[("a", "chat-a", "uid-a")],
        Some(vec![pod("chat-a", "uid-a", false)]),
        false,
    );
    let at_max = format!(r#"{{"sessions": {MAX_SESSIONS_PER_POD}}}"#);
    assert!(send(&state, &bearer("a"), &at_max).await.is_ok());
    let above = format!(r#"{{"sessions": {}}}"#, MAX_SESSIONS_PER_POD + 1);
    let e = send(&state, &bearer("a"), &above)
        .await
        .expect_err("too many");
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(
        e.message
            .contains(&format!("maximum of {MAX_SESSIONS_PER_POD}")),
        "{}",
        e.message
    );
    assert_eq!(
        recorded(&state, "chat-a", "uid-a"),
        Some(MAX_SESSIONS_PER_POD)
    );
    let huge = r#"{"sessions": 18446744073709551615}"#;
    assert_eq!(
        send(&state, &bearer("a"), huge).await.map_err(|e| e.status),
        Err(StatusCode::BAD_REQUEST)
    );
}
