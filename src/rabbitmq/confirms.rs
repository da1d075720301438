//! Publisher confirms on a shared channel, with every returned (unroutable) message
//! matched to the publish it belongs to.
//!
//! RabbitMQ sends a mandatory message that no queue takes back with `basic.return`,
//! always *before* the `basic.ack` that covers it. lapin keeps returned messages in a
//! FIFO queue and hands the front one to whichever confirm it resolves next; a
//! multiple `basic.ack` resolves several confirms at once, in no particular order. So
//! when several publishes share a channel, a return can ride on a neighbour's confirm
//! and a returned message can be confirmed with no return at all.
//!
//! [`ConfirmChannel`] restores the attribution. Every publish takes a ticket (a
//! sequence number) *before* its frames are sent, and every confirm is observed: a
//! return riding on a foreign confirm is parked as an orphan. A mandatory publish
//! whose own confirm carried no return of its own decides in two steps:
//!
//! 1. It waits until every publish that was in flight when its confirm was observed
//!    has been observed too. By then lapin's queue no longer holds its return: each
//!    resolution pops the front, each returned message is queued before its own
//!    confirm resolves, so the queue never holds more returns than there are returned
//!    messages still unconfirmed. Those were all sent after the first step began, and
//!    their returns queued behind ours; had ours not been popped, none of theirs
//!    could have been either, and the queue would hold one return too many.
//! 2. Whichever confirm popped its return resolved before step 1 ended, so it had
//!    been sent by then (even if after our own). It waits until every publish sent by
//!    the end of step 1 has been observed as well; its return, if any, is then among
//!    the orphans.
//!
//! A confirm that carried no return at all skips step 1: lapin pops its queue for
//! every confirm it resolves, so the queue was empty when ours resolved, and our
//! return, if any, had been popped by a confirm resolved before ours, hence sent
//! before our confirm was observed. Waiting for every publish in flight then (the
//! horizon of step 1) is enough. This is the common case: a receipt waits for the
//! confirms of the publishes in flight with it, not for those sent after them.
//!
//! The observation that passes a waiting publish's horizon moves it on under the
//! lock, so a confirm wakes only the publishes it decides, each once, and the second
//! horizon is the one of that moment, not of whenever the woken task next runs.
//!
//! A unit test plays lapin and the broker against the tickets in thousands of random
//! orders (returns queued late, confirms resolved out of order, observations lagging)
//! and checks every verdict and every wake-up.
//!
//! A publish whose caller goes away (its future dropped, e.g. by a timeout) is still
//! observed to the end by a detached task, so it cannot swallow a neighbour's return.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use lapin::message::BasicReturnMessage;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};

use super::error::{amqp_error, BROKER};
use crate::error::{Error, Operation};

/// Returned messages nobody has claimed yet are kept up to this many (a caller that
/// gave up waiting never claims its own).
const MAX_ORPHANS: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A confirm-mode channel whose publishes learn about their own returned messages,
/// whichever confirm lapin attached them to.
#[derive(Clone, Debug)]
pub(crate) struct ConfirmChannel {
    channel: lapin::Channel,
    returns: Arc<Returns>,
}

/// A message the broker returned as unroutable.
#[derive(Debug)]
pub(crate) struct Returned {
    exchange: String,
    routing_key: String,
    payload: Vec<u8>,
    reply_code: u16,
    reply_text: String,
}

impl Returned {
    fn new(message: BasicReturnMessage) -> Self {
        Returned {
            exchange: message.delivery.exchange.to_string(),
            routing_key: message.delivery.routing_key.to_string(),
            payload: message.delivery.data,
            reply_code: message.reply_code,
            reply_text: message.reply_text.to_string(),
        }
    }

    fn is_for(&self, key: &Key) -> bool {
        // Two publishes with the same exchange, routing key and body are routed alike,
        // so which of them claims a return does not matter.
        self.exchange == key.exchange
            && self.routing_key == key.routing_key
            && self.payload == key.payload
    }

    /// The broker's reason, e.g. `312 NO_ROUTE`.
    pub(crate) fn reply(&self) -> String {
        format!("{} {}", self.reply_code, self.reply_text)
    }
}

