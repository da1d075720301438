//! Bounded waits for what a test expects to happen after an outage or a restart: a
//! condition to hold, an operation to succeed again. The bound is how long a failure
//! takes to show, not a delay: each returns as soon as it can.

#![allow(dead_code)] // each test target uses a different part

use std::time::Duration;

use tower_mq::Error;

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
