//! Publishing: a [`Publisher`] is a `Service<Message, Response = Receipt>` on
//! rdkafka's `FutureProducer`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::time::{sleep, Sleep};
use tower::Service;
use tower_mq_core::{Error, Guarantee, Message, Operation, Position, Receipt};

use super::config::Config;
use super::error::from_kafka;
use super::layout::{is_valid_topic, kafka_names, to_record, RecordHeader};
use super::BROKER;
use crate::wire::PropertyHeaders;

/// The first wait before looking again at a full producer queue; doubles up to
/// [`MAX_FULL_WAIT`].
const FIRST_FULL_WAIT: Duration = Duration::from_millis(1);
const MAX_FULL_WAIT: Duration = Duration::from_millis(50);

/// Publishes messages to Kafka. See the [module docs](super).
///
/// Cloning is cheap and shares the producer (one librdkafka client, its connections
/// and its queue); a clone starts without the readiness of the original.
pub struct Publisher {
    producer: FutureProducer,
    shared: Arc<Shared>,
    /// Set while `poll_ready` waits for room in a full queue.
    waiting: Option<Waiting>,
}

struct Waiting {
    sleep: Pin<Box<Sleep>>,
    next: Duration,
}

/// What the clones share.
struct Shared {
    /// A publish found the queue full: wait for room before accepting more.
    full: AtomicBool,
    capacity: usize,
    ignore_unsupported: bool,
    operation_timeout: Duration,
    /// The property header names, without the key and the timestamp.
    names: PropertyHeaders,
    empty_payloads_as_tombstones: bool,
}

impl Publisher {
    /// A publisher for `config` (see [`Config::producer_config`]). Does not contact
    /// the cluster: see [`Publisher::connect`] for that.
    pub fn new(config: &Config) -> Result<Self, Error> {
        let producer: FutureProducer = config
            .producer_config()
            .create()
            .map_err(|e| from_kafka(Operation::Connect, None, e))?;
        Ok(Publisher {
            producer,
            shared: Arc::new(Shared {
                full: AtomicBool::new(false),
                capacity: config.configured_queue_capacity().max(1),
                ignore_unsupported: config.ignores_unsupported(),
                operation_timeout: config.operation_timeout,
                names: kafka_names(&config.property_headers),
                empty_payloads_as_tombstones: config.empty_payloads_as_tombstones,
            }),
            waiting: None,
        })
    }

    /// A publisher for `config`, once the cluster answered a metadata request (within
    /// [`Config::operation_timeout`]): a cluster that cannot be reached fails here
    /// with a transient error instead of at the first publish.
    ///
    /// The request goes out on a client of its own: librdkafka's producer, asked for
    /// every topic's metadata, held its first messages to a topic for about half a
    /// second (a second at the most) before sending them.
    pub async fn connect(config: &Config) -> Result<Self, Error> {
        let publisher = Publisher::new(config)?;
        let probe: AdminClient<DefaultClientContext> = config
            .admin_config()
            .create()
            .map_err(|e| from_kafka(Operation::Connect, Some(config.bootstrap_servers()), e))?;
        let timeout = publisher.shared.operation_timeout;
        tokio::task::spawn_blocking(move || {
            probe.inner().fetch_metadata(None, timeout).map(|_| ())
        })
        .await
        .map_err(|e| Error::transient(BROKER, Operation::Connect).with_source(e))?
        .map_err(|e| from_kafka(Operation::Connect, Some(config.bootstrap_servers()), e))?;
        Ok(publisher)
    }

    /// The rdkafka producer.
    pub fn get_ref(&self) -> &FutureProducer {
        &self.producer
    }

