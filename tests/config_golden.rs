//! Golden tests: each broken config under tests/configs/broken/ must produce exactly the
//! errors in its `.expected` file (file:line:col: message, then the help line). Run with
//! `BLESS=1` to rewrite the expected files after an intended change, then review the diff.

use std::path::Path;

fn check_one(name: &str) {
    let site = format!("tests/configs/broken/{name}.toml");
    let expected_path = format!("tests/configs/broken/{name}.expected");
    let got = match ecogate::config::load(Path::new(&site)) {
        Ok(_) => panic!("{site} should not validate"),
        Err(d) => format!("{d}\n"),
    };
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected_path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&expected_path)
        .unwrap_or_else(|e| panic!("{expected_path}: {e} (run with BLESS=1 to create it)"));
    assert_eq!(got, want, "diagnostics for {site} changed");
}

#[test]
fn unknown_keys() {
    check_one("unknown-keys");
}

#[test]
fn devices_and_bindings() {
    check_one("devices");
}

#[test]
fn enterprise_and_values() {
    check_one("enterprise");
}

#[test]
fn toml_syntax() {
    check_one("syntax");
}

#[test]
fn lane_machine_errors() {
    check_one("machine");
}

#[test]
fn shipped_configs_validate() {
    let mut files = vec!["config/site.example.toml".to_string()];
    for dir in ["examples"] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let site = if p.is_dir() {
                p.join("site.toml")
            } else {
                p.clone()
            };
            if site.extension().is_some_and(|x| x == "toml") && site.exists() {
                files.push(site.display().to_string());
            }
        }
    }
    assert!(files.len() >= 2, "expected example sites under examples/");
    for f in files {
        if let Err(d) = ecogate::config::load(Path::new(&f)) {
            panic!("{f} does not validate:\n{d}");
        }
    }
}

#[test]
fn every_builtin_machine_compiles() {
    for e in std::fs::read_dir("config/lanes").unwrap().flatten() {
        let p = e.path();
        let text = std::fs::read_to_string(&p).unwrap();
        let f = ecogate::config::diag::SourceFile::new(&p, text);
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        if let Err(d) = ecogate::lane::machine::load(&name, &f) {
            panic!("{}: {}", p.display(), ecogate::config::Diagnostics(d));
        }
    }
}

#[test]
fn health_and_mqtt_settings() {
    check_one("health");
}

#[test]
fn platform_outbox_and_auth_keys() {
    check_one("platforms");
}
