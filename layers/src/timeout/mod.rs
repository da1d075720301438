//! Fails a call that takes longer than a set duration.
//!
//! [`Timeout`] races each response against a timer on tokio's clock; when the timer
//! wins, the inner future is dropped (cancelling the call where the inner service
//! supports it) and the caller gets an [`Elapsed`](error::Elapsed) error, which the
//! [`DefaultClassifier`](crate::classify::DefaultClassifier) calls transient, so a
//! retry layer outside the timeout tries again. The timer starts when `call` is made,
//! not when the service becomes ready: waiting for readiness is backpressure, not
//! slowness. (When a layer outside, such as metrics, already read tokio's clock for the
//! same `call`, the timeout takes that reading instead of reading the clock again.)
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

use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;
use tower_mq_core::BoxError;

pub use self::layer::TimeoutLayer;

/// Fails calls that take longer than a set duration. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S> Timeout<S> {
    /// Wraps `inner`, failing calls that take longer than `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Timeout { inner, timeout }
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
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let inner = &mut self.inner;
        future::ResponseFuture::call(self.timeout, || inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Classifier, DefaultClassifier};
    use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
    use tower::Layer;
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
