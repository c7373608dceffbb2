//! The queue's writes (`document.rs`) against a plain FIFO model, on a real server
//! (`MONGODB_URL`): random joins, hand-overs with and without the releaser joining
//! again, leaves, claims and take-overs. After each write the lock's owner and its
//! waiting tickets must be the model's, and the queue must be empty exactly when
//! nobody waits, which the release's delete relies on.

use std::collections::VecDeque;

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ReturnDocument;
use mongodb::Collection;
use mongodb_resource_lock_core::{document, LockKey};

use crate::common::{database_name, server_url};

/// A small deterministic generator (xorshift), so that a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides as u64) as usize
    }
}

/// The lock as the model sees it: its owner and the tickets that wait, in order.
#[derive(Debug, Default, PartialEq)]
struct Model {
    owner: String,
    waiting: VecDeque<String>,
}

struct Run {
    locks: Collection<Document>,
    model: Model,
    dice: Dice,
    ids: usize,
}

impl Run {
    fn new_id(&mut self) -> String {
        self.ids += 1;
        format!("t{}", self.ids)
    }

    async fn found(&self) -> Document {
        let found = self.locks.find_one(doc! { "id": "k" }).await.unwrap();
        found.expect("the lock is there")
    }

    /// A new ticket, or one that may be in the queue already: the holder's, or a served
    /// one whose turn came to nothing.
    async fn join(&mut self) {
        let found = self.found().await;
        let (_, queue, served) = parts(&found);
        let again = queue[..served].iter().find(|t| **t != self.model.owner);
        let id = match (self.dice.roll(4), again) {
            (0, _) => self.model.owner.clone(),
            (1, Some(again)) => again.clone(),
            _ => self.new_id(),
        };
        let far = far();
        let join = document::take_or_enqueue(&id, far, far);
        let update = self.locks.find_one_and_update(doc! { "id": "k" }, join);
        update.upsert(true).await.unwrap();
        if id != self.model.owner && !self.model.waiting.contains(&id) {
            self.model.waiting.push_back(id);
        }
    }

    async fn hand_over(&mut self) {
        let rejoin = (self.dice.roll(2) == 0).then(|| self.new_id());
        let pass = document::hand_over(far(), DateTime::now(), rejoin.as_deref());
        let filter = doc! { "id": "k", "owner": &self.model.owner };
        let update = self.locks.find_one_and_update(filter, pass);
        update.return_document(ReturnDocument::After).await.unwrap();
        if let Some(next) = self.model.waiting.pop_front() {
            self.model.owner = next;
            self.model.waiting.extend(rejoin);
        }
    }

    async fn leave(&mut self) {
        if self.model.waiting.is_empty() {
            return;
        }
        let at = self.dice.roll(self.model.waiting.len());
        let id = self.model.waiting.remove(at).unwrap();
        let filter = doc! { "id": "k", "$expr": document::waits(&id) };
        let leave = vec![doc! { "$set": document::leave_queue(&id) }];
        let left = self.locks.update_one(filter, leave).await.unwrap();
        assert_eq!(left.matched_count, 1, "{id} was waiting");
    }

    async fn claim(&mut self) {
        let claim = document::claim(&self.model.owner, far());
        let filter = doc! { "id": "k", "owner": &self.model.owner };
        let claimed = self.locks.update_one(filter, claim).await.unwrap();
        assert_eq!(claimed.matched_count, 1);
    }

    /// By a waiter, or by a process that never queued.
    async fn take_over(&mut self) {
        let id = match self.model.waiting.len() {
            0 => self.new_id(),
            n => match self.dice.roll(2 * n) {
                at if at < n => self.model.waiting[at].clone(),
                _ => self.new_id(),
            },
        };
        let take = document::take_over(&id, Some(far()));
        let taken = self
            .locks
            .update_one(doc! { "id": "k" }, take)
            .await
            .unwrap();
        assert_eq!(taken.matched_count, 1);
        self.model.waiting.retain(|t| *t != id);
        self.model.owner = id;
    }

    async fn check(&self, step: &str) {
        let found = self.found().await;
        let (owner, queue, served) = parts(&found);
        let seen = Model {
            owner,
            waiting: queue[served..].iter().cloned().collect(),
        };
        assert_eq!(seen, self.model, "after {step}: {found:?}");
        assert_eq!(queue.is_empty(), seen.waiting.is_empty(), "{found:?}");
        // More wait than were served: the document stays at most twice the waiting.
        assert!(served == 0 || queue.len() > 2 * served, "{found:?}");
    }
}

/// The owner, the whole queue and the count of served tickets of a lock document.
fn parts(found: &Document) -> (String, Vec<String>, usize) {
    let owner = found.get_str(document::OWNER).unwrap().to_owned();
    let tickets = |queue: &Vec<Bson>| {
        queue
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    };
    let queue = found
        .get_array(document::QUEUE)
        .map_or_else(|_| Vec::new(), tickets);
    let served = match found.get(document::SERVED) {
        Some(Bson::Int32(n)) => *n as usize,
        None => 0,
        Some(other) => panic!("served is {other:?}"),
    };
    (owner, queue, served)
}

/// A lease and a passing time that do not end during the test.
fn far() -> DateTime {
    DateTime::from_millis(DateTime::now().timestamp_millis() + 600_000)
}

#[tokio::test]
async fn the_queue_serves_its_tickets_as_a_fifo_would() {
    let client = mongodb::Client::with_uri_str(server_url()).await.unwrap();
    let db = database_name();
    let locks = super::common::locks(&client, &db);
    let mut run = Run {
        locks,
        model: Model::default(),
        dice: Dice(0x1234_5678),
        ids: 0,
    };
    for _ in 0..20 {
        run.locks.delete_many(doc! {}).await.unwrap();
        let key = LockKey::Str("k".into());
        let lock = document::new_lock(&key, "holder", Some((far(), far())));
        run.locks.insert_one(lock).await.unwrap();
        run.model = Model {
            owner: "holder".into(),
            waiting: VecDeque::new(),
        };
        for _ in 0..60 {
            let step = run.dice.roll(6);
            match step {
                0 | 1 => run.join().await,
                2 => run.hand_over().await,
                3 => run.leave().await,
                4 => run.claim().await,
                _ => run.take_over().await,
            }
            let steps = ["join", "join", "hand-over", "leave", "claim", "take-over"];
            run.check(steps[step]).await;
        }
    }
    client.database(&db).drop().await.unwrap();
}
