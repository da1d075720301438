//! Kafka: an idempotent [`Publisher`], consumer-group [`Consumer`]s that never commit
//! past an unfinished message, request/reply over a reply topic, and topic and group
//! administration, on rdkafka (librdkafka).
//!
//! # Publishing
//!
//! [`Publisher`] is a `Service<Message, Response = Receipt, Error = Error>` on rdkafka's
//! `FutureProducer`, answering [`Receipt::Kafka`] with the partition and offset the
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
//! The payload is the record value, the key the record key, and [`Headers`] are record
//! headers under their own names. Properties travel as headers too:
//!
//! | header | holds |
//! |---|---|
//! | `tmq-message-id`, `tmq-correlation-id`, `tmq-reply-to` | those properties |
//! | `tmq-content-type`, `tmq-content-encoding` | those properties |
//! | `tmq-persistent` | `false` for a non-persistent message (absent otherwise; Kafka stores every record) |
//! | `x-delivery-count` | deliveries so far, written when a nack publishes the message again (absent means 1) |
//! | `x-death-reason`, `x-original-destination`, `x-original-partition`, `x-original-offset` | on dead letters |
//! | `tmq-priority`, `tmq-ttl-ms` | only with [`Config::ignore_unsupported`] |
//!
//! Kafka has no message priority and no per-message time to live: publishing a message
//! with either fails with a permanent error, unless the config says
//! [`ignore_unsupported`](Config::ignore_unsupported), which carries them in the headers
//! above without honouring them. Header values and keys that other producers wrote as
//! non-UTF-8 bytes are read lossily.
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
//! - **reject** publishes it to the dead-letter topic (`<topic>.dlq` unless configured)
//!   with the reason headers, then marks the original finished.
//!
//! The delivery count is the `x-delivery-count` header, plus one when the record is a
//! redelivery after a rebalance or restart.
//!
//! # Request/reply and administration
//!
//! [`requester`] builds the generic [`Requester`](crate::request::Requester) on a reply
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
//!     .create_topic(TopicSpec::new("orders").with_partitions(3))
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
//! [`Receipt::Kafka`]: crate::Receipt::Kafka
//! [`Headers`]: crate::Headers

pub mod admin;
mod config;
pub mod consumer;
mod error;
pub mod layout;
pub mod producer;
mod request;

pub use admin::{Admin, PartitionLag, TopicSpec};
pub use config::{Compression, Config};
pub use consumer::{Consumer, ConsumerConfig};
pub use error::error_kind;
pub use producer::Publisher;
pub use request::requester;

/// The broker name on every error of this module.
pub const BROKER: &str = "kafka";
