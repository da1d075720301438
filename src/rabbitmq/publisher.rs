//! Publishing with publisher confirms, one message or a batch at a time.

use std::fmt;
use std::future::{ready, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use super::config::Config;
use super::confirms::{ConfirmChannel, InFlight};
use super::connection::{Connection, Live, Readiness};
use super::error::amqp_error;
use super::mapping::{outgoing, Outgoing};
use crate::error::{Error, Operation};
use crate::message::Message;
use crate::receipt::{Guarantee, Receipt};

/// The future a publisher's `call` returns.
pub type ResponseFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// Publishes messages and resolves each with the broker's publisher confirm.
///
/// A `Service<Message, Response = Receipt, Error = tower_mq::Error>`:
///
/// - **Confirms.** Every pooled channel is in confirm mode; the stored [`Receipt`]
///   (with its routing key) comes from the broker's `basic.ack`. A `basic.nack` (the broker could not take
///   the message, e.g. a full queue with `reject-publish`) is a transient error.
/// - **Mandatory.** Messages are published `mandatory` unless
///   [`Config::mandatory`] says otherwise; a message no queue is bound for comes back
///   from the broker and its publish fails with a permanent error (NO_ROUTE), never a
///   receipt. That holds on a channel shared by concurrent publishes too, where the
///   broker acknowledges several messages at once and lapin may hand a return to a
///   neighbour's confirm: each return is matched to its own message, so a mandatory
///   message's receipt also waits for the confirms of the publishes sent on the
///   channel around it (about one more confirm round trip under load). Replies to a direct reply-to address
///   (`amq.rabbitmq.reply-to.*`) are the exception: RabbitMQ counts them as unrouted,
///   so they are never sent mandatory.
/// - **Readiness.** `poll_ready` is `Pending` while the connection is being
///   re-established or the broker has blocked it (`connection.blocked`), so tower's
///   `Buffer`, `ConcurrencyLimit` and `LoadShed` see the broker's pressure. RabbitMQ
///   blocks a connection when it publishes during a memory or disk alarm: that first
///   message is held by the broker (confirmed once the alarm clears), and readiness is
///   `Pending` from the `connection.blocked` notification until `connection.unblocked`.
/// - **Lost connections.** A message whose confirm had not arrived when the
///   connection dropped fails with a *transient* error: it may or may not have been
///   stored, and a retry layer sends it again (at-least-once).
/// - **Errors** name the broker `rabbitmq`, the operation and the exchange; NOT_FOUND,
///   ACCESS_REFUSED and PRECONDITION_FAILED are permanent, a lost connection or
///   channel transient. Each exchange is checked once per connection (a passive
///   declare) before the first publish to it, so a missing exchange fails only that
///   message. An exchange deleted after that check makes the broker close the pooled
///   channel, which fails every message still unconfirmed on it with the same
///   NOT_FOUND; the channel is re-opened on next use.
///
/// The message maps to AMQP as the [module docs](super#the-wire) describe: destination
/// and key to exchange and routing key per [`Routing`](super::Routing), every property
/// to its AMQP property, headers to the `headers` field table with their types. What
/// AMQP cannot carry fails the publish with a permanent error naming it (see
/// [`Config::ignore_unsupported`]).
///
/// Cloning is cheap and shares the connection; a clone starts unreserved. The
/// publisher is `Send + Sync + Clone`: keep one in axum state or a `BoxCloneSyncService`.
pub struct Publisher {
    readiness: Readiness,
}

impl Publisher {
    /// Connects with `config` and returns a publisher on a connection of its own.
    pub async fn connect(config: &Config) -> Result<Publisher, Error> {
        Ok(Connection::connect(config).await?.publisher())
    }

    pub(crate) fn new(connection: Connection) -> Self {
        Publisher {
            readiness: Readiness::new(connection),
        }
    }

    /// The connection this publisher publishes on.
    pub fn connection(&self) -> &Connection {
        self.readiness.connection()
    }

    /// A publisher of batches over the same connection: see [`BatchPublisher`].
    pub fn batch(&self) -> BatchPublisher {
        BatchPublisher {
            readiness: Readiness::new(self.connection().clone()),
        }
    }
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher {
            readiness: self.readiness.clone(),
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connection", self.connection())
            .finish()
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture<Receipt>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx, Operation::Publish)
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, message: Message) -> Self::Future {
        let live = match self.readiness.take(Operation::Publish) {
            Ok(live) => live,
            Err(error) => {
                return Box::pin(ready(Err(error.with_destination(message.destination()))))
            }
        };
        let connection = self.connection().clone();
        Box::pin(async move {
            let config = connection.config();
            let result = match send(&live, config, &message, None).await {
                Ok(pending) => pending.confirmed(&connection, live.generation).await,
                Err(error) => Err(error),
            };
            if result.as_ref().is_err_and(Error::is_transient) {
                connection.nudge();
            }
            result
        })
    }
}

