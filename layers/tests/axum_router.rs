//! The layers around an axum `Router` itself, as an application guards its routes:
//! metrics per route, trace context from the request headers, retry of 5xx answers,
//! a breaker that opens on them, a timeout per attempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mq_core::{BoxError, Operation};
use tower_mq_layers::circuit_breaker::{error::CircuitOpen, CircuitBreakerHandle, CircuitState};
use tower_mq_layers::classify::http_response;
use tower_mq_layers::metrics::{HttpPath, MetricsLayer};
use tower_mq_layers::retry::{Backoff, HttpRequests};
use tower_mq_layers::trace::{HttpHeaders, TraceLayer};
use tower_mq_layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};

/// The tests run one at a time: span callsites cache whether anyone is interested in
/// them, and a test without a subscriber on another thread can race the trace test's.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many times each route's handler ran.
#[derive(Clone, Default)]
struct Calls {
    orders: Arc<AtomicUsize>,
    down: Arc<AtomicUsize>,
}

/// `POST /orders` answers 503 three times, then 200; `GET /down` always answers 503;
/// `GET /health` answers 200.
fn router(calls: &Calls) -> Router {
    let orders = calls.orders.clone();
    let down = calls.down.clone();
    Router::new()
        .route(
            "/orders",
            post(move || {
                let n = orders.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 3 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        )
        .route(
            "/down",
            get(move || {
                down.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::SERVICE_UNAVAILABLE }
            }),
        )
        .route("/health", get(|| async { "ok" }))
}

/// The router guarded by the project's layers, outermost first; the breaker opens
/// when `window` calls in a row saw at least half of them fail.
fn guarded(
    router: Router,
    window: u32,
) -> (
    impl Service<Request<String>, Response = Response<Body>, Error = BoxError, Future: Send> + Clone,
    CircuitBreakerHandle,
) {
    let breaker = CircuitBreakerLayer::new()
        .count_window(window)
        .minimum_calls(window)
        .classify_responses(http_response::<Body>);
    let circuit = breaker.handle();
    let service = ServiceBuilder::new()
        .layer(MetricsLayer::new("http", Operation::Handle).labeller(HttpPath))
        .layer(
            TraceLayer::process("http")
                .carrier(HttpHeaders)
                .classify_responses(http_response::<Body>),
        )
        .layer(
            RetryLayer::new(
                Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
                    .max_attempts(4),
            )
            .classify_responses(http_response::<Body>)
            .clone_requests_with(HttpRequests),
        )
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(router);
    (service, circuit)
}

fn request(method: &str, path: &str) -> Request<String> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(String::new())
        .expect("a valid request")
}

#[tokio::test(start_paused = true)]
async fn retry_on_a_router_returns_the_200_after_three_503s() {
    let _serial = SERIAL.lock().await;
    let calls = Calls::default();
    let (service, circuit) = guarded(router(&calls), 20);
    let response = service
        .oneshot(request("POST", "/orders"))
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        calls.orders.load(Ordering::SeqCst),
        4,
        "three 503s, then the 200"
    );
    assert_eq!(circuit.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn repeated_503s_from_a_router_open_the_breaker() {
    let _serial = SERIAL.lock().await;
    let calls = Calls::default();
    let (mut service, circuit) = guarded(router(&calls), 4);

    // Four attempts, all 503: attempts run out with the breaker's window full of
    // failures, and the last answer is returned as it is.
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(request("GET", "/down"))
        .await
        .expect("answered");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.down.load(Ordering::SeqCst), 4);
    assert_eq!(circuit.state(), CircuitState::Open);

    // The open circuit rejects every attempt of the next request: the route is not
    // called again.
    let rejected = service
        .ready()
        .await
        .expect("ready")
        .call(request("GET", "/down"))
        .await
        .expect_err("rejected");
    assert!(rejected.is::<CircuitOpen>(), "{rejected}");
    assert_eq!(calls.down.load(Ordering::SeqCst), 4, "the route was spared");
}

#[test]
fn metrics_on_a_router_are_labelled_per_route() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let calls = Calls::default();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let _serial = SERIAL.lock().await;
            let (mut service, _) = guarded(router(&calls), 20);
            for (method, path) in [("POST", "/orders"), ("GET", "/health"), ("GET", "/health")] {
                let response = service
                    .ready()
                    .await
                    .expect("ready")
                    .call(request(method, path))
                    .await
                    .expect("answered");
                assert_eq!(response.status(), StatusCode::OK, "{method} {path}");
            }
        })
    });
    let mut counted: Vec<(String, String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "messaging_messages_total")
        .filter_map(|(key, _, _, value)| {
            let label = |name: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            match value {
                DebugValue::Counter(n) => Some((label("destination")?, label("outcome")?, n)),
                _ => None,
            }
        })
        .collect();
    counted.sort();
    assert_eq!(
        counted,
        [
            ("/health".to_owned(), "ok".to_owned(), 2),
            // Outermost, the metrics layer sees the request once, retried to its 200.
            ("/orders".to_owned(), "ok".to_owned(), 1),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_traceparent_header_continues_the_trace_through_the_router() {
    let _serial = SERIAL.lock().await;
    use opentelemetry::trace::{SpanKind, TraceContextExt, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    // Tests on other threads may have cached the span callsites' interest while no
    // subscriber was set.
    tracing::callsite::rebuild_interest_cache();

    // What the handler inside the router sees as its trace.
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let router = Router::new().route(
        "/orders",
        post(move || {
            let cx = tracing::Span::current().context();
            let _ = seen_tx.send(cx.span().span_context().trace_id());
            async { StatusCode::OK }
        }),
    );
    let (service, _) = guarded(router, 20);
    let mut request = request("POST", "/orders");
    request.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01")
            .parse()
            .expect("a valid header"),
    );
    let response = service.oneshot(request).await.expect("answered");
    assert_eq!(response.status(), StatusCode::OK);

    assert_eq!(seen_rx.recv().await.expect("handled").to_string(), TRACE_ID);
    let spans = exporter.get_finished_spans().expect("spans");
    let server = spans
        .iter()
        .find(|s| s.name == "POST /orders")
        .expect("a server span named after the route");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(server.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(server.parent_span_id.to_string(), CALLER_SPAN_ID);
}
