//! RabbitMQ-specific behaviour, against a real broker.
//!
//! The broker address comes from `TOWER_MQ_AMQP_URL` (default: the project harness,
//! `amqp://guest:guest@127.0.0.1:15673/%2f`; run `scripts/brokers up rabbitmq`).
//! The reconnect test restarts the broker with `"$TOWER_MQ_BROKERS" restart rabbitmq`.

#![cfg(feature = "rabbitmq")]

#[path = "support/connect_retry.rs"]
mod connect_retry;
#[path = "support/harness.rs"]
mod harness;
#[path = "support/own_server.rs"]
mod own_server;
#[path = "support/waits.rs"]
mod waits;

use harness::rabbitmq::{connect, url};
use harness::unique;
use own_server::{assert_unreachable_and_masked, everything_shown, free_port};
use waits::{next_within, until, until_ok};

use std::time::Duration;

use futures_util::StreamExt;
use tower::{Service, ServiceExt};
use tower_mq::dead_letter;
use tower_mq::rabbitmq::{
    Binding, Config, Connection, Consumer, Exchange, Publisher, Queue, Requester, Routing, Topology,
};
use tower_mq::{Delivery, ErrorKind, Guarantee, Message, Operation, Receipt};

/// Tests share one broker: the restart test takes this for writing, so that no other
/// test runs while the broker is down; every other test holds it for reading.
static BROKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Queues that clean themselves up after the test.
fn queue(name: &str) -> Queue {
    Queue::classic(name).expires(Duration::from_secs(60))
}

/// The broker at `url`, with queue `q` declared and messages routed to queues by name
/// (the default exchange).
fn queue_config(url: impl Into<String>, q: &str) -> Config {
    Config::new(url)
        .routing(Routing::DefaultExchange)
        .topology(Topology::new().queue(queue(q)))
}

/// Publishes `message` to the queue it names (default-exchange routing), confirmed,
/// and consumes that queue: the consumer and the message's delivery.
async fn publish_and_take(connection: &Connection, message: Message) -> (Consumer, Delivery) {
    let q = message.destination().to_owned();
    let receipt = connection
        .publisher()
        .oneshot(message)
        .await
        .expect("publish");
    assert!(receipt.is_confirmed(), "{receipt:?}");
    let mut consumer = connection.consumer(&q).await.unwrap();
    let delivery = next(&mut consumer).await;
    (consumer, delivery)
}

/// Publishes `message` once `publisher` is ready; the publish must succeed.
async fn publish(publisher: &mut Publisher, message: Message) -> Receipt {
    publisher
        .ready()
        .await
        .unwrap()
        .call(message)
        .await
        .unwrap()
}

/// The payloads of the next `n` deliveries of `consumer`, as text, each acknowledged.
async fn take_acked(consumer: &mut Consumer, n: usize) -> Vec<String> {
    let mut payloads = Vec::with_capacity(n);
    for _ in 0..n {
        let d = next(consumer).await;
        payloads.push(String::from_utf8(d.message().payload().to_vec()).unwrap());
        d.ack().await.unwrap();
    }
    payloads
}

async fn next(consumer: &mut Consumer) -> Delivery {
    next_within(consumer, "a delivery", Duration::from_secs(10)).await
}

#[tokio::test]
async fn confirmed_publish_carries_every_property() {
    let _shared = BROKER.read().await;
    let q = unique("props");
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .topology(Topology::new().queue(queue(&q).max_priority(9))),
    )
    .await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    let message = Message::new(&q, "payload")
        .with_header("tenant", "acme")
        .with_priority(7)
        .with_ttl(Duration::from_secs(60))
        .with_persistent(true)
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_reply_to("somewhere")
        .with_content_type("text/plain")
        .with_content_encoding("identity");
    let receipt = connection.publisher().oneshot(message).await.unwrap();
    assert_eq!(
        receipt,
        Receipt::new("rabbitmq", "", Guarantee::Stored).with_routing_key(q.clone())
    );
    assert!(receipt.is_confirmed());

    let delivery = next(&mut consumer).await;
    let got = delivery.message();
    assert_eq!(got.destination(), q);
    assert_eq!(got.payload().as_ref(), b"payload");
    assert_eq!(got.headers().get_str("tenant"), Some("acme"));
    assert_eq!(got.priority(), Some(7));
    assert_eq!(got.ttl(), Some(Duration::from_secs(60)));
    assert!(got.is_persistent());
    assert_eq!(got.message_id(), Some("m-1"));
    assert_eq!(got.correlation_id(), Some("c-1"));
    assert_eq!(got.reply_to(), Some("somewhere"));
    assert_eq!(got.content_type(), Some("text/plain"));
    assert_eq!(got.content_encoding(), Some("identity"));
    assert_eq!(delivery.delivery_count(), 1);
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn exchange_routing_maps_destination_and_key() {
    let _shared = BROKER.read().await;
    let exchange = unique("topic");
    let q = unique("topic-q");
    let connection = connect(
        Config::new(url()).topology(
            Topology::new()
                .exchange(Exchange::topic(&exchange).auto_delete(true))
                .queue(queue(&q))
                .binding(Binding::queue(&q, &exchange, "order.*")),
        ),
    )
    .await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    let receipt = connection
        .publisher()
        .oneshot(Message::new(&exchange, "x").with_key("order.created"))
        .await
        .unwrap();
    assert_eq!(receipt.destination(), exchange);
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().destination(), exchange);
    assert_eq!(delivery.message().key_str(), Some("order.created"));
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn unroutable_mandatory_message_is_a_permanent_error() {
    let _shared = BROKER.read().await;
    let exchange = unique("nowhere");
    let connection = connect(
        Config::new(url())
            .topology(Topology::new().exchange(Exchange::direct(&exchange).auto_delete(true))),
    )
    .await;
    let mut publisher = connection.publisher();
    let err = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&exchange, "lost").with_key("no-binding"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.broker(), "rabbitmq");
    assert_eq!(err.operation(), Operation::Publish);
    assert_eq!(err.destination(), Some(exchange.as_str()));
    assert!(err.to_string().contains("NO_ROUTE"), "{err}");

    // Not mandatory: the broker confirms and drops it.
    let lax = connect(Config::new(url()).mandatory(false)).await;
    lax.publisher()
        .oneshot(Message::new(&exchange, "dropped").with_key("no-binding"))
        .await
        .unwrap();
}

