//! The async bridge: runs a future and settles a promise on the JavaScript thread,
//! where failures become JavaScript errors (`errors.rs`).
//!
//! The future is polled once on the JavaScript thread, during the call (inside the
//! tokio runtime's context). One that is done by then (bad arguments, a closed
//! instance) settles the promise before the call returns, which JavaScript still sees
//! asynchronously, without a trip through tokio and back. The rest runs on tokio and
//! comes back through the thread's shared threadsafe function (`js_thread.rs`).

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use lock_core::LockError;
use napi::bindgen_prelude::{PromiseRaw, ToNapiValue};
use napi::{check_status, sys, Env, Status};

use crate::connection::Connection;
use crate::errors;
use crate::js_thread::{JsThread, OnJsThread};

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

/// A future after its first poll, on the JavaScript thread.
pub enum Polled<F: Future> {
    Ready(F::Output),
    Pending(Pin<Box<F>>),
}

impl<T, F: Future<Output = Result<T, Failure>>> Polled<F> {
    /// Polls `work` once, here; a panic becomes its failure.
    pub fn first(work: F) -> Self {
        let mut work = Box::pin(work);
        let mut context = Context::from_waker(Waker::noop());
        let polled = napi::bindgen_prelude::within_runtime_if_available(|| {
            panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(&mut context)))
        });
        match polled {
            Ok(Poll::Pending) => Polled::Pending(work),
            Ok(Poll::Ready(outcome)) => Polled::Ready(outcome),
            Err(panicked) => Polled::Ready(Err(Failure::Js(panic_error(panicked)))),
        }
    }

    /// Its outcome, awaited on tokio if it was not ready.
    pub async fn outcome(self) -> F::Output {
        match self {
            Polled::Ready(outcome) => outcome,
            Polled::Pending(work) => work.await,
        }
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
    settle_polled(env, connection, Polled::first(work), convert, settled)
}

/// `settle` of a future polled already.
pub fn settle_polled<'env, T, V, F, C, S>(
    env: &'env Env,
    connection: &Arc<Connection>,
    work: Polled<F>,
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
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_promise(env.raw(), &mut deferred, &mut promise) })?;
    let settlement = Settlement {
        deferred,
        connection: connection.clone(),
        convert,
        settled,
    };
    match work {
        Polled::Ready(outcome) => settlement.settle(env, outcome),
        Polled::Pending(work) => {
            let thread = JsThread::current(env)?;
            thread.busy(env);
            let settlement = OnJsThread::new(settlement);
            let connection = connection.clone();
            napi::bindgen_prelude::spawn(async move {
                let outcome = CatchUnwind(work).await;
                let kept = connection.claim_keeping_alive();
                let settling = thread.clone();
                thread.clone().run(move |env| {
                    // `convert` was typed for the caller's `Env`: this is the same
                    // environment, and what it makes goes to the promise right here.
                    let env: &'env Env = unsafe { std::mem::transmute::<&Env, &'env Env>(env) };
                    settlement.into_inner().settle(env, outcome);
                    if !kept {
                        settling.idle(env);
                    }
                });
                // Queued after the settlement, so the process is never let go before
                // the promise is settled.
                if kept {
                    connection.keep_alive_for_tickets(move || {
                        thread.clone().run(move |env| thread.idle(env));
                    });
                }
            });
        }
    }
    Ok(PromiseRaw::new(env.raw(), promise))
}

/// What settles the promise, on the JavaScript thread.
struct Settlement<C, S> {
    deferred: sys::napi_deferred,
    connection: Arc<Connection>,
    convert: C,
    settled: S,
}

impl<C, S> Settlement<C, S> {
    fn settle<'env, T, V>(self, env: &'env Env, outcome: Result<T, Failure>)
    where
        V: ToNapiValue,
        C: FnOnce(&'env Env, T) -> napi::Result<V>,
        S: FnOnce(&'env Env),
    {
        let Settlement {
            deferred,
            connection,
            convert,
            settled,
        } = self;
        let value = panic::catch_unwind(AssertUnwindSafe(|| {
            settled(env);
            match outcome {
                Ok(value) => convert(env, value)
                    .and_then(|value| unsafe { V::to_napi_value(env.raw(), value) }),
                Err(Failure::Lock(error)) => Err(errors::to_napi(env, error, &connection.secrets)),
                Err(Failure::Aborted(cause)) => Err(errors::aborted(env, cause)),
                Err(Failure::Js(error)) => Err(error),
            }
        }))
        .unwrap_or_else(|panicked| Err(panic_error(panicked)));
        unsafe {
            match value {
                Ok(value) => sys::napi_resolve_deferred(env.raw(), deferred, value),
                Err(error) => match napi::Error::to_napi_value(env.raw(), error) {
                    Ok(error) => sys::napi_reject_deferred(env.raw(), deferred, error),
                    Err(_) => reject_plainly(env, deferred),
                },
            };
        }
    }
}

/// Rejects with a bare `Error` when the error itself could not be made, so that the
/// promise settles all the same.
unsafe fn reject_plainly(env: &Env, deferred: sys::napi_deferred) -> sys::napi_status {
    let mut message = ptr::null_mut();
    let mut error = ptr::null_mut();
    let text = c"mongodb-resource-lock: the outcome could not be converted";
    unsafe {
        sys::napi_create_string_utf8(
            env.raw(),
            text.as_ptr(),
            text.count_bytes() as isize,
            &mut message,
        );
        sys::napi_create_error(env.raw(), ptr::null_mut(), message, &mut error);
        sys::napi_reject_deferred(env.raw(), deferred, error)
    }
}

/// A future whose panic becomes its failure, as napi-rs's bridge made it a rejection.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<T, F: Future<Output = Result<T, Failure>>> Future for CatchUnwind<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<F::Output> {
        panic::catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(context)))
            .unwrap_or_else(|panicked| Poll::Ready(Err(Failure::Js(panic_error(panicked)))))
    }
}

fn panic_error(panicked: Box<dyn Any + Send>) -> napi::Error {
    let message = panicked
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panicked.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Panic in async function".to_owned());
    napi::Error::new(Status::GenericFailure, message)
}
