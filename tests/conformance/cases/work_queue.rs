//! Consumer groups as work queues: sharing, durability, resuming, ordering, and a
//! sustained load through the project's reliability layers.

use std::collections::{BTreeMap, HashSet};

use futures_util::StreamExt;
use tower_mq::Message;

use crate::fixture::*;

/// Two consumers of one group split the group's messages: each message goes to one of
/// them, none is lost or duplicated, and a message one consumer holds unsettled does
/// not stop the other from getting work.
pub async fn consumer_group_shares_work_without_duplicates<F: Fixture>() -> Outcome {
    const COUNT: usize = 20;
    if let Support::No(reason) = F::CAPABILITIES.groups {
        return Outcome::not_applicable(reason);
    }
    let fx = F::connect().await;
    let topic = fx.unique("shares-work");
    let group = fx.unique("workers");
    let mut a = fx.group_consumer(&topic, &group).await;
    let mut b = fx.group_consumer(&topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    for i in 0..COUNT {
        let message = Message::new(&topic, i.to_string()).with_key(format!("k{i}"));
        publish::<F>(&mut publisher, message).await;
    }

    // Each takes one and holds it: they must be different messages.
    let first_a = recv::<F>(&mut a, "a first message for consumer a").await;
    let first_b = recv::<F>(&mut b, "a first message for consumer b").await;
    assert_ne!(
        payload_text(&first_a),
        payload_text(&first_b),
        "{}: both consumers of the group got the same message",
        F::NAME
    );
    let mut got = vec![payload_text(&first_a), payload_text(&first_b)];
    ack::<F>(&first_a).await;
    ack::<F>(&first_b).await;

    // Take the rest from whichever has work, then watch both for duplicates.
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < COUNT {
        let item = tokio::time::timeout_at(deadline, async {
            tokio::select! {
                Some(item) = a.next() => item,
                Some(item) = b.next() => item,
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{}: only {} of {COUNT} arrived: {got:?}",
                F::NAME,
                got.len()
            )
        });
        let delivery = item.unwrap_or_else(|e| panic!("{}: receive failed: {e}", F::NAME));
        ack::<F>(&delivery).await;
        got.push(payload_text(&delivery));
    }
    assert_quiet::<F>(&mut a, "every message was delivered once").await;
    assert_quiet::<F>(&mut b, "every message was delivered once").await;
    let got = no_duplicates(&got, F::NAME);
    let expected: HashSet<String> = (0..COUNT).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "{}", F::NAME);
    Outcome::passed()
}

