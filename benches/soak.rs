//! Memory over a long run: the throughput bench's `stack` client (the README's metrics +
//! retry + circuit breaker + timeout on the publisher, a handler with metrics + timeout
//! driven by `serve`) publishes and consumes a million 100-byte messages end to end,
//! and the process's memory is sampled as it goes. Flat is the expected shape: nothing
//! tower-mq keeps may grow with the number of messages.
//!
//! ```sh
//! scripts/bench soak                              # brings the brokers up, runs every broker
//! cargo bench --bench soak -- redis-streams       # filters name brokers
//! ```
//!
//! Brokers: `redis-streams`, `nats` (core NATS, tower-mq's default receipt) and
//! `nats-jetstream`, one after the other in one process, each on a fresh destination
//! from the throughput bench's fixtures. Messages go out in rounds of
//! `TOWER_MQ_SOAK_SAMPLE_EVERY` (50,000), 100 in flight; once every message of a round
//! has reached the handler the round's sample is taken, so no sample counts messages
//! still on their way. A sample holds the RSS (`VmRSS` of `/proc/self/status`) and the
//! heap: the bytes and blocks allocated and not yet freed, counted by this binary's
//! global allocator. RSS is what a deployment sees; the heap count tells a leak (it
//! grows) from the allocator keeping memory it was given back (only RSS grows).
//!
//! The Prometheus exporter is installed as the global recorder, as an application
//! would, so the metrics layers and `serve` record through real handles, and it is
//! scraped before each sample, as Prometheus would: the exporter keeps every histogram
//! observation until the next scrape or its upkeep (every second), so an unscraped
//! sample would count those too (`scraped_bytes` says how much the scrape freed).
//!
//! Summary per broker: RSS and heap after the warm-up (the first sample at a tenth of
//! the run: 100,000 messages of a million), at half and at the end; the growth from the
//! warm-up to the end; and bytes per message over the second half (from half to the end).
//!
//! Environment: `TOWER_MQ_SOAK_MESSAGES` (per broker; 1,000,000),
//! `TOWER_MQ_SOAK_SAMPLE_EVERY` (50,000), and the brokers' addresses as the tests read
//! them (`scripts/brokers env`). Output (`TOWER_MQ_BENCH_OUT` moves it):
//! `target/bench/soak.json`, a table on stdout, progress on stderr.

// The fixtures are the throughput bench's; this one uses a few of them.
#[allow(dead_code)]
#[path = "throughput/fixtures.rs"]
mod fixtures;
#[allow(dead_code)]
#[path = "throughput/lane.rs"]
mod lane;
#[allow(dead_code)]
#[path = "throughput/report.rs"]
mod report;

#[path = "../tests/support/kafka_mock_cluster.rs"]
mod kafka_mock_cluster;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use serde::Serialize;
use tower::BoxError;

use lane::{payload, Client, Fixture, Lane, Tracker};
use tower_mq::layers::metrics::PrometheusHandle;

const BROKERS: [&str; 3] = ["redis-streams", "nats", "nats-jetstream"];
const PAYLOAD_BYTES: usize = 100;
const IN_FLIGHT: usize = 100;
/// How long a round may go without a message arriving before the run fails.
const STALL: Duration = Duration::from_secs(20);

// ---- the heap count -------------------------------------------------------------------------

/// The system allocator, counting what is allocated and not yet freed.
struct Counting;

static HEAP_BYTES: AtomicUsize = AtomicUsize::new(0);
static HEAP_BLOCKS: AtomicUsize = AtomicUsize::new(0);
/// The most `HEAP_BYTES` has been since the last sample.
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

