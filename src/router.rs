//! Topic-pattern routing of deliveries to handlers: an event bus on any broker.
//!
//! A [`Router`] is a `Service<Delivery>` that looks at each delivery's destination and
//! hands it to the handler of the first route whose [`Pattern`] matches, or to the
//! fallback handler, or fails with a permanent error naming the destination.
//!
//! # Patterns
//!
//! Patterns follow AMQP topic-exchange semantics. A destination is split into words on
//! every `.` (`"orders.eu.created"` has the words `orders`, `eu`, `created`); a pattern
//! is a `.`-separated list of words where
//!
//! - a literal word matches exactly that word;
//! - `*` matches exactly one word;
//! - `#` matches zero or more words.
//!
//! So `orders.*` matches `orders.created` but neither `orders` nor `orders.eu.created`;
//! `logs.#` matches `logs`, `logs.app` and `logs.app.error`; `#.error` matches `error`
//! and `app.db.error`; `#` matches everything.
//!
//! Patterns are checked when a route is added ([`Router::route`] returns
//! [`InvalidPattern`]): a pattern must not be empty, must not have empty words
//! (`a..b`, `.a`, `a.`), and `*` and `#` must be whole words (`ord*` is rejected rather
//! than taken literally, since it is almost always a mistake). A destination may
//! contain anything; an empty word in a destination is matched by `*` and `#` only.
//!
//! # Which route wins
//!
//! The **first** route, in the order routes were added, whose pattern matches. Add
//! specific patterns before general ones: with `route("orders.#", a)` then
//! `route("orders.created", b)`, `b` never runs. First-match is predictable, needs no
//! notion of "more specific", and lets matching stop at the first hit. Matching
//! allocates nothing: patterns are compiled into words once, and a destination is
//! walked in place.
//!
//! # Readiness
//!
//! The destination of the next delivery is unknown until it arrives, so the router is
//! ready only when **every** handler (and the fallback) is ready, as tower's `Steer`
//! does. A handler that is not ready therefore holds back deliveries bound for the
//! others: backpressure is conservative, never a lie. Readiness is remembered per
//! handler, so after a call only the handler that was called is polled again. To let
//! one slow handler lag without stalling the rest, give it its own queue with
//! `tower::buffer::Buffer` (its readiness then only reflects a full buffer).
//!
//! Handlers may be of different types; each is boxed once, when its route is added,
//! into a `BoxCloneService`, so handlers must be `Clone + Send + 'static`. All handlers
//! return the same response type `Res` (often `()`); their errors are passed through
//! unchanged as [`BoxError`]s, so a handler's transient/permanent classification
//! reaches whoever settles the delivery.
//!
//! # Example
//!
//! One stream of deliveries from several topics of the in-memory broker, each
//! delivery handled by the route its topic matches, run by [`serve`](crate::serve()):
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::IntoFuture;
//! use tokio::sync::{mpsc, oneshot};
//! use tower::{service_fn, ServiceExt};
//! use tower_mq::memory::Broker;
//! use tower_mq::router::Router;
//! use tower_mq::{serve, BoxError, Delivery, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let broker = Broker::new();
//! let deliveries = futures_util::stream::select_all([
//!     broker.subscribe("orders.created")?,
//!     broker.subscribe("logs.app.error")?,
//!     broker.subscribe("metrics")?,
//! ]);
//!
//! // Each handler reports which route ran.
//! let (seen_tx, mut seen) = mpsc::unbounded_channel();
//! let handler = |route: &'static str| {
//!     let seen_tx = seen_tx.clone();
//!     service_fn(move |delivery: Delivery| {
//!         let _ = seen_tx.send((route, delivery.message().destination().to_owned()));
//!         async { Ok::<_, BoxError>(()) }
//!     })
//! };
//! let router = Router::new()
//!     .route("orders.*", handler("orders"))?
//!     .route("logs.#", handler("logs"))?
//!     .fallback(handler("other"));
//!
//! let (stop, stopped) = oneshot::channel::<()>();
//! let server = tokio::spawn(
//!     serve(deliveries, router)
//!         .with_graceful_shutdown(async { stopped.await.ok(); })
//!         .into_future(),
//! );
//! let publisher = broker.publisher();
//! for topic in ["orders.created", "logs.app.error", "metrics"] {
//!     publisher.clone().oneshot(Message::new(topic, "{}")).await?;
//! }
//! let mut routed = Vec::new();
//! for _ in 0..3 {
//!     routed.push(seen.recv().await.expect("a handler ran"));
//! }
//! routed.sort();
//! assert_eq!(routed, [
//!     ("logs", "logs.app.error".to_owned()),
//!     ("orders", "orders.created".to_owned()),
//!     ("other", "metrics".to_owned()),
//! ]);
//! stop.send(()).ok();
//! let summary = server.await??;
//! assert_eq!(summary.acked, 3);
//!
//! // An invalid pattern is an error, not a panic.
//! assert!(Router::<()>::new()
//!     .route("ord*", service_fn(|_: Delivery| async { Ok::<_, Infallible>(()) }))
//!     .is_err());
//!
//! // No route and no fallback: a permanent error naming the destination.
//! let err = Router::new()
//!     .route("orders.*", service_fn(|_: Delivery| async { Ok::<_, Infallible>(()) }))?
//!     .oneshot(Delivery::unacknowledged(Message::new("payments.done", "")))
//!     .await
//!     .unwrap_err();
//! assert!(err.to_string().contains("payments.done"));
//! # Ok(())
//! # }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_mq_core::{BoxError, Delivery, Error, Operation};

