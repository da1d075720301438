//! A received message and the means to settle it: ack, nack (redeliver) or reject
//! (dead-letter).
//!
//! Every consumer is a `Stream` of `Result<Delivery, Error>`. A delivery is settled
//! once: the settlement is recorded only after the broker accepted it, so a failed or
//! cancelled settlement leaves the delivery unsettled (to be settled again, or
//! redelivered by the broker). Settlements from clones of a delivery run one at a time:
//! a second one waits for the first, and is a no-op if the first succeeded, so a
//! handler may settle its delivery itself and the runner that called it will not
//! settle it again.
//!
//! A delivery from a broker that delivers at most once (core NATS, Redis Pub/Sub,
//! ZeroMQ) has nothing to tell a broker: an ack records the outcome, and a nack or a
//! reject cannot be honoured, so it fails with a permanent error and the delivery is
//! recorded as [`Settlement::Dropped`].
//!
//! ```
//! use tower_mq_core::{Delivery, Message, Settlement};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let delivery = Delivery::unacknowledged(Message::new("logs", "hello"));
//! assert_eq!(delivery.delivery_count(), 1);
//! delivery.ack().await.unwrap();
//! assert_eq!(delivery.settlement(), Some(Settlement::Acked));
//! // Settling twice is a no-op.
//! delivery.reject("too late").await.unwrap();
//! assert_eq!(delivery.settlement(), Some(Settlement::Acked));
//!
//! // An at-most-once delivery cannot be redelivered: a nack says so.
//! let gone = Delivery::unacknowledged(Message::new("logs", "bye"));
//! let error = gone.nack(None).await.unwrap_err();
//! assert!(error.to_string().contains("at most once"), "{error}");
//! assert_eq!(gone.settlement(), Some(Settlement::Dropped));
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;

use crate::error::{Error, Operation};
use crate::message::Message;

/// How a broker settles one delivery. Each broker's consumer implements it.
pub trait Acknowledge: Send + Sync + 'static {
    /// The message was handled: remove it (RabbitMQ basic.ack, Redis XACK, Kafka offset
    /// store, JetStream ack).
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>>;

    /// The message was not handled: deliver it again, after `delay` if the broker can
    /// wait (JetStream nak with delay, the memory broker) and at once otherwise.
    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'static, Result<(), Error>>;

    /// The message cannot be handled: move it to the dead-letter destination with
    /// `reason` (RabbitMQ reject to a DLX, JetStream term, a dead-letter stream/topic).
    fn reject(&self, reason: &str) -> BoxFuture<'static, Result<(), Error>>;
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Settlement {
    /// Acknowledged.
    Acked,
    /// Negatively acknowledged, to be delivered again.
    Nacked,
    /// Rejected to the dead-letter destination.
    Rejected,
    /// Neither handled nor kept: a nack or reject of an at-most-once delivery, which the
    /// broker can neither redeliver nor dead-letter.
    Dropped,
}

const UNSETTLED: u8 = 0;
const ACKED: u8 = 1;
const NACKED: u8 = 2;
const REJECTED: u8 = 3;
const DROPPED: u8 = 4;

fn decode(state: u8) -> Option<Settlement> {
    match state {
        ACKED => Some(Settlement::Acked),
        NACKED => Some(Settlement::Nacked),
        REJECTED => Some(Settlement::Rejected),
        DROPPED => Some(Settlement::Dropped),
        _ => None,
    }
}

/// A shared, settle-once handle on a delivery's acknowledgement.
///
/// Cloning shares the handle. Settlements run one at a time and are recorded when the
/// broker accepted them (see the [module docs](self)).
#[derive(Clone)]
pub struct Acker {
    inner: Arc<AckerInner>,
}

struct AckerInner {
    /// The recorded settlement, readable without waiting.
    state: AtomicU8,
    /// Held while a settlement runs, so that clones settle one at a time.
    settling: tokio::sync::Mutex<()>,
    backend: Backend,
}

enum Backend {
    Broker(Box<dyn Acknowledge>),
    /// At most once: nothing to tell; the broker's name, for errors.
    Untracked(&'static str),
}

impl Acker {
    /// An acker that settles through `backend`.
    pub fn new(backend: impl Acknowledge) -> Self {
        Acker::with_backend(Backend::Broker(Box::new(backend)))
    }

    /// An acker for a delivery `broker` delivers at most once (Redis Pub/Sub, core
    /// NATS, ZeroMQ): an ack records the outcome and tells no broker; a nack or reject
    /// fails, and records [`Settlement::Dropped`].
    pub fn at_most_once(broker: &'static str) -> Self {
        Acker::with_backend(Backend::Untracked(broker))
    }

