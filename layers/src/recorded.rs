//! Reading metrics back from `metrics-util`'s debugging recorder in tests.

use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::MetricKind;

/// The value of the counter `name` whose labels include all of `labels`, or 0.
pub(crate) fn counter(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    find(snapshotter, MetricKind::Counter, name, labels)
        .map(|v| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .unwrap_or(0)
}

/// The value of the gauge `name` whose labels include all of `labels`, if set.
pub(crate) fn gauge(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(snapshotter, MetricKind::Gauge, name, labels).and_then(|v| match v {
        DebugValue::Gauge(g) => Some(g.0),
        _ => None,
    })
}

fn find(
    snapshotter: &Snapshotter,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, _, _, _)| {
            key.kind() == kind
                && key.key().name() == name
                && labels.iter().all(|(k, v)| {
                    key.key()
                        .labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
        .map(|(_, _, _, value)| value)
}