    /// How many messages librdkafka holds: queued, in flight or awaiting their
    /// delivery report.
    pub fn in_flight(&self) -> usize {
        usize::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Waits up to `timeout` for every queued message to be delivered (or to fail).
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| Error::transient(BROKER, Operation::Close).with_source(e))?
            .map_err(|e| from_kafka(Operation::Close, None, e))
    }

    fn has_room(&self) -> bool {
        !self.shared.full.load(Ordering::Acquire) && self.in_flight() < self.shared.capacity
    }

    /// Lays `message` out as a record, refusing what Kafka cannot carry before
    /// anything is queued.
    fn record(&self, message: &Message, delivery_count: Option<u32>) -> Result<OwnedRecord, Error> {
        let topic = message.destination();
        let refuse = |reason: String| {
            Error::permanent(BROKER, Operation::Publish)
                .with_code(tower_mq_core::Code::Unsupported)
                .with_destination(topic)
                .with_reason(reason)
        };
        if !is_valid_topic(topic) {
            return Err(Error::permanent(BROKER, Operation::Publish)
                .with_code(tower_mq_core::Code::Invalid)
                .with_destination(topic)
                .with_reason(
                    "not a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -, not . or ..)",
                ));
        }
        let record = to_record(
            message,
            &self.shared.names,
            delivery_count,
            self.shared.ignore_unsupported,
        )
        .map_err(refuse)?;
        Ok(OwnedRecord {
            topic: topic.to_owned(),
            key: message.key().map(Bytes::copy_from_slice),
            payload: (!(message.payload().is_empty() && self.shared.empty_payloads_as_tombstones))
                .then(|| message.payload().clone()),
            timestamp: record.timestamp,
            headers: owned_headers(&record.headers),
        })
    }

    /// Publishes `message` with its delivery count header set to `delivery_count`
    /// (nack re-publishing).
    pub(crate) fn publish_counted(&self, message: &Message, delivery_count: u32) -> ResponseFuture {
        self.start(message, Some(delivery_count))
    }

    /// Publishes a record as it is, headers included (dead-lettering a record that
    /// could not be read as a message).
    pub(crate) fn publish_raw(
        &self,
        topic: String,
        key: Option<Bytes>,
        payload: Option<Bytes>,
        timestamp: Option<i64>,
        headers: Option<OwnedHeaders>,
    ) -> ResponseFuture {
        let record = OwnedRecord {
            topic,
            key,
            payload,
            timestamp,
            headers,
        };
        ResponseFuture {
            state: enqueue(
                self.producer.clone(),
                self.shared.clone(),
                record,
                FIRST_FULL_WAIT,
            ),
        }
    }

    fn start(&self, message: &Message, delivery_count: Option<u32>) -> ResponseFuture {
        match self.record(message, delivery_count) {
            Ok(record) => ResponseFuture {
                state: enqueue(
                    self.producer.clone(),
                    self.shared.clone(),
                    record,
                    FIRST_FULL_WAIT,
                ),
            },
            Err(error) => ResponseFuture::failed(error),
        }
    }
}

/// librdkafka's headers for `headers`; `None` when there are none.
pub(crate) fn owned_headers(headers: &[RecordHeader]) -> Option<OwnedHeaders> {
    if headers.is_empty() {
        return None;
    }
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: value.as_deref(),
        });
    }
    Some(owned)
}

impl Clone for Publisher {
    fn clone(&self) -> Self {
        Publisher {
            producer: self.producer.clone(),
            shared: self.shared.clone(),
            waiting: None,
        }
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("in_flight", &self.in_flight())
            .field("capacity", &self.shared.capacity)
            .field("full", &self.shared.full.load(Ordering::Relaxed))
            .finish()
    }
}

impl Service<Message> for Publisher {
    type Response = Receipt;
    type Error = Error;
    type Future = ResponseFuture;

    /// Ready while librdkafka's queue has room. A full queue (a publish found it full,
    /// or it holds `queue.buffering.max.messages`) makes this `Pending`; it looks again
    /// on a tokio timer, 1 ms after filling up and backing off to 50 ms, and is
    /// ready once messages left the queue.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                if waiting.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let in_flight = usize::try_from(self.producer.in_flight_count()).unwrap_or(0);
                if in_flight < self.shared.capacity {
                    // Messages left the queue: try again (a publish that still finds
                    // it full sets `full` again and waits in its own future).
                    self.shared.full.store(false, Ordering::Release);
                    self.waiting = None;
                    return Poll::Ready(Ok(()));
                }
                let next = (waiting.next * 2).min(MAX_FULL_WAIT);
                waiting
                    .sleep
                    .as_mut()
                    .reset(tokio::time::Instant::now() + waiting.next);
                waiting.next = next;
                continue;
            }
            if self.has_room() {
                return Poll::Ready(Ok(()));
            }
            self.waiting = Some(Waiting {
                sleep: Box::pin(sleep(FIRST_FULL_WAIT)),
                next: FIRST_FULL_WAIT * 2,
            });
        }
    }

    fn call(&mut self, message: Message) -> ResponseFuture {
        self.start(&message, None)
    }
}

