//! Request/reply over RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use tokio::sync::oneshot;
use tower::Service;

use super::confirms::ConfirmChannel;
use super::connection::{Connection, Live, Readiness};
use super::error::{amqp_error, BROKER};
use super::mapping::{incoming, outgoing, Outgoing};
use super::publisher::ResponseFuture;
use crate::error::{Error, Operation};
use crate::message::Message;

/// The pseudo-queue RabbitMQ routes direct replies through.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Reply waiters by correlation id; a reply that is not a valid message arrives as the
/// reason why.
type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Result<Message, String>>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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
/// to `amq.rabbitmq.reply-to` and a correlation id (the message's own, or a fresh
/// unique one). The responder publishes its reply to the request's `reply_to` with
/// the same correlation id, e.g. `Message::new(request.reply_to().unwrap(), body)
/// .with_correlation_id(id)` through any publisher; RabbitMQ hands it straight to
/// this requester's channel, with no queue involved.
///
/// Errors: no reply within the timeout ([`Config::request_timeout`](super::Config::request_timeout),
/// or [`Requester::with_timeout`]) is a transient [`Operation::Request`] error, as is a
/// connection lost before the reply came; an unroutable request (no responder's queue)
/// is permanent (unless [`Requester::with_mandatory`] turns that off). `poll_ready` is
/// `Pending` while reconnecting or blocked.
///
/// Clones share the reply channel; the requester is `Send + Sync + Clone`: keep one in
/// axum state or a `BoxCloneSyncService`.
pub struct Requester {
    readiness: Readiness,
    reply: Arc<tokio::sync::Mutex<Option<Arc<ReplyChannel>>>>,
    timeout: Duration,
    mandatory: bool,
}

impl Requester {
    pub(crate) fn new(connection: Connection) -> Self {
        let timeout = connection.config().request_timeout;
        Requester {
            readiness: Readiness::new(connection),
            reply: Arc::default(),
            timeout,
            mandatory: true,
        }
    }

    /// Waits at most `timeout` for each reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether requests are published `mandatory` (the default): a request no queue is
    /// bound for then fails at once with a permanent error. Without it, such a request
    /// is dropped by the broker and fails with the (transient) timeout.
    pub fn with_mandatory(mut self, mandatory: bool) -> Self {
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

/// A correlation id unique across processes: a random per-process prefix and a counter.
fn correlation_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    format!("{prefix:016x}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

async fn reply_channel(
    slot: &tokio::sync::Mutex<Option<Arc<ReplyChannel>>>,
    live: &Live,
    config: &super::Config,
) -> Result<Arc<ReplyChannel>, lapin::Error> {
    let mut slot = slot.lock().await;
    if let Some(reply) = slot.as_ref() {
        if reply.generation == live.generation && reply.channel.channel().status().connected() {
            return Ok(reply.clone());
        }
    }
    let channel = live.connection.create_channel().await?;
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await?;
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            options,
            FieldTable::default(),
        )
        .await?;
    let waiters: Waiters = Arc::default();
    let dispatch = waiters.clone();
    let config = config.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let Some(id) = delivery.properties.correlation_id().as_ref() else {
                continue;
            };
            let waiter = lock(&dispatch).remove(id.as_str());
            if let Some(waiter) = waiter {
                let message = incoming(
                    delivery.exchange.as_str(),
                    delivery.routing_key.as_str(),
                    &delivery.properties,
                    delivery.data.into(),
                    &config,
                );
                let _ = waiter.send(message);
            }
        }
        // The channel is gone: fail everyone still waiting.
        lock(&dispatch).clear();
    });
    let reply = Arc::new(ReplyChannel {
        generation: live.generation,
        channel: ConfirmChannel::new(channel),
        waiters,
    });
    *slot = Some(reply.clone());
    Ok(reply)
}

/// Removes a waiter when the request ends, whatever the outcome.
struct WaiterGuard {
    waiters: Waiters,
    id: String,
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        lock(&self.waiters).remove(&self.id);
    }
}

impl Service<Message> for Requester {
    type Response = Message;
    type Error = Error;
    type Future = ResponseFuture<Message>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness.poll_ready(cx, Operation::Request)
    }

    fn call(&mut self, mut request: Message) -> Self::Future {
        let live = self.readiness.take();
        let connection = self.connection().clone();
        let slot = self.reply.clone();
        let timeout = self.timeout;
        let mandatory = self.mandatory;
        Box::pin(async move {
            let config = connection.config();
            let id = match request.correlation_id() {
                Some(id) => id.to_owned(),
                None => correlation_id(),
            };
            request.set_correlation_id(Some(id.clone()));
            request.set_reply_to(Some(DIRECT_REPLY_TO.to_owned()));
            let Outgoing {
                exchange: exchange_name,
                routing_key: key,
                properties: props,
            } = outgoing(&request, config, Operation::Request)?;
            let exchange = exchange_name.as_str().to_owned();
            let routing_key = key.as_str().to_owned();
            let fail = |e: lapin::Error| {
                connection.nudge();
                amqp_error(Operation::Request, &exchange, e)
            };
            live.check_exchange(&exchange).await?;

            let lost = || {
                Error::transient(BROKER, Operation::Request)
                    .with_destination(exchange.clone())
                    .with_reason("the connection closed before the reply arrived")
            };
            let reply = tokio::select! {
                reply = reply_channel(&slot, &live, config) => reply.map_err(fail)?,
                _ = connection.lost(live.generation) => return Err(lost()),
            };
            let (tx, rx) = oneshot::channel();
            lock(&reply.waiters).insert(id.clone(), tx);
            let _guard = WaiterGuard {
                waiters: reply.waiters.clone(),
                id: id.clone(),
            };
            let in_flight = reply
                .channel
                .send(
                    exchange_name,
                    key,
                    mandatory,
                    request.payload().clone(),
                    props,
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
            let waited = tokio::select! {
                biased;
                waited = tokio::time::timeout(timeout, rx) => waited,
                _ = connection.lost(live.generation) => return Err(lost()),
            };
            match waited {
                Ok(Ok(Ok(reply))) => Ok(reply),
                Ok(Ok(Err(why))) => Err(Error::permanent(BROKER, Operation::Request)
                    .with_destination(exchange)
                    .with_reason(format!("the reply is not a valid message: {why}"))),
                Ok(Err(_)) => {
                    connection.nudge();
                    Err(lost())
                }
                Err(_) => Err(Error::transient(BROKER, Operation::Request)
                    .with_destination(exchange)
                    .with_reason(format!("no reply within {timeout:?} (correlation id {id})"))),
            }
        })
    }
}