/// What the broker said about one message.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// `basic.ack`, and the message was not returned.
    Confirmed,
    /// The message came back as unroutable (mandatory).
    Returned(Returned),
    /// `basic.nack`: the broker could not take the message.
    Nacked,
    /// The channel is not in confirm mode.
    NotRequested,
}

/// Why a message has no [`Outcome`].
#[derive(Debug)]
pub(crate) enum Unconfirmed {
    /// The channel or connection failed before the confirm came.
    Failed(lapin::Error),
    /// The connection went away before the broker's verdict was known.
    Lost,
}

/// What identifies a publish's returned message.
#[derive(Debug)]
struct Key {
    exchange: String,
    routing_key: String,
    payload: Bytes,
}

#[derive(Debug, Default)]
struct Returns {
    state: Mutex<State>,
    /// Held while a publish takes its ticket and lapin numbers it and queues its
    /// frames (see [`Sending`]).
    sending: Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Publishes whose confirm has not been observed yet.
    outstanding: BTreeSet<u64>,
    /// Returns that rode on another publish's confirm, waiting for their owner.
    orphans: Vec<Returned>,
    /// Publishes waiting for their horizon (they may still claim an orphan).
    settling: usize,
    /// Those of them registered for a wake-up, by ticket.
    waiters: BTreeMap<u64, Waiter>,
    /// The same, ordered by horizon: the front ones are decided first.
    horizons: BTreeSet<(u64, u64)>,
}

/// How far a publish waiting for its verdict must wait, and whom to wake.
#[derive(Debug)]
struct Waiter {
    /// Every publish up to this one must be observed.
    horizon: u64,
    /// Whether the horizon is the second one (its return can no longer be queued).
    popped: bool,
    /// Whether both horizons have passed: its return, if any, is among the orphans.
    decided: bool,
    waker: Option<Waker>,
}

impl State {
    fn claim(&mut self, key: &Key) -> Option<Returned> {
        let position = self.orphans.iter().position(|r| r.is_for(key))?;
        Some(self.orphans.swap_remove(position))
    }

    /// Moves the waiters whose horizon has passed on (see [`Ticket::observe`]): to
    /// their second horizon, or to their verdict. Returns whom to wake: only the
    /// decided ones, each once.
    fn advance(&mut self) -> Vec<Waker> {
        let mut wake = Vec::new();
        let first = self.outstanding.first().copied().unwrap_or(u64::MAX);
        while let Some(&(horizon, id)) = self.horizons.first() {
            if horizon >= first {
                break;
            }
            self.horizons.pop_first();
            let Some(waiter) = self.waiters.get_mut(&id) else {
                continue;
            };
            if !waiter.popped {
                // Its first horizon passed just now: whichever confirm popped its
                // return was sent by now.
                waiter.popped = true;
                waiter.horizon = self.next - 1;
                if waiter.horizon >= first {
                    self.horizons.insert((waiter.horizon, id));
                    continue;
                }
            }
            waiter.decided = true;
            wake.extend(waiter.waker.take());
        }
        wake
    }

    fn forget_orphans_nobody_can_claim(&mut self) {
        if self.outstanding.is_empty() && self.settling == 0 && !self.orphans.is_empty() {
            for orphan in self.orphans.drain(..) {
                tracing::warn!(
                    exchange = %orphan.exchange,
                    routing_key = %orphan.routing_key,
                    "rabbitmq returned a message whose publisher stopped waiting for it"
                );
            }
        }
    }
}

impl ConfirmChannel {
    pub(crate) fn new(channel: lapin::Channel) -> Self {
        ConfirmChannel {
            channel,
            returns: Arc::default(),
        }
    }

    /// The underlying lapin channel.
    pub(crate) fn channel(&self) -> &lapin::Channel {
        &self.channel
    }

