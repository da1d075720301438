//! Limits the rate of calls with GCRA (governor) on tokio's clock.
//!
//! [`RateLimit`] takes a cell from a [governor](https://docs.rs/governor) GCRA limiter
//! in `poll_ready`: `n` calls per second with bursts of up to
//! [`burst`](RateLimitLayer::burst) calls (the full second's worth by default). When no
//! cell is free it either **waits** (the default: `poll_ready` returns `Pending` and a
//! tokio timer wakes the task when the next cell is due, so callers slow down instead
//! of failing) or, with [`reject`](RateLimitLayer::reject), **rejects**: `poll_ready`
//! is ready and `call` fails at once with a transient
//! [`RateLimited`] naming the wait. All services built by one layer,
//! and their clones, share one limit. The limiter reads tokio's clock through
//! [`TokioClock`], so `tokio::time::pause()` makes tests exact.
//!
//! # Limits per key
//!
//! [`per_key`](RateLimitLayer::per_key) gives each key (a destination, a tenant) its own
//! limit, extracted from the request by a function. tower's `poll_ready` does not see
//! the request, so a keyed limit cannot wait there: [`KeyedRateLimit`] polls only the
//! inner service in `poll_ready` and decides in `call`. In reject mode the call fails
//! with `RateLimited`. In wait mode the response future waits for the key's next cell
//! and then calls the inner service; the ready inner service travels with the future
//! (clone-then-swap, so `S: Clone`) and the wait does not hold up calls for other keys.
//! Keys are kept in a concurrent map; a key's entry is small (one atomic word). Keys
//! whose limit has fully recovered are forgotten as calls go on (checked every
//! 1,024 calls of a service, once the map holds at least 1,024 keys and twice as many as after the
//! last pruning), so keys that come and go (per tenant, per request id) do not grow
//! the map without bound; [`KeyedRateLimitLayer::retain_recent`] prunes at once.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_mq_core::{BoxError, Message};
//! use tower_mq_layers::rate_limit::{error::RateLimited, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let publish = service_fn(|_: Message| async { Ok::<_, BoxError>(()) });
//! // 100 messages a second per destination, bursts of 10, failing fast when over.
//! let mut publisher = ServiceBuilder::new()
//!     .layer(
//!         RateLimitLayer::per_second(100)
//!             .burst(10)
//!             .reject()
//!             .per_key(|msg: &Message| msg.destination().to_owned()),
//!     )
//!     .service(publish);
//! for _ in 0..10 {
//!     publisher.ready().await.unwrap().call(Message::new("orders", "x")).await.unwrap();
//! }
//! let err = publisher.ready().await.unwrap().call(Message::new("orders", "x")).await.unwrap_err();
//! assert!(err.is::<RateLimited>());
//! // Another destination has its own limit.
//! publisher.ready().await.unwrap().call(Message::new("audit", "x")).await.unwrap();
//! # }
//! ```

mod clock;
pub mod error;
pub mod future;
mod layer;

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use tokio::time::Sleep;
use tower_mq_core::BoxError;
use tower_service::Service;

pub use self::clock::{TokioClock, TokioInstant};
pub use self::layer::{KeyedRateLimitLayer, RateLimitLayer};

use self::error::RateLimited;
use self::future::{KeyedResponseFuture, ResponseFuture, Waiting};

pub(crate) type DirectLimiter =
    governor::RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;
pub(crate) type KeyedLimiter<K> =
    governor::RateLimiter<K, DashMapStateStore<K>, TokioClock, NoOpMiddleware<TokioInstant>>;

#[derive(Debug)]
enum Reservation {
    None,
    Cell,
    Rejected(RateLimited),
}

/// Limits the rate of calls to the inner service. See the [module docs](self).
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<DirectLimiter>,
    reject: bool,
    reservation: Reservation,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("reject", &self.reject)
            .field("reservation", &self.reservation)
            .finish()
    }
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            reject: self.reject,
            // A reserved cell belongs to the original.
            reservation: Reservation::None,
            sleep: None,
        }
    }
}

