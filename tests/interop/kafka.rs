//! Kafka with rdkafka's own `FutureProducer` and `StreamConsumer`, used directly, on
//! the other side of the wire, against the Kafka-protocol broker at
//! `TOWER_MQ_KAFKA_BROKERS` (tansu; default 127.0.0.1:19092).
//!
//! Every producer here, plain or tower-mq, writes one record per batch
//! (`batch.num.messages=1`): tansu 0.6.0 skips the rest of a multi-record batch when a
//! fetch starts in its middle. Real Kafka needs no such setting. tansu keeps record
//! keys, values (null and empty apart), headers (order, repeated names, null values)
//! and create-time timestamps as Kafka does, so every case runs on it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, Timestamp, TopicPartitionList};
use tower::ServiceExt;
use tower_mq::dead_letter;
use tower_mq::kafka::layout::DELIVERY_COUNT;
use tower_mq::kafka::{Admin, Config, Consumer, ConsumerConfig, Publisher, TopicSpec};
use tower_mq::wire::{Property, PropertyHeaders};
use tower_mq::{Delivery, ErrorKind, HeaderValue, Headers, Message, Operation};

use crate::harness::kafka::{brokers, config};
use crate::harness::unique;
use crate::waits::next_within;

/// The bound on waiting for something that should happen.
const WAIT: Duration = Duration::from_secs(20);

/// Creates single-partition topics, so that records keep one order.
async fn topics(config: &Config, names: &[&str]) {
    let admin = Admin::new(config).unwrap_or_else(|e| panic!("kafka: admin client: {e}"));
    let specs: Vec<TopicSpec> = names.iter().map(|n| TopicSpec::new(*n)).collect();
    if let Err(e) = admin.create_topics(&specs).await {
        panic!("kafka: creating {names:?} failed: {e}");
    }
}

/// rdkafka's producer, as any application would configure it.
fn plain_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("batch.num.messages", "1")
        .create()
        .unwrap_or_else(|e| panic!("kafka: plain producer: {e}"))
}

/// rdkafka's consumer, reading partition 0 of `topic` from the start.
fn plain_consumer(topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("plain"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("kafka: plain consumer: {e}"));
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap_or_else(|e| panic!("kafka: partition list: {e}"));
    consumer
        .assign(&partitions)
        .unwrap_or_else(|e| panic!("kafka: assigning {topic}: {e}"));
    consumer
}

/// A record as a plain client sees it, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlainRecord {
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: Option<i64>,
}

impl PlainRecord {
    fn of(record: &BorrowedMessage<'_>) -> Self {
        PlainRecord {
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().map(<[u8]>::to_vec),
            headers: record
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
            timestamp: match record.timestamp() {
                Timestamp::CreateTime(ms) => Some(ms),
                other => panic!("kafka: expected a create-time timestamp, got {other:?}"),
            },
        }
    }

    /// Produces the record with rdkafka's own producer.
    async fn produce(&self, producer: &FutureProducer, topic: &str) {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(key) = &self.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &self.payload {
            record = record.payload(payload.as_slice());
        }
        if let Some(timestamp) = self.timestamp {
            record = record.timestamp(timestamp);
        }
        if !self.headers.is_empty() {
            let mut headers = OwnedHeaders::new();
            for (name, value) in &self.headers {
                headers = headers.insert(Header {
                    key: name,
                    value: value.as_deref(),
                });
            }
            record = record.headers(headers);
        }
        if let Err((e, _)) = producer.send(record, WAIT).await {
            panic!("kafka: plain producer to {topic}: {e}");
        }
    }
}

/// The next `n` records of `consumer`'s topic, as a plain client reads them.
async fn read_plain(consumer: &StreamConsumer, n: usize) -> Vec<PlainRecord> {
    let mut records = Vec::with_capacity(n);
    while records.len() < n {
        let record = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("kafka: record {} not read within {WAIT:?}", records.len()))
            .unwrap_or_else(|e| panic!("kafka: plain consumer: {e}"));
        records.push(PlainRecord::of(&record));
    }
    records
}

/// A tower-mq consumer of `topic`, joined.
async fn consumer(config: &Config, topic: &str) -> Consumer {
    let mut consumer = Consumer::subscribe(config, ConsumerConfig::new(topic, unique("tmq")))
        .await
        .unwrap_or_else(|e| panic!("kafka: subscribing to {topic}: {e}"));
    if let Err(e) = consumer.wait_for_assignment(WAIT).await {
        panic!("kafka: joining the group on {topic}: {e}");
    }
    consumer
}

