//! The breaker and retry on an HTTP service: responses count, not only errors.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_mq_layers::circuit_breaker::{error::CircuitOpen, CircuitState};
use tower_mq_layers::classify::http_response;
use tower_mq_layers::retry::{Backoff, HttpRequests};
use tower_mq_layers::{CircuitBreakerLayer, RetryLayer};

/// An HTTP service answering with `statuses` in turn (the last one from then on),
/// counting its calls. Its error type is `Infallible`, as axum's routers' is.
fn answering(
    statuses: &'static [u16],
) -> (
    impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send> + Clone,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let service = service_fn(move |_: Request<String>| {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        let status = statuses[n.min(statuses.len() - 1)];
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(String::new())
                    .expect("a valid response"),
            )
        }
    });
    (service, calls)
}

fn request() -> Request<String> {
    Request::new("order".to_owned())
}

#[tokio::test(start_paused = true)]
async fn server_errors_open_the_breaker() {
    let (inner, calls) = answering(&[503]);
    let breaker = CircuitBreakerLayer::new()
        .count_window(4)
        .minimum_calls(4)
        .classify_responses(http_response::<String>);
    let circuit = breaker.handle();
    let mut service = ServiceBuilder::new().layer(breaker).service(inner);
    for _ in 0..4 {
        let response = service.ready().await.unwrap().call(request()).await;
        assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(circuit.state(), CircuitState::Open);
    let rejected = service.ready().await.unwrap().call(request()).await;
    assert!(rejected.unwrap_err().is::<CircuitOpen>());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "the open circuit called nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn client_errors_do_not_open_the_breaker() {
    let (inner, _) = answering(&[404]);
    let breaker = CircuitBreakerLayer::new()
        .count_window(4)
        .minimum_calls(4)
        .classify_responses(http_response::<String>);
    let circuit = breaker.handle();
    let mut service = ServiceBuilder::new().layer(breaker).service(inner);
    for _ in 0..8 {
        let response = service.ready().await.unwrap().call(request()).await;
        assert_eq!(response.unwrap().status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(circuit.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn retry_tries_again_after_a_503_and_returns_the_success() {
    let (inner, calls) = answering(&[503, 502, 200]);
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new(Backoff::exponential(
                Duration::from_millis(10),
                Duration::from_secs(1),
            ))
            .classify_responses(http_response::<String>)
            .clone_requests_with(HttpRequests),
        )
        .service(inner);
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_gives_the_last_response_when_attempts_run_out() {
    let (inner, calls) = answering(&[503]);
    let service = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1))
                    .max_attempts(3),
            )
            .classify_responses(http_response::<String>)
            .clone_requests_with(HttpRequests),
        )
        .service(inner);
    let response = service.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// Runs `calls` under a recorder of its own and returns `messaging_messages_total` by
/// the value of its `label`, sorted.
fn messages_total_by(
    label: &str,
    calls: impl std::future::Future<Output = ()>,
) -> Vec<(String, u64)> {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(calls));
    let mut counted: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "messaging_messages_total")
        .filter_map(|(key, _, _, value)| {
            let value_of_label = key
                .key()
                .labels()
                .find(|l| l.key() == label)?
                .value()
                .to_owned();
            match value {
                DebugValue::Counter(n) => Some((value_of_label, n)),
                _ => None,
            }
        })
        .collect();
    counted.sort();
    counted
}

fn get(path: &str) -> Request<String> {
    Request::builder()
        .uri(path)
        .body(String::new())
        .expect("a valid request")
}

#[test]
fn metrics_label_an_http_service_per_route() {
    use tower_mq_core::Operation;
    use tower_mq_layers::metrics::{HttpPath, MetricsLayer};

    let counted = messages_total_by("destination", async {
        let (inner, _) = answering(&[200]);
        let mut service = MetricsLayer::new("http", Operation::Handle)
            .labeller(HttpPath)
            .layer(inner);
        for path in ["/orders", "/orders", "/health"] {
            let response = service.ready().await.unwrap().call(get(path)).await;
            assert_eq!(response.unwrap().status(), StatusCode::OK);
        }
    });
    assert_eq!(
        counted,
        [("/health".to_owned(), 1), ("/orders".to_owned(), 2)]
    );
}

#[test]
fn metrics_count_a_5xx_as_a_failure_when_responses_are_classified() {
    use tower_mq_core::Operation;
    use tower_mq_layers::metrics::{HttpPath, MetricsLayer};

    let outcomes = messages_total_by("outcome", async {
        let (inner, _) = answering(&[503, 404, 200]);
        let mut service = MetricsLayer::new("http", Operation::Handle)
            .labeller(HttpPath)
            .classify_responses(http_response)
            .layer(inner);
        for _ in 0..3 {
            service
                .ready()
                .await
                .unwrap()
                .call(get("/orders"))
                .await
                .unwrap();
        }
    });
    // The 503 is a transient failure; a 404 is the caller's mistake, not the service's.
    assert_eq!(
        outcomes,
        [("ok".to_owned(), 2), ("transient_error".to_owned(), 1)]
    );
}
