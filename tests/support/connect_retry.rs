//! The steps every broker's tests of retrying the first connect
//! (`Config::connect_retry`) take: a connect that waits for a server that is not there
//! yet, the default that fails at once, a limit that ends the retries, and refusals
//! that are never retried.

#![allow(dead_code)] // each test target uses a different part

use std::future::Future;
use std::time::{Duration, Instant};

use tower_mq::{ConnectRetry, Error, ErrorKind, Operation};

/// How long a retrying connect must still be waiting while nothing listens: without
/// the option it fails within milliseconds.
const STILL_WAITING: Duration = Duration::from_millis(500);

/// Runs `connect` (a first connect, or subscribe, with `connect_retry` on, to a port
/// where nothing listens yet) on its own task, checks it is still waiting a moment
/// later, then awaits `appear` (what makes the server appear on that port) and returns
/// what the connect gave once the server was there, within `wait`, with what `appear`
/// returned (keep it: it may be the server).
pub async fn connects_once_there<T, S>(
    connect: impl Future<Output = Result<T, Error>> + Send + 'static,
    appear: impl Future<Output = S>,
    wait: Duration,
) -> (T, S)
where
    T: Send + 'static,
{
    let mut connecting = tokio::spawn(connect);
    assert!(
        tokio::time::timeout(STILL_WAITING, &mut connecting)
            .await
            .is_err(),
        "the connect ended while nothing listened"
    );
    let appeared = appear.await;
    let connected = tokio::time::timeout(wait, connecting)
        .await
        .unwrap_or_else(|_| panic!("nothing connected within {wait:?} once the server was there"))
        .expect("the connecting task")
        .unwrap_or_else(|e| panic!("the connect failed once the server was there: {e}"));
    (connected, appeared)
}

/// A broker's config, which takes the option.
pub trait Retrying: Clone {
    fn connect_retry(self, retry: ConnectRetry) -> Self;
}

#[cfg(feature = "nats")]
impl Retrying for tower_mq::nats::Config {
    fn connect_retry(self, retry: ConnectRetry) -> Self {
        self.connect_retry(retry)
    }
}

#[cfg(feature = "rabbitmq")]
impl Retrying for tower_mq::rabbitmq::Config {
    fn connect_retry(self, retry: ConnectRetry) -> Self {
        self.connect_retry(retry)
    }
}

#[cfg(feature = "redis")]
impl Retrying for tower_mq::redis::Config {
    fn connect_retry(self, retry: ConnectRetry) -> Self {
        self.connect_retry(retry)
    }
}

/// `connect(config)`, `config` naming a port where nothing listens: with the option
/// off (the default) it fails at once, as transient; retried `Within` a limit, it gives
/// up as it should: a transient connect error, no earlier than `early` before the
/// limit (the last delay may not fit) and not long after it.
pub async fn assert_fails_at_once_unless_retried_within_a_limit<C, T, F>(
    config: C,
    connect: impl Fn(C) -> F,
    early: Duration,
) where
    C: Retrying,
    F: Future<Output = Result<T, Error>>,
    T: std::fmt::Debug,
{
    let started = Instant::now();
    let err = connect(config.clone())
        .await
        .expect_err("nothing listens on the port");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "the default (off) took {:?}",
        started.elapsed()
    );

    let limit = Duration::from_secs(2);
    let started = Instant::now();
    let err = connect(Retrying::connect_retry(config, ConnectRetry::Within(limit)))
        .await
        .expect_err("nothing listens on the port");
    let took = started.elapsed();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.operation(), Operation::Connect);
    assert!(took >= limit - early, "gave up after {took:?}");
    assert!(
        took < limit + Duration::from_secs(2),
        "gave up after {took:?}"
    );
}

/// `connect`, retried `Forever` with credentials the server refuses, fails within
/// `within`, as permanent (and never after `wait`, the bound of a broken test); the
/// error, for what else the test asserts.
pub async fn assert_refusal_not_retried<T: std::fmt::Debug>(
    connect: impl Future<Output = Result<T, Error>>,
    wait: Duration,
    within: Duration,
) -> Error {
    let started = Instant::now();
    let err = tokio::time::timeout(wait, connect)
        .await
        .expect("a refusal must not be retried forever")
        .expect_err("the server must refuse these credentials");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(started.elapsed() < within, "took {:?}", started.elapsed());
    err
}
