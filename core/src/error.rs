//! Errors that name the broker, the operation and the destination, and say whether a
//! retry may help.
//!
//! Retry, dead-letter and `serve` decide from [`ErrorKind`], never from strings:
//!
//! ```
//! use tower_mq_core::error::{Error, ErrorKind, Operation};
//!
//! let err = Error::transient("rabbitmq", Operation::Publish)
//!     .with_destination("orders")
//!     .with_reason("connection closed before the broker confirmed");
//! assert_eq!(err.kind(), ErrorKind::Transient);
//! assert_eq!(
//!     err.to_string(),
//!     "rabbitmq publish `orders` failed (transient): connection closed before the broker confirmed"
//! );
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// A type-erased error, as tower middleware passes them around.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Whether retrying the same operation may succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The failure may go away: a lost connection, a timeout, a full queue, a broker
    /// that is restarting. Worth a retry with backoff.
    Transient,
    /// Retrying will fail the same way: an invalid destination, a message too large,
    /// a payload that does not decode. Goes to the dead-letter destination.
    Permanent,
}

impl ErrorKind {
    /// `"transient"` or `"permanent"`, as used in metrics labels and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that knows whether it is worth retrying.
///
/// Implemented by [`Error`], [`Transient`] and [`Permanent`]; the layers' classifier
/// walks an error's `source()` chain looking for one of them.
pub trait Classify {
    /// Transient or permanent.
    fn error_kind(&self) -> ErrorKind;
}

/// What was being done when a broker error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening or re-opening a connection or channel.
    Connect,
    /// Declaring topology: exchanges, queues, streams, topics, consumer groups.
    Declare,
    /// Publishing a message.
    Publish,
    /// Starting a subscription or consumer.
    Subscribe,
    /// Receiving a delivery.
    Receive,
    /// Acknowledging a delivery.
    Ack,
    /// Negatively acknowledging a delivery for redelivery.
    Nack,
    /// Rejecting a delivery to the dead-letter destination.
    Reject,
    /// Sending a request and waiting for its reply.
    Request,
    /// Handling a delivery in application code.
    Handle,
    /// Closing a connection, publisher or consumer.
    Close,
}

impl Operation {
    /// The operation's name in lower case, as used in messages and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Declare => "declare",
            Operation::Publish => "publish",
            Operation::Subscribe => "subscribe",
            Operation::Receive => "receive",
            Operation::Ack => "ack",
            Operation::Nack => "nack",
            Operation::Reject => "reject",
            Operation::Request => "request",
            Operation::Handle => "handle",
            Operation::Close => "close",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong, as a code a caller can match without downcasting into a broker's
/// client crate. Set by the broker modules where they know it ([`Error::code`]);
/// `None` where nothing more precise than the kind is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Code {
    /// The destination does not exist (a queue, stream, topic, exchange).
    NotFound,
    /// The broker accepted the message but could not route it anywhere (an unroutable
    /// mandatory AMQP message).
    Unroutable,
    /// Nobody listens: a NATS request with no responders.
    NoResponders,
    /// The message is larger than the broker or the configuration allows.
    TooLarge,
    /// The broker did not answer in time.
    Timeout,
    /// The connection was lost, or is being re-established.
    ConnectionLost,
    /// The broker refused the credentials or the permission.
    Unauthorized,
    /// The message carries something the broker cannot carry (a property, a header
    /// type, a key).
    Unsupported,
    /// The request is invalid: a destination name, an argument, a configuration.
    Invalid,
    /// A received message cannot be read (a foreign peer's malformed frames, an
    /// unreadable header block). It concerns that message only: the consumer is
    /// healthy and goes on.
    Malformed,
    /// The broker is full or pushing back (a full producer queue, a blocked connection).
    Full,
    /// The publisher or consumer was closed.
    Closed,
}

