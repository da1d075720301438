//! What every broker gives the runner: a lane (a fresh destination with a publisher
//! and a subscribed consumer of the client asked for), and the generic wrappers that
//! turn tower-mq's services and streams into one.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{StreamExt, TryFuture, TryFutureExt};
use tokio::sync::watch;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_mq::layers::batch::BatchLayer;
use tower_mq::layers::retry::Backoff;
use tower_mq::layers::{CircuitBreakerLayer, MetricsLayer, RetryLayer, TimeoutLayer};
use tower_mq::{serve, BoxError, Delivery, Error, Message, Receipt};

pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// Publishes one payload; resolves once the client's confirmation is in.
pub type Publish = Box<dyn Fn(Bytes) -> BoxFut<Result<(), BoxError>> + Send>;
/// Publishes many payloads through the client's own batch path.
pub type PublishBatch = Box<dyn Fn(Vec<Bytes>) -> BoxFut<Result<(), BoxError>> + Send>;
/// A consumer already subscribed: run it to receive (and ack) until the tracker has
/// every message.
pub type Receive = Box<dyn FnOnce(Arc<Tracker>) -> BoxFut<Result<(), BoxError>> + Send>;

/// Who publishes or consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// The broker's own client, used directly, with the same guarantees.
    Bare,
    /// tower-mq's publisher and consumer, no layers.
    Service,
    /// The README's stack (metrics + retry + circuit breaker + timeout) on the
    /// publisher, and a handler with metrics + timeout driven by `serve`.
    Stack,
    /// `BatchLayer` over the broker's native batch publisher.
    Batched,
}

impl Client {
    pub const ALL: [Client; 4] = [
        Client::Bare,
        Client::Service,
        Client::Stack,
        Client::Batched,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Client::Bare => "bare",
            Client::Service => "service",
            Client::Stack => "stack",
            Client::Batched => "batched",
        }
    }
}

/// One destination, fresh for one measurement.
pub struct Lane {
    /// One message at a time (for `Batched`, through the batch layer).
    pub publish: Publish,
    /// Where it differs from `publish`: the publish of a message sent on its own, with
    /// nothing else in flight (`publish_seq` and the latency modes). The bare core
    /// NATS client then makes the round trip that tower-mq's receipt makes for a
    /// message published alone; with many in flight, tower-mq shares one round trip
    /// among them, and the bare client is measured without one.
    pub publish_alone: Option<Publish>,
    /// The bare client's own batch path, where it has one.
    pub publish_batch: Option<PublishBatch>,
    pub receive: Receive,
    /// Removes what the lane created on the broker.
    pub cleanup: Option<BoxFut<()>>,
}

pub trait Fixture: Send + Sync {
    fn name(&self) -> &'static str;
    /// Whether what is published before the consumer runs waits for it (a queue, a
    /// stream, a consumer group). If not, publish modes verify with a consumer that
    /// runs while publishing.
    fn durable(&self) -> bool;
    /// The most payload bytes one measurement may publish here, if the broker keeps
    /// less than the run asks for (the message count is capped to fit).
    fn max_bytes(&self) -> Option<u64> {
        None
    }
    /// Why `client` cannot publish `publish_batch` here, if it cannot.
    fn no_batch(&self, client: Client) -> Option<&'static str>;
    /// A fresh destination: `publisher` publishes, `consumer` receives.
    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>>;
}

// ---- payloads -----------------------------------------------------------------------------

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since the run began: the clock payload timestamps are read against.
pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// `size` bytes: the id and the send time (little-endian u64s), then padding.
pub fn payload(id: u64, size: usize) -> Bytes {
    let mut body = BytesMut::with_capacity(size.max(16));
    body.put_u64_le(id);
    body.put_u64_le(now_us());
    body.resize(size.max(16), b'.');
    body.freeze()
}

/// Counts what arrived, by id: every message must arrive, duplicates are counted.
pub struct Tracker {
    expected: u64,
    seen: Vec<AtomicBool>,
    received: AtomicU64,
    duplicates: AtomicU64,
    strays: AtomicU64,
    latencies: Option<Mutex<Vec<u64>>>,
    done: watch::Sender<bool>,
}

