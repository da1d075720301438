//! The codec layers' response futures.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_mq_core::BoxError;

use super::error::{DecodeError, EncodeError};

pin_project! {
    /// What [`Encode`](super::Encode) returns: the publish, or the encoding failure.
    #[derive(Debug)]
    pub struct EncodeFuture<F> {
        #[pin]
        state: State<F, EncodeError>,
    }
}

pin_project! {
    /// What [`Decode`](super::Decode) returns: the handler's call, or the decoding
    /// failure.
    #[derive(Debug)]
    pub struct DecodeFuture<F> {
        #[pin]
        state: State<F, DecodeError>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, E> {
        Called { #[pin] future: F },
        Failed { error: Option<E> },
    }
}

impl<F, E> State<F, E> {
    fn poll_state<T, Er>(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, BoxError>>
    where
        F: Future<Output = Result<T, Er>>,
        Er: Into<BoxError>,
        E: Into<BoxError>,
    {
        match self.project() {
            StateProj::Called { future } => future.poll(cx).map_err(Into::into),
            StateProj::Failed { error } => match error.take() {
                Some(error) => Poll::Ready(Err(error.into())),
                None => panic!("future polled after completion"),
            },
        }
    }
}

impl<F> EncodeFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        EncodeFuture {
            state: State::Called { future },
        }
    }

    pub(crate) fn failed(error: EncodeError) -> Self {
        EncodeFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F> DecodeFuture<F> {
    pub(crate) fn called(future: F) -> Self {
        DecodeFuture {
            state: State::Called { future },
        }
    }

    pub(crate) fn failed(error: DecodeError) -> Self {
        DecodeFuture {
            state: State::Failed { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for EncodeFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().state.poll_state(cx)
    }
}

impl<F, T, E> Future for DecodeFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().state.poll_state(cx)
    }
}
