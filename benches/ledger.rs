//! Ledger benchmarks: durable passes/s from 16 concurrent lanes with commit latency
//! percentiles, bulk registry import rows/s, and `verify` of 1,000,000 events.
//!
//! `cargo bench --bench ledger` (LEDGER_BENCH=lanes,import,verify picks some;
//! LEDGER_BENCH_VERIFY_EVENTS changes the 1,000,000).

use bytes::Bytes;
use chrono::{Duration as CDuration, TimeZone, Utc};
use ecogate::ledger::registry::import_csv;
use ecogate::ledger::{
    verify_with, BarrierMode, Decision, Direction, EventBody, Ledger, PassAttempt, VerifyOptions,
};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind};
use std::io::Write;
use std::time::{Duration, Instant};

fn pass(lane: usize, i: usize) -> EventBody {
    EventBody::PassAttempt(PassAttempt {
        lane: format!("{lane}-in"),
        gate: Some("1".into()),
        direction: if i % 2 == 0 {
            Direction::In
        } else {
            Direction::Out
        },
        plate: format!("豫A{lane:02}{:03}", i % 1000),
        color: PlateColor::Yellow,
        decision: Decision::Allow,
        reason: "registered_stage_ok".into(),
        reason_text: "欢迎光临".into(),
        barrier: BarrierMode::Auto,
        opened: true,
        stage: Some(EmissionStage::China(6)),
        fuel: Some(Fuel::Diesel),
        registry: Some(RegistryKind::Transport),
        photo_kinds: vec![],
        read_id: Some(format!("cam{lane}-{i}")),
        check: None,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn lanes(label: &str, per_lane: usize, photo_bytes: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(tmp.path()).expect("open");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let mut lat: Vec<Duration> = rt.block_on(async {
        let mut tasks = Vec::new();
        for lane in 0..16 {
            let ledger = ledger.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_lane);
                for i in 0..per_lane {
                    let photos = if photo_bytes > 0 {
                        (0..3)
                            .map(|k| {
                                let mut v = vec![(lane * 7 + i + k) as u8; photo_bytes];
                                v[..16].copy_from_slice(
                                    &((lane * 1_000_000 + i * 10 + k) as u128).to_le_bytes(),
                                );
                                Bytes::from(v)
                            })
                            .collect()
                    } else {
                        vec![]
                    };
                    let t = Instant::now();
                    ledger
                        .append(pass(lane, i), photos, Utc::now())
                        .await
                        .expect("append");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("lane task"));
        }
        all
    });
    let elapsed = started.elapsed();
    lat.sort();
    let n = lat.len();
    println!(
        "{label}: {n} durable passes from 16 lanes in {:.2}s = {:.0} passes/s; commit latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.50).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat[n - 1].as_secs_f64() * 1e3,
    );
}

/// User + system CPU seconds of this process so far (Linux /proc; ticks at 100 Hz), so that a
/// figure taken on a busy shared machine can be read next to the wall-clock one.
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let ut: f64 = rest.get(11)?.parse().ok()?;
            let st: f64 = rest.get(12)?.parse().ok()?;
            Some((ut + st) / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn registry_import(rows: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = tmp.path().join("vehicles.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&csv).expect("csv"));
    writeln!(
        f,
        "plate,color,vin,engine_no,vehicle_type,use_character,fuel,stage,registered_on,fleet"
    )
    .expect("w");
    for i in 0..rows {
        writeln!(
            f,
            "豫A{i:06},黄,LZZ1CLVB7K{i:07},E{i},H11,F,B,6,2021-05-01,某运输公司{}",
            i % 50
        )
        .expect("w");
    }
    drop(f);
    let ledger = Ledger::open(&tmp.path().join("data")).expect("open");
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let r = import_csv(&ledger, RegistryKind::Transport, &csv, false).expect("import");
    let el = t.elapsed();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "registry import: {} rows (each upserted + one chained registry_change event) in {:.2}s = {:.0} rows/s (CPU {:.2}s = {:.0} rows per CPU-second)",
        r.imported,
        el.as_secs_f64(),
        r.imported as f64 / el.as_secs_f64(),
        cpu,
        r.imported as f64 / cpu
    );
}

fn verify_events(n: usize) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(tmp.path()).expect("open");
    let t0 = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("t0");
    let fill = Instant::now();
    let chunk = 100_000;
    let mut done = 0;
    while done < n {
        let k = chunk.min(n - done);
        let start = done;
        ledger
            .transaction_blocking(move |txn| {
                for i in start..start + k {
                    txn.append(&pass(i % 16, i), &[], t0 + CDuration::seconds(i as i64))?;
                }
                Ok(())
            })
            .expect("fill");
        done += k;
    }
    let fill_el = fill.elapsed();
    drop(ledger);
    let t = Instant::now();
    let cpu0 = cpu_seconds();
    let rep = verify_with(
        tmp.path(),
        &VerifyOptions {
            skip_photos: false,
            ..Default::default()
        },
    )
    .expect("verify");
    let el = t.elapsed();
    let cpu = cpu_seconds() - cpu0;
    assert!(rep.ok(), "{rep}");
    let size = std::fs::metadata(tmp.path().join("ledger.db"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "verify: {} events ({:.0} MB database) in {:.2}s (CPU {:.2}s) = {:.0} events/s (filled in {:.1}s)",
        rep.events,
        size as f64 / 1e6,
        el.as_secs_f64(),
        cpu,
        rep.events as f64 / el.as_secs_f64(),
        fill_el.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let only = std::env::var("LEDGER_BENCH").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only.split(',').any(|s| s == name);
    if run("lanes") {
        lanes("lanes (no photos)", 1_000, 0);
        lanes("lanes (3 x 60 KB photos each)", 200, 60_000);
    }
    if run("import") {
        registry_import(100_000);
    }
    if !run("verify") {
        return;
    }
    let n = std::env::var("LEDGER_BENCH_VERIFY_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    verify_events(n);
}
