use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower::{Service, ServiceExt};
use tower_mq_core::{dead_letter, ErrorKind, Guarantee, Message, Operation, Position, Receipt};

use super::*;

async fn publish(broker: &Broker, message: Message) -> Result<Receipt, Error> {
    broker.publisher().oneshot(message).await
}

async fn next(consumer: &mut Consumer) -> tower_mq_core::Delivery {
    consumer
        .next()
        .now_or_never()
        .expect("a delivery is ready")
        .expect("the consumer is open")
        .expect("no error")
}

fn payload(delivery: &tower_mq_core::Delivery) -> &[u8] {
    delivery.message().payload().as_ref()
}

#[tokio::test(start_paused = true)]
async fn full_broker_makes_publishers_wait_until_room_frees() {
    let broker = Broker::builder().capacity(2).build();
    let mut consumer = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "1")).await.unwrap();
    publish(&broker, Message::new("t", "2")).await.unwrap();
    assert_eq!(broker.held(), 2);

    let mut publisher = broker.publisher();
    let mut waiting = task::spawn(());
    assert_pending!(waiting.enter(|cx, _| publisher.poll_ready(cx)));

    let first = next(&mut consumer).await;
    // Delivered but not settled: still held.
    assert!(!waiting.is_woken());
    first.ack().await.unwrap();
    assert!(waiting.is_woken());
    assert_ready_ok!(waiting.enter(|cx, _| publisher.poll_ready(cx)));
    publisher.call(Message::new("t", "3")).await.unwrap();
    assert_eq!(broker.held(), 2);
}

#[tokio::test(start_paused = true)]
async fn reservations_count_against_capacity_and_are_not_cloned() {
    let broker = Broker::builder().capacity(1).build();
    let mut first = broker.publisher();
    let mut cx = task::spawn(());
    assert_ready_ok!(cx.enter(|cx, _| first.poll_ready(cx)));

    let mut clone = first.clone();
    let mut other = task::spawn(());
    assert_pending!(other.enter(|cx, _| clone.poll_ready(cx)));

    // Dropping a reserved publisher gives its room back.
    drop(first);
    assert!(other.is_woken());
    assert_ready_ok!(other.enter(|cx, _| clone.poll_ready(cx)));
}

#[tokio::test(start_paused = true)]
async fn nack_with_delay_redelivers_after_the_delay() {
    let broker = Broker::new();
    let mut consumer = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "x")).await.unwrap();
    let first = next(&mut consumer).await;
    assert_eq!(first.delivery_count(), 1);
    first.nack(Some(Duration::from_secs(10))).await.unwrap();

    let mut waiting = task::spawn(consumer.next());
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(waiting.is_woken());
    let again = assert_ready!(waiting.poll()).unwrap().unwrap();
    assert_eq!(payload(&again), b"x");
    assert_eq!(again.delivery_count(), 2);
}

#[tokio::test]
async fn nack_without_delay_redelivers_in_place() {
    let broker = Broker::new();
    let mut consumer = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "1")).await.unwrap();
    publish(&broker, Message::new("t", "2")).await.unwrap();
    let first = next(&mut consumer).await;
    first.nack(None).await.unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(payload(&again), b"1");
    assert_eq!(again.delivery_count(), 2);
}

#[tokio::test]
async fn unsettled_deliveries_of_a_closed_consumer_go_back_to_the_group() {
    let broker = Broker::new();
    let mut a = broker.consumer("t", "g").unwrap();
    let mut b = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "1")).await.unwrap();
    let taken = next(&mut a).await;
    assert!(b.next().now_or_never().is_none());

    let mut waiting = task::spawn(b.next());
    assert_pending!(waiting.poll());
    a.close();
    assert!(waiting.is_woken());
    let again = assert_ready!(waiting.poll()).unwrap().unwrap();
    assert_eq!(payload(&again), b"1");
    assert_eq!(again.delivery_count(), 2);

    // The old delivery cannot be settled any more.
    let err = taken.ack().await.unwrap_err();
    assert_eq!(err.operation(), Operation::Ack);
    again.ack().await.unwrap();
    assert_eq!(broker.held(), 0);
}

