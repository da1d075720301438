//! Stops calling a service that keeps failing, and lets a few trial calls through
//! later to see whether it recovered.
//!
//! [`CircuitBreaker`] is **closed** while things go well: every call goes through and
//! its outcome lands in a sliding window, either the last `N` calls
//! ([`count_window`](CircuitBreakerLayer::count_window), a ring buffer) or the last `N`
//! seconds ([`time_window`](CircuitBreakerLayer::time_window), per-second buckets on
//! tokio's clock). Once the window holds at least
//! [`minimum_calls`](CircuitBreakerLayer::minimum_calls) and the failure rate reaches
//! [`failure_rate_threshold`](CircuitBreakerLayer::failure_rate_threshold), or the
//! share of calls slower than [`slow_call_duration`](CircuitBreakerLayer::slow_call_duration)
//! reaches [`slow_call_rate_threshold`](CircuitBreakerLayer::slow_call_rate_threshold),
//! the circuit **opens**: for [`wait_in_open`](CircuitBreakerLayer::wait_in_open) no call
//! reaches the inner service. Then it turns **half-open** and admits
//! [`half_open_calls`](CircuitBreakerLayer::half_open_calls) trial calls; when they have
//! all completed, their failure (and slow-call) rate decides: closed again with an
//! empty window, or open for another wait.
//!
//! What counts as a failure is decided by the classifier
//! ([`DefaultClassifier`] unless [`classifier`](CircuitBreakerLayer::classifier) says
//! otherwise; any [`ClassifyOutcome`], so responses can fail too, such as an HTTP
//! service's 5xx with [`DefaultClassifier::classify_responses`]): **only transient
//! failures trip the breaker**. A permanent error, such as a
//! message the broker rejected as too large, proves the broker is up and answering, so
//! it is recorded like a success; otherwise one poison message could cut off a healthy
//! broker. Slow calls count whatever their result.
//!
//! While open, the breaker either **rejects** (the default: `poll_ready` is ready
//! without touching the inner service and `call` fails at once with a transient
//! [`CircuitOpen`]) or, with
//! [`wait_when_open`](CircuitBreakerLayer::wait_when_open), makes `poll_ready` return
//! `Pending` until a trial call may go through, so callers queue instead of failing.
//!
//! All services built by one layer, and all their clones, share one circuit. A
//! [`CircuitBreakerHandle`] (from [`CircuitBreakerLayer::handle`]) reads the state,
//! subscribes to state changes (a `tokio::sync::watch` receiver), forces the circuit
//! open, disables it (always closed, nothing recorded) or resets it. Every transition
//! sets the `messaging_circuit_state` gauge (0 closed, 1 open, 2 half-open) and calls
//! the [`on_state_change`](CircuitBreakerLayer::on_state_change) callback;
//! [`count_calls`](CircuitBreakerLayer::count_calls) adds the
//! `messaging_circuit_calls_total{outcome}` counter.
//!
//! The closed path takes no lock: admission is one atomic load of the state word, and
//! recording a success into a full window of successes (the healthy steady state)
//! writes nothing shared, so clones on several threads do not contend; otherwise it is
//! a few atomic operations on the ring buffer.
//!
//! Stacking: put the breaker inside retry (each attempt is judged, and an open circuit
//! is retried after a backoff) and outside the timeout (a timed-out call is a failure).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_mq_core::{BoxError, Error, Operation};
//! use tower_mq_layers::circuit_breaker::{error::CircuitOpen, CircuitBreakerLayer, CircuitState};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = CircuitBreakerLayer::new()
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate_threshold(50.0)
//!     .wait_in_open(Duration::from_secs(30))
//!     .label("destination", "orders");
//! let handle = layer.handle();
//! let broker_down = service_fn(|_: &'static str| async {
//!     Err::<(), BoxError>(Error::transient("memory", Operation::Publish).into())
//! });
//! let mut publisher = ServiceBuilder::new().layer(layer).service(broker_down);
//! for _ in 0..4 {
//!     let _ = publisher.ready().await.unwrap().call("order").await;
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//! let err = publisher.ready().await.unwrap().call("order").await.unwrap_err();
//! assert!(err.is::<CircuitOpen>());
//! # }
//! ```

pub mod error;
pub mod future;
mod layer;
mod state;
mod window;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::sync::watch;
use tokio::time::Sleep;
use tower_mq_core::BoxError;
use tower_service::Service;

pub use self::layer::CircuitBreakerLayer;
pub use self::state::Transition;

use self::error::CircuitOpen;
use self::future::{Recorder, ResponseFuture};
use self::state::{is_admitting_freely, state_of, Core};
use crate::classify::{ClassifyOutcome, DefaultClassifier};

/// The state of a circuit. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Calls go through and are recorded.
    Closed,
    /// Calls are rejected (or wait) until the wait in open is over.
    Open,
    /// A few trial calls go through; their outcome closes or reopens the circuit.
    HalfOpen,
    /// Opened by [`CircuitBreakerHandle::force_open`]; stays open until reset.
    ForcedOpen,
    /// Disabled by [`CircuitBreakerHandle::force_close`]: every call goes through and
    /// nothing is recorded until reset.
    Disabled,
}

