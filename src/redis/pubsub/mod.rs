//! Redis Pub/Sub: a `PUBLISH` publisher and a `SUBSCRIBE` / `PSUBSCRIBE` consumer.
//!
//! Pub/Sub is **at most once**: a message reaches the subscribers connected when it is
//! published, and nobody else. [`Publisher`] answers a [`Receipt`] of
//! [`Guarantee::Forwarded`] with how many subscribers
//! [received](Receipt::receivers) it (0 is not an error: nobody was listening).
//! [`Consumer`] yields [`Delivery::unacknowledged`] deliveries (settling them tells
//! no broker). When its connection drops it yields one transient error (messages
//! published until it is back are lost to it), reconnects with backoff and subscribes
//! to the same channels and patterns again, by itself.
//!
//! # Framing
//!
//! Redis Pub/Sub carries a channel and a payload, nothing else. By default
//! ([`Framing::Plain`]) a message is published as its bare payload, so any Redis client
//! reads it, and every payload received, from any client, is delivered as it is (even
//! one that happens to start with the envelope's marker). A message that carries more
//! than a payload (headers, a key, a property, a timestamp, a TTL, a priority) fails to
//! publish with a permanent error naming what it carries, unless the publisher ignores
//! unsupported properties (then only the payload is sent). A non-persistent message is
//! plain: nothing is stored either way, as the receipt says.
//!
//! [`Framing::Envelope`] (set with [`Config::with_pubsub_framing`] on both sides) is
//! tower-mq's own framing for peers that are all tower-mq: a message with more than a
//! payload (a non-persistent one included, so that the flag round-trips), or whose
//! payload starts with the marker, is sent as the bytes `\0tmq1`
//! followed by fields (`payload`, `h:<header>`, `p:<property>`), each name and value
//! preceded by its length as a big-endian `u32`; other messages are sent bare. The
//! consumer unpacks a payload that is a well-formed envelope and delivers anything else
//! as a plain payload. Headers must hold bytes (typed values are refused), names may
//! repeat, a TTL is honoured (an expired message is not delivered) and a priority is
//! refused unless the publisher ignores unsupported properties.
//!
//! A message on a channel whose name is not UTF-8 (only a pattern subscription can
//! receive one) cannot be given a destination; the consumer yields a transient error
//! naming the channel for it and goes on.
//!
//! The layers that add headers (trace context, compression's content encoding) need the
//! envelope on Pub/Sub: with plain framing their messages fail to publish, loudly.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::{Service, ServiceExt};
//! use tower_mq::redis::{Config, Framing, PubSubConsumer, PubSubPublisher, Subscription};
//! use tower_mq::{Message, Receipt};
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let config = Config::new("redis://127.0.0.1:6379");
//! let mut consumer =
//!     PubSubConsumer::subscribe(&config, [Subscription::pattern("prices.*")]).await?;
//! let mut publisher = PubSubPublisher::connect(&config).await?;
//! let receipt = publisher.ready().await?.call(Message::new("prices.eur", "1.08")).await?;
//! assert_eq!(receipt.receivers(), Some(1));
//! let delivery = consumer.next().await.expect("subscribed")?;
//! assert_eq!(delivery.message().destination(), "prices.eur");
//!
//! // A header cannot travel in a bare payload: refused, not dropped.
//! let traced = Message::new("prices.eur", "1.09").with_header("traceparent", "00-...");
//! let refused = publisher.ready().await?.call(traced.clone()).await.unwrap_err();
//! assert!(!refused.is_transient());
//!
//! // Between tower-mq peers, the envelope carries it.
//! let config = config.with_pubsub_framing(Framing::Envelope);
//! let mut consumer =
//!     PubSubConsumer::subscribe(&config, [Subscription::channel("prices.eur")]).await?;
//! let mut publisher = PubSubPublisher::connect(&config).await?;
//! publisher.ready().await?.call(traced).await?;
//! let delivery = consumer.next().await.expect("subscribed")?;
//! assert_eq!(delivery.message().headers().get_str("traceparent"), Some("00-..."));
//! # Ok(())
//! # }
//! ```
//!
//! [`Receipt`]: crate::Receipt
//! [Receipt::receivers]: crate::Receipt::receivers
//! [`Config::with_pubsub_framing`]: super::Config::with_pubsub_framing
//! [`Delivery::unacknowledged`]: crate::Delivery::unacknowledged

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubStream};
use redis::{Client, Msg, RedisResult};
use tower::Service;
use tower_mq_layers::retry::{Backoff, FastRng};

use super::config::Config;
use super::connection::{Connection, Reconnected};
use super::future::ResponseFuture;
use super::layout::{
    beyond_payload, check_destination, decode, encode, is_plain, pack_envelope, unpack_envelope,
    StreamLayout, ENVELOPE_MAGIC,
};
use super::{redis_error, BROKER};
use crate::{Delivery, Error, Guarantee, Message, Operation, Receipt};

/// How Pub/Sub messages are framed; see the [module docs](self#framing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// The bare payload, what every Redis client sends and reads. The default.
    #[default]
    Plain,
    /// tower-mq's envelope for messages with headers or properties; bare payloads
    /// otherwise.
    Envelope,
}

