//! Consumer groups: a [`Consumer`] is a `Stream` of [`Delivery`]s on rdkafka's
//! `StreamConsumer`, storing offsets only once handlers finished.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::future::BoxFuture;
use futures_core::Stream;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, OwnedHeaders};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch};
use tower_mq_core::{dead_letter, Acker, Acknowledge, Delivery, Error, Message, Operation};

use super::config::Config;
use super::error::from_kafka;
use super::layout::{from_record, kafka_names, RecordParts};
use super::publisher::Publisher;
use super::BROKER;
use crate::wire::PropertyHeaders;

/// The prefix of the offset-commit metadata tower-mq writes: the highest offset of
/// the partition handed to a handler so far, so the next owner can tell redeliveries.
const DELIVERED_METADATA: &str = "tmq-delivered:";

/// What a [`Consumer`] reads and where its settlements go.
///
/// ```
/// use tower_mq::kafka::ConsumerConfig;
///
/// let config = ConsumerConfig::new("orders", "billing").retry_topic("orders.retry");
/// assert_eq!(config.dead_letter_topic_of("orders"), "orders.dlq");
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    topics: Vec<String>,
    group: String,
    retry_topic: Option<String>,
    dead_letter_topic: Option<String>,
}

impl ConsumerConfig {
    /// Consumes `topic` in consumer group `group`.
    pub fn new(topic: impl Into<String>, group: impl Into<String>) -> Self {
        ConsumerConfig {
            topics: vec![topic.into()],
            group: group.into(),
            retry_topic: None,
            dead_letter_topic: None,
        }
    }

    /// Consumes one more topic in the same group.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Nacked messages are published to `topic` (default: back to the topic they came
    /// from). Whoever consumes that topic sees them as redeliveries.
    pub fn retry_topic(mut self, topic: impl Into<String>) -> Self {
        self.retry_topic = Some(topic.into());
        self
    }

    /// Rejected messages are published to `topic` (default: `<topic>.dlq` per topic,
    /// the shared rule of [`dead_letter::destination_for`]).
    pub fn dead_letter(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Where a message rejected from `topic` goes.
    pub fn dead_letter_topic_of(&self, topic: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| dead_letter::destination_for(topic))
    }
}

type Inner = StreamConsumer<GroupContext>;

/// The name of the threads of the runtime that polls the consumers.
const PUMP_THREAD_NAME: &str = "tower-mq-kafka";

/// How many worker threads poll all the consumers of the process.
const PUMP_WORKERS: usize = 2;

/// The runtime every consumer's background task runs on: created with the first
/// consumer, it lives as long as the process (a static is never dropped), so a
/// consumer keeps working whatever becomes of the runtime that subscribed it.
static PUMPS: OnceLock<Runtime> = OnceLock::new();

/// [`PUMPS`], created if need be.
fn pumps() -> std::io::Result<&'static Runtime> {
    static BUILDING: Mutex<()> = Mutex::new(());
    if let Some(runtime) = PUMPS.get() {
        return Ok(runtime);
    }
    // One builder at a time: a runtime built in vain could not even be dropped here,
    // in an async context.
    let _building = BUILDING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(runtime) = PUMPS.get() {
        return Ok(runtime);
    }
    let runtime = polling_runtime(PUMP_WORKERS)?;
    Ok(PUMPS.get_or_init(|| runtime))
}

/// A runtime whose threads [`blocking`] knows as polling threads.
///
/// Its blocking threads (a worker handing its tasks over in [`blocking`], a consumer
/// closing) are tokio's default: started when needed, gone after 10 s idle, and not
/// capped low on purpose. librdkafka can keep a call waiting for a long time (a
/// commit while the group coordinator is unreachable waits for it, up to
/// `session.timeout.ms` on close, longer otherwise); were those threads few, a few
/// such calls would take them all, and the workers would then block in place,
/// stalling every consumer's polling.
fn polling_runtime(workers: usize) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(PUMP_THREAD_NAME)
        .on_thread_start(|| POLLING.set(true))
        .enable_all()
        .build()
}