/// Concurrent publishes on one shared channel: the broker acks several at once and
/// lapin hands each returned message to whichever confirm it resolves first, yet every
/// publish learns its own fate, single and batched alike, while other callers give up
/// on theirs half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_on_one_channel_each_learn_their_own_return() {
    let _shared = BROKER.read().await;
    let exchange = unique("mixed");
    let q = unique("mixed-q");
    let connection = connect(
        Config::new(url()).channel_pool_size(1).topology(
            Topology::new()
                .exchange(Exchange::direct(&exchange).auto_delete(true))
                .queue(queue(&q))
                .binding(Binding::queue(&q, &exchange, "in")),
        ),
    )
    .await;
    let unroutable = |i: usize| i % 7 == 3;
    let message = |i: usize| {
        let key = if unroutable(i) { "out" } else { "in" };
        // Persistent and transient messages are confirmed at different times, so
        // acks come out of order and in groups.
        Message::new(&exchange, format!("m{i}"))
            .with_key(key)
            .with_persistent(i.is_multiple_of(2))
    };
    const SINGLE: usize = 1_400;
    const BATCHES: usize = 20;
    const BATCH: usize = 30;
    let singles = futures_util::future::join_all(
        (0..SINGLE).map(|i| connection.publisher().oneshot(message(i))),
    );
    let batches = futures_util::future::join_all((0..BATCHES).map(|b| {
        let batch = (0..BATCH)
            .map(|j| message(SINGLE + b * BATCH + j))
            .collect();
        connection.publisher().batch().oneshot(batch)
    }));
    // Callers that give up at once: their publishes are still observed to the end, so
    // neither their returns nor their confirms leave anyone else waiting or wrong.
    let abandoned = futures_util::future::join_all((0..200).map(|i| {
        let message = Message::new(&exchange, format!("abandoned{i}")).with_key("out");
        tokio::time::timeout(
            Duration::from_micros(50 * (i % 5)),
            connection.publisher().oneshot(message),
        )
    }));
    let (singles, batches, _) = tokio::join!(singles, batches, abandoned);
    let mut results: Vec<Result<Receipt, tower_mq::Error>> = singles;
    for batch in batches {
        results.extend(batch.expect("the batch call itself failed"));
    }
    let mut wrong = Vec::new();
    for (i, result) in results.iter().enumerate() {
        match result {
            Err(e) if unroutable(i) && e.kind() == ErrorKind::Permanent => {
                assert!(e.to_string().contains("NO_ROUTE"), "message {i}: {e}")
            }
            Ok(receipt) if !unroutable(i) => assert!(receipt.is_confirmed()),
            other => wrong.push(format!("message {i}: {other:?}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong outcomes: {wrong:#?}",
        wrong.len()
    );

    let routable = (0..results.len()).filter(|&i| !unroutable(i)).count();
    let mut consumer = connection.consumer(&q).await.unwrap();
    let got: std::collections::HashSet<String> = take_acked(&mut consumer, routable)
        .await
        .into_iter()
        .collect();
    let expected: std::collections::HashSet<String> = (0..results.len())
        .filter(|&i| !unroutable(i))
        .map(|i| format!("m{i}"))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn missing_exchange_is_not_found_and_leaves_the_pool_working() {
    let _shared = BROKER.read().await;
    let q = unique("after-404");
    let connection = connect(
        Config::new(url())
            .channel_pool_size(1)
            .topology(Topology::new().queue(queue(&q))),
    )
    .await;
    let mut publisher = connection.publisher();
    let missing = unique("missing-exchange");
    let err = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&missing, "x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.destination(), Some(missing.as_str()));
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    // The only pooled channel still publishes.
    publish(&mut publisher, Message::new("", "ok").with_key(&q)).await;
}

#[tokio::test]
async fn redeclaring_with_other_arguments_is_precondition_failed() {
    let _shared = BROKER.read().await;
    let q = unique("precondition");
    let connection = connect(Config::new(url()).topology(Topology::new().queue(queue(&q)))).await;
    let err = connection
        .declare(&Topology::new().queue(queue(&q).max_priority(3)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Declare);
    assert!(err.to_string().contains("PRECONDITION_FAILED"), "{err}");
}

#[tokio::test]
async fn consuming_a_missing_queue_is_a_permanent_error() {
    let _shared = BROKER.read().await;
    let connection = connect(Config::new(url())).await;
    let q = unique("no-such-queue");
    let err = connection.consumer(&q).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Subscribe);
    assert_eq!(err.destination(), Some(q.as_str()));
}

#[tokio::test]
async fn priority_queue_delivers_the_highest_priority_first() {
    let _shared = BROKER.read().await;
    let q = unique("priority");
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .topology(Topology::new().queue(queue(&q).max_priority(10))),
    )
    .await;
    // Publish while nobody consumes, so the queue can reorder.
    let batch = vec![
        Message::new(&q, "low").with_priority(1),
        Message::new(&q, "high").with_priority(9),
        Message::new(&q, "mid").with_priority(5),
    ];
    let results = connection.publisher().batch().oneshot(batch).await.unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut consumer = connection.consumer(&q).await.unwrap();
    assert_eq!(take_acked(&mut consumer, 3).await, ["high", "mid", "low"]);
}

/// `Queue::dead_letter` names the dead-letter queue by the shared rule
/// (`<queue>.dlq`), and a reject reaches it with the shared headers.
#[tokio::test]
async fn reject_dead_letters_to_the_queue_named_by_the_shared_rule() {
    let _shared = BROKER.read().await;
    let q = unique("work");
    let dead = dead_letter::destination_for(&q);
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .topology(
                Topology::new()
                    .queue(queue(&q).dead_letter(&dead))
                    .queue(queue(&dead)),
            ),
    )
    .await;
    let (_work, delivery) = publish_and_take(&connection, Message::new(&q, "poison")).await;
    delivery.reject("cannot parse").await.unwrap();

    let mut dead_letters = connection.consumer(&dead).await.unwrap();
    let letter = next(&mut dead_letters).await;
    let headers = letter.message().headers();
    assert_eq!(letter.message().payload().as_ref(), b"poison");
    assert_eq!(headers.get_str(dead_letter::REASON), Some("cannot parse"));
    assert_eq!(
        headers.get_str(dead_letter::ORIGINAL_DESTINATION),
        Some(q.as_str())
    );
    assert_eq!(headers.get_str(dead_letter::DELIVERIES), Some("1"));
    letter.ack().await.unwrap();
}

#[tokio::test]
async fn reject_dead_letters_through_the_dlx() {
    let _shared = BROKER.read().await;
    for with_reason in [true, false] {
        let dlx = unique("dlx");
        let q = unique("work");
        let dead = unique("dead");
        let connection = connect(
            Config::new(url())
                .routing(Routing::DefaultExchange)
                .reject_with_reason(with_reason)
                .topology(
                    Topology::new()
                        .exchange(Exchange::fanout(&dlx).auto_delete(true))
                        .queue(queue(&q).dead_letter_exchange(&dlx))
                        .queue(queue(&dead))
                        .binding(Binding::queue(&dead, &dlx, "")),
                ),
        )
        .await;
        let (mut work, delivery) = publish_and_take(
            &connection,
            Message::new(&q, "poison").with_header("tenant", "acme"),
        )
        .await;
        delivery.reject("cannot parse").await.unwrap();

        let mut dead_letters = connection.consumer(&dead).await.unwrap();
        let dead_letter = next(&mut dead_letters).await;
        let message = dead_letter.message();
        assert_eq!(message.payload().as_ref(), b"poison");
        assert_eq!(message.headers().get_str("tenant"), Some("acme"));
        if with_reason {
            // A confirmed copy through the queue's DLX, with the reason.
            assert_eq!(
                message.headers().get_str(dead_letter::REASON),
                Some("cannot parse")
            );
            assert_eq!(
                message.headers().get_str(dead_letter::ORIGINAL_DESTINATION),
                Some(q.as_str())
            );
        } else {
            // RabbitMQ's own dead-lettering (basic.reject): the reason is `rejected`.
            assert_eq!(
                message.headers().get_str("x-first-death-reason"),
                Some("rejected")
            );
            assert_eq!(
                message.headers().get_str("x-first-death-queue"),
                Some(q.as_str())
            );
        }
        dead_letter.ack().await.unwrap();
        // Not delivered again from the work queue.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), work.next())
                .await
                .is_err(),
            "the rejected message came back"
        );
    }
}

