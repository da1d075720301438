//! Throughput and latency of tower-mq against each broker's own client, measured in
//! the same run.
//!
//! ```sh
//! scripts/bench                                   # brings the brokers up, runs everything
//! cargo bench --bench throughput -- redis-streams e2e   # filters: brokers, clients, modes, payloads
//! ```
//!
//! For every broker (`memory`, `rabbitmq`, `redis-streams`, `redis-pubsub`, `kafka`,
//! `nats`, `nats-sent`, `nats-jetstream`, `zeromq`) four clients: `bare` (the broker's
//! own client, used directly, with the same guarantees as tower-mq's where the client
//! can give them; `nats`' bare client promises less than tower-mq's receipt with
//! many publishes in flight, and makes the same round trip for a message published
//! alone, and `nats-sent` is core NATS with tower-mq's fire-and-forget publisher,
//! which promises no more than the bare client), `service` (tower-mq's
//! publisher and consumer, no layers), `stack` (the README's metrics + retry + circuit
//! breaker + timeout on the publisher, a handler with metrics + timeout through
//! `serve`) and `batched` (`BatchLayer` over the broker's native batch publisher);
//! and these modes, with 100-byte and 10 KiB payloads:
//!
//! - `publish_seq`: one publish at a time, each awaiting its receipt;
//! - `publish_conc`: 100 publishes in flight;
//! - `publish_batch`: batches of 100 through the client's own batch path (`bare`), or
//!   the batch layer with 500 in flight and 4 batches handed over at once (`batched`);
//! - `e2e`: 100 publishes in flight while the same client consumes and acks; the time
//!   runs until the last ack;
//! - `latency_100`, `latency_1000`: publishes at a fixed rate (100/s, 1,000/s); the
//!   latency is from the send time in the payload to its receipt by the handler.
//!
//! Every measurement checks that every message arrived, by id, and fails loudly
//! otherwise: publish modes read the destination back with the bare consumer (after
//! publishing where the broker keeps messages, meanwhile where it does not).
//!
//! Environment: `TOWER_MQ_BENCH_MESSAGES` (per measurement, 100-byte payloads; 20,000),
//! `TOWER_MQ_BENCH_LARGE_MESSAGES` (10 KiB payloads; a tenth of the former),
//! `TOWER_MQ_BENCH_LATENCY_SECONDS` (how long each latency mode publishes; 3: at 100
//! messages a second a shorter run has too few samples for a steady p50, and weighs
//! whatever the first messages wait), `TOWER_MQ_BENCH_ROUNDS` (how many times each
//! throughput mode is measured, the clients of a broker, mode and payload taking turns
//! in each round; 3: the record is the median round, and keeps every round's rate; a
//! measurement that took 5 s or more is not repeated), `TOWER_MQ_BENCH_STACK_WITHOUT`
//! (`metrics`, `retry`, `breaker` or `timeout`: the `stack` publisher without that
//! layer, to see what each costs in place; `all`: four layers that do nothing in
//! place of the four, to see what the nesting alone costs; unset, the whole stack),
//! and the brokers' addresses as the tests read them (`scripts/brokers env`).
//!
//! Output (`TOWER_MQ_BENCH_OUT` moves it): `target/bench/throughput.json`, a table on stdout (with each row's ratio to
//! `bare`), progress on stderr and a bar chart in `target/bench/throughput.svg`.

#[path = "throughput/fixtures.rs"]
mod fixtures;
#[path = "throughput/lane.rs"]
mod lane;
#[path = "throughput/report.rs"]
mod report;

#[path = "../tests/support/kafka_mock_cluster.rs"]
mod kafka_mock_cluster;

use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use tower::BoxError;

