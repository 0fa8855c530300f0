//! Weighbridge indicators in continuous-output mode: codecs ([`codec`]), the stability engine
//! ([`stability`]) and the driver task that turns a byte stream into `Weight` events.
//!
//! Events: `Weight { stable: false }` samples at most `max_samples_per_sec`; `Weight { stable:
//! true }` exactly once per vehicle (the locked weighing); the sample that takes the weight
//! back below the re-arm threshold always; `Link` on online/offline transitions. A scale that
//! sends no valid frame for `idle_timeout_ms` is offline and its connection is reopened.

pub mod codec;
pub mod modbus;
pub mod stability;

pub use codec::{
    encode, DecodeStats, DecoderOptions, EncodeInput, ScaleDecoder, ScaleFormat, ScaleReading,
    Unit, WeightKind,
};
pub use stability::{StabilityEngine, StabilitySettings, Verdict};

use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, EventKind};
use crate::health::DeviceHandle;
use crate::stream::{self, BoxStream, DriverError, HealthReporter, Hex, LinkSettings};

pub const DRIVER: &str = "scale-stream";

/// `[settings]` of a scale profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ScaleSettings {
    pub format: ScaleFormat,
    /// Display unit for formats that do not send one (`a9`, `reversed`).
    pub unit: Unit,
    /// Toledo: the checksum byte is enabled on the indicator.
    pub toledo_checksum: bool,
    pub max_buffer: usize,
    /// No valid frame for this long = offline, reconnect.
    pub idle_timeout_ms: u64,
    /// Unstable samples forwarded per second (0 = none; stable and cleared always go out).
    pub max_samples_per_sec: u32,
    pub stability: StabilitySettings,
    #[serde(flatten)]
    pub link: LinkSettings,
}

impl Default for ScaleSettings {
    fn default() -> Self {
        ScaleSettings {
            format: ScaleFormat::A9,
            unit: Unit::Kg,
            toledo_checksum: true,
            max_buffer: 128,
            idle_timeout_ms: 3000,
            max_samples_per_sec: 5,
            stability: StabilitySettings::default(),
            link: LinkSettings::default(),
        }
    }
}

impl ScaleSettings {
    pub fn from_toml(v: &toml::Value) -> Result<Self, DriverError> {
        stream::settings_from_toml(v)
    }

    pub fn decoder_options(&self) -> DecoderOptions {
        DecoderOptions {
            format: self.format,
            unit: self.unit,
            toledo_checksum: self.toledo_checksum,
            max_buffer: self.max_buffer,
        }
    }
}

/// Starts the scale driver. Needs a Tokio runtime. The task ends when every command sender is
/// dropped or the event receiver is gone. Scales take no commands; any sent are logged.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &ScaleSettings,
    events: mpsc::Sender<DeviceEvent>,
) -> Result<DeviceHandle, DriverError> {
    stream::check_address(DRIVER, address, false)?;
    let (tx, rx) = mpsc::channel(4);
    let (health, health_rx) = HealthReporter::new();
    let task = ScaleTask {
        name: name.to_string(),
        address: address.clone(),
        s: settings.clone(),
        events,
        health,
        engine: StabilityEngine::new(settings.stability.clone()),
        last_sample: None,
    };
    tokio::spawn(task.run(rx));
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: tx,
        health: health_rx,
    })
}

enum End {
    Stop,
    Lost(String),
}

struct ScaleTask {
    name: String,
    address: Address,
    s: ScaleSettings,
    events: mpsc::Sender<DeviceEvent>,
    health: HealthReporter,
    /// Kept across reconnects: a drop while a locked truck is still on the platform must not
    /// weigh it a second time.
    engine: StabilityEngine,
    last_sample: Option<Instant>,
}

