//! How a [`Message`] travels on each broker's wire: the broker's own conventions.
//!
//! tower-mq shares brokers with services it did not write, so what it writes is what
//! each broker's ordinary clients expect, and what they write arrives intact. Where the
//! broker has a field for a property, the property travels in that field; where it has
//! headers but no field, the property travels in a header whose name is configurable
//! ([`PropertyHeaders`], a `property_headers` option on each broker's config); where the
//! broker has neither, a message that needs one fails to publish with an error naming
//! the property, unless the user opted out (`ignore_unsupported`) or chose the
//! project's envelope framing.
//!
//! # The mapping
//!
//! Defaults shown; every header or field name marked *(conf.)* is configurable. "refused"
//! means the publish fails with a permanent error naming the broker, the destination
//! and the field, unless the publisher is told to `ignore_unsupported` (then the field
//! is left out, or carried where noted).
//!
//! | field | RabbitMQ | Kafka | NATS core / JetStream | Redis Streams | Redis Pub/Sub | ZeroMQ |
//! |---|---|---|---|---|---|---|
//! | destination | exchange (`Routing`: or the routing key on the default exchange) | topic | subject | stream key | channel | PUB: topic frame (SUB filters on it); PUSH, DEALER: not on the wire |
//! | payload | body | record value (an empty payload as a null value with `empty_payloads_as_tombstones`) | payload | field `payload` *(conf.)*, or none | the message | last frame |
//! | key | routing key (text; a non-UTF-8 key is refused; refused with `DefaultExchange` routing) | record key (bytes) | header `Message-Key` *(conf.)*, text | field `key` *(conf.)*, bytes | refused | refused |
//! | headers | `headers` table, every AMQP type kept; names sorted (AMQP tables are maps); a repeated name is refused | record headers: bytes, in order, repeated names and null values kept; typed values refused | headers: text (binary or typed values refused), repeated names kept in order, names sorted | one field each, bytes, in order, repeats kept; typed values refused | refused | refused (except `zmq-frame`: one frame each before the payload) |
//! | timestamp | `timestamp` (seconds) and header `timestamp_in_ms` *(conf.)* when it has milliseconds | record timestamp (ms) | JetStream: stored time; header `Timestamp` *(conf.)* when set, which wins | entry id time; field `timestamp` *(conf.)* when set, which wins | refused | refused |
//! | message id | `message_id` | header `message-id` *(conf.)* | header `Nats-Msg-Id` (JetStream deduplicates on it) | field `message-id` *(conf.)* | refused | refused |
//! | correlation id | `correlation_id` | header `correlation-id` *(conf.)* | header `Correlation-Id` *(conf.)* | field `correlation-id` *(conf.)* | refused | refused |
//! | reply-to | `reply_to` | header `reply-to` *(conf.)* | core: the reply subject; JetStream: header `Reply-To` *(conf.)* | field `reply-to` *(conf.)* | refused | refused |
//! | content type | `content_type` | header `content-type` *(conf.)* (CloudEvents' Kafka binding) | header `Content-Type` *(conf.)* | field `content-type` *(conf.)* | refused | refused |
//! | content encoding | `content_encoding` | header `content-encoding` *(conf.)* | header `Content-Encoding` *(conf.)* | field `content-encoding` *(conf.)* | refused | refused |
//! | message type | `type` | header `message-type` *(conf.)* | header `Message-Type` *(conf.)* | field `message-type` *(conf.)* | refused | refused |
//! | app id | `app_id` | header `app-id` *(conf.)* | header `App-Id` *(conf.)* | field `app-id` *(conf.)* | refused | refused |
//! | user id | `user_id` (RabbitMQ checks it is the connection's user) | header `user-id` *(conf.)* | header `User-Id` *(conf.)* | field `user-id` *(conf.)* | refused | refused |
//! | priority | `priority` | refused | refused | refused | refused | refused |
//! | TTL | `expiration` (ms) | refused | refused (a stream's `max_age` expires messages) | fields `tmq-ttl-ms`, `tmq-expires-at-ms`, honoured by the consumer | refused | refused |
//! | persistent | `delivery_mode` 2, or absent | nothing written: every record is stored (`false` is accepted) | not on the wire: core stores nothing, JetStream per the stream | per the server's persistence; `false` in field `tmq-persistent` | not on the wire (nothing is stored) | not on the wire (nothing is stored) |
//!
//! Redis Pub/Sub and ZeroMQ also offer the project's envelope framing
//! (`Framing::Envelope`, unambiguously marked, off by default): it carries every field
//! and header between tower-mq peers, and receivers with it on still take plain
//! payloads. The layers that add headers (trace, compression) need it on those two
//! brokers; with plain framing their publishes fail with an error naming the header.
//!
//! What a consume-and-republish through tower-mq keeps, per broker: everything the
//! table lists travels back as it came, with these exceptions, each documented in the
//! broker's module: AMQP and NATS header order is by name (both keep headers in maps),
//! a message without a timestamp field or header gains one holding the time the broker
//! gave it (Redis entry id, JetStream stored time), and a property header in another
//! case (NATS) is written back under the configured name.
//!
//! # Property headers
//!
//! On brokers whose headers carry properties, [`PropertyHeaders`] names the header of
//! each property. A received header whose name is a property's and whose value parses
//! becomes that property; one that does not parse stays a header, so nothing is lost.
//! A message that sets a property and also carries a header under that property's name
//! fails to publish (the two would collide on the wire).
//!
//! ```
//! use tower_mq::wire::{Property, PropertyHeaders};
//!
//! let names = PropertyHeaders::kebab_case()
//!     .with_name(Property::CorrelationId, "x-correlation-id")
//!     .without(Property::AppId);
//! assert_eq!(names.name(Property::CorrelationId), Some("x-correlation-id"));
//! assert_eq!(names.name(Property::AppId), None);
//! assert_eq!(names.property("content-type"), Some(Property::ContentType));
//! ```
//!
//! [`Message`]: crate::Message

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tower_mq_core::Message;

