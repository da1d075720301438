//! Publishing to RabbitMQ through a retry + timeout stack, and consuming with manual
//! acknowledgements.
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
//! The stack uses tower's own `retry` and `timeout`; tower-mq-layers' retry (with
//! jitter and a budget) and circuit breaker drop in at the same places.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use tower::retry::Policy;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::classify::{Classifier, DefaultClassifier};
use tower_mq::rabbitmq::{Binding, Config, Connection, Exchange, Queue, Topology};
use tower_mq::{ErrorKind, Message, Receipt};

/// Retries what the error chain classifies as transient, with capped exponential
/// backoff.
#[derive(Clone)]
struct RetryTransient {
    attempt: u32,
    max_attempts: u32,
}

impl Policy<Message, Receipt, BoxError> for RetryTransient {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _: &mut Message,
        result: &mut Result<Receipt, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if DefaultClassifier::new().classify(error) != ErrorKind::Transient
            || self.attempt >= self.max_attempts
        {
            return None;
        }
        self.attempt += 1;
        let delay =
            (Duration::from_millis(50) * 2u32.pow(self.attempt.min(6))).min(Duration::from_secs(2));
        eprintln!(
            "transient failure, retry {} in {delay:?}: {error}",
            self.attempt
        );
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, request: &Message) -> Option<Message> {
        Some(request.clone())
    }
}

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
        Config::new(url)
            .connection_name("tower-mq example")
            .heartbeat(Duration::from_secs(5))
            .topology(topology),
    )
    .await?;

    // Stacking order: the first layer added is the outermost.
    let publisher = ServiceBuilder::new()
        .retry(RetryTransient {
            attempt: 0,
            max_attempts: 30,
        })
        .timeout(Duration::from_secs(5))
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
