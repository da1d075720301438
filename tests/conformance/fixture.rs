//! What a broker provides to the conformance suite, and helpers the cases share.

use std::collections::HashSet;
use std::fmt::Debug;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tower_mq::{Delivery, Error, Message, Receipt};

/// Held for reading by every case, and for writing by the reconnect cases, which stop
/// the broker: no case sees the broker down unless it stopped it.
pub static BROKER_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A publisher of any broker, boxed.
pub type BoxPublisher = BoxCloneService<Message, Receipt, Error>;

/// A consumer of any broker, boxed.
pub type BoxConsumer = BoxStream<'static, Result<Delivery, Error>>;

/// A requester of any broker, boxed: the request in, its reply out.
pub type BoxRequester = BoxCloneService<Message, Message, Error>;

/// The upper bound on waiting for something that should happen. Generous: it is only
/// reached when a case is about to fail.
pub const WAIT: Duration = Duration::from_secs(15);

/// How long a case watches for something that should not happen (a duplicate, a
/// redelivery of an acknowledged message). Absence can only be shown by watching for
/// a while.
pub const QUIET: Duration = Duration::from_millis(500);

/// Whether a broker supports something the suite checks: [`Support::Yes`], or
/// [`Support::No`] with the reason, which the suite's summary prints wherever a case
/// or a part of one does not apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Supported: the cases check it.
    Yes,
    /// Not supported, and why (one sentence about the broker, shown in the summary).
    No(&'static str),
}

impl Support {
    /// Whether it is supported.
    pub const fn is_yes(self) -> bool {
        matches!(self, Support::Yes)
    }
}

/// How large a payload the broker carries in the suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxPayload {
    /// The full 16 MiB of the large payload case.
    Full,
    /// At most this many bytes, and why.
    AtMost(usize, &'static str),
}

/// What a broker supports. A case whose feature is missing is reported as not
/// applicable, with the flag's reason; where the broker has an honest answer instead
/// (it refuses the property at publish time, say), the case checks that answer and the
/// summary says what it checked in place of the case.
///
/// Fixtures start from [`Capabilities::ALL`] and turn flags off with struct update
/// syntax, each with the reason the broker cannot do it:
///
/// ```ignore
/// const CAPABILITIES: Capabilities = Capabilities {
///     priority: Support::No("NATS has no message priorities"),
///     ..Capabilities::ALL
/// };
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Settlement reaches the broker: nack redelivers, unsettled deliveries come back
    /// after their consumer closes. Off for at-most-once transports.
    pub redelivery: Support,
    /// `Delivery::delivery_count` counts deliveries exactly (not just "redelivered").
    pub exact_delivery_count: Support,
    /// A delivery that comes again because its consumer closed without settling it
    /// is counted as a redelivery (the broker remembers it was delivered).
    pub counts_redelivery_after_close: Support,
    /// Rejected deliveries reach [`Fixture::dead_letters`].
    pub dead_letters: Support,
    /// Higher priorities are delivered first. Without it, publishing a message with a
    /// priority must fail with a permanent error.
    pub priority: Support,
    /// A message whose time to live passed is not delivered. Without it, publishing a
    /// message with a TTL must fail with a permanent error.
    pub ttl: Support,
    /// An expired message reaches [`Fixture::dead_letters`] with the reason `expired`.
    pub ttl_dead_letters: Support,
    /// Work-queue groups exist: [`Fixture::group_consumer`] and
    /// [`Fixture::declare_group`] work. Without them the work-queue cases do not apply,
    /// and cases that only need a consumer use [`Fixture::subscriber`].
    pub groups: Support,
    /// A declared group keeps messages while none of its consumers is connected, and a
    /// consumer that closes leaves what it had not settled to the group. Off for
    /// at-most-once groups (core NATS queue groups), which exist only while a member
    /// is subscribed: the cases then check that the group resumes with what is
    /// published after a member (re)joins, and the reconnect case reports what a
    /// broker restart lost instead of failing on it.
    pub durable_groups: Support,
    /// The largest payload the broker is set up to carry in the suite, and why, when
    /// it is under the 16 MiB the large payload case sends otherwise.
    pub max_payload: MaxPayload,
    /// [`Fixture::stop_broker`] / [`Fixture::start_broker`] work (reconnect cases).
    pub restart: Support,
}

