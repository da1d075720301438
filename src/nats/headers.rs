//! How a [`Message`] travels on NATS: the subject, the reply subject, headers named the
//! way NATS users name them, and the payload.
//!
//! A NATS message has a subject, an optional reply subject, headers (text values; a
//! name may repeat) and a payload. What tower-mq writes is what other NATS clients
//! write and read, and what they write arrives intact:
//!
//! | field            | core NATS                         | JetStream                              |
//! |------------------|-----------------------------------|----------------------------------------|
//! | destination      | subject                           | subject                                |
//! | payload          | payload (any bytes, empty too)    | payload                                |
//! | headers          | headers: text, repeated names kept | headers                               |
//! | key              | header `Message-Key` (text only)  | header `Message-Key`                   |
//! | timestamp        | header `Timestamp` (ms since the epoch) | header `Timestamp` if the message has one, else the time the stream stored it |
//! | message id       | header `Nats-Msg-Id`              | header `Nats-Msg-Id` (the stream deduplicates on it) |
//! | correlation id   | header `Correlation-Id`           | header `Correlation-Id`                |
//! | reply-to         | the reply subject                 | header `Reply-To` (the reply subject carries the stream's ack) |
//! | content type     | header `Content-Type`             | header `Content-Type`                  |
//! | content encoding | header `Content-Encoding`         | header `Content-Encoding`              |
//! | message type     | header `Message-Type`             | header `Message-Type`                  |
//! | app id           | header `App-Id`                   | header `App-Id`                        |
//! | user id          | header `User-Id`                  | header `User-Id`                       |
//! | priority         | refused: NATS has no priorities   | refused                                |
//! | TTL              | refused: nothing is stored to expire | refused (a stream's `max_age` expires messages) |
//! | persistent       | not on the wire: core NATS stores nothing, whatever the flag | not on the wire: the stream's storage decides |
//!
//! The header names are [`PropertyHeaders::http_style`], NATS' default, and can be
//! changed with [`Config::property_headers`]; received names are matched without
//! regard to case (a `content-type` header from another client is the content type).
//! JetStream deduplicates on `Nats-Msg-Id` only: rename the message id's header and the
//! stream no longer sees it.
//!
//! # Publishing
//!
//! NATS header values are text, one line each, and receivers trim the whitespace around
//! them. A message that NATS cannot carry exactly fails to publish with a permanent
//! error naming the header or property: a header value that is not [bytes](HeaderValue::Bytes)
//! (a typed value such as an `i64` or a null), bytes that are not UTF-8 text, contain a
//! line break or start or end with whitespace, a header name that is empty or not
//! printable ASCII without `:`, a key or property value that is not such text, a property
//! that [`Config::property_headers`] names no header for, a priority or a TTL. With
//! [`Config::ignore_unsupported`] such headers and properties are left out instead. A
//! message carrying a header under a property's header name while also setting that
//! property fails in any case: the two would collide on the wire.
//!
//! Message ids are not invented: a message without one is published without
//! `Nats-Msg-Id` (give it an id to make retries safe, see [`jetstream`](super::jetstream)).
//!
//! # Receiving
//!
//! A property header whose one value parses becomes the property; anything else (a
//! value that does not parse, a property header that comes more than once) stays a
//! header, exactly as received, so republishing the message writes it unchanged. Most
//! NATS clients (async-nats, nats.go) keep headers in a map, so the order between
//! different names is not kept on the wire: headers arrive sorted by name, the values of
//! one name in their order. On core NATS the reply subject (a plain requester's inbox)
//! is the reply-to and a `Reply-To` header is an ordinary header; on JetStream the
//! reply subject carries the ack and never becomes the reply-to. A received
//! property header spelled in another case is written back under the configured
//! spelling when the message is published again. NATS does not say whether a message
//! was stored, so a delivery reports the model's default,
//! [persistent](crate::Message::is_persistent).
//!
//! One foreign message cannot arrive: a header block that is not UTF-8 (some clients
//! can send raw bytes in a header value). The async-nats client drops the connection
//! on it and reconnects, so on core NATS it and what was in flight on that connection
//! are lost, and on JetStream it comes back after each ack wait until the consumer's
//! `max_deliver`. The subscriber or consumer goes on after the reconnect.
//!
//! A JetStream delivery's [`Message::timestamp`] is the time the stream stored the
//! message, unless the message carries its own `Timestamp` header (the publisher's
//! time), which wins. So a JetStream message consumed and published again carries its
//! original time in a `Timestamp` header (to milliseconds), as a Kafka record keeps its
//! timestamp; clear it with [`Message::set_timestamp`] to let the new stream's time
//! stand alone.
//!
//! # Example
//!
//! What a plain async-nats subscriber sees of a message tower-mq publishes, and a
//! header NATS cannot carry:
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use tower::ServiceExt;
//! use tower_mq::nats::{Config, Connection, Publisher};
//! use tower_mq::Message;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "nats://127.0.0.1:4222";
//! let plain = async_nats::connect(url).await?;
//! let mut orders = plain.subscribe("orders.created").await?;
//! let connection = Connection::connect(&Config::new(url)).await?;
//! let publisher = Publisher::new(&connection);
//! let order = Message::new("orders.created", r#"{"id":7}"#)
//!     .with_content_type("application/json")
//!     .with_message_id("order-7")
//!     .with_header("tenant", "acme");
//! publisher.clone().oneshot(order).await?;
//!
//! let seen = orders.next().await.ok_or("the subscription ended")?;
//! let headers = seen.headers.unwrap_or_default();
//! let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
//! assert_eq!(header("Content-Type").as_deref(), Some("application/json"));
//! assert_eq!(header("Nats-Msg-Id").as_deref(), Some("order-7"));
//! assert_eq!(header("tenant").as_deref(), Some("acme"));
//!
//! // NATS header values are text: a typed value is refused, not converted.
//! let typed = Message::new("orders.created", "").with_header("attempt", 3i64);
//! let err = publisher.oneshot(typed).await.unwrap_err();
//! assert!(!err.is_transient());
//! # Ok(())
//! # }
//! ```
//!
//! The names are configurable:
//!
//! ```
//! use tower_mq::nats::{headers, Config};
//! use tower_mq::wire::{Property, PropertyHeaders};
//!
//! assert_eq!(headers::MESSAGE_ID, "Nats-Msg-Id");
//! // Correlation ids under the name another team's services already use.
//! let config = Config::new("nats://127.0.0.1:4222").property_headers(
//!     PropertyHeaders::http_style().with_name(Property::CorrelationId, "X-Request-Id"),
//! );
//! # let _ = config;
//! ```
//!
//! [`Message`]: crate::Message
//! [`Message::timestamp`]: crate::Message::timestamp
//! [`Message::set_timestamp`]: crate::Message::set_timestamp
//! [`HeaderValue`]: crate::HeaderValue
//! [`PropertyHeaders::http_style`]: crate::wire::PropertyHeaders::http_style
//! [`Config::property_headers`]: super::Config::property_headers
//! [`Config::ignore_unsupported`]: super::Config::ignore_unsupported

