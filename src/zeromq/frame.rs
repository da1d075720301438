//! How a [`Message`] travels in ZeroMQ frames: plain frames by default, or the project's
//! versioned envelope.
//!
//! # Plain frames (the default, [`Framing::Plain`])
//!
//! What any libzmq peer sends and expects: the payload is the **last frame**; a PUB
//! puts the destination (the topic SUB sockets prefix-match) in a frame before it.
//!
//! | socket | frames sent |
//! | ------ | ----------- |
//! | PUB | `[destination, payload]`; `[payload]` alone when the destination is empty (libzmq's single-frame publishing, where subscriptions match the payload's first bytes) |
//! | PUSH, DEALER, ROUTER replies | `[payload]` (after the routing envelope); the destination names the message in receipts and errors only |
//!
//! Headers named [`FRAME_HEADER`] are frames: on receipt, every frame before the
//! payload (other than a SUB's topic frame) becomes one such header, in order, and on
//! publish each becomes a frame before the payload again, so no frame is lost and a
//! consumed message republishes as the same frames:
//!
//! | received | destination | headers | payload |
//! | -------- | ----------- | ------- | ------- |
//! | `[body]` | `""` | none | `body` |
//! | SUB `[topic, body]` (topic UTF-8, not empty) | `topic` | none | `body` |
//! | SUB `[topic, f1, .., body]` | `topic` | `zmq-frame` = `f1`, .. | `body` |
//! | SUB `[t, body]`, `t` empty or not UTF-8 | `""` | `zmq-frame` = `t` | `body` |
//! | PULL, DEALER, ROUTER `[f1, .., body]` | `""` | `zmq-frame` = `f1`, .. | `body` |
//!
//! Plain frames carry nothing else: publishing a message with a key, a timestamp, any
//! other header, a header of a type other than bytes, or any of the message id,
//! correlation id, reply-to, content type, content encoding, message type, app id,
//! user id, priority or time to live fails with a permanent error that names each of
//! them, unless the publisher is told to
//! [`ignore_unsupported`](super::Publisher::ignore_unsupported) (then they are left
//! out). Plain deliveries are not [persistent](Message::is_persistent): ZeroMQ
//! stores nothing.
//!
//! # The envelope ([`Framing::Envelope`])
//!
//! Between tower-mq peers (and the layers that add headers: trace, compression), the
//! envelope carries the whole message in three frames:
//!
//! | frame | content |
//! | ----- | ------- |
//! | 0 | the destination (topic), UTF-8, not empty; SUB sockets prefix-match it |
//! | 1 | the header block: [`MAGIC`] (`TMQ` and version `0x02`), a flags byte (bit 0: persistent), then fields, each `tag: u8`, `length: u32` big-endian, `length` bytes of value |
//! | 2 | the payload, as is |
//!
//! | tag | field | value |
//! | --- | ----- | ----- |
//! | `0x01` | key | bytes |
//! | `0x02` | priority | one byte |
//! | `0x03` | time to live | `u64` big-endian, milliseconds |
//! | `0x04` | message id | UTF-8 |
//! | `0x05` | correlation id | UTF-8 |
//! | `0x06` | reply-to | UTF-8 |
//! | `0x07` | content type | UTF-8 |
//! | `0x08` | content encoding | UTF-8 |
//! | `0x09` | message type | UTF-8 |
//! | `0x0a` | app id | UTF-8 |
//! | `0x0b` | user id | UTF-8 |
//! | `0x0c` | timestamp | `i128` big-endian, nanoseconds since the Unix epoch |
//! | `0x10` | one header, in order, names may repeat | `u32` name length, the UTF-8 name, then a typed value |
//!
//! A typed value is a type byte (AMQP's letters) and its content, big-endian: `S`
//! bytes and `x` byte array (`u32` length, bytes), `t` bool, `b` i8, `B` u8, `s` i16,
//! `u` u16, `I` i32, `i` u32, `l` i64, `f` f32 and `d` f64 (IEEE bits), `D` decimal
//! (scale `u8`, value `u32`), `T` timestamp (`u64` seconds), `A` array (`u32` count,
//! values), `F` table (`u32` count, then `u32` name length, name, value each), `V`
//! null. Every [`HeaderValue`] therefore crosses the envelope unchanged.
//!
//! A receiver with the envelope enabled reads a message as an envelope only when it
//! is exactly three frames and the middle one starts with `TMQ` and a version byte
//! (`0x01` to `0x0f`); anything else is plain frames, as above. A marked message that
//! does not parse (another version, a truncated or unknown field, a repeated field,
//! text that is not UTF-8) is an `Err` item on the consumer stream, and the stream
//! goes on. A receiver with plain framing never looks for the envelope.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::BROKER;
use crate::{Error, HeaderValue, Headers, Message, Operation};

