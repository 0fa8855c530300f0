//! Camera simulators.
//!
//! - [`CameraSim`]: an HTTP client that pushes like a camera — VZ `AlarmInfoPlate` JSON (with
//!   images of any size), heartbeats, `AlarmGioIn`, offline replays and duplicates, Hikvision
//!   multipart `anpr.xml` + JPEGs — to the gateway's ingest URL, and records every reply.
//! - [`json_push_body`]: the body of any JSON-pushing camera, built from the JSON pointers of
//!   its `json-push` profile.
//! - [`IsapiSim`]: a Hikvision ISAPI endpoint on 127.0.0.1 that demands HTTP Digest and records
//!   the control requests (barrier, IO outputs), with faults (silent, late, refusing).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use chrono::{DateTime, FixedOffset, Offset, Utc};
use serde_json::{json, Map, Value};

use crate::camera::digest;
use crate::camera::generic::JsonSettings;
use crate::event::ImageKind;
use crate::plate::PlateColor;

/// One reply the gateway gave the simulated camera.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    /// The reply body as JSON (`Value::Null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A plate read for [`CameraSim::vz_plate`].
#[derive(Debug, Clone)]
pub struct VzPlate {
    pub plate: String,
    /// VZ `colorType` (1 blue, 2 yellow, 5 green …).
    pub color: u8,
    pub plateid: u64,
    pub offline: bool,
    /// Unix seconds of the capture.
    pub sec: i64,
    pub trigger: u32,
    /// Size of the scene image before base64 (0 = no image field).
    pub image_bytes: usize,
}

impl VzPlate {
    pub fn new(plate: &str, plateid: u64) -> Self {
        VzPlate {
            plate: plate.to_string(),
            color: 2,
            plateid,
            offline: false,
            sec: chrono::Utc::now().timestamp(),
            trigger: 8,
            image_bytes: 0,
        }
    }
}

/// A JPEG-looking blob (SOI … EOI) of `size` bytes.
pub fn fake_jpeg(size: usize) -> Vec<u8> {
    let size = size.max(4);
    let mut v: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    v[0] = 0xFF;
    v[1] = 0xD8;
    v[size - 2] = 0xFF;
    v[size - 1] = 0xD9;
    v
}

/// The body a VZ camera would POST for `p`.
pub fn vz_plate_json(p: &VzPlate) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut pr = json!({
        "license": p.plate, "colorType": p.color, "type": 1, "confidence": 96,
        "direction": 4, "triggerType": p.trigger, "plateid": p.plateid,
        "isoffline": u8::from(p.offline), "is_fake_plate": 0,
        "location": {"RECT": {"left": 1002, "top": 565, "right": 1263, "bottom": 674}},
        "timeStamp": {"Timeval": {"sec": p.sec, "usec": 687772}},
        "gioouts": [{"ionum": "0", "ctrltype": 0}],
    });
    if p.image_bytes > 0 {
        let scene = fake_jpeg(p.image_bytes);
        let crop = fake_jpeg((p.image_bytes / 50).max(64));
        pr["imageFile"] = json!(b64.encode(&scene));
        pr["imageFileLen"] = json!(scene.len());
        pr["imageFragmentFile"] = json!(b64.encode(&crop));
        pr["imageFragmentFileLen"] = json!(crop.len());
    }
    json!({"AlarmInfoPlate": {
        "channel": 0, "deviceName": "IVS", "ipaddr": "127.0.0.1",
        "serialno": "eff50e18-e3d3862b", "rule_id": 1, "user_data": "",
        "result": {"PlateResult": pr}}})
    .to_string()
    .into_bytes()
}

/// Hikvision `anpr.xml` for `plate` under `uuid`.
pub fn hik_anpr_xml(plate: &str, uuid: &str, color: &str, has_more: bool) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
 <ipAddress>127.0.0.1</ipAddress><channelID>1</channelID>
 <dateTime>2024-05-07T17:48:03.847+08:00</dateTime><activePostCount>80</activePostCount>
 <eventType>ANPR</eventType><eventState>active</eventState>
 <ANPR><licensePlate>{plate}</licensePlate><line>1</line><direction>forward</direction>
  <confidenceLevel>98.5</confidenceLevel><plateType>unknown</plateType><plateColor>{color}</plateColor>
  <vehicleType>SUVMPV</vehicleType><detectDir>8</detectDir>
  <pictureInfoList><pictureInfo><fileName>licensePlatePicture.jpg</fileName><type>licensePlatePicture</type></pictureInfo>
  <pictureInfo><fileName>detectionPicture.jpg</fileName><type>detectionPicture</type></pictureInfo></pictureInfoList>
  <listType>temporary</listType><originalLicensePlate>{plate}</originalLicensePlate></ANPR>
 <UUID>{uuid}</UUID><picNum>2</picNum><hasMoreData>{has_more}</hasMoreData>
 <isDataRetransmission>false</isDataRetransmission></EventNotificationAlert>"#
    )
}

