//! Wakes waiters when a lock document is deleted or handed to them through its
//! queue (`store.rs`), instead of on a timer.
//!
//! One change stream per `LockService` (so per client), shared by all its waiters,
//! opened when the first waiter needs it and closed again after a quiet minute, so
//! that callers who never wait cost the server nothing. A waiter subscribes after
//! its failed insert but before it looks up the document in its way, so a release
//! that happens in between is either seen by the look-up or delivered by the feed.
//! Where the deployment offers no change streams (a standalone server) the feed
//! reports itself unavailable and waiters poll with jittered exponential backoff.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::error::ErrorKind;
use mongodb::Collection;

use crate::document::{place_in_queue, LEASE_EXPIRES_AT, OWNER, SERVED};
use crate::key::LockKey;
use crate::listening::{Ask, Deferral, Listening};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedState {
    Starting,
    Live,
    Unavailable,
}

pub struct ReleaseFeed {
    inner: Arc<Inner>,
}

/// A change to a lock document that a waiter may be waiting for.
#[derive(Debug, Clone)]
enum Change {
    Deleted(Bson),
    HandedOver(HandOver),
    /// Put back with its queue after a deletion (`store.rs`, `restore`): handed over,
    /// with the other tickets queued in `lock`, the restored document.
    Restored {
        handed: HandOver,
        lock: Document,
    },
}

/// A lock passed on through its queue, as the change stream tells it.
#[derive(Debug, Clone)]
pub struct HandOver {
    doc_id: Bson,
    pub owner: String,
    /// Absent when the update left it as it was (the releaser's lease ended in the
    /// same millisecond): the event then does not say it.
    pub lease_expires_at: Option<DateTime>,
    /// The cluster time of the write that passed it on: the new holder's fencing token.
    pub fencing_token: u64,
}

/// Why a waiter woke.
#[derive(Debug)]
pub enum Wake {
    /// The document in its way was deleted: it may come back with its queue
    /// (`Subscription::restored`), else try again.
    Deleted,
    /// Events were lost: look again.
    Missed,
    /// The lock is now the waiter's.
    HandedToUs(HandOver),
}

struct Inner {
    /// Starts every owner id of this feed's waiters (`new_owner`), so that the stream
    /// brings this process only the hand-overs meant for it: with many processes
    /// queued on one key, each hand-over wakes one of them, not all.
    owner_prefix: String,
    /// How many owner ids this feed handed out: the rest of each id. A counter, not a
    /// random id, to keep ids short: every queued id is in the lock's `queue`, which
    /// each process's stream reads through whenever the server logs the whole
    /// document. With 32 processes on one key, ids of 45 characters against about 15
    /// (a prefix of 12 hex digits then): server CPU per hand-over 2.46 against 2.32
    /// ms, 307 against 318 hand-overs/s after the first 4 s (medians of ten 8 s runs,
    /// A/B, a fresh server per round). The prefix is 80 random bits now: two feeds
    /// with the same prefix would hand out the same ids, and a second holder of an id
    /// would take the first one's lock for its own.
    owners: AtomicU64,
    released: broadcast::Sender<Change>,
    state: watch::Sender<FeedState>,
    running: Mutex<Running>,
    stop: CancellationToken,
    /// Which subscribers listen now: the stream asks the server only while one does.
    listening: Arc<Listening>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Running {
    No,
    Yes,
    /// The server refused to open a stream then; asked again only by a waiter, and
    /// not before `RETRY_REFUSED_DELAY`.
    RefusedAt(Instant),
}

/// Whether a lock deleted in a waiter's way came back with its queue.
#[derive(Debug)]
pub enum Restored {
    /// Handed to the waiter.
    ToUs(HandOver),
    /// With the waiter's ticket queued, `places` hand-overs before its turn, and a new
    /// lease.
    Behind {
        places: u32,
        lease_expires_at: Option<DateTime>,
    },
    /// Back, but without the waiter's ticket.
    Without,
    /// Not seen: not in time, or events were lost.
    Unseen,
}

/// A waiter's view of the feed.
pub struct Subscription {
    // Before `deferral`, so that it is dropped first: the feed never counts a
    // deferred subscriber as one that listens now.
    released: broadcast::Receiver<Change>,
    deferral: Option<Deferral>,
    pub live: bool,
}

impl Subscription {
    /// A second view of the feed, from now on, deferred as this one was before `place`.
    pub fn again(&self) -> Subscription {
        // The deferral before the receiver, as in `subscribe_deferred_if_live`.
        let deferral = self.deferral.as_ref().map(Deferral::again);
        let released = self.released.resubscribe();
        if let Some(deferral) = &deferral {
            deferral.subscribed();
        }
        Subscription {
            released,
            deferral,
            live: self.live,
        }
    }

