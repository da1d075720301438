//! Redis Pub/Sub: topics are channels, a subscriber is a `SUBSCRIBE` on a connection of
//! its own, and messages travel in tower-mq's envelope framing, because the cases
//! round-trip headers and properties (plain framing, the default, refuses them; the
//! Redis tests cover it).
//!
//! Pub/Sub is at most once and keeps nothing: no consumer groups, no acknowledgements,
//! no dead letters. The cases that need those are reported as not applicable, with the
//! reasons below; where the module has an honest answer instead (an untracked delivery,
//! a nack or reject that fails, a priority refused at publish time), the case checks it.
//! The consumer resubscribes by itself after a restart, which the reconnect case checks.

use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower_mq::redis::{Config, Framing, PubSubConsumer, PubSubPublisher, Subscription};

use crate::fixture::{BoxConsumer, BoxPublisher, Capabilities, Fixture, Support};
use crate::harness::redis::config;
use crate::harness::run;

const NO_GROUPS: &str = "Redis Pub/Sub has no consumer groups: every subscriber of a \
                         channel receives every message, and nothing is kept for anyone";

pub struct RedisPubSubFixture {
    config: Config,
}

impl Fixture for RedisPubSubFixture {
    const NAME: &'static str = "redis-pubsub";
    const BROKER: &'static str = "redis";
    const CAPABILITIES: Capabilities = Capabilities {
        // The cases check that deliveries say they are untracked, and that a nack or a
        // reject fails instead of pretending.
        redelivery: Support::No(
            "Redis Pub/Sub is at most once: a message reaches the subscribers connected \
             when it is published, deliveries are untracked, and nothing is redelivered",
        ),
        exact_delivery_count: Support::No("Redis Pub/Sub redelivers nothing"),
        counts_redelivery_after_close: Support::No("Redis Pub/Sub redelivers nothing"),
        dead_letters: Support::No(
            "Redis Pub/Sub keeps nothing, so there is no dead-letter destination",
        ),
        // The envelope refuses a priority with a permanent error (checked by the case).
        priority: Support::No("Redis Pub/Sub delivers each message at once, in publication order"),
        // The envelope carries a TTL and the consumer drops a message that arrives
        // expired; the expiry case needs a group that keeps a message unread.
        ttl_dead_letters: Support::No(
            "Redis Pub/Sub keeps nothing, so an expired message has nowhere to go",
        ),
        groups: Support::No(NO_GROUPS),
        durable_groups: Support::No(NO_GROUPS),
        ..Capabilities::ALL
    };

    async fn connect() -> Self {
        RedisPubSubFixture {
            config: config().await.pubsub_framing(Framing::Envelope),
        }
    }

    async fn publisher(&self, _topic: &str) -> BoxPublisher {
        match PubSubPublisher::connect(&self.config).await {
            Ok(publisher) => BoxCloneService::new(publisher),
            Err(e) => panic!("redis-pubsub: publisher failed: {e}"),
        }
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        match PubSubConsumer::subscribe(&self.config, [Subscription::channel(topic)]).await {
            Ok(consumer) => consumer.boxed(),
            Err(e) => panic!("redis-pubsub: subscribing to {topic} failed: {e}"),
        }
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        panic!("redis-pubsub: asked to declare group {group} of {topic}: {NO_GROUPS}")
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        panic!("redis-pubsub: asked to join group {group} of {topic}: {NO_GROUPS}")
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        panic!("redis-pubsub: asked for the dead letters of {topic}: Pub/Sub has none")
    }

    fn invalid_destinations(&self) -> Vec<String> {
        // Any byte string names a channel; the publisher refuses an empty one.
        vec![String::new()]
    }

    async fn stop_broker(&self) {
        run("stop", "redis").await;
    }

    async fn start_broker(&self) {
        run("start", "redis").await;
    }
}

conformance!(RedisPubSubFixture);
