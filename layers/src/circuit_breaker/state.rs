//! The breaker's shared state machine: an atomic state word read on every call, and
//! transitions made under a lock that the closed path never takes.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use metrics::Label;
use tokio::sync::watch;
use tokio::time::Instant;

use super::window::{Padded, Window, FAILED, SLOW};
use super::CircuitState;

/// The low bits of the state word hold the state, the rest an epoch bumped by every
/// transition, so an outcome admitted under an earlier state is never counted in a
/// later one.
const STATE_BITS: u64 = 3;
const STATE_MASK: u64 = (1 << STATE_BITS) - 1;

pub(super) fn state_of(word: u64) -> CircuitState {
    match word & STATE_MASK {
        0 => CircuitState::Closed,
        1 => CircuitState::Open,
        2 => CircuitState::HalfOpen,
        3 => CircuitState::ForcedOpen,
        _ => CircuitState::Disabled,
    }
}

fn code(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
        CircuitState::ForcedOpen => 3,
        CircuitState::Disabled => 4,
    }
}

pub(super) const CLOSED: u64 = 0;
pub(super) const DISABLED: u64 = 4;

pub(super) fn is_admitting_freely(word: u64) -> bool {
    let s = word & STATE_MASK;
    s == CLOSED || s == DISABLED
}

/// A state change, as given to the [`on_state_change`](super::CircuitBreakerLayer::on_state_change)
/// callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state left.
    pub from: CircuitState,
    /// The state entered.
    pub to: CircuitState,
}

pub(super) type Listener = Arc<dyn Fn(Transition) + Send + Sync>;

#[derive(Clone)]
pub(super) struct Config {
    pub(super) failure_rate: f64,
    pub(super) slow_rate: f64,
    pub(super) slow_duration: Option<Duration>,
    pub(super) minimum_calls: u64,
    pub(super) wait_in_open: Duration,
    pub(super) half_open_calls: u32,
    pub(super) wait_mode: bool,
    pub(super) count_calls: bool,
    pub(super) labels: Vec<Label>,
    pub(super) listener: Option<Listener>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("failure_rate", &self.failure_rate)
            .field("slow_rate", &self.slow_rate)
            .field("slow_duration", &self.slow_duration)
            .field("minimum_calls", &self.minimum_calls)
            .field("wait_in_open", &self.wait_in_open)
            .field("half_open_calls", &self.half_open_calls)
            .field("wait_mode", &self.wait_mode)
            .field("count_calls", &self.count_calls)
            .field("labels", &self.labels)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            failure_rate: 50.0,
            slow_rate: 100.0,
            slow_duration: None,
            minimum_calls: 10,
            wait_in_open: Duration::from_secs(30),
            half_open_calls: 5,
            wait_mode: false,
            count_calls: false,
            labels: Vec::new(),
            listener: None,
        }
    }
}

/// Outcome labels, built once: `success`, `failure`, `slow`, `permanent`, `rejected`.
pub(super) const OUTCOMES: [&str; 5] = ["success", "failure", "slow", "permanent", "rejected"];

