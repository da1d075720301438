//! ZeroMQ between real peers on loopback: tower-mq sockets with each other and with the
//! zeromq crate's raw sockets. No broker is needed. The tests against libzmq peers are
//! in the interop suite (`tests/interop/zeromq.rs`).

#![cfg(feature = "zeromq")]

#[path = "support/own_server.rs"]
mod own_server;
#[path = "support/waits.rs"]
mod waits;
#[path = "support/zeromq_peers.rs"]
mod zeromq_peers;

use own_server::free_port;
use waits::until_ok;
use zeromq_peers::{bind_again, next, publish, served_router, text, until_subscribed, WAIT};

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tower::{service_fn, Service, ServiceExt};
use tower_mq::zeromq::{Config, Consumer, Framing, Publisher, Requester};
use tower_mq::{
    serve, BoxError, Delivery, ErrorKind, Guarantee, Message, Operation, Receipt, Replier,
};
use zeromq::prelude::*;

#[tokio::test]
async fn pub_sub_delivers_by_topic_prefix() {
    let mut publisher = Publisher::publish(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind PUB");
    let endpoint = publisher.endpoints()[0].clone();
    let mut orders = Consumer::subscribe(&Config::new().connect(&endpoint), ["orders."])
        .await
        .expect("SUB");
    until_subscribed(&mut publisher, &mut orders, "orders.probe").await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), orders.next()).await {}

    for (topic, body) in [
        ("orders.eu", "1"),
        ("logs.eu", "2"),
        ("orders.us", "3"),
        ("order", "4"),
    ] {
        let receipt = publish(&mut publisher, Message::new(topic, body)).await;
        assert_eq!(receipt.destination(), topic);
        assert!(!receipt.is_confirmed());
    }
    let first = next(&mut orders, "orders.eu").await;
    assert_eq!(first.message().destination(), "orders.eu");
    assert_eq!(text(&first), "1");
    assert!(!first.acker().is_tracked());
    let second = next(&mut orders, "orders.us").await;
    assert_eq!(second.message().destination(), "orders.us");
    assert_eq!(text(&second), "3");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), orders.next())
            .await
            .is_err(),
        "logs.eu and order do not match the prefix orders."
    );
}

#[tokio::test]
async fn push_pull_balances_across_two_pullers_without_duplicates() {
    const COUNT: usize = 100;
    // The envelope, for the message ids.
    let envelope = Config::new().framing(Framing::Envelope);
    let mut publisher = Publisher::push(&envelope.clone().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind PUSH");
    let endpoint = publisher.endpoints()[0].clone();
    let mut a = Consumer::pull(&envelope.clone().connect(&endpoint))
        .await
        .expect("PULL a");
    let mut b = Consumer::pull(&envelope.clone().connect(&endpoint))
        .await
        .expect("PULL b");
    assert!(a.wait_for_peers(1).await && b.wait_for_peers(1).await);
    let both = tokio::time::timeout(WAIT, publisher.wait_for_peers(2)).await;
    assert!(matches!(both, Ok(true)), "the PUSH sees both pullers");
    for i in 0..COUNT {
        let message = Message::new("jobs", i.to_string()).with_message_id(format!("job-{i}"));
        publish(&mut publisher, message).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    while got_a.len() + got_b.len() < COUNT {
        let delivery = tokio::time::timeout(WAIT, async {
            tokio::select! {
                Some(d) = a.next() => ('a', d),
                Some(d) = b.next() => ('b', d),
            }
        })
        .await
        .unwrap_or_else(|_| panic!("only {} of {COUNT} arrived", got_a.len() + got_b.len()));
        let (who, delivery) = (delivery.0, delivery.1.expect("a delivery"));
        assert_eq!(
            delivery.message().message_id(),
            Some(format!("job-{}", text(&delivery)).as_str())
        );
        if who == 'a' {
            got_a.push(text(&delivery));
        } else {
            got_b.push(text(&delivery));
        }
    }
    let all: Vec<String> = got_a.iter().chain(&got_b).cloned().collect();
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), COUNT, "no duplicates");
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both pullers got work: a {} b {}",
        got_a.len(),
        got_b.len()
    );
    assert_eq!(got_a.len(), COUNT / 2, "round robin");
}

