//! The in-process broker. Supports every capability but restart: it lives inside the
//! test process, so there is no broker process to stop (the reconnect case is not
//! applicable; the same load without restarts runs as its own case).

use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower_mq::memory::Broker;

use crate::fixture::{BoxConsumer, BoxPublisher, Capabilities, Fixture, Support};

pub struct MemoryFixture {
    broker: Broker,
}

/// The group name dead letters are kept under.
const DEAD_LETTER_GROUP: &str = "conformance-dead-letters";

impl Fixture for MemoryFixture {
    const NAME: &'static str = "memory";
    const BROKER: &'static str = "memory";
    const CAPABILITIES: Capabilities = Capabilities {
        restart: Support::No(
            "the broker lives in the test process: there is no broker process to stop \
             and restart, and no connection to lose",
        ),
        ..Capabilities::ALL
    };

    async fn connect() -> Self {
        MemoryFixture {
            broker: Broker::new(),
        }
    }

    async fn publisher(&self, _topic: &str) -> BoxPublisher {
        BoxCloneService::new(self.broker.publisher())
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        match self.broker.subscribe(topic) {
            Ok(consumer) => consumer.boxed(),
            Err(e) => panic!("memory: subscribing to {topic} failed: {e}"),
        }
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        if let Err(e) = self.broker.declare_group(topic, group) {
            panic!("memory: declaring group {group} of {topic} failed: {e}");
        }
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        match self.broker.consumer(topic, group) {
            Ok(consumer) => consumer.boxed(),
            Err(e) => panic!("memory: joining group {group} of {topic} failed: {e}"),
        }
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        let dead_letter_topic = self.broker.dead_letter_topic(topic);
        self.group_consumer(&dead_letter_topic, DEAD_LETTER_GROUP)
            .await
    }
}

conformance!(MemoryFixture);
