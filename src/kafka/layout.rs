//! How a [`Message`] is laid out in a Kafka record, and read back: the record's own
//! key, value, timestamp and headers, properties in headers named by
//! [`PropertyHeaders`]. See the [module docs](super#the-record-layout).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tower_mq_core::{HeaderValue, Message};

use crate::wire::{Property, PropertyHeaders};

/// Header counting deliveries: a nacked message is published again with it
/// incremented (absent means 1). Read on every record, and kept among its headers.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
// A dead letter's headers are the shared convention: `tower_mq_core::dead_letter`.

/// One record header: a name and a value, or none (a null header).
pub(crate) type RecordHeader = (String, Option<Bytes>);

/// The property header names Kafka uses: `names` without the key and the timestamp,
/// which always travel in the record's own fields.
pub(crate) fn kafka_names(names: &PropertyHeaders) -> PropertyHeaders {
    names
        .clone()
        .without(Property::Key)
        .without(Property::Timestamp)
}

/// What a record is made of, before librdkafka sees it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) timestamp: Option<i64>,
    pub(crate) headers: Vec<RecordHeader>,
}

/// Lays `message` out as a record: its timestamp in milliseconds, and its headers in
/// order followed by the header of every property set that no header already carries.
/// `delivery_count` above 1 replaces the delivery count header (added after the
/// headers when absent).
///
/// Fails with the reason when the record cannot carry the message: a typed header
/// value, a header name with a NUL, a property colliding with a header, a priority, a
/// time to live, a timestamp not after the epoch. With `ignore_unsupported` what the
/// record cannot carry is left out instead (a collision still fails: it is a mistake,
/// not a limit of Kafka).
pub(crate) fn to_record(
    message: &Message,
    names: &PropertyHeaders,
    delivery_count: Option<u32>,
    ignore_unsupported: bool,
) -> Result<Record, String> {
    let unsupported = |reason: String| refuse_unless(ignore_unsupported, reason);
    if let Some(priority) = message.priority() {
        unsupported(format!(
            "Kafka has no message priority (priority {priority})"
        ))?;
    }
    if let Some(ttl) = message.ttl() {
        unsupported(format!(
            "Kafka has no per-message time to live (ttl {ttl:?}; retention is per topic)"
        ))?;
    }
    let timestamp = match message.timestamp() {
        None => None,
        Some(at) => match record_timestamp(at) {
            Some(ms) => Some(ms),
            None => {
                unsupported(format!(
                    "the timestamp {at:?} is not a Kafka record timestamp (milliseconds \
                     after the Unix epoch; librdkafka replaces 0 with the current time)"
                ))?;
                None
            }
        },
    };

    let headers = record_headers(message, names, delivery_count, ignore_unsupported)?;
    Ok(Record { timestamp, headers })
}

/// The record headers of `message`; see [`to_record`].
fn record_headers(
    message: &Message,
    names: &PropertyHeaders,
    delivery_count: Option<u32>,
    ignore_unsupported: bool,
) -> Result<Vec<RecordHeader>, String> {
    let unsupported = |reason: String| refuse_unless(ignore_unsupported, reason);
    let count = delivery_count.filter(|n| *n > 1);
    let mut headers = Vec::with_capacity(message.headers().len() + 2);
    let mut count_written = false;
    for (name, value) in message.headers() {
        if name == DELIVERY_COUNT {
            if let Some(n) = count {
                // The first one takes the new count; the others go.
                if !count_written {
                    headers.push((name.to_owned(), Some(Bytes::from(n.to_string()))));
                    count_written = true;
                }
                continue;
            }
        }
        if name.contains('\0') {
            unsupported(format!(
                "header {name:?} has a NUL in its name, which librdkafka readers cut short"
            ))?;
            continue;
        }
        let value = match value {
            HeaderValue::Bytes(bytes) => Some(bytes.clone()),
            HeaderValue::Null => None,
            other => {
                unsupported(format!(
                    "header {name:?} is a {}: Kafka header values are bytes \
                     (HeaderValue::Bytes) or null",
                    other.type_name()
                ))?;
                continue;
            }
        };
        headers.push((name.to_owned(), value));
    }
    if let (Some(n), false) = (count, count_written) {
        headers.push((DELIVERY_COUNT.to_owned(), Some(Bytes::from(n.to_string()))));
    }
    for property in Property::ALL {
        let (Some(name), Some(value)) = (names.name(property), property.encode(message)) else {
            continue;
        };
        let mut same_name = message
            .headers()
            .iter()
            .filter(|(n, _)| names.property(n) == Some(property));
        let mut carried = false;
        let mut collides = false;
        for (_, header) in &mut same_name {
            if header.as_bytes() == Some(&value[..]) && header.is_bytes() {
                carried = true;
            } else {
                collides = true;
            }
        }
        if carried {
            continue;
        }
        if collides {
            return Err(format!(
                "the {property} travels in header {name:?}, and the message also has a \
                 header {name:?} with another value"
            ));
        }
        headers.push((name.to_owned(), Some(value)));
    }
    Ok(headers)
}

