//! The message a publisher sends and a consumer receives.

use std::collections::btree_map::{self, BTreeMap};
use std::fmt;
use std::sync::Arc;
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
///
/// Cloning is cheap: strings and the payload are shared, not copied (a retry or a
/// fan-out clones a message per attempt or per publisher), and the rarely set
/// properties live behind one shared pointer, copied only when a clone changes them.
#[derive(Clone)]
pub struct Message {
    destination: Arc<str>,
    key: Option<Arc<str>>,
    payload: Bytes,
    headers: Headers,
    /// `None` while every property is unset.
    properties: Option<Arc<Properties>>,
    persistent: bool,
}

/// The properties most messages do not set.
#[derive(Clone, Default, PartialEq, Eq)]
struct Properties {
    priority: Option<u8>,
    ttl: Option<Duration>,
    message_id: Option<String>,
    correlation_id: Option<String>,
    reply_to: Option<String>,
    content_type: Option<String>,
    content_encoding: Option<String>,
}

static NO_PROPERTIES: Properties = Properties {
    priority: None,
    ttl: None,
    message_id: None,
    correlation_id: None,
    reply_to: None,
    content_type: None,
    content_encoding: None,
};

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.destination == other.destination
            && self.key == other.key
            && self.payload == other.payload
            && self.headers == other.headers
            && self.properties() == other.properties()
            && self.persistent == other.persistent
    }
}

impl Eq for Message {}

impl Message {
    /// A message for `destination` carrying `payload`, with no properties set.
    ///
    /// Messages are persistent by default (durable where the broker supports it);
    /// call [`Message::with_persistent`] with `false` for transient ones.
    pub fn new(destination: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Message {
            destination: Arc::from(destination.into()),
            key: None,
            payload: payload.into(),
            headers: Headers::new(),
            properties: None,
            persistent: true,
        }
    }

    fn properties(&self) -> &Properties {
        self.properties.as_deref().unwrap_or(&NO_PROPERTIES)
    }

    /// The properties, to change: copied first if a clone shares them.
    fn properties_mut(&mut self) -> &mut Properties {
        Arc::make_mut(self.properties.get_or_insert_with(Arc::default))
    }

    /// Sets a property to `value`; clearing an unset one allocates nothing.
    fn set<T>(&mut self, value: Option<T>, field: impl FnOnce(&mut Properties) -> &mut Option<T>) {
        if value.is_some() || self.properties.is_some() {
            *field(self.properties_mut()) = value;
        }
    }

    /// Sets the key: Kafka partition key, RabbitMQ routing key, ordering key elsewhere.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(Arc::from(key.into()));
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
        self.properties_mut().priority = Some(priority);
        self
    }

    /// Sets the time to live: the message expires if not delivered within it.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.properties_mut().ttl = Some(ttl);
        self
    }

    /// Asks the broker to store the message durably (the default) or not.
    pub fn with_persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// Sets the message id, used for deduplication (JetStream `Nats-Msg-Id`, dedup layer).
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.properties_mut().message_id = Some(id.into());
        self
    }

    /// Sets the correlation id linking a reply to its request.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.properties_mut().correlation_id = Some(id.into());
        self
    }

    /// Sets the destination replies should be sent to.
    pub fn with_reply_to(mut self, destination: impl Into<String>) -> Self {
        self.properties_mut().reply_to = Some(destination.into());
        self
    }

    /// Sets the MIME type of the payload.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.properties_mut().content_type = Some(content_type.into());
        self
    }

    /// Sets the encoding of the payload (e.g. `gzip`), as the compression layer does.
    pub fn with_content_encoding(mut self, encoding: impl Into<String>) -> Self {
        self.properties_mut().content_encoding = Some(encoding.into());
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
        self.properties().priority
    }

    /// The time to live, if set.
    pub fn ttl(&self) -> Option<Duration> {
        self.properties().ttl
    }

    /// Whether the broker is asked to store the message durably.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }

    /// The message id, if set.
    pub fn message_id(&self) -> Option<&str> {
        self.properties().message_id.as_deref()
    }

    /// The correlation id, if set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.properties().correlation_id.as_deref()
    }

    /// The reply-to destination, if set.
    pub fn reply_to(&self) -> Option<&str> {
        self.properties().reply_to.as_deref()
    }

    /// The content type, if set.
    pub fn content_type(&self) -> Option<&str> {
        self.properties().content_type.as_deref()
    }

    /// The content encoding, if set.
    pub fn content_encoding(&self) -> Option<&str> {
        self.properties().content_encoding.as_deref()
    }

    /// Replaces the destination.
    pub fn set_destination(&mut self, destination: impl Into<String>) {
        self.destination = Arc::from(destination.into());
    }

    /// Replaces or clears the key.
    pub fn set_key(&mut self, key: Option<String>) {
        self.key = key.map(Arc::from);
    }

    /// Replaces the payload.
    pub fn set_payload(&mut self, payload: impl Into<Bytes>) {
        self.payload = payload.into();
    }

    /// Replaces or clears the priority.
    pub fn set_priority(&mut self, priority: Option<u8>) {
        self.set(priority, |p| &mut p.priority);
    }

    /// Replaces or clears the time to live.
    pub fn set_ttl(&mut self, ttl: Option<Duration>) {
        self.set(ttl, |p| &mut p.ttl);
    }

    /// Sets whether the message is persistent.
    pub fn set_persistent(&mut self, persistent: bool) {
        self.persistent = persistent;
    }

    /// Replaces or clears the message id.
    pub fn set_message_id(&mut self, id: Option<String>) {
        self.set(id, |p| &mut p.message_id);
    }

    /// Replaces or clears the correlation id.
    pub fn set_correlation_id(&mut self, id: Option<String>) {
        self.set(id, |p| &mut p.correlation_id);
    }

    /// Replaces or clears the reply-to destination.
    pub fn set_reply_to(&mut self, destination: Option<String>) {
        self.set(destination, |p| &mut p.reply_to);
    }

    /// Replaces or clears the content type.
    pub fn set_content_type(&mut self, content_type: Option<String>) {
        self.set(content_type, |p| &mut p.content_type);
    }

    /// Replaces or clears the content encoding.
    pub fn set_content_encoding(&mut self, encoding: Option<String>) {
        self.set(encoding, |p| &mut p.content_encoding);
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
            .field("destination", &&*self.destination)
            .field("key", &self.key.as_deref())
            .field("payload_len", &self.payload.len())
            .field("headers", &self.headers)
            .field("priority", &self.properties().priority)
            .field("ttl", &self.properties().ttl)
            .field("persistent", &self.persistent)
            .field("message_id", &self.properties().message_id)
            .field("correlation_id", &self.properties().correlation_id)
            .field("reply_to", &self.properties().reply_to)
            .field("content_type", &self.properties().content_type)
            .field("content_encoding", &self.properties().content_encoding)
            .finish()
    }
}

