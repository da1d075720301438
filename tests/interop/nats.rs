//! Interop with NATS' own client: async-nats, used directly, on one side, tower-mq on
//! the other, on core NATS and on JetStream.
//!
//! A plain client can put on the wire what NATS carries: a subject, a reply subject,
//! text headers (a name may repeat) and any payload. Those arrive in tower-mq exactly,
//! with the standard header names read as properties; what tower-mq publishes reads
//! exactly in the plain client; a message consumed and published again through
//! tower-mq is the same message to the plain client. What NATS cannot carry (typed or
//! binary header values, binary keys) is refused at publish with a permanent error.
//!
//! Address: `TOWER_MQ_NATS_URL` (default `nats://127.0.0.1:14222`, the harness's;
//! `scripts/brokers up nats` starts it).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::pull, stream::StorageType};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tower::ServiceExt;
use tower_mq::nats::config::ConsumerConfig;
use tower_mq::nats::jetstream::JetStream;
use tower_mq::nats::{Config, Connection, Publisher, Requester, Subscriber};
use tower_mq::wire::{Property, PropertyHeaders};
use tower_mq::{
    Delivery, Error, ErrorKind, Guarantee, HeaderValue, Message, Operation, Position, Receipt,
};

use crate::harness::nats::{connect, unreachable, url};
use crate::harness::unique;
use crate::waits::next_within;

/// Upper bound on waiting for something that should happen.
const WAIT: Duration = Duration::from_secs(15);

/// The plain async-nats client.
async fn plain() -> async_nats::Client {
    async_nats::connect(url())
        .await
        .unwrap_or_else(|err| unreachable(err))
}

async fn tower_mq() -> Connection {
    connect(Config::new(url())).await
}

/// Returns once the server processed everything `client` sent before: it answers a
/// request nobody is subscribed to with "no responders" only after that.
async fn sync(client: &async_nats::Client) {
    match client
        .request(format!("_INTEROP.SYNC.{}", unique("sync")), Bytes::new())
        .await
    {
        Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => {}
        other => panic!("syncing with the server: {other:?}"),
    }
}

async fn next_delivery<S>(stream: &mut S, what: &str) -> Delivery
where
    S: Stream<Item = Result<Delivery, Error>> + Unpin,
{
    next_within(stream, &format!("tower-mq's {what}"), WAIT).await
}

async fn next_plain(subscriber: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    match tokio::time::timeout(WAIT, subscriber.next()).await {
        Ok(Some(message)) => message,
        Ok(None) => panic!("plain client: the subscription ended before {what}"),
        Err(_) => panic!("plain client: {what} did not arrive within {WAIT:?}"),
    }
}

async fn next_plain_js<S, E>(messages: &mut S, what: &str) -> jetstream::Message
where
    S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
    E: std::fmt::Debug,
{
    match tokio::time::timeout(WAIT, messages.next()).await {
        Ok(Some(Ok(message))) => {
            message
                .ack()
                .await
                .unwrap_or_else(|err| panic!("plain client: acking {what}: {err}"));
            message
        }
        Ok(Some(Err(err))) => panic!("plain client: receiving {what} failed: {err:?}"),
        Ok(None) => panic!("plain client: the consumer ended before {what}"),
        Err(_) => panic!("plain client: {what} did not arrive within {WAIT:?}"),
    }
}

fn headers(entries: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in entries {
        map.append(*name, *value);
    }
    map
}

fn binary_payload() -> Bytes {
    (0u8..=255).chain([0, 0xff, 0xfe, 0x80]).collect()
}

const AT_MS: u64 = 1_700_000_000_123;

fn at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(AT_MS)
}

