//! Group-committed confirmations: one server round trip answers every publish that was
//! waiting for one, and rounds overlap.
//!
//! NATS processes a connection's operations in order, so a message this connection
//! sends to itself and gets back proves that the server processed everything sent
//! before it (a client flush only writes to the socket). A publish that wants that
//! proof reads the number of the next round and waits for that round or a later one to
//! come back.
//!
//! Two roles, both taken by callers that wait anyway, so that no task of the
//! connection's own sits between a caller and the server (it would cost two wake-ups
//! per round):
//!
//! - **Sending a round.** A caller whose round nobody has claimed yet lets the other
//!   ready tasks run once (the publishes woken with it go out first and join its
//!   round), then claims the round and puts its loopback message in the client's
//!   queue, at once where the queue has room (else a small task sends it). A claimed
//!   round is always sent, whatever becomes of the caller that claimed it. Rounds do
//!   not wait for each other: a publish made while a round is on its way starts the
//!   next one instead of waiting for the first to come back, so a publish waits about
//!   one round trip, not up to two.
//! - **Reading the loopback messages.** The first waiting caller that finds nobody
//!   reading reads them, tells everyone waiting as each comes back, and stops when its
//!   own round is back; it gives the reading up before it tells that last outcome, so
//!   a caller still waiting either reads next or is woken by it.
//!
//! A reader whose caller goes away (its future dropped, e.g. by a timeout) hands the
//! reading on: the callers still waiting are woken and one of them reads. A reader
//! whose future is kept but no longer polled cannot hand anything on; the others then
//! give up after twice the timeout, as they would for a silent server.
//!
//! The loopback subject is a fresh inbox that only this connection subscribes to:
//! nobody can answer in its place, so a subscriber on `>` elsewhere (which sees every
//! subject) cannot stall a confirmation, as it could stall a request to a probe
//! subject.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{watch, Mutex, MutexGuard};

use super::connection::Link;

/// Why a round did not confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The loopback message did not come back within the timeout.
    TimedOut(Duration),
    /// The client is closed.
    Closed,
    /// The connection was re-established while the round was on its way: its loopback
    /// message went out on the connection that was lost, and will not come back.
    Reconnected,
}

/// The last round known to have ended, and how.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    round: u64,
    failure: Option<Failure>,
}

impl Outcome {
    /// Moves `self` on to `later` if `later` is a later round.
    fn advance(&mut self, later: Outcome) -> bool {
        let later_round = later.round > self.round;
        if later_round {
            *self = later;
        }
        later_round
    }
}

/// The subscription the loopback messages come back on.
enum Loopback {
    /// Not subscribed yet: the first round subscribes before it is sent.
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
    /// The round the next loopback message will carry (rounds start at 1); claiming a
    /// round moves it on.
    next_round: AtomicU64,
    /// Whether the loopback subscription was made (it goes out before any round).
    subscribed: AtomicBool,
    /// Held by the caller reading the loopback messages: taken with `try_lock` by
    /// readers, never waited for (but for the subscription, made before anyone reads).
    loopback: Mutex<Loopback>,
    done: watch::Sender<Outcome>,
    /// The connection's state: a reader stops waiting once it was re-established.
    link: watch::Receiver<Link>,
}

