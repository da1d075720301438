//! librdkafka's mock cluster (an in-process broker speaking the Kafka protocol), set
//! up the way the Kafka tests need it.
//!
//! The cluster belongs to a client created with `test.mock.num.brokers`; that client is
//! `Send + Sync`, and the cluster handle (which is not) is taken from it for the
//! duration of each call only, so a `MockKafka` can live in async tests and fixtures.
//! The group initial rebalance delay is set to 0 (the mock waits 3 s by default before
//! the first assignment of a group).

#![allow(dead_code)] // each test target uses a different part

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

/// Broker ids of the mock cluster start at 1.
pub const ALL_BROKERS: i32 = -1;

pub struct MockKafka {
    owner: BaseProducer,
    bootstrap: String,
}

impl MockKafka {
    /// A cluster of `brokers` brokers.
    pub fn start(brokers: i32) -> Self {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .unwrap_or_else(|e| panic!("kafka mock: creating the mock cluster failed: {e}"));
        // SAFETY: `owner` created a mock cluster (test.mock.num.brokers) that lives as
        // long as `owner`; the pointer is used for this one call while `owner` is
        // borrowed, and the function only sets a value under the cluster's lock.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
            assert!(
                !cluster.is_null(),
                "kafka mock: the client has no mock cluster"
            );
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
        let bootstrap = owner
            .client()
            .mock_cluster()
            .map(|c| c.bootstrap_servers())
            .unwrap_or_else(|| panic!("kafka mock: the client has no mock cluster"));
        MockKafka { owner, bootstrap }
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn with<T>(&self, f: impl FnOnce(&MockCluster<'_, DefaultProducerContext>) -> T) -> T {
        let cluster = self
            .owner
            .client()
            .mock_cluster()
            .unwrap_or_else(|| panic!("kafka mock: the client has no mock cluster"));
        f(&cluster)
    }

    /// Creates a topic directly on the cluster.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.with(|c| c.create_topic(topic, partitions, 1))
            .unwrap_or_else(|e| panic!("kafka mock: creating {topic} failed: {e}"));
    }

    /// Stops accepting connections and drops those open (partitions keep their
    /// leader, and the data is kept).
    pub fn broker_down(&self, broker: i32) {
        self.with(|c| c.broker_down(broker))
            .unwrap_or_else(|e| panic!("kafka mock: broker_down({broker}) failed: {e}"));
    }

    pub fn broker_up(&self, broker: i32) {
        self.with(|c| c.broker_up(broker))
            .unwrap_or_else(|e| panic!("kafka mock: broker_up({broker}) failed: {e}"));
    }

    pub fn round_trip_time(&self, broker: i32, delay: Duration) {
        self.with(|c| c.broker_round_trip_time(broker, delay))
            .unwrap_or_else(|e| panic!("kafka mock: setting the round trip time failed: {e}"));
    }

    /// The next requests of kind `api` are answered with `errors`, one each.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        self.with(|c| c.request_errors(api, errors));
    }

    pub fn clear_request_errors(&self, api: RDKafkaApiKey) {
        self.with(|c| c.clear_request_errors(api));
    }
}
