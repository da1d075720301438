//! RabbitMQ, through `tower_mq::rabbitmq`, against the harness broker
//! (`TOWER_MQ_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:15673/%2f`).
//!
//! Mapping: a topic is a topic exchange (auto-deleted once its last binding goes); a
//! pub/sub subscriber is an exclusive server-side queue bound with `#`; a group is a
//! durable classic queue `<topic>.<group>` bound with `#`, with priorities 0..=10 and
//! the dead-letter exchange `<topic>.dlx` (a fanout exchange feeding `<topic>.dead`).
//! Requests use RabbitMQ's direct reply-to.

use std::time::Duration;

use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower_mq::rabbitmq::{Binding, Config, Connection, Exchange, Queue, Topology};
use tower_mq::Delivery;

use crate::fixture::{BoxConsumer, BoxPublisher, BoxRequester, Capabilities, Fixture};
use crate::harness::rabbitmq::url;
use crate::harness::run;

pub struct RabbitMqFixture {
    connection: Connection,
}

fn topic_exchange(topic: &str) -> Exchange {
    Exchange::topic(topic).auto_delete(true)
}

fn group_queue_name(topic: &str, group: &str) -> String {
    format!("{topic}.{group}")
}

fn group_queue(topic: &str, group: &str) -> Queue {
    Queue::classic(group_queue_name(topic, group))
        .max_priority(10)
        .dead_letter_exchange(format!("{topic}.dlx"))
        .expires(Duration::from_secs(600))
}

impl RabbitMqFixture {
    async fn declare(&self, topology: Topology) {
        if let Err(e) = self.connection.declare(&topology).await {
            panic!("rabbitmq: declaring {topology:?} failed: {e}");
        }
    }

    async fn consume(&self, queue: &str) -> BoxConsumer {
        match self.connection.consumer(queue).await {
            Ok(consumer) => consumer.boxed(),
            Err(e) => panic!("rabbitmq: consuming {queue} failed: {e}"),
        }
    }
}

impl Fixture for RabbitMqFixture {
    const NAME: &'static str = "rabbitmq";
    const BROKER: &'static str = "rabbitmq";
    const CAPABILITIES: Capabilities = Capabilities {
        // Groups are classic queues, because quorum queues (which count every delivery
        // in `x-delivery-count`) have no priorities before RabbitMQ 4.0. Nacks are
        // counted exactly (requeue by republishing, checked by the nack and serve
        // cases); a closed consumer's delivery comes again flagged as redelivered,
        // which counts 2 after the one close the case makes.
        ..Capabilities::ALL
    };

    async fn connect() -> Self {
        let address = url();
        let config = Config::new(&address)
            .connection_name("tower-mq conformance")
            .heartbeat(Duration::from_secs(5))
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1));
        let connection = Connection::connect(&config).await.unwrap_or_else(|e| {
            panic!(
                "rabbitmq: cannot connect to {address} (env TOWER_MQ_AMQP_URL): {e}. \
                 Run scripts/test, or scripts/brokers up rabbitmq."
            )
        });
        RabbitMqFixture { connection }
    }

    async fn publisher(&self, topic: &str) -> BoxPublisher {
        self.declare(Topology::new().exchange(topic_exchange(topic)))
            .await;
        BoxCloneService::new(self.connection.publisher())
    }

    async fn subscriber(&self, topic: &str) -> BoxConsumer {
        let queue = self.unique("subscriber");
        self.declare(
            Topology::new()
                .exchange(topic_exchange(topic))
                .queue(
                    Queue::classic(&queue)
                        .durable(false)
                        .exclusive(true)
                        .auto_delete(true),
                )
                .binding(Binding::queue(&queue, topic, "#")),
        )
        .await;
        self.consume(&queue).await
    }

    async fn declare_group(&self, topic: &str, group: &str) {
        self.declare(
            Topology::new()
                .exchange(topic_exchange(topic))
                .queue(group_queue(topic, group))
                .binding(Binding::queue(group_queue_name(topic, group), topic, "#")),
        )
        .await;
    }

    async fn group_consumer(&self, topic: &str, group: &str) -> BoxConsumer {
        self.declare_group(topic, group).await;
        self.consume(&group_queue_name(topic, group)).await
    }

    async fn dead_letters(&self, topic: &str) -> BoxConsumer {
        let dlx = format!("{topic}.dlx");
        let dead = format!("{topic}.dead");
        self.declare(
            Topology::new()
                .exchange(Exchange::fanout(&dlx).auto_delete(true))
                .queue(Queue::classic(&dead).expires(Duration::from_secs(600)))
                .binding(Binding::queue(&dead, &dlx, "")),
        )
        .await;
        self.consume(&dead).await
    }

    fn death_reason(&self, dead_letter: &Delivery) -> Option<String> {
        dead_letter
            .message()
            .headers()
            .get_str(tower_mq::dead_letter::REASON)
            // Expired messages are dead-lettered by RabbitMQ itself.
            .or_else(|| {
                dead_letter
                    .message()
                    .headers()
                    .get_str("x-first-death-reason")
            })
            .map(str::to_owned)
    }

    /// RabbitMQ's own request/reply: direct reply-to (`amq.rabbitmq.reply-to`), so
    /// `reply_to` is not used; replies go straight to the requester's channel.
    async fn requester(&self, topic: &str, _reply_to: &str, timeout: Duration) -> BoxRequester {
        self.declare(Topology::new().exchange(topic_exchange(topic)))
            .await;
        BoxCloneService::new(
            self.connection
                .requester()
                .timeout(timeout)
                // The suite treats an unanswered request as a (transient) timeout;
                // mandatory requests would come back unroutable, a permanent error.
                .mandatory(false),
        )
    }

    async fn stop_broker(&self) {
        run("stop", "rabbitmq").await;
    }

    async fn start_broker(&self) {
        run("start", "rabbitmq").await;
    }
}

conformance!(RabbitMqFixture);
