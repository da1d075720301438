//! Request/reply: a DEALER [`Requester`] on the [request/reply core](crate::request),
//! and the reply publisher of a ROUTER consumer.

use std::fmt;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use tokio_util::sync::PollSender;
use tower::Service;
use zeromq::ZmqMessage;

use super::publisher::{poll_send_ready, queue, PeerWait, ResponseFuture as SendFuture};
use super::socket::{self, Command, Handle, Kind};
use super::{frame, Config, Framing, BROKER};
use crate::request::{route, Published, ResponseFuture, Routed, Waiters, DEFAULT_TIMEOUT};
use crate::{Code, Error, Message, Operation, Receipt};

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
    /// Whether `poll_ready` reserved a slot on `sender`.
    reserved: bool,
    ignore_unsupported: bool,
}

impl Replies {
    pub(crate) fn new(handle: Handle) -> Self {
        Replies {
            sender: PollSender::new(handle.commands.clone()),
            handle,
            reserved: false,
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
    type Future = SendFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut no_wait = None;
        ready!(poll_send_ready(
            &self.handle,
            &mut self.sender,
            &mut no_wait,
            false,
            cx
        ))
        .map_err(|()| {
            Error::transient(BROKER, Operation::Publish)
                .with_destination(self.handle.name.to_string())
                .with_reason("the socket task stopped")
        })?;
        self.reserved = true;
        Poll::Ready(Ok(()))
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, message: Message) -> SendFuture {
        let destination = message.destination().to_owned();
        if !std::mem::take(&mut self.reserved) {
            return SendFuture::from_error(
                Error::called_before_ready(BROKER, Operation::Publish)
                    .with_destination(destination),
            );
        }
        let Some(mut frames) = decode_route(&destination) else {
            self.sender.abort_send();
            return queue_error(
                destination,
                "a reply's destination must be a route from a request's reply_to",
            );
        };
        match frame::encode_any(message, false, self.handle.framing, self.ignore_unsupported) {
            Ok(body) => frames.extend(body),
            Err(error) => {
                self.sender.abort_send();
                return SendFuture::from_error(error);
            }
        }
        queue(&self.handle, &mut self.sender, frames, destination)
    }
}

fn queue_error(destination: String, reason: &'static str) -> SendFuture {
    SendFuture::from_error(
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

/// A DEALER socket as a `Service<Message, Response = Message>`: sends each request to
/// one connected REP or ROUTER peer (round robin) and waits for its reply, at most
/// [`Requester::timeout`]; built on the [request/reply core](crate::request).
///
/// Each request goes out as ZeroMQ's request-reply envelope: a request id frame (the
/// request's correlation id, unique to this requester) and an empty delimiter, then
/// the message in the socket's [framing](super::frame). REP and ROUTER peers
/// (libzmq's included) send the envelope back with the reply, which is how replies
/// find their request: many requests may be in flight at once, and the messages' own
/// correlation ids are left alone. `poll_ready` is `Pending` until a peer is
/// connected. A request that times out fails with a transient error (operation
/// `request`, the request's destination); its late reply is dropped. A reply that does
/// not parse fails its request.
pub struct Requester {
    handle: Handle,
    sender: PollSender<Command>,
    /// Whether `poll_ready` reserved a slot on `sender`.
    reserved: bool,
    peer_wait: PeerWait,
    waiters: Waiters,
    timeout: Duration,
    ignore_unsupported: bool,
}

impl Requester {
    /// A DEALER socket per `config` (usually `connect`ing to a ROUTER or REP server).
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let (handle, incoming) = socket::open(Kind::Dealer, config).await?;
        let (waiters, dispatch) = route(handle.name.to_string());
        match incoming {
            Some(incoming) => {
                let (name, framing) = (handle.name.to_string(), handle.framing);
                let replies = stream::unfold(incoming, |mut incoming| async move {
                    let item = incoming.recv().await?;
                    Some((item, incoming))
                })
                .map(move |item| routed(item, &name, framing));
                // The socket lives while a request waits for its reply, even once the
                // requester itself is gone.
                let socket = handle.clone();
                tokio::spawn(async move {
                    dispatch.run(replies, "the socket stopped").await;
                    drop(socket);
                });
            }
            None => dispatch.close("the socket receives nothing"),
        }
        Ok(Requester {
            sender: PollSender::new(handle.commands.clone()),
            handle,
            reserved: false,
            peer_wait: None,
            waiters,
            timeout: DEFAULT_TIMEOUT,
            ignore_unsupported: false,
        })
    }

    /// As [`Publisher::ignore_unsupported`](super::Publisher::ignore_unsupported), for
    /// requests.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }

    /// How long a request waits for its reply, sending included (30 seconds unless
    /// set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connected (and bound) endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.handle.endpoints
    }

    /// How many peers are connected now.
    pub fn peers(&self) -> usize {
        self.handle.peers()
    }
}

/// A reply as the core routes it: the request id, the empty delimiter, then the reply.
fn routed(item: Result<ZmqMessage, Error>, name: &str, framing: Framing) -> Routed {
    let frames = match item {
        Ok(message) => message.into_vec(),
        Err(error) => return Routed::Failed(error),
    };
    let [id, delimiter, body @ ..] = &frames[..] else {
        tracing::warn!(socket = %name, frames = frames.len(), "reply without a request id dropped");
        return Routed::Reply(None, Err(Error::transient(BROKER, Operation::Request)));
    };
    let id = match std::str::from_utf8(id) {
        Ok(id) if delimiter.is_empty() => Some(id.to_owned()),
        _ => None,
    };
    let reply = frame::decode_any(body, false, framing, name).map_err(|e| {
        Error::transient(BROKER, Operation::Request)
            .with_code(Code::Malformed)
            .with_reason("the reply does not parse")
            .with_source(e)
    });
    Routed::Reply(id, reply)
}

impl Service<Message> for Requester {
    type Response = Message;
    type Error = Error;
    type Future = ResponseFuture<Published<SendFuture>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        ready!(poll_send_ready(
            &self.handle,
            &mut self.sender,
            &mut self.peer_wait,
            true,
            cx,
        ))
        .map_err(|()| {
            Error::transient(BROKER, Operation::Request)
                .with_destination(self.handle.name.to_string())
                .with_reason("the socket task stopped")
        })?;
        self.reserved = true;
        Poll::Ready(Ok(()))
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, request: Message) -> Self::Future {
        let destination = request.destination().to_owned();
        if !std::mem::take(&mut self.reserved) {
            return ResponseFuture::failed(
                Error::called_before_ready(BROKER, Operation::Request)
                    .with_destination(destination),
            );
        }
        let body = frame::encode_any(request, false, self.handle.framing, self.ignore_unsupported);
        // Registered before sending, so a fast reply finds its request.
        let registered = body.and_then(|body| {
            let pending = self.waiters.register().map_err(|why| {
                Error::transient(BROKER, Operation::Request)
                    .with_code(Code::ConnectionLost)
                    .with_reason(why)
            })?;
            Ok((body, pending))
        });
        let (body, pending) = match registered {
            Ok(registered) => registered,
            Err(error) => {
                self.sender.abort_send();
                let error = Error::new(BROKER, Operation::Request, error.kind())
                    .with_destination(destination)
                    .with_reason(
                        error
                            .reason()
                            .unwrap_or("the request cannot be framed")
                            .to_owned(),
                    );
                return ResponseFuture::failed(error);
            }
        };
        let mut frames = vec![
            Bytes::copy_from_slice(pending.id().as_bytes()),
            Bytes::new(),
        ];
        frames.extend(body);
        let sent = queue(&self.handle, &mut self.sender, frames, destination.clone());
        ResponseFuture::new(
            Published::new(sent, pending),
            BROKER,
            destination,
            self.timeout,
        )
    }
}

