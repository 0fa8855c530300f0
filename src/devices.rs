//! Devices of a site: each `[devices.NAME]` becomes a driver task chosen by its profile's
//! `driver`, with the profile's `[settings]` (plus the site's overrides) parsed by that driver.
//! `ecogate check` runs the same parsing, so a settings mistake is caught before the site runs.

use crate::config::plan::DevicePlan;
use ecogate_drivers::camera::{self, IngestRegistry};
use ecogate_drivers::{io, led, scale, ups, Command, DeviceEvent, DeviceHandle, DeviceHealth};
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::{mpsc, watch};

/// Every driver the core can start, by the name profiles give in `driver = "…"`.
pub const DRIVERS: [&str; 9] = [
    "modbus-io",
    "scale-stream",
    "scale-modbus",
    "sign-modbus",
    "sign-stream",
    "ups-megatec",
    "vz-push",
    "hik-isapi",
    "json-push",
];

/// The device's settings as its driver reads them: the profile's `[settings]` with the site's
/// overrides, and the device-level `unit`, `timeout` and `poll` where the driver has them.
pub fn settings_value(d: &DevicePlan) -> toml::Value {
    let mut t = d.settings.clone();
    if d.profile.driver == "modbus-io" {
        if let Some(u) = d.unit {
            t.insert("unit".into(), toml::Value::Integer(i64::from(u)));
        }
        t.insert(
            "timeout_ms".into(),
            toml::Value::Integer(d.timeout.as_millis() as i64),
        );
        if let Some(p) = d.poll {
            t.insert("poll_ms".into(), toml::Value::Integer(p.as_millis() as i64));
        }
    }
    toml::Value::Table(t)
}

enum Parsed {
    Io(io::ModbusIoSettings),
    Scale(scale::ScaleSettings),
    ModbusScale(scale::modbus::ModbusScaleSettings),
    ModbusSign(led::modbus::ModbusSignSettings),
    Sign(led::SignSettings),
    Ups(ups::UpsSettings),
    Vz(camera::vz::VzSettings),
    Hik(camera::hik::HikSettings),
    Json(camera::generic::JsonSettings),
}

fn parse(d: &DevicePlan) -> Result<Parsed, String> {
    let v = settings_value(d);
    let de = |e: toml::de::Error| e.message().to_string();
    Ok(match d.profile.driver.as_str() {
        "modbus-io" => {
            let s: io::ModbusIoSettings = v.try_into().map_err(de)?;
            s.validate().map_err(|e| e.to_string())?;
            Parsed::Io(s)
        }
        "scale-stream" => {
            Parsed::Scale(scale::ScaleSettings::from_toml(&v).map_err(|e| e.to_string())?)
        }
        "scale-modbus" => Parsed::ModbusScale(
            scale::modbus::ModbusScaleSettings::from_toml(&v).map_err(|e| e.to_string())?,
        ),
        "sign-modbus" => Parsed::ModbusSign(
            led::modbus::ModbusSignSettings::from_toml(&v).map_err(|e| e.to_string())?,
        ),
        "sign-stream" => Parsed::Sign(led::SignSettings::from_toml(&v).map_err(|e| e.to_string())?),
        "ups-megatec" => Parsed::Ups(ups::UpsSettings::from_toml(&v).map_err(|e| e.to_string())?),
        "vz-push" => {
            let s: camera::vz::VzSettings = v.try_into().map_err(de)?;
            s.validate().map_err(|e| e.to_string())?;
            Parsed::Vz(s)
        }
        "hik-isapi" => {
            let s: camera::hik::HikSettings = v.try_into().map_err(de)?;
            s.validate().map_err(|e| e.to_string())?;
            Parsed::Hik(s)
        }
        "json-push" => {
            let s: camera::generic::JsonSettings = v.try_into().map_err(de)?;
            s.validate().map_err(|e| e.to_string())?;
            Parsed::Json(s)
        }
        other => {
            return Err(format!(
                "no driver `{other}`; drivers are: {}",
                DRIVERS.join(", ")
            ))
        }
    })
}

