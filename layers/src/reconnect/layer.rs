use metrics::Label;
use tower_layer::Layer;

use super::{connection_lost, Reconnect};
use crate::retry::Backoff;

/// Builds [`Reconnect`] services. See the [module docs](super).
#[derive(Debug, Clone)]
pub struct ReconnectLayer<T, P = fn(&(dyn std::error::Error + 'static)) -> bool> {
    target: T,
    backoff: Backoff,
    is_lost: P,
    labels: Vec<Label>,
}

impl<T> ReconnectLayer<T> {
    /// Connects to `target`, waiting `backoff` delays between failed attempts.
    pub fn new(target: T, backoff: Backoff) -> Self {
        ReconnectLayer {
            target,
            backoff,
            is_lost: connection_lost,
            labels: Vec::new(),
        }
    }
}

impl<T, P> ReconnectLayer<T, P> {
    /// Decides which call errors mean the connection is gone (default:
    /// [`connection_lost`]).
    pub fn connection_lost_when<P2>(self, is_lost: P2) -> ReconnectLayer<T, P2>
    where
        P2: Fn(&(dyn std::error::Error + 'static)) -> bool + Clone,
    {
        ReconnectLayer {
            target: self.target,
            backoff: self.backoff,
            is_lost,
            labels: self.labels,
        }
    }

    /// Adds a label to `messaging_reconnects_total`.
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push(Label::new(key, value.into()));
        self
    }
}

impl<M: tower_service::Service<T>, T: Clone, P: Clone> Layer<M> for ReconnectLayer<T, P> {
    type Service = Reconnect<M, T, P>;

    fn layer(&self, make: M) -> Self::Service {
        Reconnect::with_parts(
            make,
            self.target.clone(),
            self.backoff.clone(),
            self.is_lost.clone(),
            self.labels.clone(),
        )
    }
}
