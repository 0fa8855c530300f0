//! LED signs and voice modules at the lane: the parking "0x64" card ([`p64`]) and Onbon BX
//! controllers ([`bx`]), GBK text handling, and the sign driver task.
//!
//! Everything on the RS-485 side is GBK. `encoding_rs` turns characters GBK cannot encode into
//! HTML numeric references (`&#131072;`) — a sign would display that literally — so
//! [`to_gbk`] uses the encoder's unmappable-character report instead and either rejects the
//! text or substitutes `?`, per the profile's `unencodable` setting.

pub mod bx;
pub mod modbus;
pub mod p64;

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::address::Address;
use crate::command::Command;
use crate::event::DeviceEvent;
use crate::health::DeviceHandle;
use crate::stream::{self, BoxStream, DriverError, HealthReporter, Hex, LinkSettings};

pub const DRIVER: &str = "sign-stream";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error(
        "character {ch:?} (U+{code:04X}) in {text:?} has no GBK encoding; the sign cannot show it"
    )]
    Unencodable { ch: char, code: u32, text: String },
    #[error("{what} is {len} bytes in GBK; the card takes at most {max}")]
    TooLong {
        what: String,
        len: usize,
        max: usize,
    },
    #[error("{lines} lines given; the sign has {max}")]
    TooManyLines { lines: usize, max: usize },
}

/// What to do with a character GBK cannot encode (an emoji, a rare hanzi such as 𠀀).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unencodable {
    /// Refuse the whole message (the lane logs the error; nothing goes out).
    #[default]
    Reject,
    /// Send `?` in its place.
    Replace,
}

/// What to do with a line longer than `line_max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Cut at the last whole character that fits.
    #[default]
    Truncate,
    Reject,
}

/// UTF-8 → GBK with no HTML numeric references ever produced. Control characters are
/// treated as unencodable too: CR/LF/NUL are frame separators in 0x6F packets.
pub fn to_gbk(text: &str, policy: Unencodable) -> Result<Vec<u8>, TextError> {
    use encoding_rs::EncoderResult;
    let mut encoder = encoding_rs::GBK.new_encoder();
    let mut out = Vec::with_capacity(text.len() * 2);
    for ch in text.chars() {
        let bad = || TextError::Unencodable {
            ch,
            code: u32::from(ch),
            text: text.to_string(),
        };
        if ch.is_control() {
            match policy {
                Unencodable::Reject => return Err(bad()),
                Unencodable::Replace => {
                    out.push(b'?');
                    continue;
                }
            }
        }
        let mut src = [0u8; 4];
        let src = ch.encode_utf8(&mut src);
        let mut dst = [0u8; 8];
        let (result, _read, written) =
            encoder.encode_from_utf8_without_replacement(src, &mut dst, false);
        match result {
            EncoderResult::InputEmpty => out.extend_from_slice(&dst[..written]),
            EncoderResult::Unmappable(_) | EncoderResult::OutputFull => match policy {
                Unencodable::Reject => return Err(bad()),
                Unencodable::Replace => out.push(b'?'),
            },
        }
    }
    Ok(out)
}

/// GBK → UTF-8 for logs, the simulator and tests (malformed bytes become U+FFFD).
pub fn gbk_to_string(gbk: &[u8]) -> String {
    encoding_rs::GBK
        .decode_without_bom_handling(gbk)
        .0
        .into_owned()
}

/// Applies the per-line byte limit without splitting a two-byte GBK character.
pub fn fit_line(
    gbk: Vec<u8>,
    max: usize,
    overflow: Overflow,
    what: &str,
) -> Result<Vec<u8>, TextError> {
    if gbk.len() <= max {
        return Ok(gbk);
    }
    if overflow == Overflow::Reject {
        return Err(TextError::TooLong {
            what: what.to_string(),
            len: gbk.len(),
            max,
        });
    }
    let mut end = 0;
    while end < gbk.len() {
        let w = if gbk[end] < 0x80 { 1 } else { 2 };
        if end + w > max {
            break;
        }
        end += w;
    }
    let mut gbk = gbk;
    gbk.truncate(end);
    Ok(gbk)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignProtocol {
    /// Parking LED + voice card, VR=0x64.
    #[default]
    P64,
    /// Onbon BX-5K/6K dynamic area.
    Bx,
}

/// How `sign.show` lines go out on a 0x64 card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShowMode {
    /// One 0x62 temporary-text frame per line (works on every card version).
    #[default]
    Temp,
    /// One 0x6F multi-line packet (firmware ≥ 2.0).
    Multi,
}

