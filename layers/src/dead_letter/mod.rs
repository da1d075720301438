//! Moving deliveries that cannot be handled to a dead-letter destination.
//!
//! [`DeadLetter`] wraps a handler (`Service<Delivery>`). When the handler fails and
//! the failure is permanent (per the [`Classifier`], [`DefaultClassifier`] unless
//! set), it publishes a copy of the message through a dead-letter publisher (any
//! `Service<Message, Response = Receipt>`, on any broker), then acks the original
//! and answers `Ok` (the handler's `Response::default()`): the delivery is dealt with.
//! The copy goes to `<destination>.dlq` (the shared rule,
//! [`tower_mq_core::dead_letter::destination_for`]) unless
//! [`DeadLetterLayer::destination`] names it otherwise, and carries the original
//! payload, key, headers and properties, plus the shared dead-letter headers
//! ([`headers`], the same names every broker writes): the reason (the error's
//! `Display`), the delivery count, the original destination, the error kind and the
//! time.
//!
//! # Who owns the attempt limit
//!
//! This layer decides within one delivery: a permanent failure is dead-lettered now.
//! It does not count deliveries: a transient failure surfaces unchanged, whatever the
//! delivery count, and the consumer loop that redelivers decides when a message has
//! failed too often (`serve`'s `max_deliveries` in `tower-mq`, the one owner of the
//! attempt limit), rejecting it to the broker's dead-letter destination, named by the
//! same rule and carrying the same headers.
//!
//! Nothing is lost: if the dead-letter publish (or the ack) fails, the original is
//! not acked and the error surfaces as [`error::DeadLetterFailed`], whose `source()`
//! is the publish error (so it classifies as that error does, usually transient,
//! and the delivery comes back). A transient failure below the attempt limit
//! surfaces unchanged for the consumer to redeliver.
//!
//! Each dead-lettered delivery counts in `messaging_dead_letters_total{destination,
//! reason}` (reason: `permanent_error`).
//!
//! # Example
//!
//! ```
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Delivery, Message, Permanent, Receipt, Settlement};
//! use tower_mq_core::{Guarantee, Position};
//! use tower_mq_layers::dead_letter::{headers, DeadLetterLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
//! let dlq = service_fn(move |msg: Message| {
//!     let tx = tx.clone();
//!     async move {
//!         let receipt = Receipt::new("memory", msg.destination(), Guarantee::Stored).with_position(Position::Sequence(1));
//!         tx.send(msg)?;
//!         Ok::<_, BoxError>(receipt)
//!     }
//! });
//! let handler = service_fn(|_: Delivery| async {
//!     Err::<(), BoxError>(Permanent::new("order id missing").into())
//! });
//! let handler = DeadLetterLayer::new(dlq).layer(handler);
//!
//! let delivery = Delivery::unacknowledged(Message::new("orders", "{}"));
//! handler.oneshot(delivery.clone()).await?;
//! assert_eq!(delivery.settlement(), Some(Settlement::Acked));
//! let dead = rx.recv().await.expect("dead-lettered");
//! assert_eq!(dead.destination(), "orders.dlq");
//! assert_eq!(dead.headers().get_str(headers::REASON), Some("order id missing"));
//! # Ok(()) }
//! ```

mod layer;

pub mod error;
pub mod future;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_mq_core::{BoxError, Delivery, Message, Receipt};
use tower_service::Service;

use self::future::ResponseFuture;
pub use self::layer::DeadLetterLayer;
use crate::classify::{Classifier, DefaultClassifier};

/// Header names written on dead-lettered copies: the shared convention.
pub use tower_mq_core::dead_letter as headers;

type Naming = Arc<dyn Fn(&Message) -> String + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) naming: Naming,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config").finish_non_exhaustive()
    }
}

/// Dead-letters deliveries the handler cannot handle. See the [module docs](self).
#[derive(Clone)]
pub struct DeadLetter<S, P, C = DefaultClassifier> {
    inner: S,
    publisher: P,
    classifier: C,
    config: Config,
}

impl<S, P, C> DeadLetter<S, P, C> {
    pub(crate) fn new(inner: S, publisher: P, classifier: C, config: Config) -> Self {
        DeadLetter {
            inner,
            publisher,
            classifier,
            config,
        }
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

    /// The dead-letter publisher.
    pub fn publisher(&self) -> &P {
        &self.publisher
    }
}

impl<S: fmt::Debug, P: fmt::Debug, C: fmt::Debug> fmt::Debug for DeadLetter<S, P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("inner", &self.inner)
            .field("publisher", &self.publisher)
            .field("classifier", &self.classifier)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, P, C> Service<Delivery> for DeadLetter<S, P, C>
where
    S: Service<Delivery>,
    S::Error: Into<BoxError>,
    S::Response: Default + Send + 'static,
    P: Service<Message, Response = Receipt> + Clone + Send + 'static,
    P::Error: Into<BoxError>,
    P::Future: Send,
    C: Classifier<BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, P, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let future = self.inner.call(delivery.clone());
        ResponseFuture::new(
            future,
            delivery,
            self.publisher.clone(),
            self.classifier.clone(),
            self.config.clone(),
        )
    }
}

#[cfg(test)]
mod tests;
