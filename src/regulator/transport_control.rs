//! The transportControl protocol shape (安车 / 天地人车 / 信阳, reference §4.1): one JSON envelope
//! `{organ, ipctype, access_token, value}` POSTed per operation, a login for a token that lasts
//! `token_ttl_secs`, records to `put_data`, photos to `put_file`. Names come from the profile.

use super::profile::{CredentialPlace, FieldMap, PhotoEncoding, PlatformProfile};
use crate::ledger::{site_zone, BarrierMode, Direction};
use crate::vehicle::{EmissionStage, Fuel};
use chrono::{DateTime, Utc};
use ecogate_drivers::plate::PlateColor;
use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the site says about itself in every record.
#[derive(Debug, Clone)]
pub struct SiteFacts {
    /// 企业编号 / organ code (the enterprise's credit code unless the platform issued another).
    pub enterprise: String,
    pub enterprise_name: String,
}

/// One pass as uploaded: the facts of a ledger event, already resolved to a gate number.
#[derive(Debug, Clone, PartialEq)]
pub struct PassRecord {
    pub seq: i64,
    pub event_id: String,
    pub serial: String,
    /// 道闸编号.
    pub gate: String,
    pub direction: Direction,
    pub plate: String,
    pub color: PlateColor,
    pub time: DateTime<Utc>,
    pub barrier: BarrierMode,
    pub stage: Option<EmissionStage>,
    pub fuel: Option<Fuel>,
    /// (role, sha256) of each photo, in recorded order.
    pub photos: Vec<(String, String)>,
    /// Entered later from the paper log (补录, a `backfill` event): sent where the profile
    /// maps a `backfill` field.
    pub backfill: bool,
}

