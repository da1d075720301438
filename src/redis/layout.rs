//! How a [`Message`] is laid out as Redis stream fields (and in a Pub/Sub envelope).
//!
//! The layout is documented in the [module docs](super#the-stream-entry-layout).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::BROKER;
use crate::{Error, Headers, Message, Operation};

/// The field holding the payload.
pub(crate) const PAYLOAD: &str = "payload";
/// The prefix of header fields: header `tenant` is stored as field `h:tenant`.
pub(crate) const HEADER_PREFIX: &str = "h:";
/// The prefix of property fields.
pub(crate) const PROPERTY_PREFIX: &str = "p:";

const KEY: &str = "p:key";
const MESSAGE_ID: &str = "p:message-id";
const CORRELATION_ID: &str = "p:correlation-id";
const REPLY_TO: &str = "p:reply-to";
const CONTENT_TYPE: &str = "p:content-type";
const CONTENT_ENCODING: &str = "p:content-encoding";
const PERSISTENT: &str = "p:persistent";
const PRIORITY: &str = "p:priority";
const TTL_MS: &str = "p:ttl-ms";
pub(crate) const EXPIRES_AT_MS: &str = "p:expires-at-ms";
/// How many times a message was re-added to its stream by a nack (so the delivery
/// count survives a re-add).
pub(crate) const REDELIVERIES: &str = "p:redeliveries";

/// The encoded fields of one message, in write order.
pub(crate) type Fields = Vec<(String, Bytes)>;

