//! One fixture per broker: how the bare client and tower-mq publish and consume on a
//! fresh destination. Bare clients do the same work as tower-mq's (the same confirms,
//! the same acks), as an ordinary program using that client would write it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tower::BoxError;
use tower_mq::Message;

use crate::lane::{
    batched_publish, env, service_publish, service_receive, stack_publish, stack_receive,
    stack_receive_with, unique, BoxFut, Client, Fixture, Lane, Publish, PublishBatch, Receive,
    Tracker,
};

fn receive_with<F, Fut>(run: F) -> Receive
where
    F: FnOnce(Arc<Tracker>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Box::new(move |tracker| Box::pin(run(tracker)))
}

fn publish_with<F, Fut>(publish: F) -> Publish
where
    F: Fn(Bytes) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Box::new(move |body| Box::pin(publish(body)))
}

fn batch_with<F, Fut>(publish: F) -> PublishBatch
where
    F: Fn(Vec<Bytes>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    Box::new(move |bodies| Box::pin(publish(bodies)))
}

fn unsupported(what: &str) -> BoxError {
    format!("{what}: no such client here").into()
}

// ---- memory ---------------------------------------------------------------------------------

/// The in-memory broker. It has no client of its own: `bare` is a tokio mpsc channel
/// carrying the same payloads, the floor any in-process broker is measured against.
pub struct Memory {
    broker: tower_mq::memory::Broker,
}

impl Memory {
    pub fn new() -> Self {
        Memory {
            broker: tower_mq::memory::Broker::builder()
                .capacity(10_000_000)
                .build(),
        }
    }
}

impl Fixture for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn durable(&self) -> bool {
        true
    }

    fn no_batch(&self, _: Client) -> Option<&'static str> {
        Some("the in-memory broker has no batch path")
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        let broker = self.broker.clone();
        Box::pin(async move {
            if publisher == Client::Bare {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
                let publish = publish_with(move |body| {
                    let sent = tx.send(body).map_err(|_| BoxError::from("receiver gone"));
                    std::future::ready(sent)
                });
                let receive = receive_with(move |tracker| async move {
                    while !tracker.complete() {
                        let body = rx.recv().await.ok_or("channel closed")?;
                        tracker.record(&body);
                    }
                    Ok(())
                });
                return Ok(Lane {
                    publish,
                    publish_alone: None,
                    publish_batch: None,
                    receive,
                    cleanup: None,
                });
            }
            let topic = unique("bench");
            let subscribed = broker.consumer(&topic, "bench")?;
            let receive = match consumer {
                Client::Stack => stack_receive("memory", subscribed),
                _ => service_receive(subscribed),
            };
            // Shared by every message: no allocation per message for its destination.
            let topic: Arc<str> = Arc::from(topic.as_str());
            let message = move |body| Message::new(&topic, body);
            let publish = match publisher {
                Client::Stack => stack_publish("memory", broker.publisher(), message),
                Client::Service => service_publish(broker.publisher(), message),
                _ => return Err(unsupported("memory batched")),
            };
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch: None,
                receive,
                cleanup: None,
            })
        })
    }
}

// ---- RabbitMQ -------------------------------------------------------------------------------

/// RabbitMQ: durable classic queue, persistent messages, publisher confirms with
/// `mandatory` (tower-mq's defaults), manual acks with a prefetch of 32 on both sides.
pub struct RabbitMq {
    url: String,
}

impl RabbitMq {
    pub fn new() -> Self {
        RabbitMq {
            url: env(
                "TOWER_MQ_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:15673/%2f",
            ),
        }
    }
}

impl Fixture for RabbitMq {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    fn durable(&self) -> bool {
        true
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        matches!(client, Client::Service | Client::Stack)
            .then_some("batches are the batched client's")
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use lapin::options::{
            BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
            ConfirmSelectOptions,
        };
        use lapin::types::FieldTable;
        use lapin::{BasicProperties, Confirmation, ConnectionProperties};
        use tower_mq::rabbitmq::{Config, Connection, Queue, Routing, Topology};

