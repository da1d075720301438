//! Losing the broker: publishing through a retry + timeout stack while the broker is
//! stopped and started again loses nothing.
//!
//! The stack is tower's own `retry` (with a policy that retries what the error chain
//! classifies as transient) and `timeout`, until tower-mq-layers' retry and circuit
//! breaker are merged; swap them in then.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tower::retry::Policy;
use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_mq::layers::classify::{Classifier, DefaultClassifier};
use tower_mq::{ErrorKind, Message, Receipt};

use crate::fixture::*;

/// Retries transient failures with capped exponential backoff, up to a number of
/// attempts that outlasts a broker restart.
#[derive(Clone)]
struct RetryTransient {
    attempts: u32,
    max_attempts: u32,
}

impl RetryTransient {
    fn new(max_attempts: u32) -> Self {
        RetryTransient {
            attempts: 0,
            max_attempts,
        }
    }
}

impl Policy<Message, Receipt, BoxError> for RetryTransient {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _: &mut Message,
        result: &mut Result<Receipt, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if DefaultClassifier::new().classify(error) != ErrorKind::Transient
            || self.attempts >= self.max_attempts
        {
            return None;
        }
        self.attempts += 1;
        let delay = Duration::from_millis(50) * 2u32.pow(self.attempts.min(5));
        Some(Box::pin(tokio::time::sleep(
            delay.min(Duration::from_secs(1)),
        )))
    }

    fn clone_request(&mut self, request: &Message) -> Option<Message> {
        Some(request.clone())
    }
}

/// 10,000 persistent messages published with at most 32 in flight through
/// retry + timeout to a durable group, while the broker is stopped and started again
/// at 1/3 and at 1/2 of the run (where the broker can be restarted; elsewhere the
/// same load runs without restarts). Every message must be received at least once;
/// duplicates are allowed (at-least-once) and reported.
pub async fn no_message_lost_across_broker_restarts<F: Fixture>() {
    const COUNT: usize = 10_000;
    const IN_FLIGHT: usize = 32;
    let fx = Arc::new(F::connect().await);
    let topic = fx.unique("reconnect");
    let group = fx.unique("survivors");
    fx.declare_group(&topic, &group).await;
    let mut consumer = fx.group_consumer(&topic, &group).await;
    let publisher = ServiceBuilder::new()
        .retry(RetryTransient::new(200))
        .timeout(Duration::from_secs(5))
        .service(fx.publisher(&topic).await);

    // Receive concurrently, counting every delivery of every message.
    let receiving = tokio::spawn(async move {
        let mut seen: HashMap<usize, u32> = HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        while seen.len() < COUNT {
            let item = match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(item)) => item,
                Ok(None) | Err(_) => break,
            };
            // A receive error during the outage is not a lost message: keep going.
            let Ok(delivery) = item else { continue };
            let index: usize = payload_text(&delivery)
                .parse()
                .expect("payload is an index");
            *seen.entry(index).or_default() += 1;
            // An ack lost with the connection means a redelivery, not a loss.
            let _ = delivery.ack().await;
        }
        seen
    });

    let (published, mut progress) = tokio::sync::watch::channel(0usize);
    let progress_probe = progress.clone();
    let restarting = {
        let fx = fx.clone();
        tokio::spawn(async move {
            if !F::CAPABILITIES.restart {
                return 0;
            }
            let mut restarts = 0;
            for at in [COUNT / 3, COUNT / 2] {
                if progress.wait_for(|&n| n >= at).await.is_err() {
                    break;
                }
                fx.stop_broker().await;
                fx.start_broker().await;
                restarts += 1;
            }
            restarts
        })
    };

    let publishing = futures_util::stream::iter(0..COUNT)
        .map(|i| {
            let publisher = publisher.clone();
            let published = &published;
            let topic = &topic;
            async move {
                let result = publisher
                    .oneshot(Message::new(topic.as_str(), i.to_string()).with_persistent(true))
                    .await;
                published.send_modify(|n| *n += 1);
                result.err().map(|e| format!("message {i}: {e}"))
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|failure| async move { failure })
        .collect::<Vec<String>>();
    let Ok(failures) = tokio::time::timeout(Duration::from_secs(300), publishing).await else {
        panic!(
            "{}: publishing {COUNT} messages did not finish within 300 s ({} done)",
            F::NAME,
            *progress_probe.borrow()
        );
    };
    drop(published);
    let restarts = restarting.await.expect("the restarting task panicked");
    assert!(
        failures.is_empty(),
        "{}: {} publishes failed despite retries, first: {}",
        F::NAME,
        failures.len(),
        failures[0]
    );

    let seen = receiving.await.expect("the receiving task panicked");
    let lost: Vec<usize> = (0..COUNT).filter(|i| !seen.contains_key(i)).collect();
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let redeliveries: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "{}: {COUNT} published across {restarts} broker restarts: {} received, {} lost, \
         {duplicated} received more than once ({redeliveries} extra deliveries)",
        F::NAME,
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "{}: {} of {COUNT} messages lost across {restarts} restarts, e.g. {:?}",
        F::NAME,
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    if F::CAPABILITIES.restart {
        assert_eq!(restarts, 2, "{}", F::NAME);
    }
}
