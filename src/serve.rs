//! Drive a consumer's deliveries through a handler [`Service`], settling each by its
//! outcome.
//!
//! [`serve`] takes a consumer (any `Stream<Item = Result<Delivery, Error>>`) and a
//! handler (any `Service<Delivery>` whose error converts into [`BoxError`]) and runs
//! until the consumer ends, a [graceful shutdown](Serve::with_graceful_shutdown) is
//! signalled, or the consumer fails permanently:
//!
//! - It waits for the handler to be ready *before* taking the next delivery, so a rate
//!   limit or a concurrency limit on the handler slows consumption instead of piling up
//!   deliveries, and it keeps at most [`concurrency`](Serve::concurrency) deliveries in
//!   flight ([`DEFAULT_CONCURRENCY`] by default). Handler calls run concurrently
//!   inside the `serve` future, or each on a task of its own with
//!   [`spawn_handlers`](Serve::spawn_handlers).
//! - `Ok` acks the delivery. `Err` is classified ([`DefaultClassifier`] unless
//!   [configured](Serve::classifier)): a transient failure nacks the delivery for
//!   redelivery after a [delay](Serve::requeue_delay) that grows with its delivery
//!   count, until the delivery count reaches [`max_deliveries`](Serve::max_deliveries)
//!   ([`DEFAULT_MAX_DELIVERIES`] by default), when it is rejected to the dead-letter
//!   destination instead; a permanent failure is rejected at once.
//! - Dead letters follow the shared [convention](crate::dead_letter): the broker's
//!   `reject` publishes to `<destination>.dlq` unless configured, with the same
//!   `x-dead-letter-*` headers on every broker.
//! - A handler that panics, in `call` or in its future, is caught and counts as a
//!   transient failure (and in [`Summary::panicked`]).
//! - A handler call that runs longer than the [handler timeout](Serve::handler_timeout)
//!   ([`DEFAULT_HANDLER_TIMEOUT`] by default) is cancelled and counts as a transient
//!   failure (and in [`Summary::timed_out`]), so a hung handler cannot hold a slot
//!   forever. Keep it below the broker's own redelivery timer (JetStream's ack wait,
//!   the Redis consumer's claim idle time) so that a slow delivery is not handed to a
//!   second consumer while the first still runs it.
//! - A delivery from an at-most-once broker (core NATS, Redis Pub/Sub, ZeroMQ) whose
//!   handler failed cannot be redelivered or dead-lettered: it is logged and counted
//!   as [dropped](Summary::dropped), never as nacked.
//! - A delivery the handler settled itself is left as the handler settled it.
//! - A consumer error about one unreadable message ([`Code::Malformed`], e.g. a
//!   foreign peer's malformed frames) is logged, counted in [`Summary::malformed`] and
//!   skipped at once. Another transient consumer error is logged and consumption goes
//!   on after a short pause (10 ms, doubling with each error in a row, at most 1 s); a
//!   permanent one stops `serve`, which drains and returns that error. A handler whose `poll_ready`
//!   fails stops it the same way.
//! - Every settlement is counted in the `messaging_settlements_total` counter
//!   ([`SETTLEMENTS_TOTAL`]) of the `metrics` crate, by `destination` and
//!   `settlement`: `acked`, `nacked`, `rejected` (dead-lettered), `dropped` (an
//!   at-most-once delivery whose handler failed), `released` (handed back at the
//!   shutdown timeout) or `failed` (the broker did not take the settlement). Nothing
//!   is recorded until a recorder is installed (the Prometheus exporter, say).
//! - Stopping (shutdown signal, end of the stream, fatal error) takes no further
//!   deliveries, waits for those in flight and settles them, then returns a
//!   [`Summary`]. Draining waits at most the [shutdown timeout](Serve::shutdown_timeout)
//!   ([`DEFAULT_SHUTDOWN_TIMEOUT`] by default): then the handler calls still running are
//!   cancelled and their deliveries released to the broker for redelivery (nacked
//!   without delay; counted as [released](Summary::released)), not lost. Dropping the
//!   `serve` future instead abandons the deliveries in flight unsettled: the broker
//!   redelivers them after its own timeout.
//! - `serve` drops the consumer when it returns. A consumer that hands back what the
//!   broker sent ahead does so as it is dropped, in the background; to wait for that
//!   before the process exits, take the RabbitMQ or Redis Streams consumer's
//!   `released()` future before handing it to `serve` and await it after.
//!
//! [`Code::Malformed`]: crate::Code::Malformed
//!
//! # Who owns the attempt limit
//!
//! `serve`'s [`max_deliveries`](Serve::max_deliveries) is the one owner of the
//! delivery-attempt limit: it decides, for every delivery a handler finished, whether
//! a transient failure is redelivered or dead-lettered, the same way on every broker.
//! The other knobs do not compete with it:
//! - `DeadLetterLayer` (in the layers crate) decides within one delivery: it
//!   dead-letters a permanent failure through a publisher of its choosing and counts
//!   no attempts, so a transient failure reaches `serve` unchanged.
//! - The Redis Streams consumer's
//!   [`max_deliveries`](crate::redis::StreamConsumerConfig::max_deliveries)
//!   is a backstop for an entry that never comes back settled (the process died while
//!   handling it), which Redis would otherwise reclaim forever; its default is four
//!   times `serve`'s, and it must stay above `serve`'s limit or it cuts that short.
//! - Limits a broker enforces itself (JetStream's `max_deliver`, set by the NATS
//!   `ConsumerConfig::max_deliveries`, a quorum queue's
//!   `x-delivery-limit`) play the same backstop role: leave them unset or above
//!   `serve`'s limit.
//!
//! # Example
//!
//! ```
//! use std::future::IntoFuture;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceExt};
//! use tower_mq::memory::Broker;
//! use tower_mq::{serve, BoxError, Delivery, Message, Permanent};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let broker = Broker::new();
//! let consumer = broker.consumer("orders", "billing")?;
//! let mut dead_letters = broker.consumer("orders.dlq", "ops")?;
//!
//! let handler = service_fn(|delivery: Delivery| async move {
//!     match delivery.message().payload().as_ref() {
//!         b"" => Err(BoxError::from(Permanent::new("empty order"))),
//!         _ => Ok(()),
//!     }
//! });
//!
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(
//!     serve(consumer, handler)
//!         .concurrency(8)
//!         .max_deliveries(3)
//!         .requeue_delay(|count| Duration::from_millis(50 * u64::from(count)))
//!         .with_graceful_shutdown(async { stopped.await.ok(); })
//!         .into_future(),
//! );
//!
//! let publisher = broker.publisher();
//! publisher.clone().oneshot(Message::new("orders", "order 1")).await?;
//! publisher.oneshot(Message::new("orders", "")).await?;
//!
//! // The empty order is dead-lettered at once.
//! use futures_util::StreamExt;
//! let dead = dead_letters.next().await.expect("open")?;
//! assert_eq!(dead.message().payload().as_ref(), b"");
//!
//! stop.send(()).ok();
//! let summary = server.await??;
//! assert_eq!((summary.acked, summary.rejected), (1, 1));
//! # Ok(())
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::{poll_fn, Future, IntoFuture, Pending};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use metrics::Counter;
use tokio::task::JoinSet;
use tower::Service;
use tower_mq_core::cache::DestinationCache;
use tower_mq_core::{BoxError, Delivery, Error, ErrorKind, Settlement};
use tower_mq_layers::classify::{Classifier, DefaultClassifier};
use tower_mq_layers::metrics::names::labels;

/// The default [`Serve::concurrency`]: 16 deliveries in flight.
///
/// A delivery holds its slot until its settlement is done, so where an ack is a round
/// trip to the broker (Redis Streams, JetStream) a busy `serve` settles at most this
/// many deliveries per round trip. More slots alone buy little while the consumer
/// reads fewer at a time: end to end on Redis Streams (one consumer, a backlog, the
/// throughput bench), 64 slots over the consumer's default reads of 16 gained about a
/// fifth, and 64 slots over reads of 64 doubled the default's throughput. The default
/// stays 16, which bounds what a handler sees at once and matches the consumers'
/// default reads, sized so a group's consumers share a small backlog; raise both for
/// a lone consumer of a busy stream.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// The default [`Serve::max_deliveries`]: a delivery that failed transiently on its
/// 5th delivery is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

/// The default [`Serve::handler_timeout`]: a handler call is cancelled after 5 minutes.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(300);

/// The default [`Serve::shutdown_timeout`]: draining waits at most 30 seconds.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Counter: deliveries [`serve`] settled, by `destination` and `settlement` (`acked`,
/// `nacked`, `rejected`, `dropped`, `released`, `failed`). See the [module docs](self).
pub const SETTLEMENTS_TOTAL: &str = "messaging_settlements_total";

/// How long releasing the deliveries of cancelled handler calls may take in all.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Drives `consumer`'s deliveries through `handler`. See the [module docs](self).
///
/// Configure the returned [`Serve`], then `.await` it (or spawn its
/// [`into_future`](IntoFuture::into_future)).
pub fn serve<S, H>(consumer: S, handler: H) -> Serve<S, H> {
    Serve {
        consumer,
        handler,
        classifier: DefaultClassifier::new(),
        signal: std::future::pending(),
        concurrency: DEFAULT_CONCURRENCY,
        max_deliveries: DEFAULT_MAX_DELIVERIES,
        requeue_delay: Arc::new(default_requeue_delay),
        handler_timeout: Some(DEFAULT_HANDLER_TIMEOUT),
        shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
        spawn_handlers: false,
    }
}

/// The default [`Serve::requeue_delay`]: 100 ms after the first delivery, doubling with
/// each further delivery, at most 10 s.
pub fn default_requeue_delay(delivery_count: u32) -> Duration {
    let doublings = delivery_count.saturating_sub(1).min(16);
    (Duration::from_millis(100) * (1u32 << doublings)).min(Duration::from_secs(10))
}

type RequeueDelay = Arc<dyn Fn(u32) -> Duration + Send + Sync>;

/// A configured [`serve`] run: await it to run it.
///
/// See the [module docs](self).
pub struct Serve<S, H, C = DefaultClassifier, G = Pending<()>> {
    consumer: S,
    handler: H,
    classifier: C,
    signal: G,
    concurrency: usize,
    max_deliveries: u32,
    requeue_delay: RequeueDelay,
    handler_timeout: Option<Duration>,
    shutdown_timeout: Duration,
    spawn_handlers: bool,
}

impl<S, H, C: fmt::Debug, G> fmt::Debug for Serve<S, H, C, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("classifier", &self.classifier)
            .field("concurrency", &self.concurrency)
            .field("max_deliveries", &self.max_deliveries)
            .field("handler_timeout", &self.handler_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("spawn_handlers", &self.spawn_handlers)
            .finish_non_exhaustive()
    }
}

