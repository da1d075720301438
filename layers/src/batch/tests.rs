use std::time::Duration;
use tower_mq_core::{Guarantee, Position};

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::{Layer, ServiceExt};
use tower_mq_core::{BoxError, Error, ErrorKind, Message, Operation, Receipt};
use tower_test::mock;

use super::error::{BatchFailed, Closed, MissingResult};
use super::{Batch, BatchLayer, Weigh, BATCH_SIZE_METRIC};
use crate::classify::{Classifier, DefaultClassifier};
use crate::test_metrics::Recorded;

type Results = Vec<Result<Receipt, BoxError>>;
type Handle = mock::Handle<Vec<Message>, Results>;

fn receipt(seq: u64) -> Receipt {
    Receipt::new("memory", "t", Guarantee::Stored).with_position(Position::Sequence(seq))
}

fn ok_for(batch: &[Message]) -> Results {
    batch
        .iter()
        .map(|m| Ok(receipt(m.payload()[0] as u64)))
        .collect()
}

fn msg(n: u8) -> Message {
    Message::new("t", vec![n])
}

fn batch_service(layer: BatchLayer<Message>) -> (Batch<Message, Receipt>, Handle) {
    let (inner, mut handle) = mock::pair::<Vec<Message>, Results>();
    handle.allow(100);
    (layer.layer(inner), handle)
}

/// Lets the worker task run; the clock does not move.
async fn let_worker_run() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

fn send(
    svc: &Batch<Message, Receipt>,
    n: u8,
) -> tokio::task::JoinHandle<Result<Receipt, BoxError>> {
    tokio::spawn(svc.clone().oneshot(msg(n)))
}

