//! The per-day aggregates against the row scan they replace: random ledgers (seeded) with
//! corrections, voids, manual releases, backfills, weighings with cargo, warning days and
//! passes on the GMT+8 day boundaries; the report from the aggregates must equal the report
//! from the `pass_index` / `weighing_index` rows, and a rebuild must give the same aggregate
//! rows as the triggers.

use super::{build_report_from, Source};
use crate::ledger::{
    BarrierMode, Correction, Decision, Direction, EventBody, Ledger, MeasureChange, PassAttempt,
    Receipt, Weighing,
};
use crate::report::params::{period, Period};
use crate::report::rng::SplitMix64;
use crate::vehicle::{EmissionStage, Fuel, PlateColor};
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use ecogate_drivers::Mass;
use serde_json::json;

/// Plates, with the awkward ones: none, blank, an ideographic space, two colours of one plate.
const PLATES: [&str; 12] = [
    "豫A00001",
    "豫A00002",
    "豫A00003",
    "豫A00004",
    "豫A00005",
    "豫A00006",
    "豫AD0007",
    "豫B00008",
    "",
    " ",
    "\u{3000}",
    "豫A00001 ",
];
const COLORS: [PlateColor; 3] = [
    PlateColor::Yellow,
    PlateColor::Blue,
    PlateColor::YellowGreen,
];
const CARGO: [Option<&str>; 5] = [Some("煤"), Some(" 煤 "), Some("矿石"), Some(""), None];
const STAGES: [Option<EmissionStage>; 7] = [
    None,
    Some(EmissionStage::China(3)),
    Some(EmissionStage::China(4)),
    Some(EmissionStage::China(5)),
    Some(EmissionStage::China(6)),
    Some(EmissionStage::Electric),
    Some(EmissionStage::Unknown),
];
const FUELS: [Option<Fuel>; 4] = [
    None,
    Some(Fuel::Diesel),
    Some(Fuel::Electric),
    Some(Fuel::NaturalGas),
];

/// 2026-11-01 00:00 GMT+8.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 31, 16, 0, 0)
        .single()
        .unwrap()
}

fn pick<T: Copy>(rng: &mut SplitMix64, xs: &[T]) -> T {
    xs[rng.below(xs.len() as u64) as usize]
}

/// A time from the day before 11-01 to the day after 11-05 (local), often right on a day
/// boundary, often on a coarse grid so that entries of a vehicle tie.
fn time(rng: &mut SplitMix64) -> DateTime<Utc> {
    let day = rng.below(7) as i64 - 1;
    let start = t0() + Duration::days(day);
    match rng.below(6) {
        0 => start,
        1 => start - Duration::microseconds(1),
        2 => start + Duration::hours(rng.below(24) as i64),
        _ => start + Duration::seconds(rng.below(86_400) as i64),
    }
}

fn pass(rng: &mut SplitMix64) -> PassAttempt {
    let gate = pick(rng, &[Some("1"), Some("2"), Some("3"), None]);
    let direction = pick(rng, &[Direction::In, Direction::Out]);
    let allow = rng.below(5) != 0;
    let v = json!({
        "lane": format!("{}-{}", gate.unwrap_or("x"), direction.name()),
        "gate": gate,
        "direction": direction,
        "plate": pick(rng, &PLATES),
        "color": pick(rng, &COLORS),
        "decision": if allow { Decision::Allow } else { Decision::Deny },
        "reason": "r",
        "barrier": pick(rng, &[BarrierMode::Auto, BarrierMode::Auto, BarrierMode::Manual, BarrierMode::Remote]),
        // An allowed attempt whose barrier did not open is not a pass either.
        "opened": allow && rng.below(8) != 0,
        "stage": pick(rng, &STAGES),
        "fuel": pick(rng, &FUELS),
    });
    // From JSON, so fields added later with defaults need no change here.
    serde_json::from_value(v).unwrap()
}

fn release(rng: &mut SplitMix64) -> EventBody {
    let plate = pick(rng, &[Some("豫A00001"), Some("豫A00009"), Some(""), None]);
    let v = json!({
        "lane": "1-in",
        "gate": pick(rng, &[Some("1"), None]),
        "direction": pick(rng, &[Direction::In, Direction::Out]),
        "plate": plate,
        "color": plate.map(|_| pick(rng, &COLORS)),
        "mode": pick(rng, &[BarrierMode::Manual, BarrierMode::Remote]),
        "operator": pick(rng, &["张三", "李四"]),
        "role": "guard",
        "reason": pick(rng, &["道闸故障", "应急"]),
    });
    EventBody::ManualRelease(serde_json::from_value(v).unwrap())
}

