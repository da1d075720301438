//! The multipart framing that carries a [`Message`] over ZeroMQ.
//!
//! Every message is three frames, after whatever routing envelope the socket type adds
//! (a ROUTER's peer identity, a REQ's empty delimiter):
//!
//! | frame | content |
//! | ----- | ------- |
//! | 0 | the destination (topic), UTF-8, not empty. SUB sockets match their subscriptions as prefixes of this frame. |
//! | 1 | the header block: `TMQ` + version byte `0x01`, a flags byte (bit 0: persistent), then fields, each `tag: u8`, `length: u32` big-endian, `length` bytes of value. |
//! | 2 | the payload, as is. |
//!
//! Fields of the header block, each at most once (strings are UTF-8):
//!
//! | tag | field | value |
//! | --- | ----- | ----- |
//! | `0x01` | key | string |
//! | `0x02` | priority | one byte |
//! | `0x03` | time to live | `u64` big-endian, milliseconds |
//! | `0x04` | message id | string |
//! | `0x05` | correlation id | string |
//! | `0x06` | reply-to | string |
//! | `0x07` | content type | string |
//! | `0x08` | content encoding | string |
//! | `0x10` | one header | `u32` big-endian name length, the name, then the value |
//!
//! Headers may repeat (one field each) but not a name. Decoding is strict: a wrong
//! frame count, magic, version, unknown tag, truncated field, repeated field or
//! invalid UTF-8 is a permanent error; the peer sent something that will never parse.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::BROKER;
use crate::{Error, Headers, Message, Operation};

/// The first bytes of a version 1 header block: `TMQ` and the version.
pub const MAGIC: [u8; 4] = *b"TMQ\x01";

const FLAG_PERSISTENT: u8 = 0x01;
const TAG_KEY: u8 = 0x01;
const TAG_PRIORITY: u8 = 0x02;
const TAG_TTL: u8 = 0x03;
const TAG_MESSAGE_ID: u8 = 0x04;
const TAG_CORRELATION_ID: u8 = 0x05;
const TAG_REPLY_TO: u8 = 0x06;
const TAG_CONTENT_TYPE: u8 = 0x07;
const TAG_CONTENT_ENCODING: u8 = 0x08;
const TAG_HEADER: u8 = 0x10;

/// The three frames of `message`: destination, header block, payload.
pub fn encode(message: &Message) -> [Bytes; 3] {
    let mut block = BytesMut::with_capacity(64);
    block.put_slice(&MAGIC);
    block.put_u8(if message.is_persistent() {
        FLAG_PERSISTENT
    } else {
        0
    });
    let mut put = |tag: u8, value: &[u8]| {
        block.put_u8(tag);
        block.put_u32(len_u32(value.len()));
        block.put_slice(value);
    };
    if let Some(key) = message.key() {
        put(TAG_KEY, key);
    }
    if let Some(priority) = message.priority() {
        put(TAG_PRIORITY, &[priority]);
    }
    if let Some(ttl) = message.ttl() {
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        put(TAG_TTL, &millis.to_be_bytes());
    }
    let strings = [
        (TAG_MESSAGE_ID, message.message_id()),
        (TAG_CORRELATION_ID, message.correlation_id()),
        (TAG_REPLY_TO, message.reply_to()),
        (TAG_CONTENT_TYPE, message.content_type()),
        (TAG_CONTENT_ENCODING, message.content_encoding()),
    ];
    for (tag, value) in strings {
        if let Some(value) = value {
            put(tag, value.as_bytes());
        }
    }
    for (name, value) in message.headers() {
        let value = value.as_bytes().unwrap_or_default();
        let mut field = Vec::with_capacity(4 + name.len() + value.len());
        field.extend_from_slice(&len_u32(name.len()).to_be_bytes());
        field.extend_from_slice(name.as_bytes());
        field.extend_from_slice(value);
        put(TAG_HEADER, &field);
    }
    [
        Bytes::copy_from_slice(message.destination().as_bytes()),
        block.freeze(),
        message.payload().clone(),
    ]
}