pub(super) struct Core {
    // Read on every call; written only by transitions.
    word: Padded<AtomicU64>,
    pub(super) window: Window,
    // The minimum number of calls, capped at a count window's size.
    minimum_calls: u64,
    pub(super) config: Config,
    base: Instant,
    opened_at: AtomicU64,
    probes_left: AtomicU32,
    probes_done: AtomicU32,
    probe_failures: AtomicU32,
    probe_slow: AtomicU32,
    transition: Mutex<()>,
    waiters: Mutex<Vec<Waker>>,
    events: watch::Sender<CircuitState>,
    outcome_labels: Vec<Vec<Label>>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("state", &self.state())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Core {
    pub(super) fn new(config: Config, window: Window) -> Self {
        let outcome_labels = OUTCOMES
            .iter()
            .map(|outcome| {
                let mut labels = config.labels.clone();
                labels.push(Label::new("outcome", *outcome));
                labels
            })
            .collect();
        let minimum_calls = window
            .capacity()
            .map_or(config.minimum_calls, |size| size.min(config.minimum_calls));
        let core = Core {
            word: Padded(AtomicU64::new(CLOSED)),
            window,
            minimum_calls,
            config,
            base: Instant::now(),
            opened_at: AtomicU64::new(0),
            probes_left: AtomicU32::new(0),
            probes_done: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            probe_slow: AtomicU32::new(0),
            transition: Mutex::new(()),
            waiters: Mutex::new(Vec::new()),
            events: watch::channel(CircuitState::Closed).0,
            outcome_labels,
        };
        core.publish_gauge(CircuitState::Closed);
        core
    }

    #[inline]
    pub(super) fn word(&self) -> u64 {
        self.word.0.load(Ordering::Acquire)
    }

    pub(super) fn state(&self) -> CircuitState {
        state_of(self.word())
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.events.subscribe()
    }

    fn now_nanos(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.base)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// How long an open circuit has yet to wait before a trial, from `word`'s opening.
    pub(super) fn open_remaining(&self) -> Duration {
        let opened = self.opened_at.load(Ordering::Acquire);
        let wait = u64::try_from(self.config.wait_in_open.as_nanos()).unwrap_or(u64::MAX);
        let now = self.now_nanos();
        Duration::from_nanos(opened.saturating_add(wait).saturating_sub(now))
    }

    /// The instant an open circuit lets trial calls through.
    pub(super) fn open_deadline(&self) -> Instant {
        Instant::now() + self.open_remaining()
    }

    /// Takes a half-open trial permit.
    pub(super) fn try_take_probe(&self, word: u64) -> bool {
        let taken = self
            .probes_left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if taken && self.word() != word {
            // The state moved on while we took it: give it back.
            self.release_probe(self.word());
            return false;
        }
        taken
    }

    /// Returns an unused trial permit (a cancelled call or a dropped reservation).
    pub(super) fn release_probe(&self, word: u64) {
        if self.word() == word && state_of(word) == CircuitState::HalfOpen {
            self.probes_left.fetch_add(1, Ordering::AcqRel);
            self.wake_all();
        }
    }

    pub(super) fn register(&self, waker: &Waker) {
        let mut waiters = lock(&self.waiters);
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for waker in waiters {
            waker.wake();
        }
    }

    /// Records the outcome of a call admitted under `word`.
    #[inline]
    pub(super) fn record(&self, word: u64, outcome: u8) {
        if self.word() != word {
            return;
        }
        match word & STATE_MASK {
            CLOSED => {
                let now_secs = if self.window.needs_clock() {
                    self.now_nanos() / 1_000_000_000
                } else {
                    0
                };
                let seen = self.window.record(outcome, now_secs);
                // A success can only trip a count window at the call that completes the
                // minimum (the rate it completes was never judged); afterwards it only
                // lowers the rate. Time windows forget, so they are judged every time.
                let bad = outcome & (FAILED | SLOW) != 0;
                if bad || seen.is_none_or(|n| n == self.minimum_calls) {
                    self.evaluate_closed(word, now_secs);
                }
            }
            2 => self.record_probe(word, outcome),
            _ => {}
        }
    }

    fn over_threshold(&self, calls: u64, failures: u64, slow: u64) -> bool {
        if calls == 0 {
            return false;
        }
        let calls = calls as f64;
        failures as f64 * 100.0 >= self.config.failure_rate * calls
            || (self.config.slow_duration.is_some()
                && slow as f64 * 100.0 >= self.config.slow_rate * calls)
    }

    fn evaluate_closed(&self, word: u64, now_secs: u64) {
        let totals = self.window.totals(now_secs);
        if totals.calls >= self.minimum_calls
            && self.over_threshold(totals.calls, totals.failures, totals.slow)
        {
            self.transition_from(word, CircuitState::Open);
        }
    }

    fn record_probe(&self, word: u64, outcome: u8) {
        if outcome & FAILED != 0 {
            self.probe_failures.fetch_add(1, Ordering::AcqRel);
        }
        if outcome & SLOW != 0 {
            self.probe_slow.fetch_add(1, Ordering::AcqRel);
        }
        let done = self.probes_done.fetch_add(1, Ordering::AcqRel) + 1;
        if done >= self.config.half_open_calls {
            let failures = u64::from(self.probe_failures.load(Ordering::Acquire));
            let slow = u64::from(self.probe_slow.load(Ordering::Acquire));
            let next = if self.over_threshold(u64::from(done), failures, slow) {
                CircuitState::Open
            } else {
                CircuitState::Closed
            };
            self.transition_from(word, next);
        }
    }

    /// Moves an open circuit whose wait is over to half-open.
    pub(super) fn try_half_open(&self, word: u64) {
        if self.open_remaining().is_zero() {
            self.transition_from(word, CircuitState::HalfOpen);
        }
    }

    /// Forces `to`, whatever the current state (the handle's operations).
    pub(super) fn force(&self, to: CircuitState) {
        let _guard = lock(&self.transition);
        let word = self.word();
        self.enter(word, to);
    }

    fn transition_from(&self, expected: u64, to: CircuitState) {
        let _guard = lock(&self.transition);
        if self.word() != expected {
            // Someone else already moved the circuit on.
            return;
        }
        self.enter(expected, to);
    }

    /// Enters `to` from the state word `word`; called with the transition lock held.
    fn enter(&self, word: u64, to: CircuitState) {
        let from = state_of(word);
        match to {
            CircuitState::Open | CircuitState::ForcedOpen => {
                self.opened_at.store(self.now_nanos(), Ordering::Release);
            }
            CircuitState::HalfOpen => {
                self.probes_done.store(0, Ordering::Release);
                self.probe_failures.store(0, Ordering::Release);
                self.probe_slow.store(0, Ordering::Release);
                self.probes_left
                    .store(self.config.half_open_calls, Ordering::Release);
            }
            CircuitState::Closed | CircuitState::Disabled => self.window.reset(),
        }
        let epoch = (word >> STATE_BITS).wrapping_add(1);
        self.word
            .0
            .store((epoch << STATE_BITS) | code(to), Ordering::Release);
        self.publish_gauge(to);
        self.events.send_replace(to);
        if let Some(listener) = &self.config.listener {
            listener(Transition { from, to });
        }
        self.wake_all();
    }

    fn publish_gauge(&self, state: CircuitState) {
        metrics::gauge!("messaging_circuit_state", self.config.labels.iter()).set(state.as_gauge());
    }

    #[inline]
    pub(super) fn count_outcome(&self, index: usize) {
        if self.config.count_calls {
            self.count_outcome_slow(index);
        }
    }

    #[cold]
    fn count_outcome_slow(&self, index: usize) {
        if let Some(labels) = self.outcome_labels.get(index) {
            metrics::counter!("messaging_circuit_calls_total", labels.iter()).increment(1);
        }
    }
}
