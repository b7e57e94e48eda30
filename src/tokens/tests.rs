use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use tokio::sync::Semaphore;

use super::{Clock, Limits, Reviewer, TokenCache};
use crate::metrics::Metrics;
use crate::observe::heartbeats::PodKey;

const S: Duration = Duration::from_secs(1);
/// The fake wall clock starts here (2026-11-29).
const UNIX_START: u64 = 1_795_900_000;

/// A clock that moves only when told.
struct FakeClock {
    start: Instant,
    elapsed: Mutex<Duration>,
}

impl FakeClock {
    fn new() -> Arc<FakeClock> {
        Arc::new(FakeClock {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        })
    }

    fn advance(&self, by: Duration) {
        *self.elapsed.lock().expect("clock") += by;
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().expect("clock")
    }

    fn unix_seconds(&self) -> u64 {
        UNIX_START + self.elapsed.lock().expect("clock").as_secs()
    }
}

/// Accepts the tokens it was given (bound to their pod), refuses the rest; counts reviews and
/// can hold them until released.
#[derive(Default)]
struct FakeReviewer {
    pods: Mutex<HashMap<String, String>>,
    reviews: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// When set, each review waits for a permit.
    gate: Option<Arc<Semaphore>>,
    fail: std::sync::atomic::AtomicBool,
}

impl FakeReviewer {
    fn gated() -> (Arc<FakeReviewer>, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let reviewer = FakeReviewer {
            gate: Some(Arc::clone(&gate)),
            ..FakeReviewer::default()
        };
        (Arc::new(reviewer), gate)
    }

    fn accept(&self, token: &str, pod: &str) {
        self.pods
            .lock()
            .expect("pods")
            .insert(token.to_owned(), pod.to_owned());
    }

    fn reviews(&self) -> usize {
        self.reviews.load(Ordering::SeqCst)
    }
}

impl Reviewer for Arc<FakeReviewer> {
    fn review(&self, token: String) -> BoxFuture<'static, Result<TokenReviewStatus, String>> {
        let me = Arc::clone(self);
        Box::pin(async move {
            me.reviews.fetch_add(1, Ordering::SeqCst);
            let now = me.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            me.most_in_flight.fetch_max(now, Ordering::SeqCst);
            if let Some(gate) = &me.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            me.in_flight.fetch_sub(1, Ordering::SeqCst);
            if me.fail.load(Ordering::SeqCst) {
                return Err("the API server is down".to_owned());
            }
            let pod = me.pods.lock().expect("pods").get(&token).cloned();
            Ok(status(pod.as_deref()))
        })
    }
}

fn status(pod: Option<&str>) -> TokenReviewStatus {
    let Some(pod) = pod else {
        return TokenReviewStatus {
            authenticated: Some(false),
            error: Some("invalid bearer token".to_owned()),
            ..TokenReviewStatus::default()
        };
    };
    let extra = BTreeMap::from([
        (
            "authentication.kubernetes.io/pod-name".to_owned(),
            vec![pod.to_owned()],
        ),
        (
            "authentication.kubernetes.io/pod-uid".to_owned(),
            vec![format!("uid-{pod}")],
        ),
    ]);
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(vec!["drainscaler".to_owned()]),
        user: Some(UserInfo {
            username: Some("system:serviceaccount:demo:chat".to_owned()),
            extra: Some(extra),
            ..UserInfo::default()
        }),
        ..TokenReviewStatus::default()
    }
}

/// A JWT-shaped token with these claims (the signature is not checked locally).
fn jwt(claims: serde_json::Value) -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{}.c2lnbmF0dXJl",
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A token for audience drainscaler, unique by `n`, valid for an hour.
fn token(n: u64) -> String {
    jwt(serde_json::json!({"aud": ["drainscaler"], "exp": UNIX_START + 3600, "jti": n}))
}

fn limits() -> Limits {
    Limits {
        accepted_ttl: 60 * S,
        refused_ttl: 10 * S,
        accepted_capacity: 100,
        refused_capacity: 100,
        concurrent_reviews: 4,
        review_wait: 2 * S,
        review_deadline: 5 * S,
        unknown_per_second: 10,
        unknown_burst: 20,
        max_token_bytes: 4096,
    }
}

struct Fixture {
    cache: TokenCache,
    clock: Arc<FakeClock>,
    reviewer: Arc<FakeReviewer>,
    metrics: Arc<Metrics>,
}

fn fixture(limits: Limits, reviewer: Arc<FakeReviewer>) -> Fixture {
    let clock = FakeClock::new();
    let metrics = Arc::new(Metrics::default());
    let cache = TokenCache::new(
        Arc::new(Arc::clone(&reviewer)),
        Arc::clone(&clock) as Arc<dyn Clock>,
        limits,
        Arc::clone(&metrics),
    );
    Fixture {
        cache,
        clock,
        reviewer,
        metrics,
    }
}

