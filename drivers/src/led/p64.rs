//! Parking LED + voice control card, "VR=0x64" protocol (RS-485, or behind a camera's 485
//! passthrough as VZ `serialData`).
//!
//! Frame: `DA VR=0x64 PN=FF FF CMD DL DATA CRC16/Modbus(LE)`. Reply: same header, `DL=1`,
//! data `00` = success. Text is GBK (see [`super::to_gbk`]); DL is one byte, so a frame's
//! data is at most 255 bytes.

use super::{gbk_to_string, TextError};
use crate::stream::crc16;

pub const VR: u8 = 0x64;
pub const CMD_CLOCK: u8 = 0x05;
pub const CMD_RELAY: u8 = 0x0F;
pub const CMD_VOICE: u8 = 0x30;
pub const CMD_TEMP_TEXT: u8 = 0x62;
pub const CMD_MULTI_LINE: u8 = 0x6F;

/// Frame bytes for one command.
pub fn frame(da: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, TextError> {
    let dl = u8::try_from(data.len()).map_err(|_| TextError::TooLong {
        what: "0x64 frame data".into(),
        len: data.len(),
        max: 255,
    })?;
    let mut f = Vec::with_capacity(8 + data.len());
    f.extend_from_slice(&[da, VR, 0xFF, 0xFF, cmd, dl]);
    f.extend_from_slice(data);
    let crc = crc16(0xFFFF, &f);
    f.extend_from_slice(&crc.to_le_bytes());
    Ok(f)
}

/// 0x30: speak `gbk` (phrases from the card's library, separated by `,`). `opt` 1 = now.
pub fn voice(da: u8, opt: u8, gbk: &[u8]) -> Result<Vec<u8>, TextError> {
    let mut d = Vec::with_capacity(1 + gbk.len());
    d.push(opt);
    d.extend_from_slice(gbk);
    frame(da, CMD_VOICE, &d)
}

/// Display parameters of one text line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct LineStyle {
    /// ETM / DM: 0 = show immediately, 1 = scroll left, …
    pub effect: u8,
    /// ETS / DS: effect speed.
    pub speed: u8,
    /// DT: seconds each screen stays.
    pub stay_s: u8,
    /// FINDEX: 3 = 宋体16.
    pub font: u8,
    /// DRS / DR: 0 = loop.
    pub repeat: u8,
    /// TC: R, G, B, A.
    pub color: [u8; 4],
}

impl Default for LineStyle {
    fn default() -> Self {
        // The reference 0x62 frame's values.
        LineStyle {
            effect: 0,
            speed: 1,
            stay_s: 5,
            font: 3,
            repeat: 0,
            color: [0xFF, 0, 0, 0],
        }
    }
}

/// 0x62: temporary text on window (line) `twid`.
///
/// Layout `TWID ETM ETS GST DT x x FINDEX DRS TC[4] 00×4 TL 00 TEXT`; the two bytes after DT
/// are sent as `00 01` exactly as in the reference frame (their meaning is not documented in
/// the material we have).
pub fn temp_text(da: u8, twid: u8, style: &LineStyle, gbk: &[u8]) -> Result<Vec<u8>, TextError> {
    let tl = u8::try_from(gbk.len()).map_err(|_| TextError::TooLong {
        what: format!("line {twid}"),
        len: gbk.len(),
        max: 255 - 19,
    })?;
    let mut d = vec![
        twid,
        style.effect,
        style.speed,
        0,
        style.stay_s,
        0,
        1,
        style.font,
        style.repeat,
    ];
    d.extend_from_slice(&style.color);
    d.extend_from_slice(&[0, 0, 0, 0, tl, 0]);
    d.extend_from_slice(gbk);
    frame(da, CMD_TEMP_TEXT, &d)
}

/// 0x6F: up to four lines and a voice phrase in one packet (card firmware ≥ 2.0).
/// `SF GST N {LID DM DS DT DR TC[4] TL TEXT 0D|00}… 0A VTL VOICE 00`.
pub fn multi_line(
    da: u8,
    style: &LineStyle,
    lines: &[Vec<u8>],
    voice_gbk: &[u8],
) -> Result<Vec<u8>, TextError> {
    let n = u8::try_from(lines.len()).map_err(|_| TextError::TooManyLines {
        lines: lines.len(),
        max: 4,
    })?;
    let mut d = vec![0, 0, n];
    for (i, text) in lines.iter().enumerate() {
        let tl = u8::try_from(text.len()).map_err(|_| TextError::TooLong {
            what: format!("line {i}"),
            len: text.len(),
            max: 255,
        })?;
        d.extend_from_slice(&[
            i as u8,
            style.effect,
            style.speed,
            style.stay_s,
            style.repeat,
        ]);
        d.extend_from_slice(&style.color);
        d.push(tl);
        d.extend_from_slice(text);
        d.push(if i + 1 == lines.len() { 0x00 } else { 0x0D });
    }
    let vtl = u8::try_from(voice_gbk.len()).map_err(|_| TextError::TooLong {
        what: "voice".into(),
        len: voice_gbk.len(),
        max: 255,
    })?;
    d.push(0x0A);
    d.push(vtl);
    d.extend_from_slice(voice_gbk);
    d.push(0);
    frame(da, CMD_MULTI_LINE, &d)
}

