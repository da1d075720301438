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
use redis::streams::StreamPendingCountReply;
use redis::{RedisError, RedisResult, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_mq_layers::retry::{Backoff, FastRng};

use super::acks::{AckQueue, Turn};
use crate::redis::config::Config;
use crate::redis::connection::Connection;
use crate::redis::layout::{decode, entry_time, Control, Fields, StreamLayout};
use crate::redis::{is_connection_error, redis_error, BROKER};
use crate::{dead_letter, Acker, Acknowledge, Delivery, Error, Operation};

/// The default [`ConsumerConfig::max_deliveries`]: a backstop well above
/// `serve`'s [`DEFAULT_MAX_DELIVERIES`](crate::serve::DEFAULT_MAX_DELIVERIES), so that
/// `serve` decides for every delivery a handler finishes.
pub const DEFAULT_MAX_DELIVERIES: u32 = 4 * crate::serve::DEFAULT_MAX_DELIVERIES;

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
    /// honoured; the delivery count is carried in the copy's `tmq-redeliveries` control
    /// field.
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
    pub(crate) dead_letter: Option<String>,
    nack: NackMode,
}

impl ConsumerConfig {
    /// Reads `stream` in consumer group `group`.
    ///
    /// Defaults: a unique consumer name; a group created (if missing) at the start of
    /// the stream (`0`, so nothing appended before the group existed is missed); reads
    /// of up to 16 entries blocking at most 1 s; entries idle for 30 s reclaimed by a
    /// scan every second; at most [`DEFAULT_MAX_DELIVERIES`] deliveries; dead letters
    /// to `<stream>.dlq` ([`dead_letter::destination_for`]); [`NackMode::Reclaim`].
    pub fn new(stream: impl Into<String>, group: impl Into<String>) -> Self {
        let stream = stream.into();
        ConsumerConfig {
            dead_letter: Some(dead_letter::destination_for(&stream)),
            stream,
            group: group.into(),
            consumer: None,
            start: "0".to_owned(),
            batch_size: 16,
            block: Duration::from_secs(1),
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(1),
            max_deliveries: Some(DEFAULT_MAX_DELIVERIES),
            nack: NackMode::Reclaim,
        }
    }

