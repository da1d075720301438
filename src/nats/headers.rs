//! How a [`Message`]'s properties travel in NATS headers.
//!
//! NATS messages carry a subject, an optional reply subject, headers and a payload.
//! The properties of a [`Message`] map onto them as follows, in both directions, so a
//! message published by one tower-mq service is received with the same properties:
//!
//! | property            | NATS                                                        |
//! |---------------------|-------------------------------------------------------------|
//! | destination         | the subject                                                 |
//! | message id          | header [`MESSAGE_ID`] (`Nats-Msg-Id`, JetStream's dedup id) |
//! | correlation id      | header [`CORRELATION_ID`]                                   |
//! | content type        | header [`CONTENT_TYPE`]                                     |
//! | content encoding    | header [`CONTENT_ENCODING`]                                 |
//! | key                 | header [`KEY`] (NATS has no keys; carried for the receiver) |
//! | reply-to            | header [`REPLY_TO`]; core NATS also sets the native reply subject |
//! | persistent = false  | header [`PERSISTENT`] = `false` (absent means persistent)   |
//! | priority            | not supported: publishing fails unless told to ignore it    |
//! | TTL                 | not supported: publishing fails unless told to ignore it    |
//! | other headers       | headers of the same name                                    |
//!
//! On receipt the reserved headers become properties again and are removed from the
//! message's headers. A core NATS message without a [`REPLY_TO`] header (one sent by a
//! plain NATS requester) gets its native reply subject as reply-to; a JetStream
//! delivery never does, because JetStream uses the reply subject for acks.
//!
//! Header names must be ASCII without control characters or `:` and values must not
//! contain CR or LF; anything else fails the publish with a permanent error.
//!
//! ```
//! use tower_mq::nats::headers;
//! assert_eq!(headers::MESSAGE_ID, "Nats-Msg-Id");
//! ```
//!
//! [`Message`]: crate::Message

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use tower_mq_core::{Error, Message, Operation};

use super::BROKER;

/// The message id: JetStream drops a second message with the same id within the
/// stream's duplicate window.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";
/// The correlation id.
pub const CORRELATION_ID: &str = "Tower-Mq-Correlation-Id";
/// The payload's MIME type.
pub const CONTENT_TYPE: &str = "Tower-Mq-Content-Type";
/// The payload's encoding (e.g. `gzip`).
pub const CONTENT_ENCODING: &str = "Tower-Mq-Content-Encoding";
/// The message key.
pub const KEY: &str = "Tower-Mq-Key";
/// Where replies go.
pub const REPLY_TO: &str = "Tower-Mq-Reply-To";
/// `false` for a message published as not persistent.
pub const PERSISTENT: &str = "Tower-Mq-Persistent";

/// On a dead letter: its original `Nats-Msg-Id` (the dead letter gets its own, so
/// that dead-lettering one stream message twice stores it once).
pub const DEAD_LETTER_MESSAGE_ID: &str = "Tower-Mq-Dead-Letter-Message-Id";
/// On a dead letter: why it was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "Tower-Mq-Dead-Letter-Reason";
/// On a dead letter: the subject it was originally published to.
pub const DEAD_LETTER_SUBJECT: &str = "Tower-Mq-Dead-Letter-Subject";
/// On a dead letter: the stream it came from.
pub const DEAD_LETTER_STREAM: &str = "Tower-Mq-Dead-Letter-Stream";
/// On a dead letter: the consumer that dead-lettered it.
pub const DEAD_LETTER_CONSUMER: &str = "Tower-Mq-Dead-Letter-Consumer";
/// On a dead letter: its sequence number in the stream it came from.
pub const DEAD_LETTER_SEQUENCE: &str = "Tower-Mq-Dead-Letter-Sequence";
/// On a dead letter: how many times it had been delivered.
pub const DEAD_LETTER_DELIVERIES: &str = "Tower-Mq-Dead-Letter-Deliveries";

const RESERVED: [&str; 7] = [
    MESSAGE_ID,
    CORRELATION_ID,
    CONTENT_TYPE,
    CONTENT_ENCODING,
    KEY,
    REPLY_TO,
    PERSISTENT,
];

/// Which flavour of NATS a message goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    Core,
    JetStream,
}

/// Fails with a permanent error when `subject` cannot be published to: empty, with
/// whitespace, with an empty token (`a..b`, a leading or trailing dot) or a wildcard
/// token (`*`, `>`), which only subscriptions may use.
pub(crate) fn check_publish_subject(subject: &str, operation: Operation) -> Result<(), Error> {
    let problem = if subject.is_empty() {
        Some("a subject cannot be empty")
    } else if subject.chars().any(char::is_whitespace) {
        Some("a subject cannot contain whitespace")
    } else if subject.split('.').any(str::is_empty) {
        Some("a subject cannot have an empty token")
    } else if subject.split('.').any(|t| t == "*" || t == ">") {
        Some("wildcards are for subscribing; a message is published to one subject")
    } else {
        None
    };
    match problem {
        Some(reason) => Err(Error::permanent(BROKER, operation)
            .with_destination(subject)
            .with_reason(reason)),
        None => Ok(()),
    }
}