    /// A deferred subscription listens from now, until it is placed again; none of its
    /// waits teaches the pace any more: its wait went another way than foreseen.
    pub fn listen_now(&self) {
        if let Some(deferral) = &self.deferral {
            deferral.listen_now();
        }
    }

    /// For a deferred subscription: `places` hand-overs come before its turn
    /// (`listening.rs`).
    pub fn place(&self, places: u32) {
        if let Some(deferral) = &self.deferral {
            deferral.place(places);
        }
    }

    /// Resolves when the document `doc_id` is deleted or handed to `owner` (or events
    /// were lost, in which case waking once too often is the safe side).
    pub async fn wake(&mut self, doc_id: &Bson, owner: &str) -> Wake {
        if !self.live {
            return std::future::pending().await;
        }
        // Never placed (its write did not queue it), or its turn was heard already:
        // nothing foresees when to listen.
        if self.deferral.as_ref().is_some_and(Deferral::is_done) {
            self.listen_now();
        }
        loop {
            match self.released.recv().await {
                Ok(Change::Deleted(id)) if &id == doc_id => {
                    self.listen_now();
                    return Wake::Deleted;
                }
                Ok(Change::HandedOver(h)) if &h.doc_id == doc_id && h.owner == owner => {
                    return Wake::HandedToUs(h)
                }
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.listen_now();
                    return Wake::Missed;
                }
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        }
    }

    /// After `wake` said the document `doc_id` was deleted: whether it comes back with
    /// its queue within `within`, and what that means for `owner`.
    pub async fn restored(&mut self, doc_id: &Bson, owner: &str, within: Duration) -> Restored {
        let back = async {
            loop {
                match self.released.recv().await {
                    Ok(Change::Restored { handed, lock }) if &handed.doc_id == doc_id => {
                        return restored_for(owner, handed, &lock);
                    }
                    Ok(_) => continue,
                    Err(_) => return Restored::Unseen,
                }
            }
        };
        tokio::time::timeout(within, back)
            .await
            .unwrap_or(Restored::Unseen)
    }
}

fn restored_for(owner: &str, handed: HandOver, lock: &Document) -> Restored {
    if handed.owner == owner {
        return Restored::ToUs(handed);
    }
    match place_in_queue(lock, owner) {
        0 => Restored::Without,
        places => Restored::Behind {
            places,
            lease_expires_at: handed.lease_expires_at,
        },
    }
}

/// How long the first start of the stream may take before waiters poll instead.
const START_WAIT: Duration = Duration::from_secs(2);
/// After a live stream broke (failover, network): reopen soon.
const REOPEN_DELAY: Duration = Duration::from_secs(1);
/// After the server refused to open one (standalone): it will not change its mind soon,
/// so the next waiter asks again only after this.
const RETRY_REFUSED_DELAY: Duration = Duration::from_secs(30);
/// A stream nobody listened to for this long is closed.
const IDLE_CLOSE: Duration = Duration::from_secs(60);
/// How long the stream asks nothing once nobody subscribes (`ask`). Longer, and the
/// events that gather in the server's cursor meanwhile come in one burst: every
/// deletion in `_locks` is one. Past the channel's 1 024, waiters learn that they
/// missed events (`Wake::Missed`) and look again, with a read or a write each.
const UNHEARD: Duration = Duration::from_secs(1);

impl ReleaseFeed {
    pub fn new(stop: CancellationToken) -> Self {
        ReleaseFeed {
            inner: Arc::new(Inner {
                owner_prefix: format!("{}-", &uuid::Uuid::new_v4().simple().to_string()[..20]),
                owners: AtomicU64::new(0),
                released: broadcast::channel(1024).0,
                state: watch::channel(FeedState::Starting).0,
                running: Mutex::new(Running::No),
                stop,
                listening: Arc::default(),
            }),
        }
    }

