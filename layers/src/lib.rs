//! Broker-agnostic reliability layers for tower services that publish and handle
//! messages.
//!
//! Every layer is generic over `tower::Service<Req>` and names no broker; broker
//! knowledge reaches them through small traits (the error classification of
//! [`tower_mq_core::Classify`], for one).

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

pub mod circuit_breaker;
pub mod classify;
pub mod rate_limit;
pub mod reconnect;
pub mod retry;
pub mod timeout;

#[cfg(test)]
mod recorded;

pub use circuit_breaker::CircuitBreakerLayer;
pub use rate_limit::RateLimitLayer;
pub use reconnect::ReconnectLayer;
pub use retry::RetryLayer;
pub use timeout::TimeoutLayer;

pub use tower_mq_core as core;
