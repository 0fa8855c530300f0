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
    /// 开封 中科九州: `{success, code, message, data}` replies, platform-issued serials.
    Kaifeng,
    /// 河北 一体化 low-emission platform: OAuth token, entry/exit paired by `throughId`.
    Hebei,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformProfile {
    pub protocol: Protocol,
    pub name: String,
    #[serde(default)]
    pub description: String,
    // The transportControl sections; the other shapes leave them out (checked per protocol).
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub envelope: Envelope,
    #[serde(default)]
    pub operations: Operations,
    pub auth: Auth,
    #[serde(default)]
    pub reply: Reply,
    pub time: TimeFormat,
    #[serde(default)]
    pub record: RecordShape,
    pub photo: PhotoShape,
    pub codes: Codes,
    #[serde(default)]
    pub downlink: Option<super::downlink::DownlinkShape>,
    /// transportControl shareGoodsRecord; without it no cargo records are sent.
    #[serde(default)]
    pub cargo: Option<CargoShape>,
    /// `protocol = "kaifeng"` only.
    #[serde(default)]
    pub kaifeng: Option<KaifengShape>,
    /// `protocol = "hebei"` only.
    #[serde(default)]
    pub hebei: Option<HebeiShape>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paths {
    pub login: String,
    pub record: String,
    pub photo: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub organ: String,
    pub operation: String,
    pub token: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operations {
    pub login: String,
    pub record: String,
    pub photo: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialPlace {
    #[default]
    Top,
    Value,
}

/// How requests prove who sends them (docs/platforms.md "Auth kinds").
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// Log in for a token that lasts `token_ttl_secs`; log in again when refused.
    #[default]
    Login,
    /// The site's `secret` is the token, sent in `token_header` (after `token_prefix`).
    StaticToken,
    /// §4.6: timestamp, user key and md5 signature headers on every request; no login.
    Signed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default)]
    pub kind: AuthKind,
    #[serde(default)]
    pub credentials: CredentialPlace,
    /// Wire names of the login credentials.
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    #[serde(default = "default_ttl")]
    pub token_ttl_secs: u64,
    /// HTTP header carrying the token (kaifeng `token`, hebei `Authorization`); transportControl
    /// carries it in the envelope instead.
    #[serde(default)]
    pub token_header: Option<String>,
    /// Put before the token in `token_header`, e.g. `"Bearer "`.
    #[serde(default)]
    pub token_prefix: String,
    #[serde(default = "default_ts_header")]
    pub timestamp_header: String,
    #[serde(default = "default_key_header")]
    pub userkey_header: String,
    #[serde(default = "default_sig_header")]
    pub signature_header: String,
}

fn default_ttl() -> u64 {
    7200
}
fn default_ts_header() -> String {
    "api-timestamp".into()
}
fn default_key_header() -> String {
    "api-userkey".into()
}
fn default_sig_header() -> String {
    "api-signature".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
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

#[derive(Debug, Clone, Default, Deserialize)]
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
    /// `<photo_url_base>/<sha256>.jpg`: the site publishes its evidence store there.
    Url,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoShape {
    pub encoding: PhotoEncoding,
    /// transportControl sharePhotoInfo fields; the other shapes carry photos in the record.
    #[serde(default)]
    pub fields: FieldMap,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Codes {
    pub plate_color: BTreeMap<String, String>,
    pub direction: BTreeMap<String, String>,
    #[serde(default)]
    pub barrier: BTreeMap<String, String>,
    #[serde(default)]
    pub photo_kind: BTreeMap<String, String>,
    /// `yes`, `no` → the value of the record's `backfill` field (补录 flag), when the profile
    /// maps one (transport_control).
    #[serde(default)]
    pub backfill: BTreeMap<String, String>,
}

/// transportControl shareGoodsRecord (§4.1).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CargoShape {
    pub path: String,
    pub operation: String,
    pub fields: FieldMap,
    /// ysldw value for tonnes.
    pub unit: String,
}

/// 开封 中科九州 (§4.2): paths and fixed values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KaifengShape {
    pub login: String,
    pub check: String,
    pub pass: String,
    pub cargo: String,
    /// Reply `code` of success ("200").
    pub ok: String,
    /// Reply messages meaning "log in again" (e.g. "Token验证不通过").
    pub auth_messages: Vec<String>,
    /// Reply messages meaning "already received" (a resend): counted as acknowledged.
    #[serde(default)]
    pub duplicate_messages: Vec<String>,
    /// `imageType` by direction (`in`, `out`).
    pub image_type: BTreeMap<String, String>,
    pub gate_signal: String,
    pub cargo_unit: String,
}