impl<S> RateLimit<S> {
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

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match self.reservation {
                Reservation::Cell => return self.inner.poll_ready(cx).map_err(Into::into),
                Reservation::Rejected(_) => return Poll::Ready(Ok(())),
                Reservation::None => {}
            }
            match self.limiter.check() {
                Ok(()) => self.reservation = Reservation::Cell,
                Err(not_until) => {
                    let due = not_until.earliest_possible().0;
                    if self.reject {
                        let wait = not_until.wait_time_from(TokioClock.now());
                        self.reservation = Reservation::Rejected(RateLimited::new(wait));
                        continue;
                    }
                    let sleep = match &mut self.sleep {
                        Some(sleep) => {
                            sleep.as_mut().reset(due);
                            sleep
                        }
                        None => self.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
                    };
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
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
        match std::mem::replace(&mut self.reservation, Reservation::None) {
            Reservation::Cell => ResponseFuture::call(|| self.inner.call(request)),
            Reservation::Rejected(error) => ResponseFuture::rejected(error),
            Reservation::None => ResponseFuture::not_ready(),
        }
    }
}

/// Limits the rate of calls per key. See the [module docs](self#limits-per-key).
pub struct KeyedRateLimit<S, F, K: Hash + Eq + Clone> {
    inner: S,
    key_of: F,
    limiter: Arc<KeyedLimiter<K>>,
    pruning: Arc<Pruning>,
    /// This service's calls since it last looked at the map's size: counted per
    /// service, so that clones on several threads share no counter on every call.
    calls: u64,
    reject: bool,
}

/// When to forget recovered keys, shared by a keyed layer's services.
#[derive(Debug)]
pub(crate) struct Pruning {
    /// Prune once the map holds this many keys.
    prune_at: AtomicUsize,
}

/// A service's calls between two looks at the map's size (the size sums the map's
/// shards).
const PRUNE_EVERY: u64 = 1024;
/// No pruning below this many keys.
const PRUNE_MIN_KEYS: usize = 1024;

impl Pruning {
    pub(crate) fn new() -> Self {
        Pruning {
            prune_at: AtomicUsize::new(PRUNE_MIN_KEYS),
        }
    }

    /// Forgets recovered keys if the map grew past its threshold; called every
    /// [`PRUNE_EVERY`] calls of a service.
    fn look<K: Hash + Eq + Clone>(&self, limiter: &KeyedLimiter<K>) {
        if limiter.len() < self.prune_at.load(Ordering::Relaxed) {
            return;
        }
        limiter.retain_recent();
        limiter.shrink_to_fit();
        let left = limiter.len();
        self.prune_at
            .store((left * 2).max(PRUNE_MIN_KEYS), Ordering::Relaxed);
    }
}

impl<S: fmt::Debug, F, K: Hash + Eq + Clone> fmt::Debug for KeyedRateLimit<S, F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("reject", &self.reject)
            .finish_non_exhaustive()
    }
}

impl<S: Clone, F: Clone, K: Hash + Eq + Clone> Clone for KeyedRateLimit<S, F, K> {
    fn clone(&self) -> Self {
        KeyedRateLimit {
            inner: self.inner.clone(),
            key_of: self.key_of.clone(),
            limiter: self.limiter.clone(),
            pruning: self.pruning.clone(),
            calls: 0,
            reject: self.reject,
        }
    }
}

impl<S, F, K: Hash + Eq + Clone> KeyedRateLimit<S, F, K> {
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

impl<S, F, K, Req> Service<Req> for KeyedRateLimit<S, F, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = KeyedResponseFuture<S, Req, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key_of)(&request);
        self.calls += 1;
        if self.calls == PRUNE_EVERY {
            self.calls = 0;
            self.pruning.look(&self.limiter);
        }
        match self.limiter.check_key(&key) {
            Ok(()) => KeyedResponseFuture::called(self.inner.call(request)),
            Err(not_until) if self.reject => KeyedResponseFuture::rejected(RateLimited::new(
                not_until.wait_time_from(TokioClock.now()),
            )),
            Err(not_until) => {
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                KeyedResponseFuture::waiting(Waiting {
                    service,
                    request,
                    key,
                    limiter: self.limiter.clone(),
                    sleep: Box::pin(tokio::time::sleep_until(not_until.earliest_possible().0)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