use std::str::FromStr;
use std::time::SystemTime;

use async_nats::header::{HeaderMap, HeaderName};
use async_nats::Subject;
use bytes::Bytes;
use tower_mq_core::{Error, HeaderValue, Message, Operation};

use super::{Config, BROKER};
use crate::wire::{Property, PropertyHeaders};

/// The message id: JetStream drops a second message with the same id within the
/// stream's duplicate window.
pub const MESSAGE_ID: &str = "Nats-Msg-Id";

// A dead letter's headers are the shared convention: `tower_mq_core::dead_letter`.

/// Which flavour of NATS a message goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    Core,
    JetStream,
}

impl Flavour {
    /// Whether `property` travels in a header: everything but a core message's
    /// reply-to, which is the reply subject.
    fn in_header(self, property: Property) -> bool {
        !(self == Flavour::Core && property == Property::ReplyTo)
    }
}

const IGNORE_HINT: &str = "enable Config::ignore_unsupported to publish without it";

/// Checks that `message` can be published on `flavour` (see [`publish_subject`]
/// and [`check_supported`]) and encodes its headers (see [`encode`]): what every
/// publish and request does before handing a message to the client. Returns the
/// client's subject with the headers.
pub(crate) fn prepare(
    message: &Message,
    flavour: Flavour,
    config: &Config,
    operation: Operation,
) -> Result<(Subject, HeaderMap), Error> {
    let subject = publish_subject(message.destination(), operation)?;
    check_supported(message, flavour, config.ignore_unsupported, operation)?;
    Ok((subject, encode(message, flavour, config, operation)?))
}

