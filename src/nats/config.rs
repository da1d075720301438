//! Configuration: the connection ([`Config`]), and the JetStream streams
//! ([`StreamConfig`]) and durable pull consumers ([`ConsumerConfig`]) declared from it.
//!
//! ```
//! use std::time::Duration;
//! use tower_mq::nats::config::{Config, ConsumerConfig, Retention, Storage, StreamConfig};
//!
//! let config = Config::new("nats://127.0.0.1:4222")
//!     .name("orders-service")
//!     .client_capacity(1024)
//!     .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(500));
//! let stream = StreamConfig::new("ORDERS", ["orders.>"])
//!     .retention(Retention::WorkQueue)
//!     .storage(Storage::File)
//!     .max_age(Duration::from_secs(24 * 3600))
//!     .duplicate_window(Duration::from_secs(120));
//! let consumer = ConsumerConfig::new("billing")
//!     .filter_subject("orders.created")
//!     .ack_wait(Duration::from_secs(30))
//!     .max_deliveries(5)
//!     .backoff([Duration::from_secs(1), Duration::from_secs(10)])
//!     .dead_letter("dead.orders");
//! # let _ = (config, stream, consumer);
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::connect_retry::ReconnectBackoff;
use crate::redact::{self, LoneUser};
use crate::wire::PropertyHeaders;
use crate::ConnectRetry;

/// How to connect to NATS, shared by every core and JetStream service built on the
/// connection. See the [module docs](self).
///
/// # Authentication
///
/// Credentials come from the URL, as other NATS clients read it
/// (`nats://user:password@host:4222`, or `nats://token@host:4222`; percent-encode a
/// `@`, `:` or `/` in them), or from one of [`user_and_password`](Self::user_and_password),
/// [`token`](Self::token), [`nkey`](Self::nkey) and
/// [`credentials_file`](Self::credentials_file), which take precedence over the URL's.
/// The credentials are sent in the `CONNECT` handshake, never left in the URL the
/// client logs; `Debug`, errors and tracing fields show the URL with its password or
/// token masked as `***` (see [`redacted_url`](Self::redacted_url)). A server that
/// refuses them fails [`Connection::connect`](super::Connection::connect) with a
/// permanent error.
///
/// ```
/// use tower_mq::nats::Config;
///
/// let config = Config::new("nats://127.0.0.1:4222").user_and_password("orders", "s3cret");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// let config = Config::new("nats://orders:s3cret@127.0.0.1:4222");
/// assert_eq!(config.redacted_url(), "nats://orders:***@127.0.0.1:4222");
/// ```
#[derive(Clone)]
pub struct Config {
    pub(crate) url: String,
    pub(crate) auth: Auth,
    pub(crate) name: Option<String>,
    pub(crate) client_capacity: usize,
    pub(crate) subscription_capacity: usize,
    pub(crate) connection_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) reconnect_backoff: ReconnectBackoff,
    pub(crate) max_reconnects: Option<usize>,
    pub(crate) ping_interval: Duration,
    pub(crate) ignore_unsupported: bool,
    pub(crate) property_headers: PropertyHeaders,
    pub(crate) connect_retry: ConnectRetry,
    pub(crate) inbox_prefix: Option<String>,
}

