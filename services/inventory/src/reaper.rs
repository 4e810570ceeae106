//! The reaper: releases reservations whose TTL elapsed, in bounded batches, one short
//! transaction per reservation. Several replicas may reap at once: the guarded state change
//! lets exactly one of them return each reservation's stock.

use std::time::Duration;

use checkout_kit::db::{Db, now_millis};
use checkout_kit::shutdown::Shutdown;
use checkout_kit::status;

use crate::error::InventoryError;
use crate::reservations;
use crate::storage;

/// How the reaper paces itself.
#[derive(Debug, Clone)]
pub struct ReaperConfig {
    /// Pause between sweeps.
    pub interval: Duration,
    /// Most reservations released per sweep.
    pub batch: i64,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            batch: 100,
        }
    }
}

/// One sweep: releases up to a batch of due reservations; returns how many this call released.
pub async fn reap_once(db: &Db, batch: i64) -> Result<u64, InventoryError> {
    let mut tx = db.begin_read().await?;
    let due = storage::due_reservations(&mut tx, now_millis(), batch).await?;
    tx.rollback().await?;
    let mut released = 0;
    for reservation_id in due {
        let mut tx = db.begin().await?;
        let expired = reservations::expire(&mut tx, &reservation_id).await?;
        tx.commit().await?;
        if expired {
            tracing::info!(%reservation_id, "reservation expired; stock released");
            released += 1;
        }
    }
    Ok(released)
}

/// Runs sweeps until shutdown.
pub fn spawn(db: Db, config: ReaperConfig, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.clone().requested() => return,
                () = tokio::time::sleep(config.interval) => {}
            }
            if let Err(e) = reap_once(&db, config.batch).await {
                tracing::warn!(error = %status::error_chain(&e), "reservation reaper sweep failed");
            }
        }
    })
}
