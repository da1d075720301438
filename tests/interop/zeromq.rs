//! Interop with libzmq, ZeroMQ's ordinary implementation: `tests/zeromq/peer.py` drives
//! plain pyzmq sockets (Debian's python3-zmq) with the interpreter in
//! `TOWER_MQ_LIBZMQ_PYTHON` (default `/usr/bin/python3`), sending and printing frames
//! exactly as given, hex-encoded. tower-mq uses plain frames, its default, unless a
//! test says otherwise.
//!
//! ZeroMQ frames carry bytes and nothing else: no key, header, timestamp or property
//! exists on a plain libzmq message, so what these tests carry across is what there
//! is: binary and empty payloads, topics, and every frame of a multipart message.

use std::future::IntoFuture;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};
use tower::{service_fn, Service, ServiceExt};
use tower_mq::zeromq::{Config, Consumer, Framing, Publisher, Requester, FRAME_HEADER};
use tower_mq::{serve, BoxError, Delivery, ErrorKind, HeaderValue, Message, Operation};

use crate::zeromq_peers::{next, publish, ready, served_router, until_subscribed, WAIT};

fn python() -> String {
    std::env::var("TOWER_MQ_LIBZMQ_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// Starts peer.py; panics with the install hint when libzmq's Python binding is missing.
fn peer(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let python = python();
    let check = std::process::Command::new(&python)
        .args(["-c", "import zmq"])
        .output();
    match check {
        Ok(out) if out.status.success() => {}
        other => panic!(
            "libzmq peer: `{python} -c 'import zmq'` failed ({other:?}); install python3-zmq \
             with scripts/brokers install, or set TOWER_MQ_LIBZMQ_PYTHON to a python3 that has pyzmq"
        ),
    }
    let script = format!("{}/tests/zeromq/peer.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {python} failed: {e}"));
    let out = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    (child, out)
}

async fn line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the libzmq peer said nothing in time")
        .expect("reading the peer")
        .expect("the libzmq peer exited early")
}

/// One message the libzmq peer printed: its frames.
async fn frames(lines: &mut Lines<BufReader<ChildStdout>>) -> Vec<Bytes> {
    let shown: Vec<String> = serde_json::from_str(&line(lines).await).expect("JSON frames");
    shown
        .iter()
        .map(|hex| Bytes::from(decode_hex(hex)))
        .collect()
}

async fn finished(mut child: Child) {
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the libzmq peer did not finish")
        .expect("waiting for the peer");
    assert!(status.success(), "the libzmq peer failed: {status}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex from the peer"))
        .collect()
}

/// Messages as the peer's command line takes them.
fn messages_arg(messages: &[Vec<Bytes>]) -> String {
    let shown: Vec<Vec<String>> = messages
        .iter()
        .map(|frames| frames.iter().map(|f| hex(f)).collect())
        .collect();
    serde_json::to_string(&shown).expect("JSON")
}

fn frames_of(parts: &[&[u8]]) -> Vec<Bytes> {
    parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
}

const BINARY: &[u8] = b"\x00\x01\xff\xfe\x80 binary";

fn frame_headers(message: &Message) -> Vec<Bytes> {
    message
        .headers()
        .get_all(FRAME_HEADER)
        .map(|v| match v {
            HeaderValue::Bytes(b) => b.clone(),
            other => panic!("a frame header of type {}", other.type_name()),
        })
        .collect()
}

/// What a PUSH sends and a PULL gets: single frames (binary, empty, text) and a
/// multipart message with an empty frame in it.
fn push_messages() -> Vec<Vec<Bytes>> {
    vec![
        frames_of(&[BINARY]),
        frames_of(&[b""]),
        frames_of(&[b"plain text"]),
        frames_of(&[b"first", b"", b"\xffsecond", b"body"]),
    ]
}

#[tokio::test]
async fn libzmq_push_frames_arrive_intact_at_a_tower_mq_pull() {
    let mut puller = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PULL");
    let endpoint = puller.endpoints()[0].clone();
    let sent = push_messages();
    let (child, _) = peer(&["push", &endpoint, &messages_arg(&sent)]);
    for frames in &sent {
        let delivery = next(&mut puller, "a message from libzmq").await;
        let message = delivery.message();
        let (payload, leading) = frames.split_last().expect("a frame");
        assert_eq!(message.payload(), payload);
        assert_eq!(
            frame_headers(message),
            leading,
            "every frame before the payload"
        );
        assert_eq!(message.headers().len(), leading.len(), "nothing else");
        assert_eq!(message.destination(), "", "PUSH sends no topic");
        assert_eq!(message.key(), None);
        assert_eq!(message.timestamp(), None, "ZeroMQ has no timestamp");
        assert!(!message.is_persistent(), "ZeroMQ stores nothing");
    }
    finished(child).await;
}

