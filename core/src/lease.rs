//! A held lock: its lease, its renewal, the moment it stops being safely held, and
//! its release (or hand-over to the next local waiter).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{LockError, Result};
use crate::key::LockKey;
use crate::local_queue::LocalTurn;
use crate::server_clock::MAX_DRIFT;
use crate::shared::Shared;
use crate::store::{Held, Released};

/// How a held lock behaves over time.
#[derive(Debug, Clone, Copy)]
pub struct HoldOptions {
    /// After this the lock is given up (`Lock interrupted by timeout`), counted from
    /// `WorkGate::enter`, the moment the protected work starts (as the original starts
    /// its timer when the callback starts); `None` is never.
    pub lock_timeout: Option<Duration>,
    /// The lease written to the database, renewed every third of it while the lock
    /// is held, so a lock that is gone (taken over, deleted by another caller) is
    /// noticed within a third of the lease.
    pub lease: Duration,
}

/// How long the holder trusts a lease it wrote at `sent`, on its own monotonic clock.
///
/// A taker may act once the server's clock has surely passed `lease` after `sent`
/// (`store::lease_expiry`, `store::take_over`). The holder stops earlier by the rate
/// difference its clock may have from the server's (`MAX_DRIFT`, twice over for
/// safety), and by 1 ms for the millisecond rounding of stored dates.
pub fn trusted(lease: Duration) -> Duration {
    lease
        .saturating_sub(lease.mul_f64(2.0 * MAX_DRIFT))
        .saturating_sub(Duration::from_millis(1))
}

/// What the holder's side learns when the lock is lost: shared by the guard and its
/// keeper.
#[derive(Clone, Default)]
struct Loss {
    lost: CancellationToken,
    reason: Arc<Mutex<Option<LockError>>>,
    /// Given up as soon as the lock is lost so that the next local waiter is not
    /// held behind a lock that is no longer ours.
    turn: Arc<Mutex<Option<LocalTurn>>>,
}

impl Loss {
    fn signal(&self, why: LockError) {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.lost.cancel();
        drop(self.take_turn());
    }

    fn take_turn(&self) -> Option<LocalTurn> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn reason(&self) -> LockError {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(LockError::Closed)
    }
}

/// Lets protected work start only while the lock is still held, and starts the
/// `lock_timeout` clock when it does. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct WorkGate {
    lost: CancellationToken,
    started: Arc<watch::Sender<Option<Instant>>>,
}

impl WorkGate {
    /// `true` when the work may start now (the lock is held); `false` when the lock
    /// was lost first, and the work must not start at all.
    pub fn enter(&self) -> bool {
        if self.lost.is_cancelled() {
            return false;
        }
        self.started.send_replace(Some(Instant::now()));
        true
    }

    /// Whether `enter` let the work start.
    pub fn entered(&self) -> bool {
        self.started.borrow().is_some()
    }
}

pub struct LockGuard {
    service: Arc<Shared>,
    key: LockKey,
    held: Held,
    loss: Loss,
    gate: WorkGate,
    stop: CancellationToken,
    extends: mpsc::UnboundedSender<Extend>,
    released: bool,
}

