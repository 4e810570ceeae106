//! The imperative shell around the saga machine: claims a saga's lease, writes each attempt
//! ahead of its command, sends the command, records the result, and loops until the saga is
//! over or parked. One durable write per step: a result is stored with the next step's
//! write-ahead record (or with the saga's end), through the [`journal`](crate::journal) that
//! group-commits all drivers' writes. A bounded pool of workers drives sagas; a sweeper resumes
//! those whose lease lapsed (a crashed replica) or whose retry is due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkout_kit::db::{Db, DbError, now_millis};
use checkout_kit::shutdown::Shutdown;
use checkout_kit::status::{error_chain, reason_of};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::Status;

use crate::changes::{Changes, Watch};
use crate::journal::{Journal, SagaWrite, Saved};
use crate::metrics::{attr, metrics};
use crate::saga::definition::SagaDef;
use crate::saga::machine::{
    self, Decision, Direction, Failure, SagaState, SagaStatus, StepState, StepStatus, Transition,
};
use crate::saga::outcome::{Outcome, classify};
use crate::store::{self, AttemptRow, NewEvent, SagaRow, StepRow};
use checkout_kit::telemetry;
use tracing::Instrument;

/// One command the engine asks a saga's executor to send.
#[derive(Debug)]
pub struct StepCall<'a> {
    /// The saga (and checkout) id.
    pub saga_id: &'a str,
    /// Step name.
    pub step: &'a str,
    /// Action or compensation.
    pub direction: Direction,
    /// The command's request id: the same for every attempt of this step and direction.
    pub request_id: &'a str,
    /// The saga's input.
    pub input: &'a Value,
    /// Outputs of the steps that succeeded, by step name.
    pub outputs: &'a serde_json::Map<String, Value>,
    /// Deadline of this attempt.
    pub timeout: Duration,
}

/// Sends a saga's commands.
#[tonic::async_trait]
pub trait StepExecutor: Send + Sync + 'static {
    /// Sends one step's action or compensation; returns its output on success.
    async fn execute(&self, call: StepCall<'_>) -> Result<Value, Status>;
}

/// The request id of a step's action or compensation: derived from saga, step and direction,
/// so a command re-sent after a crash or a timeout is the same command.
pub fn request_id(saga_id: &str, step: &str, direction: Direction) -> String {
    let digest = Sha256::new()
        .chain_update(saga_id.as_bytes())
        .chain_update(b"/")
        .chain_update(step.as_bytes())
        .chain_update(b"/")
        .chain_update(direction.as_str().as_bytes())
        .finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).to_string()
}

/// Named points where a test can make the orchestrator process abort, to prove recovery:
/// `after_write_ahead:<step>` (the attempt is recorded, the command not sent),
/// `after_send:<step>` (the command returned, its result not recorded),
/// `after_record:<step>` (the result is recorded). A point without `:<step>` fires on any step.
#[derive(Debug, Clone, Default)]
pub struct CrashPoints(Vec<String>);

