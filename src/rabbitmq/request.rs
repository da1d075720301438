//! Request/reply over RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`), on the
//! [request/reply core](crate::request).
//!
//! # Example
//!
//! ```no_run
//! use std::future::IntoFuture;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceExt};
//! use tower_mq::rabbitmq::{Config, Connection, Queue, Requester, Routing, Topology};
//! use tower_mq::{serve, BoxError, Delivery, Message, Replier};
//!
//! # async fn run() -> Result<(), BoxError> {
//! let config = Config::new("amqp://guest:guest@127.0.0.1:5672/%2f")
//!     .routing(Routing::DefaultExchange)
//!     .topology(Topology::new().queue(Queue::classic("rpc.upper")));
//! let connection = Connection::connect(&config).await?;
//!
//! // The serving side answers each request at its reply-to.
//! let upper = service_fn(|request: Delivery| async move {
//!     Ok::<_, BoxError>(String::from_utf8_lossy(request.message().payload()).to_uppercase())
//! });
//! let requests = connection.consumer("rpc.upper").await?;
//! tokio::spawn(serve(requests, Replier::new(upper, connection.publisher())).into_future());
//!
//! let requester = Requester::new(&connection).timeout(Duration::from_secs(5));
//! let reply = requester.oneshot(Message::new("rpc.upper", "hello")).await?;
//! assert_eq!(reply.payload().as_ref(), b"HELLO");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::ready;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tower::Service;
use tower_mq_core::Code;

use super::confirms::ConfirmChannel;
use super::connection::{Connection, Live, Readiness};
use super::error::{amqp_error, BROKER};
use super::mapping::{incoming, outgoing, Outgoing};
use crate::error::{Error, Operation};
use crate::message::Message;
use crate::request::{route, BoxResponseFuture, Dispatch, Routed, Shared, Waiters};

/// The pseudo-queue RabbitMQ routes direct replies through.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// A channel consuming `amq.rabbitmq.reply-to`, on which requests are published.
struct ReplyChannel {
    generation: u64,
    channel: ConfirmChannel,
    waiters: Waiters,
}

/// Sends a request and waits for its reply: a `Service<Message, Response = Message>`.
///
/// Requests are published like [`Publisher`](super::Publisher)'s (mandatory, with
/// confirms, destination mapped per [`Routing`](super::Routing)) with `reply_to` set
/// to `amq.rabbitmq.reply-to` and the request's own correlation id (one the caller set
/// is replaced; see [the core](crate::request)). The responder publishes its reply to
/// the request's `reply_to` with the same correlation id, e.g.
/// `Message::new(request.reply_to().unwrap(), body).with_correlation_id(id)` through
/// any publisher; RabbitMQ hands it straight to this requester's channel, with no
/// queue involved.
///
/// Errors: no reply within the timeout ([`Config::request_timeout`](super::Config::request_timeout),
/// or [`Requester::timeout`]) is a transient [`Operation::Request`] error, as is a
/// connection lost before the reply came; an unroutable request (no responder's queue)
/// is permanent (unless [`Requester::mandatory`] turns that off). `poll_ready` is
/// `Pending` while reconnecting or blocked.
///
/// Clones share the reply channel; the requester is `Send + Sync + Clone`: keep one in
/// axum state or a `BoxCloneSyncService`.
pub struct Requester {
    readiness: Readiness,
    reply: Shared<ReplyChannel>,
    timeout: Duration,
    mandatory: bool,
}

impl Requester {
    /// A requester on `connection`, waiting
    /// [`Config::request_timeout`](super::Config::request_timeout) for each reply.
    pub fn new(connection: &Connection) -> Self {
        Requester {
            readiness: Readiness::new(connection.clone()),
            reply: Shared::new(),
            timeout: connection.config().request_timeout,
            mandatory: true,
        }
    }

    /// Waits at most `timeout` for each reply (publishing included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether requests are published `mandatory` (the default): a request no queue is
    /// bound for then fails at once with a permanent error. Without it, such a request
    /// is dropped by the broker and fails with the (transient) timeout.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// The connection requests go over.
    pub fn connection(&self) -> &Connection {
        self.readiness.connection()
    }
}

