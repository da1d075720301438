//! Deciding whether a failure is worth a retry.
//!
//! Retry, circuit breaking, dead-lettering and `serve` all ask a [`Classifier`] whether
//! an error is [`ErrorKind::Transient`] or [`ErrorKind::Permanent`]; none of them parses
//! an error message. [`DefaultClassifier`] walks the error's `source()` chain and
//! answers from the first error that knows its kind: a broker [`Error`], the
//! [`Transient`] / [`Permanent`] markers, or one of the layers' own errors (a timeout
//! is transient; a payload that does not decode, or a
//! [call without a ready `poll_ready`](crate::error::CalledBeforeReady), is
//! permanent). An error that carries no classification gets the classifier's fallback,
//! transient unless configured otherwise, so that an unknown failure is retried a
//! bounded number of times and then dead-lettered rather than dropped at once.
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

/// Decides what a call's outcome means for the layers that judge outcomes (the circuit
/// breaker and retry): `None` for a success, the failure's kind otherwise.
///
/// [`DefaultClassifier`] is one (an `Ok` is a success), as is any [`Classifier`] of
/// errors wrapped in [`ErrorsOnly`] (what the layers' `classifier` methods do); a
/// classifier made with [`DefaultClassifier::classify_responses`] (or the layers'
/// `classify_responses`) also judges responses, so that an HTTP service answering 503
/// opens a breaker and is retried like one that failed:
///
/// ```
/// use tower_mq_layers::classify::{ClassifyOutcome, DefaultClassifier};
/// use tower_mq_core::{BoxError, ErrorKind};
///
/// // A response status, as an HTTP client would return it.
/// let classifier = DefaultClassifier::new()
///     .classify_responses(|status: &u16| (*status >= 500).then_some(ErrorKind::Transient));
/// assert_eq!(classifier.classify_outcome(&Ok::<u16, BoxError>(200)), None);
/// assert_eq!(
///     classifier.classify_outcome(&Ok::<u16, BoxError>(503)),
///     Some(ErrorKind::Transient)
/// );
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot judge a call's outcome `Result<{T}, {E}>`",
    label = "this classifier does not know the error type `{E}`",
    note = "`DefaultClassifier` knows `BoxError`, the model's `Error`, `io::Error`, `Infallible` and `dyn Error + Send + Sync`; for another error type pass a `Classifier<{E}>` (e.g. a closure `|e: &{E}| ErrorKind::Transient`) to the layer's `classifier` method"
)]
pub trait ClassifyOutcome<T, E> {
    /// `None` for a success, else whether the failure is transient or permanent.
    fn classify_outcome(&self, outcome: &Result<T, E>) -> Option<ErrorKind>;
}

impl<T, E> ClassifyOutcome<T, E> for DefaultClassifier
where
    DefaultClassifier: Classifier<E>,
{
    #[inline]
    fn classify_outcome(&self, outcome: &Result<T, E>) -> Option<ErrorKind> {
        match outcome {
            Ok(_) => None,
            Err(error) => Some(self.classify(error)),
        }
    }
}

/// A [`Classifier`] of errors (a closure `|e: &E| ErrorKind::...` or a type of the
/// user's) judging outcomes: every response is a success.
#[derive(Debug, Clone, Copy)]
pub struct ErrorsOnly<C>(pub C);

impl<T, E, C: Classifier<E>> ClassifyOutcome<T, E> for ErrorsOnly<C> {
    #[inline]
    fn classify_outcome(&self, outcome: &Result<T, E>) -> Option<ErrorKind> {
        match outcome {
            Ok(_) => None,
            Err(error) => Some(self.0.classify(error)),
        }
    }
}

/// An outcome classifier that also judges responses, from
/// [`DefaultClassifier::classify_responses`] or [`WithResponses::new`].
#[derive(Debug, Clone, Copy)]
pub struct WithResponses<C, F> {
    errors: C,
    responses: F,
}

impl<C, F> WithResponses<C, F> {
    /// Judges errors with `errors` (a [`ClassifyOutcome`]) and responses with
    /// `responses` (`None`: a success).
    pub fn new(errors: C, responses: F) -> Self {
        WithResponses { errors, responses }
    }
}

impl<T, E, C, F> ClassifyOutcome<T, E> for WithResponses<C, F>
where
    C: ClassifyOutcome<T, E>,
    F: Fn(&T) -> Option<ErrorKind>,
{
    #[inline]
    fn classify_outcome(&self, outcome: &Result<T, E>) -> Option<ErrorKind> {
        match outcome {
            Ok(response) => (self.responses)(response),
            Err(_) => self.errors.classify_outcome(outcome),
        }
    }
}

