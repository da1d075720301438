//! Errors shared by the layers.

use std::fmt;

/// A layer's `call` came without a `poll_ready` that returned `Ready(Ok(()))` first.
///
/// tower lets a service panic on such a call; the layers answer this error instead,
/// through the call's response future. Permanent: calling again the same way fails
/// the same way, so it is not retried. It names the layer (`"rate_limit"`,
/// `"circuit_breaker"`, `"batch"`, `"reconnect"`).
///
/// Downcast it from the layer's `BoxError` with `err.is::<CalledBeforeReady>()`.
///
/// ```
/// use tower::{service_fn, Layer, Service};
/// use tower_mq_core::{BoxError, ErrorKind};
/// use tower_mq_layers::classify::{Classifier, DefaultClassifier};
/// use tower_mq_layers::error::CalledBeforeReady;
/// use tower_mq_layers::RateLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut limited = RateLimitLayer::per_second(10)
///     .layer(service_fn(|_: &str| async { Ok::<_, BoxError>(()) }));
/// // No `ready().await` first.
/// let err = limited.call("order").await.unwrap_err();
/// let misuse = err.downcast_ref::<CalledBeforeReady>().unwrap();
/// assert_eq!(misuse.layer(), "rate_limit");
/// assert_eq!(DefaultClassifier::new().classify(&err), ErrorKind::Permanent);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CalledBeforeReady {
    layer: &'static str,
}

impl CalledBeforeReady {
    pub(crate) fn new(layer: &'static str) -> Self {
        CalledBeforeReady { layer }
    }

    /// The layer that was called: `"rate_limit"`, `"circuit_breaker"`, `"batch"` or
    /// `"reconnect"`.
    pub fn layer(&self) -> &'static str {
        self.layer
    }
}

impl fmt::Display for CalledBeforeReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}`: call without a ready poll_ready (a tower Service must be polled ready \
             before each call)",
            self.layer
        )
    }
}

impl std::error::Error for CalledBeforeReady {}

/// Asserts that `err` is the [`CalledBeforeReady`] of `layer`, classified permanent.
#[cfg(test)]
pub(crate) fn assert_called_before_ready(err: &tower_mq_core::BoxError, layer: &str) {
    use crate::classify::{Classifier, DefaultClassifier};

    let misuse = err
        .downcast_ref::<CalledBeforeReady>()
        .unwrap_or_else(|| panic!("expected CalledBeforeReady, got {err}"));
    assert_eq!(misuse.layer(), layer);
    assert_eq!(
        DefaultClassifier::new().classify(err),
        tower_mq_core::ErrorKind::Permanent
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_layer_and_the_contract() {
        assert_eq!(
            CalledBeforeReady::new("rate_limit").to_string(),
            "`rate_limit`: call without a ready poll_ready (a tower Service must be polled \
             ready before each call)"
        );
    }
}
