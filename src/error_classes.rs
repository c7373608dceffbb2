//! Error classes handed over by `index.js` (`useErrorClasses`): `LockError`, which
//! Node-API cannot define (a class that extends `Error` needs JavaScript), and the
//! application's own `mongodb` classes, which native code cannot load on Node 20, so
//! that `e instanceof MongoServerError` holds for a held key as with the driver, and
//! `e instanceof MongoNetworkError` for a network failure (`driverError`, `errors.js`).
//! Kept per Node.js environment (main thread, each worker) in its instance data.

use napi::bindgen_prelude::{FnArgs, Function, FunctionRef, JsObjectValue, Object};
use napi::{Env, Unknown, ValueType};
use napi_derive::napi;

type Class = FunctionRef<Unknown<'static>, Unknown<'static>>;
/// `(name, message, errorLabels) => Error`: a driver error made with the
/// application's class of that name.
type DriverErrorFactory = FunctionRef<FnArgs<(String, String, Vec<String>)>, Unknown<'static>>;

#[derive(Default)]
pub struct ErrorClasses {
    pub lock_error: Option<Class>,
    pub mongo_server_error: Option<Class>,
    driver_error: Option<DriverErrorFactory>,
}

/// Registers `{ LockError, MongoServerError?, driverError? }`. Called once by `index.js`.
#[napi(
    ts_args_type = "classes: { LockError: Function, MongoServerError?: Function, driverError?: (name: string, message: string, labels: string[]) => Error }"
)]
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
    let factory: Unknown = classes.get_named_property("driverError")?;
    let driver_error = if factory.get_type()? == ValueType::Function {
        let function: Function<FnArgs<(String, String, Vec<String>)>, Unknown<'static>> =
            unsafe { factory.cast()? };
        Some(function.create_ref()?)
    } else {
        None
    };
    let registered = ErrorClasses {
        lock_error: class("LockError")?,
        mongo_server_error: class("MongoServerError")?,
        driver_error,
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

/// A driver error `name` made by the application's `mongodb` (`driverError`), or `None`
/// without it.
pub fn driver_error<'env>(
    env: &'env Env,
    name: &str,
    message: &str,
    labels: Vec<String>,
) -> napi::Result<Option<Unknown<'env>>> {
    let Some(factory) = env
        .get_instance_data::<ErrorClasses>()?
        .and_then(|classes| classes.driver_error.as_ref())
    else {
        return Ok(None);
    };
    // A driver whose constructors changed shape throws here, or makes no object: the
    // plain error then.
    let Ok(made) = factory
        .borrow_back(env)?
        .call((name.to_owned(), message.to_owned(), labels).into())
    else {
        return Ok(None);
    };
    let made = unsafe { Unknown::from_raw_unchecked(env.raw(), napi::JsValue::raw(&made)) };
    Ok((made.get_type()? == ValueType::Object).then_some(made))
}
