//! How long to wait before the next attempt: exponential backoff with full jitter.
//!
//! See [`Backoff`]; the randomness comes from a [`Jitter`] source, [`FastRng`] unless
//! the user injects another (a closure returning numbers in `[0, 1)` will do), so tests
//! can fix the delays exactly.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Exponential backoff with full jitter, a limit on attempts and one on elapsed time.
///
/// Before retry number `n` (`n = 0` for the first retry) the ceiling is
/// `min(max, initial * multiplier^n)`; with jitter (the default) the delay is drawn
/// uniformly from `[0, ceiling)` ("full jitter"), which spreads the retries of many
/// callers that failed together instead of sending them back in waves.
///
/// Used by [`RetryLayer`](super::RetryLayer) between attempts and by
/// [`ReconnectLayer`](crate::reconnect::ReconnectLayer) between connection attempts.
///
/// ```
/// use std::time::Duration;
/// use tower_mq_layers::retry::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(10), Duration::from_secs(2))
///     .max_attempts(5)
///     .max_elapsed(Duration::from_secs(30));
/// assert_eq!(backoff.ceiling(0), Duration::from_millis(10));
/// assert_eq!(backoff.ceiling(3), Duration::from_millis(80));
/// assert_eq!(backoff.ceiling(20), Duration::from_secs(2));
/// // With a fixed jitter source the delay is exact: half of the ceiling.
/// let mut half = || 0.5;
/// assert_eq!(backoff.delay(3, &mut half), Duration::from_millis(40));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
    max_attempts: Option<u32>,
    max_elapsed: Option<Duration>,
    jitter: bool,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, 3 attempts, full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    /// Starts at `initial`, doubles after every failure, never exceeds `max`; 3 attempts
    /// in all (the first one and two retries), no elapsed-time limit, full jitter.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            multiplier: 2.0,
            max_attempts: Some(3),
            max_elapsed: None,
            jitter: true,
        }
    }

    /// The same ceiling before every retry (still jittered unless
    /// [`without_jitter`](Self::without_jitter) is called).
    pub fn constant(delay: Duration) -> Self {
        Backoff::exponential(delay, delay).multiplier(1.0)
    }

    /// Sets the growth factor (at least 1; 2 by default).
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() && multiplier >= 1.0 {
            multiplier
        } else {
            1.0
        };
        self
    }

    /// Sets the total number of attempts, the first one included (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// No limit on the number of attempts (bound them by time or by a retry budget).
    pub fn unlimited_attempts(mut self) -> Self {
        self.max_attempts = None;
        self
    }

    /// Gives up when the next attempt would start more than `limit` after the first.
    pub fn max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// Waits exactly the ceiling instead of a random part of it.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// The total number of attempts allowed, if limited.
    pub fn get_max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The elapsed-time limit, if any.
    pub fn get_max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// Whether delays are jittered.
    pub fn is_jittered(&self) -> bool {
        self.jitter
    }

    /// The longest delay before retry number `retry` (0 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs.max(0.0))
        }
    }

    /// The delay before retry number `retry`: a uniform draw from `[0, ceiling)` using
    /// `jitter`, or the ceiling itself without jitter.
    pub fn delay<J: Jitter + ?Sized>(&self, retry: u32, jitter: &mut J) -> Duration {
        let ceiling = self.ceiling(retry);
        if !self.jitter {
            return ceiling;
        }
        let unit = jitter.next_unit();
        // A user-supplied source may stray; never let it panic `mul_f64`.
        let unit = if (0.0..=1.0).contains(&unit) {
            unit
        } else {
            1.0
        };
        ceiling.mul_f64(unit)
    }
}

/// A source of uniformly distributed numbers in `[0, 1)` for jitter.
///
/// Implemented by [`FastRng`] (the default) and by any `FnMut() -> f64 + Clone`
/// closure, so tests can inject a fixed sequence.
pub trait Jitter {
    /// The next number, uniformly distributed in `[0, 1)`.
    fn next_unit(&mut self) -> f64;

