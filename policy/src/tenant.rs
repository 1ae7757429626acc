//! A tenant's admission policy (DESIGN.md section 5): its fair share,
//! priority, limits, TTFT SLO and cache group. API keys are not here: the
//! gateway owns them (and stores only their hashes).
//!
//! Field names follow the gateway's `[[tenants]]` table, with durations in
//! milliseconds (`ttft_slo_ms`, `queue_deadline_ms`) and limits under
//! `limits`. Unknown fields are errors.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::fair::Share;
use crate::invalid::Invalid;
use crate::limits::TenantLimits;

/// One tenant's policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "RawTenantPolicy")]
pub struct TenantPolicy {
    /// Name in metrics and logs; unique.
    pub name: String,
    /// Share of contended workers relative to tenants of the same priority
    /// (at least 1).
    pub weight: u32,
    /// Higher is served first.
    pub priority: u8,
    /// Rate, concurrency and size limits.
    pub limits: TenantLimits,
    /// Time-to-first-token objective; requests that cannot meet it are shed.
    /// `None`: never shed (queue bounds still apply).
    pub ttft_slo: Option<Duration>,
    /// Longest a request may wait in the gateway's queue; `None`: the
    /// gateway's default.
    pub queue_deadline: Option<Duration>,
    /// Tenants in one group share cached prefixes. Defaults to the tenant's
    /// own name: a shared cache leaks, through timing, what others sent.
    pub cache_group: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantPolicy {
    name: String,
    #[serde(default = "one")]
    weight: u32,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    limits: TenantLimits,
    #[serde(default)]
    ttft_slo_ms: Option<u64>,
    #[serde(default)]
    queue_deadline_ms: Option<u64>,
    #[serde(default)]
    cache_group: Option<String>,
}

fn one() -> u32 {
    1
}

impl From<RawTenantPolicy> for TenantPolicy {
    fn from(r: RawTenantPolicy) -> Self {
        let cache_group = match r.cache_group {
            Some(g) if !g.is_empty() => g,
            _ => r.name.clone(),
        };
        TenantPolicy {
            name: r.name,
            weight: r.weight,
            priority: r.priority,
            limits: r.limits,
            ttft_slo: r.ttft_slo_ms.map(Duration::from_millis),
            queue_deadline: r.queue_deadline_ms.map(Duration::from_millis),
            cache_group,
        }
    }
}

/// A field of a [`TenantPolicy`] with a bad value: the tenant's name and
/// the [`Invalid`] field (as spelled inside the tenant's table), value and
/// reason. It reads as that [`Invalid`] (`e.field`, `e.reason`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant:?}: {error}")]
pub struct InvalidTenant {
    /// The tenant's name.
    pub tenant: String,
    /// The field (`limits.max_concurrent`), its value and the reason.
    pub error: Invalid,
}

impl std::ops::Deref for InvalidTenant {
    type Target = Invalid;

