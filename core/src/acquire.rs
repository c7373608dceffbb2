//! Taking a lock: the local queue first, then the database, waiting for releases
//! between attempts until `waitTimeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};
use crate::guard::{self, DbHold, LockGuard};
use crate::key::LockKey;
use crate::lease::HoldOptions;
use crate::local_queue::LocalTurn;
use crate::rejoin::{self, Taken};
use crate::release_feed::{HandOver, Restored, Subscription, Wake};
use crate::shared::{Shared, Ticket, LATE_WRITE};
use crate::store::{Blocker, Held, Queued, AFTER_DELETE, RESTORE_WAIT};

#[derive(Debug, Clone)]
pub struct AcquireOptions {
    /// Give up after this long (`Unable to establish lock.`). Zero means one attempt.
    pub wait_timeout: Duration,
    /// The longest pause between two attempts when no release is announced.
    pub retry_interval: Duration,
    pub hold: HoldOptions,
    /// The caller's cancellation (`AbortSignal`).
    pub cancel: CancellationToken,
}

/// With a live change stream a release wakes the waiter; this slower poll only
/// covers events lost while the stream was being reopened.
const SAFETY_POLL: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

pub(crate) async fn acquire(
    shared: &Arc<Shared>,
    key: &LockKey,
    options: &AcquireOptions,
) -> Result<LockGuard> {
    let wait = Wait {
        shared,
        key,
        options,
        deadline: Instant::now() + options.wait_timeout,
    };
    let mut turn = wait.local_turn().await?;
    if let Some(hold) = turn.inherit().and_then(DbHold::from_orphan) {
        if !hold.is_lost() {
            return Ok(LockGuard::inherit(hold, options.hold, turn));
        }
        // Lost while it waited for us (its lease ran out): compete as usual.
        guard::end_for_good(hold);
        turn.restart_streak();
    }
    turn.note_return();
    if let Some(until) = turn.yielding_until() {
        wait.interruptible(async {
            tokio::time::sleep_until(until.min(wait.deadline)).await;
            Ok(())
        })
        .await?;
    }
    // Counted before a reserved place is taken from its watch, and until the hold is
    // registered, so that `close()` never sees neither.
    let ticket = shared.ticket();
    // A single attempt cannot wait for its place; the place is given up unused.
    let taken = if options.wait_timeout.is_zero() {
        None
    } else {
        turn.take_reserved().and_then(rejoin::take)
    };
    let owner = match &taken {
        Some(taken) => taken.owner.clone(),
        None => shared.feed.new_owner(),
    };
    let (held, ticket) = wait.in_database(&owner, taken, ticket).await?;
    let guard = wait.guard(held, turn);
    drop(ticket);
    Ok(guard)
}

/// One caller's wait for one key.
struct Wait<'a> {
    shared: &'a Arc<Shared>,
    key: &'a LockKey,
    options: &'a AcquireOptions,
    /// When `waitTimeout` ends.
    deadline: Instant,
}

