//! The caller's `AbortSignal`: followed with `addEventListener('abort', …, { once })`
//! (napi's built-in `AbortSignal` type overwrites `signal.onabort`), unhooked when the
//! call settles, and its `reason` kept to become the `cause` of the `AbortError`, as
//! Node's own APIs do.

use std::sync::{Arc, Mutex};

use lock_core::LockError;
use napi::bindgen_prelude::{
    FnArgs, Function, FunctionCallContext, FunctionRef, JsObjectValue, Object,
};
use napi::{Env, Unknown, ValueType};
use tokio_util::sync::CancellationToken;

use crate::promise::Failure;
use crate::resource_ids::describe;

/// `signal.addEventListener('abort', listener, { once: true })`.
type AddEventListener<'env> = Function<
    'env,
    FnArgs<(
        &'static str,
        Function<'env, Unknown<'env>, ()>,
        Object<'env>,
    )>,
    Unknown<'env>,
>;

/// `Function.prototype.bind` of `removeEventListener`, given `(signal, 'abort', listener)`.
type BindListener<'env> = Function<
    'env,
    FnArgs<(
        Object<'env>,
        &'static str,
        Function<'env, Unknown<'env>, ()>,
    )>,
    Function<'env, (), Unknown<'env>>,
>;

/// `signal.removeEventListener('abort', listener)`, bound, to call when the call
/// settles, so that a long-lived signal passed to many calls does not collect one
/// listener per call. A `FunctionRef` may be dropped on any thread.
pub struct Unfollow(FunctionRef<(), Unknown<'static>>);

impl Unfollow {
    pub fn call(self, env: &Env) {
        if let Ok(remove) = self.0.borrow_back(env) {
            let _ = remove.call(());
        }
    }
}

/// What the call knows of the caller's signal: cancelled when it aborts, and why.
#[derive(Clone, Default)]
pub struct Followed {
    pub cancel: CancellationToken,
    /// `signal.reason`, held as napi holds a thrown value, released on the JS thread.
    reason: Arc<Mutex<Option<napi::Error>>>,
}

impl Followed {
    /// `error` as the call's failure: an abort carries the signal's reason.
    pub fn failure(&self, error: LockError) -> Failure {
        match error {
            LockError::Aborted => Failure::Aborted(self.take_reason()),
            other => Failure::Lock(other),
        }
    }

    fn take_reason(&self) -> Option<napi::Error> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn abort(&self, reason: Unknown<'_>) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(napi::Error::from_unknown_without_coercion(reason));
        self.cancel.cancel();
    }
}

/// Checks `options.signal` and follows it. `None` (and nothing to unhook) without one.
pub fn follow(
    env: &Env,
    signal: Option<&Object<'_>>,
) -> Result<(Followed, Option<Unfollow>), LockError> {
    let followed = Followed::default();
    let Some(signal) = signal else {
        return Ok((followed, None));
    };
    let unfollow = listen(env, signal, &followed)
        .map_err(|_| LockError::type_error("options.signal must be an AbortSignal"))?;
    Ok((followed, unfollow))
}

fn listen(env: &Env, signal: &Object<'_>, followed: &Followed) -> napi::Result<Option<Unfollow>> {
    if signal.get_named_property::<bool>("aborted")? {
        followed.abort(signal.get_named_property("reason")?);
        return Ok(None);
    }
    let on_abort = followed.clone();
    let listener = env.create_function_from_closure::<Unknown, (), _>(
        "onAbort",
        move |ctx: FunctionCallContext| {
            let event: Object = ctx.get(0)?;
            let target: Object = event.get_named_property("target")?;
            on_abort.abort(target.get_named_property("reason")?);
            Ok(())
        },
    )?;
    let mut once = Object::new(env)?;
    once.set_named_property("once", true)?;
    let add: AddEventListener = signal.get_named_property("addEventListener")?;
    add.apply(signal, FnArgs::from(("abort", listener, once)))?;
    // A function, read as the object it also is, to reach its `bind`.
    let remove: Object = unsafe {
        signal
            .get_named_property::<Unknown>("removeEventListener")?
            .cast()?
    };
    let bind: BindListener = remove.get_named_property("bind")?;
    let bound = bind.apply(remove, FnArgs::from((*signal, "abort", listener)))?;
    Ok(Some(Unfollow(bound.create_ref()?)))
}

/// `options.signal` checked to look like an `AbortSignal`.
pub fn check(value: Unknown<'_>) -> Result<Object<'_>, LockError> {
    let bad = || {
        LockError::type_error(format!(
            "options.signal must be an AbortSignal, got {}",
            describe(value)
        ))
    };
    if value.get_type().ok() != Some(ValueType::Object) {
        return Err(bad());
    }
    let object: Object = unsafe { value.cast() }.map_err(|_| bad())?;
    let aborted: Unknown = object.get_named_property("aborted").map_err(|_| bad())?;
    let listen: Unknown = object
        .get_named_property("addEventListener")
        .map_err(|_| bad())?;
    if aborted.get_type().ok() != Some(ValueType::Boolean)
        || listen.get_type().ok() != Some(ValueType::Function)
    {
        return Err(bad());
    }
    Ok(object)
}
