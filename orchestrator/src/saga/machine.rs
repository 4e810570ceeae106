//! The saga state machine as a functional core: [`decide`] says what to do next from the saga's
//! state; [`apply`] folds an attempt's outcome into that state and says how the saga moves. The
//! runner performs the commands and persists the results; tests drive this core with no
//! network and no database.

use std::time::Duration;

use super::definition::{SagaDef, StepKind};
use super::outcome::Outcome;

/// Which way the saga is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Running the steps' actions.
    Forward,
    /// Running compensations in reverse.
    Compensation,
}

impl Direction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Compensation => "compensation",
        }
    }
}

/// A saga's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStatus {
    /// Steps running forward.
    Running,
    /// Undoing what succeeded or may have.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// Everything that may have happened was undone.
    Compensated,
    /// A step kept failing past its bound; waits for an operator.
    NeedsAttention,
}

impl SagaStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Compensated => "compensated",
            SagaStatus::NeedsAttention => "needs_attention",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "running" => SagaStatus::Running,
            "compensating" => SagaStatus::Compensating,
            "completed" => SagaStatus::Completed,
            "compensated" => SagaStatus::Compensated,
            "needs_attention" => SagaStatus::NeedsAttention,
            _ => return None,
        })
    }

    /// True for the final states.
    pub fn is_terminal(self) -> bool {
        match self {
            SagaStatus::Completed | SagaStatus::Compensated => true,
            SagaStatus::Running | SagaStatus::Compensating | SagaStatus::NeedsAttention => false,
        }
    }
}

/// A step's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// Not attempted.
    Pending,
    /// Attempted, not finished.
    Running,
    /// Its action succeeded.
    Succeeded,
    /// Its action was refused.
    Failed,
    /// Its compensation is running.
    Compensating,
    /// Its compensation succeeded.
    Compensated,
}

impl StepStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Compensating => "compensating",
            StepStatus::Compensated => "compensated",
        }
    }

    /// Parses a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "compensating" => StepStatus::Compensating,
            "compensated" => StepStatus::Compensated,
            _ => return None,
        })
    }
}

/// What the saga knows about one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepState {
    /// Where the step stands.
    pub status: StepStatus,
    /// Forward attempts made (counted when written ahead).
    pub forward_attempts: u32,
    /// Compensation attempts made.
    pub compensation_attempts: u32,
    /// Forward attempts made before the last operator retry; the retry budget counts after.
    pub forward_retry_base: u32,
    /// Compensation attempts made before the last operator retry.
    pub compensation_retry_base: u32,
    /// True once an attempt succeeded, ended ambiguously or was interrupted: the step's effect
    /// may exist and must be compensated if the saga compensates.
    pub may_have_applied: bool,
}

impl StepState {
    /// A step not attempted yet.
    pub const NEW: StepState = StepState {
        status: StepStatus::Pending,
        forward_attempts: 0,
        compensation_attempts: 0,
        forward_retry_base: 0,
        compensation_retry_base: 0,
        may_have_applied: false,
    };
}

/// The saga state the machine reads.
#[derive(Debug, Clone)]
pub struct SagaState {
    /// Lifecycle state.
    pub status: SagaStatus,
    /// The step being worked on (forward), or the highest step still to compensate.
    pub step_index: usize,
    /// Per step.
    pub steps: Vec<StepState>,
    /// An operator or customer asked to cancel.
    pub cancel_requested: bool,
    /// The saga's deadline passed.
    pub deadline_passed: bool,
}

/// Why a saga stops going forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stable code (OUT_OF_STOCK, PAYMENT_DECLINED, CANCELLED, ...).
    pub reason: String,
    /// Details for people.
    pub message: String,
    /// The step concerned.
    pub step: String,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send attempt `number` of a step's action or compensation (written ahead first).
    Attempt {
        /// Step index.
        step: usize,
        /// Action or compensation.
        direction: Direction,
        /// 1 for the first attempt of this direction.
        number: u32,
    },
    /// Stop going forward and compensate.
    Compensate(Failure),
    /// The saga is over, or waits for an operator: nothing to do.
    Idle,
    /// Every step succeeded.
    Complete,
    /// Everything was compensated.
    FinishCompensation,
}

