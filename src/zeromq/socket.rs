//! One task per ZeroMQ socket: it tracks connected peers from the socket monitor and
//! redials connected endpoints whose peer went away. PUB and PUSH publishers send on
//! the socket themselves, and SUB and PULL consumers read it themselves, so that no
//! message crosses a task; DEALER and ROUTER sockets, whose sends and receives share
//! one socket, send what the handles queue and read from this task.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::lock::Mutex;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{SocketEvent, SocketOptions, ZmqError, ZmqMessage};

use super::{Config, Framing, BROKER};
use crate::connect_retry::Delays;
use crate::{Error, Operation};

/// The ZeroMQ socket types tower-mq drives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Pub,
    Sub(Vec<String>),
    Push,
    Pull,
    Dealer,
    Router,
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Pub => "PUB",
            Kind::Sub(_) => "SUB",
            Kind::Push => "PUSH",
            Kind::Pull => "PULL",
            Kind::Dealer => "DEALER",
            Kind::Router => "ROUTER",
        }
    }

    /// Whether the socket task reads the socket and queues what it receives. SUB and
    /// PULL consumers read theirs directly ([`Direct::socket`]).
    fn task_receives(&self) -> bool {
        matches!(self, Kind::Dealer | Kind::Router)
    }

    /// Whether sends wait for a connected peer. A ROUTER addresses one peer by identity,
    /// so a missing peer is that send's failure, not the socket's readiness; a PUB drops
    /// what no subscriber wants, peers or not, so it never waits.
    pub(crate) fn sends_need_peer(&self) -> bool {
        matches!(self, Kind::Push | Kind::Dealer)
    }

    /// Whether tower-mq redials a connection whose peer went away. zeromq's SUB socket
    /// reconnects by itself; the others never do.
    fn redials(&self) -> bool {
        !matches!(self, Kind::Sub(_))
    }
}

pub(crate) enum AnySocket {
    Pub(zeromq::PubSocket),
    Sub(zeromq::SubSocket),
    Push(zeromq::PushSocket),
    Pull(zeromq::PullSocket),
    Dealer(zeromq::DealerSocket),
    Router(zeromq::RouterSocket),
}

macro_rules! each {
    ($socket:expr, $s:ident => $body:expr) => {
        match $socket {
            AnySocket::Pub($s) => $body,
            AnySocket::Sub($s) => $body,
            AnySocket::Push($s) => $body,
            AnySocket::Pull($s) => $body,
            AnySocket::Dealer($s) => $body,
            AnySocket::Router($s) => $body,
        }
    };
}

impl AnySocket {
    fn new(kind: &Kind, options: SocketOptions) -> Self {
        match kind {
            Kind::Pub => AnySocket::Pub(zeromq::PubSocket::with_options(options)),
            Kind::Sub(_) => AnySocket::Sub(zeromq::SubSocket::with_options(options)),
            Kind::Push => AnySocket::Push(zeromq::PushSocket::with_options(options)),
            Kind::Pull => AnySocket::Pull(zeromq::PullSocket::with_options(options)),
            Kind::Dealer => AnySocket::Dealer(zeromq::DealerSocket::with_options(options)),
            Kind::Router => AnySocket::Router(zeromq::RouterSocket::with_options(options)),
        }
    }

    pub(crate) async fn send(&mut self, message: ZmqMessage) -> Result<(), ZmqError> {
        match self {
            AnySocket::Pub(s) => s.send(message).await,
            AnySocket::Push(s) => s.send(message).await,
            AnySocket::Dealer(s) => s.send(message).await,
            AnySocket::Router(s) => s.send(message).await,
            AnySocket::Sub(_) | AnySocket::Pull(_) => {
                Err(ZmqError::Socket("this socket type cannot send"))
            }
        }
    }

    pub(crate) async fn recv(&mut self) -> Result<ZmqMessage, ZmqError> {
        match self {
            AnySocket::Sub(s) => s.recv().await,
            AnySocket::Pull(s) => s.recv().await,
            AnySocket::Dealer(s) => s.recv().await,
            AnySocket::Router(s) => s.recv().await,
            AnySocket::Pub(_) | AnySocket::Push(_) => std::future::pending().await,
        }
    }
}

