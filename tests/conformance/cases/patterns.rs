//! Request/reply and fan-out cases, over the broker's `Requester` and a `FanOut` of its
//! publishers. Add each case here and list it in the `conformance!` macro in main.rs
//! under `// cases/patterns.rs`.

use std::error::Error as _;

use futures_util::future::join_all;
use tower::util::BoxCloneService;
use tower::{service_fn, Service, ServiceExt};
use tower_mq::fanout::{Fallback, FanOut, Policy, PublisherFailures};
use tower_mq::request::Replier;
use tower_mq::{BoxError, Delivery, Error, ErrorKind, Message, Operation, Permanent, Receipt};

use crate::fixture::*;

/// Concurrent requests each get their own reply: the fixture's requester sends them,
/// a `Replier` on a subscriber of the request topic answers on each request's
/// `reply_to`.
pub async fn request_reply<F: Fixture>() -> Outcome {
    const REQUESTS: u64 = 10;
    let fx = F::connect().await;
    let topic = fx.unique("request-reply");
    let reply_to = fx.unique("request-reply-replies");
    let (mut requests, replies) = fx.request_server(&topic, &reply_to).await;
    let square = service_fn(|request: Delivery| async move {
        let n: u64 = payload_text(&request).parse().map_err(Permanent::new)?;
        Ok::<_, BoxError>(Message::new("", (n * n).to_string()).with_header("served-by", "square"))
    });
    let mut replier = Replier::new(square, replies);
    let server = tokio::spawn(async move {
        let mut reply_addresses = Vec::new();
        for _ in 0..REQUESTS {
            let request = recv::<F>(&mut requests, "a request").await;
            reply_addresses.push(request.message().reply_to().map(str::to_owned));
            let replier = match tokio::time::timeout(WAIT, replier.ready()).await {
                Ok(Ok(replier)) => replier,
                Ok(Err(e)) => panic!("{}: replier not ready: {e}", F::NAME),
                Err(_) => panic!("{}: replier not ready within {WAIT:?}", F::NAME),
            };
            if let Err(e) = replier.call(request.clone()).await {
                panic!("{}: replying failed: {e}", F::NAME);
            }
            ack::<F>(&request).await;
        }
        reply_addresses
    });

    let requester = fx.requester(&topic, &reply_to, WAIT).await;
    let calls = (0..REQUESTS).map(|n| {
        let requester = requester.clone();
        let request = Message::new(&topic, n.to_string());
        async move { (n, requester.oneshot(request).await) }
    });
    for (n, reply) in join_all(calls).await {
        let reply = reply.unwrap_or_else(|e| panic!("{}: request {n} failed: {e}", F::NAME));
        let payload = String::from_utf8_lossy(reply.payload());
        assert_eq!(
            payload,
            (n * n).to_string(),
            "{}: the reply to {n}",
            F::NAME
        );
        assert_eq!(
            reply.headers().get_str("served-by"),
            Some("square"),
            "{}",
            F::NAME
        );
    }
    let reply_addresses = server.await.expect("the replier task panicked");
    assert!(
        reply_addresses.iter().all(Option::is_some),
        "{}: every request carries a reply address: {reply_addresses:?}",
        F::NAME
    );
    Outcome::passed()
}

/// A request nobody answers fails within its timeout with a transient `Request` error
/// naming the request topic, and leaves the requester usable.
pub async fn request_timeout<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("request-timeout");
    let reply_to = fx.unique("request-timeout-replies");
    let requester = fx.requester(&topic, &reply_to, QUIET).await;
    for attempt in 0..2 {
        let err = tokio::time::timeout(
            WAIT,
            requester.clone().oneshot(Message::new(&topic, "anyone?")),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: the request outlived its timeout by far", F::NAME))
        .expect_err("nobody answers requests on this topic");
        assert_eq!(
            err.kind(),
            ErrorKind::Transient,
            "{}: attempt {attempt}: {err}",
            F::NAME
        );
        assert_eq!(err.operation(), Operation::Request, "{}: {err}", F::NAME);
        assert_eq!(
            err.destination(),
            Some(topic.as_str()),
            "{}: {err}",
            F::NAME
        );
    }
    Outcome::passed()
}

/// `publisher` with every message redirected to `topic`.
fn publishing_to(topic: &str, publisher: BoxPublisher) -> BoxPublisher {
    let topic = topic.to_owned();
    BoxCloneService::new(publisher.map_request(move |mut message: Message| {
        message.set_destination(topic.clone());
        message
    }))
}

