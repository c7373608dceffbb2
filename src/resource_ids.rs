//! `resourceIds` from JavaScript: an array of ids, or one id. An id is a string, a
//! finite number, or a BSON scalar the driver stores as it is (`ObjectId`, `Long`,
//! `Decimal128`, a UUID, a `Date`, a boolean, a bigint), as the original accepted them;
//! plain objects, which could carry query operators, are refused before they can
//! reach a query.

use std::str::FromStr;

use lock_core::mongodb::bson::{
    oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Decimal128,
};
use lock_core::{LockError, LockKey, ResourceId};
use napi::bindgen_prelude::{
    BigInt, FromNapiValue, Function, JsObjectValue, Object, ToNapiValue, Uint8Array,
};
use napi::{sys, Env, JsValue, Unknown, ValueType};

use crate::retained_value::RetainedValue;

pub struct ResourceIds {
    pub ids: Vec<ResourceId>,
    pub key: LockKey,
    /// The single id itself when it is not a string or a number, to hand back.
    single: Option<RetainedValue>,
}

impl ResourceIds {
    /// The key as JavaScript is given it back (`lock()`, `context.key`, `handle.key`).
    pub fn js_key(&mut self) -> JsKey {
        match self.single.take() {
            Some(value) => JsKey::Value(value),
            None => JsKey::Key(self.key.clone()),
        }
    }
}

/// The key for JavaScript: the string or number, or the caller's own id object (the
/// same `ObjectId`, as the original resolves `lock([id])` with `id`).
pub enum JsKey {
    Key(LockKey),
    Value(RetainedValue),
}

impl ToNapiValue for JsKey {
    unsafe fn to_napi_value(env: sys::napi_env, value: Self) -> napi::Result<sys::napi_value> {
        match value {
            JsKey::Value(value) => RetainedValue::to_napi_value(env, value),
            JsKey::Key(LockKey::Str(s)) => String::to_napi_value(env, s),
            JsKey::Key(LockKey::Num(n)) => f64::to_napi_value(env, n),
            JsKey::Key(LockKey::Other(b)) => {
                String::to_napi_value(env, b.into_relaxed_extjson().to_string())
            }
        }
    }
}

pub fn parse(value: Unknown<'_>) -> Result<ResourceIds, LockError> {
    // The element read once: a getter may answer differently the second time.
    let (ids, first) = match as_array(value) {
        Some(array) => {
            // Not sized from `length`: a sparse array may claim billions of elements.
            let mut ids = Vec::new();
            let mut first = None;
            for index in 0..length(&array)? {
                let element: Unknown = array.get_element(index).map_err(|_| not_ids())?;
                ids.push(element_of(element, index)?);
                first = first.or(Some(element));
            }
            (ids, first)
        }
        None => (vec![single(value)?], Some(value)),
    };
    let key = LockKey::from_ids(&ids)?;
    let single = match (&key, ids.len(), first) {
        (LockKey::Other(_), 1, Some(first)) => Some(retain(first)?),
        _ => None,
    };
    Ok(ResourceIds { ids, key, single })
}