/// Fails with a permanent error when `message` has a property NATS cannot honour,
/// unless `ignore` is set.
pub(crate) fn check_supported(
    message: &Message,
    flavour: Flavour,
    ignore: bool,
    operation: Operation,
) -> Result<(), Error> {
    if ignore {
        return Ok(());
    }
    let unsupported = if message.priority().is_some() {
        Some("NATS has no message priorities")
    } else if message.ttl().is_some() {
        Some(match flavour {
            Flavour::Core => "core NATS does not store messages, so a TTL cannot apply",
            Flavour::JetStream => {
                "per-message TTLs are not supported on JetStream here (set max_age on the stream)"
            }
        })
    } else {
        None
    };
    match unsupported {
        Some(reason) => Err(Error::permanent(BROKER, operation)
            .with_destination(message.destination())
            .with_reason(format!(
                "{reason}; enable Config::ignore_unsupported_properties to publish without it"
            ))),
        None => Ok(()),
    }
}

fn insert(
    map: &mut HeaderMap,
    name: &str,
    value: &str,
    message: &Message,
    operation: Operation,
) -> Result<(), Error> {
    let bad = |what: String| {
        Error::permanent(BROKER, operation)
            .with_destination(message.destination())
            .with_reason(what)
    };
    let header_name = HeaderName::from_str(name)
        .map_err(|err| bad(format!("header name `{name}` is not valid in NATS: {err}")))?;
    let header_value = HeaderValue::from_str(value).map_err(|err| {
        bad(format!(
            "header `{name}` has a value NATS cannot carry: {err}"
        ))
    })?;
    map.insert(header_name, header_value);
    Ok(())
}

/// The headers carrying `message`'s headers and properties, with `message_id` as
/// `Nats-Msg-Id` when given (it overrides the message's own). A request leaves out
/// reply-to (`include_reply_to` false): its reply goes to the requester's inbox.
pub(crate) fn encode(
    message: &Message,
    message_id: Option<&str>,
    include_reply_to: bool,
    operation: Operation,
) -> Result<HeaderMap, Error> {
    let mut map = HeaderMap::new();
    for (name, value) in message.headers() {
        insert(
            &mut map,
            name,
            value.as_str().unwrap_or_default(),
            message,
            operation,
        )?;
    }
    let properties = [
        (MESSAGE_ID, message_id.or(message.message_id())),
        (CORRELATION_ID, message.correlation_id()),
        (CONTENT_TYPE, message.content_type()),
        (CONTENT_ENCODING, message.content_encoding()),
        (KEY, message.key_str()),
        (REPLY_TO, message.reply_to().filter(|_| include_reply_to)),
        (PERSISTENT, (!message.is_persistent()).then_some("false")),
    ];
    for (name, value) in properties {
        if let Some(value) = value {
            insert(&mut map, name, value, message, operation)?;
        }
    }
    Ok(map)
}

/// A received NATS message as a [`Message`].
pub(crate) fn decode(
    subject: &str,
    native_reply: Option<&str>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Message {
    let mut message = Message::new(subject, payload);
    let mut reply_to = None;
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name = name.to_string();
            let Some(value) = values.last().map(|v| v.as_str().to_owned()) else {
                continue;
            };
            match name.as_str() {
                MESSAGE_ID => message = message.with_message_id(value),
                CORRELATION_ID => message = message.with_correlation_id(value),
                CONTENT_TYPE => message = message.with_content_type(value),
                CONTENT_ENCODING => message = message.with_content_encoding(value),
                KEY => message = message.with_key(value),
                REPLY_TO => reply_to = Some(value),
                PERSISTENT => message = message.with_persistent(value != "false"),
                _ => {
                    message.headers_mut().insert(name, value);
                }
            }
        }
    }
    if let Some(reply) = reply_to.or_else(|| native_reply.map(str::to_owned)) {
        message = message.with_reply_to(reply);
    }
    debug_assert!(RESERVED.iter().all(|r| !message.headers().contains(r)));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip() {
        let message = Message::new("orders.created", "payload")
            .with_header("tenant", "acme")
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_content_type("application/json")
            .with_content_encoding("gzip")
            .with_key("user-42")
            .with_reply_to("replies")
            .with_persistent(false);
        let map = encode(&message, None, true, Operation::Publish).unwrap();
        let back = decode(
            "orders.created",
            None,
            Some(&map),
            message.payload().clone(),
        );
        assert_eq!(back, message);
    }

    #[test]
    fn native_reply_is_reply_to_when_no_header() {
        let back = decode("svc", Some("_INBOX.x"), None, Bytes::new());
        assert_eq!(back.reply_to(), Some("_INBOX.x"));
    }

    #[test]
    fn invalid_header_is_a_permanent_error() {
        let message = Message::new("s", "").with_header("bad:name", "v");
        let err = encode(&message, None, true, Operation::Publish).unwrap_err();
        assert!(!err.is_transient());
        let message = Message::new("s", "").with_header("n", "a\r\nb");
        assert!(encode(&message, None, true, Operation::Publish).is_err());
    }

    #[test]
    fn invalid_publish_subjects_are_permanent_errors() {
        for subject in [
            "",
            "white space",
            "wild.*.card",
            "all.>",
            "a..b",
            ".a",
            "a.",
        ] {
            let err = check_publish_subject(subject, Operation::Publish).unwrap_err();
            assert!(!err.is_transient(), "{subject}");
            assert_eq!(err.destination(), Some(subject));
        }
        assert!(check_publish_subject("orders.created-1", Operation::Publish).is_ok());
    }

    #[test]
    fn priority_and_ttl_are_rejected_unless_ignored() {
        let message = Message::new("s", "").with_priority(3);
        let err = check_supported(&message, Flavour::Core, false, Operation::Publish).unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.destination(), Some("s"));
        assert!(check_supported(&message, Flavour::Core, true, Operation::Publish).is_ok());
        let message = Message::new("s", "").with_ttl(std::time::Duration::from_secs(1));
        assert!(check_supported(&message, Flavour::JetStream, false, Operation::Publish).is_err());
    }
}
