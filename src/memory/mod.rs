//! An in-process broker: the embedded default for quickstarts and tests, and the
//! reference the conformance suite holds every other broker to.
//!
//! A [`Broker`] holds topics. Every message published to a topic is delivered to each
//! of the topic's consumer groups; within a group, consumers compete for messages
//! (a work queue: each message goes to one of them). [`Broker::subscribe`] makes a
//! private group for one consumer (pub/sub: it sees what is published while it is
//! subscribed); [`Broker::consumer`] joins a durable named group that lives as long as
//! the broker, so a consumer that closes and comes back continues where the group
//! stopped. Declare a group ahead with [`Broker::declare_group`] to keep messages
//! published before its first consumer arrives. A topic without any group drops what is
//! published to it.
//!
//! Deliveries are settled through their [`Acker`](crate::Acker): ack removes the
//! message; nack puts it back (after the given delay, on tokio's clock) and it is
//! delivered again with its delivery count incremented; reject moves it to the topic's
//! dead-letter topic (`<topic>.dlq` unless configured otherwise) with the shared
//! [dead-letter headers](crate::dead_letter): [`REASON`](crate::dead_letter::REASON),
//! [`ORIGINAL_DESTINATION`](crate::dead_letter::ORIGINAL_DESTINATION),
//! [`DELIVERIES`](crate::dead_letter::DELIVERIES) (0 if it expired before its first
//! delivery) and [`TIME`](crate::dead_letter::TIME). Deliveries a consumer still held when it closed go back to its group.
//!
//! Higher [priorities](crate::Message::priority) are delivered first, in publication
//! order within a priority (no priority counts as 0), so a group sees its topic in
//! total order apart from priority. A message whose [time to live](crate::Message::ttl)
//! passes before it is delivered is not delivered: it is dead-lettered with the reason
//! [`EXPIRED`](crate::dead_letter::EXPIRED) when a consumer of its group next looks for work, or when a full
//! broker needs room.
//!
//! The broker holds at most [`Builder::capacity`] messages (a message is held while any
//! of its groups has not settled it). When it is full, [`Publisher`]'s `poll_ready`
//! returns `Pending` until room frees (a message is settled, a subscriber leaves, a
//! held message expires), so tower's `ConcurrencyLimit`, `Buffer` and `LoadShed` see
//! the pressure. Dead letters are held like any message (when their topic has a group)
//! but dead-lettering never waits for room, so settling never blocks.
//!
//! # Example
//!
//! ```
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_mq::memory::Broker;
//! use tower_mq::{Guarantee, Message, Position, Receipt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_mq::Error> {
//! let broker = Broker::new();
//! let mut consumer = broker.consumer("orders", "billing")?;
//!
//! let receipt = broker
//!     .publisher()
//!     .oneshot(Message::new("orders", "order 42"))
//!     .await?;
//! assert_eq!(receipt.guarantee(), Guarantee::Stored);
//! assert_eq!(receipt.position(), Some(&Position::Sequence(1)));
//!
//! let delivery = consumer.next().await.expect("the consumer is open")?;
//! assert_eq!(delivery.message().payload().as_ref(), b"order 42");
//! delivery.ack().await?;
//! assert_eq!(broker.held(), 0);
//! # Ok(())
//! # }
//! ```

mod consumer;
mod publisher;
mod state;

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use tokio::time::{sleep_until, Instant, Sleep};
use tower_mq_core::{Error, Operation};

pub use self::consumer::Consumer;
pub use self::publisher::Publisher;
use self::state::{Config, Deferred, GroupKey, Occupancy, State};

/// The broker name in errors and metrics: `"memory"`.
pub const BROKER: &str = "memory";

/// The default [`Builder::capacity`]: 100 000 messages.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The default [`Builder::max_payload_size`]: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_SIZE: usize = 64 * 1024 * 1024;

/// The default [`Builder::dead_letter_suffix`]: `.dlq`, the shared
/// [`dead_letter::SUFFIX`](crate::dead_letter::SUFFIX).
pub const DEFAULT_DEAD_LETTER_SUFFIX: &str = tower_mq_core::dead_letter::SUFFIX;

