//! Declarative RabbitMQ topology: exchanges, queues and bindings, declared on connect
//! and again after every reconnect.

use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::error::{amqp_error, short_string};
use crate::error::{Error, Operation};

/// The exchanges, queues and bindings an application needs. Declaring is idempotent,
/// so the whole topology is declared on connect and again after every reconnect
/// (a restarted broker may have lost non-durable entities).
///
/// Exchanges are declared first, then queues, then bindings.
///
/// A [`Connection`](super::Connection) records what the broker accepted (see
/// [`Connection::topology`](super::Connection::topology)). After a reconnect, a part
/// the broker refuses for good (a queue someone re-declared with other arguments, a
/// binding to a deleted exchange) is logged as an error and dropped from the record,
/// and the connection comes up without it; a part that fails for a passing reason
/// (an exclusive queue still locked by the old connection) is logged and tried again
/// at the next reconnect.
///
/// ```
/// use std::time::Duration;
/// use tower_mq::rabbitmq::{Binding, Exchange, Queue, Topology};
///
/// let topology = Topology::new()
///     .exchange(Exchange::topic("events"))
///     .exchange(Exchange::fanout("events.dlx"))
///     .queue(
///         Queue::quorum("orders")
///             .dead_letter_exchange("events.dlx")
///             .message_ttl(Duration::from_secs(60)),
///     )
///     .queue(Queue::classic("orders.dead"))
///     .queue(Queue::classic("urgent").max_priority(10))
///     .binding(Binding::queue("orders", "events", "orders.#"))
///     .binding(Binding::queue("orders.dead", "events.dlx", ""));
/// assert_eq!(topology.queues().len(), 3);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Topology {
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
    bindings: Vec<Binding>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Topology::default()
    }

    /// Adds an exchange.
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchanges.push(exchange);
        self
    }

    /// Adds a queue.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Adds a binding.
    pub fn binding(mut self, binding: Binding) -> Self {
        self.bindings.push(binding);
        self
    }

    /// The exchanges.
    pub fn exchanges(&self) -> &[Exchange] {
        &self.exchanges
    }

    /// The queues.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// The bindings.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// Adds everything in `other` not already present.
    pub(crate) fn merge(&mut self, other: &Topology) {
        for e in &other.exchanges {
            if !self.exchanges.contains(e) {
                self.exchanges.push(e.clone());
            }
        }
        for q in &other.queues {
            if !self.queues.contains(q) {
                self.queues.push(q.clone());
            }
        }
        for b in &other.bindings {
            if !self.bindings.contains(b) {
                self.bindings.push(b.clone());
            }
        }
    }

    /// Declares everything on `channel`, stopping at the first failure; what was
    /// declared before it is added to `declared`.
    pub(crate) async fn declare_into(
        &self,
        channel: &lapin::Channel,
        declared: &mut Topology,
    ) -> Result<(), Error> {
        for part in self.parts() {
            part.declare(channel).await?;
            declared.add(part);
        }
        Ok(())
    }

    /// Declares every part on a channel of `connection`, going on past failures (a
    /// refused declare closes its channel, so the next part gets a fresh one). Fails
    /// only when no channel can be opened: the connection itself is gone.
    pub(crate) async fn redeclare(
        &self,
        connection: &lapin::Connection,
    ) -> Result<Redeclared, lapin::Error> {
        let mut report = Redeclared::default();
        let mut channel = connection.create_channel().await?;
        for part in self.parts() {
            match part.declare(&channel).await {
                Ok(()) => report.declared.add(part),
                Err(error) => {
                    report.failures.push((part, error));
                    channel = connection.create_channel().await?;
                }
            }
        }
        Ok(report)
    }

    /// Every exchange, then every queue, then every binding: the order they must be
    /// declared in.
    pub(crate) fn parts(&self) -> impl Iterator<Item = Part> + '_ {
        let exchanges = self.exchanges.iter().cloned().map(Part::Exchange);
        let queues = self.queues.iter().cloned().map(Part::Queue);
        let bindings = self.bindings.iter().cloned().map(Part::Binding);
        exchanges.chain(queues).chain(bindings)
    }

    /// Adds `part` unless it is already present.
    pub(crate) fn add(&mut self, part: Part) {
        match part {
            Part::Exchange(e) if !self.exchanges.contains(&e) => self.exchanges.push(e),
            Part::Queue(q) if !self.queues.contains(&q) => self.queues.push(q),
            Part::Binding(b) if !self.bindings.contains(&b) => self.bindings.push(b),
            _ => {}
        }
    }

    /// Removes `part`.
    pub(crate) fn remove(&mut self, part: &Part) {
        match part {
            Part::Exchange(e) => self.exchanges.retain(|x| x != e),
            Part::Queue(q) => self.queues.retain(|x| x != q),
            Part::Binding(b) => self.bindings.retain(|x| x != b),
        }
    }

    /// Removes queue `name` and the bindings to it if it was declared exclusive or
    /// auto-deleted: once its consumer is gone the broker deletes it (at once, or with
    /// the connection), so declaring it again after a reconnect would only bring back
    /// a queue nobody reads.
    pub(crate) fn forget_transient_queue(&mut self, name: &str) {
        let transient = |q: &Queue| q.name == name && (q.exclusive || q.auto_delete);
        if !self.queues.iter().any(transient) {
            return;
        }
        self.queues.retain(|q| !transient(q));
        if !self.queues.iter().any(|q| q.name == name) {
            self.bindings
                .retain(|b| b.to_exchange || b.destination != name);
        }
    }
}

