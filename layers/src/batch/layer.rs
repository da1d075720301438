use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use tower_layer::Layer;
use tower_mq_core::BoxError;
use tower_service::Service;

use super::{Batch, BatchResults, Limits, Weigh, Weigher};

/// Builds [`Batch`]: configuration only. See the [module docs](super).
pub struct BatchLayer<Req> {
    max_items: usize,
    max_latency: Duration,
    max_bytes: Option<(usize, Weigher<Req>)>,
    queue_capacity: Option<usize>,
    max_in_flight: usize,
    _request: PhantomData<fn(Req)>,
}

impl<Req> BatchLayer<Req> {
    /// Flushes a batch once it holds `max_items` requests (at least 1) or once its
    /// oldest request has waited `max_latency`.
    pub fn new(max_items: usize, max_latency: Duration) -> Self {
        BatchLayer {
            max_items: max_items.max(1),
            max_latency,
            max_bytes: None,
            queue_capacity: None,
            max_in_flight: 1,
            _request: PhantomData,
        }
    }

    /// Also flushes once the batch weighs `bytes` (by [`Weigh`]); a request that
    /// would take the batch past the limit starts the next batch. A single request
    /// heavier than the limit is sent alone.
    pub fn max_bytes(mut self, bytes: usize) -> Self
    where
        Req: Weigh,
    {
        self.max_bytes = Some((bytes, <Req as Weigh>::weight));
        self
    }

    /// Bounds how many requests may be queued or in flight (default: `max_items`
    /// times one more than [`max_in_flight`](Self::max_in_flight)); beyond it
    /// `poll_ready` is `Pending`.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = Some(capacity.max(1));
        self
    }

    /// How many batches may be handed to the inner service before the first has
    /// answered (default 1, at least 1). More keeps a broker whose batches wait for a
    /// round trip busy; the order in which the broker sees concurrent batches is the
    /// inner service's (see the [module docs](super)).
    pub fn max_in_flight(mut self, batches: usize) -> Self {
        self.max_in_flight = batches.max(1);
        self
    }

    pub(crate) fn limits(&self) -> Limits<Req> {
        Limits {
            max_items: self.max_items,
            max_latency: self.max_latency,
            max_bytes: self.max_bytes,
            queue_capacity: self
                .queue_capacity
                .unwrap_or_else(|| {
                    self.max_items
                        .saturating_mul(self.max_in_flight.saturating_add(1))
                })
                .min(tokio::sync::Semaphore::MAX_PERMITS),
            max_in_flight: self.max_in_flight,
        }
    }
}

impl<Req> Clone for BatchLayer<Req> {
    fn clone(&self) -> Self {
        BatchLayer {
            max_items: self.max_items,
            max_latency: self.max_latency,
            max_bytes: self.max_bytes,
            queue_capacity: self.queue_capacity,
            max_in_flight: self.max_in_flight,
            _request: PhantomData,
        }
    }
}

impl<Req> fmt::Debug for BatchLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchLayer")
            .field("max_items", &self.max_items)
            .field("max_latency", &self.max_latency)
            .field("max_bytes", &self.max_bytes.map(|(b, _)| b))
            .field("queue_capacity", &self.limits().queue_capacity)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

impl<S, Req> Layer<S> for BatchLayer<Req>
where
    S: Service<Vec<Req>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: BatchResults,
    <S::Response as BatchResults>::Response: Send + 'static,
    Req: Send + 'static,
{
    type Service = Batch<Req, <S::Response as BatchResults>::Response>;

    /// # Panics
    ///
    /// Outside a tokio runtime: the worker is spawned. See [`Batch::pair`].
    fn layer(&self, inner: S) -> Self::Service {
        Batch::new(inner, self)
    }
}
