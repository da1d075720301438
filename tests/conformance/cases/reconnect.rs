//! Reconnecting: a stream of messages published through a tower stack while the
//! broker is restarted twice.
//!
//! These cases stop the broker, so they run alone: the `conformance!` macro lists
//! them as exclusive, and every other case holds [`BROKER_LOCK`] shared.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tower::retry::{Policy, RetryLayer};
use tower::timeout::TimeoutLayer;
use tower::{ServiceBuilder, ServiceExt};
use tower_mq::layers::classify::{Classifier, DefaultClassifier};
use tower_mq::{BoxError, ErrorKind, Message, Receipt};

use crate::fixture::*;

/// Messages published in the case.
const COUNT: usize = 10_000;
/// Publishes in flight at once.
const IN_FLIGHT: usize = 32;
/// Upper bound on the whole case.
const CASE_LIMIT: Duration = Duration::from_secs(300);

/// tower's retry with a policy that reads the error's classification: transient errors
/// are retried (with a short pause, up to `attempts` times), permanent ones are not.
#[derive(Clone)]
struct RetryTransient {
    attempts: u32,
    retried: Arc<AtomicUsize>,
}

impl Policy<Message, Receipt, BoxError> for RetryTransient {
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(
        &mut self,
        _request: &mut Message,
        result: &mut Result<Receipt, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if self.attempts == 0 || DefaultClassifier::new().classify(error) != ErrorKind::Transient {
            return None;
        }
        self.attempts -= 1;
        self.retried.fetch_add(1, Ordering::Relaxed);
        Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))))
    }

    fn clone_request(&mut self, request: &Message) -> Option<Message> {
        Some(request.clone())
    }
}

/// 10,000 messages, each with its own message id, published through retry and timeout
/// layers while the broker is restarted at one third and at one half of the stream
/// (where [`Capabilities::restart`] is set; elsewhere the stream runs without
/// restarts).
///
/// - A broker that keeps a group's messages ([`Capabilities::durable_groups`]) loses
///   none: every publish succeeds and every message reaches the group. Duplicates (a
///   publish retried after its confirmation was lost, a delivery whose ack was lost)
///   are counted and reported, not failed: at-least-once allows them.
/// - An at-most-once broker may lose what was on the wire when it went down, and what
///   it had not yet forwarded to the group. The case reports how many were lost, and
///   asserts that every publish completed (none hangs, none vanishes without an
///   error) and that the stream resumed: every message published successfully after
///   the restarts arrives.
pub async fn stream_survives_broker_restarts<F: Fixture>() {
    tokio::time::timeout(CASE_LIMIT, run::<F>())
        .await
        .unwrap_or_else(|_| panic!("{}: the case took over {CASE_LIMIT:?}", F::NAME));
}

async fn run<F: Fixture>() {
    let fx = F::connect().await;
    let topic = fx.unique("restarts");
    let group = fx.unique("survivors");
    fx.declare_group(&topic, &group).await;
    let mut consumer = fx.group_consumer(&topic, &group).await;

    // Receive and ack everything, counting each message id.
    let received: Arc<std::sync::Mutex<HashMap<usize, usize>>> = Arc::default();
    let receiving = tokio::spawn({
        let received = received.clone();
        async move {
            while let Some(item) = consumer.next().await {
                let Ok(delivery) = item else { continue };
                let index = payload_text(&delivery).parse::<usize>().ok();
                // A failed ack is redelivered later, and counted as a duplicate then.
                let _ = delivery.ack().await;
                if let Some(index) = index {
                    *received.lock().unwrap().entry(index).or_default() += 1;
                }
            }
        }
    });

    let retried = Arc::new(AtomicUsize::new(0));
    let publisher = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryTransient {
            attempts: 100,
            retried: retried.clone(),
        }))
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .service(fx.publisher(&topic).await);

    let fx = Arc::new(fx);
    // The highest index handed to the publisher so far.
    let (progress, watch_progress) = tokio::sync::watch::channel(0usize);
    let mut restarts = None;
    let results: Vec<(usize, Result<Receipt, BoxError>)> = futures_util::stream::iter(0..COUNT)
        .map(|i| {
            if F::CAPABILITIES.restart && i == COUNT / 3 {
                let fx = fx.clone();
                let mut watch_progress = watch_progress.clone();
                restarts = Some(tokio::spawn(async move {
                    fx.stop_broker().await;
                    fx.start_broker().await;
                    // The second restart once half the stream went out.
                    let _ = watch_progress.wait_for(|i| *i >= COUNT / 2).await;
                    fx.stop_broker().await;
                    fx.start_broker().await;
                }));
            }
            progress.send_replace(i);
            let message =
                Message::new(&topic, i.to_string()).with_message_id(format!("{topic}-{i}"));
            let publisher = publisher.clone();
            async move { (i, publisher.oneshot(message).await) }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    if let Some(restarts) = restarts {
        restarts.await.expect("the restarts panicked");
    }

    let published: Vec<usize> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| *i)
        .collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{i}: {e}")))
        .collect();

    // Wait for what must arrive (everything published, or for an at-most-once
    // broker the last tenth), then a quiet while for duplicates.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let durable = F::CAPABILITIES.durable_groups;
    let must_arrive: Vec<usize> = published
        .iter()
        .copied()
        .filter(|i| durable || *i >= COUNT * 9 / 10)
        .collect();
    loop {
        let have_all = {
            let got = received.lock().unwrap();
            must_arrive.iter().all(|i| got.contains_key(i))
        };
        if have_all || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    receiving.abort();

    let got = received.lock().unwrap().clone();
    let lost: Vec<usize> = published
        .iter()
        .copied()
        .filter(|i| !got.contains_key(i))
        .collect();
    let duplicated: usize = got.values().map(|n| n - 1).sum();
    eprintln!(
        "{}: {COUNT} messages, restarts: {}, published {}, failed {}, retries {}, \
         received {} distinct, lost {}, duplicated {}",
        F::NAME,
        if F::CAPABILITIES.restart { 2 } else { 0 },
        published.len(),
        failed.len(),
        retried.load(Ordering::Relaxed),
        got.len(),
        lost.len(),
        duplicated,
    );
    for failure in failed.iter().take(3) {
        eprintln!("{}: failed after retries: {failure}", F::NAME);
    }

    if durable {
        assert!(
            failed.is_empty(),
            "{}: publishes failed after retries: {:?}",
            F::NAME,
            &failed[..failed.len().min(10)]
        );
        assert!(
            lost.is_empty(),
            "{}: {} published messages never arrived, e.g. {:?}",
            F::NAME,
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    } else {
        // At most once: losses are allowed (and reported above), but the stream must
        // resume: the last tenth, published long after the second restart, arrives.
        let late: Vec<usize> = lost
            .iter()
            .copied()
            .filter(|i| *i >= COUNT * 9 / 10)
            .collect();
        assert!(
            late.is_empty(),
            "{}: the stream did not resume after the restarts: {} late messages lost, e.g. {:?}",
            F::NAME,
            late.len(),
            &late[..late.len().min(10)]
        );
        assert!(
            published.len() + failed.len() == COUNT,
            "{}: every publish completes",
            F::NAME
        );
    }
}
