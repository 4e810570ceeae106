//! Change notices of one replica, per saga: a caller waiting on one checkout is woken by that
//! saga's changes only, and told its new status when the engine knows it, so waiting costs no
//! reads. Changes made by other replicas are not seen here; waiters poll for those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What a notice says: the saga's status after the change, or `None` when the change was made
/// outside the engine (a cancel, an operator retry) and the saga must be read.
pub type Notice = Option<String>;

struct Slot {
    sender: watch::Sender<Notice>,
    watchers: usize,
}

/// The registry of waiters, by saga id.
#[derive(Clone, Default)]
pub struct Changes {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watched = self.slots.lock().map(|s| s.len()).unwrap_or_default();
        f.debug_struct("Changes")
            .field("watched", &watched)
            .finish()
    }
}

impl Changes {
    /// Starts watching a saga; changes published from now on wake the watch.
    pub fn watch(&self, saga_id: &str) -> Watch {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slot = slots.entry(saga_id.to_owned()).or_insert_with(|| Slot {
            sender: watch::Sender::new(None),
            watchers: 0,
        });
        slot.watchers += 1;
        Watch {
            receiver: slot.sender.subscribe(),
            changes: self.clone(),
            saga_id: saga_id.to_owned(),
        }
    }

    /// Wakes the saga's watchers, if any.
    pub fn publish(&self, saga_id: &str, notice: Notice) {
        let slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.get(saga_id) {
            slot.sender.send_replace(notice);
        }
    }

    /// Sagas being watched now (for tests).
    pub fn watched(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or_default()
    }
}

/// One waiter's view of one saga's changes.
#[derive(Debug)]
pub struct Watch {
    receiver: watch::Receiver<Notice>,
    changes: Changes,
    saga_id: String,
}

impl Watch {
    /// Waits for the next change; its notice.
    pub async fn changed(&mut self) -> Notice {
        // The sender lives in the registry as long as this watch does, so this cannot fail.
        if self.receiver.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.receiver.borrow_and_update().clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut slots = self
            .changes
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = slots.get_mut(&self.saga_id) {
            slot.watchers -= 1;
            if slot.watchers == 0 {
                slots.remove(&self.saga_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watch_hears_its_saga_only_and_is_forgotten_when_dropped() {
        let changes = Changes::default();
        let mut a = changes.watch("a");
        let b = changes.watch("b");
        assert_eq!(changes.watched(), 2);
        changes.publish("b", Some("running".to_owned()));
        changes.publish("a", Some("completed".to_owned()));
        assert_eq!(a.changed().await.as_deref(), Some("completed"));
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(20), a.changed()).await;
        assert!(quiet.is_err(), "no second notice for a");
        drop(b);
        assert_eq!(changes.watched(), 1);
        let again = changes.watch("a");
        drop(a);
        assert_eq!(
            changes.watched(),
            1,
            "a is still watched by the second watch"
        );
        drop(again);
        assert_eq!(changes.watched(), 0);
    }
}