/// `value` as an array, if `Array.isArray(value)` holds: a `Proxy` of an array too
/// (Vue's `reactive`, MobX, Immer drafts), which `napi_is_array` does not count.
fn as_array(value: Unknown<'_>) -> Option<Object<'_>> {
    let is_array = value.is_array().unwrap_or(false) || array_is_array(value).unwrap_or(false);
    is_array
        .then(|| unsafe { value.cast::<Object>() }.ok())
        .flatten()
}

fn array_is_array(value: Unknown<'_>) -> napi::Result<bool> {
    if value.get_type()? != ValueType::Object {
        return Ok(false);
    }
    let env = Env::from_raw(value.value().env);
    // A function, read as the object it also is, to reach its `isArray`.
    let array: Object = unsafe {
        env.get_global()?
            .get_named_property::<Unknown>("Array")?
            .cast()?
    };
    let is_array: Function<Unknown, bool> = array.get_named_property("isArray")?;
    is_array.call(value)
}

fn length(array: &Object<'_>) -> Result<u32, LockError> {
    let length: f64 = array.get_named_property("length").map_err(|_| not_ids())?;
    Ok(length as u32)
}

fn retain(element: Unknown<'_>) -> Result<RetainedValue, LockError> {
    unsafe { RetainedValue::from_napi_value(element.value().env, element.raw()) }
        .map_err(|_| not_ids())
}

fn single(value: Unknown<'_>) -> Result<ResourceId, LockError> {
    scalar(value)
        .ok_or_else(|| LockError::type_error(format!("{NOT_IDS}, got {}", describe(value))))
}

fn element_of(value: Unknown<'_>, index: u32) -> Result<ResourceId, LockError> {
    scalar(value).ok_or_else(|| {
        LockError::type_error(format!(
            "resourceIds[{index}] must be a string, a finite number or a BSON scalar such as an ObjectId, got {}",
            describe(value)
        ))
    })
}

fn scalar(value: Unknown<'_>) -> Option<ResourceId> {
    let bson = match value.get_type().ok()? {
        ValueType::String => return Some(ResourceId::Str(unsafe { value.cast::<String>() }.ok()?)),
        ValueType::Number => {
            let n: f64 = unsafe { value.cast::<f64>() }.ok()?;
            return n.is_finite().then_some(ResourceId::Num(n));
        }
        ValueType::Boolean => Bson::Boolean(unsafe { value.cast::<bool>() }.ok()?),
        ValueType::BigInt => {
            let (n, lossless) = unsafe { value.cast::<BigInt>() }.ok()?.get_i64();
            lossless.then_some(Bson::Int64(n))?
        }
        ValueType::Object => bson_scalar(unsafe { value.cast::<Object>() }.ok()?)?,
        _ => return None,
    };
    let text = value
        .coerce_to_string()
        .ok()?
        .into_utf8()
        .ok()?
        .into_owned()
        .ok()?;
    Some(ResourceId::Other { value: bson, text })
}

/// A `Date`, or a value of the `bson` package (the driver's) that is a scalar.
fn bson_scalar(object: Object<'_>) -> Option<Bson> {
    if let Some(time) = date_millis(&object) {
        return time
            .is_finite()
            .then(|| Bson::DateTime(DateTime::from_millis(time as i64)));
    }
    let kind: String = object
        .get_named_property::<Unknown>("_bsontype")
        .ok()
        .filter(|v| v.get_type().ok() == Some(ValueType::String))
        .and_then(|v| unsafe { v.cast() }.ok())?;
    match kind.as_str() {
        "ObjectId" | "ObjectID" => Some(Bson::ObjectId(
            ObjectId::parse_str(call::<String>(&object, "toHexString")?).ok()?,
        )),
        "Long" => Some(Bson::Int64(
            call::<String>(&object, "toString")?.parse().ok()?,
        )),
        "Decimal128" => Some(Bson::Decimal128(
            Decimal128::from_str(&call::<String>(&object, "toString")?).ok()?,
        )),
        "Binary" => {
            let subtype: u32 = object.get_named_property("sub_type").ok()?;
            let bytes: Uint8Array = object.get_named_property("buffer").ok()?;
            let subtype = BinarySubtype::from(u8::try_from(subtype).ok()?);
            Some(Bson::Binary(Binary {
                subtype,
                bytes: bytes.to_vec(),
            }))
        }
        _ => None,
    }
}

/// The time of a `Date`, `NaN` for an invalid one (or one whose `getTime` fails); `None`
/// for any other object.
fn date_millis(object: &Object<'_>) -> Option<f64> {
    object
        .is_date()
        .unwrap_or(false)
        .then(|| call(object, "getTime").unwrap_or(f64::NAN))
}

/// `object.method()`, for the few methods of `bson` values read here.
fn call<T: napi::bindgen_prelude::FromNapiValue>(object: &Object<'_>, method: &str) -> Option<T> {
    let function: Function<(), T> = object.get_named_property(method).ok()?;
    function.apply(object, ()).ok()
}

const NOT_IDS: &str = "resourceIds must be a non-empty array of ids (strings, finite numbers, ObjectIds or other BSON scalars), or one id";

fn not_ids() -> LockError {
    LockError::type_error(NOT_IDS)
}

/// A short description of a bad value for error messages: its type, never its content.
pub fn describe(value: Unknown<'_>) -> &'static str {
    match value.get_type() {
        Ok(ValueType::Undefined) => "undefined",
        Ok(ValueType::Null) => "null",
        Ok(ValueType::Boolean) => "a boolean",
        Ok(ValueType::Number) => match unsafe { value.cast::<f64>() } {
            Ok(n) if n.is_finite() => "a number",
            _ => "a non-finite number",
        },
        Ok(ValueType::String) => "a string",
        Ok(ValueType::Symbol) => "a symbol",
        Ok(ValueType::Object) => match unsafe { value.cast::<Object>() }
            .ok()
            .and_then(|object| date_millis(&object))
        {
            Some(time) if time.is_finite() => "a Date",
            Some(_) => "an invalid Date",
            None => "an object",
        },
        Ok(ValueType::Function) => "a function",
        Ok(ValueType::BigInt) => match unsafe { value.cast::<BigInt>() } {
            Ok(n) if n.get_i64().1 => "a bigint",
            _ => "a bigint beyond 64 bits",
        },
        _ => "an unsupported value",
    }
}
