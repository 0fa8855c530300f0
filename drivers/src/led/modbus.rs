//! LED text signs driven through Modbus registers (`driver = "sign-modbus"`), common for
//! PLC-style LED controllers: each line is a block of holding registers holding GBK bytes, two
//! per register, zero-padded; after the blocks an optional "commit" register is written so the
//! controller redraws (reference field-devices §4.3). Voice text goes to its own block likewise.
//!
//! The GBK rules are those of the stream sign driver ([`super::to_gbk`], [`super::fit_line`]):
//! unencodable text is rejected or becomes `?`, never `&#…;`; long lines are cut on a
//! character boundary. A command is turned into its complete list of writes before anything is
//! sent, so a rejected command writes nothing.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::{Request, Response};
use tracing::{debug, info, warn};

use super::{fit_line, to_gbk, Overflow, TextError, Unencodable};
use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, EventKind};
use crate::health::DeviceHandle;
use crate::modbus::{BusOptions, ModbusBus, ModbusDevice, ModbusError, Transport};

/// The Modbus drivers share one error type (address, settings, bus).
pub use crate::io::DriverError;

pub const DRIVER: &str = "sign-modbus";

/// FC16 carries at most 123 registers.
const MAX_WRITE: usize = 123;

/// Which byte of a register holds the first of its two text bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteOrder {
    #[default]
    HighFirst,
    LowFirst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteFunction {
    /// FC16, one request per block (split every 123 registers).
    #[default]
    Multiple,
    /// FC06 register by register, for controllers without FC16.
    Single,
}

/// A register block holding one text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextBlock {
    /// First register (0-based protocol address).
    pub register: u16,
    /// GBK bytes the block holds (a hanzi is 2); the block spans ceil(max_bytes / 2) registers.
    pub max_bytes: usize,
}

impl TextBlock {
    pub fn registers(&self) -> u16 {
        self.max_bytes.div_ceil(2) as u16
    }

    fn range(&self) -> (u32, u32) {
        let start = u32::from(self.register);
        (start, start + u32::from(self.registers()))
    }
}

/// A register written with a fixed value after the text (the controller's refresh trigger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommitRegister {
    pub register: u16,
    #[serde(default = "one")]
    pub value: u16,
}

fn one() -> u16 {
    1
}

/// `[settings]` of a `led` profile using `driver = "sign-modbus"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ModbusSignSettings {
    /// Modbus unit (slave) id.
    pub unit: u8,
    pub timeout_ms: u64,
    pub unencodable: Unencodable,
    pub overflow: Overflow,
    pub byte_order: ByteOrder,
    pub write_function: WriteFunction,
    /// One block per sign line, top to bottom.
    pub lines: Vec<TextBlock>,
    /// Blank the blocks of lines a `sign.show` does not fill, so old text does not linger.
    pub clear_unused_lines: bool,
    pub commit: Option<CommitRegister>,
    pub voice: Option<TextBlock>,
    pub voice_commit: Option<CommitRegister>,
}

impl Default for ModbusSignSettings {
    fn default() -> Self {
        ModbusSignSettings {
            unit: 1,
            timeout_ms: 500,
            unencodable: Unencodable::Reject,
            overflow: Overflow::Truncate,
            byte_order: ByteOrder::HighFirst,
            write_function: WriteFunction::Multiple,
            lines: (0..4)
                .map(|i| TextBlock {
                    register: i * 16,
                    max_bytes: 32,
                })
                .collect(),
            clear_unused_lines: true,
            commit: None,
            voice: None,
            voice_commit: None,
        }
    }
}

