//! The TokenReview cache in front of the heartbeat endpoint: who a bearer token speaks for,
//! reviewed by the API server as rarely as possible and never at an attacker's pace.
//!
//! - Tokens that cannot be projected ServiceAccount tokens for drainscaler (empty, too long,
//!   not a JWT, expired or for another audience by their own unverified claims) are refused
//!   without a review. The claims are only ever used to refuse or to shorten a cache entry.
//! - Accepted tokens are cached until the earlier of a TTL and the token's own `exp`; refused
//!   ones for a short TTL. Each kind has its own bounded LRU, so a flood of bogus tokens
//!   evicts only other bogus tokens, never a pod's.
//! - Identical reviews in flight are one review. Reviews in flight are bounded, and reviews of
//!   tokens never accepted before share a global rate limit; a known pod whose entry expired
//!   renews outside that limit, so a flood cannot starve the pods that are heartbeating.
//!
//! Needs a reviewer (the API server, behind [`Reviewer`]); the clock is injected.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;
use crate::names::TOKEN_AUDIENCE;
use crate::server::{ApiError, PodIdentity, api_error, identity_from_review};

/// Asks who a token belongs to: a TokenReview in production, a table in tests.
pub trait Reviewer: Send + Sync + 'static {
    /// The review's status, or why the review could not be made.
    fn review(&self, token: String) -> BoxFuture<'static, Result<TokenReviewStatus, String>>;
}

/// A `TokenReview` for audience `drainscaler`, sent with drainscaler's own identity.
pub struct KubeReviewer {
    client: Client,
}

impl KubeReviewer {
    pub fn new(client: Client) -> KubeReviewer {
        KubeReviewer { client }
    }
}

impl Reviewer for KubeReviewer {
    fn review(&self, token: String) -> BoxFuture<'static, Result<TokenReviewStatus, String>> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        Box::pin(async move {
            let review = TokenReview {
                metadata: ObjectMeta::default(),
                spec: TokenReviewSpec {
                    token: Some(token),
                    audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
                },
                status: None,
            };
            api.create(&PostParams::default(), &review)
                .await
                .map(|r| r.status.unwrap_or_default())
                .map_err(|e| e.to_string())
        })
    }
}

/// Monotonic time for cache entries and the rate limit; wall time for a token's `exp`.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    /// Seconds since the Unix epoch.
    fn unix_seconds(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_seconds(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// How much the cache remembers and how fast it may ask.
#[derive(Clone, Debug)]
pub struct Limits {
    /// The longest an accepted token is trusted without a new review.
    pub accepted_ttl: Duration,
    /// How long a refused token is refused without a new review.
    pub refused_ttl: Duration,
    pub accepted_capacity: usize,
    pub refused_capacity: usize,
    /// TokenReviews in flight at once.
    pub concurrent_reviews: usize,
    /// How long a review waits for one of those slots before the heartbeat is answered 503.
    pub review_wait: Duration,
    /// The longest a TokenReview may take.
    pub review_deadline: Duration,
    /// Reviews per second of tokens never accepted before, and the burst above that.
    pub unknown_per_second: u32,
    pub unknown_burst: u32,
    /// Longer tokens are refused unread. Projected tokens are about 1 KiB.
    pub max_token_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            accepted_ttl: Duration::from_secs(60),
            refused_ttl: Duration::from_secs(10),
            accepted_capacity: 50_000,
            refused_capacity: 10_000,
            concurrent_reviews: 8,
            review_wait: Duration::from_secs(2),
            review_deadline: Duration::from_secs(5),
            unknown_per_second: 50,
            unknown_burst: 200,
            max_token_bytes: 8192,
        }
    }
}

/// SHA-256 of a token: the cache never holds tokens themselves.
type TokenHash = [u8; 32];
/// What a review decided: the pod, or the refusal to send back.
type Outcome = Result<PodIdentity, ApiError>;

/// Shared by every heartbeat; cheap to clone.
#[derive(Clone)]
pub struct TokenCache {
    inner: Arc<Inner>,
}

struct Inner {
    reviewer: Arc<dyn Reviewer>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    metrics: Arc<Metrics>,
    slots: Semaphore,
    state: Mutex<State>,
}

struct State {
    accepted: Lru<PodIdentity>,
    refused: Lru<ApiError>,
    in_flight: HashMap<TokenHash, watch::Receiver<Option<Outcome>>>,
    unknown: Bucket,
}

