//! `holder(resourceIds)` and `isLocked(resourceIds)`: who holds a lock now, read from
//! `_locks`, for dashboards and health checks.

use lock_core::{Holder, LockError};
use napi::bindgen_prelude::ToNapiValue as _;
use napi::bindgen_prelude::{JsObjectValue, Null, Object, PromiseRaw};
use napi::{Env, JsValue, Unknown};
use napi_derive::napi;

use crate::connection::Connection;
use crate::resource_ids::{self, JsKey, ResourceIds};
use crate::resource_lock::ResourceLock;

#[napi]
impl ResourceLock {
    /// Who holds the lock of `resourceIds`: `{ key, since, leaseExpiresAt,
    /// heldByThisInstance }`, or `null` when it is free (no lock document, or one
    /// whose lease has passed). `since` is when it was taken or last handed over
    /// (by the taker's clock); `leaseExpiresAt` is `null` for a lock without a lease.
    #[napi(
        ts_args_type = "resourceIds: ResourceIds",
        ts_return_type = "Promise<LockHolder | null>"
    )]
    pub fn holder<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
    ) -> napi::Result<PromiseRaw<'env, Option<Object<'env>>>> {
        let parsed = resource_ids::parse(resource_ids);
        let connection = self.connection.clone();
        self.run(
            env,
            async move {
                let mut ids = parsed?;
                let holder = read(&connection, &ids).await?;
                Ok(holder.map(|holder| (holder, ids.js_key())))
            },
            |env, found| {
                found
                    .map(|(holder, key)| to_js(env, holder, key))
                    .transpose()
            },
        )
    }

    /// Whether somebody holds the lock of `resourceIds` now (`holder` is not `null`).
    #[napi(
        ts_args_type = "resourceIds: ResourceIds",
        ts_return_type = "Promise<boolean>"
    )]
    pub fn is_locked<'env>(
        &self,
        env: &'env Env,
        resource_ids: Unknown<'env>,
    ) -> napi::Result<PromiseRaw<'env, bool>> {
        let parsed = resource_ids::parse(resource_ids);
        let connection = self.connection.clone();
        self.run(
            env,
            async move { Ok(read(&connection, &parsed?).await?.is_some()) },
            |_, locked| Ok(locked),
        )
    }
}

/// The holder of `ids`' lock, read from `_locks`.
async fn read(connection: &Connection, ids: &ResourceIds) -> Result<Option<Holder>, LockError> {
    let service = connection.service().await?;
    connection.unless_refused(service.holder(&ids.key)).await
}

fn to_js<'env>(env: &'env Env, holder: Holder, key: JsKey) -> napi::Result<Object<'env>> {
    let date = |ms: Option<f64>| -> napi::Result<Unknown<'env>> {
        match ms {
            Some(ms) => Ok(env.create_date(ms)?.to_unknown()),
            None => Ok(Null.into_unknown(env)?),
        }
    };
    let mut object = Object::new(env)?;
    object.set_named_property("key", key)?;
    object.set_named_property("since", date(holder.since)?)?;
    let expiry = holder.lease_expires_at.map(|t| t.timestamp_millis() as f64);
    object.set_named_property("leaseExpiresAt", date(expiry)?)?;
    object.set_named_property("heldByThisInstance", holder.held_here)?;
    Ok(object)
}
