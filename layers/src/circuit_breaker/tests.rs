use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::Layer;
use tower_mq_core::{BoxError, Error, Operation, Permanent};
use tower_test::mock;

use super::error::CircuitOpen;
use super::*;
use crate::recorded;

type Breaker = CircuitBreaker<mock::Mock<&'static str, &'static str>>;
type Handle = mock::Handle<&'static str, &'static str>;

#[derive(Clone, Copy)]
enum Outcome {
    Ok,
    Transient,
    Permanent,
    Slow(Duration),
}

fn transient() -> BoxError {
    Error::transient("memory", Operation::Publish).into()
}

fn service(layer: &CircuitBreakerLayer) -> (mock::Spawn<Breaker>, Handle) {
    let (inner, mut handle) = mock::pair();
    handle.allow(u64::MAX);
    (mock::Spawn::new(layer.layer(inner)), handle)
}

/// One call through the breaker; `Err` if it failed or was rejected.
async fn call(
    svc: &mut mock::Spawn<Breaker>,
    handle: &mut Handle,
    outcome: Outcome,
) -> Result<&'static str, BoxError> {
    assert_ready_ok!(svc.poll_ready());
    let mut response = tokio_test::task::spawn(svc.call("m"));
    if let std::task::Poll::Ready(result) = response.poll() {
        return result;
    }
    let (_, send) = handle
        .next_request()
        .await
        .expect("request reaches the inner service");
    match outcome {
        Outcome::Ok => send.send_response("ok"),
        Outcome::Transient => send.send_error(transient()),
        Outcome::Permanent => send.send_error(Permanent::new("too large")),
        Outcome::Slow(d) => {
            tokio::time::advance(d).await;
            send.send_response("ok")
        }
    }
    response.await
}

fn small() -> CircuitBreakerLayer {
    CircuitBreakerLayer::new()
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_secs(10))
        .half_open_calls(2)
}