impl LockGuard {
    pub(crate) fn start(
        service: Arc<Shared>,
        key: LockKey,
        held: Held,
        options: HoldOptions,
        turn: Option<LocalTurn>,
    ) -> Self {
        service.hold_started(&held.owner);
        let loss = Loss {
            turn: Arc::new(Mutex::new(turn)),
            ..Loss::default()
        };
        let gate = WorkGate {
            lost: loss.lost.clone(),
            started: Arc::new(watch::channel(None).0),
        };
        let (extends, extend_requests) = mpsc::unbounded_channel();
        let keeper = Keeper {
            shared: service.clone(),
            key: key.clone(),
            owner: held.owner.clone(),
            options,
            valid_until: held.sent_at + trusted(options.lease),
            started: gate.started.subscribe(),
            extends: extend_requests,
            renewal: None,
            replies: (Vec::new(), Vec::new()),
            next_renewal: held.sent_at + (options.lease / 3).max(Duration::from_millis(1)),
            last_error: None,
        };
        let stop = CancellationToken::new();
        let on_loss = loss.clone();
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            on_loss.signal(keeper.run().await);
        }));
        LockGuard {
            service,
            key,
            held,
            loss,
            gate,
            stop,
            extends,
            released: false,
        }
    }

    pub fn fencing_token(&self) -> u64 {
        self.held.fencing_token
    }

    /// The gate the protected work must pass to start.
    pub fn gate(&self) -> WorkGate {
        self.gate.clone()
    }

    /// Resolves when the lock is no longer safely held, with the reason.
    pub async fn lost(&self) -> LockError {
        self.loss.lost.cancelled().await;
        self.loss.reason()
    }

    /// Resolves with the reason when the lock is lost, or with `None` when it is
    /// released (or the guard dropped) first. Owns what it needs, so it can outlive
    /// the guard without keeping it alive.
    pub fn lost_or_released(&self) -> impl Future<Output = Option<LockError>> + Send + 'static {
        let (loss, stop) = (self.loss.clone(), self.stop.clone());
        async move {
            tokio::select! {
                biased;
                _ = loss.lost.cancelled() => Some(loss.reason()),
                _ = stop.cancelled() => None,
            }
        }
    }

    /// Writes a lease of `lease` from now, and keeps renewing with it. Fails with
    /// the reason when the lock is lost, or with the driver's error when the write
    /// failed (the lock is then still held until its current lease ends).
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        let (reply, replied) = oneshot::channel();
        if self.extends.send(Extend { lease, reply }).is_err() {
            return Err(self.loss.reason());
        }
        match replied.await {
            Ok(outcome) => outcome,
            Err(_) => Err(self.loss.reason()),
        }
    }

    /// Releases the lock: hands it to the next waiter of this process when there is
    /// one (for at most `MAX_LOCAL_HANDOVERS` turns in a row), else deletes it, but
    /// only if it is still ours. `Ok(false)` when it was no longer ours.
    pub async fn release(mut self) -> Result<bool> {
        self.released = true;
        self.stop.cancel();
        let turn = self.loss.take_turn();
        let still_ours = !self.loss.lost.is_cancelled();
        let owner = self.held.owner.clone();
        release(&self.service, &self.key, owner, turn, still_ours).await
    }
}

impl Drop for LockGuard {
    /// A guard dropped without `release` (its future was cancelled) must not keep
    /// the key locked until the lease runs out.
    fn drop(&mut self) {
        self.stop.cancel();
        if self.released {
            self.service.hold_ended(&self.held.owner);
            return;
        }
        let (service, key, owner, turn) = (
            self.service.clone(),
            self.key.clone(),
            self.held.owner.clone(),
            self.loss.take_turn(),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = release(&service, &key, owner.clone(), turn, false).await;
                service.hold_ended(&owner);
            });
        } else {
            self.service.hold_ended(&self.held.owner);
        }
    }
}

async fn release(
    service: &Shared,
    key: &LockKey,
    owner: String,
    turn: Option<LocalTurn>,
    hand_over: bool,
) -> Result<bool> {
    let Some(mut turn) = turn else {
        return Ok(service.store.delete_owned(key, &owner).await? != Released::NotOurs);
    };
    if hand_over && !service.is_closed() && turn.may_hand_over() {
        let slot = turn.hand_over(owner);
        // The waiter may have given up in the meantime: then nobody holds the turn
        // now and the lock must not stay behind.
        if let Some(orphan) = slot.take_orphaned() {
            service.store.delete_owned(key, &orphan.owner).await?;
        }
        return Ok(true);
    }
    let released = service.store.delete_owned(key, &owner).await;
    turn.released(
        matches!(released, Ok(Released::Contended)).then(|| service.store.yield_window()),
    );
    drop(turn);
    service.queues.tidy(key);
    Ok(released? != Released::NotOurs)
}

type Renewal = Pin<Box<dyn Future<Output = (Instant, Result<bool>)> + Send>>;
type Reply = oneshot::Sender<Result<()>>;

/// A request to write a new lease now (`LockGuard::extend`).
struct Extend {
    lease: Duration,
    reply: Reply,
}