/// The broker name on errors the router raises itself.
const ROUTER: &str = "router";

/// A compiled topic pattern. See the [module docs](self) for the syntax.
///
/// ```
/// use tower_mq::router::Pattern;
///
/// let pattern: Pattern = "orders.#.created".parse()?;
/// assert!(pattern.matches("orders.created"));
/// assert!(pattern.matches("orders.eu.fr.created"));
/// assert!(!pattern.matches("orders.eu.updated"));
/// # Ok::<(), tower_mq::router::InvalidPattern>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: Box<str>,
    words: Box<[Word]>,
    /// No wildcards: matching is a string comparison.
    literal: bool,
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Word {
    Literal(Box<str>),
    Star,
    Hash,
}

impl Pattern {
    /// Compiles `pattern`, or says why it is invalid.
    pub fn parse(pattern: &str) -> Result<Pattern, InvalidPattern> {
        let invalid = |reason| InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        };
        if pattern.is_empty() {
            return Err(invalid("the pattern is empty"));
        }
        let mut words: Vec<Word> = Vec::new();
        for word in pattern.split('.') {
            let word = match word {
                "" => return Err(invalid("the pattern has an empty word")),
                "*" => Word::Star,
                // `#.#` matches exactly what `#` matches; keeping one makes matching
                // linear.
                "#" if words.last() == Some(&Word::Hash) => continue,
                "#" => Word::Hash,
                w if w.contains(['*', '#']) => {
                    return Err(invalid("`*` and `#` must be whole words"));
                }
                w => Word::Literal(w.into()),
            };
            words.push(word);
        }
        let literal = words.iter().all(|w| matches!(w, Word::Literal(_)));
        Ok(Pattern {
            source: pattern.into(),
            words: words.into_boxed_slice(),
            literal,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `destination` matches. Allocates nothing.
    pub fn matches(&self, destination: &str) -> bool {
        if self.literal {
            return &*self.source == destination;
        }
        // Glob matching with `#` as the "any sequence" wildcard over words: remember the
        // last `#` and, on a mismatch, let it swallow one more word. One backtrack point
        // suffices because every other pattern word matches exactly one word.
        let words = &self.words;
        let mut p = 0;
        // Byte offset where the next destination word starts; `None` once all words
        // are consumed.
        let mut t = Some(0);
        // (pattern index after the last `#`, destination offset the `#` stops before)
        let mut backtrack: Option<(usize, Option<usize>)> = None;
        loop {
            if let Some(word) = words.get(p) {
                match (word, t) {
                    (Word::Hash, _) => {
                        backtrack = Some((p + 1, t));
                        p += 1;
                        continue;
                    }
                    (Word::Star, Some(start)) => {
                        p += 1;
                        t = next_word(destination, start).1;
                        continue;
                    }
                    (Word::Literal(lit), Some(start)) => {
                        let (word, next) = next_word(destination, start);
                        if **lit == *word {
                            p += 1;
                            t = next;
                            continue;
                        }
                    }
                    (_, None) => {}
                }
            } else if t.is_none() {
                return true;
            }
            match backtrack {
                Some((after_hash, Some(start))) => {
                    let swallowed = next_word(destination, start).1;
                    backtrack = Some((after_hash, swallowed));
                    p = after_hash;
                    t = swallowed;
                }
                _ => return false,
            }
        }
    }
}

/// The word starting at byte `start` and where the next one starts, if any.
fn next_word(destination: &str, start: usize) -> (&str, Option<usize>) {
    let rest = &destination[start..];
    match rest.find('.') {
        Some(dot) => (&rest[..dot], Some(start + dot + 1)),
        None => (rest, None),
    }
}

impl FromStr for Pattern {
    type Err = InvalidPattern;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.source).finish()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A topic pattern that does not parse, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPattern {
    pattern: String,
    reason: &'static str,
}

impl InvalidPattern {
    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Why it was rejected.
    pub fn reason(&self) -> &str {
        self.reason
    }
}

impl fmt::Display for InvalidPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid topic pattern `{}`: {}",
            self.pattern, self.reason
        )
    }
}

