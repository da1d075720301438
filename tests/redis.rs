//! Redis-specific behaviour, against a real Redis.
//!
//! The address comes from `TOWER_MQ_REDIS_URL` (default: the project harness,
//! `redis://127.0.0.1:16379`; run `scripts/brokers up redis`). The restart tests stop
//! and start it with `"$TOWER_MQ_BROKERS" stop|start|restart redis`.

#![cfg(feature = "redis")]

#[path = "support/connect_retry.rs"]
mod connect_retry;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/own_server.rs"]
mod own_server;
#[path = "support/waits.rs"]
mod waits;

use harness::redis::config;
use harness::unique;
use own_server::{assert_unreachable_and_masked, everything_shown, free_port, Log, OwnServer};
use waits::next_within;

use std::time::Duration;

use futures_util::StreamExt;
use tower::{Service, ServiceExt};
use tower_mq::redis::{
    Config, Framing, NackMode, PubSubConsumer, PubSubPublisher, StreamConsumer,
    StreamConsumerConfig, StreamPublisher, Subscription,
};
use tower_mq::{
    dead_letter, Delivery, ErrorKind, Guarantee, Message, Operation, Position, Receipt,
};

const WAIT: Duration = Duration::from_secs(15);

/// Tests share one Redis: the restart tests take this for writing, so that no other
/// test runs while it is down; every other test holds it for reading.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A raw connection for inspecting what the library wrote.
async fn raw(config: &Config) -> redis::aio::ConnectionManager {
    config.connect().await.expect("Redis answered a moment ago")
}

async fn next<S>(consumer: &mut S) -> Delivery
where
    S: futures_util::Stream<Item = Result<Delivery, tower_mq::Error>> + Unpin,
{
    next_within(consumer, "a delivery", WAIT).await
}

async fn publish<S>(publisher: &mut S, message: Message) -> Receipt
where
    S: Service<Message, Response = Receipt, Error = tower_mq::Error>,
{
    publisher
        .ready()
        .await
        .expect("publisher ready")
        .call(message)
        .await
        .expect("publish")
}

fn fast_claims(stream: &str, group: &str) -> StreamConsumerConfig {
    StreamConsumerConfig::new(stream, group)
        .claim_idle(Duration::from_millis(300))
        .claim_interval(Duration::from_millis(100))
        .block(Duration::from_millis(200))
}

#[tokio::test]
async fn stream_round_trip_of_every_field_in_the_documented_layout() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("round-trip");
    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&stream, "g"))
        .await
        .unwrap();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    let message = Message::new(&stream, vec![0u8, 159, 146, 150, 255])
        .with_key("user-42")
        .with_header("tenant", "acme")
        .with_header("origin", "eu")
        .with_timestamp(std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        .with_message_type("order.created")
        .with_app_id("shop")
        .with_user_id("alice")
        .with_ttl(Duration::from_secs(600))
        .with_persistent(false)
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_reply_to("replies")
        .with_content_type("application/octet-stream")
        .with_content_encoding("identity");
    let receipt = publish(&mut publisher, message.clone()).await;
    let Some(Position::Id(id)) = receipt.position() else {
        panic!("not a stream receipt: {receipt:?}");
    };
    assert_eq!(receipt.destination(), stream);
    assert!(receipt.is_confirmed());

    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message(), &message);
    assert_eq!(delivery.delivery_count(), 1);
    delivery.ack().await.unwrap();

    // The entry's fields are the documented layout.
    let entry: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(id)
        .arg(id)
        .query_async(&mut raw(&config).await)
        .await
        .unwrap();
    let fields = &entry.ids[0];
    let text = |name: &str| fields.get::<String>(name);
    assert_eq!(
        fields.get::<Vec<u8>>("payload"),
        Some(vec![0u8, 159, 146, 150, 255])
    );
    assert_eq!(text("tenant").as_deref(), Some("acme"));
    assert_eq!(text("origin").as_deref(), Some("eu"));
    assert_eq!(text("key").as_deref(), Some("user-42"));
    assert_eq!(text("message-id").as_deref(), Some("m-1"));
    assert_eq!(text("correlation-id").as_deref(), Some("c-1"));
    assert_eq!(text("reply-to").as_deref(), Some("replies"));
    assert_eq!(
        text("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(text("content-encoding").as_deref(), Some("identity"));
    assert_eq!(text("message-type").as_deref(), Some("order.created"));
    assert_eq!(text("app-id").as_deref(), Some("shop"));
    assert_eq!(text("user-id").as_deref(), Some("alice"));
    assert_eq!(text("timestamp").as_deref(), Some("1700000000123"));
    assert_eq!(text("tmq-persistent").as_deref(), Some("false"));
    assert_eq!(text("tmq-ttl-ms").as_deref(), Some("600000"));
    assert!(fields.contains_key("tmq-expires-at-ms"));
    assert!(!fields.contains_key("tmq-priority"));
    assert_eq!(fields.map.len(), 16);

    // Nothing is left pending after the ack.
    assert_eq!(
        pending_in_group(&mut raw(&config).await, &stream, "g").await,
        0
    );
}

#[tokio::test]
async fn acks_do_not_wait_behind_a_blocking_read() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("blocking");
    let settings = StreamConsumerConfig::new(&stream, "g")
        .block(Duration::from_secs(10))
        .claim_interval(Duration::from_secs(60));
    let mut consumer = StreamConsumer::subscribe(&config, settings).await.unwrap();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&stream, "one")).await;
    let delivery = next(&mut consumer).await;
    // The consumer now blocks for up to 10 s waiting for a second entry.
    let reading = tokio::spawn(async move { consumer.next().await.map(|d| d.map(|_| ())) });
    let mut conn = raw(&config).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        if clients
            .lines()
            .any(|line| line.contains("cmd=xreadgroup") && line.contains("flags=b"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the read never blocked"
        );
        tokio::task::yield_now().await;
    }
    tokio::time::timeout(Duration::from_secs(2), delivery.ack())
        .await
        .expect("the ack waited behind the blocking read")
        .unwrap();
    publish(&mut publisher, Message::new(&stream, "two")).await;
    let second = tokio::time::timeout(WAIT, reading).await.unwrap().unwrap();
    assert!(matches!(second, Some(Ok(()))));
}

