//! 仰邦 Onbon BX-5K/6K "BX" protocol (serial or TCP).
//!
//! Frame: `A5×8`, escaped body, `5A`. Body = `DST(2,LE) SRC(2,LE) 00×6 FE 02 LEN(2,LE) DATA
//! CRC16/ARC(2,LE)`; escaping applies to body+CRC: `A5→A6 02, A6→A6 01, 5A→5B 02, 5B→5B 01`.
//! DATA = command group, command, must-reply flag, two reserved bytes, payload.
//!
//! The ping frame is checked against a captured reference. The dynamic-area (`A3 06`) payload
//! and the reply (`A0 00` = OK, `A0 01 code` = refused) follow the public BX-5K protocol text
//! and have not been checked against a card: confirm on the device before relying on them.

use super::gbk_to_string;
use crate::stream::crc16;

pub const DST_DEFAULT: u16 = 0x0001;
pub const SRC_DEFAULT: u16 = 0x8000;
const HEADER: u8 = 0xA5;
const TRAILER: u8 = 0x5A;
const MAX_FRAME: usize = 8 + 2 * (16 + 1024 + 2) + 1;

fn escape(out: &mut Vec<u8>, b: u8) {
    match b {
        0xA5 => out.extend_from_slice(&[0xA6, 0x02]),
        0xA6 => out.extend_from_slice(&[0xA6, 0x01]),
        0x5A => out.extend_from_slice(&[0x5B, 0x02]),
        0x5B => out.extend_from_slice(&[0x5B, 0x01]),
        _ => out.push(b),
    }
}

/// A frame from `src` to `dst` carrying `data`.
pub fn frame_to(dst: u16, src: u16, data: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + data.len());
    body.extend_from_slice(&dst.to_le_bytes());
    body.extend_from_slice(&src.to_le_bytes());
    body.extend_from_slice(&[0; 6]);
    body.extend_from_slice(&[0xFE, 0x02]);
    body.extend_from_slice(&(data.len().min(0xFFFF) as u16).to_le_bytes());
    body.extend_from_slice(data);
    let crc = crc16(0x0000, &body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut f = vec![HEADER; 8];
    for b in body {
        escape(&mut f, b);
    }
    f.push(TRAILER);
    f
}

pub fn frame(data: &[u8]) -> Vec<u8> {
    frame_to(DST_DEFAULT, SRC_DEFAULT, data)
}

/// `A2 00`: is the controller there?
pub fn ping() -> Vec<u8> {
    frame(&[0xA2, 0x00, 0x01, 0x00, 0x00])
}

/// Geometry and behaviour of one dynamic area (profile `[settings.bx]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(default)]
pub struct BxArea {
    /// Dynamic area id (DynamicAreaLoc).
    pub area_id: u8,
    /// X in units of 8 pixels, as the protocol counts.
    pub x: u16,
    pub y: u16,
    /// Width in units of 8 pixels.
    pub width: u16,
    pub height: u16,
    /// 0 = loop the content; 2 = show, then clear after `timeout_s`.
    pub run_mode: u8,
    pub timeout_s: u16,
    /// 1 = centre.
    pub alignment: u8,
    /// 1 = static display.
    pub display_mode: u8,
    pub speed: u8,
    pub stay_s: u8,
}

impl Default for BxArea {
    fn default() -> Self {
        BxArea {
            area_id: 0,
            x: 0,
            y: 0,
            width: 8,
            height: 32,
            run_mode: 0,
            timeout_s: 10,
            alignment: 1,
            display_mode: 1,
            speed: 0,
            stay_s: 5,
        }
    }
}

const AREA_FIXED: usize = 28;