impl StdError for InvalidPattern {}

type Handler<Res> = BoxCloneService<Delivery, Res, BoxError>;

/// A handler and whether it has said it is ready (and not been called since).
struct Slot<Res> {
    handler: Handler<Res>,
    ready: bool,
}

impl<Res> Slot<Res> {
    fn new(handler: Handler<Res>) -> Self {
        Slot {
            handler,
            ready: false,
        }
    }
}

impl<Res> Clone for Slot<Res> {
    fn clone(&self) -> Self {
        // A clone has not reserved anything yet.
        Slot::new(self.handler.clone())
    }
}

struct Route<Res> {
    pattern: Pattern,
    slot: Slot<Res>,
}

impl<Res> Clone for Route<Res> {
    fn clone(&self) -> Self {
        Route {
            pattern: self.pattern.clone(),
            slot: self.slot.clone(),
        }
    }
}

/// Routes each delivery to the handler of the first route whose pattern matches its
/// destination. See the [module docs](self).
pub struct Router<Res = ()> {
    routes: Vec<Route<Res>>,
    fallback: Option<Slot<Res>>,
}

impl<Res: 'static> Router<Res> {
    /// A router with no routes and no fallback.
    pub fn new() -> Self {
        Router {
            routes: Vec::new(),
            fallback: None,
        }
    }

    /// Adds a route: deliveries whose destination matches `pattern` (and no earlier
    /// route's) go to `handler`. Fails if `pattern` is invalid.
    pub fn route<S>(self, pattern: &str, handler: S) -> Result<Self, InvalidPattern>
    where
        S: Service<Delivery, Response = Res> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Ok(self.route_pattern(Pattern::parse(pattern)?, handler))
    }

    /// Adds a route for an already compiled pattern.
    pub fn route_pattern<S>(mut self, pattern: Pattern, handler: S) -> Self
    where
        S: Service<Delivery, Response = Res> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.routes.push(Route {
            pattern,
            slot: Slot::new(boxed(handler)),
        });
        self
    }

    /// Sets the handler for deliveries no route matches, replacing any earlier one.
    pub fn fallback<S>(mut self, handler: S) -> Self
    where
        S: Service<Delivery, Response = Res> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        self.fallback = Some(Slot::new(boxed(handler)));
        self
    }
}

impl<Res> Router<Res> {
    /// The pattern of the route `destination` would take, or `None` if it would go to
    /// the fallback (or fail, without one).
    pub fn route_for(&self, destination: &str) -> Option<&Pattern> {
        self.routes
            .iter()
            .map(|r| &r.pattern)
            .find(|p| p.matches(destination))
    }

