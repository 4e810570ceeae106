//! The single-threaded runtime a server runs on when it has a core of its own.
//!
//! A database statement's result comes back from the connection's own thread, so it wakes its
//! task from outside the runtime. By default a current-thread runtime serves such wake-ups only
//! every 31st task, after the tasks already queued locally; meanwhile a writer holding the
//! database's single write turn sits idle, and every writer behind it waits too. Serving them
//! first keeps the turn short: at c=32 shared commits grow (about 1.3 COMMITs per checkout
//! instead of 1.8) and machine CPU per checkout falls about 8 % (docs/PERFORMANCE.md).

use tokio::runtime::{Builder, Runtime};

/// Ticks between looks at the queue of wake-ups from other threads: every tick.
const REMOTE_WAKE_INTERVAL: u32 = 1;

/// A current-thread runtime with I/O and timers that serves wake-ups from other threads first.
pub fn core_runtime() -> std::io::Result<Runtime> {
    Builder::new_current_thread()
        .enable_all()
        .global_queue_interval(REMOTE_WAKE_INTERVAL)
        .build()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_task_woken_from_another_thread_runs_before_the_local_backlog() {
        let runtime = core_runtime().expect("runtime");
        let local_polls = Arc::new(AtomicUsize::new(0));
        let seen = runtime.block_on({
            let local_polls = local_polls.clone();
            async move {
                let (wake, woken) = tokio::sync::oneshot::channel::<()>();
                let remote = tokio::spawn({
                    let local_polls = local_polls.clone();
                    async move {
                        let _ = woken.await;
                        local_polls.load(Ordering::SeqCst)
                    }
                });
                // Let the remote task park on its channel.
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                let backlog: Vec<_> = (0..200)
                    .map(|_| {
                        let local_polls = local_polls.clone();
                        tokio::spawn(async move {
                            local_polls.fetch_add(1, Ordering::SeqCst);
                        })
                    })
                    .collect();
                std::thread::spawn(move || {
                    let _ = wake.send(());
                })
                .join()
                .expect("waker thread");
                let seen = remote.await.expect("remote task");
                for task in backlog {
                    task.await.expect("local task");
                }
                seen
            }
        });
        assert_eq!(local_polls.load(Ordering::SeqCst), 200);
        assert!(
            seen <= 1,
            "the remote wake-up waited behind {seen} local tasks"
        );
    }
}
