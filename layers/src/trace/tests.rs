use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_mq_core::{BoxError, Delivery, Message, Permanent, Receipt};
use tower_mq_core::{Guarantee, Position};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use super::TraceLayer;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// A subscriber exporting OpenTelemetry spans to memory, installed on this thread.
fn otel() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = tracing::subscriber::set_default(subscriber);
    // Tests on other threads may have cached the span callsites' interest while no
    // subscriber was set.
    tracing::callsite::rebuild_interest_cache();
    (exporter, provider, guard)
}

/// A span standing for the application's caller, inside a trace with a known id.
fn caller_span() -> tracing::Span {
    let span = tracing::info_span!("caller");
    let remote = SpanContext::new(
        TraceId::from_hex(TRACE_ID).expect("hex"),
        SpanId::from_hex(CALLER_SPAN_ID).expect("hex"),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote))
        .expect("not started");
    span
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn finished(exporter: &InMemorySpanExporter, name: &str) -> SpanData {
    exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no finished span named {name:?}"))
}

async fn publish_traced(msg: Message) -> Message {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            tx.send(m)?;
            Ok::<_, BoxError>(
                Receipt::new("memory", "orders", Guarantee::Stored)
                    .with_position(Position::Sequence(1)),
            )
        }
    });
    TraceLayer::publish("kafka")
        .layer(publisher)
        .oneshot(msg)
        .instrument(caller_span())
        .await
        .expect("published");
    rx.recv().await.expect("sent")
}

#[tokio::test(start_paused = true)]
async fn publish_writes_a_traceparent_with_the_callers_trace_id() {
    let (exporter, _provider, _guard) = otel();
    let sent = publish_traced(Message::new("orders", "12345").with_message_id("m-1")).await;

    let traceparent = sent
        .headers()
        .get_str("traceparent")
        .expect("traceparent header");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], TRACE_ID, "the caller's trace continues");
    assert_ne!(
        parts[2], CALLER_SPAN_ID,
        "the parent is the publish span itself"
    );
    assert_eq!(parts[3], "01", "sampled");

    let publish = finished(&exporter, "publish orders");
    assert_eq!(publish.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(publish.span_context.span_id().to_string(), parts[2]);
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(
        attr(&publish, "messaging.system"),
        Some(&Value::from("kafka"))
    );
    assert_eq!(
        attr(&publish, "messaging.destination.name"),
        Some(&Value::from("orders"))
    );
    assert_eq!(
        attr(&publish, "messaging.operation.type"),
        Some(&Value::from("send"))
    );
    assert_eq!(
        attr(&publish, "messaging.message.id"),
        Some(&Value::from("m-1"))
    );
    assert_eq!(
        attr(&publish, "messaging.message.body.size"),
        Some(&Value::I64(5))
    );
    assert_eq!(attr(&publish, "error.type"), None);
}