/// Message headers: UTF-8 names and values, ordered by name.
///
/// Strings are the subset every broker carries faithfully (Kafka and NATS headers,
/// AMQP field tables, Redis stream fields, the ZeroMQ framing), so a header survives a
/// trip through any broker, or from one broker to another.
///
/// Cloning shares the map; a clone that changes it copies it first.
#[derive(Clone, Default)]
pub struct Headers {
    /// `None` while empty, so that a message without headers allocates none.
    map: Option<Arc<BTreeMap<String, String>>>,
}

static NO_HEADERS: BTreeMap<String, String> = BTreeMap::new();

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    fn map(&self) -> &BTreeMap<String, String> {
        self.map.as_deref().unwrap_or(&NO_HEADERS)
    }

    fn map_mut(&mut self) -> &mut BTreeMap<String, String> {
        Arc::make_mut(self.map.get_or_insert_with(Arc::default))
    }

    /// Inserts a header, returning the previous value under that name.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) -> Option<String> {
        self.map_mut().insert(name.into(), value.into())
    }

    /// The value under `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map().get(name).map(String::as_str)
    }

    /// Removes the header under `name`, returning its value.
    pub fn remove(&mut self, name: &str) -> Option<String> {
        if !self.contains(name) {
            return None;
        }
        self.map_mut().remove(name)
    }

    /// Whether a header named `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    /// The number of headers.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// Iterates over `(name, value)` pairs in name order.
    pub fn iter(&self) -> HeadersIter<'_> {
        HeadersIter {
            inner: self.map().iter(),
        }
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.map() == other.map()
    }
}

impl Eq for Headers {}

impl std::hash::Hash for Headers {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.map().hash(state)
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.map().iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut headers = Headers::new();
        headers.extend(iter);
        headers
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Headers {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        let mut iter = iter.into_iter().peekable();
        if iter.peek().is_some() {
            self.map_mut()
                .extend(iter.map(|(k, v)| (k.into(), v.into())));
        }
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

    #[test]
    fn a_clone_that_changes_leaves_the_original_alone() {
        let original = Message::new("t", "p")
            .with_key("k")
            .with_header("a", "1")
            .with_message_id("m");
        let mut clone = original.clone();
        assert_eq!(clone, original);
        clone.set_destination("u");
        clone.set_key(None);
        clone.headers_mut().insert("a", "2");
        clone.headers_mut().insert("b", "3");
        clone.set_message_id(Some("n".into()));
        clone.set_priority(Some(1));
        assert_ne!(clone, original);
        assert_eq!(original.destination(), "t");
        assert_eq!(original.key(), Some("k"));
        assert_eq!(original.headers().get("a"), Some("1"));
        assert!(!original.headers().contains("b"));
        assert_eq!(original.message_id(), Some("m"));
        assert_eq!(original.priority(), None);
        assert_eq!(clone.headers().len(), 2);
        assert_eq!(clone.message_id(), Some("n"));
    }

    #[test]
    fn equality_ignores_how_unset_properties_and_headers_are_stored() {
        let plain = Message::new("t", "p");
        let mut cleared = Message::new("t", "p")
            .with_priority(2)
            .with_header("a", "1");
        cleared.set_priority(None);
        cleared.headers_mut().remove("a");
        assert_eq!(cleared, plain);
        assert_eq!(cleared.headers(), &Headers::new());
        let mut untouched = Message::new("t", "p");
        untouched.set_ttl(None);
        assert!(untouched.headers_mut().remove("missing").is_none());
        assert_eq!(untouched, plain);
    }
}