thread_local! {
    /// Whether this thread is one of the polling runtime's.
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, a librdkafka call that waits on the broker: in a rebalance callback, or
/// closing a consumer. On a worker of the polling runtime, the worker's other tasks
/// (the other consumers' polling) move to another thread meanwhile
/// ([`block_in_place`](tokio::task::block_in_place)); anywhere else (a blocking
/// thread, or wherever an application polls the rdkafka consumer itself) it just runs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if POLLING.get() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Lets go of a handle on the librdkafka consumer, or on what the settling publisher
/// hangs on. The last one closes it, which blocks (closing a consumer revokes,
/// committing what was settled, then leaves the group; closing a producer flushes):
/// on a thread of the polling runtime, that happens at once, through [`blocking`];
/// anywhere else, on a blocking thread of the polling runtime, not on the caller's.
fn release<T: Send + 'static>(handle: Arc<T>) {
    let Some(last) = Arc::into_inner(handle) else {
        return;
    };
    match PUMPS.get() {
        Some(runtime) if !POLLING.get() => {
            runtime.spawn_blocking(move || drop(last));
        }
        _ => blocking(move || drop(last)),
    }
}

/// Consumes topics in a consumer group. See the [module docs](super).
///
/// A background task polls librdkafka and hands over one record at a time (at most
/// two are read ahead), so rebalances are served while the stream is not being read;
/// once its read-ahead is full it waits for the stream like any Kafka consumer that
/// stops polling, and a rebalance then waits for it up to `max.poll.interval.ms`.
/// Records of a partition revoked before they were handed over are dropped (the new
/// owner reads them). Dropping the consumer stops the task and closes the librdkafka
/// consumer, which revokes (committing as above) and leaves the group. Records fetched
/// ahead and never handed over need no hand-back: nothing commits past them, so the
/// partition's next owner reads them at once, as first deliveries.
///
/// The task runs on a runtime all the consumers of the process share, not on the
/// caller's: see [Polling](super#polling) for its threads, and how the rebalance
/// callbacks, which block, keep from holding up the other consumers.
///
/// Acknowledging a delivery after its partition was revoked, or after the consumer
/// was dropped, records nothing (it succeeds, or fails transiently while the consumer
/// is still closing): the group reads the message again. A nack or reject then still
/// publishes its copy.
pub struct Consumer {
    inner: Arc<Inner>,
    records: mpsc::Receiver<Result<Received, Error>>,
    tracker: Arc<Tracker>,
    assignment: watch::Receiver<BTreeSet<(String, i32)>>,
    settle: Arc<Settle>,
    operation_timeout: Duration,
}

/// What every acker of a consumer shares.
struct Settle {
    publisher: Arc<Publisher>,
    config: ConsumerConfig,
}

/// The settling publishers of live consumers, by client configuration: consumers of one
/// configuration share one librdkafka producer (its threads and broker connections),
/// which closes with the last of them.
static SETTLING: Mutex<Vec<(Config, Weak<Publisher>)>> = Mutex::new(Vec::new());

/// The settling publisher of consumers with `config`: a live one, or a new one.
fn settling_publisher(config: &Config) -> Result<Arc<Publisher>, Error> {
    let mut shared = SETTLING.lock().unwrap_or_else(PoisonError::into_inner);
    shared.retain(|(_, publisher)| publisher.strong_count() > 0);
    if let Some(publisher) = shared
        .iter()
        .find(|(of, _)| of == config)
        .and_then(|(_, publisher)| publisher.upgrade())
    {
        return Ok(publisher);
    }
    let publisher = Arc::new(Publisher::new(config)?);
    shared.push((config.clone(), Arc::downgrade(&publisher)));
    Ok(publisher)
}

impl Consumer {
    /// Joins `consumer.group()` and subscribes to its topics. Nacks and rejects
    /// publish with a [`Publisher`] built from `config`, one for all the consumers of
    /// the process subscribed with an equal `config` (it closes with the last of them).
    pub async fn subscribe(config: &Config, consumer: ConsumerConfig) -> Result<Self, Error> {
        let publisher = settling_publisher(config)?;
        Consumer::subscribe_shared(config, consumer, publisher).await
    }

    /// Like [`Consumer::subscribe`], publishing nacks and rejects with `publisher`.
    pub async fn subscribe_with(
        config: &Config,
        consumer: ConsumerConfig,
        publisher: Publisher,
    ) -> Result<Self, Error> {
        Consumer::subscribe_shared(config, consumer, Arc::new(publisher)).await
    }

