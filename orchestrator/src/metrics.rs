//! The orchestrator's metrics (no-ops until OTLP export is configured).

use std::sync::OnceLock;

use checkout_kit::telemetry::meter;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

/// Saga instruments.
#[derive(Debug)]
pub struct SagaMetrics {
    /// Checkouts accepted.
    pub started: Counter<u64>,
    /// Checkouts finished, by outcome.
    pub finished: Counter<u64>,
    /// Start to finish, in milliseconds, by outcome.
    pub saga_duration: Histogram<f64>,
    /// One attempt, in milliseconds, by step, direction and outcome.
    pub step_duration: Histogram<f64>,
    /// Attempts retried, by step.
    pub retries: Counter<u64>,
    /// Compensations that succeeded, by step.
    pub compensations: Counter<u64>,
    /// Sagas parked for an operator.
    pub parked: Counter<u64>,
}

/// The instruments, made on first use (after telemetry was set up).
pub fn metrics() -> &'static SagaMetrics {
    static METRICS: OnceLock<SagaMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let m = meter();
        let metrics = SagaMetrics {
            started: m
                .u64_counter("checkout.started")
                .with_description("checkouts accepted")
                .build(),
            finished: m
                .u64_counter("checkout.finished")
                .with_description("checkouts finished, by outcome")
                .build(),
            saga_duration: m
                .f64_histogram("checkout.saga.duration")
                .with_unit("ms")
                .with_description("checkout start to finish")
                .build(),
            step_duration: m
                .f64_histogram("checkout.step.duration")
                .with_unit("ms")
                .with_description("one step attempt")
                .build(),
            retries: m
                .u64_counter("checkout.step.retries")
                .with_description("step attempts retried")
                .build(),
            compensations: m
                .u64_counter("checkout.compensations")
                .with_description("compensations that succeeded")
                .build(),
            parked: m
                .u64_counter("checkout.parked")
                .with_description("sagas parked for an operator")
                .build(),
        };
        // Zero points, so every series exists from the start.
        metrics.retries.add(0, &[]);
        metrics.compensations.add(0, &[]);
        metrics.parked.add(0, &[]);
        metrics
    })
}

/// One attribute.
pub fn attr(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}
