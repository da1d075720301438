use opentelemetry::propagation::TextMapPropagator;
use tracing::field::Empty;

use super::propagation::{HeaderExtractor, HeaderInjector};
use super::Side;
use crate::message_like::MessageLike;
use crate::metrics::ByMessage;

/// How the trace layer sees a request: the span a call runs in, and where the trace
/// context travels with the request.
///
/// Implemented by [`ByMessage`] (the default: messaging spans, the context in the
/// message headers of a [`MessageLike`] request) and by [`HttpHeaders`] (feature
/// `http`: HTTP spans, the context in an `http::Request`'s headers). A request type of
/// another protocol implements it for a type of its own, given to
/// [`TraceLayer::carrier`](super::TraceLayer::carrier).
///
/// A span that declares the fields `otel.status_code`, `otel.status_description` and
/// `error.type` (as `tracing::field::Empty`) gets the failure recorded on it.
#[diagnostic::on_unimplemented(
    message = "the trace layer cannot carry a trace context in a `{Req}`",
    label = "this carrier does not know `{Req}`",
    note = "requests that carry a `Message` implement `MessageLike`; for an `http::Request` give the layer `.carrier(HttpHeaders)` (feature `http`), for any other request a `Carrier<{Req}>` of your own"
)]
pub trait Carrier<Req> {
    /// The span for a call with `request`, on `side` of `system` (the layer's
    /// `messaging.system`). Fields are evaluated only when a subscriber wants the span,
    /// as `tracing::info_span!` does.
    fn span(&self, system: &'static str, side: Side, request: &Req) -> tracing::Span;

    /// Writes `context` into `request` with `propagator` (the publishing side).
    fn inject(
        &self,
        request: &mut Req,
        propagator: &dyn TextMapPropagator,
        context: &opentelemetry::Context,
    );

    /// Reads the context that `request` carries with `propagator` (the handling side);
    /// an empty context when it carries none.
    fn extract(&self, request: &Req, propagator: &dyn TextMapPropagator) -> opentelemetry::Context;
}

impl<Req: MessageLike> Carrier<Req> for ByMessage {
    fn span(&self, system: &'static str, side: Side, request: &Req) -> tracing::Span {
        let destination = request.destination().unwrap_or_default();
        // Signed: OpenTelemetry attributes are i64, and tracing-opentelemetry turns u64
        // into strings.
        let body_size = request
            .message()
            .map(|m| i64::try_from(m.payload().len()).unwrap_or(i64::MAX));
        let span = match side {
            Side::Publish => tracing::info_span!(
                "publish",
                otel.name = %format_args!("publish {destination}"),
                otel.kind = "producer",
                otel.status_code = Empty,
                otel.status_description = Empty,
                messaging.system = system,
                messaging.destination.name = destination,
                messaging.operation.type = "send",
                messaging.operation.name = "publish",
                messaging.message.id = Empty,
                messaging.message.body.size = body_size,
                "error.type" = Empty,
            ),
            Side::Process => tracing::info_span!(
                "process",
                otel.name = %format_args!("process {destination}"),
                otel.kind = "consumer",
                otel.status_code = Empty,
                otel.status_description = Empty,
                messaging.system = system,
                messaging.destination.name = destination,
                messaging.operation.type = "process",
                messaging.operation.name = "process",
                messaging.message.id = Empty,
                messaging.message.body.size = body_size,
                "error.type" = Empty,
            ),
        };
        if !span.is_disabled() {
            if let Some(id) = request.message().and_then(|m| m.message_id()) {
                span.record("messaging.message.id", id);
            }
        }
        span
    }

    fn inject(
        &self,
        request: &mut Req,
        propagator: &dyn TextMapPropagator,
        context: &opentelemetry::Context,
    ) {
        if let Some(message) = request.message_mut() {
            propagator.inject_context(context, &mut HeaderInjector(message.headers_mut()));
        }
    }

    fn extract(&self, request: &Req, propagator: &dyn TextMapPropagator) -> opentelemetry::Context {
        match request.message() {
            Some(message) => propagator.extract(&HeaderExtractor(message.headers())),
            None => opentelemetry::Context::new(),
        }
    }
}

/// The trace context in an `http::Request`'s headers (`traceparent`, `tracestate`), for
/// the trace layer on an HTTP client (written by [`TraceLayer::publish`]) or an HTTP
/// service such as an axum `Router` (read by [`TraceLayer::process`]).
///
/// Spans follow OpenTelemetry's HTTP conventions: client spans on the publishing side,
/// server spans on the handling side, named `"<method> <path>"`, with
/// `http.request.method` and `url.path` (and no `messaging.*` attributes: the layer's
/// `system` is not recorded). Paths that carry ids (`/orders/42`) make one
/// span name per id, as they make one series per id with
/// [`HttpPath`](crate::metrics::HttpPath).
///
/// ```
/// use tower::{service_fn, Layer, ServiceExt};
/// use tower_mq_layers::trace::{HttpHeaders, TraceLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let server = service_fn(|_: http::Request<String>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
/// });
/// let server = TraceLayer::process("http").carrier(HttpHeaders).layer(server);
/// let response = server.oneshot(http::Request::new(String::new())).await;
/// # let _ = response;
/// # }
/// ```
///
/// [`TraceLayer::publish`]: super::TraceLayer::publish
/// [`TraceLayer::process`]: super::TraceLayer::process
#[cfg(feature = "http")]
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpHeaders;

#[cfg(feature = "http")]
impl<B> Carrier<http::Request<B>> for HttpHeaders {
    fn span(&self, _system: &'static str, side: Side, request: &http::Request<B>) -> tracing::Span {
        let method = request.method().as_str();
        let path = request.uri().path();
        match side {
            Side::Publish => tracing::info_span!(
                "request",
                otel.name = %format_args!("{method} {path}"),
                otel.kind = "client",
                otel.status_code = Empty,
                otel.status_description = Empty,
                http.request.method = method,
                url.path = path,
                "error.type" = Empty,
            ),
            Side::Process => tracing::info_span!(
                "request",
                otel.name = %format_args!("{method} {path}"),
                otel.kind = "server",
                otel.status_code = Empty,
                otel.status_description = Empty,
                http.request.method = method,
                url.path = path,
                "error.type" = Empty,
            ),
        }
    }

    fn inject(
        &self,
        request: &mut http::Request<B>,
        propagator: &dyn TextMapPropagator,
        context: &opentelemetry::Context,
    ) {
        propagator.inject_context(context, &mut HttpInjector(request.headers_mut()));
    }

    fn extract(
        &self,
        request: &http::Request<B>,
        propagator: &dyn TextMapPropagator,
    ) -> opentelemetry::Context {
        propagator.extract(&HttpExtractor(request.headers()))
    }
}

#[cfg(feature = "http")]
struct HttpInjector<'a>(&'a mut http::HeaderMap);

#[cfg(feature = "http")]
impl opentelemetry::propagation::Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A propagator writes valid names and values; anything else is left out
        // rather than sent malformed.
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::try_from(key),
            http::HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(feature = "http")]
struct HttpExtractor<'a>(&'a http::HeaderMap);

#[cfg(feature = "http")]
impl opentelemetry::propagation::Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // `HeaderMap` looks names up case-insensitively.
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
