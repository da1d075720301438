//! The future returned by [`Timeout`](super::Timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_mq_core::BoxError;

use super::error::Elapsed;

pin_project! {
    /// The inner response, or [`Elapsed`] if the timer fires first.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        response: F,
        // The deadline is read at the call; the timer is made (and registered) only if
        // the response is not ready at the first poll, so a response that is ready at
        // once costs one clock read.
        #[pin]
        timer: Timer,
        timeout: Duration,
    }
}

pin_project! {
    #[project = TimerProj]
    #[derive(Debug)]
    enum Timer {
        Unarmed { deadline: Instant },
        Armed { #[pin] sleep: Sleep },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(response: F, timeout: Duration) -> Self {
        ResponseFuture {
            response,
            timer: Timer::Unarmed {
                deadline: Instant::now() + timeout,
            },
            timeout,
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
        if let Poll::Ready(result) = this.response.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let mut timer = this.timer;
        loop {
            match timer.as_mut().project() {
                TimerProj::Unarmed { deadline } => {
                    let sleep = tokio::time::sleep_until(*deadline);
                    timer.set(Timer::Armed { sleep });
                }
                TimerProj::Armed { sleep } => {
                    return match sleep.poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(Elapsed::new(*this.timeout).into())),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}