/// What handles ask of the socket task.
pub(crate) struct Command {
    pub(crate) message: ZmqMessage,
    pub(crate) done: oneshot::Sender<Result<(), Error>>,
    /// The message's destination, for errors.
    pub(crate) destination: String,
}

/// The socket itself, for the handles that send on it or read it without the socket
/// task. Holding it keeps the socket task running.
pub(crate) struct Direct {
    /// Locked by a send for as long as the send takes (a moment, unless zeromq's
    /// per-peer queue is full), by a SUB or PULL consumer while it is polled, and by
    /// the socket task while it dials.
    pub(crate) socket: Arc<Mutex<AnySocket>>,
    /// Sends in flight, at most [`Config::send_queue`]: publishers reserve one in
    /// `poll_ready`.
    pub(crate) slots: SendSlots,
    pub(crate) peers: watch::Receiver<usize>,
    _alive: Arc<oneshot::Sender<()>>,
}

/// Bounds the sends in flight with one atomic count. Waiting for a slot (only while
/// the socket's own queues are full) goes through a [`Notify`].
pub(crate) struct SendSlots {
    in_flight: AtomicUsize,
    limit: usize,
    freed: Notify,
}

impl SendSlots {
    fn new(limit: usize) -> Self {
        SendSlots {
            in_flight: AtomicUsize::new(0),
            limit: limit.max(1),
            freed: Notify::new(),
        }
    }

    /// Takes a slot if one is free.
    pub(crate) fn try_take(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Waits until it took a slot.
    pub(crate) async fn take(&self) {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so a slot freed in between wakes it.
            freed.as_mut().enable();
            if self.try_take() {
                return;
            }
            freed.await;
        }
    }

    /// Gives a taken slot back.
    pub(crate) fn give_back(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == self.limit {
            self.freed.notify_waiters();
        }
    }
}

/// The shared side of a socket task: queue commands, watch peers. The task runs until
/// every handle (and every in-flight send holding one) is dropped.
#[derive(Clone)]
pub(crate) struct Handle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) direct: Arc<Direct>,
    pub(crate) peers: watch::Receiver<usize>,
    pub(crate) endpoints: Arc<[String]>,
    pub(crate) name: Arc<str>,
    /// How the socket's messages travel ([`Config::framing`]).
    pub(crate) framing: Framing,
    /// The most messages a consumer reading the socket itself takes at a time
    /// ([`Config::receive_queue`]).
    pub(crate) receive_batch: usize,
    _alive: Arc<oneshot::Sender<()>>,
}

impl Handle {
    /// How many peers are connected now.
    pub(crate) fn peers(&self) -> usize {
        *self.peers.borrow()
    }

    /// Waits until at least `count` peers are connected (false if the socket stopped).
    pub(crate) async fn wait_for_peers(&self, count: usize) -> bool {
        let mut peers = self.peers.clone();
        let connected = peers.wait_for(|n| *n >= count).await.is_ok();
        connected
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("socket", &self.name)
            .field("peers", &*self.peers.borrow())
            .finish()
    }
}

/// What a socket received: raw frames, or a receive failure.
pub(crate) type Incoming = mpsc::Receiver<Result<ZmqMessage, Error>>;

/// An error of `kind` naming the socket.
pub(crate) fn error(operation: Operation, endpoint: &str, err: ZmqError) -> Error {
    let permanent = matches!(
        err,
        ZmqError::Endpoint(_) | ZmqError::PeerIdentity | ZmqError::UnsupportedVersion(_)
    );
    let base = if permanent {
        Error::permanent(BROKER, operation)
    } else {
        Error::transient(BROKER, operation)
    };
    base.with_destination(endpoint.to_owned()).with_source(err)
}

