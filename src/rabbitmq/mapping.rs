//! How a [`Message`] maps to an AMQP 0-9-1 message and back: exchange and routing key,
//! the basic properties, and the `headers` field table with its types kept.
//!
//! The mapping is documented in the [module docs](super#the-wire); this file is the
//! one place that implements it, for publishers, requesters and consumers alike.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use lapin::types::ShortString;
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::BasicProperties;
use tower_mq_core::HeaderValue;

use super::config::Config;
use super::error::BROKER;
use crate::error::{Error, Operation};
use crate::message::{Headers, Message};

/// The header in which a requeue by republishing records how many times the message
/// was delivered before; kept out of a delivered message's headers.
pub(crate) const DELIVERIES_HEADER: &str = "x-tower-mq-deliveries";

/// AMQP's limit on a short string: names, routing keys and most properties.
const SHORT_STRING_MAX: usize = 255;

/// Where a message is published, and with which properties.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
}

/// The exchange, routing key and AMQP properties for `message`, or a permanent error
/// naming what AMQP cannot carry.
pub(crate) fn outgoing(
    message: &Message,
    config: &Config,
    operation: Operation,
) -> Result<Outgoing, Error> {
    let destination = message.destination();
    let refuse = |reason: String| {
        Error::permanent(BROKER, operation)
            .with_code(tower_mq_core::Code::Unsupported)
            .with_destination(destination)
            .with_reason(reason)
    };
    let ignore = config.ignore_unsupported;
    let opt_out = "set Config::ignore_unsupported to publish without it";
    let short = |what: &str, value: &str| {
        ShortString::try_new(value).map_err(|_| {
            refuse(format!(
                "{what} is {} bytes, over AMQP's {SHORT_STRING_MAX}-byte limit for a short string",
                value.len()
            ))
        })
    };

    let key = match message.key() {
        None => None,
        Some(key) if config.routing.uses_key(destination) => {
            Some(std::str::from_utf8(key).map_err(|_| {
                refuse(format!(
                    "key {:?}: an AMQP routing key is text, and this key is not UTF-8",
                    HeaderValue::Bytes(Bytes::copy_from_slice(key))
                ))
            })?)
        }
        Some(_) if ignore => None,
        Some(_) => {
            return Err(refuse(format!(
                "key: with {:?} routing the destination is the routing key, so the message \
                 key has no place on the wire; {opt_out}",
                config.routing
            )))
        }
    };
    let (exchange, routing_key) = config.routing.exchange_and_key(destination, key);
    let exchange = short("the exchange name", exchange)?;
    let routing_key = short("the routing key", routing_key)?;

    let mut props = BasicProperties::default();
    if message.is_persistent() {
        props = props.with_delivery_mode(2);
    }
    if let Some(priority) = message.priority() {
        props = props.with_priority(priority);
    }
    if let Some(ttl) = message.ttl() {
        let mut millis = ttl.as_millis();
        if ttl.subsec_nanos() % 1_000_000 != 0 {
            if !ignore {
                return Err(refuse(format!(
                    "TTL {ttl:?}: AMQP's expiration counts whole milliseconds; {opt_out} \
                     rounded up to the next millisecond"
                )));
            }
            millis += 1;
        }
        props = props.with_expiration(short("the expiration", &millis.to_string())?);
    }
    macro_rules! text {
        ($($what:literal: $value:expr => $with:ident),* $(,)?) => {$(
            if let Some(value) = $value {
                props = props.$with(short($what, value)?);
            }
        )*};
    }
    text! {
        "the message id": message.message_id() => with_message_id,
        "the correlation id": message.correlation_id() => with_correlation_id,
        "reply-to": message.reply_to() => with_reply_to,
        "the content type": message.content_type() => with_content_type,
        "the content encoding": message.content_encoding() => with_content_encoding,
        "the message type": message.message_type() => with_type,
        "the app id": message.app_id() => with_app_id,
        "the user id": message.user_id() => with_user_id,
    }

    let mut millis_header = None;
    if let Some(timestamp) = message.timestamp() {
        match timestamp.duration_since(UNIX_EPOCH) {
            Ok(since) => {
                props = props.with_timestamp(since.as_secs());
                if since.subsec_millis() != 0 {
                    match &config.timestamp_millis_header {
                        Some(name) => {
                            let millis = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
                            millis_header = Some((name.as_str(), millis));
                        }
                        None if ignore => {}
                        None => {
                            return Err(refuse(format!(
                                "timestamp {timestamp:?}: AMQP's timestamp counts whole \
                                 seconds and Config::timestamp_millis_header is off; {opt_out} \
                                 truncated to the second"
                            )))
                        }
                    }
                }
            }
            Err(_) if ignore => {}
            Err(_) => {
                return Err(refuse(format!(
                    "timestamp {timestamp:?}: AMQP timestamps are seconds since 1970, and this \
                     one is earlier; {opt_out}"
                )))
            }
        }
    }

    if !message.headers().is_empty() || millis_header.is_some() {
        let mut table = BTreeMap::new();
        for (name, value) in message.headers() {
            let key = ShortString::try_new(name).map_err(|_| {
                refuse(format!(
                    "header `{name:.40}...`: its name is {} bytes, over AMQP's \
                     {SHORT_STRING_MAX}-byte limit for a field-table name",
                    name.len()
                ))
            })?;
            let value = to_amqp(value).map_err(|why| refuse(format!("header `{name}`: {why}")))?;
            if table.insert(key, value).is_some() {
                return Err(refuse(format!(
                    "header `{name}` appears more than once: an AMQP field table holds one \
                     value per name"
                )));
            }
        }
        if let Some((name, millis)) = millis_header {
            let key = short("Config::timestamp_millis_header", name)?;
            if table.contains_key(name) {
                return Err(refuse(format!(
                    "header `{name}` collides with the timestamp's milliseconds, which travel \
                     under that name (Config::timestamp_millis_header)"
                )));
            }
            table.insert(key, AMQPValue::LongLongInt(millis));
        }
        props = props.with_headers(FieldTable::from(table));
    }
    Ok(Outgoing {
        exchange,
        routing_key,
        properties: props,
    })
}