/// Every property header by its standard name, repeated and empty values, a binary
/// payload: what a plain client sends when it means everything.
fn everything(reply_to_header: bool) -> (HeaderMap, Bytes) {
    let mut entries = vec![
        ("Nats-Msg-Id", "order-1"),
        ("Correlation-Id", "corr-1"),
        ("Content-Type", "application/octet-stream"),
        ("Content-Encoding", "identity"),
        ("Message-Type", "order.created"),
        ("App-Id", "shop"),
        ("User-Id", "guest"),
        ("Timestamp", "1700000000123"),
        ("Message-Key", "user-42"),
        ("hop", "edge"),
        ("hop", "core"),
        ("tenant", "acme"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("unicode", "grüße ✓"),
        ("x-empty", ""),
    ];
    if reply_to_header {
        entries.push(("Reply-To", "replies.orders"));
    }
    (headers(&entries), binary_payload())
}

/// What tower-mq makes of [`everything`] (sent to `subject`): the properties set, the
/// other headers in name order.
fn everything_as_message(subject: &str) -> Message {
    let mut message = Message::new(subject, binary_payload())
        .with_message_id("order-1")
        .with_correlation_id("corr-1")
        .with_content_type("application/octet-stream")
        .with_content_encoding("identity")
        .with_message_type("order.created")
        .with_app_id("shop")
        .with_user_id("guest")
        .with_timestamp(at())
        .with_key("user-42");
    let headers = message.headers_mut();
    headers.append("hop", "edge");
    headers.append("hop", "core");
    headers.append("tenant", "acme");
    headers.append(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    headers.append("unicode", "grüße ✓");
    headers.append("x-empty", "");
    message
}

/// Property headers that do not parse or come twice: they stay headers.
fn odd_properties() -> HeaderMap {
    headers(&[
        ("Timestamp", "yesterday"),
        ("Content-Type", "text/plain"),
        ("Content-Type", "text/html"),
        ("Nats-Msg-Id", "odd-1"),
        ("Nats-Msg-Id", "odd-2"),
    ])
}

fn odd_properties_as_message(subject: &str) -> Message {
    let mut message = Message::new(subject, "odd");
    let headers = message.headers_mut();
    headers.append("Content-Type", "text/plain");
    headers.append("Content-Type", "text/html");
    headers.append("Nats-Msg-Id", "odd-1");
    headers.append("Nats-Msg-Id", "odd-2");
    headers.append("Timestamp", "yesterday");
    message
}

/// A stream capturing `<name>.>`, in memory, made by the plain client.
/// Both sides of a JetStream test: the plain client's JetStream context, and tower-mq's
/// JetStream on a connection of its own.
async fn jetstream_sides() -> (jetstream::Context, JetStream) {
    let context = jetstream::new(plain().await);
    (context, JetStream::new(&tower_mq().await))
}

/// Publishes with the plain client and waits for the stream's ack; without `headers`,
/// as a plain `PUB`.
async fn plain_js_publish(
    context: &jetstream::Context,
    subject: &str,
    headers: Option<HeaderMap>,
    payload: Bytes,
) {
    let subject = subject.to_owned();
    let ack = match headers {
        Some(headers) => {
            context
                .publish_with_headers(subject, headers, payload)
                .await
        }
        None => context.publish(subject, payload).await,
    };
    ack.unwrap().await.unwrap();
}

async fn plain_stream(context: &jetstream::Context, name: &str) -> jetstream::stream::Stream {
    context
        .create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            storage: StorageType::Memory,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|err| panic!("plain client: creating stream {name}: {err}"))
}

async fn plain_consumer(stream: &jetstream::stream::Stream, durable: &str) -> pull::Stream {
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(durable.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|err| panic!("plain client: creating consumer {durable}: {err}"));
    consumer
        .messages()
        .await
        .unwrap_or_else(|err| panic!("plain client: consuming {durable}: {err}"))
}

async fn tower_mq_consumer(js: &JetStream, stream: &str) -> tower_mq::nats::jetstream::Consumer {
    let config = ConsumerConfig::new("tower-mq");
    js.declare_consumer(stream, &config)
        .await
        .unwrap_or_else(|err| panic!("tower-mq: declaring a consumer on {stream}: {err}"));
    js.consumer(stream, &config)
        .await
        .unwrap_or_else(|err| panic!("tower-mq: consuming {stream}: {err}"))
}

/// The time the stream stored message `sequence`, as the plain client sees it.
async fn stored_at(stream: &jetstream::stream::Stream, sequence: u64) -> SystemTime {
    let stored = stream
        .get_raw_message(sequence)
        .await
        .unwrap_or_else(|err| panic!("plain client: getting message {sequence}: {err}"));
    SystemTime::from(stored.time)
}

async fn delete_streams(context: &jetstream::Context, names: &[&str]) {
    for name in names {
        let _ = context.delete_stream(name).await;
    }
}

fn assert_permanent_publish_error(err: &Error, subject: &str, names: &str) {
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some(tower_mq::Code::Unsupported), "{err}");
    assert_eq!(err.broker(), "nats", "{err}");
    assert_eq!(err.operation(), Operation::Publish, "{err}");
    assert_eq!(err.destination(), Some(subject), "{err}");
    assert!(
        err.to_string().contains(names),
        "`{err}` should name {names}"
    );
}

