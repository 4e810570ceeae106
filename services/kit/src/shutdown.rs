//! The process's shutdown signal: SIGTERM or Ctrl-C, shared by every server in the process.

use std::sync::Arc;

use tokio::sync::watch;

/// A cloneable handle that resolves once shutdown was requested.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that requests shutdown; clones fire the same signal.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger {
    tx: Arc<watch::Sender<bool>>,
}

impl Shutdown {
    /// A new signal and the trigger that fires it.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx: Arc::new(tx) }, Shutdown { rx })
    }

    /// A signal fired by SIGTERM or Ctrl-C.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = Self::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            trigger.fire();
        });
        shutdown
    }

    /// Resolves once shutdown was requested (at once if it already was).
    pub async fn requested(mut self) {
        // An error means the trigger was dropped without firing: treat as shutdown too, so no
        // server outlives its owner.
        let _ = self.rx.wait_for(|fired| *fired).await;
    }

    /// True once shutdown was requested.
    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }
}

impl ShutdownTrigger {
    /// Requests shutdown of everything holding the matching [`Shutdown`].
    pub fn fire(&self) {
        let _ = self.tx.send(true);
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