impl Code {
    /// The code in snake case, as used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotFound => "not_found",
            Code::Unroutable => "unroutable",
            Code::NoResponders => "no_responders",
            Code::TooLarge => "too_large",
            Code::Timeout => "timeout",
            Code::ConnectionLost => "connection_lost",
            Code::Unauthorized => "unauthorized",
            Code::Unsupported => "unsupported",
            Code::Invalid => "invalid",
            Code::Malformed => "malformed",
            Code::Full => "full",
            Code::Closed => "closed",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason of [`Error::called_before_ready`].
const CALLED_BEFORE_READY: &str =
    "call without a ready poll_ready: a tower Service must be polled ready before each call";

/// A broker error: which broker, which operation, which destination, transient or
/// permanent, and the underlying cause.
///
/// See the [module docs](self) for an example.
pub struct Error {
    broker: &'static str,
    operation: Operation,
    kind: ErrorKind,
    code: Option<Code>,
    destination: Option<String>,
    reason: Option<Cow<'static, str>>,
    source: Option<BoxError>,
}

impl Error {
    /// An error of `kind` from `broker` (e.g. `"kafka"`) during `operation`.
    pub fn new(broker: &'static str, operation: Operation, kind: ErrorKind) -> Self {
        Error {
            broker,
            operation,
            kind,
            code: None,
            destination: None,
            reason: None,
            source: None,
        }
    }

    /// Says what went wrong as a [`Code`] callers can match.
    pub fn with_code(mut self, code: Code) -> Self {
        self.code = Some(code);
        self
    }

    /// What went wrong, as a code, where the broker module knows it.
    pub fn code(&self) -> Option<Code> {
        self.code
    }

    /// Whether the error concerns one received message only ([`Code::Malformed`]):
    /// the consumer that yielded it is healthy and goes on.
    pub fn is_about_one_message(&self) -> bool {
        self.code == Some(Code::Malformed)
    }

    /// A transient error: a retry may succeed.
    pub fn transient(broker: &'static str, operation: Operation) -> Self {
        Error::new(broker, operation, ErrorKind::Transient)
    }

    /// A permanent error: a retry will fail the same way.
    pub fn permanent(broker: &'static str, operation: Operation) -> Self {
        Error::new(broker, operation, ErrorKind::Permanent)
    }

    /// A `call` made without a `poll_ready` that returned `Ready(Ok(()))` first: a
    /// permanent [`Code::Invalid`] error, as retrying the same misuse fails the same
    /// way. tower lets such a `call` panic; tower-mq's services answer this instead.
    ///
    /// ```
    /// use tower_mq_core::error::{Code, Error, ErrorKind, Operation};
    ///
    /// let err = Error::called_before_ready("memory", Operation::Publish).with_destination("orders");
    /// assert_eq!(err.kind(), ErrorKind::Permanent);
    /// assert_eq!(err.code(), Some(Code::Invalid));
    /// assert_eq!(
    ///     err.to_string(),
    ///     "memory publish `orders` failed (permanent): call without a ready poll_ready: \
    ///      a tower Service must be polled ready before each call"
    /// );
    /// ```
    pub fn called_before_ready(broker: &'static str, operation: Operation) -> Self {
        Error::permanent(broker, operation)
            .with_code(Code::Invalid)
            .with_reason(CALLED_BEFORE_READY)
    }

    /// Names the destination (topic, queue, subject, stream, socket) involved.
    pub fn with_destination(mut self, destination: impl Into<String>) -> Self {
        self.destination = Some(destination.into());
        self
    }

    /// Says what went wrong, in words.
    pub fn with_reason(mut self, reason: impl Into<Cow<'static, str>>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Attaches the underlying cause (the broker client's own error).
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The broker: `"memory"`, `"rabbitmq"`, `"kafka"`, `"redis"`, `"nats"`, `"zeromq"`.
    pub fn broker(&self) -> &'static str {
        self.broker
    }

    /// The operation that failed.
    pub fn operation(&self) -> Operation {
        self.operation
    }

