//! Prometheus-style metrics for publishers and handlers, through the `metrics` crate.
//!
//! [`Metrics`] wraps any `Service<Req>` and records, per call (the `destination` label
//! comes from a [`Labeller`]: the message of a [`MessageLike`] request, a publisher's
//! `Message` or a handler's `Delivery`, by default; any function of the request with
//! [`MetricsLayer::destination_from`]; the path of an `http::Request` with
//! [`HttpPath`], feature `http`):
//!
//! - `messaging_operation_duration_seconds` (histogram): the time from `call` to the
//!   response, on tokio's clock. One histogram for every operation, told apart by
//!   the `operation` label (`publish`, `handle`), rather than one metric per operation,
//!   so that one dashboard panel and one alert cover both sides;
//! - `messaging_messages_total` (counter): finished calls by `outcome`: `ok`,
//!   `transient_error` or `permanent_error`, as decided by a
//!   [`Classifier`](crate::classify::Classifier) of errors ([`DefaultClassifier`]
//!   unless set), and of responses too with
//!   [`MetricsLayer::classify_responses`] (a 5xx on an HTTP service, say);
//! - `messaging_in_flight` (gauge): calls started and not yet finished. A call whose
//!   future is dropped before it finishes leaves the gauge and is not counted.
//!
//! Labels: `broker`, `destination` (from the message; empty when the request carries
//! none), `operation`, and `outcome` on the first two. Every name is listed in
//! [`names`]. Nothing is recorded until a recorder is installed: [`install_prometheus`]
//! installs the Prometheus exporter with buckets suited to these metrics, and
//! [`prometheus_builder`] gives the same configuration to extend.
//!
//! Cost: each service caches the registered handles of the destinations it calls
//! (up to 1024 of them), so a call is a lookup and a few atomic updates. Handles are
//! registered with the recorder current at a destination's first call (an outcome's,
//! at its first occurrence there): install the recorder before calling, as
//! [`install_prometheus`] at startup does.
//!
//! Alerting rules using these metrics ship in `layers/prometheus/alerts.yml`.
//!
//! Stacking: outermost, the layer sees each call once, with its final outcome; inside
//! a retry layer, it sees every attempt.
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Message, Receipt};
//! use tower_mq_core::{Guarantee, Position};
//! use tower_mq_layers::metrics::MetricsLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! // In an application: tower_mq_layers::metrics::install_prometheus(([0, 0, 0, 0], 9000))?;
//! let publisher = service_fn(|m: Message| async move {
//!     Ok::<_, BoxError>(Receipt::new("memory", m.destination(), Guarantee::Stored).with_position(Position::Sequence(1)))
//! });
//! let publisher = MetricsLayer::publish("memory").layer(publisher);
//! publisher.oneshot(Message::new("orders", "{}")).await?;
//! # Ok(()) }
//! ```

mod handles;
mod layer;
#[cfg(feature = "prometheus")]
mod prometheus;

pub mod future;
pub mod names;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_mq_core::cache::{DestinationCache, Entry};
use tower_mq_core::Operation;
use tower_service::Service;

use self::future::ResponseFuture;
use self::handles::Handles;
pub use self::layer::MetricsLayer;
#[cfg(feature = "prometheus")]
pub use self::prometheus::{
    install_prometheus, prometheus_builder, BATCH_SIZE_BUCKETS, DURATION_BUCKETS,
};
use crate::classify::{ClassifyOutcome, DefaultClassifier, ErrorsOnly, WithResponses};
use crate::message_like::MessageLike;
/// The exporter's handle, to render `/metrics` from an application's own HTTP server
/// (`handle.render()`), without depending on a matching exporter version.
#[cfg(feature = "prometheus")]
pub use metrics_exporter_prometheus::PrometheusHandle;

/// Records duration, outcome and in-flight count of every call. See the
/// [module docs](self).
#[derive(Clone)]
pub struct Metrics<S, C = DefaultClassifier, L = ByMessage> {
    inner: S,
    broker: &'static str,
    operation: Operation,
    classifier: C,
    labeller: L,
    destination_label: bool,
    /// Handles per destination, shared by clones. Past its capacity, a call to a new
    /// destination registers its handles for itself alone (the cost of an uncached
    /// call); turn the destination label off where destinations are unbounded.
    cache: Arc<DestinationCache<Handles>>,
    /// The handles of this clone's last destination: most publishers call one.
    last: Option<Entry<Handles>>,
}

impl<S> Metrics<S> {
    /// Records `operation` calls to `broker` through `inner`.
    pub fn new(inner: S, broker: &'static str, operation: Operation) -> Self {
        Metrics {
            inner,
            broker,
            operation,
            classifier: DefaultClassifier::new(),
            labeller: ByMessage,
            destination_label: true,
            cache: Arc::new(DestinationCache::default()),
            last: None,
        }
    }
}

impl<S, C, L> Metrics<S, C, L> {
    /// Classifies failures (errors) with `classifier`, a [`Classifier`](crate::classify::Classifier); every
    /// response counts as `ok`.
    pub fn with_classifier<C2>(self, classifier: C2) -> Metrics<S, ErrorsOnly<C2>, L> {
        self.with_outcome_classifier(ErrorsOnly(classifier))
    }

