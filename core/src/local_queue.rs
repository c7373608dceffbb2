//! Waiters for the same key inside one process queue here, first come first served,
//! so only the head of the queue competes in the database and a release can hand
//! the lock straight to the next local waiter instead of waiting for its next poll.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as FairMutex, OwnedMutexGuard};

use crate::key::LockKey;

/// How many times in a row a process may hand a key to its own next waiter before
/// it releases it in the database, giving other processes their turn.
pub const MAX_LOCAL_HANDOVERS: u32 = 8;

/// A lock left in the database for the next local waiter, still under `owner`.
#[derive(Debug, Clone)]
pub struct Inherited {
    pub owner: String,
}

#[derive(Default)]
pub struct SlotState {
    pub inherited: Option<Inherited>,
    /// Local hand-overs since the key was last released in the database.
    pub streak: u32,
    /// After releasing a lock that another process waited for, this process's next
    /// attempt waits until then, so that the waiter gets its turn.
    pub yield_until: Option<tokio::time::Instant>,
}

impl SlotState {
    fn yielding(&self) -> bool {
        self.yield_until
            .is_some_and(|t| t > tokio::time::Instant::now())
    }
}

impl KeySlot {
    /// Nobody uses the slot and it remembers nothing that matters.
    fn idle(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
            && self
                .state
                .try_lock()
                .is_ok_and(|state| state.inherited.is_none() && !state.yielding())
    }

    /// Takes back a lock left for a local waiter when no waiter took its turn.
    pub fn take_orphaned(self: &Arc<Self>) -> Option<Inherited> {
        let mut state = self.state.clone().try_lock_owned().ok()?;
        state.streak = 0;
        state.inherited.take()
    }
}

pub struct KeySlot {
    /// tokio's mutex queues waiters in FIFO order and passes the guard to the first.
    state: Arc<FairMutex<SlotState>>,
    waiting: AtomicUsize,
}

/// The local turn of one caller: holding it means being the head of the key's queue.
pub struct LocalTurn {
    pub state: OwnedMutexGuard<SlotState>,
    pub slot: Arc<KeySlot>,
}

impl LocalTurn {
    /// Whether somebody in this process is queued behind us.
    pub fn has_waiters(&self) -> bool {
        self.slot.waiting.load(Ordering::SeqCst) > 0
    }
}

#[derive(Default)]
pub struct LocalQueues {
    slots: Mutex<HashMap<String, Arc<KeySlot>>>,
}

impl LocalQueues {
    /// Waits for this caller's turn on `key`. Dropping the future leaves the queue.
    pub async fn turn(&self, key: &LockKey) -> LocalTurn {
        let slot = self.slot(key);
        slot.waiting.fetch_add(1, Ordering::SeqCst);
        let leave = LeaveOnDrop(&slot.waiting);
        let state = slot.state.clone().lock_owned().await;
        drop(leave);
        LocalTurn { state, slot }
    }

    fn slot(&self, key: &LockKey) -> Arc<KeySlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Drop idle slots so a process that locks millions of distinct keys stays flat.
        if slots.len() > 1024 {
            slots.retain(|_, slot| !slot.idle());
        }
        slots
            .entry(map_key(key))
            .or_insert_with(|| {
                Arc::new(KeySlot {
                    state: Arc::new(FairMutex::new(SlotState::default())),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Forgets the slot of `key` when nobody uses it any more.
    pub fn tidy(&self, key: &LockKey) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let name = map_key(key);
        if slots.get(&name).is_some_and(|slot| slot.idle()) {
            slots.remove(&name);
        }
    }
}

struct LeaveOnDrop<'a>(&'a AtomicUsize);

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keys equal in MongoDB's unique index share a slot: 123 and 123.0 are one key,
/// '123' another.
fn map_key(key: &LockKey) -> String {
    match key {
        LockKey::Str(s) => format!("s:{s}"),
        LockKey::Num(n) => format!("n:{n}"),
    }
}
