//! A received message and the means to settle it: ack, nack (redeliver) or reject
//! (dead-letter).
//!
//! Every consumer is a `Stream` of `Result<Delivery, Error>`. A delivery is settled
//! exactly once; later settlements are no-ops, so a handler may settle its delivery
//! itself and the runner that called it will not settle it again.
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
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;

use crate::error::Error;
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
pub enum Settlement {
    /// Acknowledged.
    Acked,
    /// Negatively acknowledged, to be delivered again.
    Nacked,
    /// Rejected to the dead-letter destination.
    Rejected,
}

const UNSETTLED: u8 = 0;
const ACKED: u8 = 1;
const NACKED: u8 = 2;
const REJECTED: u8 = 3;

fn decode(state: u8) -> Option<Settlement> {
    match state {
        ACKED => Some(Settlement::Acked),
        NACKED => Some(Settlement::Nacked),
        REJECTED => Some(Settlement::Rejected),
        _ => None,
    }
}

/// A shared, settle-once handle on a delivery's acknowledgement.
///
/// Cloning shares the handle: whichever clone settles first wins. If the broker fails
/// to record the settlement, the handle becomes unsettled again so it can be retried.
#[derive(Clone)]
pub struct Acker {
    inner: Arc<AckerInner>,
}

struct AckerInner {
    state: AtomicU8,
    backend: Option<Box<dyn Acknowledge>>,
}

impl Acker {
    /// An acker that settles through `backend`.
    pub fn new(backend: impl Acknowledge) -> Self {
        Acker {
            inner: Arc::new(AckerInner {
                state: AtomicU8::new(UNSETTLED),
                backend: Some(Box::new(backend)),
            }),
        }
    }

    /// An acker for deliveries the broker does not track (Redis Pub/Sub, core NATS,
    /// ZeroMQ): settling records the outcome and tells no broker.
    pub fn unacknowledged() -> Self {
        Acker {
            inner: Arc::new(AckerInner {
                state: AtomicU8::new(UNSETTLED),
                backend: None,
            }),
        }
    }

    /// Whether settling reaches a broker (false for at-most-once deliveries).
    pub fn is_tracked(&self) -> bool {
        self.inner.backend.is_some()
    }

    /// How the delivery was settled, if it was.
    pub fn settlement(&self) -> Option<Settlement> {
        decode(self.inner.state.load(Ordering::Acquire))
    }

    async fn settle<F>(&self, to: u8, op: F) -> Result<(), Error>
    where
        F: FnOnce(&dyn Acknowledge) -> BoxFuture<'static, Result<(), Error>>,
    {
        if self
            .inner
            .state
            .compare_exchange(UNSETTLED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Ok(());
        }
        let Some(backend) = self.inner.backend.as_deref() else {
            return Ok(());
        };
        let result = op(backend).await;
        if result.is_err() {
            self.inner.state.store(UNSETTLED, Ordering::Release);
        }
        result
    }

    /// Acknowledges the delivery.
    pub async fn ack(&self) -> Result<(), Error> {
        self.settle(ACKED, |b| b.ack()).await
    }

    /// Asks for redelivery, after `delay` where the broker supports it.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<(), Error> {
        self.settle(NACKED, |b| b.nack(delay)).await
    }

    /// Dead-letters the delivery with `reason`.
    pub async fn reject(&self, reason: &str) -> Result<(), Error> {
        self.settle(REJECTED, |b| b.reject(reason)).await
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

    /// A delivery the broker does not track (at most once): settling is local only.
    pub fn unacknowledged(message: Message) -> Self {
        Delivery::new(message, Acker::unacknowledged())
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
