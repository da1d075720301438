//! The future returned by [`Retry`](super::Retry).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_mq_core::ErrorKind;
use tower_service::Service;

use super::{CloneRequest, Jitter, Policy};
use crate::classify::ClassifyOutcome;

pin_project! {
    /// Drives one request through its attempts. See the [module docs](super).
    pub struct ResponseFuture<S, Req, C, K, J>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // The pristine copy the next attempt is cloned from; `None` once it cannot be.
        backup: Option<Req>,
        // The request of the attempt being prepared (set while waiting and readying).
        // Boxed: it exists only while retrying, and keeps the future small when not.
        next: Option<Box<Req>>,
        policy: Arc<Policy<C, K>>,
        jitter: J,
        // Attempts sent so far.
        attempts: u32,
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        // Boxed: it exists only while retrying, and keeps the future small when not.
        Waiting { sleep: Pin<Box<Sleep>> },
        Readying,
    }
}

impl<S, Req, C, K, J> std::fmt::Debug for ResponseFuture<S, Req, C, K, J>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, K, J> ResponseFuture<S, Req, C, K, J>
where
    S: Service<Req>,
{
    /// Makes the first attempt through `service` (ready), keeping a copy of `request`
    /// for the next one.
    pub(crate) fn first_attempt(
        mut service: S,
        request: Req,
        policy: Arc<Policy<C, K>>,
        jitter: J,
    ) -> Self
    where
        K: CloneRequest<Req>,
    {
        let started = policy
            .backoff
            .get_max_elapsed()
            .map(|_| crate::call_time::now());
        // One expression, fields in this order: the copy is made before the request goes
        // out, and both it and the response are written straight into the future
        // instead of being moved into it (a request can be a few hundred bytes).
        ResponseFuture {
            backup: if policy.backoff.get_max_attempts() == Some(1) {
                None
            } else {
                policy.cloner.clone_request(&request)
            },
            state: State::Calling {
                future: match started {
                    Some(started) => crate::call_time::scope(started, || service.call(request)),
                    None => service.call(request),
                },
            },
            service,
            next: None,
            policy,
            jitter,
            attempts: 1,
            started,
        }
    }
}

impl<S, Req, C, K, J> Future for ResponseFuture<S, Req, C, K, J>
where
    S: Service<Req>,
    C: ClassifyOutcome<S::Response, S::Error>,
    K: CloneRequest<Req>,
    J: Jitter,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            let (failure, kind) = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let outcome = ready!(future.poll(cx));
                    match this.policy.classifier.classify_outcome(&outcome) {
                        None => {
                            if let Some(budget) = &this.policy.budget {
                                budget.deposit();
                            }
                            return Poll::Ready(outcome);
                        }
                        Some(kind) => (outcome, kind),
                    }
                }
                StateProj::Waiting { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => match ready!(this.service.poll_ready(cx)) {
                    Ok(()) => {
                        let request = this
                            .next
                            .take()
                            .expect("a retry is only scheduled with its request prepared");
                        let future = this.service.call(*request);
                        *this.attempts += 1;
                        this.state.set(State::Calling { future });
                        continue;
                    }
                    // Readiness failing counts as the attempt failing.
                    Err(error) => {
                        let failure = Err(error);
                        let kind = this
                            .policy
                            .classifier
                            .classify_outcome(&failure)
                            .unwrap_or(ErrorKind::Transient);
                        (failure, kind)
                    }
                },
            };
            if this.backup.is_none() {
                // Nothing to send again: the request could not be cloned.
                return Poll::Ready(failure);
            }
            match retry_after(
                kind,
                this.policy,
                this.jitter,
                *this.attempts,
                *this.started,
            ) {
                Some(delay) => {
                    let more = this
                        .policy
                        .backoff
                        .get_max_attempts()
                        .is_none_or(|max| *this.attempts + 1 < max);
                    let request = if more {
                        match this.backup.as_ref() {
                            Some(b) => this.policy.cloner.clone_request(b),
                            None => None,
                        }
                        .or_else(|| this.backup.take())
                    } else {
                        this.backup.take()
                    };
                    let Some(request) = request else {
                        return Poll::Ready(failure);
                    };
                    *this.next = Some(Box::new(request));
                    count_retry(&this.policy.labels);
                    this.state.set(State::Waiting {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                    });
                }
                None => return Poll::Ready(failure),
            }
        }
    }
}

/// The delay before the next attempt, or `None` if the failure goes to the caller.
fn retry_after<C, K, J>(
    kind: ErrorKind,
    policy: &Policy<C, K>,
    jitter: &mut J,
    attempts: u32,
    started: Option<Instant>,
) -> Option<Duration>
where
    J: Jitter,
{
    if policy
        .backoff
        .get_max_attempts()
        .is_some_and(|max| attempts >= max)
    {
        return None;
    }
    if kind != ErrorKind::Transient {
        return None;
    }
    let delay = policy.backoff.delay(attempts - 1, jitter);
    if let (Some(limit), Some(started)) = (policy.backoff.get_max_elapsed(), started) {
        if started.elapsed() + delay > limit {
            return None;
        }
    }
    // Last, so that tokens are spent only on retries that happen.
    if let Some(budget) = &policy.budget {
        if !budget.withdraw() {
            return None;
        }
    }
    Some(delay)
}

fn count_retry(labels: &[metrics::Label]) {
    metrics::counter!("messaging_retries_total", labels.iter()).increment(1);
}