#[tokio::test(start_paused = true)]
async fn flushes_at_max_items_and_answers_each_caller() {
    let (m, recorder) = Recorded::new();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let (svc, mut handle) = batch_service(BatchLayer::new(3, Duration::from_secs(60)));
    let start = Instant::now();
    let callers: Vec<_> = (1..=3).map(|n| send(&svc, n)).collect();
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(Instant::now(), start, "flushed by count, not by time");
    assert_eq!(
        batch.iter().map(|m| m.payload()[0]).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    reply.send_response(ok_for(&batch));
    for (n, caller) in (1..=3).zip(callers) {
        assert_eq!(caller.await.expect("join").expect("ok"), receipt(n));
    }
    assert_eq!(m.histogram(BATCH_SIZE_METRIC, &[]), [3.0]);
}

#[tokio::test(start_paused = true)]
async fn flushes_a_partial_batch_after_max_latency() {
    let (svc, mut handle) = batch_service(BatchLayer::new(10, Duration::from_millis(100)));
    let start = Instant::now();
    let caller = send(&svc, 1);
    let_worker_run().await;
    tokio::time::advance(Duration::from_millis(40)).await;
    let second = send(&svc, 2);
    // Waiting lets the paused clock run to the worker's deadline, and no further.
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(Instant::now() - start, Duration::from_millis(100));
    assert_eq!(batch.len(), 2);
    reply.send_response(ok_for(&batch));
    assert_eq!(caller.await.expect("join").expect("ok"), receipt(1));
    assert_eq!(second.await.expect("join").expect("ok"), receipt(2));

    // The next batch gets a deadline of its own.
    let t = Instant::now();
    let third = send(&svc, 3);
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(Instant::now() - t, Duration::from_millis(100));
    reply.send_response(ok_for(&batch));
    assert_eq!(third.await.expect("join").expect("ok"), receipt(3));
}

#[tokio::test(start_paused = true)]
async fn flushes_by_weight_before_a_request_would_overflow() {
    let layer = BatchLayer::new(100, Duration::from_secs(60)).max_bytes(10);
    let (svc, mut handle) = batch_service(layer);
    let heavy = |n: u8| Message::new("t", vec![n; 4]);
    assert_eq!(heavy(1).weight(), 4);
    assert_eq!(heavy(1).with_header("ab", "cd").weight(), 8);
    let callers: Vec<_> = (1..=3)
        .map(|n| tokio::spawn(svc.clone().oneshot(heavy(n))))
        .collect();
    // 4 + 4 fit; the third would make 12 > 10, so the first two go.
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(batch.len(), 2);
    reply.send_response(ok_for(&batch));
    drop(svc);
    let (batch, reply) = handle.next_request().await.expect("the rest");
    assert_eq!(batch.len(), 1);
    reply.send_response(ok_for(&batch));
    for caller in callers {
        caller.await.expect("join").expect("ok");
    }
}

#[tokio::test(start_paused = true)]
async fn per_item_failures_reach_only_their_caller() {
    let (svc, mut handle) = batch_service(BatchLayer::new(2, Duration::from_secs(1)));
    let a = send(&svc, 1);
    let b = send(&svc, 2);
    let (_, reply) = handle.next_request().await.expect("a batch");
    reply.send_response(vec![
        Ok(receipt(1)),
        Err(Error::permanent("test", Operation::Publish)
            .with_reason("too large")
            .into()),
    ]);
    assert_eq!(a.await.expect("join").expect("ok"), receipt(1));
    let err = b.await.expect("join").expect_err("item failed");
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Permanent
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_reaches_every_caller() {
    let (svc, mut handle) = batch_service(BatchLayer::new(2, Duration::from_secs(1)));
    let a = send(&svc, 1);
    let b = send(&svc, 2);
    let (_, reply) = handle.next_request().await.expect("a batch");
    reply.send_error(Error::transient("test", Operation::Publish).with_reason("connection lost"));
    for caller in [a, b] {
        let err = caller.await.expect("join").expect_err("batch failed");
        let failed = err.downcast_ref::<BatchFailed>().expect("BatchFailed");
        assert!(failed.to_string().contains("connection lost"));
        // Classified through the source chain, as the inner error.
        assert_eq!(
            DefaultClassifier::new().classify(&err),
            ErrorKind::Transient
        );
    }
    // The worker carries on.
    let c = send(&svc, 3);
    let d = send(&svc, 4);
    let (batch, reply) = handle.next_request().await.expect("next batch");
    reply.send_response(ok_for(&batch));
    c.await.expect("join").expect("ok");
    d.await.expect("join").expect("ok");
}

#[tokio::test(start_paused = true)]
async fn short_answers_fail_the_missing_requests() {
    let (svc, mut handle) = batch_service(BatchLayer::new(2, Duration::from_secs(1)));
    let a = send(&svc, 1);
    let b = send(&svc, 2);
    let (_, reply) = handle.next_request().await.expect("a batch");
    reply.send_response(vec![Ok(receipt(1))]);
    a.await.expect("join").expect("ok");
    let err = b.await.expect("join").expect_err("no result");
    assert_eq!(
        err.downcast_ref::<MissingResult>()
            .map(MissingResult::index),
        Some(1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_pending_readiness_until_the_flush() {
    let layer = BatchLayer::new(2, Duration::from_millis(10)).queue_capacity(2);
    let (svc, mut handle) = batch_service(layer);
    let mut svc = mock::Spawn::new(svc);
    assert_ready_ok!(svc.poll_ready());
    let a = tokio::spawn(svc.call(msg(1)));
    assert_ready_ok!(svc.poll_ready());
    let b = tokio::spawn(svc.call(msg(2)));
    // Both slots are taken until their batch is answered.
    assert_pending!(svc.poll_ready());
    let (batch, reply) = handle.next_request().await.expect("a batch");
    let_worker_run().await;
    assert_pending!(svc.poll_ready());
    reply.send_response(ok_for(&batch));
    a.await.expect("join").expect("ok");
    b.await.expect("join").expect("ok");
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn a_call_without_poll_ready_fails_and_queues_nothing() {
    let layer = BatchLayer::new(1, Duration::from_millis(10)).queue_capacity(1);
    let (svc, mut handle) = batch_service(layer);
    let mut svc = mock::Spawn::new(svc);
    let err = svc.call(msg(1)).await.unwrap_err();
    crate::error::assert_called_before_ready(&err, "batch");
    let_worker_run().await;
    assert!(handle.poll_request().is_pending(), "nothing was queued");
    // The only slot is still free: the batch works as usual.
    assert_ready_ok!(svc.poll_ready());
    let a = tokio::spawn(svc.call(msg(2)));
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(batch.len(), 1);
    reply.send_response(ok_for(&batch));
    assert_eq!(a.await.expect("join").expect("ok"), receipt(2));
}

#[tokio::test(start_paused = true)]
async fn clones_do_not_copy_readiness() {
    let layer = BatchLayer::new(5, Duration::from_millis(10)).queue_capacity(1);
    let (svc, mut handle) = batch_service(layer);
    let mut first = mock::Spawn::new(svc.clone());
    assert_ready_ok!(first.poll_ready());
    let mut second = mock::Spawn::new(first.get_ref().clone());
    // The only slot belongs to `first`; its clone must wait for one of its own.
    assert_pending!(second.poll_ready());
    let a = tokio::spawn(first.call(msg(1)));
    let (batch, reply) = handle.next_request().await.expect("a batch");
    reply.send_response(ok_for(&batch));
    a.await.expect("join").expect("ok");
    assert_ready_ok!(second.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_flushes_what_the_worker_holds() {
    let (svc, mut handle) = batch_service(BatchLayer::new(100, Duration::from_secs(3600)));
    let start = Instant::now();
    let callers: Vec<_> = (1..=3).map(|n| send(&svc, n)).collect();
    let_worker_run().await;
    drop(svc);
    let (batch, reply) = handle.next_request().await.expect("flushed on drop");
    assert!(Instant::now() - start < Duration::from_secs(3600));
    assert_eq!(batch.len(), 3);
    reply.send_response(ok_for(&batch));
    for caller in callers {
        caller.await.expect("join").expect("ok");
    }
}

#[tokio::test(start_paused = true)]
async fn shutdown_flushes_and_refuses_new_requests() {
    let (svc, mut handle) = batch_service(BatchLayer::new(100, Duration::from_secs(3600)));
    let callers: Vec<_> = (1..=2).map(|n| send(&svc, n)).collect();
    let_worker_run().await;
    let stopper = svc.clone();
    let shutdown = tokio::spawn(async move { stopper.shutdown().await });
    let (batch, reply) = handle.next_request().await.expect("flushed on shutdown");
    assert_eq!(batch.len(), 2);
    reply.send_response(ok_for(&batch));
    shutdown.await.expect("join");
    for caller in callers {
        caller.await.expect("join").expect("ok");
    }
    assert!(svc.is_closed());
    let mut svc = mock::Spawn::new(svc);
    let err = assert_ready_err!(svc.poll_ready());
    let closed = err.downcast_ref::<Closed>().expect("Closed");
    assert!(!closed.is_failure(), "a shutdown, not a failure: {err}");
}

#[tokio::test(start_paused = true)]
async fn a_dead_worker_fails_callers_instead_of_hanging() {
    let inner = tower::service_fn(|_: Vec<Message>| async {
        panic!("inner service bug");
        #[allow(unreachable_code)]
        Ok::<Results, BoxError>(Vec::new())
    });
    let svc = BatchLayer::new(1, Duration::from_millis(1)).layer(inner);
    for n in 1..=2 {
        let err = svc.clone().oneshot(msg(n)).await.expect_err("worker died");
        let closed = err.downcast_ref::<Closed>().expect("Closed");
        assert!(closed.is_failure());
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn callers_that_gave_up_are_left_out() {
    let (svc, mut handle) = batch_service(BatchLayer::new(10, Duration::from_millis(5)));
    let kept = send(&svc, 1);
    let abandoned = send(&svc, 2);
    let_worker_run().await;
    abandoned.abort();
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(
        batch.iter().map(|m| m.payload()[0]).collect::<Vec<_>>(),
        [1]
    );
    reply.send_response(ok_for(&batch));
    kept.await.expect("join").expect("ok");
}

#[tokio::test(start_paused = true)]
async fn an_inner_service_that_fails_readiness_stops_the_worker_with_its_cause() {
    let (inner, mut handle) = mock::pair::<Vec<Message>, Results>();
    let mut svc = mock::Spawn::new(BatchLayer::new(1, Duration::from_millis(1)).layer(inner));
    handle.send_error(
        tower_mq_core::Error::transient("test", Operation::Connect).with_reason("broker gone"),
    );
    assert_ready_ok!(svc.poll_ready());
    let first = svc.call(msg(1)).await.expect_err("batch failed");
    assert!(first.is::<BatchFailed>(), "{first}");
    let err = assert_ready_err!(svc.poll_ready());
    let closed = err.downcast_ref::<Closed>().expect("Closed");
    assert!(closed.is_failure());
    assert!(err.to_string().contains("broker gone"), "{err}");
    // The cause classifies through the chain.
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Transient
    );
}

#[tokio::test(start_paused = true)]
async fn absurd_limits_do_not_panic() {
    let (svc, mut handle) = batch_service(BatchLayer::new(usize::MAX, Duration::from_millis(1)));
    let caller = send(&svc, 1);
    let (batch, reply) = handle.next_request().await.expect("flushed by time");
    reply.send_response(ok_for(&batch));
    caller.await.expect("join").expect("ok");
    let (inner, _handle) = mock::pair::<Vec<Message>, Results>();
    let _ = BatchLayer::new(1, Duration::from_millis(1))
        .queue_capacity(usize::MAX)
        .layer(inner);

    let (svc, mut handle) = batch_service(BatchLayer::new(2, Duration::MAX));
    let callers: Vec<_> = (1..=2).map(|n| send(&svc, n)).collect();
    let (batch, reply) = handle.next_request().await.expect("flushed by count");
    reply.send_response(ok_for(&batch));
    for caller in callers {
        caller.await.expect("join").expect("ok");
    }
}

fn payloads(batch: &[Message]) -> Vec<u8> {
    batch.iter().map(|m| m.payload()[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn by_default_one_batch_is_in_flight_and_the_next_waits_for_its_answer() {
    let (svc, mut handle) = batch_service(BatchLayer::new(2, Duration::from_secs(60)));
    let callers: Vec<_> = (1..=4).map(|n| send(&svc, n)).collect();
    let (first, first_reply) = handle.next_request().await.expect("a batch");
    assert_eq!(payloads(&first), [1, 2]);
    let_worker_run().await;
    assert!(
        handle.poll_request().is_pending(),
        "the second batch waits until the first has answered"
    );
    first_reply.send_response(ok_for(&first));
    let (second, second_reply) = handle.next_request().await.expect("a batch");
    assert_eq!(payloads(&second), [3, 4]);
    second_reply.send_response(ok_for(&second));
    for (n, caller) in (1..=4).zip(callers) {
        assert_eq!(caller.await.expect("join").expect("ok"), receipt(n));
    }
}

#[tokio::test(start_paused = true)]
async fn several_batches_in_flight_are_handed_over_in_order_and_answer_as_each_resolves() {
    let layer = BatchLayer::new(2, Duration::from_secs(60)).max_in_flight(2);
    let (svc, mut handle) = batch_service(layer);
    let mut callers: Vec<_> = (1..=6).map(|n| Some(send(&svc, n))).collect();
    let (first, first_reply) = handle.next_request().await.expect("a batch");
    let (second, second_reply) = handle.next_request().await.expect("a batch");
    assert_eq!(
        (payloads(&first), payloads(&second)),
        (vec![1, 2], vec![3, 4])
    );
    let_worker_run().await;
    assert!(
        handle.poll_request().is_pending(),
        "a third batch waits for a free place"
    );
    // The second answers first: its callers do not wait for the first's.
    second_reply.send_response(ok_for(&second));
    for n in 3..=4 {
        let caller = callers[n - 1].take().expect("a caller");
        assert_eq!(caller.await.expect("join").expect("ok"), receipt(n as u64));
    }
    assert!(!callers[0].as_ref().expect("a caller").is_finished());
    let (third, third_reply) = handle.next_request().await.expect("a batch");
    assert_eq!(payloads(&third), [5, 6]);
    first_reply.send_response(ok_for(&first));
    third_reply.send_response(ok_for(&third));
    for n in [1, 2, 5, 6] {
        let caller = callers[n - 1].take().expect("a caller");
        assert_eq!(caller.await.expect("join").expect("ok"), receipt(n as u64));
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_queue_holds_the_batch_being_built_and_those_in_flight() {
    assert_eq!(
        BatchLayer::<Message>::new(10, Duration::ZERO)
            .limits()
            .queue_capacity,
        20
    );
    let layer = BatchLayer::<Message>::new(10, Duration::ZERO).max_in_flight(3);
    assert_eq!(layer.limits().queue_capacity, 40);
    assert_eq!(layer.clone().max_in_flight(0).limits().max_in_flight, 1);
    assert_eq!(layer.queue_capacity(5).limits().queue_capacity, 5);
}

#[tokio::test(start_paused = true)]
async fn an_inner_service_whose_readiness_waits_for_its_answers_makes_progress() {
    // Readiness that frees only when an earlier batch has answered: the worker must go
    // on driving the batches in flight while it waits for it.
    let inner = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(tower::service_fn(|batch: Vec<Message>| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok::<_, BoxError>(ok_for(&batch))
        }));
    let svc = BatchLayer::new(1, Duration::from_secs(60))
        .max_in_flight(4)
        .layer(inner);
    let callers: Vec<_> = (1..=5).map(|n| send(&svc, n)).collect();
    let start = Instant::now();
    for (n, caller) in (1..=5).zip(callers) {
        assert_eq!(caller.await.expect("join").expect("ok"), receipt(n));
    }
    assert_eq!(
        Instant::now() - start,
        Duration::from_millis(25),
        "one at a time"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_every_batch_in_flight_to_answer() {
    let layer = BatchLayer::new(1, Duration::from_secs(60)).max_in_flight(2);
    let (svc, mut handle) = batch_service(layer);
    let a = send(&svc, 1);
    let b = send(&svc, 2);
    let (first, first_reply) = handle.next_request().await.expect("a batch");
    let (second, second_reply) = handle.next_request().await.expect("a batch");
    let stopper = svc.clone();
    let shutdown = tokio::spawn(async move { stopper.shutdown().await });
    let_worker_run().await;
    assert!(!shutdown.is_finished(), "two batches are still out");
    first_reply.send_response(ok_for(&first));
    let_worker_run().await;
    assert!(!shutdown.is_finished(), "one batch is still out");
    second_reply.send_response(ok_for(&second));
    shutdown.await.expect("join");
    assert_eq!(a.await.expect("join").expect("ok"), receipt(1));
    assert_eq!(b.await.expect("join").expect("ok"), receipt(2));
}

#[tokio::test(start_paused = true)]
async fn a_batch_flushed_when_full_leaves_the_next_its_own_deadline() {
    let (svc, mut handle) = batch_service(BatchLayer::new(2, Duration::from_millis(100)));
    let start = Instant::now();
    let full: Vec<_> = (1..=2).map(|n| send(&svc, n)).collect();
    let (batch, reply) = handle.next_request().await.expect("the full batch");
    assert_eq!(
        Instant::now(),
        start,
        "flushed when full, not at its deadline"
    );
    reply.send_response(ok_for(&batch));
    for caller in full {
        caller.await.expect("join").expect("ok");
    }
    tokio::time::advance(Duration::from_millis(60)).await;
    let late = send(&svc, 3);
    let (batch, reply) = handle.next_request().await.expect("the partial batch");
    // The full batch's deadline (100 ms) passed with nothing to flush; this one's is
    // 100 ms after its own first request.
    assert_eq!(Instant::now() - start, Duration::from_millis(160));
    assert_eq!(payloads(&batch), [3]);
    reply.send_response(ok_for(&batch));
    assert_eq!(late.await.expect("join").expect("ok"), receipt(3));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_after_the_flush_leaves_the_others_their_answers() {
    let layer = BatchLayer::new(3, Duration::from_secs(60)).queue_capacity(3);
    let (svc, mut handle) = batch_service(layer);
    let first = send(&svc, 1);
    let quitter = send(&svc, 2);
    let third = send(&svc, 3);
    let (batch, reply) = handle.next_request().await.expect("a batch");
    assert_eq!(
        payloads(&batch),
        [1, 2, 3],
        "handed over before anyone gave up"
    );
    quitter.abort();
    let_worker_run().await;
    reply.send_response(ok_for(&batch));
    assert_eq!(first.await.expect("join").expect("ok"), receipt(1));
    assert_eq!(third.await.expect("join").expect("ok"), receipt(3));
    // Every slot is free again, the abandoned caller's included.
    let mut svc = mock::Spawn::new(svc);
    for n in 4..=6 {
        assert_ready_ok!(svc.poll_ready());
        drop(svc.call(msg(n)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_handle_dropped_while_ready_gives_its_slot_back() {
    let layer = BatchLayer::new(5, Duration::from_millis(10)).queue_capacity(1);
    let (svc, mut handle) = batch_service(layer);
    let mut ready = mock::Spawn::new(svc.clone());
    assert_ready_ok!(ready.poll_ready());
    let mut other = mock::Spawn::new(svc.clone());
    assert_pending!(other.poll_ready());
    drop(ready);
    assert!(other.is_woken());
    assert_ready_ok!(other.poll_ready());
    let a = tokio::spawn(other.call(msg(1)));
    let (batch, reply) = handle.next_request().await.expect("a batch");
    reply.send_response(ok_for(&batch));
    assert_eq!(a.await.expect("join").expect("ok"), receipt(1));
}

/// Callers on several threads, some of them giving up: every caller that waits gets the
/// answer to its own request, and every request reaches the inner service once at most.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_on_several_threads_get_their_own_answers() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    let handed_over = Arc::new(AtomicUsize::new(0));
    let counted = handed_over.clone();
    let inner = tower::service_fn(move |batch: Vec<Message>| {
        counted.fetch_add(batch.len(), Ordering::Relaxed);
        async move {
            tokio::task::yield_now().await;
            let results: Vec<Result<Receipt, BoxError>> = batch
                .iter()
                .map(|m| {
                    let id = u64::from_le_bytes(m.payload()[..8].try_into().expect("8 bytes"));
                    Ok(receipt(id))
                })
                .collect();
            Ok::<_, BoxError>(results)
        }
    });
    let svc = BatchLayer::new(16, Duration::from_millis(1))
        .max_in_flight(3)
        .layer(inner);
    let callers: Vec<_> = (0..4000u64)
        .map(|id| {
            let call = svc
                .clone()
                .oneshot(Message::new("t", id.to_le_bytes().to_vec()));
            tokio::spawn(async move {
                if id % 7 == 0 {
                    // Gives up at some point before, during or after its batch's flush:
                    // after polling its call a few times.
                    let mut call = std::pin::pin!(call);
                    for _ in 0..id % 5 {
                        if futures_util::poll!(call.as_mut()).is_ready() {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    None
                } else {
                    Some((id, call.await))
                }
            })
        })
        .collect();
    let mut answered = 0;
    for caller in callers {
        if let Some((id, result)) = caller.await.expect("join") {
            assert_eq!(result.expect("ok"), receipt(id));
            answered += 1;
        }
    }
    assert_eq!(answered, 4000 - 4000usize.div_ceil(7));
    svc.shutdown().await;
    let handed_over = handed_over.load(Ordering::Relaxed);
    assert!(
        (answered..=4000).contains(&handed_over),
        "{handed_over} requests handed over"
    );
}
