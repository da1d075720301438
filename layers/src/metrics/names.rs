//! The names of every metric the layers emit, and of their labels.
//!
//! One place to look them up when writing dashboards and alerts (the alerting rules
//! shipped in `layers/prometheus/alerts.yml` use only these), and one place the
//! layers take them from. All follow Prometheus naming: a `messaging_` prefix, base
//! units in the name (`_seconds`), `_total` on counters.
//!
//! | name | type | labels | emitted by |
//! |---|---|---|---|
//! | `messaging_operation_duration_seconds` | histogram | broker, destination, operation, outcome | [`MetricsLayer`](super::MetricsLayer) |
//! | `messaging_messages_total` | counter | broker, destination, operation, outcome | [`MetricsLayer`](super::MetricsLayer) |
//! | `messaging_in_flight` | gauge | broker, destination, operation | [`MetricsLayer`](super::MetricsLayer) |
//! | `messaging_batch_size` | histogram | – | [`BatchLayer`](crate::batch::BatchLayer) |
//! | `messaging_duplicates_total` | counter | destination | [`DedupLayer`](crate::dedup::DedupLayer) |
//! | `messaging_dead_letters_total` | counter | destination, reason (`permanent_error`) | [`DeadLetterLayer`](crate::dead_letter::DeadLetterLayer) |
//! | `messaging_retries_total` | counter | set with the layer's `label` | retry layer |
//! | `messaging_circuit_state` | gauge (0 closed, 1 open, 2 half-open) | set with the layer's `label` | circuit breaker layer |
//! | `messaging_circuit_calls_total` | counter | outcome, and those set with `label` | circuit breaker layer (when counting calls) |
//! | `messaging_reconnects_total` | counter | broker | reconnect layer |

/// Histogram: how long one operation (a publish, a handle) took, in seconds.
pub const OPERATION_DURATION: &str = "messaging_operation_duration_seconds";
/// Counter: operations finished, by `outcome`.
pub const MESSAGES_TOTAL: &str = "messaging_messages_total";
/// Gauge: operations started and not finished.
pub const IN_FLIGHT: &str = "messaging_in_flight";
/// Histogram: requests per flushed batch.
pub const BATCH_SIZE: &str = "messaging_batch_size";
/// Counter: deliveries skipped as duplicates.
pub const DUPLICATES_TOTAL: &str = "messaging_duplicates_total";
/// Counter: deliveries moved to a dead-letter destination.
pub const DEAD_LETTERS_TOTAL: &str = "messaging_dead_letters_total";
/// Counter: retried attempts (the retry layer).
pub const RETRIES_TOTAL: &str = "messaging_retries_total";
/// Gauge: circuit breaker state (the circuit breaker layer).
pub const CIRCUIT_STATE: &str = "messaging_circuit_state";
/// Counter: calls seen by a circuit breaker, by outcome (the circuit breaker layer).
pub const CIRCUIT_CALLS_TOTAL: &str = "messaging_circuit_calls_total";
/// Counter: reconnections (the reconnect layer).
pub const RECONNECTS_TOTAL: &str = "messaging_reconnects_total";

/// Every metric name above.
pub const ALL: &[&str] = &[
    OPERATION_DURATION,
    MESSAGES_TOTAL,
    IN_FLIGHT,
    BATCH_SIZE,
    DUPLICATES_TOTAL,
    DEAD_LETTERS_TOTAL,
    RETRIES_TOTAL,
    CIRCUIT_STATE,
    CIRCUIT_CALLS_TOTAL,
    RECONNECTS_TOTAL,
];

/// Label names shared by every layer.
pub mod labels {
    /// The broker: `kafka`, `rabbitmq`, `redis`, `nats`, `zeromq`, `memory`.
    pub const BROKER: &str = "broker";
    /// The destination (topic, queue, subject, stream), when the request names one.
    pub const DESTINATION: &str = "destination";
    /// `publish` or `handle` (see [`tower_mq_core::Operation`]).
    pub const OPERATION: &str = "operation";
    /// `ok`, `transient_error` or `permanent_error`.
    pub const OUTCOME: &str = "outcome";
    /// Why a delivery was dead-lettered: `permanent_error`.
    pub const REASON: &str = "reason";
}

/// Values of the `outcome` label.
pub mod outcomes {
    /// The operation succeeded.
    pub const OK: &str = "ok";
    /// It failed in a way a retry may fix.
    pub const TRANSIENT_ERROR: &str = "transient_error";
    /// It failed in a way a retry will not fix.
    pub const PERMANENT_ERROR: &str = "permanent_error";
}