impl<S, H, C, G> Serve<S, H, C, G> {
    /// At most `deliveries` handled at once ([`DEFAULT_CONCURRENCY`] by default; at
    /// least 1).
    pub fn concurrency(mut self, deliveries: usize) -> Self {
        self.concurrency = deliveries.max(1);
        self
    }

    /// A delivery that fails transiently on its `deliveries`-th delivery is
    /// dead-lettered rather than nacked again ([`DEFAULT_MAX_DELIVERIES`] by default;
    /// at least 1, which dead-letters on the first failure).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// How long a transiently failed delivery waits before it is delivered again,
    /// given its delivery count (1 after its first delivery). The broker applies the
    /// delay where it can (see [`Acknowledge::nack`](crate::Acknowledge::nack)); a zero
    /// delay asks for redelivery at once. [`default_requeue_delay`] by default.
    pub fn requeue_delay<F>(mut self, delay: F) -> Self
    where
        F: Fn(u32) -> Duration + Send + Sync + 'static,
    {
        self.requeue_delay = Arc::new(delay);
        self
    }

    /// Cancels a handler call that runs longer than `timeout` and treats it as a
    /// transient failure ([`DEFAULT_HANDLER_TIMEOUT`] by default; `None` lets calls run
    /// as long as they take).
    pub fn handler_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.handler_timeout = timeout.into();
        self
    }

    /// How long stopping waits for the handler calls in flight before it cancels them
    /// and releases their deliveries to the broker ([`DEFAULT_SHUTDOWN_TIMEOUT`] by
    /// default).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Runs each handler call, with its settlement, in a task of its own, so that on a
    /// multi-threaded runtime calls run in parallel on its worker threads (default:
    /// `false`).
    ///
    /// By default the calls in flight run concurrently inside the `serve` future
    /// itself, as a tower server runs a connection's requests: no task is spawned per
    /// delivery, which is the cheapest for handlers that wait on I/O. Turn this on for
    /// handlers that compute for long between their awaits, so that several compute at
    /// once; either way a handler must not block its thread.
    pub fn spawn_handlers(mut self, spawn: bool) -> Self {
        self.spawn_handlers = spawn;
        self
    }

    /// Decides which handler errors are transient and which permanent.
    pub fn classifier<C2>(self, classifier: C2) -> Serve<S, H, C2, G> {
        Serve {
            consumer: self.consumer,
            handler: self.handler,
            classifier,
            signal: self.signal,
            concurrency: self.concurrency,
            max_deliveries: self.max_deliveries,
            requeue_delay: self.requeue_delay,
            handler_timeout: self.handler_timeout,
            shutdown_timeout: self.shutdown_timeout,
            spawn_handlers: self.spawn_handlers,
        }
    }

    /// Stops taking deliveries when `signal` completes, then drains what is in flight
    /// and returns.
    pub fn with_graceful_shutdown<G2>(self, signal: G2) -> Serve<S, H, C, G2>
    where
        G2: Future<Output = ()> + Send + 'static,
    {
        Serve {
            consumer: self.consumer,
            handler: self.handler,
            classifier: self.classifier,
            signal,
            concurrency: self.concurrency,
            max_deliveries: self.max_deliveries,
            requeue_delay: self.requeue_delay,
            handler_timeout: self.handler_timeout,
            shutdown_timeout: self.shutdown_timeout,
            spawn_handlers: self.spawn_handlers,
        }
    }
}

