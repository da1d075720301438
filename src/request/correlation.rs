//! The request/reply core every requester is built on: correlation ids, the table of
//! requests waiting for a reply, the deadline, and cancellation.
//!
//! A broker's requester supplies two things: a way to send a request (a future that
//! registers a [`Pending`] with [`Waiters::register`] before the request leaves, so a
//! fast reply finds it, and resolves to it once the broker took the request), and a
//! stream of what arrives on its reply route, turned into [`Routed`] items and run by
//! [`Dispatch::run`]. Everything else is here, once:
//!
//! - one correlation-id scheme: a random 64-bit prefix per table and a counter
//!   (`0123456789abcdef-42`), usable as an AMQP property, a NATS subject token and a
//!   ZeroMQ request id frame alike;
//! - a waiter is removed whenever its request ends: reply, error, deadline, or the
//!   caller dropping the [`ResponseFuture`] (cancellation);
//! - a reply nobody waits for (unknown, expired or missing correlation id) is dropped,
//!   counted ([`Waiters::dropped_replies`]) and logged at debug level;
//! - when the reply route ends, every waiting request fails at once with a transient
//!   error, and so does every later registration on it;
//! - the dispatching task stops once every [`Waiters`] handle and every [`Pending`]
//!   request is gone.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::StreamExt;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant, Sleep};
use tower_mq_core::{BoxError, Code, Error, Message, Operation};
use tower_mq_layers::classify::DefaultClassifier;

/// Why a dispatcher stopped when nobody can be waiting any more.
const DROPPED: &str = "the requester was dropped";

/// A reply, or why there is none.
type Slot = oneshot::Sender<Result<Message, Error>>;

/// The waiting requests of one reply route, shared by the requesters and the task
/// that routes the replies.
struct Table {
    /// Where replies arrive, for logs and errors.
    reply_to: String,
    prefix: u64,
    next_id: AtomicU64,
    dropped_replies: AtomicU64,
    state: Mutex<State>,
}

struct State {
    waiting: HashMap<String, Slot>,
    /// Why the route closed, once it has.
    closed: Option<&'static str>,
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section is a single insert, remove or take: the map stays
        // consistent even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forget(&self, id: &str) {
        self.lock().waiting.remove(id);
    }
}

/// The requesters' side of a reply route: registers requests. Cloning is cheap; the
/// route's [`Dispatch`] runs until every clone and every [`Pending`] is dropped.
#[derive(Clone)]
pub(crate) struct Waiters {
    table: Arc<Table>,
    // Dropped with the last holder, which stops the dispatcher.
    _alive: Arc<oneshot::Sender<()>>,
}

/// The reply route's side: hands replies to their requests.
pub(crate) struct Dispatch {
    table: Arc<Table>,
    stop: oneshot::Receiver<()>,
}

/// A new reply route arriving at `reply_to`: the requesters' and the dispatcher's ends.
pub(crate) fn route(reply_to: impl Into<String>) -> (Waiters, Dispatch) {
    let table = Arc::new(Table {
        reply_to: reply_to.into(),
        prefix: fastrand::u64(..),
        next_id: AtomicU64::new(1),
        dropped_replies: AtomicU64::new(0),
        state: Mutex::new(State {
            waiting: HashMap::new(),
            closed: None,
        }),
    });
    let (alive, stop) = oneshot::channel();
    let waiters = Waiters {
        table: table.clone(),
        _alive: Arc::new(alive),
    };
    (waiters, Dispatch { table, stop })
}

