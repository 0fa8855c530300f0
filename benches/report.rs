//! Report and search benchmarks over a ledger of 1,000,000 passes: a month (November 2026) of
//! traffic through 16 lanes (8 gates × in/out), 20,000 vehicles, a weighing for every fourth
//! entry, rail tonnage every day and a warning week.
//!
//! `cargo bench --bench report` (REPORT_BENCH_PASSES changes the 1,000,000). The built ledger
//! is kept in `target/bench-report-<N>/` so reruns skip the fill; delete it to rebuild.
//! `REPORT_BENCH_REBUILD=1` also times a full rebuild of the pass index and its per-day
//! aggregates (the catch-up an old ledger gets at its first open).

use chrono::{Duration as CDuration, TimeZone, Utc};
use ecogate::ledger::{
    BarrierMode, Decision, Direction, EventBody, Ledger, LedgerReader, MeasureChange, PassAttempt,
    TransportMode, TransportTonnage, Weighing,
};
use ecogate::report::{build_report, search_passes, PassQuery, ReportParams};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind};
use ecogate_drivers::Mass;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const VEHICLES: u64 = 20_000;

fn plate(v: u64) -> String {
    format!("豫A{v:05}")
}

fn stage_of(v: u64) -> (EmissionStage, Fuel) {
    match v % 10 {
        0 => (EmissionStage::Electric, Fuel::Electric),
        1 | 2 => (EmissionStage::China(5), Fuel::Diesel),
        3 => (EmissionStage::China(4), Fuel::Diesel),
        4 => (EmissionStage::China(6), Fuel::NaturalGas),
        _ => (EmissionStage::China(6), Fuel::Diesel),
    }
}

/// xorshift64*: deterministic traffic.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn build(dir: &Path, n: u64) {
    let ledger = Ledger::open(dir).expect("open");
    // 2026-11-01 00:00 GMT+8.
    let t0 = Utc
        .with_ymd_and_hms(2026, 10, 31, 16, 0, 0)
        .single()
        .expect("t0");
    let month = 30 * 86_400u64;
    let fill = Instant::now();
    let chunk = 50_000u64;
    let mut done = 0u64;
    while done < n {
        let k = chunk.min(n - done);
        let start = done;
        ledger
            .transaction_blocking(move |txn| {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ start.wrapping_add(1));
                for i in start..start + k {
                    // Passes come in pairs (entry, exit) spread evenly over the month.
                    let v = rng.next() % VEHICLES;
                    let at = t0 + CDuration::seconds((i * month / n) as i64);
                    let gate = 1 + (i / 2) % 8;
                    let dir = if i % 2 == 0 {
                        Direction::In
                    } else {
                        Direction::Out
                    };
                    let (stage, fuel) = stage_of(v);
                    let body = EventBody::PassAttempt(PassAttempt {
                        lane: format!("{gate}-{}", dir.name()),
                        gate: Some(gate.to_string()),
                        direction: dir,
                        plate: plate(v),
                        color: PlateColor::Yellow,
                        decision: Decision::Allow,
                        reason: "registered_stage_ok".into(),
                        reason_text: "欢迎光临".into(),
                        barrier: BarrierMode::Auto,
                        opened: true,
                        stage: Some(stage),
                        fuel: Some(fuel),
                        registry: Some(RegistryKind::Transport),
                        photo_kinds: vec![],
                        read_id: None,
                        check: None,
                    });
                    let r = txn.append(&body, &[], at)?;
                    if i % 8 == 0 {
                        let w = EventBody::Weighing(Weighing {
                            lane: format!("{gate}-in"),
                            scale: format!("scale{gate}"),
                            plate: plate(v),
                            color: PlateColor::Yellow,
                            gross: None,
                            tare: None,
                            net: Some(Mass::from_kg(20_000 + (rng.next() % 15_000) as i64)),
                            cargo: Some(
                                ["煤", "矿石", "焦炭", "石灰石"][(i / 8 % 4) as usize].into(),
                            ),
                            direction: Some(Direction::In),
                            pass_ref: Some(r.id),
                        });
                        txn.append(&w, &[], at + CDuration::seconds(60))?;
                    }
                }
                Ok(())
            })
            .expect("fill");
        done += k;
    }
    ledger
        .transaction_blocking(move |txn| {
            for d in 0..30i64 {
                let day =
                    chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("day") + CDuration::days(d);
                let body = EventBody::TransportTonnage(TransportTonnage {
                    date: day,
                    mode: TransportMode::Rail,
                    cargo: "煤".into(),
                    mass: Mass::from_kg(3_000_000),
                    note: String::new(),
                    operator: "bench".into(),
                });
                txn.append(&body, &[], t0 + CDuration::days(d))?;
            }
            let warn = EventBody::MeasureChange(MeasureChange {
                measure: "heavy-pollution".into(),
                active: true,
                level: Some("orange".into()),
                starts_at: Some(t0 + CDuration::days(10)),
                ends_at: Some(t0 + CDuration::days(17)),
                source: "platform".into(),
                detail: serde_json::Value::Null,
            });
            txn.append(&warn, &[], t0 + CDuration::days(9))?;
            Ok(())
        })
        .expect("tonnage");
    println!(
        "built: {n} passes + {} weighings in {:.1}s ({:.0} MB)",
        n / 8,
        fill.elapsed().as_secs_f64(),
        std::fs::metadata(dir.join("ledger.db"))
            .map(|m| m.len())
            .unwrap_or(0) as f64
            / 1e6
    );
}

