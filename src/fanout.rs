//! Publishing one message through several publishers: [`FanOut`] to all of them at
//! once, [`Fallback`] to the first that accepts it.
//!
//! Both are publishers themselves (`Service<Message, Response = Receipt, Error =
//! tower_mq::Error>`), so layers stack on them, and both take publishers of one type
//! `P`: publishers of different brokers are boxed first (`BoxService` /
//! `BoxCloneService` with the model's `Error`). Every publisher gets a name, and the
//! errors say which publisher failed and how ([`PublisherFailures`], the error's
//! source).
//!
//! # Fan-out
//!
//! [`FanOut`] hands a copy of the message to every publisher concurrently and waits
//! for all of them to finish (none is cancelled half-way). Its [`Policy`] decides
//! whether the fan-out succeeded: [`All`](Policy::All) publishers accepted it, at
//! least `n` ([`AtLeast`](Policy::AtLeast)) or at least one ([`Any`](Policy::Any)).
//! On success the receipt is a [fan-out's](Receipt::fan_out), whose
//! [parts](Receipt::parts) are the receipts of the publishers that accepted it, in the order the publishers were added; failures the policy
//! tolerated are logged. On failure the error is transient when enough of the failed
//! publishers failed transiently for a retry to meet the policy, permanent otherwise.
//! A retry publishes to every publisher again, including those that accepted the
//! message the first time: make consumers idempotent or deduplicate by message id.
//!
//! A message goes to every publisher, so the fan-out is ready only when every
//! publisher is: one publisher that is not ready holds back the others, whatever the
//! policy. To let a stalled publisher count as a failure instead of stalling the
//! fan-out, wrap it in `tower::load_shed::LoadShed` (it then fails at once with
//! `Overloaded`, a transient failure the policy may tolerate) or give it a queue with
//! `tower::buffer::Buffer`. A publisher whose `poll_ready` fails does not fail the
//! fan-out: the error is that publisher's failure for the next message.
//!
//! # Fallback
//!
//! [`Fallback`] tries its publishers one after another, in the order they were added:
//! the first that accepts the message wins and its receipt is returned. A transient
//! failure moves on to the next publisher; a permanent failure stops there (the
//! message itself is at fault, say too large, and the next broker would refuse it
//! too). It is ready as soon as one publisher is ready; a publisher that is not ready
//! when the message arrives, or whose `poll_ready` failed, is skipped for that
//! message. So a primary that is reconnecting does not hold messages back: they go to
//! the secondary until it is back.
//!
//! # Example
//!
//! ```
//! use futures_util::StreamExt;
//! use tower::{service_fn, ServiceExt};
//! use tower_mq::fanout::{Fallback, FanOut, Policy};
//! use tower_mq::memory::Broker;
//! use tower_mq::{BoxError, Error, Guarantee, Message, Operation, Position, Receipt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Every order goes to the main broker and to an audit broker.
//! let (main, audit) = (Broker::new(), Broker::new());
//! let mut orders = main.subscribe("orders")?;
//! let mut audited = audit.subscribe("orders")?;
//! let fan_out = FanOut::new(Policy::All)
//!     .publisher("main", main.publisher())
//!     .publisher("audit", audit.publisher());
//! let receipt = fan_out.oneshot(Message::new("orders", "order 42")).await?;
//! let stored =
//!     Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(1));
//! assert_eq!(receipt, Receipt::fan_out(vec![stored.clone(), stored]));
//! for consumer in [&mut orders, &mut audited] {
//!     let delivery = consumer.next().await.expect("subscribed")?;
//!     assert_eq!(delivery.message().payload().as_ref(), b"order 42");
//! }
//!
//! // Publishers of different types are boxed; this one is down.
//! let down = service_fn(|msg: Message| async move {
//!     Err::<Receipt, _>(
//!         Error::transient("redis", Operation::Publish).with_destination(msg.destination()),
//!     )
//! })
//! .boxed_clone();
//! let up = main.publisher().boxed_clone();
//!
//! // `All` fails, naming the publisher that failed; `Any` is content with one.
//! let all = FanOut::new(Policy::All)
//!     .publisher("main", up.clone())
//!     .publisher("backup", down.clone());
//! let err = all.oneshot(Message::new("orders", "order 43")).await.unwrap_err();
//! assert!(err.to_string().contains("`backup`"), "{err}");
//! let any = FanOut::new(Policy::Any)
//!     .publisher("main", up.clone())
//!     .publisher("backup", down.clone());
//! assert!(any.oneshot(Message::new("orders", "order 44")).await.is_ok());
//!
//! // The primary is down: the secondary takes the message.
//! let fallback = Fallback::new()
//!     .publisher("primary", down)
//!     .publisher("secondary", up);
//! let receipt = fallback.oneshot(Message::new("orders", "order 45")).await?;
//! assert_eq!(receipt.destination(), "orders");
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_util::future::{join_all, JoinAll};
use pin_project_lite::pin_project;
use tower::Service;
use tower_mq_core::{BoxError, Error, ErrorKind, Message, Operation, Receipt};
use tower_mq_layers::classify::DefaultClassifier;

