//! A JavaScript value carried through Rust and handed back unchanged.
//!
//! `doWhileLocked` must resolve with exactly what the callback returned (the same
//! object, `undefined`, a symbol…). Node-API 9 references hold objects only, and
//! must be released on the JavaScript thread; napi-rs's `Error` already solves both
//! (it retains any value through a private holder and routes its release to the JS
//! thread when dropped elsewhere, e.g. when a late result arrives after a timeout),
//! and hands the value back verbatim. So the value rides in one.

use napi::bindgen_prelude::{FromNapiValue, ToNapiValue, TypeName, ValidateNapiValue};
use napi::{sys, Error, Unknown, ValueType};

pub struct RetainedValue(Error);

impl FromNapiValue for RetainedValue {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        Ok(RetainedValue(Error::from_unknown_without_coercion(
            Unknown::from_raw_unchecked(env, value),
        )))
    }
}

impl ToNapiValue for RetainedValue {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        Error::to_napi_value(env, value.0)
    }
}

impl TypeName for RetainedValue {
    fn type_name() -> &'static str {
        "unknown"
    }

    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

/// Any value is acceptable: that is the point.
impl ValidateNapiValue for RetainedValue {
    unsafe fn validate(
        _env: sys::napi_env,
        _value: sys::napi_value,
    ) -> napi::Result<sys::napi_value> {
        Ok(std::ptr::null_mut())
    }
}
