//! Connection, publishing and consuming settings for RabbitMQ.

use std::time::Duration;

use super::topology::Topology;

/// Everything a RabbitMQ [`Connection`](super::Connection) needs: where to connect,
/// how to keep the connection alive, how messages map to exchanges, and the topology
/// to declare on every (re)connect.
///
/// Every setting has a default; [`Config::new`] only needs the URI.
///
/// | setting | default |
/// |---|---|
/// | [`heartbeat`](Config::heartbeat) | 10 s |
/// | [`connection_name`](Config::connection_name) | `"tower-mq"` |
/// | [`channel_pool_size`](Config::channel_pool_size) | 4 confirm-mode channels |
/// | [`prefetch`](Config::prefetch) | 32 unacknowledged deliveries per consumer |
/// | [`reconnect_backoff`](Config::reconnect_backoff) | 100 ms doubling up to 5 s |
/// | [`routing`](Config::routing) | [`Routing::Exchange`] |
/// | [`mandatory`](Config::mandatory) | `true` |
/// | [`request_timeout`](Config::request_timeout) | 30 s |
/// | [`requeue_by_republish`](Config::requeue_by_republish) | `true` |
/// | [`reject_with_reason`](Config::reject_with_reason) | `true` |
///
/// ```
/// use std::time::Duration;
/// use tower_mq::rabbitmq::{Config, Routing};
///
/// let config = Config::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .heartbeat(Duration::from_secs(5))
///     .connection_name("orders-service")
///     .channel_pool_size(8)
///     .prefetch(100)
///     .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(2))
///     .routing(Routing::DefaultExchange);
/// assert_eq!(config.prefetch_count(), 100);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    pub(crate) uri: String,
    pub(crate) heartbeat: Duration,
    pub(crate) connection_name: String,
    pub(crate) channel_pool_size: usize,
    pub(crate) prefetch: u16,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) routing: Routing,
    pub(crate) mandatory: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) requeue_by_republish: bool,
    pub(crate) reject_with_reason: bool,
    pub(crate) topology: Topology,
}

/// How a [`Message`](crate::Message)'s destination and key become an AMQP exchange and
/// routing key, and back again for deliveries.
///
/// Whatever the mode, a destination starting with `amq.rabbitmq.reply-to` (a direct
/// reply-to address taken from a request's `reply_to`) is published to the default
/// exchange with that routing key, so replies work in every mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routing {
    /// The destination is the exchange, the key the routing key (empty when unset).
    /// An empty destination is the default exchange. A delivery's destination is the
    /// exchange it was published to (its routing key when that was the default exchange)
    /// and its key the routing key.
    #[default]
    Exchange,
    /// The destination is a queue name: messages go to the default exchange (`""`) with
    /// the destination as routing key, which RabbitMQ delivers straight to that queue.
    /// The message key is not sent. A delivery's destination is its routing key.
    DefaultExchange,
    /// Every message goes to this one exchange with the destination as routing key
    /// (e.g. a topic exchange where destinations are topics such as `orders.eu.created`).
    /// The message key is not sent. A delivery's destination is its routing key.
    FixedExchange(String),
}

impl Routing {
    /// The exchange and routing key a message with `destination` and `key` is
    /// published to.
    pub fn exchange_and_key<'a>(
        &'a self,
        destination: &'a str,
        key: Option<&'a str>,
    ) -> (&'a str, &'a str) {
        if destination.starts_with("amq.rabbitmq.reply-to") {
            return ("", destination);
        }
        match self {
            Routing::Exchange => (destination, key.unwrap_or("")),
            Routing::DefaultExchange => ("", destination),
            Routing::FixedExchange(exchange) => (exchange.as_str(), destination),
        }
    }

    /// The destination and key a delivery from `exchange` with `routing_key` gets.
    pub fn destination_and_key(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> (String, Option<String>) {
        match self {
            Routing::Exchange if !exchange.is_empty() => {
                let key = (!routing_key.is_empty()).then(|| routing_key.to_owned());
                (exchange.to_owned(), key)
            }
            _ => (routing_key.to_owned(), None),
        }
    }
}

impl Config {
    /// Settings for the broker at `uri` (`amqp://user:pass@host:port/vhost`, the vhost
    /// URL-encoded: `%2f` is `/`; `amqps://` for TLS), with every other setting at its
    /// default.
    pub fn new(uri: impl Into<String>) -> Self {
        Config {
            uri: uri.into(),
            heartbeat: Duration::from_secs(10),
            connection_name: "tower-mq".to_owned(),
            channel_pool_size: 4,
            prefetch: 32,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            routing: Routing::default(),
            mandatory: true,
            request_timeout: Duration::from_secs(30),
            requeue_by_republish: true,
            reject_with_reason: true,
            topology: Topology::new(),
        }
    }

