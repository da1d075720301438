//! How a [`Message`] is laid out as Redis stream fields, and in a Pub/Sub envelope.
//!
//! The layout is documented in the [module docs](super#the-stream-entry-layout).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::BROKER;
use crate::wire::{Property, PropertyHeaders};
use crate::{Error, HeaderValue, Message, Operation};

/// The fields of one entry, in order: names and values are bytes, as Redis stores them.
pub(crate) type Fields = Vec<(Bytes, Bytes)>;

/// Which stream fields carry what: the payload field, the property fields, and the
/// prefix of the few fields only tower-mq reads (TTL, persistence, priority, re-add
/// count). Every other field is a header under its own name.
///
/// The default is the one in the [module docs](super#the-stream-entry-layout):
/// payload in `payload`, key in `key`, timestamp in `timestamp`, properties under
/// [`PropertyHeaders::kebab_case`] names, control fields prefixed `tmq-`. Set it on
/// the [`Config`](super::Config) so that publishers and consumers agree.
///
/// ```
/// use tower_mq::redis::{Config, StreamLayout};
/// use tower_mq::wire::{Property, PropertyHeaders};
///
/// // Entries written by a script that puts the body in `data` and the content type in
/// // `mime`.
/// let layout = StreamLayout::new()
///     .payload_field("data")
///     .property_fields(
///         StreamLayout::default_property_fields().with_name(Property::ContentType, "mime"),
///     );
/// let config = Config::new("redis://127.0.0.1:6379").stream_layout(layout);
/// # let _ = config;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLayout {
    pub(crate) payload: Option<Cow<'static, str>>,
    pub(crate) properties: PropertyHeaders,
    pub(crate) control_prefix: Cow<'static, str>,
    /// Prefix of header fields: empty on streams, `h:` in the Pub/Sub envelope.
    header_prefix: &'static str,
}

impl StreamLayout {
    /// The default layout (see the [type docs](StreamLayout)).
    pub fn new() -> Self {
        StreamLayout {
            payload: Some(Cow::Borrowed("payload")),
            properties: StreamLayout::default_property_fields(),
            control_prefix: Cow::Borrowed("tmq-"),
            header_prefix: "",
        }
    }

    /// The default property fields: [`PropertyHeaders::kebab_case`] plus `key` for the
    /// key and `timestamp` for the timestamp (decimal milliseconds since the Unix epoch).
    pub fn default_property_fields() -> PropertyHeaders {
        PropertyHeaders::kebab_case()
            .with_name(Property::Key, "key")
            .with_name(Property::Timestamp, "timestamp")
    }

    /// The layout of the Pub/Sub envelope: private names that cannot collide (`h:` for
    /// headers, `p:` for properties), so any message fits.
    pub(crate) fn envelope() -> Self {
        let mut properties = PropertyHeaders::none();
        for (property, name) in [
            (Property::MessageId, "p:message-id"),
            (Property::CorrelationId, "p:correlation-id"),
            (Property::ReplyTo, "p:reply-to"),
            (Property::ContentType, "p:content-type"),
            (Property::ContentEncoding, "p:content-encoding"),
            (Property::MessageType, "p:message-type"),
            (Property::AppId, "p:app-id"),
            (Property::UserId, "p:user-id"),
            (Property::Timestamp, "p:timestamp"),
            (Property::Key, "p:key"),
        ] {
            properties = properties.with_name(property, name);
        }
        StreamLayout {
            payload: Some(Cow::Borrowed("payload")),
            properties,
            control_prefix: Cow::Borrowed("p:"),
            header_prefix: "h:",
        }
    }

    /// Stores the payload in field `name` (default `payload`).
    pub fn payload_field(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.payload = Some(name.into());
        self
    }

    /// A layout without a payload field, for streams whose entries are records of
    /// named fields: every field that is not a property or control field is delivered
    /// as a header (binary-safe, in entry order) and the payload is empty. Publishing a
    /// message with a non-empty payload is refused. Add
    /// `property_fields(PropertyHeaders::none())` to deliver literally every
    /// field as a header; a consumed message then has its entry's time as timestamp
    /// and no field to write it to, so publishing it again needs `ignore_unsupported`
    /// (which leaves the timestamp out and writes the same fields).
    pub fn no_payload_field(mut self) -> Self {
        self.payload = None;
        self
    }