/// Publishes a batch of messages and waits for all their confirms at once
/// (RabbitMQ's batched publisher confirms).
///
/// A `Service<Vec<Message>, Response = Vec<Result<Receipt, Error>>>`, the shape the
/// batch layer feeds: every message is sent before any confirm is awaited, and each
/// message gets its own result, in order. The call itself only fails if the
/// connection was closed for good. Readiness is the same as [`Publisher`]'s.
pub struct BatchPublisher {
    readiness: Readiness,
}

impl BatchPublisher {
    /// The connection this publisher publishes on.
    pub fn connection(&self) -> &Connection {
        self.readiness.connection()
    }
}

impl Clone for BatchPublisher {
    fn clone(&self) -> Self {
        BatchPublisher {
            readiness: self.readiness.clone(),
        }
    }
}

impl fmt::Debug for BatchPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchPublisher")
            .field("connection", self.connection())
            .finish()
    }
}

impl Service<Vec<Message>> for BatchPublisher {
    type Response = Vec<Result<Receipt, Error>>;
    type Error = Error;
    type Future = ResponseFuture<Vec<Result<Receipt, Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx, Operation::Publish)
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, messages: Vec<Message>) -> Self::Future {
        let live = match self.readiness.take(Operation::Publish) {
            Ok(live) => live,
            Err(error) => return Box::pin(ready(Err(error))),
        };
        let connection = self.connection().clone();
        Box::pin(async move {
            let config = connection.config();
            // One channel for the whole batch keeps its confirms together.
            let channel = live.publish_channel().await;
            let mut pending = Vec::with_capacity(messages.len());
            for message in &messages {
                let sent = match &channel {
                    Ok(channel) => send(&live, config, message, Some(channel.clone())).await,
                    Err(e) => Err(amqp_error(
                        Operation::Publish,
                        message.destination(),
                        e.clone(),
                    )),
                };
                pending.push(sent);
            }
            let generation = live.generation;
            let connection_ref = &connection;
            let results =
                futures_util::future::join_all(pending.into_iter().map(|sent| async move {
                    match sent {
                        Ok(pending) => pending.confirmed(connection_ref, generation).await,
                        Err(error) => Err(error),
                    }
                }))
                .await;
            if results
                .iter()
                .any(|r| r.as_ref().is_err_and(Error::is_transient))
            {
                connection.nudge();
            }
            Ok(results)
        })
    }
}

/// A message handed to the broker, waiting for its confirm.
struct Pending {
    in_flight: InFlight,
    exchange: String,
    routing_key: String,
}

/// Sends `message` on `channel` (or a pooled one) without waiting for its confirm.
async fn send(
    live: &Arc<Live>,
    config: &Config,
    message: &Message,
    channel: Option<ConfirmChannel>,
) -> Result<Pending, Error> {
    let Outgoing {
        exchange: exchange_name,
        routing_key: key,
        properties,
    } = outgoing(message, config, Operation::Publish)?;
    let destination = exchange_name.as_str().to_owned();
    let routing_key = key.as_str().to_owned();
    live.check_exchange(&destination).await?;
    let channel = match channel {
        Some(channel) => channel,
        None => live
            .publish_channel()
            .await
            .map_err(|e| amqp_error(Operation::Publish, &destination, e))?,
    };
    // RabbitMQ counts a direct reply (to `amq.rabbitmq.reply-to.*`) as unrouted, so a
    // mandatory reply would always come back: replies are never mandatory.
    let reply = routing_key.starts_with(super::request::DIRECT_REPLY_TO) && destination.is_empty();
    let in_flight = channel
        .send(
            exchange_name,
            key,
            config.mandatory && !reply,
            message.payload().clone(),
            properties,
        )
        .await
        .map_err(|e| amqp_error(Operation::Publish, &destination, e))?;
    Ok(Pending {
        in_flight,
        exchange: destination,
        routing_key,
    })
}

impl Pending {
    /// The receipt once the broker confirms, or a transient error if the connection
    /// (`generation`) goes away first.
    async fn confirmed(self, connection: &Connection, generation: u64) -> Result<Receipt, Error> {
        let Pending {
            in_flight,
            exchange,
            routing_key,
        } = self;
        in_flight
            .confirmed(
                connection.lost(generation),
                Operation::Publish,
                &exchange,
                &routing_key,
                "message",
            )
            .await?;
        Ok(Receipt::new(super::BROKER, exchange, Guarantee::Stored).with_routing_key(routing_key))
    }
}