    /// Uses `name` as the consumer name. Names must be unique within the group: two
    /// live consumers sharing one would share their pending entries.
    pub fn consumer_name(mut self, name: impl Into<String>) -> Self {
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

    /// How many entries one read or claim fetches at most (at least 1). The next
    /// read is sent once half of them are handed out (see [`Consumer`]).
    ///
    /// Larger reads take more of a small backlog from the group's other consumers;
    /// for a lone consumer of a busy stream, reads of 64 with `serve`'s
    /// [`concurrency`](crate::serve::Serve::concurrency) at 64 double the default's
    /// throughput (see [`DEFAULT_CONCURRENCY`](crate::serve::DEFAULT_CONCURRENCY)).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// How long a read waits for new entries before checking for entries to reclaim
    /// (at least 1 ms). Closing waits for a read in flight, so this also bounds how
    /// long [`Consumer::close`] takes (see there).
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// How long an entry must have been pending (delivered, not acknowledged) before
    /// it is reclaimed from the consumer that holds it: a consumer that died, or one
    /// whose handler took this long (then the message is processed twice). Also how
    /// long another consumer's name must have been idle, with nothing pending, before
    /// this consumer deletes it from the group (see [`Consumer`]).
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// How often pending entries are scanned with `XAUTOCLAIM`.
    pub fn claim_interval(mut self, interval: Duration) -> Self {
        self.claim_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many deliveries an entry gets before the consumer dead-letters it instead of
    /// delivering it again (`None`: no limit; [`DEFAULT_MAX_DELIVERIES`] by default).
    ///
    /// This is a backstop, not the attempt limit: `serve`'s
    /// [`max_deliveries`](crate::serve::Serve::max_deliveries) owns that, rejecting a
    /// delivery its handler failed too often. This one catches the entry that never
    /// comes back settled (the process dies while handling it, or a consumer without
    /// `serve` never settles it), which would otherwise be reclaimed forever. Keep it
    /// above `serve`'s limit, or it cuts that limit short.
    ///
    /// It also bounds the counts [`NackMode::Readd`] copies carry: a nack of a delivery
    /// at the limit dead-letters it (reason `max deliveries exceeded`) instead of
    /// adding a copy, and a `tmq-redeliveries` at or past the limit, which no consumer
    /// with this limit writes, is ignored. Without a limit every carried count is
    /// believed.
    pub fn max_deliveries(mut self, max: impl Into<Option<u32>>) -> Self {
        self.max_deliveries = max.into().map(|m| m.max(1));
        self
    }

    /// Dead-letters to stream `stream` instead of `<stream>.dlq`.
    pub fn dead_letter(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter = Some(stream.into());
        self
    }

    /// Drops dead letters (acknowledges them) instead of moving them to a stream.
    pub fn no_dead_letter(mut self) -> Self {
        self.dead_letter = None;
        self
    }

    /// What a nack does; see [`NackMode`].
    pub fn nack_mode(mut self, mode: NackMode) -> Self {
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
}

/// A consumer in a Redis consumer group: a `Stream` of [`Delivery`].
///
/// Reads new entries with `XREADGROUP ... BLOCK` on a connection of its own; commands
/// (acknowledgements, claims, dead letters) go on a second, multiplexed one.
/// Every claim interval it runs `XAUTOCLAIM` to take over entries that have been
/// pending longer than the claim idle time (consumers that died, nacked entries), and
/// reads their delivery counts from the pending entries list (`XPENDING`). A message
/// delivered more than the maximum number of times, rejected, or expired (its TTL) is
/// moved to the dead-letter stream with the shared [dead-letter headers](dead_letter),
/// atomically with its acknowledgement.
///
/// All of this happens while the stream is polled: a consumer nobody polls neither
/// reads, nor claims, nor dead-letters, so backpressure reaches Redis. To keep
/// handling and reading from waiting on each other, the next read is sent once no
/// more than half a batch is left to hand out: a consumer holds at most a batch and
/// a half of entries it has not handed out, and leaves what comes after a fresh
/// batch to the group's other consumers until it has handed out half of it.
///
/// Delivery is at least once: a message can be delivered again if its handler outlasts
/// the claim idle time, or if the connection drops before it is acknowledged.
///
/// Closed or dropped, the consumer hands what it read and never handed out back to the
/// group, uncounted and at once: see [`close`](Self::close).
///
/// Names do not pile up in the group (`XINFO CONSUMERS`) however often consumers come
/// and go: a consumer that closes with nothing pending deletes its own name, and after
/// each claim scan a consumer deletes the name of every other consumer of the group
/// that holds no pending entry and has been idle for longer than its claim idle time
/// (one script, so that an entry is never dropped with a name): the names of
/// consumers that closed holding entries, once those are claimed, and of consumers
/// that died. A live consumer whose name goes this way holds nothing and loses
/// nothing; Redis creates its name again when it next reads or claims an entry.
///
/// While the server is unreachable the stream yields transient errors (with backoff)
/// and resumes by itself; it recreates its group if the group disappeared (a server
/// that restarted without persistence). A permanent error (the key is not a stream)
/// is yielded and ends the stream.
pub struct Consumer {
    name: String,
    stream: String,
    group: String,
    inner: ReadAhead,
    /// Set on closing: a step in flight that is waiting out a backoff ends at once.
    closing: watch::Sender<bool>,
    /// Until closed: what hands back the entries read and not handed out, and deletes
    /// the consumer's name from the group when nothing is pending.
    shared: Option<Arc<Shared>>,
    /// Told once that hand-back is over (dropped unsent when it never runs).
    release_done: Option<watch::Sender<bool>>,
    released: watch::Receiver<bool>,
}

impl Consumer {
    /// Creates the group if it is missing (`XGROUP CREATE ... MKSTREAM`; one that
    /// exists is fine) and returns the consumer, ready to read.
    pub async fn subscribe(config: &Config, consumer: ConsumerConfig) -> Result<Self, Error> {
        let conn = Connection::connect(config).await?;
        let blocking = config
            .connect_with_response_timeout(config.response_timeout + consumer.block)
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
            max_deliveries: consumer.max_deliveries,
            layout: config.stream_layout.clone(),
            acks: AckQueue::default(),
        });
        shared.create_group(&consumer.start).await?;
        let (stream, group) = (consumer.stream.clone(), consumer.group.clone());
        let (closing, closing_seen) = watch::channel(false);
        let (release_done, released) = watch::channel(false);
        let reader = Reader {
            shared: shared.clone(),
            blocking,
            closing: closing_seen,
            next_claim: Instant::now(),
            cursor: "0-0".to_owned(),
            history: None,
            admitted: Vec::new(),
            failures: 0,
            sweep_failed: false,
            ended: false,
            max_backoff: config.reconnect_max_delay().max(Duration::from_millis(100)),
            jitter: FastRng::new(),
            config: consumer,
        };
        Ok(Consumer {
            name,
            stream,
            group,
            inner: ReadAhead::new(reader),
            closing,
            shared: Some(shared),
            release_done: Some(release_done),
            released,
        })
    }

    /// Stops reading, hands back to the group the entries this consumer read ahead and
    /// never yielded, and deletes its name from the group if nothing of it is pending.
    ///
    /// A read already sent is seen through first (a blocking read returns within the
    /// [block time](ConsumerConfig::block)), so that what it brings is handed back too.
    /// An entry read stays pending on the consumer that read it until acknowledged;
    /// each one read and not yielded is handed back with `XCLAIM ... IDLE <claim idle
    /// time> RETRYCOUNT <its delivery counter less one> JUSTID`. Idle for the claim
    /// idle time, it is taken at once by the next `XAUTOCLAIM` scan of the group's
    /// other consumers (those configured with the same or a shorter claim idle time)
    /// instead of after the claim idle time, and with the delivery count it was read
    /// with: the read that did not hand it out is not counted (an entry read for the
    /// first time comes again with a [delivery count](Delivery::delivery_count) of 1,
    /// not as a redelivery). An entry another consumer took over meanwhile is left to
    /// it.
    ///
    /// In the same script (one round trip), the consumer's name is deleted from the
    /// group (`XGROUP DELCONSUMER`) if it has no pending entries left, so no pending
    /// entry is ever dropped. A consumer that handed entries back, or that yielded
    /// deliveries not yet settled (or settled after this call), keeps its name. Those
    /// deliveries are their holder's to settle; if nobody does, they wait for the
    /// group's `XAUTOCLAIM` after the claim idle time and come again as redeliveries.
    /// Once nothing of it is pending, the name is deleted by the claim scan of one of
    /// the group's consumers (see [`Consumer`]).
    ///
    /// Dropping the consumer does the same in a background task (when dropped within
    /// a Tokio runtime; [`released`](Self::released) tells when it is over); `close`
    /// lets the caller wait for it and see its error.
    pub async fn close(mut self) -> Result<(), Error> {
        match self.release() {
            Some(release) => release.await,
            None => Ok(()),
        }
    }

    /// Completes once this consumer is gone (closed, or dropped: by
    /// [`serve`](crate::serve()) when it returns, say) and the entries it read ahead
    /// are handed back to the group (see [`close`](Self::close)). Take it before handing
    /// the consumer over:
    ///
    /// ```no_run
    /// # async fn run(consumer: tower_mq::redis::StreamConsumer) -> Result<(), tower_mq::BoxError> {
    /// let handler = tower::service_fn(|_: tower_mq::Delivery| async { Ok::<_, tower_mq::BoxError>(()) });
    /// let released = consumer.released();
    /// tower_mq::serve(consumer, handler).await?;
    /// released.await; // safe to exit: nothing read ahead is left waiting for its claim
    /// # Ok(())
    /// # }
    /// ```
    pub fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::serve::released(&self.released)
    }