    /// [`Acker::at_most_once`] without a broker's name (errors say `at-most-once`).
    pub fn unacknowledged() -> Self {
        Acker::at_most_once("at-most-once")
    }

    fn with_backend(backend: Backend) -> Self {
        Acker {
            inner: Arc::new(AckerInner {
                state: AtomicU8::new(UNSETTLED),
                settling: tokio::sync::Mutex::new(()),
                backend,
            }),
        }
    }

    /// Whether settling reaches a broker (false for at-most-once deliveries).
    pub fn is_tracked(&self) -> bool {
        matches!(self.inner.backend, Backend::Broker(_))
    }

    /// How the delivery was settled, if it was.
    pub fn settlement(&self) -> Option<Settlement> {
        decode(self.inner.state.load(Ordering::Acquire))
    }

    async fn settle<F>(&self, to: u8, operation: Operation, op: F) -> Result<(), Error>
    where
        F: FnOnce(&dyn Acknowledge) -> BoxFuture<'static, Result<(), Error>>,
    {
        // Nothing to wait for at most once: the first settlement wins, without the lock.
        if let Backend::Untracked(broker) = &self.inner.backend {
            let recorded = if to == ACKED { ACKED } else { DROPPED };
            let first = self
                .inner
                .state
                .compare_exchange(UNSETTLED, recorded, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            return if !first || recorded == ACKED {
                Ok(())
            } else {
                Err(Error::permanent(broker, operation).with_reason(
                    "the broker delivers at most once: it can neither redeliver nor \
                     dead-letter the message, which is dropped",
                ))
            };
        }
        // Dropping this future (a cancelled settlement) releases the lock and records
        // nothing: the delivery stays unsettled.
        let _turn = self.inner.settling.lock().await;
        if self.settlement().is_some() {
            return Ok(());
        }
        match &self.inner.backend {
            Backend::Broker(backend) => {
                op(backend.as_ref()).await?;
                self.inner.state.store(to, Ordering::Release);
                Ok(())
            }
            // Settled above.
            Backend::Untracked(_) => Ok(()),
        }
    }

    /// Acknowledges the delivery.
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle(ACKED, Operation::Ack, |b| b.ack()).await
    }

    /// Asks for redelivery, after `delay` where the broker supports it.
    ///
    /// Fails for an at-most-once delivery, which is then [`Settlement::Dropped`].
    pub async fn nack(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.settle(NACKED, Operation::Nack, |b| b.nack(delay))
            .await
    }

    /// Dead-letters the delivery with `reason`.
    ///
    /// Fails for an at-most-once delivery, which is then [`Settlement::Dropped`].
    pub async fn reject(&self, reason: &str) -> Result<(), Error> {
        self.settle(REJECTED, Operation::Reject, |b| b.reject(reason))
            .await
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acker")
            .field("tracked", &self.is_tracked())
            .field("settlement", &self.settlement())
            .finish()
    }
}

/// A message received from a broker, with its delivery count and its [`Acker`].
///
/// Cloning shares the acker (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct Delivery {
    message: Message,
    delivery_count: u32,
    acker: Acker,
}

impl Delivery {
    /// A first delivery of `message`, settled through `acker`.
    pub fn new(message: Message, acker: Acker) -> Self {
        Delivery {
            message,
            delivery_count: 1,
            acker,
        }
    }

    /// A delivery the broker does not track (at most once): see
    /// [`Acker::unacknowledged`].
    pub fn unacknowledged(message: Message) -> Self {
        Delivery::new(message, Acker::unacknowledged())
    }

    /// A delivery `broker` delivers at most once: see [`Acker::at_most_once`].
    pub fn at_most_once(message: Message, broker: &'static str) -> Self {
        Delivery::new(message, Acker::at_most_once(broker))
    }

    /// Sets how many times the broker has delivered this message, this time included.
    pub fn with_delivery_count(mut self, count: u32) -> Self {
        self.delivery_count = count.max(1);
        self
    }

    /// The message.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The message, mutably (decompression and decoding layers rewrite it).
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// How many times this message has been delivered, this time included (1 the
    /// first time).
    pub fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// When the broker says the message was created or stored (see
    /// [`Message::timestamp`]), if it says.
    pub fn timestamp(&self) -> Option<std::time::SystemTime> {
        self.message.timestamp()
    }

    /// Whether the message was delivered before.
    pub fn is_redelivery(&self) -> bool {
        self.delivery_count > 1
    }

    /// The acker.
    pub fn acker(&self) -> &Acker {
        &self.acker
    }

    /// How the delivery was settled, if it was.
    pub fn settlement(&self) -> Option<Settlement> {
        self.acker.settlement()
    }

    /// Acknowledges the delivery.
    pub async fn ack(&self) -> Result<(), Error> {
        self.acker.ack().await
    }

