use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::Stream;
use tokio::time::Sleep;
use tower_mq_core::{Acker, Acknowledge, Delivery, Error, Operation};

use super::state::{GroupKey, Next, Settle};
use super::{poll_deadline, Shared, BROKER};

/// Receives from one consumer group of a memory [`Broker`](super::Broker): a
/// `Stream<Item = Result<Delivery, Error>>` that waits for messages and never ends on
/// its own.
///
/// Closing it ([`Consumer::close`] or dropping it) gives the deliveries it had not
/// settled back to its group, which delivers them again; a pub/sub subscriber's
/// private group goes away with it. See the [module docs](super).
pub struct Consumer {
    shared: Arc<Shared>,
    /// Shared with every delivery's acker.
    subscription: Arc<Subscription>,
    id: u64,
    /// Wakes the consumer when a delayed redelivery falls due.
    timer: Option<Pin<Box<Sleep>>>,
}

/// The topic and group a consumer reads, and its deliveries settle in.
struct Subscription {
    topic: String,
    group: GroupKey,
}

impl Consumer {
    pub(super) fn new(shared: Arc<Shared>, topic: &str, group: GroupKey, id: u64) -> Self {
        Consumer {
            shared,
            subscription: Arc::new(Subscription {
                topic: topic.to_owned(),
                group,
            }),
            id,
            timer: None,
        }
    }

    /// The topic consumed.
    pub fn topic(&self) -> &str {
        &self.subscription.topic
    }

    /// The durable group joined, or `None` for a pub/sub subscriber.
    pub fn group(&self) -> Option<&str> {
        match &self.subscription.group {
            GroupKey::Named(name) => Some(name),
            GroupKey::Ephemeral(_) => None,
        }
    }

    /// Closes the consumer: what it delivered and was not settled goes back to its
    /// group. Same as dropping it.
    pub fn close(self) {}
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic())
            .field("group", &self.group())
            .finish()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let subscription = &self.subscription;
        self.shared
            .lock()
            .consumer_closed(&subscription.topic, &subscription.group, self.id);
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let next = this.shared.lock().next_delivery(
                &this.shared.config,
                &this.subscription.topic,
                &this.subscription.group,
                this.id,
                cx.waker(),
            );
            match next {
                Next::Delivery {
                    message,
                    deliveries,
                    id,
                } => {
                    let acker = Acker::new(MemoryAcker {
                        shared: this.shared.clone(),
                        subscription: this.subscription.clone(),
                        id,
                    });
                    let delivery = Delivery::new(message, acker).with_delivery_count(deliveries);
                    return Poll::Ready(Some(Ok(delivery)));
                }
                Next::Empty { wake_at: None } => {
                    this.timer = None;
                    return Poll::Pending;
                }
                Next::Empty {
                    wake_at: Some(deadline),
                } => {
                    if poll_deadline(&mut this.timer, deadline, cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Due already: look again.
                }
                Next::Gone => return Poll::Ready(None),
            }
        }
    }
}

/// Settles one memory delivery.
struct MemoryAcker {
    shared: Arc<Shared>,
    subscription: Arc<Subscription>,
    id: u64,
}

impl MemoryAcker {
    fn settle(
        &self,
        operation: Operation,
        how: Settle<'_>,
    ) -> BoxFuture<'static, Result<(), Error>> {
        let Subscription { topic, group } = &*self.subscription;
        let result = self
            .shared
            .lock()
            .settle(&self.shared.config, topic, group, self.id, how)
            .map_err(|_| {
                Error::permanent(BROKER, operation)
                    .with_destination(topic.as_str())
                    .with_reason(
                        "the delivery is no longer held: its consumer closed and the group took it back",
                    )
            });
        Box::pin(std::future::ready(result))
    }
}

impl Acknowledge for MemoryAcker {
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(Operation::Ack, Settle::Ack)
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(Operation::Nack, Settle::Nack(delay))
    }

    fn reject(&self, reason: &str) -> BoxFuture<'static, Result<(), Error>> {
        self.settle(Operation::Reject, Settle::Reject(reason))
    }
}
