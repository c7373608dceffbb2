//! The lock key: how a list of resource ids becomes the `id` stored in `_locks`.
//!
//! This must match the original JavaScript class byte for byte, because processes
//! running the original and processes running this crate share one collection and
//! exclude each other only if they derive the same key.

use mongodb::bson::Bson;

use crate::error::LockError;

/// One element of `resourceIds`: a string, a finite number, or another BSON scalar
/// (an `ObjectId`, a boolean, a date, a 64-bit integer…) stored as it is. Objects
/// are refused: the original used them as they were, which turned
/// `unlock([{ $gt: '' }])` into a query operator that deleted somebody else's lock.
#[derive(Debug, Clone, PartialEq)]
pub enum ResourceId {
    Str(String),
    Num(f64),
    /// `text` is JavaScript's `String(value)`, used where several ids are joined.
    Other {
        value: Bson,
        text: String,
    },
}

/// The value stored in the `id` field of a lock document.
#[derive(Debug, Clone, PartialEq)]
pub enum LockKey {
    Str(String),
    Num(f64),
    /// A single id of another BSON scalar type, kept as it is (as the original keeps
    /// `[user._id]` an `ObjectId`).
    Other(Bson),
}

impl LockKey {
    /// Derives the key the way the original does: one element keeps its own type,
    /// several are joined with `#` (numbers printed as JavaScript prints them).
    pub fn from_ids(ids: &[ResourceId]) -> Result<LockKey, LockError> {
        match ids {
            [] => Err(LockError::value_error("resourceIds must not be empty")),
            [ResourceId::Str(s)] => Ok(LockKey::Str(s.clone())),
            [ResourceId::Num(n)] => Ok(LockKey::Num(*n)),
            [ResourceId::Other { value, .. }] => Ok(LockKey::Other(value.clone())),
            many => Ok(LockKey::Str(join_ids(many, "#"))),
        }
    }

    /// The key as BSON, typed as the Node.js driver would type a JS value:
    /// integral numbers in the int32 range become int32, others double.
    pub fn to_bson(&self) -> Bson {
        match self {
            LockKey::Str(s) => Bson::String(s.clone()),
            LockKey::Num(n) => number_to_bson(*n),
            LockKey::Other(value) => value.clone(),
        }
    }

    /// A name that is the same exactly for keys MongoDB's unique index treats as one:
    /// 123 and 123.0 are one key, 0 and -0 too, '123' another.
    pub(crate) fn identity(&self) -> String {
        match self {
            LockKey::Str(s) => format!("s:{s}"),
            LockKey::Num(n) => format!("n:{}", n + 0.0),
            // The index compares numbers by value, whatever their BSON type.
            LockKey::Other(Bson::Int64(n)) if (*n as f64) as i64 == *n => {
                format!("n:{}", *n as f64)
            }
            LockKey::Other(value) => format!("b:{}", value.clone().into_relaxed_extjson()),
        }
    }
}

/// `String(resourceIds)` in JavaScript: elements joined with `,`. The original's
/// `Was not able to delete …` message prints the ids this way.
pub fn ids_to_string(ids: &[ResourceId]) -> String {
    join_ids(ids, ",")
}

fn join_ids(ids: &[ResourceId], separator: &str) -> String {
    ids.iter()
        .map(|id| match id {
            ResourceId::Str(s) => s.clone(),
            ResourceId::Num(n) => js_number_to_string(*n),
            ResourceId::Other { text, .. } => text.clone(),
        })
        .collect::<Vec<_>>()
        .join(separator)
}

pub(crate) fn number_to_bson(n: f64) -> Bson {
    if n.fract() == 0.0 && n >= i32::MIN as f64 && n <= i32::MAX as f64 && !is_negative_zero(n) {
        Bson::Int32(n as i32)
    } else {
        Bson::Double(n)
    }
}

fn is_negative_zero(n: f64) -> bool {
    n == 0.0 && n.is_sign_negative()
}

