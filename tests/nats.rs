//! NATS-specific behaviour against a real nats-server with JetStream: queue groups,
//! request/reply, header layout, JetStream deduplication, nak with delay, dead
//! letters, max deliver, and subscriptions surviving a server restart.
//!
//! Address: `TOWER_MQ_NATS_URL` (default `nats://127.0.0.1:14222`, the harness's);
//! the restart test also needs `TOWER_MQ_BROKERS` (run `scripts/test`, or
//! `scripts/brokers up nats` and `eval "$(scripts/brokers env)"`).

#![cfg(feature = "nats")]

#[path = "support/connect_retry.rs"]
mod connect_retry;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/own_server.rs"]
mod own_server;
#[path = "support/waits.rs"]
mod waits;

use harness::nats::{connect as connect_with, url};
use harness::unique;
use own_server::{assert_unreachable_and_masked, everything_shown, free_port, Log, OwnServer};
use waits::{next_within, until, until_ok};

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, UNIX_EPOCH};

use futures_util::{Stream, StreamExt};
use tokio::sync::RwLock;
use tower::{Service, ServiceExt};
use tower_mq::dead_letter;
use tower_mq::nats::config::{ConsumerConfig, Storage, StreamConfig};
use tower_mq::nats::jetstream::JetStream;
use tower_mq::nats::{BatchPublisher, Config, Connection, Publisher, Requester, Subscriber};
use tower_mq::{Delivery, Error, ErrorKind, Guarantee, Message, Operation, Position, Receipt};

/// Upper bound on waiting for something that should happen.
const WAIT: Duration = Duration::from_secs(15);
/// How long to watch for something that should not happen.
const QUIET: Duration = Duration::from_millis(500);

/// Tests share one server; the restart test takes it alone.
static SERVER: RwLock<()> = RwLock::const_new(());

async fn connect() -> Connection {
    connect_with(
        Config::new(url()).reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
}

async fn next<S>(stream: &mut S, what: &str) -> Delivery
where
    S: Stream<Item = Result<Delivery, Error>> + Unpin,
{
    next_within(stream, what, WAIT).await
}

/// The next delivery after an outage: the stream reports what failed meanwhile (a pull
/// request the restarting server could not take) as transient errors and goes on.
async fn next_after_outage<S>(stream: &mut S, what: &str) -> Delivery
where
    S: Stream<Item = Result<Delivery, Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(delivery))) => return delivery,
            Ok(Some(Err(err))) if err.is_transient() => continue,
            Ok(Some(Err(err))) => panic!("receiving {what} failed: {err}"),
            Ok(None) => panic!("the stream ended before {what}"),
            Err(_) => panic!("{what} did not arrive within {WAIT:?}"),
        }
    }
}

async fn assert_quiet<S>(stream: &mut S, why: &str)
where
    S: Stream<Item = Result<Delivery, Error>> + Unpin,
{
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, stream.next()).await {
        let shown = item.map(|d| String::from_utf8_lossy(d.message().payload()).into_owned());
        panic!("{why}, but received {shown:?}");
    }
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}

/// A stream capturing `<name>.>` and a dead-letter stream capturing `<name>-dead.>`.
async fn streams(js: &JetStream, name: &str) -> (String, String) {
    let stream = name.replace('-', "_");
    js.declare_stream(&StreamConfig::new(&stream, [format!("{name}.>")]).storage(Storage::Memory))
        .await
        .expect("declare stream");
    let dead = format!("{stream}_DEAD");
    js.declare_stream(
        &StreamConfig::new(&dead, [format!("{name}-dead.>")]).storage(Storage::Memory),
    )
    .await
    .expect("declare dead-letter stream");
    (stream, dead)
}

/// Declares the durable consumer `config` on `stream` and consumes through it.
async fn consume(
    js: &JetStream,
    stream: &str,
    config: &ConsumerConfig,
) -> tower_mq::nats::jetstream::Consumer {
    js.declare_consumer(stream, config).await.unwrap();
    js.consumer(stream, config).await.unwrap()
}

#[tokio::test]
async fn core_round_trips_headers_and_properties() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("round-trip");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let message = Message::new(&subject, "body")
        .with_key("k")
        .with_header("tenant", "acme")
        .with_header("unicode", "grüße ✓")
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_reply_to(format!("{subject}.replies"))
        .with_content_type("application/json")
        .with_content_encoding("identity")
        .with_message_type("order.created")
        .with_app_id("shop")
        .with_user_id("guest")
        .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
    let receipt = Publisher::new(&connection)
        .oneshot(message.clone())
        .await
        .unwrap();
    assert_eq!(
        receipt,
        Receipt::new("nats", subject.clone(), Guarantee::Forwarded)
    );
    assert!(!receipt.is_confirmed(), "core NATS is at most once");
    let delivery = next(&mut subscriber, "the message").await;
    assert_eq!(delivery.message(), &message);
    assert!(!delivery.acker().is_tracked());
}

#[tokio::test]
async fn unsupported_properties_fail_at_publish_unless_ignored() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("unsupported");
    for message in [
        Message::new(&subject, "x").with_priority(5),
        Message::new(&subject, "x").with_ttl(Duration::from_secs(1)),
    ] {
        let err = Publisher::new(&connection)
            .oneshot(message)
            .await
            .expect_err("NATS cannot honour priority or TTL");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.broker(), "nats");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some(subject.as_str()));
    }
    let lenient = connect_with(Config::new(url()).ignore_unsupported(true)).await;
    let mut subscriber = Subscriber::subscribe(&lenient, &subject).await.unwrap();
    Publisher::new(&lenient)
        .oneshot(Message::new(&subject, "x").with_priority(5))
        .await
        .expect("published without the priority");
    let delivery = next(&mut subscriber, "the message").await;
    assert_eq!(delivery.message().priority(), None);
}

#[tokio::test]
async fn queue_group_load_balances_without_duplicates() {
    const COUNT: usize = 300;
    let _server = SERVER.read().await;
    let connection = connect().await;
    let other = connect().await;
    let subject = unique("queue");
    let mut a = Subscriber::queue_subscribe(&connection, &subject, "workers")
        .await
        .unwrap();
    let mut b = Subscriber::queue_subscribe(&other, &subject, "workers")
        .await
        .unwrap();
    let mut everyone = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let batch = (0..COUNT)
        .map(|i| Message::new(&subject, i.to_string()))
        .collect();
    let results = BatchPublisher::new(&connection)
        .oneshot(batch)
        .await
        .unwrap();
    assert_eq!(results.len(), COUNT);
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while from_a.len() + from_b.len() < COUNT {
        tokio::time::timeout_at(deadline, async {
            tokio::select! {
                Some(Ok(d)) = a.next() => from_a.push(text(&d)),
                Some(Ok(d)) = b.next() => from_b.push(text(&d)),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {COUNT} arrived", from_a.len() + from_b.len()));
    }
    assert_quiet(&mut a, "every message went to one member").await;
    assert_quiet(&mut b, "every message went to one member").await;
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both members get work: {} and {}",
        from_a.len(),
        from_b.len()
    );
    let all: Vec<String> = from_a.into_iter().chain(from_b).collect();
    let unique_ones: HashSet<&String> = all.iter().collect();
    assert_eq!(unique_ones.len(), COUNT, "no duplicates, none lost");
    // A plain subscriber outside the group sees every message.
    for i in 0..COUNT {
        assert_eq!(text(&next(&mut everyone, "a message").await), i.to_string());
    }
}

#[tokio::test]
async fn batch_publisher_reports_each_message() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("batch");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let batch = vec![
        Message::new(&subject, "first"),
        Message::new("bad subject", "x"),
        Message::new(&subject, "second"),
    ];
    let results = Publisher::new(&connection)
        .batch()
        .oneshot(batch)
        .await
        .unwrap();
    assert!(
        matches!(&results[0], Ok(r) if r.destination() == subject && r.guarantee() == Guarantee::Forwarded)
    );
    let err = results[1].as_ref().expect_err("invalid subject");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert_eq!(err.destination(), Some("bad subject"));
    assert!(results[2].is_ok());
    assert_eq!(text(&next(&mut subscriber, "first").await), "first");
    assert_eq!(text(&next(&mut subscriber, "second").await), "second");
}

#[tokio::test]
async fn a_fire_and_forget_batch_reports_each_message_as_sent() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("batch-sent");
    // Read by the plain client on a connection of its own.
    let outside = async_nats::connect(url()).await.unwrap();
    let mut subscriber = outside.subscribe(subject.clone()).await.unwrap();
    // Its own message coming back shows the server has the subscription (a flush
    // only writes it to the socket, and a publish on another connection could overtake it).
    outside
        .publish(subject.clone(), "probe".into())
        .await
        .unwrap();
    let probe = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(probe.payload, "probe");
    let batch = || {
        vec![
            Message::new(&subject, "first"),
            Message::new("bad subject", "x"),
            Message::new(&subject, "second"),
        ]
    };
    for publisher in [
        BatchPublisher::new(&connection).fire_and_forget(),
        Publisher::new(&connection).fire_and_forget().batch(),
    ] {
        let results = publisher.oneshot(batch()).await.unwrap();
        assert_eq!(
            results[0].as_ref().unwrap(),
            &Receipt::new("nats", subject.clone(), Guarantee::Sent)
        );
        let err = results[1].as_ref().expect_err("invalid subject");
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert_eq!(err.destination(), Some("bad subject"));
        assert_eq!(results[2].as_ref().unwrap().guarantee(), Guarantee::Sent);
        for expected in ["first", "second"] {
            let message = tokio::time::timeout(WAIT, subscriber.next())
                .await
                .unwrap_or_else(|_| panic!("`{expected}` never arrived"))
                .expect("subscription open");
            assert_eq!(message.payload, expected);
        }
    }
}

