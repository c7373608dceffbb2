//! The lease of a lock this process holds in the database: its renewal, and the moment
//! it stops being safely held (`Keeper`). The holders' side is in `guard.rs`.

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
use crate::store::Held;

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
/// (`store::expiry_after`, `store::take_over`). The holder stops earlier by the rate
/// difference its clock may have from the server's (`MAX_DRIFT`, twice over for
/// safety), and by 1 ms for the millisecond rounding of stored dates.
pub fn trusted(lease: Duration) -> Duration {
    lease
        .saturating_sub(lease.mul_f64(2.0 * MAX_DRIFT))
        .saturating_sub(Duration::from_millis(1))
}

/// The instant in `cell`, shared by the keeper and the holders.
fn read(cell: &Mutex<Instant>) -> Instant {
    *cell.lock().unwrap_or_else(|e| e.into_inner())
}

/// How often a lease is renewed: every third of it.
fn renewal_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// What the holders learn when the lock is lost: shared by the keeper and the guards.
#[derive(Clone)]
pub(crate) struct Loss {
    pub lost: CancellationToken,
    /// The end of the lease as the holder may trust it, as the keeper last decided.
    trusted_until: Arc<Mutex<Instant>>,
    reason: Arc<Mutex<Option<LockError>>>,
    /// The current holder's local turn, given up as soon as the lock is lost so that
    /// the next local waiter is not held behind a lock that is no longer ours.
    turn: Arc<Mutex<Option<LocalTurn>>>,
}

impl Loss {
    fn new(trusted_until: Arc<Mutex<Instant>>) -> Self {
        Loss {
            lost: CancellationToken::new(),
            trusted_until,
            reason: Arc::default(),
            turn: Arc::default(),
        }
    }

    /// Whether work must not start under the lock: its loss was signalled, or the end
    /// its keeper trusts has passed, which the keeper's timer may not have acted on
    /// yet (a busy runtime, a process resumed after a pause).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled() || read(&self.trusted_until) <= Instant::now()
    }

    fn signal(&self, why: LockError) {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(why);
        self.lost.cancel();
        drop(self.take_turn());
    }

    pub fn take_turn(&self) -> Option<LocalTurn> {
        self.turn.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn give_turn(&self, turn: LocalTurn) {
        *self.turn.lock().unwrap_or_else(|e| e.into_inner()) = Some(turn);
    }

    pub fn reason(&self) -> LockError {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(LockError::Closed)
    }
}

/// The protected work of the current holder: when it started, and how long it may run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Work {
    pub started: Instant,
    pub lock_timeout: Option<Duration>,
}

/// A running keeper: stopped when this is dropped or `stop` is called.
pub(crate) struct KeeperHandle {
    pub loss: Loss,
    pub work: Arc<watch::Sender<Option<Work>>>,
    extends: mpsc::UnboundedSender<Extend>,
    stop: CancellationToken,
}