/// The broker name on a fan-out's errors.
const FANOUT: &str = "fanout";
/// The broker name on a fallback's errors.
const FALLBACK: &str = "fallback";

/// How many of a [`FanOut`]'s publishers must accept a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Every publisher (the default).
    #[default]
    All,
    /// At least this many publishers.
    AtLeast(usize),
    /// At least one publisher.
    Any,
}

impl Policy {
    fn needed(self, publishers: usize) -> usize {
        match self {
            Policy::All => publishers,
            Policy::AtLeast(n) => n,
            Policy::Any => 1,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::All => f.write_str("all"),
            Policy::AtLeast(n) => write!(f, "at least {n}"),
            Policy::Any => f.write_str("any"),
        }
    }
}

/// The publishers that failed to take a message, by name, in the order they were
/// added: the source of a [`FanOut`] or [`Fallback`] error.
///
/// ```
/// # use tower_mq::fanout::PublisherFailures;
/// # fn inspect(err: &tower_mq::Error) {
/// use std::error::Error as _;
/// if let Some(failures) = err.source().and_then(|s| s.downcast_ref::<PublisherFailures>()) {
///     for failure in failures.iter() {
///         eprintln!("{failure}"); // `name`: error, or `name`: not ready
///     }
/// }
/// # }
/// ```
#[derive(Debug, Default)]
pub struct PublisherFailures {
    failures: Vec<PublisherFailure>,
}

impl PublisherFailures {
    /// The failures, in publisher order.
    pub fn iter(&self) -> std::slice::Iter<'_, PublisherFailure> {
        self.failures.iter()
    }

    /// How many publishers failed.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether no publisher failed.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// The failure of the publisher named `name`, if it failed.
    pub fn get(&self, name: &str) -> Option<&PublisherFailure> {
        self.failures.iter().find(|f| &*f.publisher == name)
    }
}

impl<'a> IntoIterator for &'a PublisherFailures {
    type Item = &'a PublisherFailure;
    type IntoIter = std::slice::Iter<'a, PublisherFailure>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl fmt::Display for PublisherFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

impl StdError for PublisherFailures {}

/// One publisher's failure: its name and its error.
#[derive(Debug)]
pub struct PublisherFailure {
    publisher: Arc<str>,
    error: Failure,
}

#[derive(Debug)]
enum Failure {
    Error(BoxError),
    NotReady,
}

impl PublisherFailure {
    /// The publisher's name.
    pub fn publisher(&self) -> &str {
        &self.publisher
    }

    /// The publisher's error, or `None` if it was skipped because it was not ready
    /// (fallback only).
    pub fn error(&self) -> Option<&BoxError> {
        match &self.error {
            Failure::Error(e) => Some(e),
            Failure::NotReady => None,
        }
    }

    /// Transient or permanent (not being ready is transient; an error without a
    /// classification counts as transient).
    pub fn kind(&self) -> ErrorKind {
        match &self.error {
            Failure::Error(e) => DefaultClassifier::new().classify_dyn(&**e),
            Failure::NotReady => ErrorKind::Transient,
        }
    }
}

impl fmt::Display for PublisherFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            Failure::Error(e) => write!(f, "`{}`: {e}", self.publisher),
            Failure::NotReady => write!(f, "`{}`: not ready", self.publisher),
        }
    }
}

/// A publisher and what its last `poll_ready` said.
struct Member<P> {
    service: P,
    readiness: Readiness,
}

enum Readiness {
    Unknown,
    Ready,
    Failed(BoxError),
}

impl<P> Member<P> {
    fn new(service: P) -> Self {
        Member {
            service,
            readiness: Readiness::Unknown,
        }
    }

    /// Polls unless already resolved; returns whether it is resolved (ready or failed).
    fn poll_resolved(&mut self, cx: &mut Context<'_>) -> bool
    where
        P: Service<Message>,
        P::Error: Into<BoxError>,
    {
        if let Readiness::Unknown = self.readiness {
            match self.service.poll_ready(cx) {
                Poll::Ready(Ok(())) => self.readiness = Readiness::Ready,
                Poll::Ready(Err(e)) => self.readiness = Readiness::Failed(e.into()),
                Poll::Pending => return false,
            }
        }
        true
    }
}

impl<P: Clone> Clone for Member<P> {
    fn clone(&self) -> Self {
        // A clone has reserved nothing.
        Member::new(self.service.clone())
    }
}

/// Names shared with the response futures, so a call allocates none.
type Names = Arc<Vec<Arc<str>>>;

fn add_name(names: &mut Names, name: &str) {
    Arc::make_mut(names).push(name.into());
}

/// Publishes each message through every publisher at once. See the
/// [module docs](self).
pub struct FanOut<P> {
    members: Vec<Member<P>>,
    names: Names,
    policy: Policy,
}

impl<P> FanOut<P> {
    /// A fan-out with no publishers yet, succeeding per `policy`.
    pub fn new(policy: Policy) -> Self {
        FanOut {
            members: Vec::new(),
            names: Arc::default(),
            policy,
        }
    }

