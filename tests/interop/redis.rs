//! Interop with the `redis` crate used directly, as any other program on the same Redis
//! would: `XADD` / `XRANGE` on streams, `PUBLISH` / `SUBSCRIBE` on channels, with
//! tower-mq on the other side.
//!
//! The address comes from `TOWER_MQ_REDIS_URL` (default: the project harness,
//! `redis://127.0.0.1:16379`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::Value;
use tower::{Service, ServiceExt};
use tower_mq::redis::{
    Framing, PubSubConsumer, PubSubPublisher, StreamConsumer, StreamConsumerConfig, StreamLayout,
    StreamPublisher, Subscription,
};
use tower_mq::wire::PropertyHeaders;
use tower_mq::{
    Delivery, ErrorKind, Guarantee, HeaderValue, Message, Operation, Position, Receipt,
};

use crate::harness::redis::{config, unreachable, url};
use crate::harness::unique;
use crate::waits::next_within;

const WAIT: Duration = Duration::from_secs(15);

/// A plain redis-rs client and connection: the other program.
async fn plain() -> (redis::Client, MultiplexedConnection) {
    let client = redis::Client::open(url()).expect("a valid Redis URL");
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| unreachable(e));
    (client, conn)
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// `XADD stream * fields...` with the plain client; the entry id.
async fn xadd(conn: &mut MultiplexedConnection, stream: &str, fields: &[(&[u8], &[u8])]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query_async(conn).await.expect("XADD")
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        other => panic!("not a string: {other:?}"),
    }
}

/// Every entry of `stream` as the plain client reads it with `XRANGE`: ids and fields,
/// in order, binary.
async fn xrange(conn: &mut MultiplexedConnection, stream: &str) -> Vec<(String, Fields)> {
    let reply: Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    let Value::Array(entries) = reply else {
        panic!("XRANGE reply: {reply:?}")
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(mut pair) = entry else {
                panic!("entry: {entry:?}")
            };
            let Value::Array(flat) = pair.pop().expect("fields") else {
                panic!("fields")
            };
            let id = String::from_utf8(bytes(pair.pop().expect("id"))).expect("text id");
            let mut flat = flat.into_iter().map(bytes);
            let mut fields = Vec::new();
            while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                fields.push((name, value));
            }
            (id, fields)
        })
        .collect()
}

fn owned(fields: &[(&[u8], &[u8])]) -> Fields {
    fields
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect()
}

/// The fields ordered by name, same names kept in their order: a plain client reads
/// an entry by field name, and tower-mq writes the property fields in an order of its
/// own (payload, headers in order, then properties).
fn by_name(mut fields: Fields) -> Fields {
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}

fn id_time(id: &str) -> SystemTime {
    let ms = id.split_once('-').expect("an entry id").0;
    UNIX_EPOCH + Duration::from_millis(ms.parse().expect("ms"))
}

async fn next<S>(consumer: &mut S) -> Delivery
where
    S: futures_util::Stream<Item = Result<Delivery, tower_mq::Error>> + Unpin,
{
    next_within(consumer, "a delivery", WAIT).await
}

async fn try_publish<S>(publisher: &mut S, message: Message) -> Result<Receipt, tower_mq::Error>
where
    S: Service<Message, Response = Receipt, Error = tower_mq::Error>,
{
    publisher.ready().await?.call(message).await
}

async fn publish<S>(publisher: &mut S, message: Message) -> Receipt
where
    S: Service<Message, Response = Receipt, Error = tower_mq::Error>,
{
    try_publish(publisher, message).await.expect("publish")
}

const BINARY: &[u8] = &[0, 1, 0xff, 0xfe];
const TIMESTAMP_MS: u64 = 1_700_000_000_123;

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(TIMESTAMP_MS)
}

/// A foreign entry with everything: binary payload and key, text and binary header
/// values, a repeated field, properties and a timestamp.
const RICH: &[(&[u8], &[u8])] = &[
    (b"payload", BINARY),
    (b"tenant", b"acme"),
    (b"raw", b"\xff\x00\x80"),
    (b"hop", b"edge"),
    (b"hop", b"core"),
    (b"empty", b""),
    (b"content-type", b"application/octet-stream"),
    (b"message-id", b"m-1"),
    (b"correlation-id", b"c-1"),
    (b"timestamp", b"1700000000123"),
    (b"key", BINARY),
];