    /// The routes' patterns, in matching order.
    pub fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        self.routes.iter().map(|r| &r.pattern)
    }

    /// Whether a fallback handler is set.
    pub fn has_fallback(&self) -> bool {
        self.fallback.is_some()
    }
}

fn boxed<S, Res>(handler: S) -> Handler<Res>
where
    S: Service<Delivery, Response = Res> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    BoxCloneService::new(handler.map_err(Into::into))
}

impl<Res: 'static> Default for Router<Res> {
    fn default() -> Self {
        Router::new()
    }
}

impl<Res> Clone for Router<Res> {
    fn clone(&self) -> Self {
        Router {
            routes: self.routes.clone(),
            fallback: self.fallback.clone(),
        }
    }
}

impl<Res> fmt::Debug for Router<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "routes",
                &self.routes.iter().map(|r| &r.pattern).collect::<Vec<_>>(),
            )
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl<Res> Service<Delivery> for Router<Res> {
    type Response = Res;
    type Error = BoxError;
    type Future = ResponseFuture<Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let mut all_ready = true;
        let slots = self
            .routes
            .iter_mut()
            .map(|r| &mut r.slot)
            .chain(self.fallback.as_mut());
        // Poll every handler, even after one is pending, so each registers its waker.
        for slot in slots {
            if slot.ready {
                continue;
            }
            match slot.handler.poll_ready(cx) {
                Poll::Ready(Ok(())) => slot.ready = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => all_ready = false,
            }
        }
        if all_ready {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Calling without a ready `poll_ready` resolves to a permanent
    /// [`Error::called_before_ready`] instead of panicking.
    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let destination = delivery.message().destination();
        let slot = match self
            .routes
            .iter_mut()
            .find(|r| r.pattern.matches(destination))
        {
            Some(route) => &mut route.slot,
            None => match self.fallback.as_mut() {
                Some(fallback) => fallback,
                None => {
                    let err = Error::permanent(ROUTER, Operation::Handle)
                        .with_destination(destination)
                        .with_reason("no route matches the destination and there is no fallback");
                    return ResponseFuture::failed(err);
                }
            },
        };
        if !std::mem::take(&mut slot.ready) {
            let err =
                Error::called_before_ready(ROUTER, Operation::Handle).with_destination(destination);
            return ResponseFuture::failed(err);
        }
        ResponseFuture {
            inner: Inner::Routed(slot.handler.call(delivery)),
        }
    }
}

/// The future a [`Router`] returns: the chosen handler's response, or the no-route
/// error.
pub struct ResponseFuture<Res> {
    inner: Inner<Res>,
}

enum Inner<Res> {
    Routed(BoxFuture<'static, Result<Res, BoxError>>),
    /// No route, or a call without a ready `poll_ready`.
    Failed(Option<BoxError>),
}

impl<Res> ResponseFuture<Res> {
    fn failed(error: Error) -> Self {
        ResponseFuture {
            inner: Inner::Failed(Some(error.into())),
        }
    }
}

impl<Res> Future for ResponseFuture<Res> {
    type Output = Result<Res, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            Inner::Routed(fut) => fut.as_mut().poll(cx),
            Inner::Failed(err) => match err.take() {
                Some(err) => Poll::Ready(Err(err)),
                None => panic!("router::ResponseFuture polled after completion"),
            },
        }
    }
}

impl<Res> fmt::Debug for ResponseFuture<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.inner {
            Inner::Routed(_) => "routed",
            Inner::Failed(_) => "failed",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower::service_fn;
    use tower_mq_core::error::{kind_of, ErrorKind};
    use tower_mq_core::{Message, Transient};
    use tower_test::mock;

    fn delivery(destination: &str) -> Delivery {
        Delivery::unacknowledged(Message::new(destination, "x"))
    }

    #[test]
    fn star_matches_exactly_one_word() {
        let p = Pattern::parse("orders.*").unwrap();
        assert!(p.matches("orders.created"));
        assert!(!p.matches("orders"));
        assert!(!p.matches("orders.eu.created"));
        assert!(!p.matches("payments.created"));
        let p = Pattern::parse("*.*.error").unwrap();
        assert!(p.matches("app.db.error"));
        assert!(!p.matches("app.error"));
    }

