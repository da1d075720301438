use tower_layer::Layer;

use super::Dedup;

/// Builds [`Dedup`] over a [`DedupStore`](super::DedupStore). See the
/// [module docs](super).
#[derive(Debug, Clone)]
pub struct DedupLayer<St> {
    store: St,
}

impl<St> DedupLayer<St> {
    /// Deduplicates by the ids kept in `store`; every service built shares it (clone
    /// a shared store, such as [`MemoryStore`](super::MemoryStore), or wrap one in an
    /// `Arc`).
    pub fn new(store: St) -> Self {
        DedupLayer { store }
    }
}

impl<S, St: Clone> Layer<S> for DedupLayer<St> {
    type Service = Dedup<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Dedup::new(inner, self.store.clone())
    }
}
