//! The JetStream consumer: deliveries from a durable pull consumer, settled with
//! explicit acks. See the [JetStream module docs](super).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{pull, PullConsumer};
use async_nats::jetstream::AckKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_core::future::BoxFuture;
use futures_core::Stream;
use tower_mq_core::{dead_letter, Acker, Acknowledge, Delivery, Error, ErrorKind, Operation};

use crate::nats::config::ConsumerConfig;
use crate::nats::headers::{self, Flavour};
use crate::nats::{error, Connection, Link, BROKER};
use crate::wire::PropertyHeaders;

use super::publisher::publish_raw;
use super::{consumer_error, JetStream};

impl JetStream {
    /// Deliveries from the durable consumer `config.durable()` on `stream` (declared
    /// before with [`declare_consumer`](Self::declare_consumer)); the dead-letter
    /// subject and batch size come from `config`, the delivery limit from the server.
    ///
    /// The consumer has a NATS connection of its own (made with this connection's
    /// [`Config`](crate::nats::Config)): a delivery async-nats cannot parse (a header block
    /// that is not UTF-8, say) drops the connection it arrives on, and only the
    /// consumer's then. See [the module docs](super#poison-messages).
    pub async fn consumer(&self, stream: &str, config: &ConsumerConfig) -> Result<Consumer, Error> {
        let own = Connection::connect(self.connection.config()).await?;
        let consumer: PullConsumer = JetStream::new(&own)
            .context
            .get_consumer_from_stream(config.durable.clone(), stream)
            .await
            .map_err(|err| consumer_error(err, Operation::Subscribe, stream))?;
        let max_deliver = u32::try_from(consumer.cached_info().config.max_deliver)
            .ok()
            .filter(|n| *n > 0);
        let first = open_pull(consumer.clone(), config.batch, stream.to_owned(), None).await?;
        Ok(Consumer {
            connects: own.connects(),
            link: own.link_changes(),
            connection: own,
            consumer,
            batch: config.batch,
            cautious: 0,
            state: State::Pulling {
                batch: Box::new(first),
                deadline: Box::pin(tokio::time::sleep(PULL_EXPIRES + PULL_GRACE)),
            },
            settle: Arc::new(ConsumerShared {
                context: self.context.clone(),
                stream: stream.to_owned(),
                consumer: config.durable.clone(),
                dead_letter_subject: config.dead_letter_subject.clone(),
                max_deliver,
            }),
        })
    }
}

/// Deliveries from a durable pull consumer: a `Stream` of [`Delivery`]s settled with
/// explicit acks. See the [module docs](super).
///
/// Messages come from one pull request at a time for up to the configured batch; a
/// pull request expires after 2 s, and one lost with a connection or a server restart
/// is replaced at once after a reconnect, or 1 s after its expiry at the latest.
/// After its connection was lost, the consumer pulls the next `batch` messages one at
/// a time, so that a message that drops the connection (see
/// [poison messages](super#poison-messages)) takes no other message down with it.
/// Errors in the stream (a pull request the server could not take while restarting,
/// say) are transient, and the stream goes on after them; a consumer that no longer
/// exists ends it with a permanent error.
pub struct Consumer {
    connection: Connection,
    link: tokio_stream::wrappers::WatchStream<Link>,
    /// The connection count the current pull stream was opened under.
    connects: u64,
    consumer: PullConsumer,
    batch: usize,
    /// How many more messages to pull one at a time after a connection loss.
    cautious: usize,
    state: State,
    settle: Arc<ConsumerShared>,
}

