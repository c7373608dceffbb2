//! Waiters for the same key inside one process queue here, first come first served,
//! so only the head of the queue competes in the database and a release can hand
//! the lock straight to the next local waiter instead of waiting for its next poll.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as FairMutex, OwnedMutexGuard};
use tokio::time::{Duration, Instant};

use crate::key::LockKey;

/// How many times in a row a process may hand a key to its own next waiter before
/// it releases it in the database, giving other processes their turn.
pub const MAX_LOCAL_HANDOVERS: u32 = 8;

/// What a holder leaves for the next local waiter: the lock it holds in the database
/// (`guard::DbHold`). Opaque here, so that this queue depends on nothing of the locks.
pub type Inherited = Box<dyn Any + Send>;

/// A place in the database's queue that a release took for this process's next caller
/// (`rejoin.rs`), under the owner id it names. Opaque here, as `Inherited` is.
pub struct Reserved {
    pub owner: String,
    pub place: Box<dyn Any + Send>,
}

/// A process that took a key again within this long after passing it to another
/// process will probably do so again: its next hand-over also queues it again.
pub const REJOIN_WINDOW: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct SlotState {
    inherited: Option<Inherited>,
    /// Local hand-overs since the key was last released in the database.
    streak: u32,
    /// After releasing a lock that another process waited for, this process's next
    /// attempt waits until then, so that the waiter gets its turn.
    yield_until: Option<Instant>,
    /// When this process last passed the key to another process's waiter.
    handed_on_at: Option<Instant>,
    /// Whether the current holder took the key within `REJOIN_WINDOW` of that.
    returning: bool,
}

impl SlotState {
    fn yielding(&self) -> bool {
        self.yield_until.is_some_and(|t| t > Instant::now())
    }

    fn recently_handed_on(&self) -> bool {
        self.handed_on_at
            .is_some_and(|t| t.elapsed() <= REJOIN_WINDOW)
    }
}

impl KeySlot {
    /// Waits for this caller's turn. Dropping the future leaves the queue; a lock
    /// handed to this caller meanwhile must then be taken back (`take_orphaned`).
    pub async fn turn(self: &Arc<Self>) -> LocalTurn {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let leave = LeaveOnDrop(&self.waiting);
        let state = self.state.clone().lock_owned().await;
        drop(leave);
        LocalTurn {
            state,
            slot: self.clone(),
        }
    }

    /// The turn if nobody has it now, without waiting.
    pub fn try_turn(self: &Arc<Self>) -> Option<LocalTurn> {
        let state = self.state.clone().try_lock_owned().ok()?;
        Some(LocalTurn {
            state,
            slot: self.clone(),
        })
    }

    /// Nobody uses the slot and it remembers nothing that matters.
    fn idle(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
            && self.lock_reserved().is_none()
            && self.state.try_lock().is_ok_and(|state| {
                state.inherited.is_none() && !state.yielding() && !state.recently_handed_on()
            })
    }

    fn lock_reserved(&self) -> std::sync::MutexGuard<'_, Option<Reserved>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes back the place reserved for `owner` if no caller took it: `false` when
    /// one did.
    pub fn abandon(&self, owner: &str) -> bool {
        let mut reserved = self.lock_reserved();
        if reserved.as_ref().is_some_and(|r| r.owner == owner) {
            *reserved = None;
            return true;
        }
        false
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
    /// Outside `state`, so that a place nobody takes can be given up while another
    /// caller has the turn.
    reserved: Mutex<Option<Reserved>>,
}

/// The local turn of one caller: holding it means being the head of the key's queue.
pub struct LocalTurn {
    state: OwnedMutexGuard<SlotState>,
    slot: Arc<KeySlot>,
}

impl LocalTurn {
    /// Whether another caller of this process waits for the key.
    pub fn has_waiters(&self) -> bool {
        self.slot.waiting.load(Ordering::SeqCst) > 0
    }