/// The first bytes of a version 2 header block: `TMQ` and the version.
pub const MAGIC: [u8; 4] = *b"TMQ\x02";

/// The header that holds a plain message's frames before its payload, one value per
/// frame, in order (see the [module docs](self)).
pub const FRAME_HEADER: &str = "zmq-frame";

/// How messages travel in frames; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Framing {
    /// Plain frames, as every libzmq peer sends them: the payload is the last frame, a
    /// PUB's topic the first. Headers and properties are refused (or left out with
    /// `ignore_unsupported`).
    #[default]
    Plain,
    /// The project's versioned three-frame envelope, carrying every field of the
    /// message. Receivers still accept plain frames.
    Envelope,
}

const FLAG_PERSISTENT: u8 = 0x01;
const TAG_KEY: u8 = 0x01;
const TAG_PRIORITY: u8 = 0x02;
const TAG_TTL: u8 = 0x03;
const TAG_MESSAGE_ID: u8 = 0x04;
const TAG_CORRELATION_ID: u8 = 0x05;
const TAG_REPLY_TO: u8 = 0x06;
const TAG_CONTENT_TYPE: u8 = 0x07;
const TAG_CONTENT_ENCODING: u8 = 0x08;
const TAG_MESSAGE_TYPE: u8 = 0x09;
const TAG_APP_ID: u8 = 0x0a;
const TAG_USER_ID: u8 = 0x0b;
const TAG_TIMESTAMP: u8 = 0x0c;
const TAG_HEADER: u8 = 0x10;

/// How deep arrays and tables may nest in a received header block.
const MAX_DEPTH: usize = 32;

/// A permanent publish error for `message`.
fn refused(message: &Message, reason: String) -> Error {
    Error::permanent(BROKER, Operation::Publish)
        .with_code(tower_mq_core::Code::Unsupported)
        .with_destination(message.destination().to_owned())
        .with_reason(reason)
}

/// What `message` sets that plain frames cannot carry, in words.
fn not_plain(message: &Message) -> Vec<String> {
    let mut found = Vec::new();
    if message.key().is_some() {
        found.push("the key".to_owned());
    }
    if message.timestamp().is_some() {
        found.push("the timestamp".to_owned());
    }
    let strings = [
        ("message id", message.message_id()),
        ("correlation id", message.correlation_id()),
        ("reply-to", message.reply_to()),
        ("content type", message.content_type()),
        ("content encoding", message.content_encoding()),
        ("message type", message.message_type()),
        ("app id", message.app_id()),
        ("user id", message.user_id()),
    ];
    for (name, value) in strings {
        if value.is_some() {
            found.push(format!("the {name}"));
        }
    }
    if message.priority().is_some() {
        found.push("the priority".to_owned());
    }
    if message.ttl().is_some() {
        found.push("the time to live".to_owned());
    }
    for (name, value) in message.headers() {
        if name != FRAME_HEADER {
            found.push(format!("header `{name}`"));
        } else if !value.is_bytes() {
            found.push(format!(
                "header `{FRAME_HEADER}` of type {}",
                value.type_name()
            ));
        }
    }
    found
}

