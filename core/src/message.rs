//! The message a publisher sends and a consumer receives.

use std::collections::btree_map::{self, BTreeMap};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

/// A message: where it goes, what it carries, and the properties brokers share.
///
/// Built with a consuming builder and read with accessors:
///
/// ```
/// use std::time::Duration;
/// use tower_mq_core::Message;
///
/// let msg = Message::new("orders", "{\"id\":42}")
///     .with_key("user-42")
///     .with_header("tenant", "acme")
///     .with_priority(5)
///     .with_ttl(Duration::from_secs(30))
///     .with_persistent(true)
///     .with_message_id("order-42")
///     .with_content_type("application/json");
///
/// assert_eq!(msg.destination(), "orders");
/// assert_eq!(msg.key(), Some("user-42"));
/// assert_eq!(msg.headers().get("tenant"), Some("acme"));
/// assert_eq!(msg.payload().as_ref(), b"{\"id\":42}");
/// ```
///
/// The destination names a topic (Kafka, memory), an exchange (RabbitMQ; the key is the
/// routing key), a subject (NATS), a stream or channel (Redis) or a socket (ZeroMQ).
/// A property a broker cannot honour is an error when publishing, never silently dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    destination: String,
    key: Option<String>,
    payload: Bytes,
    headers: Headers,
    priority: Option<u8>,
    ttl: Option<Duration>,
    persistent: bool,
    message_id: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
}

impl Message {
    /// A message for `destination` carrying `payload`, with no properties set.
    ///
    /// Messages are persistent by default (durable where the broker supports it);
    /// call [`Message::with_persistent`] with `false` for transient ones.
    pub fn new(destination: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            destination: destination.into(),
            key: None,
            payload: payload.into(),
            headers: Headers::new(),
            priority: None,
            ttl: None,
            persistent: true,
            message_id: None,
            correlation_id: None,
            reply_to: None,
            content_type: None,
            content_encoding: None,
        }
    }

    /// Sets the key: Kafka partition key, RabbitMQ routing key, ordering key elsewhere.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds one header, replacing a previous value under the same name.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the priority (0 lowest, 9 highest is the portable range; RabbitMQ allows 255).
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sets the time to live: the message expires if not delivered within it.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Asks the broker to store the message durably (the default) or not.
    pub fn with_persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Sets the message id, used for deduplication (JetStream `Nats-Msg-Id`, dedup layer).
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the correlation id linking a reply to its request.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Sets the destination replies should be sent to.
    pub fn with_reply_to(mut self, destination: impl Into<String>) -> Self {
        self.reply_to = Some(destination.into());
        self
    }

    /// Sets the MIME type of the payload.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the encoding of the payload (e.g. `gzip`), as the compression layer does.
    pub fn with_content_encoding(mut self, encoding: impl Into<String>) -> Self {
        self.content_encoding = Some(encoding.into());
        self
    }

    /// The destination: topic, exchange, subject, stream, channel or socket.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The headers, mutably (the trace layer writes `traceparent` here).
    pub fn headers_mut(&mut self) -> &mut Headers {
        &mut self.headers
    }

    /// The priority, if set.
    pub fn priority(&self) -> Option<u8> {
        self.priority
    }

    /// The time to live, if set.
    pub fn ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// Whether the broker is asked to store the message durably.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The message id, if set.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The correlation id, if set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The reply-to destination, if set.
    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_deref()
    }

    /// The content type, if set.
    pub fn content_type(&self) -> Option<&str> {
        self.content_type.as_deref()
    }

    /// The content encoding, if set.
    pub fn content_encoding(&self) -> Option<&str> {
        self.content_encoding.as_deref()
    }

    /// Replaces the destination.
    pub fn set_destination(&mut self, destination: impl Into<String>) {
        self.destination = destination.into();
    }

    /// Replaces or clears the key.
    pub fn set_key(&mut self, key: Option<String>) {
        self.key = key;
    }

    /// Replaces the payload.
    pub fn set_payload(&mut self, payload: impl Into<Bytes>) {
        self.payload = payload.into();
    }

    /// Replaces or clears the priority.
    pub fn set_priority(&mut self, priority: Option<u8>) {
        self.priority = priority;
    }

    /// Replaces or clears the time to live.
    pub fn set_ttl(&mut self, ttl: Option<Duration>) {
        self.ttl = ttl;
    }

    /// Sets whether the message is persistent.
    pub fn set_persistent(&mut self, persistent: bool) {
        self.persistent = persistent;
    }

    /// Replaces or clears the message id.
    pub fn set_message_id(&mut self, id: Option<String>) {
        self.message_id = id;
    }

    /// Replaces or clears the correlation id.
    pub fn set_correlation_id(&mut self, id: Option<String>) {
        self.correlation_id = id;
    }

    /// Replaces or clears the reply-to destination.
    pub fn set_reply_to(&mut self, destination: Option<String>) {
        self.reply_to = destination;
    }

    /// Replaces or clears the content type.
    pub fn set_content_type(&mut self, content_type: Option<String>) {
        self.content_type = content_type;
    }

    /// Replaces or clears the content encoding.
    pub fn set_content_encoding(&mut self, encoding: Option<String>) {
        self.content_encoding = encoding;
    }

    /// Consumes the message, returning its payload.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may be large or binary: show its size, not its bytes.
        f.debug_struct("Message")
            .field("destination", &self.destination)
            .field("key", &self.key)
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("priority", &self.priority)
            .field("ttl", &self.ttl)
            .field("persistent", &self.persistent)
            .field("message_id", &self.message_id)
            .field("correlation_id", &self.correlation_id)
            .field("reply_to", &self.reply_to)
            .field("content_type", &self.content_type)
            .field("content_encoding", &self.content_encoding)
            .finish()
    }
}

