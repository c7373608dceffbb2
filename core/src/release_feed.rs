//! Wakes waiters when a lock document is deleted, instead of on a timer.
//!
//! One change stream per `LockService` (so per client), shared by all its waiters.
//! A waiter subscribes before its insert attempt, so a release that happens between
//! the failed insert and the wait is never missed. Where the deployment offers no
//! change streams (a standalone server) the feed reports itself unavailable and
//! waiters fall back to polling with jittered exponential backoff.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Collection;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedState {
    Starting,
    Live,
    Unavailable,
}

pub struct ReleaseFeed {
    released: broadcast::Sender<Bson>,
    state: watch::Sender<FeedState>,
    started: Mutex<bool>,
    stop: CancellationToken,
}

/// A waiter's view of the feed.
pub struct Subscription {
    released: broadcast::Receiver<Bson>,
    pub live: bool,
}

impl Subscription {
    /// Resolves when the document `doc_id` is deleted (or events were lost, in which
    /// case waking once too often is the safe side).
    pub async fn released(&mut self, doc_id: &Bson) {
        if !self.live {
            return std::future::pending().await;
        }
        loop {
            match self.released.recv().await {
                Ok(id) if &id == doc_id => return,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
            }
        }
    }
}

/// How long the first start of the stream may take before waiters poll instead.
const START_WAIT: Duration = Duration::from_secs(2);
/// After a live stream broke (failover, network): reopen soon.
const REOPEN_DELAY: Duration = Duration::from_secs(1);
/// After the server refused to open one (standalone): it will not change its mind soon.
const RETRY_REFUSED_DELAY: Duration = Duration::from_secs(30);

impl ReleaseFeed {
    pub fn new(stop: CancellationToken) -> Self {
        ReleaseFeed {
            released: broadcast::channel(1024).0,
            state: watch::channel(FeedState::Starting).0,
            started: Mutex::new(false),
            stop,
        }
    }

    /// Subscribes to releases, starting the stream on first use.
    pub async fn subscribe(&self, locks: &Collection<Document>) -> Subscription {
        let released = self.released.subscribe();
        self.start_once(locks);
        let mut state = self.state.subscribe();
        let settled =
            tokio::time::timeout(START_WAIT, state.wait_for(|s| *s != FeedState::Starting)).await;
        let live = matches!(settled, Ok(Ok(s)) if *s == FeedState::Live);
        Subscription { released, live }
    }

    fn start_once(&self, locks: &Collection<Document>) {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if *started {
            return;
        }
        *started = true;
        let locks = locks.clone();
        let released = self.released.clone();
        let state = self.state.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            stop.run_until_cancelled(follow(locks, released, state))
                .await;
        });
    }
}

async fn follow(
    locks: Collection<Document>,
    released: broadcast::Sender<Bson>,
    state: watch::Sender<FeedState>,
) {
    loop {
        let opened = locks
            .watch()
            .pipeline([doc! { "$match": { "operationType": "delete" } }])
            .await;
        match opened {
            Ok(mut stream) => {
                state.send_replace(FeedState::Live);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(event) => {
                            if let Some(id) = event.document_key.and_then(|k| k.get("_id").cloned())
                            {
                                // No receiver is fine: nobody is waiting.
                                let _ = released.send(id);
                            }
                        }
                        Err(_) => break,
                    }
                }
                state.send_replace(FeedState::Unavailable);
                tokio::time::sleep(REOPEN_DELAY).await;
            }
            Err(_) => {
                state.send_replace(FeedState::Unavailable);
                tokio::time::sleep(RETRY_REFUSED_DELAY).await;
            }
        }
    }
}
