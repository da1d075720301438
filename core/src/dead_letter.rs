//! The dead-letter convention every broker and the `DeadLetterLayer` share.
//!
//! A dead letter is a copy of a message that could not be handled, published to a
//! dead-letter destination with headers saying why. Every broker module (and the
//! dead-letter layer) names that destination by one rule, [`destination_for`]
//! (`<destination>.dlq`, overridable with an option named `with_dead_letter` on the
//! Kafka, Redis and NATS consumer configurations and on a RabbitMQ `Queue`; the
//! in-memory broker's is a broker-wide suffix), and writes the headers below, so a
//! tool that reads dead letters from one broker reads them from all. A header a broker has nothing
//! for (a partition on RabbitMQ) is absent, never empty. What a broker writes itself
//! (RabbitMQ's `x-death`) is kept as the broker writes it.
//!
//! Header names are lowercase; NATS compares header names without regard to case,
//! so the same names are used there too.
//!
//! Who decides that a message has failed too often is `serve`'s `max_deliveries`:
//! see the `serve` module docs of `tower-mq`.
//!
//! # Example
//!
//! ```
//! use tower_mq_core::dead_letter;
//!
//! assert_eq!(dead_letter::destination_for("orders"), "orders.dlq");
//! assert_eq!(dead_letter::REASON, "x-dead-letter-reason");
//! ```

/// What is appended to a destination's name to name its dead-letter destination.
pub const SUFFIX: &str = ".dlq";

/// The dead-letter destination of `destination` unless configured: `<destination>.dlq`.
pub fn destination_for(destination: &str) -> String {
    format!("{destination}{SUFFIX}")
}

/// Why the message was dead-lettered: the reason given to `reject`, the handler's
/// error, or a broker's own reason such as [`EXPIRED`].
pub const REASON: &str = "x-dead-letter-reason";
/// The destination (topic, queue, stream, subject) the message was consumed from.
pub const ORIGINAL_DESTINATION: &str = "x-dead-letter-original-destination";
/// `transient` or `permanent`, where the failure was classified.
pub const ERROR_KIND: &str = "x-dead-letter-error-kind";
/// How many times the message had been delivered (0 if it expired before its first
/// delivery).
pub const DELIVERIES: &str = "x-dead-letter-deliveries";
/// When it was dead-lettered: milliseconds since the Unix epoch.
pub const TIME: &str = "x-dead-letter-time";
/// The consumer group (Kafka, Redis), queue (RabbitMQ) or durable consumer (NATS
/// JetStream) that dead-lettered it.
pub const CONSUMER: &str = "x-dead-letter-consumer";
/// Kafka: the partition it was consumed from.
pub const PARTITION: &str = "x-dead-letter-partition";
/// Kafka: its offset in that partition.
pub const OFFSET: &str = "x-dead-letter-offset";
/// NATS JetStream: the stream it came from (on Redis the stream is the
/// [`ORIGINAL_DESTINATION`]).
pub const STREAM: &str = "x-dead-letter-stream";
/// NATS JetStream: its sequence number in that stream.
pub const SEQUENCE: &str = "x-dead-letter-sequence";
/// Redis Streams: its entry id in that stream.
pub const ENTRY_ID: &str = "x-dead-letter-entry-id";
/// Its original message id, where the dead letter gets one of its own (NATS
/// JetStream's `Nats-Msg-Id`).
pub const MESSAGE_ID: &str = "x-dead-letter-message-id";

/// The [`REASON`] of a message whose time to live passed before it was delivered.
pub const EXPIRED: &str = "expired";

/// Milliseconds since the Unix epoch now, for [`TIME`] (0 if the clock is before 1970).
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
