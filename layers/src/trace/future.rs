//! The trace layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tracing::Span;

use crate::classify::ClassifyOutcome;

pin_project! {
    /// What [`Trace`](super::Trace) returns: the inner future, polled inside the span,
    /// which records the failure, if any (an error, or a response the classifier
    /// calls a failure).
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
    C: ClassifyOutcome<T, E>,
    E: std::fmt::Display,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let result = ready!(this.inner.poll(cx));
        if !this.span.is_disabled() {
            if let Some(kind) = this.classifier.classify_outcome(&result) {
                this.span.record("error.type", kind.as_str());
                this.span.record("otel.status_code", "ERROR");
                if let Err(e) = &result {
                    this.span
                        .record("otel.status_description", tracing::field::display(e));
                }
            }
        }
        Poll::Ready(result)
    }
}
