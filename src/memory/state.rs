//! The broker's state: topics, their consumer groups and the messages each group holds.
//!
//! Everything lives under one mutex. A message published to a topic is stored once
//! (`Arc<Stored>`) and referenced by one entry per consumer group; the broker counts a
//! message as held while any group still references it, which is exact because entries
//! are only ever moved between a group's queues, never cloned outside this module.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;
use tower_mq_core::dead_letter::{self, EXPIRED};
use tower_mq_core::Message;

pub(super) struct Config {
    pub(super) capacity: usize,
    pub(super) max_payload_size: usize,
    pub(super) dead_letter_suffix: String,
}

/// A consumer group of one topic: named (durable, shared by its consumers) or the
/// private group of one pub/sub subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum GroupKey {
    Named(Arc<str>),
    Ephemeral(u64),
}

/// Hashes the broker's keys (topic and group names, and the `u64` ids it hands out)
/// a word at a time with a multiplication, instead of SipHash: every publish, delivery
/// and settlement looks a topic and a group up. Not keyed: the in-process broker's
/// names are its application's own.
#[derive(Default)]
pub(super) struct FastHasher(u64);

const MULTIPLIER: u64 = 0x9E37_79B9_7F4A_7C15;

impl FastHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut buf = [0u8; 8];
            buf.copy_from_slice(word);
            self.add(u64::from_le_bytes(buf));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_u64(&mut self, word: u64) {
        self.add(word);
    }

    fn write_usize(&mut self, word: usize) {
        self.add(word as u64);
    }
}

type Fast = BuildHasherDefault<FastHasher>;

type IdMap<V> = HashMap<u64, V, Fast>;

/// A published message, shared by the groups that hold it. Made before the lock is
/// taken (see [`Stored::new`]).
pub(super) struct Stored {
    message: Message,
    expires_at: Option<Instant>,
}

impl Stored {
    /// `message` ready to be stored, with what storing it would otherwise do under the
    /// broker's lock: the allocation and the clock reading of a time to live.
    pub(super) fn new(message: Message) -> Arc<Self> {
        // A TTL too long for the clock never expires.
        let expires_at = message
            .ttl()
            .and_then(|ttl| Instant::now().checked_add(ttl));
        Arc::new(Stored {
            message,
            expires_at,
        })
    }

    /// Whether its time to live has passed; reads the clock only if it has one.
    fn is_expired(&self, now: &mut LazyNow) -> bool {
        self.expires_at.is_some_and(|at| at <= now.get())
    }
}

/// One group's reference to a stored message: its place in the topic's order, and how
/// often the group delivered it.
struct Entry {
    stored: Arc<Stored>,
    sequence: u64,
    deliveries: u32,
}

impl Entry {
    fn ready_key(&self) -> (Reverse<u8>, u64) {
        (
            Reverse(self.stored.message.priority().unwrap_or(0)),
            self.sequence,
        )
    }
}

/// The clock, read at most once and only when needed: most deliveries involve no
/// time to live and no delayed redelivery.
struct LazyNow(Option<Instant>);

impl LazyNow {
    fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

struct InFlight {
    consumer: u64,
    entry: Entry,
}

#[derive(Default)]
struct Group {
    /// Higher priority first, then publication order.
    ready: BTreeMap<(Reverse<u8>, u64), Entry>,
    /// Nacked with a delay: due time, then publication order.
    delayed: BTreeMap<(Instant, u64), Entry>,
    in_flight: IdMap<InFlight>,
    /// Consumers waiting for a delivery, by consumer id.
    waiters: IdMap<Waker>,
}

impl Group {
    /// Moves the waiting consumers' wakers to `woken`, woken once the lock is released.
    fn wake(&mut self, woken: &mut Vec<Waker>) {
        woken.extend(self.waiters.drain().map(|(_, waker)| waker));
    }

    fn push_ready(&mut self, entry: Entry) {
        self.ready.insert(entry.ready_key(), entry);
    }

    fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let entry = entry.remove();
            self.push_ready(entry);
        }
    }

    fn drain_all(&mut self) -> impl Iterator<Item = Entry> + '_ {
        let ready = std::mem::take(&mut self.ready).into_values();
        let delayed = std::mem::take(&mut self.delayed).into_values();
        let in_flight = self.in_flight.drain().map(|(_, f)| f.entry);
        ready.chain(delayed).chain(in_flight)
    }
}

#[derive(Default)]
struct Topic {
    next_sequence: u64,
    groups: HashMap<GroupKey, Group, Fast>,
    dead_letter: Option<String>,
    /// Whether the name was checked (publishers check a topic's name once).
    validated: bool,
}

