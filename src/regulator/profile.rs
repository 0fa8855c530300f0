//! Platform profiles (`profiles/platform/<name>.toml`): the paths, field names, code tables and
//! formats of one regulator platform. The protocol *shape* (how login, records and photos are
//! exchanged) is Rust code selected by `protocol`; everything a city changes lives here.

use crate::config::profile::Library;
use ecogate_drivers::plate::PlateColor;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

use super::RegulatorError;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// 安车 / 天地人车 / 信阳: JSON envelope {organ, ipctype, access_token, value}.
    TransportControl,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformProfile {
    pub protocol: Protocol,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub paths: Paths,
    pub envelope: Envelope,
    pub operations: Operations,
    pub auth: Auth,
    pub reply: Reply,
    pub time: TimeFormat,
    pub record: RecordShape,
    pub photo: PhotoShape,
    pub codes: Codes,
    #[serde(default)]
    pub downlink: Option<super::downlink::DownlinkShape>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    pub login: String,
    pub record: String,
    pub photo: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub organ: String,
    pub operation: String,
    pub token: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    pub login: String,
    pub record: String,
    pub photo: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialPlace {
    Top,
    Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub credentials: CredentialPlace,
    pub username: String,
    pub password: String,
    pub token_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    pub code: String,
    pub ok: String,
    pub message: String,
    pub token: String,
    #[serde(default)]
    pub auth_codes: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeFormat {
    pub format: String,
}

/// Logical field → wire names. Every alias carries the same value.
pub type FieldMap = BTreeMap<String, Vec<String>>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordShape {
    pub fields: FieldMap,
    #[serde(default)]
    pub constants: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PhotoEncoding {
    Base64,
    DataUri,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoShape {
    pub encoding: PhotoEncoding,
    pub fields: FieldMap,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Codes {
    pub plate_color: BTreeMap<String, String>,
    pub direction: BTreeMap<String, String>,
    pub barrier: BTreeMap<String, String>,
    pub photo_kind: BTreeMap<String, String>,
}

/// The logical record fields the transportControl shape fills.
pub const RECORD_FIELDS: &[&str] = &[
    "serial",
    "enterprise",
    "enterprise_name",
    "gate",
    "plate",
    "plate_color",
    "time",
    "barrier",
    "direction",
    "stage",
    "fuel",
];

pub const PHOTO_FIELDS: &[&str] = &[
    "serial",
    "enterprise",
    "enterprise_name",
    "gate",
    "plate",
    "plate_color",
    "index",
    "kind",
    "image",
    "time",
];

impl PlatformProfile {
    /// Parses and checks a profile text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PlatformProfile, RegulatorError> {
        let p: PlatformProfile = toml::from_str(text).map_err(|e| RegulatorError::Profile {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        p.check().map_err(|message| RegulatorError::Profile {
            origin: origin.to_string(),
            message,
        })?;
        Ok(p)
    }

    /// Finds `platform/<name>` next to the site (its `profiles/` dirs) or among the built-ins.
    pub fn load(site_file: &Path, name: &str) -> Result<PlatformProfile, RegulatorError> {
        // `transport-control` and `platform/transport-control` name the same profile.
        let name = name.strip_prefix("platform/").unwrap_or(name);
        let lib = Library::for_site(site_file, None, None);
        let found = lib
            .find_profile(&format!("platform/{name}"))
            .ok_or_else(|| RegulatorError::Profile {
                origin: format!("platform/{name}"),
                message:
                    "no such platform profile (looked in profiles/platform/ and the built-ins)"
                        .into(),
            })?;
        Self::parse(&found.file.text, &found.file.path.display().to_string())
    }

    /// The built-in profile of that name.
    pub fn builtin(name: &str) -> Result<PlatformProfile, RegulatorError> {
        Self::load(Path::new("/nonexistent/site.toml"), name)
    }

    fn check(&self) -> Result<(), String> {
        for (what, map, need) in [
            ("record.fields", &self.record.fields, RECORD_FIELDS),
            ("photo.fields", &self.photo.fields, PHOTO_FIELDS),
        ] {
            for k in map.keys() {
                if !need.contains(&k.as_str()) {
                    return Err(format!(
                        "unknown field `{k}` in [{what}] (known: {})",
                        need.join(", ")
                    ));
                }
            }
            for (k, v) in map {
                if v.is_empty() || v.iter().any(|n| n.is_empty()) {
                    return Err(format!("[{what}] `{k}` needs at least one non-empty name"));
                }
            }
            if !map.contains_key("serial") {
                return Err(format!("[{what}] must name the `serial` field"));
            }
        }
        for c in PlateColor::ALL {
            if !self.codes.plate_color.contains_key(c.name()) {
                return Err(format!(
                    "[codes.plate_color] has no code for `{}`",
                    c.name()
                ));
            }
        }
        for d in ["in", "out"] {
            if !self.codes.direction.contains_key(d) {
                return Err(format!("[codes.direction] has no code for `{d}`"));
            }
        }
        for b in ["auto", "manual", "remote"] {
            if !self.codes.barrier.contains_key(b) {
                return Err(format!("[codes.barrier] has no code for `{b}`"));
            }
        }
        if !self.codes.photo_kind.contains_key("other") {
            return Err("[codes.photo_kind] needs an `other` code".into());
        }
        if let Some(d) = &self.downlink {
            d.check()?;
        }
        // A bad strftime string would only show at the first upload; catch it now.
        use std::fmt::Write as _;
        let mut s = String::new();
        if write!(
            s,
            "{}",
            chrono::DateTime::<chrono::Utc>::UNIX_EPOCH.format(&self.time.format)
        )
        .is_err()
        {
            return Err(format!("[time] format `{}` is not valid", self.time.format));
        }
        Ok(())
    }

    pub fn photo_kind_code(&self, role: &str) -> &str {
        self.codes
            .photo_kind
            .get(role)
            .or_else(|| self.codes.photo_kind.get("other"))
            .map(String::as_str)
            .unwrap_or("9")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_transport_control_loads_and_bad_profiles_are_named() {
        let p = PlatformProfile::builtin("transport-control").unwrap();
        assert_eq!(p.protocol, Protocol::TransportControl);
        assert_eq!(p.codes.plate_color["yellow_green"], "6");
        assert_eq!(p.record.fields["serial"], vec!["lsh", "serialNum"]);
        let text = include_str!("../../profiles/platform/transport-control.toml");
        let bad = text.replace("yellow_green = \"6\"", "");
        let e = PlatformProfile::parse(&bad, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("yellow_green") && e.contains("x.toml"), "{e}");
        let bad = text.replace("fuel = [\"fuelType\"]", "fule = [\"fuelType\"]");
        let e = PlatformProfile::parse(&bad, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fule`"), "{e}");
    }
}
