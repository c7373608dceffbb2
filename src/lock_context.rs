//! The argument given to the `doWhileLocked` callback: `{ key, signal, fencingToken }`.
//!
//! Built on the JavaScript thread when the callback is called. `signal` belongs to an
//! `AbortController` whose `abort` is handed back to Rust as a weak threadsafe
//! function, so the lock keeper can abort it from any thread without keeping Node alive.

use lock_core::{LockError, LockKey};
use napi::bindgen_prelude::{BigInt, Function, JsObjectValue, Object, ToNapiValue};
use napi::threadsafe_function::{
    ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi::{sys, Env, Status, Unknown};
use tokio::sync::oneshot;

use crate::errors;

/// `controller.abort(reason)`, callable from any thread.
pub struct AbortContext(
    ThreadsafeFunction<LockError, UnknownReturnValue, napi::Error, Status, false, true>,
);

impl AbortContext {
    /// Aborts the context's signal with the JavaScript form of `why` as its reason.
    pub fn abort(&self, why: LockError) {
        self.0.call(why, ThreadsafeFunctionCallMode::NonBlocking);
    }
}

pub struct LockContext {
    pub key: LockKey,
    pub fencing_token: u64,
    pub abort: oneshot::Sender<AbortContext>,
}

impl ToNapiValue for LockContext {
    unsafe fn to_napi_value(raw_env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        let env = Env::from_raw(raw_env);
        let global = env.get_global()?;
        let controller_class: Function<(), Unknown> =
            global.get_named_property("AbortController")?;
        let controller: Object = controller_class.new_instance(())?.cast()?;
        let signal: Unknown = controller.get_named_property("signal")?;
        let abort: Function<napi::Error, UnknownReturnValue> =
            controller.get_named_property("abort")?;
        let abort = abort
            .bind(controller)?
            .build_threadsafe_function::<LockError>()
            .weak::<true>()
            .build_callback(
                |ctx: napi::threadsafe_function::ThreadsafeCallContext<LockError>| {
                    Ok(errors::to_napi(&ctx.env, ctx.value, &[]))
                },
            )?;
        // The receiver is gone only if the hold already ended: nothing to abort then.
        let _ = value.abort.send(AbortContext(abort));

        let mut context = Object::new(&env)?;
        match value.key {
            LockKey::Str(s) => context.set_named_property("key", s)?,
            LockKey::Num(n) => context.set_named_property("key", n)?,
        }
        context.set_named_property("signal", signal)?;
        context.set_named_property("fencingToken", BigInt::from(value.fencing_token))?;
        Object::to_napi_value(raw_env, context)
    }
}
