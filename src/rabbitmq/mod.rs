//! RabbitMQ (AMQP 0-9-1, through lapin): a confirming [`Publisher`], a [`Consumer`]
//! stream with manual acknowledgements, a [`Requester`] over direct reply-to and a
//! [`BatchPublisher`] for batched confirms, all over one supervised [`Connection`].
//!
//! A [`Connection`] opens a pool of confirm-mode channels, declares the [`Topology`]
//! from its [`Config`] and watches the connection (heartbeats, error events,
//! `connection.blocked`). When the connection is lost it reconnects with exponential
//! backoff and declares the topology again; consumers subscribe again by themselves.
//! Meanwhile publishers' `poll_ready` is `Pending`, and a message whose publisher
//! confirm had not arrived when the connection dropped fails with a *transient*
//! error, so a retry layer sends it again and nothing is silently lost
//! (at-least-once: consumers should tolerate duplicates).
//!
//! Destinations map to exchanges and routing keys per [`Routing`]: by default the
//! destination is the exchange and the key the routing key; [`Routing::DefaultExchange`]
//! treats destinations as queue names.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use tower::{Service, ServiceExt};
//! use tower_mq::rabbitmq::{Binding, Config, Connection, Exchange, Queue, Topology};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let topology = Topology::new()
//!     .exchange(Exchange::topic("orders"))
//!     .exchange(Exchange::fanout("orders.dlx"))
//!     .queue(Queue::quorum("billing").dead_letter_exchange("orders.dlx"))
//!     .queue(Queue::classic("billing.dead"))
//!     .binding(Binding::queue("billing", "orders", "order.*"))
//!     .binding(Binding::queue("billing.dead", "orders.dlx", ""));
//! let config = Config::new("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .heartbeat(Duration::from_secs(10))
//!     .prefetch(50)
//!     .topology(topology);
//! let connection = Connection::connect(config).await?;
//!
//! // Publish with a publisher confirm: exchange `orders`, routing key `order.created`.
//! let mut publisher = connection.publisher();
//! let receipt = publisher
//!     .ready()
//!     .await?
//!     .call(Message::new("orders", "{\"id\":42}").with_key("order.created"))
//!     .await?;
//! println!("{receipt}");
//!
//! // Consume and settle.
//! let mut deliveries = connection.consumer("billing").await?;
//! while let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     match std::str::from_utf8(delivery.message().payload()) {
//!         Ok(_) => delivery.ack().await?,
//!         Err(_) => delivery.reject("not UTF-8").await?, // to `orders.dlx`
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod config;
mod confirms;
mod connection;
mod consumer;
mod error;
mod mapping;
mod publisher;
mod request;
mod topology;

pub use config::{Config, Routing, TIMESTAMP_MILLIS_HEADER};
pub use connection::Connection;
pub use consumer::{Consumer, DEATH_QUEUE_HEADER, DEATH_REASON_HEADER};
pub use publisher::{BatchPublisher, Publisher, ResponseFuture};
pub use request::{Requester, DIRECT_REPLY_TO};
pub use topology::{Argument, Binding, Exchange, ExchangeKind, Queue, QueueType, Topology};