    /// Sends one message; resolves once its frames are handed to the connection. The
    /// returned [`InFlight`] waits for the broker's verdict.
    pub(crate) async fn send(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        mandatory: bool,
        payload: Bytes,
        properties: BasicProperties,
    ) -> Result<InFlight, lapin::Error> {
        let key = Key {
            exchange: exchange.to_string(),
            routing_key: routing_key.to_string(),
            payload: payload.clone(),
        };
        let channel = self.channel.clone();
        let options = BasicPublishOptions {
            mandatory,
            immediate: false,
        };
        let publish = Box::pin(async move {
            channel
                .basic_publish(exchange, routing_key, options, &payload, properties)
                .await
        });
        Sending {
            publish: Some(publish),
            unsent: Some((self.returns.clone(), key)),
            ticket: None,
        }
        .await
        .map(|(confirm, ticket)| InFlight {
            confirm: Some(confirm),
            ticket: Some(ticket),
            mandatory,
        })
    }
}

/// A publish's place in the channel's sequence. Dropping it unobserved observes it
/// with no return.
#[derive(Debug)]
struct Ticket {
    returns: Arc<Returns>,
    id: u64,
    key: Key,
    observed: bool,
}

impl Ticket {
    fn new(returns: Arc<Returns>, key: Key) -> Self {
        let id = {
            let mut state = lock(&returns.state);
            let id = state.next;
            state.next += 1;
            state.outstanding.insert(id);
            id
        };
        Ticket {
            returns,
            id,
            key,
            observed: false,
        }
    }

    /// Records this publish's confirm and the return lapin attached to it, if any.
    /// With `settle`, also works out whether this publish itself was returned: at
    /// once if nothing older is unobserved, else [`Observed::Wait`] with the horizon,
    /// the newest publish still unobserved.
    fn observe(&mut self, attached: Option<BasicReturnMessage>, settle: bool) -> Observed {
        self.observed = true;
        let mut state = lock(&self.returns.state);
        state.outstanding.remove(&self.id);
        let mut observed = Observed::NotReturned;
        // lapin pops its return queue for every confirm it resolves: nothing attached
        // means the queue was empty then.
        let queue_was_empty = attached.is_none();
        if let Some(returned) = attached.map(Returned::new) {
            if returned.is_for(&self.key) {
                observed = Observed::Returned(returned);
            } else {
                if state.orphans.len() == MAX_ORPHANS {
                    state.orphans.remove(0);
                }
                state.orphans.push(returned);
            }
        }
        if settle && matches!(observed, Observed::NotReturned) {
            observed = match state.outstanding.last().copied() {
                // Nothing older unobserved: its return, if any, was popped by a confirm
                // already observed.
                None => state
                    .claim(&self.key)
                    .map_or(Observed::NotReturned, Observed::Returned),
                Some(horizon) => {
                    // Counted under the same lock, so the orphans stay until it claims.
                    state.settling += 1;
                    state.waiters.insert(
                        self.id,
                        Waiter {
                            horizon,
                            popped: queue_was_empty,
                            decided: false,
                            waker: None,
                        },
                    );
                    state.horizons.insert((horizon, self.id));
                    Observed::Wait
                }
            };
        }
        let wake = state.advance();
        state.forget_orphans_nobody_can_claim();
        drop(state);
        for waker in wake {
            waker.wake();
        }
        observed
    }

    /// After [`Observed::Wait`]: waits for the verdict (see [`Ticket::try_settle`]).
    async fn settle(&self) -> Option<Returned> {
        std::future::poll_fn(|cx| match self.try_settle(Some(cx.waker())) {
            Some(returned) => Poll::Ready(returned),
            None => Poll::Pending,
        })
        .await
    }

    /// The verdict, once known (else registers `waker`). First every publish up to the
    /// horizon (in flight when this one was observed) must be observed: then lapin's
    /// queue no longer holds this publish's return. Whichever confirm popped it
    /// resolved before that, so it was sent by then: once every publish sent by then
    /// is observed too, the return, if any, is among the orphans. The observation that
    /// passes a horizon moves the waiter on ([`State::advance`]), so a confirm wakes
    /// only the publishes it decides.
    fn try_settle(&self, waker: Option<&Waker>) -> Option<Option<Returned>> {
        let mut state = lock(&self.returns.state);
        let waiter = state.waiters.get_mut(&self.id)?;
        if !waiter.decided {
            if let Some(waker) = waker {
                match &mut waiter.waker {
                    Some(old) if old.will_wake(waker) => {}
                    slot => *slot = Some(waker.clone()),
                }
            }
            return None;
        }
        state.waiters.remove(&self.id);
        Some(state.claim(&self.key))
    }

