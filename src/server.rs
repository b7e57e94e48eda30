//! HTTP: `POST /v1/heartbeats` (TokenReview-authenticated, the sender's pod taken from its
//! token) on the heartbeat port; `/metrics`, `/healthz`, `/readyz` on the operations port.
//! Connections, timeouts and TLS are `listener`'s.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::engine::Heartbeat;
use crate::health::Health;
use crate::leader::Leadership;
use crate::metrics::Metrics;
use crate::names::{
    DRAINING_ANNOTATION, DRAINING_SINCE_ANNOTATION, POD_NAME_EXTRA, POD_UID_EXTRA, TOKEN_AUDIENCE,
};
use crate::observe::heartbeats::{Heartbeats, PodKey};
use crate::observe::pods::CachedPod;
use crate::observe::pods::time;
use crate::tokens::TokenCache;

/// Heartbeat bodies larger than this are refused.
pub const MAX_BODY_BYTES: usize = 4096;
/// The most sessions one pod may report. Far above what one process holds (about two million
/// connections is the known record for one server), low enough that sums over any number of
/// pods cannot overflow.
pub const MAX_SESSIONS_PER_POD: u64 = 10_000_000;

/// Shared with the controller: the server answers heartbeats only while `pods` is set, that is
/// while this replica leads.
pub struct ServerState {
    pub heartbeats: Heartbeats,
    pub metrics: Arc<Metrics>,
    pub pods: RwLock<Option<Store<CachedPod>>>,
    pub insecure_dev_heartbeats: bool,
    pub tokens: TokenCache,
    /// The longest a client may take to send a heartbeat's body once its headers are in.
    pub body_read_timeout: Duration,
    /// Heartbeats handled at once; more are answered 503 at once.
    requests: Semaphore,
    /// Heartbeats are answered only while this is fresh, once set.
    leadership: OnceLock<Leadership>,
}

impl ServerState {
    pub fn new(
        tokens: TokenCache,
        heartbeats: Heartbeats,
        metrics: Arc<Metrics>,
        insecure_dev_heartbeats: bool,
        limits: &RequestLimits,
    ) -> ServerState {
        ServerState {
            heartbeats,
            metrics,
            pods: RwLock::new(None),
            insecure_dev_heartbeats,
            tokens,
            body_read_timeout: limits.body_read_timeout,
            requests: Semaphore::new(limits.concurrent_requests.max(1)),
            leadership: OnceLock::new(),
        }
    }

    /// Starts answering heartbeats from `pods` (on becoming leader).
    pub fn lead(&self, pods: Store<CachedPod>) {
        *self.pods.write().unwrap_or_else(PoisonError::into_inner) = Some(pods);
    }

    /// Stops answering heartbeats (leadership is over).
    pub fn unlead(&self) {
        *self.pods.write().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Answers heartbeats only while `leadership` is fresh, not merely until it is declared
    /// lost: a replica woken from a freeze stops at once.
    pub fn follow(&self, leadership: Leadership) {
        let _ = self.leadership.set(leadership);
    }

    /// The pod cache, while this replica leads.
    pub fn leading_pods(&self) -> Option<Store<CachedPod>> {
        if let Some(l) = self.leadership.get()
            && l.check().is_err()
        {
            return None;
        }
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Per-request limits of the heartbeat port.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    pub body_read_timeout: Duration,
    pub concurrent_requests: usize,
}

impl Default for RequestLimits {
    fn default() -> RequestLimits {
        RequestLimits {
            body_read_timeout: Duration::from_secs(5),
            concurrent_requests: 1024,
        }
    }
}

/// The heartbeat port: `POST /v1/heartbeats` and nothing else.
pub fn heartbeat_router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/heartbeats", post(heartbeat))
        .with_state(state)
}

/// The operations port: `/metrics`, `/healthz` (liveness), `/readyz` (readiness).
pub fn ops_router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics).with_state(metrics))
        .route("/healthz", get(healthz).with_state(Arc::clone(&health)))
        .route("/readyz", get(readyz).with_state(health))
}

/// A heartbeat as sent: `{"sessions": 12}`, plus `"pod": "ns/name"` in development mode.
/// `"draining": true` says the count was taken while the instance knew it was draining (an
/// earlier reply said so, or it read its `drainscaler.io/draining` annotation) and took no new
/// sessions.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    pub sessions: u64,
    #[serde(default)]
    pub pod: Option<String>,
    #[serde(default)]
    pub draining: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeartbeatReply {
    pub drain: bool,
}

/// The pod a heartbeat speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    pub key: PodKey,
    pub uid: Option<String>,
}

