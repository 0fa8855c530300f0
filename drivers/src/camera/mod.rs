//! License-plate cameras that push to the gateway's HTTP listener.
//!
//! Each camera device registers under its ingest id (`ingest:ID` in the site file) in an
//! [`IngestRegistry`]; [`ingest_router`] builds the axum routes the cameras POST to:
//!
//! - `/ingest/vz/{id}` — 臻识 VZ `AlarmInfoPlate` JSON and its clones, heartbeats/comet polls,
//!   `AlarmGioIn` input changes ([`vz`])
//! - `/ingest/hik/{id}` — Hikvision ISAPI listening mode, multipart `anpr.xml` + JPEGs ([`hik`])
//! - `/ingest/json/{id}` — any JSON camera described by JSON pointers in its profile ([`generic`])
//!
//! Drivers normalise pushes into [`CameraRead`]s, drop replays (same device id) and repeats of one
//! plate within the debounce window, and send `EventKind::Plate` events.

pub mod digest;
pub mod generic;
pub mod hik;
pub mod vz;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};

use crate::event::{DeviceEvent, EventKind, Image, PlateRead};
use crate::health::DeviceHealth;
use crate::plate::PlateColor;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    #[error("camera `{device}`: address must be ingest:ID (the id the camera pushes under), got `{got}`")]
    Address { device: String, got: String },
    #[error("ingest id `{0}` is already registered for another camera")]
    DuplicateIngest(String),
    #[error("settings: {0}")]
    Settings(String),
}

/// Why a push was rejected (answered 400 with this text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is not valid XML: {0}")]
    Xml(String),
    #[error("multipart body: {0}")]
    Multipart(String),
    #[error("push has no {0}")]
    Missing(&'static str),
    #[error("unsupported content: {0}")]
    Unsupported(String),
}

/// Largest `debounce_s` / `offline_after_s` accepted: a day. Anything longer is a unit mistake
/// (milliseconds written as seconds), not a repeat window or a silence limit.
pub const MAX_SETTING_SECS: f64 = 86_400.0;

