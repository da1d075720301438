use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use super::names;

/// Buckets of `messaging_operation_duration_seconds`: 0.5 ms to 30 s, dense where
/// broker round trips are (1 to 100 ms).
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of `messaging_batch_size`: 1 to 10 000 requests.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// How often the exporter folds the histograms' observations into their buckets.
/// Until then it keeps each one (16 bytes), two per message through a stacked
/// publisher and handler: at 100,000 messages a second, its default of 5 s held
/// 16 MB at a time; a second holds a fifth of that, for the same work.
const UPKEEP: Duration = Duration::from_secs(1);

/// A Prometheus exporter builder with histogram buckets for the layers' metrics
/// (histograms, not summaries, so they aggregate across instances) and upkeep every
/// second (the exporter's default is 5 s; observations wait for it in memory). Add a
/// listener or other settings, then install it.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::OPERATION_DURATION.into()),
            DURATION_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(names::BATCH_SIZE.into()), BATCH_SIZE_BUCKETS)?
        // Any other `_seconds` histogram an application adds gets the same scale.
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .map(|builder| builder.upkeep_timeout(UPKEEP))
}

/// Installs the Prometheus exporter as the global metrics recorder, serving
/// `/metrics` over plain HTTP on `addr` (on the current tokio runtime if there is
/// one, else on a thread of its own).
///
/// Fails if a global recorder is already installed or the address cannot be bound.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// tower_mq_layers::metrics::install_prometheus(([127, 0, 0, 1], 9000))?;
/// # Ok(()) }
/// ```
pub fn install_prometheus(addr: impl Into<SocketAddr>) -> Result<(), BuildError> {
    prometheus_builder()?.with_http_listener(addr).install()
}