    async fn subscribe_shared(
        config: &Config,
        consumer: ConsumerConfig,
        publisher: Arc<Publisher>,
    ) -> Result<Self, Error> {
        let topics = consumer.topics.join(",");
        let pumps = pumps().map_err(|error| {
            Error::transient(BROKER, Operation::Subscribe)
                .with_destination(topics.clone())
                .with_reason("could not start the runtime that polls Kafka consumers")
                .with_source(error)
        })?;
        let tracker = Arc::new(Tracker::default());
        let (assigned, assignment) = watch::channel(BTreeSet::new());
        let context = GroupContext {
            tracker: tracker.clone(),
            assigned,
            timeout: config.operation_timeout,
        };
        let inner: Inner = config
            .consumer_config(&consumer.group)
            .create_with_context(context)
            .map_err(|e| from_kafka(Operation::Subscribe, Some(&topics), e))?;
        let names: Vec<&str> = consumer.topics.iter().map(String::as_str).collect();
        inner
            .subscribe(&names)
            .map_err(|e| from_kafka(Operation::Subscribe, Some(&topics), e))?;
        let inner = Arc::new(inner);
        let (sender, records) = mpsc::channel(1);
        let settle = Arc::new(Settle {
            publisher,
            config: consumer,
        });
        pumps.spawn(
            Pump {
                inner: inner.clone(),
                sender,
                tracker: tracker.clone(),
                settle: settle.clone(),
                topics,
                names: kafka_names(&config.property_headers),
            }
            .run(),
        );
        Ok(Consumer {
            inner,
            records,
            tracker,
            assignment,
            settle,
            operation_timeout: config.operation_timeout,
        })
    }

    /// The partitions assigned to this consumer now.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.assignment.borrow().iter().cloned().collect()
    }

    /// Waits until this consumer has been assigned at least one partition (it joined
    /// its group), at most `timeout`.
    pub async fn wait_for_assignment(&mut self, timeout: Duration) -> Result<(), Error> {
        let mut assignment = self.assignment.clone();
        let assigned = tokio::time::timeout(timeout, async {
            assignment.wait_for(|a| !a.is_empty()).await.is_ok()
        })
        .await;
        match assigned {
            Ok(true) => Ok(()),
            _ => Err(Error::transient(BROKER, Operation::Subscribe)
                .with_destination(self.settle.config.topics.join(","))
                .with_reason(format!("no partition assigned within {timeout:?}"))),
        }
    }

    /// Commits the stored offsets now (they are also committed every
    /// `auto.commit.interval.ms`, on rebalance and on close).
    pub async fn commit(&self) -> Result<(), Error> {
        let inner = self.inner.clone();
        let topics = self.settle.config.topics.join(",");
        let result =
            tokio::task::spawn_blocking(move || inner.commit_consumer_state(CommitMode::Sync))
                .await
                .map_err(|e| Error::transient(BROKER, Operation::Ack).with_source(e))?;
        match result {
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            other => other.map_err(|e| from_kafka(Operation::Ack, Some(&topics), e)),
        }
    }

    /// The committed offsets of this consumer's assignment: `(topic, partition,
    /// offset)`, `None` where the group has not committed.
    pub async fn committed(&self) -> Result<Vec<(String, i32, Option<i64>)>, Error> {
        let inner = self.inner.clone();
        let timeout = self.operation_timeout;
        let topics = self.settle.config.topics.join(",");
        let list = tokio::task::spawn_blocking(move || inner.committed(timeout))
            .await
            .map_err(|e| Error::transient(BROKER, Operation::Receive).with_source(e))?
            .map_err(|e| from_kafka(Operation::Receive, Some(&topics), e))?;
        Ok(list
            .elements()
            .iter()
            .map(|e| {
                (
                    e.topic().to_owned(),
                    e.partition(),
                    e.offset().to_raw().filter(|o| *o >= 0),
                )
            })
            .collect())
    }

    /// How many deliveries of partition `(topic, partition)` were handed out and not
    /// settled yet.
    pub fn in_flight(&self, topic: &str, partition: i32) -> usize {
        self.tracker
            .lock()
            .partitions
            .get(&(topic.to_owned(), partition))
            .map_or(0, |p| p.in_flight.len())
    }

    /// The rdkafka consumer.
    pub fn get_ref(&self) -> &StreamConsumer<impl ConsumerContext> {
        &*self.inner
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("topics", &self.settle.config.topics)
            .field("group", &self.settle.config.group)
            .field("assignment", &*self.assignment.borrow())
            .finish()
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let received = match self.records.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(received))) => received,
            };
            // A record of a partition revoked since it was read belongs to its new
            // owner now: drop it.
            let Some(redelivered) = self.tracker.hand_out(
                &received.topic,
                received.partition,
                received.offset,
                received.epoch,
            ) else {
                continue;
            };
            let count = received
                .delivery_count
                .saturating_add(u32::from(redelivered));
            let acker = Acker::new(KafkaAck {
                consumer: Arc::downgrade(&self.inner),
                tracker: self.tracker.clone(),
                settle: self.settle.clone(),
                message: received.message.clone(),
                delivery_count: count,
                partition: received.partition,
                offset: received.offset,
                epoch: received.epoch,
            });
            return Poll::Ready(Some(Ok(
                Delivery::new(received.message, acker).with_delivery_count(count)
            )));
        }
    }
}

