//! The message a publisher sends and a consumer receives.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use crate::header::{HeaderValue, Headers, HeadersIter};

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
/// assert_eq!(msg.key(), Some(&b"user-42"[..]));
/// assert_eq!(msg.key_str(), Some("user-42"));
/// assert_eq!(msg.headers().get_str("tenant"), Some("acme"));
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
/// A small key or payload held only by this message is copied instead (see
/// [`Clone`](#impl-Clone-for-Message)).
pub struct Message {
    destination: Arc<str>,
    key: Option<Bytes>,
    payload: Bytes,
    headers: Headers,
    /// `None` while every property is unset.
    properties: Option<Arc<Properties>>,
    persistent: bool,
}

/// Payloads up to this size that only one message holds are copied by a clone.
const COPIED_ON_CLONE: usize = 256;

/// A clone of `bytes`: a copy if it is small and held by nobody else, else shared.
///
/// Sharing bytes that only one owner holds (a `Bytes` made from a `Vec` or a
/// `String`) first moves them under a reference count, an allocation that the last
/// owner frees, often on another thread (the broker client's), where the allocator's
/// per-thread cache cannot hand it back to the thread that clones. A copy of a few
/// hundred bytes is cheaper, and it is freed where it was made (a retry's copy, say).
fn clone_bytes(bytes: &Bytes) -> Bytes {
    if bytes.len() <= COPIED_ON_CLONE && bytes.is_unique() {
        Bytes::copy_from_slice(bytes)
    } else {
        bytes.clone()
    }
}

/// Shares the destination, headers and properties; a key or payload of up to 256
/// bytes that only this message holds is copied, a larger or already shared one is
/// shared.
impl Clone for Message {
    fn clone(&self) -> Self {
        Message {
            destination: self.destination.clone(),
            key: self.key.as_ref().map(clone_bytes),
            payload: clone_bytes(&self.payload),
            headers: self.headers.clone(),
            properties: self.properties.clone(),
            persistent: self.persistent,
        }
    }
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
    timestamp: Option<SystemTime>,
    message_type: Option<String>,
    app_id: Option<String>,
    user_id: Option<String>,
}

static NO_PROPERTIES: Properties = Properties {
    priority: None,
    ttl: None,
    message_id: None,
    correlation_id: None,
    reply_to: None,
    content_type: None,
    content_encoding: None,
    timestamp: None,
    message_type: None,
    app_id: None,
    user_id: None,
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
    ///
    /// The destination is any string, or an `Arc<str>` that many messages share: a
    /// program that publishes to the same place many times can make it once and
    /// spare an allocation per message (see [`IntoDestination`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_mq_core::Message;
    ///
    /// let orders: Arc<str> = Arc::from("orders");
    /// let first = Message::new(orders.clone(), "1");
    /// let second = Message::new(&orders, "2");
    /// assert_eq!(first.destination(), second.destination());
    /// ```
    pub fn new(destination: impl IntoDestination, payload: impl Into<Bytes>) -> Self {
        Message {
            destination: destination.into_destination(),
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

    /// Sets the key: Kafka record key (any bytes), RabbitMQ routing key (text), an
    /// ordering key elsewhere.
    pub fn with_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = Some(Bytes::copy_from_slice(key.as_ref()));
        self
    }

    /// Sets one header, replacing every previous value under the same name.
    ///
    /// Values are bytes (`&str`, `String`, `&[u8]`, `Vec<u8>`, `Bytes`) or one of the
    /// typed [`HeaderValue`]s; [`Headers::append`] adds a repeated name.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<HeaderValue>) -> Self {
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

    /// Sets when the message was created (AMQP `timestamp`, Kafka record timestamp).
    ///
    /// On a delivery it is the time the broker gives the message: the AMQP `timestamp`
    /// property, the Kafka record timestamp, the time JetStream stored it, the time in
    /// a Redis stream entry's id.
    pub fn with_timestamp(mut self, timestamp: SystemTime) -> Self {
        self.properties_mut().timestamp = Some(timestamp);
        self
    }

    /// Sets the application-level type of the message (AMQP `type`).
    pub fn with_message_type(mut self, message_type: impl Into<String>) -> Self {
        self.properties_mut().message_type = Some(message_type.into());
        self
    }

    /// Sets the id of the application that produced the message (AMQP `app_id`).
    pub fn with_app_id(mut self, app_id: impl Into<String>) -> Self {
        self.properties_mut().app_id = Some(app_id.into());
        self
    }

    /// Sets the id of the authenticated user that published the message (AMQP
    /// `user_id`; RabbitMQ refuses a value other than the connection's user).
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.properties_mut().user_id = Some(user_id.into());
        self
    }

    /// The destination: topic, exchange, subject, stream, channel or socket.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// The destination, shared: another reference to the message's own copy, for what
    /// outlives the message (a [`Receipt`](crate::Receipt), an error, a cache key)
    /// without copying the name.
    pub fn shared_destination(&self) -> Arc<str> {
        self.destination.clone()
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The key, when it is text (UTF-8).
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|k| std::str::from_utf8(k).ok())
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

    /// When the message was created or stored, if known.
    pub fn timestamp(&self) -> Option<SystemTime> {
        self.properties().timestamp
    }

    /// The application-level message type, if set.
    pub fn message_type(&self) -> Option<&str> {
        self.properties().message_type.as_deref()
    }

    /// The producing application's id, if set.
    pub fn app_id(&self) -> Option<&str> {
        self.properties().app_id.as_deref()
    }

    /// The publishing user's id, if set.
    pub fn user_id(&self) -> Option<&str> {
        self.properties().user_id.as_deref()
    }

    /// Replaces the destination.
    pub fn set_destination(&mut self, destination: impl IntoDestination) {
        self.destination = destination.into_destination();
    }

    /// Replaces or clears the key.
    pub fn set_key(&mut self, key: Option<Bytes>) {
        self.key = key;
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

    /// Replaces or clears the timestamp.
    pub fn set_timestamp(&mut self, timestamp: Option<SystemTime>) {
        self.set(timestamp, |p| &mut p.timestamp);
    }

    /// Replaces or clears the message type.
    pub fn set_message_type(&mut self, message_type: Option<String>) {
        self.set(message_type, |p| &mut p.message_type);
    }

    /// Replaces or clears the app id.
    pub fn set_app_id(&mut self, app_id: Option<String>) {
        self.set(app_id, |p| &mut p.app_id);
    }

    /// Replaces or clears the user id.
    pub fn set_user_id(&mut self, user_id: Option<String>) {
        self.set(user_id, |p| &mut p.user_id);
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
            .field("key", &self.key.as_deref().map(KeyDebug))
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
            .field("timestamp", &self.properties().timestamp)
            .field("message_type", &self.properties().message_type)
            .field("app_id", &self.properties().app_id)
            .field("user_id", &self.properties().user_id)
            .finish()
    }
}

/// Shows a key as text when it is UTF-8, as escaped bytes otherwise.
struct KeyDebug<'a>(&'a [u8]);