#[tokio::test]
async fn nack_requeues_and_counts_deliveries() {
    let _shared = BROKER.read().await;
    let classic = unique("classic");
    let quorum = unique("quorum");
    let quorum_nacked = unique("quorum-nacked");
    let classic_nacked = unique("classic-nacked");
    let topology = Topology::new()
        .queue(queue(&classic))
        .queue(queue(&classic_nacked))
        .queue(Queue::quorum(&quorum).expires(Duration::from_secs(60)))
        .queue(Queue::quorum(&quorum_nacked).expires(Duration::from_secs(60)));
    let republishing = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .topology(topology.clone()),
    )
    .await;
    // basic.nack instead of republishing: classic queues then only flag redeliveries,
    // quorum queues still count.
    let nacking = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .requeue_by_republish(false)
            .topology(topology),
    )
    .await;
    let publisher = republishing.publisher();
    for q in [&classic, &quorum, &quorum_nacked, &classic_nacked] {
        publisher
            .clone()
            .oneshot(Message::new(q, "again").with_header("tenant", "acme"))
            .await
            .unwrap();
    }

    for (connection, q, expected) in [
        (&republishing, &classic, [1, 2, 3]),
        (&republishing, &quorum, [1, 2, 3]),
        (&nacking, &quorum_nacked, [1, 2, 3]),
        (&nacking, &classic_nacked, [1, 2, 2]),
    ] {
        let mut consumer = connection.consumer(q).await.unwrap();
        for (n, expected) in expected.into_iter().enumerate() {
            let d = next(&mut consumer).await;
            assert_eq!(d.delivery_count(), expected, "{q}: delivery {n}");
            assert_eq!(d.is_redelivery(), n > 0, "{q}: delivery {n}");
            // The count's bookkeeping header stays out of the message's headers.
            let headers = d.message().headers();
            assert_eq!(headers.get_str("tenant"), Some("acme"), "{q}: {headers:?}");
            assert!(
                !headers.contains("x-tower-mq-deliveries"),
                "{q}: {headers:?}"
            );
            if n < 2 {
                d.nack(None).await.unwrap();
            } else {
                d.ack().await.unwrap();
            }
        }
    }
}

/// RabbitMQ stamps and expires messages by a clock of whole milliseconds, so a delay
/// queue can let a message go up to a millisecond before the delay has passed on ours
/// (seen: 2.4991 s for 2.5 s).
const TTL_CLOCK_SLACK: Duration = Duration::from_millis(5);

#[tokio::test]
async fn delayed_nack_redelivers_after_the_delay() {
    let _shared = BROKER.read().await;
    let q = unique("delayed");
    let connection = connect(queue_config(url(), &q)).await;
    let (mut consumer, first) = publish_and_take(&connection, Message::new(&q, "later")).await;
    let nacked_at = tokio::time::Instant::now();
    first.nack(Some(Duration::from_millis(300))).await.unwrap();
    let again = next(&mut consumer).await;
    assert!(nacked_at.elapsed() + TTL_CLOCK_SLACK >= Duration::from_millis(300));
    assert!(again.is_redelivery());
    again.ack().await.unwrap();
}

#[tokio::test]
async fn direct_reply_to_request_reply() {
    let _shared = BROKER.read().await;
    let q = unique("rpc");
    let connection = connect(queue_config(url(), &q)).await;
    // A responder: echo upper-cased, to the request's reply_to with its correlation id.
    let mut requests = connection.consumer(&q).await.unwrap();
    let responder = connection.publisher();
    let server = tokio::spawn(async move {
        while let Some(Ok(request)) = requests.next().await {
            let msg = request.message();
            let reply = Message::new(msg.reply_to().unwrap(), msg.payload().to_ascii_uppercase())
                .with_correlation_id(msg.correlation_id().unwrap())
                .with_persistent(false);
            responder.clone().oneshot(reply).await.unwrap();
            request.ack().await.unwrap();
        }
    });

    let mut requester = Requester::new(&connection).timeout(Duration::from_secs(10));
    let calls = (0..5).map(|i| {
        let mut requester = requester.clone();
        let q = q.clone();
        async move {
            requester
                .ready()
                .await?
                .call(Message::new(&q, format!("ping {i}")))
                .await
        }
    });
    let replies = futures_util::future::join_all(calls).await;
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = reply.unwrap();
        assert_eq!(reply.payload().as_ref(), format!("PING {i}").as_bytes());
        assert!(reply.correlation_id().is_some());
    }

    // Nobody answers on an unbound routing key: the request is unroutable.
    let err = requester
        .ready()
        .await
        .unwrap()
        .call(Message::new(unique("nobody"), "hello?"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    server.abort();
}

#[tokio::test]
async fn a_direct_reply_after_the_deadline_reaches_no_one_and_ids_are_the_requesters() {
    let _shared = BROKER.read().await;
    let q = unique("rpc-late");
    let connection = connect(queue_config(url(), &q)).await;
    // An echo responder that holds back its reply to "hold" until released.
    let mut requests = connection.consumer(&q).await.unwrap();
    let responder = connection.publisher();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (ids_tx, mut ids) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        let mut released = Some(released);
        while let Some(Ok(request)) = requests.next().await {
            let msg = request.message();
            let id = msg.correlation_id().unwrap().to_owned();
            let _ = ids_tx.send(id.clone());
            if msg.payload().as_ref() == b"hold" {
                if let Some(released) = released.take() {
                    let _ = released.await;
                }
            }
            let reply = Message::new(msg.reply_to().unwrap(), msg.payload().to_ascii_uppercase())
                .with_correlation_id(id)
                .with_persistent(false);
            responder.clone().oneshot(reply).await.unwrap();
            request.ack().await.unwrap();
        }
    });
    let requester = Requester::new(&connection).timeout(Duration::from_secs(10));

    let err = requester
        .clone()
        .timeout(Duration::from_millis(300))
        .oneshot(Message::new(&q, "hold").with_correlation_id("mine"))
        .await
        .expect_err("the reply is held back");
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.code(), Some(tower_mq::Code::Timeout), "{err}");
    assert_eq!(err.operation(), Operation::Request);
    assert_eq!(err.destination(), Some(q.as_str()));
    release.send(()).unwrap();
    // The late reply arrives on the shared reply channel and is dropped; the next
    // requests get their own replies.
    for word in ["after", "late"] {
        let reply = requester
            .clone()
            .oneshot(Message::new(&q, word))
            .await
            .unwrap();
        assert_eq!(reply.payload().as_ref(), word.to_uppercase().as_bytes());
    }
    // The requester's own correlation ids, one per request, replacing the caller's.
    let sent: Vec<String> = std::iter::from_fn(|| ids.try_recv().ok()).collect();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|id| id != "mine"), "{sent:?}");
    let unique_ids: std::collections::HashSet<_> = sent.iter().collect();
    assert_eq!(unique_ids.len(), 3, "{sent:?}");
    server.abort();
}

