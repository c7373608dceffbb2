//! `lock(resourceIds, options?)`: one attempt, as the original.

use napi::bindgen_prelude::PromiseRaw;
use napi::{Env, Unknown};
use napi_derive::napi;

use crate::options;
use crate::resource_ids::{self, JsKey};
use crate::resource_lock::ResourceLock;

#[napi]
impl ResourceLock {
    /// Creates the lock document of `resourceIds` in `_locks` and resolves with its key
    /// (the one id itself, or the ids joined with `#`). Rejects with a
    /// `MongoServerError` (code 11000, `duplicate key`) when it is held. With
    /// `{ lease }` (ms) the lock expires and may then be taken over; without it the
    /// lock stays until `unlock`, as in the original.
    #[napi(
        ts_generic_types = "const T extends ResourceIds",
        ts_args_type = "resourceIds: T, options?: LockOptions",
        ts_return_type = "Promise<LockKeyOf<T>>"
    )]
    pub fn lock<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<PromiseRaw<'env, JsKey>> {
        let parsed = resource_ids::parse(resource_ids)
            .and_then(|ids| Ok((ids, options::lock_lease(options)?)));
        let connection = self.connection.clone();
        self.run(
            env,
            async move {
                let (mut ids, lease) = parsed?;
                let service = connection.service().await?;
                connection
                    .unless_refused(service.lock(&ids.key, lease))
                    .await?;
                Ok(ids.js_key())
            },
            |_, key| Ok(key),
        )
    }
}
