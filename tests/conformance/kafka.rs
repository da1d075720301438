//! Kafka on tansu, a real Kafka-protocol broker (the harness runs it on
//! `TOWER_MQ_KAFKA_BROKERS`, default 127.0.0.1:19092). Topics are created explicitly
//! with the admin client (tansu does not auto-create them), with four partitions so
//! that two consumers of a group share work.
//!
//! Producer settings made here, and why:
//! - `batch.num.messages=1`: tansu 0.6.0 (memory storage) skips the rest of a
//!   multi-record batch when a fetch starts in its middle, and reports a wrong high
//!   watermark for such batches. One record per batch avoids both; real Kafka needs
//!   no such setting.
//! - `partitioner=murmur2`: records without a key all go to one partition, so the
//!   cases that check order for unkeyed messages see publication order (Kafka orders
//!   only within a partition). Keyed records hash exactly as with the default.
//!
//! Broker restarts run on the mock cluster fixture (`kafka_mock`): tansu keeps topics
//! and records in memory only, so a restarted tansu has lost them.

use std::time::Duration;

use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower_mq::kafka::{Admin, Config, Consumer, ConsumerConfig, Publisher, TopicSpec};

use crate::fixture::{
    unique_name, BoxConsumer, BoxPublisher, BoxRequester, Capabilities, Fixture, MaxPayload,
    Support, WAIT,
};

/// Partitions of every topic the fixture creates.
const PARTITIONS: i32 = 4;

pub struct KafkaFixture {
    config: Config,
    admin: Admin,
}

/// What Kafka can do, for both Kafka fixtures.
pub const KAFKA_CAPABILITIES: Capabilities = Capabilities {
    // Publishing a priority is refused with a permanent error (checked by the case).
    priority: Support::No("a partition is a log read in order; Kafka has no message priority"),
    // Publishing a TTL is refused with a permanent error (checked by the case).
    ttl: Support::No("Kafka has no per-message time to live (retention is per topic)"),
    ttl_dead_letters: Support::No("Kafka has no per-message time to live"),
    max_payload: MaxPayload::AtMost(
        990_000,
        "librdkafka and Kafka brokers refuse records over message.max.bytes, about 1 MB by default",
    ),
    ..Capabilities::ALL
};

/// What tansu 0.6.0 can do: less than Kafka.
const TANSU_CAPABILITIES: Capabilities = Capabilities {
    // Kafka remembers nothing per message: the consumer counts redeliveries from the
    // offset-commit metadata it writes (the highest offset handed out). The mock
    // cluster fixture checks it.
    counts_redelivery_after_close: Support::No(
        "tansu 0.6.0 drops offset-commit metadata, so a message read again after its \
         consumer closed looks like a first delivery (kafka-mock checks it)",
    ),
    restart: Support::No(
        "tansu keeps everything in memory: a restart loses topics and records \
         (kafka-mock runs the reconnect case)",
    ),
    ..KAFKA_CAPABILITIES
};

/// Creates `topic` and its consumer groups' needs on any Kafka fixture.
pub async fn create_topic(admin: &Admin, topic: &str, name: &str) {
    if let Err(e) = admin
        .create_topic(TopicSpec::new(topic).partitions(PARTITIONS))
        .await
    {
        panic!("{name}: creating topic {topic} failed: {e}");
    }
}

/// A consumer of `topic` in `group`, returned once it has joined the group.
pub async fn joined_consumer(config: &Config, consumer: ConsumerConfig, name: &str) -> BoxConsumer {
    let topic = consumer.topics().join(",");
    let mut consumer = Consumer::subscribe(config, consumer)
        .await
        .unwrap_or_else(|e| panic!("{name}: subscribing to {topic} failed: {e}"));
    if let Err(e) = consumer.wait_for_assignment(WAIT).await {
        panic!("{name}: joining the group on {topic} failed: {e}");
    }
    consumer.boxed()
}

/// The client settings both Kafka fixtures use; see the module docs.
pub fn fixture_config(brokers: &str) -> Config {
    Config::new(brokers)
        .batch_messages(1)
        .set_producer("partitioner", "murmur2")
        .set("reconnect.backoff.max.ms", "100")
        .set_consumer("session.timeout.ms", "6000")
        .set_consumer("heartbeat.interval.ms", "500")
        .operation_timeout(Duration::from_secs(10))
}

impl KafkaFixture {
    async fn topic(&self, topic: &str) {
        create_topic(&self.admin, topic, Self::NAME).await;
    }
}

impl Fixture for KafkaFixture {
    const NAME: &'static str = "kafka";
    const BROKER: &'static str = "kafka";
    const CAPABILITIES: Capabilities = TANSU_CAPABILITIES;

    async fn connect() -> Self {
        let brokers = crate::harness::kafka::brokers();
        let config = fixture_config(&brokers).operation_timeout(Duration::from_secs(5));
        if let Err(e) = Publisher::connect(&config).await {
            panic!(
                "kafka: cannot reach a Kafka broker at {brokers} (set TOWER_MQ_KAFKA_BROKERS; \
                 run scripts/test or scripts/brokers up kafka): {e}"
            );
        }
        let admin = Admin::new(&config).unwrap_or_else(|e| panic!("kafka: admin client: {e}"));
        KafkaFixture { config, admin }
    }

    async fn publisher(&self, topic: &str) -> BoxPublisher {
        self.topic(topic).await;
        let publisher =
            Publisher::new(&self.config).unwrap_or_else(|e| panic!("kafka: publisher: {e}"));
        BoxCloneService::new(publisher)
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        let group = unique_name("subscriber");
        self.declare_group(topic, &group).await;
        joined_consumer(&self.config, ConsumerConfig::new(topic, group), Self::NAME).await
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        self.topic(topic).await;
        if let Err(e) = self.admin.declare_group(topic, group).await {
            panic!("kafka: declaring group {group} on {topic} failed: {e}");
        }
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        self.topic(topic).await;
        joined_consumer(&self.config, ConsumerConfig::new(topic, group), Self::NAME).await
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        let dead_letter_topic = ConsumerConfig::new(topic, "").dead_letter_topic_of(topic);
        self.subscriber(&dead_letter_topic).await
    }

    /// The Kafka module's own requester: it creates the reply topic and joins a group
    /// of its own at the topic's end.
    async fn requester(&self, topic: &str, reply_to: &str, timeout: Duration) -> BoxRequester {
        self.topic(topic).await;
        match tower_mq::kafka::Requester::connect(&self.config, reply_to).await {
            Ok(requester) => BoxCloneService::new(requester.timeout(timeout)),
            Err(e) => panic!("kafka: requester replying on {reply_to} failed: {e}"),
        }
    }
}

conformance!(KafkaFixture);
