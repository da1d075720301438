use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tower::{service_fn, Layer, ServiceExt};
use tower_mq_core::{BoxError, Delivery, Message, Permanent, Receipt};
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
            Ok::<_, BoxError>(Receipt::Memory {
                topic: "orders".into(),
                sequence: 1,
            })
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
            Ok::<_, BoxError>(Receipt::Memory {
                topic: "orders".into(),
                sequence: 1,
            })
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
