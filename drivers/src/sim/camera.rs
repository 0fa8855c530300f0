//! Camera simulators.
//!
//! - [`CameraSim`]: an HTTP client that pushes like a camera — VZ `AlarmInfoPlate` JSON (with
//!   images of any size), heartbeats, `AlarmGioIn`, offline replays and duplicates, Hikvision
//!   multipart `anpr.xml` + JPEGs — to the gateway's ingest URL, and records every reply.
//! - [`IsapiSim`]: a Hikvision ISAPI endpoint on 127.0.0.1 that demands HTTP Digest and records
//!   the control requests (barrier, IO outputs).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use base64::Engine;
use serde_json::json;

use crate::camera::digest;

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

#[derive(Default)]
struct IsapiState {
    requests: Vec<IsapiRequest>,
    unauthorized: u32,
    nonce_counter: u64,
}

/// A mock Hikvision ISAPI control endpoint with Digest auth (MD5, qop=auth).
pub struct IsapiSim {
    addr: SocketAddr,
    state: Arc<Mutex<IsapiState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IsapiSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct IsapiCtx {
    state: Arc<Mutex<IsapiState>>,
    user: String,
    pass: String,
}

const REALM: &str = "DS-2CD-SIM";

impl IsapiSim {
    pub async fn start(user: &str, pass: &str) -> std::io::Result<IsapiSim> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<IsapiState>> = Arc::default();
        let ctx = IsapiCtx {
            state: state.clone(),
            user: user.to_string(),
            pass: pass.to_string(),
        };
        let app = axum::Router::new().fallback(isapi_any).with_state(ctx);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(IsapiSim { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn requests(&self) -> Vec<IsapiRequest> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }

    /// 401 answers given so far.
    pub fn unauthorized(&self) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unauthorized
    }
}

async fn isapi_any(
    State(ctx): State<IsapiCtx>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
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
    if !ok {
        st.unauthorized += 1;
        st.nonce_counter += 1;
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
    st.requests.push(IsapiRequest {
        method: method.to_string(),
        path,
        body,
    });
    (
        StatusCode::OK,
        [("content-type", "application/xml")],
        r#"<?xml version="1.0" encoding="UTF-8"?><ResponseStatus version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema"><requestURL>/</requestURL><statusCode>1</statusCode><statusString>OK</statusString></ResponseStatus>"#,
    )
        .into_response()
}
