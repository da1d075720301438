//! Client configuration: bootstrap servers, the defaults tower-mq chooses, and any
//! librdkafka property on top.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::ClientConfig;

use crate::redact;

use crate::wire::PropertyHeaders;

/// The producer defaults: idempotent (no duplicates or reordering from librdkafka's
/// own retries), acknowledged by all in-sync replicas, and Java-compatible key hashing
/// so a key lands on the same partition whichever client wrote it.
const PRODUCER_DEFAULTS: [(&str, &str); 4] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
];

/// The consumer defaults: offsets are committed in the background, but only the ones
/// the consumer stored after a handler finished (see the [consumer docs](super::consumer)).
const CONSUMER_DEFAULTS: [(&str, &str); 4] = [
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("auto.commit.interval.ms", "1000"),
];

/// Compression of produced batches (`compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// No compression (librdkafka's default).
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How to reach a Kafka cluster and how to configure the librdkafka clients built
/// from it. See the [module docs](super).
///
/// Every librdkafka property is reachable: [`Config::set`] applies to every client,
/// [`Config::set_producer`] and [`Config::set_consumer`] to one kind; what is set
/// overrides the defaults tower-mq chooses. Producer defaults: `enable.idempotence=true`,
/// `acks=all`, `partitioner=murmur2_random`, `linger.ms=5`. Consumer defaults:
/// `enable.auto.commit=true`, `enable.auto.offset.store=false`,
/// `auto.offset.reset=earliest`, `auto.commit.interval.ms=1000`.
///
/// ```
/// use std::time::Duration;
/// use tower_mq::kafka::{Compression, Config};
///
/// let config = Config::new("127.0.0.1:9092")
///     .compression(Compression::Zstd)
///     .linger(Duration::from_millis(20))
///     .set("client.id", "billing")
///     .set_consumer("session.timeout.ms", "10000");
/// assert_eq!(config.get("compression.type"), Some("zstd"));
/// ```
///
/// `Debug` shows the value of a secret property (`sasl.password`, `ssl.key.password`,
/// `ssl.key.pem`, `sasl.oauthbearer.client.secret`, any whose name speaks of a
/// password, token or secret) as `***`, and so do errors about one.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    bootstrap_servers: String,
    common: BTreeMap<String, String>,
    producer: BTreeMap<String, String>,
    consumer: BTreeMap<String, String>,
    ignore_unsupported: bool,
    pub(crate) operation_timeout: Duration,
    pub(crate) property_headers: PropertyHeaders,
    pub(crate) empty_payloads_as_tombstones: bool,
}

impl Config {
    /// A configuration for the cluster at `bootstrap_servers` (`host:port[,host:port]`).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Config {
            bootstrap_servers: bootstrap_servers.into(),
            common: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
            ignore_unsupported: false,
            operation_timeout: Duration::from_secs(10),
            property_headers: PropertyHeaders::kebab_case(),
            empty_payloads_as_tombstones: false,
        }
    }

    /// The bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Sets a librdkafka property for every client (producer, consumer, admin).
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.common.insert(key.into(), value.into());
        self
    }

    /// Sets a librdkafka property for producers only.
    pub fn set_producer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer.insert(key.into(), value.into());
        self
    }

    /// Sets a librdkafka property for consumers only.
    pub fn set_consumer(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer.insert(key.into(), value.into());
        self
    }

    /// The value set for `key` (producer, then consumer, then common settings), not
    /// counting tower-mq's defaults.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.producer
            .get(key)
            .or_else(|| self.consumer.get(key))
            .or_else(|| self.common.get(key))
            .map(String::as_str)
    }

    /// Compresses produced batches (`compression.type`).
    pub fn compression(self, compression: Compression) -> Self {
        self.set_producer("compression.type", compression.as_str())
    }

    /// How long the producer waits to fill a batch (`linger.ms`).
    pub fn linger(self, linger: Duration) -> Self {
        self.set_producer("linger.ms", linger.as_millis().to_string())
    }

    /// The most messages per produced batch (`batch.num.messages`).
    pub fn batch_messages(self, messages: usize) -> Self {
        self.set_producer("batch.num.messages", messages.to_string())
    }

    /// How many messages librdkafka's local producer queue holds
    /// (`queue.buffering.max.messages`); a full queue makes the publisher's
    /// `poll_ready` wait.
    pub fn queue_capacity(self, messages: usize) -> Self {
        self.set_producer("queue.buffering.max.messages", messages.to_string())
    }

    /// Publishing what a Kafka record cannot carry (a priority, a time to live, a
    /// typed header value, a header name with a NUL, a timestamp not after the epoch)
    /// leaves it out instead of failing (see the [module docs](super#the-record-layout)).
    /// Off by default.
    pub fn ignore_unsupported(mut self, ignore: bool) -> Self {
        self.ignore_unsupported = ignore;
        self
    }

    /// Whether what a record cannot carry is left out instead of refused.
    pub fn ignores_unsupported(&self) -> bool {
        self.ignore_unsupported
    }

    /// The header each property travels in, on publishers and consumers:
    /// [`PropertyHeaders::kebab_case`] (`message-id`, `content-type`, ...) unless set.
    /// Names given to the key and the timestamp are not used: they travel in the
    /// record's own key and timestamp.
    ///
    /// ```
    /// use tower_mq::kafka::Config;
    /// use tower_mq::wire::{Property, PropertyHeaders};
    ///
    /// // Read and write the correlation id where Spring Kafka keeps it.
    /// let config = Config::new("127.0.0.1:9092").property_headers(
    ///     PropertyHeaders::kebab_case().with_name(Property::CorrelationId, "kafka_correlationId"),
    /// );
    /// # let _ = config;
    /// ```
    pub fn property_headers(mut self, names: PropertyHeaders) -> Self {
        self.property_headers = names;
        self
    }

    /// Publishes an empty payload as a null record value, a tombstone (which deletes
    /// its key from a compacted topic), instead of an empty value. Off by default.
    ///
    /// A consumer delivers a null value as an empty payload (a [`Message`] has no null
    /// payload), so a service that forwards a compacted topic turns this on to keep
    /// tombstones tombstones; an empty, non-null value then becomes a null one.
    ///
    /// [`Message`]: crate::Message
    pub fn empty_payloads_as_tombstones(mut self, tombstones: bool) -> Self {
        self.empty_payloads_as_tombstones = tombstones;
        self
    }

    /// The bound on blocking cluster requests tower-mq makes itself (metadata, admin
    /// requests, committed offsets, synchronous commits). 10 seconds unless set.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config
    }

    /// The librdkafka configuration of a producer.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.base();
        for (k, v) in PRODUCER_DEFAULTS {
            config.set(k, v);
        }
        for (k, v) in self.common.iter().chain(&self.producer) {
            config.set(k, v);
        }
        config
    }

    /// The librdkafka configuration of a consumer in `group`.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.base();
        for (k, v) in CONSUMER_DEFAULTS {
            config.set(k, v);
        }
        for (k, v) in self.common.iter().chain(&self.consumer) {
            config.set(k, v);
        }
        config.set("group.id", group);
        config
    }

    /// The librdkafka configuration of an admin client.
    pub fn admin_config(&self) -> ClientConfig {
        let mut config = self.base();
        for (k, v) in &self.common {
            config.set(k, v);
        }
        config
    }

    /// The producer queue's capacity in messages, as configured.
    pub(crate) fn configured_queue_capacity(&self) -> usize {
        self.producer_config()
            .get("queue.buffering.max.messages")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    }
}