    fn claim(&self) -> Option<Returned> {
        lock(&self.returns.state).claim(&self.key)
    }
}

/// What observing a confirm tells about the publish's own message.
enum Observed {
    /// It was returned.
    Returned(Returned),
    /// It was not returned (or nobody asked).
    NotReturned,
    /// Not known yet: see [`Ticket::try_settle`].
    Wait,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.observed {
            self.observe(None, false);
        }
    }
}

/// A publish waiting for its horizon (counted by [`Ticket::observe`]), so that its
/// return is not forgotten; uncounted (and unregistered) on drop.
struct Settling<'a> {
    returns: &'a Returns,
    id: u64,
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.returns.state);
        state.settling -= 1;
        if let Some(waiter) = state.waiters.remove(&self.id) {
            state.horizons.remove(&(waiter.horizon, self.id));
        }
        state.forget_orphans_nobody_can_claim();
    }
}

type Publish = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

/// `basic_publish` in progress. Dropped early, it finishes (and observes the confirm)
/// on a task of its own: the message may already be on its way.
///
/// Its first poll takes the ticket and polls `basic_publish` under the channel's send
/// lock: that poll is where lapin gives the message its delivery tag and queues its
/// frames, in two steps under two different locks of its own. Without one lock
/// around both, two publishes on two threads could be numbered in one order and sent
/// in the other, and the broker, which numbers messages as they arrive, would
/// confirm each under the other's tag. With it, tags follow the order of the wire
/// and of the tickets.
struct Sending {
    publish: Option<Publish>,
    /// Until the first poll: what the ticket is taken from.
    unsent: Option<(Arc<Returns>, Key)>,
    ticket: Option<Ticket>,
}

impl Future for Sending {
    type Output = Result<(PublisherConfirm, Ticket), lapin::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let publish = this
            .publish
            .as_mut()
            .expect("Sending polled after completion");
        let polled = match this.unsent.take() {
            Some((returns, key)) => {
                let _sending = lock(&returns.sending);
                this.ticket = Some(Ticket::new(returns.clone(), key));
                publish.as_mut().poll(cx)
            }
            None => publish.as_mut().poll(cx),
        };
        let result = std::task::ready!(polled);
        self.publish = None;
        let ticket = self.ticket.take().expect("Sending polled after completion");
        // On error the ticket is dropped: nothing was published, nothing can come back.
        Poll::Ready(result.map(|confirm| (confirm, ticket)))
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        if let (Some(publish), Some(ticket)) = (self.publish.take(), self.ticket.take()) {
            observe_detached(
                async move {
                    match publish.await {
                        Ok(confirm) => confirm.await.ok(),
                        Err(_) => None,
                    }
                },
                ticket,
            );
        }
    }
}

/// Observes a confirm nobody waits for any more, so that a return it carries reaches
/// its owner. Without a runtime (shutting down) the ticket is simply dropped.
fn observe_detached(
    confirmation: impl Future<Output = Option<Confirmation>> + Send + 'static,
    mut ticket: Ticket,
) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let attached = match confirmation.await {
                Some(Confirmation::Ack(returned) | Confirmation::Nack(returned)) => returned,
                _ => None,
            };
            ticket.observe(attached, false);
        });
    }
}

/// A message handed to the broker, waiting for its verdict.
#[derive(Debug)]
pub(crate) struct InFlight {
    confirm: Option<PublisherConfirm>,
    ticket: Option<Ticket>,
    mandatory: bool,
}

