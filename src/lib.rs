//! tower-mq: message brokers as tower `Service`s.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub use tower_mq_core::{
    delivery, error, message, receipt, Acker, Acknowledge, BoxError, Classify, Delivery, Error,
    ErrorKind, Headers, Message, Operation, Permanent, Receipt, Settlement, Transient,
};
pub use tower_mq_layers as layers;

pub mod memory;

#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
