//! The one place where a core `LockError` becomes a JavaScript error.
//!
//! Messages follow what callers of the original class already catch (`Unable to
//! establish lock.`, `Lock interrupted by timeout`, `Was not able to delete …`), and
//! every error carries a stable `code`: our own are `LockError`s (`ERR_LOCK_*`); bad
//! arguments are `TypeError`/`RangeError` with Node's codes; a held key is a
//! `MongoServerError` (code 11000, `errorResponse`, `keyPattern`, `keyValue`), an
//! instance of the application's class when `index.js` could hand it over; other
//! driver errors take the Node driver's names, `code`, `codeName`, `errorLabels` and
//! plain messages. Passwords never appear in messages.

use std::ffi::CString;
use std::ptr;

use lock_core::mongodb::bson::{doc, Bson, Document};
use lock_core::mongodb::error::{Error as DriverError, ErrorKind, WriteFailure};
use lock_core::{Argument, LockError};
use napi::bindgen_prelude::{JsObjectValue, Object, ToNapiValue};
use napi::{sys, Env, JsValue, Unknown};

use crate::error_classes;

#[derive(Clone, Copy)]
enum Constructor {
    Error,
    TypeError,
    RangeError,
    /// The `LockError` class from `errors.js` (a plain `Error` without it).
    Lock,
}

/// Builds the JavaScript error for `error` and wraps it so that returning it from a
/// napi function throws, or rejects with, exactly that object.
pub fn to_napi(env: &Env, error: LockError, secrets: &[String]) -> napi::Error {
    wrap(build(env, &error, secrets))
}

fn wrap(built: napi::Result<Unknown<'_>>) -> napi::Error {
    match built {
        Ok(js) => napi::Error::from(js),
        Err(fallback) => fallback,
    }
}

/// The `AbortError` of a call whose signal aborted, with the signal's reason as its
/// `cause`, as Node's own APIs do.
pub fn aborted(env: &Env, cause: Option<napi::Error>) -> napi::Error {
    wrap(build(env, &LockError::Aborted, &[]).and_then(|error| {
        let mut object: Object = unsafe { error.cast()? };
        if let Some(cause) = cause {
            let cause = unsafe { napi::Error::to_napi_value(env.raw(), cause)? };
            object.set_named_property("cause", unsafe {
                Unknown::from_raw_unchecked(env.raw(), cause)
            })?;
        }
        Ok(object.to_unknown())
    }))
}

fn build<'env>(
    env: &'env Env,
    error: &LockError,
    secrets: &[String],
) -> napi::Result<Unknown<'env>> {
    if let Some((constructor, code)) = own(error) {
        return own_error(env, error, constructor, code, secrets);
    }
    match error {
        LockError::DuplicateKey {
            message,
            key_pattern,
            key_value,
        } => {
            let mut response = doc! { "ok": 0, "errmsg": message.as_str(), "code": lock_core::DUPLICATE_KEY, "codeName": "DuplicateKey" };
            response.insert("keyPattern", Bson::Document((**key_pattern).clone()));
            response.insert("keyValue", Bson::Document((**key_value).clone()));
            server_error(env, &response, message, &[])
        }
        LockError::Mongo(driver) => driver_error(env, driver, secrets),
        LockError::ConnectionString(message) => named_driver_error(
            env,
            "MongoParseError",
            &redact(message, secrets),
            Vec::new(),
        ),
        _ => Err(napi::Error::from_reason(error.to_string())),
    }
}

/// The constructor and `code` of an error we make ourselves; `None` for the server's.
fn own(error: &LockError) -> Option<(Constructor, &'static str)> {
    Some(match error {
        LockError::InvalidArgument {
            problem: Argument::Type,
            ..
        } => (Constructor::TypeError, "ERR_INVALID_ARG_TYPE"),
        LockError::InvalidArgument {
            problem: Argument::Value,
            ..
        } => (Constructor::TypeError, "ERR_INVALID_ARG_VALUE"),
        LockError::InvalidArgument {
            problem: Argument::Range,
            ..
        } => (Constructor::RangeError, "ERR_OUT_OF_RANGE"),
        LockError::Configuration(_) => (Constructor::TypeError, "ERR_UNSUPPORTED_CLIENT_OPTION"),
        LockError::WaitTimeout => (Constructor::Lock, "ERR_LOCK_WAIT_TIMEOUT"),
        LockError::LockTimeout => (Constructor::Lock, "ERR_LOCK_TIMEOUT"),
        LockError::NotDeleted { .. } => (Constructor::Lock, "ERR_LOCK_NOT_DELETED"),
        LockError::LockLost { .. } => (Constructor::Lock, "ERR_LOCK_LOST"),
        LockError::Closed => (Constructor::Lock, "ERR_LOCK_CLOSED"),
        LockError::Aborted => (Constructor::Error, "ABORT_ERR"),
        LockError::DuplicateKey { .. } | LockError::Mongo(_) | LockError::ConnectionString(_) => {
            return None
        }
    })
}

fn own_error<'env>(
    env: &'env Env,
    error: &LockError,
    constructor: Constructor,
    code: &str,
    secrets: &[String],
) -> napi::Result<Unknown<'env>> {
    let mut object = new_error(env, constructor, &redact(&error.to_string(), secrets))?;
    object.set_named_property("code", code)?;
    if let LockError::Aborted = error {
        object.set_named_property("name", "AbortError")?;
    }
    if let LockError::LockLost {
        cause: Some(cause), ..
    } = error
    {
        object.set_named_property("cause", build(env, cause, secrets)?)?;
    }
    Ok(object.to_unknown())
}

