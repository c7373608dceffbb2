//! A process that passes a lock to another process and will want it again queues
//! again in the same write (`store.rs`, `pass_on_rejoining`): one write per hand-over
//! instead of a hand-over and a join. The place it gets is kept for its next caller
//! (`local_queue.rs`, `Reserved`); if no caller takes it within `REJOIN_WINDOW`, or
//! the lock reaches it first, it is given up, so nobody waits for a caller that never
//! came.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::key::LockKey;
use crate::local_queue::{KeySlot, LocalTurn, Reserved, REJOIN_WINDOW};
use crate::release_feed::{Restored, Subscription, Wake};
use crate::shared::{Shared, Ticket, LATE_WRITE};
use crate::store::{Blocker, PassedOn, Rejoined, RESTORE_WAIT};

/// A place in the queue, for the caller that takes it: it waits under `owner` for
/// `blocker`, with `releases`, subscribed before the write, so it misses no event.
pub(crate) struct Taken {
    pub owner: String,
    pub blocker: Blocker,
    pub releases: Subscription,
}

/// A place just taken by a release, with a second subscription for its watch, counted
/// as a ticket from before its write until it is given up or taken.
pub(crate) struct Place {
    taken: Taken,
    watch: Subscription,
    ticket: Ticket,
}

/// A place as the slot keeps it, beside its owner.
struct Kept {
    blocker: Blocker,
    releases: Subscription,
    /// Cancelled when a caller takes the place: its watch has nothing left to do.
    claimed: CancellationToken,
}

/// Passes the lock of `owner` on with `lease`; when it is handed over and the release
/// feed is live (without it, the place could not be heard), with a place behind the
/// new holder. The place is only ever returned with `PassedOn::HandedOver`.
pub(crate) async fn pass_on(
    shared: &Arc<Shared>,
    key: &LockKey,
    owner: &str,
    lease: Duration,
) -> Result<(PassedOn, Option<Place>)> {
    let store = &shared.store;
    let next = shared.feed.new_owner();
    let Some(releases) = shared.feed.subscribe_deferred_if_live(&next, key) else {
        return Ok((store.pass_on(key, owner, lease).await?, None));
    };
    let ticket = shared.ticket();
    let passed = match store.pass_on_rejoining(key, owner, lease, &next).await {
        Ok(passed) => passed,
        Err(e) => {
            shared.give_up_in_background(key, next, lease, ticket, Some(LATE_WRITE));
            return Err(e);
        }
    };
    Ok(match passed {
        Rejoined::Not(passed) => (passed, None),
        Rejoined::Behind { blocker, places } => {
            let watch = releases.again();
            releases.place(places);
            watch.place(places);
            let taken = Taken {
                owner: next,
                blocker,
                releases,
            };
            let place = Place {
                taken,
                watch,
                ticket,
            };
            (PassedOn::HandedOver, Some(place))
        }
    })
}

/// Keeps `place` for the next caller of the turn's key, and gives it up in the
/// background if none takes it in time.
pub(crate) fn keep(
    place: Place,
    turn: LocalTurn,
    shared: &Arc<Shared>,
    key: &LockKey,
    lease: Duration,
) {
    let Place {
        taken,
        watch,
        ticket,
    } = place;
    let (owner, doc_id, claimed) = (
        taken.owner,
        taken.blocker.doc_id.clone(),
        CancellationToken::new(),
    );
    let kept = Kept {
        blocker: taken.blocker,
        releases: taken.releases,
        claimed: claimed.clone(),
    };
    let reserved = Reserved {
        owner: owner.clone(),
        place: Box::new(kept),
    };
    let (slot, replaced) = turn.reserve(reserved);
    // An older place that no caller took (one came by another way): given up too.
    if let Some(old) = replaced.and_then(take) {
        shared.give_up_in_background(key, old.owner, lease, shared.ticket(), None);
    }
    let (shared, key) = (shared.clone(), key.clone());
    tokio::spawn(async move {
        let gone = tokio::select! {
            _ = claimed.cancelled() => true,
            gone = watch_unclaimed(&shared, &slot, &owner, &doc_id, watch) => gone,
        };
        if !gone {
            shared.give_up(&key, &owner, lease).await;
        }
        drop((slot, ticket));
        shared.queues.tidy(&key);
    });
}

/// The place a release reserved, for the caller that takes it.
pub(crate) fn take(reserved: Reserved) -> Option<Taken> {
    let kept = reserved.place.downcast::<Kept>().ok()?;
    kept.claimed.cancel();
    Some(Taken {
        owner: reserved.owner,
        blocker: kept.blocker,
        releases: kept.releases,
    })
}

/// Waits until the place is to be given up: `REJOIN_WINDOW` passed, the lock reached
/// it, or `close()`. Then takes it back from the slot; `true` when there is nothing to
/// give up (a caller took it, or the lock document it queued on was deleted and not
/// restored with it).
async fn watch_unclaimed(
    shared: &Shared,
    slot: &KeySlot,
    owner: &str,
    doc_id: &mongodb::bson::Bson,
    mut watch: Subscription,
) -> bool {
    let until = Instant::now() + REJOIN_WINDOW;
    let gone = loop {
        let woke = tokio::select! {
            wake = watch.wake(doc_id, owner) => wake,
            _ = tokio::time::sleep_until(until) => break false,
            _ = shared.closed() => break false,
        };
        if !matches!(woke, Wake::Deleted) {
            break false;
        }
        // A lock deleted at the end of its passing window may come back with the place.
        let restored = tokio::select! {
            restored = watch.restored(doc_id, owner, RESTORE_WAIT) => restored,
            _ = shared.closed() => break false,
        };
        match restored {
            Restored::Behind { places, .. } => watch.place(places),
            Restored::Without => break true,
            // Handed to the place, or not seen back: give it up (passing it on).
            Restored::ToUs(_) | Restored::Unseen => break false,
        }
    };
    !slot.abandon(owner) || gone
}