impl Wait<'_> {
    fn guard(&self, held: Held, turn: LocalTurn) -> LockGuard {
        let (shared, key, hold) = (self.shared.clone(), self.key.clone(), self.options.hold);
        LockGuard::first(shared, key, held, hold, turn)
    }

    /// The reason to stop waiting now, if there is one.
    fn interrupted(&self) -> Result<()> {
        if self.shared.is_closed() {
            Err(LockError::Closed)
        } else if self.options.cancel.is_cancelled() {
            Err(LockError::Aborted)
        } else {
            Ok(())
        }
    }

    /// Runs `step` unless the caller aborts, `close()` is called or `waitTimeout`
    /// passes first. With a zero `waitTimeout` the one attempt runs to its end.
    async fn interruptible<T>(&self, step: impl Future<Output = Result<T>>) -> Result<T> {
        let timeout = !self.options.wait_timeout.is_zero();
        tokio::select! {
            biased;
            _ = self.options.cancel.cancelled() => Err(LockError::Aborted),
            _ = self.shared.closed() => Err(LockError::Closed),
            result = step => result,
            _ = tokio::time::sleep_until(self.deadline), if timeout => Err(LockError::WaitTimeout),
        }
    }

    /// Waits for this caller's turn among the callers of this process, within the same
    /// `waitTimeout` as the whole call (zero: only if nobody has the turn now).
    async fn local_turn(&self) -> Result<LocalTurn> {
        let slot = self.shared.queues.slot(self.key);
        if self.options.wait_timeout.is_zero() {
            self.interrupted()?;
            return slot.try_turn().ok_or(LockError::WaitTimeout);
        }
        let waited = self.interruptible(async { Ok(slot.turn().await) }).await;
        if waited.is_err() {
            // A lock may have been handed to us in the moment we gave up.
            if let Some(orphan) = slot.take_orphaned().and_then(DbHold::from_orphan) {
                guard::end_for_good(orphan);
            }
        }
        waited
    }

    /// Runs a write by `owner` that may take the lock or queue for it. If the wait
    /// ends while it is in flight (abort, `close()`, `waitTimeout`, or the wait itself
    /// dropped), the call ends at once and the write finishes in the background,
    /// after which the waiter leaves the queue and the lock it took is released again.
    async fn acquiring_write<T: Send + 'static>(
        &self,
        owner: &str,
        write: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let mut in_flight = InFlightWrite {
            task: Some(tokio::spawn(write)),
            shared: self.shared.clone(),
            key: self.key.clone(),
            owner: owner.to_owned(),
            lease: self.options.hold.lease,
        };
        let task = in_flight.task.as_mut().expect("just spawned");
        let joined = self
            .interruptible(async {
                task.await.unwrap_or_else(|e| {
                    Err(LockError::lost(format!("the acquiring write failed: {e}")))
                })
            })
            .await;
        if !matches!(
            &joined,
            Err(LockError::Aborted | LockError::Closed | LockError::WaitTimeout)
        ) {
            in_flight.task = None;
        }
        joined
    }

    async fn insert(&self, owner: &str) -> Result<Option<Held>> {
        let (shared, key, me) = (self.shared.clone(), self.key.clone(), owner.to_owned());
        let lease = Some(self.options.hold.lease);
        let insert = async move { shared.store.insert(&key, &me, lease).await.map(Some) };
        match self.acquiring_write(owner, insert).await {
            Err(LockError::DuplicateKey { .. }) => Ok(None),
            other => other,
        }
    }

    async fn claim(&self, owner: &str) -> Result<Option<Held>> {
        let (shared, key, me) = (self.shared.clone(), self.key.clone(), owner.to_owned());
        let lease = self.options.hold.lease;
        let claim = async move { shared.store.claim(&key, &me, lease).await };
        self.acquiring_write(owner, claim).await
    }

    async fn take_or_enqueue(&self, owner: &str) -> Result<Option<Queued>> {
        let (shared, key, me) = (self.shared.clone(), self.key.clone(), owner.to_owned());
        let lease = self.options.hold.lease;
        let write = async move { shared.store.take_or_enqueue(&key, &me, lease).await };
        self.acquiring_write(owner, write).await
    }

    /// The lock the change stream says is now ours; confirmed with a write when the
    /// event does not tell its lease, or too little of it is left.
    async fn handed_over(&self, handed: HandOver, owner: &str) -> Result<Option<Held>> {
        let Some(expiry) = handed.lease_expires_at else {
            return self.claim(owner).await;
        };
        let (token, lease) = (handed.fencing_token, self.options.hold.lease);
        match self
            .shared
            .store
            .handed_over(owner, expiry, token, lease)
            .await?
        {
            Some(held) => Ok(Some(held)),
            None => self.claim(owner).await,
        }
    }

    async fn take_over(&self, blocker: &Blocker, owner: &str) -> Result<Option<Held>> {
        let (shared, key, blocker) = (self.shared.clone(), self.key.clone(), blocker.clone());
        let (me, lease) = (owner.to_owned(), Some(self.options.hold.lease));
        let write = async move { shared.store.take_over(&key, &blocker, &me, lease).await };
        self.acquiring_write(owner, write).await
    }

    /// Tries until the lock is ours. Where the change stream runs, the waiter joins
    /// the lock's queue and is woken when the lock is handed to it or deleted; where it
    /// does not, it polls. Either way it takes the lock over once its lease has passed.
    /// A caller that took a place a release reserved (`rejoin.rs`) starts out queued.
    async fn in_database(
        &self,
        owner: &str,
        taken: Option<Taken>,
        ticket: Ticket,
    ) -> Result<(Held, Ticket)> {
        let mut exit = QueueExit {
            shared: self.shared.clone(),
            key: self.key.clone(),
            owner: owner.to_owned(),
            lease: self.options.hold.lease,
            ticket: Some(ticket),
            queued: taken.is_some(),
        };
        match self.attempts(owner, &mut exit.queued, taken).await {
            Ok(held) => Ok((held, exit.held())),
            Err(e) => {
                // A write the driver reported failed may still be applied after it
                // gave up on it: leave the queue once more a moment later.
                exit.leave(matches!(e, LockError::Mongo(_)).then_some(LATE_WRITE));
                Err(e)
            }
        }
    }

    async fn attempts(
        &self,
        owner: &str,
        queued: &mut bool,
        mut taken: Option<Taken>,
    ) -> Result<Held> {
        let mut backoff = Backoff::new(self.options.retry_interval);
        let mut subscription = None;
        let mut behind = None;
        loop {
            // The turn may have come because `close()` ended the hold before us.
            self.interrupted()?;
            let blocker = match (behind.take(), taken.take()) {
                (Some(restored), _) => restored,
                (None, Some(taken)) => {
                    subscription = Some(taken.releases);
                    taken.blocker
                }
                (None, None) => match self.look(owner, queued, &mut subscription).await? {
                    InTheWay::Lock(blocker) => blocker,
                    InTheWay::Ours(held) => return Ok(held),
                    // Released between our insert and our look: try again at once.
                    InTheWay::Nothing => continue,
                },
            };
            let releases = subscription.as_mut().expect("subscribed before");
            if let Some(held) = self.take_over(&blocker, owner).await? {
                return Ok(held);
            }
            let pause = self.pause(releases, &blocker, &mut backoff).await?;
            match self.wait(releases, &blocker, owner, pause).await? {
                Waited::Handed(handed) => {
                    if let Some(held) = self.handed_over(handed, owner).await? {
                        return Ok(held);
                    }
                    // The turn came to nothing (its lease had run out): the wait goes
                    // on another way than its place foresaw.
                    releases.listen_now();
                }
                Waited::Behind(restored) => behind = Some(restored),
                Waited::Look => {}
            }
        }
    }

    /// Inserts, or queues where this waiter can hear its turn come: the lock in the
    /// way, or the lock itself.
    async fn look(
        &self,
        owner: &str,
        queued: &mut bool,
        subscription: &mut Option<Subscription>,
    ) -> Result<InTheWay> {
        if !self.may_queue(owner, subscription).await? {
            if let Some(held) = self.insert(owner).await? {
                return Ok(InTheWay::Ours(held));
            }
            if self.options.wait_timeout.is_zero() {
                return self.last_attempt(owner).await.map(InTheWay::Ours);
            }
            // Only now, with somebody in the way, is the release feed worth its cost.
            if subscription.is_none() {
                *subscription = Some(self.subscribe().await?);
            }
        }
        let live = subscription.as_ref().is_some_and(|s| s.live);
        *queued |= live;
        let queued_with = subscription.as_ref().filter(|_| live);
        self.in_the_way(queued_with, owner).await
    }

    async fn subscribe(&self) -> Result<Subscription> {
        let subscribe = self.shared.feed.subscribe(self.shared.store.collection());
        self.interruptible(async { Ok(subscribe.await) }).await
    }

    /// Whether this waiter can hear its turn come, and so may queue at once instead
    /// of first trying to insert: the release feed is live, because this waiter
    /// already subscribed, or another caller of this process keeps it open. Then it
    /// subscribes deferred, to listen once its place is known (`listening.rs`).
    async fn may_queue(
        &self,
        owner: &str,
        subscription: &mut Option<Subscription>,
    ) -> Result<bool> {
        if self.options.wait_timeout.is_zero() {
            return Ok(false);
        }
        if subscription.is_none() {
            *subscription = self.shared.feed.subscribe_deferred_if_live(owner, self.key);
        }
        Ok(subscription.as_ref().is_some_and(|s| s.live))
    }

    /// The lock in our way, having joined its queue if we can hear our turn come
    /// (through `releases`, told our place); or the lock itself, if the key was free or
    /// it was handed to us meanwhile.
    async fn in_the_way(&self, releases: Option<&Subscription>, owner: &str) -> Result<InTheWay> {
        let Some(releases) = releases else {
            let found = self
                .interruptible(self.shared.store.blocker(self.key))
                .await?;
            return Ok(found.map_or(InTheWay::Nothing, InTheWay::Lock));
        };
        Ok(match self.take_or_enqueue(owner).await? {
            Some(Queued::Behind { blocker, places }) => {
                releases.place(places);
                InTheWay::Lock(blocker)
            }
            Some(Queued::Ours(held)) => InTheWay::Ours(held),
            Some(Queued::Unconfirmed) => self
                .claim(owner)
                .await?
                .map_or(InTheWay::Nothing, InTheWay::Ours),
            // Another process inserted at the same moment.
            None => InTheWay::Nothing,
        })
    }

    /// How long to wait at most before looking again: until the blocker's lease has
    /// passed, or the next poll.
    async fn pause(
        &self,
        releases: &Subscription,
        blocker: &Blocker,
        backoff: &mut Backoff,
    ) -> Result<Duration> {
        let poll = if releases.live {
            SAFETY_POLL.max(self.options.retry_interval)
        } else {
            backoff.next()
        };
        Ok(
            match self.interruptible(self.until_expiry(blocker)).await? {
                Some(expiry) => poll.min(expiry),
                None => poll,
            },
        )
    }

    /// Waits up to `pause` for the blocker to be deleted or handed to us.
    async fn wait(
        &self,
        releases: &mut Subscription,
        blocker: &Blocker,
        owner: &str,
        pause: Duration,
    ) -> Result<Waited> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(LockError::WaitTimeout);
        }
        let woke = self
            .interruptible(async {
                tokio::select! {
                    wake = releases.wake(&blocker.doc_id, owner) => Ok(Some(wake)),
                    _ = tokio::time::sleep_until(now + pause) => Ok(None),
                }
            })
            .await?;
        match woke {
            Some(Wake::HandedToUs(handed)) => Ok(Waited::Handed(handed)),
            Some(Wake::Deleted) => self.after_deletion(releases, blocker, owner).await,
            Some(Wake::Missed) | None => Ok(Waited::Look),
        }
    }

    /// After the lock in our way was deleted: one with a lease (ours) may come back
    /// with its queue, ours among it (`LockStore::restore`). If it does not within
    /// `RESTORE_WAIT`, or was the original's, we queue again once others have had
    /// their `AFTER_DELETE` to insert.
    async fn after_deletion(
        &self,
        releases: &mut Subscription,
        blocker: &Blocker,
        owner: &str,
    ) -> Result<Waited> {
        if blocker.lease_expires_at.is_none() {
            let pause = async {
                tokio::time::sleep(AFTER_DELETE).await;
                Ok(Waited::Look)
            };
            return self.interruptible(pause).await;
        }
        let doc_id = &blocker.doc_id;
        let restored = releases.restored(doc_id, owner, RESTORE_WAIT);
        let restored = self.interruptible(async { Ok(restored.await) }).await?;
        Ok(match restored {
            Restored::ToUs(handed) => Waited::Handed(handed),
            Restored::Behind {
                places,
                lease_expires_at,
            } => {
                releases.place(places);
                let doc_id = doc_id.clone();
                Waited::Behind(Blocker {
                    doc_id,
                    lease_expires_at,
                })
            }
            Restored::Without | Restored::Unseen => Waited::Look,
        })
    }

    /// The rest of a single attempt (`waitTimeout: 0`): take the lock over if its lease
    /// has passed, else give up without waiting for anything.
    async fn last_attempt(&self, owner: &str) -> Result<Held> {
        // A read: dropped at once on abort or `close()`, it changes nothing.
        let blocker = self.interruptible(self.shared.store.blocker(self.key));
        if let Some(blocker) = blocker.await? {
            if let Some(held) = self.take_over(&blocker, owner).await? {
                return Ok(held);
            }
        }
        Err(LockError::WaitTimeout)
    }

    /// Time until the blocker's lease has surely passed on the server's clock, if it
    /// has a lease.
    async fn until_expiry(&self, blocker: &Blocker) -> Result<Option<Duration>> {
        let Some(expiry) = blocker.lease_expires_at else {
            return Ok(None);
        };
        let earliest = self.shared.store.server_now().await?.earliest;
        let millis = (expiry.timestamp_millis() - earliest).max(0) as u64;
        Ok(Some(Duration::from_millis(millis + 1)))
    }
}

