//! The metrics layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use metrics::Label;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_mq_core::ErrorKind;

use super::names::{self, outcomes};
use crate::classify::Classifier;

/// Keeps `messaging_in_flight` right however the call ends, dropped futures included.
#[derive(Debug)]
struct InFlight {
    labels: Vec<Label>,
}

impl InFlight {
    fn start(labels: Vec<Label>) -> Self {
        metrics::gauge!(names::IN_FLIGHT, labels.iter()).increment(1.0);
        InFlight { labels }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::IN_FLIGHT, self.labels.iter()).decrement(1.0);
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
    pub(crate) fn new(inner: F, labels: Vec<Label>, classifier: C) -> Self {
        ResponseFuture {
            inner,
            start: Instant::now(),
            in_flight: Some(InFlight::start(labels)),
            classifier,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classifier<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(in_flight) = this.in_flight.take() {
            let outcome = match &result {
                Ok(_) => outcomes::OK,
                Err(e) => match this.classifier.classify(e) {
                    ErrorKind::Transient => outcomes::TRANSIENT_ERROR,
                    ErrorKind::Permanent => outcomes::PERMANENT_ERROR,
                },
            };
            let mut labels = in_flight.labels.clone();
            labels.push(Label::from_static_parts(names::labels::OUTCOME, outcome));
            metrics::counter!(names::MESSAGES_TOTAL, labels.iter()).increment(1);
            metrics::histogram!(names::OPERATION_DURATION, labels.iter())
                .record(this.start.elapsed().as_secs_f64());
            drop(in_flight);
        }
        Poll::Ready(result)
    }
}
