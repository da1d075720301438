//! Values kept per destination, for the per-message paths that need something of
//! their own for each destination a message goes to.
//!
//! The metrics layer keeps the handles it registered for a destination, `serve` the
//! settlement counters of a destination: registering those anew for every message
//! (building a metric's key, hashing it into the recorder's registry) costs more than
//! the rest of the message's way. A [`DestinationCache`] makes a destination's value on
//! its first message and hands the same one to every later message, with nothing
//! allocated. The first destination cached is read without a lock or a hash (the
//! common case of a publisher or a consumer with one destination, also when a service
//! is cloned for every call, as tower's `oneshot` and axum do), and
//! [`DestinationCache::get_after`] skips the lookup while messages keep going to the
//! destination of the one before.
//!
//! The cache is bounded ([`DestinationCache::DEFAULT_CAPACITY`] unless set): past its
//! capacity, a new destination's value is made for that message alone, so that
//! unbounded destinations (per-request reply queues, per-tenant topics) cannot grow
//! it without bound.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use tower_mq_core::cache::{DestinationCache, Entry};
//!
//! let sent = DestinationCache::<AtomicU64>::default();
//! let mut last: Option<Entry<AtomicU64>> = None;
//! for destination in ["orders", "orders", "invoices"] {
//!     let count = sent.get_after(&mut last, destination, AtomicU64::default);
//!     count.fetch_add(1, Ordering::Relaxed);
//! }
//! assert_eq!(sent.get("orders", AtomicU64::default).load(Ordering::Relaxed), 2);
//! ```

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock, RwLock};

/// One value per destination, made on the destination's first use. See the
/// [module docs](self).
///
/// Shared by reference (or in an `Arc`): the first destination cached is read with
/// one atomic load, other lookups take a read lock, and only a destination's first use
/// takes the write lock.
pub struct DestinationCache<V> {
    /// The entry of the first destination cached, also in `by_destination`.
    first: OnceLock<Entry<V>>,
    by_destination: RwLock<HashMap<Arc<str>, Arc<V>>>,
    capacity: usize,
}

/// A destination's value, as a [`DestinationCache`] hands it out: cheap to clone (two
/// reference counts), and it remembers its destination, so that the next message can
/// check whether it goes to the same one.
#[derive(Debug)]
pub struct Entry<V> {
    destination: Arc<str>,
    value: Arc<V>,
}

impl<V> DestinationCache<V> {
    /// Destinations cached unless told otherwise.
    pub const DEFAULT_CAPACITY: usize = 1024;

    /// An empty cache of values for up to `capacity` destinations.
    pub fn new(capacity: usize) -> Self {
        DestinationCache {
            first: OnceLock::new(),
            by_destination: RwLock::new(HashMap::new()),
            capacity,
        }
    }

    /// How many destinations the cache keeps values for at the most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The entry of `destination`, its value made by `make` on its first use. Past the
    /// capacity, a new destination's value is made anew on every call and not kept.
    pub fn get(&self, destination: &str, make: impl FnOnce() -> V) -> Entry<V> {
        if let Some(first) = self.first_for(destination) {
            return first.clone();
        }
        // A poisoned lock only means a panic elsewhere while it was held (in a `make`,
        // say); the map is still whole (every insert is a single operation), so use it.
        let found = self
            .by_destination
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_key_value(destination)
            .map(Entry::of);
        if let Some(entry) = found {
            return entry;
        }
        let mut map = self
            .by_destination
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = map.get_key_value(destination) {
            return Entry::of(found);
        }
        let entry = Entry {
            destination: destination.into(),
            value: Arc::new(make()),
        };
        if map.len() < self.capacity {
            map.insert(entry.destination.clone(), entry.value.clone());
            if self.first.get().is_none() {
                // Under the write lock: only the first destination inserted gets here.
                let _ = self.first.set(entry.clone());
            }
        }
        entry
    }

    /// The first destination's entry, if `destination` is it.
    #[inline]
    fn first_for(&self, destination: &str) -> Option<&Entry<V>> {
        self.first.get().filter(|first| first.is_for(destination))
    }

