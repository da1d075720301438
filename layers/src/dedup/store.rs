use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_core::future::BoxFuture;
use tokio::time::Instant;
use tower_mq_core::BoxError;

/// Where handled message ids are kept. See the [module docs](super).
///
/// Methods return boxed futures so that a store can do I/O (Redis `EXISTS` and
/// `SET … EX`, say) and the trait stays object-safe.
pub trait DedupStore: Send + Sync + 'static {
    /// Whether `id` was recorded as handled (and has not expired).
    fn contains(&self, id: &str) -> BoxFuture<'static, Result<bool, BoxError>>;

    /// Records `id` as handled.
    fn insert(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>>;
}

impl<T: DedupStore + ?Sized> DedupStore for Arc<T> {
    fn contains(&self, id: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        (**self).contains(id)
    }

    fn insert(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        (**self).insert(id)
    }
}

/// Ids in memory, at most `capacity` of them (the oldest go first), each forgotten
/// `ttl` after it was recorded (tokio's clock). Clones share the ids.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Mutex<Ids>>,
}

struct Ids {
    capacity: usize,
    ttl: Duration,
    // id -> (expiry, the sequence number of its latest recording)
    expiry: HashMap<String, (Instant, u64)>,
    // Recordings in order; an entry is stale once its id was recorded again.
    order: VecDeque<(String, u64)>,
    next: u64,
}

impl Ids {
    fn purge(&mut self, now: Instant) {
        while let Some((id, seq)) = self.order.front() {
            let Some((expires, latest)) = self.expiry.get(id).copied() else {
                self.order.pop_front();
                continue;
            };
            if latest != *seq {
                // Recorded again since: the newer entry further back counts.
                self.order.pop_front();
            } else if expires <= now || self.expiry.len() > self.capacity {
                self.expiry.remove(id);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }
}

impl MemoryStore {
    /// Keeps at most `capacity` ids (at least 1), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        MemoryStore {
            shared: Arc::new(Mutex::new(Ids {
                capacity: capacity.max(1),
                ttl,
                expiry: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
            })),
        }
    }

    /// Whether `id` is held and unexpired, now.
    pub fn contains_now(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut ids = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        ids.purge(now);
        ids.expiry
            .get(id)
            .is_some_and(|(expires, _)| *expires > now)
    }

    /// Records `id`, now.
    pub fn insert_now(&self, id: &str) {
        let now = Instant::now();
        let mut ids = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        // A TTL too long to add is as good as forever (about 30 years).
        let expires = now
            .checked_add(ids.ttl)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600));
        let seq = ids.next;
        ids.next += 1;
        ids.expiry.insert(id.to_owned(), (expires, seq));
        ids.order.push_back((id.to_owned(), seq));
        ids.purge(now);
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        let mut ids = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        ids.purge(Instant::now());
        ids.expiry.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemoryStore")
            .field("capacity", &ids.capacity)
            .field("ttl", &ids.ttl)
            .field("len", &ids.expiry.len())
            .finish()
    }
}

impl DedupStore for MemoryStore {
    fn contains(&self, id: &str) -> BoxFuture<'static, Result<bool, BoxError>> {
        let seen = self.contains_now(id);
        Box::pin(async move { Ok(seen) })
    }

    fn insert(&self, id: &str) -> BoxFuture<'static, Result<(), BoxError>> {
        self.insert_now(id);
        Box::pin(async { Ok(()) })
    }
}
