use tower::Layer;
use tower_mq_core::Operation;

use super::Metrics;
use crate::classify::DefaultClassifier;

/// Builds [`Metrics`]. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct MetricsLayer<C = DefaultClassifier> {
    broker: &'static str,
    operation: Operation,
    classifier: C,
    destination_label: bool,
}

impl MetricsLayer {
    /// Records `operation` calls to `broker` (the `broker` label).
    pub fn new(broker: &'static str, operation: Operation) -> Self {
        MetricsLayer {
            broker,
            operation,
            classifier: DefaultClassifier::new(),
            destination_label: true,
        }
    }

    /// For a publisher: `operation="publish"`.
    pub fn publish(broker: &'static str) -> Self {
        MetricsLayer::new(broker, Operation::Publish)
    }

    /// For a handler: `operation="handle"`.
    pub fn handle(broker: &'static str) -> Self {
        MetricsLayer::new(broker, Operation::Handle)
    }
}

impl<C> MetricsLayer<C> {
    /// Classifies failures (the `outcome` label) with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> MetricsLayer<C2> {
        MetricsLayer {
            broker: self.broker,
            operation: self.operation,
            classifier,
            destination_label: self.destination_label,
        }
    }

    /// Whether to label by destination (default `true`); see
    /// [`Metrics::with_destination_label`].
    pub fn destination_label(mut self, enabled: bool) -> Self {
        self.destination_label = enabled;
        self
    }
}

impl<S, C: Clone> Layer<S> for MetricsLayer<C> {
    type Service = Metrics<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.broker, self.operation)
            .with_classifier(self.classifier.clone())
            .with_destination_label(self.destination_label)
    }
}