/// A property of a [`Message`] that can travel in a header.
///
/// [`Message`]: crate::Message
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Property {
    /// [`Message::key`](crate::Message::key), raw bytes.
    Key,
    /// [`Message::message_id`](crate::Message::message_id).
    MessageId,
    /// [`Message::correlation_id`](crate::Message::correlation_id).
    CorrelationId,
    /// [`Message::reply_to`](crate::Message::reply_to).
    ReplyTo,
    /// [`Message::content_type`](crate::Message::content_type).
    ContentType,
    /// [`Message::content_encoding`](crate::Message::content_encoding).
    ContentEncoding,
    /// [`Message::message_type`](crate::Message::message_type).
    MessageType,
    /// [`Message::app_id`](crate::Message::app_id).
    AppId,
    /// [`Message::user_id`](crate::Message::user_id).
    UserId,
    /// [`Message::timestamp`](crate::Message::timestamp), as milliseconds since the Unix
    /// epoch in decimal.
    Timestamp,
}

impl Property {
    /// Every property, in the order they are written.
    pub const ALL: [Property; 10] = [
        Property::MessageId,
        Property::CorrelationId,
        Property::ReplyTo,
        Property::ContentType,
        Property::ContentEncoding,
        Property::MessageType,
        Property::AppId,
        Property::UserId,
        Property::Timestamp,
        Property::Key,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The property's name in errors and docs (`message id`, `content type`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Property::Key => "key",
            Property::MessageId => "message id",
            Property::CorrelationId => "correlation id",
            Property::ReplyTo => "reply-to",
            Property::ContentType => "content type",
            Property::ContentEncoding => "content encoding",
            Property::MessageType => "message type",
            Property::AppId => "app id",
            Property::UserId => "user id",
            Property::Timestamp => "timestamp",
        }
    }

    /// The property's value in `message`, encoded as it travels in a header.
    pub fn encode(self, message: &Message) -> Option<Bytes> {
        let text = |s: Option<&str>| s.map(|s| Bytes::copy_from_slice(s.as_bytes()));
        match self {
            Property::Key => message.key().map(Bytes::copy_from_slice),
            Property::MessageId => text(message.message_id()),
            Property::CorrelationId => text(message.correlation_id()),
            Property::ReplyTo => text(message.reply_to()),
            Property::ContentType => text(message.content_type()),
            Property::ContentEncoding => text(message.content_encoding()),
            Property::MessageType => text(message.message_type()),
            Property::AppId => text(message.app_id()),
            Property::UserId => text(message.user_id()),
            Property::Timestamp => message
                .timestamp()
                .map(|t| Bytes::from(timestamp_millis(t).to_string())),
        }
    }

    /// Sets the property on `message` from a header value; `false` (and `message`
    /// unchanged) when the value does not parse as this property.
    pub fn decode(self, value: &[u8], message: &mut Message) -> bool {
        if self == Property::Key {
            message.set_key(Some(Bytes::copy_from_slice(value)));
            return true;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return false;
        };
        let owned = || Some(text.to_owned());
        match self {
            Property::Key => unreachable!("handled above"),
            Property::MessageId => message.set_message_id(owned()),
            Property::CorrelationId => message.set_correlation_id(owned()),
            Property::ReplyTo => message.set_reply_to(owned()),
            Property::ContentType => message.set_content_type(owned()),
            Property::ContentEncoding => message.set_content_encoding(owned()),
            Property::MessageType => message.set_message_type(owned()),
            Property::AppId => message.set_app_id(owned()),
            Property::UserId => message.set_user_id(owned()),
            Property::Timestamp => {
                // Only the canonical form, so that re-encoding gives the same bytes.
                match text.parse::<u64>() {
                    Ok(ms) if ms.to_string() == text => {
                        message.set_timestamp(Some(UNIX_EPOCH + Duration::from_millis(ms)))
                    }
                    _ => return false,
                }
            }
        }
        true
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn timestamp_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The header name each [`Property`] travels under, on brokers whose headers carry
/// properties; a property without a name does not travel in a header (the broker has a
/// field for it, or the publish refuses it).
///
/// See the [module docs](self).
#[derive(Clone, PartialEq, Eq)]
pub struct PropertyHeaders {
    names: [Option<Cow<'static, str>>; Property::ALL.len()],
    ignore_case: bool,
}

impl PropertyHeaders {
    /// No property travels in a header.
    pub fn none() -> Self {
        PropertyHeaders {
            names: Default::default(),
            ignore_case: false,
        }
    }

    /// Lower-case, hyphenated names (`message-id`, `content-type`, ...): Kafka's and
    /// Redis' default, after the CloudEvents Kafka binding's `content-type`. The key and
    /// the timestamp get none (Kafka records have fields for both).
    pub fn kebab_case() -> Self {
        PropertyHeaders::none()
            .with_name(Property::MessageId, "message-id")
            .with_name(Property::CorrelationId, "correlation-id")
            .with_name(Property::ReplyTo, "reply-to")
            .with_name(Property::ContentType, "content-type")
            .with_name(Property::ContentEncoding, "content-encoding")
            .with_name(Property::MessageType, "message-type")
            .with_name(Property::AppId, "app-id")
            .with_name(Property::UserId, "user-id")
    }

    /// HTTP-style names (`Content-Type`, `Correlation-Id`, ...), matched without regard
    /// to case, with the message id as `Nats-Msg-Id`: NATS' default.
    pub fn http_style() -> Self {
        let mut names = PropertyHeaders::none()
            .with_name(Property::MessageId, "Nats-Msg-Id")
            .with_name(Property::CorrelationId, "Correlation-Id")
            .with_name(Property::ReplyTo, "Reply-To")
            .with_name(Property::ContentType, "Content-Type")
            .with_name(Property::ContentEncoding, "Content-Encoding")
            .with_name(Property::MessageType, "Message-Type")
            .with_name(Property::AppId, "App-Id")
            .with_name(Property::UserId, "User-Id")
            .with_name(Property::Timestamp, "Timestamp")
            .with_name(Property::Key, "Message-Key");
        names.ignore_case = true;
        names
    }

    /// Names `property`'s header `name`.
    pub fn with_name(mut self, property: Property, name: impl Into<Cow<'static, str>>) -> Self {
        self.names[property.index()] = Some(name.into());
        self
    }

    /// Keeps `property` out of headers.
    pub fn without(mut self, property: Property) -> Self {
        self.names[property.index()] = None;
        self
    }

    /// Whether header names are matched without regard to ASCII case.
    pub fn ignoring_case(mut self, ignore_case: bool) -> Self {
        self.ignore_case = ignore_case;
        self
    }

    /// The header name of `property`, if it travels in one.
    pub fn name(&self, property: Property) -> Option<&str> {
        self.names[property.index()].as_deref()
    }

    /// The property a header named `name` carries, if any.
    pub fn property(&self, name: &str) -> Option<Property> {
        Property::ALL.into_iter().find(|p| {
            self.name(*p).is_some_and(|n| {
                if self.ignore_case {
                    n.eq_ignore_ascii_case(name)
                } else {
                    n == name
                }
            })
        })
    }

    /// The `(header name, value)` of every property `message` sets that travels in a
    /// header, in [`Property::ALL`] order.
    ///
    /// Fails with the property whose header name is also one of the message's own
    /// headers: the two would collide on the wire.
    pub fn encode<'a>(
        &'a self,
        message: &'a Message,
    ) -> Result<impl Iterator<Item = (&'a str, Bytes)> + 'a, Property> {
        for property in Property::ALL {
            if let Some(name) = self.name(property) {
                let collides = message.headers().iter().any(|(n, _)| {
                    if self.ignore_case {
                        n.eq_ignore_ascii_case(name)
                    } else {
                        n == name
                    }
                });
                if collides && property.encode(message).is_some() {
                    return Err(property);
                }
            }
        }
        Ok(Property::ALL.into_iter().filter_map(move |property| {
            let name = self.name(property)?;
            Some((name, property.encode(message)?))
        }))
    }

    /// Reads a received header into `message`: a property's header whose value parses
    /// sets the property (the first time only) and returns `true`; anything else
    /// returns `false` and should be kept as a header.
    pub fn decode(&self, name: &str, value: &[u8], message: &mut Message) -> bool {
        match self.property(name) {
            Some(property) if property.encode(message).is_none() => property.decode(value, message),
            _ => false,
        }
    }
}

impl Default for PropertyHeaders {
    /// [`PropertyHeaders::kebab_case`].
    fn default() -> Self {
        PropertyHeaders::kebab_case()
    }
}

impl fmt::Debug for PropertyHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for property in Property::ALL {
            if let Some(name) = self.name(property) {
                map.entry(&property.as_str(), &name);
            }
        }
        map.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_headers() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let sent = Message::new("t", "p")
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_content_type("application/json")
            .with_timestamp(at)
            .with_key([0u8, 0xff]);
        let names = PropertyHeaders::http_style();
        let encoded: Vec<(String, Bytes)> = names
            .encode(&sent)
            .unwrap()
            .map(|(n, v)| (n.to_owned(), v))
            .collect();
        let shown: Vec<&str> = encoded.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            shown,
            [
                "Nats-Msg-Id",
                "Correlation-Id",
                "Content-Type",
                "Timestamp",
                "Message-Key"
            ]
        );
        let mut received = Message::new("t", "p");
        for (name, value) in &encoded {
            assert!(names.decode(&name.to_ascii_lowercase(), value, &mut received));
        }
        assert_eq!(received, sent);
    }

    #[test]
    fn a_header_that_does_not_parse_stays_a_header() {
        let names = PropertyHeaders::http_style();
        let mut message = Message::new("t", "");
        assert!(!names.decode("Timestamp", b"yesterday", &mut message));
        assert!(!names.decode("Timestamp", b"0017", &mut message));
        assert!(!names.decode("Content-Type", b"\xff", &mut message));
        assert!(!names.decode("X-Other", b"v", &mut message));
        assert_eq!(message, Message::new("t", ""));
        // A second value of a property stays a header.
        assert!(names.decode("Content-Type", b"a/b", &mut message));
        assert!(!names.decode("Content-Type", b"c/d", &mut message));
        assert_eq!(message.content_type(), Some("a/b"));
    }

    #[test]
    fn a_header_colliding_with_a_property_fails() {
        let message = Message::new("t", "")
            .with_content_type("a/b")
            .with_header("content-type", "c/d");
        let names = PropertyHeaders::kebab_case();
        assert_eq!(names.encode(&message).err(), Some(Property::ContentType));
        // Without the property, the header is just a header.
        let header_only = Message::new("t", "").with_header("content-type", "c/d");
        assert_eq!(names.encode(&header_only).unwrap().count(), 0);
    }
}
