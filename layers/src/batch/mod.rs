//! Grouping requests into batches: many callers, one inner call, one result each.
//!
//! [`Batch`] is a cloneable handle, like tower's `Buffer`, on a background worker that
//! owns the inner service. Every `call` adds its request to the batch being built, and
//! the batch is flushed as one call to the inner service when it holds
//! [`max_items`](BatchLayer::new) requests, when it weighs
//! [`max_bytes`](BatchLayer::max_bytes) (by [`Weigh`]), or when its oldest request has
//! waited [`max_latency`](BatchLayer::new), whichever comes first (tokio's clock).
//! The callers fill the batch themselves and hand it to the worker whole, and its
//! callers find their answers in one place shared by the batch: the worker is woken
//! once per batch, not once per request, and a request costs no channel of its own.
//!
//! The inner service takes a `Vec<Req>` and answers one result per request, in order
//! (a `Vec<Result<Resp, E>>`, or any [`BatchResults`]), the shape of the brokers'
//! native batch publishers. Each caller's future resolves after the flush with its own
//! result (ack after flush): a per-item failure reaches only that caller; a failure of
//! the whole call reaches every caller of the batch as [`error::BatchFailed`], whose
//! `source()` is the inner error (so it classifies as the inner error does). An answer
//! with too few results fails the missing ones with [`error::MissingResult`].
//!
//! Batches in flight: by default one at a time. While the inner call runs, the callers
//! fill the next batch, and the worker hands it over when that call has answered (if a
//! limit was reached in the meantime), so batches reach the inner service, and the
//! broker, in the order of the calls. [`BatchLayer::max_in_flight`] lets several
//! inner calls run at once, which is what a broker with a round trip per batch (a
//! confirmation, an ack) needs to keep its connection busy: each `call` on the inner
//! service is still made in order, but whether the broker sees the batches in that
//! order is up to the inner service (one that sends before its `call` returns keeps
//! it; one that sends as its future is polled, like the NATS and Redis batch
//! publishers, promises no order between two batches in flight).
//!
//! Backpressure: the queue is bounded ([`BatchLayer::queue_capacity`], by default
//! `max_items` times one more than `max_in_flight`: the batch being built and those
//! in flight). `poll_ready` reserves a slot (a semaphore permit) and `call` consumes
//! it; the slot is freed once the request's batch has answered. With the
//! queue full, `poll_ready` is `Pending`, so `ConcurrencyLimit`, `LoadShed` and the
//! serve loop behave as usual. Callers that dropped their future before the flush
//! are left out of the batch.
//!
//! Shutdown loses nothing: when every handle is dropped, or on
//! [`Batch::shutdown`], the worker stops accepting requests, flushes everything it
//! holds and has queued, and exits. If the worker dies (the inner service panicked or
//! failed `poll_ready`), callers get [`error::Closed`], whose `source()` says why,
//! rather than waiting forever.
//!
//! Each flush records the number of requests in the histogram `messaging_batch_size`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Message, Receipt};
//! use tower_mq_core::{Guarantee, Position};
//! use tower_mq_layers::batch::BatchLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! // A publisher that takes many messages at once (a Kafka or JetStream batch, say).
//! let batch_publisher = service_fn(|batch: Vec<Message>| async move {
//!     let results: Vec<Result<Receipt, BoxError>> = batch
//!         .iter()
//!         .enumerate()
//!         .map(|(i, m)| Ok(Receipt::new("memory", m.destination(), Guarantee::Stored).with_position(Position::Sequence(i as u64 + 1))))
//!         .collect();
//!     Ok::<_, BoxError>(results)
//! });
//! let publisher = BatchLayer::new(100, Duration::from_millis(5))
//!     .max_bytes(1 << 20)
//!     .layer(batch_publisher);
//!
//! let a = publisher.clone().oneshot(Message::new("orders", "a"));
//! let b = publisher.clone().oneshot(Message::new("orders", "b"));
//! let (a, b) = tokio::join!(a, b);
//! assert_eq!(a?, Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(1)));
//! assert_eq!(b?, Receipt::new("memory", "orders", Guarantee::Stored).with_position(Position::Sequence(2)));
//! publisher.shutdown().await;
//! # Ok(()) }
//! ```