#[tokio::test]
async fn streams_entries_written_by_a_plain_client_are_consumed_exactly() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let stream = unique("plain-to-tmq");
    let rich_id = xadd(&mut conn, &stream, RICH).await;
    let empty_id = xadd(&mut conn, &stream, &[(b"payload", b""), (b"trace", b"t-1")]).await;

    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&stream, "g"))
        .await
        .expect("subscribe");
    let rich = next(&mut consumer).await;
    let got = rich.message();
    assert_eq!(got.payload().as_ref(), BINARY);
    assert_eq!(got.key(), Some(BINARY));
    let headers: Vec<(&str, &HeaderValue)> = got.headers().iter().collect();
    let b = |v: &'static [u8]| HeaderValue::Bytes(Bytes::from_static(v));
    assert_eq!(
        headers,
        [
            ("tenant", &b(b"acme")),
            ("raw", &b(b"\xff\x00\x80")),
            ("hop", &b(b"edge")),
            ("hop", &b(b"core")),
            ("empty", &b(b"")),
        ]
    );
    assert_eq!(got.content_type(), Some("application/octet-stream"));
    assert_eq!(got.message_id(), Some("m-1"));
    assert_eq!(got.correlation_id(), Some("c-1"));
    // The timestamp field wins over the entry id's time.
    assert_eq!(rich.timestamp(), Some(at()));
    assert_ne!(id_time(&rich_id), at());
    rich.ack().await.expect("ack");

    let empty = next(&mut consumer).await;
    assert!(empty.message().payload().is_empty());
    assert_eq!(empty.message().headers().get_str("trace"), Some("t-1"));
    assert_eq!(empty.message().headers().len(), 1);
    assert_eq!(empty.message().key(), None);
    // Without a timestamp field, the entry id's time.
    assert_eq!(empty.timestamp(), Some(id_time(&empty_id)));
    empty.ack().await.expect("ack");
}

#[tokio::test]
async fn streams_entries_written_by_tower_mq_are_read_exactly_by_a_plain_client() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let stream = unique("tmq-to-plain");
    let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
    let mut rich = Message::new(&stream, BINARY)
        .with_key(BINARY)
        .with_header("tenant", "acme")
        .with_header("raw", &b"\xff\x00\x80"[..])
        .with_header("hop", "edge")
        .with_content_type("application/octet-stream")
        .with_message_id("m-1")
        .with_message_type("order.created")
        .with_app_id("shop")
        .with_user_id("alice")
        .with_reply_to("replies")
        .with_content_encoding("identity")
        .with_correlation_id("c-1")
        .with_timestamp(at());
    rich.headers_mut().append("hop", "core");
    let receipt = publish(&mut publisher, rich).await;
    let Some(Position::Id(id)) = receipt.position() else {
        panic!("not a stream receipt: {receipt:?}")
    };
    publish(&mut publisher, Message::new(&stream, "")).await;

    let entries = xrange(&mut conn, &stream).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(&entries[0].0, id);
    assert_eq!(
        entries[0].1,
        owned(&[
            (b"payload", BINARY),
            (b"tenant", b"acme"),
            (b"raw", b"\xff\x00\x80"),
            (b"hop", b"edge"),
            (b"hop", b"core"),
            (b"message-id", b"m-1"),
            (b"correlation-id", b"c-1"),
            (b"reply-to", b"replies"),
            (b"content-type", b"application/octet-stream"),
            (b"content-encoding", b"identity"),
            (b"message-type", b"order.created"),
            (b"app-id", b"shop"),
            (b"user-id", b"alice"),
            (b"timestamp", b"1700000000123"),
            (b"key", BINARY),
        ])
    );
    // An empty payload is an empty `payload` field, and nothing else.
    assert_eq!(entries[1].1, owned(&[(b"payload", b"")]));
}

