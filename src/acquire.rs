//! `acquire(resourceIds, options?)`: wait for the lock as `doWhileLocked` does and
//! resolve a handle to it.

use lock_core::{AcquireOptions, HoldOptions, LockError, LockGuard};
use napi::bindgen_prelude::{Object, PromiseRaw};
use napi::{Env, Unknown};
use napi_derive::napi;
use std::time::Duration;

use crate::abort_signal::{self, Followed, Unfollow};
use crate::connection::Connection;
use crate::lock_handle;
use crate::options;
use crate::promise::{self, Failure};
use crate::resource_ids::{self, JsKey, ResourceIds};
use crate::resource_lock::ResourceLock;

/// A parsed `acquire`/`tryAcquire` call.
pub struct Asked {
    pub ids: ResourceIds,
    pub acquire: AcquireOptions,
    pub followed: Followed,
}

#[napi]
impl ResourceLock {
    /// Waits up to `waitTimeout` for the lock of `resourceIds` (like `doWhileLocked`:
    /// same queue, fairness, hand-over, leases and fencing) and resolves a
    /// `LockHandle`, held until `release()` (or the end of an `await using` block).
    /// Rejects with `Error('Unable to establish lock.')` (`ERR_LOCK_WAIT_TIMEOUT`) when
    /// the wait ends, with an `AbortError` when `options.signal` aborts.
    #[napi(
        ts_args_type = "resourceIds: ResourceIds, options?: AcquireOptions",
        ts_return_type = "Promise<LockHandle>"
    )]
    pub fn acquire<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<PromiseRaw<'env, Object<'env>>> {
        let (asked, unfollow) = split(ask(env, resource_ids, options, None));
        let connection = self.connection.clone();
        let handle_connection = connection.clone();
        promise::settle(
            env,
            &self.connection,
            async move { asked?.take(&connection).await },
            move |env, (guard, key)| lock_handle::handle(env, guard, key, handle_connection),
            move |env| unfollow_on(env, unfollow),
        )
    }
}

impl Asked {
    /// Takes the lock as asked: the guard, and the key as JavaScript is given it.
    pub async fn take(mut self, connection: &Connection) -> Result<(LockGuard, JsKey), Failure> {
        let service = connection.service().await?;
        let acquired = service.acquire(&self.ids.key, &self.acquire);
        // A lock lost before it came back (its lease ran out on the way) is not held:
        // dropping the guard releases it if it is still ours.
        let held = connection
            .unless_refused(acquired)
            .await
            .and_then(|guard| match guard.loss() {
                Some(why) => Err(why),
                None => Ok(guard),
            });
        match held {
            Ok(guard) => Ok((guard, self.ids.js_key())),
            Err(e) => Err(self.followed.failure(e)),
        }
    }
}

/// Parses the arguments of `acquire` (`wait`: `None`, from the options) or
/// `tryAcquire` (`wait`: zero, one attempt).
pub fn ask(
    env: &Env,
    resource_ids: Unknown<'_>,
    options: Option<Unknown<'_>>,
    wait: Option<Duration>,
) -> Result<(Asked, Option<Unfollow>), LockError> {
    let ids = resource_ids::parse(resource_ids)?;
    let options = options::handle_options(options)?;
    let (followed, unfollow) = abort_signal::follow(env, options.signal.as_ref())?;
    let acquire = AcquireOptions {
        wait_timeout: wait.unwrap_or(options.wait_timeout),
        retry_interval: options.retry_interval,
        hold: HoldOptions {
            lock_timeout: None,
            lease: options.lease,
        },
        cancel: followed.cancel.clone(),
    };
    Ok((
        Asked {
            ids,
            acquire,
            followed,
        },
        unfollow,
    ))
}

/// The parsed call (or why it cannot be made) and what to unhook when it settles.
pub fn split<T>(
    asked: Result<(T, Option<Unfollow>), LockError>,
) -> (Result<T, LockError>, Option<Unfollow>) {
    match asked {
        Ok((asked, unfollow)) => (Ok(asked), unfollow),
        Err(e) => (Err(e), None),
    }
}

pub fn unfollow_on(env: &Env, unfollow: Option<Unfollow>) {
    if let Some(unfollow) = unfollow {
        unfollow.call(env);
    }
}