/// Milliseconds after the epoch (finer precision truncated); `None` at or before the
/// epoch or past `i64::MAX` milliseconds.
fn record_timestamp(at: SystemTime) -> Option<i64> {
    let since = at.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(since.as_millis()).ok().filter(|ms| *ms > 0)
}

/// The parts of a received record, borrowed.
pub(crate) struct RecordParts<'a> {
    pub(crate) topic: &'a str,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) payload: Option<&'a [u8]>,
    /// Milliseconds since the epoch, whatever the timestamp type.
    pub(crate) timestamp: Option<i64>,
    pub(crate) headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// A message read from a record, and the delivery count its first
/// [`DELIVERY_COUNT`] header states (1 when absent or not a positive number).
///
/// Headers named for a property become that property. When the record's headers are
/// not what [`to_record`] would write for the result (property headers before other
/// headers or in another order, a property's name twice, a value that does not
/// parse), every header also stays a header, in place, so that publishing the message
/// again writes the same record.
pub(crate) fn from_record(record: &RecordParts<'_>, names: &PropertyHeaders) -> (Message, u32) {
    let mut message = Message::new(
        record.topic,
        record
            .payload
            .map(Bytes::copy_from_slice)
            .unwrap_or_default(),
    );
    message.set_key(record.key.map(Bytes::copy_from_slice));
    message.set_timestamp(
        record
            .timestamp
            .and_then(|ms| u64::try_from(ms).ok())
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms)),
    );
    let mut delivery_count = None;
    let mut plain = Vec::with_capacity(record.headers.len());
    for &(name, value) in record.headers {
        if name == DELIVERY_COUNT && delivery_count.is_none() {
            delivery_count = Some(
                value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|n| *n >= 1)
                    .unwrap_or(1),
            );
        }
        match value {
            None => plain.push((name, HeaderValue::Null)),
            Some(value) => {
                if !names.decode(name, value, &mut message) {
                    plain.push((name, HeaderValue::Bytes(Bytes::copy_from_slice(value))));
                }
            }
        }
    }
    let mut decoded = message.clone();
    decoded.headers_mut().extend(plain);
    let exact = record_headers(&decoded, names, None, false).is_ok_and(|again| {
        again.len() == record.headers.len()
            && again
                .iter()
                .zip(record.headers)
                .all(|((n, v), (rn, rv))| n == rn && v.as_deref() == *rv)
    });
    if !exact {
        message
            .headers_mut()
            .extend(record.headers.iter().map(|&(name, value)| {
                let value = match value {
                    None => HeaderValue::Null,
                    Some(v) => HeaderValue::Bytes(Bytes::copy_from_slice(v)),
                };
                (name, value)
            }));
        decoded = message;
    }
    (decoded, delivery_count.unwrap_or(1))
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

