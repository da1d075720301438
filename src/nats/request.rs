//! Native NATS request/reply: [`Requester`] sends a message to a subject with a
//! fresh inbox as its reply subject and answers the first reply, or fails after a
//! timeout.
//!
//! A responder is any subscriber: it publishes its answer to the request's reply-to
//! (the inbox, which the responder sees as [`Message::reply_to`]). When nobody is
//! subscribed to the subject the server says so at once and the request fails with a
//! transient error (a responder may be starting); a responder that does not answer in
//! time fails it with a transient error too.
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

use futures_core::future::BoxFuture;
use tower::Service;
use tower_mq_core::{Error, ErrorKind, Message, Operation};

use super::headers::{self, Flavour};
use super::{error, Connection, Readiness};

/// Sends a request and answers the reply: `Service<Message, Response = Message>`.
///
/// See the [module docs](self). The request's own reply-to is not sent (the reply goes
/// to the requester's inbox). The reply's destination is the inbox it arrived on.
/// Clones share the connection; the requester is `Send + Sync + Clone`: keep one in
/// axum state or a `BoxCloneSyncService`.
pub struct Requester {
    connection: Connection,
    readiness: Readiness,
    timeout: Duration,
}

impl Requester {
    /// A requester on `connection`, waiting [`Config::request_timeout`] for replies.
    ///
    /// [`Config::request_timeout`]: super::Config::request_timeout
    pub fn new(connection: &Connection) -> Self {
        Requester {
            connection: connection.clone(),
            readiness: connection.readiness(),
            timeout: connection.config().request_timeout,
        }
    }

    /// Waits `timeout` for each reply.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Clone for Requester {
    fn clone(&self) -> Self {
        Requester {
            connection: self.connection.clone(),
            readiness: self.readiness.clone(),
            timeout: self.timeout,
        }
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

impl Service<Message> for Requester {
    type Response = Message;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Message, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.readiness.poll_ready(cx, Operation::Request)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let connection = self.connection.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let subject = message.destination();
            headers::check_publish_subject(subject, Operation::Request)?;
            headers::check_supported(
                &message,
                Flavour::Core,
                connection.config().ignore_unsupported,
                Operation::Request,
            )?;
            let headers = headers::encode(
                &message,
                Flavour::Core,
                connection.config(),
                Operation::Request,
            )?;
            let mut request = async_nats::Request::new()
                .payload(message.payload().clone())
                .timeout(Some(timeout));
            if !headers.is_empty() {
                request = request.headers(headers);
            }
            let reply = connection
                .client()
                .send_request(subject.to_owned(), request)
                .await
                .map_err(|err| {
                    use async_nats::RequestErrorKind as Kind;
                    let (kind, reason) = match err.kind() {
                        Kind::TimedOut => (ErrorKind::Transient, "no reply in time"),
                        Kind::NoResponders => (ErrorKind::Transient, "no responders"),
                        Kind::InvalidSubject => (ErrorKind::Permanent, "invalid subject"),
                        Kind::MaxPayloadExceeded => (
                            ErrorKind::Permanent,
                            "request larger than the server's max_payload",
                        ),
                        Kind::Other => (ErrorKind::Transient, "request failed"),
                    };
                    error(kind, Operation::Request, subject)
                        .with_reason(reason)
                        .with_source(err)
                })?;
            Ok(headers::decode(
                &connection.config().property_headers,
                Flavour::Core,
                reply.subject.as_str(),
                reply.reply.as_ref().map(|r| r.as_str()),
                reply.headers.as_ref(),
                reply.payload,
                None,
            ))
        })
    }
}
