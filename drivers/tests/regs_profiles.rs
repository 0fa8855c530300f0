//! The shipped Modbus-register scale and sign profiles have the common header, parse into their
//! driver's settings, and use only keys docs/profiles-modbus-regs.md documents.

use std::path::{Path, PathBuf};

use ecogate_drivers::led::modbus::{ModbusSignSettings, DRIVER as SIGN_DRIVER};
use ecogate_drivers::scale::modbus::{ModbusScaleSettings, WordOrder, DRIVER as SCALE_DRIVER};
use ecogate_drivers::Address;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every profile of `kind` whose driver is `driver`.
fn profiles(kind: &str, driver: &str) -> Vec<(PathBuf, toml::Table)> {
    let dir = root().join("profiles").join(kind);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if table.get("driver").and_then(|d| d.as_str()) == Some(driver) {
            out.push((path, table));
        }
    }
    assert!(!out.is_empty(), "no {driver} profiles in {}", dir.display());
    out
}

fn check_header(path: &Path, t: &toml::Table, kind: &str, roles: &[&str]) {
    assert_eq!(
        t.get("kind").and_then(|v| v.as_str()),
        Some(kind),
        "{}",
        path.display()
    );
    assert!(t
        .get("model")
        .and_then(|v| v.as_str())
        .is_some_and(|m| !m.is_empty()));
    let list = |k: &str| -> Vec<String> {
        t.get(k)
            .and_then(|v| v.as_array())
            .unwrap_or_else(|| panic!("{}: `{k}` missing", path.display()))
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    let transports = list("transports");
    assert_eq!(
        transports,
        ["tcp", "rtu", "rtu-over-tcp"],
        "{}",
        path.display()
    );
    for tr in &transports {
        assert!(Address::SCHEMES.contains(&tr.as_str()), "{tr}");
    }
    let r = list("roles");
    assert!(!r.is_empty());
    for role in r {
        assert!(
            roles.contains(&role.as_str()),
            "{}: role {role}",
            path.display()
        );
    }
}

fn keys(v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                out.push(k.clone());
                keys(v, out);
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

fn check_documented(path: &Path, settings: &toml::Value) {
    let doc = std::fs::read_to_string(root().join("docs/profiles-modbus-regs.md")).unwrap();
    let mut ks = Vec::new();
    keys(settings, &mut ks);
    for k in ks {
        assert!(
            doc.contains(&format!("`{k}`")),
            "{}: settings key `{k}` is not documented in docs/profiles-modbus-regs.md",
            path.display()
        );
    }
}

#[test]
fn scale_modbus_profiles() {
    for (path, t) in profiles("scale", SCALE_DRIVER) {
        check_header(&path, &t, "scale", &["scale"]);
        let settings = t.get("settings").cloned().unwrap();
        let s = ModbusScaleSettings::from_toml(&settings)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if path.ends_with("modbus-indicator.toml") {
            assert_eq!(s.word_order, WordOrder::HiLo);
            assert!(s.status.stable_bit.is_some());
        }
        check_documented(&path, &settings);
    }
}

#[test]
fn sign_modbus_profiles() {
    for (path, t) in profiles("led", SIGN_DRIVER) {
        check_header(&path, &t, "led", &["sign", "voice"]);
        let settings = t.get("settings").cloned().unwrap();
        let s = ModbusSignSettings::from_toml(&settings)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!s.lines.is_empty());
        check_documented(&path, &settings);
    }
}

#[test]
fn documented_examples_parse() {
    // The two ```toml examples of the page must be valid settings for their drivers.
    let doc = std::fs::read_to_string(root().join("docs/profiles-modbus-regs.md")).unwrap();
    let mut parsed = 0;
    for block in doc.split("```toml").skip(1) {
        let body = block.split("```").next().unwrap_or("");
        let Ok(t) = toml::from_str::<toml::Table>(body) else {
            continue;
        };
        let (Some(driver), Some(settings)) =
            (t.get("driver").and_then(|d| d.as_str()), t.get("settings"))
        else {
            continue;
        };
        // The header sketch has an empty [settings]; only full examples count.
        if settings.as_table().is_some_and(|s| s.is_empty()) {
            continue;
        }
        match driver {
            d if d == SCALE_DRIVER => {
                let s = ModbusScaleSettings::from_toml(settings).unwrap();
                assert_eq!(s.word_order, WordOrder::LoHi);
            }
            d if d == SIGN_DRIVER => {
                ModbusSignSettings::from_toml(settings).unwrap();
            }
            other => panic!("unexpected driver {other}"),
        }
        parsed += 1;
    }
    assert_eq!(parsed, 2);
}
