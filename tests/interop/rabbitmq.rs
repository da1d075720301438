//! RabbitMQ: lapin, used directly as any other AMQP 0-9-1 client would, on one side,
//! tower-mq on the other, against the broker at `TOWER_MQ_AMQP_URL` (default: the
//! project harness, `amqp://guest:guest@127.0.0.1:15673/%2f`).

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Confirmation, ConnectionProperties, ExchangeKind};
use tower::{Service, ServiceExt};
use tower_mq::rabbitmq::{
    Binding, Config, Connection, Consumer, Exchange, Queue, Routing, Topology,
};
use tower_mq::{Delivery, Error, ErrorKind, HeaderValue, Headers, Message, Operation, Receipt};

use crate::harness::rabbitmq::{connect, unreachable, url};
use crate::harness::unique;

/// The user the broker checks `user_id` against: the one in the URL.
fn user() -> String {
    let uri: lapin::uri::AMQPUri = url()
        .parse()
        .unwrap_or_else(|e| panic!("rabbitmq: TOWER_MQ_AMQP_URL is not an AMQP URI: {e}"));
    uri.authority.userinfo.username
}

/// lapin on its own connection, in confirm mode, as a plain AMQP client.
struct Plain {
    _connection: lapin::Connection,
    channel: lapin::Channel,
}

impl Plain {
    async fn connect() -> Plain {
        let address = url();
        let connection = lapin::Connection::connect(&address, ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| unreachable(e));
        let channel = connection.create_channel().await.expect("lapin channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        Plain {
            _connection: connection,
            channel,
        }
    }

    /// An auto-deleted exchange of `kind`.
    async fn exchange(&self, name: &str, kind: ExchangeKind) {
        let options = ExchangeDeclareOptions {
            auto_delete: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(name.into(), kind, options, FieldTable::default())
            .await
            .expect("exchange.declare");
    }

    /// A queue that deletes itself a minute after its last use, bound to `exchange`
    /// with `key` when given.
    async fn queue(&self, name: &str, bind: Option<(&str, &str)>) {
        let mut arguments = FieldTable::default();
        arguments.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        self.channel
            .queue_declare(name.into(), QueueDeclareOptions::default(), arguments)
            .await
            .expect("queue.declare");
        if let Some((exchange, key)) = bind {
            self.channel
                .queue_bind(
                    name.into(),
                    exchange.into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("queue.bind");
        }
    }

    /// Publishes mandatory and waits for the broker's confirm.
    async fn publish(&self, exchange: &str, key: &str, payload: &[u8], props: BasicProperties) {
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(exchange.into(), key.into(), options, payload, props)
            .await
            .expect("basic.publish")
            .await
            .expect("publisher confirm");
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "the broker did not take the plain client's message: {confirm:?}"
        );
    }

    /// The next message on `queue`, taken with `basic.get` (auto-ack), if any.
    async fn get(&self, queue: &str) -> Option<lapin::message::Delivery> {
        let options = BasicGetOptions { no_ack: true };
        self.channel
            .basic_get(queue.into(), options)
            .await
            .expect("basic.get")
            .map(|got| got.delivery)
    }

    async fn must_get(&self, queue: &str, what: &str) -> lapin::message::Delivery {
        self.get(queue)
            .await
            .unwrap_or_else(|| panic!("{what}: nothing in queue {queue}"))
    }
}

/// tower-mq on the broker with `config`, consuming `queue`.
async fn tower_mq_consumer(config: Config, queue: &str) -> (Connection, Consumer) {
    let connection = connect(config).await;
    let consumer = connection.consumer(queue).await.expect("consume");
    (connection, consumer)
}

async fn next(consumer: &mut Consumer) -> Result<Delivery, Error> {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("no delivery within 10 s")
        .expect("the consumer ended")
}

async fn publish(
    publisher: &mut tower_mq::rabbitmq::Publisher,
    message: Message,
) -> Result<Receipt, Error> {
    publisher.ready().await?.call(message).await
}

const BINARY: &[u8] = b"\x00\x01\xff\xfe binary \x80";

/// A `headers` table with every AMQP field type, binary and nested values included.
fn typed_table() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("depth".into(), AMQPValue::ShortShortUInt(2));
    nested.insert("nothing".into(), AMQPValue::Void);
    let mut t = FieldTable::default();
    t.insert("bool".into(), AMQPValue::Boolean(true));
    t.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    t.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    t.insert("i16".into(), AMQPValue::ShortInt(-16_000));
    t.insert("u16".into(), AMQPValue::ShortUInt(60_000));
    t.insert("i32".into(), AMQPValue::LongInt(-2_000_000_000));
    t.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    t.insert("i64".into(), AMQPValue::LongLongInt(-9_000_000_000_000));
    t.insert("f32".into(), AMQPValue::Float(1.5));
    t.insert("f64".into(), AMQPValue::Double(-2.25e300));
    t.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12_345,
        }),
    );
    t.insert("text".into(), AMQPValue::LongString("grüße ✓".into()));
    t.insert(
        "binary".into(),
        AMQPValue::LongString(LongString::from(BINARY.to_vec())),
    );
    t.insert("empty".into(), AMQPValue::LongString("".into()));
    t.insert(
        "byte-array".into(),
        AMQPValue::ByteArray(ByteArray::from(BINARY)),
    );
    t.insert("stamp".into(), AMQPValue::Timestamp(1_700_000_000));
    t.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongString("a".into()),
            AMQPValue::LongInt(1),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Boolean(false)])),
        ])),
    );
    t.insert("table".into(), AMQPValue::FieldTable(nested));
    t.insert("void".into(), AMQPValue::Void);
    t
}