#[tokio::test]
async fn a_publish_allocates_a_future_below_the_allocators_large_size() {
    let _server = SERVER.read().await;
    // A publish's future is one allocation. At 1 KiB and above glibc's malloc takes a
    // slow path (it consolidates its caches of small freed chunks on each such
    // allocation), which cost a quarter of the stack's throughput when the future
    // carried the message, the headers and the client's future side by side.
    let connection = connect().await;
    let subject = unique("future-size");
    for mut publisher in [
        Publisher::new(&connection),
        Publisher::new(&connection).fire_and_forget(),
    ] {
        std::future::poll_fn(|cx| publisher.poll_ready(cx))
            .await
            .unwrap();
        let future = publisher.call(Message::new(&subject, "x"));
        let size = std::mem::size_of_val(&*future);
        assert!(size < 1024, "a publish's future takes {size} bytes");
        future.await.unwrap();
    }
    let mut publisher = JetStream::new(&connection).publisher();
    std::future::poll_fn(|cx| publisher.poll_ready(cx))
        .await
        .unwrap();
    let future = publisher.call(Message::new(&subject, "x"));
    let size = std::mem::size_of_val(&*future);
    assert!(
        size < 1024,
        "a JetStream publish's future takes {size} bytes"
    );
}

#[tokio::test]
async fn publishes_in_flight_share_one_confirmation_round_trip() {
    let _server = SERVER.read().await;
    // The confirmations travel on the publishing connection's inbox; count them from
    // another connection.
    let prefix = format!("_INBOX.{}", unique("confirms"));
    let connection = connect_with(Config::new(url()).inbox_prefix(&prefix)).await;
    let watcher = connect().await;
    let mut loopbacks = watcher
        .client()
        .subscribe(format!("{prefix}.>"))
        .await
        .unwrap();
    watcher.client().flush().await.unwrap();
    let subject = unique("shared-confirm");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let publisher = Publisher::new(&connection);
    let receipts = futures_util::future::join_all((0..200).map(|i| {
        publisher
            .clone()
            .oneshot(Message::new(&subject, format!("{i}")))
    }))
    .await;
    for receipt in receipts {
        assert!(matches!(
            receipt,
            Ok(ref r) if r.guarantee() == Guarantee::Forwarded
        ));
    }
    let mut seen = HashSet::new();
    for _ in 0..200 {
        seen.insert(text(&next(&mut subscriber, "every message").await));
    }
    assert_eq!(seen, (0..200).map(|i| i.to_string()).collect());
    // Far fewer round trips than publishes (one each before).
    // The subscription's confirmation may or may not have been seen: count the rest.
    let mut rounds = 0;
    while let Ok(Some(_)) = tokio::time::timeout(QUIET, loopbacks.next()).await {
        rounds += 1;
    }
    eprintln!("rounds: {rounds}");
    assert!(
        (1..=20).contains(&rounds),
        "200 publishes in flight took {rounds} confirmation round trips"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_from_many_tasks_at_once_are_all_confirmed_and_delivered() {
    let _server = SERVER.read().await;
    // Tasks on two threads claim, send and read confirmation rounds side by side: every
    // publish is confirmed once, none waits for a round nobody reads.
    const TASKS: usize = 8;
    const EACH: usize = 250;
    let connection = connect().await;
    let subject = unique("many-tasks");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let publisher = Publisher::new(&connection);
            let subject = subject.clone();
            tokio::spawn(async move {
                let calls = (0..EACH).map(|i| {
                    publisher
                        .clone()
                        .oneshot(Message::new(&subject, format!("{task}-{i}")))
                });
                futures_util::stream::iter(calls)
                    .buffer_unordered(25)
                    .collect::<Vec<_>>()
                    .await
            })
        })
        .collect();
    for task in tasks {
        let receipts = tokio::time::timeout(WAIT, task)
            .await
            .expect("a publish was left waiting for its confirmation")
            .unwrap();
        for receipt in receipts {
            assert_eq!(receipt.unwrap().guarantee(), Guarantee::Forwarded);
        }
    }
    let mut seen = HashSet::new();
    for _ in 0..TASKS * EACH {
        seen.insert(text(&next(&mut subscriber, "every message").await));
    }
    assert_eq!(seen.len(), TASKS * EACH);
}

/// Two publishes to `subject` on `connection`, each polled until it waits for its
/// confirmation: the first claims a round and reads the loopback messages, the second
/// claims the next round and waits for the first to read it.
async fn leader_and_follower(
    connection: &Connection,
    subject: &str,
) -> (
    <Publisher as Service<Message>>::Future,
    <Publisher as Service<Message>>::Future,
) {
    let mut calls = Vec::new();
    // Each lets the other ready tasks run once before it claims its round: polled
    // again, the leader reads and the follower waits for it.
    for (text, polls) in [("leader", 3), ("follower", 3)] {
        let mut publisher = Publisher::new(connection);
        std::future::poll_fn(|cx| publisher.poll_ready(cx))
            .await
            .unwrap();
        let mut call = publisher.call(Message::new(subject, text));
        for _ in 0..polls {
            assert!(
                futures_util::poll!(&mut call).is_pending(),
                "a confirmation needs a round trip"
            );
        }
        calls.push(call);
    }
    let follower = calls.pop().unwrap();
    let leader = calls.pop().unwrap();
    (leader, follower)
}

#[tokio::test]
async fn a_publish_dropped_while_leading_its_confirmation_does_not_strand_the_others() {
    let _server = SERVER.read().await;
    // The first publish to wait reads the loopback messages the others wait for. Its
    // caller giving up must not leave them waiting: a long request timeout, so that
    // only a handed-on reading can answer within WAIT.
    let connection =
        connect_with(Config::new(url()).request_timeout(Duration::from_secs(600))).await;
    let subject = unique("abandoned-lead");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let (leader, follower) = leader_and_follower(&connection, &subject).await;
    drop(leader);
    let receipt = tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower was left waiting for the abandoned round")
        .unwrap();
    assert_eq!(receipt.guarantee(), Guarantee::Forwarded);
    assert_eq!(text(&next(&mut subscriber, "the leader").await), "leader");
    assert_eq!(
        text(&next(&mut subscriber, "the follower").await),
        "follower"
    );
}

