//! Hikvision ISAPI (`driver = "hik-isapi"`): listening-mode ANPR pushes (multipart `anpr.xml` +
//! JPEGs, or bare XML) and barrier/IO control over HTTP Digest (reference field-devices §1.4).
//!
//! XML is matched on local names only: the namespace differs by firmware (isapi.org ver20,
//! std-cgi ver10, prefixed when forwarded by an NVR).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::digest::{DigestClient, HttpError};
use super::{
    bad_request, ingest_id, register_until_closed, secs_setting, CameraCore, CameraRead, Direction,
    DriverError, Endpoint, IngestRegistry, PushError, MAX_PUSH_BYTES,
};
use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, Image, ImageKind};
use crate::health::DeviceHandle;
use crate::plate::PlateColor;

/// `[settings]` of a `camera` profile using `driver = "hik-isapi"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HikSettings {
    pub debounce_s: f64,
    /// Listening mode has no heartbeat of its own; 0 = never mark offline from silence.
    pub offline_after_s: f64,
    /// A plate-only push with `hasMoreData=true` waits this long for the full one (same UUID)
    /// with pictures before it is reported without them.
    pub more_data_wait_ms: u64,
    /// Where ISAPI control requests go, `http://host:port`. None = push only.
    pub control: Option<String>,
    pub username: String,
    /// Environment variable holding the password (secrets never sit in profiles or site files).
    pub password_env: Option<String>,
    /// Or a file holding it (first line).
    pub password_file: Option<String>,
    pub request_timeout_ms: u64,
    pub barrier_path: String,
    /// `{n}` is replaced by the output number.
    pub output_path: String,
    /// Output names for `relay.pulse` → ISAPI output number.
    pub outputs: BTreeMap<String, u32>,
}

impl Default for HikSettings {
    fn default() -> Self {
        HikSettings {
            debounce_s: 5.0,
            offline_after_s: 0.0,
            more_data_wait_ms: 1500,
            control: None,
            username: "admin".into(),
            password_env: None,
            password_file: None,
            request_timeout_ms: 3000,
            barrier_path: "/ISAPI/Parking/channels/1/barrierGate".into(),
            output_path: "/ISAPI/System/IO/outputs/{n}/trigger".into(),
            outputs: BTreeMap::new(),
        }
    }
}

impl HikSettings {
    /// Checks what serde cannot: the seconds settings are finite and in range.
    pub fn validate(&self) -> Result<(), DriverError> {
        secs_setting("debounce_s", self.debounce_s)?;
        secs_setting("offline_after_s", self.offline_after_s)?;
        Ok(())
    }
}

/// One parsed `EventNotificationAlert`.
#[derive(Debug, Clone, PartialEq)]
pub struct HikEvent {
    pub event_type: String,
    pub uuid: Option<String>,
    pub has_more: bool,
    pub retransmission: bool,
    /// Present for ANPR events.
    pub read: Option<CameraRead>,
    /// `pictureInfo` file name → type, to label the JPEG parts.
    pub pictures: Vec<(String, String)>,
}

