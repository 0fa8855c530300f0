//! The one client type the outbox uses, whatever the platform's protocol shape: an enum over
//! the shapes (no async trait objects needed). A delivery hands the client what the outbox
//! knows — the record, the ids the platform issued for it before (a resend reuses them), and
//! the vehicle's last acknowledged pass (for pairing and cargo) — and gets back the ids the
//! platform issued this time, which the outbox persists before it counts the delivery.

use super::hebei::HebeiClient;
use super::kaifeng::KaifengClient;
use super::profile::{PhotoEncoding, PlatformProfile};
use super::transport_control::{base64, local, PassRecord, SendError, SiteFacts, TcClient};
use crate::ledger::photos::PhotoStore;
use crate::ledger::Direction;
use chrono::{DateTime, Utc};
use ecogate_drivers::plate::PlateColor;
use ecogate_drivers::Mass;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;

/// Ids a platform issued for one record (persisted by the outbox, reused on every resend).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Platform-issued serial (kaifeng `/transport/check`), or the serial a cargo record was
    /// sent under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// hebei pairing id: on an entry, what the platform returned; on an exit, what was echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_id: Option<String>,
    /// Cargo records: the gate (道闸编号) of the pass the cargo went under, so that an
    /// `uplink resend` sends it again exactly as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_gate: Option<String>,
}

impl Issued {
    pub fn is_empty(&self) -> bool {
        self.serial.is_none() && self.through_id.is_none() && self.pass_gate.is_none()
    }
}

/// The last acknowledged pass of a vehicle, as the outbox remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedPass {
    pub seq: i64,
    pub direction: Direction,
    pub time: DateTime<Utc>,
    pub gate: String,
    /// The serial it was acknowledged under (gate-made or platform-issued).
    pub serial: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through_id: Option<String>,
}

/// A weighing with a cargo (货物), uploaded after its pass under that pass's serial.
#[derive(Debug, Clone, PartialEq)]
pub struct CargoRecord {
    pub seq: i64,
    pub plate: String,
    pub color: PlateColor,
    pub time: DateTime<Utc>,
    pub gate: String,
    pub name: String,
    /// Net weight (else gross) of the weighing.
    pub weight: Mass,
    /// 进货 (in) / 出货 (out), when the weighbridge system said.
    pub direction: Option<Direction>,
    /// The pass the weighing belongs to, when the ledger says which (its `pass_ref`, or for
    /// an 出货 weighing the vehicle's exit pass right after it); `serial` is the gate-made
    /// one, replaced by a platform-issued serial at delivery. None: the vehicle's last
    /// acknowledged pass before the weighing.
    pub pass: Option<LinkedPass>,
}

impl CargoRecord {
    /// Tonnes with three decimals ("32.500").
    pub fn tonnes(&self) -> String {
        let g = self.weight.grams.max(0);
        format!("{}.{:03}", g / 1_000_000, (g % 1_000_000) / 1000)
    }
}

/// Where photos come from, and how a URL-encoded photo is named.
#[derive(Clone)]
pub struct PhotoSource {
    pub store: PhotoStore,
    /// `photo_url_base` of the site: the evidence store as published over HTTP.
    pub url_base: Option<String>,
}

impl PhotoSource {
    /// The photo `sha256` in the profile's encoding; reading the store off the runtime.
    pub async fn encode(&self, encoding: PhotoEncoding, sha256: &str) -> Result<String, String> {
        if encoding == PhotoEncoding::Url {
            let base = self.url_base.as_deref().ok_or(
                "photo encoding `url` needs `photo_url_base` in the site's platform entry",
            )?;
            return Ok(format!("{}/{sha256}.jpg", base.trim_end_matches('/')));
        }
        let store = self.store.clone();
        let h = sha256.to_string();
        let bytes = tokio::task::spawn_blocking(move || store.get(&h))
            .await
            .map_err(|e| format!("photo reader failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(match encoding {
            PhotoEncoding::DataUri => format!("data:image/jpeg;base64,{}", base64(&bytes)),
            _ => base64(&bytes),
        })
    }
}

/// The client of one destination, any shape.
pub enum PlatformClient {
    TransportControl(TcClient, Arc<PlatformProfile>),
    Kaifeng(KaifengClient),
    Hebei(HebeiClient),
}

impl PlatformClient {
    /// Logins made so far.
    pub fn logins(&self) -> u64 {
        match self {
            PlatformClient::TransportControl(c, _) => c.logins(),
            PlatformClient::Kaifeng(c) => c.logins(),
            PlatformClient::Hebei(c) => c.logins(),
        }
    }

    /// Photos go as uploads of their own after the record (transportControl); the other
    /// shapes carry them in the record.
    pub fn separate_photos(&self) -> bool {
        matches!(self, PlatformClient::TransportControl(..))
    }

    /// Whether weighings with a cargo are uploaded to this destination.
    pub fn uploads_cargo(&self) -> bool {
        match self {
            PlatformClient::TransportControl(_, p) => p.cargo.is_some(),
            PlatformClient::Kaifeng(_) => true,
            PlatformClient::Hebei(_) => false,
        }
    }