/// A seconds setting as a duration. Non-finite (`inf`, `nan`), negative and absurdly long values
/// are refused naming the key: `Duration::from_secs_f64` would panic on the first two.
pub fn secs_setting(key: &str, value: f64) -> Result<Duration, DriverError> {
    if !(value.is_finite() && (0.0..=MAX_SETTING_SECS).contains(&value)) {
        return Err(DriverError::Settings(format!(
            "{key} = {value}: expected seconds from 0 to {MAX_SETTING_SECS}"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Travel direction as the camera saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Unknown,
    /// Toward the camera (VZ `direction=4`, Hikvision `forward`).
    Approach,
    /// Away from the camera.
    Leave,
    Left,
    Right,
}

/// Everything a camera told about one read. The lane sees [`PlateRead`] (see
/// [`CameraRead::into_plate_read`]); the extra fields drive de-duplication and filtering here.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraRead {
    pub plate: String,
    pub color: PlateColor,
    pub confidence: u8,
    /// Camera's own id for the read (VZ `plateid`, ISAPI UUID).
    pub source_id: Option<String>,
    pub captured_at: Option<DateTime<Utc>>,
    pub direction: Direction,
    /// Vendor trigger code (VZ: 1 video, 2 IO loop, 4 soft, 8 virtual loop, 64-66 stay events).
    pub trigger: Option<u32>,
    /// A record the camera buffered while the gateway was unreachable.
    pub offline_replay: bool,
    pub images: Vec<Image>,
}

impl CameraRead {
    pub fn into_plate_read(self) -> PlateRead {
        PlateRead {
            plate: self.plate,
            color: self.color,
            confidence: self.confidence,
            source_id: self.source_id,
            captured_at: self.captured_at,
            offline_replay: self.offline_replay,
            images: self.images,
        }
    }
}

/// Replay and repeat filter for one camera.
#[derive(Debug)]
pub struct Dedupe {
    ids: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
    window: Duration,
    last: HashMap<String, (Instant, Option<DateTime<Utc>>)>,
}

impl Dedupe {
    /// `window`: repeats of one plate closer than this are one event. `cap`: how many device ids
    /// are remembered (a VZ camera buffers up to ~9000 offline records).
    pub fn new(window: Duration, cap: usize) -> Self {
        Dedupe {
            ids: HashSet::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
            window,
            last: HashMap::new(),
        }
    }

    /// True when the read is new. `key` is the device's record id (with whatever else makes it
    /// unique across a camera reboot); `None` skips the replay check.
    pub fn admit(
        &mut self,
        key: Option<&str>,
        plate: &str,
        captured: Option<DateTime<Utc>>,
    ) -> bool {
        self.admit_at(key, plate, captured, Instant::now())
    }

    pub fn admit_at(
        &mut self,
        key: Option<&str>,
        plate: &str,
        captured: Option<DateTime<Utc>>,
        now: Instant,
    ) -> bool {
        if let Some(k) = key {
            if self.ids.contains(k) {
                return false;
            }
            self.ids.insert(k.to_string());
            self.order.push_back(k.to_string());
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
        let repeat = match self.last.get(plate) {
            // Camera time when both have it: an offline replay of a past read is not a repeat
            // of the live one.
            Some((_, Some(prev))) if captured.is_some() => captured
                .map(|c| (c - *prev).abs().to_std().unwrap_or(Duration::MAX) < self.window)
                .unwrap_or(false),
            Some((at, _)) => now.saturating_duration_since(*at) < self.window,
            None => false,
        };
        // Sliding window: a vehicle standing in front of the camera keeps extending it.
        self.last.insert(plate.to_string(), (now, captured));
        if self.last.len() > 4096 {
            let window = self.window;
            self.last
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < window);
        }
        !repeat
    }
}

/// What every push-driven camera shares: event sink, health, filter.
pub(crate) struct CameraCore {
    pub name: String,
    events: mpsc::Sender<DeviceEvent>,
    health: watch::Sender<DeviceHealth>,
    dedupe: Mutex<Dedupe>,
    last_push: Mutex<Option<Instant>>,
}

impl CameraCore {
    pub fn new(name: &str, events: mpsc::Sender<DeviceEvent>, window: Duration) -> Arc<Self> {
        let (health, _) = watch::channel(DeviceHealth::default());
        Arc::new(CameraCore {
            name: name.to_string(),
            events,
            health,
            dedupe: Mutex::new(Dedupe::new(window, 10_000)),
            last_push: Mutex::new(None),
        })
    }

    pub fn health(&self) -> watch::Receiver<DeviceHealth> {
        self.health.subscribe()
    }

    /// The camera spoke: mark it online (and say so once).
    pub async fn seen(&self) {
        let now = Instant::now();
        let prev = self
            .last_push
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(now);
        let mut came_online = false;
        self.health.send_modify(|h| {
            came_online = !h.online;
            h.online = true;
            h.last_error = None;
            h.last_seen = Some(Utc::now());
            h.rtt = prev.map(|p| now - p);
        });
        if came_online {
            self.send(EventKind::Link {
                online: true,
                error: None,
            })
            .await;
        }
    }

    pub fn count_error(&self, why: &str) {
        let why = why.to_string();
        self.health.send_modify(|h| {
            h.errors += 1;
            h.last_error = Some(why);
        });
    }

    /// Emit a read unless it is a replay or a repeat. Returns whether it was emitted.
    pub async fn plate(&self, read: CameraRead, dedupe_key: Option<&str>) -> bool {
        let fresh = self.dedupe.lock().unwrap_or_else(|e| e.into_inner()).admit(
            dedupe_key,
            &read.plate,
            read.captured_at,
        );
        if !fresh {
            tracing::debug!(device = %self.name, plate = %read.plate, "duplicate plate read dropped");
            return false;
        }
        tracing::info!(device = %self.name, plate = %read.plate, color = %read.color, offline = read.offline_replay, "plate read");
        self.send(EventKind::Plate(read.into_plate_read())).await;
        true
    }

    pub async fn input(&self, role: &str, active: bool) {
        self.send(EventKind::Input {
            input: role.to_string(),
            active,
        })
        .await;
    }

    async fn send(&self, kind: EventKind) {
        let ev = DeviceEvent {
            device: self.name.clone(),
            at: Utc::now(),
            kind,
        };
        if self.events.send(ev).await.is_err() {
            tracing::debug!(device = %self.name, "event receiver gone");
        }
    }

    /// Offline watchdog: no push or heartbeat for `after` → offline (reported once).
    pub fn spawn_watchdog(self: &Arc<Self>, after: Duration, mut stop: watch::Receiver<bool>) {
        if after.is_zero() {
            return;
        }
        let core = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((after / 4).max(Duration::from_millis(10)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                }
                let last = *core.last_push.lock().unwrap_or_else(|e| e.into_inner());
                let stale = last.map(|t| t.elapsed() >= after).unwrap_or(false);
                if stale && core.health.borrow().online {
                    let error = format!("no push or heartbeat for {} s", after.as_secs_f32());
                    core.health.send_modify(|h| {
                        h.online = false;
                        h.last_error = Some(error.clone());
                    });
                    core.send(EventKind::Link {
                        online: false,
                        error: Some(error),
                    })
                    .await;
                }
            }
        });
    }
}

#[derive(Clone)]
enum Endpoint {
    Vz(Arc<vz::VzIngest>),
    Hik(Arc<hik::HikIngest>),
    Json(Arc<generic::JsonIngest>),
}

/// Which camera answers which ingest URL. Cheap to clone; shared by the drivers (which register)
/// and the router (which looks up).
#[derive(Clone, Default)]
pub struct IngestRegistry {
    inner: Arc<RwLock<HashMap<(&'static str, String), Endpoint>>>,
}

impl IngestRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&self, kind: &'static str, id: &str, ep: Endpoint) -> Result<(), DriverError> {
        let mut map = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let key = (kind, id.to_string());
        if map.contains_key(&key) {
            return Err(DriverError::DuplicateIngest(id.to_string()));
        }
        map.insert(key, ep);
        Ok(())
    }

    fn remove(&self, kind: &'static str, id: &str) {
        self.inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(kind, id.to_string()));
    }

    fn get(&self, kind: &'static str, id: &str) -> Option<Endpoint> {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(kind, id.to_string()))
            .cloned()
    }

    /// The RS-485 passthrough queue of the VZ camera with this device name: bytes sent here go
    /// out in the camera's next reply as `serialData` (LED/voice card behind the camera).
    pub fn vz_passthrough(&self, device: &str) -> Option<mpsc::Sender<vz::SerialOut>> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        map.values().find_map(|ep| match ep {
            Endpoint::Vz(v) if v.core.name == device => Some(v.passthrough.clone()),
            _ => None,
        })
    }

    /// Ingest ids currently registered, as `kind/id`.
    pub fn ids(&self) -> Vec<String> {
        let map = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<String> = map.keys().map(|(k, id)| format!("{k}/{id}")).collect();
        v.sort();
        v
    }
}

