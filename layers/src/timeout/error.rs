//! The errors of a call that took too long, or of a service that was not ready in time.

use std::fmt;
use std::time::Duration;

/// The call did not complete within the timeout. Transient: a retry may be faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed {
    timeout: Duration,
}

impl Elapsed {
    pub(crate) fn new(timeout: Duration) -> Self {
        Elapsed { timeout }
    }

    /// The timeout that elapsed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call timed out after {:?}", self.timeout)
    }
}

impl std::error::Error for Elapsed {}

/// The service was not ready to take a call within the timeout (its broker away, a
/// connection blocked, a queue full), so the call was not made. Transient: the
/// service may be ready again soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotReady {
    timeout: Duration,
}

impl NotReady {
    pub(crate) fn new(timeout: Duration) -> Self {
        NotReady { timeout }
    }

    /// The readiness timeout that elapsed.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service not ready within {:?}; the call was not made",
            self.timeout
        )
    }
}

impl std::error::Error for NotReady {}
