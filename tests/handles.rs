//! Every handle a user shares (in axum `State`, in a `BoxCloneSyncService`, across
//! tasks) is `Send + Sync + Clone`, on every broker.
//!
//! The `*_are_send_sync_clone` tests are compile-time assertions: they fail to build,
//! naming the type, when a handle loses one of the three. Consumers are streams owned
//! by one `serve` loop (or one task), so they are asserted `Send` only.
//!
//! The `*_in_a_box_clone_sync_service` tests put a publisher on the real broker into a
//! [`BoxCloneSyncService`], clone it into another task and publish through it. The
//! addresses come from the `TOWER_MQ_*` variables (defaults: the project harness's
//! ports; run `scripts/brokers up` and `eval "$(scripts/brokers env)"`).

#![allow(dead_code)]

#[path = "support/harness.rs"]
mod harness;

use std::time::Duration;

use harness::unique;

use tower::util::BoxCloneSyncService;
use tower::ServiceExt;
#[allow(unused_imports)]
use tower_mq::{Error, Guarantee, Message, Position, Receipt};

/// Compiles only for types that can be shared: moved and referenced across threads,
/// and cloned.
fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

/// Compiles only for types that can move to another thread.
fn assert_send<T: Send + 'static>() {}

/// A publisher as axum state or a tower stack would hold it.
type SharedPublisher = BoxCloneSyncService<Message, Receipt, Error>;

/// How long the broker gets to answer a publish.
const WAIT: Duration = Duration::from_secs(15);

/// Publishes `message` through a clone of `publisher` on another task, the way an
/// axum handler uses its state.
async fn publish_from_another_task(publisher: &SharedPublisher, message: Message) -> Receipt {
    let publisher = publisher.clone();
    let published =
        tokio::spawn(async move { tokio::time::timeout(WAIT, publisher.oneshot(message)).await });
    match published.await {
        Ok(Ok(Ok(receipt))) => receipt,
        Ok(Ok(Err(error))) => panic!("publishing failed: {error}"),
        Ok(Err(_)) => panic!("publishing took longer than {WAIT:?}"),
        Err(panic) => std::panic::resume_unwind(panic.into_panic()),
    }
}

mod generic {
    use super::*;

    #[test]
    fn model_and_generic_handles_are_send_sync_clone() {
        assert_send_sync_clone::<Message>();
        assert_send_sync_clone::<Receipt>();
        assert_send_sync_clone::<tower_mq::Requester<tower_mq::memory::Publisher>>();
        assert_send_sync_clone::<tower_mq::FanOut<tower_mq::memory::Publisher>>();
        assert_send_sync_clone::<tower_mq::Fallback<tower_mq::memory::Publisher>>();
        assert_send::<tower_mq::Delivery>();
        assert_send::<tower_mq::Error>();
    }
}

mod memory {
    use super::*;

    #[test]
    fn memory_handles_are_send_sync_clone() {
        assert_send_sync_clone::<tower_mq::memory::Broker>();
        assert_send_sync_clone::<tower_mq::memory::Publisher>();
        assert_send::<tower_mq::memory::Consumer>();
    }
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::harness::redis::config;
    use tower_mq::redis::{
        Config, PubSubConsumer, PubSubPublisher, StreamBatchPublisher, StreamConsumer,
        StreamPublisher,
    };

    #[test]
    fn redis_handles_are_send_sync_clone() {
        assert_send_sync_clone::<Config>();
        assert_send_sync_clone::<StreamPublisher>();
        assert_send_sync_clone::<StreamBatchPublisher>();
        assert_send_sync_clone::<PubSubPublisher>();
        assert_send_sync_clone::<tower_mq::Requester<StreamPublisher>>();
        assert_send::<StreamConsumer>();
        assert_send::<PubSubConsumer>();
    }

    #[tokio::test]
    async fn redis_stream_publisher_in_a_box_clone_sync_service() {
        let publisher = StreamPublisher::connect(&config().await)
            .await
            .expect("Redis answered a moment ago");
        let publisher = SharedPublisher::new(publisher);
        let stream = unique("boxed");
        let receipt = publish_from_another_task(&publisher, Message::new(&stream, "x")).await;
        assert!(
            receipt.destination() == stream && receipt.is_confirmed(),
            "{receipt:?}"
        );
    }
}

