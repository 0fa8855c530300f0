//! 臻识 Vzenith "IVS" HTTP push (`driver = "vz-push"`) and the many clones of its
//! `AlarmInfoPlate` JSON (reference field-devices §1.2).
//!
//! Commands go back in the HTTP reply body (`Response_AlarmInfoPlate`): `info:"ok"` opens the
//! gate through the camera's relay, `ivs_ioctrl` pulses a relay, `serialData` sends bytes out of
//! the camera's RS-485 port (LED/voice card). They queue per camera and ride on the next reply —
//! a plate push's, or a heartbeat's (comet polling holds the heartbeat until something is queued).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch, Notify};

use super::{
    bad_request, decode_base64, ingest_id, register_until_closed, secs_setting, CameraCore,
    CameraRead, Direction, DriverError, Endpoint, IngestRegistry, PushError,
};
use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, Image, ImageKind};
use crate::health::DeviceHandle;
use crate::plate::PlateColor;

/// How `barrier.open` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OpenVia {
    /// `"info":"ok"`: the camera pulses the relay configured in its own UI.
    #[default]
    Info,
    /// `ivs_ioctrl` pulse on `open_io`.
    Ioctrl,
}

/// `[settings]` of a `camera` profile using `driver = "vz-push"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct VzSettings {
    /// Repeats of one plate closer than this are one event.
    pub debounce_s: f64,
    /// No push or heartbeat for this long → offline (0 = never).
    pub offline_after_s: f64,
    /// Hold a live plate reply up to this long so a quick lane decision rides on it.
    pub reply_wait_ms: u64,
    /// Hold an idle heartbeat (comet poll) up to this long waiting for a command.
    pub comet_hold_ms: u64,
    pub open: OpenVia,
    pub open_io: u8,
    /// Relay pulsed for `barrier.close`; none = the barrier closes by itself.
    pub close_io: Option<u8>,
    pub pulse_ms: u32,
    /// Output names for `relay.pulse` → camera relay number (0-3).
    pub outputs: BTreeMap<String, u8>,
    /// Input roles → `AlarmGioIn` source (0-3 = IO input 1-4).
    pub inputs: BTreeMap<String, u8>,
    /// Trigger types that are not plate reads (64/65/66 = vehicle stay events).
    pub ignore_triggers: Vec<u32>,
    /// RS-485 channel used for passthrough bytes without an explicit channel.
    pub serial_channel: u8,
    /// Decode and attach images.
    pub images: bool,
    /// Camera-local time zone for clones that send `recotime` text, in hours east of UTC.
    pub utc_offset_hours: i32,
}

impl Default for VzSettings {
    fn default() -> Self {
        VzSettings {
            debounce_s: 5.0,
            offline_after_s: 60.0,
            reply_wait_ms: 0,
            comet_hold_ms: 10_000,
            open: OpenVia::Info,
            open_io: 0,
            close_io: None,
            pulse_ms: 500,
            outputs: BTreeMap::new(),
            inputs: BTreeMap::new(),
            ignore_triggers: vec![64, 65, 66],
            serial_channel: 0,
            images: true,
            utc_offset_hours: 8,
        }
    }
}

impl VzSettings {
    /// Checks what serde cannot: the seconds settings are finite and in range.
    pub fn validate(&self) -> Result<(), DriverError> {
        secs_setting("debounce_s", self.debounce_s)?;
        secs_setting("offline_after_s", self.offline_after_s)?;
        Ok(())
    }
}

/// Bytes for the card behind the camera's RS-485 (already encoded by the sign codec).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialOut {
    /// 0 = RS-485 #1, 1 = RS-485 #2 / RS-232. `None` = the profile's `serial_channel`.
    pub channel: Option<u8>,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
enum Pending {
    Open,
    Io { io: u8, value: u8, delay: u32 },
    Serial { channel: u8, data: Bytes },
    Trigger,
}

