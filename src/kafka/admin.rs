//! Cluster administration: creating topics, declaring consumer groups, measuring a
//! group's lag.

use std::fmt;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tower_mq_core::{Error, Operation};

use super::config::Config;
use super::error::{error_kind, from_kafka};
use super::BROKER;

/// A topic to create: name, partitions, replication factor and topic configuration.
///
/// ```
/// use tower_mq::kafka::TopicSpec;
///
/// let spec = TopicSpec::new("orders").partitions(6).config("retention.ms", "86400000");
/// assert_eq!(spec.name(), "orders");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    name: String,
    pub(crate) partitions: i32,
    replication: i32,
    config: Vec<(String, String)>,
}

impl TopicSpec {
    /// A topic named `name` with one partition and replication factor 1.
    pub fn new(name: impl Into<String>) -> Self {
        TopicSpec {
            name: name.into(),
            partitions: 1,
            replication: 1,
            config: Vec::new(),
        }
    }

    /// Sets the number of partitions.
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets the replication factor.
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication;
        self
    }

    /// Adds a topic configuration entry (`retention.ms`, `cleanup.policy`, ...).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The lag of one partition for a consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The group's committed offset, `None` if it has committed none.
    pub committed: Option<i64>,
    /// The partition's high watermark (the offset the next record will get).
    pub high_watermark: i64,
    /// Records not yet consumed by the group: high watermark minus committed (from
    /// the low watermark when nothing is committed).
    pub lag: i64,
}

/// An admin client. See the [module docs](self).
pub struct Admin {
    client: AdminClient<DefaultClientContext>,
    config: Config,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("bootstrap_servers", &self.config.bootstrap_servers())
            .finish()
    }
}

impl Admin {
    /// An admin client for `config`'s cluster.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let client = config
            .admin_config()
            .create()
            .map_err(|e| from_kafka(Operation::Connect, Some(config.bootstrap_servers()), e))?;
        Ok(Admin {
            client,
            config: config.clone(),
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.config.operation_timeout))
            .operation_timeout(Some(self.config.operation_timeout))
    }

    /// Creates the topics that do not exist yet; one that exists already is fine
    /// (whatever its partitions). Fails with the first other error.
    pub async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), Error> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic {
                name: &t.name,
                num_partitions: t.partitions,
                replication: TopicReplication::Fixed(t.replication),
                config: t
                    .config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            })
            .collect();
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let results = self
            .client
            .create_topics(&new, &self.options())
            .await
            .map_err(|e| from_kafka(Operation::Declare, Some(&names.join(",")), e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::new(BROKER, Operation::Declare, error_kind(code))
                        .with_destination(topic)
                        .with_reason(format!("creating the topic failed: {code}")))
                }
            }
        }
        Ok(())
    }

    /// Creates one topic unless it exists.
    pub async fn create_topic(&self, topic: TopicSpec) -> Result<(), Error> {
        self.create_topics(std::slice::from_ref(&topic)).await
    }

    /// Makes sure `group` keeps every message published to `topic` from now on: on
    /// each partition where the group has committed nothing yet, commits the current
    /// high watermark. A group with committed offsets is left as it is. Call it before
    /// the group's first member joins.
    pub async fn declare_group(&self, topic: &str, group: &str) -> Result<(), Error> {
        let config = self.config.clone();
        let (topic, group) = (topic.to_owned(), group.to_owned());
        blocking(Operation::Declare, &topic.clone(), move || {
            let consumer = group_client(&config, &group, &topic)?;
            let timeout = config.operation_timeout;
            let committed = committed_of(&consumer, &config, &topic)?;
            let mut commit = TopicPartitionList::new();
            for (partition, offset) in committed {
                if offset.is_none() {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic, partition, timeout)
                        .map_err(|e| from_kafka(Operation::Declare, Some(&topic), e))?;
                    commit
                        .add_partition_offset(&topic, partition, Offset::Offset(high))
                        .map_err(|e| from_kafka(Operation::Declare, Some(&topic), e))?;
                }
            }
            if commit.count() > 0 {
                consumer
                    .commit(&commit, CommitMode::Sync)
                    .map_err(|e| from_kafka(Operation::Declare, Some(&topic), e))?;
            }
            Ok(())
        })
        .await
    }

    /// The lag of `group` on every partition of `topic`: committed offset against
    /// high watermark (for dashboards and alerts).
    pub async fn consumer_group_lag(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<PartitionLag>, Error> {
        let config = self.config.clone();
        let (topic, group) = (topic.to_owned(), group.to_owned());
        blocking(Operation::Receive, &topic.clone(), move || {
            let consumer = group_client(&config, &group, &topic)?;
            let timeout = config.operation_timeout;
            let mut lags = Vec::new();
            for (partition, committed) in committed_of(&consumer, &config, &topic)? {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, partition, timeout)
                    .map_err(|e| from_kafka(Operation::Receive, Some(&topic), e))?;
                lags.push(PartitionLag {
                    partition,
                    committed,
                    high_watermark: high,
                    lag: (high - committed.unwrap_or(low)).max(0),
                });
            }
            Ok(lags)
        })
        .await
    }
}

/// Runs a blocking librdkafka call off the async runtime's threads.
async fn blocking<T: Send + 'static>(
    operation: Operation,
    topic: &str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Error::transient(BROKER, operation)
            .with_destination(topic)
            .with_source(e)
    })?
}

/// A consumer in `group` that never subscribes: it only reads and commits offsets.
fn group_client(config: &Config, group: &str, topic: &str) -> Result<BaseConsumer, Error> {
    config
        .consumer_config(group)
        .create()
        .map_err(|e| from_kafka(Operation::Connect, Some(topic), e))
}

/// Every partition of `topic` with the group's committed offset, if any.
fn committed_of(
    consumer: &BaseConsumer,
    config: &Config,
    topic: &str,
) -> Result<Vec<(i32, Option<i64>)>, Error> {
    let timeout: Duration = config.operation_timeout;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| from_kafka(Operation::Declare, Some(topic), e))?;
    let Some(described) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(Error::permanent(BROKER, Operation::Declare)
            .with_destination(topic)
            .with_reason("the cluster does not know the topic"));
    };
    if let Some(code) = described.error() {
        let code = RDKafkaErrorCode::from(code);
        return Err(Error::new(BROKER, Operation::Declare, error_kind(code))
            .with_destination(topic)
            .with_reason(format!("topic metadata: {code}")));
    }
    let mut list = TopicPartitionList::new();
    for partition in described.partitions() {
        list.add_partition(topic, partition.id());
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(|e| from_kafka(Operation::Declare, Some(topic), e))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw().filter(|o| *o >= 0)))
        .collect())
}
