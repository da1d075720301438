//! Redis: Streams publishers and consumer groups, and Pub/Sub.
//!
//! - [`StreamPublisher`] appends a [`Message`] to a stream with `XADD` and answers
//!   a stored [`Receipt`] with the entry id as its [`Position::Id`]; optional `MAXLEN` trimming (approximate
//!   `~` by default). [`StreamBatchPublisher`] pipelines a whole batch in one round trip
//!   (the batch layer feeds it).
//! - [`StreamConsumer`] reads a stream in a consumer group (`XREADGROUP ... BLOCK` on a
//!   connection of its own), acknowledges with `XACK`, recovers the pending entries of
//!   consumers that died with `XAUTOCLAIM`, counts deliveries from the pending entries
//!   list and moves a message to a dead-letter stream when it is rejected or has been
//!   delivered too often. Closed or dropped, it hands the entries it read ahead and
//!   never yielded back to the group, due at once and uncounted. See [`streams`] for
//!   the details.
//! - [`PubSubPublisher`] sends with `PUBLISH` (a [`Receipt`] of [`Guarantee::Forwarded`] with the
//!   number of [receivers](crate::Receipt::receivers)) and [`PubSubConsumer`] receives with `SUBSCRIBE` / `PSUBSCRIBE`,
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
//! what it would not retry (a wrong type, a syntax error, a missing group) is permanent,
//! and so is a refused login (a wrong password retried fails the same way).
//! Every error names the broker (`"redis"`), the operation and the stream or channel;
//! connect errors name the server by its URL with the password masked as `***`.
//!
//! # The stream entry layout
//!
//! A message is stored as the fields of one stream entry, under the names other
//! programs on the same Redis use, so that what tower-mq writes is what they read and
//! what they write arrives intact. [`StreamLayout`] names the fields (set it with
//! [`Config::stream_layout`]); the default:
//!
//! | model | stream field (default name) | Pub/Sub, plain framing (default) | Pub/Sub, envelope framing |
//! |---|---|---|---|
//! | destination | the stream key | the channel | the channel |
//! | payload | `payload` (configurable, or none) | the message | `payload` |
//! | key | `key` (bytes) | refused | `p:key` |
//! | headers | one field each, under its own name, in order (bytes; a name may repeat) | refused | `h:<name>` |
//! | timestamp | `timestamp` (decimal ms); received: the field, else the entry id's time | refused | `p:timestamp` |
//! | message id, correlation id, reply-to | `message-id`, `correlation-id`, `reply-to` | refused | `p:message-id`, ... |
//! | content type, content encoding | `content-type`, `content-encoding` | refused | `p:content-type`, ... |
//! | message type, app id, user id | `message-type`, `app-id`, `user-id` | refused | `p:message-type`, ... |
//! | priority | refused (carried in `tmq-priority` with `ignore_unsupported`) | refused | refused (`p:priority` with `ignore_unsupported`) |
//! | TTL | `tmq-ttl-ms` and `tmq-expires-at-ms`, honoured by the consumer | refused | `p:ttl-ms`, `p:expires-at-ms`, honoured |
//! | persistent | the server's choice; `false` carried in `tmq-persistent` | not stored either way | `p:persistent` |
//! | re-adds by nack | `tmq-redeliveries` | - | - |
//!
//! The property fields are a [`PropertyHeaders`] table
//! ([`StreamLayout::default_property_fields`]: the kebab-case names, plus `key` and
//! `timestamp`), so each name can be changed or removed. Redis has no convention for
//! TTL, persistence, priority or a re-add count, so those few fields carry a prefix,
//! `tmq-` by default ([`StreamLayout::control_prefix`]).
//!
//! **Publishing** refuses, with a permanent [`Error`] naming the stream and the field:
//! a header whose value is not bytes ([`HeaderValue::Bytes`]: Redis fields hold bytes,
//! so an AMQP-typed value or a null cannot be stored without changing it); a header
//! named like the payload field or a control field, or like the field of a property the
//! message also sets (the entry would hold two meanings under one name); a property the
//! layout gives no field; a priority. `ignore_unsupported(true)` on the publisher
//! carries a priority in `tmq-priority`, unhonoured, and leaves out a property without
//! a field. A header name may repeat: Redis keeps every field of an entry, in order
//! (readers that collect an entry into a map see one value per name).
//!
//! **Receiving** is binary-safe: replies are read as bytes, every value arrives as
//! [`HeaderValue::Bytes`] as stored, in entry order, repeated names included. A property
//! field whose value does not parse (a `timestamp` that is not decimal milliseconds, a
//! `content-type` that is not UTF-8) stays a header, so nothing is lost; an entry whose
//! `timestamp` field does not parse then has no timestamp. Consumed and published again,
//! a message gives the same fields (the payload, then the headers in order, then the
//! properties); an entry that had no `timestamp` field gains one holding its original
//! entry's time, since the copy gets an id of its own.
//!
//! An entry that cannot be delivered intact is never delivered altered: an entry
//! without the payload field, or with a field name that is not UTF-8 or holds a
//! control character such as CR or LF (header names are text), is moved to the dead-letter stream with the reason (such as
//! ``malformed entry: the entry has no `payload` field``) and acknowledged, and the rest
//! of its batch is delivered. For streams whose entries are records of named fields
//! rather than a payload, [`StreamLayout::no_payload_field`] delivers every field
//! (but the property fields, unless those are turned off too) as a header, in order,
//! with an empty payload, and writes messages back the same way.
//!
//! What Redis honours:
//! - **TTL**: honoured at delivery time. A consumer that reads an entry after its
//!   `tmq-expires-at-ms` does not deliver it: the entry is moved to the dead-letter
//!   stream with reason `expired` (or acknowledged and dropped when there is none).
//!   Clocks of publisher and consumer hosts are assumed in sync.
//! - **Priority**: cannot be honoured (a stream is a log and Pub/Sub has no queue).
//! - **Persistence** is the server's configuration (AOF / RDB), not a per-message
//!   choice; `false` is carried so it round-trips.
//! - **Key**: a stream is totally ordered, so per-key ordering holds; the key is
//!   carried.
//!
//! Pub/Sub carries nothing but a channel and a payload: see [`pubsub`] for the
//! framings, and for how the layers that add headers (trace, compression) work there.
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
//! let mut publisher = StreamPublisher::connect(&config).await?.max_len(100_000);
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
//! [`Receipt`]: crate::Receipt
//! [`Position::Id`]: crate::Position::Id
//! [`Guarantee::Forwarded`]: crate::Guarantee::Forwarded
//! [`Delivery::unacknowledged`]: crate::Delivery::unacknowledged
//! [`Error`]: crate::Error
//! [`HeaderValue::Bytes`]: crate::HeaderValue::Bytes
//! [`PropertyHeaders`]: crate::wire::PropertyHeaders

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