/// Publishes messages on Redis Pub/Sub channels with `PUBLISH`: a
/// `Service<Message, Response = Receipt, Error = Error>`.
///
/// The message's destination names the channel. Clones share one connection; the
/// publisher is `Send + Sync + Clone`: keep one in axum state or a
/// `BoxCloneSyncService`. See the [module docs](self).
pub struct Publisher {
    conn: Connection,
    framing: Framing,
    ignore_unsupported: bool,
    waiter: Option<Reconnected>,
}

impl Publisher {
    /// Connects to the server `config` names.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        Ok(
            Publisher::from_connection(Connection::connect(config).await?)
                .with_framing(config.pubsub_framing()),
        )
    }

    /// A publisher on an existing connection manager (its own settings apply).
    pub fn from_connection_manager(manager: ConnectionManager) -> Self {
        Publisher::from_connection(Connection::from_manager(manager, Duration::from_secs(1)))
    }

    fn from_connection(conn: Connection) -> Self {
        Publisher {
            conn,
            framing: Framing::Plain,
            ignore_unsupported: false,
            waiter: None,
        }
    }

    /// Frames messages this way (default: the config's, [`Framing::Plain`] for a
    /// publisher built from a connection manager).
    pub fn with_framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// Whether what the framing cannot carry is left out instead of failing the
    /// publish: with plain framing, everything but the payload; with the envelope, a
    /// priority is carried unhonoured. Off by default.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher {
            conn: self.conn.clone(),
            framing: self.framing,
            ignore_unsupported: self.ignore_unsupported,
            waiter: None,
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connected", &self.conn.is_up())
            .field("framing", &self.framing)
            .field("ignore_unsupported", &self.ignore_unsupported)
            .finish()
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture<Receipt>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.conn.poll_up(cx, &mut self.waiter).map(Ok)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let mut conn = self.conn.clone();
        let message_channel = message.destination().to_owned();
        let ignore_unsupported = self.ignore_unsupported;
        let framing = self.framing;
        ResponseFuture::new(async move {
            let payload = frame(framing, message, ignore_unsupported)?;
            let channel = message_channel;
            let result: RedisResult<u64> = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(payload.as_ref())
                .query_async(conn.manager_mut())
                .await;
            conn.record(&result);
            match result {
                Ok(receivers) => {
                    Ok(Receipt::new(BROKER, channel, Guarantee::Forwarded)
                        .with_receivers(receivers))
                }
                Err(err) => Err(redis_error(Operation::Publish, &channel, err)),
            }
        })
    }
}

/// The payload to publish for `message` with `framing`.
fn frame(framing: Framing, message: Message, ignore_unsupported: bool) -> Result<Bytes, Error> {
    check_destination(&message)?;
    let plain = is_plain(&message);
    match framing {
        Framing::Envelope
            if !plain
                || !message.is_persistent()
                || message.payload().starts_with(ENVELOPE_MAGIC) =>
        {
            Ok(pack_envelope(&encode(
                &StreamLayout::envelope(),
                &message,
                ignore_unsupported,
            )?))
        }
        Framing::Plain if !plain && !ignore_unsupported => {
            Err(Error::permanent(BROKER, Operation::Publish)
                .with_code(tower_mq_core::Code::Unsupported)
                .with_destination(message.destination().to_owned())
                .with_reason(format!(
                    "Redis Pub/Sub carries only the payload, and the message also has {} \
                     (enable the envelope framing to carry them, or ignore unsupported \
                     properties to send the payload alone)",
                    beyond_payload(&message).join(", ")
                )))
        }
        _ => Ok(message.into_payload()),
    }
}

/// A channel or a pattern to subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// One channel, by name (`SUBSCRIBE`).
    Channel(String),
    /// Every channel matching a glob-style pattern such as `prices.*` (`PSUBSCRIBE`).
    Pattern(String),
}

impl Subscription {
    /// A subscription to channel `name`.
    pub fn channel(name: impl Into<String>) -> Self {
        Subscription::Channel(name.into())
    }

    /// A subscription to the channels matching `pattern`.
    pub fn pattern(pattern: impl Into<String>) -> Self {
        Subscription::Pattern(pattern.into())
    }

    fn name(&self) -> &str {
        match self {
            Subscription::Channel(name) | Subscription::Pattern(name) => name,
        }
    }
}

/// Receives Pub/Sub messages: a `Stream` of at-most-once [`Delivery`]s on a
/// connection of its own. See the [module docs](self).
pub struct Consumer {
    subscriptions: Vec<Subscription>,
    inner: Pin<Box<dyn Stream<Item = Result<Delivery, Error>> + Send>>,
}

