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
fn undefined_texts_and_unknown_keys_in_machine_and_profile_files() {
    check_one("texts");
}

#[test]
fn policy_errors_point_into_the_site_file() {
    check_one("policy");
}

#[test]
fn type_errors_are_all_reported_with_the_other_errors() {
    check_one("types");
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

/// Every shipped profile, used by a shipped site or not, loads through the gateway's own loader
/// without unknown keys; platform profiles through theirs.
#[test]
fn every_shipped_profile_loads() {
    let site = Path::new("config/site.example.toml");
    let lib = ecogate::config::profile::Library::for_site(site, None, None);
    let mut seen = 0;
    for kind in std::fs::read_dir("profiles").unwrap().flatten() {
        let kind_name = kind.file_name().to_string_lossy().to_string();
        for e in std::fs::read_dir(kind.path()).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "toml") {
                continue;
            }
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let name = format!("{kind_name}/{stem}");
            seen += 1;
            if kind_name == "platform" {
                if let Err(e) = ecogate::regulator::profile::PlatformProfile::load(site, &stem) {
                    panic!("{name}: {e}");
                }
                continue;
            }
            let found = lib
                .find_profile(&name)
                .unwrap_or_else(|| panic!("{name} not found"));
            assert_eq!(
                std::fs::canonicalize(&found.file.path).unwrap(),
                std::fs::canonicalize(&p).unwrap(),
                "{name} resolved to another file"
            );
            if let Err(d) = lib.load_profile(&found) {
                panic!("{name}: {}", ecogate::config::Diagnostics(d));
            }
        }
    }
    assert!(seen >= 18, "only {seen} profiles found");
}
