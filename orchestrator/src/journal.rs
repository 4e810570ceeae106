//! Group commit of saga records. Every driver of this replica hands its writes (a step's result,
//! the next step's write-ahead record, the timeline events between them) to the journal, which
//! commits whatever is queued in one transaction and then answers each driver. A driver still
//! waits for its own write to be durable before it sends the command that write announces, so
//! the write-ahead rule holds; only the commit — on SQLite the single writer's turn, on Postgres
//! the WAL flush — is shared by many sagas.
//!
//! Each write is fenced on its own (the saga's version, lease and, for the pivot, no cancel), so
//! one saga's lost lease never fails its neighbours. A batch whose transaction fails is retried
//! write by write, so a write that cannot be stored fails alone. A batch of one is tried once
//! more as well: on Postgres a batch is one statement whose timeline numbers are read before it
//! waits for a saga row, so a cancel committed during that wait makes them collide and fails
//! the batch; the second try reads the timeline afresh.

use std::sync::Arc;

use checkout_kit::db::{Backend, Db, DbError, now_millis};
use tokio::sync::{Mutex, mpsc, oneshot};

pub use crate::store::NewEvent;
use crate::store::{self, AttemptRow, BatchWrite, SagaRow, SagaSave, StepRow};

/// Most writes committed in one transaction: bounds the time a batch holds the database.
const MAX_BATCH: usize = 128;

/// Everything one driver stores at one point of its saga, atomically.
#[derive(Debug, Clone)]
pub struct SagaWrite {
    /// The saga's new mutable columns; `version` is the one the driver holds.
    pub saga: SagaRow,
    /// The driving replica.
    pub owner: String,
    /// The lease's new end.
    pub lease_expires_at: i64,
    /// Refuse the write if a cancel was asked for (the pivot's write-ahead).
    pub require_no_cancel: bool,
    /// Give the lease back (the saga is over or parked).
    pub release: bool,
    /// Steps whose state changed.
    pub steps: Vec<StepRow>,
    /// Attempts whose result is recorded.
    pub finished: Vec<AttemptRow>,
    /// The attempt written ahead of its command.
    pub started: Option<AttemptRow>,
    /// Timeline events, in order.
    pub events: Vec<NewEvent>,
}

/// What became of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Stored; whether a cancel has been asked for by now.
    Written {
        /// A cancel was asked for.
        cancel_requested: bool,
    },
    /// Not stored: the lease or version moved on, or a cancel beat the pivot.
    Fenced,
}

struct Entry {
    write: SagaWrite,
    reply: oneshot::Sender<Result<Saved, DbError>>,
}

/// The group-committing writer of one replica's saga records.
#[derive(Debug, Clone)]
pub struct Journal {
    queue: mpsc::UnboundedSender<Entry>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("saga_id", &self.write.saga.saga_id)
            .finish_non_exhaustive()
    }
}

/// Why a write got no answer.
#[derive(Debug, thiserror::Error)]
#[error("the journal stopped before the write was answered")]
pub struct JournalStopped;

impl Journal {
    /// Starts the journal's committers on the current runtime. SQLite admits one writer, so it
    /// gets one; Postgres overlaps a few batches (one commits while the next is written).
    pub fn spawn(db: Db) -> Self {
        let lanes = match db.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => 3,
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..lanes {
            tokio::spawn(committer(db.clone(), receiver.clone()));
        }
        Self { queue }
    }

    /// Stores one write, durably, together with whatever else is queued.
    pub async fn write(&self, write: SagaWrite) -> Result<Saved, DbError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Entry { write, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> DbError {
    DbError::Query(sqlx::Error::Io(std::io::Error::other(JournalStopped)))
}

async fn committer(db: Db, receiver: Arc<Mutex<mpsc::UnboundedReceiver<Entry>>>) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(entry) => batch.push(entry),
                    Err(_) => break,
                }
            }
            batch
        };
        commit(&db, batch).await;
    }
}

async fn commit(db: &Db, batch: Vec<Entry>) {
    let writes: Vec<&SagaWrite> = batch.iter().map(|e| &e.write).collect();
    match store_all(db, &writes).await {
        Ok(saved) => {
            for (entry, saved) in batch.into_iter().zip(saved) {
                let _ = entry.reply.send(Ok(saved));
            }
        }
        // Also a batch of one: the write on its own is tried once more (see the module doc).
        Err(e) => {
            tracing::debug!(error = %e, writes = batch.len(), "group commit failed; writing one by one");
            for entry in batch {
                let saved = store_all(db, &[&entry.write])
                    .await
                    .map(|mut saved| saved.remove(0));
                let _ = entry.reply.send(saved);
            }
        }
    }
}

async fn store_all(db: &Db, writes: &[&SagaWrite]) -> Result<Vec<Saved>, DbError> {
    let batch: Vec<BatchWrite<'_>> = writes
        .iter()
        .map(|w| BatchWrite {
            save: SagaSave {
                saga: &w.saga,
                owner: &w.owner,
                lease_expires_at: w.lease_expires_at,
                require_no_cancel: w.require_no_cancel,
                release: w.release,
            },
            steps: &w.steps,
            attempts: w.finished.iter().chain(&w.started).collect(),
            events: &w.events,
        })
        .collect();
    let mut tx = db.single_write().await?;
    let written = store::save_batch(&mut tx, &batch, now_millis()).await?;
    tx.commit().await?;
    Ok(writes
        .iter()
        .map(|w| match written.get(&w.saga.saga_id) {
            Some(&cancel_requested) => Saved::Written { cancel_requested },
            None => Saved::Fenced,
        })
        .collect())
}