/// One exchange, queue or binding of a [`Topology`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    Exchange(Exchange),
    Queue(Queue),
    Binding(Binding),
}

impl Part {
    async fn declare(&self, channel: &lapin::Channel) -> Result<(), Error> {
        match self {
            Part::Exchange(e) => e.declare(channel).await,
            Part::Queue(q) => q.declare(channel).await,
            Part::Binding(b) => b.declare(channel).await,
        }
    }
}

/// What a re-declaration after a reconnect did: the parts declared, and each part
/// that failed with its error.
#[derive(Debug, Default)]
pub(crate) struct Redeclared {
    pub(crate) declared: Topology,
    pub(crate) failures: Vec<(Part, Error)>,
}

/// An exchange's routing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes to queues bound with exactly the message's routing key.
    Direct,
    /// Routes by routing-key pattern (`*` one word, `#` zero or more words).
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by message headers matched against binding arguments (`x-match`).
    Headers,
}

impl ExchangeKind {
    fn to_lapin(self) -> lapin::ExchangeKind {
        match self {
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
            ExchangeKind::Topic => lapin::ExchangeKind::Topic,
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Headers => lapin::ExchangeKind::Headers,
        }
    }
}

/// A value in a queue's, exchange's or binding's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Argument {
    /// A boolean.
    Bool(bool),
    /// A signed integer (sent as a 64-bit AMQP long-long).
    Int(i64),
    /// A string.
    String(String),
}

impl From<bool> for Argument {
    fn from(v: bool) -> Self {
        Argument::Bool(v)
    }
}

impl From<i64> for Argument {
    fn from(v: i64) -> Self {
        Argument::Int(v)
    }
}

impl From<i32> for Argument {
    fn from(v: i32) -> Self {
        Argument::Int(v.into())
    }
}

impl From<u32> for Argument {
    fn from(v: u32) -> Self {
        Argument::Int(v.into())
    }
}

impl From<&str> for Argument {
    fn from(v: &str) -> Self {
        Argument::String(v.to_owned())
    }
}

impl From<String> for Argument {
    fn from(v: String) -> Self {
        Argument::String(v)
    }
}

impl Argument {
    fn to_amqp(&self) -> AMQPValue {
        match self {
            Argument::Bool(v) => AMQPValue::Boolean(*v),
            Argument::Int(v) => AMQPValue::LongLongInt(*v),
            Argument::String(v) => AMQPValue::LongString(LongString::from(v.as_str())),
        }
    }
}

type Arguments = Vec<(String, Argument)>;

fn field_table(
    arguments: &Arguments,
    operation: Operation,
    name: &str,
) -> Result<FieldTable, Error> {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        table.insert(short_string(key, operation, name)?, value.to_amqp());
    }
    Ok(table)
}

fn set(arguments: &mut Arguments, key: &str, value: Argument) {
    arguments.retain(|(k, _)| k != key);
    arguments.push((key.to_owned(), value));
}

/// An exchange to declare. Durable and not auto-deleted unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    name: String,
    kind: ExchangeKind,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: Arguments,
}

impl Exchange {
    /// An exchange named `name` of `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Self {
        Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Vec::new(),
        }
    }

    /// A direct exchange.
    pub fn direct(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Direct)
    }

    /// A topic exchange.
    pub fn topic(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Topic)
    }

    /// A fanout exchange.
    pub fn fanout(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Fanout)
    }

    /// A headers exchange.
    pub fn headers(name: impl Into<String>) -> Self {
        Exchange::new(name, ExchangeKind::Headers)
    }

    /// Whether the exchange survives a broker restart (default `true`).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether the exchange is deleted once its last binding is removed.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Whether clients may not publish to it directly (only other exchanges).
    pub fn internal(mut self, internal: bool) -> Self {
        self.internal = internal;
        self
    }

    /// Sets an argument, e.g. `alternate-exchange`.
    pub fn argument(mut self, key: &str, value: impl Into<Argument>) -> Self {
        set(&mut self.arguments, key, value.into());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind.
    pub fn kind(&self) -> ExchangeKind {
        self.kind
    }

    async fn declare(&self, channel: &lapin::Channel) -> Result<(), Error> {
        let name = short_string(&self.name, Operation::Declare, &self.name)?;
        let arguments = field_table(&self.arguments, Operation::Declare, &self.name)?;
        let options = ExchangeDeclareOptions {
            passive: false,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: self.internal,
            nowait: false,
        };
        channel
            .exchange_declare(name, self.kind.to_lapin(), options, arguments)
            .await
            .map_err(|e| amqp_error(Operation::Declare, &self.name, e))
    }
}

