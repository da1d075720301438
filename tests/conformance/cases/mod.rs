//! The cases, by theme. Each case is `pub async fn name<F: Fixture>() -> Outcome`, listed once in
//! the `conformance!` macro in main.rs.

pub mod patterns;
pub mod properties;
pub mod pubsub;
pub mod reconnect;
pub mod redelivery;
pub mod work_queue;