    /// Names the field of each property (default:
    /// [`default_property_fields`](Self::default_property_fields)). A property without
    /// a field cannot be published (unless the publisher ignores unsupported
    /// properties, which then leaves it out).
    pub fn property_fields(mut self, properties: PropertyHeaders) -> Self {
        self.properties = properties;
        self
    }

    /// The prefix of the fields only tower-mq reads: `<prefix>ttl-ms`,
    /// `<prefix>expires-at-ms`, `<prefix>persistent`, `<prefix>priority` and
    /// `<prefix>redeliveries` (default `tmq-`).
    pub fn control_prefix(mut self, prefix: impl Into<Cow<'static, str>>) -> Self {
        self.control_prefix = prefix.into();
        self
    }

    /// The name of control field `control`.
    pub(crate) fn control(&self, control: Control) -> String {
        format!("{}{}", self.control_prefix, control.suffix())
    }

    fn control_of(&self, name: &str) -> Option<Control> {
        let suffix = name.strip_prefix(self.control_prefix.as_ref())?;
        Control::ALL.into_iter().find(|c| c.suffix() == suffix)
    }
}

impl Default for StreamLayout {
    fn default() -> Self {
        StreamLayout::new()
    }
}

/// The fields only tower-mq reads: what has no convention on Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    TtlMs,
    ExpiresAtMs,
    Persistent,
    Priority,
    /// How many times a message was re-added to its stream by a nack (so the delivery
    /// count survives a re-add).
    Redeliveries,
}

impl Control {
    const ALL: [Control; 5] = [
        Control::TtlMs,
        Control::ExpiresAtMs,
        Control::Persistent,
        Control::Priority,
        Control::Redeliveries,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Control::TtlMs => "ttl-ms",
            Control::ExpiresAtMs => "expires-at-ms",
            Control::Persistent => "persistent",
            Control::Priority => "priority",
            Control::Redeliveries => "redeliveries",
        }
    }
}

fn refusal(message: &Message, reason: String) -> Error {
    Error::permanent(BROKER, Operation::Publish)
        .with_code(tower_mq_core::Code::Unsupported)
        .with_destination(message.destination().to_owned())
        .with_reason(reason)
}

fn field(name: &str, value: Bytes) -> (Bytes, Bytes) {
    (Bytes::copy_from_slice(name.as_bytes()), value)
}

