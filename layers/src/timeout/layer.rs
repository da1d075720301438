use std::time::Duration;

use tower_layer::Layer;

use super::Timeout;

/// Builds [`Timeout`] services. See the [module docs](super).
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
    ready_timeout: Option<Duration>,
}

impl TimeoutLayer {
    /// Fails calls that take longer than `timeout`, and calls made after the service
    /// was not ready for `timeout`.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer {
            timeout,
            ready_timeout: Some(timeout),
        }
    }

    /// How long the service may stay not ready before the next call fails with
    /// [`NotReady`](super::error::NotReady) (the call timeout by default); `None`
    /// waits for readiness as long as it takes, which leaves a caller waiting through
    /// a whole outage.
    pub fn ready_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.ready_timeout = timeout.into();
        self
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::new(inner, self.timeout).ready_timeout(self.ready_timeout)
    }
}