/// How many entries of `stream` are pending in group `group`.
async fn pending_in_group(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    group: &str,
) -> usize {
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query_async(conn)
        .await
        .unwrap();
    pending.count()
}

/// Reads up to `count` new entries of `stream` as `name` of `group`, with a plain
/// client, leaving them pending under that name.
async fn read_new_as(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    group: &str,
    name: &str,
    count: usize,
) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(name)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query_async(conn)
        .await
        .unwrap_or_else(|e| panic!("XREADGROUP as {name} on {stream}: {e}"));
}

/// How many entries of `stream` are pending on the consumer `name` of group `group`.
async fn pending_on(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
    group: &str,
    name: &str,
) -> usize {
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1000)
        .arg(name)
        .query_async(conn)
        .await
        .unwrap();
    pending.len()
}

#[tokio::test]
async fn the_next_read_goes_out_once_half_a_batch_is_left_and_no_sooner() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("read-ahead");
    let settings = StreamConsumerConfig::new(&stream, "g")
        .batch_size(4)
        .claim_interval(Duration::from_secs(60));
    let mut consumer = StreamConsumer::subscribe(&config, settings).await.unwrap();
    let name = consumer.name().to_owned();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    for i in 0..20 {
        publish(&mut publisher, Message::new(&stream, i.to_string())).await;
    }
    let mut conn = raw(&config).await;

    // One read of 4; with 3 left to hand out, no second read yet.
    let mut held = vec![next(&mut consumer).await];
    assert_eq!(pending_on(&mut conn, &stream, "g", &name).await, 4);

    // With 2 (half a batch) left, the next read goes out without another poll.
    held.push(next(&mut consumer).await);
    let deadline = tokio::time::Instant::now() + WAIT;
    while pending_on(&mut conn, &stream, "g", &name).await < 8 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the next read did not go out while the batch was handed out"
        );
        tokio::task::yield_now().await;
    }

    // Never more than a batch and a half read and not handed out; all in order.
    while held.len() < 20 {
        held.push(next(&mut consumer).await);
        let pending = pending_on(&mut conn, &stream, "g", &name).await;
        assert!(
            pending <= held.len() + 6,
            "{pending} pending with {} handed out",
            held.len()
        );
    }
    let payloads: Vec<String> = held
        .iter()
        .map(|d| String::from_utf8_lossy(d.message().payload()).into_owned())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    for delivery in &held {
        delivery.ack().await.unwrap();
    }
    assert_eq!(pending_on(&mut conn, &stream, "g", &name).await, 0);
}

#[tokio::test]
async fn priority_is_refused_unless_ignored_and_then_carried() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("priority");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    let err = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&stream, "x").with_priority(7))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.broker(), "redis");
    assert_eq!(err.operation(), Operation::Publish);
    assert_eq!(err.destination(), Some(stream.as_str()));

    let mut lenient = publisher.clone().ignore_unsupported(true);
    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&stream, "g"))
        .await
        .unwrap();
    publish(&mut lenient, Message::new(&stream, "x").with_priority(7)).await;
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().priority(), Some(7));
}

#[tokio::test]
async fn max_len_trims_exactly_or_approximately() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let exact = unique("trim-exact");
    let approximate = unique("trim-approx");
    let base = StreamPublisher::connect(&config).await.unwrap();
    let mut exact_publisher = base.clone().exact_max_len(10);
    let mut approximate_publisher = base.max_len(10);
    for i in 0..500 {
        publish(&mut exact_publisher, Message::new(&exact, i.to_string())).await;
        publish(
            &mut approximate_publisher,
            Message::new(&approximate, i.to_string()),
        )
        .await;
    }
    let mut conn = raw(&config).await;
    let exact_len: usize = redis::cmd("XLEN")
        .arg(&exact)
        .query_async(&mut conn)
        .await
        .unwrap();
    let approximate_len: usize = redis::cmd("XLEN")
        .arg(&approximate)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exact_len, 10);
    assert!(
        (10..500).contains(&approximate_len),
        "approximate trimming kept {approximate_len} of 500"
    );
}

#[tokio::test]
async fn batch_publisher_pipelines_and_answers_each_message() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("batch");
    let not_a_stream = unique("string-key");
    let mut conn = raw(&config).await;
    let () = redis::cmd("SET")
        .arg(&not_a_stream)
        .arg("x")
        .arg("EX")
        .arg(600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut batch = StreamPublisher::connect(&config).await.unwrap().batch();
    let results = batch
        .ready()
        .await
        .unwrap()
        .call(vec![
            Message::new(&stream, "a"),
            Message::new(&stream, "refused").with_priority(1),
            Message::new(&not_a_stream, "wrong type"),
            Message::new(&stream, "b"),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 4);
    assert!(matches!(&results[0], Ok(r) if r.destination() == stream));
    let refused = results[1].as_ref().unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Permanent);
    let wrong = results[2].as_ref().unwrap_err();
    assert_eq!(wrong.kind(), ErrorKind::Permanent, "{wrong}");
    assert_eq!(wrong.destination(), Some(not_a_stream.as_str()));
    assert!(results[3].is_ok());
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 2);
    // Ids are in publication order.
    let (Some(Position::Id(first)), Some(Position::Id(last))) = (
        results[0].as_ref().ok().and_then(Receipt::position),
        results[3].as_ref().ok().and_then(Receipt::position),
    ) else {
        panic!("receipts: {results:?}");
    };
    let millis = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse().unwrap(), seq.parse().unwrap())
    };
    assert!(millis(first) < millis(last));
}

