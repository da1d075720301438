//! Broker-agnostic reliability layers for tower services that publish and handle
//! messages.
//!
//! Every layer is generic over `tower::Service<Req>` and names no broker; broker
//! knowledge reaches them through small traits (the error classification of
//! [`tower_mq_core::Classify`], for one). The layers need only the `Service` and
//! `Layer` traits (the `tower-service` and `tower-layer` crates), so they stack in
//! `tower::ServiceBuilder`, axum and tonic without pulling in tower itself.
//!
//! # Features
//!
//! Like tower-http, nothing heavy is on by default:
//!
//! | feature | what it adds |
//! |---|---|
//! | `prometheus` | the Prometheus exporter (`metrics::install_prometheus`, `metrics::PrometheusHandle`) |
//! | `trace` | the trace layer (OpenTelemetry, W3C trace context in headers) |
//! | `codec` | the serde codec layers, JSON through serde_json |
//! | `gzip`, `zstd`, `lz4` | a compression codec each; the compression layers exist when one is on |
//! | `http` | ready-made HTTP parts: `classify::http_response` (a 5xx, 429 or 408 is a transient failure for the breaker and retry), `retry::HttpRequests`, `metrics::HttpPath`, `trace::HttpHeaders` (with `trace`) |
//! | `tower` | `retry::TowerPolicy` for `tower::retry`, and tower's own timeout and load-shed errors known to the classifier |
//! | `full` | all of the above |
//!
//! The `tower-mq` crate turns them all on by default.

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
#[cfg(feature = "codec")]
pub mod codec;
#[cfg(any(feature = "gzip", feature = "zstd", feature = "lz4"))]
pub mod compression;
pub mod dead_letter;
pub mod dedup;
pub mod error;
pub mod message_like;
pub mod metrics;
pub mod rate_limit;
pub mod reconnect;
pub mod retry;
pub mod timeout;
#[cfg(feature = "trace")]
pub mod trace;

#[cfg(test)]
mod recorded;

pub use tower_mq_core as core;

pub use batch::BatchLayer;
pub use circuit_breaker::CircuitBreakerLayer;
#[cfg(feature = "codec")]
pub use codec::{DecodeLayer, EncodeLayer};
#[cfg(any(feature = "gzip", feature = "zstd", feature = "lz4"))]
pub use compression::{CompressLayer, DecompressLayer};
pub use dead_letter::DeadLetterLayer;
pub use dedup::DedupLayer;
pub use error::CalledBeforeReady;
pub use metrics::MetricsLayer;
pub use rate_limit::RateLimitLayer;
pub use reconnect::ReconnectLayer;
pub use retry::RetryLayer;
pub use timeout::TimeoutLayer;
#[cfg(feature = "trace")]
pub use trace::TraceLayer;

#[cfg(test)]
mod test_metrics;