/// Whether the librdkafka property `key` holds a secret.
pub(crate) fn is_secret_property(key: &str) -> bool {
    redact::is_secret_name(key)
        || matches!(
            key,
            "ssl.key.pem" | "ssl_key" | "sasl.oauthbearer.config" | "sasl.jaas.config"
        )
}

/// Properties with the values of secret ones masked.
struct Masked<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let value = if is_secret_property(key) {
                    redact::MASK
                } else {
                    value.as_str()
                };
                (key, value)
            }))
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("common", &Masked(&self.common))
            .field("producer", &Masked(&self.producer))
            .field("consumer", &Masked(&self.consumer))
            .field("ignore_unsupported", &self.ignore_unsupported)
            .field("operation_timeout", &self.operation_timeout)
            .field("property_headers", &self.property_headers)
            .field(
                "empty_payloads_as_tombstones",
                &self.empty_payloads_as_tombstones,
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_override_defaults_per_client_kind() {
        let config = Config::new("b:9092")
            .set("acks", "1")
            .set_consumer("auto.offset.reset", "latest");
        let producer = config.producer_config();
        assert_eq!(producer.get("acks"), Some("1"));
        assert_eq!(producer.get("enable.idempotence"), Some("true"));
        assert_eq!(producer.get("auto.offset.reset"), None);
        let consumer = config.consumer_config("g");
        assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
        assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(consumer.get("group.id"), Some("g"));
        assert_eq!(consumer.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(config.configured_queue_capacity(), 100_000);
        assert_eq!(config.queue_capacity(7).configured_queue_capacity(), 7);
    }

    #[test]
    fn secret_properties_are_masked_in_debug_and_errors() {
        let config = Config::new("127.0.0.1:9092")
            .set("sasl.password", "s3cret-pass")
            .set_producer("ssl.key.password", "s3cret-key")
            .set_consumer("sasl.oauthbearer.client.secret", "s3cret-oauth")
            .set("ssl.key.pem", "s3cret-pem")
            .set("client.id", "billing");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sasl.password") && shown.contains("billing"));

        // librdkafka refuses a misspelt property quoting its value: masked.
        let misspelt = Config::new("127.0.0.1:9092").set("sasl.pasword", "s3cret-pass");
        let Err(err) = super::super::Publisher::new(&misspelt) else {
            panic!("librdkafka accepted an unknown property");
        };
        let mut shown = format!("{err}\n{err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(inner) = source {
            shown.push_str(&format!("\n{inner}\n{inner:?}"));
            source = inner.source();
        }
        assert!(shown.contains("sasl.pasword"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(!err.is_transient());
    }
}