impl ModbusSignSettings {
    /// Parses and validates a profile's `[settings]` (merged with the site's overrides).
    pub fn from_toml(v: &toml::Value) -> Result<Self, DriverError> {
        let s: ModbusSignSettings = v
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| DriverError::Settings(e.message().to_string()))?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), DriverError> {
        let bad = |m: String| Err(DriverError::Settings(m));
        if self.timeout_ms == 0 {
            return bad("timeout_ms must be above 0".into());
        }
        if self.lines.is_empty() {
            return bad("lines: at least one line block is needed".into());
        }
        let mut ranges: Vec<(String, (u32, u32))> = Vec::new();
        let blocks = self
            .lines
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("lines[{i}]"), b))
            .chain(self.voice.iter().map(|b| ("voice".to_string(), b)));
        for (name, b) in blocks {
            if b.max_bytes == 0 {
                return bad(format!("{name}.max_bytes must be above 0"));
            }
            let r = b.range();
            if r.1 > 0x1_0000 {
                return bad(format!("{name} runs past register 65535"));
            }
            ranges.push((name, r));
        }
        for (name, c) in [("commit", self.commit), ("voice_commit", self.voice_commit)] {
            if let Some(c) = c {
                let r = u32::from(c.register);
                ranges.push((format!("{name}.register"), (r, r + 1)));
            }
        }
        for (i, (a, ra)) in ranges.iter().enumerate() {
            for (b, rb) in &ranges[i + 1..] {
                // The two commit registers may be one and the same trigger.
                if a.ends_with("commit.register") && b.ends_with("commit.register") {
                    continue;
                }
                if ra.0 < rb.1 && rb.0 < ra.1 {
                    return bad(format!(
                        "{a} (registers {}..{}) overlaps {b} (registers {}..{})",
                        ra.0,
                        ra.1 - 1,
                        rb.0,
                        rb.1 - 1
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Text(#[from] TextError),
    #[error("{0}")]
    Unsupported(String),
}

/// One register write the sign needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegWrite {
    pub register: u16,
    pub values: Vec<u16>,
}

/// GBK bytes into a block's registers, two per register, zero-padded to the block size.
pub fn pack(gbk: &[u8], block: &TextBlock, order: ByteOrder) -> Vec<u16> {
    (0..block.registers() as usize)
        .map(|i| {
            let a = gbk.get(2 * i).copied().unwrap_or(0);
            let b = gbk.get(2 * i + 1).copied().unwrap_or(0);
            match order {
                ByteOrder::HighFirst => u16::from_be_bytes([a, b]),
                ByteOrder::LowFirst => u16::from_le_bytes([a, b]),
            }
        })
        .collect()
}

/// The writes a command becomes, in order. An error means nothing may be written.
pub fn sign_writes(s: &ModbusSignSettings, command: &Command) -> Result<Vec<RegWrite>, SignError> {
    let text = |t: &str, block: &TextBlock, what: &str| -> Result<Vec<u16>, TextError> {
        let g = to_gbk(t, s.unencodable)?;
        // A NUL ends the text on the controller; `to_gbk` already refuses control characters.
        let g = fit_line(g, block.max_bytes, s.overflow, what)?;
        Ok(pack(&g, block, s.byte_order))
    };
    let mut out = Vec::new();
    match command {
        Command::SignShow { lines } => {
            if lines.len() > s.lines.len() {
                return Err(TextError::TooManyLines {
                    lines: lines.len(),
                    max: s.lines.len(),
                }
                .into());
            }
            for (i, block) in s.lines.iter().enumerate() {
                let values = match lines.get(i) {
                    Some(l) => text(l, block, &format!("line {}", i + 1))?,
                    None if s.clear_unused_lines => pack(&[], block, s.byte_order),
                    None => continue,
                };
                out.push(RegWrite {
                    register: block.register,
                    values,
                });
            }
            out.extend(s.commit.map(|c| RegWrite {
                register: c.register,
                values: vec![c.value],
            }));
        }
        Command::VoiceSay { text: t } => {
            let Some(block) = &s.voice else {
                return Err(SignError::Unsupported(
                    "voice.say: this sign's profile has no [settings.voice] block".into(),
                ));
            };
            out.push(RegWrite {
                register: block.register,
                values: text(t, block, "voice text")?,
            });
            out.extend(s.voice_commit.map(|c| RegWrite {
                register: c.register,
                values: vec![c.value],
            }));
        }
        other => {
            return Err(SignError::Unsupported(format!(
                "{} is not something a Modbus text sign can do",
                other.name()
            )))
        }
    }
    Ok(out)
}

/// Sends the writes in order, stopping at the first failure (the commit, last, is then not
/// sent, so the controller keeps showing its previous text rather than a half-written one).
pub async fn write_all(
    dev: &ModbusDevice,
    function: WriteFunction,
    writes: &[RegWrite],
) -> Result<(), ModbusError> {
    for w in writes {
        match function {
            WriteFunction::Single => {
                for (i, v) in w.values.iter().enumerate() {
                    dev.write_single_register(w.register + i as u16, *v).await?;
                }
            }
            WriteFunction::Multiple if w.values.len() == 1 => {
                dev.write_single_register(w.register, w.values[0]).await?;
            }
            WriteFunction::Multiple => {
                for (n, chunk) in w.values.chunks(MAX_WRITE).enumerate() {
                    let addr = w.register + (n * MAX_WRITE) as u16;
                    let req = Request::WriteMultipleRegisters(addr, chunk.to_vec().into());
                    match dev.call(req).await? {
                        Response::WriteMultipleRegisters(a, c)
                            if a == addr && c as usize == chunk.len() => {}
                        other => {
                            return Err(ModbusError::Protocol {
                                unit: dev.unit(),
                                reason: format!(
                                    "WriteMultipleRegisters: unexpected reply {other:?}"
                                ),
                            })
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Starts the sign driver: a task that runs `sign.show` and `voice.say` one after another.
/// Needs a Tokio runtime. `Link` events follow the write results (a sign is not polled).
/// Dropping every command sender stops the task.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &ModbusSignSettings,
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
    let (tx, mut rx) = mpsc::channel::<Command>(16);
    let s = settings.clone();
    let name_task = name.to_string();
    tokio::spawn(async move {
        let name = name_task;
        let mut online: Option<bool> = None;
        while let Some(cmd) = rx.recv().await {
            let writes = match sign_writes(&s, &cmd) {
                Ok(w) => w,
                Err(e) => {
                    warn!(device = %name, command = cmd.name(), error = %e, "sign command refused; nothing written");
                    continue;
                }
            };
            let started = Instant::now();
            let res = write_all(&dev, s.write_function, &writes).await;
            let now_online = match &res {
                Ok(()) => {
                    debug!(device = %name, command = cmd.name(), writes = writes.len(), elapsed_ms = started.elapsed().as_millis() as u64, "sign updated");
                    true
                }
                Err(e) => {
                    warn!(device = %name, command = cmd.name(), error = %e, "sign write failed");
                    e.device_alive()
                }
            };
            if online != Some(now_online) {
                online = Some(now_online);
                info!(device = %name, online = now_online, "sign link");
                let ev = DeviceEvent {
                    device: name.clone(),
                    at: chrono::Utc::now(),
                    kind: EventKind::Link {
                        online: now_online,
                        error: res.err().map(|e| e.to_string()),
                    },
                };
                if events.send(ev).await.is_err() {
                    break;
                }
            }
        }
        debug!(device = %name, "modbus sign driver stopped");
    });
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: tx,
        health,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::gbk_to_string;

    fn unpack(words: &[u16], order: ByteOrder) -> Vec<u8> {
        let mut b: Vec<u8> = words
            .iter()
            .flat_map(|w| match order {
                ByteOrder::HighFirst => w.to_be_bytes(),
                ByteOrder::LowFirst => w.to_le_bytes(),
            })
            .collect();
        if let Some(end) = b.iter().position(|x| *x == 0) {
            b.truncate(end);
        }
        b
    }

    #[test]
    fn packs_gbk_high_byte_first_and_pads() {
        let block = TextBlock {
            register: 0,
            max_bytes: 9,
        };
        // 粤 = D4 C1.
        let w = pack(&[0xD4, 0xC1, b'A'], &block, ByteOrder::HighFirst);
        assert_eq!(w, vec![0xD4C1, 0x4100, 0, 0, 0]);
        let w = pack(&[0xD4, 0xC1, b'A'], &block, ByteOrder::LowFirst);
        assert_eq!(w, vec![0xC1D4, 0x0041, 0, 0, 0]);
    }

    #[test]
    fn show_writes_every_block_then_commits() {
        let s = ModbusSignSettings {
            commit: Some(CommitRegister {
                register: 100,
                value: 7,
            }),
            ..Default::default()
        };
        let w = sign_writes(
            &s,
            &Command::SignShow {
                lines: vec!["粤A12345".into(), "请上磅".into()],
            },
        )
        .unwrap();
        assert_eq!(
            w.iter().map(|w| w.register).collect::<Vec<_>>(),
            vec![0, 16, 32, 48, 100]
        );
        assert_eq!(
            gbk_to_string(&unpack(&w[0].values, ByteOrder::HighFirst)),
            "粤A12345"
        );
        assert_eq!(
            gbk_to_string(&unpack(&w[1].values, ByteOrder::HighFirst)),
            "请上磅"
        );
        assert!(w[2].values.iter().all(|v| *v == 0) && w[2].values.len() == 16);
        assert_eq!(w[4].values, vec![7]);
        let too_many = Command::SignShow {
            lines: vec!["a".into(); 5],
        };
        assert!(sign_writes(&s, &too_many).is_err());
        assert!(sign_writes(&s, &Command::VoiceSay { text: "x".into() }).is_err());
        assert!(sign_writes(&s, &Command::BarrierOpen).is_err());
    }

    #[test]
    fn unencodable_text_rejected_or_replaced() {
        let show = Command::SignShow {
            lines: vec!["欢迎😀".into(), "𠀀".into()],
        };
        let s = ModbusSignSettings::default();
        assert!(matches!(
            sign_writes(&s, &show),
            Err(SignError::Text(TextError::Unencodable { .. }))
        ));
        let s = ModbusSignSettings {
            unencodable: Unencodable::Replace,
            ..Default::default()
        };
        let w = sign_writes(&s, &show).unwrap();
        assert_eq!(
            gbk_to_string(&unpack(&w[0].values, ByteOrder::HighFirst)),
            "欢迎?"
        );
        assert_eq!(
            gbk_to_string(&unpack(&w[1].values, ByteOrder::HighFirst)),
            "?"
        );
    }

    #[test]
    fn long_lines_cut_on_character_boundary() {
        let s = ModbusSignSettings {
            lines: vec![TextBlock {
                register: 0,
                max_bytes: 5,
            }],
            ..Default::default()
        };
        // "A请上磅": 1 + 2 + 2 + 2 bytes; 5 fit "A请上" exactly, a 6th byte would split 磅.
        let w = sign_writes(
            &s,
            &Command::SignShow {
                lines: vec!["A请上磅".into()],
            },
        )
        .unwrap();
        assert_eq!(w[0].values.len(), 3);
        assert_eq!(
            gbk_to_string(&unpack(&w[0].values, ByteOrder::HighFirst)),
            "A请上"
        );
        let s = ModbusSignSettings {
            lines: vec![TextBlock {
                register: 0,
                max_bytes: 4,
            }],
            ..s
        };
        let w = sign_writes(
            &s,
            &Command::SignShow {
                lines: vec!["A请上磅".into()],
            },
        )
        .unwrap();
        assert_eq!(
            gbk_to_string(&unpack(&w[0].values, ByteOrder::HighFirst)),
            "A请"
        );
        let s = ModbusSignSettings {
            overflow: Overflow::Reject,
            ..s
        };
        assert!(sign_writes(
            &s,
            &Command::SignShow {
                lines: vec!["A请上磅".into()]
            }
        )
        .is_err());
    }

    #[test]
    fn settings_from_profile_table_and_overlaps() {
        let v: toml::Value = toml::from_str(
            "unit = 2\nunencodable = \"replace\"\nlines = [{ register = 0, max_bytes = 24 }, { register = 12, max_bytes = 24 }]\ncommit = { register = 200 }\nvoice = { register = 100, max_bytes = 64 }\nvoice_commit = { register = 200, value = 2 }\n",
        )
        .unwrap();
        let s = ModbusSignSettings::from_toml(&v).unwrap();
        assert_eq!(s.unit, 2);
        assert_eq!(s.lines.len(), 2);
        assert_eq!(s.commit.map(|c| c.value), Some(1));
        assert_eq!(s.voice.map(|v| v.registers()), Some(32));
        for bad in [
            // Line 1 (0..12) and line 2 (11..) overlap.
            "lines = [{ register = 0, max_bytes = 24 }, { register = 11, max_bytes = 24 }]",
            "lines = []",
            "lines = [{ register = 0, max_bytes = 0 }]",
            "lines = [{ register = 65530, max_bytes = 32 }]",
            "commit = { register = 5 }",
            "byte_order = \"middle\"",
        ] {
            let v: toml::Value = toml::from_str(bad).unwrap();
            assert!(ModbusSignSettings::from_toml(&v).is_err(), "{bad}");
        }
    }
}
