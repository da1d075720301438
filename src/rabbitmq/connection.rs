//! One supervised AMQP connection: a pool of confirm-mode channels, the declared
//! topology, blocked/unblocked tracking and reconnect with backoff.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{ConnectionProperties, Event};
use tokio::sync::{watch, Notify};

use super::config::Config;
use super::confirms::ConfirmChannel;
use super::consumer::Consumer;
use super::error::{amqp_error, closed, short_string, BROKER};
use super::publisher::Publisher;
use super::request::Requester;
use super::topology::{Part, Topology};
use crate::error::{Error, Operation};
use crate::redact::{self, LoneUser};

/// How often the supervisor double-checks the connection state, in case the broker
/// closed it without an error event (a graceful `connection.close`).
const STATUS_CHECK: Duration = Duration::from_millis(250);

/// How long a declared delay queue is trusted to exist before it is declared again;
/// well inside the minute of slack in its `x-expires`.
pub(crate) const DELAY_QUEUE_RENEWAL: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open AMQP connection and its channel pool. Replaced as a whole on reconnect.
pub(crate) struct Live {
    pub(crate) generation: u64,
    pub(crate) connection: lapin::Connection,
    slots: Vec<Mutex<ConfirmChannel>>,
    next: AtomicUsize,
    known_exchanges: Mutex<HashSet<String>>,
    /// Delay queues declared on this connection, with when they were last declared
    /// (declaring again renews their `x-expires` lease).
    delay_queues: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl Live {
    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// A confirm-mode channel from the pool, re-opening the slot's channel if the
    /// broker closed it (a channel-level error closes only that channel).
    pub(crate) async fn publish_channel(&self) -> Result<ConfirmChannel, lapin::Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let channel = lock(slot).clone();
        if channel.channel().status().connected() {
            return Ok(channel);
        }
        let fresh = ConfirmChannel::new(open_confirm_channel(&self.connection).await?);
        *lock(slot) = fresh.clone();
        Ok(fresh)
    }

    /// Checks once per connection that `exchange` exists (a passive declare on a
    /// throw-away channel), so that publishing to a missing exchange fails that one
    /// message with NOT_FOUND instead of closing a pooled channel and failing every
    /// unconfirmed message on it.
    pub(crate) async fn check_exchange(&self, exchange: &str) -> Result<(), Error> {
        if exchange.is_empty()
            || exchange.starts_with("amq.")
            || lock(&self.known_exchanges).contains(exchange)
        {
            return Ok(());
        }
        let name = short_string(exchange, Operation::Publish, exchange)?;
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| amqp_error(Operation::Publish, exchange, e))?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                name,
                lapin::ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| amqp_error(Operation::Publish, exchange, e))?;
        lock(&self.known_exchanges).insert(exchange.to_owned());
        Ok(())
    }

    /// Declares `queue`, a delay queue, unless this connection declared it within
    /// [`DELAY_QUEUE_RENEWAL`]: a delay queue expires when unused for its TTL plus a
    /// minute or more, and declaring it renews that lease, so a message published into
    /// it right after this always expires (and moves on) before the queue does.
    pub(crate) async fn declare_delay_queue(
        &self,
        queue: &super::topology::Queue,
        operation: Operation,
        destination: &str,
    ) -> Result<(), Error> {
        let now = tokio::time::Instant::now();
        let fresh = lock(&self.delay_queues)
            .get(queue.name())
            .is_some_and(|at| now.duration_since(*at) < DELAY_QUEUE_RENEWAL);
        if fresh {
            return Ok(());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| amqp_error(operation, destination, e))?;
        queue.declare(&channel).await?;
        lock(&self.delay_queues).insert(queue.name().to_owned(), now);
        Ok(())
    }

    fn remember_exchanges(&self, topology: &Topology) {
        let mut known = lock(&self.known_exchanges);
        for exchange in topology.exchanges() {
            known.insert(exchange.name().to_owned());
        }
    }
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation)
            .field("channels", &self.slots.len())
            .finish()
    }
}

async fn open_confirm_channel(
    connection: &lapin::Connection,
) -> Result<lapin::Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// What publishers and consumers see of the connection.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    /// The open connection; `None` while reconnecting.
    pub(crate) live: Option<Arc<Live>>,
    /// The broker sent `connection.blocked` (resource alarm): publishing waits.
    pub(crate) blocked: bool,
    /// The connection was closed for good.
    pub(crate) closed: bool,
}