fn backfill(rng: &mut SplitMix64) -> EventBody {
    let v = json!({
        "operator": "王五",
        "reason": "断网补录",
        "source": "backfill.csv",
        "line": rng.below(100),
        "pass": pass(rng),
        "cargo": pick(rng, &CARGO),
        "net": (rng.below(2) == 0).then(|| Mass::from_kg(1_000 + rng.below(30_000) as i64)),
    });
    EventBody::Backfill(serde_json::from_value(v).unwrap())
}

fn weighing(rng: &mut SplitMix64, passes: &[Receipt]) -> EventBody {
    let pass_ref = if !passes.is_empty() && rng.below(2) == 0 {
        Some(passes[rng.below(passes.len() as u64) as usize].id.clone())
    } else {
        None
    };
    EventBody::Weighing(Weighing {
        lane: "1-in".into(),
        scale: "s1".into(),
        plate: pick(rng, &PLATES).into(),
        color: pick(rng, &COLORS),
        gross: None,
        tare: None,
        net: (rng.below(6) != 0).then(|| Mass::from_kg(1_000 + rng.below(40_000) as i64)),
        cargo: pick(rng, &CARGO).map(Into::into),
        direction: Some(Direction::In),
        pass_ref,
    })
}

fn correction(rng: &mut SplitMix64, target: &Receipt) -> EventBody {
    let some = |rng: &mut SplitMix64| rng.below(3) == 0;
    EventBody::Correction(Correction {
        refs: target.id.clone(),
        operator: "赵六".into(),
        reason: "识别错误".into(),
        void: rng.below(4) == 0,
        plate: some(rng).then(|| pick(rng, &PLATES).to_string()),
        color: some(rng).then(|| pick(rng, &COLORS)),
        direction: some(rng).then(|| pick(rng, &[Direction::In, Direction::Out])),
        cargo: some(rng).then(|| pick(rng, &CARGO).unwrap_or("焦炭").to_string()),
        net: some(rng).then(|| Mass::from_kg(rng.below(50_000) as i64)),
    })
}

fn warning(rng: &mut SplitMix64) -> EventBody {
    let starts = time(rng);
    EventBody::MeasureChange(MeasureChange {
        measure: pick(rng, &["heavy", "dust"]).into(),
        active: rng.below(3) != 0,
        level: Some(pick(rng, &["yellow", "orange", "red", "blue"]).into()),
        starts_at: Some(starts),
        ends_at: (rng.below(2) == 0).then(|| starts + Duration::hours(rng.below(72) as i64)),
        source: "platform".into(),
        detail: serde_json::Value::Null,
    })
}

/// A ledger of `n` random events; corrections come in the same transactions as what they
/// correct and later ones, so the update triggers run on rows already aggregated.
fn random_ledger(dir: &std::path::Path, seed: u64, n: usize) -> Ledger {
    let ledger = Ledger::open(dir).unwrap();
    let mut rng = SplitMix64::new(seed);
    let mut passes: Vec<Receipt> = Vec::new();
    let mut weighings: Vec<Receipt> = Vec::new();
    let mut done = 0;
    while done < n {
        let k = (n - done).min(40);
        let (mut r2, mut p2, mut w2) = (SplitMix64::new(rng.next_u64()), passes, weighings);
        let out = ledger
            .transaction_blocking(move |txn| {
                for _ in 0..k {
                    let at = time(&mut r2);
                    let roll = r2.below(100);
                    let body = match roll {
                        0..=49 => EventBody::PassAttempt(pass(&mut r2)),
                        50..=57 => release(&mut r2),
                        58..=65 => backfill(&mut r2),
                        66..=81 => weighing(&mut r2, &p2),
                        82..=96 => {
                            let pool_pass = r2.below(4) != 0 || w2.is_empty();
                            let pool = if pool_pass { &p2 } else { &w2 };
                            if pool.is_empty() {
                                continue;
                            }
                            let target = pool[r2.below(pool.len() as u64) as usize].clone();
                            correction(&mut r2, &target)
                        }
                        _ => warning(&mut r2),
                    };
                    let r = txn.append(&body, &[], at)?;
                    match &body {
                        EventBody::PassAttempt(_)
                        | EventBody::ManualRelease(_)
                        | EventBody::Backfill(_) => p2.push(r),
                        EventBody::Weighing(_) => w2.push(r),
                        _ => {}
                    }
                }
                Ok((p2, w2))
            })
            .unwrap();
        (passes, weighings) = out;
        done += k;
    }
    ledger
}