#[tokio::test]
async fn request_without_reply_times_out_as_transient() {
    let _shared = BROKER.read().await;
    let q = unique("silent");
    let connection =
        connect(queue_config(url(), &q).request_timeout(Duration::from_millis(300))).await;
    let err = connection
        .requester()
        .oneshot(Message::new(&q, "anyone?"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert_eq!(err.operation(), Operation::Request);
}

#[tokio::test]
async fn batched_confirms_answer_each_message() {
    let _shared = BROKER.read().await;
    let q = unique("batch");
    let connection = connect(queue_config(url(), &q)).await;
    let mut batch: Vec<Message> = (0..100).map(|i| Message::new(&q, format!("{i}"))).collect();
    batch.insert(50, Message::new(unique("unbound-queue"), "nowhere"));
    let results = connection.publisher().batch().oneshot(batch).await.unwrap();
    assert_eq!(results.len(), 101);
    for (i, result) in results.iter().enumerate() {
        if i == 50 {
            let err = result.as_ref().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        } else {
            assert!(result.is_ok(), "message {i}: {result:?}");
        }
    }
    let mut consumer = connection.consumer(&q).await.unwrap();
    for i in 0..100 {
        let d = next(&mut consumer).await;
        assert_eq!(d.message().payload().as_ref(), format!("{i}").as_bytes());
        d.ack().await.unwrap();
    }
}

#[tokio::test]
async fn reconnects_after_a_broker_restart_and_restores_topology_and_consumers() {
    let _exclusive = BROKER.write().await;
    let q = unique("restart");
    let rpc = unique("restart-rpc");
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .heartbeat(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
            // Not durable: only the re-declaration after reconnect brings them back.
            .topology(
                Topology::new()
                    .queue(Queue::classic(&q).durable(false))
                    .queue(Queue::classic(&rpc).durable(false)),
            ),
    )
    .await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    let mut publisher = connection.publisher();
    publish(&mut publisher, Message::new(&q, "before")).await;
    next(&mut consumer).await.ack().await.unwrap();
    assert_eq!(connection.generation(), 1);
    // Held unacknowledged across the outage.
    publish(&mut publisher, Message::new(&q, "held")).await;
    let held = next(&mut consumer).await;

    // An echo responder, and a requester used before and after the outage.
    let mut requests = connection.consumer(&rpc).await.unwrap();
    let responder = connection.publisher();
    let server = tokio::spawn(async move {
        while let Some(item) = requests.next().await {
            let Ok(request) = item else { continue };
            let msg = request.message();
            let reply = Message::new(msg.reply_to().unwrap_or_default(), msg.payload().clone())
                .with_correlation_id(msg.correlation_id().unwrap_or_default());
            if responder.clone().oneshot(reply).await.is_ok() {
                let _ = request.ack().await;
            }
        }
    });
    let mut requester = Requester::new(&connection).timeout(Duration::from_secs(5));
    let reply = requester
        .ready()
        .await
        .unwrap()
        .call(Message::new(&rpc, "ping 1"))
        .await
        .unwrap();
    assert_eq!(reply.payload().as_ref(), b"ping 1");

    // Publishes in flight when the broker goes away are confirmed or fail as transient:
    // never a permanent error, never a hang. Eight publishers keep publishing until
    // the broker is stopped.
    let (stopped, stop_seen) = tokio::sync::watch::channel(false);
    let flood: Vec<_> = (0..8)
        .map(|t| {
            let publisher = publisher.clone();
            let mut stop_seen = stop_seen.clone();
            let q = q.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for i in 0.. {
                    let message = Message::new(&q, format!("flood {t}/{i}"));
                    let result = tokio::select! {
                        biased;
                        result = publisher.clone().oneshot(message) => result,
                        _ = stop_seen.wait_for(|s| *s) => break,
                    };
                    let failed = result.is_err();
                    results.push(result);
                    if failed {
                        break;
                    }
                }
                results
            })
        })
        .collect();
    harness::run("stop", "rabbitmq").await;
    let _ = stopped.send(true);
    let mut confirmed = 0;
    let mut transient = 0;
    for task in flood {
        let results = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("an in-flight publish neither confirmed nor failed within 30 s of the stop")
            .unwrap();
        for result in results {
            match result {
                Ok(_) => confirmed += 1,
                Err(e) => {
                    assert!(e.is_transient(), "{e}");
                    transient += 1;
                }
            }
        }
    }
    println!("before the stop: {confirmed} confirmed, {transient} failed as transient");
    assert!(
        transient > 0,
        "no publish was in flight when the broker stopped"
    );
    // While the broker is down, readiness waits.
    until(
        "the lost connection to be noticed",
        Duration::from_secs(15),
        async || !connection.is_connected(),
    )
    .await;
    let mut waiting = tokio_test::task::spawn(publisher.ready());
    tokio_test::assert_pending!(waiting.poll());
    drop(waiting);
    // Its channel is gone: acking cannot reach the broker, which will redeliver.
    let err = held.ack().await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.operation(), Operation::Ack);
    assert_eq!(held.settlement(), None);

    harness::run("start", "rabbitmq").await;

    // poll_ready waits for the new connection; publish again once it is up.
    let receipt = until_ok(
        "a confirmed publish after the restart",
        Duration::from_secs(30),
        async || {
            let ready = publisher.ready().await.unwrap_or_else(|e| panic!("{e}"));
            ready.call(Message::new(&q, "after")).await
        },
    )
    .await;
    assert!(receipt.is_confirmed());
    assert!(connection.generation() >= 2);
    // The queue was not durable: what was confirmed before the stop is gone with it,
    // and the consumer, subscribed again, gets what came after.
    let after = next(&mut consumer).await;
    assert_eq!(
        after.message().payload().as_ref(),
        b"after",
        "{confirmed} confirmed before the stop"
    );
    after.ack().await.unwrap();

    // The requester opens a new direct reply-to channel on the new connection.
    let reply = until_ok(
        "a reply after the restart",
        Duration::from_secs(30),
        async || {
            let ready = requester.ready().await.unwrap();
            ready.call(Message::new(&rpc, "ping 2")).await
        },
    )
    .await;
    assert_eq!(reply.payload().as_ref(), b"ping 2");
    server.abort();
}

/// Runs `rabbitmqctl` against the harness node (`tower_mq@localhost`, its own epmd
/// port and Erlang cookie under the harness state directory).
fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    let state = std::env::var("TOWER_MQ_STATE").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/tower-mq/brokers")
    });
    let epmd = std::env::var("TOWER_MQ_EPMD_PORT").unwrap_or_else(|_| "14369".into());
    let output = std::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
        .args(["-n", "tower_mq@localhost"])
        .args(args)
        .env("HOME", format!("{state}/rabbitmq/home"))
        .env("ERL_EPMD_PORT", epmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run rabbitmqctl (is rabbitmq-server installed? scripts/brokers install): {e}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?} against the harness node failed (scripts/brokers up rabbitmq): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Puts the memory alarm back when the test ends, even if it fails, so the broker
/// does not stay blocked for the tests after it.
struct MemoryAlarm;

impl MemoryAlarm {
    fn raise() -> MemoryAlarm {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0"]);
        MemoryAlarm
    }
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    }
}