    /// Ends the stream and returns what hands back what it read and did not yield;
    /// `None` once that is under way.
    fn release(&mut self) -> Option<BoxFuture<'static, Result<(), Error>>> {
        let shared = self.shared.take()?;
        self.closing.send_replace(true);
        let (held, fetch) = self.inner.close();
        let done = self.release_done.take();
        Some(Box::pin(async move {
            let mut held = held;
            if let Some(fetch) = fetch {
                // Dropped, the read would leave what it brings pending, unseen.
                let (mut reader, _) = fetch.await;
                held.append(&mut reader.admitted);
            }
            let result = shared.release(&held).await;
            if let Some(done) = done {
                done.send_replace(true);
            }
            result
        }))
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
            max_deliveries: consumer.max_deliveries,
            layout: config.stream_layout.clone(),
            acks: AckQueue::default(),
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
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let Some(release) = self.release() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (stream, group) = (self.stream.clone(), self.group.clone());
            runtime.spawn(async move {
                if let Err(error) = release.await {
                    tracing::warn!(%stream, %group, %error, "handing back a dropped consumer's unread entries failed; they are reclaimed after the claim idle time");
                }
            });
        }
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
    max_deliveries: Option<u32>,
    layout: StreamLayout,
    acks: AckQueue,
}

impl Shared {
    fn control(&self, control: Control) -> Bytes {
        Bytes::from(self.layout.control(control))
    }

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

