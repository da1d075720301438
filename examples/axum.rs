//! An axum service that publishes orders to NATS through a tower-mq stack, and
//! consumes them with `serve`, in one process.
//!
//! ```sh
//! scripts/brokers up nats
//! TOWER_MQ_NATS_URL=nats://127.0.0.1:14222 cargo run --example axum
//! curl -i -X POST localhost:3000/orders -H 'content-type: application/json' -d '{"id":"42","item":"book"}'
//! curl localhost:3000/orders/42   # once consumed
//! curl localhost:3000/health
//! curl localhost:3000/metrics
//! ```
//!
//! The address comes from `TOWER_MQ_NATS_URL` (default `nats://127.0.0.1:4222`); the
//! HTTP port from `PORT` (default 3000). Ctrl-C shuts down gracefully: the HTTP server
//! stops accepting and finishes the requests in flight, then the `serve` loop settles
//! the deliveries in flight.
//!
//! - `POST /orders` publishes the order (a JSON object with an `id`) and answers
//!   `202 Accepted` once NATS confirmed it.
//! - A `serve` loop consumes the orders (in a queue group, so several instances share
//!   the work) and keeps them in memory; `GET /orders/{id}` shows one.
//! - `GET /metrics` serves the Prometheus text of the publisher's and the handler's
//!   metrics, and of `serve`'s settlements; `GET /health` reports the NATS connection and each circuit as
//!   `ready`, `degraded` or `down`.
//!
//! The same layer types guard both sides: the publisher gets retry, a circuit breaker
//! and a timeout (plus metrics), and so does the POST route. The route's breaker judges
//! responses (a 5xx counts as a failure), and its retry copies requests with
//! [`HttpRequests`] (an HTTP request is not `Clone`; its body is read into memory
//! first).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_mq::layers::circuit_breaker::error::CircuitOpen;
use tower_mq::layers::circuit_breaker::{CircuitBreakerHandle, CircuitState};
use tower_mq::layers::classify::http_response;
use tower_mq::layers::metrics::{prometheus_builder, PrometheusHandle};
use tower_mq::layers::retry::{Backoff, HttpRequests};
use tower_mq::layers::timeout::error::Elapsed;
use tower_mq::layers::{CircuitBreakerLayer, MetricsLayer, RetryLayer, TimeoutLayer};
use tower_mq::nats::{Config, Connection, Publisher, Subscriber};
use tower_mq::{serve, Delivery, Message, Receipt};

/// The largest order body the route reads.
const MAX_ORDER_BYTES: usize = 64 * 1024;