impl Waiters {
    /// Registers a request under a fresh correlation id, unless the route closed
    /// (then the reason why).
    pub(crate) fn register(&self) -> Result<Pending, &'static str> {
        let n = self.table.next_id.fetch_add(1, Ordering::Relaxed);
        let id = format!("{:016x}-{n}", self.table.prefix);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.table.lock();
            if let Some(why) = state.closed {
                return Err(why);
            }
            state.waiting.insert(id.clone(), tx);
        }
        Ok(Pending {
            waiters: self.clone(),
            id,
            reply: rx,
        })
    }

    /// Why the route closed, once it has: no reply can arrive on it any more.
    pub(crate) fn closed(&self) -> Option<&'static str> {
        self.table.lock().closed
    }

    /// Where replies arrive.
    pub(crate) fn reply_to(&self) -> &str {
        &self.table.reply_to
    }

    /// How many requests wait for a reply.
    pub(crate) fn waiting(&self) -> usize {
        self.table.lock().waiting.len()
    }

    /// How many replies were dropped because no request waited for them.
    pub(crate) fn dropped_replies(&self) -> u64 {
        self.table.dropped_replies.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Waiters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waiters")
            .field("reply_to", &self.table.reply_to)
            .field("waiting", &self.waiting())
            .field("dropped_replies", &self.dropped_replies())
            .finish()
    }
}

/// A registered request waiting for its reply, inside a [`ResponseFuture`]; dropping
/// it forgets the request.
pub struct Pending {
    waiters: Waiters,
    id: String,
    reply: oneshot::Receiver<Result<Message, Error>>,
}

impl Pending {
    /// The request's correlation id: what the reply must carry back.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The reply, an error the route gave for it, or why the route closed.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Result<Message, Closed>> {
        match ready!(Pin::new(&mut self.reply).poll(cx)) {
            Ok(Ok(reply)) => Poll::Ready(Ok(reply)),
            Ok(Err(error)) => Poll::Ready(Err(Closed::Failed(error))),
            Err(_) => Poll::Ready(Err(Closed::Route(
                self.waiters.closed().unwrap_or("the reply route ended"),
            ))),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.waiters.table.forget(&self.id);
    }
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").field("id", &self.id).finish()
    }
}

enum Closed {
    Failed(Error),
    Route(&'static str),
}

/// What a broker's reply route produced, for [`Dispatch::run`].
pub(crate) enum Routed {
    /// A reply (or why it cannot be read) and the correlation id it carried.
    Reply(Option<String>, Result<Message, Error>),
    /// The route failed but goes on; logged.
    Failed(Error),
    /// The route is gone, for this reason: no reply can arrive any more.
    Ended(&'static str),
}

impl Dispatch {
    /// Hands `reply` to the request waiting for correlation id `id`; a reply nobody
    /// waits for is dropped, counted and logged. Whether a request took it.
    pub(crate) fn resolve(&self, id: Option<&str>, reply: Result<Message, Error>) -> bool {
        let waiting = id.and_then(|id| self.table.lock().waiting.remove(id));
        let why = match waiting {
            Some(caller) => match caller.send(reply) {
                Ok(()) => return true,
                Err(_) => "its caller stopped waiting",
            },
            None => "no request is waiting for it",
        };
        self.table.dropped_replies.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            reply_to = %self.table.reply_to,
            correlation_id = id.unwrap_or(""),
            "dropped a reply: {why}"
        );
        false
    }

    /// Fails every waiting request and every later registration with `why`.
    pub(crate) fn close(&self, why: &'static str) {
        let waiting = {
            let mut state = self.table.lock();
            state.closed.get_or_insert(why);
            std::mem::take(&mut state.waiting)
        };
        // Dropping the senders wakes the requests, which read `closed`.
        drop(waiting);
    }