fn first_text<'a>(doc: &'a roxmltree::Document<'a>, name: &str) -> Option<&'a str> {
    doc.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

pub fn color_from_name(s: &str) -> PlateColor {
    match s
        .trim()
        .to_ascii_lowercase()
        .replace(['_', '-', ' '], "")
        .as_str()
    {
        "blue" => PlateColor::Blue,
        "yellow" => PlateColor::Yellow,
        "white" => PlateColor::White,
        "black" => PlateColor::Black,
        "green" | "newenergy" => PlateColor::Green,
        "yellowgreen" | "greenyellow" => PlateColor::YellowGreen,
        _ => s.parse().unwrap_or(PlateColor::Other),
    }
}

/// Parse `anpr.xml` (or any `EventNotificationAlert`).
pub fn parse_alert(xml: &str) -> Result<HikEvent, PushError> {
    let xml = xml.trim_start_matches('\u{feff}');
    let doc = roxmltree::Document::parse(xml).map_err(|e| PushError::Xml(e.to_string()))?;
    let event_type = first_text(&doc, "eventType")
        .ok_or(PushError::Missing("eventType"))?
        .to_string();
    let flag = |name: &str| first_text(&doc, name).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let pictures = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "pictureInfo")
        .filter_map(|p| {
            let child = |name: &str| {
                p.children()
                    .find(|c| c.tag_name().name() == name)
                    .and_then(|c| c.text())
                    .map(|t| t.trim().to_string())
            };
            Some((child("fileName")?, child("type").unwrap_or_default()))
        })
        .collect();
    let read = if event_type.eq_ignore_ascii_case("ANPR") {
        let plate = first_text(&doc, "licensePlate")
            .or_else(|| first_text(&doc, "originalLicensePlate"))
            .or_else(|| first_text(&doc, "plateNumber"))
            .unwrap_or("");
        let plate = if super::vz::is_no_plate(plate) {
            String::new()
        } else {
            plate.to_string()
        };
        Some(CameraRead {
            plate,
            color: first_text(&doc, "plateColor")
                .map(color_from_name)
                .unwrap_or(PlateColor::Other),
            confidence: first_text(&doc, "confidenceLevel")
                .and_then(|c| c.parse::<f64>().ok())
                .map(|c| c.clamp(0.0, 100.0).round() as u8)
                .unwrap_or(0),
            source_id: first_text(&doc, "UUID").map(str::to_string),
            captured_at: first_text(&doc, "dateTime")
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
            direction: match first_text(&doc, "direction") {
                Some("forward") => Direction::Approach,
                Some("reverse") => Direction::Leave,
                _ => Direction::Unknown,
            },
            trigger: None,
            offline_replay: flag("isDataRetransmission"),
            images: Vec::new(),
        })
    } else {
        None
    };
    Ok(HikEvent {
        event_type,
        uuid: first_text(&doc, "UUID").map(str::to_string),
        has_more: flag("hasMoreData"),
        retransmission: flag("isDataRetransmission"),
        read,
        pictures,
    })
}

fn looks_like_xml(b: &[u8]) -> bool {
    let b = b.strip_prefix(&[0xEF, 0xBB, 0xBF][..]).unwrap_or(b);
    b.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'<')
}

fn image_kind(file: &str, pictures: &[(String, String)]) -> ImageKind {
    let ty = pictures
        .iter()
        .find(|(f, _)| f == file)
        .map(|(_, t)| t.as_str())
        .unwrap_or(file);
    if ty.to_ascii_lowercase().contains("plate") {
        ImageKind::Plate
    } else {
        ImageKind::Scene
    }
}

/// Splits one push body, as the ingest endpoint does, into the XML and the JPEG parts (file or
/// field name, bytes): multipart `anpr.xml` + pictures, or a bare XML body. For tests and
/// tools that hold a body rather than a request.
pub async fn split_push(
    content_type: &str,
    body: Bytes,
) -> Result<(Bytes, Vec<(String, Bytes)>), PushError> {
    let req = axum::http::Request::builder()
        .method("POST")
        .uri("/")
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| PushError::Unsupported(e.to_string()))?;
    HikIngest::collect(req).await
}

/// One Hikvision camera's ingest endpoint.
pub struct HikIngest {
    pub(crate) core: Arc<CameraCore>,
    settings: HikSettings,
    /// Plate-only reads waiting for their full push (by UUID).
    waiting: Mutex<HashMap<String, CameraRead>>,
}