/// Messages NATS cannot carry, with what the refusal names.
fn uncarriable(subject: &str) -> Vec<(Message, &'static str)> {
    vec![
        (
            Message::new(subject, "x").with_header("attempt", 5i64),
            "header `attempt` is a i64",
        ),
        (
            Message::new(subject, "x").with_header("ok", true),
            "header `ok` is a bool",
        ),
        (
            Message::new(subject, "x").with_header("nothing", HeaderValue::Null),
            "header `nothing` is a null",
        ),
        (
            Message::new(subject, "x").with_header("raw", &b"\x00\x01\xff\xfe"[..]),
            "header `raw` is not UTF-8",
        ),
        (
            Message::new(subject, "x").with_header("two-lines", "a\r\nb"),
            "header `two-lines` contains a line break",
        ),
        (
            Message::new(subject, "x").with_header("padded", " x"),
            "header `padded` starts or ends with whitespace",
        ),
        (
            Message::new(subject, "x").with_key([0u8, 1, 0xff, 0xfe]),
            "the key is not UTF-8",
        ),
        (
            Message::new(subject, "x").with_priority(5),
            "NATS has no message priorities",
        ),
        (
            Message::new(subject, "x").with_ttl(Duration::from_secs(1)),
            "TTL",
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Core NATS
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn core_plain_client_messages_arrive_in_tower_mq_exactly() {
    let client = plain().await;
    let connection = tower_mq().await;
    let subject = unique("core_in");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();

    let (all, payload) = everything(false);
    let reply = format!("{subject}.replies");
    client
        .publish_with_reply_and_headers(subject.clone(), reply.clone(), all, payload)
        .await
        .unwrap();
    client.publish(subject.clone(), Bytes::new()).await.unwrap();
    client
        .publish_with_headers(subject.clone(), odd_properties(), "odd".into())
        .await
        .unwrap();
    // A plain requester: its inbox is the reply-to.
    client
        .publish_with_reply(subject.clone(), "_INBOX.plain.1", "ask".into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let got = next_delivery(&mut subscriber, "everything").await;
    assert_eq!(
        got.message(),
        &everything_as_message(&subject).with_reply_to(reply)
    );
    assert_eq!(got.timestamp(), Some(at()));
    assert_eq!(got.message().key(), Some(&b"user-42"[..]));
    let got = next_delivery(&mut subscriber, "the empty message").await;
    assert_eq!(got.message(), &Message::new(&subject, Bytes::new()));
    assert_eq!(got.timestamp(), None, "core NATS has no time of its own");
    let got = next_delivery(&mut subscriber, "the odd properties").await;
    assert_eq!(got.message(), &odd_properties_as_message(&subject));
    let got = next_delivery(&mut subscriber, "the request").await;
    assert_eq!(
        got.message(),
        &Message::new(&subject, "ask").with_reply_to("_INBOX.plain.1")
    );
}

#[tokio::test]
async fn core_tower_mq_messages_read_exactly_in_the_plain_client() {
    let client = plain().await;
    let connection = tower_mq().await;
    let subject = unique("core_out");
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    sync(&client).await;

    let reply = format!("{subject}.replies");
    let message = everything_as_message(&subject).with_reply_to(&reply);
    let publisher = Publisher::new(&connection);
    publisher.clone().oneshot(message).await.unwrap();
    publisher
        .clone()
        .oneshot(Message::new(&subject, Bytes::new()))
        .await
        .unwrap();
    publisher
        .clone()
        .oneshot(Message::new(&subject, "transient").with_persistent(false))
        .await
        .unwrap();

    let got = next_plain(&mut subscriber, "everything").await;
    let (expected, payload) = everything(false);
    assert_eq!(got.payload, payload);
    assert_eq!(got.reply.as_deref(), Some(reply.as_str()));
    assert_eq!(got.headers.as_ref(), Some(&expected));
    assert_eq!(
        got.headers
            .as_ref()
            .map(|h| h.get_all("hop").map(|v| v.as_str()).collect::<Vec<_>>()),
        Some(vec!["edge", "core"])
    );

    let got = next_plain(&mut subscriber, "the empty message").await;
    assert!(got.payload.is_empty());
    assert_eq!(got.reply, None);
    assert!(
        got.headers.as_ref().is_none_or(HeaderMap::is_empty),
        "{:?}",
        got.headers
    );

    let got = next_plain(&mut subscriber, "the transient message").await;
    assert_eq!(got.payload, "transient");
    assert!(
        got.headers.as_ref().is_none_or(HeaderMap::is_empty),
        "persistence is not on the wire: {:?}",
        got.headers
    );
}

#[tokio::test]
async fn core_consume_and_republish_leaves_the_message_unchanged() {
    let client = plain().await;
    let connection = tower_mq().await;
    let inbound = unique("core_fwd_in");
    let outbound = unique("core_fwd_out");
    let mut forwarded = client.subscribe(outbound.clone()).await.unwrap();
    sync(&client).await;
    let mut subscriber = Subscriber::subscribe(&connection, &inbound).await.unwrap();

    let (all, payload) = everything(false);
    let sent: Vec<(HeaderMap, Bytes, Option<String>)> = vec![
        (all, payload, Some(format!("{inbound}.replies"))),
        (HeaderMap::new(), Bytes::new(), None),
        (odd_properties(), "odd".into(), None),
        // On core NATS a Reply-To header is an ordinary header beside the reply subject.
        (
            headers(&[("Reply-To", "elsewhere")]),
            "both".into(),
            Some("_INBOX.plain.2".to_owned()),
        ),
    ];
    for (headers, payload, reply) in &sent {
        match reply {
            Some(reply) => client
                .publish_with_reply_and_headers(
                    inbound.clone(),
                    reply.clone(),
                    headers.clone(),
                    payload.clone(),
                )
                .await
                .unwrap(),
            None => client
                .publish_with_headers(inbound.clone(), headers.clone(), payload.clone())
                .await
                .unwrap(),
        }
    }
    client.flush().await.unwrap();

    let publisher = Publisher::new(&connection);
    for i in 0..sent.len() {
        let delivery = next_delivery(&mut subscriber, &format!("message {i}")).await;
        let mut message = delivery.message().clone();
        message.set_destination(&outbound);
        publisher.clone().oneshot(message).await.unwrap();
    }
    for (i, (headers, payload, reply)) in sent.iter().enumerate() {
        let got = next_plain(&mut forwarded, &format!("forwarded message {i}")).await;
        assert_eq!(&got.payload, payload, "message {i}");
        assert_eq!(got.reply.as_deref(), reply.as_deref(), "message {i}");
        let got_headers = got.headers.unwrap_or_default();
        assert_eq!(&got_headers, headers, "message {i}");
    }
}

#[tokio::test]
async fn core_a_property_header_in_another_case_is_read_and_republished_under_the_configured_name()
{
    let client = plain().await;
    let connection = tower_mq().await;
    let inbound = unique("core_case_in");
    let outbound = unique("core_case_out");
    let mut forwarded = client.subscribe(outbound.clone()).await.unwrap();
    sync(&client).await;
    let mut subscriber = Subscriber::subscribe(&connection, &inbound).await.unwrap();
    client
        .publish_with_headers(
            inbound.clone(),
            headers(&[("content-type", "text/plain"), ("nats-msg-id", "lower-1")]),
            "hi".into(),
        )
        .await
        .unwrap();
    let delivery = next_delivery(&mut subscriber, "the lower-case headers").await;
    assert_eq!(
        delivery.message(),
        &Message::new(&inbound, "hi")
            .with_content_type("text/plain")
            .with_message_id("lower-1")
    );
    let mut message = delivery.message().clone();
    message.set_destination(&outbound);
    Publisher::new(&connection).oneshot(message).await.unwrap();
    let got = next_plain(&mut forwarded, "the republished message").await;
    assert_eq!(
        got.headers,
        Some(headers(&[
            ("Content-Type", "text/plain"),
            ("Nats-Msg-Id", "lower-1")
        ]))
    );
}

#[tokio::test]
async fn core_publishing_what_nats_cannot_carry_is_a_permanent_error() {
    let client = plain().await;
    let connection = tower_mq().await;
    let subject = unique("core_refused");
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    sync(&client).await;
    let publisher = Publisher::new(&connection);
    for (message, names) in uncarriable(&subject) {
        let err = publisher.clone().oneshot(message).await.expect_err(names);
        assert_permanent_publish_error(&err, &subject, names);
    }
    // A property that PropertyHeaders gives no header.
    let unnamed = connect(
        Config::new(url()).property_headers(PropertyHeaders::http_style().without(Property::AppId)),
    )
    .await;
    let err = Publisher::new(&unnamed)
        .oneshot(Message::new(&subject, "x").with_app_id("shop"))
        .await
        .expect_err("the app id has no header");
    assert_permanent_publish_error(&err, &subject, "the app id has no header");

    // Nothing went out: the next message the plain client reads is this one.
    publisher
        .clone()
        .oneshot(Message::new(&subject, "after"))
        .await
        .unwrap();
    let got = next_plain(&mut subscriber, "the message after the refusals").await;
    assert_eq!(got.payload, "after");
}

#[tokio::test]
async fn core_ignore_unsupported_leaves_out_what_nats_cannot_carry() {
    let client = plain().await;
    let connection = connect(Config::new(url()).ignore_unsupported(true)).await;
    let subject = unique("core_ignored");
    let mut subscriber = client.subscribe(subject.clone()).await.unwrap();
    sync(&client).await;
    let message = Message::new(&subject, "kept")
        .with_header("tenant", "acme")
        .with_header("attempt", 5i64)
        .with_header("raw", &b"\xff"[..])
        .with_key([0u8, 0xff])
        .with_priority(3)
        .with_content_type("text/plain");
    Publisher::new(&connection).oneshot(message).await.unwrap();
    let got = next_plain(&mut subscriber, "the message").await;
    assert_eq!(got.payload, "kept");
    assert_eq!(
        got.headers,
        Some(headers(&[
            ("tenant", "acme"),
            ("Content-Type", "text/plain")
        ]))
    );
}

#[tokio::test]
async fn core_a_malformed_foreign_message_does_not_stop_the_consumer() {
    let client = plain().await;
    let connection = tower_mq().await;
    let subject = unique("core_malformed");
    let mut subscriber = Subscriber::subscribe(&connection, &subject).await.unwrap();
    client
        .publish_with_headers(
            subject.clone(),
            headers(&[
                ("Timestamp", "-1"),
                ("Message-Key", "a"),
                ("Message-Key", "b"),
            ]),
            Bytes::from_static(b"\xff\xfe"),
        )
        .await
        .unwrap();
    client
        .publish(subject.clone(), "after".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let odd = next_delivery(&mut subscriber, "the malformed message").await;
    let mut expected = Message::new(&subject, Bytes::from_static(b"\xff\xfe"));
    expected.headers_mut().append("Message-Key", "a");
    expected.headers_mut().append("Message-Key", "b");
    expected.headers_mut().append("Timestamp", "-1");
    assert_eq!(odd.message(), &expected);
    let after = next_delivery(&mut subscriber, "the message after it").await;
    assert_eq!(after.message(), &Message::new(&subject, "after"));
}

#[tokio::test]
async fn core_request_reply_between_a_plain_client_and_tower_mq_both_ways() {
    let client = plain().await;
    let connection = tower_mq().await;

    // A plain responder answers a tower-mq request.
    let service = unique("plain_responder");
    let mut requests = client.subscribe(service.clone()).await.unwrap();
    sync(&client).await;
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            let request = next_plain(&mut requests, "the request").await;
            let inbox = request
                .reply
                .clone()
                .expect("a request has a reply subject");
            let got = request.headers.clone().unwrap_or_default();
            client
                .publish_with_headers(
                    inbox,
                    headers(&[("Correlation-Id", "corr-9"), ("served-by", "plain")]),
                    request.payload.clone(),
                )
                .await
                .unwrap();
            client.flush().await.unwrap();
            got
        })
    };
    let reply = Requester::new(&connection)
        .oneshot(
            Message::new(&service, binary_payload())
                .with_content_type("application/octet-stream")
                .with_header("tenant", "acme"),
        )
        .await
        .unwrap();
    let request_headers = responder.await.unwrap();
    assert_eq!(
        request_headers,
        headers(&[
            ("tenant", "acme"),
            ("Content-Type", "application/octet-stream")
        ])
    );
    assert_eq!(reply.payload(), &binary_payload());
    assert_eq!(reply.correlation_id(), Some("corr-9"));
    assert_eq!(reply.headers().get_str("served-by"), Some("plain"));

    // A tower-mq responder answers a plain request at its inbox, the reply-to.
    let service = unique("tower_mq_responder");
    let mut subscriber = Subscriber::subscribe(&connection, &service).await.unwrap();
    let publisher = Publisher::new(&connection);
    let responder = tokio::spawn(async move {
        let request = next_delivery(&mut subscriber, "the plain request").await;
        let inbox = request.message().reply_to().expect("reply-to").to_owned();
        let answer =
            Message::new(inbox, request.message().payload().clone()).with_correlation_id("corr-10");
        publisher.oneshot(answer).await.unwrap();
    });
    let reply = tokio::time::timeout(WAIT, client.request(service.clone(), "ping".into()))
        .await
        .expect("the tower-mq responder answers in time")
        .unwrap();
    responder.await.unwrap();
    assert_eq!(reply.payload, "ping");
    assert_eq!(
        reply.headers,
        Some(headers(&[("Correlation-Id", "corr-10")]))
    );
}

// ---------------------------------------------------------------------------------
// JetStream
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn jetstream_plain_client_messages_arrive_in_tower_mq_exactly() {
    let (context, js) = jetstream_sides().await;
    let name = unique("js_in");
    let stream = plain_stream(&context, &name).await;
    let subject = format!("{name}.orders");

    let (all, payload) = everything(true);
    plain_js_publish(&context, &subject, Some(all), payload).await;
    plain_js_publish(&context, &subject, None, Bytes::new()).await;
    plain_js_publish(&context, &subject, Some(odd_properties()), "odd".into()).await;

    let mut consumer = tower_mq_consumer(&js, &name).await;
    let got = next_delivery(&mut consumer, "everything").await;
    assert_eq!(
        got.message(),
        &everything_as_message(&subject).with_reply_to("replies.orders")
    );
    assert_eq!(
        got.timestamp(),
        Some(at()),
        "the publisher's Timestamp wins over the stored time"
    );
    got.ack().await.unwrap();

    let got = next_delivery(&mut consumer, "the empty message").await;
    let stored = stored_at(&stream, 2).await;
    assert_eq!(
        got.message(),
        &Message::new(&subject, Bytes::new()).with_timestamp(stored)
    );
    assert_eq!(
        got.timestamp(),
        Some(stored),
        "the time the stream stored it"
    );
    got.ack().await.unwrap();

    let got = next_delivery(&mut consumer, "the odd properties").await;
    assert_eq!(got.message(), &odd_properties_as_message(&subject));
    got.ack().await.unwrap();
    delete_streams(&context, &[&name]).await;
}

#[tokio::test]
async fn jetstream_tower_mq_messages_read_exactly_in_the_plain_client() {
    let (context, js) = jetstream_sides().await;
    let name = unique("js_out");
    let stream = plain_stream(&context, &name).await;
    let subject = format!("{name}.orders");

    let publisher = js.publisher();
    let receipt = publisher
        .clone()
        .oneshot(everything_as_message(&subject).with_reply_to("replies.orders"))
        .await
        .unwrap();
    assert_eq!(
        receipt,
        Receipt::new("nats", name.clone(), Guarantee::Stored)
            .with_position(Position::Sequence(1))
            .with_duplicate(false)
    );
    publisher
        .clone()
        .oneshot(Message::new(&subject, Bytes::new()))
        .await
        .unwrap();

    let mut messages = plain_consumer(&stream, "plain").await;
    let got = next_plain_js(&mut messages, "everything").await;
    let (expected, payload) = everything(true);
    assert_eq!(got.payload, payload);
    assert_eq!(got.headers.as_ref(), Some(&expected));

    let got = next_plain_js(&mut messages, "the empty message").await;
    assert!(got.payload.is_empty());
    assert!(
        got.headers.as_ref().is_none_or(HeaderMap::is_empty),
        "no Nats-Msg-Id is invented, nothing else is added: {:?}",
        got.headers
    );
    delete_streams(&context, &[&name]).await;
}

#[tokio::test]
async fn jetstream_consume_and_republish_leaves_the_message_unchanged() {
    let (context, js) = jetstream_sides().await;
    let from = unique("js_fwd_in");
    let to = unique("js_fwd_out");
    let source = plain_stream(&context, &from).await;
    let target = plain_stream(&context, &to).await;

    let (all, payload) = everything(true);
    let sent: Vec<(HeaderMap, Bytes)> = vec![
        (all, payload),
        (odd_properties(), "odd".into()),
        (
            headers(&[("Timestamp", "1700000000123"), ("tenant", "acme")]),
            Bytes::new(),
        ),
        (HeaderMap::new(), "no headers".into()),
    ];
    for (headers, payload) in &sent {
        let subject = format!("{from}.orders");
        plain_js_publish(&context, &subject, Some(headers.clone()), payload.clone()).await;
    }

    let mut consumer = tower_mq_consumer(&js, &from).await;
    let publisher = js.publisher();
    for i in 0..sent.len() {
        let delivery = next_delivery(&mut consumer, &format!("message {i}")).await;
        let mut message = delivery.message().clone();
        message.set_destination(format!("{to}.orders"));
        publisher.clone().oneshot(message).await.unwrap();
        delivery.ack().await.unwrap();
    }

    let mut messages = plain_consumer(&target, "plain").await;
    for (i, (headers, payload)) in sent.iter().enumerate() {
        let got = next_plain_js(&mut messages, &format!("forwarded message {i}")).await;
        assert_eq!(&got.payload, payload, "message {i}");
        let mut expected = headers.clone();
        if headers.get("Timestamp").is_none() {
            // The one addition: the time the first stream stored it travels on, as the
            // publisher's time (the second stream has a stored time of its own).
            let sequence = u64::try_from(i + 1).unwrap();
            let stored = stored_at(&source, sequence).await;
            let millis = stored.duration_since(UNIX_EPOCH).unwrap().as_millis();
            expected.insert("Timestamp", millis.to_string().as_str());
        }
        assert_eq!(
            got.headers.clone().unwrap_or_default(),
            expected,
            "message {i}"
        );
    }
    delete_streams(&context, &[&from, &to]).await;
}

#[tokio::test]
async fn jetstream_publishing_what_nats_cannot_carry_is_a_permanent_error() {
    let (context, js) = jetstream_sides().await;
    let name = unique("js_refused");
    plain_stream(&context, &name).await;
    let subject = format!("{name}.orders");
    let publisher = js.publisher();
    for (message, names) in uncarriable(&subject) {
        let err = publisher.clone().oneshot(message).await.expect_err(names);
        assert_permanent_publish_error(&err, &subject, names);
    }
    let results = js
        .batch_publisher()
        .oneshot(vec![
            Message::new(&subject, "x").with_header("attempt", 5i64),
            Message::new(&subject, "first stored"),
        ])
        .await
        .unwrap();
    let err = results[0].as_ref().expect_err("a typed header");
    assert_permanent_publish_error(err, &subject, "header `attempt` is a i64");
    // Nothing was stored before: the first message that went out is sequence 1.
    assert_eq!(
        results[1].as_ref().ok(),
        Some(
            &Receipt::new("nats", name.clone(), Guarantee::Stored)
                .with_position(Position::Sequence(1))
                .with_duplicate(false)
        )
    );
    delete_streams(&context, &[&name]).await;
}

#[tokio::test]
async fn jetstream_a_malformed_foreign_message_does_not_stop_the_consumer() {
    let (context, js) = jetstream_sides().await;
    let name = unique("js_malformed");
    let stream = plain_stream(&context, &name).await;
    let subject = format!("{name}.orders");
    let odd = headers(&[("Timestamp", "soon"), ("Reply-To", "a"), ("reply-to", "b")]);
    let payload = Bytes::from_static(b"\xff\xfe");
    plain_js_publish(&context, &subject, Some(odd), payload).await;
    plain_js_publish(&context, &subject, None, "after".into()).await;
    let mut consumer = tower_mq_consumer(&js, &name).await;
    let odd = next_delivery(&mut consumer, "the malformed message").await;
    let mut expected = Message::new(&subject, Bytes::from_static(b"\xff\xfe"));
    expected.headers_mut().append("Reply-To", "a");
    expected.headers_mut().append("Timestamp", "soon");
    expected.headers_mut().append("reply-to", "b");
    // A Timestamp header is there, unreadable: no stored time takes its place.
    assert_eq!(odd.message(), &expected);
    odd.ack().await.unwrap();
    let after = next_delivery(&mut consumer, "the message after it").await;
    let stored = stored_at(&stream, 2).await;
    assert_eq!(
        after.message(),
        &Message::new(&subject, "after").with_timestamp(stored)
    );
    after.ack().await.unwrap();
    delete_streams(&context, &[&name]).await;
}
