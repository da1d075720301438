use std::sync::Arc;

use metrics::Label;
use tower::Layer;

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

impl RetryLayer {
    /// Retries transient failures (per [`DefaultClassifier`]) with `backoff`, cloning
    /// requests with `Clone`, under a default [`RetryBudget`].
    pub fn new(backoff: Backoff) -> Self {
        RetryLayer {
            backoff,
            budget: Some(RetryBudget::default()),
            classifier: DefaultClassifier::new(),
            cloner: ByClone,
            jitter: FastRng::new(),
            labels: Vec::new(),
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