/// The plain frames of `message` (see the [module docs](self)); `topic` says whether
/// the socket sends a topic frame (PUB). Fails naming what plain frames cannot carry,
/// unless `ignore_unsupported`, which leaves it out.
pub(crate) fn encode_plain(
    message: Message,
    topic: bool,
    ignore_unsupported: bool,
) -> Result<Vec<Bytes>, Error> {
    if !ignore_unsupported {
        let unsupported = not_plain(&message);
        if !unsupported.is_empty() {
            return Err(refused(
                &message,
                format!(
                    "plain ZeroMQ frames cannot carry {}: enable the envelope \
                     (Config::framing(Framing::Envelope)) on both peers, or \
                     ignore_unsupported to leave them out",
                    unsupported.join(", ")
                ),
            ));
        }
    }
    // Sized exactly: the common single frame takes the allocator's smallest class,
    // as a bare `ZmqMessage::from(payload)` does.
    let with_topic = topic && !message.destination().is_empty();
    let extra = message.headers().get_all(FRAME_HEADER).count();
    let mut frames = Vec::with_capacity(usize::from(with_topic) + extra + 1);
    if with_topic {
        frames.push(Bytes::copy_from_slice(message.destination().as_bytes()));
    }
    for value in message.headers().get_all(FRAME_HEADER) {
        if let HeaderValue::Bytes(frame) = value {
            frames.push(frame.clone());
        }
    }
    // Moved, not cloned: a payload built from a `Vec` allocates on its first clone.
    frames.push(message.into_payload());
    Ok(frames)
}

/// A message from plain frames (see the [module docs](self)); `topic` says whether the
/// first frame is a topic (SUB). Every sequence of frames is a plain message.
pub(crate) fn decode_plain(frames: &[Bytes], topic: bool) -> Message {
    let (destination, rest) = match frames {
        [first, rest @ ..] if topic && !rest.is_empty() && !first.is_empty() => {
            match std::str::from_utf8(first) {
                Ok(destination) => (destination, rest),
                Err(_) => ("", frames),
            }
        }
        _ => ("", frames),
    };
    let (payload, leading) = match rest.split_last() {
        Some((payload, leading)) => (payload.clone(), leading),
        None => (Bytes::new(), rest),
    };
    let mut message = Message::new(destination, payload).with_persistent(false);
    for frame in leading {
        message.headers_mut().append(FRAME_HEADER, frame.clone());
    }
    message
}

/// Whether `frames` are marked as an envelope: three frames, the middle one starting
/// with `TMQ` and a version byte.
pub(crate) fn is_envelope(frames: &[Bytes]) -> bool {
    match frames {
        [_, block, _] => {
            block.len() >= 4 && block[..3] == MAGIC[..3] && (1..=0x0f).contains(&block[3])
        }
        _ => false,
    }
}

/// A received message: the envelope when `framing` enables it and the frames are
/// marked as one, plain frames otherwise. `topic` says whether the socket receives a
/// topic frame (SUB); `endpoint` names the socket in errors.
pub(crate) fn decode_any(
    frames: &[Bytes],
    topic: bool,
    framing: Framing,
    endpoint: &str,
) -> Result<Message, Error> {
    if framing == Framing::Envelope && is_envelope(frames) {
        decode(frames, endpoint)
    } else {
        Ok(decode_plain(frames, topic))
    }
}

/// The frames of `message` as `framing` sends them. In the envelope, a priority or a
/// time to live is refused unless `ignore_unsupported`, which carries it (nothing on
/// the way enforces it).
pub(crate) fn encode_any(
    message: Message,
    topic: bool,
    framing: Framing,
    ignore_unsupported: bool,
) -> Result<Vec<Bytes>, Error> {
    match framing {
        Framing::Plain => encode_plain(message, topic, ignore_unsupported),
        Framing::Envelope => {
            if message.destination().is_empty() {
                return Err(refused(
                    &message,
                    "the envelope's destination (topic frame) must not be empty".to_owned(),
                ));
            }
            if !ignore_unsupported && (message.priority().is_some() || message.ttl().is_some()) {
                return Err(refused(
                    &message,
                    "ZeroMQ cannot honour priority or time to live \
                     (ignore_unsupported carries them in the envelope, unenforced)"
                        .to_owned(),
                ));
            }
            let [destination, block] = envelope_head(&message)?;
            Ok(vec![destination, block, message.into_payload()])
        }
    }
}

/// The three envelope frames of `message`: destination, header block, payload. Fails
/// only for a header value of a type the envelope does not know.
pub fn encode(message: &Message) -> Result<[Bytes; 3], Error> {
    let [destination, block] = envelope_head(message)?;
    Ok([destination, block, message.payload().clone()])
}