/// What a [`serve`] run did.
///
/// Counts are of deliveries, by how they ended up settled; a delivery the handler
/// settled itself is counted by its own settlement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// Deliveries taken from the consumer.
    pub received: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Nacked for redelivery.
    pub nacked: u64,
    /// Rejected to the dead-letter destination.
    pub rejected: u64,
    /// At-most-once deliveries whose handler failed: the broker can neither redeliver
    /// nor dead-letter them.
    pub dropped: u64,
    /// Deliveries whose handler call was still running at the shutdown timeout,
    /// cancelled and handed back to the broker for redelivery.
    pub released: u64,
    /// Messages the consumer could not read ([`Code::Malformed`] errors): reported
    /// and skipped; the consumer went on.
    ///
    /// [`Code::Malformed`]: crate::Code::Malformed
    pub malformed: u64,
    /// Handler calls that panicked (also counted as nacked, rejected or dropped).
    pub panicked: u64,
    /// Handler calls cancelled by the handler timeout (also counted as nacked,
    /// rejected or dropped).
    pub timed_out: u64,
    /// Deliveries the broker failed to settle (they will be redelivered).
    pub settle_failed: u64,
}

impl Summary {
    fn record(&mut self, outcome: Result<Outcome, String>) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // Settling is written not to panic; a call can only be lost this way.
            Err(error) => {
                tracing::error!(%error, "handling a delivery failed");
                self.panicked += 1;
                self.settle_failed += 1;
                return;
            }
        };
        self.count(outcome.settlement);
        self.panicked += u64::from(outcome.panicked);
        self.timed_out += u64::from(outcome.timed_out);
    }

    fn count(&mut self, settlement: Option<Settlement>) {
        match settlement {
            Some(Settlement::Acked) => self.acked += 1,
            Some(Settlement::Nacked) => self.nacked += 1,
            Some(Settlement::Rejected) => self.rejected += 1,
            Some(_) => self.dropped += 1,
            None => self.settle_failed += 1,
        }
    }
}

