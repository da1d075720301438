//! Request/reply over any broker: a [`Requester`] that sends a request and waits for
//! its reply, and a [`Replier`] that answers requests.
//!
//! # The contract
//!
//! A requester is a `Service<Message, Response = Message, Error = tower_mq::Error>`: the
//! request goes in, the reply comes out. Every broker's requester is built on one
//! core, so they behave alike: a correlation id per request (a random prefix per reply
//! route and a counter), a table of the requests waiting for a reply, one deadline
//! covering the send and the wait (a transient [`Operation::Request`] error with code
//! [`Timeout`](tower_mq_core::Code::Timeout) naming the request's destination),
//! cancellation (a dropped response future leaves nothing behind; its late reply is
//! dropped and counted), and a closed reply route failing its waiting requests at once
//! (code [`ConnectionLost`](tower_mq_core::Code::ConnectionLost)). Only the route a
//! reply takes differs, each broker's native one where it has one:
//!
//! | broker | requester | the reply route | the correlation id travels as |
//! |---|---|---|---|
//! | any (memory, Redis) | [`Requester`] over a publisher and a consumer | a reply destination the requester owns | the `correlation_id` property |
//! | Kafka | `kafka::Requester` (this [`Requester`]) | a reply topic and a group of its own | the `correlation_id` property |
//! | RabbitMQ | `rabbitmq::Requester` | direct reply-to, no queue | the `correlation_id` property |
//! | NATS | `nats::Requester` | one inbox subscription per requester | the last token of the reply subject |
//! | ZeroMQ | `zeromq::Requester` (DEALER) | the socket itself | the request id frame of the envelope |
//!
//! Everything written against the contract (layers, the conformance suite) takes any
//! of them.
//!
//! # The generic requester
//!
//! [`Requester`] builds request/reply from two things any broker has: a publisher
//! (`Service<Message, Response = Receipt>`) and a consumer stream of the deliveries on
//! a reply destination the requester owns. For each request it sets
//! [`reply_to`](Message::reply_to) to that destination and a unique
//! [`correlation_id`](Message::correlation_id) (a random per-requester prefix and a
//! counter; one the caller set is replaced), publishes it, and waits for the reply
//! carrying the same correlation id.
//!
//! A background task, spawned by [`Requester::new`], reads the reply stream, hands
//! each reply to the caller waiting for its correlation id and acknowledges it. Replies
//! for unknown or expired ids are acknowledged, dropped and counted
//! ([`Requester::dropped_replies`]). The task ends, dropping the reply stream, once the
//! requester, all its clones and all the response futures they returned are dropped.
//!
//! Every request has a deadline ([`Requester::timeout`], 30 seconds unless set),
//! measured on tokio's clock from the call and covering both the publish and the wait.
//! Missing it fails with a transient [`Error`] (operation
//! [`Request`](Operation::Request), the request's destination). A request that times
//! out, fails to publish or whose caller stops waiting leaves nothing behind.
//!
//! If the reply stream ends, or fails permanently, waiting requests fail at once with
//! a transient error and the requester's `poll_ready` fails from then on: the
//! requester is spent and must be rebuilt (tower's reconnect pattern does exactly
//! that). Readiness otherwise is the publisher's.
//!
//! # Answering requests
//!
//! [`Replier`] wraps a handler `Service<Delivery>` whose response is the reply (a
//! [`Message`], [`Bytes`] or anything else implementing [`IntoReply`]) and a publisher.
//! It publishes each response to the request's `reply_to`, with the request's
//! correlation id, and returns the publisher's [`Receipt`]. A request without
//! `reply_to` fails with a permanent error and the handler is not called. It is itself
//! a handler: run it on the request consumer like any other. A reply that cannot be
//! published fails the call with the publisher's error, so the request is redelivered
//! and handled again: handlers behind a replier should be idempotent.
//!
//! # Example
//!
//! Request/reply over the in-memory broker:
//!
//! ```
//! use std::future::IntoFuture;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceExt};
//! use tower_mq::memory::Broker;
//! use tower_mq::request::{Replier, Requester};
//! use tower_mq::{serve, BoxError, Delivery, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let broker = Broker::new();
//!
//! // The serving side: a work queue on `rpc.upper`, answered with the upper-cased payload.
//! let upper = service_fn(|request: Delivery| async move {
//!     Ok::<_, BoxError>(String::from_utf8_lossy(request.message().payload()).to_uppercase())
//! });
//! let requests = broker.consumer("rpc.upper", "upper-service")?;
//! tokio::spawn(serve(requests, Replier::new(upper, broker.publisher())).into_future());
//!
//! // The requesting side: replies come back on a topic of its own.
//! let requester = Requester::new(
//!     broker.publisher(),
//!     broker.subscribe("replies.client-1")?,
//!     "replies.client-1",
//! )
//! .timeout(Duration::from_secs(5));
//! let reply = requester.clone().oneshot(Message::new("rpc.upper", "hello")).await?;
//! assert_eq!(reply.payload().as_ref(), b"HELLO");
//!
//! // Nobody serves `rpc.lower`: the request times out with a transient error.
//! let err = requester
//!     .timeout(Duration::from_millis(10))
//!     .oneshot(Message::new("rpc.lower", "HELLO"))
//!     .await
//!     .unwrap_err();
//! assert!(err.is_transient());
//! assert_eq!(err.destination(), Some("rpc.lower"));
//! # Ok(())
//! # }
//! ```

