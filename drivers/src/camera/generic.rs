//! A camera described by its profile (`driver = "json-push"`): JSON pointers (RFC 6901) say where
//! the plate, colour, time, confidence, record id and images sit in the pushed JSON. Covers the
//! VZ clones with other field names, Uniview LAPI, GA/T 1400-style bodies and the like without
//! new code.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::{
    bad_request, decode_base64, ingest_id, register_until_closed, secs_setting, CameraCore,
    CameraRead, Direction, DriverError, Endpoint, IngestRegistry, PushError,
};
use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, Image, ImageKind};
use crate::health::DeviceHandle;
use crate::plate::PlateColor;

#[derive(Debug, Clone, Deserialize)]
pub struct ImagePath {
    /// JSON pointer to a base64 string.
    pub path: String,
    #[serde(default = "scene")]
    pub kind: ImageKind,
}

fn scene() -> ImageKind {
    ImageKind::Scene
}

/// `[settings]` of a `camera` profile using `driver = "json-push"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct JsonSettings {
    /// JSON pointer to the plate text, e.g. `/AlarmInfoPlate/result/PlateResult/license`.
    pub plate: String,
    /// Pointer to the colour value (number or text).
    pub color: Option<String>,
    /// Camera colour value → colour (`blue`, `yellow`, `white`, `black`, `green`,
    /// `yellow_green`, `other`). Values not listed are tried as names/蓝/national codes.
    pub color_map: BTreeMap<String, String>,
    pub confidence: Option<String>,
    /// Pointer to the capture time.
    pub time: Option<String>,
    /// `unix`, `unix_ms`, `rfc3339`, or a chrono format such as `%Y-%m-%d %H:%M:%S` (local time
    /// at `utc_offset_hours`).
    pub time_format: String,
    pub utc_offset_hours: i32,
    /// Pointer to the camera's record id (replays are de-duplicated on it).
    pub id: Option<String>,
    pub images: Vec<ImagePath>,
    /// Plate values that mean "no plate".
    pub no_plate: Vec<String>,
    /// Body of the HTTP 200 reply (many clones want a fixed JSON acknowledgement).
    pub reply: String,
    pub debounce_s: f64,
    pub offline_after_s: f64,
    /// Remove ASCII control characters before parsing (some Uniview firmware sends them).
    pub strip_control_chars: bool,
}

impl Default for JsonSettings {
    fn default() -> Self {
        JsonSettings {
            plate: "/plate".into(),
            color: None,
            color_map: BTreeMap::new(),
            confidence: None,
            time: None,
            time_format: "unix".into(),
            utc_offset_hours: 8,
            id: None,
            images: Vec::new(),
            no_plate: vec![
                "_无_".into(),
                "无牌".into(),
                "Unknown".into(),
                String::new(),
            ],
            reply: r#"{"code":0,"msg":"ok"}"#.into(),
            debounce_s: 5.0,
            offline_after_s: 0.0,
            strip_control_chars: false,
        }
    }
}

