//! The dedup layer's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::future::BoxFuture;
use pin_project_lite::pin_project;
use tower_mq_core::{BoxError, Delivery};
use tower_service::Service;

use super::error::StoreError;
use super::DedupStore;
use crate::metrics::names;

/// Releases the claim if the handling is dropped before it finished, so that a
/// redelivery is not mistaken for a duplicate.
struct ClaimGuard<St: DedupStore> {
    claim: Option<(St, String)>,
}

impl<St: DedupStore> ClaimGuard<St> {
    fn disarm(&mut self) -> Option<(St, String)> {
        self.claim.take()
    }
}

impl<St: DedupStore> Drop for ClaimGuard<St> {
    fn drop(&mut self) {
        if let Some((store, id)) = self.claim.take() {
            let release = store.release(&id);
            // Stores start their work when called; driving the future is a courtesy.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(release);
            }
        }
    }
}

pin_project! {
    /// What [`Dedup`](super::Dedup) returns: claim the id, then handle and complete
    /// (or release) it, or ack the duplicate.
    pub struct ResponseFuture<S, St>
    where
        S: Service<Delivery>,
        St: DedupStore,
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
        St: DedupStore,
    {
        Claiming {
            claim: BoxFuture<'static, Result<bool, BoxError>>,
            // The service, made ready by `poll_ready`, called once the id is claimed.
            inner: Option<S>,
            store: St,
            id: String,
            delivery: Option<Delivery>,
        },
        Handling {
            #[pin]
            future: S::Future,
            // `None` when the message has no id: nothing to record.
            guard: Option<ClaimGuard<St>>,
        },
        Completing {
            complete: BoxFuture<'static, Result<(), BoxError>>,
            id: String,
            response: Option<S::Response>,
        },
        Releasing {
            release: BoxFuture<'static, Result<(), BoxError>>,
            id: String,
            error: Option<BoxError>,
        },
        Acking {
            ack: BoxFuture<'static, Result<(), BoxError>>,
        },
    }
}

impl<S: Service<Delivery>, St: DedupStore> fmt::Debug for ResponseFuture<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Claiming { .. } => "claiming",
            State::Handling { .. } => "handling",
            State::Completing { .. } => "completing",
            State::Releasing { .. } => "releasing",
            State::Acking { .. } => "acking duplicate",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S: Service<Delivery>, St: DedupStore> ResponseFuture<S, St> {
    pub(crate) fn pass_through(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Handling {
                future,
                guard: None,
            },
        }
    }

    pub(crate) fn claiming(
        claim: BoxFuture<'static, Result<bool, BoxError>>,
        inner: S,
        store: St,
        id: String,
        delivery: Delivery,
    ) -> Self {
        ResponseFuture {
            state: State::Claiming {
                claim,
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
                StateProj::Claiming {
                    claim,
                    inner,
                    store,
                    id,
                    delivery,
                } => {
                    let claimed = match ready!(claim.as_mut().poll(cx)) {
                        Ok(claimed) => claimed,
                        Err(e) => {
                            return Poll::Ready(Err(StoreError::new(std::mem::take(id), e).into()))
                        }
                    };
                    let (Some(mut svc), Some(delivery)) = (inner.take(), delivery.take()) else {
                        panic!("future polled after completion");
                    };
                    if claimed {
                        let guard = ClaimGuard {
                            claim: Some((store.clone(), std::mem::take(id))),
                        };
                        let future = svc.call(delivery);
                        this.state.set(State::Handling {
                            future,
                            guard: Some(guard),
                        });
                    } else {
                        // Handled before, or being handled now: if that handling fails,
                        // its own delivery comes back, so this copy can go.
                        metrics::counter!(
                            names::DUPLICATES_TOTAL,
                            names::labels::DESTINATION => delivery.message().destination().to_owned(),
                        )
                        .increment(1);
                        let ack: BoxFuture<'static, Result<(), BoxError>> =
                            Box::pin(async move { delivery.ack().await.map_err(BoxError::from) });
                        this.state.set(State::Acking { ack });
                    }
                }
                StateProj::Handling { future, guard } => {
                    let result = ready!(future.poll(cx));
                    let claim = guard.as_mut().and_then(ClaimGuard::disarm);
                    match (result, claim) {
                        (Ok(response), None) => return Poll::Ready(Ok(response)),
                        (Err(e), None) => return Poll::Ready(Err(e.into())),
                        (Ok(response), Some((store, id))) => {
                            let complete = store.complete(&id);
                            this.state.set(State::Completing {
                                complete,
                                id,
                                response: Some(response),
                            });
                        }
                        (Err(e), Some((store, id))) => {
                            let release = store.release(&id);
                            this.state.set(State::Releasing {
                                release,
                                id,
                                error: Some(e.into()),
                            });
                        }
                    }
                }
                StateProj::Completing {
                    complete,
                    id,
                    response,
                } => {
                    if let Err(e) = ready!(complete.as_mut().poll(cx)) {
                        // Handling succeeded; failing now would only cause a redelivery
                        // and a second handling. A later duplicate may get through.
                        tracing::warn!(message_id = %id, error = %e, "dedup store failed to record a handled message");
                    }
                    match response.take() {
                        Some(response) => return Poll::Ready(Ok(response)),
                        None => panic!("future polled after completion"),
                    }
                }
                StateProj::Releasing { release, id, error } => {
                    if let Err(e) = ready!(release.as_mut().poll(cx)) {
                        // The claim expires with its TTL; until then redeliveries are
                        // acked as duplicates.
                        tracing::warn!(message_id = %id, error = %e, "dedup store failed to release a claim");
                    }
                    match error.take() {
                        Some(error) => return Poll::Ready(Err(error)),
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