impl InFlight {
    /// The broker's verdict, or why there is none. `lost` resolves when the connection
    /// the message was sent on goes away.
    pub(crate) async fn outcome(
        mut self,
        lost: impl Future<Output = ()>,
    ) -> Result<Outcome, Unconfirmed> {
        tokio::pin!(lost);
        let confirm = self.confirm.as_mut().expect("outcome awaited once");
        let confirmation = tokio::select! {
            biased;
            confirmation = confirm => confirmation,
            _ = &mut lost => return Err(Unconfirmed::Lost),
        };
        self.confirm = None;
        let mut ticket = self.ticket.take().expect("outcome awaited once");
        let confirmation = match confirmation {
            Ok(confirmation) => confirmation,
            Err(e) => return Err(Unconfirmed::Failed(e)),
        };
        let (confirmation, attached) = match confirmation {
            Confirmation::Ack(returned) => (Outcome::Confirmed, returned),
            Confirmation::Nack(returned) => (Outcome::Nacked, returned),
            Confirmation::NotRequested => (Outcome::NotRequested, None),
        };
        // Only a mandatory message the broker took can have been returned.
        let settle = self.mandatory && matches!(confirmation, Outcome::Confirmed);
        let returned = match ticket.observe(attached, settle) {
            Observed::Returned(returned) => Some(returned),
            Observed::NotReturned => None,
            Observed::Wait => {
                let _settling = Settling {
                    returns: &ticket.returns,
                    id: ticket.id,
                };
                tokio::select! {
                    biased;
                    returned = ticket.settle() => returned,
                    _ = &mut lost => match ticket.claim() {
                        Some(returned) => Some(returned),
                        None => return Err(Unconfirmed::Lost),
                    },
                }
            }
        };
        Ok(returned.map_or(confirmation, Outcome::Returned))
    }
}

