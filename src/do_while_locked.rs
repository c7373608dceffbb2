//! `doWhileLocked(resourceIds, callback, options?)`: wait for the lock, run the
//! callback while holding it, release it; all timing in Rust on tokio.

use std::sync::Arc;

use lock_core::{ids_to_string, AcquireOptions, HoldOptions, LockError, LockGuard};
use napi::bindgen_prelude::PromiseRaw;
use napi::{Env, Unknown, ValueType};
use napi_derive::napi;
use tokio_util::sync::CancellationToken;

use crate::abort_signal::{self, Unfollow};
use crate::acquire::{split, unfollow_on, Asked};
use crate::callback::Callback;
use crate::connection::Connection;
use crate::lock_context::{ContextSignal, LockContext};
use crate::options;
use crate::promise::{self, Failure, Polled};
use crate::resource_ids::{self, describe, ResourceIds};
use crate::resource_lock::ResourceLock;
use crate::retained_value::RetainedValue;

/// The lock, taken: what the rest of the call needs.
struct Acquired {
    ids: ResourceIds,
    guard: LockGuard,
    cancel: CancellationToken,
}

#[napi]
impl ResourceLock {
    /// Waits up to `waitTimeout` for the lock of `resourceIds`, calls `callback` with
    /// `{ key, signal, fencingToken }` while holding it, releases it, and resolves
    /// with exactly what the callback returned (or rejects with exactly what it
    /// threw). Rejects with `Error('Unable to establish lock.')` when the wait ends,
    /// and with `Error('Lock interrupted by timeout')` when `lockTimeout` passes
    /// first; `signal` is aborted then.
    #[napi(
        ts_generic_types = "T",
        ts_args_type = "resourceIds: ResourceIds, callback: (context: LockContext) => T | PromiseLike<T>, options?: DoWhileLockedOptions",
        ts_return_type = "Promise<Awaited<T>>"
    )]
    pub fn do_while_locked<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
        callback: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<PromiseRaw<'env, RetainedValue>> {
        let (asked, unfollow) = split(prepare(env, resource_ids, callback, options));
        let acquiring = Polled::first(acquire(self.connection.clone(), asked));
        // A call that failed at once (bad arguments, a closed instance) never calls
        // back: the callback's reference and async context are made only for calls
        // that may.
        let work = match acquiring {
            Polled::Ready(Err(failure)) => Polled::Ready(Err(failure)),
            acquiring => {
                let callback = Callback::new(env, callback)
                    .map_err(|_| LockError::type_error("callback must be a function"));
                let secrets = self.connection.secrets.clone();
                Polled::Pending(Box::pin(async move {
                    let callback = callback?;
                    hold(acquiring.outcome().await?, callback, secrets).await
                }))
            }
        };
        promise::settle_polled(
            env,
            &self.connection,
            work,
            |_, value| Ok(value),
            move |env| unfollow_on(env, unfollow),
        )
    }
}

/// Checks the arguments, in the original's order, and follows the caller's signal.
fn prepare(
    env: &Env,
    resource_ids: Unknown<'_>,
    callback: Unknown<'_>,
    options: Option<Unknown<'_>>,
) -> Result<(Asked, Option<Unfollow>), LockError> {
    let ids = resource_ids::parse(resource_ids)?;
    if callback.get_type().ok() != Some(ValueType::Function) {
        return Err(LockError::type_error(format!(
            "callback must be a function, got {}",
            describe(callback)
        )));
    }
    let hold = options::hold_options(options)?;
    let (followed, unfollow) = abort_signal::follow(env, hold.signal.as_ref())?;
    let acquire = AcquireOptions {
        wait_timeout: hold.wait_timeout,
        retry_interval: hold.retry_interval,
        hold: HoldOptions {
            lock_timeout: hold.lock_timeout,
            lease: hold.lease,
        },
        cancel: followed.cancel.clone(),
    };
    let asked = Asked {
        ids,
        acquire,
        followed,
    };
    Ok((asked, unfollow))
}

async fn acquire(
    connection: Arc<Connection>,
    asked: Result<Asked, LockError>,
) -> Result<Acquired, Failure> {
    let Asked {
        ids,
        acquire,
        followed,
    } = asked?;
    let service = connection.service().await?;
    let guard = connection
        .unless_refused(service.acquire(&ids.key, &acquire))
        .await
        .map_err(|e| followed.failure(e))?;
    Ok(Acquired {
        ids,
        guard,
        cancel: acquire.cancel,
    })
}

async fn hold(
    acquired: Acquired,
    callback: Callback,
    secrets: Arc<[String]>,
) -> Result<RetainedValue, Failure> {
    let Acquired {
        mut ids,
        guard,
        cancel,
    } = acquired;
    let signal = ContextSignal::new();
    let gate = guard.gate();
    let context = LockContext {
        key: ids.js_key(),
        fencing_token: guard.fencing_token(),
        signal: signal.clone(),
        gate: gate.clone(),
        secrets,
    };
    let outcome = async { callback.call(context).await?.settled().await };
    tokio::pin!(outcome);

    let mut caller_aborted = false;
    let ended = loop {
        tokio::select! {
            biased;
            result = &mut outcome => break Ok(result),
            why = guard.lost() => break Err(why),
            _ = cancel.cancelled(), if !caller_aborted => {
                caller_aborted = true;
                signal.abort(LockError::Aborted);
            }
        }
    };
    let ended = match ended {
        // Lost before the callback could start: it was not called (`callback.rs`).
        Ok(_) if !gate.entered() => Err(guard.lost().await),
        ended => ended,
    };
    match ended {
        Ok(result) => match guard.release().await? {
            true => {
                // A local waiter handed the lock is woken on tokio; letting it run first
                // queues its callback on the JavaScript thread before this call's own
                // result, so the lock does not sit idle while this promise settles.
                tokio::task::yield_now().await;
                result.map_err(Failure::Js)
            }
            // Someone removed the lock while we held it: the original's release
            // failed the same way.
            false => Err(Failure::Lock(LockError::not_deleted(ids_to_string(
                &ids.ids,
            )))),
        },
        Err(why) => {
            signal.abort_now(why.clone()).await;
            // Only our own lock is removed; a later holder's stays.
            let _ = guard.release().await;
            Err(Failure::Lock(why))
        }
    }
}
