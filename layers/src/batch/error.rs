//! The batch layer's errors.

use std::error::Error as StdError;
use std::fmt;
use std::sync::{Arc, OnceLock};

use tower_mq_core::BoxError;

/// The batch worker is gone: shut down, or stopped because its inner service failed
/// `poll_ready` or panicked. No request is accepted any more. When the worker failed,
/// `source()` is that failure.
#[derive(Debug)]
pub struct Closed {
    failure: Option<BatchFailed>,
}

impl Closed {
    pub(crate) fn new(failure: &OnceLock<BatchFailed>) -> Self {
        Closed {
            failure: failure.get().cloned(),
        }
    }

    /// Whether the worker stopped because of a failure (rather than a shutdown).
    pub fn is_failure(&self) -> bool {
        self.failure.is_some()
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.failure {
            Some(failure) => write!(
                f,
                "batch worker stopped: its inner service failed: {}",
                failure.inner()
            ),
            None => f.write_str("batch worker shut down"),
        }
    }
}

impl StdError for Closed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.failure
            .as_ref()
            .map(|f| f as &(dyn StdError + 'static))
    }
}

/// The inner service failed the whole batch; every caller in it gets this error.
/// `source()` is the inner service's error, shared by the callers, so the error
/// classifies as the inner one does.
#[derive(Debug, Clone)]
pub struct BatchFailed {
    inner: Arc<BoxError>,
}

impl BatchFailed {
    pub(crate) fn new(inner: BoxError) -> Self {
        BatchFailed {
            inner: Arc::new(inner),
        }
    }

    /// The inner service's error.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &**self.inner
    }
}

impl fmt::Display for BatchFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch failed: {}", self.inner)
    }
}

impl StdError for BatchFailed {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&**self.inner)
    }
}

/// The inner service answered fewer results than the batch had requests.
#[derive(Debug)]
pub struct MissingResult {
    index: usize,
    expected: usize,
    got: usize,
}

impl MissingResult {
    pub(crate) fn new(index: usize, expected: usize, got: usize) -> Self {
        MissingResult {
            index,
            expected,
            got,
        }
    }

    /// This request's position in its batch.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Display for MissingResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "batch of {} got {} results: none for request {}",
            self.expected, self.got, self.index
        )
    }
}

impl StdError for MissingResult {}