        let url = self.url.clone();
        Box::pin(async move {
            let queue = unique("bench");
            let connection = Connection::connect(
                &Config::new(&url)
                    .routing(Routing::DefaultExchange)
                    .topology(
                        Topology::new()
                            .queue(Queue::classic(&queue).expires(Duration::from_secs(60))),
                    ),
            )
            .await
            .map_err(|e| {
                format!("rabbitmq at {url} (TOWER_MQ_AMQP_URL; scripts/bench starts it): {e}")
            })?;
            let plain = lapin::Connection::connect(&url, ConnectionProperties::default()).await?;

            let receive = match consumer {
                Client::Bare => {
                    let channel = plain.create_channel().await?;
                    channel.basic_qos(32, BasicQosOptions::default()).await?;
                    let mut deliveries = channel
                        .basic_consume(
                            queue.as_str().into(),
                            "bench".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                    receive_with(move |tracker| async move {
                        let _channel = channel;
                        while !tracker.complete() {
                            let delivery = deliveries.next().await.ok_or("consumer closed")??;
                            tracker.record(&delivery.data);
                            delivery.ack(BasicAckOptions::default()).await?;
                        }
                        Ok(())
                    })
                }
                Client::Stack => stack_receive("rabbitmq", connection.consumer(&queue).await?),
                _ => service_receive(connection.consumer(&queue).await?),
            };

            let (publish, publish_batch) = {
                // Shared by every message: no allocation per message for its destination.
                let key: Arc<str> = Arc::from(queue.as_str());
                let message = move |body| Message::new(&key, body);
                match publisher {
                    Client::Bare => {
                        let channel = Arc::new(plain.create_channel().await?);
                        channel
                            .confirm_select(ConfirmSelectOptions::default())
                            .await?;
                        let options = BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        };
                        let props = BasicProperties::default().with_delivery_mode(2);
                        let (one, q) = (channel.clone(), queue.clone());
                        let one_props = props.clone();
                        let publish = publish_with(move |body: Bytes| {
                            let (channel, q, props) = (one.clone(), q.clone(), one_props.clone());
                            async move {
                                let confirm = channel
                                    .basic_publish(
                                        "".into(),
                                        q.as_str().into(),
                                        options,
                                        &body,
                                        props,
                                    )
                                    .await?
                                    .await?;
                                confirmed(confirm)
                            }
                        });
                        let q = queue.clone();
                        let batch = batch_with(move |bodies: Vec<Bytes>| {
                            let (channel, q, props) = (channel.clone(), q.clone(), props.clone());
                            async move {
                                let mut pending = Vec::with_capacity(bodies.len());
                                for body in &bodies {
                                    pending.push(
                                        channel
                                            .basic_publish(
                                                "".into(),
                                                q.as_str().into(),
                                                options,
                                                body,
                                                props.clone(),
                                            )
                                            .await?,
                                    );
                                }
                                for confirm in futures_util::future::join_all(pending).await {
                                    confirmed(confirm?)?;
                                }
                                Ok(())
                            }
                        });
                        (publish, Some(batch))
                    }
                    Client::Service => (service_publish(connection.publisher(), message), None),
                    Client::Stack => (
                        stack_publish("rabbitmq", connection.publisher(), message),
                        None,
                    ),
                    Client::Batched => (
                        batched_publish(connection.publisher().batch(), message),
                        None,
                    ),
                }
            };
            fn confirmed(confirm: Confirmation) -> Result<(), BoxError> {
                match confirm {
                    Confirmation::Ack(None) => Ok(()),
                    other => Err(format!("rabbitmq did not take the message: {other:?}").into()),
                }
            }
            let cleanup: BoxFut<()> = Box::pin(async move {
                connection.close();
                let _ = plain.close(200, "bench done".into()).await;
            });
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch,
                receive,
                cleanup: Some(cleanup),
            })
        })
    }
}

// ---- Redis ----------------------------------------------------------------------------------

/// Redis Streams: XADD of the payload field; a consumer group read 100 at a time and
/// acked with one XACK per read (bare), tower-mq's stream consumer reading 100 at a
/// time (service, stack). `serve` keeps up to 100 deliveries unsettled, as many as the
/// bare consumer holds between its read and its XACK (its default, 16, settles at most
/// 16 per XACK round trip: about half the bare consumer's end to end).
pub struct RedisStreams {
    url: String,
}

impl RedisStreams {
    pub fn new() -> Self {
        RedisStreams {
            url: env("TOWER_MQ_REDIS_URL", "redis://127.0.0.1:16379"),
        }
    }
}

async fn redis_connection(url: &str) -> Result<redis::aio::ConnectionManager, BoxError> {
    let client = redis::Client::open(url)?;
    Ok(redis::aio::ConnectionManager::new(client)
        .await
        .map_err(|e| {
            format!("redis at {url} (TOWER_MQ_REDIS_URL; scripts/bench starts it): {e}")
        })?)
}

