//! Per-call cost of each layer over a ready no-op publisher.
//!
//! Every measurement is `poll_ready` + `call` + polling the response future to
//! completion, done by hand with a no-op waker inside a current-thread runtime's
//! context (timers need one): no executor overhead, so the numbers are the layers'
//! own cost. Times are the calling thread's CPU time, not wall time, so that other
//! processes on a busy machine do not inflate them (contention between the two
//! threads of the `_2_threads` cases is CPU time and is counted). The request is a small `Message`, cloned for every call (the bare
//! measurement pays that clone too). A Prometheus recorder is installed (with its upkeep),
//! as in an application; no tracing subscriber is, so trace spans are disabled.
//!
//! `cargo bench -p tower-mq-layers --bench layers -- --warm-up-time 1 --measurement-time 3`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cpu_time::ThreadTime;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tower::{Layer, Service, ServiceBuilder};
use tower_mq_core::{BoxError, Message};
use tower_mq_layers::batch::BatchLayer;
use tower_mq_layers::circuit_breaker::CircuitBreakerLayer;
use tower_mq_layers::metrics::MetricsLayer;
use tower_mq_layers::rate_limit::RateLimitLayer;
use tower_mq_layers::retry::{Backoff, RetryLayer};
use tower_mq_layers::timeout::TimeoutLayer;
use tower_mq_layers::trace::TraceLayer;

/// A publisher that is always ready and answers at once.
#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<Message> for Noop {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        std::future::ready(Ok(message.payload().len() as u64))
    }
}

/// A layer that only forwards: the cost of one more layer boundary (moving the
/// request and the future through it), the floor under every real layer.
#[derive(Clone, Copy, Debug)]
struct Passthrough<S>(S);

impl<S: Service<Message>> Service<Message> for Passthrough<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        self.0.call(message)
    }
}

/// Takes a batch, answers one result per message.
#[derive(Clone, Copy, Debug)]
struct NoopBatch;

impl Service<Vec<Message>> for NoopBatch {
    type Response = Vec<Result<u64, BoxError>>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, batch: Vec<Message>) -> Self::Future {
        std::future::ready(Ok(batch
            .iter()
            .map(|m| Ok(m.payload().len() as u64))
            .collect()))
    }
}

fn message() -> Message {
    Message::new("orders", Bytes::from_static(b"{\"id\":42}"))
}

/// One ready call, polled by hand. Panics if anything is not immediately ready: the
/// benchmark measures the ready path only.
#[inline(always)]
fn ready_call<S, R, E>(service: &mut S, request: Message) -> R
where
    S: Service<Message, Response = R, Error = E>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("the service must be ready"),
    }
    let mut future = pin!(service.call(request));
    // A peer's boxed future takes an async lock inside: under contention from another
    // thread it is `Pending` until the holder releases it, so spin (the other thread
    // is running, not parked).
    for _ in 0..100_000_000 {
        if let Poll::Ready(result) = future.as_mut().poll(&mut cx) {
            match result {
                Ok(response) => return response,
                Err(_) => panic!("the call must succeed"),
            }
        }
        std::hint::spin_loop();
    }
    panic!("the response must complete without waiting")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

fn breaker() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new()
        .count_window(100)
        .minimum_calls(20)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_secs(30))
        .half_open_calls(5)
}

fn peer_breaker() -> tower_resilience::circuitbreaker::CircuitBreakerLayer<
    tower_resilience::circuitbreaker::DefaultClassifier,
> {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .sliding_window_size(100)
        .minimum_number_of_calls(20)
        .failure_rate_threshold(0.5)
        .wait_duration_in_open(Duration::from_secs(30))
        .permitted_calls_in_half_open(5)
        .build()
        .expect("a valid peer configuration")
}

fn retry() -> RetryLayer {
    RetryLayer::new(
        Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1)).max_attempts(3),
    )
}

fn high_rate() -> RateLimitLayer {
    // Far above what one core can call: never limits, still takes a GCRA cell.
    RateLimitLayer::per_second(1_000_000_000)
}

fn bench_one<S, R, E>(c: &mut Criterion, group: &str, id: &str, service: S)
where
    S: Service<Message, Response = R, Error = E>,
{
    bench_calls(c, group, id, service, |service, msg| {
        ready_call(service, msg)
    });
}

/// A clone of `service` per call, as `service.clone().oneshot(message)` does (the
/// usual way to call a service from many tasks): what a clone costs and what it
/// starts without (a metrics layer's last destination, a breaker's reservation).
fn bench_cloned<S, R, E>(c: &mut Criterion, group: &str, id: &str, service: S)
where
    S: Service<Message, Response = R, Error = E> + Clone,
{
    bench_calls(c, group, id, service, |service, msg| {
        ready_call(&mut service.clone(), msg)
    });
}