#[tokio::test]
async fn blocked_connection_makes_poll_ready_pending_until_unblocked() {
    let _exclusive = BROKER.write().await;
    let q = unique("blocked");
    let connection = connect(queue_config(url(), &q)).await;
    let mut publisher = connection.publisher();
    // RabbitMQ blocks connections that publish: publish once first.
    publish(&mut publisher, Message::new(&q, "before")).await;
    assert!(!connection.is_blocked());

    let alarm = MemoryAlarm::raise();
    // RabbitMQ tells a connection it is blocked when it next publishes: this one is
    // held by the broker, and confirmed once the alarm clears.
    let held = tokio::spawn(publisher.clone().oneshot(Message::new(&q, "held")));
    // Bounded wait for the broker's connection.blocked to arrive.
    until(
        "connection.blocked after the memory alarm",
        Duration::from_secs(15),
        async || connection.is_blocked(),
    )
    .await;
    let mut waiting = tokio_test::task::spawn(publisher.ready());
    tokio_test::assert_pending!(waiting.poll());
    // A connection that only consumes is not throttled: it still receives and settles.
    let consuming = connect(Config::new(url()).routing(Routing::DefaultExchange)).await;
    let mut consumer = consuming.consumer(&q).await.unwrap();
    let before = next(&mut consumer).await;
    assert_eq!(before.message().payload().as_ref(), b"before");
    before.ack().await.unwrap();
    assert!(!consuming.is_blocked());
    tokio_test::assert_pending!(waiting.poll());

    drop(alarm);
    tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("poll_ready still pending 15 s after connection.unblocked")
        .unwrap();
    assert!(!connection.is_blocked());
    tokio::time::timeout(Duration::from_secs(15), held)
        .await
        .expect("the held message was not confirmed after the alarm cleared")
        .unwrap()
        .unwrap();
    let mut publisher = connection.publisher();
    publish(&mut publisher, Message::new(&q, "after")).await;
}

/// The harness broker's Erlang VM, frozen with SIGSTOP until dropped (SIGCONT), so
/// that it keeps its sockets open but stops answering, heartbeats included.
struct Frozen(String);

impl Frozen {
    fn freeze() -> Frozen {
        let state = std::env::var("TOWER_MQ_STATE").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            format!("{home}/.cache/tower-mq/brokers")
        });
        let pid_file = format!("{state}/rabbitmq/beam.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| {
                panic!("no harness RabbitMQ pid in {pid_file} (scripts/brokers up rabbitmq): {e}")
            })
            .trim()
            .to_owned();
        signal("-STOP", &pid);
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("-CONT", &self.0);
    }
}

fn signal(which: &str, pid: &str) {
    let status = std::process::Command::new("kill")
        .args([which, pid])
        .status()
        .unwrap_or_else(|e| panic!("kill {which} {pid}: {e}"));
    assert!(status.success(), "kill {which} {pid} failed");
}

#[tokio::test]
async fn a_broker_that_stops_answering_is_noticed_by_heartbeats() {
    let _exclusive = BROKER.write().await;
    let q = unique("heartbeat");
    let connection = connect(
        queue_config(url(), &q)
            .heartbeat(Duration::from_secs(1))
            .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500)),
    )
    .await;
    let frozen = Frozen::freeze();
    // The socket stays open: only the missing heartbeats tell the connection is dead.
    until(
        "a broker silent with a 1 s heartbeat to be noticed",
        Duration::from_secs(15),
        async || !connection.is_connected(),
    )
    .await;
    drop(frozen);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), connection.ready())
            .await
            .expect("no reconnect within 60 s of the broker answering again"),
        "the connection was closed"
    );
    assert!(connection.generation() >= 2);
    connection
        .publisher()
        .oneshot(Message::new(&q, "alive"))
        .await
        .unwrap();
}

#[tokio::test]
async fn batch_layer_feeds_batched_confirms() {
    use tower::Layer;
    use tower_mq::layers::batch::BatchLayer;

    let _shared = BROKER.read().await;
    let q = unique("batch-layer");
    let connection = connect(queue_config(url(), &q)).await;
    let publisher =
        BatchLayer::new(50, Duration::from_millis(20)).layer(connection.publisher().batch());
    let calls = (0..200).map(|i| {
        let destination = if i == 7 { unique("nowhere") } else { q.clone() };
        publisher
            .clone()
            .oneshot(Message::new(destination, i.to_string()))
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, result) in results.iter().enumerate() {
        match result {
            // Unroutable: only its own caller sees the permanent error.
            Err(e) if i == 7 => assert_eq!(
                tower_mq::layers::classify::DefaultClassifier::new().classify_dyn(&**e),
                ErrorKind::Permanent,
                "{e}"
            ),
            Ok(receipt) if i != 7 => assert!(receipt.is_confirmed()),
            other => panic!("message {i}: {other:?}"),
        }
    }
    publisher.shutdown().await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    let got: std::collections::HashSet<String> =
        take_acked(&mut consumer, 199).await.into_iter().collect();
    assert_eq!(got.len(), 199);
    assert!(!got.contains("7"));
}

/// A plain lapin channel, for what tower-mq itself does not do (deleting a queue,
/// looking at a queue's message count).
async fn plain_channel() -> (lapin::Connection, lapin::Channel) {
    let address = url();
    let connection = lapin::Connection::connect(&address, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("lapin cannot connect to {address}: {e}"));
    let channel = connection.create_channel().await.expect("lapin channel");
    (connection, channel)
}

/// How many ready messages queue `name` holds (a passive declare).
async fn message_count(channel: &lapin::Channel, name: &str) -> u32 {
    channel
        .queue_declare(
            name.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("passive declare of {name}: {e}"))
        .message_count()
}

#[tokio::test]
async fn a_burst_of_delayed_nacks_beyond_the_prefetch_does_not_stall_the_consumer() {
    let _shared = BROKER.read().await;
    let q = unique("delay-burst");
    let connection = connect(queue_config(url(), &q).prefetch(4)).await;
    let publisher = connection.publisher();
    let burst = 12;
    for i in 0..burst {
        publisher
            .clone()
            .oneshot(Message::new(&q, format!("m{i}")))
            .await
            .unwrap();
    }
    let delay = Duration::from_millis(2500);
    let mut consumer = connection.consumer(&q).await.unwrap();
    // Three times the prefetch window fails, each nacked with a delay: every first
    // delivery arrives before the first delay is over, so no delivery holds a slot.
    let mut nacked_at = std::collections::HashMap::new();
    tokio::time::timeout(delay, async {
        for _ in 0..burst {
            let d = next(&mut consumer).await;
            assert_eq!(d.delivery_count(), 1);
            let payload = String::from_utf8(d.message().payload().to_vec()).unwrap();
            nacked_at.insert(payload, tokio::time::Instant::now());
            // Returns once the broker holds the message again.
            d.nack(Some(delay)).await.unwrap();
        }
    })
    .await
    .expect("the consumer stalled: the burst did not arrive within one delay");
    assert_eq!(nacked_at.len(), burst);
    // Each comes back once, after its delay, with its count.
    for _ in 0..burst {
        let d = next(&mut consumer).await;
        let payload = String::from_utf8(d.message().payload().to_vec()).unwrap();
        let at = nacked_at
            .remove(&payload)
            .unwrap_or_else(|| panic!("{payload} came back twice"));
        assert!(
            at.elapsed() + TTL_CLOCK_SLACK >= delay,
            "{payload} back after {:?}",
            at.elapsed()
        );
        assert_eq!(d.delivery_count(), 2, "{payload}");
        d.ack().await.unwrap();
    }
    assert!(nacked_at.is_empty());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "a message came back more than once"
    );
}

