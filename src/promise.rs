//! The async bridge: runs a future on napi's tokio runtime and settles a promise on the
//! JavaScript thread, where failures become JavaScript errors (`errors.rs`).

use std::future::Future;
use std::sync::Arc;

use lock_core::LockError;
use napi::bindgen_prelude::{PromiseRaw, ToNapiValue};
use napi::Env;

use crate::connection::Connection;
use crate::errors;

/// A failure of an operation: ours, or exactly what the caller's callback threw.
pub enum Failure {
    Lock(LockError),
    /// The caller's signal aborted; its reason, if it had one, becomes the `cause`.
    Aborted(Option<napi::Error>),
    Js(napi::Error),
}

impl From<LockError> for Failure {
    fn from(error: LockError) -> Self {
        Failure::Lock(error)
    }
}

/// Runs `work` and settles the returned promise with `convert` of its value, calling
/// `settled` on the JavaScript thread just before, whatever the outcome. Errors are
/// redacted with `connection`'s secrets.
pub fn settle<'env, T, V, F, C, S>(
    env: &'env Env,
    connection: &Arc<Connection>,
    work: F,
    convert: C,
    settled: S,
) -> napi::Result<PromiseRaw<'env, V>>
where
    T: Send + 'static,
    V: ToNapiValue,
    F: Future<Output = Result<T, Failure>> + Send + 'static,
    C: FnOnce(&'env Env, T) -> napi::Result<V> + 'static,
    S: FnOnce(&'env Env) + 'static,
{
    let connection = connection.clone();
    env.spawn_future_with_callback(async move { Ok(work.await) }, move |env, outcome| {
        settled(env);
        match outcome {
            Ok(value) => convert(env, value),
            Err(Failure::Lock(error)) => Err(errors::to_napi(env, error, &connection.secrets)),
            Err(Failure::Aborted(cause)) => Err(errors::aborted(env, cause)),
            Err(Failure::Js(error)) => Err(error),
        }
    })
}