    /// Whether this process handed the key to its own waiters `MAX_LOCAL_HANDOVERS`
    /// times in a row: other processes' waiters come first now.
    pub fn streak_used_up(&self) -> bool {
        self.state.streak >= MAX_LOCAL_HANDOVERS
    }

    /// Whether the streak is used up once this turn hands the key over.
    pub fn streak_ends_next(&self) -> bool {
        self.state.streak + 1 >= MAX_LOCAL_HANDOVERS
    }

    /// Leaves the lock to the next waiter, and gives up the turn.
    /// Returns the slot, to take the lock back if no waiter took the turn.
    pub fn hand_over(mut self, inherited: Inherited) -> Arc<KeySlot> {
        self.state.streak += 1;
        self.state.inherited = Some(inherited);
        self.slot
    }

    /// The place in the database's queue that a release reserved for us, if any.
    pub fn take_reserved(&mut self) -> Option<Reserved> {
        self.slot.lock_reserved().take()
    }

    /// Notes whether this caller took the key soon after this process passed it to
    /// another process.
    pub fn note_return(&mut self) {
        let state = &mut *self.state;
        state.returning = state.recently_handed_on();
    }

    /// Whether this process will probably want the key again soon after releasing it:
    /// another caller waits for it, or this one came back quickly last time.
    pub fn will_return(&self) -> bool {
        self.state.returning || self.has_waiters()
    }

    /// Keeps the place that the release of this turn took for the next caller.
    /// Returns the slot, to give the place up if no caller takes it, and the place it
    /// replaces, if an older one was still kept.
    pub fn reserve(self, reserved: Reserved) -> (Arc<KeySlot>, Option<Reserved>) {
        let replaced = self.slot.lock_reserved().replace(reserved);
        (self.slot.clone(), replaced)
    }

    /// The lock the previous local holder left for us, if any.
    pub fn inherit(&mut self) -> Option<Inherited> {
        self.state.inherited.take()
    }

    /// The streak starts over: the inherited lock was lost before it could be taken,
    /// or no other process waits for the key.
    pub fn restart_streak(&mut self) {
        self.state.streak = 0;
    }

    /// The key was released in the database; after a contended release, this process
    /// lets other processes try first for `yield_for`.
    pub fn released(&mut self, yield_for: Option<Duration>, handed_on: bool) {
        self.state.streak = 0;
        self.state.yield_until = yield_for.map(|d| Instant::now() + d);
        self.state.handed_on_at = handed_on.then(Instant::now);
    }

    /// Until when this process should let other processes try first, if at all.
    pub fn yielding_until(&mut self) -> Option<Instant> {
        self.state
            .yield_until
            .take()
            .filter(|t| *t > Instant::now())
    }
}

#[derive(Default)]
pub struct LocalQueues {
    slots: Mutex<Slots>,
}

/// The slots of the keys in use, and the size at which idle ones are next dropped.
#[derive(Default)]
struct Slots {
    by_key: HashMap<String, Arc<KeySlot>>,
    prune_at: usize,
}

/// Below this many slots, idle ones wait for `tidy`.
const PRUNE_AT_LEAST: usize = 1024;

impl LocalQueues {
    pub fn slot(&self, key: &LockKey) -> Arc<KeySlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        // Drop idle slots (ones `tidy` could not) so a process that locks millions of
        // distinct keys stays flat; at most once per doubling, so that with many keys
        // held at once an acquisition does not scan them all.
        if slots.by_key.len() > slots.prune_at.max(PRUNE_AT_LEAST) {
            slots.by_key.retain(|_, slot| !slot.idle());
            slots.prune_at = slots.by_key.len() * 2;
        }
        slots
            .by_key
            .entry(key.identity())
            .or_insert_with(|| {
                Arc::new(KeySlot {
                    state: Arc::new(FairMutex::new(SlotState::default())),
                    waiting: AtomicUsize::new(0),
                    reserved: Mutex::default(),
                })
            })
            .clone()
    }