/// The same headers as tower-mq holds them, in the order AMQP tables keep (by name).
fn typed_headers() -> Headers {
    let mut nested = BTreeMap::new();
    nested.insert("depth".to_owned(), HeaderValue::U8(2));
    nested.insert("nothing".to_owned(), HeaderValue::Null);
    let mut entries: Vec<(&str, HeaderValue)> = vec![
        ("bool", HeaderValue::Bool(true)),
        ("i8", HeaderValue::I8(-8)),
        ("u8", HeaderValue::U8(200)),
        ("i16", HeaderValue::I16(-16_000)),
        ("u16", HeaderValue::U16(60_000)),
        ("i32", HeaderValue::I32(-2_000_000_000)),
        ("u32", HeaderValue::U32(4_000_000_000)),
        ("i64", HeaderValue::I64(-9_000_000_000_000)),
        ("f32", HeaderValue::F32(1.5)),
        ("f64", HeaderValue::F64(-2.25e300)),
        (
            "decimal",
            HeaderValue::Decimal {
                scale: 2,
                value: 12_345,
            },
        ),
        ("text", HeaderValue::from("grüße ✓")),
        ("binary", HeaderValue::from(BINARY)),
        ("empty", HeaderValue::from("")),
        (
            "byte-array",
            HeaderValue::ByteArray(Bytes::from_static(BINARY)),
        ),
        ("stamp", HeaderValue::Timestamp(1_700_000_000)),
        (
            "array",
            HeaderValue::Array(vec![
                HeaderValue::from("a"),
                HeaderValue::I32(1),
                HeaderValue::Array(vec![HeaderValue::Bool(false)]),
            ]),
        ),
        ("table", HeaderValue::Table(nested)),
        ("void", HeaderValue::Null),
    ];
    entries.sort_by_key(|(name, _)| *name);
    let mut headers = Headers::new();
    for (name, value) in entries {
        headers.append(name, value);
    }
    headers
}