/// Renews the lease while the lock is held and decides the moment it is lost.
///
/// The deadlines are watched whatever a renewal is doing: a renewal that hangs (a
/// partition, server selection, a full pool) runs beside them, so the holder is told
/// no later than the end of the lease it last confirmed. Every renewal, `extend`'s
/// too, goes through here one at a time, so the trusted end always matches the
/// lease the database holds.
struct Keeper {
    shared: Arc<Shared>,
    key: LockKey,
    owner: String,
    options: HoldOptions,
    /// The end of the lease as the holder may trust it (`trusted`).
    valid_until: Instant,
    /// When the protected work started (`WorkGate::enter`); `lock_timeout` counts from it.
    started: watch::Receiver<Option<Instant>>,
    extends: mpsc::UnboundedReceiver<Extend>,
    renewal: Option<Renewal>,
    /// Waiting for the renewal in flight, and for the one after it.
    replies: (Vec<Reply>, Vec<Reply>),
    next_renewal: Instant,
    last_error: Option<LockError>,
}

impl Keeper {
    fn every(&self) -> Duration {
        (self.options.lease / 3).max(Duration::from_millis(1))
    }

    fn lock_deadline(&self) -> Option<Instant> {
        let started = (*self.started.borrow())?;
        Some(started + self.options.lock_timeout?)
    }

    fn start_renewal(&mut self) {
        let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner.clone());
        let lease = self.options.lease;
        self.renewal = Some(Box::pin(async move {
            let sent = Instant::now();
            (sent, shared.store.renew(&key, &owner, lease).await)
        }));
        self.replies.0.append(&mut self.replies.1);
    }

    /// A new lease, written right after the renewal in flight (if any).
    fn extend(&mut self, request: Extend) {
        self.options.lease = request.lease;
        self.replies.1.push(request.reply);
        self.next_renewal = Instant::now();
    }

    /// Takes in a renewal's outcome; `Some` when it shows the lock is lost.
    fn renewed(&mut self, sent: Instant, renewed: Result<bool>) -> Option<LockError> {
        self.renewal = None;
        let outcome = match renewed {
            Ok(true) => {
                self.valid_until = sent + trusted(self.options.lease);
                self.next_renewal = sent + self.every();
                self.last_error = None;
                Ok(())
            }
            Ok(false) => Err(LockError::lost(
                "the lock was taken over or deleted by another caller",
            )),
            Err(e) => {
                let retry = (self.every() / 4).max(Duration::from_millis(5));
                self.next_renewal = Instant::now() + retry;
                self.last_error = Some(e.clone());
                Err(e)
            }
        };
        for reply in self.replies.0.drain(..) {
            let _ = reply.send(outcome.clone());
        }
        match outcome {
            Err(lost @ LockError::LockLost { .. }) => Some(lost),
            _ => None,
        }
    }

    fn expired(&mut self, by_timeout: bool) -> LockError {
        match (by_timeout, self.last_error.take()) {
            (true, _) => LockError::LockTimeout,
            (false, Some(e)) => {
                LockError::lost_because("the lease ran out while it could not be renewed", e)
            }
            (false, None) => LockError::lost("the lease ran out before it could be renewed"),
        }
    }

    /// Runs until the lock is lost and returns why.
    async fn run(mut self) -> LockError {
        let mut watching_start = true;
        loop {
            let timeout = self.lock_deadline().filter(|d| *d <= self.valid_until);
            let end = timeout.unwrap_or(self.valid_until);
            let in_flight = self.renewal.is_some();
            tokio::select! {
                biased;
                _ = self.shared.closed() => return LockError::Closed,
                _ = tokio::time::sleep_until(end) => return self.expired(timeout.is_some()),
                changed = self.started.changed(), if watching_start => watching_start = changed.is_ok(),
                Some(request) = self.extends.recv() => self.extend(request),
                (sent, renewed) = async { self.renewal.as_mut().expect("in flight").await }, if in_flight => {
                    if let Some(lost) = self.renewed(sent, renewed) {
                        return lost;
                    }
                }
                _ = tokio::time::sleep_until(self.next_renewal), if !in_flight => self.start_renewal(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Held;

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
        };
        let key = LockKey::Str("k".into());
        (
            LockGuard::start(service, key, held, options, None),
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
        guard.service.close();
        assert!(matches!(guard.lost().await, LockError::Closed));
        assert!(start.elapsed() < Duration::from_millis(10));
    }

    #[test]
    fn the_holder_stops_trusting_before_any_taker_may_act() {
        assert_eq!(trusted(Duration::from_secs(1)), Duration::from_millis(997));
        assert_eq!(trusted(Duration::from_millis(1)), Duration::ZERO);
        assert!(
            trusted(Duration::from_secs(30)) <= Duration::from_secs(30).mul_f64(1.0 - MAX_DRIFT)
        );
    }
}
