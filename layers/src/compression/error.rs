//! The compression layers' errors. All are permanent: the same bytes fail the same way.

use std::error::Error as StdError;
use std::fmt;

use tower_mq_core::BoxError;

use super::Encoding;

/// A decompressed payload would exceed the configured limit (a decompression bomb, or
/// a limit set too low).
#[derive(Debug)]
pub struct TooLarge {
    limit: usize,
    destination: Option<String>,
}

impl TooLarge {
    pub(crate) fn new(limit: usize) -> Self {
        TooLarge {
            limit,
            destination: None,
        }
    }

    pub(crate) fn with_destination(mut self, destination: &str) -> Self {
        self.destination = Some(destination.to_owned());
        self
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "decompressed payload")?;
        if let Some(d) = &self.destination {
            write!(f, " from `{d}`")?;
        }
        write!(f, " exceeds the limit of {} bytes", self.limit)
    }
}

impl StdError for TooLarge {}

/// A content encoding this crate does not know.
#[derive(Debug)]
pub struct UnknownEncoding {
    encoding: String,
    destination: Option<String>,
}

impl UnknownEncoding {
    pub(crate) fn new(encoding: &str) -> Self {
        UnknownEncoding {
            encoding: encoding.to_owned(),
            destination: None,
        }
    }

    pub(crate) fn with_destination(mut self, destination: &str) -> Self {
        self.destination = Some(destination.to_owned());
        self
    }

    /// The encoding as the message named it.
    pub fn encoding(&self) -> &str {
        &self.encoding
    }
}

impl fmt::Display for UnknownEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown content encoding `{}`", self.encoding)?;
        if let Some(d) = &self.destination {
            write!(f, " on a message from `{d}`")?;
        }
        Ok(())
    }
}

impl StdError for UnknownEncoding {}

/// A payload that does not decompress with the encoding it claims.
#[derive(Debug)]
pub struct CorruptPayload {
    encoding: Encoding,
    destination: String,
    source: BoxError,
}

impl CorruptPayload {
    pub(crate) fn new(encoding: Encoding, destination: &str, source: BoxError) -> Self {
        CorruptPayload {
            encoding,
            destination: destination.to_owned(),
            source,
        }
    }
}

impl fmt::Display for CorruptPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "payload from `{}` is not valid {}: {}",
            self.destination, self.encoding, self.source
        )
    }
}

impl StdError for CorruptPayload {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

/// A payload that could not be compressed.
#[derive(Debug)]
pub struct CompressError {
    encoding: Encoding,
    destination: String,
    source: std::io::Error,
}

impl CompressError {
    pub(crate) fn new(encoding: Encoding, destination: &str, source: std::io::Error) -> Self {
        CompressError {
            encoding,
            destination: destination.to_owned(),
            source,
        }
    }
}

impl fmt::Display for CompressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {}-compress a payload for `{}`: {}",
            self.encoding, self.destination, self.source
        )
    }
}

impl StdError for CompressError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}
