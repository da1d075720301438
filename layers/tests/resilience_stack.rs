//! Retry, circuit breaker and timeout stacked as the module docs advise: each attempt
//! is timed, the breaker judges every attempt, and retry backs off over an open circuit.

use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_mq_core::{Error, Operation};
use tower_mq_layers::circuit_breaker::{error::CircuitOpen, CircuitBreakerLayer, CircuitState};
use tower_mq_layers::retry::{Backoff, RetryLayer};
use tower_mq_layers::timeout::TimeoutLayer;
use tower_test::mock;

#[tokio::test(start_paused = true)]
async fn timeouts_and_failures_open_the_breaker_and_retry_stops_on_the_open_circuit() {
    let (inner, mut handle) = mock::pair::<String, &'static str>();
    handle.allow(u64::MAX);
    let breaker = CircuitBreakerLayer::new()
        .count_window(2)
        .minimum_calls(2)
        .failure_rate_threshold(50.0)
        .wait_in_open(Duration::from_secs(60));
    let state = breaker.handle();
    let mut service = ServiceBuilder::new()
        .layer(
            RetryLayer::new(
                Backoff::constant(Duration::from_millis(100))
                    .without_jitter()
                    .max_attempts(3),
            )
            .without_budget(),
        )
        .layer(breaker)
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .service(inner);
    let started = tokio::time::Instant::now();
    let call = tokio::spawn(async move { service.ready().await?.call("order".to_owned()).await });

    // Attempt 1 gets no answer: the timeout fails it after 1 s.
    let (_, _unanswered) = handle.next_request().await.expect("first attempt");
    // Attempt 2, after the timeout and 100 ms of backoff, fails transiently.
    let (_, send) = handle.next_request().await.expect("second attempt");
    assert_eq!(started.elapsed(), Duration::from_millis(1100));
    send.send_error(Error::transient("memory", Operation::Publish));

    // Two failures in a window of two: the breaker is open, so attempt 3 is rejected
    // without reaching the publisher, and that is the last attempt.
    let err = call.await.expect("the call task").unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
    assert_eq!(state.state(), CircuitState::Open);
    // No third request ever reached the publisher (the stack is gone, the channel closed).
    assert!(handle.next_request().await.is_none());
}
