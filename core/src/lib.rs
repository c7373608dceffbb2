//! Distributed locks kept in MongoDB, compatible with the documents of
//! `ResourceLock` from `@discue/mongodb-resource-client`.
//!
//! No Node.js here: this crate is the lock store, acquisition, waiting and leases.
//! The napi binding at the repository root turns it into the JavaScript class.

mod acquire;
pub mod document;
mod error;
mod guard;
mod key;
mod lease;
mod listening;
mod local_queue;
mod rejoin;
mod release_feed;
mod server_clock;
mod shared;
mod store;

pub use mongodb;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::options::WriteConcern;
use mongodb::Client;

pub use acquire::AcquireOptions;
pub use error::{Argument, LockError, Result, DUPLICATE_KEY};
pub use guard::{LockGuard, WorkGate};
pub use key::{ids_to_string, js_number_to_string, LockKey, ResourceId};
pub use lease::HoldOptions;

use shared::{Shared, LATE_WRITE};
use store::LockStore;

/// Who holds a lock, as `LockService::holder` reads it.
#[derive(Debug, Clone)]
pub struct Holder {
    /// When it was taken (or last handed over), in ms since the epoch, by the taker's clock.
    pub since: Option<f64>,
    /// When its lease ends, on the server's clock; `None` for a lock without a lease.
    pub lease_expires_at: Option<mongodb::bson::DateTime>,
    /// Whether this service holds it (through a guard or `lock()`).
    pub held_here: bool,
}

/// How long `close()` waits for held locks to be released.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Locks in one database, over one client.
pub struct LockService {
    client: Client,
    shared: Arc<Shared>,
    /// The owner of each lock this service took with `lock()` and has not unlocked,
    /// so that `unlock()` removes that lock and never a later holder's.
    locked: Mutex<HashMap<String, String>>,
}

impl LockService {
    pub fn new(client: Client, database: &str, write_concern: Option<WriteConcern>) -> Arc<Self> {
        let store = LockStore::new(client.database(database), write_concern);
        Arc::new(LockService {
            shared: Arc::new(Shared::new(store)),
            client,
            locked: Mutex::default(),
        })
    }

    /// Creates the indexes now rather than before the first lock.
    pub async fn ensure_indexes(&self) -> Result<()> {
        self.shared.open()?;
        self.shared.store.ensure_indexes().await
    }

    /// One attempt to lock `key`, as the original `lock()`: `DuplicateKey` when held,
    /// unless by a lock whose lease has surely passed, which is taken over (as
    /// `tryAcquire` does). Without `lease` the lock never expires.
    pub async fn lock(&self, key: &LockKey, lease: Option<Duration>) -> Result<u64> {
        self.shared.open()?;
        // Failing here sent no insert: nothing to clean up after.
        self.shared.store.ensure_indexes().await?;
        let owner = uuid::Uuid::new_v4().simple().to_string();
        let attempt = match self.shared.store.insert(key, &owner, lease).await {
            Err(held_by_other @ LockError::DuplicateKey { .. }) => self
                .take_over_passed(key, &owner, lease)
                .await
                .and_then(|taken| taken.ok_or(held_by_other)),
            inserted => inserted,
        };
        let held = match attempt {
            Ok(held) => held,
            Err(e @ LockError::Mongo(_)) => {
                // The write may have been applied with its reply lost, or may still
                // reach the server: without a lease its lock would never go away.
                let (lease, ticket) = (lease.unwrap_or_default(), self.shared.ticket());
                let shared = &self.shared;
                shared.give_up_in_background(key, owner, lease, ticket, Some(LATE_WRITE));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.locked().insert(key.identity(), owner);
        Ok(held.fencing_token)
    }

    /// The lock in the way, taken over for `owner` if its lease has surely passed. A
    /// failed write is cleaned up by `take_over`.
    async fn take_over_passed(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Option<Duration>,
    ) -> Result<Option<store::Held>> {
        let store = &self.shared.store;
        let Some(blocker) = store.blocker(key).await? else {
            return Ok(None);
        };
        store.take_over(key, &blocker, owner, lease).await
    }

    /// Deletes the lock of `key`, as the original `unlock()`. A lock this service took
    /// with `lock()` is deleted only while it is still that lock: after its lease ran
    /// out and another caller took the key, this fails (`NotDeleted`) and leaves the
    /// other caller's lock alone. Any other lock is deleted whoever holds it.
    pub async fn unlock(&self, key: &LockKey, ids: &[ResourceId]) -> Result<()> {
        self.shared.open()?;
        let owner = self.locked().remove(&key.identity());
        let deleted = match owner {
            Some(owner) => match self.shared.store.delete_owned(key, &owner).await {
                Ok(released) => released != store::Released::NotOurs,
                Err(e) => {
                    // The delete may have been applied with its reply lost, and the key
                    // taken by someone else since: a retried `unlock()` must still
                    // delete only this lock, never fall back to deleting anyone's.
                    self.locked().entry(key.identity()).or_insert(owner);
                    return Err(e);
                }
            },
            None => self.shared.store.delete_any(key).await?,
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

    /// Who holds the lock of `key` now, if anyone: `None` when there is no lock
    /// document or its lease has surely passed.
    pub async fn holder(&self, key: &LockKey) -> Result<Option<Holder>> {
        self.shared.open()?;
        let Some(stored) = self.shared.store.find(key).await? else {
            return Ok(None);
        };
        if let Some(expiry) = stored.lease_expires_at {
            if self.shared.store.server_now().await?.earliest > expiry.timestamp_millis() {
                return Ok(None);
            }
        }
        let ours = stored.owner.as_deref().is_some_and(|owner| {
            self.shared.holds(owner) || self.locked().values().any(|o| o == owner)
        });
        Ok(Some(Holder {
            since: stored.locked_at,
            lease_expires_at: stored.lease_expires_at,
            held_here: ours,
        }))
    }

    /// Waits for and takes the lock of `key`.
    pub async fn acquire(&self, key: &LockKey, options: &AcquireOptions) -> Result<LockGuard> {
        self.shared.open()?;
        acquire::acquire(&self.shared, key, options).await
    }

    /// Whether a ticket of this service may be in a lock's queue: of a waiter, of a
    /// place kept for the next caller (`rejoin.rs`), or one leaving in the background.
    pub fn has_tickets(&self) -> bool {
        self.shared.has_tickets()
    }

    /// Resolves when no ticket of this service is in a queue.
    pub async fn no_tickets(&self) {
        self.shared.no_tickets().await
    }

    /// Runs `work` on the runtime the service was made on (or the one this thread is
    /// in), from any thread: a JavaScript environment that ends is outside every runtime.
    pub fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        self.shared.spawn(work);
    }

    /// Stops every waiter and holder, waits (up to `CLOSE_GRACE`) for the holders'
    /// locks to be released and the tickets of this service to leave their queues,
    /// then disconnects.
    pub async fn close(&self) {
        self.shared.close();
        // A waiter's ticket ends after its hold is registered, and a hold ends after
        // the ticket of the place its release took: once both are gone at once, they
        // stay gone.
        let settled = async {
            while self.shared.has_tickets() || !self.shared.holds_none() {
                self.shared.no_tickets().await;
                self.shared.no_holds().await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, settled).await;
        self.client.clone().shutdown().immediate(true).await;
    }
}
