//! `close()`: ends waits and holds, disconnects, and closes the caller's client.

use napi::bindgen_prelude::{PromiseRaw, Undefined};
use napi::{Env, JsValue};
use napi_derive::napi;

use crate::callback::Callback;
use crate::promise::Failure;
use crate::resource_lock::ResourceLock;

#[napi]
impl ResourceLock {
    /// Stops every wait (rejecting it) and every hold (aborting its signal and
    /// releasing its lock), closes the addon's connection and then the `MongoClient`
    /// that was passed as `client`, as the original does. Safe to call twice.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, Undefined>> {
        let connection = self.connection.clone();
        let close_client = match &self.node_client {
            Some(close) => Some(Callback::new(env, close.borrow_back(env)?.to_unknown())?),
            None => None,
        };
        self.run(
            env,
            async move {
                connection.close().await;
                if let Some(close_client) = close_client {
                    let closed = async { close_client.call_alone().await?.settled().await };
                    closed.await.map_err(Failure::Js)?;
                }
                Ok(())
            },
            |_, ()| Ok(()),
        )
    }
}
