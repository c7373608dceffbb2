//! The server's clock, as seen from here.
//!
//! Lease expiry is judged on the MongoDB server's clock so that client machines
//! whose clocks disagree still agree on when a lease has passed. `$$NOW` would say
//! it inside the server, but each test server refuses a different use of it (see
//! NODE-INTEROP.md), so the offset between our clock and the server's is measured
//! with `hello.localTime` and refreshed periodically. The error of the estimate is
//! at most half the round trip of the measurement plus drift since then; leases
//! leave a margin for it (see `lease.rs`).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mongodb::bson::{doc, DateTime};
use mongodb::Database;

use crate::error::Result;

const REFRESH_AFTER: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct ServerClock {
    /// (server minus local, in ms; when it was measured)
    offset: Mutex<Option<(i64, Instant)>>,
}

impl ServerClock {
    /// The server's current time, measuring the offset first when it is unknown or stale.
    pub async fn now(&self, db: &Database) -> Result<DateTime> {
        let cached = *self.offset.lock().unwrap_or_else(|e| e.into_inner());
        let offset = match cached {
            Some((offset, at)) if at.elapsed() < REFRESH_AFTER => offset,
            _ => self.measure(db).await?,
        };
        Ok(DateTime::from_millis(local_millis() + offset))
    }

    async fn measure(&self, db: &Database) -> Result<i64> {
        let sent = local_millis();
        let started = Instant::now();
        let reply = db.run_command(doc! { "hello": 1 }).await?;
        let half_trip = started.elapsed().as_millis() as i64 / 2;
        let offset = match reply.get_datetime("localTime") {
            Ok(server) => server.timestamp_millis() - (sent + half_trip),
            // A server that does not tell its time: trust our own clock.
            Err(_) => 0,
        };
        *self.offset.lock().unwrap_or_else(|e| e.into_inner()) = Some((offset, Instant::now()));
        Ok(offset)
    }
}

fn local_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