/// Checks a device's settings the way its driver will read them.
pub fn check(d: &DevicePlan) -> Result<(), String> {
    // Driver messages may span lines (serde's "… in `format`"); a diagnostic is one line.
    parse(d)
        .map(|_| ())
        .map_err(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Output and input channel names a lane may bind to (`io1.open`, `cam1.loop`).
pub fn channels(d: &DevicePlan) -> (BTreeSet<String>, BTreeSet<String>) {
    let names = |key: &str| -> BTreeSet<String> {
        d.settings
            .get(key)
            .and_then(|v| v.as_table())
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    };
    (names("outputs"), names("inputs"))
}

/// The running devices of a site.
pub struct Devices {
    pub handles: BTreeMap<String, DeviceHandle>,
    pub ingest: IngestRegistry,
}

impl Devices {
    pub fn health(&self) -> BTreeMap<String, watch::Receiver<DeviceHealth>> {
        self.handles
            .iter()
            .map(|(n, h)| (n.clone(), h.health.clone()))
            .collect()
    }
}

/// A sign reached through a camera's RS-485 passthrough: commands are encoded by the sign
/// codec and queued as `serialData` on the camera's replies.
fn spawn_via_camera(
    name: &str,
    settings: led::SignSettings,
    camera: &str,
    ingest: &IngestRegistry,
) -> Result<DeviceHandle, String> {
    let out = ingest.vz_passthrough(camera).ok_or_else(|| {
        format!(
            "sign `{name}`: camera `{camera}` has no serial passthrough (only vz-push cameras do)"
        )
    })?;
    let (tx, mut rx) = mpsc::channel::<Command>(16);
    let (htx, hrx) = watch::channel(DeviceHealth {
        online: true,
        ..Default::default()
    });
    let device = name.to_string();
    tokio::spawn(async move {
        while let Some(c) = rx.recv().await {
            match led::sign_frames(&settings, &c) {
                Ok(frames) => {
                    for data in frames {
                        // The camera drains its queue on its next reply; a full queue means the
                        // camera is not polling, which its own health already reports.
                        if out
                            .try_send(camera::vz::SerialOut {
                                channel: None,
                                data,
                            })
                            .is_err()
                        {
                            htx.send_modify(|h| {
                                h.errors += 1;
                                h.last_error = Some("camera passthrough queue full".into());
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(device = %device, error = %e, "sign text not sent");
                    htx.send_modify(|h| {
                        h.errors += 1;
                        h.last_error = Some(e.to_string());
                    });
                }
            }
        }
    });
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: tx,
        health: hrx,
    })
}

/// Starts every device of the plan. Cameras first, so signs behind them find their passthrough.
/// Errors name the device; a device that fails to start does not stop the others.
pub fn spawn_all(
    devices: &BTreeMap<String, DevicePlan>,
    events: mpsc::Sender<DeviceEvent>,
) -> (Devices, Vec<String>) {
    let ingest = IngestRegistry::new();
    let mut handles = BTreeMap::new();
    let mut errors = Vec::new();
    let mut order: Vec<&DevicePlan> = devices.values().collect();
    order.sort_by_key(|d| {
        (
            d.via.is_some(),
            d.profile.kind != crate::config::profile::DeviceKind::Camera,
        )
    });
    for d in order {
        let started = parse(d).and_then(|p| {
            let ev = events.clone();
            let name = d.name.as_str();
            match (p, &d.address, &d.via) {
                (Parsed::Sign(s), None, Some(cam)) => spawn_via_camera(name, s, cam, &ingest),
                (_, None, _) => Err("no address".to_string()),
                (Parsed::Io(s), Some(a), _) => {
                    io::spawn(name, a, &s, ev).map_err(|e| e.to_string())
                }
                (Parsed::Scale(s), Some(a), _) => {
                    scale::spawn(name, a, &s, ev).map_err(|e| e.to_string())
                }
                (Parsed::ModbusScale(s), Some(a), _) => {
                    scale::modbus::spawn(name, a, &s, ev).map_err(|e| e.to_string())
                }
                (Parsed::ModbusSign(s), Some(a), _) => {
                    led::modbus::spawn(name, a, &s, ev).map_err(|e| e.to_string())
                }
                (Parsed::Sign(s), Some(a), _) => {
                    led::spawn(name, a, &s, ev).map_err(|e| e.to_string())
                }
                (Parsed::Ups(s), Some(a), _) => {
                    ups::spawn(name, a, &s, ev).map_err(|e| e.to_string())
                }
                (Parsed::Vz(s), Some(a), _) => {
                    camera::vz::spawn(name, a, &s, ev, &ingest).map_err(|e| e.to_string())
                }
                (Parsed::Hik(s), Some(a), _) => {
                    camera::hik::spawn(name, a, &s, ev, &ingest).map_err(|e| e.to_string())
                }
                (Parsed::Json(s), Some(a), _) => {
                    camera::generic::spawn(name, a, &s, ev, &ingest).map_err(|e| e.to_string())
                }
            }
        });
        match started {
            Ok(h) => {
                handles.insert(d.name.clone(), h);
            }
            Err(e) => errors.push(format!("device `{}` ({}): {e}", d.name, d.profile_name)),
        }
    }
    (Devices { handles, ingest }, errors)
}
