//! Consuming a queue with manual acknowledgements, re-subscribing after reconnects.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use tokio::sync::{oneshot, watch};

use super::confirms::{Outcome, Unconfirmed};
use super::connection::Connection;
use super::error::{amqp_error, short_string, BROKER};
use super::mapping::{incoming, DELIVERIES_HEADER};
use crate::connect_retry::Delays;
use crate::dead_letter;
use crate::delivery::{Acker, Acknowledge, Delivery};
use crate::error::{Error, ErrorKind, Operation};

/// A queue's deliveries as a `Stream<Item = Result<Delivery, tower_mq::Error>>`.
///
/// - **Prefetch.** The consumer has a channel of its own with `basic.qos` set to
///   [`Config::prefetch`](super::Config::prefetch): the broker sends at most that many
///   unacknowledged deliveries ahead.
/// - **Settling.** Each [`Delivery`] is settled through its acker: `ack` is
///   `basic.ack`; `nack` requeues the message, by default as a confirmed copy at the
///   back of the queue that carries its delivery count, then acks the original (see
///   [`Config::requeue_by_republish`](super::Config::requeue_by_republish); otherwise
///   `basic.nack` with requeue). With a delay, the broker holds the message for the
///   delay: a confirmed copy goes to a delay queue whose TTL is the delay and which
///   dead-letters back to the queue (see [delayed nacks](#delayed-nacks)), then the
///   original is acknowledged, so the `nack` future returns once the broker has the
///   message, its prefetch slot is free at once, and nothing waits in this process.
///   `reject` dead-letters the message through the queue's dead-letter
///   exchange: for a queue declared through the connection's topology with one, as a
///   confirmed copy carrying the shared [dead-letter headers](crate::dead_letter)
///   (reason, original destination: the queue, deliveries and time, as text) (see
///   [`Config::reject_with_reason`](super::Config::reject_with_reason)); RabbitMQ's own
///   `x-death` is left as RabbitMQ writes it;
///   otherwise with `basic.reject` without requeue, RabbitMQ recording only `rejected`
///   (`x-first-death-reason`), and dropping the message if the queue has no
///   dead-letter exchange.
/// - **Delivery count.** Requeues by republishing count nacks exactly on every queue
///   type (header `x-tower-mq-deliveries`, hidden from the message's headers). Quorum
///   queues count deliveries themselves (`x-delivery-count`), so the count is exact
///   there, crashes included. On classic queues a redelivery after a crash or a lost
///   connection is only flagged, so it adds 1 however often it happens: a lower
///   bound. Counts are read only where the broker or this consumer wrote them:
///   `x-tower-mq-deliveries` as the integer a requeue writes, on a message that came
///   back the way requeues send it (the default exchange, routing key = the queue),
///   and `x-delivery-count` only on a delivery the broker flags as redelivered. A
///   count another publisher put in a message is ignored unless it looks exactly like
///   one of these (an integer sent straight to the queue; an `x-delivery-count` on a
///   classic queue's redelivery, which the broker does not overwrite). Even then it
///   cannot dead-letter the message before a handler saw it: `serve` checks the count
///   only after a handler failed, so a forged count can only cut that message's
///   retries short.
/// - **Closing.** Dropping the consumer cancels its subscription (`basic.cancel`) and
///   hands back the deliveries the broker had sent ahead (prefetch) and the stream
///   never yielded, so another consumer gets them at once: with
///   [`Config::requeue_by_republish`](super::Config::requeue_by_republish) as a
///   confirmed copy that keeps their delivery count (this delivery did not reach a
///   handler, so it does not count; the copy goes to the back of the queue), otherwise
///   with `basic.nack` and requeue (which quorum queues count as a delivery). Then the
///   channel closes, which returns to the queue whatever was not settled by then.
///   [`Consumer::close`] does the same and waits for it; [`Consumer::released`]
///   waits for it after [`serve`](crate::serve()) dropped the consumer.
/// - **Foreign messages.** Every property and typed header arrives as sent (see the
///   [module docs](super#the-wire)). A delivery the model cannot hold (a `timestamp`
///   past what the system clock holds) is rejected like [`Delivery::reject`] would,
///   so it reaches the queue's dead-letter exchange, and yields a *transient*
///   [`Operation::Receive`] error naming the reason; the stream goes on.
/// - **Reconnects.** When the connection is lost the stream waits (no item) and
///   subscribes again once the connection is back; unacknowledged deliveries are
///   redelivered by the broker, and acking a delivery from the lost channel fails with
///   a transient error. A permanent failure to subscribe (the queue was deleted,
///   access refused) is yielded as an error and ends the stream.
///
/// # Delayed nacks
///
/// `nack(Some(delay))` republishes the delivery (with its delivery count) to the
/// durable classic queue `tower-mq.delay.<ms>ms.<queue>` through the default exchange,
/// and acknowledges the original once the broker confirmed the copy. That queue is
/// declared on first use with `x-message-ttl` = the delay, `x-dead-letter-exchange`
/// = `""` and `x-dead-letter-routing-key` = the queue, so RabbitMQ moves the message
/// back to the end of the queue when the delay has passed, and with `x-expires`
/// (the delay plus at least a minute, renewed while it is used) so it goes away once
/// unused. One delay queue per delay keeps every message in it expiring in order.
/// Delays are whole milliseconds, rounded up to two significant digits (1234 ms
/// waits 1300 ms) so that jittered delays share a few delay queues, at most
/// 2.1 × 10<sup>9</sup> ms (about 24 days); a longer delay is a permanent error and
/// the delivery stays unsettled. Like any dead-lettering, the move back adds an `x-death` entry
/// (reason `expired`) and drops the message's own `expiration`; a message whose own
/// TTL is shorter than the delay comes back when that TTL ends.
pub struct Consumer {
    inner: Pin<Box<dyn Stream<Item = Result<Delivery, Error>> + Send>>,
    queue: String,
    /// The outcome of handing back what the broker sent ahead, once the stream is gone.
    closed: Option<oneshot::Receiver<Result<(), Error>>>,
    /// True once that hand-back is over (or the sender is gone: nothing to hand back).
    released: watch::Receiver<bool>,
    _consuming: super::connection::Consuming,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue)
            .finish()
    }
}

