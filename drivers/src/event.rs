//! What devices tell the gateway. Drivers normalise every protocol into these; the lane
//! engine maps them onto the named events of a lane machine.

use crate::mass::Mass;
use crate::plate::PlateColor;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One event from one device instance (named as in the site config).
#[derive(Debug, Clone)]
pub struct DeviceEvent {
    pub device: String,
    pub at: DateTime<Utc>,
    pub kind: EventKind,
}

#[derive(Debug, Clone)]
pub enum EventKind {
    /// A camera read a plate.
    Plate(PlateRead),
    /// A digital input changed. `input` is the role the device profile gives it
    /// (`loop`, `loop_out`, `limit_open`, `limit_closed`, `ups_on_battery`, …); `active` is already
    /// corrected for NO/NC polarity.
    Input { input: String, active: bool },
    /// A weight reading from a scale. `stable` is the indicator's flag or the stability engine's
    /// verdict; `raw` is the frame as received, kept for audit.
    Weight {
        mass: Mass,
        stable: bool,
        raw: Bytes,
    },
    /// The device came online or went offline.
    Link { online: bool, error: Option<String> },
    /// UPS status poll.
    Ups(UpsStatus),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlateRead {
    /// Plate text as read, e.g. `豫A12345`. Empty when the camera saw a vehicle but no plate.
    pub plate: String,
    pub color: PlateColor,
    /// 0–100.
    pub confidence: u8,
    /// The camera's own id for the read (VZ `plateid`, ISAPI UUID): replays are de-duplicated on it.
    pub source_id: Option<String>,
    /// When the camera captured it (camera clock).
    pub captured_at: Option<DateTime<Utc>>,
    /// A read the camera buffered while the gateway was unreachable and sends now: history to
    /// record, never a vehicle to decide on (it is long gone, or the camera let it through).
    #[serde(default)]
    pub offline_replay: bool,
    #[serde(skip)]
    pub images: Vec<Image>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub kind: ImageKind,
    pub jpeg: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// Full scene (车辆全景).
    Scene,
    /// Plate close-up (车牌特写).
    Plate,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpsStatus {
    pub on_battery: bool,
    pub battery_low: bool,
    pub load_percent: Option<f32>,
    pub input_voltage: Option<f32>,
    pub output_voltage: Option<f32>,
    pub battery_voltage: Option<f32>,
}
