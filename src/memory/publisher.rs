use std::fmt;
use std::future::{ready, Ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Sleep;
use tower::Service;
use tower_mq_core::{Error, Guarantee, Message, Operation, Position, Receipt};

use super::state::{Reserve, Stored};
use super::{poll_deadline, validate_name, Shared, BROKER};

/// Publishes to a memory [`Broker`](super::Broker): a
/// `Service<Message, Response = Receipt, Error = Error>`.
///
/// `poll_ready` reserves room for one message and returns `Pending` while the broker is
/// full; `call` stores the message and answers a stored [`Receipt`] with the
/// topic's sequence number ([`Position::Sequence`]). Cloning gives a
/// publisher without a reservation. An invalid topic name or an oversize payload is a
/// permanent error naming the topic. See the [module docs](super).
pub struct Publisher {
    shared: Arc<Shared>,
    reserved: bool,
    /// Wakes a waiting publisher when a held message expires and frees room.
    timer: Option<Pin<Box<Sleep>>>,
}

impl Publisher {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Publisher {
            shared,
            reserved: false,
            timer: None,
        }
    }
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        // A reservation belongs to the handle that made it.
        Publisher::new(self.shared.clone())
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("reserved", &self.reserved)
            .finish()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.reserved {
            self.shared.lock().unreserve();
        }
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = Ready<Result<Receipt, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if self.reserved {
                return Poll::Ready(Ok(()));
            }
            if self
                .shared
                .occupied
                .try_reserve(self.shared.config.capacity)
            {
                self.reserved = true;
                self.timer = None;
                return Poll::Ready(Ok(()));
            }
            let reserve = self
                .shared
                .lock()
                .try_reserve(&self.shared.config, cx.waker());
            match reserve {
                Reserve::Reserved => {
                    self.reserved = true;
                    self.timer = None;
                }
                Reserve::Full { wake_at: None } => {
                    self.timer = None;
                    return Poll::Pending;
                }
                Reserve::Full {
                    wake_at: Some(deadline),
                } => {
                    if poll_deadline(&mut self.timer, deadline, cx).is_pending() {
                        return Poll::Pending;
                    }
                    // A message has expired already: look again.
                }
            }
        }
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, message: Message) -> Self::Future {
        if !std::mem::take(&mut self.reserved) {
            return ready(Err(Error::called_before_ready(BROKER, Operation::Publish)
                .with_destination(message.destination())));
        }
        let size = message.payload().len();
        let max = self.shared.config.max_payload_size;
        if size > max {
            let topic = message.destination();
            let error = Error::permanent(BROKER, Operation::Publish)
                .with_destination(topic)
                .with_reason(format!(
                    "the payload is {size} bytes, more than the {max} allowed"
                ));
            // The name is checked first, as its error says more.
            let error = validate_name(topic, Operation::Publish, topic, "topic")
                .err()
                .unwrap_or(error);
            self.shared.lock().unreserve();
            return ready(Err(error));
        }
        let topic = message.shared_destination();
        let stored = Stored::new(message);
        let published = self.shared.lock().publish_reserved(stored, |name| {
            validate_name(name, Operation::Publish, name, "topic")
        });
        ready(published.map(|sequence| {
            Receipt::new(BROKER, topic, Guarantee::Stored)
                .with_position(Position::Sequence(sequence))
        }))
    }
}
