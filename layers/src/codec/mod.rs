//! Typed services over messages: publish a `T`, handle a `T`.
//!
//! [`Encode`] turns a `Service<Message>` (a publisher) into a `Service<T>` for any
//! `T: Serialize`: each value is serialized by a [`Codec`] (JSON by default), wrapped in a
//! [`Message`] to the configured destination with its content type set, and published.
//! [`Decode`] turns a handler `Service<(T, Delivery)>` into a `Service<Delivery>` for
//! any `T: DeserializeOwned`: the payload is deserialized before the handler runs and
//! the handler receives the value together with its delivery (for the headers, the
//! delivery count, or to settle it itself).
//!
//! A payload that does not decode will never decode: [`error::DecodeError`] is
//! permanent (see [`crate::classify`]), so it goes to the dead-letter destination at
//! once instead of looping through retries. A value that does not serialize is an
//! [`error::EncodeError`], permanent too; the publisher is not called.
//!
//! # Example
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_mq_core::{BoxError, Delivery, Message, Receipt};
//! use tower_mq_core::{Guarantee, Position};
//! use tower_mq_layers::codec::{DecodeLayer, EncodeLayer};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Order { id: u32 }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let publisher = service_fn(|msg: Message| async move {
//!     assert_eq!(msg.content_type(), Some("application/json"));
//!     assert_eq!(&msg.payload()[..], br#"{"id":7}"#);
//!     Ok::<_, BoxError>(Receipt::new("memory", msg.destination(), Guarantee::Stored).with_position(Position::Sequence(1)))
//! });
//! let orders = EncodeLayer::json("orders").layer(publisher);
//! orders.oneshot(Order { id: 7 }).await?;
//!
//! // Keys and ids come from the value when the layer is told how.
//! let keyed = EncodeLayer::json("orders")
//!     .message(|order: &Order, msg: Message| msg.with_message_id(format!("order-{}", order.id)));
//! # let _ = keyed;
//!
//! let handler = service_fn(|(order, _delivery): (Order, Delivery)| async move {
//!     assert_eq!(order, Order { id: 7 });
//!     Ok::<_, BoxError>(())
//! });
//! let handler = DecodeLayer::<Order>::json().layer(handler);
//! let delivery = Delivery::unacknowledged(Message::new("orders", r#"{"id":7}"#));
//! handler.oneshot(delivery).await?;
//! # Ok(()) }
//! ```

mod layer;

pub mod error;
pub mod future;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tower_mq_core::{BoxError, Delivery, Message};
use tower_service::Service;

use self::error::{DecodeError, EncodeError};
use self::future::{DecodeFuture, EncodeFuture};
pub use self::layer::{DecodeLayer, EncodeLayer};

/// A serialization format: how values become payloads and back.
pub trait Codec: Clone + Send + Sync + 'static {
    /// The content type written on encoded messages, e.g. `application/json`.
    fn content_type(&self) -> &str;

    /// Serializes `value`.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, BoxError>;

    /// Deserializes a payload.
    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, BoxError>;
}

/// JSON through `serde_json`, content type `application/json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn content_type(&self) -> &str {
        "application/json"
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Bytes, BoxError> {
        Ok(serde_json::to_vec(value)?.into())
    }

    fn decode<T: DeserializeOwned>(&self, payload: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(payload)?)
    }
}

/// Completes the message built for a value: sets its key, id, headers, properties.
pub type Shape<T> = Arc<dyn Fn(&T, Message) -> Message + Send + Sync>;

/// Publishes typed values as messages. See the [module docs](self).
pub struct Encode<S, T, C = Json> {
    inner: S,
    destination: Arc<str>,
    codec: C,
    shape: Option<Shape<T>>,
    _value: PhantomData<fn(T)>,
}

impl<S, T, C> Encode<S, T, C> {
    /// Publishes values of `T` to `destination` through `inner`, serialized by `codec`.
    pub fn new(inner: S, destination: impl Into<Arc<str>>, codec: C) -> Self {
        Encode {
            inner,
            destination: destination.into(),
            codec,
            shape: None,
            _value: PhantomData,
        }
    }

    /// Completes each message from its value before it is published: a key for
    /// partitioning, a message id for deduplication, headers.
    pub fn with_message<F>(mut self, shape: F) -> Self
    where
        F: Fn(&T, Message) -> Message + Send + Sync + 'static,
    {
        self.shape = Some(Arc::new(shape));
        self
    }

    pub(crate) fn with_shape(mut self, shape: Option<Shape<T>>) -> Self {
        self.shape = shape;
        self
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, T, C: Clone> Clone for Encode<S, T, C> {
    fn clone(&self) -> Self {
        Encode {
            inner: self.inner.clone(),
            destination: self.destination.clone(),
            codec: self.codec.clone(),
            shape: self.shape.clone(),
            _value: PhantomData,
        }
    }
}

impl<S: fmt::Debug, T, C: fmt::Debug> fmt::Debug for Encode<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encode")
            .field("inner", &self.inner)
            .field("destination", &self.destination)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<S, T, C> Service<T> for Encode<S, T, C>
where
    S: Service<Message>,
    S::Error: Into<BoxError>,
    T: Serialize,
    C: Codec,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = EncodeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, value: T) -> Self::Future {
        match self.codec.encode(&value) {
            Ok(payload) => {
                let mut msg = Message::new(&*self.destination, payload)
                    .with_content_type(self.codec.content_type());
                if let Some(shape) = &self.shape {
                    msg = shape(&value, msg);
                }
                EncodeFuture::called(self.inner.call(msg))
            }
            Err(source) => EncodeFuture::failed(EncodeError::new(
                &self.destination,
                std::any::type_name::<T>(),
                source,
            )),
        }
    }
}

/// Hands handlers typed values decoded from deliveries. See the [module docs](self).
pub struct Decode<S, T, C = Json> {
    inner: S,
    codec: C,
    _value: PhantomData<fn() -> T>,
}

impl<S, T, C> Decode<S, T, C> {
    /// Decodes deliveries with `codec` for the handler `inner`.
    pub fn new(inner: S, codec: C) -> Self {
        Decode {
            inner,
            codec,
            _value: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, T, C: Clone> Clone for Decode<S, T, C> {
    fn clone(&self) -> Self {
        Decode {
            inner: self.inner.clone(),
            codec: self.codec.clone(),
            _value: PhantomData,
        }
    }
}

impl<S: fmt::Debug, T, C: fmt::Debug> fmt::Debug for Decode<S, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decode")
            .field("inner", &self.inner)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<S, T, C> Service<Delivery> for Decode<S, T, C>
where
    S: Service<(T, Delivery)>,
    S::Error: Into<BoxError>,
    T: DeserializeOwned,
    C: Codec,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DecodeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, delivery: Delivery) -> Self::Future {
        let msg = delivery.message();
        match self.codec.decode::<T>(msg.payload()) {
            Ok(value) => DecodeFuture::called(self.inner.call((value, delivery))),
            Err(source) => DecodeFuture::failed(DecodeError::new(
                msg.destination(),
                msg.message_id(),
                std::any::type_name::<T>(),
                source,
            )),
        }
    }
}

#[cfg(test)]
mod tests;