#[tokio::test]
async fn dealer_router_request_reply_in_the_envelope() {
    let envelope = Config::new().framing(Framing::Envelope);
    let square = service_fn(|request: Delivery| async move {
        let n: u64 = String::from_utf8_lossy(request.message().payload()).parse()?;
        Ok::<_, BoxError>(Message::new("", (n * n).to_string()).with_header("served-by", "router"))
    });
    let endpoint = served_router(envelope.clone(), square).await;

    let requester = Requester::connect(&envelope.connect(&endpoint))
        .await
        .expect("DEALER")
        .timeout(WAIT);
    let calls = (0..20u64).map(|n| {
        let requester = requester.clone();
        async move {
            (
                n,
                requester
                    .oneshot(Message::new("square", n.to_string()))
                    .await,
            )
        }
    });
    for (n, reply) in futures_util::future::join_all(calls).await {
        let reply = reply.unwrap_or_else(|e| panic!("request {n} failed: {e}"));
        assert_eq!(
            String::from_utf8_lossy(reply.payload()),
            (n * n).to_string()
        );
        assert_eq!(reply.headers().get_str("served-by"), Some("router"));
    }
}

#[tokio::test]
async fn requester_to_a_zeromq_rep_socket_in_plain_frames() {
    // zeromq's own REP: it strips the request id and delimiter our DEALER sends, as
    // it does a REQ's envelope, and sends them back with the reply.
    let mut rep = zeromq::RepSocket::new();
    let bound = rep.bind("tcp://127.0.0.1:0").await.expect("bind REP");
    let server = tokio::spawn(async move {
        for _ in 0..3 {
            let request = rep.recv().await.expect("a request").into_vec();
            assert_eq!(request.len(), 1, "plain frames: the payload alone");
            let upper = Bytes::from(request[0].to_ascii_uppercase());
            rep.send(zeromq::ZmqMessage::from(upper))
                .await
                .expect("reply");
        }
    });
    let mut requester = Requester::connect(&Config::new().connect(bound.to_string()))
        .await
        .expect("DEALER")
        .timeout(WAIT);
    for i in 0..3 {
        let reply = requester
            .ready()
            .await
            .expect("ready")
            .call(Message::new("rpc", format!("rep-{i}")))
            .await
            .expect("REP answers");
        assert_eq!(String::from_utf8_lossy(reply.payload()), format!("REP-{i}"));
    }
    server.await.expect("the REP task");
}

#[tokio::test]
async fn a_zeromq_req_socket_to_a_served_router_in_plain_frames() {
    let echo = service_fn(|request: Delivery| async move {
        Ok::<_, BoxError>(String::from_utf8_lossy(request.message().payload()).to_uppercase())
    });
    let endpoint = served_router(Config::new(), echo).await;
    let mut req = zeromq::ReqSocket::new();
    req.connect(&endpoint).await.expect("REQ connects");
    for i in 0..3 {
        req.send(zeromq::ZmqMessage::from(format!("req-{i}")))
            .await
            .expect("REQ send");
        let reply = tokio::time::timeout(WAIT, req.recv())
            .await
            .expect("a reply in time")
            .expect("REQ recv")
            .into_vec();
        assert_eq!(reply, [Bytes::from(format!("REQ-{i}"))]);
    }
}