/// A record read by the background task.
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    epoch: u64,
    message: Message,
    delivery_count: u32,
}

enum Content {
    Message {
        message: Message,
        delivery_count: u32,
    },
    /// A record that cannot be read as a message: it goes to the dead-letter topic as
    /// it is.
    Unreadable(UnreadableRecord),
}

/// A record whose headers rdkafka cannot read (a header name that is not UTF-8),
/// kept whole.
struct UnreadableRecord {
    key: Option<Bytes>,
    payload: Option<Bytes>,
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
}

/// Reads `record`: a message and its delivery count, or the record kept whole when a
/// header name is not UTF-8 (rdkafka panics reading such a name; the panic is caught
/// here and never leaves the background task).
fn read(record: &BorrowedMessage<'_>, names: &PropertyHeaders) -> Content {
    let headers = match record.headers() {
        None => Ok(Vec::new()),
        Some(headers) => catch_unwind(AssertUnwindSafe(|| {
            headers.iter().map(|h| (h.key, h.value)).collect::<Vec<_>>()
        }))
        .map_err(|_| headers.detach()),
    };
    let timestamp = record.timestamp().to_millis();
    match headers {
        Ok(headers) => {
            let (message, delivery_count) = from_record(
                &RecordParts {
                    topic: record.topic(),
                    key: record.key(),
                    payload: record.payload(),
                    timestamp,
                    headers: &headers,
                },
                names,
            );
            Content::Message {
                message,
                delivery_count,
            }
        }
        Err(headers) => Content::Unreadable(UnreadableRecord {
            key: record.key().map(Bytes::copy_from_slice),
            payload: record.payload().map(Bytes::copy_from_slice),
            timestamp,
            headers: Some(headers),
        }),
    }
}

/// How long the background task waits on librdkafka before polling again.
const REPOLL: Duration = Duration::from_millis(100);

/// The background task: polls librdkafka until the consumer is dropped, handing
/// records over one by one and dead-lettering those that cannot be read.
struct Pump {
    inner: Arc<Inner>,
    sender: mpsc::Sender<Result<Received, Error>>,
    tracker: Arc<Tracker>,
    settle: Arc<Settle>,
    topics: String,
    names: PropertyHeaders,
}

impl Pump {
    async fn run(self) {
        loop {
            let item = tokio::select! {
                _ = self.sender.closed() => break,
                // librdkafka wakes a waiting `recv` only when its queue goes from empty
                // to non-empty; a poll that serves an event itself (a rebalance) can
                // leave another queued with no wake-up to come, and the consumer then
                // never takes its assignment. Polling again every so often serves
                // whatever is queued.
                record = tokio::time::timeout(REPOLL, self.inner.recv()) => match record {
                    Err(_) => continue,
                    Ok(Err(error)) => Err(from_kafka(Operation::Receive, Some(&self.topics), error)),
                    Ok(Ok(record)) => {
                        let epoch = self.tracker.epoch_of(record.topic(), record.partition());
                        let (topic, partition, offset) =
                            (record.topic().to_owned(), record.partition(), record.offset());
                        match read(&record, &self.names) {
                            Content::Message {
                                message,
                                delivery_count,
                            } => Ok(Received {
                                topic,
                                partition,
                                offset,
                                epoch,
                                message,
                                delivery_count,
                            }),
                            Content::Unreadable(unreadable) => {
                                self.dead_letter(topic, partition, offset, epoch, unreadable);
                                continue;
                            }
                        }
                    }
                },
            };
            if self.sender.send(item).await.is_err() {
                break;
            }
        }
        // The stream is gone, and with it the consumer's own handle (unless a
        // settlement or a commit holds one for a moment): close it.
        let Pump { inner, settle, .. } = self;
        release(inner);
        release(settle);
    }

