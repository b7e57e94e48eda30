//! Property-based fuzzing of the whole heartbeat request path (router, body limit, token
//! precheck and cache, parsing, identity): no input panics, every answer is one of the
//! documented statuses, and no body is read past its limit. `PROPTEST_CASES` sets the number
//! of inputs (256 by default, in the normal test run).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{HeaderValue, Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use kube::api::ObjectMeta;
use kube::runtime::{reflector, watcher};
use proptest::collection::vec;
use proptest::prelude::{Just, ProptestConfig, Strategy, any, prop_oneof, proptest};
use tower::ServiceExt;

use super::{MAX_BODY_BYTES, MAX_SESSIONS_PER_POD, RequestLimits, ServerState, heartbeat_router};
use crate::metrics::Metrics;
use crate::observe::heartbeats::{Heartbeats, PodKey};
use crate::observe::pods::CachedPod;
use crate::tokens::{Limits, Reviewer, SystemClock, TokenCache};

/// Accepts exactly one token, for demo/chat-a.
struct One(String);

impl Reviewer for One {
    fn review(&self, token: String) -> BoxFuture<'static, Result<TokenReviewStatus, String>> {
        let ok = token == self.0;
        Box::pin(async move {
            Ok(TokenReviewStatus {
                authenticated: Some(ok),
                audiences: Some(vec!["drainscaler".to_owned()]),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:demo:chat".to_owned()),
                    extra: Some(BTreeMap::from([(
                        "authentication.kubernetes.io/pod-name".to_owned(),
                        vec!["chat-a".to_owned()],
                    )])),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            })
        })
    }
}

fn jwt(claims: &str) -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2ln",
        URL_SAFE_NO_PAD.encode(claims)
    )
}

/// Expires in 2100, so that every call gives the same token.
fn valid_token() -> String {
    jwt(r#"{"aud":"drainscaler","exp":4102444800}"#)
}

fn state(dev: bool) -> Arc<ServerState> {
    let metrics = Arc::new(Metrics::default());
    let tokens = TokenCache::new(
        Arc::new(One(valid_token())),
        Arc::new(SystemClock),
        Limits {
            unknown_per_second: 1_000_000,
            unknown_burst: 1_000_000,
            ..Limits::default()
        },
        Arc::clone(&metrics),
    );
    let state = ServerState::new(
        tokens,
        Heartbeats::default(),
        metrics,
        dev,
        &RequestLimits::default(),
    );
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
    Arc::new(state)
}

/// Authorization values: valid, JWT-shaped with odd claims, and arbitrary bytes.
fn authorization() -> impl Strategy<Value = Option<Vec<u8>>> {
    let claims = prop_oneof![
        Just(String::new()),
        any::<String>(),
        (any::<i64>(), any::<String>())
            .prop_map(|(exp, aud)| format!(r#"{{"exp":{exp},"aud":{aud:?}}}"#)),
        (any::<u64>()).prop_map(|exp| format!(r#"{{"exp":{exp},"aud":["drainscaler"]}}"#)),
        Just(r#"{"exp":1e400}"#.to_owned()),
        Just(
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"
                .to_owned()
        ),
    ];
    prop_oneof![
        Just(None),
        Just(Some(format!("Bearer {}", valid_token()).into_bytes())),
        claims.prop_map(|c| Some(format!("Bearer {}", jwt(&c)).into_bytes())),
        vec(any::<u8>(), 0..10_000).prop_map(|raw| {
            let mut v = b"Bearer ".to_vec();
            v.extend(raw);
            Some(v)
        }),
        vec(any::<u8>(), 0..200).prop_map(Some),
    ]
}

/// Bodies: heartbeats with odd values, near-JSON, and arbitrary bytes past the limit.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i128>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        Just(MAX_SESSIONS_PER_POD.to_string()),
        Just((MAX_SESSIONS_PER_POD + 1).to_string()),
        Just("1e999".to_owned()),
        Just("null".to_owned()),
        any::<String>().prop_map(|s| format!("{s:?}")),
    ];
    prop_oneof![
        (number.clone(), any::<Option<String>>()).prop_map(|(n, pod)| {
            match pod {
                Some(p) => format!(r#"{{"sessions": {n}, "pod": {p:?}}}"#),
                None => format!(r#"{{"sessions": {n}}}"#),
            }
            .into_bytes()
        }),
        number.prop_map(|n| format!(r#"{{"sessions": {n}, "sessions": 1}}"#).into_bytes()),
        vec(any::<u8>(), 0..(MAX_BODY_BYTES * 2)),
        (1..200usize).prop_map(|depth| {
            format!(r#"{{"sessions": 1, "pod": {}}}"#, "[".repeat(depth)).into_bytes()
        }),
    ]
}

const ANSWERS: [StatusCode; 9] = [
    StatusCode::OK,
    StatusCode::BAD_REQUEST,
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::SERVICE_UNAVAILABLE,
];

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_heartbeat_request_panics_or_gets_an_undocumented_answer(
        auth in authorization(),
        body in body(),
        dev in any::<bool>(),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let state = state(dev);
        let mut request = Request::post("/v1/heartbeats");
        if let Some(value) = auth.as_deref().and_then(|a| HeaderValue::from_bytes(a).ok()) {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.body(Body::from(body.clone())).expect("a request");
        let answer = runtime
            .block_on(heartbeat_router(Arc::clone(&state)).oneshot(request))
            .expect("the router is infallible");
        let status = answer.status();
        assert!(ANSWERS.contains(&status), "undocumented answer {status}");
        let retry = matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.headers().contains_key(header::RETRY_AFTER), retry, "Retry-After on {status}");
        if status == StatusCode::OK {
            let sessions = state
                .heartbeats
                .latest(&PodKey::new("demo", "chat-a"), None)
                .expect("an accepted heartbeat is recorded")
                .sessions;
            assert!(sessions <= MAX_SESSIONS_PER_POD);
        } else {
            assert_eq!(state.heartbeats.len(), 0, "a refused heartbeat recorded nothing");
        }
    }
}

/// A body that never ends, counting the bytes the server pulled from it.
#[tokio::test]
async fn an_endless_body_is_read_no_further_than_the_limit() {
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pulled);
    let endless = futures::stream::repeat_with(move || {
        counter.fetch_add(1024, Ordering::SeqCst);
        Ok::<_, std::io::Error>(axum::body::Bytes::from(vec![b' '; 1024]))
    });
    let request = Request::post("/v1/heartbeats")
        .header(header::AUTHORIZATION, format!("Bearer {}", valid_token()))
        .body(Body::from_stream(endless))
        .expect("a request");
    let answer = heartbeat_router(state(false))
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        pulled.load(Ordering::SeqCst) <= MAX_BODY_BYTES + 2048,
        "read {} bytes of an endless body",
        pulled.load(Ordering::SeqCst)
    );
}