/// HTTP responses: a 5xx, a 429 and a 408 are transient failures; everything else is a
/// success (a 4xx is the caller's mistake, not the service failing).
///
/// ```
/// use tower_mq_layers::classify::{http_response, DefaultClassifier};
///
/// let classifier = DefaultClassifier::new().classify_responses(http_response::<String>);
/// # let _ = classifier;
/// ```
#[cfg(feature = "http")]
pub fn http_response<B>(response: &http::Response<B>) -> Option<ErrorKind> {
    let status = response.status();
    (status.is_server_error()
        || status == http::StatusCode::TOO_MANY_REQUESTS
        || status == http::StatusCode::REQUEST_TIMEOUT)
        .then_some(ErrorKind::Transient)
}

/// The classifier every layer uses unless told otherwise. See the [module docs](self).
///
/// Besides the errors it knows, it learns the application's own error types that
/// implement [`Classify`] with [`DefaultClassifier::knowing`], wherever they sit in a
/// `source()` chain:
///
/// ```
/// use std::fmt;
/// use tower_mq_core::{BoxError, Classify, ErrorKind};
/// use tower_mq_layers::classify::{Classifier, DefaultClassifier};
///
/// #[derive(Debug)]
/// struct PaymentDeclined;
/// impl fmt::Display for PaymentDeclined {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         f.write_str("payment declined")
///     }
/// }
/// impl std::error::Error for PaymentDeclined {}
/// impl Classify for PaymentDeclined {
///     fn error_kind(&self) -> ErrorKind {
///         ErrorKind::Permanent
///     }
/// }
///
/// let classifier = DefaultClassifier::new().knowing::<PaymentDeclined>();
/// let error: BoxError = PaymentDeclined.into();
/// assert_eq!(classifier.classify(&error), ErrorKind::Permanent);
/// // Without it, the error is unknown: transient by default.
/// assert_eq!(DefaultClassifier::new().classify(&error), ErrorKind::Transient);
/// ```
#[derive(Debug, Clone)]
pub struct DefaultClassifier {
    unknown: ErrorKind,
    /// The application's error types, by their downcasting classifiers.
    known: Option<std::sync::Arc<[KnownType]>>,
}

/// Downcasts to one application error type and asks its [`Classify`].
type KnownType = fn(&(dyn StdError + 'static)) -> Option<ErrorKind>;

fn classify_as<E: Classify + StdError + 'static>(
    error: &(dyn StdError + 'static),
) -> Option<ErrorKind> {
    error.downcast_ref::<E>().map(Classify::error_kind)
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
            known: None,
        }
    }

    /// Also recognises the application's error type `E` by its [`Classify`]
    /// implementation, anywhere in an error's `source()` chain.
    pub fn knowing<E: Classify + StdError + 'static>(mut self) -> Self {
        let mut known: Vec<KnownType> = self.known.as_deref().unwrap_or_default().to_vec();
        known.push(classify_as::<E>);
        self.known = Some(known.into());
        self
    }

    /// Sets the kind given to errors that carry no classification.
    pub const fn unknown_as(mut self, kind: ErrorKind) -> Self {
        self.unknown = kind;
        self
    }

    /// Also judges responses: `responses` returns `None` for a success and the kind of
    /// failure otherwise (for the circuit breaker and retry; see [`ClassifyOutcome`]).
    pub fn classify_responses<F>(self, responses: F) -> WithResponses<Self, F> {
        WithResponses::new(self, responses)
    }

    /// Classifies a borrowed error (the entry point for any error type).
    pub fn classify_dyn(&self, error: &(dyn StdError + 'static)) -> ErrorKind {
        if let Some(known) = self.known.as_deref() {
            let mut current = Some(error);
            while let Some(err) = current {
                if let Some(kind) = kind_of_one(err).or_else(|| known.iter().find_map(|k| k(err))) {
                    return kind;
                }
                current = err.source();
            }
            return self.unknown;
        }
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

impl Classifier<std::convert::Infallible> for DefaultClassifier {
    fn classify(&self, error: &std::convert::Infallible) -> ErrorKind {
        match *error {}
    }
}

impl Classifier<std::io::Error> for DefaultClassifier {
    fn classify(&self, error: &std::io::Error) -> ErrorKind {
        self.classify_dyn(error)
    }
}

impl Classifier<dyn StdError + Send + Sync + 'static> for DefaultClassifier {
    fn classify(&self, error: &(dyn StdError + Send + Sync + 'static)) -> ErrorKind {
        self.classify_dyn(error)
    }
}

/// The kind of the first error in the chain that knows its own, if any: the model's
/// errors, the layers' errors and (feature `tower`) tower's own.
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
    #[cfg(feature = "tower")]
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
    if err.is::<crate::error::CalledBeforeReady>() {
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
