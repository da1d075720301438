//! Message headers: an ordered list of named values that keep what the broker carried.
//!
//! Brokers disagree on what a header is. Kafka and NATS carry byte or text values and
//! allow a name more than once; Kafka also has headers without a value; AMQP field
//! tables carry typed values (integers, booleans, timestamps, arrays, nested tables).
//! [`Headers`] holds the union, so a message consumed from one broker and published
//! back to the same broker leaves it as it came, byte for byte and type for type:
//!
//! - values are [`HeaderValue`]s: bytes by default, with text access where the bytes
//!   are UTF-8, and AMQP's native types where the message came from (or goes to)
//!   RabbitMQ;
//! - names may repeat; [`Headers::append`] adds a value, [`Headers::insert`] replaces
//!   every value under a name, and iteration follows insertion order.
//!
//! A broker that cannot carry a value (a typed value on Kafka, bytes that are not text
//! in a NATS header) fails the publish with an error naming the header.
//!
//! ```
//! use tower_mq_core::{HeaderValue, Headers};
//!
//! let mut headers = Headers::new();
//! headers.insert("tenant", "acme");
//! headers.append("hop", "edge");
//! headers.append("hop", "core");
//! headers.insert("attempt", 3i64);
//! headers.insert("raw", &b"\x00\xff"[..]);
//!
//! assert_eq!(headers.get_str("tenant"), Some("acme"));
//! assert_eq!(headers.get_all("hop").filter_map(HeaderValue::as_str).collect::<Vec<_>>(), ["edge", "core"]);
//! assert_eq!(headers.get("attempt"), Some(&HeaderValue::I64(3)));
//! assert_eq!(headers.get("raw").and_then(HeaderValue::as_bytes), Some(&b"\x00\xff"[..]));
//! assert_eq!(headers.get_str("raw"), None); // not UTF-8
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// One header value: bytes, or one of the typed values AMQP field tables carry.
///
/// [`HeaderValue::Bytes`] is what every broker carries; text is bytes that are UTF-8
/// ([`HeaderValue::as_str`]). The other variants are AMQP's field types, kept so that a
/// RabbitMQ message keeps its header types through tower-mq; other brokers refuse them
/// at publish time rather than converting them.
#[derive(Clone)]
#[non_exhaustive]
pub enum HeaderValue {
    /// A byte string, often text: a Kafka or NATS header value, a Redis field, an AMQP
    /// long string (`S`).
    Bytes(Bytes),
    /// AMQP byte array (`x`): bytes, distinct from a long string on the wire.
    ByteArray(Bytes),
    /// AMQP boolean (`t`).
    Bool(bool),
    /// AMQP short-short int (`b`).
    I8(i8),
    /// AMQP short-short uint (`B`).
    U8(u8),
    /// AMQP short int (`s`).
    I16(i16),
    /// AMQP short uint (`u`).
    U16(u16),
    /// AMQP long int (`I`).
    I32(i32),
    /// AMQP long uint (`i`).
    U32(u32),
    /// AMQP long-long int (`l`).
    I64(i64),
    /// AMQP float (`f`).
    F32(f32),
    /// AMQP double (`d`).
    F64(f64),
    /// AMQP decimal (`D`): `value` × 10^-`scale`.
    Decimal {
        /// The number of decimal places.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// AMQP timestamp (`T`): seconds since the Unix epoch.
    Timestamp(u64),
    /// AMQP field array (`A`).
    Array(Vec<HeaderValue>),
    /// AMQP field table (`F`), ordered by name as AMQP encodes it.
    Table(BTreeMap<String, HeaderValue>),
    /// No value: a Kafka header without a value, AMQP void (`V`).
    Null,
}

impl HeaderValue {
    /// The bytes of a [`Bytes`](HeaderValue::Bytes) or
    /// [`ByteArray`](HeaderValue::ByteArray) value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            HeaderValue::Bytes(b) | HeaderValue::ByteArray(b) => Some(b),
            _ => None,
        }
    }

    /// The text of a [`Bytes`](HeaderValue::Bytes) value that is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// Whether the value is [`Bytes`](HeaderValue::Bytes), the kind every broker carries.
    pub fn is_bytes(&self) -> bool {
        matches!(self, HeaderValue::Bytes(_))
    }

    /// Roughly how many bytes the value takes on the wire: its bytes, or its fixed
    /// size, summed over arrays and tables.
    pub fn size(&self) -> usize {
        match self {
            HeaderValue::Bytes(b) | HeaderValue::ByteArray(b) => b.len(),
            HeaderValue::Bool(_) | HeaderValue::I8(_) | HeaderValue::U8(_) => 1,
            HeaderValue::I16(_) | HeaderValue::U16(_) => 2,
            HeaderValue::I32(_) | HeaderValue::U32(_) | HeaderValue::F32(_) => 4,
            HeaderValue::Decimal { .. } => 5,
            HeaderValue::I64(_) | HeaderValue::F64(_) | HeaderValue::Timestamp(_) => 8,
            HeaderValue::Array(values) => values.iter().map(HeaderValue::size).sum(),
            HeaderValue::Table(table) => table.iter().map(|(k, v)| k.len() + v.size()).sum(),
            HeaderValue::Null => 0,
        }
    }

    /// The name of the value's type, for error messages (`bytes`, `i64`, `table`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Bytes(_) => "bytes",
            HeaderValue::ByteArray(_) => "byte array",
            HeaderValue::Bool(_) => "bool",
            HeaderValue::I8(_) => "i8",
            HeaderValue::U8(_) => "u8",
            HeaderValue::I16(_) => "i16",
            HeaderValue::U16(_) => "u16",
            HeaderValue::I32(_) => "i32",
            HeaderValue::U32(_) => "u32",
            HeaderValue::I64(_) => "i64",
            HeaderValue::F32(_) => "f32",
            HeaderValue::F64(_) => "f64",
            HeaderValue::Decimal { .. } => "decimal",
            HeaderValue::Timestamp(_) => "timestamp",
            HeaderValue::Array(_) => "array",
            HeaderValue::Table(_) => "table",
            HeaderValue::Null => "null",
        }
    }
}

