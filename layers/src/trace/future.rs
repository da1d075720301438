//! The trace layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tracing::Span;

use crate::classify::Classifier;

pin_project! {
    /// What [`Trace`](super::Trace) returns: the inner future, polled inside the span,
    /// which records the failure, if any.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: F,
        span: Span,
        classifier: C,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(inner: F, span: Span, classifier: C) -> Self {
        ResponseFuture {
            inner,
            span,
            classifier,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classifier<E>,
    E: std::fmt::Display,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        if let Err(e) = &result {
            if !this.span.is_disabled() {
                let kind = this.classifier.classify(e);
                this.span.record("error.type", kind.as_str());
                this.span.record("otel.status_code", "ERROR");
                this.span
                    .record("otel.status_description", tracing::field::display(e));
            }
        }
        Poll::Ready(result)
    }
}