/// A declared group keeps what is published before its first consumer joins.
pub async fn group_keeps_messages_published_before_its_first_consumer<F: Fixture>() -> Outcome {
    if let Support::No(reason) = F::CAPABILITIES.groups {
        return Outcome::not_applicable(reason);
    }
    let fx = F::connect().await;
    let topic = fx.unique("declared-group");
    let group = fx.unique("late");
    fx.declare_group(&topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    for i in 0..3 {
        publish::<F>(&mut publisher, Message::new(&topic, format!("early-{i}"))).await;
    }
    let mut consumer = fx.group_consumer(&topic, &group).await;
    if let Support::No(reason) = F::CAPABILITIES.durable_groups {
        // The group did not exist while nobody was subscribed: the early messages are
        // gone, and the group gets what is published once a member joined.
        publish::<F>(&mut publisher, Message::new(&topic, "late")).await;
        let delivery = recv::<F>(&mut consumer, "the message published after joining").await;
        assert_eq!(
            payload_text(&delivery),
            "late",
            "{}: an at-most-once group cannot have kept early messages",
            F::NAME
        );
        ack::<F>(&delivery).await;
        assert_quiet::<F>(&mut consumer, "one message was published after joining").await;
        return Outcome::checked_instead(
            reason,
            "the group gets what is published once a member joined, and nothing earlier",
        );
    }
    for i in 0..3 {
        let delivery = recv::<F>(&mut consumer, &format!("early-{i}")).await;
        assert_eq!(payload_text(&delivery), format!("early-{i}"), "{}", F::NAME);
        ack::<F>(&delivery).await;
    }
    Outcome::passed()
}

/// A group consumer that closes and comes back resumes after what it acknowledged:
/// nothing acknowledged comes again, nothing unacknowledged is lost.
pub async fn closing_and_reopening_a_group_consumer_continues<F: Fixture>() -> Outcome {
    if let Support::No(reason) = F::CAPABILITIES.groups {
        return Outcome::not_applicable(reason);
    }
    let mut checks = Checks::default();
    let fx = F::connect().await;
    let topic = fx.unique("reopen");
    let group = fx.unique("resuming");
    let mut consumer = fx.group_consumer(&topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    for i in 0..6 {
        publish::<F>(&mut publisher, Message::new(&topic, i.to_string())).await;
    }
    for i in 0..3 {
        let delivery = recv::<F>(&mut consumer, &format!("message {i}")).await;
        assert_eq!(payload_text(&delivery), i.to_string(), "{}", F::NAME);
        ack::<F>(&delivery).await;
    }
    drop(consumer);

    let mut consumer = fx.group_consumer(&topic, &group).await;
    if !checks.apply(
        "keeping what was published before the member rejoined",
        F::CAPABILITIES.durable_groups,
    ) {
        // What the closed member had not taken went with it; the group resumes with
        // what is published after the new member joined, and nothing acknowledged
        // comes again.
        for i in 6..9 {
            publish::<F>(&mut publisher, Message::new(&topic, i.to_string())).await;
        }
        for i in 6..9 {
            let delivery = recv::<F>(&mut consumer, &format!("message {i} after reopening")).await;
            assert_eq!(payload_text(&delivery), i.to_string(), "{}", F::NAME);
            ack::<F>(&delivery).await;
        }
        assert_quiet::<F>(&mut consumer, "messages 0..3 were acknowledged").await;
        return checks.passed();
    }
    for i in 3..6 {
        let delivery = recv::<F>(&mut consumer, &format!("message {i} after reopening")).await;
        assert_eq!(
            payload_text(&delivery),
            i.to_string(),
            "{}: order after reopening",
            F::NAME
        );
        ack::<F>(&delivery).await;
    }
    assert_quiet::<F>(
        &mut consumer,
        "messages 0..3 were acknowledged before closing",
    )
    .await;
    checks.passed()
}

/// Messages with the same key arrive in publication order.
pub async fn order_per_key<F: Fixture>() -> Outcome {
    const KEYS: usize = 4;
    const PER_KEY: usize = 25;
    let fx = F::connect().await;
    let topic = fx.unique("order-per-key");
    let group = fx.unique("ordered");
    let mut consumer = consumer(&fx, &topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    for i in 0..PER_KEY {
        for k in 0..KEYS {
            let message = Message::new(&topic, format!("{k}:{i}")).with_key(format!("key-{k}"));
            publish::<F>(&mut publisher, message).await;
        }
    }
    let mut seen: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for _ in 0..KEYS * PER_KEY {
        let delivery = recv::<F>(&mut consumer, "a keyed message").await;
        ack::<F>(&delivery).await;
        let text = payload_text(&delivery);
        let (k, i) = text.split_once(':').expect("payload is key:index");
        let key = delivery.message().key_str().map(str::to_owned);
        assert_eq!(key, Some(format!("key-{k}")), "{}: key of {text}", F::NAME);
        seen.entry(k.to_owned())
            .or_default()
            .push(i.parse().expect("an index"));
    }
    for (k, indexes) in seen {
        assert_eq!(
            indexes,
            (0..PER_KEY).collect::<Vec<_>>(),
            "{}: order for key {k}",
            F::NAME
        );
    }
    Outcome::passed()
}

/// 1,000 messages published through a retry + circuit breaker + timeout stack (the
/// project's own layers) and consumed, with the broker up throughout: every publish
/// completes, and every message arrives, on every broker (at-most-once ones
/// included: nothing here excuses a loss). The same load across broker restarts is
/// `reconnect::publish_and_consume_across_broker_restarts`.
pub async fn publish_and_consume_through_the_reliability_stack<F: Fixture>() -> Outcome {
    crate::cases::reconnect::load::<F>(false).await
}