impl Capabilities {
    /// Everything supported, 16 MiB payloads.
    pub const ALL: Capabilities = Capabilities {
        redelivery: Support::Yes,
        exact_delivery_count: Support::Yes,
        counts_redelivery_after_close: Support::Yes,
        dead_letters: Support::Yes,
        priority: Support::Yes,
        ttl: Support::Yes,
        ttl_dead_letters: Support::Yes,
        groups: Support::Yes,
        durable_groups: Support::Yes,
        max_payload: MaxPayload::Full,
        restart: Support::Yes,
    };
}

/// What a case checked, for the suite's summary. A case that returns has passed what
/// it reports; a failed check panics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Everything the case claims was checked and holds. `unchecked` lists the parts
    /// of the claim that do not apply to the broker, each with its reason.
    Passed {
        /// `(part, reason)` for each part not checked.
        unchecked: Vec<(&'static str, &'static str)>,
    },
    /// The case's claim does not apply to the broker, for `reason`; `instead` says what
    /// the case checked in its place (the broker's honest answer), if anything.
    NotApplicable {
        /// Why (the capability flag's reason).
        reason: &'static str,
        /// What was checked instead, if anything.
        instead: Option<&'static str>,
    },
}

impl Outcome {
    /// Passed, every part checked.
    pub fn passed() -> Outcome {
        Outcome::Passed {
            unchecked: Vec::new(),
        }
    }

    /// Not applicable, nothing checked instead.
    pub fn not_applicable(reason: &'static str) -> Outcome {
        Outcome::NotApplicable {
            reason,
            instead: None,
        }
    }

    /// Not applicable; `instead` was checked in its place.
    pub fn checked_instead(reason: &'static str, instead: &'static str) -> Outcome {
        Outcome::NotApplicable {
            reason,
            instead: Some(instead),
        }
    }
}

/// Collects the parts of a case that do not apply, so that a case passing with a part
/// left out says so.
#[derive(Debug, Default)]
pub struct Checks {
    unchecked: Vec<(&'static str, &'static str)>,
}

impl Checks {
    /// Whether `part` applies (`support` is [`Support::Yes`]); records it as unchecked
    /// otherwise. Use as `if checks.apply("...", caps.x) { assert!(...) }`.
    pub fn apply(&mut self, part: &'static str, support: Support) -> bool {
        match support {
            Support::Yes => true,
            Support::No(reason) => {
                if !self.unchecked.iter().any(|(p, _)| *p == part) {
                    self.unchecked.push((part, reason));
                }
                false
            }
        }
    }

    /// The case passed, less the parts recorded as unchecked.
    pub fn passed(self) -> Outcome {
        Outcome::Passed {
            unchecked: self.unchecked,
        }
    }
}

/// A consumer of `topic` for a case that needs only one consumer: a member of `group`
/// where the broker has groups, a subscriber where it has none.
pub async fn consumer<F: Fixture>(fx: &F, topic: &str, group: &str) -> BoxConsumer {
    if F::CAPABILITIES.groups.is_yes() {
        fx.group_consumer(topic, group).await
    } else {
        fx.subscriber(topic).await
    }
}