thread_local! {
    /// The subject this thread published to last, checked. Most publishers send to one
    /// subject again and again: a hit costs a comparison and a reference count instead
    /// of the checks, a copy of the name into a `String` and the client's copy of that
    /// into its `Subject` (two allocations per publish).
    static LAST_SUBJECT: std::cell::RefCell<Option<Subject>> = const { std::cell::RefCell::new(None) };
}

/// `destination` as the client's [`Subject`], once checked (see
/// [`check_publish_subject`]).
pub(crate) fn publish_subject(destination: &str, operation: Operation) -> Result<Subject, Error> {
    // `try_with`: a publish from a thread-local's destructor goes without the cache.
    let cached = LAST_SUBJECT.try_with(|last| {
        last.borrow()
            .as_ref()
            .filter(|subject| subject.as_str() == destination)
            .cloned()
    });
    if let Ok(Some(subject)) = cached {
        return Ok(subject);
    }
    check_publish_subject(destination, operation)?;
    let subject = Subject::from(destination);
    // The first clone makes the name's buffer shared: later clones only count.
    let published = subject.clone();
    let _ = LAST_SUBJECT.try_with(|last| *last.borrow_mut() = Some(subject));
    Ok(published)
}

/// Fails with a permanent error when `subject` cannot be published to: empty, with
/// whitespace, with an empty token (`a..b`, a leading or trailing dot) or a wildcard
/// token (`*`, `>`), which only subscriptions may use.
fn check_publish_subject(subject: &str, operation: Operation) -> Result<(), Error> {
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
            .with_code(tower_mq_core::Code::Invalid)
            .with_destination(subject)
            .with_reason(reason)),
        None => Ok(()),
    }
}

/// Fails with a permanent error when `message` has a property NATS cannot honour,
/// unless `ignore` is set.
fn check_supported(
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
            .with_code(tower_mq_core::Code::Unsupported)
            .with_destination(message.destination())
            .with_reason(format!("{reason}; {IGNORE_HINT}"))),
        None => Ok(()),
    }
}

/// Why `name` cannot be a NATS header name, if it cannot.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.chars().any(|c| !c.is_ascii_graphic() || c == ':') {
        Some("is not printable ASCII without `:`, as NATS header names must be")
    } else {
        None
    }
}

/// Why `value` cannot travel as a NATS header value and come back the same, if it
/// cannot; otherwise the text.
fn as_header_text(value: &[u8]) -> Result<&str, &'static str> {
    let text = std::str::from_utf8(value).map_err(|_| "is not UTF-8 text")?;
    if text.contains(['\r', '\n']) {
        Err("contains a line break")
    } else if text.trim() != text {
        Err("starts or ends with whitespace, which NATS clients trim")
    } else {
        Ok(text)
    }
}

