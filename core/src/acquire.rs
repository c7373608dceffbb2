//! Taking a lock: the local queue first, then the database, waiting for releases
//! between attempts until `waitTimeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};
use crate::key::LockKey;
use crate::lease::{HoldOptions, LockGuard};
use crate::local_queue::{Inherited, LocalTurn};
use crate::shared::Shared;
use crate::store::{Blocker, Held};

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
    service: &Arc<Shared>,
    key: &LockKey,
    options: &AcquireOptions,
) -> Result<LockGuard> {
    let deadline = Instant::now() + options.wait_timeout;
    let mut turn = local_turn(service, key, options, deadline).await?;
    let owner = uuid::Uuid::new_v4().simple().to_string();
    if let Some(inherited) = turn.inherit() {
        match inherit(service, key, &inherited, &owner, options).await? {
            Some(held) => return Ok(guard(service, key, held, options, turn)),
            // Lost while it waited for us (its lease ran out): compete as usual.
            None => turn.inheritance_lost(),
        }
    }
    if let Some(until) = turn.yielding_until() {
        interruptible(service, options, async {
            tokio::time::sleep_until(until.min(deadline)).await;
            Ok(())
        })
        .await?;
    }
    let held = acquire_in_database(service, key, &owner, options, deadline).await?;
    Ok(guard(service, key, held, options, turn))
}

/// Waits for this caller's turn among the callers of this process, within the same
/// `waitTimeout` as the whole call (zero: only if nobody has the turn now).
async fn local_turn(
    service: &Arc<Shared>,
    key: &LockKey,
    options: &AcquireOptions,
    deadline: Instant,
) -> Result<LocalTurn> {
    let slot = service.queues.slot(key);
    if options.wait_timeout.is_zero() {
        interrupted(service, options)?;
        return slot.try_turn().ok_or(LockError::WaitTimeout);
    }
    let waited = interruptible(service, options, async {
        tokio::select! {
            turn = slot.turn() => Ok(turn),
            _ = tokio::time::sleep_until(deadline) => Err(LockError::WaitTimeout),
        }
    })
    .await;
    if waited.is_err() {
        // A lock may have been handed to us in the moment we gave up.
        if let Some(orphan) = slot.take_orphaned() {
            let _ = service.store.delete_owned(key, &orphan.owner).await;
        }
    }
    waited
}

/// Makes the lock the previous local holder left for us ours: one write, a fresh
/// lease and fencing token. `None` when it was lost meanwhile.
async fn inherit(
    service: &Arc<Shared>,
    key: &LockKey,
    inherited: &Inherited,
    owner: &str,
    options: &AcquireOptions,
) -> Result<Option<Held>> {
    let (from, to, lease) = (
        inherited.owner.clone(),
        owner.to_owned(),
        options.hold.lease,
    );
    let transfer = {
        let (service, key, from) = (service.clone(), key.clone(), from.clone());
        async move { service.store.transfer(&key, &from, &to, Some(lease)).await }
    };
    match acquiring_write(service, key, options, transfer, Some(from.clone())).await {
        Err(e @ LockError::Mongo(_)) => {
            let _ = service.store.delete_owned(key, &from).await;
            Err(e)
        }
        other => other,
    }
}

fn guard(
    service: &Arc<Shared>,
    key: &LockKey,
    held: Held,
    options: &AcquireOptions,
    turn: LocalTurn,
) -> LockGuard {
    LockGuard::start(service.clone(), key.clone(), held, options.hold, Some(turn))
}

/// The reason to stop waiting now, if there is one.
fn interrupted(service: &Shared, options: &AcquireOptions) -> Result<()> {
    if service.is_closed() {
        Err(LockError::Closed)
    } else if options.cancel.is_cancelled() {
        Err(LockError::Aborted)
    } else {
        Ok(())
    }
}

/// Runs `step` unless the caller aborts or `close()` is called first.
async fn interruptible<T>(
    service: &Shared,
    options: &AcquireOptions,
    step: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        _ = options.cancel.cancelled() => Err(LockError::Aborted),
        _ = service.closed() => Err(LockError::Closed),
        result = step => result,
    }
}