mod correlation;

use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_mq_core::{BoxError, Delivery, Error, Message, Operation, Receipt};

#[cfg(feature = "rabbitmq")]
pub(crate) use self::correlation::Dispatch;
#[cfg(any(feature = "nats", feature = "rabbitmq"))]
pub(crate) use self::correlation::Shared;
pub(crate) use self::correlation::{route, Routed, Waiters};
pub use self::correlation::{BoxResponseFuture, Pending, Published, ResponseFuture};

/// The broker name on errors the generic requester raises itself, unless set with
/// [`Requester::broker_name`].
const REQUESTER: &str = "requester";
/// The broker name on errors the replier raises itself.
const REPLIER: &str = "replier";

/// How long a request waits for its reply unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Request/reply over a publisher and a reply consumer. See the [module docs](self).
pub struct Requester<P> {
    publisher: P,
    waiters: Waiters,
    timeout: Duration,
    broker: &'static str,
}

/// A reply delivery as the core routes it, acknowledged first: a reply is consumed
/// whether or not anyone wants it, as redelivering it would not make a caller appear.
async fn routed(item: Result<Delivery, Error>) -> Routed {
    let delivery = match item {
        Ok(delivery) => delivery,
        Err(error) if error.is_transient() => return Routed::Failed(error),
        Err(error) => {
            tracing::error!(%error, "reply consumer failed permanently");
            return Routed::Ended("the reply consumer failed permanently");
        }
    };
    let (reply, acker) = delivery.into_parts();
    if acker.is_tracked() {
        tokio::spawn(async move {
            if let Err(error) = acker.ack().await {
                tracing::warn!(%error, "could not acknowledge a reply");
            }
        });
    } else {
        // Settles locally and returns at once.
        let _ = acker.ack().await;
    }
    Routed::Reply(reply.correlation_id().map(str::to_owned), Ok(reply))
}

impl<P> Requester<P> {
    /// A requester publishing through `publisher` and reading replies from `replies`,
    /// a consumer of the destination `reply_to` that this requester alone reads.
    ///
    /// Spawns the reply-routing task on the current tokio runtime; see
    /// [`Requester::pair`] to spawn it yourself.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime, like `tokio::spawn`.
    pub fn new<St>(publisher: P, replies: St, reply_to: impl Into<String>) -> Self
    where
        St: Stream<Item = Result<Delivery, Error>> + Send + 'static,
    {
        let (requester, task) = Requester::pair(publisher, replies, reply_to);
        tokio::spawn(task);
        requester
    }

    /// Like [`Requester::new`], but returns the reply-routing task for the caller to
    /// run (it must run for replies to arrive).
    pub fn pair<St>(
        publisher: P,
        replies: St,
        reply_to: impl Into<String>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static)
    where
        St: Stream<Item = Result<Delivery, Error>> + Send + 'static,
    {
        let (waiters, dispatch) = route(reply_to);
        let task = async move {
            dispatch
                .run(replies.then(routed), "the reply consumer ended")
                .await;
        };
        let requester = Requester {
            publisher,
            waiters,
            timeout: DEFAULT_TIMEOUT,
            broker: REQUESTER,
        };
        (requester, task)
    }