async fn next(consumer: &mut Consumer, what: &str) -> Delivery {
    next_within(consumer, what, WAIT).await
}

async fn publish(publisher: &Publisher, message: Message) {
    let topic = message.destination().to_owned();
    if let Err(e) = publisher.clone().oneshot(message).await {
        panic!("kafka: publishing to {topic}: {e}");
    }
}

fn bytes(value: &[u8]) -> HeaderValue {
    HeaderValue::Bytes(Bytes::copy_from_slice(value))
}

fn text(value: &str) -> Option<Vec<u8>> {
    Some(value.as_bytes().to_vec())
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Every byte value, as a binary payload.
fn binary_payload() -> Vec<u8> {
    (0..=255u8).rev().chain(0..=255u8).collect()
}

/// A record with `payload` and every property header (`encoding` its content
/// encoding), at 1_700_000_000_000 ms, as tower-mq writes and reads them.
fn properties_record(payload: &[u8], encoding: &str) -> PlainRecord {
    PlainRecord {
        key: None,
        payload: Some(payload.to_vec()),
        headers: vec![
            ("tenant".into(), text("acme")),
            ("message-id".into(), text("m-1")),
            ("correlation-id".into(), text("c-1")),
            ("reply-to".into(), text("replies")),
            ("content-type".into(), text("application/json")),
            ("content-encoding".into(), text(encoding)),
            ("message-type".into(), text("order.created")),
            ("app-id".into(), text("billing")),
            ("user-id".into(), text("alice")),
        ],
        timestamp: Some(1_700_000_000_000),
    }
}

/// Records an ordinary client writes: binary keys, payloads and header values,
/// repeated names, null values, an empty payload and key, timestamps, and the
/// property headers in an order and with repetitions tower-mq would not write.
fn foreign_records() -> Vec<PlainRecord> {
    vec![
        PlainRecord {
            key: Some(vec![0x00, 0x01, 0xff, 0xfe]),
            payload: Some(binary_payload()),
            headers: vec![
                ("bin".into(), Some(vec![0x00, 0xff, 0x80, 0x7f])),
                ("hop".into(), text("edge")),
                ("null".into(), None),
                ("hop".into(), text("core")),
                ("empty".into(), text("")),
                (
                    "traceparent".into(),
                    text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
            ],
            timestamp: Some(1_600_000_000_123),
        },
        PlainRecord {
            key: Some(Vec::new()),
            payload: Some(Vec::new()),
            headers: Vec::new(),
            timestamp: Some(1),
        },
        properties_record(b"{\"id\":42}", "identity"),
        PlainRecord {
            key: Some(b"k".to_vec()),
            payload: Some(b"out of order".to_vec()),
            headers: vec![
                ("content-type".into(), text("text/plain")),
                ("a".into(), text("1")),
                ("content-type".into(), text("text/html")),
                ("message-id".into(), Some(vec![0xff, 0xfe])),
                (DELIVERY_COUNT.into(), text("3")),
                ("correlation-id".into(), None),
            ],
            timestamp: Some(1_700_000_000_001),
        },
    ]
}

/// What tower-mq must make of [`foreign_records`], in order, with delivery counts.
fn expected_messages(topic: &str) -> Vec<(Message, u32)> {
    let mut first = Message::new(topic, binary_payload())
        .with_key([0x00, 0x01, 0xff, 0xfe])
        .with_timestamp(at(1_600_000_000_123));
    *first.headers_mut() = Headers::from_iter([
        ("bin", bytes(&[0x00, 0xff, 0x80, 0x7f])),
        ("hop", bytes(b"edge")),
        ("null", HeaderValue::Null),
        ("hop", bytes(b"core")),
        ("empty", bytes(b"")),
        (
            "traceparent",
            bytes(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ),
    ]);
    let second = Message::new(topic, "").with_key(b"").with_timestamp(at(1));
    let third = Message::new(topic, "{\"id\":42}")
        .with_header("tenant", "acme")
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_reply_to("replies")
        .with_content_type("application/json")
        .with_content_encoding("identity")
        .with_message_type("order.created")
        .with_app_id("billing")
        .with_user_id("alice")
        .with_timestamp(at(1_700_000_000_000));
    // Property headers out of tower-mq's order stay where they were, as headers too.
    let mut fourth = Message::new(topic, "out of order")
        .with_key("k")
        .with_content_type("text/plain")
        .with_timestamp(at(1_700_000_000_001));
    *fourth.headers_mut() = Headers::from_iter([
        ("content-type", bytes(b"text/plain")),
        ("a", bytes(b"1")),
        ("content-type", bytes(b"text/html")),
        ("message-id", bytes(&[0xff, 0xfe])),
        (DELIVERY_COUNT, bytes(b"3")),
        ("correlation-id", HeaderValue::Null),
    ]);
    vec![(first, 1), (second, 1), (third, 1), (fourth, 3)]
}

/// (a) What rdkafka's producer writes, tower-mq delivers exactly: key, payload,
/// headers in order with repeated names and null values, properties from their
/// headers, the record timestamp, the delivery count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_plain_producer_arrive_exactly() {
    let config = config().await;
    let topic = unique("from-plain");
    topics(&config, &[&topic]).await;
    let producer = plain_producer();
    for record in foreign_records() {
        record.produce(&producer, &topic).await;
    }
    let mut consumer = consumer(&config, &topic).await;
    for (i, (expected, count)) in expected_messages(&topic).into_iter().enumerate() {
        let delivery = next(&mut consumer, &format!("record {i}")).await;
        assert_eq!(delivery.message(), &expected, "record {i}");
        assert_eq!(
            delivery.delivery_count(),
            count,
            "record {i}: delivery count"
        );
        assert_eq!(delivery.timestamp(), expected.timestamp(), "record {i}");
        delivery.ack().await.expect("ack");
    }
}

/// A null record value (a tombstone) is delivered as an empty payload, the one thing
/// the model cannot tell apart; a forwarder configured with
/// `empty_payloads_as_tombstones` writes it back as a null value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_arrives_as_an_empty_payload_and_can_be_forwarded_as_one() {
    let config = config().await;
    let (from, to) = (unique("tombstone-from"), unique("tombstone-to"));
    topics(&config, &[&from, &to]).await;
    let tombstone = PlainRecord {
        key: Some(b"deleted".to_vec()),
        payload: None,
        headers: vec![("why".into(), text("gdpr"))],
        timestamp: Some(1_700_000_000_000),
    };
    tombstone.produce(&plain_producer(), &from).await;
    let plain = read_plain(&plain_consumer(&from), 1).await;
    assert_eq!(
        plain,
        std::slice::from_ref(&tombstone),
        "the broker keeps the null value"
    );
    let mut consumer = consumer(&config, &from).await;
    let delivery = next(&mut consumer, "the tombstone").await;
    assert_eq!(delivery.message().payload(), &Bytes::new());
    assert_eq!(delivery.message().key(), Some(&b"deleted"[..]));

    let forwarder =
        Publisher::new(&config.clone().empty_payloads_as_tombstones(true)).expect("publisher");
    let mut message = delivery.message().clone();
    message.set_destination(to.clone());
    publish(&forwarder, message).await;
    assert_eq!(read_plain(&plain_consumer(&to), 1).await, [tombstone]);
}

/// (b) What tower-mq publishes, rdkafka's consumer reads exactly: the raw key, the
/// payload, the headers in order (repeated names, null values, binary values), the
/// properties under their kebab-case names after them, the timestamp as the record's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tower_mq_messages_arrive_exactly_in_a_plain_consumer() {
    let config = config().await;
    let topic = unique("to-plain");
    topics(&config, &[&topic]).await;
    let publisher = Publisher::new(&config).expect("publisher");

    let mut binary = Message::new(&topic, binary_payload())
        .with_key([0x00, 0x01, 0xff, 0xfe])
        .with_timestamp(at(1_600_000_000_123));
    let headers = binary.headers_mut();
    headers.append("bin", bytes(&[0x00, 0xff]));
    headers.append("hop", "edge");
    headers.append("null", HeaderValue::Null);
    headers.append("hop", "core");
    headers.append(DELIVERY_COUNT, "7");
    publish(&publisher, binary).await;

    let empty = Message::new(&topic, "").with_key(b"").with_timestamp(at(2));
    publish(&publisher, empty).await;

    let properties = Message::new(&topic, "{}")
        .with_header("tenant", "acme")
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_reply_to("replies")
        .with_content_type("application/json")
        .with_content_encoding("gzip")
        .with_message_type("order.created")
        .with_app_id("billing")
        .with_user_id("alice")
        .with_persistent(false)
        .with_timestamp(at(1_700_000_000_000));
    publish(&publisher, properties).await;

    let before = SystemTime::now();
    publish(&publisher, Message::new(&topic, "stamped by librdkafka")).await;
    let after = SystemTime::now();

    let plain = read_plain(&plain_consumer(&topic), 4).await;
    assert_eq!(
        plain[0],
        PlainRecord {
            key: Some(vec![0x00, 0x01, 0xff, 0xfe]),
            payload: Some(binary_payload()),
            headers: vec![
                ("bin".into(), Some(vec![0x00, 0xff])),
                ("hop".into(), text("edge")),
                ("null".into(), None),
                ("hop".into(), text("core")),
                (DELIVERY_COUNT.into(), text("7")),
            ],
            timestamp: Some(1_600_000_000_123),
        }
    );
    assert_eq!(
        plain[1],
        PlainRecord {
            key: Some(Vec::new()),
            payload: Some(Vec::new()),
            headers: Vec::new(),
            timestamp: Some(2),
        },
        "an empty payload is an empty value, not a null one; an empty key likewise"
    );
    assert_eq!(
        plain[2],
        properties_record(b"{}", "gzip"),
        "a non-persistent message is stored like any other, with no header for it"
    );
    let stamped = plain[3].timestamp.map(|ms| at(ms as u64));
    let millis = |t: SystemTime| at(t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64);
    assert!(
        stamped.is_some_and(|t| millis(before) <= t && t <= after),
        "without a timestamp librdkafka stamps the send time: {stamped:?}"
    );
    assert_eq!(plain[3].headers, []);
}

