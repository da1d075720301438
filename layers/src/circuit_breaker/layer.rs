use std::sync::Arc;
use std::time::Duration;

use metrics::Label;
use tower_layer::Layer;

use super::state::{Config, Core, Transition};
use super::window::{CountWindow, TimeWindow, Window};
use super::{CircuitBreaker, CircuitBreakerHandle};
use crate::classify::{DefaultClassifier, ErrorsOnly, WithResponses};

#[derive(Debug, Clone, Copy)]
enum WindowKind {
    Count(u32),
    Seconds(u32),
}

/// Builds [`CircuitBreaker`] services sharing one circuit. See the [module docs](super).
///
/// Defaults: a count window of the last 100 calls, judged from 20 calls on, opening at
/// a 50% failure rate, slow-call detection off, 30 s open, 5 trial calls, rejecting
/// while open, [`DefaultClassifier`].
///
/// Each configuration method starts a fresh circuit: take the
/// [`handle`](Self::handle) after configuring.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    config: Config,
    window: WindowKind,
    classifier: C,
    core: Arc<Core>,
}

impl Default for CircuitBreakerLayer {
    fn default() -> Self {
        CircuitBreakerLayer::new()
    }
}

impl CircuitBreakerLayer {
    /// A breaker with the default configuration, its metrics labelled
    /// `circuit="circuit-<n>"` (a number per breaker made in this process) until
    /// [`name`](Self::name) names it, so that several breakers' series never merge.
    pub fn new() -> Self {
        static BREAKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = BREAKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let config = Config {
            minimum_calls: 20,
            labels: vec![Label::new(CIRCUIT_LABEL, format!("circuit-{n}"))],
            ..Config::default()
        };
        let window = WindowKind::Count(100);
        CircuitBreakerLayer {
            core: Arc::new(Core::new(config.clone(), build_window(window))),
            config,
            window,
            classifier: DefaultClassifier::new(),
        }
    }
}

/// The label naming a breaker in its metrics.
const CIRCUIT_LABEL: &str = "circuit";

fn build_window(kind: WindowKind) -> Window {
    match kind {
        WindowKind::Count(n) => Window::Count(CountWindow::new(n)),
        WindowKind::Seconds(n) => Window::Time(TimeWindow::new(n)),
    }
}

impl<C> CircuitBreakerLayer<C> {
    fn rebuild(mut self) -> Self {
        self.core = Arc::new(Core::new(self.config.clone(), build_window(self.window)));
        self
    }

    fn with_config(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self.rebuild()
    }

    /// Judges the last `calls` calls (at least 1).
    pub fn count_window(mut self, calls: u32) -> Self {
        self.window = WindowKind::Count(calls.max(1));
        self.rebuild()
    }

    /// Judges the calls of the last `duration`, rounded up to whole seconds.
    pub fn time_window(mut self, duration: Duration) -> Self {
        let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
        self.window = WindowKind::Seconds(u32::try_from(secs.max(1)).unwrap_or(u32::MAX));
        self.rebuild()
    }

    /// Opens when at least this percentage (0 to 100) of the window failed.
    pub fn failure_rate_threshold(self, percent: f64) -> Self {
        self.with_config(|c| c.failure_rate = clamp_percent(percent))
    }

    /// Calls taking at least `duration` are slow (off unless set).
    pub fn slow_call_duration(self, duration: Duration) -> Self {
        self.with_config(|c| c.slow_duration = Some(duration))
    }

    /// Opens when at least this percentage (0 to 100) of the window was slow
    /// (100 by default; only with [`slow_call_duration`](Self::slow_call_duration)).
    pub fn slow_call_rate_threshold(self, percent: f64) -> Self {
        self.with_config(|c| c.slow_rate = clamp_percent(percent))
    }

    /// No judgement before the window holds this many calls.
    pub fn minimum_calls(self, calls: u32) -> Self {
        self.with_config(|c| c.minimum_calls = u64::from(calls.max(1)))
    }

    /// How long the circuit stays open before trial calls.
    pub fn wait_in_open(self, wait: Duration) -> Self {
        self.with_config(|c| c.wait_in_open = wait)
    }

    /// How many trial calls the half-open circuit admits (at least 1) before deciding.
    pub fn half_open_calls(self, calls: u32) -> Self {
        self.with_config(|c| c.half_open_calls = calls.max(1))
    }

    /// While open, `poll_ready` is `Pending` until a trial call may go through.
    pub fn wait_when_open(self) -> Self {
        self.with_config(|c| c.wait_mode = true)
    }

    /// While open, `call` fails at once with `CircuitOpen` (the default).
    pub fn reject_when_open(self) -> Self {
        self.with_config(|c| c.wait_mode = false)
    }

    /// Counts calls in `messaging_circuit_calls_total{outcome}` (success, failure, slow,
    /// permanent, rejected). Off by default: it costs a metrics lookup per call.
    pub fn count_calls(self, enabled: bool) -> Self {
        self.with_config(|c| c.count_calls = enabled)
    }

    /// Names the breaker: the `circuit` label of its metrics (e.g. the destination it
    /// guards, or the route), instead of a number.
    pub fn name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.with_config(|c| {
            c.labels.retain(|l| l.key() != CIRCUIT_LABEL);
            c.labels.insert(0, Label::new(CIRCUIT_LABEL, name));
        })
    }

    /// Adds a label to the breaker's metrics.
    pub fn label(self, key: &'static str, value: impl Into<String>) -> Self {
        let value = value.into();
        self.with_config(|c| c.labels.push(Label::new(key, value)))
    }

    /// Called on every state change, under the breaker's transition lock: keep it short.
    pub fn on_state_change(self, listener: impl Fn(Transition) + Send + Sync + 'static) -> Self {
        self.with_config(|c| c.listener = Some(Arc::new(listener)))
    }

    /// Decides which errors are failures (only transient ones count), with a
    /// [`Classifier`](crate::classify::Classifier) of the inner service's errors.
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<ErrorsOnly<C2>> {
        self.outcome_classifier(ErrorsOnly(classifier))
    }

    /// Also counts responses as failures where `responses` says so (`None`: a
    /// success), e.g. [`http_response`](crate::classify) for an HTTP service's 5xx.
    pub fn classify_responses<F>(self, responses: F) -> CircuitBreakerLayer<WithResponses<C, F>>
    where
        C: Clone,
    {
        let errors = self.classifier.clone();
        self.outcome_classifier(WithResponses::new(errors, responses))
    }

    /// Decides which outcomes are failures with any
    /// [`ClassifyOutcome`](crate::classify::ClassifyOutcome).
    pub fn outcome_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            config: self.config,
            window: self.window,
            classifier,
            core: self.core,
        }
    }

    /// A handle on the circuit the layer's services share.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            core: self.core.clone(),
        }
    }
}

fn clamp_percent(percent: f64) -> f64 {
    if percent.is_nan() {
        100.0
    } else {
        percent.clamp(0.0, 100.0)
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.core.clone(), self.classifier.clone())
    }
}
