//! Device profiles: one TOML file per device model under `profiles/<kind>/<model>.toml`.
//! The core reads the common header (kind, driver, transports, roles); the driver parses
//! `[settings]`.

use super::diag::{Diagnostic, SourceFile};
use super::document;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Camera,
    Io,
    Scale,
    Led,
    Ups,
}

impl DeviceKind {
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Camera => "camera",
            DeviceKind::Io => "io",
            DeviceKind::Scale => "scale",
            DeviceKind::Led => "led",
            DeviceKind::Ups => "ups",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    pub kind: DeviceKind,
    pub driver: String,
    pub model: String,
    #[serde(default)]
    pub vendor: String,
    /// Address schemes the device accepts (`tcp`, `rtu`, `serial-over-tcp`, `ingest`, …).
    #[serde(default)]
    pub transports: Vec<String>,
    /// Lane roles it can fill.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub settings: toml::Table,
    #[serde(skip)]
    pub source: PathBuf,
}

/// Where profiles and machines are looked for: directories first, then the built-in copies.
#[derive(Debug, Clone)]
pub struct Library {
    pub profile_dirs: Vec<PathBuf>,
    pub machine_dirs: Vec<PathBuf>,
}

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// A profile or machine source found by name.
pub struct Found {
    pub file: SourceFile,
}

fn find(
    name: &str,
    dirs: &[PathBuf],
    builtin: &'static [(&'static str, &'static str)],
    builtin_root: &str,
) -> Option<Found> {
    // A name is a relative path below the library; never let it climb out.
    if name.is_empty()
        || name
            .split('/')
            .any(|s| s.is_empty() || s == ".." || s == ".")
    {
        return None;
    }
    for d in dirs {
        let p = d.join(format!("{name}.toml"));
        if let Ok(text) = std::fs::read_to_string(&p) {
            return Some(Found {
                file: SourceFile::new(p, text),
            });
        }
    }
    builtin
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(n, text)| Found {
            file: SourceFile::new(
                format!("<built-in>/{builtin_root}/{n}.toml"),
                (*text).to_string(),
            ),
        })
}

impl Library {
    pub fn for_site(
        site_file: &Path,
        profiles_dir: Option<&str>,
        lanes_dir: Option<&str>,
    ) -> Library {
        let base = site_file.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut profile_dirs = Vec::new();
        let mut machine_dirs = Vec::new();
        if let Some(p) = profiles_dir {
            profile_dirs.push(base.join(p));
        }
        if let Some(l) = lanes_dir {
            machine_dirs.push(base.join(l));
        }
        machine_dirs.push(base.join("lanes"));
        // A site inside a checkout (config/, examples/<site>/) uses the checkout's profiles.
        let mut dir = Some(base.as_path());
        for _ in 0..3 {
            let Some(d) = dir else { break };
            profile_dirs.push(d.join("profiles"));
            dir = d.parent();
        }
        Library {
            profile_dirs,
            machine_dirs,
        }
    }

    pub fn profile_names() -> impl Iterator<Item = &'static str> {
        embedded::PROFILES.iter().map(|(n, _)| *n)
    }

    pub fn machine_names() -> impl Iterator<Item = &'static str> {
        embedded::MACHINES.iter().map(|(n, _)| *n)
    }

    pub fn find_profile(&self, name: &str) -> Option<Found> {
        find(name, &self.profile_dirs, embedded::PROFILES, "profiles")
    }

    pub fn find_machine(&self, name: &str) -> Option<Found> {
        find(name, &self.machine_dirs, embedded::MACHINES, "config/lanes")
    }

    /// Loads a profile and checks its header.
    pub fn load_profile(&self, found: &Found) -> Result<Profile, Vec<Diagnostic>> {
        match self.load_profile_usable(found)? {
            (p, unknown) if unknown.is_empty() => Ok(p),
            (_, unknown) => Err(unknown),
        }
    }

    /// Like [`Library::load_profile`], but a profile whose only faults are unknown keys comes
    /// back with those errors beside it, so the devices using it are still checked.
    pub fn load_profile_usable(
        &self,
        found: &Found,
    ) -> Result<(Profile, Vec<Diagnostic>), Vec<Diagnostic>> {
        let file = &found.file;
        let (mut p, unknown): (Profile, _) = document::parse_documented(file, "docs/profiles.md")?;
        let mut diags = Vec::new();
        p.source = file.path.clone();
        for (i, t) in p.transports.iter().enumerate() {
            if !ecogate_drivers::Address::SCHEMES.contains(&t.as_str()) {
                diags.push(
                    file.error_at(
                        &crate::path!["transports", i],
                        document::At::Value,
                        format!("unknown transport `{t}`"),
                    )
                    .help(format!(
                        "transports are: {}",
                        ecogate_drivers::Address::SCHEMES.join(", ")
                    )),
                );
            }
        }
        for (i, r) in p.roles.iter().enumerate() {
            if crate::lane::builtin::Role::from_name(r).is_none() && r != "ups" {
                diags.push(
                    file.error_at(
                        &crate::path!["roles", i],
                        document::At::Value,
                        format!("unknown role `{r}`"),
                    )
                    .help("roles are: camera, barrier, loop, scale, sign, voice, ups"),
                );
            }
        }
        if diags.is_empty() {
            Ok((p, unknown))
        } else {
            diags.extend(unknown);
            Err(diags)
        }
    }
}