impl Fixture for RedisStreams {
    fn name(&self) -> &'static str {
        "redis-streams"
    }

    fn durable(&self) -> bool {
        true
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        matches!(client, Client::Service | Client::Stack)
            .then_some("batches are the batched client's")
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use tower_mq::redis::{Config, StreamConsumer, StreamConsumerConfig, StreamPublisher};
        let url = self.url.clone();
        Box::pin(async move {
            let stream = unique("bench");
            let config = Config::new(&url);
            // Read 100 entries at a time, as the bare consumer does.
            let group = StreamConsumerConfig::new(&stream, "bench")
                .batch_size(100)
                .no_dead_letter();
            StreamConsumer::declare_group(&config, &group)
                .await
                .map_err(|e| {
                    format!("redis at {url} (TOWER_MQ_REDIS_URL; scripts/bench starts it): {e}")
                })?;
            let mut conn = redis_connection(&url).await?;

            let receive = match consumer {
                Client::Bare => {
                    let mut reader = redis::Client::open(url.as_str())?
                        .get_multiplexed_async_connection_with_config(
                            &redis::AsyncConnectionConfig::new()
                                .set_response_timeout(Some(Duration::from_secs(10))),
                        )
                        .await?;
                    let stream = stream.clone();
                    receive_with(move |tracker| async move {
                        let options = redis::streams::StreamReadOptions::default()
                            .group("bench", "bare")
                            .count(100)
                            .block(1000);
                        while !tracker.complete() {
                            let reply: redis::streams::StreamReadReply =
                                redis::AsyncCommands::xread_options(
                                    &mut reader,
                                    &[stream.as_str()],
                                    &[">"],
                                    &options,
                                )
                                .await?;
                            let mut ids = Vec::new();
                            for key in reply.keys {
                                for entry in key.ids {
                                    match entry.map.get("payload") {
                                        Some(redis::Value::BulkString(body)) => {
                                            tracker.record(body)
                                        }
                                        _ => {
                                            return Err(format!(
                                                "entry {} has no payload",
                                                entry.id
                                            )
                                            .into())
                                        }
                                    }
                                    ids.push(entry.id);
                                }
                            }
                            if !ids.is_empty() {
                                let _: u64 =
                                    redis::AsyncCommands::xack(&mut reader, &stream, "bench", &ids)
                                        .await?;
                            }
                        }
                        Ok(())
                    })
                }
                Client::Stack => {
                    // As many deliveries unacked at once as the bare consumer has.
                    stack_receive_with(
                        "redis",
                        StreamConsumer::subscribe(&config, group).await?,
                        100,
                    )
                }
                _ => service_receive(StreamConsumer::subscribe(&config, group).await?),
            };

            // Shared by every message: no allocation per message for its destination.
            let key: Arc<str> = Arc::from(stream.as_str());
            let message = move |body| Message::new(&key, body);
            let (publish, publish_batch) = match publisher {
                Client::Bare => {
                    let (one, s) = (conn.clone(), stream.clone());
                    let publish = publish_with(move |body: Bytes| {
                        let (mut conn, s) = (one.clone(), s.clone());
                        async move {
                            let _: String = redis::cmd("XADD")
                                .arg(&s)
                                .arg("*")
                                .arg("payload")
                                .arg(body.as_ref())
                                .query_async(&mut conn)
                                .await?;
                            Ok(())
                        }
                    });
                    let (many, s) = (conn.clone(), stream.clone());
                    let batch = batch_with(move |bodies: Vec<Bytes>| {
                        let (mut conn, s) = (many.clone(), s.clone());
                        async move {
                            let mut pipe = redis::pipe();
                            for body in &bodies {
                                pipe.cmd("XADD")
                                    .arg(&s)
                                    .arg("*")
                                    .arg("payload")
                                    .arg(body.as_ref());
                            }
                            let ids: Vec<String> = pipe.query_async(&mut conn).await?;
                            if ids.len() != bodies.len() {
                                return Err("XADD pipeline: fewer ids than entries".into());
                            }
                            Ok(())
                        }
                    });
                    (publish, Some(batch))
                }
                Client::Service => (
                    service_publish(StreamPublisher::connect(&config).await?, message),
                    None,
                ),
                Client::Stack => (
                    stack_publish("redis", StreamPublisher::connect(&config).await?, message),
                    None,
                ),
                Client::Batched => (
                    batched_publish(StreamPublisher::connect(&config).await?.batch(), message),
                    None,
                ),
            };
            let cleanup: BoxFut<()> = Box::pin(async move {
                let _: Result<u64, _> = redis::cmd("DEL").arg(&stream).query_async(&mut conn).await;
            });
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch,
                receive,
                cleanup: Some(cleanup),
            })
        })
    }
}

/// Redis Pub/Sub: PUBLISH and SUBSCRIBE, at most once on both sides.
pub struct RedisPubSub {
    url: String,
}

impl RedisPubSub {
    pub fn new() -> Self {
        RedisPubSub {
            url: env("TOWER_MQ_REDIS_URL", "redis://127.0.0.1:16379"),
        }
    }
}

