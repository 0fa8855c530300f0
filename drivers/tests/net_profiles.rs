//! Every shipped io/camera profile has the common header and its [settings] parse into the
//! driver's settings type.

use std::path::PathBuf;

use ecogate_drivers::camera::{generic, hik, vz};
use ecogate_drivers::io::{ModbusIoSettings, PulseMode};

fn profiles(kind: &str) -> Vec<(String, toml::Table)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../profiles")
        .join(kind);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) == Some("toml") {
            let text = std::fs::read_to_string(&p).unwrap();
            let t: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn header(name: &str, t: &toml::Table, kind: &str) -> String {
    assert_eq!(t["kind"].as_str(), Some(kind), "{name}: kind");
    for key in ["driver", "model"] {
        assert!(
            t[key].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: {key}"
        );
    }
    for key in ["transports", "roles"] {
        let a = t[key].as_array().unwrap_or_else(|| panic!("{name}: {key}"));
        assert!(!a.is_empty(), "{name}: {key} empty");
    }
    for tr in t["transports"].as_array().unwrap() {
        assert!(
            ecogate_drivers::Address::SCHEMES.contains(&tr.as_str().unwrap()),
            "{name}: transport {tr}"
        );
    }
    t["driver"].as_str().unwrap().to_string()
}

#[test]
fn io_profiles_parse() {
    let ps = profiles("io");
    assert!(ps.len() >= 2);
    let mut modes = Vec::new();
    for (name, t) in ps {
        assert_eq!(header(&name, &t, "io"), "modbus-io", "{name}");
        let s: ModbusIoSettings = t["settings"].clone().try_into().unwrap();
        s.validate().unwrap();
        assert!(s.outputs.contains_key(&s.barrier.open), "{name}");
        assert!(s.outputs.contains_key(&s.barrier.close), "{name}");
        for role in ["loop", "limit_open", "limit_closed"] {
            assert!(s.inputs.contains_key(role), "{name}: {role}");
        }
        modes.push(s.pulse.mode);
    }
    assert!(modes.contains(&PulseMode::Device) && modes.contains(&PulseMode::Host));
}

#[test]
fn camera_profiles_parse() {
    let mut drivers = Vec::new();
    for (name, t) in profiles("camera") {
        let d = header(&name, &t, "camera");
        let s = t["settings"].clone();
        match d.as_str() {
            "vz-push" => {
                let v: vz::VzSettings = s.try_into().unwrap();
                assert!(v.inputs.contains_key("loop"));
            }
            "hik-isapi" => {
                let h: hik::HikSettings = s.try_into().unwrap();
                assert!(h.output_path.contains("{n}"));
            }
            "json-push" => {
                let g: generic::JsonSettings = s.try_into().unwrap();
                assert!(g.plate.starts_with('/'));
                assert_eq!(g.images.len(), 2);
            }
            other => panic!("{name}: unknown driver {other}"),
        }
        drivers.push(d);
    }
    drivers.sort();
    assert_eq!(drivers, vec!["hik-isapi", "json-push", "vz-push"]);
}

#[test]
fn unknown_settings_keys_are_tolerated_and_defaults_fill_in() {
    let s: ModbusIoSettings =
        toml::from_str("vendor_note = 'x'\n[outputs]\nopen = { coil = 3 }").unwrap();
    assert_eq!(s.unit, 1);
    assert_eq!(s.timeout_ms, 500);
    assert_eq!(s.pulse.mode, PulseMode::Host);
    assert_eq!(s.outputs["open"].coil, 3);
    let v: vz::VzSettings = toml::from_str("future_key = 1").unwrap();
    assert_eq!(v.ignore_triggers, vec![64, 65, 66]);
}
