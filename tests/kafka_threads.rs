//! Kafka consumers share the threads that poll them: many consumers add librdkafka's
//! own threads for each client, and no thread or runtime of tower-mq's per consumer.
//!
//! The test counts every thread of the process (from /proc/self/task), so it lives
//! alone in this test binary: another test running beside it would start threads of
//! its own. librdkafka names its threads `rdk:main`, `rdk:broker<id>` and so on; the
//! runtime that polls the consumers names its threads `tower-mq-kafka`.

#![cfg(all(feature = "kafka", target_os = "linux"))]

#[path = "support/kafka_mock_cluster.rs"]
mod kafka_mock_cluster;

use std::time::Duration;

use futures_util::StreamExt;
use kafka_mock_cluster::MockKafka;
use tower::{Service, ServiceExt};
use tower_mq::kafka::{Config, Consumer, ConsumerConfig, Publisher};
use tower_mq::Message;

/// The bound on waiting for something that should happen.
const WAIT: Duration = Duration::from_secs(20);
/// Consumers subscribed, besides the first one.
const CONSUMERS: usize = 16;

/// The threads of the process, by who started them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Threads {
    librdkafka: usize,
    polling: usize,
    other: usize,
}

fn threads() -> Threads {
    let mut counted = Threads {
        librdkafka: 0,
        polling: 0,
        other: 0,
    };
    let tasks = std::fs::read_dir("/proc/self/task").expect("reading /proc/self/task");
    for task in tasks {
        // A thread that ended since the listing has no name to read: it is not counted.
        let Ok(name) = std::fs::read_to_string(task.expect("a task").path().join("comm")) else {
            continue;
        };
        let name = name.trim_end();
        if name.starts_with("rdk:") {
            counted.librdkafka += 1;
        } else if name == "tower-mq-kafka" {
            counted.polling += 1;
        } else {
            counted.other += 1;
        }
    }
    counted
}

fn config(cluster: &MockKafka) -> Config {
    Config::new(cluster.bootstrap_servers())
        .set("reconnect.backoff.max.ms", "100")
        .set_consumer("session.timeout.ms", "6000")
        .set_consumer("heartbeat.interval.ms", "500")
}

async fn publish(publisher: &mut Publisher, topic: &str, payload: &'static str) {
    let ready = tokio::time::timeout(WAIT, publisher.ready())
        .await
        .expect("the publisher was not ready in time")
        .expect("publisher");
    tokio::time::timeout(WAIT, ready.call(Message::new(topic, payload)))
        .await
        .expect("publishing took too long")
        .expect("publish");
}

async fn joined(config: &Config, topic: &str, group: String) -> Consumer {
    let mut consumer = Consumer::subscribe(config, ConsumerConfig::new(topic, &group))
        .await
        .unwrap_or_else(|e| panic!("subscribing in {group} failed: {e}"));
    consumer
        .wait_for_assignment(WAIT)
        .await
        .unwrap_or_else(|e| panic!("joining {group} failed: {e}"));
    consumer
}

/// Subscribes many consumers (each in a group of its own) and counts the threads
/// they add: librdkafka's, and none of tower-mq's per consumer. They join one after
/// the other, so that their rebalance callbacks do not wait on the broker all at once
/// (each would hold a thread of the polling runtime meanwhile, see the `kafka` module
/// docs): what is counted is what consumers cost while they are read. Dropping them
/// closes every one (their librdkafka threads end).
#[tokio::test]
async fn consumers_share_the_threads_that_poll_them() {
    let cluster = MockKafka::start(1);
    let topic = "threads";
    cluster.create_topic(topic, 1);
    let config = config(&cluster);
    let mut publisher = Publisher::new(&config).expect("publisher");
    publish(&mut publisher, topic, "warm-up").await;
    // The publisher's threads are settled now (it connected, and librdkafka dropped
    // its bootstrap connection's thread).
    let at_start = threads();

    // The first consumer starts what all of them share: the polling runtime and the
    // producer that publishes nacks and rejects.
    let first = joined(&config, topic, "threads-0".to_owned()).await;
    let before = threads();
    assert!(
        before.polling >= 2,
        "the polling runtime's workers: {before:?}"
    );

    let mut consumers = vec![first];
    for i in 1..=CONSUMERS {
        consumers.push(joined(&config, topic, format!("threads-{i}")).await);
    }
    publish(&mut publisher, topic, "to all").await;
    for (i, consumer) in consumers.iter_mut().enumerate() {
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("consumer {i} was not polled"))
            .expect("the stream ended")
            .expect("receive");
        assert_eq!(delivery.message().payload().as_ref(), b"warm-up");
        delivery.ack().await.expect("ack");
        let delivery = tokio::time::timeout(WAIT, consumer.next())
            .await
            .unwrap_or_else(|_| panic!("consumer {i} was not polled"))
            .expect("the stream ended")
            .expect("receive");
        assert_eq!(delivery.message().payload().as_ref(), b"to all");
        delivery.ack().await.expect("ack");
    }
    let after = threads();
    eprintln!(
        "{CONSUMERS} more consumers: librdkafka threads {} -> {}, polling threads {} -> {}, \
         other threads {} -> {}",
        before.librdkafka,
        after.librdkafka,
        before.polling,
        after.polling,
        before.other,
        after.other
    );
    assert!(
        after.librdkafka >= before.librdkafka + CONSUMERS,
        "librdkafka starts threads for each consumer, so the count sees them: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.other, before.other,
        "no thread of tower-mq's per consumer: {before:?} -> {after:?}"
    );
    assert!(
        after.polling < before.polling + CONSUMERS,
        "no thread of the polling runtime per consumer: {before:?} -> {after:?}"
    );

    // Dropping the consumers stops their tasks and closes them, and the producer they
    // shared with them: every librdkafka thread they started ends.
    drop(consumers);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = threads();
        if now.librdkafka == at_start.librdkafka && now.other == at_start.other {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "dropped consumers still have librdkafka threads: {at_start:?} at the start, \
             {now:?} now"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