impl CrashPoints {
    /// Parses a comma-separated list.
    pub fn parse(list: &str) -> Self {
        Self(
            list.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    fn hit(&self, point: &str, step: &str) {
        if self
            .0
            .iter()
            .any(|p| p == point || *p == format!("{point}:{step}"))
        {
            eprintln!("crash point {point}:{step} reached; aborting");
            std::process::abort();
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This replica's name in leases.
    pub replica_id: String,
    /// Sagas driven at once.
    pub workers: usize,
    /// How long a lease lasts without renewal.
    pub lease_ttl: Duration,
    /// How often the sweeper looks for due sagas.
    pub sweep_interval: Duration,
    /// Crash points (tests only).
    pub crash_points: CrashPoints,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            replica_id: format!("orchestrator-{}", uuid::Uuid::new_v4().simple()),
            workers: 64,
            lease_ttl: Duration::from_secs(15),
            sweep_interval: Duration::from_millis(500),
            crash_points: CrashPoints::default(),
        }
    }
}

/// Why driving a saga stopped with an error (it is resumed later by the sweeper).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A stored saga could not be read.
    #[error("saga {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// The saga engine of one replica.
#[derive(Clone)]
pub struct Engine {
    db: Db,
    def: Arc<SagaDef>,
    executor: Arc<dyn StepExecutor>,
    journal: Journal,
    config: EngineConfig,
    permits: Arc<Semaphore>,
    /// Sagas this replica drives now; `true` asks the driver to look again when it ends.
    active: Arc<Mutex<HashMap<String, bool>>>,
    changes: Changes,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("saga", &self.def.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn finished(saga: &SagaRow, now: i64) {
    let outcome = [attr("outcome", saga.status.clone())];
    metrics().finished.add(1, &outcome);
    #[allow(clippy::cast_precision_loss)]
    let took = (now - saga.created_at).max(0) as f64;
    metrics().saga_duration.record(took, &outcome);
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn index(i: i64) -> usize {
    usize::try_from(i).unwrap_or(0)
}

fn state_of(saga: &SagaRow, steps: &[StepRow], now: i64) -> Result<SagaState, EngineError> {
    let corrupt = |what: &str| EngineError::Corrupt(saga.saga_id.clone(), what.to_owned());
    Ok(SagaState {
        status: SagaStatus::parse(&saga.status).ok_or_else(|| corrupt("status"))?,
        step_index: index(saga.step_index),
        steps: steps
            .iter()
            .map(|s| {
                Ok(StepState {
                    status: StepStatus::parse(&s.status).ok_or_else(|| corrupt("step status"))?,
                    forward_attempts: u32::try_from(s.forward_attempts).unwrap_or(u32::MAX),
                    compensation_attempts: u32::try_from(s.compensation_attempts)
                        .unwrap_or(u32::MAX),
                    forward_retry_base: u32::try_from(s.forward_retry_base).unwrap_or(u32::MAX),
                    compensation_retry_base: u32::try_from(s.compensation_retry_base)
                        .unwrap_or(u32::MAX),
                    may_have_applied: s.may_have_applied,
                })
            })
            .collect::<Result<_, EngineError>>()?,
        cancel_requested: saga.cancel_requested,
        deadline_passed: now > saga.deadline_at,
    })
}

/// An attempt as written ahead of its command: in flight, its request id the one every
/// attempt of the step in that direction sends.
fn in_flight(
    saga_id: &str,
    step: usize,
    name: &str,
    direction: Direction,
    number: u32,
) -> AttemptRow {
    AttemptRow {
        step_index: i64::try_from(step).unwrap_or(i64::MAX),
        direction: direction.as_str().to_owned(),
        number: i64::from(number),
        request_id: request_id(saga_id, name, direction),
        outcome: "in_flight".to_owned(),
        status_code: String::new(),
        message: String::new(),
        started_at: now_millis(),
        ended_at: None,
    }
}

/// The timeline event of an attempt written ahead.
fn started_event(direction: Direction, label: &str, number: u32, status: &str) -> NewEvent {
    NewEvent {
        kind: match direction {
            Direction::Forward => "step_started",
            Direction::Compensation => "compensation_step_started",
        },
        step: label.to_owned(),
        message: format!("attempt {number}"),
        status: status.to_owned(),
    }
}

fn step_row(i: usize, name: &str, s: &StepState) -> StepRow {
    StepRow {
        step_index: i64::try_from(i).unwrap_or(i64::MAX),
        name: name.to_owned(),
        status: s.status.as_str().to_owned(),
        forward_attempts: i64::from(s.forward_attempts),
        compensation_attempts: i64::from(s.compensation_attempts),
        forward_retry_base: i64::from(s.forward_retry_base),
        compensation_retry_base: i64::from(s.compensation_retry_base),
        may_have_applied: s.may_have_applied,
    }
}

/// What a finished attempt said: outcome, the refusal's reason, its message and code name.
fn describe(result: &Result<Value, Status>) -> (Outcome, String, String, String) {
    match result {
        Ok(_) => (
            Outcome::Success,
            String::new(),
            String::new(),
            "OK".to_owned(),
        ),
        Err(status) => {
            let code = format!("{:?}", status.code());
            let reason = reason_of(status).unwrap_or_else(|| code.to_uppercase());
            (
                classify(status.code()),
                reason,
                status.message().to_owned(),
                code,
            )
        }
    }
}

impl Engine {
    /// An engine for one saga definition over the orchestrator's database. Starts the journal
    /// that group-commits its writes, so it must be called on a Tokio runtime.
    pub fn new(
        db: Db,
        def: SagaDef,
        executor: Arc<dyn StepExecutor>,
        config: EngineConfig,
    ) -> Self {
        Self {
            journal: Journal::spawn(db.clone()),
            db,
            permits: Arc::new(Semaphore::new(config.workers.max(1))),
            def: Arc::new(def),
            executor,
            config,
            active: Arc::default(),
            changes: Changes::default(),
        }
    }

    /// The saga definition.
    pub fn definition(&self) -> &SagaDef {
        &self.def
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Watches one saga's changes on this replica (other replicas' changes are seen by
    /// polling).
    pub fn watch(&self, saga_id: &str) -> Watch {
        self.changes.watch(saga_id)
    }

    /// Announces a change made outside the driver (a cancel, a retry).
    pub fn announce(&self, saga_id: &str) {
        self.changes.publish(saga_id, None);
    }

    /// Drives a saga on a worker. If this replica drives it already, the driver looks again
    /// once it is done (a cancel or an operator retry may have arrived as it was finishing).
    pub fn start(&self, saga_id: &str) {
        self.start_with(saga_id, Begin::Claim);
    }

    /// Drives a saga this replica has just stored, leased to itself, as `saga` shows it: it
    /// is neither claimed nor read back. With `first` (stored with the saga, see
    /// [`Engine::first_write_ahead`]) its first attempt is sent without being written again.
    pub fn start_new(&self, saga: SagaRow, first: Option<&WriteAhead>) {
        let saga_id = saga.saga_id.clone();
        let written_ahead = first.is_some();
        self.start_with(
            &saga_id,
            Begin::Fresh {
                saga: Box::new(saga),
                written_ahead,
            },
        );
    }

    /// The first step's write-ahead record of a saga about to be stored: every step (the first
    /// one running its first attempt), that attempt in flight, and its timeline event. Stored
    /// in the same transaction as the saga, it spares each saga one durable journal write (the
    /// driver's first), and [`Engine::start_new`] then sends the attempt at once. A fresh saga
    /// always begins with it: it is running, has no cancel and is within its deadline. `None`
    /// for a saga without steps.
    pub fn first_write_ahead(&self, saga: &mut SagaRow) -> Option<WriteAhead> {
        let first = self.def.steps.first()?;
        let mut states = vec![StepState::NEW; self.def.steps.len()];
        states[0].forward_attempts = 1;
        states[0].status = StepStatus::Running;
        saga.step_index = 0;
        saga.pivot_started |= self.def.pivot() == 0;
        Some(WriteAhead {
            steps: states
                .iter()
                .enumerate()
                .map(|(i, s)| step_row(i, self.def.steps[i].name, s))
                .collect(),
            attempt: in_flight(&saga.saga_id, 0, first.name, Direction::Forward, 1),
            event: started_event(Direction::Forward, first.name, 1, &saga.status),
        })
    }

    fn start_with(&self, saga_id: &str, begin: Begin) {
        {
            let Ok(mut active) = self.active.lock() else {
                return;
            };
            if let Some(again) = active.get_mut(saga_id) {
                *again = true;
                return;
            }
            active.insert(saga_id.to_owned(), false);
        }
        let engine = self.clone();
        let saga_id = saga_id.to_owned();
        tokio::spawn(async move {
            let mut begin = Some(begin);
            loop {
                if let Ok(_permit) = engine.permits.clone().acquire_owned().await
                    && let Err(e) = engine
                        .drive_from(&saga_id, begin.take().unwrap_or(Begin::Claim))
                        .await
                {
                    tracing::warn!(%saga_id, error = %error_chain(&e), "driving the saga stopped; the sweeper resumes it");
                }
                let Ok(mut active) = engine.active.lock() else {
                    return;
                };
                match active.get_mut(&saga_id) {
                    Some(again) if *again => *again = false,
                    _ => {
                        active.remove(&saga_id);
                        return;
                    }
                }
            }
        });
    }

    /// Resumes due sagas until shutdown: new ones whose start was lost, retries that are due,
    /// and sagas whose driver's lease lapsed.
    pub fn spawn_sweeper(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.clone().requested() => return,
                    () = tokio::time::sleep(engine.config.sweep_interval) => {}
                }
                match engine.sweep().await {
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %error_chain(&e), "saga sweep failed"),
                }
            }
        })
    }

    /// One sweep: starts every due saga this replica can take; returns how many.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let room = i64::try_from(self.permits.available_permits().max(1)).unwrap_or(1);
        let mut conn = self.db.single_read().await?;
        let due = store::due(&mut conn, &self.config.replica_id, now_millis(), room).await?;
        conn.rollback().await?;
        for saga_id in &due {
            self.start(saga_id);
        }
        Ok(due.len())
    }

