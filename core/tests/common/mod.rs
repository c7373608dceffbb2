//! Helpers of the tests against a real server: `MONGODB_URL` (the test scripts start one).

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::Document;
use mongodb::{Client, Collection};
use mongodb_resource_lock_core::{document, AcquireOptions, HoldOptions, LockService};
use tokio_util::sync::CancellationToken;

pub async fn service() -> (Arc<LockService>, Client, String) {
    let client = Client::with_uri_str(server_url()).await.unwrap();
    let db = database_name();
    (LockService::new(client.clone(), &db, None), client, db)
}

/// The lock documents of database `db`.
pub fn locks(client: &Client, db: &str) -> Collection<Document> {
    client.database(db).collection(document::LOCKS_COLLECTION)
}

/// The test server (`MONGODB_URL`).
pub fn server_url() -> String {
    std::env::var("MONGODB_URL").expect("MONGODB_URL must point at a test server")
}

/// A database of its own for one test.
pub fn database_name() -> String {
    format!("core_{}", uuid_like())
}

/// Another service on the same database with a client of its own: it contends as
/// another process does (own connection, own local queue, own change stream), so
/// only the database keeps it and the first service apart.
pub async fn other_process(db: &str) -> Arc<LockService> {
    let client = Client::with_uri_str(server_url()).await.unwrap();
    LockService::new(client, db, None)
}

fn uuid_like() -> String {
    format!("{:x}", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    h.finish()
}

pub fn options(wait_ms: u64, lock_ms: u64) -> AcquireOptions {
    AcquireOptions {
        wait_timeout: Duration::from_millis(wait_ms),
        retry_interval: Duration::from_millis(125),
        hold: HoldOptions {
            lock_timeout: Some(Duration::from_millis(lock_ms)),
            lease: Duration::from_millis(lock_ms),
        },
        cancel: CancellationToken::new(),
    }
}