/// Every basic property set, the timestamp's milliseconds in RabbitMQ's
/// `timestamp_in_ms`.
fn full_properties() -> BasicProperties {
    let mut headers = typed_table();
    headers.insert(
        "timestamp_in_ms".into(),
        AMQPValue::LongLongInt(1_700_000_000_123),
    );
    BasicProperties::default()
        .with_content_type("application/octet-stream".into())
        .with_content_encoding("identity".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("3600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_000)
        .with_type("order.created".into())
        .with_user_id(ShortString::from(user()))
        .with_app_id("billing".into())
}

/// What tower-mq should make of `full_properties()` sent to `exchange` with `key`.
fn full_message(exchange: &str, key: &str, payload: &'static [u8]) -> Message {
    Message::new(exchange, payload)
        .with_key(key)
        .with_headers(typed_headers())
        .with_persistent(true)
        .with_priority(7)
        .with_correlation_id("corr-1")
        .with_reply_to("replies")
        .with_ttl(Duration::from_secs(3600))
        .with_message_id("msg-1")
        .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        .with_message_type("order.created")
        .with_user_id(user())
        .with_app_id("billing")
        .with_content_type("application/octet-stream")
        .with_content_encoding("identity")
}

#[tokio::test]
async fn a_plain_clients_messages_arrive_in_tower_mq_exactly() {
    let plain = Plain::connect().await;
    let exchange = unique("from-plain");
    let queue = unique("from-plain-q");
    plain.exchange(&exchange, ExchangeKind::Topic).await;
    plain.queue(&queue, Some((&exchange, "#"))).await;
    let (_connection, mut consumer) = tower_mq_consumer(Config::new(url()), &queue).await;

    // Every property and header type, a binary payload, a non-ASCII routing key.
    plain
        .publish(&exchange, "order.créé", BINARY, full_properties())
        .await;
    // Nothing at all: an empty payload, no properties.
    plain
        .publish(&exchange, "", b"", BasicProperties::default())
        .await;
    // A timestamp on the second, and explicitly transient.
    plain
        .publish(
            &exchange,
            "k",
            b"x",
            BasicProperties::default()
                .with_timestamp(1_600_000_000)
                .with_delivery_mode(1),
        )
        .await;

    let full = next(&mut consumer).await.expect("the full message");
    assert_eq!(
        full.message(),
        &full_message(&exchange, "order.créé", BINARY)
    );
    assert_eq!(
        full.timestamp(),
        Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
    );
    full.ack().await.expect("ack");

    let empty = next(&mut consumer).await.expect("the empty message");
    assert_eq!(
        empty.message(),
        &Message::new(&exchange, "").with_persistent(false)
    );
    assert_eq!(empty.timestamp(), None);
    empty.ack().await.expect("ack");

    let stamped = next(&mut consumer).await.expect("the stamped message");
    assert_eq!(
        stamped.message(),
        &Message::new(&exchange, "x")
            .with_key("k")
            .with_persistent(false)
            .with_timestamp(UNIX_EPOCH + Duration::from_secs(1_600_000_000))
    );
    stamped.ack().await.expect("ack");
}

#[tokio::test]
async fn tower_mq_messages_reach_a_plain_client_exactly() {
    let plain = Plain::connect().await;
    let exchange = unique("to-plain");
    let queue = unique("to-plain-q");
    plain.exchange(&exchange, ExchangeKind::Topic).await;
    plain.queue(&queue, Some((&exchange, "#"))).await;
    let connection = connect(Config::new(url())).await;
    let mut publisher = connection.publisher();

    let full = full_message(&exchange, "order.créé", BINARY);
    let receipt = publish(&mut publisher, full).await.expect("publish");
    assert!(matches!(
        &receipt,
        r if r.destination() == exchange && r.routing_key() == Some("order.créé")
    ));
    let got = plain.must_get(&queue, "the full message").await;
    assert_eq!(got.exchange.as_str(), exchange);
    assert_eq!(got.routing_key.as_str(), "order.créé");
    assert_eq!(got.data, BINARY);
    assert_eq!(got.properties, full_properties());

    // The defaults: persistent, nothing else; and a transient message, whose delivery
    // mode is left out as plain clients leave it out.
    publish(&mut publisher, Message::new(&exchange, "").with_key("a"))
        .await
        .expect("publish");
    publish(
        &mut publisher,
        Message::new(&exchange, "t")
            .with_key("b")
            .with_persistent(false)
            .with_timestamp(UNIX_EPOCH + Duration::from_secs(1_600_000_000)),
    )
    .await
    .expect("publish");
    let got = plain.must_get(&queue, "the empty message").await;
    assert_eq!(got.data, b"");
    assert_eq!(got.routing_key.as_str(), "a");
    assert_eq!(
        got.properties,
        BasicProperties::default().with_delivery_mode(2)
    );
    let got = plain.must_get(&queue, "the transient message").await;
    assert_eq!(got.data, b"t");
    assert_eq!(
        got.properties,
        BasicProperties::default().with_timestamp(1_600_000_000)
    );
}

#[tokio::test]
async fn consuming_and_republishing_leaves_the_message_unchanged() {
    let plain = Plain::connect().await;
    let exchange = unique("republish");
    let through = unique("republish-through");
    let watch = unique("republish-watch");
    plain.exchange(&exchange, ExchangeKind::Direct).await;
    // tower-mq consumes `through` and publishes what it got to the same exchange; the
    // plain client watches `watch`, which gets the original and then the copy.
    plain.queue(&through, Some((&exchange, "order.créé"))).await;
    plain.queue(&watch, Some((&exchange, "order.créé"))).await;
    plain.queue(&through, Some((&exchange, ""))).await;
    plain.queue(&watch, Some((&exchange, ""))).await;
    let (connection, mut consumer) = tower_mq_consumer(Config::new(url()), &through).await;
    let mut publisher = connection.publisher();

    let sent: [(&str, &[u8], BasicProperties); 3] = [
        ("order.créé", BINARY, full_properties()),
        ("", b"", BasicProperties::default()),
        (
            "order.créé",
            b"x",
            BasicProperties::default()
                .with_timestamp(1_600_000_000)
                .with_priority(0)
                .with_headers(typed_table()),
        ),
    ];
    for (key, payload, props) in &sent {
        plain.publish(&exchange, key, payload, props.clone()).await;
        let original = plain.must_get(&watch, "the original").await;
        let delivery = next(&mut consumer).await.expect("tower-mq's delivery");
        publish(&mut publisher, delivery.message().clone())
            .await
            .expect("republish");
        delivery.ack().await.expect("ack");
        let copy = plain.must_get(&watch, "the republished copy").await;
        assert_eq!(copy.exchange, original.exchange, "{key:?}");
        assert_eq!(copy.routing_key, original.routing_key, "{key:?}");
        assert_eq!(copy.data, original.data, "{key:?}");
        assert_eq!(copy.properties, original.properties, "{key:?}");
        assert_eq!(copy.properties, *props, "{key:?}");
        // The copy went round through `through` as well; drain it.
        let again = next(&mut consumer).await.expect("the copy in tower-mq");
        assert_eq!(again.message(), delivery.message());
        again.ack().await.expect("ack");
    }
}

#[tokio::test]
async fn a_default_exchange_message_republished_goes_back_to_its_queue() {
    let plain = Plain::connect().await;
    let through = unique("direct-through");
    plain.queue(&through, None).await;
    // One delivery at a time, so that the copy waits in the queue for the plain client
    // while tower-mq still holds the original.
    let (connection, mut consumer) =
        tower_mq_consumer(Config::new(url()).prefetch(1), &through).await;
    let mut publisher = connection.publisher();
    plain
        .publish("", &through, b"to the queue", full_properties())
        .await;
    let first = next(&mut consumer).await.expect("the message");
    assert_eq!(first.message().destination(), "");
    assert_eq!(first.message().key_str(), Some(through.as_str()));
    publish(&mut publisher, first.message().clone())
        .await
        .expect("republish");
    let got = plain.must_get(&through, "the republished copy").await;
    first.ack().await.expect("ack");
    assert_eq!(got.exchange.as_str(), "");
    assert_eq!(got.routing_key.as_str(), through);
    assert_eq!(got.data, b"to the queue");
    assert_eq!(got.properties, full_properties());
}

fn assert_refused(err: &Error, destination: &str, needle: &str) {
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some(tower_mq::Code::Unsupported), "{err}");
    assert_eq!(err.broker(), "rabbitmq", "{err}");
    assert_eq!(err.operation(), Operation::Publish, "{err}");
    assert_eq!(err.destination(), Some(destination), "{err}");
    assert!(err.to_string().contains(needle), "{needle:?} not in: {err}");
}

#[tokio::test]
async fn what_amqp_cannot_carry_fails_the_publish_and_nothing_is_sent() {
    let plain = Plain::connect().await;
    let exchange = unique("refused");
    let queue = unique("refused-q");
    plain.exchange(&exchange, ExchangeKind::Topic).await;
    plain.queue(&queue, Some((&exchange, "#"))).await;
    let connection = connect(Config::new(url())).await;
    let mut publisher = connection.publisher();

    let mut repeated = Headers::new();
    repeated.append("hop", "edge");
    repeated.append("hop", "core");
    let refusals = [
        (
            Message::new(&exchange, "").with_headers(repeated),
            "header `hop` appears more than once",
        ),
        (
            Message::new(&exchange, "").with_header("h".repeat(256), "v"),
            "its name is 256 bytes",
        ),
        (
            Message::new(&exchange, "").with_key([0u8, 1, 0xff, 0xfe]),
            "not UTF-8",
        ),
        (
            Message::new(&exchange, "").with_ttl(Duration::from_micros(1500)),
            "whole milliseconds",
        ),
        (
            Message::new(&exchange, "").with_timestamp(UNIX_EPOCH - Duration::from_secs(60)),
            "earlier",
        ),
        (
            Message::new(&exchange, "").with_correlation_id("c".repeat(256)),
            "the correlation id is 256 bytes",
        ),
    ];
    for (message, needle) in refusals {
        let err = publish(&mut publisher, message).await.expect_err(needle);
        assert_refused(&err, &exchange, needle);
    }
    // RabbitMQ itself refuses a user id other than the connection's.
    let err = publish(
        &mut publisher,
        Message::new(&exchange, "").with_user_id("someone-else"),
    )
    .await
    .expect_err("another user id");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");

    // The publisher still works, and none of the refused messages went out.
    publish(&mut publisher, Message::new(&exchange, "fine"))
        .await
        .expect("publish");
    let got = plain.must_get(&queue, "the valid message").await;
    assert_eq!(got.data, b"fine");
    assert!(
        plain.get(&queue).await.is_none(),
        "a refused message was sent"
    );
}

#[tokio::test]
async fn a_key_the_routing_mode_cannot_send_is_refused_unless_ignored() {
    let plain = Plain::connect().await;
    let queue = unique("keyless");
    plain.queue(&queue, None).await;
    let strict = connect(Config::new(url()).routing(Routing::DefaultExchange)).await;
    let err = publish(
        &mut strict.publisher(),
        Message::new(&queue, "k").with_key("lost"),
    )
    .await
    .expect_err("a key with DefaultExchange routing");
    assert_refused(&err, &queue, "key");
    assert!(err.to_string().contains("ignore_unsupported"), "{err}");
    assert!(
        plain.get(&queue).await.is_none(),
        "the refused message was sent"
    );

    let lenient = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .ignore_unsupported(true),
    )
    .await;
    publish(
        &mut lenient.publisher(),
        Message::new(&queue, "k").with_key("lost"),
    )
    .await
    .expect("publish without the key");
    let got = plain.must_get(&queue, "the message without its key").await;
    assert_eq!(got.routing_key.as_str(), queue);
    assert_eq!(got.data, b"k");
}