/// The envelope's destination and header block frames of `message`.
fn envelope_head(message: &Message) -> Result<[Bytes; 2], Error> {
    let mut block = BytesMut::with_capacity(64);
    block.put_slice(&MAGIC);
    block.put_u8(if message.is_persistent() {
        FLAG_PERSISTENT
    } else {
        0
    });
    let put = |block: &mut BytesMut, tag: u8, value: &[u8]| {
        block.put_u8(tag);
        block.put_u32(len_u32(value.len()));
        block.put_slice(value);
    };
    if let Some(key) = message.key() {
        put(&mut block, TAG_KEY, key);
    }
    if let Some(priority) = message.priority() {
        put(&mut block, TAG_PRIORITY, &[priority]);
    }
    if let Some(ttl) = message.ttl() {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        put(&mut block, TAG_TTL, &millis.to_be_bytes());
    }
    let strings = [
        (TAG_MESSAGE_ID, message.message_id()),
        (TAG_CORRELATION_ID, message.correlation_id()),
        (TAG_REPLY_TO, message.reply_to()),
        (TAG_CONTENT_TYPE, message.content_type()),
        (TAG_CONTENT_ENCODING, message.content_encoding()),
        (TAG_MESSAGE_TYPE, message.message_type()),
        (TAG_APP_ID, message.app_id()),
        (TAG_USER_ID, message.user_id()),
    ];
    for (tag, value) in strings {
        if let Some(value) = value {
            put(&mut block, tag, value.as_bytes());
        }
    }
    if let Some(timestamp) = message.timestamp() {
        put(
            &mut block,
            TAG_TIMESTAMP,
            &nanos_since_epoch(timestamp).to_be_bytes(),
        );
    }
    for (name, value) in message.headers() {
        let mut field = BytesMut::with_capacity(4 + name.len() + 5 + value.size());
        put_str(&mut field, name);
        put_value(&mut field, value).map_err(|type_name| {
            refused(
                message,
                format!("header `{name}` has a type the envelope cannot carry: {type_name}"),
            )
        })?;
        put(&mut block, TAG_HEADER, &field);
    }
    Ok([
        Bytes::copy_from_slice(message.destination().as_bytes()),
        block.freeze(),
    ])
}

fn len_u32(len: usize) -> u32 {
    // Longer than 4 GiB cannot be framed; saturating makes the peer reject the block
    // rather than misread it.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_str(buf: &mut BytesMut, text: &str) {
    buf.put_u32(len_u32(text.len()));
    buf.put_slice(text.as_bytes());
}

fn put_value(buf: &mut BytesMut, value: &HeaderValue) -> Result<(), &'static str> {
    match value {
        HeaderValue::Bytes(b) => {
            buf.put_u8(b'S');
            buf.put_u32(len_u32(b.len()));
            buf.put_slice(b);
        }
        HeaderValue::ByteArray(b) => {
            buf.put_u8(b'x');
            buf.put_u32(len_u32(b.len()));
            buf.put_slice(b);
        }
        HeaderValue::Bool(v) => {
            buf.put_u8(b't');
            buf.put_u8(u8::from(*v));
        }
        HeaderValue::I8(v) => {
            buf.put_u8(b'b');
            buf.put_i8(*v);
        }
        HeaderValue::U8(v) => {
            buf.put_u8(b'B');
            buf.put_u8(*v);
        }
        HeaderValue::I16(v) => {
            buf.put_u8(b's');
            buf.put_i16(*v);
        }
        HeaderValue::U16(v) => {
            buf.put_u8(b'u');
            buf.put_u16(*v);
        }
        HeaderValue::I32(v) => {
            buf.put_u8(b'I');
            buf.put_i32(*v);
        }
        HeaderValue::U32(v) => {
            buf.put_u8(b'i');
            buf.put_u32(*v);
        }
        HeaderValue::I64(v) => {
            buf.put_u8(b'l');
            buf.put_i64(*v);
        }
        HeaderValue::F32(v) => {
            buf.put_u8(b'f');
            buf.put_u32(v.to_bits());
        }
        HeaderValue::F64(v) => {
            buf.put_u8(b'd');
            buf.put_u64(v.to_bits());
        }
        HeaderValue::Decimal { scale, value } => {
            buf.put_u8(b'D');
            buf.put_u8(*scale);
            buf.put_u32(*value);
        }
        HeaderValue::Timestamp(v) => {
            buf.put_u8(b'T');
            buf.put_u64(*v);
        }
        HeaderValue::Array(values) => {
            buf.put_u8(b'A');
            buf.put_u32(len_u32(values.len()));
            for value in values {
                put_value(buf, value)?;
            }
        }
        HeaderValue::Table(table) => {
            buf.put_u8(b'F');
            buf.put_u32(len_u32(table.len()));
            for (name, value) in table {
                put_str(buf, name);
                put_value(buf, value)?;
            }
        }
        HeaderValue::Null => buf.put_u8(b'V'),
        other => return Err(other.type_name()),
    }
    Ok(())
}

