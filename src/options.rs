//! Options from JavaScript, checked: a wrong type is a `TypeError`, a value out of
//! range a `RangeError`, each naming the option.

use std::time::Duration;

use lock_core::mongodb::options::{Acknowledgment, WriteConcern};
use lock_core::LockError;
use napi::bindgen_prelude::{JsObjectValue, Object};
use napi::{Unknown, ValueType};

use crate::abort_signal;
use crate::resource_ids::describe;

/// `doWhileLocked`'s options.
pub struct HoldOptions<'env> {
    /// `None`: `Infinity`.
    pub lock_timeout: Option<Duration>,
    pub wait_timeout: Duration,
    pub retry_interval: Duration,
    pub lease: Duration,
    pub signal: Option<Object<'env>>,
}

const DEFAULT_LOCK_TIMEOUT: f64 = 5_000.0;
const DEFAULT_WAIT_TIMEOUT: f64 = 5_000.0;
const DEFAULT_RETRY_INTERVAL: f64 = 125.0;
/// The lease of a lock held with `lockTimeout: Infinity` and no `lease`.
const DEFAULT_RENEWED_LEASE: f64 = 30_000.0;
/// The default lease is `lockTimeout`, but not shorter than this: a lease of a few
/// hundred ms must be renewed within a few dozen, and a busy process can lose it
/// before its callback even starts.
const SHORTEST_DEFAULT_LEASE: Duration = Duration::from_secs(1);
/// Timers beyond this are treated as `Infinity` (about 24 days, Node's own timer limit).
const LONGEST: f64 = 2_147_483_647.0;

/// The options argument itself: `undefined` / `null` mean defaults.
pub fn options_object<'env>(
    value: Option<Unknown<'env>>,
    name: &str,
) -> Result<Option<Object<'env>>, LockError> {
    let Some(value) = value else { return Ok(None) };
    match value.get_type() {
        Ok(ValueType::Undefined) | Ok(ValueType::Null) => Ok(None),
        Ok(ValueType::Object) => Ok(Some(
            unsafe { value.cast::<Object>() }.map_err(|_| not_object(name, value))?,
        )),
        _ => Err(not_object(name, value)),
    }
}

fn not_object(name: &str, value: Unknown<'_>) -> LockError {
    LockError::type_error(format!("{name} must be an object, got {}", describe(value)))
}

/// `doWhileLocked`'s options.
pub fn hold_options<'env>(value: Option<Unknown<'env>>) -> Result<HoldOptions<'env>, LockError> {
    let options = options_object(value, "options")?;
    let o = options.as_ref();
    let lock_timeout = millis(o, "lockTimeout", DEFAULT_LOCK_TIMEOUT, true)?;
    let renewed = Duration::from_millis(DEFAULT_RENEWED_LEASE as u64);
    let default_lease = lock_timeout.map_or(renewed, |t| t.max(SHORTEST_DEFAULT_LEASE));
    wait_options(o, lock_timeout, lease(o)?.unwrap_or(default_lease))
}

/// `acquire`'s and `tryAcquire`'s options: those of `doWhileLocked` without
/// `lockTimeout` (a handle is held until it is released).
pub fn handle_options<'env>(value: Option<Unknown<'env>>) -> Result<HoldOptions<'env>, LockError> {
    let options = options_object(value, "options")?;
    let o = options.as_ref();
    // Ignoring it would leave a caller who expects the hold to end on its own holding
    // the key until release(); the original has no handles, so no code relies on it.
    if field(o, "lockTimeout")?.is_some() {
        return Err(LockError::value_error(
            "options.lockTimeout is not an option of a handle, which is held until release(); options.lease bounds how long a holder that dies keeps the key",
        ));
    }
    let renewed = Duration::from_millis(DEFAULT_RENEWED_LEASE as u64);
    wait_options(o, None, lease(o)?.unwrap_or(renewed))
}