fn allocated(bytes: usize) {
    let now = HEAP_BYTES.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if now > HEAP_PEAK.load(Ordering::Relaxed) {
        HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to the system allocator unchanged; the counters are all this adds.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            allocated(layout.size());
            HEAP_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            allocated(layout.size());
            HEAP_BLOCKS.fetch_add(1, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HEAP_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        HEAP_BLOCKS.fetch_sub(1, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            allocated(new_size);
            HEAP_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// ---- samples --------------------------------------------------------------------------------

/// The process's memory once `messages` messages reached the handler.
#[derive(Debug, Clone, Copy, Serialize)]
struct Sample {
    messages: u64,
    /// Resident set size (`VmRSS`).
    rss_bytes: u64,
    /// Its anonymous part (`RssAnon`: the heap, stacks), without the pages of the
    /// binary and libraries, which count as their code first runs.
    rss_anon_bytes: u64,
    /// Bytes allocated and not freed.
    heap_bytes: u64,
    /// Allocations not freed.
    heap_blocks: u64,
    /// The most the heap held since the previous sample: what was in flight at once.
    heap_peak_bytes: u64,
    /// What the scrape before the sample freed at once: the histogram observations
    /// the exporter held since it last emptied them (it frees some of them later).
    scraped_bytes: i64,
}

/// A `kB` field of `/proc/self/status`, in bytes (0 where there is none).
fn status_bytes(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let kb = line.strip_prefix(field)?.strip_prefix(':')?;
                kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Scrapes the exporter, then reads the memory: the scrape empties the histograms'
/// buffers of observations (which the exporter otherwise empties every few seconds),
/// so the heap holds only what is kept, not what awaits the next scrape.
fn sample(scrape: &PrometheusHandle, messages: u64) -> Sample {
    let before = HEAP_BYTES.load(Ordering::Relaxed) as u64;
    drop(scrape.render());
    let heap_bytes = HEAP_BYTES.load(Ordering::Relaxed) as u64;
    let heap_peak_bytes = HEAP_PEAK.swap(heap_bytes as usize, Ordering::Relaxed) as u64;
    Sample {
        messages,
        rss_bytes: status_bytes("VmRSS"),
        rss_anon_bytes: status_bytes("RssAnon"),
        heap_bytes,
        heap_blocks: HEAP_BLOCKS.load(Ordering::Relaxed) as u64,
        heap_peak_bytes,
        scraped_bytes: before as i64 - heap_bytes as i64,
    }
}

/// The Prometheus exporter as [`install_prometheus`](tower_mq::layers::metrics::install_prometheus)
/// installs it (the HTTP listener, upkeep every second), keeping a handle to scrape
/// it with.
fn install_prometheus() -> Result<PrometheusHandle, BoxError> {
    let (recorder, exporter) = tower_mq::layers::metrics::prometheus_builder()?
        .with_http_listener(([127, 0, 0, 1], 0))
        .build()?;
    let handle = recorder.handle();
    tokio::spawn(exporter);
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}

/// What a run's samples say.
#[derive(Debug, Clone, Copy, Serialize)]
struct Summary {
    /// The sample the growth is measured from (the first at a tenth of the run).
    warmup: Sample,
    /// The first sample at half the run.
    half: Sample,
    end: Sample,
    /// RSS at the end less RSS after the warm-up.
    rss_growth_bytes: i64,
    /// RSS growth from half to the end, per message.
    rss_bytes_per_message_second_half: f64,
    /// Anonymous RSS at the end less after the warm-up.
    rss_anon_growth_bytes: i64,
    /// The heap at the end less the heap after the warm-up.
    heap_growth_bytes: i64,
    /// Heap growth from half to the end, per message.
    heap_bytes_per_message_second_half: f64,
    /// The least-squares slope of RSS over messages, from the warm-up to the end:
    /// steadier than two samples, each of which moves with the allocator.
    rss_bytes_per_message_fit: f64,
    /// The same of the heap, whose samples move with the exporter's deferred frees.
    heap_bytes_per_message_fit: f64,
    /// The highest RSS of the process so far (`VmHWM`, earlier brokers' runs included).
    peak_rss_bytes: u64,
}

fn summarize(samples: &[Sample], messages: u64) -> Option<Summary> {
    let at = |n: u64| samples.iter().find(|s| s.messages >= n).copied();
    let warmup = at(messages / 10)?;
    let half = at(messages / 2)?;
    let end = *samples.last()?;
    let after_warmup: Vec<Sample> = samples
        .iter()
        .filter(|s| s.messages >= warmup.messages)
        .copied()
        .collect();
    let per_message = |from: u64, to: u64| {
        let n = end.messages.saturating_sub(half.messages);
        if n == 0 {
            0.0
        } else {
            (to as f64 - from as f64) / n as f64
        }
    };
    Some(Summary {
        warmup,
        half,
        end,
        rss_growth_bytes: end.rss_bytes as i64 - warmup.rss_bytes as i64,
        rss_bytes_per_message_second_half: per_message(half.rss_bytes, end.rss_bytes),
        rss_anon_growth_bytes: end.rss_anon_bytes as i64 - warmup.rss_anon_bytes as i64,
        heap_growth_bytes: end.heap_bytes as i64 - warmup.heap_bytes as i64,
        heap_bytes_per_message_second_half: per_message(half.heap_bytes, end.heap_bytes),
        rss_bytes_per_message_fit: slope(after_warmup.iter().map(|s| (s.messages, s.rss_bytes))),
        heap_bytes_per_message_fit: slope(after_warmup.iter().map(|s| (s.messages, s.heap_bytes))),
        peak_rss_bytes: status_bytes("VmHWM"),
    })
}

/// The least-squares slope of `y` over `x` (0 with fewer than two distinct `x`).
fn slope(points: impl Iterator<Item = (u64, u64)> + Clone) -> f64 {
    let n = points.clone().count() as f64;
    let (sx, sy) = points.clone().fold((0.0, 0.0), |(sx, sy), (x, y)| {
        (sx + x as f64, sy + y as f64)
    });
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.fold((0.0, 0.0), |(sxy, sxx), (x, y)| {
        let dx = x as f64 - mx;
        (sxy + dx * (y as f64 - my), sxx + dx * dx)
    });
    if sxx > 0.0 {
        sxy / sxx
    } else {
        0.0
    }
}

/// One broker's run.
#[derive(Debug, Clone, Serialize)]
struct Run {
    broker: String,
    payload_bytes: usize,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    samples: Vec<Sample>,
    summary: Option<Summary>,
}

// ---- the run --------------------------------------------------------------------------------

fn number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            eprintln!("soak: {name}={value:?} is not a number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

fn fixture(name: &str) -> Box<dyn Fixture> {
    match name {
        "redis-streams" => Box::new(fixtures::RedisStreams::new()),
        "nats" => Box::new(fixtures::Nats {
            fire_and_forget: false,
        }),
        _ => Box::new(fixtures::JetStream),
    }
}

#[tokio::main]
async fn main() {
    let messages = number("TOWER_MQ_SOAK_MESSAGES", 1_000_000).max(1);
    let every = number("TOWER_MQ_SOAK_SAMPLE_EVERY", 50_000).max(1);
    // cargo bench passes `--bench`; anything else not starting with `-` filters.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Some(unknown) = filters.iter().find(|f| !BROKERS.contains(&f.as_str())) {
        eprintln!("soak: unknown broker {unknown:?}; filters name brokers {BROKERS:?}");
        std::process::exit(2);
    }
    let scrape = match install_prometheus() {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("soak: installing the Prometheus recorder failed: {e}");
            std::process::exit(1);
        }
    };

    let mut runs = Vec::new();
    let mut failures = Vec::new();
    for broker in BROKERS {
        if !filters.is_empty() && !filters.iter().any(|f| f == broker) {
            continue;
        }
        eprintln!("{broker}: {messages} messages of {PAYLOAD_BYTES} B, a sample every {every}");
        match soak(fixture(broker).as_ref(), &scrape, messages, every).await {
            Ok(run) => runs.push(run),
            Err(error) => {
                eprintln!("{broker}: FAILED: {error}");
                failures.push(format!("{broker}: {error}"));
            }
        }
    }

    let path = report::out_dir().join("soak.json");
    let written = std::fs::create_dir_all(report::out_dir()).and_then(|()| {
        let json = serde_json::to_string_pretty(&runs).map_err(std::io::Error::other)?;
        std::fs::write(&path, json + "\n")
    });
    if let Err(e) = written {
        eprintln!("soak: writing {} failed: {e}", path.display());
        std::process::exit(1);
    }
    print!("{}", table(&runs));
    eprintln!("results in {}", path.display());
    if !failures.is_empty() {
        eprintln!("{} run(s) FAILED:", failures.len());
        for failure in &failures {
            eprintln!("  {failure}");
        }
        std::process::exit(1);
    }
}

async fn soak(
    fixture: &dyn Fixture,
    scrape: &PrometheusHandle,
    messages: u64,
    every: u64,
) -> Result<Run, BoxError> {
    let Lane {
        publish,
        receive,
        cleanup,
        ..
    } = fixture.lane(Client::Stack, Client::Stack).await?;
    let tracker = Tracker::new(messages, false);
    let mut receiving = tokio::spawn(receive(tracker.clone()));

    let mut samples = vec![sample(scrape, 0)];
    let start = Instant::now();
    let mut sent = 0;
    let outcome: Result<(), BoxError> = async {
        while sent < messages {
            let end = (sent + every).min(messages);
            futures_util::stream::iter(sent..end)
                .map(|id| publish(payload(id, PAYLOAD_BYTES)))
                .buffer_unordered(IN_FLIGHT)
                .try_for_each(|()| async { Ok(()) })
                .await
                .map_err(|e| format!("publishing failed: {e}"))?;
            arrived(&tracker, &mut receiving, end).await?;
            sent = end;
            let taken = sample(scrape, end);
            eprintln!(
                "  {:>9} messages  RSS {:>7.2} MiB (anon {:.2})  heap {:>6.2} MiB in {} blocks, \
                 {:.2} at most  (the scrape freed {:.2} MiB; {:.1}s)",
                taken.messages,
                mib(taken.rss_bytes),
                mib(taken.rss_anon_bytes),
                mib(taken.heap_bytes),
                taken.heap_blocks,
                mib(taken.heap_peak_bytes),
                taken.scraped_bytes as f64 / (1024.0 * 1024.0),
                start.elapsed().as_secs_f64()
            );
            samples.push(taken);
        }
        Ok(())
    }
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let drained = match outcome {
        Ok(()) => (&mut receiving)
            .await
            .map_err(BoxError::from)
            .and_then(|r| r),
        Err(error) => {
            receiving.abort();
            Err(error)
        }
    };
    if let Some(cleanup) = cleanup {
        cleanup.await;
    }
    drained.map_err(|error| {
        format!(
            "{error}; {} of {messages} arrived, missing ids (first 10): {:?}",
            tracker.received(),
            tracker.missing(10)
        )
    })?;
    if tracker.duplicates() > 0 {
        eprintln!(
            "  note: {} duplicate deliveries (at least once)",
            tracker.duplicates()
        );
    }
    Ok(Run {
        broker: fixture.name().to_owned(),
        payload_bytes: PAYLOAD_BYTES,
        messages,
        seconds,
        msgs_per_sec: messages as f64 / seconds.max(1e-9),
        summary: summarize(&samples, messages),
        samples,
    })
}

/// Waits until `count` messages reached the handler, failing if the consumer stops or
/// nothing arrives for [`STALL`].
async fn arrived(
    tracker: &Tracker,
    receiving: &mut tokio::task::JoinHandle<Result<(), BoxError>>,
    count: u64,
) -> Result<(), BoxError> {
    let mut last = (tracker.received(), Instant::now());
    while tracker.received() < count {
        if receiving.is_finished() {
            return match receiving.await {
                Ok(Ok(())) => Err("the consumer stopped early".into()),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(error.into()),
            };
        }
        let now = tracker.received();
        if now > last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > STALL {
            return Err(format!("nothing arrived for {}s", STALL.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

// ---- the table ------------------------------------------------------------------------------

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn signed_mib(bytes: i64) -> String {
    format!("{:+.2}", bytes as f64 / (1024.0 * 1024.0))
}

fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| broker | messages | msgs/s | RSS MiB start | warm-up (at) | half (at) | end | peak | \
         RSS growth MiB (anon) | RSS B/msg 2nd half | fit | heap MiB warm-up | end | \
         heap B/msg 2nd half | fit |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for run in runs {
        let start = run.samples.first().map_or(0, |s| s.rss_bytes);
        let _ = write!(
            out,
            "| {} | {} | {:.0} | {:.1} |",
            run.broker,
            run.messages,
            run.msgs_per_sec,
            mib(start)
        );
        let _ = match &run.summary {
            Some(s) => writeln!(
                out,
                " {:.1} ({}) | {:.1} ({}) | {:.1} | {:.1} | {} ({}) | {:.3} | {:.3} | {:.2} | {:.2} | {:.3} | {:.3} |",
                mib(s.warmup.rss_bytes),
                s.warmup.messages,
                mib(s.half.rss_bytes),
                s.half.messages,
                mib(s.end.rss_bytes),
                mib(s.peak_rss_bytes),
                signed_mib(s.rss_growth_bytes),
                signed_mib(s.rss_anon_growth_bytes),
                s.rss_bytes_per_message_second_half,
                s.rss_bytes_per_message_fit,
                mib(s.warmup.heap_bytes),
                mib(s.end.heap_bytes),
                s.heap_bytes_per_message_second_half,
                s.heap_bytes_per_message_fit,
            ),
            None => writeln!(out, "{}", " - |".repeat(11)),
        };
    }
    out
}
