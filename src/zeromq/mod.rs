//! ZeroMQ (the pure-Rust `zeromq` crate): PUB/SUB with topic prefixes, PUSH/PULL work
//! queues and DEALER/ROUTER (REQ/REP compatible) request/reply, as tower services and
//! streams.
//!
//! There is no broker: sockets [`bind`](Config::bind) or [`connect`](Config::connect)
//! to each other directly. Every socket runs in a task of its own that:
//!
//! - **redials**: zeromq's PUSH, PULL, PUB and DEALER sockets never reconnect to a peer
//!   that went away; tower-mq redials every connected endpoint, with backoff between
//!   [`Config::reconnect_backoff`]'s bounds, until its peer is back (a peer restarted on the
//!   same port gets messages again). SUB sockets are reconnected by zeromq itself.
//! - **waits for a peer** where a send needs one: a PUSH or DEALER with no connected
//!   peer would refuse what it sends, so the [`Publisher`]'s (PUSH) and the
//!   [`Requester`]'s `poll_ready` is `Pending` until a peer is connected, as reported
//!   by the socket monitor. A message whose peer vanished between readiness and the
//!   send is kept and sent once a peer is back. A PUB does not wait: it is ready
//!   without a subscriber and drops what nobody subscribed to, as PUB does in libzmq
//!   ([`Publisher::wait_for_peers`] waits for subscribers when that matters).
//! - **pushes back**: at most [`Config::send_queue`] sends wait for the socket at
//!   a time; when the socket's own per-peer queue is full, sends wait, and once that
//!   many wait `poll_ready` is `Pending`: backpressure, not loss. zeromq's per-peer
//!   queue holds 100,000 messages (not configurable in zeromq 0.7) on top of the TCP
//!   buffers, so a stalled PULL peer is felt only after that many messages.
//!
//! The task does not carry messages: a [`Publisher`] (PUB, PUSH) hands each message to
//! the socket itself, and a SUB or PULL [`Consumer`] reads the socket itself, taking
//! every message that is ready at once (up to [`Config::receive_queue`]). Only
//! DEALER and ROUTER sockets, whose sends and receives share the socket, send and read
//! through the task.
//!
//! Even once a SUB is connected, its subscription reaches the PUB a moment later, and
//! until then the PUB drops what it sends: ZeroMQ's "slow joiner",
//! as in libzmq. Publish a probe until the subscriber sees it, or use PUSH/PULL when
//! the first messages matter.
//!
//! ZeroMQ itself confirms nothing: a receipt is [`Guarantee::Sent`](crate::Guarantee::Sent):
//! "handed to the socket", and deliveries are [untracked](crate::Delivery::unacknowledged)
//! (settling them tells no one). What a peer that restarts had received but not
//! handled, and what was queued for it or in flight on the old connection, is lost:
//! ZeroMQ is at most once across peer restarts.
//!
//! # On the wire
//!
//! By default messages travel as **plain frames**, what every libzmq peer sends and
//! reads: a PUB sends `[topic, payload]`, a PUSH or DEALER `[payload]`, and a
//! receiver takes the last frame as the payload and a SUB's first frame as the
//! destination, whoever sent them. Nothing is lost on receipt: other frames before
//! the payload become [`FRAME_HEADER`] headers, in order, and go back out as the same
//! frames when the message is republished (the table is in [`frame`]). ZeroMQ frames
//! have no place for anything else, so a publish that sets headers or properties
//! fails with a permanent error naming each of them; [`Publisher::ignore_unsupported`]
//! leaves them out instead.
//!
//! Between tower-mq peers, [`Config::framing`]`(`[`Framing::Envelope`]`)` sends
//! the project's versioned envelope, `[topic, header block, payload]`, which carries
//! every field of the message, header types included; its receivers still take plain
//! frames from other peers. The layers that add headers or properties (trace context
//! headers, compression's content encoding) need the envelope on both ends: with
//! plain frames their publishes fail with an error naming what they added, never
//! silently.
//!
//! | field | plain frames | envelope |
//! | ----- | ------------ | -------- |
//! | destination | PUB: first frame (the topic; none when empty); PUSH, DEALER: not sent | frame 0 |
//! | payload | last frame | frame 2 |
//! | key, headers, timestamp, message id, correlation id, reply-to, content type, content encoding, message type, app id, user id | refused (no place in a frame); `zmq-frame` headers are frames | header block |
//! | priority, time to live | refused (nothing enforces them) | refused; carried unenforced with `ignore_unsupported` |
//! | persistent | not sent (ZeroMQ stores nothing); plain deliveries are not persistent | header block flag |
//!
//! Request/reply uses ZeroMQ's own request-reply envelope: a [`Requester`] sends a
//! request id frame and an empty delimiter before the message, as a REQ socket with
//! request correlation does, and a ROUTER [`Consumer`] answers through whatever
//! envelope the requesting peer sent (identity, frames up to the delimiter), so plain
//! REQ, REP, DEALER and ROUTER peers interoperate both ways.
//!
//! A malformed message (only an envelope can be: the receiver enabled it and the
//! frames are marked as one, but do not parse) is an `Err` item on the consumer
//! stream with a transient error, so `serve` logs it and goes on; the stream continues
//! with the next message.
//!
//! Errors name the broker `zeromq`, the operation and the endpoint or destination;
//! failed binds and sends are transient, invalid endpoints and messages a framing
//! cannot carry permanent.
//!
//! # Example
//!
//! ```
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_mq::zeromq::{Config, Consumer, Framing, Publisher};
//! use tower_mq::Message;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_mq::BoxError> {
//! // A PULL worker binds; a PUSH publisher connects (and redials if the worker restarts).
//! // Plain frames: any libzmq PUSH or PULL peer could stand on either side.
//! let mut worker = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0")).await?;
//! let endpoint = worker.endpoints()[0].clone();
//! let publisher = Publisher::push(&Config::new().connect(&endpoint)).await?;
//! let receipt = publisher.clone().oneshot(Message::new("jobs", "resize 42")).await?;
//! println!("{receipt}");
//! let delivery = worker.next().await.expect("the socket is open")?;
//! assert_eq!(delivery.message().payload(), "resize 42");
//!
//! // Headers need the envelope, on both ends.
//! let err = publisher
//!     .oneshot(Message::new("jobs", "resize 43").with_header("tenant", "acme"))
//!     .await
//!     .unwrap_err();
//! assert!(err.to_string().contains("header `tenant`"));
//!
//! let envelope = Config::new().framing(Framing::Envelope);
//! let mut worker = Consumer::pull(&envelope.clone().bind("tcp://127.0.0.1:0")).await?;
//! let endpoint = worker.endpoints()[0].clone();
//! let publisher = Publisher::push(&envelope.connect(&endpoint)).await?;
//! publisher
//!     .oneshot(Message::new("jobs", "resize 44").with_header("tenant", "acme"))
//!     .await?;
//! let delivery = worker.next().await.expect("the socket is open")?;
//! assert_eq!(delivery.message().headers().get_str("tenant"), Some("acme"));
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use crate::connect_retry::ReconnectBackoff;