#[tokio::test]
async fn a_delayed_nack_is_held_by_the_broker_not_by_the_dropped_consumer() {
    let _shared = BROKER.read().await;
    let q = unique("delay-drop");
    let config = queue_config(url(), &q);
    let delay = Duration::from_millis(1500);
    let nacked_at = {
        let connection = connect(config.clone()).await;
        let (_consumer, d) = publish_and_take(&connection, Message::new(&q, "later")).await;
        let nacked_at = tokio::time::Instant::now();
        d.nack(Some(delay)).await.unwrap();
        // The broker has it: in the delay queue, not unacknowledged in this process.
        let (_plain, channel) = plain_channel().await;
        let delay_queue = format!("tower-mq.delay.1500ms.{q}");
        assert_eq!(message_count(&channel, &delay_queue).await, 1);
        nacked_at
        // The consumer, its deliveries and the connection go here.
    };
    let connection = connect(config).await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    let d = next(&mut consumer).await;
    assert!(
        nacked_at.elapsed() + TTL_CLOCK_SLACK >= delay,
        "back after {:?}, before its delay",
        nacked_at.elapsed()
    );
    assert_eq!(d.message().payload().as_ref(), b"later");
    assert_eq!(d.delivery_count(), 2);
    d.ack().await.unwrap();
    // Exactly once: nothing left behind requeues it again.
    assert!(
        tokio::time::timeout(delay + Duration::from_millis(500), consumer.next())
            .await
            .is_err(),
        "the message came back twice"
    );
}

#[tokio::test]
async fn a_nack_delay_longer_than_rabbitmq_can_hold_is_refused_and_the_delivery_stays_unsettled() {
    let _shared = BROKER.read().await;
    let q = unique("delay-too-long");
    let connection = connect(queue_config(url(), &q)).await;
    let (mut consumer, d) = publish_and_take(&connection, Message::new(&q, "kept")).await;
    let err = d
        .nack(Some(Duration::from_secs(30 * 24 * 3600)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Nack);
    assert_eq!(err.destination(), Some(q.as_str()));
    assert!(err.to_string().contains("nack delay of"), "{err}");
    // Nothing lost: the delivery is still unsettled and settles normally.
    assert_eq!(d.settlement(), None);
    d.nack(None).await.unwrap();
    let again = next(&mut consumer).await;
    assert_eq!(again.message().payload().as_ref(), b"kept");
    again.ack().await.unwrap();
}

#[tokio::test]
async fn a_refused_declare_is_not_recorded_and_exclusive_queues_leave_the_record_with_their_consumer(
) {
    let _shared = BROKER.read().await;
    let q = unique("recorded");
    let after = unique("after-refusal");
    let connection = connect(Config::new(url()).topology(Topology::new().queue(queue(&q)))).await;
    let err = connection
        .declare(
            &Topology::new()
                .queue(queue(&q).max_priority(3))
                .queue(queue(&after)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.destination(), Some(q.as_str()));
    let recorded = connection.topology();
    assert_eq!(recorded.queues(), &[queue(&q)], "{recorded:?}");

    // A subscriber's own queue: recorded while it has consumers, gone with the last.
    let own = unique("subscriber");
    let subscriber = Topology::new()
        .queue(
            Queue::classic(&own)
                .durable(false)
                .exclusive(true)
                .auto_delete(true),
        )
        .binding(Binding::queue(&own, "amq.topic", "#"));
    connection.declare(&subscriber).await.unwrap();
    let first = connection.consumer(&own).await.unwrap();
    let second = connection.consumer(&own).await.unwrap();
    assert_eq!(connection.topology().queues().len(), 2);
    assert_eq!(connection.topology().bindings().len(), 1);
    drop(first);
    assert_eq!(connection.topology().queues().len(), 2);
    drop(second);
    let recorded = connection.topology();
    assert_eq!(recorded.queues(), &[queue(&q)], "{recorded:?}");
    assert!(recorded.bindings().is_empty(), "{recorded:?}");
    // A durable queue stays recorded without consumers.
    drop(connection.consumer(&q).await.unwrap());
    assert_eq!(connection.topology().queues(), &[queue(&q)]);
}

#[tokio::test]
async fn a_declare_refused_at_reconnect_is_dropped_and_the_connection_comes_back() {
    let _exclusive = BROKER.write().await;
    let keep = unique("reconnect-keep");
    let taken = unique("reconnect-taken");
    let refused = unique("reconnect-refused");
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .heartbeat(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
            .topology(
                Topology::new()
                    // Not durable: only the re-declaration brings it back.
                    .queue(Queue::classic(&keep).durable(false))
                    .queue(queue(&taken)),
            ),
    )
    .await;
    // A declare the broker refuses now is not re-declared at the reconnect.
    connection
        .declare(&Topology::new().queue(queue(&taken).max_priority(3)))
        .await
        .unwrap_err();
    connection
        .declare(&Topology::new().queue(queue(&refused)))
        .await
        .unwrap();
    // Someone else re-creates `refused` with other arguments: the broker will refuse
    // this connection's declaration of it after the restart.
    let (_plain, channel) = plain_channel().await;
    channel
        .queue_delete(refused.as_str().into(), Default::default())
        .await
        .unwrap();
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(60_000));
    arguments.insert("x-max-priority".into(), lapin::types::AMQPValue::LongInt(5));
    channel
        .queue_declare(
            refused.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .unwrap();
    drop((channel, _plain));

    harness::run("restart", "rabbitmq").await;

    let mut publisher = connection.publisher();
    until_ok(
        "the connection to come back after the restart",
        Duration::from_secs(30),
        async || {
            let ready = publisher.ready().await.unwrap_or_else(|e| panic!("{e}"));
            ready.call(Message::new(&keep, "after")).await
        },
    )
    .await;
    assert!(connection.generation() >= 2);
    let recorded = connection.topology();
    let names: Vec<&str> = recorded.queues().iter().map(|q| q.name()).collect();
    assert_eq!(names, [keep.as_str(), taken.as_str()], "{recorded:?}");
    // The non-durable queue was declared again, and carries messages.
    let mut consumer = connection.consumer(&keep).await.unwrap();
    assert_eq!(
        next(&mut consumer).await.message().payload().as_ref(),
        b"after"
    );
}

#[tokio::test]
async fn a_malformed_amqp_url_is_a_permanent_connect_error_that_keeps_the_password_out() {
    for bad in [
        "amqp://guest:s3cret@127.0.0.1:not-a-port/%2f",
        "amqpx://guest:s3cret@127.0.0.1:15673/%2f",
    ] {
        let err = Connection::connect(&Config::new(bad)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent, "{bad}: {err}");
        assert_eq!(err.broker(), "rabbitmq");
        assert_eq!(err.operation(), Operation::Connect);
        let text = err.to_string();
        assert!(text.contains("invalid AMQP URI"), "{bad}: {text}");
        assert!(
            !text.contains("s3cret"),
            "{bad}: the password leaked: {text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Credentials: no password in what is printed.

#[tokio::test]
async fn the_password_never_appears_in_debug_or_connect_errors() {
    let closed = free_port();
    let config = Config::new(format!("amqp://orders:s3cret-pass@127.0.0.1:{closed}/%2f"));
    let shown = format!("{config:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{closed}")), "{shown}");
    assert_eq!(
        config.redacted_uri(),
        format!("amqp://orders:***@127.0.0.1:{closed}/%2f")
    );

    // Nothing listens: transient, naming the broker's address, not the password.
    let err = Connection::connect(&config)
        .await
        .expect_err("nothing listens on the port");
    assert_unreachable_and_masked(&err, closed, "s3cret");

    // URIs that do not parse (the parser quotes what it refused): permanent, masked.
    for invalid in [
        "amqp://orders:s3cret-pass@127.0.0.1:notaport/%2f",
        "http://orders:s3cret-pass@127.0.0.1/%2f",
        "amqp://orders:s3cret-pass@",
    ] {
        let err = Connection::connect(&Config::new(invalid))
            .await
            .expect_err("not an AMQP URI");
        let shown = everything_shown(&err);
        assert_eq!(err.kind(), ErrorKind::Permanent, "{invalid}: {shown}");
        assert!(!shown.contains("s3cret"), "{invalid}: {shown}");
    }
}

#[tokio::test]
async fn publishing_after_close_is_a_permanent_error_and_nothing_confirmed_is_lost() {
    let _shared = BROKER.read().await;
    let q = unique("closed");
    let config = queue_config(url(), &q);
    let connection = connect(config.clone()).await;
    let mut publisher = connection.publisher();
    publish(&mut publisher, Message::new(&q, "before close")).await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    // Not settled before the close: the broker must deliver it again.
    let held = next(&mut consumer).await;
    connection.close();

    let err = publisher.ready().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Publish);
    assert!(err.to_string().contains("closed"), "{err}");
    let err = connection.consumer(&q).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Subscribe);
    let err = connection
        .declare(&Topology::new().queue(queue(&unique("late"))))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    // The consumer ends instead of waiting for a connection that will not come back.
    let end = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("the consumer did not end within 10 s of the close");
    assert!(end.is_none(), "{end:?}");
    assert!(held.ack().await.is_err());

    let again = connect(config).await;
    let mut consumer = again.consumer(&q).await.unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.message().payload().as_ref(), b"before close");
    d.ack().await.unwrap();
}