/// `Ok` when what Kafka cannot carry is to be left out, else the refusal's reason.
fn refuse_unless(ignore_unsupported: bool, reason: String) -> Result<(), String> {
    if ignore_unsupported {
        Ok(())
    } else {
        Err(format!(
            "{reason}; Config::ignore_unsupported leaves it out"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> PropertyHeaders {
        kafka_names(&PropertyHeaders::kebab_case())
    }

    /// Reads `record` back as it came from the broker.
    fn read(topic: &str, record: &Record, key: Option<&[u8]>, payload: &[u8]) -> (Message, u32) {
        let headers: Vec<(&str, Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        from_record(
            &RecordParts {
                topic,
                key,
                payload: Some(payload),
                timestamp: record.timestamp,
                headers: &headers,
            },
            &names(),
        )
    }

    fn header(name: &str, value: Option<&str>) -> RecordHeader {
        (
            name.to_owned(),
            value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        )
    }

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
    fn properties_follow_the_headers_under_their_kebab_case_names() {
        let message = Message::new("t", "p")
            .with_header("tenant", "acme")
            .with_header("gone", HeaderValue::Null)
            .with_message_id("m")
            .with_content_type("application/json")
            .with_persistent(false)
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let record = to_record(&message, &names(), Some(3), false).unwrap();
        assert_eq!(record.timestamp, Some(1_700_000_000_123));
        assert_eq!(
            record.headers,
            [
                header("tenant", Some("acme")),
                header("gone", None),
                header(DELIVERY_COUNT, Some("3")),
                header("message-id", Some("m")),
                header("content-type", Some("application/json")),
            ]
        );
        let (back, count) = read("t", &record, None, b"p");
        assert_eq!(count, 3);
        assert_eq!(back.message_id(), Some("m"));
        assert_eq!(back.content_type(), Some("application/json"));
        assert_eq!(back.timestamp(), message.timestamp());
        let kept: Vec<&str> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(kept, ["tenant", "gone", DELIVERY_COUNT]);
        assert_eq!(back.headers().get("gone"), Some(&HeaderValue::Null));
    }

    #[test]
    fn a_record_in_any_order_is_written_back_the_same() {
        let record = Record {
            timestamp: Some(5),
            headers: vec![
                header("content-type", Some("text/plain")),
                header("hop", Some("a")),
                header("hop", None),
                header("content-type", Some("text/html")),
                header("message-id", Some("\u{fffd}")),
                header("hop", Some("b")),
            ],
        };
        let (message, count) = read("t", &record, Some(b"\x00\xff"), b"");
        assert_eq!(count, 1);
        assert_eq!(message.content_type(), Some("text/plain"));
        assert_eq!(message.key(), Some(&b"\x00\xff"[..]));
        assert_eq!(message.headers().len(), 6);
        assert_eq!(to_record(&message, &names(), None, false).unwrap(), record);
    }

    #[test]
    fn a_record_at_the_epoch_still_reads_its_properties() {
        let record = Record {
            timestamp: Some(0),
            headers: vec![header("message-id", Some("m"))],
        };
        let (message, _) = read("t", &record, None, b"");
        assert_eq!(message.timestamp(), Some(UNIX_EPOCH));
        assert_eq!(message.message_id(), Some("m"));
        assert!(message.headers().is_empty());
    }

    #[test]
    fn a_header_value_that_is_not_text_stays_a_header() {
        let record = Record {
            timestamp: None,
            headers: vec![(
                "content-type".to_owned(),
                Some(Bytes::from_static(b"\xff\xfe")),
            )],
        };
        let (message, _) = read("t", &record, None, b"x");
        assert_eq!(message.content_type(), None);
        assert_eq!(
            message.headers().get("content-type"),
            Some(&HeaderValue::Bytes(Bytes::from_static(b"\xff\xfe")))
        );
        assert_eq!(to_record(&message, &names(), None, false).unwrap(), record);
    }

    #[test]
    fn a_foreign_delivery_count_is_read_and_kept() {
        let record = Record {
            timestamp: None,
            headers: vec![header(DELIVERY_COUNT, Some("4")), header("x", Some("y"))],
        };
        let (message, count) = read("t", &record, None, b"");
        assert_eq!(count, 4);
        assert_eq!(to_record(&message, &names(), None, false).unwrap(), record);
        // A nack replaces it in place.
        let again = to_record(&message, &names(), Some(5), false).unwrap();
        assert_eq!(
            again.headers,
            [header(DELIVERY_COUNT, Some("5")), header("x", Some("y"))]
        );
        // Kafka keeps no count of its own, so the header is the record; what no nack
        // writes (text, zero, negative, past u32) counts as a first delivery.
        for value in ["many", "0", "-1", "4294967296", "9223372036854775807", ""] {
            let junk = Record {
                timestamp: None,
                headers: vec![header(DELIVERY_COUNT, Some(value))],
            };
            let (message, count) = read("t", &junk, None, b"");
            assert_eq!(count, 1, "{value:?}");
            assert_eq!(message.headers().get_str(DELIVERY_COUNT), Some(value));
        }
    }

    #[test]
    fn what_kafka_cannot_carry_is_refused_or_left_out_when_told() {
        let cases = [
            (
                Message::new("t", "").with_header("n", 5i64),
                "header \"n\" is a i64",
            ),
            (
                Message::new("t", "").with_header("a\0b", "v"),
                "has a NUL in its name",
            ),
            (Message::new("t", "").with_priority(1), "priority"),
            (
                Message::new("t", "").with_ttl(Duration::from_secs(1)),
                "time to live",
            ),
            (
                Message::new("t", "").with_timestamp(UNIX_EPOCH),
                "not a Kafka record timestamp",
            ),
        ];
        for (message, reason) in cases {
            let error = to_record(&message, &names(), None, false).unwrap_err();
            assert!(error.contains(reason), "{error}");
            let record = to_record(&message, &names(), None, true).unwrap();
            assert_eq!(
                record,
                Record {
                    timestamp: None,
                    headers: vec![]
                }
            );
        }
    }

    #[test]
    fn a_header_colliding_with_a_property_is_refused() {
        let message = Message::new("t", "")
            .with_content_type("a/b")
            .with_header("content-type", "c/d");
        let error = to_record(&message, &names(), None, true).unwrap_err();
        assert!(error.contains("content type"), "{error}");
        // The same value is no collision: the header carries the property.
        let same = Message::new("t", "")
            .with_content_type("a/b")
            .with_header("content-type", "a/b");
        let record = to_record(&same, &names(), None, false).unwrap();
        assert_eq!(record.headers, [header("content-type", Some("a/b"))]);
    }

    #[test]
    fn names_are_configurable_and_the_key_and_timestamp_stay_in_their_fields() {
        let names = kafka_names(
            &PropertyHeaders::kebab_case()
                .with_name(Property::CorrelationId, "ce_correlationid")
                .with_name(Property::Key, "key")
                .with_name(Property::Timestamp, "ts"),
        );
        let message = Message::new("t", "")
            .with_key("k")
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(9))
            .with_correlation_id("c");
        let record = to_record(&message, &names, None, false).unwrap();
        assert_eq!(record.headers, [header("ce_correlationid", Some("c"))]);
        assert_eq!(record.timestamp, Some(9));
    }
}
