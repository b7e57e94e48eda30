//! Layers on the Kubernetes client: `DeadlineLayer` gives every API call a deadline (watches
//! excepted: they are long polls that the watcher bounds itself), and `FenceLayer` refuses every
//! write unless this replica's leadership is fresh. Needs no client itself.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Method, Request, Response};
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::leader::Leadership;
use crate::metrics::{Metrics, api_verb};

type BoxError = Box<dyn StdError + Send + Sync>;

/// An API call that did not finish within its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeadlineExceeded(pub Duration);

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the Kubernetes API did not answer within {}s",
            self.0.as_secs_f64()
        )
    }
}

impl StdError for DeadlineExceeded {}

/// Gives every request but a watch `deadline` to be answered in full, body included.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer(pub Duration);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            deadline: self.0,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S, B, RB> tower::Service<Request<B>> for Deadline<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Body<Data = Bytes> + Unpin,
    RB::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<RB>>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let watch = api_verb(request.method(), request.uri().query()) == "watch";
        let limit = self.deadline;
        let response = self.inner.call(request);
        if watch {
            return async move {
                let r = response.await.map_err(Into::into)?;
                Ok(r.map(|body| DeadlineBody::new(body, None, limit)))
            }
            .boxed();
        }
        let deadline = Instant::now() + limit;
        async move {
            let r = before(deadline, limit, async move {
                response.await.map_err(Into::into)
            })
            .await?;
            Ok(r.map(|body| DeadlineBody::new(body, Some(deadline), limit)))
        }
        .boxed()
    }
}

/// `future`'s outcome, or `DeadlineExceeded` once `deadline` has passed. The deadline is checked
/// before `future` is polled, so a process that wakes from a freeze past the deadline does not
/// go on with the call.
async fn before<T>(
    deadline: Instant,
    limit: Duration,
    future: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    let mut future = std::pin::pin!(future);
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(deadline));
    std::future::poll_fn(|cx| {
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Box::new(DeadlineExceeded(limit)) as BoxError));
        }
        if let Poll::Ready(r) = future.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        sleep
            .as_mut()
            .poll(cx)
            .map(|()| Err(Box::new(DeadlineExceeded(limit)) as BoxError))
    })
    .await
}

/// A response body that fails once its request's deadline passes (`None`: never).
#[derive(Debug)]
pub struct DeadlineBody<B> {
    inner: B,
    deadline: Option<(Instant, Pin<Box<Sleep>>)>,
    limit: Duration,
}

