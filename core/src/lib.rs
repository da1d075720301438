//! The messaging model of [tower-mq](https://docs.rs/tower-mq): [`Message`], [`Receipt`],
//! [`Delivery`] and the classified broker [`Error`].
//!
//! The contracts every broker implements:
//! - a publisher is a `tower::Service<Message, Response = Receipt, Error = Error>`;
//! - a consumer is a `Stream<Item = Result<Delivery, Error>>`.
//!
//! This crate is to tower-mq what the `http` crate is to tower-http: the vocabulary the
//! broker-agnostic layers (`tower-mq-layers`) and the brokers share. Users normally
//! depend on `tower-mq`, which re-exports all of it.
//!
//! ```
//! use tower_mq_core::{Guarantee, Message, Position, Receipt};
//!
//! let msg = Message::new("orders", "payload").with_key("user-42");
//! let receipt =
//!     Receipt::new("memory", msg.destination(), Guarantee::Stored).with_position(Position::Sequence(1));
//! assert!(receipt.is_confirmed());
//! ```

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod cache;
pub mod dead_letter;
pub mod delivery;
pub mod error;
pub mod header;
pub mod message;
pub mod receipt;

pub use delivery::{Acker, Acknowledge, Delivery, Settlement};
pub use error::{BoxError, Classify, Code, Error, ErrorKind, Operation, Permanent, Transient};
pub use header::{HeaderValue, Headers};
pub use message::{IntoDestination, Message};
pub use receipt::{Guarantee, Position, Receipt};