#[tokio::test]
async fn a_publish_that_leads_its_confirmation_but_is_never_polled_again_stalls_no_one_for_ever() {
    let _server = SERVER.read().await;
    // A reader kept but no longer polled cannot read nor hand the reading on; the
    // follower fails after twice the request timeout instead of waiting for ever.
    // Long enough for the round trip of the last publish below on a loaded machine.
    let timeout = Duration::from_secs(1);
    let connection = connect_with(Config::new(url()).request_timeout(timeout)).await;
    let subject = unique("parked-lead");
    let (leader, follower) = leader_and_follower(&connection, &subject).await;
    let error = tokio::time::timeout(WAIT, follower)
        .await
        .expect("the follower waited for ever on a leader nobody polls")
        .expect_err("nobody confirmed the follower's message");
    assert_eq!(error.kind(), ErrorKind::Transient);
    assert!(
        error.to_string().contains("did not confirm within"),
        "{error}"
    );
    // Once the parked leader is dropped, publishing works again.
    drop(leader);
    Publisher::new(&connection)
        .oneshot(Message::new(&subject, "after"))
        .await
        .expect("a confirmation after the parked leader went away");
}
#[tokio::test]
async fn a_subscriber_on_every_subject_does_not_hold_up_confirmations() {
    let _server = SERVER.read().await;
    // A subscriber on `>` receives every message, so a confirmation sent as a request
    // to a probe subject would wait for its answer until the request timeout.
    let everything = connect().await;
    let _all = everything.client().subscribe(">").await.unwrap();
    everything.client().flush().await.unwrap();
    let connection = connect_with(Config::new(url()).request_timeout(Duration::from_secs(2))).await;
    let subject = unique("under-watch");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let receipt = Publisher::new(&connection)
        .oneshot(Message::new(&subject, "watched"))
        .await
        .expect("confirmed although a subscriber on `>` saw the confirmation");
    assert_eq!(receipt.to_string(), format!("nats {subject} (processed)"));
    assert_eq!(text(&next(&mut subscriber, "the message").await), "watched");
}

#[tokio::test]
async fn fire_and_forget_receipts_say_the_server_was_not_asked() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("fire-and-forget");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let receipt = Publisher::new(&connection)
        .fire_and_forget()
        .oneshot(Message::new(&subject, "sent"))
        .await
        .unwrap();
    assert_eq!(
        receipt,
        Receipt::new("nats", subject.clone(), Guarantee::Sent)
    );
    assert_eq!(receipt.to_string(), format!("nats {subject} (sent)"));
    assert_eq!(text(&next(&mut subscriber, "the message").await), "sent");
}

#[tokio::test]
async fn request_reply_over_an_inbox() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("upper");
    let mut requests = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let replies = Publisher::new(&connection);
    let responder = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let Some(inbox) = request.message().reply_to() else {
                continue;
            };
            let mut reply = Message::new(inbox, text(&request).to_uppercase());
            if let Some(id) = request.message().correlation_id() {
                reply = reply.with_correlation_id(id);
            }
            replies.clone().oneshot(reply).await.expect("reply");
        }
    });
    let mut requester = Requester::new(&connection).timeout(Duration::from_secs(5));
    for word in ["hello", "nats"] {
        let reply = requester
            .ready()
            .await
            .unwrap()
            .call(Message::new(&subject, word).with_correlation_id(word))
            .await
            .unwrap();
        assert_eq!(reply.payload().as_ref(), word.to_uppercase().as_bytes());
        assert_eq!(reply.correlation_id(), Some(word));
    }
    responder.abort();

    // Nobody listening: the server answers "no responders" at once.
    let err = Requester::new(&connection)
        .oneshot(Message::new(unique("nobody"), "?"))
        .await
        .expect_err("no responders");
    assert_eq!(err.operation(), Operation::Request);
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("no responders"), "{err}");

    // A responder that never answers: a transient timeout.
    let silent = unique("silent");
    let _listener = Subscriber::subscribe(&connection, &silent).await.unwrap();
    let err = Requester::new(&connection)
        .timeout(Duration::from_millis(200))
        .oneshot(Message::new(&silent, "?"))
        .await
        .expect_err("timed out");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("no reply in time"), "{err}");
}

/// What an echo responder reports: each request's reply subject as it arrives, and
/// each reply's receipt once its publish is confirmed or has failed.
struct Responder {
    task: tokio::task::JoinHandle<()>,
    seen: tokio::sync::mpsc::UnboundedReceiver<String>,
    replied: tokio::sync::mpsc::UnboundedReceiver<Result<Receipt, Error>>,
}

impl Responder {
    /// The outcome of the next reply, within `WAIT`.
    async fn replied(&mut self) -> Result<Receipt, Error> {
        tokio::time::timeout(WAIT, self.replied.recv())
            .await
            .expect("the responder replied in time")
            .expect("the responder is running")
    }
}

/// An echo responder on `subject` that records each request's reply subject and holds
/// back the reply to a request whose payload is `hold` until `release` fires. It goes
/// on after a reply that failed (a reply racing a restart of the server may), and
/// reports each outcome.
fn echo_responder(
    connection: &Connection,
    mut requests: Subscriber,
    release: tokio::sync::oneshot::Receiver<()>,
) -> Responder {
    let replies = Publisher::new(connection);
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let (replied_tx, replied) = tokio::sync::mpsc::unbounded_channel();
    let mut release = Some(release);
    let task = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let inbox = request
                .message()
                .reply_to()
                .expect("a reply subject")
                .to_owned();
            let _ = seen_tx.send(inbox.clone());
            if text(&request) == "hold" {
                if let Some(release) = release.take() {
                    let _ = release.await;
                }
            }
            let reply = Message::new(inbox, text(&request).to_uppercase());
            let _ = replied_tx.send(replies.clone().oneshot(reply).await);
        }
    });
    Responder {
        task,
        seen,
        replied,
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_inbox_and_a_late_reply_reaches_no_one() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("shared-inbox");
    let requests = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let (release, released) = tokio::sync::oneshot::channel();
    let mut responder = echo_responder(&connection, requests, released);
    let requester = Requester::new(&connection).timeout(Duration::from_secs(5));

    let calls = (0..20).map(|i| {
        let requester = requester.clone();
        let subject = subject.clone();
        async move {
            (
                i,
                requester
                    .oneshot(Message::new(&subject, format!("w{i}")))
                    .await,
            )
        }
    });
    for (i, reply) in futures_util::future::join_all(calls).await {
        let reply = reply.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(reply.payload().as_ref(), format!("W{i}").as_bytes());
    }
    let mut inboxes = Vec::new();
    while let Ok(inbox) = responder.seen.try_recv() {
        inboxes.push(inbox);
    }
    assert_eq!(inboxes.len(), 20);
    // One subscription (`<inbox>.*`) serves them all: one inbox, a token per request.
    let (inbox, _) = inboxes[0].rsplit_once('.').unwrap();
    assert!(
        inboxes
            .iter()
            .all(|s| s.rsplit_once('.').unwrap().0 == inbox),
        "{inboxes:?}"
    );
    let tokens: std::collections::HashSet<_> = inboxes
        .iter()
        .map(|s| s.rsplit_once('.').unwrap().1)
        .collect();
    assert_eq!(tokens.len(), 20, "a token per request");

    // A request whose reply comes after its deadline fails with a timeout; the late
    // reply is dropped and the requester goes on answering the right replies.
    let err = requester
        .clone()
        .timeout(Duration::from_millis(200))
        .oneshot(Message::new(&subject, "hold"))
        .await
        .expect_err("the reply is held back");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.code(), Some(tower_mq::Code::Timeout), "{err}");
    assert_eq!(err.destination(), Some(subject.as_str()));
    release.send(()).unwrap();
    for word in ["after", "late"] {
        let reply = requester
            .clone()
            .oneshot(Message::new(&subject, word))
            .await
            .unwrap();
        assert_eq!(reply.payload().as_ref(), word.to_uppercase().as_bytes());
    }
    // Every reply was confirmed, the one that came too late included.
    for reply in 0..23 {
        let receipt = responder.replied().await;
        assert!(receipt.is_ok(), "reply {reply}: {receipt:?}");
    }
    responder.task.abort();
}