use lane::{payload, Client, Fixture, Lane, Tracker, BATCH, BATCHES_IN_FLIGHT};
use report::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    PublishSeq,
    PublishConc,
    PublishBatch,
    E2e,
    Latency(u64),
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::PublishSeq,
        Mode::PublishConc,
        Mode::PublishBatch,
        Mode::E2e,
        Mode::Latency(100),
        Mode::Latency(1000),
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::PublishSeq => "publish_seq",
            Mode::PublishConc => "publish_conc",
            Mode::PublishBatch => "publish_batch",
            Mode::E2e => "e2e",
            Mode::Latency(100) => "latency_100",
            Mode::Latency(_) => "latency_1000",
        }
    }
}

const PAYLOADS: [usize; 2] = [100, 10 * 1024];

/// A throughput measurement that took this long is not repeated in later rounds.
const ONE_ROUND_ENOUGH: Duration = Duration::from_secs(5);
const IN_FLIGHT: usize = 100;
/// How long a measurement may go without a message arriving before it fails.
const STALL: Duration = Duration::from_secs(20);

struct Settings {
    messages: u64,
    large_messages: u64,
    latency_seconds: f64,
    rounds: usize,
    filters: Vec<String>,
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value.trim().parse().unwrap_or_else(|_| {
            eprintln!("throughput: {name}={value:?} is not a number");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Self {
        let messages = number("TOWER_MQ_BENCH_MESSAGES", 20_000u64).max(1);
        Settings {
            messages,
            large_messages: number("TOWER_MQ_BENCH_LARGE_MESSAGES", (messages / 10).max(1)).max(1),
            latency_seconds: number("TOWER_MQ_BENCH_LATENCY_SECONDS", 3.0f64).max(0.01),
            rounds: number("TOWER_MQ_BENCH_ROUNDS", 3usize).max(1),
            // cargo bench passes `--bench`; anything else not starting with `-` filters.
            filters: std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
        }
    }

    /// How many times each client is measured in `mode`: latency modes once (each a
    /// few seconds of samples already), throughput modes `rounds` times.
    fn rounds(&self, mode: Mode) -> usize {
        match mode {
            Mode::Latency(_) => 1,
            _ => self.rounds,
        }
    }

    fn messages(&self, mode: Mode, payload_bytes: usize) -> u64 {
        match mode {
            Mode::Latency(rate) => ((rate as f64 * self.latency_seconds).ceil() as u64).max(1),
            _ if payload_bytes > 100 => self.large_messages,
            _ => self.messages,
        }
    }

    /// Filters name brokers, clients, modes or payload sizes (`100`, `10240`); a run
    /// matches when, in every kind that a filter names, it is one of those named.
    fn selects(&self, broker: &str, client: Client, mode: Mode, payload_bytes: usize) -> bool {
        let kinds: [(&[&str], String); 4] = [
            (&BROKERS, broker.to_owned()),
            (
                &["bare", "service", "stack", "batched"],
                client.name().to_owned(),
            ),
            (
                &[
                    "publish_seq",
                    "publish_conc",
                    "publish_batch",
                    "e2e",
                    "latency_100",
                    "latency_1000",
                ],
                mode.name().to_owned(),
            ),
            (&["100", "10240"], payload_bytes.to_string()),
        ];
        kinds.iter().all(|(names, value)| {
            let named: Vec<&String> = self
                .filters
                .iter()
                .filter(|f| names.contains(&f.as_str()))
                .collect();
            named.is_empty() || named.contains(&value)
        })
    }

    fn unknown_filters(&self) -> Vec<&String> {
        let known = |f: &str| {
            BROKERS.contains(&f)
                || Client::ALL.iter().any(|c| c.name() == f)
                || Mode::ALL.iter().any(|m| m.name() == f)
                || f == "100"
                || f == "10240"
        };
        self.filters.iter().filter(|f| !known(f)).collect()
    }
}

const BROKERS: [&str; 9] = [
    "memory",
    "rabbitmq",
    "redis-streams",
    "redis-pubsub",
    "kafka",
    "nats",
    "nats-sent",
    "nats-jetstream",
    "zeromq",
];

fn fixture(name: &str) -> Box<dyn Fixture> {
    match name {
        "memory" => Box::new(fixtures::Memory::new()),
        "rabbitmq" => Box::new(fixtures::RabbitMq::new()),
        "redis-streams" => Box::new(fixtures::RedisStreams::new()),
        "redis-pubsub" => Box::new(fixtures::RedisPubSub::new()),
        "kafka" => Box::new(fixtures::Kafka::new()),
        "nats" => Box::new(fixtures::Nats {
            fire_and_forget: false,
        }),
        "nats-sent" => Box::new(fixtures::Nats {
            fire_and_forget: true,
        }),
        "nats-jetstream" => Box::new(fixtures::JetStream),
        _ => Box::new(fixtures::ZeroMq),
    }
}

/// Why `client` does not run `mode` on `fixture`, if it does not.
fn not_applicable(fixture: &dyn Fixture, client: Client, mode: Mode) -> Option<&'static str> {
    match (client, mode) {
        (_, Mode::PublishBatch) => fixture.no_batch(client),
        (Client::Batched, _) => Some("the batched client is measured in publish_batch"),
        _ => None,
    }
}

#[tokio::main]
async fn main() {
    let settings = Settings::from_env();
    let unknown = settings.unknown_filters();
    if !unknown.is_empty() {
        eprintln!(
            "throughput: unknown filter(s) {unknown:?}; filters name brokers {BROKERS:?}, clients \
             bare service stack batched, modes publish_seq publish_conc publish_batch e2e \
             latency_100 latency_1000, or payloads 100 10240"
        );
        std::process::exit(2);
    }
    // The stack's metrics layers record into a real registry, as in production.
    if let Err(e) = tower_mq::layers::metrics::install_prometheus(([127, 0, 0, 1], 0)) {
        eprintln!("throughput: installing the Prometheus recorder failed: {e}");
        std::process::exit(1);
    }

    // Grouped by broker, payload and mode; a group's clients are measured in rounds,
    // one client after the other in each, so that a change in the machine's load
    // weighs on every client of the group alike.
    let mut plan = Vec::new();
    for broker in BROKERS {
        for payload_bytes in PAYLOADS {
            for mode in Mode::ALL {
                let clients: Vec<Client> = Client::ALL
                    .into_iter()
                    .filter(|&client| settings.selects(broker, client, mode, payload_bytes))
                    .collect();
                if !clients.is_empty() {
                    plan.push((broker, payload_bytes, mode, clients));
                }
            }
        }
    }
    let total: usize = plan
        .iter()
        .map(|(_, _, mode, clients)| clients.len() * settings.rounds(*mode))
        .sum();

    let started = Instant::now();
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    let mut current: Option<(&str, Box<dyn Fixture>)> = None;
    let mut index = 0;
    for (broker, payload_bytes, mode, clients) in plan {
        if current.as_ref().map(|(name, _)| *name) != Some(broker) {
            current = Some((broker, fixture(broker)));
        }
        let Some((_, fixture)) = current.as_ref() else {
            continue;
        };
        let rounds = settings.rounds(mode);
        let mut measured = Vec::new();
        for client in clients {
            match not_applicable(fixture.as_ref(), client, mode) {
                None => measured.push((client, Vec::new(), false)),
                Some(why) => {
                    index += rounds;
                    // Only the batch paths a broker lacks are news; the rest is by design.
                    if mode == Mode::PublishBatch
                        && matches!(client, Client::Bare | Client::Batched)
                    {
                        skipped.push(format!(
                            "{broker} {} {} {payload_bytes} B: {why}",
                            client.name(),
                            mode.name()
                        ));
                    }
                }
            }
        }
        let messages = match fixture.max_bytes() {
            Some(max) => settings
                .messages(mode, payload_bytes)
                .min((max / payload_bytes as u64).max(1)),
            None => settings.messages(mode, payload_bytes),
        };
        for round in 1..=rounds {
            for (client, runs, failed) in &mut measured {
                index += 1;
                // A measurement that ran for seconds is steady enough once (Kafka's
                // one-at-a-time publishes: 50 s); rounds are for the short ones.
                let long = runs
                    .last()
                    .is_some_and(|r: &Record| r.seconds >= ONE_ROUND_ENOUGH.as_secs_f64());
                if *failed || long {
                    continue;
                }
                let mut label = format!(
                    "{broker} {} {} {payload_bytes} B",
                    client.name(),
                    mode.name()
                );
                if rounds > 1 {
                    label += &format!(" (round {round}/{rounds})");
                }
                eprint!("\r\x1b[2K[{index}/{total}] {label} ...");
                match measure(fixture.as_ref(), *client, mode, payload_bytes, messages).await {
                    Ok(record) => {
                        eprintln!(
                            "\r\x1b[2K[{index}/{total}] {label}: {:.0} msg/s ({:.1}s elapsed)",
                            record.msgs_per_sec,
                            started.elapsed().as_secs_f64()
                        );
                        runs.push(record);
                    }
                    Err(error) => {
                        eprintln!("\r\x1b[2K[{index}/{total}] {label}: FAILED: {error}");
                        failures.push(format!("{label}: {error}"));
                        *failed = true;
                    }
                }
            }
        }
        records.extend(
            measured
                .into_iter()
                .filter(|(_, _, failed)| !failed)
                .filter_map(|(_, runs, _)| report::median(runs)),
        );
    }

    if let Err(e) = report::write(&records) {
        eprintln!("throughput: writing the results failed: {e}");
        std::process::exit(1);
    }
    print!("{}", report::table(&records));
    if !skipped.is_empty() {
        eprintln!("not applicable ({}):", skipped.len());
        for line in &skipped {
            eprintln!("  {line}");
        }
    }
    eprintln!(
        "{} measurements in {:.0}s; results in target/bench/throughput.json and .svg",
        records.len(),
        started.elapsed().as_secs_f64()
    );
    if !failures.is_empty() {
        eprintln!("{} measurement(s) FAILED:", failures.len());
        for failure in &failures {
            eprintln!("  {failure}");
        }
        std::process::exit(1);
    }
}

async fn measure(
    fixture: &dyn Fixture,
    client: Client,
    mode: Mode,
    payload_bytes: usize,
    messages: u64,
) -> Result<Record, BoxError> {
    // Publish modes verify with the bare consumer; the others consume with the client.
    let consumer = match mode {
        Mode::PublishSeq | Mode::PublishConc | Mode::PublishBatch => Client::Bare,
        _ => client,
    };
    let Lane {
        publish,
        publish_alone,
        publish_batch,
        receive,
        cleanup,
    } = fixture.lane(client, consumer).await?;
    // One message at a time: the bare client's publish of a message sent alone, where
    // it has one of its own.
    let publish = match (mode, publish_alone) {
        (Mode::PublishSeq | Mode::Latency(_), Some(alone)) => alone,
        _ => publish,
    };
    let latency = matches!(mode, Mode::E2e | Mode::Latency(_));
    let tracker = Tracker::new(messages, latency);
    let receive = receive(tracker.clone());

    let concurrent = !matches!(
        mode,
        Mode::PublishSeq | Mode::PublishConc | Mode::PublishBatch
    ) || !fixture.durable();
    let (mut receiving, mut waiting) = if concurrent {
        (Some(tokio::spawn(receive)), None)
    } else {
        (None, Some(receive))
    };

    let start = Instant::now();
    // A publish that never completes fails the measurement instead of hanging the run.
    let limit = Duration::from_secs(60) + Duration::from_millis(20) * messages as u32;
    let publishing = async {
        match mode {
            Mode::PublishSeq => {
                for id in 0..messages {
                    publish(payload(id, payload_bytes)).await?;
                }
                Ok(())
            }
            Mode::PublishConc | Mode::E2e => {
                futures_util::stream::iter(0..messages)
                    .map(|id| publish(payload(id, payload_bytes)))
                    .buffer_unordered(IN_FLIGHT)
                    .try_for_each(|()| async { Ok(()) })
                    .await
            }
            Mode::PublishBatch => match &publish_batch {
                Some(batch) if client == Client::Bare => {
                    let mut id = 0;
                    while id < messages {
                        let end = (id + BATCH as u64).min(messages);
                        batch((id..end).map(|i| payload(i, payload_bytes)).collect()).await?;
                        id = end;
                    }
                    Ok(())
                }
                _ if client == Client::Batched => {
                    futures_util::stream::iter(0..messages)
                        .map(|id| publish(payload(id, payload_bytes)))
                        // Enough callers for every batch in flight and the next.
                        .buffer_unordered((BATCHES_IN_FLIGHT + 1) * BATCH)
                        .try_for_each(|()| async { Ok(()) })
                        .await
                }
                _ => Err("no batch path".into()),
            },
            Mode::Latency(rate) => {
                let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sends = Vec::with_capacity(messages as usize);
                for id in 0..messages {
                    ticks.tick().await;
                    sends.push(tokio::spawn(publish(payload(id, payload_bytes))));
                }
                for send in sends {
                    send.await??;
                }
                Ok(())
            }
        }
    };
    let published: Result<(), BoxError> = tokio::time::timeout(limit, publishing)
        .await
        .unwrap_or_else(|_| Err(format!("publishing took more than {}s", limit.as_secs()).into()));
    let published_at = start.elapsed();
    if let Err(error) = published {
        if let Some(task) = receiving {
            task.abort();
        }
        return Err(format!("publishing failed: {error}").into());
    }
    if let Some(receive) = waiting.take() {
        receiving = Some(tokio::spawn(receive));
    }
    let Some(mut task) = receiving else {
        return Err("no consumer".into());
    };

    // Wait for every message, failing if nothing arrives for STALL.
    let mut last = tracker.received();
    let received = loop {
        match tokio::time::timeout(STALL, &mut task).await {
            Ok(joined) => break joined.map_err(BoxError::from).and_then(|r| r),
            Err(_) if tracker.received() > last => last = tracker.received(),
            Err(_) => {
                task.abort();
                break Err(format!("nothing arrived for {}s", STALL.as_secs()).into());
            }
        }
    };
    let consumed_at = start.elapsed();
    if let Some(cleanup) = cleanup {
        cleanup.await;
    }
    if let Err(error) = received {
        return Err(format!(
            "{error}; {} of {messages} arrived, missing ids (first 10): {:?}",
            tracker.received(),
            tracker.missing(10)
        )
        .into());
    }
    if !tracker.complete() || tracker.strays() > 0 {
        return Err(format!(
            "{} of {messages} arrived ({} unreadable), missing ids (first 10): {:?}",
            tracker.received(),
            tracker.strays(),
            tracker.missing(10)
        )
        .into());
    }
    if tracker.duplicates() > 0 {
        eprintln!(
            "\r\x1b[2K  note: {} duplicate deliveries (at least once)",
            tracker.duplicates()
        );
    }

    let seconds = match mode {
        Mode::E2e | Mode::Latency(_) => consumed_at,
        _ => published_at,
    }
    .as_secs_f64();
    let mut latencies = tracker.latencies();
    latencies.sort_unstable();
    let quantile = |q: f64| -> Option<u64> {
        (!latencies.is_empty())
            .then(|| latencies[((latencies.len() - 1) as f64 * q).round() as usize])
    };
    Ok(Record {
        broker: fixture.name().to_owned(),
        client: client.name().to_owned(),
        mode: mode.name().to_owned(),
        payload_bytes,
        messages,
        seconds,
        msgs_per_sec: messages as f64 / seconds.max(1e-9),
        p50_us: quantile(0.50),
        p99_us: quantile(0.99),
        max_us: latencies.last().copied(),
        rounds_msgs_per_sec: Vec::new(),
    })
}