impl JsonSettings {
    /// Checks what serde cannot: the seconds settings are finite and in range.
    pub fn validate(&self) -> Result<(), DriverError> {
        secs_setting("debounce_s", self.debounce_s)?;
        secs_setting("offline_after_s", self.offline_after_s)?;
        Ok(())
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_time(text: &str, format: &str, offset_hours: i32) -> Option<DateTime<Utc>> {
    let t = text.trim();
    match format {
        "unix" => DateTime::from_timestamp(t.parse::<f64>().ok()? as i64, 0),
        "unix_ms" => DateTime::from_timestamp_millis(t.parse::<f64>().ok()? as i64),
        "rfc3339" => DateTime::parse_from_rfc3339(t)
            .ok()
            .map(|d| d.with_timezone(&Utc)),
        fmt => {
            let naive = NaiveDateTime::parse_from_str(t, fmt).ok()?;
            FixedOffset::east_opt(offset_hours.clamp(-23, 23) * 3600)?
                .from_local_datetime(&naive)
                .single()
                .map(|d| d.with_timezone(&Utc))
        }
    }
}

/// Parse one push with the profile's pointers.
pub fn parse(body: &[u8], s: &JsonSettings) -> Result<CameraRead, PushError> {
    let v: Value = if s.strip_control_chars {
        let clean: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_control() || matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .collect();
        serde_json::from_slice(&clean)
    } else {
        serde_json::from_slice(body)
    }
    .map_err(|e| PushError::Json(e.to_string()))?;
    let plate_raw = v
        .pointer(&s.plate)
        .and_then(scalar)
        .ok_or(PushError::Missing("plate (settings.plate pointer)"))?;
    let plate = if s.no_plate.iter().any(|n| n == plate_raw.trim()) {
        String::new()
    } else {
        plate_raw.trim().to_string()
    };
    let color = s
        .color
        .as_deref()
        .and_then(|p| v.pointer(p))
        .and_then(scalar)
        .map(|c| {
            let mapped = s.color_map.get(&c).cloned().unwrap_or(c);
            mapped.parse().unwrap_or(PlateColor::Other)
        })
        .unwrap_or(PlateColor::Other);
    let confidence = s
        .confidence
        .as_deref()
        .and_then(|p| v.pointer(p))
        .and_then(scalar)
        .and_then(|c| c.parse::<f64>().ok())
        .map(|c| c.clamp(0.0, 100.0).round() as u8)
        .unwrap_or(0);
    let captured_at = s
        .time
        .as_deref()
        .and_then(|p| v.pointer(p))
        .and_then(scalar)
        .and_then(|t| parse_time(&t, &s.time_format, s.utc_offset_hours));
    let source_id = s.id.as_deref().and_then(|p| v.pointer(p)).and_then(scalar);
    let mut images = Vec::new();
    for ip in &s.images {
        if let Some(b64) = v.pointer(&ip.path).and_then(Value::as_str) {
            match decode_base64(b64) {
                Some(jpeg) => images.push(Image {
                    kind: ip.kind,
                    jpeg: Bytes::from(jpeg),
                }),
                None => tracing::warn!(path = %ip.path, "image is not valid base64; dropped"),
            }
        }
    }
    Ok(CameraRead {
        plate,
        color,
        confidence,
        source_id,
        captured_at,
        direction: Direction::Unknown,
        trigger: None,
        offline_replay: false,
        images,
    })
}

pub struct JsonIngest {
    pub(crate) core: Arc<CameraCore>,
    settings: JsonSettings,
}

impl JsonIngest {
    pub(crate) async fn handle(&self, body: Bytes) -> Response {
        let read = match parse(&body, &self.settings) {
            Ok(r) => r,
            Err(e) => return bad_request(&self.core, &e),
        };
        self.core.seen().await;
        let key = read.source_id.clone();
        self.core.plate(read, key.as_deref()).await;
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            self.settings.reply.clone(),
        )
            .into_response()
    }
}

/// Start a profile-described JSON camera: registers `/ingest/json/{id}`. It takes no commands
/// (gate control for such cameras goes through an IO module).
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &JsonSettings,
    events: mpsc::Sender<DeviceEvent>,
    registry: &IngestRegistry,
) -> Result<DeviceHandle, DriverError> {
    let id = ingest_id(name, address)?;
    if !settings.plate.starts_with('/') {
        return Err(DriverError::Settings(format!(
            "plate = `{}` is not a JSON pointer (it must start with /)",
            settings.plate
        )));
    }
    // Both up front: nothing may be registered for a camera whose settings are refused.
    let debounce = secs_setting("debounce_s", settings.debounce_s)?;
    let offline_after = secs_setting("offline_after_s", settings.offline_after_s)?;
    let core = CameraCore::new(name, events, debounce);
    let ingest = Arc::new(JsonIngest {
        core: core.clone(),
        settings: settings.clone(),
    });
    registry.insert("json", &id, Endpoint::Json(ingest))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    core.spawn_watchdog(offline_after, stop_rx);
    let unregister = register_until_closed(registry, "json", &id, stop_tx);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let dev = name.to_string();
    tokio::spawn(async move {
        while let Some(cmd) = cmd_rx.recv().await {
            tracing::warn!(device = %dev, command = cmd.name(), "a json-push camera takes no commands; ignored");
        }
        unregister();
    });
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: cmd_tx,
        health: core.health(),
    })
}