impl PartialEq for HeaderValue {
    fn eq(&self, other: &Self) -> bool {
        use HeaderValue::*;
        match (self, other) {
            (Bytes(a), Bytes(b)) | (ByteArray(a), ByteArray(b)) => a == b,
            (Bool(a), Bool(b)) => a == b,
            (I8(a), I8(b)) => a == b,
            (U8(a), U8(b)) => a == b,
            (I16(a), I16(b)) => a == b,
            (U16(a), U16(b)) => a == b,
            (I32(a), I32(b)) => a == b,
            (U32(a), U32(b)) => a == b,
            (I64(a), I64(b)) => a == b,
            // Bitwise, so that equality is an equivalence (NaN equals itself) and a
            // value compares equal to what the wire gave back.
            (F32(a), F32(b)) => a.to_bits() == b.to_bits(),
            (F64(a), F64(b)) => a.to_bits() == b.to_bits(),
            (
                Decimal {
                    scale: sa,
                    value: va,
                },
                Decimal {
                    scale: sb,
                    value: vb,
                },
            ) => sa == sb && va == vb,
            (Timestamp(a), Timestamp(b)) => a == b,
            (Array(a), Array(b)) => a == b,
            (Table(a), Table(b)) => a == b,
            (Null, Null) => true,
            _ => false,
        }
    }
}

impl Eq for HeaderValue {}

impl std::hash::Hash for HeaderValue {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        use HeaderValue::*;
        std::mem::discriminant(self).hash(state);
        match self {
            Bytes(b) | ByteArray(b) => b.hash(state),
            Bool(v) => v.hash(state),
            I8(v) => v.hash(state),
            U8(v) => v.hash(state),
            I16(v) => v.hash(state),
            U16(v) => v.hash(state),
            I32(v) => v.hash(state),
            U32(v) => v.hash(state),
            I64(v) => v.hash(state),
            F32(v) => v.to_bits().hash(state),
            F64(v) => v.to_bits().hash(state),
            Decimal { scale, value } => (scale, value).hash(state),
            Timestamp(v) => v.hash(state),
            Array(v) => v.hash(state),
            Table(v) => v.hash(state),
            Null => {}
        }
    }
}

