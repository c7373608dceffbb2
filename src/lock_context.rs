//! The argument given to the `doWhileLocked` callback: `{ key, signal, fencingToken }`.
//!
//! Built on the JavaScript thread when the callback is called. `signal` belongs to an
//! `AbortController` whose `abort` is handed back to Rust as a weak threadsafe
//! function, so the hold can abort it from any thread without keeping Node alive.
//! A lock lost before the context was built gives no context at all: the callback is
//! then not called (`do_while_locked::gated`). Building the context is the moment the
//! callback starts, so it also starts the `lockTimeout` clock (`WorkGate::enter`).

use std::sync::{Arc, Mutex};

use lock_core::{LockError, LockKey, WorkGate};
use napi::bindgen_prelude::{BigInt, Function, JsObjectValue, Object, ToNapiValue};
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi::{sys, Env, Status, Unknown};

use crate::errors;

type AbortFn = ThreadsafeFunction<LockError, UnknownReturnValue, napi::Error, Status, false, true>;

enum State {
    /// The callback has not been handed its context yet.
    Pending,
    Delivered(Arc<AbortFn>),
    /// Lost before the context was built: build it aborted.
    Lost(LockError),
    /// Built already aborted; nothing more to do.
    Aborted,
}

/// The hold's handle on the context's `AbortSignal`.
#[derive(Clone)]
pub struct ContextSignal(Arc<Mutex<State>>);

impl ContextSignal {
    pub fn new() -> Self {
        ContextSignal(Arc::new(Mutex::new(State::Pending)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signal's `abort`, if the context has been built; otherwise `why` is kept so
    /// that the context is built already aborted.
    fn abort_fn(&self, why: LockError) -> Option<(Arc<AbortFn>, LockError)> {
        let mut state = self.state();
        match &*state {
            State::Delivered(abort) => Some((abort.clone(), why)),
            State::Pending => {
                *state = State::Lost(why);
                None
            }
            State::Lost(_) | State::Aborted => None,
        }
    }

    /// Aborts the signal with the JavaScript form of `why` as its reason.
    pub fn abort(&self, why: LockError) {
        if let Some((abort, why)) = self.abort_fn(why) {
            abort.call(why, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    /// Aborts and waits until JavaScript has run the abort. Calls through different
    /// threadsafe functions reach the JS thread in no guaranteed order, so without
    /// this the `doWhileLocked` promise could settle before the signal is aborted.
    pub async fn abort_now(&self, why: LockError) {
        if let Some((abort, why)) = self.abort_fn(why) {
            let _ = abort.call_async(why).await;
        }
    }
}

pub struct LockContext {
    pub key: LockKey,
    pub fencing_token: u64,
    pub signal: ContextSignal,
    pub gate: WorkGate,
}

impl ToNapiValue for LockContext {
    unsafe fn to_napi_value(raw_env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        let env = Env::from_raw(raw_env);
        if !value.gate.enter() {
            return napi::bindgen_prelude::Undefined::to_napi_value(raw_env, ());
        }
        let global = env.get_global()?;
        let controller_class: Function<(), Unknown> =
            global.get_named_property("AbortController")?;
        let controller: Object = controller_class.new_instance(())?.cast()?;
        let signal: Unknown = controller.get_named_property("signal")?;
        let abort: Function<napi::Error, UnknownReturnValue> =
            controller.get_named_property("abort")?;
        let abort = abort.bind(controller)?;
        {
            let mut state = value.signal.state();
            if let State::Lost(why) = std::mem::replace(&mut *state, State::Pending) {
                abort.call(errors::to_napi(&env, why, &[]))?;
                *state = State::Aborted;
            } else {
                let abort = abort
                    .build_threadsafe_function::<LockError>()
                    .weak::<true>()
                    .build_callback(|ctx: ThreadsafeCallContext<LockError>| {
                        Ok(errors::to_napi(&ctx.env, ctx.value, &[]))
                    })?;
                *state = State::Delivered(Arc::new(abort));
            }
        }

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
