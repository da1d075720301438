//! Core NATS: publishing confirmed by the server, batches confirmed once, and subscriptions
//! (plain or in a queue group) as streams of deliveries.
//!
//! Core NATS delivers **at most once**: the server forwards a message to the
//! subscribers connected at that moment and keeps nothing. A [`Receipt`] of [`Guarantee::Forwarded`] says the
//! server processed the message (a round trip after it, on a connection that stayed up
//! until the server answered, confirmed it); it does not say anyone received it. The
//! round trip is shared: the publishes waiting at the same time on a connection are
//! confirmed by one loopback message on an inbox only that connection subscribes to
//! (rounds overlap), so 100 publishes in flight cost a round trip or two, not 100, and
//! nothing another client does can hold a confirmation up.
//! [`Publisher::fire_and_forget`] and [`BatchPublisher::fire_and_forget`] skip it (the
//! receipt then says `processed: false`). Deliveries cannot be acked, nacked or
//! dead-lettered: they are [`Delivery::unacknowledged`](crate::Delivery::unacknowledged),
//! and settling them only records the outcome locally.
//!
//! A queue group load balances: each message on the subject goes to exactly one
//! member of the group, so several [`Subscriber::queue_subscribe`] streams with the
//! same group share the work without duplicates.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_mq::nats::{BatchPublisher, Config, Connection, Subscriber};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let connection = Connection::connect(&Config::new("nats://127.0.0.1:4222")).await?;
//! let mut events = Subscriber::subscribe(&connection, "events.>").await?;
//! let batch = (0..100).map(|i| Message::new("events.tick", format!("{i}"))).collect();
//! let results = BatchPublisher::new(&connection).oneshot(batch).await?;
//! assert!(results.iter().all(Result::is_ok));
//! while let Some(delivery) = events.next().await {
//!     println!("{:?}", delivery?.message().payload());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`Receipt`]: crate::Receipt
//! [`Guarantee::Forwarded`]: crate::Guarantee::Forwarded

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::future::Either;
use futures_util::TryFutureExt;
use tower::Service;
use tower_mq_core::{Code, Delivery, Error, ErrorKind, Guarantee, Message, Operation, Receipt};

use super::headers::{self, Flavour};
use super::{error, Connection, Readiness};
use crate::wire::PropertyHeaders;

/// Publishes a message and waits until the server processed it:
/// `Service<Message, Response = Receipt>`.
///
/// The receipt is [`Guarantee::Forwarded`]: delivered at most once (see the
/// [module docs](self)). `poll_ready` is `Pending` while the connection is down.
/// Cloning is cheap; clones share the connection. The publisher is
/// `Send + Sync + Clone`: keep one in axum state or a `BoxCloneSyncService`.
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct Publisher {
    connection: Connection,
    readiness: Readiness,
    wait_processed: bool,
}

impl Publisher {
    /// A publisher on `connection` whose receipts wait until the server processed the
    /// message.
    pub fn new(connection: &Connection) -> Self {
        Publisher {
            connection: connection.clone(),
            readiness: Readiness::default(),
            wait_processed: true,
        }
    }

    /// Answers as soon as the client accepted the message, without waiting for the
    /// server: the receipt's `processed` is `false`, and a message lost with a
    /// connection that dropped before writing it is not reported. What the bare
    /// client's `publish` does; for telemetry and other traffic where a lost message
    /// costs less than a round trip.
    ///
    /// By default a receipt waits until the server processed the message; the
    /// publishes waiting at the same time share a round trip, so many publishes in
    /// flight cost far less than a round trip each, though still more than
    /// fire-and-forget (about 40% of its throughput with 100 publishes in flight in the
    /// project's benchmark).
    pub fn fire_and_forget(mut self) -> Self {
        self.wait_processed = false;
        self
    }

    /// The connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// A publisher of batches over the same connection, waiting for the server as this
    /// publisher does (or not, after [`fire_and_forget`](Self::fire_and_forget)): see
    /// [`BatchPublisher`].
    pub fn batch(&self) -> BatchPublisher {
        BatchPublisher {
            wait_processed: self.wait_processed,
            ..BatchPublisher::new(&self.connection)
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("connection", &self.connection)
            .field("wait_processed", &self.wait_processed)
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
        let connection = self.connection.clone();
        let wait_processed = self.wait_processed;
        Box::pin(async move {
            let connects = connection.connects();
            let destination = message.shared_destination();
            // Awaited in place: a named local would be kept beside the awaited copy.
            send(&connection, message, &destination).await?;
            if wait_processed {
                confirm(&connection, connects, &destination).await?;
            }
            Ok(Receipt::new(
                super::BROKER,
                destination,
                guarantee(wait_processed),
            ))
        })
    }
}

/// Publishes a batch and waits once until the server processed it:
/// `Service<Vec<Message>, Response = Vec<Result<Receipt, Error>>>`.
///
/// Each message gets its own result, in order: a message that cannot be published
/// (invalid subject or header, unsupported property, too large) fails alone; if the
/// confirmation fails, every message that had been handed to the client fails with a
/// transient error. Receipts mean what [`Publisher`]'s do. The service's own error
/// is for the connection being closed.
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct BatchPublisher {
    connection: Connection,
    readiness: Readiness,
    wait_processed: bool,
}

impl BatchPublisher {
    /// A batch publisher on `connection` whose receipts wait until the server processed
    /// the batch.
    pub fn new(connection: &Connection) -> Self {
        BatchPublisher {
            connection: connection.clone(),
            readiness: Readiness::default(),
            wait_processed: true,
        }
    }