impl fmt::Debug for HeaderValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderValue::Bytes(b) => match std::str::from_utf8(b) {
                Ok(text) => fmt::Debug::fmt(text, f),
                Err(_) => write!(f, "b{:?}", BytesDebug(b)),
            },
            HeaderValue::ByteArray(b) => write!(f, "ByteArray(b{:?})", BytesDebug(b)),
            HeaderValue::Bool(v) => write!(f, "Bool({v})"),
            HeaderValue::I8(v) => write!(f, "I8({v})"),
            HeaderValue::U8(v) => write!(f, "U8({v})"),
            HeaderValue::I16(v) => write!(f, "I16({v})"),
            HeaderValue::U16(v) => write!(f, "U16({v})"),
            HeaderValue::I32(v) => write!(f, "I32({v})"),
            HeaderValue::U32(v) => write!(f, "U32({v})"),
            HeaderValue::I64(v) => write!(f, "I64({v})"),
            HeaderValue::F32(v) => write!(f, "F32({v:?})"),
            HeaderValue::F64(v) => write!(f, "F64({v:?})"),
            HeaderValue::Decimal { scale, value } => {
                write!(f, "Decimal {{ scale: {scale}, value: {value} }}")
            }
            HeaderValue::Timestamp(v) => write!(f, "Timestamp({v})"),
            HeaderValue::Array(v) => f.debug_tuple("Array").field(v).finish(),
            HeaderValue::Table(v) => f.debug_tuple("Table").field(v).finish(),
            HeaderValue::Null => f.write_str("Null"),
        }
    }
}

/// Shows bytes as an escaped byte string.
struct BytesDebug<'a>(&'a [u8]);

impl fmt::Debug for BytesDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for &b in self.0 {
            for c in std::ascii::escape_default(b) {
                fmt::Write::write_char(f, c as char)?;
            }
        }
        f.write_str("\"")
    }
}

impl From<&str> for HeaderValue {
    fn from(text: &str) -> Self {
        HeaderValue::Bytes(Bytes::copy_from_slice(text.as_bytes()))
    }
}

impl From<String> for HeaderValue {
    fn from(text: String) -> Self {
        HeaderValue::Bytes(Bytes::from(text))
    }
}

impl From<&String> for HeaderValue {
    fn from(text: &String) -> Self {
        HeaderValue::from(text.as_str())
    }
}

impl From<&[u8]> for HeaderValue {
    fn from(bytes: &[u8]) -> Self {
        HeaderValue::Bytes(Bytes::copy_from_slice(bytes))
    }
}

impl From<Vec<u8>> for HeaderValue {
    fn from(bytes: Vec<u8>) -> Self {
        HeaderValue::Bytes(Bytes::from(bytes))
    }
}

impl From<Bytes> for HeaderValue {
    fn from(bytes: Bytes) -> Self {
        HeaderValue::Bytes(bytes)
    }
}

macro_rules! from_scalar {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<$t> for HeaderValue {
            fn from(value: $t) -> Self {
                HeaderValue::$variant(value)
            }
        }
    )*};
}

from_scalar!(
    bool => Bool,
    i8 => I8,
    u8 => U8,
    i16 => I16,
    u16 => U16,
    i32 => I32,
    u32 => U32,
    i64 => I64,
    f32 => F32,
    f64 => F64,
);

/// Message headers: named [`HeaderValue`]s in insertion order; a name may repeat.
///
/// See the [module docs](self). Cloning shares the list; a clone that changes it copies
/// it first.
#[derive(Clone, Default)]
pub struct Headers {
    /// `None` while empty, so that a message without headers allocates none.
    entries: Option<Arc<Vec<(String, HeaderValue)>>>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    fn entries(&self) -> &[(String, HeaderValue)] {
        self.entries.as_deref().map_or(&[], Vec::as_slice)
    }

    fn entries_mut(&mut self) -> &mut Vec<(String, HeaderValue)> {
        Arc::make_mut(self.entries.get_or_insert_with(Arc::default))
    }