impl HikIngest {
    async fn collect(req: Request) -> Result<(Bytes, Vec<(String, Bytes)>), PushError> {
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !ctype.starts_with("multipart/") {
            let body = axum::body::to_bytes(req.into_body(), MAX_PUSH_BYTES)
                .await
                .map_err(|e| PushError::Unsupported(e.to_string()))?;
            if !looks_like_xml(&body) {
                return Err(PushError::Unsupported(format!(
                    "expected multipart anpr.xml + JPEGs or an XML body, got content-type `{ctype}`"
                )));
            }
            return Ok((body, Vec::new()));
        }
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| PushError::Multipart(e.body_text()))?;
        let mut xml = None;
        let mut images = Vec::new();
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| PushError::Multipart(e.body_text()))?
        {
            let name = field.name().unwrap_or("").to_string();
            let file = field.file_name().unwrap_or("").to_string();
            let ct = field.content_type().unwrap_or("").to_ascii_lowercase();
            let data = field
                .bytes()
                .await
                .map_err(|e| PushError::Multipart(e.body_text()))?;
            if data.starts_with(&[0xFF, 0xD8]) {
                images.push((if file.is_empty() { name } else { file }, data));
            } else if xml.is_none()
                && (ct.contains("xml")
                    || file.ends_with(".xml")
                    || name.ends_with(".xml")
                    || name == "xml_file"
                    || looks_like_xml(&data))
            {
                xml = Some(data);
            }
        }
        let xml = xml.ok_or(PushError::Missing("XML part (anpr.xml)"))?;
        Ok((xml, images))
    }

    pub(crate) async fn handle(self: &Arc<Self>, req: Request) -> Response {
        let (xml, images) = match Self::collect(req).await {
            Ok(v) => v,
            Err(e) => return bad_request(&self.core, &e),
        };
        let text = match std::str::from_utf8(&xml) {
            Ok(t) => t,
            Err(_) => return bad_request(&self.core, &PushError::Xml("not UTF-8".into())),
        };
        let ev = match parse_alert(text) {
            Ok(e) => e,
            Err(e) => return bad_request(&self.core, &e),
        };
        self.core.seen().await;
        if let Some(mut read) = ev.read {
            for (file, jpeg) in images {
                read.images.push(Image {
                    kind: image_kind(&file, &ev.pictures),
                    jpeg,
                });
            }
            let uuid = ev.uuid.clone();
            match (&uuid, ev.has_more) {
                (Some(u), true) => {
                    // Hold the plate-only read briefly: the full one with pictures follows.
                    self.waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(u.clone(), read);
                    let me = self.clone();
                    let u = u.clone();
                    let wait = Duration::from_millis(self.settings.more_data_wait_ms);
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let held = me
                            .waiting
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&u);
                        if let Some(r) = held {
                            me.core.plate(r, Some(&u)).await;
                        }
                    });
                }
                _ => {
                    if let Some(u) = &uuid {
                        self.waiting
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(u);
                    }
                    self.core.plate(read, uuid.as_deref()).await;
                }
            }
        }
        (StatusCode::OK, "").into_response()
    }
}

fn read_password(s: &HikSettings) -> Result<String, DriverError> {
    if let Some(var) = &s.password_env {
        return std::env::var(var).map_err(|_| {
            DriverError::Settings(format!(
                "password_env: environment variable `{var}` is not set"
            ))
        });
    }
    if let Some(path) = &s.password_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| DriverError::Settings(format!("password_file `{path}`: {e}")))?;
        return Ok(text.lines().next().unwrap_or("").to_string());
    }
    Ok(String::new())
}

/// ISAPI control client (barrier, IO outputs).
pub struct HikControl {
    client: DigestClient,
    settings: HikSettings,
}

fn refusal(body: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(body).ok()?;
    let code = first_text(&doc, "statusCode")?;
    if code == "1" {
        return None;
    }
    Some(format!(
        "camera refused: statusCode {code} {}",
        first_text(&doc, "subStatusCode")
            .or_else(|| first_text(&doc, "statusString"))
            .unwrap_or("")
    ))
}

impl HikControl {
    pub fn new(settings: &HikSettings) -> Result<Option<HikControl>, DriverError> {
        let Some(ctl) = &settings.control else {
            return Ok(None);
        };
        let addr: Address = ctl
            .parse()
            .map_err(|e| DriverError::Settings(format!("control `{ctl}`: {e}")))?;
        let Address::Http { host, port } = addr else {
            return Err(DriverError::Settings(format!(
                "control `{ctl}` must be http://host:port"
            )));
        };
        let pass = read_password(settings)?;
        let client = DigestClient::new(
            &format!("http://{host}:{port}"),
            &settings.username,
            &pass,
            Duration::from_millis(settings.request_timeout_ms),
        )
        .map_err(|e| DriverError::Settings(e.to_string()))?;
        Ok(Some(HikControl {
            client,
            settings: settings.clone(),
        }))
    }