/// User + system CPU seconds of this process so far (Linux /proc, 100 Hz ticks): on a shared
/// machine the wall-clock figure includes waiting for a core.
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let n: u64 = std::env::var("REPORT_BENCH_PASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("target"));
    let dir = target.join(format!("bench-report-{n}"));
    let done = dir.join("complete");
    if !done.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        build(&dir, n);
        std::fs::write(&done, "ok").expect("marker");
    } else {
        println!("reusing {}", dir.display());
        // A ledger kept from before the current index version gets its index rebuilt here
        // (the reader below opens read-only and would not).
        if ecogate::report::index::ensure_at(&dir).expect("index") {
            println!(
                "index rebuilt to version {}",
                ecogate::report::index::VERSION
            );
        }
    }
    if std::env::var("REPORT_BENCH_REBUILD").is_ok() {
        let conn = rusqlite::Connection::open(dir.join("ledger.db")).expect("db");
        let t = Instant::now();
        ecogate::report::index::rebuild(&conn).expect("rebuild");
        println!(
            "pass index rebuild from {n} passes: {:.2}s",
            t.elapsed().as_secs_f64()
        );
    }
    let reader = LedgerReader::open(&dir).expect("reader");

    // Monthly report: cold-ish first run, then repeats.
    let p = ReportParams {
        month: Some("2026-11".into()),
        ..Default::default()
    };
    let mut times = Vec::new();
    let mut last = None;
    let cpu0 = cpu_seconds();
    for _ in 0..5 {
        let t = Instant::now();
        let r = build_report(&reader, &p).expect("report");
        times.push(t.elapsed());
        last = Some(r);
    }
    let cpu = (cpu_seconds() - cpu0) / 5.0;
    let r = last.expect("ran");
    assert_eq!(r.passes.total, n, "every pass counted");
    let first = times[0];
    times.sort();
    println!(
        "monthly report over {} passes ({} weighings, {} days): first {:.0} ms, median {:.0} ms, best {:.0} ms, CPU {:.0} ms per report (target < 1000 ms); clean ratio {:.4}",
        r.passes.total,
        r.clean_transport.total.truck_trips,
        r.days,
        ms(first),
        ms(times[times.len() / 2]),
        ms(times[0]),
        cpu * 1e3,
        r.clean_transport.total.ratio_tonnage.unwrap_or(0.0),
    );

    // The same month from one second past midnight: not whole days, so the report takes the
    // row scan over `pass_index` (what every report did before the per-day aggregates).
    let rows_p = ReportParams {
        from: Some("2026-11-01 00:00:01".into()),
        to: Some("2026-12-01 00:00:00".into()),
        ..Default::default()
    };
    let mut times = Vec::new();
    let cpu0 = cpu_seconds();
    for _ in 0..3 {
        let t = Instant::now();
        build_report(&reader, &rows_p).expect("report");
        times.push(t.elapsed());
    }
    let cpu = (cpu_seconds() - cpu0) / 3.0;
    times.sort();
    println!(
        "  the month less its first second (row scan, not whole days): median {:.0} ms, best {:.0} ms, CPU {:.0} ms",
        ms(times[1]),
        ms(times[0]),
        cpu * 1e3
    );

    // Where the report's time goes: the raw SQLite work under it.
    let conn = reader.conn();
    let (f, t) = ("2026-10-31T16:00:00.000000Z", "2026-11-30T16:00:00.000000Z");
    let (fd, td) = ("2026-11-01", "2026-11-30");
    let time_days = |label: &str, sql: &str| {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let mut stmt = conn.prepare(sql).expect("sql");
        let mut rows = stmt.query([fd, td]).expect("query");
        let mut n = 0u64;
        while let Some(r) = rows.next().expect("row") {
            n += r.get_ref(0).map(|_| 1).unwrap_or(0);
        }
        println!(
            "  {label}: {n} rows in {:.0} ms (CPU {:.0} ms)",
            ms(t0.elapsed()),
            (cpu_seconds() - c0) * 1e3
        );
    };
    time_days(
        "step the month's pass_day_counts rows, no work",
        "SELECT day, hour, gate, entry, manual, stage, fuel, passes, denied FROM pass_day_counts WHERE day >= ?1 AND day <= ?2",
    );
    time_days(
        "step the month's pass_day_vehicles rows, no work",
        "SELECT day, plate, color, passes, last_in_at, last_in_seq, last_in_stage, last_in_fuel FROM pass_day_vehicles WHERE day >= ?1 AND day <= ?2",
    );
    time_days(
        "weighing_day_totals grouped by cargo, stage, fuel",
        "SELECT cargo, stage, fuel, sum(trips), sum(grams) FROM weighing_day_totals WHERE day >= ?1 AND day <= ?2 GROUP BY cargo, stage, fuel",
    );
    let time = |label: &str, sql: &str| {
        let c0 = cpu_seconds();
        let t0 = Instant::now();
        let mut stmt = conn.prepare(sql).expect("sql");
        let mut rows = stmt.query([f, t]).expect("query");
        let mut n = 0u64;
        while let Some(r) = rows.next().expect("row") {
            n += r.get_ref(0).map(|_| 1).unwrap_or(0);
        }
        println!(
            "  {label}: {n} rows in {:.0} ms (CPU {:.0} ms)",
            ms(t0.elapsed()),
            (cpu_seconds() - c0) * 1e3
        );
    };
    time(
        "min/max seq of the month (index scan)",
        "SELECT min(seq), max(seq) FROM pass_index WHERE occurred_at >= ?1 AND occurred_at < ?2",
    );
    time(
        "step the month's pass rows, 14 columns, no work",
        "SELECT day, hour, direction, gate, plate, color, stage, fuel, barrier, kind, is_pass, voided, decision, occurred_at FROM pass_index WHERE +occurred_at >= ?1 AND +occurred_at < ?2",
    );
    time(
        "step the month's weighings",
        "SELECT cargo, net_g, stage, fuel FROM weighing_index WHERE occurred_at >= ?1 AND occurred_at < ?2",
    );

    // Search by plate: exact, first page of 50, over many plates.
    let mut rng = Rng(7);
    let mut lat = Vec::new();
    let mut rows = 0u64;
    for _ in 0..2_000 {
        let q = PassQuery {
            plate: Some(plate(rng.next() % VEHICLES)),
            ..Default::default()
        };
        let t = Instant::now();
        let page = search_passes(&reader, &q).expect("search");
        lat.push(t.elapsed());
        rows += page.total;
    }
    lat.sort();
    println!(
        "search by plate (exact, page of 50, {} plates, avg {:.0} passes each): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target < 50 ms)",
        lat.len(),
        rows as f64 / lat.len() as f64,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(lat[lat.len() - 1]),
    );
    let mut lat = Vec::new();
    for i in 0..200u64 {
        let q = PassQuery {
            plate: Some(format!("豫A{:03}*", i % 200)),
            from: Some("2026-11-10".into()),
            to: Some("2026-11-16".into()),
            ..Default::default()
        };
        let t = Instant::now();
        search_passes(&reader, &q).expect("search");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "search by plate prefix (100 plates each) within a week: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
    );
    let mut lat = Vec::new();
    for g in 1..=8u64 {
        let q = PassQuery {
            gate: Some(g.to_string()),
            direction: Some("in".into()),
            from: Some("2026-11-12".into()),
            to: Some("2026-11-12".into()),
            page: Some("3".into()),
            ..Default::default()
        };
        let t = Instant::now();
        search_passes(&reader, &q).expect("search");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "search by gate + direction + day, page 3: p50 {:.2} ms, max {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(lat[lat.len() - 1]),
    );
}