#[tokio::test]
async fn a_delivery_tower_mq_cannot_hold_is_dead_lettered_and_the_consumer_goes_on() {
    let plain = Plain::connect().await;
    let queue = unique("malformed");
    let dlx = unique("malformed-dlx");
    let dead = unique("malformed-dead");
    let (_connection, mut consumer) = tower_mq_consumer(
        Config::new(url()).topology(
            Topology::new()
                .exchange(Exchange::fanout(&dlx).auto_delete(true))
                .queue(Queue::classic(&dead).expires(Duration::from_secs(60)))
                .binding(Binding::queue(&dead, &dlx, ""))
                .queue(
                    Queue::classic(&queue)
                        .expires(Duration::from_secs(60))
                        .dead_letter_exchange(&dlx),
                ),
        ),
        &queue,
    )
    .await;
    // A timestamp no SystemTime holds, then an ordinary message.
    let odd = BasicProperties::default()
        .with_timestamp(u64::MAX)
        .with_message_id("odd".into());
    plain.publish("", &queue, b"odd", odd.clone()).await;
    plain
        .publish("", &queue, b"fine", BasicProperties::default())
        .await;

    let err = next(&mut consumer)
        .await
        .expect_err("the odd delivery is an error");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.operation(), Operation::Receive, "{err}");
    assert_eq!(err.destination(), Some(queue.as_str()), "{err}");
    assert!(err.to_string().contains("timestamp"), "{err}");
    let fine = next(&mut consumer)
        .await
        .expect("the consumer goes on to the next message");
    assert_eq!(fine.message().payload().as_ref(), b"fine");
    fine.ack().await.expect("ack");

    // The odd message is dead-lettered as it came, with the reason.
    let letter = plain.must_get(&dead, "the dead letter").await;
    assert_eq!(letter.data, b"odd");
    assert_eq!(*letter.properties.timestamp(), Some(u64::MAX));
    assert_eq!(letter.properties.message_id(), odd.message_id());
    let reason = letter
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(tower_mq::dead_letter::REASON).cloned());
    assert!(
        matches!(&reason, Some(AMQPValue::LongString(r)) if String::from_utf8_lossy(r.as_bytes()).contains("timestamp")),
        "{reason:?}"
    );
}