/// What a VZ push was.
#[derive(Debug, Clone, PartialEq)]
pub enum VzMessage {
    Plate {
        read: CameraRead,
        plateid: Option<i64>,
    },
    /// An IO input changed (`AlarmGioIn`): source 0-3, value 0/1.
    Input { source: u8, value: u8 },
    /// Bytes the camera received on its RS-485 (`SerialData`); not used by lanes.
    SerialIn,
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(rename = "AlarmInfoPlate", borrow, default)]
    plate: Option<AlarmInfoPlate<'a>>,
    #[serde(rename = "AlarmGioIn", default)]
    gio: Option<AlarmGioIn>,
    #[serde(rename = "SerialData", default)]
    serial: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct AlarmInfoPlate<'a> {
    #[serde(borrow)]
    result: Option<PlateResultWrap<'a>>,
}

#[derive(Deserialize)]
struct PlateResultWrap<'a> {
    #[serde(rename = "PlateResult", borrow)]
    plate_result: Option<PlateResult<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Num {
    I(i64),
    F(f64),
    S(String),
}

impl Num {
    fn as_i64(&self) -> Option<i64> {
        match self {
            Num::I(i) => Some(*i),
            Num::F(f) => Some(*f as i64),
            Num::S(s) => s.trim().parse::<f64>().ok().map(|f| f as i64),
        }
    }
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct PlateResult<'a> {
    license: Option<String>,
    #[serde(default)]
    colorType: Option<Num>,
    /// Clone spelling: `"platecolor":"蓝"`.
    #[serde(default)]
    platecolor: Option<String>,
    #[serde(default)]
    confidence: Option<Num>,
    #[serde(default)]
    direction: Option<Num>,
    #[serde(default)]
    triggerType: Option<Num>,
    #[serde(default)]
    plateid: Option<Num>,
    #[serde(default)]
    isoffline: Option<Num>,
    #[serde(default)]
    timeStamp: Option<TimeStamp>,
    /// Clone spelling: local time text.
    #[serde(default)]
    recotime: Option<String>,
    #[serde(default, borrow)]
    imageFile: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    imageFragmentFile: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct TimeStamp {
    Timeval: Option<Timeval>,
}

#[derive(Deserialize)]
struct Timeval {
    sec: Option<i64>,
    usec: Option<i64>,
}

#[derive(Deserialize)]
struct AlarmGioIn {
    result: Option<GioResult>,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct GioResult {
    TriggerResult: Option<TriggerResult>,
}

#[derive(Deserialize)]
struct TriggerResult {
    source: Option<Num>,
    value: Option<Num>,
}

/// Colour → VZ `colorType` code (what a camera, or a simulated one, sends).
pub fn color_code(c: PlateColor) -> u8 {
    match c {
        PlateColor::Blue => 1,
        PlateColor::Yellow => 2,
        PlateColor::White => 3,
        PlateColor::Black => 4,
        PlateColor::Green => 5,
        PlateColor::YellowGreen => 6,
        PlateColor::Other => 0,
    }
}

/// VZ `colorType` code → colour.
pub fn color_from_code(code: i64) -> PlateColor {
    match code {
        1 => PlateColor::Blue,
        2 => PlateColor::Yellow,
        3 => PlateColor::White,
        4 => PlateColor::Black,
        5 => PlateColor::Green,
        6 => PlateColor::YellowGreen,
        _ => PlateColor::Other,
    }
}

/// Plate text a camera uses for "no plate".
pub(crate) fn is_no_plate(s: &str) -> bool {
    matches!(
        s.trim(),
        "" | "_无_" | "无牌" | "无" | "无车牌" | "Unknown" | "unknown"
    )
}

/// Parse one push body. `images` = decode the base64 images; `utc_offset_hours` for `recotime`.
pub fn parse_push(
    body: &[u8],
    images: bool,
    utc_offset_hours: i32,
) -> Result<VzMessage, PushError> {
    let push: Push<'_> =
        serde_json::from_slice(body).map_err(|e| PushError::Json(e.to_string()))?;
    if let Some(p) = push.plate {
        let pr = p
            .result
            .and_then(|r| r.plate_result)
            .ok_or(PushError::Missing("AlarmInfoPlate.result.PlateResult"))?;
        let license = pr
            .license
            .ok_or(PushError::Missing("PlateResult.license"))?;
        let plate = if is_no_plate(&license) {
            String::new()
        } else {
            license.trim().to_string()
        };
        let color = match (&pr.colorType, &pr.platecolor) {
            (Some(n), _) => color_from_code(n.as_i64().unwrap_or(0)),
            (None, Some(s)) => s.parse().unwrap_or(PlateColor::Other),
            (None, None) => PlateColor::Other,
        };
        let captured_at = pr
            .timeStamp
            .and_then(|t| t.Timeval)
            .and_then(|tv| {
                let sec = tv.sec?;
                let nanos = (tv.usec.unwrap_or(0).clamp(0, 999_999) * 1000) as u32;
                DateTime::<Utc>::from_timestamp(sec, nanos)
            })
            .or_else(|| {
                pr.recotime
                    .as_deref()
                    .and_then(|t| local_text(t, utc_offset_hours))
            });
        let plateid = pr.plateid.as_ref().and_then(Num::as_i64);
        let mut imgs = Vec::new();
        if images {
            for (field, kind) in [
                (&pr.imageFile, ImageKind::Scene),
                (&pr.imageFragmentFile, ImageKind::Plate),
            ] {
                if let Some(b64) = field {
                    match decode_base64(b64) {
                        Some(jpeg) => imgs.push(Image {
                            kind,
                            jpeg: Bytes::from(jpeg),
                        }),
                        None if b64.trim().is_empty() => {}
                        // A damaged picture must not cost the read itself.
                        None => tracing::warn!(?kind, "image is not valid base64; dropped"),
                    }
                }
            }
        }
        let read = CameraRead {
            plate,
            color,
            confidence: pr
                .confidence
                .as_ref()
                .and_then(Num::as_i64)
                .unwrap_or(0)
                .clamp(0, 100) as u8,
            source_id: plateid.map(|p| p.to_string()),
            captured_at,
            direction: match pr.direction.as_ref().and_then(Num::as_i64) {
                Some(1) => Direction::Left,
                Some(2) => Direction::Right,
                Some(3) => Direction::Leave,
                Some(4) => Direction::Approach,
                _ => Direction::Unknown,
            },
            trigger: pr
                .triggerType
                .as_ref()
                .and_then(Num::as_i64)
                .and_then(|t| u32::try_from(t).ok()),
            offline_replay: pr.isoffline.as_ref().and_then(Num::as_i64).unwrap_or(0) != 0,
            images: imgs,
        };
        return Ok(VzMessage::Plate { read, plateid });
    }
    if let Some(g) = push.gio {
        let t = g
            .result
            .and_then(|r| r.TriggerResult)
            .ok_or(PushError::Missing("AlarmGioIn.result.TriggerResult"))?;
        let source = t.source.as_ref().and_then(Num::as_i64).unwrap_or(-1);
        let value = t.value.as_ref().and_then(Num::as_i64).unwrap_or(0);
        let source =
            u8::try_from(source).map_err(|_| PushError::Missing("TriggerResult.source"))?;
        return Ok(VzMessage::Input {
            source,
            value: u8::from(value != 0),
        });
    }
    if push.serial.is_some() {
        return Ok(VzMessage::SerialIn);
    }
    Err(PushError::Missing(
        "AlarmInfoPlate, AlarmGioIn or SerialData object",
    ))
}

fn local_text(t: &str, offset_hours: i32) -> Option<DateTime<Utc>> {
    let naive = NaiveDateTime::parse_from_str(t.trim(), "%Y-%m-%d %H:%M:%S").ok()?;
    let tz = FixedOffset::east_opt(offset_hours.clamp(-23, 23) * 3600)?;
    tz.from_local_datetime(&naive)
        .single()
        .map(|d| d.with_timezone(&Utc))
}

/// One VZ camera's ingest endpoint.
pub struct VzIngest {
    pub(crate) core: Arc<CameraCore>,
    settings: VzSettings,
    pending: Mutex<VecDeque<Pending>>,
    notify: Notify,
    pub(crate) passthrough: mpsc::Sender<SerialOut>,
}

const MAX_PENDING: usize = 64;
/// serialData entries carried by one reply.
const MAX_SERIAL_PER_REPLY: usize = 8;

impl VzIngest {
    fn queue(&self, p: Pending) {
        {
            let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= MAX_PENDING {
                tracing::warn!(device = %self.core.name, "command queue full (camera not polling?); dropping command");
                return;
            }
            q.push_back(p);
        }
        self.notify.notify_waiters();
    }

    fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Wait up to `hold` for a queued command.
    async fn wait_pending(&self, hold: Duration) {
        if hold.is_zero() {
            return;
        }
        let until = tokio::time::Instant::now() + hold;
        loop {
            let notified = self.notify.notified();
            if self.has_pending() {
                return;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return;
            }
        }
    }

    /// Move queued commands into a reply object; stops at the first command whose key is taken
    /// (it goes in the next reply).
    fn drain_into(&self, obj: &mut Map<String, Value>) {
        let mut q = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut serial = 0;
        while let Some(p) = q.front() {
            match p {
                Pending::Open => {
                    if obj.contains_key("info") {
                        break;
                    }
                    obj.insert("info".into(), json!("ok"));
                }
                Pending::Io { io, value, delay } => {
                    if obj.contains_key("ivs_ioctrl") {
                        break;
                    }
                    obj.insert(
                        "ivs_ioctrl".into(),
                        json!({"io": io, "value": value, "delay": delay}),
                    );
                }
                Pending::Trigger => {
                    if obj.contains_key("manualTrigger") {
                        break;
                    }
                    obj.insert("manualTrigger".into(), json!("ok"));
                }
                Pending::Serial { channel, data } => {
                    if serial >= MAX_SERIAL_PER_REPLY {
                        break;
                    }
                    use base64::Engine;
                    let entry = json!({
                        "serialChannel": channel,
                        "data": base64::engine::general_purpose::STANDARD.encode(data),
                        "dataLen": data.len(),
                    });
                    match obj
                        .entry("serialData")
                        .or_insert_with(|| Value::Array(Vec::new()))
                    {
                        Value::Array(a) => a.push(entry),
                        _ => break,
                    }
                    serial += 1;
                }
            }
            q.pop_front();
        }
    }