/// A `multipart/form-data` body from (name, filename, content type, bytes) parts.
pub fn multipart_body(boundary: &str, parts: &[(&str, Option<&str>, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, ctype, data) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
                    .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(format!("Content-Type: {ctype}\r\n\r\n").as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// A plate read for a profile-described JSON camera ([`json_push_body`]).
#[derive(Debug, Clone)]
pub struct JsonPlate {
    pub plate: String,
    pub color: PlateColor,
    pub confidence: u8,
    /// The camera's record id (what `settings.id` points at).
    pub id: String,
    pub captured_at: DateTime<Utc>,
    /// Size of the scene image before base64 (0 = no image fields).
    pub image_bytes: usize,
}

impl JsonPlate {
    pub fn new(plate: &str, id: impl Into<String>) -> Self {
        JsonPlate {
            plate: plate.to_string(),
            color: PlateColor::Blue,
            confidence: 96,
            id: id.into(),
            captured_at: Utc::now(),
            image_bytes: 0,
        }
    }
}

/// Why a JSON body cannot be built from a profile's pointers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonBodyError {
    #[error("`{0}` is not a JSON pointer (it must start with /)")]
    NotPointer(String),
    #[error("pointer `{pointer}` passes through a value another pointer already set")]
    Clash { pointer: String },
    #[error("pointer `{pointer}`: array index `{token}` is not a number below 64")]
    Index { pointer: String, token: String },
}

/// Sets `value` at RFC 6901 `pointer` in `root`, creating objects (and arrays where the next
/// token is a number) on the way.
pub fn set_pointer(root: &mut Value, pointer: &str, value: Value) -> Result<(), JsonBodyError> {
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| JsonBodyError::NotPointer(pointer.to_string()))?;
    let tokens: Vec<String> = rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let clash = || JsonBodyError::Clash {
        pointer: pointer.to_string(),
    };
    let mut cur = root;
    for (i, token) in tokens.iter().enumerate() {
        let next = tokens.get(i + 1);
        let container = || match next {
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                Value::Array(Vec::new())
            }
            _ => Value::Object(Map::new()),
        };
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        let slot = match cur {
            Value::Object(m) => m.entry(token.clone()).or_insert(Value::Null),
            Value::Array(a) => {
                let idx = token
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n < 64)
                    .ok_or_else(|| JsonBodyError::Index {
                        pointer: pointer.to_string(),
                        token: token.clone(),
                    })?;
                if a.len() <= idx {
                    a.resize(idx + 1, Value::Null);
                }
                &mut a[idx]
            }
            _ => return Err(clash()),
        };
        if next.is_none() {
            if !slot.is_null() {
                return Err(clash());
            }
            *slot = value;
            return Ok(());
        }
        if slot.is_null() {
            *slot = container();
        }
        cur = slot;
    }
    Err(JsonBodyError::NotPointer(pointer.to_string()))
}

/// The colour value a camera described by `s` sends for `c`: the `color_map` key that maps to
/// it, else the colour's name (which the driver parses without a map entry).
pub fn json_color_value(s: &JsonSettings, c: PlateColor) -> String {
    s.color_map
        .iter()
        .find(|(_, name)| name.parse::<PlateColor>().ok() == Some(c))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| c.name().to_string())
}

/// The body a JSON camera described by the profile settings `s` would POST for `p`: each field
/// at the profile's pointer, the time in its `time_format`, base64 JPEGs at the image pointers.
pub fn json_push_body(s: &JsonSettings, p: &JsonPlate) -> Result<Vec<u8>, JsonBodyError> {
    let mut doc = Value::Object(Map::new());
    set_pointer(&mut doc, &s.plate, json!(p.plate))?;
    if let Some(ptr) = &s.color {
        set_pointer(&mut doc, ptr, json!(json_color_value(s, p.color)))?;
    }
    if let Some(ptr) = &s.confidence {
        set_pointer(&mut doc, ptr, json!(p.confidence))?;
    }
    if let Some(ptr) = &s.id {
        set_pointer(&mut doc, ptr, json!(p.id))?;
    }
    if let Some(ptr) = &s.time {
        let offset =
            FixedOffset::east_opt(s.utc_offset_hours.clamp(-23, 23) * 3600).unwrap_or(Utc.fix());
        let t = p.captured_at;
        let v = match s.time_format.as_str() {
            "unix" => json!(t.timestamp()),
            "unix_ms" => json!(t.timestamp_millis()),
            "rfc3339" => json!(t.with_timezone(&offset).to_rfc3339()),
            fmt => json!(t.with_timezone(&offset).format(fmt).to_string()),
        };
        set_pointer(&mut doc, ptr, v)?;
    }
    if p.image_bytes > 0 {
        let b64 = base64::engine::general_purpose::STANDARD;
        for img in &s.images {
            let jpeg = match img.kind {
                ImageKind::Plate => fake_jpeg((p.image_bytes / 50).max(64)),
                _ => fake_jpeg(p.image_bytes),
            };
            set_pointer(&mut doc, &img.path, json!(b64.encode(&jpeg)))?;
        }
    }
    Ok(doc.to_string().into_bytes())
}

