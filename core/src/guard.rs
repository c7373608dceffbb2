//! A held lock as its holder sees it (`LockGuard`), and the lock as this process holds
//! it in the database (`DbHold`).
//!
//! A `DbHold` is one lock document under one owner id, with one lease and one keeper.
//! When a holder releases and another caller of this process is waiting, the hold
//! passes to that caller in memory: no database write, the lease and its keeper stay.
//! Each holder gets its own fencing token, `(database token << 16) | local sequence`:
//! it increases with every local hand-over, and any later acquisition in the database
//! (by any process) has a larger database token, so tokens still strictly increase in
//! the order of the holds.

use std::any::Any;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};
use crate::key::LockKey;
use crate::lease::{HoldOptions, KeeperHandle, Loss, Work};
use crate::local_queue::LocalTurn;
use crate::rejoin::{self, Place};
use crate::shared::{retried, Shared};
use crate::store::{Held, PassedOn, Released, RESTORE_WAIT};

/// Bits of a fencing token below the database token: room for the local sequence.
const LOCAL_SEQUENCE_BITS: u32 = 16;
/// Holders under one hold before it is released in the database, so that the local
/// sequence never reaches the database token's bits.
const MAX_HOLDERS: u32 = (1 << LOCAL_SEQUENCE_BITS) - 1;
/// A failed release is tried again this many times, the first after this pause, each
/// next one after twice the pause before (0.1, 0.3, 0.7 s after the failure).
const RELEASE_RETRIES: u32 = 3;
const RELEASE_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The lock as this process holds it in the database.
pub(crate) struct DbHold {
    shared: Arc<Shared>,
    key: LockKey,
    owner: String,
    database_token: u64,
    /// Whether other processes were probably queued when it was taken.
    queued_behind: bool,
    /// Holders so far under this hold, the first included.
    holders: AtomicU32,
    /// The lease the keeper writes, in ms.
    lease_ms: AtomicU64,
    keeper: KeeperHandle,
    /// The answer of the last `look_ahead`, once it has come.
    looked_ahead: Mutex<Option<oneshot::Receiver<bool>>>,
    /// When this process began to hold the lock.
    since: Instant,
}

impl DbHold {
    fn start(
        shared: Arc<Shared>,
        key: LockKey,
        held: Held,
        lease: Duration,
        turn: LocalTurn,
    ) -> Arc<Self> {
        shared.hold_started(&held.owner);
        let keeper = KeeperHandle::start(shared.clone(), key.clone(), &held, lease, turn);
        Arc::new(DbHold {
            shared,
            key,
            owner: held.owner,
            database_token: held.fencing_token,
            queued_behind: held.queued_behind,
            holders: AtomicU32::new(0),
            lease_ms: AtomicU64::new(lease.as_millis() as u64),
            keeper,
            looked_ahead: Mutex::default(),
            since: Instant::now(),
        })
    }

    /// The fencing token of the next holder under this hold.
    fn next_token(&self) -> u128 {
        let sequence = self.holders.fetch_add(1, Ordering::SeqCst);
        ((self.database_token as u128) << LOCAL_SEQUENCE_BITS) | sequence as u128
    }

    pub fn is_lost(&self) -> bool {
        self.keeper.loss.is_lost()
    }