/// Property header names are configurable: a consumer and a publisher configured
/// with other names read and write those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_header_names_are_configurable() {
    let names = PropertyHeaders::kebab_case()
        .with_name(Property::CorrelationId, "kafka_correlationId")
        .without(Property::AppId);
    let config = config().await.property_headers(names);
    let topic = unique("names");
    topics(&config, &[&topic]).await;
    let publisher = Publisher::new(&config).expect("publisher");
    let sent = Message::new(&topic, "x")
        .with_correlation_id("c-9")
        .with_timestamp(at(5));
    publish(&publisher, sent.clone()).await;
    // Without a header for the app id, an `app-id` header is a header like any other.
    publish(
        &publisher,
        Message::new(&topic, "y")
            .with_header("app-id", "kept")
            .with_timestamp(at(6)),
    )
    .await;
    let plain = read_plain(&plain_consumer(&topic), 2).await;
    assert_eq!(
        plain[0].headers,
        [("kafka_correlationId".into(), text("c-9"))]
    );
    assert_eq!(plain[1].headers, [("app-id".into(), text("kept"))]);
    let mut consumer = consumer(&config, &topic).await;
    assert_eq!(next(&mut consumer, "the first").await.message(), &sent);
    let second = next(&mut consumer, "the second").await;
    assert_eq!(second.message().app_id(), None);
    assert_eq!(second.message().headers().get_str("app-id"), Some("kept"));
}

