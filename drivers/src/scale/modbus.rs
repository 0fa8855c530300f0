//! Weighbridge indicators and weight transmitters read over Modbus (`driver = "scale-modbus"`):
//! the weight in one or two registers, an optional decimal-point register and an optional
//! status word (reference field-devices §3 (g)). There is no common register map, so every
//! address, the value type, the word order and the status bits come from the profile.
//!
//! Events are those of the stream scale driver: `Weight { stable: true }` once per vehicle
//! (the indicator's stable/motion bits where the profile names them, else the stability
//! engine), unstable samples rate-limited, the sample that clears the platform always, and
//! `Link` on online/offline transitions of the polls.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::{Request, Response};
use tracing::{debug, info, trace, warn};

use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, EventKind};
use crate::health::DeviceHandle;
use crate::mass::Mass;
use crate::modbus::{BusOptions, ModbusBus, ModbusDevice, ModbusError, Transport};
use crate::scale::codec::Unit;
use crate::scale::stability::{StabilityEngine, StabilitySettings, Verdict};

/// The Modbus drivers share one error type (address, settings, bus).
pub use crate::io::DriverError;

pub const DRIVER: &str = "scale-modbus";

/// Registers this far apart or closer are fetched in one request, so weight and status belong
/// to the same instant.
const MAX_BLOCK: u16 = 32;

/// Which table the indicator keeps its weight in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterKind {
    /// FC03.
    #[default]
    Holding,
    /// FC04.
    Input,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightType {
    /// Two registers, two's complement.
    #[default]
    I32,
    U32,
    /// One register, two's complement.
    I16,
    U16,
    /// Two registers, IEEE 754 single precision (transmitters that send kg as a float).
    F32,
}

impl WeightType {
    pub fn words(self) -> u16 {
        match self {
            WeightType::I16 | WeightType::U16 => 1,
            _ => 2,
        }
    }
}

/// Which register of a 32-bit value comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum WordOrder {
    /// High word at the lower address (most indicators).
    #[default]
    #[serde(rename = "hi-lo", alias = "hi_lo")]
    HiLo,
    /// Low word at the lower address ("word swapped").
    #[serde(rename = "lo-hi", alias = "lo_hi")]
    LoHi,
}

/// `[settings.status]`: one status word and the bits in it (0 = least significant).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatusSettings {
    pub register: Option<u16>,
    /// Set while the indicator reports a stable weight.
    pub stable_bit: Option<u8>,
    /// Set while the platform is in motion (the opposite sense of `stable_bit`).
    pub motion_bit: Option<u8>,
    /// Set when the weight is negative, for indicators that send the magnitude only.
    pub negative_bit: Option<u8>,
    /// Set on over- or under-range: such readings are not weights and are dropped.
    pub overload_bit: Option<u8>,
}

impl StatusSettings {
    fn bits(&self) -> [(&'static str, Option<u8>); 4] {
        [
            ("stable_bit", self.stable_bit),
            ("motion_bit", self.motion_bit),
            ("negative_bit", self.negative_bit),
            ("overload_bit", self.overload_bit),
        ]
    }
}

/// `[settings]` of a scale profile using `driver = "scale-modbus"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ModbusScaleSettings {
    /// Modbus unit (slave) id.
    pub unit: u8,
    pub timeout_ms: u64,
    pub poll_ms: u64,
    pub register_kind: RegisterKind,
    /// First register of the weight (0-based protocol address).
    pub weight_register: u16,
    pub weight_type: WeightType,
    pub word_order: WordOrder,
    /// Value × 10^-decimals is the weight in `weight_unit`.
    pub decimals: u8,
    /// A register holding the decimal places (0–6); overrides `decimals` when set.
    pub decimals_register: Option<u16>,
    pub weight_unit: Unit,
    pub status: StatusSettings,
    /// Consecutive failed polls before the scale is reported offline (one lost RS-485 reply is
    /// not an outage).
    pub offline_after: u32,
    /// Unstable samples forwarded per second (0 = none; stable and cleared always go out).
    pub max_samples_per_sec: u32,
    pub stability: StabilitySettings,
}