#[tokio::test(start_paused = true)]
async fn opens_at_the_failure_rate_once_minimum_calls_are_in() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let transitions = Arc::new(Mutex::new(Vec::new()));
    let seen = transitions.clone();
    let layer = small()
        .label("destination", "orders")
        .on_state_change(move |t| seen.lock().unwrap().push(t));
    let handle = layer.handle();
    let mut states = handle.subscribe();
    let (mut svc, mut mock) = service(&layer);
    assert_eq!(
        recorded::Recorded::take(&snapshotter)
            .gauge("messaging_circuit_state", &[("destination", "orders")]),
        Some(0.0)
    );

    // Two failures out of three: above 50%, but fewer than the minimum four calls.
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    assert_eq!(handle.state(), CircuitState::Closed);
    // The fourth call completes the minimum: 2 of 4 failed, 50%.
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    assert!(states.has_changed().unwrap());
    assert_eq!(*states.borrow_and_update(), CircuitState::Open);
    assert_eq!(
        recorded::Recorded::take(&snapshotter)
            .gauge("messaging_circuit_state", &[("destination", "orders")]),
        Some(1.0)
    );
    assert_eq!(
        *transitions.lock().unwrap(),
        vec![Transition {
            from: CircuitState::Closed,
            to: CircuitState::Open
        }]
    );

    // Rejected in `call` without reaching the inner service.
    tokio::time::advance(Duration::from_millis(2500)).await;
    let err = call(&mut svc, &mut mock, Outcome::Ok).await.unwrap_err();
    let open = err
        .downcast_ref::<CircuitOpen>()
        .expect("a CircuitOpen error");
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_millis(7500)));
    assert_eq!(
        err.to_string(),
        "circuit breaker is open: calls are rejected for another 7.5s"
    );
    assert!(mock.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn the_count_window_slides_over_the_last_n_calls() {
    let layer = small();
    let (mut svc, mut mock) = service(&layer);
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    for _ in 0..4 {
        call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    }
    // The early failure has slid out: 1 failure in the last 4 would have been 25%,
    // now it is 0; one more failure makes 25%, a second 50%.
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    assert_eq!(layer.handle().state(), CircuitState::Closed);
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    assert_eq!(layer.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_do_not_trip_the_breaker() {
    let layer = small();
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..8 {
        let err = call(&mut svc, &mut mock, Outcome::Permanent)
            .await
            .unwrap_err();
        assert!(err.is::<Permanent>());
    }
    assert_eq!(layer.handle().state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_the_trial_calls_then_closes() {
    let layer = small();
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..4 {
        let _ = call(&mut svc, &mut mock, Outcome::Transient).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;

    // Two trial calls in flight; a third caller is rejected meanwhile.
    let mut other = mock::Spawn::new(svc.get_ref().clone());
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    let mut first = tokio_test::task::spawn(svc.call("a"));
    assert_ready_ok!(other.poll_ready());
    let mut second = tokio_test::task::spawn(other.call("b"));
    let err = call(&mut svc, &mut mock, Outcome::Ok).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "circuit breaker is half-open: all 2 trial calls are in flight"
    );
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    for _ in 0..2 {
        let (_, send) = mock.next_request().await.unwrap();
        send.send_response("ok");
    }
    assert_ready_ok!(first.poll());
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    assert_ready_ok!(second.poll());
    assert_eq!(handle.state(), CircuitState::Closed);
    // Closed with an empty window: one failure does not reopen it.
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn failing_trial_calls_reopen_the_circuit() {
    let layer = small();
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..4 {
        let _ = call(&mut svc, &mut mock, Outcome::Transient).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    // 1 of 2 trials failed: 50% reopens for another full wait.
    assert_eq!(handle.state(), CircuitState::Open);
    let err = call(&mut svc, &mut mock, Outcome::Ok).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<CircuitOpen>().unwrap().retry_after(),
        Some(Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_trial_call_gives_its_permit_back() {
    let layer = small().half_open_calls(1);
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..4 {
        let _ = call(&mut svc, &mut mock, Outcome::Transient).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_ready_ok!(svc.poll_ready());
    let trial = svc.call("a");
    let _ = mock.next_request().await.unwrap();
    drop(trial);
    // The permit is back: the next call is a trial, and its success closes the circuit.
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn wait_mode_holds_readiness_until_the_wait_is_over() {
    let layer = small().wait_when_open();
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..4 {
        let _ = call(&mut svc, &mut mock, Outcome::Transient).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(9999)).await;
    assert!(!svc.is_woken());
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(handle.state(), CircuitState::HalfOpen);

    // With every trial permit taken, another clone waits until a trial completes.
    let mut second = mock::Spawn::new(svc.get_ref().clone());
    assert_ready_ok!(second.poll_ready());
    let mut third = mock::Spawn::new(svc.get_ref().clone());
    assert_pending!(third.poll_ready());
    let mut a = tokio_test::task::spawn(svc.call("a"));
    let mut b = tokio_test::task::spawn(second.call("b"));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    for _ in 0..2 {
        let (_, send) = mock.next_request().await.unwrap();
        send.send_response("ok");
    }
    assert_ready_ok!(a.poll());
    assert_ready_ok!(b.poll());
    assert!(third.is_woken());
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_ready_ok!(third.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_circuit() {
    let layer = small()
        .failure_rate_threshold(100.0)
        .slow_call_duration(Duration::from_secs(1))
        .slow_call_rate_threshold(75.0);
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    call(&mut svc, &mut mock, Outcome::Slow(Duration::from_secs(2)))
        .await
        .unwrap();
    call(
        &mut svc,
        &mut mock,
        Outcome::Slow(Duration::from_millis(999)),
    )
    .await
    .unwrap();
    call(&mut svc, &mut mock, Outcome::Slow(Duration::from_secs(1)))
        .await
        .unwrap();
    call(&mut svc, &mut mock, Outcome::Slow(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_failures_older_than_its_span() {
    let layer = CircuitBreakerLayer::new()
        .time_window(Duration::from_secs(3))
        .minimum_calls(3)
        .failure_rate_threshold(60.0);
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    tokio::time::advance(Duration::from_secs(3)).await;
    // The two failures are 3 s old: out of the window.
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    // Last 3 s: ok, fail, ok, fail -> 50%; one more failure -> 60%.
    assert_eq!(handle.state(), CircuitState::Closed);
    call(&mut svc, &mut mock, Outcome::Transient)
        .await
        .unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_handle_forces_open_disables_and_resets() {
    let layer = small();
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    handle.force_open();
    let err = call(&mut svc, &mut mock, Outcome::Ok).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "circuit breaker is forced open: calls are rejected until it is reset"
    );
    tokio::time::advance(Duration::from_secs(3600)).await;
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::ForcedOpen);

    handle.force_close();
    for _ in 0..8 {
        call(&mut svc, &mut mock, Outcome::Transient)
            .await
            .unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::Disabled);

    handle.reset();
    assert_eq!(handle.state(), CircuitState::Closed);
    for _ in 0..4 {
        let _ = call(&mut svc, &mut mock, Outcome::Transient).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn counts_calls_by_outcome_when_asked() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = small().count_calls(true).label("destination", "d");
    let (mut svc, mut mock) = service(&layer);
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    call(&mut svc, &mut mock, Outcome::Permanent)
        .await
        .unwrap_err();
    layer.handle().force_open();
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap_err();
    let count = calls_counted(&snapshotter);
    assert_eq!(
        (count("success"), count("permanent"), count("rejected")),
        (1, 1, 1)
    );
    assert_eq!(count("failure"), 0);
}

/// `messaging_circuit_calls_total` of destination `d`, by outcome, as recorded so far.
fn calls_counted(snapshotter: &Snapshotter) -> impl Fn(&str) -> u64 {
    let recorded = recorded::Recorded::take(snapshotter);
    move |outcome| {
        recorded.counter(
            "messaging_circuit_calls_total",
            &[("destination", "d"), ("outcome", outcome)],
        )
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_without_poll_ready_fails_and_is_not_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let layer = small().count_calls(true).label("destination", "d");
    let (mut svc, mut mock) = service(&layer);
    let err = svc.call("m").await.unwrap_err();
    crate::error::assert_called_before_ready(&err, "circuit_breaker");
    assert!(
        mock.poll_request().is_pending(),
        "the inner service was not called"
    );
    // The breaker works as usual afterwards, and counted only the call it made.
    call(&mut svc, &mut mock, Outcome::Ok).await.unwrap();
    let count = calls_counted(&snapshotter);
    assert_eq!(
        (count("success"), count("permanent"), count("rejected")),
        (1, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_circuit_but_not_readiness() {
    let layer = small().half_open_calls(1);
    let handle = layer.handle();
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..4 {
        let _ = call(&mut svc, &mut mock, Outcome::Transient).await;
    }
    let mut clone = mock::Spawn::new(svc.get_ref().clone());
    assert_eq!(clone.get_ref().state(), CircuitState::Open);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_ready_ok!(svc.poll_ready());
    // The clone does not inherit the trial permit `svc` holds.
    let mut copy = mock::Spawn::new(svc.get_ref().clone());
    let err = call(&mut copy, &mut mock, Outcome::Ok).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    // Dropping the service that holds the permit gives it back.
    drop(svc);
    call(&mut clone, &mut mock, Outcome::Ok).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_minimum_above_the_window_size_is_capped_at_the_window() {
    let layer = small().count_window(3).minimum_calls(100);
    let (mut svc, mut mock) = service(&layer);
    for _ in 0..3 {
        call(&mut svc, &mut mock, Outcome::Transient)
            .await
            .unwrap_err();
    }
    assert_eq!(layer.handle().state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn two_breakers_have_series_of_their_own() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let publisher = small().name("orders-publisher");
    let route = small().name("post-orders");
    let (mut svc, mut mock) = service(&publisher);
    let _route = service(&route);
    for _ in 0..4 {
        call(&mut svc, &mut mock, Outcome::Transient)
            .await
            .unwrap_err();
    }
    assert_eq!(publisher.handle().state(), CircuitState::Open);
    let recorded = recorded::Recorded::take(&snapshotter);
    let state = |name| recorded.gauge("messaging_circuit_state", &[("circuit", name)]);
    assert_eq!(state("orders-publisher"), Some(1.0));
    assert_eq!(
        state("post-orders"),
        Some(0.0),
        "the other circuit's own series"
    );
    // Unnamed breakers get a number each.
    let (a, b) = (CircuitBreakerLayer::new(), CircuitBreakerLayer::new());
    assert_ne!(format!("{a:?}"), format!("{b:?}"));
}
