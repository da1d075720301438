//! NATS, in its two modes: core NATS here (tests `nats::<case>`) and JetStream in
//! [`jetstream`] (tests `nats::jetstream::<case>`).
//!
//! Address: `TOWER_MQ_NATS_URL`, default `nats://127.0.0.1:14222` (the harness's);
//! stopping and starting the server goes through `TOWER_MQ_BROKERS`.

use std::time::Duration;

use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower_mq::nats::{Config, Connection, Publisher, Requester, Subscriber};

use crate::fixture::{
    BoxConsumer, BoxPublisher, BoxRequester, Capabilities, Fixture, MaxPayload, Support,
};
use crate::harness::nats::url;

async fn connect(name: &str) -> Connection {
    let config =
        Config::new(url()).reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
    match Connection::connect(&config).await {
        Ok(connection) => connection,
        Err(e) => panic!(
            "{name}: NATS is not reachable at {} (set by TOWER_MQ_NATS_URL): {e}; \
             run scripts/test or scripts/brokers up nats",
            url()
        ),
    }
}

/// Core NATS: at-most-once pub/sub and queue groups.
pub struct NatsFixture {
    connection: Connection,
}

impl Fixture for NatsFixture {
    const NAME: &'static str = "nats";
    const BROKER: &'static str = "nats";
    const CAPABILITIES: Capabilities = Capabilities {
        redelivery: Support::No(
            "core NATS keeps nothing and has no acks: deliveries are untracked, a nack \
             cannot bring a message back, and a closed subscriber's messages are gone",
        ),
        exact_delivery_count: Support::No("core NATS has no acks, so nothing is redelivered"),
        dead_letters: Support::No(
            "core NATS has no acks, so nothing can be rejected to a dead-letter destination",
        ),
        // The publish fails instead (checked by the case).
        priority: Support::No("NATS has no message priorities"),
        // The publish fails instead (checked by the case).
        ttl: Support::No("core NATS stores nothing, so a TTL has nothing to expire"),
        ttl_dead_letters: Support::No("core NATS stores nothing, so nothing expires"),
        durable_groups: Support::No(
            "a core NATS queue group exists only while members are subscribed: messages \
             published while none is, or held by a member that closes, are not kept",
        ),
        max_payload: MaxPayload::AtMost(
            1_000_000,
            "the NATS server's default max_payload is 1 MiB, headers included",
        ),
        ..Capabilities::ALL
    };

    async fn connect() -> Self {
        NatsFixture {
            connection: connect(Self::NAME).await,
        }
    }

    async fn publisher(&self, _topic: &str) -> BoxPublisher {
        BoxCloneService::new(Publisher::new(&self.connection))
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        match Subscriber::subscribe(&self.connection, topic).await {
            Ok(subscriber) => subscriber.boxed(),
            Err(e) => panic!("nats: subscribing to {topic} failed: {e}"),
        }
    }

    async fn declare_group(&self, _topic: &str, _group: &str) {
        // Queue groups are not declared: they come and go with their members.
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        match Subscriber::queue_subscribe(&self.connection, topic, group).await {
            Ok(subscriber) => subscriber.boxed(),
            Err(e) => panic!("nats: joining queue group {group} of {topic} failed: {e}"),
        }
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        panic!("nats: core NATS has no dead letters (asked for {topic})")
    }

    /// NATS's own request/reply: each request carries a fresh inbox as its reply
    /// subject (so `reply_to` is not used), and a request nobody is subscribed to fails
    /// at once with "no responders".
    async fn requester(&self, _topic: &str, _reply_to: &str, timeout: Duration) -> BoxRequester {
        BoxCloneService::new(Requester::new(&self.connection).timeout(timeout))
    }

    async fn stop_broker(&self) {
        crate::harness::run("stop", "nats").await
    }

    async fn start_broker(&self) {
        crate::harness::run("start", "nats").await
    }
}

conformance!(NatsFixture);

/// JetStream: one stream per topic, durable pull consumers with explicit acks, and a
/// dead-letter stream per topic.
pub mod jetstream {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::time::Duration;

    use futures_util::StreamExt;
    use tower::util::BoxCloneService;
    use tower_mq::nats::config::{ConsumerConfig, StreamConfig};
    use tower_mq::nats::jetstream::JetStream;

    use super::connect;
    use crate::fixture::{
        unique_name, BoxConsumer, BoxPublisher, Capabilities, Fixture, MaxPayload, Support,
    };

    /// How long an unsettled delivery waits before it is delivered again: short, so
    /// that a consumer that closes hands its messages on quickly, and shorter than the
    /// consumer's pull requests live (2 s). At 2 s, a message taken by a consumer that
    /// closed fell due again at the instant the pull request of the consumer opened
    /// right after it expired. nats-server 2.9 can then find no pull request to
    /// deliver the redelivery to after it took it off its redelivery queue, and puts
    /// its stream position back one message instead (as it would for a new message):
    /// the message came again as a first delivery (delivery count 1), under load.
    /// Shorter than a pull request's life, the redelivery falls due while the next
    /// consumer's first pull request is still open, or before it arrives.
    const ACK_WAIT: Duration = Duration::from_secs(1);

