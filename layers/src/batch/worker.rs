use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep_until, Instant};
use tower_mq_core::BoxError;
use tower_service::Service;

use super::error::{BatchFailed, Closed, MissingResult};
use super::{BatchResults, Limits, BATCH_SIZE_METRIC};

/// One queued request, its caller's reply channel and its queue slot.
pub(crate) struct Item<Req, Resp> {
    pub(crate) request: Req,
    pub(crate) weight: usize,
    pub(crate) reply: oneshot::Sender<Result<Resp, BoxError>>,
    // Held until the request's batch has answered, so the queue bound covers the batch
    // being built and those in flight.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// The background task of a [`Batch`](super::Batch): it owns the inner service and
/// flushes batches. [`Batch::new`](super::Batch::new) spawns it;
/// [`Batch::pair`](super::Batch::pair) hands it to you to spawn.
#[must_use = "the worker does nothing unless spawned or polled"]
pub struct Worker {
    future: BoxFuture<'static, ()>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Future for Worker {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.future.as_mut().poll(cx)
    }
}

/// Closes the queue and tells `shutdown` waiters when the worker ends, however it ends
/// (a panic in the inner service included).
struct ExitGuard {
    semaphore: Arc<Semaphore>,
    finished: watch::Sender<bool>,
    failure: Arc<OnceLock<BatchFailed>>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .failure
                .set(BatchFailed::new("the inner service panicked".into()));
        }
        self.semaphore.close();
        self.finished.send_replace(true);
    }
}

impl Worker {
    pub(crate) fn new<S, Req, Resp>(
        inner: S,
        rx: mpsc::UnboundedReceiver<Item<Req, Resp>>,
        limits: Limits<Req>,
        semaphore: Arc<Semaphore>,
        shutdown: watch::Receiver<bool>,
        finished: watch::Sender<bool>,
        failure: Arc<OnceLock<BatchFailed>>,
    ) -> Self
    where
        S: Service<Vec<Req>> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        S::Response: BatchResults<Response = Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let guard = ExitGuard {
            semaphore,
            finished,
            failure,
        };
        Worker {
            future: Box::pin(run(inner, rx, limits, shutdown, guard)),
        }
    }
}

struct Pending<Req, Resp> {
    items: Vec<Item<Req, Resp>>,
    bytes: usize,
    deadline: Option<Instant>,
}

impl<Req, Resp> Pending<Req, Resp> {
    fn take(&mut self) -> Vec<Item<Req, Resp>> {
        self.bytes = 0;
        self.deadline = None;
        std::mem::take(&mut self.items)
    }
}

async fn run<S, Req, Resp>(
    mut inner: S,
    mut rx: mpsc::UnboundedReceiver<Item<Req, Resp>>,
    limits: Limits<Req>,
    mut shutdown: watch::Receiver<bool>,
    guard: ExitGuard,
) where
    S: Service<Vec<Req>>,
    S::Error: Into<BoxError>,
    S::Response: BatchResults<Response = Resp>,
{
    let max_bytes = limits.max_bytes.map(|(b, _)| b);
    let mut pending = Pending {
        // Preallocate for typical batches, not for whatever limit was configured.
        items: Vec::with_capacity(limits.max_items.min(1024)),
        bytes: 0,
        deadline: None,
    };
    // The batches handed to `inner` whose answers are still out, at most
    // `limits.max_in_flight`; each answers its callers when it resolves.
    let mut flights = Flights {
        running: FuturesUnordered::new(),
        max: limits.max_in_flight,
    };
    // `None` once shutdown was requested or can no longer be (every handle is gone).
    let mut listening = true;
    // One timer for the worker's life, moved to each batch's deadline, so an item
    // arriving costs no timer registration (making a `Sleep` per item, and registering
    // it with the driver, was most of the per-item cost).
    let timer = sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed_for = None;
    'receive: loop {
        let deadline = pending.deadline;
        if let Some(deadline) = deadline {
            if armed_for != Some(deadline) {
                timer.as_mut().reset(deadline);
                armed_for = Some(deadline);
            }
        }
        let received = tokio::select! {
            biased;
            requested = async { shutdown.wait_for(|stop| *stop).await.is_ok() }, if listening => {
                listening = false;
                if requested {
                    // Refuse new requests; what is queued is still received below.
                    guard.semaphore.close();
                    rx.close();
                }
                continue;
            }
            Some(()) = flights.running.next(), if !flights.running.is_empty() => continue,
            () = timer.as_mut(), if deadline.is_some() => {
                let batch = pending.take();
                if !flights.dispatch(&mut inner, batch, &guard.failure).await {
                    break;
                }
                continue;
            }
            received = rx.recv() => received,
        };
        let Some(mut item) = received else {
            // Every handle dropped, or shutdown and the queue drained: flush and exit.
            let batch = pending.take();
            flights.dispatch(&mut inner, batch, &guard.failure).await;
            break;
        };
        // Take what is already queued without another round of `select!` per item,
        // until the batch is flushed: then the timer and shutdown are looked at again.
        loop {
            if let Some(max) = max_bytes {
                if !pending.items.is_empty() && pending.bytes + item.weight > max {
                    let batch = pending.take();
                    if !flights.dispatch(&mut inner, batch, &guard.failure).await {
                        fail_item(item, &guard);
                        break 'receive;
                    }
                }
            }
            if pending.items.is_empty() {
                let now = Instant::now();
                // A latency too long to add means "by count and bytes only" (about 30 years).
                pending.deadline = Some(
                    now.checked_add(limits.max_latency)
                        .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600)),
                );
            }
            pending.bytes += item.weight;
            pending.items.push(item);
            let full = pending.items.len() >= limits.max_items
                || max_bytes.is_some_and(|max| pending.bytes >= max);
            if full {
                let batch = pending.take();
                if !flights.dispatch(&mut inner, batch, &guard.failure).await {
                    break 'receive;
                }
            }
            if pending.items.is_empty() {
                break;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
    }
    // Every batch handed over answers its callers before the worker is gone.
    while flights.running.next().await.is_some() {}
    fail_queued(&mut rx, &guard);
}