    /// Transient or permanent.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == ErrorKind::Transient
    }

    /// The destination involved, if known.
    pub fn destination(&self) -> Option<&str> {
        self.destination.as_deref()
    }

    /// The reason in words, if given.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("broker", &self.broker)
            .field("operation", &self.operation)
            .field("kind", &self.kind)
            .field("code", &self.code)
            .field("destination", &self.destination)
            .field("reason", &self.reason)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.broker, self.operation)?;
        if let Some(destination) = &self.destination {
            write!(f, " `{destination}`")?;
        }
        write!(f, " failed ({})", self.kind)?;
        match (&self.reason, &self.source) {
            (Some(reason), Some(source)) => write!(f, ": {reason}: {source}"),
            (Some(reason), None) => write!(f, ": {reason}"),
            (None, Some(source)) => write!(f, ": {source}"),
            (None, None) => Ok(()),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl Classify for Error {
    fn error_kind(&self) -> ErrorKind {
        self.kind
    }
}

macro_rules! marker {
    ($(#[$doc:meta])* $name:ident, $kind:expr) => {
        $(#[$doc])*
        pub struct $name(BoxError);

        impl $name {
            /// Wraps `error`.
            pub fn new(error: impl Into<BoxError>) -> Self {
                $name(error.into())
            }

            /// The wrapped error.
            pub fn into_inner(self) -> BoxError {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&self.0).finish()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl StdError for $name {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&*self.0 as &(dyn StdError + 'static))
            }
        }

        impl Classify for $name {
            fn error_kind(&self) -> ErrorKind {
                $kind
            }
        }
    };
}

marker!(
    /// Marks an application error (from a handler, say) as transient: the delivery is
    /// requeued and retried.
    ///
    /// ```
    /// use tower_mq_core::error::{kind_of, ErrorKind, Transient};
    /// let err: tower_mq_core::BoxError = Transient::new("database busy").into();
    /// assert_eq!(kind_of(&*err), Some(ErrorKind::Transient));
    /// ```
    Transient,
    ErrorKind::Transient
);

marker!(
    /// Marks an application error as permanent: the delivery goes straight to the
    /// dead-letter destination, without retries.
    ///
    /// ```
    /// use tower_mq_core::error::{kind_of, ErrorKind, Permanent};
    /// let err: tower_mq_core::BoxError = Permanent::new("order id missing").into();
    /// assert_eq!(kind_of(&*err), Some(ErrorKind::Permanent));
    /// ```
    Permanent,
    ErrorKind::Permanent
);

/// The classification of the first error in `error`'s `source()` chain that carries one
/// ([`Error`], [`Transient`], [`Permanent`]), or `None` if none does.
///
/// The layers' classifier extends this with the layers' own errors (timeouts, an open
/// circuit, a rate limit).
pub fn kind_of(error: &(dyn StdError + 'static)) -> Option<ErrorKind> {
    let mut current = Some(error);
    while let Some(err) = current {
        if let Some(e) = err.downcast_ref::<Error>() {
            return Some(e.error_kind());
        }
        if let Some(e) = err.downcast_ref::<Transient>() {
            return Some(e.error_kind());
        }
        if let Some(e) = err.downcast_ref::<Permanent>() {
            return Some(e.error_kind());
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(BoxError);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "wrapped")
        }
    }
    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn display_names_broker_operation_destination_and_kind() {
        let err = Error::permanent("kafka", Operation::Publish)
            .with_destination("orders")
            .with_reason("message too large")
            .with_source(std::io::Error::other("boom"));
        assert_eq!(
            err.to_string(),
            "kafka publish `orders` failed (permanent): message too large: boom"
        );
        assert!(err.source().is_some());
    }

    #[test]
    fn kind_of_walks_the_source_chain() {
        let inner: BoxError = Error::permanent("redis", Operation::Ack).into();
        let outer = Wrapper(Box::new(Wrapper(inner)));
        assert_eq!(kind_of(&outer), Some(ErrorKind::Permanent));
        let plain = std::io::Error::other("x");
        assert_eq!(kind_of(&plain), None);
    }
}
