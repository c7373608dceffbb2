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

/// How often a lease is renewed: every third of it.
fn renewal_interval(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// What the holders learn when the lock is lost: shared by the keeper and the guards.
#[derive(Clone, Default)]
pub(crate) struct Loss {
    pub lost: CancellationToken,
    reason: Arc<Mutex<Option<LockError>>>,
    /// The current holder's local turn, given up as soon as the lock is lost so that
    /// the next local waiter is not held behind a lock that is no longer ours.
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
        let loss = Loss::default();
        loss.give_turn(turn);
        let work = Arc::new(watch::channel(None).0);
        let (extends, extend_requests) = mpsc::unbounded_channel();
        let keeper = Keeper {
            shared,
            key,
            owner: held.owner.clone(),
            lease,
            valid_until: held.sent_at + trusted(lease),
            work: work.subscribe(),
            extends: extend_requests,
            renewal: None,
            replies: (Vec::new(), Vec::new()),
            next_renewal: held.sent_at + renewal_interval(lease),
            last_error: None,
        };
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

type Renewal = Pin<Box<dyn Future<Output = (Instant, Result<bool>)> + Send>>;
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
/// too, goes through here one at a time, so the trusted end always matches the
/// lease the database holds.
struct Keeper {
    shared: Arc<Shared>,
    key: LockKey,
    owner: String,
    lease: Duration,
    /// The end of the lease as the holder may trust it (`trusted`).
    valid_until: Instant,
    /// The current holder's work (`WorkGate::enter`); its `lock_timeout` counts from its start.
    work: watch::Receiver<Option<Work>>,
    extends: mpsc::UnboundedReceiver<Extend>,
    renewal: Option<Renewal>,
    /// Waiting for the renewal in flight, and for the one after it.
    replies: (Vec<Reply>, Vec<Reply>),
    next_renewal: Instant,
    last_error: Option<LockError>,
}

impl Keeper {
    fn every(&self) -> Duration {
        renewal_interval(self.lease)
    }

    fn lock_deadline(&self) -> Option<Instant> {
        let work = (*self.work.borrow())?;
        Some(work.started + work.lock_timeout?)
    }

    fn start_renewal(&mut self) {
        let (shared, key, owner) = (self.shared.clone(), self.key.clone(), self.owner.clone());
        let lease = self.lease;
        self.renewal = Some(Box::pin(async move {
            let sent = Instant::now();
            (sent, shared.store.renew(&key, &owner, lease).await)
        }));
        self.replies.0.append(&mut self.replies.1);
    }

    /// A new lease, written right after the renewal in flight (if any).
    fn extend(&mut self, request: Extend) {
        self.lease = request.lease;
        self.replies.1.push(request.reply);
        self.next_renewal = Instant::now();
    }

    /// Takes in a renewal's outcome; `Some` when it shows the lock is lost.
    fn renewed(&mut self, sent: Instant, renewed: Result<bool>) -> Option<LockError> {
        self.renewal = None;
        let outcome = match renewed {
            Ok(true) => {
                self.valid_until = sent + trusted(self.lease);
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
        let mut watching_work = true;
        loop {
            let timeout = self.lock_deadline().filter(|d| *d <= self.valid_until);
            let end = timeout.unwrap_or(self.valid_until);
            let in_flight = self.renewal.is_some();
            tokio::select! {
                biased;
                _ = self.shared.closed() => return LockError::Closed,
                _ = tokio::time::sleep_until(end) => return self.expired(timeout.is_some()),
                changed = self.work.changed(), if watching_work => watching_work = changed.is_ok(),
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

    #[test]
    fn the_holder_stops_trusting_before_any_taker_may_act() {
        assert_eq!(trusted(Duration::from_secs(1)), Duration::from_millis(997));
        assert_eq!(trusted(Duration::from_millis(1)), Duration::ZERO);
        assert!(
            trusted(Duration::from_secs(30)) <= Duration::from_secs(30).mul_f64(1.0 - MAX_DRIFT)
        );
    }
}
