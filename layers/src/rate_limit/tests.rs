use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::Layer;
use tower_mq_core::ErrorKind;
use tower_test::mock;

use super::error::RateLimited;
use super::*;
use crate::classify::{Classifier, DefaultClassifier};

type Mock = mock::Mock<&'static str, &'static str>;
type Handle = mock::Handle<&'static str, &'static str>;

fn pair() -> (Mock, Handle) {
    let (service, mut handle) = mock::pair();
    handle.allow(u64::MAX);
    (service, handle)
}

#[tokio::test(start_paused = true)]
async fn wait_mode_holds_readiness_until_the_next_cell() {
    let (inner, mut handle) = pair();
    let mut svc = mock::Spawn::new(RateLimitLayer::per_second(2).layer(inner));
    for _ in 0..2 {
        assert_ready_ok!(svc.poll_ready());
        drop(svc.call("m"));
    }
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(499)).await;
    assert!(!svc.is_woken());
    assert_pending!(svc.poll_ready());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    drop(svc.call("m"));
    for _ in 0..3 {
        assert!(handle.next_request().await.is_some());
    }
}

#[tokio::test(start_paused = true)]
async fn reject_mode_fails_the_call_with_the_wait() {
    let (inner, mut handle) = pair();
    let mut svc = mock::Spawn::new(
        RateLimitLayer::per_second(10)
            .burst(1)
            .reject()
            .layer(inner),
    );
    assert_ready_ok!(svc.poll_ready());
    drop(svc.call("a"));
    tokio::time::advance(Duration::from_millis(40)).await;
    assert_ready_ok!(svc.poll_ready());
    let mut rejected = tokio_test::task::spawn(svc.call("b"));
    let err = assert_ready_err!(rejected.poll());
    let limited = err.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_millis(60));
    assert_eq!(
        err.to_string(),
        "rate limit exceeded: the next call is allowed in 60ms"
    );
    assert_eq!(
        DefaultClassifier::new().classify(&err),
        ErrorKind::Transient
    );
    assert_eq!(handle.next_request().await.unwrap().0, "a");
    assert!(handle.poll_request().is_pending());
    tokio::time::advance(Duration::from_millis(60)).await;
    assert_ready_ok!(svc.poll_ready());
    drop(svc.call("c"));
    assert_eq!(handle.next_request().await.unwrap().0, "c");
}

#[tokio::test(start_paused = true)]
async fn a_call_without_poll_ready_fails_and_takes_no_cell() {
    let (inner, mut handle) = pair();
    let mut svc = mock::Spawn::new(RateLimitLayer::per_second(1).burst(1).layer(inner));
    let err = svc.call("a").await.unwrap_err();
    crate::error::assert_called_before_ready(&err, "rate_limit");
    assert!(
        handle.poll_request().is_pending(),
        "the inner service was not called"
    );
    // The only cell is still there: the service works as usual.
    assert_ready_ok!(svc.poll_ready());
    let response = svc.call("b");
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "b");
    send.send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_limit_but_not_the_reserved_cell() {
    let (inner, _handle) = pair();
    let mut svc = mock::Spawn::new(RateLimitLayer::per_second(1).layer(inner));
    assert_ready_ok!(svc.poll_ready());
    let mut clone = mock::Spawn::new(svc.get_ref().clone());
    assert_pending!(clone.poll_ready());
    drop(svc.call("m"));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(clone.is_woken());
    assert_ready_ok!(clone.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn keyed_reject_limits_each_key_separately() {
    let (inner, mut handle) = pair();
    let layer = RateLimitLayer::per_second(1)
        .reject()
        .per_key(|r: &&'static str| *r);
    let mut svc = mock::Spawn::new(layer.layer(inner));
    for key in ["a", "b"] {
        assert_ready_ok!(svc.poll_ready());
        let mut ok = tokio_test::task::spawn(svc.call(key));
        assert_pending!(ok.poll());
    }
    assert_ready_ok!(svc.poll_ready());
    let mut over = tokio_test::task::spawn(svc.call("a"));
    let err = assert_ready_err!(over.poll());
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Duration::from_secs(1)
    );
    assert_eq!(layer.keys(), 2);
    assert_eq!(handle.next_request().await.unwrap().0, "a");
    assert_eq!(handle.next_request().await.unwrap().0, "b");
    assert!(handle.poll_request().is_pending());
}

#[tokio::test(start_paused = true)]
async fn keyed_wait_delays_only_the_call_over_its_key_limit() {
    let (inner, mut handle) = pair();
    let layer = RateLimitLayer::per_second(2).per_key(|r: &&'static str| *r);
    let mut svc = mock::Spawn::new(layer.layer(inner));
    let mut calls = Vec::new();
    for key in ["a", "a", "a", "b"] {
        assert_ready_ok!(svc.poll_ready());
        let mut call = tokio_test::task::spawn(svc.call(key));
        assert_pending!(call.poll());
        calls.push(call);
    }
    // "a", "a" and "b" went through at once; the third "a" waits 500 ms.
    for expected in ["a", "a", "b"] {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request, expected);
        send.send_response("ok");
    }
    assert!(handle.poll_request().is_pending());
    tokio::time::advance(Duration::from_millis(499)).await;
    assert_pending!(calls[2].poll());
    assert!(handle.poll_request().is_pending());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(calls[2].is_woken());
    assert_pending!(calls[2].poll());
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request, "a");
    send.send_response("late");
    assert_eq!(assert_ready_ok!(calls[2].poll()), "late");
    assert_eq!(assert_ready_ok!(calls[0].poll()), "ok");
}

#[tokio::test(start_paused = true)]
async fn recovered_keys_are_forgotten_as_calls_go_on() {
    let layer = RateLimitLayer::per_second(1).reject().per_key(|r: &u32| *r);
    let (inner, mut handle) = mock::pair::<u32, ()>();
    handle.allow(u64::MAX);
    let mut service = layer.layer(inner);
    let mut call = |key: u32| {
        let ready = std::future::poll_fn(|cx| service.poll_ready(cx));
        assert!(tokio_test::task::spawn(ready).poll().is_ready());
        drop(service.call(key));
    };
    // Keys that come and go, each used once.
    for key in 0..5_000 {
        call(key);
    }
    let grown = layer.keys();
    assert!(grown >= 4_000, "{grown}");
    // Once their limits have recovered, further calls prune them.
    tokio::time::advance(Duration::from_secs(2)).await;
    for key in 5_000..10_000 {
        call(key);
    }
    // Without pruning 10,000; the first 5,000 have recovered and are gone.
    assert!(
        layer.keys() <= 5_000,
        "recovered keys were kept: {} keys",
        layer.keys()
    );
}