/// The headers carrying `message`'s headers and properties on `flavour`, per
/// `config`'s [`PropertyHeaders`]. See the [module docs](self) for what fails.
///
/// A core request (`operation` [`Operation::Request`]) leaves out reply-to: its
/// reply goes to the requester's inbox.
pub(crate) fn encode(
    message: &Message,
    flavour: Flavour,
    config: &Config,
    operation: Operation,
) -> Result<HeaderMap, Error> {
    let names = &config.property_headers;
    let ignore = config.ignore_unsupported;
    let refuse = |what: String| {
        Error::permanent(BROKER, operation)
            .with_code(tower_mq_core::Code::Unsupported)
            .with_destination(message.destination())
            .with_reason(what)
    };
    let mut map = HeaderMap::new();
    let mut append = |name: &str, text: &str| -> Result<(), Error> {
        let header_name = HeaderName::from_str(name)
            .map_err(|err| refuse(format!("header name `{name}` is not valid in NATS: {err}")))?;
        let value = async_nats::HeaderValue::from_str(text).map_err(|err| {
            refuse(format!(
                "header `{name}` has a value NATS cannot carry: {err}"
            ))
        })?;
        map.append(header_name, value);
        Ok(())
    };

    for (name, value) in message.headers() {
        if let Some(property) = names.property(name) {
            if flavour.in_header(property) && property.encode(message).is_some() {
                return Err(refuse(format!(
                    "header `{name}` collides with the {property}, which travels in header `{}`",
                    names.name(property).unwrap_or(name)
                )));
            }
        }
        let problem = match name_problem(name) {
            Some(problem) => Some(format!("header name `{name}` {problem}")),
            None => match value {
                HeaderValue::Bytes(bytes) => match as_header_text(bytes) {
                    Ok(text) => {
                        append(name, text)?;
                        None
                    }
                    Err(problem) => Some(format!(
                        "header `{name}` {problem}, and NATS header values are text"
                    )),
                },
                other => Some(format!(
                    "header `{name}` is a {} value, and NATS header values are text",
                    other.type_name()
                )),
            },
        };
        match problem {
            Some(_) if ignore => {}
            Some(problem) => return Err(refuse(format!("{problem}; {IGNORE_HINT}"))),
            None => {}
        }
    }

    for property in Property::ALL {
        if !flavour.in_header(property) {
            continue;
        }
        let Some(value) = property.encode(message) else {
            continue;
        };
        let problem = match names.name(property) {
            None => Some(format!(
                "the {property} has no header on NATS (Config::property_headers names none)"
            )),
            Some(name) => match as_header_text(&value) {
                Ok(text) => {
                    append(name, text)?;
                    None
                }
                Err(problem) => Some(format!(
                    "the {property} {problem}, and NATS header values (`{name}`) are text"
                )),
            },
        };
        match problem {
            Some(_) if ignore => {}
            Some(problem) => return Err(refuse(format!("{problem}; {IGNORE_HINT}"))),
            None => {}
        }
    }
    Ok(map)
}

/// The position of `property` in [`Property::ALL`].
fn slot(property: Property) -> usize {
    Property::ALL
        .iter()
        .position(|p| *p == property)
        .unwrap_or_default()
}

