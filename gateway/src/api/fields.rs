//! Reading known fields from a JSON object one by one, so that a wrong
//! type or value is an error naming the field, and whatever is left over
//! is an unknown field (logged, then ignored).

use serde_json::{Map, Value};

use crate::error::GatewayError;

pub(crate) struct Fields {
    map: Map<String, Value>,
}

fn wrong(field: &str, want: &str, got: &Value) -> GatewayError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    GatewayError::field(field, format!("must be {want}, not {kind}"))
}

impl Fields {
    pub(crate) fn new(map: Map<String, Value>) -> Fields {
        Fields { map }
    }

    /// Takes a field; `null` counts as absent (clients send it for
    /// "default").
    pub(crate) fn take(&mut self, name: &str) -> Option<Value> {
        match self.map.remove(name) {
            Some(Value::Null) | None => None,
            Some(v) => Some(v),
        }
    }

    pub(crate) fn bool(&mut self, name: &str) -> Result<Option<bool>, GatewayError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(wrong(name, "a boolean", &v)),
        }
    }

    pub(crate) fn string(&mut self, name: &str) -> Result<Option<String>, GatewayError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(name, "a string", &v)),
        }
    }

    pub(crate) fn f64(&mut self, name: &str) -> Result<Option<f64>, GatewayError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| wrong(name, "a number", &v)),
        }
    }

    /// A whole number (also written `2.0`), in `min..=max`.
    pub(crate) fn int(
        &mut self,
        name: &str,
        min: i64,
        max: i64,
    ) -> Result<Option<i64>, GatewayError> {
        let Some(v) = self.take(name) else {
            return Ok(None);
        };
        let n = match &v {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            _ => None,
        };
        let Some(n) = n else {
            return Err(wrong(name, "an integer", &v));
        };
        if n < min || n > max {
            return Err(GatewayError::field(
                name,
                format!("{n} is out of range: must be from {min} to {max}"),
            ));
        }
        Ok(Some(n))
    }

    /// A number in `min..=max`.
    pub(crate) fn number_in(
        &mut self,
        name: &str,
        min: f64,
        max: f64,
    ) -> Result<Option<f64>, GatewayError> {
        match self.f64(name)? {
            Some(x) if !(x >= min && x <= max) => Err(GatewayError::field(
                name,
                format!("{x} is out of range: must be from {min} to {max}"),
            )),
            x => Ok(x),
        }
    }

    /// `stop`: a string or a list of strings.
    pub(crate) fn strings(&mut self, name: &str) -> Result<Vec<String>, GatewayError> {
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s]),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(wrong(name, "a string or a list of strings", &other)),
                })
                .collect(),
            Some(v) => Err(wrong(name, "a string or a list of strings", &v)),
        }
    }

    /// The names of fields nobody took.
    pub(crate) fn leftover(self) -> Vec<String> {
        self.map.into_iter().map(|(k, _)| k).collect()
    }
}