/// The accessors of a socket's endpoints and peers, the same on every socket type
/// that has them, read from its `handle` (a `socket::Handle`).
macro_rules! socket_accessors {
    () => {
        /// The bound endpoints (ports resolved) and the connected ones.
        pub fn endpoints(&self) -> &[String] {
            &self.handle.endpoints
        }

        /// How many peers are connected now.
        pub fn peers(&self) -> usize {
            self.handle.peers()
        }

        /// Waits until at least `count` peers are connected (false if the socket stopped).
        pub async fn wait_for_peers(&self, count: usize) -> bool {
            self.handle.wait_for_peers(count).await
        }
    };
}

mod consumer;
pub mod frame;
mod publisher;
mod request;
mod socket;

pub use consumer::Consumer;
pub use frame::{Framing, FRAME_HEADER};
pub use publisher::{Publisher, ResponseFuture};
pub use request::{Replies, Requester, ROUTE_PREFIX};

/// The broker name in errors.
pub const BROKER: &str = "zeromq";

/// Where a socket binds and connects, how it queues and redials, and how its messages
/// travel.
///
/// ```
/// use std::time::Duration;
/// use tower_mq::zeromq::{Config, Framing};
///
/// let config = Config::new()
///     .bind("tcp://127.0.0.1:0")
///     .connect("tcp://127.0.0.1:5555")
///     .send_queue(256)
///     .reconnect_backoff(Duration::from_millis(20), Duration::from_secs(2))
///     .framing(Framing::Envelope);
/// assert_eq!(config.binds(), ["tcp://127.0.0.1:0"]);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    binds: Vec<String>,
    connects: Vec<String>,
    send_queue: usize,
    receive_queue: usize,
    pub(crate) redial: ReconnectBackoff,
    connect_timeout: Duration,
    pub(crate) framing: Framing,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            binds: Vec::new(),
            connects: Vec::new(),
            send_queue: 1024,
            receive_queue: 1024,
            redial: ReconnectBackoff::new(Duration::from_millis(10), Duration::from_secs(1)),
            connect_timeout: Duration::from_millis(250),
            framing: Framing::Plain,
        }
    }
}

impl Config {
    /// No endpoints; 1024-message send and receive queues; redial between 10 ms and 1 s;
    /// plain frames.
    pub fn new() -> Self {
        Config::default()
    }

    /// Binds to `endpoint` (e.g. `tcp://127.0.0.1:0`; port 0 picks a free port, read
    /// it back from the socket's `endpoints()`).
    pub fn bind(mut self, endpoint: impl Into<String>) -> Self {
        self.binds.push(endpoint.into());
        self
    }

    /// Connects to `endpoint`, redialling whenever its peer goes away.
    pub fn connect(mut self, endpoint: impl Into<String>) -> Self {
        self.connects.push(endpoint.into());
        self
    }

    /// How many sends may wait for the socket before `poll_ready` is `Pending`.
    pub fn send_queue(mut self, messages: usize) -> Self {
        self.send_queue = messages;
        self
    }

    /// How many received messages may wait for the consumer before the socket stops
    /// reading (and peers feel backpressure); for a SUB or PULL consumer, which reads
    /// its socket itself, the most messages it takes from the socket at a time.
    pub fn receive_queue(mut self, messages: usize) -> Self {
        self.receive_queue = messages;
        self
    }

    /// The first and the longest wait between dials of an endpoint whose peer is gone:
    /// ceilings, each wait being drawn at random below its ceiling (full jitter), so
    /// that sockets that lost one peer together do not redial it together.
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.redial = ReconnectBackoff::new(min, max);
        self
    }

    /// How long one dial may try before the socket does other work and dials again.
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How messages travel: [`Framing::Plain`] frames (the default), which any libzmq
    /// peer sends and reads, or the project's [`Framing::Envelope`], which carries
    /// headers and properties between tower-mq peers. See [`frame`].
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }

    /// The endpoints to bind.
    pub fn binds(&self) -> &[String] {
        &self.binds
    }

    /// The endpoints to connect to.
    pub fn connects(&self) -> &[String] {
        &self.connects
    }
}
