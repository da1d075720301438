//! The error of a call over the rate limit (reject mode).

use std::fmt;
use std::time::Duration;

/// The call would exceed the rate limit. Transient: it may go through later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    retry_after: Duration,
}

impl RateLimited {
    pub(crate) fn new(retry_after: Duration) -> Self {
        RateLimited { retry_after }
    }

    /// How long until a call would be allowed.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limit exceeded: the next call is allowed in {:?}",
            self.retry_after
        )
    }
}

impl std::error::Error for RateLimited {}