#[tokio::test]
async fn libzmq_pub_topic_and_body_arrive_intact_at_a_tower_mq_sub() {
    let (child, mut out) = peer(&[
        "pub",
        "tcp://127.0.0.1",
        &messages_arg(&[
            frames_of(&[b"orders.eu", BINARY]),
            frames_of(&[b"orders.eu", b""]),
            frames_of(&[b"orders.us 42 single frame"]),
            frames_of(&[b"orders.\xff", b"binary topic"]),
            frames_of(&[b"orders.eu", b"\x00", b"body"]),
        ]),
    ]);
    let port = line(&mut out).await;
    let mut sub = Consumer::subscribe(
        &Config::new().connect(format!("tcp://127.0.0.1:{port}")),
        ["orders."],
    )
    .await
    .expect("SUB");

    let m = next(&mut sub, "topic and binary body").await;
    assert_eq!(m.message().destination(), "orders.eu");
    assert_eq!(m.message().payload(), BINARY);
    assert!(m.message().headers().is_empty());

    let m = next(&mut sub, "topic and empty body").await;
    assert_eq!(m.message().destination(), "orders.eu");
    assert_eq!(m.message().payload(), "");

    let m = next(&mut sub, "a single frame").await;
    assert_eq!(
        m.message().destination(),
        "",
        "the topic is part of the payload"
    );
    assert_eq!(m.message().payload(), "orders.us 42 single frame");
    assert!(m.message().headers().is_empty());

    let m = next(&mut sub, "a binary topic").await;
    assert_eq!(m.message().destination(), "");
    assert_eq!(
        frame_headers(m.message()),
        [Bytes::from_static(b"orders.\xff")]
    );
    assert_eq!(m.message().payload(), "binary topic");

    let m = next(&mut sub, "three frames").await;
    assert_eq!(m.message().destination(), "orders.eu");
    assert_eq!(frame_headers(m.message()), [Bytes::from_static(b"\x00")]);
    assert_eq!(m.message().payload(), "body");
    finished(child).await;
}

#[tokio::test]
async fn tower_mq_push_sends_plain_frames_a_libzmq_pull_reads_exactly() {
    let (child, mut out) = peer(&["pull", "tcp://127.0.0.1", "3"]);
    let port = line(&mut out).await;
    let mut publisher = Publisher::push(&Config::new().connect(format!("tcp://127.0.0.1:{port}")))
        .await
        .expect("PUSH");
    publish(&mut publisher, Message::new("jobs", BINARY)).await;
    publish(&mut publisher, Message::new("jobs", "")).await;
    let mut multipart = Message::new("jobs", "body");
    multipart.headers_mut().append(FRAME_HEADER, "routing");
    multipart
        .headers_mut()
        .append(FRAME_HEADER, &b"\x00\xff"[..]);
    publish(&mut publisher, multipart).await;
    assert_eq!(frames(&mut out).await, frames_of(&[BINARY]));
    assert_eq!(frames(&mut out).await, frames_of(&[b""]));
    assert_eq!(
        frames(&mut out).await,
        frames_of(&[b"routing", b"\x00\xff", b"body"])
    );
    finished(child).await;
}

