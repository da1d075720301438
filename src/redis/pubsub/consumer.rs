//! The Pub/Sub consumer: subscriptions to channels and patterns on a connection of
//! its own, resubscribed after a reconnect. See the [Pub/Sub module docs](super).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use redis::aio::PubSubStream;
use redis::{Client, Msg};
use tower_mq_layers::retry::{Backoff, FastRng};

use super::Framing;
use crate::redis::config::Config;
use crate::redis::layout::{decode, unpack_envelope, StreamLayout};
use crate::redis::{redis_error, BROKER};
use crate::{Delivery, Error, Message, Operation};

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
/// connection of its own. See the [module docs](super).
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
            framing: config.pubsub_framing,
            subscriptions: subscriptions.clone(),
            connection_timeout: config.connection_timeout,
            response_timeout: config.response_timeout,
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
