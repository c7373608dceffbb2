//! The shape of a lock document in `_locks`.
//!
//! The first three fields are the original class's, written exactly as the Node.js
//! driver writes them, so both implementations read each other's locks. The rest
//! are ours; the original ignores them.

use std::time::{SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, Bson, DateTime, Document, Timestamp};

use crate::key::LockKey;

pub const LOCKS_COLLECTION: &str = "_locks";
/// Per-key counters for fencing tokens on deployments that report no `operationTime`.
pub const FENCES_COLLECTION: &str = "_lock_fences";

pub const ID: &str = "id";
pub const LOCKED_AT: &str = "locked_at";
pub const META: &str = "_meta_data";
/// A random id per acquisition: releases and renewals match on it, so a holder can
/// never remove or extend a lock that somebody else took after it lost its own.
pub const OWNER: &str = "owner";
/// When the lease ends, on the server's clock. Absent on locks without a lease
/// (the original's, and `lock()` without `lease`), which are never taken over.
pub const LEASE_EXPIRES_AT: &str = "lease_expires_at";
/// Set by a waiter of another process that found the lock in its way and cannot
/// queue (no change stream): when the holder's process releases the key, it lets that
/// waiter try first.
pub const CONTENDED: &str = "contended";
/// The waiting processes' tickets: the owner ids they will hold under, in order of
/// arrival, after the first `SERVED` of them, which were handed the lock already. A
/// release hands the lock to the first that waits (`store.rs`, `pass_on`).
pub const QUEUE: &str = "queue";
/// How many tickets at the front of `QUEUE` were served; absent is none. Taking the
/// first ticket out would move every other one, and a server then logs the whole
/// document for the hand-over (a `replace` event), which every process's change
/// stream reads; leaving it there logs a few fields. With 32 open streams and one
/// catching up 32 entries per write, `secantusd-rs` spent 1.00 ms of CPU per write on
/// the whole documents, 0.73 ms on the small updates.
pub const SERVED: &str = "served";
/// Until when, on the server's clock, the lock may pass from process to process
/// through `QUEUE`; after that its next release deletes it, so that processes that
/// cannot queue get a chance to insert.
pub const PASSES_UNTIL: &str = "passes_until";
/// The last renewal written, `{ by: owner, count }`: a renewal matches only while its
/// count is higher than the one written under its owner. A renewal the driver gave up
/// on can still reach the server after a later one: for example its connection broke
/// with retryable writes off or on a standalone server, or the one retry failed too,
/// and the session that would have refused the first attempt was dropped with it.
/// Without the count it would move the lease back to an end earlier than the one its
/// holder trusts.
pub const RENEWED: &str = "renewed";

/// A new lock document, as the original writes it plus our fields. Locks without a
/// lease never pass through a queue.
pub fn new_lock(key: &LockKey, owner: &str, lease: Option<(DateTime, DateTime)>) -> Document {
    let now = now_millis();
    let mut document = doc! {
        LOCKED_AT: Bson::Double(now as f64),
        ID: key.to_bson(),
        META: { "created_at": millis_timestamp(now), "updated_at": millis_timestamp(now) },
        OWNER: owner,
    };
    if let Some((expiry, passes_until)) = lease {
        document.insert(LEASE_EXPIRES_AT, expiry);
        document.insert(PASSES_UNTIL, passes_until);
    }
    document
}

/// A lock deleted at the end of its passing window, put back under its `_id`, handed
/// to the first of its `waiting` tickets (not empty) with `lease` (its expiry and the
/// end of its passing window), the others queued. `SERVED` is written (as 0) only
/// here, so that the change stream can tell a restored lock from a new one.
pub fn restored_lock(
    key: &LockKey,
    doc_id: Bson,
    mut waiting: Vec<Bson>,
    lease: (DateTime, DateTime),
) -> Document {
    let first = waiting.remove(0);
    let mut document = doc! { "_id": doc_id };
    document.extend(new_lock(
        key,
        first.as_str().unwrap_or_default(),
        Some(lease),
    ));
    document.insert(QUEUE, waiting);
    document.insert(SERVED, 0);
    document
}

/// The `$set` that gives an existing lock document to a new owner.
pub fn new_owner(owner: &str, lease_expires_at: Option<DateTime>) -> Document {
    let now = now_millis();
    let mut set = doc! {
        LOCKED_AT: Bson::Double(now as f64),
        OWNER: owner,
        "_meta_data.updated_at": millis_timestamp(now),
    };
    match lease_expires_at {
        Some(expiry) => set.insert(LEASE_EXPIRES_AT, expiry),
        None => None,
    };
    set
}

