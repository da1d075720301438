//! What a broker promised when it accepted a message.

use std::fmt;

/// The broker's answer to a publish: where the message landed and how firmly.
///
/// Every publisher is a `Service<Message, Response = Receipt>`. Variants that only mean
/// "handed to the network" say so ([`Receipt::is_confirmed`] is `false` for them):
/// Redis Pub/Sub and core NATS deliver at most once, and ZeroMQ has no broker to confirm.
///
/// ```
/// use tower_mq_core::Receipt;
///
/// let receipt = Receipt::Kafka { topic: "orders".into(), partition: 3, offset: 1207 };
/// assert!(receipt.is_confirmed());
/// assert_eq!(receipt.destination(), "orders");
/// assert_eq!(receipt.to_string(), "kafka orders[3]@1207");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Receipt {
    /// Stored by the in-memory broker under a per-topic sequence number.
    Memory {
        /// The topic.
        topic: String,
        /// The sequence number the topic gave the message (starting at 1).
        sequence: u64,
    },
    /// Appended to a Kafka partition (acknowledged per the producer's `acks`).
    Kafka {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The offset within the partition.
        offset: i64,
    },
    /// Confirmed by RabbitMQ (publisher confirms) and routed to at least one queue
    /// when published as mandatory.
    RabbitMq {
        /// The exchange (`""` is the default exchange).
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// Appended to a Redis stream.
    RedisStream {
        /// The stream key.
        stream: String,
        /// The entry id Redis assigned, e.g. `1700000000000-0`.
        id: String,
    },
    /// Published on a Redis Pub/Sub channel: at most once, to the subscribers present.
    RedisPubSub {
        /// The channel.
        channel: String,
        /// How many subscribers received it.
        receivers: u64,
    },
    /// Stored by a JetStream stream.
    JetStream {
        /// The stream that stored it.
        stream: String,
        /// Its sequence number in the stream.
        sequence: u64,
        /// The stream had already stored a message with the same `Nats-Msg-Id`.
        duplicate: bool,
    },
    /// Published on core NATS: at most once, to the subscribers present.
    Nats {
        /// The subject.
        subject: String,
        /// The server processed the message (it went to the subscribers present then);
        /// `false` when the publisher did not wait to know (it was handed to the
        /// client only).
        processed: bool,
    },
    /// Handed to a ZeroMQ socket's queue: no peer confirms it.
    ZeroMq {
        /// The socket (its endpoint or name).
        socket: String,
    },
    /// Published to several publishers by a fan-out; one receipt per publisher that
    /// accepted it, in the fan-out's order.
    FanOut(Vec<Receipt>),
}

impl Receipt {
    /// Whether a broker confirmed the message (stored or routed it), as opposed to it
    /// only being handed to the network.
    pub fn is_confirmed(&self) -> bool {
        match self {
            Receipt::Memory { .. }
            | Receipt::Kafka { .. }
            | Receipt::RabbitMq { .. }
            | Receipt::RedisStream { .. }
            | Receipt::JetStream { .. } => true,
            Receipt::RedisPubSub { .. } | Receipt::Nats { .. } | Receipt::ZeroMq { .. } => false,
            Receipt::FanOut(all) => !all.is_empty() && all.iter().all(Receipt::is_confirmed),
        }
    }

    /// The destination the broker reported (for a fan-out, the first one's).
    pub fn destination(&self) -> &str {
        match self {
            Receipt::Memory { topic, .. } | Receipt::Kafka { topic, .. } => topic,
            Receipt::RabbitMq { exchange, .. } => exchange,
            Receipt::RedisStream { stream, .. } | Receipt::JetStream { stream, .. } => stream,
            Receipt::RedisPubSub { channel, .. } => channel,
            Receipt::Nats { subject, .. } => subject,
            Receipt::ZeroMq { socket } => socket,
            Receipt::FanOut(all) => all.first().map(Receipt::destination).unwrap_or(""),
        }
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Receipt::Memory { topic, sequence } => write!(f, "memory {topic}#{sequence}"),
            Receipt::Kafka {
                topic,
                partition,
                offset,
            } => write!(f, "kafka {topic}[{partition}]@{offset}"),
            Receipt::RabbitMq {
                exchange,
                routing_key,
            } => write!(f, "rabbitmq confirmed {exchange}/{routing_key}"),
            Receipt::RedisStream { stream, id } => write!(f, "redis {stream} {id}"),
            Receipt::RedisPubSub { channel, receivers } => {
                write!(f, "redis pubsub {channel} to {receivers} subscribers")
            }
            Receipt::JetStream {
                stream,
                sequence,
                duplicate,
            } => {
                write!(f, "jetstream {stream}#{sequence}")?;
                if *duplicate {
                    f.write_str(" (duplicate)")?;
                }
                Ok(())
            }
            Receipt::Nats {
                subject,
                processed: true,
            } => write!(f, "nats {subject} (processed)"),
            Receipt::Nats {
                subject,
                processed: false,
            } => write!(f, "nats {subject} (sent)"),
            Receipt::ZeroMq { socket } => write!(f, "zeromq {socket} (queued)"),
            Receipt::FanOut(all) => {
                f.write_str("fan-out [")?;
                for (i, r) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{r}")?;
                }
                f.write_str("]")
            }
        }
    }
}