/// A record that owns its parts, so it can be queued again after `QueueFull`.
struct OwnedRecord {
    topic: String,
    key: Option<Bytes>,
    /// `None` for a null value.
    payload: Option<Bytes>,
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
}

/// The future a [`Publisher`] returns: waits for room in the queue if it was full,
/// then for the broker's acknowledgement.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Failed(Option<Error>),
    /// The queue was full: queue the record again when the timer fires.
    QueueFull {
        record: OwnedRecord,
        sleep: Pin<Box<Sleep>>,
        next: Duration,
        producer: FutureProducer,
        shared: Arc<Shared>,
    },
    Delivering {
        topic: String,
        delivery: DeliveryFuture,
        // Dropping the last producer purges its queue: keep it alive until the
        // message is acknowledged, even if the publisher was dropped.
        _producer: FutureProducer,
    },
    Done,
}

impl ResponseFuture {
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }
}

/// Hands `record` to librdkafka; a full queue leaves it waiting `wait` to try again.
fn enqueue(
    producer: FutureProducer,
    shared: Arc<Shared>,
    mut record: OwnedRecord,
    wait: Duration,
) -> State {
    let mut future_record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&record.topic);
    if let Some(payload) = record.payload.as_deref() {
        future_record = future_record.payload(payload);
    }
    if let Some(key) = record.key.as_deref() {
        future_record = future_record.key(key);
    }
    if let Some(timestamp) = record.timestamp {
        future_record = future_record.timestamp(timestamp);
    }
    if let Some(headers) = record.headers.take() {
        future_record = future_record.headers(headers);
    }
    match producer.send_result(future_record) {
        Ok(delivery) => {
            shared.full.store(false, Ordering::Release);
            State::Delivering {
                topic: record.topic,
                delivery,
                _producer: producer,
            }
        }
        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
            shared.full.store(true, Ordering::Release);
            record.headers = returned.headers;
            State::QueueFull {
                record,
                sleep: Box::pin(sleep(wait)),
                next: (wait * 2).min(MAX_FULL_WAIT),
                producer,
                shared,
            }
        }
        Err((error, _)) => State::Failed(Some(from_kafka(
            Operation::Publish,
            Some(&record.topic),
            error,
        ))),
    }
}

impl Future for ResponseFuture {
    type Output = Result<Receipt, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Failed(error) => {
                    let error = error.take().unwrap_or_else(|| {
                        Error::permanent(BROKER, Operation::Publish)
                            .with_reason("publish future polled after completion")
                    });
                    this.state = State::Done;
                    return Poll::Ready(Err(error));
                }
                State::QueueFull { sleep, .. } => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if let State::QueueFull {
                        record,
                        next,
                        producer,
                        shared,
                        ..
                    } = std::mem::replace(&mut this.state, State::Done)
                    {
                        this.state = enqueue(producer, shared, record, next);
                    }
                }
                State::Delivering {
                    topic, delivery, ..
                } => {
                    let result = match Pin::new(delivery).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(result) => result,
                    };
                    let topic = std::mem::take(topic);
                    this.state = State::Done;
                    return Poll::Ready(match result {
                        Ok(Ok(delivered)) => Ok(Receipt::new(BROKER, topic, Guarantee::Stored)
                            .with_position(Position::Offset {
                                partition: delivered.partition,
                                offset: delivered.offset,
                            })),
                        Ok(Err((error, _))) => {
                            Err(from_kafka(Operation::Publish, Some(&topic), error))
                        }
                        Err(_canceled) => Err(Error::transient(BROKER, Operation::Publish)
                            .with_destination(topic)
                            .with_reason("the producer was closed before the broker answered")),
                    });
                }
                State::Done => {
                    return Poll::Ready(Err(Error::permanent(BROKER, Operation::Publish)
                        .with_reason("publish future polled after completion")))
                }
            }
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Failed(_) => "failed",
            State::QueueFull { .. } => "waiting for room in the queue",
            State::Delivering { .. } => "delivering",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