    /// Whether the stream is open and following now.
    pub fn is_live(&self) -> bool {
        *self.inner.state.borrow() == FeedState::Live
    }

    /// A new owner id for an acquisition by one of this feed's waiters.
    pub fn new_owner(&self) -> String {
        let n = self.inner.owners.fetch_add(1, Ordering::Relaxed);
        format!("{}{n:x}", self.inner.owner_prefix)
    }

    /// Subscribes to the turn of `owner` on `key` if the stream is live now, without
    /// waiting; deferred, listening only once placed (`Subscription::place`). Under the
    /// lock `stop_if_unused` decides under, so the stream cannot stop unheard.
    pub fn subscribe_deferred_if_live(&self, owner: &str, key: &LockKey) -> Option<Subscription> {
        let running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        if *running != Running::Yes || !self.is_live() {
            return None;
        }
        let deferral = self.inner.listening.defer(owner, key.identity().into());
        let released = self.inner.released.subscribe();
        deferral.subscribed();
        drop(running);
        Some(Subscription {
            released,
            deferral: Some(deferral),
            live: true,
        })
    }

    /// Subscribes to releases, opening the stream if it is not open.
    pub async fn subscribe(&self, locks: &Collection<Document>) -> Subscription {
        let released = self.inner.released.subscribe();
        self.inner.listening.notify();
        self.start(locks);
        let mut state = self.inner.state.subscribe();
        let settled =
            tokio::time::timeout(START_WAIT, state.wait_for(|s| *s != FeedState::Starting)).await;
        let live = matches!(settled, Ok(Ok(s)) if *s == FeedState::Live);
        Subscription {
            released,
            deferral: None,
            live,
        }
    }

