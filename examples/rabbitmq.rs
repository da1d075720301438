//! Publishing to RabbitMQ through a retry + circuit breaker + timeout stack, and
//! consuming with manual acknowledgements.
//!
//! ```sh
//! scripts/brokers up rabbitmq && eval "$(scripts/brokers env)"
//! cargo run --example rabbitmq --no-default-features --features rabbitmq
//! ```
//!
//! The address comes from `TOWER_MQ_AMQP_URL` (default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`). Stop and start the broker while it runs:
//! publishes wait (readiness) or are retried (transient errors), and nothing is lost.
//!
//! The stack is the project's retry (jittered backoff, transient errors only), circuit
//! breaker and timeout layers.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::rabbitmq::{Binding, Config, Connection, Exchange, Queue, Topology};
use tower_mq::Message;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url = std::env::var("TOWER_MQ_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let topology = Topology::new()
        .exchange(Exchange::topic("tower-mq.example.orders"))
        .exchange(Exchange::fanout("tower-mq.example.dlx"))
        .queue(
            Queue::classic("tower-mq.example.billing").dead_letter_exchange("tower-mq.example.dlx"),
        )
        .queue(Queue::classic("tower-mq.example.dead"))
        .binding(Binding::queue(
            "tower-mq.example.billing",
            "tower-mq.example.orders",
            "order.*",
        ))
        .binding(Binding::queue(
            "tower-mq.example.dead",
            "tower-mq.example.dlx",
            "",
        ));
    let connection = Connection::connect(
        &Config::new(url)
            .connection_name("tower-mq example")
            .heartbeat(Duration::from_secs(5))
            .topology(topology),
    )
    .await?;

    // Stacking order: the first layer added is the outermost.
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .max_attempts(30),
        ))
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(connection.publisher());

    const COUNT: usize = 1_000;
    let consumer = connection.consumer("tower-mq.example.billing").await?;
    let receiving = tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut consumer = consumer;
        while seen.len() < COUNT {
            match consumer.next().await {
                Some(Ok(delivery)) => {
                    let body = String::from_utf8_lossy(delivery.message().payload()).into_owned();
                    if delivery.ack().await.is_ok() {
                        seen.insert(body);
                    }
                }
                Some(Err(error)) => eprintln!("receive failed: {error}"),
                None => break,
            }
        }
        seen.len()
    });

    let receipts = futures_util::stream::iter(0..COUNT)
        .map(|i| {
            let message = Message::new("tower-mq.example.orders", format!("order {i}"))
                .with_key("order.created")
                .with_message_id(format!("order-{i}"))
                .with_content_type("text/plain");
            publisher.clone().oneshot(message)
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let failed = receipts.iter().filter(|r| r.is_err()).count();
    println!(
        "published {COUNT}: {} confirmed, {failed} failed",
        COUNT - failed
    );
    let received = tokio::time::timeout(Duration::from_secs(60), receiving).await??;
    println!("received {received} distinct messages");
    connection.close();
    Ok(())
}