impl Consumer {
    /// Connects with `config` and consumes `queue` on a connection of its own.
    pub async fn connect(
        config: &super::Config,
        queue: impl Into<String>,
    ) -> Result<Consumer, Error> {
        super::Connection::connect(config)
            .await?
            .consumer(queue)
            .await
    }

    pub(crate) async fn subscribe(
        connection: Connection,
        queue: String,
    ) -> Result<Consumer, Error> {
        let live = connection
            .wait_connected()
            .await
            .ok_or_else(|| super::error::closed(Operation::Subscribe, &queue))?;
        let subscription =
            subscribe(&connection, &live.connection, live.generation, &queue).await?;
        let consuming = connection.consuming(&queue);
        let (closed_tx, closed) = oneshot::channel();
        let (released_tx, released) = watch::channel(false);
        let state = State {
            released: released_tx,
            delays: connection.config().reconnect_backoff.delays(),
            connection,
            queue: queue.clone(),
            closed: Some(closed_tx),
            current: Some((subscription, live.generation)),
            lost: None,
            done: false,
            backoff: None,
        };
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        });
        Ok(Consumer {
            inner: Box::pin(inner),
            queue,
            closed: Some(closed),
            released,
            _consuming: consuming,
        })
    }

    /// Completes once this consumer is gone (closed, or dropped: by
    /// [`serve`](crate::serve()) when it returns, say) and the deliveries the broker had
    /// sent ahead are back in the queue. Take it before handing the consumer over:
    ///
    /// ```no_run
    /// # async fn run(consumer: tower_mq::rabbitmq::Consumer) -> Result<(), tower_mq::BoxError> {
    /// let handler = tower::service_fn(|_: tower_mq::Delivery| async { Ok::<_, tower_mq::BoxError>(()) });
    /// let released = consumer.released();
    /// tower_mq::serve(consumer, handler).await?;
    /// released.await; // safe to exit: nothing fetched is left unsettled here
    /// # Ok(())
    /// # }
    /// ```
    pub fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::serve::released(&self.released)
    }

    /// The queue consumed.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops consuming and hands the deliveries the broker sent ahead, and this
    /// stream never yielded, back to the queue (see [`Consumer`], closing), then
    /// closes the channel. Deliveries already yielded and not settled by then go back
    /// to the queue when the channel closes.
    pub async fn close(mut self) -> Result<(), Error> {
        // Dropping the stream starts the hand-back (see `State`'s `Drop`).
        self.inner = Box::pin(futures_util::stream::empty());
        match self.closed.take() {
            Some(closed) => closed.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct Subscription {
    // Dropping the channel closes it and cancels the consumer.
    channel: lapin::Channel,
    consumer: lapin::Consumer,
    connection: Connection,
    generation: u64,
}

/// How long closing waits for the broker to end a cancelled subscription.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

impl Subscription {
    /// Cancels the subscription, hands back what the broker sent ahead, and closes the
    /// channel (by dropping it).
    async fn release(mut self, queue: &str) -> Result<(), Error> {
        let connection = self.connection.clone();
        let generation = self.generation;
        tokio::select! {
            result = self.hand_back_all(queue) => result,
            // The channel went with its connection: the broker requeued everything.
            () = connection.lost(generation) => Ok(()),
        }
    }

    async fn hand_back_all(&mut self, queue: &str) -> Result<(), Error> {
        let tag = self.consumer.tag();
        self.channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
            .map_err(|e| amqp_error(Operation::Close, queue, e))?;
        let mut first_error = None;
        // After cancel-ok no delivery follows; lapin ends the stream.
        while let Ok(Some(next)) = tokio::time::timeout(CANCEL_WAIT, self.consumer.next()).await {
            let Ok(delivery) = next else { break };
            if let Err(error) = hand_back(delivery, &self.connection, queue).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Returns a delivery no handler saw to the queue, without counting it where the
/// configuration allows (see [`Consumer`], closing).
async fn hand_back(
    delivery: lapin::message::Delivery,
    connection: &Connection,
    queue: &str,
) -> Result<(), Error> {
    if !connection.config().requeue_by_republish {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        return settled(
            Operation::Close,
            queue.to_owned(),
            delivery.acker.nack(options).await,
        );
    }
    let copy = Copy {
        connection: connection.clone(),
        count: delivery_count(&delivery, queue).saturating_sub(1),
        properties: delivery.properties,
        routing_key: delivery.routing_key.as_str().to_owned(),
        payload: bytes::Bytes::from(delivery.data),
    };
    copy.requeue(&delivery.acker, queue).await
}

async fn subscribe(
    connection: &Connection,
    amqp: &lapin::Connection,
    generation: u64,
    queue: &str,
) -> Result<Subscription, Error> {
    let name = short_string(queue, Operation::Subscribe, queue)?;
    let err = |e| amqp_error(Operation::Subscribe, queue, e);
    let channel = amqp.create_channel().await.map_err(err)?;
    channel
        .basic_qos(connection.config().prefetch, BasicQosOptions::default())
        .await
        .map_err(err)?;
    let consumer = channel
        .basic_consume(
            name,
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err)?;
    Ok(Subscription {
        channel,
        consumer,
        connection: connection.clone(),
        generation,
    })
}

struct State {
    connection: Connection,
    queue: String,
    /// Told the outcome of handing back what the broker sent ahead.
    closed: Option<oneshot::Sender<Result<(), Error>>>,
    /// Set once that hand-back is over.
    released: watch::Sender<bool>,
    current: Option<(Subscription, u64)>,
    /// The generation whose subscription was lost.
    lost: Option<u64>,
    done: bool,
    backoff: Option<Duration>,
    /// Jittered, so that consumers that lost one connection do not resubscribe together.
    delays: Delays,
}

impl Drop for State {
    fn drop(&mut self) {
        let Some((subscription, _)) = self.current.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropping the channel closes it, which returns the deliveries.
            return;
        };
        let queue = self.queue.clone();
        let closed = self.closed.take();
        let released = self.released.clone();
        runtime.spawn(async move {
            let result = subscription.release(&queue).await;
            released.send_replace(true);
            if let Err(error) = &result {
                tracing::warn!(%queue, %error, "handing back prefetched deliveries failed; closing the channel returns them");
            }
            if let Some(closed) = closed {
                let _ = closed.send(result);
            }
        });
    }
}

impl State {
    async fn next_item(&mut self) -> Option<Result<Delivery, Error>> {
        loop {
            if self.done {
                return None;
            }
            let Some((subscription, generation)) = self.current.as_mut() else {
                if let Some(delay) = self.backoff {
                    tokio::time::sleep(delay).await;
                }
                let live = self.connection.wait_live(self.lost).await?;
                let attempt = subscribe(
                    &self.connection,
                    &live.connection,
                    live.generation,
                    &self.queue,
                );
                let subscribed = tokio::select! {
                    result = attempt => result,
                    _ = self.connection.lost(live.generation) => Err(Error::transient(BROKER, Operation::Subscribe)
                        .with_destination(self.queue.clone())
                        .with_reason("the connection closed while subscribing")),
                };
                match subscribed {
                    Ok(subscription) => {
                        tracing::info!(queue = %self.queue, generation = live.generation, "rabbitmq consumer subscribed again");
                        self.current = Some((subscription, live.generation));
                        self.backoff = None;
                        self.delays.reset();
                    }
                    Err(error) if error.kind() == ErrorKind::Permanent => {
                        self.done = true;
                        return Some(Err(error));
                    }
                    Err(error) => {
                        tracing::warn!(queue = %self.queue, %error, "rabbitmq consumer could not subscribe; retrying");
                        self.lost = Some(live.generation);
                        self.connection.nudge();
                        self.backoff = Some(self.delays.next_delay());
                    }
                }
                continue;
            };
            let generation = *generation;
            // lapin ends the stream when its channel closes; the generation check makes
            // sure a consumer never outlives its connection whatever lapin does. It
            // comes first so that deliveries still buffered from a lost channel are
            // dropped: they can no longer be acknowledged, and the broker delivers them
            // again.
            let next = tokio::select! {
                biased;
                _ = self.connection.lost(generation) => None,
                next = subscription.consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    return Some(to_delivery(delivery, &self.connection, &self.queue).await);
                }
                Some(Err(error)) => {
                    tracing::warn!(queue = %self.queue, %error, "rabbitmq consumer lost its channel; re-subscribing");
                }
                None => {
                    tracing::warn!(queue = %self.queue, "rabbitmq consumer cancelled; re-subscribing");
                }
            }
            self.current = None;
            self.lost = Some(generation);
            self.connection.nudge();
        }
    }
}

fn as_count(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::ShortShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => u64::try_from(*v).ok(),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        AMQPValue::Timestamp(v) => Some(*v),
        _ => None,
    }
}

fn count_header(properties: &lapin::BasicProperties, name: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    as_count(value).or_else(|| match value {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok()?.parse().ok(),
        _ => None,
    })
}

/// The delivery's count: deliveries before it, plus this one.
///
/// Counted before it: those recorded by requeues-by-republish (read only as the
/// integer a requeue writes, on a message that came back the way requeues and delayed
/// nacks send it: the default exchange, routing key = `queue`), plus the broker's own
/// count (quorum queues; read only on a delivery the broker flags as redelivered, since
/// the broker writes it on redeliveries only) or, failing that, the redelivered flag.
/// Anything else (text, a negative number, one past `u32`, another route) is a count
/// some publisher wrote, and trusting it would cut the message's attempts short.
/// Dead letters leave the header out, so a message moved back from a dead-letter
/// queue starts afresh.
fn delivery_count(delivery: &lapin::message::Delivery, queue: &str) -> u32 {
    let requeued = delivery.exchange.as_str().is_empty() && delivery.routing_key.as_str() == queue;
    let republished = requeued
        .then(|| {
            delivery
                .properties
                .headers()
                .as_ref()?
                .inner()
                .get(DELIVERIES_HEADER)
        })
        .flatten()
        .and_then(|value| match value {
            // A requeue writes a `u32` count.
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok().map(u64::from),
            _ => None,
        })
        .unwrap_or(0);
    let broker = if delivery.redelivered {
        count_header(&delivery.properties, "x-delivery-count").unwrap_or(1)
    } else {
        0
    };
    u32::try_from(republished.saturating_add(broker).saturating_add(1)).unwrap_or(u32::MAX)
}

/// The delivery as a tower-mq [`Delivery`]; one that is not a valid message (a
/// timestamp past what the clock holds, say) is rejected, so it goes to the queue's
/// dead-letter exchange if it has one, and comes out as a transient error that leaves
/// the stream going.
async fn to_delivery(
    delivery: lapin::message::Delivery,
    connection: &Connection,
    queue: &str,
) -> Result<Delivery, Error> {
    let count = delivery_count(&delivery, queue);
    let config = connection.config();
    let payload = bytes::Bytes::from(delivery.data);
    let message = incoming(
        delivery.exchange.as_str(),
        delivery.routing_key.as_str(),
        &delivery.properties,
        payload.clone(),
        config,
    );
    let copy = Arc::new(Copy {
        connection: connection.clone(),
        properties: delivery.properties,
        routing_key: delivery.routing_key.as_str().to_owned(),
        payload,
        count,
    });
    let acker = RabbitAcker {
        acker: delivery.acker,
        queue: queue.to_owned(),
        copy,
    };
    match message {
        Ok(message) => Ok(Delivery::new(message, Acker::new(acker)).with_delivery_count(count)),
        Err(why) => {
            let reason = format!("not a valid message: {why}");
            let settled = acker.reject(&reason).await;
            let mut error = Error::transient(BROKER, Operation::Receive)
                .with_code(tower_mq_core::Code::Malformed)
                .with_destination(queue)
                .with_reason(format!(
                    "a delivery is {reason}; rejected to the queue's dead-letter exchange"
                ));
            if let Err(settling) = settled {
                error = error.with_source(settling);
            }
            Err(error)
        }
    }
}

/// A delivery as it arrived, for settling by publishing a copy (a requeue that counts,
/// a dead letter that carries its reason) and then acknowledging the original.
struct Copy {
    connection: Connection,
    properties: lapin::BasicProperties,
    routing_key: String,
    payload: bytes::Bytes,
    count: u32,
}

impl Copy {
    /// Publishes a copy to `exchange` with `routing_key` and `extra` headers; once the
    /// broker confirms it, acknowledges the original.
    async fn publish_then_ack(
        &self,
        acker: &lapin::Acker,
        queue: &str,
        operation: Operation,
        exchange: &str,
        routing_key: &str,
        extra: &[(&str, AMQPValue)],
    ) -> Result<(), Error> {
        let err = |e| amqp_error(operation, queue, e);
        let live = self
            .connection
            .wait_connected()
            .await
            .ok_or_else(|| super::error::closed(operation, queue))?;
        let mut headers = FieldTable::default();
        if let Some(original) = self.properties.headers() {
            for (k, v) in original.inner() {
                // A dead letter starts afresh: no count of the queue it left.
                let dropped = k.as_str() == "x-delivery-count"
                    || (operation == Operation::Reject && k.as_str() == DELIVERIES_HEADER);
                if !dropped && !extra.iter().any(|(e, _)| *e == k.as_str()) {
                    headers.insert(k.clone(), v.clone());
                }
            }
        }
        for (k, v) in extra {
            headers.insert((*k).into(), v.clone());
        }
        let properties = self.properties.clone().with_headers(headers);
        let channel = live.publish_channel().await.map_err(err)?;
        let exchange_name = short_string(exchange, operation, queue)?;
        let key = short_string(routing_key, operation, queue)?;
        let in_flight = channel
            .send(exchange_name, key, true, self.payload.clone(), properties)
            .await
            .map_err(err)?;
        match in_flight
            .outcome(self.connection.lost(live.generation))
            .await
        {
            Ok(Outcome::Confirmed) => {}
            Ok(_) => {
                return Err(Error::transient(BROKER, operation)
                    .with_destination(queue)
                    .with_reason(format!(
                        "the broker did not take the copy for exchange `{exchange}`"
                    )))
            }
            Err(Unconfirmed::Failed(e)) => return Err(err(e)),
            Err(Unconfirmed::Lost) => {
                return Err(Error::transient(BROKER, operation)
                    .with_destination(queue)
                    .with_reason("the connection closed before the broker confirmed the copy"))
            }
        }
        settled(
            operation,
            queue.to_owned(),
            acker.ack(BasicAckOptions::default()).await,
        )
    }

    /// A copy at the back of `queue` that records its delivery count.
    async fn requeue(&self, acker: &lapin::Acker, queue: &str) -> Result<(), Error> {
        let count = [(DELIVERIES_HEADER, AMQPValue::LongLongInt(self.count.into()))];
        self.publish_then_ack(acker, queue, Operation::Nack, "", queue, &count)
            .await
    }

    /// A copy into the delay queue for `delay`, which moves it back to the end of
    /// `queue` once `delay` has passed (see [delayed nacks](Consumer#delayed-nacks)).
    async fn requeue_after(
        &self,
        acker: &lapin::Acker,
        queue: &str,
        delay: Duration,
    ) -> Result<(), Error> {
        let ms = delay_millis(delay).ok_or_else(|| {
            Error::permanent(BROKER, Operation::Nack)
                .with_destination(queue)
                .with_reason(format!(
                    "a nack delay of {delay:?} is longer than the longest RabbitMQ can hold \
                     a message for ({MAX_DELAY_MS} ms); the delivery is not settled"
                ))
        })?;
        let delay_queue = delay_queue(queue, ms);
        let live = self
            .connection
            .wait_connected()
            .await
            .ok_or_else(|| super::error::closed(Operation::Nack, queue))?;
        live.declare_delay_queue(&delay_queue, Operation::Nack, queue)
            .await?;
        let count = [(DELIVERIES_HEADER, AMQPValue::LongLongInt(self.count.into()))];
        self.publish_then_ack(
            acker,
            queue,
            Operation::Nack,
            "",
            delay_queue.name(),
            &count,
        )
        .await
    }

    /// A copy to the queue's dead-letter exchange that carries `reason`, if the queue
    /// was declared through this connection with one; `None` otherwise.
    async fn dead_letter(
        &self,
        acker: &lapin::Acker,
        queue: &str,
        reason: &str,
    ) -> Option<Result<(), Error>> {
        let (exchange, routing_key) = self.connection.dead_letter_target(queue)?;
        let routing_key = routing_key.unwrap_or_else(|| self.routing_key.clone());
        let reason: String = reason.chars().take(1024).collect();
        let text = |value: &str| AMQPValue::LongString(value.into());
        let extra = [
            (dead_letter::REASON, text(&reason)),
            (dead_letter::ORIGINAL_DESTINATION, text(queue)),
            (dead_letter::DELIVERIES, text(&self.count.to_string())),
            (
                dead_letter::TIME,
                text(&dead_letter::now_millis().to_string()),
            ),
        ];
        Some(
            self.publish_then_ack(
                acker,
                queue,
                Operation::Reject,
                &exchange,
                &routing_key,
                &extra,
            )
            .await,
        )
    }
}

/// The longest nack delay: a delay queue's `x-message-ttl`, and its `x-expires` of up
/// to twice that, stay within what RabbitMQ's timers take (2^32 - 1 ms).
const MAX_DELAY_MS: u32 = i32::MAX as u32;

/// `delay` in whole milliseconds, rounded up to two significant digits (so jittered
/// delays share a few delay queues instead of making one each); `None` past
/// [`MAX_DELAY_MS`].
fn delay_millis(delay: Duration) -> Option<u32> {
    let ms = delay.as_nanos().div_ceil(1_000_000).max(1);
    let mut step = 1;
    while ms / step >= 100 {
        step *= 10;
    }
    let ms = ms.div_ceil(step) * step;
    u32::try_from(ms).ok().filter(|ms| *ms <= MAX_DELAY_MS)
}

/// The delay queue that holds messages nacked from `queue` for `ms` milliseconds.
fn delay_queue(queue: &str, ms: u32) -> super::topology::Queue {
    let mut name = format!("tower-mq.delay.{ms}ms.{queue}");
    if name.len() > 255 {
        // Too long for an AMQP name: keep a readable prefix of the queue's name and make
        // it unique with a hash of the whole name (FNV-1a: stable across builds).
        let hash = queue.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        name = format!("tower-mq.delay.{ms}ms.{hash:016x}.");
        let room = 255 - name.len();
        let mut end = room.min(queue.len());
        while !queue.is_char_boundary(end) {
            end -= 1;
        }
        name.push_str(&queue[..end]);
    }
    let slack = ms.max(60_000);
    super::topology::Queue::classic(name)
        .message_ttl(Duration::from_millis(ms.into()))
        .dead_letter_exchange("")
        .dead_letter_routing_key(queue)
        .expires(Duration::from_millis(u64::from(ms) + u64::from(slack)))
}

/// Settles a RabbitMQ delivery on the channel it arrived on.
struct RabbitAcker {
    acker: lapin::Acker,
    queue: String,
    copy: Arc<Copy>,
}

fn settled(
    operation: Operation,
    queue: String,
    result: Result<bool, lapin::Error>,
) -> Result<(), Error> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::transient(BROKER, operation)
            .with_destination(queue)
            .with_reason(
                "the delivery's channel is closed; the broker will deliver the message again",
            )),
        Err(e) => Err(amqp_error(operation, &queue, e)),
    }
}