impl Fixture for RedisPubSub {
    fn name(&self) -> &'static str {
        "redis-pubsub"
    }

    fn durable(&self) -> bool {
        false
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        match client {
            Client::Bare => None,
            Client::Batched => Some("tower-mq has no Pub/Sub batch publisher"),
            _ => Some("batches are the batched client's"),
        }
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use tower_mq::redis::{Config, PubSubConsumer, PubSubPublisher, Subscription};
        let url = self.url.clone();
        Box::pin(async move {
            let channel = unique("bench");
            let config = Config::new(&url);
            let conn = redis_connection(&url).await?;
            let receive = match consumer {
                Client::Bare => {
                    let mut pubsub = redis::Client::open(url.as_str())?
                        .get_async_pubsub()
                        .await?;
                    pubsub.subscribe(&channel).await?;
                    receive_with(move |tracker| async move {
                        let mut messages = pubsub.into_on_message();
                        while !tracker.complete() {
                            let message = messages.next().await.ok_or("subscription closed")?;
                            tracker.record(message.get_payload_bytes());
                        }
                        Ok(())
                    })
                }
                Client::Stack => stack_receive(
                    "redis",
                    PubSubConsumer::subscribe(&config, [Subscription::channel(&channel)]).await?,
                ),
                _ => service_receive(
                    PubSubConsumer::subscribe(&config, [Subscription::channel(&channel)]).await?,
                ),
            };
            // Shared by every message: no allocation per message for its destination.
            let key: Arc<str> = Arc::from(channel.as_str());
            let message = move |body| Message::new(&key, body);
            let (publish, publish_batch) = match publisher {
                Client::Bare => {
                    let (one, c) = (conn.clone(), channel.clone());
                    let publish = publish_with(move |body: Bytes| {
                        let (mut conn, c) = (one.clone(), c.clone());
                        async move {
                            let _: u64 = redis::cmd("PUBLISH")
                                .arg(&c)
                                .arg(body.as_ref())
                                .query_async(&mut conn)
                                .await?;
                            Ok(())
                        }
                    });
                    let (many, c) = (conn.clone(), channel.clone());
                    let batch = batch_with(move |bodies: Vec<Bytes>| {
                        let (mut conn, c) = (many.clone(), c.clone());
                        async move {
                            let mut pipe = redis::pipe();
                            for body in &bodies {
                                pipe.cmd("PUBLISH").arg(&c).arg(body.as_ref());
                            }
                            let _: Vec<u64> = pipe.query_async(&mut conn).await?;
                            Ok(())
                        }
                    });
                    (publish, Some(batch))
                }
                Client::Service => (
                    service_publish(PubSubPublisher::connect(&config).await?, message),
                    None,
                ),
                Client::Stack => (
                    stack_publish("redis", PubSubPublisher::connect(&config).await?, message),
                    None,
                ),
                Client::Batched => return Err(unsupported("redis-pubsub batched")),
            };
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch,
                receive,
                cleanup: None,
            })
        })
    }
}

// ---- Kafka ----------------------------------------------------------------------------------

/// Kafka on librdkafka's mock cluster (in process, both sides): tower-mq's producer
/// configuration (idempotent, acks=all, linger 5 ms) for the bare producer too, a
/// consumer group per destination (a group that outlived its last run would wait for
/// its old members to time out) whose offsets are stored after each message was handled.
pub struct Kafka {
    cluster: crate::kafka_mock_cluster::MockKafka,
}

impl Kafka {
    pub fn new() -> Self {
        Kafka {
            cluster: crate::kafka_mock_cluster::MockKafka::start(1),
        }
    }
}

impl Fixture for Kafka {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn durable(&self) -> bool {
        true
    }