/// Largest push accepted: VZ pushes with two base64 images reach 2 MB; leave room.
pub const MAX_PUSH_BYTES: usize = 16 * 1024 * 1024;

/// The routes cameras push to. Mount on the gateway's HTTP listener.
pub fn ingest_router(registry: IngestRegistry) -> axum::Router {
    axum::Router::new()
        .route("/ingest/vz/{id}", post(vz_route))
        .route("/ingest/hik/{id}", post(hik_route))
        .route("/ingest/json/{id}", post(json_route))
        .layer(DefaultBodyLimit::max(MAX_PUSH_BYTES))
        .with_state(registry)
}

fn unknown(kind: &str, id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no {kind} camera is configured with ingest id `{id}`\n"),
    )
        .into_response()
}

pub(crate) fn bad_request(core: &CameraCore, e: &PushError) -> Response {
    tracing::warn!(device = %core.name, error = %e, "rejected camera push");
    core.count_error(&e.to_string());
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

async fn vz_route(
    State(reg): State<IngestRegistry>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match reg.get("vz", &id) {
        Some(Endpoint::Vz(v)) => v.handle(&headers, body).await,
        _ => unknown("vz", &id),
    }
}

async fn hik_route(
    State(reg): State<IngestRegistry>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    match reg.get("hik", &id) {
        Some(Endpoint::Hik(h)) => h.handle(req).await,
        _ => unknown("hik", &id),
    }
}

async fn json_route(
    State(reg): State<IngestRegistry>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    match reg.get("json", &id) {
        Some(Endpoint::Json(j)) => j.handle(body).await,
        _ => unknown("json", &id),
    }
}

/// The ingest id from the device address.
pub(crate) fn ingest_id(device: &str, address: &crate::Address) -> Result<String, DriverError> {
    match address {
        crate::Address::Ingest { id } => Ok(id.clone()),
        other => Err(DriverError::Address {
            device: device.to_string(),
            got: other.to_string(),
        }),
    }
}

/// Standard base64 that tolerates missing padding and line breaks some firmware inserts.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, Engine, GeneralPurpose};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    // Line breaks inside the base64 are rare: try the fast path first, clean up only on failure.
    LENIENT.decode(s).ok().or_else(|| {
        let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        LENIENT.decode(clean).ok()
    })
}