fn len_u32(len: usize) -> u32 {
    // Strings longer than 4 GiB cannot be framed; Message strings never are in practice,
    // and truncating the length would corrupt the block, so saturate and let the peer
    // reject it.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// A permanent receive error: the frames do not parse.
pub(crate) fn malformed(endpoint: &str, reason: impl Into<String>) -> Error {
    Error::permanent(BROKER, Operation::Receive)
        .with_destination(endpoint.to_owned())
        .with_reason(format!("malformed message: {}", reason.into()))
}

/// Parses the three frames `[destination, header block, payload]`. `endpoint` names the
/// socket in errors.
pub fn decode(frames: &[Bytes], endpoint: &str) -> Result<Message, Error> {
    let [destination, block, payload] = frames else {
        return Err(malformed(
            endpoint,
            format!("expected 3 frames, got {}", frames.len()),
        ));
    };
    let destination = std::str::from_utf8(destination)
        .map_err(|_| malformed(endpoint, "destination frame is not UTF-8"))?;
    let mut message = Message::new(destination, payload.clone());
    if block.len() < MAGIC.len() + 1 || block[..3] != MAGIC[..3] {
        return Err(malformed(endpoint, "header block lacks the TMQ magic"));
    }
    if block[3] != MAGIC[3] {
        return Err(malformed(
            endpoint,
            format!("unsupported header block version {}", block[3]),
        ));
    }
    let flags = block[4];
    if flags & !FLAG_PERSISTENT != 0 {
        return Err(malformed(endpoint, format!("unknown flags {flags:#04x}")));
    }
    message.set_persistent(flags & FLAG_PERSISTENT != 0);
    let mut rest = &block[5..];
    let mut seen = [false; 9];
    let mut headers = Headers::new();
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err(malformed(endpoint, "truncated field header"));
        }
        let tag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        rest = &rest[5..];
        if rest.len() < len {
            return Err(malformed(
                endpoint,
                format!("field {tag:#04x} is truncated"),
            ));
        }
        let (value, tail) = rest.split_at(len);
        rest = tail;
        if tag == TAG_HEADER {
            if value.len() < 4 {
                return Err(malformed(endpoint, "truncated header field"));
            }
            let name_len = u32::from_be_bytes([value[0], value[1], value[2], value[3]]) as usize;
            let Some(name) = value.get(4..4 + name_len) else {
                return Err(malformed(endpoint, "header name is truncated"));
            };
            let name = utf8(endpoint, name, "header name")?;
            let header_value = utf8(endpoint, &value[4 + name_len..], "header value")?;
            if headers.insert(name, header_value).is_some() {
                return Err(malformed(endpoint, format!("header {name:?} repeated")));
            }
            continue;
        }
        let index = usize::from(tag);
        if !(TAG_KEY..=TAG_CONTENT_ENCODING).contains(&tag) {
            return Err(malformed(endpoint, format!("unknown field tag {tag:#04x}")));
        }
        if std::mem::replace(&mut seen[index], true) {
            return Err(malformed(endpoint, format!("field {tag:#04x} repeated")));
        }
        match tag {
            TAG_PRIORITY => match value {
                [priority] => message.set_priority(Some(*priority)),
                _ => return Err(malformed(endpoint, "priority is not one byte")),
            },
            TAG_TTL => {
                let millis: [u8; 8] = value
                    .try_into()
                    .map_err(|_| malformed(endpoint, "ttl is not 8 bytes"))?;
                message.set_ttl(Some(Duration::from_millis(u64::from_be_bytes(millis))));
            }
            _ => {
                let text = utf8(endpoint, value, "string field")?.to_owned();
                match tag {
                    TAG_KEY => message.set_key(Some(text.into())),
                    TAG_MESSAGE_ID => message.set_message_id(Some(text)),
                    TAG_CORRELATION_ID => message.set_correlation_id(Some(text)),
                    TAG_REPLY_TO => message.set_reply_to(Some(text)),
                    TAG_CONTENT_TYPE => message.set_content_type(Some(text)),
                    _ => message.set_content_encoding(Some(text)),
                }
            }
        }
    }
    *message.headers_mut() = headers;
    Ok(message)
}

fn utf8<'a>(endpoint: &str, bytes: &'a [u8], what: &str) -> Result<&'a str, Error> {
    std::str::from_utf8(bytes).map_err(|_| malformed(endpoint, format!("{what} is not UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn full() -> Message {
        Message::new("orders.eu", vec![0u8, 1, 2, 255])
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header("empty", "")
            .with_header("unicode", "grüße ✓")
            .with_priority(7)
            .with_ttl(Duration::from_millis(1500))
            .with_persistent(false)
            .with_message_id("m-1")
            .with_correlation_id("c-1")
            .with_reply_to("replies")
            .with_content_type("application/json")
            .with_content_encoding("gzip")
    }

    #[test]
    fn round_trips_every_property() {
        for message in [full(), Message::new("t", ""), Message::new("t", "x")] {
            let frames = encode(&message);
            assert_eq!(decode(&frames, "tcp://x").unwrap(), message);
        }
    }

    #[test]
    fn destination_frame_is_the_topic_for_prefix_matching() {
        let frames = encode(&full());
        assert_eq!(&frames[0][..], b"orders.eu");
        assert_eq!(&frames[1][..4], b"TMQ\x01");
    }

    #[test]
    fn random_bytes_are_permanent_errors_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let good = encode(&full());
        for round in 0..20_000 {
            let mut frames: Vec<Bytes> = good.to_vec();
            match round % 4 {
                // Random garbage block.
                0 => {
                    let len = rng.usize(0..64);
                    frames[1] = (0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>().into();
                }
                // Valid magic, random tail.
                1 => {
                    let len = rng.usize(0..64);
                    let mut block = MAGIC.to_vec();
                    block.extend((0..len).map(|_| rng.u8(..)));
                    frames[1] = block.into();
                }
                // Flip one byte of a valid block.
                2 => {
                    let mut block = frames[1].to_vec();
                    let at = rng.usize(..block.len());
                    block[at] = block[at].wrapping_add(rng.u8(1..));
                    frames[1] = block.into();
                }
                // Random frame count.
                _ => {
                    let count = rng.usize(0..6);
                    frames = (0..count)
                        .map(|_| Bytes::from(vec![rng.u8(..); rng.usize(0..8)]))
                        .collect();
                }
            }
            if let Err(e) = decode(&frames, "tcp://x") {
                assert_eq!(e.kind(), ErrorKind::Permanent);
                assert_eq!(e.broker(), "zeromq");
            }
        }
    }

    #[test]
    fn rejects_unknown_versions_and_repeats() {
        let mut frames = encode(&full()).to_vec();
        let mut block = frames[1].to_vec();
        block[3] = 2;
        frames[1] = block.into();
        let err = decode(&frames, "tcp://x").unwrap_err();
        assert!(err.to_string().contains("version 2"), "{err}");

        let mut block = MAGIC.to_vec();
        block.push(0);
        for _ in 0..2 {
            block.extend_from_slice(&[TAG_KEY, 0, 0, 0, 1, b'k']);
        }
        let frames = [Bytes::from("t"), Bytes::from(block), Bytes::new()];
        assert!(decode(&frames, "tcp://x").is_err());
    }
}