#[tokio::test]
async fn a_requester_keeps_its_inbox_across_a_restart_of_its_own_server() {
    let (server, connection) = own_nats_and_connection().await;
    let subject = unique("restart-rpc");
    let requests = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let (_release, released) = tokio::sync::oneshot::channel();
    let mut responder = echo_responder(&connection, requests, released);
    let requester = Requester::new(&connection).timeout(Duration::from_secs(5));
    let reply = requester
        .clone()
        .oneshot(Message::new(&subject, "before"))
        .await;
    assert_eq!(reply.unwrap().payload().as_ref(), b"BEFORE");
    // The reply reaches the requester before the server's confirmation of it reaches
    // the responder: a restart in between would fail the reply's receipt (rightly: the
    // confirmation is lost with the connection).
    let receipt = responder.replied().await;
    assert!(receipt.is_ok(), "{receipt:?}");

    let _server = restart_on_the_same_port(server, &connection).await;
    // The client renews both subscriptions (the responder's and the inbox) on its own;
    // a request racing the renewal may fail transiently, never permanently.
    let reply = until_ok("an answer after the restart", WAIT, async || {
        requester
            .clone()
            .oneshot(Message::new(&subject, "after"))
            .await
    })
    .await;
    assert_eq!(reply.payload().as_ref(), b"AFTER");
    // Replies racing the renewal may have failed, transiently; the answered one was
    // confirmed.
    loop {
        match responder.replied().await {
            Ok(_) => break,
            Err(err) => assert_eq!(err.kind(), ErrorKind::Transient, "{err}"),
        }
    }
    responder.task.abort();
}

#[tokio::test]
async fn a_publish_whose_confirmation_was_lost_with_its_connection_fails_once_reconnected() {
    // The server stops answering with a publish and its confirmation round in its
    // socket, and is then replaced: the round's loopback message is gone with the old
    // connection. The publish fails (transiently: its message may be lost) as soon as
    // the client is connected again, not after the request timeout.
    let port = free_port();
    let server = own_nats_on(port, &[]).await;
    let timeout = Duration::from_secs(600);
    let config = Config::new(format!("nats://127.0.0.1:{port}"))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .request_timeout(timeout);
    let connection = Connection::connect(&config).await.unwrap();
    let subject = unique("lost-confirmation");
    // The first publish subscribes the connection to its loopback inbox.
    Publisher::new(&connection)
        .oneshot(Message::new(&subject, "first"))
        .await
        .unwrap();

    server.pause();
    let statistics = connection.client().statistics();
    let sent = statistics.out_messages.load(Ordering::Acquire);
    let mut publish = Box::pin(Publisher::new(&connection).oneshot(Message::new(&subject, "lost")));
    // Polled until the client has taken both the message and its loopback message.
    until(
        "the message and its confirmation round to be sent",
        WAIT,
        async || {
            assert!(futures_util::poll!(&mut publish).is_pending());
            statistics.out_messages.load(Ordering::Acquire) >= sent + 2
        },
    )
    .await;
    let _server = restart_on_the_same_port(server, &connection).await;

    let err = tokio::time::timeout(WAIT, publish)
        .await
        .expect("the publish fails once the client reconnected, not after its timeout")
        .expect_err("its confirmation was lost with the old connection");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.code(), Some(tower_mq::Code::ConnectionLost), "{err}");
    assert_eq!(err.destination(), Some(subject.as_str()));
    assert!(err.to_string().contains("re-established"), "{err}");
    // Publishes go on being confirmed on the new connection.
    let receipt = Publisher::new(&connection)
        .oneshot(Message::new(&subject, "after"))
        .await
        .unwrap();
    assert_eq!(receipt.guarantee(), Guarantee::Forwarded);
}

#[tokio::test]
async fn jetstream_deduplicates_a_retried_publish_with_the_same_msg_id() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("dedup");
    let (stream, _) = streams(&js, &name).await;
    let mut publisher = js.publisher();
    let message = Message::new(format!("{name}.orders"), "order-1").with_message_id("order-1");
    let first = publisher
        .ready()
        .await
        .unwrap()
        .call(message.clone())
        .await
        .unwrap();
    // The retry after, say, an ack timeout: same Nats-Msg-Id.
    let retried = publisher
        .ready()
        .await
        .unwrap()
        .call(message)
        .await
        .unwrap();
    let (s, Some(Position::Sequence(sequence)), duplicate) =
        (first.destination(), first.position(), first.is_duplicate())
    else {
        panic!("{first:?}")
    };
    assert_eq!((s, *sequence, duplicate), (stream.as_str(), 1, false));
    assert_eq!(
        retried,
        Receipt::new("nats", stream.clone(), Guarantee::Stored)
            .with_position(Position::Sequence(1))
            .with_duplicate(true)
    );
    // Without an id, each publish is stored.
    let other = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(format!("{name}.orders"), "order-2"))
        .await
        .unwrap();
    assert_eq!(
        other,
        Receipt::new("nats", stream.clone(), Guarantee::Stored)
            .with_position(Position::Sequence(2))
            .with_duplicate(false)
    );

    let config = ConsumerConfig::new("readers");
    let mut consumer = consume(&js, &stream, &config).await;
    let delivery = next(&mut consumer, "order-1").await;
    assert_eq!(delivery.message().message_id(), Some("order-1"));
    delivery.ack().await.unwrap();
    let delivery = next(&mut consumer, "order-2").await;
    assert_eq!(text(&delivery), "order-2");
    assert_eq!(
        delivery.message().message_id(),
        None,
        "no Nats-Msg-Id is invented"
    );
    delivery.ack().await.unwrap();
    assert_quiet(&mut consumer, "the duplicate was not stored").await;
}

#[tokio::test]
async fn jetstream_publish_to_a_subject_no_stream_captures_is_permanent() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let subject = unique("nowhere");
    let err = JetStream::new(&connection)
        .publisher()
        .oneshot(Message::new(&subject, "x"))
        .await
        .expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.destination(), Some(subject.as_str()));
}

#[tokio::test]
async fn jetstream_nak_with_delay_redelivers_later_with_its_count() {
    const DELAY: Duration = Duration::from_millis(700);
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("nak");
    let (stream, _) = streams(&js, &name).await;
    let config = ConsumerConfig::new("nakkers");
    let mut consumer = consume(&js, &stream, &config).await;
    js.publisher()
        .oneshot(Message::new(format!("{name}.jobs"), "later"))
        .await
        .unwrap();
    let first = next(&mut consumer, "the first delivery").await;
    assert_eq!(first.delivery_count(), 1);
    let nacked_at = tokio::time::Instant::now();
    first.nack(Some(DELAY)).await.unwrap();
    let second = next(&mut consumer, "the redelivery").await;
    assert!(
        nacked_at.elapsed() >= DELAY,
        "redelivered after {:?}, before the delay",
        nacked_at.elapsed()
    );
    assert_eq!(text(&second), "later");
    assert_eq!(second.delivery_count(), 2);
    assert!(second.is_redelivery());
    second.ack().await.unwrap();
    assert_quiet(&mut consumer, "the redelivery was acked").await;
}

#[tokio::test]
async fn jetstream_reject_dead_letters_with_reason_then_terminates() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("reject");
    let (stream, dead_stream) = streams(&js, &name).await;
    let config = ConsumerConfig::new("rejecters")
        .ack_wait(Duration::from_secs(1))
        .dead_letter(format!("{name}-dead.jobs"));
    let mut consumer = consume(&js, &stream, &config).await;
    let mut dead = consume(&js, &dead_stream, &ConsumerConfig::new("undertaker")).await;

    let message = Message::new(format!("{name}.jobs"), "poison")
        .with_header("tenant", "acme")
        .with_message_id("job-1");
    js.publisher().oneshot(message).await.unwrap();
    let delivery = next(&mut consumer, "the poison message").await;
    delivery.reject("cannot parse").await.unwrap();

    let letter = next(&mut dead, "the dead letter").await;
    let headers = letter.message().headers();
    assert_eq!(text(&letter), "poison");
    assert_eq!(headers.get_str("tenant"), Some("acme"));
    assert_eq!(headers.get_str(dead_letter::REASON), Some("cannot parse"));
    assert_eq!(headers.get_str(dead_letter::STREAM), Some(stream.as_str()));
    assert_eq!(headers.get_str(dead_letter::CONSUMER), Some("rejecters"));
    assert_eq!(headers.get_str(dead_letter::SEQUENCE), Some("1"));
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("1"));
    assert_eq!(headers.get_str(dead_letter::MESSAGE_ID), Some("job-1"));
    assert_eq!(
        headers.get_str(dead_letter::ORIGINAL_DESTINATION),
        Some(format!("{name}.jobs").as_str())
    );
    letter.ack().await.unwrap();
    // Terminated: not delivered again, even after the ack wait.
    if let Ok(item) = tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
        panic!("a terminated message is not redelivered, got {item:?}");
    }
}