    /// Hands the entries `held` (read, never yielded) back to the group, then deletes
    /// this consumer's name from the group if it has no pending entries; one script.
    async fn release(&self, held: &[Held]) -> Result<(), Error> {
        // An entry is handed back only while it is still this consumer's and its
        // counter is the one it was read with: one another consumer claimed meanwhile
        // (its counter went up) is not taken back from it. RETRYCOUNT sets the counter
        // (JUSTID leaves it), so that the increment of the next XAUTOCLAIM restores the
        // count it was read with.
        //
        // XGROUP DELCONSUMER drops the consumer's pending entries: it runs only if none
        // are left, checked in the same script.
        const SCRIPT: &str = r"
            local handed = 0
            for i = 4, #ARGV, 2 do
                local id, counter = ARGV[i], tonumber(ARGV[i + 1])
                local owned = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
                if #owned == 1 and owned[1][4] == counter then
                    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id,
                        'IDLE', ARGV[3], 'RETRYCOUNT', math.max(counter - 1, 0), 'JUSTID')
                    handed = handed + 1
                end
            end
            if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
                redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
            end
            return handed";
        let script = redis::Script::new(SCRIPT);
        // Idle for this consumer's claim idle time, the entry is due at the next
        // XAUTOCLAIM of every consumer of the group whose claim idle time is no longer
        // (a nack's delay takes the group's consumers to share one claim idle time
        // too); one configured longer takes it after the difference. No idler: XPENDING
        // would show the entry stuck for far longer than it was, and an IDLE reaching
        // back before the Unix epoch is reset to 0 by Redis.
        let mut invocation = self.invoke(&script);
        for entry in held {
            invocation.arg(&entry.id).arg(entry.counter);
        }
        let mut manager = self.conn.manager();
        let result: RedisResult<u64> = invocation.invoke_async(&mut manager).await;
        match result {
            Ok(handed) => {
                if handed > 0 {
                    tracing::debug!(stream = %self.stream, group = %self.group, consumer = %self.consumer, handed, "handed back entries read ahead");
                }
                Ok(())
            }
            // No group (or no stream) left: nothing to hand back, no name to delete.
            Err(err) if err.code() == Some("NOGROUP") => Ok(()),
            Err(err) => Err(self.error(Operation::Close, err)),
        }
    }

    /// Deletes from the group the names of the other consumers that hold no pending
    /// entry and have been idle for longer than the claim idle time: those left by
    /// consumers that closed holding entries (their entries since claimed) or that
    /// died. Returns how many were deleted.
    async fn sweep(&self) -> RedisResult<u64> {
        // One script, so that no consumer reads an entry between the check and the
        // delete: XGROUP DELCONSUMER drops a consumer's pending entries, and a name is
        // deleted only while it holds none. (The scan that runs just before has claimed
        // every entry pending for the claim idle time, and a name is never idle for
        // longer than its entries: what the check spares is mostly a name whose
        // entries came due between the scan and the script.)
        //
        // A live consumer is never hurt: with nothing pending it loses nothing, and
        // Redis creates its name again when it next reads or claims an entry. A consumer
        // handling a delivery holds that entry pending, so it keeps its name. Before
        // Redis 7.2, `idle` counts from the consumer's last successful read or claim,
        // so a live consumer of a quiet stream can be deleted this way (and re-created
        // by its next read that brings something); from 7.2 on it counts from the last
        // attempt, which a live consumer makes every block time. The caller is spared
        // either way. XINFO CONSUMERS is allowed in scripts (no `noscript` flag); its
        // reply reaches Lua as RESP2, one flat field/value array per consumer, whose
        // `name`, `pending` and `idle` fields every Redis since 5.0 has.
        const SCRIPT: &str = r"
            local swept = 0
            for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
                local field = {}
                for i = 1, #consumer, 2 do
                    field[consumer[i]] = consumer[i + 1]
                end
                if field.name ~= ARGV[2] and field.pending == 0
                        and field.idle > tonumber(ARGV[3]) then
                    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], field.name)
                    swept = swept + 1
                end
            end
            return swept";
        let script = redis::Script::new(SCRIPT);
        let invocation = self.invoke(&script);
        let mut manager = self.conn.manager();
        invocation.invoke_async(&mut manager).await
    }

    /// `script` on this stream, with the group, this consumer and its claim idle time
    /// (ms) as its first three arguments.
    fn invoke<'s>(&self, script: &'s redis::Script) -> redis::ScriptInvocation<'s> {
        let mut invocation = script.key(&self.stream);
        invocation
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(millis(self.claim_idle));
        invocation
    }

    /// Acknowledges `id` once an `XACK` carrying it succeeded; concurrent acks share
    /// one (see the `acks` module).
    async fn ack(&self, id: &str) -> Result<(), Error> {
        let lead = match self.acks.join(id) {
            Ok(lead) => lead,
            Err(turn) => match turn.await {
                Ok(Turn::Done) => return Ok(()),
                Ok(Turn::Lead(lead)) => lead,
                Ok(Turn::Alone) | Err(_) => return self.xack(&[id]).await,
            },
        };
        // Lets the acks of the tasks ready to run join this batch.
        tokio::task::yield_now().await;
        let batch = lead.take_batch();
        let mut ids = Vec::with_capacity(batch.len() + 1);
        ids.push(id);
        ids.extend(batch.iter().map(|(id, _)| id.as_str()));
        let result = self.xack(&ids).await;
        let turn = || {
            if result.is_ok() {
                Turn::Done
            } else {
                Turn::Alone
            }
        };
        for (_, tx) in batch {
            let _ = tx.send(turn());
        }
        result
    }

    async fn xack(&self, ids: &[&str]) -> Result<(), Error> {
        let mut manager = self.conn.manager();
        let result: RedisResult<u64> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(ids)
            .query_async(&mut manager)
            .await;
        // Fewer than asked means some were no longer pending: acknowledged already,
        // which is fine.
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
            // A copy carrying the backstop or more would be ignored as foreign when
            // read (see `admit`): past the backstop it goes to the dead letters now.
            NackMode::Readd if self.max_deliveries.is_some_and(|max| count >= max) => self
                .dead_letter(id, fields, count, "max deliveries exceeded")
                .await
                .map_err(|err| retag(err, Operation::Nack)),
            NackMode::Readd => {
                let redeliveries = self.control(Control::Redeliveries);
                let mut copy: Fields = fields
                    .iter()
                    .filter(|(name, _)| *name != redeliveries)
                    .cloned()
                    .collect();
                copy.push((redeliveries, Bytes::from(count.to_string())));
                self.add_and_ack(&self.stream, &copy, id)
                    .await
                    .map_err(|err| self.error(Operation::Nack, err))
            }
        }
    }

    /// Appends `fields` to `stream` as a new entry and acknowledges entry `id`, in one
    /// transaction: a copy is never lost nor doubled by a failure in between.
    async fn add_and_ack(&self, stream: &str, fields: &Fields, id: &str) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd(stream, fields))
            .ignore()
            .cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(id)
            .ignore();
        pipe.query_async(&mut self.conn.manager()).await
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
            (dead_letter::REASON, reason.to_owned()),
            (dead_letter::ORIGINAL_DESTINATION, self.stream.clone()),
            (dead_letter::CONSUMER, self.group.clone()),
            (dead_letter::ENTRY_ID, id.to_owned()),
            (dead_letter::DELIVERIES, count.to_string()),
            (dead_letter::TIME, dead_letter::now_millis().to_string()),
        ]
        .map(|(name, value)| (Bytes::from_static(name.as_bytes()), Bytes::from(value)));
        // A dead letter starts afresh: no deadline (an expired message must stay
        // readable in the dead-letter stream) and no redelivery count.
        let expires_at = self.control(Control::ExpiresAtMs);
        let redeliveries = self.control(Control::Redeliveries);
        let mut letter: Fields = fields
            .iter()
            .filter(|(name, _)| *name != expires_at && *name != redeliveries)
            .filter(|(name, _)| !added.iter().any(|(n, _)| n == name))
            .cloned()
            .collect();
        letter.extend(added);
        self.add_and_ack(dead_letter, &letter, id)
            .await
            .map_err(|err| {
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
        cmd.arg(name.as_ref()).arg(value.as_ref());
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
    /// What the last step read, for [`ReadAhead`] to hand out.
    admitted: Vec<Held>,
    /// Turns true when the consumer closes.
    closing: watch::Receiver<bool>,
    failures: u32,
    /// A sweep of idle names failed and was logged (once per consumer).
    sweep_failed: bool,
    /// A permanent error ended the stream.
    ended: bool,
    max_backoff: Duration,
    jitter: FastRng,
}

/// A step of a [`Reader`] in flight: the reader comes back with what the step did.
type Fetch = BoxFuture<'static, (Box<Reader>, Result<(), Error>)>;

impl Reader {
    /// One read, claim or re-read of history (after the backoff of the failures before
    /// it), its deliveries left in `admitted`.
    fn fetch(mut self: Box<Self>) -> Fetch {
        Box::pin(async move {
            let step = self.step().await;
            (self, step)
        })
    }

    async fn step(&mut self) -> Result<(), Error> {
        if self.failures > 0 {
            // Jittered, so that consumers that lost one server do not come back together.
            let backoff = Backoff::exponential(Duration::from_millis(50), self.max_backoff)
                .delay(self.failures - 1, &mut self.jitter);
            // A closing consumer sees its step in flight through: one still waiting
            // out its backoff ends at once, without reading.
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = self.closing.wait_for(|closing| *closing) => return Ok(()),
            }
        }
        let step = if self.history.is_some() {
            self.read_history().await
        } else if Instant::now() >= self.next_claim {
            self.claim().await
        } else {
            self.read().await
        };
        match &step {
            Ok(()) => self.failures = 0,
            Err(err) => {
                self.failures = self.failures.saturating_add(1);
                if !err.is_transient() {
                    self.ended = true;
                }
            }
        }
        step
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
        let Some(entries) = self.read_group(">", Some(block)).await? else {
            return Ok(());
        };
        let counted = entries
            .into_iter()
            .filter_map(|entry| Some((entry.id, entry.fields?, 1)))
            .collect();
        self.admit(counted).await
    }

    /// Reads a batch of this consumer's entries in the group after `from` (`>`: new
    /// ones, waiting up to `block` for some). `None` when the read failed and
    /// [`failed`](Self::failed) dealt with it.
    async fn read_group(
        &mut self,
        from: &str,
        block: Option<Duration>,
    ) -> Result<Option<Vec<Entry>>, Error> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.shared.group)
            .arg(&self.shared.consumer)
            .arg("COUNT")
            .arg(self.config.batch_size);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(&self.shared.stream).arg(from);
        let result: RedisResult<Value> = cmd.query_async(&mut self.blocking).await;
        match result {
            Ok(reply) => read_reply(reply)
                .map(Some)
                .map_err(|what| self.unexpected("XREADGROUP", what)),
            Err(err) => self.failed(Operation::Receive, err).await.map(|()| None),
        }
    }

    /// Reads this consumer's own pending entries again (after a lost reply).
    async fn read_history(&mut self) -> Result<(), Error> {
        let from = self.history.clone().unwrap_or_else(|| "0".to_owned());
        let Some(entries) = self.read_group(&from, None).await? else {
            return Ok(());
        };
        self.history = entries.last().map(|entry| entry.id.clone());
        self.admit_pending(entries).await
    }

    async fn claim(&mut self) -> Result<(), Error> {
        let mut manager = self.shared.conn.manager();
        let result: RedisResult<Value> = redis::cmd("XAUTOCLAIM")
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
        let reply = autoclaim_reply(reply).map_err(|what| self.unexpected("XAUTOCLAIM", what))?;
        if reply.deleted > 0 {
            tracing::warn!(
                stream = %self.shared.stream,
                count = reply.deleted,
                "pending entries were deleted from the stream before being acknowledged (trimmed?)"
            );
        }
        // A finished scan waits for the next interval; an unfinished one goes on.
        self.next_claim = if reply.cursor == "0-0" {
            self.sweep().await;
            Instant::now() + self.config.claim_interval
        } else {
            Instant::now()
        };
        self.cursor = reply.cursor;
        self.admit_pending(reply.entries).await
    }

    /// Deletes the names left in the group by consumers that are gone (see
    /// [`Shared::sweep`]), once per claim scan. Housekeeping: a failure is logged, and a
    /// lost connection or a missing group is the next step's to handle.
    async fn sweep(&mut self) {
        match self.shared.sweep().await {
            Ok(0) => {}
            Ok(swept) => {
                tracing::debug!(stream = %self.shared.stream, group = %self.shared.group, swept, "deleted the names of idle consumers that held nothing pending");
            }
            Err(err) if err.code() == Some("NOGROUP") => {}
            Err(err) => {
                self.shared.conn.record_error(&err);
                if !self.sweep_failed {
                    self.sweep_failed = true;
                    tracing::warn!(stream = %self.shared.stream, group = %self.shared.group, error = %err, "deleting the names of idle consumers failed; they stay in the group");
                }
            }
        }
    }

    /// Admits entries read again from the pending entries list (this consumer's own,
    /// or claimed), with their delivery counters.
    async fn admit_pending(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        // An entry deleted while pending comes back without fields.
        let entries: Vec<(String, Fields)> = entries
            .into_iter()
            .filter_map(|entry| Some((entry.id, entry.fields?)))
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        let counted = self.with_pending_counts(entries).await?;
        self.admit(counted).await
    }

    /// Pairs entries with their delivery counters from the pending entries list.
    async fn with_pending_counts(
        &mut self,
        entries: Vec<(String, Fields)>,
    ) -> Result<Vec<(String, Fields, u32)>, Error> {
        let mut pipe = redis::pipe();
        for (id, _) in &entries {
            pipe.cmd("XPENDING")
                .arg(&self.shared.stream)
                .arg(&self.shared.group)
                .arg(id)
                .arg(id)
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
            .map(|((id, fields), pending)| {
                let count = pending
                    .ids
                    .first()
                    .map_or(1, |p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX));
                (id, fields, count)
            })
            .collect())
    }

    /// An error for a reply whose shape is not the one Redis documents.
    fn unexpected(&self, command: &str, what: String) -> Error {
        Error::transient(BROKER, Operation::Receive)
            .with_destination(self.shared.stream.clone())
            .with_reason(format!("unexpected {command} reply: {what}"))
    }

    /// Turns entries into deliveries, dead-lettering the expired, the over-delivered and
    /// those that cannot be delivered intact (with the reason).
    async fn admit(&mut self, entries: Vec<(String, Fields, u32)>) -> Result<(), Error> {
        let mut first_error = None;
        for (id, fields, pending_count) in entries {
            let fields = Arc::new(fields);
            let decoded = decode(
                &self.shared.layout,
                &self.shared.stream,
                &fields,
                entry_time(&id),
            );
            let (decoded, count, dead) = match decoded {
                Ok(decoded) => {
                    // A nack never writes a count at or past the backstop, so such a
                    // count is another program's claim, not a record: ignored.
                    let max = self.config.max_deliveries;
                    let carried = if max.is_some_and(|max| decoded.redeliveries >= max) {
                        tracing::warn!(stream = %self.shared.stream, id, claimed = decoded.redeliveries, "ignoring a redelivery count no consumer of this stream wrote");
                        0
                    } else {
                        decoded.redeliveries
                    };
                    let count = pending_count.max(1).saturating_add(carried);
                    let dead = if decoded.is_expired() {
                        Some("expired".to_owned())
                    } else if self.config.max_deliveries.is_some_and(|max| count > max) {
                        Some("max deliveries exceeded".to_owned())
                    } else {
                        None
                    };
                    (Some(decoded), count, dead)
                }
                Err(reason) => {
                    tracing::warn!(stream = %self.shared.stream, id, reason, "dead-lettering an entry that cannot be delivered intact");
                    let count = pending_count.max(1);
                    (None, count, Some(format!("malformed entry: {reason}")))
                }
            };
            if let Some(reason) = dead {
                if let Err(err) = self
                    .shared
                    .dead_letter(&id, &fields, count - 1, &reason)
                    .await
                {
                    first_error.get_or_insert(err);
                }
                continue;
            }
            let Some(decoded) = decoded else { continue };
            let acker = Acker::new(StreamAcker {
                shared: self.shared.clone(),
                id: id.clone(),
                fields,
                count,
            });
            self.admitted.push(Held {
                id,
                counter: pending_count,
                delivery: Delivery::new(decoded.message, acker).with_delivery_count(count),
            });
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The stream of a [`Consumer`]: hands out what its [`Reader`] read, and sends the
/// next read while the last one is handed out, so that handling and the round trip
/// to the server overlap.
///
/// The next read goes out once no more than half a batch is left to hand out: a
/// consumer holds at most a batch and a half it has not handed out, and one that has
/// just read a batch leaves what comes next to the group's other consumers until it
/// has handed out half of it.
struct ReadAhead {
    buffer: VecDeque<Held>,
    /// The error of the last step, yielded once what was read before it is handed out.
    error: Option<Error>,
    /// The reader between steps; `None` while a step is in flight, or once ended.
    reader: Option<Box<Reader>>,
    fetch: Option<Fetch>,
    /// How many deliveries may be left to hand out when the next read goes out.
    low_water: usize,
}

impl ReadAhead {
    fn new(reader: Reader) -> Self {
        ReadAhead {
            buffer: VecDeque::with_capacity(reader.config.batch_size * 2),
            error: None,
            low_water: reader.config.batch_size / 2,
            reader: Some(Box::new(reader)),
            fetch: None,
        }
    }

    /// Polls the step in flight; once it is done, takes what it read and gets the
    /// reader back (unless the stream ended).
    fn drive(&mut self, cx: &mut Context<'_>) {
        let Some(fetch) = &mut self.fetch else {
            return;
        };
        let Poll::Ready((mut reader, step)) = fetch.as_mut().poll(cx) else {
            return;
        };
        self.fetch = None;
        self.buffer.extend(reader.admitted.drain(..));
        if let Err(err) = step {
            self.error = Some(err);
        }
        if !reader.ended {
            self.reader = Some(reader);
        }
    }

    /// Ends the stream: returns what was read and not handed out, and the step in
    /// flight.
    fn close(&mut self) -> (Vec<Held>, Option<Fetch>) {
        self.reader = None;
        self.error = None;
        (self.buffer.drain(..).collect(), self.fetch.take())
    }
}

impl Stream for ReadAhead {
    type Item = Result<Delivery, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            this.drive(cx);
            let item = match this.buffer.pop_front() {
                Some(held) => Some(Ok(held.delivery)),
                None => this.error.take().map(Err),
            };
            if this.error.is_none() && this.buffer.len() <= this.low_water {
                if let Some(reader) = this.reader.take() {
                    // Polled now, so that the command is on its way while the
                    // deliveries in hand are handled.
                    this.fetch = Some(reader.fetch());
                    this.drive(cx);
                }
            }
            match item {
                Some(item) => return Poll::Ready(Some(item)),
                None if this.fetch.is_some() => return Poll::Pending,
                None if this.reader.is_none() && this.buffer.is_empty() && this.error.is_none() => {
                    return Poll::Ready(None)
                }
                // A step ended at once: hand out what it read, or start the next.
                None => continue,
            }
        }
    }
}

