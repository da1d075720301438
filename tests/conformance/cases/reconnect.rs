//! Losing the broker: publishing and consuming go on across broker restarts.
//!
//! Runs only where [`Capabilities::restart`] is set; these cases take the suite's
//! broker lock exclusively (see `conformance!` in main.rs), so no other case of the
//! run sees the broker down.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tower::retry::Policy;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::classify::DefaultClassifier;
use tower_mq::{ErrorKind, Message, Receipt};

use crate::fixture::*;

/// Retries what the classifier calls transient, with exponential backoff.
///
/// tower-mq-layers' own retry and circuit breaker are not in this tree yet, so the
/// case stacks tower's `retry` with this small policy, and tower's `timeout`.
#[derive(Clone)]
struct TransientRetry {
    attempts_left: u32,
    backoff: Duration,
}

impl TransientRetry {
    fn new() -> Self {
        TransientRetry {
            attempts_left: 40,
            backoff: Duration::from_millis(25),
        }
    }
}

impl Policy<Message, Receipt, BoxError> for TransientRetry {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _message: &mut Message,
        result: &mut Result<Receipt, BoxError>,
    ) -> Option<Self::Future> {
        let err = result.as_ref().err()?;
        if self.attempts_left == 0
            || DefaultClassifier::new().classify_dyn(&**err) != ErrorKind::Transient
        {
            return None;
        }
        self.attempts_left -= 1;
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
        Some(Box::pin(tokio::time::sleep(wait)))
    }

    fn clone_request(&mut self, message: &Message) -> Option<Message> {
        Some(message.clone())
    }
}

/// 10,000 messages published through a retry + timeout stack while the broker is
/// stopped and started at a third and at half of the run: every message is received
/// at least once. Reports how many were lost (must be 0) and duplicated (allowed:
/// at-least-once).
pub async fn publish_and_consume_across_broker_restarts<F: Fixture>() {
    const COUNT: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    if !F::CAPABILITIES.restart {
        // The broker cannot be restarted by the suite (an in-process broker has no
        // connection to lose): there is no outage to survive.
        return;
    }
    let fx = Arc::new(F::connect().await);
    let topic = fx.unique("reconnect");
    let group = fx.unique("survivors");
    fx.declare_group(&topic, &group).await;
    let stack = ServiceBuilder::new()
        .retry(TransientRetry::new())
        .timeout(Duration::from_secs(2))
        .service(fx.publisher(&topic).await);

    // Consume in the background: every payload, how often, and the errors seen.
    let received: Arc<Mutex<HashMap<usize, u32>>> = Arc::default();
    let consumer_errors = Arc::new(Mutex::new(0usize));
    let mut consumer = fx.group_consumer(&topic, &group).await;
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
                if received.len() == COUNT {
                    return;
                }
            }
            panic!("{}: the consumer ended", F::NAME);
        })
    };

    // Restart the broker at a third and at half of the run, while publishing goes on.
    let (progress, mut watched) = tokio::sync::watch::channel(0usize);
    let restarting = {
        let fx = fx.clone();
        tokio::spawn(async move {
            for at in [COUNT / 3, COUNT / 2] {
                let _ = watched.wait_for(|done| *done >= at).await;
                fx.stop_broker().await;
                fx.start_broker().await;
            }
        })
    };
    let started = tokio::time::Instant::now();
    let mut publishing = futures_util::stream::iter(0..COUNT)
        .map(|i| {
            let stack = stack.clone();
            let message = Message::new(&topic, i.to_string());
            async move { (i, stack.oneshot(message).await) }
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
    let lost = (0..COUNT).filter(|i| !received.contains_key(i)).count();
    let duplicated: u32 = received.values().map(|n| n - 1).sum();
    eprintln!(
        "{}: reconnect: {COUNT} published across 2 restarts, {} received, lost {lost}, \
         duplicated {duplicated}, consumer errors {}; published in {published_after:?}, \
         received in {received_after:?}",
        F::NAME,
        received.len(),
        consumer_errors.lock().unwrap()
    );
    match finished {
        Ok(task) => task.expect("the consuming task panicked"),
        Err(_) => panic!("{}: {lost} of {COUNT} messages lost", F::NAME),
    }
    assert_eq!(lost, 0, "{}", F::NAME);
}
