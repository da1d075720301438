//! Kafka behaviour the mock cluster cannot show, on tansu, a real Kafka-protocol broker
//! (`TOWER_MQ_KAFKA_BROKERS`, default 127.0.0.1:19092; run scripts/test or
//! scripts/brokers up kafka).

#![cfg(feature = "kafka")]

#[path = "support/harness.rs"]
mod harness;
#[path = "support/waits.rs"]
mod waits;

use harness::unique;
use waits::{next_within, until};

use std::collections::BTreeMap;
use std::time::Duration;

use tower::ServiceExt;
use tower_mq::kafka::{Admin, Config, Consumer, ConsumerConfig, Publisher, TopicSpec};
use tower_mq::{Delivery, Message};

const WAIT: Duration = Duration::from_secs(20);

async fn connect() -> Config {
    // No periodic commit: what is committed, the revocation committed.
    harness::kafka::config()
        .await
        .set_consumer("auto.commit.interval.ms", "600000")
}

async fn committed(admin: &Admin, group: &str, topic: &str) -> Option<i64> {
    let lags = admin
        .consumer_group_lag(group, topic)
        .await
        .unwrap_or_else(|e| panic!("lag of {group} on {topic}: {e}"));
    lags.first().and_then(|l| l.committed)
}

/// A member joining the group makes the first member's partitions be revoked: they
/// are committed at once, up to the first unfinished message, including partitions
/// where nothing was settled (committed at the first message handed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_commits_revoked_partitions_up_to_the_first_unfinished() {
    let config = connect().await;
    let admin = Admin::new(&config).expect("admin client");
    let (worked, untouched) = (unique("rebalance-worked"), unique("rebalance-untouched"));
    admin
        .create_topics(&[TopicSpec::new(&worked), TopicSpec::new(&untouched)])
        .await
        .expect("topics");
    let publisher = Publisher::new(&config).expect("publisher");
    for (topic, count) in [(&worked, 6), (&untouched, 2)] {
        for i in 0..count {
            let message = Message::new(topic.as_str(), i.to_string());
            publisher.clone().oneshot(message).await.expect("publish");
        }
    }
    // Round robin, so each member gets one of the two partitions.
    let config = config.set_consumer("partition.assignment.strategy", "roundrobin");
    let group = unique("rebalancing");
    let both = || ConsumerConfig::new(&worked, &group).topic(&untouched);
    let mut first = Consumer::subscribe(&config, both())
        .await
        .expect("first member");
    let mut held: BTreeMap<(String, String), Delivery> = BTreeMap::new();
    while held.len() < 8 {
        let delivery = next(&mut first).await;
        let at = (
            delivery.message().destination().to_owned(),
            String::from_utf8_lossy(delivery.message().payload()).into_owned(),
        );
        held.insert(at, delivery);
    }
    for i in ["0", "1", "2", "4"] {
        held[&(worked.clone(), i.to_owned())]
            .ack()
            .await
            .expect("ack");
    }
    assert_eq!(committed(&admin, &group, &worked).await, None);

    let mut second = Consumer::subscribe(&config, both())
        .await
        .expect("second member");
    until("a commit once the second member joined", WAIT, async || {
        committed(&admin, &group, &untouched).await.is_some()
    })
    .await;
    assert_eq!(committed(&admin, &group, &worked).await, Some(3));
    // Nothing was settled there: only the revocation commits offset 0.
    assert_eq!(committed(&admin, &group, &untouched).await, Some(0));
    second
        .wait_for_assignment(WAIT)
        .await
        .expect("the second member gets a partition");
    first
        .wait_for_assignment(WAIT)
        .await
        .expect("the first member gets a partition");
}

async fn next(consumer: &mut Consumer) -> Delivery {
    next_within(consumer, "a message", WAIT).await
}

/// Records fetched ahead and never handed to a handler need no hand-back on Kafka:
/// nothing commits past them, so after the consumer is dropped the next member of
/// the group reads them at once, as first deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_read_ahead_but_never_handed_out_go_to_the_next_owner_uncounted() {
    let config = connect().await;
    let admin = Admin::new(&config).expect("admin client");
    let topic = unique("read-ahead");
    admin
        .create_topics(&[TopicSpec::new(&topic)])
        .await
        .expect("topic");
    let publisher = Publisher::new(&config).expect("publisher");
    for i in 0..6 {
        let message = Message::new(topic.as_str(), i.to_string());
        publisher.clone().oneshot(message).await.expect("publish");
    }
    let group = unique("deployed");
    let mut first = Consumer::subscribe(&config, ConsumerConfig::new(&topic, &group))
        .await
        .expect("first member");
    let taken = next(&mut first).await;
    assert_eq!(taken.message().payload().as_ref(), b"0");
    taken.ack().await.expect("ack");
    drop(first);

    let started = tokio::time::Instant::now();
    let mut second = Consumer::subscribe(&config, ConsumerConfig::new(&topic, &group))
        .await
        .expect("second member");
    for i in 1..6 {
        let delivery = next(&mut second).await;
        assert_eq!(
            delivery.message().payload().as_ref(),
            i.to_string().as_bytes()
        );
        assert_eq!(
            delivery.delivery_count(),
            1,
            "message {i} reached no handler"
        );
        delivery.ack().await.expect("ack");
    }
    assert!(
        started.elapsed() < WAIT,
        "the next owner waited {:?}",
        started.elapsed()
    );
    assert_eq!(committed(&admin, &group, &topic).await, Some(1));
}
