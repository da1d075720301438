//! Native NATS request/reply: [`Requester`] sends a message to a subject with an
//! inbox of its own as the reply subject and answers the first reply, or fails after a
//! timeout; built on the [request/reply core](crate::request).
//!
//! Each requester (with its clones) subscribes once, on its first request, to
//! `<inbox>.*`, a fresh inbox under the client's inbox prefix; each request's reply
//! subject is `<inbox>.<correlation id>`, so one subscription serves every request and
//! the subject alone finds a reply's request (the message's own correlation id, if it
//! has one, is left alone). A responder is any subscriber: it publishes its answer to
//! the request's reply-to (the inbox, which the responder sees as
//! [`Message::reply_to`]). When nobody is subscribed to the subject the server says so
//! at once and the request fails with a transient error (code
//! [`NoResponders`](crate::Code::NoResponders); a responder may be starting); a
//! responder that does not answer in time fails it with a transient error too.
//!
//! # Example
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_mq::nats::{Config, Connection, Publisher, Requester, Subscriber};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), tower_mq::Error> {
//! let connection = Connection::connect(&Config::new("nats://127.0.0.1:4222")).await?;
//!
//! // A responder echoing requests in upper case.
//! let mut requests = Subscriber::subscribe(&connection, "upper").await?;
//! let replies = Publisher::new(&connection);
//! tokio::spawn(async move {
//!     while let Some(Ok(request)) = requests.next().await {
//!         if let Some(inbox) = request.message().reply_to() {
//!             let text = String::from_utf8_lossy(request.message().payload()).to_uppercase();
//!             let _ = replies.clone().oneshot(Message::new(inbox, text)).await;
//!         }
//!     }
//! });
//!
//! let reply = Requester::new(&connection)
//!     .oneshot(Message::new("upper", "hello"))
//!     .await?;
//! assert_eq!(reply.payload().as_ref(), b"HELLO");
//! # Ok(())
//! # }
//! ```
//!
//! [`Message::reply_to`]: crate::Message::reply_to

use std::fmt;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::StatusCode;
use futures_util::StreamExt;
use tower::Service;
use tower_mq_core::{Code, Error, ErrorKind, Message, Operation};

use super::headers::{self, Flavour};
use super::{error, Connection, Readiness, BROKER};
use crate::request::{route, BoxResponseFuture, Routed, Shared, Waiters};

/// Sends a request and answers the reply: `Service<Message, Response = Message>`.
///
/// See the [module docs](self). The request's own reply-to is not sent (the reply goes
/// to the requester's inbox). The reply's destination is the subject it arrived on.
/// Clones share the connection and the inbox; the requester is `Send + Sync + Clone`:
/// keep one in axum state or a `BoxCloneSyncService`.
// `Clone` is derived: a clone of `Readiness` starts with no wait of its own.
#[derive(Clone)]
pub struct Requester {
    connection: Connection,
    readiness: Readiness,
    inbox: Shared<Inbox>,
    timeout: Duration,
}

/// The subscription replies arrive on.
struct Inbox {
    subject: String,
    waiters: Waiters,
}

impl Requester {
    /// A requester on `connection`, waiting [`Config::request_timeout`] for replies.
    ///
    /// [`Config::request_timeout`]: super::Config::request_timeout
    pub fn new(connection: &Connection) -> Self {
        Requester {
            connection: connection.clone(),
            readiness: Readiness::default(),
            inbox: Shared::new(),
            timeout: connection.config().request_timeout,
        }
    }

    /// Waits `timeout` for each reply (publishing included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("connection", &self.connection)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Subscribes to a fresh inbox and spawns the task handing its messages to their
/// requests; the subscription ends with the last requester clone and request.
async fn open_inbox(connection: &Connection) -> Result<Inbox, Error> {
    let subject = connection.client().new_inbox();
    let subscriber = connection
        .client()
        .subscribe(format!("{subject}.*"))
        .await
        .map_err(|err| {
            error(ErrorKind::Transient, Operation::Request, &subject)
                .with_reason("subscribing to the reply inbox failed")
                .with_source(err)
        })?;
    let (waiters, dispatch) = route(subject.clone());
    let names = connection.config().property_headers.clone();
    let token = subject.len() + 1;
    let replies = subscriber.map(move |reply| {
        let id = reply.subject.get(token..).map(str::to_owned);
        if reply.status == Some(StatusCode::NO_RESPONDERS) {
            let error = Error::transient(BROKER, Operation::Request)
                .with_code(Code::NoResponders)
                .with_reason("no responders");
            return Routed::Reply(id, Err(error));
        }
        let message = headers::decode(
            &names,
            Flavour::Core,
            reply.subject.as_str(),
            reply.reply.as_ref().map(|r| r.as_str()),
            reply.headers.as_ref(),
            reply.payload,
            None,
        );
        Routed::Reply(id, Ok(message))
    });
    tokio::spawn(dispatch.run(replies, "the NATS connection closed"));
    Ok(Inbox { subject, waiters })
}

impl Service<Message> for Requester {
    type Response = Message;
    type Error = Error;
    type Future = BoxResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.readiness
            .poll_ready(&self.connection, cx, Operation::Request)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let connection = self.connection.clone();
        let inbox = self.inbox.clone();
        let destination = message.destination().to_owned();
        let timeout = self.timeout;
        BoxResponseFuture::boxed(BROKER, destination, timeout, async move {
            let subject = message.destination();
            let config = connection.config();
            let (client_subject, headers) =
                headers::prepare(&message, Flavour::Core, config, Operation::Request)?;
            let usable = |open: &Inbox| open.waiters.closed().is_none();
            let inbox = inbox.get(usable, || open_inbox(&connection)).await?;
            // Registered before publishing, so a fast reply finds its request.
            let pending = inbox.waiters.register().map_err(|why| {
                error(ErrorKind::Transient, Operation::Request, subject)
                    .with_code(Code::ConnectionLost)
                    .with_reason(why)
            })?;
            let reply = format!("{}.{}", inbox.subject, pending.id());
            let (client, payload) = (connection.client(), message.payload().clone());
            let published = if headers.is_empty() {
                client
                    .publish_with_reply(client_subject, reply, payload)
                    .await
            } else {
                client
                    .publish_with_reply_and_headers(client_subject, reply, headers, payload)
                    .await
            };
            published.map_err(|err| {
                use async_nats::client::PublishErrorKind as Kind;
                let (kind, code, reason) = match err.kind() {
                    Kind::InvalidSubject => {
                        (ErrorKind::Permanent, Code::Invalid, "invalid subject")
                    }
                    Kind::MaxPayloadExceeded => (
                        ErrorKind::Permanent,
                        Code::TooLarge,
                        "request larger than the server's max_payload",
                    ),
                    Kind::Send => (
                        ErrorKind::Permanent,
                        Code::Closed,
                        "the NATS connection is closed",
                    ),
                };
                error(kind, Operation::Request, subject)
                    .with_code(code)
                    .with_reason(reason)
                    .with_source(err)
            })?;
            Ok(pending)
        })
    }
}
