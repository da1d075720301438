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
//! outcome's pair when that outcome first happens there. The cache (a
//! [`DestinationCache`](tower_mq_core::cache::DestinationCache) of [`Handles`]) belongs
//! to the service a [`MetricsLayer`](super::MetricsLayer) built (and is shared by its
//! clones), so a service built and called under one recorder records into that one.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Label};
use tower_mq_core::Operation;

use super::names::{self, outcomes};

/// The counter and histogram of one outcome.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) total: Counter,
    pub(crate) duration: Histogram,
}

/// Everything the layer records for one destination.
#[derive(Debug)]
pub(crate) struct Handles {
    labels: [Label; 3],
    pub(crate) in_flight: Gauge,
    ok: OnceLock<Outcome>,
    transient: OnceLock<Outcome>,
    permanent: OnceLock<Outcome>,
}

impl Handles {
    /// Registers `destination`'s in-flight gauge; its outcomes' handles wait for their
    /// first use.
    pub(crate) fn register(broker: &'static str, operation: Operation, destination: &str) -> Self {
        let labels = [
            Label::from_static_parts(names::labels::BROKER, broker),
            Label::new(names::labels::DESTINATION, destination.to_owned()),
            Label::from_static_parts(names::labels::OPERATION, operation.as_str()),
        ];
        let in_flight = metrics::gauge!(names::IN_FLIGHT, labels.iter());
        Handles {
            labels,
            in_flight,
            ok: OnceLock::new(),
            transient: OnceLock::new(),
            permanent: OnceLock::new(),
        }
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