fn periods() -> Vec<Period> {
    let mut out = vec![
        period(None, None, None, Some("2026-11")).unwrap(),
        period(Some("2026-11-02"), Some("2026-11-04"), None, None).unwrap(),
        period(Some("2026-10-31"), Some("2026-11-06"), None, None).unwrap(),
    ];
    for d in 1..=5 {
        out.push(period(None, None, Some(&format!("2026-11-0{d}")), None).unwrap());
    }
    out
}

fn days(p: Period) -> Vec<NaiveDate> {
    p.days()
}

/// Every aggregate row, in key order.
fn dump(conn: &rusqlite::Connection) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "pass_day_counts",
        "pass_day_vehicles",
        "weighing_day_totals",
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4"))
            .unwrap();
        let n = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            let cols: Vec<String> = (0..n)
                .map(|i| match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) => {
                        format!("{:?}", String::from_utf8_lossy(t))
                    }
                    v => format!("{v:?}"),
                })
                .collect();
            out.push(format!("{table}: {}", cols.join(" | ")));
        }
    }
    out
}

/// Equal dumps, else the rows only one side has.
fn assert_same(got: &[String], want: &[String], what: &str) {
    let only = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    assert!(
        got == want,
        "{what}: only after: {:#?}\nonly before: {:#?}",
        only(got, want),
        only(want, got)
    );
}

#[test]
fn aggregate_report_equals_the_row_scan_on_random_ledgers() {
    let mut checked = 0u64;
    for seed in 1..=10u64 {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = random_ledger(tmp.path(), seed, 400);
        let reader = ledger.reader().unwrap();
        for p in periods() {
            let d = days(p);
            let agg = build_report_from(&reader, p, &d, Source::Aggregates).unwrap();
            let mut rows = build_report_from(&reader, p, &d, Source::Rows).unwrap();
            rows.generated_at = agg.generated_at;
            assert_eq!(agg, rows, "seed {seed}, {} .. {}", p.from, p.to);
            checked += agg.passes.total + agg.passes.denied_attempts;
        }
        // The figures are not trivially empty.
        let month = build_report_from(
            &reader,
            periods()[0],
            &days(periods()[0]),
            Source::Aggregates,
        )
        .unwrap();
        assert!(month.passes.total > 50, "seed {seed}: {:?}", month.passes);
        assert!(month.passes.denied_attempts > 0);
        assert!(month.clean_transport.total.truck_trips > 10);
        assert!(month.daily.warning.days + month.daily.normal.days == 30);
        assert!(month.manual_releases.total > 0);
    }
    assert!(checked > 1_000);
}

#[test]
fn a_correction_moves_the_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(tmp.path()).unwrap();
    let at = t0() + Duration::hours(9);
    let mut body = json!({
        "lane": "1-in", "gate": "1", "direction": Direction::In, "plate": "豫A00001",
        "color": PlateColor::Yellow, "decision": Decision::Allow, "reason": "r",
        "barrier": BarrierMode::Auto, "opened": true, "stage": EmissionStage::China(6),
        "fuel": Fuel::Diesel,
    });
    let a: PassAttempt = serde_json::from_value(body.clone()).unwrap();
    body["plate"] = json!("豫A00002");
    body["stage"] = json!(EmissionStage::China(4));
    let b: PassAttempt = serde_json::from_value(body).unwrap();
    let ra = ledger
        .append_blocking(EventBody::PassAttempt(a), vec![], at)
        .unwrap();
    ledger
        .append_blocking(EventBody::PassAttempt(b), vec![], at + Duration::hours(1))
        .unwrap();
    let reader = ledger.reader().unwrap();
    let p = period(None, None, Some("2026-11-01"), None).unwrap();
    let report = |reader: &crate::ledger::LedgerReader| {
        build_report_from(reader, p, &days(p), Source::Aggregates).unwrap()
    };
    let before = report(&reader);
    assert_eq!(before.daily.days[0].vehicles, 2);
    assert_eq!(before.transport_grade.compliant_vehicles, 1);
    // A was misread: it is B's plate. One vehicle now, whose last entry is B's (国四).
    let fix = EventBody::Correction(Correction {
        refs: ra.id.clone(),
        operator: "o".into(),
        reason: "r".into(),
        void: false,
        plate: Some("豫A00002".into()),
        color: None,
        direction: None,
        cargo: None,
        net: None,
    });
    ledger
        .append_blocking(fix, vec![], at + Duration::hours(2))
        .unwrap();
    let after = report(&reader);
    assert_eq!(after.daily.days[0].vehicles, 1);
    assert_eq!(after.transport_grade.vehicles, 1);
    assert_eq!(after.transport_grade.compliant_vehicles, 0);
    assert_eq!(after.passes.entries, 2);
    // Voiding it takes the entry out of every count.
    let void = EventBody::Correction(Correction {
        refs: ra.id,
        operator: "o".into(),
        reason: "r".into(),
        void: true,
        plate: None,
        color: None,
        direction: None,
        cargo: None,
        net: None,
    });
    ledger
        .append_blocking(void, vec![], at + Duration::hours(3))
        .unwrap();
    let voided = report(&reader);
    assert_eq!(voided.passes.entries, 1);
    assert_eq!(voided.passes.by_gate[0].entries, 1);
    assert_eq!(voided.transport_grade.compliant_trips, 0);
    let mut rows = build_report_from(&reader, p, &days(p), Source::Rows).unwrap();
    rows.generated_at = voided.generated_at;
    assert_eq!(voided, rows);
}