/// Message headers: UTF-8 names and values, ordered by name.
///
/// Strings are the subset every broker carries faithfully (Kafka and NATS headers,
/// AMQP field tables, Redis stream fields, the ZeroMQ framing), so a header survives a
/// trip through any broker, or from one broker to another.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Headers {
    map: BTreeMap<String, String>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// Inserts a header, returning the previous value under that name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.map.insert(name.into(), value.into())
    }

    /// The value under `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// Removes the header under `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    /// Whether a header named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Iterates over `(name, value)` pairs in name order.
    pub fn iter(&self) -> HeadersIter<'_> {
        HeadersIter {
            inner: self.map.iter(),
        }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.map.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers {
            map: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        self.map
            .extend(iter.into_iter().map(|(k, v)| (k.into(), v.into())));
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = HeadersIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over [`Headers`], from [`Headers::iter`].
#[derive(Debug, Clone)]
pub struct HeadersIter<'a> {
    inner: btree_map::Iter<'a, String, String>,
}

impl<'a> Iterator for HeadersIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_every_property() {
        let msg = Message::new("t", "p")
            .with_key("k")
            .with_header("a", "1")
            .with_priority(3)
            .with_ttl(Duration::from_millis(5))
            .with_persistent(false)
            .with_message_id("m")
            .with_correlation_id("c")
            .with_reply_to("r")
            .with_content_type("text/plain")
            .with_content_encoding("gzip");
        assert_eq!(msg.key(), Some("k"));
        assert_eq!(msg.headers().get("a"), Some("1"));
        assert_eq!(msg.priority(), Some(3));
        assert_eq!(msg.ttl(), Some(Duration::from_millis(5)));
        assert!(!msg.is_persistent());
        assert_eq!(msg.message_id(), Some("m"));
        assert_eq!(msg.correlation_id(), Some("c"));
        assert_eq!(msg.reply_to(), Some("r"));
        assert_eq!(msg.content_type(), Some("text/plain"));
        assert_eq!(msg.content_encoding(), Some("gzip"));
    }

    #[test]
    fn debug_shows_payload_size_not_bytes() {
        let msg = Message::new("t", vec![0u8; 1024]);
        let shown = format!("{msg:?}");
        assert!(shown.contains("payload_len: 1024"), "{shown}");
    }
}