/// What a request handler needs: shared by every request (axum `State` is cloned per
/// request, so everything here is cheap to clone, `Send` and `Sync`).
#[derive(Clone)]
struct App {
    /// The publishing stack, boxed: retry, breaker, timeout and metrics over NATS.
    publisher: BoxCloneSyncService<Message, Receipt, BoxError>,
    /// The subject orders are published to.
    subject: String,
    connection: Connection,
    /// Every circuit breaker, by name, for `/health`.
    circuits: Vec<(&'static str, CircuitBreakerHandle)>,
    orders: Orders,
    metrics: PrometheusHandle,
}

/// The orders the `serve` loop consumed, by id (a stand-in for a database).
#[derive(Clone)]
struct Orders(tokio::sync::watch::Sender<HashMap<String, serde_json::Value>>);

impl Orders {
    fn new() -> Self {
        Orders(tokio::sync::watch::Sender::new(HashMap::new()))
    }
}

impl App {
    /// Connects to NATS and builds the publishing stack.
    async fn connect(url: &str, subject: &str, metrics: PrometheusHandle) -> Result<App, BoxError> {
        let connection = Connection::connect(&Config::new(url)).await?;

        // First layer added is outermost: each attempt is timed and counted by the
        // breaker; metrics, innermost, see every attempt.
        let publisher_breaker = CircuitBreakerLayer::new().label("circuit", "publisher");
        let publisher_circuit = publisher_breaker.handle();
        let publisher = ServiceBuilder::new()
            .layer(
                RetryLayer::new(
                    Backoff::exponential(Duration::from_millis(20), Duration::from_secs(1))
                        .max_attempts(4),
                )
                .label("retry", "publisher"),
            )
            .layer(publisher_breaker)
            .layer(TimeoutLayer::new(Duration::from_secs(2)))
            .layer(MetricsLayer::publish("nats"))
            .service(Publisher::new(&connection));

        Ok(App {
            publisher: BoxCloneSyncService::new(publisher),
            subject: subject.to_owned(),
            connection,
            circuits: vec![("publisher", publisher_circuit)],
            orders: Orders::new(),
            metrics,
        })
    }
}

/// The HTTP side: the routes, with the POST route guarded by retry, a breaker and a
/// timeout.
fn router(mut app: App) -> Router {
    // A 5xx response counts as a failure, like an error.
    let route_breaker = CircuitBreakerLayer::new()
        .label("circuit", "post_orders")
        .classify_responses(http_response::<Body>);
    app.circuits.push(("post_orders", route_breaker.handle()));
    let guarded = ServiceBuilder::new()
        // The layers fail with `BoxError`; axum needs a response.
        .layer(HandleErrorLayer::new(route_error))
        // Retry copies requests, so the body is read into memory first.
        .layer_fn(buffered)
        // Retries what failed with an error (a timeout, the open circuit); a 503 from a
        // failed publish is not retried here: the publisher's own retry already was.
        .layer(
            RetryLayer::new(
                Backoff::exponential(Duration::from_millis(20), Duration::from_millis(200))
                    .max_attempts(2),
            )
            .clone_requests_with(HttpRequests)
            .label("retry", "post_orders"),
        )
        .layer(route_breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .map_request(|request: Request<Bytes>| request.map(Body::from));

    Router::new()
        .route("/orders", post(publish_order).layer(guarded))
        .route("/orders/{id}", get(order))
        .route("/health", get(health))
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { app.metrics.render() }),
        )
        .with_state(app)
}

/// `POST /orders`: publishes the order; `202 Accepted` once NATS confirmed it.
async fn publish_order(State(app): State<App>, Json(order): Json<serde_json::Value>) -> Response {
    let Some(id) = order["id"].as_str().map(str::to_owned) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            "an order needs a string `id`",
        )
            .into_response();
    };
    let message = Message::new(&app.subject, order.to_string())
        .with_message_id(id.clone())
        .with_content_type("application/json");
    match app.publisher.oneshot(message).await {
        Ok(_receipt) => (StatusCode::ACCEPTED, Json(json!({ "id": id }))).into_response(),
        Err(error) => {
            tracing::warn!(%error, order = %id, "publishing failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the order could not be published",
            )
                .into_response()
        }
    }
}

