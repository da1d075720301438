//! A consumer-group reader of one stream, and the acker of its deliveries.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_core::future::BoxFuture;
use futures_core::Stream;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{RedisError, RedisResult, Value};
use tokio::time::Instant;

use crate::redis::config::Config;
use crate::redis::connection::Connection;
use crate::redis::layout::{decode, Fields, EXPIRES_AT_MS, HEADER_PREFIX, REDELIVERIES};
use crate::redis::{is_connection_error, redis_error, BROKER};
use crate::{Acker, Acknowledge, Delivery, Error, Operation};

/// The header naming why a message was dead-lettered (`expired`,
/// `max deliveries exceeded`, or the reason given to `reject`).
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// The header naming the stream a dead-lettered message came from.
pub const DEAD_LETTER_STREAM: &str = "x-dead-letter-stream";
/// The header naming the consumer group that dead-lettered a message.
pub const DEAD_LETTER_GROUP: &str = "x-dead-letter-group";
/// The header holding the entry id a dead-lettered message had in its stream.
pub const DEAD_LETTER_ID: &str = "x-dead-letter-id";
/// The header holding how many times a dead-lettered message had been delivered.
pub const DEAD_LETTER_DELIVERIES: &str = "x-delivery-count";

/// What a nack does with the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NackMode {
    /// Leave the entry pending; it is redelivered (to this consumer or another one of
    /// the group) by the next `XAUTOCLAIM` scan once its delay has passed. The delay is
    /// set with `XCLAIM ... IDLE`, so it is honoured up to the group's claim idle time
    /// (a longer delay waits the claim idle time), plus up to one claim interval.
    /// Keeps the entry id and the server's delivery counter. The default.
    #[default]
    Reclaim,
    /// Append a copy of the message to the end of the stream and acknowledge the
    /// original, atomically (`MULTI` / `XADD` / `XACK` / `EXEC`): redelivered as soon as
    /// the consumers reach it, behind what is already queued. The delay is not
    /// honoured; the delivery count is carried in the copy's `p:redeliveries` field.
    Readd,
}

/// Settings of a [`Consumer`]: the stream, the group, and how pending entries are
/// recovered and dead-lettered.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    stream: String,
    group: String,
    consumer: Option<String>,
    start: String,
    batch_size: usize,
    block: Duration,
    claim_idle: Duration,
    claim_interval: Duration,
    max_deliveries: Option<u32>,
    dead_letter: Option<String>,
    nack: NackMode,
}

impl ConsumerConfig {
    /// Reads `stream` in consumer group `group`.
    ///
    /// Defaults: a unique consumer name; a group created (if missing) at the start of
    /// the stream (`0`, so nothing appended before the group existed is missed); reads
    /// of up to 16 entries blocking at most 1 s; entries idle for 30 s reclaimed by a
    /// scan every second; at most 5 deliveries; dead letters to `<stream>:dead-letter`;
    /// [`NackMode::Reclaim`].
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        let stream = stream.into();
        ConsumerConfig {
            dead_letter: Some(format!("{stream}:dead-letter")),
            stream,
            group: group.into(),
            consumer: None,
            start: "0".to_owned(),
            batch_size: 16,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(1),
            max_deliveries: Some(5),
            nack: NackMode::Reclaim,
        }
    }

    /// Uses `name` as the consumer name. Names must be unique within the group: two
    /// live consumers sharing one would share their pending entries.
    pub fn with_consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer = Some(name.into());
        self
    }

    /// Creates a missing group at the end of the stream (`$`): only entries appended
    /// from now on are read.
    pub fn start_at_end(mut self) -> Self {
        self.start = "$".to_owned();
        self
    }

    /// Creates a missing group at entry `id` (`0` is the start, `$` the end).
    pub fn start_at(mut self, id: impl Into<String>) -> Self {
        self.start = id.into();
        self
    }

    /// How many entries one read or claim fetches at most (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How long a read waits for new entries before checking for entries to reclaim
    /// (at least 1 ms).
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// How long an entry must have been pending (delivered, not acknowledged) before
    /// it is reclaimed from the consumer that holds it: a consumer that died, or one
    /// whose handler took this long (then the message is processed twice).
    pub fn with_claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often pending entries are scanned with `XAUTOCLAIM`.
    pub fn with_claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many deliveries a message gets before it is dead-lettered instead of
    /// delivered again (`None`: no limit).
    pub fn with_max_deliveries(mut self, max: Option<u32>) -> Self {
        self.max_deliveries = max.map(|m| m.max(1));
        self
    }

    /// Dead-letters to stream `stream`.
    pub fn with_dead_letter(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter = Some(stream.into());
        self
    }

    /// Drops dead letters (acknowledges them) instead of moving them to a stream.
    pub fn without_dead_letter(mut self) -> Self {
        self.dead_letter = None;
        self
    }

    /// What a nack does; see [`NackMode`].
    pub fn with_nack_mode(mut self, mode: NackMode) -> Self {
        self.nack = mode;
        self
    }

    /// The stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The dead-letter stream, if any.
    pub fn dead_letter(&self) -> Option<&str> {
        self.dead_letter.as_deref()
    }
}

