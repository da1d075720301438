//! The metrics layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_mq_core::ErrorKind;

use super::handles::Handles;
use super::names::outcomes;
use crate::classify::ClassifyOutcome;

/// Keeps `messaging_in_flight` right however the call ends, dropped futures included.
#[derive(Debug)]
struct InFlight {
    handles: Arc<Handles>,
}

impl InFlight {
    fn start(handles: Arc<Handles>) -> Self {
        handles.in_flight.increment(1.0);
        InFlight { handles }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.handles.in_flight.decrement(1.0);
    }
}

pin_project! {
    /// What [`Metrics`](super::Metrics) returns: the inner future, timed and counted.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        start: Instant,
        in_flight: Option<InFlight>,
        classifier: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    /// Makes the inner call, timed from `start` (which the layers inside share), and
    /// counts it in flight.
    #[inline]
    pub(crate) fn call(
        start: Instant,
        handles: Arc<Handles>,
        classifier: C,
        call: impl FnOnce() -> F,
    ) -> Self {
        // Built where it is returned, the inner call last and straight into its field:
        // a stack's response can be hundreds of bytes, and moving it costs copies.
        crate::call_time::scope(start, || ResponseFuture {
            in_flight: Some(InFlight::start(handles)),
            start,
            classifier,
            inner: call(),
        })
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: ClassifyOutcome<T, E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(in_flight) = this.in_flight.take() {
            let outcome = match this.classifier.classify_outcome(&result) {
                None => outcomes::OK,
                Some(ErrorKind::Transient) => outcomes::TRANSIENT_ERROR,
                Some(ErrorKind::Permanent) => outcomes::PERMANENT_ERROR,
            };
            let outcome = in_flight.handles.outcome(outcome);
            outcome.total.increment(1);
            outcome.duration.record(this.start.elapsed().as_secs_f64());
            drop(in_flight);
        }
        Poll::Ready(result)
    }
}