enum State {
    /// A pull request is open: its messages, and when to stop waiting for them.
    Pulling {
        batch: Box<pull::Batch>,
        deadline: Pin<Box<tokio::time::Sleep>>,
    },
    /// Sending the next pull request.
    Opening(BoxFuture<'static, Result<pull::Batch, Error>>),
    /// The consumer is gone.
    Done,
}

/// How long one pull request stays open on the server. A pull request lost with a
/// connection or a server restart is replaced once it would have expired (plus
/// [`PULL_GRACE`]), so keep it short; an idle consumer sends one request per period.
/// (nats-server 2.9 can mishandle a redelivery that falls due at the instant the only
/// waiting pull request expires: the message comes again as a first delivery. An ack
/// wait equal to this period, with a pull request opened right after a delivery,
/// lines the two up.)
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// How long after its expiry a pull request's end (the server's 408) may take.
const PULL_GRACE: Duration = Duration::from_secs(1);
/// The pause before pulling again after a failed pull request.
const RETRY_DELAY: Duration = Duration::from_millis(250);

/// Sends a pull request for up to `batch` messages; after a failure (`delay` set),
/// first waits and checks the consumer still exists.
fn open_pull(
    mut consumer: PullConsumer,
    batch: usize,
    stream: String,
    delay: Option<Duration>,
) -> BoxFuture<'static, Result<pull::Batch, Error>> {
    Box::pin(async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
            if let Err(err) = consumer.info().await {
                use async_nats::jetstream::context::ConsumerInfoErrorKind as Kind;
                let kind = match err.kind() {
                    Kind::NotFound | Kind::StreamNotFound => ErrorKind::Permanent,
                    _ => ErrorKind::Transient,
                };
                return Err(error(kind, Operation::Receive, &stream)
                    .with_reason("checking the consumer failed")
                    .with_source(err));
            }
        }
        consumer
            .batch()
            .max_messages(batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|err| {
                error(ErrorKind::Transient, Operation::Receive, &stream)
                    .with_reason("sending a pull request failed")
                    .with_source(err)
            })
    })
}

impl Consumer {
    fn pull(&mut self, delay: Option<Duration>) {
        let batch = if self.cautious > 0 { 1 } else { self.batch };
        self.state = State::Opening(open_pull(
            self.consumer.clone(),
            batch,
            self.settle.stream.clone(),
            delay,
        ));
    }
}

impl Consumer {
    /// Stops consuming, and hands the messages the open pull request brought but this
    /// stream did not yield back to the server (a nak without delay), so they are
    /// delivered again at once, here or to another member of the group, instead of
    /// after the ack wait. Resolves once the server has the naks.
    ///
    /// A nak is only sent once the pull request ended (at once when the batch was
    /// complete, after at most the pull request's 2 s expiry otherwise): a message
    /// naked while it is open would come straight back to it. JetStream counts every
    /// delivery it sends, so a released message comes back with its delivery count one
    /// higher, and `max_deliver` must allow for that. Deliveries already yielded are
    /// their holder's to settle.
    ///
    /// Dropping the consumer does the same in a task of its own (if a tokio runtime is
    /// there to run it); `close` lets a process that is about to exit wait for it.
    pub async fn close(mut self) -> Result<(), Error> {
        match self.release() {
            Some(release) => release.await,
            None => Ok(()),
        }
    }

    /// Ends the stream and returns what releases its pull request's messages.
    fn release(&mut self) -> Option<BoxFuture<'static, Result<(), Error>>> {
        let client = self.connection.client().clone();
        let settle = self.settle.clone();
        let timeout = self.connection.config().request_timeout;
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => None,
            State::Pulling { batch, deadline } => {
                let until = deadline.deadline();
                Some(Box::pin(release(*batch, until, client, settle)))
            }
            // Abandoned, the pull request would stay open on the server with nobody
            // listening: see it through and release what it brings.
            State::Opening(opening) => Some(Box::pin(async move {
                let batch = match tokio::time::timeout(timeout, opening).await {
                    Ok(Ok(batch)) => batch,
                    Ok(Err(_)) | Err(_) => return Ok(()),
                };
                let until = tokio::time::Instant::now() + PULL_EXPIRES + PULL_GRACE;
                release(batch, until, client, settle).await
            })),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(release) = self.release() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let stream = self.settle.stream.clone();
            runtime.spawn(async move {
                if let Err(err) = release.await {
                    tracing::warn!(
                        target: "tower_mq::nats",
                        stream = %stream,
                        error = %err,
                        "releasing undelivered messages failed; they come back after the ack wait"
                    );
                }
            });
        }
    }
}

