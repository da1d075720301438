//! The batch layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tower_mq_core::BoxError;

use super::error::{BatchFailed, Closed};
use super::slot::Slot;

/// What [`Batch`](super::Batch) returns: resolves with this request's own result
/// once its batch was flushed. Dropping it before the flush leaves the request out of
/// the batch.
pub struct ResponseFuture<T> {
    state: State<T>,
}

enum State<T> {
    Waiting {
        slot: Arc<Slot<T>>,
        index: usize,
        failure: Arc<OnceLock<BatchFailed>>,
    },
    Failed(BoxError),
    Done,
}

impl<T> ResponseFuture<T> {
    pub(crate) fn waiting(
        slot: Arc<Slot<T>>,
        index: usize,
        failure: Arc<OnceLock<BatchFailed>>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                slot,
                index,
                failure,
            },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed(error),
        }
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { index, .. } => format!("waiting (position {index})"),
            State::Failed(error) => format!("failed: {error}"),
            State::Done => "done".to_owned(),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let answer = match &self.state {
            State::Waiting {
                slot,
                index,
                failure,
            } => match slot.poll_answer(*index, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(result)) => result,
                // The worker dropped the batch without answering: it stopped or died.
                Poll::Ready(Err(())) => Err(Closed::new(failure).into()),
            },
            State::Failed(_) => match std::mem::replace(&mut self.state, State::Done) {
                State::Failed(error) => return Poll::Ready(Err(error)),
                _ => unreachable!("matched as failed"),
            },
            State::Done => panic!("future polled after completion"),
        };
        self.state = State::Done;
        Poll::Ready(answer)
    }
}

impl<T> Drop for ResponseFuture<T> {
    fn drop(&mut self) {
        if let State::Waiting { slot, index, .. } = &self.state {
            slot.give_up(*index);
        }
    }
}