impl fmt::Debug for KeyDebug<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self.0) {
            Ok(text) => fmt::Debug::fmt(text, f),
            Err(_) => fmt::Debug::fmt(&HeaderValue::Bytes(Bytes::copy_from_slice(self.0)), f),
        }
    }
}

/// What a message's destination can be made from: a string in any of its usual forms,
/// or an `Arc<str>`, which messages then share without copying it.
///
/// A message keeps its destination as an `Arc<str>`, so that cloning a message (a
/// retry, a fan-out) shares it. Made from a `&str` or a `String`, the destination is
/// copied into a new allocation; made from an `Arc<str>` (or a reference to one), it
/// is shared and nothing is allocated.
pub trait IntoDestination {
    /// The destination, as the message keeps it.
    fn into_destination(self) -> Arc<str>;
}

impl IntoDestination for &str {
    fn into_destination(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl IntoDestination for &mut str {
    fn into_destination(self) -> Arc<str> {
        Arc::from(&*self)
    }
}

impl IntoDestination for String {
    fn into_destination(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl IntoDestination for &String {
    fn into_destination(self) -> Arc<str> {
        Arc::from(self.as_str())
    }
}

impl IntoDestination for Box<str> {
    fn into_destination(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl IntoDestination for std::borrow::Cow<'_, str> {
    fn into_destination(self) -> Arc<str> {
        Arc::from(self)
    }
}

impl IntoDestination for Arc<str> {
    fn into_destination(self) -> Arc<str> {
        self
    }
}

impl IntoDestination for &Arc<str> {
    fn into_destination(self) -> Arc<str> {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_copies_a_small_payload_it_alone_holds_and_shares_the_rest() {
        // Small and held by this message alone: copied, the original stays unshared.
        let small = Message::new("t", vec![7u8; COPIED_ON_CLONE]).with_key(String::from("k"));
        let copy = small.clone();
        assert_eq!(copy.payload(), small.payload());
        assert_eq!(copy.key(), small.key());
        assert!(small.payload().is_unique() && copy.payload().is_unique());
        assert_ne!(copy.payload().as_ptr(), small.payload().as_ptr());
        // Larger: shared, as `Bytes` clones are.
        let large = Message::new("t", vec![7u8; COPIED_ON_CLONE + 1]);
        let shared = large.clone();
        assert_eq!(shared.payload().as_ptr(), large.payload().as_ptr());
        // Already shared, or static: shared again.
        let again = shared.clone();
        assert_eq!(again.payload().as_ptr(), large.payload().as_ptr());
        let fixed = Message::new("t", "static");
        assert_eq!(fixed.clone().payload().as_ptr(), fixed.payload().as_ptr());
    }

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
        assert_eq!(msg.key_str(), Some("k"));
        assert_eq!(msg.headers().get_str("a"), Some("1"));
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
    fn keys_and_timestamps_are_kept_exactly() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let msg = Message::new("t", "")
            .with_key([0u8, 1, 0xff, 0xfe])
            .with_timestamp(at)
            .with_message_type("order.created")
            .with_app_id("shop")
            .with_user_id("guest");
        assert_eq!(msg.key(), Some(&[0u8, 1, 0xff, 0xfe][..]));
        assert_eq!(msg.key_str(), None);
        assert_eq!(msg.timestamp(), Some(at));
        assert_eq!(msg.message_type(), Some("order.created"));
        assert_eq!(msg.app_id(), Some("shop"));
        assert_eq!(msg.user_id(), Some("guest"));
        assert!(format!("{msg:?}").contains(r#"key: Some(b"\x00\x01\xff\xfe")"#));
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
        assert_eq!(original.key_str(), Some("k"));
        assert_eq!(original.headers().get_str("a"), Some("1"));
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
