//! NATS: core publish/subscribe, queue groups, request/reply and JetStream, as tower
//! services and streams of deliveries.
//!
//! One [`Connection`] (an async-nats client) serves every service built on it:
//!
//! - **Core NATS** ([`core`]): [`Publisher`] publishes each message, waits until the
//!   server processed it and answers a [`Receipt`] of [`Guarantee::Forwarded`]: the server had the message,
//!   and it went to the
//!   subscribers present at that moment, **at most once**; nothing is stored.
//!   [`BatchPublisher`] publishes a batch and waits for the server once. [`Subscriber`] is a
//!   stream of deliveries from a subscription or a queue group (a queue group load
//!   balances: each message goes to one member). Core deliveries cannot be acked or
//!   redelivered ([`Delivery::unacknowledged`](crate::Delivery::unacknowledged)).
//! - **Request/reply** ([`request`]): [`Requester`] sends a request to a subject and
//!   answers the reply, over a NATS inbox, with a timeout.
//! - **JetStream** ([`jetstream`]): streams and durable pull consumers declared from
//!   [`config`], publishing with the stream's ack (one by one, or a batch whose acks
//!   are awaited together) and `Nats-Msg-Id` deduplication,
//!   and consumers with explicit ack, nak with delay, term and a dead-letter subject.
//!
//! # On the wire
//!
//! What tower-mq writes is what other NATS clients write: the payload as it is,
//! properties in headers under the names NATS users use (`Nats-Msg-Id`,
//! `Content-Type`, `Correlation-Id`, ..., configurable with
//! [`Config::property_headers`]), the reply subject for a core message's reply-to,
//! headers as text with repeated names kept. What they write arrives intact, with a
//! JetStream delivery's timestamp the time the stream stored it. What NATS cannot
//! carry (typed or binary header values, a binary key, a priority, a TTL) fails the
//! publish with a permanent error naming it, unless [`Config::ignore_unsupported`] is
//! set. [`headers`] has the whole mapping.
//!
//! # Reconnecting
//!
//! The client reconnects by itself with a capped, jittered backoff
//! ([`Config::reconnect_backoff`]), and connection events are logged with
//! `tracing` (target `tower_mq::nats`); [`Config::connect_retry`] makes the first
//! connect wait for a server the same way. While it is disconnected:
//! - every publisher's and requester's `poll_ready` is `Pending`, so tower's
//!   `Buffer`, `ConcurrencyLimit` and `LoadShed` see the outage as backpressure
//!   (put a `LoadShed` or a readiness timeout in front if callers must not wait);
//! - subscriptions are kept and renewed by the client once connected again; core
//!   messages published while a subscriber was away are not delivered to it (at
//!   most once), JetStream consumers resume where their acks left off;
//! - commands wait in the client's buffer, bounded by [`Config::client_capacity`].
//!   A core publish whose connection was replaced before the server confirmed it may
//!   have been lost with the old connection: it fails with a **transient** error
//!   (code `connection_lost`) as soon as the new connection is up, instead of
//!   answering a receipt, so a retry publishes it again (possibly twice); so does
//!   one the server did not confirm within
//!   [`Config::request_timeout`]. A JetStream publish whose ack does not come within
//!   [`Config::request_timeout`] fails with a transient error as well; the message
//!   may have been stored, and a retry with the same `Nats-Msg-Id` is safe.
//!
//! # Errors
//!
//! Every error is a [`tower_mq::Error`](crate::Error) naming broker `"nats"`, the
//! operation and the subject or stream. Transient: connection loss, timeouts (a
//! request nobody answered in time, a JetStream ack that did not come), a full
//! buffer, JetStream temporarily unavailable, no responders to a core request (a
//! responder may be restarting). Permanent: invalid subjects, headers NATS cannot carry, a payload
//! over the server's limit, unsupported properties, no stream capturing a JetStream
//! subject, a rejected stream or consumer configuration.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::{Service, ServiceExt};
//! use tower_mq::nats::{self, Config, Connection};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let connection = Connection::connect(&Config::new("nats://127.0.0.1:4222")).await?;
//!
//! // Core NATS: two workers in a queue group share the messages.
//! let mut worker = nats::Subscriber::queue_subscribe(&connection, "jobs.>", "workers").await?;
//! let mut publisher = nats::Publisher::new(&connection);
//! let receipt = publisher
//!     .ready()
//!     .await?
//!     .call(Message::new("jobs.resize", "image-7"))
//!     .await?;
//! assert!(!receipt.is_confirmed()); // at most once
//! if let Some(delivery) = worker.next().await {
//!     let delivery = delivery?;
//!     println!("{:?}", delivery.message().payload());
//! }
//!
//! // JetStream: a stream, a durable consumer, deduplicated publishing.
//! use tower_mq::nats::config::{ConsumerConfig, StreamConfig};
//! let js = nats::jetstream::JetStream::new(&connection);
//! js.declare_stream(&StreamConfig::new("ORDERS", ["orders.>"])).await?;
//! let consumer = ConsumerConfig::new("billing").max_deliveries(5).dead_letter("dead.orders");
//! js.declare_consumer("ORDERS", &consumer).await?;
//! let receipt = js
//!     .publisher()
//!     .oneshot(Message::new("orders.created", "{}").with_message_id("order-1"))
//!     .await?;
//! println!("{receipt}");
//! let mut deliveries = js.consumer("ORDERS", &consumer).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     delivery?.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Receipt`]: crate::Receipt
//! [`Guarantee::Forwarded`]: crate::Guarantee::Forwarded

use tower_mq_core::{Error, ErrorKind, Operation};

pub mod config;
mod confirm;
mod connection;
pub mod core;
pub mod headers;
pub mod jetstream;
pub mod request;

pub use self::config::Config;
pub use self::connection::Connection;
pub(crate) use self::connection::{Link, Readiness};
pub use self::core::{BatchPublisher, Publisher, Subscriber};
pub use self::request::Requester;

/// The broker name in errors: `"nats"`.
pub const BROKER: &str = "nats";

/// An error during `operation` on `destination`.
pub(crate) fn error(kind: ErrorKind, operation: Operation, destination: &str) -> Error {
    Error::new(BROKER, operation, kind).with_destination(destination)
}