/// How a wait for the lock in our way ended.
enum Waited {
    /// The lock was handed to us.
    Handed(HandOver),
    /// It came back with its queue after a deletion, with our ticket behind others:
    /// wait on for it.
    Behind(Blocker),
    /// Look again: it was deleted, events were missed, or the pause ended.
    Look,
}

/// A wait's ticket, and whether it may be in the lock's queue: a wait that ends
/// without the lock leaves the queue in the background, releasing the lock if it was
/// handed to it meanwhile. Also when the wait is dropped unfinished (the binding drops
/// it when the server refuses our credentials), or ended on a driver error: then a
/// write of its may still be on its way, so the queue is left a second time
/// `LATE_WRITE` later. That holds for a wait that never queued too: its insert may
/// have been applied with its reply lost, or may reach the server later, and leave a
/// lock nobody holds.
struct QueueExit {
    shared: Arc<Shared>,
    key: LockKey,
    owner: String,
    lease: Duration,
    ticket: Option<Ticket>,
    queued: bool,
}

impl QueueExit {
    /// The wait ended with the lock: the ticket goes on until the hold is registered.
    fn held(mut self) -> Ticket {
        self.ticket.take().expect("a wait ends once")
    }

    fn leave(&mut self, again_after: Option<Duration>) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        if !self.queued && again_after.is_none() {
            return;
        }
        let owner = std::mem::take(&mut self.owner);
        let shared = &self.shared;
        shared.give_up_in_background(&self.key, owner, self.lease, ticket, again_after);
    }
}