/// `[settings]` of an LED/voice profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct SignSettings {
    pub protocol: SignProtocol,
    /// 0x64 card address (DA).
    pub card_address: u8,
    pub unencodable: Unencodable,
    pub overflow: Overflow,
    /// GBK bytes per line (a hanzi is 2).
    pub line_max_bytes: usize,
    pub max_lines: usize,
    pub show_mode: ShowMode,
    pub style: p64::LineStyle,
    /// 0x30 OPT byte: 1 = speak now.
    pub voice_opt: u8,
    /// GBK bytes per voice message.
    pub voice_max_bytes: usize,
    /// Wait for the 0x64 card's ACK (off for cards in no-reply mode, or behind a camera).
    /// BX always waits.
    pub wait_ack: bool,
    pub ack_timeout_ms: u64,
    pub write_timeout_ms: u64,
    /// Set the card clock (0x05) after every (re)connect, in the gateway's local time.
    pub sync_clock: bool,
    pub bx: bx::BxArea,
    #[serde(flatten)]
    pub link: LinkSettings,
}

impl Default for SignSettings {
    fn default() -> Self {
        SignSettings {
            protocol: SignProtocol::P64,
            card_address: 0,
            unencodable: Unencodable::Reject,
            overflow: Overflow::Truncate,
            line_max_bytes: 32,
            max_lines: 4,
            show_mode: ShowMode::Temp,
            style: p64::LineStyle::default(),
            voice_opt: 1,
            voice_max_bytes: 200,
            wait_ack: false,
            ack_timeout_ms: 1000,
            write_timeout_ms: 1000,
            sync_clock: false,
            bx: bx::BxArea::default(),
            link: LinkSettings::default(),
        }
    }
}

impl SignSettings {
    pub fn from_toml(v: &toml::Value) -> Result<Self, DriverError> {
        stream::settings_from_toml(v)
    }
}

/// The frames a command becomes on the wire. This is also what a camera passthrough
/// (`serialData`) carries: base64 them there.
///
/// Errors (unencodable text with `unencodable = "reject"`, too many lines, a line too long
/// with `overflow = "reject"`) mean nothing may be sent.
pub fn sign_frames(s: &SignSettings, command: &Command) -> Result<Vec<Bytes>, DriverError> {
    let frames = match (s.protocol, command) {
        (_, Command::SignShow { lines }) => {
            if lines.len() > s.max_lines {
                return Err(TextError::TooManyLines {
                    lines: lines.len(),
                    max: s.max_lines,
                }
                .into());
            }
            let gbk = lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let g = to_gbk(l, s.unencodable)?;
                    fit_line(g, s.line_max_bytes, s.overflow, &format!("line {}", i + 1))
                })
                .collect::<Result<Vec<_>, _>>()?;
            match (s.protocol, s.show_mode) {
                (SignProtocol::P64, ShowMode::Temp) => gbk
                    .iter()
                    .enumerate()
                    .map(|(i, g)| p64::temp_text(s.card_address, i as u8, &s.style, g))
                    .collect::<Result<Vec<_>, _>>()?,
                (SignProtocol::P64, ShowMode::Multi) => {
                    vec![p64::multi_line(s.card_address, &s.style, &gbk, &[])?]
                }
                (SignProtocol::Bx, _) => vec![bx::dynamic_text(&s.bx, &gbk.join(&b'\n'))],
            }
        }
        (SignProtocol::P64, Command::VoiceSay { text }) => {
            let g = to_gbk(text, s.unencodable)?;
            let g = fit_line(g, s.voice_max_bytes, s.overflow, "voice text")?;
            vec![p64::voice(s.card_address, s.voice_opt, &g)?]
        }
        (SignProtocol::P64, Command::RelayPulse { output, ms }) => {
            let ch: u8 = output.parse().map_err(|_| {
                DriverError::Settings(format!(
                    "relay output `{output}` is not a 0x64 channel number (0 light, 1 open, 2 close)"
                ))
            })?;
            let secs = (ms.div_ceil(1000)).clamp(1, 254) as u8;
            vec![p64::relay(s.card_address, ch, secs)?]
        }
        (_, other) => {
            return Err(DriverError::Settings(format!(
                "{} is not something a {:?} sign can do",
                other.name(),
                s.protocol
            )))
        }
    };
    Ok(frames.into_iter().map(Bytes::from).collect())
}

