//! Connection, publishing and consuming settings for RabbitMQ.

use std::fmt;
use std::time::Duration;

use super::topology::Topology;
use crate::connect_retry::ReconnectBackoff;
use crate::redact::{self, LoneUser};
use crate::ConnectRetry;

/// The default [`Config::timestamp_millis_header`]: RabbitMQ's own name for a time in
/// milliseconds.
pub const TIMESTAMP_MILLIS_HEADER: &str = "timestamp_in_ms";

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
/// | [`reconnect_backoff`](Config::reconnect_backoff) | 100 ms doubling up to 5 s, jittered |
/// | [`connect_retry`](Config::connect_retry) | [`ConnectRetry::Off`]: an unreachable broker fails `connect` at once |
/// | [`routing`](Config::routing) | [`Routing::Exchange`] |
/// | [`mandatory`](Config::mandatory) | `true` |
/// | [`request_timeout`](Config::request_timeout) | 30 s |
/// | [`requeue_by_republish`](Config::requeue_by_republish) | `true` |
/// | [`reject_with_reason`](Config::reject_with_reason) | `true` |
/// | [`ignore_unsupported`](Config::ignore_unsupported) | `false`: what AMQP cannot carry fails the publish |
/// | [`timestamp_millis_header`](Config::timestamp_millis_header) | `timestamp_in_ms` |
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
///     .routing(Routing::DefaultExchange)
///     // A message key has no place with DefaultExchange routing: leave it out
///     // instead of failing the publish.
///     .ignore_unsupported(true)
///     .timestamp_millis_header("sent_at_ms");
/// assert_eq!(config.prefetch_count(), 100);
/// ```
///
/// `Debug` shows the URI with its password masked (`amqp://guest:***@host:5672/%2f`);
/// errors name the broker by `host:port/vhost` only.
#[derive(Clone)]
pub struct Config {
    pub(crate) uri: String,
    pub(crate) heartbeat: Duration,
    pub(crate) connection_name: String,
    pub(crate) channel_pool_size: usize,
    pub(crate) prefetch: u16,
    pub(crate) reconnect_backoff: ReconnectBackoff,
    pub(crate) routing: Routing,
    pub(crate) mandatory: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) requeue_by_republish: bool,
    pub(crate) reject_with_reason: bool,
    pub(crate) ignore_unsupported: bool,
    pub(crate) timestamp_millis_header: Option<String>,
    pub(crate) topology: Topology,
    pub(crate) connect_retry: ConnectRetry,
}

/// How a [`Message`](crate::Message)'s destination and key become an AMQP exchange and
/// routing key, and back again for deliveries.
///
/// Whatever the mode, a destination starting with `amq.rabbitmq.reply-to` (a direct
/// reply-to address taken from a request's `reply_to`) is published to the default
/// exchange with that routing key, so replies work in every mode.
///
/// A routing key is text: a message key that is not UTF-8 fails the publish. In the
/// modes where the destination is the routing key, a message key has no place on the
/// wire and fails the publish too, unless
/// [`Config::ignore_unsupported`](Config::ignore_unsupported) is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Routing {
    /// The destination is the exchange, the key the routing key (empty when unset).
    /// An empty destination is the default exchange. A delivery's destination is the
    /// exchange it was published to (empty for the default exchange) and its key the
    /// routing key (none when empty), so a delivery published again goes where it went
    /// the first time.
    #[default]
    Exchange,
    /// The destination is a queue name: messages go to the default exchange (`""`) with
    /// the destination as routing key, which RabbitMQ delivers straight to that queue.
    /// A message key is refused. A delivery's destination is its routing key.
    DefaultExchange,
    /// Every message goes to this one exchange with the destination as routing key
    /// (e.g. a topic exchange where destinations are topics such as `orders.eu.created`).
    /// A message key is refused. A delivery's destination is its routing key.
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
        if is_direct_reply(destination) {
            return ("", destination);
        }
        match self {
            Routing::Exchange => (destination, key.unwrap_or("")),
            Routing::DefaultExchange => ("", destination),
            Routing::FixedExchange(exchange) => (exchange.as_str(), destination),
        }
    }

    /// Whether a message key to `destination` becomes the routing key.
    pub(crate) fn uses_key(&self, destination: &str) -> bool {
        matches!(self, Routing::Exchange) && !is_direct_reply(destination)
    }

    /// The destination and key a delivery from `exchange` with `routing_key` gets.
    pub fn destination_and_key(
        &self,
        exchange: &str,
        routing_key: &str,
    ) -> (String, Option<String>) {
        match self {
            Routing::Exchange => {
                let key = (!routing_key.is_empty()).then(|| routing_key.to_owned());
                (exchange.to_owned(), key)
            }
            _ => (routing_key.to_owned(), None),
        }
    }
}

