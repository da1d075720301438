//! Publishing and pub/sub subscribing: delivery, concurrency, payload sizes, message
//! properties, invalid destinations.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tower::{Service, ServiceExt};
use tower_mq::{ErrorKind, Message, Operation};

use crate::fixture::*;

/// Every subscriber of a topic receives what is published to it, in order.
pub async fn publish_subscribe<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("publish-subscribe");
    let mut first = fx.subscriber(&topic).await;
    let mut second = fx.subscriber(&topic).await;
    let mut publisher = fx.publisher(&topic).await;
    for i in 0..3 {
        let receipt = publish::<F>(&mut publisher, Message::new(&topic, format!("m{i}"))).await;
        assert_eq!(
            receipt.destination(),
            topic,
            "{}: receipt {receipt}",
            F::NAME
        );
    }
    for subscriber in [&mut first, &mut second] {
        for i in 0..3 {
            let delivery = recv::<F>(subscriber, &format!("m{i}")).await;
            assert_eq!(payload_text(&delivery), format!("m{i}"), "{}", F::NAME);
            assert_eq!(delivery.message().destination(), topic, "{}", F::NAME);
            ack::<F>(&delivery).await;
        }
        assert_quiet::<F>(subscriber, "three messages were published").await;
    }
    Outcome::passed()
}

/// Several publishers on several topics at once: each subscriber receives exactly its
/// topic's messages, none twice.
pub async fn concurrent_publishers_and_subscribers_across_topics<F: Fixture>() -> Outcome {
    const TOPICS: usize = 6;
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: usize = 25;
    let fx = F::connect().await;
    let topics: Vec<String> = (0..TOPICS).map(|_| fx.unique("concurrent")).collect();
    let mut subscribers = Vec::new();
    for topic in &topics {
        subscribers.push((topic.clone(), fx.subscriber(topic).await));
    }
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        publishers.push(fx.publisher(&topics[0]).await);
    }

    let publishing = publishers
        .into_iter()
        .enumerate()
        .map(|(p, mut publisher)| {
            let topics = topics.clone();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    for topic in &topics {
                        let body = format!("{topic}/{p}/{i}");
                        publish::<F>(&mut publisher, Message::new(topic, body)).await;
                    }
                }
            })
        })
        .collect::<Vec<_>>();
    let receiving = subscribers
        .into_iter()
        .map(|(topic, mut subscriber)| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..PUBLISHERS * PER_PUBLISHER {
                    let delivery =
                        recv::<F>(&mut subscriber, &format!("a message on {topic}")).await;
                    ack::<F>(&delivery).await;
                    got.push(payload_text(&delivery));
                }
                (topic, got)
            })
        })
        .collect::<Vec<_>>();

    for task in join_all(publishing).await {
        task.expect("a publishing task panicked");
    }
    for task in join_all(receiving).await {
        let (topic, got) = task.expect("a receiving task panicked");
        let got = no_duplicates(&got, &format!("{}: {topic}", F::NAME));
        let expected: HashSet<String> = (0..PUBLISHERS)
            .flat_map(|p| (0..PER_PUBLISHER).map(move |i| (p, i)))
            .map(|(p, i)| format!("{topic}/{p}/{i}"))
            .collect();
        assert_eq!(got, expected, "{}: messages on {topic}", F::NAME);
    }
    Outcome::passed()
}

/// An empty payload is delivered as an empty payload.
pub async fn empty_payload<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("empty-payload");
    let mut subscriber = fx.subscriber(&topic).await;
    let mut publisher = fx.publisher(&topic).await;
    publish::<F>(
        &mut publisher,
        Message::new(&topic, Bytes::new()).with_message_id("empty"),
    )
    .await;
    let delivery = recv::<F>(&mut subscriber, "the empty message").await;
    assert!(
        delivery.message().payload().is_empty(),
        "{}: payload not empty",
        F::NAME
    );
    assert_eq!(
        delivery.message().message_id(),
        Some("empty"),
        "{}",
        F::NAME
    );
    ack::<F>(&delivery).await;
    Outcome::passed()
}

/// A 16 MiB payload (or the broker's maximum, if smaller, reported as such) arrives
/// intact.
pub async fn large_payload<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("large-payload");
    const FULL: usize = 16 * 1024 * 1024;
    let (size, full) = match F::CAPABILITIES.max_payload {
        MaxPayload::Full => (FULL, Support::Yes),
        MaxPayload::AtMost(bytes, why) => (bytes.min(FULL), Support::No(why)),
    };
    // Not a repeated byte, so a truncated or shuffled payload shows.
    let payload: Bytes = (0..size)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let mut subscriber = fx.subscriber(&topic).await;
    let mut publisher = fx.publisher(&topic).await;
    publish::<F>(&mut publisher, Message::new(&topic, payload.clone())).await;
    let delivery = recv::<F>(&mut subscriber, "the large message").await;
    assert_eq!(
        delivery.message().payload().len(),
        size,
        "{}: payload size",
        F::NAME
    );
    assert!(
        delivery.message().payload() == &payload,
        "{}: payload bytes differ",
        F::NAME
    );
    ack::<F>(&delivery).await;
    let mut checks = Checks::default();
    checks.apply("the full 16 MiB", full);
    checks.passed()
}