#[tokio::test]
async fn streams_consume_and_republish_leaves_the_entry_unchanged() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let source = unique("republish-from");
    let target = unique("republish-to");
    xadd(&mut conn, &source, RICH).await;
    xadd(&mut conn, &source, &[(b"payload", b""), (b"trace", b"t-1")]).await;

    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&source, "g"))
        .await
        .expect("subscribe");
    let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
    for _ in 0..2 {
        let delivery = next(&mut consumer).await;
        let mut message = delivery.message().clone();
        message.set_destination(&target);
        publish(&mut publisher, message).await;
        delivery.ack().await.expect("ack");
    }

    let sent = xrange(&mut conn, &source).await;
    let copied = xrange(&mut conn, &target).await;
    assert_eq!(copied.len(), 2);
    // Every field as it was, binary and repeated ones included.
    assert_eq!(by_name(copied[0].1.clone()), by_name(sent[0].1.clone()));
    // Headers keep their order, repeated names included.
    let headers = |fields: &Fields| -> Fields {
        fields
            .iter()
            .filter(|(n, _)| [&b"tenant"[..], b"raw", b"hop", b"empty"].contains(&&n[..]))
            .cloned()
            .collect()
    };
    assert_eq!(headers(&copied[0].1), headers(&sent[0].1));
    // An entry without a timestamp field keeps its time: the copy has a new id, so the
    // original entry's time travels in the `timestamp` field.
    let mut expected = sent[1].1.clone();
    let ms = sent[1].0.split_once('-').expect("id").0.as_bytes().to_vec();
    expected.push((b"timestamp".to_vec(), ms));
    assert_eq!(copied[1].1, expected);
}

#[tokio::test]
async fn streams_entry_without_the_payload_field_is_dead_lettered_with_the_reason() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let stream = unique("no-payload");
    let settings = StreamConsumerConfig::new(&stream, "g");
    let dead_letter = tower_mq::dead_letter::destination_for(settings.stream());
    let bad_id = xadd(
        &mut conn,
        &stream,
        &[(b"temperature", b"21.5"), (b"unit", b"C")],
    )
    .await;
    xadd(&mut conn, &stream, &[(b"payload", b"after")]).await;

    let mut consumer = StreamConsumer::subscribe(&config, settings)
        .await
        .expect("subscribe");
    // Never delivered with an empty payload: the next delivery is the good entry.
    let good = next(&mut consumer).await;
    assert_eq!(good.message().payload().as_ref(), b"after");
    good.ack().await.expect("ack");

    let letters = xrange(&mut conn, &dead_letter).await;
    assert_eq!(letters.len(), 1);
    let fields = &letters[0].1;
    let get = |name: &[u8]| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        get(tower_mq::dead_letter::REASON.as_bytes()).as_deref(),
        Some("malformed entry: the entry has no `payload` field")
    );
    assert_eq!(
        get(tower_mq::dead_letter::ENTRY_ID.as_bytes()),
        Some(bad_id)
    );
    assert_eq!(get(b"temperature").as_deref(), Some("21.5"));
    assert_eq!(get(b"unit").as_deref(), Some("C"));
    // The group is not wedged: nothing is left pending.
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("g")
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(pending.count(), 0);
}

/// Writes `one`, then an entry `bad` per name of `odd_names` (each holding `v` under
/// that name), then `two`, with the plain client, to a new stream: one read of a batch
/// fetches them all, the odd entries do not fail it, `one` and `two` are delivered,
/// and each odd entry is dead-lettered intact with a reason that says `reason`.
async fn assert_odd_field_names_are_dead_lettered_and_the_batch_goes_on(
    what: &str,
    odd_names: &[&[u8]],
    reason: &str,
) {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let stream = unique(what);
    let settings = StreamConsumerConfig::new(&stream, "g").batch_size(16);
    let dead_letter = tower_mq::dead_letter::destination_for(settings.stream());
    xadd(&mut conn, &stream, &[(b"payload", b"one")]).await;
    for name in odd_names {
        xadd(&mut conn, &stream, &[(b"payload", b"bad"), (name, b"v")]).await;
    }
    xadd(&mut conn, &stream, &[(b"payload", b"two")]).await;

    let mut consumer = StreamConsumer::subscribe(&config, settings)
        .await
        .expect("subscribe");
    for expected in [&b"one"[..], b"two"] {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.message().payload().as_ref(), expected);
        delivery.ack().await.expect("ack");
    }
    let letters = xrange(&mut conn, &dead_letter).await;
    assert_eq!(letters.len(), odd_names.len());
    for ((_, fields), name) in letters.iter().zip(odd_names) {
        // Kept intact, the odd name included.
        assert!(fields.contains(&(b"payload".to_vec(), b"bad".to_vec())));
        assert!(fields.contains(&(name.to_vec(), b"v".to_vec())));
        let said = fields
            .iter()
            .find(|(n, _)| n == tower_mq::dead_letter::REASON.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .expect("a reason");
        assert!(said.contains(reason), "{said}");
    }
}

