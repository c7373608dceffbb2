//! The one place where a core `LockError` becomes a JavaScript error.
//!
//! Messages, `name`, `code` and fields follow what callers of the original class
//! already catch: plain `Error`s for `Unable to establish lock.`, `Lock interrupted
//! by timeout` and `Was not able to delete …`; a `MongoServerError`-shaped error
//! (code 11000, `errorResponse`, `keyPattern`, `keyValue`) for a held key;
//! `TypeError` / `RangeError` for bad arguments. Passwords never appear in messages.

use std::ffi::CString;
use std::ptr;

use lock_core::mongodb::bson::{Bson, Document};
use lock_core::mongodb::error::ErrorKind;
use lock_core::LockError;
use napi::bindgen_prelude::{JsObjectValue, Object, ToNapiValue};
use napi::{sys, Env, JsValue, Unknown};

#[derive(Clone, Copy)]
enum Constructor {
    Error,
    TypeError,
    RangeError,
}

/// Builds the JavaScript error for `error` and wraps it so that returning it from a
/// napi function throws, or rejects with, exactly that object.
pub fn to_napi(env: &Env, error: LockError, secrets: &[String]) -> napi::Error {
    match build(env, &error, secrets) {
        Ok(js) => napi::Error::from(js),
        Err(fallback) => fallback,
    }
}

fn build<'env>(
    env: &'env Env,
    error: &LockError,
    secrets: &[String],
) -> napi::Result<Unknown<'env>> {
    let message = redact(&error.to_string(), secrets);
    let (constructor, name, code): (Constructor, Option<&str>, Option<Bson>) = match error {
        LockError::InvalidArgument { range: true, .. } => (
            Constructor::RangeError,
            None,
            Some("ERR_OUT_OF_RANGE".into()),
        ),
        LockError::InvalidArgument { range: false, .. } => (
            Constructor::TypeError,
            None,
            Some("ERR_INVALID_ARG_TYPE".into()),
        ),
        LockError::DuplicateKey { .. } => (
            Constructor::Error,
            Some("MongoServerError"),
            Some(Bson::Int32(lock_core::DUPLICATE_KEY)),
        ),
        LockError::NotDeleted { .. } | LockError::WaitTimeout | LockError::LockTimeout => {
            (Constructor::Error, None, None)
        }
        LockError::LockLost { .. } => (Constructor::Error, None, Some("ERR_LOCK_LOST".into())),
        LockError::Aborted => (
            Constructor::Error,
            Some("AbortError"),
            Some("ABORT_ERR".into()),
        ),
        LockError::Closed => (Constructor::Error, None, Some("ERR_LOCK_CLOSED".into())),
        LockError::Configuration(_) => (
            Constructor::TypeError,
            None,
            Some("ERR_UNSUPPORTED_CLIENT_OPTION".into()),
        ),
        LockError::Mongo(e) => {
            let name = match &*e.kind {
                ErrorKind::ServerSelection { .. } => "MongoServerSelectionError",
                ErrorKind::Io(_) | ErrorKind::ConnectionPoolCleared { .. } => "MongoNetworkError",
                ErrorKind::Authentication { .. } => "MongoAuthenticationError",
                ErrorKind::Command(_) | ErrorKind::Write(_) => "MongoServerError",
                _ => "MongoError",
            };
            (
                Constructor::Error,
                Some(name),
                error.server_code().map(Bson::Int32),
            )
        }
    };
    let mut object = new_error(env, constructor, &message)?;
    if let Some(name) = name {
        object.set_named_property("name", name)?;
    }
    if let Some(code) = code {
        object.set_named_property("code", bson_to_js(env, &code)?)?;
    }
    if let LockError::DuplicateKey {
        message: errmsg,
        key_pattern,
        key_value,
    } = error
    {
        let mut response = Object::new(env)?;
        response.set_named_property("ok", 0)?;
        response.set_named_property("errmsg", errmsg.as_str())?;
        response.set_named_property("code", lock_core::DUPLICATE_KEY)?;
        response.set_named_property("codeName", "DuplicateKey")?;
        // As on the driver's MongoServerError, the error's own fields are the
        // response's objects, not copies.
        let key_pattern = document_to_js(env, key_pattern)?;
        let key_value = document_to_js(env, key_value)?;
        response.set_named_property("keyPattern", key_pattern)?;
        response.set_named_property("keyValue", key_value)?;
        object.set_named_property("errorResponse", response)?;
        object.set_named_property("codeName", "DuplicateKey")?;
        object.set_named_property("keyPattern", key_pattern)?;
        object.set_named_property("keyValue", key_value)?;
    }
    Ok(object.to_unknown())
}

fn new_error<'env>(
    env: &'env Env,
    constructor: Constructor,
    message: &str,
) -> napi::Result<Object<'env>> {
    let raw_env = env.raw();
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let mut js_message = ptr::null_mut();
    let mut value = ptr::null_mut();
    unsafe {
        napi::check_status!(sys::napi_create_string_utf8(
            raw_env,
            text.as_ptr(),
            text.as_bytes().len() as isize,
            &mut js_message
        ))?;
        let create = match constructor {
            Constructor::Error => sys::napi_create_error,
            Constructor::TypeError => sys::napi_create_type_error,
            Constructor::RangeError => sys::napi_create_range_error,
        };
        napi::check_status!(create(raw_env, ptr::null_mut(), js_message, &mut value))?;
        Ok(Object::from_raw(raw_env, value))
    }
}

fn document_to_js<'env>(env: &'env Env, document: &Document) -> napi::Result<Object<'env>> {
    let mut object = Object::new(env)?;
    for (name, value) in document {
        object.set_named_property(name, bson_to_js(env, value)?)?;
    }
    Ok(object)
}

/// The few BSON types that appear in lock keys and error codes.
fn bson_to_js<'env>(env: &'env Env, value: &Bson) -> napi::Result<Unknown<'env>> {
    let raw = env.raw();
    let js = unsafe {
        match value {
            Bson::String(s) => ToNapiValue::to_napi_value(raw, s.as_str())?,
            Bson::Int32(n) => ToNapiValue::to_napi_value(raw, *n)?,
            Bson::Int64(n) => ToNapiValue::to_napi_value(raw, *n as f64)?,
            Bson::Double(n) => ToNapiValue::to_napi_value(raw, *n)?,
            Bson::Document(d) => ToNapiValue::to_napi_value(raw, document_to_js(env, d)?)?,
            other => ToNapiValue::to_napi_value(raw, other.to_string())?,
        }
    };
    Ok(unsafe { Unknown::from_raw_unchecked(raw, js) })
}

/// Removes every secret (passwords from the connection settings) from `text`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| {
            let encoded = percent_encode(secret);
            text.replace(secret.as_str(), "****")
                .replace(&encoded, "****")
        })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn removes_every_secret_as_written_and_percent_encoded() {
        let secrets = vec!["pa55:w@rd".to_owned(), String::new()];
        let text = "auth failed for someone:pa55:w@rd (mongodb://someone:pa55%3Aw%40rd@h:1)";
        assert_eq!(
            redact(text, &secrets),
            "auth failed for someone:**** (mongodb://someone:****@h:1)"
        );
    }

    #[test]
    fn leaves_text_without_secrets_alone() {
        assert_eq!(redact("no secret here", &[]), "no secret here");
        assert_eq!(redact("no secret here", &[String::new()]), "no secret here");
    }
}