/// `GET /orders/{id}`: the order once the `serve` loop consumed it.
async fn order(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.orders.0.borrow().get(&id) {
        Some(order) => Json(order.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /health`: the NATS connection and each circuit as `ready`, `degraded`
/// (half-open: trial calls) or `down`; `503` when anything is down.
async fn health(State(app): State<App>) -> (StatusCode, Json<serde_json::Value>) {
    let broker = if app.connection.is_connected() {
        "ready"
    } else {
        "down"
    };
    let circuits: serde_json::Map<String, serde_json::Value> = app
        .circuits
        .iter()
        .map(|(name, circuit)| (name.to_string(), condition(circuit.state()).into()))
        .collect();
    let parts: Vec<&str> = std::iter::once(broker)
        .chain(app.circuits.iter().map(|(_, c)| condition(c.state())))
        .collect();
    let status = if parts.contains(&"down") {
        "down"
    } else if parts.contains(&"degraded") {
        "degraded"
    } else {
        "ready"
    };
    let code = if status == "down" {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": status,
        "brokers": { "nats": broker },
        "circuits": circuits,
    });
    (code, Json(body))
}

/// A circuit's state as `/health` reports it.
fn condition(state: CircuitState) -> &'static str {
    match state {
        CircuitState::Closed | CircuitState::Disabled => "ready",
        CircuitState::HalfOpen => "degraded",
        _ => "down",
    }
}

/// What the guarded route answers when a layer failed the request.
async fn route_error(error: BoxError) -> (StatusCode, String) {
    if error.is::<CircuitOpen>() {
        (StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    } else if error.is::<Elapsed>() {
        (StatusCode::GATEWAY_TIMEOUT, error.to_string())
    } else if error.is::<axum::Error>() {
        (
            StatusCode::BAD_REQUEST,
            format!("reading the body: {error}"),
        )
    } else {
        (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

/// Reads the request body into memory (at most [`MAX_ORDER_BYTES`]) so that the retry
/// layer inside can copy the request, then calls `inner` with it.
fn buffered<S>(
    inner: S,
) -> impl Service<Request<Body>, Response = S::Response, Error = BoxError, Future: Send>
       + Clone
       + Send
       + Sync
where
    S: Service<Request<Bytes>, Error: Into<BoxError>, Future: Send> + Clone + Send + Sync + 'static,
{
    service_fn(move |request: Request<Body>| {
        // axum calls route services with `oneshot` on a clone; so does this one.
        let inner = inner.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, MAX_ORDER_BYTES).await?;
            inner
                .oneshot(Request::from_parts(parts, body))
                .await
                .map_err(Into::into)
        }
    })
}

/// The consumer's handler: keeps the order. A payload that is not JSON fails
/// permanently (core NATS cannot redeliver it; `serve` counts it as dropped).
fn handler(
    orders: Orders,
) -> impl Service<Delivery, Response = (), Error = BoxError, Future: Send> + Clone {
    let keep = service_fn(move |delivery: Delivery| {
        let orders = orders.clone();
        async move {
            let order: serde_json::Value = serde_json::from_slice(delivery.message().payload())
                .map_err(tower_mq::Permanent::new)?;
            let id = order["id"].as_str().unwrap_or_default().to_owned();
            orders.0.send_modify(|orders| {
                orders.insert(id, order);
            });
            Ok::<_, BoxError>(())
        }
    });
    ServiceBuilder::new()
        .layer(MetricsLayer::handle("nats"))
        .service(keep)
}

/// Runs the app on `listener` until `shutdown` resolves, then drains: the HTTP server
/// first (no new orders), then the `serve` loop.
async fn run(
    app: App,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<tower_mq::serve::Summary, BoxError> {
    let orders =
        Subscriber::queue_subscribe(&app.connection, app.subject.clone(), "order-keepers").await?;
    let (stop_consuming, consuming_stopped) = tokio::sync::oneshot::channel::<()>();
    let consuming = tokio::spawn(
        serve(orders, handler(app.orders.clone()))
            .with_graceful_shutdown(async {
                consuming_stopped.await.ok();
            })
            .into_future(),
    );

    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await?;
    let _ = stop_consuming.send(());
    consuming.await?
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("TOWER_MQ_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    // The recorder goes in before any layer records.
    let metrics = prometheus_builder()?.install_recorder()?;
    let app = App::connect(&url, "orders.created", metrics).await?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let summary = run(app, listener, async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await?;
    println!("stopped: {summary:?}");
    Ok(())
}

/// Drives the app with real HTTP requests against a real NATS (`TOWER_MQ_NATS_URL`,
/// default the project harness's `nats://127.0.0.1:14222`):
/// `cargo test --example axum`.
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// How long anything here may take.
    const WAIT: Duration = Duration::from_secs(15);

    /// One HTTP/1.1 request on a connection of its own: the status and the body.
    async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
                 content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
        };
        let response = match tokio::time::timeout(WAIT, exchange).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => panic!("{method} {path}: {error}"),
            Err(_) => panic!("{method} {path}: no response within {WAIT:?}"),
        };
        let (head, body) = response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("{method} {path}: not an HTTP response: {response:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no status in {head:?}"));
        (status, body.to_owned())
    }

    #[tokio::test]
    async fn an_order_posted_over_http_is_published_consumed_and_counted() {
        let url =
            std::env::var("TOWER_MQ_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:14222".into());
        let recorder = prometheus_builder()
            .and_then(|builder| builder.install_recorder())
            .unwrap_or_else(|error| panic!("installing the Prometheus recorder: {error}"));
        let subject = format!("tmq-axum-{}-{}.created", std::process::id(), nuid_ish());
        let app = App::connect(&url, &subject, recorder.clone())
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "NATS is not reachable at {url} (env TOWER_MQ_NATS_URL): {error}. \
                 Run scripts/brokers up nats."
                )
            });
        let mut consumed = app.orders.0.subscribe();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("an ephemeral loopback port");
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(run(app, listener, async {
            stopped.await.ok();
        }));

        let (status, body) = http(addr, "POST", "/orders", r#"{"id":"42","item":"book"}"#).await;
        assert_eq!(status, 202, "{body}");
        assert!(body.contains(r#""id":"42""#), "{body}");

        tokio::time::timeout(WAIT, consumed.wait_for(|orders| orders.contains_key("42")))
            .await
            .expect("the serve loop consumed the order in time")
            .expect("the app is running");
        let (status, body) = http(addr, "GET", "/orders/42", "").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(r#""item":"book""#), "{body}");

        let (status, body) = http(addr, "POST", "/orders", r#"{"item":"no id"}"#).await;
        assert_eq!(status, 422, "an order without an id is refused: {body}");

        let (status, metrics) = http(addr, "GET", "/metrics", "").await;
        assert_eq!(status, 200, "{metrics}");
        let published = metrics
            .lines()
            .find(|line| {
                line.starts_with("messaging_messages_total{")
                    && line.contains(r#"operation="publish""#)
                    && line.contains(r#"outcome="ok""#)
                    && line.contains(&format!(r#"destination="{subject}""#))
            })
            .unwrap_or_else(|| panic!("no publish counter in /metrics:\n{metrics}"));
        assert!(published.ends_with(" 1"), "one publish: {published}");
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("messaging_messages_total{")
                    && line.contains(r#"operation="handle""#)
                    && line.contains(r#"outcome="ok""#)),
            "no handle counter in /metrics:\n{metrics}"
        );

        let (status, health) = http(addr, "GET", "/health", "").await;
        assert_eq!(status, 200, "{health}");
        let health: serde_json::Value = serde_json::from_str(&health)
            .unwrap_or_else(|error| panic!("/health is not JSON ({error}): {health}"));
        assert_eq!(
            health,
            json!({
                "status": "ready",
                "brokers": { "nats": "ready" },
                "circuits": { "publisher": "ready", "post_orders": "ready" },
            })
        );

        stop.send(()).expect("the app is running");
        let summary = tokio::time::timeout(WAIT, running)
            .await
            .expect("shutdown drained in time")
            .expect("the app task did not panic")
            .expect("the app stopped cleanly");
        assert_eq!(summary.received, 1, "{summary:?}");
        assert_eq!(
            summary.dropped + summary.nacked + summary.rejected,
            0,
            "{summary:?}"
        );
        // Once `serve` returned, its settlement is counted too.
        let metrics = recorder.render();
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("messaging_settlements_total{")
                    && line.contains(&format!(r#"destination="{subject}""#))
                    && line.contains(r#"settlement="acked""#)
                    && line.ends_with(" 1")),
            "no settlement counter in /metrics:\n{metrics}"
        );
    }

    /// A number no other run uses at the same time.
    fn nuid_ish() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    }
}
