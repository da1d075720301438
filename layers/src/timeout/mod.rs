//! Fails a call that takes longer than a set duration.
//!
//! [`Timeout`] races each response against a timer on tokio's clock; when the timer
//! wins, the inner future is dropped (cancelling the call where the inner service
//! supports it) and the caller gets an [`Elapsed`](error::Elapsed) error, which the
//! [`DefaultClassifier`](crate::classify::DefaultClassifier) calls transient, so a
//! retry layer outside the timeout tries again. The timer starts when `call` is made,
//! not when the service becomes ready. (When a layer outside, such as metrics, already
//! read tokio's clock for the same `call`, the timeout takes that reading instead of
//! reading the clock again.)
//!
//! Readiness is bounded too: a publisher is not ready while its broker is away, and a
//! caller waiting on readiness would wait through the whole outage. When the inner
//! service stays not ready for the [readiness timeout](TimeoutLayer::ready_timeout)
//! (the call timeout by default), `poll_ready` reports ready and the next call fails at
//! once with [`NotReady`](error::NotReady), without reaching the inner service. That
//! failure flows through `call` like any other, so a circuit breaker outside counts it
//! and opens, and a retry outside backs off and tries again. Waiting up to the
//! readiness timeout is still backpressure; `ready_timeout(None)` waits as long as it
//! takes.
//!
//! Stacking: put the timeout innermost (just around the publisher) to bound each
//! attempt, or outermost to bound the whole call with its retries.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_mq_core::BoxError;
//! use tower_mq_layers::timeout::{error::Elapsed, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let slow = service_fn(|_: &'static str| async {
//!     tokio::time::sleep(Duration::from_secs(10)).await;
//!     Ok::<_, BoxError>("late")
//! });
//! let mut service = ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(Duration::from_millis(5)))
//!     .service(slow);
//! let err = service.ready().await.unwrap().call("hi").await.unwrap_err();
//! assert!(err.is::<Elapsed>());
//! assert_eq!(err.to_string(), "call timed out after 5ms");
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;
use tower_mq_core::BoxError;
use tower_service::Service;

pub use self::layer::TimeoutLayer;

/// Fails calls that take longer than a set duration. See the [module docs](self).
#[derive(Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    ready_timeout: Option<Duration>,
    /// Armed while the inner service is not ready.
    ready_sleep: Option<Pin<Box<Sleep>>>,
    /// The readiness timeout elapsed: the next call fails without reaching `inner`.
    not_ready: bool,
}

impl<S: Clone> Clone for Timeout<S> {
    /// A clone waits for readiness afresh.
    fn clone(&self) -> Self {
        Timeout {
            inner: self.inner.clone(),
            timeout: self.timeout,
            ready_timeout: self.ready_timeout,
            ready_sleep: None,
            not_ready: false,
        }
    }
}

impl<S> Timeout<S> {
    /// Wraps `inner`, failing calls that take longer than `timeout`; readiness is not
    /// bounded until [`Timeout::ready_timeout`] says so ([`TimeoutLayer::new`] bounds
    /// both).
    pub fn new(inner: S, timeout: Duration) -> Self {
        Timeout {
            inner,
            timeout,
            ready_timeout: None,
            ready_sleep: None,
            not_ready: false,
        }
    }

    /// Fails the next call with [`NotReady`](error::NotReady) once the inner service
    /// has not been ready for `timeout`; `None` waits as long as it takes.
    pub fn ready_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.ready_timeout = timeout.into();
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = future::ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.not_ready {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(ready) => {
                self.ready_sleep = None;
                Poll::Ready(ready.map_err(Into::into))
            }
            Poll::Pending => {
                let Some(limit) = self.ready_timeout else {
                    return Poll::Pending;
                };
                let sleep = self
                    .ready_sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.ready_sleep = None;
                        self.not_ready = true;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        if std::mem::take(&mut self.not_ready) {
            let limit = self.ready_timeout.unwrap_or(self.timeout);
            return future::ResponseFuture::not_ready(self.timeout, limit);
        }
        let inner = &mut self.inner;
        future::ResponseFuture::call(self.timeout, || inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classifier, DefaultClassifier};
    use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
    use tower_layer::Layer;
    use tower_mq_core::ErrorKind;
    use tower_test::mock;

    #[tokio::test(start_paused = true)]
    async fn a_response_in_time_passes_through() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut service =
            mock::Spawn::new(TimeoutLayer::new(Duration::from_secs(1)).layer(service));
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let mut response = tokio_test::task::spawn(service.call("a"));
        assert_pending!(response.poll());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_pending!(response.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response("ok");
        assert_eq!(assert_ready_ok!(response.poll()), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_response_fails_with_a_transient_elapsed() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut service = mock::Spawn::new(Timeout::new(service, Duration::from_secs(1)));
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let mut response = tokio_test::task::spawn(service.call("a"));
        assert_pending!(response.poll());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(response.is_woken());
        let err = assert_ready_err!(response.poll());
        let elapsed = err.downcast_ref::<error::Elapsed>().unwrap();
        assert_eq!(elapsed.timeout(), Duration::from_secs(1));
        assert_eq!(err.to_string(), "call timed out after 1s");
        assert_eq!(
            DefaultClassifier::new().classify(&err),
            ErrorKind::Transient
        );
    }

    #[tokio::test(start_paused = true)]
    async fn inner_errors_pass_through() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut service = mock::Spawn::new(Timeout::new(service, Duration::from_secs(1)));
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let mut response = tokio_test::task::spawn(service.call("a"));
        assert_pending!(response.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(tower_mq_core::Permanent::new("bad"));
        let err = assert_ready_err!(response.poll());
        assert!(err.is::<tower_mq_core::Permanent>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_not_ready_in_time_fails_the_next_call_without_reaching_it() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut service = mock::Spawn::new(
            TimeoutLayer::new(Duration::from_secs(2))
                .ready_timeout(Duration::from_secs(1))
                .layer(service),
        );
        handle.allow(0);
        assert_pending!(service.poll_ready());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_pending!(service.poll_ready());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_ready_ok!(service.poll_ready());
        let err = service.call("a").await.unwrap_err();
        let not_ready = err.downcast_ref::<error::NotReady>().expect("NotReady");
        assert_eq!(not_ready.timeout(), Duration::from_secs(1));
        assert_eq!(
            err.to_string(),
            "service not ready within 1s; the call was not made"
        );
        assert_eq!(
            DefaultClassifier::new().classify(&err),
            ErrorKind::Transient
        );
        // Nothing reached the inner service; once it is ready, calls go through.
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let response = service.call("b");
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request, "b");
        send.send_response("ok");
        assert_eq!(response.await.unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_readiness_timeout_readiness_waits() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut service = mock::Spawn::new(
            TimeoutLayer::new(Duration::from_secs(1))
                .ready_timeout(None)
                .layer(service),
        );
        handle.allow(0);
        assert_pending!(service.poll_ready());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_pending!(service.poll_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_call_not_the_first_poll() {
        let (service, mut handle) = mock::pair::<&'static str, &'static str>();
        let mut service = mock::Spawn::new(Timeout::new(service, Duration::from_secs(1)));
        handle.allow(1);
        assert_ready_ok!(service.poll_ready());
        let mut response = tokio_test::task::spawn(service.call("a"));
        tokio::time::advance(Duration::from_secs(1)).await;
        let err = assert_ready_err!(response.poll());
        assert!(err.is::<error::Elapsed>());
    }
}