    /// Sets how long each request waits for its reply (publishing included).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the broker named on the errors the requester raises itself (timeouts, a
    /// spent reply consumer), e.g. `"redis"`. Defaults to `"requester"`.
    pub fn broker_name(mut self, broker: &'static str) -> Self {
        self.broker = broker;
        self
    }

    /// The per-request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// The destination replies are sent to.
    pub fn reply_to(&self) -> &str {
        self.waiters.reply_to()
    }

    /// How many requests are waiting for a reply, across all clones.
    pub fn waiting(&self) -> usize {
        self.waiters.waiting()
    }

    /// How many replies were dropped because no request was waiting for them
    /// (unknown or expired correlation ids, or no correlation id at all).
    pub fn dropped_replies(&self) -> u64 {
        self.waiters.dropped_replies()
    }

    /// The publisher.
    pub fn get_ref(&self) -> &P {
        &self.publisher
    }

    /// The publisher, mutably.
    pub fn get_mut(&mut self) -> &mut P {
        &mut self.publisher
    }

    fn spent(&self, why: &'static str, destination: &str) -> Error {
        Error::transient(self.broker, Operation::Request)
            .with_code(tower_mq_core::Code::ConnectionLost)
            .with_destination(destination)
            .with_reason(why)
    }
}

impl<P: Clone> Clone for Requester<P> {
    fn clone(&self) -> Self {
        Requester {
            publisher: self.publisher.clone(),
            waiters: self.waiters.clone(),
            timeout: self.timeout,
            broker: self.broker,
        }
    }
}

impl<P> fmt::Debug for Requester<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("reply_to", &self.reply_to())
            .field("timeout", &self.timeout)
            .field("waiting", &self.waiting())
            .field("dropped_replies", &self.dropped_replies())
            .finish()
    }
}

impl<P> Service<Message> for Requester<P>
where
    P: Service<Message, Response = Receipt>,
    P::Error: Into<BoxError>,
{
    type Response = Message;
    type Error = Error;
    type Future = ResponseFuture<Published<P::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if let Some(why) = self.waiters.closed() {
            return Poll::Ready(Err(self.spent(why, self.reply_to())));
        }
        self.publisher.poll_ready(cx).map_err(|e| {
            correlation::into_model_error(
                e.into(),
                self.broker,
                Operation::Publish,
                self.reply_to(),
            )
        })
    }

    fn call(&mut self, mut request: Message) -> Self::Future {
        let destination = request.destination().to_owned();
        // Registered before publishing, so a fast reply finds its caller.
        let pending = match self.waiters.register() {
            Ok(pending) => pending,
            Err(why) => return ResponseFuture::failed(self.spent(why, &destination)),
        };
        request.set_correlation_id(Some(pending.id().to_owned()));
        request.set_reply_to(Some(self.reply_to().to_owned()));
        let publish = Published::new(self.publisher.call(request), pending);
        ResponseFuture::new(publish, self.broker, destination, self.timeout)
    }
}

/// A handler response that can be sent as a reply.
pub trait IntoReply {
    /// The reply message for `reply_to`. The [`Replier`] then sets the request's
    /// correlation id on it.
    fn into_reply(self, reply_to: &str) -> Message;
}

impl IntoReply for Message {
    /// The message, redirected to `reply_to`; its payload, headers and other
    /// properties are kept.
    fn into_reply(mut self, reply_to: &str) -> Message {
        self.set_destination(reply_to);
        self
    }
}

impl IntoReply for Bytes {
    fn into_reply(self, reply_to: &str) -> Message {
        Message::new(reply_to, self)
    }
}

impl IntoReply for Vec<u8> {
    fn into_reply(self, reply_to: &str) -> Message {
        Message::new(reply_to, self)
    }
}

impl IntoReply for String {
    fn into_reply(self, reply_to: &str) -> Message {
        Message::new(reply_to, self)
    }
}

impl IntoReply for &'static str {
    fn into_reply(self, reply_to: &str) -> Message {
        Message::new(reply_to, self)
    }
}

/// Answers requests: runs the handler and publishes its response to the request's
/// `reply_to`. See the [module docs](self).
///
/// Ready when both the handler and the publisher are; the publisher's readiness is
/// carried into the response future (clone-then-swap), so the reply is published
/// without waiting again.
pub struct Replier<S, P> {
    handler: S,
    publisher: P,
}

