//! Settlement: nack and redelivery, redelivery after a consumer closes, rejection to
//! the dead-letter destination.

use tower_mq::Message;

use crate::fixture::*;

/// A nacked delivery comes again, counted as a redelivery.
pub async fn nack_redelivers_with_incremented_count<F: Fixture>() {
    let fx = F::connect().await;
    let topic = fx.unique("nack");
    let group = fx.unique("nackers");
    let mut consumer = fx.group_consumer(&topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    publish::<F>(
        &mut publisher,
        Message::new(&topic, "again").with_message_id("n-1"),
    )
    .await;

    let first = recv::<F>(&mut consumer, "the first delivery").await;
    if !F::CAPABILITIES.redelivery {
        assert!(
            !first.acker().is_tracked(),
            "{}: redelivery is off, so deliveries must say they are not tracked",
            F::NAME
        );
        return;
    }
    assert_eq!(
        first.delivery_count(),
        1,
        "{}: first delivery count",
        F::NAME
    );
    assert!(!first.is_redelivery(), "{}", F::NAME);
    first
        .nack(None)
        .await
        .unwrap_or_else(|e| panic!("{}: nack failed: {e}", F::NAME));

    let second = recv::<F>(&mut consumer, "the redelivery").await;
    assert_eq!(payload_text(&second), "again", "{}", F::NAME);
    assert_eq!(second.message().message_id(), Some("n-1"), "{}", F::NAME);
    assert!(
        second.is_redelivery(),
        "{}: not marked as a redelivery",
        F::NAME
    );
    if F::CAPABILITIES.exact_delivery_count {
        assert_eq!(second.delivery_count(), 2, "{}: delivery count", F::NAME);
    }
    ack::<F>(&second).await;
    assert_quiet::<F>(&mut consumer, "the redelivery was acknowledged").await;
}

/// What a consumer received and did not settle before closing goes to another
/// consumer of its group.
pub async fn unacked_messages_are_redelivered_after_close<F: Fixture>() {
    if !F::CAPABILITIES.redelivery {
        // Checked by `nack_redelivers_with_incremented_count`: such deliveries say
        // they are not tracked.
        return nack_redelivers_with_incremented_count::<F>().await;
    }
    let fx = F::connect().await;
    let topic = fx.unique("unacked");
    let group = fx.unique("closers");
    let mut first = fx.group_consumer(&topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    publish::<F>(&mut publisher, Message::new(&topic, "unfinished")).await;
    let taken = recv::<F>(&mut first, "the message").await;
    assert_eq!(payload_text(&taken), "unfinished");
    drop(first);

    let mut second = fx.group_consumer(&topic, &group).await;
    let again = recv::<F>(
        &mut second,
        "the unsettled message after its consumer closed",
    )
    .await;
    assert_eq!(payload_text(&again), "unfinished", "{}", F::NAME);
    assert!(
        again.is_redelivery(),
        "{}: not marked as a redelivery",
        F::NAME
    );
    if F::CAPABILITIES.exact_delivery_count {
        assert_eq!(again.delivery_count(), 2, "{}: delivery count", F::NAME);
    }
    ack::<F>(&again).await;
    assert_quiet::<F>(&mut second, "the message was acknowledged").await;
}

/// A rejected delivery is not delivered again; it reaches the dead-letter destination
/// with its payload, headers and the reason.
pub async fn reject_dead_letters<F: Fixture>() {
    let fx = F::connect().await;
    let topic = fx.unique("reject");
    let group = fx.unique("rejecters");
    let mut dead = if F::CAPABILITIES.dead_letters {
        Some(fx.dead_letters(&topic).await)
    } else {
        None
    };
    let mut consumer = fx.group_consumer(&topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    let message = Message::new(&topic, "poison").with_header("tenant", "acme");
    publish::<F>(&mut publisher, message).await;
    let delivery = recv::<F>(&mut consumer, "the message").await;
    delivery
        .reject("cannot parse")
        .await
        .unwrap_or_else(|e| panic!("{}: reject failed: {e}", F::NAME));
    assert_quiet::<F>(&mut consumer, "the message was rejected").await;

    let Some(dead) = dead.as_mut() else { return };
    let letter = recv::<F>(dead, "the dead letter").await;
    assert_eq!(payload_text(&letter), "poison", "{}", F::NAME);
    assert_eq!(
        letter.message().headers().get("tenant"),
        Some("acme"),
        "{}",
        F::NAME
    );
    assert_eq!(
        fx.death_reason(&letter).as_deref(),
        Some("cannot parse"),
        "{}",
        F::NAME
    );
    ack::<F>(&letter).await;
}