/// The future of a [`Serve`] run: a summary, or the error that stopped it.
pub struct ServeFuture {
    inner: BoxFuture<'static, Result<Summary, BoxError>>,
}

impl fmt::Debug for ServeFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeFuture").finish_non_exhaustive()
    }
}

impl Future for ServeFuture {
    type Output = Result<Summary, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, H, C, G> IntoFuture for Serve<S, H, C, G>
where
    S: Stream<Item = Result<Delivery, Error>> + Send + 'static,
    H: Service<Delivery> + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    C: Classifier<BoxError> + Send + Sync + 'static,
    G: Future<Output = ()> + Send + 'static,
{
    type Output = Result<Summary, BoxError>;
    type IntoFuture = ServeFuture;

    fn into_future(self) -> ServeFuture {
        ServeFuture {
            inner: Box::pin(self.run()),
        }
    }
}

/// How deliveries are settled, shared with the delivery tasks.
struct Policy<C> {
    classifier: C,
    max_deliveries: u32,
    requeue_delay: RequeueDelay,
    handler_timeout: Option<Duration>,
    settlements: SettlementCounters,
}

/// How one delivery ended.
struct Outcome {
    settlement: Option<Settlement>,
    panicked: bool,
    timed_out: bool,
}

enum Failure {
    Error(BoxError),
    Panic(String),
    TimedOut(Duration),
}

impl<S, H, C, G> Serve<S, H, C, G>
where
    S: Stream<Item = Result<Delivery, Error>> + Send + 'static,
    H: Service<Delivery> + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send + 'static,
    C: Classifier<BoxError> + Send + Sync + 'static,
    G: Future<Output = ()> + Send + 'static,
{
    async fn run(self) -> Result<Summary, BoxError> {
        let Serve {
            consumer,
            mut handler,
            classifier,
            signal,
            concurrency,
            max_deliveries,
            requeue_delay,
            handler_timeout,
            shutdown_timeout,
            spawn_handlers,
        } = self;
        let policy = Arc::new(Policy {
            classifier,
            max_deliveries,
            requeue_delay,
            handler_timeout,
            settlements: SettlementCounters::default(),
        });
        let mut in_flight = InFlight::default();
        let mut drain_deadline = pin!(tokio::time::sleep(Duration::ZERO));
        let mut draining = false;
        let mut consumer = pin!(consumer);
        let mut signal = pin!(signal);
        let mut calls = Calls::new(spawn_handlers);
        let mut summary = Summary::default();
        let mut stopping = false;
        let mut fatal: Option<BoxError> = None;
        // Consecutive transient consumer errors, and the pause they impose.
        let mut errors_in_a_row = 0u32;
        let mut pause = pin!(tokio::time::sleep(Duration::ZERO));
        let mut paused = false;

        loop {
            if stopping && calls.is_empty() {
                break;
            }
            if stopping && !draining {
                draining = true;
                drain_deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + shutdown_timeout);
            }
            let can_take = !stopping && !paused && calls.len() < concurrency;
            tokio::select! {
                biased;
                () = &mut signal, if !stopping => {
                    tracing::debug!(in_flight = calls.len(), "shutting down: draining");
                    stopping = true;
                }
                Some((call, ended)) = calls.next(), if !calls.is_empty() => {
                    in_flight.remove(call);
                    summary.record(ended);
                }
                () = &mut drain_deadline, if draining => {
                    tracing::warn!(
                        in_flight = calls.len(),
                        timeout = ?shutdown_timeout,
                        "shutdown timeout: cancelling handler calls and releasing their deliveries"
                    );
                    release(&mut calls, &mut in_flight, &mut summary, &policy).await;
                }
                () = &mut pause, if paused && !stopping => paused = false,
                next = next_when_ready(&mut handler, consumer.as_mut()), if can_take => match next {
                    Err(error) => {
                        tracing::error!(%error, "handler failed: draining and stopping");
                        fatal = Some(error);
                        stopping = true;
                    }
                    Ok(None) => {
                        tracing::debug!(in_flight = calls.len(), "consumer ended: draining");
                        stopping = true;
                    }
                    Ok(Some(Err(error))) if error.is_about_one_message() => {
                        // One unreadable message: the consumer is healthy, so no pause.
                        summary.malformed += 1;
                        tracing::warn!(%error, "unreadable message skipped: continuing");
                    }
                    Ok(Some(Err(error))) if error.kind() == ErrorKind::Transient => {
                        errors_in_a_row += 1;
                        let wait = consumer_error_pause(errors_in_a_row);
                        tracing::warn!(%error, ?wait, "consumer error: continuing");
                        pause.as_mut().reset(tokio::time::Instant::now() + wait);
                        paused = true;
                    }
                    Ok(Some(Err(error))) => {
                        tracing::error!(%error, "consumer failed: draining and stopping");
                        fatal = Some(error.into());
                        stopping = true;
                    }
                    Ok(Some(Ok(delivery))) => {
                        errors_in_a_row = 0;
                        summary.received += 1;
                        let call = catch_unwind(AssertUnwindSafe(|| handler.call(delivery.clone())));
                        let id = in_flight.insert(delivery.clone());
                        calls.push(tagged(id, handle(call, delivery, policy.clone())));
                    }
                },
            }
        }
        match fatal {
            Some(error) => Err(error),
            None => Ok(summary),
        }
    }
}