fn wait_options<'env>(
    o: Option<&Object<'env>>,
    lock_timeout: Option<Duration>,
    lease: Duration,
) -> Result<HoldOptions<'env>, LockError> {
    let wait_timeout = millis(o, "waitTimeout", DEFAULT_WAIT_TIMEOUT, true)?;
    let retry_interval = millis(o, "retryInterval", DEFAULT_RETRY_INTERVAL, false)?;
    let signal = match field(o, "signal")? {
        None => None,
        Some(signal) => Some(abort_signal::check(signal)?),
    };
    Ok(HoldOptions {
        lock_timeout,
        wait_timeout: wait_timeout.unwrap_or(Duration::from_millis(LONGEST as u64)),
        retry_interval: retry_interval
            .unwrap_or(Duration::from_millis(DEFAULT_RETRY_INTERVAL as u64)),
        lease,
        signal,
    })
}

/// `lock(ids, { lease })`: `None` means a lock that never expires, as in the original.
pub fn lock_lease(value: Option<Unknown<'_>>) -> Result<Option<Duration>, LockError> {
    let options = options_object(value, "options")?;
    lease(options.as_ref())
}

/// `options.lease`, if given: a number of milliseconds greater than 0, at most `LONGEST`.
fn lease(o: Option<&Object<'_>>) -> Result<Option<Duration>, LockError> {
    match field(o, "lease")? {
        None => Ok(None),
        Some(value) => lease_millis(value, "options.lease").map(Some),
    }
}

/// A lease given as a number of milliseconds: greater than 0 and at most `LONGEST`;
/// `name` is what the error calls it.
pub fn lease_millis(value: Unknown<'_>, name: &str) -> Result<Duration, LockError> {
    if value.get_type().ok() != Some(ValueType::Number) {
        return Err(LockError::type_error(format!(
            "{name} must be a number, got {}",
            describe(value)
        )));
    }
    let ms: f64 = unsafe { value.cast() }
        .map_err(|_| LockError::type_error(format!("{name} must be a number")))?;
    if !(ms.is_finite() && ms > 0.0 && ms <= LONGEST) {
        return Err(LockError::range_error(format!(
            "{name} must be a number of milliseconds greater than 0 and at most {LONGEST}, got {}",
            lock_core::js_number_to_string(ms)
        )));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

/// An error of a field of `options.writeConcern`, of the same kind, naming it in full.
fn in_write_concern(error: LockError) -> LockError {
    match error {
        LockError::InvalidArgument { problem, message } => LockError::InvalidArgument {
            problem,
            message: message.replacen("options.", "options.writeConcern.", 1),
        },
        other => other,
    }
}

/// A number of milliseconds: `None` for `Infinity` where `infinite_ok`.
pub fn millis(
    options: Option<&Object<'_>>,
    name: &str,
    default: f64,
    infinite_ok: bool,
) -> Result<Option<Duration>, LockError> {
    let value = match field(options, name)? {
        None => default,
        Some(v) => {
            if v.get_type().ok() != Some(ValueType::Number) {
                return Err(LockError::type_error(format!(
                    "options.{name} must be a number, got {}",
                    describe(v)
                )));
            }
            unsafe { v.cast::<f64>() }
                .map_err(|_| LockError::type_error(format!("options.{name} must be a number")))?
        }
    };
    if value.is_nan() || value < 0.0 {
        return Err(LockError::range_error(format!(
            "options.{name} must be a number of milliseconds >= 0, got {}",
            lock_core::js_number_to_string(value)
        )));
    }
    if value.is_infinite() || value > LONGEST {
        if infinite_ok {
            return Ok(None);
        }
        return Err(LockError::range_error(format!(
            "options.{name} must be a finite number of milliseconds (at most {LONGEST})"
        )));
    }
    Ok(Some(Duration::from_micros((value * 1000.0) as u64)))
}

/// A property that is present (not `undefined`).
pub fn field<'env>(
    options: Option<&Object<'env>>,
    name: &str,
) -> Result<Option<Unknown<'env>>, LockError> {
    let Some(options) = options else {
        return Ok(None);
    };
    let value: Unknown = options
        .get_named_property(name)
        .map_err(|_| LockError::type_error(format!("options.{name} could not be read")))?;
    Ok(match value.get_type() {
        Ok(ValueType::Undefined) => None,
        _ => Some(value),
    })
}