    pub struct JetStreamFixture {
        js: JetStream,
        /// Streams this fixture declared, deleted when it is dropped.
        declared: Mutex<HashSet<String>>,
    }

    impl Drop for JetStreamFixture {
        /// Deletes the fixture's streams, so the server's store (and the time a
        /// restart takes to recover it) does not grow with every run.
        fn drop(&mut self) {
            let streams: Vec<String> = match self.declared.get_mut() {
                Ok(declared) => declared.drain().collect(),
                Err(_) => return,
            };
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                return;
            }
            let context = self.js.context().clone();
            tokio::task::block_in_place(|| {
                handle.block_on(async move {
                    for stream in streams {
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            context.delete_stream(&stream),
                        )
                        .await;
                    }
                })
            });
        }
    }

    fn dead_letter_subject(topic: &str) -> String {
        format!("{topic}-dead")
    }

    impl JetStreamFixture {
        /// The topic's stream and its dead-letter stream (file storage, so they
        /// survive a restart), declared idempotently.
        async fn streams(&self, topic: &str) {
            for subject in [topic.to_owned(), dead_letter_subject(topic)] {
                if let Ok(mut declared) = self.declared.lock() {
                    declared.insert(subject.clone());
                }
                let config = StreamConfig::new(&subject, [subject.clone()]);
                if let Err(e) = self.js.declare_stream(&config).await {
                    panic!("jetstream: declaring stream {subject} failed: {e}");
                }
            }
        }

        fn consumer_config(topic: &str, group: &str) -> ConsumerConfig {
            // One message per pull request: a consumer that prefetched a large batch
            // would hold messages it has not looked at past their ack wait, and the
            // server would hand them to the other member of the group as well.
            ConsumerConfig::new(group)
                .batch_size(1)
                .ack_wait(ACK_WAIT)
                .dead_letter(dead_letter_subject(topic))
        }

        async fn durable(&self, stream: &str, config: &ConsumerConfig) -> BoxConsumer {
            if let Err(e) = self.js.declare_consumer(stream, config).await {
                panic!(
                    "jetstream: declaring consumer {} on {stream} failed: {e}",
                    config.durable()
                );
            }
            match self.js.consumer(stream, config).await {
                Ok(consumer) => consumer.boxed(),
                Err(e) => panic!(
                    "jetstream: consuming {} on {stream} failed: {e}",
                    config.durable()
                ),
            }
        }
    }

    impl Fixture for JetStreamFixture {
        const NAME: &'static str = "jetstream";
        const BROKER: &'static str = "nats";
        const CAPABILITIES: Capabilities = Capabilities {
            // The publish fails instead (checked by the case).
            priority: Support::No("NATS has no message priorities"),
            // The publish fails instead of dropping the TTL (checked by the case).
            ttl: Support::No(
                "per-message TTLs need nats-server 2.11 and a stream that allows them; \
                 streams expire messages by max_age",
            ),
            ttl_dead_letters: Support::No("JetStream messages carry no TTL here"),
            max_payload: MaxPayload::AtMost(
                1_000_000,
                "the NATS server's default max_payload is 1 MiB, headers included",
            ),
            ..Capabilities::ALL
        };

        async fn connect() -> Self {
            JetStreamFixture {
                js: JetStream::new(&connect(Self::NAME).await),
                declared: Mutex::default(),
            }
        }

        async fn publisher(&self, topic: &str) -> BoxPublisher {
            self.streams(topic).await;
            BoxCloneService::new(self.js.publisher())
        }

        async fn subscriber(&self, topic: &str) -> BoxConsumer {
            // Pub/sub on JetStream: a durable consumer of its own per subscriber.
            self.streams(topic).await;
            let name = unique_name("subscriber");
            self.durable(topic, &Self::consumer_config(topic, &name))
                .await
        }

        async fn declare_group(&self, topic: &str, group: &str) {
            self.streams(topic).await;
            let config = Self::consumer_config(topic, group);
            if let Err(e) = self.js.declare_consumer(topic, &config).await {
                panic!("jetstream: declaring consumer {group} on {topic} failed: {e}");
            }
        }

        async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
            self.streams(topic).await;
            self.durable(topic, &Self::consumer_config(topic, group))
                .await
        }

        async fn dead_letters(&self, topic: &str) -> BoxConsumer {
            self.streams(topic).await;
            let stream = dead_letter_subject(topic);
            self.durable(&stream, &ConsumerConfig::new("dead-letter-reader"))
                .await
        }

        async fn stop_broker(&self) {
            crate::harness::run("stop", "nats").await
        }

        async fn start_broker(&self) {
            crate::harness::run("start", "nats").await
        }
    }

    conformance!(JetStreamFixture);
}