/// (c) tower-mq consumes what a plain producer wrote and republishes it to another
/// topic: a plain consumer reads the same records there, byte for byte, header for
/// header, timestamp for timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_and_republish_leaves_records_unchanged() {
    let config = config().await;
    let (from, to) = (unique("forward-from"), unique("forward-to"));
    topics(&config, &[&from, &to]).await;
    let producer = plain_producer();
    let sent = foreign_records();
    for record in &sent {
        record.produce(&producer, &from).await;
    }
    assert_eq!(
        read_plain(&plain_consumer(&from), sent.len()).await,
        sent,
        "the broker keeps what the plain producer wrote"
    );
    let publisher = Publisher::new(&config).expect("publisher");
    let mut consumer = consumer(&config, &from).await;
    for i in 0..sent.len() {
        let delivery = next(&mut consumer, &format!("record {i}")).await;
        let mut message = delivery.message().clone();
        message.set_destination(to.clone());
        publish(&publisher, message).await;
        delivery.ack().await.expect("ack");
    }
    assert_eq!(read_plain(&plain_consumer(&to), sent.len()).await, sent);
}

/// A nack publishes the message again with `x-delivery-count` replaced in place, and
/// every other header, the key and the timestamp as they came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_republishes_the_record_with_only_the_delivery_count_changed() {
    let config = config().await;
    let topic = unique("nack");
    topics(&config, &[&topic]).await;
    let record = foreign_records().swap_remove(3);
    record.produce(&plain_producer(), &topic).await;
    let mut consumer = consumer(&config, &topic).await;
    let first = next(&mut consumer, "the record").await;
    assert_eq!(first.delivery_count(), 3);
    first.nack(None).await.expect("nack");
    let again = next(&mut consumer, "the nacked record").await;
    assert_eq!(again.delivery_count(), 4);
    let plain = read_plain(&plain_consumer(&topic), 2).await;
    let mut expected = record;
    for (name, value) in &mut expected.headers {
        if name == DELIVERY_COUNT {
            *value = text("4");
        }
    }
    assert_eq!(plain[1], expected);
}