#[tokio::test]
async fn jetstream_max_deliver_dead_letters_the_last_nack() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("max-deliver");
    let (stream, dead_stream) = streams(&js, &name).await;
    let config = ConsumerConfig::new("tries")
        .max_deliveries(3)
        .dead_letter(format!("{name}-dead.jobs"));
    let mut consumer = consume(&js, &stream, &config).await;
    let mut dead = consume(&js, &dead_stream, &ConsumerConfig::new("undertaker")).await;

    js.publisher()
        .oneshot(Message::new(format!("{name}.jobs"), "flaky"))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let delivery = next(&mut consumer, &format!("delivery {attempt}")).await;
        assert_eq!(delivery.delivery_count(), attempt);
        delivery.nack(None).await.unwrap();
    }
    assert_quiet(&mut consumer, "max_deliver is 3").await;
    let letter = next(&mut dead, "the dead letter").await;
    assert_eq!(text(&letter), "flaky");
    let reason = letter
        .message()
        .headers()
        .get_str(dead_letter::REASON)
        .unwrap_or_default();
    assert!(reason.contains("max_deliver"), "{reason}");
    assert_eq!(
        letter.message().headers().get_str(dead_letter::DELIVERIES),
        Some("3")
    );
    letter.ack().await.unwrap();
}

#[tokio::test]
async fn jetstream_redelivers_what_is_not_settled_within_the_ack_wait() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("ack-wait");
    let (stream, _) = streams(&js, &name).await;
    let config = ConsumerConfig::new("slow").ack_wait(Duration::from_secs(1));
    let mut consumer = consume(&js, &stream, &config).await;
    js.publisher()
        .oneshot(Message::new(format!("{name}.jobs"), "slow"))
        .await
        .unwrap();
    let first = next(&mut consumer, "the first delivery").await;
    let taken = tokio::time::Instant::now();
    let again = next(&mut consumer, "the redelivery after the ack wait").await;
    assert!(
        taken.elapsed() >= Duration::from_millis(900),
        "{:?}",
        taken.elapsed()
    );
    assert_eq!(text(&again), "slow");
    assert_eq!(again.delivery_count(), 2);
    again.ack().await.unwrap();
    drop(first);
}

/// Resumes a paused server when dropped, also when the test fails.
struct ResumeOnDrop;

impl Drop for ResumeOnDrop {
    fn drop(&mut self) {
        if let Ok(script) = std::env::var("TOWER_MQ_BROKERS") {
            let _ = std::process::Command::new(script)
                .args(["resume", "nats"])
                .status();
        }
    }
}

#[tokio::test]
async fn subscriptions_survive_a_server_restart() {
    let _server = SERVER.write().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let subject = unique("survivor");
    let name = unique("survivor-js");
    let (stream, _) = {
        let stream = name.replace('-', "_");
        // File storage: the stream must outlive the restart.
        js.declare_stream(&StreamConfig::new(&stream, [format!("{name}.>")]))
            .await
            .unwrap();
        (stream, ())
    };
    let config = ConsumerConfig::new("durable");
    js.declare_consumer(&stream, &config).await.unwrap();
    let mut core_sub = Subscriber::subscribe(&connection, &subject).await.unwrap();
    let mut queue_sub = Subscriber::queue_subscribe(&connection, &subject, "group")
        .await
        .unwrap();
    let mut js_sub = js.consumer(&stream, &config).await.unwrap();
    let mut publisher = Publisher::new(&connection);
    let mut js_publisher = js.publisher();

    publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&subject, "before"))
        .await
        .unwrap();
    assert_eq!(text(&next(&mut core_sub, "before").await), "before");
    assert_eq!(text(&next(&mut queue_sub, "before").await), "before");

    harness::run("stop", "nats").await;
    until("the client sees the server gone", WAIT, async || {
        !connection.is_connected()
    })
    .await;
    // Publishing waits for the connection: readiness is pending, not an error.
    let mut waiting = tokio_test::task::spawn(publisher.ready());
    tokio_test::assert_pending!(waiting.poll());
    drop(waiting);
    // A JetStream message published while the server is down is kept by the client
    // until it is back; it must be stored once, whatever the retries.
    let js_message =
        Message::new(format!("{name}.jobs"), "across the restart").with_message_id("restart-1");
    let js_publish = tokio::spawn({
        let mut js_publisher = js_publisher.clone();
        let message = js_message.clone();
        async move {
            for _ in 0..10 {
                match js_publisher.ready().await?.call(message.clone()).await {
                    Err(err) if err.is_transient() => continue,
                    other => return other,
                }
            }
            Err(Error::transient("nats", Operation::Publish).with_reason("gave up"))
        }
    });
    harness::run("start", "nats").await;

    // Core: the same subscriptions receive what is published after the restart.
    let mut sent_after = false;
    for _ in 0..10 {
        match publisher
            .ready()
            .await
            .unwrap()
            .call(Message::new(&subject, "after"))
            .await
        {
            Ok(_) => {
                sent_after = true;
                break;
            }
            Err(err) => assert!(err.is_transient(), "{err}"),
        }
    }
    assert!(sent_after, "publishing after the restart");
    assert_eq!(text(&next(&mut core_sub, "after (plain)").await), "after");
    assert_eq!(
        text(&next(&mut queue_sub, "after (queue group)").await),
        "after"
    );
    assert!(connection.is_connected());

    // JetStream: the durable consumer resumes; the message is stored once.
    let receipt = js_publish
        .await
        .unwrap()
        .expect("JetStream publish across the restart");
    assert!(
        receipt.position() == Some(&Position::Sequence(1)),
        "{receipt:?}"
    );
    let delivery = next_after_outage(&mut js_sub, "the JetStream message").await;
    assert_eq!(text(&delivery), "across the restart");
    delivery.ack().await.unwrap();
    let again = js_publisher
        .ready()
        .await
        .unwrap()
        .call(js_message)
        .await
        .unwrap();
    assert!(
        again.position() == Some(&Position::Sequence(1)) && again.is_duplicate(),
        "{again:?}"
    );
    assert_quiet(&mut js_sub, "stored once").await;
    // File storage outlives the run: remove the stream.
    js.context().delete_stream(&stream).await.unwrap();
}

#[tokio::test]
async fn streams_and_consumers_are_declared_from_config() {
    use async_nats::jetstream::consumer::AckPolicy;
    use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
    use tower_mq::nats::config::Retention;

    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("declared");
    let stream = name.replace('-', "_");
    let config = StreamConfig::new(&stream, [format!("{name}.>")])
        .retention(Retention::WorkQueue)
        .storage(Storage::Memory)
        .max_age(Duration::from_secs(3600))
        .duplicate_window(Duration::from_secs(30));
    js.declare_stream(&config).await.unwrap();
    // Declaring again is idempotent.
    js.declare_stream(&config).await.unwrap();
    let consumer = ConsumerConfig::new("workers")
        .filter_subject(format!("{name}.jobs"))
        .ack_wait(Duration::from_secs(7))
        .max_deliveries(4)
        .backoff([Duration::from_secs(1), Duration::from_secs(5)])
        .max_ack_pending(50);
    js.declare_consumer(&stream, &consumer).await.unwrap();
    js.declare_consumer(&stream, &consumer).await.unwrap();

    let mut info_stream = js.context().get_stream(&stream).await.unwrap();
    let info = info_stream.info().await.unwrap().config.clone();
    assert_eq!(info.subjects, vec![format!("{name}.>")]);
    assert_eq!(info.retention, RetentionPolicy::WorkQueue);
    assert_eq!(info.storage, StorageType::Memory);
    assert_eq!(info.max_age, Duration::from_secs(3600));
    assert_eq!(info.duplicate_window, Duration::from_secs(30));
    let mut durable: async_nats::jetstream::consumer::PullConsumer =
        info_stream.get_consumer("workers").await.unwrap();
    let info = durable.info().await.unwrap().config.clone();
    assert_eq!(info.ack_policy, AckPolicy::Explicit);
    assert_eq!(info.filter_subject, format!("{name}.jobs"));
    assert_eq!(info.max_deliver, 4);
    assert_eq!(
        info.backoff,
        vec![Duration::from_secs(1), Duration::from_secs(5)]
    );
    assert_eq!(info.max_ack_pending, 50);

    // A configuration the server refuses is a permanent declare error.
    let err = js
        .declare_consumer(
            &stream,
            &ConsumerConfig::new("bad")
                .backoff([Duration::from_secs(1)])
                .max_deliveries(1),
        )
        .await
        .expect_err("backoff needs max_deliver above its length");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Declare);
}

