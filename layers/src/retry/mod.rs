//! Retries transient failures with exponential backoff, full jitter and a retry budget.
//!
//! [`Retry`] calls the inner service; when the call fails with an error the
//! classifier calls [transient](tower_mq_core::ErrorKind::Transient) (or returns a
//! response the classifier judges a transient failure: see [`ClassifyOutcome`], e.g.
//! an HTTP 503 with [`DefaultClassifier::classify_responses`]), and the
//! request could be cloned before the first attempt, and attempts, elapsed time and
//! the shared [`RetryBudget`] all allow it, it waits a jittered [`Backoff`] delay,
//! polls the inner service's readiness again (readiness is backpressure: a retry
//! queues behind it like any other call) and sends the clone. Permanent errors, such as
//! a message the broker refused, go back to the caller at once, as does the last error
//! once the limits are reached. Each retry increments the `messaging_retries_total`
//! counter with the labels given to [`RetryLayer::label`].
//!
//! Requests are cloned by a [`CloneRequest`] policy, [`ByClone`] (`Req: Clone`) by
//! default; a policy that returns `None` for a request (a streaming body, say) makes
//! that request go out once, unretried. `http::Request` is not `Clone`: on an HTTP
//! service (an axum `Router`, a client) use [`HttpRequests`] (feature `http`), which
//! copies requests with a buffered body, with
//! [`clone_requests_with`](RetryLayer::clone_requests_with).
//!
//! Stacking: put retry outside the circuit breaker and the timeout, so that each
//! attempt is timed and counted by the breaker, and an open circuit (a transient
//! [`CircuitOpen`](crate::circuit_breaker::error::CircuitOpen)) is retried after the backoff.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_mq_core::{BoxError, Error, Message, Operation};
//! use tower_mq_layers::retry::{Backoff, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let seen = attempts.clone();
//! let flaky = service_fn(move |msg: Message| {
//!     let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         if n == 0 {
//!             Err::<_, BoxError>(Error::transient("memory", Operation::Publish).into())
//!         } else {
//!             Ok(msg.destination().to_owned())
//!         }
//!     }
//! });
//! let mut publisher = ServiceBuilder::new()
//!     .layer(
//!         RetryLayer::new(Backoff::exponential(Duration::from_millis(1), Duration::from_millis(10)).max_attempts(3))
//!             .label("destination", "orders"),
//!     )
//!     .service(flaky);
//! let sent = publisher.ready().await?.call(Message::new("orders", "hi")).await?;
//! assert_eq!(sent, "orders");
//! assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 2);
//! # Ok(())
//! # }
//! ```

mod backoff;
mod budget;
pub mod future;
mod layer;
#[cfg(feature = "tower")]
mod tower_policy;

use std::sync::Arc;
use std::task::{Context, Poll};

use metrics::Label;
use tower_service::Service;

pub use self::backoff::{Backoff, FastRng, Jitter};
pub use self::budget::RetryBudget;
pub use self::layer::RetryLayer;
#[cfg(feature = "tower")]
pub use self::tower_policy::TowerPolicy;

use crate::classify::{ClassifyOutcome, DefaultClassifier};

/// Makes the copy of a request that a retry will send.
///
/// See the [module docs](self).
pub trait CloneRequest<Req> {
    /// A copy of `request`, or `None` if it cannot be copied (it is then not retried).
    fn clone_request(&self, request: &Req) -> Option<Req>;
}

/// Clones requests with their `Clone` implementation (the default policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByClone;

impl<Req: Clone> CloneRequest<Req> for ByClone {
    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// Never clones: every request goes out once (retries disabled).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoClone;

impl<Req> CloneRequest<Req> for NoClone {
    fn clone_request(&self, _request: &Req) -> Option<Req> {
        None
    }
}

/// Clones `http::Request`s whose body is `Clone` (a buffered body such as `String`,
/// `Bytes` or `Full<Bytes>`): method, URI, version, headers and body. `http::Request`
/// is not `Clone` because its extensions may not be; this policy leaves them out of the
/// copies, so a retried attempt sees none. A streaming body cannot be copied: buffer it
/// first (e.g. with `http_body_util::BodyExt::collect`) or do not retry it.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpRequests;

#[cfg(feature = "http")]
impl<B: Clone> CloneRequest<http::Request<B>> for HttpRequests {
    fn clone_request(&self, request: &http::Request<B>) -> Option<http::Request<B>> {
        let mut copy = http::Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }
}

impl<Req, F> CloneRequest<Req> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    fn clone_request(&self, request: &Req) -> Option<Req> {
        self(request)
    }
}

/// Configuration shared by a [`Retry`] service, its clones and its futures.
#[derive(Debug)]
pub(crate) struct Policy<C, K> {
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) classifier: C,
    pub(crate) cloner: K,
    pub(crate) labels: Vec<Label>,
}

/// Retries transient failures of the inner service. See the [module docs](self).
#[derive(Debug)]
pub struct Retry<S, C = DefaultClassifier, K = ByClone, J = FastRng> {
    inner: S,
    policy: Arc<Policy<C, K>>,
    jitter: J,
}

impl<S, C, K, J> Retry<S, C, K, J> {
    pub(crate) fn from_parts(inner: S, policy: Arc<Policy<C, K>>, jitter: J) -> Self {
        Retry {
            inner,
            policy,
            jitter,
        }
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

    /// The retry budget shared by this service's clones, if any.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.policy.budget.as_ref()
    }
}

impl<S: Clone, C, K, J: Jitter> Clone for Retry<S, C, K, J> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            // A fresh jitter stream: clones must not back off in lockstep.
            jitter: self.jitter.split(),
        }
    }
}

impl<S, Req, C, K, J> Service<Req> for Retry<S, C, K, J>
where
    S: Service<Req> + Clone,
    C: ClassifyOutcome<S::Response, S::Error>,
    K: CloneRequest<Req>,
    J: Jitter,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = future::ResponseFuture<S, Req, C, K, J>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // The ready service goes with the future (it may be polled again before a
        // retry); a fresh clone stays here for the next call.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        future::ResponseFuture::first_attempt(
            service,
            request,
            self.policy.clone(),
            self.jitter.split(),
        )
    }
}

#[cfg(test)]
mod tests;
