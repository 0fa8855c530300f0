//! Modbus relay/DI module driver (`driver = "modbus-io"`): barrier contacts and lights on coils,
//! limit switches and loop detectors on discrete inputs.
//!
//! - Pulses are timed by the module where the profile says it can (vendor "flash" register),
//!   otherwise switched on then off by the gateway with a guard that always switches off — even
//!   when the pulse's task is cancelled or the ON write failed (the ON may have reached the relay
//!   although its reply was lost).
//! - Barrier state comes from the limit-switch inputs, never from command replies.
//! - Inputs are debounced (N equal samples) and corrected for NO/NC polarity, then reported as
//!   `EventKind::Input { input: <role>, active }` on every change.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, EventKind};
use crate::health::{DeviceHandle, DeviceHealth};
use crate::modbus::{BusOptions, ModbusBus, ModbusDevice, ModbusError, Transport};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DriverError {
    #[error("{0}")]
    Address(String),
    #[error("settings: {0}")]
    Settings(String),
    #[error("no output `{0}` in this profile's [settings.outputs]")]
    UnknownOutput(String),
    #[error("refused: input `{0}` is active (close inhibited while the lane loop is occupied)")]
    Inhibited(String),
    #[error(transparent)]
    Modbus(#[from] ModbusError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Polarity {
    /// Normally open: contact closed (input level high) = active.
    #[default]
    No,
    /// Normally closed: contact open (input level low) = active.
    Nc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputSource {
    /// FC02 discrete input.
    #[default]
    Di,
    /// FC01 coil (some modules mirror inputs there).
    Coil,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    /// Input number (0-based register address).
    pub di: u16,
    #[serde(default)]
    pub source: InputSource,
    #[serde(default)]
    pub polarity: Polarity,
    /// Overrides the module-wide `debounce_samples` for this input.
    #[serde(default)]
    pub debounce_samples: Option<u8>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutputSpec {
    /// Coil number (0-based) of the relay.
    pub coil: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PulseMode {
    /// FC05 to `flash_base + coil` with the time in `flash_unit_ms` units; the module switches
    /// off by itself, so a gateway crash cannot leave the relay on.
    Device,
    /// FC05 ON, wait, FC05 OFF (with a guard that always sends the OFF).
    #[default]
    Host,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PulseSettings {
    pub mode: PulseMode,
    pub flash_base: u16,
    pub flash_unit_ms: u32,
    /// How many times the OFF of a host-timed pulse is retried before giving up (and alarming).
    pub off_retries: u32,
}

impl Default for PulseSettings {
    fn default() -> Self {
        PulseSettings {
            mode: PulseMode::Host,
            flash_base: 0x0200,
            flash_unit_ms: 100,
            off_retries: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BarrierSettings {
    /// Output role pulsed for `barrier.open`.
    pub open: String,
    /// Output role pulsed for `barrier.close`.
    pub close: String,
    pub pulse_ms: u32,
    /// An input role (e.g. `loop`) that, while active, makes the driver refuse `barrier.close`.
    pub close_inhibit: Option<String>,
}

impl Default for BarrierSettings {
    fn default() -> Self {
        BarrierSettings {
            open: "open".into(),
            close: "close".into(),
            pulse_ms: 500,
            close_inhibit: None,
        }
    }
}

/// `[settings]` of an `io` profile using `driver = "modbus-io"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ModbusIoSettings {
    /// Modbus unit (slave) id.
    pub unit: u8,
    pub timeout_ms: u64,
    pub poll_ms: u64,
    /// Equal consecutive samples needed before an input change is reported.
    pub debounce_samples: u8,
    pub outputs: BTreeMap<String, OutputSpec>,
    pub inputs: BTreeMap<String, InputSpec>,
    pub pulse: PulseSettings,
    pub barrier: BarrierSettings,
}

impl Default for ModbusIoSettings {
    fn default() -> Self {
        ModbusIoSettings {
            unit: 1,
            timeout_ms: 500,
            poll_ms: 100,
            debounce_samples: 2,
            outputs: BTreeMap::new(),
            inputs: BTreeMap::new(),
            pulse: PulseSettings::default(),
            barrier: BarrierSettings::default(),
        }
    }
}

impl ModbusIoSettings {
    pub fn validate(&self) -> Result<(), DriverError> {
        if self.timeout_ms == 0 || self.poll_ms == 0 {
            return Err(DriverError::Settings(
                "timeout_ms and poll_ms must be above 0".into(),
            ));
        }
        if self.pulse.flash_unit_ms == 0 {
            return Err(DriverError::Settings(
                "pulse.flash_unit_ms must be above 0".into(),
            ));
        }
        Ok(())
    }
}

/// A relay/DI module: the operations the driver task uses, public for tests and tools.
#[derive(Clone)]
pub struct IoModule {
    dev: ModbusDevice,
    settings: Arc<ModbusIoSettings>,
}

impl IoModule {
    /// Attach to the module's bus (shared with other units on the same line).
    pub fn new(address: &Address, settings: &ModbusIoSettings) -> Result<IoModule, DriverError> {
        settings.validate()?;
        let transport =
            Transport::from_address(address).map_err(|e| DriverError::Address(e.to_string()))?;
        let opts = BusOptions {
            timeout: Duration::from_millis(settings.timeout_ms),
            ..BusOptions::default()
        };
        let bus = ModbusBus::shared(transport, opts);
        Ok(IoModule {
            dev: bus.device(settings.unit),
            settings: Arc::new(settings.clone()),
        })
    }

    pub fn device(&self) -> &ModbusDevice {
        &self.dev
    }

    pub fn health(&self) -> watch::Receiver<DeviceHealth> {
        self.dev.health()
    }

    fn coil(&self, output: &str) -> Result<u16, DriverError> {
        self.settings
            .outputs
            .get(output)
            .map(|o| o.coil)
            .ok_or_else(|| DriverError::UnknownOutput(output.to_string()))
    }

    pub async fn set_output(&self, output: &str, on: bool) -> Result<(), DriverError> {
        let coil = self.coil(output)?;
        Ok(self.dev.write_single_coil(coil, on).await?)
    }

    /// Pulse an output for `ms`. In host mode the OFF is guaranteed: if this future is dropped
    /// mid-pulse, a background task switches the relay off (with retries).
    pub async fn pulse(&self, output: &str, ms: u32) -> Result<(), DriverError> {
        let coil = self.coil(output)?;
        let p = &self.settings.pulse;
        match p.mode {
            PulseMode::Device => {
                let units = ms.div_ceil(p.flash_unit_ms).clamp(1, u32::from(u16::MAX)) as u16;
                let reg = p.flash_base.checked_add(coil).ok_or_else(|| {
                    DriverError::Settings(format!("flash_base + coil {coil} overflows"))
                })?;
                Ok(self.dev.write_single_coil_raw(reg, units).await?)
            }
            PulseMode::Host => {
                let mut guard = OffGuard {
                    dev: self.dev.clone(),
                    coil,
                    retries: p.off_retries,
                    armed: true,
                };
                let on = self.dev.write_single_coil(coil, true).await;
                if on.is_ok() {
                    tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
                }
                let off = guard.finish().await;
                on?;
                Ok(off?)
            }
        }
    }

    /// One sample of every configured input, polarity applied (`true` = active).
    pub async fn sample_inputs(&self) -> Result<BTreeMap<String, bool>, DriverError> {
        let mut out = BTreeMap::new();
        for source in [InputSource::Di, InputSource::Coil] {
            let specs: Vec<(&String, &InputSpec)> = self
                .settings
                .inputs
                .iter()
                .filter(|(_, s)| s.source == source)
                .collect();
            let (Some(lo), Some(hi)) = (
                specs.iter().map(|(_, s)| s.di).min(),
                specs.iter().map(|(_, s)| s.di).max(),
            ) else {
                continue;
            };
            let count = hi - lo + 1;
            let bits = match source {
                InputSource::Di => self.dev.read_discrete_inputs(lo, count).await?,
                InputSource::Coil => self.dev.read_coils(lo, count).await?,
            };
            for (role, s) in specs {
                let level = bits.get((s.di - lo) as usize).copied().unwrap_or(false);
                out.insert(role.clone(), level != (s.polarity == Polarity::Nc));
            }
        }
        Ok(out)
    }
}

/// Switches a coil off when the pulse ends, however it ends.
struct OffGuard {
    dev: ModbusDevice,
    coil: u16,
    retries: u32,
    armed: bool,
}

impl OffGuard {
    async fn finish(&mut self) -> Result<(), ModbusError> {
        let r = switch_off(&self.dev, self.coil, self.retries).await;
        self.armed = false;
        r
    }
}

impl Drop for OffGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (dev, coil, retries) = (self.dev.clone(), self.coil, self.retries);
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = switch_off(&dev, coil, retries).await {
                        tracing::error!(coil, error = %e, "relay left ON after a cancelled pulse");
                    }
                });
            }
            Err(_) => tracing::error!(
                coil,
                "no runtime to switch the relay off after a cancelled pulse"
            ),
        }
    }
}

async fn switch_off(dev: &ModbusDevice, coil: u16, retries: u32) -> Result<(), ModbusError> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        match dev.write_single_coil(coil, false).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= retries => {
                tracing::error!(coil, error = %e, "relay OFF failed after retries");
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(coil, attempt, error = %e, "relay OFF failed; retrying");
                // An offline bus or unit refuses until its next attempt is due; retrying
                // earlier would only spend the retries.
                let wait = e.retry_in().map_or(delay, |r| r.max(delay));
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Debounce {
    stable: Option<bool>,
    candidate: bool,
    count: u8,
}

impl Debounce {
    /// Feed one sample; returns the new stable state when it changes.
    fn feed(&mut self, level: bool, need: u8) -> Option<bool> {
        if self.stable == Some(level) {
            self.count = 0;
            return None;
        }
        if self.count > 0 && self.candidate == level {
            self.count = self.count.saturating_add(1);
        } else {
            self.candidate = level;
            self.count = 1;
        }
        if self.count >= need.max(1) {
            self.stable = Some(level);
            self.count = 0;
            return Some(level);
        }
        None
    }
}

/// Start the driver: a poller that reports input changes and link state, and a command worker
/// that runs `BarrierOpen`/`BarrierClose`/`RelayPulse` one after another. Dropping every clone of
/// the handle's command sender stops both.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &ModbusIoSettings,
    events: mpsc::Sender<DeviceEvent>,
) -> Result<DeviceHandle, DriverError> {
    let module = IoModule::new(address, settings)?;
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(16);
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let states: Arc<Mutex<BTreeMap<String, bool>>> = Arc::default();
    let health = module.health();

    let worker_module = module.clone();
    let worker_states = states.clone();
    let worker_name = name.to_string();
    tokio::spawn(async move {
        let _stop = stop_tx;
        while let Some(cmd) = cmd_rx.recv().await {
            if let Err(e) = run_command(&worker_module, &worker_states, &cmd).await {
                tracing::warn!(device = %worker_name, command = cmd.name(), error = %e, "command failed");
            }
        }
    });

    let handle_name = name.to_string();
    let name = name.to_string();
    tokio::spawn(async move {
        let s = module.settings.clone();
        let mut debounce: BTreeMap<String, Debounce> = BTreeMap::new();
        let mut online: Option<bool> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(s.poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tick.tick() => {}
            }
            let sample = if s.inputs.is_empty() {
                // Nothing to poll: probe one coil so the link state is still known.
                module
                    .device()
                    .read_coils(0, 1)
                    .await
                    .map(|_| BTreeMap::new())
                    .map_err(DriverError::from)
            } else {
                module.sample_inputs().await
            };
            let now_online = sample.is_ok();
            if online != Some(now_online) {
                online = Some(now_online);
                let error = sample.as_ref().err().map(|e| e.to_string());
                let ev = DeviceEvent {
                    device: name.clone(),
                    at: Utc::now(),
                    kind: EventKind::Link {
                        online: now_online,
                        error,
                    },
                };
                if events.send(ev).await.is_err() {
                    break;
                }
            }
            let Ok(levels) = sample else { continue };
            for (role, level) in levels {
                let need = s
                    .inputs
                    .get(&role)
                    .and_then(|i| i.debounce_samples)
                    .unwrap_or(s.debounce_samples);
                let d = debounce.entry(role.clone()).or_insert(Debounce {
                    stable: None,
                    candidate: level,
                    count: 0,
                });
                if let Some(active) = d.feed(level, need) {
                    states
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(role.clone(), active);
                    tracing::debug!(device = %name, input = %role, active, "input changed");
                    let ev = DeviceEvent {
                        device: name.clone(),
                        at: Utc::now(),
                        kind: EventKind::Input {
                            input: role,
                            active,
                        },
                    };
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    Ok(DeviceHandle {
        name: handle_name,
        commands: cmd_tx,
        health,
    })
}

async fn run_command(
    m: &IoModule,
    states: &Mutex<BTreeMap<String, bool>>,
    cmd: &Command,
) -> Result<(), DriverError> {
    let b = &m.settings.barrier;
    match cmd {
        Command::BarrierOpen => m.pulse(&b.open, b.pulse_ms).await,
        Command::BarrierClose => {
            if let Some(role) = &b.close_inhibit {
                let active = states
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(role)
                    .copied()
                    .unwrap_or(false);
                if active {
                    return Err(DriverError::Inhibited(role.clone()));
                }
            }
            m.pulse(&b.close, b.pulse_ms).await
        }
        Command::RelayPulse { output, ms } => m.pulse(output, *ms).await,
        other => {
            tracing::warn!(
                command = other.name(),
                "a relay module cannot do this; ignored"
            );
            Ok(())
        }
    }
}
