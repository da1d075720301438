//! The errors of a reconnecting service.

use std::fmt;

use tower_mq_core::BoxError;

/// A call failed because its connection dropped. Transient: the service is rebuilding
/// the connection and a retry will use the new one.
#[derive(Debug)]
pub struct ConnectionLost {
    source: BoxError,
}

impl ConnectionLost {
    pub(crate) fn new(source: BoxError) -> Self {
        ConnectionLost { source }
    }
}

impl fmt::Display for ConnectionLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection lost during the call: {}", self.source)
    }
}

impl std::error::Error for ConnectionLost {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Connecting failed this many times in a row (the backoff's `max_attempts`). Transient:
/// the next `poll_ready` starts connecting again.
#[derive(Debug)]
pub struct ConnectFailed {
    attempts: u32,
    source: BoxError,
}

impl ConnectFailed {
    pub(crate) fn new(attempts: u32, source: BoxError) -> Self {
        ConnectFailed { attempts, source }
    }

    /// Failed attempts in a row.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not connect after {} attempts: {}",
            self.attempts, self.source
        )
    }
}

impl std::error::Error for ConnectFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