impl Default for ModbusScaleSettings {
    fn default() -> Self {
        ModbusScaleSettings {
            unit: 1,
            timeout_ms: 500,
            poll_ms: 100,
            register_kind: RegisterKind::Holding,
            weight_register: 0,
            weight_type: WeightType::I32,
            word_order: WordOrder::HiLo,
            decimals: 0,
            decimals_register: None,
            weight_unit: Unit::Kg,
            status: StatusSettings::default(),
            offline_after: 2,
            max_samples_per_sec: 5,
            stability: StabilitySettings::default(),
        }
    }
}

/// Largest decimal-point count accepted (a register saying more is a wrong map, not a scale).
const MAX_DECIMALS: u8 = 6;

impl ModbusScaleSettings {
    /// Parses and validates a profile's `[settings]` (merged with the site's overrides).
    pub fn from_toml(v: &toml::Value) -> Result<Self, DriverError> {
        let s: ModbusScaleSettings = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| DriverError::Settings(e.message().to_string()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |m: String| Err(DriverError::Settings(m));
        if self.timeout_ms == 0 || self.poll_ms == 0 {
            return bad("timeout_ms and poll_ms must be above 0".into());
        }
        if self.decimals > MAX_DECIMALS {
            return bad(format!(
                "decimals = {} is more than {MAX_DECIMALS}",
                self.decimals
            ));
        }
        if self
            .weight_register
            .checked_add(self.weight_type.words() - 1)
            .is_none()
        {
            return bad("weight_register + the weight's width passes register 65535".into());
        }
        for (name, bit) in self.status.bits() {
            match bit {
                Some(b) if b > 15 => {
                    return bad(format!("status.{name} = {b}: a register has bits 0-15"))
                }
                Some(_) if self.status.register.is_none() => {
                    return bad(format!("status.{name} is set but status.register is not"))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The register spans one poll reads: one block when everything is close together.
    pub fn read_plan(&self) -> Vec<(u16, u16)> {
        let mut spans = vec![(self.weight_register, self.weight_type.words())];
        spans.extend(self.status.register.map(|r| (r, 1)));
        spans.extend(self.decimals_register.map(|r| (r, 1)));
        let lo = spans.iter().map(|s| s.0).min().unwrap_or(0);
        let hi = spans
            .iter()
            .map(|s| u32::from(s.0) + u32::from(s.1))
            .max()
            .unwrap_or(0);
        if hi - u32::from(lo) <= u32::from(MAX_BLOCK) {
            return vec![(lo, (hi - u32::from(lo)) as u16)];
        }
        spans
    }

    /// Decodes one poll's registers into a reading.
    pub fn decode(&self, image: &RegisterImage) -> Result<RegReading, DecodeError> {
        let words: Vec<u16> = (0..self.weight_type.words())
            .map(|i| image.get(self.weight_register + i))
            .collect::<Result<_, _>>()?;
        let value = decode_value(&words, self.weight_type, self.word_order)?;
        let decimals = match self.decimals_register {
            Some(r) => {
                let d = image.get(r)?;
                if d > u16::from(MAX_DECIMALS) {
                    return Err(DecodeError::Decimals {
                        register: r,
                        value: d,
                    });
                }
                d as u8
            }
            None => self.decimals,
        };
        let status = self.status.register.map(|r| image.get(r)).transpose()?;
        let bit = |b: Option<u8>| -> Option<bool> {
            match (status, b) {
                (Some(w), Some(b)) => Some(w & (1 << b) != 0),
                _ => None,
            }
        };
        let mut mass = to_mass(value, decimals, self.weight_unit)?;
        if bit(self.status.negative_bit) == Some(true) {
            mass = Mass::from_grams(-mass.grams.abs());
        }
        let stable = match (bit(self.status.stable_bit), bit(self.status.motion_bit)) {
            (Some(s), Some(m)) => Some(s && !m),
            (Some(s), None) => Some(s),
            (None, Some(m)) => Some(!m),
            (None, None) => None,
        };
        Ok(RegReading {
            mass,
            stable,
            overload: bit(self.status.overload_bit) == Some(true),
            raw: image.raw(),
        })
    }
}

/// The registers one poll read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterImage {
    spans: Vec<(u16, Vec<u16>)>,
}

impl RegisterImage {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, start: u16, words: Vec<u16>) {
        self.spans.push((start, words));
    }

    pub fn get(&self, register: u16) -> Result<u16, DecodeError> {
        self.spans
            .iter()
            .find_map(|(start, w)| {
                register
                    .checked_sub(*start)
                    .and_then(|i| w.get(i as usize).copied())
            })
            .ok_or(DecodeError::Missing(register))
    }

    /// The words as read, big-endian, span after span: what goes into `Weight.raw` for audit.
    pub fn raw(&self) -> Bytes {
        self.spans
            .iter()
            .flat_map(|(_, w)| w.iter().flat_map(|x| x.to_be_bytes()))
            .collect::<Vec<u8>>()
            .into()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("register {0} was not read (check the profile's register map)")]
    Missing(u16),
    #[error(
        "decimals register {register} holds {value}; at most {MAX_DECIMALS} decimals are accepted"
    )]
    Decimals { register: u16, value: u16 },
    #[error("the weight registers hold a float that is not a finite number ({0})")]
    NotFinite(f32),
    #[error("the weight {0} is out of range")]
    OutOfRange(String),
}

/// One decoded poll.
#[derive(Debug, Clone, PartialEq)]
pub struct RegReading {
    pub mass: Mass,
    /// From the status bits; `None` when the profile names no stable/motion bit.
    pub stable: Option<bool>,
    pub overload: bool,
    pub raw: Bytes,
}

/// A register value before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RawValue {
    Int(i64),
    Float(f32),
}

