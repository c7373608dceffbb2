//! Error classes handed over by `index.js` (`useErrorClasses`): `LockError`, which
//! Node-API cannot define (a class that extends `Error` needs JavaScript), and the
//! application's own `mongodb` classes, which native code cannot load on Node 20, so
//! that `e instanceof MongoServerError` holds for a held key as with the driver.
//! Kept per Node.js environment (main thread, each worker) in its instance data.

use napi::bindgen_prelude::{Function, FunctionRef, JsObjectValue, Object};
use napi::{Env, Unknown, ValueType};
use napi_derive::napi;

type Class = FunctionRef<Unknown<'static>, Unknown<'static>>;

#[derive(Default)]
pub struct ErrorClasses {
    pub lock_error: Option<Class>,
    pub mongo_server_error: Option<Class>,
}

/// Registers `{ LockError, MongoServerError? }`. Called once by `index.js`.
#[napi(ts_args_type = "classes: { LockError: Function, MongoServerError?: Function }")]
#[cfg_attr(
    test,
    allow(
        dead_code,
        reason = "called from JavaScript only; test builds export nothing"
    )
)]
pub fn use_error_classes(env: Env, classes: Object<'_>) -> napi::Result<()> {
    let class = |name: &str| -> napi::Result<Option<Class>> {
        let value: Unknown = classes.get_named_property(name)?;
        if value.get_type()? != ValueType::Function {
            return Ok(None);
        }
        let function: Function<Unknown<'static>, Unknown<'static>> = unsafe { value.cast()? };
        Ok(Some(function.create_ref()?))
    };
    let registered = ErrorClasses {
        lock_error: class("LockError")?,
        mongo_server_error: class("MongoServerError")?,
    };
    env.set_instance_data(registered, (), |_| {})
}

/// `new <class>(argument)` with a registered class, or `None` when it was not handed
/// over (the native binding used without `index.js`).
pub fn construct<'env>(
    env: &'env Env,
    pick: impl FnOnce(&ErrorClasses) -> Option<&Class>,
    argument: Unknown<'_>,
) -> napi::Result<Option<Object<'env>>> {
    let Some(classes) = env.get_instance_data::<ErrorClasses>()? else {
        return Ok(None);
    };
    let Some(class) = pick(classes) else {
        return Ok(None);
    };
    let argument = unsafe { Unknown::from_raw_unchecked(env.raw(), napi::JsValue::raw(&argument)) };
    let instance = class.borrow_back(env)?.new_instance(argument)?;
    Ok(Some(unsafe { instance.cast()? }))
}