mod layer;
mod slot;
mod worker;

pub mod error;
pub mod future;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch, Semaphore, TryAcquireError};
use tokio::time::Instant;
use tokio_util::sync::PollSemaphore;
use tower_mq_core::{BoxError, Delivery, Message};
use tower_service::Service;

use self::error::{BatchFailed, Closed};
use self::future::ResponseFuture;
pub use self::layer::BatchLayer;
use self::slot::{Answer, Slot};
pub use self::worker::Worker;
use crate::error::CalledBeforeReady;

/// The name of the histogram of flushed batch sizes.
pub const BATCH_SIZE_METRIC: &str = crate::metrics::names::BATCH_SIZE;

/// How much a request counts against [`BatchLayer::max_bytes`].
pub trait Weigh {
    /// The request's size in bytes, roughly what it costs on the wire.
    fn weight(&self) -> usize;
}

impl Weigh for Message {
    /// Payload, key and headers (names and values).
    fn weight(&self) -> usize {
        let headers: usize = self.headers().iter().map(|(k, v)| k.len() + v.size()).sum();
        self.payload().len() + self.key().map_or(0, <[u8]>::len) + headers
    }
}

impl Weigh for Delivery {
    fn weight(&self) -> usize {
        self.message().weight()
    }
}

impl Weigh for Bytes {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for Vec<u8> {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// What the inner service of a [`Batch`] answers: one result per request, in the
/// order of the requests.
pub trait BatchResults {
    /// One request's response.
    type Response;
    /// One request's failure.
    type Error: Into<BoxError>;

    /// The per-request results, in request order.
    fn into_results(self) -> Vec<Result<Self::Response, Self::Error>>;
}

impl<T, E: Into<BoxError>> BatchResults for Vec<Result<T, E>> {
    type Response = T;
    type Error = E;

