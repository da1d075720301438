//! Turning lapin's errors into classified tower-mq errors.

use lapin::types::ShortString;

use crate::error::{Error, ErrorKind, Operation};

/// The broker name in errors and metrics: `"rabbitmq"`.
pub const BROKER: &str = "rabbitmq";

/// Reply codes that a retry cannot fix.
fn permanent_reply_code(code: u16) -> bool {
    matches!(
        code,
        // content-too-large, no-route, access-refused, not-found, precondition-failed,
        311 | 312 | 403 | 404 | 406
        // invalid-path (vhost), frame/syntax/command errors, not-allowed, not-implemented
        | 402 | 501 | 502 | 503 | 530 | 540
    )
}

/// Transient or permanent for a lapin error: a lost connection or channel, a missed
/// heartbeat or a forced close are transient; NOT_FOUND, ACCESS_REFUSED,
/// PRECONDITION_FAILED and other reply codes a retry cannot fix are permanent.
pub(crate) fn classify(error: &lapin::Error) -> ErrorKind {
    use lapin::ErrorKind as K;
    match error.kind() {
        K::ProtocolError(amqp) if permanent_reply_code(amqp.get_id()) => ErrorKind::Permanent,
        K::InvalidProtocolVersion(_)
        | K::SerialisationError(_)
        | K::AuthProviderError(_)
        | K::NoDefaultRuntime
        | K::FutureCompleted => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// A classified error for `operation` on `destination` caused by `error`.
pub(crate) fn amqp_error(operation: Operation, destination: &str, error: lapin::Error) -> Error {
    Error::new(BROKER, operation, classify(&error))
        .with_destination(destination)
        .with_source(error)
}

/// A name as an AMQP short string (at most 255 bytes), or a permanent error.
pub(crate) fn short_string(
    value: &str,
    operation: Operation,
    destination: &str,
) -> Result<ShortString, Error> {
    ShortString::try_new(value).map_err(|e| {
        Error::permanent(BROKER, operation)
            .with_destination(destination)
            .with_reason(format!("`{value:.40}...` is not a valid AMQP short string"))
            .with_source(e)
    })
}

/// The connection was closed by the application.
pub(crate) fn closed(operation: Operation, destination: &str) -> Error {
    Error::permanent(BROKER, operation)
        .with_destination(destination)
        .with_reason("the connection was closed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPHardError, AMQPSoftError};

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, "test".into())).into()
    }

    #[test]
    fn lost_connections_are_transient_refusals_permanent() {
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert_eq!(classify(&io), ErrorKind::Transient);
        let heartbeat: lapin::Error = lapin::ErrorKind::MissingHeartbeatError.into();
        assert_eq!(classify(&heartbeat), ErrorKind::Transient);
        let forced = protocol(AMQPHardError::CONNECTIONFORCED.into());
        assert_eq!(classify(&forced), ErrorKind::Transient);
        for soft in [
            AMQPSoftError::NOTFOUND,
            AMQPSoftError::ACCESSREFUSED,
            AMQPSoftError::PRECONDITIONFAILED,
        ] {
            assert_eq!(classify(&protocol(soft.into())), ErrorKind::Permanent);
        }
        let err = amqp_error(
            Operation::Publish,
            "orders",
            protocol(AMQPSoftError::NOTFOUND.into()),
        );
        assert_eq!(err.broker(), "rabbitmq");
        assert_eq!(err.destination(), Some("orders"));
    }

    #[test]
    fn over_long_names_are_permanent_errors_not_panics() {
        let long = "x".repeat(256);
        let err = short_string(&long, Operation::Declare, "q").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Permanent);
        assert!(short_string("ok", Operation::Declare, "q").is_ok());
    }
}