#[tokio::test]
async fn xautoclaim_recovers_a_dead_consumers_entries_with_their_delivery_counts() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("autoclaim");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    let mut dying = StreamConsumer::subscribe(
        &config,
        fast_claims(&stream, "g")
            .consumer_name("dying")
            .batch_size(3),
    )
    .await
    .unwrap();
    for i in 0..3 {
        publish(&mut publisher, Message::new(&stream, format!("m{i}"))).await;
    }
    for i in 0..3 {
        assert_eq!(
            next(&mut dying).await.message().payload(),
            format!("m{i}").as_bytes()
        );
    }
    drop(dying);
    let mut conn = raw(&config).await;
    let owned: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(owned.ids.len(), 3);
    assert!(owned.ids.iter().all(|p| p.consumer == "dying"));

    let mut heir = StreamConsumer::subscribe(&config, fast_claims(&stream, "g"))
        .await
        .unwrap();
    assert_ne!(heir.name(), "dying");
    for i in 0..3 {
        let delivery = next(&mut heir).await;
        assert_eq!(delivery.message().payload(), format!("m{i}").as_bytes());
        assert_eq!(delivery.delivery_count(), 2);
        assert!(delivery.is_redelivery());
        delivery.ack().await.unwrap();
    }
    assert_eq!(pending_in_group(&mut conn, &stream, "g").await, 0);
}

/// `serve`'s `max_deliveries` owns the attempt limit: set above the Redis consumer's
/// old limit of 5 (and below its backstop, `streams::DEFAULT_MAX_DELIVERIES`), it decides when the message is
/// dead-lettered, to `<stream>.dlq` with the shared headers.
#[tokio::test]
async fn serve_max_deliveries_decides_not_the_consumer_backstop() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("serve-owns-limit");
    let settings = fast_claims(&stream, "g");
    let consumer = StreamConsumer::subscribe(&config, settings).await.unwrap();
    let mut dead = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(dead_letter::destination_for(&stream), "audit"),
    )
    .await
    .unwrap();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&stream, "flaky")).await;

    let handler = tower::service_fn(|_: Delivery| async {
        Err::<(), tower_mq::BoxError>(tower_mq::Transient::new("db busy").into())
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(std::future::IntoFuture::into_future(
        tower_mq::serve(consumer, handler)
            .max_deliveries(7)
            .requeue_delay(|_| Duration::ZERO)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            }),
    ));
    let letter = tokio::time::timeout(Duration::from_secs(60), dead.next())
        .await
        .expect("dead-lettered within a minute")
        .expect("the dead-letter consumer is open")
        .expect("no error");
    let headers = letter.message().headers();
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("7"));
    let reason = headers.get_str(dead_letter::REASON).unwrap_or_default();
    assert!(reason.starts_with("failed 7 times"), "{reason}");
    assert_eq!(
        headers.get_str(dead_letter::ORIGINAL_DESTINATION),
        Some(stream.as_str())
    );
    letter.ack().await.unwrap();
    let _ = stop.send(());
    let summary = served.await.expect("join").expect("served");
    assert_eq!(summary.rejected, 1);
    assert_eq!(summary.nacked, 6);
}

#[tokio::test]
async fn dead_letter_stream_after_max_deliveries_with_reason_headers() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("max-deliveries");
    let settings = fast_claims(&stream, "g").max_deliveries(3);
    let dead_letter_stream = tower_mq::dead_letter::destination_for(settings.stream());
    assert_eq!(dead_letter_stream, format!("{stream}.dlq"));
    let mut consumer = StreamConsumer::subscribe(&config, settings).await.unwrap();
    let mut dead = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(&dead_letter_stream, "audit"),
    )
    .await
    .unwrap();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(
        &mut publisher,
        Message::new(&stream, "poison").with_header("tenant", "acme"),
    )
    .await;
    for expected in 1..=3 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.delivery_count(), expected);
        delivery.nack(None).await.unwrap();
    }
    // The consumer's next claim finds the entry over its limit: it dead-letters it
    // instead of delivering it a fourth time.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), consumer.next())
            .await
            .is_err(),
        "delivered a fourth time"
    );
    let letter = next(&mut dead).await;
    let headers = letter.message().headers();
    assert_eq!(letter.message().payload().as_ref(), b"poison");
    assert_eq!(letter.message().destination(), dead_letter_stream);
    assert_eq!(headers.get_str("tenant"), Some("acme"));
    assert_eq!(
        headers.get_str(dead_letter::REASON),
        Some("max deliveries exceeded")
    );
    assert_eq!(
        headers.get_str(dead_letter::ORIGINAL_DESTINATION),
        Some(stream.as_str())
    );
    assert_eq!(headers.get_str(dead_letter::CONSUMER), Some("g"));
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("3"));
    assert!(headers.get_str(dead_letter::ENTRY_ID).is_some());
    letter.ack().await.unwrap();

    // No longer pending.
    assert_eq!(
        pending_in_group(&mut raw(&config).await, &stream, "g").await,
        0
    );
}

