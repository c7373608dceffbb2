//! The argument given to the `doWhileLocked` callback: `{ key, signal, fencingToken }`.
//!
//! Built on the JavaScript thread when the callback is called. `signal` belongs to an
//! `AbortController` whose `abort` is handed back to Rust as a weak threadsafe
//! function, so the hold can abort it from any thread without keeping Node alive.
//! A lock lost before the context was built gives no context at all: the callback is
//! then not called (`callback.rs`). Building the context is the moment the
//! callback starts, so it also starts the `lockTimeout` clock (`WorkGate::enter`).

use std::sync::{Arc, Mutex};

use lock_core::{LockError, WorkGate};
use napi::bindgen_prelude::{BigInt, Function, JsObjectValue, Object, ToNapiValue};
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi::{sys, Env, Status, Unknown};

use crate::errors;
use crate::resource_ids::JsKey;

pub type AbortFn =
    ThreadsafeFunction<LockError, UnknownReturnValue, napi::Error, Status, false, true>;

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

/// A new `AbortController`, whose reasons are redacted of the connection's `secrets`
/// as its rejections are.
pub struct Controller<'env> {
    object: Object<'env>,
    secrets: Arc<[String]>,
}

impl<'env> Controller<'env> {
    pub fn new(env: &'env Env, secrets: Arc<[String]>) -> napi::Result<Self> {
        let class: Function<(), Unknown> =
            env.get_global()?.get_named_property("AbortController")?;
        let object = unsafe { class.new_instance(())?.cast()? };
        Ok(Controller { object, secrets })
    }

    pub fn signal(&self) -> napi::Result<Unknown<'env>> {
        self.object.get_named_property("signal")
    }

    fn abort(&self) -> napi::Result<Function<'env, napi::Error, UnknownReturnValue>> {
        self.object.get_named_property("abort")
    }

    /// Aborts now, with the JavaScript form of `why` as the reason.
    pub fn abort_now(&self, env: &Env, why: LockError) -> napi::Result<()> {
        self.abort()?
            .apply(self.object, errors::to_napi(env, why, &self.secrets))?;
        Ok(())
    }

    /// `abort`, callable from any thread with the reason as a `LockError`. Weak: a
    /// signal nobody waits on does not keep the process alive.
    pub fn abort_from_any_thread(&self) -> napi::Result<AbortFn> {
        let secrets = self.secrets.clone();
        self.abort()?
            .bind(self.object)?
            .build_threadsafe_function::<LockError>()
            .weak::<true>()
            .build_callback(move |ctx: ThreadsafeCallContext<LockError>| {
                Ok(errors::to_napi(&ctx.env, ctx.value, &secrets))
            })
    }
}

pub struct LockContext {
    pub key: JsKey,
    pub fencing_token: u128,
    pub signal: ContextSignal,
    pub gate: WorkGate,
    /// The connection's passwords (`Controller`).
    pub secrets: Arc<[String]>,
}

impl ToNapiValue for LockContext {
    unsafe fn to_napi_value(raw_env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        let env = Env::from_raw(raw_env);
        if !value.gate.enter() {
            return napi::bindgen_prelude::Undefined::to_napi_value(raw_env, ());
        }
        let controller = Controller::new(&env, value.secrets.clone())?;
        {
            let mut state = value.signal.state();
            if let State::Lost(why) = std::mem::replace(&mut *state, State::Pending) {
                controller.abort_now(&env, why)?;
                *state = State::Aborted;
            } else {
                *state = State::Delivered(Arc::new(controller.abort_from_any_thread()?));
            }
        }
        let signal = controller.signal()?;

        let mut context = Object::new(&env)?;
        context.set_named_property("key", value.key)?;
        context.set_named_property("signal", signal)?;
        context.set_named_property("fencingToken", BigInt::from(value.fencing_token))?;
        Object::to_napi_value(raw_env, context)
    }
}