/// Decodes the weight registers (in address order) as `ty` with `order`.
pub fn decode_value(
    words: &[u16],
    ty: WeightType,
    order: WordOrder,
) -> Result<RawValue, DecodeError> {
    let word = |i: usize| words.get(i).copied().ok_or(DecodeError::Missing(i as u16));
    let u32_value = || -> Result<u32, DecodeError> {
        let (a, b) = (word(0)?, word(1)?);
        let (hi, lo) = match order {
            WordOrder::HiLo => (a, b),
            WordOrder::LoHi => (b, a),
        };
        Ok((u32::from(hi) << 16) | u32::from(lo))
    };
    Ok(match ty {
        WeightType::U16 => RawValue::Int(i64::from(word(0)?)),
        WeightType::I16 => RawValue::Int(i64::from(word(0)? as i16)),
        WeightType::U32 => RawValue::Int(i64::from(u32_value()?)),
        WeightType::I32 => RawValue::Int(i64::from(u32_value()? as i32)),
        WeightType::F32 => RawValue::Float(f32::from_bits(u32_value()?)),
    })
}

/// value × 10^-decimals in `unit`, as exact grams (rounded half away from zero below a gram).
pub fn to_mass(value: RawValue, decimals: u8, unit: Unit) -> Result<Mass, DecodeError> {
    let div = 10i128.pow(u32::from(decimals));
    let g = i128::from(unit.grams());
    let grams = match value {
        RawValue::Int(v) => {
            let n = i128::from(v) * g;
            let q = n / div;
            let r = n % div;
            if r.abs() * 2 >= div {
                q + n.signum()
            } else {
                q
            }
        }
        RawValue::Float(f) => {
            if !f.is_finite() {
                return Err(DecodeError::NotFinite(f));
            }
            let x = (f64::from(f) * g as f64 / div as f64).round();
            if x.abs() > 1e15 {
                return Err(DecodeError::OutOfRange(format!("{f}")));
            }
            x as i128
        }
    };
    i64::try_from(grams)
        .map(Mass::from_grams)
        .map_err(|_| DecodeError::OutOfRange(format!("{grams} g")))
}

