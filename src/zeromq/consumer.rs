//! SUB, PULL and ROUTER consumers.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::lock::{Mutex, OwnedMutexLockFuture};
use zeromq::{ZmqError, ZmqMessage};

use super::request::{encode_route, Replies};
use super::socket::{self, AnySocket, Handle, Incoming, Kind};
use super::{frame, Config, BROKER};
use crate::{Delivery, Error, Operation};

/// A SUB, PULL or ROUTER socket as a `Stream` of [`Delivery`]s.
///
/// Deliveries are [untracked](Delivery::unacknowledged): ZeroMQ has no acknowledgements,
/// so settling one tells no peer. Every message from any peer is a delivery, read as
/// the [`frame`](super::frame) docs say: plain frames, or the envelope where the
/// [`Config`] enables it. The one thing that can fail is an envelope that does not
/// parse: an `Err` item with a transient error (so that `serve` goes on), and the
/// stream continues with the next message. See the [module docs](super).
pub struct Consumer {
    handle: Handle,
    source: Source,
    routed: bool,
    topic: bool,
}

/// Where a consumer's messages come from.
enum Source {
    /// Queued by the socket task (ROUTER, whose socket also sends the replies).
    Task(Incoming),
    /// Read from the socket directly (SUB, PULL).
    Direct(DirectReceive),
}

/// At most this many messages are taken from the socket per lock of it.
const RECEIVE_BATCH: usize = 128;

/// A SUB or PULL consumer reading its socket itself, everything that is ready (up to a
/// batch) at a time. The socket is locked only while it is polled, never while the
/// consumer waits: the socket task locks it to dial, whether or not the consumer is
/// being polled.
struct DirectReceive {
    socket: Arc<Mutex<AnySocket>>,
    /// Waits for the socket while the socket task dials with it.
    locking: Option<OwnedMutexLockFuture<AnySocket>>,
    /// Received, not yet handed out.
    received: VecDeque<Result<ZmqMessage, ZmqError>>,
    batch: usize,
    ended: bool,
}