impl Consumer {
    /// Connects and subscribes; once this returns, messages published on the
    /// subscribed channels are delivered. At least one subscription is needed.
    pub async fn subscribe(
        config: &Config,
        subscriptions: impl IntoIterator<Item = Subscription>,
    ) -> Result<Self, Error> {
        let subscriptions: Vec<Subscription> = subscriptions.into_iter().collect();
        if subscriptions.is_empty() {
            return Err(Error::permanent(BROKER, Operation::Subscribe)
                .with_reason("no channel or pattern to subscribe to"));
        }
        let mut receiver = Receiver {
            client: config.client()?,
            framing: config.pubsub_framing(),
            subscriptions: subscriptions.clone(),
            connection_timeout: config.connection_timeout(),
            response_timeout: config.response_timeout(),
            max_backoff: config.reconnect_max_delay().max(Duration::from_millis(100)),
            messages: None,
            jitter: FastRng::new(),
            failures: 0,
        };
        receiver.messages = Some(config.retry_connect(|| receiver.connect()).await?);
        let inner = futures_util::stream::unfold(receiver, |mut receiver| async move {
            let item = receiver.next().await;
            Some((item, receiver))
        });
        Ok(Consumer {
            subscriptions,
            inner: Box::pin(inner),
        })
    }

    /// The channels and patterns subscribed to.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("subscriptions", &self.subscriptions)
            .finish_non_exhaustive()
    }
}

struct Receiver {
    client: Client,
    framing: Framing,
    subscriptions: Vec<Subscription>,
    connection_timeout: Duration,
    response_timeout: Duration,
    max_backoff: Duration,
    jitter: FastRng,
    messages: Option<PubSubStream>,
    failures: u32,
}

impl Receiver {
    fn label(&self) -> String {
        self.subscriptions
            .iter()
            .map(Subscription::name)
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn connect(&self) -> Result<PubSubStream, Error> {
        let label = self.label();
        let timed_out = |operation| {
            Error::transient(BROKER, operation)
                .with_destination(label.clone())
                .with_reason("timed out")
        };
        let mut pubsub =
            tokio::time::timeout(self.connection_timeout, self.client.get_async_pubsub())
                .await
                .map_err(|_| timed_out(Operation::Connect))?
                .map_err(|err| redis_error(Operation::Connect, &label, err))?;
        for subscription in &self.subscriptions {
            let subscribe = async {
                match subscription {
                    Subscription::Channel(name) => pubsub.subscribe(name).await,
                    Subscription::Pattern(pattern) => pubsub.psubscribe(pattern).await,
                }
            };
            tokio::time::timeout(self.response_timeout, subscribe)
                .await
                .map_err(|_| timed_out(Operation::Subscribe))?
                .map_err(|err| redis_error(Operation::Subscribe, subscription.name(), err))?;
        }
        Ok(pubsub.into_on_message())
    }

    async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            if let Some(messages) = &mut self.messages {
                while let Some(msg) = messages.next().await {
                    match delivery_of(self.framing, &msg) {
                        Ok(Some(delivery)) => return Ok(delivery),
                        Ok(None) => {}
                        Err(channel) => {
                            return Err(Error::transient(BROKER, Operation::Receive)
                                .with_code(tower_mq_core::Code::Malformed)
                                .with_destination(self.label())
                                .with_reason(format!(
                                    "dropped a message on channel {channel:?}: its name is \
                                     not UTF-8, and a destination is text"
                                )))
                        }
                    }
                }
                self.messages = None;
                return Err(Error::transient(BROKER, Operation::Receive)
                    .with_code(tower_mq_core::Code::ConnectionLost)
                    .with_destination(self.label())
                    .with_reason("connection lost; resubscribing (messages published meanwhile are not delivered)"));
            }
            if self.failures > 0 {
                // Jittered, so that consumers that lost one server do not come back together.
                let backoff = Backoff::exponential(Duration::from_millis(50), self.max_backoff)
                    .delay(self.failures - 1, &mut self.jitter);
                tokio::time::sleep(backoff).await;
            }
            match self.connect().await {
                Ok(messages) => {
                    tracing::debug!(subscriptions = %self.label(), "resubscribed");
                    self.failures = 0;
                    self.messages = Some(messages);
                }
                Err(err) => {
                    self.failures = self.failures.saturating_add(1);
                    return Err(err);
                }
            }
        }
    }
}

/// The delivery for one Pub/Sub message, or `None` if its TTL has passed; the channel
/// name, escaped, when it is not UTF-8 (only a pattern subscription can see one).
fn delivery_of(framing: Framing, msg: &Msg) -> Result<Option<Delivery>, String> {
    // redis-rs names a channel that is not UTF-8 `?`: only then are its bytes needed.
    let mut channel = msg.get_channel_name();
    let bytes: Vec<u8>;
    if channel == "?" {
        bytes = msg.get_channel().unwrap_or_default();
        channel = std::str::from_utf8(&bytes).map_err(|_| bytes.escape_ascii().to_string())?;
    }
    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
    let unpacked = match framing {
        Framing::Plain => None,
        Framing::Envelope => unpack_envelope(&payload)
            .and_then(|fields| decode(&StreamLayout::envelope(), channel, &fields, None).ok()),
    };
    let message = match unpacked {
        Some(decoded) => {
            if decoded.is_expired() {
                tracing::debug!(channel, "dropping an expired Pub/Sub message");
                return Ok(None);
            }
            decoded.message
        }
        None => Message::new(channel, payload),
    };
    Ok(Some(Delivery::at_most_once(message, BROKER)))
}
