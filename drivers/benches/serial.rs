//! Throughput of the stream codecs and the stability engine, single core.
//!
//! Run: `cargo bench -p ecogate-drivers --bench serial`
//!
//! A weighbridge sends 10–20 frames/s; these figures show how much headroom one gateway core
//! has for many lanes and for garbage-heavy lines.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ecogate_drivers::led::bx::{self, BxDecoder};
use ecogate_drivers::led::p64::{self, P64Decoder};
use ecogate_drivers::led::{to_gbk, Unencodable};
use ecogate_drivers::scale::{
    encode, DecoderOptions, EncodeInput, ScaleDecoder, ScaleFormat, StabilityEngine,
    StabilitySettings,
};
use ecogate_drivers::ups::parse_q1;
use ecogate_drivers::Mass;

fn report(name: &str, items: u64, bytes: u64, took: Duration) {
    let s = took.as_secs_f64();
    println!(
        "{name:<40} {:>12.0} items/s {:>9.1} MB/s  ({items} items in {:.3} s)",
        items as f64 / s,
        bytes as f64 / s / 1e6,
        s
    );
}

fn scale_stream(format: ScaleFormat, frames: usize, garbage: bool) -> Vec<u8> {
    let mut data = Vec::new();
    for i in 0..frames {
        if garbage && i % 3 == 0 {
            data.extend_from_slice(b"\x00\xff#junk#");
        }
        let kg = 10_000 + (i as i64 * 37) % 30_000;
        data.extend(encode(
            format,
            &EncodeInput::kg(Mass::from_kg(kg), i % 2 == 0),
        ));
        if format == ScaleFormat::StGs {
            data.extend_from_slice(b"\r\n");
        }
    }
    data
}

fn main() {
    const FRAMES: usize = 200_000;
    for garbage in [false, true] {
        for format in ScaleFormat::ALL {
            let data = scale_stream(format, FRAMES, garbage);
            let mut d = ScaleDecoder::new(DecoderOptions::new(format));
            let mut out = Vec::with_capacity(64);
            let mut n = 0u64;
            let t = Instant::now();
            // 64-byte reads, like a serial port delivering a few frames at a time.
            for chunk in data.chunks(64) {
                d.push(chunk, &mut out);
                n += out.len() as u64;
                out.clear();
            }
            let took = t.elapsed();
            assert!(n as usize >= FRAMES - 1, "{format:?} decoded {n}");
            let label = format!(
                "scale decode {format:?}{}",
                if garbage { " +garbage" } else { "" }
            );
            report(&label, n, data.len() as u64, took);
        }
    }

    let mut e = StabilityEngine::new(StabilitySettings::default());
    let t0 = tokio::time::Instant::now();
    let t = Instant::now();
    let mut locks = 0u64;
    const SAMPLES: u64 = 1_000_000;
    for i in 0..SAMPLES {
        // 10 Hz, a vehicle every 600 samples.
        let phase = i % 600;
        let kg = if (100..500).contains(&phase) {
            30_000
        } else {
            0
        };
        let v = e.push(t0 + Duration::from_millis(i * 100), Mass::from_kg(kg), None);
        if matches!(v, ecogate_drivers::scale::Verdict::Locked(_)) {
            locks += 1;
        }
    }
    report("stability engine push", SAMPLES, 0, t.elapsed());
    assert_eq!(locks, SAMPLES / 600 + u64::from(SAMPLES % 600 > 110));

    let lines = ["粤A12345 请上磅", "欢迎光临"];
    let t = Instant::now();
    let mut bytes = 0u64;
    const MSGS: u64 = 200_000;
    for i in 0..MSGS {
        let g = to_gbk(lines[(i % 2) as usize], Unencodable::Reject).unwrap();
        let f = p64::temp_text(0, 0, &p64::LineStyle::default(), &g).unwrap();
        bytes += f.len() as u64;
        black_box(f);
    }
    report("0x64 GBK encode + frame", MSGS, bytes, t.elapsed());

    let frame = p64::voice(
        0,
        1,
        &to_gbk("欢迎光临,请入场停车", Unencodable::Reject).unwrap(),
    )
    .unwrap();
    let data: Vec<u8> = frame
        .iter()
        .cycle()
        .take(frame.len() * 100_000)
        .copied()
        .collect();
    let mut d = P64Decoder::default();
    let mut out = Vec::new();
    let t = Instant::now();
    let mut n = 0u64;
    for chunk in data.chunks(64) {
        d.push(chunk, &mut out);
        n += out.len() as u64;
        out.clear();
    }
    report("0x64 decode", n, data.len() as u64, t.elapsed());

    let frame = bx::dynamic_text(
        &bx::BxArea::default(),
        &to_gbk("粤A12345 请上磅", Unencodable::Reject).unwrap(),
    );
    let data: Vec<u8> = frame
        .iter()
        .cycle()
        .take(frame.len() * 100_000)
        .copied()
        .collect();
    let mut d = BxDecoder::default();
    let mut out = Vec::new();
    let t = Instant::now();
    let mut n = 0u64;
    for chunk in data.chunks(64) {
        d.push(chunk, &mut out);
        n += out.len() as u64;
        out.clear();
    }
    report("BX decode", n, data.len() as u64, t.elapsed());

    let line = b"(226.0 195.0 226.0 014 49.0 27.5 30.0 00001000\r";
    let t = Instant::now();
    const POLLS: u64 = 500_000;
    for _ in 0..POLLS {
        black_box(parse_q1(black_box(line)).unwrap());
    }
    report("Q1 parse", POLLS, POLLS * line.len() as u64, t.elapsed());
}