#[tokio::test]
async fn nack_with_a_delay_waits_and_readd_mode_appends_a_copy() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();

    // Reclaim: the delay is honoured (bounded by the claim idle time).
    let stream = unique("nack-delay");
    let mut consumer = StreamConsumer::subscribe(
        &config,
        fast_claims(&stream, "g").claim_idle(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    publish(&mut publisher, Message::new(&stream, "later")).await;
    let first = next(&mut consumer).await;
    let nacked_at = tokio::time::Instant::now();
    first.nack(Some(Duration::from_millis(800))).await.unwrap();
    let again = next(&mut consumer).await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
        "redelivered after {waited:?}"
    );
    assert_eq!(again.delivery_count(), 2);
    again.ack().await.unwrap();

    // Readd: a copy at the end of the stream, the original acknowledged.
    let stream = unique("nack-readd");
    let mut consumer = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(&stream, "g").nack_mode(NackMode::Readd),
    )
    .await
    .unwrap();
    publish(&mut publisher, Message::new(&stream, "first")).await;
    publish(&mut publisher, Message::new(&stream, "second")).await;
    let first = next(&mut consumer).await;
    first.nack(None).await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(second.message().payload().as_ref(), b"second");
    second.ack().await.unwrap();
    let copy = next(&mut consumer).await;
    assert_eq!(copy.message().payload().as_ref(), b"first");
    assert_eq!(copy.delivery_count(), 2);
    copy.ack().await.unwrap();
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw(&config).await)
        .await
        .unwrap();
    assert_eq!(len, 3);
}

#[tokio::test]
async fn pubsub_raw_and_enveloped_messages_and_patterns() {
    let _shared = BROKER.read().await;
    let config = config().await.pubsub_framing(Framing::Envelope);
    let prefix = unique("prices");
    let channel = format!("{prefix}.eur");
    let mut by_name = PubSubConsumer::subscribe(&config, [Subscription::channel(&channel)])
        .await
        .unwrap();
    let mut by_pattern =
        PubSubConsumer::subscribe(&config, [Subscription::pattern(format!("{prefix}.*"))])
            .await
            .unwrap();
    let mut publisher = PubSubPublisher::connect(&config).await.unwrap();
    let receipt = publish(&mut publisher, Message::new(&channel, "1.08")).await;
    assert_eq!(
        receipt,
        Receipt::new("redis", channel.clone(), Guarantee::Forwarded).with_receivers(2)
    );
    assert!(!receipt.is_confirmed());
    let rich = Message::new(&channel, "1.09")
        .with_header("source", "ecb")
        .with_correlation_id("c-9")
        .with_ttl(Duration::from_secs(60));
    publish(&mut publisher, rich.clone()).await;
    for consumer in [&mut by_name, &mut by_pattern] {
        let plain = next(consumer).await;
        assert_eq!(plain.message(), &Message::new(&channel, "1.08"));
        assert!(!plain.acker().is_tracked());
        let enveloped = next(consumer).await;
        assert_eq!(enveloped.message(), &rich);
    }
    // Somebody else's raw message is a plain payload.
    let receivers: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("from redis-cli")
        .query_async(&mut raw(&config).await)
        .await
        .unwrap();
    assert_eq!(receivers, 2);
    assert_eq!(
        next(&mut by_name).await.message().payload().as_ref(),
        b"from redis-cli"
    );

    let err = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&channel, "x").with_priority(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent);

    // A large payload crosses intact (under the default 8 MiB soft output limit for
    // Pub/Sub clients, so Redis keeps the subscriber).
    let large: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    publish(&mut publisher, Message::new(&channel, large.clone())).await;
    assert_eq!(
        next(&mut by_name).await.message().payload().as_ref(),
        &large[..]
    );

    let none = PubSubConsumer::subscribe(&config, []).await.unwrap_err();
    assert_eq!(none.kind(), ErrorKind::Permanent);
}

/// Publishes probes until one reaches `consumer`: a resubscription has no signal a
/// publisher can see, so polling (bounded by the wait) is the only way to observe it.
async fn until_received(
    publisher: &mut PubSubPublisher,
    consumer: &mut PubSubConsumer,
    channel: &str,
) -> (Delivery, usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut errors = 0;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no probe arrived after the restart"
        );
        if let Ok(ready) = publisher.ready().await {
            let _ = ready.call(Message::new(channel, "probe")).await;
        }
        match tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
            Ok(Some(Ok(delivery))) => return (delivery, errors),
            Ok(Some(Err(err))) => {
                assert!(err.is_transient(), "{err}");
                errors += 1;
            }
            Ok(None) => panic!("the subscriber ended"),
            Err(_) => {}
        }
    }
}

#[tokio::test]
async fn pubsub_resubscribes_after_a_restart() {
    let _exclusive = BROKER.write().await;
    let config = config().await;
    let channel = unique("resubscribe");
    let mut consumer = PubSubConsumer::subscribe(&config, [Subscription::channel(&channel)])
        .await
        .unwrap();
    let mut publisher = PubSubPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&channel, "before")).await;
    assert_eq!(
        next(&mut consumer).await.message().payload().as_ref(),
        b"before"
    );

    harness::run("restart", "redis").await;

    let (delivery, errors) = until_received(&mut publisher, &mut consumer, &channel).await;
    assert_eq!(delivery.message().payload().as_ref(), b"probe");
    assert!(errors >= 1, "the lost connection was not reported");
    // Settled into normal delivery again.
    publish(&mut publisher, Message::new(&channel, "after")).await;
    loop {
        let delivery = next(&mut consumer).await;
        if delivery.message().payload().as_ref() == b"after" {
            break;
        }
    }
}