/// The longest topic or group name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

pub(crate) struct Shared {
    state: Mutex<State>,
    /// The state's count of held and reserved messages, which publishers reserve room
    /// on without the lock.
    occupied: Occupancy,
    config: Config,
}

impl Shared {
    /// The state, locked until the guard is dropped; the tasks the state wakes and the
    /// messages it lets go of meanwhile are woken and freed after the lock is released.
    fn lock(&self) -> Locked<'_> {
        // No code panics while holding the lock; if some did, the state is still
        // consistent enough to keep serving rather than poison every handle.
        Locked {
            guard: self.state.lock().unwrap_or_else(PoisonError::into_inner),
            after: After(None),
        }
    }
}

/// The locked state. Waking a task can be a system call (its worker thread is
/// parked), and freeing a message is the allocator's work: done under the lock, they
/// would hold up every publisher and consumer meanwhile, and a task woken would find
/// the lock still taken.
struct Locked<'a> {
    // Fields drop in order: the lock is released before the deferred work runs.
    guard: MutexGuard<'a, State>,
    after: After,
}

thread_local! {
    /// Each thread's spare for the state's deferred work, swapped in under the lock
    /// and run after it: the vectors keep their capacity from one lock to the next.
    static SPARE: Cell<Deferred> = const { Cell::new(Deferred::new()) };
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.guard.has_deferred() {
            // A guard dropped while the thread's locals are torn down makes do without.
            let mut spare = SPARE.try_with(Cell::take).unwrap_or_default();
            self.guard.take_deferred(&mut spare);
            self.after.0 = Some(spare);
        }
    }
}

impl std::ops::Deref for Locked<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

/// The deferred work of one lock, run when dropped (after the lock is released).
struct After(Option<Deferred>);

impl Drop for After {
    fn drop(&mut self) {
        if let Some(mut deferred) = self.0.take() {
            deferred.run();
            let _ = SPARE.try_with(|spare| spare.set(deferred));
        }
    }
}

/// A handle on an in-process broker. Cloning is cheap and shares the broker.
///
/// See the [module docs](self).
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("held", &self.held())
            .field("capacity", &self.shared.config.capacity)
            .finish()
    }
}

impl Broker {
    /// A broker with the default configuration (see [`Builder`]).
    pub fn new() -> Self {
        Broker::builder().build()
    }

    /// Configures a broker.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A publisher for any topic of this broker.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.shared.clone())
    }

    /// Subscribes to `topic` (pub/sub): the consumer has a group of its own and sees
    /// every message published to `topic` from now until it closes.
    pub fn subscribe(&self, topic: &str) -> Result<Consumer, Error> {
        validate_name(topic, Operation::Subscribe, topic, "topic")?;
        let mut state = self.shared.lock();
        let group = GroupKey::Ephemeral(state.next_id());
        state.declare_group(topic, group.clone());
        let id = state.next_id();
        drop(state);
        Ok(Consumer::new(self.shared.clone(), topic, group, id))
    }

    /// Joins the durable group `group` of `topic` (a work queue): the group's
    /// consumers share its messages, each going to one of them. The group is created
    /// if needed and lives as long as the broker.
    pub fn consumer(&self, topic: &str, group: &str) -> Result<Consumer, Error> {
        self.declare_group(topic, group)?;
        let id = self.shared.lock().next_id();
        Ok(Consumer::new(
            self.shared.clone(),
            topic,
            GroupKey::Named(group.into()),
            id,
        ))
    }

    /// Creates the durable group `group` of `topic` if it does not exist, so that
    /// messages published from now on are kept for it until a consumer takes them.
    pub fn declare_group(&self, topic: &str, group: &str) -> Result<(), Error> {
        validate_name(topic, Operation::Declare, topic, "topic")?;
        validate_name(group, Operation::Declare, topic, "group")?;
        self.shared
            .lock()
            .declare_group(topic, GroupKey::Named(group.into()));
        Ok(())
    }

    /// Sends what is dead-lettered from `topic` to `dead_letter_topic` instead of
    /// the default `<topic><suffix>`.
    pub fn set_dead_letter_topic(&self, topic: &str, dead_letter_topic: &str) -> Result<(), Error> {
        validate_name(topic, Operation::Declare, topic, "topic")?;
        validate_name(
            dead_letter_topic,
            Operation::Declare,
            dead_letter_topic,
            "topic",
        )?;
        self.shared
            .lock()
            .set_dead_letter_topic(topic, dead_letter_topic);
        Ok(())
    }

    /// The topic that receives what is dead-lettered from `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        self.shared
            .lock()
            .dead_letter_topic(&self.shared.config, topic)
    }

    /// How many messages the broker holds: published and not yet settled by every
    /// group of their topic.
    pub fn held(&self) -> usize {
        self.shared.lock().held()
    }
}

