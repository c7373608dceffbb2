//! The state of one `LockService` that its parts share: owned by the service and
//! borrowed by acquisition (`acquire.rs`) and holds (`lease.rs`), so that no part
//! reaches back into the service itself.

use std::collections::HashSet;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::error::{LockError, Result};
use crate::local_queue::LocalQueues;
use crate::release_feed::ReleaseFeed;
use crate::store::LockStore;

pub(crate) struct Shared {
    pub store: LockStore,
    pub feed: ReleaseFeed,
    pub queues: LocalQueues,
    closed: CancellationToken,
    /// The owners of the locks held right now through guards; `close()` waits for
    /// their release before disconnecting.
    holds: watch::Sender<HashSet<String>>,
}

impl Shared {
    pub fn new(store: LockStore) -> Self {
        let closed = CancellationToken::new();
        Shared {
            store,
            feed: ReleaseFeed::new(closed.child_token()),
            queues: LocalQueues::default(),
            closed,
            holds: watch::channel(HashSet::new()).0,
        }
    }

    /// `Closed` once `close()` was called.
    pub fn open(&self) -> Result<()> {
        if self.is_closed() {
            Err(LockError::Closed)
        } else {
            Ok(())
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when `close()` is called.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// Stops every waiter and holder.
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn hold_started(&self, owner: &str) {
        self.holds.send_modify(|holds| {
            holds.insert(owner.to_owned());
        });
    }

    pub fn hold_ended(&self, owner: &str) {
        self.holds.send_modify(|holds| {
            holds.remove(owner);
        });
    }

    /// Whether a guard of this service holds the lock of `owner`.
    pub fn holds(&self, owner: &str) -> bool {
        self.holds.borrow().contains(owner)
    }

    /// Resolves when no lock is held.
    pub async fn no_holds(&self) {
        let _ = self
            .holds
            .subscribe()
            .wait_for(|holds| holds.is_empty())
            .await;
    }
}
