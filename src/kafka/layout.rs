//! How a [`Message`] is laid out in a Kafka record, and read back.

use std::time::Duration;

use bytes::Bytes;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::Message as _;
use tower_mq_core::Message;

/// Header carrying [`Message::message_id`].
pub const MESSAGE_ID: &str = "tmq-message-id";
/// Header carrying [`Message::correlation_id`].
pub const CORRELATION_ID: &str = "tmq-correlation-id";
/// Header carrying [`Message::reply_to`].
pub const REPLY_TO: &str = "tmq-reply-to";
/// Header carrying [`Message::content_type`].
pub const CONTENT_TYPE: &str = "tmq-content-type";
/// Header carrying [`Message::content_encoding`].
pub const CONTENT_ENCODING: &str = "tmq-content-encoding";
/// Header set to `false` for a non-persistent message (absent otherwise).
pub const PERSISTENT: &str = "tmq-persistent";
/// Header carrying a priority Kafka does not honour (only with `ignore_unsupported`).
pub const PRIORITY: &str = "tmq-priority";
/// Header carrying a TTL in milliseconds Kafka does not honour (only with
/// `ignore_unsupported`).
pub const TTL_MS: &str = "tmq-ttl-ms";
/// Header counting deliveries: a nacked message is published again with it
/// incremented (absent means 1).
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// Header on a dead letter: why it was rejected.
pub const DEATH_REASON: &str = "x-death-reason";
/// Header on a dead letter: the topic it was consumed from.
pub const ORIGINAL_DESTINATION: &str = "x-original-destination";
/// Header on a dead letter: the partition it was consumed from.
pub const ORIGINAL_PARTITION: &str = "x-original-partition";
/// Header on a dead letter: its offset in that partition.
pub const ORIGINAL_OFFSET: &str = "x-original-offset";

/// Headers that carry properties, not user headers.
const PROPERTIES: [&str; 9] = [
    MESSAGE_ID,
    CORRELATION_ID,
    REPLY_TO,
    CONTENT_TYPE,
    CONTENT_ENCODING,
    PERSISTENT,
    PRIORITY,
    TTL_MS,
    DELIVERY_COUNT,
];

/// The record headers of `message`: its headers, then its properties. Priority and
/// TTL are written only when the caller decided to carry them.
pub(crate) fn to_headers(message: &Message, delivery_count: Option<u32>) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(message.headers().len() + 6);
    for (name, value) in message.headers() {
        if PROPERTIES.contains(&name) {
            continue;
        }
        headers = headers.insert(Header {
            key: name,
            value: value.as_bytes(),
        });
    }
    let properties = [
        (MESSAGE_ID, message.message_id().map(str::to_owned)),
        (CORRELATION_ID, message.correlation_id().map(str::to_owned)),
        (REPLY_TO, message.reply_to().map(str::to_owned)),
        (CONTENT_TYPE, message.content_type().map(str::to_owned)),
        (
            CONTENT_ENCODING,
            message.content_encoding().map(str::to_owned),
        ),
        (
            PERSISTENT,
            (!message.is_persistent()).then(|| "false".to_owned()),
        ),
        (PRIORITY, message.priority().map(|p| p.to_string())),
        (TTL_MS, message.ttl().map(|t| t.as_millis().to_string())),
        (
            DELIVERY_COUNT,
            delivery_count.filter(|&n| n > 1).map(|n| n.to_string()),
        ),
    ];
    for (name, value) in properties {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key: name,
                value: Some(&value),
            });
        }
    }
    headers
}

/// A message read from a record, and the delivery count its header states (1 when
/// absent). Keys and header values that are not UTF-8 are read lossily; a header
/// without a value reads as empty.
pub(crate) fn from_record(record: &BorrowedMessage<'_>) -> (Message, u32) {
    let payload = record
        .payload()
        .map(Bytes::copy_from_slice)
        .unwrap_or_default();
    let mut message = Message::new(record.topic(), payload);
    if let Some(key) = record.key() {
        message.set_key(Some(Bytes::copy_from_slice(key)));
    }
    let mut delivery_count = 1;
    if let Some(headers) = record.headers() {
        for header in headers.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            match header.key {
                MESSAGE_ID => message.set_message_id(Some(value)),
                CORRELATION_ID => message.set_correlation_id(Some(value)),
                REPLY_TO => message.set_reply_to(Some(value)),
                CONTENT_TYPE => message.set_content_type(Some(value)),
                CONTENT_ENCODING => message.set_content_encoding(Some(value)),
                PERSISTENT => message.set_persistent(value != "false"),
                PRIORITY => message.set_priority(value.parse().ok()),
                TTL_MS => message.set_ttl(value.parse().ok().map(Duration::from_millis)),
                DELIVERY_COUNT => delivery_count = value.parse().unwrap_or(1).max(1),
                name => {
                    message.headers_mut().insert(name, value);
                }
            }
        }
    }
    (message, delivery_count)
}

/// Whether `topic` is a legal Kafka topic name: 1 to 249 of `[a-zA-Z0-9._-]`, and not
/// `.` or `..`.
pub(crate) fn is_valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(is_valid_topic("orders.v1_eu-west"));
        for bad in [
            "",
            ".",
            "..",
            "white space",
            "wild.*.card",
            &"x".repeat(250),
        ] {
            assert!(!is_valid_topic(bad), "{bad:?}");
        }
    }

    #[test]
    fn properties_become_headers() {
        let message = Message::new("t", "p")
            .with_header("tenant", "acme")
            .with_message_id("m")
            .with_persistent(false);
        let headers = to_headers(&message, Some(3));
        let names: Vec<&str> = headers.iter().map(|h| h.key).collect();
        assert_eq!(names, ["tenant", MESSAGE_ID, PERSISTENT, DELIVERY_COUNT]);
    }
}
