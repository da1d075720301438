//! Group-committed confirmations: one server round trip answers every publish that was
//! waiting for one.
//!
//! NATS processes a connection's operations in order, so a message this connection
//! sends to itself and gets back proves that the server processed everything sent
//! before it (a client flush only writes to the socket). A publish that wants that
//! proof reads the number of the next round and waits for that round or a later one to
//! come back. The first of them to find no round under way leads one: it takes the
//! round's number, sends the loopback message, reads it back and tells everyone
//! waiting. So 100 publishes in flight share one round trip instead of paying one
//! each, and the round is driven by a caller that waits for it anyway: no task of the
//! connection's own sits between the caller and the server, which would cost two
//! wake-ups per round.
//!
//! A leader whose caller goes away (its future dropped, e.g. by a timeout) hands the
//! lead on: a publish still waiting takes it and starts a later round, which covers
//! everything the abandoned one would have. A leader whose future is kept but no
//! longer polled cannot hand anything on; the others then give up after twice the
//! timeout (the round under way and the next one), as they would for a silent server.
//!
//! The loopback subject is a fresh inbox that only this connection subscribes to:
//! nobody can answer in its place, so a subscriber on `>` elsewhere (which sees every
//! subject) cannot stall a confirmation, as it could stall a request to a probe
//! subject.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{watch, Mutex, MutexGuard};

/// Why a round did not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The loopback message did not come back within the timeout.
    TimedOut(Duration),
    /// The client is closed.
    Closed,
}

/// The last round that finished, and how.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    round: u64,
    failure: Option<Failure>,
}

/// The subscription the loopback messages come back on.
enum Loopback {
    /// Not subscribed yet: the first round subscribes.
    Unsubscribed,
    Subscribed(async_nats::Subscriber),
    /// The client closed the subscription: every later round fails.
    Closed,
}

/// A connection's confirmations: cheap to share.
pub(crate) struct Confirmer {
    client: async_nats::Client,
    subject: async_nats::Subject,
    timeout: Duration,
    /// The round the next loopback message will carry (rounds start at 1).
    next_round: AtomicU64,
    /// Held by the caller leading a round: taken with `try_lock`, never waited for.
    loopback: Mutex<Loopback>,
    done: watch::Sender<Outcome>,
}

impl Confirmer {
    /// The confirmations of `client`, whose rounds time out after `timeout`.
    pub(crate) fn new(client: async_nats::Client, timeout: Duration) -> Self {
        let subject = async_nats::Subject::from(client.new_inbox());
        let (done, _) = watch::channel(Outcome {
            round: 0,
            failure: None,
        });
        Confirmer {
            client,
            subject,
            timeout,
            next_round: AtomicU64::new(1),
            loopback: Mutex::new(Loopback::Unsubscribed),
            done,
        }
    }

    /// Waits until the server processed everything this connection sent before the
    /// call.
    pub(crate) async fn confirm(&self) -> Result<(), Failure> {
        // Everything sent before this load goes out before the loopback message of
        // `round`: a leader takes a round's number before it sends that round's
        // message, and the client's command queue keeps the order.
        let round = self.next_round.load(Ordering::SeqCst);
        let mut done = self.done.subscribe();
        let mut deadline = None;
        loop {
            // Read before trying to lead: a leader gives the lead up before it
            // publishes its outcome, so either this caller leads or it sees the
            // change below.
            let outcome = *done.borrow_and_update();
            if outcome.round >= round {
                return outcome.failure.map_or(Ok(()), Err);
            }
            if let Ok(loopback) = self.loopback.try_lock() {
                return self.lead(loopback).await;
            }
            // The round under way and the next one each end within the timeout;
            // only a leader whose future is neither polled nor dropped could make a
            // caller wait longer, and it is not left waiting for ever.
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + 2 * self.timeout);
            match tokio::time::timeout_at(deadline, done.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Failure::Closed),
                Err(_) => return Err(Failure::TimedOut(2 * self.timeout)),
            }
        }
    }

    /// Runs one round as its leader (holding `loopback`) and tells everyone waiting how
    /// it ended.
    async fn lead(&self, loopback: MutexGuard<'_, Loopback>) -> Result<(), Failure> {
        let mut lead = Lead {
            confirmer: self,
            loopback: Some(loopback),
            outcome: None,
        };
        let round = self.next_round.fetch_add(1, Ordering::SeqCst);
        let failure = lead.round(round).await.err();
        lead.outcome = Some(Outcome { round, failure });
        failure.map_or(Ok(()), Err)
    }
}

/// The lead of one round: gives the lead up and tells the others however the round
/// ends, its future dropped included.
struct Lead<'a> {
    confirmer: &'a Confirmer,
    /// `Some` until the lead is given up.
    loopback: Option<MutexGuard<'a, Loopback>>,
    /// How the round ended; `None` while it runs.
    outcome: Option<Outcome>,
}

impl Lead<'_> {
    /// Sends the loopback message of `round` and waits for it to come back.
    async fn round(&mut self, round: u64) -> Result<(), Failure> {
        let confirmer = self.confirmer;
        let Some(loopback) = self.loopback.as_deref_mut() else {
            return Err(Failure::Closed);
        };
        if let Loopback::Unsubscribed = loopback {
            // The subscription goes out before the first loopback message, in order.
            *loopback = match confirmer.client.subscribe(confirmer.subject.clone()).await {
                Ok(subscriber) => Loopback::Subscribed(subscriber),
                Err(_) => Loopback::Closed,
            };
        }
        let Loopback::Subscribed(subscriber) = loopback else {
            return Err(Failure::Closed);
        };
        confirmer
            .client
            .publish(
                confirmer.subject.clone(),
                Bytes::copy_from_slice(&round.to_be_bytes()),
            )
            .await
            .map_err(|_| Failure::Closed)?;
        match tokio::time::timeout(confirmer.timeout, returned(subscriber, round)).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                *loopback = Loopback::Closed;
                Err(Failure::Closed)
            }
            Err(_) => Err(Failure::TimedOut(confirmer.timeout)),
        }
    }
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        // The lead is given up before the outcome is told (see `confirm`).
        drop(self.loopback.take());
        match self.outcome {
            Some(outcome) => {
                self.confirmer.done.send_replace(outcome);
            }
            // Abandoned mid-round: wake the callers still waiting, so that one of
            // them leads a round of its own.
            None => self.confirmer.done.send_modify(|_| {}),
        }
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