/// How an attempt's outcome moves the saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Carry on: decide again at once.
    Continue,
    /// Try the same step again after a delay.
    RetryAfter(Duration),
    /// Stop going forward and compensate.
    Compensate(Failure),
    /// Park the saga for an operator.
    Park(Failure),
}

/// The highest step at or below `from` whose effect may exist and is not compensated yet.
pub fn next_to_compensate(def: &SagaDef, state: &SagaState, from: usize) -> Option<usize> {
    (0..=from.min(def.steps.len().saturating_sub(1)))
        .rev()
        .find(|&i| {
            let step = &state.steps[i];
            def.steps[i].compensation.is_some()
                && step.may_have_applied
                && step.status != StepStatus::Compensated
        })
}

/// What to do next.
pub fn decide(def: &SagaDef, state: &SagaState) -> Decision {
    match state.status {
        SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::NeedsAttention => {
            Decision::Idle
        }
        SagaStatus::Running => {
            if state.step_index >= def.steps.len() {
                return Decision::Complete;
            }
            let step = &def.steps[state.step_index];
            let pivot_done = state.step_index > def.pivot();
            if !pivot_done && (state.cancel_requested || state.deadline_passed) {
                let (reason, message) = if state.cancel_requested {
                    ("CANCELLED", "the checkout was cancelled")
                } else {
                    ("DEADLINE_EXCEEDED", "the checkout ran past its deadline")
                };
                return Decision::Compensate(Failure {
                    reason: reason.to_owned(),
                    message: message.to_owned(),
                    step: step.name.to_owned(),
                });
            }
            Decision::Attempt {
                step: state.step_index,
                direction: Direction::Forward,
                number: state.steps[state.step_index].forward_attempts + 1,
            }
        }
        SagaStatus::Compensating => match next_to_compensate(def, state, state.step_index) {
            Some(step) => Decision::Attempt {
                step,
                direction: Direction::Compensation,
                number: state.steps[step].compensation_attempts + 1,
            },
            None => Decision::FinishCompensation,
        },
    }
}