#[tokio::test]
async fn in_flight_publish_fails_as_transient_on_restart_and_readiness_waits() {
    let _exclusive = BROKER.write().await;
    let config = config().await.response_timeout(Duration::from_secs(20));
    let stream = unique("in-flight");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&stream, "warm-up")).await;

    // Hold writes so the next XADD is in flight when Redis goes down.
    let mut admin = raw(&config).await;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("WRITE")
        .query_async(&mut admin)
        .await
        .unwrap();
    let call = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&stream, "in flight"));
    let call = tokio::spawn(call);
    // Wait (bounded) until the server holds the XADD.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut admin)
            .await
            .unwrap();
        if clients.lines().any(|line| line.contains("cmd=xadd")) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the XADD never reached the server"
        );
        tokio::task::yield_now().await;
    }

    harness::run("stop", "redis").await;
    let err = tokio::time::timeout(WAIT, call)
        .await
        .expect("the in-flight publish did not fail")
        .expect("task")
        .expect_err("Redis stopped before answering, so the publish cannot have succeeded");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.broker(), "redis");
    assert_eq!(err.operation(), Operation::Publish);
    assert_eq!(err.destination(), Some(stream.as_str()));

    // Down: readiness waits instead of failing.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), publisher.ready())
            .await
            .is_err(),
        "the publisher was ready while Redis was down"
    );

    harness::run("start", "redis").await;
    let receipt = tokio::time::timeout(
        WAIT,
        publish(&mut publisher, Message::new(&stream, "after")),
    )
    .await
    .expect("the publisher did not recover");
    assert!(matches!(receipt.position(), Some(Position::Id(_))));
}

#[tokio::test]
async fn a_hung_redis_times_out_as_transient_and_recovers() {
    let _exclusive = BROKER.write().await;
    let config = config().await.response_timeout(Duration::from_millis(300));
    let stream = unique("hung");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&stream, "before")).await;

    harness::run("pause", "redis").await;
    let call = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&stream, "while hung"));
    let result = tokio::time::timeout(WAIT, call).await;
    // Resume before asserting anything, so a failure leaves Redis running.
    harness::run("resume", "redis").await;
    let result = result.expect("the response timeout did not fire");
    let err = result.expect_err("a frozen Redis cannot have answered");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.operation(), Operation::Publish);
    assert_eq!(err.destination(), Some(stream.as_str()));

    let receipt = tokio::time::timeout(
        WAIT,
        publish(&mut publisher, Message::new(&stream, "after")),
    )
    .await
    .expect("the publisher did not recover");
    assert!(matches!(receipt.position(), Some(Position::Id(_))));
}

// ---------------------------------------------------------------------------
// Credentials: a Redis of the test's own with a password, and no secret in what is
// printed.

/// A `redis-server` of the test's own with `args`, keeping nothing on disk.
async fn own_redis(args: &[&str]) -> OwnServer {
    own_redis_on(free_port(), args).await
}

/// A `redis-server` of the test's own on `port` (which a connect may already be waiting
/// for), saving nothing, with `args` added.
async fn own_redis_on(port: u16, args: &[&str]) -> OwnServer {
    let args = ["--bind", "127.0.0.1", "--port", &port.to_string()]
        .iter()
        .chain(&["--save", "", "--appendonly", "no"])
        .chain(args)
        .map(|a| a.to_string())
        .collect();
    OwnServer::start(
        "redis-server",
        "redis-server",
        port,
        args,
        Log::Stdout,
        "Ready to accept connections",
        WAIT,
    )
    .await
}

fn quick(url: String) -> Config {
    Config::new(url)
        .connection_timeout(Duration::from_millis(500))
        .reconnect_retries(1)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
}

#[tokio::test]
async fn the_password_never_appears_in_debug_or_connect_errors() {
    let closed = free_port();
    let config = quick(format!("redis://app:s3cret-pass@127.0.0.1:{closed}/2"));
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{closed}/2")), "{shown}");
    assert_eq!(
        config.redacted_url(),
        format!("redis://app:***@127.0.0.1:{closed}/2")
    );

    // Nothing listens: transient, naming the server, not the password.
    for config in [
        config,
        quick(format!("redis://:s3cret-pass@127.0.0.1:{closed}")),
    ] {
        let err = config
            .connect()
            .await
            .expect_err("nothing listens on the port");
        assert_unreachable_and_masked(&err, closed, "s3cret");
        assert_eq!(err.broker(), "redis");
        let err = StreamPublisher::connect(&config)
            .await
            .expect_err("nothing listens on the port");
        assert!(!everything_shown(&err).contains("s3cret"));
    }

    // A URL that does not parse: permanent, and still masked.
    let err = Config::new("redis://:s3cret-pass@127.0.0.1:notaport")
        .connect()
        .await
        .expect_err("not a URL");
    let shown = everything_shown(&err);
    assert_eq!(err.kind(), ErrorKind::Permanent, "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_masked_and_the_right_one_works() {
    let server = own_redis(&["--requirepass", "r1ght-pass"]).await;
    let port = server.port();

    for wrong in [
        format!("redis://:wr0ng-pass@127.0.0.1:{port}"),
        format!("redis://default:wr0ng-pass@127.0.0.1:{port}"),
        format!("redis://nobody:wr0ng-pass@127.0.0.1:{port}"),
    ] {
        let err = quick(wrong.clone())
            .connect()
            .await
            .expect_err("a wrong password must be refused");
        let shown = everything_shown(&err);
        assert_eq!(err.kind(), ErrorKind::Permanent, "{wrong}: {shown}");
        assert_eq!(err.operation(), Operation::Connect);
        assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
        assert!(!shown.contains("wr0ng"), "{shown}");
        let err = StreamPublisher::connect(&quick(wrong))
            .await
            .expect_err("a wrong password must be refused");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    }

    // Without a password, the first command is refused (NOAUTH): permanent too.
    let anonymous = quick(format!("redis://127.0.0.1:{port}"));
    let refused = match StreamPublisher::connect(&anonymous).await {
        Err(err) => err,
        Ok(mut publisher) => publisher
            .ready()
            .await
            .unwrap()
            .call(Message::new(unique("noauth"), "x"))
            .await
            .expect_err("an anonymous publish must be refused"),
    };
    assert_eq!(refused.kind(), ErrorKind::Permanent, "{refused}");

    let config = quick(format!("redis://:r1ght-pass@127.0.0.1:{port}"));
    let stream = unique("auth");
    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&stream, "g"))
        .await
        .unwrap();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    let receipt = publish(&mut publisher, Message::new(&stream, "authenticated")).await;
    assert!(matches!(receipt.position(), Some(Position::Id(_))));
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().payload().as_ref(), b"authenticated");
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn config_from_env_reads_the_url_variable_and_connects() {
    let _shared = BROKER.read().await;
    let expected = harness::required_env(Config::URL_ENV);
    let config = Config::from_env().unwrap();
    assert_eq!(config.url(), expected);
    config.connect().await.unwrap();
}

