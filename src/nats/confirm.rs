//! Group-committed confirmations: one server round trip answers every publish that was
//! waiting for one.
//!
//! NATS processes a connection's operations in order, so a message this connection
//! sends to itself and gets back proves that the server processed everything sent
//! before it (a client flush only writes to the socket). A publish that wants that
//! proof takes the number of the next round, wakes the connection's confirmer task and
//! waits for that round or a later one to come back; the task sends one loopback
//! message per round, so 100 publishes in flight share one round trip instead of
//! paying one each.
//!
//! The loopback subject is a fresh inbox that only this connection subscribes to:
//! nobody can answer in its place, so a subscriber on `>` elsewhere (which sees every
//! subject) cannot stall a confirmation, as it could stall a request to a probe
//! subject.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{oneshot, watch, Notify};

/// Why a round did not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The loopback message did not come back within the timeout.
    TimedOut(Duration),
    /// The client is closed.
    Closed,
}

/// The last round the confirmer finished, and how.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    round: u64,
    failure: Option<Failure>,
}

struct Shared {
    /// The round the next loopback message will carry (rounds start at 1).
    next_round: AtomicU64,
    wake: Notify,
    done: watch::Sender<Outcome>,
}

/// A connection's confirmer: cheap to share; the task ends when the last handle is
/// dropped.
pub(crate) struct Confirmer {
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl Confirmer {
    /// Starts the confirmer task of `client`, whose rounds time out after `timeout`.
    pub(crate) fn start(client: async_nats::Client, timeout: Duration) -> Self {
        let (done, _) = watch::channel(Outcome {
            round: 0,
            failure: None,
        });
        let shared = Arc::new(Shared {
            next_round: AtomicU64::new(1),
            wake: Notify::new(),
            done,
        });
        let (stop_tx, stop) = oneshot::channel();
        tokio::spawn(run(client, shared.clone(), timeout, stop));
        Confirmer {
            shared,
            _stop: stop_tx,
        }
    }

    /// Waits until the server processed everything this connection sent before the
    /// call.
    pub(crate) async fn confirm(&self) -> Result<(), Failure> {
        // Everything sent before this load goes out before the loopback message of
        // `round`: the task takes a round number before it sends that round's message,
        // and the client's command queue keeps the order.
        let round = self.shared.next_round.load(Ordering::SeqCst);
        let mut done = self.shared.done.subscribe();
        self.shared.wake.notify_one();
        let outcome = done
            .wait_for(|outcome| outcome.round >= round)
            .await
            .map(|outcome| *outcome);
        match outcome {
            Ok(Outcome { failure: None, .. }) => Ok(()),
            Ok(Outcome {
                failure: Some(failure),
                ..
            }) => Err(failure),
            Err(_) => Err(Failure::Closed),
        }
    }
}

async fn run(
    client: async_nats::Client,
    shared: Arc<Shared>,
    timeout: Duration,
    mut stop: oneshot::Receiver<()>,
) {
    let subject = client.new_inbox();
    let mut loopback = client.subscribe(subject.clone()).await.ok();
    let subject = async_nats::Subject::from(subject);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = shared.wake.notified() => {}
        }
        let round = shared.next_round.fetch_add(1, Ordering::SeqCst);
        let failure = match loopback.as_mut() {
            None => Some(Failure::Closed),
            Some(loopback) => {
                let sent = client
                    .publish(
                        subject.clone(),
                        Bytes::copy_from_slice(&round.to_be_bytes()),
                    )
                    .await;
                match sent {
                    Err(_) => Some(Failure::Closed),
                    Ok(()) => tokio::select! {
                        _ = &mut stop => return,
                        back = tokio::time::timeout(timeout, returned(loopback, round)) => match back {
                            Ok(true) => None,
                            Ok(false) => Some(Failure::Closed),
                            Err(_) => Some(Failure::TimedOut(timeout)),
                        },
                    },
                }
            }
        };
        if failure == Some(Failure::Closed) {
            loopback = None;
        }
        shared.done.send_replace(Outcome { round, failure });
    }
}

/// Reads the loopback subscription until round `round` (or a later one) comes back;
/// `false` if the subscription ended.
async fn returned(loopback: &mut async_nats::Subscriber, round: u64) -> bool {
    while let Some(message) = loopback.next().await {
        let seen = <[u8; 8]>::try_from(&message.payload[..])
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if seen >= round {
            return true;
        }
    }
    false
}
