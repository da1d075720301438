//! The dead-letter layer's error.

use std::error::Error as StdError;
use std::fmt;

use tower_mq_core::BoxError;

/// Handling failed and so did moving the delivery to the dead-letter destination (or
/// acking it afterwards). The original was not acked. `source()` is the publish (or
/// ack) error, so the classification follows it.
#[derive(Debug)]
pub struct DeadLetterFailed {
    dead_letter_destination: String,
    handler_error: BoxError,
    source: BoxError,
}

impl DeadLetterFailed {
    pub(crate) fn new(
        dead_letter_destination: String,
        handler_error: BoxError,
        source: BoxError,
    ) -> Self {
        DeadLetterFailed {
            dead_letter_destination,
            handler_error,
            source,
        }
    }

    /// Where the delivery was to go.
    pub fn dead_letter_destination(&self) -> &str {
        &self.dead_letter_destination
    }

    /// The handler's failure that led to dead-lettering.
    pub fn handler_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.handler_error
    }
}

impl fmt::Display for DeadLetterFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot dead-letter to `{}` ({}) after handling failed ({})",
            self.dead_letter_destination, self.source, self.handler_error
        )
    }
}

impl StdError for DeadLetterFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