struct Shared {
    config: Config,
    topology: Arc<Mutex<Topology>>,
    status: watch::Receiver<Status>,
    nudge: Arc<Notify>,
    shutdown: watch::Sender<bool>,
    endpoint: String,
    /// How many consumers of each queue this connection has.
    consumers: Mutex<HashMap<String, usize>>,
}

/// A supervised connection to RabbitMQ, shared by the publishers, consumers and
/// requesters made from it. Cloning shares the connection.
///
/// A background task watches the connection (heartbeats, error events, the
/// connection state). When the connection is lost it reconnects with jittered
/// exponential backoff, declares the topology again and hands the new connection to every
/// publisher and consumer; meanwhile publishers' `poll_ready` is `Pending`. The
/// connection closes when [`Connection::close`] is called or the last handle (including
/// publishers and consumers) is dropped. It needs a Tokio runtime (the supervisor is a
/// Tokio task).
///
/// One `Connection` is one AMQP connection, multiplexing a pool of confirm-mode
/// channels ([`Config::channel_pool_size`]) for publishers and one channel per
/// consumer. Where a second connection pays is between roles: RabbitMQ throttles
/// (`connection.blocked`) every connection that publishes during a memory or disk
/// alarm, and a consumer sharing that connection can then neither receive nor
/// settle, which keeps the queues from draining. So give consumers a connection of
/// their own, as RabbitMQ's own guidance says; more connections per role only pay
/// when one connection's I/O task saturates a core.
///
/// ```no_run
/// use tower_mq::rabbitmq::{Config, Connection};
///
/// # async fn run() -> Result<(), tower_mq::Error> {
/// let config = Config::new("amqp://guest:guest@127.0.0.1:5672/%2f");
/// let publishing = Connection::connect(&config.clone().connection_name("orders-publish")).await?;
/// let consuming = Connection::connect(&config.connection_name("orders-consume")).await?;
/// let publisher = publishing.publisher();
/// let deliveries = consuming.consumer("billing").await?;
/// # drop((publisher, deliveries));
/// # Ok(())
/// # }
/// ```
///
/// See the [module docs](super) for a fuller example.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.shared.status.borrow();
        f.debug_struct("Connection")
            .field("endpoint", &self.shared.endpoint)
            .field("connected", &status.live.is_some())
            .field("blocked", &status.blocked)
            .field("closed", &status.closed)
            .finish()
    }
}

/// `host:port/vhost`, for error messages (never the credentials).
fn endpoint(uri: &AMQPUri) -> String {
    format!(
        "{}:{}/{}",
        uri.authority.host, uri.authority.port, uri.vhost
    )
}