    /// Adds a publisher; `name` identifies it in errors.
    pub fn publisher(mut self, name: &str, publisher: P) -> Self {
        self.members.push(Member::new(publisher));
        add_name(&mut self.names, name);
        self
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The publishers' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The publishers, in order.
    pub fn get_ref(&self) -> impl Iterator<Item = &P> {
        self.members.iter().map(|m| &m.service)
    }
}

impl<P: Clone> Clone for FanOut<P> {
    fn clone(&self) -> Self {
        FanOut {
            members: self.members.clone(),
            names: self.names.clone(),
            policy: self.policy,
        }
    }
}

impl<P> fmt::Debug for FanOut<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("publishers", &self.names)
            .field("policy", &self.policy)
            .finish()
    }
}

impl<P> Service<Message> for FanOut<P>
where
    P: Service<Message, Response = Receipt>,
    P::Error: Into<BoxError>,
{
    type Response = Receipt;
    type Error = Error;
    type Future = FanOutFuture<P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut all = true;
        // Poll every publisher, even after one is pending, so each registers its waker.
        for member in &mut self.members {
            all &= member.poll_resolved(cx);
        }
        if all {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, message: Message) -> Self::Future {
        let destination = message.destination().to_owned();
        let total = self.members.len();
        let needed = self.policy.needed(total);
        if total == 0 || needed > total {
            let reason = if total == 0 {
                "the fan-out has no publishers".to_owned()
            } else {
                format!(
                    "policy `{}` needs {needed} publishers, only {total} are configured",
                    self.policy
                )
            };
            let error = Error::permanent(FANOUT, Operation::Publish)
                .with_destination(destination)
                .with_reason(reason);
            return FanOutFuture {
                state: FanOutState::Failed { error: Some(error) },
            };
        }
        if self
            .members
            .iter()
            .any(|m| matches!(m.readiness, Readiness::Unknown))
        {
            // Nothing is taken: the ready publishers keep their readiness.
            let error = Error::called_before_ready(FANOUT, Operation::Publish)
                .with_destination(destination);
            return FanOutFuture {
                state: FanOutState::Failed { error: Some(error) },
            };
        }
        let mut message = Some(message);
        let attempts = self.members.iter_mut().enumerate().map(|(i, member)| {
            match mem::replace(&mut member.readiness, Readiness::Unknown) {
                Readiness::Ready => {
                    // The last publisher takes the message itself.
                    let message = if i + 1 == total {
                        message.take()
                    } else {
                        message.clone()
                    };
                    match message {
                        Some(message) => Attempt::Calling {
                            call: member.service.call(message),
                        },
                        None => Attempt::Failed { error: None },
                    }
                }
                Readiness::Failed(error) => Attempt::Failed { error: Some(error) },
                // Ruled out above.
                Readiness::Unknown => Attempt::Failed { error: None },
            }
        });
        FanOutFuture {
            state: FanOutState::Publishing {
                attempts: join_all(attempts.collect::<Vec<_>>()),
                names: self.names.clone(),
                policy: self.policy,
                destination,
            },
        }
    }
}

pin_project! {
    /// One publisher's part of a fan-out: its call, or the error its readiness gave.
    #[project = AttemptProj]
    enum Attempt<F> {
        Calling { #[pin] call: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F, E> Future for Attempt<F>
where
    F: Future<Output = Result<Receipt, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Receipt, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AttemptProj::Calling { call } => call.poll(cx).map_err(Into::into),
            AttemptProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "fan-out attempt polled after completion".into()))),
        }
    }
}

pin_project! {
    #[project = FanOutStateProj]
    enum FanOutState<P>
    where
        P: Service<Message, Response = Receipt>,
        P::Error: Into<BoxError>,
    {
        Publishing {
            #[pin]
            attempts: JoinAll<Attempt<P::Future>>,
            names: Names,
            policy: Policy,
            destination: String,
        },
        Failed { error: Option<Error> },
    }
}

pin_project! {
    /// The future a [`FanOut`] returns.
    pub struct FanOutFuture<P>
    where
        P: Service<Message, Response = Receipt>,
        P::Error: Into<BoxError>,
    {
        #[pin]
        state: FanOutState<P>,
    }
}

impl<P> fmt::Debug for FanOutFuture<P>
where
    P: Service<Message, Response = Receipt>,
    P::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            FanOutState::Publishing {
                names, destination, ..
            } => f
                .debug_struct("FanOutFuture")
                .field("destination", destination)
                .field("publishers", names)
                .finish(),
            FanOutState::Failed { error } => f
                .debug_struct("FanOutFuture")
                .field("error", error)
                .finish(),
        }
    }
}

impl<P> Future for FanOutFuture<P>
where
    P: Service<Message, Response = Receipt>,
    P::Error: Into<BoxError>,
{
    type Output = Result<Receipt, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            FanOutStateProj::Publishing {
                attempts,
                names,
                policy,
                destination,
            } => {
                let results = ready!(attempts.poll(cx));
                Poll::Ready(settle(results, names, *policy, destination))
            }
            FanOutStateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Error::permanent(FANOUT, Operation::Publish)))),
        }
    }
}

