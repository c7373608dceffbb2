//! Distributed locks kept in MongoDB, compatible with the documents of
//! `ResourceLock` from `@discue/mongodb-resource-client`.
//!
//! No Node.js here: this crate is the lock store, acquisition, waiting and leases.
//! The napi binding at the repository root turns it into the JavaScript class.

mod acquire;
pub mod document;
mod error;
mod key;
mod lease;
mod local_queue;
mod release_feed;
mod server_clock;
mod store;

pub use mongodb;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::options::WriteConcern;
use mongodb::Client;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

pub use acquire::AcquireOptions;
pub use error::{LockError, Result, DUPLICATE_KEY};
pub use key::{ids_to_string, js_number_to_string, LockKey, ResourceId};
pub use lease::{HoldOptions, LockGuard, WorkGate};

use local_queue::LocalQueues;
use release_feed::ReleaseFeed;
use store::LockStore;

/// How long `close()` waits for held locks to be released.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Locks in one database, over one client.
pub struct LockService {
    client: Client,
    /// Locks held right now; `close()` waits for their release before disconnecting.
    holds: tokio::sync::watch::Sender<usize>,
    store: LockStore,
    feed: ReleaseFeed,
    queues: LocalQueues,
    closed: CancellationToken,
    /// The owner of each lock this service took with `lock()` and has not unlocked,
    /// so that `unlock()` removes that lock and never a later holder's.
    locked: Mutex<HashMap<String, String>>,
}

impl LockService {
    pub fn new(client: Client, database: &str, write_concern: Option<WriteConcern>) -> Arc<Self> {
        let closed = CancellationToken::new();
        Arc::new(LockService {
            store: LockStore::new(client.database(database), write_concern),
            feed: ReleaseFeed::new(closed.child_token()),
            queues: LocalQueues::default(),
            holds: tokio::sync::watch::channel(0).0,
            client,
            closed,
            locked: Mutex::default(),
        })
    }

    /// Creates the indexes now rather than before the first lock.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.open()?;
        self.store.ensure_indexes().await
    }

    /// One attempt to lock `key`, as the original `lock()`: `DuplicateKey` when held.
    /// Without `lease` the lock never expires.
    pub async fn lock(&self, key: &LockKey, lease: Option<Duration>) -> Result<u64> {
        self.open()?;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let held = self.store.insert(key, &owner, lease).await?;
        self.locked().insert(key.identity(), owner);
        Ok(held.fencing_token)
    }

    /// Deletes the lock of `key`, as the original `unlock()`. A lock this service took
    /// with `lock()` is deleted only while it is still that lock: after its lease ran
    /// out and another caller took the key, this fails (`NotDeleted`) and leaves the
    /// other caller's lock alone. Any other lock is deleted whoever holds it.
    pub async fn unlock(&self, key: &LockKey, ids: &[ResourceId]) -> Result<()> {
        self.open()?;
        let owner = self.locked().remove(&key.identity());
        let deleted = match owner {
            Some(owner) => self.store.delete_owned(key, &owner).await? != store::Released::NotOurs,
            None => self.store.delete_any(key).await?,
        };
        if deleted {
            Ok(())
        } else {
            Err(LockError::not_deleted(ids_to_string(ids)))
        }
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.locked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for and takes the lock of `key`.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &LockKey,
        options: &AcquireOptions,
    ) -> Result<LockGuard> {
        self.open()?;
        acquire::acquire(self, key, options).await
    }

    /// Stops every waiter and holder, waits (up to `CLOSE_GRACE`) for the holders'
    /// locks to be released, then disconnects.
    pub async fn close(&self) {
        self.closed.cancel();
        let mut holds = self.holds.subscribe();
        let _ = tokio::time::timeout(CLOSE_GRACE, holds.wait_for(|n| *n == 0)).await;
        self.client.clone().shutdown().immediate(true).await;
    }

    pub(crate) fn hold_started(&self) {
        self.holds.send_modify(|n| *n += 1);
    }

    pub(crate) fn hold_ended(&self) {
        self.holds.send_modify(|n| *n = n.saturating_sub(1));
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when `close()` is called.
    pub(crate) fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    fn open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(LockError::Closed)
        } else {
            Ok(())
        }
    }
}