impl Connection {
    /// Connects to the broker, opens the channel pool and declares the configured
    /// topology. Fails if the first attempt fails (a bad URI or credentials is
    /// permanent, an unreachable broker transient), unless
    /// [`Config::connect_retry`](super::Config::connect_retry) says to retry a
    /// transient failure; reconnects after that are automatic.
    pub async fn connect(config: &Config) -> Result<Connection, Error> {
        let config = config.clone();
        let mut uri: AMQPUri = config.uri.parse().map_err(|reason: String| {
            // The parser quotes the URI it refused, password included.
            let reason = redact::in_text(&reason, &config.uri, LoneUser::Name);
            Error::permanent(BROKER, Operation::Connect)
                .with_destination(config.redacted_uri())
                .with_reason(format!("invalid AMQP URI: {reason}"))
        })?;
        let heartbeat = config.heartbeat.as_secs().clamp(0, u64::from(u16::MAX)) as u16;
        uri.query.heartbeat = Some(if config.heartbeat.is_zero() {
            0
        } else {
            heartbeat.max(1)
        });
        let endpoint = endpoint(&uri);
        let topology = Arc::new(Mutex::new(config.topology.clone()));
        let (live, events) = crate::connect_retry::connect(
            config.connect_retry,
            config.reconnect_backoff,
            &endpoint,
            || establish(&config, &uri, &endpoint, &topology, 1),
        )
        .await?;
        let (status_tx, status_rx) = watch::channel(Status {
            live: Some(live.clone()),
            blocked: live.connection.status().blocked(),
            closed: false,
        });
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let nudge = Arc::new(Notify::new());
        let supervisor = Supervisor {
            config: config.clone(),
            uri,
            endpoint: endpoint.clone(),
            topology: topology.clone(),
            status: status_tx,
            nudge: nudge.clone(),
            shutdown: shutdown_rx,
        };
        tokio::spawn(supervisor.run(live, events));
        Ok(Connection {
            shared: Arc::new(Shared {
                config,
                topology,
                status: status_rx,
                nudge,
                shutdown: shutdown_tx,
                endpoint,
                consumers: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// A publisher over this connection's channel pool.
    pub fn publisher(&self) -> Publisher {
        Publisher::new(self.clone())
    }

    /// A consumer of `queue`, subscribed before this returns (so a missing queue is
    /// reported here). It re-subscribes by itself after every reconnect.
    pub async fn consumer(&self, queue: impl Into<String>) -> Result<Consumer, Error> {
        Consumer::subscribe(self.clone(), queue.into()).await
    }

    /// A requester for request/reply over direct reply-to: [`Requester::new`].
    pub fn requester(&self) -> Requester {
        Requester::new(self)
    }

    /// Declares `topology` now and after every future reconnect.
    ///
    /// Only what the broker accepted is recorded for the reconnects: on a failure
    /// (a queue that exists with other arguments, a binding to a missing exchange) the
    /// parts declared before it are recorded, the failing part and those after it are
    /// not, and the error names the part.
    pub async fn declare(&self, topology: &Topology) -> Result<(), Error> {
        loop {
            let live = self
                .wait_connected()
                .await
                .ok_or_else(|| closed(Operation::Declare, &self.shared.endpoint))?;
            let channel = live
                .connection
                .create_channel()
                .await
                .map_err(|e| amqp_error(Operation::Declare, &self.shared.endpoint, e))?;
            let mut declared = Topology::new();
            let result = topology.declare_into(&channel, &mut declared).await;
            lock(&self.shared.topology).merge(&declared);
            live.remember_exchanges(&declared);
            result?;
            // A reconnect in between may have re-declared the record without this
            // topology: declare it on the new connection too.
            if self.generation() == live.generation {
                return Ok(());
            }
        }
    }

    /// The topology declared now and again after every reconnect: the
    /// [`Config::topology`](super::Config::topology) and every
    /// [`declare`](Connection::declare)d part the broker accepted, less the parts the
    /// broker refused for good on a re-declaration, and less the exclusive and
    /// auto-deleted queues (with their bindings) whose consumers on this connection
    /// are all gone.
    pub fn topology(&self) -> Topology {
        lock(&self.shared.topology).clone()
    }

    /// Counts a consumer of `queue` until the returned guard is dropped.
    pub(crate) fn consuming(&self, queue: &str) -> Consuming {
        *lock(&self.shared.consumers)
            .entry(queue.to_owned())
            .or_default() += 1;
        Consuming {
            shared: self.shared.clone(),
            queue: queue.to_owned(),
        }
    }

    /// The dead-letter exchange and routing key of `queue`, if it was declared through
    /// this connection with one.
    pub(crate) fn dead_letter_target(&self, queue: &str) -> Option<(String, Option<String>)> {
        use super::topology::Argument;
        let topology = lock(&self.shared.topology);
        let declared = topology.queues().iter().rev().find(|q| q.name() == queue)?;
        let Some(Argument::String(exchange)) = declared.get_argument("x-dead-letter-exchange")
        else {
            return None;
        };
        let key = match declared.get_argument("x-dead-letter-routing-key") {
            Some(Argument::String(key)) => Some(key.clone()),
            _ => None,
        };
        Some((exchange.clone(), key))
    }

    /// The settings the connection was made with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Whether a connection to the broker is open right now.
    pub fn is_connected(&self) -> bool {
        self.shared
            .status
            .borrow()
            .live
            .as_ref()
            .is_some_and(|live| live.is_connected())
    }

    /// Whether the broker has blocked publishing on this connection
    /// (`connection.blocked`, sent on a memory or disk alarm).
    pub fn is_blocked(&self) -> bool {
        self.shared.status.borrow().blocked
    }

    /// How many times the connection was (re-)established: 1 after `connect`, 2 after
    /// the first reconnect, and so on.
    pub fn generation(&self) -> u64 {
        self.shared
            .status
            .borrow()
            .live
            .as_ref()
            .map_or(0, |live| live.generation)
    }

    /// Waits until a connection is open (at once if one is). Returns `false` if the
    /// connection was closed.
    pub async fn ready(&self) -> bool {
        self.wait_connected().await.is_some()
    }

    /// Closes the connection for good: publishers fail with a permanent error and
    /// consumers end.
    pub fn close(&self) {
        let _ = self.shared.shutdown.send(true);
    }

    /// Whether [`close`](Connection::close) was called: from then on nothing new
    /// starts on the connection, even before the supervisor has closed it.
    fn closing(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.clone()
    }

    /// Asks the supervisor to check the connection now (after an operation failed).
    pub(crate) fn nudge(&self) {
        self.shared.nudge.notify_one();
    }

    /// Resolves once connection `generation` is no longer the live one (lost,
    /// replaced or closed). Operations race their lapin futures against it, so that
    /// nothing waits forever on a connection that is gone.
    pub(crate) async fn lost(&self, generation: u64) {
        let mut rx = self.shared.status.clone();
        loop {
            {
                let status = rx.borrow_and_update();
                let current = status.live.as_ref().map(|live| live.generation);
                if status.closed || self.closing() || current != Some(generation) {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// The open connection, waiting through reconnects; `None` once closed.
    pub(crate) async fn wait_connected(&self) -> Option<Arc<Live>> {
        self.wait_live(None).await
    }

    /// Like `wait_connected`, but does not return generation `lost` unless it is still
    /// connected (so a consumer whose channel died waits for the replacement).
    pub(crate) async fn wait_live(&self, lost: Option<u64>) -> Option<Arc<Live>> {
        let mut rx = self.shared.status.clone();
        loop {
            let status = rx.borrow_and_update().clone();
            if status.closed || self.closing() {
                return None;
            }
            if let Some(live) = status.live {
                if live.is_connected() {
                    return Some(live);
                }
                if Some(live.generation) != lost {
                    self.nudge();
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

/// A consumer of a queue, counted while it lives: when the last consumer of an
/// exclusive or auto-deleted queue goes, the queue leaves the recorded topology.
pub(crate) struct Consuming {
    shared: Arc<Shared>,
    queue: String,
}

impl Drop for Consuming {
    fn drop(&mut self) {
        let mut consumers = lock(&self.shared.consumers);
        let Some(count) = consumers.get_mut(&self.queue) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            consumers.remove(&self.queue);
            drop(consumers);
            lock(&self.shared.topology).forget_transient_queue(&self.queue);
        }
    }
}

impl fmt::Debug for Consuming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consuming")
            .field("queue", &self.queue)
            .finish()
    }
}

type Events = Pin<Box<dyn Stream<Item = Event> + Send>>;

async fn establish(
    config: &Config,
    uri: &AMQPUri,
    endpoint: &str,
    topology: &Mutex<Topology>,
    generation: u64,
) -> Result<(Arc<Live>, Events), Error> {
    let connect = async {
        let props = ConnectionProperties::default()
            .with_connection_name(config.connection_name.as_str().into());
        let connection = lapin::Connection::connect_uri(uri.clone(), props)
            .await
            .map_err(|e| amqp_error(Operation::Connect, endpoint, e))?;
        let events: Events = Box::pin(connection.events_listener());
        let recorded = lock(topology).clone();
        let report = recorded
            .redeclare(&connection)
            .await
            .map_err(|e| amqp_error(Operation::Connect, endpoint, e))?;
        if generation == 1 {
            // The first connect reports a refused declare to the caller.
            if let Some((_, error)) = report.failures.into_iter().next() {
                return Err(error);
            }
        } else {
            // A reconnect goes on without the refused part: one bad declare must not
            // keep the whole connection down.
            for (part, error) in report.failures {
                forget_refused(topology, endpoint, generation, part, &error);
            }
        }
        let mut slots = Vec::with_capacity(config.channel_pool_size);
        for _ in 0..config.channel_pool_size {
            let channel = open_confirm_channel(&connection)
                .await
                .map_err(|e| amqp_error(Operation::Connect, endpoint, e))?;
            slots.push(Mutex::new(ConfirmChannel::new(channel)));
        }
        let live = Arc::new(Live {
            generation,
            connection,
            slots,
            next: AtomicUsize::new(0),
            known_exchanges: Mutex::new(HashSet::new()),
            delay_queues: Mutex::new(HashMap::new()),
        });
        live.remember_exchanges(&report.declared);
        Ok((live, events))
    };
    // A broker that accepts TCP but never finishes the handshake (still starting)
    // must not stall reconnects.
    let limit = (config.heartbeat * 2).max(Duration::from_secs(10));
    match tokio::time::timeout(limit, connect).await {
        Ok(result) => result,
        Err(_) => Err(Error::transient(BROKER, Operation::Connect)
            .with_destination(endpoint)
            .with_reason(format!("no connection within {limit:?}"))),
    }
}

/// Reports a part of the recorded topology that failed to declare again after a
/// reconnect, and drops it from the record if the broker refused it for good.
fn forget_refused(
    topology: &Mutex<Topology>,
    endpoint: &str,
    generation: u64,
    part: Part,
    error: &Error,
) {
    if error.is_transient() {
        tracing::warn!(endpoint, generation, %error, "rabbitmq could not declare again after reconnecting; will try at the next reconnect");
    } else {
        tracing::error!(endpoint, generation, %error, "rabbitmq refused to declare again after reconnecting; no longer declared");
        lock(topology).remove(&part);
    }
}

struct Supervisor {
    config: Config,
    uri: AMQPUri,
    endpoint: String,
    topology: Arc<Mutex<Topology>>,
    status: watch::Sender<Status>,
    nudge: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
}

/// Resolves when the connection should close: `close()` was called or every handle
/// was dropped.
async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|closed| *closed).await;
}

impl Supervisor {
    async fn run(mut self, mut live: Arc<Live>, mut events: Events) {
        let mut check = tokio::time::interval(STATUS_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Connected: wait until the connection is lost.
            let lost = loop {
                tokio::select! {
                    event = events.next() => match event {
                        Some(Event::ConnectionBlocked(reason)) => {
                            tracing::warn!(endpoint = %self.endpoint, %reason, "rabbitmq blocked the connection");
                            self.status.send_modify(|s| s.blocked = true);
                        }
                        Some(Event::ConnectionUnblocked) => {
                            tracing::info!(endpoint = %self.endpoint, "rabbitmq unblocked the connection");
                            self.status.send_modify(|s| s.blocked = false);
                        }
                        // lapin reports a channel the broker closed (NOT_FOUND, a refused
                        // user id) here too; that channel's users get the error, and the
                        // connection stays: only a closed connection is lost.
                        Some(Event::Error(error)) if live.is_connected() => {
                            tracing::debug!(endpoint = %self.endpoint, %error, "rabbitmq closed a channel");
                        }
                        Some(Event::Error(error)) => break error.to_string(),
                        Some(_) => {}
                        None => break "connection events ended".to_owned(),
                    },
                    _ = check.tick() => if !live.is_connected() {
                        break "the connection is no longer open".to_owned();
                    },
                    _ = self.nudge.notified() => if !live.is_connected() {
                        break "the connection is no longer open".to_owned();
                    },
                    _ = shutdown_requested(&mut self.shutdown) => {
                        self.finish(Some(live)).await;
                        return;
                    }
                }
            };
            tracing::warn!(endpoint = %self.endpoint, generation = live.generation, reason = %lost, "rabbitmq connection lost; reconnecting");
            let generation = live.generation + 1;
            self.status.send_replace(Status::default());
            drop(live);

            // Reconnecting: retry with jittered exponential backoff.
            let mut delays = self.config.reconnect_backoff.delays();
            live = loop {
                let delay = delays.next_delay();
                let attempt = establish(
                    &self.config,
                    &self.uri,
                    &self.endpoint,
                    &self.topology,
                    generation,
                );
                tokio::select! {
                    result = attempt => match result {
                        Ok((fresh, fresh_events)) => {
                            events = fresh_events;
                            break fresh;
                        }
                        Err(error) => tracing::warn!(endpoint = %self.endpoint, %error, retry_in = ?delay, "rabbitmq reconnect failed"),
                    },
                    _ = shutdown_requested(&mut self.shutdown) => {
                        self.finish(None).await;
                        return;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown_requested(&mut self.shutdown) => {
                        self.finish(None).await;
                        return;
                    }
                }
            };
            tracing::info!(endpoint = %self.endpoint, generation, "rabbitmq connection re-established");
            let blocked = live.connection.status().blocked();
            self.status.send_replace(Status {
                live: Some(live.clone()),
                blocked,
                closed: false,
            });
        }
    }

    async fn finish(&self, live: Option<Arc<Live>>) {
        self.status.send_replace(Status {
            live: None,
            blocked: false,
            closed: true,
        });
        if let Some(live) = live {
            let _ = live
                .connection
                .close(200, "closed by the application".into())
                .await;
        }
    }
}

/// Publisher-side readiness: `Ready` with a reserved connection when one is open and
/// not blocked, `Pending` while reconnecting or blocked.
pub(crate) struct Readiness {
    connection: Connection,
    rx: watch::Receiver<Status>,
    // `Sync` so that the publishers holding it are (axum state, `BoxCloneSyncService`).
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    reserved: Option<Arc<Live>>,
}

impl Readiness {
    pub(crate) fn new(connection: Connection) -> Self {
        Readiness {
            rx: connection.status(),
            connection,
            waiting: None,
            reserved: None,
        }
    }

    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    pub(crate) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        operation: Operation,
    ) -> Poll<Result<(), Error>> {
        if self.reserved.is_some() {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(waiting) = self.waiting.as_mut() {
                ready!(waiting.as_mut().poll(cx));
                self.waiting = None;
            }
            if self.rx.has_changed().is_err() {
                return Poll::Ready(Err(closed(operation, &self.connection.shared.endpoint)));
            }
            let status = self.rx.borrow_and_update().clone();
            if status.closed || self.connection.closing() {
                return Poll::Ready(Err(closed(operation, &self.connection.shared.endpoint)));
            }
            match status.live {
                Some(live) if !status.blocked && live.is_connected() => {
                    self.reserved = Some(live);
                    return Poll::Ready(Ok(()));
                }
                Some(_) if !status.blocked => self.connection.nudge(),
                _ => {}
            }
            let mut rx = self.rx.clone();
            let recheck = !status.blocked && status.live.is_some();
            self.waiting = Some(Box::pin(async move {
                if recheck {
                    // The supervisor notices a dead connection within STATUS_CHECK;
                    // look again then even if nothing changed.
                    let _ = tokio::time::timeout(STATUS_CHECK, rx.changed()).await;
                } else {
                    let _ = rx.changed().await;
                }
            }));
        }
    }

    /// The connection reserved by `poll_ready`, or, when `poll_ready` reserved none,
    /// the permanent [`Error::called_before_ready`] of `operation`.
    pub(crate) fn take(&mut self, operation: Operation) -> Result<Arc<Live>, Error> {
        self.reserved
            .take()
            .ok_or_else(|| Error::called_before_ready(BROKER, operation))
    }
}

impl Clone for Readiness {
    fn clone(&self) -> Self {
        Readiness::new(self.connection.clone())
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("reserved", &self.reserved.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready_err, task};
    use tower::Service;

    use crate::message::Message;

    /// A connection that has not connected (the state while reconnecting), with no
    /// supervisor, and the sender of its status.
    fn detached() -> (Connection, watch::Sender<Status>) {
        let config = Config::new("amqp://127.0.0.1:5672/%2f");
        let (status_tx, status_rx) = watch::channel(Status::default());
        let (shutdown_tx, _) = watch::channel(false);
        let connection = Connection {
            shared: Arc::new(Shared {
                topology: Arc::new(Mutex::new(config.topology.clone())),
                config,
                status: status_rx,
                nudge: Arc::new(Notify::new()),
                shutdown: shutdown_tx,
                endpoint: "127.0.0.1:5672//".to_owned(),
                consumers: Mutex::new(HashMap::new()),
            }),
        };
        (connection, status_tx)
    }

    fn assert_called_before_ready(err: &Error, operation: Operation, destination: Option<&str>) {
        crate::test_support::assert_called_before_ready(err, BROKER, operation, destination);
    }

    #[tokio::test]
    async fn a_call_without_poll_ready_fails_permanently_on_every_service() {
        let (connection, status) = detached();
        let mut publisher = connection.publisher();
        let err = publisher
            .call(Message::new("orders", "x"))
            .await
            .unwrap_err();
        assert_called_before_ready(&err, Operation::Publish, Some("orders"));

        let mut batch = publisher.batch();
        let err = batch
            .call(vec![Message::new("orders", "x")])
            .await
            .unwrap_err();
        assert_called_before_ready(&err, Operation::Publish, None);

        let mut requester = connection.requester();
        let err = requester.call(Message::new("rpc", "x")).await.unwrap_err();
        assert_called_before_ready(&err, Operation::Request, Some("rpc"));

        // Readiness goes on as usual: waiting while there is no connection, failing
        // once the connection is closed.
        let mut cx = task::spawn(());
        assert_pending!(cx.enter(|cx, _| publisher.poll_ready(cx)));
        status.send_replace(Status {
            closed: true,
            ..Status::default()
        });
        assert!(cx.is_woken());
        let err = assert_ready_err!(cx.enter(|cx, _| publisher.poll_ready(cx)));
        assert!(err.to_string().contains("closed"), "{err}");
    }
}