/// Counts held and reserved messages against the capacity; wakes publishers when room
/// frees.
#[derive(Default)]
struct Accounting {
    held: usize,
    /// Held messages with a time to live, so full brokers only look for expired ones
    /// when there can be some.
    expiring: usize,
    /// Held plus reserved messages. Publishers reserve without the lock while there is
    /// room ([`Occupancy::try_reserve`]); everything else changes it under the lock, so
    /// a publisher that found the broker full and registered its waker under the lock
    /// is woken by whoever frees room next.
    occupied: Occupancy,
    waiters: Vec<Waker>,
    /// What to do once the lock is released (see `Shared::lock`).
    deferred: Deferred,
}

/// Work the broker's lock is not held across: waking a task can be a system call, and
/// freeing a message is the allocator's work.
#[derive(Default)]
pub(super) struct Deferred {
    woken: Vec<Waker>,
    freed: Vec<Arc<Stored>>,
}

impl Deferred {
    pub(super) const fn new() -> Self {
        Deferred {
            woken: Vec::new(),
            freed: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.woken.is_empty() && self.freed.is_empty()
    }

    /// Wakes and frees what was deferred; keeps the capacity.
    pub(super) fn run(&mut self) {
        self.freed.clear();
        for waker in self.woken.drain(..) {
            waker.wake();
        }
    }
}

/// Held plus reserved messages, shared with the publishers.
#[derive(Default, Clone)]
pub(super) struct Occupancy(Arc<AtomicUsize>);

impl Occupancy {
    /// Reserves room for one message if fewer than `capacity` are held or reserved.
    pub(super) fn try_reserve(&self, capacity: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .is_ok()
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Accounting {
    /// Drops one group's reference to a message, counting the message out when it was
    /// the last one.
    fn release(&mut self, stored: Arc<Stored>) {
        if Arc::strong_count(&stored) == 1 {
            self.held -= 1;
            self.occupied.remove();
            if stored.expires_at.is_some() {
                self.expiring -= 1;
            }
            self.wake();
            // The last reference: freed once the lock is released.
            self.deferred.freed.push(stored);
        }
    }

    fn wake(&mut self) {
        self.deferred.woken.append(&mut self.waiters);
    }
}

/// What a consumer finds when it asks for the next delivery.
// Built and matched at once by the consumer, never stored: boxing would only add an
// allocation per delivery.
#[allow(clippy::large_enum_variant)]
pub(super) enum Next {
    Delivery {
        message: Message,
        deliveries: u32,
        id: u64,
    },
    /// Nothing ready; the consumer's waker is registered, and it should also wake at
    /// `wake_at` when a delayed redelivery falls due.
    Empty { wake_at: Option<Instant> },
    /// The group no longer exists.
    Gone,
}

/// Whether a publisher got room for a message.
pub(super) enum Reserve {
    Reserved,
    /// The broker is full; the publisher's waker is registered, and it should look
    /// again at `wake_at`, when a held message expires.
    Full {
        wake_at: Option<Instant>,
    },
}

/// How a delivery is settled.
pub(super) enum Settle<'a> {
    Ack,
    Nack(Option<Duration>),
    Reject(&'a str),
}

/// Settling a delivery the group no longer holds (its consumer closed).
#[derive(Debug)]
pub(super) struct NotHeld;

#[derive(Default)]
pub(super) struct State {
    topics: HashMap<String, Topic, Fast>,
    accounting: Accounting,
    next_id: u64,
}

impl State {
    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Whether there is work for after the lock is released.
    pub(super) fn has_deferred(&self) -> bool {
        !self.accounting.deferred.is_empty()
    }

    /// The work for after the lock is released, swapped with `spare` (empty).
    pub(super) fn take_deferred(&mut self, spare: &mut Deferred) {
        std::mem::swap(&mut self.accounting.deferred, spare);
    }

    pub(super) fn held(&self) -> usize {
        self.accounting.held
    }

    /// The count publishers reserve room on without the lock.
    pub(super) fn occupancy(&self) -> Occupancy {
        self.accounting.occupied.clone()
    }

    /// Reserves room for one message if the broker holds fewer than `capacity`,
    /// registering `waker` otherwise.
    pub(super) fn try_reserve(&mut self, config: &Config, waker: &Waker) -> Reserve {
        let mut next_expiry = None;
        if self.accounting.occupied.get() >= config.capacity && self.accounting.expiring > 0 {
            // Expired messages still count until a consumer looks at them: purge them
            // before making the publisher wait.
            next_expiry = self.purge_expired(config, Instant::now());
        }
        if self.accounting.occupied.try_reserve(config.capacity) {
            return Reserve::Reserved;
        }
        if !self.accounting.waiters.iter().any(|w| w.will_wake(waker)) {
            self.accounting.waiters.push(waker.clone());
        }
        Reserve::Full {
            wake_at: next_expiry,
        }
    }

    pub(super) fn unreserve(&mut self) {
        self.accounting.occupied.remove();
        self.accounting.wake();
    }

    /// Stores `message`, for which room was reserved, for every group of its topic;
    /// returns its sequence number. `validate` checks the topic's name the first time
    /// it is published to; if it fails, the reservation is given back. The payload was
    /// checked by the caller.
    pub(super) fn publish_reserved<E>(
        &mut self,
        stored: Arc<Stored>,
        validate: impl FnOnce(&str) -> Result<(), E>,
    ) -> Result<u64, E> {
        let name = stored.message.destination();
        // One lookup on the common path: a topic published to before was validated.
        let topic = match self.topics.get_mut(name) {
            Some(topic) if topic.validated => topic,
            _ => {
                if let Err(error) = validate(name) {
                    self.unreserve();
                    return Err(error);
                }
                let topic = self.topics.entry(name.to_owned()).or_default();
                topic.validated = true;
                topic
            }
        };
        // The reservation becomes the held message, if it is held (counted first, so
        // that the count never drops below what is held and reserved).
        let sequence = store(topic, &mut self.accounting, stored);
        self.accounting.occupied.remove();
        if !self.accounting.waiters.is_empty() {
            self.accounting.wake();
        }
        Ok(sequence)
    }

    /// Stores `message` for every group of its topic; returns its sequence number.
    /// The message was validated by the caller.
    pub(super) fn publish(&mut self, stored: Arc<Stored>) -> u64 {
        let destination = stored.message.destination();
        let topic = match self.topics.get_mut(destination) {
            Some(topic) => topic,
            None => self.topics.entry(destination.to_owned()).or_default(),
        };
        store(topic, &mut self.accounting, stored)
    }

    pub(super) fn dead_letter_topic(&self, config: &Config, topic: &str) -> String {
        self.topics
            .get(topic)
            .and_then(|t| t.dead_letter.clone())
            .unwrap_or_else(|| format!("{topic}{}", config.dead_letter_suffix))
    }

    pub(super) fn set_dead_letter_topic(&mut self, topic: &str, dead_letter: &str) {
        // Both names were checked by the caller.
        let entry = self.topics.entry(topic.to_owned()).or_default();
        entry.dead_letter = Some(dead_letter.to_owned());
        entry.validated = true;
    }

    /// Moves a group's entry to the topic's dead-letter topic with `reason`.
    fn dead_letter(&mut self, config: &Config, topic: &str, entry: Entry, reason: &str) {
        let destination = self.dead_letter_topic(config, topic);
        let mut message = entry.stored.message.clone();
        self.accounting.release(entry.stored);
        message.set_destination(destination);
        // A dead letter is kept until someone looks at it, whatever the original TTL.
        message.set_ttl(None);
        let headers = message.headers_mut();
        headers.insert(dead_letter::REASON, reason);
        headers.insert(dead_letter::ORIGINAL_DESTINATION, topic);
        headers.insert(dead_letter::DELIVERIES, entry.deliveries.to_string());
        headers.insert(dead_letter::TIME, dead_letter::now_millis().to_string());
        self.publish(Stored::new(message));
    }

    /// Creates the group if it does not exist.
    pub(super) fn declare_group(&mut self, topic: &str, key: GroupKey) {
        let topic = self.topics.entry(topic.to_owned()).or_default();
        // The name was checked by the caller.
        topic.validated = true;
        topic.groups.entry(key).or_default();
    }

    /// Hands the group's next ready message to `consumer`, dead-lettering expired ones
    /// on the way; registers `waker` when there is none.
    pub(super) fn next_delivery(
        &mut self,
        config: &Config,
        topic: &str,
        key: &GroupKey,
        consumer: u64,
        waker: &Waker,
    ) -> Next {
        let mut now = LazyNow(None);
        let mut expired = Vec::new();
        let next = 'next: {
            let Some(group) = self
                .topics
                .get_mut(topic)
                .and_then(|t| t.groups.get_mut(key))
            else {
                break 'next Next::Gone;
            };
            if !group.delayed.is_empty() {
                group.promote_due(now.get());
            }
            while let Some((_, mut entry)) = group.ready.pop_first() {
                if entry.stored.is_expired(&mut now) {
                    expired.push(entry);
                    continue;
                }
                entry.deliveries += 1;
                self.next_id += 1;
                let id = self.next_id;
                let next = Next::Delivery {
                    message: entry.stored.message.clone(),
                    deliveries: entry.deliveries,
                    id,
                };
                group.in_flight.insert(id, InFlight { consumer, entry });
                break 'next next;
            }
            group.waiters.insert(consumer, waker.clone());
            Next::Empty {
                wake_at: group.delayed.first_key_value().map(|((at, _), _)| *at),
            }
        };
        for entry in expired {
            self.dead_letter(config, topic, entry, EXPIRED);
        }
        next
    }

    /// Settles delivery `id` of the group.
    pub(super) fn settle(
        &mut self,
        config: &Config,
        topic: &str,
        key: &GroupKey,
        id: u64,
        how: Settle<'_>,
    ) -> Result<(), NotHeld> {
        let group = self
            .topics
            .get_mut(topic)
            .and_then(|t| t.groups.get_mut(key))
            .ok_or(NotHeld)?;
        let entry = group.in_flight.remove(&id).ok_or(NotHeld)?.entry;
        match how {
            Settle::Ack => self.accounting.release(entry.stored),
            Settle::Nack(Some(delay)) if !delay.is_zero() => {
                group.delayed.insert((later(delay), entry.sequence), entry);
                // Waiting consumers re-arm their timers for the new due time.
                group.wake(&mut self.accounting.deferred.woken);
            }
            Settle::Nack(_) => {
                group.push_ready(entry);
                group.wake(&mut self.accounting.deferred.woken);
            }
            Settle::Reject(reason) => self.dead_letter(config, topic, entry, reason),
        }
        Ok(())
    }

    /// A consumer went away: its unsettled deliveries go back to its group, or, for a
    /// subscriber's private group, the group goes with it.
    pub(super) fn consumer_closed(&mut self, topic: &str, key: &GroupKey, consumer: u64) {
        let Some(t) = self.topics.get_mut(topic) else {
            return;
        };
        match key {
            GroupKey::Ephemeral(_) => {
                if let Some(mut group) = t.groups.remove(key) {
                    for entry in group.drain_all() {
                        self.accounting.release(entry.stored);
                    }
                }
            }
            GroupKey::Named(_) => {
                let Some(group) = t.groups.get_mut(key) else {
                    return;
                };
                group.waiters.remove(&consumer);
                let ids: Vec<u64> = group
                    .in_flight
                    .iter()
                    .filter(|(_, f)| f.consumer == consumer)
                    .map(|(id, _)| *id)
                    .collect();
                if ids.is_empty() {
                    return;
                }
                for id in ids {
                    if let Some(f) = group.in_flight.remove(&id) {
                        group.push_ready(f.entry);
                    }
                }
                group.wake(&mut self.accounting.deferred.woken);
            }
        }
    }

    /// Dead-letters every ready message whose time to live has passed; returns when
    /// the next ready message expires.
    fn purge_expired(&mut self, config: &Config, now: Instant) -> Option<Instant> {
        let mut expired = Vec::new();
        let mut next_expiry: Option<Instant> = None;
        for (name, topic) in &mut self.topics {
            for group in topic.groups.values_mut() {
                group.promote_due(now);
                let mut keys = Vec::new();
                for (key, entry) in &group.ready {
                    match entry.stored.expires_at {
                        Some(at) if at <= now => keys.push(*key),
                        Some(at) => next_expiry = Some(next_expiry.map_or(at, |n| n.min(at))),
                        None => {}
                    }
                }
                for key in keys {
                    if let Some(entry) = group.ready.remove(&key) {
                        expired.push((name.clone(), entry));
                    }
                }
            }
        }
        for (topic, entry) in expired {
            self.dead_letter(config, &topic, entry, EXPIRED);
        }
        next_expiry
    }
}

/// Stores `stored` in `topic` for every group of it, counted in `accounting`; returns
/// its sequence number in the topic.
fn store(topic: &mut Topic, accounting: &mut Accounting, stored: Arc<Stored>) -> u64 {
    topic.next_sequence += 1;
    let sequence = topic.next_sequence;
    if topic.groups.is_empty() {
        accounting.deferred.freed.push(stored);
        return sequence;
    }
    let expires_at = stored.expires_at;
    for group in topic.groups.values_mut() {
        group.push_ready(Entry {
            stored: stored.clone(),
            sequence,
            deliveries: 0,
        });
        group.wake(&mut accounting.deferred.woken);
    }
    drop(stored);
    accounting.held += 1;
    accounting.occupied.add();
    if expires_at.is_some() {
        accounting.expiring += 1;
    }
    sequence
}

/// `delay` from now, or a century from now if the clock cannot represent that.
fn later(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}