impl Config {
    /// Connects to `url` (`nats://host:port`, or several separated by commas).
    ///
    /// Defaults: a command buffer of 2048 (see [`Config::client_capacity`]), 5 s
    /// connection timeout, 5 s request and JetStream ack timeout, reconnect backoff
    /// capped at 2 s, reconnecting forever, the first connect not retried
    /// ([`ConnectRetry::Off`]), what NATS cannot carry rejected, property headers
    /// named [`PropertyHeaders::http_style`].
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            auth: Auth::None,
            name: None,
            client_capacity: 2048,
            subscription_capacity: 64 * 1024,
            connection_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            reconnect_backoff: ReconnectBackoff::new(
                Duration::from_millis(20),
                Duration::from_secs(2),
            ),
            max_reconnects: None,
            ping_interval: Duration::from_secs(20),
            ignore_unsupported: false,
            property_headers: PropertyHeaders::http_style(),
            connect_retry: ConnectRetry::Off,
            inbox_prefix: None,
        }
    }

    /// The environment variable [`Config::from_env`] reads the URL(s) from.
    pub const URL_ENV: &'static str = "TOWER_MQ_NATS_URL";

    /// Connects to the server(s) whose URL is in the environment variable
    /// [`URL_ENV`](Self::URL_ENV) (`TOWER_MQ_NATS_URL`, credentials allowed in it),
    /// every other setting at its default. Fails with a permanent error naming the
    /// variable when it is not set (never quoting the value: it may hold credentials).
    ///
    /// ```no_run
    /// use tower_mq::nats::{Config, Connection};
    ///
    /// # async fn run() -> Result<(), tower_mq::Error> {
    /// // TOWER_MQ_NATS_URL=nats://orders:s3cret@127.0.0.1:4222
    /// let connection = Connection::connect(&Config::from_env()?.name("orders")).await?;
    /// # let _ = connection;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self, tower_mq_core::Error> {
        redact::url_from_env(super::BROKER, Self::URL_ENV).map(Config::new)
    }

    /// Authenticates with a user name and password (instead of any in the URL).
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.auth = Auth::UserAndPassword {
            user: user.into(),
            password: password.into(),
        };
        self
    }

    /// Authenticates with a token (instead of any in the URL).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(token.into());
        self
    }

    /// Authenticates with an nkey: `seed` is the user's secret seed (`SU...`); the
    /// server knows its public key.
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::Nkey(seed.into());
        self
    }

    /// Authenticates with a credentials file (a user JWT and its nkey seed, as `nsc`
    /// writes them), read at each [`Connection::connect`](super::Connection::connect).
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.auth = Auth::CredentialsFile(path.into());
        self
    }

    /// The server URL(s), credentials included: print [`Config::redacted_url`] instead.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server URL(s) with a password or token masked as `***`: what `Debug`,
    /// errors and logs show.
    pub fn redacted_url(&self) -> String {
        redact::url_list(&self.url, LoneUser::Token)
    }

    /// The client name the server shows in its connection list.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How many commands (publishes, flushes, acks) the client buffers, in particular
    /// while it is reconnecting. When the buffer is full, publishing waits: the
    /// buffer bounds the memory a broker outage can take.
    pub fn client_capacity(mut self, capacity: usize) -> Self {
        self.client_capacity = capacity.max(1);
        self
    }

    /// How many undelivered messages a subscription buffers before the server counts
    /// it as a slow consumer and drops messages for it (core NATS only).
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = capacity.max(1);
        self
    }

    /// How long one connection attempt may take.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How long a [`Requester`](super::Requester) waits for a reply, a core publish for
    /// the server's confirmation, and a JetStream publish or double ack for the server's answer.
    ///
    /// A core publish whose confirmation is read by another publish (confirmations are
    /// shared) waits for that reader's round and then its own, so it fails after at
    /// most twice this; one whose confirmation went out on a connection that was then
    /// lost fails as soon as the client is connected again.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The prefix of the connection's inbox subjects (default `_INBOX`): where replies to
    /// its requests and its publish confirmations arrive. Set it where the account's
    /// permissions only allow subscribing below a prefix of its own, e.g.
    /// `_INBOX.orders`.
    pub fn inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// The bounds of the jittered exponential backoff between reconnect attempts
    /// (default 20 ms to 2 s): the first reconnect is immediate, the next waits up to
    /// `min`, and each one after up to twice as long, capped at `max`.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_backoff = ReconnectBackoff::new(min, max);
        self
    }

    /// Gives up after `attempts` consecutive failed reconnects (`None`, the default,
    /// reconnects forever). Once given up, every operation fails (permanently).
    pub fn max_reconnects(mut self, attempts: Option<usize>) -> Self {
        self.max_reconnects = attempts.filter(|n| *n > 0);
        self
    }

    /// Whether [`Connection::connect`](super::Connection::connect) retries while no
    /// server can be reached, waiting the [reconnect backoff](Self::reconnect_backoff)
    /// between attempts: see [`ConnectRetry`] (default [`ConnectRetry::Off`]). Unlike
    /// async-nats' `retry_on_initial_connect`, `connect` still returns only once
    /// connected (or given up), so what it returns is usable at once.
    pub fn connect_retry(mut self, retry: ConnectRetry) -> Self {
        self.connect_retry = retry;
        self
    }

    /// How often the client pings the server; two unanswered pings close the
    /// connection and start a reconnect.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Publishes messages with what NATS cannot carry left out, instead of failing
    /// the publish with a permanent error (the default): a priority or a TTL, header
    /// values that are not text (typed values, binary bytes, line breaks, whitespace
    /// around them), invalid header names, a key or property value that is not such
    /// text, a property [`property_headers`](Self::property_headers) names no header
    /// for. See [`headers`](super::headers).
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }

    /// The header each message property travels in (default
    /// [`PropertyHeaders::http_style`]: `Nats-Msg-Id`, `Correlation-Id`, `Reply-To`,
    /// `Content-Type`, `Content-Encoding`, `Message-Type`, `App-Id`, `User-Id`,
    /// `Timestamp`, `Message-Key`, matched without regard to case on receipt). A
    /// property given no name fails to publish unless
    /// [`ignore_unsupported`](Self::ignore_unsupported). See [`headers`](super::headers).
    pub fn property_headers(mut self, names: PropertyHeaders) -> Self {
        self.property_headers = names;
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted_url())
            .field("auth", &self.auth)
            .field("name", &self.name)
            .field("client_capacity", &self.client_capacity)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("connection_timeout", &self.connection_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect_min_delay", &self.reconnect_backoff.min)
            .field("reconnect_max_delay", &self.reconnect_backoff.max)
            .field("max_reconnects", &self.max_reconnects)
            .field("ping_interval", &self.ping_interval)
            .field("ignore_unsupported", &self.ignore_unsupported)
            .field("property_headers", &self.property_headers)
            .field("connect_retry", &self.connect_retry)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

/// Credentials set on a [`Config`]; `Debug` masks the secrets.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    /// None set: the URL's, if any.
    None,
    UserAndPassword {
        user: String,
        password: String,
    },
    Token(String),
    Nkey(String),
    CredentialsFile(PathBuf),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::UserAndPassword { user, .. } => f
                .debug_struct("UserAndPassword")
                .field("user", user)
                .field("password", &redact::MASK)
                .finish(),
            Auth::Token(_) => f.debug_tuple("Token").field(&redact::MASK).finish(),
            Auth::Nkey(_) => f.debug_tuple("Nkey").field(&redact::MASK).finish(),
            Auth::CredentialsFile(path) => f.debug_tuple("CredentialsFile").field(path).finish(),
        }
    }
}

