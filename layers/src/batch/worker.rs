use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use pin_project_lite::pin_project;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};
use tower_mq_core::BoxError;
use tower_service::Service;

use super::error::{BatchFailed, MissingResult};
use super::slot::Answer;
use super::{BatchResults, Command, Core, Sealed, BATCH_SIZE_METRIC};

/// The background task of a [`Batch`](super::Batch): it owns the inner service, hands
/// it the batches the callers filled, flushes a batch whose oldest request has waited
/// long enough, and answers the callers. [`Batch::new`](super::Batch::new) spawns it;
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
/// (a panic in the inner service included); the callers of a batch it did not answer
/// get [`Closed`](super::error::Closed).
struct ExitGuard<Req, Resp> {
    core: Arc<Core<Req, Resp>>,
    finished: watch::Sender<bool>,
}

impl<Req, Resp> ExitGuard<Req, Resp> {
    /// Refuses new requests and takes the batch being built.
    fn close(&self) -> Option<Sealed<Req, Resp>> {
        let core = &self.core;
        let last = {
            let mut building = core.building();
            building.closed = true;
            building.take(&core.semaphore)
        };
        core.semaphore.close();
        last
    }
}

impl<Req, Resp> Drop for ExitGuard<Req, Resp> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .core
                .failure
                .set(BatchFailed::new("the inner service panicked".into()));
        }
        drop(self.close());
        self.finished.send_replace(true);
    }
}

impl Worker {
    pub(crate) fn new<S, Req, Resp>(
        inner: S,
        rx: mpsc::UnboundedReceiver<Command<Req, Resp>>,
        core: Arc<Core<Req, Resp>>,
        shutdown: watch::Receiver<bool>,
        finished: watch::Sender<bool>,
    ) -> Self
    where
        S: Service<Vec<Req>> + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        S::Response: BatchResults<Response = Resp>,
        Req: Send + 'static,
        Resp: Send + 'static,
    {
        let guard = ExitGuard { core, finished };
        Worker {
            future: Box::pin(run(inner, rx, shutdown, guard)),
        }
    }
}

async fn run<S, Req, Resp>(
    mut inner: S,
    mut rx: mpsc::UnboundedReceiver<Command<Req, Resp>>,
    mut shutdown: watch::Receiver<bool>,
    guard: ExitGuard<Req, Resp>,
) where
    S: Service<Vec<Req>>,
    S::Error: Into<BoxError>,
    S::Response: BatchResults<Response = Resp>,
{
    let core = guard.core.clone();
    // The batches handed to `inner` whose answers are still out, at most
    // `max_in_flight`; each answers its callers when it resolves.
    let mut flights = Flights {
        running: FuturesUnordered::new(),
        max: core.limits.max_in_flight,
    };
    // `false` once shutdown was requested or can no longer be (every handle is gone).
    let mut listening = true;
    // The batch being built when shutdown was requested: flushed after those queued.
    let mut last = None;
    // One timer for the worker's life, moved to each batch's deadline.
    let timer = sleep_until(Instant::now());
    tokio::pin!(timer);
    // The batch (by generation) whose deadline the timer is set to.
    let mut timed = None;
    loop {
        let command = tokio::select! {
            biased;
            requested = async { shutdown.wait_for(|stop| *stop).await.is_ok() }, if listening => {
                listening = false;
                if requested {
                    // Refuse new requests; what is queued is still received below.
                    last = guard.close();
                    rx.close();
                }
                continue;
            }
            Some(()) = flights.running.next(), if !flights.running.is_empty() => continue,
            () = timer.as_mut(), if timed.is_some() => {
                let due = timed.take();
                let batch = {
                    let mut building = core.building();
                    if Some(building.generation) == due {
                        building.take(&core.semaphore)
                    } else {
                        None
                    }
                };
                if let Some(batch) = batch {
                    if !flights.dispatch(&mut inner, batch, &core.failure).await {
                        break;
                    }
                }
                continue;
            }
            command = rx.recv() => command,
        };
        match command {
            Some(Command::Begun {
                generation,
                deadline,
            }) => {
                timed = Some(generation);
                timer.as_mut().reset(deadline);
            }
            Some(Command::Full(batch)) => {
                if timed == Some(batch.generation) {
                    timed = None;
                }
                if !flights.dispatch(&mut inner, batch, &core.failure).await {
                    break;
                }
            }
            None => {
                // Every handle dropped, or shutdown and the queue drained: flush what
                // is left and exit.
                if let Some(batch) = last.take().or_else(|| guard.close()) {
                    flights.dispatch(&mut inner, batch, &core.failure).await;
                }
                break;
            }
        }
    }
    // Every batch handed over answers its callers before the worker is gone.
    while flights.running.next().await.is_some() {}
    // After a failure, what is queued is dropped: its callers are told it is closed.
    drop(guard.close());
    rx.close();
    while rx.try_recv().is_ok() {}
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
        batch: Sealed<Req, Resp>,
        failure: &OnceLock<BatchFailed>,
    ) -> bool
    where
        S: Service<Vec<Req>, Future = F>,
        F: Future<Output = Result<S::Response, S::Error>>,
        S::Error: Into<BoxError>,
        S::Response: BatchResults<Response = Resp>,
    {
        let Sealed {
            requests, answer, ..
        } = batch;
        let len = requests.len();
        // Callers that gave up (dropped their future) are left out.
        let kept = answer.slot().kept(len);
        let requests = match &kept {
            None => requests,
            Some(kept) => {
                let mut keep = kept.iter().copied().peekable();
                requests
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, request)| keep.next_if_eq(&i).map(|_| request))
                    .collect()
            }
        };
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
            answer.slot().fail(len, &failed);
            return false;
        }
        self.running.push(Flight {
            response: inner.call(requests),
            answer: Some(answer),
            kept,
            len,
        });
        true
    }
}

pin_project! {
    /// One batch handed to the inner service: answers each caller when it resolves,
    /// then frees the batch's queue slots.
    struct Flight<F, Resp> {
        #[pin]
        response: F,
        answer: Option<Answer<Resp>>,
        // The callers' positions the requests came from, if some callers gave up.
        kept: Option<Vec<usize>>,
        // How many callers the batch had.
        len: usize,
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
        let outcome = std::task::ready!(this.response.poll(cx));
        let Some(answer) = this.answer.take() else {
            return Poll::Ready(());
        };
        let len = *this.len;
        let kept = this.kept.take();
        let expected = kept.as_ref().map_or(len, Vec::len);
        match outcome {
            Ok(results) => {
                let results = results.into_results();
                let got = results.len();
                let results = results
                    .into_iter()
                    .map(|result| result.map_err(Into::into))
                    .chain(
                        (got..expected)
                            .map(|index| Err(MissingResult::new(index, expected, got).into())),
                    );
                match kept {
                    None => answer.slot().answer(len, results.enumerate()),
                    Some(kept) => answer.slot().answer(len, kept.into_iter().zip(results)),
                }
            }
            Err(e) => {
                answer.slot().fail(len, &BatchFailed::new(e.into()));
            }
        }
        // Frees the batch's queue slots.
        drop(answer);
        Poll::Ready(())
    }
}
