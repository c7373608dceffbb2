//! The state of one `LockService` that its parts share: owned by the service and
//! borrowed by acquisition (`acquire.rs`) and holds (`lease.rs`), so that no part
//! reaches back into the service itself.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::error::{LockError, Result};
use crate::key::LockKey;
use crate::local_queue::LocalQueues;
use crate::release_feed::ReleaseFeed;
use crate::store::{LockStore, Queue, Released, AFTER_DELETE, RESTORE_WAIT};

/// How long after a write that may have queued us, but whose outcome we do not know,
/// the queue is left a second time: the write may have been applied, or may still
/// reach the server after the driver gave up on it (a connection lost with the write
/// on its way).
pub(crate) const LATE_WRITE: Duration = Duration::from_secs(1);
/// Attempts at taking a ticket out of a queue, the first pause between them, doubling.
const GIVE_UP_ATTEMPTS: u32 = 3;
const GIVE_UP_PAUSE: Duration = Duration::from_millis(100);

pub(crate) struct Shared {
    pub store: LockStore,
    pub feed: ReleaseFeed,
    pub queues: LocalQueues,
    closed: CancellationToken,
    /// The owners of the locks held right now through guards; `close()` waits for
    /// their release before disconnecting.
    holds: watch::Sender<HashSet<String>>,
    /// This service's tickets that may be in a lock's queue: of waiters in the
    /// database, of places kept for a next caller (`rejoin.rs`), and of those leaving a
    /// queue in the background. `close()` waits for them too, and the binding keeps
    /// the process alive while there are any, so that no ticket outlives the service:
    /// a ticket the lock reached with nobody to take it would hold everyone up for a
    /// lease.
    tickets: Arc<watch::Sender<usize>>,
    /// The runtime the service was made on, for work that must start from a thread
    /// outside it: a guard dropped by a JavaScript finalizer, a close when the
    /// JavaScript environment ends.
    runtime: Option<tokio::runtime::Handle>,
}

/// One ticket that may be in a queue, counted until it is dropped.
pub(crate) struct Ticket(Arc<watch::Sender<usize>>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
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
            tickets: Arc::new(watch::channel(0).0),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Runs `work` on the runtime this thread is in, else on the one the service was
    /// made on (from a thread outside every runtime); nowhere if there is neither.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let runtime = tokio::runtime::Handle::try_current().ok();
        if let Some(runtime) = runtime.or_else(|| self.runtime.clone()) {
            runtime.spawn(work);
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

    pub fn holds_none(&self) -> bool {
        self.holds.borrow().is_empty()
    }

    /// Resolves when no lock is held.
    pub async fn no_holds(&self) {
        let _ = self
            .holds
            .subscribe()
            .wait_for(|holds| holds.is_empty())
            .await;
    }

    /// Takes `owner`'s ticket out of the queue of `key`, releasing the lock if it was
    /// handed to it (`LockStore::give_up`). Tried again after a failure: a ticket left
    /// behind costs every other waiter a lease when it comes up. When neither the
    /// ticket nor a lock of its is found, the lock may have been deleted at the end of
    /// its passing window, and is coming back with the ticket in its queue: then once
    /// more after `RESTORE_WAIT`.
    pub async fn give_up(&self, key: &LockKey, owner: &str, lease: Duration) {
        if self.give_up_once(key, owner, lease).await == Some(Released::NotOurs) {
            tokio::time::sleep(RESTORE_WAIT).await;
            self.give_up_once(key, owner, lease).await;
        }
    }

    async fn give_up_once(&self, key: &LockKey, owner: &str, lease: Duration) -> Option<Released> {
        let attempt = || self.store.give_up(key, owner, lease);
        match retried(GIVE_UP_ATTEMPTS, GIVE_UP_PAUSE, attempt).await? {
            // Handed to us and at once deleted: nobody held it.
            Some(Released::Passing(queue)) => {
                self.restore(key, queue, lease).await;
                None
            }
            released => released,
        }
    }

    /// What a release after a hold of `held_for` did, after starting in the
    /// background the restore of a lock it deleted at the end of its passing window
    /// (`Released::Passing`, reported as `Restoring`, or as `Requeueing` where the
    /// queue is not worth it).
    pub fn restore_later(
        self: &Arc<Self>,
        key: &LockKey,
        released: Released,
        lease: Duration,
        held_for: Duration,
    ) -> Released {
        let Released::Passing(queue) = released else {
            return released;
        };
        if !queue.worth_restoring(held_for) {
            return Released::Requeueing;
        }
        let (shared, key, ticket) = (self.clone(), key.clone(), self.ticket());
        self.spawn(async move {
            shared.restore(&key, queue, lease).await;
            drop(ticket);
        });
        Released::Restoring
    }

    /// Puts a lock deleted at the end of its passing window back with its queue, once
    /// others have had `AFTER_DELETE` to insert (`LockStore::restore`). If that fails,
    /// or `close()` comes first, its waiters queue again.
    async fn restore(&self, key: &LockKey, queue: Queue, lease: Duration) {
        tokio::select! {
            _ = self.closed() => {}
            _ = tokio::time::sleep(AFTER_DELETE) => {
                let _ = self.store.restore(key, queue, lease).await;
            }
        }
    }

    /// `give_up` in the background, with `ticket` counted until it is done, and once
    /// more `again_after` that, if given.
    pub fn give_up_in_background(
        self: &Arc<Self>,
        key: &LockKey,
        owner: String,
        lease: Duration,
        ticket: Ticket,
        again_after: Option<Duration>,
    ) {
        let (shared, key) = (self.clone(), key.clone());
        self.spawn(async move {
            shared.give_up(&key, &owner, lease).await;
            if let Some(pause) = again_after {
                tokio::time::sleep(pause).await;
                shared.give_up(&key, &owner, lease).await;
            }
            drop(ticket);
        });
    }

    /// Counts a ticket that may be in a queue until the result is dropped.
    pub fn ticket(&self) -> Ticket {
        self.tickets.send_modify(|n| *n += 1);
        Ticket(self.tickets.clone())
    }

    pub fn has_tickets(&self) -> bool {
        *self.tickets.borrow() > 0
    }

    /// Resolves when no `ticket` is counted.
    pub async fn no_tickets(&self) {
        let _ = self.tickets.subscribe().wait_for(|n| *n == 0).await;
    }
}

/// Runs `attempt` until it succeeds, at most `attempts` times, pausing `pause` after
/// the first failure and twice as long after each next one; what it succeeded with.
pub(crate) async fn retried<T, E, Attempt>(
    attempts: u32,
    mut pause: Duration,
    mut attempt: impl FnMut() -> Attempt,
) -> Option<T>
where
    Attempt: Future<Output = std::result::Result<T, E>>,
{
    for tried in 1..=attempts {
        if let Ok(done) = attempt().await {
            return Some(done);
        }
        if tried < attempts {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    None
}