/// A settling handle that the returned future owns.
struct Settle {
    acker: lapin::Acker,
    queue: String,
    copy: Arc<Copy>,
    republish: bool,
}

impl Settle {
    async fn requeue(&self) -> Result<(), Error> {
        match self.republish {
            true => self.copy.requeue(&self.acker, &self.queue).await,
            false => {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                settled(
                    Operation::Nack,
                    self.queue.clone(),
                    self.acker.nack(options).await,
                )
            }
        }
    }
}

impl RabbitAcker {
    fn clone_for_settling(&self) -> Settle {
        Settle {
            acker: self.acker.clone(),
            queue: self.queue.clone(),
            copy: self.copy.clone(),
            republish: self.copy.connection.config().requeue_by_republish,
        }
    }
}

impl Acknowledge for RabbitAcker {
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
        let acker = self.acker.clone();
        let queue = self.queue.clone();
        Box::pin(async move {
            settled(
                Operation::Ack,
                queue,
                acker.ack(BasicAckOptions::default()).await,
            )
        })
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.clone_for_settling();
        match delay.filter(|d| !d.is_zero()) {
            None => Box::pin(async move { this.requeue().await }),
            Some(delay) => Box::pin(async move {
                this.copy
                    .requeue_after(&this.acker, &this.queue, delay)
                    .await
            }),
        }
    }

    fn reject(&self, reason: &str) -> BoxFuture<'static, Result<(), Error>> {
        let acker = self.acker.clone();
        let queue = self.queue.clone();
        let copy = Some(self.copy.clone()).filter(|c| c.connection.config().reject_with_reason);
        let reason = reason.to_owned();
        Box::pin(async move {
            if let Some(copy) = copy {
                if let Some(result) = copy.dead_letter(&acker, &queue, &reason).await {
                    return result;
                }
            }
            settled(
                Operation::Reject,
                queue,
                acker.reject(BasicRejectOptions { requeue: false }).await,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_whole_milliseconds_within_what_rabbitmq_holds() {
        assert_eq!(delay_millis(Duration::from_micros(1)), Some(1));
        assert_eq!(delay_millis(Duration::from_micros(1500)), Some(2));
        assert_eq!(delay_millis(Duration::from_secs(2)), Some(2000));
        assert_eq!(delay_millis(Duration::from_millis(99)), Some(99));
        assert_eq!(delay_millis(Duration::from_millis(101)), Some(110));
        assert_eq!(delay_millis(Duration::from_millis(1234)), Some(1300));
        assert_eq!(delay_millis(Duration::from_millis(9_999)), Some(10_000));
        let longest = Duration::from_millis(2_100_000_000);
        assert_eq!(delay_millis(longest), Some(2_100_000_000));
        assert_eq!(delay_millis(Duration::from_millis(2_147_000_000)), None);
        assert_eq!(delay_millis(Duration::MAX), None);
    }

    #[test]
    fn delay_queue_names_fit_an_amqp_short_string_and_stay_distinct() {
        let q = delay_queue("orders", 1500);
        assert_eq!(q.name(), "tower-mq.delay.1500ms.orders");
        assert_eq!(
            q.get_argument("x-dead-letter-routing-key"),
            Some(&"orders".into())
        );
        assert_eq!(q.get_argument("x-message-ttl"), Some(&1500i64.into()));
        assert_eq!(q.get_argument("x-expires"), Some(&61_500i64.into()));
        let longest = delay_queue("q", 2_100_000_000);
        assert_eq!(
            longest.get_argument("x-expires"),
            Some(&4_200_000_000i64.into())
        );
        // Multi-byte characters at the cut, and two long names sharing a prefix.
        let a = "é".repeat(200) + "a";
        let b = "é".repeat(200) + "b";
        let (qa, qb) = (delay_queue(&a, MAX_DELAY_MS), delay_queue(&b, MAX_DELAY_MS));
        assert!(qa.name().len() <= 255 && qb.name().len() <= 255);
        assert_ne!(qa.name(), qb.name());
    }
}