/// A consumer in a Redis consumer group: a `Stream` of [`Delivery`].
///
/// Reads new entries with `XREADGROUP ... BLOCK` on a connection of its own; commands
/// (acknowledgements, claims, dead letters) go on a second, multiplexed one.
/// Every claim interval it runs `XAUTOCLAIM` to take over entries that have been
/// pending longer than the claim idle time (consumers that died, nacked entries), and
/// reads their delivery counts from the pending entries list (`XPENDING`). A message
/// delivered more than the maximum number of times, rejected, or expired (its TTL) is
/// moved to the dead-letter stream with `x-dead-letter-*` headers, atomically with
/// its acknowledgement.
///
/// All of this happens while the stream is polled: a consumer nobody polls neither
/// reads, nor claims, nor dead-letters (and holds no more than one read's worth of
/// entries, so backpressure reaches Redis).
///
/// Delivery is at least once: a message can be delivered again if its handler outlasts
/// the claim idle time, or if the connection drops before it is acknowledged.
///
/// While the server is unreachable the stream yields transient errors (with backoff)
/// and resumes by itself; it recreates its group if the group disappeared (a server
/// that restarted without persistence). A permanent error (the key is not a stream)
/// is yielded and ends the stream.
pub struct Consumer {
    name: String,
    stream: String,
    group: String,
    inner: Pin<Box<dyn Stream<Item = Result<Delivery, Error>> + Send>>,
}

impl Consumer {
    /// Creates the group if it is missing (`XGROUP CREATE ... MKSTREAM`; one that
    /// exists is fine) and returns the consumer, ready to read.
    pub async fn subscribe(config: &Config, consumer: ConsumerConfig) -> Result<Self, Error> {
        let conn = Connection::connect(config).await?;
        let blocking = config
            .connect_with_response_timeout(config.response_timeout() + consumer.block)
            .await?;
        let name = consumer.consumer.clone().unwrap_or_else(unique_name);
        let shared = Arc::new(Shared {
            conn,
            stream: consumer.stream.clone(),
            group: consumer.group.clone(),
            consumer: name.clone(),
            dead_letter: consumer.dead_letter.clone(),
            nack: consumer.nack,
            claim_idle: consumer.claim_idle,
        });
        shared.create_group(&consumer.start).await?;
        let (stream, group) = (consumer.stream.clone(), consumer.group.clone());
        let reader = Reader {
            shared,
            blocking,
            next_claim: Instant::now(),
            cursor: "0-0".to_owned(),
            history: None,
            buffer: VecDeque::new(),
            failures: 0,
            ended: false,
            max_backoff: config.reconnect_max_delay().max(Duration::from_millis(100)),
            config: consumer,
        };
        let inner = futures_util::stream::unfold(reader, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        });
        Ok(Consumer {
            name,
            stream,
            group,
            inner: Box::pin(inner),
        })
    }

    /// Creates the consumer's group if it is missing, without consuming: messages
    /// appended from then on (or from its start, see [`ConsumerConfig::start_at`]) are
    /// kept for the group until its consumers take them.
    pub async fn declare_group(config: &Config, consumer: &ConsumerConfig) -> Result<(), Error> {
        let conn = Connection::connect(config).await?;
        let shared = Shared {
            conn,
            stream: consumer.stream.clone(),
            group: consumer.group.clone(),
            consumer: String::new(),
            dead_letter: None,
            nack: consumer.nack,
            claim_idle: consumer.claim_idle,
        };
        shared.create_group(&consumer.start).await
    }

    /// This consumer's name in its group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("stream", &self.stream)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// A consumer name no other consumer has: process id, start time and a counter.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "tower-mq-{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// What the reader and every acker of its deliveries share.
