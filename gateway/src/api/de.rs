//! Deserializers for the leaves of a request body. Each answers in the
//! client's terms ("must be an integer, not a string"); the path to the
//! field (`messages[0].role`) comes from `serde_path_to_error` around it.
//! `null` counts as absent everywhere: clients send it for "default".

use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The JSON type of `v`, as the messages name it.
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong<E: de::Error>(want: &str, got: &Value) -> E {
    E::custom(format!("must be {want}, not {}", kind(got)))
}

/// The value, or `None` for `null`.
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        v => Some(v),
    })
}

pub(crate) fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match present(d)? {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(v) => Err(wrong("a boolean", &v)),
    }
}

pub(crate) fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match present(d)? {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong("a string", &v)),
    }
}

pub(crate) fn number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match present(d)? {
        None => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong("a number", &v)),
    }
}

/// A whole number, also when written `2.0`.
pub(crate) fn as_integer(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        _ => None,
    }
}

pub(crate) fn integer<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match present(d)? {
        None => Ok(None),
        Some(v) => as_integer(&v)
            .map(Some)
            .ok_or_else(|| wrong("an integer", &v)),
    }
}

/// `stop`: a string or a list of strings.
pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    const WANT: &str = "a string or a list of strings";
    match present(d)? {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(wrong(WANT, &other)),
            })
            .collect(),
        Some(v) => Err(wrong(WANT, &v)),
    }
}

/// Any object, kept as it is (`logit_bias`).
pub(crate) fn object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    match present(d)? {
        Some(v) if !v.is_object() => Err(de::Error::custom("must be an object")),
        v => Ok(v),
    }
}

/// Visitor methods that refuse a JSON type with `$msg`.
macro_rules! refuse {
    ($de:lifetime, $msg:expr; $($kind:ident),*) => { $(refuse!(@ $de, $msg, $kind);)* };
    (@ $de:lifetime, $msg:expr, bool) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Err(E::custom($msg))
        }
    };
    (@ $de:lifetime, $msg:expr, number) => {
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Err(E::custom($msg))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Err(E::custom($msg))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom($msg))
        }
    };
    (@ $de:lifetime, $msg:expr, str) => {
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom($msg))
        }
    };
    (@ $de:lifetime, $msg:expr, unit) => {
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Err(E::custom($msg))
        }
    };
    (@ $de:lifetime, $msg:expr, seq) => {
        fn visit_seq<A: serde::de::SeqAccess<$de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom($msg))
        }
    };
    (@ $de:lifetime, $msg:expr, map) => {
        fn visit_map<A: serde::de::MapAccess<$de>>(self, _: A) -> Result<Self::Value, A::Error> {
            Err(serde::de::Error::custom($msg))
        }
    };
}
pub(crate) use refuse;

/// A struct read from a JSON object only ("must be an object" otherwise):
/// serde's derived visitors also take a list of the values in field
/// order, which no client means.
#[derive(Debug)]
pub(crate) struct Obj<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Obj<T>, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
            refuse!('de, "must be an object"; bool, number, str, unit, seq);
        }
        d.deserialize_any(V(PhantomData)).map(Obj)
    }
}