    fn reply(obj: Map<String, Value>) -> Response {
        let body = if obj.is_empty() {
            json!({"status": "ok"})
        } else {
            json!({ "Response_AlarmInfoPlate": obj })
        };
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }

    pub(crate) async fn handle(&self, headers: &HeaderMap, body: Bytes) -> Response {
        let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let ctype = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if first != Some(b'{') {
            let heartbeat = first.is_none()
                || ctype.starts_with("multipart/form-data")
                || ctype.starts_with("application/x-www-form-urlencoded");
            if !heartbeat {
                return bad_request(
                    &self.core,
                    &PushError::Unsupported(format!(
                        "expected AlarmInfoPlate JSON or a heartbeat form, got content-type `{ctype}`"
                    )),
                );
            }
            // Heartbeat / comet poll. Its form carries the camera's web password: never logged.
            self.core.seen().await;
            self.wait_pending(Duration::from_millis(self.settings.comet_hold_ms))
                .await;
            let mut obj = Map::new();
            self.drain_into(&mut obj);
            return Self::reply(obj);
        }
        let msg = match parse_push(&body, self.settings.images, self.settings.utc_offset_hours) {
            Ok(m) => m,
            Err(e) => return bad_request(&self.core, &e),
        };
        self.core.seen().await;
        let mut obj = Map::new();
        match msg {
            VzMessage::Plate { read, plateid } => {
                let offline = read.offline_replay;
                if let Some(id) = plateid {
                    obj.insert("plateid".into(), json!(id));
                    if offline {
                        obj.insert(
                            "ContinuePushOffline".into(),
                            json!({"plateid": id, "continue": 1}),
                        );
                    }
                }
                let ignored = read
                    .trigger
                    .is_some_and(|t| self.settings.ignore_triggers.contains(&t));
                if !ignored {
                    // Replays are keyed with the plate and camera time too: plateid restarts
                    // after a camera reset, and a new read must not be taken for a replay.
                    let key = plateid.map(|id| {
                        format!(
                            "{id}/{}/{}",
                            read.plate,
                            read.captured_at.map(|t| t.timestamp()).unwrap_or(0)
                        )
                    });
                    let emitted = self.core.plate(read, key.as_deref()).await;
                    if emitted && !offline {
                        self.wait_pending(Duration::from_millis(self.settings.reply_wait_ms))
                            .await;
                    }
                }
            }
            VzMessage::Input { source, value } => {
                if let Some((role, _)) = self.settings.inputs.iter().find(|(_, s)| **s == source) {
                    self.core.input(role, value != 0).await;
                }
            }
            VzMessage::SerialIn => {}
        }
        self.drain_into(&mut obj);
        Self::reply(obj)
    }