    /// The mock cluster keeps only the newest 5 MB of a partition (librdkafka's mock
    /// limit) and drops older records unread: at most 4 MB per measurement.
    fn max_bytes(&self) -> Option<u64> {
        Some(4 * 1024 * 1024)
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        match client {
            Client::Bare => None,
            Client::Batched => Some("the Kafka producer batches by itself (linger); tower-mq has no batch publisher for it"),
            _ => Some("batches are the batched client's"),
        }
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use rdkafka::consumer::{Consumer as _, StreamConsumer};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        use rdkafka::Message as _;
        use tower_mq::kafka::{Config, Consumer, ConsumerConfig, Publisher};

        let topic = unique("bench");
        self.cluster.create_topic(&topic, 1);
        // Fetches answer within 10 ms: librdkafka's 500 ms default would be the latency.
        let config = Config::new(self.cluster.bootstrap_servers())
            .set("reconnect.backoff.max.ms", "100")
            .set_consumer("fetch.wait.max.ms", "10");
        Box::pin(async move {
            let receive = match consumer {
                Client::Bare => {
                    let plain: StreamConsumer = config.consumer_config(&topic).create()?;
                    plain.subscribe(&[topic.as_str()])?;
                    for _ in 0..100 {
                        let _ =
                            tokio::time::timeout(Duration::from_millis(100), plain.recv()).await;
                        if plain.assignment().is_ok_and(|a| a.count() > 0) {
                            break;
                        }
                    }
                    receive_with(move |tracker| async move {
                        while !tracker.complete() {
                            let message = plain.recv().await?;
                            tracker.record(message.payload().unwrap_or_default());
                            plain.store_offset_from_message(&message)?;
                        }
                        Ok(())
                    })
                }
                _ => {
                    let mut subscribed =
                        Consumer::subscribe(&config, ConsumerConfig::new(&topic, &topic)).await?;
                    subscribed
                        .wait_for_assignment(Duration::from_secs(10))
                        .await?;
                    if consumer == Client::Stack {
                        stack_receive("kafka", subscribed)
                    } else {
                        service_receive(subscribed)
                    }
                }
            };
            // Shared by every message: no allocation per message for its destination.
            let key: Arc<str> = Arc::from(topic.as_str());
            let message = move |body| Message::new(&key, body);
            let (publish, publish_batch) = match publisher {
                Client::Bare => {
                    let producer: FutureProducer = config.producer_config().create()?;
                    let (one, t) = (producer.clone(), topic.clone());
                    let publish = publish_with(move |body: Bytes| {
                        let (producer, t) = (one.clone(), t.clone());
                        async move {
                            producer
                                .send(
                                    FutureRecord::<(), _>::to(&t).payload(body.as_ref()),
                                    Duration::from_secs(5),
                                )
                                .await
                                .map_err(|(e, _)| e)?;
                            Ok(())
                        }
                    });
                    let t = topic.clone();
                    let batch = batch_with(move |bodies: Vec<Bytes>| {
                        let (producer, t) = (producer.clone(), t.clone());
                        async move {
                            let sends = bodies.iter().map(|body| {
                                producer.send(
                                    FutureRecord::<(), _>::to(&t).payload(body.as_ref()),
                                    Duration::from_secs(5),
                                )
                            });
                            for sent in futures_util::future::join_all(sends).await {
                                sent.map_err(|(e, _)| e)?;
                            }
                            Ok(())
                        }
                    });
                    (publish, Some(batch))
                }
                Client::Service => (
                    service_publish(Publisher::connect(&config).await?, message),
                    None,
                ),
                Client::Stack => (
                    stack_publish("kafka", Publisher::connect(&config).await?, message),
                    None,
                ),
                Client::Batched => return Err(unsupported("kafka batched")),
            };
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch,
                receive,
                cleanup: None,
            })
        })
    }
}

// ---- NATS -----------------------------------------------------------------------------------

fn nats_url() -> String {
    env("TOWER_MQ_NATS_URL", "nats://127.0.0.1:14222")
}

/// How many messages a core NATS subscription holds before the client drops what
/// arrives (a slow consumer): a whole measurement's. A publisher that promises nothing
/// (fire-and-forget) can run ahead of the subscriber that checks what arrived, on two
/// cores, by more than the clients' default of 65,536; tower-mq's and the bare
/// subscribers get the same depth.
const NATS_SUBSCRIPTION_CAPACITY: usize = 1 << 20;

/// The bare NATS client, connected with the subscription depth tower-mq's gets.
async fn nats_bare_connect(url: &str) -> Result<async_nats::Client, BoxError> {
    async_nats::ConnectOptions::new()
        .subscription_capacity(NATS_SUBSCRIPTION_CAPACITY)
        .connect(url)
        .await
        .map_err(|e| nats_unreachable(url, e))
}

async fn nats_connect(url: &str) -> Result<tower_mq::nats::Connection, BoxError> {
    let config = tower_mq::nats::Config::new(url).subscription_capacity(NATS_SUBSCRIPTION_CAPACITY);
    tower_mq::nats::Connection::connect(&config)
        .await
        .map_err(|e| nats_unreachable(url, e))
}

fn nats_unreachable(url: &str, error: impl std::fmt::Display) -> BoxError {
    format!("nats at {url} (TOWER_MQ_NATS_URL; scripts/bench starts it): {error}").into()
}