    /// Dead-letters an unreadable record on a task of its own, so that a slow publish
    /// holds up neither the records behind it nor rebalances. A failed publish is
    /// reported on the stream as a transient error, and the record stays unfinished
    /// (nothing commits past it; the group reads it again after a restart).
    fn dead_letter(
        &self,
        topic: String,
        partition: i32,
        offset: i64,
        epoch: u64,
        unreadable: UnreadableRecord,
    ) {
        if self
            .tracker
            .hand_out(&topic, partition, offset, epoch)
            .is_none()
        {
            return;
        }
        let ack = KafkaAck {
            consumer: Arc::downgrade(&self.inner),
            tracker: self.tracker.clone(),
            settle: self.settle.clone(),
            message: Message::new(topic, Bytes::new()),
            delivery_count: 1,
            partition,
            offset,
            epoch,
        };
        let sender = self.sender.clone();
        let topics = self.topics.clone();
        let settle = self.settle.clone();
        tokio::spawn(async move {
            let published = ack.dead_letter_unreadable(unreadable).await;
            release(settle);
            if let Err(error) = published {
                let error = Error::transient(BROKER, Operation::Receive)
                    .with_destination(topics)
                    .with_reason(
                        "dead-lettering a record that cannot be read as a message failed; \
                         it stays uncommitted",
                    )
                    .with_source(error);
                // A closed stream has no one to tell.
                let _ = sender.send(Err(error)).await;
            }
        });
    }
}

/// Settles one delivery: store the offset (ack), re-publish (nack), dead-letter
/// (reject).
struct KafkaAck {
    consumer: Weak<Inner>,
    tracker: Arc<Tracker>,
    settle: Arc<Settle>,
    message: Message,
    delivery_count: u32,
    partition: i32,
    offset: i64,
    epoch: u64,
}

impl KafkaAck {
    /// Marks the delivery finished and stores the partition's new commit point, if it
    /// moved.
    fn finish(&self, operation: Operation) -> Result<(), Error> {
        let topic = self.message.destination();
        let Some((next, metadata)) =
            self.tracker
                .finish(topic, self.partition, self.offset, self.epoch)
        else {
            return Ok(());
        };
        let Some(consumer) = self.consumer.upgrade() else {
            return Err(Error::transient(BROKER, operation)
                .with_destination(topic)
                .with_reason("the consumer was closed; the message will be delivered again"));
        };
        let mut list = TopicPartitionList::with_capacity(1);
        let stored = list
            .add_partition_offset(topic, self.partition, Offset::Offset(next))
            .map(|()| {
                if let Some(mut element) = list.find_partition(topic, self.partition) {
                    element.set_metadata(metadata);
                }
            })
            .and_then(|()| consumer.store_offsets(&list));
        release(consumer);
        match stored {
            Ok(()) => Ok(()),
            // The partition was revoked meanwhile: its new owner reads it again.
            Err(KafkaError::StoreOffset(
                RDKafkaErrorCode::State | RDKafkaErrorCode::UnknownPartition,
            )) => Ok(()),
            Err(error) => Err(from_kafka(operation, Some(topic), error)),
        }
    }
}

impl Acknowledge for KafkaAck {
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
        let result = self.finish(Operation::Ack);
        Box::pin(async move { result })
    }

    /// Publishes the message again, to the retry topic or its own, with
    /// `x-delivery-count` incremented, after `delay`; then marks it finished.
    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.snapshot();
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let mut again = this.message.clone();
            if let Some(retry) = &this.settle.config.retry_topic {
                again.set_destination(retry.clone());
            }
            this.settle
                .publisher
                .publish_counted(&again, this.delivery_count.saturating_add(1))
                .await
                .map_err(|e| renamed(e, Operation::Nack))?;
            this.finish(Operation::Nack)
        })
    }

    /// Publishes the message to the dead-letter topic with the shared
    /// [dead-letter headers](dead_letter) (reason, original topic, partition and offset,
    /// group, delivery count, time); then marks it finished.
    fn reject(&self, reason: &str) -> BoxFuture<'static, Result<(), Error>> {
        let this = self.snapshot();
        let reason = reason.to_owned();
        Box::pin(async move {
            let topic = this.message.destination().to_owned();
            let mut letter = this.message.clone();
            letter.set_destination(this.settle.config.dead_letter_topic_of(&topic));
            let headers = letter.headers_mut();
            headers.insert(dead_letter::REASON, reason);
            headers.insert(dead_letter::ORIGINAL_DESTINATION, topic);
            headers.insert(dead_letter::PARTITION, this.partition.to_string());
            headers.insert(dead_letter::OFFSET, this.offset.to_string());
            headers.insert(dead_letter::CONSUMER, this.settle.config.group.clone());
            headers.insert(dead_letter::DELIVERIES, this.delivery_count.to_string());
            headers.insert(dead_letter::TIME, dead_letter::now_millis().to_string());
            this.settle
                .publisher
                .publish_counted(&letter, this.delivery_count)
                .await
                .map_err(|e| renamed(e, Operation::Reject))?;
            this.finish(Operation::Reject)
        })
    }
}

