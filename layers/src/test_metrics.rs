//! Reading what the layers recorded, through metrics-util's debugging recorder.
#![allow(dead_code)] // the counter and gauge readers serve the layers added next

use metrics_util::debugging::{DebugValue, Snapshotter};
use metrics_util::MetricKind;

/// Every sample recorded under `name` whose labels include all of `labels`.
pub(crate) fn find(
    snapshotter: &Snapshotter,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(Vec<(String, String)>, DebugValue)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, _, _, _)| key.kind() == kind && key.key().name() == name)
        .filter_map(|(key, _, _, value)| {
            let have: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels
                .iter()
                .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
                .then_some((have, value))
        })
        .collect()
}

/// The counter `name` with `labels`, 0 if never incremented.
pub(crate) fn counter(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> u64 {
    find(snapshotter, MetricKind::Counter, name, labels)
        .into_iter()
        .map(|(_, v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// The gauge `name` with `labels`.
pub(crate) fn gauge(snapshotter: &Snapshotter, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    find(snapshotter, MetricKind::Gauge, name, labels)
        .into_iter()
        .find_map(|(_, v)| match v {
            DebugValue::Gauge(g) => Some(g.into_inner()),
            _ => None,
        })
}

/// Every value recorded in the histogram `name` with `labels`.
pub(crate) fn histogram(
    snapshotter: &Snapshotter,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<f64> {
    find(snapshotter, MetricKind::Histogram, name, labels)
        .into_iter()
        .flat_map(|(_, v)| match v {
            DebugValue::Histogram(values) => values.into_iter().map(|f| f.into_inner()).collect(),
            _ => Vec::new(),
        })
        .collect()
}
