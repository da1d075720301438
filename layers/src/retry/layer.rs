use std::sync::Arc;

use metrics::Label;
use tower_layer::Layer;

use super::{Backoff, ByClone, FastRng, Jitter, Policy, Retry, RetryBudget};
use crate::classify::{DefaultClassifier, ErrorsOnly, WithResponses};

/// Builds [`Retry`] services. See the [module docs](super).
///
/// Every service the layer builds, and every clone of those, draws on the same
/// [`RetryBudget`]; build a second layer for an independent budget.
#[derive(Debug, Clone)]
pub struct RetryLayer<C = DefaultClassifier, K = ByClone, J = FastRng> {
    backoff: Backoff,
    budget: Option<RetryBudget>,
    classifier: C,
    cloner: K,
    jitter: J,
    labels: Vec<Label>,
}

/// The label naming a retry layer in its counter.
const RETRY_LABEL: &str = "retry";

impl RetryLayer {
    /// Retries transient failures (per [`DefaultClassifier`]) with `backoff`, cloning
    /// requests with `Clone`, under a default [`RetryBudget`]. Its counter is labelled
    /// `retry="retry-<n>"` (a number per layer made in this process) until
    /// [`name`](Self::name) names it, so that several layers' series never merge.
    pub fn new(backoff: Backoff) -> Self {
        static LAYERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = LAYERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RetryLayer {
            backoff,
            budget: Some(RetryBudget::default()),
            classifier: DefaultClassifier::new(),
            cloner: ByClone,
            jitter: FastRng::new(),
            labels: vec![Label::new(RETRY_LABEL, format!("retry-{n}"))],
        }
    }
}

impl<C, K, J> RetryLayer<C, K, J> {
    /// Decides which errors are worth a retry (only transient ones are retried), with
    /// a [`Classifier`](crate::classify::Classifier) of the inner service's errors.
    pub fn classifier<C2>(self, classifier: C2) -> RetryLayer<ErrorsOnly<C2>, K, J> {
        self.outcome_classifier(ErrorsOnly(classifier))
    }

    /// Also retries responses `responses` calls transient failures (`None`: a
    /// success), e.g. [`http_response`](crate::classify) for an HTTP service's 503.
    /// When the attempts run out, the caller gets the last response.
    pub fn classify_responses<F>(self, responses: F) -> RetryLayer<WithResponses<C, F>, K, J>
    where
        C: Clone,
    {
        let errors = self.classifier.clone();
        self.outcome_classifier(WithResponses::new(errors, responses))
    }

    /// Decides which outcomes are worth a retry with any
    /// [`ClassifyOutcome`](crate::classify::ClassifyOutcome).
    pub fn outcome_classifier<C2>(self, classifier: C2) -> RetryLayer<C2, K, J> {
        RetryLayer {
            backoff: self.backoff,
            budget: self.budget,
            classifier,
            cloner: self.cloner,
            jitter: self.jitter,
            labels: self.labels,
        }
    }

    /// Sets how requests are copied for retries (see [`CloneRequest`](super::CloneRequest)).
    pub fn clone_requests_with<K2>(self, cloner: K2) -> RetryLayer<C, K2, J> {
        RetryLayer {
            backoff: self.backoff,
            budget: self.budget,
            classifier: self.classifier,
            cloner,
            jitter: self.jitter,
            labels: self.labels,
        }
    }

    /// Sets the jitter source (a closure returning numbers in `[0, 1)` will do).
    pub fn jitter<J2: Jitter>(self, jitter: J2) -> RetryLayer<C, K, J2> {
        RetryLayer {
            backoff: self.backoff,
            budget: self.budget,
            classifier: self.classifier,
            cloner: self.cloner,
            jitter,
            labels: self.labels,
        }
    }

    /// Replaces the retry budget (pass a clone of one budget to several layers to share it).
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Retries without a budget: only attempts and elapsed time limit them.
    pub fn without_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// Names the layer: the `retry` label of `messaging_retries_total` (e.g. the
    /// destination it retries), instead of a number.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.labels.retain(|l| l.key() != RETRY_LABEL);
        self.labels.insert(0, Label::new(RETRY_LABEL, name.into()));
        self
    }

    /// Adds a label to the `messaging_retries_total` counter.
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(key, value.into()));
        self
    }
}

impl<S, C: Clone, K: Clone, J: Jitter> Layer<S> for RetryLayer<C, K, J> {
    type Service = Retry<S, C, K, J>;

    fn layer(&self, inner: S) -> Self::Service {
        let policy = Policy {
            backoff: self.backoff.clone(),
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
            cloner: self.cloner.clone(),
            labels: self.labels.clone(),
        };
        Retry::from_parts(inner, Arc::new(policy), self.jitter.split())
    }
}
