use serde::{Deserialize, Serialize};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, ServiceExt};
use tower_mq_core::{BoxError, Delivery, ErrorKind, Message, Receipt};
use tower_mq_core::{Guarantee, Position};
use tower_test::mock;

use super::error::{DecodeError, EncodeError};
use super::{DecodeLayer, EncodeLayer};
use crate::classify::{Classifier, DefaultClassifier};

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Order {
    id: u32,
    item: String,
}

#[tokio::test(start_paused = true)]
async fn encode_publishes_json_with_content_type() {
    let (svc, mut handle) = mock::pair::<Message, Receipt>();
    let mut svc = mock::Spawn::new(EncodeLayer::json("orders").layer(svc));
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(Order {
        id: 1,
        item: "tea".into(),
    });
    let (msg, send) = handle.next_request().await.expect("request");
    assert_eq!(msg.destination(), "orders");
    assert_eq!(msg.content_type(), Some("application/json"));
    let back: Order = serde_json::from_slice(msg.payload()).expect("valid json");
    assert_eq!(back.id, 1);
    send.send_response(
        Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(1)),
    );
    assert!(fut.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn encode_completes_the_message_from_the_value() {
    let (svc, mut handle) = mock::pair::<Message, Receipt>();
    handle.allow(1);
    let svc = EncodeLayer::json("orders")
        .message(|order: &Order, msg: Message| {
            msg.with_key(order.item.clone())
                .with_message_id(format!("order-{}", order.id))
        })
        .layer(svc);
    let fut = tokio::spawn(svc.oneshot(Order {
        id: 9,
        item: "tea".into(),
    }));
    let (msg, send) = handle.next_request().await.expect("request");
    assert_eq!(msg.key_str(), Some("tea"));
    assert_eq!(msg.message_id(), Some("order-9"));
    assert_eq!(msg.content_type(), Some("application/json"));
    send.send_response(
        Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(1)),
    );
    fut.await.expect("join").expect("published");
}

struct Unserializable;
impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("refuses to serialize"))
    }
}

#[tokio::test(start_paused = true)]
async fn encode_failure_is_permanent_and_skips_the_publisher() {
    let (svc, mut handle) = mock::pair::<Message, Receipt>();
    handle.allow(1);
    let svc = EncodeLayer::json("orders").layer(svc);
    let err = svc.oneshot(Unserializable).await.expect_err("must fail");
    assert!(err.is::<EncodeError>(), "{err}");
    assert!(err.to_string().contains("refuses to serialize"), "{err}");
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Permanent
    );
    // Nothing reached the publisher.
    // The service was consumed by `oneshot`; the mock saw no request.
    assert!(handle.next_request().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn decode_hands_value_and_delivery_to_the_handler() {
    let (svc, mut handle) = mock::pair::<(Order, Delivery), ()>();
    handle.allow(1);
    let svc = DecodeLayer::<Order>::json().layer(svc);
    let delivery = Delivery::unacknowledged(
        Message::new("orders", r#"{"id":3,"item":"cake"}"#).with_message_id("m-3"),
    )
    .with_delivery_count(2);
    let fut = tokio::spawn(svc.oneshot(delivery));
    let ((order, delivery), send) = handle.next_request().await.expect("request");
    assert_eq!(
        order,
        Order {
            id: 3,
            item: "cake".into()
        }
    );
    assert_eq!(delivery.delivery_count(), 2);
    assert_eq!(delivery.message().message_id(), Some("m-3"));
    send.send_response(());
    fut.await.expect("join").expect("handled");
}

#[tokio::test(start_paused = true)]
async fn decode_failure_is_permanent_and_skips_the_handler() {
    let (svc, mut handle) = mock::pair::<(Order, Delivery), ()>();
    handle.allow(1);
    let svc = DecodeLayer::<Order>::json().layer(svc);
    let delivery =
        Delivery::unacknowledged(Message::new("orders", "not json").with_message_id("m-9"));
    let err: BoxError = svc.oneshot(delivery).await.expect_err("must fail");
    let decode = err.downcast_ref::<DecodeError>().expect("a DecodeError");
    assert_eq!(decode.destination(), "orders");
    assert_eq!(decode.message_id(), Some("m-9"));
    assert!(err.to_string().contains("Order"), "{err}");
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Permanent
    );
    // Even a classifier that treats unknown errors as transient sees it as permanent.
    assert_eq!(
        DefaultClassifier::new()
            .unknown_as(ErrorKind::Transient)
            .classify(&err),
        ErrorKind::Permanent
    );
    // The service was consumed by `oneshot`; the mock saw no request.
    assert!(handle.next_request().await.is_none());
}