#[tokio::test]
async fn streams_entry_with_a_binary_field_name_is_dead_lettered_and_the_batch_goes_on() {
    assert_odd_field_names_are_dead_lettered_and_the_batch_goes_on(
        "binary-name",
        &[b"\xff\xfe"],
        "is not UTF-8",
    )
    .await;
}

#[tokio::test]
async fn streams_claimed_entry_with_a_binary_field_name_is_dead_lettered_and_the_claim_goes_on() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let stream = unique("claim-binary-name");
    let settings = StreamConsumerConfig::new(&stream, "g")
        .claim_idle(Duration::from_millis(1))
        .claim_interval(Duration::from_millis(50))
        .block(Duration::from_millis(100));
    let dead_letter = tower_mq::dead_letter::destination_for(settings.stream());
    xadd(&mut conn, &stream, &[(b"payload", b"bad"), (b"\xff", b"v")]).await;
    xadd(&mut conn, &stream, &[(b"payload", b"good")]).await;
    // Another program's consumer reads both and dies holding them: only XAUTOCLAIM
    // brings them back.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("g")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("XGROUP CREATE");
    let read: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("g")
        .arg("died")
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    assert!(matches!(read, Value::Array(_)), "{read:?}");

    let mut consumer = StreamConsumer::subscribe(&config, settings)
        .await
        .expect("subscribe");
    let good = next(&mut consumer).await;
    assert_eq!(good.message().payload().as_ref(), b"good");
    assert_eq!(good.delivery_count(), 2);
    good.ack().await.expect("ack");
    let letters = xrange(&mut conn, &dead_letter).await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].1.contains(&(b"\xff".to_vec(), b"v".to_vec())));
}

#[tokio::test]
async fn streams_layout_without_payload_field_delivers_every_field_and_republishes_it() {
    let layout = StreamLayout::new()
        .no_payload_field()
        .property_fields(PropertyHeaders::none());
    let config = config().await.stream_layout(layout);
    let (_, mut conn) = plain().await;
    let source = unique("records-from");
    let target = unique("records-to");
    let record: &[(&[u8], &[u8])] = &[
        (b"sensor", b"s-7"),
        (b"reading", b"\x00\xff"),
        (b"key", b"not a key here"),
        (b"reading", b"again"),
    ];
    let id = xadd(&mut conn, &source, record).await;

    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&source, "g"))
        .await
        .expect("subscribe");
    let delivery = next(&mut consumer).await;
    let got = delivery.message();
    assert!(got.payload().is_empty());
    assert_eq!(got.key(), None);
    let headers: Fields = got
        .headers()
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().expect("bytes").to_vec()))
        .collect();
    assert_eq!(headers, owned(record));
    assert_eq!(delivery.timestamp(), Some(id_time(&id)));

    // Republished under a layout without a timestamp field, the time is left out
    // only because the publisher is told to; the record is then the same.
    let mut message = got.clone();
    message.set_destination(&target);
    let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
    let err = try_publish(&mut publisher, message.clone())
        .await
        .expect_err("the timestamp has no field");
    assert!(err.to_string().contains("timestamp has no field"), "{err}");
    let mut lenient = publisher.ignore_unsupported(true);
    publish(&mut lenient, message).await;
    delivery.ack().await.expect("ack");
    let copied = xrange(&mut conn, &target).await;
    assert_eq!(copied[0].1, owned(record));
}

