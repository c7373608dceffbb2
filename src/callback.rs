//! The `doWhileLocked` callback, called from tokio on the JavaScript thread through the
//! thread's shared threadsafe function (`js_thread.rs`), at most once.
//!
//! Gated: the context is built on the JavaScript thread just before the call, and is
//! `undefined` when the lock was lost before the callback could start (`LockContext`);
//! the callback is then not called, so it never starts without the lock. Called in the
//! caller's async context (`async_context.rs`), so that `AsyncLocalStorage` sees inside
//! it what it saw where `doWhileLocked` was called.

use std::ptr;

use napi::bindgen_prelude::{FromNapiValue, Function, FunctionRef, ToNapiValue};
use napi::{sys, Env, JsValue, Status, Unknown, ValueType};
use tokio::sync::oneshot;

use crate::async_context::CallerContext;
use crate::js_thread::{JsThread, OnJsThread};
use crate::lock_context::LockContext;
use crate::returned::Returned;

pub struct Callback {
    thread: JsThread,
    /// Taken by the call.
    js: Option<OnJsThread<Target>>,
}

/// What is called, and where: JavaScript values, released on the JavaScript thread.
struct Target {
    function: FunctionRef<Unknown<'static>, Unknown<'static>>,
    caller: CallerContext,
}

impl Callback {
    /// `callback`, checked to be a function, in the current async context.
    pub fn new(env: &Env, callback: Unknown<'_>) -> napi::Result<Self> {
        let function: Function<Unknown, Unknown> = unsafe { callback.cast() }?;
        let target = Target {
            function: function.create_ref()?,
            caller: CallerContext::capture(env)?,
        };
        Ok(Callback {
            thread: JsThread::current(env)?,
            js: Some(OnJsThread::new(target)),
        })
    }

    /// Calls it with `context` and returns what it returned, or what it threw.
    pub async fn call(self, context: LockContext) -> napi::Result<Returned> {
        self.call_with(move |env| {
            let context = unsafe { LockContext::to_napi_value(env.raw(), context) }?;
            let context = unsafe { Unknown::from_raw_unchecked(env.raw(), context) };
            // `undefined`: the lock was lost before the callback could start.
            Ok((context.get_type()? != ValueType::Undefined).then(|| vec![context.raw()]))
        })
        .await
    }

    /// Calls it with no argument (`client.close()`).
    pub async fn call_alone(self) -> napi::Result<Returned> {
        self.call_with(|_| Ok(Some(Vec::new()))).await
    }

    /// Calls it with the arguments `arguments` makes on the JavaScript thread; `None`:
    /// not at all (it then returns `undefined`).
    async fn call_with<A>(mut self, arguments: A) -> napi::Result<Returned>
    where
        A: FnOnce(&Env) -> napi::Result<Option<Vec<sys::napi_value>>> + Send + 'static,
    {
        let Some(target) = self.js.take() else {
            return Err(napi::Error::new(Status::InvalidArg, "called already"));
        };
        let (sent, received) = oneshot::channel();
        self.thread.run(move |env| {
            let called = arguments(env).and_then(|a| target.into_inner().call(env, a));
            let _ = sent.send(caught(env, called));
        });
        received
            .await
            .map_err(|_| napi::Error::new(Status::Closing, "the environment has ended"))?
    }
}

impl Drop for Callback {
    /// Not called (the lock never came): its JavaScript values go back to be released.
    fn drop(&mut self) {
        if let Some(target) = self.js.take() {
            self.thread.run(move |_| drop(target.into_inner()));
        }
    }
}

impl Target {
    fn call(self, env: &Env, arguments: Option<Vec<sys::napi_value>>) -> napi::Result<Returned> {
        let returned = match arguments {
            None => unsafe { <()>::to_napi_value(env.raw(), ()) }?,
            Some(arguments) => {
                let function = self.function.borrow_back(env)?;
                self.caller.call(env, function.raw(), &arguments)?
            }
        };
        unsafe { Returned::from_napi_value(env.raw(), returned) }
    }
}

/// `result`, with an exception left pending (what the callback threw) taken as the
/// error, as is, so that it becomes the rejection.
fn caught<T>(env: &Env, result: napi::Result<T>) -> napi::Result<T> {
    let mut pending = false;
    unsafe { sys::napi_is_exception_pending(env.raw(), &mut pending) };
    if !pending {
        return result;
    }
    let mut exception = ptr::null_mut();
    unsafe { sys::napi_get_and_clear_last_exception(env.raw(), &mut exception) };
    let mut error = napi::Error::from_unknown_without_coercion(unsafe {
        Unknown::from_raw_unchecked(env.raw(), exception)
    });
    error.status = Status::PendingException;
    Err(error)
}