impl CircuitState {
    /// The value of the `messaging_circuit_state` gauge: 0 closed (or disabled),
    /// 1 open (or forced open), 2 half-open.
    pub fn as_gauge(self) -> f64 {
        match self {
            CircuitState::Closed | CircuitState::Disabled => 0.0,
            CircuitState::Open | CircuitState::ForcedOpen => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }

    /// The state's name: `closed`, `open`, `half-open`, `forced-open`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half-open",
            CircuitState::ForcedOpen => "forced-open",
            CircuitState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reads and controls the circuit shared by a layer's services. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CircuitBreakerHandle {
    core: Arc<Core>,
}

impl CircuitBreakerHandle {
    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.core.state()
    }

    /// A receiver that sees every state the circuit enters.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.core.subscribe()
    }

    /// Opens the circuit until [`reset`](Self::reset) or [`force_close`](Self::force_close).
    pub fn force_open(&self) {
        self.core.force(CircuitState::ForcedOpen);
    }

    /// Disables the breaker: every call goes through, nothing is recorded, until
    /// [`reset`](Self::reset) or [`force_open`](Self::force_open).
    pub fn force_close(&self) {
        self.core.force(CircuitState::Disabled);
    }

    /// Closes the circuit with an empty window.
    pub fn reset(&self) {
        self.core.force(CircuitState::Closed);
    }
}

/// What `poll_ready` reserved for the next `call`.
#[derive(Debug)]
enum Reservation {
    None,
    /// Closed (or disabled): admitted under this state word.
    Admitted(u64),
    /// A half-open trial permit, given back if never used. Boxed, as the rejection:
    /// both are rare, and the service, cloned per call, stays small.
    Probe(Box<Recorder>),
    Rejected(Box<CircuitOpen>),
}

/// Guards an inner service with a circuit breaker. See the [module docs](self).
pub struct CircuitBreaker<S, C = DefaultClassifier> {
    inner: S,
    core: Arc<Core>,
    classifier: C,
    reservation: Reservation,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("state", &self.core.state())
            .field("reservation", &self.reservation)
            .finish()
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            core: self.core.clone(),
            classifier: self.classifier.clone(),
            // Readiness is never copied.
            reservation: Reservation::None,
            sleep: None,
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    fn from_parts(inner: S, core: Arc<Core>, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            core,
            classifier,
            reservation: Reservation::None,
            sleep: None,
        }
    }

    /// A handle on the circuit this service shares with its clones.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            core: self.core.clone(),
        }
    }

    /// The current state of the circuit.
    pub fn state(&self) -> CircuitState {
        self.core.state()
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

    /// Reserves admission for the next call, or a rejection; `Pending` only in wait mode.
    fn admit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let word = self.core.word();
            if is_admitting_freely(word) {
                self.reservation = Reservation::Admitted(word);
                return Poll::Ready(());
            }
            let state = state_of(word);
            match state {
                CircuitState::HalfOpen if self.core.try_take_probe(word) => {
                    self.reservation =
                        Reservation::Probe(Box::new(Recorder::new(self.core.clone(), word, true)));
                    return Poll::Ready(());
                }
                CircuitState::Open if self.core.open_remaining().is_zero() => {
                    self.core.try_half_open(word);
                    continue;
                }
                _ => {}
            }
            if !self.core.config.wait_mode {
                let retry_after = (state == CircuitState::Open).then(|| self.core.open_remaining());
                self.reservation = Reservation::Rejected(Box::new(CircuitOpen::new(
                    state,
                    retry_after,
                    self.core.config.half_open_calls,
                )));
                return Poll::Ready(());
            }
            self.core.register(cx.waker());
            if self.core.word() != word {
                continue;
            }
            if state == CircuitState::Open {
                let deadline = self.core.open_deadline();
                let sleep = match &mut self.sleep {
                    Some(sleep) => {
                        sleep.as_mut().reset(deadline);
                        sleep
                    }
                    None => self
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                if sleep.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// A call timed for slow-call detection: the timer starts at the call, and the
    /// layers inside share that reading of the clock. Out of line, so that the common
    /// untimed call stays small enough to inline and the request is not copied.
    #[inline(never)]
    fn call_timed<Req>(
        &mut self,
        request: Req,
        mut recorder: Recorder,
    ) -> ResponseFuture<S::Future, C>
    where
        S: Service<Req>,
        C: Clone,
    {
        let started = crate::call_time::now();
        recorder.started = Some(started);
        let classifier = self.classifier.clone();
        let inner = &mut self.inner;
        crate::call_time::scope(started, || {
            ResponseFuture::call(recorder, classifier, || inner.call(request))
        })
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: ClassifyOutcome<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.reservation {
            Reservation::None => ready!(self.admit(cx)),
            Reservation::Rejected(_) => return Poll::Ready(Ok(())),
            _ => {}
        }
        if let Reservation::Rejected(_) = self.reservation {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    /// Calling without a ready `poll_ready` resolves to [`CalledBeforeReady`] instead of
    /// panicking; such a call is not recorded.
    ///
    /// [`CalledBeforeReady`]: crate::error::CalledBeforeReady
    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let recorder = match std::mem::replace(&mut self.reservation, Reservation::None) {
            Reservation::Admitted(word) => Recorder::new(self.core.clone(), word, false),
            Reservation::Probe(recorder) => *recorder,
            Reservation::Rejected(error) => {
                self.core.count_outcome(4);
                return ResponseFuture::rejected(*error, self.classifier.clone());
            }
            Reservation::None => return ResponseFuture::not_ready(self.classifier.clone()),
        };
        if self.core.config.slow_duration.is_some() {
            return self.call_timed(request, recorder);
        }
        let inner = &mut self.inner;
        ResponseFuture::call(recorder, self.classifier.clone(), || inner.call(request))
    }
}

#[cfg(test)]
mod tests;