impl Clone for Requester {
    fn clone(&self) -> Self {
        Requester {
            readiness: self.readiness.clone(),
            reply: self.reply.clone(),
            timeout: self.timeout,
            mandatory: self.mandatory,
        }
    }
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("connection", self.connection())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Opens a channel consuming direct replies on connection `live`, and the task that
/// hands them to their requests until the channel or the connection goes.
async fn open_reply_channel(
    live: &Live,
    connection: &Connection,
) -> Result<ReplyChannel, lapin::Error> {
    let channel = live.connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await?;
    let (waiters, dispatch) = route(DIRECT_REPLY_TO);
    let config = connection.config().clone();
    let replies = consumer
        .map(move |item| match item {
            Ok(delivery) => {
                let id = delivery.properties.correlation_id().as_ref();
                let id = id.map(|id| id.as_str().to_owned());
                let reply = incoming(
                    delivery.exchange.as_str(),
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                    delivery.data.into(),
                    &config,
                )
                .map_err(|why| {
                    Error::permanent(BROKER, Operation::Request)
                        .with_code(Code::Malformed)
                        .with_reason(format!("the reply is not a valid message: {why}"))
                });
                Routed::Reply(id, reply)
            }
            Err(error) => {
                tracing::debug!(%error, "the direct reply-to consumer failed");
                Routed::Ended("the reply channel closed")
            }
        })
        .chain(stream::once(ready(Routed::Ended(
            "the reply channel closed",
        ))));
    let generation = live.generation;
    let watched = connection.clone();
    let lost = stream::once(async move {
        watched.lost(generation).await;
        Routed::Ended("the connection closed before the reply arrived")
    });
    let connection = connection.clone();
    tokio::spawn(async move {
        let why = dispatch
            .run(stream::select(replies, lost), "the reply channel closed")
            .await;
        if !Dispatch::dropped(why) {
            connection.nudge();
        }
    });
    Ok(ReplyChannel {
        generation: live.generation,
        channel: ConfirmChannel::new(channel),
        waiters,
    })
}

impl Service<Message> for Requester {
    type Response = Message;
    type Error = Error;
    type Future = BoxResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx, Operation::Request)
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, mut request: Message) -> Self::Future {
        let live = match self.readiness.take(Operation::Request) {
            Ok(live) => live,
            Err(error) => {
                return BoxResponseFuture::failed(error.with_destination(request.destination()))
            }
        };
        let connection = self.connection().clone();
        let reply = self.reply.clone();
        let mandatory = self.mandatory;
        let destination = request.destination().to_owned();
        let timeout = self.timeout;
        BoxResponseFuture::boxed(BROKER, destination, timeout, async move {
            request.set_reply_to(Some(DIRECT_REPLY_TO.to_owned()));
            let Outgoing {
                exchange: exchange_name,
                routing_key: key,
                properties,
            } = outgoing(&request, connection.config(), Operation::Request)?;
            let exchange = exchange_name.as_str().to_owned();
            let routing_key = key.as_str().to_owned();
            let fail = |e: lapin::Error| {
                connection.nudge();
                amqp_error(Operation::Request, &exchange, e)
            };
            live.check_exchange(&exchange).await?;
            let lost = |why: &'static str| {
                Error::transient(BROKER, Operation::Request)
                    .with_code(Code::ConnectionLost)
                    .with_destination(exchange.clone())
                    .with_reason(why)
            };
            let usable = |open: &ReplyChannel| {
                open.generation == live.generation
                    && open.channel.channel().status().connected()
                    && open.waiters.closed().is_none()
            };
            let reply = tokio::select! {
                reply = reply.get(usable, || open_reply_channel(&live, &connection)) => reply.map_err(fail)?,
                _ = connection.lost(live.generation) => {
                    return Err(lost("the connection closed before the request was sent"));
                }
            };
            // Registered before publishing, so a fast reply finds its request.
            let pending = reply.waiters.register().map_err(lost)?;
            let properties = properties.with_correlation_id(pending.id().into());
            let in_flight = reply
                .channel
                .send(
                    exchange_name,
                    key,
                    mandatory,
                    request.payload().clone(),
                    properties,
                )
                .await
                .map_err(fail)?;
            in_flight
                .confirmed(
                    connection.lost(live.generation),
                    Operation::Request,
                    &exchange,
                    &routing_key,
                    "request",
                )
                .await
                .inspect_err(|e| {
                    if e.is_transient() {
                        connection.nudge();
                    }
                })?;
            Ok(pending)
        })
    }
}
