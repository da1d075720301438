//! Where a batch's callers find their answers: one shared slot per batch, instead of a
//! reply channel per request.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::sync::Semaphore;
use tower_mq_core::BoxError;

use super::error::BatchFailed;

/// One caller's place in its batch.
enum Entry<Resp> {
    /// Not answered yet; the waker of the caller's last poll, if it polled.
    Waiting(Option<Waker>),
    /// The caller dropped its future: its request is left out, its answer dropped.
    GaveUp,
    /// Answered, not yet taken.
    Answered(Result<Resp, BoxError>),
    /// Answered and taken.
    Taken,
}

/// Whether a batch was answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Open,
    Answered,
    /// The worker dropped the batch without answering it: it stopped or died.
    Abandoned,
}

struct State<Resp> {
    // Indexed by the caller's position in the batch; grown as callers poll (or at the
    // answer), so queueing a request touches only the batch being built.
    entries: Vec<Entry<Resp>>,
    outcome: Outcome,
}

/// The answers of one batch, shared by its callers and the worker.
pub(crate) struct Slot<Resp> {
    state: Mutex<State<Resp>>,
}

impl<Resp> Slot<Resp> {
    /// A slot for a batch expected to hold about `capacity` requests.
    pub(crate) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Slot {
            state: Mutex::new(State {
                entries: Vec::with_capacity(capacity),
                outcome: Outcome::Open,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<Resp>> {
        // Nothing here panics while holding the lock; if something did, the state is
        // still consistent entry by entry.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The answer of the caller at `index`, once there is one; `Err(())` if the batch
    /// was abandoned.
    pub(crate) fn poll_answer(
        &self,
        index: usize,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Result<Resp, BoxError>, ()>> {
        let mut state = self.lock();
        let abandoned = state.outcome == Outcome::Abandoned;
        grow(&mut state.entries, index);
        let entry = &mut state.entries[index];
        match entry {
            Entry::Answered(_) => match std::mem::replace(entry, Entry::Taken) {
                Entry::Answered(result) => Poll::Ready(Ok(result)),
                _ => unreachable!("matched as answered"),
            },
            Entry::Waiting(_) if abandoned => Poll::Ready(Err(())),
            Entry::Waiting(waker) => {
                match waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            Entry::GaveUp | Entry::Taken => panic!("a batch answer polled after completion"),
        }
    }

    /// The caller at `index` dropped its future: it is left out of the batch if the batch
    /// was not handed over yet, and its answer is dropped otherwise.
    pub(crate) fn give_up(&self, index: usize) {
        let mut state = self.lock();
        grow(&mut state.entries, index);
        state.entries[index] = Entry::GaveUp;
    }

    /// Which of the first `len` requests still have a caller waiting: `None` if all of
    /// them, else their positions.
    pub(crate) fn kept(&self, len: usize) -> Option<Vec<usize>> {
        let state = self.lock();
        let gave_up = |i: &usize| matches!(state.entries.get(*i), Some(Entry::GaveUp));
        if !(0..len).any(|i| gave_up(&i)) {
            return None;
        }
        Some((0..len).filter(|i| !gave_up(i)).collect())
    }

    /// Answers the callers: `results` yields each caller's position and result. A
    /// caller left without a result (which the worker does not do) is answered as if
    /// the batch was abandoned.
    pub(crate) fn answer(
        &self,
        len: usize,
        results: impl Iterator<Item = (usize, Result<Resp, BoxError>)>,
    ) {
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            if len > 0 {
                grow(&mut state.entries, len - 1);
            }
            for (index, result) in results {
                let Some(entry) = state.entries.get_mut(index) else {
                    continue;
                };
                if let Entry::Waiting(waker) = entry {
                    wakers.extend(waker.take());
                    *entry = Entry::Answered(result);
                }
            }
            let unanswered = state
                .entries
                .iter()
                .any(|entry| matches!(entry, Entry::Waiting(_)));
            state.outcome = if unanswered {
                Outcome::Abandoned
            } else {
                Outcome::Answered
            };
            take_wakers(&mut state.entries, &mut wakers);
        }
        // Woken outside the lock: a woken caller on another thread polls at once.
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Answers every caller of a batch of `len` with the same failure.
    pub(crate) fn fail(&self, len: usize, failed: &BatchFailed) {
        self.answer(len, (0..len).map(|i| (i, Err(failed.clone().into()))));
    }

    /// The batch will not be answered: its callers are told so, if it was not answered.
    fn abandon(&self) {
        let mut wakers = Vec::new();
        {
            let mut state = self.lock();
            if state.outcome != Outcome::Open {
                return;
            }
            state.outcome = Outcome::Abandoned;
            take_wakers(&mut state.entries, &mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Moves the wakers of the callers still waiting into `wakers`.
fn take_wakers<Resp>(entries: &mut [Entry<Resp>], wakers: &mut Vec<Waker>) {
    for entry in entries {
        if let Entry::Waiting(waker) = entry {
            wakers.extend(waker.take());
        }
    }
}

fn grow<Resp>(entries: &mut Vec<Entry<Resp>>, index: usize) {
    if entries.len() <= index {
        entries.resize_with(index + 1, || Entry::Waiting(None));
    }
}

/// The worker's side of a batch: answers its callers, and frees the batch's queue slots
/// when it is done with, answered or not (an unanswered batch's callers get
/// [`Closed`](super::error::Closed)).
pub(crate) struct Answer<Resp> {
    slot: Arc<Slot<Resp>>,
    permits: usize,
    semaphore: Arc<Semaphore>,
}

impl<Resp> Answer<Resp> {
    pub(crate) fn new(slot: Arc<Slot<Resp>>, permits: usize, semaphore: Arc<Semaphore>) -> Self {
        Answer {
            slot,
            permits,
            semaphore,
        }
    }

    pub(crate) fn slot(&self) -> &Slot<Resp> {
        &self.slot
    }
}

impl<Resp> Drop for Answer<Resp> {
    fn drop(&mut self) {
        self.slot.abandon();
        self.semaphore.add_permits(self.permits);
    }
}