/// When a JetStream stream discards messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// Keep messages until a limit (age, count, bytes) is reached: a log that any
    /// number of consumers read.
    #[default]
    Limits,
    /// Keep a message until every consumer that existed when it arrived acked it.
    Interest,
    /// A work queue: a message is removed once one consumer acked it.
    WorkQueue,
}

/// Where a JetStream stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: lost when the server stops.
    Memory,
}

/// A JetStream stream, created (or updated to match) by
/// [`JetStream::declare_stream`](super::jetstream::JetStream::declare_stream).
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub(crate) name: String,
    pub(crate) subjects: Vec<String>,
    pub(crate) retention: Retention,
    pub(crate) storage: Storage,
    pub(crate) max_age: Option<Duration>,
    pub(crate) duplicate_window: Option<Duration>,
    pub(crate) max_messages: Option<i64>,
    pub(crate) replicas: usize,
}

impl StreamConfig {
    /// A stream named `name` capturing `subjects` (wildcards allowed), with limits
    /// retention, file storage and the server's 2 minute duplicate window.
    pub fn new<I, S>(name: impl Into<String>, subjects: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        StreamConfig {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            retention: Retention::Limits,
            storage: Storage::File,
            max_age: None,
            duplicate_window: None,
            max_messages: None,
            replicas: 1,
        }
    }

