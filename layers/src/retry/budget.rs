//! A retry budget: a token bucket shared by every clone of a retrying service.
//!
//! Successful calls deposit a fraction of a token, every retry withdraws a whole one,
//! and a small allowance trickles in with time. While the inner service is healthy the
//! bucket stays full and retries are free; when it is down nothing is deposited, the
//! bucket drains after a few retries, and from then on the failures go back to the
//! callers at the pace of the allowance instead of multiplying the load on a broker
//! that is already struggling.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Micro-tokens per token: fine enough that small deposits and slow refills add up.
const TOKEN: i64 = 1_000_000;

/// A token bucket limiting retries to a fraction of the successful traffic.
///
/// Cloning shares the bucket. Successful calls deposit a fraction of a token, every
/// retry withdraws a whole one, and an optional allowance trickles in with time; see the
/// [retry module docs](super).
///
/// ```
/// use tower_mq_layers::retry::RetryBudget;
///
/// // Up to 10 retries saved up; each success earns 0.5 of a retry. Add
/// // `.min_per_second(1)` to let one retry a second trickle in regardless.
/// let budget = RetryBudget::new(10, 0.5);
/// assert!(budget.withdraw());
/// budget.deposit();
/// assert_eq!(budget.balance(), 9.5);
/// ```
#[derive(Debug, Clone)]
pub struct RetryBudget {
    inner: Arc<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    // Hot: touched by every success (a load while full).
    balance: AtomicI64,
    capacity: i64,
    deposit: i64,
    refill_per_sec: i64,
    // Nanoseconds since `base` at which the allowance was last added.
    refilled_at: AtomicU64,
    base: Instant,
}

impl Default for RetryBudget {
    /// 100 retries saved up, a fifth of a retry earned per success, one a second.
    fn default() -> Self {
        RetryBudget::new(100, 0.2).min_per_second(1)
    }
}

impl RetryBudget {
    /// A full bucket holding `capacity` retries; each success deposits `per_success`
    /// of a retry (0.2: retries add at most 20% to the load). No time allowance.
    pub fn new(capacity: u32, per_success: f64) -> Self {
        let per_success = if per_success.is_finite() {
            per_success.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let capacity = i64::from(capacity) * TOKEN;
        RetryBudget {
            inner: Arc::new(Bucket {
                balance: AtomicI64::new(capacity),
                capacity,
                deposit: (per_success * TOKEN as f64) as i64,
                refill_per_sec: 0,
                refilled_at: AtomicU64::new(0),
                base: Instant::now(),
            }),
        }
    }

    /// Adds `retries` retries a second to the bucket, however the calls went, so that
    /// a service that has never succeeded still gets some retries.
    pub fn min_per_second(self, retries: u32) -> Self {
        let bucket = Bucket {
            balance: AtomicI64::new(self.inner.balance.load(Ordering::Relaxed)),
            capacity: self.inner.capacity,
            deposit: self.inner.deposit,
            refill_per_sec: i64::from(retries) * TOKEN,
            refilled_at: AtomicU64::new(0),
            base: Instant::now(),
        };
        RetryBudget {
            inner: Arc::new(bucket),
        }
    }

    /// Records a success.
    pub fn deposit(&self) {
        let b = &*self.inner;
        if b.deposit == 0 || b.balance.load(Ordering::Relaxed) >= b.capacity {
            // The common, healthy case: a load and no write, so clones on several
            // threads do not fight over the cache line.
            return;
        }
        b.add(b.deposit);
    }

    /// Takes one retry from the bucket; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let b = &*self.inner;
        b.refill();
        b.balance
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |balance| {
                (balance >= TOKEN).then_some(balance - TOKEN)
            })
            .is_ok()
    }

    /// Retries currently available (fractional).
    pub fn balance(&self) -> f64 {
        self.inner.refill();
        self.inner.balance.load(Ordering::Relaxed) as f64 / TOKEN as f64
    }
}

impl Bucket {
    fn add(&self, amount: i64) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |balance| {
                (balance < self.capacity).then(|| (balance + amount).min(self.capacity))
            });
    }

    fn refill(&self) {
        if self.refill_per_sec == 0 {
            return;
        }
        let now = nanos(Instant::now().saturating_duration_since(self.base));
        // Whoever swaps owns the interval since the previous refill: no interval counts twice.
        let before = self.refilled_at.swap(now, Ordering::AcqRel);
        let elapsed = now.saturating_sub(before);
        if elapsed == 0 {
            return;
        }
        let amount = (u128::from(elapsed) * self.refill_per_sec as u128 / 1_000_000_000)
            .min(self.capacity as u128) as i64;
        if amount > 0 {
            self.add(amount);
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn withdraws_until_empty_then_refills_with_time() {
        let budget = RetryBudget::new(2, 0.0).min_per_second(2);
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!budget.withdraw());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
        // Never beyond capacity.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(budget.balance(), 2.0);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_earn_retries_and_clones_share() {
        let budget = RetryBudget::new(1, 0.25);
        let clone = budget.clone();
        assert!(clone.withdraw());
        assert!(!budget.withdraw());
        for _ in 0..3 {
            budget.deposit();
        }
        assert!(!clone.withdraw());
        clone.deposit();
        assert!(budget.withdraw());
    }
}
