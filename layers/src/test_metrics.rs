//! Reading what the layers recorded, through metrics-util's debugging recorder.
//!
//! Its snapshots drain what they read (counters and gauges are swapped to zero,
//! histograms cleared), so [`Recorded`] accumulates them: every query sees totals
//! since the start of the test.

use std::cell::RefCell;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;

type Labels = Vec<(String, String)>;

/// A recorder for one test, installed on the current thread.
pub(crate) struct Recorded {
    snapshotter: Snapshotter,
    seen: RefCell<Vec<(MetricKind, String, Labels, Value)>>,
}

#[derive(Debug, Clone)]
enum Value {
    Counter(u64),
    Gauge(f64),
    Histogram(Vec<f64>),
}

impl Recorded {
    /// A fresh debugging recorder, to install with `metrics::set_default_local_recorder`
    /// (on `#[tokio::test]`'s current-thread runtime that covers spawned tasks too).
    pub(crate) fn new() -> (Self, DebuggingRecorder) {
        let recorder = DebuggingRecorder::new();
        let recorded = Recorded {
            snapshotter: recorder.snapshotter(),
            seen: RefCell::new(Vec::new()),
        };
        (recorded, recorder)
    }

    fn refresh(&self) {
        let mut seen = self.seen.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let name = key.key().name().to_owned();
            let labels: Labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let kind = key.kind();
            let slot = seen
                .iter_mut()
                .find(|(k, n, l, _)| *k == kind && *n == name && *l == labels);
            match (slot, value) {
                (Some((_, _, _, Value::Counter(total))), DebugValue::Counter(n)) => *total += n,
                (Some((_, _, _, Value::Gauge(total))), DebugValue::Gauge(g)) => {
                    *total += g.into_inner()
                }
                (Some((_, _, _, Value::Histogram(all))), DebugValue::Histogram(xs)) => {
                    all.extend(xs.into_iter().map(|x| x.into_inner()))
                }
                (_, DebugValue::Counter(n)) => seen.push((kind, name, labels, Value::Counter(n))),
                (_, DebugValue::Gauge(g)) => {
                    seen.push((kind, name, labels, Value::Gauge(g.into_inner())))
                }
                (_, DebugValue::Histogram(xs)) => seen.push((
                    kind,
                    name,
                    labels,
                    Value::Histogram(xs.into_iter().map(|x| x.into_inner()).collect()),
                )),
            }
        }
    }

    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Vec<Value> {
        self.refresh();
        self.seen
            .borrow()
            .iter()
            .filter(|(k, n, have, _)| {
                *k == kind
                    && n == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| have.iter().any(|(hk, hv)| hk == lk && hv == lv))
            })
            .map(|(_, _, _, v)| v.clone())
            .collect()
    }

    /// The sum of the counters `name` whose labels include `labels`.
    pub(crate) fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.find(MetricKind::Counter, name, labels)
            .into_iter()
            .map(|v| match v {
                Value::Counter(n) => n,
                _ => 0,
            })
            .sum()
    }

    /// The gauge `name` with `labels`, if it was ever set.
    pub(crate) fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.find(MetricKind::Gauge, name, labels)
            .into_iter()
            .find_map(|v| match v {
                Value::Gauge(g) => Some(g),
                _ => None,
            })
    }

    /// Every value recorded in the histograms `name` whose labels include `labels`.
    pub(crate) fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.find(MetricKind::Histogram, name, labels)
            .into_iter()
            .flat_map(|v| match v {
                Value::Histogram(xs) => xs,
                _ => Vec::new(),
            })
            .collect()
    }
}