impl KafkaAck {
    /// Publishes an unreadable record to the dead-letter topic as it is, with the
    /// reason headers, then marks it finished. A failed publish leaves it unfinished
    /// (no commit passes it; the group reads it again after a restart).
    async fn dead_letter_unreadable(self, record: UnreadableRecord) -> Result<(), Error> {
        let topic = self.message.destination().to_owned();
        let reason = "a header name is not UTF-8: the record cannot be read as a message";
        tracing::warn!(
            topic,
            partition = self.partition,
            offset = self.offset,
            "kafka: {reason}; dead-lettering it as it is"
        );
        let (partition, offset) = (self.partition.to_string(), self.offset.to_string());
        let (deliveries, time) = (
            self.delivery_count.to_string(),
            dead_letter::now_millis().to_string(),
        );
        let mut headers = record.headers.unwrap_or_default();
        for (name, value) in [
            (dead_letter::REASON, reason),
            (dead_letter::ORIGINAL_DESTINATION, &topic),
            (dead_letter::PARTITION, &partition),
            (dead_letter::OFFSET, &offset),
            (dead_letter::CONSUMER, &self.settle.config.group),
            (dead_letter::DELIVERIES, &deliveries),
            (dead_letter::TIME, &time),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        self.settle
            .publisher
            .publish_raw(
                self.settle.config.dead_letter_topic_of(&topic),
                record.key,
                record.payload,
                record.timestamp,
                Some(headers),
            )
            .await
            .map_err(|e| renamed(e, Operation::Reject))?;
        self.finish(Operation::Reject)
    }

    fn snapshot(&self) -> KafkaAck {
        KafkaAck {
            consumer: self.consumer.clone(),
            tracker: self.tracker.clone(),
            settle: self.settle.clone(),
            message: self.message.clone(),
            delivery_count: self.delivery_count,
            partition: self.partition,
            offset: self.offset,
            epoch: self.epoch,
        }
    }
}

/// A publish error, reported as the settlement that needed the publish.
fn renamed(error: Error, operation: Operation) -> Error {
    let mut renamed = Error::new(BROKER, operation, error.kind());
    if let Some(destination) = error.destination() {
        renamed = renamed.with_destination(destination.to_owned());
    }
    renamed.with_source(error)
}

/// Per-partition bookkeeping of what was handed out and what finished.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    next_epoch: u64,
    partitions: HashMap<(String, i32), PartitionState>,
}

struct PartitionState {
    /// Which assignment this is: records and settlements of earlier ones are stale.
    epoch: u64,
    /// Offsets handed out and not finished.
    in_flight: BTreeSet<i64>,
    /// The highest finished offset.
    done: Option<i64>,
    /// The last offset stored (the next one to read).
    stored: Option<i64>,
    /// The highest offset handed out.
    delivered: Option<i64>,
    /// Offsets up to this one were handed out by an earlier owner (from the commit
    /// metadata): they are redeliveries.
    redelivered_up_to: Option<i64>,
}

impl PartitionState {
    fn new(epoch: u64, redelivered_up_to: Option<i64>) -> Self {
        PartitionState {
            epoch,
            in_flight: BTreeSet::new(),
            done: None,
            stored: None,
            delivered: None,
            redelivered_up_to,
        }
    }

    /// The offset to commit: the first unfinished one, or one past the last finished.
    fn commit_point(&self) -> Option<i64> {
        self.in_flight
            .first()
            .copied()
            .or_else(|| self.done.map(|d| d + 1))
    }

    fn metadata(&self) -> String {
        let delivered = self.delivered.max(self.redelivered_up_to).unwrap_or(-1);
        format!("{DELIVERED_METADATA}{delivered}")
    }
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, TrackerState> {
        // The state stays consistent across a panic (every update is one step).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn epoch_of(&self, topic: &str, partition: i32) -> u64 {
        let mut state = self.lock();
        if let Some(p) = state.partitions.get(&(topic.to_owned(), partition)) {
            return p.epoch;
        }
        state.next_epoch += 1;
        let epoch = state.next_epoch;
        state.partitions.insert(
            (topic.to_owned(), partition),
            PartitionState::new(epoch, None),
        );
        epoch
    }

    fn assign(&self, partitions: Vec<(String, i32, Option<i64>)>) {
        let mut state = self.lock();
        for (topic, partition, redelivered_up_to) in partitions {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            state.partitions.insert(
                (topic, partition),
                PartitionState::new(epoch, redelivered_up_to),
            );
        }
    }