#[tokio::test]
async fn streams_custom_payload_field_is_read_and_written() {
    let config = config()
        .await
        .stream_layout(StreamLayout::new().payload_field("data"));
    let (_, mut conn) = plain().await;
    let stream = unique("payload-field");
    xadd(
        &mut conn,
        &stream,
        &[(b"data", b"\x01\x02"), (b"payload", b"a header")],
    )
    .await;
    let mut consumer = StreamConsumer::subscribe(&config, StreamConsumerConfig::new(&stream, "g"))
        .await
        .expect("subscribe");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().payload().as_ref(), b"\x01\x02");
    assert_eq!(
        delivery.message().headers().get_str("payload"),
        Some("a header")
    );
    delivery.ack().await.expect("ack");

    let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
    publish(
        &mut publisher,
        Message::new(&stream, "x").with_header("payload", "h"),
    )
    .await;
    let entries = xrange(&mut conn, &stream).await;
    assert_eq!(entries[1].1, owned(&[(b"data", b"x"), (b"payload", b"h")]));
}

#[tokio::test]
async fn streams_refusals_are_permanent_errors_naming_the_field() {
    let config = config().await;
    let stream = unique("refusals");
    let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
    let cases = [
        (
            Message::new(&stream, "x").with_header("attempt", 3i64),
            "header `attempt` is a i64 value; Redis fields hold plain bytes only",
        ),
        (
            Message::new(&stream, "x").with_header("flag", HeaderValue::Null),
            "header `flag` is a null value",
        ),
        (
            Message::new(&stream, "x").with_header("payload", "p"),
            "header `payload` has the name of the payload field",
        ),
        (
            Message::new(&stream, "x").with_header("tmq-ttl-ms", "5"),
            "header `tmq-ttl-ms` has the name of a tower-mq control field",
        ),
        (
            Message::new(&stream, "x")
                .with_header("content-type", "a/b")
                .with_content_type("c/d"),
            "header `content-type` collides with the field of the content type",
        ),
        (
            Message::new(&stream, "x").with_priority(4),
            "Redis cannot honour message priority",
        ),
    ];
    for (message, reason) in cases {
        let err = try_publish(&mut publisher, message)
            .await
            .expect_err(reason);
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.code(), Some(tower_mq::Code::Unsupported), "{err}");
        assert_eq!(err.broker(), "redis");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some(stream.as_str()));
        assert!(err.to_string().contains(reason), "{err} lacks {reason:?}");
    }
    let headers_only = config
        .clone()
        .stream_layout(StreamLayout::new().no_payload_field());
    let mut publisher = StreamPublisher::connect(&headers_only)
        .await
        .expect("connect");
    let err = try_publish(&mut publisher, Message::new(&stream, "x"))
        .await
        .expect_err("a payload without a field");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("no payload field"), "{err}");
    // Nothing was appended.
    let (_, mut conn) = plain().await;
    assert!(xrange(&mut conn, &stream).await.is_empty());
}

/// A plain subscriber on `channel`, subscribed when this returns.
async fn plain_subscriber(client: &redis::Client, channel: &str) -> redis::aio::PubSubStream {
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub connection");
    pubsub.subscribe(channel).await.expect("SUBSCRIBE");
    pubsub.into_on_message()
}

async fn plain_next(subscriber: &mut redis::aio::PubSubStream) -> Vec<u8> {
    let msg = tokio::time::timeout(WAIT, subscriber.next())
        .await
        .expect("no message within the wait")
        .expect("subscription ended");
    msg.get_payload_bytes().to_vec()
}

/// Payloads any client may send: binary, empty, and one that starts with the envelope
/// marker tower-mq's envelope framing uses.
fn odd_payloads() -> Vec<Vec<u8>> {
    vec![
        BINARY.to_vec(),
        Vec::new(),
        b"\0tmq1\0\0\0\x07payload\0\0\0\x01x".to_vec(),
        b"\0tmq1 not an envelope".to_vec(),
    ]
}

#[tokio::test]
async fn pubsub_payloads_from_a_plain_client_are_delivered_as_they_are() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let channel = unique("pubsub-plain-to-tmq");
    let mut consumer = PubSubConsumer::subscribe(&config, [Subscription::channel(&channel)])
        .await
        .expect("subscribe");
    for payload in odd_payloads() {
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&payload[..])
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        assert_eq!(receivers, 1);
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.message(), &Message::new(&channel, payload));
        assert_eq!(delivery.timestamp(), None);
    }
}

