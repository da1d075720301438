//! JetStream: streams and durable pull consumers declared from configuration,
//! publishing with the stream's ack and deduplication, and deliveries settled with
//! explicit acks.
//!
//! # Publishing
//!
//! [`Publisher`] publishes a message and waits for the stream's ack:
//! the stored [`Receipt`] names the stream, the sequence number and whether the stream
//! had already stored a message with the same `Nats-Msg-Id` (a duplicate is not stored
//! twice). The message id travels as `Nats-Msg-Id`; a message without one is stored
//! every time it is published. Headers and properties travel as [`headers`] lays out.
//!
//! [`BatchPublisher`] sends a batch and then waits for all its acks together (one
//! round trip's worth of latency for the batch instead of one per message).
//!
//! **Pitfall:** the ack can time out although the stream stored the message (the
//! ack was lost, or the server restarted between storing and answering). That is a
//! *transient* error, and retrying with the same `Nats-Msg-Id` is safe: the stream
//! answers `duplicate` instead of storing it again. For that to hold across retries,
//! the id must be on the message the retry layer resends: give messages an id
//! ([`Message::with_message_id`]) before the retry layer.
//!
//! # Consuming
//!
//! [`Consumer`] is a `Stream` of [`Delivery`]s from a durable pull consumer with
//! explicit acks. Its delivery count is JetStream's (`num_delivered`), and its
//! timestamp the time the stream stored the message (unless the message carries its
//! own `Timestamp` header). Settling:
//! - `ack` acknowledges and waits for the server to confirm it (a double ack);
//! - `nack(delay)` asks for redelivery after `delay` (a nak with delay);
//! - `reject(reason)` dead-letters: JetStream has no dead-letter queue, so the message
//!   is published to the consumer's dead-letter subject (if configured with
//!   [`ConsumerConfig::dead_letter`](super::config::ConsumerConfig::dead_letter))
//!   with the shared [dead-letter headers](crate::dead_letter): reason, original
//!   subject, stream, sequence, consumer, deliveries, original message id and time,
//!   and then terminated (`+TERM`: never delivered again). Without a dead-letter
//!   subject it is only terminated.
//! - a `nack` of the last delivery that `max_deliver` allows dead-letters the message
//!   the same way (the server would otherwise drop it silently).
//!
//! A delivery nobody settles within the ack wait is delivered again (up to
//! `max_deliver`, following the consumer's `backoff`). Messages a pull request
//! brought that the consumer had not yielded yet when it was dropped or
//! [closed](Consumer::close) are handed back at once (naked) instead of waiting for
//! the ack wait; JetStream counts them as delivered once more.
//!
//! # Poison messages
//!
//! async-nats cannot parse every header block another client may publish (one that
//! is not UTF-8, say): it drops the connection the message arrived on, and the
//! message never reaches the stream of deliveries, nor its dead-letter subject. This
//! is a limitation of async-nats (it fails the whole connection rather than the one
//! message). Two things contain it: each [`Consumer`] has a connection of its own,
//! so publishers and other consumers stay connected while it reconnects and pulls
//! again (its other messages go on being delivered); and a consumer declared with a
//! [`max_deliver`](super::config::ConsumerConfig::max_deliveries) makes the server give
//! up on such a message after that many deliveries and publish its
//! `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>` advisory, naming
//! its stream sequence. Without `max_deliver` it is delivered (and drops the
//! consumer's connection) once per ack wait, forever.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_mq::nats::config::{ConsumerConfig, Retention, StreamConfig};
//! use tower_mq::nats::jetstream::JetStream;
//! use tower_mq::nats::{Config, Connection};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let connection = Connection::connect(&Config::new("nats://127.0.0.1:4222")).await?;
//! let js = JetStream::new(&connection);
//! js.declare_stream(&StreamConfig::new("JOBS", ["jobs.>"]).retention(Retention::WorkQueue))
//!     .await?;
//! js.declare_stream(&StreamConfig::new("DEAD", ["dead.>"])).await?;
//! let workers = ConsumerConfig::new("workers")
//!     .ack_wait(Duration::from_secs(30))
//!     .max_deliveries(5)
//!     .dead_letter("dead.jobs");
//! js.declare_consumer("JOBS", &workers).await?;
//!
//! let receipt = js
//!     .publisher()
//!     .oneshot(Message::new("jobs.resize", "image-7").with_message_id("job-7"))
//!     .await?;
//! println!("{receipt}"); // jetstream JOBS#1
//!
//! let mut jobs = js.consumer("JOBS", &workers).await?;
//! while let Some(job) = jobs.next().await {
//!     let job = job?;
//!     match job.message().payload().as_ref() {
//!         b"image-7" => job.ack().await?,
//!         _ => job.reject("unknown job").await?,
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Receipt`]: crate::Receipt
//! [`Delivery`]: crate::Delivery
//! [`headers`]: super::headers
//! [`Message::with_message_id`]: crate::Message::with_message_id

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use tower_mq_core::{Error, ErrorKind, Operation};

use super::config::{ConsumerConfig, Retention, Storage, StreamConfig};
use super::{error, Connection};

mod consumer;
mod publisher;

pub use self::consumer::Consumer;
pub use self::publisher::{BatchPublisher, Publisher};

/// A JetStream context on a [`Connection`]: declares streams and consumers and builds
/// publishers and consumers. See the [module docs](self).
#[derive(Clone)]
pub struct JetStream {
    connection: Connection,
    // Shared: a context holds a client and its own prefix string, which a clone per
    // publish would copy (atomics and an allocation each time).
    context: Arc<async_nats::jetstream::Context>,
}

impl JetStream {
    /// JetStream on `connection`; API requests and publish acks wait
    /// [`Config::request_timeout`](super::Config::request_timeout).
    pub fn new(connection: &Connection) -> Self {
        let context = async_nats::jetstream::ContextBuilder::new()
            .timeout(connection.config().request_timeout)
            .backpressure_on_inflight(true)
            .build(connection.client().clone());
        JetStream {
            connection: connection.clone(),
            context: Arc::new(context),
        }
    }

    /// The async-nats JetStream context, for what this module does not cover.
    pub fn context(&self) -> &async_nats::jetstream::Context {
        &self.context
    }

    /// Creates the stream, or updates it to match `config`.
    pub async fn declare_stream(&self, config: &StreamConfig) -> Result<(), Error> {
        let stream = async_nats::jetstream::stream::Config {
            name: config.name.clone(),
            subjects: config.subjects.clone(),
            retention: match config.retention {
                Retention::Limits => async_nats::jetstream::stream::RetentionPolicy::Limits,
                Retention::Interest => async_nats::jetstream::stream::RetentionPolicy::Interest,
                Retention::WorkQueue => async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
            },
            storage: match config.storage {
                Storage::File => async_nats::jetstream::stream::StorageType::File,
                Storage::Memory => async_nats::jetstream::stream::StorageType::Memory,
            },
            max_age: config.max_age.unwrap_or_default(),
            duplicate_window: config.duplicate_window.unwrap_or_default(),
            max_messages: config.max_messages.unwrap_or(-1),
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            num_replicas: config.replicas,
            ..Default::default()
        };
        self.context
            .create_or_update_stream(stream)
            .await
            .map_err(|err| {
                use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
                let kind = match err.kind() {
                    Kind::TimedOut | Kind::JetStreamUnavailable => ErrorKind::Transient,
                    Kind::JetStream(api) if api.code() >= 500 => ErrorKind::Transient,
                    _ => ErrorKind::Permanent,
                };
                error(kind, Operation::Declare, &config.name).with_source(err)
            })?;
        Ok(())
    }

    /// Creates the durable pull consumer on `stream`, or updates it to match
    /// `config` (explicit acks, ack wait, max deliver, backoff, filter).
    pub async fn declare_consumer(
        &self,
        stream: &str,
        config: &ConsumerConfig,
    ) -> Result<(), Error> {
        let consumer = pull::Config {
            durable_name: Some(config.durable.clone()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver.map_or(-1, i64::from),
            filter_subject: config.filter_subject.clone().unwrap_or_default(),
            backoff: config.backoff.clone(),
            max_ack_pending: config.max_ack_pending.unwrap_or_default(),
            ..Default::default()
        };
        self.context
            .create_consumer_on_stream(consumer, stream)
            .await
            .map_err(|err| consumer_error(err, Operation::Declare, stream))?;
        Ok(())
    }
}

impl fmt::Debug for JetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStream")
            .field("connection", &self.connection)
            .finish()
    }
}

fn consumer_error(
    err: async_nats::error::Error<async_nats::jetstream::stream::ConsumerErrorKind>,
    operation: Operation,
    stream: &str,
) -> Error {
    use async_nats::jetstream::stream::ConsumerErrorKind as Kind;
    let kind = match err.kind() {
        Kind::TimedOut | Kind::Request => ErrorKind::Transient,
        Kind::JetStream(api) if api.code() >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Permanent,
    };
    error(kind, operation, stream).with_source(err)
}