/// Configures a [`Broker`]; from [`Broker::builder`].
#[derive(Debug, Clone)]
pub struct Builder {
    capacity: usize,
    max_payload_size: usize,
    dead_letter_suffix: String,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            capacity: DEFAULT_CAPACITY,
            max_payload_size: DEFAULT_MAX_PAYLOAD_SIZE,
            dead_letter_suffix: DEFAULT_DEAD_LETTER_SUFFIX.to_owned(),
        }
    }
}

impl Builder {
    /// The most messages the broker holds at once ([`DEFAULT_CAPACITY`] by default;
    /// at least 1). Publishers wait in `poll_ready` while it is full.
    pub fn capacity(mut self, messages: usize) -> Self {
        self.capacity = messages.max(1);
        self
    }

    /// The largest payload accepted, in bytes ([`DEFAULT_MAX_PAYLOAD_SIZE`] by
    /// default). A larger one is a permanent publish error.
    pub fn max_payload_size(mut self, bytes: usize) -> Self {
        self.max_payload_size = bytes;
        self
    }

    /// What is appended to a topic's name to name its dead-letter topic
    /// ([`DEFAULT_DEAD_LETTER_SUFFIX`] by default). See also
    /// [`Broker::set_dead_letter_topic`].
    pub fn dead_letter_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.dead_letter_suffix = suffix.into();
        self
    }

    /// Builds the broker.
    pub fn build(self) -> Broker {
        let state = State::default();
        Broker {
            shared: Arc::new(Shared {
                occupied: state.occupancy(),
                state: Mutex::new(state),
                config: Config {
                    capacity: self.capacity,
                    max_payload_size: self.max_payload_size,
                    dead_letter_suffix: self.dead_letter_suffix,
                },
            }),
        }
    }
}

/// Checks a topic or group name: not empty, at most [`MAX_NAME_LEN`] bytes, no
/// whitespace or control characters, no wildcards (`*`, `>`, `#`, `?`: the memory
/// broker matches names exactly, and other brokers would read them as patterns).
fn validate_name(
    name: &str,
    operation: Operation,
    destination: &str,
    what: &str,
) -> Result<(), Error> {
    let problem = if name.is_empty() {
        format!("the {what} name is empty")
    } else if name.len() > MAX_NAME_LEN {
        format!(
            "the {what} name is {} bytes long, more than the {MAX_NAME_LEN} allowed",
            name.len()
        )
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        format!("the {what} name contains whitespace or control characters")
    } else if name.contains(['*', '>', '#', '?']) {
        format!(
            "the {what} name contains a wildcard (`*`, `>`, `#` or `?`); names are matched exactly"
        )
    } else {
        return Ok(());
    };
    Err(Error::permanent(BROKER, operation)
        .with_destination(destination)
        .with_reason(problem))
}

/// Waits on `timer` for `deadline`, the broker's next due time (an expiry, a delayed
/// redelivery): the sleep already there is moved rather than made again when the due
/// time changes. `Ready` once it is due.
fn poll_deadline(
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let timer = match timer {
        Some(timer) => {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            timer
        }
        None => timer.insert(Box::pin(sleep_until(deadline))),
    };
    timer.as_mut().poll(cx)
}

#[cfg(test)]
mod tests;