impl<S, P> Replier<S, P> {
    /// Answers requests with `handler`, publishing replies through `publisher`.
    pub fn new(handler: S, publisher: P) -> Self {
        Replier { handler, publisher }
    }

    /// The handler.
    pub fn get_ref(&self) -> &S {
        &self.handler
    }

    /// The handler, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.handler
    }

    /// The publisher replies go through.
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    /// The handler and the publisher.
    pub fn into_inner(self) -> (S, P) {
        (self.handler, self.publisher)
    }
}

impl<S: Clone, P: Clone> Clone for Replier<S, P> {
    fn clone(&self) -> Self {
        Replier {
            handler: self.handler.clone(),
            publisher: self.publisher.clone(),
        }
    }
}

impl<S, P> fmt::Debug for Replier<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replier").finish_non_exhaustive()
    }
}

impl<S, P> Service<Delivery> for Replier<S, P>
where
    S: Service<Delivery>,
    S::Response: IntoReply,
    S::Error: Into<BoxError>,
    P: Service<Message, Response = Receipt> + Clone,
    P::Error: Into<BoxError>,
{
    type Response = Receipt;
    type Error = BoxError;
    type Future = ReplyFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Poll both so both register interest, then report the slower one.
        let handler = self.handler.poll_ready(cx).map_err(Into::into)?;
        let publisher = self.publisher.poll_ready(cx).map_err(Into::into)?;
        match (handler, publisher) {
            (Poll::Ready(()), Poll::Ready(())) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn call(&mut self, request: Delivery) -> Self::Future {
        let message = request.message();
        let Some(reply_to) = message.reply_to().map(str::to_owned) else {
            let error = Error::permanent(REPLIER, Operation::Handle)
                .with_destination(message.destination())
                .with_reason("the request has no reply_to destination");
            return ReplyFuture {
                state: ReplyState::Failed {
                    error: Some(error.into()),
                },
            };
        };
        let correlation_id = message.correlation_id().map(str::to_owned);
        // The ready publisher goes with the future; a fresh clone stays to be polled.
        let clone = self.publisher.clone();
        let publisher = mem::replace(&mut self.publisher, clone);
        ReplyFuture {
            state: ReplyState::Handling {
                handle: self.handler.call(request),
                publisher: Some(publisher),
                reply_to,
                correlation_id,
            },
        }
    }
}

pin_project! {
    #[project = ReplyStateProj]
    enum ReplyState<F, P: Service<Message>> {
        Handling {
            #[pin]
            handle: F,
            publisher: Option<P>,
            reply_to: String,
            correlation_id: Option<String>,
        },
        Publishing { #[pin] publish: P::Future },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// The future a [`Replier`] returns: handles the request, then publishes the reply.
    pub struct ReplyFuture<F, P: Service<Message>> {
        #[pin]
        state: ReplyState<F, P>,
    }
}

impl<F, P: Service<Message>> fmt::Debug for ReplyFuture<F, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            ReplyState::Handling { .. } => "handling",
            ReplyState::Publishing { .. } => "publishing",
            ReplyState::Failed { .. } => "failed",
        };
        f.debug_tuple("ReplyFuture").field(&state).finish()
    }
}

impl<F, R, E, P> Future for ReplyFuture<F, P>
where
    F: Future<Output = Result<R, E>>,
    R: IntoReply,
    E: Into<BoxError>,
    P: Service<Message, Response = Receipt>,
    P::Error: Into<BoxError>,
{
    type Output = Result<Receipt, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                ReplyStateProj::Handling {
                    handle,
                    publisher,
                    reply_to,
                    correlation_id,
                } => {
                    let response = ready!(handle.poll(cx)).map_err(Into::into)?;
                    let mut reply = response.into_reply(reply_to);
                    if let Some(id) = correlation_id.take() {
                        reply.set_correlation_id(Some(id));
                    }
                    let Some(mut publisher) = publisher.take() else {
                        return Poll::Ready(Err(Error::permanent(REPLIER, Operation::Publish)
                            .with_destination(reply_to.as_str())
                            .with_reason("reply future polled after completion")
                            .into()));
                    };
                    let publish = publisher.call(reply);
                    this.state.set(ReplyState::Publishing { publish });
                }
                ReplyStateProj::Publishing { publish } => {
                    return publish.poll(cx).map_err(Into::into);
                }
                ReplyStateProj::Failed { error } => {
                    let error = error.take().unwrap_or_else(|| {
                        Error::permanent(REPLIER, Operation::Handle)
                            .with_reason("reply future polled after completion")
                            .into()
                    });
                    return Poll::Ready(Err(error));
                }
            }
        }
    }
}

