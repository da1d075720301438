//! Checks the unit tests of several modules share.

use tower_mq_core::{Code, Error, ErrorKind, Operation};

/// `err` is what a service returns for a call made without a ready `poll_ready`
/// ([`Error::called_before_ready`]): permanent, invalid, naming the broker, the
/// operation and the destination.
pub(crate) fn assert_called_before_ready(
    err: &Error,
    broker: &str,
    operation: Operation,
    destination: Option<&str>,
) {
    assert_eq!(err.broker(), broker, "{err}");
    assert_eq!(err.operation(), operation, "{err}");
    assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
    assert_eq!(err.code(), Some(Code::Invalid), "{err}");
    assert_eq!(err.destination(), destination, "{err}");
    assert!(err.to_string().contains("poll_ready"), "{err}");
}