    /// Forgets revoked partitions, returning the commit point and metadata of each
    /// one that had deliveries.
    fn revoke(&self, partitions: &[(String, i32)]) -> Vec<(String, i32, i64, String)> {
        let mut state = self.lock();
        let mut commits = Vec::new();
        for key in partitions {
            if let Some(p) = state.partitions.remove(key) {
                if let Some(point) = p.commit_point() {
                    commits.push((key.0.clone(), key.1, point, p.metadata()));
                }
            }
        }
        commits
    }

    /// Registers a record as handed out; `None` if its partition was revoked since it
    /// was read, else whether an earlier owner handed it out already.
    fn hand_out(&self, topic: &str, partition: i32, offset: i64, epoch: u64) -> Option<bool> {
        let mut state = self.lock();
        let p = state.partitions.get_mut(&(topic.to_owned(), partition))?;
        if p.epoch != epoch {
            return None;
        }
        p.in_flight.insert(offset);
        p.delivered = p.delivered.max(Some(offset));
        Some(p.redelivered_up_to.is_some_and(|r| offset <= r))
    }

    /// Marks a delivery finished; the new commit point and metadata to store if it
    /// moved, `None` if it did not or the partition was revoked.
    fn finish(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        epoch: u64,
    ) -> Option<(i64, String)> {
        let mut state = self.lock();
        let p = state.partitions.get_mut(&(topic.to_owned(), partition))?;
        if p.epoch != epoch || !p.in_flight.remove(&offset) {
            return None;
        }
        p.done = p.done.max(Some(offset));
        let point = p.commit_point()?;
        if p.stored.is_some_and(|s| s >= point) {
            return None;
        }
        p.stored = Some(point);
        Some((point, p.metadata()))
    }
}

/// Commits on revocation and keeps the tracker in step with the assignment.
///
/// librdkafka calls it where the consumer is polled, so on a worker of the polling
/// runtime, or where the consumer is closed (a blocking thread of that runtime). The
/// calls that wait on the broker go through [`blocking`], so that one consumer's
/// rebalance does not stop the others' polling.
struct GroupContext {
    tracker: Arc<Tracker>,
    assigned: watch::Sender<BTreeSet<(String, i32)>>,
    timeout: Duration,
}

impl ClientContext for GroupContext {}