    fn start(&self, locks: &Collection<Document>) {
        let mut running = self.inner.running.lock().unwrap_or_else(|e| e.into_inner());
        match *running {
            Running::Yes => return,
            Running::RefusedAt(at) if at.elapsed() < RETRY_REFUSED_DELAY => return,
            Running::RefusedAt(_) | Running::No => {}
        }
        *running = Running::Yes;
        self.inner.state.send_replace(FeedState::Starting);
        let (inner, locks) = (self.inner.clone(), locks.clone());
        tokio::spawn(async move {
            inner
                .stop
                .clone()
                .run_until_cancelled(follow(&inner, locks))
                .await;
        });
    }
}

/// Marks the feed stopped when nobody listens; the next subscriber starts a new stream.
/// Deciding under the lock keeps a subscriber from missing the restart.
fn stop_if_unused(inner: &Inner) -> bool {
    let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
    if inner.released.receiver_count() > 0 {
        return false;
    }
    *running = Running::No;
    inner.state.send_replace(FeedState::Starting);
    true
}

/// Follows the stream until it has been idle for `IDLE_CLOSE`, or until the server
/// refuses to open one. A stream that cannot be opened because the server is out of
/// reach (a restart, a failover) is tried again every `REOPEN_DELAY` while anyone waits.
async fn follow(inner: &Inner, locks: Collection<Document>) {
    loop {
        let opened = locks
            .watch()
            .pipeline([events_for(&inner.owner_prefix)])
            .await;
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(e) if matches!(*e.kind, ErrorKind::Command(_)) => {
                let mut running = inner.running.lock().unwrap_or_else(|e| e.into_inner());
                *running = Running::RefusedAt(Instant::now());
                inner.state.send_replace(FeedState::Unavailable);
                return;
            }
            Err(_) => {
                inner.state.send_replace(FeedState::Unavailable);
                tokio::time::sleep(REOPEN_DELAY).await;
                if stop_if_unused(inner) {
                    return;
                }
                continue;
            }
        };
        inner.state.send_replace(FeedState::Live);
        let mut last_listened = Instant::now();
        loop {
            let subscribers = inner.released.receiver_count();
            if subscribers > 0 {
                last_listened = Instant::now();
            } else if last_listened.elapsed() >= IDLE_CLOSE && stop_if_unused(inner) {
                return;
            }
            let look_again = Instant::now() + IDLE_CLOSE / 4;
            match ask(inner, subscribers, last_listened) {
                Ask::Now => tokio::select! {
                    event = stream.next() => match event {
                        Some(Ok(event)) => deliver(inner, event),
                        Some(Err(_)) | None => break,
                    },
                    _ = tokio::time::sleep_until(look_again) => {}
                },
                Ask::NotBefore(from) => tokio::select! {
                    _ = tokio::time::sleep_until(from.map_or(look_again, |f| f.min(look_again))) => {}
                    _ = inner.listening.changed() => {}
                },
            }
        }
        inner.state.send_replace(FeedState::Unavailable);
        tokio::time::sleep(REOPEN_DELAY).await;
    }
}

/// Whether to ask the server for events now (`listening.rs`). With no subscriber,
/// not for `UNHEARD`: a process between two turns of a loop would otherwise leave a
/// `getMore` waiting on the server through its next wait.
fn ask(inner: &Inner, subscribers: usize, last_listened: Instant) -> Ask {
    if subscribers > 0 {
        return inner.listening.ask(subscribers);
    }
    let resume = last_listened + UNHEARD;
    if resume > Instant::now() {
        Ask::NotBefore(Some(resume))
    } else {
        Ask::Now
    }
}

fn deliver(inner: &Inner, event: ChangeStreamEvent<Document>) {
    let Some(change) = change(event) else {
        return;
    };
    match &change {
        Change::HandedOver(handed) => inner.listening.handed_to(&handed.owner, true),
        // Its wait spanned a deletion: no measure of the pace.
        Change::Restored { handed, .. } => inner.listening.handed_to(&handed.owner, false),
        Change::Deleted(_) => {}
    }
    // No receiver is fine: nobody is waiting.
    let _ = inner.released.send(change);
}

/// The stage that keeps the events a waiter of this service may wait for: deletions,
/// hand-overs to an owner id that starts with `prefix`, and locks put back with their
/// queue after a deletion (`store.rs`, `restore`; the only inserts that write
/// `served`), which may hold a ticket of any process.
///
/// A hand-over is an update pipeline, which MongoDB before 5.0 (or at feature
/// compatibility 4.4) writes to the oplog as a whole new document, so its event is a
/// `replace` with the owner in `fullDocument`; 5.0 and later may do the same when the
/// difference is not smaller than the document.
///
/// The prefix is matched as a range of strings, not a `$regex`: the server evaluates
/// the stage for every write, once per open stream, and a server may compile a regular
/// expression each time (`secantusd-rs` does: half its CPU with 32 processes).
fn events_for(prefix: &str) -> Document {
    let ours = doc! { "$gte": prefix, "$lt": prefix_end(prefix) };
    let updated_owner = format!("updateDescription.updatedFields.{OWNER}");
    let replaced_owner = format!("fullDocument.{OWNER}");
    let restored = format!("fullDocument.{SERVED}");
    doc! { "$match": { "$or": [
        { "operationType": "delete" },
        { "operationType": "update", updated_owner: ours.clone() },
        { "operationType": "replace", replaced_owner: ours },
        { "operationType": "insert", restored: { "$exists": true } },
    ] } }
}