impl Clone for Requester {
    fn clone(&self) -> Self {
        Requester {
            sender: PollSender::new(self.handle.commands.clone()),
            handle: self.handle.clone(),
            reserved: false,
            peer_wait: None,
            waiters: self.waiters.clone(),
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
    use tower::ServiceExt;

    fn assert_called_before_ready(err: &Error, operation: Operation, destination: &str) {
        crate::test_support::assert_called_before_ready(err, BROKER, operation, Some(destination));
    }

    #[tokio::test]
    async fn calls_without_poll_ready_fail_permanently_then_request_and_reply_work() {
        let (mut requests, mut replies) =
            super::super::Consumer::router(&Config::new().bind("tcp://127.0.0.1:0"))
                .await
                .expect("bind ROUTER");
        let endpoint = requests.endpoints()[0].clone();
        let mut requester = Requester::connect(&Config::new().connect(&endpoint))
            .await
            .expect("DEALER")
            .timeout(Duration::from_secs(10));

        let err = requester.call(Message::new("rpc", "2")).await.unwrap_err();
        assert_called_before_ready(&err, Operation::Request, "rpc");
        let err = replies
            .call(Message::new("zmq-route:00.", "x"))
            .await
            .unwrap_err();
        assert_called_before_ready(&err, Operation::Publish, "zmq-route:00.");

        // Both work as usual afterwards.
        let answer = tokio::spawn(async move {
            requester
                .ready()
                .await?
                .call(Message::new("rpc", "2"))
                .await
        });
        let served = tokio::time::timeout(Duration::from_secs(10), async {
            let request = requests.next().await.expect("open").expect("a request");
            assert_eq!(request.message().payload().as_ref(), b"2");
            let route = request.message().reply_to().expect("a route").to_owned();
            replies
                .ready()
                .await
                .unwrap()
                .call(Message::new(route, "4"))
                .await
        })
        .await
        .expect("the request arrives in time");
        served.expect("the reply is sent");
        let reply = answer.await.unwrap().expect("the reply");
        assert_eq!(reply.payload().as_ref(), b"4");
    }

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