struct Shared {
    conn: Connection,
    stream: String,
    group: String,
    consumer: String,
    dead_letter: Option<String>,
    nack: NackMode,
    claim_idle: Duration,
}

impl Shared {
    fn error(&self, operation: Operation, err: RedisError) -> Error {
        self.conn.record_error(&err);
        redis_error(operation, &self.stream, err)
    }

    async fn create_group(&self, start: &str) -> Result<(), Error> {
        let mut manager = self.conn.manager();
        let result: RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(start)
            .arg("MKSTREAM")
            .query_async(&mut manager)
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
            Err(err) => Err(self.error(Operation::Declare, err)),
        }
    }

    async fn ack(&self, id: &str) -> Result<(), Error> {
        let mut manager = self.conn.manager();
        let result: RedisResult<u64> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .query_async(&mut manager)
            .await;
        // 0 means it was no longer pending: acknowledged already, which is fine.
        result
            .map(drop)
            .map_err(|err| self.error(Operation::Ack, err))
    }

    async fn nack(
        &self,
        id: &str,
        fields: &Fields,
        count: u32,
        delay: Option<Duration>,
    ) -> Result<(), Error> {
        let mut manager = self.conn.manager();
        match self.nack {
            NackMode::Reclaim => {
                let delay = delay.unwrap_or_default().min(self.claim_idle);
                let idle = self.claim_idle.saturating_sub(delay);
                let result: RedisResult<Value> = redis::cmd("XCLAIM")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(id)
                    .arg("IDLE")
                    .arg(millis(idle))
                    .arg("JUSTID")
                    .query_async(&mut manager)
                    .await;
                result
                    .map(drop)
                    .map_err(|err| self.error(Operation::Nack, err))
            }
            NackMode::Readd => {
                let mut copy: Fields = fields
                    .iter()
                    .filter(|(name, _)| name != REDELIVERIES)
                    .cloned()
                    .collect();
                copy.push((REDELIVERIES.to_owned(), Bytes::from(count.to_string())));
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .add_command(xadd(&self.stream, &copy))
                    .ignore()
                    .cmd("XACK")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(id)
                    .ignore();
                let result: RedisResult<()> = pipe.query_async(&mut manager).await;
                result.map_err(|err| self.error(Operation::Nack, err))
            }
        }
    }

    /// Moves an entry to the dead-letter stream with reason headers and acknowledges
    /// it, in one transaction; without a dead-letter stream, only acknowledges it.
    async fn dead_letter(
        &self,
        id: &str,
        fields: &Fields,
        count: u32,
        reason: &str,
    ) -> Result<(), Error> {
        let Some(dead_letter) = &self.dead_letter else {
            tracing::warn!(stream = %self.stream, id, reason, "dropping a dead letter (no dead-letter stream)");
            return self
                .ack(id)
                .await
                .map_err(|err| retag(err, Operation::Reject));
        };
        let added = [
            (DEAD_LETTER_REASON, reason.to_owned()),
            (DEAD_LETTER_STREAM, self.stream.clone()),
            (DEAD_LETTER_GROUP, self.group.clone()),
            (DEAD_LETTER_ID, id.to_owned()),
            (DEAD_LETTER_DELIVERIES, count.to_string()),
        ]
        .map(|(name, value)| (format!("{HEADER_PREFIX}{name}"), Bytes::from(value)));
        // A dead letter starts afresh: no deadline (an expired message must stay
        // readable in the dead-letter stream) and no redelivery count.
        let mut letter: Fields = fields
            .iter()
            .filter(|(name, _)| name != EXPIRES_AT_MS && name != REDELIVERIES)
            .filter(|(name, _)| !added.iter().any(|(n, _)| n == name))
            .cloned()
            .collect();
        letter.extend(added);
        let mut manager = self.conn.manager();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd(dead_letter, &letter))
            .ignore()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .ignore();
        let result: RedisResult<()> = pipe.query_async(&mut manager).await;
        result.map_err(|err| {
            self.conn.record_error(&err);
            redis_error(Operation::Reject, dead_letter, err)
        })
    }
}

fn retag(err: Error, operation: Operation) -> Error {
    let mut out = Error::new(BROKER, operation, err.kind());
    if let Some(destination) = err.destination() {
        out = out.with_destination(destination.to_owned());
    }
    out.with_source(err)
}