/// 0x0F relay: `ch` 0 traffic light, 1 open gate, 2 close, 0xFE light+open; `seconds` 0 = off,
/// 255 = latch.
pub fn relay(da: u8, ch: u8, seconds: u8) -> Result<Vec<u8>, TextError> {
    frame(da, CMD_RELAY, &[0, ch, 0, 0, 0, seconds])
}

/// Card clock fields as the 0x05 command sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    /// 1 = Sunday per the protocol text.
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

impl Clock {
    pub fn from_local(t: chrono::NaiveDateTime) -> Self {
        use chrono::{Datelike, Timelike};
        Clock {
            year: t.year().clamp(0, 0xFFFF) as u16,
            month: t.month() as u8,
            day: t.day() as u8,
            weekday: t.weekday().num_days_from_sunday() as u8 + 1,
            hour: t.hour() as u8,
            minute: t.minute() as u8,
            second: t.second() as u8,
        }
    }
}

/// 0x05 set the card's clock (year little-endian).
pub fn clock(da: u8, c: &Clock) -> Result<Vec<u8>, TextError> {
    let y = c.year.to_le_bytes();
    frame(
        da,
        CMD_CLOCK,
        &[
            y[0], y[1], c.month, c.day, c.weekday, c.hour, c.minute, c.second,
        ],
    )
}

/// A frame taken off the wire (CRC checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P64Frame {
    pub da: u8,
    pub cmd: u8,
    pub data: Vec<u8>,
}

impl P64Frame {
    /// A reply with `DL=1` and data 0.
    pub fn is_ack(&self) -> bool {
        self.data == [0]
    }
}

/// The ACK a card sends for `cmd`.
pub fn ack(da: u8, cmd: u8) -> Vec<u8> {
    // Cannot fail: one data byte.
    frame(da, cmd, &[0]).unwrap_or_default()
}

/// Stream reassembly with resync: finds `xx 64 FF FF`, waits for DL, checks the CRC, drops one
/// byte and rescans on any mismatch. Bounded to one maximal frame plus a read.
#[derive(Debug, Default, Clone)]
pub struct P64Decoder {
    buf: Vec<u8>,
    pub rejected: u64,
}

const MAX_FRAME: usize = 6 + 255 + 2;

impl P64Decoder {
    pub fn push(&mut self, data: &[u8], out: &mut Vec<(P64Frame, Vec<u8>)>) {
        for chunk in data.chunks(MAX_FRAME) {
            self.buf.extend_from_slice(chunk);
            self.drain(out);
            if self.buf.len() > MAX_FRAME {
                let excess = self.buf.len() - MAX_FRAME;
                self.buf.drain(..excess);
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<(P64Frame, Vec<u8>)>) {
        loop {
            let Some(p) = self
                .buf
                .windows(4)
                .position(|w| w[1] == VR && w[2] == 0xFF && w[3] == 0xFF)
            else {
                // Keep a possible header start.
                let keep = self.buf.len().min(3);
                self.buf.drain(..self.buf.len() - keep);
                return;
            };
            self.buf.drain(..p);
            if self.buf.len() < 6 {
                return;
            }
            let len = 6 + usize::from(self.buf[5]) + 2;
            if self.buf.len() < len {
                return;
            }
            let crc = crc16(0xFFFF, &self.buf[..len - 2]).to_le_bytes();
            if self.buf[len - 2..len] == crc {
                let raw: Vec<u8> = self.buf.drain(..len).collect();
                out.push((
                    P64Frame {
                        da: raw[0],
                        cmd: raw[4],
                        data: raw[6..len - 2].to_vec(),
                    },
                    raw,
                ));
            } else {
                self.rejected += 1;
                self.buf.drain(..1);
            }
        }
    }
}

/// What a frame asks the card to do, decoded back to text (simulator and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum P64Message {
    Voice { opt: u8, text: String },
    TempText { line: u8, text: String },
    MultiLine { lines: Vec<String>, voice: String },
    Relay { ch: u8, seconds: u8 },
    Clock(Clock),
    Other { cmd: u8, data: Vec<u8> },
}

impl P64Message {
    /// Every text the message would display or speak.
    pub fn texts(&self) -> Vec<String> {
        match self {
            P64Message::Voice { text, .. } | P64Message::TempText { text, .. } => {
                vec![text.clone()]
            }
            P64Message::MultiLine { lines, voice } => {
                let mut v = lines.clone();
                if !voice.is_empty() {
                    v.push(voice.clone());
                }
                v
            }
            _ => Vec::new(),
        }
    }
}

/// Decodes a frame's data. Malformed layouts come back as `Other`, never a panic.
pub fn decode_message(f: &P64Frame) -> P64Message {
    let d = &f.data;
    let other = || P64Message::Other {
        cmd: f.cmd,
        data: d.clone(),
    };
    match f.cmd {
        CMD_VOICE if !d.is_empty() => P64Message::Voice {
            opt: d[0],
            text: gbk_to_string(&d[1..]),
        },
        CMD_TEMP_TEXT if d.len() >= 19 => {
            let tl = usize::from(d[17]);
            match d.get(19..19 + tl) {
                Some(t) => P64Message::TempText {
                    line: d[0],
                    text: gbk_to_string(t),
                },
                None => other(),
            }
        }
        CMD_MULTI_LINE => decode_multi(d).unwrap_or_else(other),
        CMD_RELAY if d.len() == 6 => P64Message::Relay {
            ch: d[1],
            seconds: d[5],
        },
        CMD_CLOCK if d.len() == 8 => P64Message::Clock(Clock {
            year: u16::from_le_bytes([d[0], d[1]]),
            month: d[2],
            day: d[3],
            weekday: d[4],
            hour: d[5],
            minute: d[6],
            second: d[7],
        }),
        _ => other(),
    }
}

fn decode_multi(d: &[u8]) -> Option<P64Message> {
    let n = usize::from(*d.get(2)?);
    let mut i = 3;
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let tl = usize::from(*d.get(i + 9)?);
        lines.push(gbk_to_string(d.get(i + 10..i + 10 + tl)?));
        i += 10 + tl + 1;
    }
    if *d.get(i)? != 0x0A {
        return None;
    }
    let vtl = usize::from(*d.get(i + 1)?);
    let voice = gbk_to_string(d.get(i + 2..i + 2 + vtl)?);
    Some(P64Message::MultiLine { lines, voice })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::led::{to_gbk, Unencodable};

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    fn gbk(s: &str) -> Vec<u8> {
        to_gbk(s, Unencodable::Reject).unwrap()
    }

