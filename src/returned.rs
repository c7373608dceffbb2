//! What a `doWhileLocked` callback returned, adopted exactly as `await` adopts it.
//!
//! `napi_is_promise` is true only for native promises, but the original class does
//! `await callback()`, which also waits for any other thenable (a Mongoose `Query`, a
//! Knex builder, a Bluebird promise). So every object or function that is not a
//! native promise goes through `Promise.resolve`, which reads its `then` once and
//! follows it as `await` does; a `then` that throws becomes a rejection there too.

use napi::bindgen_prelude::{FromNapiValue, Function, JsObjectValue, Object, Promise};
use napi::{sys, Env, JsValue, Unknown, ValueType};

use crate::retained_value::RetainedValue;

pub enum Returned {
    /// A promise or thenable: the value it settles with. The promise is `kept`
    /// referenced until it settles: one that nothing else references (`new Promise(()
    /// => {})`, the way to hold a lock until `lockTimeout` or the signal) would
    /// otherwise be collected with the reactions that report its outcome, and the
    /// wait would end with an error instead of lasting.
    Settles {
        promise: Promise<RetainedValue>,
        kept: RetainedValue,
    },
    /// Anything else, as it is.
    Value(RetainedValue),
}

impl Returned {
    /// The value it settles with, or what it rejects with.
    pub async fn settled(self) -> napi::Result<RetainedValue> {
        match self {
            Returned::Settles { promise, kept } => {
                let outcome = promise.await;
                drop(kept);
                outcome
            }
            Returned::Value(value) => Ok(value),
        }
    }
}

impl FromNapiValue for Returned {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let unknown = Unknown::from_raw_unchecked(env, value);
        if !matches!(unknown.get_type()?, ValueType::Object | ValueType::Function) {
            return Ok(Returned::Value(RetainedValue::from_napi_value(env, value)?));
        }
        let promise = if unknown.is_promise()? {
            value
        } else {
            promise_resolve(&Env::from_raw(env), unknown)?
        };
        Ok(Returned::Settles {
            promise: Promise::from_napi_value(env, promise)?,
            kept: RetainedValue::from_napi_value(env, promise)?,
        })
    }
}

/// `Promise.resolve(value)`, with the realm's own `Promise`.
fn promise_resolve(env: &Env, value: Unknown<'_>) -> napi::Result<sys::napi_value> {
    // A function, read as the object it also is, to reach its `resolve`.
    let promise_class: Object = unsafe {
        env.get_global()?
            .get_named_property::<Unknown>("Promise")?
            .cast()?
    };
    let resolve: Function<Unknown, Unknown> = promise_class.get_named_property("resolve")?;
    Ok(resolve.apply(promise_class, value)?.raw())
}
