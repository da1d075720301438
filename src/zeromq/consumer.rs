//! SUB, PULL and ROUTER consumers.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

use super::request::{encode_route, Replies};
use super::socket::{self, Handle, Incoming, Kind};
use super::{frame, Config};
use crate::{Delivery, Error};

/// A SUB, PULL or ROUTER socket as a `Stream` of [`Delivery`]s.
///
/// Deliveries are [untracked](Delivery::unacknowledged): ZeroMQ has no acknowledgements,
/// so settling one tells no peer. A message that does not parse
/// ([`frame`](super::frame)) is an `Err` item with a permanent error, and the stream
/// continues with the next message. See the [module docs](super).
pub struct Consumer {
    handle: Handle,
    incoming: Incoming,
    routed: bool,
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
        let consumer = Consumer::new(handle, incoming, true);
        Ok((consumer, replies))
    }

    async fn open(kind: Kind, config: &Config) -> Result<Self, Error> {
        let (handle, incoming) = socket::open(kind, config).await?;
        Ok(Consumer::new(handle, incoming, false))
    }

    fn new(handle: Handle, incoming: Option<Incoming>, routed: bool) -> Self {
        let incoming = incoming.unwrap_or_else(|| {
            // Only receiving socket kinds are opened here, and those always have a queue.
            let (_, rx) = tokio::sync::mpsc::channel(1);
            rx
        });
        Consumer {
            handle,
            incoming,
            routed,
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
        if !self.routed {
            return frame::decode(&frames, &self.handle.name).map(Delivery::unacknowledged);
        }
        // The envelope is everything before the three frames of the message.
        if frames.len() < 4 {
            return Err(frame::malformed(
                &self.handle.name,
                format!(
                    "expected a routing envelope and 3 frames, got {}",
                    frames.len()
                ),
            ));
        }
        let (envelope, body) = frames.split_at(frames.len() - 3);
        let mut message = frame::decode(body, &self.handle.name)?;
        message.set_reply_to(Some(encode_route(envelope)));
        Ok(Delivery::unacknowledged(message))
    }
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