#[tokio::test]
async fn jetstream_batch_publisher_waits_for_every_ack() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("js-batch");
    let (stream, _) = streams(&js, &name).await;
    let subject = format!("{name}.events");
    let mut batch: Vec<Message> = (0..50)
        .map(|i| Message::new(&subject, i.to_string()).with_message_id(format!("e-{i}")))
        .collect();
    batch.push(Message::new(&subject, "again").with_message_id("e-7"));
    batch.push(Message::new("bad subject", "x"));
    let results = js.publisher().batch().oneshot(batch).await.unwrap();
    assert_eq!(results.len(), 52);
    for (i, result) in results[..50].iter().enumerate() {
        let expected = Receipt::new("nats", stream.clone(), Guarantee::Stored)
            .with_position(Position::Sequence(i as u64 + 1))
            .with_duplicate(false);
        assert_eq!(result.as_ref().ok(), Some(&expected), "message {i}");
    }
    assert_eq!(
        results[50].as_ref().ok(),
        Some(
            &Receipt::new("nats", stream.clone(), Guarantee::Stored)
                .with_position(Position::Sequence(8))
                .with_duplicate(true)
        )
    );
    let err = results[51].as_ref().expect_err("invalid subject");
    assert_eq!(err.kind(), ErrorKind::Permanent);
}

#[tokio::test]
async fn an_ack_that_times_out_is_transient_and_the_retry_is_not_stored_twice() {
    let _server = SERVER.write().await;
    let connection = connect_with(
        Config::new(url())
            .request_timeout(Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await;
    let js = JetStream::new(&connection);
    let name = unique("late-ack");
    let (stream, _) = streams(&js, &name).await;
    let message = Message::new(format!("{name}.orders"), "order").with_message_id("late-1");

    // The server takes the publish but answers too late (it is frozen).
    harness::run("pause", "nats").await;
    let resume = ResumeOnDrop;
    let err = js
        .publisher()
        .oneshot(message.clone())
        .await
        .expect_err("no ack from a frozen server");
    let core_err = Publisher::new(&connection)
        .oneshot(Message::new(format!("{name}-core"), "x"))
        .await
        .expect_err("no confirmation from a frozen server");
    drop(resume);
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("may have been stored"), "{err}");
    assert_eq!(core_err.kind(), ErrorKind::Transient, "{core_err}");

    // It was stored; the retry with the same Nats-Msg-Id is recognised.
    let retried = js.publisher().oneshot(message).await.unwrap();
    assert_eq!(
        retried,
        Receipt::new("nats", stream.clone(), Guarantee::Stored)
            .with_position(Position::Sequence(1))
            .with_duplicate(true)
    );
    let config = ConsumerConfig::new("readers");
    let mut consumer = consume(&js, &stream, &config).await;
    let delivery = next(&mut consumer, "the order").await;
    assert_eq!(delivery.message().message_id(), Some("late-1"));
    delivery.ack().await.unwrap();
    assert_quiet(&mut consumer, "stored once").await;
}

/// Publishes `payloads` to `subject` on a JetStream stream, each acked by the stream.
async fn publish_all(js: &JetStream, subject: &str, payloads: &[&str]) {
    let mut publisher = js.publisher();
    for payload in payloads {
        publisher
            .ready()
            .await
            .expect("publisher ready")
            .call(Message::new(subject, payload.to_string()))
            .await
            .expect("publish");
    }
}

/// Receives `count` deliveries, each within `within`.
async fn next_n<S>(stream: &mut S, count: usize, within: Duration, what: &str) -> Vec<Delivery>
where
    S: Stream<Item = Result<Delivery, Error>> + Unpin,
{
    let mut got = Vec::new();
    while got.len() < count {
        match tokio::time::timeout(within, stream.next()).await {
            Ok(Some(Ok(delivery))) => got.push(delivery),
            Ok(Some(Err(err))) => panic!("receiving {what} failed: {err}"),
            Ok(None) => panic!("the stream ended before {what}"),
            Err(_) => panic!(
                "only {} of {count} {what} arrived within {within:?} each",
                got.len()
            ),
        }
    }
    got
}

#[tokio::test]
async fn jetstream_dropping_a_consumer_releases_what_its_pull_brought_at_once() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("release-on-drop");
    let (stream, _) = streams(&js, &name).await;
    // A long ack wait: anything back within a few seconds was released, not timed out.
    let config = ConsumerConfig::new("deployed")
        .ack_wait(Duration::from_secs(30))
        .batch_size(5);
    js.declare_consumer(&stream, &config).await.unwrap();
    let subject = format!("{name}.jobs");
    publish_all(&js, &subject, &["1", "2", "3", "4", "5"]).await;

    let mut consumer = js.consumer(&stream, &config).await.unwrap();
    let taken = next(&mut consumer, "the first of the batch").await;
    assert_eq!(text(&taken), "1");
    taken.ack().await.unwrap();
    // The pull brought all five; four were never yielded.
    drop(consumer);

    let started = tokio::time::Instant::now();
    let mut next_consumer = js.consumer(&stream, &config).await.unwrap();
    let again = next_n(
        &mut next_consumer,
        4,
        Duration::from_secs(5),
        "released messages",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let payloads: HashSet<String> = again.iter().map(text).collect();
    assert_eq!(
        payloads,
        HashSet::from(["2", "3", "4", "5"].map(String::from))
    );
    for delivery in &again {
        // JetStream counts the delivery to the dropped consumer: the nak cannot undo it.
        assert_eq!(delivery.delivery_count(), 2, "{}", text(delivery));
        delivery.ack().await.unwrap();
    }
    assert_quiet(&mut next_consumer, "every message was acked once").await;
}

#[tokio::test]
async fn jetstream_close_releases_messages_of_an_open_pull_request() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("release-on-close");
    let (stream, _) = streams(&js, &name).await;
    let config = ConsumerConfig::new("deployed")
        .ack_wait(Duration::from_secs(30))
        .batch_size(10);
    js.declare_consumer(&stream, &config).await.unwrap();
    let subject = format!("{name}.jobs");
    publish_all(&js, &subject, &["a", "b", "c"]).await;

    let mut consumer = js.consumer(&stream, &config).await.unwrap();
    let taken = next(&mut consumer, "the first of the batch").await;
    assert_eq!(text(&taken), "a");
    // The pull request asked for 10 and is still open: close waits for its end (its
    // 2 s expiry), then naks the two it brought.
    let closing = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), consumer.close())
        .await
        .expect("close is bounded by the pull request's expiry")
        .expect("close");
    assert!(
        closing.elapsed() < Duration::from_secs(5),
        "{:?}",
        closing.elapsed()
    );
    taken.ack().await.unwrap();

    let mut next_consumer = js.consumer(&stream, &config).await.unwrap();
    let again = next_n(
        &mut next_consumer,
        2,
        Duration::from_secs(5),
        "released messages",
    )
    .await;
    let payloads: HashSet<String> = again.iter().map(text).collect();
    assert_eq!(payloads, HashSet::from(["b", "c"].map(String::from)));
    for delivery in &again {
        assert_eq!(delivery.delivery_count(), 2, "{}", text(delivery));
        delivery.ack().await.unwrap();
    }
    assert_quiet(&mut next_consumer, "every message was acked once").await;
}