impl InFlight {
    /// [`InFlight::outcome`] as the error a publish of `what` (e.g. "message") to
    /// `exchange` with `routing_key` fails with: returned is permanent, nacked or
    /// unconfirmed transient.
    pub(crate) async fn confirmed(
        self,
        lost: impl Future<Output = ()>,
        operation: Operation,
        exchange: &str,
        routing_key: &str,
        what: &str,
    ) -> Result<(), Error> {
        let error = match self.outcome(lost).await {
            Ok(Outcome::Confirmed) => return Ok(()),
            Ok(Outcome::Returned(returned)) => {
                Error::permanent(BROKER, operation).with_reason(format!(
                    "mandatory {what} returned unroutable ({}) for routing key `{routing_key}`",
                    returned.reply()
                ))
            }
            Ok(Outcome::Nacked) => Error::transient(BROKER, operation)
                .with_reason(format!("the broker nacked the {what} (basic.nack)")),
            Ok(Outcome::NotRequested) => Error::permanent(BROKER, operation)
                .with_reason("the channel is not in confirm mode"),
            Err(Unconfirmed::Failed(e)) => {
                let error = amqp_error(operation, exchange, e);
                return Err(if error.is_transient() {
                    error.with_reason(format!(
                        "the connection or channel closed before the broker confirmed the {what}"
                    ))
                } else {
                    error
                });
            }
            Err(Unconfirmed::Lost) => Error::transient(BROKER, operation).with_reason(format!(
                "the connection closed before the broker confirmed the {what}"
            )),
        };
        Err(error.with_destination(exchange))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let (Some(confirm), Some(ticket)) = (self.confirm.take(), self.ticket.take()) {
            observe_detached(async move { confirm.await.ok() }, ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(i: usize) -> Key {
        Key {
            exchange: "x".into(),
            routing_key: "k".into(),
            payload: Bytes::from(format!("m{i}")),
        }
    }

    fn returned(i: usize) -> BasicReturnMessage {
        BasicReturnMessage {
            delivery: lapin::message::Delivery::mock(
                0,
                "x".into(),
                "k".into(),
                false,
                format!("m{i}").into_bytes(),
            ),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }
    }

    /// Where one simulated publish is.
    enum Stage {
        Unsent,
        Sent,
        /// Its confirm resolved, carrying what lapin popped off its return queue.
        Resolved(Option<Box<BasicReturnMessage>>),
        /// Observed; its verdict waits.
        Waiting,
        Decided(bool),
    }

    /// Plays lapin and the broker against the tickets in random orders: publishes go
    /// out in order, a returned message's `basic.return` is queued some time after its
    /// publish and before its confirm, each confirm resolution pops the front of
    /// lapin's FIFO (whoever's it is), and publishes observe their confirm any time
    /// after it resolved, in any order. Every publish must end up knowing exactly
    /// whether it was itself returned.
    #[test]
    fn every_publish_learns_its_own_fate_whatever_the_order() {
        for seed in 0..20_000 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let returns = Arc::new(Returns::default());
            let n = rng.usize(1..14);
            let is_returned: Vec<bool> = (0..n).map(|_| rng.bool()).collect();
            let mut tickets: Vec<Option<Ticket>> = (0..n).map(|_| None).collect();
            let mut stage: Vec<Stage> = (0..n).map(|_| Stage::Unsent).collect();
            let mut queued = vec![false; n];
            let wakes: Vec<Arc<Wakes>> = (0..n).map(|_| Arc::default()).collect();
            let mut lapin_queue = std::collections::VecDeque::new();
            loop {
                #[derive(Clone, Copy)]
                enum Move {
                    Send,
                    Return,
                    Resolve,
                    Observe,
                }
                let mut moves = Vec::new();
                for i in 0..n {
                    match &stage[i] {
                        Stage::Unsent if i == 0 || !matches!(stage[i - 1], Stage::Unsent) => {
                            moves.push((i, Move::Send))
                        }
                        Stage::Sent if is_returned[i] && !queued[i] => {
                            moves.push((i, Move::Return))
                        }
                        Stage::Sent => moves.push((i, Move::Resolve)),
                        Stage::Resolved(_) => moves.push((i, Move::Observe)),
                        _ => {}
                    }
                }
                if moves.is_empty() {
                    break;
                }
                let (i, next) = moves[rng.usize(..moves.len())];
                match next {
                    Move::Send => {
                        tickets[i] = Some(Ticket::new(returns.clone(), key(i)));
                        stage[i] = Stage::Sent;
                    }
                    Move::Return => {
                        queued[i] = true;
                        lapin_queue.push_back(returned(i));
                    }
                    Move::Resolve => {
                        stage[i] = Stage::Resolved(lapin_queue.pop_front().map(Box::new))
                    }
                    Move::Observe => {
                        let Stage::Resolved(attached) =
                            std::mem::replace(&mut stage[i], Stage::Sent)
                        else {
                            unreachable!()
                        };
                        let ticket = tickets[i].as_mut().unwrap();
                        stage[i] = match ticket.observe(attached.map(|r| *r), true) {
                            Observed::Returned(_) => Stage::Decided(true),
                            Observed::NotReturned => Stage::Decided(false),
                            Observed::Wait => {
                                let waker = Waker::from(wakes[i].clone());
                                match ticket.try_settle(Some(&waker)) {
                                    Some(verdict) => Stage::Decided(verdict.is_some()),
                                    None => Stage::Waiting,
                                }
                            }
                        };
                    }
                }
                // Woken publishes check their verdict; the others must not have one.
                for j in 0..n {
                    if let Stage::Waiting = stage[j] {
                        let ticket = tickets[j].as_ref().unwrap();
                        let woken = wakes[j].0.load(Ordering::Relaxed) > 0;
                        let verdict = ticket.try_settle(None);
                        assert_eq!(verdict.is_some(), woken, "seed {seed}: publish {j} of {n}");
                        if let Some(verdict) = verdict {
                            drop(Settling {
                                returns: &returns,
                                id: ticket.id,
                            });
                            stage[j] = Stage::Decided(verdict.is_some());
                        }
                    }
                }
            }
            for i in 0..n {
                match stage[i] {
                    Stage::Decided(was_returned) => assert_eq!(
                        was_returned, is_returned[i],
                        "seed {seed}: publish {i} of {n} (returned: {is_returned:?})"
                    ),
                    _ => panic!("seed {seed}: publish {i} of {n} never decided"),
                }
            }
            assert!(lock(&returns.state).orphans.is_empty(), "seed {seed}");
            for (i, wakes) in wakes.iter().enumerate() {
                let wakes = wakes.0.load(Ordering::Relaxed);
                assert!(wakes <= 1, "seed {seed}: publish {i} woken {wakes} times");
            }
        }
    }

    /// Counts the wake-ups of one publish.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}