impl TokenCache {
    pub fn new(
        reviewer: Arc<dyn Reviewer>,
        clock: Arc<dyn Clock>,
        limits: Limits,
        metrics: Arc<Metrics>,
    ) -> TokenCache {
        let now = clock.now();
        let state = State {
            accepted: Lru::new(limits.accepted_capacity),
            refused: Lru::new(limits.refused_capacity),
            in_flight: HashMap::new(),
            unknown: Bucket::full(limits.unknown_per_second, limits.unknown_burst, now),
        };
        TokenCache {
            inner: Arc::new(Inner {
                slots: Semaphore::new(limits.concurrent_reviews.max(1)),
                reviewer,
                clock,
                limits,
                metrics,
                state: Mutex::new(state),
            }),
        }
    }

    /// The pod `token` belongs to, from the cache or a review.
    pub async fn identify(&self, token: &str) -> Outcome {
        let inner = &self.inner;
        let claims = match precheck(token, &inner.limits, inner.clock.unix_seconds()) {
            Ok(claims) => claims,
            Err(e) => {
                inner.metrics.token_review("refused_unread");
                return Err(e);
            }
        };
        let hash: TokenHash = Sha256::digest(token.as_bytes()).into();
        let mut pending = {
            let mut state = inner.lock();
            let now = inner.clock.now();
            let known = match state.accepted.get(&hash) {
                Some((identity, until)) if until > now => {
                    inner.metrics.token_review("hit");
                    return Ok(identity.clone());
                }
                Some(_) => true,
                None => false,
            };
            if let Some((refusal, until)) = state.refused.get(&hash)
                && until > now
            {
                inner.metrics.token_review("refused_cached");
                return Err(refusal.clone());
            }
            if let Some(pending) = state.in_flight.get(&hash) {
                inner.metrics.token_review("coalesced");
                pending.clone()
            } else {
                if !known && !state.unknown.take(now) {
                    inner.metrics.token_review("throttled");
                    return Err(throttled(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many new tokens to review at once; retry in a second",
                    ));
                }
                let (done, pending) = watch::channel(None);
                state.in_flight.insert(hash, pending.clone());
                tokio::spawn(Arc::clone(inner).review(hash, token.to_owned(), claims.exp, done));
                pending
            }
        };
        match pending.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(review_failed())),
            // The review task ended without an answer (it panicked).
            Err(_) => Err(review_failed()),
        }
    }

    /// Entries held: accepted, refused.
    pub fn len(&self) -> (usize, usize) {
        let state = self.inner.lock();
        (state.accepted.len(), state.refused.len())
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One review, shared by every heartbeat that waits on `done`; runs to the end even if
    /// they all go away, so that its answer is cached.
    async fn review(
        self: Arc<Inner>,
        hash: TokenHash,
        token: String,
        exp: Option<u64>,
        done: watch::Sender<Option<Outcome>>,
    ) {
        let _forget = ForgetInFlight { inner: &self, hash };
        let outcome = self.reviewed(token, exp, hash).await;
        // Published after the cache holds it, and before the in-flight entry goes (on drop):
        // a heartbeat never misses both.
        let _ = done.send(Some(outcome));
    }

    async fn reviewed(&self, token: String, exp: Option<u64>, hash: TokenHash) -> Outcome {
        let Ok(Ok(_slot)) =
            tokio::time::timeout(self.limits.review_wait, self.slots.acquire()).await
        else {
            self.metrics.token_review("throttled");
            return Err(throttled(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many token reviews in flight; retry",
            ));
        };
        self.metrics.token_review("reviewed");
        let status = match tokio::time::timeout(
            self.limits.review_deadline,
            self.reviewer.review(token),
        )
        .await
        {
            Ok(Ok(status)) => status,
            Ok(Err(why)) => {
                tracing::warn!(error = why, "TokenReview failed");
                self.metrics.token_review("review_failed");
                return Err(review_failed());
            }
            Err(_) => {
                tracing::warn!(deadline = ?self.limits.review_deadline, "TokenReview timed out");
                self.metrics.token_review("review_failed");
                return Err(review_failed());
            }
        };
        let outcome = identity_from_review(&status);
        let now = self.clock.now();
        let mut state = self.lock();
        match &outcome {
            Ok(identity) => {
                let left = exp.map_or(self.limits.accepted_ttl, |exp| {
                    Duration::from_secs(exp.saturating_sub(self.clock.unix_seconds()))
                });
                let ttl = self.limits.accepted_ttl.min(left);
                if !ttl.is_zero() {
                    state.accepted.insert(hash, identity.clone(), now + ttl);
                }
                state.refused.remove(&hash);
            }
            Err(refusal) => {
                state
                    .refused
                    .insert(hash, refusal.clone(), now + self.limits.refused_ttl);
                state.accepted.remove(&hash);
            }
        }
        outcome
    }
}

