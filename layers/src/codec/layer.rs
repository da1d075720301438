use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tower_layer::Layer;

use tower_mq_core::Message;

use super::{Codec, Decode, Encode, Json, Shape};

/// Builds [`Encode`]: publish typed values to one destination. See the
/// [module docs](super).
pub struct EncodeLayer<T, C = Json> {
    destination: Arc<str>,
    codec: C,
    shape: Option<Shape<T>>,
    _value: PhantomData<fn(T)>,
}

impl<T> EncodeLayer<T, Json> {
    /// Publishes values as JSON to `destination`.
    pub fn json(destination: impl Into<Arc<str>>) -> Self {
        EncodeLayer::with_codec(destination, Json)
    }
}

impl<T, C: Codec> EncodeLayer<T, C> {
    /// Publishes values serialized by `codec` to `destination`.
    pub fn with_codec(destination: impl Into<Arc<str>>, codec: C) -> Self {
        EncodeLayer {
            destination: destination.into(),
            codec,
            shape: None,
            _value: PhantomData,
        }
    }

    /// Completes each message from its value (key, message id, headers); see
    /// [`Encode::with_message`].
    pub fn message<F>(mut self, shape: F) -> Self
    where
        F: Fn(&T, Message) -> Message + Send + Sync + 'static,
    {
        self.shape = Some(Arc::new(shape));
        self
    }
}

impl<T, C: Clone> Clone for EncodeLayer<T, C> {
    fn clone(&self) -> Self {
        EncodeLayer {
            destination: self.destination.clone(),
            codec: self.codec.clone(),
            shape: self.shape.clone(),
            _value: PhantomData,
        }
    }
}

impl<T, C: fmt::Debug> fmt::Debug for EncodeLayer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodeLayer")
            .field("destination", &self.destination)
            .field("codec", &self.codec)
            .finish()
    }
}

impl<S, T, C: Clone> Layer<S> for EncodeLayer<T, C> {
    type Service = Encode<S, T, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Encode::new(inner, self.destination.clone(), self.codec.clone())
            .with_shape(self.shape.clone())
    }
}

/// Builds [`Decode`]: hand handlers typed values. See the [module docs](super).
pub struct DecodeLayer<T, C = Json> {
    codec: C,
    _value: PhantomData<fn() -> T>,
}

impl<T> DecodeLayer<T, Json> {
    /// Decodes JSON payloads.
    pub fn json() -> Self {
        DecodeLayer::with_codec(Json)
    }
}

impl<T, C: Codec> DecodeLayer<T, C> {
    /// Decodes payloads with `codec`.
    pub fn with_codec(codec: C) -> Self {
        DecodeLayer {
            codec,
            _value: PhantomData,
        }
    }
}

impl<T, C: Clone> Clone for DecodeLayer<T, C> {
    fn clone(&self) -> Self {
        DecodeLayer {
            codec: self.codec.clone(),
            _value: PhantomData,
        }
    }
}

impl<T, C: fmt::Debug> fmt::Debug for DecodeLayer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecodeLayer")
            .field("codec", &self.codec)
            .finish()
    }
}

impl<S, T, C: Clone> Layer<S> for DecodeLayer<T, C> {
    type Service = Decode<S, T, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Decode::new(inner, self.codec.clone())
    }
}