    fn deref(&self) -> &Invalid {
        &self.error
    }
}

impl TenantPolicy {
    /// A policy with weight 1, priority 0, no limits and no SLO.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        TenantPolicy {
            cache_group: name.clone(),
            name,
            weight: 1,
            priority: 0,
            limits: TenantLimits::default(),
            ttft_slo: None,
            queue_deadline: None,
        }
    }

    /// The tenant's place in the fair queue.
    pub fn share(&self) -> Share {
        Share {
            priority: self.priority,
            weight: self.weight,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidTenant> {
        let bad = |field: &str, value: &dyn fmt::Debug, reason: &str| InvalidTenant {
            tenant: self.name.clone(),
            error: Invalid::new(field, format!("{value:?}"), reason),
        };
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !label_ok(&self.name) {
            return Err(bad(
                "name",
                &self.name,
                "must be 1 to 64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        if self.weight == 0 {
            return Err(bad("weight", &self.weight, "must be at least 1"));
        }
        if self.cache_group.is_empty() {
            return Err(bad("cache_group", &self.cache_group, "must not be empty"));
        }
        let l = &self.limits;
        if let Some(r) = l.requests_per_s
            && !(r.is_finite() && r > 0.0)
        {
            return Err(bad(
                "limits.requests_per_s",
                &r,
                "must be above 0 (leave it out for no limit)",
            ));
        }
        let positive = [
            ("limits.prompt_tokens_per_min", l.prompt_tokens_per_min),
            ("limits.max_concurrent", l.max_concurrent.map(u64::from)),
            ("limits.max_prompt_tokens", l.max_prompt_tokens),
        ];
        for (field, v) in positive {
            if v == Some(0) {
                return Err(bad(
                    field,
                    &0,
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        if self.ttft_slo == Some(Duration::ZERO) {
            return Err(bad(
                "ttft_slo_ms",
                &0,
                "must be at least 1 (leave it out for no SLO)",
            ));
        }
        if self.queue_deadline == Some(Duration::ZERO) {
            return Err(bad(
                "queue_deadline_ms",
                &0,
                "must be at least 1 (leave it out for the default)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde::de::value::{Error, MapDeserializer};
    use serde::de::{self, IntoDeserializer, Visitor};
    use serde::forward_to_deserialize_any;

    use super::*;

    /// A tiny self-describing value, standing in for TOML in tests (the
    /// crate has no format dependency).
    #[derive(Clone)]
    enum V {
        S(&'static str),
        U(u64),
        F(f64),
        M(Vec<(&'static str, V)>),
    }

    impl<'de> de::Deserializer<'de> for V {
        type Error = Error;

        fn deserialize_any<W: Visitor<'de>>(self, v: W) -> Result<W::Value, Error> {
            match self {
                V::S(s) => v.visit_str(s),
                V::U(u) => v.visit_u64(u),
                V::F(f) => v.visit_f64(f),
                V::M(m) => v.visit_map(MapDeserializer::new(m.into_iter())),
            }
        }

        fn deserialize_option<W: Visitor<'de>>(self, v: W) -> Result<W::Value, Error> {
            v.visit_some(self)
        }

        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf unit unit_struct newtype_struct seq tuple
            tuple_struct map struct enum identifier ignored_any
        }
    }

    impl<'de> IntoDeserializer<'de, Error> for V {
        type Deserializer = V;
        fn into_deserializer(self) -> V {
            self
        }
    }

    fn parse(fields: Vec<(&'static str, V)>) -> Result<TenantPolicy, Error> {
        TenantPolicy::deserialize(V::M(fields))
    }

    #[test]
    fn parses_full_policy_with_ms_durations() {
        let p = parse(vec![
            ("name", V::S("team-a")),
            ("weight", V::U(3)),
            ("priority", V::U(2)),
            ("ttft_slo_ms", V::U(1500)),
            ("queue_deadline_ms", V::U(250)),
            ("cache_group", V::S("shared")),
            (
                "limits",
                V::M(vec![
                    ("requests_per_s", V::F(2.5)),
                    ("prompt_tokens_per_min", V::U(60_000)),
                    ("max_concurrent", V::U(8)),
                    ("max_prompt_tokens", V::U(8192)),
                ]),
            ),
        ])
        .unwrap();
        assert_eq!(p.weight, 3);
        assert_eq!(
            p.share(),
            Share {
                priority: 2,
                weight: 3
            }
        );
        assert_eq!(p.ttft_slo, Some(Duration::from_millis(1500)));
        assert_eq!(p.queue_deadline, Some(Duration::from_millis(250)));
        assert_eq!(p.cache_group, "shared");
        assert_eq!(p.limits.requests_per_s, Some(2.5));
        assert_eq!(p.limits.max_concurrent, Some(8));
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn defaults_and_own_cache_group() {
        let p = parse(vec![("name", V::S("solo"))]).unwrap();
        assert_eq!(p, TenantPolicy::new("solo"));
        assert_eq!(p.cache_group, "solo");
        let p = parse(vec![("name", V::S("solo")), ("cache_group", V::S(""))]).unwrap();
        assert_eq!(p.cache_group, "solo");
    }

    #[test]
    fn unknown_fields_are_errors_naming_them() {
        let err = parse(vec![("name", V::S("a")), ("wieght", V::U(2))]).unwrap_err();
        assert!(err.to_string().contains("wieght"), "{err}");
        let err = parse(vec![
            ("name", V::S("a")),
            ("limits", V::M(vec![("rps", V::U(1))])),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("rps"), "{err}");
        // API keys belong to the gateway's table, not here.
        let err = parse(vec![("name", V::S("a")), ("api_key_sha256", V::S("x"))]).unwrap_err();
        assert!(err.to_string().contains("api_key_sha256"), "{err}");
    }

    #[test]
    fn validate_names_field_value_and_reason() {
        let check = |p: TenantPolicy, field: &str| {
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.to_string().contains(field), "{e}");
        };
        let mut p = TenantPolicy::new("a");
        p.weight = 0;
        check(p, "weight");
        check(TenantPolicy::new("has space"), "name");
        check(TenantPolicy::new(""), "name");
        let mut p = TenantPolicy::new("a");
        p.limits.requests_per_s = Some(f64::NAN);
        check(p, "limits.requests_per_s");
        let mut p = TenantPolicy::new("a");
        p.limits.max_concurrent = Some(0);
        check(p, "limits.max_concurrent");
        let mut p = TenantPolicy::new("a");
        p.ttft_slo = Some(Duration::ZERO);
        check(p, "ttft_slo_ms");
        let mut p = TenantPolicy::new("a");
        p.cache_group.clear();
        check(p, "cache_group");
        let mut p = TenantPolicy::new("a");
        p.limits.max_prompt_tokens = Some(0);
        let e = p.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "tenant \"a\": limits.max_prompt_tokens = 0: must be at least 1 \
             (leave it out for no limit)"
        );
    }
}