/// Removes a review from the in-flight table when it ends, however it ends.
struct ForgetInFlight<'a> {
    inner: &'a Inner,
    hash: TokenHash,
}

impl Drop for ForgetInFlight<'_> {
    fn drop(&mut self) {
        self.inner.lock().in_flight.remove(&self.hash);
    }
}

fn throttled(status: StatusCode, message: &str) -> ApiError {
    api_error(status, "throttled", message)
}

fn review_failed() -> ApiError {
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "review_failed",
        "could not review the token; retry",
    )
}

/// The claims drainscaler reads, unverified, from a token's payload.
#[derive(Debug, Default, Deserialize)]
struct Claims {
    exp: Option<u64>,
    aud: Option<Audience>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Refuses, without a review, what cannot be a live projected token for drainscaler.
fn precheck(token: &str, limits: &Limits, unix_now: u64) -> Result<Claims, ApiError> {
    let refuse = |why: String| {
        api_error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            format!(
                "{why}: send the pod's projected ServiceAccount token (audience {TOKEN_AUDIENCE}) as Authorization: Bearer"
            ),
        )
    };
    if token.is_empty() {
        return Err(refuse("the bearer token is empty".to_owned()));
    }
    if token.len() > limits.max_token_bytes {
        return Err(refuse(format!(
            "the bearer token is longer than {} bytes",
            limits.max_token_bytes
        )));
    }
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse("the bearer token is not a JWT".to_owned()));
    };
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| refuse("the bearer token's payload is not a JWT claims set".to_owned()))?;
    if let Some(exp) = claims.exp
        && exp <= unix_now
    {
        return Err(refuse(format!("the bearer token expired at {exp}")));
    }
    let for_us = match &claims.aud {
        None => true,
        Some(Audience::One(a)) => a == TOKEN_AUDIENCE,
        Some(Audience::Many(a)) => a.iter().any(|a| a == TOKEN_AUDIENCE),
    };
    if !for_us {
        return Err(refuse(format!(
            "the bearer token is not for audience {TOKEN_AUDIENCE}"
        )));
    }
    Ok(claims)
}

/// A token bucket: `per_second` refills, `burst` at most.
struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_second: u32, burst: u32, now: Instant) -> Bucket {
        let burst = f64::from(burst.max(1));
        Bucket {
            per_second: f64::from(per_second),
            burst,
            tokens: burst,
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A map of at most `capacity` entries that evicts the least recently used one.
struct Lru<V> {
    capacity: usize,
    entries: HashMap<TokenHash, LruEntry<V>>,
    /// Use order: the smallest tick is the least recently used.
    order: BTreeMap<u64, TokenHash>,
    tick: u64,
}

struct LruEntry<V> {
    value: V,
    until: Instant,
    tick: u64,
}

impl<V: Clone> Lru<V> {
    fn new(capacity: usize) -> Lru<V> {
        Lru {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The value and its expiry (past or not), marked as used.
    fn get(&mut self, key: &TokenHash) -> Option<(V, Instant)> {
        let entry = self.entries.get_mut(key)?;
        self.order.remove(&entry.tick);
        self.tick += 1;
        entry.tick = self.tick;
        self.order.insert(self.tick, *key);
        Some((entry.value.clone(), entry.until))
    }

    fn insert(&mut self, key: TokenHash, value: V, until: Instant) {
        self.remove(&key);
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        self.tick += 1;
        self.order.insert(self.tick, key);
        self.entries.insert(
            key,
            LruEntry {
                value,
                until,
                tick: self.tick,
            },
        );
    }

    fn remove(&mut self, key: &TokenHash) {
        if let Some(entry) = self.entries.remove(key) {
            self.order.remove(&entry.tick);
        }
    }
}

#[cfg(test)]
mod tests;
