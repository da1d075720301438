//! The future returned by [`Reconnect`](super::Reconnect).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tower_mq_core::BoxError;

use super::error::ConnectionLost;
use crate::error::CalledBeforeReady;

/// The layer's name on [`CalledBeforeReady`].
const LAYER: &str = "reconnect";

pin_project! {
    /// The inner response; a connection-level failure marks the connection for
    /// rebuilding and reaches the caller as [`ConnectionLost`]. Or
    /// [`CalledBeforeReady`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, P> {
        #[pin]
        kind: Kind<F>,
        lost: Arc<AtomicU64>,
        connection: u64,
        is_lost: P,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] future: F },
        NotReady { error: Option<CalledBeforeReady> },
    }
}

impl<F, P> ResponseFuture<F, P> {
    pub(super) fn new(future: F, lost: Arc<AtomicU64>, connection: u64, is_lost: P) -> Self {
        ResponseFuture {
            kind: Kind::Called { future },
            lost,
            connection,
            is_lost,
        }
    }

    /// A call made without a ready `poll_ready`: it marks no connection.
    pub(super) fn not_ready(lost: Arc<AtomicU64>, is_lost: P) -> Self {
        ResponseFuture {
            kind: Kind::NotReady {
                error: Some(CalledBeforeReady::new(LAYER)),
            },
            lost,
            connection: 0,
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
        let future = match this.kind.project() {
            KindProj::Called { future } => future,
            KindProj::NotReady { error } => {
                return Poll::Ready(Err(match error.take() {
                    Some(error) => error.into(),
                    None => "reconnect response polled after completion".into(),
                }))
            }
        };
        match ready!(future.poll(cx)) {
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
