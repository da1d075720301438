//! Classifying librdkafka's errors as transient or permanent.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaConfRes;
use tower_mq_core::{Error, ErrorKind, Operation};

use super::config::is_secret_property;
use super::BROKER;
use crate::redact::MASK;

/// Whether a retry may help with a librdkafka error code.
///
/// Permanent: what no retry changes, such as a message or batch too large, an invalid
/// or unknown topic (auto-creation off), failed authorization, an invalid
/// configuration or request, a fenced or fatally failed idempotent producer, an
/// unsupported feature or version. Transient: everything else, notably lost
/// connections, timeouts, leader changes, coordinator moves, a full local queue and
/// too few in-sync replicas, which librdkafka or a retry layer get past.
///
/// ```
/// use rdkafka::error::RDKafkaErrorCode;
/// use tower_mq::kafka::error_kind;
/// use tower_mq::ErrorKind;
///
/// assert_eq!(error_kind(RDKafkaErrorCode::MessageSizeTooLarge), ErrorKind::Permanent);
/// assert_eq!(error_kind(RDKafkaErrorCode::AllBrokersDown), ErrorKind::Transient);
/// ```
pub fn error_kind(code: RDKafkaErrorCode) -> ErrorKind {
    use RDKafkaErrorCode::*;
    match code {
        BadMessage
        | InvalidArgument
        | UnknownTopic
        | UnknownPartition
        | UnknownTopicOrPartition
        | InvalidTopic
        | InvalidMessage
        | InvalidMessageSize
        | MessageSizeTooLarge
        | MessageBatchTooLarge
        | InvalidRequiredAcks
        | InvalidTimestamp
        | InvalidRecord
        | InvalidRequest
        | InvalidConfig
        | InvalidPartitions
        | InvalidReplicationFactor
        | InvalidReplicaAssignment
        | InvalidGroupId
        | InvalidSessionTimeout
        | InvalidCommitOffsetSize
        | OffsetMetadataTooLarge
        | PolicyViolation
        | TopicAuthorizationFailed
        | GroupAuthorizationFailed
        | ClusterAuthorizationFailed
        | TransactionalIdAuthorizationFailed
        | SaslAuthenticationFailed
        | Authentication
        | UnsupportedSASLMechanism
        | UnsupportedVersion
        | UnsupportedFeature
        | UnsupportedForMessageFormat
        | UnsupportedCompressionType
        | NotImplemented
        | KeySerialization
        | ValueSerialization
        | Fatal
        | Fenced
        | ProducerFenced
        | OutOfOrderSequenceNumber
        | InvalidProducerEpoch
        | TopicAlreadyExists
        | TopicDeletionDisabled
        | SecurityDisabled => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

/// The kind of a [`KafkaError`]: by its code where it has one; configuration and
/// client creation errors are permanent; the rest transient.
pub(crate) fn kafka_error_kind(error: &KafkaError) -> ErrorKind {
    match error {
        KafkaError::ClientConfig(..)
        | KafkaError::ClientCreation(_)
        | KafkaError::Nul(_)
        | KafkaError::Subscription(_)
        | KafkaError::MessageConsumptionFatal(_) => ErrorKind::Permanent,
        KafkaError::Transaction(err) if err.is_fatal() => ErrorKind::Permanent,
        other => other
            .rdkafka_error_code()
            .map_or(ErrorKind::Transient, error_kind),
    }
}

/// A tower-mq error for `error` during `operation` on `destination`.
pub(crate) fn from_kafka(
    operation: Operation,
    destination: Option<&str>,
    error: KafkaError,
) -> Error {
    let mut err = Error::new(BROKER, operation, kafka_error_kind(&error));
    if let Some(destination) = destination {
        err = err.with_destination(destination);
    }
    err.with_source(without_secrets(error))
}

/// librdkafka's refusal of a property quotes its value: masked when the property is
/// a secret, or unknown (a misspelt `sasl.password` is still a password).
fn without_secrets(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, value)
            if !value.is_empty()
                && (code == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN || is_secret_property(&key)) =>
        {
            KafkaError::ClientConfig(code, description, key, MASK.to_owned())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes_and_errors() {
        assert_eq!(
            error_kind(RDKafkaErrorCode::QueueFull),
            ErrorKind::Transient
        );
        assert_eq!(
            error_kind(RDKafkaErrorCode::MessageTimedOut),
            ErrorKind::Transient
        );
        assert_eq!(
            error_kind(RDKafkaErrorCode::NotLeaderForPartition),
            ErrorKind::Transient
        );
        assert_eq!(
            error_kind(RDKafkaErrorCode::UnknownTopic),
            ErrorKind::Permanent
        );
        assert_eq!(
            kafka_error_kind(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            ErrorKind::Permanent
        );
        assert_eq!(
            kafka_error_kind(&KafkaError::ClientCreation("bad".into())),
            ErrorKind::Permanent
        );
        let err = from_kafka(
            Operation::Publish,
            Some("orders"),
            KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure),
        );
        assert!(err.is_transient());
        assert_eq!(err.broker(), "kafka");
        assert_eq!(err.destination(), Some("orders"));
    }
}
