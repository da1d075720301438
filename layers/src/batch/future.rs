//! The batch layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::{Arc, OnceLock};

use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_mq_core::BoxError;

use super::error::{BatchFailed, Closed};

pin_project! {
    /// What [`Batch`](super::Batch) returns: resolves with this request's own result
    /// once its batch was flushed.
    #[derive(Debug)]
    pub struct ResponseFuture<T> {
        #[pin]
        state: State<T>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<T> {
        Waiting {
            #[pin]
            rx: oneshot::Receiver<Result<T, BoxError>>,
            failure: Arc<OnceLock<BatchFailed>>,
        },
        Failed { error: Option<BoxError> },
    }
}

impl<T> ResponseFuture<T> {
    pub(crate) fn waiting(
        rx: oneshot::Receiver<Result<T, BoxError>>,
        failure: Arc<OnceLock<BatchFailed>>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting { rx, failure },
        }
    }

    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Waiting { rx, failure } => match rx.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                // The worker dropped the request without answering: it died.
                Poll::Ready(Err(_)) => Poll::Ready(Err(Closed::new(failure).into())),
            },
            StateProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("future polled after completion"),
            },
        }
    }
}
