//! Redis Streams through a tower stack: publish with retry and timeout, consume in a
//! consumer group, acknowledge, and dead-letter what cannot be handled.
//!
//! ```sh
//! scripts/brokers up redis
//! TOWER_MQ_REDIS_URL=redis://127.0.0.1:16379 cargo run --example redis --features redis
//! ```
//!
//! The address comes from `TOWER_MQ_REDIS_URL` (default `redis://127.0.0.1:6379`).
//! The stack is the project's retry (jittered backoff, transient errors only), circuit
//! breaker and timeout layers.

use std::time::Duration;

use futures_util::StreamExt;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::redis::{Config, StreamConsumer, StreamConsumerConfig, StreamPublisher};
use tower_mq::Message;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let url =
        std::env::var("TOWER_MQ_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = Config::new(url);
    let stream = format!("example-orders-{}", std::process::id());

    // The consumer group exists before anything is published, so nothing is missed.
    let mut consumer = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(&stream, "billing").max_deliveries(3),
    )
    .await?;
    let mut dead_letters = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(tower_mq::dead_letter::destination_for(&stream), "audit"),
    )
    .await?;

    // First layer added is outermost: each retry attempt gets its own 2 s timeout.
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .max_attempts(30),
        ))
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(StreamPublisher::connect(&config).await?.max_len(10_000));

    for i in 0..5 {
        let order = Message::new(&stream, format!("{{\"order\":{i}}}"))
            .with_key(format!("customer-{}", i % 2))
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let receipt = publisher.clone().oneshot(order).await?;
        println!("published: {receipt}");
    }
    let poison = Message::new(&stream, "not json").with_header("tenant", "acme");
    publisher.clone().oneshot(poison).await?;

    for _ in 0..6 {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery?;
        let body = String::from_utf8_lossy(delivery.message().payload()).into_owned();
        if body.starts_with('{') {
            println!("handled {body} (delivery {})", delivery.delivery_count());
            delivery.ack().await?;
        } else {
            println!("rejecting {body:?}");
            delivery.reject("payload is not JSON").await?;
        }
    }

    if let Some(letter) = dead_letters.next().await {
        let letter = letter?;
        println!(
            "dead letter: {:?} because {:?}",
            String::from_utf8_lossy(letter.message().payload()),
            letter
                .message()
                .headers()
                .get_str(tower_mq::dead_letter::REASON)
        );
        letter.ack().await?;
    }

    // The example's streams are not needed any more.
    let mut conn = config.connect().await?;
    let () = redis::cmd("DEL")
        .arg(&stream)
        .arg(tower_mq::dead_letter::destination_for(&stream))
        .query_async(&mut conn)
        .await?;
    Ok(())
}