/// Publishes `messages` through `publisher` once the libzmq SUB printed a probe (the
/// subscription is active then: ZeroMQ's slow joiner); returns what the SUB printed
/// after the probes.
async fn publish_to_libzmq_sub(
    publisher: &mut Publisher,
    out: &mut Lines<BufReader<ChildStdout>>,
    probe_topic: &str,
    messages: Vec<Message>,
) -> Vec<Vec<Bytes>> {
    let count = messages.len();
    let probing = async {
        loop {
            publish(publisher, Message::new(probe_topic, "probe")).await;
            if let Ok(Ok(Some(_))) =
                tokio::time::timeout(Duration::from_millis(50), out.next_line()).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, probing)
        .await
        .expect("the libzmq SUB never saw a probe");
    for message in messages {
        publish(publisher, message).await;
    }
    let mut seen = Vec::new();
    while seen.len() < count {
        let got = frames(out).await;
        if got.last().is_some_and(|f| f == "probe") {
            continue;
        }
        seen.push(got);
    }
    seen
}

#[tokio::test]
async fn tower_mq_pub_sends_topic_and_body_a_libzmq_sub_reads_exactly() {
    let mut publisher = Publisher::publish(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PUB");
    let endpoint = publisher.endpoints()[0].clone();
    let (child, mut out) = peer(&["sub", &endpoint, &hex(b"orders."), "4"]);
    let seen = publish_to_libzmq_sub(
        &mut publisher,
        &mut out,
        "orders.probe",
        vec![
            Message::new("orders.eu", BINARY),
            Message::new("orders.eu", ""),
            Message::new("", "orders.us single frame"),
            Message::new("orders.eu", "body").with_header(FRAME_HEADER, &b"\x00"[..]),
        ],
    )
    .await;
    assert_eq!(
        seen,
        [
            frames_of(&[b"orders.eu", BINARY]),
            frames_of(&[b"orders.eu", b""]),
            frames_of(&[b"orders.us single frame"]),
            frames_of(&[b"orders.eu", b"\x00", b"body"]),
        ]
    );
    finished(child).await;
}

#[tokio::test]
async fn a_libzmq_push_message_republished_by_tower_mq_reaches_a_libzmq_pull_unchanged() {
    let sent = push_messages();
    let (sink, mut out) = peer(&["pull", "tcp://127.0.0.1", &sent.len().to_string()]);
    let port = line(&mut out).await;
    let mut puller = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PULL");
    let mut forward = Publisher::push(&Config::new().connect(format!("tcp://127.0.0.1:{port}")))
        .await
        .expect("PUSH");
    let endpoint = puller.endpoints()[0].clone();
    let (source, _) = peer(&["push", &endpoint, &messages_arg(&sent)]);
    for _ in &sent {
        let delivery = next(&mut puller, "a message to forward").await;
        publish(&mut forward, delivery.message().clone()).await;
    }
    for frames_sent in &sent {
        assert_eq!(&frames(&mut out).await, frames_sent);
    }
    finished(source).await;
    finished(sink).await;
}

#[tokio::test]
async fn a_libzmq_pub_message_republished_by_tower_mq_reaches_a_libzmq_sub_unchanged() {
    let sent = vec![
        frames_of(&[b"orders.eu", BINARY]),
        frames_of(&[b"orders.eu", b""]),
        frames_of(&[b"orders.us single frame"]),
        frames_of(&[b"orders.\xff", b"binary topic"]),
        frames_of(&[b"orders.eu", b"\x00", b"body"]),
    ];
    let (source, mut source_out) = peer(&["pub", "tcp://127.0.0.1", &messages_arg(&sent)]);
    let port = line(&mut source_out).await;
    let mut sub = Consumer::subscribe(
        &Config::new().connect(format!("tcp://127.0.0.1:{port}")),
        ["orders."],
    )
    .await
    .expect("SUB");
    let mut received = Vec::new();
    for _ in &sent {
        received.push(
            next(&mut sub, "a message to forward")
                .await
                .message()
                .clone(),
        );
    }
    finished(source).await;

    let mut forward = Publisher::publish(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PUB");
    let endpoint = forward.endpoints()[0].clone();
    let (sink, mut out) = peer(&["sub", &endpoint, &hex(b"orders."), &sent.len().to_string()]);
    let seen = publish_to_libzmq_sub(&mut forward, &mut out, "orders.probe", received).await;
    assert_eq!(seen, sent);
    finished(sink).await;
}

#[tokio::test]
async fn plain_frames_refuse_headers_and_properties_with_a_permanent_error_naming_them() {
    let (child, mut out) = peer(&["pull", "tcp://127.0.0.1", "2"]);
    let port = line(&mut out).await;
    let mut publisher = Publisher::push(&Config::new().connect(format!("tcp://127.0.0.1:{port}")))
        .await
        .expect("PUSH");
    let refused = [
        (
            Message::new("jobs", "x").with_header("traceparent", "00-1"),
            "header `traceparent`",
        ),
        (Message::new("jobs", "x").with_key([0u8, 0xff]), "the key"),
        (
            Message::new("jobs", "x").with_timestamp(UNIX_EPOCH),
            "the timestamp",
        ),
        (
            Message::new("jobs", "x").with_message_id("m-1"),
            "the message id",
        ),
        (
            Message::new("jobs", "x").with_correlation_id("c-1"),
            "the correlation id",
        ),
        (
            Message::new("jobs", "x").with_reply_to("replies"),
            "the reply-to",
        ),
        (
            Message::new("jobs", "x").with_content_type("text/plain"),
            "the content type",
        ),
        (
            Message::new("jobs", "x").with_content_encoding("gzip"),
            "the content encoding",
        ),
        (
            Message::new("jobs", "x").with_message_type("t"),
            "the message type",
        ),
        (Message::new("jobs", "x").with_app_id("a"), "the app id"),
        (Message::new("jobs", "x").with_user_id("u"), "the user id"),
        (Message::new("jobs", "x").with_priority(1), "the priority"),
        (
            Message::new("jobs", "x").with_ttl(Duration::from_secs(1)),
            "the time to live",
        ),
        (
            Message::new("jobs", "x").with_header(FRAME_HEADER, 7i32),
            "header `zmq-frame` of type i32",
        ),
    ];
    for (message, named) in refused {
        let err = ready(&mut publisher)
            .await
            .call(message)
            .await
            .expect_err("plain frames cannot carry it");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.code(), Some(tower_mq::Code::Unsupported), "{err}");
        assert_eq!(err.broker(), "zeromq");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some("jobs"));
        assert!(
            err.reason().is_some_and(|r| r.contains(named)),
            "{err} names {named}"
        );
    }
    // Nothing refused reached the peer; ignore_unsupported sends the bare payload.
    publish(&mut publisher, Message::new("jobs", "first")).await;
    let mut ignoring = publisher.clone().ignore_unsupported(true);
    let lossy = Message::new("jobs", "second")
        .with_header("tenant", "acme")
        .with_correlation_id("c-2")
        .with_priority(3);
    publish(&mut ignoring, lossy).await;
    assert_eq!(frames(&mut out).await, frames_of(&[b"first"]));
    assert_eq!(frames(&mut out).await, frames_of(&[b"second"]));
    finished(child).await;
}

#[tokio::test]
async fn the_envelope_refuses_priority_and_ttl_unless_ignore_unsupported_carries_them() {
    let envelope = Config::new().framing(Framing::Envelope);
    let mut puller = Consumer::pull(&envelope.clone().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PULL");
    let endpoint = puller.endpoints()[0].clone();
    let mut publisher = Publisher::push(&envelope.connect(&endpoint))
        .await
        .expect("PUSH");
    for message in [
        Message::new("jobs", "x").with_priority(1),
        Message::new("jobs", "x").with_ttl(Duration::from_secs(1)),
    ] {
        let err = ready(&mut publisher)
            .await
            .call(message)
            .await
            .expect_err("nothing in ZeroMQ enforces them");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        assert_eq!(err.code(), Some(tower_mq::Code::Unsupported), "{err}");
        assert!(
            err.to_string().contains("priority or time to live"),
            "{err}"
        );
    }
    let mut carrying = publisher.clone().ignore_unsupported(true);
    let sent = Message::new("jobs", "x")
        .with_priority(4)
        .with_ttl(Duration::from_millis(1500));
    publish(&mut carrying, sent.clone()).await;
    assert_eq!(
        next(&mut puller, "the carried message").await.message(),
        &sent
    );
}

/// Every field and header type the model has.
fn full_message(topic: &str) -> Message {
    let mut table = std::collections::BTreeMap::new();
    table.insert("attempt".to_owned(), HeaderValue::I64(3));
    table.insert(
        "tags".to_owned(),
        HeaderValue::Array(vec!["a".into(), HeaderValue::Null]),
    );
    let mut message = Message::new(topic, BINARY)
        .with_key([0u8, 1, 0xff, 0xfe])
        .with_header("tenant", "acme")
        .with_header("hop", "edge");
    message.headers_mut().append("hop", "core");
    message
        .with_header("raw", &b"\x00\xff"[..])
        .with_header("empty", "")
        .with_header("count", 5i32)
        .with_header("flag", true)
        .with_header("ratio", 0.25f64)
        .with_header(
            "price",
            HeaderValue::Decimal {
                scale: 2,
                value: 1999,
            },
        )
        .with_header("at", HeaderValue::Timestamp(1_700_000_000))
        .with_header(
            "bytes",
            HeaderValue::ByteArray(Bytes::from_static(b"\x01\x02")),
        )
        .with_header("nothing", HeaderValue::Null)
        .with_header("table", HeaderValue::Table(table))
        .with_persistent(false)
        .with_timestamp(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_reply_to("replies")
        .with_content_type("application/octet-stream")
        .with_content_encoding("identity")
        .with_message_type("order.created")
        .with_app_id("shop")
        .with_user_id("guest")
}

#[tokio::test]
async fn the_envelope_carries_every_field_and_header_type_between_tower_mq_peers() {
    let envelope = Config::new().framing(Framing::Envelope);
    // PUSH/PULL, then a consume-and-republish over PUB/SUB.
    let mut puller = Consumer::pull(&envelope.clone().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PULL");
    let endpoint = puller.endpoints()[0].clone();
    let mut pusher = Publisher::push(&envelope.clone().connect(&endpoint))
        .await
        .expect("PUSH");
    let sent = [full_message("orders.eu"), Message::new("orders.eu", "")];
    for message in &sent {
        publish(&mut pusher, message.clone()).await;
    }
    let mut received = Vec::new();
    for message in &sent {
        let delivery = next(&mut puller, "an envelope").await;
        assert_eq!(delivery.message(), message);
        assert_eq!(delivery.timestamp(), message.timestamp());
        received.push(delivery.message().clone());
    }

    let mut publisher = Publisher::publish(&envelope.clone().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PUB");
    let endpoint = publisher.endpoints()[0].clone();
    let mut sub = Consumer::subscribe(&envelope.connect(&endpoint), ["orders."])
        .await
        .expect("SUB");
    until_subscribed(&mut publisher, &mut sub, "orders.probe").await;
    for message in received {
        publish(&mut publisher, message).await;
    }
    for message in &sent {
        let delivery = loop {
            let delivery = next(&mut sub, "a republished envelope").await;
            if delivery.message().destination() != "orders.probe" {
                break delivery;
            }
        };
        assert_eq!(delivery.message(), message);
    }
}

#[tokio::test]
async fn an_envelope_receiver_still_takes_plain_frames_from_libzmq() {
    let mut puller = Consumer::pull(
        &Config::new()
            .framing(Framing::Envelope)
            .bind("tcp://127.0.0.1:0"),
    )
    .await
    .expect("PULL");
    let endpoint = puller.endpoints()[0].clone();
    let sent = push_messages();
    let (child, _) = peer(&["push", &endpoint, &messages_arg(&sent)]);
    for frames in &sent {
        let delivery = next(&mut puller, "a plain message").await;
        let (payload, leading) = frames.split_last().expect("a frame");
        assert_eq!(delivery.message().payload(), payload);
        assert_eq!(frame_headers(delivery.message()), leading);
    }
    finished(child).await;
}

#[tokio::test]
async fn malformed_envelopes_from_a_peer_do_not_stop_serve() {
    let mut config = Config::new().framing(Framing::Envelope);
    config = config.bind("tcp://127.0.0.1:0");
    let consumer = Consumer::pull(&config).await.expect("PULL");
    let endpoint = consumer.endpoints()[0].clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let done_tx = Arc::new(Mutex::new(Some(done_tx)));
    let handler = {
        let seen = seen.clone();
        service_fn(move |delivery: Delivery| {
            let seen = seen.clone();
            let done_tx = done_tx.clone();
            async move {
                let mut seen = seen.lock().expect("seen");
                seen.push(delivery.message().payload().clone());
                if seen.len() == 2 {
                    if let Some(tx) = done_tx.lock().expect("done").take() {
                        let _ = tx.send(());
                    }
                }
                Ok::<_, BoxError>(())
            }
        })
    };
    let server = tokio::spawn(serve(consumer, handler).into_future());
    // Marked as envelopes, but an unknown version and a truncated field; then plain.
    let sent = vec![
        frames_of(&[b"orders", b"TMQ\x09\x00", b"from the future"]),
        frames_of(&[b"orders", b"TMQ\x02\x00\x04\x00\x00\x00\x09m", b"truncated"]),
        frames_of(&[b"first good"]),
        frames_of(&[b"orders", b"not an envelope", b"second good"]),
    ];
    let (child, _) = peer(&["push", &endpoint, &messages_arg(&sent)]);
    tokio::time::timeout(WAIT, done_rx)
        .await
        .expect("serve stopped or stalled on malformed envelopes")
        .expect("the handler saw both good messages");
    assert_eq!(
        *seen.lock().expect("seen"),
        [Bytes::from("first good"), Bytes::from("second good")]
    );
    assert!(
        !server.is_finished(),
        "serve goes on after malformed messages"
    );
    server.abort();
    finished(child).await;
}

#[tokio::test]
async fn a_libzmq_req_asks_and_a_tower_mq_router_answers_in_plain_frames() {
    let echo = service_fn(|request: Delivery| async move {
        let message = request.message();
        let mut reply = message.payload().to_ascii_uppercase();
        reply.extend_from_slice(
            format!(" ({} frames)", frame_headers(message).len() + 1).as_bytes(),
        );
        Ok::<_, BoxError>(Message::new("", reply))
    });
    let endpoint = served_router(Config::new(), echo).await;
    let asked = vec![
        frames_of(&[b"hello"]),
        frames_of(&[b"\x00binary", b"body"]),
        frames_of(&[b""]),
    ];
    let (child, mut out) = peer(&["req", &endpoint, &messages_arg(&asked)]);
    assert_eq!(frames(&mut out).await, frames_of(&[b"HELLO (1 frames)"]));
    assert_eq!(frames(&mut out).await, frames_of(&[b"BODY (2 frames)"]));
    assert_eq!(frames(&mut out).await, frames_of(&[b" (1 frames)"]));
    finished(child).await;
}

#[tokio::test]
async fn a_libzmq_dealer_asks_a_tower_mq_router_with_or_without_a_delimiter() {
    let echo = service_fn(|request: Delivery| async move {
        let message = request.message();
        let mut reply = Message::new("", message.payload().to_ascii_uppercase());
        // The frames before the payload go back too.
        for frame in frame_headers(message) {
            reply.headers_mut().append(FRAME_HEADER, frame);
        }
        Ok::<_, BoxError>(reply)
    });
    let endpoint = served_router(Config::new(), echo).await;
    let asked = vec![
        // No delimiter: the route is the DEALER's identity alone.
        frames_of(&[b"bare"]),
        frames_of(&[b"\x01", b"two"]),
        // ZeroMQ's request-reply envelope: a request id and a delimiter come back as sent.
        frames_of(&[b"\x00\x00\x00\x07", b"", b"enveloped"]),
    ];
    let (child, mut out) = peer(&["dealer", &endpoint, &messages_arg(&asked)]);
    assert_eq!(frames(&mut out).await, frames_of(&[b"BARE"]));
    assert_eq!(frames(&mut out).await, frames_of(&[b"\x01", b"TWO"]));
    assert_eq!(
        frames(&mut out).await,
        frames_of(&[b"\x00\x00\x00\x07", b"", b"ENVELOPED"])
    );
    finished(child).await;
}

#[tokio::test]
async fn a_tower_mq_requester_asks_a_libzmq_rep_in_plain_frames() {
    let (child, mut out) = peer(&["rep", "tcp://127.0.0.1", "3"]);
    let port = line(&mut out).await;
    let mut requester =
        Requester::connect(&Config::new().connect(format!("tcp://127.0.0.1:{port}")))
            .await
            .expect("DEALER")
            .timeout(WAIT);
    let asked = [
        Message::new("rpc", "hello"),
        Message::new("rpc", BINARY),
        Message::new("rpc", "body").with_header(FRAME_HEADER, "first"),
    ];
    for request in asked {
        let reply = requester
            .ready()
            .await
            .expect("ready")
            .call(request.clone())
            .await
            .expect("libzmq REP answers");
        let seen = frames(&mut out).await;
        let mut expected = frame_headers(&request);
        expected.push(request.payload().clone());
        assert_eq!(seen, expected, "the REP got the request's plain frames");
        assert_eq!(reply.payload(), &request.payload().to_ascii_uppercase());
        assert_eq!(frame_headers(&reply), frame_headers(&request));
    }
    finished(child).await;
}
