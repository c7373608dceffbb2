//! When the release feed (`release_feed.rs`) asks the server for events: only while
//! one of its subscribers listens now.
//!
//! A stream's `getMore` waits on the server until an event matches, and a server
//! wakes every waiting `getMore` on every write to re-run its match (`secantusd-rs`
//! does, and so does `mongod`'s notifier of oplog inserts). So each process that
//! keeps one waiting costs the server work on every hand-over of every process. With
//! 32 processes queued on one key, that was a core of the server's time.
//!
//! A waiter that joins a queue, with its own write (`acquire.rs`, `take_or_enqueue`)
//! or in its process's hand-over (`rejoin.rs`), reads from that write how many
//! hand-overs come before its turn, and knows how long one took lately; it can hear
//! nothing of use before most of them have happened. So its subscription is
//! deferred: it listens from `places - 1 - √places / 2` hand-overs from now,
//! and until then, if nobody else in the process listens, the feed asks nothing
//! (the `- 1`: the hand-over to itself is one of the places, and it must hear that
//! one). Nothing is lost meanwhile: the events wait in the server's cursor and
//! arrive with the next `getMore`. A turn that comes sooner than foreseen waits, at
//! most `MAX_DEFERRAL`, for its holder to ask. That time comes out of the new
//! holder's lease, which starts with the hand-over; the holder checks what is left
//! before it trusts the event (`acquire.rs`, `handed_over`), so a late hearing costs
//! time, never exclusion.
//!
//! The time per place is learnt per key: the waits of a key whose holders take 40 ms
//! say nothing of one whose holders take 1 ms. With one average per process, such a
//! process deferred too long on the fast key, and listened almost all the time on the
//! slow one, where the fast key's pace made every wait look due (8 processes, each
//! looping on a 1 ms key and a 40 ms key: 311-336 hand-overs/s on the fast key,
//! against 383-421 without the slow loop).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// How many times `√places` places before its turn foreseen a waiter starts
/// listening: if hand-over times vary about as much as they last, `n` of them vary
/// by about `√n` of one; they vary less since a deletion no longer reshuffles the
/// queue (`store.rs`, `restore`). Measured with 32 processes on one key, 8 s runs, a
/// fresh server per round: 0.5 gave 327-376 hand-overs/s against 298-346 for 1.0,
/// ahead in each of nine rounds over three sittings: a waiter 31 places back listens
/// for its last 3.8 places instead of 6.6, and the server's CPU per hand-over was
/// 1.57-1.96 against 1.81-2.34 ms;
/// 16 processes 412-417 against 378-392; 4 processes the same. Before the restore,
/// 1.0 gave 316-320 against 294-305 for 1.5, and in another sitting 0.5 gave 232-256
/// (turns heard late) and 2.0 249-256, against 292-313 for 1.5.
const MARGIN: f64 = 0.5;
/// The longest a waiter defers listening, whatever its place.
const MAX_DEFERRAL: Duration = Duration::from_millis(250);
/// How much the latest wait counts in the time per place (a moving average): half
/// when it was faster than the average, a tenth when it was slower. A waiter that
/// defers too long stalls everyone behind it until it hears its turn; with one weight
/// for both, those stalls taught slower paces, longer deferrals and more stalls, and
/// a queue of 32 processes took seconds to reach its pace (A/B, a fresh server per
/// round, first 4 s of 12: 143-216 hand-overs/s with a weight of 1/4, 267-287 with
/// these).
const FASTER_WEIGHT: f64 = 0.5;
const SLOWER_WEIGHT: f64 = 0.1;
/// What part of its measure the first wait on a key counts: it ran with no waiter of
/// the process on that key deferred, as every waiter of a queue that just formed
/// listens, when hand-overs are slowest. Learnt whole, it made the waits after it
/// defer too long, and their late hearings kept the queue at the slow pace they
/// expected (32 processes on one key, 4 s runs: 158-227 hand-overs/s learnt whole,
/// 291-307 at half; A/B, a fresh server per round, four rounds). Too fast a pace only
/// makes waiters listen early, and the slower waits raise it again.
const FIRST_WAIT_PART: f64 = 0.5;

#[derive(Default)]
pub(crate) struct Listening {
    state: Mutex<State>,
    changed: Notify,
}