/// Number-to-string as ECMAScript's `Number::toString` does it for finite values:
/// shortest round-trip digits, plain notation for 1e-6 <= |n| < 1e21, otherwise
/// exponent notation with an explicit sign (`1e+21`, `1.5e-7`).
pub fn js_number_to_string(n: f64) -> String {
    if n == 0.0 {
        return "0".into();
    }
    if !n.is_finite() {
        let name = if n.is_nan() { "NaN" } else { "Infinity" };
        return format!("{}{name}", if n < 0.0 { "-" } else { "" });
    }
    let abs = n.abs();
    if (1e-6..1e21).contains(&abs) {
        // Rust's `Display` for f64 prints the shortest round-trip digits in plain notation.
        return format!("{n}");
    }
    let formatted = format!("{n:e}");
    match formatted.split_once('e') {
        Some((mantissa, exponent)) if !exponent.starts_with('-') => {
            format!("{mantissa}e+{exponent}")
        }
        _ => formatted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> ResourceId {
        ResourceId::Str(v.into())
    }

    #[test]
    fn one_element_keeps_its_type() {
        assert_eq!(
            LockKey::from_ids(&[ResourceId::Num(123.0)])
                .unwrap()
                .to_bson(),
            Bson::Int32(123)
        );
        assert_eq!(
            LockKey::from_ids(&[s("a")]).unwrap().to_bson(),
            Bson::String("a".into())
        );
        assert_eq!(
            LockKey::from_ids(&[ResourceId::Num(1.5)])
                .unwrap()
                .to_bson(),
            Bson::Double(1.5)
        );
        assert_eq!(
            LockKey::from_ids(&[ResourceId::Num(3e9)])
                .unwrap()
                .to_bson(),
            Bson::Double(3e9)
        );
    }

    #[test]
    fn several_elements_are_joined_with_hash() {
        let key = LockKey::from_ids(&[s("a"), ResourceId::Num(1.0), ResourceId::Num(0.5)]).unwrap();
        assert_eq!(key, LockKey::Str("a#1#0.5".into()));
        assert_eq!(ids_to_string(&[s("a"), s("b")]), "a,b");
    }

    #[test]
    fn other_scalars_keep_their_type_alone_and_print_as_javascript_joined() {
        let oid = mongodb::bson::oid::ObjectId::new();
        let id = ResourceId::Other {
            value: Bson::ObjectId(oid),
            text: oid.to_hex(),
        };
        assert_eq!(
            LockKey::from_ids(std::slice::from_ref(&id))
                .unwrap()
                .to_bson(),
            Bson::ObjectId(oid)
        );
        let joined = LockKey::from_ids(&[s("user"), id]).unwrap();
        assert_eq!(joined, LockKey::Str(format!("user#{}", oid.to_hex())));
        let long = LockKey::Other(Bson::Int64(5)).identity();
        assert_eq!(long, LockKey::Num(5.0).identity());
    }

    #[test]
    fn empty_ids_are_a_bad_value() {
        assert!(matches!(
            LockKey::from_ids(&[]),
            Err(LockError::InvalidArgument {
                problem: crate::error::Argument::Value,
                ..
            })
        ));
    }

    #[test]
    fn keys_equal_in_the_unique_index_have_one_identity() {
        let num = |n: f64| LockKey::Num(n).identity();
        assert_eq!(num(0.0), num(-0.0));
        assert_eq!(
            num(123.0),
            LockKey::from_ids(&[ResourceId::Num(123.0)])
                .unwrap()
                .identity()
        );
        assert_ne!(num(123.0), LockKey::Str("123".into()).identity());
    }

    #[test]
    fn numbers_print_like_javascript() {
        assert_eq!(js_number_to_string(1e21), "1e+21");
        assert_eq!(js_number_to_string(123456789012.0), "123456789012");
        assert_eq!(js_number_to_string(-0.0), "0");
        assert_eq!(js_number_to_string(1.5e-7), "1.5e-7");
        assert_eq!(js_number_to_string(0.000001), "0.000001");
        assert_eq!(js_number_to_string(-42.25), "-42.25");
        assert_eq!(js_number_to_string(f64::INFINITY), "Infinity");
        assert_eq!(js_number_to_string(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(js_number_to_string(f64::NAN), "NaN");
    }
}