/// A queue's implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// A classic queue (supports priorities, exclusive and non-durable queues).
    Classic,
    /// A replicated quorum queue: always durable, counts deliveries
    /// (`x-delivery-count`), supports delivery limits.
    Quorum,
}

/// A queue to declare. Durable, not exclusive, not auto-deleted unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    name: String,
    queue_type: QueueType,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: Arguments,
}

impl Queue {
    /// A classic queue named `name`.
    pub fn classic(name: impl Into<String>) -> Self {
        Queue {
            name: name.into(),
            queue_type: QueueType::Classic,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: Vec::new(),
        }
    }

    /// A quorum queue named `name` (`x-queue-type: quorum`).
    pub fn quorum(name: impl Into<String>) -> Self {
        let mut queue = Queue::classic(name);
        queue.queue_type = QueueType::Quorum;
        set(&mut queue.arguments, "x-queue-type", "quorum".into());
        queue
    }

    /// Whether the queue survives a broker restart (default `true`; quorum queues are
    /// always durable).
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Whether only the declaring connection may use the queue (classic queues only).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Whether the queue is deleted once its last consumer leaves.
    pub fn auto_delete(mut self, auto_delete: bool) -> Self {
        self.auto_delete = auto_delete;
        self
    }

    /// Enables message priorities 0..=`max` (`x-max-priority`, classic queues).
    pub fn max_priority(mut self, max: u8) -> Self {
        set(&mut self.arguments, "x-max-priority", i64::from(max).into());
        self
    }

    /// Expires messages that waited longer than `ttl` (`x-message-ttl`); expired
    /// messages are dead-lettered when a dead-letter exchange is set.
    pub fn message_ttl(mut self, ttl: Duration) -> Self {
        let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        set(&mut self.arguments, "x-message-ttl", ms.into());
        self
    }

    /// Deletes the queue after it was unused for `after` (`x-expires`).
    pub fn expires(mut self, after: Duration) -> Self {
        let ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX).max(1);
        set(&mut self.arguments, "x-expires", ms.into());
        self
    }

    /// Caps the queue's length in messages (`x-max-length`).
    pub fn max_length(mut self, messages: u32) -> Self {
        set(&mut self.arguments, "x-max-length", messages.into());
        self
    }

    /// Sends rejected and expired messages to `exchange` (`x-dead-letter-exchange`).
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        set(
            &mut self.arguments,
            "x-dead-letter-exchange",
            Argument::String(exchange.into()),
        );
        self
    }

    /// Dead-letters with this routing key instead of the message's own
    /// (`x-dead-letter-routing-key`).
    pub fn dead_letter_routing_key(mut self, key: impl Into<String>) -> Self {
        set(
            &mut self.arguments,
            "x-dead-letter-routing-key",
            Argument::String(key.into()),
        );
        self
    }

    /// Dead-letters straight to the queue `queue` through the default exchange: the
    /// shared naming rule is `Queue::classic(dead_letter::destination_for(name))`
    /// next to it (`<queue>.dlq`, as on every other broker). Sets
    /// `x-dead-letter-exchange` to `""` and `x-dead-letter-routing-key` to `queue`;
    /// declare that queue too.
    ///
    /// ```
    /// use tower_mq::dead_letter;
    /// use tower_mq::rabbitmq::{Argument, Queue, Topology};
    ///
    /// let topology = Topology::new()
    ///     .queue(Queue::quorum("orders").dead_letter(dead_letter::destination_for("orders")))
    ///     .queue(Queue::classic(dead_letter::destination_for("orders")));
    /// let orders = &topology.queues()[0];
    /// assert_eq!(
    ///     orders.get_argument("x-dead-letter-routing-key"),
    ///     Some(&Argument::String("orders.dlq".into()))
    /// );
    /// ```
    pub fn dead_letter(self, queue: impl Into<String>) -> Self {
        self.dead_letter_exchange("").dead_letter_routing_key(queue)
    }

    /// Quorum queues: dead-letters (or drops) a message after `limit` deliveries
    /// (`x-delivery-limit`).
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        set(&mut self.arguments, "x-delivery-limit", limit.into());
        self
    }

    /// Sets any other argument.
    pub fn argument(mut self, key: &str, value: impl Into<Argument>) -> Self {
        set(&mut self.arguments, key, value.into());
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue type.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// The argument under `key`, if set.
    pub fn get_argument(&self, key: &str) -> Option<&Argument> {
        self.arguments
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    pub(crate) async fn declare(&self, channel: &lapin::Channel) -> Result<(), Error> {
        let name = short_string(&self.name, Operation::Declare, &self.name)?;
        let arguments = field_table(&self.arguments, Operation::Declare, &self.name)?;
        let options = QueueDeclareOptions {
            passive: false,
            durable: self.durable || self.queue_type == QueueType::Quorum,
            exclusive: self.exclusive,
            auto_delete: self.auto_delete,
            nowait: false,
        };
        channel
            .queue_declare(name, options, arguments)
            .await
            .map(drop)
            .map_err(|e| amqp_error(Operation::Declare, &self.name, e))
    }
}

/// A binding from an exchange to a queue or to another exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    destination: String,
    to_exchange: bool,
    source: String,
    routing_key: String,
    arguments: Arguments,
}