/// The broker name in errors and metrics: `"redis"`.
pub const BROKER: &str = "redis";

/// Whether a redis-rs error is worth a retry, by redis-rs's own classification.
///
/// Transient: a dropped or refused connection, an I/O error, a timeout, and every
/// error redis-rs's [`RetryMethod`] would retry (reconnect, wait and retry, retry at
/// once, cluster redirects), plus the server's `OOM` and `BUSY` answers (memory fills
/// and empties as consumers trim; a busy script ends). Permanent: what redis-rs would
/// not retry, such as a wrong type, a syntax error or a missing consumer group, and a
/// refused login (a wrong password or user, `NOAUTH`, `WRONGPASS`): redis-rs would
/// reconnect, but the same credentials fail the same way.
///
/// ```
/// use tower_mq::redis::error_kind;
/// use tower_mq::ErrorKind;
///
/// let dropped = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
/// assert_eq!(error_kind(&dropped), ErrorKind::Transient);
/// let config = redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "bad url"));
/// assert_eq!(error_kind(&config), ErrorKind::Permanent);
/// let login = redis::RedisError::from((redis::ErrorKind::AuthenticationFailed, "refused"));
/// assert_eq!(error_kind(&login), ErrorKind::Permanent);
/// ```
pub fn error_kind(err: &RedisError) -> ErrorKind {
    if err.kind() == ::redis::ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("NOAUTH" | "WRONGPASS"))
    {
        return ErrorKind::Permanent;
    }
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
