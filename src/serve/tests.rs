use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use futures_util::{stream, StreamExt};
use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;
use tower::{service_fn, ServiceExt};
use tower_mq_core::{Message, Operation, Permanent};

use super::*;
use crate::memory::Broker;

/// A delivery whose settlements reach a (trivial) broker, unlike an at-most-once one.
fn tracked(payload: &'static str) -> Delivery {
    struct Accepting;
    impl crate::Acknowledge for Accepting {
        fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
        fn nack(&self, _: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
        fn reject(&self, _: &str) -> BoxFuture<'static, Result<(), Error>> {
            Box::pin(async { Ok(()) })
        }
    }
    Delivery::new(Message::new("t", payload), crate::Acker::new(Accepting))
}

async fn publish(broker: &Broker, payload: &str) {
    broker
        .publisher()
        .oneshot(Message::new("t", payload.to_owned()))
        .await
        .unwrap();
}

/// Runs `serve` on a task of its own until the sender says stop (a graceful shutdown).
fn spawn_until_stopped<S, H, C, G>(
    serve: Serve<S, H, C, G>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<Summary, BoxError>>,
)
where
    Serve<S, H, C, BoxFuture<'static, ()>>: IntoFuture<IntoFuture = ServeFuture>,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let signal: BoxFuture<'static, ()> = Box::pin(async move {
        stopped.await.ok();
    });
    (
        stop,
        tokio::spawn(serve.with_graceful_shutdown(signal).into_future()),
    )
}