/// The deliveries whose handler calls run, to release them if the shutdown timeout
/// cancels their calls; a call's number is its delivery's slot, reused once the call
/// ended (no hashing per delivery).
#[derive(Default)]
struct InFlight {
    slots: Vec<Option<Delivery>>,
    free: Vec<usize>,
}

impl InFlight {
    fn insert(&mut self, delivery: Delivery) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(delivery);
                slot
            }
            None => {
                self.slots.push(Some(delivery));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(taken) = self.slots.get_mut(slot) {
            if taken.take().is_some() {
                self.free.push(slot);
            }
        }
    }

    fn drain(&mut self) -> impl Iterator<Item = Delivery> + '_ {
        self.free.clear();
        self.slots.drain(..).flatten()
    }
}

/// The handler calls in flight, each with its number: run inside the `serve` future,
/// or each in a task.
struct Calls<T> {
    inline: FuturesUnordered<T>,
    spawned: JoinSet<(usize, Result<Outcome, String>)>,
    spawn: bool,
}

/// A call that reports its number with its outcome, or with why it was lost (a panic
/// outside the handler: settling is written not to panic).
fn tagged<F: Future<Output = Outcome>>(
    id: usize,
    call: F,
) -> impl Future<Output = (usize, Result<Outcome, String>)> {
    AssertUnwindSafe(call).catch_unwind().map(move |ended| {
        (
            id,
            ended.map_err(|panic| format!("panicked: {}", panic_message(&*panic))),
        )
    })
}

