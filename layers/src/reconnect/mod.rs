//! Builds the inner service from a `MakeService` and rebuilds it, with backoff, when
//! its connection is lost.
//!
//! [`Reconnect`] holds a maker (any tower `MakeService`, i.e. a
//! `Service<Target, Response = S>`) and a target. `poll_ready` connects on first use;
//! while connecting, and while waiting out the [`Backoff`] delay after a failed
//! attempt, it returns `Pending`, so callers queue behind the reconnect instead of
//! failing. The connection is rebuilt when the inner service's `poll_ready` fails, or
//! when a call fails with an error the predicate ([`connection_lost`] by default: a
//! broker error during `connect`, or an I/O error such as a reset or broken pipe)
//! calls connection-level. That call is not lost silently: its caller gets a transient
//! [`ConnectionLost`](error::ConnectionLost) carrying the cause, which a retry layer
//! outside sends again over the new connection.
//!
//! After the backoff's `max_attempts` failed attempts in a row, `poll_ready` returns a
//! transient [`ConnectFailed`] once (so a caller waiting for
//! readiness learns that the broker is unreachable) and the next `poll_ready` starts
//! over; use [`Backoff::unlimited_attempts`] to wait for as long as it takes. Every
//! attempt increments `messaging_reconnects_total{outcome="success"|"failure"}`.
//!
//! A `Reconnect` owns one connection and is not `Clone`; share it behind
//! `tower::buffer::Buffer`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Layer, Service, ServiceExt};
//! use tower_mq_core::BoxError;
//! use tower_mq_layers::reconnect::ReconnectLayer;
//! use tower_mq_layers::retry::Backoff;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // The maker: connects to an address and returns the publishing service.
//! let connect = service_fn(|addr: &'static str| async move {
//!     Ok::<_, BoxError>(service_fn(move |msg: String| async move {
//!         Ok::<_, BoxError>(format!("{msg} via {addr}"))
//!     }))
//! });
//! let backoff = Backoff::exponential(Duration::from_millis(50), Duration::from_secs(5))
//!     .unlimited_attempts();
//! let mut publisher = ReconnectLayer::new("127.0.0.1:5672", backoff)
//!     .label("broker", "rabbitmq")
//!     .layer(connect);
//! let sent = publisher.ready().await?.call("hello".to_owned()).await?;
//! assert_eq!(sent, "hello via 127.0.0.1:5672");
//! # Ok(())
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use metrics::Label;
use tokio::time::Sleep;
use tower_mq_core::{BoxError, Operation};
use tower_service::Service;

pub use self::layer::ReconnectLayer;

use self::error::ConnectFailed;
use self::future::ResponseFuture;
use crate::retry::{Backoff, FastRng};

/// The default test for a connection-level failure: anywhere in the error's `source()`
/// chain, a broker [`Error`](tower_mq_core::Error) of [`Operation::Connect`], a
/// [`ConnectionLost`](error::ConnectionLost), or an I/O error of kind `ConnectionReset`,
/// `ConnectionAborted`, `ConnectionRefused`, `NotConnected`, `BrokenPipe` or
/// `UnexpectedEof`.
pub fn connection_lost(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind as Io;
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(e) = err.downcast_ref::<tower_mq_core::Error>() {
            if e.operation() == Operation::Connect {
                return true;
            }
        }
        if err.is::<error::ConnectionLost>() {
            return true;
        }
        if let Some(e) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                e.kind(),
                Io::ConnectionReset
                    | Io::ConnectionAborted
                    | Io::ConnectionRefused
                    | Io::NotConnected
                    | Io::BrokenPipe
                    | Io::UnexpectedEof
            ) {
                return true;
            }
        }
        current = err.source();
    }
    false
}

enum State<F, S> {
    Idle,
    Connecting(Pin<Box<F>>),
    Connected(S),
    Waiting(Pin<Box<Sleep>>),
}

