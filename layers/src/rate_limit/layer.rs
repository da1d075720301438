use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::Quota;
use tower_layer::Layer;

use super::{
    DirectLimiter, KeyedLimiter, KeyedRateLimit, Pruning, RateLimit, Reservation, TokioClock,
};

/// Builds [`RateLimit`] services sharing one limit. See the [module docs](super).
///
/// Each configuration method starts a fresh limit.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    quota: Quota,
    reject: bool,
    limiter: Arc<DirectLimiter>,
}

fn non_zero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl RateLimitLayer {
    /// `calls` per second (at least 1), bursts of up to `calls`, waiting when over.
    pub fn per_second(calls: u32) -> Self {
        RateLimitLayer::new(Quota::per_second(non_zero(calls)))
    }

    /// One call per `period` (a period of zero is taken as one nanosecond).
    pub fn every(period: Duration) -> Self {
        let quota =
            Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX));
        RateLimitLayer::new(quota)
    }

    /// Any governor quota.
    pub fn new(quota: Quota) -> Self {
        RateLimitLayer {
            quota,
            reject: false,
            limiter: Arc::new(DirectLimiter::direct_with_clock(quota, TokioClock)),
        }
    }

    /// Allows bursts of up to `calls` calls (at least 1).
    pub fn burst(self, calls: u32) -> Self {
        RateLimitLayer::new(self.quota.allow_burst(non_zero(calls))).mode(self.reject)
    }

    /// Over the limit, `call` fails with `RateLimited` instead of waiting.
    pub fn reject(self) -> Self {
        self.mode(true)
    }

    /// Over the limit, `poll_ready` waits for the next cell (the default).
    pub fn wait(self) -> Self {
        self.mode(false)
    }

    fn mode(mut self, reject: bool) -> Self {
        self.reject = reject;
        self
    }

    /// One limit per key, `key_of` extracting the key from the request. See the
    /// [module docs](super#limits-per-key).
    pub fn per_key<F, K>(self, key_of: F) -> KeyedRateLimitLayer<F, K>
    where
        K: Hash + Eq + Clone,
    {
        KeyedRateLimitLayer {
            key_of,
            reject: self.reject,
            limiter: Arc::new(KeyedLimiter::dashmap_with_clock(self.quota, TokioClock)),
            pruning: Arc::new(Pruning::new()),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            reject: self.reject,
            reservation: Reservation::None,
            sleep: None,
        }
    }
}

/// Builds [`KeyedRateLimit`] services sharing one keyed limit. See the
/// [module docs](super#limits-per-key).
pub struct KeyedRateLimitLayer<F, K: Hash + Eq + Clone> {
    key_of: F,
    reject: bool,
    limiter: Arc<KeyedLimiter<K>>,
    pruning: Arc<Pruning>,
}

impl<F, K: Hash + Eq + Clone> std::fmt::Debug for KeyedRateLimitLayer<F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("reject", &self.reject)
            .finish_non_exhaustive()
    }
}

impl<F: Clone, K: Hash + Eq + Clone> Clone for KeyedRateLimitLayer<F, K> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            key_of: self.key_of.clone(),
            reject: self.reject,
            limiter: self.limiter.clone(),
            pruning: self.pruning.clone(),
        }
    }
}

impl<F, K: Hash + Eq + Clone> KeyedRateLimitLayer<F, K> {
    /// Forgets keys whose limit has fully recovered (call it now and then when keys
    /// come and go, e.g. per-tenant limits).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }

    /// The number of keys currently tracked.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }
}

impl<S, F: Clone, K: Hash + Eq + Clone> Layer<S> for KeyedRateLimitLayer<F, K> {
    type Service = KeyedRateLimit<S, F, K>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            key_of: self.key_of.clone(),
            limiter: self.limiter.clone(),
            pruning: self.pruning.clone(),
            calls: 0,
            reject: self.reject,
        }
    }
}
