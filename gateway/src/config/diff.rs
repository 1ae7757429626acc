//! Which keys changed between two configs, for a reload to name the ones
//! it cannot put in force: only `[[tenants]]` and `[policy]` reload; the
//! rest takes effect at restart.

use serde_json::Value;

use super::Config;

/// Dotted keys (`server.listen`, `kv.disk.capacity_bytes`, `workers`)
/// whose value differs between `old` and `new`, outside `[[tenants]]` and
/// `[policy]`. An array is one key.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let strip = |c: &Config| {
        let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.remove("tenants");
            m.remove("policy");
        }
        v
    };
    let mut out = Vec::new();
    diff("", &strip(old), &strip(new), &mut out);
    out
}

fn diff(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => diff(&path, p, q, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(at.to_string()),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_changed_start_only_keys_and_not_reloaded_ones() {
        let old = Config::default();
        let mut new = Config::default();
        assert!(restart_only_changes(&old, &new).is_empty());
        new.server.listen = "127.0.0.1:8123".into();
        new.kv.disk.capacity_bytes = 1 << 20;
        new.policy.queue_total = 7;
        assert_eq!(
            restart_only_changes(&old, &new),
            ["kv.disk.capacity_bytes", "server.listen"]
        );
    }
}