    fn lease_until(&self) -> i64 {
        now_millis().saturating_add(millis(self.config.lease_ttl))
    }

    async fn load(&self, saga_id: &str) -> Result<(SagaRow, Vec<StepRow>), EngineError> {
        let mut tx = self.db.begin_read().await?;
        let saga = store::saga(&mut tx, saga_id)
            .await?
            .ok_or_else(|| EngineError::Corrupt(saga_id.to_owned(), "missing".to_owned()))?;
        let steps = store::steps(&mut tx, saga_id).await?;
        tx.rollback().await?;
        Ok((saga, steps))
    }

    /// Takes a saga's lease; attempts a crashed driver left in flight are marked ambiguous.
    async fn claim(&self, saga_id: &str, owner: &str) -> Result<bool, EngineError> {
        let mut tx = self.db.begin().await?;
        let claimed =
            store::claim(&mut tx, saga_id, owner, self.lease_until(), now_millis()).await?;
        if claimed {
            // Attempts a crashed driver left in flight may have taken effect.
            let interrupted = store::interrupt_in_flight(&mut tx, saga_id, now_millis()).await?;
            for step in interrupted {
                let mut steps = store::steps(&mut tx, saga_id).await?;
                if let Some(row) = steps.get_mut(index(step)) {
                    row.may_have_applied = true;
                    store::save_steps(&mut tx, &[(saga_id, row)]).await?;
                }
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    /// Drives one saga until it is over, parked, or taken over.
    pub async fn drive(&self, saga_id: &str) -> Result<(), EngineError> {
        self.drive_from(saga_id, Begin::Claim).await
    }

    async fn drive_from(&self, saga_id: &str, begin: Begin) -> Result<(), EngineError> {
        let owner = self.config.replica_id.clone();
        let mut first_written_ahead = false;
        let (saga, steps) = match begin {
            Begin::Claim => {
                if !self.claim(saga_id, &owner).await? {
                    return Ok(());
                }
                self.load(saga_id).await?
            }
            Begin::Fresh {
                saga,
                written_ahead,
            } => {
                // As the driver sees them before its first attempt: that attempt's records, if
                // stored with the saga, are made again in memory as it is sent.
                let steps = (0..self.def.steps.len())
                    .map(|i| step_row(i, self.def.steps[i].name, &StepState::NEW))
                    .collect();
                first_written_ahead = written_ahead;
                (*saga, steps)
            }
        };
        if saga.lease_owner.as_deref() != Some(owner.as_str()) {
            return Ok(());
        }
        let span =
            tracing::info_span!("saga.drive", otel.name = "saga checkout", saga_id = %saga_id);
        if !saga.trace_context.is_empty() {
            // A saga resumed after a restart continues the trace of the request that started it.
            telemetry::adopt(&span, telemetry::context_of(&saga.trace_context));
        }
        let result = self
            .drive_owned(saga, steps, &owner, first_written_ahead)
            .instrument(span)
            .await;
        if !matches!(result, Ok(Stop::Released)) {
            let mut tx = self.db.begin().await?;
            store::release(&mut tx, saga_id, &owner).await?;
            tx.commit().await?;
            self.announce(saga_id);
        }
        result.map(|_| ())
    }

    async fn drive_owned(
        &self,
        mut saga: SagaRow,
        steps: Vec<StepRow>,
        owner: &str,
        mut first_written_ahead: bool,
    ) -> Result<Stop, EngineError> {
        let corrupt =
            |e: serde_json::Error| EngineError::Corrupt(saga.saga_id.clone(), e.to_string());
        let input: Value = serde_json::from_str(&saga.input).map_err(corrupt)?;
        let mut outputs: serde_json::Map<String, Value> =
            serde_json::from_str(&saga.outputs).map_err(corrupt)?;
        let mut state = state_of(&saga, &steps, now_millis())?;
        // A result not stored yet: it goes with the next write-ahead record (or the end).
        let mut pending = Pending::default();
        loop {
            let now = now_millis();
            // The saga row is the truth for the saga-level fields; steps live in `state`.
            state.status = SagaStatus::parse(&saga.status)
                .ok_or_else(|| EngineError::Corrupt(saga.saga_id.clone(), "status".to_owned()))?;
            state.step_index = index(saga.step_index);
            state.cancel_requested = saga.cancel_requested;
            state.deadline_passed = now > saga.deadline_at;
            // A first attempt stored with the saga is sent whatever the clock says now: its
            // record says it may be in flight.
            let written_ahead = std::mem::take(&mut first_written_ahead);
            let decision = if written_ahead {
                Decision::Attempt {
                    step: 0,
                    direction: Direction::Forward,
                    number: 1,
                }
            } else {
                machine::decide(&self.def, &state)
            };
            match decision {
                Decision::Idle => {
                    if !pending.is_empty() {
                        self.save(&mut saga, &mut state, owner, &pending, false)
                            .await?;
                    }
                    return Ok(Stop::Held);
                }
                Decision::Complete | Decision::FinishCompensation => {
                    let completed = saga.status == SagaStatus::Running.as_str();
                    let message = if completed {
                        saga.status = SagaStatus::Completed.as_str().to_owned();
                        "the order is reserved, paid and shippable".to_owned()
                    } else {
                        saga.status = SagaStatus::Compensated.as_str().to_owned();
                        format!("every step was undone ({})", saga.failure_reason)
                    };
                    let kind = if completed {
                        "completed"
                    } else {
                        "compensated"
                    };
                    pending.event(kind, "", message, &saga.status);
                    if !self
                        .save(&mut saga, &mut state, owner, &pending, true)
                        .await?
                    {
                        return Ok(Stop::Held);
                    }
                    finished(&saga, now);
                    return Ok(Stop::Released);
                }
                Decision::Compensate(failure) => {
                    self.begin_compensation(&mut saga, &failure);
                    let message = format!("{}: {}", failure.reason, failure.message);
                    pending.event("compensation_started", &failure.step, message, &saga.status);
                }
                Decision::Attempt {
                    step,
                    direction,
                    number,
                } => {
                    let attempt = Attempt {
                        step,
                        direction,
                        number,
                        input: &input,
                        written_ahead,
                    };
                    let before = std::mem::take(&mut pending);
                    match self
                        .attempt(&mut saga, &mut state, &mut outputs, owner, before, attempt)
                        .await?
                    {
                        Attempted::Fenced => return Ok(Stop::Held),
                        Attempted::Parked => return Ok(Stop::Released),
                        Attempted::Recorded(next) => pending = *next,
                        Attempted::Cancelled => {}
                        Attempted::RetryAfter(delay) => {
                            tokio::time::sleep(delay).await;
                            // A cancel or an operator may have acted while the saga waited.
                            let (fresh, steps) = self.load(&saga.saga_id).await?;
                            if fresh.version != saga.version
                                || fresh.lease_owner.as_deref() != Some(owner)
                            {
                                return Ok(Stop::Held);
                            }
                            state = state_of(&fresh, &steps, now_millis())?;
                            saga = fresh;
                        }
                    }
                }
            }
        }
    }

    fn begin_compensation(&self, saga: &mut SagaRow, failure: &Failure) {
        saga.status = SagaStatus::Compensating.as_str().to_owned();
        saga.direction = Direction::Compensation.as_str().to_owned();
        saga.step_index = saga
            .step_index
            .min(i64::try_from(self.def.steps.len()).unwrap_or(i64::MAX) - 1);
        saga.failure_reason = failure.reason.clone();
        saga.failure_message = failure.message.clone();
        saga.failure_step = failure.step.clone();
    }

    /// Stores the saga row (fenced) with the pending records through the journal, giving the
    /// lease back with `release`; false when fenced off.
    async fn save(
        &self,
        saga: &mut SagaRow,
        state: &mut SagaState,
        owner: &str,
        pending: &Pending,
        release: bool,
    ) -> Result<bool, EngineError> {
        let mut row = saga.clone();
        row.updated_at = now_millis();
        let pivot_write_ahead = pending.started.as_ref().is_some_and(|a| {
            index(a.step_index) == self.def.pivot() && a.direction == Direction::Forward.as_str()
        });
        row.pivot_started |= pivot_write_ahead;
        let mut changed = pending.steps.clone();
        changed.sort_unstable();
        changed.dedup();
        let write = SagaWrite {
            saga: row,
            owner: owner.to_owned(),
            lease_expires_at: self.lease_until(),
            require_no_cancel: pivot_write_ahead,
            release,
            steps: changed
                .iter()
                .map(|&i| step_row(i, self.def.steps[i].name, &state.steps[i]))
                .collect(),
            finished: pending.finished.clone(),
            started: pending.started.clone(),
            events: pending.events.clone(),
        };
        let Saved::Written { cancel_requested } = self.journal.write(write).await? else {
            return Ok(false);
        };
        saga.version += 1;
        saga.pivot_started |= pivot_write_ahead;
        saga.cancel_requested = cancel_requested;
        state.cancel_requested = cancel_requested;
        if release {
            saga.lease_owner = None;
        }
        self.changes
            .publish(&saga.saga_id, Some(saga.status.clone()));
        for a in &pending.finished {
            let step = self.def.steps[index(a.step_index)].name;
            self.config.crash_points.hit("after_record", step);
        }
        if let Some(a) = &pending.started {
            let step = self.def.steps[index(a.step_index)].name;
            self.config.crash_points.hit("after_write_ahead", step);
        }
        Ok(true)
    }

    /// One attempt: written ahead (with the records `before` it), sent, and its result folded
    /// into the saga — stored at once when the saga waits or parks, otherwise handed back to go
    /// with the next write.
    async fn attempt(
        &self,
        saga: &mut SagaRow,
        state: &mut SagaState,
        outputs: &mut serde_json::Map<String, Value>,
        owner: &str,
        before: Pending,
        a: Attempt<'_>,
    ) -> Result<Attempted, EngineError> {
        let Attempt {
            step,
            direction,
            number,
            input,
            written_ahead,
        } = a;
        let def = &self.def.steps[step];
        let label = match direction {
            Direction::Forward => def.name,
            Direction::Compensation => def.compensation.unwrap_or(def.name),
        };
        let undo = (state.steps[step], saga.step_index);
        {
            let s = &mut state.steps[step];
            match direction {
                Direction::Forward => {
                    s.forward_attempts = number;
                    s.status = StepStatus::Running;
                }
                Direction::Compensation => {
                    s.compensation_attempts = number;
                    s.status = StepStatus::Compensating;
                }
            }
        }
        if direction == Direction::Forward {
            saga.step_index = i64::try_from(step).unwrap_or(i64::MAX);
        }
        let mut attempt = in_flight(&saga.saga_id, step, def.name, direction, number);
        let mut ahead = before.clone();
        ahead.steps.push(step);
        ahead.started = Some(attempt.clone());
        ahead
            .events
            .push(started_event(direction, label, number, &saga.status));
        if written_ahead && before.is_empty() {
            // Stored with the saga already.
            self.config.crash_points.hit("after_write_ahead", def.name);
        } else if !self.save(saga, state, owner, &ahead, false).await? {
            let pivot = direction == Direction::Forward && step == self.def.pivot();
            if !pivot {
                return Ok(Attempted::Fenced);
            }
            // A cancel may have beaten the pivot: store what came before without the
            // write-ahead; the next decision compensates.
            state.steps[step] = undo.0;
            saga.step_index = undo.1;
            if !self.save(saga, state, owner, &before, false).await? {
                return Ok(Attempted::Fenced);
            }
            return Ok(Attempted::Cancelled);
        }

        let span = tracing::info_span!(
            "saga.step",
            otel.name = %label,
            otel.kind = "client",
            saga_id = %saga.saga_id,
            step = def.name,
            direction = direction.as_str(),
            attempt = number,
        );
        let sent = std::time::Instant::now();
        let result = self
            .executor
            .execute(StepCall {
                saga_id: &saga.saga_id,
                step: def.name,
                direction,
                request_id: &attempt.request_id,
                input,
                outputs,
                timeout: def.timeout,
            })
            .instrument(span)
            .await;
        let took = sent.elapsed().as_secs_f64() * 1000.0;
        self.config.crash_points.hit("after_send", def.name);

        let (outcome, reason, message, code) = describe(&result);
        metrics().step_duration.record(
            took,
            &[
                attr("step", def.name),
                attr("direction", direction.as_str()),
                attr("outcome", outcome.as_str()),
            ],
        );
        if let (Ok(output), Direction::Forward) = (result, direction) {
            outputs.insert(def.name.to_owned(), output);
            saga.outputs = serde_json::to_string(&*outputs)
                .map_err(|e| EngineError::Corrupt(saga.saga_id.clone(), e.to_string()))?;
        }
        let transition = machine::apply(
            &self.def, state, step, direction, outcome, &reason, &message,
        );
        attempt.outcome = outcome.as_str().to_owned();
        attempt.status_code = code;
        attempt.message = message.clone();
        attempt.ended_at = Some(now_millis());
        saga.step_index = i64::try_from(state.step_index).unwrap_or(i64::MAX);
        let (kind, note) = match (&transition, direction) {
            (Transition::Continue, Direction::Forward) => ("step_succeeded", String::new()),
            (Transition::Continue, Direction::Compensation) => ("step_compensated", String::new()),
            (Transition::RetryAfter(d), _) => {
                saga.next_attempt_at = now_millis().saturating_add(millis(*d));
                (
                    "step_retry_scheduled",
                    format!("{reason}: {message}; retry in {} ms", d.as_millis()),
                )
            }
            (Transition::Compensate(failure), _) => {
                self.begin_compensation(saga, failure);
                (
                    "step_failed",
                    format!("{}: {}", failure.reason, failure.message),
                )
            }
            (Transition::Park(failure), _) => {
                metrics().parked.add(1, &[attr("step", def.name)]);
                saga.status = SagaStatus::NeedsAttention.as_str().to_owned();
                saga.failure_reason = failure.reason.clone();
                saga.failure_message = failure.message.clone();
                saga.failure_step = failure.step.clone();
                ("parked", format!("{}: {}", failure.reason, failure.message))
            }
        };
        let mut after = Pending::default();
        after.steps.push(step);
        after.finished.push(attempt);
        after.event(kind, label, note, &saga.status);
        match transition {
            Transition::Continue | Transition::Compensate(_) => {
                Ok(Attempted::Recorded(Box::new(after)))
            }
            Transition::RetryAfter(delay) => {
                if !self.save(saga, state, owner, &after, false).await? {
                    return Ok(Attempted::Fenced);
                }
                Ok(Attempted::RetryAfter(delay))
            }
            Transition::Park(_) => {
                if !self.save(saga, state, owner, &after, true).await? {
                    return Ok(Attempted::Fenced);
                }
                Ok(Attempted::Parked)
            }
        }
    }
}

/// How a driver comes by its saga.
#[derive(Debug)]
enum Begin {
    /// Take the lease (a crashed driver's attempts in flight become ambiguous), then read.
    Claim,
    /// A saga this replica has just stored, leased to itself: nothing of it can be in flight
    /// but its first attempt, if that was written ahead with it.
    Fresh {
        /// The saga as stored.
        saga: Box<SagaRow>,
        /// Its first attempt was stored with it ([`Engine::first_write_ahead`]).
        written_ahead: bool,
    },
}

/// How driving a saga ended.
enum Stop {
    /// The saga is over or parked and its lease was given back with the last write.
    Released,
    /// The driver stopped holding (or having lost) the lease.
    Held,
}

/// The attempt to make.
struct Attempt<'a> {
    step: usize,
    direction: Direction,
    number: u32,
    input: &'a Value,
    /// Stored already, with the saga: sent without a write of its own.
    written_ahead: bool,
}

/// The first step's write-ahead record of a saga, stored with the saga by the request that
/// starts it ([`Engine::first_write_ahead`]).
#[derive(Debug, Clone)]
pub struct WriteAhead {
    /// Every step, the first running its first attempt.
    pub steps: Vec<StepRow>,
    /// The first attempt, in flight.
    pub attempt: AttemptRow,
    /// The attempt's timeline event.
    pub event: NewEvent,
}

/// What an attempt came to.
enum Attempted {
    /// The saga was taken from this driver.
    Fenced,
    /// A cancel beat the pivot's write-ahead; nothing was sent.
    Cancelled,
    /// The result, to be stored with the next write.
    Recorded(Box<Pending>),
    /// The result is stored; the same step is due again after the delay.
    RetryAfter(Duration),
    /// The result is stored and the saga parked for an operator.
    Parked,
}

/// Records waiting to be stored with the saga's next write.
#[derive(Debug, Default, Clone)]
struct Pending {
    steps: Vec<usize>,
    finished: Vec<AttemptRow>,
    started: Option<AttemptRow>,
    events: Vec<NewEvent>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.finished.is_empty() && self.events.is_empty()
    }

    fn event(&mut self, kind: &'static str, step: &str, message: String, status: &str) {
        self.events.push(NewEvent {
            kind,
            step: step.to_owned(),
            message,
            status: status.to_owned(),
        });
    }
}