/// A handler that takes its first delivery and never finishes with it (nor with any
/// other), and a signal that completes once it took that delivery.
fn hangs_once_entered() -> (
    impl Service<Delivery, Response = (), Error = BoxError, Future: Send + 'static> + Send + 'static,
    impl Future<Output = ()> + Send + 'static,
) {
    let (entered_tx, entered) = oneshot::channel::<()>();
    let entered_tx = Mutex::new(Some(entered_tx));
    let handler = service_fn(move |_: Delivery| {
        if let Some(tx) = entered_tx.lock().unwrap().take() {
            tx.send(()).ok();
        }
        std::future::pending::<Result<(), BoxError>>()
    });
    (handler, async move {
        entered.await.ok();
    })
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_requeued_with_backoff_then_dead_lettered() {
    let broker = Broker::new();
    let consumer = broker.consumer("t", "g").unwrap();
    let mut dead = broker.consumer("t.dlq", "ops").unwrap();
    publish(&broker, "x").await;

    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let handler = service_fn(move |d: Delivery| {
        seen.lock()
            .unwrap()
            .push((Instant::now(), d.delivery_count()));
        async { Err::<(), BoxError>("database down".into()) }
    });
    let (stop, server) = spawn_until_stopped(serve(consumer, handler));

    let letter = dead.next().await.unwrap().unwrap();
    let headers = letter.message().headers();
    assert_eq!(
        headers.get_str(tower_mq_core::dead_letter::DELIVERIES),
        Some("5")
    );
    let reason = headers.get_str(tower_mq_core::dead_letter::REASON).unwrap();
    assert!(
        reason.contains("failed 5 times") && reason.contains("database down"),
        "{reason}"
    );

    stop.send(()).unwrap();
    let summary = server.await.unwrap().unwrap();
    assert_eq!(
        (summary.received, summary.nacked, summary.rejected),
        (5, 4, 1)
    );
    let calls = calls.lock().unwrap();
    let counts: Vec<u32> = calls.iter().map(|(_, c)| *c).collect();
    assert_eq!(counts, [1, 2, 3, 4, 5]);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let ms = Duration::from_millis;
    assert_eq!(gaps, [ms(100), ms(200), ms(400), ms(800)]);
}

#[tokio::test(start_paused = true)]
async fn permanent_failures_are_dead_lettered_at_once() {
    let broker = Broker::new();
    let consumer = broker.consumer("t", "g").unwrap();
    let mut dead = broker.consumer("t.dlq", "ops").unwrap();
    publish(&broker, "bad").await;
    let handler = service_fn(|_: Delivery| async {
        Err::<(), BoxError>(Permanent::new("no such customer").into())
    });
    let (stop, server) = spawn_until_stopped(serve(consumer, handler));
    let letter = dead.next().await.unwrap().unwrap();
    assert_eq!(
        letter
            .message()
            .headers()
            .get_str(tower_mq_core::dead_letter::DELIVERIES),
        Some("1")
    );
    stop.send(()).unwrap();
    let summary = server.await.unwrap().unwrap();
    assert_eq!(
        (summary.received, summary.rejected, summary.nacked),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn panics_in_call_and_in_the_future_are_failed_deliveries() {
    // Inside serve's own future, and in a task per call.
    for spawn in [false, true] {
        let deliveries: Vec<Delivery> = ["in call", "in future", "fine"]
            .into_iter()
            .map(tracked)
            .collect();
        let handler = service_fn(|d: Delivery| {
            if d.message().payload().as_ref() == b"in call" {
                panic!("boom in call");
            }
            async move {
                if d.message().payload().as_ref() == b"in future" {
                    panic!("boom in future");
                }
                Ok::<(), BoxError>(())
            }
        });
        let consumer = stream::iter(deliveries.clone().into_iter().map(Ok));
        let summary = serve(consumer, handler)
            .spawn_handlers(spawn)
            .max_deliveries(2)
            .await
            .unwrap();
        assert_eq!(summary.panicked, 2);
        assert_eq!((summary.acked, summary.nacked), (1, 2));
        let settlements: Vec<_> = deliveries.iter().map(Delivery::settlement).collect();
        assert_eq!(
            settlements,
            [
                Some(Settlement::Nacked),
                Some(Settlement::Nacked),
                Some(Settlement::Acked)
            ]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_is_not_ready_stops_consumption() {
    let (handler, mut handle) = tower_test::mock::pair::<Delivery, ()>();
    handle.allow(0);
    let polls = Arc::new(AtomicUsize::new(0));
    let counted = polls.clone();
    let mut items = stream::iter(
        (0..3).map(|i| Ok(Delivery::unacknowledged(Message::new("t", i.to_string())))),
    );
    let consumer = stream::poll_fn(move |cx| {
        counted.fetch_add(1, Ordering::SeqCst);
        items.poll_next_unpin(cx)
    });
    let server = tokio::spawn(serve(consumer, handler).into_future());

    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        polls.load(Ordering::SeqCst),
        0,
        "consumer polled while the handler was not ready"
    );

    handle.allow(1);
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.message().payload().as_ref(), b"0");
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    respond.send_response(());
    // One more than the deliveries: readiness comes before seeing the stream end.
    handle.allow(3);
    for _ in 0..2 {
        let (_, respond) = handle.next_request().await.unwrap();
        respond.send_response(());
    }
    let summary = server.await.unwrap().unwrap();
    assert_eq!((summary.received, summary.acked), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn at_most_concurrency_deliveries_are_in_flight() {
    let gate = Arc::new(Semaphore::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (gate, in_flight, most) = (gate.clone(), in_flight.clone(), most.clone());
        service_fn(move |_: Delivery| {
            let (gate, in_flight, most) = (gate.clone(), in_flight.clone(), most.clone());
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<(), BoxError>(())
            }
        })
    };
    let consumer = stream::iter(
        (0..6).map(|i| Ok(Delivery::unacknowledged(Message::new("t", i.to_string())))),
    );
    let server = tokio::spawn(serve(consumer, handler).concurrency(2).into_future());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(in_flight.load(Ordering::SeqCst), 2);
    gate.add_permits(6);
    let summary = server.await.unwrap().unwrap();
    assert_eq!(summary.acked, 6);
    assert_eq!(most.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_drains_in_flight_work_and_takes_no_more() {
    let broker = Broker::new();
    let consumer = broker.consumer("t", "g").unwrap();
    for i in 0..5 {
        publish(&broker, &i.to_string()).await;
    }
    let gate = Arc::new(Semaphore::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (gate, started) = (gate.clone(), started.clone());
        service_fn(move |_: Delivery| {
            let (gate, started) = (gate.clone(), started.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok::<(), BoxError>(())
            }
        })
    };
    let (stop, mut server) = spawn_until_stopped(serve(consumer, handler).concurrency(2));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(started.load(Ordering::SeqCst), 2);
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        futures_util::poll!(&mut server).is_pending(),
        "returned before draining"
    );
    gate.add_permits(2);
    let summary = server.await.unwrap().unwrap();
    assert_eq!((summary.received, summary.acked), (2, 2));
    // The three not taken are still there for the group.
    assert_eq!(broker.held(), 3);
    let mut other = broker.consumer("t", "g").unwrap();
    let next = other.next().await.unwrap().unwrap();
    assert_eq!(next.message().payload().as_ref(), b"2");
    assert_eq!(next.delivery_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn transient_consumer_errors_are_skipped_and_permanent_ones_stop() {
    let first = Delivery::unacknowledged(Message::new("t", "1"));
    let never = Delivery::unacknowledged(Message::new("t", "2"));
    let consumer = stream::iter(vec![
        Err(Error::transient("test", Operation::Receive)),
        Ok(first.clone()),
        Err(Error::permanent("test", Operation::Receive).with_reason("queue deleted")),
        Ok(never.clone()),
    ]);
    let handler = service_fn(|_: Delivery| async { Ok::<(), BoxError>(()) });
    let error = serve(consumer, handler).await.unwrap_err();
    let error = error.downcast::<Error>().unwrap();
    assert_eq!(error.reason(), Some("queue deleted"));
    assert_eq!(first.settlement(), Some(Settlement::Acked));
    assert_eq!(never.settlement(), None);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_the_handler_settled_stays_as_settled() {
    let delivery = tracked("x");
    let handler = service_fn(|d: Delivery| async move {
        d.reject("handled by dead-lettering").await?;
        Ok::<(), BoxError>(())
    });
    let summary = serve(stream::iter([Ok(delivery.clone())]), handler)
        .await
        .unwrap();
    assert_eq!((summary.acked, summary.rejected), (0, 1));
    assert_eq!(delivery.settlement(), Some(Settlement::Rejected));
}

#[tokio::test(start_paused = true)]
async fn a_custom_classifier_decides() {
    let delivery = tracked("x");
    let handler = service_fn(|_: Delivery| async { Err::<(), BoxError>("unknown".into()) });
    let summary = serve(stream::iter([Ok(delivery.clone())]), handler)
        .classifier(DefaultClassifier::new().unknown_as(ErrorKind::Permanent))
        .await
        .unwrap();
    assert_eq!(summary.rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_at_most_once_delivery_is_counted_dropped_not_nacked() {
    let delivery = Delivery::at_most_once(Message::new("t", "x"), "nats");
    let handler = service_fn(|_: Delivery| async { Err::<(), BoxError>("database down".into()) });
    let summary = serve(stream::iter([Ok(delivery.clone())]), handler)
        .await
        .unwrap();
    assert_eq!(
        (summary.nacked, summary.rejected, summary.dropped),
        (0, 0, 1)
    );
    assert_eq!(delivery.settlement(), Some(Settlement::Dropped));
}

#[tokio::test(start_paused = true)]
async fn a_hung_handler_call_times_out_as_a_transient_failure() {
    let hung = tracked("hangs");
    let fine = tracked("fine");
    let handler = service_fn(|d: Delivery| async move {
        if d.message().payload().as_ref() == b"hangs" {
            std::future::pending::<()>().await;
        }
        Ok::<(), BoxError>(())
    });
    let started = Instant::now();
    let summary = serve(stream::iter([Ok(hung.clone()), Ok(fine.clone())]), handler)
        .concurrency(1)
        .handler_timeout(Duration::from_secs(7))
        .await
        .unwrap();
    assert_eq!(Instant::now() - started, Duration::from_secs(7));
    assert_eq!(
        (summary.timed_out, summary.nacked, summary.acked),
        (1, 1, 1)
    );
    assert_eq!(hung.settlement(), Some(Settlement::Nacked));
    assert_eq!(
        fine.settlement(),
        Some(Settlement::Acked),
        "the slot was freed"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_deliveries_still_running_at_the_shutdown_timeout() {
    // Inside serve's own future, and in a task per call.
    for spawn in [false, true] {
        let hung = tracked("hangs");
        let (handler, entered) = hangs_once_entered();
        let consumer = stream::iter([Ok(hung.clone())]).chain(stream::pending());
        let started = Instant::now();
        let summary = serve(consumer, handler)
            .spawn_handlers(spawn)
            .handler_timeout(None)
            .shutdown_timeout(Duration::from_secs(3))
            .with_graceful_shutdown(entered)
            .await
            .unwrap();
        assert_eq!(Instant::now() - started, Duration::from_secs(3));
        assert_eq!((summary.released, summary.nacked), (1, 0));
        assert_eq!(hung.settlement(), Some(Settlement::Nacked), "handed back");
    }
}

#[test]
fn default_requeue_delay_doubles_up_to_ten_seconds() {
    let ms = Duration::from_millis;
    assert_eq!(default_requeue_delay(1), ms(100));
    assert_eq!(default_requeue_delay(2), ms(200));
    assert_eq!(default_requeue_delay(7), ms(6400));
    assert_eq!(default_requeue_delay(8), Duration::from_secs(10));
    assert_eq!(default_requeue_delay(u32::MAX), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn consumer_errors_in_a_row_pause_consumption_increasingly() {
    let start = Instant::now();
    let delivery = Delivery::unacknowledged(Message::new("t", "after errors"));
    let consumer = stream::iter(vec![
        Err(Error::transient("test", Operation::Receive)),
        Err(Error::transient("test", Operation::Receive)),
        Err(Error::transient("test", Operation::Receive)),
        Ok(delivery),
    ]);
    let handled_at = Arc::new(Mutex::new(None));
    let record = handled_at.clone();
    let handler = service_fn(move |_: Delivery| {
        *record.lock().unwrap() = Some(Instant::now());
        async { Ok::<(), BoxError>(()) }
    });
    let summary = serve(consumer, handler).await.unwrap();
    assert_eq!(summary.acked, 1);
    let waited = handled_at.lock().unwrap().unwrap() - start;
    assert_eq!(waited, Duration::from_millis(10 + 20 + 40));
    assert_eq!(consumer_error_pause(100), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn unreadable_messages_are_skipped_at_once_and_never_stop_serve() {
    use crate::Code;
    let after = Delivery::unacknowledged(Message::new("t", "fine"));
    // A flood of malformed messages, some marked permanent by their consumer.
    let mut items: Vec<Result<Delivery, Error>> = (0..1_000)
        .map(|i| {
            let error = if i % 2 == 0 {
                Error::transient("zeromq", Operation::Receive)
            } else {
                Error::permanent("zeromq", Operation::Receive)
            };
            Err(error
                .with_code(Code::Malformed)
                .with_reason("expected an envelope"))
        })
        .collect();
    items.push(Ok(after.clone()));
    let started = Instant::now();
    let handler = service_fn(|_: Delivery| async { Ok::<(), BoxError>(()) });
    let summary = serve(stream::iter(items), handler).await.unwrap();
    assert_eq!(Instant::now(), started, "no pause for unreadable messages");
    assert_eq!((summary.malformed, summary.acked), (1_000, 1));
    assert_eq!(after.settlement(), Some(Settlement::Acked));
}

/// `messaging_settlements_total` as recorded: (destination, settlement, count), sorted.
fn counted_settlements(
    snapshotter: &metrics_util::debugging::Snapshotter,
) -> Vec<(String, String, u64)> {
    use metrics_util::debugging::DebugValue;
    let mut counted: Vec<(String, String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == SETTLEMENTS_TOTAL)
        .map(|(key, _, _, value)| {
            let label = |name: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            let DebugValue::Counter(n) = value else {
                panic!("{SETTLEMENTS_TOTAL} is a counter");
            };
            (label("destination"), label("settlement"), n)
        })
        .collect();
    counted.sort();
    counted
}

#[tokio::test(start_paused = true)]
async fn settlements_are_counted_by_destination_and_settlement() {
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);

    let on = |destination: &str, payload: &'static str| {
        let message = Message::new(destination, payload);
        Delivery::new(message, tracked(payload).acker().clone())
    };
    let deliveries = vec![
        Ok(on("orders", "ok")),
        Ok(on("orders", "ok")),
        Ok(on("orders", "transient")),
        Ok(on("orders", "permanent")),
        Ok(on("invoices", "ok")),
        Ok(Delivery::unacknowledged(Message::new("ticks", "transient"))),
    ];
    let handler = service_fn(|d: Delivery| async move {
        match d.message().payload().as_ref() {
            b"ok" => Ok(()),
            b"permanent" => Err(BoxError::from(Permanent::new("refused"))),
            _ => Err(BoxError::from("try again")),
        }
    });
    let summary = serve(stream::iter(deliveries), handler).await.unwrap();
    assert_eq!(
        (
            summary.acked,
            summary.nacked,
            summary.rejected,
            summary.dropped
        ),
        (3, 1, 1, 1)
    );

    let counted = counted_settlements(&snapshotter);
    let expected = [
        ("invoices", "acked", 1),
        ("orders", "acked", 2),
        ("orders", "nacked", 1),
        ("orders", "rejected", 1),
        ("ticks", "dropped", 1),
    ]
    .map(|(d, s, n)| (d.to_owned(), s.to_owned(), n));
    assert_eq!(counted, expected);
}

#[tokio::test(start_paused = true)]
async fn deliveries_handed_back_at_the_shutdown_timeout_are_counted_released() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);

    let (handler, entered) = hangs_once_entered();
    let consumer = stream::iter([Ok(tracked("hangs"))]).chain(stream::pending());
    let summary = serve(consumer, handler)
        .handler_timeout(None)
        .shutdown_timeout(Duration::from_secs(3))
        .with_graceful_shutdown(entered)
        .await
        .unwrap();
    assert_eq!(summary.released, 1);
    assert_eq!(
        counted_settlements(&snapshotter),
        [("t".to_owned(), "released".to_owned(), 1)]
    );
}
