//! tower-mq: message brokers as tower `Service`s.
//!
//! Publishing is a `Service<Message, Response = Receipt, Error = Error>`; consuming is a
//! `Stream` of [`Delivery`]s, each settled by ack, nack (redeliver) or reject
//! (dead-letter); [`serve()`] drives deliveries through a handler `Service`. Reliability
//! policies are tower `Layer`s written once ([`layers`]) and stacked the same way on
//! every broker. The in-process [`memory`] broker needs nothing running and is the
//! reference every other broker is tested against.
//!
//! On the wire, every broker module speaks the broker's own conventions (AMQP
//! properties and typed headers, Kafka record keys, timestamps and headers, NATS
//! headers, plain Redis and ZeroMQ payloads), so tower-mq interoperates both ways with
//! the broker's ordinary clients; [`wire`] has the table of where each field of a
//! [`Message`] goes on each broker, and what is refused.
//!
//! # Roles
//!
//! Every broker module has the same roles, in files of the same names (`config`,
//! `connection`, `publisher`, `consumer`, `request`, as the broker needs):
//!
//! | broker | connection | publisher | batch publisher | consumer | requester | config |
//! |---|---|---|---|---|---|---|
//! | [`memory`] | `Broker` | `Publisher` | — | `Consumer` | [`Requester`] | `Broker::builder` |
//! | `rabbitmq` | `Connection` | `Publisher` | `BatchPublisher` | `Consumer` | `Requester` | `Config`, `Topology` |
//! | `redis` Streams | — | `Publisher` | `BatchPublisher` | `Consumer` | [`Requester`] | `Config`, `ConsumerConfig` |
//! | `redis` Pub/Sub | — | `PubSubPublisher` | — | `PubSubConsumer` | — | `Config` |
//! | `kafka` | — | `Publisher` | — | `Consumer` | `Requester` | `Config`, `ConsumerConfig` |
//! | `nats` core | `Connection` | `Publisher` | `BatchPublisher` | `Subscriber` | `Requester` | `Config` |
//! | `nats` JetStream | `jetstream::JetStream` | `jetstream::Publisher` | `jetstream::BatchPublisher` | `jetstream::Consumer` | — | `config::StreamConfig`, `config::ConsumerConfig` |
//! | `zeromq` | — | `Publisher` | — | `Consumer` | `Requester` | `Config` |
//!
//! Publishers are `Service<Message, Response = Receipt>`, batch publishers
//! `Service<Vec<Message>>` answering one result per message (a publisher's `batch()`
//! gives its batch publisher, over the same connection), consumers `Stream`s of
//! [`Delivery`]s. Each is built from the module's `Config`, taken by reference
//! (`connect(&config)`, `subscribe(&config, ..)`), or from its connection where the
//! broker has one; a broker without a connection type opens one per publisher or
//! consumer. Each module's `BROKER` constant is the broker name its errors carry.
//!
//! Options are set as async-nats' `ConnectOptions` and tower's `ServiceBuilder` set
//! them: a config method named after the option takes the value and returns the config
//! (`Config::new(url).connection_timeout(d).reconnect_backoff(min, max)`), and
//! `no_<option>` turns an option off. The same option has the same name on every
//! broker:
//!
//! | option | memory | rabbitmq | redis | kafka | nats | zeromq |
//! |---|---|---|---|---|---|---|
//! | `connection_timeout` | — | by URI | ✓ | by `set` | ✓ | ✓ |
//! | `reconnect_backoff(min, max)` | — | ✓ | ✓ | by `set` | ✓ | ✓ |
//! | `connect_retry` | — | ✓ | ✓ | — | ✓ | — |
//! | `request_timeout` | — | ✓ | — | — | ✓ | — |
//! | `ignore_unsupported` | — | ✓ | publisher | ✓ | ✓ | publisher |
//! | `property_headers` | — | — | `StreamLayout::property_fields` | ✓ | ✓ | — |
//! | `dead_letter` (consumer side) | — | `Queue` | `ConsumerConfig` | `ConsumerConfig` | `ConsumerConfig` | — |
//! | `max_deliveries` (broker backstop) | — | `Queue::delivery_limit` | `ConsumerConfig` | — | `ConsumerConfig` | — |
//! | `batch_size` (per read) | — | `prefetch` | `ConsumerConfig` | by `set` | `ConsumerConfig` | — |
//!
//! Values built from parts ([`Message`], [`Error`], [`Receipt`], [`Delivery`]) are
//! extended with `with_<part>` instead, because their getters carry the part's name.
//!
//! # Example
//!
//! ```
//! use std::future::IntoFuture;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_mq::memory::Broker;
//! use tower_mq::{serve, BoxError, Delivery, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let broker = Broker::new();
//! let consumer = broker.consumer("greetings", "printer")?;
//!
//! // A publisher is a tower Service: stack layers on it.
//! let publisher = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(1))
//!     .service(broker.publisher());
//! let receipt = publisher.oneshot(Message::new("greetings", "hello")).await?;
//! println!("stored as {receipt}");
//!
//! // So is a handler; `serve` acks what it handled.
//! let (done, handled) = tokio::sync::oneshot::channel();
//! let mut done = Some(done);
//! let handler = service_fn(move |delivery: Delivery| {
//!     let payload = delivery.message().payload().clone();
//!     if let Some(done) = done.take() {
//!         let _ = done.send(payload);
//!     }
//!     async { Ok::<_, BoxError>(()) }
//! });
//! let summary = serve(consumer, handler)
//!     .with_graceful_shutdown(async { let _ = handled.await; })
//!     .into_future()
//!     .await?;
//! assert_eq!(summary.acked, 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub use tower_mq_core::{
    dead_letter, delivery, error, message, receipt, Acker, Acknowledge, BoxError, Classify, Code,
    Delivery, Error, ErrorKind, Guarantee, HeaderValue, Headers, IntoDestination, Message,
    Operation, Permanent, Position, Receipt, Settlement, Transient,
};
pub use tower_mq_layers as layers;

#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbitmq",
    feature = "zeromq"
))]
mod connect_retry;
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbitmq",
    feature = "zeromq"
))]
pub use connect_retry::ConnectRetry;

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(
    feature = "redis",
    feature = "nats",
    feature = "rabbitmq",
    feature = "kafka"
))]
mod redact;
#[cfg(feature = "redis")]
pub mod redis;
pub mod serve;
#[cfg(test)]
mod test_support;
pub mod wire;
#[cfg(feature = "zeromq")]
pub mod zeromq;

pub use serve::serve;

pub mod router;
pub use router::Router;
pub mod request;
pub use request::{Replier, Requester};
pub mod fanout;
pub use fanout::{Fallback, FanOut};

#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