    /// Before a pass is uploaded: obtains the ids the platform issues up front (a kaifeng
    /// serial), unless `issued` already holds them. The outbox makes them durable before
    /// [`PlatformClient::send_pass`].
    pub async fn prepare(&self, r: &PassRecord, issued: &mut Issued) -> Result<(), SendError> {
        match self {
            PlatformClient::Kaifeng(c) => c.prepare(r, issued).await,
            _ => Ok(()),
        }
    }

    /// Uploads a pass. `issued` holds what the platform issued for it before and receives
    /// what it issues now — also when the upload then fails, so a retry reuses it. `last` is
    /// the vehicle's previous acknowledged pass.
    pub async fn send_pass(
        &self,
        site: &SiteFacts,
        r: &PassRecord,
        last: Option<&LinkedPass>,
        photos: &PhotoSource,
        issued: &mut Issued,
    ) -> Result<(), SendError> {
        match self {
            PlatformClient::TransportControl(c, _) => c.send_record(site, r).await,
            PlatformClient::Kaifeng(c) => c.send_pass(r, photos, issued).await,
            PlatformClient::Hebei(c) => c.send_pass(r, last, photos, issued).await,
        }
    }

    /// Photo `index` (1-based) of a pass whose record is acknowledged (transportControl).
    pub async fn send_photo(
        &self,
        site: &SiteFacts,
        r: &PassRecord,
        index: usize,
        role: &str,
        jpeg: &[u8],
    ) -> Result<(), SendError> {
        match self {
            PlatformClient::TransportControl(c, _) => {
                c.send_photo(site, r, index, role, jpeg).await
            }
            _ => Ok(()),
        }
    }

    /// The serial a pass is known by at the platform once acknowledged.
    pub fn serial_of(&self, r: &PassRecord, issued: &Issued) -> String {
        issued.serial.clone().unwrap_or_else(|| r.serial.clone())
    }

    /// Uploads a cargo record under the serial of `pass`, its vehicle's acknowledged pass.
    pub async fn send_cargo(
        &self,
        site: &SiteFacts,
        c: &CargoRecord,
        pass: &LinkedPass,
    ) -> Result<(), SendError> {
        match self {
            PlatformClient::TransportControl(client, p) => {
                let Some(shape) = &p.cargo else {
                    return Ok(());
                };
                let v = tc_cargo_value(p, shape, site, c, pass);
                client.call(&shape.path, &shape.operation, v).await
            }
            PlatformClient::Kaifeng(k) => k.send_cargo(c, pass).await,
            PlatformClient::Hebei(_) => Ok(()),
        }
    }
}

/// The `value` of a transportControl shareGoodsRecord.
pub fn tc_cargo_value(
    p: &PlatformProfile,
    shape: &super::profile::CargoShape,
    site: &SiteFacts,
    c: &CargoRecord,
    pass: &LinkedPass,
) -> Value {
    let mut v = Map::new();
    let color = p
        .codes
        .plate_color
        .get(c.color.name())
        .cloned()
        .unwrap_or_default();
    for (k, val) in [
        ("serial", pass.serial.clone()),
        ("enterprise", site.enterprise.clone()),
        ("enterprise_name", site.enterprise_name.clone()),
        ("gate", pass.gate.clone()),
        ("plate", c.plate.clone()),
        ("plate_color", color),
        ("time", local(p, c.time)),
        ("name", c.name.clone()),
        ("amount", c.tonnes()),
        ("unit", shape.unit.clone()),
    ] {
        if let Some(names) = shape.fields.get(k) {
            for n in names {
                v.insert(n.clone(), Value::String(val.clone()));
            }
        }
    }
    Value::Object(v)
}

/// Reads `data.<key>` of a reply as text (strings or numbers).
pub(crate) fn data_text(reply: &Value, key: &str) -> Option<String> {
    match reply.get("data")?.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub(crate) fn direction_key(d: Direction) -> &'static str {
    match d {
        Direction::In => "in",
        Direction::Out => "out",
    }
}

/// JSON/form POSTs with extra headers, for the header-authenticated shapes.
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
}

/// A reply: HTTP status and the body as JSON (`Value::Null` when the body is not JSON).
pub(crate) struct HttpReply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Http {
    pub fn new(base: &str, timeout: std::time::Duration) -> Result<Http, SendError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SendError::Transient(format!("cannot build the HTTP client: {e}")))?;
        Ok(Http {
            client,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs `body` (JSON) or `form` (urlencoded). Network trouble and 5xx are transient;
    /// any other status comes back for the shape to judge.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(String, String)],
        body: Option<&Value>,
        form: Option<&[(&str, String)]>,
    ) -> Result<HttpReply, SendError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.client.post(&url);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json; charset=utf-8")
                .body(b.to_string());
        } else if let Some(f) = form {
            let enc: Vec<String> = f
                .iter()
                .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                .collect();
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(enc.join("&"));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::Transient(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| SendError::Transient(format!("POST {url}: reading the reply: {e}")))?;
        if status >= 500 {
            return Err(SendError::Transient(format!(
                "POST {url}: HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            )));
        }
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(HttpReply { status, body, text })
    }
}

/// application/x-www-form-urlencoded encoding of one key or value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
