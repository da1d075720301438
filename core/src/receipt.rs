//! What a broker promised when it accepted a message.

use std::fmt;
use std::sync::Arc;

/// The broker's answer to a publish: which broker, where the message landed and how
/// firmly.
///
/// Every publisher is a `Service<Message, Response = Receipt>`, whatever the broker: a
/// receipt names its [broker](Receipt::broker) and [destination](Receipt::destination),
/// says how firmly the broker took the message ([`Guarantee`]), and carries what the
/// broker reported about it where it reports anything: a [`Position`] (a Kafka
/// partition and offset, a sequence number, an entry id), a routing key, how many
/// subscribers received it, whether it was a duplicate. Code written against one
/// broker reads the same fields on the next; no enum of brokers has to be matched.
///
/// ```
/// use tower_mq_core::receipt::{Guarantee, Position};
/// use tower_mq_core::Receipt;
///
/// let receipt = Receipt::new("kafka", "orders", Guarantee::Stored)
///     .with_position(Position::Offset { partition: 3, offset: 1207 });
/// assert!(receipt.is_confirmed());
/// assert_eq!(receipt.destination(), "orders");
/// assert_eq!(receipt.position(), Some(&Position::Offset { partition: 3, offset: 1207 }));
/// assert_eq!(receipt.to_string(), "kafka orders[3]@1207");
///
/// // Core NATS: the server processed it, and nobody stored it.
/// let receipt = Receipt::new("nats", "events.tick", Guarantee::Forwarded);
/// assert!(!receipt.is_confirmed());
/// assert_eq!(receipt.to_string(), "nats events.tick (processed)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt {
    broker: &'static str,
    destination: Arc<str>,
    guarantee: Guarantee,
    position: Option<Position>,
    routing_key: Option<String>,
    receivers: Option<u64>,
    duplicate: bool,
    parts: Vec<Receipt>,
}

/// The broker name of a fan-out's receipt.
const FAN_OUT: &str = "fan-out";

/// How firmly a broker took a message, from the weakest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Guarantee {
    /// Handed to the client or the socket; nobody confirmed it (ZeroMQ, a core NATS
    /// fire-and-forget publish).
    Sent,
    /// The broker processed it and passed it on to the subscribers present at that
    /// moment, keeping nothing: delivered at most once (core NATS, Redis Pub/Sub).
    Forwarded,
    /// The broker confirmed it: stored or queued as its acknowledgement promises
    /// (Kafka's `acks`, a RabbitMQ publisher confirm, a Redis stream entry, a JetStream
    /// ack, the in-memory broker).
    Stored,
}

/// Where a broker put a message, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Position {
    /// A partition and the offset in it (Kafka).
    Offset {
        /// The partition.
        partition: i32,
        /// The offset within the partition.
        offset: i64,
    },
    /// A sequence number in the destination (a JetStream stream, an in-memory topic;
    /// from 1).
    Sequence(u64),
    /// An id the broker assigned (a Redis stream entry id, e.g. `1700000000000-0`).
    Id(String),
}

impl Receipt {
    /// A receipt from `broker` (its name in errors, e.g. `"kafka"`) for `destination`
    /// (the topic, exchange, stream, channel, subject or socket the broker reported).
    ///
    /// Pass [`Message::shared_destination`](crate::Message::shared_destination) to
    /// share the message's name instead of copying it.
    pub fn new(
        broker: &'static str,
        destination: impl Into<Arc<str>>,
        guarantee: Guarantee,
    ) -> Self {
        Receipt {
            broker,
            destination: destination.into(),
            guarantee,
            position: None,
            routing_key: None,
            receivers: None,
            duplicate: false,
            parts: Vec::new(),
        }
    }

    /// The receipt of a fan-out: one receipt per publisher that accepted the message,
    /// in the fan-out's order. Its guarantee is the weakest of theirs, its destination
    /// the first one's.
    pub fn fan_out(parts: Vec<Receipt>) -> Self {
        let guarantee = parts
            .iter()
            .map(Receipt::guarantee)
            .min()
            .unwrap_or(Guarantee::Sent);
        let destination = parts
            .first()
            .map(|r| r.destination.clone())
            .unwrap_or_default();
        Receipt {
            parts,
            ..Receipt::new(FAN_OUT, destination, guarantee)
        }
    }

    /// Where the broker put the message.
    pub fn with_position(mut self, position: Position) -> Self {
        self.position = Some(position);
        self
    }

