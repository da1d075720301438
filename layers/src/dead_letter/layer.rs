use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;
use tower_mq_core::{dead_letter, Message};

use super::{Config, DeadLetter};
use crate::classify::DefaultClassifier;

/// Builds [`DeadLetter`]. See the [module docs](super).
#[derive(Clone)]
pub struct DeadLetterLayer<P, C = DefaultClassifier> {
    publisher: P,
    classifier: C,
    config: Config,
}

impl<P> DeadLetterLayer<P> {
    /// Dead-letters through `publisher`, at the first permanent failure, to
    /// `<destination>.dlq`.
    pub fn new(publisher: P) -> Self {
        DeadLetterLayer {
            publisher,
            classifier: DefaultClassifier::new(),
            config: Config {
                naming: Arc::new(|msg: &Message| dead_letter::destination_for(msg.destination())),
            },
        }
    }
}

impl<P, C> DeadLetterLayer<P, C> {
    /// Names the dead-letter destination of a message.
    pub fn destination<F>(mut self, naming: F) -> Self
    where
        F: Fn(&Message) -> String + Send + Sync + 'static,
    {
        self.config.naming = Arc::new(naming);
        self
    }

    /// Decides what is permanent with `classifier`.
    pub fn classifier<C2>(self, classifier: C2) -> DeadLetterLayer<P, C2> {
        DeadLetterLayer {
            publisher: self.publisher,
            classifier,
            config: self.config,
        }
    }
}

impl<P: fmt::Debug, C: fmt::Debug> fmt::Debug for DeadLetterLayer<P, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetterLayer")
            .field("publisher", &self.publisher)
            .field("classifier", &self.classifier)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for DeadLetterLayer<P, C> {
    type Service = DeadLetter<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadLetter::new(
            inner,
            self.publisher.clone(),
            self.classifier.clone(),
            self.config.clone(),
        )
    }
}
