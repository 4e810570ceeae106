//! Saga definitions: a saga is a list of steps, each an action, an optional compensation and a
//! kind. The engine is generic; the checkout saga is one definition on it.

use std::time::Duration;

use checkout_kit::retry::RetryPolicy;

/// How a step behaves on failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Undone by its compensation when the saga fails.
    Compensatable,
    /// The point of no return: once it succeeds the saga only goes forward.
    Pivot,
    /// After the pivot: retried until it succeeds (or parks the saga past its bound).
    Retriable,
}

/// One step.
#[derive(Debug, Clone)]
pub struct StepDef {
    /// Name, unique in the saga.
    pub name: &'static str,
    /// Behaviour on failure.
    pub kind: StepKind,
    /// Name of the compensation, if the step has one.
    pub compensation: Option<&'static str>,
    /// Deadline of one attempt.
    pub timeout: Duration,
}

/// A saga: its steps in order and its retry policies.
#[derive(Debug, Clone)]
pub struct SagaDef {
    /// Saga type name.
    pub name: &'static str,
    /// Steps in order.
    pub steps: Vec<StepDef>,
    /// Retries of compensatable steps; exhausting it compensates.
    pub forward_retry: RetryPolicy,
    /// Retries of the pivot, of the steps after it and of compensations; exhausting it parks
    /// the saga. The pivot is here because an unanswered capture may have happened: only a
    /// refusal proves it did not.
    pub persistent_retry: RetryPolicy,
    /// How long the saga may take before the pivot; past it, it compensates.
    pub deadline: Duration,
}

impl SagaDef {
    /// Index of the pivot step (or the number of steps when there is none).
    pub fn pivot(&self) -> usize {
        self.steps
            .iter()
            .position(|s| s.kind == StepKind::Pivot)
            .unwrap_or(self.steps.len())
    }

    /// The retry policy of a step attempted in a direction.
    pub fn retry_for(&self, step: usize, compensating: bool) -> &RetryPolicy {
        if compensating || self.steps[step].kind != StepKind::Compensatable {
            &self.persistent_retry
        } else {
            &self.forward_retry
        }
    }
}
