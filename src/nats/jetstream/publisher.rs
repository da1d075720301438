//! JetStream publishers: one message at a time, or a batch whose acks are awaited
//! together. See the [JetStream module docs](super).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use futures_core::future::BoxFuture;
use tower::Service;
use tower_mq_core::{Error, ErrorKind, Guarantee, Message, Operation, Position, Receipt};

use crate::nats::config::Config;
use crate::nats::headers::{self, Flavour};
use crate::nats::{error, Connection, Readiness, BROKER};

use super::JetStream;

impl JetStream {
    /// A publisher waiting for the stream's ack.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            connection: self.connection.clone(),
            context: self.context.clone(),
            readiness: Readiness::default(),
        }
    }
}

/// Publishes to a stream and waits for its ack: `Service<Message, Response = Receipt>`
/// answering a stored [`Receipt`] with the stream, its sequence number
/// ([`Position::Sequence`]) and whether it was a duplicate.
///
/// See the [module docs](super) for deduplication and the ack-timeout pitfall.
/// `poll_ready` is `Pending` while the connection is down. Clones share the
/// connection; the publisher is `Send + Sync + Clone`: keep one in axum state or a
/// `BoxCloneSyncService`.
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct Publisher {
    connection: Connection,
    context: Arc<async_nats::jetstream::Context>,
    readiness: Readiness,
}

impl Publisher {
    /// A publisher of batches over the same connection and context: see
    /// [`BatchPublisher`].
    pub fn batch(&self) -> BatchPublisher {
        BatchPublisher {
            connection: self.connection.clone(),
            context: self.context.clone(),
            readiness: Readiness::default(),
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connection", &self.connection)
            .finish()
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Receipt, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.readiness
            .poll_ready(&self.connection, cx, Operation::Publish)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        // Checked and taken apart before the future: it then holds only what the
        // publish needs (a publish's future is one allocation, kept small).
        let (subject, headers) = match prepare(&message, self.connection.config()) {
            Ok(prepared) => prepared,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        let context = self.context.clone();
        // Moved, not cloned: a payload built from a `Vec` allocates on its first clone.
        let payload = message.into_payload();
        Box::pin(async move { publish_raw(&context, subject, headers, payload).await })
    }
}

/// Publishes a batch and then waits for all the acks at once (JetStream's
/// asynchronous publishing): `Service<Vec<Message>, Response = Vec<Result<Receipt, Error>>>`.
///
/// Each message gets its own result, in order, meaning what [`Publisher`]'s receipt
/// means; every message carries `Nats-Msg-Id` the same way. The service's own error is
/// for the connection being closed.
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct BatchPublisher {
    connection: Connection,
    context: Arc<async_nats::jetstream::Context>,
    readiness: Readiness,
}

impl JetStream {
    /// A publisher of batches that waits for their acks together.
    pub fn batch_publisher(&self) -> BatchPublisher {
        self.publisher().batch()
    }
}

impl fmt::Debug for BatchPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchPublisher")
            .field("connection", &self.connection)
            .finish()
    }
}

impl Service<Vec<Message>> for BatchPublisher {
    type Response = Vec<Result<Receipt, Error>>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Self::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.readiness
            .poll_ready(&self.connection, cx, Operation::Publish)
    }

    fn call(&mut self, messages: Vec<Message>) -> Self::Future {
        let context = self.context.clone();
        let connection = self.connection.clone();
        Box::pin(async move {
            let mut sent = Vec::with_capacity(messages.len());
            for message in messages {
                let sent_one = match prepare(&message, connection.config()) {
                    Ok((subject, headers)) => {
                        let ack = send(&context, &subject, headers, message.into_payload()).await;
                        (subject, ack)
                    }
                    Err(err) => (Subject::from(message.destination()), Err(err)),
                };
                sent.push(sent_one);
            }
            let confirming = sent.into_iter().map(|(subject, ack)| {
                let context = &context;
                async move { confirm(context, &subject, ack?).await }
            });
            Ok(futures_util::future::join_all(confirming).await)
        })
    }
}

/// Checks `message` and encodes its headers.
fn prepare(message: &Message, config: &Config) -> Result<(Subject, HeaderMap), Error> {
    headers::prepare(message, Flavour::JetStream, config, Operation::Publish)
}