#[tokio::test]
async fn groups_each_get_every_message_and_consumers_compete_within_one() {
    let broker = Broker::new();
    let mut a1 = broker.consumer("t", "a").unwrap();
    let mut a2 = broker.consumer("t", "a").unwrap();
    let mut b = broker.consumer("t", "b").unwrap();
    let mut sub = broker.subscribe("t").unwrap();
    for i in 0..4 {
        publish(&broker, Message::new("t", i.to_string()))
            .await
            .unwrap();
    }
    let mut seen_a = Vec::new();
    for _ in 0..2 {
        seen_a.push(payload(&next(&mut a1).await).to_vec());
        seen_a.push(payload(&next(&mut a2).await).to_vec());
    }
    assert!(a1.next().now_or_never().is_none());
    assert!(a2.next().now_or_never().is_none());
    seen_a.sort();
    assert_eq!(seen_a, vec![b"0", b"1", b"2", b"3"]);
    for i in 0..4 {
        assert_eq!(payload(&next(&mut b).await), i.to_string().as_bytes());
        assert_eq!(payload(&next(&mut sub).await), i.to_string().as_bytes());
    }
}

#[tokio::test]
async fn declared_groups_keep_messages_and_subscribers_see_only_later_ones() {
    let broker = Broker::new();
    publish(&broker, Message::new("t", "lost")).await.unwrap();
    broker.declare_group("t", "g").unwrap();
    publish(&broker, Message::new("t", "kept")).await.unwrap();
    let mut sub = broker.subscribe("t").unwrap();
    let mut consumer = broker.consumer("t", "g").unwrap();
    assert_eq!(payload(&next(&mut consumer).await), b"kept");
    assert!(sub.next().now_or_never().is_none());
    // A subscriber's messages go with it.
    publish(&broker, Message::new("t", "for the subscriber"))
        .await
        .unwrap();
    consumer.next().await.unwrap().unwrap().ack().await.unwrap();
    assert_eq!(broker.held(), 2);
    drop(sub);
    assert_eq!(broker.held(), 1);
}

#[tokio::test]
async fn higher_priority_first_then_publication_order() {
    let broker = Broker::new();
    let mut consumer = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "low")).await.unwrap();
    publish(&broker, Message::new("t", "high-1").with_priority(9))
        .await
        .unwrap();
    publish(&broker, Message::new("t", "mid").with_priority(4))
        .await
        .unwrap();
    publish(&broker, Message::new("t", "high-2").with_priority(9))
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        order.push(String::from_utf8(payload(&next(&mut consumer).await).to_vec()).unwrap());
    }
    assert_eq!(order, ["high-1", "high-2", "mid", "low"]);
}

#[tokio::test(start_paused = true)]
async fn expired_messages_are_dead_lettered_not_delivered() {
    let broker = Broker::new();
    let mut dead = broker.consumer("t.dlq", "ops").unwrap();
    broker.declare_group("t", "g").unwrap();
    publish(
        &broker,
        Message::new("t", "short").with_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    publish(
        &broker,
        Message::new("t", "long").with_ttl(Duration::from_secs(60)),
    )
    .await
    .unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    let mut consumer = broker.consumer("t", "g").unwrap();
    assert_eq!(payload(&next(&mut consumer).await), b"long");
    let letter = next(&mut dead).await;
    assert_eq!(payload(&letter), b"short");
    let headers = letter.message().headers();
    assert_eq!(
        headers.get_str(dead_letter::REASON),
        Some(dead_letter::EXPIRED)
    );
    assert_eq!(
        headers.get_str(dead_letter::ORIGINAL_DESTINATION),
        Some("t")
    );
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("0"));
    assert_eq!(letter.message().ttl(), None);
}