    /// Whether another holder may still follow under this hold.
    fn sequence_left(&self) -> bool {
        self.holders.load(Ordering::SeqCst) < MAX_HOLDERS
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::SeqCst))
    }

    /// Stops the keeper and passes the lock to the next process in its queue, or
    /// deletes it, if it is still ours.
    pub async fn end(&self) -> Result<Released> {
        self.keeper.stop();
        let (key, owner, lease) = (&self.key, &self.owner, self.lease());
        let store = &self.shared.store;
        let released = store.release(key, owner, lease, self.queued_behind).await?;
        Ok(self.restore_later(released))
    }

    /// `end`, for a process that will want the lock again: when the lock is passed
    /// on, this process queues again in the same write, and the place is returned.
    async fn end_rejoining(&self) -> Result<(Released, Option<Place>)> {
        self.keeper.stop();
        let (key, owner, lease) = (&self.key, &self.owner, self.lease());
        let (passed, place) = rejoin::pass_on(&self.shared, key, owner, lease).await?;
        let released = self.shared.store.release_after(key, owner, passed).await?;
        Ok((self.restore_later(released), place))
    }

    /// Ends a release that `pass_on` did not finish.
    async fn end_after(&self, passed: PassedOn) -> Result<Released> {
        self.keeper.stop();
        let store = &self.shared.store;
        let released = store.release_after(&self.key, &self.owner, passed).await?;
        Ok(self.restore_later(released))
    }

    /// `released`, after starting the restore of the lock if it was deleted at the
    /// end of its passing window.
    fn restore_later(&self, released: Released) -> Released {
        let (key, lease, held_for) = (&self.key, self.lease(), self.since.elapsed());
        self.shared.restore_later(key, released, lease, held_for)
    }

    /// Passes the lock to the next process in its queue, if any, queueing this
    /// process again in the same write for its waiting callers (the place is
    /// returned); the keeper goes on unless the lock was passed on.
    async fn pass_on(&self) -> Result<(PassedOn, Option<Place>)> {
        let (key, owner, lease) = (&self.key, &self.owner, self.lease());
        let passed = rejoin::pass_on(&self.shared, key, owner, lease).await?;
        if passed.0 == PassedOn::HandedOver {
            self.keeper.stop();
        }
        Ok(passed)
    }

    /// Starts asking whether another process is queued for the lock, so that the
    /// answer is there when the local streak ends, while the last holder of the streak
    /// works, instead of costing a round trip with nobody holding the lock. It may be
    /// stale by then: a process that queued meanwhile waits one streak more.
    fn look_ahead(&self) {
        let (tell, told) = oneshot::channel();
        *self.looked_ahead.lock().unwrap_or_else(|e| e.into_inner()) = Some(told);
        let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner.clone());
        tokio::spawn(async move {
            let nobody = shared.store.nobody_queued(&key, &owner).await;
            let _ = tell.send(nobody.unwrap_or(false));
        });
    }

    /// Whether the last `look_ahead` has answered that nobody else is queued.
    fn nobody_queued(&self) -> bool {
        let told = self
            .looked_ahead
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        told.is_some_and(|mut told| told.try_recv() == Ok(true))
    }

    /// A lock this process left for a local waiter that did not take it.
    pub fn from_orphan(orphan: Box<dyn Any + Send>) -> Option<Arc<DbHold>> {
        orphan.downcast::<Arc<DbHold>>().ok().map(|hold| *hold)
    }
}

impl Drop for DbHold {
    fn drop(&mut self) {
        self.shared.hold_ended(&self.owner);
    }
}

/// Lets protected work start only while the lock is still held, and starts the
/// `lock_timeout` clock when it does. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct WorkGate {
    loss: Loss,
    work: Arc<tokio::sync::watch::Sender<Option<Work>>>,
    lock_timeout: Option<Duration>,
    entered: Arc<AtomicBool>,
}

impl WorkGate {
    /// `true` when the work may start now (the lock is held); `false` when the lock
    /// was lost first, and the work must not start at all.
    pub fn enter(&self) -> bool {
        if self.loss.is_lost() {
            return false;
        }
        let work = Work {
            started: Instant::now(),
            lock_timeout: self.lock_timeout,
        };
        self.work.send_replace(Some(work));
        self.entered.store(true, Ordering::SeqCst);
        true
    }

    /// Whether `enter` let the work start.
    pub fn entered(&self) -> bool {
        self.entered.load(Ordering::SeqCst)
    }
}

