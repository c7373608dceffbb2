//! `unlock(resourceIds)`: deletes the lock, as the original; a lock this instance took
//! with `lock()` only while it is still that lock.

use napi::bindgen_prelude::{PromiseRaw, Undefined};
use napi::{Env, Unknown};
use napi_derive::napi;

use crate::resource_ids;
use crate::resource_lock::ResourceLock;

#[napi]
impl ResourceLock {
    /// Deletes the lock document of `resourceIds`. Rejects with
    /// `Error('Was not able to delete <ids>.')` when there is none.
    #[napi(
        ts_args_type = "resourceIds: ResourceIds",
        ts_return_type = "Promise<void>"
    )]
    pub fn unlock<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
    ) -> napi::Result<PromiseRaw<'env, Undefined>> {
        let parsed = resource_ids::parse(resource_ids);
        let connection = self.connection.clone();
        self.run(
            env,
            async move {
                let ids = parsed?;
                let service = connection.service().await?;
                connection
                    .unless_refused(service.unlock(&ids.key, &ids.ids))
                    .await?;
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}
