//! Group commit of a consumer's acknowledgements: concurrent acks share one `XACK`.
//!
//! The first ack to arrive while nobody gathers a batch leads: it lets the tasks
//! ready to run go first (one yield), during which the acks arriving queue up, then
//! takes them all and sends one `XACK` with its own id and theirs. Acks arriving after
//! that start the next batch at once, whether or not the first one's reply is in: a
//! batch waits for no other. When the reply comes, every ack of the batch is answered
//! by it. So an ack returns `Ok` only after an `XACK` carrying its id succeeded, and
//! with many acks in flight (`serve`'s concurrent handlers) there is one round trip
//! per batch instead of one per id.
//!
//! A failed `XACK` answers nobody for good: every member of its batch sends its own
//! (acknowledging twice is harmless, `XACK` of an id no longer pending counts 0), so
//! that each gets the error of its own command. A leader whose caller goes away
//! mid-flight leaves its batch unanswered the same way; one that goes away before it
//! took its batch passes the lead to the oldest queued ack.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Ids in one `XACK` at most; the rest wait for the next.
pub(super) const MAX_BATCH: usize = 1024;

/// The queue of acks waiting for an `XACK`, shared by every acker of one consumer.
#[derive(Debug, Default)]
pub(super) struct AckQueue {
    inner: Arc<Mutex<Queue>>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Whether some ack holds the lead (gathers the next batch).
    leading: bool,
    waiting: VecDeque<(String, oneshot::Sender<Turn>)>,
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a queued ack is told.
#[derive(Debug)]
pub(super) enum Turn {
    /// An `XACK` carrying its id succeeded.
    Done,
    /// It leads the next batch.
    Lead(Lead),
    /// The `XACK` carrying its id failed: it acknowledges alone.
    Alone,
}

/// The lead: whoever holds it gathers the next batch. Dropped before it took the
/// batch, it passes the lead to the oldest ack still waiting, or gives it up.
#[derive(Debug)]
pub(super) struct Lead {
    queue: Option<Arc<Mutex<Queue>>>,
}

impl AckQueue {
    /// Queues an ack of `id`: the lead at once if nobody holds it, else a turn to wait
    /// for (a closed channel means the batch's leader went away: acknowledge alone).
    pub(super) fn join(&self, id: &str) -> Result<Lead, oneshot::Receiver<Turn>> {
        let mut queue = lock(&self.inner);
        if !queue.leading {
            queue.leading = true;
            return Ok(Lead {
                queue: Some(self.inner.clone()),
            });
        }
        let (tx, rx) = oneshot::channel();
        queue.waiting.push_back((id.to_owned(), tx));
        Err(rx)
    }
}

impl Lead {
    /// Takes the batch to acknowledge with the leader's own id (the acks queued so
    /// far) and gives the lead up: the acks that come next gather a batch of their own.
    pub(super) fn take_batch(mut self) -> Vec<(String, oneshot::Sender<Turn>)> {
        let Some(inner) = self.queue.take() else {
            return Vec::new();
        };
        let mut queue = lock(&inner);
        let n = queue.waiting.len().min(MAX_BATCH - 1);
        let batch = queue.waiting.drain(..n).collect();
        if queue.waiting.is_empty() {
            queue.leading = false;
        } else {
            // More than one batch's worth: the oldest left leads the next at once.
            drop(queue);
            self.queue = Some(inner);
        }
        batch
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let Some(inner) = self.queue.take() else {
            return;
        };
        let mut queue = lock(&inner);
        while let Some((_, tx)) = queue.waiting.pop_front() {
            let next = Lead {
                queue: Some(inner.clone()),
            };
            match tx.send(Turn::Lead(next)) {
                Ok(()) => return,
                // That ack went away: nothing to pass on, and its id stays pending.
                Err(Turn::Lead(mut next)) => next.queue = None,
                Err(_) => {}
            }
        }
        queue.leading = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(queue: &AckQueue) -> usize {
        lock(&queue.inner).waiting.len()
    }

    #[test]
    fn the_first_ack_leads_a_batch_of_those_that_came_meanwhile() {
        let queue = AckQueue::default();
        let lead = queue.join("1-0").expect("nobody leads yet");
        let mut second = queue.join("2-0").expect_err("one leads at a time");
        let mut third = queue.join("3-0").expect_err("one leads at a time");
        let batch = lead.take_batch();
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["2-0", "3-0"]);
        // The batch taken, the next ack leads a batch of its own at once.
        let next = queue.join("4-0").expect("the lead was given up");
        assert!(second.try_recv().is_err(), "not answered before its XACK");
        for (_, tx) in batch {
            tx.send(Turn::Done).unwrap();
        }
        assert!(matches!(second.try_recv(), Ok(Turn::Done)));
        assert!(matches!(third.try_recv(), Ok(Turn::Done)));
        assert!(next.take_batch().is_empty());
        assert_eq!(waiting(&queue), 0);
    }

    #[test]
    fn a_leader_gone_before_its_batch_passes_the_lead() {
        let queue = AckQueue::default();
        let lead = queue.join("1-0").unwrap();
        let mut second = queue.join("2-0").unwrap_err();
        let mut third = queue.join("3-0").unwrap_err();
        drop(lead);
        let Ok(Turn::Lead(next)) = second.try_recv() else {
            panic!("the oldest waiting ack leads next");
        };
        let batch = next.take_batch();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].0, "3-0");
        drop(batch);
        assert!(
            third.try_recv().is_err(),
            "unanswered: it acknowledges alone"
        );
    }

    #[test]
    fn the_lead_skips_acks_that_went_away() {
        let queue = AckQueue::default();
        let lead = queue.join("1-0").unwrap();
        drop(queue.join("2-0").unwrap_err());
        let mut third = queue.join("3-0").unwrap_err();
        drop(lead);
        assert!(matches!(third.try_recv(), Ok(Turn::Lead(_))));
        assert_eq!(waiting(&queue), 0);
    }

    #[test]
    fn a_lead_dropped_unread_passes_on() {
        let queue = AckQueue::default();
        let lead = queue.join("1-0").unwrap();
        let second = queue.join("2-0").unwrap_err();
        let mut third = queue.join("3-0").unwrap_err();
        drop(lead);
        // The second ack's caller goes away with the lead in its channel.
        drop(second);
        assert!(matches!(third.try_recv(), Ok(Turn::Lead(_))));
    }
}