/// Runs a write that may take the lock. If the caller aborts or `close()` is called
/// while it is in flight, the call ends at once and the write finishes in the
/// background, where the lock it took (or `left_over`, the inherited lock a failed
/// transfer leaves) is deleted again.
async fn acquiring_write(
    service: &Arc<Shared>,
    key: &LockKey,
    options: &AcquireOptions,
    write: impl Future<Output = Result<Option<Held>>> + Send + 'static,
    left_over: Option<String>,
) -> Result<Option<Held>> {
    let mut task = tokio::spawn(write);
    let joined = interruptible(service, options, async {
        (&mut task)
            .await
            .unwrap_or_else(|e| Err(LockError::lost(format!("the acquiring write failed: {e}"))))
    })
    .await;
    if let Err(LockError::Aborted | LockError::Closed) = &joined {
        let (service, key) = (service.clone(), key.clone());
        tokio::spawn(async move {
            let stale = match task.await {
                Ok(Ok(Some(held))) => Some(held.owner),
                Ok(Ok(None)) => None,
                _ => left_over,
            };
            if let Some(owner) = stale {
                let _ = service.store.delete_owned(&key, &owner).await;
            }
        });
    }
    joined
}

async fn acquire_in_database(
    service: &Arc<Shared>,
    key: &LockKey,
    owner: &str,
    options: &AcquireOptions,
    deadline: Instant,
) -> Result<Held> {
    let lease = Some(options.hold.lease);
    let mut backoff = Backoff::new(options.retry_interval);
    let mut subscription = None;
    loop {
        // The turn may have come because `close()` ended the hold before us.
        interrupted(service, options)?;
        let insert = {
            let (service, key, owner) = (service.clone(), key.clone(), owner.to_owned());
            async move { service.store.insert(&key, &owner, lease).await.map(Some) }
        };
        match acquiring_write(service, key, options, insert, None).await {
            Ok(Some(held)) => return Ok(held),
            Err(LockError::DuplicateKey { .. }) | Ok(None) => {}
            Err(e) => return Err(e),
        }
        // Only now, with somebody in the way, is the release feed worth its cost.
        if subscription.is_none() {
            let subscribe = service.feed.subscribe(service.store.collection());
            subscription =
                Some(interruptible(service, options, async { Ok(subscribe.await) }).await?);
        }
        let releases = subscription.as_mut().expect("subscribed above");
        let blocker = interruptible(service, options, service.store.blocker(key)).await?;
        let Some(blocker) = blocker else {
            // Released between our insert and our look: try again at once.
            continue;
        };
        if let Some(held) = take_over(service, key, &blocker, owner, options).await? {
            return Ok(held);
        }
        let poll = if releases.live {
            SAFETY_POLL.max(options.retry_interval)
        } else {
            backoff.next()
        };
        let wait = match interruptible(service, options, until_expiry(service, &blocker)).await? {
            Some(expiry) => poll.min(expiry),
            None => poll,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(LockError::WaitTimeout);
        }
        interruptible(service, options, async {
            tokio::select! {
                _ = releases.released(&blocker.doc_id) => {}
                _ = tokio::time::sleep_until((now + wait).min(deadline)) => {}
            }
            Ok(())
        })
        .await?;
        if Instant::now() > deadline {
            return Err(LockError::WaitTimeout);
        }
    }
}

async fn take_over(
    service: &Arc<Shared>,
    key: &LockKey,
    blocker: &Blocker,
    owner: &str,
    options: &AcquireOptions,
) -> Result<Option<Held>> {
    let write = {
        let (service, key, blocker) = (service.clone(), key.clone(), blocker.clone());
        let (owner, lease) = (owner.to_owned(), Some(options.hold.lease));
        async move { service.store.take_over(&key, &blocker, &owner, lease).await }
    };
    acquiring_write(service, key, options, write, None).await
}

/// Time until the blocker's lease has surely passed on the server's clock, if it
/// has a lease.
async fn until_expiry(service: &Shared, blocker: &Blocker) -> Result<Option<Duration>> {
    let Some(expiry) = blocker.lease_expires_at else {
        return Ok(None);
    };
    let earliest = service.store.server_now().await?.earliest;
    let millis = (expiry.timestamp_millis() - earliest).max(0) as u64;
    Ok(Some(Duration::from_millis(millis + 1)))
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
