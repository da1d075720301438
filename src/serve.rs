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
//!   flight ([`DEFAULT_CONCURRENCY`] by default). Handler futures run on their own
//!   tokio tasks.
//! - `Ok` acks the delivery. `Err` is classified ([`DefaultClassifier`] unless
//!   [configured](Serve::classifier)): a transient failure nacks the delivery for
//!   redelivery after a [delay](Serve::requeue_delay) that grows with its delivery
//!   count, until the delivery count reaches [`max_deliveries`](Serve::max_deliveries)
//!   ([`DEFAULT_MAX_DELIVERIES`] by default), when it is rejected to the dead-letter
//!   destination instead; a permanent failure is rejected at once.
//! - A handler that panics, in `call` or in its future, is caught and counts as a
//!   transient failure (and in [`Summary::panicked`]).
//! - A delivery the handler settled itself is left as the handler settled it.
//! - A transient consumer error is logged and consumption goes on after a short pause
//!   (10 ms, doubling with each error in a row, at most 1 s); a permanent one
//!   stops `serve`, which drains and returns that error. A handler whose `poll_ready`
//!   fails stops it the same way.
//! - Stopping (shutdown signal, end of the stream, fatal error) takes no further
//!   deliveries, waits for those in flight and settles them, then returns a
//!   [`Summary`]. Dropping the `serve` future instead abandons the deliveries in flight
//!   unsettled: the broker redelivers them.
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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::Stream;
use futures_util::FutureExt;
use tokio::task::{JoinError, JoinSet};
use tower::Service;
use tower_mq_core::{BoxError, Delivery, Error, ErrorKind, Settlement};
use tower_mq_layers::classify::{Classifier, DefaultClassifier};

/// The default [`Serve::concurrency`]: 16 deliveries in flight.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// The default [`Serve::max_deliveries`]: a delivery that failed transiently on its
/// 5th delivery is dead-lettered.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;

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
}

impl<S, H, C: fmt::Debug, G> fmt::Debug for Serve<S, H, C, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("classifier", &self.classifier)
            .field("concurrency", &self.concurrency)
            .field("max_deliveries", &self.max_deliveries)
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
    /// Handler calls that panicked (also counted as nacked or rejected).
    pub panicked: u64,
    /// Deliveries the broker failed to settle (they will be redelivered).
    pub settle_failed: u64,
}

impl Summary {
    fn record(&mut self, outcome: Result<Outcome, JoinError>) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // Settling is written not to panic; a task can only be lost this way.
            Err(error) => {
                tracing::error!(%error, "a delivery task failed");
                self.panicked += 1;
                self.settle_failed += 1;
                return;
            }
        };
        match outcome.settlement {
            Some(Settlement::Acked) => self.acked += 1,
            Some(Settlement::Nacked) => self.nacked += 1,
            Some(Settlement::Rejected) => self.rejected += 1,
            None => self.settle_failed += 1,
        }
        if outcome.panicked {
            self.panicked += 1;
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
}

/// How one delivery ended.
struct Outcome {
    settlement: Option<Settlement>,
    panicked: bool,
}

enum Failure {
    Error(BoxError),
    Panic(String),
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
        } = self;
        let policy = Arc::new(Policy {
            classifier,
            max_deliveries,
            requeue_delay,
        });
        let mut consumer = pin!(consumer);
        let mut signal = pin!(signal);
        let mut tasks = JoinSet::new();
        let mut summary = Summary::default();
        let mut stopping = false;
        let mut fatal: Option<BoxError> = None;
        // Consecutive transient consumer errors, and the pause they impose.
        let mut errors_in_a_row = 0u32;
        let mut pause = pin!(tokio::time::sleep(Duration::ZERO));
        let mut paused = false;

        loop {
            if stopping && tasks.is_empty() {
                break;
            }
            let can_take = !stopping && !paused && tasks.len() < concurrency;
            tokio::select! {
                biased;
                () = &mut signal, if !stopping => {
                    tracing::debug!(in_flight = tasks.len(), "shutting down: draining");
                    stopping = true;
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => summary.record(joined),
                () = &mut pause, if paused && !stopping => paused = false,
                next = next_when_ready(&mut handler, consumer.as_mut()), if can_take => match next {
                    Err(error) => {
                        tracing::error!(%error, "handler failed: draining and stopping");
                        fatal = Some(error);
                        stopping = true;
                    }
                    Ok(None) => {
                        tracing::debug!(in_flight = tasks.len(), "consumer ended: draining");
                        stopping = true;
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
                        tasks.spawn(handle(call, delivery, policy.clone()));
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
        Ok(future) => match AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(Failure::Error(error.into())),
            Err(panic) => Err(Failure::Panic(panic_message(&*panic))),
        },
    };
    let panicked = matches!(result, Err(Failure::Panic(_)));
    let settled = match result {
        Ok(()) => delivery.ack().await,
        Err(failure) => settle_failure(&delivery, failure, &policy).await,
    };
    if let Err(error) = settled {
        tracing::error!(%error, "settling a delivery failed; the broker will redeliver it");
    }
    Outcome {
        settlement: delivery.settlement(),
        panicked,
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
    };
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

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests;
