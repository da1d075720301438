//! Redis Streams: topics are streams, groups are consumer groups, a pub/sub subscriber
//! is a consumer in a group of its own created at the end of the stream, and dead
//! letters go to the stream `<topic>.dlq`.
//!
//! Redis Pub/Sub has a fixture of its own, `redis_pubsub.rs`.

use std::time::Duration;

use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower_mq::redis::{Config, StreamConsumer, StreamConsumerConfig, StreamPublisher};

use crate::fixture::{unique_name, BoxConsumer, BoxPublisher, Capabilities, Fixture, Support};
use crate::harness::redis::config;
use crate::harness::run;

pub struct RedisFixture {
    config: Config,
    /// A key holding a string: appending to it is refused (`WRONGTYPE`).
    not_a_stream: String,
}

/// The config the fixtures use: claims after 2 s so that redelivery after a consumer
/// closes is seen within the suite's waits.
pub fn consumer_config(topic: &str, group: &str) -> StreamConsumerConfig {
    StreamConsumerConfig::new(topic, group)
        .claim_idle(Duration::from_secs(2))
        .claim_interval(Duration::from_millis(250))
        .block(Duration::from_millis(500))
}

impl Fixture for RedisFixture {
    const NAME: &'static str = "redis-streams";
    const BROKER: &'static str = "redis";
    const CAPABILITIES: Capabilities = Capabilities {
        // Publishing a priority is refused with a permanent error (checked by the case).
        priority: Support::No(
            "a stream is an append-only log read in order; Redis has no priority queue",
        ),
        ..Capabilities::ALL
    };

    async fn connect() -> Self {
        let config = config().await;
        let not_a_stream = unique_name("not-a-stream");
        let mut conn = config.connect().await.expect("connected above");
        let set: ::redis::RedisResult<()> = ::redis::cmd("SET")
            .arg(&not_a_stream)
            .arg("a string")
            .arg("EX")
            .arg(600)
            .query_async(&mut conn)
            .await;
        set.unwrap_or_else(|e| panic!("redis: SET {not_a_stream} failed: {e}"));
        RedisFixture {
            config,
            not_a_stream,
        }
    }

    async fn publisher(&self, _topic: &str) -> BoxPublisher {
        match StreamPublisher::connect(&self.config).await {
            Ok(publisher) => BoxCloneService::new(publisher),
            Err(e) => panic!("redis: publisher failed: {e}"),
        }
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        let group = unique_name("subscriber");
        let config = consumer_config(topic, &group).start_at_end();
        match StreamConsumer::subscribe(&self.config, config).await {
            Ok(consumer) => consumer.boxed(),
            Err(e) => panic!("redis: subscribing to {topic} failed: {e}"),
        }
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        let config = consumer_config(topic, group);
        if let Err(e) = StreamConsumer::declare_group(&self.config, &config).await {
            panic!("redis: declaring group {group} of {topic} failed: {e}");
        }
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        match StreamConsumer::subscribe(&self.config, consumer_config(topic, group)).await {
            Ok(consumer) => consumer.boxed(),
            Err(e) => panic!("redis: joining group {group} of {topic} failed: {e}"),
        }
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        // Dead letters are on by default, to the shared convention's destination.
        let dead_letter = tower_mq::dead_letter::destination_for(topic);
        self.group_consumer(&dead_letter, &unique_name("dead-letters"))
            .await
    }

    fn invalid_destinations(&self) -> Vec<String> {
        // Any byte string names a stream; an empty name is refused by the publisher,
        // and a key holding another type by the server.
        vec![String::new(), self.not_a_stream.clone()]
    }

    async fn stop_broker(&self) {
        run("stop", "redis").await;
    }

    async fn start_broker(&self) {
        run("start", "redis").await;
    }
}

conformance!(RedisFixture);
