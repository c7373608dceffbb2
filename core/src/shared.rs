//! The state of one `LockService` that its parts share: owned by the service and
//! borrowed by acquisition (`acquire.rs`) and holds (`lease.rs`), so that no part
//! reaches back into the service itself.

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
    /// Locks held right now; `close()` waits for their release before disconnecting.
    holds: watch::Sender<usize>,
}

impl Shared {
    pub fn new(store: LockStore) -> Self {
        let closed = CancellationToken::new();
        Shared {
            store,
            feed: ReleaseFeed::new(closed.child_token()),
            queues: LocalQueues::default(),
            closed,
            holds: watch::channel(0).0,
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

    pub fn hold_started(&self) {
        self.holds.send_modify(|n| *n += 1);
    }

    pub fn hold_ended(&self) {
        self.holds.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Resolves when no lock is held.
    pub async fn no_holds(&self) {
        let _ = self.holds.subscribe().wait_for(|n| *n == 0).await;
    }
}