/// Times `call` on `service`, one message per iteration, on this thread's CPU clock.
fn bench_calls<S, T>(
    c: &mut Criterion,
    group: &str,
    id: &str,
    mut service: S,
    mut call: impl FnMut(&mut S, Message) -> T,
) {
    let rt = runtime();
    let _enter = rt.enter();
    let msg = message();
    let mut group = c.benchmark_group(group);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = ThreadTime::now();
            for _ in 0..iters {
                black_box(call(&mut service, black_box(msg.clone())));
            }
            start.elapsed()
        })
    });
    group.finish();
}

/// Each of two threads calls its own clone; the time is per call on each thread.
fn bench_two_threads<S, R, E>(c: &mut Criterion, group: &str, id: &str, service: S)
where
    S: Service<Message, Response = R, Error = E> + Clone + Send + 'static,
{
    let mut group = c.benchmark_group(group);
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let mut service = service.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let rt = runtime();
                        let _enter = rt.enter();
                        let msg = message();
                        barrier.wait();
                        let start = ThreadTime::now();
                        for _ in 0..iters {
                            black_box(ready_call(&mut service, black_box(msg.clone())));
                        }
                        start.elapsed()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().expect("a benchmark thread"))
                .max()
                .unwrap_or_default()
        })
    });
    group.finish();
}

fn layers(c: &mut Criterion) {
    // As in an application: a real recorder, so metrics cost what they cost, with its
    // upkeep running as the exporter would run it (histograms are drained there).
    if let Ok(handle) = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(1));
            handle.run_upkeep();
        });
    }

    bench_one(c, "layers", "bare", Noop);
    bench_one(c, "layers", "passthrough", Passthrough(Noop));
    bench_one(c, "layers", "retry", retry().layer(Noop));
    bench_one(c, "layers", "circuit_breaker", breaker().layer(Noop));
    bench_one(c, "layers", "rate_limit", high_rate().layer(Noop));
    bench_one(
        c,
        "layers",
        "timeout",
        TimeoutLayer::new(Duration::from_secs(5)).layer(Noop),
    );
    bench_one(
        c,
        "layers",
        "metrics",
        MetricsLayer::publish("memory").layer(Noop),
    );
    bench_one(
        c,
        "layers",
        "trace",
        TraceLayer::publish("memory").layer(Noop),
    );
    let full_stack = ServiceBuilder::new()
        .layer(MetricsLayer::publish("memory"))
        .layer(retry())
        .layer(breaker())
        .layer(high_rate())
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .service(Noop);
    bench_one(c, "layers", "full_stack", full_stack.clone());
    bench_cloned(
        c,
        "layers",
        "metrics_clone_per_call",
        MetricsLayer::publish("memory").layer(Noop),
    );
    bench_cloned(c, "layers", "full_stack_clone_per_call", full_stack);
    bench_two_threads(
        c,
        "layers",
        "circuit_breaker_2_threads",
        breaker().layer(Noop),
    );

    bench_one(
        c,
        "peers",
        "tower_resilience_circuit_breaker",
        peer_breaker().layer(Noop),
    );
    bench_two_threads(
        c,
        "peers",
        "tower_resilience_circuit_breaker_2_threads",
        peer_breaker().layer(Noop),
    );
}

/// `batch/N`: N callers each send one message through a batch layer whose batches
/// hold N, so every round is one batch flushed by count (`batch/1` is the layer with
/// no batching to amortize: a worker round trip per message). Throughput is messages
/// per second; `batch/bare_128` is 128 calls straight to the no-op publisher, the
/// floor. Wall time, on a current-thread runtime that also runs the batch worker.
fn batch(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("batch");
    for size in [1_usize, 16, 128] {
        let publisher = {
            let _enter = rt.enter();
            BatchLayer::new(size, Duration::from_secs(1)).layer(NoopBatch)
        };
        group.throughput(Throughput::Elements(size as u64));
        group.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.to_async(&rt).iter(|| async {
                let calls = (0..size).map(|_| {
                    let mut p = publisher.clone();
                    async move {
                        std::future::poll_fn(|cx| p.poll_ready(cx)).await?;
                        p.call(message()).await
                    }
                });
                let results = futures_util::future::join_all(calls).await;
                black_box(results.len())
            })
        });
    }
    group.throughput(Throughput::Elements(128));
    group.bench_function("bare_128", |b| {
        b.to_async(&rt).iter(|| async {
            let mut publisher = Noop;
            let mut total = 0;
            for _ in 0..128 {
                std::future::poll_fn(|cx| publisher.poll_ready(cx))
                    .await
                    .ok();
                total += publisher.call(message()).await.unwrap_or(0);
            }
            black_box(total)
        })
    });
    group.finish();
}

criterion_group!(benches, layers, batch);
criterion_main!(benches);