/// A fan-out to two publishers, each bound to its own topic, delivers one copy to each
/// topic and returns both receipts, in publisher order.
pub async fn fan_out<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let first = fx.unique("fan-out-first");
    let second = fx.unique("fan-out-second");
    let mut first_subscriber = fx.subscriber(&first).await;
    let mut second_subscriber = fx.subscriber(&second).await;
    let mut fan_out = FanOut::new(Policy::All)
        .publisher("first", publishing_to(&first, fx.publisher(&first).await))
        .publisher(
            "second",
            publishing_to(&second, fx.publisher(&second).await),
        );
    for i in 0..3 {
        let receipt = fan_out
            .ready()
            .await
            .unwrap_or_else(|e| panic!("{}: fan-out not ready: {e}", F::NAME))
            .call(Message::new(&first, format!("m{i}")).with_header("copy", "yes"))
            .await
            .unwrap_or_else(|e| panic!("{}: fan-out failed: {e}", F::NAME));
        let receipts = receipt.parts();
        assert!(
            !receipts.is_empty(),
            "{}: a fan-out answers with the receipts of its parts, got {receipt}",
            F::NAME
        );
        let destinations: Vec<&str> = receipts.iter().map(Receipt::destination).collect();
        assert_eq!(destinations, [&first, &second], "{}: {receipt}", F::NAME);
    }
    for (topic, subscriber) in [
        (&first, &mut first_subscriber),
        (&second, &mut second_subscriber),
    ] {
        for i in 0..3 {
            let delivery = recv::<F>(subscriber, &format!("m{i} on {topic}")).await;
            assert_eq!(payload_text(&delivery), format!("m{i}"), "{}", F::NAME);
            assert_eq!(
                delivery.message().destination(),
                topic.as_str(),
                "{}",
                F::NAME
            );
            assert_eq!(
                delivery.message().headers().get_str("copy"),
                Some("yes"),
                "{}",
                F::NAME
            );
            ack::<F>(&delivery).await;
        }
        assert_quiet::<F>(subscriber, "each topic gets one copy of each message").await;
    }
    Outcome::passed()
}

/// The publisher failures a fan-out or fallback error lists.
fn failures(err: &Error) -> &PublisherFailures {
    err.source()
        .and_then(|s| s.downcast_ref::<PublisherFailures>())
        .unwrap_or_else(|| panic!("the error lists the failed publishers: {err}"))
}

/// A publisher that fails permanently (publishing to a destination the broker refuses)
/// fails an `All` fan-out, naming it and keeping the broker's error; `Any` tolerates
/// it; a fallback chain stops at it. The healthy publisher still delivers.
pub async fn fan_out_partial_failure<F: Fixture>() -> Outcome {
    let fx = F::connect().await;
    let topic = fx.unique("fan-out-partial");
    let invalid = fx
        .invalid_destinations()
        .into_iter()
        .next()
        .unwrap_or_else(|| {
            panic!(
                "{}: Fixture::invalid_destinations lists none, and this case needs one",
                F::NAME
            )
        });
    let mut subscriber = fx.subscriber(&topic).await;
    let good = publishing_to(&topic, fx.publisher(&topic).await);
    let bad = publishing_to(&invalid, fx.publisher(&topic).await);

    let all = FanOut::new(Policy::All)
        .publisher("good", good.clone())
        .publisher("bad", bad.clone());
    let err = all
        .oneshot(Message::new(&topic, "all"))
        .await
        .expect_err("the bad publisher fails an All fan-out");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{}: {err}", F::NAME);
    assert_eq!(
        err.destination(),
        Some(topic.as_str()),
        "{}: {err}",
        F::NAME
    );
    let failed = failures(&err);
    assert_eq!(failed.len(), 1, "{}: {err}", F::NAME);
    let cause = failed
        .get("bad")
        .and_then(|f| f.error())
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("{}: the bad publisher's own error is kept: {err}", F::NAME));
    assert_eq!(cause.broker(), F::BROKER, "{cause}");
    assert_eq!(cause.kind(), ErrorKind::Permanent, "{cause}");
    // The good publisher published anyway.
    assert_eq!(
        payload_text(&recv::<F>(&mut subscriber, "the All copy").await),
        "all"
    );

    let any = FanOut::new(Policy::Any)
        .publisher("good", good.clone())
        .publisher("bad", bad.clone());
    let receipt = any
        .oneshot(Message::new(&topic, "any"))
        .await
        .unwrap_or_else(|e| panic!("{}: one good publisher is enough: {e}", F::NAME));
    assert!(
        receipt.parts().len() == 1 && receipt.parts()[0].destination() == topic,
        "{}: {receipt}",
        F::NAME
    );
    assert_eq!(
        payload_text(&recv::<F>(&mut subscriber, "the Any copy").await),
        "any"
    );

    let fallback = Fallback::new()
        .publisher("bad", bad)
        .publisher("good", good);
    let err = fallback
        .oneshot(Message::new(&topic, "fallback"))
        .await
        .expect_err("a permanent failure stops the fallback chain");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{}: {err}", F::NAME);
    assert!(failures(&err).get("bad").is_some(), "{}: {err}", F::NAME);
    assert_quiet::<F>(&mut subscriber, "the fallback stopped at the bad publisher").await;
    Outcome::passed()
}
