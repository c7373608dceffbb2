//! Every read and write of lock documents. Nothing else in the crate talks to MongoDB
//! about locks, so the queries that make the guarantees hold are all in this file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{Acknowledgment, IndexOptions, ReturnDocument, WriteConcern};
use mongodb::{ClientSession, Collection, Database, IndexModel};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::document::{
    self, CONTENDED, FENCES_COLLECTION, ID, LEASE_EXPIRES_AT, LOCKED_AT, LOCKS_COLLECTION, OWNER,
    QUEUE, RENEWED, SERVED,
};
use crate::error::{LockError, Result, DUPLICATE_KEY};
use crate::key::LockKey;
use crate::lease::trusted;
use crate::server_clock::{ServerClock, ServerTime, MAX_DRIFT};

/// The one document of `_lock_fences`: a counter shared by all keys, so tokens
/// increase globally and nothing accumulates per key.
const FENCE_ID: &str = "fence";

/// A lock this process now holds in the database.
#[derive(Debug, Clone)]
pub struct Held {
    pub owner: String,
    /// When the acquiring write was sent: the holder's lease counts from here, a moment
    /// before the server's clock was read for the stored expiry.
    pub sent_at: Instant,
    /// Strictly increasing per key across processes and restarts (see `fencing_token`).
    pub fencing_token: u64,
    /// Whether other processes were probably queued for it when it was taken: its
    /// release then tries to pass it on before deleting it.
    pub queued_behind: bool,
}

/// What stands in the way of an acquisition.
#[derive(Debug, Clone)]
pub struct Blocker {
    pub doc_id: Bson,
    pub lease_expires_at: Option<DateTime>,
}

impl From<&Document> for Blocker {
    fn from(found: &Document) -> Self {
        Blocker {
            lease_expires_at: found.get_datetime(LEASE_EXPIRES_AT).ok().copied(),
            doc_id: found.get("_id").cloned().unwrap_or(Bson::Null),
        }
    }
}

/// The queue of a lock deleted at the end of its passing window: the document's `_id`
/// and its waiting tickets, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    doc_id: Bson,
    waiting: Vec<Bson>,
    /// When the delete that took it out came back.
    deleted_at: Instant,
}

impl Queue {
    /// Whether it is still time to put it back (`RESTORE_LATEST`).
    fn restorable(&self) -> bool {
        self.deleted_at.elapsed() <= RESTORE_LATEST
    }

    /// Whether the queue is worth putting back after a hold of `held_for`: when it
    /// would pass through all its tickets within a passing window at that pace. The
    /// deletion also drops the tickets of waiters that died queued, each of which
    /// costs everyone a lease when it comes up; in a queue that slow, it likely would
    /// not have come up before the deletion, so the waiters queue again instead.
    pub fn worth_restoring(&self, held_for: Duration) -> bool {
        held_for.saturating_mul(self.waiting.len() as u32) < PASSING
    }
}

/// A lock document as `find` reads it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// `locked_at`, in ms since the epoch (the original writes a number).
    pub locked_at: Option<f64>,
    pub lease_expires_at: Option<DateTime>,
    /// Absent on the original's locks.
    pub owner: Option<String>,
}

/// The outcome of deleting our own lock.
#[derive(Debug, Clone, PartialEq)]
pub enum Released {
    /// Deleted; nobody else was waiting for it.
    Free,
    /// Deleted; a waiter marked it while we held it.
    Contended,
    /// Deleted at the end of its passing window with processes queued, to be put back
    /// with its queue (`restore`) once others have had their chance to insert.
    Passing(Queue),
    /// Deleted, and being put back with its queue (`Shared::restore_later`).
    Restoring,
    /// Deleted with processes queued, not to be put back (`Queue::worth_restoring`):
    /// they queue again once they have waited for a restore in vain.
    Requeueing,
    /// Passed to the first waiter of its queue (`pass_on`).
    HandedOver,
    /// It was no longer ours.
    NotOurs,
}

impl Released {
    fn from_deleted(deleted: &Document) -> Self {
        if deleted.get_bool(CONTENDED).unwrap_or(false) {
            Released::Contended
        } else {
            Released::Free
        }
    }
}