/// The least string greater than every string that starts with `prefix`: `prefix`
/// with its last character replaced by the next one. Owner prefixes end in `-`.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    let last = end.pop().expect("an owner prefix is not empty");
    end.push(char::from_u32(last as u32 + 1).expect("an owner prefix ends in ASCII"));
    end
}

/// What an event of the stream means to waiters, if anything.
fn change(event: ChangeStreamEvent<Document>) -> Option<Change> {
    let doc_id = event.document_key?.get("_id")?.clone();
    if event.operation_type == OperationType::Delete {
        return Some(Change::Deleted(doc_id));
    }
    let fields = match event.operation_type {
        OperationType::Replace | OperationType::Insert => event.full_document?,
        _ => event.update_description?.updated_fields,
    };
    let time = event.cluster_time?;
    let handed = HandOver {
        doc_id,
        owner: fields.get_str(OWNER).ok()?.to_owned(),
        lease_expires_at: fields.get_datetime(LEASE_EXPIRES_AT).ok().copied(),
        fencing_token: ((time.time as u64) << 32) | time.increment as u64,
    };
    Some(match event.operation_type {
        OperationType::Insert => Change::Restored {
            handed,
            lock: fields,
        },
        _ => Change::HandedOver(handed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::Timestamp;

    fn update(fields: Document) -> ChangeStreamEvent<Document> {
        mongodb::bson::from_document(doc! {
            "_id": { "_data": "1" },
            "operationType": "update",
            "clusterTime": Timestamp { time: 7, increment: 3 },
            "documentKey": { "_id": 1 },
            "updateDescription": { "updatedFields": fields, "removedFields": [] },
        })
        .unwrap()
    }

    #[test]
    fn the_prefix_range_holds_exactly_the_owner_ids_with_that_prefix() {
        let prefix = "0123456789ab-";
        let end = prefix_end(prefix);
        let inside = |id: &str| prefix <= id && id < end.as_str();
        assert!(inside("0123456789ab-"));
        assert!(inside("0123456789ab-ffffffffffffffffffffffffffffffff"));
        assert!(!inside("0123456789ab."));
        assert!(!inside("0123456789ac-0"));
        assert!(!inside("0123456789aa-f"));
        assert!(!inside("0123456789ab"));
    }

    #[test]
    fn a_feed_hands_out_distinct_ids_that_no_other_feed_owns() {
        let ours = ReleaseFeed::new(CancellationToken::new());
        let theirs = ReleaseFeed::new(CancellationToken::new());
        let prefix = ours.inner.owner_prefix.clone();
        let end = prefix_end(&prefix);
        let inside = |id: &str| prefix.as_str() <= id && id < end.as_str();
        let owners: Vec<String> = (0..100).map(|_| ours.new_owner()).collect();
        assert!(owners.iter().all(|owner| inside(owner)));
        assert!((0..100).all(|_| !inside(&theirs.new_owner())));
        let distinct: std::collections::HashSet<&String> = owners.iter().collect();
        assert_eq!(distinct.len(), owners.len());
    }

    #[test]
    fn a_hand_over_carries_its_owner_lease_and_cluster_time() {
        let expiry = DateTime::from_millis(5_000);
        let event = update(doc! { OWNER: "b", LEASE_EXPIRES_AT: expiry });
        let Some(Change::HandedOver(handed)) = change(event) else {
            panic!("not a hand-over");
        };
        assert_eq!(handed.owner, "b");
        assert_eq!(handed.lease_expires_at, Some(expiry));
        assert_eq!(handed.fencing_token, (7 << 32) | 3);
    }

    #[test]
    fn a_restored_lock_tells_each_ticket_its_place() {
        let expiry = DateTime::from_millis(5_000);
        let key = crate::key::LockKey::Str("k".into());
        let waiting = vec!["a".into(), "b".into(), "c".into()];
        let lock = crate::document::restored_lock(&key, Bson::Int32(1), waiting, (expiry, expiry));
        let event = mongodb::bson::from_document(doc! {
            "_id": { "_data": "1" },
            "operationType": "insert",
            "clusterTime": Timestamp { time: 7, increment: 3 },
            "documentKey": { "_id": 1 },
            "fullDocument": lock,
        })
        .unwrap();
        let Some(Change::Restored { handed, lock }) = change(event) else {
            panic!("not a restore");
        };
        assert_eq!(
            (handed.owner.as_str(), handed.lease_expires_at),
            ("a", Some(expiry))
        );
        assert_eq!(handed.fencing_token, (7 << 32) | 3);
        let restored = |owner| restored_for(owner, handed.clone(), &lock);
        assert!(matches!(restored("a"), Restored::ToUs(_)));
        assert!(matches!(restored("c"), Restored::Behind { places: 2, .. }));
        assert!(matches!(restored("z"), Restored::Without));
    }

    #[tokio::test(start_paused = true)]
    async fn with_nobody_subscribed_the_stream_asks_again_only_after_a_while() {
        let feed = ReleaseFeed::new(CancellationToken::new());
        let last_listened = Instant::now();
        let resume = last_listened + UNHEARD;
        assert_eq!(
            ask(&feed.inner, 0, last_listened),
            Ask::NotBefore(Some(resume))
        );
        assert_eq!(ask(&feed.inner, 1, last_listened), Ask::Now);
        tokio::time::advance(UNHEARD).await;
        assert_eq!(ask(&feed.inner, 0, last_listened), Ask::Now);
    }

    #[tokio::test]
    async fn a_deferred_subscription_is_not_heard_before_its_place_is_known() {
        let feed = ReleaseFeed::new(CancellationToken::new());
        *feed.inner.running.lock().unwrap() = Running::Yes;
        feed.inner.state.send_replace(FeedState::Live);
        let owner = feed.new_owner();
        let key = LockKey::Str("k".into());
        let first = feed.subscribe_deferred_if_live(&owner, &key).expect("live");
        let second = first.again();
        let subscribers = feed.inner.released.receiver_count();
        assert_eq!(subscribers, 2);
        assert_eq!(
            ask(&feed.inner, subscribers, Instant::now()),
            Ask::NotBefore(None)
        );
        first.place(1);
        assert_eq!(ask(&feed.inner, subscribers, Instant::now()), Ask::Now);
        drop((first, second));
        let plain = feed.inner.released.subscribe();
        assert_eq!(ask(&feed.inner, 1, Instant::now()), Ask::Now);
        drop(plain);
    }

    #[test]
    fn a_hand_over_that_left_the_lease_as_it_was_is_still_a_hand_over() {
        // The releaser's lease ended in the same millisecond as the new one: the
        // update did not change the field, so the event does not list it.
        let Some(Change::HandedOver(handed)) = change(update(doc! { OWNER: "b" })) else {
            panic!("not a hand-over");
        };
        assert_eq!(handed.lease_expires_at, None);
    }

    #[test]
    fn a_hand_over_written_as_a_whole_document_is_read_from_it() {
        let expiry = DateTime::from_millis(5_000);
        let event = mongodb::bson::from_document(doc! {
            "_id": { "_data": "1" },
            "operationType": "replace",
            "clusterTime": Timestamp { time: 7, increment: 3 },
            "documentKey": { "_id": 1 },
            "fullDocument": { "_id": 1, OWNER: "b", LEASE_EXPIRES_AT: expiry, "queue": [] },
        })
        .unwrap();
        let Some(Change::HandedOver(handed)) = change(event) else {
            panic!("not a hand-over");
        };
        assert_eq!(handed.owner, "b");
        assert_eq!(handed.lease_expires_at, Some(expiry));
        assert_eq!(handed.fencing_token, (7 << 32) | 3);
    }
}
