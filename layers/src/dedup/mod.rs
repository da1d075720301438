//! Idempotent handling: skip deliveries whose message id was already handled.
//!
//! Brokers deliver at least once, so a handler sees some messages twice (a redelivery
//! after a lost ack, a producer retry). [`Dedup`] wraps a handler and claims the
//! delivery's [`message_id`](tower_mq_core::Message::message_id) in a [`DedupStore`]
//! before calling it. If the id was handled before, or is being handled right now, the
//! delivery is a duplicate: it is acked and skipped (the handler is not called, the
//! answer is `Response::default()`) and counted in `messaging_duplicates_total`
//! (label `destination`). A message without an id passes straight through.
//!
//! An id counts as handled only once the handler succeeded: a failed (or cancelled)
//! handling releases its claim, so the redelivery is handled again. That is also why
//! a copy arriving while the first is still being handled can be acked: should the
//! first fail, its own delivery comes back. A store that cannot answer fails the
//! delivery with [`error::StoreError`] (transient) rather than risk a duplicate; a
//! store that cannot record a success is logged and the success stands.
//!
//! [`MemoryStore`] keeps ids in memory, bounded by a capacity (oldest evicted first)
//! and a time to live on tokio's clock. Implement [`DedupStore`] to keep them in
//! Redis or a database so that several consumers share them.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Delivery, Message, Settlement};
//! use tower_mq_layers::dedup::{DedupLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let store = MemoryStore::new(10_000, Duration::from_secs(3600));
//! let handler = service_fn(|_: Delivery| async { Ok::<_, BoxError>(()) });
//! let handler = DedupLayer::new(store).layer(handler);
//!
//! let msg = Message::new("orders", "{}").with_message_id("order-42");
//! handler.clone().oneshot(Delivery::unacknowledged(msg.clone())).await?;
//! let again = Delivery::unacknowledged(msg);
//! handler.oneshot(again.clone()).await?; // skipped
//! assert_eq!(again.settlement(), Some(Settlement::Acked));
//! # Ok(()) }
//! ```

mod layer;
mod store;

pub mod error;
pub mod future;

use std::fmt;
use std::task::{Context, Poll};

use tower_mq_core::{BoxError, Delivery};
use tower_service::Service;

use self::future::ResponseFuture;
pub use self::layer::DedupLayer;
pub use self::store::{DedupStore, MemoryStore};

/// Skips deliveries already handled. See the [module docs](self).
#[derive(Clone)]
pub struct Dedup<S, St> {
    inner: S,
    store: St,
}

impl<S, St> Dedup<S, St> {
    /// Deduplicates deliveries to `inner` by the ids recorded in `store`.
    pub fn new(inner: S, store: St) -> Self {
        Dedup { inner, store }
    }

    /// The handler.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The handler, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the handler.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for Dedup<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dedup")
            .field("inner", &self.inner)
            .field("store", &self.store)
            .finish()
    }
}

impl<S, St> Service<Delivery> for Dedup<S, St>
where
    S: Service<Delivery> + Clone,
    S::Error: Into<BoxError>,
    S::Response: Default,
    St: DedupStore + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        match delivery.message().message_id() {
            None => ResponseFuture::pass_through(self.inner.call(delivery)),
            Some(id) => {
                let id = id.to_owned();
                let claim = self.store.claim(&id);
                // The ready service goes into the future; the clone stays, unready.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::claiming(claim, inner, self.store.clone(), id, delivery)
            }
        }
    }
}

#[cfg(test)]
mod tests;
