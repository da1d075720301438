//! PUB and PUSH publishers.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use std::sync::Arc;
use std::time::Duration;

use futures_core::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::PollSender;
use tower::Service;
use zeromq::{ZmqError, ZmqMessage};

use super::socket::{self, Command, Direct, Handle, Kind};
use super::{frame, Config, BROKER};
use crate::{Error, Guarantee, Message, Operation, Receipt};

/// A PUB or PUSH socket as a `Service<Message, Response = Receipt>`.
///
/// A PUSH's `poll_ready` is `Pending` until a peer is connected; a PUB's is ready
/// without one, and what it sends while no subscriber wants it is dropped (PUB's
/// contract, as in libzmq: use [`wait_for_peers`](Self::wait_for_peers) first when
/// the first messages matter). Either is `Pending` while as many sends as the send
/// queue holds are waiting for the socket. The [`Receipt`] names the message's
/// destination (topic) and is [`Guarantee::Sent`](crate::Guarantee::Sent): the socket
/// took the message. Clones share the socket,
/// and each send goes to it directly, not through the socket's task. See the
/// [module docs](super).
///
/// Messages go out in the socket's [framing](super::frame): plain frames unless the
/// [`Config`] enables the envelope. What the framing cannot carry fails the publish
/// with a permanent error naming it (headers and properties in plain frames; priority
/// and time to live, which nothing in ZeroMQ enforces, in either), unless
/// [`Publisher::ignore_unsupported`] says otherwise.
pub struct Publisher {
    /// One reference for all of the socket's handles: cloning a publisher per message
    /// is the usual way to use it.
    handle: Arc<Handle>,
    /// Whether `poll_ready` reserved a send slot.
    reserved: bool,
    /// A wait for a send slot in progress; in a `Mutex` for the reason [`PeerWait`] is.
    slot_wait: Option<std::sync::Mutex<BoxFuture<'static, ()>>>,
    peer_wait: PeerWait,
    ignore_unsupported: bool,
    topic: bool,
    /// Whether readiness waits for a peer (PUSH) or not (PUB).
    need_peer: bool,
}

impl Publisher {
    /// A PUB socket: every connected SUB whose subscription prefixes the destination
    /// gets a copy, and a message no SUB subscribed to is dropped. Ready without a
    /// subscriber (it never waits for one).
    pub async fn publish(config: &Config) -> Result<Self, Error> {
        Self::open(Kind::Pub, config).await
    }

    /// A PUSH socket: each message goes to one connected PULL, round robin.
    pub async fn push(config: &Config) -> Result<Self, Error> {
        Self::open(Kind::Push, config).await
    }

    async fn open(kind: Kind, config: &Config) -> Result<Self, Error> {
        let topic = kind == Kind::Pub;
        let need_peer = kind.sends_need_peer();
        let (handle, _) = socket::open(kind, config).await?;
        Ok(Publisher::from_handle(Arc::new(handle), topic, need_peer))
    }

    fn from_handle(handle: Arc<Handle>, topic: bool, need_peer: bool) -> Self {
        Publisher {
            reserved: false,
            slot_wait: None,
            handle,
            peer_wait: None,
            ignore_unsupported: false,
            topic,
            need_peer,
        }
    }

    /// Publishes what the framing cannot carry instead of refusing it: plain frames
    /// leave out the headers and properties they have no place for, and the envelope
    /// carries priority and time to live for the receiver to act on (nothing on the
    /// way enforces them). Off by default.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }

    socket_accessors!();

    fn closed(&self) -> Error {
        Error::transient(BROKER, Operation::Publish)
            .with_destination(self.handle.name.to_string())
            .with_reason("the socket task stopped")
    }
}

/// Waits until `handle` has a peer; false if the socket task stopped.
pub(crate) fn wait_for_peer(handle: &Handle) -> BoxFuture<'static, bool> {
    let mut peers = handle.peers.clone();
    Box::pin(async move { peers.wait_for(|n| *n > 0).await.is_ok() })
}

