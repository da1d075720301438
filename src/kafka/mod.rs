//! Kafka: an idempotent [`Publisher`], consumer-group [`Consumer`]s that never commit
//! past an unfinished message, request/reply over a reply topic, and topic and group
//! administration, on rdkafka (librdkafka).
//!
//! # Publishing
//!
//! [`Publisher`] is a `Service<Message, Response = Receipt, Error = Error>` on rdkafka's
//! `FutureProducer`, answering a stored [`Receipt`] with the partition and offset the
//! broker acknowledged. By default the producer is idempotent (`enable.idempotence=true`,
//! `acks=all`): librdkafka's own retries neither duplicate nor reorder. The key decides
//! the partition (Java-compatible murmur2 hashing), so messages with one key keep their
//! order; messages without a key are spread over the partitions. Compression, linger
//! and batch size are on [`Config`], as is every other librdkafka property.
//!
//! When librdkafka's local queue is full (`queue.buffering.max.messages` messages held,
//! or a publish was answered `QueueFull`), `poll_ready` returns `Pending` and looks again
//! on a tokio timer (1 ms, backing off to 50 ms) until messages have left the queue, so
//! `ConcurrencyLimit`, `Buffer` and `LoadShed` see the pressure. A publish that still
//! finds the queue full waits for room in its own future instead of failing.
//!
//! Errors name the broker (`"kafka"`), the operation and the topic, and are classified
//! from librdkafka's error code by [`error_kind`]: a message too large, an invalid or
//! unknown topic (with auto-creation off), failed authorization or a fatal idempotence
//! error are permanent; lost connections, timeouts and leader changes are transient.
//! Topic names are checked before anything is queued.
//!
//! # The record layout
//!
//! A message is a Kafka record the way any Kafka client writes one, and any record
//! reads as a message, losslessly:
//!
//! | message | record |
//! |---|---|
//! | destination | topic |
//! | payload | value (an empty payload is an empty value, or a null one with [`Config::empty_payloads_as_tombstones`]; a null value reads as an empty payload) |
//! | key | key, raw bytes (an empty key stays empty, no key stays null) |
//! | headers | headers, in order, names repeated, [`HeaderValue::Null`] ⇄ a header without a value, bytes exact |
//! | timestamp | timestamp, milliseconds (create time; unset, librdkafka stamps the send time; read whatever its type) |
//! | message id, correlation id, reply-to | headers `message-id`, `correlation-id`, `reply-to` |
//! | content type, content encoding | headers `content-type` (as in the CloudEvents Kafka binding), `content-encoding` |
//! | message type, app id, user id | headers `message-type`, `app-id`, `user-id` |
//! | priority, TTL | refused (Kafka has neither) |
//! | persistent | nothing: Kafka stores every record (`false` is accepted and stored anyway) |
//! | delivery count | header `x-delivery-count` (see below) |
//!
//! Property headers follow the message's own headers. Their names are
//! [`PropertyHeaders::kebab_case`] unless [`Config::property_headers`] says
//! otherwise; the key and the timestamp always travel in the record's own fields.
//! A received header named for a property becomes that property when its value is
//! UTF-8 text. When a record's property headers are not where tower-mq would write
//! them (before other headers, a name twice, a value that is not text), every header
//! also stays among the message's headers, in place; publishing the message writes
//! them as they are and does not repeat a property a header already carries, so a
//! consumed message published again is the same record.
//!
//! Publishing fails with a permanent error naming the header or property when the
//! record cannot carry the message:
//! - a header value other than [`HeaderValue::Bytes`] or [`HeaderValue::Null`]
//!   (Kafka header values are bytes: an integer or a boolean would come back as bytes);
//! - a header name with a NUL (librdkafka readers cut the name there);
//! - a priority or a time to live (Kafka has neither; retention is per topic);
//! - a timestamp at or before the Unix epoch (librdkafka replaces 0 with the current
//!   time); finer precision than a millisecond is truncated;
//! - a property set while a header of the message has the property's name and another
//!   value (the two would collide on the wire).
//!
//! With [`Config::ignore_unsupported`] all but the last are left out instead, and the
//! rest of the message is published.
//!
//! The project's own bookkeeping travels in headers too, documented in [`layout`]:
//! `x-delivery-count` counts deliveries (absent means 1; a nack publishes the message
//! again with it replaced), and a dead letter carries the shared
//! [dead-letter headers](crate::dead_letter): `x-dead-letter-reason`,
//! `-original-destination`, `-partition`, `-offset`, `-consumer` (the group),
//! `-deliveries` and `-time`. These are read, never removed: a record from another client that has them arrives with them
//! intact (an `x-delivery-count` that is not a positive number counts as 1), and a
//! message consumed after a nack and published elsewhere carries its count along.
//!
//! A record rdkafka cannot read, because a header name is not UTF-8 (rdkafka panics
//! reading it; the consumer catches that panic in its background task, though a panic hook
//! still sees it, and a `panic = "abort"` build would abort), does not stop the
//! consumer: it is published as it is, headers included, to the dead-letter topic with
//! the reason headers, logged, and its offset committed like a settled delivery. If
//! that publish fails, the consumer yields a transient error and goes on; the record
//! stays uncommitted, so the group reads it again after a restart.
//!
//! ```no_run
//! use std::time::{Duration, UNIX_EPOCH};
//!
//! use tower::ServiceExt;
//! use tower_mq::kafka::{Config, Publisher};
//! use tower_mq::wire::{Property, PropertyHeaders};
//! use tower_mq::{HeaderValue, Message};
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! // Correlation ids in the header Spring Kafka uses; the other names stay kebab-case.
//! let config = Config::new("127.0.0.1:9092").property_headers(
//!     PropertyHeaders::kebab_case().with_name(Property::CorrelationId, "kafka_correlationId"),
//! );
//! let publisher = Publisher::connect(&config).await?;
//! let mut message = Message::new("orders", &b"\x00\x01binary"[..])
//!     .with_key([0x00, 0x01, 0xff, 0xfe]) // record key, as is
//!     .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)) // record timestamp
//!     .with_content_type("application/octet-stream") // header content-type
//!     .with_correlation_id("req-7"); // header kafka_correlationId
//! message.headers_mut().append("hop", "edge"); // record headers, in order,
//! message.headers_mut().append("hop", "core"); // a name repeated,
//! message.headers_mut().append("deleted-at", HeaderValue::Null); // a header without a value
//! publisher.oneshot(message).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Consuming
//!
//! [`Consumer`] joins a consumer group on rdkafka's `StreamConsumer` and is a
//! `Stream<Item = Result<Delivery, Error>>`. Offsets are committed by librdkafka in the
//! background (`enable.auto.commit=true`), but only offsets the consumer *stored*
//! (`enable.auto.offset.store=false`), and it stores one only after a delivery was
//! settled: per partition it tracks the offsets handed out and not yet settled, and
//! stores the first unsettled offset (or one past the last settled one when none is
//! left). So a commit never passes a message whose handler has not finished, whatever
//! order handlers finish in.
//!
//! On a rebalance, before partitions are revoked, the consumer commits their commit
//! points synchronously and forgets their in-flight deliveries: settling one of those
//! later does nothing (its partition's new owner reads it again; delivery is at least
//! once). Each commit carries the highest offset handed out as metadata, so the next
//! owner counts what it reads again up to there as a redelivery.
//!
//! Kafka has no per-message negative acknowledgement:
//! - **nack** publishes the message again, to the configured retry topic or back to its
//!   own topic (same key, so the same partition, behind the messages already there),
//!   with `x-delivery-count` incremented, after the nack's delay (the partition's commit
//!   point waits meanwhile), and then marks the original finished;
//! - **reject** publishes it to the dead-letter topic (`<topic>.dlq` unless configured
//!   with [`ConsumerConfig::dead_letter`])
//!   with the reason headers, then marks the original finished.
//!
//! Either copy keeps the record's key, timestamp and headers as they came.
//!
//! The delivery count is the `x-delivery-count` header, plus one when the record is a
//! redelivery after a rebalance or restart.
//!
//! Kafka keeps no per-message state, so neither redeliveries nor dead letters can be
//! told apart from other records without these headers; they are the same names the
//! [in-memory broker](crate::memory) uses. For the same reason a well-formed
//! `x-delivery-count` that another producer wrote is believed. It cannot dead-letter
//! the record before a handler saw it: [`serve`](crate::serve()) checks the count only
//! after a handler failed, so such a count can only cut that record's retries short.
//!
//! # Polling
//!
//! librdkafka hands over a consumer's records, and runs its rebalance callbacks, where
//! the consumer is polled. Every [`Consumer`] is polled by a task on one runtime that
//! all the consumers of the process share: a multi-thread tokio runtime created with
//! the first consumer, with two worker threads named `tower-mq-kafka`. Fifty consumers
//! cost those two threads, not fifty threads and fifty runtimes (on top come the
//! threads librdkafka starts for each client, `rdk:main` and one per broker, as for
//! any librdkafka client). The records reach the stream through a channel, so the
//! handlers run wherever the application reads the stream.
//!
//! The rebalance callbacks wait on the broker: a synchronous commit before partitions
//! are revoked, a fetch of the commit metadata when they are assigned. They run in
//! [`block_in_place`](tokio::task::block_in_place), which hands the worker's other
//! tasks to another thread meanwhile, so one consumer's rebalance does not stall the
//! others' polling. Closing a dropped consumer (revoking, committing, leaving the
//! group) blocks the same way. The threads this takes are the runtime's blocking
//! threads, named `tower-mq-kafka` too: one for each such call under way, started
//! when needed and gone after 10 s idle. So the runtime has its two workers and,
//! while rebalances or closes wait on brokers, a thread for each; a consumer that is
//! just being read costs no thread. These threads are not capped low: librdkafka can
//! keep a commit waiting a long time while the group coordinator is unreachable, and
//! a few such calls must not stall every consumer's polling.
//!
//! The runtime is never shut down (it is a static): a consumer keeps being polled
//! whatever becomes of the runtime that subscribed it, and when the application's
//! runtime shuts down, the consumers its tasks owned are dropped with them. Dropping a
//! consumer stops its task, which lets go of the librdkafka consumer and closes it;
//! nothing else keeps it open, but for a settlement in progress, for a moment.
//!
//! # Request/reply and administration
//!
//! [`Requester::connect`] builds the [generic requester](crate::request) on a reply
//! topic of its own. [`Admin`] creates topics (idempotently), declares a group at the
//! end of a topic and reports a group's lag per partition.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::{Service, ServiceExt};
//! use tower_mq::kafka::{Admin, Config, Consumer, ConsumerConfig, Publisher, TopicSpec};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let config = Config::new("127.0.0.1:9092");
//! Admin::new(&config)?
//!     .create_topic(TopicSpec::new("orders").partitions(3))
//!     .await?;
//!
//! let mut publisher = Publisher::connect(&config).await?;
//! let receipt = publisher
//!     .ready()
//!     .await?
//!     .call(Message::new("orders", "{\"id\":42}").with_key("customer-7"))
//!     .await?;
//! println!("stored as {receipt}");
//!
//! let mut consumer = Consumer::subscribe(&config, ConsumerConfig::new("orders", "billing")).await?;
//! if let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     println!("{:?}", delivery.message());
//!     delivery.ack().await?; // stored now, committed within auto.commit.interval.ms
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Receipt`]: crate::Receipt
//! [`HeaderValue::Bytes`]: crate::HeaderValue::Bytes
//! [`HeaderValue::Null`]: crate::HeaderValue::Null
//! [`PropertyHeaders::kebab_case`]: crate::wire::PropertyHeaders::kebab_case

pub mod admin;
mod config;
pub mod consumer;
mod error;
pub mod layout;
pub mod publisher;
mod request;

/// The former name of [`publisher`], kept so that paths written against it
/// (`kafka::producer::ResponseFuture`) still resolve.
#[doc(hidden)]
pub use self::publisher as producer;

pub use admin::{Admin, PartitionLag, TopicSpec};
pub use config::{Compression, Config};
pub use consumer::{Consumer, ConsumerConfig};
pub use error::error_kind;
pub use publisher::Publisher;
pub use request::Requester;

/// The broker name on every error of this module.
pub const BROKER: &str = "kafka";