    fn into_results(self) -> Vec<Result<T, E>> {
        self
    }
}

/// How a request is weighed (its [`Weigh`] implementation).
pub(crate) type Weigher<Req> = fn(&Req) -> usize;

/// Limits that decide when a batch is flushed.
pub(crate) struct Limits<Req> {
    pub(crate) max_items: usize,
    pub(crate) max_latency: Duration,
    pub(crate) max_bytes: Option<(usize, Weigher<Req>)>,
    pub(crate) queue_capacity: usize,
    pub(crate) max_in_flight: usize,
}

impl<Req> Clone for Limits<Req> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Req> Copy for Limits<Req> {}

impl<Req> fmt::Debug for Limits<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("max_items", &self.max_items)
            .field("max_latency", &self.max_latency)
            .field("max_bytes", &self.max_bytes.map(|(b, _)| b))
            .field("queue_capacity", &self.queue_capacity)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// What the handles and the worker share: the batch being built, the queue's slots and
/// why the worker stopped, if it failed.
pub(crate) struct Core<Req, Resp> {
    pub(crate) building: Mutex<Building<Req, Resp>>,
    pub(crate) semaphore: Arc<Semaphore>,
    pub(crate) failure: Arc<OnceLock<BatchFailed>>,
    pub(crate) limits: Limits<Req>,
}

impl<Req, Resp> Core<Req, Resp> {
    pub(crate) fn building(&self) -> MutexGuard<'_, Building<Req, Resp>> {
        // Nothing panics while holding the lock (the requests are only moved).
        self.building.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The batch the callers are filling: a caller adds its request to it in `call`, and
/// the caller whose request fills it hands it to the worker whole, so the worker and
/// the callers meet once per batch rather than once per request.
pub(crate) struct Building<Req, Resp> {
    pub(crate) requests: Vec<Req>,
    pub(crate) bytes: usize,
    /// Where this batch's callers find their answers; made with its first request.
    pub(crate) slot: Option<Arc<Slot<Resp>>>,
    /// Counts the batches begun, so the worker's deadline applies to the batch it was
    /// set for.
    pub(crate) generation: u64,
    /// The worker accepts no more requests.
    pub(crate) closed: bool,
}

impl<Req, Resp> Building<Req, Resp> {
    /// Takes the batch as it is, leaving an empty one to begin; `None` if it is empty.
    pub(crate) fn take(&mut self, semaphore: &Arc<Semaphore>) -> Option<Sealed<Req, Resp>> {
        let slot = self.slot.take()?;
        let requests = std::mem::take(&mut self.requests);
        self.bytes = 0;
        Some(Sealed {
            generation: self.generation,
            answer: Answer::new(slot, requests.len(), semaphore.clone()),
            requests,
        })
    }
}

/// A batch handed to the worker: its requests and how to answer their callers.
pub(crate) struct Sealed<Req, Resp> {
    pub(crate) requests: Vec<Req>,
    pub(crate) answer: Answer<Resp>,
    pub(crate) generation: u64,
}

/// What the callers tell the worker, in the order it happened.
pub(crate) enum Command<Req, Resp> {
    /// A batch was begun: flush it at `deadline` if it is not full by then.
    Begun { generation: u64, deadline: Instant },
    /// A full batch, to hand to the inner service.
    Full(Sealed<Req, Resp>),
}

/// What every handle on one worker shares, in one allocation: cloning a handle (once
/// per request, in the usual `clone().oneshot(request)`) counts one reference. When the
/// last handle is gone, so is the queue's sender, and the worker flushes and exits.
struct Shared<Req, Resp> {
    core: Arc<Core<Req, Resp>>,
    tx: mpsc::UnboundedSender<Command<Req, Resp>>,
    shutdown: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
}

impl<Req, Resp> Shared<Req, Resp> {
    /// Hands the batch being built to the worker. Called with the batch locked, so
    /// batches reach the worker in the order they were filled; a send to a worker that
    /// is gone drops the batch, which tells its callers it is closed.
    fn hand_over(&self, building: &mut Building<Req, Resp>) {
        if let Some(full) = building.take(&self.core.semaphore) {
            let _ = self.tx.send(Command::Full(full));
        }
    }
}

/// A handle on a batching worker; a `Service<Req>`. See the [module docs](self).
pub struct Batch<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// Waits for a queue slot: made the first time this handle finds the queue full.
    waiting: Option<PollSemaphore>,
    /// Holds a queue slot, taken from the semaphore by `poll_ready` for the next `call`.
    reserved: bool,
}

impl<Req, Resp> Batch<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Batches requests for `inner`, spawning the worker on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`. Use [`Batch::pair`] to spawn the
    /// worker yourself.
    pub fn new<S>(inner: S, layer: &BatchLayer<Req>) -> Self
    where
        S: Service<Vec<Req>> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        S::Response: BatchResults<Response = Resp>,
    {
        let (handle, worker) = Batch::pair(inner, layer);
        tokio::spawn(worker);
        handle
    }

    /// A handle and the worker future, which must be spawned (or otherwise driven)
    /// for the handle to make progress.
    pub fn pair<S>(inner: S, layer: &BatchLayer<Req>) -> (Self, Worker)
    where
        S: Service<Vec<Req>> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        S::Response: BatchResults<Response = Resp>,
    {
        let limits = layer.limits();
        let core = Arc::new(Core {
            building: Mutex::new(Building {
                requests: Vec::new(),
                bytes: 0,
                slot: None,
                generation: 0,
                closed: false,
            }),
            semaphore: Arc::new(Semaphore::new(limits.queue_capacity)),
            failure: Arc::new(OnceLock::new()),
            limits,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (finished_tx, finished_rx) = watch::channel(false);
        let worker = Worker::new(inner, rx, core.clone(), shutdown_rx, finished_tx);
        let handle = Batch {
            shared: Arc::new(Shared {
                core,
                tx,
                shutdown: shutdown_tx,
                finished: finished_rx,
            }),
            waiting: None,
            reserved: false,
        };
        (handle, worker)
    }
}

impl<Req, Resp> Batch<Req, Resp> {
    /// Stops the worker: it accepts no new requests (`poll_ready` fails with
    /// [`error::Closed`]), flushes everything it holds and has queued, and exits. The
    /// future resolves once the worker is gone. Every handle sees the shutdown.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let mut finished = self.shared.finished.clone();
        // An error means the worker is gone already, which is what we wait for.
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Whether the worker has exited.
    pub fn is_closed(&self) -> bool {
        self.shared.tx.is_closed()
    }

    /// Gives back the queue slot `poll_ready` took, if it took one.
    fn release(&mut self) {
        if std::mem::take(&mut self.reserved) {
            self.shared.core.semaphore.add_permits(1);
        }
    }

    fn closed(&self) -> BoxError {
        Closed::new(&self.shared.core.failure).into()
    }
}

impl<Req, Resp> Clone for Batch<Req, Resp> {
    fn clone(&self) -> Self {
        // A clone starts without a reserved slot: readiness is not copied.
        Batch {
            shared: self.shared.clone(),
            waiting: None,
            reserved: false,
        }
    }
}

impl<Req, Resp> Drop for Batch<Req, Resp> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<Req, Resp> fmt::Debug for Batch<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("ready", &self.reserved)
            .field("closed", &self.shared.tx.is_closed())
            .finish()
    }
}

impl<Req, Resp> Service<Req> for Batch<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = ResponseFuture<Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.shared.tx.is_closed() {
            self.release();
            return Poll::Ready(Err(self.closed()));
        }
        if self.reserved {
            return Poll::Ready(Ok(()));
        }
        let semaphore = &self.shared.core.semaphore;
        if self.waiting.is_none() {
            match semaphore.try_acquire() {
                Ok(permit) => {
                    // Given back when the request's batch has answered (or by `release`).
                    permit.forget();
                    self.reserved = true;
                    return Poll::Ready(Ok(()));
                }
                // The worker closes the semaphore when it stops.
                Err(TryAcquireError::Closed) => return Poll::Ready(Err(self.closed())),
                Err(TryAcquireError::NoPermits) => {}
            }
        }
        let waiting = self
            .waiting
            .get_or_insert_with(|| PollSemaphore::new(semaphore.clone()));
        match waiting.poll_acquire(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(permit)) => {
                permit.forget();
                self.reserved = true;
                Poll::Ready(Ok(()))
            }
            // The worker closes the semaphore when it stops.
            Poll::Ready(None) => Poll::Ready(Err(self.closed())),
        }
    }

    /// Calling without a ready `poll_ready` resolves to [`CalledBeforeReady`] instead of
    /// panicking; the request is not queued.
    fn call(&mut self, request: Req) -> Self::Future {
        if !self.reserved {
            return ResponseFuture::failed(CalledBeforeReady::new("batch").into());
        }
        // From here the slot belongs to the request's batch.
        self.reserved = false;
        let shared = &*self.shared;
        let core = &*shared.core;
        let limits = &core.limits;
        let weight = limits.max_bytes.map_or(0, |(_, weigh)| weigh(&request));
        let mut building = core.building();
        if building.closed {
            drop(building);
            core.semaphore.add_permits(1);
            return ResponseFuture::failed(self.closed());
        }
        if let Some((max, _)) = limits.max_bytes {
            if !building.requests.is_empty() && building.bytes + weight > max {
                shared.hand_over(&mut building);
            }
        }
        // For typical batches, not for whatever limit was configured.
        let typical = limits.max_items.min(1024);
        let begun = building.slot.is_none();
        if begun {
            building.generation += 1;
            if building.requests.capacity() == 0 {
                building.requests.reserve(typical);
            }
        }
        let slot = building
            .slot
            .get_or_insert_with(|| Slot::new(typical))
            .clone();
        let index = building.requests.len();
        building.requests.push(request);
        building.bytes += weight;
        let full = building.requests.len() >= limits.max_items
            || limits
                .max_bytes
                .is_some_and(|(max, _)| building.bytes >= max);
        if full {
            shared.hand_over(&mut building);
        } else if begun {
            let now = crate::call_time::now();
            // A latency too long to add means "by count and bytes only" (about 30 years).
            let deadline = now
                .checked_add(limits.max_latency)
                .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600));
            let generation = building.generation;
            let _ = shared.tx.send(Command::Begun {
                generation,
                deadline,
            });
        }
        drop(building);
        ResponseFuture::waiting(slot, index, core.failure.clone())
    }
}

#[cfg(test)]
mod tests;
