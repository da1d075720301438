//! The error of a call that took too long.

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