#[tokio::test(start_paused = true)]
async fn handling_continues_the_trace_from_the_message_headers() {
    let (exporter, _provider, _guard) = otel();
    let sent = publish_traced(Message::new("orders", "x")).await;
    let publish_span_id = finished(&exporter, "publish orders").span_context.span_id();

    // What the handler sees as its current trace.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = service_fn(move |_: Delivery| {
        let cx = tracing::Span::current().context();
        let _ = seen_tx.send(cx.span().span_context().trace_id());
        async { Ok::<_, BoxError>(()) }
    });
    // Handled outside any span: the parent can only come from the headers.
    TraceLayer::process("rabbitmq")
        .layer(handler)
        .oneshot(Delivery::unacknowledged(sent))
        .await
        .expect("handled");

    assert_eq!(seen_rx.recv().await.expect("seen").to_string(), TRACE_ID);
    let process = finished(&exporter, "process orders");
    assert_eq!(process.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(process.parent_span_id, publish_span_id);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        attr(&process, "messaging.system"),
        Some(&Value::from("rabbitmq"))
    );
    assert_eq!(
        attr(&process, "messaging.operation.type"),
        Some(&Value::from("process"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_sets_error_type_and_status() {
    let (exporter, _provider, _guard) = otel();
    let handler =
        service_fn(|_: Delivery| async { Err::<(), BoxError>(Permanent::new("bad order").into()) });
    TraceLayer::process("nats")
        .layer(handler)
        .oneshot(Delivery::unacknowledged(Message::new("orders", "x")))
        .await
        .expect_err("fails");
    let process = finished(&exporter, "process orders");
    assert_eq!(
        attr(&process, "error.type"),
        Some(&Value::from("permanent"))
    );
    assert!(
        matches!(&process.status, Status::Error { description } if description.contains("bad order")),
        "{:?}",
        process.status
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_subscriber_nothing_is_written() {
    // No subscriber installed on this thread: spans are disabled.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let publisher = service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            tx.send(m)?;
            Ok::<_, BoxError>(
                Receipt::new("memory", "orders", Guarantee::Stored)
                    .with_position(Position::Sequence(1)),
            )
        }
    });
    TraceLayer::publish("kafka")
        .layer(publisher)
        .oneshot(Message::new("orders", "x"))
        .await
        .expect("published");
    let sent = rx.recv().await.expect("sent");
    assert!(sent.headers().is_empty(), "{:?}", sent.headers());
}

/// An HTTP client traced with `HttpHeaders` calling an HTTP service traced the same
/// way: the context crosses in the request headers.
#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn http_requests_carry_the_trace_from_client_to_server_in_headers() {
    use super::HttpHeaders;
    use std::convert::Infallible;

    let (exporter, _provider, _guard) = otel();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let server = service_fn(move |request: http::Request<String>| {
        let cx = tracing::Span::current().context();
        let _ = seen_tx.send((
            request.headers().get("traceparent").cloned(),
            cx.span().span_context().trace_id(),
        ));
        async { Ok::<_, Infallible>(http::Response::new(String::new())) }
    });
    let server = TraceLayer::process("http")
        .carrier(HttpHeaders)
        .layer(server);
    // The client hands the request to the server as a network would: outside the
    // client's span, so the parent can only come from the headers.
    let client = service_fn(move |request: http::Request<String>| {
        let server = server.clone();
        async move {
            tokio::spawn(server.oneshot(request))
                .await
                .expect("the server ran")
        }
    });
    let client = TraceLayer::publish("http")
        .carrier(HttpHeaders)
        .layer(client);
    let request = http::Request::post("/orders")
        .body("{}".to_owned())
        .expect("a valid request");
    let response = client
        .oneshot(request)
        .instrument(caller_span())
        .await
        .expect("answered");
    assert_eq!(response.status(), http::StatusCode::OK);

    let (traceparent, trace_id) = seen_rx.recv().await.expect("served");
    let traceparent = traceparent.expect("a traceparent header");
    let spans = exporter.get_finished_spans().expect("spans");
    let of_kind = |kind: SpanKind| {
        spans
            .iter()
            .find(|s| s.span_kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} span"))
    };
    let client_span = of_kind(SpanKind::Client);
    assert_eq!(client_span.name, "POST /orders");
    assert_eq!(client_span.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(
        traceparent.to_str().expect("ascii"),
        format!("00-{TRACE_ID}-{}-01", client_span.span_context.span_id()),
        "the client span is the remote parent"
    );
    assert_eq!(
        trace_id.to_string(),
        TRACE_ID,
        "the server continues the trace"
    );
    let server_span = of_kind(SpanKind::Server);
    assert_eq!(server_span.name, "POST /orders");
    assert_eq!(server_span.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(
        server_span.parent_span_id,
        client_span.span_context.span_id()
    );
    assert_eq!(
        attr(server_span, "http.request.method"),
        Some(&Value::from("POST"))
    );
    assert_eq!(attr(server_span, "url.path"), Some(&Value::from("/orders")));
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn an_http_service_without_a_traceparent_starts_a_trace_of_its_own() {
    use super::HttpHeaders;

    let (exporter, _provider, _guard) = otel();
    let server = service_fn(|_: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    TraceLayer::process("http")
        .carrier(HttpHeaders)
        .layer(server)
        .oneshot(
            http::Request::get("/health")
                .body(String::new())
                .expect("valid"),
        )
        .await
        .expect("answered");
    let span = finished(&exporter, "GET /health");
    assert_eq!(span.span_kind, SpanKind::Server);
    assert_eq!(span.parent_span_id, SpanId::INVALID);
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn a_5xx_response_marks_the_server_span_failed_when_responses_are_classified() {
    use super::HttpHeaders;
    use crate::classify::http_response;

    let (exporter, _provider, _guard) = otel();
    let server = service_fn(|request: http::Request<String>| async move {
        let status = if request.uri().path() == "/down" {
            http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            http::StatusCode::OK
        };
        let response = http::Response::builder()
            .status(status)
            .body(String::new())
            .expect("a valid response");
        Ok::<_, std::convert::Infallible>(response)
    });
    let mut server = TraceLayer::process("http")
        .carrier(HttpHeaders)
        .classify_responses(http_response::<String>)
        .layer(server);
    for path in ["/down", "/up"] {
        let request = http::Request::get(path).body(String::new()).expect("valid");
        server
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("answered");
    }
    let down = finished(&exporter, "GET /down");
    assert_eq!(attr(&down, "error.type"), Some(&Value::from("transient")));
    assert!(
        matches!(down.status, Status::Error { .. }),
        "{:?}",
        down.status
    );
    let up = finished(&exporter, "GET /up");
    assert_eq!(attr(&up, "error.type"), None);
    assert!(
        !matches!(up.status, Status::Error { .. }),
        "{:?}",
        up.status
    );
}