    /// The routing key the broker routed it by (RabbitMQ).
    pub fn with_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = Some(routing_key.into());
        self
    }

    /// How many subscribers received it (Redis Pub/Sub).
    pub fn with_receivers(mut self, receivers: u64) -> Self {
        self.receivers = Some(receivers);
        self
    }

    /// Whether the broker had already stored the same message (a JetStream
    /// `Nats-Msg-Id` seen before) and kept the first.
    pub fn with_duplicate(mut self, duplicate: bool) -> Self {
        self.duplicate = duplicate;
        self
    }

    /// The broker's name, as in its errors (`"fan-out"` for a fan-out's receipt).
    pub fn broker(&self) -> &'static str {
        self.broker
    }

    /// The destination the broker reported (for a fan-out, the first one's).
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// How firmly the broker took the message.
    pub fn guarantee(&self) -> Guarantee {
        self.guarantee
    }

    /// Whether a broker confirmed the message (stored or queued it,
    /// [`Guarantee::Stored`]), as opposed to it only being handed on at most once.
    /// A fan-out is confirmed when every part is.
    pub fn is_confirmed(&self) -> bool {
        self.guarantee == Guarantee::Stored
    }

    /// Where the broker put the message, if it said.
    pub fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// The routing key the broker routed it by, if any (RabbitMQ).
    pub fn routing_key(&self) -> Option<&str> {
        self.routing_key.as_deref()
    }

    /// How many subscribers received it, where the broker counts them (Redis Pub/Sub).
    pub fn receivers(&self) -> Option<u64> {
        self.receivers
    }

    /// Whether the broker had already stored the same message and kept the first.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// A fan-out's receipts, one per publisher that accepted the message (empty for
    /// any other receipt).
    pub fn parts(&self) -> &[Receipt] {
        &self.parts
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.broker == FAN_OUT {
            f.write_str("fan-out [")?;
            for (i, part) in self.parts.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{part}")?;
            }
            return f.write_str("]");
        }
        write!(f, "{} {}", self.broker, self.destination)?;
        if let Some(routing_key) = &self.routing_key {
            write!(f, "/{routing_key}")?;
        }
        match &self.position {
            Some(Position::Offset { partition, offset }) => write!(f, "[{partition}]@{offset}")?,
            Some(Position::Sequence(sequence)) => write!(f, "#{sequence}")?,
            Some(Position::Id(id)) => write!(f, " {id}")?,
            None => {}
        }
        if let Some(receivers) = self.receivers {
            write!(f, " to {receivers} subscribers")?;
        }
        if self.duplicate {
            f.write_str(" (duplicate)")?;
        }
        match self.guarantee {
            Guarantee::Stored => Ok(()),
            Guarantee::Forwarded => f.write_str(" (processed)"),
            Guarantee::Sent => f.write_str(" (sent)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broker_reads_the_same_way() {
        let stream = Receipt::new("redis", "orders", Guarantee::Stored)
            .with_position(Position::Id("1700000000000-0".into()));
        assert_eq!(stream.to_string(), "redis orders 1700000000000-0");
        let routed =
            Receipt::new("rabbitmq", "events", Guarantee::Stored).with_routing_key("order.created");
        assert_eq!(routed.to_string(), "rabbitmq events/order.created");
        assert_eq!(routed.routing_key(), Some("order.created"));
        let pubsub = Receipt::new("redis", "news", Guarantee::Forwarded).with_receivers(2);
        assert_eq!(
            pubsub.to_string(),
            "redis news to 2 subscribers (processed)"
        );
        assert!(!pubsub.is_confirmed());
        let again = Receipt::new("nats", "ORDERS", Guarantee::Stored)
            .with_position(Position::Sequence(7))
            .with_duplicate(true);
        assert_eq!(again.to_string(), "nats ORDERS#7 (duplicate)");
        let queued = Receipt::new("zeromq", "ticks", Guarantee::Sent);
        assert_eq!(queued.to_string(), "zeromq ticks (sent)");
    }

    #[test]
    fn a_fan_out_is_as_firm_as_its_weakest_part() {
        let stored =
            Receipt::new("memory", "a", Guarantee::Stored).with_position(Position::Sequence(1));
        let sent = Receipt::new("zeromq", "b", Guarantee::Sent);
        let both = Receipt::fan_out(vec![stored.clone(), sent]);
        assert_eq!(both.guarantee(), Guarantee::Sent);
        assert!(!both.is_confirmed());
        assert_eq!(both.destination(), "a");
        assert_eq!(both.to_string(), "fan-out [memory a#1, zeromq b (sent)]");
        let confirmed = Receipt::fan_out(vec![stored.clone(), stored]);
        assert!(confirmed.is_confirmed());
        assert_eq!(confirmed.parts().len(), 2);
        assert!(!Receipt::fan_out(Vec::new()).is_confirmed());
    }
}