impl ScaleTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = self.s.link.backoff();
        loop {
            let conn = tokio::select! {
                c = stream::connect(DRIVER, &self.address, self.s.link.connect_timeout()) => c,
                _ = wait_stop(&mut commands, &self.name) => return,
            };
            let why = match conn {
                Ok(c) => {
                    info!(device = %self.name, address = %self.address, "scale connected");
                    match self.session(c, &mut commands, &mut backoff).await {
                        End::Stop => return,
                        End::Lost(why) => why,
                    }
                }
                Err(e) => e.to_string(),
            };
            warn!(device = %self.name, error = %why, "scale link lost");
            if self.health.offline(&why)
                && !stream::send_link(&self.events, &self.name, false, Some(why)).await
            {
                return;
            }
            let delay = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wait_stop(&mut commands, &self.name) => return,
            }
        }
    }

    async fn session(
        &mut self,
        mut conn: BoxStream,
        commands: &mut mpsc::Receiver<Command>,
        backoff: &mut crate::Backoff,
    ) -> End {
        let idle = Duration::from_millis(self.s.idle_timeout_ms.max(1));
        let mut decoder = ScaleDecoder::new(self.s.decoder_options());
        let mut buf = [0u8; 512];
        let mut out = Vec::new();
        let mut last_valid = Instant::now();
        let mut rejected = 0;
        loop {
            // The watchdog runs from the last *valid* frame: a scale that babbles garbage is as
            // offline as a silent one.
            let read = tokio::select! {
                r = tokio::time::timeout_at(last_valid + idle, conn.read(&mut buf)) => r,
                c = commands.recv() => match c {
                    None => return End::Stop,
                    Some(c) => {
                        warn!(device = %self.name, command = c.name(), "scales take no commands; ignored");
                        continue;
                    }
                },
            };
            let n = match read {
                Err(_) => return End::Lost(format!("no valid frame for {idle:?}")),
                Ok(Ok(0)) => return End::Lost("connection closed by the device".into()),
                Ok(Err(e)) => return End::Lost(e.to_string()),
                Ok(Ok(n)) => n,
            };
            decoder.push(&buf[..n], &mut out);
            let stats = decoder.stats();
            if stats.rejected > rejected {
                rejected = stats.rejected;
                self.health.error("frame failed its checksum or shape");
            }
            for r in out.drain(..) {
                last_valid = Instant::now();
                backoff.reset();
                if self.health.seen(None)
                    && !stream::send_link(&self.events, &self.name, true, None).await
                {
                    return End::Stop;
                }
                if !self.reading(r).await {
                    return End::Stop;
                }
            }
        }
    }

    /// Runs one reading through the engine and forwards what the lane needs. False when the
    /// event receiver is gone.
    async fn reading(&mut self, r: ScaleReading) -> bool {
        trace!(device = %self.name, frame = ?Hex(&r.raw), mass_kg = %r.mass, stable = ?r.stable, "scale frame");
        if r.overload || r.kind == WeightKind::Tare {
            return true;
        }
        let now = Instant::now();
        let flag = if self.s.stability.use_indicator_flag {
            r.stable
        } else {
            None
        };
        let (stable, forward) = match self.engine.push(now, r.mass, flag) {
            Verdict::Locked(m) => {
                info!(device = %self.name, mass_kg = %m, "stable weighing");
                (true, true)
            }
            Verdict::Cleared => {
                debug!(device = %self.name, "platform cleared");
                (false, true)
            }
            Verdict::Sample { .. } => {
                let rate = self.s.max_samples_per_sec;
                let due = rate > 0
                    && match self.last_sample {
                        None => true,
                        Some(t) => now - t >= Duration::from_secs(1) / rate,
                    };
                (false, due)
            }
        };
        if !forward {
            return true;
        }
        self.last_sample = Some(now);
        stream::send_event(
            &self.events,
            &self.name,
            EventKind::Weight {
                mass: r.mass,
                stable,
                raw: r.raw,
            },
        )
        .await
    }
}

/// Resolves when the command channel closes (the gateway dropped the device).
async fn wait_stop(commands: &mut mpsc::Receiver<Command>, name: &str) {
    while let Some(c) = commands.recv().await {
        warn!(device = %name, command = c.name(), "scales take no commands; ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_profile_table() {
        let v: toml::Value = toml::from_str(
            "format = \"st-gs\"\nidle_timeout_ms = 2000\nreconnect_max_ms = 1000\nunknown = true\n[stability]\nmin_weight = 1000\nhold_ms = 200\n",
        )
        .unwrap();
        let s = ScaleSettings::from_toml(&v).unwrap();
        assert_eq!(s.format, ScaleFormat::StGs);
        assert_eq!(s.idle_timeout_ms, 2000);
        assert_eq!(s.link.reconnect_max_ms, 1000);
        assert_eq!(s.stability.min_weight, crate::Mass::from_kg(1000));
        assert_eq!(s.stability.hold_ms, 200);
        assert_eq!(s.stability.equal_count, 5);
        let bad: toml::Value = toml::from_str("format = \"a10\"").unwrap();
        let e = ScaleSettings::from_toml(&bad).unwrap_err();
        assert!(e.to_string().contains("a10"), "{e}");
    }

    #[tokio::test]
    async fn spawn_refuses_modbus_addresses() {
        let (tx, _rx) = mpsc::channel(1);
        let a: Address = "rtu:///dev/ttyS1".parse().unwrap();
        assert!(matches!(
            spawn("s", &a, &ScaleSettings::default(), tx),
            Err(DriverError::UnsupportedAddress { .. })
        ));
    }
}