/// The bare NATS client's proof that the server processed what it sent: a message to
/// an inbox only it subscribes to, waited for (what tower-mq's receipt waits for).
#[derive(Clone)]
struct Loopback {
    client: async_nats::Client,
    inbox: async_nats::Subject,
    /// One round trip at a time: a reply is then the caller's own.
    returned: Arc<tokio::sync::Mutex<async_nats::Subscriber>>,
}

impl Loopback {
    async fn round_trip(&self) -> Result<(), BoxError> {
        let mut returned = self.returned.lock().await;
        self.client
            .publish(self.inbox.clone(), Bytes::new())
            .await?;
        tokio::time::timeout(Duration::from_secs(10), returned.next())
            .await
            .map_err(|_| "the loopback message never came back")?
            .ok_or("the loopback subscription closed")?;
        Ok(())
    }
}

/// Core NATS. `nats`: with many publishes in flight, the bare client publishes one
/// message and then flushes (which waits until the client wrote the message to its
/// socket): what an ordinary program does, and less than tower-mq's default receipt
/// promises, which says the server processed the message (a loopback round trip,
/// shared by every publish waiting at once). A message published alone
/// (`publish_seq`, the latency modes) gets the round trip its receipt needs in
/// tower-mq, and the bare client makes the same one: a loopback message on an inbox
/// of its own, waited for. Its batch does the same work as tower-mq's batch: the
/// publishes, then one loopback round trip. `nats-sent`: tower-mq's
/// fire-and-forget publishers against the bare client doing the same:
/// `Publisher::fire_and_forget` ("handed to the client") against a publish without a
/// flush, `BatchPublisher::fire_and_forget` (written to the socket) against a batch of
/// publishes and a flush.
pub struct Nats {
    /// Publish with [`Publisher::fire_and_forget`](tower_mq::nats::Publisher::fire_and_forget).
    pub fire_and_forget: bool,
}

impl Fixture for Nats {
    fn name(&self) -> &'static str {
        if self.fire_and_forget {
            "nats-sent"
        } else {
            "nats"
        }
    }

    fn durable(&self) -> bool {
        false
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        matches!(client, Client::Service | Client::Stack)
            .then_some("batches are the batched client's")
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use tower_mq::nats::{BatchPublisher, Publisher, Subscriber};
        let fire_and_forget = self.fire_and_forget;
        Box::pin(async move {
            let url = nats_url();
            let connection = nats_connect(&url).await?;
            let tower_mq_publisher = || {
                let publisher = Publisher::new(&connection);
                if fire_and_forget {
                    publisher.fire_and_forget()
                } else {
                    publisher
                }
            };
            let subject = unique("bench");
            let receive = match consumer {
                Client::Bare => {
                    let client = nats_bare_connect(&url).await?;
                    let mut subscription = client.subscribe(subject.clone()).await?;
                    // The subscription is on its own connection: only a message that
                    // comes back through the server shows the server has it (a flush
                    // only writes it to the socket, and a publish on the other
                    // connection could overtake it).
                    let probe = format!("{subject}.probe");
                    let mut probed = client.subscribe(probe.clone()).await?;
                    client.publish(probe, Bytes::new()).await?;
                    tokio::time::timeout(Duration::from_secs(5), probed.next())
                        .await
                        .map_err(|_| "the NATS server never echoed the subscriber's probe")?
                        .ok_or("the probe subscription closed")?;
                    receive_with(move |tracker| async move {
                        let _client = client;
                        while !tracker.complete() {
                            let message = subscription.next().await.ok_or("subscription closed")?;
                            tracker.record(&message.payload);
                        }
                        Ok(())
                    })
                }
                Client::Stack => {
                    stack_receive("nats", Subscriber::subscribe(&connection, &subject).await?)
                }
                _ => service_receive(Subscriber::subscribe(&connection, &subject).await?),
            };
            // Shared by every message: no allocation per message for its destination.
            let key: Arc<str> = Arc::from(subject.as_str());
            let message = move |body| Message::new(&key, body);
            let (publish, publish_alone, publish_batch) = match publisher {
                Client::Bare => {
                    let client = nats_bare_connect(&url).await?;
                    // The client's own subject type, made once: a clone per message only
                    // counts a reference (a `String` would be copied into one each time).
                    let subject = async_nats::Subject::from(subject.as_str());
                    // Shared, not cloned per message: a client's clone copies several
                    // handles, where a program's publish loop borrows the one it has.
                    let (one, s) = (Arc::new(client.clone()), subject.clone());
                    // Like for like with tower-mq's fire-and-forget receipt ("handed to the
                    // client"); otherwise written to the socket. Two closures, so that the
                    // fire-and-forget future does not carry a flush it never makes.
                    let publish = if fire_and_forget {
                        publish_with(move |body: Bytes| {
                            let (client, s) = (one.clone(), s.clone());
                            async move {
                                client.publish(s, body).await?;
                                Ok(())
                            }
                        })
                    } else {
                        publish_with(move |body: Bytes| {
                            let (client, s) = (one.clone(), s.clone());
                            async move {
                                client.publish(s, body).await?;
                                client.flush().await?;
                                Ok(())
                            }
                        })
                    };
                    // For `nats`, the proof tower-mq's receipt gives: a message to an inbox
                    // only this client subscribes to comes back once the server processed
                    // everything the connection sent before it.
                    let loopback = if fire_and_forget {
                        None
                    } else {
                        let inbox = client.new_inbox();
                        let returned = client.subscribe(inbox.clone()).await?;
                        Some(Loopback {
                            client: client.clone(),
                            inbox: inbox.into(),
                            returned: Arc::new(tokio::sync::Mutex::new(returned)),
                        })
                    };
                    // A message published alone, with the round trip tower-mq's receipt
                    // makes for it.
                    let alone = loopback.clone().map(|loopback| {
                        let s = subject.clone();
                        publish_with(move |body: Bytes| {
                            let (loopback, s) = (loopback.clone(), s.clone());
                            async move {
                                loopback.client.publish(s, body).await?;
                                loopback.round_trip().await
                            }
                        })
                    });
                    let s = subject.clone();
                    let batch = batch_with(move |bodies: Vec<Bytes>| {
                        let (client, s, loopback) = (client.clone(), s.clone(), loopback.clone());
                        async move {
                            for body in bodies {
                                client.publish(s.clone(), body).await?;
                            }
                            match loopback {
                                Some(loopback) => loopback.round_trip().await?,
                                None => client.flush().await?,
                            }
                            Ok(())
                        }
                    });
                    (publish, alone, Some(batch))
                }
                Client::Service => (service_publish(tower_mq_publisher(), message), None, None),
                Client::Stack => (
                    stack_publish("nats", tower_mq_publisher(), message),
                    None,
                    None,
                ),
                Client::Batched => {
                    let batch_publisher = BatchPublisher::new(&connection);
                    let batch_publisher = if fire_and_forget {
                        batch_publisher.fire_and_forget()
                    } else {
                        batch_publisher
                    };
                    (batched_publish(batch_publisher, message), None, None)
                }
            };
            Ok(Lane {
                publish,
                publish_alone,
                publish_batch,
                receive,
                cleanup: None,
            })
        })
    }
}