impl<T> Calls<T>
where
    T: Future<Output = (usize, Result<Outcome, String>)> + Send + 'static,
{
    fn new(spawn: bool) -> Self {
        Calls {
            inline: FuturesUnordered::new(),
            spawned: JoinSet::new(),
            spawn,
        }
    }

    fn len(&self) -> usize {
        self.inline.len() + self.spawned.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, call: T) {
        if self.spawn {
            self.spawned.spawn(call);
        } else {
            self.inline.push(call);
        }
    }

    /// The next call to end. Cancel-safe.
    async fn next(&mut self) -> Option<(usize, Result<Outcome, String>)> {
        if self.spawn {
            loop {
                match self.spawned.join_next().await? {
                    Ok(ended) => return Some(ended),
                    // Only cancelling aborts a task, and `cancel` joins those itself.
                    Err(error) => tracing::error!(%error, "a delivery task failed"),
                }
            }
        } else {
            self.inline.next().await
        }
    }

    /// Cancels every call still running, and returns those that had ended.
    async fn cancel(&mut self) -> Vec<(usize, Result<Outcome, String>)> {
        self.inline.clear();
        self.spawned.abort_all();
        let mut ended = Vec::new();
        while let Some(joined) = self.spawned.join_next().await {
            if let Ok(output) = joined {
                ended.push(output);
            }
        }
        ended
    }
}

