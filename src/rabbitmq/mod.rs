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
//! let connection = Connection::connect(&config).await?;
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
//!
//! # The wire
//!
//! Messages travel as any AMQP 0-9-1 client writes them, so tower-mq shares queues
//! with pika, amqp091-go, the Java client or lapin itself both ways, and a message
//! consumed and published again through tower-mq is what those clients saw the first
//! time: same body, exchange, routing key, properties and header types.
//!
//! | [`Message`](crate::Message) | AMQP |
//! |---|---|
//! | destination, key | exchange and routing key per [`Routing`] (the key is text: not UTF-8 is an error; a key the mode cannot send is an error unless ignored) |
//! | payload | body, bytes as they are |
//! | headers | the `headers` field table, each [`HeaderValue`](crate::HeaderValue) as its AMQP type: bytes as long string `S`, byte array `x`, bool `t`, `b` `B` `s` `u` `I` `i` `l`, `f` `d`, decimal `D`, timestamp `T`, array `A`, table `F`, null as void `V` |
//! | timestamp | `timestamp` (seconds); its milliseconds, when it has some, in the header `timestamp_in_ms` (a long, RabbitMQ's own name; [`Config::timestamp_millis_header`]) |
//! | message id, correlation id, reply-to | `message_id`, `correlation_id`, `reply_to` |
//! | content type, content encoding | `content_type`, `content_encoding` |
//! | message type, app id, user id | `type`, `app_id`, `user_id` (RabbitMQ refuses a user id other than the connection's: a permanent error) |
//! | priority | `priority` |
//! | TTL | `expiration`, whole milliseconds as text |
//! | persistent | `delivery_mode` 2; not persistent: no `delivery_mode` (what AMQP clients send by default) |
//!
//! What AMQP cannot carry fails the publish with a permanent error that names it,
//! never a silent drop or conversion: a header name repeated (a field table holds one
//! value per name) or longer than 255 bytes, a property longer than 255 bytes, a key
//! that is not UTF-8. Three more are refused unless
//! [`Config::ignore_unsupported`] leaves them out: a key the [`Routing`]
//! mode has no place for, a TTL with a sub-millisecond part, a timestamp before 1970
//! (or with milliseconds while the milliseconds header is off). Timestamps travel to the
//! millisecond, as on every broker: a finer part is not sent.
//!
//! Received, every property and header arrives as the broker gave it: bytes that are
//! not UTF-8 stay bytes, types stay types, `x-death`'s tables stay tables. Header
//! names come back ordered by name (an AMQP table is a map, which lapin keeps sorted).
//! Three things do not come back byte for byte: an explicit `delivery_mode` 1 comes back
//! absent (same meaning), an empty `headers` table comes back absent, and the
//! deprecated `cluster_id` property, which the model has no field for, is not kept.
//! A delivery the model cannot hold (a `timestamp` past what the system clock holds;
//! an `expiration` that is not a whole number of milliseconds, which RabbitMQ itself
//! refuses) is rejected, so it goes to the queue's dead-letter exchange (RabbitMQ
//! drops it when the queue has none), and is reported as a transient error naming
//! why: the consumer, and `serve`, go on.
//!
//! ```no_run
//! use std::time::SystemTime;
//! use futures_util::StreamExt;
//! use tower::{Service, ServiceExt};
//! use tower_mq::rabbitmq::{Config, Connection};
//! use tower_mq::{HeaderValue, Message};
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let connection = Connection::connect(&Config::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
//! let message = Message::new("orders", "{\"id\":42}")
//!     .with_key("order.created")
//!     .with_header("attempt", 3i32) // `I`, as a Java or Python consumer expects
//!     .with_header("tenant", "acme") // `S`
//!     .with_message_type("order.created") // `type`
//!     .with_timestamp(SystemTime::now()); // `timestamp` + `timestamp_in_ms`
//! connection.publisher().ready().await?.call(message).await?;
//!
//! let mut deliveries = connection.consumer("billing").await?;
//! if let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     let headers = delivery.message().headers();
//!     assert!(matches!(headers.get("attempt"), Some(HeaderValue::I32(_)) | None));
//!     // Publish it on unchanged: same properties, same header types.
//!     connection.publisher().ready().await?.call(delivery.message().clone()).await?;
//!     delivery.ack().await?;
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
pub use consumer::Consumer;
pub use error::BROKER;
pub use publisher::{BatchPublisher, Publisher, ResponseFuture};
pub use request::{Requester, DIRECT_REPLY_TO};
pub use topology::{Argument, Binding, Exchange, ExchangeKind, Queue, QueueType, Topology};
