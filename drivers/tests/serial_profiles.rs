//! Every shipped scale/LED/UPS profile has the common header, parses into its driver's
//! settings, and uses only keys that docs/profiles-serial.md documents.

use std::path::{Path, PathBuf};

use ecogate_drivers::{led, scale, ups, Address};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profiles(kind: &str) -> Vec<(PathBuf, toml::Table)> {
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
        out.push((path, table));
    }
    // Modbus-register drivers (scale-modbus, sign-modbus) are checked by regs_profiles.rs.
    out.retain(|(_, t)| {
        !t.get("driver")
            .and_then(|d| d.as_str())
            .is_some_and(|d| d.ends_with("-modbus"))
    });
    assert!(!out.is_empty(), "no profiles in {}", dir.display());
    out
}

fn check_header(path: &Path, t: &toml::Table, kind: &str, driver: &str, roles: &[&str]) {
    let s = |k: &str| {
        t.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("{}: `{k}` missing", path.display()))
            .to_string()
    };
    assert_eq!(s("kind"), kind, "{}", path.display());
    assert_eq!(s("driver"), driver, "{}", path.display());
    assert!(!s("model").is_empty());
    let list = |k: &str| -> Vec<String> {
        t.get(k)
            .and_then(|v| v.as_array())
            .unwrap_or_else(|| panic!("{}: `{k}` missing", path.display()))
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let transports = list("transports");
    assert!(!transports.is_empty());
    for tr in transports {
        assert!(
            Address::SCHEMES.contains(&tr.as_str()),
            "{}: {tr}",
            path.display()
        );
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

fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    if let Some(t) = v.as_table() {
        for (k, v) in t {
            out.push(k.clone());
            keys(&format!("{prefix}{k}."), v, out);
        }
    }
}

fn check_documented(path: &Path, settings: &toml::Value) {
    let doc = std::fs::read_to_string(root().join("docs/profiles-serial.md")).unwrap();
    let mut ks = Vec::new();
    keys("", settings, &mut ks);
    for k in ks {
        assert!(
            doc.contains(&format!("`{k}`")),
            "{}: settings key `{k}` is not documented in docs/profiles-serial.md",
            path.display()
        );
    }
}

#[test]
fn scale_profiles() {
    for (path, t) in profiles("scale") {
        check_header(&path, &t, "scale", scale::DRIVER, &["scale"]);
        let settings = t.get("settings").cloned().unwrap();
        let s = scale::ScaleSettings::from_toml(&settings)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let expected = match stem {
            "yaohua-xk3190-a9" => scale::ScaleFormat::A9,
            "yaohua-xk3190-a12" => scale::ScaleFormat::A12,
            "toledo-continuous" => scale::ScaleFormat::Toledo,
            "generic-st-gs" => scale::ScaleFormat::StGs,
            "generic-reversed" => scale::ScaleFormat::Reversed,
            other => panic!("new scale profile {other}: add it here"),
        };
        assert_eq!(s.format, expected, "{}", path.display());
        check_documented(&path, &settings);
    }
}

#[test]
fn led_profiles() {
    for (path, t) in profiles("led") {
        check_header(&path, &t, "led", led::DRIVER, &["sign", "voice"]);
        let settings = t.get("settings").cloned().unwrap();
        led::SignSettings::from_toml(&settings)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_documented(&path, &settings);
    }
}

#[test]
fn ups_profiles() {
    for (path, t) in profiles("ups") {
        check_header(&path, &t, "ups", ups::DRIVER, &["ups"]);
        let settings = t.get("settings").cloned().unwrap();
        ups::UpsSettings::from_toml(&settings)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_documented(&path, &settings);
    }
}

#[test]
fn device_overrides_merge_over_profile_settings() {
    // A site file may override single keys; the driver reads the merged table.
    let (_, t) = profiles("scale")
        .into_iter()
        .find(|(p, _)| p.ends_with("yaohua-xk3190-a9.toml"))
        .unwrap();
    let mut settings = t.get("settings").cloned().unwrap();
    let set = |v: &mut toml::Value, unit: &str| {
        v.as_table_mut()
            .unwrap()
            .insert("unit".into(), toml::Value::String(unit.into()));
    };
    set(&mut settings, "t");
    let s = scale::ScaleSettings::from_toml(&settings).unwrap();
    assert_eq!(s.unit, scale::Unit::T);
    set(&mut settings, "lb");
    let e = scale::ScaleSettings::from_toml(&settings).unwrap_err();
    assert!(e.to_string().contains("lb"), "{e}");
}
