//! Taking a lock: the local queue first, then the database, waiting for releases
//! between attempts until `waitTimeout`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};
use crate::key::LockKey;
use crate::lease::{HoldOptions, LockGuard};
use crate::local_queue::LocalTurn;
use crate::store::{Blocker, Held};
use crate::LockService;

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
    service: &Arc<LockService>,
    key: &LockKey,
    options: &AcquireOptions,
) -> Result<LockGuard> {
    let start = Instant::now();
    let deadline = start + options.wait_timeout;
    let mut turn = tokio::select! {
        biased;
        _ = options.cancel.cancelled() => return Err(LockError::Aborted),
        _ = service.closed.cancelled() => return Err(LockError::Closed),
        _ = tokio::time::sleep_until(deadline), if !options.wait_timeout.is_zero() => return Err(LockError::WaitTimeout),
        turn = service.queues.turn(key) => turn,
    };
    let owner = uuid::Uuid::new_v4().simple().to_string();
    if let Some(inherited) = turn.state.inherited.take() {
        let handed = service
            .store
            .transfer(key, &inherited.owner, &owner, Some(options.hold.lease))
            .await;
        match handed {
            Ok(Some(held)) => return Ok(guard(service, key, held, options, turn)),
            // Lost while it waited for us (its lease ran out): compete as usual.
            Ok(None) => turn.state.streak = 0,
            Err(e) => {
                let _ = service.store.delete_owned(key, &inherited.owner).await;
                return Err(e);
            }
        }
    }
    if let Some(until) = turn
        .state
        .yield_until
        .take()
        .filter(|t| *t > Instant::now())
    {
        tokio::select! {
            biased;
            _ = options.cancel.cancelled() => return Err(LockError::Aborted),
            _ = service.closed.cancelled() => return Err(LockError::Closed),
            _ = tokio::time::sleep_until(until.min(deadline)) => {}
        }
    }
    let held = acquire_in_database(service, key, &owner, options, deadline).await?;
    Ok(guard(service, key, held, options, turn))
}

fn guard(
    service: &Arc<LockService>,
    key: &LockKey,
    held: Held,
    options: &AcquireOptions,
    turn: LocalTurn,
) -> LockGuard {
    LockGuard::start(service.clone(), key.clone(), held, options.hold, Some(turn))
}

async fn acquire_in_database(
    service: &Arc<LockService>,
    key: &LockKey,
    owner: &str,
    options: &AcquireOptions,
    deadline: Instant,
) -> Result<Held> {
    let store = &service.store;
    let lease = Some(options.hold.lease);
    let mut backoff = Backoff::new(options.retry_interval);
    let mut subscription = None;
    loop {
        // The turn may have come because `close()` ended the hold before us.
        if service.closed.is_cancelled() {
            return Err(LockError::Closed);
        }
        if options.cancel.is_cancelled() {
            return Err(LockError::Aborted);
        }
        match store.insert(key, owner, lease).await {
            Ok(held) => return Ok(held),
            Err(LockError::DuplicateKey { .. }) => {}
            Err(e) => return Err(e),
        }
        // Only now, with somebody in the way, is the release feed worth its cost.
        if subscription.is_none() {
            subscription = Some(service.feed.subscribe(store.collection()).await);
        }
        let releases = subscription.as_mut().expect("subscribed above");
        let blocker = store.blocker(key).await?;
        let wait = match &blocker {
            // Released between our insert and our look: try again at once.
            None => Duration::ZERO,
            Some(blocker) => {
                if let Some(held) = store.take_over(key, blocker, owner, lease).await? {
                    return Ok(held);
                }
                let poll = if releases.live {
                    SAFETY_POLL.max(options.retry_interval)
                } else {
                    backoff.next()
                };
                match until_expiry(service, blocker).await? {
                    Some(expiry) => poll.min(expiry),
                    None => poll,
                }
            }
        };
        let now = Instant::now();
        if now >= deadline && !wait.is_zero() {
            return Err(LockError::WaitTimeout);
        }
        let wake = (now + wait).min(deadline);
        let released_id = blocker.as_ref().map(|b| b.doc_id.clone());
        tokio::select! {
            biased;
            _ = options.cancel.cancelled() => return Err(LockError::Aborted),
            _ = service.closed.cancelled() => return Err(LockError::Closed),
            _ = async { if let Some(id) = &released_id { releases.released(id).await } else { std::future::pending().await } } => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        if Instant::now() > deadline {
            return Err(LockError::WaitTimeout);
        }
    }
}

/// Time until the blocker's lease passes on the server's clock, if it has a lease.
async fn until_expiry(service: &LockService, blocker: &Blocker) -> Result<Option<Duration>> {
    let Some(expiry) = blocker.lease_expires_at else {
        return Ok(None);
    };
    let now = service.store.server_now().await?;
    let millis = (expiry.timestamp_millis() - now.timestamp_millis()).max(0) as u64;
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