/// Register under `kind/id`, and unregister when the command channel closes.
pub(crate) fn register_until_closed(
    registry: &IngestRegistry,
    kind: &'static str,
    id: &str,
    stop: watch::Sender<bool>,
) -> impl FnOnce() + Send + 'static {
    let registry = registry.clone();
    let id = id.to_string();
    move || {
        registry.remove(kind, &id);
        let _ = stop.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_settings_refuse_non_finite_negative_and_absurd_values() {
        for bad in [
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            -0.5,
            MAX_SETTING_SECS + 1.0,
            1e300,
        ] {
            let e = secs_setting("debounce_s", bad).unwrap_err();
            assert!(e.to_string().contains("debounce_s"), "{bad}: {e}");
        }
        assert_eq!(secs_setting("x", 0.0).unwrap(), Duration::ZERO);
        assert_eq!(secs_setting("x", 2.5).unwrap(), Duration::from_millis(2500));
        assert_eq!(
            secs_setting("x", MAX_SETTING_SECS).unwrap(),
            Duration::from_secs(86_400)
        );
    }

    /// Every camera driver refuses the bad values at start, naming the key, instead of
    /// panicking inside `Duration::from_secs_f64`.
    #[tokio::test]
    async fn camera_drivers_refuse_non_finite_seconds() {
        let reg = IngestRegistry::new();
        let addr = crate::Address::Ingest { id: "c".into() };
        for (key, v) in [
            ("debounce_s", f64::INFINITY),
            ("debounce_s", f64::NAN),
            ("offline_after_s", f64::INFINITY),
            ("offline_after_s", f64::NAN),
            ("offline_after_s", 1e12),
        ] {
            let (tx, _rx) = mpsc::channel(4);
            let mut vz = vz::VzSettings::default();
            let mut hik = hik::HikSettings::default();
            let mut json = generic::JsonSettings::default();
            if key == "debounce_s" {
                vz.debounce_s = v;
                hik.debounce_s = v;
                json.debounce_s = v;
            } else {
                vz.offline_after_s = v;
                hik.offline_after_s = v;
                json.offline_after_s = v;
            }
            let errs = [
                vz::spawn("c", &addr, &vz, tx.clone(), &reg).err(),
                hik::spawn("c", &addr, &hik, tx.clone(), &reg).err(),
                generic::spawn("c", &addr, &json, tx, &reg).err(),
            ];
            for e in errs {
                let e = e.expect("bad seconds accepted");
                assert!(
                    matches!(&e, DriverError::Settings(m) if m.contains(key)),
                    "{key} = {v}: {e}"
                );
            }
            assert!(reg.ids().is_empty(), "a refused camera stayed registered");
        }
    }
}