/// Builds and rebuilds the inner service. See the [module docs](self).
pub struct Reconnect<M, T, P = fn(&(dyn std::error::Error + 'static)) -> bool>
where
    M: Service<T>,
{
    make: M,
    target: T,
    state: State<M::Future, M::Response>,
    backoff: Backoff,
    jitter: FastRng,
    is_lost: P,
    labels: Vec<Label>,
    // Consecutive failed attempts.
    failures: u32,
    // Generation of the current connection, and the newest one a call found broken.
    connection: u64,
    lost: Arc<AtomicU64>,
}

impl<M, T, P> fmt::Debug for Reconnect<M, T, P>
where
    M: Service<T>,
    T: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Connecting(_) => "connecting",
            State::Connected(_) => "connected",
            State::Waiting(_) => "waiting",
        };
        f.debug_struct("Reconnect")
            .field("target", &self.target)
            .field("state", &state)
            .field("failures", &self.failures)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

impl<M, T, P> Reconnect<M, T, P>
where
    M: Service<T>,
{
    pub(crate) fn with_parts(
        make: M,
        target: T,
        backoff: Backoff,
        is_lost: P,
        labels: Vec<Label>,
    ) -> Self {
        Reconnect {
            make,
            target,
            state: State::Idle,
            backoff,
            jitter: FastRng::new(),
            is_lost,
            labels,
            failures: 0,
            connection: 0,
            lost: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether a connection is established (it may still turn out broken).
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// The maker.
    pub fn get_ref(&self) -> &M {
        &self.make
    }

    /// The maker, mutably.
    pub fn get_mut(&mut self) -> &mut M {
        &mut self.make
    }

    /// Unwraps the maker.
    pub fn into_inner(self) -> M {
        self.make
    }

    fn count(&self, outcome: &'static str) {
        let labels = self
            .labels
            .iter()
            .cloned()
            .chain(std::iter::once(Label::new("outcome", outcome)));
        metrics::counter!("messaging_reconnects_total", labels.collect::<Vec<_>>()).increment(1);
    }

    /// After a failed attempt: back off, or report the failure once the attempts run out.
    fn failed(&mut self, error: BoxError) -> Option<ConnectFailed> {
        self.count("failure");
        self.failures += 1;
        tracing::debug!(attempts = self.failures, error = %error, "connect failed");
        let delay = self.backoff.delay(self.failures - 1, &mut self.jitter);
        self.state = State::Waiting(Box::pin(tokio::time::sleep(delay)));
        match self.backoff.get_max_attempts() {
            Some(max) if self.failures >= max => {
                let attempts = self.failures;
                self.failures = 0;
                Some(ConnectFailed::new(attempts, error))
            }
            _ => None,
        }
    }
}

impl<M, T, P, S, Req> Service<Req> for Reconnect<M, T, P>
where
    M: Service<T, Response = S>,
    M::Error: Into<BoxError>,
    T: Clone,
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Fn(&(dyn std::error::Error + 'static)) -> bool + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    if let Err(error) = ready!(self.make.poll_ready(cx)) {
                        if let Some(failed) = self.failed(error.into()) {
                            return Poll::Ready(Err(failed.into()));
                        }
                        continue;
                    }
                    let connecting = self.make.call(self.target.clone());
                    self.state = State::Connecting(Box::pin(connecting));
                }
                State::Connecting(connecting) => match ready!(connecting.as_mut().poll(cx)) {
                    Ok(service) => {
                        self.count("success");
                        self.failures = 0;
                        self.connection += 1;
                        self.state = State::Connected(service);
                    }
                    Err(error) => {
                        if let Some(failed) = self.failed(error.into()) {
                            return Poll::Ready(Err(failed.into()));
                        }
                    }
                },
                State::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.state = State::Idle;
                }
                State::Connected(service) => {
                    if self.lost.load(Ordering::Acquire) >= self.connection {
                        tracing::debug!("connection lost during a call; reconnecting");
                        self.state = State::Idle;
                        continue;
                    }
                    match service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => return Poll::Ready(Ok(())),
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(error)) => {
                            let error: BoxError = error.into();
                            tracing::debug!(error = %error, "connection not ready; reconnecting");
                            self.state = State::Idle;
                        }
                    }
                }
            }
        }
    }

    /// Calling without a ready `poll_ready` resolves to [`CalledBeforeReady`] instead of
    /// panicking.
    ///
    /// [`CalledBeforeReady`]: crate::error::CalledBeforeReady
    fn call(&mut self, request: Req) -> Self::Future {
        match &mut self.state {
            State::Connected(service) => ResponseFuture::new(
                service.call(request),
                self.lost.clone(),
                self.connection,
                self.is_lost.clone(),
            ),
            _ => ResponseFuture::not_ready(self.lost.clone(), self.is_lost.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