/// The upsert pipeline of a waiter that can queue: on a missing lock (the upsert's
/// new document has only `id`) it writes a new lock of `owner`, as `new_lock` does; on
/// an existing one it adds `owner` to the queue, unless it is queued or holds it.
pub fn take_or_enqueue(
    owner: &str,
    lease_expires_at: DateTime,
    passes_until: DateTime,
) -> Vec<Document> {
    let exists = doc! { "$ne": [{ "$type": format!("${LOCKED_AT}") }, "missing"] };
    let there = doc! { "$or": [{ "$eq": [format!("${OWNER}"), owner] }, waits(owner)] };
    let joined =
        doc! { "$cond": [there, format!("${QUEUE}"), { "$concatArrays": [queue(), [owner]] }] };
    let now = now_millis();
    let meta = doc! { "created_at": millis_timestamp(now), "updated_at": millis_timestamp(now) };
    let new = |field: &str, value: Bson| doc! { "$cond": [exists.clone(), format!("${field}"), { "$literal": value }] };
    vec![doc! { "$set": {
        LOCKED_AT: new(LOCKED_AT, Bson::Double(now as f64)),
        META: new(META, meta.into()),
        OWNER: new(OWNER, owner.into()),
        LEASE_EXPIRES_AT: new(LEASE_EXPIRES_AT, lease_expires_at.into()),
        PASSES_UNTIL: new(PASSES_UNTIL, passes_until.into()),
        QUEUE: { "$cond": [exists, joined, format!("${QUEUE}")] },
    } }]
}

/// The update pipeline that passes a lock to the first waiting ticket of its queue, if
/// it has one and `now` is before its `PASSES_UNTIL`; else it leaves the document as
/// it is. One write, whatever the number of tickets. When it passes the lock on,
/// `rejoin` (the releaser's next owner id) takes the last place in the queue.
///
/// The served ticket stays where it is (`SERVED`), so that the write changes only a
/// few fields, until at least as many were served as wait: then the queue keeps only
/// the waiting ones, so the document stays at most about twice their size, and a
/// queue is empty exactly when nobody waits.
///
/// One `$cond` chooses between the changed document and the same one, so the server
/// decides once whether it hands over, not once per field. With a `$cond` per field
/// (as the `$set` of `take_or_enqueue` has) the pipeline cost 4 processes on one key
/// 7% of their hand-overs (medians of seven 6 s runs on `secantusd-rs`, A/B, 422
/// against 451.5 hand-overs/s); 32 processes were the same.
pub fn hand_over(lease_expires_at: DateTime, now: DateTime, rejoin: Option<&str>) -> Vec<Document> {
    let handing = doc! { "$and": [
        { "$gt": [{ "$size": queue() }, served()] },
        { "$gt": [format!("${PASSES_UNTIL}"), now] },
    ] };
    let now = now_millis();
    let grown = match rejoin {
        Some(owner) => doc! { "$concatArrays": [queue(), [owner]] },
        None => queue(),
    };
    let trim = doc! { "$gte": ["$$served", { "$subtract": [{ "$size": "$$grown" }, "$$served"] }] };
    let changed = doc! { "$let": {
        "vars": { "grown": grown, "served": { "$add": [served(), 1] } },
        "in": {
            OWNER: { "$arrayElemAt": [queue(), served()] },
            QUEUE: { "$cond": [&trim, { "$slice": ["$$grown", "$$served", i32::MAX] }, "$$grown"] },
            SERVED: { "$cond": [trim, 0, "$$served"] },
            LEASE_EXPIRES_AT: lease_expires_at,
            LOCKED_AT: Bson::Double(now as f64),
            META: { "$mergeObjects": [format!("${META}"), { "updated_at": millis_timestamp(now) }] },
        },
    } };
    let whole = doc! { "$mergeObjects": ["$$ROOT", changed] };
    vec![doc! { "$replaceWith": { "$cond": [handing, whole, "$$ROOT"] } }]
}

