//! The dedup layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::future::BoxFuture;
use pin_project_lite::pin_project;
use tower::Service;
use tower_mq_core::{BoxError, Delivery};

use super::error::StoreError;
use super::DedupStore;
use crate::metrics::names;

pin_project! {
    /// What [`Dedup`](super::Dedup) returns: check the id, then handle and record it,
    /// or ack the duplicate.
    pub struct ResponseFuture<S, St>
    where
        S: Service<Delivery>,
    {
        #[pin]
        state: State<S, St>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, St>
    where
        S: Service<Delivery>,
    {
        Checking {
            check: BoxFuture<'static, Result<bool, BoxError>>,
            // The service, made ready by `poll_ready`, called once the id is new.
            inner: Option<S>,
            store: St,
            id: String,
            delivery: Option<Delivery>,
        },
        Handling {
            #[pin]
            future: S::Future,
            // `None` when the message has no id: nothing to record.
            record: Option<(St, String)>,
        },
        Recording {
            insert: BoxFuture<'static, Result<(), BoxError>>,
            id: String,
            response: Option<S::Response>,
        },
        Acking {
            ack: BoxFuture<'static, Result<(), BoxError>>,
        },
    }
}

impl<S: Service<Delivery>, St> fmt::Debug for ResponseFuture<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Checking { .. } => "checking",
            State::Handling { .. } => "handling",
            State::Recording { .. } => "recording",
            State::Acking { .. } => "acking duplicate",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S: Service<Delivery>, St> ResponseFuture<S, St> {
    pub(crate) fn pass_through(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Handling {
                future,
                record: None,
            },
        }
    }

    pub(crate) fn checking(
        check: BoxFuture<'static, Result<bool, BoxError>>,
        inner: S,
        store: St,
        id: String,
        delivery: Delivery,
    ) -> Self {
        ResponseFuture {
            state: State::Checking {
                check,
                inner: Some(inner),
                store,
                id,
                delivery: Some(delivery),
            },
        }
    }
}

impl<S, St> Future for ResponseFuture<S, St>
where
    S: Service<Delivery>,
    S::Error: Into<BoxError>,
    S::Response: Default,
    St: DedupStore + Clone,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    inner,
                    store,
                    id,
                    delivery,
                } => {
                    let seen = match ready!(check.as_mut().poll(cx)) {
                        Ok(seen) => seen,
                        Err(e) => {
                            return Poll::Ready(Err(StoreError::new(std::mem::take(id), e).into()))
                        }
                    };
                    let (Some(mut svc), Some(delivery)) = (inner.take(), delivery.take()) else {
                        panic!("future polled after completion");
                    };
                    if seen {
                        metrics::counter!(
                            names::DUPLICATES_TOTAL,
                            names::labels::DESTINATION => delivery.message().destination().to_owned(),
                        )
                        .increment(1);
                        let ack: BoxFuture<'static, Result<(), BoxError>> =
                            Box::pin(async move { delivery.ack().await.map_err(BoxError::from) });
                        this.state.set(State::Acking { ack });
                    } else {
                        let future = svc.call(delivery);
                        let record = Some((store.clone(), std::mem::take(id)));
                        this.state.set(State::Handling { future, record });
                    }
                }
                StateProj::Handling { future, record } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    match record.take() {
                        None => return Poll::Ready(Ok(response)),
                        Some((store, id)) => {
                            let insert = store.insert(&id);
                            this.state.set(State::Recording {
                                insert,
                                id,
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Recording {
                    insert,
                    id,
                    response,
                } => {
                    if let Err(e) = ready!(insert.as_mut().poll(cx)) {
                        // Handling succeeded; failing now would only cause a redelivery
                        // and a second handling. A later duplicate may get through.
                        tracing::warn!(message_id = %id, error = %e, "dedup store failed to record a handled message");
                    }
                    match response.take() {
                        Some(response) => return Poll::Ready(Ok(response)),
                        None => panic!("future polled after completion"),
                    }
                }
                StateProj::Acking { ack } => {
                    ready!(ack.as_mut().poll(cx))?;
                    return Poll::Ready(Ok(S::Response::default()));
                }
            }
        }
    }
}