// ---------------------------------------------------------------------------
// Retrying the first connect (`Config::connect_retry`).

use tower_mq::ConnectRetry;

#[tokio::test]
async fn connect_retry_waits_for_a_server_that_starts_later_then_publishes() {
    let port = free_port();
    let config = quick(format!("redis://127.0.0.1:{port}"))
        .connect_retry(ConnectRetry::Within(Duration::from_secs(30)));
    let (mut publisher, _server) = connect_retry::connects_once_there(
        {
            let config = config.clone();
            async move { StreamPublisher::connect(&config).await }
        },
        own_redis_on(port, &[]),
        WAIT,
    )
    .await;
    let stream = unique("late");
    let receipt = publish(&mut publisher, Message::new(&stream, "after the wait")).await;
    assert!(
        matches!(receipt.position(), Some(Position::Id(_))),
        "{receipt:?}"
    );
    // A consumer's connect goes through the same option; its group reads the stream
    // from the start.
    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&stream, "g"))
        .await
        .unwrap();
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().payload().as_ref(), b"after the wait");
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn without_connect_retry_an_absent_server_fails_at_once_and_with_it_within_the_limit() {
    let config = quick(format!("redis://127.0.0.1:{}", free_port()));
    connect_retry::assert_fails_at_once_unless_retried_within_a_limit(
        config,
        |config| async move { StreamPublisher::connect(&config).await },
        // It gives up once the next delay (at most 20 ms here) would pass the limit.
        Duration::from_millis(100),
    )
    .await;
}

#[tokio::test]
async fn connect_retry_does_not_retry_a_wrong_password() {
    let server = own_redis(&["--requirepass", "r1ght-pass"]).await;
    let config = quick(format!("redis://:wr0ng-pass@127.0.0.1:{}", server.port()))
        .connect_retry(ConnectRetry::Forever);
    connect_retry::assert_refusal_not_retried(
        StreamPublisher::connect(&config),
        WAIT,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test]
async fn a_publisher_is_ready_again_through_the_jittered_probe_once_its_own_server_restarted() {
    let port = free_port();
    let server = own_redis_on(port, &[]).await;
    let config = quick(format!("redis://127.0.0.1:{port}"));
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    let stream = unique("probe");
    publish(&mut publisher, Message::new(&stream, "before")).await;
    drop(server);
    // The publish that finds the server gone fails (transient) and starts the probe.
    let err = publisher
        .ready()
        .await
        .expect("ready while the connection is believed up")
        .call(Message::new(&stream, "lost"))
        .await
        .expect_err("the server is gone");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    let _server = own_redis_on(port, &[]).await;
    // Readiness waits for the probe to find the server back.
    let receipt = tokio::time::timeout(
        WAIT,
        publish(&mut publisher, Message::new(&stream, "after")),
    )
    .await
    .expect("the publisher is ready again once the server is back");
    assert!(
        matches!(receipt.position(), Some(Position::Id(_))),
        "{receipt:?}"
    );
}

#[tokio::test]
async fn connect_retry_lets_a_pubsub_consumer_wait_for_a_server_that_starts_later() {
    let port = free_port();
    let config = quick(format!("redis://127.0.0.1:{port}"))
        .connect_retry(ConnectRetry::Within(Duration::from_secs(30)));
    let channel = unique("late-pubsub");
    let (mut consumer, _server) = connect_retry::connects_once_there(
        {
            let (config, channel) = (config.clone(), channel.clone());
            async move { PubSubConsumer::subscribe(&config, [Subscription::channel(channel)]).await }
        },
        own_redis_on(port, &[]),
        WAIT,
    )
    .await;
    let mut publisher = PubSubPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&channel, "after the wait")).await;
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().payload().as_ref(), b"after the wait");
}

/// The names of `group`'s consumers and how many entries each holds pending.
async fn group_consumers(config: &Config, stream: &str, group: &str) -> Vec<(String, u64)> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query_async(&mut raw(config).await)
        .await
        .expect("XINFO CONSUMERS");
    reply
        .consumers
        .into_iter()
        .map(|c| (c.name, c.pending as u64))
        .collect()
}

