//! Bounded waits for what a test expects to happen: a delivery to arrive, a condition
//! to hold, an operation to succeed again after an outage. The bound is how long a
//! failure takes to show, not a delay: each returns as soon as it can.

#![allow(dead_code)] // each test target uses a different part

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tower_mq::{Delivery, Error};

/// The next delivery of `stream`, which should be `what`, within `wait`.
pub async fn next_within<S>(stream: &mut S, what: &str, wait: Duration) -> Delivery
where
    S: Stream<Item = Result<Delivery, Error>> + Unpin,
{
    match tokio::time::timeout(wait, stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("receiving {what} failed: {e}"),
        Ok(None) => panic!("the stream ended before {what}"),
        Err(_) => panic!("{what} did not arrive within {wait:?}"),
    }
}

/// Polls `check` until it holds, failing the test after `wait` with `what`.
pub async fn until(what: &str, wait: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wait;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within {wait:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `attempt` until it succeeds, failing the test after `wait` with `what`: a
/// transient error (the outage, a redial under way) is tried again, a permanent one
/// fails the test.
pub async fn until_ok<T>(
    what: &str,
    wait: Duration,
    mut attempt: impl AsyncFnMut() -> Result<T, Error>,
) -> T {
    let attempts = async {
        loop {
            match attempt().await {
                Ok(done) => return done,
                Err(e) => assert!(e.is_transient(), "{e}"),
            }
        }
    };
    tokio::time::timeout(wait, attempts)
        .await
        .unwrap_or_else(|_| panic!("{what} within {wait:?}"))
}