impl<B> DeadlineBody<B> {
    fn new(inner: B, deadline: Option<Instant>, limit: Duration) -> DeadlineBody<B> {
        DeadlineBody {
            inner,
            deadline: deadline.map(|d| (d, Box::pin(tokio::time::sleep_until(d)))),
            limit,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let limit = this.limit;
        if let Some((deadline, _)) = &this.deadline
            && Instant::now() >= *deadline
        {
            return Poll::Ready(Some(Err(Box::new(DeadlineExceeded(limit)))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match &mut this.deadline {
            Some((_, sleep)) => sleep
                .as_mut()
                .poll(cx)
                .map(|()| Some(Err(Box::new(DeadlineExceeded(limit)) as BoxError))),
            None => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a request changes something on the cluster.
pub fn is_write(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// Refuses every write while `leadership` is not fresh, right as the request is handed to the
/// client: the last guard, behind the checks each writer makes itself.
#[derive(Clone)]
pub struct FenceLayer {
    pub leadership: Leadership,
    pub metrics: Arc<Metrics>,
}

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fence<S>;
    fn layer(&self, inner: S) -> Fence<S> {
        Fence {
            inner,
            leadership: self.leadership.clone(),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct Fence<S> {
    inner: S,
    leadership: Leadership,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<Request<B>> for Fence<S>
where
    S: tower::Service<Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_write(request.method()) {
            if let Err(refused) = self.leadership.check() {
                self.metrics.fenced_write("refused");
                tracing::warn!(
                    method = %request.method(),
                    path = request.uri().path(),
                    %refused,
                    "write refused"
                );
                return std::future::ready(Err(Box::new(refused) as BoxError)).boxed();
            }
            self.metrics.fenced_write("sent");
        }
        let response = self.inner.call(request);
        async move { response.await.map_err(Into::into) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use axum::http::{Request, Response};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::{Layer, ServiceExt};

    use super::{DeadlineExceeded, DeadlineLayer, FenceLayer};
    use crate::leader::{Clock, Leadership, ManualClock, NotLeading, WRITE_WINDOW};
    use crate::metrics::Metrics;

    /// Real time: tokio's paused clock would need its `test-util` feature, which recompiles
    /// every dependency on tokio for tests.
    const LIMIT: Duration = Duration::from_millis(100);

    /// An API that never answers.
    fn silent() -> impl tower::Service<
        Request<()>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|_: Request<()>| std::future::pending())
    }

    fn exceeded(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
        e.downcast_ref::<DeadlineExceeded>() == Some(&DeadlineExceeded(LIMIT))
    }

    #[tokio::test]
    async fn a_call_unanswered_by_its_deadline_fails() {
        let api = DeadlineLayer(LIMIT).layer(silent());
        let request = Request::patch("/apis/apps/v1/namespaces/a/deployments/b/scale")
            .body(())
            .expect("a request");
        let error = api.oneshot(request).await.expect_err("a deadline error");
        assert!(exceeded(&*error), "{error}");
    }

    #[tokio::test]
    async fn a_watch_is_not_cut_by_the_deadline() {
        let api = DeadlineLayer(LIMIT).layer(silent());
        let request = Request::get("/api/v1/pods?watch=true&timeoutSeconds=290")
            .body(())
            .expect("a request");
        let waited = tokio::time::timeout(LIMIT * 10, api.oneshot(request)).await;
        assert!(waited.is_err(), "the watch ended: {:?}", waited.map(|_| ()));
    }

    /// A body that never ends.
    type Endless =
        StreamBody<futures::stream::Pending<Result<http_body::Frame<Bytes>, Infallible>>>;

    /// Answers headers at once and then a body that never ends.
    fn stalling_body() -> impl tower::Service<
        Request<()>,
        Response = Response<Endless>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(|_: Request<()>| async {
            Ok(Response::new(StreamBody::new(futures::stream::pending())))
        })
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_at_the_deadline_but_a_watch_body_may_wait() {
        let api = DeadlineLayer(LIMIT).layer(stalling_body());
        let get = Request::get("/api/v1/pods").body(()).expect("a request");
        let body = api.clone().oneshot(get).await.expect("headers").into_body();
        let error = body.collect().await.expect_err("a deadline error");
        assert!(exceeded(&*error), "{error}");

        let watch = Request::get("/api/v1/pods?watch=1")
            .body(())
            .expect("a request");
        let body = api.oneshot(watch).await.expect("headers").into_body();
        assert!(
            tokio::time::timeout(LIMIT * 10, body.collect())
                .await
                .is_err(),
            "the watch body ended"
        );
    }

    #[tokio::test]
    async fn an_answer_within_the_deadline_passes_through() {
        let api = DeadlineLayer(LIMIT).layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        }));
        let request = Request::get("/api/v1/pods").body(()).expect("a request");
        let body = api.oneshot(request).await.expect("an answer").into_body();
        let bytes = body.collect().await.expect("the body").to_bytes();
        assert_eq!(bytes, Bytes::from_static(b"{}"));
    }

    /// An API that counts the requests that reach it.
    fn counting(
        reached: Arc<AtomicUsize>,
    ) -> impl tower::Service<
        Request<()>,
        Response = &'static str,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone {
        tower::service_fn(move |_: Request<()>| {
            reached.fetch_add(1, Ordering::SeqCst);
            async { Ok("answer") }
        })
    }

    #[tokio::test]
    async fn writes_pass_the_fence_only_while_leadership_is_fresh_and_reads_always() {
        let clock = ManualClock::new();
        let leadership = Leadership::new(clock.clone());
        let metrics = Arc::new(Metrics::default());
        let reached = Arc::new(AtomicUsize::new(0));
        let api = FenceLayer {
            leadership: leadership.clone(),
            metrics: Arc::clone(&metrics),
        }
        .layer(counting(Arc::clone(&reached)));
        let send = |method: &str| {
            let api = api.clone();
            let request = Request::builder()
                .method(method)
                .uri("/api/v1/namespaces/a/pods/b")
                .body(())
                .expect("a request");
            api.oneshot(request)
        };

        let refused = send("PATCH").await.expect_err("refused before leading");
        assert_eq!(
            refused.downcast_ref::<NotLeading>(),
            Some(&NotLeading::NotElected)
        );
        leadership.renewed(clock.now());
        for method in ["PATCH", "DELETE", "POST", "PUT", "GET"] {
            assert_eq!(send(method).await.ok(), Some("answer"), "{method}");
        }
        clock.advance(WRITE_WINDOW);
        for method in ["PATCH", "DELETE", "POST", "PUT"] {
            let refused = send(method).await.expect_err("refused when stale");
            assert!(
                matches!(
                    refused.downcast_ref::<NotLeading>(),
                    Some(NotLeading::Stale { .. })
                ),
                "{method}: {refused}"
            );
        }
        assert_eq!(send("GET").await.ok(), Some("answer"));
        assert_eq!(reached.load(Ordering::SeqCst), 6);
        let page = metrics.encode().expect("metrics");
        for line in [
            r#"drainscaler_fenced_writes_total{result="sent"} 4"#,
            r#"drainscaler_fenced_writes_total{result="refused"} 5"#,
        ] {
            assert!(page.contains(line), "{line} missing from\n{page}");
        }
    }
}