/// Starts the sign driver. Needs a Tokio runtime. The task ends when every command sender
/// (the handle's `commands`) is dropped.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &SignSettings,
    events: mpsc::Sender<DeviceEvent>,
) -> Result<DeviceHandle, DriverError> {
    stream::check_address(DRIVER, address, true)?;
    let (tx, rx) = mpsc::channel(16);
    let (health, health_rx) = HealthReporter::new();
    let task = SignTask {
        name: name.to_string(),
        address: address.clone(),
        s: settings.clone(),
        events,
        health,
        conn: None,
        backoff: settings.link.backoff(),
        retry_at: None,
    };
    tokio::spawn(task.run(rx));
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: tx,
        health: health_rx,
    })
}

struct SignTask {
    name: String,
    address: Address,
    s: SignSettings,
    events: mpsc::Sender<DeviceEvent>,
    health: HealthReporter,
    conn: Option<BoxStream>,
    backoff: crate::Backoff,
    /// Not before this instant after a failed connect, so a dead sign costs one timeout per
    /// backoff period instead of one per command.
    retry_at: Option<tokio::time::Instant>,
}

impl SignTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(cmd) = commands.recv().await {
            let frames = match sign_frames(&self.s, &cmd) {
                Ok(f) => f,
                Err(e) => {
                    warn!(device = %self.name, command = cmd.name(), error = %e, "sign command refused; nothing sent");
                    self.health.error(&e.to_string());
                    continue;
                }
            };
            if let Err(e) = self.send(&frames).await {
                warn!(device = %self.name, command = cmd.name(), error = %e, "sign command failed");
                self.conn = None;
                if self.health.offline(&e.to_string())
                    && !stream::send_link(&self.events, &self.name, false, Some(e.to_string()))
                        .await
                {
                    return;
                }
            }
        }
        debug!(device = %self.name, "sign driver stopped");
    }

    async fn ensure_connected(&mut self) -> Result<(), DriverError> {
        if self.conn.is_some() {
            return Ok(());
        }
        if let Some(t) = self.retry_at {
            if tokio::time::Instant::now() < t {
                return Err(DriverError::Timeout {
                    what: "reconnect back-off",
                    after: t - tokio::time::Instant::now(),
                });
            }
        }
        match stream::connect(DRIVER, &self.address, self.s.link.connect_timeout()).await {
            Ok(c) => {
                info!(device = %self.name, address = %self.address, "sign connected");
                self.conn = Some(c);
                self.retry_at = None;
                if self.s.sync_clock && self.s.protocol == SignProtocol::P64 {
                    let now = chrono::Local::now().naive_local();
                    let f = p64::clock(self.s.card_address, &p64::Clock::from_local(now))?;
                    self.write_frame(&f).await?;
                }
                Ok(())
            }
            Err(e) => {
                self.retry_at = Some(tokio::time::Instant::now() + self.backoff.next_delay());
                Err(e)
            }
        }
    }

    async fn send(&mut self, frames: &[Bytes]) -> Result<(), DriverError> {
        self.ensure_connected().await?;
        for f in frames {
            let started = tokio::time::Instant::now();
            self.write_frame(f).await?;
            let rtt = match self.s.protocol {
                SignProtocol::Bx => {
                    self.read_bx_ack().await?;
                    Some(started.elapsed())
                }
                SignProtocol::P64 if self.s.wait_ack => {
                    self.read_p64_ack(f[4]).await?;
                    Some(started.elapsed())
                }
                SignProtocol::P64 => None,
            };
            self.backoff.reset();
            if self.health.seen(rtt)
                && !stream::send_link(&self.events, &self.name, true, None).await
            {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn write_frame(&mut self, f: &[u8]) -> Result<(), DriverError> {
        let after = Duration::from_millis(self.s.write_timeout_ms.max(1));
        let conn = self.conn.as_mut().ok_or(DriverError::Closed)?;
        debug!(device = %self.name, frame = ?Hex(f), "sign write");
        tokio::time::timeout(after, async {
            conn.write_all(f).await?;
            conn.flush().await
        })
        .await
        .map_err(|_| DriverError::Timeout {
            what: "writing to the sign",
            after,
        })??;
        Ok(())
    }

    async fn read_bx_ack(&mut self) -> Result<(), DriverError> {
        let after = Duration::from_millis(self.s.ack_timeout_ms.max(1));
        let conn = self.conn.as_mut().ok_or(DriverError::Closed)?;
        let mut dec = bx::BxDecoder::default();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + after;
        loop {
            let n = match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Err(_) => return Err(DriverError::NoAck { what: "BX frame" }),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(DriverError::Closed);
            }
            dec.push(&buf[..n], &mut out);
            for (f, _) in out.drain(..) {
                match f.reply() {
                    Some(Ok(())) => return Ok(()),
                    Some(Err(code)) => {
                        return Err(DriverError::Nack {
                            what: "BX frame",
                            code,
                        })
                    }
                    None => continue,
                }
            }
        }
    }

    async fn read_p64_ack(&mut self, cmd: u8) -> Result<(), DriverError> {
        let after = Duration::from_millis(self.s.ack_timeout_ms.max(1));
        let conn = self.conn.as_mut().ok_or(DriverError::Closed)?;
        let mut dec = p64::P64Decoder::default();
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        let deadline = tokio::time::Instant::now() + after;
        loop {
            let n = match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
                Err(_) => return Err(DriverError::NoAck { what: "0x64 frame" }),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(DriverError::Closed);
            }
            dec.push(&buf[..n], &mut out);
            for (f, _) in out.drain(..) {
                if f.cmd == cmd && f.data.len() == 1 {
                    return if f.is_ack() {
                        Ok(())
                    } else {
                        Err(DriverError::Nack {
                            what: "0x64 frame",
                            code: f.data[0],
                        })
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbk_reference_and_unencodable() {
        assert_eq!(
            to_gbk("粤A12345", Unencodable::Reject).unwrap(),
            [0xD4, 0xC1, 0x41, 0x31, 0x32, 0x33, 0x34, 0x35]
        );
        for bad in ["粤A𠀀", "欢迎😀", "a\u{7}b"] {
            let e = to_gbk(bad, Unencodable::Reject).unwrap_err();
            assert!(matches!(e, TextError::Unencodable { .. }), "{e}");
            let r = to_gbk(bad, Unencodable::Replace).unwrap();
            assert!(!r.windows(2).any(|w| w == b"&#"), "{r:?}");
            assert!(r.contains(&b'?'));
        }
        assert_eq!(to_gbk("港澳·", Unencodable::Reject).unwrap().len(), 6);
    }

    #[test]
    fn lines_are_cut_on_character_boundaries() {
        let g = to_gbk("粤A请上磅称重", Unencodable::Reject).unwrap();
        let cut = fit_line(g.clone(), 6, Overflow::Truncate, "l").unwrap();
        assert_eq!(gbk_to_string(&cut), "粤A请");
        let cut = fit_line(g.clone(), 4, Overflow::Truncate, "l").unwrap();
        assert_eq!(gbk_to_string(&cut), "粤A");
        assert!(fit_line(g, 4, Overflow::Reject, "l").is_err());
    }

    #[test]
    fn commands_become_frames_or_errors() {
        let s = SignSettings::default();
        let f = sign_frames(
            &s,
            &Command::SignShow {
                lines: vec!["粤A12345".into(), "请上磅".into()],
            },
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0][4], p64::CMD_TEMP_TEXT);
        let err = sign_frames(
            &s,
            &Command::VoiceSay {
                text: "欢迎😀".into(),
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("GBK"), "{err}");
        let s = SignSettings {
            unencodable: Unencodable::Replace,
            ..SignSettings::default()
        };
        let f = sign_frames(
            &s,
            &Command::VoiceSay {
                text: "欢迎😀".into(),
            },
        )
        .unwrap();
        assert_eq!(&f[0][7..f[0].len() - 2], &[0xBB, 0xB6, 0xD3, 0xAD, b'?']);
        assert!(sign_frames(&s, &Command::BarrierOpen).is_err());
    }

    #[test]
    fn settings_from_profile_table() {
        let v: toml::Value = toml::from_str(
            "protocol = \"bx\"\nunencodable = \"replace\"\nconnect_timeout_ms = 500\nfuture_key = 1\n[bx]\narea_id = 3\n",
        )
        .unwrap();
        let s = SignSettings::from_toml(&v).unwrap();
        assert_eq!(s.protocol, SignProtocol::Bx);
        assert_eq!(s.unencodable, Unencodable::Replace);
        assert_eq!(s.link.connect_timeout_ms, 500);
        assert_eq!(s.bx.area_id, 3);
        assert_eq!(s.line_max_bytes, 32);
        let bad: toml::Value = toml::from_str("unencodable = \"drop\"").unwrap();
        assert!(SignSettings::from_toml(&bad).is_err());
    }
}
