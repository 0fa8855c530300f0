//! The 开封 中科九州 shape (reference §4.2): JSON POSTs answered `{success, code, message, data}`;
//! a login for a token sent in an HTTP header; the platform, not the gate, numbers each pass:
//! `/transport/check` issues `serialNum`, which the pass upload and its cargo records carry.
//! Paths and fixed values come from the profile's `[kaifeng]` section.

use super::auth::{self, Credentials, TokenCache};
use super::client::{
    data_text, direction_key, now_ms, CargoRecord, Http, HttpReply, Issued, LinkedPass, PhotoSource,
};
use super::profile::{AuthKind, KaifengShape, PlatformProfile};
use super::transport_control::{local, PassRecord, SendError};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub struct KaifengClient {
    http: Http,
    profile: Arc<PlatformProfile>,
    creds: Credentials,
    /// companyCode: the site's organ code.
    company_code: String,
    tokens: TokenCache,
}

/// What a kaifeng reply meant.
enum Verdict {
    Ok(Value),
    /// The platform already holds this serial (a resend): acknowledged.
    Duplicate,
    Auth(String),
    Err(SendError),
}

impl KaifengClient {
    pub fn new(
        base: &str,
        profile: Arc<PlatformProfile>,
        company_code: &str,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<KaifengClient, SendError> {
        if profile.kaifeng.is_none() {
            return Err(SendError::Rejected(
                "profile has no [kaifeng] section".into(),
            ));
        }
        Ok(KaifengClient {
            http: Http::new(base, timeout)?,
            profile,
            creds,
            company_code: company_code.to_string(),
            tokens: TokenCache::default(),
        })
    }

    fn shape(&self) -> &KaifengShape {
        // Checked in `new`.
        self.profile
            .kaifeng
            .as_ref()
            .unwrap_or_else(|| unreachable!("kaifeng client without [kaifeng]"))
    }

    pub fn logins(&self) -> u64 {
        self.tokens.logins()
    }

    pub fn profile(&self) -> &PlatformProfile {
        &self.profile
    }

    /// A query (the vehicle check before opening): `body` to `path` with the auth headers;
    /// the reply's `data`.
    pub async fn query(&self, path: &str, body: &Value) -> Result<Value, SendError> {
        match self.request(path, body).await? {
            Some(v) => Ok(v.get("data").cloned().unwrap_or(Value::Null)),
            None => Err(SendError::Rejected(format!(
                "{path}: answered as a duplicate, not as a query"
            ))),
        }
    }

    fn judge(&self, r: HttpReply, path: &str) -> Verdict {
        let k = self.shape();
        let message = r
            .body
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let code = match r.body.get("code") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let success = r.body.get("success").and_then(Value::as_bool) == Some(true);
        if r.status == 401 || k.auth_messages.iter().any(|m| message.contains(m.as_str())) {
            return Verdict::Auth(format!("{path}: {message}"));
        }
        if r.body.is_null() {
            return Verdict::Err(SendError::Transient(format!(
                "{path}: HTTP {}: reply is not JSON: {}",
                r.status,
                r.text.chars().take(200).collect::<String>()
            )));
        }
        if success && code == k.ok {
            return Verdict::Ok(r.body);
        }
        if k.duplicate_messages
            .iter()
            .any(|m| message.contains(m.as_str()))
        {
            return Verdict::Duplicate;
        }
        Verdict::Err(SendError::Rejected(format!(
            "{path}: code `{code}`: {message}"
        )))
    }

    async fn login(&self) -> Result<String, SendError> {
        let p = &self.profile;
        let k = self.shape();
        let body = json!({
            "companyCode": self.company(),
            p.auth.username.as_str(): self.creds.username,
            p.auth.password.as_str(): self.creds.password,
        });
        let r = self.http.post(&k.login, &[], Some(&body), None).await?;
        match self.judge(r, &k.login) {
            Verdict::Ok(v) => {
                let t = data_text(&v, "token").ok_or_else(|| {
                    SendError::Transient(format!("{}: login reply has no data.token", k.login))
                })?;
                tracing::info!(base = %self.http.base(), "platform login ok");
                Ok(t)
            }
            Verdict::Auth(m) | Verdict::Err(SendError::Rejected(m)) => {
                Err(SendError::Transient(format!("login refused: {m}")))
            }
            Verdict::Err(e) => Err(e),
            Verdict::Duplicate => Err(SendError::Transient("login: unexpected reply".into())),
        }
    }

    fn company(&self) -> &str {
        &self.company_code
    }

    /// One request with the auth headers of the profile's kind; logs in again once when the
    /// platform refuses the token.
    async fn request(&self, path: &str, body: &Value) -> Result<Option<Value>, SendError> {
        let auth_kind = self.profile.auth.kind;
        for attempt in 0..2 {
            let token = match auth_kind {
                AuthKind::Login => Some(
                    self.tokens
                        .get(
                            Duration::from_secs(self.profile.auth.token_ttl_secs),
                            || self.login(),
                        )
                        .await?,
                ),
                _ => None,
            };
            let headers =
                auth::headers(&self.profile.auth, &self.creds, token.as_deref(), now_ms());
            let r = self.http.post(path, &headers, Some(body), None).await?;
            match self.judge(r, path) {
                Verdict::Ok(v) => return Ok(Some(v)),
                Verdict::Duplicate => return Ok(None),
                Verdict::Auth(m) => {
                    if let Some(t) = &token {
                        self.tokens.forget(t).await;
                    }
                    if attempt == 0 && auth_kind == AuthKind::Login {
                        tracing::info!(message = %m, "platform token refused; logging in again");
                        continue;
                    }
                    return Err(SendError::Transient(format!("authentication refused: {m}")));
                }
                Verdict::Err(e) => return Err(e),
            }
        }
        Err(SendError::Transient("token refused".into()))
    }

    fn color(&self, r: &PassRecord) -> String {
        self.profile
            .codes
            .plate_color
            .get(r.color.name())
            .cloned()
            .unwrap_or_default()
    }

    /// Asks `/transport/check` for the pass's serial unless `issued` holds one already.
    pub async fn prepare(&self, r: &PassRecord, issued: &mut Issued) -> Result<(), SendError> {
        if issued.serial.is_some() {
            return Ok(());
        }
        let k = self.shape();
        let dir = direction_key(r.direction);
        let body = json!({
            "license": r.plate,
            "companyCode": self.company(),
            "licenseColor": self.color(r),
            "passStatus": self.profile.codes.direction.get(dir).cloned().unwrap_or_default(),
            "gateCode": r.gate,
        });
        let v = self.request(&k.check, &body).await?.ok_or_else(|| {
            SendError::Transient(format!("{}: no serialNum in the reply", k.check))
        })?;
        let s = data_text(&v, "serialNum").ok_or_else(|| {
            SendError::Transient(format!("{}: reply has no data.serialNum", k.check))
        })?;
        issued.serial = Some(s);
        Ok(())
    }

    pub async fn send_pass(
        &self,
        r: &PassRecord,
        photos: &PhotoSource,
        issued: &mut Issued,
    ) -> Result<(), SendError> {
        let k = self.shape();
        let p = &self.profile;
        let dir = direction_key(r.direction);
        let pass_status = p.codes.direction.get(dir).cloned().unwrap_or_default();
        let color = self.color(r);
        self.prepare(r, issued).await?;
        let serial = issued
            .serial
            .clone()
            .ok_or_else(|| SendError::Transient(format!("{}: no serialNum issued", k.check)))?;
        // One photo per pass record: the head (车头) picture if there is one, else the first.
        let chosen = r
            .photos
            .iter()
            .find(|(role, _)| role == "head")
            .or_else(|| r.photos.first());
        let mut image = String::new();
        if let Some((_, sha)) = chosen {
            match photos.encode(p.photo.encoding, sha).await {
                Ok(s) => image = s,
                Err(e) => {
                    tracing::warn!(serial = %serial, photo = %sha, error = %e,
                        "photo not readable; pass uploaded without it")
                }
            }
        }
        let time = local(p, r.time);
        let body = json!({
            "serialNum": serial,
            "companyCode": self.company(),
            "gateCode": r.gate,
            "license": r.plate,
            "licenseColor": color,
            "passStatus": pass_status,
            "gateSignal": k.gate_signal,
            "passTime": time,
            "imageNo": if image.is_empty() { "0" } else { "1" },
            "imageType": k.image_type.get(dir).cloned().unwrap_or_default(),
            "imageUrl": image,
            "imageRecordTime": time,
        });
        self.request(&k.pass, &body).await.map(|_| ())
    }

    pub async fn send_cargo(&self, c: &CargoRecord, pass: &LinkedPass) -> Result<(), SendError> {
        let k = self.shape();
        let p = &self.profile;
        let body = json!({
            "serialNum": pass.serial,
            "companyCode": self.company(),
            "gateCode": pass.gate,
            "license": c.plate,
            "licenseColor": p.codes.plate_color.get(c.color.name()).cloned().unwrap_or_default(),
            "cargoName": c.name,
            "cargoWeight": c.tonnes(),
            "cargoRecordTime": local(p, c.time),
            "cargoWeightUnit": k.cargo_unit,
        });
        self.request(&k.cargo, &body).await.map(|_| ())
    }
}