/// Headers and every property the broker supports arrive as published.
pub async fn headers_and_properties_round_trip<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("round-trip");
    let mut subscriber = fx.subscriber(&topic).await;
    let mut publisher = fx.publisher(&topic).await;
    let ttl = Duration::from_secs(3600);
    let mut message = Message::new(&topic, "body")
        .with_key("key-1")
        .with_header("tenant", "acme")
        .with_header("trace-id", "0af7651916cd43dd8448eb211c80319c")
        .with_header("empty", "")
        .with_header("unicode", "grüße ✓")
        .with_persistent(true)
        .with_message_id("id-1")
        .with_correlation_id("corr-1")
        .with_reply_to(format!("{topic}-replies"))
        .with_content_type("application/json")
        .with_content_encoding("identity");
    let mut checks = Checks::default();
    let priority = checks.apply("priority", F::CAPABILITIES.priority);
    let with_ttl = checks.apply("time to live", F::CAPABILITIES.ttl);
    if priority {
        message = message.with_priority(3);
    }
    if with_ttl {
        message = message.with_ttl(ttl);
    }
    publish::<F>(&mut publisher, message.clone()).await;
    let delivery = recv::<F>(&mut subscriber, "the message").await;
    let got = delivery.message();
    let name = F::NAME;
    assert_eq!(got.destination(), topic, "{name}: destination");
    assert_eq!(got.payload(), message.payload(), "{name}: payload");
    assert_eq!(got.key_str(), Some("key-1"), "{name}: key");
    for (header, value) in message.headers() {
        assert_eq!(
            got.headers().get(header),
            Some(value),
            "{name}: header {header}"
        );
    }
    assert!(got.is_persistent(), "{name}: persistent");
    assert_eq!(got.message_id(), Some("id-1"), "{name}: message id");
    assert_eq!(
        got.correlation_id(),
        Some("corr-1"),
        "{name}: correlation id"
    );
    assert_eq!(got.reply_to(), message.reply_to(), "{name}: reply-to");
    assert_eq!(
        got.content_type(),
        Some("application/json"),
        "{name}: content type"
    );
    assert_eq!(
        got.content_encoding(),
        Some("identity"),
        "{name}: content encoding"
    );
    if priority {
        assert_eq!(got.priority(), Some(3), "{name}: priority");
    }
    if with_ttl {
        // A broker may report the time left rather than the time given.
        let left = got.ttl().unwrap_or_else(|| panic!("{name}: ttl missing"));
        assert!(left <= ttl && left > ttl / 2, "{name}: ttl {left:?}");
    }
    ack::<F>(&delivery).await;
    checks.passed()
}

/// Publishing to an invalid destination fails at once with a permanent error that
/// names the broker, the operation and the destination.
pub async fn invalid_destination_is_a_clear_permanent_error<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("invalid-destination");
    let mut publisher = fx.publisher(&topic).await;
    for destination in fx.invalid_destinations() {
        let err = try_publish(&mut publisher, Message::new(&destination, "x"))
            .await
            .expect_err(&format!(
                "{}: publishing to {destination:?} succeeded",
                F::NAME
            ));
        assert_eq!(err.broker(), F::BROKER, "{err}");
        assert_eq!(err.operation(), Operation::Publish, "{err}");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.destination(), Some(destination.as_str()), "{err}");
        assert!(
            err.to_string().contains(&format!("`{destination}`")),
            "{err}"
        );
    }
    // The publisher is still usable afterwards.
    let mut subscriber = fx.subscriber(&topic).await;
    publish::<F>(&mut publisher, Message::new(&topic, "valid")).await;
    let delivery = recv::<F>(&mut subscriber, "the valid message").await;
    assert_eq!(payload_text(&delivery), "valid");
    Outcome::passed()
}

/// Publishes started before the publisher is dropped all complete, and every message
/// arrives.
pub async fn publisher_close_with_pending_work_loses_nothing<F: Fixture>() -> Outcome {
    const COUNT: usize = 20;
    let fx = F::connect().await;
    let topic = fx.unique("publisher-close");
    let mut subscriber = fx.subscriber(&topic).await;
    let mut publisher = fx.publisher(&topic).await;
    let mut pending = Vec::new();
    for i in 0..COUNT {
        let ready = tokio::time::timeout(WAIT, publisher.ready())
            .await
            .expect("publisher not ready in time")
            .unwrap_or_else(|e| panic!("{}: publisher failed: {e}", F::NAME));
        pending.push(ready.call(Message::new(&topic, i.to_string())));
    }
    drop(publisher);
    let receipts = tokio::time::timeout(WAIT, join_all(pending))
        .await
        .unwrap_or_else(|_| panic!("{}: pending publishes did not finish", F::NAME));
    for receipt in receipts {
        receipt.unwrap_or_else(|e| panic!("{}: a pending publish failed: {e}", F::NAME));
    }
    let mut got = Vec::new();
    for _ in 0..COUNT {
        let delivery = recv::<F>(&mut subscriber, "a message").await;
        ack::<F>(&delivery).await;
        got.push(payload_text(&delivery));
    }
    let got = no_duplicates(&got, F::NAME);
    let expected: HashSet<String> = (0..COUNT).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "{}", F::NAME);
    Outcome::passed()
}