impl Confirmer {
    /// The confirmations of `client` (whose state `link` follows), whose rounds time out
    /// after `timeout`.
    pub(crate) fn new(
        client: async_nats::Client,
        link: watch::Receiver<Link>,
        timeout: Duration,
    ) -> Self {
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
            subscribed: AtomicBool::new(false),
            loopback: Mutex::new(Loopback::Unsubscribed),
            done,
            link,
        }
    }

    /// Waits until the server processed everything this connection sent before the
    /// call.
    pub(crate) async fn confirm(&self) -> Result<(), Failure> {
        // Everything sent before this load goes out before the loopback message of
        // `round` or of any later round: a round is claimed (its number taken) before
        // its message is queued, and the client's command queue keeps the order.
        let round = self.next_round.load(Ordering::SeqCst);
        let mut done = self.done.subscribe();
        let mut deadline = None;
        let mut yielded = false;
        loop {
            // Read before trying to read the loopback messages: a reader gives the
            // reading up before it tells its last outcome, so either this caller
            // reads or it sees the change below.
            let outcome = *done.borrow_and_update();
            if outcome.round >= round {
                return outcome.failure.map_or(Ok(()), Err);
            }
            if self.next_round.load(Ordering::SeqCst) <= round {
                // Nobody claimed this round yet.
                if !yielded {
                    if !self.subscribed.load(Ordering::Acquire) {
                        // Boxed, like the reading below: a publish's future holds this
                        // one, and what happens once per connection (or per round)
                        // should not make every publish's future larger.
                        Box::pin(self.subscribe()).await?;
                    }
                    // The publishes woken with this one go out first, and this round
                    // covers them too.
                    tokio::task::yield_now().await;
                    yielded = true;
                } else if self
                    .next_round
                    .compare_exchange(round, round + 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.send(round);
                }
                continue;
            }
            if let Ok(loopback) = self.loopback.try_lock() {
                return Box::pin(self.read(loopback, round)).await;
            }
            // The round under way and the next one each end within the timeout; only
            // a reader whose future is neither polled nor dropped could make a caller
            // wait longer, and it is not left waiting for ever.
            let deadline =
                *deadline.get_or_insert_with(|| tokio::time::Instant::now() + 2 * self.timeout);
            match tokio::time::timeout_at(deadline, done.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Failure::Closed),
                Err(_) => return Err(Failure::TimedOut(2 * self.timeout)),
            }
        }
    }

    /// How many times the client connected (the first time included).
    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Acquire)
    }

    /// Subscribes to the loopback subject, once, before the first round is sent.
    async fn subscribe(&self) -> Result<(), Failure> {
        // Nobody reads before the first round is sent, so this waits at most for
        // another caller subscribing.
        let mut loopback = self.loopback.lock().await;
        if let Loopback::Unsubscribed = *loopback {
            *loopback = match self.client.subscribe(self.subject.clone()).await {
                Ok(subscriber) => Loopback::Subscribed(subscriber),
                Err(_) => Loopback::Closed,
            };
        }
        let subscribed = matches!(*loopback, Loopback::Subscribed(_));
        if subscribed {
            self.subscribed.store(true, Ordering::Release);
        }
        drop(loopback);
        // A caller that found the lock held here while it wanted to read went to wait
        // for a change: wake it, as a reader giving the reading up would.
        self.done.send_modify(|_| {});
        if subscribed {
            Ok(())
        } else {
            Err(Failure::Closed)
        }
    }

    /// Queues the loopback message of the claimed `round`: at once where the client's
    /// queue has room, else from a task of its own, so that the round is sent even if
    /// the caller that claimed it goes away (the others wait for it).
    fn send(&self, round: u64) {
        let payload = Bytes::copy_from_slice(&round.to_be_bytes());
        let sent = self
            .client
            .publish(self.subject.clone(), payload.clone())
            .now_or_never();
        let failed = match sent {
            Some(result) => result.is_err(),
            None => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let (client, subject) = (self.client.clone(), self.subject.clone());
                    let done = self.done.clone();
                    runtime.spawn(async move {
                        if client.publish(subject, payload).await.is_err() {
                            closed(&done, round);
                        }
                    });
                    false
                }
                Err(_) => true,
            },
        };
        if failed {
            closed(&self.done, round);
        }
    }

    /// Reads loopback messages (holding `loopback`) until `round` comes back, telling
    /// everyone waiting as rounds come back.
    async fn read(&self, loopback: MutexGuard<'_, Loopback>, round: u64) -> Result<(), Failure> {
        let mut reader = Reader {
            confirmer: self,
            loopback: Some(loopback),
            outcome: None,
        };
        let result = reader.read(round).await;
        reader.outcome = Some(match result {
            Ok(seen) => Outcome {
                round: seen,
                failure: None,
            },
            // Every round claimed so far went out on the lost connection (or, claimed
            // in the moment before the reader saw the new one, may have): none of them
            // is waited for any longer.
            Err(Failure::Reconnected) => Outcome {
                round: round.max(self.next_round.load(Ordering::SeqCst).saturating_sub(1)),
                failure: Some(Failure::Reconnected),
            },
            Err(failure) => Outcome {
                round,
                failure: Some(failure),
            },
        });
        result.map(drop)
    }
}

/// Returns once the connection is up again after a connection made `connects`
/// connects ago (never if the state stops changing: the client is gone).
async fn reconnected(link: &mut watch::Receiver<Link>, confirmer: &Confirmer, connects: u64) {
    loop {
        if link.changed().await.is_err() {
            return std::future::pending().await;
        }
        // The client counts a connection before it reports it up.
        if *link.borrow_and_update() == Link::Up && confirmer.connects() != connects {
            return;
        }
    }
}

/// Fails `round` (and every earlier round not yet ended): the client is closed.
fn closed(done: &watch::Sender<Outcome>, round: u64) {
    done.send_if_modified(|outcome| {
        outcome.advance(Outcome {
            round,
            failure: Some(Failure::Closed),
        })
    });
}

/// The reading of the loopback messages: gives it up and tells the others however it
/// ends, its future dropped included.
struct Reader<'a> {
    confirmer: &'a Confirmer,
    /// `Some` until the reading is given up.
    loopback: Option<MutexGuard<'a, Loopback>>,
    /// How the reader's own round ended; `None` while it runs.
    outcome: Option<Outcome>,
}

impl Reader<'_> {
    /// Reads until `round` (or a later one) comes back, within the timeout; the round
    /// that came back.
    async fn read(&mut self, round: u64) -> Result<u64, Failure> {
        let confirmer = self.confirmer;
        let Some(loopback) = self.loopback.as_deref_mut() else {
            return Err(Failure::Closed);
        };
        let Loopback::Subscribed(subscriber) = loopback else {
            return Err(Failure::Closed);
        };
        let deadline = tokio::time::Instant::now() + confirmer.timeout;
        let connects = confirmer.connects();
        let mut link = confirmer.link.clone();
        link.borrow_and_update();
        loop {
            let next = tokio::select! {
                biased;
                next = tokio::time::timeout_at(deadline, subscriber.next()) => next,
                () = reconnected(&mut link, confirmer, connects) => {
                    return Err(Failure::Reconnected)
                }
            };
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => {
                    *loopback = Loopback::Closed;
                    return Err(Failure::Closed);
                }
                Err(_) => return Err(Failure::TimedOut(confirmer.timeout)),
            };
            let seen = <[u8; 8]>::try_from(&message.payload[..])
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if seen >= round {
                return Ok(seen);
            }
            // An earlier round, claimed by another caller: its waiters can go on.
            confirmer.done.send_if_modified(|outcome| {
                outcome.advance(Outcome {
                    round: seen,
                    failure: None,
                })
            });
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        // The reading is given up before the outcome is told (see `confirm`), and
        // everyone waiting is woken either way: one of them reads next. A reader
        // abandoned mid-round tells no outcome.
        drop(self.loopback.take());
        let outcome = self.outcome;
        self.confirmer.done.send_modify(|current| {
            if let Some(outcome) = outcome {
                current.advance(outcome);
            }
        });
    }
}