/// Applies the policy to every publisher's outcome.
fn settle(
    results: Vec<Result<Receipt, BoxError>>,
    names: &Names,
    policy: Policy,
    destination: &str,
) -> Result<Receipt, Error> {
    let total = results.len();
    let needed = policy.needed(total);
    let mut receipts = Vec::with_capacity(total);
    let mut failures = PublisherFailures::default();
    for (result, name) in results.into_iter().zip(names.iter()) {
        match result {
            Ok(receipt) => receipts.push(receipt),
            Err(error) => failures.failures.push(PublisherFailure {
                publisher: name.clone(),
                error: Failure::Error(error),
            }),
        }
    }
    let accepted = receipts.len();
    if accepted >= needed {
        if !failures.is_empty() {
            tracing::warn!(
                destination,
                %policy,
                accepted,
                total,
                %failures,
                "fan-out succeeded with failed publishers"
            );
        }
        return Ok(Receipt::fan_out(receipts));
    }
    // A retry can meet the policy only if enough of the failures may go away.
    let transient = failures
        .iter()
        .filter(|f| f.kind() == ErrorKind::Transient)
        .count();
    let kind = if transient >= needed - accepted {
        ErrorKind::Transient
    } else {
        ErrorKind::Permanent
    };
    Err(Error::new(FANOUT, Operation::Publish, kind)
        .with_destination(destination)
        .with_reason(format!(
            "{accepted} of {total} publishers accepted the message, policy `{policy}` needs {needed}: {failures}"
        ))
        .with_source(failures))
}

/// Publishes each message through the first publisher that accepts it. See the
/// [module docs](self).
pub struct Fallback<P> {
    members: Vec<Member<P>>,
    names: Names,
}

impl<P> Fallback<P> {
    /// A fallback chain with no publishers yet.
    pub fn new() -> Self {
        Fallback {
            members: Vec::new(),
            names: Arc::default(),
        }
    }

    /// Adds the next publisher to try; `name` identifies it in errors.
    pub fn publisher(mut self, name: &str, publisher: P) -> Self {
        self.members.push(Member::new(publisher));
        add_name(&mut self.names, name);
        self
    }

    /// The publishers' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|n| &**n)
    }

    /// The publishers, in order.
    pub fn get_ref(&self) -> impl Iterator<Item = &P> {
        self.members.iter().map(|m| &m.service)
    }
}

impl<P> Default for Fallback<P> {
    fn default() -> Self {
        Fallback::new()
    }
}

impl<P: Clone> Clone for Fallback<P> {
    fn clone(&self) -> Self {
        Fallback {
            members: self.members.clone(),
            names: self.names.clone(),
        }
    }
}

impl<P> fmt::Debug for Fallback<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("publishers", &self.names)
            .finish()
    }
}

impl<P> Service<Message> for Fallback<P>
where
    P: Service<Message, Response = Receipt> + Clone,
    P::Error: Into<BoxError>,
{
    type Response = Receipt;
    type Error = Error;
    type Future = FallbackFuture<P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut resolved = true;
        let mut any_ready = false;
        for member in &mut self.members {
            resolved &= member.poll_resolved(cx);
            any_ready |= matches!(member.readiness, Readiness::Ready);
        }
        // Ready to publish, or to report that every publisher failed.
        if any_ready || resolved {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, message: Message) -> Self::Future {
        let destination = message.destination().to_owned();
        // What a ready `poll_ready` leaves: a ready publisher, or every one failed.
        let polled = self
            .members
            .iter()
            .any(|m| matches!(m.readiness, Readiness::Ready))
            || self
                .members
                .iter()
                .all(|m| matches!(m.readiness, Readiness::Failed(_)));
        if !polled {
            // Nothing is taken: a failed publisher keeps its error for the next message.
            return FallbackFuture {
                attempt: FallbackAttempt::NotReady,
                candidates: Vec::new().into_iter(),
                message: None,
                failures: PublisherFailures::default(),
                names: self.names.clone(),
                destination,
            };
        }
        let mut candidates = Vec::with_capacity(self.members.len());
        for (i, member) in self.members.iter_mut().enumerate() {
            let candidate = match mem::replace(&mut member.readiness, Readiness::Unknown) {
                Readiness::Ready => {
                    // The ready publisher goes with the future; a clone stays to be polled.
                    let clone = member.service.clone();
                    Candidate::Ready(mem::replace(&mut member.service, clone))
                }
                Readiness::Failed(error) => Candidate::Unavailable(Failure::Error(error)),
                Readiness::Unknown => Candidate::Unavailable(Failure::NotReady),
            };
            candidates.push((i, candidate));
        }
        FallbackFuture {
            attempt: FallbackAttempt::Idle,
            candidates: candidates.into_iter(),
            message: Some(message),
            failures: PublisherFailures::default(),
            names: self.names.clone(),
            destination,
        }
    }
}

