//! The dead-letter layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::future::BoxFuture;
use pin_project_lite::pin_project;
use tower_mq_core::{BoxError, Delivery, ErrorKind, Message, Receipt};
use tower_service::Service;

use super::error::DeadLetterFailed;
use super::{headers, Config};
use crate::classify::Classifier;
use crate::metrics::names;

pin_project! {
    /// What [`DeadLetter`](super::DeadLetter) returns: the handler's call and, when it
    /// fails for good, the dead-lettering.
    pub struct ResponseFuture<F, P, C> {
        #[pin]
        state: State<F>,
        delivery: Option<Delivery>,
        publisher: P,
        classifier: C,
        config: Config,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Handling { #[pin] future: F },
        DeadLettering { future: BoxFuture<'static, Result<(), BoxError>> },
    }
}

impl<F, P, C> std::fmt::Debug for ResponseFuture<F, P, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Handling { .. } => "handling",
            State::DeadLettering { .. } => "dead-lettering",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<F, P, C> ResponseFuture<F, P, C> {
    pub(crate) fn new(
        future: F,
        delivery: Delivery,
        publisher: P,
        classifier: C,
        config: Config,
    ) -> Self {
        ResponseFuture {
            state: State::Handling { future },
            delivery: Some(delivery),
            publisher,
            classifier,
            config,
        }
    }
}

/// The copy that goes to the dead-letter destination.
fn dead_letter_message(
    delivery: &Delivery,
    destination: String,
    error: &BoxError,
    kind: ErrorKind,
) -> Message {
    let original = delivery.message();
    let mut msg = original.clone();
    msg.set_destination(destination);
    let h = msg.headers_mut();
    h.insert(headers::REASON, error.to_string());
    h.insert(headers::DELIVERIES, delivery.delivery_count().to_string());
    h.insert(headers::ORIGINAL_DESTINATION, original.destination());
    h.insert(headers::ERROR_KIND, kind.as_str());
    h.insert(headers::TIME, headers::now_millis().to_string());
    msg
}

impl<F, P, C, T, E> Future for ResponseFuture<F, P, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    T: Default,
    P: Service<Message, Response = Receipt> + Clone + Send + 'static,
    P::Error: Into<BoxError>,
    P::Future: Send,
    C: Classifier<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Handling { future } => {
                    let error: BoxError = match ready!(future.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(e) => e.into(),
                    };
                    let Some(delivery) = this.delivery.take() else {
                        return Poll::Ready(Err(error));
                    };
                    let kind = this.classifier.classify(&error);
                    if kind != ErrorKind::Permanent {
                        // The consumer loop owns the attempt limit: it redelivers or
                        // dead-letters.
                        return Poll::Ready(Err(error));
                    }
                    let cause = "permanent_error";
                    let destination = (this.config.naming)(delivery.message());
                    let msg = dead_letter_message(&delivery, destination.clone(), &error, kind);
                    let original = delivery.message().destination().to_owned();
                    let mut publisher = this.publisher.clone();
                    let future = Box::pin(async move {
                        let sent = async {
                            std::future::poll_fn(|cx| publisher.poll_ready(cx))
                                .await
                                .map_err(Into::into)?;
                            publisher.call(msg).await.map_err(Into::into)?;
                            delivery.ack().await.map_err(BoxError::from)
                        };
                        match sent.await {
                            Ok(()) => {
                                metrics::counter!(
                                    names::DEAD_LETTERS_TOTAL,
                                    names::labels::DESTINATION => original,
                                    names::labels::REASON => cause,
                                )
                                .increment(1);
                                Ok(())
                            }
                            Err(source) => {
                                Err(DeadLetterFailed::new(destination, error, source).into())
                            }
                        }
                    });
                    this.state.set(State::DeadLettering { future });
                }
                StateProj::DeadLettering { future } => {
                    return match ready!(future.as_mut().poll(cx)) {
                        Ok(()) => Poll::Ready(Ok(T::default())),
                        Err(e) => Poll::Ready(Err(e)),
                    };
                }
            }
        }
    }
}
