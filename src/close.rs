//! `close()`: ends waits and holds, disconnects, and closes the caller's client.

use napi::bindgen_prelude::{PromiseRaw, Undefined};
use napi::Env;
use napi_derive::napi;

use crate::resource_lock::ResourceLock;

#[napi]
impl ResourceLock {
    /// Stops every wait (rejecting it) and every hold (aborting its signal and
    /// releasing its lock), closes the addon's connection and then the `MongoClient`
    /// that was passed as `client`, as the original does. Safe to call twice.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Undefined>> {
        let connection = self.connection.clone();
        let node_client = self.node_client.clone();
        self.run(
            env,
            async move {
                connection.close().await;
                if let Some(close) = node_client {
                    if let Ok(closing) = close.call_async(()).await {
                        let _ = closing.await;
                    }
                }
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}
