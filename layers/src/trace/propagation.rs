use opentelemetry::propagation::{Extractor, Injector};
use tower_mq_core::Headers;

/// Writes propagation fields (`traceparent`, `tracestate`, baggage) into message
/// headers, for any OpenTelemetry `TextMapPropagator`.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value);
    }
}

/// Reads propagation fields from message headers, for any OpenTelemetry
/// `TextMapPropagator`.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // Brokers and bridges may change the case of header names.
        self.0.get_str(key).or_else(|| {
            self.0
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(key))
                .and_then(|(_, value)| value.as_str())
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name).collect()
    }
}