/// Cancels every handler call still running and hands its delivery back to the broker
/// (a nack without delay), within [`RELEASE_TIMEOUT`] in all.
async fn release<T, C>(
    calls: &mut Calls<T>,
    in_flight: &mut InFlight,
    summary: &mut Summary,
    policy: &Arc<Policy<C>>,
) where
    T: Future<Output = (usize, Result<Outcome, String>)> + Send + 'static,
    C: Send + Sync + 'static,
{
    for (call, ended) in calls.cancel().await {
        in_flight.remove(call);
        summary.record(ended);
    }
    let mut releases = JoinSet::new();
    for delivery in in_flight.drain() {
        let policy = policy.clone();
        releases.spawn(async move {
            if delivery.settlement().is_none() {
                if let Err(error) = delivery.nack(None).await {
                    tracing::warn!(%error, "releasing a cancelled delivery failed");
                }
            }
            let settlement = delivery.settlement();
            let counted = match settlement {
                Some(Settlement::Nacked) => Counted::Released,
                other => Counted::of(other),
            };
            policy
                .settlements
                .increment(delivery.message().destination(), counted);
            settlement
        });
    }
    let released = tokio::time::timeout(RELEASE_TIMEOUT, async {
        let mut settlements = Vec::new();
        while let Some(settled) = releases.join_next().await {
            settlements.push(settled.ok().flatten());
        }
        settlements
    })
    .await;
    match released {
        Ok(settlements) => {
            for settlement in settlements {
                match settlement {
                    Some(Settlement::Nacked) => summary.released += 1,
                    other => summary.count(other),
                }
            }
        }
        Err(_) => {
            tracing::warn!(
                unreleased = releases.len(),
                "the broker did not take back every cancelled delivery in time; it will \
                 redeliver them after its own timeout"
            );
            summary.settle_failed += releases.len() as u64;
            releases.abort_all();
        }
    }
}

/// How long to wait before polling a consumer again after `errors_in_a_row`
/// consecutive transient errors: 10 ms, doubling, at most 1 s, so a consumer that
/// keeps failing (while its broker is away) is not polled in a hot loop.
fn consumer_error_pause(errors_in_a_row: u32) -> Duration {
    let doublings = errors_in_a_row.saturating_sub(1).min(7);
    (Duration::from_millis(10) * (1u32 << doublings)).min(Duration::from_secs(1))
}

/// The consumer's next item, taken only once the handler is ready for it.
async fn next_when_ready<H, S>(
    handler: &mut H,
    mut consumer: Pin<&mut S>,
) -> Result<Option<S::Item>, BoxError>
where
    H: Service<Delivery>,
    H::Error: Into<BoxError>,
    S: Stream,
{
    poll_fn(|cx| match handler.poll_ready(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(error)) => Poll::Ready(Err(error.into())),
        Poll::Ready(Ok(())) => consumer.as_mut().poll_next(cx).map(Ok),
    })
    .await
}

/// Runs one handler call to completion and settles its delivery.
async fn handle<F, T, E, C>(
    call: std::thread::Result<F>,
    delivery: Delivery,
    policy: Arc<Policy<C>>,
) -> Outcome
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classifier<BoxError>,
{
    let result = match call {
        Err(panic) => Err(Failure::Panic(panic_message(&*panic))),
        Ok(future) => {
            let finished = Deadline {
                future: AssertUnwindSafe(future).catch_unwind(),
                timeout: policy.handler_timeout,
                sleep: None,
            }
            .await;
            match finished {
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(error))) => Err(Failure::Error(error.into())),
                Ok(Err(panic)) => Err(Failure::Panic(panic_message(&*panic))),
                Err(timeout) => Err(Failure::TimedOut(timeout)),
            }
        }
    };
    let panicked = matches!(result, Err(Failure::Panic(_)));
    let timed_out = matches!(result, Err(Failure::TimedOut(_)));
    let settled = match result {
        Ok(()) => delivery.ack().await,
        Err(failure) => settle_failure(&delivery, failure, &policy).await,
    };
    if let Err(error) = settled {
        if delivery.settlement() == Some(Settlement::Dropped) {
            tracing::warn!(
                destination = delivery.message().destination(),
                %error,
                "the handler failed an at-most-once delivery: it is dropped"
            );
        } else {
            tracing::error!(%error, "settling a delivery failed; the broker will redeliver it");
        }
    }
    let settlement = delivery.settlement();
    policy
        .settlements
        .increment(delivery.message().destination(), Counted::of(settlement));
    Outcome {
        settlement,
        panicked,
        timed_out,
    }
}

/// The `settlement` label of [`SETTLEMENTS_TOTAL`]; its value is the slot of its
/// counter in [`SettlementCounters`].
#[derive(Clone, Copy)]
enum Counted {
    Acked,
    Nacked,
    Rejected,
    Dropped,
    /// Handed back to the broker at the shutdown timeout.
    Released,
    /// The broker did not take the settlement.
    Failed,
}