/// A wait for a peer in progress. In a `Mutex` only so that services holding one are
/// `Sync`; it is only ever reached through `&mut`, so it is never locked.
pub(crate) type PeerWait = Option<std::sync::Mutex<BoxFuture<'static, bool>>>;

/// Readiness shared by the publisher and the requester: a peer, then a queue slot.
pub(crate) fn poll_send_ready(
    handle: &Handle,
    sender: &mut PollSender<Command>,
    peer_wait: &mut PeerWait,
    need_peer: bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ()>> {
    if need_peer && *handle.peers.borrow() == 0 {
        let wait = peer_wait.get_or_insert_with(|| std::sync::Mutex::new(wait_for_peer(handle)));
        let wait = wait.get_mut().unwrap_or_else(|p| p.into_inner());
        let connected = ready!(wait.as_mut().poll(cx));
        *peer_wait = None;
        if !connected {
            return Poll::Ready(Err(()));
        }
    }
    sender.poll_reserve(cx).map_err(|_| ())
}

/// Queues `frames` on the slot `poll_send_ready` reserved (the caller checks it did);
/// the future resolves once the socket took them.
pub(crate) fn queue(
    handle: &Handle,
    sender: &mut PollSender<Command>,
    frames: Vec<bytes::Bytes>,
    destination: String,
) -> ResponseFuture {
    let message = match ZmqMessage::try_from(frames) {
        Ok(message) => message,
        Err(_) => {
            return ResponseFuture::failed(
                Error::permanent(BROKER, Operation::Publish)
                    .with_destination(destination)
                    .with_reason("a message needs at least one frame"),
            )
        }
    };
    let (done, rx) = oneshot::channel();
    let command = Command {
        message,
        done,
        destination: destination.clone(),
    };
    if sender.send_item(command).is_err() {
        return ResponseFuture::failed(
            Error::transient(BROKER, Operation::Publish)
                .with_destination(destination)
                .with_reason("the socket task stopped"),
        );
    }
    ResponseFuture {
        state: State::Waiting {
            rx,
            destination,
            _handle: handle.clone(),
        },
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.need_peer && *self.handle.peers.borrow() == 0 {
            let wait = self
                .peer_wait
                .get_or_insert_with(|| std::sync::Mutex::new(wait_for_peer(&self.handle)));
            let wait = wait.get_mut().unwrap_or_else(|p| p.into_inner());
            let connected = ready!(wait.as_mut().poll(cx));
            self.peer_wait = None;
            if !connected {
                return Poll::Ready(Err(self.closed()));
            }
        }
        if !self.reserved && !self.handle.direct.slots.try_take() {
            let wait = self.slot_wait.get_or_insert_with(|| {
                let direct = self.handle.direct.clone();
                std::sync::Mutex::new(Box::pin(async move { direct.slots.take().await }))
            });
            let wait = wait.get_mut().unwrap_or_else(|p| p.into_inner());
            ready!(wait.as_mut().poll(cx));
            self.slot_wait = None;
        }
        self.reserved = true;
        Poll::Ready(Ok(()))
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, message: Message) -> ResponseFuture {
        let destination = message.shared_destination();
        if !std::mem::take(&mut self.reserved) {
            return ResponseFuture::failed(
                Error::called_before_ready(BROKER, Operation::Publish)
                    .with_destination(&*destination),
            );
        }
        let slot = Slot(self.handle.direct.clone());
        let frames = frame::encode_any(
            message,
            self.topic,
            self.handle.framing,
            self.ignore_unsupported,
        );
        let message = match frames.map(ZmqMessage::try_from) {
            Ok(Ok(message)) => message,
            Ok(Err(_)) => {
                return ResponseFuture::failed(
                    Error::permanent(BROKER, Operation::Publish)
                        .with_destination(&*destination)
                        .with_reason("a message needs at least one frame"),
                )
            }
            Err(error) => return ResponseFuture::failed(error),
        };
        ResponseFuture {
            state: State::Sending(Box::pin(send(slot, message, self.need_peer, destination))),
        }
    }
}

/// A send slot taken in `poll_ready`, given back when the send is over (or was never
/// made).
struct Slot(Arc<Direct>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.slots.give_back();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.reserved {
            self.handle.direct.slots.give_back();
        }
    }
}