    #[test]
    fn hash_matches_zero_or_more_words() {
        let p = Pattern::parse("logs.#").unwrap();
        for yes in ["logs", "logs.app", "logs.app.error"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["log", "logsx", "app.logs", ""] {
            assert!(!p.matches(no), "{no}");
        }
        let p = Pattern::parse("#.error").unwrap();
        assert!(p.matches("error"));
        assert!(p.matches("app.db.error"));
        assert!(!p.matches("error.app"));
        let p = Pattern::parse("a.#.b.#.c").unwrap();
        for yes in [
            "a.b.c",
            "a.x.b.c",
            "a.b.y.c",
            "a.x.y.b.z.c",
            "a.b.b.c",
            "a.b.c.b.c",
        ] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["a.c", "a.b", "b.c", "a.b.c.d", "x.a.b.c"] {
            assert!(!p.matches(no), "{no}");
        }
        let p = Pattern::parse("#").unwrap();
        for yes in ["", "a", "a.b.c", "a..b"] {
            assert!(p.matches(yes), "{yes}");
        }
    }

    #[test]
    fn hash_and_star_combine() {
        let p = Pattern::parse("#.*").unwrap();
        assert!(p.matches("a"));
        assert!(p.matches("a.b.c"));
        let p = Pattern::parse("*.#.*").unwrap();
        assert!(p.matches("a.b"));
        assert!(p.matches("a.b.c.d"));
        assert!(!p.matches("a"));
        let p = Pattern::parse("a.#.#.b").unwrap();
        assert!(p.matches("a.b"));
        assert!(p.matches("a.x.y.b"));
        assert_eq!(p.words.len(), 3, "consecutive `#` collapse");
    }

    /// The definition, written naively: recursion over split words.
    fn reference(pattern: &[&str], words: &[&str]) -> bool {
        match pattern.split_first() {
            None => words.is_empty(),
            Some((&"#", rest)) => (0..=words.len()).any(|skip| reference(rest, &words[skip..])),
            Some((&"*", rest)) => !words.is_empty() && reference(rest, &words[1..]),
            Some((lit, rest)) => words.first() == Some(lit) && reference(rest, &words[1..]),
        }
    }

    #[test]
    fn matching_agrees_with_the_definition() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pattern_words = ["a", "b", "*", "#"];
        let destination_words = ["a", "b", ""];
        for _ in 0..20_000 {
            let pattern: Vec<&str> = (0..rng.usize(1..6))
                .map(|_| pattern_words[rng.usize(..pattern_words.len())])
                .collect();
            let destination: Vec<&str> = (0..rng.usize(1..7))
                .map(|_| destination_words[rng.usize(..destination_words.len())])
                .collect();
            let (pattern_text, destination_text) = (pattern.join("."), destination.join("."));
            let compiled = Pattern::parse(&pattern_text).unwrap();
            assert_eq!(
                compiled.matches(&destination_text),
                reference(&pattern, &destination),
                "{pattern_text} vs {destination_text:?}"
            );
        }
    }

    #[test]
    fn literal_patterns_compare_whole_destinations() {
        let p = Pattern::parse("orders.created").unwrap();
        assert!(p.matches("orders.created"));
        assert!(!p.matches("orders.created.eu"));
        assert!(!p.matches("orders"));
    }

    #[test]
    fn empty_destination_words_match_only_wildcards() {
        assert!(Pattern::parse("orders.*").unwrap().matches("orders."));
        assert!(Pattern::parse("*").unwrap().matches(""));
        assert!(!Pattern::parse("orders").unwrap().matches("orders."));
    }

    #[test]
    fn invalid_patterns_are_errors() {
        for bad in ["", ".", "a..b", ".a", "a.", "ord*", "a.#b", "**", "a.b#"] {
            let err = Pattern::parse(bad).unwrap_err();
            assert_eq!(err.pattern(), bad);
            assert!(err.to_string().contains("invalid topic pattern"), "{err}");
        }
        let router: Result<Router, _> = Router::new().route("a..b", service_fn(ok_handler));
        assert_eq!(
            router.unwrap_err().reason(),
            "the pattern has an empty word"
        );
    }

