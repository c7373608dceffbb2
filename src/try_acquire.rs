//! `tryAcquire(resourceIds, options?)`: one attempt; a handle, or `null` when the key
//! is held.

use std::time::Duration;

use lock_core::LockError;
use napi::bindgen_prelude::{Object, PromiseRaw};
use napi::{Env, Unknown};
use napi_derive::napi;

use crate::acquire::{ask, split, unfollow_on};
use crate::lock_handle;
use crate::promise::{self, Failure};
use crate::resource_lock::ResourceLock;

#[napi]
impl ResourceLock {
    /// One attempt to take the lock of `resourceIds`: resolves a `LockHandle`, or
    /// `null` when the key is held (by another process, or by a caller of this one:
    /// it never waits in the local queue). A lock whose lease has passed is taken
    /// over. Only failures other than "held" reject.
    #[napi(
        ts_args_type = "resourceIds: ResourceIds, options?: TryAcquireOptions",
        ts_return_type = "Promise<LockHandle | null>"
    )]
    pub fn try_acquire<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<PromiseRaw<'env, Option<Object<'env>>>> {
        let (asked, unfollow) = split(ask(env, resource_ids, options, Some(Duration::ZERO)));
        let connection = self.connection.clone();
        let handle_connection = connection.clone();
        promise::settle(
            env,
            &self.connection,
            async move {
                match asked?.take(&connection).await {
                    Ok(held) => Ok(Some(held)),
                    Err(Failure::Lock(LockError::WaitTimeout)) => Ok(None),
                    Err(e) => Err(e),
                }
            },
            move |env, held| {
                held.map(|(guard, key)| lock_handle::handle(env, guard, key, handle_connection))
                    .transpose()
            },
            move |env| unfollow_on(env, unfollow),
        )
    }
}