/// A 4xx/5xx answer with a JSON body `{"error": ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The metric label.
    pub result: &'static str,
}

pub(crate) fn api_error(
    status: StatusCode,
    result: &'static str,
    message: impl Into<String>,
) -> ApiError {
    ApiError {
        status,
        result,
        message: message.into(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        );
        let mut response = (
            self.status,
            axum::Json(serde_json::json!({"error": self.message})),
        )
            .into_response();
        if retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses and checks a heartbeat body.
pub fn parse_request(body: &[u8]) -> Result<HeartbeatRequest, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let request: HeartbeatRequest = serde_json::from_slice(body).map_err(|e| {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "expected a JSON body like {{\"sessions\": 12}} with sessions a non-negative integer: {e}"
            ),
        )
    })?;
    if request.sessions > MAX_SESSIONS_PER_POD {
        return Err(api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "sessions is {}, above the maximum of {MAX_SESSIONS_PER_POD} per pod",
                request.sessions
            ),
        ));
    }
    Ok(request)
}

/// `ns/name` as development heartbeats name their pod.
pub fn parse_pod_ref(raw: &str) -> Result<PodKey, ApiError> {
    let bad = || {
        api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("pod must be \"namespace/name\", got {raw:?}"),
        )
    };
    let (ns, name) = raw.split_once('/').ok_or_else(bad)?;
    let dns = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    };
    if dns(ns) && dns(name) {
        Ok(PodKey::new(ns, name))
    } else {
        Err(bad())
    }
}

/// The pod a reviewed token is bound to.
pub fn identity_from_review(status: &TokenReviewStatus) -> Result<PodIdentity, ApiError> {
    let denied = |why: String| api_error(StatusCode::UNAUTHORIZED, "unauthenticated", why);
    if status.authenticated != Some(true) {
        return Err(denied(format!(
            "the token was not accepted{}",
            status
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )));
    }
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE))
    {
        return Err(denied(format!(
            "the token is not for audience {TOKEN_AUDIENCE}: mount a projected ServiceAccount token with audience {TOKEN_AUDIENCE}"
        )));
    }
    let user = status.user.as_ref();
    let username = user.and_then(|u| u.username.as_deref()).unwrap_or_default();
    let namespace = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .map(|(ns, _)| ns)
        .ok_or_else(|| denied(format!("{username:?} is not a ServiceAccount")))?;
    let extra = |key: &str| {
        user.and_then(|u| u.extra.as_ref())
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .cloned()
    };
    let name = extra(POD_NAME_EXTRA).ok_or_else(|| {
        denied("the token is not bound to a pod: use a projected ServiceAccount token".to_owned())
    })?;
    Ok(PodIdentity {
        key: PodKey::new(namespace, &name),
        uid: extra(POD_UID_EXTRA),
    })
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

async fn heartbeat(
    State(state): State<Arc<ServerState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(_handling) = state.requests.try_acquire() else {
        state.metrics.refused("concurrency");
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many heartbeats at once; retry",
        )
        .into_response();
    };
    let answer = match read_body(&state, body).await {
        Ok(body) => handle_heartbeat(&state, &headers, &body).await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(reply) => {
            state.metrics.heartbeat("accepted");
            axum::Json(reply).into_response()
        }
        Err(e) => {
            state.metrics.heartbeat(e.result);
            e.into_response()
        }
    }
}

/// The body, read within the body-read timeout and never beyond `MAX_BODY_BYTES` (plus one
/// byte, to tell a body of exactly the maximum from a larger one).
async fn read_body(state: &ServerState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    match tokio::time::timeout(
        state.body_read_timeout,
        axum::body::to_bytes(body, MAX_BODY_BYTES + 1),
    )
    .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the body is larger than {MAX_BODY_BYTES} bytes, or was cut off"),
        )),
        Err(_) => {
            state.metrics.refused("body_timeout");
            Err(api_error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body did not arrive within {:?}",
                    state.body_read_timeout
                ),
            ))
        }
    }
}