/// A driver error as the Node driver shows it: a server's refusal is a
/// `MongoServerError` with the server's `code`, `codeName` and message; the rest keep
/// the Node driver's class names with a plain message; all carry `errorLabels`.
fn driver_error<'env>(
    env: &'env Env,
    error: &DriverError,
    secrets: &[String],
) -> napi::Result<Unknown<'env>> {
    let labels: Vec<String> = error.labels().iter().cloned().collect();
    if let Some((code, code_name, message)) = server_refusal(error).or_else(|| auth_refusal(error))
    {
        let response =
            doc! { "ok": 0, "errmsg": message.as_str(), "code": code, "codeName": code_name };
        return server_error(env, &response, &redact(&message, secrets), &labels);
    }
    let (name, message) = match &*error.kind {
        ErrorKind::ServerSelection { message, .. } => (
            "MongoServerSelectionError",
            server_selection_summary(message),
        ),
        ErrorKind::Io(io) => ("MongoNetworkError", io.to_string()),
        ErrorKind::ConnectionPoolCleared { message, .. } => ("MongoNetworkError", message.clone()),
        ErrorKind::Authentication { message, .. } => ("MongoAuthenticationError", message.clone()),
        other => ("MongoError", other.to_string()),
    };
    named_driver_error(env, name, &redact(&message, secrets), labels)
}

/// An error of the application's `mongodb` class `name`, or a plain one so named.
fn named_driver_error<'env>(
    env: &'env Env,
    name: &str,
    message: &str,
    labels: Vec<String>,
) -> napi::Result<Unknown<'env>> {
    if let Some(made) = error_classes::driver_error(env, name, message, labels.clone())? {
        return Ok(made);
    }
    let mut object = new_error(env, Constructor::Error, message)?;
    object.set_named_property("name", name)?;
    object.set_named_property("errorLabels", labels)?;
    Ok(object.to_unknown())
}

/// The server's own error in `error` (or in its source, as for a failed
/// authentication): `(code, codeName, message)`.
fn server_refusal(error: &DriverError) -> Option<(i32, String, String)> {
    let refusal = match &*error.kind {
        ErrorKind::Command(c) => Some((c.code, c.code_name.clone(), c.message.clone())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some((
            w.code,
            w.code_name.clone().unwrap_or_default(),
            w.message.clone(),
        )),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            Some((w.code, w.code_name.clone(), w.message.clone()))
        }
        _ => None,
    };
    refusal.or_else(|| {
        let source = std::error::Error::source(error)?.downcast_ref::<DriverError>()?;
        server_refusal(source)
    })
}

/// A failed SCRAM conversation, which the Rust driver reports without the server's
/// reply: the server's refusal as the Node driver shows it (code 18).
fn auth_refusal(error: &DriverError) -> Option<(i32, String, String)> {
    match &*error.kind {
        ErrorKind::Authentication { message, .. }
            if message.to_lowercase().contains("authentication failed") =>
        {
            Some((
                18,
                "AuthenticationFailed".into(),
                "Authentication failed.".into(),
            ))
        }
        _ => None,
    }
}

/// `No available servers …` with the topology reduced to each server's error.
fn server_selection_summary(message: &str) -> String {
    let errors: Vec<&str> = message
        .split("Error: Kind: ")
        .skip(1)
        .filter_map(|rest| rest.split(", labels").next())
        .collect();
    if errors.is_empty() {
        return message.to_owned();
    }
    format!("Server selection timed out: {}", errors.join("; "))
}

/// A `MongoServerError` for the server's `response` (`{ ok: 0, errmsg, code, codeName, … }`),
/// made by the application's class when there is one, else shaped like it.
fn server_error<'env>(
    env: &'env Env,
    response: &Document,
    message: &str,
    labels: &[String],
) -> napi::Result<Unknown<'env>> {
    let mut response_js = document_to_js(env, response)?;
    response_js.set_named_property("errmsg", message)?;
    if !labels.is_empty() {
        response_js.set_named_property("errorLabels", labels.to_vec())?;
    }
    if let Some(made) = error_classes::construct(
        env,
        |c| c.mongo_server_error.as_ref(),
        response_js.to_unknown(),
    )? {
        return Ok(made.to_unknown());
    }
    let mut object = new_error(env, Constructor::Error, message)?;
    object.set_named_property("name", "MongoServerError")?;
    object.set_named_property("errorResponse", response_js)?;
    object.set_named_property("errorLabels", labels.to_vec())?;
    // As on the driver's MongoServerError, the error's own fields are the response's
    // values (the same objects), except errmsg.
    for name in response.keys().filter(|k| *k != "errmsg") {
        let value: Unknown = response_js.get_named_property(name)?;
        object.set_named_property(name, value)?;
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
        if let Constructor::Lock = constructor {
            let message = Unknown::from_raw_unchecked(raw_env, js_message);
            if let Some(made) = error_classes::construct(env, |c| c.lock_error.as_ref(), message)? {
                return Ok(made);
            }
        }
        let create = match constructor {
            Constructor::Error | Constructor::Lock => sys::napi_create_error,
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