    /// Forgets the slot of `key` when nobody uses it any more.
    pub fn tidy(&self, key: &LockKey) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let name = key.identity();
        if slots.by_key.get(&name).is_some_and(|slot| slot.idle()) {
            slots.by_key.remove(&name);
        }
    }
}

struct LeaveOnDrop<'a>(&'a AtomicUsize);

impl Drop for LeaveOnDrop<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_first_come_first_served_and_try_turn_never_waits() {
        let queues = LocalQueues::default();
        let slot = queues.slot(&LockKey::Str("k".into()));
        let first = slot.turn().await;
        assert!(slot.try_turn().is_none());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (slot, tx) = (slot.clone(), tx.clone());
            tokio::spawn(async move {
                let turn = slot.turn().await;
                tx.send(i).unwrap();
                drop(turn);
            });
            tokio::task::yield_now().await;
        }
        assert!(first.has_waiters() && !first.streak_used_up());
        drop(first);
        let order: Vec<_> = [rx.recv().await, rx.recv().await, rx.recv().await].into();
        assert_eq!(order, vec![Some(0), Some(1), Some(2)]);
        assert!(slot.try_turn().is_some());
    }

    #[test]
    fn idle_slots_are_dropped_once_per_doubling_and_live_ones_kept() {
        let queues = LocalQueues::default();
        let count = |queues: &LocalQueues| queues.slots.lock().unwrap().by_key.len();
        let held: Vec<_> = (0..1500)
            .map(|i| queues.slot(&LockKey::Num(i as f64)).try_turn().unwrap())
            .collect();
        for i in 0..1000 {
            queues.slot(&LockKey::Str(format!("idle-{i}")));
        }
        // The prune ran when the map passed 1024 slots; it keeps every held key.
        assert!(count(&queues) < 2500, "{}", count(&queues));
        queues.slot(&LockKey::Str("next".into()));
        assert!(count(&queues) >= 1501);
        assert!(held.iter().all(|turn| !turn.slot.idle()));
        drop(held);
        let at = queues.slots.lock().unwrap().prune_at;
        for i in 0..=at {
            queues.slot(&LockKey::Str(format!("more-{i}")));
        }
        // Past twice the size after the last prune: everything idle went.
        assert!(
            count(&queues) <= at,
            "{} slots, pruned at {at}",
            count(&queues)
        );
    }

    #[tokio::test]
    async fn a_reserved_place_goes_to_one_taker_and_a_newer_one_replaces_it() {
        let queues = LocalQueues::default();
        let slot = queues.slot(&LockKey::Num(2.0));
        let place = |owner: &str| Reserved {
            owner: owner.into(),
            place: Box::new(()),
        };
        let (_, replaced) = slot.turn().await.reserve(place("first"));
        assert!(replaced.is_none());
        let (_, replaced) = slot.turn().await.reserve(place("second"));
        // The older place comes back, to be given up; its watch finds it gone.
        assert_eq!(replaced.map(|r| r.owner), Some("first".into()));
        assert!(!slot.abandon("first"));
        let taken = slot.turn().await.take_reserved().map(|r| r.owner);
        assert_eq!(taken, Some("second".into()));
        assert!(!slot.abandon("second"), "taken, not to be given up");
        let (_, _) = slot.turn().await.reserve(place("third"));
        assert!(slot.abandon("third"));
        assert!(slot.turn().await.take_reserved().is_none());
    }

    #[tokio::test]
    async fn a_lock_handed_to_nobody_is_taken_back() {
        let queues = LocalQueues::default();
        let slot = queues.slot(&LockKey::Num(1.0));
        let turn = slot.turn().await;
        let slot = turn.hand_over(Box::new("me"));
        let orphan = slot.take_orphaned().and_then(|o| o.downcast::<&str>().ok());
        assert_eq!(orphan.map(|o| *o), Some("me"));
        assert!(slot.take_orphaned().is_none());
    }
}