pub(crate) async fn handle_heartbeat(
    state: &ServerState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HeartbeatReply, ApiError> {
    let Some(pods) = state.leading_pods() else {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_leader",
            "this replica is not the leader; retry through the heartbeat Service",
        ));
    };
    let request = parse_request(body)?;
    let identity = match (bearer(headers), &request.pod, state.insecure_dev_heartbeats) {
        (_, Some(pod), true) => PodIdentity {
            key: parse_pod_ref(pod)?,
            uid: None,
        },
        (Some(token), claimed, _) => {
            let identity = state.tokens.identify(token).await?;
            if let Some(claimed) = claimed
                && parse_pod_ref(claimed)? != identity.key
            {
                return Err(api_error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "a heartbeat speaks only for its sender: the token belongs to {}/{}",
                        identity.key.namespace, identity.key.name
                    ),
                ));
            }
            identity
        }
        (None, _, _) => {
            return Err(api_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send the pod's projected ServiceAccount token (audience drainscaler) as Authorization: Bearer",
            ));
        }
    };
    let pod = pods
        .get(&ObjectRef::new(&identity.key.name).within(&identity.key.namespace))
        .ok_or_else(|| {
            api_error(
                StatusCode::NOT_FOUND,
                "unknown_pod",
                format!(
                    "pod {}/{} is not known to drainscaler",
                    identity.key.namespace, identity.key.name
                ),
            )
        })?;
    if let (Some(claimed), Some(actual)) = (&identity.uid, &pod.metadata.uid)
        && claimed != actual
    {
        return Err(api_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token belongs to an earlier pod of the same name",
        ));
    }
    let uid = identity.uid.clone().or_else(|| pod.metadata.uid.clone());
    let drain_mark = drain_mark(&pod);
    let told = state.heartbeats.told_drain(&identity.key, uid.as_deref());
    state.heartbeats.record_reply(
        identity.key,
        uid,
        Heartbeat {
            at: time(Timestamp::now()),
            sessions: request.sessions,
            draining: knew_of_drain(&request, drain_mark.as_deref(), told.as_deref()),
        },
        drain_mark.clone(),
    );
    let drain = drain_mark.is_some();
    Ok(HeartbeatReply { drain })
}

/// The drain a pod is in, as the pod cache shows it: its `draining-since` mark (empty when
/// the mark has no time), or `None` when it is not draining.
fn drain_mark(pod: &CachedPod) -> Option<String> {
    let annotations = pod.metadata.annotations.as_ref()?;
    (annotations.get(DRAINING_ANNOTATION)? == "true").then(|| {
        annotations
            .get(DRAINING_SINCE_ANNOTATION)
            .cloned()
            .unwrap_or_default()
    })
}

