//! The database's queue of waiting processes, against a real server with change
//! streams (`MONGODB_URL`; the test scripts start a replica set).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::OperationType;
use mongodb::event::command::CommandEvent;
use mongodb::event::EventHandler;
use mongodb::Collection;
use mongodb_resource_lock_core::{
    document, AcquireOptions, LockError, LockGuard, LockKey, LockService,
};
use tokio::sync::Mutex;

mod common;
mod model;
use common::{database_name, locks, options, other_process, server_url, service};

/// The tickets waiting in the queue of the lock of `key`.
async fn tickets(locks: &Collection<Document>, key: &str) -> usize {
    let found = locks.find_one(doc! { "id": key }).await.unwrap();
    found.map_or(0, |d| waiting(&d).len())
}

/// The tickets of `found` that were not served yet.
fn waiting(found: &Document) -> Vec<String> {
    let tickets = document::waiting_tickets(found).iter();
    tickets.map(|t| t.as_str().unwrap().to_owned()).collect()
}

/// Waits until `n` tickets are queued on `key`.
async fn queued(locks: &Collection<Document>, key: &str, n: usize) {
    for _ in 0..500 {
        if tickets(locks, key).await == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{n} tickets were never queued on {key}");
}

/// Lets the lock of `key` pass through its queue for another minute: a queue built up
/// slowly by the test must not reach the end of its passing time (`passes_until`),
/// when the lock is deleted once and the waiters race.
async fn keep_passing(locks: &Collection<Document>, key: &str) {
    let later = mongodb::bson::DateTime::from_millis(
        mongodb::bson::DateTime::now().timestamp_millis() + 60_000,
    );
    let set = doc! { "$set": { document::PASSES_UNTIL: later } };
    locks.update_one(doc! { "id": key }, set).await.unwrap();
}

/// Holds `key` in each of `services` in turn, recording `(name, document _id, token)`.
fn contender(
    name: usize,
    service: Arc<LockService>,
    locks: Collection<Document>,
    order: Arc<Mutex<Vec<(usize, Bson, u128)>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let key = LockKey::Str("queued".into());
        let guard = service
            .acquire(&key, &options(30_000, 5_000))
            .await
            .unwrap();
        let held = locks
            .find_one(doc! { "id": "queued" })
            .await
            .unwrap()
            .unwrap();
        let id = held.get("_id").unwrap().clone();
        order.lock().await.push((name, id, guard.fencing_token()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(guard.release().await.unwrap());
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_hands_the_lock_to_the_queued_processes_in_order_of_arrival() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("queued".into());
    let first = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    keep_passing(&locks, "queued").await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for name in 1..=5 {
        let other = other_process(&db).await;
        tasks.push(contender(name, other, locks.clone(), order.clone()));
        queued(&locks, "queued", name).await;
    }
    let first_id = locks
        .find_one(doc! { "id": "queued" })
        .await
        .unwrap()
        .unwrap();
    assert!(first.release().await.unwrap());
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().await.clone();
    let names: Vec<_> = order.iter().map(|(name, ..)| *name).collect();
    assert_eq!(names, vec![1, 2, 3, 4, 5], "first come, first served");
    // Each release passed the lock on with one update of the same document: nobody
    // deleted it, nobody inserted a new one, nobody raced.
    let first_id = first_id.get("_id").unwrap();
    assert!(order.iter().all(|(_, id, _)| id == first_id), "{order:?}");
    assert!(
        order.windows(2).all(|w| w[1].2 > w[0].2),
        "tokens: {order:?}"
    );
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_that_gives_up_leaves_the_queue() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("queued".into());
    let held = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    let other = other_process(&db).await;
    let waited = other.acquire(&key, &options(300, 5_000)).await;
    assert!(
        matches!(waited, Err(LockError::WaitTimeout)),
        "{:?}",
        waited.err()
    );
    queued(&locks, "queued", 0).await;
    // Released with nobody queued, the lock is deleted, not handed to the leaver.
    assert!(held.release().await.unwrap());
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_that_leaves_behind_a_served_ticket_keeps_the_next_ones_turn() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("served".into());
    let held = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    keep_passing(&locks, "served").await;
    let waiter = |other: Arc<LockService>, wait_ms: u64| {
        let key = key.clone();
        tokio::spawn(async move { other.acquire(&key, &options(wait_ms, 5_000)).await })
    };
    let first = waiter(other_process(&db).await, 5_000);
    queued(&locks, "served", 1).await;
    let leaver = waiter(other_process(&db).await, 600);
    queued(&locks, "served", 2).await;
    let last = waiter(other_process(&db).await, 5_000);
    queued(&locks, "served", 3).await;
    assert!(held.release().await.unwrap());
    let first = first.await.unwrap().unwrap();
    let served = locks
        .find_one(doc! { "id": "served" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served.get_i32(document::SERVED), Ok(1), "{served:?}");
    let leaver = leaver.await.unwrap();
    assert!(
        matches!(leaver, Err(LockError::WaitTimeout)),
        "{:?}",
        leaver.err()
    );
    // Its ticket leaves the queue in the background.
    queued(&locks, "served", 1).await;
    let left = locks
        .find_one(doc! { "id": "served" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting(&left).len(), 1, "{left:?}");
    // The ticket behind the leaver's is the next to be served, not skipped.
    let handed = std::time::Instant::now();
    assert!(first.release().await.unwrap());
    let last = last.await.unwrap().unwrap();
    assert!(
        handed.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        handed.elapsed()
    );
    let now = locks
        .find_one(doc! { "id": "served" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        now.get("_id"),
        served.get("_id"),
        "handed over, not inserted again"
    );
    assert_eq!(now.get_array(document::QUEUE).map(Vec::len), Ok(0));
    assert!(last.release().await.unwrap());
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_dropped_while_queued_leaves_the_queue() {
    // The binding drops a wait when the server refuses our credentials.
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("dropped".into());
    let held = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    let other = other_process(&db).await;
    let waiting = {
        let (other, key) = (other.clone(), key.clone());
        tokio::spawn(async move { other.acquire(&key, &options(5_000, 5_000)).await })
    };
    queued(&locks, "dropped", 1).await;
    waiting.abort();
    queued(&locks, "dropped", 0).await;
    // Released with nobody queued, the lock is deleted, not handed to the dropped wait.
    assert!(held.release().await.unwrap());
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_handed_to_a_vanished_waiter_is_taken_over_when_its_lease_ends() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("queued".into());
    let held = service.acquire(&key, &options(5_000, 400)).await.unwrap();
    // A ticket whose process died while it waited.
    let ghost = doc! { "$push": { document::QUEUE: "ghost" } };
    locks
        .update_one(doc! { "id": "queued" }, ghost)
        .await
        .unwrap();
    let other = other_process(&db).await;
    let waiter = tokio::spawn(async move {
        let key = LockKey::Str("queued".into());
        other
            .acquire(&key, &options(10_000, 5_000))
            .await
            .map(|g| g.fencing_token())
    });
    queued(&locks, "queued", 2).await;
    let released = std::time::Instant::now();
    assert!(held.release().await.unwrap());
    let owner = locks
        .find_one(doc! { "id": "queued" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(owner.get_str(document::OWNER).unwrap(), "ghost");
    waiter.await.unwrap().unwrap();
    // The ghost's lease is the releaser's, 400 ms: the waiter gets the lock after it,
    // not before.
    assert!(
        released.elapsed() >= Duration::from_millis(390),
        "{:?}",
        released.elapsed()
    );
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_over_that_the_server_reports_as_a_replacement_wakes_its_waiter() {
    let (_, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("replaced".into());
    let from_now = |ms| {
        mongodb::bson::DateTime::from_millis(mongodb::bson::DateTime::now().timestamp_millis() + ms)
    };
    let gone = document::new_lock(&key, "gone", Some((from_now(60_000), from_now(60_000))));
    locks.insert_one(gone).await.unwrap();
    let other = other_process(&db).await;
    let waiter = tokio::spawn(async move {
        let key = LockKey::Str("replaced".into());
        let guard = other.acquire(&key, &options(10_000, 5_000)).await.unwrap();
        let acquired = std::time::Instant::now();
        assert!(guard.release().await.unwrap());
        acquired
    });
    queued(&locks, "replaced", 1).await;
    let found = locks
        .find_one(doc! { "id": "replaced" })
        .await
        .unwrap()
        .unwrap();
    let ticket = waiting(&found).remove(0);
    // What MongoDB 4.4 makes of `pass_on`'s update pipeline: a whole new document.
    let mut handed = document::new_lock(&key, &ticket, Some((from_now(5_000), from_now(60_000))));
    handed.insert("_id", found.get("_id").unwrap().clone());
    let replaced = std::time::Instant::now();
    locks
        .replace_one(doc! { "id": "replaced" }, handed)
        .await
        .unwrap();
    let acquired = waiter.await.unwrap();
    // Without the stream the waiter would look again only at its 1 s safety poll.
    let took = acquired.duration_since(replaced);
    assert!(took < Duration::from_millis(500), "{took:?}");
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_streak_gives_way_to_a_queued_process() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("queued".into());
    let first = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (service, locks, order) = (service.clone(), locks.clone(), order.clone());
        tasks.push(contender(0, service, locks, order));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let other = other_process(&db).await;
    tasks.push(contender(1, other, locks.clone(), order.clone()));
    queued(&locks, "queued", 1).await;
    keep_passing(&locks, "queued").await;
    assert!(first.release().await.unwrap());
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().await.clone();
    let other_turn = order.iter().position(|(name, ..)| *name == 1).unwrap();
    // Holder 0 and at most 8 local hand-overs, then the other process's turn.
    assert!(
        other_turn <= 8,
        "the other process came {other_turn}th: {order:?}"
    );
    assert!(
        order.windows(2).all(|w| w[1].2 > w[0].2),
        "tokens: {order:?}"
    );
    client.database(&db).drop().await.unwrap();
}

/// What a client sent to the server, counted by its command monitor.
#[derive(Default)]
struct Sent {
    writes: AtomicUsize,
    reads: AtomicUsize,
    get_mores: AtomicUsize,
    reads_answered: AtomicUsize,
}

impl Sent {
    /// Counts what a client built from `client_options` sends to `db`.
    fn count(client_options: &mut mongodb::options::ClientOptions, db: &str) -> Arc<Sent> {
        let sent = Arc::new(Sent::default());
        let (counted, db) = (sent.clone(), db.to_owned());
        let handler = move |event: CommandEvent| match event {
            CommandEvent::Started(started) if started.db == db => {
                match started.command_name.as_str() {
                    "insert" | "update" | "delete" | "findAndModify" => &counted.writes,
                    "find" => &counted.reads,
                    "getMore" => &counted.get_mores,
                    _ => return,
                }
                .fetch_add(1, Ordering::SeqCst);
            }
            CommandEvent::Succeeded(done) if done.command_name == "find" => {
                counted.reads_answered.fetch_add(1, Ordering::SeqCst);
            }
            CommandEvent::Failed(done) if done.command_name == "find" => {
                counted.reads_answered.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        };
        client_options.command_event_handler = Some(EventHandler::callback(handler));
        sent
    }

    /// Waits until `n` reads have been answered.
    async fn reads_answered(&self, n: usize) {
        while self.reads_answered.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A service on a database of its own whose client counts what it sends there.
async fn counted_service() -> (Arc<LockService>, mongodb::Client, String, Arc<Sent>) {
    let db = database_name();
    let mut client_options = mongodb::options::ClientOptions::parse(server_url())
        .await
        .unwrap();
    let sent = Sent::count(&mut client_options, &db);
    let client = mongodb::Client::with_options(client_options).unwrap();
    let service = LockService::new(client.clone(), &db, None);
    (service, client, db, sent)
}

/// `MAX_LOCAL_HANDOVERS`: the local hand-overs in a row before other processes are
/// asked about.
const STREAK: usize = 8;

#[tokio::test(flavor = "multi_thread")]
async fn a_local_streak_with_nobody_else_queued_goes_on_without_writing() {
    let (service, client, db, sent) = counted_service().await;
    let key = LockKey::Str("streak".into());
    // One lease for all holders (a holder asking for another one writes it), long
    // enough that the keeper does not renew during the test.
    let hold = options(30_000, 60_000);
    let first = service.acquire(&key, &hold).await.unwrap();
    let tokens = Arc::new(Mutex::new(vec![first.fencing_token()]));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let (service, key, hold) = (service.clone(), key.clone(), hold.clone());
        let (tokens, sent) = (tokens.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let guard = service.acquire(&key, &hold).await.unwrap();
            let turn = {
                let mut tokens = tokens.lock().await;
                tokens.push(guard.fencing_token());
                tokens.len() - 1
            };
            // The last holder of a streak (`MAX_LOCAL_HANDOVERS`, 8) releases on the
            // answer of a read started when it got the lock, as it does when it works
            // longer than a read takes; on a slow server the test waits for the answer.
            if turn % STREAK == 0 {
                sent.reads_answered(turn / STREAK).await;
                // The driver reports the answer before it hands it to the look-ahead's
                // task: a moment more for that task to pass it on.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(guard.release().await.unwrap());
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (writes, reads) = (
        sent.writes.load(Ordering::SeqCst),
        sent.reads.load(Ordering::SeqCst),
    );
    assert!(first.release().await.unwrap());
    for task in tasks {
        task.await.unwrap();
    }
    // Holders 8, 16 and 24 each started a look-ahead read. At the two streak ends it
    // served (8 and 16) it said nobody else was queued, and the streak went on without
    // a write; holder 24 is the last, and its release is the only write, a delete. A
    // streak end that asked with `pass_on` would have written once more.
    assert_eq!(sent.reads.load(Ordering::SeqCst) - reads, 3);
    assert_eq!(sent.writes.load(Ordering::SeqCst) - writes, 1);
    let tokens = tokens.lock().await.clone();
    assert_eq!(tokens.len(), 25);
    assert!(tokens.windows(2).all(|w| w[1] > w[0]), "tokens: {tokens:?}");
    assert_eq!(
        locks(&client, &db).count_documents(doc! {}).await.unwrap(),
        0
    );
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_taking_turns_always_release_their_own_lock() {
    let (_, client, db) = service().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let service = other_process(&db).await;
        tasks.push(tokio::spawn(async move {
            let key = LockKey::Str("alternating".into());
            let mut turns = 0;
            while tokio::time::Instant::now() < until {
                let guard = service
                    .acquire(&key, &options(10_000, 5_000))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
                // A release that misreads its own hand-over as "nobody queued" and
                // then deletes finds the lock gone: `false`.
                assert!(guard.release().await.unwrap(), "after {turns} turns");
                turns += 1;
            }
            turns
        }));
    }
    for task in tasks {
        assert!(task.await.unwrap() > 0);
    }
    client.database(&db).drop().await.unwrap();
}

/// Holds `queued` in `service`, with its passing window over: its next release
/// deletes it, queue or not. Returns the guard and the document's `_id`.
/// `n` other processes of `db`, each with its change stream open already (it waited
/// once, for a key `service` held): so that they queue within a few ms, and a hold
/// they queue behind stays short.
async fn listening_processes(service: &LockService, db: &str, n: usize) -> Vec<Arc<LockService>> {
    let warm = LockKey::Str("warm".into());
    let held = service
        .acquire(&warm, &options(5_000, 5_000))
        .await
        .unwrap();
    let mut others = Vec::new();
    for _ in 0..n {
        let other = other_process(db).await;
        let waited = other.acquire(&warm, &options(30, 5_000)).await;
        assert!(matches!(waited, Err(LockError::WaitTimeout)));
        others.push(other);
    }
    assert!(held.release().await.unwrap());
    others
}

async fn held_past_its_passing_window(
    service: &LockService,
    locks: &Collection<Document>,
) -> (LockGuard, Bson) {
    let key = LockKey::Str("queued".into());
    let held = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    let over = mongodb::bson::DateTime::from_millis(0);
    let expired = doc! { "$set": { document::PASSES_UNTIL: over } };
    let found = locks
        .find_one_and_update(doc! { "id": "queued" }, expired)
        .await
        .unwrap()
        .unwrap();
    (held, found.get("_id").unwrap().clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_deleted_at_the_end_of_its_passing_window_comes_back_with_its_queue() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let others = listening_processes(&service, &db, 3).await;
    let (held, first_id) = held_past_its_passing_window(&service, &locks).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Queued quickly behind a short hold: a queue that passes within the passing
    // window (`Queue::worth_restoring`).
    for (name, other) in (1..).zip(others) {
        tasks.push(contender(name, other, locks.clone(), order.clone()));
        queued(&locks, "queued", name).await;
    }
    let mut events = locks.watch().await.unwrap();
    assert!(held.release().await.unwrap());
    for task in tasks {
        task.await.unwrap();
    }
    let order = order.lock().await.clone();
    let names: Vec<_> = order.iter().map(|(name, ..)| *name).collect();
    assert_eq!(names, vec![1, 2, 3], "the queue kept its order");
    assert!(order.iter().all(|(_, id, _)| id == &first_id), "{order:?}");
    assert!(
        order.windows(2).all(|w| w[1].2 > w[0].2),
        "tokens: {order:?}"
    );
    // It was deleted (others could insert), then inserted again under its `_id`.
    let (first, second) = (events.next().await, events.next().await);
    let kinds = [first, second].map(|e| e.unwrap().unwrap().operation_type);
    assert_eq!(kinds, [OperationType::Delete, OperationType::Insert]);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_that_gives_up_while_its_lock_is_away_leaves_the_restored_queue() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("queued".into());
    let mut others = listening_processes(&service, &db, 2).await;
    let (held, first_id) = held_past_its_passing_window(&service, &locks).await;
    let next = others.remove(0);
    let waiting = tokio::spawn({
        let key = key.clone();
        async move { next.acquire(&key, &options(5_000, 5_000)).await }
    });
    queued(&locks, "queued", 1).await;
    let leaver = others.remove(0);
    let leaving = options(5_000, 5_000);
    let cancel = leaving.cancel.clone();
    let left = tokio::spawn(async move { leaver.acquire(&key, &leaving).await });
    queued(&locks, "queued", 2).await;
    assert!(held.release().await.unwrap());
    // It gives up between the deletion and the restore.
    cancel.cancel();
    assert!(matches!(left.await.unwrap(), Err(LockError::Aborted)));
    let next = waiting.await.unwrap().unwrap();
    let restored = locks
        .find_one(doc! { "id": "queued" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(restored.get("_id"), Some(&first_id), "restored");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(next.release().await.unwrap());
    // Nobody waits any more: the lock is deleted, not handed to the leaver's ticket.
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_passed_on_for_long_is_deleted_once_so_others_can_insert() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let (held, first_id) = held_past_its_passing_window(&service, &locks).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let task = contender(1, other_process(&db).await, locks.clone(), order.clone());
    queued(&locks, "queued", 1).await;
    // A process of the original class, polling: it gets the key between the deletion
    // and the restore.
    let foreign = tokio::spawn({
        let locks = locks.clone();
        async move {
            let original = doc! { "id": "queued", "locked_at": 1.0 };
            loop {
                if let Ok(inserted) = locks.insert_one(original.clone()).await {
                    return inserted.inserted_id;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    assert!(held.release().await.unwrap());
    let foreign_id = foreign.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(order.lock().await.is_empty(), "the original's lock stands");
    locks.delete_one(doc! { "_id": &foreign_id }).await.unwrap();
    task.await.unwrap();
    // The waiter queued again and inserted a new document.
    let (_, id, _) = order.lock().await[0].clone();
    assert!(id != first_id && id != foreign_id, "{id}");
    client.database(&db).drop().await.unwrap();
}

/// Two processes, `a` and `b`, take turns on `key` until `a` has come back quickly
/// after passing the lock to `b` and passes it to `b` again: `a`'s release then holds
/// a place in the queue for `a`'s next caller. Returns `b`'s guard, with `a`'s place
/// queued behind it.
async fn handed_on_with_a_place(
    a: &Arc<LockService>,
    b: &Arc<LockService>,
    locks: &Collection<Document>,
    name: &str,
    hold: &AcquireOptions,
) -> LockGuard {
    let key = &LockKey::Str(name.into());
    let acquire = |service: &Arc<LockService>| {
        let (service, key, hold) = (service.clone(), key.clone(), hold.clone());
        tokio::spawn(async move { service.acquire(&key, &hold).await.unwrap() })
    };
    let first = a.acquire(key, hold).await.unwrap();
    keep_passing(locks, name).await;
    let b_waits = acquire(b);
    queued(locks, name, 1).await;
    assert!(first.release().await.unwrap());
    let a_waits = acquire(a);
    queued(locks, name, 1).await;
    assert!(b_waits.await.unwrap().release().await.unwrap());
    let second = a_waits.await.unwrap();
    let b_waits = acquire(b);
    queued(locks, name, 1).await;
    // `a` came back within the window after its first hand-over: this release
    // queues it again in the same write.
    assert!(second.release().await.unwrap());
    assert_eq!(tickets(locks, name).await, 1, "a's place behind b");
    b_waits.await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_that_comes_back_at_once_takes_its_place_without_writing() {
    let (a, client, db, sent) = counted_service().await;
    let b = other_process(&db).await;
    let locks = locks(&client, &db);
    let (key, hold) = (LockKey::Str("rejoin".into()), options(5_000, 30_000));
    let b_holds = handed_on_with_a_place(&a, &b, &locks, "rejoin", &hold).await;
    let writes = sent.writes.load(Ordering::SeqCst);
    let a_waits = {
        let (a, key, hold) = (a.clone(), key.clone(), hold.clone());
        tokio::spawn(async move { a.acquire(&key, &hold).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b_token = b_holds.fencing_token();
    assert!(b_holds.release().await.unwrap());
    let a_holds = a_waits.await.unwrap();
    // Waiting in the place its release took, and taking the lock from the change
    // stream's event: no write of `a` since. Joining the queue would have been one.
    assert_eq!(sent.writes.load(Ordering::SeqCst), writes);
    assert!(a_holds.fencing_token() > b_token);
    assert!(a_holds.release().await.unwrap());
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_place_that_no_caller_takes_is_given_up() {
    let (a, client, db) = service().await;
    let b = other_process(&db).await;
    let locks = locks(&client, &db);
    let hold = options(5_000, 30_000);
    let b_holds = handed_on_with_a_place(&a, &b, &locks, "rejoin", &hold).await;
    // `a` does not come back (`REJOIN_WINDOW`, 50 ms).
    queued(&locks, "rejoin", 0).await;
    assert!(b_holds.release().await.unwrap());
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_that_reaches_a_place_no_caller_took_goes_on_at_once() {
    let (a, client, db) = service().await;
    let b = other_process(&db).await;
    let locks = locks(&client, &db);
    let (key, hold) = (LockKey::Str("rejoin".into()), options(5_000, 30_000));
    let b_holds = handed_on_with_a_place(&a, &b, &locks, "rejoin", &hold).await;
    // Passed on to `a`'s place before `a`'s window ends, with nobody there to take it:
    // the lock must not wait out its 30 s lease.
    assert!(b_holds.release().await.unwrap());
    let c = other_process(&db).await;
    let started = std::time::Instant::now();
    let c_holds = c.acquire(&key, &options(3_000, 30_000)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(c_holds.release().await.unwrap());
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn close_gives_up_a_reserved_place_before_it_returns() {
    let (_, client, db) = service().await;
    let (a, b) = (other_process(&db).await, other_process(&db).await);
    let locks = locks(&client, &db);
    let hold = options(5_000, 30_000);
    let b_holds = handed_on_with_a_place(&a, &b, &locks, "rejoin", &hold).await;
    a.close().await;
    assert_eq!(tickets(&locks, "rejoin").await, 0);
    assert!(b_holds.release().await.unwrap());
    assert_eq!(locks.count_documents(doc! {}).await.unwrap(), 0);
    client.database(&db).drop().await.unwrap();
}

/// Waits for `key` behind a holder of another process, which releases after `hold`;
/// `ahead` more processes queue first and hold 20 ms each. Returns the getMores
/// `waiter`'s client sent in the first 150 ms of its wait.
async fn wait_behind(
    waiter: &Arc<LockService>,
    sent: &Sent,
    locks: &Collection<Document>,
    db: &str,
    (ahead, hold): (usize, Duration),
) -> usize {
    let key = LockKey::Str("far".into());
    let held = other_process(db)
        .await
        .acquire(&key, &options(5_000, 30_000))
        .await;
    keep_passing(locks, "far").await;
    let mut before = Vec::new();
    for n in 1..=ahead {
        let (other, key) = (other_process(db).await, key.clone());
        before.push(tokio::spawn(async move {
            let guard = other.acquire(&key, &options(5_000, 30_000)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert!(guard.release().await.unwrap());
        }));
        queued(locks, "far", n).await;
    }
    let get_mores = sent.get_mores.load(Ordering::SeqCst);
    let waits = {
        let (waiter, key) = (waiter.clone(), key.clone());
        tokio::spawn(async move { waiter.acquire(&key, &options(5_000, 30_000)).await })
    };
    queued(locks, "far", ahead + 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let asked = sent.get_mores.load(Ordering::SeqCst) - get_mores;
    tokio::time::sleep(hold.saturating_sub(Duration::from_millis(150))).await;
    assert!(held.unwrap().release().await.unwrap());
    for other in before {
        other.await.unwrap();
    }
    assert!(waits.await.unwrap().unwrap().release().await.unwrap());
    asked
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_far_back_asks_the_server_nothing_until_its_turn_nears() {
    let (waiter, client, db, sent) = counted_service().await;
    let locks = locks(&client, &db);
    let hold = Duration::from_millis(200);
    // The first wait opens the change stream, which then listens at once: nothing of
    // the pace is known yet, and the second wait teaches it (about 100 ms a place).
    assert!(wait_behind(&waiter, &sent, &locks, &db, (0, hold)).await > 0);
    assert!(wait_behind(&waiter, &sent, &locks, &db, (0, hold)).await > 0);
    // Six places at 100 ms: its turn cannot come for about 250 ms (`MAX_DEFERRAL`).
    assert_eq!(wait_behind(&waiter, &sent, &locks, &db, (5, hold)).await, 0);
    client.database(&db).drop().await.unwrap();
}
