//! What the observability layers need to know about a request: the message it carries.
//!
//! [`metrics`](crate::metrics) labels a request with its destination and
//! [`trace`](crate::trace) records its id and size and carries the trace context in its
//! headers. Both learn these through [`MessageLike`], implemented for [`Message`] (a
//! publish) and [`Delivery`] (a handle). A request type of your own implements it by
//! pointing at the message it carries, or by returning `None`, in which case the layers
//! still time and count it, without a destination.
//!
//! # Example
//!
//! ```
//! use tower_mq_core::{Delivery, Message};
//! use tower_mq_layers::message_like::MessageLike;
//!
//! struct Command {
//!     message: Message,
//!     tenant: String,
//! }
//!
//! impl MessageLike for Command {
//!     fn message(&self) -> Option<&Message> {
//!         Some(&self.message)
//!     }
//!     fn message_mut(&mut self) -> Option<&mut Message> {
//!         Some(&mut self.message)
//!     }
//! }
//!
//! let cmd = Command { message: Message::new("orders", "{}"), tenant: "acme".into() };
//! assert_eq!(cmd.destination(), Some("orders"));
//! let delivery = Delivery::unacknowledged(Message::new("logs", "x"));
//! assert_eq!(delivery.destination(), Some("logs"));
//! ```

use tower_mq_core::{Delivery, Message};

/// A request that carries (or is) a [`Message`]. See the [module docs](self).
pub trait MessageLike {
    /// The message this request carries, if any.
    fn message(&self) -> Option<&Message>;

    /// The message, mutably (the trace layer writes `traceparent` into its headers).
    fn message_mut(&mut self) -> Option<&mut Message>;

    /// The message's destination, if the request carries a message.
    fn destination(&self) -> Option<&str> {
        self.message().map(Message::destination)
    }
}

impl MessageLike for Message {
    fn message(&self) -> Option<&Message> {
        Some(self)
    }

    fn message_mut(&mut self) -> Option<&mut Message> {
        Some(self)
    }
}

impl MessageLike for Delivery {
    fn message(&self) -> Option<&Message> {
        Some(Delivery::message(self))
    }

    fn message_mut(&mut self) -> Option<&mut Message> {
        Some(Delivery::message_mut(self))
    }
}

impl<T> MessageLike for (T, Delivery) {
    fn message(&self) -> Option<&Message> {
        Some(self.1.message())
    }

    fn message_mut(&mut self) -> Option<&mut Message> {
        Some(self.1.message_mut())
    }
}