#[tokio::test(start_paused = true)]
async fn a_full_broker_purges_expired_messages() {
    let broker = Broker::builder().capacity(1).build();
    broker.declare_group("t", "g").unwrap();
    publish(
        &broker,
        Message::new("t", "x").with_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    // No group on `t.dlq`: the dead letter is dropped rather than held.
    let mut publisher = broker.publisher();
    let mut cx = task::spawn(());
    assert_pending!(cx.enter(|cx, _| publisher.poll_ready(cx)));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(!cx.is_woken());
    // The waiting publisher wakes when the message expires, with no consumer around.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(cx.is_woken());
    assert_ready_ok!(cx.enter(|cx, _| publisher.poll_ready(cx)));
    assert_eq!(broker.held(), 0);
}

#[tokio::test]
async fn reject_dead_letters_with_reason_and_count() {
    let broker = Broker::builder().dead_letter_suffix("-dead").build();
    broker
        .set_dead_letter_topic("special", "special-graveyard")
        .unwrap();
    assert_eq!(broker.dead_letter_topic("t"), "t-dead");
    assert_eq!(broker.dead_letter_topic("special"), "special-graveyard");
    let mut dead = broker.consumer("t-dead", "ops").unwrap();
    let mut consumer = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "bad").with_header("a", "1"))
        .await
        .unwrap();
    next(&mut consumer).await.nack(None).await.unwrap();
    next(&mut consumer)
        .await
        .reject("cannot parse")
        .await
        .unwrap();
    let letter = next(&mut dead).await;
    let headers = letter.message().headers();
    assert_eq!(headers.get_str(dead_letter::REASON), Some("cannot parse"));
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("2"));
    assert_eq!(headers.get_str("a"), Some("1"));
    assert_eq!(letter.message().destination(), "t-dead");
    letter.ack().await.unwrap();
    assert_eq!(broker.held(), 0);
}

#[tokio::test]
async fn invalid_topics_and_oversize_payloads_are_permanent_errors() {
    let broker = Broker::builder().max_payload_size(4).build();
    let long = "x".repeat(MAX_NAME_LEN + 1);
    for topic in ["", " ", "a b", "orders.*", "orders.>", "a#", long.as_str()] {
        let err = publish(&broker, Message::new(topic, "")).await.unwrap_err();
        assert_eq!(err.broker(), "memory");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.destination(), Some(topic));
    }
    let err = publish(&broker, Message::new("t", "12345"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("5 bytes"), "{err}");
    publish(&broker, Message::new("t", "1234")).await.unwrap();
    assert_eq!(
        broker.subscribe("a*").unwrap_err().operation(),
        Operation::Subscribe
    );
    assert!(broker.consumer("t", "").is_err());
}

#[tokio::test]
async fn a_call_without_poll_ready_fails_permanently_and_stores_nothing() {
    let broker = Broker::builder().capacity(1).build();
    let mut publisher = broker.publisher();
    let err = publisher.call(Message::new("t", "x")).await.unwrap_err();
    crate::test_support::assert_called_before_ready(&err, "memory", Operation::Publish, Some("t"));
    assert_eq!(broker.held(), 0);
    // The publisher works as usual afterwards, and took no room.
    let receipt = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new("t", "y"))
        .await
        .unwrap();
    assert_eq!(receipt.position(), Some(&Position::Sequence(1)));
}

#[tokio::test]
async fn receipts_number_messages_per_topic() {
    let broker = Broker::new();
    for (topic, sequence) in [("a", 1), ("a", 2), ("b", 1)] {
        let receipt = publish(&broker, Message::new(topic, "")).await.unwrap();
        assert_eq!(
            receipt,
            Receipt::new("memory", topic, Guarantee::Stored)
                .with_position(Position::Sequence(sequence))
        );
    }
}

#[tokio::test]
async fn huge_ttls_and_delays_do_not_overflow_the_clock() {
    let broker = Broker::new();
    let mut consumer = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "x").with_ttl(Duration::MAX))
        .await
        .unwrap();
    let delivery = next(&mut consumer).await;
    delivery.nack(Some(Duration::MAX)).await.unwrap();
    assert!(consumer.next().now_or_never().is_none());
    assert_eq!(broker.held(), 1);
}