fn xadd(stream: &str, fields: &Fields) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in fields {
        cmd.arg(name.as_str()).arg(value.as_ref());
    }
    cmd
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Settles one delivery.
struct StreamAcker {
    shared: Arc<Shared>,
    id: String,
    fields: Arc<Fields>,
    count: u32,
}

impl Acknowledge for StreamAcker {
    fn ack(&self) -> BoxFuture<'static, Result<(), Error>> {
        let shared = self.shared.clone();
        let id = self.id.clone();
        Box::pin(async move { shared.ack(&id).await })
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'static, Result<(), Error>> {
        let shared = self.shared.clone();
        let id = self.id.clone();
        let fields = self.fields.clone();
        let count = self.count;
        Box::pin(async move { shared.nack(&id, &fields, count, delay).await })
    }

    fn reject(&self, reason: &str) -> BoxFuture<'static, Result<(), Error>> {
        let shared = self.shared.clone();
        let id = self.id.clone();
        let fields = self.fields.clone();
        let count = self.count;
        let reason = reason.to_owned();
        Box::pin(async move { shared.dead_letter(&id, &fields, count, &reason).await })
    }
}

/// The state behind a [`Consumer`]'s stream.
struct Reader {
    shared: Arc<Shared>,
    blocking: ConnectionManager,
    config: ConsumerConfig,
    next_claim: Instant,
    /// Where the next `XAUTOCLAIM` scan resumes.
    cursor: String,
    /// After a read failed, this consumer's own pending entries are read again from
    /// here (the reply that delivered them may have been lost).
    history: Option<String>,
    buffer: VecDeque<Delivery>,
    failures: u32,
    ended: bool,
    max_backoff: Duration,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<Delivery, Error>> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Some(Ok(delivery));
            }
            if self.ended {
                return None;
            }
            if self.failures > 0 {
                let exponent = (self.failures - 1).min(16);
                let backoff =
                    (Duration::from_millis(50) * 2u32.pow(exponent)).min(self.max_backoff);
                tokio::time::sleep(backoff).await;
            }
            let step = if self.history.is_some() {
                self.read_history().await
            } else if Instant::now() >= self.next_claim {
                self.claim().await
            } else {
                self.read().await
            };
            match step {
                Ok(()) => self.failures = 0,
                Err(err) => {
                    self.failures = self.failures.saturating_add(1);
                    if !err.is_transient() {
                        self.ended = true;
                    }
                    return Some(Err(err));
                }
            }
        }
    }

    /// Handles a failed command: a lost connection schedules a re-read of this
    /// consumer's pending entries; a vanished group is created again.
    async fn failed(&mut self, operation: Operation, err: RedisError) -> Result<(), Error> {
        if err.code() == Some("NOGROUP") {
            tracing::info!(stream = %self.shared.stream, group = %self.shared.group, "consumer group missing; creating it again");
            return self.shared.create_group(&self.config.start).await;
        }
        if is_connection_error(&err) || err.is_timeout() {
            self.history = Some("0".to_owned());
        }
        Err(redis_error(operation, &self.shared.stream, err))
    }

    async fn read(&mut self) -> Result<(), Error> {
        let until_claim = self.next_claim.saturating_duration_since(Instant::now());
        let block = self
            .config
            .block
            .min(until_claim)
            .max(Duration::from_millis(1));
        let result: RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(self.config.batch_size)
            .arg("BLOCK")
            .arg(millis(block))
            .arg("STREAMS")
            .arg(&self.shared.stream)
            .arg(">")
            .query_async(&mut self.blocking)
            .await;
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => return self.failed(Operation::Receive, err).await,
        };
        let entries: Vec<StreamId> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect();
        let counted = entries.into_iter().map(|entry| (entry, 1)).collect();
        self.admit(counted).await
    }

    /// Reads this consumer's own pending entries again (after a lost reply).
    async fn read_history(&mut self) -> Result<(), Error> {
        let from = self.history.clone().unwrap_or_else(|| "0".to_owned());
        let result: RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(self.config.batch_size)
            .arg("STREAMS")
            .arg(&self.shared.stream)
            .arg(&from)
            .query_async(&mut self.blocking)
            .await;
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => return self.failed(Operation::Receive, err).await,
        };
        let entries: Vec<StreamId> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            // An entry deleted while pending comes back without fields.
            .filter(|entry| !entry.map.is_empty())
            .collect();
        self.history = entries.last().map(|entry| entry.id.clone());
        if entries.is_empty() {
            return Ok(());
        }
        let counted = self.with_pending_counts(entries).await?;
        self.admit(counted).await
    }

    async fn claim(&mut self) -> Result<(), Error> {
        let mut manager = self.shared.conn.manager();
        let result: RedisResult<StreamAutoClaimReply> = redis::cmd("XAUTOCLAIM")
            .arg(&self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg(millis(self.shared.claim_idle))
            .arg(&self.cursor)
            .arg("COUNT")
            .arg(self.config.batch_size)
            .query_async(&mut manager)
            .await;
        let reply = match result {
            Ok(reply) => reply,
            Err(err) => {
                self.shared.conn.record_error(&err);
                self.next_claim = Instant::now() + self.config.claim_interval;
                return self.failed(Operation::Receive, err).await;
            }
        };
        if !reply.deleted_ids.is_empty() {
            tracing::warn!(
                stream = %self.shared.stream,
                count = reply.deleted_ids.len(),
                "pending entries were deleted from the stream before being acknowledged (trimmed?)"
            );
        }
        // A finished scan waits for the next interval; an unfinished one goes on.
        self.next_claim = if reply.next_stream_id == "0-0" {
            Instant::now() + self.config.claim_interval
        } else {
            Instant::now()
        };
        self.cursor = reply.next_stream_id;
        if reply.claimed.is_empty() {
            return Ok(());
        }
        let counted = self.with_pending_counts(reply.claimed).await?;
        self.admit(counted).await
    }

    /// Pairs entries with their delivery counters from the pending entries list.
    async fn with_pending_counts(
        &mut self,
        entries: Vec<StreamId>,
    ) -> Result<Vec<(StreamId, u32)>, Error> {
        let mut pipe = redis::pipe();
        for entry in &entries {
            pipe.cmd("XPENDING")
                .arg(&self.shared.stream)
                .arg(&self.shared.group)
                .arg(&entry.id)
                .arg(&entry.id)
                .arg(1);
        }
        let mut manager = self.shared.conn.manager();
        let result: RedisResult<Vec<StreamPendingCountReply>> =
            pipe.query_async(&mut manager).await;
        let replies = match result {
            Ok(replies) => replies,
            Err(err) => {
                self.shared.conn.record_error(&err);
                return self
                    .failed(Operation::Receive, err)
                    .await
                    .map(|()| Vec::new());
            }
        };
        Ok(entries
            .into_iter()
            .zip(replies)
            .map(|(entry, pending)| {
                let count = pending
                    .ids
                    .first()
                    .map_or(1, |p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX));
                (entry, count)
            })
            .collect())
    }

    /// Turns entries into deliveries, dead-lettering the expired and the over-delivered.
    async fn admit(&mut self, entries: Vec<(StreamId, u32)>) -> Result<(), Error> {
        let mut first_error = None;
        for (entry, pending_count) in entries {
            let fields = Arc::new(fields_of(entry.map));
            let decoded = decode(
                &self.shared.stream,
                fields.iter().map(|(name, value)| (name.as_str(), value)),
            );
            let count = pending_count.max(1).saturating_add(decoded.redeliveries);
            let dead = if decoded.is_expired() {
                Some("expired")
            } else if self.config.max_deliveries.is_some_and(|max| count > max) {
                Some("max deliveries exceeded")
            } else {
                None
            };
            if let Some(reason) = dead {
                if let Err(err) = self
                    .shared
                    .dead_letter(&entry.id, &fields, count - 1, reason)
                    .await
                {
                    first_error.get_or_insert(err);
                }
                continue;
            }
            let acker = Acker::new(StreamAcker {
                shared: self.shared.clone(),
                id: entry.id,
                fields,
                count,
            });
            self.buffer
                .push_back(Delivery::new(decoded.message, acker).with_delivery_count(count));
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// An entry's fields as bytes, from whatever type the server sent them as.
fn fields_of(map: std::collections::HashMap<String, Value>) -> Fields {
    let mut fields: Fields = map
        .into_iter()
        .filter_map(|(name, value)| {
            let bytes = match value {
                Value::BulkString(bytes) => Bytes::from(bytes),
                Value::SimpleString(text) => Bytes::from(text),
                Value::VerbatimString { text, .. } => Bytes::from(text),
                Value::Int(n) => Bytes::from(n.to_string()),
                _ => return None,
            };
            Some((name, bytes))
        })
        .collect();
    fields.sort_by(|a, b| a.0.cmp(&b.0));
    fields
}