#[tokio::test]
async fn serve_goes_on_past_a_delivery_tower_mq_cannot_hold() {
    use std::future::IntoFuture;

    let plain = Plain::connect().await;
    let queue = unique("malformed-serve");
    plain.queue(&queue, None).await;
    let (_connection, consumer) = tower_mq_consumer(Config::new(url()), &queue).await;
    let (seen, mut handled) = tokio::sync::mpsc::unbounded_channel();
    let handler = tower::service_fn(move |delivery: Delivery| {
        let seen = seen.clone();
        async move {
            let _ = seen.send(delivery.message().payload().clone());
            Ok::<_, tower_mq::BoxError>(())
        }
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tower_mq::serve(consumer, handler)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );
    plain
        .publish(
            "",
            &queue,
            b"odd",
            BasicProperties::default().with_timestamp(u64::MAX),
        )
        .await;
    plain
        .publish("", &queue, b"fine", BasicProperties::default())
        .await;
    let got = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("serve handled nothing within 10 s")
        .expect("the handler is gone");
    assert_eq!(got.as_ref(), b"fine");
    stop.send(()).ok();
    let summary = server
        .await
        .expect("serve panicked")
        .expect("serve stopped with an error");
    assert_eq!(summary.acked, 1, "{summary:?}");
    // The queue has no dead-letter exchange: the odd message is dropped by the broker
    // as a rejected message, not delivered to the handler and not left to loop.
    assert!(
        plain.get(&queue).await.is_none(),
        "the odd message came back"
    );
}

#[tokio::test]
async fn delivery_counts_a_plain_client_wrote_are_ignored() {
    let plain = Plain::connect().await;
    let exchange = unique("foreign-count");
    let queue = unique("foreign-count-q");
    plain.exchange(&exchange, ExchangeKind::Fanout).await;
    plain.queue(&queue, Some((&exchange, ""))).await;
    let with = |name: &str, value: AMQPValue| {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), value);
        BasicProperties::default().with_headers(headers)
    };
    // Straight to the queue (the way requeues come back) and through an exchange.
    let cases = [
        (
            "",
            &queue,
            "tower-mq's header past u32",
            with("x-tower-mq-deliveries", AMQPValue::LongLongInt(i64::MAX)),
        ),
        (
            "",
            &queue,
            "tower-mq's header negative",
            with("x-tower-mq-deliveries", AMQPValue::LongLongInt(-5)),
        ),
        (
            "",
            &queue,
            "tower-mq's header as text",
            with(
                "x-tower-mq-deliveries",
                AMQPValue::LongString("4000000000".into()),
            ),
        ),
        (
            "",
            &queue,
            "tower-mq's header not a number",
            with(
                "x-tower-mq-deliveries",
                AMQPValue::LongString("many".into()),
            ),
        ),
        (
            exchange.as_str(),
            &queue,
            "tower-mq's header through an exchange",
            with("x-tower-mq-deliveries", AMQPValue::LongLongInt(1000)),
        ),
        (
            "",
            &queue,
            "the broker's header on a first delivery",
            with("x-delivery-count", AMQPValue::LongLongInt(i64::MAX)),
        ),
        (
            "",
            &queue,
            "the broker's header as text",
            with("x-delivery-count", AMQPValue::LongString("1000".into())),
        ),
    ];
    for (exchange, queue, what, properties) in &cases {
        let key = if exchange.is_empty() {
            queue.as_str()
        } else {
            ""
        };
        plain
            .publish(exchange, key, what.as_bytes(), properties.clone())
            .await;
    }
    let (_connection, mut consumer) = tower_mq_consumer(Config::new(url()), &queue).await;
    for (_, _, what, _) in &cases {
        let delivery = next(&mut consumer).await.expect(what);
        assert_eq!(delivery.message().payload().as_ref(), what.as_bytes());
        assert_eq!(delivery.delivery_count(), 1, "{what}");
        delivery.ack().await.expect("ack");
    }
    // tower-mq's own requeue still counts.
    plain
        .publish("", &queue, b"requeued", BasicProperties::default())
        .await;
    let first = next(&mut consumer).await.expect("first delivery");
    first.nack(None).await.expect("nack");
    let again = next(&mut consumer).await.expect("the requeued copy");
    assert_eq!(again.message().payload().as_ref(), b"requeued");
    assert_eq!(again.delivery_count(), 2);
    again.ack().await.expect("ack");
}