/// `A3 06` update one dynamic area with GBK text (lines separated by `\n` in `gbk`).
pub fn dynamic_text(area: &BxArea, gbk: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(AREA_FIXED + gbk.len());
    a.push(0x00); // AreaType: text
    for v in [area.x, area.y, area.width, area.height] {
        a.extend_from_slice(&v.to_le_bytes());
    }
    a.push(area.area_id);
    a.push(0); // Lines_sizes
    a.push(area.run_mode);
    a.extend_from_slice(&area.timeout_s.to_le_bytes());
    a.push(0); // SoundMode: none
    a.push(0); // ExtendParaLen
    a.push(1); // TypeSetting: automatic
    a.push(area.alignment);
    a.push(0); // SingleLine: multi-line
    a.push(1); // NewLine: manual, on line breaks in the text
    a.push(area.display_mode);
    a.push(0); // ExitMode
    a.push(area.speed);
    a.push(area.stay_s);
    a.extend_from_slice(&(gbk.len() as u32).to_le_bytes());
    a.extend_from_slice(gbk);

    let mut d = vec![0xA3, 0x06, 0x01, 0x00, 0x00];
    d.push(0); // DeleteAreaNum
    d.push(1); // AreaNum
    d.extend_from_slice(&(a.len().min(0xFFFF) as u16).to_le_bytes());
    d.extend_from_slice(&a);
    frame(&d)
}

/// A frame taken off the wire: escaping undone, CRC checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BxFrame {
    pub dst: u16,
    pub src: u16,
    pub data: Vec<u8>,
}

impl BxFrame {
    pub fn command(&self) -> Option<(u8, u8)> {
        Some((*self.data.first()?, *self.data.get(1)?))
    }

    /// `Some(Ok)` for an ACK, `Some(Err(code))` for a refusal, `None` for anything else.
    pub fn reply(&self) -> Option<Result<(), u8>> {
        match self.data.as_slice() {
            [0xA0, 0x00, ..] => Some(Ok(())),
            [0xA0, 0x01, code, ..] => Some(Err(*code)),
            [0xA0, 0x01] => Some(Err(0)),
            _ => None,
        }
    }

    /// The text of an `A3 06` dynamic-area update (first area).
    pub fn dynamic_text(&self) -> Option<(u8, String)> {
        let d = &self.data;
        if self.command()? != (0xA3, 0x06) {
            return None;
        }
        let del = usize::from(*d.get(5)?);
        let a0 = 5 + 1 + del + 1 + 2;
        let area = d.get(a0..)?;
        let id = *area.get(9)?;
        let len = u32::from_le_bytes(area.get(24..28)?.try_into().ok()?) as usize;
        let text = area.get(AREA_FIXED..AREA_FIXED.checked_add(len)?)?;
        Some((id, gbk_to_string(text)))
    }
}

/// The reply a controller sends to `req` (used by the simulator).
pub fn ack_for(req: &BxFrame) -> Vec<u8> {
    frame_to(req.src, req.dst, &[0xA0, 0x00, 0x00, 0x00, 0x00])
}

pub fn nack_for(req: &BxFrame, code: u8) -> Vec<u8> {
    frame_to(req.src, req.dst, &[0xA0, 0x01, code, 0x00, 0x00])
}

/// Undoes escaping and checks a frame between the header run and `5A` (exclusive).
pub fn parse_body(escaped: &[u8]) -> Option<BxFrame> {
    let mut body = Vec::with_capacity(escaped.len());
    let mut it = escaped.iter();
    while let Some(&b) = it.next() {
        match b {
            0xA6 => match it.next()? {
                0x02 => body.push(0xA5),
                0x01 => body.push(0xA6),
                _ => return None,
            },
            0x5B => match it.next()? {
                0x02 => body.push(0x5A),
                0x01 => body.push(0x5B),
                _ => return None,
            },
            0xA5 | 0x5A => return None,
            _ => body.push(b),
        }
    }
    if body.len() < 16 + 2 {
        return None;
    }
    let (content, crc) = body.split_at(body.len() - 2);
    if crc16(0x0000, content).to_le_bytes() != crc {
        return None;
    }
    let len = usize::from(u16::from_le_bytes([content[12], content[13]]));
    if content.len() != 14 + len {
        return None;
    }
    Some(BxFrame {
        dst: u16::from_le_bytes([content[0], content[1]]),
        src: u16::from_le_bytes([content[2], content[3]]),
        data: content[14..].to_vec(),
    })
}