/// 流水号: enterprise + gate + A|B + yyMMddHHmmss (§4.8), plus the last four digits of the ledger
/// seq so two passes in the same second at one gate differ. Derived only from the event, so a
/// resend after a crash carries the same serial and the platform can drop it as a duplicate.
pub fn serial_for(
    enterprise: &str,
    gate: &str,
    direction: Direction,
    at: DateTime<Utc>,
    seq: i64,
) -> String {
    let ab = match direction {
        Direction::In => 'A',
        Direction::Out => 'B',
    };
    format!(
        "{enterprise}{gate}{ab}{}{:04}",
        at.with_timezone(&site_zone()).format("%y%m%d%H%M%S"),
        seq.rem_euclid(10_000)
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth retrying: network, timeout, 5xx, login trouble.
    Transient(String),
    /// The platform refused this record (validation); resending it unchanged will not help.
    Rejected(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(m) => write!(f, "{m}"),
            SendError::Rejected(m) => write!(f, "rejected: {m}"),
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Whether `s` is well-formed padded base64 (the mock's check).
pub fn is_base64(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 4 != 0 {
        return false;
    }
    let pad = b.iter().rev().take_while(|c| **c == b'=').count();
    pad <= 2
        && b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn put(obj: &mut Map<String, Value>, fields: &FieldMap, key: &str, v: &str) {
    if let Some(names) = fields.get(key) {
        for n in names {
            obj.insert(n.clone(), Value::String(v.to_string()));
        }
    }
}

fn code<'a>(table: &'a std::collections::BTreeMap<String, String>, key: &str) -> &'a str {
    table.get(key).map(String::as_str).unwrap_or("")
}

fn direction_key(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

fn barrier_key(b: BarrierMode) -> &'static str {
    match b {
        BarrierMode::Auto => "auto",
        BarrierMode::Manual => "manual",
        BarrierMode::Remote => "remote",
    }
}

/// The `value` of a shareDrivingRecord.
pub fn record_value(p: &PlatformProfile, site: &SiteFacts, r: &PassRecord) -> Value {
    let f = &p.record.fields;
    let mut v = Map::new();
    let time = local(p, r.time);
    put(&mut v, f, "serial", &r.serial);
    put(&mut v, f, "enterprise", &site.enterprise);
    put(&mut v, f, "enterprise_name", &site.enterprise_name);
    put(&mut v, f, "gate", &r.gate);
    put(&mut v, f, "plate", &r.plate);
    put(
        &mut v,
        f,
        "plate_color",
        code(&p.codes.plate_color, r.color.name()),
    );
    put(&mut v, f, "time", &time);
    put(
        &mut v,
        f,
        "barrier",
        code(&p.codes.barrier, barrier_key(r.barrier)),
    );
    put(
        &mut v,
        f,
        "direction",
        code(&p.codes.direction, direction_key(r.direction)),
    );
    // Unknown stage/fuel go out as the tables' own "unknown"/"other" codes (X, Z), never empty.
    let stage = r.stage.unwrap_or(EmissionStage::Unknown).code();
    put(&mut v, f, "stage", &stage);
    let fuel = r.fuel.unwrap_or(Fuel::Other).code().to_string();
    put(&mut v, f, "fuel", &fuel);
    let backfill = if r.backfill { "yes" } else { "no" };
    put(&mut v, f, "backfill", code(&p.codes.backfill, backfill));
    for (k, c) in &p.record.constants {
        v.insert(k.clone(), c.clone());
    }
    Value::Object(v)
}

/// The `value` of a sharePhotoInfo for photo `index` (1-based) of the record.
pub fn photo_value(
    p: &PlatformProfile,
    site: &SiteFacts,
    r: &PassRecord,
    index: usize,
    role: &str,
    jpeg: &[u8],
) -> Value {
    let f = &p.photo.fields;
    let mut v = Map::new();
    put(&mut v, f, "serial", &r.serial);
    put(&mut v, f, "enterprise", &site.enterprise);
    put(&mut v, f, "enterprise_name", &site.enterprise_name);
    put(&mut v, f, "gate", &r.gate);
    put(&mut v, f, "plate", &r.plate);
    put(
        &mut v,
        f,
        "plate_color",
        code(&p.codes.plate_color, r.color.name()),
    );
    put(&mut v, f, "index", &index.to_string());
    put(&mut v, f, "kind", p.photo_kind_code(role));
    let image = match p.photo.encoding {
        // `url` is refused for transportControl profiles (profile check).
        PhotoEncoding::Base64 | PhotoEncoding::Url => base64(jpeg),
        PhotoEncoding::DataUri => format!("data:image/jpeg;base64,{}", base64(jpeg)),
    };
    put(&mut v, f, "image", &image);
    put(&mut v, f, "time", &local(p, r.time));
    Value::Object(v)
}

pub fn local(p: &PlatformProfile, t: DateTime<Utc>) -> String {
    t.with_timezone(&site_zone())
        .format(&p.time.format)
        .to_string()
}

/// HTTP client of one transportControl platform, holding its token. Shared by the delivery
/// tasks of one destination (`&self` everywhere): the token sits behind an async lock so that
/// when it runs out only one task logs in and the others use the new token.
pub struct TcClient {
    http: reqwest::Client,
    base: String,
    profile: Arc<PlatformProfile>,
    organ: String,
    username: String,
    password: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    logins: AtomicU64,
}

impl TcClient {
    pub fn new(
        base: &str,
        profile: Arc<PlatformProfile>,
        organ: &str,
        username: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<TcClient, SendError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SendError::Transient(format!("cannot build the HTTP client: {e}")))?;
        Ok(TcClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            profile,
            organ: organ.to_string(),
            username: username.to_string(),
            password: password.to_string(),
            token: tokio::sync::Mutex::new(None),
            logins: AtomicU64::new(0),
        })
    }

    /// Logins made (KPI and tests: a token refresh shows here).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, SendError> {
        let url = format!("{}{}", self.base, path);
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("POST {url}: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| SendError::Transient(format!("POST {url}: reading the reply: {e}")))?;
        if status.as_u16() == 401 {
            return Ok(serde_json::json!({ self.profile.reply.code.as_str(): "401",
                self.profile.reply.message.as_str(): format!("HTTP 401: {text}") }));
        }
        if !status.is_success() {
            return Err(SendError::Transient(format!(
                "POST {url}: HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        serde_json::from_str(&text).map_err(|e| {
            SendError::Transient(format!(
                "POST {url}: reply is not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ))
        })
    }

    fn reply_code(&self, r: &Value) -> String {
        match r.get(&self.profile.reply.code) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    fn reply_message(&self, r: &Value) -> String {
        match r.get(&self.profile.reply.message) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => r.to_string(),
        }
    }

    async fn login(&self) -> Result<String, SendError> {
        let p = &self.profile;
        let mut env = Map::new();
        env.insert(p.envelope.organ.clone(), self.organ.clone().into());
        env.insert(
            p.envelope.operation.clone(),
            p.operations.login.clone().into(),
        );
        let mut creds = Map::new();
        creds.insert(p.auth.username.clone(), self.username.clone().into());
        creds.insert(p.auth.password.clone(), self.password.clone().into());
        match p.auth.credentials {
            CredentialPlace::Top => {
                env.extend(creds);
                env.insert(p.envelope.value.clone(), Value::Object(Map::new()));
            }
            CredentialPlace::Value => {
                env.insert(p.envelope.value.clone(), Value::Object(creds));
            }
        }
        let r = self.post(&p.paths.login, &Value::Object(env)).await?;
        let code = self.reply_code(&r);
        if code != p.reply.ok {
            return Err(SendError::Transient(format!(
                "login refused (code `{code}`): {}",
                self.reply_message(&r)
            )));
        }
        let token = r
            .get(&p.reply.token)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| SendError::Transient(format!("login reply has no `{}`", p.reply.token)))?
            .to_string();
        self.logins.fetch_add(1, Ordering::Relaxed);
        tracing::info!(base = %self.base, "platform login ok");
        Ok(token)
    }

    /// The current token, logging in when there is none or it has run out. The lock is held
    /// across the login so concurrent deliveries wait for one login instead of making many.
    async fn token(&self) -> Result<String, SendError> {
        let mut g = self.token.lock().await;
        if let Some((t, until)) = &*g {
            if Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let t = self.login().await?;
        *g = Some((
            t.clone(),
            Instant::now() + Duration::from_secs(self.profile.auth.token_ttl_secs),
        ));
        Ok(t)
    }

    /// Drops `refused` unless another task already replaced it.
    async fn forget_token(&self, refused: &str) {
        let mut g = self.token.lock().await;
        if g.as_ref().is_some_and(|(t, _)| t == refused) {
            *g = None;
        }
    }

    /// One operation with the current token; logs in again once if the platform says the
    /// token is no longer good.
    pub(crate) async fn call(&self, path: &str, op: &str, value: Value) -> Result<(), SendError> {
        self.call_reply(path, op, value).await.map(|_| ())
    }

    /// A query (vehicle check, policy, white list) or a report whose reply carries data:
    /// returns the reply's `value` (the envelope's value name), `Null` when it has none.
    pub async fn query(&self, path: &str, op: &str, value: Value) -> Result<Value, SendError> {
        let mut r = self.call_reply(path, op, value).await?;
        Ok(r.get_mut(&self.profile.envelope.value)
            .map(Value::take)
            .unwrap_or(Value::Null))
    }

    /// The organ code this client sends (the enterprise, unless the platform issued another).
    pub fn organ(&self) -> &str {
        &self.organ
    }

    pub fn profile(&self) -> &PlatformProfile {
        &self.profile
    }

    /// [`TcClient::call`] returning the whole accepted reply.
    async fn call_reply(&self, path: &str, op: &str, value: Value) -> Result<Value, SendError> {
        let p = &self.profile;
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut env = Map::new();
            env.insert(p.envelope.organ.clone(), self.organ.clone().into());
            env.insert(p.envelope.operation.clone(), op.into());
            env.insert(p.envelope.token.clone(), token.clone().into());
            env.insert(p.envelope.value.clone(), value.clone());
            let r = self.post(path, &Value::Object(env)).await?;
            let code = self.reply_code(&r);
            if code == p.reply.ok {
                return Ok(r);
            }
            let msg = self.reply_message(&r);
            // HTTP 401 arrives here as code "401" whatever the profile lists.
            if p.reply.auth_codes.contains(&code) || code == "401" {
                self.forget_token(&token).await;
                if attempt == 0 {
                    tracing::info!(%msg, "platform token refused; logging in again");
                    continue;
                }
                return Err(SendError::Transient(format!("token refused twice: {msg}")));
            }
            if code.starts_with('5') {
                return Err(SendError::Transient(format!(
                    "platform error {code}: {msg}"
                )));
            }
            return Err(SendError::Rejected(format!("code `{code}`: {msg}")));
        }
        Err(SendError::Transient("token refused".into()))
    }

    pub async fn send_record(&self, site: &SiteFacts, r: &PassRecord) -> Result<(), SendError> {
        let p = &self.profile;
        self.call(
            &p.paths.record,
            &p.operations.record,
            record_value(p, site, r),
        )
        .await
    }

    pub async fn send_photo(
        &self,
        site: &SiteFacts,
        r: &PassRecord,
        index: usize,
        role: &str,
        jpeg: &[u8],
    ) -> Result<(), SendError> {
        let p = &self.profile;
        self.call(
            &p.paths.photo,
            &p.operations.photo,
            photo_value(p, site, r, index, role, jpeg),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
            assert_eq!(is_base64(o), !o.is_empty());
        }
        assert!(!is_base64("Zm9v!A=="));
        assert!(!is_base64("Zg="));
    }

    #[test]
    fn serial_is_enterprise_gate_ab_local_time_and_seq() {
        let t = crate::ledger::parse_local_time("2024-01-15 08:30:00").unwrap();
        assert_eq!(
            serial_for("E123", "01", Direction::In, t, 12_345),
            "E12301A2401150830002345"
        );
        assert_eq!(
            serial_for("E123", "01", Direction::Out, t, 7),
            "E12301B2401150830000007"
        );
    }
}
