//! The layers stacked the way an application would: a typed, traced, measured,
//! compressed publisher on one side; a measured, traced, dead-lettering, deduplicating,
//! decompressing, decoding handler on the other. Messages travel between them as
//! `Message` values, as they would through any broker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_mq_core::{Guarantee, Position};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_mq_core::{BoxError, Delivery, Message, Permanent, Receipt, Settlement};
use tower_mq_layers::compression::Encoding;
use tower_mq_layers::dead_letter::headers;
use tower_mq_layers::dedup::MemoryStore;
use tower_mq_layers::{
    CompressLayer, DeadLetterLayer, DecodeLayer, DecompressLayer, DedupLayer, EncodeLayer,
    MetricsLayer, TraceLayer,
};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Order {
    id: u32,
    note: String,
}

/// A publisher that hands messages to a channel, standing for the broker in between.
fn channel_publisher(
    tx: mpsc::UnboundedSender<Message>,
) -> impl tower::Service<Message, Response = Receipt, Error = BoxError, Future = impl Send> + Clone
{
    let seq = Arc::new(AtomicUsize::new(0));
    service_fn(move |msg: Message| {
        let tx = tx.clone();
        let seq = seq.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        async move {
            let receipt = Receipt::new("memory", msg.destination(), Guarantee::Stored)
                .with_position(Position::Sequence(seq));
            tx.send(msg)?;
            Ok::<_, BoxError>(receipt)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_typed_message_survives_the_round_trip_and_bad_ones_are_dead_lettered() {
    let (wire_tx, mut wire) = mpsc::unbounded_channel();
    let (dlq_tx, mut dlq) = mpsc::unbounded_channel();

    // Outermost first: Encode turns an Order into a Message for the layers below.
    let publisher = ServiceBuilder::new()
        .layer(
            EncodeLayer::<Order>::json("orders").message(|order: &Order, msg: Message| {
                msg.with_message_id(format!("order-{}", order.id))
            }),
        )
        .layer(MetricsLayer::publish("memory"))
        .layer(TraceLayer::publish("memory"))
        .layer(CompressLayer::new(Encoding::Gzip).min_size(32))
        .service(channel_publisher(wire_tx.clone()));

    let handled = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = handled.clone();
    let handler = service_fn(move |(order, _delivery): (Order, Delivery)| {
        let seen = seen.clone();
        async move {
            if order.note == "reject me" {
                return Err::<(), BoxError>(Permanent::new("order refused").into());
            }
            seen.lock().map_err(|_| "poisoned")?.push(order);
            Ok(())
        }
    });
    let handler = ServiceBuilder::new()
        .layer(MetricsLayer::handle("memory"))
        .layer(TraceLayer::process("memory"))
        .layer(DeadLetterLayer::new(channel_publisher(dlq_tx)))
        .layer(DedupLayer::new(MemoryStore::new(
            1000,
            Duration::from_secs(600),
        )))
        .layer(DecompressLayer::new())
        .layer(DecodeLayer::<Order>::json())
        .service(handler);

    let big = Order {
        id: 1,
        note: "x".repeat(500),
    };
    publisher
        .clone()
        .oneshot(big.clone())
        .await
        .expect("published");
    publisher
        .clone()
        .oneshot(Order {
            id: 2,
            note: "reject me".into(),
        })
        .await
        .expect("published");

    let first = wire.recv().await.expect("on the wire");
    assert_eq!(first.content_encoding(), Some("gzip"));
    assert_eq!(first.content_type(), Some("application/json"));
    let second = wire.recv().await.expect("on the wire");
    assert_eq!(second.content_encoding(), None, "below the size threshold");

    // The same message delivered twice (a redelivery after a lost ack), then the bad one.
    assert_eq!(first.message_id(), Some("order-1"));
    let d1 = Delivery::unacknowledged(first.clone());
    handler.clone().oneshot(d1).await.expect("handled");
    let d1_again = Delivery::unacknowledged(first).with_delivery_count(2);
    handler
        .clone()
        .oneshot(d1_again.clone())
        .await
        .expect("skipped");
    assert_eq!(d1_again.settlement(), Some(Settlement::Acked));
    assert_eq!(*handled.lock().expect("lock"), vec![big]);

    let d2 = Delivery::unacknowledged(second);
    handler
        .clone()
        .oneshot(d2.clone())
        .await
        .expect("dead-lettered");
    assert_eq!(d2.settlement(), Some(Settlement::Acked));
    let dead = dlq.recv().await.expect("dead letter");
    assert_eq!(dead.destination(), "orders.dlq");
    assert_eq!(
        dead.headers().get_str(headers::REASON),
        Some("order refused")
    );
    assert_eq!(handled.lock().expect("lock").len(), 1);

    // A payload that is not an Order never reaches the handler and is dead-lettered too.
    let garbage = Delivery::unacknowledged(Message::new("orders", "{not json"));
    handler
        .oneshot(garbage.clone())
        .await
        .expect("dead-lettered");
    let dead = dlq.recv().await.expect("dead letter");
    assert_eq!(
        dead.headers().get_str(headers::ERROR_KIND),
        Some("permanent")
    );
    assert!(
        dead.headers()
            .get_str(headers::REASON)
            .is_some_and(|r| r.contains("cannot decode")),
        "{:?}",
        dead.headers()
    );
    drop(wire_tx);
}
