//! Quickstart: publish through a tower stack, handle with `serve`, watch a poison
//! message land in the dead-letter topic. Runs on the in-memory broker, so it needs no
//! running broker:
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mq::dead_letter;
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::memory::Broker;
use tower_mq::{serve, BoxError, Delivery, Message, Permanent, Transient};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let broker = Broker::new();
    // A durable group: the billing service's work queue on the `orders` topic.
    let consumer = broker.consumer("orders", "billing")?;
    // Whatever billing gives up on lands in `orders.dlq`.
    let mut dead_letters = broker.consumer("orders.dlq", "ops")?;

    // Publishing is a tower Service; layers stack the same way they do over HTTP.
    // The first layer added is the outermost.
    // Retry transient failures with jittered backoff, stop calling a failing broker
    // (the circuit breaker), bound each attempt, and cap what is in flight.
    let mut publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_secs(1),
        )))
        .layer(CircuitBreakerLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .concurrency_limit(64)
        .service(broker.publisher());

    // Handling is a tower Service too. The payment gateway is flaky once; the
    // malformed order can never be billed.
    let (billed_tx, mut billed) = mpsc::unbounded_channel::<String>();
    let gateway_hiccup = Arc::new(AtomicBool::new(true));
    let handler = ServiceBuilder::new()
        .concurrency_limit(4)
        .timeout(Duration::from_secs(1))
        .service_fn(move |delivery: Delivery| {
            let billed = billed_tx.clone();
            let gateway_hiccup = gateway_hiccup.clone();
            async move {
                let order = String::from_utf8_lossy(delivery.message().payload()).into_owned();
                let attempt = delivery.delivery_count();
                if order.contains("malformed") {
                    println!("  handler: {order} is malformed (attempt {attempt}): permanent failure");
                    return Err(BoxError::from(Permanent::new(format!("cannot parse {order}"))));
                }
                if order == "order-2" && gateway_hiccup.swap(false, Ordering::SeqCst) {
                    println!("  handler: payment gateway busy for {order} (attempt {attempt}): transient failure");
                    return Err(BoxError::from(Transient::new("payment gateway busy")));
                }
                println!("  handler: billed {order} (attempt {attempt})");
                let _ = billed.send(order);
                Ok(())
            }
        });

    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        serve(consumer, handler)
            .concurrency(8)
            .max_deliveries(3)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );

    for order in ["order-1", "order-2", "order-3-malformed", "order-4"] {
        let message = Message::new("orders", order)
            .with_key("customer-7")
            .with_content_type("text/plain");
        let receipt = publisher.ready().await?.call(message).await?;
        println!("published {order}: {receipt}");
    }

    let letter = tokio::time::timeout(Duration::from_secs(5), dead_letters.next())
        .await?
        .ok_or("the dead-letter consumer closed")??;
    let headers = letter.message().headers();
    println!(
        "dead letter: {} (reason: {}, delivered {} time(s))",
        String::from_utf8_lossy(letter.message().payload()),
        headers.get_str(dead_letter::REASON).unwrap_or("?"),
        headers.get_str(dead_letter::DELIVERIES).unwrap_or("?"),
    );
    letter.ack().await?;

    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), billed.recv())
            .await?
            .ok_or("the handler went away")?;
    }

    stop.send(()).ok();
    let summary = server.await??;
    println!(
        "served {} deliveries: {} acked, {} nacked for retry, {} dead-lettered",
        summary.received, summary.acked, summary.nacked, summary.rejected
    );
    Ok(())
}