#[tokio::test]
async fn a_binding_to_a_missing_exchange_is_not_found_naming_the_binding() {
    let _shared = BROKER.read().await;
    let q = unique("unbound");
    let missing = unique("no-such-exchange");
    let connection = connect(queue_config(url(), &q)).await;
    let err = connection
        .declare(&Topology::new().binding(Binding::queue(&q, &missing, "#")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Declare);
    let binding = format!("{missing} -> {q}");
    assert_eq!(err.destination(), Some(binding.as_str()));
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    assert!(connection.topology().bindings().is_empty());
    // The connection goes on.
    connection
        .publisher()
        .oneshot(Message::new(&q, "still here"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_queue_argument_of_the_wrong_type_is_refused_naming_the_argument() {
    let _shared = BROKER.read().await;
    let q = unique("bad-argument");
    let connection = connect(Config::new(url())).await;
    let err = connection
        .declare(&Topology::new().queue(queue(&q).argument("x-max-priority", "ten")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Declare);
    assert_eq!(err.destination(), Some(q.as_str()));
    assert!(err.to_string().contains("x-max-priority"), "{err}");
    assert!(connection.topology().queues().is_empty());
    // Nothing else lost: the same queue declares with a valid argument.
    connection
        .declare(&Topology::new().queue(queue(&q).max_priority(5)))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_exchange_with_the_reserved_amq_prefix_is_access_refused() {
    let _shared = BROKER.read().await;
    let reserved = format!("amq.{}", unique("mine"));
    let q = unique("after-403");
    let connection = connect(Config::new(url())).await;
    let err = connection
        .declare(&Topology::new().exchange(Exchange::direct(&reserved)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Declare);
    assert_eq!(err.destination(), Some(reserved.as_str()));
    assert!(err.to_string().contains("ACCESS_REFUSED"), "{err}");
    assert!(connection.topology().exchanges().is_empty());
    connection
        .declare(&Topology::new().queue(queue(&q)))
        .await
        .unwrap();
}

#[tokio::test]
async fn names_over_255_bytes_are_refused_before_anything_is_sent() {
    let _shared = BROKER.read().await;
    let exchange = unique("long-key");
    let q = unique("long-key-q");
    let connection = connect(
        Config::new(url()).topology(
            Topology::new()
                .exchange(Exchange::topic(&exchange).auto_delete(true))
                .queue(queue(&q))
                .binding(Binding::queue(&q, &exchange, "#")),
        ),
    )
    .await;
    let mut publisher = connection.publisher();
    let err = publisher
        .ready()
        .await
        .unwrap()
        .call(Message::new(&exchange, "x").with_key("k".repeat(256)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Publish);
    assert_eq!(err.destination(), Some(exchange.as_str()));
    assert!(
        err.to_string().contains("the routing key is 256 bytes"),
        "{err}"
    );

    let long_queue = "q".repeat(256);
    let err = connection.consumer(&long_queue).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.operation(), Operation::Subscribe);
    assert!(err.to_string().contains("short string"), "{err}");

    // Only the valid message arrives.
    publish(
        &mut publisher,
        Message::new(&exchange, "fine").with_key("ok"),
    )
    .await;
    let mut consumer = connection.consumer(&q).await.unwrap();
    assert_eq!(
        next(&mut consumer).await.message().payload().as_ref(),
        b"fine"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "a refused message was sent"
    );
}

#[tokio::test]
async fn a_wrong_password_is_permanent_and_masked() {
    let _shared = BROKER.read().await;
    // The project's broker must be there, or this test proves nothing.
    connect(Config::new(url())).await.close();
    let address = url();
    let host = address.rsplit('@').next().unwrap_or(&address).to_owned();
    let wrong = format!("amqp://guest:wr0ng-pass@{host}");
    let err = Connection::connect(&Config::new(wrong))
        .await
        .expect_err("a wrong password must be refused");
    let shown = everything_shown(&err);
    assert_eq!(err.kind(), ErrorKind::Permanent, "{shown}");
    assert_eq!(err.broker(), "rabbitmq");
    assert_eq!(err.operation(), Operation::Connect);
    assert!(!shown.contains("wr0ng"), "{shown}");
}

#[tokio::test]
async fn config_from_env_reads_the_url_variable_and_connects() {
    let _shared = BROKER.read().await;
    let expected = harness::required_env(Config::URL_ENV);
    let config = Config::from_env().unwrap();
    assert_eq!(config.uri(), expected);
    assert!(!format!("{config:?}").contains(":guest@"));
    connect(config).await.close();
}

// ---------------------------------------------------------------------------
// Retrying the first connect (`Config::connect_retry`).
//
// Starting a RabbitMQ of the test's own takes about 6 s, so the broker that "starts
// later" is the project's broker behind a TCP forwarder the test opens on a port the
// connect is already knocking on: to the client, nothing listens, then a broker does.

use tower_mq::ConnectRetry;

/// `host:port` of the project's broker.
fn broker_address() -> String {
    let url = url();
    let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = after_scheme.split('/').next().unwrap_or(after_scheme);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, address)| address)
        .to_owned()
}

/// The project's broker's user at `127.0.0.1:port`, where nothing listens until the
/// test forwards the port.
fn on_port(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// Forwards every connection to `port` to the project's broker, until aborted; a
/// message on `cut` closes the connections forwarded so far.
async fn forward(port: u16, cut: tokio::sync::watch::Receiver<()>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the port the connect waits on is still free");
    let upstream = broker_address();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            let mut cut = cut.clone();
            cut.mark_unchanged();
            tokio::spawn(async move {
                if let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => {}
                        _ = cut.changed() => {}
                    }
                }
            });
        }
    })
}

#[tokio::test]
async fn connect_retry_waits_for_a_broker_that_appears_later_then_publishes() {
    let _shared = BROKER.read().await;
    let port = free_port();
    let q = unique("late");
    let config = queue_config(on_port(port), &q)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect_retry(ConnectRetry::Within(Duration::from_secs(30)));
    let (_cut, cuts) = tokio::sync::watch::channel(());
    let (connection, forwarder) = connect_retry::connects_once_there(
        async move { Connection::connect(&config).await },
        forward(port, cuts),
        Duration::from_secs(15),
    )
    .await;
    let (_consumer, delivery) =
        publish_and_take(&connection, Message::new(&q, "after the wait")).await;
    assert_eq!(delivery.message().payload().as_ref(), b"after the wait");
    delivery.ack().await.unwrap();
    connection.close();
    forwarder.abort();
}

#[tokio::test]
async fn without_connect_retry_an_absent_broker_fails_at_once_and_with_it_within_the_limit() {
    let config = Config::new(on_port(free_port()))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100));
    connect_retry::assert_fails_at_once_unless_retried_within_a_limit(
        config,
        |config| async move { Connection::connect(&config).await },
        // It gives up once the next delay (at most 100 ms here) would pass the limit.
        Duration::from_millis(200),
    )
    .await;
}