/// The aggregates `fill` computes with `GROUP BY` from the index tables as they are now.
fn refill(conn: &rusqlite::Connection) -> Vec<String> {
    conn.execute_batch(
        "DELETE FROM pass_day_counts; DELETE FROM pass_day_vehicles;
         DELETE FROM weighing_day_totals;",
    )
    .unwrap();
    crate::report::aggregates::fill(conn).unwrap();
    dump(conn)
}

fn pass_rows(dump: &[String]) -> Vec<String> {
    dump.iter()
        .filter(|r| r.starts_with("pass_"))
        .cloned()
        .collect()
}

#[test]
fn rebuild_gives_the_aggregates_the_triggers_kept() {
    for seed in [7u64, 8, 9] {
        let tmp = tempfile::tempdir().unwrap();
        let ledger = random_ledger(tmp.path(), seed, 300);
        let path = tmp.path().join(crate::ledger::DB_FILE);
        let conn = rusqlite::Connection::open(&path).unwrap();
        let kept = dump(&conn);
        assert!(kept.len() > 50, "{}", kept.len());
        assert!(kept.iter().any(|r| r.starts_with("weighing_day_totals")));
        // GROUP BY over the same index rows gives what the triggers kept, row for row.
        assert_same(&refill(&conn), &kept, &format!("seed {seed}: fill"));
        // A full rebuild from the events: the pass aggregates are the same. (A weighing's
        // stage can differ: at insertion it takes the latest pass of its plate known then,
        // in a rebuild the latest of all, backfills included — that is `weighing_index`'s
        // rule, and the aggregate follows whatever `weighing_index` holds.)
        crate::report::index::rebuild(&conn).unwrap();
        let rebuilt = dump(&conn);
        assert_same(
            &pass_rows(&rebuilt),
            &pass_rows(&kept),
            &format!("seed {seed}: rebuild"),
        );
        assert_same(
            &refill(&conn),
            &rebuilt,
            &format!("seed {seed}: rebuild fill"),
        );
        // An index version change at open rebuilds too, with the same result.
        conn.execute(
            "UPDATE meta SET value = 'old' WHERE key = 'pass_index_version'",
            [],
        )
        .unwrap();
        assert!(crate::report::index::ensure(&conn).unwrap());
        assert_same(
            &dump(&conn),
            &rebuilt,
            &format!("seed {seed}: version change"),
        );
        // And the triggers are back after the rebuild: new events land in the aggregates.
        drop(conn);
        let mut rng = SplitMix64::new(seed);
        for _ in 0..20 {
            let body = EventBody::PassAttempt(pass(&mut rng));
            ledger
                .append_blocking(body, vec![], time(&mut rng))
                .unwrap();
        }
        let conn = rusqlite::Connection::open(&path).unwrap();
        let now = dump(&conn);
        assert_ne!(pass_rows(&now), pass_rows(&rebuilt));
        assert_same(
            &refill(&conn),
            &now,
            &format!("seed {seed}: after new events"),
        );
    }
}
