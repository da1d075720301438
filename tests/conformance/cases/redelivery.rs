//! Settlement: nack and redelivery, redelivery after a consumer closes, rejection to
//! the dead-letter destination, and `serve` dead-lettering after repeated failures.

use std::future::IntoFuture;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tower::service_fn;
use tower_mq::{serve, BoxError, Delivery, Message};

use crate::fixture::*;

/// A nacked delivery comes again, counted as a redelivery.
pub async fn nack_redelivers_with_incremented_count<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("nack");
    let group = fx.unique("nackers");
    let mut consumer = consumer(&fx, &topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    publish::<F>(
        &mut publisher,
        Message::new(&topic, "again").with_message_id("n-1"),
    )
    .await;

    let first = recv::<F>(&mut consumer, "the first delivery").await;
    if let Support::No(reason) = F::CAPABILITIES.redelivery {
        assert!(
            !first.acker().is_tracked(),
            "{}: redelivery is off, so deliveries must say they are not tracked",
            F::NAME
        );
        let error = first
            .nack(None)
            .await
            .expect_err("nacking an at-most-once delivery must fail, not pretend");
        assert!(!error.is_transient(), "{}: {error}", F::NAME);
        assert_eq!(
            first.settlement(),
            Some(tower_mq::Settlement::Dropped),
            "{}",
            F::NAME
        );
        assert_quiet::<F>(&mut consumer, "the nacked message was dropped").await;
        return Outcome::checked_instead(
            reason,
            "deliveries say they are untracked; a nack fails with a permanent error, \
             settles Dropped and nothing comes again",
        );
    }
    let mut checks = Checks::default();
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
    if checks.apply(
        "the exact delivery count",
        F::CAPABILITIES.exact_delivery_count,
    ) {
        assert_eq!(second.delivery_count(), 2, "{}: delivery count", F::NAME);
    }
    ack::<F>(&second).await;
    assert_quiet::<F>(&mut consumer, "the redelivery was acknowledged").await;
    checks.passed()
}

/// What a consumer received and did not settle before closing goes to another
/// consumer of its group.
pub async fn unacked_messages_are_redelivered_after_close<F: Fixture>() -> Outcome {
    if let Support::No(reason) = F::CAPABILITIES.redelivery {
        return Outcome::not_applicable(reason);
    }
    if let Support::No(reason) = F::CAPABILITIES.groups {
        return Outcome::not_applicable(reason);
    }
    let mut checks = Checks::default();
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
    if checks.apply(
        "counting it as a redelivery",
        F::CAPABILITIES.counts_redelivery_after_close,
    ) {
        assert!(
            again.is_redelivery(),
            "{}: not marked as a redelivery",
            F::NAME
        );
        if checks.apply(
            "the exact delivery count",
            F::CAPABILITIES.exact_delivery_count,
        ) {
            assert_eq!(again.delivery_count(), 2, "{}: delivery count", F::NAME);
        }
    }
    ack::<F>(&again).await;
    assert_quiet::<F>(&mut second, "the message was acknowledged").await;
    checks.passed()
}

/// A rejected delivery is not delivered again; it reaches the dead-letter destination
/// with its payload, headers and the reason.
pub async fn reject_dead_letters<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("reject");
    let group = fx.unique("rejecters");
    let mut checks = Checks::default();
    let mut dead = if F::CAPABILITIES.dead_letters.is_yes() {
        Some(fx.dead_letters(&topic).await)
    } else {
        None
    };
    let mut consumer = consumer(&fx, &topic, &group).await;
    let mut publisher = fx.publisher(&topic).await;
    let message = Message::new(&topic, "poison").with_header("tenant", "acme");
    publish::<F>(&mut publisher, message).await;
    let delivery = recv::<F>(&mut consumer, "the message").await;
    if let Support::No(reason) = F::CAPABILITIES.redelivery {
        // At most once: the broker can neither dead-letter nor redeliver, and the
        // reject must say so instead of pretending.
        assert!(
            !delivery.acker().is_tracked(),
            "{}: redelivery is off, so deliveries must say they are not tracked",
            F::NAME
        );
        let error = delivery
            .reject("cannot parse")
            .await
            .expect_err("rejecting an at-most-once delivery must fail");
        assert!(!error.is_transient(), "{}: {error}", F::NAME);
        assert_eq!(
            delivery.settlement(),
            Some(tower_mq::Settlement::Dropped),
            "{}",
            F::NAME
        );
        assert_quiet::<F>(&mut consumer, "the message was dropped").await;
        return Outcome::checked_instead(
            reason,
            "a reject fails with a permanent error, settles Dropped and nothing comes again",
        );
    }
    delivery
        .reject("cannot parse")
        .await
        .unwrap_or_else(|e| panic!("{}: reject failed: {e}", F::NAME));
    assert_quiet::<F>(&mut consumer, "the message was rejected").await;

    checks.apply("the dead letter", F::CAPABILITIES.dead_letters);
    let Some(dead) = dead.as_mut() else {
        return checks.passed();
    };
    let letter = recv::<F>(dead, "the dead letter").await;
    assert_eq!(payload_text(&letter), "poison", "{}", F::NAME);
    assert_eq!(
        letter.message().headers().get_str("tenant"),
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
    checks.passed()
}

