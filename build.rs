//! Embeds the stock device profiles and lane machines, so the one `ecogate` binary can check
//! and run a site that only names them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "toml") {
            let rel = p.strip_prefix(root).unwrap_or(&p).with_extension("");
            let name = rel.to_string_lossy().replace('\\', "/");
            out.push((name, p));
        }
    }
}

fn table(name: &str, dir: &Path, code: &mut String) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    let _ = writeln!(code, "pub static {name}: &[(&str, &str)] = &[");
    for (n, p) in files {
        println!("cargo:rerun-if-changed={}", p.display());
        let _ = writeln!(
            code,
            "    ({n:?}, include_str!({:?})),",
            p.display().to_string()
        );
    }
    let _ = writeln!(code, "];");
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let mut code = String::new();
    table("PROFILES", &root.join("profiles"), &mut code);
    table("MACHINES", &root.join("config/lanes"), &mut code);
    let out =
        PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("embedded.rs");
    if let Err(e) = std::fs::write(&out, code) {
        panic!("cannot write {}: {e}", out.display());
    }
}
