//! The dedup layer's error.

use std::error::Error as StdError;
use std::fmt;

use tower_mq_core::BoxError;

/// The store could not claim a message id. Transient: the delivery comes back and is
/// checked again.
#[derive(Debug)]
pub struct StoreError {
    message_id: String,
    source: BoxError,
}

impl StoreError {
    pub(crate) fn new(message_id: String, source: BoxError) -> Self {
        StoreError { message_id, source }
    }

    /// The id being claimed.
    pub fn message_id(&self) -> &str {
        &self.message_id
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dedup store failed to claim message {}: {}",
            self.message_id, self.source
        )
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
