//! `config/cake.toml`'s `[kv]` section: it parses, it validates, and it
//! lists every key with its default value.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers, not request paths

use cake_engine::kv::KvConfig;

fn kv_table() -> toml::Table {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/cake.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let file: toml::Table = toml::from_str(&text).unwrap();
    file["kv"].as_table().unwrap().clone()
}

fn keys(t: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let name = format!("{prefix}{k}");
        match v.as_table() {
            Some(sub) => keys(sub, &format!("{name}."), out),
            None => out.push(name),
        }
    }
}

#[test]
fn the_kv_section_of_cake_toml_is_valid_and_holds_the_defaults() {
    let cfg: KvConfig = kv_table().try_into().unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg, KvConfig::default());
}

#[test]
fn the_kv_section_of_cake_toml_lists_every_key() {
    let defaults = toml::Table::try_from(KvConfig::default()).unwrap();
    let (mut want, mut have) = (Vec::new(), Vec::new());
    keys(&defaults, "kv.", &mut want);
    keys(&kv_table(), "kv.", &mut have);
    want.sort();
    have.sort();
    assert_eq!(have, want);
}