/// JetStream: a file-backed stream (tower-mq's default), every publish awaiting the
/// stream's ack and carrying `Nats-Msg-Id` (as tower-mq's does), a durable pull
/// consumer with explicit acks that wait for the server (`double_ack`, as tower-mq's).
pub struct JetStream;

impl Fixture for JetStream {
    fn name(&self) -> &'static str {
        "nats-jetstream"
    }

    fn durable(&self) -> bool {
        true
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        matches!(client, Client::Service | Client::Stack)
            .then_some("batches are the batched client's")
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use async_nats::jetstream::consumer::pull;
        use tower_mq::nats::config::{ConsumerConfig, StreamConfig};
        Box::pin(async move {
            let url = nats_url();
            let connection = nats_connect(&url).await?;
            let js = tower_mq::nats::jetstream::JetStream::new(&connection);
            let name = unique("BENCH");
            let subject = format!("{name}.messages");
            js.declare_stream(&StreamConfig::new(&name, [format!("{name}.>")]))
                .await?;
            let durable = ConsumerConfig::new("bench");
            js.declare_consumer(&name, &durable).await?;
            let context = js.context().clone();

            let receive = match consumer {
                Client::Bare => {
                    let plain = async_nats::jetstream::new(nats_bare_connect(&url).await?);
                    let consumer: pull::Stream = plain
                        .get_stream(&name)
                        .await?
                        .get_consumer::<pull::Config>("bench")
                        .await?
                        .messages()
                        .await?;
                    receive_with(move |tracker| async move {
                        let mut messages = consumer;
                        while !tracker.complete() {
                            let message = messages.next().await.ok_or("consumer closed")??;
                            tracker.record(&message.payload);
                            message.double_ack().await?;
                        }
                        Ok(())
                    })
                }
                Client::Stack => stack_receive("nats", js.consumer(&name, &durable).await?),
                _ => service_receive(js.consumer(&name, &durable).await?),
            };
            // Shared by every message: no allocation per message for its destination.
            let key: Arc<str> = Arc::from(subject.as_str());
            let message = move |body| Message::new(&key, body);
            let (publish, publish_batch) = match publisher {
                Client::Bare => {
                    let plain = async_nats::jetstream::new(nats_bare_connect(&url).await?);
                    // Made once: a clone per message only counts a reference.
                    let subject = async_nats::Subject::from(subject.as_str());
                    // Shared, not cloned per message (see the core NATS fixture).
                    let (one, s) = (Arc::new(plain.clone()), subject.clone());
                    let publish = publish_with(move |body: Bytes| {
                        let (plain, s) = (one.clone(), s.clone());
                        async move {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert("Nats-Msg-Id", nuid::next().as_str());
                            plain.publish_with_headers(s, headers, body).await?.await?;
                            Ok(())
                        }
                    });
                    let s = subject.clone();
                    let batch = batch_with(move |bodies: Vec<Bytes>| {
                        let (plain, s) = (plain.clone(), s.clone());
                        async move {
                            let mut acks = Vec::with_capacity(bodies.len());
                            for body in bodies {
                                let mut headers = async_nats::HeaderMap::new();
                                headers.insert("Nats-Msg-Id", nuid::next().as_str());
                                acks.push(
                                    plain.publish_with_headers(s.clone(), headers, body).await?,
                                );
                            }
                            for ack in futures_util::future::join_all(
                                acks.into_iter().map(std::future::IntoFuture::into_future),
                            )
                            .await
                            {
                                ack?;
                            }
                            Ok(())
                        }
                    });
                    (publish, Some(batch))
                }
                Client::Service => (service_publish(js.publisher(), message), None),
                Client::Stack => (stack_publish("nats", js.publisher(), message), None),
                Client::Batched => (batched_publish(js.batch_publisher(), message), None),
            };
            let cleanup: BoxFut<()> = Box::pin(async move {
                let _ = context.delete_stream(&name).await;
            });
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch,
                receive,
                cleanup: Some(cleanup),
            })
        })
    }
}

