//! Redis: Streams publishers and consumer groups, and Pub/Sub.
//!
//! - [`StreamPublisher`] appends a [`Message`] to a stream with `XADD` and answers
//!   [`Receipt::RedisStream`] with the entry id; optional `MAXLEN` trimming (approximate
//!   `~` by default). [`StreamBatchPublisher`] pipelines a whole batch in one round trip
//!   (the batch layer feeds it).
//! - [`StreamConsumer`] reads a stream in a consumer group (`XREADGROUP ... BLOCK` on a
//!   connection of its own), acknowledges with `XACK`, recovers the pending entries of
//!   consumers that died with `XAUTOCLAIM`, counts deliveries from the pending entries
//!   list and moves a message to a dead-letter stream when it is rejected or has been
//!   delivered too often. See [`streams`] for the details.
//! - [`PubSubPublisher`] sends with `PUBLISH` ([`Receipt::RedisPubSub`] with the number of
//!   receivers) and [`PubSubConsumer`] receives with `SUBSCRIBE` / `PSUBSCRIBE`,
//!   subscribing again by itself after a reconnect. Pub/Sub is at most once: deliveries
//!   are [`Delivery::unacknowledged`] and messages published while a subscriber is
//!   disconnected are not delivered to it. See [`pubsub`].
//!
//! # Connections
//!
//! Commands travel on a redis-rs [`ConnectionManager`](::redis::aio::ConnectionManager):
//! one multiplexed connection per publisher (clones share it) that reconnects by
//! itself. When the connection drops, the commands in flight on it fail; they fail
//! with a **transient** [`Error`] (never silently), so a retry layer sends them again.
//! While a publisher knows its connection is down it reports `Poll::Pending` from
//! `poll_ready` until a background `PING` gets through, so `ConcurrencyLimit`,
//! `Buffer` and `LoadShed` see the outage. Blocking reads (`XREADGROUP BLOCK`) would
//! hold up every other command queued on a multiplexed connection and outlast its
//! response timeout, so each stream consumer reads on a dedicated connection whose
//! response timeout is the block time plus [`Config::response_timeout`].
//!
//! Errors are classified with redis-rs's own judgement ([`error_kind`]): a dropped
//! connection, an I/O error, a timeout or anything redis-rs would retry is transient;
//! what it would not retry (a wrong type, a syntax error, a missing group) is permanent.
//! Every error names the broker (`"redis"`), the operation and the stream or channel.
//!
//! # The stream entry layout
//!
//! A message is stored as the fields of one stream entry, so it round-trips through
//! Redis and other programs can read it:
//!
//! | field | holds |
//! |---|---|
//! | `payload` | the payload bytes |
//! | `h:<name>` | header `<name>` |
//! | `p:key` | the key |
//! | `p:message-id`, `p:correlation-id`, `p:reply-to` | those properties |
//! | `p:content-type`, `p:content-encoding` | those properties |
//! | `p:persistent` | `false` for a non-persistent message (absent otherwise) |
//! | `p:ttl-ms`, `p:expires-at-ms` | the TTL and the wall-clock deadline it gives (ms since the Unix epoch) |
//! | `p:priority` | the priority, only when publishing with `ignore_unsupported` |
//! | `p:redeliveries` | re-adds by a nack in [`NackMode::Readd`] |
//!
//! Fields outside this layout (entries written by other programs) are read back as
//! headers under their own names. Pub/Sub sends a message that has only a payload as
//! the raw payload; one with headers or properties goes in an envelope of the same
//! fields (see [`pubsub`]).
//!
//! What Redis honours:
//! - **TTL**: honoured at delivery time. A consumer that reads an entry after its
//!   `p:expires-at-ms` does not deliver it: the entry is moved to the dead-letter stream
//!   with reason `expired` (or acknowledged and dropped when there is none). Clocks of
//!   publisher and consumer hosts are assumed in sync.
//! - **Priority**: cannot be honoured (a stream is a log and Pub/Sub has no queue).
//!   Publishing a message with a priority is a permanent error unless the publisher
//!   is built with `ignore_unsupported(true)`, which carries it in `p:priority`
//!   without honouring it.
//! - **Persistence** is the server's configuration (AOF / RDB), not a per-message
//!   choice; the flag is carried so it round-trips.
//! - **Key**: a stream is totally ordered, so per-key ordering holds; the key is
//!   carried.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::{Service, ServiceExt};
//! use tower_mq::redis::{Config, StreamConsumer, StreamConsumerConfig, StreamPublisher};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let config = Config::new("redis://127.0.0.1:6379");
//! let mut consumer =
//!     StreamConsumer::subscribe(&config, StreamConsumerConfig::new("orders", "billing")).await?;
//!
//! let mut publisher = StreamPublisher::connect(&config).await?.with_max_len(100_000);
//! let receipt = publisher
//!     .ready()
//!     .await?
//!     .call(Message::new("orders", "{\"id\":42}").with_header("tenant", "acme"))
//!     .await?;
//! println!("stored as {receipt}");
//!
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     assert_eq!(delivery.message().headers().get_str("tenant"), Some("acme"));
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Message`]: crate::Message
//! [`Receipt::RedisStream`]: crate::Receipt::RedisStream
//! [`Receipt::RedisPubSub`]: crate::Receipt::RedisPubSub
//! [`Delivery::unacknowledged`]: crate::Delivery::unacknowledged
//! [`Error`]: crate::Error

mod config;
mod connection;
pub mod future;
mod layout;
pub mod pubsub;
pub mod streams;

pub use config::Config;
pub use layout::StreamLayout;
pub use pubsub::{Consumer as PubSubConsumer, Framing, Publisher as PubSubPublisher, Subscription};
pub use streams::{
    BatchPublisher as StreamBatchPublisher, Consumer as StreamConsumer,
    ConsumerConfig as StreamConsumerConfig, NackMode, Publisher as StreamPublisher,
};

use ::redis::{RedisError, RetryMethod};

use crate::{Error, ErrorKind, Operation};

/// The broker name in errors and metrics.
pub(crate) const BROKER: &str = "redis";

/// Whether a redis-rs error is worth a retry, by redis-rs's own classification.
///
/// Transient: a dropped or refused connection, an I/O error, a timeout, and every
/// error redis-rs's [`RetryMethod`] would retry (reconnect, wait and retry, retry at
/// once, cluster redirects), plus the server's `OOM` and `BUSY` answers (memory fills
/// and empties as consumers trim; a busy script ends). Permanent: what redis-rs would
/// not retry, such as a wrong type, a syntax error or a missing consumer group.
///
/// ```
/// use tower_mq::redis::error_kind;
/// use tower_mq::ErrorKind;
///
/// let dropped = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
/// assert_eq!(error_kind(&dropped), ErrorKind::Transient);
/// let config = redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad url"));
/// assert_eq!(error_kind(&config), ErrorKind::Permanent);
/// ```
pub fn error_kind(err: &RedisError) -> ErrorKind {
    if err.is_connection_dropped() || err.is_connection_refusal() || err.is_timeout() {
        return ErrorKind::Transient;
    }
    if matches!(err.code(), Some("OOM" | "BUSY")) {
        return ErrorKind::Transient;
    }
    match err.retry_method() {
        RetryMethod::NoRetry => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// Whether the error means the connection is gone (as opposed to a command failing).
pub(crate) fn is_connection_error(err: &RedisError) -> bool {
    err.is_connection_dropped() || err.is_connection_refusal() || err.is_io_error()
}

/// A classified error for `operation` on `destination`.
pub(crate) fn redis_error(operation: Operation, destination: &str, err: RedisError) -> Error {
    Error::new(BROKER, operation, error_kind(&err))
        .with_destination(destination.to_owned())
        .with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_follows_redis_rs() {
        use std::io;
        let io = |kind| RedisError::from(io::Error::from(kind));
        assert_eq!(
            error_kind(&io(io::ErrorKind::ConnectionReset)),
            ErrorKind::Transient
        );
        assert_eq!(
            error_kind(&io(io::ErrorKind::ConnectionRefused)),
            ErrorKind::Transient
        );
        assert_eq!(
            error_kind(&io(io::ErrorKind::TimedOut)),
            ErrorKind::Transient
        );
        assert_eq!(
            error_kind(&RedisError::from((::redis::ErrorKind::Client, "x"))),
            ErrorKind::Permanent
        );
        let err = redis_error(Operation::Publish, "orders", io(io::ErrorKind::BrokenPipe));
        assert!(err.is_transient());
        assert_eq!(err.broker(), "redis");
        assert_eq!(err.destination(), Some("orders"));
    }
}