#[tokio::test]
async fn requests_and_replies_plain_frames_cannot_carry_are_refused_permanently() {
    let (requests, mut replies) = Consumer::router(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind ROUTER");
    let endpoint = requests.endpoints()[0].clone();
    let mut requester = Requester::connect(&Config::new().connect(&endpoint))
        .await
        .expect("DEALER")
        .timeout(WAIT);
    let err = tokio::time::timeout(WAIT, requester.ready())
        .await
        .expect("ready in time")
        .expect("ready")
        .call(Message::new("rpc", "x").with_header("tenant", "acme"))
        .await
        .expect_err("plain frames carry no header");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Request);
    assert_eq!(err.destination(), Some("rpc"));
    assert!(
        err.reason().is_some_and(|r| r.contains("header `tenant`")),
        "{err}"
    );

    let err = replies
        .ready()
        .await
        .expect("ready")
        .call(Message::new("zmq-route:00.", "x").with_content_type("text/plain"))
        .await
        .expect_err("plain frames carry no content type");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Publish);
    assert!(err.to_string().contains("the content type"), "{err}");
}

/// Serves `square` on a ROUTER bound to `endpoint`, which a closed socket may still
/// hold.
async fn square_server(endpoint: &str) -> tokio::task::JoinHandle<()> {
    let (requests, replies) = bind_again(endpoint, Consumer::router).await;
    let square = service_fn(|request: Delivery| async move {
        let n: u64 = String::from_utf8_lossy(request.message().payload()).parse()?;
        Ok::<_, BoxError>((n * n).to_string())
    });
    tokio::spawn(async move {
        let _ = serve(requests, Replier::new(square, replies)).await;
    })
}

#[tokio::test]
async fn a_requester_redials_a_restarted_server() {
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let server = square_server(&endpoint).await;
    let requester = Requester::connect(&Config::new().connect(&endpoint))
        .await
        .expect("DEALER")
        .timeout(Duration::from_secs(1));
    let reply = requester
        .clone()
        .oneshot(Message::new("square", "3"))
        .await
        .expect("first");
    assert_eq!(String::from_utf8_lossy(reply.payload()), "9");

    server.abort();
    let _ = server.await;
    let _server = square_server(&endpoint).await;
    // A request in flight while the server was away may time out (transiently); the
    // requester redials and later requests are answered.
    let answered = until_ok("the restarted server to answer", WAIT, async || {
        requester.clone().oneshot(Message::new("square", "4")).await
    })
    .await;
    assert_eq!(String::from_utf8_lossy(answered.payload()), "16");
}

#[tokio::test]
async fn request_without_answer_times_out_transiently() {
    // A ROUTER that never answers.
    let (mut requests, _replies) = Consumer::router(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind ROUTER");
    let endpoint = requests.endpoints()[0].clone();
    let requester = Requester::connect(&Config::new().connect(&endpoint))
        .await
        .expect("DEALER")
        .timeout(Duration::from_millis(200));
    let err = requester
        .oneshot(Message::new("silence", "anyone?"))
        .await
        .expect_err("nobody answers");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.operation(), Operation::Request);
    assert_eq!(err.destination(), Some("silence"));
    let request = next(&mut requests, "the request").await;
    assert!(request
        .message()
        .reply_to()
        .is_some_and(|r| r.starts_with("zmq-route:")));
}

#[tokio::test]
async fn send_before_a_peer_waits_in_poll_ready_then_delivers() {
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let mut publisher = Publisher::push(&Config::new().connect(&endpoint))
        .await
        .expect("PUSH");
    // Nobody is there: readiness waits instead of the message vanishing.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), publisher.ready())
            .await
            .is_err(),
        "poll_ready must be Pending while no peer is connected"
    );
    let ready = tokio::spawn(async move {
        let receipt = publish(&mut publisher, Message::new("early", "before the peer")).await;
        (publisher, receipt)
    });
    let mut puller = bind_again(&endpoint, Consumer::pull).await;
    let delivery = next(&mut puller, "the message sent before the peer").await;
    assert_eq!(text(&delivery), "before the peer");
    let (_publisher, receipt) = ready.await.expect("publishing task");
    assert_eq!(receipt, Receipt::new("zeromq", "early", Guarantee::Sent));
}