/// How long a key's pace is kept after it was last learnt: past that, its queue is
/// likely another, and the map would otherwise keep every key ever waited for. Paces
/// older than this are dropped at most once per this long, when a waiter defers or a
/// pace is learnt, so the map holds the keys waited on in the last two of these.
const PACE_KEPT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    deferred: HashMap<u64, Deferred>,
    next_id: u64,
    /// How long one hand-over before a waiter's turn took lately, per key.
    paces: HashMap<Arc<str>, Pace>,
    /// When `paces` was last rid of the paces kept too long.
    swept: Option<Instant>,
}

struct Pace {
    per_place: Duration,
    learnt_at: Instant,
}

struct Deferred {
    /// The owner id its turn is handed to.
    owner: String,
    /// The key it waits for (`LockKey::identity`), whose pace it defers by.
    key: Arc<str>,
    /// From when it listens; `None` before its place is known, and after its turn.
    from: Option<Instant>,
    /// When it took its place, and how many hand-overs were to come before its turn.
    placed: Option<(Instant, u32)>,
    /// Whether its wait measures the pace: not once it went another way (`listen_now`),
    /// as after the deletion of the lock it queued for, restored or not. When the
    /// queue was rebuilt by waiters that heard the deletion at different times, such
    /// waits taught a pace too slow: with 32 processes on one key, 266-288
    /// hand-overs/s against 294-322 without them (A/B on one fresh server).
    learns: bool,
}

/// Whether the feed is to ask the server for events now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ask {
    Now,
    /// Not before this moment (`None`: not until something changes).
    NotBefore(Option<Instant>),
}

/// A subscriber that listens only from a moment on. Dropping it removes it.
pub(crate) struct Deferral {
    id: u64,
    listening: Arc<Listening>,
}

impl Listening {
    /// A subscriber waiting for its turn as `owner` on `key`, not listening until
    /// `placed`.
    pub fn defer(self: &Arc<Self>, owner: &str, key: Arc<str>) -> Deferral {
        let mut state = self.state();
        state.sweep();
        let id = state.next_id;
        state.next_id += 1;
        let deferred = Deferred {
            owner: owner.to_owned(),
            key,
            from: None,
            placed: None,
            learns: true,
        };
        state.deferred.insert(id, deferred);
        Deferral {
            id,
            listening: self.clone(),
        }
    }

    /// Whether to ask for events, given the feed's `subscribers`: at once if any of them
    /// is not deferred, or is deferred until now; never with none (the feed decides).
    pub fn ask(&self, subscribers: usize) -> Ask {
        let state = self.state();
        if subscribers > state.deferred.len() {
            return Ask::Now;
        }
        let earliest = state.deferred.values().filter_map(|d| d.from).min();
        match earliest {
            Some(from) if from <= Instant::now() => Ask::Now,
            from => Ask::NotBefore(from),
        }
    }

    /// The feed delivered `owner`'s turn: its subscribers stop listening, and, if
    /// `learn`, the time their wait took per place is learnt.
    pub fn handed_to(&self, owner: &str, learn: bool) {
        let mut state = self.state();
        let mut waited = None;
        for deferred in state.deferred.values_mut().filter(|d| d.owner == owner) {
            deferred.from = None;
            if let Some((at, places)) = deferred.placed.take().filter(|_| learn) {
                waited = Some((deferred.key.clone(), at.elapsed() / places.max(1)));
            }
        }
        if let Some((key, latest)) = waited {
            state.learn(key, latest);
        }
        drop(state);
        self.changed.notify_one();
    }

    /// Resolves after `place`, `handed_to`, `listen_now`, the drop of a deferral, or
    /// `notify` (a new subscriber).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Tells the feed that something else changed who listens.
    pub fn notify(&self) {
        self.changed.notify_one();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// A wait on `key` took `latest` per place.
    fn learn(&mut self, key: Arc<str>, latest: Duration) {
        self.sweep();
        let per_place = match self.per_place(&key) {
            Some(before) => learnt(before, latest),
            None => latest.mul_f64(FIRST_WAIT_PART),
        };
        let pace = Pace {
            per_place,
            learnt_at: Instant::now(),
        };
        self.paces.insert(key, pace);
    }

    /// Drops the paces kept too long, if that was not done for `PACE_KEPT`.
    fn sweep(&mut self) {
        let now = Instant::now();
        if self.swept.is_none_or(|at| now - at >= PACE_KEPT) {
            self.paces
                .retain(|_, pace| now - pace.learnt_at < PACE_KEPT);
            self.swept = Some(now);
        }
    }

    /// The pace of `key`, if one was learnt and is not too old.
    fn per_place(&self, key: &str) -> Option<Duration> {
        self.paces
            .get(key)
            .filter(|pace| pace.learnt_at.elapsed() < PACE_KEPT)
            .map(|pace| pace.per_place)
    }
}

impl Deferral {
    /// Its place is known: `places` hand-overs come before its turn.
    pub fn place(&self, places: u32) {
        let mut state = self.listening.state();
        let now = Instant::now();
        let per_place = state
            .deferred
            .get(&self.id)
            .and_then(|d| state.per_place(&d.key));
        if let Some(deferred) = state.deferred.get_mut(&self.id) {
            deferred.from = Some(now + deferral(per_place, places));
            deferred.placed = deferred.learns.then_some((now, places));
        }
        drop(state);
        self.listening.changed.notify_one();
    }