/// Starts the driver: one task polls the indicator every `poll_ms` and emits `Weight` and `Link`
/// events. Needs a Tokio runtime. Scales take no commands (any sent are logged); dropping every
/// command sender stops the task.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &ModbusScaleSettings,
    events: mpsc::Sender<DeviceEvent>,
) -> Result<DeviceHandle, DriverError> {
    settings.validate()?;
    let transport =
        Transport::from_address(address).map_err(|e| DriverError::Address(e.to_string()))?;
    let bus = ModbusBus::shared(
        transport,
        BusOptions {
            timeout: Duration::from_millis(settings.timeout_ms),
            ..BusOptions::default()
        },
    );
    let dev = bus.device(settings.unit);
    let health = dev.health();
    let (tx, rx) = mpsc::channel(4);
    let task = PollTask {
        name: name.to_string(),
        s: settings.clone(),
        dev,
        events,
        engine: StabilityEngine::new(settings.stability.clone()),
        last_sample: None,
    };
    tokio::spawn(task.run(rx));
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: tx,
        health,
    })
}

/// Reads one poll's registers.
pub async fn read_image(
    dev: &ModbusDevice,
    s: &ModbusScaleSettings,
) -> Result<RegisterImage, ModbusError> {
    let mut image = RegisterImage::new();
    for (start, count) in s.read_plan() {
        let words = match s.register_kind {
            RegisterKind::Holding => dev.read_holding_registers(start, count).await?,
            RegisterKind::Input => {
                match dev.call(Request::ReadInputRegisters(start, count)).await? {
                    Response::ReadInputRegisters(v) if v.len() == count as usize => v,
                    other => {
                        return Err(ModbusError::Protocol {
                            unit: dev.unit(),
                            reason: format!("ReadInputRegisters: unexpected reply {other:?}"),
                        })
                    }
                }
            }
        };
        image.push(start, words);
    }
    Ok(image)
}

struct PollTask {
    name: String,
    s: ModbusScaleSettings,
    dev: ModbusDevice,
    events: mpsc::Sender<DeviceEvent>,
    engine: StabilityEngine,
    last_sample: Option<Instant>,
}