/// A camera pushing to one ingest URL.
#[derive(Clone)]
pub struct CameraSim {
    http: reqwest::Client,
    url: String,
    replies: Arc<Mutex<Vec<Reply>>>,
}

impl CameraSim {
    /// `url`: the full ingest URL, e.g. `http://127.0.0.1:PORT/ingest/vz/cam1`.
    pub fn new(url: impl Into<String>) -> Self {
        CameraSim {
            http: reqwest::Client::new(),
            url: url.into(),
            replies: Arc::default(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every reply so far, in order.
    pub fn replies(&self) -> Vec<Reply> {
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub async fn post_raw(
        &self,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Reply, reqwest::Error> {
        let resp = self
            .http
            .post(&self.url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await?;
        let reply = Reply {
            status: resp.status().as_u16(),
            body: resp.text().await?,
        };
        self.replies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(reply.clone());
        Ok(reply)
    }

    pub async fn vz_plate(&self, p: &VzPlate) -> Result<Reply, reqwest::Error> {
        self.post_raw("application/json", vz_plate_json(p)).await
    }

    /// Registration / comet heartbeat (multipart form, with the camera's credentials in clear as
    /// real firmware sends them).
    pub async fn vz_heartbeat(&self) -> Result<Reply, reqwest::Error> {
        let b = "vzsimboundary";
        let body = multipart_body(
            b,
            &[
                ("device_name", None, "text/plain", b"IVS"),
                ("ipaddr", None, "text/plain", b"127.0.0.1"),
                ("port", None, "text/plain", b"80"),
                ("user_name", None, "text/plain", b"admin"),
                ("pass_wd", None, "text/plain", b"secret-do-not-log"),
                ("serialno", None, "text/plain", b"eff50e18-e3d3862b"),
                ("channel_num", None, "text/plain", b"1"),
            ],
        );
        self.post_raw(&format!("multipart/form-data; boundary={b}"), body)
            .await
    }

    /// IO input change (`AlarmGioIn`).
    pub async fn vz_gio(&self, source: u8, value: u8) -> Result<Reply, reqwest::Error> {
        let body = json!({"AlarmGioIn": {"deviceName": "IVS", "ipaddr": "127.0.0.1",
            "serialno": "eff50e18-e3d3862b",
            "result": {"TriggerResult": {"source": source, "value": value}}}});
        self.post_raw("application/json", body.to_string().into_bytes())
            .await
    }

    /// Hikvision listening-mode push: `anpr.xml` plus plate and scene JPEGs.
    pub async fn hik_anpr(
        &self,
        plate: &str,
        uuid: &str,
        jpeg_bytes: usize,
    ) -> Result<Reply, reqwest::Error> {
        let xml = hik_anpr_xml(plate, uuid, "blue", false);
        let crop = fake_jpeg(jpeg_bytes / 20 + 64);
        let scene = fake_jpeg(jpeg_bytes.max(64));
        let b = "hiksimboundary";
        let body = multipart_body(
            b,
            &[
                (
                    "anpr.xml",
                    Some("anpr.xml"),
                    "application/xml",
                    xml.as_bytes(),
                ),
                (
                    "licensePlatePicture.jpg",
                    Some("licensePlatePicture.jpg"),
                    "image/jpeg",
                    &crop,
                ),
                (
                    "detectionPicture.jpg",
                    Some("detectionPicture.jpg"),
                    "application/octet-stream",
                    &scene,
                ),
            ],
        );
        self.post_raw(&format!("multipart/form-data; boundary={b}"), body)
            .await
    }
}

/// One control request the ISAPI simulator accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct IsapiRequest {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// How the ISAPI simulator answered one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsapiOutcome {
    /// Authenticated and done (`statusCode` 1).
    Accepted,
    /// Authenticated, but the camera refused (`statusCode` 4, the `refuse` fault).
    Refused,
    /// 401 with a fresh Digest challenge: no or wrong credentials (a client's first request
    /// always gets one).
    Unauthorized,
}

/// One request as the ISAPI simulator's log holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct IsapiLogEntry {
    pub request: IsapiRequest,
    pub outcome: IsapiOutcome,
}

/// Faults of the ISAPI control endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IsapiFaults {
    /// Never answer (the client times out).
    pub silent: bool,
    /// Answer this late.
    pub delay: Duration,
    /// Answer authenticated requests with `statusCode` 4 (Invalid Operation), as a camera whose
    /// barrier is locked or whose output is not configured does.
    pub refuse: bool,
}

#[derive(Default)]
struct IsapiState {
    requests: Vec<IsapiRequest>,
    log: Vec<IsapiLogEntry>,
    unauthorized: u32,
    nonce_counter: u64,
    faults: IsapiFaults,
}

/// A mock Hikvision ISAPI control endpoint with Digest auth (MD5, qop=auth).
pub struct IsapiSim {
    addr: SocketAddr,
    state: Arc<Mutex<IsapiState>>,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for IsapiSim {
    fn drop(&mut self) {
        self.task.abort();
        // Ends the answers a `silent` fault holds back.
        let _ = self.stop.send(true);
    }
}

#[derive(Clone)]
struct IsapiCtx {
    state: Arc<Mutex<IsapiState>>,
    user: String,
    pass: String,
    stop: tokio::sync::watch::Receiver<bool>,
}

const REALM: &str = "DS-2CD-SIM";

impl IsapiSim {
    pub async fn start(user: &str, pass: &str) -> std::io::Result<IsapiSim> {
        Self::bind("127.0.0.1:0", user, pass).await
    }

    /// Listens on `addr` (`ecogate sim camera --isapi-port N` needs a fixed port).
    pub async fn bind(addr: &str, user: &str, pass: &str) -> std::io::Result<IsapiSim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<IsapiState>> = Arc::default();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let ctx = IsapiCtx {
            state: state.clone(),
            user: user.to_string(),
            pass: pass.to_string(),
            stop: stop_rx,
        };
        let app = axum::Router::new().fallback(isapi_any).with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(IsapiSim {
            addr,
            state,
            task,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IsapiState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every accepted control request so far.
    pub fn requests(&self) -> Vec<IsapiRequest> {
        self.state().requests.clone()
    }

    /// 401 answers given so far.
    pub fn unauthorized(&self) -> u32 {
        self.state().unauthorized
    }

    /// Removes and returns the log of answered requests (for a console that prints them).
    pub fn take_log(&self) -> Vec<IsapiLogEntry> {
        std::mem::take(&mut self.state().log)
    }

    pub fn faults(&self) -> IsapiFaults {
        self.state().faults.clone()
    }

    pub fn set_faults(&self, f: IsapiFaults) {
        self.state().faults = f;
    }
}

const STATUS_OK: &str = r#"<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><requestURL>/</requestURL><statusCode>1</statusCode><statusString>OK</statusString></ResponseStatus>"#;
const STATUS_REFUSED: &str = r#"<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><requestURL>/</requestURL><statusCode>4</statusCode><statusString>Invalid Operation</statusString><subStatusCode>notSupport</subStatusCode></ResponseStatus>"#;

async fn isapi_any(
    State(mut ctx): State<IsapiCtx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let faults = ctx
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .faults
        .clone();
    if faults.silent {
        // Hold the request until the simulator stops: the client's timeout ends it.
        let _ = ctx.stop.wait_for(|stopped| *stopped).await;
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ok = digest::verify(auth, &ctx.user, &ctx.pass, method.as_str(), REALM);
    let mut st = ctx.state.lock().unwrap_or_else(|e| e.into_inner());
    let request = IsapiRequest {
        method: method.to_string(),
        path,
        body,
    };
    if !ok {
        st.unauthorized += 1;
        st.nonce_counter += 1;
        st.log.push(IsapiLogEntry {
            request,
            outcome: IsapiOutcome::Unauthorized,
        });
        let nonce = format!(
            "{:032x}",
            st.nonce_counter.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        let challenge =
            format!(r#"Digest qop="auth", realm="{REALM}", nonce="{nonce}", stale="FALSE""#);
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", challenge)],
            "",
        )
            .into_response();
    }
    let (outcome, answer) = if faults.refuse {
        (IsapiOutcome::Refused, STATUS_REFUSED)
    } else {
        st.requests.push(request.clone());
        (IsapiOutcome::Accepted, STATUS_OK)
    };
    st.log.push(IsapiLogEntry { request, outcome });
    (
        StatusCode::OK,
        [("content-type", "application/xml")],
        answer,
    )
        .into_response()
}