#[tokio::test]
async fn pubsub_messages_from_tower_mq_are_read_exactly_by_a_plain_subscriber() {
    let config = config().await;
    let (client, _) = plain().await;
    let channel = unique("pubsub-tmq-to-plain");
    let mut subscriber = plain_subscriber(&client, &channel).await;
    let mut publisher = PubSubPublisher::connect(&config).await.expect("connect");
    for payload in odd_payloads() {
        let receipt = publish(&mut publisher, Message::new(&channel, payload.clone())).await;
        assert_eq!(
            receipt,
            Receipt::new("redis", channel.clone(), Guarantee::Forwarded).with_receivers(1)
        );
        assert_eq!(plain_next(&mut subscriber).await, payload);
    }
    // A non-persistent message is plain: Pub/Sub stores nothing anyway.
    publish(
        &mut publisher,
        Message::new(&channel, "transient").with_persistent(false),
    )
    .await;
    assert_eq!(plain_next(&mut subscriber).await, b"transient");
}

#[tokio::test]
async fn pubsub_consume_and_republish_leaves_the_payload_unchanged() {
    let config = config().await;
    let (client, mut conn) = plain().await;
    let source = unique("pubsub-from");
    let target = unique("pubsub-to");
    let mut consumer = PubSubConsumer::subscribe(&config, [Subscription::channel(&source)])
        .await
        .expect("subscribe");
    let mut subscriber = plain_subscriber(&client, &target).await;
    let mut publisher = PubSubPublisher::connect(&config).await.expect("connect");
    for payload in odd_payloads() {
        let _: u64 = redis::cmd("PUBLISH")
            .arg(&source)
            .arg(&payload[..])
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        let delivery = next(&mut consumer).await;
        let mut message = delivery.message().clone();
        message.set_destination(&target);
        publish(&mut publisher, message).await;
        assert_eq!(plain_next(&mut subscriber).await, payload);
    }
}

#[tokio::test]
async fn pubsub_plain_framing_refuses_what_a_bare_payload_cannot_carry() {
    let config = config().await;
    let (client, _) = plain().await;
    let channel = unique("pubsub-refusals");
    let mut subscriber = plain_subscriber(&client, &channel).await;
    let mut publisher = PubSubPublisher::connect(&config).await.expect("connect");
    let rich = Message::new(&channel, "body")
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_key("k")
        .with_timestamp(at())
        .with_ttl(Duration::from_secs(5));
    let err = try_publish(&mut publisher, rich.clone())
        .await
        .expect_err("headers cannot travel in a bare payload");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some(tower_mq::Code::Unsupported), "{err}");
    assert_eq!(err.broker(), "redis");
    assert_eq!(err.operation(), Operation::Publish);
    assert_eq!(err.destination(), Some(channel.as_str()));
    let text = err.to_string();
    for what in [
        "header `traceparent`",
        "key",
        "timestamp",
        "TTL",
        "envelope",
    ] {
        assert!(text.contains(what), "{text} lacks {what}");
    }
    // Opting out sends the payload alone.
    let mut lenient = publisher.clone().ignore_unsupported(true);
    publish(&mut lenient, rich).await;
    assert_eq!(plain_next(&mut subscriber).await, b"body");
}

#[tokio::test]
async fn pubsub_envelope_framing_carries_everything_and_leaves_foreign_payloads_plain() {
    let config = config().await.pubsub_framing(Framing::Envelope);
    let (_, mut conn) = plain().await;
    let channel = unique("pubsub-envelope");
    let mut consumer = PubSubConsumer::subscribe(&config, [Subscription::channel(&channel)])
        .await
        .expect("subscribe");
    let mut publisher = PubSubPublisher::connect(&config).await.expect("connect");
    let mut rich = Message::new(&channel, BINARY)
        .with_key(BINARY)
        .with_header("raw", &b"\xff"[..])
        .with_header("payload", "a header")
        .with_correlation_id("c-1")
        .with_timestamp(at());
    rich.headers_mut().append("raw", "again");
    publish(&mut publisher, rich.clone()).await;
    assert_eq!(next(&mut consumer).await.message(), &rich);
    // A payload that starts with the marker is enveloped, so it comes back as it was.
    let marked = Message::new(&channel, &b"\0tmq1\0\0\0\x07payload\0\0\0\x01x"[..]);
    publish(&mut publisher, marked.clone()).await;
    assert_eq!(next(&mut consumer).await.message(), &marked);
    let transient = Message::new(&channel, "t").with_persistent(false);
    publish(&mut publisher, transient.clone()).await;
    assert_eq!(next(&mut consumer).await.message(), &transient);
    // A foreign payload that starts with the marker but is no envelope stays plain.
    let foreign = b"\0tmq1 not an envelope".to_vec();
    let _: u64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(&foreign[..])
        .query_async(&mut conn)
        .await
        .expect("PUBLISH");
    assert_eq!(
        next(&mut consumer).await.message(),
        &Message::new(&channel, foreign)
    );
    // Typed header values are refused even in the envelope.
    let err = try_publish(
        &mut publisher,
        Message::new(&channel, "x").with_header("n", 1u8),
    )
    .await
    .expect_err("typed value");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    assert!(err.to_string().contains("header `n` is a u8"), "{err}");
}