impl Tracker {
    pub fn new(expected: u64, latency: bool) -> Arc<Self> {
        Arc::new(Tracker {
            expected,
            seen: (0..expected).map(|_| AtomicBool::new(false)).collect(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            strays: AtomicU64::new(0),
            latencies: latency.then(|| Mutex::new(Vec::with_capacity(expected as usize))),
            done: watch::channel(expected == 0).0,
        })
    }

    pub fn record(&self, body: &[u8]) {
        let (Some(id), Some(sent)) = (
            body.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            body.get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
        ) else {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(seen) = self.seen.get(id as usize) else {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if seen.swap(true, Ordering::AcqRel) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Some(latencies) = &self.latencies {
            let latency = now_us().saturating_sub(sent);
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(latency);
        }
        if self.received.fetch_add(1, Ordering::AcqRel) + 1 == self.expected {
            self.done.send_replace(true);
        }
    }

    pub fn complete(&self) -> bool {
        self.received.load(Ordering::Acquire) >= self.expected
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    pub fn strays(&self) -> u64 {
        self.strays.load(Ordering::Relaxed)
    }

    /// Resolves once every message arrived.
    pub fn done(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut done = self.done.subscribe();
        async move {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Up to `limit` ids that never arrived.
    pub fn missing(&self, limit: usize) -> Vec<u64> {
        self.seen
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.load(Ordering::Acquire))
            .map(|(i, _)| i as u64)
            .take(limit)
            .collect()
    }

    pub fn latencies(&self) -> Vec<u64> {
        self.latencies
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default()
    }
}

// ---- tower-mq's clients as lanes ----------------------------------------------------------

/// tower-mq's publisher, as the README calls it: a clone per message, `oneshot`.
pub fn service_publish<S, F>(publisher: S, message: F) -> Publish
where
    S: Service<Message, Response = Receipt, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    F: Fn(Bytes) -> Message + Send + 'static,
{
    Box::new(move |body| Box::pin(publisher.clone().oneshot(message(body)).map_ok_drop()))
}

/// The README's stack over tower-mq's publisher (the first layer is the outermost),
/// without the layer `TOWER_MQ_BENCH_STACK_WITHOUT` names, if any; `all` puts four
/// layers that do nothing (tower's `MapResponse` with the identity) in place of the
/// four, to tell what the nesting costs from what the layers' work costs.
pub fn stack_publish<S, F>(broker: &'static str, publisher: S, message: F) -> Publish
where
    S: Service<Message, Response = Receipt, Error = Error> + Clone + Send + 'static,
    S::Future: Send + 'static,
    F: Fn(Bytes) -> Message + Send + 'static,
{
    let metrics = || MetricsLayer::publish(broker);
    let retry = || {
        RetryLayer::new(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_secs(2),
        ))
    };
    let timeout = || TimeoutLayer::new(Duration::from_secs(2));
    let breaker = CircuitBreakerLayer::new;
    // Each leaves its stack's own type: one boxing closure per variant.
    macro_rules! lane {
        ($stack:expr) => {{
            let stack = $stack;
            Box::new(move |body| {
                Box::pin(stack.clone().oneshot(message(body)).map_ok_drop())
                    as Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>
            }) as Publish
        }};
    }
    let builder = ServiceBuilder::new();
    match std::env::var("TOWER_MQ_BENCH_STACK_WITHOUT").as_deref() {
        Ok("metrics") => lane!(builder
            .layer(retry())
            .layer(breaker())
            .layer(timeout())
            .service(publisher)),
        Ok("retry") => lane!(builder
            .layer(metrics())
            .layer(breaker())
            .layer(timeout())
            .service(publisher)),
        Ok("breaker") => lane!(builder
            .layer(metrics())
            .layer(retry())
            .layer(timeout())
            .service(publisher)),
        Ok("timeout") => lane!(builder
            .layer(metrics())
            .layer(retry())
            .layer(breaker())
            .service(publisher)),
        Ok("all") => lane!(builder
            .map_response(std::convert::identity::<Receipt>)
            .map_response(std::convert::identity::<Receipt>)
            .map_response(std::convert::identity::<Receipt>)
            .map_response(std::convert::identity::<Receipt>)
            .service(publisher)),
        Ok(other) if !other.is_empty() => {
            panic!("TOWER_MQ_BENCH_STACK_WITHOUT={other}: name metrics, retry, breaker, timeout or all")
        }
        _ => lane!(builder
            .layer(metrics())
            .layer(retry())
            .layer(breaker())
            .layer(timeout())
            .service(publisher)),
    }
}

/// `BatchLayer` over a native batch publisher: 100 messages or 1 ms, whichever first,
/// [`BATCHES_IN_FLIGHT`] batches handed to the publisher at once.
pub fn batched_publish<S, F>(batch_publisher: S, message: F) -> Publish
where
    S: Service<Vec<Message>, Response = Vec<Result<Receipt, Error>>, Error = Error>
        + Send
        + 'static,
    S::Future: Send + 'static,
    F: Fn(Bytes) -> Message + Send + 'static,
{
    let batch = ServiceBuilder::new()
        .layer(BatchLayer::new(BATCH, Duration::from_millis(1)).max_in_flight(BATCHES_IN_FLIGHT))
        .service(batch_publisher);
    Box::new(move |body| Box::pin(batch.clone().oneshot(message(body)).map_ok_drop()))
}

/// How many messages a batch holds, in `publish_batch`.
pub const BATCH: usize = 100;

/// How many batches the batched client has in flight at once: a batch that waits for
/// a round trip (a confirmation, a stream's acks) leaves the connection idle otherwise.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// A call's future with its response dropped and its error boxed: a combinator, so
/// that the runner's box holds the call's future once (an `async` block awaiting it
/// would hold it twice, and allocate twice its size per message).
trait MapOkDrop: TryFuture + Sized {
    fn map_ok_drop(self) -> OkDropped<Self>;
}

/// What [`MapOkDrop::map_ok_drop`] makes of `F`.
type OkDropped<F> = futures_util::future::MapErr<
    futures_util::future::MapOk<F, fn(<F as TryFuture>::Ok)>,
    fn(<F as TryFuture>::Error) -> BoxError,
>;

impl<F> MapOkDrop for F
where
    F: TryFuture,
    F::Error: Into<BoxError>,
{
    fn map_ok_drop(self) -> OkDropped<Self> {
        self.map_ok(drop as fn(F::Ok))
            .map_err(Into::into as fn(F::Error) -> BoxError)
    }
}

/// tower-mq's consumer stream, each delivery acked in turn.
pub fn service_receive<C>(consumer: C) -> Receive
where
    C: futures_core::Stream<Item = Result<Delivery, Error>> + Send + 'static,
{
    Box::new(move |tracker: Arc<Tracker>| {
        Box::pin(async move {
            let mut consumer = Box::pin(consumer);
            while !tracker.complete() {
                let delivery = consumer
                    .next()
                    .await
                    .ok_or("the consumer stream ended before every message arrived")??;
                tracker.record(delivery.message().payload());
                delivery.ack().await?;
            }
            Ok(())
        })
    })
}

/// tower-mq's consumer driven by `serve`, the handler stacked with metrics and a
/// timeout; stops (draining, so every ack is sent) once every message arrived.
pub fn stack_receive<C>(broker: &'static str, consumer: C) -> Receive
where
    C: futures_core::Stream<Item = Result<Delivery, Error>> + Send + 'static,
{
    stack_receive_with(broker, consumer, tower_mq::serve::DEFAULT_CONCURRENCY)
}

/// [`stack_receive`] with `concurrency` deliveries in flight in `serve`.
pub fn stack_receive_with<C>(broker: &'static str, consumer: C, concurrency: usize) -> Receive
where
    C: futures_core::Stream<Item = Result<Delivery, Error>> + Send + 'static,
{
    Box::new(move |tracker: Arc<Tracker>| {
        Box::pin(async move {
            let record = tracker.clone();
            let handler = ServiceBuilder::new()
                .layer(MetricsLayer::handle(broker))
                .layer(TimeoutLayer::new(Duration::from_secs(30)))
                .service(service_fn(move |delivery: Delivery| {
                    record.record(delivery.message().payload());
                    std::future::ready(Ok::<_, BoxError>(()))
                }));
            let summary = serve(consumer, handler)
                .concurrency(concurrency)
                .with_graceful_shutdown(tracker.done())
                .into_future()
                .await?;
            if summary.acked < tracker.received() {
                return Err(format!(
                    "serve acked {} deliveries but {} messages arrived: {summary:?}",
                    summary.acked,
                    tracker.received()
                )
                .into());
            }
            Ok(())
        })
    })
}

/// The destination names of one run: unique on the broker.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}