impl KeeperHandle {
    /// Starts keeping the lock `held` of `key` with `lease`.
    pub fn start(
        shared: Arc<Shared>,
        key: LockKey,
        held: &Held,
        lease: Duration,
        turn: LocalTurn,
    ) -> Self {
        let work = Arc::new(watch::channel(None).0);
        let (extends, extend_requests) = mpsc::unbounded_channel();
        let keeper = Keeper::new(shared, key, held, lease, work.subscribe(), extend_requests);
        let loss = Loss::new(keeper.valid_until.clone());
        loss.give_turn(turn);
        // A lease that ran out before the acquiring write came back (a slow write, or
        // the driver retrying it) is lost before anyone may start work under it, not
        // after the holder's callback or handle has had a turn.
        if keeper.valid_until() <= Instant::now() {
            loss.signal(LockError::lost(
                "the lease ran out before the lock was acquired",
            ));
        }
        let stop = CancellationToken::new();
        let on_loss = loss.clone();
        tokio::spawn(stop.clone().run_until_cancelled_owned(async move {
            on_loss.signal(keeper.run().await);
        }));
        KeeperHandle {
            loss,
            work,
            extends,
            stop,
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Asks for a lease of `lease` from now; the reply says whether it was written.
    pub fn extend(&self, lease: Duration) -> oneshot::Receiver<Result<()>> {
        let (reply, replied) = oneshot::channel();
        let _ = self.extends.send(Extend { lease, reply });
        replied
    }
}

impl Drop for KeeperHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A renewal in flight; it resolves with when it was sent, the lease it wrote, and
/// whether the lock was still ours.
type Renewal = Pin<Box<dyn Future<Output = (Instant, Duration, Result<bool>)> + Send>>;
type Reply = oneshot::Sender<Result<()>>;

/// A request to write a new lease now (`LockGuard::extend`).
pub(crate) struct Extend {
    lease: Duration,
    reply: Reply,
}

/// Renews the lease while the lock is held and decides the moment it is lost.
///
/// The deadlines are watched whatever a renewal is doing: a renewal that hangs (a
/// partition, server selection, a full pool) runs beside them, so the holder is told
/// no later than the end of the lease it last confirmed. Every renewal, `extend`'s
/// too, goes through here one at a time. The trusted end never outlasts what the
/// database may hold: a renewal is trusted for the lease it wrote, whatever lease was
/// asked for while it was in flight, and one that writes a shorter lease lowers the
/// trusted end before it is sent, as the database may apply it before its reply
/// comes back. Renewals are numbered (`document::RENEWED`), so that one the driver gave up on
/// cannot land after a later one and move the database's end back.
struct Keeper {
    shared: Arc<Shared>,
    key: LockKey,
    owner: String,
    lease: Duration,
    /// The end of the lease as the holder may trust it (`trusted`); the holders read
    /// it too (`Loss::is_lost`).
    valid_until: Arc<Mutex<Instant>>,
    /// The current holder's work (`WorkGate::enter`); its `lock_timeout` counts from its start.
    work: watch::Receiver<Option<Work>>,
    extends: mpsc::UnboundedReceiver<Extend>,
    renewal: Option<Renewal>,
    /// Renewals started so far: the number of the last one.
    renewals: u64,
    /// Waiting for the renewal in flight, and for the one after it.
    replies: (Vec<Reply>, Vec<Reply>),
    next_renewal: Instant,
    last_error: Option<LockError>,
}

impl Keeper {
    fn new(
        shared: Arc<Shared>,
        key: LockKey,
        held: &Held,
        lease: Duration,
        work: watch::Receiver<Option<Work>>,
        extends: mpsc::UnboundedReceiver<Extend>,
    ) -> Self {
        Keeper {
            shared,
            key,
            owner: held.owner.clone(),
            lease,
            valid_until: Arc::new(Mutex::new(held.sent_at + trusted(lease))),
            work,
            extends,
            renewal: None,
            renewals: 0,
            replies: (Vec::new(), Vec::new()),
            next_renewal: held.sent_at + renewal_interval(lease),
            last_error: None,
        }
    }

    fn valid_until(&self) -> Instant {
        read(&self.valid_until)
    }

    fn trust_until(&mut self, end: Instant) {
        *self.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = end;
    }

    fn lock_deadline(&self) -> Option<Instant> {
        let work = (*self.work.borrow())?;
        Some(work.started + work.lock_timeout?)
    }

    fn start_renewal(&mut self) {
        let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner.clone());
        let lease = self.lease;
        self.renewals += 1;
        let count = self.renewals;
        self.trust_until(self.valid_until().min(Instant::now() + trusted(lease)));
        self.renewal = Some(Box::pin(async move {
            let sent = Instant::now();
            let renewed = shared.store.renew(&key, &owner, count, lease).await;
            (sent, lease, renewed)
        }));
        self.replies.0.append(&mut self.replies.1);
    }

    /// A new lease, written right after the renewal in flight (if any).
    fn extend(&mut self, request: Extend) {
        self.lease = request.lease;
        self.replies.1.push(request.reply);
        self.next_renewal = Instant::now();
    }

    /// Takes in the outcome of a renewal that wrote `lease`; `Some` when it shows the
    /// lock is lost.
    fn renewed(
        &mut self,
        sent: Instant,
        lease: Duration,
        renewed: Result<bool>,
    ) -> Option<LockError> {
        self.renewal = None;
        let outcome = match renewed {
            Ok(true) => {
                self.trust_until(sent + trusted(lease));
                // An `extend` that came meanwhile is written at once.
                self.next_renewal = if self.replies.1.is_empty() {
                    sent + renewal_interval(lease)
                } else {
                    Instant::now()
                };
                self.last_error = None;
                Ok(())
            }
            Ok(false) => Err(LockError::lost(
                "the lock was taken over or deleted by another caller",
            )),
            Err(e) => {
                // Within what is left of the lease trusted now: after a hand-over that
                // is the releaser's lease, which may be far shorter than this one.
                let left = self.valid_until().saturating_duration_since(Instant::now());
                let retry = (renewal_interval(self.lease) / 4)
                    .min(left / 4)
                    .max(Duration::from_millis(5));
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
        let mut watching_work = true;
        loop {
            let valid_until = self.valid_until();
            let timeout = self.lock_deadline().filter(|d| *d <= valid_until);
            let end = timeout.unwrap_or(valid_until);
            let in_flight = self.renewal.is_some();
            tokio::select! {
                biased;
                _ = self.shared.closed() => return LockError::Closed,
                _ = tokio::time::sleep_until(end) => return self.expired(timeout.is_some()),
                changed = self.work.changed(), if watching_work => watching_work = changed.is_ok(),
                Some(request) = self.extends.recv() => self.extend(request),
                (sent, lease, renewed) = async { self.renewal.as_mut().expect("in flight").await }, if in_flight => {
                    if let Some(lost) = self.renewed(sent, lease, renewed) {
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
    use crate::store::LockStore;

    /// A keeper of a lock held since `sent_at`, through a client that reaches no
    /// server: these tests drive its decisions by hand.
    async fn keeper(lease: Duration, sent_at: Instant) -> (Keeper, Held) {
        let client = mongodb::Client::with_uri_str("mongodb://127.0.0.1:1/")
            .await
            .unwrap();
        let shared = Arc::new(Shared::new(LockStore::new(client.database("keeper"), None)));
        let held = Held {
            owner: "me".into(),
            sent_at,
            fencing_token: 1,
            queued_behind: false,
        };
        let work = watch::channel(None).1;
        let extends = mpsc::unbounded_channel().1;
        let key = LockKey::Str("k".into());
        (Keeper::new(shared, key, &held, lease, work, extends), held)
    }

    fn extend_to(keeper: &mut Keeper, lease: Duration) {
        keeper.extend(Extend {
            lease,
            reply: oneshot::channel().0,
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_is_trusted_for_the_lease_it_wrote_not_one_asked_for_meanwhile() {
        let (short, long) = (Duration::from_secs(1), Duration::from_secs(30));
        let (mut keeper, _) = keeper(short, Instant::now()).await;
        tokio::time::advance(renewal_interval(short)).await;
        keeper.start_renewal();
        let sent = Instant::now();
        extend_to(&mut keeper, long);
        assert_eq!(
            keeper.renewed(sent, short, Ok(true)).map(|e| e.to_string()),
            None
        );
        assert_eq!(keeper.valid_until(), sent + trusted(short));
        assert!(
            keeper.next_renewal <= Instant::now(),
            "the longer lease waits for nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_lease_is_distrusted_before_its_renewal_is_sent() {
        let (short, long) = (Duration::from_secs(1), Duration::from_secs(30));
        let (mut keeper, _) = keeper(long, Instant::now()).await;
        extend_to(&mut keeper, short);
        keeper.start_renewal();
        assert_eq!(keeper.valid_until(), Instant::now() + trusted(short));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_over_when_the_lock_arrives_is_lost_before_any_work_starts() {
        let lease = Duration::from_secs(1);
        let (keeper, held) = keeper(lease, Instant::now()).await;
        tokio::time::advance(lease).await;
        let turn = keeper.shared.queues.slot(&keeper.key).try_turn().unwrap();
        let handle = KeeperHandle::start(
            keeper.shared.clone(),
            keeper.key.clone(),
            &held,
            lease,
            turn,
        );
        assert!(handle.loss.lost.is_cancelled());
        assert!(matches!(handle.loss.reason(), LockError::LockLost { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn no_work_starts_past_the_trusted_end_before_the_keeper_acts_on_it() {
        let lease = Duration::from_secs(1);
        let (mut keeper, _) = keeper(lease, Instant::now()).await;
        let loss = Loss::new(keeper.valid_until.clone());
        tokio::time::advance(renewal_interval(lease)).await;
        keeper.start_renewal();
        assert!(!loss.is_lost());
        tokio::time::advance(trusted(lease)).await;
        assert!(!loss.lost.is_cancelled(), "nobody signalled it");
        assert!(loss.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_retried_within_what_is_left_of_a_shorter_lease_handed_over() {
        // Handed over with 1 s left of the releaser's lease; this holder's own is 30 s.
        let lease = Duration::from_secs(30);
        let sent_at = Instant::now() + Duration::from_secs(1) - trusted(lease);
        let (mut keeper, _) = keeper(lease, sent_at).await;
        keeper.start_renewal();
        let failure = keeper.renewed(Instant::now(), lease, Err(LockError::Closed));
        assert!(
            failure.is_none(),
            "a failed renewal is not a loss before the end"
        );
        assert!(keeper.next_renewal <= Instant::now() + Duration::from_millis(250));
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