/// The README's stack over a broker that cannot take a message: each publish ends with
/// an error in bounded time instead of waiting for room, and the breaker sees the
/// failures and opens.
#[tokio::test(start_paused = true)]
async fn the_readme_stack_is_bounded_when_the_broker_cannot_take_messages() {
    use tower::ServiceBuilder;
    use tower_mq_layers::circuit_breaker::{error::CircuitOpen, CircuitState};
    use tower_mq_layers::retry::Backoff;
    use tower_mq_layers::timeout::error::NotReady;
    use tower_mq_layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};

    let broker = Broker::builder().capacity(1).build();
    let _holder = broker.consumer("t", "g").unwrap();
    publish(&broker, Message::new("t", "fills the broker"))
        .await
        .unwrap();

    let breaker = CircuitBreakerLayer::new().minimum_calls(5);
    let circuit = breaker.handle();
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_secs(2),
        )))
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(broker.publisher());
    for attempt in 0..3 {
        let started = tokio::time::Instant::now();
        let error = tokio::time::timeout(
            Duration::from_secs(60),
            publisher.clone().oneshot(Message::new("t", "no room")),
        )
        .await
        .unwrap_or_else(|_| panic!("publish {attempt} waited for the broker"))
        .expect_err("there is no room");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        assert!(
            error.is::<NotReady>() || error.is::<CircuitOpen>(),
            "not ready, or rejected by the open circuit: {error}"
        );
    }
    assert_eq!(circuit.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_refused_publish_gives_its_room_back_and_names_are_checked_per_topic() {
    let broker = Broker::builder()
        .capacity(1)
        .dead_letter_suffix(" dead")
        .build();
    let mut consumer = broker.consumer("t", "g").unwrap();
    // The first publish to a topic checks its name; later ones find it checked.
    publish(&broker, Message::new("t", "1")).await.unwrap();
    let delivery = next(&mut consumer).await;
    delivery.reject("bad").await.unwrap();
    // Dead-lettering made a topic whose name (from the suffix) was never checked: a
    // publisher's first publish to it checks it, and gives the room back.
    let err = publish(&broker, Message::new("t dead", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.destination(), Some("t dead"), "{err}");
    assert_eq!(broker.held(), 0);
    let err = publish(&broker, Message::new("t*", "x")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    // Neither refused publish kept the one message's room.
    publish(&broker, Message::new("t", "2")).await.unwrap();
    assert_eq!(broker.held(), 1);
}

#[test]
fn the_fast_hasher_tells_near_names_and_ids_apart() {
    use std::hash::BuildHasher;
    let hasher = std::hash::BuildHasherDefault::<state::FastHasher>::default();
    let names = [
        "bench-1-1",
        "bench-1-2",
        "bench-1-10",
        "bench-1-1\0",
        "",
        "a",
        "b",
    ];
    let hashes: std::collections::HashSet<u64> = names.iter().map(|n| hasher.hash_one(n)).collect();
    assert_eq!(hashes.len(), names.len());
    let ids: std::collections::HashSet<u64> = (0..10_000u64).map(|i| hasher.hash_one(i)).collect();
    assert_eq!(ids.len(), 10_000);
}

#[test]
fn a_subscriber_dropped_as_its_thread_ends_lets_go_of_its_messages() {
    thread_local! {
        static HELD: std::cell::RefCell<Option<Consumer>> = const { std::cell::RefCell::new(None) };
    }
    let broker = Broker::new();
    let in_thread = broker.clone();
    std::thread::spawn(move || {
        // Set first, so that this thread's locals are torn down after the broker's own:
        // the subscriber is dropped when those are gone.
        HELD.with(|held| *held.borrow_mut() = Some(in_thread.subscribe("t").unwrap()));
        let publish = |message| {
            in_thread
                .publisher()
                .oneshot(message)
                .now_or_never()
                .expect("the memory broker answers at once")
                .unwrap()
        };
        publish(Message::new("t", "held by the subscriber"));
        // Nobody subscribes here: the message is let go of at once, after the lock.
        publish(Message::new("nobody", "dropped"));
    })
    .join()
    .expect("the thread ended without a panic");
    assert_eq!(broker.held(), 0);
}