fn nanos_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

fn from_nanos(nanos: i128) -> Option<SystemTime> {
    let magnitude = nanos.unsigned_abs();
    let secs = u64::try_from(magnitude / 1_000_000_000).ok()?;
    let sub = u32::try_from(magnitude % 1_000_000_000).ok()?;
    let span = Duration::new(secs, sub);
    if nanos >= 0 {
        UNIX_EPOCH.checked_add(span)
    } else {
        UNIX_EPOCH.checked_sub(span)
    }
}

/// An error item for a received message that does not parse. Transient, so that
/// `serve` logs it and goes on: it belongs to that message, not to the socket.
pub(crate) fn malformed(endpoint: &str, reason: impl Into<String>) -> Error {
    Error::transient(BROKER, Operation::Receive)
        .with_code(tower_mq_core::Code::Malformed)
        .with_destination(endpoint.to_owned())
        .with_reason(format!(
            "malformed envelope: {}; the message is skipped",
            reason.into()
        ))
}

/// Parses the three envelope frames `[destination, header block, payload]`.
/// `endpoint` names the socket in errors.
pub fn decode(frames: &[Bytes], endpoint: &str) -> Result<Message, Error> {
    let [destination, block, payload] = frames else {
        return Err(malformed(
            endpoint,
            format!("expected 3 frames, got {}", frames.len()),
        ));
    };
    let destination = std::str::from_utf8(destination)
        .map_err(|_| malformed(endpoint, "destination frame is not UTF-8"))?;
    if block.len() < MAGIC.len() + 1 || block[..3] != MAGIC[..3] {
        return Err(malformed(endpoint, "header block lacks the TMQ magic"));
    }
    if block[3] != MAGIC[3] {
        return Err(malformed(
            endpoint,
            format!("unsupported header block version {}", block[3]),
        ));
    }
    let mut message = Message::new(destination, payload.clone());
    let flags = block[4];
    if flags & !FLAG_PERSISTENT != 0 {
        return Err(malformed(endpoint, format!("unknown flags {flags:#04x}")));
    }
    message.set_persistent(flags & FLAG_PERSISTENT != 0);
    let mut rest = block.slice(5..);
    let mut seen = [false; 16];
    let mut headers = Headers::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(malformed(endpoint, "truncated field header"));
        }
        let tag = rest.get_u8();
        let len = rest.get_u32() as usize;
        if rest.len() < len {
            return Err(malformed(
                endpoint,
                format!("field {tag:#04x} is truncated"),
            ));
        }
        let mut value = rest.split_to(len);
        if tag == TAG_HEADER {
            let name = take_str(&mut value)
                .ok_or_else(|| malformed(endpoint, "header name is truncated or not UTF-8"))?;
            let header = take_value(&mut value, 0)
                .ok_or_else(|| malformed(endpoint, format!("header `{name}` does not parse")))?;
            if !value.is_empty() {
                return Err(malformed(
                    endpoint,
                    format!("header `{name}` has trailing bytes"),
                ));
            }
            headers.append(name, header);
            continue;
        }
        if !(TAG_KEY..=TAG_TIMESTAMP).contains(&tag) {
            return Err(malformed(endpoint, format!("unknown field tag {tag:#04x}")));
        }
        if std::mem::replace(&mut seen[usize::from(tag)], true) {
            return Err(malformed(endpoint, format!("field {tag:#04x} repeated")));
        }
        match tag {
            TAG_KEY => message.set_key(Some(value)),
            TAG_PRIORITY => match value[..] {
                [priority] => message.set_priority(Some(priority)),
                _ => return Err(malformed(endpoint, "priority is not one byte")),
            },
            TAG_TTL => {
                let millis: [u8; 8] = value[..]
                    .try_into()
                    .map_err(|_| malformed(endpoint, "ttl is not 8 bytes"))?;
                message.set_ttl(Some(Duration::from_millis(u64::from_be_bytes(millis))));
            }
            TAG_TIMESTAMP => {
                let nanos: [u8; 16] = value[..]
                    .try_into()
                    .map_err(|_| malformed(endpoint, "timestamp is not 16 bytes"))?;
                let at = from_nanos(i128::from_be_bytes(nanos))
                    .ok_or_else(|| malformed(endpoint, "timestamp out of range"))?;
                message.set_timestamp(Some(at));
            }
            _ => {
                let text = std::str::from_utf8(&value)
                    .map_err(|_| malformed(endpoint, format!("field {tag:#04x} is not UTF-8")))?
                    .to_owned();
                let text = Some(text);
                match tag {
                    TAG_MESSAGE_ID => message.set_message_id(text),
                    TAG_CORRELATION_ID => message.set_correlation_id(text),
                    TAG_REPLY_TO => message.set_reply_to(text),
                    TAG_CONTENT_TYPE => message.set_content_type(text),
                    TAG_CONTENT_ENCODING => message.set_content_encoding(text),
                    TAG_MESSAGE_TYPE => message.set_message_type(text),
                    TAG_APP_ID => message.set_app_id(text),
                    _ => message.set_user_id(text),
                }
            }
        }
    }
    *message.headers_mut() = headers;
    Ok(message)
}