    /// The retention policy.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The storage type.
    pub fn storage(mut self, storage: Storage) -> Self {
        self.storage = storage;
        self
    }

    /// Discards messages older than `age`.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// How long the stream remembers `Nats-Msg-Id`s to drop duplicates: a retried
    /// publish is deduplicated only within this window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = Some(window);
        self
    }

    /// Keeps at most `count` messages.
    pub fn max_messages(mut self, count: i64) -> Self {
        self.max_messages = Some(count);
        self
    }

    /// The number of replicas in a cluster (1 on a single server).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A durable JetStream pull consumer with explicit acks, created (or updated) by
/// [`JetStream::declare_consumer`](super::jetstream::JetStream::declare_consumer).
///
/// JetStream has no dead-letter queue of its own: when a dead-letter subject is set,
/// rejecting a delivery (or nacking its last allowed delivery) publishes the message
/// there with reason headers and then terminates it; without one, it is only
/// terminated. See [`jetstream`](super::jetstream).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    pub(crate) durable: String,
    pub(crate) filter_subject: Option<String>,
    pub(crate) ack_wait: Duration,
    pub(crate) max_deliver: Option<u32>,
    pub(crate) backoff: Vec<Duration>,
    pub(crate) max_ack_pending: Option<i64>,
    pub(crate) dead_letter_subject: Option<String>,
    pub(crate) batch: usize,
}

impl ConsumerConfig {
    /// A durable consumer named `durable` over the whole stream, with a 30 s ack
    /// wait, unlimited deliveries and no dead-letter subject.
    pub fn new(durable: impl Into<String>) -> Self {
        ConsumerConfig {
            durable: durable.into(),
            filter_subject: None,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            backoff: Vec::new(),
            max_ack_pending: None,
            dead_letter_subject: None,
            batch: 100,
        }
    }

    /// Only delivers messages whose subject matches `subject`.
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.filter_subject = Some(subject.into());
        self
    }

    /// How long the server waits for an ack before delivering a message again.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// How many times the server delivers a message at most, the first time included
    /// (JetStream's `max_deliver`; `None`, the default, is unlimited). Like the Redis
    /// consumer's limit of the same name, this is the broker's backstop: `serve`'s
    /// [`max_deliveries`](crate::serve::Serve::max_deliveries) owns the attempt limit
    /// (see [`dead_letter`](crate::dead_letter)).
    pub fn max_deliveries(mut self, deliveries: impl Into<Option<u32>>) -> Self {
        self.max_deliver = deliveries.into().map(|n| n.max(1));
        self
    }

    /// Redelivery delays after unacknowledged deliveries (the server uses them instead
    /// of the ack wait; the last one repeats). The server requires
    /// [`max_deliveries`](Self::max_deliveries) to exceed their number.
    pub fn backoff(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.backoff = delays.into_iter().collect();
        self
    }

    /// How many delivered but unacknowledged messages the server allows at once.
    pub fn max_ack_pending(mut self, pending: i64) -> Self {
        self.max_ack_pending = Some(pending);
        self
    }

    /// Where rejected deliveries are published (a subject some stream captures, so
    /// dead letters are stored), with the shared
    /// [dead-letter headers](crate::dead_letter).
    ///
    /// Unlike the other brokers there is no default `<subject>.dlq`: a stream that
    /// captures `orders.>` would capture `orders.new.dlq` too and deliver the dead
    /// letter to the consumer that rejected it, and a subject no stream captures
    /// stores nothing. Name it here, for example
    /// [`dead_letter::destination_for`](crate::dead_letter::destination_for) of a
    /// subject outside the stream.
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }

    /// How many messages one pull request asks for (default 100). Their ack wait
    /// starts when the server sends them, so keep `batch_size` times the handling time of
    /// one message below the ack wait, or the server delivers the last ones again
    /// (to another consumer of the group) while they are still waiting here.
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// The consumer's durable name.
    pub fn durable(&self) -> &str {
        &self.durable
    }
}