enum Candidate<P> {
    Ready(P),
    Unavailable(Failure),
}

pin_project! {
    #[project = FallbackAttemptProj]
    enum FallbackAttempt<F> {
        Idle,
        Calling { index: usize, #[pin] call: F },
        // The call came without a ready `poll_ready`.
        NotReady,
    }
}

pin_project! {
    /// The future a [`Fallback`] returns.
    pub struct FallbackFuture<P: Service<Message>> {
        #[pin]
        attempt: FallbackAttempt<P::Future>,
        candidates: std::vec::IntoIter<(usize, Candidate<P>)>,
        message: Option<Message>,
        failures: PublisherFailures,
        names: Names,
        destination: String,
    }
}

impl<P: Service<Message>> fmt::Debug for FallbackFuture<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFuture")
            .field("destination", &self.destination)
            .field("failures", &self.failures)
            .finish()
    }
}

impl<P> Future for FallbackFuture<P>
where
    P: Service<Message, Response = Receipt>,
    P::Error: Into<BoxError>,
{
    type Output = Result<Receipt, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.attempt.as_mut().project() {
                FallbackAttemptProj::Calling { index, call } => {
                    let index = *index;
                    match ready!(call.poll(cx)) {
                        Ok(receipt) => {
                            if !this.failures.is_empty() {
                                tracing::warn!(
                                    destination = %this.destination,
                                    publisher = %this.names[index],
                                    failures = %this.failures,
                                    "published through a fallback publisher"
                                );
                            }
                            return Poll::Ready(Ok(receipt));
                        }
                        Err(error) => {
                            let failure = PublisherFailure {
                                publisher: this.names[index].clone(),
                                error: Failure::Error(error.into()),
                            };
                            let kind = failure.kind();
                            this.failures.failures.push(failure);
                            if kind == ErrorKind::Permanent {
                                return Poll::Ready(Err(fallback_error(
                                    ErrorKind::Permanent,
                                    this.destination,
                                    this.failures,
                                )));
                            }
                            this.attempt.set(FallbackAttempt::Idle);
                        }
                    }
                }
                FallbackAttemptProj::NotReady => {
                    return Poll::Ready(Err(Error::called_before_ready(
                        FALLBACK,
                        Operation::Publish,
                    )
                    .with_destination(this.destination.as_str())))
                }
                FallbackAttemptProj::Idle => match this.candidates.next() {
                    Some((index, Candidate::Ready(mut publisher))) => {
                        let more = this
                            .candidates
                            .as_slice()
                            .iter()
                            .any(|(_, c)| matches!(c, Candidate::Ready(_)));
                        let message = if more {
                            this.message.clone()
                        } else {
                            this.message.take()
                        };
                        let Some(message) = message else {
                            return Poll::Ready(Err(fallback_error(
                                ErrorKind::Permanent,
                                this.destination,
                                this.failures,
                            )));
                        };
                        let call = publisher.call(message);
                        this.attempt.set(FallbackAttempt::Calling { index, call });
                    }
                    Some((index, Candidate::Unavailable(failure))) => {
                        this.failures.failures.push(PublisherFailure {
                            publisher: this.names[index].clone(),
                            error: failure,
                        });
                    }
                    None => {
                        return Poll::Ready(Err(fallback_error(
                            ErrorKind::Transient,
                            this.destination,
                            this.failures,
                        )))
                    }
                },
            }
        }
    }
}