fn counted(metrics: &Metrics, result: &str) -> u64 {
    let page = metrics.encode().expect("metrics encode");
    let line = format!("drainscaler_token_reviews_total{{result=\"{result}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test]
async fn an_accepted_token_is_reviewed_once_until_its_entry_expires() {
    let f = fixture(limits(), Arc::default());
    let t = token(1);
    f.reviewer.accept(&t, "chat-a");
    for _ in 0..5 {
        let id = f.cache.identify(&t).await.expect("accepted");
        assert_eq!(id.key, PodKey::new("demo", "chat-a"));
    }
    assert_eq!(f.reviewer.reviews(), 1);
    f.clock.advance(59 * S);
    f.cache.identify(&t).await.expect("still cached");
    assert_eq!(f.reviewer.reviews(), 1);
    f.clock.advance(2 * S);
    f.cache.identify(&t).await.expect("reviewed again");
    assert_eq!(f.reviewer.reviews(), 2);
    assert_eq!(
        (counted(&f.metrics, "hit"), counted(&f.metrics, "reviewed")),
        (5, 2)
    );
}

#[tokio::test]
async fn an_accepted_entry_expires_no_later_than_the_token_itself() {
    let f = fixture(limits(), Arc::default());
    let t = jwt(serde_json::json!({"aud": "drainscaler", "exp": UNIX_START + 20}));
    f.reviewer.accept(&t, "chat-a");
    f.cache.identify(&t).await.expect("accepted");
    f.clock.advance(19 * S);
    f.cache.identify(&t).await.expect("cached");
    assert_eq!(f.reviewer.reviews(), 1);
    f.clock.advance(S);
    let e = f.cache.identify(&t).await.expect_err("expired");
    assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    assert!(e.message.contains("expired"), "{}", e.message);
    assert_eq!(
        f.reviewer.reviews(),
        1,
        "an expired token is refused unread"
    );
}

#[tokio::test]
async fn a_refused_token_is_refused_from_the_cache_for_a_short_while() {
    let f = fixture(limits(), Arc::default());
    let t = token(1);
    for _ in 0..3 {
        let e = f.cache.identify(&t).await.expect_err("refused");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
        assert!(e.message.contains("invalid bearer token"), "{}", e.message);
    }
    assert_eq!(f.reviewer.reviews(), 1);
    f.clock.advance(11 * S);
    f.reviewer.accept(&t, "chat-a");
    f.cache
        .identify(&t)
        .await
        .expect("accepted on a new review");
    assert_eq!(f.reviewer.reviews(), 2);
    assert_eq!(counted(&f.metrics, "refused_cached"), 2);
}

#[tokio::test]
async fn what_cannot_be_a_token_for_drainscaler_is_refused_without_a_review() {
    let f = fixture(limits(), Arc::default());
    let long = jwt(serde_json::json!({"aud": "drainscaler", "pad": "x".repeat(5000)}));
    for (bad, why) in [
        (String::new(), "empty"),
        ("not-a-jwt".to_owned(), "not a JWT"),
        ("a.b.c.d".to_owned(), "not a JWT"),
        ("e30.!!!.sig".to_owned(), "payload"),
        (
            format!("e30.{}.sig", URL_SAFE_NO_PAD.encode("[1]")),
            "payload",
        ),
        (
            jwt(serde_json::json!({"aud": "drainscaler", "exp": UNIX_START - 1})),
            "expired",
        ),
        (
            jwt(serde_json::json!({"aud": ["https://kubernetes.default.svc"]})),
            "audience drainscaler",
        ),
        (long, "longer than 4096 bytes"),
    ] {
        let e = f.cache.identify(&bad).await.expect_err("refused");
        assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:.40}");
        assert!(e.message.contains(why), "{bad:.40}: {}", e.message);
        assert!(
            e.message.contains("projected ServiceAccount token"),
            "{}",
            e.message
        );
    }
    assert_eq!(f.reviewer.reviews(), 0);
    assert_eq!(counted(&f.metrics, "refused_unread"), 8);
}

#[tokio::test]
async fn identical_reviews_in_flight_are_one_review() {
    let (reviewer, gate) = FakeReviewer::gated();
    let f = fixture(limits(), reviewer);
    let t = token(1);
    f.reviewer.accept(&t, "chat-a");
    let waiting: Vec<_> = (0..50)
        .map(|_| {
            let (cache, t) = (f.cache.clone(), t.clone());
            tokio::spawn(async move { cache.identify(&t).await })
        })
        .collect();
    wait_until(|| f.reviewer.in_flight.load(Ordering::SeqCst) == 1).await;
    gate.add_permits(1);
    for w in waiting {
        w.await.expect("joined").expect("accepted");
    }
    assert_eq!(f.reviewer.reviews(), 1);
    assert_eq!(counted(&f.metrics, "coalesced"), 49);
}

#[tokio::test(start_paused = true)]
async fn reviews_in_flight_are_bounded_and_the_excess_is_answered_503() {
    let (reviewer, gate) = FakeReviewer::gated();
    let f = fixture(limits(), reviewer);
    let waiting: Vec<_> = (0..10)
        .map(|n| {
            let cache = f.cache.clone();
            tokio::spawn(async move { cache.identify(&token(n)).await })
        })
        .collect();
    // Paused time moves on once every task waits: past the 2 s a review waits for a slot.
    let mut answers = Vec::new();
    for w in waiting {
        answers.push(w.await.expect("joined"));
    }
    assert_eq!(f.reviewer.most_in_flight.load(Ordering::SeqCst), 4);
    let throttled = answers
        .iter()
        .filter(|a| a.as_ref().is_err_and(|e| e.result == "throttled"))
        .count();
    // Four reviews hang until their deadline (review_failed); six never got a slot.
    assert_eq!(throttled, 6);
    assert!(answers.iter().all(|a| {
        a.as_ref()
            .is_err_and(|e| e.status == StatusCode::SERVICE_UNAVAILABLE)
    }));
    drop(gate);
}

#[tokio::test]
async fn unknown_tokens_are_rate_limited_but_known_pods_still_renew() {
    let f = fixture(limits(), Arc::default());
    let known = token(0);
    f.reviewer.accept(&known, "chat-a");
    f.cache.identify(&known).await.expect("accepted");
    // A flood of distinct bogus tokens: what is left of the burst of 20 (the known token took
    // one) is reviewed, the rest throttled.
    let mut throttled = 0;
    for n in 1..=100 {
        let e = f.cache.identify(&token(n)).await.expect_err("bogus");
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            throttled += 1;
            assert!(e.message.contains("retry"), "{}", e.message);
        }
    }
    assert_eq!((f.reviewer.reviews(), throttled), (1 + 19, 81));
    // The known pod's entry expires during the flood: it renews outside the limit.
    f.clock.advance(61 * S);
    let before = f.reviewer.reviews();
    for n in 101..=200 {
        let _ = f.cache.identify(&token(n)).await;
    }
    f.cache
        .identify(&known)
        .await
        .expect("renewed despite the flood");
    // 61 s refilled the bucket to its burst (20) for the bogus tokens, plus the renewal.
    assert_eq!(f.reviewer.reviews() - before, 20 + 1);
    // One second refills ten.
    f.clock.advance(S);
    let before = f.reviewer.reviews();
    for n in 201..=300 {
        let _ = f.cache.identify(&token(n)).await;
    }
    assert_eq!(f.reviewer.reviews() - before, 10);
}

