use std::fmt;
use std::sync::Arc;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tower_layer::Layer;

use super::{ByMessage, Side, Trace};
use crate::classify::{DefaultClassifier, ErrorsOnly, WithResponses};

/// Builds [`Trace`]. See the [module docs](super).
#[derive(Clone)]
pub struct TraceLayer<C = DefaultClassifier, K = ByMessage> {
    system: &'static str,
    side: Side,
    propagator: Arc<dyn TextMapPropagator + Send + Sync>,
    classifier: C,
    carrier: K,
}

impl TraceLayer {
    /// Producer spans for publishing to `system` (the `messaging.system` attribute:
    /// `kafka`, `rabbitmq`, `redis`, `nats`, …), injecting the trace context into
    /// each message.
    pub fn publish(system: &'static str) -> Self {
        TraceLayer::new(system, Side::Publish)
    }

    /// Consumer spans for handling deliveries from `system`, continuing the trace
    /// found in each message.
    pub fn process(system: &'static str) -> Self {
        TraceLayer::new(system, Side::Process)
    }

    /// Spans for `side` of `system`.
    pub fn new(system: &'static str, side: Side) -> Self {
        TraceLayer {
            system,
            side,
            propagator: Arc::new(TraceContextPropagator::new()),
            classifier: DefaultClassifier::new(),
            carrier: ByMessage,
        }
    }
}

impl<C, K> TraceLayer<C, K> {
    /// Carries the context with `propagator` instead of W3C Trace Context (for
    /// example a composite one that adds baggage).
    pub fn propagator(
        mut self,
        propagator: impl TextMapPropagator + Send + Sync + 'static,
    ) -> Self {
        self.propagator = Arc::new(propagator);
        self
    }

    /// Classifies failures (the `error.type` attribute) with `classifier`, a
    /// [`Classifier`](crate::classify::Classifier) of the inner service's errors.
    pub fn classifier<C2>(self, classifier: C2) -> TraceLayer<ErrorsOnly<C2>, K> {
        self.outcome_classifier(ErrorsOnly(classifier))
    }

    /// Also marks a call failed where `responses` says its response is one (`None`: a
    /// success), e.g. [`http_response`](crate::classify) for an HTTP service's 5xx.
    pub fn classify_responses<F>(self, responses: F) -> TraceLayer<WithResponses<C, F>, K>
    where
        C: Clone,
    {
        let errors = self.classifier.clone();
        self.outcome_classifier(WithResponses::new(errors, responses))
    }

    /// Decides which outcomes are failures with any
    /// [`ClassifyOutcome`](crate::classify::ClassifyOutcome).
    pub fn outcome_classifier<C2>(self, classifier: C2) -> TraceLayer<C2, K> {
        TraceLayer {
            system: self.system,
            side: self.side,
            propagator: self.propagator,
            classifier,
            carrier: self.carrier,
        }
    }

    /// Names spans and carries the trace context with `carrier` (see [`Carrier`]):
    /// [`HttpHeaders`](super::HttpHeaders) for an HTTP client or service (feature
    /// `http`), instead of the headers of the message a request carries.
    ///
    /// [`Carrier`]: super::Carrier
    pub fn carrier<K2>(self, carrier: K2) -> TraceLayer<C, K2> {
        TraceLayer {
            system: self.system,
            side: self.side,
            propagator: self.propagator,
            classifier: self.classifier,
            carrier,
        }
    }
}

impl<C: fmt::Debug, K: fmt::Debug> fmt::Debug for TraceLayer<C, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceLayer")
            .field("system", &self.system)
            .field("side", &self.side)
            .field("propagator", &self.propagator)
            .field("classifier", &self.classifier)
            .field("carrier", &self.carrier)
            .finish()
    }
}

impl<S, C: Clone, K: Clone> Layer<S> for TraceLayer<C, K> {
    type Service = Trace<S, C, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Trace::new(
            inner,
            self.system,
            self.side,
            self.propagator.clone(),
            self.classifier.clone(),
            self.carrier.clone(),
        )
    }
}
