use tower_layer::Layer;
use tower_mq_core::Operation;

use super::{ByMessage, LabelFn, Metrics};
use crate::classify::{DefaultClassifier, ErrorsOnly, WithResponses};

/// Builds [`Metrics`]. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct MetricsLayer<C = DefaultClassifier, L = ByMessage> {
    broker: &'static str,
    operation: Operation,
    classifier: C,
    labeller: L,
    destination_label: bool,
}

impl MetricsLayer {
    /// Records `operation` calls to `broker` (the `broker` label).
    pub fn new(broker: &'static str, operation: Operation) -> Self {
        MetricsLayer {
            broker,
            operation,
            classifier: DefaultClassifier::new(),
            labeller: ByMessage,
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

impl<C, L> MetricsLayer<C, L> {
    /// Classifies failures (errors: the `outcome` label) with `classifier`, a
    /// [`Classifier`](crate::classify::Classifier); every response counts as `ok`.
    pub fn classifier<C2>(self, classifier: C2) -> MetricsLayer<ErrorsOnly<C2>, L> {
        self.outcome_classifier(ErrorsOnly(classifier))
    }

    /// Also counts a response as a failure where `responses` says it is one (`None`:
    /// a success), e.g. [`http_response`](crate::classify::http_response) for an HTTP
    /// service's 5xx (`outcome="transient_error"`).
    pub fn classify_responses<F>(self, responses: F) -> MetricsLayer<WithResponses<C, F>, L>
    where
        C: Clone,
    {
        let errors = self.classifier.clone();
        self.outcome_classifier(WithResponses::new(errors, responses))
    }

    /// Judges outcomes with any [`ClassifyOutcome`](crate::classify::ClassifyOutcome).
    pub fn outcome_classifier<C2>(self, classifier: C2) -> MetricsLayer<C2, L> {
        MetricsLayer {
            broker: self.broker,
            operation: self.operation,
            classifier,
            labeller: self.labeller,
            destination_label: self.destination_label,
        }
    }

    /// Takes the `destination` label from requests with `labeller` (see
    /// [`Labeller`](super::Labeller); [`HttpPath`](super) for HTTP services).
    pub fn labeller<L2>(self, labeller: L2) -> MetricsLayer<C, L2> {
        MetricsLayer {
            broker: self.broker,
            operation: self.operation,
            classifier: self.classifier,
            labeller,
            destination_label: self.destination_label,
        }
    }

    /// Takes the `destination` label from `destination(&request)`: any request type,
    /// e.g. an HTTP route or a gRPC method.
    pub fn destination_from<Req, F>(self, destination: F) -> MetricsLayer<C, LabelFn<F>>
    where
        F: Fn(&Req) -> Option<String>,
    {
        self.labeller(LabelFn(destination))
    }

    /// Whether to label by destination (default `true`); see
    /// [`Metrics::with_destination_label`].
    pub fn destination_label(mut self, enabled: bool) -> Self {
        self.destination_label = enabled;
        self
    }
}

impl<S, C: Clone, L: Clone> Layer<S> for MetricsLayer<C, L> {
    type Service = Metrics<S, C, L>;

    fn layer(&self, inner: S) -> Self::Service {
        Metrics::new(inner, self.broker, self.operation)
            .with_outcome_classifier(self.classifier.clone())
            .with_labeller(self.labeller.clone())
            .with_destination_label(self.destination_label)
    }
}