impl Binding {
    /// Routes messages from `exchange` matching `routing_key` to `queue`.
    pub fn queue(
        queue: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        Binding {
            destination: queue.into(),
            to_exchange: false,
            source: exchange.into(),
            routing_key: routing_key.into(),
            arguments: Vec::new(),
        }
    }

    /// Routes messages from exchange `source` matching `routing_key` to exchange
    /// `destination`.
    pub fn exchange(
        destination: impl Into<String>,
        source: impl Into<String>,
        routing_key: impl Into<String>,
    ) -> Self {
        Binding {
            to_exchange: true,
            ..Binding::queue(destination, source, routing_key)
        }
    }

    /// Sets a binding argument (headers exchanges: `x-match` and the headers to match).
    pub fn argument(mut self, key: &str, value: impl Into<Argument>) -> Self {
        set(&mut self.arguments, key, value.into());
        self
    }

    async fn declare(&self, channel: &lapin::Channel) -> Result<(), Error> {
        let what = format!("{} -> {}", self.source, self.destination);
        let destination = short_string(&self.destination, Operation::Declare, &what)?;
        let source = short_string(&self.source, Operation::Declare, &what)?;
        let key: ShortString = short_string(&self.routing_key, Operation::Declare, &what)?;
        let arguments = field_table(&self.arguments, Operation::Declare, &what)?;
        let result = if self.to_exchange {
            channel
                .exchange_bind(
                    destination,
                    source,
                    key,
                    ExchangeBindOptions::default(),
                    arguments,
                )
                .await
        } else {
            channel
                .queue_bind(
                    destination,
                    source,
                    key,
                    QueueBindOptions::default(),
                    arguments,
                )
                .await
        };
        result.map_err(|e| amqp_error(Operation::Declare, &what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_queue_leaves_the_record_with_its_bindings_a_durable_one_stays() {
        let mut topology = Topology::new()
            .exchange(Exchange::topic("events"))
            .queue(Queue::classic("durable"))
            .queue(Queue::classic("mine").exclusive(true))
            .queue(Queue::classic("gone").auto_delete(true))
            .binding(Binding::queue("durable", "events", "#"))
            .binding(Binding::queue("mine", "events", "#"))
            .binding(Binding::queue("gone", "events", "#"))
            .binding(Binding::exchange("mine", "events", "#"));
        topology.forget_transient_queue("durable");
        assert_eq!(topology.queues().len(), 3);
        topology.forget_transient_queue("mine");
        topology.forget_transient_queue("gone");
        assert_eq!(topology.queues(), &[Queue::classic("durable")]);
        // Bindings to the queues go with them; an exchange of the same name keeps its.
        assert_eq!(
            topology.bindings(),
            &[
                Binding::queue("durable", "events", "#"),
                Binding::exchange("mine", "events", "#"),
            ]
        );
    }

    #[test]
    fn parts_come_in_declaration_order_and_add_remove_round_trip() {
        let topology = Topology::new()
            .binding(Binding::queue("q", "x", ""))
            .queue(Queue::classic("q"))
            .exchange(Exchange::direct("x"));
        let parts: Vec<Part> = topology.parts().collect();
        assert!(matches!(
            parts.as_slice(),
            [Part::Exchange(_), Part::Queue(_), Part::Binding(_)]
        ));
        let mut copy = Topology::new();
        for part in parts.iter().cloned().chain(parts.iter().cloned()) {
            copy.add(part);
        }
        assert_eq!(copy, topology);
        for part in &parts {
            copy.remove(part);
        }
        assert_eq!(copy, Topology::new());
    }
}