/// Stream reassembly: a frame is a run of `A5`, then bytes up to `5A`. Bodies never contain
/// raw `A5`/`5A` (they are escaped), which makes resync simple.
#[derive(Debug, Default, Clone)]
pub struct BxDecoder {
    buf: Vec<u8>,
    pub rejected: u64,
}

impl BxDecoder {
    pub fn push(&mut self, data: &[u8], out: &mut Vec<(BxFrame, Vec<u8>)>) {
        for &b in data {
            if self.buf.is_empty() && b != HEADER {
                continue;
            }
            self.buf.push(b);
            if b == TRAILER {
                let start = self.buf.iter().position(|&c| c != HEADER).unwrap_or(0);
                let body = &self.buf[start..self.buf.len() - 1];
                match parse_body(body) {
                    Some(f) => out.push((f, std::mem::take(&mut self.buf))),
                    None => {
                        self.rejected += 1;
                        self.buf.clear();
                    }
                }
            } else if b == HEADER && self.buf.len() > 1 && self.buf[self.buf.len() - 2] != HEADER {
                // A header inside a body: the previous frame was cut; start over here.
                self.rejected += 1;
                self.buf.clear();
                self.buf.push(HEADER);
            } else if self.buf.len() > MAX_FRAME {
                self.rejected += 1;
                self.buf.clear();
            }
        }
    }
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

    #[test]
    fn ping_matches_reference() {
        assert_eq!(
            ping(),
            hex("A5 A5 A5 A5 A5 A5 A5 A5 01 00 00 80 00 00 00 00 00 00 FE 02 05 00 A2 00 01 00 00 68 F8 5A")
        );
    }

    #[test]
    fn escaping_round_trips_through_the_decoder() {
        // Text whose GBK and CRC bytes include A5/A6/5A/5B must survive escaping.
        let text = to_gbk("Z[粤A12345 请上磅", Unencodable::Reject).unwrap();
        let mut text = text;
        text.extend_from_slice(&[0xA5, 0xA6, 0x5A, 0x5B]);
        let area = BxArea {
            area_id: 2,
            ..Default::default()
        };
        let f = dynamic_text(&area, &text);
        assert!(!f[8..f.len() - 1].contains(&0xA5));
        assert!(!f[8..f.len() - 1].contains(&0x5A));
        let mut dec = BxDecoder::default();
        let mut out = Vec::new();
        let mut data = b"\x5A\x00junk\xA5\x01".to_vec();
        data.extend_from_slice(&f);
        data.extend_from_slice(&ping());
        dec.push(&data, &mut out);
        assert_eq!(out.len(), 2, "rejected {}", dec.rejected);
        assert_eq!(out[0].1, f);
        let (id, _) = out[0].0.dynamic_text().unwrap();
        assert_eq!(id, 2);
        assert_eq!(out[1].0.command(), Some((0xA2, 0x00)));
        let reply = ack_for(&out[1].0);
        let mut r = Vec::new();
        dec.push(&reply, &mut r);
        assert_eq!(r[0].0.reply(), Some(Ok(())));
        assert_eq!(r[0].0.dst, SRC_DEFAULT);
    }

    #[test]
    fn dynamic_text_is_recovered() {
        let gbk = to_gbk("粤A12345 请上磅", Unencodable::Reject).unwrap();
        let f = dynamic_text(&BxArea::default(), &gbk);
        let mut out = Vec::new();
        BxDecoder::default().push(&f, &mut out);
        assert_eq!(
            out[0].0.dynamic_text(),
            Some((0, "粤A12345 请上磅".to_string()))
        );
    }

    #[test]
    fn corrupted_crc_is_rejected() {
        let mut f = ping();
        f[24] ^= 0x01;
        let mut out = Vec::new();
        let mut d = BxDecoder::default();
        d.push(&f, &mut out);
        assert!(out.is_empty());
        assert_eq!(d.rejected, 1);
    }
}