fn take_bytes(buf: &mut Bytes) -> Option<Bytes> {
    if buf.len() < 4 {
        return None;
    }
    let len = buf.get_u32() as usize;
    (buf.len() >= len).then(|| buf.split_to(len))
}

fn take_str(buf: &mut Bytes) -> Option<String> {
    let bytes = take_bytes(buf)?;
    String::from_utf8(bytes.to_vec()).ok()
}

fn take_value(buf: &mut Bytes, depth: usize) -> Option<HeaderValue> {
    if depth > MAX_DEPTH || buf.is_empty() {
        return None;
    }
    let tag = buf.get_u8();
    let need = |buf: &Bytes, n: usize| (buf.len() >= n).then_some(());
    Some(match tag {
        b'S' => HeaderValue::Bytes(take_bytes(buf)?),
        b'x' => HeaderValue::ByteArray(take_bytes(buf)?),
        b't' => {
            need(buf, 1)?;
            match buf.get_u8() {
                0 => HeaderValue::Bool(false),
                1 => HeaderValue::Bool(true),
                _ => return None,
            }
        }
        b'b' => {
            need(buf, 1)?;
            HeaderValue::I8(buf.get_i8())
        }
        b'B' => {
            need(buf, 1)?;
            HeaderValue::U8(buf.get_u8())
        }
        b's' => {
            need(buf, 2)?;
            HeaderValue::I16(buf.get_i16())
        }
        b'u' => {
            need(buf, 2)?;
            HeaderValue::U16(buf.get_u16())
        }
        b'I' => {
            need(buf, 4)?;
            HeaderValue::I32(buf.get_i32())
        }
        b'i' => {
            need(buf, 4)?;
            HeaderValue::U32(buf.get_u32())
        }
        b'l' => {
            need(buf, 8)?;
            HeaderValue::I64(buf.get_i64())
        }
        b'f' => {
            need(buf, 4)?;
            HeaderValue::F32(f32::from_bits(buf.get_u32()))
        }
        b'd' => {
            need(buf, 8)?;
            HeaderValue::F64(f64::from_bits(buf.get_u64()))
        }
        b'D' => {
            need(buf, 5)?;
            let scale = buf.get_u8();
            HeaderValue::Decimal {
                scale,
                value: buf.get_u32(),
            }
        }
        b'T' => {
            need(buf, 8)?;
            HeaderValue::Timestamp(buf.get_u64())
        }
        b'A' => {
            need(buf, 4)?;
            let count = buf.get_u32() as usize;
            // Every value takes at least one byte: a count beyond that is a lie.
            need(buf, count)?;
            let mut values = Vec::with_capacity(count);
            for _ in 0..count {
                values.push(take_value(buf, depth + 1)?);
            }
            HeaderValue::Array(values)
        }
        b'F' => {
            need(buf, 4)?;
            let count = buf.get_u32() as usize;
            need(buf, count.checked_mul(5)?)?;
            let mut table = BTreeMap::new();
            for _ in 0..count {
                let name = take_str(buf)?;
                let value = take_value(buf, depth + 1)?;
                if table.insert(name, value).is_some() {
                    return None;
                }
            }
            HeaderValue::Table(table)
        }
        b'V' => HeaderValue::Null,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        let mut table = BTreeMap::new();
        table.insert("n".to_owned(), HeaderValue::I32(-5));
        table.insert(
            "nested".to_owned(),
            HeaderValue::Array(vec![HeaderValue::Null, HeaderValue::Bool(true)]),
        );
        let mut message = Message::new("orders.eu", vec![0u8, 1, 2, 255])
            .with_key([0u8, 1, 0xff, 0xfe])
            .with_header("tenant", "acme")
            .with_header("empty", "")
            .with_header("unicode", "grüße ✓")
            .with_header("hop", "a");
        message.headers_mut().append("hop", &b"\x00\xff"[..]);
        message
            .with_header(
                "typed",
                HeaderValue::Decimal {
                    scale: 2,
                    value: 1234,
                },
            )
            .with_header("f", HeaderValue::F64(f64::NAN))
            .with_header("t", HeaderValue::Timestamp(1_700_000_000))
            .with_header("raw", HeaderValue::ByteArray(Bytes::from_static(b"\x01")))
            .with_header("table", HeaderValue::Table(table))
            .with_header("nothing", HeaderValue::Null)
            .with_priority(7)
            .with_ttl(Duration::from_millis(1500))
            .with_persistent(false)
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_reply_to("replies")
            .with_content_type("application/json")
            .with_content_encoding("gzip")
            .with_message_type("order.created")
            .with_app_id("shop")
            .with_user_id("guest")
            .with_timestamp(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
    }

    #[test]
    fn the_envelope_round_trips_every_field_and_type() {
        let before_epoch = Message::new("t", "x").with_timestamp(UNIX_EPOCH - Duration::new(5, 7));
        for message in [full(), Message::new("t", ""), before_epoch] {
            let frames = encode(&message).unwrap();
            assert!(is_envelope(&frames));
            let decoded = decode(&frames, "tcp://x").unwrap();
            assert_eq!(decoded, message);
            assert_eq!(
                decoded.headers().get_all("hop").count(),
                message.headers().get_all("hop").count()
            );
        }
    }

    #[test]
    fn the_destination_frame_is_the_topic_for_prefix_matching() {
        let frames = encode(&full()).unwrap();
        assert_eq!(&frames[0][..], b"orders.eu");
        assert_eq!(&frames[1][..4], b"TMQ\x02");
    }

    #[test]
    fn plain_frames_round_trip_every_frame() {
        let cases: Vec<(bool, Vec<Bytes>)> = vec![
            (false, vec![Bytes::from_static(b"\x00\xffbody")]),
            (false, vec![Bytes::new()]),
            (
                false,
                vec![Bytes::from("a"), Bytes::new(), Bytes::from("body")],
            ),
            (true, vec![Bytes::from("topic"), Bytes::from("body")]),
            (
                true,
                vec![Bytes::from("topic"), Bytes::from("x"), Bytes::new()],
            ),
            (true, vec![Bytes::from("single frame")]),
            (true, vec![Bytes::new(), Bytes::from("body")]),
            (
                true,
                vec![Bytes::from_static(b"\xff\xfe"), Bytes::from("body")],
            ),
        ];
        for (topic, frames) in cases {
            let message = decode_plain(&frames, topic);
            assert!(!message.is_persistent());
            assert_eq!(message.payload(), frames.last().unwrap());
            let again = encode_plain(message.clone(), topic, false).unwrap();
            assert_eq!(again, frames, "{message:?}");
        }
        let sub = decode_plain(&[Bytes::from("topic"), Bytes::from("body")], true);
        assert_eq!(sub.destination(), "topic");
        assert!(sub.headers().is_empty());
        let pull = decode_plain(&[Bytes::from("topic"), Bytes::from("body")], false);
        assert_eq!(pull.destination(), "");
        assert_eq!(pull.headers().get_str(FRAME_HEADER), Some("topic"));
    }

    #[test]
    fn plain_frames_refuse_what_they_cannot_carry_naming_it() {
        let message = Message::new("t", "x")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header(FRAME_HEADER, 5i64)
            .with_correlation_id("c")
            .with_timestamp(UNIX_EPOCH);
        let err = encode_plain(message.clone(), true, false).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Permanent);
        assert_eq!(err.operation(), Operation::Publish);
        assert_eq!(err.destination(), Some("t"));
        let reason = err.reason().unwrap();
        for part in [
            "the key",
            "the timestamp",
            "the correlation id",
            "header `tenant`",
            "header `zmq-frame` of type i64",
        ] {
            assert!(reason.contains(part), "{reason} lacks {part}");
        }
        let frames = encode_plain(message.clone(), true, true).unwrap();
        assert_eq!(frames, [Bytes::from("t"), Bytes::from("x")]);
    }

    #[test]
    fn a_plain_receiver_never_reads_the_envelope() {
        let frames = encode(&full()).unwrap();
        let message = decode_any(&frames, true, Framing::Plain, "x").unwrap();
        assert_eq!(message.destination(), "orders.eu");
        assert_eq!(
            message.headers().get(FRAME_HEADER),
            Some(&HeaderValue::Bytes(frames[1].clone()))
        );
        // Unmarked three-frame messages stay plain with the envelope enabled.
        let plain = [
            Bytes::from("t"),
            Bytes::from("TMQ is not a block"),
            Bytes::from("p"),
        ];
        let message = decode_any(&plain, true, Framing::Envelope, "x").unwrap();
        assert_eq!(message.payload(), &plain[2]);
    }

    #[test]
    fn random_bytes_in_a_marked_block_are_errors_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let good = encode(&full()).unwrap();
        for round in 0..20_000 {
            let mut frames: Vec<Bytes> = good.to_vec();
            match round % 3 {
                0 => {
                    let len = rng.usize(0..64);
                    let mut block = MAGIC.to_vec();
                    block.extend((0..len).map(|_| rng.u8(..)));
                    frames[1] = block.into();
                }
                1 => {
                    let mut block = frames[1].to_vec();
                    let at = rng.usize(4..block.len());
                    block[at] = block[at].wrapping_add(rng.u8(1..));
                    frames[1] = block.into();
                }
                _ => {
                    let mut block = frames[1].to_vec();
                    block.truncate(rng.usize(4..block.len()));
                    frames[1] = block.into();
                }
            }
            if let Err(e) = decode_any(&frames, true, Framing::Envelope, "tcp://x") {
                assert_eq!(e.kind(), crate::ErrorKind::Transient);
                assert_eq!(e.operation(), Operation::Receive);
                assert_eq!(e.broker(), "zeromq");
            }
        }
    }

    #[test]
    fn rejects_other_versions_and_repeated_fields() {
        let mut frames = encode(&full()).unwrap().to_vec();
        let mut block = frames[1].to_vec();
        block[3] = 1;
        frames[1] = block.into();
        let err = decode_any(&frames, true, Framing::Envelope, "tcp://x").unwrap_err();
        assert!(err.to_string().contains("version 1"), "{err}");

        let mut block = MAGIC.to_vec();
        block.push(0);
        for _ in 0..2 {
            block.extend_from_slice(&[TAG_KEY, 0, 0, 0, 1, b'k']);
        }
        let frames = [Bytes::from("t"), Bytes::from(block), Bytes::new()];
        assert!(decode(&frames, "tcp://x").is_err());
    }
}
