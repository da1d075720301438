//! The future returned by [`Timeout`](super::Timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_mq_core::BoxError;

use super::error::{Elapsed, NotReady};

pin_project! {
    /// The inner response, or [`Elapsed`] if the timer fires first, or [`NotReady`]
    /// if the service was not ready in time and the call was not made.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        response: Response<F>,
        // The deadline is read at the call; the timer is made (and registered) only if
        // the response is not ready at the first poll, so a response that is ready at
        // once costs one clock read (none when a layer outside read it for this call).
        deadline: Instant,
        // Boxed: it exists only for responses not ready at once, and keeps the future
        // small (cheap to move) for those that are.
        sleep: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
    }
}

pin_project! {
    /// The inner call's response, or the call that was not made.
    #[project = ResponseProj]
    #[derive(Debug)]
    enum Response<F> {
        Called { #[pin] response: F },
        NotReady { timeout: Duration },
    }
}

impl<F> ResponseFuture<F> {
    /// Makes the inner call (built in place: the response can be large) and sets the
    /// deadline.
    #[inline]
    pub(crate) fn call(timeout: Duration, call: impl FnOnce() -> F) -> Self {
        ResponseFuture {
            deadline: crate::call_time::now() + timeout,
            sleep: None,
            timeout,
            response: Response::Called { response: call() },
        }
    }

    /// The call that was not made because the service was not ready within
    /// `ready_timeout`.
    pub(crate) fn not_ready(timeout: Duration, ready_timeout: Duration) -> Self {
        ResponseFuture {
            deadline: crate::call_time::now() + timeout,
            sleep: None,
            timeout,
            response: Response::NotReady {
                timeout: ready_timeout,
            },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.response.project() {
            ResponseProj::Called { response } => {
                if let Poll::Ready(result) = response.poll(cx) {
                    return Poll::Ready(result.map_err(Into::into));
                }
            }
            ResponseProj::NotReady { timeout } => {
                return Poll::Ready(Err(NotReady::new(*timeout).into()));
            }
        }
        let deadline = *this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed::new(*this.timeout).into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