#[tokio::test]
async fn pubsub_message_on_a_binary_channel_name_is_a_transient_error_and_the_next_arrives() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let prefix = unique("pubsub-binary-channel");
    let mut consumer =
        PubSubConsumer::subscribe(&config, [Subscription::pattern(format!("{prefix}.*"))])
            .await
            .expect("subscribe");
    let mut binary_channel = format!("{prefix}.").into_bytes();
    binary_channel.extend_from_slice(b"\xff");
    let good_channel = format!("{prefix}.ok");
    for channel in [&binary_channel[..], good_channel.as_bytes()] {
        let receivers: u64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg("x")
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        assert_eq!(receivers, 1);
    }
    let err = tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("no item within the wait")
        .expect("consumer ended")
        .expect_err("a destination cannot hold a binary channel name");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("not UTF-8"), "{err}");
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message(), &Message::new(&good_channel, "x"));
}

#[tokio::test]
async fn streams_redelivery_counts_another_program_wrote_never_dead_letter_a_first_read() {
    let config = config().await;
    let (_, mut conn) = plain().await;
    let stream = unique("foreign-count");
    let settings = StreamConsumerConfig::new(&stream, "g")
        .batch_size(16)
        .max_deliveries(10);
    let dead_letter = tower_mq::dead_letter::destination_for(settings.stream());
    // (value of tmq-redeliveries, delivery count expected)
    let cases: [(&[u8], u32); 6] = [
        (b"4294967295", 1),
        (b"9223372036854775807", 1),
        (b"10", 1),
        (b"-3", 1),
        (b"many", 1),
        // Below the backstop: as a nack would have written it.
        (b"9", 10),
    ];
    for (value, _) in &cases {
        xadd(
            &mut conn,
            &stream,
            &[(b"payload", value), (b"tmq-redeliveries", value)],
        )
        .await;
    }
    let mut consumer = StreamConsumer::subscribe(&config, settings)
        .await
        .expect("subscribe");
    for (value, count) in &cases {
        let delivery = next(&mut consumer).await;
        assert_eq!(delivery.message().payload().as_ref(), *value);
        assert_eq!(
            delivery.delivery_count(),
            *count,
            "tmq-redeliveries {:?}",
            String::from_utf8_lossy(value)
        );
        delivery.ack().await.expect("ack");
    }
    assert!(xrange(&mut conn, &dead_letter).await.is_empty());
}

#[tokio::test]
async fn streams_entry_with_a_control_character_in_a_field_name_is_dead_lettered_and_the_batch_goes_on(
) {
    assert_odd_field_names_are_dead_lettered_and_the_batch_goes_on(
        "control-name",
        &[
            b"x-evil\r\nInjected: 1",
            b"line\nfeed",
            b"tab\tname",
            b"del\x7f",
        ],
        "has a control character",
    )
    .await;
}

#[tokio::test]
async fn streams_publish_refuses_header_names_with_control_characters() {
    let config = config().await;
    let stream = unique("control-refusals");
    let mut publisher = StreamPublisher::connect(&config).await.expect("connect");
    for name in ["x-evil\r\nInjected", "nul\0name", "bell\u{7}"] {
        let err = try_publish(
            &mut publisher,
            Message::new(&stream, "x").with_header(name, "v"),
        )
        .await
        .expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some(stream.as_str()));
        let named = format!("header {name:?} has a control character in its name");
        assert!(err.to_string().contains(&named), "{err} lacks {named:?}");
    }
    let (_, mut conn) = plain().await;
    assert!(xrange(&mut conn, &stream).await.is_empty());
}