/// Encodes `message` as fields in `layout`: the payload, the headers in order, the
/// properties, then the control fields.
///
/// Refused (permanent errors naming the field): a header whose value is not bytes
/// (Redis fields hold bytes), a header name with a control character (CR, LF, ...),
/// a header named like the payload field, a control field,
/// or the field of a property the message also sets; a non-empty payload in a layout
/// without a payload field; a property without a field and a priority, unless
/// `ignore_unsupported` (then a property without a field is left out and a priority is
/// carried, not honoured).
pub(crate) fn encode(
    layout: &StreamLayout,
    message: &Message,
    ignore_unsupported: bool,
) -> Result<Fields, Error> {
    check_destination(message)?;
    let mut fields = Vec::with_capacity(2 + message.headers().len());
    match layout.payload.as_deref() {
        Some(name) => fields.push(field(name, message.payload().clone())),
        None if message.payload().is_empty() => {}
        None => {
            return Err(refusal(
                message,
                "the stream layout has no payload field, and the payload is not empty".into(),
            ))
        }
    }
    for (name, value) in message.headers() {
        let HeaderValue::Bytes(bytes) = value else {
            return Err(refusal(
                message,
                format!(
                    "header `{name}` is a {} value; Redis fields hold plain bytes only, so it \
                     could not be read back as it is",
                    value.type_name()
                ),
            ));
        };
        if name.chars().any(char::is_control) {
            return Err(refusal(
                message,
                format!(
                    "header {name:?} has a control character in its name; consumers refuse \
                     such field names as malformed"
                ),
            ));
        }
        if layout.header_prefix.is_empty() {
            if layout.payload.as_deref() == Some(name) {
                return Err(refusal(
                    message,
                    format!("header `{name}` has the name of the payload field"),
                ));
            }
            if layout.control_of(name).is_some() {
                return Err(refusal(
                    message,
                    format!("header `{name}` has the name of a tower-mq control field"),
                ));
            }
        }
        let name = format!("{}{name}", layout.header_prefix);
        fields.push(field(&name, bytes.clone()));
    }
    if layout.header_prefix.is_empty() {
        let properties = layout.properties.encode(message).map_err(|property| {
            let name = layout.properties.name(property).unwrap_or_default();
            refusal(
                message,
                format!("header `{name}` collides with the field of the {property}"),
            )
        })?;
        fields.extend(properties.map(|(name, value)| field(name, value)));
    } else {
        // Prefixed header names cannot collide with property fields.
        fields.extend(Property::ALL.into_iter().filter_map(|property| {
            let name = layout.properties.name(property)?;
            Some(field(name, property.encode(message)?))
        }));
    }
    if !ignore_unsupported {
        if let Some(property) = Property::ALL
            .into_iter()
            .find(|p| layout.properties.name(*p).is_none() && p.encode(message).is_some())
        {
            return Err(refusal(
                message,
                format!(
                    "the {property} has no field in this stream layout (name one, or ignore \
                     unsupported properties to leave it out)"
                ),
            ));
        }
    }
    if let Some(priority) = message.priority() {
        if !ignore_unsupported {
            return Err(refusal(
                message,
                "Redis cannot honour message priority (enable ignore_unsupported to carry it \
                 unhonoured)"
                    .into(),
            ));
        }
        fields.push(field(
            &layout.control(Control::Priority),
            Bytes::from(priority.to_string()),
        ));
    }
    if !message.is_persistent() {
        fields.push(field(
            &layout.control(Control::Persistent),
            Bytes::from_static(b"false"),
        ));
    }
    if let Some(ttl) = message.ttl() {
        let ttl_ms = millis(ttl);
        fields.push(field(
            &layout.control(Control::TtlMs),
            Bytes::from(ttl_ms.to_string()),
        ));
        fields.push(field(
            &layout.control(Control::ExpiresAtMs),
            Bytes::from(now_ms().saturating_add(ttl_ms).to_string()),
        ));
    }
    Ok(fields)
}

/// An empty destination is refused: Redis would take `""` as a key or channel name,
/// but it is always a mistake.
pub(crate) fn check_destination(message: &Message) -> Result<(), Error> {
    if message.destination().is_empty() {
        return Err(Error::permanent(BROKER, Operation::Publish)
            .with_destination(String::new())
            .with_reason("the destination (stream or channel name) is empty"));
    }
    Ok(())
}

/// Whether a plain Pub/Sub payload carries all of `message`. A non-persistent message
/// is plain (Pub/Sub stores nothing anyway).
pub(crate) fn is_plain(message: &Message) -> bool {
    message.headers().is_empty()
        && message.priority().is_none()
        && message.ttl().is_none()
        && Property::ALL
            .into_iter()
            .all(|property| property.encode(message).is_none())
}

/// What `message` carries besides its payload that a plain Pub/Sub payload cannot, for
/// an error message.
pub(crate) fn beyond_payload(message: &Message) -> Vec<String> {
    let mut what: Vec<String> = Vec::new();
    for (name, _) in message.headers() {
        let header = format!("header `{name}`");
        if !what.contains(&header) {
            what.push(header);
        }
    }
    for property in Property::ALL {
        if property.encode(message).is_some() {
            what.push(property.as_str().to_owned());
        }
    }
    if message.priority().is_some() {
        what.push("priority".to_owned());
    }
    if message.ttl().is_some() {
        what.push("TTL".to_owned());
    }
    what
}

/// A message decoded from fields, with what the consumer needs besides it.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) message: Message,
    /// Wall-clock deadline (ms since the Unix epoch) after which it must not be delivered.
    pub(crate) expires_at_ms: Option<u64>,
    /// Re-adds by nack so far.
    pub(crate) redeliveries: u32,
}

