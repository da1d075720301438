//! The future returned by [`Reconnect`](super::Reconnect).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_mq_core::BoxError;

use super::error::ConnectionLost;

pin_project! {
    /// The inner response; a connection-level failure marks the connection for
    /// rebuilding and reaches the caller as [`ConnectionLost`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, P> {
        #[pin]
        future: F,
        lost: Arc<AtomicU64>,
        connection: u64,
        is_lost: P,
    }
}

impl<F, P> ResponseFuture<F, P> {
    pub(super) fn new(future: F, lost: Arc<AtomicU64>, connection: u64, is_lost: P) -> Self {
        ResponseFuture {
            future,
            lost,
            connection,
            is_lost,
        }
    }
}

impl<F, P, T, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    P: Fn(&(dyn std::error::Error + 'static)) -> bool,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match ready!(this.future.poll(cx)) {
            Ok(response) => Poll::Ready(Ok(response)),
            Err(error) => {
                let error: BoxError = error.into();
                if (this.is_lost)(&*error) {
                    this.lost.fetch_max(*this.connection, Ordering::AcqRel);
                    return Poll::Ready(Err(ConnectionLost::new(error).into()));
                }
                Poll::Ready(Err(error))
            }
        }
    }
}
