//! The one shape of a config value that cannot be used.

use std::fmt;

/// A config value that cannot be used: which key, what it was, why.
///
/// Every section's `validate()` in the workspace returns this shape — the
/// tenant policy here, `[engine]` and `[kv]` in `cake-engine`, the
/// gateway's own sections — so the gateway reports each alike and nothing
/// parses an error's text back apart. It lives in this crate because it
/// is the one every config validator may depend on (`policy` depends on
/// no workspace crate; `engine` and `gateway` depend on it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {value}: {reason}")]
pub struct Invalid {
    /// The key as the file spells it: `kv.chunk_tokens`,
    /// `tenants[0].limits.max_concurrent`.
    pub field: String,
    /// The value given, as the file spells it (strings quoted).
    pub value: String,
    /// What is wrong with it, or what to write instead.
    pub reason: String,
}

impl Invalid {
    /// `field = value: reason`.
    pub fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Invalid {
        Invalid {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The same error seen from the table above: `field` becomes
    /// `{table}.{field}` (`weight` in `tenants[0]`: `tenants[0].weight`).
    pub fn within(self, table: &str) -> Invalid {
        Invalid {
            field: format!("{table}.{}", self.field),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_field_value_and_reason_and_nests() {
        let e = Invalid::new("weight", 0, "must be at least 1");
        assert_eq!(e.to_string(), "weight = 0: must be at least 1");
        let e = e.within("tenants[2]");
        assert_eq!(e.field, "tenants[2].weight");
        assert_eq!(e.value, "0");
        assert_eq!(e.reason, "must be at least 1");
        assert_eq!(e.to_string(), "tenants[2].weight = 0: must be at least 1");
    }
}