    async fn ok_handler(_: Delivery) -> Result<(), BoxError> {
        Ok(())
    }

    /// A handler that records which route ran.
    fn recording(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Handler<()> {
        let log = log.clone();
        service_fn(move |d: Delivery| {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("{name}:{}", d.message().destination()));
                Ok::<_, BoxError>(())
            }
        })
        .boxed_clone()
    }

    #[tokio::test(start_paused = true)]
    async fn first_matching_route_wins_then_fallback() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut router = Router::new()
            .route("orders.created", recording("exact", &log))
            .unwrap()
            .route("orders.#", recording("orders", &log))
            .unwrap()
            // Shadowed by `orders.#`: never runs.
            .route("orders.updated", recording("shadowed", &log))
            .unwrap()
            .fallback(recording("fallback", &log));
        for dest in [
            "orders.created",
            "orders.updated",
            "orders",
            "payments.done",
        ] {
            router
                .ready()
                .await
                .unwrap()
                .call(delivery(dest))
                .await
                .unwrap();
        }
        assert_eq!(
            *log.lock().unwrap(),
            [
                "exact:orders.created",
                "orders:orders.updated",
                "orders:orders",
                "fallback:payments.done"
            ]
        );
        assert_eq!(
            router.route_for("orders.updated").map(Pattern::as_str),
            Some("orders.#")
        );
        assert_eq!(router.route_for("payments.done"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn no_route_without_fallback_is_a_permanent_error_naming_the_destination() {
        let (handler, mut handle) = mock::pair::<Delivery, ()>();
        handle.allow(1);
        let mut router = Router::new().route("orders.*", handler).unwrap();
        let err = router
            .ready()
            .await
            .unwrap()
            .call(delivery("payments.done"))
            .await
            .unwrap_err();
        assert_eq!(kind_of(&*err), Some(ErrorKind::Permanent));
        let err = err.downcast::<Error>().unwrap();
        assert_eq!(err.destination(), Some("payments.done"));
        assert_eq!(err.operation(), Operation::Handle);
        assert!(err.to_string().contains("payments.done"), "{err}");
        // The handler was not called and keeps its readiness.
        assert!(handle.poll_request().is_pending());
        assert_ready_ok!(mock::Spawn::new(router).poll_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_when_every_handler_is_ready() {
        let (a, mut ha) = mock::pair::<Delivery, ()>();
        let (b, mut hb) = mock::pair::<Delivery, ()>();
        let (fallback, mut hf) = mock::pair::<Delivery, ()>();
        let mut router = mock::Spawn::new(
            Router::new()
                .route("a", a)
                .unwrap()
                .route("b", b)
                .unwrap()
                .fallback(fallback),
        );
        ha.allow(1);
        hb.allow(0);
        hf.allow(1);
        assert_pending!(router.poll_ready());
        hb.allow(1);
        assert!(router.is_woken());
        assert_ready_ok!(router.poll_ready());

        let fut = router.call(delivery("b"));
        let (req, send) = hb.next_request().await.unwrap();
        assert_eq!(req.message().destination(), "b");
        send.send_response(());
        fut.await.unwrap();

        // Only `b` was consumed: the router waits for it alone.
        assert_pending!(router.poll_ready());
        hb.allow(1);
        assert_ready_ok!(router.poll_ready());
        let fut = router.call(delivery("zzz"));
        let (req, send) = hf.next_request().await.unwrap();
        assert_eq!(req.message().destination(), "zzz");
        send.send_response(());
        fut.await.unwrap();
        assert!(ha.poll_request().is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_buffered_handler_does_not_hold_back_the_others() {
        let (slow, mut slow_handle) = mock::pair::<Delivery, ()>();
        let (fast, mut fast_handle) = mock::pair::<Delivery, ()>();
        slow_handle.allow(0);
        fast_handle.allow(1);
        let mut router = mock::Spawn::new(
            Router::new()
                .route("slow", tower::buffer::Buffer::new(slow, 4))
                .unwrap()
                .route("fast", fast)
                .unwrap(),
        );
        assert_ready_ok!(router.poll_ready());
        // The slow handler's delivery waits in its buffer...
        let slow_fut = tokio::spawn(router.call(delivery("slow")));
        assert_ready_ok!(router.poll_ready());
        // ...while the fast one is handled.
        let fast_fut = router.call(delivery("fast"));
        let (_, respond) = fast_handle.next_request().await.unwrap();
        respond.send_response(());
        fast_fut.await.unwrap();
        slow_handle.allow(1);
        let (_, respond) = slow_handle.next_request().await.unwrap();
        respond.send_response(());
        slow_fut.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn handler_readiness_errors_surface() {
        let (a, mut ha) = mock::pair::<Delivery, ()>();
        let mut router = mock::Spawn::new(Router::new().route("a", a).unwrap());
        ha.send_error("handler broken");
        let err = router.poll_ready();
        match err {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "handler broken"),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Counts `poll_ready` calls; always ready.
    #[derive(Clone, Default)]
    struct CountingReadiness(Arc<std::sync::atomic::AtomicUsize>);

    impl Service<Delivery> for CountingReadiness {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Delivery) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_remembered_and_not_cloned() {
        let handler = CountingReadiness::default();
        let polls = || handler.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut router = mock::Spawn::new(Router::new().route("a", handler.clone()).unwrap());
        assert_ready_ok!(router.poll_ready());
        assert_ready_ok!(router.poll_ready());
        assert_eq!(polls(), 1, "a reserved handler is not polled again");
        let mut clone = mock::Spawn::new(router.get_ref().clone());
        assert_ready_ok!(clone.poll_ready());
        assert_eq!(polls(), 2, "a clone reserves for itself");
        router.call(delivery("a")).await.unwrap();
        assert_ready_ok!(router.poll_ready());
        assert_eq!(polls(), 3, "a call consumes the reservation");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_without_poll_ready_fails_permanently_and_calls_no_handler() {
        let (a, mut ha) = mock::pair::<Delivery, ()>();
        ha.allow(1);
        let mut router = mock::Spawn::new(Router::new().route("a", a).unwrap());
        let err = router.call(delivery("a")).await.unwrap_err();
        assert_eq!(kind_of(&*err), Some(ErrorKind::Permanent));
        let err = err.downcast::<Error>().unwrap();
        crate::test_support::assert_called_before_ready(
            &err,
            err.broker(),
            Operation::Handle,
            Some("a"),
        );
        assert!(ha.poll_request().is_pending(), "the handler was not called");
        // The router works as usual afterwards.
        assert_ready_ok!(router.poll_ready());
        let fut = router.call(delivery("a"));
        let (req, send) = ha.next_request().await.unwrap();
        assert_eq!(req.message().destination(), "a");
        send.send_response(());
        fut.await.unwrap();
        // The call consumed the handler's readiness: calling again is refused.
        assert!(router.call(delivery("a")).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn handler_errors_keep_their_classification() {
        let failing =
            service_fn(|_: Delivery| async { Err::<(), _>(Transient::new("database busy")) });
        let router = Router::new().route("orders.*", failing).unwrap();
        let err = router
            .oneshot(delivery("orders.created"))
            .await
            .unwrap_err();
        assert_eq!(kind_of(&*err), Some(ErrorKind::Transient));
        assert_eq!(err.to_string(), "database busy");
    }

    #[tokio::test(start_paused = true)]
    async fn handlers_of_different_types_share_a_response_type() {
        #[derive(Clone)]
        struct Fixed(&'static str);
        impl Service<Delivery> for Fixed {
            type Response = &'static str;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<&'static str, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Delivery) -> Self::Future {
                std::future::ready(Ok(self.0))
            }
        }
        let mut router = Router::new()
            .route("a.*", Fixed("struct"))
            .unwrap()
            .fallback(service_fn(|_: Delivery| async {
                Ok::<_, BoxError>("closure")
            }));
        let r = router.ready().await.unwrap().call(delivery("a.b")).await;
        assert_eq!(r.unwrap(), "struct");
        let r = router.ready().await.unwrap().call(delivery("c")).await;
        assert_eq!(r.unwrap(), "closure");
    }
}