/// Whether a heartbeat's count was taken while the pod knew of its current drain: it says so,
/// or the previous reply already told it `drain: true` for this same drain. A count sent
/// before any such reply may have crossed the drain mark in flight, taken while the pod still
/// accepted sessions.
pub fn knew_of_drain(request: &HeartbeatRequest, mark: Option<&str>, told: Option<&str>) -> bool {
    request.draining || mark.is_some_and(|m| told == Some(m))
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn healthz(State(health): State<Arc<Health>>) -> Response {
    probe(health.live())
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    probe(health.ready())
}

/// 200 `ok`, or 503 with every reason on its own line.
fn probe(verdict: Result<(), Vec<String>>) -> Response {
    match verdict {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reasons) => {
            let mut response =
                (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n") + "\n").into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod handler_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::http::StatusCode;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use std::convert::Infallible;
    use std::sync::Arc;

    use axum::http::{Request, Response};
    use kube::runtime::reflector;

    use super::{
        RequestLimits, ServerState, drain_mark, identity_from_review, knew_of_drain, parse_pod_ref,
        parse_request,
    };
    use crate::leader::{Clock, Leadership, ManualClock, WRITE_WINDOW};
    use crate::metrics::Metrics;
    use crate::names::{DRAINING_ANNOTATION, HELD_BACK_ANNOTATION};
    use crate::observe::heartbeats::{Heartbeats, PodKey};
    use crate::observe::pods::CachedPod;
    use crate::tokens::{KubeReviewer, Limits, SystemClock, TokenCache};

    #[tokio::test]
    async fn heartbeats_are_answered_only_while_leadership_is_fresh() {
        let api = tower::service_fn(|_: Request<kube::client::Body>| async {
            Ok::<_, Infallible>(Response::new(kube::client::Body::empty()))
        });
        let metrics = Arc::new(Metrics::default());
        let tokens = TokenCache::new(
            Arc::new(KubeReviewer::new(kube::Client::new(api, "ns"))),
            Arc::new(SystemClock),
            Limits::default(),
            Arc::clone(&metrics),
        );
        let state = ServerState::new(
            tokens,
            Heartbeats::default(),
            metrics,
            false,
            &RequestLimits::default(),
        );
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        state.follow(leadership.clone());
        let (pods, _writer) = reflector::store();
        state.lead(pods);
        assert!(state.leading_pods().is_none(), "answered before leading");
        leadership.renewed(clock.now());
        assert!(state.leading_pods().is_some(), "not answered while leading");
        // Frozen past the write window: silent before the elector even notices.
        clock.advance(WRITE_WINDOW);
        assert!(state.leading_pods().is_none(), "answered while stale");
        leadership.renewed(clock.now());
        assert!(state.leading_pods().is_some());
        state.unlead();
        assert!(
            state.leading_pods().is_none(),
            "answered after leadership ended"
        );
    }

    #[test]
    fn a_held_back_pod_is_not_told_to_drain() {
        let mut held = CachedPod::default();
        let annotations = [(HELD_BACK_ANNOTATION.to_owned(), "true".to_owned())];
        held.metadata.annotations = Some(annotations.into_iter().collect());
        assert_eq!(drain_mark(&held), None);
        let mut drained = held.clone();
        if let Some(a) = drained.metadata.annotations.as_mut() {
            a.insert(DRAINING_ANNOTATION.to_owned(), "true".to_owned());
        }
        assert_eq!(drain_mark(&drained), Some(String::new()));
    }

    #[test]
    fn a_heartbeat_body_carries_a_session_count() {
        let r = parse_request(br#"{"sessions": 12}"#).expect("parses");
        assert_eq!((r.sessions, r.pod), (12, None));
        let r = parse_request(br#"{"sessions": 0, "pod": "demo/chat-a"}"#).expect("parses");
        assert_eq!(r.pod.as_deref(), Some("demo/chat-a"));
    }

    #[test]
    fn malformed_heartbeats_are_bad_requests_that_say_what_is_expected() {
        for body in [
            &br#"{"sessions": -1}"#[..],
            br#"{"sessions": "x"}"#,
            br#"{}"#,
            br#"{"sessions": 1, "extra": true}"#,
            b"not json",
        ] {
            let e = parse_request(body).expect_err("rejected");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.contains("sessions"), "{}", e.message);
        }
    }

    #[test]
    fn a_count_proves_a_drain_only_once_the_pod_knew_of_that_drain() {
        let plain = parse_request(br#"{"sessions": 0}"#).expect("parses");
        let says = parse_request(br#"{"sessions": 0, "draining": true}"#).expect("parses");
        let mark = Some("2026-01-01T00:00:00Z");
        // The first heartbeat after the drain mark: the pod was not told yet.
        assert!(!knew_of_drain(&plain, mark, None));
        // The previous reply told it about this drain.
        assert!(knew_of_drain(&plain, mark, mark));
        // It was told about an earlier drain that was cancelled: not this one.
        assert!(!knew_of_drain(&plain, mark, Some("2025-12-31T00:00:00Z")));
        // Not draining at all.
        assert!(!knew_of_drain(&plain, None, None));
        // It read its annotation and says so.
        assert!(knew_of_drain(&says, mark, None));
    }

    #[test]
    fn oversized_heartbeats_are_refused() {
        let big = format!(r#"{{"sessions": 1, "pod": "{}"}}"#, "a".repeat(5000));
        let e = parse_request(big.as_bytes()).expect_err("too large");
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn development_heartbeats_name_their_pod_as_namespace_slash_name() {
        assert_eq!(
            parse_pod_ref("demo/chat-a"),
            Ok(PodKey::new("demo", "chat-a"))
        );
        assert!(parse_pod_ref("chat-a").is_err());
        assert!(parse_pod_ref("demo/").is_err());
        assert!(parse_pod_ref("Demo/x y").is_err());
    }

    fn reviewed(authenticated: bool, audience: &str, pod: Option<&str>) -> TokenReviewStatus {
        let mut extra = BTreeMap::new();
        if let Some(pod) = pod {
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![pod.to_owned()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-uid".to_owned(),
                vec!["uid-1".to_owned()],
            );
        }
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(vec![audience.to_owned()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:demo:chat".to_owned()),
                extra: Some(extra),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn a_bound_token_identifies_its_pod() {
        let id = identity_from_review(&reviewed(true, "drainscaler", Some("chat-a"))).expect("ok");
        assert_eq!(id.key, PodKey::new("demo", "chat-a"));
        assert_eq!(id.uid.as_deref(), Some("uid-1"));
    }

    #[test]
    fn unauthenticated_unbound_or_wrong_audience_tokens_are_refused() {
        for status in [
            reviewed(false, "drainscaler", Some("chat-a")),
            reviewed(true, "https://kubernetes.default.svc", Some("chat-a")),
            reviewed(true, "drainscaler", None),
        ] {
            let e = identity_from_review(&status).expect_err("refused");
            assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        }
    }
}
