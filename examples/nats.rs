//! NATS end to end: JetStream publishing through a tower stack (retry on transient
//! errors + timeout), deduplication of a retried publish, a durable consumer driven by
//! `serve` with a dead-letter subject, and core request/reply.
//!
//! Needs a nats-server with JetStream at `TOWER_MQ_NATS_URL` (default
//! `nats://127.0.0.1:4222`; `scripts/brokers up nats` starts one on port 14222):
//!
//! ```text
//! TOWER_MQ_NATS_URL=nats://127.0.0.1:14222 cargo run --example nats --no-default-features --features nats
//! ```

use std::future::IntoFuture;
use std::time::Duration;

use futures_util::StreamExt;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::nats::config::{ConsumerConfig, StreamConfig};
use tower_mq::nats::jetstream::JetStream;
use tower_mq::nats::{Config, Connection, Publisher, Requester, Subscriber};
use tower_mq::{serve, BoxError, Delivery, Message, Permanent};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("TOWER_MQ_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let connection = Connection::connect(&Config::new(&url).name("tower-mq-example")).await?;
    let js = JetStream::new(&connection);

    // Topology from configuration: the orders stream, its dead letters, a consumer.
    js.declare_stream(
        &StreamConfig::new("EXAMPLE_ORDERS", ["example.orders.>"])
            .duplicate_window(Duration::from_secs(120)),
    )
    .await?;
    js.declare_stream(&StreamConfig::new("EXAMPLE_DEAD", ["example.dead.>"]))
        .await?;
    let billing = ConsumerConfig::new("billing")
        .ack_wait(Duration::from_secs(10))
        .max_deliveries(3)
        .dead_letter("example.dead.orders");
    js.declare_consumer("EXAMPLE_ORDERS", &billing).await?;
    let ops = ConsumerConfig::new("ops");
    js.declare_consumer("EXAMPLE_DEAD", &ops).await?;

    // The publishing stack; the first layer added is the outermost. Every attempt of a
    // message carries the same Nats-Msg-Id (its message id), so a retry after an ack
    // timeout cannot store it twice.
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .max_attempts(30),
        ))
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(js.publisher());

    let run = std::process::id();
    for (i, body) in ["order 1", "order 2", "poison", "order 3"]
        .iter()
        .enumerate()
    {
        let message = Message::new("example.orders.created", *body)
            .with_message_id(format!("order-{run}-{i}"))
            .with_content_type("text/plain");
        let receipt = publisher.clone().oneshot(message).await?;
        println!("published {body:?}: {receipt}");
    }
    // The same message id again, as a retry would send it: stored once.
    let again =
        Message::new("example.orders.created", "order 1").with_message_id(format!("order-{run}-0"));
    println!(
        "published again: {}",
        publisher.clone().oneshot(again).await?
    );

    // Handle orders with `serve`: Ok acks, a permanent error dead-letters at once.
    let handler = service_fn(|delivery: Delivery| async move {
        let body = String::from_utf8_lossy(delivery.message().payload()).into_owned();
        if body == "poison" {
            return Err(BoxError::from(Permanent::new("cannot bill a poison order")));
        }
        println!("billed {body:?} (delivery {})", delivery.delivery_count());
        Ok::<_, BoxError>(())
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        serve(js.consumer("EXAMPLE_ORDERS", &billing).await?, handler)
            .concurrency(4)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );

    let mut dead_letters = js.consumer("EXAMPLE_DEAD", &ops).await?;
    if let Some(letter) = dead_letters.next().await {
        let letter = letter?;
        let headers = letter.message().headers();
        println!(
            "dead letter {:?}: {}",
            String::from_utf8_lossy(letter.message().payload()),
            headers
                .get_str(tower_mq::dead_letter::REASON)
                .unwrap_or("?")
        );
        letter.ack().await?;
    }
    stop.send(()).ok();
    let summary = server.await??;
    println!("serve: {summary:?}");

    // Core NATS request/reply over an inbox.
    let mut requests = Subscriber::subscribe(&connection, "example.upper").await?;
    let replies = Publisher::new(&connection);
    tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            if let Some(inbox) = request.message().reply_to() {
                let text = String::from_utf8_lossy(request.message().payload()).to_uppercase();
                let _ = replies.clone().oneshot(Message::new(inbox, text)).await;
            }
        }
    });
    let reply = Requester::new(&connection)
        .timeout(Duration::from_secs(2))
        .oneshot(Message::new("example.upper", "hello nats"))
        .await?;
    println!("reply: {:?}", String::from_utf8_lossy(reply.payload()));
    Ok(())
}
