//! The instant a call was made, read from tokio's clock once per synchronous `call`
//! and shared by the layers that call passes through.
//!
//! Metrics start their timer, a timeout computes its deadline, a breaker times a slow
//! call and a retry starts its elapsed-time limit, all at `call`. Stacked, they would
//! read the clock three or four times within the same few hundred nanoseconds, and a
//! clock read is the most expensive thing most of them do. A layer that reads the clock
//! at `call` runs its inner `call` in a [`scope`] with that reading, and layers nested
//! inside take it from [`now`] instead of reading again. The difference is the
//! synchronous work of the `call`s in between, which do not block.
//!
//! Only `call`-time readings are shared: a response future reads the clock itself.

use std::cell::Cell;

use tokio::time::Instant;

thread_local! {
    static CALL_STARTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The instant of the enclosing layer's `call`, if one is in progress on this thread,
/// else tokio's clock.
#[inline]
pub(crate) fn now() -> Instant {
    CALL_STARTED.with(Cell::get).unwrap_or_else(Instant::now)
}

/// Runs `call` (an inner service's `call`) with `started` as the instant that nested
/// layers see from [`now`].
#[inline]
pub(crate) fn scope<R>(started: Instant, call: impl FnOnce() -> R) -> R {
    /// Restores the enclosing value, also if `call` panics.
    struct Restore(Option<Instant>);

    impl Drop for Restore {
        #[inline]
        fn drop(&mut self) {
            CALL_STARTED.with(|cell| cell.set(self.0));
        }
    }

    let _restore = Restore(CALL_STARTED.with(|cell| cell.replace(Some(started))));
    call()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nested_calls_share_the_outer_reading_and_only_inside_the_scope() {
        let outer = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let seen = scope(outer, || {
            let nested = scope(now(), now);
            (now(), nested)
        });
        assert_eq!(seen, (outer, outer));
        assert_eq!(now(), outer + Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_call_leaves_no_reading_behind() {
        let outer = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let caught = std::panic::catch_unwind(|| scope(outer, || panic!("inner call")));
        assert!(caught.is_err());
        assert_eq!(now(), outer + Duration::from_secs(1));
    }
}