fn partitions_of(list: &TopicPartitionList) -> Vec<(String, i32)> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for GroupContext {
    /// On revocation, commits (synchronously) the commit point of every revoked
    /// partition, never past an unfinished delivery, then forgets them.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked = partitions_of(list);
        self.assigned.send_modify(|a| {
            for key in &revoked {
                a.remove(key);
            }
        });
        let commits = self.tracker.revoke(&revoked);
        if commits.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::with_capacity(commits.len());
        for (topic, partition, point, metadata) in &commits {
            if offsets
                .add_partition_offset(topic, *partition, Offset::Offset(*point))
                .is_ok()
            {
                if let Some(mut element) = offsets.find_partition(topic, *partition) {
                    element.set_metadata(metadata.as_str());
                }
            }
        }
        if let Err(error) = blocking(|| consumer.commit(&offsets, CommitMode::Sync)) {
            tracing::warn!(%error, "kafka: committing revoked partitions failed; they will be read again from the last commit");
        }
    }

    /// On assignment, reads the commit metadata of the new partitions to tell
    /// redeliveries, and starts tracking them.
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        let committed = blocking(|| consumer.committed_offsets((*list).clone(), self.timeout));
        let mut partitions = Vec::new();
        for (topic, partition) in partitions_of(list) {
            let redelivered_up_to = committed.as_ref().ok().and_then(|c| {
                c.find_partition(&topic, partition).and_then(|e| {
                    e.metadata()
                        .strip_prefix(DELIVERED_METADATA)
                        .and_then(|d| d.parse::<i64>().ok())
                        .filter(|d| *d >= 0)
                })
            });
            partitions.push((topic, partition, redelivered_up_to));
        }
        if let Err(error) = &committed {
            tracing::debug!(%error, "kafka: reading commit metadata failed; redeliveries after a rebalance count as first deliveries");
        }
        let keys: Vec<(String, i32)> = partitions.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        self.tracker.assign(partitions);
        self.assigned.send_modify(|a| a.extend(keys));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_of_one_configuration_share_one_settling_producer() {
        // Creating a producer does not contact the cluster.
        let config = Config::new("127.0.0.1:1").set("client.id", "settling-shared");
        let other = config.clone().set("client.id", "settling-other");
        let first = settling_publisher(&config).expect("producer");
        let second = settling_publisher(&config).expect("producer");
        assert!(Arc::ptr_eq(&first, &second));
        let third = settling_publisher(&other).expect("producer");
        assert!(!Arc::ptr_eq(&first, &third));
        // It closes with the last consumer; the next one gets a new one.
        let gone = Arc::downgrade(&first);
        drop((first, second));
        assert_eq!(gone.strong_count(), 0);
        let again = settling_publisher(&config).expect("producer");
        assert_eq!(gone.strong_count(), 0);
        assert!(!Arc::ptr_eq(&again, &third));
    }

    /// A rebalance callback blocked on a worker of the polling runtime does not hold up
    /// the tasks behind it: here the runtime's only worker blocks until another task
    /// has run.
    #[test]
    fn blocking_hands_the_workers_other_tasks_to_another_thread() {
        let runtime = polling_runtime(1).expect("runtime");
        runtime.block_on(async {
            let (started, blocked) = tokio::sync::oneshot::channel();
            let (release, wait) = std::sync::mpsc::channel::<()>();
            let waiting = tokio::spawn(async move {
                blocking(move || {
                    let _ = started.send(());
                    wait.recv_timeout(Duration::from_secs(20))
                })
            });
            blocked.await.expect("the blocking task started");
            tokio::spawn(async move { release.send(()) })
                .await
                .expect("a task ran while the worker was blocked")
                .expect("the blocked task was waiting");
            assert!(
                waiting.await.expect("task").is_ok(),
                "the task behind the blocked one did not run"
            );
        });
    }

    /// Off the polling runtime's workers, `blocking` just runs: on a current-thread
    /// runtime `block_in_place` would panic.
    #[test]
    fn blocking_just_runs_where_it_cannot_hand_over() {
        assert_eq!(blocking(|| 1), 1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(runtime.block_on(async { blocking(|| 2) }), 2);
        let runtime = polling_runtime(1).expect("runtime");
        let on_a_blocking_thread = runtime.block_on(async {
            tokio::task::spawn_blocking(|| blocking(|| 3))
                .await
                .expect("task")
        });
        assert_eq!(on_a_blocking_thread, 3);
        let nested = runtime.block_on(async {
            tokio::spawn(async { blocking(|| blocking(|| 4)) })
                .await
                .expect("task")
        });
        assert_eq!(nested, 4);
    }

    #[test]
    fn consumer_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Consumer>();
    }

    impl Tracker {
        fn hand_out_at(&self, offset: i64, epoch: u64) -> Option<bool> {
            self.hand_out("t", 0, offset, epoch)
        }
    }

    #[test]
    fn commit_point_never_passes_an_unfinished_delivery() {
        let tracker = Tracker::default();
        tracker.assign(vec![("t".into(), 0, None)]);
        let epoch = tracker.epoch_of("t", 0);
        for offset in 0..5 {
            assert_eq!(tracker.hand_out_at(offset, epoch), Some(false));
        }
        // 0 finished: commit 1. 2 and 3 finished: 1 still holds the point.
        assert_eq!(tracker.finish("t", 0, 0, epoch).map(|s| s.0), Some(1));
        assert_eq!(tracker.finish("t", 0, 2, epoch), None);
        assert_eq!(tracker.finish("t", 0, 3, epoch), None);
        // 1 finished: everything up to 3 is done, 4 is not.
        assert_eq!(tracker.finish("t", 0, 1, epoch).map(|s| s.0), Some(4));
        let (point, metadata) = tracker.finish("t", 0, 4, epoch).unwrap();
        assert_eq!(point, 5);
        assert_eq!(metadata, "tmq-delivered:4");
    }

    #[test]
    fn revocation_commits_the_first_unfinished_and_drops_stale_settlements() {
        let tracker = Tracker::default();
        tracker.assign(vec![("t".into(), 0, None)]);
        let epoch = tracker.epoch_of("t", 0);
        for offset in 10..13 {
            tracker.hand_out_at(offset, epoch);
        }
        tracker.finish("t", 0, 10, epoch);
        let commits = tracker.revoke(&[("t".into(), 0)]);
        assert_eq!(commits, [("t".into(), 0, 11, "tmq-delivered:12".into())]);
        // Settling after revocation is a no-op; a stale record is not handed out.
        assert_eq!(tracker.finish("t", 0, 11, epoch), None);
        tracker.assign(vec![("t".into(), 0, Some(12))]);
        assert_eq!(tracker.hand_out_at(11, epoch), None);
        let epoch = tracker.epoch_of("t", 0);
        assert_eq!(tracker.hand_out_at(11, epoch), Some(true));
        assert_eq!(tracker.hand_out_at(13, epoch), Some(false));
    }
}