/// Wraps a handler in a [`Replier`] publishing through a clone of the publisher.
#[derive(Clone)]
pub struct ReplierLayer<P> {
    publisher: P,
}

impl<P> ReplierLayer<P> {
    /// Replies go through `publisher`.
    pub fn new(publisher: P) -> Self {
        ReplierLayer { publisher }
    }
}

impl<P> fmt::Debug for ReplierLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplierLayer").finish_non_exhaustive()
    }
}

impl<S, P: Clone> Layer<S> for ReplierLayer<P> {
    type Service = Replier<S, P>;

    fn layer(&self, handler: S) -> Self::Service {
        Replier::new(handler, self.publisher.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::time::Instant;
    use tokio_stream::wrappers::UnboundedReceiverStream;
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower::{service_fn, ServiceExt};
    use tower_mq_core::{ErrorKind, Guarantee, Position, Settlement};
    use tower_test::mock;

    type Replies = mpsc::UnboundedSender<Result<Delivery, Error>>;

    fn requester() -> (
        Requester<mock::Mock<Message, Receipt>>,
        mock::Handle<Message, Receipt>,
        Replies,
    ) {
        let (publisher, handle) = mock::pair();
        let (tx, rx) = mpsc::unbounded_channel();
        let requester = Requester::new(publisher, UnboundedReceiverStream::new(rx), "replies.me")
            .timeout(Duration::from_secs(5));
        (requester, handle, tx)
    }

    fn receipt(topic: &str) -> Receipt {
        Receipt::new("memory", topic, Guarantee::Stored).with_position(Position::Sequence(1))
    }

    fn reply(request: &Message, payload: &'static str) -> Delivery {
        let mut message = Message::new(request.reply_to().unwrap(), payload);
        message.set_correlation_id(request.correlation_id().map(str::to_owned));
        Delivery::unacknowledged(message)
    }

    /// Sends a request, lets the publisher accept it and returns the published message
    /// with the pending response.
    async fn send(
        requester: &mut Requester<mock::Mock<Message, Receipt>>,
        published: &mut mock::Handle<Message, Receipt>,
        destination: &str,
    ) -> (Message, tokio::task::JoinHandle<Result<Message, Error>>) {
        published.allow(1);
        let fut = requester
            .ready()
            .await
            .unwrap()
            .call(Message::new(destination, "request"));
        let fut = tokio::spawn(fut);
        let (request, respond) = published.next_request().await.unwrap();
        respond.send_response(receipt(destination));
        (request, fut)
    }

    #[tokio::test(start_paused = true)]
    async fn sets_reply_to_and_correlation_id_and_returns_the_reply() {
        let (mut requester, mut published, replies) = requester();
        let (request, fut) = send(&mut requester, &mut published, "rpc.add").await;
        assert_eq!(request.destination(), "rpc.add");
        assert_eq!(request.reply_to(), Some("replies.me"));
        let id = request.correlation_id().unwrap();
        assert!(!id.is_empty());
        let delivery = reply(&request, "2");
        replies.send(Ok(delivery.clone())).unwrap();
        let answer = fut.await.unwrap().unwrap();
        assert_eq!(answer.payload().as_ref(), b"2");
        assert_eq!(answer.correlation_id(), Some(id));
        assert_eq!(delivery.settlement(), Some(Settlement::Acked));
        assert_eq!(requester.waiting(), 0);
        assert_eq!(requester.dropped_replies(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_reach_their_own_callers_in_any_order() {
        let (mut requester, mut published, replies) = requester();
        let (first, first_fut) = send(&mut requester, &mut published, "rpc").await;
        let mut other = requester.clone();
        let (second, second_fut) = send(&mut other, &mut published, "rpc").await;
        assert_ne!(first.correlation_id(), second.correlation_id());
        assert_eq!(requester.waiting(), 2);
        replies.send(Ok(reply(&second, "second"))).unwrap();
        replies.send(Ok(reply(&first, "first"))).unwrap();
        assert_eq!(
            second_fut.await.unwrap().unwrap().payload().as_ref(),
            b"second"
        );
        assert_eq!(
            first_fut.await.unwrap().unwrap().payload().as_ref(),
            b"first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_reply_times_out_with_a_transient_error_and_leaves_nothing() {
        let (mut requester, mut published, replies) = requester();
        let start = Instant::now();
        let (request, fut) = send(&mut requester, &mut published, "rpc.slow").await;
        let err = fut.await.unwrap().unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(err.operation(), Operation::Request);
        assert_eq!(err.destination(), Some("rpc.slow"));
        assert!(
            err.to_string().contains("no reply in time: none within 5s"),
            "{err}"
        );
        assert_eq!(requester.waiting(), 0);

        // The late reply is dropped, counted and still consumed.
        let late = reply(&request, "late");
        replies.send(Ok(late.clone())).unwrap();
        let (next, next_fut) = send(&mut requester, &mut published, "rpc").await;
        replies.send(Ok(reply(&next, "ok"))).unwrap();
        next_fut.await.unwrap().unwrap();
        assert_eq!(requester.dropped_replies(), 1);
        assert_eq!(late.settlement(), Some(Settlement::Acked));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_covers_a_slow_publish() {
        let (mut requester, mut published, _replies) = requester();
        published.allow(1);
        let fut = requester
            .ready()
            .await
            .unwrap()
            .call(Message::new("rpc", ""));
        // The publisher never answers.
        let (_request, _respond) = published.next_request().await.unwrap();
        let err = fut.await.unwrap_err();
        assert_eq!(err.operation(), Operation::Request);
        assert!(err.is_transient());
        assert_eq!(requester.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_for_unknown_ids_are_dropped_and_counted() {
        let (mut requester, mut published, replies) = requester();
        let stranger = Delivery::unacknowledged(
            Message::new("replies.me", "?").with_correlation_id("not-ours"),
        );
        replies.send(Ok(stranger.clone())).unwrap();
        replies
            .send(Ok(Delivery::unacknowledged(Message::new(
                "replies.me",
                "no id",
            ))))
            .unwrap();
        let (request, fut) = send(&mut requester, &mut published, "rpc").await;
        replies.send(Ok(reply(&request, "ok"))).unwrap();
        fut.await.unwrap().unwrap();
        assert_eq!(requester.dropped_replies(), 2);
        assert_eq!(stranger.settlement(), Some(Settlement::Acked));
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_stops_waiting_leaves_nothing() {
        let (mut requester, mut published, _replies) = requester();
        published.allow(1);
        let fut = requester
            .ready()
            .await
            .unwrap()
            .call(Message::new("rpc", ""));
        assert_eq!(requester.waiting(), 1);
        drop(fut);
        assert_eq!(requester.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn publish_failures_are_returned_and_classified() {
        let (mut requester, mut published, _replies) = requester();
        published.allow(2);
        let fut = requester
            .ready()
            .await
            .unwrap()
            .call(Message::new("rpc", ""));
        let (_, respond) = published.next_request().await.unwrap();
        respond.send_error(
            Error::permanent("memory", Operation::Publish)
                .with_destination("rpc")
                .with_reason("no such topic"),
        );
        let err = fut.await.unwrap_err();
        assert_eq!(err.broker(), "memory");
        assert_eq!(err.kind(), ErrorKind::Permanent);

        let fut = requester
            .ready()
            .await
            .unwrap()
            .call(Message::new("rpc", ""));
        let (_, respond) = published.next_request().await.unwrap();
        respond.send_error("connection reset");
        let err = fut.await.unwrap_err();
        assert_eq!(err.broker(), "requester");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some("rpc"));
        assert!(err.is_transient(), "unclassified errors count as transient");
        assert_eq!(requester.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_the_publishers() {
        let (requester, mut published, _replies) = requester();
        let mut requester = mock::Spawn::new(requester);
        published.allow(0);
        assert_pending!(requester.poll_ready());
        published.allow(1);
        assert!(requester.is_woken());
        assert_ready_ok!(requester.poll_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn the_reply_task_stops_when_the_requester_and_its_clones_are_dropped() {
        let (requester, _published, replies) = requester();
        let clone = requester.clone();
        drop(requester);
        tokio::task::yield_now().await;
        assert!(!replies.is_closed(), "a clone still holds the requester");
        drop(clone);
        tokio::time::timeout(Duration::from_secs(1), replies.closed())
            .await
            .expect("the reply stream is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_future_keeps_the_reply_task_alive() {
        let (requester, mut published, replies) = requester();
        published.allow(1);
        // `oneshot` drops the requester once the request is sent.
        let fut = tokio::spawn(requester.oneshot(Message::new("rpc", "")));
        let (request, respond) = published.next_request().await.unwrap();
        respond.send_response(receipt("rpc"));
        tokio::task::yield_now().await;
        assert!(!replies.is_closed());
        replies.send(Ok(reply(&request, "still here"))).unwrap();
        let answer = fut.await.unwrap().unwrap();
        assert_eq!(answer.payload().as_ref(), b"still here");
        tokio::time::timeout(Duration::from_secs(1), replies.closed())
            .await
            .expect("the reply stream is dropped after the last future");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_reply_stream_fails_waiting_requests_and_readiness() {
        let (mut requester, mut published, replies) = requester();
        let start = Instant::now();
        let (_request, fut) = send(&mut requester, &mut published, "rpc").await;
        drop(replies);
        let err = fut.await.unwrap().unwrap_err();
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "fails at once, not at the deadline"
        );
        assert!(err.is_transient());
        assert!(
            err.to_string().contains("the reply consumer ended"),
            "{err}"
        );
        let err = requester.ready().await.unwrap_err();
        assert_eq!(err.operation(), Operation::Request);
        assert_eq!(requester.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_consumer_errors_are_survived_permanent_ones_are_not() {
        let (mut requester, mut published, replies) = requester();
        replies
            .send(Err(Error::transient("memory", Operation::Receive)))
            .unwrap();
        let (request, fut) = send(&mut requester, &mut published, "rpc").await;
        replies.send(Ok(reply(&request, "ok"))).unwrap();
        fut.await.unwrap().unwrap();

        let (_request, fut) = send(&mut requester, &mut published, "rpc").await;
        replies
            .send(Err(Error::permanent("memory", Operation::Receive)))
            .unwrap();
        let err = fut.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("failed permanently"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn correlation_ids_are_unique_across_requesters() {
        let (a, _, _ra) = requester();
        let (b, _, _rb) = requester();
        let ids: std::collections::HashSet<String> = (0..100)
            .flat_map(|_| {
                [
                    a.waiters.register().unwrap().id().to_owned(),
                    b.waiters.register().unwrap().id().to_owned(),
                ]
            })
            .collect();
        assert_eq!(ids.len(), 200);
    }

    fn request(reply_to: Option<&str>) -> Delivery {
        let mut message = Message::new("rpc.upper", "hello").with_correlation_id("c-1");
        message.set_reply_to(reply_to.map(str::to_owned));
        Delivery::unacknowledged(message)
    }

    #[tokio::test(start_paused = true)]
    async fn replier_publishes_the_response_to_reply_to_with_the_correlation_id() {
        let handler = service_fn(|d: Delivery| async move {
            Ok::<_, BoxError>(Bytes::from(
                String::from_utf8_lossy(d.message().payload()).to_uppercase(),
            ))
        });
        let (publisher, mut published) = mock::pair::<Message, Receipt>();
        published.allow(1);
        let replier = Replier::new(handler, publisher);
        let fut = tokio::spawn(replier.oneshot(request(Some("replies.me"))));
        let (reply, respond) = published.next_request().await.unwrap();
        assert_eq!(reply.destination(), "replies.me");
        assert_eq!(reply.correlation_id(), Some("c-1"));
        assert_eq!(reply.payload().as_ref(), b"HELLO");
        respond.send_response(receipt("replies.me"));
        assert_eq!(fut.await.unwrap().unwrap(), receipt("replies.me"));
    }

    #[tokio::test(start_paused = true)]
    async fn replier_redirects_a_message_response_and_keeps_its_properties() {
        let handler = service_fn(|_: Delivery| async {
            Ok::<_, BoxError>(
                Message::new("ignored", "{}")
                    .with_header("status", "ok")
                    .with_content_type("application/json"),
            )
        });
        let (publisher, mut published) = mock::pair::<Message, Receipt>();
        published.allow(1);
        let fut = tokio::spawn(Replier::new(handler, publisher).oneshot(request(Some("r"))));
        let (reply, respond) = published.next_request().await.unwrap();
        respond.send_response(receipt("r"));
        fut.await.unwrap().unwrap();
        assert_eq!(reply.destination(), "r");
        assert_eq!(reply.correlation_id(), Some("c-1"));
        assert_eq!(reply.headers().get_str("status"), Some("ok"));
        assert_eq!(reply.content_type(), Some("application/json"));
    }

    #[tokio::test(start_paused = true)]
    async fn replier_refuses_a_request_without_reply_to() {
        let (handler, mut handled) = mock::pair::<Delivery, String>();
        let (publisher, mut published) = mock::pair::<Message, Receipt>();
        handled.allow(1);
        published.allow(1);
        let err = Replier::new(handler, publisher)
            .oneshot(request(None))
            .await
            .unwrap_err();
        let err = err.downcast::<Error>().unwrap();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.destination(), Some("rpc.upper"));
        assert!(err.to_string().contains("no reply_to"), "{err}");
        assert!(
            !matches!(handled.poll_request(), Poll::Ready(Some(_))),
            "the handler was not called"
        );
        assert!(
            !matches!(published.poll_request(), Poll::Ready(Some(_))),
            "nothing was published"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn replier_is_ready_when_handler_and_publisher_are() {
        let (handler, mut handled) = mock::pair::<Delivery, String>();
        let (publisher, mut published) = mock::pair::<Message, Receipt>();
        let mut replier = mock::Spawn::new(Replier::new(handler, publisher));
        handled.allow(1);
        published.allow(0);
        assert_pending!(replier.poll_ready());
        published.allow(1);
        assert!(replier.is_woken());
        handled.allow(0);
        // The handler's earlier readiness is still reserved.
        assert_ready_ok!(replier.poll_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn replier_passes_handler_errors_through_and_publishes_nothing() {
        let handler = service_fn(|_: Delivery| async {
            Err::<String, _>(tower_mq_core::Permanent::new("bad request"))
        });
        let (publisher, mut published) = mock::pair::<Message, Receipt>();
        published.allow(1);
        let err = Replier::new(handler, publisher)
            .oneshot(request(Some("r")))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "bad request");
        assert!(!matches!(published.poll_request(), Poll::Ready(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn requester_and_replier_talk_through_a_shared_publisher() {
        // Two destinations on one in-test bus: requests to the replier, replies to the
        // requester.
        let (requests_tx, mut requests) = mpsc::unbounded_channel::<Delivery>();
        let (replies_tx, replies) = mpsc::unbounded_channel::<Result<Delivery, Error>>();
        let bus = service_fn(move |msg: Message| {
            let (requests_tx, replies_tx) = (requests_tx.clone(), replies_tx.clone());
            async move {
                let topic = msg.destination().to_owned();
                let delivery = Delivery::unacknowledged(msg);
                let sent = if topic == "rpc.double" {
                    requests_tx.send(delivery).is_ok()
                } else {
                    replies_tx.send(Ok(delivery)).is_ok()
                };
                if !sent {
                    return Err(Error::transient("bus", Operation::Publish).with_destination(topic));
                }
                Ok(receipt(&topic))
            }
        });
        let handler = service_fn(|d: Delivery| async move {
            let n: u64 = std::str::from_utf8(d.message().payload())?.parse()?;
            Ok::<_, BoxError>((n * 2).to_string())
        });
        let mut replier = ReplierLayer::new(bus.clone()).layer(handler);
        let server = tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                replier.ready().await.unwrap().call(request).await.unwrap();
            }
        });
        let requester = Requester::new(bus, UnboundedReceiverStream::new(replies), "replies.me");
        let calls = (1..=10u64).map(|n| {
            let requester = requester.clone();
            async move {
                let reply = requester
                    .oneshot(Message::new("rpc.double", n.to_string()))
                    .await
                    .unwrap();
                (n, String::from_utf8(reply.payload().to_vec()).unwrap())
            }
        });
        for (n, doubled) in futures_util::future::join_all(calls).await {
            assert_eq!(doubled, (n * 2).to_string());
        }
        assert_eq!(requester.waiting(), 0);
        drop(requester);
        server.abort();
    }
}