/// Folds an attempt's outcome into the saga state. `reason` and `message` describe a failure
/// (the refusal's ErrorInfo reason, or the status code name).
pub fn apply(
    def: &SagaDef,
    state: &mut SagaState,
    step: usize,
    direction: Direction,
    outcome: Outcome,
    reason: &str,
    message: &str,
) -> Transition {
    let kind = def.steps[step].kind;
    let name = def.steps[step].name;
    let failure = |reason: &str| Failure {
        reason: reason.to_owned(),
        message: message.to_owned(),
        step: name.to_owned(),
    };
    let s = &mut state.steps[step];
    match (direction, outcome) {
        (Direction::Forward, Outcome::Success) => {
            s.status = StepStatus::Succeeded;
            s.may_have_applied = true;
            state.step_index = step + 1;
            Transition::Continue
        }
        (Direction::Forward, Outcome::BusinessFailure) => {
            s.status = StepStatus::Failed;
            if kind == StepKind::Retriable {
                Transition::Park(failure(reason))
            } else {
                Transition::Compensate(failure(reason))
            }
        }
        (Direction::Forward, Outcome::Transient | Outcome::Ambiguous) => {
            s.may_have_applied |= outcome == Outcome::Ambiguous;
            let policy = def.retry_for(step, false);
            let used = s.forward_attempts.saturating_sub(s.forward_retry_base);
            if policy.allows_another(used) {
                Transition::RetryAfter(policy.delay(used))
            } else if kind == StepKind::Compensatable {
                Transition::Compensate(failure("STEP_RETRIES_EXHAUSTED"))
            } else {
                Transition::Park(failure("STEP_RETRIES_EXHAUSTED"))
            }
        }
        (Direction::Compensation, Outcome::Success) => {
            s.status = StepStatus::Compensated;
            state.step_index = step.saturating_sub(1);
            Transition::Continue
        }
        (Direction::Compensation, Outcome::BusinessFailure) => {
            Transition::Park(failure("COMPENSATION_REFUSED"))
        }
        (Direction::Compensation, Outcome::Transient | Outcome::Ambiguous) => {
            let policy = def.retry_for(step, true);
            let used = s
                .compensation_attempts
                .saturating_sub(s.compensation_retry_base);
            if policy.allows_another(used) {
                Transition::RetryAfter(policy.delay(used))
            } else {
                Transition::Park(failure("COMPENSATION_RETRIES_EXHAUSTED"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::definition::StepDef;
    use super::*;
    use checkout_kit::retry::RetryPolicy;

    fn def() -> SagaDef {
        let step = |name, kind, compensation| StepDef {
            name,
            kind,
            compensation,
            timeout: Duration::from_secs(1),
        };
        let policy = |max| RetryPolicy {
            initial_interval: Duration::ZERO,
            multiplier: 1.0,
            max_interval: Duration::ZERO,
            max_attempts: Some(max),
        };
        SagaDef {
            name: "test",
            steps: vec![
                step("a", StepKind::Compensatable, Some("undo_a")),
                step("b", StepKind::Compensatable, Some("undo_b")),
                step("c", StepKind::Compensatable, None),
                step("pivot", StepKind::Pivot, None),
                step("d", StepKind::Retriable, None),
            ],
            forward_retry: policy(3),
            persistent_retry: policy(5),
            deadline: Duration::from_secs(60),
        }
    }

    fn fresh(def: &SagaDef) -> SagaState {
        SagaState {
            status: SagaStatus::Running,
            step_index: 0,
            steps: vec![StepState::NEW; def.steps.len()],
            cancel_requested: false,
            deadline_passed: false,
        }
    }

    /// Runs the machine with scripted outcomes (cycled when exhausted) until it is idle;
    /// returns the attempts made, in order.
    fn run(
        def: &SagaDef,
        state: &mut SagaState,
        mut outcome_of: impl FnMut(usize, Direction) -> Outcome,
    ) -> Vec<(usize, Direction)> {
        let mut attempts = Vec::new();
        for _ in 0..500 {
            match decide(def, state) {
                Decision::Idle => return attempts,
                Decision::Complete => state.status = SagaStatus::Completed,
                Decision::FinishCompensation => state.status = SagaStatus::Compensated,
                Decision::Compensate(_) => {
                    state.status = SagaStatus::Compensating;
                    state.step_index = state.step_index.min(def.steps.len() - 1);
                }
                Decision::Attempt {
                    step, direction, ..
                } => {
                    let s = &mut state.steps[step];
                    match direction {
                        Direction::Forward => s.forward_attempts += 1,
                        Direction::Compensation => s.compensation_attempts += 1,
                    }
                    attempts.push((step, direction));
                    let outcome = outcome_of(step, direction);
                    match apply(def, state, step, direction, outcome, "R", "m") {
                        Transition::Continue | Transition::RetryAfter(_) => {}
                        Transition::Compensate(_) => {
                            state.status = SagaStatus::Compensating;
                        }
                        Transition::Park(_) => state.status = SagaStatus::NeedsAttention,
                    }
                }
            }
        }
        panic!("the saga never settled");
    }

    #[test]
    fn all_success_completes_in_order() {
        let def = def();
        let mut state = fresh(&def);
        let attempts = run(&def, &mut state, |_, _| Outcome::Success);
        assert_eq!(state.status, SagaStatus::Completed);
        let steps: Vec<usize> = attempts.iter().map(|a| a.0).collect();
        assert_eq!(steps, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_business_failure_compensates_what_succeeded_in_reverse() {
        let def = def();
        let mut state = fresh(&def);
        let attempts = run(&def, &mut state, |step, _| {
            if step == 2 {
                Outcome::BusinessFailure
            } else {
                Outcome::Success
            }
        });
        assert_eq!(state.status, SagaStatus::Compensated);
        let compensations: Vec<usize> = attempts
            .iter()
            .filter(|a| a.1 == Direction::Compensation)
            .map(|a| a.0)
            .collect();
        assert_eq!(compensations, [1, 0]);
    }

    #[test]
    fn an_ambiguous_step_is_compensated_too() {
        let def = def();
        let mut state = fresh(&def);
        let attempts = run(&def, &mut state, |step, direction| {
            if step == 1 && direction == Direction::Forward {
                Outcome::Ambiguous
            } else {
                Outcome::Success
            }
        });
        assert_eq!(state.status, SagaStatus::Compensated);
        assert_eq!(
            attempts
                .iter()
                .filter(|a| *a == &(1, Direction::Forward))
                .count(),
            3
        );
        assert!(attempts.contains(&(1, Direction::Compensation)));
        assert!(attempts.contains(&(0, Direction::Compensation)));
    }

    #[test]
    fn after_the_pivot_failures_park_and_never_compensate() {
        let def = def();
        let mut state = fresh(&def);
        let attempts = run(&def, &mut state, |step, _| {
            if step == 4 {
                Outcome::Transient
            } else {
                Outcome::Success
            }
        });
        assert_eq!(state.status, SagaStatus::NeedsAttention);
        assert!(attempts.iter().all(|a| a.1 == Direction::Forward));
        assert_eq!(attempts.iter().filter(|a| a.0 == 4).count(), 5);
    }

    #[test]
    fn an_unanswered_pivot_is_never_compensated() {
        let def = def();
        let mut state = fresh(&def);
        let attempts = run(&def, &mut state, |step, _| {
            if step == 3 {
                Outcome::Ambiguous
            } else {
                Outcome::Success
            }
        });
        assert_eq!(state.status, SagaStatus::NeedsAttention);
        assert!(attempts.iter().all(|a| a.1 == Direction::Forward));
        assert_eq!(attempts.iter().filter(|a| a.0 == 3).count(), 5);
    }

    #[test]
    fn cancel_before_the_pivot_compensates_and_after_it_is_ignored() {
        let def = def();
        let mut state = fresh(&def);
        state.step_index = 2;
        state.steps[0].status = StepStatus::Succeeded;
        state.steps[0].may_have_applied = true;
        state.steps[1].status = StepStatus::Succeeded;
        state.steps[1].may_have_applied = true;
        state.cancel_requested = true;
        assert!(matches!(decide(&def, &state), Decision::Compensate(f) if f.reason == "CANCELLED"));

        state.step_index = 4;
        assert!(matches!(
            decide(&def, &state),
            Decision::Attempt { step: 4, .. }
        ));
    }

    /// Every sequence of outcomes ends completed, compensated or parked; compensation never
    /// touches a step after the pivot, and never compensates a step twice.
    #[test]
    fn any_outcome_sequence_settles_safely() {
        let def = def();
        let outcomes = [
            Outcome::Success,
            Outcome::BusinessFailure,
            Outcome::Transient,
            Outcome::Ambiguous,
        ];
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut state = fresh(&def);
            let attempts = run(&def, &mut state, |_, _| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Success is common so sagas get far; failures still show up often.
                let r = (seed % 10) as usize;
                if r < 6 {
                    Outcome::Success
                } else {
                    outcomes[r - 6]
                }
            });
            assert!(matches!(
                state.status,
                SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::NeedsAttention
            ));
            let compensated: Vec<usize> = attempts
                .iter()
                .filter(|a| a.1 == Direction::Compensation)
                .map(|a| a.0)
                .collect();
            assert!(compensated.iter().all(|s| *s < def.pivot()));
            let pivot_succeeded = state.steps[def.pivot()].status == StepStatus::Succeeded;
            if pivot_succeeded {
                assert!(compensated.is_empty(), "no compensation after the pivot");
            }
            let done: Vec<usize> = (0..def.steps.len())
                .filter(|i| state.steps[*i].status == StepStatus::Compensated)
                .collect();
            let mut unique = done.clone();
            unique.dedup();
            assert_eq!(done, unique);
            if state.status == SagaStatus::Compensated {
                for (i, step) in state.steps.iter().enumerate() {
                    if step.may_have_applied && def.steps[i].compensation.is_some() {
                        assert_eq!(step.status, StepStatus::Compensated, "step {i} left behind");
                    }
                }
            }
        }
    }
}
