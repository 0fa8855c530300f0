//! Property tests for the stream decoders: arbitrary bytes split anywhere never panic a
//! decoder and never yield a frame that fails its checksum; valid frames mixed with garbage
//! and split at random points are all recovered.

use ecogate_drivers::led::bx::{self, BxDecoder};
use ecogate_drivers::led::p64::{self, P64Decoder};
use ecogate_drivers::scale::codec::toledo_checksum;
use ecogate_drivers::scale::{
    encode, DecoderOptions, EncodeInput, ScaleDecoder, ScaleFormat, ScaleReading,
};
use ecogate_drivers::stream::crc16;
use ecogate_drivers::ups::parse_q1;
use ecogate_drivers::Mass;
use proptest::prelude::*;

fn format() -> impl Strategy<Value = ScaleFormat> {
    prop::sample::select(ScaleFormat::ALL.to_vec())
}

/// Feeds `data` in pieces ending at the given cut points.
fn split_feed<F: FnMut(&[u8])>(data: &[u8], cuts: &[usize], mut feed: F) {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut last = 0;
    for p in points {
        feed(&data[last..p]);
        last = p;
    }
    feed(&data[last..]);
}

fn decode_split(format: ScaleFormat, data: &[u8], cuts: &[usize]) -> Vec<ScaleReading> {
    let mut d = ScaleDecoder::new(DecoderOptions::new(format));
    let mut out = Vec::new();
    split_feed(data, cuts, |piece| d.push(piece, &mut out));
    out
}