pub struct LockGuard {
    hold: Arc<DbHold>,
    fencing_token: u128,
    gate: WorkGate,
    /// Cancelled when this holder is done (released or dropped).
    stop: CancellationToken,
    released: bool,
}

impl LockGuard {
    /// The first holder of a lock just taken in the database.
    pub(crate) fn first(
        shared: Arc<Shared>,
        key: LockKey,
        held: Held,
        options: HoldOptions,
        turn: LocalTurn,
    ) -> Self {
        let hold = DbHold::start(shared, key, held, options.lease, turn);
        Self::holding(hold, options)
    }

    /// The next holder of a lock handed over by the previous local holder.
    pub(crate) fn inherit(hold: Arc<DbHold>, options: HoldOptions, turn: LocalTurn) -> Self {
        hold.keeper.loss.give_turn(turn);
        let lease = options.lease.as_millis() as u64;
        if hold.lease_ms.swap(lease, Ordering::SeqCst) != lease {
            // This holder asked for another lease: written in the background.
            drop(hold.keeper.extend(options.lease));
        }
        Self::holding(hold, options)
    }

    fn holding(hold: Arc<DbHold>, options: HoldOptions) -> Self {
        let gate = WorkGate {
            loss: hold.keeper.loss.clone(),
            work: hold.keeper.work.clone(),
            lock_timeout: options.lock_timeout,
            entered: Arc::default(),
        };
        LockGuard {
            fencing_token: hold.next_token(),
            hold,
            gate,
            stop: CancellationToken::new(),
            released: false,
        }
    }

    pub fn fencing_token(&self) -> u128 {
        self.fencing_token
    }

    /// The gate the protected work must pass to start.
    pub fn gate(&self) -> WorkGate {
        self.gate.clone()
    }

    /// Why the lock is no longer safely held; `None` while it is.
    pub fn loss(&self) -> Option<LockError> {
        let loss = &self.hold.keeper.loss;
        loss.lost.is_cancelled().then(|| loss.reason())
    }

    /// Resolves when the lock is no longer safely held, with the reason.
    pub async fn lost(&self) -> LockError {
        self.hold.keeper.loss.lost.cancelled().await;
        self.hold.keeper.loss.reason()
    }

    /// Resolves with the reason when the lock is lost, or with `None` when this holder
    /// releases it (or is dropped) first. Owns what it needs, so it can outlive the
    /// guard without keeping it alive.
    pub fn lost_or_released(&self) -> impl Future<Output = Option<LockError>> + Send + 'static {
        let (loss, stop) = (self.hold.keeper.loss.clone(), self.stop.clone());
        async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                _ = loss.lost.cancelled() => Some(loss.reason()),
            }
        }
    }

    /// Writes a lease of `lease` from now, and keeps renewing with it. Fails with
    /// the reason when the lock is lost, or with the driver's error when the write
    /// failed (the lock is then still held until its current lease ends).
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        self.hold
            .lease_ms
            .store(lease.as_millis() as u64, Ordering::SeqCst);
        match self.hold.keeper.extend(lease).await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.hold.keeper.loss.reason()),
        }
    }

    /// Releases the lock: hands it to the next waiter of this process when there is
    /// one (after `MAX_LOCAL_HANDOVERS` turns in a row, only if no other process is
    /// queued), else to the next process in the database's queue, else deletes it;
    /// but only if it is still ours. `Ok(false)` when it was no longer ours.
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.stop.cancel();
        let turn = self.hold.keeper.loss.take_turn();
        let still_ours = !self.hold.is_lost();
        release(self.hold.clone(), turn, still_ours).await
    }
}

impl Drop for LockGuard {
    /// A guard dropped without `release` (its future was cancelled, its handle
    /// collected) must not keep the key locked until the lease runs out.
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            return;
        }
        let (hold, turn) = (self.hold.clone(), self.hold.keeper.loss.take_turn());
        let shared = hold.shared.clone();
        shared.spawn(async move {
            let _ = release(hold, turn, false).await;
        });
    }
}

