//! Kafka on librdkafka's mock cluster: an in-process broker speaking the Kafka
//! protocol, one per test. It keeps its data across `broker_down` / `broker_up`, so
//! the reconnect case runs here (tansu, in memory, loses everything on restart), and
//! it keeps offset-commit metadata, so redeliveries after a consumer closes are
//! counted.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tower::util::BoxCloneService;
use tower_mq::kafka::{Admin, Config, ConsumerConfig, Publisher};

use crate::fixture::{unique_name, BoxConsumer, BoxPublisher, Capabilities, Fixture};
use crate::kafka::{joined_consumer, KAFKA_CAPABILITIES};

#[path = "../support/kafka_mock_cluster.rs"]
mod kafka_mock_cluster;
use kafka_mock_cluster::{MockKafka, ALL_BROKERS};

pub struct KafkaMockFixture {
    cluster: MockKafka,
    config: Config,
    admin: Admin,
    topics: Mutex<HashSet<String>>,
}

/// How long a stopped broker stays down: about what a broker process restart takes.
const OUTAGE: Duration = Duration::from_secs(1);

/// Partitions of every topic the fixture creates, as on tansu.
const PARTITIONS: i32 = 4;

impl KafkaMockFixture {
    /// Creates `topic` on the cluster (the mock does not implement CreateTopics).
    fn topic(&self, topic: &str) {
        let mut topics = self.topics.lock().unwrap_or_else(PoisonError::into_inner);
        if topics.insert(topic.to_owned()) {
            self.cluster.create_topic(topic, PARTITIONS);
        }
    }
}

impl Fixture for KafkaMockFixture {
    const NAME: &'static str = "kafka-mock";
    const BROKER: &'static str = "kafka";
    const CAPABILITIES: Capabilities = KAFKA_CAPABILITIES;

    async fn connect() -> Self {
        let cluster = MockKafka::start(1);
        // Reconnect quickly after `start_broker`; otherwise librdkafka's defaults.
        let config = Config::new(cluster.bootstrap_servers())
            .set_producer("partitioner", "murmur2")
            .set("reconnect.backoff.max.ms", "100")
            .set_consumer("session.timeout.ms", "6000")
            .set_consumer("heartbeat.interval.ms", "500");
        let admin = Admin::new(&config).unwrap_or_else(|e| panic!("kafka-mock: admin client: {e}"));
        KafkaMockFixture {
            cluster,
            config,
            admin,
            topics: Mutex::default(),
        }
    }

    async fn publisher(&self, topic: &str) -> BoxPublisher {
        self.topic(topic);
        let publisher =
            Publisher::new(&self.config).unwrap_or_else(|e| panic!("kafka-mock: publisher: {e}"));
        BoxCloneService::new(publisher)
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        let group = unique_name("subscriber");
        self.declare_group(topic, &group).await;
        joined_consumer(&self.config, ConsumerConfig::new(topic, group), Self::NAME).await
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        self.topic(topic);
        if let Err(e) = self.admin.declare_group(topic, group).await {
            panic!("kafka-mock: declaring group {group} on {topic} failed: {e}");
        }
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        self.topic(topic);
        joined_consumer(&self.config, ConsumerConfig::new(topic, group), Self::NAME).await
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        let dead_letter_topic = ConsumerConfig::new(topic, "").dead_letter_topic_of(topic);
        self.subscriber(&dead_letter_topic).await
    }

    /// Drops the broker's connections and refuses new ones, then stays down for
    /// [`OUTAGE`]: the mock broker could come back at once, a broker process could not.
    async fn stop_broker(&self) {
        self.cluster.broker_down(ALL_BROKERS);
        // The behaviour under test is the outage lasting a while.
        tokio::time::sleep(OUTAGE).await;
    }

    async fn start_broker(&self) {
        self.cluster.broker_up(ALL_BROKERS);
    }
}

conformance!(KafkaMockFixture);
