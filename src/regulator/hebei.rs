//! The 河北 一体化 low-emission shape (reference §4.4): an OAuth-style token from
//! `passEncToken` (form POST, `Client_id`/`Client_secret` headers), then one JSON upload per
//! pass with `Authorization: Bearer`. Entries and exits are separate uploads paired by the
//! `throughId` the platform returns for the entry; the exit echoes it. An exit whose entry
//! was never acknowledged goes without `throughId` (unpaired) — never dropped.

use super::auth::{self, md5_hex, Credentials, TokenCache};
use super::client::{data_text, now_ms, Http, HttpReply, Issued, LinkedPass, PhotoSource};
use super::profile::{AuthKind, HebeiShape, PasswordEncoding, PlatformProfile};
use super::transport_control::{base64, local, PassRecord, SendError};
use crate::ledger::Direction;
use crate::vehicle::{EmissionStage, Fuel};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

pub struct HebeiClient {
    http: Http,
    profile: Arc<PlatformProfile>,
    creds: Credentials,
    tokens: TokenCache,
}

enum Verdict {
    Ok(Value),
    Auth(String),
    Err(SendError),
}

/// The password as the token form carries it.
pub fn encode_password(enc: PasswordEncoding, password: &str) -> String {
    match enc {
        PasswordEncoding::Md5 => md5_hex(password),
        PasswordEncoding::Base64 => base64(password.as_bytes()),
        PasswordEncoding::Plain => password.to_string(),
    }
}

impl HebeiClient {
    pub fn new(
        base: &str,
        profile: Arc<PlatformProfile>,
        creds: Credentials,
        timeout: Duration,
    ) -> Result<HebeiClient, SendError> {
        if profile.hebei.is_none() {
            return Err(SendError::Rejected("profile has no [hebei] section".into()));
        }
        Ok(HebeiClient {
            http: Http::new(base, timeout)?,
            profile,
            creds,
            tokens: TokenCache::default(),
        })
    }

    fn shape(&self) -> &HebeiShape {
        self.profile
            .hebei
            .as_ref()
            .unwrap_or_else(|| unreachable!("hebei client without [hebei]"))
    }

    pub fn logins(&self) -> u64 {
        self.tokens.logins()
    }