fn fallback_error(kind: ErrorKind, destination: &str, failures: &mut PublisherFailures) -> Error {
    let failures = mem::take(failures);
    if failures.is_empty() {
        return Error::permanent(FALLBACK, Operation::Publish)
            .with_destination(destination)
            .with_reason("the fallback has no publishers");
    }
    let reason = match kind {
        ErrorKind::Permanent => format!("a publisher refused the message permanently: {failures}"),
        ErrorKind::Transient => format!("no publisher accepted the message: {failures}"),
    };
    Error::new(FALLBACK, Operation::Publish, kind)
        .with_destination(destination)
        .with_reason(reason)
        .with_source(failures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower::ServiceExt;
    use tower_mq_core::{Guarantee, Position};
    use tower_test::mock;

    type Publisher = mock::Mock<Message, Receipt>;
    type Handle = mock::Handle<Message, Receipt>;

    fn receipt(n: u64) -> Receipt {
        Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(n))
    }

    fn publishers(n: usize) -> (Vec<Publisher>, Vec<Handle>) {
        (0..n).map(|_| mock::pair()).unzip()
    }

    fn fan_out(policy: Policy, publishers: Vec<Publisher>) -> FanOut<Publisher> {
        let names = ["a", "b", "c", "d"];
        publishers
            .into_iter()
            .zip(names)
            .fold(FanOut::new(policy), |f, (p, name)| f.publisher(name, p))
    }

    fn fallback(publishers: Vec<Publisher>) -> Fallback<Publisher> {
        let names = ["primary", "secondary", "tertiary"];
        publishers
            .into_iter()
            .zip(names)
            .fold(Fallback::new(), |f, (p, name)| f.publisher(name, p))
    }

    fn transient() -> Error {
        Error::transient("memory", Operation::Publish).with_reason("broker restarting")
    }

    fn permanent() -> Error {
        Error::permanent("memory", Operation::Publish).with_reason("message too large")
    }

    fn failures(err: &Error) -> &PublisherFailures {
        err.source()
            .and_then(|s| s.downcast_ref::<PublisherFailures>())
            .expect("the source lists the failed publishers")
    }

    /// Runs one fan-out message where publisher `i` answers `outcomes[i]`.
    async fn run_fan_out(
        policy: Policy,
        outcomes: Vec<Result<u64, Error>>,
    ) -> Result<Receipt, Error> {
        let (publishers, mut handles) = publishers(outcomes.len());
        for h in &mut handles {
            h.allow(1);
        }
        let fut = tokio::spawn(fan_out(policy, publishers).oneshot(Message::new("orders", "x")));
        for (h, outcome) in handles.iter_mut().zip(outcomes) {
            let (_, respond) = h.next_request().await.unwrap();
            match outcome {
                Ok(n) => respond.send_response(receipt(n)),
                Err(e) => respond.send_error(e),
            }
        }
        fut.await.unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn every_publisher_gets_the_message_concurrently_and_receipts_keep_their_order() {
        let (publishers, mut handles) = publishers(3);
        for h in &mut handles {
            h.allow(1);
        }
        let fut = tokio::spawn(
            fan_out(Policy::All, publishers).oneshot(Message::new("orders", "x").with_key("k")),
        );
        // All three are called before any answers.
        let mut pending = Vec::new();
        for h in &mut handles {
            let (message, respond) = h.next_request().await.unwrap();
            assert_eq!(message.destination(), "orders");
            assert_eq!(message.key_str(), Some("k"));
            pending.push(respond);
        }
        // Answer out of order.
        for (i, respond) in pending.into_iter().enumerate().rev() {
            respond.send_response(receipt(i as u64));
        }
        let got = fut.await.unwrap().unwrap();
        assert_eq!(
            got,
            Receipt::fan_out(vec![receipt(0), receipt(1), receipt(2)])
        );
        assert!(got.is_confirmed());
    }

    #[tokio::test(start_paused = true)]
    async fn all_fails_naming_the_publisher_that_failed() {
        let err = run_fan_out(Policy::All, vec![Ok(1), Err(transient()), Ok(3)])
            .await
            .unwrap_err();
        assert_eq!(err.broker(), "fanout");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some("orders"));
        assert_eq!(err.kind(), ErrorKind::Transient);
        let failed = failures(&err);
        assert_eq!(failed.len(), 1);
        let b = failed.get("b").unwrap();
        assert_eq!(b.kind(), ErrorKind::Transient);
        assert!(b.error().unwrap().to_string().contains("broker restarting"));
        let shown = err.to_string();
        assert!(shown.contains("2 of 3 publishers accepted"), "{shown}");
        assert!(
            shown.contains("`b`: memory publish failed (transient)"),
            "{shown}"
        );

        let err = run_fan_out(Policy::All, vec![Err(permanent()), Err(transient())])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "`a` will never accept it");
        assert_eq!(failures(&err).len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn at_least_tolerates_some_failures() {
        let got = run_fan_out(Policy::AtLeast(2), vec![Ok(1), Err(permanent()), Ok(3)])
            .await
            .unwrap();
        assert_eq!(got, Receipt::fan_out(vec![receipt(1), receipt(3)]));

        let err = run_fan_out(
            Policy::AtLeast(2),
            vec![Ok(1), Err(permanent()), Err(transient())],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient, "`c` may still accept it");
        assert!(
            err.to_string().contains("policy `at least 2` needs 2"),
            "{err}"
        );

        let err = run_fan_out(
            Policy::AtLeast(3),
            vec![Ok(1), Err(permanent()), Err(transient())],
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "`b` never will");
    }

    #[tokio::test(start_paused = true)]
    async fn any_needs_one() {
        let got = run_fan_out(Policy::Any, vec![Err(transient()), Ok(2)])
            .await
            .unwrap();
        assert_eq!(got, Receipt::fan_out(vec![receipt(2)]));
        let err = run_fan_out(Policy::Any, vec![Err(permanent()), Err(permanent())])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(
            failures(&err)
                .iter()
                .map(PublisherFailure::publisher)
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_every_publisher_even_after_a_failure() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(1);
        handles[1].allow(1);
        let mut fut = tokio_test::task::spawn(
            fan_out(Policy::All, publishers).oneshot(Message::new("orders", "x")),
        );
        assert_pending!(fut.poll());
        let (_, respond_a) = handles[0].next_request().await.unwrap();
        let (_, respond_b) = handles[1].next_request().await.unwrap();
        respond_a.send_error(permanent());
        assert_pending!(fut.poll());
        respond_b.send_response(receipt(2));
        let err = fut.await.unwrap_err();
        assert_eq!(failures(&err).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_when_every_publisher_is() {
        let (publishers, mut handles) = publishers(3);
        let mut fanout = mock::Spawn::new(fan_out(Policy::Any, publishers));
        handles[0].allow(1);
        handles[1].allow(0);
        handles[2].allow(1);
        assert_pending!(fanout.poll_ready());
        handles[1].allow(1);
        assert!(fanout.is_woken());
        assert_ready_ok!(fanout.poll_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_shed_publisher_fails_instead_of_stalling_the_others() {
        let (stalled, mut stalled_handle) = mock::pair::<Message, Receipt>();
        let (healthy, mut healthy_handle) = mock::pair::<Message, Receipt>();
        stalled_handle.allow(0);
        healthy_handle.allow(1);
        let fanout = FanOut::new(Policy::Any)
            .publisher(
                "stalled",
                tower::util::BoxService::new(tower::load_shed::LoadShed::new(stalled)),
            )
            .publisher("healthy", tower::util::BoxService::new(healthy));
        let fut = tokio::spawn(fanout.oneshot(Message::new("orders", "x")));
        let (_, respond) = healthy_handle.next_request().await.unwrap();
        respond.send_response(receipt(1));
        assert_eq!(
            fut.await.unwrap().unwrap(),
            Receipt::fan_out(vec![receipt(1)])
        );

        // Under `All` the shed publisher fails the fan-out, transiently.
        let (stalled, mut stalled_handle) = mock::pair::<Message, Receipt>();
        stalled_handle.allow(0);
        let (healthy, mut healthy_handle) = mock::pair::<Message, Receipt>();
        healthy_handle.allow(1);
        let fanout = FanOut::new(Policy::All)
            .publisher(
                "stalled",
                tower::util::BoxService::new(tower::load_shed::LoadShed::new(stalled)),
            )
            .publisher("healthy", tower::util::BoxService::new(healthy));
        let fut = tokio::spawn(fanout.oneshot(Message::new("orders", "x")));
        let (_, respond) = healthy_handle.next_request().await.unwrap();
        respond.send_response(receipt(1));
        let err = fut.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert!(failures(&err).get("stalled").is_some(), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_whose_readiness_fails_counts_as_failed() {
        let (publishers, mut handles) = publishers(2);
        handles[0].send_error("connection closed");
        handles[1].allow(1);
        let mut fanout = mock::Spawn::new(fan_out(Policy::Any, publishers));
        assert_ready_ok!(fanout.poll_ready());
        let fut = tokio::spawn(fanout.call(Message::new("orders", "x")));
        let (_, respond) = handles[1].next_request().await.unwrap();
        respond.send_response(receipt(1));
        assert_eq!(
            fut.await.unwrap().unwrap(),
            Receipt::fan_out(vec![receipt(1)])
        );
        assert!(!matches!(handles[0].poll_request(), Poll::Ready(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn an_impossible_policy_is_a_permanent_error_and_calls_nobody() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(1);
        handles[1].allow(1);
        let err = fan_out(Policy::AtLeast(3), publishers)
            .oneshot(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(
            err.to_string().contains("needs 3 publishers, only 2"),
            "{err}"
        );
        for h in &mut handles {
            assert!(!matches!(h.poll_request(), Poll::Ready(Some(_))));
        }
        let err = FanOut::<Publisher>::new(Policy::Any)
            .oneshot(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no publishers"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_uses_the_primary_when_it_accepts() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(1);
        handles[1].allow(1);
        let fut = tokio::spawn(fallback(publishers).oneshot(Message::new("orders", "x")));
        let (_, respond) = handles[0].next_request().await.unwrap();
        respond.send_response(receipt(1));
        assert_eq!(fut.await.unwrap().unwrap(), receipt(1));
        assert!(!matches!(handles[1].poll_request(), Poll::Ready(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_moves_on_after_a_transient_failure() {
        let (publishers, mut handles) = publishers(3);
        for h in &mut handles {
            h.allow(1);
        }
        let fut = tokio::spawn(fallback(publishers).oneshot(Message::new("orders", "x")));
        let (_, respond) = handles[0].next_request().await.unwrap();
        respond.send_error(transient());
        let (message, respond) = handles[1].next_request().await.unwrap();
        assert_eq!(message.destination(), "orders");
        respond.send_response(receipt(2));
        assert_eq!(fut.await.unwrap().unwrap(), receipt(2));
        assert!(!matches!(handles[2].poll_request(), Poll::Ready(Some(_))));
    }

    fn assert_called_before_ready(err: &Error, broker: &str) {
        crate::test_support::assert_called_before_ready(
            err,
            broker,
            Operation::Publish,
            Some("orders"),
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fan_out_call_without_poll_ready_fails_and_keeps_the_readiness_it_has() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(1);
        handles[1].allow(0);
        let mut fan_out = mock::Spawn::new(fan_out(Policy::All, publishers));
        let err = fan_out.call(Message::new("orders", "x")).await.unwrap_err();
        assert_called_before_ready(&err, "fanout");
        // `a` is ready, `b` is not: still refused, and `a` is not called.
        assert_pending!(fan_out.poll_ready());
        let err = fan_out.call(Message::new("orders", "x")).await.unwrap_err();
        assert_called_before_ready(&err, "fanout");
        assert!(!matches!(handles[0].poll_request(), Poll::Ready(Some(_))));
        // Once every publisher is ready, the fan-out works as usual.
        handles[1].allow(1);
        assert_ready_ok!(fan_out.poll_ready());
        let fut = tokio::spawn(fan_out.call(Message::new("orders", "x")));
        for (i, h) in handles.iter_mut().enumerate() {
            let (_, respond) = h.next_request().await.unwrap();
            respond.send_response(receipt(i as u64));
        }
        assert_eq!(
            fut.await.unwrap().unwrap(),
            Receipt::fan_out(vec![receipt(0), receipt(1)])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_call_without_poll_ready_fails_and_keeps_readiness_failures() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(0);
        handles[1].allow(0);
        let mut fallback = mock::Spawn::new(fallback(publishers));
        let err = fallback
            .call(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert_called_before_ready(&err, "fallback");
        // The primary failed its readiness, the secondary is not ready yet: refused.
        handles[0].send_error("closed");
        assert_pending!(fallback.poll_ready());
        let err = fallback
            .call(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert_called_before_ready(&err, "fallback");
        // The primary's failure is kept for the next message.
        handles[1].allow(1);
        assert_ready_ok!(fallback.poll_ready());
        let fut = tokio::spawn(fallback.call(Message::new("orders", "x")));
        let (_, respond) = handles[1].next_request().await.unwrap();
        respond.send_error(transient());
        let err = fut.await.unwrap().unwrap_err();
        let primary = failures(&err).get("primary").unwrap();
        assert_eq!(primary.error().unwrap().to_string(), "closed");
        // And the fallback works as usual.
        handles[1].allow(1);
        assert_ready_ok!(fallback.poll_ready());
        let fut = tokio::spawn(fallback.call(Message::new("orders", "x")));
        let (_, respond) = handles[1].next_request().await.unwrap();
        respond.send_response(receipt(2));
        assert_eq!(fut.await.unwrap().unwrap(), receipt(2));
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_stops_at_a_permanent_failure() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(1);
        handles[1].allow(1);
        let fut = tokio::spawn(fallback(publishers).oneshot(Message::new("orders", "x")));
        let (_, respond) = handles[0].next_request().await.unwrap();
        respond.send_error(permanent());
        let err = fut.await.unwrap().unwrap_err();
        assert_eq!(err.broker(), "fallback");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(failures(&err).get("primary").is_some());
        assert!(
            err.to_string()
                .contains("`primary`: memory publish failed (permanent)"),
            "{err}"
        );
        assert!(!matches!(handles[1].poll_request(), Poll::Ready(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_fails_transiently_when_every_publisher_failed_transiently() {
        let (publishers, mut handles) = publishers(2);
        handles[0].allow(1);
        handles[1].allow(1);
        let fut = tokio::spawn(fallback(publishers).oneshot(Message::new("orders", "x")));
        for h in &mut handles {
            let (_, respond) = h.next_request().await.unwrap();
            respond.send_error(transient());
        }
        let err = fut.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(
            failures(&err)
                .iter()
                .map(PublisherFailure::publisher)
                .collect::<Vec<_>>(),
            ["primary", "secondary"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_skips_a_primary_that_is_not_ready() {
        let (publishers, mut handles) = publishers(2);
        let mut fallback = mock::Spawn::new(fallback(publishers));
        handles[0].allow(0);
        handles[1].allow(0);
        assert_pending!(fallback.poll_ready());
        handles[1].allow(1);
        assert!(fallback.is_woken());
        assert_ready_ok!(fallback.poll_ready());
        let fut = tokio::spawn(fallback.call(Message::new("orders", "x")));
        let (_, respond) = handles[1].next_request().await.unwrap();
        respond.send_response(receipt(2));
        assert_eq!(fut.await.unwrap().unwrap(), receipt(2));

        // When the secondary fails too, the error says the primary was not ready.
        handles[1].allow(1);
        assert_ready_ok!(fallback.poll_ready());
        let fut = tokio::spawn(fallback.call(Message::new("orders", "x")));
        let (_, respond) = handles[1].next_request().await.unwrap();
        respond.send_error(transient());
        let err = fut.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        let primary = failures(&err).get("primary").unwrap();
        assert!(primary.error().is_none());
        assert!(err.to_string().contains("`primary`: not ready"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn fallback_reports_when_every_publisher_failed_readiness() {
        let (publishers, mut handles) = publishers(2);
        handles[0].send_error("closed");
        handles[1].send_error("closed too");
        let mut fallback = mock::Spawn::new(fallback(publishers));
        assert_ready_ok!(fallback.poll_ready());
        let err = fallback
            .call(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(failures(&err).len(), 2);
        let err = Fallback::<Publisher>::new()
            .oneshot(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(err.to_string().contains("no publishers"), "{err}");
    }
}
