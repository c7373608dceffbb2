//! `resourceIds` from JavaScript: an array of strings and finite numbers, or one such
//! value. Anything else is refused before it can reach a query.

use lock_core::{LockError, LockKey, ResourceId};
use napi::bindgen_prelude::Array;
use napi::{JsValue, Unknown, ValueType};

pub struct ResourceIds {
    pub ids: Vec<ResourceId>,
    pub key: LockKey,
}

pub fn parse(value: Unknown<'_>) -> Result<ResourceIds, LockError> {
    let ids = if value.is_array().unwrap_or(false) {
        let array: Array = unsafe { value.cast() }.map_err(|_| not_ids())?;
        let mut ids = Vec::with_capacity(array.len() as usize);
        for index in 0..array.len() {
            let element: Unknown = array.get(index).ok().flatten().ok_or_else(not_ids)?;
            ids.push(element_of(element, index)?);
        }
        ids
    } else {
        vec![single(value)?]
    };
    let key = LockKey::from_ids(&ids)?;
    Ok(ResourceIds { ids, key })
}

fn single(value: Unknown<'_>) -> Result<ResourceId, LockError> {
    scalar(value).ok_or_else(not_ids)
}

fn element_of(value: Unknown<'_>, index: u32) -> Result<ResourceId, LockError> {
    scalar(value).ok_or_else(|| {
        LockError::type_error(format!(
            "resourceIds[{index}] must be a string or a finite number, got {}",
            describe(value)
        ))
    })
}

fn scalar(value: Unknown<'_>) -> Option<ResourceId> {
    match value.get_type().ok()? {
        ValueType::String => {
            let s: String = unsafe { value.cast::<String>() }.ok()?;
            Some(ResourceId::Str(s))
        }
        ValueType::Number => {
            let n: f64 = unsafe { value.cast::<f64>() }.ok()?;
            n.is_finite().then_some(ResourceId::Num(n))
        }
        _ => None,
    }
}

fn not_ids() -> LockError {
    LockError::type_error(
        "resourceIds must be a non-empty array of strings and finite numbers, or one string or finite number",
    )
}

/// A short description of a bad value for error messages: its type, never its content.
pub fn describe(value: Unknown<'_>) -> &'static str {
    match value.get_type() {
        Ok(ValueType::Undefined) => "undefined",
        Ok(ValueType::Null) => "null",
        Ok(ValueType::Boolean) => "a boolean",
        Ok(ValueType::Number) => "a non-finite number",
        Ok(ValueType::String) => "a string",
        Ok(ValueType::Symbol) => "a symbol",
        Ok(ValueType::Object) => "an object",
        Ok(ValueType::Function) => "a function",
        Ok(ValueType::BigInt) => "a bigint",
        _ => "an unsupported value",
    }
}