    fn judge(&self, r: HttpReply, path: &str) -> Verdict {
        let h = self.shape();
        let code = match r.body.get("code") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let message = r
            .body
            .get("message")
            .or_else(|| r.body.get("msg"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if r.status == 401 || h.auth_codes.contains(&code) {
            return Verdict::Auth(format!("{path}: code `{code}`: {message}"));
        }
        if r.body.is_null() {
            return Verdict::Err(SendError::Transient(format!(
                "{path}: HTTP {}: reply is not JSON: {}",
                r.status,
                r.text.chars().take(200).collect::<String>()
            )));
        }
        if code == h.ok {
            return Verdict::Ok(r.body);
        }
        Verdict::Err(SendError::Rejected(format!(
            "{path}: code `{code}`: {message}"
        )))
    }

    async fn login(&self) -> Result<String, SendError> {
        let h = self.shape();
        let p = &self.profile;
        let headers = vec![
            (h.client_id_header.clone(), h.client_id.clone()),
            (h.client_secret_header.clone(), self.creds.secret.clone()),
        ];
        let form = [
            (p.auth.username.as_str(), self.creds.username.clone()),
            (
                p.auth.password.as_str(),
                encode_password(h.password_encoding, &self.creds.password),
            ),
        ];
        let r = self
            .http
            .post(&h.token, &headers, None, Some(&form))
            .await?;
        match self.judge(r, &h.token) {
            Verdict::Ok(v) => {
                let t = data_text(&v, "access_token").ok_or_else(|| {
                    SendError::Transient(format!("{}: reply has no data.access_token", h.token))
                })?;
                tracing::info!(base = %self.http.base(), "platform login ok");
                Ok(t)
            }
            Verdict::Auth(m) | Verdict::Err(SendError::Rejected(m)) => {
                Err(SendError::Transient(format!("login refused: {m}")))
            }
            Verdict::Err(e) => Err(e),
        }
    }

    async fn request(&self, path: &str, body: &Value) -> Result<Value, SendError> {
        let kind = self.profile.auth.kind;
        for attempt in 0..2 {
            let token = match kind {
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
                Verdict::Ok(v) => return Ok(v),
                Verdict::Auth(m) => {
                    if let Some(t) = &token {
                        self.tokens.forget(t).await;
                    }
                    if attempt == 0 && kind == AuthKind::Login {
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

    async fn photo(&self, r: &PassRecord, role: &str, photos: &PhotoSource) -> String {
        let Some((_, sha)) = r.photos.iter().find(|(k, _)| k == role) else {
            return String::new();
        };
        match photos.encode(self.profile.photo.encoding, sha).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(plate = %r.plate, photo = %sha, error = %e,
                    "photo not readable; pass uploaded without it");
                String::new()
            }
        }
    }

    /// The upload body of a pass; `through` is the pairing id an exit echoes.
    pub async fn body(&self, r: &PassRecord, through: Option<&str>, photos: &PhotoSource) -> Value {
        let p = &self.profile;
        let h = self.shape();
        let mut v = Map::new();
        let mut put = |k: &str, val: String| {
            v.insert(k.to_string(), Value::String(val));
        };
        let time = local(p, r.time);
        let head = self.photo(r, "head", photos).await;
        let body_pic = self.photo(r, "body", photos).await;
        match r.direction {
            Direction::In => {
                put("entranceNumber", r.gate.clone());
                put("entranceGateNumber", r.gate.clone());
                put("carInTime", time);
                put("entryHeadPic", head);
                put("entryBodyPic", body_pic);
            }
            Direction::Out => {
                put("exportNumber", r.gate.clone());
                put("exportGateNumber", r.gate.clone());
                put("carOutTime", time);
                put("factoryHeadPic", head);
                put("factoryBodyPic", body_pic);
                if let Some(t) = through {
                    put("throughId", t.to_string());
                }
            }
        }
        put("carPlate", r.plate.clone());
        put(
            "carPalteColor",
            p.codes
                .plate_color
                .get(r.color.name())
                .cloned()
                .unwrap_or_default(),
        );
        put(
            "dischargeStage",
            r.stage.unwrap_or(EmissionStage::Unknown).code(),
        );
        put("carFuel", r.fuel.unwrap_or(Fuel::Other).code().to_string());
        put("networkingStatus", h.networking_status.clone());
        Value::Object(v)
    }

    pub async fn send_pass(
        &self,
        r: &PassRecord,
        last: Option<&LinkedPass>,
        photos: &PhotoSource,
        issued: &mut Issued,
    ) -> Result<(), SendError> {
        let h = self.shape();
        let through = match r.direction {
            Direction::In => None,
            Direction::Out => {
                if issued.through_id.is_none() {
                    // The entry this exit closes: the vehicle's last acknowledged pass, if it
                    // was an entry that got a throughId.
                    issued.through_id = last
                        .filter(|l| l.direction == Direction::In && l.time <= r.time)
                        .and_then(|l| l.through_id.clone());
                    if issued.through_id.is_none() {
                        tracing::warn!(plate = %r.plate, seq = r.seq,
                            "exit without an acknowledged entry: sent unpaired (no throughId)");
                    }
                }
                issued.through_id.clone()
            }
        };
        let body = self.body(r, through.as_deref(), photos).await;
        let v = self.request(&h.upload, &body).await?;
        if r.direction == Direction::In {
            match data_text(&v, "throughId") {
                Some(t) => issued.through_id = Some(t),
                None => {
                    return Err(SendError::Rejected(format!(
                        "{}: entry acknowledged without data.throughId",
                        h.upload
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_encodings() {
        assert_eq!(
            encode_password(PasswordEncoding::Md5, "abc"),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(encode_password(PasswordEncoding::Base64, "abc"), "YWJj");
        assert_eq!(encode_password(PasswordEncoding::Plain, "abc"), "abc");
    }
}