    /// Listens from now, until it is placed again: its wait goes on in another way than
    /// the place foresaw (the lock it queued for was deleted, events were lost, or the
    /// turn it heard came to nothing). Neither this wait nor a later one of the same
    /// subscription is a measure of the queue any more.
    pub fn listen_now(&self) {
        let mut state = self.listening.state();
        if let Some(deferred) = state.deferred.get_mut(&self.id) {
            deferred.from = Some(Instant::now());
            deferred.placed = None;
            deferred.learns = false;
        }
        drop(state);
        self.listening.changed.notify_one();
    }

    /// Whether it listens for nothing: its turn was heard (`handed_to`), or it was
    /// never placed.
    pub fn is_done(&self) -> bool {
        let state = self.listening.state();
        state
            .deferred
            .get(&self.id)
            .is_some_and(|d| d.from.is_none())
    }

    /// Tells the feed that the subscription of this deferral exists now: it is counted
    /// among the subscribers from this moment, and `follow` may have counted before.
    pub fn subscribed(&self) {
        self.listening.changed.notify_one();
    }

    /// Another deferral for the same turn, not listening until placed.
    pub fn again(&self) -> Deferral {
        let (owner, key) = {
            let state = self.listening.state();
            let deferred = &state.deferred[&self.id];
            (deferred.owner.clone(), deferred.key.clone())
        };
        self.listening.defer(&owner, key)
    }
}

impl Drop for Deferral {
    fn drop(&mut self) {
        self.listening.state().deferred.remove(&self.id);
        self.listening.changed.notify_one();
    }
}

/// The time per place after a wait that took `latest` per place.
fn learnt(before: Duration, latest: Duration) -> Duration {
    let weight = if latest < before {
        FASTER_WEIGHT
    } else {
        SLOWER_WEIGHT
    };
    before.mul_f64(1.0 - weight) + latest.mul_f64(weight)
}

/// How long a waiter with `places` hand-overs before its turn can wait before it
/// listens, at `per_place` each: none until a wait was measured.
fn deferral(per_place: Option<Duration>, places: u32) -> Duration {
    let Some(per_place) = per_place else {
        return Duration::ZERO;
    };
    let places = f64::from(places);
    let surely_before = places - 1.0 - MARGIN * places.sqrt();
    if surely_before <= 0.0 {
        return Duration::ZERO;
    }
    per_place.mul_f64(surely_before).min(MAX_DEFERRAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn key(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    fn set_pace(listening: &Listening, per_place: Duration) {
        let learnt_at = Instant::now();
        let pace = Pace {
            per_place,
            learnt_at,
        };
        listening.state().paces.insert(key("k"), pace);
    }

    fn pace(listening: &Listening) -> Option<Duration> {
        listening.state().per_place("k")
    }

    #[test]
    fn nothing_is_deferred_before_a_wait_was_measured() {
        assert_eq!(deferral(None, 31), Duration::ZERO);
    }

    #[test]
    fn a_waiter_near_the_head_listens_at_once() {
        assert_eq!(deferral(Some(4 * MS), 1), Duration::ZERO);
        // 4 - 1 - √4 / 2 = 2 places.
        assert_eq!(deferral(Some(4 * MS), 4), 8 * MS);
    }

    #[test]
    fn a_waiter_far_back_listens_from_well_before_its_turn() {
        // 31 - 1 - √31 / 2 = 27.2 places.
        let deferred = deferral(Some(4 * MS), 31);
        assert!(deferred > 108 * MS && deferred < 109 * MS, "{deferred:?}");
    }

    #[test]
    fn no_deferral_exceeds_the_cap() {
        assert_eq!(deferral(Some(100 * MS), 1_000), MAX_DEFERRAL);
    }

    #[tokio::test]
    async fn the_feed_asks_while_any_subscriber_is_not_deferred() {
        let listening = Arc::new(Listening::default());
        let deferral = listening.defer("a", key("k"));
        assert_eq!(listening.ask(1), Ask::NotBefore(None));
        assert_eq!(listening.ask(2), Ask::Now);
        drop(deferral);
        assert_eq!(listening.ask(1), Ask::Now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_placed_waiter_is_heard_from_its_moment_until_its_turn() {
        let listening = Arc::new(Listening::default());
        set_pace(&listening, 4 * MS);
        let far = listening.defer("far", key("k"));
        far.place(31);
        let Ask::NotBefore(Some(from)) = listening.ask(1) else {
            panic!("asks at once");
        };
        assert!(from > Instant::now() + 108 * MS);
        let near = listening.defer("near", key("k"));
        near.place(1);
        assert_eq!(listening.ask(2), Ask::Now);
        listening.handed_to("near", true);
        assert_eq!(listening.ask(2), Ask::NotBefore(Some(from)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_faster_turn_teaches_more_than_a_slower_one() {
        let listening = Arc::new(Listening::default());
        let waiter = listening.defer("w", key("k"));
        waiter.place(10);
        tokio::time::advance(100 * MS).await;
        listening.handed_to("w", true);
        // The first wait counts for half its 10 ms.
        assert_eq!(pace(&listening), Some(5 * MS));
        let next = waiter.again();
        next.place(10);
        tokio::time::advance(150 * MS).await;
        listening.handed_to("w", true);
        // A slower wait counts for a tenth: 9/10 of 5 ms and 1/10 of 15 ms.
        assert_eq!(pace(&listening), Some(6 * MS));
        let last = next.again();
        last.place(10);
        tokio::time::advance(20 * MS).await;
        listening.handed_to("w", true);
        // A faster one for half: 6 ms and 2 ms.
        assert_eq!(pace(&listening), Some(4 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_went_another_way_listens_at_once_and_teaches_nothing() {
        let listening = Arc::new(Listening::default());
        set_pace(&listening, 4 * MS);
        let waiter = listening.defer("w", key("k"));
        waiter.place(31);
        assert!(matches!(listening.ask(1), Ask::NotBefore(Some(_))));
        waiter.listen_now();
        assert_eq!(listening.ask(1), Ask::Now);
        tokio::time::advance(200 * MS).await;
        listening.handed_to("w", true);
        assert_eq!(pace(&listening), Some(4 * MS));
        assert!(waiter.is_done());
        assert_eq!(listening.ask(1), Ask::NotBefore(None));
        // Placed again after that, it defers as foreseen, but its wait teaches nothing.
        waiter.place(10);
        let Ask::NotBefore(Some(from)) = listening.ask(1) else {
            panic!("listens at once");
        };
        assert_eq!(from, Instant::now() + deferral(Some(4 * MS), 10));
        tokio::time::advance(200 * MS).await;
        listening.handed_to("w", true);
        assert_eq!(pace(&listening), Some(4 * MS));
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_defers_by_its_own_pace() {
        let listening = Arc::new(Listening::default());
        let slow = listening.defer("s", key("slow"));
        slow.place(1);
        tokio::time::advance(80 * MS).await;
        listening.handed_to("s", true);
        let fast = listening.defer("f", key("fast"));
        fast.place(1);
        tokio::time::advance(2 * MS).await;
        listening.handed_to("f", true);
        let (slow, fast) = (slow.again(), fast.again());
        slow.place(5);
        fast.place(5);
        let state = listening.state();
        let from = |d: &Deferral| state.deferred[&d.id].from.expect("placed") - Instant::now();
        // Half of each first wait: 40 and 1 ms per place, for 5 - 1 - √5 / 2 places.
        assert_eq!(from(&slow), deferral(Some(40 * MS), 5));
        assert!(
            from(&slow) > 115 * MS && from(&slow) < 116 * MS,
            "{:?}",
            from(&slow)
        );
        assert_eq!(from(&fast), deferral(Some(MS), 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pace_not_learnt_for_a_while_is_forgotten() {
        let listening = Arc::new(Listening::default());
        let old = listening.defer("o", key("old"));
        old.place(1);
        tokio::time::advance(10 * MS).await;
        listening.handed_to("o", true);
        tokio::time::advance(PACE_KEPT).await;
        let again = old.again();
        again.place(31);
        // No pace: it listens at once.
        assert_eq!(listening.ask(2), Ask::Now);
        let other = listening.defer("n", key("new"));
        other.place(1);
        listening.handed_to("n", true);
        let keys: Vec<_> = listening.state().paces.keys().cloned().collect();
        assert_eq!(keys, [key("new")]);
    }
}