    /// Routes what arrives on `routed` until every requester and request is gone
    /// (then the stream is dropped) or the route ends (`ended` when the stream just
    /// stops), then closes the route. Returns why it stopped: [`Dispatch::dropped`]
    /// when nobody was left to wait.
    pub(crate) async fn run<St>(mut self, routed: St, ended: &'static str) -> &'static str
    where
        St: Stream<Item = Routed>,
    {
        let mut routed = pin!(routed);
        let why = loop {
            let next = tokio::select! {
                biased;
                _ = &mut self.stop => break DROPPED,
                next = routed.next() => next,
            };
            match next {
                Some(Routed::Reply(id, reply)) => {
                    self.resolve(id.as_deref(), reply);
                }
                Some(Routed::Failed(error)) => {
                    tracing::warn!(reply_to = %self.table.reply_to, %error, "the reply route failed; going on");
                }
                Some(Routed::Ended(why)) => break why,
                None => break ended,
            }
        };
        if why != DROPPED {
            tracing::debug!(reply_to = %self.table.reply_to, "the reply route closed: {why}");
        }
        self.close(why);
        why
    }

    /// Whether `why`, returned by [`Dispatch::run`], means nobody was left to wait
    /// (rather than the route failing).
    #[cfg(feature = "rabbitmq")]
    pub(crate) fn dropped(why: &str) -> bool {
        why == DROPPED
    }
}

/// Turns any error into the model's [`Error`], keeping a model error as it is and
/// classifying anything else.
pub(crate) fn into_model_error(
    error: BoxError,
    broker: &'static str,
    operation: Operation,
    destination: &str,
) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(other) => {
            let kind = DefaultClassifier::new().classify_dyn(&*other);
            Error::new(broker, operation, kind)
                .with_destination(destination)
                .with_source(other)
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum RequestState<F> {
        Sending { #[pin] send: F },
        Waiting { pending: Pending },
        Failed { error: Option<Error> },
    }
}

pin_project! {
    /// The future every requester returns: sends the request, then waits for its
    /// reply, all before the deadline.
    ///
    /// A request that misses its deadline fails with a transient
    /// [`Operation::Request`] error (code [`Code::Timeout`]) naming the request's
    /// destination; one whose reply route closed fails with a transient error (code
    /// [`Code::ConnectionLost`]) at once. Dropping the future forgets the request: a
    /// late reply is dropped and counted.
    pub struct ResponseFuture<F> {
        #[pin]
        state: RequestState<F>,
        // Made on the first poll, so that building the future needs no runtime.
        #[pin]
        sleep: Option<Sleep>,
        deadline: Instant,
        destination: String,
        timeout: Duration,
        broker: &'static str,
    }
}

impl<F> ResponseFuture<F> {
    /// Runs `send` (which resolves to the request's [`Pending`] once the broker took
    /// the request), then waits for the reply, for at most `timeout` in all.
    pub(crate) fn new(
        send: F,
        broker: &'static str,
        destination: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        Self::with_state(RequestState::Sending { send }, broker, destination, timeout)
    }

    /// A request that failed before it was sent.
    pub(crate) fn failed(error: Error) -> Self {
        let broker = error.broker();
        let destination = error.destination().unwrap_or("").to_owned();
        let state = RequestState::Failed { error: Some(error) };
        Self::with_state(state, broker, destination, Duration::ZERO)
    }

    fn with_state(
        state: RequestState<F>,
        broker: &'static str,
        destination: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        ResponseFuture {
            state,
            sleep: None,
            deadline: Instant::now() + timeout,
            destination: destination.into(),
            timeout,
            broker,
        }
    }
}

/// The future of a requester whose send step is an `async` block.
pub type BoxResponseFuture = ResponseFuture<BoxFuture<'static, Result<Pending, Error>>>;

impl BoxResponseFuture {
    /// [`ResponseFuture::new`] over the `async` block `send`.
    #[cfg(any(feature = "nats", feature = "rabbitmq"))]
    pub(crate) fn boxed(
        broker: &'static str,
        destination: impl Into<String>,
        timeout: Duration,
        send: impl Future<Output = Result<Pending, Error>> + Send + 'static,
    ) -> Self {
        ResponseFuture::new(Box::pin(send), broker, destination, timeout)
    }
}

/// A transient [`Operation::Request`] error on a request's destination.
fn request_error(broker: &'static str, destination: &str, code: Code, reason: String) -> Error {
    Error::transient(broker, Operation::Request)
        .with_code(code)
        .with_destination(destination)
        .with_reason(reason)
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, id) = match &self.state {
            RequestState::Sending { .. } => ("sending", None),
            RequestState::Waiting { pending } => ("waiting", Some(pending.id())),
            RequestState::Failed { .. } => ("failed", None),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("destination", &self.destination)
            .field("correlation_id", &id)
            .finish()
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Pending, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Message, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let failed = match this.state.as_mut().project() {
                StateProj::Sending { send } => match send.poll(cx) {
                    Poll::Ready(Ok(pending)) => {
                        this.state.set(RequestState::Waiting { pending });
                        continue;
                    }
                    Poll::Ready(Err(error)) => into_model_error(
                        error.into(),
                        this.broker,
                        Operation::Publish,
                        this.destination,
                    ),
                    Poll::Pending => break,
                },
                StateProj::Waiting { pending } => match pending.poll_reply(cx) {
                    Poll::Ready(Ok(reply)) => {
                        this.state.set(RequestState::Failed { error: None });
                        return Poll::Ready(Ok(reply));
                    }
                    Poll::Ready(Err(Closed::Failed(error))) => {
                        error.with_destination(this.destination.as_str())
                    }
                    Poll::Ready(Err(Closed::Route(why))) => request_error(
                        this.broker,
                        this.destination,
                        Code::ConnectionLost,
                        format!("no reply: {why}"),
                    ),
                    Poll::Pending => break,
                },
                StateProj::Failed { error } => error.take().unwrap_or_else(|| {
                    Error::permanent(this.broker, Operation::Request)
                        .with_reason("polled after completion")
                }),
            };
            // Ends the request: its waiter goes with it.
            this.state.set(RequestState::Failed { error: None });
            return Poll::Ready(Err(failed));
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(*this.deadline)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
        }
        let id = match &*this.state {
            RequestState::Waiting { pending } => format!(" (correlation id {})", pending.id()),
            _ => String::new(),
        };
        // Forgets the request now, not when the future is dropped: a late reply finds
        // nobody waiting.
        this.state.set(RequestState::Failed { error: None });
        let reason = format!("no reply in time: none within {:?}{id}", this.timeout);
        Poll::Ready(Err(request_error(
            this.broker,
            this.destination,
            Code::Timeout,
            reason,
        )))
    }
}

pin_project! {
    /// A publish future as a request's send step: resolves to the request's
    /// [`Pending`] once the broker took it.
    pub struct Published<F> {
        #[pin]
        publish: F,
        pending: Option<Pending>,
    }
}

impl<F> Published<F> {
    /// `publish` sends the request registered as `pending`.
    pub(crate) fn new(publish: F, pending: Pending) -> Self {
        Published {
            publish,
            pending: Some(pending),
        }
    }
}

impl<F> fmt::Debug for Published<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Published")
            .field("pending", &self.pending)
            .finish()
    }
}