/// The frame-level check each format has: what a yielded frame must satisfy.
fn frame_is_valid(format: ScaleFormat, raw: &[u8]) -> bool {
    match format {
        ScaleFormat::A9 => {
            if raw.len() != 12 || raw[0] != 0x02 || raw[11] != 0x03 {
                return false;
            }
            let x = raw[1..9].iter().fold(0u8, |a, b| a ^ b);
            let hex = format!("{x:02X}").into_bytes();
            let nib = [0x30 + (x >> 4), 0x30 + (x & 0x0F)];
            raw[9..11] == hex[..] || raw[9..11] == nib
        }
        ScaleFormat::Toledo => {
            raw.len() == 18
                && raw[0] == 0x02
                && raw[16] == b'\r'
                && raw[17] == toledo_checksum(&raw[..17])
        }
        ScaleFormat::StGs => {
            raw.len() >= 7 && matches!(&raw[..2], b"ST" | b"US" | b"OL") && raw[2] == b','
        }
        ScaleFormat::A12 => {
            raw.len() >= 4 && raw[0] == b'w' && matches!(raw[1], b'w' | b'n' | b't')
        }
        ScaleFormat::Reversed => raw.len() >= 2 && raw[0] == b'=',
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn scale_decoders_never_panic_or_yield_invalid_frames(
        format in format(),
        data in prop::collection::vec(any::<u8>(), 0..600),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        for r in decode_split(format, &data, &cuts) {
            prop_assert!(frame_is_valid(format, &r.raw), "{format:?} yielded {:?}", r.raw);
            // A yielded frame decodes to the same reading on its own.
            let again = decode_split(format, &[&r.raw[..], if format == ScaleFormat::Reversed { b"=" } else { b"" }].concat(), &[]);
            prop_assert_eq!(again.len(), 1);
            prop_assert_eq!(again[0].mass, r.mass);
        }
    }

    #[test]
    fn scale_frames_survive_garbage_and_splits(
        format in format(),
        kgs in prop::collection::vec(0i64..99_999, 1..8),
        junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 8),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
        stable in any::<bool>(),
    ) {
        // Only the checksummed formats can promise to recover every frame from arbitrary
        // junk; the text formats are tested with junk that cannot extend their fields.
        let clean = |j: &Vec<u8>| -> Vec<u8> {
            match format {
                ScaleFormat::A9 | ScaleFormat::Toledo => j.clone(),
                _ => j.iter().map(|b| if b.is_ascii_graphic() || b.is_ascii_whitespace() { b'#' } else { *b }).collect(),
            }
        };
        let mut data = Vec::new();
        for (i, kg) in kgs.iter().enumerate() {
            data.extend(clean(&junk[i % junk.len()]));
            data.extend(encode(format, &EncodeInput::kg(Mass::from_kg(*kg), stable)));
            if format == ScaleFormat::StGs {
                data.extend_from_slice(b"\r\n");
            }
        }
        data.extend_from_slice(b"\r\n=");
        let got: Vec<i64> = decode_split(format, &data, &cuts)
            .iter()
            .map(|r| r.mass.grams / 1000)
            .collect();
        // Every sent weight is recovered, in order (junk could in theory add frames, so
        // check the sent ones appear as a subsequence).
        let mut it = got.iter();
        for kg in &kgs {
            prop_assert!(it.any(|g| g == kg), "{format:?}: sent {kgs:?}, got {got:?}");
        }
    }

    #[test]
    fn p64_decoder_never_yields_a_bad_crc(
        data in prop::collection::vec(any::<u8>(), 0..800),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut d = P64Decoder::default();
        let mut out = Vec::new();
        split_feed(&data, &cuts, |p| d.push(p, &mut out));
        for (f, raw) in out {
            let n = raw.len();
            prop_assert_eq!(&crc16(0xFFFF, &raw[..n - 2]).to_le_bytes()[..], &raw[n - 2..]);
            let _ = p64::decode_message(&f);
        }
    }

    #[test]
    fn p64_frames_survive_garbage(
        texts in prop::collection::vec("[a-z0-9粤豫请上磅]{0,10}", 1..5),
        junk in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut data = junk.clone();
        let mut sent = Vec::new();
        for t in &texts {
            let g = ecogate_drivers::led::to_gbk(t, ecogate_drivers::led::Unencodable::Reject).unwrap();
            let f = p64::voice(0, 1, &g).unwrap();
            data.extend_from_slice(&f);
            data.extend_from_slice(&junk[..junk.len().min(5)]);
            sent.push(f);
        }
        let mut d = P64Decoder::default();
        let mut out = Vec::new();
        split_feed(&data, &cuts, |p| d.push(p, &mut out));
        let got: Vec<Vec<u8>> = out.into_iter().map(|(_, raw)| raw).collect();
        let mut it = got.iter();
        for f in &sent {
            prop_assert!(it.any(|g| g == f), "lost a frame");
        }
    }

    #[test]
    fn bx_decoder_never_yields_a_bad_crc(
        data in prop::collection::vec(any::<u8>(), 0..800),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let mut d = BxDecoder::default();
        let mut out = Vec::new();
        split_feed(&data, &cuts, |p| d.push(p, &mut out));
        for (f, raw) in out {
            // Re-encoding what was decoded gives a valid frame with the same content.
            let start = raw.iter().position(|&b| b != 0xA5).unwrap_or(0);
            let reparsed = bx::parse_body(&raw[start..raw.len() - 1]);
            prop_assert_eq!(reparsed.as_ref(), Some(&f));
            let _ = f.dynamic_text();
        }
    }

    #[test]
    fn bx_frames_survive_garbage(
        payload in prop::collection::vec(any::<u8>(), 0..60),
        junk in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let f = bx::dynamic_text(&bx::BxArea::default(), &payload);
        // Junk may end inside a false frame start; the real header run resynchronises.
        let mut data: Vec<u8> = junk.iter().map(|&b| if b == 0x5A { 0 } else { b }).collect();
        data.extend_from_slice(&f);
        let mut d = BxDecoder::default();
        let mut out = Vec::new();
        split_feed(&data, &cuts, |p| d.push(p, &mut out));
        prop_assert!(out.iter().any(|(fr, _)| fr.dynamic_text().map(|t| t.0) == Some(0)), "lost the frame");
    }

    #[test]
    fn q1_parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..120)) {
        if let Ok(r) = parse_q1(&data) {
            prop_assert_eq!(data.first(), Some(&b'('));
            let _ = r.to_status();
        }
    }
}