    /// An independent source for one request's retries or for a cloned service.
    ///
    /// Closures are cloned; [`FastRng`] derives a new seed, so clones of a service do
    /// not retry in lockstep.
    fn split(&self) -> Self
    where
        Self: Sized;
}

impl<F> Jitter for F
where
    F: FnMut() -> f64 + Clone,
{
    fn next_unit(&mut self) -> f64 {
        self()
    }

    fn split(&self) -> Self {
        self.clone()
    }
}

/// A small, fast pseudo-random generator (SplitMix64), seeded per instance.
///
/// Not cryptographic; good enough to spread retries. Each instance owns its state, so
/// drawing a number takes no lock and touches no shared memory.
#[derive(Debug)]
pub struct FastRng {
    // Atomic only so that `split(&self)` can advance it while the owner stays `Sync`;
    // plain loads and stores, never a read-modify-write.
    state: AtomicU64,
}

impl Default for FastRng {
    fn default() -> Self {
        FastRng::new()
    }
}

impl FastRng {
    /// Seeded from the process's hash keys and a counter: distinct per instance.
    pub fn new() -> Self {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        FastRng::seeded(RandomState::new().hash_one(n))
    }

    /// A generator with a fixed seed (reproducible sequences).
    pub fn seeded(seed: u64) -> Self {
        FastRng {
            state: AtomicU64::new(seed),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        let s = self
            .state
            .load(Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.state.store(s, Ordering::Relaxed);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A clone is an independent generator (a [split](Jitter::split)), so clones of a
/// layer or a service do not retry in lockstep.
impl Clone for FastRng {
    fn clone(&self) -> Self {
        self.split()
    }
}

impl Jitter for FastRng {
    fn next_unit(&mut self) -> f64 {
        // 53 random bits make every representable multiple of 2^-53 in [0, 1) equally likely.
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn split(&self) -> Self {
        FastRng::seeded(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_exponentially_and_caps() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings: Vec<_> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_scales_the_ceiling() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        let mut zero = || 0.0;
        assert_eq!(b.delay(2, &mut zero), Duration::ZERO);
        let mut quarter = || 0.25;
        assert_eq!(b.delay(2, &mut quarter), Duration::from_millis(100));
        let mut broken = || f64::NAN;
        assert_eq!(b.delay(2, &mut broken), Duration::from_millis(400));
        let b = b.without_jitter();
        assert_eq!(b.delay(1, &mut zero), Duration::from_millis(200));
    }

    #[test]
    fn the_default_layer_and_its_services_are_clone() {
        fn assert_clone<T: Clone>(_: &T) {}
        let layer = crate::RetryLayer::new(Backoff::exponential(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_secs(1),
        ));
        assert_clone(&layer);
        let service = tower::Layer::layer(
            &layer,
            tower::service_fn(|_: ()| async { Ok::<(), tower_mq_core::BoxError>(()) }),
        );
        assert_clone(&service);
        let rng = FastRng::seeded(1);
        assert_ne!(rng.clone().next_u64(), rng.clone().next_u64());
    }

    #[test]
    fn fast_rng_stays_in_unit_interval_and_splits_differ() {
        let mut rng = FastRng::seeded(7);
        let mut other = rng.split();
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let x = rng.next_unit();
            assert!((0.0..1.0).contains(&x));
            sum += x;
        }
        let mean = sum / 10_000.0;
        assert!((0.45..0.55).contains(&mean), "mean {mean}");
        assert_ne!(rng.next_u64(), other.next_u64());
        assert_ne!(FastRng::new().next_u64(), FastRng::new().next_u64());
        let _ = other.next_unit();
    }

    #[test]
    fn attempts_are_at_least_one() {
        let b = Backoff::default().max_attempts(0);
        assert_eq!(b.get_max_attempts(), Some(1));
        assert_eq!(
            Backoff::default().unlimited_attempts().get_max_attempts(),
            None
        );
        assert_eq!(
            Backoff::constant(Duration::from_secs(1)).ceiling(5),
            Duration::from_secs(1)
        );
    }
}