/// The AMQP field value for a header value, of the matching type.
pub(crate) fn to_amqp(value: &HeaderValue) -> Result<AMQPValue, String> {
    Ok(match value {
        HeaderValue::Bytes(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
        HeaderValue::ByteArray(b) => AMQPValue::ByteArray(ByteArray::from(b.to_vec())),
        HeaderValue::Bool(v) => AMQPValue::Boolean(*v),
        HeaderValue::I8(v) => AMQPValue::ShortShortInt(*v),
        HeaderValue::U8(v) => AMQPValue::ShortShortUInt(*v),
        HeaderValue::I16(v) => AMQPValue::ShortInt(*v),
        HeaderValue::U16(v) => AMQPValue::ShortUInt(*v),
        HeaderValue::I32(v) => AMQPValue::LongInt(*v),
        HeaderValue::U32(v) => AMQPValue::LongUInt(*v),
        HeaderValue::I64(v) => AMQPValue::LongLongInt(*v),
        HeaderValue::F32(v) => AMQPValue::Float(*v),
        HeaderValue::F64(v) => AMQPValue::Double(*v),
        HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        HeaderValue::Timestamp(v) => AMQPValue::Timestamp(*v),
        HeaderValue::Array(values) => AMQPValue::FieldArray(FieldArray::from(
            values.iter().map(to_amqp).collect::<Result<Vec<_>, _>>()?,
        )),
        HeaderValue::Table(entries) => {
            let mut table = BTreeMap::new();
            for (name, value) in entries {
                let key = ShortString::try_new(name.as_str()).map_err(|_| {
                    format!(
                        "nested table name `{name:.40}...` is {} bytes, over AMQP's \
                         {SHORT_STRING_MAX}-byte limit",
                        name.len()
                    )
                })?;
                table.insert(key, to_amqp(value)?);
            }
            AMQPValue::FieldTable(FieldTable::from(table))
        }
        HeaderValue::Null => AMQPValue::Void,
        other => {
            return Err(format!(
                "a {} value has no AMQP field type",
                other.type_name()
            ))
        }
    })
}

/// The header value for an AMQP field value, of the matching type.
pub(crate) fn from_amqp(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::LongString(s) => HeaderValue::Bytes(Bytes::copy_from_slice(s.as_bytes())),
        // Never parsed from the wire (AMQP field tables have no short strings); kept as
        // text, which goes back as a long string.
        AMQPValue::ShortString(s) => HeaderValue::from(s.as_str()),
        AMQPValue::ByteArray(b) => HeaderValue::ByteArray(Bytes::copy_from_slice(b.as_slice())),
        AMQPValue::Boolean(v) => HeaderValue::Bool(*v),
        AMQPValue::ShortShortInt(v) => HeaderValue::I8(*v),
        AMQPValue::ShortShortUInt(v) => HeaderValue::U8(*v),
        AMQPValue::ShortInt(v) => HeaderValue::I16(*v),
        AMQPValue::ShortUInt(v) => HeaderValue::U16(*v),
        AMQPValue::LongInt(v) => HeaderValue::I32(*v),
        AMQPValue::LongUInt(v) => HeaderValue::U32(*v),
        AMQPValue::LongLongInt(v) => HeaderValue::I64(*v),
        AMQPValue::Float(v) => HeaderValue::F32(*v),
        AMQPValue::Double(v) => HeaderValue::F64(*v),
        AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        AMQPValue::Timestamp(v) => HeaderValue::Timestamp(*v),
        AMQPValue::FieldArray(values) => {
            HeaderValue::Array(values.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::FieldTable(table) => HeaderValue::Table(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
                .collect(),
        ),
        AMQPValue::Void => HeaderValue::Null,
    }
}

/// A tower-mq message from an AMQP delivery, or why the delivery cannot be one.
pub(crate) fn incoming(
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    data: Bytes,
    config: &Config,
) -> Result<Message, String> {
    let (destination, key) = config.routing.destination_and_key(exchange, routing_key);
    let mut message =
        Message::new(destination, data).with_persistent(*properties.delivery_mode() == Some(2));
    message.set_key(key.map(Bytes::from));
    message.set_priority(*properties.priority());
    if let Some(expiration) = properties.expiration() {
        let text = expiration.as_str();
        match text.parse::<u64>() {
            // Only the canonical form (RabbitMQ accepts no other), so that publishing the
            // message again writes the same expiration.
            Ok(ms) if ms.to_string() == text => {
                message.set_ttl(Some(Duration::from_millis(ms)));
            }
            _ => {
                return Err(format!(
                    "its expiration {text:?} is not a whole number of milliseconds"
                ))
            }
        }
    }
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    message.set_message_id(text(properties.message_id()));
    message.set_correlation_id(text(properties.correlation_id()));
    message.set_reply_to(text(properties.reply_to()));
    message.set_content_type(text(properties.content_type()));
    message.set_content_encoding(text(properties.content_encoding()));
    message.set_message_type(text(properties.kind()));
    message.set_app_id(text(properties.app_id()));
    message.set_user_id(text(properties.user_id()));
    if let Some(cluster_id) = properties.cluster_id() {
        tracing::debug!(
            cluster_id = cluster_id.as_str(),
            "rabbitmq delivery carries the deprecated cluster_id property, which tower-mq does not keep"
        );
    }
    let seconds = *properties.timestamp();
    if let Some(seconds) = seconds {
        let at = UNIX_EPOCH
            .checked_add(Duration::from_secs(seconds))
            .ok_or_else(|| {
                format!("its timestamp {seconds} is past what this system's clock can hold")
            })?;
        message.set_timestamp(Some(at));
    }
    if let Some(table) = properties.headers() {
        let mut headers = Headers::new();
        for (name, value) in table.inner() {
            let name = name.as_str();
            if name == DELIVERIES_HEADER {
                continue;
            }
            if let (Some(seconds), Some(millis_name)) = (seconds, &config.timestamp_millis_header) {
                if name == millis_name {
                    if let Some(at) = millis_timestamp(value, seconds) {
                        message.set_timestamp(Some(at));
                        continue;
                    }
                }
            }
            headers.append(name, from_amqp(value));
        }
        message = message.with_headers(headers);
    }
    Ok(message)
}

/// The timestamp a milliseconds header gives, when it is exactly what publishing the
/// message again would write: a long within the `timestamp` property's second and not
/// on the second itself. Anything else stays a header, so that nothing changes.
fn millis_timestamp(value: &AMQPValue, seconds: u64) -> Option<SystemTime> {
    let AMQPValue::LongLongInt(millis) = *value else {
        return None;
    };
    let millis = u64::try_from(millis).ok()?;
    (millis / 1000 == seconds && millis % 1000 != 0)
        .then(|| UNIX_EPOCH.checked_add(Duration::from_millis(millis)))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rabbitmq::Routing;

    fn config() -> Config {
        Config::new("amqp://localhost")
    }

    fn every_type() -> Vec<(&'static str, HeaderValue)> {
        let mut nested = BTreeMap::new();
        nested.insert("inner".to_owned(), HeaderValue::I32(-7));
        nested.insert("none".to_owned(), HeaderValue::Null);
        vec![
            ("bytes", HeaderValue::from(&b"\x00\xff\xfe"[..])),
            ("text", HeaderValue::from("acme")),
            (
                "byte-array",
                HeaderValue::ByteArray(Bytes::from_static(b"\x01\x02")),
            ),
            ("bool", HeaderValue::Bool(true)),
            ("i8", HeaderValue::I8(-8)),
            ("u8", HeaderValue::U8(8)),
            ("i16", HeaderValue::I16(-16)),
            ("u16", HeaderValue::U16(16)),
            ("i32", HeaderValue::I32(-32)),
            ("u32", HeaderValue::U32(32)),
            ("i64", HeaderValue::I64(-64)),
            ("f32", HeaderValue::F32(1.5)),
            ("f64", HeaderValue::F64(-2.25)),
            (
                "decimal",
                HeaderValue::Decimal {
                    scale: 2,
                    value: 12345,
                },
            ),
            ("timestamp", HeaderValue::Timestamp(1_700_000_000)),
            (
                "array",
                HeaderValue::Array(vec![HeaderValue::from("a"), HeaderValue::U8(1)]),
            ),
            ("table", HeaderValue::Table(nested)),
            ("null", HeaderValue::Null),
        ]
    }

    #[test]
    fn every_header_type_maps_to_its_amqp_type_and_back() {
        for (name, value) in every_type() {
            let amqp = to_amqp(&value).unwrap();
            assert_eq!(from_amqp(&amqp), value, "{name}: {amqp:?}");
        }
        assert!(matches!(
            to_amqp(&HeaderValue::from("s")).unwrap(),
            AMQPValue::LongString(_)
        ));
        assert!(matches!(
            to_amqp(&HeaderValue::ByteArray(Bytes::new())).unwrap(),
            AMQPValue::ByteArray(_)
        ));
    }

    #[test]
    fn a_message_maps_to_properties_and_back_exactly() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut headers = Headers::new();
        for (name, value) in every_type() {
            headers.append(name, value);
        }
        let sent = Message::new("orders", &b"\x00\xffbody"[..])
            .with_key("order.created")
            .with_headers(headers)
            .with_priority(7)
            .with_ttl(Duration::from_millis(60_000))
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_reply_to("replies")
            .with_content_type("application/octet-stream")
            .with_content_encoding("identity")
            .with_message_type("order.created")
            .with_app_id("shop")
            .with_user_id("guest")
            .with_timestamp(at);
        let out = outgoing(&sent, &config(), Operation::Publish).unwrap();
        assert_eq!(out.exchange.as_str(), "orders");
        assert_eq!(out.routing_key.as_str(), "order.created");
        let p = &out.properties;
        assert_eq!(*p.timestamp(), Some(1_700_000_000));
        assert_eq!(
            p.headers().as_ref().unwrap().inner().get("timestamp_in_ms"),
            Some(&AMQPValue::LongLongInt(1_700_000_000_123))
        );
        assert_eq!(p.expiration().as_ref().unwrap().as_str(), "60000");
        assert_eq!(*p.delivery_mode(), Some(2));
        let got = incoming(
            "orders",
            "order.created",
            p,
            sent.payload().clone(),
            &config(),
        )
        .unwrap();
        // AMQP tables are keyed maps: headers come back ordered by name.
        let mut sorted: Vec<_> = sent.headers().iter().collect();
        sorted.sort_by_key(|(name, _)| *name);
        let mut expected_headers = Headers::new();
        for (name, value) in sorted {
            expected_headers.append(name, value.clone());
        }
        assert_eq!(got, sent.clone().with_headers(expected_headers));
    }

    #[test]
    fn non_persistent_messages_carry_no_delivery_mode() {
        let out = outgoing(
            &Message::new("x", "").with_persistent(false),
            &config(),
            Operation::Publish,
        )
        .unwrap();
        assert_eq!(*out.properties.delivery_mode(), None);
        let one = BasicProperties::default().with_delivery_mode(1);
        let got = incoming("x", "", &one, Bytes::new(), &config()).unwrap();
        assert!(!got.is_persistent());
    }

    #[test]
    fn what_amqp_cannot_carry_is_a_permanent_publish_error() {
        let refused = |message: Message, config: Config, needle: &str| {
            let err = outgoing(&message, &config, Operation::Publish).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Permanent, "{err}");
            assert_eq!(err.broker(), "rabbitmq");
            assert_eq!(err.operation(), Operation::Publish);
            assert_eq!(err.destination(), Some(message.destination()));
            let reason = err.reason().unwrap_or_default();
            assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
        };
        let mut repeated = Headers::new();
        repeated.append("hop", "a");
        repeated.append("hop", "b");
        refused(
            Message::new("x", "").with_headers(repeated),
            config(),
            "header `hop` appears more than once",
        );
        refused(
            Message::new("x", "").with_header("n".repeat(256), "v"),
            config(),
            "256 bytes",
        );
        refused(
            Message::new("x", "").with_key([0xff]),
            config(),
            "not UTF-8",
        );
        refused(
            Message::new("q", "").with_key("k"),
            config().routing(Routing::DefaultExchange),
            "key",
        );
        refused(
            Message::new("x", "").with_ttl(Duration::from_micros(1500)),
            config(),
            "whole milliseconds",
        );
        refused(
            Message::new("x", "").with_timestamp(UNIX_EPOCH - Duration::from_secs(1)),
            config(),
            "earlier",
        );
        refused(
            Message::new("x", "").with_timestamp(UNIX_EPOCH + Duration::from_millis(1500)),
            config().no_timestamp_millis_header(),
            "whole seconds",
        );
        refused(
            Message::new("x", "")
                .with_timestamp(UNIX_EPOCH + Duration::from_millis(1500))
                .with_header("timestamp_in_ms", 1i64),
            config(),
            "collides",
        );
        refused(
            Message::new("x", "").with_message_id("m".repeat(300)),
            config(),
            "the message id is 300 bytes",
        );
    }

    #[test]
    fn ignoring_unsupported_properties_publishes_without_them() {
        let config = config()
            .routing(Routing::DefaultExchange)
            .ignore_unsupported(true)
            .no_timestamp_millis_header();
        let message = Message::new("q", "")
            .with_key("dropped")
            .with_ttl(Duration::from_micros(1500))
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(1500));
        let out = outgoing(&message, &config, Operation::Publish).unwrap();
        assert_eq!(out.routing_key.as_str(), "q");
        assert_eq!(out.properties.expiration().as_ref().unwrap().as_str(), "2");
        assert_eq!(*out.properties.timestamp(), Some(1));
        assert!(out.properties.headers().is_none());
    }

    #[test]
    fn a_millis_header_that_would_not_come_back_the_same_stays_a_header() {
        let props = |millis: AMQPValue| {
            let mut table = FieldTable::default();
            table.insert("timestamp_in_ms".into(), millis);
            BasicProperties::default()
                .with_timestamp(1_700_000_000)
                .with_headers(table)
        };
        for kept in [
            AMQPValue::LongLongInt(1_700_000_000_000), // on the second
            AMQPValue::LongLongInt(1_600_000_000_123), // another second
            AMQPValue::LongInt(5),                     // another type
        ] {
            let got = incoming("x", "", &props(kept.clone()), Bytes::new(), &config()).unwrap();
            assert_eq!(
                got.headers().get("timestamp_in_ms"),
                Some(&from_amqp(&kept))
            );
            assert_eq!(
                got.timestamp(),
                Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
            );
            let again = outgoing(&got, &config(), Operation::Publish).unwrap();
            assert_eq!(again.properties.headers(), props(kept).headers());
        }
        let read = incoming(
            "x",
            "",
            &props(AMQPValue::LongLongInt(1_700_000_000_123)),
            Bytes::new(),
            &config(),
        )
        .unwrap();
        assert!(read.headers().is_empty());
        assert_eq!(
            read.timestamp(),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
    }

    #[test]
    fn deliveries_that_the_model_cannot_hold_are_refused_not_mangled() {
        let huge = BasicProperties::default().with_timestamp(u64::MAX);
        let err = incoming("x", "", &huge, Bytes::new(), &config()).unwrap_err();
        assert!(err.contains("timestamp"), "{err}");
        let odd = BasicProperties::default().with_expiration("soon".into());
        let err = incoming("x", "", &odd, Bytes::new(), &config()).unwrap_err();
        assert!(err.contains("expiration"), "{err}");
        let padded = BasicProperties::default().with_expiration("0100".into());
        assert!(incoming("x", "", &padded, Bytes::new(), &config()).is_err());
    }
}
