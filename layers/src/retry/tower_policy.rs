//! The same retry decisions as a `tower::retry::Policy`, for `tower::retry::Retry`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::time::Sleep;
use tower_mq_core::ErrorKind;

use super::{Backoff, ByClone, CloneRequest, FastRng, Jitter, RetryBudget};
use crate::classify::{ClassifyOutcome, DefaultClassifier};

/// [`Retry`](super::Retry)'s decisions (classification, jittered backoff, attempt and
/// budget limits) as a `tower::retry::Policy`, for code built on `tower::retry::Retry`
/// (`ServiceBuilder::retry`).
///
/// [`RetryLayer`](super::RetryLayer) remains the one to reach for: it also bounds the
/// elapsed time, polls readiness before each retry, records
/// `messaging_retries_total`, and its futures are smaller. A policy is per request:
/// tower clones it for each call, so every call starts from its first attempt.
///
/// ```
/// use std::time::Duration;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_mq_core::{BoxError, Error, Operation};
/// use tower_mq_layers::retry::{Backoff, TowerPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let policy = TowerPolicy::new(
///     Backoff::exponential(Duration::from_millis(1), Duration::from_millis(10)).max_attempts(3),
/// );
/// let failing = service_fn(|_: u32| async {
///     Err::<(), BoxError>(Error::transient("memory", Operation::Publish).into())
/// });
/// let result = ServiceBuilder::new().retry(policy).service(failing).oneshot(7).await;
/// assert!(result.is_err()); // three attempts, then the last error
/// # }
/// ```
#[derive(Debug)]
pub struct TowerPolicy<C = DefaultClassifier, K = ByClone, J = FastRng> {
    backoff: Arc<Backoff>,
    classifier: C,
    cloner: K,
    jitter: J,
    budget: Option<RetryBudget>,
    /// Attempts made for the current request.
    attempts: u32,
}

impl TowerPolicy {
    /// Retries what [`DefaultClassifier`] calls transient with `backoff`, cloning
    /// requests with `Clone`, without a budget.
    pub fn new(backoff: Backoff) -> Self {
        TowerPolicy {
            backoff: Arc::new(backoff),
            classifier: DefaultClassifier::new(),
            cloner: ByClone,
            jitter: FastRng::new(),
            budget: None,
            attempts: 1,
        }
    }
}

impl<C, K, J> TowerPolicy<C, K, J> {
    /// Judges outcomes with `classifier` (see [`ClassifyOutcome`]).
    pub fn outcome_classifier<C2>(self, classifier: C2) -> TowerPolicy<C2, K, J> {
        TowerPolicy {
            backoff: self.backoff,
            classifier,
            cloner: self.cloner,
            jitter: self.jitter,
            budget: self.budget,
            attempts: self.attempts,
        }
    }

    /// Copies requests with `cloner` (see [`CloneRequest`]).
    pub fn clone_requests_with<K2>(self, cloner: K2) -> TowerPolicy<C, K2, J> {
        TowerPolicy {
            backoff: self.backoff,
            classifier: self.classifier,
            cloner,
            jitter: self.jitter,
            budget: self.budget,
            attempts: self.attempts,
        }
    }

    /// Spends retries from `budget`, shared by every clone.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }
}

impl<C: Clone, K: Clone, J: Jitter> Clone for TowerPolicy<C, K, J> {
    /// A policy for a new request: first attempt, its own jitter stream.
    fn clone(&self) -> Self {
        TowerPolicy {
            backoff: self.backoff.clone(),
            classifier: self.classifier.clone(),
            cloner: self.cloner.clone(),
            jitter: self.jitter.split(),
            budget: self.budget.clone(),
            attempts: 1,
        }
    }
}

impl<Req, Res, E, C, K, J> tower::retry::Policy<Req, Res, E> for TowerPolicy<C, K, J>
where
    C: ClassifyOutcome<Res, E>,
    K: CloneRequest<Req>,
    J: Jitter,
{
    type Future = Pin<Box<Sleep>>;

    fn retry(&mut self, _request: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        match self.classifier.classify_outcome(result) {
            None => {
                if let Some(budget) = &self.budget {
                    budget.deposit();
                }
                return None;
            }
            Some(ErrorKind::Permanent) => return None,
            Some(_) => {}
        }
        if self
            .backoff
            .get_max_attempts()
            .is_some_and(|max| self.attempts >= max)
        {
            return None;
        }
        if let Some(budget) = &self.budget {
            if !budget.withdraw() {
                return None;
            }
        }
        let delay = self.backoff.delay(self.attempts - 1, &mut self.jitter);
        self.attempts += 1;
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        self.cloner.clone_request(request)
    }
}

/// [`RetryBudget`] as tower's budget, for `tower::retry` policies of the user's own.
impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self)
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}

// The sleep is the only future a retry waits on; make sure it stays `Send`.
const _: fn() = || {
    fn send<T: Send + Future>() {}
    send::<Pin<Box<Sleep>>>();
};

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use tower::{service_fn, ServiceBuilder, ServiceExt};
    use tower_mq_core::{BoxError, Error, Operation, Permanent};

    use super::*;

    fn counting(
        fail: fn() -> BoxError,
    ) -> (
        impl tower::Service<u32, Response = (), Error = BoxError, Future: Send> + Clone,
        Arc<AtomicU32>,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = calls.clone();
        let service = service_fn(move |_: u32| {
            seen.fetch_add(1, Ordering::SeqCst);
            let error = fail();
            async move { Err::<(), BoxError>(error) }
        });
        (service, calls)
    }

    fn backoff() -> Backoff {
        Backoff::exponential(Duration::from_millis(10), Duration::from_secs(1)).max_attempts(4)
    }

    #[tokio::test(start_paused = true)]
    async fn tower_retry_with_the_policy_retries_transient_failures_up_to_the_limit() {
        let (service, calls) = counting(|| Error::transient("memory", Operation::Publish).into());
        let result = ServiceBuilder::new()
            .retry(TowerPolicy::new(backoff()))
            .service(service)
            .oneshot(1)
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let (service, calls) = counting(|| Permanent::new("bad order").into());
        let result = ServiceBuilder::new()
            .retry(TowerPolicy::new(backoff()))
            .service(service)
            .oneshot(1)
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_stops_retries() {
        let (service, calls) = counting(|| Error::transient("memory", Operation::Publish).into());
        let budget = RetryBudget::new(0, 0.0);
        let result = ServiceBuilder::new()
            .retry(TowerPolicy::new(backoff()).budget(budget))
            .service(service)
            .oneshot(1)
            .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
