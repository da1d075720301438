use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_core::future::BoxFuture;
use tokio::time::Instant;
use tower_mq_core::BoxError;

/// Where message ids are claimed and remembered. See the [module docs](super).
///
/// A delivery first *claims* its id: the claim succeeds only if the id was neither
/// handled nor is being handled right now, so two copies delivered at the same moment
/// do not both run. After handling, the id is *completed* (remembered as handled) or,
/// on failure, *released* (so that a redelivery is handled). In Redis, say: `SET id
/// pending NX EX <ttl>` to claim, `SET id done EX <ttl>` to complete, `DEL id` to
/// release.
///
/// Methods return boxed futures so that a store can do I/O and the trait stays
/// object-safe. A store should start its work when the method is called, not only
/// when the future is first polled: a release issued while a handler is being
/// cancelled may never be polled.
pub trait DedupStore: Send + Sync + 'static {
    /// Claims `id` for handling: `true` if it is new, `false` if it was handled or is
    /// being handled (a duplicate).
    fn claim(&self, id: &str) -> BoxFuture<'static, Result<bool, BoxError>>;

    /// Records `id` as handled.
    fn complete(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>>;

    /// Gives up the claim on `id`: handling failed or was cancelled.
    fn release(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>>;
}

impl<T: DedupStore + ?Sized> DedupStore for Arc<T> {
    fn claim(&self, id: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        (**self).claim(id)
    }

    fn complete(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        (**self).complete(id)
    }

    fn release(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        (**self).release(id)
    }
}

/// Ids in memory, at most `capacity` of them (the oldest go first), each forgotten
/// `ttl` after it was claimed or completed (tokio's clock). Clones share the ids.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Mutex<Ids>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    expires: Instant,
    // The sequence number of the entry's latest recording in `order`.
    seq: u64,
    state: State,
}

struct Ids {
    capacity: usize,
    ttl: Duration,
    entries: HashMap<String, Entry>,
    // Recordings in order; one is stale once its id was recorded again.
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl Ids {
    fn purge(&mut self, now: Instant) {
        while let Some((id, seq)) = self.order.front() {
            let Some(entry) = self.entries.get(id).copied() else {
                self.order.pop_front();
                continue;
            };
            if entry.seq != *seq {
                // Recorded again since: the newer recording further back counts.
                self.order.pop_front();
            } else if entry.expires <= now || self.entries.len() > self.capacity {
                self.entries.remove(id);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }

    fn record(&mut self, id: &str, state: State, now: Instant) {
        // A TTL too long to add is as good as forever (about 30 years).
        let expires = now
            .checked_add(self.ttl)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600));
        let seq = self.next;
        self.next += 1;
        self.entries.insert(
            id.to_owned(),
            Entry {
                expires,
                seq,
                state,
            },
        );
        self.order.push_back((id.to_owned(), seq));
        self.purge(now);
    }

    fn live(&self, id: &str, now: Instant) -> Option<State> {
        self.entries
            .get(id)
            .filter(|e| e.expires > now)
            .map(|e| e.state)
    }
}

impl MemoryStore {
    /// Keeps at most `capacity` ids (at least 1), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryStore {
            shared: Arc::new(Mutex::new(Ids {
                capacity: capacity.max(1),
                ttl,
                entries: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
            })),
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, Ids> {
        // The map stays consistent across a panic elsewhere: every update is one insert
        // or remove.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `id` now: `true` if it was neither handled nor being handled.
    pub fn claim_now(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut ids = self.ids();
        ids.purge(now);
        if ids.live(id, now).is_some() {
            return false;
        }
        ids.record(id, State::Pending, now);
        true
    }

    /// Records `id` as handled, now.
    pub fn complete_now(&self, id: &str) {
        let now = Instant::now();
        self.ids().record(id, State::Done, now);
    }

    /// Forgets a pending claim on `id`; a handled id stays handled.
    pub fn release_now(&self, id: &str) {
        let now = Instant::now();
        let mut ids = self.ids();
        if ids.live(id, now) == Some(State::Pending) {
            ids.entries.remove(id);
        }
        ids.purge(now);
    }

    /// Whether `id` was handled (and has not expired).
    pub fn is_handled(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut ids = self.ids();
        ids.purge(now);
        ids.live(id, now) == Some(State::Done)
    }

    /// Whether `id` is claimed by a handling in progress.
    pub fn is_pending(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut ids = self.ids();
        ids.purge(now);
        ids.live(id, now) == Some(State::Pending)
    }

    /// How many ids are held, handled or pending.
    pub fn len(&self) -> usize {
        let mut ids = self.ids();
        ids.purge(Instant::now());
        ids.entries.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.ids();
        f.debug_struct("MemoryStore")
            .field("capacity", &ids.capacity)
            .field("ttl", &ids.ttl)
            .field("len", &ids.entries.len())
            .finish()
    }
}

impl DedupStore for MemoryStore {
    fn claim(&self, id: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        let claimed = self.claim_now(id);
        Box::pin(async move { Ok(claimed) })
    }

    fn complete(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        self.complete_now(id);
        Box::pin(async { Ok(()) })
    }

    fn release(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        self.release_now(id);
        Box::pin(async { Ok(()) })
    }
}