impl DirectReceive {
    fn new(handle: &Handle, batch: usize) -> Self {
        DirectReceive {
            socket: handle.direct.socket.clone(),
            locking: None,
            received: VecDeque::new(),
            batch: batch.clamp(1, RECEIVE_BATCH),
            ended: false,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<ZmqMessage, ZmqError>>> {
        loop {
            if let Some(item) = self.received.pop_front() {
                return Poll::Ready(Some(item));
            }
            if self.ended {
                return Poll::Ready(None);
            }
            let mut socket = match &mut self.locking {
                Some(locking) => {
                    let socket = ready!(Pin::new(locking).poll(cx));
                    self.locking = None;
                    socket
                }
                None => match self.socket.try_lock_owned() {
                    Some(socket) => socket,
                    None => {
                        self.locking = Some(self.socket.clone().lock_owned());
                        continue;
                    }
                },
            };
            while self.received.len() < self.batch {
                // A receive that is not ready is dropped, which loses nothing: the
                // socket wakes this consumer when a message arrives.
                match pin!(socket.recv()).poll(cx) {
                    Poll::Ready(Ok(message)) => self.received.push_back(Ok(message)),
                    Poll::Ready(Err(err)) => {
                        self.received.push_back(Err(err));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            drop(socket);
            if self.received.is_empty() {
                return Poll::Pending;
            }
        }
    }
}

impl Consumer {
    /// A SUB socket subscribed to every destination starting with one of `prefixes`
    /// (`""` subscribes to everything).
    pub async fn subscribe<I, P>(config: &Config, prefixes: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        let prefixes = prefixes.into_iter().map(Into::into).collect();
        Self::open(Kind::Sub(prefixes), config).await
    }

    /// A PULL socket: takes its share of what connected PUSH sockets send.
    pub async fn pull(config: &Config) -> Result<Self, Error> {
        Self::open(Kind::Pull, config).await
    }

    /// A ROUTER socket serving requests from REQ and DEALER peers, and the publisher of
    /// its replies: each delivery's `reply_to` is the route back to the requesting peer
    /// (see [`Replies`]), so a [`Replier`](crate::Replier) over the two answers each
    /// request to the right peer.
    pub async fn router(config: &Config) -> Result<(Self, Replies), Error> {
        let (handle, incoming) = socket::open(Kind::Router, config).await?;
        let replies = Replies::new(handle.clone());
        let consumer = Consumer::new(handle, incoming, true, false);
        Ok((consumer, replies))
    }

    async fn open(kind: Kind, config: &Config) -> Result<Self, Error> {
        let topic = matches!(kind, Kind::Sub(_));
        let (handle, incoming) = socket::open(kind, config).await?;
        Ok(Consumer::new(handle, incoming, false, topic))
    }

    fn new(handle: Handle, incoming: Option<Incoming>, routed: bool, topic: bool) -> Self {
        let source = match incoming {
            Some(incoming) => Source::Task(incoming),
            None => Source::Direct(DirectReceive::new(&handle, handle.receive_batch)),
        };
        Consumer {
            handle,
            source,
            routed,
            topic,
        }
    }

    socket_accessors!();

    fn parse(&self, frames: Vec<Bytes>) -> Result<Delivery, Error> {
        let framing = self.handle.framing;
        if !self.routed {
            return frame::decode_any(&frames, self.topic, framing, &self.handle.name)
                .map(Delivery::unacknowledged);
        }
        let (route, body) = split_route(&frames);
        let mut message = frame::decode_any(body, false, framing, &self.handle.name)?;
        message.set_reply_to(Some(encode_route(route)));
        Ok(Delivery::at_most_once(message, BROKER))
    }
}

/// Splits what a ROUTER received into the route back to the peer and the message: the
/// peer's identity and, when an empty delimiter frame follows, every frame up to and
/// including it (ZeroMQ's request-reply envelope, as REQ and REP sockets write it).
pub(crate) fn split_route(frames: &[Bytes]) -> (&[Bytes], &[Bytes]) {
    let end = match frames.iter().skip(1).position(|f| f.is_empty()) {
        Some(delimiter) => delimiter + 2,
        None => frames.len().min(1),
    };
    frames.split_at(end)
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let received = match &mut this.source {
            Source::Task(incoming) => ready!(incoming.poll_recv(cx)),
            Source::Direct(direct) => match ready!(direct.poll_next(cx)) {
                Some(Ok(message)) => Some(Ok(message)),
                Some(Err(ZmqError::NoMessage)) | None => {
                    // zeromq's fair queue ended: nothing more will come.
                    direct.ended = true;
                    direct.received.clear();
                    None
                }
                Some(Err(err)) => Some(Err(socket::error(
                    Operation::Receive,
                    &this.handle.name,
                    err,
                ))),
            },
        };
        Poll::Ready(received.map(|item| item.and_then(|message| this.parse(message.into_vec()))))
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("socket", &self.handle.name)
            .field("peers", &self.peers())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(parts: &[&'static [u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::from_static(p)).collect()
    }

    #[test]
    fn the_route_is_the_identity_and_the_frames_up_to_the_delimiter() {
        // A REQ peer: identity, delimiter, body.
        let req = frames(&[b"id", b"", b"body"]);
        assert_eq!(split_route(&req), (&req[..2], &req[2..]));
        // A correlating requester: identity, request id, delimiter, body.
        let dealer = frames(&[b"id", b"\x00\x01", b"", b"a", b"body"]);
        assert_eq!(split_route(&dealer), (&dealer[..3], &dealer[3..]));
        // A DEALER without a delimiter: the identity alone.
        let bare = frames(&[b"id", b"a", b"body"]);
        assert_eq!(split_route(&bare), (&bare[..1], &bare[1..]));
        // Nothing after the delimiter: an empty body.
        let empty = frames(&[b"id", b""]);
        assert_eq!(split_route(&empty), (&empty[..], &empty[2..]));
    }
}