pub struct LockStore {
    db: Database,
    /// Smoothed round trip of our inserts, in microseconds.
    write_rtt_micros: AtomicU64,
    locks: Collection<Document>,
    fences: Collection<Document>,
    indexes: OnceCell<()>,
    /// How many attempts to create the indexes failed to select a server, and the
    /// last such failure.
    index_failures: std::sync::Mutex<(u64, Option<LockError>)>,
    clock: Arc<ServerClock>,
}

/// A lock needs acknowledged writes: unacknowledged, an insert cannot tell a free key
/// from a taken one, and the driver refuses `w: 0` for these commands at every write.
/// So `w: 0` (a client's, or its connection string's) becomes `w: 1` for the lock's
/// writes; the application's own writes keep theirs.
fn acknowledged(write_concern: Option<WriteConcern>) -> Option<WriteConcern> {
    match write_concern {
        Some(mut wc) if wc.w == Some(Acknowledgment::Nodes(0)) => {
            wc.w = Some(Acknowledgment::Nodes(1));
            Some(wc)
        }
        other => other,
    }
}

impl LockStore {
    /// No I/O happens here; indexes are created before the first write.
    pub fn new(db: Database, write_concern: Option<WriteConcern>) -> Self {
        let write_concern = acknowledged(write_concern.or_else(|| db.write_concern().cloned()));
        let with = |wc: WriteConcern| {
            mongodb::options::CollectionOptions::builder()
                .write_concern(wc)
                .build()
        };
        let locks = match &write_concern {
            Some(wc) => db.collection_with_options(LOCKS_COLLECTION, with(wc.clone())),
            None => db.collection(LOCKS_COLLECTION),
        };
        // The counter is only drawn on servers without an oplog (standalone), where a
        // write acknowledged before it reached the journal is lost in a crash: the
        // counter would go back and hand out a token a holder from before the crash
        // still uses. Journaled, it never goes back.
        let mut journaled = write_concern.unwrap_or_default();
        journaled.journal = Some(true);
        let fences = db.collection_with_options(FENCES_COLLECTION, with(journaled));
        LockStore {
            db,
            write_rtt_micros: AtomicU64::new(1_000),
            locks,
            fences,
            indexes: OnceCell::new(),
            index_failures: std::sync::Mutex::default(),
            clock: Arc::default(),
        }
    }

    pub fn collection(&self) -> &Collection<Document> {
        &self.locks
    }

    /// Creates `id_1` (unique) and `locked_at_1` (TTL 1 s) once, before any lock is
    /// written: the original started this without waiting, so its first locks could
    /// be taken twice. A failure is returned and retried by the next call; but a caller
    /// that waited while another attempt found no server gets that failure rather than
    /// trying again, as against a server out of reach a first `lock()` would otherwise
    /// wait for the constructor's attempt to time out and then for its own (twice the
    /// driver's `serverSelectionTimeoutMS`). Other failures (a failover under way) are
    /// each caller's own to retry.
    pub async fn ensure_indexes(&self) -> Result<()> {
        let failed_before = self.index_failures().0;
        let attempt = || async {
            if let (failed, Some(failure)) = self.index_failures() {
                if failed > failed_before {
                    return Err(failure);
                }
            }
            let created = self.create_indexes().await;
            if let Err(e) = &created {
                self.note_index_failure(e);
            }
            created
        };
        self.indexes.get_or_try_init(attempt).await?;
        Ok(())
    }

    fn note_index_failure(&self, failure: &LockError) {
        let LockError::Mongo(driver) = failure else {
            return;
        };
        if matches!(*driver.kind, ErrorKind::ServerSelection { .. }) {
            let mut failures = self
                .index_failures
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            *failures = (failures.0 + 1, Some(failure.clone()));
        }
    }

