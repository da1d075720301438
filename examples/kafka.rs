//! Kafka through a tower stack: publish with retry and timeout, consume in a consumer
//! group with `serve`, dead-letter what cannot be handled, and report the group's lag.
//!
//! ```sh
//! scripts/brokers up kafka
//! TOWER_MQ_KAFKA_BROKERS=127.0.0.1:19092 cargo run --example kafka --no-default-features --features kafka
//! ```
//!
//! The address comes from `TOWER_MQ_KAFKA_BROKERS` (default `127.0.0.1:9092`). The
//! stack is the project's retry (jittered backoff, transient errors only), circuit
//! breaker and timeout layers.

use std::future::IntoFuture;
use std::time::Duration;

use futures_util::StreamExt;
use tower::{service_fn, BoxError, ServiceBuilder, ServiceExt};
use tower_mq::kafka::{Admin, Config, Consumer, ConsumerConfig, Publisher, TopicSpec};
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::{serve, Delivery, Message, Permanent};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let brokers =
        std::env::var("TOWER_MQ_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let config = Config::new(brokers);
    let topic = format!("example-orders-{}", std::process::id());
    let dead_letter_topic = format!("{topic}.dlq");

    // Topics first (brokers may not create them on demand), then the group at the
    // topic's end, so it keeps everything published from now on.
    let admin = Admin::new(&config)?;
    admin
        .create_topics(&[
            TopicSpec::new(&topic).partitions(3),
            TopicSpec::new(&dead_letter_topic),
        ])
        .await?;
    admin.declare_group(&topic, "billing").await?;
    admin.declare_group(&dead_letter_topic, "audit").await?;

    // First layer added is outermost: each retry attempt gets its own 2 s timeout.
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(
            Backoff::exponential(Duration::from_millis(50), Duration::from_secs(2))
                .max_attempts(30),
        ))
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(Publisher::connect(&config).await?);

    for i in 0..5 {
        let order = Message::new(&topic, format!("{{\"order\":{i}}}"))
            .with_key(format!("customer-{}", i % 2))
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let receipt = publisher.clone().oneshot(order).await?;
        println!("published: {receipt}");
    }
    publisher
        .clone()
        .oneshot(Message::new(&topic, "not json").with_key("customer-0"))
        .await?;

    // The handler is a Service too: `serve` acks what it handled (the offset is
    // stored, then committed) and dead-letters permanent failures.
    let (done, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let handler = service_fn(move |delivery: Delivery| {
        let done = done.clone();
        async move {
            let body = String::from_utf8_lossy(delivery.message().payload()).into_owned();
            let _ = done.send(());
            if !body.starts_with('{') {
                return Err(BoxError::from(Permanent::new("payload is not JSON")));
            }
            println!("handled {body} (delivery {})", delivery.delivery_count());
            Ok(())
        }
    });
    let consumer = Consumer::subscribe(&config, ConsumerConfig::new(&topic, "billing")).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        serve(consumer, handler)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    for _ in 0..6 {
        handled.recv().await;
    }

    let mut dead_letters =
        Consumer::subscribe(&config, ConsumerConfig::new(&dead_letter_topic, "audit")).await?;
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
    let _ = stop.send(());
    let summary = server.await??;
    println!("served: {summary:?}");

    for lag in admin.consumer_group_lag("billing", &topic).await? {
        println!("billing lag on partition {}: {}", lag.partition, lag.lag);
    }
    Ok(())
}