/// How long a send that found no peer waits for the monitor to report the loss
/// before it looks for a peer again.
const RECHECK: Duration = Duration::from_millis(10);

/// Sends `message` on the socket itself; where the socket needs a peer and had none
/// (it went away since readiness said there was one), keeps the message until a peer
/// is back instead of losing it.
async fn send(
    slot: Slot,
    mut message: ZmqMessage,
    need_peer: bool,
    destination: Arc<str>,
) -> Result<Receipt, Error> {
    let direct = &slot.0;
    loop {
        let sent = direct.socket.lock().await.send(message).await;
        match sent {
            Ok(()) => return Ok(Receipt::new(BROKER, destination, Guarantee::Sent)),
            Err(ZmqError::ReturnToSender { message: back, .. }) if need_peer => {
                message = back;
                let mut peers = direct.peers.clone();
                if *peers.borrow_and_update() > 0 {
                    // The monitor has not reported the loss yet.
                    let _ = tokio::time::timeout(RECHECK, peers.changed()).await;
                }
                if peers.wait_for(|n| *n > 0).await.is_err() {
                    return Err(Error::transient(BROKER, Operation::Publish)
                        .with_destination(&*destination)
                        .with_reason("the socket task stopped before sending"));
                }
            }
            Err(err) => return Err(socket::error(Operation::Publish, &destination, err)),
        }
    }
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher::from_handle(self.handle.clone(), self.topic, self.need_peer)
            .ignore_unsupported(self.ignore_unsupported)
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("socket", &self.handle.name)
            .field("peers", &self.peers())
            .field("framing", &self.handle.framing)
            .field("ignore_unsupported", &self.ignore_unsupported)
            .finish()
    }
}

/// The future [`Publisher::call`] returns: resolves once the socket took the message.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Failed(Option<Error>),
    /// A publisher's send on the socket itself.
    Sending(BoxFuture<'static, Result<Receipt, Error>>),
    Waiting {
        rx: oneshot::Receiver<Result<(), Error>>,
        destination: String,
        // Keeps the socket task alive until the message is handed over.
        _handle: Handle,
    },
}

impl ResponseFuture {
    pub(crate) fn from_error(error: Error) -> Self {
        ResponseFuture::failed(error)
    }

    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Receipt, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            State::Failed(error) => Poll::Ready(Err(error.take().unwrap_or_else(|| {
                Error::permanent(BROKER, Operation::Publish).with_reason("polled after completion")
            }))),
            State::Sending(send) => send.as_mut().poll(cx),
            State::Waiting {
                rx, destination, ..
            } => {
                let result = ready!(Pin::new(rx).poll(cx));
                Poll::Ready(match result {
                    Ok(Ok(())) => Ok(Receipt::new(BROKER, destination.clone(), Guarantee::Sent)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(Error::transient(BROKER, Operation::Publish)
                        .with_destination(destination.clone())
                        .with_reason("the socket task stopped before sending")),
                })
            }
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_call_without_poll_ready_fails_permanently_then_publishing_works() {
        let mut publisher = Publisher::publish(&Config::new().bind("tcp://127.0.0.1:0"))
            .await
            .expect("bind PUB");
        let err = publisher
            .call(Message::new("orders", "x"))
            .await
            .unwrap_err();
        crate::test_support::assert_called_before_ready(
            &err,
            BROKER,
            Operation::Publish,
            Some("orders"),
        );
        let receipt = publisher
            .ready()
            .await
            .unwrap()
            .call(Message::new("orders", "y"))
            .await
            .unwrap();
        assert_eq!(receipt.destination(), "orders");
    }
}