fn is_direct_reply(destination: &str) -> bool {
    destination.starts_with("amq.rabbitmq.reply-to")
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
            reconnect_backoff: ReconnectBackoff::new(
                Duration::from_millis(100),
                Duration::from_secs(5),
            ),
            routing: Routing::default(),
            mandatory: true,
            request_timeout: Duration::from_secs(30),
            requeue_by_republish: true,
            reject_with_reason: true,
            ignore_unsupported: false,
            timestamp_millis_header: Some(TIMESTAMP_MILLIS_HEADER.to_owned()),
            topology: Topology::new(),
            connect_retry: ConnectRetry::Off,
        }
    }

    /// The environment variable [`Config::from_env`] reads the URI from.
    pub const URL_ENV: &'static str = "TOWER_MQ_AMQP_URL";

    /// Settings for the broker whose URI is in the environment variable
    /// [`URL_ENV`](Self::URL_ENV) (`TOWER_MQ_AMQP_URL`), every other setting at its
    /// default. Fails with a permanent error naming the variable when it is not set
    /// (never quoting the value: it holds the password).
    ///
    /// ```no_run
    /// use tower_mq::rabbitmq::{Config, Connection};
    ///
    /// # async fn run() -> Result<(), tower_mq::Error> {
    /// // TOWER_MQ_AMQP_URL=amqp://orders:s3cret@127.0.0.1:5672/%2f
    /// let connection = Connection::connect(&Config::from_env()?.prefetch(64)).await?;
    /// # let _ = connection;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self, crate::Error> {
        redact::url_from_env(super::error::BROKER, Self::URL_ENV).map(Config::new)
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

    /// The ceiling of the delay before the first reconnect attempt, doubled after each
    /// failure up to `max`; each delay is drawn at random below its ceiling (full
    /// jitter), so that connections lost together do not reconnect together.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_backoff = ReconnectBackoff::new(initial, max);
        self
    }

    /// Whether [`Connection::connect`](super::Connection::connect) retries while the
    /// broker cannot be reached, waiting the [reconnect backoff](Self::reconnect_backoff)
    /// between attempts: see [`ConnectRetry`] (default [`ConnectRetry::Off`]). A
    /// refused declaration of the configured topology is never retried either.
    pub fn connect_retry(mut self, retry: ConnectRetry) -> Self {
        self.connect_retry = retry;
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
    ///
    /// A nack with a delay always republishes, to a delay queue that hands the message
    /// back when the delay has passed (see [`Consumer`](super::Consumer#delayed-nacks)).
    pub fn requeue_by_republish(mut self, republish: bool) -> Self {
        self.requeue_by_republish = republish;
        self
    }

    /// How a consumer's `reject` dead-letters a delivery from a queue declared through
    /// this connection's [`Topology`] with a dead-letter exchange.
    ///
    /// `true` (the default): a copy goes to that exchange (with the queue's
    /// dead-letter routing key, or the message's own) carrying the shared
    /// [dead-letter headers](crate::dead_letter) (the reason in `x-dead-letter-reason`,
    /// the queue in `x-dead-letter-original-destination`, ...), and the original is
    /// acknowledged once the broker confirmed the copy. AMQP's
    /// `basic.reject` has no room for a reason.
    ///
    /// `false`, and for queues whose dead-letter exchange this connection does not
    /// know: `basic.reject` without requeue, so RabbitMQ dead-letters the message
    /// itself, recording only `rejected` (`x-first-death-reason`, `x-death`).
    pub fn reject_with_reason(mut self, with_reason: bool) -> Self {
        self.reject_with_reason = with_reason;
        self
    }

    /// Whether a message property AMQP has no place for is left out of the publish
    /// instead of failing it (default `false`: the publish fails with a permanent error
    /// naming the property). It concerns the message key when the [`Routing`] mode
    /// sends the destination as the routing key (the key is then not sent), a TTL with a
    /// sub-millisecond part (rounded up to the millisecond), and a timestamp before 1970
    /// (not sent) or with milliseconds while
    /// [`timestamp_millis_header`](Config::timestamp_millis_header) is off (truncated to
    /// the second). Headers AMQP cannot carry (a name repeated or over 255 bytes) always
    /// fail the publish: leaving them out would change the message.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }

    /// The header that carries a timestamp's milliseconds, as a long (`l`) beside the
    /// `timestamp` property's whole seconds: by default `timestamp_in_ms`, the name
    /// RabbitMQ itself uses for millisecond times (its AMQP 1.0 conversion, the event
    /// exchange). Written only when the timestamp is not on a whole second; read back
    /// into [`Message::timestamp`](crate::Message::timestamp) only when it agrees with the
    /// `timestamp` property and is not on the second, otherwise it stays a header.
    pub fn timestamp_millis_header(mut self, name: impl Into<String>) -> Self {
        self.timestamp_millis_header = Some(name.into());
        self
    }

    /// Sends timestamps in whole seconds only: a timestamp with milliseconds then fails
    /// the publish, unless [`ignore_unsupported`](Config::ignore_unsupported)
    /// truncates it to the second.
    pub fn no_timestamp_millis_header(mut self) -> Self {
        self.timestamp_millis_header = None;
        self
    }

    /// Exchanges, queues and bindings declared on connect and again after every
    /// reconnect. More can be added later with
    /// [`Connection::declare`](super::Connection::declare).
    pub fn topology(mut self, topology: Topology) -> Self {
        self.topology = topology;
        self
    }

    /// The broker URI, credentials included: print [`Config::redacted_uri`] instead.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The broker URI with its password masked as `***`: what `Debug` shows.
    pub fn redacted_uri(&self) -> String {
        redact::url(&self.uri, LoneUser::Name).into_owned()
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

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("uri", &self.redacted_uri())
            .field("heartbeat", &self.heartbeat)
            .field("connection_name", &self.connection_name)
            .field("channel_pool_size", &self.channel_pool_size)
            .field("prefetch", &self.prefetch)
            .field("backoff_initial", &self.reconnect_backoff.min)
            .field("backoff_max", &self.reconnect_backoff.max)
            .field("routing", &self.routing)
            .field("mandatory", &self.mandatory)
            .field("request_timeout", &self.request_timeout)
            .field("requeue_by_republish", &self.requeue_by_republish)
            .field("reject_with_reason", &self.reject_with_reason)
            .field("ignore_unsupported", &self.ignore_unsupported)
            .field("timestamp_millis_header", &self.timestamp_millis_header)
            .field("topology", &self.topology)
            .field("connect_retry", &self.connect_retry)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_connections_reconnect_after_different_delays() {
        let config = Config::new("amqp://127.0.0.1")
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(5));
        let (mut a, mut b) = (
            config.reconnect_backoff.delays(),
            config.reconnect_backoff.delays(),
        );
        let a: Vec<_> = (0..8).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(a, b, "two connections reconnect in lockstep");
        assert!(a.iter().chain(&b).all(|d| *d <= Duration::from_secs(5)));
        assert!(a[0] <= Duration::from_millis(100) && b[0] <= Duration::from_millis(100));
    }

    #[test]
    fn routing_modes_map_both_ways() {
        let r = Routing::Exchange;
        assert_eq!(r.exchange_and_key("orders", Some("eu")), ("orders", "eu"));
        assert_eq!(
            r.destination_and_key("orders", "eu"),
            ("orders".into(), Some("eu".into()))
        );
        // Published again, a delivery from the default exchange goes where it went.
        assert_eq!(
            r.destination_and_key("", "q1"),
            ("".into(), Some("q1".into()))
        );
        assert_eq!(r.exchange_and_key("", Some("q1")), ("", "q1"));
        assert!(r.uses_key("orders"));
        assert!(!r.uses_key("amq.rabbitmq.reply-to.abc"));
        let r = Routing::DefaultExchange;
        assert!(!r.uses_key("q1"));
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