    /// Also counts a response as a failure where `responses` says it is one (`None`:
    /// a success), e.g. [`http_response`](crate::classify::http_response) for an HTTP
    /// service's 5xx.
    pub fn with_response_classifier<F>(self, responses: F) -> Metrics<S, WithResponses<C, F>, L>
    where
        C: Clone,
    {
        let errors = self.classifier.clone();
        self.with_outcome_classifier(WithResponses::new(errors, responses))
    }

    /// Judges outcomes (the `outcome` label) with any [`ClassifyOutcome`].
    pub fn with_outcome_classifier<C2>(self, classifier: C2) -> Metrics<S, C2, L> {
        Metrics {
            inner: self.inner,
            broker: self.broker,
            operation: self.operation,
            classifier,
            labeller: self.labeller,
            destination_label: self.destination_label,
            cache: self.cache,
            last: self.last,
        }
    }

    /// Takes the `destination` label from requests with `labeller`.
    pub fn with_labeller<L2>(self, labeller: L2) -> Metrics<S, C, L2> {
        Metrics {
            inner: self.inner,
            broker: self.broker,
            operation: self.operation,
            classifier: self.classifier,
            labeller,
            destination_label: self.destination_label,
            cache: self.cache,
            last: self.last,
        }
    }

    /// Whether to label by destination (default `true`). Turn it off where
    /// destinations are unbounded (per-request reply queues, per-tenant topics): the
    /// label is then always empty, and series stay few.
    pub fn with_destination_label(mut self, enabled: bool) -> Self {
        self.destination_label = enabled;
        self
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

impl<S: fmt::Debug, C: fmt::Debug, L> fmt::Debug for Metrics<S, C, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("inner", &self.inner)
            .field("broker", &self.broker)
            .field("operation", &self.operation)
            .field("classifier", &self.classifier)
            .field("destination_label", &self.destination_label)
            .finish()
    }
}

impl<S, C, L, Req> Service<Req> for Metrics<S, C, L>
where
    S: Service<Req>,
    C: ClassifyOutcome<S::Response, S::Error> + Clone,
    L: Labeller<Req>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let label = if self.destination_label {
            self.labeller.destination(&req)
        } else {
            None
        };
        let destination = label.as_deref().unwrap_or_default();
        let (broker, operation) = (self.broker, self.operation);
        let handles = self
            .cache
            .get_after(&mut self.last, destination, || {
                Handles::register(broker, operation, destination)
            })
            .value()
            .clone();
        // The layers inside (a timeout, say) share this reading of the clock.
        let start = crate::call_time::now();
        let inner = &mut self.inner;
        ResponseFuture::call(start, handles, self.classifier.clone(), || inner.call(req))
    }
}

/// Where [`Metrics`] takes a request's `destination` label from.
///
/// Implemented by [`ByMessage`] (the default: the message of a [`MessageLike`]
/// request), by [`HttpPath`] (feature `http`), and by any
/// `Fn(&Req) -> Option<String>` (see [`MetricsLayer::destination_from`]).
#[diagnostic::on_unimplemented(
    message = "the metrics layer cannot tell the destination of a `{Req}`",
    label = "this labeller does not know `{Req}`",
    note = "requests that carry a `Message` implement `MessageLike`; for any other request give the layer a function: `MetricsLayer::destination_from(|req: &{Req}| ...)`, or `HttpPath` for an `http::Request` (feature `http`)"
)]
pub trait Labeller<Req> {
    /// The request's destination label, if it has one.
    fn destination<'r>(&self, request: &'r Req) -> Option<Cow<'r, str>>;
}

/// The destination of the message a [`MessageLike`] request carries: the default
/// [`Labeller`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ByMessage;

impl<Req: MessageLike> Labeller<Req> for ByMessage {
    #[inline]
    fn destination<'r>(&self, request: &'r Req) -> Option<Cow<'r, str>> {
        request.destination().map(Cow::Borrowed)
    }
}

/// A function of the request, from [`MetricsLayer::destination_from`].
#[derive(Clone, Copy)]
pub struct LabelFn<F>(pub(crate) F);

impl<F> fmt::Debug for LabelFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LabelFn")
    }
}

impl<Req, F> Labeller<Req> for LabelFn<F>
where
    F: Fn(&Req) -> Option<String>,
{
    fn destination<'r>(&self, request: &'r Req) -> Option<Cow<'r, str>> {
        (self.0)(request).map(Cow::Owned)
    }
}

/// The path of an `http::Request` as its destination label (`/orders`): per route,
/// for the layer guarding an HTTP service.
///
/// Paths that carry ids (`/orders/42`) make one series per id: label such routes with
/// a function that maps them to their route (`/orders/{id}`) instead.
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpPath;

#[cfg(feature = "http")]
impl<B> Labeller<http::Request<B>> for HttpPath {
    fn destination<'r>(&self, request: &'r http::Request<B>) -> Option<Cow<'r, str>> {
        Some(Cow::Borrowed(request.uri().path()))
    }
}

#[cfg(test)]
mod tests;
