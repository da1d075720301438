//! Message properties the broker acts on: priority and time to live.

use std::time::Duration;

use tower_mq::{ErrorKind, Message};

use crate::fixture::*;

/// Higher priorities first, publication order within a priority.
pub async fn priority_order<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("priority");
    let mut publisher = fx.publisher(&topic).await;
    if let Support::No(reason) = F::CAPABILITIES.priority {
        let err = try_publish(&mut publisher, Message::new(&topic, "x").with_priority(5))
            .await
            .expect_err("a broker without priorities must refuse one, not drop it");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        return Outcome::checked_instead(
            reason,
            "publishing a priority fails with a permanent error",
        );
    }
    if let Support::No(reason) = F::CAPABILITIES.groups {
        return Outcome::not_applicable(reason);
    }
    let group = fx.unique("prioritised");
    fx.declare_group(&topic, &group).await;
    let sent = [
        ("low-1", 1),
        ("high-1", 9),
        ("mid", 5),
        ("high-2", 9),
        ("low-2", 1),
    ];
    for (body, priority) in sent {
        let message = Message::new(&topic, body).with_priority(priority);
        publish::<F>(&mut publisher, message).await;
    }
    let mut consumer = fx.group_consumer(&topic, &group).await;
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        let delivery = recv::<F>(&mut consumer, "a prioritised message").await;
        ack::<F>(&delivery).await;
        got.push(payload_text(&delivery));
    }
    assert_eq!(
        got,
        ["high-1", "high-2", "mid", "low-1", "low-2"],
        "{}",
        F::NAME
    );
    Outcome::passed()
}

/// A message whose time to live passes before anyone takes it is not delivered (and is
/// dead-lettered as `expired` where the broker does that).
pub async fn ttl_expiry<F: Fixture>() -> Outcome {
    const TTL: Duration = Duration::from_millis(200);
    let fx = F::connect().await;
    let topic = fx.unique("ttl");
    let mut publisher = fx.publisher(&topic).await;
    if let Support::No(reason) = F::CAPABILITIES.ttl {
        let err = try_publish(&mut publisher, Message::new(&topic, "x").with_ttl(TTL))
            .await
            .expect_err("a broker without TTL must refuse one, not ignore it");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        return Outcome::checked_instead(reason, "publishing a TTL fails with a permanent error");
    }
    // The case needs a message to wait unread past its TTL, which takes a group that
    // keeps it.
    if let Support::No(reason) = F::CAPABILITIES.groups {
        return Outcome::not_applicable(reason);
    }
    let mut checks = Checks::default();
    let mut dead = if checks.apply(
        "the expired message as a dead letter",
        F::CAPABILITIES.ttl_dead_letters,
    ) {
        Some(fx.dead_letters(&topic).await)
    } else {
        None
    };
    let group = fx.unique("late-readers");
    fx.declare_group(&topic, &group).await;
    publish::<F>(
        &mut publisher,
        Message::new(&topic, "expires").with_ttl(TTL),
    )
    .await;
    publish::<F>(
        &mut publisher,
        Message::new(&topic, "stays").with_ttl(TTL * 1000),
    )
    .await;
    publish::<F>(&mut publisher, Message::new(&topic, "no ttl")).await;
    // The behaviour under test is the passing of time itself.
    tokio::time::sleep(TTL * 3).await;

    let mut consumer = fx.group_consumer(&topic, &group).await;
    for expected in ["stays", "no ttl"] {
        let delivery = recv::<F>(&mut consumer, expected).await;
        assert_eq!(
            payload_text(&delivery),
            expected,
            "{}: an expired message was delivered",
            F::NAME
        );
        ack::<F>(&delivery).await;
    }
    assert_quiet::<F>(&mut consumer, "the expired message must not be delivered").await;

    let Some(dead) = dead.as_mut() else {
        return checks.passed();
    };
    let letter = recv::<F>(dead, "the expired message as a dead letter").await;
    assert_eq!(payload_text(&letter), "expires", "{}", F::NAME);
    assert_eq!(
        fx.death_reason(&letter).as_deref(),
        Some("expired"),
        "{}",
        F::NAME
    );
    ack::<F>(&letter).await;
    checks.passed()
}
