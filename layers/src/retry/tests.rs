use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::Layer;
use tower_mq_core::{BoxError, Error, Operation, Permanent};
use tower_test::mock;

use super::*;
use crate::recorded;

type Mock = mock::Mock<String, String>;
type Handle = mock::Handle<String, String>;

fn transient() -> BoxError {
    Error::transient("memory", Operation::Publish).into()
}

/// A layer with a jitter source fixed at one half of the ceiling.
fn layer(backoff: Backoff) -> RetryLayer<DefaultClassifier, ByClone, impl Jitter + Clone> {
    RetryLayer::new(backoff).jitter(|| 0.5)
}

fn new_service<L: Layer<Mock>>(layer: L) -> (L::Service, Handle) {
    let (service, handle) = mock::pair();
    (layer.layer(service), handle)
}

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
}

#[tokio::test(start_paused = true)]
async fn retries_a_transient_failure_after_the_jittered_delay() {
    let (service, mut handle) = new_service(layer(backoff().max_attempts(3)));
    let mut service = mock::Spawn::new(service);
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let mut response = tokio_test::task::spawn(service.call("hello".to_owned()));
    assert_pending!(response.poll());

    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "hello");
    send.send_error(transient());
    assert_pending!(response.poll());

    // First retry: ceiling 100 ms, jitter 0.5 -> 50 ms.
    tokio::time::advance(Duration::from_millis(49)).await;
    assert_pending!(response.poll());
    assert!(handle.poll_request().is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(response.poll());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "hello");
    send.send_error(transient());

    // Second retry: ceiling 200 ms -> 100 ms.
    assert_pending!(response.poll());
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_pending!(response.poll());
    assert!(handle.poll_request().is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(response.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response("done".to_owned());
    assert_eq!(assert_ready_ok!(response.poll()), "done");
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_and_counts_retries() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let (service, mut handle) =
        new_service(layer(backoff().max_attempts(3)).label("destination", "orders"));
    let mut service = mock::Spawn::new(service);
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let mut response = tokio_test::task::spawn(service.call("m".to_owned()));
    for _ in 0..2 {
        assert_pending!(response.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(transient());
        assert_pending!(response.poll());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_pending!(response.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(transient());
    let err = assert_ready_err!(response.poll());
    assert!(err.is::<Error>());
    assert!(handle.poll_request().is_pending());
    assert_eq!(
        recorded::Recorded::take(&snapshotter)
            .counter("messaging_retries_total", &[("destination", "orders")]),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_go_back_at_once() {
    let (service, mut handle) = new_service(layer(backoff()));
    let mut service = mock::Spawn::new(service);
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let mut response = tokio_test::task::spawn(service.call("bad".to_owned()));
    assert_pending!(response.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(Permanent::new("cannot decode"));
    let err = assert_ready_err!(response.poll());
    assert!(err.is::<Permanent>());
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_cloned_is_not_retried() {
    let only_short = |r: &String| (r.len() < 4).then(|| r.clone());
    let (service, mut handle) = new_service(layer(backoff()).clone_requests_with(only_short));
    let mut service = mock::Spawn::new(service);
    handle.allow(10);

    assert_ready_ok!(service.poll_ready());
    let mut long = tokio_test::task::spawn(service.call("too long".to_owned()));
    assert_pending!(long.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(transient());
    assert_ready_err!(long.poll());

    assert_ready_ok!(service.poll_ready());
    let mut short = tokio_test::task::spawn(service.call("ok".to_owned()));
    assert_pending!(short.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(transient());
    assert_pending!(short.poll());
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_pending!(short.poll());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "ok");
    send.send_response("sent".to_owned());
    assert_eq!(assert_ready_ok!(short.poll()), "sent");
}

#[tokio::test(start_paused = true)]
async fn stops_when_the_next_attempt_would_exceed_max_elapsed() {
    let (service, mut handle) = new_service(
        RetryLayer::new(
            backoff()
                .unlimited_attempts()
                .without_jitter()
                .max_elapsed(Duration::from_millis(350)),
        )
        .without_budget(),
    );
    let mut service = mock::Spawn::new(service);
    handle.allow(10);
    assert_ready_ok!(service.poll_ready());
    let mut response = tokio_test::task::spawn(service.call("m".to_owned()));
    // Attempts at 0, 100 ms and 300 ms; the next would start at 700 ms > 350 ms.
    for wait in [100, 200] {
        assert_pending!(response.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_error(transient());
        assert_pending!(response.poll());
        tokio::time::advance(Duration::from_millis(wait)).await;
    }
    assert_pending!(response.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(transient());
    assert_ready_err!(response.poll());
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_stops_retries_against_a_dead_service() {
    let budget = RetryBudget::new(2, 0.5);
    let (service, mut handle) =
        new_service(layer(backoff().unlimited_attempts()).budget(budget.clone()));
    let mut service = mock::Spawn::new(service);
    handle.allow(100);
    assert_ready_ok!(service.poll_ready());
    let mut response = tokio_test::task::spawn(service.call("m".to_owned()));
    let sent = Arc::new(AtomicUsize::new(0));
    // The first attempt plus two budgeted retries, then the error surfaces.
    loop {
        match response.poll() {
            std::task::Poll::Ready(result) => {
                assert!(result.is_err());
                break;
            }
            std::task::Poll::Pending => {}
        }
        if let std::task::Poll::Ready(Some((_, send))) = handle.poll_request() {
            sent.fetch_add(1, Ordering::SeqCst);
            send.send_error(transient());
            continue;
        }
        tokio::time::advance(Duration::from_secs(10)).await;
    }
    assert_eq!(sent.load(Ordering::SeqCst), 3);
    assert_eq!(budget.balance(), 0.0);

    // A success earns half a retry back; a second one makes a whole retry.
    for _ in 0..2 {
        assert_ready_ok!(service.poll_ready());
        let mut ok = tokio_test::task::spawn(service.call("m".to_owned()));
        assert_pending!(ok.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response("ok".to_owned());
        assert_ready_ok!(ok.poll());
    }
    assert_eq!(budget.balance(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn waits_for_readiness_before_each_retry() {
    let (service, mut handle) = new_service(layer(backoff()));
    let mut service = mock::Spawn::new(service);
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let mut response = tokio_test::task::spawn(service.call("m".to_owned()));
    assert_pending!(response.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error(transient());
    assert_pending!(response.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    // The backoff is over but the inner service is not ready: no request goes out.
    assert_pending!(response.poll());
    assert!(handle.poll_request().is_pending());
    handle.allow(1);
    assert!(response.is_woken());
    assert_pending!(response.poll());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response("ok".to_owned());
    assert_ready_ok!(response.poll());
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_budget() {
    let (service, _handle) = new_service(RetryLayer::new(backoff()));
    let clone = service.clone();
    let a = service.budget().unwrap();
    let b = clone.budget().unwrap();
    assert!(a.withdraw());
    assert_eq!(a.balance(), b.balance());
}