impl Counted {
    fn of(settlement: Option<Settlement>) -> Self {
        match settlement {
            Some(Settlement::Acked) => Counted::Acked,
            Some(Settlement::Nacked) => Counted::Nacked,
            Some(Settlement::Rejected) => Counted::Rejected,
            Some(_) => Counted::Dropped,
            None => Counted::Failed,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Counted::Acked => "acked",
            Counted::Nacked => "nacked",
            Counted::Rejected => "rejected",
            Counted::Dropped => "dropped",
            Counted::Released => "released",
            Counted::Failed => "failed",
        }
    }
}

/// [`SETTLEMENTS_TOTAL`]'s handles, registered once per destination and settlement:
/// building a metric's key and looking it up in the recorder per delivery costs more
/// than the rest of settling a delivery on a fast broker. Handles are bound to the
/// recorder current when they were registered (the first settlement of that kind on
/// that destination in this run). Past the cache's capacity, a settlement on a new
/// destination registers its counter anew (the uncached cost), so unbounded
/// destinations cannot grow it.
#[derive(Default)]
struct SettlementCounters {
    /// A run that settles one destination (the common case) finds its counters
    /// without a lock or a hash: it is the cache's first.
    by_destination: DestinationCache<Slots>,
}

/// One destination's counters, one slot per [`Counted`].
type Slots = [OnceLock<Counter>; 6];

impl SettlementCounters {
    fn increment(&self, destination: &str, counted: Counted) {
        let counters = self.by_destination.get(destination, Slots::default);
        counters[counted as usize]
            .get_or_init(|| {
                ::metrics::counter!(
                    SETTLEMENTS_TOTAL,
                    labels::DESTINATION => destination.to_owned(),
                    "settlement" => counted.name(),
                )
            })
            .increment(1);
    }
}

async fn settle_failure<C: Classifier<BoxError>>(
    delivery: &Delivery,
    failure: Failure,
    policy: &Policy<C>,
) -> Result<(), Error> {
    let (kind, cause) = match failure {
        Failure::Error(error) => (policy.classifier.classify(&error), error.to_string()),
        Failure::Panic(message) => (ErrorKind::Transient, format!("handler panicked: {message}")),
        Failure::TimedOut(timeout) => (
            ErrorKind::Transient,
            format!("handler timed out after {timeout:?}"),
        ),
    };
    if !delivery.acker().is_tracked() {
        // Nothing to requeue or dead-letter: the nack records the drop and says why.
        return delivery.nack(None).await;
    }
    let count = delivery.delivery_count();
    let destination = delivery.message().destination();
    if kind == ErrorKind::Permanent {
        tracing::warn!(
            destination,
            count,
            cause,
            "permanent failure: dead-lettering"
        );
        return delivery
            .reject(&format!("permanent failure: {cause}"))
            .await;
    }
    if count >= policy.max_deliveries {
        tracing::warn!(
            destination,
            count,
            cause,
            "failed too often: dead-lettering"
        );
        return delivery
            .reject(&format!("failed {count} times, last: {cause}"))
            .await;
    }
    let delay = (policy.requeue_delay)(count);
    tracing::debug!(
        destination,
        count,
        cause,
        ?delay,
        "transient failure: requeueing"
    );
    delivery.nack((!delay.is_zero()).then_some(delay)).await
}

pin_project_lite::pin_project! {
    /// A handler call cancelled `timeout` after its first poll left it pending: a call
    /// that ends at once costs no timer and no clock reading.
    struct Deadline<F> {
        #[pin]
        future: F,
        timeout: Option<Duration>,
        sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future> Future for Deadline<F> {
    /// The call's output, or the timeout it overran.
    type Output = Result<F::Output, Duration>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(timeout)),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// What a consumer's `released()` returns: completes once `done` is set, or its sender
/// is gone (the hand-back ended, or never runs). Consumers that hand back what the
/// broker sent ahead when they are dropped (by `serve`, say) share it.
#[cfg(any(feature = "rabbitmq", feature = "redis"))]
pub(crate) fn released(
    done: &tokio::sync::watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let mut done = done.clone();
    async move {
        let _ = done.wait_for(|done| *done).await;
    }
}

#[cfg(test)]
mod tests;