    fn index_failures(&self) -> (u64, Option<LockError>) {
        self.index_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn create_indexes(&self) -> Result<()> {
        let unique = IndexModel::builder()
            .keys(doc! { ID: 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        let expire = IndexOptions::builder()
            .expire_after(Duration::from_secs(1))
            .build();
        let ttl = IndexModel::builder()
            .keys(doc! { document::LOCKED_AT: 1 })
            .options(expire)
            .build();
        self.locks.create_indexes([unique, ttl]).await?;
        Ok(())
    }

    /// The latest the server's clock can read now, plus `lease`.
    ///
    /// The holder counts its lease from a moment before this reading, on its own
    /// monotonic clock, and a taker needs the *earliest* its estimate allows to be
    /// past this value (`take_over`); so the errors of both estimates are covered
    /// and a takeover can only happen after the holder stopped trusting its lease
    /// (`lease.rs` also allows for the rate difference of the clocks).
    pub async fn expiry_after(&self, lease: Duration) -> Result<DateTime> {
        Ok(ends(self.server_now().await?.latest, lease))
    }

    /// `expiry_after` for a lock with a lease; none for one without.
    pub async fn lease_expiry(&self, lease: Option<Duration>) -> Result<Option<DateTime>> {
        match lease {
            None => Ok(None),
            Some(lease) => self.expiry_after(lease).await.map(Some),
        }
    }

    /// The ends of a lease and of its passing window (`PASSING`), from one reading of
    /// the server's clock, as `expiry_after` takes it.
    async fn lease_and_passing(&self, lease: Duration) -> Result<(DateTime, DateTime)> {
        let latest = self.server_now().await?.latest;
        Ok((ends(latest, lease), ends(latest, PASSING)))
    }

    pub async fn server_now(&self) -> Result<ServerTime> {
        self.clock.now(&self.db).await
    }

    /// Inserts a new lock document: one round trip. Fails with `DuplicateKey` when the
    /// key is held. Any other failure may still have written the document (a lost
    /// reply, a write concern error), so it is deleted again before the error is
    /// returned: a failed `lock()` never leaves a lock behind.
    pub async fn insert(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Option<Duration>,
    ) -> Result<Held> {
        self.ensure_indexes().await?;
        let sent_at = Instant::now();
        let lease_ends = match lease {
            Some(lease) => Some(self.lease_and_passing(lease).await?),
            None => None,
        };
        let mut session = self.db.client().start_session().await?;
        let started = Instant::now();
        let inserted = self
            .locks
            .insert_one(document::new_lock(key, owner, lease_ends))
            .session(&mut session)
            .await;
        self.observe_write(started.elapsed());
        let token = match inserted {
            Err(e) => Err(duplicate_key_or(e, key)),
            Ok(_) => self.fencing_token(key, owner, &session).await,
        };
        match token {
            Ok(Some(fencing_token)) => Ok(Held {
                owner: owner.to_owned(),
                sent_at,
                fencing_token,
                queued_behind: false,
            }),
            Ok(None) => Err(LockError::lost(
                "the lock was taken over before its fencing token was drawn",
            )),
            Err(e @ LockError::DuplicateKey { .. }) => Err(e),
            Err(e) => {
                let _ = self.delete_owned(key, owner).await;
                Err(e)
            }
        }
    }

    /// The lock document in the way, if any, marked as contended so that its holder's
    /// process lets other processes have the next turn: for waiters that cannot queue
    /// (`take_or_enqueue`) because they have no change stream to hear their turn on.
    pub async fn blocker(&self, key: &LockKey) -> Result<Option<Blocker>> {
        let found = self
            .locks
            .find_one_and_update(
                doc! { ID: key.to_bson() },
                doc! { "$set": { CONTENDED: true } },
            )
            .projection(doc! { "_id": 1, LEASE_EXPIRES_AT: 1 })
            .await?;
        Ok(found.as_ref().map(Blocker::from))
    }

    /// Takes over `blocker` if its lease has passed on the server's clock. The filter
    /// names the exact document and its expiry, so of several processes that see the
    /// same expired lease only one wins. Locks without a lease never match.
    pub async fn take_over(
        &self,
        key: &LockKey,
        blocker: &Blocker,
        owner: &str,
        lease: Option<Duration>,
    ) -> Result<Option<Held>> {
        let Some(expired_at) = blocker.lease_expires_at else {
            return Ok(None);
        };
        if self.server_now().await?.earliest() <= expired_at {
            return Ok(None);
        }
        let sent_at = Instant::now();
        let expiry = self.lease_expiry(lease).await?;
        let mut session = self.db.client().start_session().await?;
        let taken = self
            .locks
            .find_one_and_update(
                doc! { "_id": blocker.doc_id.clone(), ID: key.to_bson(), LEASE_EXPIRES_AT: expired_at },
                document::take_over(owner, expiry),
            )
            .projection(doc! { "_id": 1 })
            .session(&mut session)
            .await;
        match taken {
            Ok(None) => Ok(None),
            Ok(Some(_)) => self.held(key, owner, sent_at, &session).await,
            Err(e) => {
                // Its reply may be what was lost: the lock may be ours, under an owner
                // id nobody will use again.
                let _ = self.delete_owned(key, owner).await;
                Err(e.into())
            }
        }
    }

    /// The lock `owner` just took with the write made in `session`; `None` when it was
    /// lost before its fencing token could be drawn. If drawing the token fails, the
    /// lock is deleted again.
    async fn held(
        &self,
        key: &LockKey,
        owner: &str,
        sent_at: Instant,
        session: &ClientSession,
    ) -> Result<Option<Held>> {
        match self.fencing_token(key, owner, session).await {
            Ok(token) => Ok(token.map(|fencing_token| Held {
                owner: owner.to_owned(),
                sent_at,
                fencing_token,
                queued_behind: true,
            })),
            Err(e) => {
                let _ = self.delete_owned(key, owner).await;
                Err(e)
            }
        }
    }

    /// Extends the lease of a lock we own, with its owner's renewal number `count`
    /// (`RENEWED`). `false` when it is no longer ours.
    pub async fn renew(
        &self,
        key: &LockKey,
        owner: &str,
        count: u64,
        lease: Duration,
    ) -> Result<bool> {
        let expiry = self.expiry_after(lease).await?;
        let count = count as i64;
        let by = format!("{RENEWED}.by");
        let later = format!("{RENEWED}.count");
        let result = self
            .locks
            .update_one(
                doc! {
                    ID: key.to_bson(),
                    OWNER: owner,
                    "$nor": [{ by: owner, later: { "$gte": count } }],
                },
                doc! { "$set": { LEASE_EXPIRES_AT: expiry, RENEWED: { "by": owner, "count": count } } },
            )
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Deletes the lock only if we still own it: one round trip.
    pub async fn delete_owned(&self, key: &LockKey, owner: &str) -> Result<Released> {
        let deleted = self.find_and_delete(key, owner).await?;
        Ok(deleted.map_or(Released::NotOurs, |d| Released::from_deleted(&d)))
    }

    /// Deletes our lock, answering what `delete_owned` and `delete_passing` read of it.
    async fn find_and_delete(&self, key: &LockKey, owner: &str) -> Result<Option<Document>> {
        Ok(self
            .locks
            .find_one_and_delete(doc! { ID: key.to_bson(), OWNER: owner })
            .projection(doc! { "_id": 1, CONTENDED: 1, QUEUE: 1, SERVED: 1 })
            .await?)
    }

    /// How long a process that just released a contended lock lets others try first,
    /// where they cannot queue (standalone): `AFTER_DELETE`, and two write round trips
    /// more (plus 1 ms, at most 50 ms), enough for the waiter that marked it to poll
    /// and insert.
    pub fn yield_window(&self) -> Duration {
        let rtt = Duration::from_micros(self.write_rtt_micros.load(Ordering::Relaxed));
        AFTER_DELETE + (rtt * 2 + Duration::from_millis(1)).min(Duration::from_millis(50))
    }

    fn observe_write(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.write_rtt_micros.load(Ordering::Relaxed);
        self.write_rtt_micros
            .store((old * 7 + sample) / 8, Ordering::Relaxed);
    }

    /// The lock document of `key`, if there is one: `(locked_at in ms, lease_expires_at,
    /// owner)`.
    pub async fn find(&self, key: &LockKey) -> Result<Option<Stored>> {
        let found = self
            .locks
            .find_one(doc! { ID: key.to_bson() })
            .projection(doc! { LOCKED_AT: 1, LEASE_EXPIRES_AT: 1, OWNER: 1 })
            .await?;
        Ok(found.map(|d| Stored {
            locked_at: d.get(LOCKED_AT).and_then(Bson::as_f64).or_else(|| {
                d.get_datetime(LOCKED_AT)
                    .ok()
                    .map(|t| t.timestamp_millis() as f64)
            }),
            lease_expires_at: d.get_datetime(LEASE_EXPIRES_AT).ok().copied(),
            owner: d.get_str(OWNER).ok().map(str::to_owned),
        }))
    }

    /// Deletes the lock whoever holds it, as the original's `unlock` does.
    pub async fn delete_any(&self, key: &LockKey) -> Result<bool> {
        let result = self.locks.delete_one(doc! { ID: key.to_bson() }).await?;
        Ok(result.deleted_count == 1)
    }

    /// A fencing token for the acquiring write just made in `session` by `owner`;
    /// `None` when the lock was no longer `owner`'s by the time the token was drawn.
    ///
    /// On a replica set (and Atlas) every write is stamped with an `operationTime`,
    /// the timestamp of its oplog entry: unique, and increasing across the whole
    /// set, across elections and restarts. The token is that timestamp as a 64-bit
    /// number, so it costs no extra round trip.
    ///
    /// Servers that report no `operationTime` (a standalone `mongod`) fall back to one
    /// counter in `_lock_fences`, drawn after the acquiring write and followed by a
    /// check that the lock is still ours: a holder delayed past its lease would
    /// otherwise draw a larger token than its successor. With the check, every token
    /// in use was drawn while its holder held the lock, so tokens follow hold order.
    async fn fencing_token(
        &self,
        key: &LockKey,
        owner: &str,
        session: &ClientSession,
    ) -> Result<Option<u64>> {
        if let Some(ts) = session.operation_time() {
            return Ok(Some(((ts.time as u64) << 32) | ts.increment as u64));
        }
        let counter = self
            .fences
            .find_one_and_update(
                doc! { "_id": FENCE_ID },
                doc! { "$inc": { "token": 1_i64 } },
            )
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await?;
        let token = counter
            .and_then(|d| d.get_i64("token").ok())
            .unwrap_or_default() as u64;
        let ours = self
            .locks
            .find_one(doc! { ID: key.to_bson(), OWNER: owner })
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(ours.map(|_| token))
    }
}

// The queue of processes waiting for a lock, kept on the lock document itself: an
// array of tickets (`QUEUE`, the owner ids they will hold under) in order of arrival.
//
// A waiter joins with the same write that looks up the lock in its way, and listens
// to the change stream. A release passes the lock to the first ticket with one update
// (`pass_on`), so its cost does not grow with the number of waiters, and only that
// waiter wakes: the stream's event carries the new owner, the stored lease and the
// write's cluster time, which is its fencing token. Nobody races, nobody retries.
//
// A lock passed on for `PASSING` since it was inserted is deleted at its next release
// instead, so that processes that cannot queue (the original class, waiters without a
// change stream) still get their chance to insert (`AFTER_DELETE`); then it is put
// back with its queue (`restore`) if the key is still free.

/// How long a lock may pass from process to process before it is deleted once.
const PASSING: Duration = Duration::from_secs(1);

/// How long a lock deleted with waiters queued stays free before it is put back with
/// its queue (`restore`), or, after a deletion by the original class, before its
/// waiters queue again: the original class polls (every 125 ms by default) and can
/// only win a key that stays free for a moment. Deletions with waiters queued are
/// rare: once per `PASSING` of continuous hand-overs, or a release by the original
/// class.
pub const AFTER_DELETE: Duration = Duration::from_millis(20);

/// How long waiters whose lock was deleted wait for it to come back with its queue
/// (`restore`) before they queue again: `AFTER_DELETE`, then time for the restoring
/// insert and its event to arrive on a busy machine.
pub const RESTORE_WAIT: Duration = Duration::from_millis(60);

/// The latest, after its delete came back, that a restoring insert is sent:
/// `AFTER_DELETE`, then a reading of the server's clock. Its waiters stop waiting for
/// it `RESTORE_WAIT` after they hear the deletion (its event comes about with the
/// reply) and queue again on a new lock; a restore that lands once that lock is gone
/// brings back tickets of acquisitions that may have ended, and each such ticket costs
/// everyone a lease when it comes up. So a process stalled past this (a long pause of
/// its runtime, a frozen VM) leaves its waiters to queue again. An insert held in the
/// network after it was sent is not covered.
const RESTORE_LATEST: Duration = Duration::from_millis(40);

/// What `take_or_enqueue` found.
#[derive(Debug)]
pub enum Queued {
    /// The lock is ours: the key was free, or the lock was handed to us earlier.
    Ours(Held),
    /// Ours, but with too little of its lease left to start on: to be claimed.
    Unconfirmed,
    /// Another holds it; we are in its queue, with `places` hand-overs to come before
    /// our turn.
    Behind { blocker: Blocker, places: u32 },
}

/// What `pass_on_rejoining` did.
#[derive(Debug)]
pub enum Rejoined {
    /// Handed over, and the next owner is queued behind the lock now in the way, with
    /// `places` hand-overs to come before its turn (its ticket is the last of the queue).
    Behind { blocker: Blocker, places: u32 },
    /// Not handed over (still ours, or no longer ours), and nobody queued again.
    Not(PassedOn),
}

/// What `pass_on` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassedOn {
    /// The first waiter of the queue holds it now.
    HandedOver,
    /// Still ours: nobody is queued. `contended` when a waiter that cannot queue
    /// marked it.
    NobodyQueued {
        contended: bool,
    },
    /// Still ours: the queue is not empty, but the lock has been passed on for
    /// `PASSING` and is to be deleted.
    Capped,
    NotOurs,
}

impl LockStore {
    /// Takes the lock if the key is free, else joins the queue of the lock in the way:
    /// one write either way (an upsert), so a waiter that expects to queue does not
    /// first fail an insert. `None` when another process inserted at the same moment.
    pub async fn take_or_enqueue(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Queued>> {
        self.ensure_indexes().await?;
        let (expiry, passes_until) = self.lease_and_passing(lease).await?;
        let mut session = self.db.client().start_session().await?;
        let found = self
            .locks
            .find_one_and_update(
                doc! { ID: key.to_bson() },
                document::take_or_enqueue(owner, expiry, passes_until),
            )
            .upsert(true)
            .projection(doc! { "_id": 1, OWNER: 1, LEASE_EXPIRES_AT: 1, QUEUE: 1, SERVED: 1 })
            .return_document(ReturnDocument::After)
            .session(&mut session)
            .await;
        // Both test servers sometimes answer an upsert that raced another write with no
        // document; like a duplicate key, that is a reason to look again.
        let found = match found.map_err(|e| duplicate_key_or(e, key)) {
            Err(LockError::DuplicateKey { .. }) | Ok(None) => return Ok(None),
            Ok(Some(found)) => found,
            Err(e) => return Err(e),
        };
        if found.get_str(OWNER).ok() != Some(owner) {
            let blocker = Blocker::from(&found);
            let places = document::place_in_queue(&found, owner);
            return Ok(Some(Queued::Behind { blocker, places }));
        }
        let Some(token) = self.fencing_token(key, owner, &session).await? else {
            return Ok(None);
        };
        let expiry = found.get_datetime(LEASE_EXPIRES_AT).ok().copied();
        let held = match expiry {
            Some(expiry) => self.handed_over(owner, expiry, token, lease).await?,
            None => None,
        };
        Ok(Some(held.map_or(Queued::Unconfirmed, Queued::Ours)))
    }

    /// Confirms a lock that was handed to `owner` while it was not listening, with a
    /// new lease; `None` when it is not ours.
    pub async fn claim(&self, key: &LockKey, owner: &str, lease: Duration) -> Result<Option<Held>> {
        let sent_at = Instant::now();
        let expiry = self.expiry_after(lease).await?;
        let mut session = self.db.client().start_session().await?;
        let claimed = self
            .locks
            .update_one(
                doc! { ID: key.to_bson(), OWNER: owner },
                document::claim(owner, expiry),
            )
            .session(&mut session)
            .await?;
        if claimed.matched_count == 0 {
            return Ok(None);
        }
        self.held(key, owner, sent_at, &session).await
    }

    /// The lock the change stream says was handed to `owner`, trusted until the server's
    /// clock may reach `expires_at`; `None` when too little of that lease is left to
    /// start on (then `claim` writes a new one).
    pub async fn handed_over(
        &self,
        owner: &str,
        expires_at: DateTime,
        fencing_token: u64,
        lease: Duration,
    ) -> Result<Option<Held>> {
        let now = Instant::now();
        let latest = self.server_now().await?.latest;
        // Less 1 ms for the rounding of stored dates; our clock may run faster than
        // the server's by `MAX_DRIFT`.
        let left = (expires_at.timestamp_millis() - latest - 1).max(0) as u64;
        let left = Duration::from_millis(left).div_f64(1.0 + MAX_DRIFT);
        if left < Duration::from_millis(2) {
            return Ok(None);
        }
        Ok((now + left)
            .checked_sub(trusted(lease))
            .map(|sent_at| Held {
                owner: owner.to_owned(),
                sent_at,
                fencing_token,
                queued_behind: true,
            }))
    }

    /// Passes our lock to the first waiter of its queue with a lease of `lease`, if
    /// there is one and the document is not due to be deleted.
    pub async fn pass_on(&self, key: &LockKey, owner: &str, lease: Duration) -> Result<PassedOn> {
        let after = self.hand_over(key, owner, lease, None).await?;
        Ok(after.map_or(PassedOn::NotOurs, |d| passed_on(&d, owner)))
    }

    /// `pass_on`, and when it hands the lock over, queues `next_owner` behind the
    /// other waiters in the same write: for a process that will want the lock again,
    /// one write instead of two.
    pub async fn pass_on_rejoining(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Duration,
        next_owner: &str,
    ) -> Result<Rejoined> {
        let after = self.hand_over(key, owner, lease, Some(next_owner)).await?;
        Ok(match after {
            None => Rejoined::Not(PassedOn::NotOurs),
            Some(d) => match passed_on(&d, owner) {
                PassedOn::HandedOver => Rejoined::Behind {
                    blocker: Blocker::from(&d),
                    places: document::place_in_queue(&d, next_owner),
                },
                passed => Rejoined::Not(passed),
            },
        })
    }

    async fn hand_over(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Duration,
        rejoin: Option<&str>,
    ) -> Result<Option<Document>> {
        // One reading of the clock for both, as `expiry_after` would take another.
        let latest = self.server_now().await?.latest;
        let expiry = ends(latest, lease);
        let now = DateTime::from_millis(latest);
        let mut fields = passed_on_fields();
        fields.insert(LEASE_EXPIRES_AT, 1);
        Ok(self
            .locks
            .find_one_and_update(
                doc! { ID: key.to_bson(), OWNER: owner },
                document::hand_over(expiry, now, rejoin),
            )
            .projection(fields)
            .return_document(ReturnDocument::After)
            .await?)
    }

    /// Whether our lock has nobody queued for it and no mark of contention: what
    /// `pass_on` would answer with `NobodyQueued { contended: false }`, by a read.
    pub async fn nobody_queued(&self, key: &LockKey, owner: &str) -> Result<bool> {
        let found = self
            .locks
            .find_one(doc! { ID: key.to_bson(), OWNER: owner })
            .projection(passed_on_fields())
            .await?;
        let nobody = PassedOn::NobodyQueued { contended: false };
        Ok(found.is_some_and(|d| passed_on(&d, owner) == nobody))
    }

    /// Releases our lock: passes it on to the next waiter in the queue, or deletes it.
    /// `queued_behind` says which to try first; a wrong guess costs a round trip.
    pub async fn release(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Duration,
        queued_behind: bool,
    ) -> Result<Released> {
        if !queued_behind {
            if let Some(released) = self.delete_unqueued(key, owner).await? {
                return Ok(released);
            }
        }
        let passed = self.pass_on(key, owner, lease).await?;
        self.release_after(key, owner, passed).await
    }

    /// Ends a release that `pass_on` did not finish: deletes the lock if it is still ours.
    pub async fn release_after(
        &self,
        key: &LockKey,
        owner: &str,
        passed: PassedOn,
    ) -> Result<Released> {
        match passed {
            PassedOn::HandedOver => Ok(Released::HandedOver),
            PassedOn::NotOurs => Ok(Released::NotOurs),
            PassedOn::NobodyQueued { .. } => self.delete_owned(key, owner).await,
            // Others are queued: they are to go first.
            PassedOn::Capped => self.delete_passing(key, owner).await,
        }
    }

    /// Deletes our lock at the end of its passing window, keeping its queue to put it
    /// back with (`restore`).
    async fn delete_passing(&self, key: &LockKey, owner: &str) -> Result<Released> {
        let Some(deleted) = self.find_and_delete(key, owner).await? else {
            return Ok(Released::NotOurs);
        };
        // About when the waiters heard it: its event comes with the reply.
        let deleted_at = Instant::now();
        let waiting = document::waiting_tickets(&deleted).to_vec();
        Ok(match deleted.get("_id") {
            Some(doc_id) if !waiting.is_empty() => Released::Passing(Queue {
                doc_id: doc_id.clone(),
                waiting,
                deleted_at,
            }),
            _ => Released::Contended,
        })
    }

    /// Puts a lock deleted at the end of its passing window back, under its `_id`, with
    /// its queue, handed to the first waiting ticket (with a lease of `lease`): one
    /// insert, after which the waiters wait on as if it had been passed on. Nothing
    /// happens if the key was taken meanwhile (by the original class, or by a waiter
    /// that cannot queue), or if it is too late (`RESTORE_LATEST`): the waiters then
    /// queue again.
    pub async fn restore(&self, key: &LockKey, queue: Queue, lease: Duration) -> Result<()> {
        let lease = self.lease_and_passing(lease).await?;
        if !queue.restorable() {
            return Ok(());
        }
        let restored = document::restored_lock(key, queue.doc_id, queue.waiting, lease);
        match self
            .locks
            .insert_one(restored)
            .await
            .map_err(|e| duplicate_key_or(e, key))
        {
            Ok(_) | Err(LockError::DuplicateKey { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes our lock if nobody is queued for it.
    async fn delete_unqueued(&self, key: &LockKey, owner: &str) -> Result<Option<Released>> {
        let deleted = self
            .locks
            .find_one_and_delete(doc! {
                ID: key.to_bson(), OWNER: owner, format!("{QUEUE}.0"): { "$exists": false },
            })
            .projection(doc! { CONTENDED: 1 })
            .await?;
        Ok(deleted.map(|d| Released::from_deleted(&d)))
    }

    /// A waiter that gave up: leaves the queue, and releases the lock if it was handed
    /// to it in the meantime; `None` when it left the queue, else what the release did.
    pub async fn give_up(
        &self,
        key: &LockKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<Released>> {
        let left = self
            .locks
            .update_one(
                doc! { ID: key.to_bson(), "$expr": document::waits(owner) },
                vec![doc! { "$set": document::leave_queue(owner) }],
            )
            .await?;
        // A ticket still queued was never handed the lock.
        if left.matched_count == 1 {
            return Ok(None);
        }
        self.release(key, owner, lease, true).await.map(Some)
    }
}

/// When a lease of `lease` ends if it starts at `latest` (ms on the server's clock).
fn ends(latest: i64, lease: Duration) -> DateTime {
    DateTime::from_millis(latest + lease.as_millis() as i64)
}

/// The fields `passed_on` and `place_in_queue` read.
fn passed_on_fields() -> Document {
    doc! { OWNER: 1, QUEUE: 1, SERVED: 1, CONTENDED: 1 }
}

/// What `pass_on` did, read from the document after its update: the owner is no
/// longer us exactly when it handed the lock on.
fn passed_on(after: &Document, owner: &str) -> PassedOn {
    if after.get_str(OWNER).is_ok_and(|o| o != owner) {
        return PassedOn::HandedOver;
    }
    match after.get(QUEUE) {
        Some(Bson::Array(queue)) if !queue.is_empty() => PassedOn::Capped,
        _ => PassedOn::NobodyQueued {
            contended: after.get_bool(CONTENDED).unwrap_or(false),
        },
    }
}

/// `DuplicateKey` when the server said E11000, else the driver's error. The Rust
/// driver keeps the server's message but not its `keyPattern` and `keyValue`; both
/// follow from the only unique index on `_locks`, `{ id: 1 }`.
fn duplicate_key_or(error: mongodb::error::Error, key: &LockKey) -> LockError {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY => {
            LockError::DuplicateKey {
                message: w.message.clone(),
                key_pattern: Box::new(doc! { ID: 1 }),
                key_value: Box::new(doc! { ID: key.to_bson() }),
            }
        }
        _ => LockError::Mongo(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_restored_only_if_it_would_pass_within_a_passing_window() {
        let queue = Queue {
            doc_id: Bson::Int32(1),
            waiting: vec!["a".into(), "b".into(), "c".into()],
            deleted_at: Instant::now(),
        };
        assert!(queue.worth_restoring(Duration::from_millis(300)));
        assert!(!queue.worth_restoring(Duration::from_millis(334)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_is_not_put_back_once_its_waiters_may_have_queued_again() {
        let queue = Queue {
            doc_id: Bson::Int32(1),
            waiting: vec!["a".into()],
            deleted_at: Instant::now(),
        };
        tokio::time::advance(RESTORE_LATEST).await;
        assert!(queue.restorable());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!queue.restorable());
        assert!(RESTORE_LATEST < RESTORE_WAIT);
    }
}