#[tokio::test]
async fn a_pull_waiting_for_messages_redials_a_restarted_push() {
    let mut pusher = Publisher::push(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind PUSH");
    let endpoint = pusher.endpoints()[0].clone();
    let mut puller = Consumer::pull(&Config::new().connect(&endpoint))
        .await
        .expect("PULL");
    publish(&mut pusher, Message::new("t", "before")).await;
    assert_eq!(text(&next(&mut puller, "before").await), "before");
    // The consumer reads its socket itself: waiting there, polled or not, must leave
    // the socket free for the redial.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), puller.next())
            .await
            .is_err(),
        "nothing was sent"
    );
    drop(pusher);
    let receiving = tokio::spawn(async move {
        let delivery = next(&mut puller, "a message after the restart").await;
        text(&delivery)
    });
    let mut pusher = bind_again(&endpoint, Publisher::push).await;
    // Readiness waits until the PULL has redialled.
    publish(&mut pusher, Message::new("t", "after")).await;
    assert_eq!(receiving.await.expect("receiving task"), "after");
}

#[tokio::test]
async fn a_peer_that_restarts_on_the_same_port_gets_messages_again() {
    let mut puller = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind PULL");
    let endpoint = puller.endpoints()[0].clone();
    let mut publisher = Publisher::push(&Config::new().connect(&endpoint))
        .await
        .expect("PUSH");
    publish(&mut publisher, Message::new("t", "before")).await;
    assert_eq!(text(&next(&mut puller, "before").await), "before");
    drop(puller);

    let mut puller = bind_again(&endpoint, Consumer::pull).await;
    // What was written to the old connection before the PUSH noticed it was gone is
    // lost (ZeroMQ is at most once across a peer restart): send until one arrives.
    let mut sent = 0;
    let first = tokio::time::timeout(WAIT, async {
        loop {
            publish(&mut publisher, Message::new("t", format!("after-{sent}"))).await;
            sent += 1;
            if let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(50), puller.next()).await
            {
                return item.expect("a delivery");
            }
        }
    })
    .await
    .expect("the restarted peer never got a message");
    let first: usize = text(&first)["after-".len()..].parse().expect("an index");
    eprintln!("peer restart: {first} of {sent} messages lost to the old connection");
    // From then on nothing is lost.
    for i in 0..20 {
        publish(&mut publisher, Message::new("t", format!("resumed-{i}"))).await;
    }
    let mut resumed = Vec::new();
    while resumed.len() < 20 {
        let delivery = next(&mut puller, "a message after the restart").await;
        if text(&delivery).starts_with("resumed-") {
            resumed.push(text(&delivery));
        }
    }
    assert_eq!(
        resumed,
        (0..20).map(|i| format!("resumed-{i}")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn malformed_envelopes_are_error_items_and_the_stream_continues() {
    let mut puller = Consumer::pull(
        &Config::new()
            .framing(Framing::Envelope)
            .bind("tcp://127.0.0.1:0"),
    )
    .await
    .expect("bind PULL");
    let endpoint = puller.endpoints()[0].clone();
    // A raw zeromq PUSH, sending marked envelopes that do not parse, and plain frames.
    let mut raw = zeromq::PushSocket::new();
    raw.connect(&endpoint).await.expect("raw PUSH connects");
    let mut rng = fastrand::Rng::with_seed(42);
    const BAD: usize = 200;
    for i in 0..BAD {
        let frames: Vec<Bytes> = match i % 3 {
            0 => vec![Bytes::from(format!("only one frame {i}"))],
            1 => vec![
                Bytes::from("topic"),
                Bytes::from_static(b"TMQ\x01\x00"),
                Bytes::from("version 1"),
            ],
            _ => {
                let mut block = tower_mq::zeromq::frame::MAGIC.to_vec();
                block.push(0);
                block.push(0x7f);
                block.extend((0..rng.usize(0..40)).map(|_| rng.u8(..)));
                vec![Bytes::from("topic"), block.into(), Bytes::from("payload")]
            }
        };
        raw.send(zeromq::ZmqMessage::try_from(frames).expect("frames"))
            .await
            .expect("raw send");
    }
    let good = tower_mq::zeromq::frame::encode(&Message::new("topic", "fine")).expect("encode");
    raw.send(zeromq::ZmqMessage::try_from(good.to_vec()).expect("frames"))
        .await
        .expect("raw send");

    let mut errors = 0;
    let mut plain = 0;
    loop {
        let item = tokio::time::timeout(WAIT, puller.next())
            .await
            .expect("the stream stalled")
            .expect("the stream ended");
        match item {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
                assert_eq!(e.broker(), "zeromq");
                assert_eq!(e.operation(), Operation::Receive);
                assert!(e.to_string().contains("malformed envelope"), "{e}");
                errors += 1;
            }
            Ok(delivery) if text(&delivery).starts_with("only one frame") => plain += 1,
            Ok(delivery) => {
                assert_eq!(text(&delivery), "fine");
                assert_eq!(delivery.message().destination(), "topic");
                break;
            }
        }
    }
    assert_eq!(plain, BAD.div_ceil(3), "single frames are plain messages");
    assert_eq!(
        errors,
        BAD - plain,
        "every marked, broken envelope is an error item"
    );
}

#[tokio::test]
async fn invalid_endpoints_and_destinations_are_permanent() {
    let err = Publisher::push(&Config::new().connect("nonsense://x"))
        .await
        .expect_err("not an endpoint");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.broker(), "zeromq");
    assert_eq!(err.destination(), Some("nonsense://x"));

    let mut puller = Consumer::pull(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("PULL");
    let endpoint = puller.endpoints()[0].clone();
    let err = Consumer::pull(&Config::new().bind(&endpoint))
        .await
        .expect_err("the port is taken");
    assert_eq!(err.operation(), Operation::Connect, "{err}");
    assert!(err.to_string().contains(&endpoint), "{err}");

    // The envelope's topic frame must not be empty (plain frames have no topic frame
    // then).
    let mut publisher =
        Publisher::push(&Config::new().framing(Framing::Envelope).connect(&endpoint))
            .await
            .expect("PUSH");
    let ready = tokio::time::timeout(WAIT, publisher.ready())
        .await
        .expect("ready")
        .expect("ok");
    let err = ready
        .call(Message::new("", "x"))
        .await
        .expect_err("empty topic");
    assert_eq!(err.kind(), ErrorKind::Permanent);
    publish(&mut publisher, Message::new("ok", "still usable")).await;
    assert_eq!(
        text(&next(&mut puller, "the valid message").await),
        "still usable"
    );
}

#[tokio::test]
async fn a_pub_without_subscribers_is_ready_at_once_and_drops_what_it_sends() {
    let mut publisher = Publisher::publish(&Config::new().bind("tcp://127.0.0.1:0"))
        .await
        .expect("bind PUB");
    assert_eq!(publisher.peers(), 0);
    // No subscriber: PUB's contract is to drop the message, not to wait for one.
    let mut ready = tokio_test::task::spawn(publisher.ready());
    let ready = match ready.poll() {
        std::task::Poll::Ready(ready) => ready.expect("a PUB without subscribers is ready"),
        std::task::Poll::Pending => panic!("a PUB without subscribers must be ready at once"),
    };
    let receipt = tokio::time::timeout(WAIT, ready.call(Message::new("orders.lost", "nobody")))
        .await
        .expect("a send without subscribers must not wait for one")
        .expect("a send without subscribers is not an error");
    assert_eq!(
        receipt,
        Receipt::new("zeromq", "orders.lost", Guarantee::Sent)
    );

    // A subscriber that joins later gets what is published from then on, and not
    // what was dropped before it.
    let endpoint = publisher.endpoints()[0].clone();
    let mut orders = Consumer::subscribe(&Config::new().connect(&endpoint), ["orders."])
        .await
        .expect("SUB");
    until_subscribed(&mut publisher, &mut orders, "orders.probe").await;
    publish(&mut publisher, Message::new("orders.kept", "after")).await;
    loop {
        let delivery = next(&mut orders, "the message after the subscriber joined").await;
        assert_ne!(text(&delivery), "nobody", "a dropped message came back");
        if delivery.message().destination() == "orders.kept" {
            assert_eq!(text(&delivery), "after");
            break;
        }
    }
}