    /// The entry of `destination`, starting from `last`, the entry the caller used
    /// before: the same one, without a lookup, while the destination stays the same;
    /// the cache's first destination, without a lock or a hash; otherwise as
    /// [`get`](Self::get), and `last` becomes the new entry.
    ///
    /// An entry beyond the capacity lives on in `last`, so that messages in a row to
    /// an uncached destination still share one value.
    pub fn get_after<'a>(
        &'a self,
        last: &'a mut Option<Entry<V>>,
        destination: &str,
        make: impl FnOnce() -> V,
    ) -> &'a Entry<V> {
        if last.as_ref().is_some_and(|entry| entry.is_for(destination)) {
            return last.as_ref().expect("checked above");
        }
        if let Some(first) = self.first_for(destination) {
            return first;
        }
        last.insert(self.get(destination, make))
    }
}

impl<V> Default for DestinationCache<V> {
    /// An empty cache of [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) destinations.
    fn default() -> Self {
        DestinationCache::new(Self::DEFAULT_CAPACITY)
    }
}

impl<V> fmt::Debug for DestinationCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self
            .by_destination
            .read()
            .map_or_else(|poisoned| poisoned.into_inner().len(), |map| map.len());
        f.debug_struct("DestinationCache")
            .field("cached", &cached)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<V> Entry<V> {
    fn of((destination, value): (&Arc<str>, &Arc<V>)) -> Self {
        Entry {
            destination: destination.clone(),
            value: value.clone(),
        }
    }

    /// The destination this is the entry of.
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// Whether this is the entry of `destination`.
    #[inline]
    pub fn is_for(&self, destination: &str) -> bool {
        *self.destination == *destination
    }

    /// The value, shared with the cache (and every other entry of the destination).
    pub fn value(&self) -> &Arc<V> {
        &self.value
    }
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Entry {
            destination: self.destination.clone(),
            value: self.value.clone(),
        }
    }
}

impl<V> Deref for Entry<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_destination_is_made_once_and_shared() {
        let made = AtomicUsize::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        let cache = DestinationCache::default();
        let first = cache.get("orders", make);
        let again = cache.get("orders", make);
        assert!(Arc::ptr_eq(first.value(), again.value()));
        assert_eq!(first.destination(), "orders");
        cache.get("invoices", make);
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn past_the_capacity_values_are_made_per_call_and_not_kept() {
        let made = AtomicUsize::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        let cache = DestinationCache::new(1);
        cache.get("a", make);
        let b = cache.get("b", make);
        let b_again = cache.get("b", make);
        assert!(!Arc::ptr_eq(b.value(), b_again.value()));
        cache.get("a", make);
        assert_eq!(made.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_last_entry_is_reused_while_the_destination_stays_the_same() {
        let made = AtomicUsize::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        let cache = DestinationCache::new(0);
        let mut last = None;
        let a = cache.get_after(&mut last, "a", make).clone();
        assert!(Arc::ptr_eq(
            a.value(),
            cache.get_after(&mut last, "a", make).value()
        ));
        assert_eq!(
            made.load(Ordering::Relaxed),
            1,
            "uncached, yet reused in a row"
        );
        assert_eq!(cache.get_after(&mut last, "b", make).destination(), "b");
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_first_destination_is_found_without_a_last_entry_and_leaves_it_alone() {
        let made = AtomicUsize::new(0);
        let make = || made.fetch_add(1, Ordering::Relaxed);
        let cache = DestinationCache::default();
        let orders = cache.get("orders", make);
        cache.get("invoices", make);
        // A service cloned per call starts without a last entry every time.
        let mut last = None;
        assert!(Arc::ptr_eq(
            orders.value(),
            cache.get_after(&mut last, "orders", make).value()
        ));
        assert!(last.is_none(), "the first destination needs no last entry");
        assert_eq!(
            cache.get_after(&mut last, "invoices", make).destination(),
            "invoices"
        );
        assert_eq!(last.as_ref().map(Entry::destination), Some("invoices"));
        assert_eq!(made.load(Ordering::Relaxed), 2);
    }
}