/// The constructor's `maxPoolSize`: a whole number of connections, at least 1.
pub fn pool_size(options: Option<&Object<'_>>) -> Result<Option<u32>, LockError> {
    let Some(value) = field(options, "maxPoolSize")? else {
        return Ok(None);
    };
    if value.get_type().ok() != Some(ValueType::Number) {
        return Err(LockError::type_error(format!(
            "options.maxPoolSize must be a number, got {}",
            describe(value)
        )));
    }
    let size: f64 = unsafe { value.cast() }
        .map_err(|_| LockError::type_error("options.maxPoolSize must be a number"))?;
    if !(size.fract() == 0.0 && (1.0..=u32::MAX as f64).contains(&size)) {
        return Err(LockError::range_error(format!(
            "options.maxPoolSize must be a whole number of connections from 1 to {}, got {}",
            u32::MAX,
            lock_core::js_number_to_string(size)
        )));
    }
    Ok(Some(size as u32))
}

/// A string option, or `None`.
pub fn string(options: Option<&Object<'_>>, name: &str) -> Result<Option<String>, LockError> {
    match field(options, name)? {
        None => Ok(None),
        Some(v) if v.get_type().ok() == Some(ValueType::Null) => Ok(None),
        Some(v) if v.get_type().ok() == Some(ValueType::String) => {
            Ok(unsafe { v.cast::<String>() }.ok())
        }
        Some(v) => Err(LockError::type_error(format!(
            "options.{name} must be a string, got {}",
            describe(v)
        ))),
    }
}

/// The constructor's `writeConcern` option: `{ w, journal, wtimeoutMS }`.
pub fn write_concern(options: Option<&Object<'_>>) -> Result<Option<WriteConcern>, LockError> {
    let Some(value) = field(options, "writeConcern")? else {
        return Ok(None);
    };
    let bad = |why: &str| LockError::type_error(format!("options.writeConcern{why}"));
    if value.get_type().ok() != Some(ValueType::Object) {
        return Err(bad(" must be an object like { w: 'majority' }"));
    }
    let wc: Object = unsafe { value.cast() }.map_err(|_| bad(" must be an object"))?;
    let w = match field(Some(&wc), "w")? {
        None => None,
        Some(w) => match w.get_type().ok() {
            Some(ValueType::String) => {
                let tag: String =
                    unsafe { w.cast() }.map_err(|_| bad(".w must be a number or a string"))?;
                Some(if tag == "majority" {
                    Acknowledgment::Majority
                } else {
                    Acknowledgment::Custom(tag)
                })
            }
            Some(ValueType::Number) => {
                let n: f64 =
                    unsafe { w.cast() }.map_err(|_| bad(".w must be a number or a string"))?;
                // 0 asks for no acknowledgment, which a lock cannot do without: the
                // driver refuses it at every write, so refuse it here, at once.
                if !(n >= 1.0 && n <= i32::MAX as f64 && n.fract() == 0.0) {
                    return Err(LockError::range_error(format!(
                        "options.writeConcern.w must be an integer from 1 to {}, as a lock needs acknowledged writes, got {}",
                        i32::MAX,
                        lock_core::js_number_to_string(n)
                    )));
                }
                Some(Acknowledgment::Nodes(n as u32))
            }
            _ => return Err(bad(".w must be a number or a string")),
        },
    };
    let journal = match field(Some(&wc), "journal")?.or(field(Some(&wc), "j")?) {
        None => None,
        Some(j) if j.get_type().ok() == Some(ValueType::Boolean) => {
            unsafe { j.cast::<bool>() }.ok()
        }
        Some(_) => return Err(bad(".journal must be a boolean")),
    };
    let timeout = millis(Some(&wc), "wtimeoutMS", 0.0, false)
        .map_err(in_write_concern)?
        .filter(|d| !d.is_zero());
    Ok(Some(
        WriteConcern::builder()
            .w(w)
            .journal(journal)
            .w_timeout(timeout)
            .build(),
    ))
}
