//! The codec layers' errors: both permanent.

use std::error::Error as StdError;
use std::fmt;

use tower_mq_core::BoxError;

/// A value that could not be serialized. Permanent: the publisher was not called.
#[derive(Debug)]
pub struct EncodeError {
    destination: String,
    type_name: &'static str,
    source: BoxError,
}

impl EncodeError {
    pub(crate) fn new(destination: &str, type_name: &'static str, source: BoxError) -> Self {
        EncodeError {
            destination: destination.to_owned(),
            type_name,
            source,
        }
    }

    /// The destination the value was meant for.
    pub fn destination(&self) -> &str {
        &self.destination
    }
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot encode a `{}` for `{}`: {}",
            self.type_name, self.destination, self.source
        )
    }
}

impl StdError for EncodeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// A payload that does not decode into the handler's type. Permanent: the delivery goes
/// to the dead-letter destination without retries.
#[derive(Debug)]
pub struct DecodeError {
    destination: String,
    message_id: Option<String>,
    type_name: &'static str,
    source: BoxError,
}

impl DecodeError {
    pub(crate) fn new(
        destination: &str,
        message_id: Option<&str>,
        type_name: &'static str,
        source: BoxError,
    ) -> Self {
        DecodeError {
            destination: destination.to_owned(),
            message_id: message_id.map(str::to_owned),
            type_name,
            source,
        }
    }

    /// The destination the delivery came from.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The message id, if the message had one.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decode a `{}` from `{}`",
            self.type_name, self.destination
        )?;
        if let Some(id) = &self.message_id {
            write!(f, " (message {id})")?;
        }
        write!(f, ": {}", self.source)
    }
}

impl StdError for DecodeError {
    // The serde error is shown in Display; exposing it as a source too would let a
    // classifier walking the chain stop at it. It carries no kind, so that is harmless,
    // and tools that print chains want it.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}
