//! The sliding windows of recent outcomes, updated with atomics only.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};

/// Outcome bits as stored in a count-window slot (0 = empty slot).
pub(super) const RECORDED: u8 = 1;
pub(super) const FAILED: u8 = 2;
pub(super) const SLOW: u8 = 4;

/// Keeps a hot counter off the cache line of its neighbours.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(super) struct Padded<T>(pub(super) T);

/// Calls, failures and slow calls currently in a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Totals {
    pub(super) calls: u64,
    pub(super) failures: u64,
    pub(super) slow: u64,
}

// One per breaker, inside its `Arc`: boxing the padded count window would only add an
// indirection to the hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records an outcome; for a count window, returns how many calls it has seen
    /// (this one included), for a time window `None`.
    #[inline]
    pub(super) fn record(&self, outcome: u8, now_secs: u64) -> Option<u64> {
        match self {
            Window::Count(w) => Some(w.record(outcome)),
            Window::Time(w) => {
                w.record(outcome, now_secs);
                None
            }
        }
    }

    pub(super) fn totals(&self, now_secs: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now_secs),
        }
    }

    /// How many calls a count window holds.
    pub(super) fn capacity(&self) -> Option<u64> {
        match self {
            Window::Count(w) => Some(w.slots.len() as u64),
            Window::Time(_) => None,
        }
    }

    pub(super) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }

    pub(super) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }
}

/// The last `N` outcomes in a ring: each record overwrites the oldest slot and adjusts
/// the failure and slow counters by the difference, so the totals always describe
/// exactly the last `N` calls.
#[derive(Debug)]
pub(super) struct CountWindow {
    head: Padded<AtomicU64>,
    failures: Padded<AtomicI64>,
    slow: Padded<AtomicI64>,
    slots: Box<[AtomicU8]>,
}

impl CountWindow {
    pub(super) fn new(size: u32) -> Self {
        let size = size.max(1) as usize;
        CountWindow {
            head: Padded(AtomicU64::new(0)),
            failures: Padded(AtomicI64::new(0)),
            slow: Padded(AtomicI64::new(0)),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    /// Records `outcome`; returns how many calls the window has seen, this one
    /// included (at least the window's size once it is full).
    #[inline]
    fn record(&self, outcome: u8) -> u64 {
        let size = self.slots.len() as u64;
        if outcome == RECORDED {
            // A full window of plain successes is the same whichever of them a new
            // success replaces, so the healthy steady state writes nothing: three loads
            // of lines nobody writes, and clones on other threads do not contend. The
            // failure that ends it takes the next slot, and the window stays exact.
            let seen = self.head.0.load(Ordering::Relaxed);
            if seen >= size
                && self.failures.0.load(Ordering::Relaxed) == 0
                && self.slow.0.load(Ordering::Relaxed) == 0
            {
                return seen + 1;
            }
        }
        let index = self.head.0.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[(index % size) as usize];
        // Mostly a success overwrites a success: then a plain load suffices and the
        // slot's cache line is not written. Otherwise `swap`, so that the counters
        // always describe exactly what the slots hold, even when two calls race for
        // one slot (one of the two outcomes wins it).
        if slot.load(Ordering::Relaxed) == outcome {
            return index + 1;
        }
        let old = slot.swap(outcome, Ordering::Relaxed);
        let changed = old ^ outcome;
        if changed & FAILED != 0 {
            let delta = if outcome & FAILED != 0 { 1 } else { -1 };
            self.failures.0.fetch_add(delta, Ordering::Relaxed);
        }
        if changed & SLOW != 0 {
            let delta = if outcome & SLOW != 0 { 1 } else { -1 };
            self.slow.0.fetch_add(delta, Ordering::Relaxed);
        }
        index + 1
    }

    fn totals(&self) -> Totals {
        let calls = self
            .head
            .0
            .load(Ordering::Relaxed)
            .min(self.slots.len() as u64);
        Totals {
            calls,
            failures: self.failures.0.load(Ordering::Relaxed).max(0) as u64,
            slow: self.slow.0.load(Ordering::Relaxed).max(0) as u64,
        }
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.failures.0.store(0, Ordering::Relaxed);
        self.slow.0.store(0, Ordering::Relaxed);
        self.head.0.store(0, Ordering::Release);
    }
}

/// Outcomes of the last `N` seconds, one bucket per second of tokio's clock.
#[derive(Debug)]
pub(super) struct TimeWindow {
    buckets: Box<[Bucket]>,
}

#[derive(Debug, Default)]
struct Bucket {
    // The second (since the breaker's start) this bucket counts, plus one; 0 = unused.
    second: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl TimeWindow {
    pub(super) fn new(seconds: u32) -> Self {
        let seconds = seconds.max(1) as usize;
        TimeWindow {
            buckets: (0..seconds).map(|_| Bucket::default()).collect(),
        }
    }

    fn record(&self, outcome: u8, now_secs: u64) {
        let stamp = now_secs + 1;
        let bucket = &self.buckets[(now_secs % self.buckets.len() as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != stamp
            && bucket
                .second
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // The winner recycles the bucket; a record racing with it at the turn of a
            // second may land in the old count, an error of one call at most.
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if outcome & FAILED != 0 {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
        if outcome & SLOW != 0 {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn totals(&self, now_secs: u64) -> Totals {
        let stamp = now_secs + 1;
        let oldest = stamp.saturating_sub(self.buckets.len() as u64 - 1);
        let mut totals = Totals::default();
        for bucket in self.buckets.iter() {
            let second = bucket.second.load(Ordering::Acquire);
            if second >= oldest && second <= stamp && second != 0 {
                totals.calls += bucket.calls.load(Ordering::Relaxed);
                totals.failures += bucket.failures.load(Ordering::Relaxed);
                totals.slow += bucket.slow.load(Ordering::Relaxed);
            }
        }
        totals
    }

    fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.second.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_slides_over_exactly_the_last_n() {
        let w = CountWindow::new(4);
        for outcome in [
            RECORDED | FAILED,
            RECORDED,
            RECORDED | FAILED | SLOW,
            RECORDED,
        ] {
            w.record(outcome);
        }
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 2,
                slow: 1
            }
        );
        // Overwrites the first failure.
        w.record(RECORDED);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        w.record(RECORDED);
        w.record(RECORDED);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 4,
                failures: 0,
                slow: 0
            }
        );
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn a_failure_after_a_run_of_successes_stays_for_exactly_n_calls() {
        let w = CountWindow::new(4);
        for _ in 0..10 {
            w.record(RECORDED);
        }
        assert_eq!(w.totals().calls, 4);
        w.record(RECORDED | FAILED);
        for _ in 0..3 {
            w.record(RECORDED);
            assert_eq!(w.totals().failures, 1);
        }
        w.record(RECORDED);
        assert_eq!(w.totals().failures, 0);
        // Slow successes are not plain successes either.
        w.record(RECORDED | SLOW);
        w.record(RECORDED);
        assert_eq!(w.totals().slow, 1);
    }

    #[test]
    fn time_window_forgets_old_seconds() {
        let w = TimeWindow::new(3);
        w.record(RECORDED | FAILED, 0);
        w.record(RECORDED, 1);
        w.record(RECORDED | SLOW, 2);
        assert_eq!(
            w.totals(2),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(
            w.totals(3),
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        w.record(RECORDED, 3);
        assert_eq!(
            w.totals(3),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(w.totals(10), Totals::default());
    }
}