/// Tells the caller of a request the worker could not take that it is closed.
fn fail_item<Req, Resp>(item: Item<Req, Resp>, guard: &ExitGuard) {
    let _ = item.reply.send(Err(Closed::new(&guard.failure).into()));
}

/// After a fatal failure: refuse new requests and tell queued callers.
fn fail_queued<Req, Resp>(rx: &mut mpsc::UnboundedReceiver<Item<Req, Resp>>, guard: &ExitGuard) {
    guard.semaphore.close();
    rx.close();
    while let Ok(item) = rx.try_recv() {
        let _ = item.reply.send(Err(Closed::new(&guard.failure).into()));
    }
}

/// The batches in flight.
struct Flights<F, Resp> {
    running: FuturesUnordered<Flight<F, Resp>>,
    max: usize,
}

impl<F, Resp> Flights<F, Resp> {
    /// Hands one batch to `inner` once fewer than `max` are in flight and `inner` is
    /// ready, answering the batches in flight that resolve meanwhile (the inner
    /// service's readiness may wait for them). Returns `false` when the inner service
    /// failed `poll_ready` and can no longer be used.
    async fn dispatch<S, Req>(
        &mut self,
        inner: &mut S,
        items: Vec<Item<Req, Resp>>,
        failure: &OnceLock<BatchFailed>,
    ) -> bool
    where
        S: Service<Vec<Req>, Future = F>,
        F: Future<Output = Result<S::Response, S::Error>>,
        S::Error: Into<BoxError>,
        S::Response: BatchResults<Response = Resp>,
    {
        let mut requests = Vec::with_capacity(items.len());
        let mut replies = Vec::with_capacity(items.len());
        // The batch's queue slots as one permit: released at once when it answers,
        // not one release (and one lock of the semaphore) per request.
        let mut permit: Option<OwnedSemaphorePermit> = None;
        // Callers that gave up (dropped their future) are left out.
        for item in items.into_iter().filter(|i| !i.reply.is_closed()) {
            requests.push(item.request);
            replies.push(item.reply);
            match &mut permit {
                Some(permit) => permit.merge(item.permit),
                None => permit = Some(item.permit),
            }
        }
        if requests.is_empty() {
            return true;
        }
        metrics::histogram!(BATCH_SIZE_METRIC).record(requests.len() as f64);
        let ready = std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
            if self.running.len() >= self.max {
                return Poll::Pending;
            }
            inner.poll_ready(cx)
        })
        .await;
        if let Err(e) = ready {
            let failed = BatchFailed::new(e.into());
            let _ = failure.set(failed.clone());
            for reply in replies {
                let _ = reply.send(Err(failed.clone().into()));
            }
            return false;
        }
        self.running.push(Flight {
            response: inner.call(requests),
            replies,
            permit,
        });
        true
    }
}

/// Callers' reply channels.
type Replies<Resp> = Vec<oneshot::Sender<Result<Resp, BoxError>>>;

pin_project! {
    /// One batch handed to the inner service: answers each caller when it resolves,
    /// then frees the batch's queue slots.
    struct Flight<F, Resp> {
        #[pin]
        response: F,
        replies: Replies<Resp>,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F, R, E, Resp> Future for Flight<F, Resp>
where
    F: Future<Output = Result<R, E>>,
    R: BatchResults<Response = Resp>,
    E: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let answer = std::task::ready!(this.response.poll(cx));
        let replies = std::mem::take(this.replies);
        match answer {
            Ok(results) => {
                let mut results = results.into_results().into_iter();
                let expected = replies.len();
                let got = results.len();
                for (index, reply) in replies.into_iter().enumerate() {
                    let result = match results.next() {
                        Some(result) => result.map_err(Into::into),
                        None => Err(MissingResult::new(index, expected, got).into()),
                    };
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let failed = BatchFailed::new(e.into());
                for reply in replies {
                    let _ = reply.send(Err(failed.clone().into()));
                }
            }
        }
        drop(this.permit.take());
        Poll::Ready(())
    }
}
