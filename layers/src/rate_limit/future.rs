//! The futures returned by [`RateLimit`](super::RateLimit) and
//! [`KeyedRateLimit`](super::KeyedRateLimit).

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_mq_core::BoxError;
use tower_service::Service;

use super::error::RateLimited;
use super::KeyedLimiter;
use crate::error::CalledBeforeReady;

/// The layer's name on [`CalledBeforeReady`].
const LAYER: &str = "rate_limit";

pin_project! {
    /// The inner response, the [`RateLimited`] rejection, or [`CalledBeforeReady`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F },
        // A rejection or a call without a ready `poll_ready`, boxed as the caller
        // gets it.
        Refused { error: Option<BoxError> },
    }
}

impl<F> ResponseFuture<F> {
    /// Makes the inner call, its response built in place.
    #[inline]
    pub(super) fn call(call: impl FnOnce() -> F) -> Self {
        ResponseFuture {
            kind: Kind::Called { future: call() },
        }
    }

    pub(super) fn rejected(error: RateLimited) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                error: Some(error.into()),
            },
        }
    }

    /// A call made without a ready `poll_ready`.
    pub(super) fn not_ready() -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                error: Some(CalledBeforeReady::new(LAYER).into()),
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future } => future.poll(cx).map_err(Into::into),
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "rate limit response polled after completion".into()))),
        }
    }
}

pin_project! {
    /// A keyed call: waits for its key's next slot (wait mode), then calls the inner
    /// service that was ready when the call was made.
    pub struct KeyedResponseFuture<S, Req, K>
    where
        S: Service<Req>,
        K: Hash,
        K: Eq,
        K: Clone,
    {
        #[pin]
        state: KeyedState<S::Future>,
        waiting: Option<Waiting<S, Req, K>>,
    }
}

pub(super) struct Waiting<S, Req, K: Hash + Eq + Clone> {
    pub(super) service: S,
    pub(super) request: Req,
    pub(super) key: K,
    pub(super) limiter: Arc<KeyedLimiter<K>>,
    pub(super) sleep: Pin<Box<Sleep>>,
}

pin_project! {
    #[project = KeyedStateProj]
    enum KeyedState<F> {
        Waiting,
        Called { #[pin] future: F },
        Rejected { error: Option<RateLimited> },
    }
}

impl<S, Req, K> fmt::Debug for KeyedResponseFuture<S, Req, K>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedResponseFuture")
            .field("waiting", &self.waiting.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, Req, K> KeyedResponseFuture<S, Req, K>
where
    S: Service<Req>,
    K: Hash + Eq + Clone,
{
    pub(super) fn called(future: S::Future) -> Self {
        KeyedResponseFuture {
            state: KeyedState::Called { future },
            waiting: None,
        }
    }

    pub(super) fn rejected(error: RateLimited) -> Self {
        KeyedResponseFuture {
            state: KeyedState::Rejected { error: Some(error) },
            waiting: None,
        }
    }

    pub(super) fn waiting(waiting: Waiting<S, Req, K>) -> Self {
        KeyedResponseFuture {
            state: KeyedState::Waiting,
            waiting: Some(waiting),
        }
    }
}

impl<S, Req, K> Future for KeyedResponseFuture<S, Req, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                KeyedStateProj::Called { future } => return future.poll(cx).map_err(Into::into),
                KeyedStateProj::Rejected { error } => {
                    return Poll::Ready(Err(match error.take() {
                        Some(error) => error.into(),
                        None => "rate limit response polled after completion".into(),
                    }))
                }
                KeyedStateProj::Waiting => {
                    let Some(waiting) = this.waiting.as_mut() else {
                        return Poll::Ready(Err(
                            "rate limit response polled after completion".into()
                        ));
                    };
                    ready!(waiting.sleep.as_mut().poll(cx));
                    match waiting.limiter.check_key(&waiting.key) {
                        Ok(()) => {
                            if let Some(mut waiting) = this.waiting.take() {
                                let future = waiting.service.call(waiting.request);
                                this.state.set(KeyedState::Called { future });
                            }
                        }
                        Err(not_until) => {
                            // Someone with the same key got the slot first: wait again.
                            waiting
                                .sleep
                                .as_mut()
                                .reset(not_until.earliest_possible().0);
                        }
                    }
                }
            }
        }
    }
}
