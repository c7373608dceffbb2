//! The core against a real server: `MONGODB_URL` (the test scripts start one).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;
use mongodb_resource_lock_core::{LockError, LockKey, ResourceId};

mod common;
use common::{locks, options, other_process, service};

#[tokio::test(flavor = "multi_thread")]
async fn creates_the_three_indexes_before_the_first_lock() {
    let (service, client, db) = service().await;
    service.lock(&LockKey::Str("a".into()), None).await.unwrap();
    let names: Vec<String> = locks(&client, &db).list_index_names().await.unwrap();
    let mut names = names;
    names.sort();
    assert_eq!(names, ["_id_", "id_1", "locked_at_1"]);
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_lock_is_a_duplicate_key_and_unlock_frees_it() {
    let (service, client, db) = service().await;
    let key = LockKey::from_ids(&[ResourceId::Num(123.0)]).unwrap();
    service.lock(&key, None).await.unwrap();
    match service.lock(&LockKey::Num(123.0), None).await {
        Err(LockError::DuplicateKey {
            message, key_value, ..
        }) => {
            assert!(message.contains("duplicate key"), "{message}");
            assert_eq!(*key_value, doc! { "id": 123 });
        }
        other => panic!("expected a duplicate key, got {other:?}"),
    }
    service
        .unlock(&key, &[ResourceId::Num(123.0)])
        .await
        .unwrap();
    let again = service.unlock(&key, &[ResourceId::Num(123.0)]).await;
    assert_eq!(
        again.unwrap_err().to_string(),
        "Was not able to delete 123."
    );
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_exclude_each_other_and_all_get_a_turn() {
    let (_, client, db) = service().await;
    let inside = Arc::new(AtomicUsize::new(0));
    let turns = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // Each contender is a process of its own: no shared local queue keeps them apart,
    // only the unique index and the owner-matched release do.
    for _ in 0..6 {
        let service = other_process(&db).await;
        let (inside, turns) = (inside.clone(), turns.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guard = service
                    .acquire(&LockKey::Str("shared".into()), &options(20_000, 5_000))
                    .await
                    .unwrap();
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                turns.fetch_add(1, Ordering::SeqCst);
                assert!(guard.release().await.unwrap());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(turns.load(Ordering::SeqCst), 18);
    // A last release may have queued its process again for a turn that never comes;
    // that place goes within moments, long before the 5 s lease would end.
    let locks = locks(&client, &db);
    let since = std::time::Instant::now();
    while locks.count_documents(doc! {}).await.unwrap() > 0 {
        assert!(
            since.elapsed() < Duration::from_secs(3),
            "no lock may stay behind"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn fencing_tokens_increase_with_every_acquisition() {
    let (service, client, db) = service().await;
    let key = LockKey::Str("fenced".into());
    let mut last = 0;
    for _ in 0..5 {
        let guard = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
        assert!(guard.fencing_token() > last);
        last = guard.fencing_token();
        guard.release().await.unwrap();
    }
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_taken_over_and_its_holder_told() {
    let (service, client, db) = service().await;
    let key = LockKey::Str("crashed".into());
    // A holder whose work outlives its lockTimeout (counted from the start of the
    // work) and never releases: its lease is no longer renewed and lets the rival in.
    let first = service.acquire(&key, &options(1_000, 1_000)).await.unwrap();
    assert!(first.gate().enter());
    let started = std::time::Instant::now();
    // The taker is another process: no local queue orders it after the first holder,
    // so only the lease stored in the database keeps it out for 1 s.
    let rival = other_process(&db).await;
    let patient = options(5_000, 5_000);
    // Timed when the rival gets it, not when the join ends (that waits for `lost`).
    let second = async {
        let second = rival.acquire(&key, &patient).await;
        (second, started.elapsed())
    };
    let lost = first.lost();
    let ((second, took), reason) = tokio::join!(second, lost);
    assert!(matches!(reason, LockError::LockTimeout));
    let second = second.unwrap();
    assert!(
        took >= Duration::from_millis(1_000),
        "taken over after {took:?}, before the 1 s lease had passed"
    );
    assert!(second.fencing_token() > first.fencing_token());
    // The first holder's release must not remove the second's lock.
    assert!(!first.release().await.unwrap());
    assert!(second.release().await.unwrap());
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lock_without_lease_is_never_taken_over() {
    let (service, client, db) = service().await;
    let key = LockKey::Str("manual".into());
    service.lock(&key, None).await.unwrap();
    let waited = service.acquire(&key, &options(400, 1_000)).await;
    assert!(matches!(waited, Err(LockError::WaitTimeout)));
    let held: Document = locks(&client, &db)
        .find_one(doc! { "id": "manual" })
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(held.get("locked_at"), Some(Bson::Double(_))));
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_wait_returns_aborted() {
    let (service, client, db) = service().await;
    let key = LockKey::Str("cancelled".into());
    service.lock(&key, None).await.unwrap();
    let opts = options(10_000, 1_000);
    let cancel = opts.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    assert!(matches!(
        service.acquire(&key, &opts).await,
        Err(LockError::Aborted)
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_dropped_while_its_write_is_in_flight_leaves_no_lock_behind() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    service.ensure_indexes().await.unwrap();
    // Dropped after 0 to 4 ms: some drops come while the insert is on its way, which
    // then takes a lock (lease 30 s) that nobody will hold or release.
    for step in 0..40u64 {
        let (key, opts) = (
            LockKey::Str(format!("dropped-{step}")),
            options(10_000, 30_000),
        );
        let wait = service.acquire(&key, &opts);
        if let Ok(Ok(guard)) = tokio::time::timeout(Duration::from_micros(step * 100), wait).await {
            guard.release().await.unwrap();
        }
    }
    let mut left = u64::MAX;
    for _ in 0..100 {
        left = locks.count_documents(doc! {}).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(left, 0, "locks of dropped waits were left for their lease");
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn close_refuses_waiters_and_leaves_no_lock_behind() {
    let (service, client, db) = service().await;
    let key = LockKey::Str("closing".into());
    let holder = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    let waiter = {
        let (service, key) = (service.clone(), key.clone());
        tokio::spawn(async move {
            service
                .acquire(&key, &options(10_000, 5_000))
                .await
                .map(|_| ())
        })
    };
    let released = tokio::spawn(async move {
        let why = holder.lost().await;
        (why, holder.release().await)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.close().await;
    let (why, _) = released.await.unwrap();
    assert!(matches!(why, LockError::Closed));
    assert!(matches!(waiter.await.unwrap(), Err(LockError::Closed)));
    drop(client);
    let client = Client::with_uri_str(std::env::var("MONGODB_URL").unwrap())
        .await
        .unwrap();
    let left = locks(&client, &db).count_documents(doc! {}).await.unwrap();
    assert_eq!(
        left, 0,
        "close() released the held lock and let no waiter in"
    );
    client.database(&db).drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn local_hand_overs_keep_the_document_and_give_every_holder_a_new_token() {
    let (service, client, db) = service().await;
    let locks = locks(&client, &db);
    let key = LockKey::Str("handed".into());
    // Holder 0 is inside before the others queue up behind it in this process, so every
    // release finds a local waiter and may hand the lock over without deleting it.
    let first = service.acquire(&key, &options(5_000, 5_000)).await.unwrap();
    let holds = Arc::new(tokio::sync::Mutex::new(Vec::<(Bson, u128)>::new()));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (service, key, locks, holds) =
            (service.clone(), key.clone(), locks.clone(), holds.clone());
        tasks.push(tokio::spawn(async move {
            let guard = service
                .acquire(&key, &options(30_000, 5_000))
                .await
                .unwrap();
            let held = locks
                .find_one(doc! { "id": "handed" })
                .await
                .unwrap()
                .unwrap();
            holds
                .lock()
                .await
                .push((held.get("_id").unwrap().clone(), guard.fencing_token()));
            assert!(guard.release().await.unwrap());
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_doc = locks
        .find_one(doc! { "id": "handed" })
        .await
        .unwrap()
        .unwrap();
    let mut all = vec![(first_doc.get("_id").unwrap().clone(), first.fencing_token())];
    assert!(first.release().await.unwrap());
    for t in tasks {
        t.await.unwrap();
    }
    all.extend(holds.lock().await.iter().cloned());
    assert_eq!(all.len(), 21);
    // Every acquisition, hand-overs included, gets a strictly greater token.
    for pair in all.windows(2) {
        assert!(
            pair[1].1 > pair[0].1,
            "fencing tokens {} then {}",
            pair[0].1,
            pair[1].1
        );
    }
    // No other process waits, so the lock stays in this process from the first holder
    // to the last: one document, never deleted and inserted again.
    assert!(all.iter().all(|(id, _)| *id == all[0].0), "{all:?}");
    let left = locks.count_documents(doc! {}).await.unwrap();
    assert_eq!(left, 0, "no lock may stay behind");
    client.database(&db).drop().await.unwrap();
}

/// The fencing tokens of a run of holds, in order, and the longest streak of holders
/// under one database token that another database token followed.
#[derive(Default)]
struct Holds {
    tokens: Vec<u128>,
    current: usize,
    longest_ended: usize,
}

impl Holds {
    fn push(&mut self, token: u128) {
        match self.tokens.last() {
            Some(last) if last >> 16 == token >> 16 => self.current += 1,
            _ => {
                self.longest_ended = self.longest_ended.max(self.current);
                self.current = 1;
            }
        }
        self.tokens.push(token);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hold_goes_back_to_the_database_before_its_local_sequence_runs_out() {
    let (service, client, db) = service().await;
    let key = LockKey::Str("sequence".into());
    // The 16-bit local sequence allows this many holders under one database token.
    const SEQUENCE: usize = (1 << 16) - 1;
    let holds = Arc::new(std::sync::Mutex::new(Holds::default()));
    let mut tasks = Vec::new();
    // Enough callers that a release nearly always finds a local waiter; a release that
    // finds none ends the hold early, and the callers go on until one hold is full.
    for _ in 0..8 {
        let (service, key, holds) = (service.clone(), key.clone(), holds.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let guard = service
                    .acquire(&key, &options(30_000, 30_000))
                    .await
                    .unwrap();
                let done = {
                    let mut holds = holds.lock().unwrap();
                    holds.push(guard.fencing_token());
                    holds.longest_ended >= SEQUENCE || holds.tokens.len() > 4 * SEQUENCE
                };
                assert!(guard.release().await.unwrap());
                if done {
                    break;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let holds = std::mem::take(&mut *holds.lock().unwrap());
    let tokens = &holds.tokens;
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "tokens not increasing"
    );
    // A hold used up its sequence, and the lock was then taken again in the database
    // with a larger token; no hold went beyond it.
    assert_eq!(holds.longest_ended, SEQUENCE);
    assert!(holds.current <= SEQUENCE);
    client.database(&db).drop().await.unwrap();
}