impl Drop for QueueExit {
    fn drop(&mut self) {
        self.leave(Some(LATE_WRITE));
    }
}

/// A write that may take a lock or queue for it, still in flight when its wait ended:
/// once it has finished in the background, its waiter leaves the queue and the lock
/// it took is released again; a second time `LATE_WRITE` later if the write failed,
/// as it may still reach the server.
struct InFlightWrite<T: Send + 'static> {
    task: Option<JoinHandle<Result<T>>>,
    shared: Arc<Shared>,
    key: LockKey,
    owner: String,
    lease: Duration,
}

impl<T: Send + 'static> Drop for InFlightWrite<T> {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (shared, key, owner) = (
            self.shared.clone(),
            self.key.clone(),
            std::mem::take(&mut self.owner),
        );
        let (lease, ticket) = (self.lease, self.shared.ticket());
        self.shared.spawn(async move {
            // A write the driver gave up on may still reach the server.
            let again_after = (!matches!(task.await, Ok(Ok(_)))).then_some(LATE_WRITE);
            shared.give_up_in_background(&key, owner, lease, ticket, again_after);
        });
    }
}

enum InTheWay {
    Lock(Blocker),
    Ours(Held),
    Nothing,
}

/// Polling pauses for deployments without change streams: doubling from a few
/// milliseconds up to `retryInterval`, each drawn at random from its upper half so
/// that waiters started together do not keep colliding.
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Self {
        Backoff {
            next: FIRST_BACKOFF.min(cap),
            cap,
        }
    }

    fn next(&mut self) -> Duration {
        let upper = self.next;
        self.next = (self.next * 2).min(self.cap);
        let lower = upper / 2;
        if upper <= lower {
            return upper;
        }
        rand::rng().random_range(lower..=upper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(125));
        let pauses: Vec<_> = (0..10).map(|_| backoff.next()).collect();
        assert!(pauses[0] <= FIRST_BACKOFF && pauses[0] >= FIRST_BACKOFF / 2);
        assert!(pauses.iter().all(|p| *p <= Duration::from_millis(125)));
        assert!(pauses[9] >= Duration::from_millis(62));
    }

    #[test]
    fn backoff_never_exceeds_a_tiny_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(1));
        assert!((0..5).all(|_| backoff.next() <= Duration::from_millis(1)));
    }
}
