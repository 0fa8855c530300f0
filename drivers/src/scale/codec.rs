//! Continuous-output weighbridge formats: decoders that reassemble frames from an arbitrary
//! byte stream (bounded buffer, resync on garbage, checksum/shape validation) and encoders the
//! simulator uses.
//!
//! | format | frame | stable flag | check |
//! |---|---|---|---|
//! | `a9` | 耀华 XK3190-A9: `STX sign d6 dp c1 c2 ETX` | none | XOR of sign..dp as 2 hex chars |
//! | `a12` | 耀华 A12/A12E: `ww0003.17kg`, `wn-003.17kg`, `wt…` | none | shape only |
//! | `reversed` | `=` + displayed weight reversed (`=0.06510` ⇒ `01560.0`) | none | shape only |
//! | `st-gs` | `ST,GS,+0012.450kg\r\n` (`US` unstable, `OL` overload; `NT`, `TR`) | yes | shape only |
//! | `toledo` | Mettler-Toledo 18-byte continuous output | SWB bit 3 (motion) | 7-bit two's complement (optional) |

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::mass::Mass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScaleFormat {
    A9,
    A12,
    Reversed,
    StGs,
    Toledo,
}

impl ScaleFormat {
    pub const ALL: [ScaleFormat; 5] = [
        ScaleFormat::A9,
        ScaleFormat::A12,
        ScaleFormat::Reversed,
        ScaleFormat::StGs,
        ScaleFormat::Toledo,
    ];

    /// Whether frames carry the indicator's own stable/motion flag.
    pub fn has_stable_flag(self) -> bool {
        matches!(self, ScaleFormat::StGs | ScaleFormat::Toledo)
    }
}

impl std::str::FromStr for ScaleFormat {
    type Err = String;
    /// The profile spellings: `a9`, `a12`, `reversed`, `st-gs`, `toledo`.
    fn from_str(s: &str) -> Result<Self, String> {
        ScaleFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scale format `{s}`; expected one of a9, a12, reversed, st-gs, toledo"
                )
            })
    }
}

impl ScaleFormat {
    pub fn name(self) -> &'static str {
        match self {
            ScaleFormat::A9 => "a9",
            ScaleFormat::A12 => "a12",
            ScaleFormat::Reversed => "reversed",
            ScaleFormat::StGs => "st-gs",
            ScaleFormat::Toledo => "toledo",
        }
    }
}

/// The unit the indicator displays in, for formats that do not send one (`a9`, `reversed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    G,
    #[default]
    Kg,
    T,
}

