use std::time::Duration;

use metrics_util::debugging::DebuggingRecorder;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::Layer;
use tower_mq_core::{Error, ErrorKind, Operation, Permanent};
use tower_test::mock;

use super::error::{ConnectFailed, ConnectionLost};
use super::*;
use crate::classify::{Classifier, DefaultClassifier};
use crate::recorded::Recorded;

type Inner = mock::Mock<&'static str, &'static str>;
type InnerHandle = mock::Handle<&'static str, &'static str>;
type Maker = mock::Mock<&'static str, Inner>;
type MakerHandle = mock::Handle<&'static str, Inner>;

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
        .without_jitter()
        .unlimited_attempts()
}

fn reconnect(backoff: Backoff) -> (mock::Spawn<Reconnect<Maker, &'static str>>, MakerHandle) {
    let (maker, mut handle) = mock::pair();
    handle.allow(u64::MAX);
    let layer = ReconnectLayer::new("broker:1", backoff).label("broker", "test");
    (mock::Spawn::new(layer.layer(maker)), handle)
}

/// Answers the next connect request with a fresh inner service.
async fn accept(maker: &mut MakerHandle) -> InnerHandle {
    let (target, send) = maker.next_request().await.expect("a connect attempt");
    assert_eq!(target, "broker:1");
    let (inner, mut handle) = mock::pair();
    handle.allow(u64::MAX);
    send.send_response(inner);
    handle
}

/// The first connection: `svc` waits for it, then forwards a call through it.
async fn connects_and_forwards(
    svc: &mut mock::Spawn<Reconnect<Maker, &'static str>>,
    maker: &mut MakerHandle,
) {
    assert_pending!(svc.poll_ready());
    let mut inner = accept(maker).await;
    assert_ready_ok!(svc.poll_ready());
    let mut response = tokio_test::task::spawn(svc.call("m"));
    let (request, send) = inner.next_request().await.unwrap();
    assert_eq!(request, "m");
    send.send_response("ok");
    assert_eq!(assert_ready_ok!(response.poll()), "ok");
}

#[tokio::test(start_paused = true)]
async fn connects_on_first_use_and_forwards_calls() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (mut svc, mut maker) = reconnect(backoff());
    connects_and_forwards(&mut svc, &mut maker).await;
    let recorded = Recorded::take(&snapshotter);
    let count = |outcome| {
        recorded.counter(
            "messaging_reconnects_total",
            &[("broker", "test"), ("outcome", outcome)],
        )
    };
    assert_eq!((count("success"), count("failure")), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_call_without_poll_ready_fails_before_the_first_connection() {
    let (mut svc, mut maker) = reconnect(backoff());
    let err = svc.call("m").await.unwrap_err();
    crate::error::assert_called_before_ready(&err, "reconnect");
    assert!(maker.poll_request().is_pending(), "no connect attempt yet");
    // The service connects and works as usual afterwards.
    connects_and_forwards(&mut svc, &mut maker).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_connect_is_retried_after_the_backoff() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let (mut svc, mut maker) = reconnect(backoff());
    assert_pending!(svc.poll_ready());
    let (_, send) = maker.next_request().await.unwrap();
    send.send_error(Error::transient("test", Operation::Connect));
    assert_pending!(svc.poll_ready());
    let (_, send) = {
        // Second failure: the wait doubles.
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_pending!(svc.poll_ready());
        assert!(maker.poll_request().is_pending());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_pending!(svc.poll_ready());
        maker.next_request().await.unwrap()
    };
    send.send_error(Error::transient("test", Operation::Connect));
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(199)).await;
    assert_pending!(svc.poll_ready());
    assert!(maker.poll_request().is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_pending!(svc.poll_ready());
    let _inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
    let recorded = Recorded::take(&snapshotter);
    assert_eq!(
        recorded.counter("messaging_reconnects_total", &[("outcome", "failure")]),
        2
    );
    assert_eq!(
        recorded.counter("messaging_reconnects_total", &[("outcome", "success")]),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_that_loses_the_connection_fails_transiently_and_triggers_a_rebuild() {
    let (mut svc, mut maker) = reconnect(backoff());
    assert_pending!(svc.poll_ready());
    let mut inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
    let mut response = tokio_test::task::spawn(svc.call("m"));
    let (_, send) = inner.next_request().await.unwrap();
    send.send_error(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    let err = assert_ready_err!(response.poll());
    assert!(err.is::<ConnectionLost>());
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Transient
    );
    assert!(err
        .to_string()
        .starts_with("connection lost during the call: "));

    // The next poll_ready rebuilds the connection.
    assert_pending!(svc.poll_ready());
    let mut inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
    let _response = svc.call("again");
    assert_eq!(inner.next_request().await.unwrap().0, "again");
}

#[tokio::test(start_paused = true)]
async fn other_call_errors_keep_the_connection() {
    let (mut svc, mut maker) = reconnect(backoff());
    assert_pending!(svc.poll_ready());
    let mut inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
    let mut response = tokio_test::task::spawn(svc.call("m"));
    let (_, send) = inner.next_request().await.unwrap();
    send.send_error(Permanent::new("message too large"));
    let err = assert_ready_err!(response.poll());
    assert!(err.is::<Permanent>());
    assert_ready_ok!(svc.poll_ready());
    assert!(maker.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn an_inner_readiness_failure_triggers_a_rebuild() {
    let (mut svc, mut maker) = reconnect(backoff());
    assert_pending!(svc.poll_ready());
    let mut inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
    drop(svc.call("m"));
    inner.send_error(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert_pending!(svc.poll_ready());
    let _inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
    assert!(svc.get_ref().is_connected());
}

#[tokio::test(start_paused = true)]
async fn reports_connect_failed_after_max_attempts_then_starts_over() {
    let (mut svc, mut maker) = reconnect(backoff().max_attempts(2));
    assert_pending!(svc.poll_ready());
    let (_, send) = maker.next_request().await.unwrap();
    send.send_error(Error::transient("test", Operation::Connect));
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_pending!(svc.poll_ready());
    let (_, send) = maker.next_request().await.unwrap();
    send.send_error(Error::transient("test", Operation::Connect));
    let err = assert_ready_err!(svc.poll_ready());
    let failed = err.downcast_ref::<ConnectFailed>().unwrap();
    assert_eq!(failed.attempts(), 2);
    assert!(err
        .to_string()
        .starts_with("could not connect after 2 attempts: "));
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Transient
    );
    // The service is still usable: the next poll_ready waits and tries again.
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_pending!(svc.poll_ready());
    let _inner = accept(&mut maker).await;
    assert_ready_ok!(svc.poll_ready());
}

#[test]
fn the_default_predicate_recognises_connection_failures() {
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert!(connection_lost(&io));
    let connect = Error::transient("nats", Operation::Connect);
    assert!(connection_lost(&connect));
    let publish = Error::transient("nats", Operation::Publish)
        .with_source(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert!(connection_lost(&publish));
    let timeout = Error::transient("nats", Operation::Publish);
    assert!(!connection_lost(&timeout));
}