#[tokio::test]
async fn closed_consumers_leave_no_names_in_their_group_but_keep_pending_entries() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("forget-consumers");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    const CYCLES: usize = 11;
    for n in 0..CYCLES {
        let mut consumer = StreamConsumer::subscribe(&config, fast_claims(&stream, "g"))
            .await
            .unwrap();
        publish(&mut publisher, Message::new(&stream, n.to_string())).await;
        let delivery = next(&mut consumer).await;
        assert_eq!(
            delivery.message().payload().as_ref(),
            n.to_string().as_bytes()
        );
        delivery.ack().await.unwrap();
        if n % 2 == 0 {
            consumer.close().await.expect("close");
        } else {
            // Dropping does the same in the background. Until that is over, the read
            // the consumer had sent is still open: an entry it brings would be handed
            // back under its name, which then stays in the group.
            let released = consumer.released();
            drop(consumer);
            tokio::time::timeout(WAIT, released)
                .await
                .expect("the hand-back of a dropped consumer did not end");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let consumers = group_consumers(&config, &stream, "g").await;
        if consumers.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {CYCLES} open/close cycles the group still lists {consumers:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A consumer that closes holding an unsettled entry keeps its name, and the entry.
    let mut holder = StreamConsumer::subscribe(&config, fast_claims(&stream, "g"))
        .await
        .unwrap();
    let name = holder.name().to_owned();
    publish(&mut publisher, Message::new(&stream, "held")).await;
    let held = next(&mut holder).await;
    holder.close().await.expect("close");
    assert_eq!(group_consumers(&config, &stream, "g").await, [(name, 1)]);
    drop(held);
    let mut rescuer = StreamConsumer::subscribe(&config, fast_claims(&stream, "g"))
        .await
        .unwrap();
    let again = next(&mut rescuer).await;
    assert_eq!(again.message().payload().as_ref(), b"held");
    assert_eq!(again.delivery_count(), 2);
    again.ack().await.unwrap();
}

/// Names that a consumer left behind are swept by the claim scan of a live consumer of
/// the group once they hold nothing pending and have been idle longer than its claim
/// idle time; a name holding an entry is kept until the entry is claimed, no entry is
/// ever lost with a name, and the sweeping consumer never deletes its own name.
///
/// Redis measures idle times in real time, so the test waits the (short) claim idle
/// time for real.
#[tokio::test]
async fn idle_names_with_nothing_pending_are_swept_and_names_holding_entries_kept() {
    const CLAIM_IDLE: Duration = Duration::from_millis(500);
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("sweep-names");
    let mut conn = raw(&config).await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let created: u64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("g")
        .arg("ghost")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(created, 1);
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&stream, "held")).await;
    // The ghost's idle clock runs from here; the holder's, and its entry's, a claim
    // idle time later: the ghost is due for the sweep that long before the entry is
    // due for a claim.
    tokio::time::sleep(CLAIM_IDLE).await;
    read_new_as(&mut conn, &stream, "g", "holder", 1).await;
    assert_eq!(pending_on(&mut conn, &stream, "g", "holder").await, 1);

    let mut live = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(&stream, "g")
            .claim_idle(CLAIM_IDLE)
            .claim_interval(Duration::from_millis(50))
            .block(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let name = live.name().to_owned();
    let (deliveries, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(delivery) = live.next().await {
            if deliveries.send(delivery).is_err() {
                break;
            }
        }
    });
    let names = async |conn: &Config| -> Vec<(String, u64)> {
        let mut consumers = group_consumers(conn, &stream, "g").await;
        consumers.sort();
        consumers
    };

    // The ghost goes; the holder stays, with its entry, which is never lost.
    let mut consumers = Vec::new();
    waits::until("the idle ghost swept", WAIT, async || {
        assert_eq!(pending_in_group(&mut conn, &stream, "g").await, 1);
        consumers = names(&config).await;
        !consumers.iter().any(|(n, _)| n == "ghost")
    })
    .await;
    assert!(
        consumers.contains(&("holder".to_owned(), 1)),
        "the holder went with its entry pending: {consumers:?}"
    );

    // Once its entry is claimed, the holder goes too; the claimer stays.
    let again = tokio::time::timeout(WAIT, delivered.recv())
        .await
        .expect("the held entry claimed")
        .expect("the consumer went on")
        .expect("a delivery");
    assert_eq!(again.message().payload().as_ref(), b"held");
    assert_eq!(again.delivery_count(), 2);
    again.ack().await.unwrap();
    assert_eq!(pending_in_group(&mut conn, &stream, "g").await, 0);
    waits::until(
        "the holder swept once its entry was claimed",
        WAIT,
        async || {
            consumers = names(&config).await;
            assert!(
                consumers.iter().any(|(n, _)| *n == name),
                "the sweeping consumer deleted its own name: {consumers:?}"
            );
            !consumers.iter().any(|(n, _)| n == "holder")
        },
    )
    .await;

    // A name idle since after the live consumer last read or claimed is swept while
    // the live consumer's own name, idle at least as long (before Redis 7.2, whose
    // `idle` counts from the last read that brought something), stays.
    let _: u64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("g")
        .arg("ghost-2")
        .query_async(&mut conn)
        .await
        .unwrap();
    waits::until("the second ghost swept", WAIT, async || {
        consumers = names(&config).await;
        !consumers.iter().any(|(n, _)| n == "ghost-2")
    })
    .await;
    assert_eq!(consumers, [(name, 0)]);
    driver.abort();
}

/// How a consumer that read ahead goes away.
#[derive(Debug, Clone, Copy)]
enum Leaving {
    Closed,
    /// Dropped, its `released()` awaited.
    Dropped,
}

