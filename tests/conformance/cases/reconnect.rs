//! Losing the broker: publishing and consuming go on across broker restarts.
//!
//! Applies only where [`Capabilities::restart`] is supported (elsewhere the case is
//! reported as not applicable, with the flag's reason); these cases take the suite's
//! broker lock exclusively (see `conformance!` in main.rs), so no other case of the
//! run sees the broker down. The same load without restarts is a case of its own,
//! `work_queue::publish_and_consume_through_the_reliability_stack`, on every broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, RetryLayer, TimeoutLayer};
use tower_mq::Message;

use crate::fixture::*;

/// 10,000 messages published through a retry + circuit breaker + timeout stack (the
/// project's own layers) while the broker is stopped and started at a third and at
/// half of the run. Reports how many were lost and duplicated (allowed:
/// at-least-once).
///
/// - A broker whose groups keep messages ([`Capabilities::durable_groups`]) loses
///   none: every message is received at least once. Each message has its own message
///   id, so brokers that deduplicate by id (JetStream) store a retried publish once.
/// - An at-most-once broker (core NATS) may lose what it had accepted but not yet
///   forwarded when it went down, and what was on the wire to the consumer. The case
///   reports the loss and asserts what such a broker does promise: every publish
///   completes (retried until it succeeds, none hangs or vanishes without an error),
///   and the stream resumes: the last tenth, published after the restarts, arrives.
pub async fn publish_and_consume_across_broker_restarts<F: Fixture>() -> Outcome {
    if let Support::No(reason) = F::CAPABILITIES.restart {
        return Outcome::not_applicable(reason);
    }
    load::<F>(true).await
}