/// Publishes on a raw NATS connection: `HPUB` with `headers` as the header block, as
/// any client may send it, then waits for the server to have processed it.
async fn raw_hpub(subject: &str, headers: &[u8], payload: &[u8]) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let address = url();
    let address = address
        .trim_start_matches("nats://")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_owned();
    let socket = tokio::net::TcpStream::connect(&address)
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {address}: {e}"));
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    let info = lines.next_line().await.expect("INFO").unwrap_or_default();
    assert!(info.starts_with("INFO"), "{info}");
    let mut frame =
        br#"CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}"#.to_vec();
    frame.extend_from_slice(b"\r\n");
    frame.extend_from_slice(
        format!(
            "HPUB {subject} {} {}\r\n",
            headers.len(),
            headers.len() + payload.len()
        )
        .as_bytes(),
    );
    frame.extend_from_slice(headers);
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.expect("write HPUB");
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the server answers the PING")
            .expect("read")
            .expect("the server closed the raw connection");
        assert!(
            !line.starts_with("-ERR"),
            "the server refused the HPUB: {line}"
        );
        if line == "PONG" {
            return;
        }
    }
}

#[tokio::test]
async fn jetstream_a_header_block_async_nats_cannot_parse_costs_no_other_message_or_connection() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("poison");
    let (stream, _) = streams(&js, &name).await;
    // The default batch (100): the poison message arrives in the same pull as the
    // good ones.
    let config = ConsumerConfig::new("careful")
        .ack_wait(Duration::from_secs(1))
        .max_deliveries(3);
    js.declare_consumer(&stream, &config).await.unwrap();
    let mut advisories = connection
        .client()
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.careful"
        ))
        .await
        .unwrap();
    connection.client().flush().await.unwrap();
    let connects = || {
        connection
            .client()
            .statistics()
            .connects
            .load(Ordering::Acquire)
    };
    let connected_before = connects();

    let subject = format!("{name}.jobs");
    publish_all(&js, &subject, &["before"]).await;
    // A header block that is not UTF-8: async-nats drops the connection it arrives on.
    raw_hpub(
        &subject,
        b"NATS/1.0\r\nX-Poison: \xff\xfe\r\n\r\n",
        b"poison",
    )
    .await;
    publish_all(&js, &subject, &["after"]).await;

    let mut consumer = js.consumer(&stream, &config).await.unwrap();
    let mut publisher = js.publisher();
    let mut handled = Vec::new();
    let mut advisory = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handled.len() < 2 || advisory.is_none() {
        tokio::select! {
            item = consumer.next() => match item {
                Some(Ok(delivery)) => {
                    handled.push((text(&delivery), delivery.delivery_count()));
                    delivery.ack().await.unwrap();
                }
                Some(Err(err)) => assert!(err.is_transient(), "{err}"),
                None => panic!("the consumer ended"),
            },
            event = advisories.next(), if advisory.is_none() => {
                let event = event.expect("advisory subscription");
                let event: serde_json::Value =
                    serde_json::from_slice(&event.payload).expect("advisory JSON");
                advisory = Some(event);
            }
            _ = tokio::time::sleep_until(deadline) => panic!(
                "handled {handled:?}, advisory {advisory:?} within 30 s"
            ),
        }
    }
    let texts: Vec<&str> = handled.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["before", "after"], "{handled:?}");
    // The server gave up on the poison message (stream sequence 2) after max_deliver.
    let advisory = advisory.unwrap_or_default();
    assert_eq!(advisory["stream_seq"], 2, "{advisory}");
    assert_eq!(advisory["deliveries"], 3, "{advisory}");
    // The shared connection never dropped, and publishing on it works.
    assert_eq!(
        connects(),
        connected_before,
        "the shared connection reconnected"
    );
    assert!(connection.is_connected());
    publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&subject, "still publishing"))
        .await
        .unwrap();
    let last = next(&mut consumer, "a message after the poison was given up").await;
    assert_eq!(text(&last), "still publishing");
    last.ack().await.unwrap();
    assert_quiet(&mut consumer, "the poison message is not delivered again").await;
}

// ---------------------------------------------------------------------------
// Credentials: authentication against a server of the test's own, and no secret in
// what is printed or logged.

/// A `nats-server` of the test's own with `args`.
async fn own_nats(args: &[&str]) -> OwnServer {
    own_nats_on(free_port(), args).await
}

/// A `nats-server` of the test's own on `port` (which a connect may already be waiting
/// for), with `args` added.
async fn own_nats_on(port: u16, args: &[&str]) -> OwnServer {
    let args = ["-a", "127.0.0.1", "-p", &port.to_string()]
        .iter()
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    OwnServer::start(
        "nats-server",
        "nats-server",
        port,
        args,
        Log::Stderr,
        "Server is ready",
        WAIT,
    )
    .await
}

/// A `nats-server` of the test's own, and a connection to it that reconnects quickly.
async fn own_nats_and_connection() -> (OwnServer, Connection) {
    let port = free_port();
    let server = own_nats_on(port, &[]).await;
    let config = Config::new(format!("nats://127.0.0.1:{port}"))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
    (server, Connection::connect(&config).await.unwrap())
}

/// Stops `server`, and once `connection` saw it gone starts another on the same port;
/// returns it once `connection` is back.
async fn restart_on_the_same_port(server: OwnServer, connection: &Connection) -> OwnServer {
    let port = server.port();
    drop(server);
    until("the client to see its server gone", WAIT, async || {
        !connection.is_connected()
    })
    .await;
    let server = own_nats_on(port, &[]).await;
    until("the client to reconnect", WAIT, async || {
        connection.is_connected()
    })
    .await;
    server
}

/// A message published on `connection` arrives on a subscription of the same
/// connection: the connection is authenticated and usable.
async fn assert_round_trip(connection: &Connection) {
    let subject = unique("auth");
    let mut subscriber = Subscriber::subscribe(connection, &subject).await.unwrap();
    Publisher::new(connection)
        .oneshot(Message::new(&subject, "authenticated"))
        .await
        .unwrap();
    let delivery = next(&mut subscriber, "the message").await;
    assert_eq!(text(&delivery), "authenticated");
}

/// A connect that must be refused: permanent, by NATS, at connect, naming the server
/// and never showing `secret`.
async fn assert_refused(config: Config, secret: &str) {
    let err = Connection::connect(&config)
        .await
        .expect_err("the server must refuse these credentials");
    let shown = everything_shown(&err);
    assert_eq!(err.kind(), ErrorKind::Permanent, "{shown}");
    assert_eq!(err.broker(), "nats");
    assert_eq!(err.operation(), Operation::Connect);
    assert!(
        err.destination().is_some_and(|d| d.contains("127.0.0.1")),
        "{shown}"
    );
    assert!(!shown.contains(secret), "the secret leaked: {shown}");
}

#[tokio::test]
async fn user_and_password_from_the_url_or_the_config_authenticate() {
    let password = "n4ts-p@ss/word";
    let server = own_nats(&["--user", "orders", "--pass", password]).await;
    let address = server.address();

    // In the URL, percent-encoded as URLs require.
    let from_url = Config::new(format!("nats://orders:n4ts-p%40ss%2Fword@{address}"));
    assert_round_trip(&Connection::connect(&from_url).await.unwrap()).await;
    let from_config =
        Config::new(format!("nats://{address}")).user_and_password("orders", password);
    let connection = Connection::connect(&from_config).await.unwrap();
    assert_round_trip(&connection).await;
    assert!(!format!("{connection:?}").contains(password));

    assert_refused(
        Config::new(format!("nats://orders:wr0ng-secret@{address}")),
        "wr0ng-secret",
    )
    .await;
    assert_refused(
        Config::new(format!("nats://{address}")).user_and_password("orders", "wr0ng-secret"),
        "wr0ng-secret",
    )
    .await;
    // The config's credentials win over the URL's.
    assert_refused(
        Config::new(format!("nats://orders:n4ts-p%40ss%2Fword@{address}"))
            .user_and_password("orders", "wr0ng-secret"),
        "wr0ng-secret",
    )
    .await;
    // No credentials at all.
    let err = Connection::connect(&Config::new(format!("nats://{address}")))
        .await
        .expect_err("the server requires credentials");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
}