#[cfg(feature = "rabbitmq")]
mod rabbitmq {
    use super::*;
    use crate::harness::rabbitmq::{connect, url};
    use tower_mq::rabbitmq::{
        BatchPublisher, Config, Connection, Consumer, Publisher, Queue, Requester, Routing,
        Topology,
    };

    #[test]
    fn rabbitmq_handles_are_send_sync_clone() {
        assert_send_sync_clone::<Config>();
        assert_send_sync_clone::<Connection>();
        assert_send_sync_clone::<Publisher>();
        assert_send_sync_clone::<BatchPublisher>();
        assert_send_sync_clone::<Requester>();
        assert_send::<Consumer>();
    }

    #[tokio::test]
    async fn rabbitmq_publisher_in_a_box_clone_sync_service() {
        let queue = unique("boxed");
        let config = Config::new(url())
            .routing(Routing::DefaultExchange)
            .topology(
                Topology::new().queue(Queue::classic(&queue).expires(Duration::from_secs(60))),
            );
        let connection = connect(config).await;
        let publisher = SharedPublisher::new(connection.publisher());
        let receipt = publish_from_another_task(&publisher, Message::new(&queue, "x")).await;
        assert!(receipt.routing_key() == Some(queue.as_str()), "{receipt:?}");
    }
}

#[cfg(feature = "nats")]
mod nats {
    use super::*;
    use crate::harness::nats::url;
    use tower_mq::nats::config::{Storage, StreamConfig};
    use tower_mq::nats::jetstream::{self, JetStream};
    use tower_mq::nats::{BatchPublisher, Config, Connection, Publisher, Requester, Subscriber};

    async fn connect() -> Connection {
        crate::harness::nats::connect(Config::new(url())).await
    }

    #[test]
    fn nats_handles_are_send_sync_clone() {
        assert_send_sync_clone::<Config>();
        assert_send_sync_clone::<Connection>();
        assert_send_sync_clone::<Publisher>();
        assert_send_sync_clone::<BatchPublisher>();
        assert_send_sync_clone::<Requester>();
        assert_send_sync_clone::<JetStream>();
        assert_send_sync_clone::<jetstream::Publisher>();
        assert_send_sync_clone::<jetstream::BatchPublisher>();
        assert_send::<Subscriber>();
        assert_send::<jetstream::Consumer>();
    }

    #[tokio::test]
    async fn nats_core_publisher_in_a_box_clone_sync_service() {
        let connection = connect().await;
        let publisher = SharedPublisher::new(Publisher::new(&connection));
        let subject = unique("boxed");
        let receipt = publish_from_another_task(&publisher, Message::new(&subject, "x")).await;
        assert!(
            receipt.destination() == subject && receipt.guarantee() == Guarantee::Forwarded,
            "{receipt:?}"
        );
    }

    #[tokio::test]
    async fn jetstream_publisher_in_a_box_clone_sync_service() {
        let connection = connect().await;
        let js = JetStream::new(&connection);
        let name = unique("boxed");
        let stream = name.replace('-', "_");
        js.declare_stream(
            &StreamConfig::new(&stream, [format!("{name}.>")]).storage(Storage::Memory),
        )
        .await
        .unwrap_or_else(|error| panic!("declaring stream {stream}: {error}"));
        let publisher = SharedPublisher::new(js.publisher());
        let receipt =
            publish_from_another_task(&publisher, Message::new(format!("{name}.x"), "x")).await;
        assert!(
            receipt.destination() == stream && receipt.position() == Some(&Position::Sequence(1)),
            "{receipt:?}"
        );
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use super::*;
    use tower_mq::kafka::{Admin, Config, Consumer, Publisher};

    #[test]
    fn kafka_handles_are_send_sync_clone() {
        assert_send_sync_clone::<Config>();
        assert_send_sync_clone::<Publisher>();
        assert_send_sync_clone::<tower_mq::Requester<Publisher>>();
        // An admin client is shared by reference (or in an `Arc`): it holds no
        // per-caller state to clone.
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Admin>();
        assert_send::<Consumer>();
    }
}

#[cfg(feature = "zeromq")]
mod zeromq {
    use super::*;
    use tower_mq::zeromq::{Config, Consumer, Publisher, Replies, Requester};

    #[test]
    fn zeromq_handles_are_send_sync_clone() {
        assert_send_sync_clone::<Config>();
        assert_send_sync_clone::<Publisher>();
        assert_send_sync_clone::<Requester>();
        assert_send_sync_clone::<Replies>();
        assert_send::<Consumer>();
    }
}
