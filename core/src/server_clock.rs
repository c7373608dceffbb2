//! The server's clock, as seen from here, with a bound on the error of what we see.
//!
//! Lease expiry is judged on the MongoDB server's clock so that client machines whose
//! clocks disagree still agree on when a lease has passed. A sample is the server's
//! `hello.localTime` (whole milliseconds) taken at some moment between sending `hello`
//! and reading the reply, so at the moment of the reply the server's time lies within
//! `[localTime, localTime + 1 ms + round trip]`. Between samples the estimate runs on
//! this process's *monotonic* clock, never its wall clock, so an NTP step of the local
//! wall clock changes nothing; the only error that grows between samples is the rate
//! difference of the two clocks, bounded by `MAX_DRIFT`.
//!
//! Every reading is an interval (`ServerTime`): writers of a lease use its upper end
//! (the lease surely ends no earlier than they meant), takers its lower end (the lease
//! has surely passed), so the error of both estimates is covered, not guessed at.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, DateTime};
use mongodb::Database;
use tokio::time::Instant;

use crate::error::Result;

/// Assumed bound on how much any two clocks involved (ours, the server's, another
/// client's) may differ in rate: 1000 ppm, ten times what ordinary quartz drifts.
pub const MAX_DRIFT: f64 = 1e-3;
/// A sample this old is refreshed in the background, so that drift adds little
/// (`REFRESH_AFTER * MAX_DRIFT`, 10 ms) to the error; the old sample, still correct
/// with its wider interval, serves meanwhile, so renewals never wait for a refresh.
const REFRESH_AFTER: Duration = Duration::from_secs(10);
/// A sample this old is not used at all: the caller waits for a new one.
const MAX_AGE: Duration = Duration::from_secs(120);
/// A sample whose round trip took longer than this is retried (up to `SAMPLES`
/// times in all) and the tightest one kept; a slow one is still used, with its width.
const SLOW_SAMPLE: Duration = Duration::from_millis(20);
const SAMPLES: usize = 3;

/// The server's time at one moment, known to lie in `[earliest, latest]` (ms since
/// the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTime {
    pub earliest: i64,
    pub latest: i64,
}

impl ServerTime {
    pub fn earliest(&self) -> DateTime {
        DateTime::from_millis(self.earliest)
    }
}

/// One measurement: at monotonic instant `at`, the server's time was in
/// `[server_ms, server_ms + width_ms]`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    server_ms: i64,
    width_ms: i64,
}

impl Sample {
    fn from_reply(sent: Instant, received: Instant, local_time: i64) -> Self {
        let trip = received.saturating_duration_since(sent);
        Sample {
            at: received,
            server_ms: local_time,
            width_ms: 1 + ceil_millis(trip),
        }
    }

    /// The server's time at `now`, widened by the drift allowed since the sample, and
    /// by the part of a millisecond the elapsed time is rounded by: down for the
    /// earliest, up for the latest.
    fn at(&self, now: Instant) -> ServerTime {
        let elapsed = now.saturating_duration_since(self.at);
        let drift = ceil_millis(elapsed.mul_f64(MAX_DRIFT));
        ServerTime {
            earliest: self.server_ms + elapsed.as_millis() as i64 - drift,
            latest: self.server_ms + self.width_ms + ceil_millis(elapsed) + drift,
        }
    }
}

fn ceil_millis(d: Duration) -> i64 {
    d.as_micros().div_ceil(1000) as i64
}

#[derive(Default)]
pub struct ServerClock {
    sample: Mutex<Option<Sample>>,
    refreshing: AtomicBool,
}

impl ServerClock {
    /// The server's current time, measuring first when there is no usable sample.
    pub async fn now(self: &Arc<Self>, db: &Database) -> Result<ServerTime> {
        let cached = *self.sample.lock().unwrap_or_else(|e| e.into_inner());
        let sample = match cached {
            Some(sample) if sample.at.elapsed() < REFRESH_AFTER => sample,
            Some(sample) if sample.at.elapsed() < MAX_AGE => {
                self.refresh_in_background(db);
                sample
            }
            _ => self.measure(db).await?,
        };
        Ok(sample.at(Instant::now()))
    }

    fn refresh_in_background(self: &Arc<Self>, db: &Database) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (clock, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            // A failure leaves the old sample, and the next reading tries again.
            let _ = clock.measure(&db).await;
            clock.refreshing.store(false, Ordering::Release);
        });
    }

    async fn measure(&self, db: &Database) -> Result<Sample> {
        let mut best: Option<Sample> = None;
        for _ in 0..SAMPLES {
            let sent = Instant::now();
            let reply = db.run_command(doc! { "hello": 1 }).await?;
            let received = Instant::now();
            let Ok(local_time) = reply.get_datetime("localTime") else {
                // A server that does not tell its time: our own wall clock is all we have.
                return Ok(self.keep(Sample::from_reply(sent, received, wall_millis())));
            };
            let sample = Sample::from_reply(sent, received, local_time.timestamp_millis());
            if best.is_none_or(|b| sample.width_ms < b.width_ms) {
                best = Some(sample);
            }
            if received - sent <= SLOW_SAMPLE {
                break;
            }
        }
        Ok(self.keep(best.expect("at least one sample was taken")))
    }

    fn keep(&self, sample: Sample) -> Sample {
        *self.sample.lock().unwrap_or_else(|e| e.into_inner()) = Some(sample);
        sample
    }
}

fn wall_millis() -> i64 {
    DateTime::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_interval_covers_the_round_trip_and_grows_with_drift_only() {
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(8)).await;
        let sample = Sample::from_reply(sent, Instant::now(), 1_000_000);
        let now = sample.at(Instant::now());
        assert_eq!((now.earliest, now.latest), (1_000_000, 1_000_009));
        tokio::time::advance(Duration::from_secs(10)).await;
        let later = sample.at(Instant::now());
        assert_eq!(later.earliest, 1_000_000 + 10_000 - 10);
        assert_eq!(later.latest, 1_000_009 + 10_000 + 10);
    }

    #[tokio::test(start_paused = true)]
    async fn the_estimate_follows_the_monotonic_clock_not_the_wall_clock() {
        // Paused time moves only the monotonic clock: the estimate moves with it, by
        // exactly the elapsed time, whatever the wall clock does meanwhile.
        let sample = Sample::from_reply(Instant::now(), Instant::now(), 5_000);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        let now = sample.at(Instant::now());
        assert_eq!(now.earliest, 5_000 + 1_500 - 2);
        assert_eq!(now.latest, 5_000 + 1 + 1_500 + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_of_a_millisecond_widens_the_interval_both_ways() {
        let sample = Sample::from_reply(Instant::now(), Instant::now(), 5_000);
        tokio::time::advance(Duration::from_micros(2_400)).await;
        let now = sample.at(Instant::now());
        assert_eq!(
            (now.earliest, now.latest),
            (5_000 + 2 - 1, 5_000 + 1 + 3 + 1)
        );
    }
}
