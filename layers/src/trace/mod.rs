//! Tracing spans that follow OpenTelemetry's messaging conventions, with the W3C trace
//! context carried in message headers so that one trace crosses brokers.
//!
//! [`Trace`] wraps a publisher ([`TraceLayer::publish`]) or a handler
//! ([`TraceLayer::process`]) and runs each call in a `tracing` span with the
//! attributes of the OpenTelemetry messaging semantic conventions:
//! `messaging.system`, `messaging.destination.name`, `messaging.operation.type`
//! (`send` for a publish, as the current conventions name it, and `process` for a
//! handle), `messaging.operation.name` (`publish` or `process`),
//! `messaging.message.id`, `messaging.message.body.size`, and on failure
//! `error.type` (`transient` or `permanent`, from the
//! [`Classifier`](crate::classify::Classifier)) with an error status. Span kinds are
//! producer and consumer; the span name is `"<operation> <destination>"`. A response
//! can count as a failure too: [`TraceLayer::classify_responses`] with
//! [`http_response`](crate::classify) marks an HTTP 5xx.
//!
//! On publish, the publish span's context is written into the message headers as
//! `traceparent` (and `tracestate`) by a `TextMapPropagator` (W3C Trace Context by
//! default). On handle, the context is read back from the delivery's headers and made
//! the parent of the process span. With `tracing-opentelemetry`'s layer in the
//! subscriber, both spans land in one trace whichever brokers carried the message
//! in between.
//!
//! With no subscriber interested in these spans, the layer adds nothing but the
//! check: no fields are computed and no headers written.
//!
//! The span and the place the context travels in come from a [`Carrier`]: by default
//! [`ByMessage`], the message a [`MessageLike`](crate::message_like::MessageLike)
//! request carries (a publisher's `Message`, a handler's `Delivery`). On HTTP,
//! [`TraceLayer::carrier`] with [`HttpHeaders`] (feature `http`) makes client and
//! server spans and carries `traceparent` in the request headers instead, so that the
//! same layer traces an HTTP client and an axum `Router` into the trace of the messages
//! they publish.
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Delivery, Message, Receipt};
//! use tower_mq_core::{Guarantee, Position};
//! use tower_mq_layers::trace::TraceLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let publisher = service_fn(|m: Message| async move {
//!     Ok::<_, BoxError>(Receipt::new("memory", m.destination(), Guarantee::Stored).with_position(Position::Sequence(1)))
//! });
//! let publisher = TraceLayer::publish("kafka").layer(publisher);
//! publisher.oneshot(Message::new("orders", "{}")).await?;
//!
//! let handler = service_fn(|_: Delivery| async { Ok::<_, BoxError>(()) });
//! let handler = TraceLayer::process("kafka").layer(handler);
//! handler.oneshot(Delivery::unacknowledged(Message::new("orders", "{}"))).await?;
//! # Ok(()) }
//! ```

mod carrier;
mod layer;
mod propagation;

pub mod future;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use tower_service::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub use self::carrier::Carrier;
#[cfg(feature = "http")]
pub use self::carrier::HttpHeaders;
use self::future::ResponseFuture;
pub use self::layer::TraceLayer;
pub use self::propagation::{HeaderExtractor, HeaderInjector};
use crate::classify::{ClassifyOutcome, DefaultClassifier};
pub use crate::metrics::ByMessage;

/// Which side of the exchange a [`Trace`] is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Publishing: producer spans, context injected into the message.
    Publish,
    /// Handling deliveries: consumer spans, context extracted from the message.
    Process,
}

/// Runs each call in a span: a messaging span by default, the one its [`Carrier`]
/// makes otherwise. See the [module docs](self).
#[derive(Clone)]
pub struct Trace<S, C = DefaultClassifier, K = ByMessage> {
    inner: S,
    system: &'static str,
    side: Side,
    propagator: Arc<dyn TextMapPropagator + Send + Sync>,
    classifier: C,
    carrier: K,
}

impl<S, C, K> Trace<S, C, K> {
    pub(crate) fn new(
        inner: S,
        system: &'static str,
        side: Side,
        propagator: Arc<dyn TextMapPropagator + Send + Sync>,
        classifier: C,
        carrier: K,
    ) -> Self {
        Trace {
            inner,
            system,
            side,
            propagator,
            classifier,
            carrier,
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
}

impl<S: fmt::Debug, C: fmt::Debug, K: fmt::Debug> fmt::Debug for Trace<S, C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("inner", &self.inner)
            .field("system", &self.system)
            .field("side", &self.side)
            .field("classifier", &self.classifier)
            .field("carrier", &self.carrier)
            .finish_non_exhaustive()
    }
}

impl<S, C, K, Req> Service<Req> for Trace<S, C, K>
where
    S: Service<Req>,
    S::Error: fmt::Display,
    C: ClassifyOutcome<S::Response, S::Error> + Clone,
    K: Carrier<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Req) -> Self::Future {
        // `info_span!` evaluates no field unless a subscriber wants the span.
        let span = self.carrier.span(self.system, self.side, &req);
        if span.is_disabled() {
            let future = self.inner.call(req);
            return ResponseFuture::new(future, span, self.classifier.clone());
        }
        match self.side {
            Side::Publish => {
                let cx = span.context();
                if cx.span().span_context().is_valid() {
                    self.carrier.inject(&mut req, &*self.propagator, &cx);
                }
            }
            Side::Process => {
                let parent = self.carrier.extract(&req, &*self.propagator);
                if parent.span().span_context().is_valid() {
                    // Fails only once the span has started, which it has not.
                    let _ = span.set_parent(parent);
                }
            }
        }
        let future = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        ResponseFuture::new(future, span, self.classifier.clone())
    }
}

#[cfg(test)]
mod tests;
