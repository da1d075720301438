//! The metrics layer's registered handles, cached per destination.
//!
//! Looking a metric up in the recorder builds its key (labels, allocated strings) and
//! hashes it into the recorder's registry: four of those per call cost over a
//! microsecond. A [`Handles`] holds, for one destination, the registered in-flight
//! gauge and, per outcome, the counter and histogram, so that a call after the first
//! to a destination is a lookup and atomic updates, with nothing allocated.
//!
//! Handles are bound to the recorder that was current when they were registered: the
//! in-flight gauge when a destination is first called through a service, each
//! outcome's pair when that outcome first happens there. The cache belongs to the
//! service a [`MetricsLayer`](super::MetricsLayer) built (and is shared by its clones),
//! so a service built and called under one recorder records into that one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Gauge, Histogram, Label};
use tower_mq_core::Operation;

use super::names::{self, outcomes};

/// Destinations cached per service. Past this many, a call to a new destination
/// registers its handles for itself alone (the cost of an uncached call), so that
/// unbounded destinations cannot grow the cache without bound; turn the destination
/// label off for those.
pub(crate) const MAX_CACHED_DESTINATIONS: usize = 1024;

/// The counter and histogram of one outcome.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) total: Counter,
    pub(crate) duration: Histogram,
}

/// Everything the layer records for one destination.
#[derive(Debug)]
pub(crate) struct Handles {
    destination: Box<str>,
    labels: [Label; 3],
    pub(crate) in_flight: Gauge,
    ok: OnceLock<Outcome>,
    transient: OnceLock<Outcome>,
    permanent: OnceLock<Outcome>,
}

impl Handles {
    fn register(broker: &'static str, operation: Operation, destination: &str) -> Self {
        let labels = [
            Label::from_static_parts(names::labels::BROKER, broker),
            Label::new(names::labels::DESTINATION, destination.to_owned()),
            Label::from_static_parts(names::labels::OPERATION, operation.as_str()),
        ];
        let in_flight = metrics::gauge!(names::IN_FLIGHT, labels.iter());
        Handles {
            destination: destination.into(),
            labels,
            in_flight,
            ok: OnceLock::new(),
            transient: OnceLock::new(),
            permanent: OnceLock::new(),
        }
    }

    /// Whether these are the handles of `destination`.
    pub(crate) fn is_for(&self, destination: &str) -> bool {
        *self.destination == *destination
    }

    /// The handles of `outcome` (one of [`outcomes`]), registered on first use.
    pub(crate) fn outcome(&self, outcome: &'static str) -> &Outcome {
        let slot = match outcome {
            outcomes::OK => &self.ok,
            outcomes::TRANSIENT_ERROR => &self.transient,
            _ => &self.permanent,
        };
        slot.get_or_init(|| {
            let mut labels = self.labels.to_vec();
            labels.push(Label::from_static_parts(names::labels::OUTCOME, outcome));
            Outcome {
                total: metrics::counter!(names::MESSAGES_TOTAL, labels.iter()),
                duration: metrics::histogram!(names::OPERATION_DURATION, labels.iter()),
            }
        })
    }
}

/// The handles of every destination a service (and its clones) has called.
#[derive(Debug)]
pub(crate) struct Cache {
    broker: &'static str,
    operation: Operation,
    by_destination: RwLock<HashMap<Box<str>, Arc<Handles>>>,
}

impl Cache {
    pub(crate) fn new(broker: &'static str, operation: Operation) -> Self {
        Cache {
            broker,
            operation,
            by_destination: RwLock::new(HashMap::new()),
        }
    }

    /// The handles of `destination`, registered on its first call.
    pub(crate) fn get(&self, destination: &str) -> Arc<Handles> {
        // A poisoned lock only means a panic elsewhere while it was held; the map is
        // still whole (inserts are single operations), so use it.
        {
            let map = self
                .by_destination
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(handles) = map.get(destination) {
                return handles.clone();
            }
        }
        let mut map = self
            .by_destination
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handles) = map.get(destination) {
            return handles.clone();
        }
        let handles = Arc::new(Handles::register(self.broker, self.operation, destination));
        if map.len() < MAX_CACHED_DESTINATIONS {
            map.insert(destination.into(), handles.clone());
        }
        handles
    }
}