    /// Answers once the client wrote the batch to its socket (a flush), without the
    /// round trip that proves the server processed it: each receipt's `processed` is
    /// `false`, as [`Publisher::fire_and_forget`]'s are, and a message lost with a
    /// connection that dropped after writing it is not reported. What the bare client's
    /// publishes followed by a flush do.
    pub fn fire_and_forget(mut self) -> Self {
        self.wait_processed = false;
        self
    }
}

impl fmt::Debug for BatchPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchPublisher")
            .field("connection", &self.connection)
            .field("wait_processed", &self.wait_processed)
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
        let connection = self.connection.clone();
        let wait_processed = self.wait_processed;
        let guarantee = guarantee(wait_processed);
        Box::pin(async move {
            let connects = connection.connects();
            let mut results = Vec::with_capacity(messages.len());
            for message in messages {
                let destination = message.shared_destination();
                results.push(
                    send(&connection, message, &destination)
                        .await
                        .map(|()| Receipt::new(super::BROKER, destination, guarantee)),
                );
            }
            let confirmed = if wait_processed {
                let first = results.iter().find_map(|r| r.as_ref().ok());
                let destination = first.map_or("", Receipt::destination);
                confirm(&connection, connects, destination).await
            } else {
                // Written to the socket before answering, as the bare client's publishes
                // followed by a flush: a batch cannot outrun the connection.
                connection.client().flush().await.map_err(|e| {
                    error(ErrorKind::Transient, Operation::Publish, "")
                        .with_reason(format!("the client could not write the batch: {e}"))
                })
            };
            if let Err(err) = confirmed {
                for result in &mut results {
                    if let Ok(receipt) = result {
                        *result = Err(error(err.kind(), Operation::Publish, receipt.destination())
                            .with_reason(err.reason().unwrap_or("not confirmed").to_owned()));
                    }
                }
            }
            Ok(results)
        })
    }
}

/// What a receipt promises: the server processed the message, or (fire-and-forget) the
/// client took it.
fn guarantee(wait_processed: bool) -> Guarantee {
    if wait_processed {
        Guarantee::Forwarded
    } else {
        Guarantee::Sent
    }
}

/// Hands one message to the client; errors name `subject`, the message's destination.
///
/// The message is checked and converted before anything is awaited, and the future
/// holds only the client's publish (or the error): awaited in place, it adds little to
/// the caller's future, which a publish allocates. (An `async fn` would keep the
/// message, its headers and the converted copies beside the client's future.)
pub(crate) fn send<'a>(
    connection: &'a Connection,
    message: Message,
    subject: &'a str,
) -> impl Future<Output = Result<(), Error>> + Send + 'a {
    match publish(connection, message, subject) {
        Ok(publish) => Either::Left(publish),
        Err(err) => Either::Right(std::future::ready(Err(err))),
    }
}