/// Ten entries; a consumer reading `batch` at a time takes and acks the first and
/// leaves; another consumer of the group, with a claim idle time of 30 s, gets the
/// other nine well within it, each as a first delivery and once.
async fn what_was_read_ahead_comes_back_at_once_and_uncounted(batch: usize, leaving: Leaving) {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("hand-back");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    for i in 0..10 {
        publish(&mut publisher, Message::new(&stream, i.to_string())).await;
    }
    let claim_idle = Duration::from_secs(30);
    let settings = || {
        StreamConsumerConfig::new(&stream, "g")
            .claim_idle(claim_idle)
            .claim_interval(Duration::from_millis(50))
    };
    let mut reader = StreamConsumer::subscribe(&config, settings().batch_size(batch))
        .await
        .unwrap();
    let first = next(&mut reader).await;
    assert_eq!(first.message().payload().as_ref(), b"0");
    first.ack().await.unwrap();
    let mut conn = raw(&config).await;
    let read_ahead = pending_on(&mut conn, &stream, "g", reader.name()).await;
    assert!(read_ahead > 0, "nothing was read ahead");
    match leaving {
        Leaving::Closed => reader.close().await.expect("close"),
        Leaving::Dropped => {
            let released = reader.released();
            drop(reader);
            tokio::time::timeout(WAIT, released)
                .await
                .expect("the hand-back of a dropped consumer did not end");
        }
    }

    let mut heir = StreamConsumer::subscribe(&config, settings())
        .await
        .unwrap();
    let bound = claim_idle / 3;
    let deadline = tokio::time::Instant::now() + bound;
    let mut payloads = Vec::new();
    while payloads.len() < 9 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let delivery = next_within(&mut heir, "an entry the first consumer read", left).await;
        let payload = String::from_utf8_lossy(delivery.message().payload()).into_owned();
        assert_eq!(
            delivery.delivery_count(),
            1,
            "entry {payload} was counted as a redelivery"
        );
        delivery.ack().await.unwrap();
        payloads.push(payload);
    }
    payloads.sort();
    let expected: Vec<String> = (1..10).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected, "each entry once, none lost");
    assert_eq!(pending_in_group(&mut conn, &stream, "g").await, 0);
}

#[tokio::test]
async fn a_closed_consumer_hands_back_what_it_read_ahead_due_at_once_and_uncounted() {
    what_was_read_ahead_comes_back_at_once_and_uncounted(16, Leaving::Closed).await;
}

#[tokio::test]
async fn a_dropped_consumer_hands_back_what_it_read_ahead_due_at_once_and_uncounted() {
    what_was_read_ahead_comes_back_at_once_and_uncounted(16, Leaving::Dropped).await;
}

/// With reads of 2, handing out the first sends the next read: closing sees it
/// through and hands back what it brought as well.
#[tokio::test]
async fn a_read_in_flight_when_the_consumer_closes_is_handed_back_too() {
    what_was_read_ahead_comes_back_at_once_and_uncounted(2, Leaving::Closed).await;
}

#[tokio::test]
async fn claimed_entries_handed_back_keep_the_delivery_count_they_were_claimed_with() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("hand-back-claimed");
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    StreamConsumer::declare_group(&config, &StreamConsumerConfig::new(&stream, "g"))
        .await
        .unwrap();
    for i in 0..3 {
        publish(&mut publisher, Message::new(&stream, i.to_string())).await;
    }
    // A consumer that read the three and died.
    let mut conn = raw(&config).await;
    read_new_as(&mut conn, &stream, "g", "dead", 3).await;

    let mut claimer = StreamConsumer::subscribe(&config, fast_claims(&stream, "g").batch_size(16))
        .await
        .unwrap();
    let first = next(&mut claimer).await;
    assert_eq!(first.delivery_count(), 2);
    first.ack().await.unwrap();
    assert_eq!(pending_on(&mut conn, &stream, "g", claimer.name()).await, 2);
    claimer.close().await.expect("close");

    let mut heir = StreamConsumer::subscribe(&config, fast_claims(&stream, "g"))
        .await
        .unwrap();
    for _ in 0..2 {
        let delivery = next(&mut heir).await;
        assert_eq!(
            delivery.delivery_count(),
            2,
            "the claim that did not hand it out was counted"
        );
        delivery.ack().await.unwrap();
    }
    assert_eq!(pending_in_group(&mut conn, &stream, "g").await, 0);
}

#[tokio::test]
async fn a_readd_nack_at_the_backstop_dead_letters_at_once() {
    let _shared = BROKER.read().await;
    let config = config().await;
    let stream = unique("readd-backstop");
    let settings = StreamConsumerConfig::new(&stream, "g")
        .nack_mode(NackMode::Readd)
        .max_deliveries(2);
    let dead_letter_stream = tower_mq::dead_letter::destination_for(settings.stream());
    let mut consumer = StreamConsumer::subscribe(&config, settings).await.unwrap();
    let mut publisher = StreamPublisher::connect(&config).await.unwrap();
    publish(&mut publisher, Message::new(&stream, "poison")).await;
    for expected in 1..=2 {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.delivery_count(), expected);
        delivery.nack(None).await.unwrap();
    }
    let mut dead = StreamConsumer::subscribe(
        &config,
        StreamConsumerConfig::new(&dead_letter_stream, "audit"),
    )
    .await
    .unwrap();
    let letter = next(&mut dead).await;
    let headers = letter.message().headers();
    assert_eq!(letter.message().payload().as_ref(), b"poison");
    assert_eq!(
        headers.get_str(dead_letter::REASON),
        Some("max deliveries exceeded")
    );
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("2"));
    // The original and one copy; no copy past the backstop.
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut raw(&config).await)
        .await
        .unwrap();
    assert_eq!(len, 2);
}
