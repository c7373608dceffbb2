//! A held lock: its lease, its renewal, the moment it stops being safely held, and
//! its release (or hand-over to the next local waiter).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};
use crate::key::LockKey;
use crate::local_queue::{Inherited, LocalTurn, MAX_LOCAL_HANDOVERS};
use crate::store::{Held, Released};
use crate::LockService;

/// How a held lock behaves over time.
#[derive(Debug, Clone, Copy)]
pub struct HoldOptions {
    /// After this the lock is given up (`Lock interrupted by timeout`); `None` is never.
    pub lock_timeout: Option<Duration>,
    /// The lease written to the database. Renewed about every third of it while the
    /// lock is held, when it is shorter than `lock_timeout`.
    pub lease: Duration,
}

pub struct LockGuard {
    service: Arc<LockService>,
    key: LockKey,
    held: Held,
    lost: CancellationToken,
    reason: Arc<Mutex<Option<LockError>>>,
    stop: CancellationToken,
    /// Shared with the keeper, which gives the turn up as soon as the lock is lost so
    /// that the next local waiter is not held behind a lock that is no longer ours.
    turn: Arc<Mutex<Option<LocalTurn>>>,
    released: bool,
}

impl LockGuard {
    pub(crate) fn start(
        service: Arc<LockService>,
        key: LockKey,
        held: Held,
        options: HoldOptions,
        turn: Option<LocalTurn>,
    ) -> Self {
        service.hold_started();
        let guard = LockGuard {
            service,
            key,
            held,
            lost: CancellationToken::new(),
            reason: Arc::default(),
            stop: CancellationToken::new(),
            turn: Arc::new(Mutex::new(turn)),
            released: false,
        };
        tokio::spawn(guard.stop.clone().run_until_cancelled_owned(keep(
            guard.service.clone(),
            guard.key.clone(),
            guard.held.clone(),
            options,
            guard.lost.clone(),
            guard.reason.clone(),
            guard.turn.clone(),
        )));
        guard
    }

    pub fn key(&self) -> &LockKey {
        &self.key
    }

    pub fn fencing_token(&self) -> u64 {
        self.held.fencing_token
    }

    /// Cancelled the moment the lock is no longer safely held.
    pub fn lost_token(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Resolves when the lock is no longer safely held, with the reason.
    pub async fn lost(&self) -> LockError {
        self.lost.cancelled().await;
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(LockError::Closed)
    }

    /// Releases the lock: hands it to the next waiter of this process when there is
    /// one (for at most `MAX_LOCAL_HANDOVERS` turns in a row), else deletes it, but
    /// only if it is still ours. `Ok(false)` when it was no longer ours.
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.stop.cancel();
        let service = self.service.clone();
        let key = self.key.clone();
        let owner = self.held.owner.clone();
        let turn = take(&self.turn);
        let still_ours = !self.lost.is_cancelled();
        release(service, key, owner, turn, still_ours).await
    }
}

impl Drop for LockGuard {
    /// A guard dropped without `release` (its future was cancelled) must not keep
    /// the key locked until the lease runs out.
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            self.service.hold_ended();
            return;
        }
        let (service, key, owner, turn) = (
            self.service.clone(),
            self.key.clone(),
            self.held.owner.clone(),
            take(&self.turn),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = release(service.clone(), key, owner, turn, false).await;
                service.hold_ended();
            });
        } else {
            self.service.hold_ended();
        }
    }
}

fn take(turn: &Mutex<Option<LocalTurn>>) -> Option<LocalTurn> {
    turn.lock().unwrap_or_else(|e| e.into_inner()).take()
}

async fn release(
    service: Arc<LockService>,
    key: LockKey,
    owner: String,
    turn: Option<LocalTurn>,
    hand_over: bool,
) -> Result<bool> {
    let Some(mut turn) = turn else {
        return Ok(service.store.delete_owned(&key, &owner).await? != Released::NotOurs);
    };
    if hand_over && turn.has_waiters() && turn.state.streak < MAX_LOCAL_HANDOVERS {
        turn.state.streak += 1;
        turn.state.inherited = Some(Inherited { owner });
        let slot = turn.slot.clone();
        drop(turn);
        // The waiter may have given up in the meantime: then nobody holds the turn
        // now and the lock must not stay behind.
        if let Some(orphan) = slot.take_orphaned() {
            service.store.delete_owned(&key, &orphan.owner).await?;
        }
        return Ok(true);
    }
    turn.state.streak = 0;
    let released = service.store.delete_owned(&key, &owner).await;
    if matches!(released, Ok(Released::Contended)) {
        turn.state.yield_until = Some(Instant::now() + service.store.yield_window());
    }
    drop(turn);
    service.queues.tidy(&key);
    Ok(released? != Released::NotOurs)
}

/// Renews the lease while it is needed and signals the loss of the lock.
async fn keep(
    service: Arc<LockService>,
    key: LockKey,
    held: Held,
    options: HoldOptions,
    lost: CancellationToken,
    reason: Arc<Mutex<Option<LockError>>>,
    turn: Arc<Mutex<Option<LocalTurn>>>,
) {
    let sent_at = Instant::from_std(held.sent_at);
    let lock_deadline = options.lock_timeout.map(|t| sent_at + t);
    let renews = lock_deadline.is_none_or(|d| d > sent_at + options.lease);
    let mut valid_until = sent_at + options.lease;
    let every = (options.lease / 3).max(Duration::from_millis(1));
    let mut next_renewal = sent_at + every;
    let signal = |why: LockError| {
        *reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        lost.cancel();
        drop(take(&turn));
    };
    loop {
        // Whichever comes first: the end the caller chose or the end of the lease.
        let (end, why_timeout) = match lock_deadline {
            Some(d) if d <= valid_until => (d, true),
            _ => (valid_until, false),
        };
        tokio::select! {
            biased;
            _ = service.closed.cancelled() => return signal(LockError::Closed),
            _ = tokio::time::sleep_until(end) => {
                return signal(if why_timeout {
                    LockError::LockTimeout
                } else {
                    LockError::LockLost { reason: "the lease ran out before it could be renewed".into() }
                });
            }
            _ = tokio::time::sleep_until(next_renewal), if renews => {
                let sent = Instant::now();
                match service.store.renew(&key, &held.owner, options.lease).await {
                    Ok(true) => {
                        valid_until = sent + options.lease;
                        next_renewal = sent + every;
                    }
                    Ok(false) => {
                        return signal(LockError::LockLost {
                            reason: "the lock was taken over or deleted by another caller".into(),
                        });
                    }
                    // Try again soon; the lease still runs until `valid_until`.
                    Err(_) => next_renewal = Instant::now() + (every / 4).max(Duration::from_millis(5)),
                }
            }
        }
    }
}