/// A broker under test. One value per test: `connect` runs at the start of every case.
///
/// Topic and group names come from [`Fixture::unique`], so cases never see each other's
/// messages, even on a broker that keeps state across runs.
pub trait Fixture: Sized + Send + Sync + 'static {
    /// The fixture's name in messages (`memory`, `redis-streams`, ...).
    const NAME: &'static str;
    /// The broker name its errors carry ([`Error::broker`]).
    const BROKER: &'static str;
    /// What the broker supports; see [`Capabilities`].
    const CAPABILITIES: Capabilities;

    /// Connects to the broker. Panics, naming the broker, the address and the
    /// environment variable that sets it, when the broker cannot be reached.
    fn connect() -> impl Future<Output = Self> + Send;

    /// A publisher that can publish to `topic` (declaring it if the broker needs that).
    fn publisher(&self, topic: &str) -> impl Future<Output = BoxPublisher> + Send;

    /// A pub/sub subscriber of `topic`: sees every message published to `topic` after
    /// this returns (the subscription is active by then).
    fn subscriber(&self, topic: &str) -> impl Future<Output = BoxConsumer> + Send;

    /// Makes sure group `group` of `topic` exists, so messages published from now on
    /// are kept for it until a consumer of the group takes them.
    fn declare_group(&self, topic: &str, group: &str) -> impl Future<Output = ()> + Send;

    /// A consumer in the work-queue group `group` of `topic` (declared if needed):
    /// the group's consumers share its messages.
    fn group_consumer(&self, topic: &str, group: &str) -> impl Future<Output = BoxConsumer> + Send;

    /// A consumer of what is dead-lettered from `topic`. Called before anything is
    /// dead-lettered; sees every later dead letter of `topic`.
    fn dead_letters(&self, topic: &str) -> impl Future<Output = BoxConsumer> + Send;

    /// A requester sending requests to `topic` and waiting at most `timeout` for each
    /// reply; a request nobody answers fails with a transient error whose operation is
    /// `Request` and whose destination is `topic`.
    ///
    /// The default is the generic [`tower_mq::request::Requester`]: requests through
    /// [`Fixture::publisher`], replies on `reply_to` through [`Fixture::subscriber`].
    /// Brokers with native request/reply (NATS inboxes, RabbitMQ direct reply-to)
    /// override this with their own requester, which may reply elsewhere than
    /// `reply_to`.
    fn requester(
        &self,
        topic: &str,
        reply_to: &str,
        timeout: Duration,
    ) -> impl Future<Output = BoxRequester> + Send {
        async move {
            let publisher = self.publisher(topic).await;
            let replies = self.subscriber(reply_to).await;
            BoxCloneService::new(
                tower_mq::request::Requester::new(publisher, replies, reply_to)
                    .timeout(timeout)
                    .broker_name(Self::BROKER),
            )
        }
    }

    /// The serving side of request/reply on `topic`: a consumer of the requests and the
    /// publisher a [`tower_mq::request::Replier`] answers them through (to each
    /// request's `reply_to`). Returns once requests sent from now on reach the consumer.
    ///
    /// The default is [`Fixture::subscriber`] of `topic` and [`Fixture::publisher`] of
    /// `reply_to`. Brokers whose native request/reply needs a serving socket of its own
    /// (a ZeroMQ ROUTER) override this together with [`Fixture::requester`].
    fn request_server(
        &self,
        topic: &str,
        reply_to: &str,
    ) -> impl Future<Output = (BoxConsumer, BoxPublisher)> + Send {
        async move {
            let requests = self.subscriber(topic).await;
            (requests, self.publisher(reply_to).await)
        }
    }

    /// Why a dead letter was dead-lettered (the reason given to `reject`, or
    /// `expired`): the shared dead-letter header, the same on every broker. Only a
    /// reason the broker writes itself (RabbitMQ's `x-death`) needs an override.
    fn death_reason(&self, dead_letter: &Delivery) -> Option<String> {
        dead_letter
            .message()
            .headers()
            .get_str(tower_mq::dead_letter::REASON)
            .map(str::to_owned)
    }

    /// Destinations the broker refuses to publish to.
    fn invalid_destinations(&self) -> Vec<String> {
        vec![String::new(), "white space".into(), "wild.*.card".into()]
    }

    /// Stops the broker; returns once it no longer accepts connections. Only called
    /// where [`Capabilities::restart`] is supported.
    fn stop_broker(&self) -> impl Future<Output = ()> + Send {
        async {
            panic!(
                "{} cannot stop its broker: Capabilities::restart says so",
                Self::NAME
            )
        }
    }

    /// Starts the broker again; returns once it accepts connections. Only called where
    /// [`Capabilities::restart`] is supported.
    fn start_broker(&self) -> impl Future<Output = ()> + Send {
        async {
            panic!(
                "{} cannot start its broker: Capabilities::restart says so",
                Self::NAME
            )
        }
    }

    /// A name no other case or run uses, for a topic or a group: letters, digits and
    /// `-` only, so every broker accepts it.
    fn unique(&self, case: &str) -> String {
        unique_name(case)
    }
}

