//! Deciding whether a failure is worth a retry.
//!
//! Retry, circuit breaking, dead-lettering and `serve` all ask a [`Classifier`] whether
//! an error is [`ErrorKind::Transient`] or [`ErrorKind::Permanent`]; none of them parses
//! an error message. [`DefaultClassifier`] walks the error's `source()` chain and
//! answers from the first error that knows its kind: a broker [`Error`], the
//! [`Transient`] / [`Permanent`] markers, or one of the layers' own errors (a timeout
//! is transient; a payload that does not decode is permanent). An error that carries
//! no classification gets the classifier's fallback, transient unless configured
//! otherwise, so that an unknown failure is retried a bounded number of times and then
//! dead-lettered rather than dropped at once.
//!
//! ```
//! use tower_mq_layers::classify::{Classifier, DefaultClassifier};
//! use tower_mq_core::{BoxError, Error, ErrorKind, Operation, Permanent};
//!
//! let classifier = DefaultClassifier::new();
//! let broker: BoxError = Error::transient("redis", Operation::Publish).into();
//! assert_eq!(classifier.classify(&broker), ErrorKind::Transient);
//! let app: BoxError = Permanent::new("bad order").into();
//! assert_eq!(classifier.classify(&app), ErrorKind::Permanent);
//! let unknown: BoxError = "something odd".into();
//! assert_eq!(classifier.classify(&unknown), ErrorKind::Transient);
//! assert_eq!(
//!     DefaultClassifier::new().unknown_as(ErrorKind::Permanent).classify(&unknown),
//!     ErrorKind::Permanent
//! );
//! ```
//!
//! [`Error`]: tower_mq_core::Error
//! [`Transient`]: tower_mq_core::Transient
//! [`Permanent`]: tower_mq_core::Permanent

use std::error::Error as StdError;

use tower_mq_core::error::{kind_of, BoxError, ErrorKind};
use tower_mq_core::Classify;

/// Decides whether an error of type `E` is transient or permanent.
pub trait Classifier<E: ?Sized> {
    /// Transient (worth a retry) or permanent.
    fn classify(&self, error: &E) -> ErrorKind;
}

impl<E: ?Sized, F> Classifier<E> for F
where
    F: Fn(&E) -> ErrorKind,
{
    fn classify(&self, error: &E) -> ErrorKind {
        self(error)
    }
}

/// The classifier every layer uses unless told otherwise. See the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct DefaultClassifier {
    unknown: ErrorKind,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        DefaultClassifier::new()
    }
}

impl DefaultClassifier {
    /// Classifies unknown errors as transient.
    pub const fn new() -> Self {
        DefaultClassifier {
            unknown: ErrorKind::Transient,
        }
    }

    /// Sets the kind given to errors that carry no classification.
    pub const fn unknown_as(mut self, kind: ErrorKind) -> Self {
        self.unknown = kind;
        self
    }

    /// Classifies a borrowed error (the entry point for any error type).
    pub fn classify_dyn(&self, error: &(dyn StdError + 'static)) -> ErrorKind {
        known_kind(error).unwrap_or(self.unknown)
    }
}

impl Classifier<BoxError> for DefaultClassifier {
    fn classify(&self, error: &BoxError) -> ErrorKind {
        self.classify_dyn(&**error)
    }
}

impl Classifier<tower_mq_core::Error> for DefaultClassifier {
    fn classify(&self, error: &tower_mq_core::Error) -> ErrorKind {
        error.error_kind()
    }
}

impl Classifier<dyn StdError + Send + Sync + 'static> for DefaultClassifier {
    fn classify(&self, error: &(dyn StdError + Send + Sync + 'static)) -> ErrorKind {
        self.classify_dyn(error)
    }
}

/// The kind of the first error in the chain that knows its own, if any: the model's
/// errors, the layers' errors and tower's own.
pub fn known_kind(error: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(kind) = kind_of_one(err) {
            return Some(kind);
        }
        current = err.source();
    }
    None
}

/// One error, without its sources.
fn kind_of_one(err: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    // `kind_of` walks chains itself; asking it about one link at a time is cheap
    // because it stops at the first match and we stop at the first answer.
    if err.is::<tower_mq_core::Error>()
        || err.is::<tower_mq_core::Transient>()
        || err.is::<tower_mq_core::Permanent>()
    {
        return kind_of(err);
    }
    if err.is::<tower::timeout::error::Elapsed>() || err.is::<tower::load_shed::error::Overloaded>()
    {
        return Some(ErrorKind::Transient);
    }
    // The layers' own errors register here.
    #[cfg(feature = "codec")]
    if err.is::<crate::codec::error::DecodeError>() || err.is::<crate::codec::error::EncodeError>()
    {
        return Some(ErrorKind::Permanent);
    }
    #[cfg(any(feature = "gzip", feature = "zstd", feature = "lz4"))]
    if err.is::<crate::compression::error::TooLarge>()
        || err.is::<crate::compression::error::UnknownEncoding>()
        || err.is::<crate::compression::error::CorruptPayload>()
        || err.is::<crate::compression::error::CompressError>()
    {
        return Some(ErrorKind::Permanent);
    }
    if err.is::<crate::dedup::error::StoreError>() {
        return Some(ErrorKind::Transient);
    }
    if err.is::<crate::timeout::error::Elapsed>()
        || err.is::<crate::timeout::error::NotReady>()
        || err.is::<crate::circuit_breaker::error::CircuitOpen>()
        || err.is::<crate::rate_limit::error::RateLimited>()
        || err.is::<crate::reconnect::error::ConnectionLost>()
        || err.is::<crate::reconnect::error::ConnectFailed>()
    {
        return Some(ErrorKind::Transient);
    }
    None
}
