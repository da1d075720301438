//! Retrying the first connect, and the jittered delays of every reconnect loop.
//!
//! A service that starts before its broker (containers started together, a broker
//! restarting during a deploy) would otherwise fail at once. [`ConnectRetry`], set with
//! `connect_retry` on the Redis, RabbitMQ and NATS configs, retries the first connect
//! with the backoff the module uses to reconnect, jittered by the layers' own
//! [`Backoff`] and [`FastRng`], so that many services waiting for one broker do not
//! come back in waves.

#![cfg_attr(
    not(any(feature = "redis", feature = "nats", feature = "rabbitmq")),
    allow(dead_code)
)]

use std::future::Future;
use std::time::Duration;

use tower_mq_layers::retry::{Backoff, FastRng};

use crate::Error;

/// Whether the first connect is retried while the broker cannot be reached.
///
/// Only transient failures are retried (nothing listens, a timeout, a broker still
/// starting); a permanent one (a malformed address, refused credentials) fails at
/// once, whatever this says. The delays are those of the module's reconnect backoff,
/// with full jitter.
///
/// The default is [`ConnectRetry::Off`]: a wrong address fails fast, which is what a
/// command-line tool or a test wants. A long-running service that may start before its
/// broker should set [`ConnectRetry::Within`] (bounded, so that a broker that never
/// comes still ends in an error the orchestrator can see) or [`ConnectRetry::Forever`].
///
/// ```
/// use std::time::Duration;
/// use tower_mq::ConnectRetry;
///
/// # #[cfg(all(feature = "redis", feature = "nats", feature = "rabbitmq"))]
/// # {
/// let redis = tower_mq::redis::Config::new("redis://127.0.0.1:6379")
///     .connect_retry(ConnectRetry::Within(Duration::from_secs(30)));
/// let nats = tower_mq::nats::Config::new("nats://127.0.0.1:4222")
///     .connect_retry(ConnectRetry::Forever);
/// let amqp = tower_mq::rabbitmq::Config::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .connect_retry(ConnectRetry::Within(Duration::from_secs(30)));
/// # let _ = (redis, nats, amqp);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConnectRetry {
    /// One attempt: the connect fails with the first error (the default).
    #[default]
    Off,
    /// Retries until a connect succeeds, a permanent error comes, or the next attempt
    /// would start more than this long after the first; then fails with the last error.
    Within(Duration),
    /// Retries until a connect succeeds or a permanent error comes.
    Forever,
}

/// The bounds of a config's jittered exponential backoff between (re)connect attempts,
/// as its `reconnect_backoff` option sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReconnectBackoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl ReconnectBackoff {
    /// Delays from `min` up to `max` (raised to `min` if below it).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        ReconnectBackoff {
            min,
            max: max.max(min),
        }
    }

    /// The delays of one (re)connect loop, jittered with a generator of its own.
    pub(crate) fn delays(self) -> Delays {
        Delays::new(self.min, self.max)
    }
}

/// The delays between the attempts of one reconnect loop: the module's exponential
/// backoff with full jitter from a generator of the loop's own, so that loops that
/// failed together (every connection to a broker that restarted) do not retry together.
#[derive(Debug)]
pub(crate) struct Delays {
    backoff: Backoff,
    rng: FastRng,
    retry: u32,
}

impl Delays {
    /// Delays growing from `initial` to `max`, jittered.
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Delays {
            backoff: Backoff::exponential(initial, max).unlimited_attempts(),
            rng: FastRng::new(),
            retry: 0,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.backoff.delay(self.retry, &mut self.rng);
        self.retry = self.retry.saturating_add(1);
        delay
    }

    /// Starts again from the smallest delay (after a success).
    #[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
    pub(crate) fn reset(&mut self) {
        self.retry = 0;
    }
}

/// Runs `attempt` once, or again after each transient failure as `retry` allows,
/// waiting the jittered `backoff` in between. `what` names the connection in the logs
/// (never with credentials).
pub(crate) async fn connect<T, F, Fut>(
    retry: ConnectRetry,
    backoff: ReconnectBackoff,
    what: &str,
    mut attempt: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let started = tokio::time::Instant::now();
    let mut delays = backoff.delays();
    loop {
        let error = match attempt().await {
            Ok(connected) => return Ok(connected),
            Err(error) => error,
        };
        if !error.is_transient() {
            return Err(error);
        }
        let delay = delays.next_delay();
        match retry {
            ConnectRetry::Off => return Err(error),
            ConnectRetry::Within(limit) if started.elapsed() + delay > limit => {
                return Err(error);
            }
            _ => {}
        }
        tracing::warn!(broker = error.broker(), connection = %what, %error, retry_in = ?delay, "connect failed; retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorKind, Operation};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn two_loops_draw_different_delays_within_the_same_ceilings() {
        let mut a = Delays::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Delays::new(Duration::from_millis(100), Duration::from_secs(5));
        let a: Vec<_> = (0..8).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(a, b, "two loops back off in lockstep");
        let ceiling = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(5));
        for (n, (a, b)) in a.iter().zip(&b).enumerate() {
            let ceiling = ceiling.ceiling(n as u32);
            assert!(*a <= ceiling && *b <= ceiling, "retry {n}: {a:?} {b:?}");
        }
    }

    fn counting(
        count: &AtomicU32,
        kind: ErrorKind,
        succeed_at: u32,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, Error>> + '_ {
        move || {
            let n = count.fetch_add(1, Ordering::Relaxed) + 1;
            std::future::ready(if n == succeed_at {
                Ok(n)
            } else {
                Err(Error::new("test", Operation::Connect, kind))
            })
        }
    }

    fn backoff() -> ReconnectBackoff {
        ReconnectBackoff::new(Duration::from_millis(100), Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn off_makes_one_attempt_and_permanent_errors_are_never_retried() {
        let transient = ErrorKind::Transient;
        let count = AtomicU32::new(0);
        let result = connect(
            ConnectRetry::Off,
            backoff(),
            "t",
            counting(&count, transient, 2),
        )
        .await;
        assert!(result.is_err());
        assert_eq!(count.load(Ordering::Relaxed), 1);

        let permanent = ErrorKind::Permanent;
        let count = AtomicU32::new(0);
        let result = connect(
            ConnectRetry::Forever,
            backoff(),
            "t",
            counting(&count, permanent, 2),
        )
        .await;
        assert!(result.is_err());
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_or_the_time_limit() {
        let transient = ErrorKind::Transient;
        let count = AtomicU32::new(0);
        let result = connect(
            ConnectRetry::Forever,
            backoff(),
            "t",
            counting(&count, transient, 50),
        )
        .await;
        assert_eq!(result.ok(), Some(50));

        let started = tokio::time::Instant::now();
        let count = AtomicU32::new(0);
        let limit = Duration::from_secs(10);
        let result = connect(
            ConnectRetry::Within(limit),
            backoff(),
            "t",
            counting(&count, transient, 0),
        )
        .await;
        assert!(result.is_err_and(|e| e.is_transient()));
        assert!(started.elapsed() <= limit, "{:?}", started.elapsed());
        assert!(count.load(Ordering::Relaxed) > 5);
    }
}
