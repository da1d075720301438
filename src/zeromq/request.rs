//! Request/reply: a DEALER [`Requester`] and the reply publisher of a ROUTER consumer.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_core::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::PollSender;
use tower::Service;

use super::publisher::{poll_send_ready, queue, PeerWait, ResponseFuture};
use super::socket::{self, Command, Handle, Incoming, Kind};
use super::{frame, Config, Framing, BROKER};
use crate::{Error, Message, Operation, Receipt};

/// How a ROUTER consumer writes the route back to a requesting peer into a delivery's
/// `reply_to`: this prefix, then each envelope frame in lower-case hex, each followed
/// by `.` (a REQ peer's envelope is its identity and an empty delimiter).
pub const ROUTE_PREFIX: &str = "zmq-route:";

pub(crate) fn encode_route(envelope: &[Bytes]) -> String {
    let mut route = String::from(ROUTE_PREFIX);
    for part in envelope {
        for byte in part.iter() {
            route.push_str(&format!("{byte:02x}"));
        }
        route.push('.');
    }
    route
}

fn decode_route(route: &str) -> Option<Vec<Bytes>> {
    let hex = route.strip_prefix(ROUTE_PREFIX)?;
    let parts = hex.strip_suffix('.')?;
    parts
        .split('.')
        .map(|part| {
            if part.len() % 2 != 0 {
                return None;
            }
            (0..part.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(part.get(i..i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
                .map(Bytes::from)
        })
        .collect()
}

/// Publishes replies through a ROUTER socket to the peer named by each message's
/// destination, a route from a request's `reply_to` (see [`ROUTE_PREFIX`]); made by
/// [`Consumer::router`](super::Consumer::router).
///
/// A ROUTER sends to one peer by identity, so readiness does not wait for peers; a
/// reply whose peer is gone fails with a transient error.
///
/// Replies go out in the socket's [framing](super::frame) after the route; what the
/// framing cannot carry fails the reply unless [`Replies::ignore_unsupported`].
pub struct Replies {
    handle: Handle,
    sender: PollSender<Command>,
    ignore_unsupported: bool,
}

impl Replies {
    pub(crate) fn new(handle: Handle) -> Self {
        Replies {
            sender: PollSender::new(handle.commands.clone()),
            handle,
            ignore_unsupported: false,
        }
    }

    /// As [`Publisher::ignore_unsupported`](super::Publisher::ignore_unsupported).
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }
}

impl Service<Message> for Replies {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut no_wait = None;
        poll_send_ready(&self.handle, &mut self.sender, &mut no_wait, false, cx).map_err(|()| {
            Error::transient(BROKER, Operation::Publish)
                .with_destination(self.handle.name.to_string())
                .with_reason("the socket task stopped")
        })
    }

    fn call(&mut self, message: Message) -> ResponseFuture {
        let destination = message.destination().to_owned();
        let Some(mut frames) = decode_route(&destination) else {
            self.sender.abort_send();
            return queue_error(
                destination,
                "a reply's destination must be a route from a request's reply_to",
            );
        };
        match frame::encode_any(
            &message,
            false,
            self.handle.framing,
            self.ignore_unsupported,
        ) {
            Ok(body) => frames.extend(body),
            Err(error) => {
                self.sender.abort_send();
                return ResponseFuture::from_error(error);
            }
        }
        queue(&self.handle, &mut self.sender, frames, destination)
    }
}

fn queue_error(destination: String, reason: &'static str) -> ResponseFuture {
    ResponseFuture::from_error(
        Error::permanent(BROKER, Operation::Publish)
            .with_destination(destination)
            .with_reason(reason),
    )
}

impl Clone for Replies {
    fn clone(&self) -> Self {
        Replies::new(self.handle.clone()).ignore_unsupported(self.ignore_unsupported)
    }
}

impl fmt::Debug for Replies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replies")
            .field("socket", &self.handle.name)
            .finish()
    }
}

type Waiters = Mutex<HashMap<Bytes, oneshot::Sender<Result<Message, Error>>>>;

struct Shared {
    waiters: Waiters,
    prefix: u64,
    counter: AtomicU64,
}

/// A DEALER socket as a `Service<Message, Response = Message>`: sends each request to
/// one connected REP or ROUTER peer (round robin) and waits for its reply, at most
/// [`Requester::with_timeout`].
///
/// Each request goes out as ZeroMQ's request-reply envelope: a request id frame (16
/// bytes, unique to this requester) and an empty delimiter, then the message in the
/// socket's [framing](super::frame). REP and ROUTER peers (libzmq's included) send the
/// envelope back with the reply, which is how replies find their request: many
/// requests may be in flight at once, and the messages' own correlation ids are left
/// alone. `poll_ready` is `Pending` until a peer is connected. A request that times
/// out fails with a transient error (operation `request`, the request's destination);
/// its late reply is dropped. A reply that does not parse fails its request.
pub struct Requester {
    handle: Handle,
    sender: PollSender<Command>,
    peer_wait: PeerWait,
    shared: Arc<Shared>,
    timeout: Duration,
    ignore_unsupported: bool,
}