#[tokio::test]
async fn a_token_from_the_url_or_the_config_authenticates() {
    let token = "t0ken-s3cret";
    let server = own_nats(&["--auth", token]).await;
    let address = server.address();

    let from_url = Config::new(format!("nats://{token}@{address}"));
    assert_eq!(from_url.redacted_url(), format!("nats://***@{address}"));
    assert_round_trip(&Connection::connect(&from_url).await.unwrap()).await;
    let from_config = Config::new(format!("nats://{address}")).token(token);
    assert_round_trip(&Connection::connect(&from_config).await.unwrap()).await;

    assert_refused(
        Config::new(format!("nats://wr0ng-t0ken@{address}")),
        "wr0ng-t0ken",
    )
    .await;
    assert_refused(
        Config::new(format!("nats://{address}")).token("wr0ng-t0ken"),
        "wr0ng-t0ken",
    )
    .await;
}

#[tokio::test]
async fn an_nkey_seed_authenticates() {
    // The documented example pair of NATS' nkey authentication.
    let seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY";
    let public = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";
    let dir = std::env::temp_dir().join(unique("nkey"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.conf");
    std::fs::write(
        &file,
        format!("authorization {{ users = [ {{ nkey: \"{public}\" }} ] }}\n"),
    )
    .unwrap();
    let server = own_nats(&["-c", file.to_str().unwrap()]).await;
    let address = server.address();

    let config = Config::new(format!("nats://{address}")).nkey(seed);
    assert!(!format!("{config:?}").contains(seed));
    assert_round_trip(&Connection::connect(&config).await.unwrap()).await;

    // Text that is no seed cannot sign the server's nonce.
    assert_refused(
        Config::new(format!("nats://{address}")).nkey("not-a-seed-s3cret"),
        "not-a-seed-s3cret",
    )
    .await;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every event logged while it is installed, fields included.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<String>>);

impl CapturedLogs {
    fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl tracing::field::Visit for CapturedLogs {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if let Ok(mut text) = self.0.lock() {
            text.push_str(&format!(" {}={value:?}", field.name()));
        }
    }
}

impl tracing::Subscriber for CapturedLogs {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        span.record(&mut self.clone());
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        values.record(&mut self.clone());
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        event.record(&mut self.clone());
        if let Ok(mut text) = self.0.lock() {
            text.push('\n');
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn credentials_never_appear_in_debug_errors_or_logs() {
    // Global, not per thread: tracing caches whether a log site is wanted from the
    // first thread that reaches it, which may be another test's.
    static LOGS: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    let logs = LOGS
        .get_or_init(|| {
            let logs = CapturedLogs::default();
            tracing::subscriber::set_global_default(logs.clone())
                .expect("no other test installs a subscriber");
            logs
        })
        .clone();
    let closed = free_port();

    // Debug of configs with credentials in the URL (one or several) and in options.
    let configs = [
        Config::new(format!("nats://orders:s3cret-pass@127.0.0.1:{closed}")),
        Config::new(format!("nats://s3cret-token@127.0.0.1:{closed}")),
        Config::new(format!(
            "nats://a:s3cret-pass@127.0.0.1:{closed},nats://s3cret-token@127.0.0.1:{closed}"
        )),
        Config::new(format!("nats://127.0.0.1:{closed}"))
            .user_and_password("orders", "s3cret-pass"),
        Config::new(format!("nats://127.0.0.1:{closed}")).token("s3cret-token"),
    ];
    for config in &configs {
        let shown = format!("{config:?} {}", config.redacted_url());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains(&format!("127.0.0.1:{closed}")), "{shown}");
    }
    assert_eq!(
        configs[0].redacted_url(),
        format!("nats://orders:***@127.0.0.1:{closed}")
    );

    // Connecting to a closed port: transient, naming the server, not the secret.
    for config in &configs {
        let err = Connection::connect(config)
            .await
            .expect_err("nothing listens on the port");
        assert_unreachable_and_masked(&err, closed, "s3cret");
    }

    // A successful connect logs the URL: masked.
    let server = own_nats(&["--user", "orders", "--pass", "s3cret-pass"]).await;
    let config = Config::new(format!("nats://orders:s3cret-pass@{}", server.address()));
    let connection = Connection::connect(&config).await.unwrap();
    assert_round_trip(&connection).await;
    assert!(!format!("{connection:?}").contains("s3cret"));
    drop(connection);
    drop(server);

    let logged = logs.text();
    assert!(logged.contains("connected"), "nothing was logged: {logged}");
    assert!(!logged.contains("s3cret"), "a secret was logged: {logged}");
}

#[tokio::test]
async fn config_from_env_reads_the_url_variable_and_connects() {
    let _server = SERVER.read().await;
    let expected = harness::required_env(Config::URL_ENV);
    let config = Config::from_env().unwrap();
    assert_eq!(config.url(), expected);
    assert_round_trip(&connect_with(config).await).await;
}

#[tokio::test]
async fn an_unreadable_credentials_file_is_permanent_and_named() {
    let path = std::env::temp_dir()
        .join(unique("missing"))
        .join("user.creds");
    let config = Config::new(url()).credentials_file(&path);
    let err = Connection::connect(&config)
        .await
        .expect_err("the credentials file does not exist");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Connect);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Retrying the first connect (`Config::connect_retry`).

use tower_mq::ConnectRetry;

#[tokio::test]
async fn connect_retry_waits_for_a_server_that_starts_later_then_publishes() {
    let port = free_port();
    let config = Config::new(format!("nats://127.0.0.1:{port}"))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .connect_retry(ConnectRetry::Within(Duration::from_secs(30)));
    let (connection, _server) = connect_retry::connects_once_there(
        async move { Connection::connect(&config).await },
        own_nats_on(port, &[]),
        WAIT,
    )
    .await;
    assert!(connection.is_connected());
    assert_round_trip(&connection).await;
}

#[tokio::test]
async fn without_connect_retry_an_absent_server_fails_at_once_and_with_it_within_the_limit() {
    let config = Config::new(format!("nats://127.0.0.1:{}", free_port()))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100));
    connect_retry::assert_fails_at_once_unless_retried_within_a_limit(
        config,
        |config| async move { Connection::connect(&config).await },
        // It gives up once the next delay (at most 100 ms here) would pass the limit.
        Duration::from_millis(200),
    )
    .await;
}

#[tokio::test]
async fn connect_retry_does_not_retry_refused_credentials() {
    let server = own_nats(&["--user", "orders", "--pass", "r1ght-pass"]).await;
    let config = Config::new(format!("nats://orders:wr0ng-pass@{}", server.address()))
        .connect_retry(ConnectRetry::Forever);
    connect_retry::assert_refusal_not_retried(
        Connection::connect(&config),
        WAIT,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn reconnects_through_the_jittered_loop_to_its_own_server_restarted_on_the_same_port() {
    let (server, connection) = own_nats_and_connection().await;
    assert_round_trip(&connection).await;
    let _server = restart_on_the_same_port(server, &connection).await;
    assert_round_trip(&connection).await;
}

#[tokio::test]
async fn jetstream_counts_only_the_servers_deliveries_whatever_headers_claim() {
    let _server = SERVER.read().await;
    let connection = connect().await;
    let js = JetStream::new(&connection);
    let name = unique("foreign-count");
    let (stream, _) = streams(&js, &name).await;
    let config = ConsumerConfig::new("counted")
        .ack_wait(Duration::from_secs(30))
        .max_deliveries(3);
    js.declare_consumer(&stream, &config).await.unwrap();
    let subject = format!("{name}.jobs");
    raw_hpub(
        &subject,
        b"NATS/1.0\r\nx-tower-mq-deliveries: 9223372036854775807\r\n\
          x-delivery-count: 4294967295\r\nNats-Num-Delivered: 99\r\n\r\n",
        b"claims",
    )
    .await;
    let mut consumer = js.consumer(&stream, &config).await.unwrap();
    let first = next(&mut consumer, "the message").await;
    assert_eq!(text(&first), "claims");
    assert_eq!(first.delivery_count(), 1);
    first.nack(None).await.unwrap();
    let again = next(&mut consumer, "the redelivery").await;
    assert_eq!(again.delivery_count(), 2);
    again.ack().await.unwrap();
}