/// Opens a socket of `kind` per `config`: binds now (failing if a bind fails), dials
/// the connect endpoints in the background, and starts the socket task.
pub(crate) async fn open(kind: Kind, config: &Config) -> Result<(Handle, Option<Incoming>), Error> {
    let mut options = SocketOptions::default();
    options.connect_timeout(config.connect_timeout);
    let mut socket = AnySocket::new(&kind, options);
    let monitor = each!(&mut socket, s => s.monitor()).boxed();
    if let (AnySocket::Sub(sub), Kind::Sub(prefixes)) = (&mut socket, &kind) {
        for prefix in prefixes {
            sub.subscribe(prefix)
                .await
                .map_err(|e| error(Operation::Subscribe, prefix, e))?;
        }
    }
    let mut endpoints = Vec::new();
    for endpoint in &config.binds {
        let bound = each!(&mut socket, s => s.bind(endpoint).await)
            .map_err(|e| error(Operation::Connect, endpoint, e))?;
        endpoints.push(bound.to_string());
    }
    for endpoint in &config.connects {
        endpoint.parse::<zeromq::Endpoint>().map_err(|e| {
            Error::permanent(BROKER, Operation::Connect)
                .with_destination(endpoint.clone())
                .with_reason("invalid endpoint")
                .with_source(e)
        })?;
        endpoints.push(endpoint.clone());
    }
    let name: Arc<str> = format!("{} {}", kind.name(), endpoints.join(",")).into();
    let (commands, command_rx) = mpsc::channel(config.send_queue.max(1));
    let (peers_tx, peers) = watch::channel(0);
    let (alive, alive_rx) = oneshot::channel();
    let (incoming_tx, incoming) = if kind.task_receives() {
        let (tx, rx) = mpsc::channel(config.receive_queue.max(1));
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let now = Instant::now();
    let socket = Arc::new(Mutex::new(socket));
    let alive = Arc::new(alive);
    let direct = Arc::new(Direct {
        socket: socket.clone(),
        slots: SendSlots::new(config.send_queue),
        peers: peers.clone(),
        _alive: alive.clone(),
    });
    let driver = Driver {
        dials: config
            .connects
            .iter()
            .map(|endpoint| Dial {
                endpoint: endpoint.clone(),
                state: DialState::Due(now),
                delays: config.redial.delays(),
            })
            .collect(),
        kind,
        socket,
        monitor,
        commands: command_rx,
        incoming: incoming_tx,
        held: None,
        pending: None,
        peers: HashSet::new(),
        peers_tx,
        name: name.clone(),
    };
    tokio::spawn(driver.run(alive_rx));
    let handle = Handle {
        commands,
        direct,
        peers,
        endpoints: endpoints.into(),
        name,
        framing: config.framing,
        receive_batch: config.receive_queue,
        _alive: alive,
    };
    Ok((handle, incoming))
}

enum DialState {
    /// Dial at this instant.
    Due(Instant),
    /// Connected; the peer is known once the monitor reported it.
    Connected(Option<PeerIdentity>),
}

struct Dial {
    endpoint: String,
    state: DialState,
    /// Jittered, so that sockets that lost one peer together do not redial together.
    delays: Delays,
}

struct Driver {
    kind: Kind,
    socket: Arc<Mutex<AnySocket>>,
    monitor: BoxStream<'static, SocketEvent>,
    commands: mpsc::Receiver<Command>,
    incoming: Option<mpsc::Sender<Result<ZmqMessage, Error>>>,
    /// Received but not yet taken by the consumer (its queue was full).
    held: Option<Result<ZmqMessage, Error>>,
    /// A send that found no peer: retried once one connects.
    pending: Option<Command>,
    dials: Vec<Dial>,
    peers: HashSet<PeerIdentity>,
    peers_tx: watch::Sender<usize>,
    name: Arc<str>,
}

impl Driver {
    async fn run(mut self, mut alive: oneshot::Receiver<()>) {
        let mut handles_gone = false;
        let mut commands_open = true;
        let mut monitoring = true;
        loop {
            if handles_gone && !self.has_peer() {
                // Whoever sent it stopped waiting (no handle is left), and no peer
                // may ever come back for it.
                self.pending = None;
            }
            if handles_gone && self.pending.is_none() && self.commands.is_empty() {
                break;
            }
            if self.pending.is_some() && self.has_peer() {
                if let Some(command) = self.pending.take() {
                    self.send(command).await;
                }
                continue;
            }
            let next_dial = self
                .dials
                .iter()
                .filter_map(|d| match d.state {
                    DialState::Due(at) => Some(at),
                    DialState::Connected(_) => None,
                })
                .min();
            let take_commands = commands_open
                && self.pending.is_none()
                && (!self.kind.sends_need_peer() || self.has_peer());
            let receive = self.incoming.is_some() && self.held.is_none();
            let incoming = self.incoming.clone();
            let step = tokio::select! {
                biased;
                _ = &mut alive, if !handles_gone => Step::HandlesGone,
                event = self.monitor.next(), if monitoring => Step::Event(event),
                _ = tokio::time::sleep_until(next_dial.unwrap_or_else(Instant::now)), if next_dial.is_some() => Step::Dial,
                permit = reserve(incoming), if self.held.is_some() => Step::Permit(permit),
                command = self.commands.recv(), if take_commands => Step::Command(command),
                received = receive_locked(&self.socket), if receive => Step::Received(received),
            };
            match step {
                Step::HandlesGone => handles_gone = true,
                // Publishers that send directly hold no command sender: only `alive`
                // says whether any handle is left.
                Step::Command(None) => commands_open = false,
                Step::Event(Some(event)) => self.on_event(event),
                Step::Event(None) => {
                    tracing::warn!(socket = %self.name, "socket monitor closed; peers are no longer tracked");
                    monitoring = false;
                }
                Step::Dial => self.dial_due().await,
                Step::Permit(Some(permit)) => {
                    if let Some(item) = self.held.take() {
                        permit.send(item);
                    }
                }
                Step::Permit(None) => {
                    self.incoming = None;
                    self.held = None;
                }
                Step::Command(Some(command)) => self.send(command).await,
                Step::Received(received) => self.on_received(received),
            }
            if handles_gone && !take_commands && self.pending.is_none() {
                // Nobody can be waiting for a peer any more: the queued sends fail.
                while let Ok(command) = self.commands.try_recv() {
                    let _ = command.done.send(Err(self.no_peer(&command.destination)));
                }
            }
        }
        // Not every zeromq socket releases its connections when dropped (PULL keeps
        // them open from its writer tasks): shut the backend down so peers see the
        // connection close, as they would if this process ended.
        let socket = {
            let mut socket = self.socket.lock().await;
            each!(&*socket, s => s.backend().shutdown());
            std::mem::replace(
                &mut *socket,
                AnySocket::new(&self.kind, SocketOptions::default()),
            )
        };
        let errors = each!(socket, s => s.close().await);
        tracing::debug!(socket = %self.name, ?errors, "socket closed");
    }

    fn has_peer(&self) -> bool {
        !self.peers.is_empty()
    }

    fn no_peer(&self, destination: &str) -> Error {
        Error::transient(BROKER, Operation::Publish)
            .with_destination(destination.to_owned())
            .with_reason(format!("{} closed before a peer connected", self.name))
    }

    fn publish_peers(&self) {
        self.peers_tx.send_replace(self.peers.len());
    }

    fn on_event(&mut self, event: SocketEvent) {
        match event {
            SocketEvent::Connected(endpoint, peer) => {
                let shown = endpoint.to_string();
                let unknown = |d: &Dial| matches!(d.state, DialState::Connected(None));
                let dial = self
                    .dials
                    .iter()
                    .position(|d| unknown(d) && d.endpoint == shown)
                    .or_else(|| self.dials.iter().position(unknown))
                    .or_else(|| {
                        // zeromq's own reconnect (SUB) reports the peer again.
                        self.dials
                            .iter()
                            .position(|d| d.endpoint == shown && !self.kind.redials())
                    });
                if let Some(dial) = dial {
                    self.dials[dial].state = DialState::Connected(Some(peer.clone()));
                }
                self.peers.insert(peer);
            }
            SocketEvent::Accepted(_, peer) => {
                self.peers.insert(peer);
            }
            SocketEvent::Disconnected(peer) => {
                self.peers.remove(&peer);
                if self.kind.redials() {
                    let now = Instant::now();
                    for dial in &mut self.dials {
                        if matches!(&dial.state, DialState::Connected(Some(p)) if *p == peer) {
                            tracing::debug!(socket = %self.name, endpoint = %dial.endpoint, "peer went away; redialling");
                            dial.delays.reset();
                            dial.state = DialState::Due(now + dial.delays.next_delay());
                        }
                    }
                }
            }
            _ => {}
        }
        self.publish_peers();
    }

    async fn dial_due(&mut self) {
        let now = Instant::now();
        let mut socket = self.socket.lock().await;
        for i in 0..self.dials.len() {
            let DialState::Due(at) = self.dials[i].state else {
                continue;
            };
            if at > now {
                continue;
            }
            let endpoint = self.dials[i].endpoint.clone();
            let result = each!(&mut *socket, s => s.connect(&endpoint).await);
            let dial = &mut self.dials[i];
            match result {
                Ok(()) => {
                    dial.delays.reset();
                    dial.state = DialState::Connected(None);
                }
                Err(err) => {
                    tracing::debug!(socket = %self.name, %endpoint, %err, "dial failed");
                    dial.state = DialState::Due(Instant::now() + dial.delays.next_delay());
                }
            }
        }
    }

    async fn send(&mut self, command: Command) {
        let Command {
            message,
            done,
            destination,
        } = command;
        let sent = self.socket.lock().await.send(message).await;
        match sent {
            Ok(()) => {
                let _ = done.send(Ok(()));
            }
            Err(ZmqError::ReturnToSender { message, .. }) if self.kind.sends_need_peer() => {
                // The peer went away since readiness said there was one: keep the
                // message until a peer is back instead of losing it.
                self.pending = Some(Command {
                    message,
                    done,
                    destination,
                });
            }
            Err(err) => {
                let _ = done.send(Err(error(Operation::Publish, &destination, err)));
            }
        }
    }

    fn on_received(&mut self, received: Result<ZmqMessage, ZmqError>) {
        let item = match received {
            Ok(message) => Ok(message),
            Err(ZmqError::NoMessage) => {
                // zeromq's fair queue ended: nothing more will come.
                self.incoming = None;
                return;
            }
            Err(err) => Err(error(Operation::Receive, &self.name, err)),
        };
        let Some(incoming) = &self.incoming else {
            return;
        };
        match incoming.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => self.held = Some(item),
            Err(mpsc::error::TrySendError::Closed(_)) => self.incoming = None,
        }
    }
}

type IncomingItem = Result<ZmqMessage, Error>;

async fn receive_locked(socket: &Mutex<AnySocket>) -> Result<ZmqMessage, ZmqError> {
    socket.lock().await.recv().await
}

enum Step {
    HandlesGone,
    Event(Option<SocketEvent>),
    Dial,
    Permit(Option<mpsc::OwnedPermit<IncomingItem>>),
    Command(Option<Command>),
    Received(Result<ZmqMessage, ZmqError>),
}

async fn reserve(
    incoming: Option<mpsc::Sender<IncomingItem>>,
) -> Option<mpsc::OwnedPermit<IncomingItem>> {
    match incoming {
        Some(sender) => sender.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn two_endpoints_redial_after_different_delays() {
        let config =
            Config::new().reconnect_backoff(Duration::from_millis(20), Duration::from_secs(2));
        let (mut a, mut b) = (config.redial.delays(), config.redial.delays());
        let a: Vec<_> = (0..8).map(|_| a.next_delay()).collect();
        let b: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        assert_ne!(a, b, "two endpoints redial in lockstep");
        assert!(a.iter().chain(&b).all(|d| *d <= Duration::from_secs(2)));
    }
}