    /// Sets `name` to `value`, replacing every value under that name (the new value
    /// takes the place of the first one), and returns the first replaced value.
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        value: impl Into<HeaderValue>,
    ) -> Option<HeaderValue> {
        let name = name.into();
        let value = value.into();
        let Some(first) = self.position(&name) else {
            self.entries_mut().push((name, value));
            return None;
        };
        let entries = self.entries_mut();
        let previous = std::mem::replace(&mut entries[first].1, value);
        let mut index = first + 1;
        while index < entries.len() {
            if entries[index].0 == name {
                entries.remove(index);
            } else {
                index += 1;
            }
        }
        Some(previous)
    }

    /// Adds a value under `name`, after any already there.
    pub fn append(&mut self, name: impl Into<String>, value: impl Into<HeaderValue>) {
        self.entries_mut().push((name.into(), value.into()));
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries().iter().position(|(n, _)| n == name)
    }

    /// The first value under `name`.
    pub fn get(&self, name: &str) -> Option<&HeaderValue> {
        self.entries()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The first value under `name`, when it is text (UTF-8 bytes).
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(HeaderValue::as_str)
    }

    /// Every value under `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.entries()
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Removes every value under `name`, returning the first.
    pub fn remove(&mut self, name: &str) -> Option<HeaderValue> {
        let first = self.position(name)?;
        let entries = self.entries_mut();
        let value = entries.remove(first).1;
        entries.retain(|(n, _)| n != name);
        Some(value)
    }

    /// Whether a header named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// The number of entries (a repeated name counts once per value).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// Iterates over `(name, value)` entries in insertion order.
    pub fn iter(&self) -> HeadersIter<'_> {
        HeadersIter {
            inner: self.entries().iter(),
        }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
}

impl Eq for Headers {}

impl std::hash::Hash for Headers {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.entries().hash(state)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries().iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Into<String>, V: Into<HeaderValue>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        headers.extend(iter);
        headers
    }
}

/// Appends every entry, keeping repeated names.
impl<K: Into<String>, V: Into<HeaderValue>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_some() {
            self.entries_mut()
                .extend(iter.map(|(k, v)| (k.into(), v.into())));
        }
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a HeaderValue);
    type IntoIter = HeadersIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over [`Headers`], from [`Headers::iter`].
#[derive(Debug, Clone)]
pub struct HeadersIter<'a> {
    inner: std::slice::Iter<'a, (String, HeaderValue)>,
}

impl<'a> Iterator for HeadersIter<'a> {
    type Item = (&'a str, &'a HeaderValue);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k.as_str(), v))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

impl ExactSizeIterator for HeadersIter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_replaces_every_value_and_append_keeps_them() {
        let mut h = Headers::new();
        h.append("a", "1");
        h.append("b", "x");
        h.append("a", "2");
        assert_eq!(h.len(), 3);
        assert_eq!(h.get_all("a").count(), 2);
        assert_eq!(h.insert("a", "3"), Some(HeaderValue::from("1")));
        let entries: Vec<_> = h.iter().map(|(n, v)| (n, v.as_str().unwrap())).collect();
        assert_eq!(entries, [("a", "3"), ("b", "x")]);
        assert_eq!(h.remove("a"), Some(HeaderValue::from("3")));
        assert!(!h.contains("a"));
        assert_eq!(h.remove("a"), None);
    }

    #[test]
    fn values_keep_bytes_and_types() {
        let raw = HeaderValue::from(vec![0u8, 1, 0xff, 0xfe]);
        assert_eq!(raw.as_bytes(), Some(&[0u8, 1, 0xff, 0xfe][..]));
        assert_eq!(raw.as_str(), None);
        assert_eq!(format!("{raw:?}"), "b\"\\x00\\x01\\xff\\xfe\"");
        assert_ne!(HeaderValue::from(5i32), HeaderValue::from(5i64));
        assert_eq!(HeaderValue::F64(f64::NAN), HeaderValue::F64(f64::NAN));
        assert_ne!(
            HeaderValue::Bytes(Bytes::from_static(b"a")),
            HeaderValue::ByteArray(Bytes::from_static(b"a"))
        );
    }

    #[test]
    fn equality_follows_order() {
        let ab: Headers = [("a", "1"), ("b", "2")].into_iter().collect();
        let ba: Headers = [("b", "2"), ("a", "1")].into_iter().collect();
        assert_ne!(ab, ba);
        assert_eq!(ab, ab.clone());
        let mut emptied = ab.clone();
        emptied.remove("a");
        emptied.remove("b");
        assert_eq!(emptied, Headers::new());
    }
}