    #[test]
    fn reference_frames() {
        assert_eq!(
            voice(0, 1, &gbk("欢迎光临")).unwrap(),
            hex("00 64 FF FF 30 09 01 BB B6 D3 AD B9 E2 C1 D9 32 58")
        );
        assert_eq!(
            voice(0, 1, &gbk("欢迎光临,请入场停车")).unwrap(),
            hex("00 64 FF FF 30 14 01 BB B6 D3 AD B9 E2 C1 D9 2C C7 EB C8 EB B3 A1 CD A3 B3 B5 A9 36")
        );
        assert_eq!(
            temp_text(0, 0, &LineStyle::default(), &gbk("欢迎光临")).unwrap(),
            hex("00 64 FF FF 62 1B 00 00 01 00 05 00 01 03 00 FF 00 00 00 00 00 00 00 08 00 BB B6 D3 AD B9 E2 C1 D9 58 96")
        );
        assert_eq!(
            relay(0, 1, 5).unwrap(),
            hex("00 64 FF FF 0F 06 00 01 00 00 00 05 24 B7")
        );
        // The reference frame's weekday byte is 07 for a Thursday; it is sent as given.
        let c = Clock {
            year: 2016,
            month: 3,
            day: 10,
            weekday: 7,
            hour: 15,
            minute: 5,
            second: 6,
        };
        assert_eq!(
            clock(0, &c).unwrap(),
            hex("00 64 FF FF 05 08 E0 07 03 0A 07 0F 05 06 65 68")
        );
        assert_eq!(ack(0, 0x30), hex("00 64 FF FF 30 01 00 36 BB"));
    }

    #[test]
    fn decoder_round_trips_and_resyncs() {
        let style = LineStyle::default();
        let lines = vec![gbk("粤A12345"), gbk("请上磅")];
        let frames = [
            voice(0, 1, &gbk("欢迎光临")).unwrap(),
            temp_text(0, 1, &style, &gbk("禁止通行")).unwrap(),
            multi_line(0, &style, &lines, &gbk("欢迎光临")).unwrap(),
            relay(0, 1, 5).unwrap(),
        ];
        let mut data = vec![0x64, 0xFF, 0x00, 0x64, 0xFF, 0xFF, 0x30, 0x05];
        for f in &frames {
            data.extend_from_slice(f);
            data.extend_from_slice(b"\xFF\x64junk");
        }
        let mut dec = P64Decoder::default();
        let mut out = Vec::new();
        for b in &data {
            dec.push(std::slice::from_ref(b), &mut out);
        }
        let msgs: Vec<_> = out.iter().map(|(f, _)| decode_message(f)).collect();
        assert_eq!(
            msgs,
            vec![
                P64Message::Voice {
                    opt: 1,
                    text: "欢迎光临".into()
                },
                P64Message::TempText {
                    line: 1,
                    text: "禁止通行".into()
                },
                P64Message::MultiLine {
                    lines: vec!["粤A12345".into(), "请上磅".into()],
                    voice: "欢迎光临".into()
                },
                P64Message::Relay { ch: 1, seconds: 5 },
            ]
        );
        for ((_, raw), f) in out.iter().zip(&frames) {
            assert_eq!(raw, f);
        }
    }

    #[test]
    fn oversized_data_is_an_error_not_a_truncated_frame() {
        assert!(matches!(
            voice(0, 1, &[b'a'; 255]),
            Err(TextError::TooLong { .. })
        ));
    }
}
