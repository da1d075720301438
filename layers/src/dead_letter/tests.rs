use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower_mq_core::{Guarantee, Position};

use futures_core::future::BoxFuture;
use tower::{service_fn, Layer, ServiceExt};
use tower_mq_core::{
    Acker, Acknowledge, BoxError, Delivery, Error, ErrorKind, Message, Operation, Permanent,
    Receipt, Settlement, Transient,
};
use tower_test::mock;

use super::error::DeadLetterFailed;
use super::{headers, DeadLetterLayer};
use crate::classify::{Classifier, DefaultClassifier};
use crate::metrics::names;
use crate::test_metrics::Recorded;

type Dlq = mock::Handle<Message, Receipt>;

fn dlq() -> (mock::Mock<Message, Receipt>, Dlq) {
    let (svc, mut handle) = mock::pair::<Message, Receipt>();
    handle.allow(10);
    (svc, handle)
}

fn failing(
    error: fn() -> BoxError,
) -> impl tower::Service<Delivery, Response = (), Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |_: Delivery| async move { Err::<(), BoxError>(error()) })
}

fn delivery(count: u32) -> Delivery {
    Delivery::unacknowledged(
        Message::new("orders", "payload")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_message_id("m-1"),
    )
    .with_delivery_count(count)
}

#[tokio::test(start_paused = true)]
async fn success_passes_through_untouched() {
    let (publisher, mut handle) = dlq();
    let handler = service_fn(|_: Delivery| async { Ok::<_, BoxError>(()) });
    let d = delivery(1);
    DeadLetterLayer::new(publisher)
        .layer(handler)
        .oneshot(d.clone())
        .await
        .expect("handled");
    assert_eq!(
        d.settlement(),
        None,
        "settling success is the consumer's job"
    );
    assert!(
        handle.next_request().await.is_none(),
        "nothing dead-lettered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_failure_is_dead_lettered_then_acked() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (publisher, mut handle) = dlq();
    let svc = DeadLetterLayer::new(publisher)
        .layer(failing(|| Permanent::new("order id missing").into()));
    let d = delivery(1);
    let done = tokio::spawn(svc.oneshot(d.clone()));
    let (dead, reply) = handle.next_request().await.expect("dead-lettered");
    assert_eq!(
        d.settlement(),
        None,
        "not acked before the dead letter is stored"
    );
    assert_eq!(dead.destination(), "orders.dlq");
    assert_eq!(&dead.payload()[..], b"payload");
    assert_eq!(dead.key_str(), Some("k"));
    assert_eq!(dead.message_id(), Some("m-1"));
    assert_eq!(dead.headers().get_str("tenant"), Some("acme"));
    let h = dead.headers();
    assert_eq!(h.get_str(headers::REASON), Some("order id missing"));
    assert_eq!(h.get_str(headers::DELIVERIES), Some("1"));
    assert_eq!(h.get_str(headers::ORIGINAL_DESTINATION), Some("orders"));
    assert_eq!(h.get_str(headers::ERROR_KIND), Some("permanent"));
    let ts: u128 = h
        .get_str(headers::TIME)
        .and_then(|t| t.parse().ok())
        .expect("numeric timestamp");
    assert!(ts > 1_600_000_000_000, "{ts}");
    reply.send_response(
        Receipt::new("memory", "orders.dlq", Guarantee::Stored)
            .with_position(Position::Sequence(1)),
    );
    done.await.expect("join").expect("dealt with");
    assert_eq!(d.settlement(), Some(Settlement::Acked));
    assert_eq!(
        m.counter(
            names::DEAD_LETTERS_TOTAL,
            &[("destination", "orders"), ("reason", "permanent_error")]
        ),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_surfaces_whatever_the_delivery_count() {
    // The consumer loop (`serve`'s `max_deliveries`) owns the attempt limit: the layer
    // never dead-letters a transient failure, not even on a 100th delivery.
    for count in [1, 5, 100] {
        let (publisher, mut handle) = dlq();
        let svc =
            DeadLetterLayer::new(publisher).layer(failing(|| Transient::new("db busy").into()));
        let d = delivery(count);
        let err = svc.oneshot(d.clone()).await.expect_err("surfaces");
        assert_eq!(err.to_string(), "db busy");
        assert_eq!(
            DefaultClassifier::new().classify(&err),
            ErrorKind::Transient
        );
        assert_eq!(d.settlement(), None, "delivery {count}");
        assert!(handle.next_request().await.is_none(), "delivery {count}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_destination_can_be_named_otherwise() {
    let (publisher, mut handle) = dlq();
    let svc = DeadLetterLayer::new(publisher)
        .destination(|m| format!("dead.{}", m.destination()))
        .layer(failing(|| Permanent::new("bad payload").into()));
    let d = delivery(3);
    let done = tokio::spawn(svc.oneshot(d.clone()));
    let (dead, reply) = handle.next_request().await.expect("dead-lettered");
    assert_eq!(dead.destination(), "dead.orders");
    assert_eq!(dead.headers().get_str(headers::DELIVERIES), Some("3"));
    reply.send_response(
        Receipt::new("memory", "dead.orders", Guarantee::Stored)
            .with_position(Position::Sequence(1)),
    );
    done.await.expect("join").expect("dealt with");
    assert_eq!(d.settlement(), Some(Settlement::Acked));
}

#[tokio::test(start_paused = true)]
async fn a_failed_dead_letter_publish_leaves_the_original_unacked() {
    let (publisher, mut handle) = dlq();
    let svc =
        DeadLetterLayer::new(publisher).layer(failing(|| Permanent::new("bad payload").into()));
    let d = delivery(1);
    let done = tokio::spawn(svc.oneshot(d.clone()));
    let (_, reply) = handle.next_request().await.expect("attempted");
    reply.send_error(Error::transient("redis", Operation::Publish).with_destination("orders.dlq"));
    let err = done.await.expect("join").expect_err("surfaces");
    let failed = err
        .downcast_ref::<DeadLetterFailed>()
        .expect("DeadLetterFailed");
    assert_eq!(failed.dead_letter_destination(), "orders.dlq");
    assert_eq!(failed.handler_error().to_string(), "bad payload");
    // Classified by the publish failure: transient, so the delivery comes back.
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Transient
    );
    assert_eq!(d.settlement(), None, "nothing lost: not acked");
}

/// An acker whose broker refuses the ack.
struct RefusingAck(Arc<AtomicUsize>);
impl Acknowledge for RefusingAck {
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(Error::transient("test", Operation::Ack)) })
    }
    fn nack(&self, _: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
    fn reject(&self, _: &str) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_ack_after_dead_lettering_surfaces() {
    let (publisher, mut handle) = dlq();
    let svc =
        DeadLetterLayer::new(publisher).layer(failing(|| Permanent::new("bad payload").into()));
    let acks = Arc::new(AtomicUsize::new(0));
    let d = Delivery::new(
        Message::new("orders", "x"),
        Acker::new(RefusingAck(acks.clone())),
    );
    let done = tokio::spawn(svc.oneshot(d.clone()));
    let (_, reply) = handle.next_request().await.expect("dead-lettered");
    reply.send_response(
        Receipt::new("memory", "orders.dlq", Guarantee::Stored)
            .with_position(Position::Sequence(1)),
    );
    let err = done.await.expect("join").expect_err("ack failed");
    assert!(err.is::<DeadLetterFailed>(), "{err}");
    assert_eq!(acks.load(Ordering::SeqCst), 1);
    assert_eq!(d.settlement(), None);
}