/// Collects what `batch` brings until its pull request ends (or `until`), then naks
/// it all without delay and flushes, so the server redelivers it at once.
async fn release(
    mut batch: pull::Batch,
    until: tokio::time::Instant,
    client: async_nats::Client,
    settle: Arc<ConsumerShared>,
) -> Result<(), Error> {
    use futures_util::StreamExt;

    let mut held = Vec::new();
    while let Ok(Some(Ok(message))) = tokio::time::timeout_at(until, batch.next()).await {
        held.push(message);
    }
    // The pull request is over: none of its messages can come back to it.
    drop(batch);
    if held.is_empty() {
        return Ok(());
    }
    let failed = |err: Box<dyn std::error::Error + Send + Sync>| {
        error(ErrorKind::Transient, Operation::Nack, &settle.stream)
            .with_reason(format!(
                "releasing undelivered messages of consumer `{}` failed",
                settle.consumer
            ))
            .with_source(err)
    };
    for message in &held {
        message
            .ack_with(AckKind::Nak(None))
            .await
            .map_err(&failed)?;
    }
    client.flush().await.map_err(|err| failed(Box::new(err)))?;
    tracing::debug!(
        target: "tower_mq::nats",
        stream = %settle.stream,
        consumer = %settle.consumer,
        released = held.len(),
        "released undelivered messages"
    );
    Ok(())
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.settle.stream)
            .field("consumer", &self.settle.consumer)
            .field("dead_letter_subject", &self.settle.dead_letter_subject)
            .field("max_deliver", &self.settle.max_deliver)
            .finish()
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        // A reconnect loses the open pull request: send a new one at once.
        while let Poll::Ready(Some(_)) = Pin::new(&mut this.link).poll_next(cx) {
            let connects = this.connection.connects();
            if connects != this.connects {
                this.connects = connects;
                // Whatever dropped the connection may come again: one at a time, it
                // only takes itself down.
                if this.batch > 1 {
                    this.cautious = this.batch;
                }
                if !matches!(this.state, State::Done) {
                    this.pull(None);
                }
            }
        }
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Opening(opening) => match std::task::ready!(opening.as_mut().poll(cx)) {
                    Ok(batch) => {
                        this.state = State::Pulling {
                            batch: Box::new(batch),
                            deadline: Box::pin(tokio::time::sleep(PULL_EXPIRES + PULL_GRACE)),
                        }
                    }
                    Err(err) => {
                        if err.is_transient() {
                            this.pull(Some(RETRY_DELAY));
                        } else {
                            this.state = State::Done;
                        }
                        return Poll::Ready(Some(Err(err)));
                    }
                },
                State::Pulling { batch, deadline } => {
                    match Pin::new(&mut **batch).poll_next(cx) {
                        Poll::Ready(Some(Ok(message))) => {
                            this.cautious = this.cautious.saturating_sub(1);
                            return Poll::Ready(Some(Ok(delivery(
                                message,
                                this.settle.clone(),
                                &this.connection.config().property_headers,
                            ))));
                        }
                        Poll::Ready(Some(Err(err))) => {
                            // A status the server answered the pull request with (no
                            // responders while JetStream recovers, say).
                            let err = error(
                                ErrorKind::Transient,
                                Operation::Receive,
                                &this.settle.stream,
                            )
                            .with_reason("the pull request failed")
                            .with_source(err);
                            this.pull(Some(RETRY_DELAY));
                            return Poll::Ready(Some(Err(err)));
                        }
                        // Fulfilled or expired: pull again.
                        Poll::Ready(None) => this.pull(None),
                        Poll::Pending => {
                            // Lost (no answer after its expiry): pull again.
                            std::task::ready!(deadline.as_mut().poll(cx));
                            this.pull(None);
                        }
                    }
                }
            }
        }
    }
}

fn delivery(
    message: async_nats::jetstream::Message,
    settle: Arc<ConsumerShared>,
    names: &PropertyHeaders,
) -> Delivery {
    let (count, sequence, stored) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(1),
            Some(info.stream_sequence),
            Some(SystemTime::from(info.published)),
        ),
        Err(_) => (1, None, None),
    };
    let (message, acker) = message.split();
    let decoded = headers::decode(
        names,
        Flavour::JetStream,
        message.subject.as_str(),
        message.reply.as_ref().map(|r| r.as_str()),
        message.headers.as_ref(),
        message.payload.clone(),
        stored,
    );
    let backend = PendingDelivery {
        acker,
        settle,
        subject: message.subject.to_string(),
        headers: message.headers.unwrap_or_default(),
        payload: message.payload,
        sequence,
        delivered: count,
    };
    Delivery::new(
        decoded,
        Acker::new(JetStreamAcker {
            inner: Arc::new(backend),
        }),
    )
    .with_delivery_count(count)
}