/// The load behind the reconnect case: 10,000 messages with `restarts`, 1,000 without
/// (the broker up throughout; see
/// `work_queue::publish_and_consume_through_the_reliability_stack`).
pub async fn load<F: Fixture>(restarts: bool) -> Outcome {
    const IN_FLIGHT: usize = 32;
    // Without outages a tenth of the load is enough, and keeps the single-record-batch
    // tansu fixture fast.
    let count: usize = if restarts { 10_000 } else { 1_000 };
    let mut checks = Checks::default();
    // Only an outage excuses a loss, and only on a broker whose groups keep nothing:
    // with the broker up throughout, every message must arrive on every broker.
    let durable = !restarts
        || checks.apply(
            "every message arriving (only the last tenth is required)",
            F::CAPABILITIES.durable_groups,
        );
    let fx = Arc::new(F::connect().await);
    let topic = fx.unique("reconnect");
    let group = fx.unique("survivors");
    if F::CAPABILITIES.groups.is_yes() {
        fx.declare_group(&topic, &group).await;
    }
    // Retry outermost, so every attempt passes the breaker; the breaker opens while
    // the broker is away (its rejections are transient, so they are retried after a
    // backoff instead of hammering the broker); the timeout bounds each attempt. No
    // retry budget: the case wants every publish to complete, and the breaker already
    // keeps the outage from being flooded. Attempts are bounded by time: RabbitMQ
    // takes up to about 15 s to come back here.
    let stack = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                Backoff::exponential(Duration::from_millis(25), Duration::from_secs(1))
                    .unlimited_attempts()
                    .max_elapsed(Duration::from_secs(90)),
            )
            .without_budget(),
        )
        .layer(
            CircuitBreakerLayer::new()
                .count_window(100)
                .minimum_calls(20)
                .failure_rate_threshold(50.0)
                .wait_in_open(Duration::from_millis(250))
                .half_open_calls(4),
        )
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(fx.publisher(&topic).await);

    // Consume in the background: every payload, how often, and the errors seen.
    let received: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let consumer_errors = Arc::new(Mutex::new(0usize));
    let mut consumer = consumer(&*fx, &topic, &group).await;
    let consuming = {
        let received = received.clone();
        let consumer_errors = consumer_errors.clone();
        tokio::spawn(async move {
            while let Some(item) = consumer.next().await {
                let delivery = match item {
                    Ok(delivery) => delivery,
                    Err(err) => {
                        assert!(
                            err.is_transient(),
                            "{}: permanent consumer error: {err}",
                            F::NAME
                        );
                        *consumer_errors.lock().unwrap() += 1;
                        continue;
                    }
                };
                let index: usize = payload_text(&delivery).parse().expect("an index");
                // Acks run concurrently, off the receiving path; one lost to the
                // outage only means a redelivery.
                tokio::spawn(async move {
                    let _ = delivery.ack().await;
                });
                let mut received = received.lock().unwrap();
                *received.entry(index).or_default() += 1;
                let done = if durable {
                    received.len() == count
                } else {
                    (count * 9 / 10..count).all(|i| received.contains_key(&i))
                };
                if done {
                    return;
                }
            }
            panic!("{}: the consumer ended", F::NAME);
        })
    };

    // Restart the broker at a third and at half of the run, while publishing goes on.
    // The messages after each restart point wait until the broker has been stopped
    // for it: a fast broker (ZeroMQ) would otherwise have accepted the whole run into
    // socket buffers before the first stop, and the outage would hit nothing but what
    // was still on its way, including the last tenth.
    let restart_points = [count / 3, count / 2];
    let (progress, mut watched) = tokio::sync::watch::channel(0usize);
    let (stopped, stops) = tokio::sync::watch::channel(0usize);
    let restarting = {
        let fx = fx.clone();
        tokio::spawn(async move {
            if !restarts {
                return;
            }
            for at in restart_points {
                let _ = watched.wait_for(|done| *done >= at).await;
                fx.stop_broker().await;
                stopped.send_modify(|n| *n += 1);
                fx.start_broker().await;
            }
        })
    };
    let started = tokio::time::Instant::now();
    let mut publishing = futures_util::stream::iter(0..count)
        .map(|i| {
            let stack = stack.clone();
            let message =
                Message::new(&topic, i.to_string()).with_message_id(format!("{topic}-{i}"));
            let mut stops = stops.clone();
            let after = if restarts {
                restart_points.iter().filter(|&&at| i >= at).count()
            } else {
                0
            };
            async move {
                if after > 0 {
                    let _ = stops.wait_for(|n| *n >= after).await;
                }
                (i, stack.oneshot(message).await)
            }
        })
        .buffer_unordered(IN_FLIGHT);
    let mut done = 0;
    let mut failed = Vec::new();
    while let Some((i, result)) = publishing.next().await {
        if let Err(err) = result {
            failed.push((i, err.to_string()));
        }
        done += 1;
        progress.send_replace(done);
    }
    let published_after = started.elapsed();
    restarting.await.expect("the restarting task panicked");
    assert!(
        failed.is_empty(),
        "{}: {} publishes failed after retries, first: {:?}",
        F::NAME,
        failed.len(),
        failed.first()
    );

    let finished = tokio::time::timeout(Duration::from_secs(120), consuming).await;
    let received_after = started.elapsed();
    let received = received.lock().unwrap().clone();
    let lost = (0..count).filter(|i| !received.contains_key(i)).count();
    let duplicated: u32 = received.values().map(|n| n - 1).sum();
    eprintln!(
        "{}: reconnect: {count} published across {} restarts, {} received, lost {lost}, \
         duplicated {duplicated}, consumer errors {}; published in {published_after:?}, \
         received in {received_after:?}",
        F::NAME,
        if restarts { 2 } else { 0 },
        received.len(),
        consumer_errors.lock().unwrap()
    );
    match finished {
        Ok(task) => task.expect("the consuming task panicked"),
        Err(_) if durable => {
            panic!("{}: {lost} of {count} messages lost", F::NAME)
        }
        Err(_) => {
            let late = (count * 9 / 10..count)
                .filter(|i| !received.contains_key(i))
                .count();
            panic!(
                "{}: the stream did not resume after the restarts: {late} of the last \
                 {} messages never arrived",
                F::NAME,
                count / 10
            )
        }
    }
    if durable {
        assert_eq!(lost, 0, "{}", F::NAME);
    }
    checks.passed()
}