    /// The heartbeat interval asked of the broker (rounded to whole seconds, at least
    /// one). A connection silent for two intervals counts as lost and is re-opened.
    /// `Duration::ZERO` disables heartbeats.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// The connection name shown in RabbitMQ's management UI and logs.
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// How many confirm-mode channels publishers share (at least one). Publishes are
    /// spread round-robin over them.
    pub fn channel_pool_size(mut self, size: usize) -> Self {
        self.channel_pool_size = size.max(1);
        self
    }

    /// How many unacknowledged deliveries the broker sends each consumer ahead
    /// (`basic.qos`); 0 means unlimited.
    pub fn prefetch(mut self, count: u16) -> Self {
        self.prefetch = count;
        self
    }

    /// The delay before the first reconnect attempt, doubled after each failure up to
    /// `max`.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }

    /// How destinations map to exchanges and routing keys. See [`Routing`].
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Whether messages are published `mandatory` (the default): an unroutable message
    /// is then returned by the broker and its publish fails with a permanent error,
    /// instead of being confirmed and dropped.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// How long a [`Requester`](super::Requester) waits for a reply by default.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How a consumer's `nack` requeues a delivery.
    ///
    /// `true` (the default): a copy goes to the back of the queue through the default
    /// exchange, carrying how many times the message was delivered in the
    /// `x-tower-mq-deliveries` header, and the original is acknowledged once the broker
    /// confirmed the copy. Delivery counts are then exact across nacks on every queue
    /// type, so `serve`'s max-deliveries dead-letters a poison message on classic queues
    /// too. A crash between the copy and the ack delivers the message twice
    /// (at-least-once).
    ///
    /// `false`: `basic.nack` with requeue. The message keeps its place in the queue, but
    /// classic queues only flag it as redelivered (the count stays at 2 however often it
    /// comes back); quorum queues count it exactly (`x-delivery-count`).
    pub fn requeue_by_republish(mut self, republish: bool) -> Self {
        self.requeue_by_republish = republish;
        self
    }

    /// How a consumer's `reject` dead-letters a delivery from a queue declared through
    /// this connection's [`Topology`] with a dead-letter exchange.
    ///
    /// `true` (the default): a copy goes to that exchange (with the queue's
    /// dead-letter routing key, or the message's own) carrying the reason in the
    /// `x-tower-mq-death-reason` header and the queue in `x-tower-mq-death-queue`, and
    /// the original is acknowledged once the broker confirmed the copy. AMQP's
    /// `basic.reject` has no room for a reason.
    ///
    /// `false`, and for queues whose dead-letter exchange this connection does not
    /// know: `basic.reject` without requeue, so RabbitMQ dead-letters the message
    /// itself, recording only `rejected` (`x-first-death-reason`, `x-death`).
    pub fn reject_with_reason(mut self, with_reason: bool) -> Self {
        self.reject_with_reason = with_reason;
        self
    }

    /// Exchanges, queues and bindings declared on connect and again after every
    /// reconnect. More can be added later with
    /// [`Connection::declare`](super::Connection::declare).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// The broker URI.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// The configured prefetch count.
    pub fn prefetch_count(&self) -> u16 {
        self.prefetch
    }

    /// The routing mode.
    pub fn routing_mode(&self) -> &Routing {
        &self.routing
    }

    /// The topology declared on every connect.
    pub fn declared_topology(&self) -> &Topology {
        &self.topology
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_modes_map_both_ways() {
        let r = Routing::Exchange;
        assert_eq!(r.exchange_and_key("orders", Some("eu")), ("orders", "eu"));
        assert_eq!(
            r.destination_and_key("orders", "eu"),
            ("orders".into(), Some("eu".into()))
        );
        assert_eq!(r.destination_and_key("", "q1"), ("q1".into(), None));
        let r = Routing::DefaultExchange;
        assert_eq!(r.exchange_and_key("q1", Some("ignored")), ("", "q1"));
        assert_eq!(r.destination_and_key("", "q1"), ("q1".into(), None));
        let r = Routing::FixedExchange("events".into());
        assert_eq!(
            r.exchange_and_key("orders.created", None),
            ("events", "orders.created")
        );
        assert_eq!(
            Routing::Exchange.exchange_and_key("amq.rabbitmq.reply-to.abc", None),
            ("", "amq.rabbitmq.reply-to.abc")
        );
    }
}