impl Decoded {
    pub(crate) fn is_expired(&self) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms() >= at)
    }
}

/// A number in its canonical decimal form only, so that encoding it again gives the
/// same bytes; anything else stays a header.
fn canonical<T: std::str::FromStr + ToString>(value: &[u8]) -> Option<T> {
    let text = std::str::from_utf8(value).ok()?;
    let parsed: T = text.parse().ok()?;
    (parsed.to_string() == text).then_some(parsed)
}

/// Decodes the fields of an entry (or an envelope) in `layout`; `entry_time` is the
/// time in the entry id, the timestamp of an entry without a timestamp field.
///
/// Fails, with the reason, on what cannot be delivered intact: a field name that is not
/// UTF-8 or has a control character (header names are text) or a missing payload field.
pub(crate) fn decode(
    layout: &StreamLayout,
    destination: &str,
    fields: &[(Bytes, Bytes)],
    entry_time: Option<SystemTime>,
) -> Result<Decoded, String> {
    let mut message = Message::new(destination, Bytes::new());
    let mut expires_at_ms = None;
    let mut redeliveries = 0;
    let mut has_payload = false;
    let mut has_timestamp_field = false;
    let timestamp_field = layout.properties.name(Property::Timestamp);
    for (name, value) in fields {
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(format!(
                "field name {:?} is not UTF-8 (header names are text)",
                String::from_utf8_lossy(name)
            ));
        };
        if name.chars().any(char::is_control) {
            // CR and LF end a header line in the protocols a header travels on next.
            return Err(format!(
                "field name {name:?} has a control character (header names are text \
                 without CR, LF or other control characters)"
            ));
        }
        if !has_payload && layout.payload.as_deref() == Some(name) {
            message.set_payload(value.clone());
            has_payload = true;
            continue;
        }
        has_timestamp_field |= timestamp_field == Some(name);
        if layout.properties.decode(name, value, &mut message) {
            continue;
        }
        let control = match layout.control_of(name) {
            Some(Control::TtlMs) if message.ttl().is_none() => canonical(value)
                .map(|ms| message.set_ttl(Some(Duration::from_millis(ms))))
                .is_some(),
            Some(Control::ExpiresAtMs) if expires_at_ms.is_none() => {
                expires_at_ms = canonical(value);
                expires_at_ms.is_some()
            }
            Some(Control::Persistent) if message.is_persistent() && value.as_ref() == b"false" => {
                message.set_persistent(false);
                true
            }
            Some(Control::Priority) if message.priority().is_none() => canonical(value)
                .map(|p| message.set_priority(Some(p)))
                .is_some(),
            Some(Control::Redeliveries) if redeliveries == 0 => {
                canonical(value).map(|n| redeliveries = n).is_some()
            }
            _ => false,
        };
        if control {
            continue;
        }
        let header = if layout.header_prefix.is_empty() {
            name
        } else {
            name.strip_prefix(layout.header_prefix).unwrap_or(name)
        };
        message
            .headers_mut()
            .append(header, HeaderValue::Bytes(value.clone()));
    }
    if let Some(payload) = layout.payload.as_deref() {
        if !has_payload {
            return Err(format!("the entry has no `{payload}` field"));
        }
    }
    // A timestamp field that does not parse stays a header, and then the entry has no
    // timestamp: giving it the entry's time would make republishing it collide.
    if message.timestamp().is_none() && !has_timestamp_field {
        message.set_timestamp(entry_time);
    }
    Ok(Decoded {
        message,
        expires_at_ms,
        redeliveries,
    })
}

