//! The error of a call the breaker did not let through.

use std::fmt;
use std::time::Duration;

use super::CircuitState;

/// The circuit did not admit the call. Transient: the broker may recover.
///
/// Downcast it from the layer's `BoxError` with `err.is::<CircuitOpen>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    state: CircuitState,
    retry_after: Option<Duration>,
    trial_calls: u32,
}

impl CircuitOpen {
    pub(crate) fn new(
        state: CircuitState,
        retry_after: Option<Duration>,
        trial_calls: u32,
    ) -> Self {
        CircuitOpen {
            state,
            retry_after,
            trial_calls,
        }
    }

    /// The state that rejected the call: open, half-open (all trial calls taken) or
    /// forced open.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// How long until the open circuit lets trial calls through, when known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.state, self.retry_after) {
            (CircuitState::Open, Some(after)) => write!(
                f,
                "circuit breaker is open: calls are rejected for another {after:?}"
            ),
            (CircuitState::HalfOpen, _) => write!(
                f,
                "circuit breaker is half-open: all {} trial calls are in flight",
                self.trial_calls
            ),
            (CircuitState::ForcedOpen, _) => {
                f.write_str("circuit breaker is forced open: calls are rejected until it is reset")
            }
            (state, _) => write!(f, "circuit breaker rejected the call ({state})"),
        }
    }
}

impl std::error::Error for CircuitOpen {}