/// `tmq-<case>-<time>-<counter>`, with `_` turned into `-`.
pub fn unique_name(case: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "tmq-{}-{:x}-{n}",
        case.replace('_', "-"),
        nanos & 0xffff_ffff_ffff
    )
}

/// Publishes `message`, panicking with the fixture's name if that fails.
pub async fn publish<F: Fixture>(publisher: &mut BoxPublisher, message: Message) -> Receipt {
    let destination = message.destination().to_owned();
    let ready = match tokio::time::timeout(WAIT, publisher.ready()).await {
        Ok(Ok(ready)) => ready,
        Ok(Err(e)) => panic!("{}: publisher for {destination} not ready: {e}", F::NAME),
        Err(_) => panic!(
            "{}: publisher for {destination} not ready within {WAIT:?}",
            F::NAME
        ),
    };
    match tokio::time::timeout(WAIT, ready.call(message)).await {
        Ok(Ok(receipt)) => receipt,
        Ok(Err(e)) => panic!("{}: publishing to {destination} failed: {e}", F::NAME),
        Err(_) => panic!(
            "{}: publishing to {destination} took over {WAIT:?}",
            F::NAME
        ),
    }
}

/// Publishes `message`, returning the broker's error.
pub async fn try_publish(publisher: &mut BoxPublisher, message: Message) -> Result<Receipt, Error> {
    tokio::time::timeout(WAIT, publisher.ready().await?.call(message))
        .await
        .unwrap_or_else(|_| panic!("publishing took over {WAIT:?}"))
}

/// The next delivery, panicking if none arrives within [`WAIT`] or the consumer fails.
pub async fn recv<F: Fixture>(consumer: &mut BoxConsumer, what: &str) -> Delivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(e))) => panic!("{}: receiving {what} failed: {e}", F::NAME),
        Ok(None) => panic!("{}: the consumer ended before {what} arrived", F::NAME),
        Err(_) => panic!("{}: {what} did not arrive within {WAIT:?}", F::NAME),
    }
}

/// Asserts nothing arrives within [`QUIET`].
pub async fn assert_quiet<F: Fixture>(consumer: &mut BoxConsumer, why: &str) {
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, consumer.next()).await {
        let shown = item.map(|d| payload_text(&d));
        panic!("{}: {why}, but received {shown:?}", F::NAME);
    }
}

/// The payload as text, for messages and assertions.
pub fn payload_text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(delivery.message().payload()).into_owned()
}

/// Acknowledges, panicking with the fixture's name on failure.
pub async fn ack<F: Fixture>(delivery: &Delivery) {
    if let Err(e) = delivery.ack().await {
        panic!("{}: ack failed: {e}", F::NAME);
    }
}

/// Asserts there are no duplicates in `items` and returns them as a set.
pub fn no_duplicates<T: std::hash::Hash + Eq + Debug + Clone>(
    items: &[T],
    what: &str,
) -> HashSet<T> {
    let mut set = HashSet::new();
    for item in items {
        assert!(set.insert(item.clone()), "{what}: {item:?} received twice");
    }
    set
}