/// The time in a stream entry id (`<ms>-<seq>`).
pub(crate) fn entry_time(id: &str) -> Option<SystemTime> {
    let (ms, _) = id.split_once('-')?;
    Some(UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch on the wall clock. Expiry deadlines cross process
/// boundaries, so they are wall-clock times, not timers.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The first bytes of a Pub/Sub envelope. The NUL keeps it from clashing with text.
pub(crate) const ENVELOPE_MAGIC: &[u8] = b"\0tmq1";

/// Packs fields into one Pub/Sub payload: the magic, then for each field its name and
/// value, each preceded by its length as a big-endian `u32`.
pub(crate) fn pack_envelope(fields: &Fields) -> Bytes {
    let size = ENVELOPE_MAGIC.len()
        + fields
            .iter()
            .map(|(name, value)| 8 + name.len() + value.len())
            .sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(ENVELOPE_MAGIC);
    for (name, value) in fields {
        put_chunk(&mut out, name);
        put_chunk(&mut out, value);
    }
    out.freeze()
}

fn put_chunk(out: &mut BytesMut, chunk: &[u8]) {
    // Redis caps a value at 512 MiB, well inside u32.
    out.put_u32(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
    out.put_slice(chunk);
}

/// Unpacks an envelope, or `None` if `payload` is not a well-formed one (then it is a
/// plain payload).
pub(crate) fn unpack_envelope(payload: &Bytes) -> Option<Fields> {
    if !payload.starts_with(ENVELOPE_MAGIC) {
        return None;
    }
    let mut rest = payload.slice(ENVELOPE_MAGIC.len()..);
    let mut fields = Vec::new();
    while rest.has_remaining() {
        let name = take_chunk(&mut rest)?;
        let value = take_chunk(&mut rest)?;
        fields.push((name, value));
    }
    Some(fields)
}

fn take_chunk(rest: &mut Bytes) -> Option<Bytes> {
    if rest.remaining() < 4 {
        return None;
    }
    let len = usize::try_from(rest.get_u32()).ok()?;
    if rest.remaining() < len {
        return None;
    }
    Some(rest.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        Message::new("s", vec![0u8, 0xff])
            .with_key([0u8, 1, 0xff, 0xfe])
            .with_header("tenant", "acme")
            .with_header("raw", &b"\xff\x00"[..])
            .with_header("hop", "a")
            .with_header("empty", "")
            .with_ttl(Duration::from_secs(60))
            .with_persistent(false)
            .with_message_id("m")
            .with_correlation_id("c")
            .with_reply_to("r")
            .with_content_type("text/plain")
            .with_content_encoding("gzip")
            .with_message_type("t")
            .with_app_id("a")
            .with_user_id("u")
            .with_timestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
    }

    fn names(fields: &Fields) -> Vec<&str> {
        fields
            .iter()
            .map(|(n, _)| std::str::from_utf8(n).unwrap())
            .collect()
    }

    #[test]
    fn every_field_round_trips_under_native_names() {
        let mut msg = full();
        msg.headers_mut().append("hop", "b");
        let layout = StreamLayout::new();
        let fields = encode(&layout, &msg, false).unwrap();
        assert_eq!(
            names(&fields),
            [
                "payload",
                "tenant",
                "raw",
                "hop",
                "empty",
                "hop",
                "message-id",
                "correlation-id",
                "reply-to",
                "content-type",
                "content-encoding",
                "message-type",
                "app-id",
                "user-id",
                "timestamp",
                "key",
                "tmq-persistent",
                "tmq-ttl-ms",
                "tmq-expires-at-ms",
            ]
        );
        let decoded = decode(&layout, "s", &fields, None).unwrap();
        assert_eq!(decoded.message, msg);
        assert!(!decoded.is_expired());
        assert_eq!(
            encode(&layout, &decoded.message, false).unwrap()[..16],
            fields[..16]
        );
    }

    #[test]
    fn the_envelope_layout_carries_names_that_collide_on_streams() {
        let msg = full()
            .with_header("payload", "a header")
            .with_header("tmq-ttl-ms", "a header too");
        let layout = StreamLayout::envelope();
        let fields = encode(&layout, &msg, false).unwrap();
        let decoded = decode(&layout, "s", &fields, None).unwrap();
        assert_eq!(decoded.message, msg);
    }

    #[test]
    fn refusals_name_the_field() {
        let layout = StreamLayout::new();
        let reason = |msg: Message| {
            let err = encode(&layout, &msg, false).unwrap_err();
            assert!(!err.is_transient());
            assert_eq!(err.destination(), Some("s"));
            err.to_string()
        };
        assert!(
            reason(Message::new("s", "x").with_header("n", 5i64)).contains("header `n` is a i64")
        );
        assert!(
            reason(Message::new("s", "x").with_header("payload", "p")).contains("payload field")
        );
        assert!(
            reason(Message::new("s", "x").with_header("tmq-priority", "1"))
                .contains("tmq-priority")
        );
        assert!(
            reason(Message::new("s", "x").with_header("key", "k").with_key("k"))
                .contains("header `key` collides with the field of the key")
        );
        assert!(reason(Message::new("s", "x").with_priority(3)).contains("priority"));
        let no_timestamp = StreamLayout::new()
            .property_fields(PropertyHeaders::kebab_case().with_name(Property::Key, "key"));
        let msg = Message::new("s", "x").with_timestamp(SystemTime::now());
        let err = encode(&no_timestamp, &msg, false).unwrap_err();
        assert!(err.to_string().contains("timestamp has no field"), "{err}");
        assert_eq!(
            names(&encode(&no_timestamp, &msg, true).unwrap()),
            ["payload"]
        );
        let headers_only = StreamLayout::new().no_payload_field();
        assert!(encode(&headers_only, &Message::new("s", "x"), false).is_err());
    }

    #[test]
    fn a_priority_is_carried_when_ignored() {
        let layout = StreamLayout::new();
        let msg = Message::new("s", "x").with_priority(3);
        let fields = encode(&layout, &msg, true).unwrap();
        let decoded = decode(&layout, "s", &fields, None).unwrap();
        assert_eq!(decoded.message.priority(), Some(3));
    }

    fn entry(fields: &[(&[u8], &[u8])]) -> Fields {
        fields
            .iter()
            .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
            .collect()
    }

    #[test]
    fn foreign_entries_decode_binary_safe_or_fail_with_a_reason() {
        let layout = StreamLayout::new();
        let at = entry_time("1700000000123-7");
        let fields = entry(&[
            (b"payload", b"\xff"),
            (b"temp", b"\xfe\x00"),
            (b"timestamp", b"soon"),
        ]);
        let decoded = decode(&layout, "s", &fields, at).unwrap();
        assert_eq!(decoded.message.payload().as_ref(), b"\xff");
        assert_eq!(
            decoded.message.headers().get("temp"),
            Some(&HeaderValue::Bytes(Bytes::from_static(b"\xfe\x00")))
        );
        // A timestamp field that does not parse stays a header, and there is no timestamp.
        assert_eq!(decoded.message.headers().get_str("timestamp"), Some("soon"));
        assert_eq!(decoded.message.timestamp(), None);
        let plain = decode(&layout, "s", &entry(&[(b"payload", b"")]), at).unwrap();
        assert_eq!(plain.message.timestamp(), at);

        let missing = decode(&layout, "s", &entry(&[(b"temp", b"1")]), at).unwrap_err();
        assert_eq!(missing, "the entry has no `payload` field");
        let binary = decode(
            &layout,
            "s",
            &entry(&[(b"payload", b""), (b"\xff", b"1")]),
            at,
        );
        assert!(binary.unwrap_err().contains("not UTF-8"));

        let headers_only = StreamLayout::new()
            .no_payload_field()
            .property_fields(PropertyHeaders::none());
        let decoded = decode(
            &headers_only,
            "s",
            &entry(&[(b"temp", b"1"), (b"key", b"k")]),
            at,
        )
        .unwrap();
        let headers: Vec<_> = decoded.message.headers().iter().map(|(n, _)| n).collect();
        assert_eq!(headers, ["temp", "key"]);
        assert!(decoded.message.payload().is_empty());
    }

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let fields = encode(&StreamLayout::envelope(), &full(), false).unwrap();
        let packed = pack_envelope(&fields);
        assert_eq!(unpack_envelope(&packed).unwrap(), fields);
        assert!(unpack_envelope(&Bytes::from_static(b"plain text")).is_none());
        let truncated = packed.slice(..packed.len() - 1);
        assert!(unpack_envelope(&truncated).is_none());
    }
}