impl PollTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.s.poll_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut online: Option<bool> = None;
        let mut failures: u32 = 0;
        let mut rejecting = false;
        loop {
            tokio::select! {
                c = commands.recv() => match c {
                    None => break,
                    Some(c) => {
                        warn!(device = %self.name, command = c.name(), "scales take no commands; ignored");
                        continue;
                    }
                },
                _ = tick.tick() => {}
            }
            let image = match read_image(&self.dev, &self.s).await {
                Ok(i) => i,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    debug!(device = %self.name, failures, error = %e, "scale poll failed");
                    // An exception is an answer: the indicator is there but refuses the map.
                    let down = !e.device_alive() && failures >= self.s.offline_after.max(1);
                    if down && online != Some(false) {
                        online = Some(false);
                        warn!(device = %self.name, error = %e, "scale offline");
                        if !self.link(false, Some(e.to_string())).await {
                            break;
                        }
                    }
                    continue;
                }
            };
            failures = 0;
            if online != Some(true) {
                online = Some(true);
                info!(device = %self.name, unit = self.dev.unit(), "scale online");
                if !self.link(true, None).await {
                    break;
                }
            }
            match self.s.decode(&image) {
                Ok(r) => {
                    rejecting = false;
                    if !self.reading(r).await {
                        break;
                    }
                }
                // A wrong register map fails every poll: say so once, not ten times a second.
                Err(e) if !rejecting => {
                    rejecting = true;
                    warn!(device = %self.name, error = %e, raw = ?image.raw(), "scale registers rejected")
                }
                Err(e) => trace!(device = %self.name, error = %e, "scale registers rejected"),
            }
        }
        debug!(device = %self.name, "modbus scale driver stopped");
    }

    async fn link(&self, online: bool, error: Option<String>) -> bool {
        self.send(EventKind::Link { online, error }).await
    }

    async fn send(&self, kind: EventKind) -> bool {
        self.events
            .send(DeviceEvent {
                device: self.name.clone(),
                at: chrono::Utc::now(),
                kind,
            })
            .await
            .is_ok()
    }

    /// Same rules as the stream scale driver. False when the event receiver is gone.
    async fn reading(&mut self, r: RegReading) -> bool {
        trace!(device = %self.name, raw = ?r.raw, mass_kg = %r.mass, stable = ?r.stable, "scale registers");
        if r.overload {
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
        self.send(EventKind::Weight {
            mass: r.mass,
            stable,
            raw: r.raw,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(start: u16, words: &[u16]) -> RegisterImage {
        let mut i = RegisterImage::new();
        i.push(start, words.to_vec());
        i
    }

    #[test]
    fn word_orders_decode_differently() {
        // Reference §3 (g): `00 00 06 18` = 1560 with the high word first.
        let hi_lo = decode_value(&[0x0000, 0x0618], WeightType::I32, WordOrder::HiLo).unwrap();
        assert_eq!(hi_lo, RawValue::Int(1560));
        let lo_hi = decode_value(&[0x0618, 0x0000], WeightType::I32, WordOrder::LoHi).unwrap();
        assert_eq!(lo_hi, RawValue::Int(1560));
        // The same words read with the wrong order are a very different weight.
        let wrong = decode_value(&[0x0000, 0x0618], WeightType::I32, WordOrder::LoHi).unwrap();
        assert_eq!(wrong, RawValue::Int(0x0618_0000));
        // 100 000 kg needs both words.
        let big = 100_000u32;
        let words = [(big >> 16) as u16, big as u16];
        assert_eq!(
            decode_value(&words, WeightType::U32, WordOrder::HiLo).unwrap(),
            RawValue::Int(100_000)
        );
        assert_eq!(
            decode_value(&[words[1], words[0]], WeightType::U32, WordOrder::LoHi).unwrap(),
            RawValue::Int(100_000)
        );
    }

    #[test]
    fn signed_and_sixteen_bit_values() {
        let minus = (-125i32) as u32;
        let w = [(minus >> 16) as u16, minus as u16];
        assert_eq!(
            decode_value(&w, WeightType::I32, WordOrder::HiLo).unwrap(),
            RawValue::Int(-125)
        );
        assert_eq!(
            decode_value(&w, WeightType::U32, WordOrder::HiLo).unwrap(),
            RawValue::Int(i64::from(minus))
        );
        assert_eq!(
            decode_value(&[0xFF83], WeightType::I16, WordOrder::HiLo).unwrap(),
            RawValue::Int(-125)
        );
        assert_eq!(
            decode_value(&[0xFF83], WeightType::U16, WordOrder::HiLo).unwrap(),
            RawValue::Int(0xFF83)
        );
        let f = 12.5f32.to_bits();
        assert_eq!(
            decode_value(
                &[f as u16, (f >> 16) as u16],
                WeightType::F32,
                WordOrder::LoHi
            )
            .unwrap(),
            RawValue::Float(12.5)
        );
        assert!(decode_value(&[1], WeightType::I32, WordOrder::HiLo).is_err());
    }

    #[test]
    fn decimals_and_units_are_exact() {
        assert_eq!(
            to_mass(RawValue::Int(1560), 0, Unit::Kg).unwrap(),
            Mass::from_kg(1560)
        );
        // 49.98 t must be 49980 kg exactly, not 49979.99.
        assert_eq!(
            to_mass(RawValue::Int(4998), 2, Unit::T).unwrap(),
            Mass::from_kg(49980)
        );
        assert_eq!(
            to_mass(RawValue::Int(-125), 1, Unit::Kg).unwrap(),
            Mass::from_grams(-12_500)
        );
        // Below a gram rounds half away from zero.
        assert_eq!(
            to_mass(RawValue::Int(15), 1, Unit::G).unwrap(),
            Mass::from_grams(2)
        );
        assert_eq!(
            to_mass(RawValue::Int(-15), 1, Unit::G).unwrap(),
            Mass::from_grams(-2)
        );
        assert_eq!(
            to_mass(RawValue::Float(12.345), 0, Unit::T).unwrap(),
            Mass::from_grams(12_345_000)
        );
        assert!(to_mass(RawValue::Float(f32::NAN), 0, Unit::Kg).is_err());
    }

    #[test]
    fn status_bits_and_decimals_register() {
        let s = ModbusScaleSettings {
            weight_register: 0,
            decimals_register: Some(2),
            weight_unit: Unit::T,
            status: StatusSettings {
                register: Some(3),
                stable_bit: Some(0),
                negative_bit: Some(2),
                overload_bit: Some(3),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(s.read_plan(), vec![(0, 4)]);
        let r = s.decode(&image(0, &[0, 15_600, 3, 0b0001])).unwrap();
        assert_eq!(r.mass, Mass::from_kg(15_600));
        assert_eq!(r.stable, Some(true));
        assert!(!r.overload);
        assert_eq!(&r.raw[..], &[0, 0, 0x3C, 0xF0, 0, 3, 0, 1]);
        let r = s.decode(&image(0, &[0, 15_600, 3, 0b1100])).unwrap();
        assert_eq!(r.mass, Mass::from_kg(-15_600));
        assert_eq!(r.stable, Some(false));
        assert!(r.overload);
        assert!(matches!(
            s.decode(&image(0, &[0, 1, 9, 0])),
            Err(DecodeError::Decimals { .. })
        ));
        // Motion bit alone gives the inverse sense.
        let m = ModbusScaleSettings {
            status: StatusSettings {
                register: Some(2),
                motion_bit: Some(5),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            m.decode(&image(0, &[0, 1, 1 << 5])).unwrap().stable,
            Some(false)
        );
        assert_eq!(m.decode(&image(0, &[0, 1, 0])).unwrap().stable, Some(true));
        // No status register: no flag, the stability engine decides.
        let plain = ModbusScaleSettings::default();
        assert_eq!(plain.decode(&image(0, &[0, 1])).unwrap().stable, None);
    }

    #[test]
    fn far_apart_registers_are_read_separately() {
        let s = ModbusScaleSettings {
            weight_register: 100,
            status: StatusSettings {
                register: Some(4000),
                stable_bit: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(s.read_plan(), vec![(100, 2), (4000, 1)]);
        let mut i = RegisterImage::new();
        i.push(100, vec![0, 20_000]);
        i.push(4000, vec![0b10]);
        let r = s.decode(&i).unwrap();
        assert_eq!((r.mass, r.stable), (Mass::from_kg(20_000), Some(true)));
    }

    #[test]
    fn settings_from_profile_table() {
        let v: toml::Value = toml::from_str(
            "unit = 3\nweight_register = 10\nword_order = \"lo-hi\"\nweight_type = \"u32\"\ndecimals = 2\nweight_unit = \"t\"\n[status]\nregister = 12\nstable_bit = 4\n[stability]\nmin_weight = 800\n",
        )
        .unwrap();
        let s = ModbusScaleSettings::from_toml(&v).unwrap();
        assert_eq!(s.unit, 3);
        assert_eq!(s.word_order, WordOrder::LoHi);
        assert_eq!(s.weight_type, WeightType::U32);
        assert_eq!(s.weight_unit, Unit::T);
        assert_eq!(s.status.stable_bit, Some(4));
        assert_eq!(s.stability.min_weight, Mass::from_kg(800));
        assert_eq!(s.poll_ms, 100);
        for bad in [
            "word_order = \"middle\"",
            "[status]\nstable_bit = 3",
            "[status]\nregister = 1\nstable_bit = 16",
            "decimals = 9",
            "[status]\nregister = 1\nstabel_bit = 1",
        ] {
            let v: toml::Value = toml::from_str(bad).unwrap();
            assert!(ModbusScaleSettings::from_toml(&v).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn spawn_refuses_stream_addresses() {
        let (tx, _rx) = mpsc::channel(1);
        let a: Address = "serial:///dev/ttyS1".parse().unwrap();
        assert!(matches!(
            spawn("s", &a, &ModbusScaleSettings::default(), tx),
            Err(DriverError::Address(_))
        ));
    }
}