    async fn put(&self, path: &str, body: String) -> Result<(), String> {
        let text = self
            .client
            .send(Method::PUT, path, Some(body))
            .await
            .map_err(|e: HttpError| e.to_string())?;
        // A positive reply is no proof the arm moved (a locked gate still says OK); the lane
        // waits for the limit switch. A negative one is a definite refusal.
        match refusal(&text) {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    pub async fn barrier(&self, mode: &str) -> Result<(), String> {
        self.put(
            &self.settings.barrier_path,
            format!("<BarrierGate><ctrlMode>{mode}</ctrlMode></BarrierGate>"),
        )
        .await
    }

    pub async fn output(&self, n: u32, high: bool) -> Result<(), String> {
        let path = self.settings.output_path.replace("{n}", &n.to_string());
        let state = if high { "high" } else { "low" };
        self.put(
            &path,
            format!("<IOPortData><outputState>{state}</outputState></IOPortData>"),
        )
        .await
    }

    pub async fn run(self: &Arc<Self>, cmd: &Command) -> Result<(), String> {
        match cmd {
            Command::BarrierOpen => self.barrier("open").await,
            Command::BarrierClose => self.barrier("close").await,
            Command::RelayPulse { output, ms } => {
                let n = *self
                    .settings
                    .outputs
                    .get(output)
                    .ok_or_else(|| format!("unknown output `{output}`"))?;
                let guard = LowGuard {
                    ctl: Some(self.clone()),
                    n,
                };
                let on = self.output(n, true).await;
                if on.is_ok() {
                    tokio::time::sleep(Duration::from_millis(u64::from(*ms))).await;
                }
                let off = guard.finish().await;
                on.and(off)
            }
            other => Err(format!("{} is not supported over ISAPI here", other.name())),
        }
    }
}

/// Sets an ISAPI output low however the pulse ends.
struct LowGuard {
    ctl: Option<Arc<HikControl>>,
    n: u32,
}

impl LowGuard {
    async fn finish(mut self) -> Result<(), String> {
        let ctl = self.ctl.take();
        match ctl {
            Some(c) => set_low_retrying(&c, self.n).await,
            None => Ok(()),
        }
    }
}

impl Drop for LowGuard {
    fn drop(&mut self) {
        if let Some(c) = self.ctl.take() {
            let n = self.n;
            if let Ok(h) = tokio::runtime::Handle::try_current() {
                h.spawn(async move {
                    let _ = set_low_retrying(&c, n).await;
                });
            }
        }
    }
}

async fn set_low_retrying(c: &HikControl, n: u32) -> Result<(), String> {
    let mut last = String::new();
    for i in 0..5u32 {
        match c.output(n, false).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::warn!(output = n, error = %e, "ISAPI output low failed; retrying");
                last = e;
                tokio::time::sleep(Duration::from_millis(200 * u64::from(i + 1))).await;
            }
        }
    }
    Err(last)
}

/// Start a Hikvision camera: registers `/ingest/hik/{id}` until the command sender is dropped;
/// commands go to the ISAPI `control` endpoint when one is configured.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &HikSettings,
    events: mpsc::Sender<DeviceEvent>,
    registry: &IngestRegistry,
) -> Result<DeviceHandle, DriverError> {
    let id = ingest_id(name, address)?;
    // Both up front: nothing may be registered for a camera whose settings are refused.
    let debounce = secs_setting("debounce_s", settings.debounce_s)?;
    let offline_after = secs_setting("offline_after_s", settings.offline_after_s)?;
    let control = HikControl::new(settings)?.map(Arc::new);
    let core = CameraCore::new(name, events, debounce);
    let ingest = Arc::new(HikIngest {
        core: core.clone(),
        settings: settings.clone(),
        waiting: Mutex::new(HashMap::new()),
    });
    registry.insert("hik", &id, Endpoint::Hik(ingest))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    core.spawn_watchdog(offline_after, stop_rx);
    let unregister = register_until_closed(registry, "hik", &id, stop_tx);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let dev = name.to_string();
    let cmd_core = core.clone();
    tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            let Some(ctl) = &control else {
                tracing::warn!(device = %dev, command = cmd.name(), "no `control` URL in settings; command ignored");
                continue;
            };
            if let Err(e) = ctl.run(&cmd).await {
                cmd_core.count_error(&e);
                tracing::warn!(device = %dev, command = cmd.name(), error = %e, "ISAPI command failed");
            }
        }
        unregister();
    });
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: cmd_tx,
        health: core.health(),
    })
}
