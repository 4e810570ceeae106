//! Thread-per-core runtimes for the servers of one process (`up`, the in-process bench): one
//! single-threaded Tokio runtime per CPU core the process may use, on a thread pinned to that
//! core; each server runs on one of them, with its database connections.
//!
//! Why: every SQLite statement is two hand-offs between the runtime thread that issues it and
//! the connection's worker thread (sqlx runs each SQLite connection on a thread of its own).
//! A thread inherits the core of the thread that spawns it, so a server's connection threads
//! share its core and those hand-offs never wake another core — a cross-core wake-up is an
//! inter-processor interrupt, the most expensive thing a checkout did on the virtual machines
//! measured (docs/PERFORMANCE.md). Cross-core traffic is left to the gRPC calls between servers
//! placed on different cores.

use std::future::Future;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The runtimes, one per core; stopped when dropped (tasks still on them are cancelled).
#[derive(Debug)]
pub struct Islands {
    islands: Vec<Island>,
}

#[derive(Debug)]
struct Island {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
}

impl Islands {
    /// One runtime per core this process may run on (its affinity mask), at most `limit`.
    pub fn per_core(limit: usize) -> std::io::Result<Self> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let count = cores.len().clamp(1, limit.max(1));
        let mut islands = Vec::with_capacity(count);
        for i in 0..count {
            let core = cores.get(i).copied();
            let (ready, handle) = std::sync::mpsc::channel();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("checkout-core-{i}"))
                .spawn(move || {
                    // Pinned before the runtime exists, so every thread it spawns (a database
                    // connection's worker, a blocking task) starts on this core too.
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    let runtime = match checkout_kit::runtime::core_runtime() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            let handle = handle
                .recv()
                .map_err(|_| std::io::Error::other("a core's runtime thread ended at start"))??;
            islands.push(Island {
                handle,
                stop: Some(stop),
            });
        }
        Ok(Self { islands })
    }

    /// How many runtimes there are.
    pub fn count(&self) -> usize {
        self.islands.len()
    }

    /// Runs a future on the runtime `index` (modulo the count).
    pub fn spawn<F>(&self, index: usize, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.islands[index % self.islands.len()]
            .handle
            .spawn(future)
    }
}

impl Drop for Islands {
    fn drop(&mut self) {
        for island in &mut self.islands {
            if let Some(stop) = island.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cores a thread started on the given island may run on.
    async fn cores_of_a_thread_spawned_on(islands: &Islands, index: usize) -> Vec<usize> {
        islands
            .spawn(index, async {
                std::thread::spawn(|| {
                    core_affinity::get_core_ids()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|c| c.id)
                        .collect::<Vec<_>>()
                })
                .join()
                .expect("probe thread")
            })
            .await
            .expect("island task")
    }

    #[tokio::test]
    async fn threads_started_on_an_island_keep_its_core() {
        let cores: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert!(!cores.is_empty(), "this process's cores are readable");
        let islands = Islands::per_core(8).expect("islands");
        assert_eq!(islands.count(), cores.len().clamp(1, 8));
        for (i, core) in cores.iter().take(islands.count()).enumerate() {
            // A database connection's worker thread is such a thread: it shares the island's
            // core instead of waking another one for every statement.
            assert_eq!(
                cores_of_a_thread_spawned_on(&islands, i).await,
                vec![*core],
                "island {i}"
            );
        }
        // The index wraps: more servers than cores share them.
        assert_eq!(
            cores_of_a_thread_spawned_on(&islands, islands.count()).await,
            vec![cores[0]]
        );
    }

    #[tokio::test]
    async fn no_more_islands_than_asked_for_and_stopped_when_dropped() {
        let islands = Islands::per_core(1).expect("islands");
        assert_eq!(islands.count(), 1);
        let (tx, rx) = oneshot::channel::<()>();
        let parked = islands.spawn(0, async move {
            let _ = rx.await;
        });
        drop(islands);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), parked)
            .await
            .expect("the island's tasks end with it");
        assert!(ended.is_err_and(|e| e.is_cancelled()));
        drop(tx);
    }
}