#[tokio::test]
async fn a_full_cache_evicts_the_least_recently_used_entry_and_a_flood_evicts_no_pod() {
    let f = fixture(
        Limits {
            accepted_capacity: 3,
            refused_capacity: 3,
            unknown_burst: 1000,
            ..limits()
        },
        Arc::default(),
    );
    let tokens: Vec<String> = (0..4).map(token).collect();
    for (n, t) in tokens.iter().enumerate() {
        f.reviewer.accept(t, &format!("chat-{n}"));
    }
    for t in &tokens[..3] {
        f.cache.identify(t).await.expect("accepted");
    }
    // Token 0 is used again, so token 1 is the least recently used when token 3 comes.
    f.cache.identify(&tokens[0]).await.expect("hit");
    f.cache.identify(&tokens[3]).await.expect("accepted");
    assert_eq!(f.cache.len(), (3, 0));
    let reviews = f.reviewer.reviews();
    for t in [&tokens[0], &tokens[2], &tokens[3]] {
        f.cache.identify(t).await.expect("still cached");
    }
    assert_eq!(f.reviewer.reviews(), reviews, "0, 2 and 3 were kept");
    // Bogus tokens fill only the refused side.
    for n in 100..200 {
        let _ = f.cache.identify(&token(n)).await;
    }
    assert_eq!(f.cache.len(), (3, 3));
    let reviews = f.reviewer.reviews();
    for t in [&tokens[0], &tokens[2], &tokens[3]] {
        f.cache.identify(t).await.expect("still cached");
    }
    assert_eq!(f.reviewer.reviews(), reviews);
    f.cache.identify(&tokens[1]).await.expect("reviewed again");
    assert_eq!(f.reviewer.reviews(), reviews + 1);
}

#[tokio::test]
async fn a_failed_review_is_answered_503_and_not_cached() {
    let f = fixture(limits(), Arc::default());
    let t = token(1);
    f.reviewer.accept(&t, "chat-a");
    f.reviewer.fail.store(true, Ordering::SeqCst);
    let e = f.cache.identify(&t).await.expect_err("failed");
    assert_eq!(
        (e.status, e.result),
        (StatusCode::SERVICE_UNAVAILABLE, "review_failed")
    );
    f.reviewer.fail.store(false, Ordering::SeqCst);
    f.cache
        .identify(&t)
        .await
        .expect("accepted at once when the API is back");
    assert_eq!(f.reviewer.reviews(), 2);
}

/// Polls `done` while other tasks run; the test's own deadline is the harness's.
async fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + 10 * S;
    while !done() {
        assert!(Instant::now() < deadline, "condition not reached in 10s");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