/// Encodes `message` as fields. A priority is an error unless `ignore_unsupported`,
/// in which case it is carried (so it round-trips) but not honoured.
pub(crate) fn encode(message: &Message, ignore_unsupported: bool) -> Result<Fields, Error> {
    check_destination(message)?;
    if message.priority().is_some() && !ignore_unsupported {
        return Err(Error::permanent(BROKER, Operation::Publish)
            .with_destination(message.destination().to_owned())
            .with_reason(
                "Redis cannot honour message priority (enable ignore_unsupported to carry it unhonoured)",
            ));
    }
    let mut fields = Vec::with_capacity(2 + message.headers().len());
    fields.push((PAYLOAD.to_owned(), message.payload().clone()));
    for (name, value) in message.headers() {
        fields.push((
            format!("{HEADER_PREFIX}{name}"),
            Bytes::copy_from_slice(value.as_bytes().unwrap_or_default()),
        ));
    }
    let mut property = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            fields.push((name.to_owned(), Bytes::copy_from_slice(value.as_bytes())));
        }
    };
    property(KEY, message.key_str());
    property(MESSAGE_ID, message.message_id());
    property(CORRELATION_ID, message.correlation_id());
    property(REPLY_TO, message.reply_to());
    property(CONTENT_TYPE, message.content_type());
    property(CONTENT_ENCODING, message.content_encoding());
    if !message.is_persistent() {
        fields.push((PERSISTENT.to_owned(), Bytes::from_static(b"false")));
    }
    if let Some(priority) = message.priority() {
        fields.push((PRIORITY.to_owned(), Bytes::from(priority.to_string())));
    }
    if let Some(ttl) = message.ttl() {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        fields.push((TTL_MS.to_owned(), Bytes::from(ttl_ms.to_string())));
        fields.push((
            EXPIRES_AT_MS.to_owned(),
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

/// Whether `message` carries nothing but a payload (Pub/Sub then sends it raw).
pub(crate) fn is_plain(message: &Message) -> bool {
    message.headers().is_empty()
        && message.key().is_none()
        && message.message_id().is_none()
        && message.correlation_id().is_none()
        && message.reply_to().is_none()
        && message.content_type().is_none()
        && message.content_encoding().is_none()
        && message.is_persistent()
        && message.priority().is_none()
        && message.ttl().is_none()
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

/// Decodes fields written by [`encode`]. Fields outside the layout (entries written by
/// other programs) become headers under their own names; a missing payload is empty.
pub(crate) fn decode<'a>(
    destination: &str,
    fields: impl IntoIterator<Item = (&'a str, &'a Bytes)>,
) -> Decoded {
    let mut message = Message::new(destination, Bytes::new());
    let mut headers = Headers::new();
    let mut expires_at_ms = None;
    let mut redeliveries = 0;
    for (name, value) in fields {
        let text = || String::from_utf8_lossy(value).into_owned();
        if name == PAYLOAD {
            message.set_payload(value.clone());
        } else if let Some(header) = name.strip_prefix(HEADER_PREFIX) {
            headers.insert(header, text());
        } else if name.starts_with(PROPERTY_PREFIX) {
            match name {
                KEY => message.set_key(Some(text().into())),
                MESSAGE_ID => message.set_message_id(Some(text())),
                CORRELATION_ID => message.set_correlation_id(Some(text())),
                REPLY_TO => message.set_reply_to(Some(text())),
                CONTENT_TYPE => message.set_content_type(Some(text())),
                CONTENT_ENCODING => message.set_content_encoding(Some(text())),
                PERSISTENT => message.set_persistent(value.as_ref() != b"false"),
                PRIORITY => message.set_priority(text().parse().ok()),
                TTL_MS => message.set_ttl(text().parse().ok().map(Duration::from_millis)),
                EXPIRES_AT_MS => expires_at_ms = text().parse().ok(),
                REDELIVERIES => redeliveries = text().parse().unwrap_or(0),
                _ => {
                    headers.insert(name, text());
                }
            }
        } else {
            headers.insert(name, text());
        }
    }
    *message.headers_mut() = headers;
    Decoded {
        message,
        expires_at_ms,
        redeliveries,
    }
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
        put_chunk(&mut out, name.as_bytes());
        put_chunk(&mut out, value);
    }
    out.freeze()
}

fn put_chunk(out: &mut BytesMut, chunk: &[u8]) {
    // Redis caps a value at 512 MiB, well inside u32.
    out.put_u32(u32::try_from(chunk.len()).unwrap_or(u32::MAX));
    out.put_slice(chunk);
}

/// Unpacks an envelope, or `None` if `payload` is not one (then it is a raw payload).
pub(crate) fn unpack_envelope(payload: &Bytes) -> Option<Vec<(String, Bytes)>> {
    if !payload.starts_with(ENVELOPE_MAGIC) {
        return None;
    }
    let mut rest = payload.slice(ENVELOPE_MAGIC.len()..);
    let mut fields = Vec::new();
    while rest.has_remaining() {
        let name = take_chunk(&mut rest)?;
        let value = take_chunk(&mut rest)?;
        fields.push((String::from_utf8(name.to_vec()).ok()?, value));
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
        Message::new("s", "body")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header("payload", "not the payload")
            .with_ttl(Duration::from_secs(60))
            .with_persistent(false)
            .with_message_id("m")
            .with_correlation_id("c")
            .with_reply_to("r")
            .with_content_type("text/plain")
            .with_content_encoding("gzip")
    }

    fn round_trip(fields: &Fields) -> Decoded {
        decode("s", fields.iter().map(|(n, v)| (n.as_str(), v)))
    }

    #[test]
    fn every_field_round_trips() {
        let msg = full();
        let decoded = round_trip(&encode(&msg, false).unwrap());
        assert_eq!(decoded.message, msg);
        assert!(!decoded.is_expired());
    }

    #[test]
    fn priority_is_an_error_unless_ignored() {
        let msg = Message::new("s", "x").with_priority(3);
        let err = encode(&msg, false).unwrap_err();
        assert!(!err.is_transient());
        assert_eq!(err.destination(), Some("s"));
        let decoded = round_trip(&encode(&msg, true).unwrap());
        assert_eq!(decoded.message.priority(), Some(3));
    }

    #[test]
    fn foreign_fields_become_headers() {
        let payload = Bytes::from_static(b"v");
        let decoded = decode("s", [("temperature", &payload)]);
        assert_eq!(decoded.message.headers().get_str("temperature"), Some("v"));
        assert!(decoded.message.payload().is_empty());
    }

    #[test]
    fn envelope_round_trips_and_rejects_garbage() {
        let fields = encode(&full(), false).unwrap();
        let packed = pack_envelope(&fields);
        assert_eq!(unpack_envelope(&packed).unwrap(), fields);
        assert!(unpack_envelope(&Bytes::from_static(b"plain text")).is_none());
        let truncated = packed.slice(..packed.len() - 1);
        assert!(unpack_envelope(&truncated).is_none());
    }
}