/// What a record cannot carry fails the publish with a permanent error naming the
/// broker, the operation, the topic and the header or property; with
/// `ignore_unsupported` it is left out and the rest is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_record_cannot_carry_is_a_permanent_publish_error() {
    let config = config().await;
    let topic = unique("refused");
    topics(&config, &[&topic]).await;
    let publisher = Publisher::new(&config).expect("publisher");
    let base = || Message::new(&topic, "x").with_header("kept", "yes");
    let refused = [
        (
            base().with_header("attempt", 3i64),
            "header \"attempt\" is a i64",
        ),
        (
            base().with_header("flag", true),
            "header \"flag\" is a bool",
        ),
        (
            base().with_header("raw", HeaderValue::ByteArray(Bytes::from_static(b"r"))),
            "header \"raw\" is a byte array",
        ),
        (base().with_header("a\0b", "v"), "NUL in its name"),
        (base().with_priority(3), "no message priority"),
        (base().with_ttl(Duration::from_secs(9)), "time to live"),
        (
            base().with_timestamp(UNIX_EPOCH),
            "not a Kafka record timestamp",
        ),
    ];
    for (message, reason) in &refused {
        let error = publisher
            .clone()
            .oneshot(message.clone())
            .await
            .expect_err("a message Kafka cannot carry must be refused");
        assert_eq!(error.kind(), ErrorKind::Permanent, "{error}");
        assert_eq!(error.code(), Some(tower_mq::Code::Unsupported), "{error}");
        assert_eq!(error.broker(), "kafka");
        assert_eq!(error.operation(), Operation::Publish);
        assert_eq!(error.destination(), Some(topic.as_str()));
        let why = error.reason().unwrap_or_default();
        assert!(why.contains(reason), "{why:?} should say {reason:?}");
    }
    let collision = base()
        .with_content_type("a/b")
        .with_header("content-type", "c/d");
    let error = publisher
        .clone()
        .oneshot(collision.clone())
        .await
        .expect_err("a header colliding with a property must be refused");
    assert_eq!(error.kind(), ErrorKind::Permanent, "{error}");
    assert_eq!(error.code(), Some(tower_mq::Code::Unsupported), "{error}");
    assert!(
        error.reason().unwrap_or_default().contains("content type"),
        "{error}"
    );

    let lenient = Publisher::new(&config.clone().ignore_unsupported(true)).expect("publisher");
    for (message, _) in refused {
        publish(&lenient, message.with_timestamp(at(8))).await;
    }
    lenient
        .clone()
        .oneshot(collision)
        .await
        .expect_err("a collision is a mistake, refused even when ignoring unsupported");
    let plain = read_plain(&plain_consumer(&topic), 7).await;
    for record in plain {
        assert_eq!(record.headers, [("kept".into(), text("yes"))]);
        assert_eq!(record.payload, text("x"));
        assert_eq!(record.timestamp, Some(8));
    }
}

/// A header name that is not UTF-8 (Latin-1 "café").
const UNREADABLE_NAME: &[u8] = b"caf\xe9";

/// Writes, with a raw librdkafka header list, a record whose second header name is
/// [`UNREADABLE_NAME`], then a plain record with payload `next`.
async fn produce_unreadable_then_next(topic: &str) {
    let producer = plain_producer();
    let headers = OwnedHeaders::new().insert(Header {
        key: "before",
        value: Some("b"),
    });
    // SAFETY: `headers` is a live librdkafka header list, borrowed for this call, and
    // the name and value pointers are valid for the lengths given.
    let added = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            headers.as_borrowed() as *const _ as *mut rdkafka::bindings::rd_kafka_headers_t,
            UNREADABLE_NAME.as_ptr().cast(),
            UNREADABLE_NAME.len() as isize,
            b"latin-1".as_ptr().cast(),
            7,
        )
    };
    assert_eq!(
        added,
        rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    let record = FutureRecord::<[u8], [u8]>::to(topic)
        .key(&b"\x00k"[..])
        .payload(&b"\xffbody"[..])
        .timestamp(1_700_000_000_000)
        .headers(headers);
    if let Err((e, _)) = producer.send(record, WAIT).await {
        panic!("kafka: producing the record: {e}");
    }
    PlainRecord {
        key: None,
        payload: text("next"),
        headers: Vec::new(),
        timestamp: Some(1_700_000_000_001),
    }
    .produce(&producer, topic)
    .await;
}