impl<F, R, E> Future for Published<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Pending, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        ready!(this.publish.poll(cx)).map_err(Into::into)?;
        Poll::Ready(
            this.pending
                .take()
                .ok_or_else(|| "the request was already sent".into()),
        )
    }
}

/// A reply route shared by a requester's clones: opened on first use, and again once
/// it closed or its owner no longer finds it usable (a connection replaced since).
#[cfg(any(feature = "nats", feature = "rabbitmq"))]
pub(crate) struct Shared<R> {
    slot: Arc<tokio::sync::Mutex<Option<Arc<R>>>>,
}

#[cfg(any(feature = "nats", feature = "rabbitmq"))]
impl<R> Shared<R> {
    pub(crate) fn new() -> Self {
        Shared {
            slot: Arc::default(),
        }
    }

    /// The open route if `usable` says so, or a new one from `open`, kept for the
    /// next requests.
    pub(crate) async fn get<E, Fut>(
        &self,
        usable: impl Fn(&R) -> bool,
        open: impl FnOnce() -> Fut,
    ) -> Result<Arc<R>, E>
    where
        Fut: Future<Output = Result<R, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(route) = slot.as_ref() {
            if usable(route) {
                return Ok(route.clone());
            }
        }
        let route = Arc::new(open().await?);
        *slot = Some(route.clone());
        Ok(route)
    }
}