    /// Asks for redelivery, after `delay` where the broker supports it.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.acker.nack(delay).await
    }

    /// Dead-letters the delivery with `reason`.
    pub async fn reject(&self, reason: &str) -> Result<(), Error> {
        self.acker.reject(reason).await
    }

    /// Splits the delivery into its message and acker.
    pub fn into_parts(self) -> (Message, Acker) {
        (self.message, self.acker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Operation;
    use std::sync::atomic::AtomicUsize;

    #[derive(Clone, Default)]
    struct Counting {
        acks: Arc<AtomicUsize>,
        fail: bool,
    }

    impl Acknowledge for Counting {
        fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
            let acks = self.acks.clone();
            let fail = self.fail;
            Box::pin(async move {
                if fail {
                    return Err(Error::transient("test", Operation::Ack));
                }
                acks.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
        fn nack(&self, _: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
        fn reject(&self, _: &str) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn settles_once_across_clones() {
        let backend = Counting::default();
        let d = Delivery::new(Message::new("t", ""), Acker::new(backend.clone()));
        let d2 = d.clone();
        d.ack().await.unwrap();
        d2.ack().await.unwrap();
        d2.nack(None).await.unwrap();
        assert_eq!(backend.acks.load(Ordering::SeqCst), 1);
        assert_eq!(d2.settlement(), Some(Settlement::Acked));
    }

    /// Acks through a gate the test opens, counting acks that reached the broker.
    #[derive(Clone)]
    struct Gated {
        gate: Arc<tokio::sync::Semaphore>,
        acks: Arc<AtomicUsize>,
        fail_first: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Acknowledge for Gated {
        fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
            let this = self.clone();
            Box::pin(async move {
                this.gate.acquire().await.expect("open").forget();
                if this.fail_first.swap(false, Ordering::SeqCst) {
                    return Err(Error::transient("test", Operation::Ack));
                }
                this.acks.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        }
        fn nack(&self, _: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
        fn reject(&self, _: &str) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }

    fn gated(fail_first: bool) -> Gated {
        Gated {
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            acks: Arc::default(),
            fail_first: Arc::new(fail_first.into()),
        }
    }

    #[tokio::test]
    async fn a_cancelled_ack_leaves_the_delivery_unsettled() {
        let backend = gated(false);
        let d = Delivery::new(Message::new("t", ""), Acker::new(backend.clone()));
        let attempt = tokio::time::timeout(Duration::from_millis(10), d.ack()).await;
        assert!(
            attempt.is_err(),
            "the gate is closed: the ack cannot finish"
        );
        assert_eq!(d.settlement(), None);
        backend.gate.add_permits(1);
        d.ack().await.unwrap();
        assert_eq!(d.settlement(), Some(Settlement::Acked));
        assert_eq!(backend.acks.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_clone_settling_meanwhile_waits_for_the_outcome() {
        let backend = gated(true);
        let d = Delivery::new(Message::new("t", ""), Acker::new(backend.clone()));
        let first = tokio::spawn({
            let d = d.clone();
            async move { d.ack().await }
        });
        let second = tokio::spawn({
            let d = d.clone();
            async move { d.ack().await }
        });
        tokio::task::yield_now().await;
        backend.gate.add_permits(2);
        let results = [first.await.unwrap(), second.await.unwrap()];
        // One attempt failed at the broker; the other, having waited for it, acked.
        assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
        assert_eq!(backend.acks.load(Ordering::SeqCst), 1);
        assert_eq!(d.settlement(), Some(Settlement::Acked));
    }

    #[tokio::test]
    async fn at_most_once_nack_and_reject_report_the_drop() {
        let d = Delivery::at_most_once(Message::new("t", ""), "nats");
        let error = d.reject("bad").await.unwrap_err();
        assert_eq!(error.broker(), "nats");
        assert_eq!(error.operation(), Operation::Reject);
        assert!(!error.is_transient());
        assert_eq!(d.settlement(), Some(Settlement::Dropped));
        // Settled: a later ack changes nothing.
        d.ack().await.unwrap();
        assert_eq!(d.settlement(), Some(Settlement::Dropped));
        let acked = Delivery::at_most_once(Message::new("t", ""), "nats");
        acked.ack().await.unwrap();
        assert_eq!(acked.settlement(), Some(Settlement::Acked));
    }

    #[tokio::test]
    async fn failed_settlement_can_be_retried() {
        let backend = Counting {
            fail: true,
            ..Default::default()
        };
        let d = Delivery::new(Message::new("t", ""), Acker::new(backend));
        assert!(d.ack().await.is_err());
        assert_eq!(d.settlement(), None);
    }
}