/// A received NATS message as a [`Message`]; `stored` is when a JetStream stream
/// stored it. See the [module docs](self).
pub(crate) fn decode(
    names: &PropertyHeaders,
    flavour: Flavour,
    subject: &str,
    native_reply: Option<&str>,
    headers: Option<&HeaderMap>,
    payload: Bytes,
    stored: Option<SystemTime>,
) -> Message {
    let mut message = Message::new(subject, payload);
    let mut entries: Vec<(&str, &[async_nats::HeaderValue])> = headers
        .map(|headers| {
            headers
                .iter()
                .map(|(name, values)| (name.as_ref(), values.as_slice()))
                .collect()
        })
        .unwrap_or_default();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));

    // How many values each property's header has, over every spelling of its name.
    let mut counts = [0usize; Property::ALL.len()];
    for (name, values) in &entries {
        if let Some(property) = names.property(name) {
            counts[slot(property)] += values.len();
        }
    }
    for (name, values) in entries {
        if let Some(property) = names.property(name) {
            if flavour.in_header(property) && counts[slot(property)] == 1 {
                if let [value] = values {
                    if property.decode(value.as_str().as_bytes(), &mut message) {
                        continue;
                    }
                }
            }
        }
        for value in values {
            message.headers_mut().append(name, value.as_str());
        }
    }

    if flavour == Flavour::Core {
        if let Some(reply) = native_reply {
            message.set_reply_to(Some(reply.to_owned()));
        }
    }
    if let Some(stored) = stored {
        if counts[slot(Property::Timestamp)] == 0 {
            message.set_timestamp(Some(stored));
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn config() -> Config {
        Config::new("nats://127.0.0.1:4222")
    }

    fn round_trip(message: &Message, flavour: Flavour) -> Message {
        let map = encode(message, flavour, &config(), Operation::Publish).unwrap();
        let reply = match flavour {
            Flavour::Core => message.reply_to(),
            Flavour::JetStream => Some("$JS.ACK.S.C.1.1.1.0.0"),
        };
        decode(
            &config().property_headers,
            flavour,
            message.destination(),
            reply,
            Some(&map),
            message.payload().clone(),
            None,
        )
    }

    fn full_message() -> Message {
        Message::new("orders.created", "payload")
            .with_header("tenant", "acme")
            .with_header("unicode", "grüße ✓")
            .with_header("x-empty", "")
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_content_type("application/json")
            .with_content_encoding("gzip")
            .with_message_type("order.created")
            .with_app_id("shop")
            .with_user_id("guest")
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
            .with_key("user-42")
            .with_reply_to("replies")
    }

    #[test]
    fn every_property_round_trips_on_both_flavours() {
        let message = full_message();
        assert_eq!(round_trip(&message, Flavour::Core), message);
        assert_eq!(round_trip(&message, Flavour::JetStream), message);
    }

    #[test]
    fn properties_travel_under_http_style_names() {
        let map = encode(
            &full_message(),
            Flavour::JetStream,
            &config(),
            Operation::Publish,
        )
        .unwrap();
        let get = |name: &str| map.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("m-1"));
        assert_eq!(get("Correlation-Id").as_deref(), Some("c-1"));
        assert_eq!(get("Reply-To").as_deref(), Some("replies"));
        assert_eq!(get("Content-Type").as_deref(), Some("application/json"));
        assert_eq!(get("Content-Encoding").as_deref(), Some("gzip"));
        assert_eq!(get("Message-Type").as_deref(), Some("order.created"));
        assert_eq!(get("App-Id").as_deref(), Some("shop"));
        assert_eq!(get("User-Id").as_deref(), Some("guest"));
        assert_eq!(get("Timestamp").as_deref(), Some("1700000000123"));
        assert_eq!(get("Message-Key").as_deref(), Some("user-42"));
        // Core NATS has the reply subject for reply-to.
        let core = encode(
            &full_message(),
            Flavour::Core,
            &config(),
            Operation::Publish,
        )
        .unwrap();
        assert!(core.get("Reply-To").is_none());
    }

    #[test]
    fn repeated_names_keep_their_values_in_order() {
        let mut message = Message::new("s", "");
        message.headers_mut().append("hop", "a");
        message.headers_mut().append("hop", "b");
        message.headers_mut().append("hop", "a");
        assert_eq!(round_trip(&message, Flavour::Core), message);
    }

    #[test]
    fn received_headers_are_sorted_by_name() {
        let message = Message::new("s", "")
            .with_header("zeta", "1")
            .with_header("alpha", "2");
        let back = round_trip(&message, Flavour::Core);
        let names: Vec<&str> = back.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["alpha", "zeta"]);
    }

    #[test]
    fn property_names_match_without_regard_to_case() {
        let mut map = HeaderMap::new();
        map.insert("content-type", "text/plain");
        map.insert("NATS-MSG-ID", "id-1");
        let back = decode(
            &config().property_headers,
            Flavour::Core,
            "s",
            None,
            Some(&map),
            Bytes::new(),
            None,
        );
        assert_eq!(back.content_type(), Some("text/plain"));
        assert_eq!(back.message_id(), Some("id-1"));
        assert!(back.headers().is_empty());
    }

    #[test]
    fn property_headers_that_do_not_parse_or_repeat_stay_headers() {
        let mut map = HeaderMap::new();
        map.insert("Timestamp", "yesterday");
        map.append("Content-Type", "a/b");
        map.append("Content-Type", "c/d");
        map.insert("correlation-id", "x");
        map.insert("Correlation-Id", "y");
        let stored = UNIX_EPOCH + Duration::from_secs(5);
        let back = decode(
            &config().property_headers,
            Flavour::JetStream,
            "s",
            None,
            Some(&map),
            Bytes::new(),
            Some(stored),
        );
        assert_eq!(back.content_type(), None);
        assert_eq!(back.correlation_id(), None);
        // A Timestamp header is there, so the stored time does not replace it.
        assert_eq!(back.timestamp(), None);
        let kept: Vec<(&str, Option<&str>)> = back
            .headers()
            .iter()
            .map(|(n, v)| (n, v.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                ("Content-Type", Some("a/b")),
                ("Content-Type", Some("c/d")),
                ("Correlation-Id", Some("y")),
                ("Timestamp", Some("yesterday")),
                ("correlation-id", Some("x")),
            ]
        );
        // And they go back out as they came.
        let again = encode(&back, Flavour::JetStream, &config(), Operation::Publish).unwrap();
        assert_eq!(again, map);
    }

    #[test]
    fn jetstream_stored_time_is_the_timestamp_unless_the_message_has_its_own() {
        let stored = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let names = config().property_headers;
        let plain = decode(
            &names,
            Flavour::JetStream,
            "s",
            None,
            None,
            Bytes::new(),
            Some(stored),
        );
        assert_eq!(plain.timestamp(), Some(stored));
        let mut map = HeaderMap::new();
        map.insert("Timestamp", "1000");
        let own = decode(
            &names,
            Flavour::JetStream,
            "s",
            None,
            Some(&map),
            Bytes::new(),
            Some(stored),
        );
        assert_eq!(own.timestamp(), Some(UNIX_EPOCH + Duration::from_secs(1)));
    }

    #[test]
    fn reply_subject_is_reply_to_on_core_only() {
        let names = config().property_headers;
        let core = decode(
            &names,
            Flavour::Core,
            "svc",
            Some("_INBOX.x"),
            None,
            Bytes::new(),
            None,
        );
        assert_eq!(core.reply_to(), Some("_INBOX.x"));
        let js = decode(
            &names,
            Flavour::JetStream,
            "svc",
            Some("$JS.ACK.x"),
            None,
            Bytes::new(),
            None,
        );
        assert_eq!(js.reply_to(), None);
        // On core, a Reply-To header is an ordinary header.
        let mut map = HeaderMap::new();
        map.insert("Reply-To", "elsewhere");
        let core = decode(
            &names,
            Flavour::Core,
            "svc",
            None,
            Some(&map),
            Bytes::new(),
            None,
        );
        assert_eq!(core.reply_to(), None);
        assert_eq!(core.headers().get_str("Reply-To"), Some("elsewhere"));
    }

    fn refused(message: Message, needle: &str) {
        let err = encode(&message, Flavour::Core, &config(), Operation::Publish).expect_err(needle);
        assert!(!err.is_transient(), "{err}");
        assert_eq!(err.broker(), "nats");
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some("s"));
        assert!(
            err.to_string().contains(needle),
            "{err} should name {needle}"
        );
        let lenient = config().ignore_unsupported(true);
        let map = encode(&message, Flavour::Core, &lenient, Operation::Publish).unwrap();
        assert!(map.is_empty(), "left out when ignoring: {map:?}");
    }

    #[test]
    fn what_nats_cannot_carry_is_refused_unless_ignored() {
        refused(
            Message::new("s", "").with_header("count", 5i64),
            "header `count` is a i64",
        );
        refused(
            Message::new("s", "").with_header("flag", true),
            "header `flag` is a bool",
        );
        refused(
            Message::new("s", "").with_header("raw", &b"\x00\xff"[..]),
            "header `raw` is not UTF-8",
        );
        refused(
            Message::new("s", "").with_header("n", "a\r\nb"),
            "header `n` contains a line break",
        );
        refused(
            Message::new("s", "").with_header("pad", " x "),
            "header `pad` starts or ends with whitespace",
        );
        refused(
            Message::new("s", "").with_header("bad:name", "v"),
            "header name `bad:name`",
        );
        refused(
            Message::new("s", "").with_header("", "v"),
            "header name `` is empty",
        );
        refused(
            Message::new("s", "").with_header("null", tower_mq_core::HeaderValue::Null),
            "header `null` is a null",
        );
        refused(
            Message::new("s", "").with_key([0u8, 1, 0xff, 0xfe]),
            "the key is not UTF-8",
        );
        refused(
            Message::new("s", "").with_correlation_id("a\nb"),
            "the correlation id contains a line break",
        );
    }

    #[test]
    fn a_property_without_a_header_name_is_refused_unless_ignored() {
        let config =
            config().property_headers(PropertyHeaders::http_style().without(Property::AppId));
        let message = Message::new("s", "").with_app_id("shop");
        let err = encode(&message, Flavour::Core, &config, Operation::Publish).unwrap_err();
        assert!(
            err.to_string().contains("the app id has no header"),
            "{err}"
        );
        let lenient = config.ignore_unsupported(true);
        assert!(
            encode(&message, Flavour::Core, &lenient, Operation::Publish)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_header_colliding_with_a_property_is_refused_even_when_ignoring() {
        let message = Message::new("s", "")
            .with_content_type("a/b")
            .with_header("content-type", "c/d");
        let lenient = config().ignore_unsupported(true);
        let err = encode(&message, Flavour::Core, &lenient, Operation::Publish).unwrap_err();
        assert!(
            err.to_string().contains("collides with the content type"),
            "{err}"
        );
        // On core NATS, reply-to is the reply subject: a Reply-To header is free.
        let message = Message::new("s", "")
            .with_reply_to("r")
            .with_header("Reply-To", "elsewhere");
        assert!(encode(&message, Flavour::Core, &config(), Operation::Publish).is_ok());
        assert!(encode(&message, Flavour::JetStream, &config(), Operation::Publish).is_err());
    }

    #[test]
    fn persistence_is_not_on_the_wire() {
        let message = Message::new("s", "").with_persistent(false);
        for flavour in [Flavour::Core, Flavour::JetStream] {
            let map = encode(&message, flavour, &config(), Operation::Publish).unwrap();
            assert!(map.is_empty(), "{map:?}");
        }
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
    fn the_last_subject_is_reused_only_for_the_same_name() {
        let first = publish_subject("orders.created", Operation::Publish).unwrap();
        let again = publish_subject("orders.created", Operation::Publish).unwrap();
        assert_eq!(first.as_str(), "orders.created");
        // One buffer, shared: no copy of the name for the second publish.
        assert_eq!(first.as_ptr(), again.as_ptr());
        // A name that differs is checked, however like the last one it looks.
        let err = publish_subject("orders..created", Operation::Publish).unwrap_err();
        assert_eq!(err.destination(), Some("orders..created"));
        let other = publish_subject("orders.shipped", Operation::Publish).unwrap();
        assert_eq!(other.as_str(), "orders.shipped");
        assert_eq!(
            publish_subject("orders.shipped", Operation::Publish)
                .unwrap()
                .as_ptr(),
            other.as_ptr()
        );
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