// ---- ZeroMQ ---------------------------------------------------------------------------------

/// ZeroMQ PUSH / PULL over loopback TCP, plain frames (`[payload]`) on both sides.
/// A receipt means "handed to the socket" for both.
pub struct ZeroMq;

impl Fixture for ZeroMq {
    fn name(&self) -> &'static str {
        "zeromq"
    }

    fn durable(&self) -> bool {
        false
    }

    fn no_batch(&self, client: Client) -> Option<&'static str> {
        Some(match client {
            Client::Bare => "zeromq sends one message at a time",
            Client::Batched => "tower-mq has no ZeroMQ batch publisher",
            _ => "batches are the batched client's",
        })
    }

    fn lane(&self, publisher: Client, consumer: Client) -> BoxFut<Result<Lane, BoxError>> {
        use tokio::sync::Mutex;
        use tower_mq::zeromq::{Config, Consumer, Publisher};
        use zeromq::{Socket, SocketRecv, SocketSend};
        Box::pin(async move {
            let (endpoint, receive) = match consumer {
                Client::Bare => {
                    let mut pull = zeromq::PullSocket::new();
                    let endpoint = pull.bind("tcp://127.0.0.1:0").await?.to_string();
                    let receive = receive_with(move |tracker| async move {
                        while !tracker.complete() {
                            let message = pull.recv().await?;
                            let last = message.len().checked_sub(1).ok_or("empty message")?;
                            let body = message.get(last).ok_or("empty message")?;
                            tracker.record(body);
                        }
                        Ok(())
                    });
                    (endpoint, receive)
                }
                _ => {
                    let pull = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0")).await?;
                    let endpoint = pull.endpoints()[0].clone();
                    let receive = if consumer == Client::Stack {
                        stack_receive("zeromq", pull)
                    } else {
                        service_receive(pull)
                    };
                    (endpoint, receive)
                }
            };
            let message = |body| Message::new("bench", body);
            let publish = match publisher {
                Client::Bare => {
                    let mut push = zeromq::PushSocket::new();
                    push.connect(&endpoint).await?;
                    let push = Arc::new(Mutex::new(push));
                    publish_with(move |body: Bytes| {
                        let push = push.clone();
                        async move {
                            push.lock()
                                .await
                                .send(zeromq::ZmqMessage::from(body))
                                .await?;
                            Ok(())
                        }
                    })
                }
                Client::Service => service_publish(
                    Publisher::push(&Config::new().connect(&endpoint)).await?,
                    message,
                ),
                Client::Stack => stack_publish(
                    "zeromq",
                    Publisher::push(&Config::new().connect(&endpoint)).await?,
                    message,
                ),
                Client::Batched => return Err(unsupported("zeromq batched")),
            };
            Ok(Lane {
                publish,
                publish_alone: None,
                publish_batch: None,
                receive,
                cleanup: None,
            })
        })
    }
}
