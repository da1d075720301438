//! A shared command connection that knows whether it is up, so publishers can report
//! a lost connection as readiness.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{RedisError, RedisResult};
use tokio::sync::watch;

use super::config::Config;
use super::{is_connection_error, redis_error};
use crate::connect_retry::Delays;
use crate::{Error, Operation};

/// A [`ConnectionManager`] plus a cheap "is the connection up" flag.
///
/// A command that fails because the connection dropped lowers the flag and starts one
/// background probe (a `PING` with backoff through the same manager, which makes it
/// reconnect); the first success raises the flag again and wakes every publisher whose
/// `poll_ready` was waiting.
#[derive(Clone)]
pub(crate) struct Connection {
    manager: ConnectionManager,
    health: Arc<Health>,
}

struct Health {
    up: watch::Sender<bool>,
    /// The flag as last sent, read on every command without the channel's lock.
    is_up: AtomicBool,
    probing: AtomicBool,
    max_backoff: Duration,
}

/// A future that resolves once the connection is up again. `Sync` so that the
/// publishers keeping one between polls are `Sync` (axum state, `BoxCloneSyncService`).
type Reconnected = Pin<Box<dyn Future<Output = ()> + Send + Sync>>;

impl Connection {
    pub(crate) async fn connect(config: &Config) -> Result<Self, Error> {
        let manager = config.connect().await?;
        Ok(Connection::from_manager(
            manager,
            config.reconnect_max_delay(),
        ))
    }

    pub(crate) fn from_manager(manager: ConnectionManager, max_backoff: Duration) -> Self {
        let (up, _) = watch::channel(true);
        Connection {
            manager,
            health: Arc::new(Health {
                up,
                is_up: AtomicBool::new(true),
                probing: AtomicBool::new(false),
                max_backoff,
            }),
        }
    }

    /// A handle to send commands on (clones share the connection).
    pub(crate) fn manager(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// This handle's own connection manager, to send a command on without a clone.
    pub(crate) fn manager_mut(&mut self) -> &mut ConnectionManager {
        &mut self.manager
    }

    pub(crate) fn is_up(&self) -> bool {
        self.health.is_up.load(Ordering::Acquire)
    }

    /// Records the outcome of a command: a dropped connection lowers the flag.
    pub(crate) fn record<T>(&self, result: &RedisResult<T>) {
        match result {
            Ok(_) => self.health.set_up(),
            Err(err) => self.record_error(err),
        }
    }

    pub(crate) fn record_error(&self, err: &RedisError) {
        if is_connection_error(err) {
            self.health.set(false);
            self.start_probe();
        }
    }

    /// `result` as the command's outcome: recorded (a dropped connection lowers the
    /// flag), and its error naming `operation` and `destination`.
    pub(crate) fn checked<T>(
        &self,
        result: RedisResult<T>,
        operation: Operation,
        destination: &str,
    ) -> Result<T, Error> {
        self.record(&result);
        result.map_err(|err| redis_error(operation, destination, err))
    }

    /// Polls until the connection is up; `waiter` keeps the wait between polls.
    fn poll_up(&self, cx: &mut Context<'_>, waiter: &mut Option<Reconnected>) -> Poll<()> {
        loop {
            if self.is_up() {
                *waiter = None;
                return Poll::Ready(());
            }
            let wait = waiter.get_or_insert_with(|| {
                let mut rx = self.health.up.subscribe();
                Box::pin(async move {
                    let _ = rx.wait_for(|up| *up).await;
                })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(()) => *waiter = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn start_probe(&self) {
        if self.health.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.health.probing.store(false, Ordering::Release);
            return;
        };
        let health = Arc::downgrade(&self.health);
        let manager = self.manager.clone();
        runtime.spawn(probe(health, manager));
    }
}

impl Health {
    fn set_up(&self) {
        if !self.is_up.load(Ordering::Acquire) {
            self.set(true);
        }
    }

    fn set(&self, up: bool) {
        // Under the channel's lock, so that the flag and the channel agree.
        self.up.send_modify(|flag| {
            *flag = up;
            self.is_up.store(up, Ordering::Release);
        });
    }
}

/// Pings until the server answers, then raises the flag. Stops when every handle on
/// the connection is gone.
async fn probe(health: Weak<Health>, mut manager: ConnectionManager) {
    let Some(mut delays) = health.upgrade().map(|h| probe_delays(h.max_backoff)) else {
        return;
    };
    loop {
        let pong: RedisResult<String> = redis::cmd("PING").query_async(&mut manager).await;
        let Some(health) = health.upgrade() else {
            return;
        };
        if pong.is_ok() {
            health.probing.store(false, Ordering::Release);
            health.set_up();
            return;
        }
        drop(health);
        tokio::time::sleep(delays.next_delay()).await;
    }
}

/// The probe's delays: from 20 ms up to `max_backoff`, jittered so that the probes of
/// many connections to a restarted server do not ping in lockstep.
fn probe_delays(max_backoff: Duration) -> Delays {
    Delays::new(Duration::from_millis(20), max_backoff)
}

/// `poll_ready` for the publishers on a [`Connection`]: pending while it is down.
///
/// A clone shares the connection and starts with no wait of its own, so services
/// holding one can derive `Clone`.
pub(crate) struct Readiness {
    connection: Connection,
    waiter: Option<Reconnected>,
}

impl Readiness {
    pub(crate) fn new(connection: Connection) -> Self {
        Readiness {
            connection,
            waiter: None,
        }
    }

    /// The connection whose state this reports.
    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.connection.poll_up(cx, &mut self.waiter).map(Ok)
    }
}

impl Clone for Readiness {
    fn clone(&self) -> Self {
        Readiness::new(self.connection.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_probes_wait_different_delays() {
        let (mut a, mut b) = (
            probe_delays(Duration::from_secs(1)),
            probe_delays(Duration::from_secs(1)),
        );
        let a: Vec<_> = (0..8).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(a, b, "two probes back off in lockstep");
        assert!(a.iter().chain(&b).all(|d| *d <= Duration::from_secs(1)));
    }
}