/// The client's publish of `message`, or why it cannot be published.
fn publish<'a>(
    connection: &'a Connection,
    message: Message,
    subject: &'a str,
) -> Result<impl Future<Output = Result<(), Error>> + Send + 'a, Error> {
    let (client_subject, headers) = headers::prepare(
        &message,
        Flavour::Core,
        connection.config(),
        Operation::Publish,
    )?;
    let client = connection.client();
    let reply = message.reply_to().map(str::to_owned);
    // Moved, not cloned: a payload built from a `Vec` allocates on its first clone.
    let payload = message.into_payload();
    // A reply subject is rare on a publish: its futures are boxed rather than make
    // every publish's future larger.
    let publish = match (reply, headers.is_empty()) {
        (None, true) => Either::Left(Either::Left(client.publish(client_subject, payload))),
        (None, false) => Either::Left(Either::Right(client.publish_with_headers(
            client_subject,
            headers,
            payload,
        ))),
        (Some(reply), true) => Either::Right(Box::pin(client.publish_with_reply(
            client_subject,
            reply,
            payload,
        )) as BoxFuture<'a, _>),
        (Some(reply), false) => Either::Right(Box::pin(client.publish_with_reply_and_headers(
            client_subject,
            reply,
            headers,
            payload,
        )) as BoxFuture<'a, _>),
    };
    Ok(publish.map_err(move |err| publish_error(err, subject)))
}

/// A publish the client refused, as tower-mq's error naming `subject`.
fn publish_error(err: async_nats::PublishError, subject: &str) -> Error {
    use async_nats::client::PublishErrorKind as Kind;
    let (kind, reason) = match err.kind() {
        Kind::InvalidSubject => (ErrorKind::Permanent, "invalid subject"),
        Kind::MaxPayloadExceeded => (
            ErrorKind::Permanent,
            "message larger than the server's max_payload",
        ),
        Kind::Send => (ErrorKind::Permanent, "the NATS connection is closed"),
    };
    error(kind, Operation::Publish, subject)
        .with_reason(reason)
        .with_source(err)
}

/// Waits until the server has processed everything this connection sent before, and
/// fails (transiently) if the connection was replaced since `connects` was read: what
/// the old connection had not delivered is lost.
pub(crate) async fn confirm(
    connection: &Connection,
    connects: u64,
    destination: &str,
) -> Result<(), Error> {
    round_trip(connection, Operation::Publish, destination).await?;
    if connection.connects() != connects {
        return Err(re_established(Operation::Publish, destination));
    }
    Ok(())
}

/// The connection was replaced before the server confirmed what was sent on it.
fn re_established(operation: Operation, destination: &str) -> Error {
    error(ErrorKind::Transient, operation, destination)
        .with_code(Code::ConnectionLost)
        .with_reason(
            "the connection was re-established before the server confirmed; \
             the message may have been lost",
        )
}

/// Waits until the server processed everything sent so far on `connection` (see
/// `confirm`: one loopback round trip shared by every caller waiting at once).
pub(crate) async fn round_trip(
    connection: &Connection,
    operation: Operation,
    destination: &str,
) -> Result<(), Error> {
    use super::confirm::Failure;
    connection
        .processed()
        .await
        .map_err(|failure| match failure {
            Failure::Reconnected => re_established(operation, destination),
            Failure::TimedOut(timeout) => error(ErrorKind::Transient, operation, destination)
                .with_code(Code::Timeout)
                .with_reason(format!(
                    "the server did not confirm within {timeout:?}; \
                 the message may still be delivered once the client reconnects"
                )),
            Failure::Closed => error(ErrorKind::Permanent, operation, destination)
                .with_code(Code::Closed)
                .with_reason("the NATS connection is closed"),
        })
}

/// A subscription, plain or in a queue group: a `Stream` of at-most-once
/// [`Delivery`]s.
///
/// The subscription survives reconnects (the client renews it); messages published
/// while it was disconnected are not delivered. The stream ends when the connection
/// is closed. Dropping it unsubscribes.
pub struct Subscriber {
    inner: async_nats::Subscriber,
    subject: String,
    property_headers: PropertyHeaders,
}

impl Subscriber {
    /// Subscribes to `subject` (wildcards `*` and `>` allowed): every subscriber gets
    /// every message.
    pub async fn subscribe(
        connection: &Connection,
        subject: impl Into<String>,
    ) -> Result<Self, Error> {
        let subject = subject.into();
        let subscribed = connection.client().subscribe(subject.clone()).await;
        Subscriber::confirmed(connection, subject, subscribed).await
    }

    /// Subscribes to `subject` as a member of queue group `group`: each message goes
    /// to one member of the group.
    pub async fn queue_subscribe(
        connection: &Connection,
        subject: impl Into<String>,
        group: impl Into<String>,
    ) -> Result<Self, Error> {
        let subject = subject.into();
        let subscribed = connection
            .client()
            .queue_subscribe(subject.clone(), group.into())
            .await;
        Subscriber::confirmed(connection, subject, subscribed).await
    }

    /// The subscriber of `subject` that `subscribed` made, once the server has
    /// confirmed the subscription (so that a message published after this returns
    /// reaches it).
    async fn confirmed(
        connection: &Connection,
        subject: String,
        subscribed: Result<async_nats::Subscriber, async_nats::SubscribeError>,
    ) -> Result<Self, Error> {
        let inner = subscribed.map_err(|err| subscribe_error(&subject, err))?;
        if let Err(err) = round_trip(connection, Operation::Subscribe, &subject).await {
            // The client renews its subscriptions on a new connection before anything
            // else it sends there: a round on that one confirms it.
            if err.code() != Some(Code::ConnectionLost) {
                return Err(err);
            }
            round_trip(connection, Operation::Subscribe, &subject).await?;
        }
        Ok(Subscriber {
            inner,
            subject,
            property_headers: connection.config().property_headers.clone(),
        })
    }

    /// The subject subscribed to.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

/// Makes sure the server registered the subscription before returning, so a message
/// published right after subscribing (on any connection) reaches it.
fn subscribe_error(subject: &str, err: async_nats::SubscribeError) -> Error {
    use async_nats::client::SubscribeErrorKind as Kind;
    let kind = match err.kind() {
        Kind::InvalidSubject | Kind::InvalidQueueName => ErrorKind::Permanent,
        Kind::Other => ErrorKind::Transient,
    };
    error(kind, Operation::Subscribe, subject).with_source(err)
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("subject", &self.subject)
            .finish()
    }
}

impl Stream for Subscriber {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = std::task::ready!(Pin::new(&mut self.inner).poll_next(cx));
        Poll::Ready(next.map(|message| {
            Ok(Delivery::at_most_once(
                headers::decode(
                    &self.property_headers,
                    Flavour::Core,
                    message.subject.as_str(),
                    message.reply.as_ref().map(|r| r.as_str()),
                    message.headers.as_ref(),
                    message.payload,
                    None,
                ),
                super::BROKER,
            ))
        }))
    }
}