/// A release whose write failed is tried again in the background (`end_again_later`).
async fn release(hold: Arc<DbHold>, turn: Option<LocalTurn>, hand_over: bool) -> Result<bool> {
    let released = release_now(hold.clone(), turn, hand_over).await;
    if released.is_err() {
        end_again_later(hold);
    }
    released
}

/// Ends `hold` in the database in the background, trying again if that fails: for a
/// caller that must not wait on a write (its wait ended, or the hold it inherited was
/// lost). A ticket is taken, so that `close()` waits for it.
pub(crate) fn end_for_good(hold: Arc<DbHold>) {
    let shared = hold.shared.clone();
    let ticket = shared.ticket();
    shared.spawn(async move {
        if hold.end().await.is_err() {
            end_again_later(hold);
        }
        drop(ticket);
    });
}

/// A release whose write failed may have left the lock in the database, where it
/// would block every other caller until its lease runs out: the release is tried again
/// a few times, as a waiter's give-up is. It matches on the owner, so a retry after a
/// write that was applied after all changes nothing. The hold stays counted, and a
/// ticket is taken, so that `close()` waits for it and the binding keeps the process
/// alive for it.
fn end_again_later(hold: Arc<DbHold>) {
    let shared = hold.shared.clone();
    let ticket = shared.ticket();
    shared.spawn(async move {
        tokio::time::sleep(RELEASE_RETRY_PAUSE).await;
        retried(RELEASE_RETRIES, RELEASE_RETRY_PAUSE * 2, || hold.end()).await;
        drop(ticket);
    });
}

async fn release_now(hold: Arc<DbHold>, turn: Option<LocalTurn>, hand_over: bool) -> Result<bool> {
    let Some(turn) = turn else {
        return Ok(hold.end().await? != Released::NotOurs);
    };
    let open = hand_over && !hold.shared.is_closed();
    if open && turn.has_waiters() && hold.sequence_left() {
        if turn.streak_used_up() {
            return end_streak(hold, turn).await;
        }
        return hand_over_locally(hold, turn).await;
    }
    release_in_database(hold, turn, open).await
}

/// After `MAX_LOCAL_HANDOVERS` in a row, other processes' turn first, if any is
/// queued; else ours goes on. The look-ahead usually knows already; if not,
/// `pass_on` asks.
async fn end_streak(hold: Arc<DbHold>, mut turn: LocalTurn) -> Result<bool> {
    let (passed, place) = if hold.nobody_queued() {
        (PassedOn::NobodyQueued { contended: false }, None)
    } else {
        hold.pass_on().await?
    };
    let ended = match passed {
        PassedOn::NobodyQueued { contended: false } => {
            turn.restart_streak();
            return hand_over_locally(hold, turn).await;
        }
        PassedOn::HandedOver => Released::HandedOver,
        PassedOn::NotOurs => Released::NotOurs,
        // Another process must get its chance: delete, without asking again.
        passed @ (PassedOn::NobodyQueued { contended: true } | PassedOn::Capped) => {
            hold.end_after(passed).await?
        }
    };
    Ok(released(&hold, turn, ended, place))
}

/// Releases the lock in the database; a process that will probably want it again
/// queues again with the hand-over (`rejoin.rs`).
async fn release_in_database(hold: Arc<DbHold>, turn: LocalTurn, open: bool) -> Result<bool> {
    let ended = if open && hold.queued_behind && turn.will_return() {
        hold.end_rejoining().await
    } else {
        hold.end().await.map(|ended| (ended, None))
    };
    match ended {
        Ok((ended, place)) => Ok(released(&hold, turn, ended, place)),
        Err(e) => {
            released(&hold, turn, Released::Free, None);
            Err(e)
        }
    }
}