impl Requester {
    /// A DEALER socket per `config` (usually `connect`ing to a ROUTER or REP server).
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let (handle, incoming) = socket::open(Kind::Dealer, config).await?;
        let shared = Arc::new(Shared {
            waiters: Mutex::new(HashMap::new()),
            prefix: fastrand::u64(..),
            counter: AtomicU64::new(0),
        });
        if let Some(incoming) = incoming {
            tokio::spawn(route_replies(
                incoming,
                Arc::downgrade(&shared),
                handle.name.to_string(),
                handle.framing,
            ));
        }
        Ok(Requester {
            sender: PollSender::new(handle.commands.clone()),
            handle,
            peer_wait: None,
            shared,
            timeout: Duration::from_secs(30),
            ignore_unsupported: false,
        })
    }

    /// As [`Publisher::ignore_unsupported`](super::Publisher::ignore_unsupported), for
    /// requests.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }

    /// How long a request waits for its reply (30 seconds unless set).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connected (and bound) endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.handle.endpoints
    }

    /// How many peers are connected now.
    pub fn peers(&self) -> usize {
        *self.handle.peers.borrow()
    }
}

async fn route_replies(
    mut incoming: Incoming,
    shared: std::sync::Weak<Shared>,
    name: String,
    framing: Framing,
) {
    while let Some(item) = incoming.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let frames = match item {
            Ok(message) => message.into_vec(),
            Err(error) => {
                tracing::warn!(socket = %name, %error, "receiving a reply failed");
                continue;
            }
        };
        // The request id, the empty delimiter, then the reply.
        let [id, delimiter, body @ ..] = &frames[..] else {
            tracing::warn!(socket = %name, frames = frames.len(), "reply without a request id dropped");
            continue;
        };
        let waiter = if delimiter.is_empty() {
            shared
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id)
        } else {
            None
        };
        let Some(waiter) = waiter else {
            tracing::debug!(socket = %name, "reply for no waiting request dropped");
            continue;
        };
        let reply = frame::decode_any(body, false, framing, &name);
        let _ = waiter.send(reply);
    }
    // The socket stopped: fail whoever still waits.
    if let Some(shared) = shared.upgrade() {
        let waiters =
            std::mem::take(&mut *shared.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(Error::transient(BROKER, Operation::Request)
                .with_destination(name.clone())
                .with_reason("the socket stopped")));
        }
    }
}

impl Service<Message> for Requester {
    type Response = Message;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Message, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        poll_send_ready(
            &self.handle,
            &mut self.sender,
            &mut self.peer_wait,
            true,
            cx,
        )
        .map_err(|()| {
            Error::transient(BROKER, Operation::Request)
                .with_destination(self.handle.name.to_string())
                .with_reason("the socket task stopped")
        })
    }

    fn call(&mut self, request: Message) -> Self::Future {
        let destination = request.destination().to_owned();
        let body = frame::encode_any(
            &request,
            false,
            self.handle.framing,
            self.ignore_unsupported,
        );
        let body = match body {
            Ok(body) => body,
            Err(error) => {
                self.sender.abort_send();
                let reason = error.reason().unwrap_or("the request cannot be framed");
                let error = Error::permanent(BROKER, Operation::Request)
                    .with_destination(destination)
                    .with_reason(reason.to_owned());
                return Box::pin(std::future::ready(Err(error)));
            }
        };
        let mut id = BytesMut::with_capacity(16);
        id.put_u64(self.shared.prefix);
        id.put_u64(self.shared.counter.fetch_add(1, Ordering::Relaxed));
        let id = id.freeze();
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), tx);
        let mut frames = vec![id.clone(), Bytes::new()];
        frames.extend(body);
        let sent = queue(&self.handle, &mut self.sender, frames, destination.clone());
        let shared = self.shared.clone();
        let timeout = self.timeout;
        // The socket task lives as long as a request waits for its reply; a request
        // dropped before its reply leaves no waiter behind.
        let handle = self.handle.clone();
        let waiting = Waiting {
            shared: shared.clone(),
            id,
        };
        Box::pin(async move {
            let _handle = handle;
            let _waiting = waiting;
            let outcome = tokio::time::timeout(timeout, async {
                sent.await.map_err(|e| {
                    Error::transient(BROKER, Operation::Request)
                        .with_destination(destination.clone())
                        .with_source(e)
                })?;
                match rx.await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(e)) => Err(Error::transient(BROKER, Operation::Request)
                        .with_destination(destination.clone())
                        .with_source(e)),
                    Err(_) => Err(Error::transient(BROKER, Operation::Request)
                        .with_destination(destination.clone())
                        .with_reason("the requester stopped")),
                }
            })
            .await;
            match outcome {
                Ok(result) => result,
                Err(_) => Err(Error::transient(BROKER, Operation::Request)
                    .with_destination(destination)
                    .with_reason(format!("no reply within {timeout:?}"))),
            }
        })
    }
}

/// Removes a request's waiter however its future ends.
struct Waiting {
    shared: Arc<Shared>,
    id: Bytes,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Clone for Requester {
    fn clone(&self) -> Self {
        Requester {
            sender: PollSender::new(self.handle.commands.clone()),
            handle: self.handle.clone(),
            peer_wait: None,
            shared: self.shared.clone(),
            timeout: self.timeout,
            ignore_unsupported: self.ignore_unsupported,
        }
    }
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("socket", &self.handle.name)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip() {
        let envelope = vec![Bytes::from_static(&[0, 1, 0xab, 0xff]), Bytes::new()];
        let route = encode_route(&envelope);
        assert_eq!(route, "zmq-route:0001abff..");
        assert_eq!(decode_route(&route), Some(envelope));
        assert_eq!(decode_route("zmq-route:0g."), None);
        assert_eq!(decode_route("elsewhere"), None);
    }
}