#[cfg(any(feature = "nats", feature = "rabbitmq"))]
impl<R> Clone for Shared<R> {
    fn clone(&self) -> Self {
        Shared {
            slot: self.slot.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::ready;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;
    use tokio_test::{assert_pending, assert_ready};
    use tower_mq_core::ErrorKind;

    type Sent = std::future::Ready<Result<Pending, Error>>;

    /// A route whose dispatcher runs on a spawned task, fed through the sender.
    fn running() -> (Waiters, mpsc::UnboundedSender<Routed>) {
        let (waiters, dispatch) = route("replies.me");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch.run(UnboundedReceiverStream::new(rx), "the test route ended"));
        (waiters, tx)
    }

    fn request(waiters: &Waiters, timeout: Duration) -> (String, ResponseFuture<Sent>) {
        let pending = waiters.register().unwrap();
        let id = pending.id().to_owned();
        let fut = ResponseFuture::new(ready(Ok(pending)), "test", "rpc", timeout);
        (id, fut)
    }

    fn reply(id: &str, payload: &'static str) -> Routed {
        Routed::Reply(Some(id.to_owned()), Ok(Message::new("replies.me", payload)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_reaches_the_request_carrying_its_id() {
        let (waiters, replies) = running();
        let (first, first_fut) = request(&waiters, Duration::from_secs(5));
        let (second, second_fut) = request(&waiters, Duration::from_secs(5));
        assert_ne!(first, second);
        replies.send(reply(&second, "2")).unwrap();
        replies.send(reply(&first, "1")).unwrap();
        assert_eq!(second_fut.await.unwrap().payload().as_ref(), b"2");
        assert_eq!(first_fut.await.unwrap().payload().as_ref(), b"1");
        assert_eq!(waiters.waiting(), 0);
        assert_eq!(waiters.dropped_replies(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_request_future_removes_its_waiter() {
        let (waiters, replies) = running();
        // Dropped while waiting for the reply.
        let (id, fut) = request(&waiters, Duration::from_secs(5));
        let mut fut = tokio_test::task::spawn(fut);
        assert_pending!(fut.poll());
        assert_eq!(waiters.waiting(), 1);
        drop(fut);
        assert_eq!(waiters.waiting(), 0);
        // Dropped while still sending.
        let pending = waiters.register().unwrap();
        let never_sent = Published::new(std::future::pending::<Result<(), Error>>(), pending);
        let sending = ResponseFuture::new(never_sent, "test", "rpc", Duration::from_secs(5));
        let mut sending = tokio_test::task::spawn(sending);
        assert_pending!(sending.poll());
        assert_eq!(waiters.waiting(), 1);
        drop(sending);
        assert_eq!(waiters.waiting(), 0);
        // Its reply, should it come, finds nobody.
        replies.send(reply(&id, "too late")).unwrap();
        let (next, next_fut) = request(&waiters, Duration::from_secs(5));
        replies.send(reply(&next, "ok")).unwrap();
        next_fut.await.unwrap();
        assert_eq!(waiters.dropped_replies(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_reply_after_the_deadline_is_dropped_and_counted() {
        let (waiters, replies) = running();
        let start = Instant::now();
        let (id, fut) = request(&waiters, Duration::from_secs(5));
        let mut fut = tokio_test::task::spawn(fut);
        assert_pending!(fut.poll());
        tokio::time::advance(Duration::from_secs(5)).await;
        let err = assert_ready!(fut.poll()).unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(err.code(), Some(Code::Timeout));
        assert_eq!(err.operation(), Operation::Request);
        assert_eq!(err.destination(), Some("rpc"));
        assert!(err.to_string().contains(&id), "{err}");
        // Forgotten at the deadline, before the future is even dropped.
        assert_eq!(waiters.waiting(), 0);
        replies.send(reply(&id, "late")).unwrap();
        let (next, next_fut) = request(&waiters, Duration::from_secs(5));
        replies.send(reply(&next, "ok")).unwrap();
        next_fut.await.unwrap();
        assert_eq!(waiters.dropped_replies(), 1);
        assert_eq!(waiters.waiting(), 0);
        drop(fut);
    }

    #[tokio::test(start_paused = true)]
    async fn replies_with_unknown_or_missing_ids_are_ignored_and_counted() {
        let (waiters, dispatch) = route("replies.me");
        let (id, fut) = request(&waiters, Duration::from_secs(5));
        let stranger = || Ok(Message::new("replies.me", "?"));
        assert!(!dispatch.resolve(Some("not-ours"), stranger()));
        assert!(!dispatch.resolve(None, stranger()));
        assert_eq!(waiters.dropped_replies(), 2);
        assert_eq!(waiters.waiting(), 1, "the waiting request is untouched");
        assert!(dispatch.resolve(Some(&id), Ok(Message::new("replies.me", "mine"))));
        assert_eq!(fut.await.unwrap().payload().as_ref(), b"mine");
    }

    #[tokio::test(start_paused = true)]
    async fn an_error_for_a_request_fails_it_with_the_request_destination() {
        let (waiters, dispatch) = route("replies.me");
        let (id, fut) = request(&waiters, Duration::from_secs(5));
        let no_one = Error::transient("test", Operation::Request).with_code(Code::NoResponders);
        dispatch.resolve(Some(&id), Err(no_one));
        let err = fut.await.unwrap_err();
        assert_eq!(err.code(), Some(Code::NoResponders));
        assert_eq!(err.destination(), Some("rpc"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_route_fails_waiting_requests_at_once_and_refuses_new_ones() {
        let (waiters, replies) = running();
        let start = Instant::now();
        let (_, fut) = request(&waiters, Duration::from_secs(5));
        replies
            .send(Routed::Failed(Error::transient("test", Operation::Receive)))
            .unwrap();
        replies.send(Routed::Ended("the test route broke")).unwrap();
        let err = fut.await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::ZERO, "not at the deadline");
        assert_eq!(err.code(), Some(Code::ConnectionLost));
        assert!(err.to_string().contains("the test route broke"), "{err}");
        assert_eq!(waiters.closed(), Some("the test route broke"));
        assert_eq!(waiters.register().unwrap_err(), "the test route broke");
        assert_eq!(waiters.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_dispatcher_stops_once_no_requester_or_request_is_left() {
        let (waiters, replies) = running();
        let (_, fut) = request(&waiters, Duration::from_secs(5));
        drop(waiters);
        tokio::task::yield_now().await;
        assert!(!replies.is_closed(), "a request still waits");
        drop(fut);
        tokio::time::timeout(Duration::from_secs(1), replies.closed())
            .await
            .expect("the reply stream is dropped");
    }

    #[test]
    fn correlation_ids_have_one_scheme_and_differ_across_routes() {
        let (a, _) = route("a");
        let (b, _) = route("b");
        let ids: Vec<String> = (0..50)
            .flat_map(|_| [a.register().unwrap(), b.register().unwrap()])
            .map(|pending| pending.id().to_owned())
            .collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        for id in &ids {
            let (prefix, n) = id.split_once('-').unwrap();
            assert_eq!(prefix.len(), 16, "{id}");
            assert!(u64::from_str_radix(prefix, 16).is_ok(), "{id}");
            assert!(n.parse::<u64>().is_ok(), "{id}");
        }
    }

    #[test]
    fn a_request_that_failed_before_sending_keeps_its_error() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let error = Error::permanent("test", Operation::Request).with_destination("rpc");
        let err = runtime
            .block_on(ResponseFuture::<Sent>::failed(error))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.destination(), Some("rpc"));
    }
}