pub(super) async fn publish_raw(
    context: &async_nats::jetstream::Context,
    subject: Subject,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<Receipt, Error> {
    let ack = send(context, &subject, headers, payload).await?;
    confirm(context, &subject, ack).await
}

/// Hands a publish to the client; the returned future answers the stream's ack.
async fn send(
    context: &async_nats::jetstream::Context,
    subject: &Subject,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<PublishAckFuture, Error> {
    let publish = PublishMessage::build().payload(payload).headers(headers);
    // Boxed: the client's future (840 bytes) inline would take a publish's future past
    // 1 KiB, where glibc's malloc takes its slow path on every allocation.
    match Box::pin(context.send_publish(subject.clone(), publish)).await {
        Ok(ack) => Ok(ack),
        // Boxed, here and below: the failure may ask JetStream which stream captures
        // the subject, a request whose future would otherwise make every publish's
        // future larger.
        Err(err) => Err(Box::pin(publish_failed(context, subject, err)).await),
    }
}

/// Waits for the stream's ack.
async fn confirm(
    context: &async_nats::jetstream::Context,
    subject: &str,
    ack: PublishAckFuture,
) -> Result<Receipt, Error> {
    match ack.await {
        Ok(ack) => Ok(Receipt::new(BROKER, ack.stream, Guarantee::Stored)
            .with_position(Position::Sequence(ack.sequence))
            .with_duplicate(ack.duplicate)),
        Err(err) => Err(Box::pin(publish_failed(context, subject, err)).await),
    }
}

async fn publish_failed(
    context: &async_nats::jetstream::Context,
    subject: &str,
    err: async_nats::jetstream::context::PublishError,
) -> Error {
    if err.kind() == PublishErrorKind::StreamNotFound {
        missing_stream(context, subject, err).await
    } else {
        publish_error(err, subject)
    }
}

/// Nobody answered a publish: either no stream captures the subject (permanent), or
/// JetStream is not serving it yet, as right after a server restart while streams are
/// recovered (transient). JetStream's own answer decides.
async fn missing_stream(
    context: &async_nats::jetstream::Context,
    subject: &str,
    err: async_nats::jetstream::context::PublishError,
) -> Error {
    use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
    match context.stream_by_subject(subject).await {
        Err(lookup) if lookup.kind() == Kind::NotFound => {
            error(ErrorKind::Permanent, Operation::Publish, subject)
                .with_reason("no stream captures this subject")
                .with_source(err)
        }
        Ok(stream) => error(ErrorKind::Transient, Operation::Publish, subject)
            .with_reason(format!(
                "stream `{stream}` did not answer (recovering after a restart?)"
            ))
            .with_source(err),
        Err(_) => error(ErrorKind::Transient, Operation::Publish, subject)
            .with_reason("JetStream did not answer (recovering after a restart?)")
            .with_source(err),
    }
}

fn publish_error(err: async_nats::jetstream::context::PublishError, subject: &str) -> Error {
    let (kind, reason) = match err.kind() {
        PublishErrorKind::TimedOut => (
            ErrorKind::Transient,
            "no ack in time: the message may have been stored; \
             retrying with the same Nats-Msg-Id is safe",
        ),
        PublishErrorKind::BrokenPipe => (
            ErrorKind::Transient,
            "the connection was lost before the ack; \
             retrying with the same Nats-Msg-Id is safe",
        ),
        PublishErrorKind::MaxAckPending => (ErrorKind::Transient, "too many acks pending"),
        PublishErrorKind::StreamNotFound => {
            (ErrorKind::Permanent, "no stream captures this subject")
        }
        PublishErrorKind::MaxPayloadExceeded => (
            ErrorKind::Permanent,
            "message larger than the server's max_payload",
        ),
        PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
            (ErrorKind::Permanent, "expectation on the stream failed")
        }
        PublishErrorKind::Other => {
            let api = std::error::Error::source(&err)
                .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>());
            match api {
                Some(api) if api.code() < 500 => (ErrorKind::Permanent, "rejected by the stream"),
                Some(_) => (ErrorKind::Transient, "JetStream unavailable"),
                None => (ErrorKind::Transient, "publish failed"),
            }
        }
    };
    error(kind, Operation::Publish, subject)
        .with_reason(reason)
        .with_source(err)
}
