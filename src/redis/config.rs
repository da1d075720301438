//! Connection settings shared by every Redis publisher and consumer.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Client;

use super::layout::StreamLayout;
use super::pubsub::Framing;
use super::{redis_error, BROKER};
use crate::connect_retry::{self, ReconnectBackoff};
use crate::redact::{self, LoneUser};
use crate::{ConnectRetry, Error, Operation};

/// Where Redis is and how to talk to it: the URL, timeouts, reconnect backoff, the
/// stream entry layout and the Pub/Sub framing.
///
/// Every publisher and consumer opens its own [`ConnectionManager`] from a `Config`
/// (a multiplexed connection that reconnects by itself); a Streams consumer opens a
/// second, dedicated one for its blocking reads. See the [module docs](super) for an
/// example.
///
/// `Debug` and every error show the URL with its password masked
/// (`redis://app:***@host:6379/0`).
#[derive(Clone)]
pub struct Config {
    url: String,
    pub(crate) response_timeout: Duration,
    pub(crate) connection_timeout: Duration,
    reconnect_retries: usize,
    reconnect_backoff: ReconnectBackoff,
    pub(crate) stream_layout: StreamLayout,
    pub(crate) pubsub_framing: Framing,
    connect_retry: ConnectRetry,
}

impl Config {
    /// The environment variable [`Config::from_env`] reads the URL from.
    pub const URL_ENV: &'static str = "TOWER_MQ_REDIS_URL";

    /// Settings for the server at `url` (`redis://host:port/db`, `rediss://` for TLS
    /// when redis-rs is built with a TLS feature, `unix:///path`).
    ///
    /// Defaults: 2 s response timeout, 1 s connection timeout, reconnect retried 4 times
    /// per failed command with exponential backoff from 50 ms up to 1 s, the first
    /// connect not retried ([`ConnectRetry::Off`]).
    pub fn new(url: impl Into<String>) -> Self {
        Config {
            url: url.into(),
            response_timeout: Duration::from_secs(2),
            connection_timeout: Duration::from_secs(1),
            reconnect_retries: 4,
            reconnect_backoff: ReconnectBackoff::new(
                Duration::from_millis(50),
                Duration::from_secs(1),
            ),
            stream_layout: StreamLayout::new(),
            pubsub_framing: Framing::Plain,
            connect_retry: ConnectRetry::Off,
        }
    }

    /// Settings for the server whose URL is in the environment variable
    /// [`URL_ENV`](Self::URL_ENV) (`TOWER_MQ_REDIS_URL`), every other setting at its
    /// default. Fails with a permanent error naming the variable when it is not set
    /// (the error never quotes the value: it may hold a password).
    ///
    /// ```no_run
    /// use tower_mq::redis::{Config, StreamPublisher};
    ///
    /// # async fn run() -> Result<(), tower_mq::Error> {
    /// // TOWER_MQ_REDIS_URL=redis://app:s3cret@127.0.0.1:6379/0
    /// let config = Config::from_env()?;
    /// println!("{config:?}"); // redis://app:***@127.0.0.1:6379/0
    /// let publisher = StreamPublisher::connect(&config).await?;
    /// # let _ = publisher;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_env() -> Result<Self, Error> {
        redact::url_from_env(BROKER, Self::URL_ENV).map(Config::new)
    }

    /// How long a command may wait for its answer before failing with a transient
    /// error. Blocking stream reads get their block time on top of this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long opening a connection may take.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = timeout;
        self
    }

    /// How many times a reconnect is attempted before the command that needed the
    /// connection fails (the next command starts a new round of attempts).
    pub fn reconnect_retries(mut self, retries: usize) -> Self {
        self.reconnect_retries = retries;
        self
    }

    /// The bounds of the exponential backoff between reconnect attempts.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_backoff = ReconnectBackoff::new(min, max);
        self
    }

    /// Whether opening a connection (every publisher's and consumer's `connect` or
    /// `subscribe`) is retried while the server cannot be reached, waiting the
    /// [reconnect backoff](Self::reconnect_backoff) between attempts: see
    /// [`ConnectRetry`] (default [`ConnectRetry::Off`]).
    pub fn connect_retry(mut self, retry: ConnectRetry) -> Self {
        self.connect_retry = retry;
        self
    }

    /// Which stream fields carry the payload and the properties (default
    /// [`StreamLayout::new`]); stream publishers and consumers built from this config
    /// use it, so they agree.
    pub fn stream_layout(mut self, layout: StreamLayout) -> Self {
        self.stream_layout = layout;
        self
    }

    /// How Pub/Sub messages are framed (default [`Framing::Plain`]); Pub/Sub
    /// publishers and consumers built from this config use it.
    pub fn pubsub_framing(mut self, framing: Framing) -> Self {
        self.pubsub_framing = framing;
        self
    }

    /// The server URL, credentials included: print [`Config::redacted_url`] instead.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The server URL with its password masked as `***`: what `Debug` and errors show.
    pub fn redacted_url(&self) -> String {
        redact::url(&self.url, LoneUser::Name).into_owned()
    }

    /// The redis-rs client for this URL.
    pub fn client(&self) -> Result<Client, Error> {
        Client::open(self.url.as_str()).map_err(|err| {
            Error::permanent(BROKER, Operation::Connect)
                .with_destination(self.redacted_url())
                .with_reason("invalid Redis URL")
                .with_source(err)
        })
    }

    /// Opens a multiplexed, self-reconnecting connection with these settings.
    pub async fn connect(&self) -> Result<ConnectionManager, Error> {
        self.connect_with_response_timeout(self.response_timeout)
            .await
    }

    pub(crate) async fn connect_with_response_timeout(
        &self,
        response_timeout: Duration,
    ) -> Result<ConnectionManager, Error> {
        let client = self.client()?;
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(response_timeout))
            .set_connection_timeout(Some(self.connection_timeout))
            .set_number_of_retries(self.reconnect_retries)
            .set_min_delay(self.reconnect_backoff.min)
            .set_max_delay(self.reconnect_backoff.max);
        let redacted_url = self.redacted_url();
        self.retry_connect(|| async {
            ConnectionManager::new_with_config(client.clone(), manager_config.clone())
                .await
                .map_err(|err| redis_error(Operation::Connect, &redacted_url, err))
        })
        .await
    }

    /// Runs `attempt`, a connect to this server, again after a transient failure as
    /// [`connect_retry`](Self::connect_retry) allows.
    pub(crate) async fn retry_connect<T, F, Fut>(&self, attempt: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        connect_retry::connect(
            self.connect_retry,
            self.reconnect_backoff,
            &self.redacted_url(),
            attempt,
        )
        .await
    }

    pub(crate) fn reconnect_max_delay(&self) -> Duration {
        self.reconnect_backoff.max
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("url", &self.redacted_url())
            .field("response_timeout", &self.response_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("reconnect_retries", &self.reconnect_retries)
            .field("reconnect_min_delay", &self.reconnect_backoff.min)
            .field("reconnect_max_delay", &self.reconnect_backoff.max)
            .field("stream_layout", &self.stream_layout)
            .field("pubsub_framing", &self.pubsub_framing)
            .field("connect_retry", &self.connect_retry)
            .finish()
    }
}
