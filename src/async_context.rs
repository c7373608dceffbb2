//! The caller's async context: what `AsyncLocalStorage` (and with it OpenTelemetry's
//! active span) sees where `doWhileLocked` is called. Captured during the call with
//! `napi_async_init` and entered to run the callback with `napi_make_callback`, as
//! Node's own callback APIs do; otherwise the callback would run in the context of
//! whatever the event loop was doing when the lock came.

use std::ptr;

use napi::{check_status, sys, Env, JsValue, Status};

pub struct CallerContext {
    env: sys::napi_env,
    raw: sys::napi_async_context,
    /// The async resource, held strongly: Node holds it weakly, and once it is
    /// collected the callback runs with a fresh resource and none of the caller's
    /// stores (seen after a GC between the call and the callback).
    resource: sys::napi_ref,
}

impl CallerContext {
    /// Captures the current async context. On the JavaScript thread only.
    pub fn capture(env: &Env) -> napi::Result<Self> {
        let name = env.create_string("mongodb-resource-lock")?;
        let resource = napi::bindgen_prelude::Object::new(env)?;
        let mut held = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_reference(env.raw(), resource.raw(), 1, &mut held)
        })?;
        let mut raw = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_async_init(env.raw(), resource.raw(), name.raw(), &mut raw)
        })?;
        Ok(CallerContext {
            env: env.raw(),
            raw,
            resource: held,
        })
    }

    /// `function(...arguments)` inside the captured context. Whatever the function
    /// throws stays the pending exception, unchanged (`PendingException`).
    pub fn call(
        &self,
        env: &Env,
        function: sys::napi_value,
        arguments: &[sys::napi_value],
    ) -> napi::Result<sys::napi_value> {
        // `napi_make_callback` needs an object as `this`; a strict function called
        // plainly would see `undefined`, so `globalThis` is the nearest to that.
        let mut receiver = ptr::null_mut();
        let mut returned = ptr::null_mut();
        let status = unsafe {
            sys::napi_get_global(env.raw(), &mut receiver);
            sys::napi_make_callback(
                env.raw(),
                self.raw,
                receiver,
                function,
                arguments.len(),
                arguments.as_ptr(),
                &mut returned,
            )
        };
        if status == sys::Status::napi_pending_exception {
            return Err(napi::Error::new(
                Status::PendingException,
                "the callback threw",
            ));
        }
        check_status!(status)?;
        Ok(returned)
    }
}

impl Drop for CallerContext {
    /// Dropped with the callback that owns it, on the JavaScript thread
    /// (`callback.rs`).
    fn drop(&mut self) {
        unsafe {
            sys::napi_async_destroy(self.env, self.raw);
            sys::napi_delete_reference(self.env, self.resource);
        }
    }
}