/// What every delivery of one consumer shares.
struct ConsumerShared {
    context: Arc<async_nats::jetstream::Context>,
    stream: String,
    consumer: String,
    dead_letter_subject: Option<String>,
    max_deliver: Option<u32>,
}

/// Settles one JetStream delivery.
struct PendingDelivery {
    acker: async_nats::jetstream::message::Acker,
    settle: Arc<ConsumerShared>,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    sequence: Option<u64>,
    delivered: u32,
}

impl PendingDelivery {
    async fn send(&self, kind: AckKind, operation: Operation) -> Result<(), Error> {
        self.acker.double_ack_with(kind).await.map_err(|err| {
            error(ErrorKind::Transient, operation, &self.settle.stream)
                .with_reason(format!(
                    "consumer `{}` did not confirm in time",
                    self.settle.consumer
                ))
                .with_source(err)
        })
    }

    async fn dead_letter(&self, reason: &str) -> Result<(), Error> {
        let settle = &self.settle;
        match &settle.dead_letter_subject {
            Some(dead_letter) => {
                let mut headers = self.headers.clone();
                let original_id = headers
                    .get(headers::MESSAGE_ID)
                    .map(|v| v.as_str().to_owned());
                // Deduplicated per stream message, so a reject retried after a failed
                // term does not dead-letter it twice.
                let id = match self.sequence {
                    Some(sequence) => format!("dead-letter.{}.{sequence}", settle.stream),
                    None => nuid::next().to_string(),
                };
                let mut set = |name: &'static str, value: String| {
                    // Values come from names NATS accepted and the caller's reason;
                    // line breaks would end the header.
                    let value = value.replace(['\r', '\n'], " ");
                    headers.insert(
                        async_nats::HeaderName::from_static(name),
                        async_nats::HeaderValue::from(value),
                    );
                };
                set(headers::MESSAGE_ID, id);
                if let Some(original) = original_id {
                    set(dead_letter::MESSAGE_ID, original);
                }
                set(dead_letter::REASON, reason.to_owned());
                set(dead_letter::ORIGINAL_DESTINATION, self.subject.clone());
                set(dead_letter::STREAM, settle.stream.clone());
                set(dead_letter::CONSUMER, settle.consumer.clone());
                set(dead_letter::DELIVERIES, self.delivered.to_string());
                if let Some(sequence) = self.sequence {
                    set(dead_letter::SEQUENCE, sequence.to_string());
                }
                set(dead_letter::TIME, dead_letter::now_millis().to_string());
                let subject = async_nats::Subject::from(dead_letter.as_str());
                publish_raw(&settle.context, subject, headers, self.payload.clone())
                    .await
                    .map_err(|err| {
                        Error::new(BROKER, Operation::Reject, err.kind())
                            .with_destination(dead_letter.clone())
                            .with_reason("publishing to the dead-letter subject failed")
                            .with_source(err)
                    })?;
            }
            None => tracing::warn!(
                target: "tower_mq::nats",
                stream = %settle.stream,
                consumer = %settle.consumer,
                reason,
                "terminating a delivery without a dead-letter subject"
            ),
        }
        self.send(AckKind::Term, Operation::Reject).await
    }
}

/// The [`Acknowledge`] of JetStream deliveries.
struct JetStreamAcker {
    inner: Arc<PendingDelivery>,
}

impl Acknowledge for JetStreamAcker {
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.inner.clone();
        Box::pin(async move { this.send(AckKind::Ack, Operation::Ack).await })
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.inner.clone();
        Box::pin(async move {
            match this.settle.max_deliver {
                Some(max) if this.delivered >= max => {
                    this.dead_letter(&format!("delivered {max} times (max_deliver)"))
                        .await
                }
                _ => this.send(AckKind::Nak(delay), Operation::Nack).await,
            }
        })
    }

    fn reject(&self, reason: &str) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.inner.clone();
        let reason = reason.to_owned();
        Box::pin(async move { this.dead_letter(&reason).await })
    }
}
