//! Redis Pub/Sub: a `PUBLISH` publisher and a `SUBSCRIBE` / `PSUBSCRIBE` consumer.
//!
//! Pub/Sub is **at most once**: a message reaches the subscribers connected when it is
//! published, and nobody else. [`Publisher`] answers a [`Receipt`] of
//! [`Guarantee::Forwarded`] with how many subscribers
//! [received](crate::Receipt::receivers) it (0 is not an error: nobody was listening).
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
//! [`Framing::Envelope`] (set with [`Config::pubsub_framing`] on both sides) is
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
//! let config = config.pubsub_framing(Framing::Envelope);
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
//! [`Guarantee::Forwarded`]: crate::Guarantee::Forwarded
//! [Receipt::receivers]: crate::Receipt::receivers
//! [`Config::pubsub_framing`]: super::Config::pubsub_framing
//! [`Delivery::unacknowledged`]: crate::Delivery::unacknowledged

mod consumer;
mod publisher;

pub use self::consumer::{Consumer, Subscription};
pub use self::publisher::Publisher;

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