/// A delivery read and not yet handed out: what handing it back on closing needs.
struct Held {
    id: String,
    /// The entry's delivery counter in the group's pending entries list when it was
    /// read (1 for a new entry).
    counter: u32,
    delivery: Delivery,
}

/// One entry of a stream reply, names and values as bytes; no fields for an entry
/// deleted while pending.
#[derive(Debug)]
struct Entry {
    id: String,
    fields: Option<Fields>,
}

/// The bytes of a string reply.
fn bytes_of(value: Value) -> Result<Bytes, String> {
    match value {
        Value::BulkString(bytes) => Ok(Bytes::from(bytes)),
        Value::SimpleString(text) => Ok(Bytes::from(text)),
        Value::VerbatimString { text, .. } => Ok(Bytes::from(text)),
        Value::Int(n) => Ok(Bytes::from(n.to_string())),
        other => Err(format!("expected a string, got {other:?}")),
    }
}

fn text_of(value: Value) -> Result<String, String> {
    let bytes = bytes_of(value)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| "an entry id is not UTF-8".to_owned())
}

/// Entries as Redis sends them: `[[id, [name, value, ...]], ...]`, read binary-safe so
/// that one odd entry cannot fail a whole reply.
fn entries_of(value: Value) -> Result<Vec<Entry>, String> {
    let items = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(format!("expected a list of entries, got {other:?}")),
    };
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let pair = match item {
            // An entry deleted while pending, as Redis 6.2's XAUTOCLAIM reports it.
            Value::Nil => continue,
            Value::Array(pair) if pair.len() == 2 => pair,
            other => return Err(format!("expected an entry, got {other:?}")),
        };
        let mut pair = pair.into_iter();
        let (Some(id), Some(fields)) = (pair.next(), pair.next()) else {
            return Err("an entry without an id and fields".to_owned());
        };
        let id = text_of(id)?;
        let fields = match fields {
            Value::Nil => None,
            Value::Array(flat) if flat.is_empty() => None,
            Value::Array(flat) => {
                if flat.len() % 2 != 0 {
                    return Err(format!("entry {id} has an odd number of field items"));
                }
                let mut fields = Vec::with_capacity(flat.len() / 2);
                let mut flat = flat.into_iter();
                while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                    fields.push((bytes_of(name)?, bytes_of(value)?));
                }
                Some(fields)
            }
            Value::Map(map) if map.is_empty() => None,
            Value::Map(map) => Some(
                map.into_iter()
                    .map(|(name, value)| Ok((bytes_of(name)?, bytes_of(value)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => return Err(format!("expected the fields of entry {id}, got {other:?}")),
        };
        entries.push(Entry { id, fields });
    }
    Ok(entries)
}

/// The entries of an `XREADGROUP` reply on one stream: nil, `[[stream, entries]]`, or
/// a map from stream to entries (RESP3).
fn read_reply(value: Value) -> Result<Vec<Entry>, String> {
    let streams: Vec<Value> = match value {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                other => Err(format!("expected [stream, entries], got {other:?}")),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        other => return Err(format!("expected streams, got {other:?}")),
    };
    let mut entries = Vec::new();
    for stream in streams {
        entries.extend(entries_of(stream)?);
    }
    Ok(entries)
}

/// An `XAUTOCLAIM` reply: the cursor to resume from, the claimed entries and how many
/// pending entries had been deleted from the stream.
struct AutoClaim {
    cursor: String,
    entries: Vec<Entry>,
    deleted: usize,
}

fn autoclaim_reply(value: Value) -> Result<AutoClaim, String> {
    let Value::Array(parts) = value else {
        return Err(format!(
            "expected [cursor, entries, deleted], got {value:?}"
        ));
    };
    let mut parts = parts.into_iter();
    let cursor = text_of(parts.next().ok_or("no cursor")?)?;
    let entries = entries_of(parts.next().ok_or("no entries")?)?;
    let deleted = match parts.next() {
        Some(Value::Array(ids)) => ids.len(),
        _ => 0,
    };
    Ok(AutoClaim {
        cursor,
        entries,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(bytes: &[u8]) -> Value {
        Value::BulkString(bytes.to_vec())
    }

    #[test]
    fn replies_are_read_binary_safe_and_in_order() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk(b"s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"\xff"), bulk(b"v"), bulk(b"a"), bulk(b"\x00")]),
                ]),
                Value::Array(vec![bulk(b"2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = read_reply(reply).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        let fields = entries[0].fields.as_ref().unwrap();
        assert_eq!(fields[0].0.as_ref(), b"\xff");
        assert_eq!(
            fields[1],
            (Bytes::from_static(b"a"), Bytes::from_static(b"\x00"))
        );
        assert!(entries[1].fields.is_none());
        assert!(read_reply(Value::Nil).unwrap().is_empty());
        assert!(read_reply(Value::Int(3)).is_err());
    }

    #[test]
    fn autoclaim_replies_of_redis_6_and_7() {
        let seven = Value::Array(vec![
            bulk(b"0-0"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"1-0"),
                Value::Array(vec![bulk(b"payload"), bulk(b"x")]),
            ])]),
            Value::Array(vec![bulk(b"0-1")]),
        ]);
        let reply = autoclaim_reply(seven).unwrap();
        assert_eq!(reply.cursor, "0-0");
        assert_eq!(reply.entries.len(), 1);
        assert_eq!(reply.deleted, 1);
        let six = Value::Array(vec![bulk(b"5-0"), Value::Array(vec![Value::Nil])]);
        let reply = autoclaim_reply(six).unwrap();
        assert_eq!(reply.cursor, "5-0");
        assert!(reply.entries.is_empty());
    }
}
