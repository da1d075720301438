//! The future returned by [`CircuitBreaker`](super::CircuitBreaker).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_mq_core::{BoxError, ErrorKind};

use super::error::CircuitOpen;
use super::state::Core;
use super::window::{FAILED, RECORDED, SLOW};
use crate::classify::ClassifyOutcome;
use crate::error::CalledBeforeReady;

/// The layer's name on [`CalledBeforeReady`].
const LAYER: &str = "circuit_breaker";

pin_project! {
    /// The inner response, recorded in the breaker's window when it completes; or the
    /// [`CircuitOpen`] rejection, or [`CalledBeforeReady`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        recorder: Option<Recorder>,
        classifier: C,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F },
        // A rejection or a call without a ready `poll_ready`, boxed as the caller
        // gets it.
        Refused { error: Option<BoxError> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    /// Makes the inner call, its response built in place.
    #[inline]
    pub(super) fn call(recorder: Recorder, classifier: C, call: impl FnOnce() -> F) -> Self {
        ResponseFuture {
            kind: Kind::Called { future: call() },
            recorder: Some(recorder),
            classifier,
        }
    }

    pub(super) fn rejected(error: CircuitOpen, classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                error: Some(error.into()),
            },
            recorder: None,
            classifier,
        }
    }

    /// A call made without a ready `poll_ready`.
    pub(super) fn not_ready(classifier: C) -> Self {
        ResponseFuture {
            kind: Kind::Refused {
                error: Some(CalledBeforeReady::new(LAYER).into()),
            },
            recorder: None,
            classifier,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: ClassifyOutcome<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(future.poll(cx));
                // Recorded where it lies, then dropped in place: moving the recorder out
                // first cost more than recording (copies the CPU could not forward).
                if let Some(recorder) = this.recorder.as_mut() {
                    recorder.finish(this.classifier.classify_outcome(&result));
                }
                *this.recorder = None;
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "circuit breaker response polled after completion".into()))),
        }
    }
}

/// An admitted call's claim on the breaker: records its outcome when it finishes, and
/// gives a half-open trial permit back if it is dropped unfinished.
#[derive(Debug)]
pub(super) struct Recorder {
    pub(super) core: Arc<Core>,
    pub(super) word: u64,
    pub(super) probe: bool,
    pub(super) started: Option<Instant>,
    finished: bool,
}

impl Recorder {
    pub(super) fn new(core: Arc<Core>, word: u64, probe: bool) -> Self {
        Recorder {
            core,
            word,
            probe,
            started: None,
            finished: false,
        }
    }

    /// `failed`: `None` for a success, else the error's classification.
    fn finish(&mut self, failed: Option<ErrorKind>) {
        self.finished = true;
        let slow = match (self.started, self.core.config.slow_duration) {
            (Some(started), Some(limit)) => started.elapsed() >= limit,
            _ => false,
        };
        let slow_bit = if slow { SLOW } else { 0 };
        // Only transient errors count as failures: a permanent error (a message the
        // broker refused) shows a broker that answers, not one that is down.
        let (outcome, label) = match failed {
            Some(ErrorKind::Transient) => (RECORDED | FAILED | slow_bit, 1),
            Some(ErrorKind::Permanent) => (RECORDED | slow_bit, 3),
            None if slow => (RECORDED | SLOW, 2),
            None => (RECORDED, 0),
        };
        self.core.record(self.word, outcome);
        self.core.count_outcome(label);
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            self.core.release_probe(self.word);
        }
    }
}