/// The update of a lock taken over by `owner`: its queue ticket goes, and so do the
/// marks, which were meant for the previous holder's process. Without a lease
/// (`lock()` without one) the passed lease goes too: such a lock never expires.
pub fn take_over(owner: &str, lease_expires_at: Option<DateTime>) -> Vec<Document> {
    let mut update = vec![
        doc! { "$set": new_owner(owner, lease_expires_at) },
        doc! { "$set": leave_queue(owner) },
        doc! { "$unset": CONTENDED },
    ];
    if lease_expires_at.is_none() {
        update.push(doc! { "$unset": [LEASE_EXPIRES_AT, PASSES_UNTIL] });
    }
    update
}

/// The update that confirms a lock handed to `owner` with a new lease.
pub fn claim(owner: &str, lease_expires_at: DateTime) -> Vec<Document> {
    vec![
        doc! { "$set": { LEASE_EXPIRES_AT: lease_expires_at } },
        doc! { "$set": leave_queue(owner) },
    ]
}

/// The stage that takes `owner`'s ticket out of the queue, where it waits; the served
/// tickets go with it, as the queue is written whole.
pub fn leave_queue(owner: &str) -> Document {
    let others = doc! { "$filter": { "input": waiting(), "cond": { "$ne": ["$$this", owner] } } };
    doc! { QUEUE: others, SERVED: 0 }
}

/// The `$expr` that matches while `owner`'s ticket waits in the queue.
pub fn waits(owner: &str) -> Document {
    doc! { "$in": [owner, waiting()] }
}

/// The tickets of a lock document `found` that wait: its queue after the served ones.
pub fn waiting_tickets(found: &Document) -> &[Bson] {
    let Ok(queue) = found.get_array(QUEUE) else {
        return &[];
    };
    let served = match found.get(SERVED) {
        Some(Bson::Int32(n)) => *n as usize,
        Some(Bson::Int64(n)) => *n as usize,
        _ => 0,
    };
    queue.get(served..).unwrap_or_default()
}

/// How many hand-overs come before the turn of `owner` in the queue of `found`: its
/// ticket's place among the waiting ones, counted from 1; 0 (listen at once) if it
/// does not wait there.
pub fn place_in_queue(found: &Document, owner: &str) -> u32 {
    let waiting = waiting_tickets(found);
    let at = waiting.iter().position(|t| t.as_str() == Some(owner));
    at.map_or(0, |i| i + 1) as u32
}

fn queue() -> Document {
    doc! { "$ifNull": [format!("${QUEUE}"), []] }
}

fn served() -> Document {
    doc! { "$ifNull": [format!("${SERVED}"), 0] }
}

/// The tickets that wait.
fn waiting() -> Document {
    doc! { "$slice": [queue(), served(), i32::MAX] }
}

/// `Timestamp.fromNumber(Date.now())` of the Node.js driver: the millisecond count
/// split into the high (`t`) and low (`i`) 32 bits.
fn millis_timestamp(millis: u64) -> Timestamp {
    Timestamp {
        time: (millis >> 32) as u32,
        increment: millis as u32,
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_in_the_queue_counts_the_hand_overs_up_to_the_owners_turn() {
        let found = doc! { QUEUE: ["a", "b", "c"] };
        assert_eq!(place_in_queue(&found, "a"), 1);
        assert_eq!(place_in_queue(&found, "c"), 3);
        assert_eq!(place_in_queue(&found, "z"), 0);
        assert_eq!(place_in_queue(&doc! {}, "a"), 0);
    }

    #[test]
    fn served_tickets_are_no_places() {
        let found = doc! { QUEUE: ["a", "b", "c"], SERVED: 2 };
        assert_eq!(place_in_queue(&found, "a"), 0);
        assert_eq!(place_in_queue(&found, "c"), 1);
        let found = doc! { QUEUE: ["a", "b", "c"], SERVED: 1_i64 };
        assert_eq!(place_in_queue(&found, "b"), 1);
    }

    #[test]
    fn meta_timestamp_carries_the_millisecond_count() {
        let ts = millis_timestamp(1_795_777_805_123);
        assert_eq!(
            ((ts.time as u64) << 32) | ts.increment as u64,
            1_795_777_805_123
        );
    }

    #[test]
    fn lock_document_has_the_original_fields() {
        let d = new_lock(&LockKey::Num(7.0), "me", None);
        assert_eq!(d.get(ID), Some(&Bson::Int32(7)));
        assert!(matches!(d.get(LOCKED_AT), Some(Bson::Double(_))));
        assert!(d
            .get_document(META)
            .unwrap()
            .get_timestamp("created_at")
            .is_ok());
        assert!(d.get(LEASE_EXPIRES_AT).is_none());
    }
}