#[tokio::test]
async fn connect_retry_does_not_retry_a_wrong_password() {
    let _shared = BROKER.read().await;
    let config = Config::new(format!("amqp://guest:wr0ng-pass@{}/%2f", broker_address()))
        .connect_retry(ConnectRetry::Forever);
    let err = connect_retry::assert_refusal_not_retried(
        Connection::connect(&config),
        Duration::from_secs(15),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(err.operation(), Operation::Connect);
    let shown = everything_shown(&err);
    assert!(!shown.contains("wr0ng"), "{shown}");
}

#[tokio::test]
async fn reconnects_through_the_jittered_loop_when_its_connection_is_cut() {
    let _shared = BROKER.read().await;
    let port = free_port();
    let (cut, cuts) = tokio::sync::watch::channel(());
    let forwarder = forward(port, cuts).await;
    let q = unique("cut");
    let connection = connect(
        queue_config(on_port(port), &q)
            .heartbeat(Duration::from_secs(1))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await;
    assert_eq!(connection.generation(), 1);
    let mut consumer = connection.consumer(&q).await.unwrap();
    cut.send_replace(());
    let mut publisher = connection.publisher();
    let receipt = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            // A publish racing the cut may fail (transient); readiness then waits for
            // the new connection.
            match publisher.ready().await {
                Ok(ready) => match ready.call(Message::new(&q, "after the cut")).await {
                    Ok(receipt) if connection.generation() > 1 => break receipt,
                    Ok(_) => {}
                    Err(err) => assert!(err.is_transient(), "{err}"),
                },
                Err(err) => panic!("the publisher gave up: {err}"),
            }
        }
    })
    .await
    .expect("no reconnect within 15 s");
    assert!(receipt.is_confirmed(), "{receipt:?}");
    assert!(connection.generation() >= 2);
    // The consumer subscribed again (through its own jittered loop) and settles on the
    // new connection.
    let delivery = next(&mut consumer).await;
    assert_eq!(delivery.message().payload().as_ref(), b"after the cut");
    delivery.ack().await.unwrap();
    connection.close();
    forwarder.abort();
}

#[tokio::test]
async fn closing_or_dropping_a_consumer_hands_back_its_prefetch_without_counting_it() {
    let _shared = BROKER.read().await;
    let classic = unique("release-classic");
    let quorum = unique("release-quorum");
    let topology = Topology::new()
        .queue(queue(&classic))
        .queue(Queue::quorum(&quorum).expires(Duration::from_secs(60)));
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .prefetch(10)
            .topology(topology),
    )
    .await;
    let publisher = connection.publisher();
    for (q, close) in [(&classic, true), (&quorum, false)] {
        for n in 0..5 {
            publisher
                .clone()
                .oneshot(Message::new(q, n.to_string()))
                .await
                .unwrap();
        }
        let mut consumer = connection.consumer(q).await.unwrap();
        let taken = next(&mut consumer).await;
        assert_eq!(taken.message().payload().as_ref(), b"0");
        taken.ack().await.unwrap();
        // The other four came with the first (prefetch 10) and were never yielded.
        if close {
            tokio::time::timeout(Duration::from_secs(10), consumer.close())
                .await
                .expect("close is bounded")
                .expect("close");
        } else {
            drop(consumer);
        }
        let started = tokio::time::Instant::now();
        let mut other = connection.consumer(q).await.unwrap();
        let mut payloads = Vec::new();
        for _ in 0..4 {
            let d = next(&mut other).await;
            // Handed back uncounted: no handler saw them.
            assert_eq!(d.delivery_count(), 1, "{q}: {:?}", d.message().payload());
            payloads.push(String::from_utf8(d.message().payload().to_vec()).unwrap());
            d.ack().await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        payloads.sort();
        assert_eq!(payloads, ["1", "2", "3", "4"], "{q}");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), other.next())
                .await
                .is_err(),
            "{q}: a message came twice"
        );
    }
}

/// `serve` drops its consumer when it returns, which hands the prefetch back from a
/// background task that a process exiting right after could cut short; `released`
/// waits for it: once it completes, the broker holds every delivery the consumer had
/// fetched and no handler saw, uncounted.
#[tokio::test]
async fn after_serve_released_waits_until_the_prefetch_is_back_in_the_queue() {
    let _shared = BROKER.read().await;
    let q = unique("serve-close");
    let connection = connect(
        Config::new(url())
            .routing(Routing::DefaultExchange)
            .prefetch(10)
            .topology(Topology::new().queue(queue(&q))),
    )
    .await;
    let publisher = connection.publisher();
    for n in 0..5 {
        publisher
            .clone()
            .oneshot(Message::new(&q, n.to_string()))
            .await
            .unwrap();
    }
    let consumer = connection.consumer(&q).await.unwrap();
    let released = consumer.released();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let stop = std::sync::Mutex::new(Some(stop));
    let handler = tower::service_fn(move |_: Delivery| {
        // The first delivery handled asks serve to stop; the other four stay fetched.
        if let Some(stop) = stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        async { Ok::<_, tower_mq::BoxError>(()) }
    });
    let summary = tower_mq::serve(consumer, handler)
        .concurrency(1)
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    assert_eq!(summary.acked, 1, "{summary:?}");
    tokio::time::timeout(Duration::from_secs(10), released)
        .await
        .expect("the hand-back is bounded");
    let (_plain, channel) = plain_channel().await;
    assert_eq!(
        message_count(&channel, &q).await,
        4,
        "handed back when released completed"
    );
    let mut other = connection.consumer(&q).await.unwrap();
    for _ in 0..4 {
        let d = next(&mut other).await;
        assert_eq!(d.delivery_count(), 1, "{:?}", d.message().payload());
        d.ack().await.unwrap();
    }
}