/// Leaves the lock to the next waiter of this process.
async fn hand_over_locally(hold: Arc<DbHold>, turn: LocalTurn) -> Result<bool> {
    hold.keeper.work.send_replace(None);
    if turn.streak_ends_next() {
        hold.look_ahead();
    }
    let slot = turn.hand_over(Box::new(hold));
    // The waiter may have given up in the meantime: then nobody holds the turn
    // now and the lock must not stay behind.
    if let Some(orphan) = slot.take_orphaned().and_then(DbHold::from_orphan) {
        orphan.end().await?;
    }
    Ok(true)
}

/// Ends the turn after the lock left this process; after a contended release, the
/// next local attempt waits a moment so that the other process's waiter gets it.
/// A place the release took in the queue is kept for the next local caller.
fn released(hold: &DbHold, mut turn: LocalTurn, how: Released, place: Option<Place>) -> bool {
    // After a deletion with processes queued, as long as they wait for a restore: a
    // caller that queued first would take the free key ahead of them.
    let yield_for = match how {
        Released::Contended => Some(hold.shared.store.yield_window()),
        Released::Restoring | Released::Requeueing => Some(RESTORE_WAIT),
        _ => None,
    };
    turn.released(yield_for, how == Released::HandedOver);
    match place {
        Some(place) => rejoin::keep(place, turn, &hold.shared, &hold.key, hold.lease()),
        None => drop(turn),
    }
    hold.shared.queues.tidy(&hold.key);
    how != Released::NotOurs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::trusted;

    /// A guard over a lock "held" through a client that reaches no server: every
    /// renewal hangs in server selection, as it does for a partitioned holder.
    async fn partitioned_guard(options: HoldOptions) -> (LockGuard, Instant) {
        let uri = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=600000&connectTimeoutMS=600000";
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let store = crate::store::LockStore::new(client.database("keeper"), None);
        let service = Arc::new(Shared::new(store));
        let held = Held {
            owner: "me".into(),
            sent_at: Instant::now(),
            fencing_token: 1,
            queued_behind: false,
        };
        let key = LockKey::Str("k".into());
        let turn = service.queues.slot(&key).try_turn().unwrap();
        (
            LockGuard::first(service, key, held, options, turn),
            Instant::now(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_does_not_delay_the_end_of_the_lease() {
        let lease = Duration::from_secs(1);
        let options = HoldOptions {
            lock_timeout: None,
            lease,
        };
        let (guard, start) = partitioned_guard(options).await;
        let why = guard.lost().await;
        assert!(matches!(why, LockError::LockLost { .. }), "{why:?}");
        assert_eq!(start.elapsed(), trusted(lease));
    }

    #[tokio::test(start_paused = true)]
    async fn lock_timeout_counts_from_the_start_of_the_work() {
        let options = HoldOptions {
            lock_timeout: Some(Duration::from_millis(300)),
            lease: Duration::from_secs(10),
        };
        let (guard, start) = partitioned_guard(options).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!guard.gate().entered());
        assert!(guard.gate().enter());
        let why = guard.lost().await;
        assert!(matches!(why, LockError::LockTimeout), "{why:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(800));
    }

    #[tokio::test(start_paused = true)]
    async fn work_cannot_start_once_the_lock_is_lost() {
        let lease = Duration::from_millis(300);
        let options = HoldOptions {
            lock_timeout: None,
            lease,
        };
        let (guard, _) = partitioned_guard(options).await;
        guard.lost().await;
        assert!(!guard.gate().enter());
        assert!(!guard.gate().entered());
    }

    #[tokio::test(start_paused = true)]
    async fn close_ends_the_hold_at_once() {
        let lease = Duration::from_secs(5);
        let options = HoldOptions {
            lock_timeout: None,
            lease,
        };
        let (guard, start) = partitioned_guard(options).await;
        guard.hold.shared.close();
        assert!(matches!(guard.lost().await, LockError::Closed));
        assert!(start.elapsed() < Duration::from_millis(10));
    }
}
