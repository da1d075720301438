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

pub mod batch;
mod call_time;
pub mod circuit_breaker;
pub mod classify;
pub mod codec;
pub mod compression;
pub mod dead_letter;
pub mod dedup;
pub mod message_like;
pub mod metrics;
pub mod rate_limit;
pub mod reconnect;
pub mod retry;
pub mod timeout;
pub mod trace;

#[cfg(test)]
mod recorded;

pub use tower_mq_core as core;

pub use batch::BatchLayer;
pub use circuit_breaker::CircuitBreakerLayer;
pub use codec::{DecodeLayer, EncodeLayer};
pub use compression::{CompressLayer, DecompressLayer};
pub use dead_letter::DeadLetterLayer;
pub use dedup::DedupLayer;
pub use metrics::MetricsLayer;
pub use rate_limit::RateLimitLayer;
pub use reconnect::ReconnectLayer;
pub use retry::RetryLayer;
pub use timeout::TimeoutLayer;
pub use trace::TraceLayer;

#[cfg(test)]
mod test_metrics;