    fn command(&self, cmd: &Command) {
        let s = &self.settings;
        let p = match cmd {
            Command::BarrierOpen => match s.open {
                OpenVia::Info => Pending::Open,
                OpenVia::Ioctrl => Pending::Io {
                    io: s.open_io,
                    value: 2,
                    delay: s.pulse_ms,
                },
            },
            Command::BarrierClose => match s.close_io {
                Some(io) => Pending::Io {
                    io,
                    value: 2,
                    delay: s.pulse_ms,
                },
                None => {
                    tracing::warn!(device = %self.core.name, "barrier.close: no close_io in the profile; the barrier closes by itself");
                    return;
                }
            },
            Command::RelayPulse { output, ms } => match s.outputs.get(output) {
                Some(io) => Pending::Io {
                    io: *io,
                    value: 2,
                    // The camera's maximum pulse.
                    delay: (*ms).min(600_000),
                },
                None => {
                    tracing::warn!(device = %self.core.name, output = %output, "relay.pulse: unknown output");
                    return;
                }
            },
            Command::CameraTrigger => Pending::Trigger,
            other => {
                tracing::warn!(device = %self.core.name, command = other.name(), "send sign/voice through the sign driver (via = camera); ignored");
                return;
            }
        };
        self.queue(p);
    }
}

/// Start a VZ camera: registers `/ingest/vz/{id}` in `registry` until the handle's command
/// sender is dropped. The camera's RS-485 passthrough is `registry.vz_passthrough(name)`.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &VzSettings,
    events: mpsc::Sender<DeviceEvent>,
    registry: &IngestRegistry,
) -> Result<DeviceHandle, DriverError> {
    let id = ingest_id(name, address)?;
    // Both up front: nothing may be registered for a camera whose settings are refused.
    let debounce = secs_setting("debounce_s", settings.debounce_s)?;
    let offline_after = secs_setting("offline_after_s", settings.offline_after_s)?;
    let core = CameraCore::new(name, events, debounce);
    let (pt_tx, mut pt_rx) = mpsc::channel::<SerialOut>(64);
    let ingest = Arc::new(VzIngest {
        core: core.clone(),
        settings: settings.clone(),
        pending: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        passthrough: pt_tx,
    });
    registry.insert("vz", &id, Endpoint::Vz(ingest.clone()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    core.spawn_watchdog(offline_after, stop_rx);
    let unregister = register_until_closed(registry, "vz", &id, stop_tx);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let default_channel = settings.serial_channel;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(c) => ingest.command(&c),
                    None => break,
                },
                Some(out) = pt_rx.recv() => ingest.queue(Pending::Serial {
                    channel: out.channel.unwrap_or(default_channel),
                    data: out.data,
                }),
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