/// `serve` with a handler that always fails on one message: that message is retried
/// until `max_deliveries` and then dead-lettered; the other messages are handled.
pub async fn serve_dead_letters_after_repeated_failures<F: Fixture>() -> Outcome {
    const MAX_DELIVERIES: u32 = 3;
    let fx = F::connect().await;
    let topic = fx.unique("serve-dead-letters");
    let group = fx.unique("servers");
    let caps = F::CAPABILITIES;
    let redelivery = caps.redelivery.is_yes();
    let mut checks = Checks::default();
    let mut dead = if checks.apply("the dead letter", caps.dead_letters) {
        Some(fx.dead_letters(&topic).await)
    } else {
        None
    };
    let consumer = consumer(&fx, &topic, &group).await;
    let (events, mut seen) = mpsc::unbounded_channel::<String>();
    let handler = service_fn(move |delivery: Delivery| {
        let events = events.clone();
        async move {
            let text = payload_text(&delivery);
            let _ = events.send(format!("{text}#{}", delivery.delivery_count()));
            if text == "poison" {
                return Err(BoxError::from("the handler always fails on this one"));
            }
            Ok(())
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        serve(consumer, handler)
            .max_deliveries(MAX_DELIVERIES)
            .requeue_delay(|_| Duration::from_millis(10))
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );

    let mut publisher = fx.publisher(&topic).await;
    for body in ["ok-1", "poison", "ok-2"] {
        publish::<F>(&mut publisher, Message::new(&topic, body)).await;
    }
    let attempts = if redelivery {
        MAX_DELIVERIES as usize
    } else {
        1
    };
    let mut got = Vec::new();
    while got.len() < 2 + attempts {
        match tokio::time::timeout(WAIT, seen.recv()).await {
            Ok(Some(event)) => got.push(event),
            _ => panic!("{}: the handler saw only {got:?}", F::NAME),
        }
    }
    if let Some(dead) = dead.as_mut() {
        let letter = recv::<F>(dead, "the dead-lettered message").await;
        assert_eq!(payload_text(&letter), "poison", "{}", F::NAME);
        let reason = fx.death_reason(&letter).unwrap_or_default();
        assert!(
            reason.contains(&format!("failed {MAX_DELIVERIES} times")),
            "{}: death reason {reason:?}",
            F::NAME
        );
        ack::<F>(&letter).await;
    }
    stop.send(()).ok();
    let summary = tokio::time::timeout(WAIT, server)
        .await
        .unwrap_or_else(|_| panic!("{}: serve did not shut down", F::NAME))
        .expect("serve panicked")
        .unwrap_or_else(|e| panic!("{}: serve failed: {e}", F::NAME));

    let poison: Vec<&String> = got.iter().filter(|e| e.starts_with("poison#")).collect();
    assert_eq!(
        poison.len(),
        attempts,
        "{}: poison attempts {got:?}",
        F::NAME
    );
    if redelivery && checks.apply("the exact delivery count", caps.exact_delivery_count) {
        assert_eq!(poison, ["poison#1", "poison#2", "poison#3"], "{}", F::NAME);
    }
    for ok in ["ok-1#1", "ok-2#1"] {
        assert!(
            got.iter().any(|e| e == ok),
            "{}: {ok} not handled: {got:?}",
            F::NAME
        );
    }
    assert_eq!(summary.acked, 2, "{}: {summary:?}", F::NAME);
    assert_eq!(
        summary.rejected,
        u64::from(redelivery),
        "{}: {summary:?}",
        F::NAME
    );
    assert_eq!(
        summary.nacked as usize,
        attempts - 1,
        "{}: {summary:?}",
        F::NAME
    );
    // At most once, the failed message is gone, and `serve` says so.
    assert_eq!(
        summary.dropped,
        u64::from(!redelivery),
        "{}: {summary:?}",
        F::NAME
    );
    assert_quiet_events::<F>(&mut seen).await;
    match caps.redelivery {
        Support::Yes => checks.passed(),
        Support::No(reason) => Outcome::checked_instead(
            reason,
            "serve hands the failing message to the handler once, then counts it as \
             dropped; the other messages are handled",
        ),
    }
}

async fn assert_quiet_events<F: Fixture>(seen: &mut mpsc::UnboundedReceiver<String>) {
    if let Ok(Some(event)) = tokio::time::timeout(QUIET, seen.recv()).await {
        panic!(
            "{}: the handler was called after shutdown: {event}",
            F::NAME
        );
    }
}