impl Unit {
    pub fn grams(self) -> i64 {
        match self {
            Unit::G => 1,
            Unit::Kg => 1000,
            Unit::T => 1_000_000,
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Unit::G => "g",
            Unit::Kg => "kg",
            Unit::T => "t",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightKind {
    #[default]
    Gross,
    Net,
    Tare,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleReading {
    pub mass: Mass,
    /// The indicator's own verdict where the format has one.
    pub stable: Option<bool>,
    pub kind: WeightKind,
    /// Over/under range (`OL`, Toledo SWB bit 2): the mass is meaningless.
    pub overload: bool,
    /// The frame exactly as received, for the audit trail.
    pub raw: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    pub format: ScaleFormat,
    /// Display unit for formats that do not carry one.
    pub unit: Unit,
    /// Toledo: the 18th byte (checksum) is enabled on the indicator.
    pub toledo_checksum: bool,
    /// Bytes kept while waiting for a frame to complete; beyond it the oldest are dropped.
    pub max_buffer: usize,
}

impl DecoderOptions {
    pub fn new(format: ScaleFormat) -> Self {
        DecoderOptions {
            format,
            unit: Unit::Kg,
            toledo_checksum: true,
            max_buffer: 128,
        }
    }
}

/// Counters for the health page and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub frames: u64,
    /// Candidate frames that failed the checksum or the field shape.
    pub rejected: u64,
    /// Bytes skipped while looking for a frame start (garbage, line noise, overflow).
    pub dropped_bytes: u64,
}

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const A9_LEN: usize = 12;
const MAX_LINE: usize = 48;

/// Frame reassembly for one scale. Feed it whatever the transport returned.
#[derive(Debug, Clone)]
pub struct ScaleDecoder {
    opts: DecoderOptions,
    buf: Vec<u8>,
    stats: DecodeStats,
}

enum Step {
    /// A candidate frame of this many bytes at the buffer start, with its verdict.
    Frame(usize, Option<ScaleReading>),
    /// Drop this many bytes (garbage before a header, or a header that led nowhere).
    Skip(usize),
    /// Wait for more bytes.
    Need,
}

impl ScaleDecoder {
    pub fn new(opts: DecoderOptions) -> Self {
        let opts = DecoderOptions {
            max_buffer: opts.max_buffer.max(64),
            ..opts
        };
        ScaleDecoder {
            opts,
            buf: Vec::with_capacity(opts.max_buffer),
            stats: DecodeStats::default(),
        }
    }

    pub fn options(&self) -> DecoderOptions {
        self.opts
    }

    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Appends `data` and pushes every complete, valid reading onto `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<ScaleReading>) {
        // Consume in buffer-sized chunks so a large read never grows the buffer past its cap
        // and frames inside the chunk are not lost to the overflow rule.
        for chunk in data.chunks(self.opts.max_buffer / 2) {
            self.buf.extend_from_slice(chunk);
            self.drain(out);
            if self.buf.len() > self.opts.max_buffer / 2 {
                let excess = self.buf.len() - self.opts.max_buffer / 2;
                self.buf.drain(..excess);
                self.stats.dropped_bytes += excess as u64;
            }
        }
    }

    /// Convenience for tests and one-shot parsing.
    pub fn decode_all(&mut self, data: &[u8]) -> Vec<ScaleReading> {
        let mut out = Vec::new();
        self.push(data, &mut out);
        out
    }

    fn drain(&mut self, out: &mut Vec<ScaleReading>) {
        loop {
            match self.step() {
                Step::Need => return,
                Step::Skip(n) => {
                    let n = n.clamp(1, self.buf.len());
                    self.buf.drain(..n);
                    self.stats.dropped_bytes += n as u64;
                }
                Step::Frame(n, Some(r)) => {
                    self.buf.drain(..n.min(self.buf.len()));
                    self.stats.frames += 1;
                    out.push(r);
                }
                Step::Frame(n, None) => {
                    self.buf.drain(..n.clamp(1, self.buf.len()));
                    self.stats.rejected += 1;
                }
            }
        }
    }

    fn step(&self) -> Step {
        if self.buf.is_empty() {
            return Step::Need;
        }
        match self.opts.format {
            ScaleFormat::A9 => self.step_stx(A9_LEN, |f| parse_a9(f, self.opts.unit)),
            ScaleFormat::Toledo => {
                let len = if self.opts.toledo_checksum { 18 } else { 17 };
                self.step_stx(len, |f| parse_toledo(f, self.opts.toledo_checksum))
            }
            ScaleFormat::StGs => self.step_line(),
            ScaleFormat::A12 => self.step_a12(),
            ScaleFormat::Reversed => self.step_reversed(),
        }
    }

    fn step_stx(&self, len: usize, parse: impl Fn(&[u8]) -> Option<ScaleReading>) -> Step {
        match self.buf.iter().position(|&b| b == STX) {
            None => Step::Skip(self.buf.len()),
            Some(p) if p > 0 => Step::Skip(p),
            Some(_) if self.buf.len() < len => Step::Need,
            // A failed candidate drops only its STX so a real frame starting inside it is
            // still found.
            Some(_) => match parse(&self.buf[..len]) {
                Some(r) => Step::Frame(len, Some(r)),
                None => Step::Frame(1, None),
            },
        }
    }

    fn step_line(&self) -> Step {
        match self.buf.iter().position(|&b| b == b'\r' || b == b'\n') {
            Some(0) => Step::Skip(1),
            Some(p) => Step::Frame(p + 1, parse_st_gs(&self.buf[..p])),
            None if self.buf.len() > MAX_LINE => Step::Skip(self.buf.len()),
            None => Step::Need,
        }
    }

    fn step_a12(&self) -> Step {
        let b = &self.buf;
        let start = b
            .windows(2)
            .position(|w| w[0] == b'w' && matches!(w[1], b'w' | b'n' | b't'));
        let start = match start {
            Some(0) => 0,
            Some(p) => return Step::Skip(p),
            // Keep a trailing `w`: its type letter may be in the next read.
            None if b.last() == Some(&b'w') => {
                return if b.len() > 1 {
                    Step::Skip(b.len() - 1)
                } else {
                    Step::Need
                }
            }
            None => return Step::Skip(b.len()),
        };
        let mut i = start + 2;
        while i < b.len() && is_field_byte(b[i]) {
            i += 1;
            if i - 2 > 12 {
                return Step::Frame(1, None);
            }
        }
        if i >= b.len() {
            return Step::Need;
        }
        let (unit, ulen) = match b[i] {
            b't' => (Some(Unit::T), 1),
            b'g' => (Some(Unit::G), 1),
            b'k' | b'l' if i + 1 >= b.len() => return Step::Need,
            b'k' if b[i + 1] == b'g' => (Some(Unit::Kg), 2),
            // Pounds cannot be stored as exact grams: reject, the indicator is misconfigured.
            b'l' if b[i + 1] == b'b' => (None, 2),
            _ => return Step::Frame(1, None),
        };
        let end = i + ulen;
        let reading = unit.and_then(|u| {
            let kind = match b[1] {
                b'n' => WeightKind::Net,
                b't' => WeightKind::Tare,
                _ => WeightKind::Gross,
            };
            let field = std::str::from_utf8(&b[2..i]).ok()?;
            Some(ScaleReading {
                mass: parse_decimal(field, u)?,
                stable: None,
                kind,
                overload: false,
                raw: Bytes::copy_from_slice(&b[..end]),
            })
        });
        Step::Frame(if reading.is_some() { end } else { 1 }, reading)
    }

    fn step_reversed(&self) -> Step {
        let b = &self.buf;
        match b.iter().position(|&c| c == b'=') {
            None => return Step::Skip(b.len()),
            Some(p) if p > 0 => return Step::Skip(p),
            Some(_) => {}
        }
        // The payload ends at the next `=` or at anything that cannot be part of a displayed
        // weight (CR/LF, line noise).
        let end = b[1..]
            .iter()
            .position(|&c| !is_field_byte(c))
            .map(|p| p + 1);
        match end {
            None if b.len() > 16 => Step::Frame(1, None),
            None => Step::Need,
            Some(e) => {
                let reading = std::str::from_utf8(&b[1..e]).ok().and_then(|s| {
                    let shown: String = s.chars().rev().collect();
                    Some(ScaleReading {
                        mass: parse_decimal(&shown, self.opts.unit)?,
                        stable: None,
                        kind: WeightKind::Gross,
                        overload: false,
                        raw: Bytes::copy_from_slice(&b[..e]),
                    })
                });
                Step::Frame(e, reading)
            }
        }
    }
}

fn is_field_byte(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b' ')
}

/// Parses a displayed decimal (`-003.17`, `+  12.450`, `01560.0`) into exact grams.
/// Rejects anything that is not exactly representable in grams.
pub fn parse_decimal(s: &str, unit: Unit) -> Option<Mass> {
    let t = s.trim();
    let (neg, rest) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let rest = rest.trim_start();
    let (int, frac) = rest.split_once('.').unwrap_or((rest, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if int.len() + frac.len() > 9 {
        return None;
    }
    let int_v: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_v: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let scale = 10i64.pow(frac.len() as u32);
    let num = frac_v * unit.grams();
    if num % scale != 0 {
        return None;
    }
    let grams = int_v * unit.grams() + num / scale;
    Some(Mass::from_grams(if neg { -grams } else { grams }))
}

fn scaled_grams(value: i64, unit: Unit, decimals: u32) -> Option<Mass> {
    let scale = 10i64.checked_pow(decimals)?;
    let num = value.checked_mul(unit.grams())?;
    (num % scale == 0).then(|| Mass::from_grams(num / scale))
}

fn hex_upper(n: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(n & 0x0F)]
}

fn a9_check(frame: &[u8]) -> u8 {
    frame[1..9].iter().fold(0, |x, b| x ^ b)
}

fn parse_a9(f: &[u8], unit: Unit) -> Option<ScaleReading> {
    if f.len() != A9_LEN || f[0] != STX || f[11] != ETX {
        return None;
    }
    let x = a9_check(f);
    let (hi, lo) = (x >> 4, x & 0x0F);
    let hex_ok = f[9] == hex_upper(hi) && f[10] == hex_upper(lo);
    // Some firmware prints each nibble as nibble+0x30 (`0x3B` for B).
    let nibble_ok = f[9] == 0x30 + hi && f[10] == 0x30 + lo;
    if !(hex_ok || nibble_ok) {
        return None;
    }
    let neg = match f[1] {
        b'+' => false,
        b'-' => true,
        _ => return None,
    };
    if !f[2..9].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = f[2..8]
        .iter()
        .fold(0i64, |v, d| v * 10 + i64::from(d - b'0'));
    let mass = scaled_grams(value, unit, u32::from(f[8] - b'0'))?;
    Some(ScaleReading {
        mass: if neg { Mass::ZERO - mass } else { mass },
        stable: None,
        kind: WeightKind::Gross,
        overload: false,
        raw: Bytes::copy_from_slice(f),
    })
}

fn parse_st_gs(line: &[u8]) -> Option<ScaleReading> {
    // Garbage may precede the head on the same line; try each plausible head.
    (0..line.len()).find_map(|i| {
        let l = &line[i..];
        if l.len() < 7 || l[2] != b',' || l[5] != b',' {
            return None;
        }
        let (stable, overload) = match &l[..2] {
            b"ST" => (true, false),
            b"US" => (false, false),
            b"OL" => (false, true),
            _ => return None,
        };
        let kind = match &l[3..5] {
            b"GS" => WeightKind::Gross,
            b"NT" => WeightKind::Net,
            b"TR" => WeightKind::Tare,
            _ => return None,
        };
        let field = std::str::from_utf8(&l[6..]).ok()?.trim_end();
        let raw = Bytes::copy_from_slice(l);
        if overload {
            return Some(ScaleReading {
                mass: Mass::ZERO,
                stable: Some(false),
                kind,
                overload: true,
                raw,
            });
        }
        let (num, unit) = if let Some(n) = field.strip_suffix("kg") {
            (n, Unit::Kg)
        } else if let Some(n) = field.strip_suffix('t') {
            (n, Unit::T)
        } else if let Some(n) = field.strip_suffix('g') {
            (n, Unit::G)
        } else {
            return None;
        };
        Some(ScaleReading {
            mass: parse_decimal(num, unit)?,
            stable: Some(stable),
            kind,
            overload: false,
            raw,
        })
    })
}

pub fn toledo_checksum(first17: &[u8]) -> u8 {
    let sum = first17.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    0u8.wrapping_sub(sum) & 0x7F
}

/// Six digits right-aligned with leading spaces (Toledo); returns None for anything else.
fn toledo_digits(d: &[u8]) -> Option<i64> {
    let first = d.iter().position(|&c| c != b' ')?;
    let digits = &d[first..];
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0i64, |v, c| v * 10 + i64::from(c - b'0')),
    )
}

fn parse_toledo(f: &[u8], checksum: bool) -> Option<ScaleReading> {
    let len = if checksum { 18 } else { 17 };
    if f.len() != len || f[0] != STX || f[16] != b'\r' {
        return None;
    }
    if checksum && f[17] != toledo_checksum(&f[..17]) {
        return None;
    }
    let (swa, swb, swc) = (f[1], f[2], f[3]);
    if swa & 0x20 == 0 || swb & 0x20 == 0 || (swa | swb | swc) & 0x80 != 0 {
        return None;
    }
    let value = toledo_digits(&f[4..10])?;
    toledo_digits(&f[10..16])?;
    // Pounds cannot be stored as exact grams; an indicator set to lb is a commissioning error.
    if swb & 0x10 == 0 {
        return None;
    }
    let mass = match swa & 0x07 {
        0 => Mass::from_grams(value.checked_mul(100_000)?),
        1 => Mass::from_grams(value.checked_mul(10_000)?),
        code => scaled_grams(value, Unit::Kg, u32::from(code - 2))?,
    };
    let overload = swb & 0x04 != 0;
    Some(ScaleReading {
        mass: if swb & 0x02 != 0 {
            Mass::ZERO - mass
        } else {
            mass
        },
        stable: Some(swb & 0x08 == 0 && !overload),
        kind: if swb & 0x01 != 0 {
            WeightKind::Net
        } else {
            WeightKind::Gross
        },
        overload,
        raw: Bytes::copy_from_slice(f),
    })
}

/// What the simulator asks an encoder to put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeInput {
    pub mass: Mass,
    pub stable: bool,
    /// Decimal places shown on the display (A9 dp digit, Toledo SWA code).
    pub decimals: u8,
    pub unit: Unit,
    pub kind: WeightKind,
    pub toledo_checksum: bool,
}

impl EncodeInput {
    pub fn kg(mass: Mass, stable: bool) -> Self {
        EncodeInput {
            mass,
            stable,
            decimals: 0,
            unit: Unit::Kg,
            kind: WeightKind::Gross,
            toledo_checksum: true,
        }
    }

    /// The displayed integer (weight × 10^decimals in the display unit), rounded half away
    /// from zero as an indicator would.
    fn shown(&self) -> i64 {
        let scale = 10i128.pow(u32::from(self.decimals.min(6)));
        let g = i128::from(self.mass.grams) * scale;
        let u = i128::from(self.unit.grams());
        let v = (g.abs() + u / 2) / u;
        (if g < 0 { -v } else { v }) as i64
    }

    fn decimal_text(&self, width: usize) -> String {
        let v = self.shown();
        let d = usize::from(self.decimals.min(6));
        let digits = format!("{:0>w$}", v.unsigned_abs(), w = d + 1);
        let (int, frac) = digits.split_at(digits.len() - d);
        let body = if d == 0 {
            int.to_string()
        } else {
            format!("{int}.{frac}")
        };
        let sign_w = usize::from(v < 0);
        let padded = format!("{:0>w$}", body, w = width.saturating_sub(sign_w));
        if v < 0 {
            format!("-{padded}")
        } else {
            padded
        }
    }
}

/// One frame in `format` for `input`.
pub fn encode(format: ScaleFormat, input: &EncodeInput) -> Vec<u8> {
    match format {
        ScaleFormat::A9 => {
            let v = input.shown();
            let mut f = Vec::with_capacity(A9_LEN);
            f.push(STX);
            f.push(if v < 0 { b'-' } else { b'+' });
            f.extend_from_slice(format!("{:06}", v.unsigned_abs().min(999_999)).as_bytes());
            f.push(b'0' + input.decimals.min(9));
            let x = a9_check(&[&f[..], &[0, 0, 0]].concat());
            f.push(hex_upper(x >> 4));
            f.push(hex_upper(x & 0x0F));
            f.push(ETX);
            f
        }
        ScaleFormat::A12 => {
            let k = match input.kind {
                WeightKind::Gross => 'w',
                WeightKind::Net => 'n',
                WeightKind::Tare => 't',
            };
            format!("w{k}{}{}", input.decimal_text(7), input.unit.suffix()).into_bytes()
        }
        ScaleFormat::Reversed => {
            let shown: String = input.decimal_text(7).chars().rev().collect();
            format!("={shown}").into_bytes()
        }
        ScaleFormat::StGs => {
            let head = if input.stable { "ST" } else { "US" };
            let kind = match input.kind {
                WeightKind::Gross => "GS",
                WeightKind::Net => "NT",
                WeightKind::Tare => "TR",
            };
            let num = input.decimal_text(8);
            let sign = if num.starts_with('-') { "" } else { "+" };
            format!("{head},{kind},{sign}{num}{}\r\n", input.unit.suffix()).into_bytes()
        }
        ScaleFormat::Toledo => {
            let kg = EncodeInput {
                unit: Unit::Kg,
                decimals: input.decimals.min(5),
                ..*input
            };
            let v = kg.shown();
            let swa = 0x20 | 0x08 | (kg.decimals + 2);
            let mut swb = 0x20 | 0x10;
            if !input.stable {
                swb |= 0x08;
            }
            if v < 0 {
                swb |= 0x02;
            }
            if input.kind == WeightKind::Net {
                swb |= 0x01;
            }
            let mut f = vec![STX, swa, swb, 0x20];
            f.extend_from_slice(format!("{:>6}", v.unsigned_abs().min(999_999)).as_bytes());
            f.extend_from_slice(b"     0\r");
            if input.toledo_checksum {
                f.push(toledo_checksum(&f));
            }
            f
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    fn dec(format: ScaleFormat, data: &[u8]) -> Vec<ScaleReading> {
        ScaleDecoder::new(DecoderOptions::new(format)).decode_all(data)
    }

    #[test]
    fn format_names_match_profile_spelling() {
        for f in ScaleFormat::ALL {
            assert_eq!(f.name().parse::<ScaleFormat>(), Ok(f));
            let v: ScaleFormat = toml::Value::String(f.name().into()).try_into().unwrap();
            assert_eq!(v, f);
        }
        assert!("a10".parse::<ScaleFormat>().unwrap_err().contains("a10"));
    }

    #[test]
    fn a9_reference_frames() {
        let r = dec(ScaleFormat::A9, &hex("02 2B 30 30 31 35 36 30 30 31 39 03"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].mass, Mass::from_kg(1560));
        assert_eq!(r[0].stable, None);
        let r = dec(ScaleFormat::A9, &hex("02 2B 30 30 32 30 30 30 32 31 42 03"));
        assert_eq!(r[0].mass, Mass::from_kg(20));
        let r = dec(ScaleFormat::A9, &hex("02 2D 30 30 30 31 32 35 31 31 41 03"));
        assert_eq!(r[0].mass, Mass::from_grams(-12_500));
        // nibble+0x30 check variant: 0x1B as `1` `;`
        let r = dec(ScaleFormat::A9, &hex("02 2B 30 30 32 30 30 30 32 31 3B 03"));
        assert_eq!(r[0].mass, Mass::from_kg(20));
    }

    #[test]
    fn a9_bad_check_is_rejected_and_next_frame_found() {
        let mut d = ScaleDecoder::new(DecoderOptions::new(ScaleFormat::A9));
        let mut data = hex("02 2B 30 30 31 35 36 30 30 31 38 03");
        data.extend(hex("02 2B 30 30 31 35 36 30 30 31 39 03"));
        let r = d.decode_all(&data);
        assert_eq!(r.len(), 1);
        assert_eq!(d.stats().rejected, 1);
    }

    #[test]
    fn a9_in_tonnes() {
        let mut o = DecoderOptions::new(ScaleFormat::A9);
        o.unit = Unit::T;
        let r = ScaleDecoder::new(o).decode_all(&hex("02 2B 30 30 32 30 30 30 32 31 42 03"));
        assert_eq!(r[0].mass, Mass::from_kg(20_000));
    }

    #[test]
    fn toledo_reference_frame() {
        let f = hex("02 2A 30 20 20 20 31 35 36 30 20 20 20 20 20 30 0D 1B");
        let r = dec(ScaleFormat::Toledo, &f);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].mass, Mass::from_kg(1560));
        assert_eq!(r[0].stable, Some(true));
        assert_eq!(r[0].kind, WeightKind::Gross);
        assert_eq!(&r[0].raw[..], &f[..]);
        let mut bad = f.clone();
        bad[17] ^= 1;
        assert!(dec(ScaleFormat::Toledo, &bad).is_empty());
        // Same frame without checksum, indicator set so.
        let mut o = DecoderOptions::new(ScaleFormat::Toledo);
        o.toledo_checksum = false;
        let r = ScaleDecoder::new(o).decode_all(&f[..17]);
        assert_eq!(r[0].mass, Mass::from_kg(1560));
    }

    #[test]
    fn toledo_flags() {
        let mut f = hex("02 2A 30 20 20 20 31 35 36 30 20 20 20 20 20 30 0D 00");
        f[2] |= 0x08 | 0x02; // motion, negative
        f[17] = toledo_checksum(&f[..17]);
        let r = dec(ScaleFormat::Toledo, &f);
        assert_eq!(r[0].stable, Some(false));
        assert_eq!(r[0].mass, Mass::from_kg(-1560));
        f[2] &= !0x10; // lb
        f[17] = toledo_checksum(&f[..17]);
        assert!(dec(ScaleFormat::Toledo, &f).is_empty());
    }

    #[test]
    fn text_formats() {
        let r = dec(ScaleFormat::A12, b"ww0003.17kgwn-003.17kgwt0001.00kg");
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].mass, Mass::from_grams(3170));
        assert_eq!(r[1].mass, Mass::from_grams(-3170));
        assert_eq!(r[1].kind, WeightKind::Net);
        assert_eq!(r[2].kind, WeightKind::Tare);
        let r = dec(ScaleFormat::Reversed, b"=0.06510=0.06510=");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].mass, Mass::from_kg(1560));
        let r = dec(
            ScaleFormat::StGs,
            b"ST,GS,+0012.450kg\r\nUS,NT,-0001.000kg\r\nOL,GS,+9999.999kg\r\n",
        );
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].mass, r[0].stable),
            (Mass::from_grams(12_450), Some(true))
        );
        assert_eq!(r[1].stable, Some(false));
        assert_eq!(r[1].kind, WeightKind::Net);
        assert!(r[2].overload);
    }

    #[test]
    fn round_trips_every_format() {
        for format in ScaleFormat::ALL {
            for (grams, decimals, stable) in [
                (1_560_000, 0, true),
                (49_980_000, 0, false),
                (12_340_000, 1, true),
                (-500_000, 0, false),
                (0, 0, true),
            ] {
                let input = EncodeInput {
                    decimals,
                    ..EncodeInput::kg(Mass::from_grams(grams), stable)
                };
                let frame = encode(format, &input);
                // A9 uses 12 bytes; Toledo can't show negative below the digits, etc.
                let mut data = frame.clone();
                if format == ScaleFormat::Reversed {
                    data.push(b'=');
                }
                let r = dec(format, &data);
                assert_eq!(
                    r.len(),
                    1,
                    "{format:?} {grams} {:?}",
                    String::from_utf8_lossy(&frame)
                );
                assert_eq!(r[0].mass.grams, grams, "{format:?}");
                if format.has_stable_flag() {
                    assert_eq!(r[0].stable, Some(stable), "{format:?}");
                }
            }
        }
    }

    #[test]
    fn encoders_reproduce_reference_frames() {
        let a9 = encode(ScaleFormat::A9, &EncodeInput::kg(Mass::from_kg(1560), true));
        assert_eq!(a9, hex("02 2B 30 30 31 35 36 30 30 31 39 03"));
        let tol = encode(
            ScaleFormat::Toledo,
            &EncodeInput::kg(Mass::from_kg(1560), true),
        );
        assert_eq!(
            tol,
            hex("02 2A 30 20 20 20 31 35 36 30 20 20 20 20 20 30 0D 1B")
        );
        let st = encode(
            ScaleFormat::StGs,
            &EncodeInput {
                decimals: 3,
                ..EncodeInput::kg(Mass::from_grams(12_450), true)
            },
        );
        assert_eq!(st, b"ST,GS,+0012.450kg\r\n");
        let rev = encode(
            ScaleFormat::Reversed,
            &EncodeInput {
                decimals: 1,
                ..EncodeInput::kg(Mass::from_kg(1560), true)
            },
        );
        assert_eq!(rev, b"=0.06510");
        let a12 = encode(
            ScaleFormat::A12,
            &EncodeInput {
                decimals: 2,
                ..EncodeInput::kg(Mass::from_grams(-3170), true)
            },
        );
        assert_eq!(a12, b"ww-003.17kg");
    }

    #[test]
    fn garbage_between_frames_is_skipped() {
        for format in ScaleFormat::ALL {
            let f = encode(format, &EncodeInput::kg(Mass::from_kg(1560), true));
            let mut data = Vec::new();
            for junk in [&b"\x00\xffxx"[..], b"\x02\x02=w\r\n", b"ST,GS,", b"\x03"] {
                data.extend_from_slice(junk);
                data.extend_from_slice(&f);
            }
            data.extend_from_slice(b"\r\n=");
            let r = dec(format, &data);
            assert_eq!(r.len(), 4, "{format:?}");
            assert!(
                r.iter().all(|x| x.mass == Mass::from_kg(1560)),
                "{format:?}"
            );
        }
    }

    #[test]
    fn buffer_stays_bounded_on_endless_garbage() {
        let mut d = ScaleDecoder::new(DecoderOptions::new(ScaleFormat::StGs));
        let junk = vec![b'x'; 10_000];
        assert!(d.decode_all(&junk).is_empty());
        assert!(d.buf.len() <= 128);
        assert_eq!(d.stats().dropped_bytes, 10_000 - d.buf.len() as u64);
    }
}