/// 河北 一体化 (§4.4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HebeiShape {
    pub token: String,
    pub upload: String,
    /// Reply `code` of success ("10000").
    pub ok: String,
    /// Reply codes meaning "log in again".
    #[serde(default)]
    pub auth_codes: Vec<String>,
    /// Issued with the platform account; sent as the `Client_id` header at login.
    pub client_id: String,
    pub client_id_header: String,
    pub client_secret_header: String,
    /// How the password is "encrypted" in the token form: md5 (lower-case hex), base64, plain.
    pub password_encoding: PasswordEncoding,
    /// networkingStatus (联网状态 §2.8) sent with every record: "1" 已联网, "0" 未联网.
    pub networking_status: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PasswordEncoding {
    Md5,
    Base64,
    Plain,
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
    "backfill",
];

/// The logical cargo fields the transportControl shareGoodsRecord fills.
pub const CARGO_FIELDS: &[&str] = &[
    "serial",
    "enterprise",
    "enterprise_name",
    "gate",
    "plate",
    "plate_color",
    "time",
    "name",
    "amount",
    "unit",
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
        let tc = self.protocol == Protocol::TransportControl;
        if tc {
            self.check_transport_control()?;
        }
        match (self.protocol, &self.kaifeng, &self.hebei) {
            (Protocol::Kaifeng, None, _) => {
                return Err("protocol kaifeng needs a [kaifeng] section".into())
            }
            (Protocol::Hebei, _, None) => {
                return Err("protocol hebei needs a [hebei] section".into())
            }
            (Protocol::Kaifeng, _, Some(_)) | (Protocol::TransportControl, _, Some(_)) => {
                return Err(format!(
                    "[hebei] does not belong in a {:?} profile",
                    self.protocol
                ))
            }
            (Protocol::Hebei, Some(_), _) | (Protocol::TransportControl, Some(_), _) => {
                return Err(format!(
                    "[kaifeng] does not belong in a {:?} profile",
                    self.protocol
                ))
            }
            _ => {}
        }
        if let Some(k) = &self.kaifeng {
            for d in ["in", "out"] {
                if !k.image_type.contains_key(d) {
                    return Err(format!("[kaifeng.image_type] has no code for `{d}`"));
                }
            }
        }
        if let Some(d) = &self.downlink {
            d.check(self.protocol)?;
        }
        if self.cargo.is_some() && !tc {
            return Err("[cargo] is for transportControl profiles (the other shapes have their own cargo form)".into());
        }
        if let Some(c) = &self.cargo {
            for k in c.fields.keys() {
                if !CARGO_FIELDS.contains(&k.as_str()) {
                    return Err(format!(
                        "unknown field `{k}` in [cargo.fields] (known: {})",
                        CARGO_FIELDS.join(", ")
                    ));
                }
            }
            if !c.fields.contains_key("serial") {
                return Err("[cargo.fields] must name the `serial` field".into());
            }
        }
        match self.auth.kind {
            AuthKind::Login if !tc && self.auth.token_header.is_none() => {
                return Err("[auth] kind = \"login\" needs `token_header` (the HTTP header the token goes in)".into())
            }
            AuthKind::StaticToken if self.auth.token_header.is_none() => {
                return Err("[auth] kind = \"static_token\" needs `token_header`".into())
            }
            AuthKind::StaticToken | AuthKind::Signed if tc => {
                return Err("transportControl platforms carry the token in the envelope: [auth] kind must be \"login\"".into())
            }
            _ => {}
        }
        if self.photo.encoding == PhotoEncoding::Url && tc {
            return Err("[photo] encoding = \"url\" is for the kaifeng and hebei shapes".into());
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
        if tc {
            for b in ["auto", "manual", "remote"] {
                if !self.codes.barrier.contains_key(b) {
                    return Err(format!("[codes.barrier] has no code for `{b}`"));
                }
            }
            if !self.codes.photo_kind.contains_key("other") {
                return Err("[codes.photo_kind] needs an `other` code".into());
            }
            if self.record.fields.contains_key("backfill") {
                for b in ["yes", "no"] {
                    if !self.codes.backfill.contains_key(b) {
                        return Err(format!(
                            "[record.fields] maps `backfill`: [codes.backfill] needs a code for `{b}`"
                        ));
                    }
                }
            }
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

    fn check_transport_control(&self) -> Result<(), String> {
        for (what, v) in [
            ("paths.login", &self.paths.login),
            ("paths.record", &self.paths.record),
            ("paths.photo", &self.paths.photo),
            ("envelope.organ", &self.envelope.organ),
            ("operations.record", &self.operations.record),
            ("reply.code", &self.reply.code),
            ("auth.username", &self.auth.username),
        ] {
            if v.is_empty() {
                return Err(format!("a transport_control profile needs [{what}]"));
            }
        }
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

    #[test]
    fn builtin_kaifeng_and_hebei_load_and_are_checked_per_protocol() {
        let k = PlatformProfile::builtin("kaifeng").unwrap();
        assert_eq!(k.protocol, Protocol::Kaifeng);
        assert_eq!(k.codes.direction["in"], "A");
        assert_eq!(k.auth.token_header.as_deref(), Some("token"));
        assert_eq!(k.photo.encoding, PhotoEncoding::Url);
        let h = PlatformProfile::builtin("hebei").unwrap();
        assert_eq!(h.protocol, Protocol::Hebei);
        assert_eq!(h.auth.token_prefix, "Bearer ");
        assert_eq!(
            h.hebei.as_ref().map(|x| x.password_encoding),
            Some(PasswordEncoding::Md5)
        );

        let kt = include_str!("../../profiles/platform/kaifeng.toml");
        let err = |t: &str| PlatformProfile::parse(t, "k.toml").unwrap_err().to_string();
        let cut = kt.find("\n[kaifeng]\n").unwrap();
        let end = kt.find("\n[time]\n").unwrap();
        let no_section = format!("{}{}", &kt[..cut], &kt[end..]);
        let e = err(&no_section);
        assert!(e.contains("needs a [kaifeng] section"), "{e}");
        assert!(err(&kt.replace("out = \"2\"", "")).contains("[kaifeng.image_type]"));
        assert!(err(&kt.replace("token_header = \"token\"", "")).contains("token_header"));
        assert!(err(&kt.replace("kind = \"login\"", "kind = \"sso\"")).contains("sso"));
        assert!(err(&kt.replace("blue = \"0\"", "")).contains("blue"));
        // Header auth does not fit the transportControl envelope.
        let tc = include_str!("../../profiles/platform/transport-control.toml");
        let e = err(&tc.replace(
            "credentials = \"top\"",
            "kind = \"signed\"\ncredentials = \"top\"",
        ));
        assert!(e.contains("kind must be"), "{e}");
        let e = err(&tc.replace("encoding = \"base64\"", "encoding = \"url\""));
        assert!(e.contains("url"), "{e}");
        let e = err(&tc.replace("amount = [\"ysl\"]", "weight = [\"ysl\"]"));
        assert!(e.contains("`weight`"), "{e}");
    }

    #[test]
    fn the_downlink_section_is_checked_per_shape() {
        let k = PlatformProfile::builtin("kaifeng").unwrap();
        let c = k.downlink.as_ref().and_then(|d| d.check.as_ref()).unwrap();
        assert_eq!(c.path, "/transport/check");
        assert_eq!(c.request["direction"], vec!["passStatus"]);
        assert_eq!(c.reply.serial, vec!["serialNum"]);
        let err = |t: &str| PlatformProfile::parse(t, "k.toml").unwrap_err().to_string();
        let kt = include_str!("../../profiles/platform/kaifeng.toml");
        // kaifeng: the check only, without an envelope operation, naming the direction.
        let e = err(&format!(
            "{kt}\n[downlink.heartbeat]\npath = \"/x\"\noperation = \"hb\"\nok = \"0\"\nfault = \"1\"\n[downlink.heartbeat.fields]\ngate = [\"g\"]\n"
        ));
        assert!(
            e.contains("[downlink.heartbeat] is not described for the kaifeng shape"),
            "{e}"
        );
        let e = err(&kt.replace(
            "path = \"/transport/check\"\n[downlink",
            "path = \"/transport/check\"\noperation = \"check\"\n[downlink",
        ));
        assert!(e.contains("`operation`"), "{e}");
        let e = err(&kt.replace("direction = [\"passStatus\"]", ""));
        assert!(e.contains("`direction`"), "{e}");
        // hebei: no downlink at all.
        let ht = include_str!("../../profiles/platform/hebei.toml");
        let check = &kt[kt.find("[downlink.check]").unwrap()..];
        let e = err(&format!("{ht}\n{check}"));
        assert!(e.contains("not described for the hebei shape"), "{e}");
        // transportControl numbers its own passes: no serial in its check reply.
        let tc = include_str!("../../profiles/platform/transport-control.toml");
        let e = err(&tc.replace(
            "control = \"isControl\"",
            "control = \"isControl\"\nserial = [\"lsh\"]",
        ));
        assert!(e.contains("`serial`"), "{e}");
    }
}