/// A header name rdkafka cannot read (not UTF-8) written by a raw librdkafka
/// producer: the record goes whole to the dead-letter topic with the reason headers,
/// and the consumer goes on with the next record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_with_a_header_name_that_is_not_utf8_is_dead_lettered_whole() {
    let config = config().await;
    let topic = unique("bad-name");
    let dead_letters = ConsumerConfig::new(&topic, "").dead_letter_topic_of(&topic);
    topics(&config, &[&topic, &dead_letters]).await;
    produce_unreadable_then_next(&topic).await;

    let mut consumer = consumer(&config, &topic).await;
    let delivery = next(&mut consumer, "the record after the unreadable one").await;
    assert_eq!(delivery.message().payload(), &Bytes::from_static(b"next"));
    delivery.ack().await.expect("ack");

    let dead = plain_consumer(&dead_letters);
    let letter = tokio::time::timeout(WAIT, dead.recv())
        .await
        .expect("the dead letter within the wait")
        .expect("the dead letter");
    assert_eq!(letter.key(), Some(&b"\x00k"[..]));
    assert_eq!(letter.payload(), Some(&b"\xffbody"[..]));
    assert_eq!(letter.timestamp(), Timestamp::CreateTime(1_700_000_000_000));
    let headers = letter.headers().expect("headers");
    let mut names: Vec<Vec<u8>> = Vec::new();
    for idx in 0..headers.count() {
        let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: `headers` belongs to `letter`, alive here; librdkafka writes
        // pointers into it, valid while `letter` is.
        let name = unsafe {
            rdkafka::bindings::rd_kafka_header_get_all(
                headers as *const _ as *const rdkafka::bindings::rd_kafka_headers_t,
                idx,
                &mut name,
                &mut value,
                &mut size,
            );
            std::ffi::CStr::from_ptr(name).to_bytes().to_vec()
        };
        names.push(name);
    }
    let expected: Vec<&[u8]> = vec![
        b"before",
        UNREADABLE_NAME,
        dead_letter::REASON.as_bytes(),
        dead_letter::ORIGINAL_DESTINATION.as_bytes(),
        dead_letter::PARTITION.as_bytes(),
        dead_letter::OFFSET.as_bytes(),
        dead_letter::CONSUMER.as_bytes(),
        dead_letter::DELIVERIES.as_bytes(),
        dead_letter::TIME.as_bytes(),
    ];
    assert_eq!(names, expected);
    // The group's commit passed the dead-lettered record.
    let committed = tokio::time::timeout(WAIT, async {
        loop {
            consumer.commit().await.expect("commit");
            let committed = consumer.committed().await.expect("committed offsets");
            if committed.iter().any(|(_, _, offset)| *offset == Some(2)) {
                return committed;
            }
        }
    })
    .await
    .expect("the commit passes both records");
    assert_eq!(committed.len(), 1);
}

/// When the unreadable record cannot be dead-lettered (here: no dead-letter topic, and
/// a producer that gives up after 2 s), the consumer still delivers the records behind
/// it, reports a transient error, and commits nothing past the unreadable record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_that_cannot_be_dead_lettered_stays_uncommitted() {
    let config = config().await.set_producer("message.timeout.ms", "2000");
    let topic = unique("bad-name-no-dlq");
    topics(&config, &[&topic]).await;
    produce_unreadable_then_next(&topic).await;

    let mut consumer = consumer(&config, &topic).await;
    let delivery = next(&mut consumer, "the record after the unreadable one").await;
    assert_eq!(delivery.message().payload(), &Bytes::from_static(b"next"));
    delivery.ack().await.expect("ack");
    let error = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("the failed dead-lettering reported within the wait")
        .expect("the consumer goes on")
        .expect_err("dead-lettering without a dead-letter topic fails");
    assert_eq!(error.kind(), ErrorKind::Transient, "{error}");
    assert_eq!(error.operation(), Operation::Receive, "{error}");
    consumer.commit().await.expect("commit");
    let committed = consumer.committed().await.expect("committed offsets");
    assert_eq!(committed, [(topic.clone(), 0, Some(0))]);
}
