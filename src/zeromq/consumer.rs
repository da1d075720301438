//! SUB, PULL and ROUTER consumers.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use super::request::{encode_route, Replies};
use super::socket::{self, Handle, Incoming, Kind};
use super::{frame, Config, BROKER};
use crate::{Delivery, Error};

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
    incoming: Incoming,
    routed: bool,
    topic: bool,
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
        let incoming = incoming.unwrap_or_else(|| {
            // Only receiving socket kinds are opened here, and those always have a queue.
            let (_, rx) = tokio::sync::mpsc::channel(1);
            rx
        });
        Consumer {
            handle,
            incoming,
            routed,
            topic,
        }
    }

    /// The bound endpoints (ports resolved) and the connected ones.
    pub fn endpoints(&self) -> &[String] {
        &self.handle.endpoints
    }

    /// How many peers are connected now.
    pub fn peers(&self) -> usize {
        *self.handle.peers.borrow()
    }

    /// Waits until at least `count` peers are connected (false if the socket stopped).
    pub async fn wait_for_peers(&self, count: usize) -> bool {
        let mut peers = self.handle.peers.clone();
        let connected = peers.wait_for(|n| *n >= count).await.is_ok();
        connected
    }

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
        match this.incoming.poll_recv(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(this.parse(message.into_vec()))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
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
