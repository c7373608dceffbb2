//! A lock held as a handle (`acquire`, `tryAcquire`): `{ key, fencingToken, signal,
//! release(), extend(ms), [Symbol.asyncDispose]() }`. The lease is renewed while the
//! handle is held; `signal` aborts when the lock is lost; `release()` (and `await
//! using`) deletes only this lock, once. A handle dropped without `release()` (garbage
//! collected) releases its lock when it is collected, and aborts its signal, which may
//! outlive it; one whose process exits is freed by its lease.

use std::future::Future;
use std::sync::{Arc, Weak};

use lock_core::{LockError, LockGuard};
use napi::bindgen_prelude::{
    BigInt, Function, JavaScriptClassExt, JsObjectValue, Object, PromiseRaw, Undefined,
};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::{Env, Unknown};
use napi_derive::napi;
use tokio::sync::Mutex;

use crate::connection::Connection;
use crate::lock_context::{AbortFn, Controller};
use crate::options;
use crate::promise;
use crate::resource_ids::JsKey;

/// A held lock. Made by `ResourceLock.acquire` and `tryAcquire`, not by `new`.
#[napi]
pub struct LockHandle {
    guard: Arc<Mutex<Option<LockGuard>>>,
    connection: Arc<Connection>,
    /// Its signal's `abort`, for a handle collected while it holds its lock. Weak:
    /// `on_loss` holds it while an abort can come; held here, it would keep the signal,
    /// its listeners and whatever they hold (often this handle) alive for good.
    abort: Weak<AbortFn>,
}

impl Drop for LockHandle {
    /// Collected without `release()`: the guard, dropped with it (or with an `extend()`
    /// still in flight), releases the lock. Whoever kept only the signal (`const {
    /// signal } = await locks.acquire(…)`) still works under it, so it is told. While a
    /// call holds the mutex it cannot be known whether that is a `release()`; in doubt
    /// the signal aborts: telling a holder that has released costs nothing, keeping
    /// quiet about a loss does.
    fn drop(&mut self) {
        let held = self.guard.try_lock().map_or(true, |guard| guard.is_some());
        if let (true, Some(abort)) = (held, self.abort.upgrade()) {
            let why = LockError::lost(
                "its handle was garbage-collected without release(), which released the lock",
            );
            abort.call(why, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

#[napi]
impl LockHandle {
    /// Releases the lock (hands it to the next waiter of this process, if any).
    /// Resolves `true` when this call released it, `false` when it had been released
    /// already or was lost. Never deletes a lock that is not this handle's.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub fn release<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, bool>> {
        let guard = self.guard.clone();
        let release = async move {
            let Some(guard) = guard.lock().await.take() else {
                return Ok(false);
            };
            Ok(guard.release().await?)
        };
        promise::settle(
            env,
            &self.connection,
            release,
            |_, released| Ok(released),
            |_| {},
        )
    }

    /// Writes a lease of `lease` ms from now and keeps renewing with it. Rejects with
    /// `ERR_LOCK_LOST` when the lock is no longer held (lost or released).
    #[napi(ts_args_type = "lease: number", ts_return_type = "Promise<void>")]
    pub fn extend<'env>(
        &self,
        env: &'env Env,
        lease: Unknown<'env>,
    ) -> napi::Result<PromiseRaw<'env, Undefined>> {
        let lease = options::lease_millis(lease, "lease");
        let guard = self.guard.clone();
        let extend = async move {
            let lease = lease?;
            match guard.lock().await.as_ref() {
                Some(guard) => Ok(guard.extend(lease).await?),
                None => Err(LockError::lost("the lock was released").into()),
            }
        };
        promise::settle(env, &self.connection, extend, |_, ()| Ok(()), |_| {})
    }
}

/// The JavaScript handle of `guard`, whose work starts now.
pub fn handle<'env>(
    env: &'env Env,
    guard: LockGuard,
    key: JsKey,
    connection: Arc<Connection>,
) -> napi::Result<Object<'env>> {
    guard.gate().enter();
    let fencing_token = guard.fencing_token();
    let controller = Controller::new(env, connection.secrets.clone())?;
    let loss = guard.loss();
    let lost = guard.lost_or_released();
    let guard = Arc::new(Mutex::new(Some(guard)));
    // A lock lost already gives a handle whose signal has aborted before anyone reads it.
    let abort = match loss {
        Some(why) => {
            controller.abort_now(env, why)?;
            napi::bindgen_prelude::spawn(release_lost(Arc::downgrade(&guard)));
            Weak::new()
        }
        None => {
            let abort = Arc::new(controller.abort_from_any_thread()?);
            let weak = Arc::downgrade(&abort);
            napi::bindgen_prelude::spawn(on_loss(lost, abort, Arc::downgrade(&guard)));
            weak
        }
    };
    let mut object = LockHandle {
        guard,
        connection,
        abort,
    }
    .into_instance(env)?
    .as_object(env);
    object.set_named_property("key", key)?;
    object.set_named_property("fencingToken", BigInt::from(fencing_token))?;
    object.set_named_property("signal", controller.signal()?)?;
    let release: Function<(), Unknown> = object.get_named_property("release")?;
    let symbol: Object = unsafe {
        env.get_global()?
            .get_named_property::<Unknown>("Symbol")?
            .cast()?
    };
    let async_dispose: Unknown = symbol.get_named_property("asyncDispose")?;
    object.set_property(async_dispose, release)?;
    Ok(object)
}

/// Aborts a handle's signal when its lock is lost (or on `close()`), then releases it.
/// The guard is held weakly: a handle that is collected drops its guard, which
/// releases the lock.
async fn on_loss(
    lost: impl Future<Output = Option<LockError>>,
    abort: Arc<AbortFn>,
    guard: Weak<Mutex<Option<LockGuard>>>,
) {
    let Some(why) = lost.await else {
        return;
    };
    abort.call(why, ThreadsafeFunctionCallMode::NonBlocking);
    release_lost(guard).await;
}

/// Releases a handle's lost lock at once rather than at `release()`: the document may
/// still be its own (a lease that ran out while renewals failed, which nobody took
/// over yet) and would block others until someone takes it over; and `close()` would
/// wait for the hold. The release matches on the owner, so a lock taken over stays
/// with its new holder; `release()` then resolves `false`, as for any lost lock.
async fn release_lost(guard: Weak<Mutex<Option<LockGuard>>>) {
    let Some(guard) = guard.upgrade() else {
        return;
    };
    let held = guard.lock().await.take();
    if let Some(guard) = held {
        let _ = guard.release().await;
    }
}
