//! Reports, search and inspection over a small fixture ledger whose figures are worked out by
//! hand below. The same figures are checked in `build_report`, its CSV and its XLSX (read
//! back from the workbook's XML).
//!
//! Fixture (days in GMT+8; gate "1" and "2"):
//!
//! | day | event | plate | stage/fuel | gate | note |
//! |---|---|---|---|---|---|
//! | 11-01 08:00 | in  | 豫A00001 yellow | 6 B | 1 | A1 |
//! | 11-01 08:30 | in  | 豫AD00002 yellow_green | D C | 1 | A2 |
//! | 11-01 09:00 | in  | 豫A00003 yellow | 5 B | 2 | A3 |
//! | 11-01 09:00 | weighing A1 煤 30,000 kg (pass_ref = A1's entry) | | | | |
//! | 11-01 09:10 | weighing A2 煤 25,000 kg (no ref: latest pass of the plate) | | | | |
//! | 11-01 09:20 | weighing A3 矿石 20,000 kg | | | | |
//! | 11-01 10:00 | out | A1 | 6 B | 1 | |
//! | 11-01 11:00 | out | A2 | D C | 2 | |
//! | 11-01 12:00 | out | A3 | 5 B | 2 | |
//! | 11-01 13:00 | DENIED in | 豫A00004 | 4 B | 1 | later corrected to 豫A00044 |
//! | 11-02 (orange warning all day) 08:00 | in | 豫A00004 | 4 B | 1 | A4 |
//! | 11-02 08:30 | weighing A4 矿石 10,000 kg | | | | |
//! | 11-02 09:00 | out | A4 | 4 B | 1 | |
//! | 11-02 10:00 | in | A1 | 6 B | 1 | |
//! | 11-02 10:30 | weighing A1 煤 12,000 kg (ref) | | | | |
//! | 11-02 11:00 | out | A1 | 6 B | 1 | |
//! | 11-02 15:00 | manual release, no plate, 李四 道闸故障 | | | 1 | not a pass |
//! | 11-03 08:00 | manual release in | A3 | (none) | 1 | 张三 应急抢修, a pass |
//! | 11-03 08:30 | weighing A3 矿石 15,000 kg (→ the release: stage none = "other") | | | | |
//! | 11-03 09:00 | out | A3 | 5 B | 2 | |
//! | 11-03 10:00 | in | 豫B99999 blue | X (no fuel) | 2 | unregistered |
//! | 11-03 10:30 | out | 豫B99999 | X | 2 | |
//! | 11-03 11:00 | weighing A1 煤 99,000 kg, then voided by a correction | | | | |
//! | tonnage | 11-02 rail 煤 100 t; 11-03 belt 矿石 5 t; 11-05 rail 煤 999 t (outside) | | | | |
//!
//! Passes: 14 (7 in, 7 out); the denied attempt and the plate-less release are not passes.
//!
//! Clean transport (新能源 = D or electric fuel; 国六 separate; 其他 = the rest):
//! * 煤: trucks A1 30 t (国六), A2 25 t (新能源), A1 12 t (国六) → 3 trips, 67 t; rail 100 t.
//!   clean = 100 + 25 = 125 t; total = 67 + 100 = 167 t; ratio = 125/167 = 0.748503;
//!   with 国六 = (125 + 42)/167 = 1; by trips = 1/3.
//! * 矿石: trucks A3 20 t, A4 10 t, A3 15 t, all 其他 → 3 trips, 45 t; belt 5 t.
//!   clean = 5 t; total = 50 t; ratio = 0.1; by trips = 0/3.
//! * all: trucks 6 trips 112 t; clean = 105 + 25 = 130 t; total = 217 t; ratio = 130/217 =
//!   0.599078; with 国六 = 172/217 = 0.792627; by trips = 1/6.
//!
//! Stage mix of entries (trips): 6 ×2 (A1 twice), D ×1, 5 ×1 (A3 day 1), 4 ×1, none ×1 (the
//! release), X ×1 → 7. Vehicles (stage of their last entry): A1 6, A2 D, A3 none (its last
//! entry is the release), A4 4, B9 X → 5. 国五+ or new energy: trips 4/7 = 0.571429 (grade C),
//! vehicles 2/5 = 0.4 (no grade).
//!
//! Fleet: in-plant 3 vehicles (6 B, D C, 4 B) → 2/3, fails A/B; non-road 2 machines (3, 4) →
//! 2/2, meets A/B.
//!
//! Daily: 11-01 3 in, 3 out, 3 vehicles; 11-02 (orange) 2/2/2; 11-03 2/2/2. Normal days
//! average 2.5 entries and 2.5 vehicles; warning days 2 and 2.

use chrono::{DateTime, TimeZone, Utc};
use ecogate::ledger::registry::upsert_at;
use ecogate::ledger::{
    BarrierMode, Correction, Decision, Direction, EventBody, Ledger, LedgerReader, ManualRelease,
    MeasureChange, PassAttempt, Receipt, Weighing,
};
use ecogate::report::inspection::RecheckReason;
use ecogate::report::{
    build_inspection, build_report, inspection_xlsx, record_tonnage_blocking, report_csv,
    report_xlsx, search_passes, InspectionParams, PassQuery, ReportParams, TonnageInput,
};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind};
use ecogate_drivers::Mass;
use std::collections::HashMap;
use std::io::Read;

const A1: &str = "豫A00001";
const A2: &str = "豫AD00002";
const A3: &str = "豫A00003";
const A4: &str = "豫A00004";
const B9: &str = "豫B99999";

/// `2026-11-DD HH:MM` GMT+8.
fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
    chrono::FixedOffset::east_opt(8 * 3600)
        .unwrap()
        .with_ymd_and_hms(2026, 11, day, h, m, 0)
        .unwrap()
        .with_timezone(&Utc)
}

#[allow(clippy::too_many_arguments)]
fn attempt(
    plate: &str,
    color: PlateColor,
    dir: Direction,
    gate: &str,
    stage: Option<EmissionStage>,
    fuel: Option<Fuel>,
    allow: bool,
) -> EventBody {
    EventBody::PassAttempt(PassAttempt {
        lane: format!("{gate}-{}", dir.name()),
        gate: Some(gate.into()),
        direction: dir,
        plate: plate.into(),
        color,
        decision: if allow {
            Decision::Allow
        } else {
            Decision::Deny
        },
        reason: if allow {
            "registered_stage_ok"
        } else {
            "stage_below_min"
        }
        .into(),
        reason_text: if allow {
            "欢迎光临"
        } else {
            "禁止通行"
        }
        .into(),
        barrier: BarrierMode::Auto,
        opened: allow,
        stage,
        fuel,
        registry: Some(RegistryKind::Transport),
        photo_kinds: vec!["plate".into()],
        read_id: None,
        check: None,
    })
}

fn weighing(
    plate: &str,
    color: PlateColor,
    cargo: &str,
    kg: i64,
    pass_ref: Option<&Receipt>,
) -> EventBody {
    EventBody::Weighing(Weighing {
        lane: "1-in".into(),
        scale: "scale1".into(),
        plate: plate.into(),
        color,
        gross: None,
        tare: None,
        net: Some(Mass::from_kg(kg)),
        cargo: Some(cargo.into()),
        direction: Some(Direction::In),
        pass_ref: pass_ref.map(|r| r.id.clone()),
    })
}

fn release(plate: Option<&str>, operator: &str, reason: &str) -> EventBody {
    EventBody::ManualRelease(ManualRelease {
        lane: "1-in".into(),
        gate: Some("1".into()),
        direction: Direction::In,
        plate: plate.map(Into::into),
        color: plate.map(|_| PlateColor::Yellow),
        mode: BarrierMode::Manual,
        operator: operator.into(),
        role: "guard".into(),
        reason: reason.into(),
        approval: Some("王五".into()),
        request: None,
        photo_kinds: vec!["scene".into()],
    })
}

/// A valid 2×2 PNG (stored deflate block), different per `seed`, so photos are real images.
fn png(seed: u8) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for b in data {
            c ^= u32::from(*b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut raw = Vec::new();
    for _ in 0..2 {
        raw.push(0u8);
        raw.extend([seed, 0x40, 0x80, seed, 0x40, 0x80]);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for x in &raw {
        a = (a + u32::from(*x)) % 65521;
        b = (b + a) % 65521;
    }
    let mut z = vec![0x78, 0x01, 0x01];
    z.extend((raw.len() as u16).to_le_bytes());
    z.extend((!(raw.len() as u16)).to_le_bytes());
    z.extend(&raw);
    z.extend(((b << 16) | a).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend(2u32.to_be_bytes());
    ihdr.extend(2u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    ledger: Ledger,
}

/// Registered before the period (2026-10-01), then changed after it (2026-11-10): the report of
/// 11-01…11-03 must judge the fleet as it stood then.
fn registries(ledger: &Ledger) {
    let before = at(1, 0, 0) - chrono::Duration::days(31);
    let upsert = |l: &Ledger, k: RegistryKind, rec: &[(&str, &str)], src: &str| {
        upsert_at(l, k, rec, src, before)
    };
    let transport = [
        (A1, "yellow", "6", "B", "随车清单"),
        (A2, "yellow_green", "D", "C", "随车清单"),
        (A3, "yellow", "5", "B", ""),
        (A4, "yellow", "4", "B", "人工录入"),
    ];
    for (i, (plate, color, stage, fuel, basis)) in transport.iter().enumerate() {
        let vin = format!("LZZ1234567890000{i}");
        let mut rec = vec![
            ("plate", *plate),
            ("color", *color),
            ("vin", vin.as_str()),
            ("engine_no", "E1"),
            ("vehicle_type", "H11"),
            ("fuel", *fuel),
            ("stage", *stage),
            ("registered_on", "2022-01-01"),
            ("fleet", "车队"),
        ];
        if !basis.is_empty() {
            rec.push(("stage_basis", *basis));
        }
        upsert(ledger, RegistryKind::Transport, &rec, "test").unwrap();
    }
    for (i, (stage, fuel)) in [("6", "B"), ("D", "C"), ("4", "B")].iter().enumerate() {
        let code = format!("CN-{i}");
        let vin = format!("LZZ1234567891000{i}");
        upsert(
            ledger,
            RegistryKind::InPlant,
            &[
                ("code", code.as_str()),
                ("vin", vin.as_str()),
                ("fuel", fuel),
                ("stage", stage),
            ],
            "test",
        )
        .unwrap();
    }
    for (i, stage) in ["3", "4"].iter().enumerate() {
        let code = format!("NR-{i}");
        upsert(
            ledger,
            RegistryKind::NonRoad,
            &[
                ("reg_code", code.as_str()),
                ("model", "PC200"),
                ("fuel", "B"),
                ("stage", stage),
            ],
            "test",
        )
        .unwrap();
    }
    // After the period: CN-2 is replaced by a 国六 engine, and a 国二 loader arrives. Neither
    // changes the period's shares.
    let after = at(10, 9, 0);
    upsert_at(
        ledger,
        RegistryKind::InPlant,
        &[
            ("code", "CN-2"),
            ("vin", "LZZ12345678910002"),
            ("fuel", "B"),
            ("stage", "6"),
        ],
        "test",
        after,
    )
    .unwrap();
    upsert_at(
        ledger,
        RegistryKind::NonRoad,
        &[
            ("reg_code", "NR-9"),
            ("model", "ZL50"),
            ("fuel", "B"),
            ("stage", "2"),
        ],
        "test",
        after,
    )
    .unwrap();
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let ledger = Ledger::open(&dir).unwrap();
    registries(&ledger);
    let (y, yg) = (PlateColor::Yellow, PlateColor::YellowGreen);
    let (six, five, four) = (
        Some(EmissionStage::China(6)),
        Some(EmissionStage::China(5)),
        Some(EmissionStage::China(4)),
    );
    let (d, b) = (Some(Fuel::Diesel), Some(Fuel::Electric));
    let mut n = 0u8;
    let mut put = |body: EventBody, t: DateTime<Utc>| {
        n += 1;
        let photos = match &body {
            EventBody::PassAttempt(_) | EventBody::ManualRelease(_) => {
                vec![bytes::Bytes::from(png(n))]
            }
            _ => vec![],
        };
        ledger.append_blocking(body, photos, t).unwrap()
    };
    let a1_in = put(
        attempt(A1, y, Direction::In, "1", six, d, true),
        at(1, 8, 0),
    );
    put(
        attempt(
            A2,
            yg,
            Direction::In,
            "1",
            Some(EmissionStage::Electric),
            b,
            true,
        ),
        at(1, 8, 30),
    );
    put(
        attempt(A3, y, Direction::In, "2", five, d, true),
        at(1, 9, 0),
    );
    put(weighing(A1, y, "煤", 30_000, Some(&a1_in)), at(1, 9, 0));
    put(weighing(A2, yg, "煤", 25_000, None), at(1, 9, 10));
    put(weighing(A3, y, "矿石", 20_000, None), at(1, 9, 20));
    put(
        attempt(A1, y, Direction::Out, "1", six, d, true),
        at(1, 10, 0),
    );
    put(
        attempt(
            A2,
            yg,
            Direction::Out,
            "2",
            Some(EmissionStage::Electric),
            b,
            true,
        ),
        at(1, 11, 0),
    );
    put(
        attempt(A3, y, Direction::Out, "2", five, d, true),
        at(1, 12, 0),
    );
    let denied = put(
        attempt(A4, y, Direction::In, "1", four, d, false),
        at(1, 13, 0),
    );
    put(
        EventBody::MeasureChange(MeasureChange {
            measure: "heavy-pollution".into(),
            active: true,
            level: Some("orange".into()),
            starts_at: Some(at(2, 0, 0)),
            ends_at: Some(at(3, 0, 0)),
            source: "platform".into(),
            detail: serde_json::Value::Null,
        }),
        at(1, 20, 0),
    );
    put(
        attempt(A4, y, Direction::In, "1", four, d, true),
        at(2, 8, 0),
    );
    put(weighing(A4, y, "矿石", 10_000, None), at(2, 8, 30));
    put(
        attempt(A4, y, Direction::Out, "1", four, d, true),
        at(2, 9, 0),
    );
    let a1_in2 = put(
        attempt(A1, y, Direction::In, "1", six, d, true),
        at(2, 10, 0),
    );
    put(weighing(A1, y, "煤", 12_000, Some(&a1_in2)), at(2, 10, 30));
    put(
        attempt(A1, y, Direction::Out, "1", six, d, true),
        at(2, 11, 0),
    );
    put(release(None, "李四", "道闸故障"), at(2, 15, 0));
    put(release(Some(A3), "张三", "应急抢修"), at(3, 8, 0));
    put(weighing(A3, y, "矿石", 15_000, None), at(3, 8, 30));
    put(
        attempt(A3, y, Direction::Out, "2", five, d, true),
        at(3, 9, 0),
    );
    put(
        attempt(
            B9,
            PlateColor::Blue,
            Direction::In,
            "2",
            Some(EmissionStage::Unknown),
            None,
            true,
        ),
        at(3, 10, 0),
    );
    put(
        attempt(
            B9,
            PlateColor::Blue,
            Direction::Out,
            "2",
            Some(EmissionStage::Unknown),
            None,
            true,
        ),
        at(3, 10, 30),
    );
    let wrong = put(weighing(A1, y, "煤", 99_000, None), at(3, 11, 0));
    for (refs, void, plate) in [(&wrong, true, None), (&denied, false, Some("豫A00044"))] {
        put(
            EventBody::Correction(Correction {
                refs: refs.id.clone(),
                operator: "admin".into(),
                reason: "test".into(),
                void,
                plate: plate.map(Into::into),
                color: None,
                direction: None,
                cargo: None,
                net: None,
            }),
            at(3, 12, 0),
        );
    }
    for (date, mode, cargo, tonnes) in [
        ("2026-11-02", "rail", "煤", "100"),
        ("2026-11-03", "belt", "矿石", "5"),
        ("2026-11-05", "rail", "煤", "999"),
    ] {
        let input = TonnageInput {
            date: date.into(),
            mode: mode.into(),
            cargo: cargo.into(),
            tonnes: serde_json::Value::String(tonnes.into()),
            note: String::new(),
        };
        record_tonnage_blocking(&ledger, &input, "env").unwrap();
    }
    Fixture {
        _tmp: tmp,
        dir,
        ledger,
    }
}

fn params() -> ReportParams {
    ReportParams {
        from: Some("2026-11-01".into()),
        to: Some("2026-11-03".into()),
        ..Default::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[test]
fn report_figures_match_the_hand_computation() {
    let f = fixture();
    let reader = f.ledger.reader().unwrap();
    let r = build_report(&reader, &params()).unwrap();
    assert_eq!(r.days, 3);
    assert_eq!(
        (r.passes.total, r.passes.entries, r.passes.exits),
        (14, 7, 7)
    );
    assert_eq!(r.passes.denied_attempts, 1);
    assert_eq!(r.passes.manual_or_remote, 1);
    let gates: Vec<(String, u64, u64)> = r
        .passes
        .by_gate
        .iter()
        .map(|g| (g.gate.clone(), g.entries, g.exits))
        .collect();
    assert_eq!(gates, vec![("1".into(), 5, 3), ("2".into(), 2, 4)]);
    // Hours (GMT+8): entries at 8 (A1, A4, release), 8:30 (A2), 9 (A3), 10 (A1, B9).
    assert_eq!(r.passes.by_hour[8].entries, 4);
    assert_eq!(r.passes.by_hour[9].entries, 1);
    assert_eq!(r.passes.by_hour[10].entries, 2);
    assert_eq!(r.passes.by_hour.iter().map(|h| h.exits).sum::<u64>(), 7);

    let mix: HashMap<&str, (u64, u64)> = r
        .stage_mix
        .iter()
        .map(|m| (m.code.as_str(), (m.trips, m.vehicles)))
        .collect();
    assert_eq!(mix["6"], (2, 1));
    assert_eq!(mix["D"], (1, 1));
    assert_eq!(mix["5"], (1, 0));
    assert_eq!(mix["4"], (1, 1));
    assert_eq!(mix[""], (1, 1));
    assert_eq!(mix["X"], (1, 1));
    assert_eq!(mix.len(), 6);
    let fuel: HashMap<&str, (u64, u64)> = r
        .fuel_mix
        .iter()
        .map(|m| (m.code.as_str(), (m.trips, m.vehicles)))
        .collect();
    assert_eq!(fuel["B"], (4, 2));
    assert_eq!(fuel["C"], (1, 1));
    assert_eq!(fuel[""], (2, 2));

    let g = &r.transport_grade;
    assert_eq!(
        (g.trips, g.compliant_trips, g.vehicles, g.compliant_vehicles),
        (7, 4, 5, 2)
    );
    assert!(close(g.trip_share.unwrap(), 4.0 / 7.0));
    assert_eq!((g.grade_by_trips, g.grade_by_vehicles), ("C", "-"));

    let c = &r.clean_transport;
    let coal = c.by_cargo.iter().find(|x| x.cargo == "煤").unwrap();
    assert_eq!(
        (
            coal.truck_trips,
            coal.new_energy_trips,
            coal.guo6_trips,
            coal.other_trips
        ),
        (3, 1, 2, 0)
    );
    assert!(
        close(coal.truck_t, 67.0) && close(coal.rail_t, 100.0) && close(coal.new_energy_t, 25.0)
    );
    assert!(close(coal.guo6_t, 42.0));
    assert!(close(coal.clean_t, 125.0) && close(coal.total_t, 167.0));
    assert!(close(coal.ratio_tonnage.unwrap(), 125.0 / 167.0));
    assert!(close(coal.ratio_tonnage_incl_guo6.unwrap(), 1.0));
    assert!(close(coal.ratio_trips.unwrap(), 1.0 / 3.0));
    let ore = c.by_cargo.iter().find(|x| x.cargo == "矿石").unwrap();
    assert_eq!((ore.truck_trips, ore.other_trips), (3, 3));
    assert!(close(ore.truck_t, 45.0) && close(ore.belt_t, 5.0) && close(ore.total_t, 50.0));
    assert!(close(ore.ratio_tonnage.unwrap(), 0.1));
    assert!(close(ore.ratio_trips.unwrap(), 0.0));
    assert_eq!(c.by_cargo.len(), 2);
    let t = &c.total;
    assert_eq!(
        (
            t.truck_trips,
            t.new_energy_trips,
            t.guo6_trips,
            t.other_trips
        ),
        (6, 1, 2, 3)
    );
    assert!(close(t.truck_t, 112.0) && close(t.clean_t, 130.0) && close(t.total_t, 217.0));
    assert!(close(t.ratio_tonnage.unwrap(), 130.0 / 217.0));
    assert!(close(t.ratio_tonnage_incl_guo6.unwrap(), 172.0 / 217.0));
    assert!(close(t.ratio_trips.unwrap(), 1.0 / 6.0));
    // The inputs are listed: the two entries of the period, not the one on 11-05.
    assert_eq!(c.other_modes.len(), 2);
    assert!(c.formula.contains("铁路") && c.formula.contains("÷"));

    let inplant = &r.fleet_shares[0];
    assert_eq!(
        (inplant.registry, inplant.total, inplant.compliant),
        ("in_plant", 3, 2)
    );
    assert!(!inplant.meets_a && !inplant.meets_b);
    assert_eq!(inplant.non_compliant, vec!["CN-2".to_string()]);
    let nonroad = &r.fleet_shares[1];
    assert_eq!(
        (nonroad.registry, nonroad.total, nonroad.compliant),
        ("non_road", 2, 2)
    );
    assert!(nonroad.meets_a && nonroad.meets_b);
    assert_eq!(inplant.as_of, at(4, 0, 0), "as of the end of the period");

    let days: Vec<(String, Option<String>, u64, u64, u64)> = r
        .daily
        .days
        .iter()
        .map(|d| {
            (
                d.day.to_string(),
                d.warning.clone(),
                d.entries,
                d.exits,
                d.vehicles,
            )
        })
        .collect();
    assert_eq!(
        days,
        vec![
            ("2026-11-01".into(), None, 3, 3, 3),
            ("2026-11-02".into(), Some("orange".into()), 2, 2, 2),
            ("2026-11-03".into(), None, 2, 2, 2),
        ]
    );
    assert_eq!(r.daily.normal.days, 2);
    assert!(close(r.daily.normal.avg_entries.unwrap(), 2.5));
    assert!(close(r.daily.normal.avg_vehicles.unwrap(), 2.5));
    assert_eq!(r.daily.warning.days, 1);
    assert!(close(r.daily.warning.avg_vehicles.unwrap(), 2.0));

    let m = &r.manual_releases;
    assert_eq!((m.total, m.without_plate), (2, 1));
    let ops: Vec<(&str, u64)> = m
        .by_operator
        .iter()
        .map(|o| (o.name.as_str(), o.count))
        .collect();
    assert_eq!(ops, vec![("张三", 1), ("李四", 1)]);
    assert!(m
        .by_reason
        .iter()
        .any(|o| o.name == "应急抢修" && o.count == 1));
    assert!(r.uploads.is_empty());
}

/// CSV blocks: `# title`, header, rows.
fn csv_section(csv_text: &str, title: &str) -> Vec<Vec<String>> {
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(csv_text.as_bytes());
    let mut out = Vec::new();
    let mut inside = false;
    for rec in rd.records() {
        let rec: Vec<String> = rec.unwrap().iter().map(str::to_string).collect();
        if rec.len() == 1 && rec[0].starts_with("# ") {
            inside = rec[0] == format!("# {title}");
            continue;
        }
        if inside && !(rec.len() == 1 && rec[0].is_empty()) {
            out.push(rec);
        }
    }
    out
}

#[test]
fn csv_and_xlsx_carry_the_same_figures() {
    let f = fixture();
    let reader = f.ledger.reader().unwrap();
    let r = build_report(&reader, &params()).unwrap();

    let csv_text = report_csv(&r);
    let clean = csv_section(&csv_text, "清洁运输比例");
    assert_eq!(clean[0][0], "货物名称");
    let row = |name: &str| clean.iter().find(|r| r[0] == name).unwrap().clone();
    let coal = row("煤");
    // 货车过磅车次, 新能源车次, 国六车次, 其他车次, 货车运量, 新能源, 国六, 其他, 铁路, 水路, 皮带,
    // 管道, 清洁运量, 总运量, 比例(运量), 含国六, 比例(车次)
    assert_eq!(
        coal[1..],
        [
            "3", "1", "2", "0", "67.000", "25.000", "42.000", "0.000", "100.000", "0.000", "0.000",
            "0.000", "125.000", "167.000", "0.7485", "1.0000", "0.3333"
        ]
    );
    let all = row("合计");
    assert_eq!(
        all[13..],
        ["130.000", "217.000", "0.5991", "0.7926", "0.1667"]
    );
    assert_eq!(row("矿石")[15], "0.1000");
    let fleet = csv_section(&csv_text, "厂内车辆与非道路机械");
    assert_eq!(
        fleet[1][..7],
        [
            "厂内运输车辆",
            "国五及以上或新能源",
            "3",
            "2",
            "0.6667",
            "未达到",
            "未达到"
        ]
    );
    assert_eq!(
        fleet[2][..7],
        [
            "非道路移动机械",
            "国三及以上或新能源",
            "2",
            "2",
            "1.0000",
            "达到",
            "达到"
        ]
    );
    let stages = csv_section(&csv_text, "排放阶段构成");
    let six = stages.iter().find(|r| r[0] == "6").unwrap();
    assert_eq!(six[1..], ["国Ⅵ", "2", "0.2857", "1", "0.2000"]);

    let xlsx = report_xlsx(&r).unwrap();
    let book = Xlsx::open(&xlsx);
    let sheet = book.sheet("清洁运输比例");
    let coal_row = sheet
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("煤"))
        .unwrap();
    let num = |s: &str| s.parse::<f64>().unwrap();
    assert!(close(num(&coal_row[5]), 67.0));
    assert!(close(num(&coal_row[9]), 100.0));
    assert!(close(num(&coal_row[13]), 125.0));
    assert!(close(num(&coal_row[14]), 167.0));
    assert!(close(num(&coal_row[15]), 125.0 / 167.0));
    let total_row = sheet
        .iter()
        .find(|r| r.first().map(String::as_str) == Some("合计"))
        .unwrap();
    assert!(close(num(&total_row[15]), 130.0 / 217.0));
    assert!(close(num(&total_row[17]), 1.0 / 6.0));
    let fleet = book.sheet("厂内车辆与非道路机械");
    assert_eq!(fleet[1][0], "厂内运输车辆");
    assert!(close(num(&fleet[1][4]), 2.0 / 3.0));
    assert_eq!(fleet[1][5], "未达到");
    assert!(close(num(&fleet[2][4]), 1.0));
    assert_eq!(fleet[2][5], "达到");
    // One sheet per section, same titles as the CSV blocks.
    for title in [
        "概况",
        "按门岗",
        "按小时",
        "排放阶段构成",
        "燃料类型构成",
        "日均对比",
        "手工放行",
        "上传完整率",
    ] {
        assert!(book.names.iter().any(|n| n == title), "no sheet {title}");
        assert!(csv_text.contains(&format!("# {title}")));
    }
}

#[test]
fn search_filters_and_pages() {
    let f = fixture();
    let reader = f.ledger.reader().unwrap();
    let q = |pairs: &[(&str, &str)]| -> PassQuery {
        let s: String = pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", v))
            .collect::<Vec<_>>()
            .join("&");
        serde_json::from_value(serde_json::Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect(),
        ))
        .unwrap_or_else(|e| panic!("{s}: {e}"))
    };
    let page = search_passes(&reader, &q(&[("plate", A1)])).unwrap();
    assert_eq!(page.total, 4);
    let times: Vec<DateTime<Utc>> = page.items.iter().map(|p| p.at).collect();
    assert_eq!(
        times,
        vec![at(2, 11, 0), at(2, 10, 0), at(1, 10, 0), at(1, 8, 0)]
    );
    assert_eq!(page.items[3].photos.len(), 1);
    assert_eq!(page.items[3].photos[0].kind, "plate");
    assert!(page.items[3].photos[0].url.starts_with("/api/v1/photos/"));
    assert_eq!(page.items[3].reason_text, "欢迎光临");

    // Prefix: A1 ×4, A3 ×4 (incl. the release), A4 ×2; the denied A4 now reads 豫A00044.
    assert_eq!(
        search_passes(&reader, &q(&[("plate", "豫A0000*")]))
            .unwrap()
            .total,
        10
    );
    assert_eq!(
        search_passes(
            &reader,
            &q(&[("plate", "豫A0000"), ("plate_match", "prefix")])
        )
        .unwrap()
        .total,
        10
    );
    assert_eq!(
        search_passes(
            &reader,
            &q(&[("plate", "9999"), ("plate_match", "contains")])
        )
        .unwrap()
        .total,
        2
    );
    let corrected = search_passes(&reader, &q(&[("plate", "豫A00044")])).unwrap();
    assert_eq!(corrected.total, 1);
    assert!(corrected.items[0].corrected && !corrected.items[0].opened);
    assert_eq!(
        search_passes(&reader, &q(&[("decision", "deny")]))
            .unwrap()
            .total,
        1
    );
    assert_eq!(
        search_passes(&reader, &q(&[("barrier", "manual")]))
            .unwrap()
            .total,
        2
    );
    assert_eq!(
        search_passes(&reader, &q(&[("gate", "2"), ("direction", "out")]))
            .unwrap()
            .total,
        4
    );
    assert_eq!(
        search_passes(&reader, &q(&[("stage", "D")])).unwrap().total,
        2
    );
    assert_eq!(
        search_passes(&reader, &q(&[("stage", "国六")]))
            .unwrap()
            .total,
        4
    );
    assert_eq!(
        search_passes(&reader, &q(&[("color", "yellow_green")]))
            .unwrap()
            .total,
        2
    );
    assert_eq!(
        search_passes(&reader, &q(&[("lane", "2-out")]))
            .unwrap()
            .total,
        4
    );
    assert_eq!(
        search_passes(&reader, &q(&[("from", "2026-11-02"), ("to", "2026-11-02")]))
            .unwrap()
            .total,
        5
    );
    assert_eq!(
        search_passes(
            &reader,
            &q(&[
                ("from", "2026-11-03 09:00:00"),
                ("to", "2026-11-03 10:30:00")
            ])
        )
        .unwrap()
        .total,
        2
    );

    // 14 passes + the denied attempt + the plate-less release = 16 rows: 6 pages of 3.
    let mut seen = Vec::new();
    for p in 1..=6 {
        let page =
            search_passes(&reader, &q(&[("per_page", "3"), ("page", &p.to_string())])).unwrap();
        assert_eq!(page.total, 16);
        assert_eq!(page.items.len(), if p == 6 { 1 } else { 3 });
        seen.extend(page.items.iter().map(|r| (r.at, r.seq)));
    }
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first across pages");
    sorted.dedup();
    assert_eq!(sorted.len(), 16, "no row twice");
    assert!(
        search_passes(&reader, &q(&[("per_page", "3"), ("page", "7")]))
            .unwrap()
            .items
            .is_empty()
    );
}

#[test]
fn bad_query_values_name_the_field() {
    let f = fixture();
    let reader = f.ledger.reader().unwrap();
    for (field, value) in [
        ("per_page", "0"),
        ("per_page", "501"),
        ("page", "x"),
        ("stage", "9"),
        ("color", "purple"),
        ("direction", "sideways"),
        ("decision", "maybe"),
        ("barrier", "magic"),
        ("from", "yesterday"),
        ("to", "2026-02-30"),
        ("plate_match", "fuzzy"),
        ("plate", "豫A*1*"),
    ] {
        let q: PassQuery = serde_json::from_value(serde_json::json!({ field: value })).unwrap();
        let e = search_passes(&reader, &q).unwrap_err();
        assert_eq!(e.field(), Some(field), "{field}={value}: {e}");
        assert!(e.to_string().contains(field));
    }
    let q: PassQuery =
        serde_json::from_value(serde_json::json!({"from": "2026-11-03", "to": "2026-11-01"}))
            .unwrap();
    assert_eq!(search_passes(&reader, &q).unwrap_err().field(), Some("to"));
    for (p, field) in [
        (
            ReportParams {
                from: Some("2026-11-01".into()),
                ..Default::default()
            },
            "to",
        ),
        (
            ReportParams {
                month: Some("2026-13".into()),
                ..Default::default()
            },
            "month",
        ),
        (
            ReportParams {
                day: Some("11/31".into()),
                ..Default::default()
            },
            "day",
        ),
        (
            ReportParams {
                from: Some("2020-01-01".into()),
                to: Some("2026-01-01".into()),
                ..Default::default()
            },
            "to",
        ),
    ] {
        assert_eq!(build_report(&reader, &p).unwrap_err().field(), Some(field));
    }
    let base = InspectionParams {
        from: Some("2026-11-01".into()),
        to: Some("2026-11-03".into()),
        ..Default::default()
    };
    for (p, field) in [
        (
            InspectionParams {
                sample: Some("0".into()),
                ..base.clone()
            },
            "sample",
        ),
        (
            InspectionParams {
                seed: Some("-1".into()),
                ..base.clone()
            },
            "seed",
        ),
        (
            InspectionParams {
                normal_days: Some("2026-11-01,nope".into()),
                ..base.clone()
            },
            "normal_days",
        ),
        (
            InspectionParams {
                window_from: Some("2026-11-02 08:00".into()),
                ..base.clone()
            },
            "window_to",
        ),
        (
            InspectionParams {
                window_from: Some("2026-11-02 08:00".into()),
                window_to: Some("2026-11-04 08:00".into()),
                ..base.clone()
            },
            "window_to",
        ),
    ] {
        assert_eq!(
            build_inspection(&reader, &p).unwrap_err().field(),
            Some(field)
        );
    }
    let bad = TonnageInput {
        date: "2026-11-02".into(),
        mode: "truck".into(),
        cargo: "煤".into(),
        tonnes: serde_json::json!(3),
        note: String::new(),
    };
    assert_eq!(
        record_tonnage_blocking(&f.ledger, &bad, "env")
            .unwrap_err()
            .field(),
        Some("mode")
    );
}

#[test]
fn index_is_rebuilt_for_a_ledger_written_before_it_existed() {
    let f = fixture();
    let before = {
        let reader = f.ledger.reader().unwrap();
        let all = search_passes(
            &reader,
            &PassQuery {
                per_page: Some("500".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let report = build_report(&reader, &params()).unwrap();
        (
            all,
            report.clean_transport.total.clone(),
            report.passes.clone(),
        )
    };
    let Fixture { _tmp, dir, ledger } = f;
    drop(ledger);
    // Make it look like a ledger written by the version before the index.
    let conn = rusqlite::Connection::open(dir.join("ledger.db")).unwrap();
    let triggers: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name NOT LIKE 'events_%'",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(triggers.len() >= 5, "{triggers:?}");
    for t in &triggers {
        conn.execute_batch(&format!("DROP TRIGGER {t}")).unwrap();
    }
    conn.execute_batch(
        "DROP TABLE pass_index; DROP TABLE weighing_index; DELETE FROM meta WHERE key = 'pass_index_version';",
    )
    .unwrap();
    drop(conn);
    assert!(LedgerReader::open(&dir)
        .unwrap()
        .conn()
        .prepare("SELECT 1 FROM pass_index")
        .is_err());

    let ledger = Ledger::open(&dir).unwrap();
    let reader = ledger.reader().unwrap();
    let all = search_passes(
        &reader,
        &PassQuery {
            per_page: Some("500".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(all, before.0, "rebuilt index lists the same rows");
    let report = build_report(&reader, &params()).unwrap();
    assert_eq!(report.clean_transport.total, before.1);
    assert_eq!(report.passes, before.2);
    // And the triggers are back: a new pass is found at once.
    ledger
        .append_blocking(
            attempt(
                "豫C12345",
                PlateColor::Blue,
                Direction::In,
                "1",
                None,
                None,
                true,
            ),
            vec![],
            at(3, 23, 0),
        )
        .unwrap();
    let q = PassQuery {
        plate: Some("豫C12345".into()),
        ..Default::default()
    };
    assert_eq!(search_passes(&reader, &q).unwrap().total, 1);
    // The index is not part of the chain.
    let rep = ecogate::ledger::verify(&dir).unwrap();
    assert!(rep.broken.is_none(), "{:?}", rep.broken);
    let _ = _tmp;
}

#[test]
fn inspection_sample_is_reproducible_and_complete() {
    let f = fixture();
    let reader = f.ledger.reader().unwrap();
    let p = InspectionParams {
        from: Some("2026-11-01".into()),
        to: Some("2026-11-03".into()),
        sample: Some("5".into()),
        seed: Some("20261103".into()),
        window_from: Some("2026-11-01 08:00".into()),
        window_to: Some("2026-11-01 09:00".into()),
        ..Default::default()
    };
    let a = build_inspection(&reader, &p).unwrap();
    let b = build_inspection(&reader, &p).unwrap();
    assert_eq!(a.seed, 20_261_103);
    assert_eq!(a.population, 14);
    assert_eq!(a.sample.len(), 5);
    assert_eq!(a.sample, b.sample, "same seed, same rows");
    let seqs = |i: &ecogate::report::Inspection| i.sample.iter().map(|r| r.seq).collect::<Vec<_>>();
    let mut distinct = seqs(&a);
    distinct.dedup();
    assert_eq!(distinct.len(), 5);
    assert!(a.sample.iter().all(|r| r.opened && !r.voided));
    assert!(
        a.sample.windows(2).all(|w| w[0].at <= w[1].at),
        "time order"
    );
    // Another seed draws another sample (with 14 rows, 5 at a time, some seed differs).
    let other = (1..20u64)
        .map(|s| {
            build_inspection(
                &reader,
                &InspectionParams {
                    seed: Some(s.to_string()),
                    ..p.clone()
                },
            )
            .unwrap()
        })
        .any(|i| seqs(&i) != seqs(&a));
    assert!(other);
    // A sample larger than the population takes every pass.
    let all = build_inspection(
        &reader,
        &InspectionParams {
            sample: Some("200".into()),
            ..p.clone()
        },
    )
    .unwrap();
    assert_eq!(all.sample.len(), 14);

    // Default day sets: 11-01 and 11-03 normal, 11-02 warning.
    assert_eq!(a.normal_days.len(), 2);
    assert_eq!(a.warning_days.len(), 1);
    assert_eq!(a.warning_days[0].warning.as_deref(), Some("orange"));
    assert!((a.normal_average.avg_vehicles.unwrap() - 2.5).abs() < 1e-9);
    // Chosen days.
    let chosen = build_inspection(
        &reader,
        &InspectionParams {
            normal_days: Some("2026-11-01".into()),
            warning_days: Some("2026-11-02".into()),
            ..p.clone()
        },
    )
    .unwrap();
    assert_eq!(chosen.normal_days[0].entries, 3);
    assert_eq!(chosen.warning_days[0].entries, 2);

    // Window 08:00–09:00 on 11-01: A1 in 08:00, A2 in 08:30 (A3 at 09:00 is outside).
    let w = a.window.as_ref().unwrap();
    let plates: Vec<&str> = w.passes.iter().map(|r| r.plate.as_str()).collect();
    assert_eq!(plates, vec![A1, A2]);

    // Re-check list, by hand: A3 (basis missing, stage changed 5 → none, unknown),
    // A4 (weak basis, 国四 on the orange day), B9 (not registered, stage X).
    let re: Vec<(&str, Vec<RecheckReason>)> = a
        .recheck
        .iter()
        .map(|r| (r.plate.as_str(), r.reasons.clone()))
        .collect();
    use RecheckReason::*;
    assert_eq!(
        re,
        vec![
            (A3, vec![BasisMissing, StageChanged, StageUnknown]),
            (A4, vec![BasisWeak, LowStageOnWarningDay]),
            (B9, vec![NotRegistered, StageUnknown]),
        ]
    );

    // The workbook: photos of the sample embedded as images, every section a sheet.
    let xlsx = inspection_xlsx(&a, &reader.photos()).unwrap();
    let book = Xlsx::open(&xlsx);
    for name in [
        "核查概况",
        "抽样记录",
        "日均车辆",
        "视频时段通行记录",
        "排放阶段复核",
    ] {
        assert!(
            book.names.iter().any(|n| n == name),
            "no sheet {name}: {:?}",
            book.names
        );
    }
    let media = book
        .files
        .iter()
        .filter(|n| n.starts_with("xl/media/"))
        .count();
    assert_eq!(
        media,
        a.sample.iter().map(|r| r.photos.len()).sum::<usize>()
    );
    let sample_sheet = book.sheet("抽样记录");
    assert_eq!(sample_sheet.len(), 6);
    assert_eq!(sample_sheet[1][0], a.sample[0].id);
    assert!(book
        .sheet("核查概况")
        .iter()
        .any(|r| r.get(1).map(String::as_str) == Some("20261103")));
}

#[test]
fn tonnage_entries_are_ledger_events_listed_by_date() {
    let f = fixture();
    let reader = f.ledger.reader().unwrap();
    let rows = ecogate::report::list_tonnage(
        &reader,
        &ecogate::report::TonnageQuery {
            from: Some("2026-11-01".into()),
            to: Some("2026-11-05".into()),
        },
    )
    .unwrap();
    let got: Vec<(String, &str, i64)> = rows
        .iter()
        .map(|r| (r.date.to_string(), r.cargo.as_str(), r.grams))
        .collect();
    assert_eq!(
        got,
        vec![
            ("2026-11-02".into(), "煤", 100_000_000),
            ("2026-11-03".into(), "矿石", 5_000_000),
            ("2026-11-05".into(), "煤", 999_000_000),
        ]
    );
    let e = reader.event(rows[0].seq).unwrap().unwrap();
    assert_eq!(e.kind, "transport_tonnage");
    assert_eq!(e.occurred_at, at(2, 0, 0));
}

#[test]
fn cli_report_summary_writes_csv_and_names_bad_arguments() {
    let f = fixture();
    let out = f.dir.join("r.csv");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ecogate"))
            .args(args)
            .output()
            .unwrap()
    };
    let dir = f.dir.to_str().unwrap();
    let o = run(&[
        "report",
        "summary",
        "--data-dir",
        dir,
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-03",
        "--format",
        "csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(
        csv_section(&text, "清洁运输比例")
            .iter()
            .find(|r| r[0] == "合计")
            .unwrap()[15],
        "0.5991"
    );
    let o = run(&[
        "report",
        "summary",
        "--data-dir",
        dir,
        "--from",
        "2026-11-03",
        "--to",
        "2026-11-01",
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--to"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&[
        "report",
        "inspection",
        "--data-dir",
        dir,
        "--month",
        "2026-11",
        "--window-from",
        "2026-11-02",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--window-to"));
    let o = run(&[
        "report",
        "summary",
        "--data-dir",
        "/nonexistent/x",
        "--day",
        "2026-11-01",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--data-dir"));
}

/// Just enough of an XLSX reader: sheet names in order, shared strings, cell values by row.
struct Xlsx {
    names: Vec<String>,
    files: Vec<String>,
    sheets: Vec<Vec<Vec<String>>>,
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(&tag[i..j])
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Text of every `<t>` inside `xml`.
fn texts(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<t") {
        let after = &rest[i + 2..];
        if !(after.starts_with('>') || after.starts_with(' ')) {
            rest = after;
            continue;
        }
        let open_end = after.find('>').unwrap();
        let body = &after[open_end + 1..];
        let close = body.find("</t>").unwrap();
        out.push_str(&unescape(&body[..close]));
        rest = &body[close..];
    }
    out
}

fn col_index(r: &str) -> usize {
    let mut n = 0usize;
    for ch in r.chars().take_while(char::is_ascii_alphabetic) {
        n = n * 26 + (ch as usize - 'A' as usize + 1);
    }
    n - 1
}

impl Xlsx {
    fn open(bytes: &[u8]) -> Xlsx {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let files: Vec<String> = zip.file_names().map(str::to_string).collect();
        let mut read = |name: &str| -> Option<String> {
            let mut f = zip.by_name(name).ok()?;
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            Some(s)
        };
        let shared: Vec<String> = read("xl/sharedStrings.xml")
            .map(|x| x.split("<si>").skip(1).map(texts).collect())
            .unwrap_or_default();
        let wb = read("xl/workbook.xml").unwrap();
        let names: Vec<String> = wb
            .split("<sheet ")
            .skip(1)
            .map(|t| unescape(attr(&format!(" {t}"), "name").unwrap()))
            .collect();
        let mut sheets = Vec::new();
        for i in 1..=names.len() {
            let xml = read(&format!("xl/worksheets/sheet{i}.xml")).unwrap();
            let mut rows: Vec<Vec<String>> = Vec::new();
            for row in xml.split("<row ").skip(1) {
                let mut cells: Vec<String> = Vec::new();
                for c in row.split("<c ").skip(1) {
                    let head_end = c.find('>').unwrap();
                    let head = format!(" {}", &c[..head_end]);
                    let col = col_index(attr(&head, "r").unwrap());
                    let value = if head.trim_end().ends_with('/') {
                        String::new()
                    } else {
                        let v = c.find("<v>").map(|a| {
                            let b = c[a..].find("</v>").unwrap() + a;
                            c[a + 3..b].to_string()
                        });
                        match attr(&head, "t") {
                            Some("s") => shared[v.unwrap().parse::<usize>().unwrap()].clone(),
                            Some("inlineStr") | Some("str") => texts(c),
                            _ => v.unwrap_or_default(),
                        }
                    };
                    if cells.len() <= col {
                        cells.resize(col + 1, String::new());
                    }
                    cells[col] = value;
                }
                rows.push(cells);
            }
            sheets.push(rows);
        }
        Xlsx {
            names,
            files,
            sheets,
        }
    }

    fn sheet(&self, name: &str) -> &Vec<Vec<String>> {
        let i = self
            .names
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("no sheet {name}"));
        &self.sheets[i]
    }
}

/// A weight no scale can give (a garbled frame, a typo in a tool) is still recorded: the report
/// index leaves it out instead of failing the append on SQLite integer overflow.
#[test]
fn absurd_weights_are_recorded_and_left_out_of_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(tmp.path()).unwrap();
    let absurd = |gross: i64, tare: i64, net: Option<i64>| {
        EventBody::Weighing(Weighing {
            lane: "1-in".into(),
            scale: "scale1".into(),
            plate: A1.into(),
            color: PlateColor::Yellow,
            gross: Some(Mass::from_grams(gross)),
            tare: Some(Mass::from_grams(tare)),
            net: net.map(Mass::from_grams),
            cargo: Some("煤".into()),
            direction: Some(Direction::In),
            pass_ref: None,
        })
    };
    let sane = ledger
        .append_blocking(
            weighing(A1, PlateColor::Yellow, "煤", 30, None),
            vec![],
            at(3, 9, 0),
        )
        .unwrap();
    for (i, body) in [
        absurd(i64::MAX, i64::MIN, None),
        absurd(0, 0, Some(i64::MIN)),
        absurd(i64::MAX, 1, Some(i64::MAX)),
    ]
    .into_iter()
    .enumerate()
    {
        ledger
            .append_blocking(body, vec![], at(3, 9, 1 + i as u32))
            .unwrap_or_else(|e| panic!("absurd weighing {i} was not recorded: {e}"));
    }
    // A correction to an absurd net is refused by the correction check, but one written
    // directly must not fail either.
    ledger
        .append_blocking(
            EventBody::Correction(Correction {
                refs: sane.id.clone(),
                operator: "t".into(),
                reason: "t".into(),
                void: false,
                plate: None,
                color: None,
                direction: None,
                cargo: None,
                net: Some(Mass::from_grams(i64::MIN)),
            }),
            vec![],
            at(3, 9, 10),
        )
        .unwrap();
    let r = LedgerReader::open(tmp.path()).unwrap();
    let nets: Vec<Option<i64>> = r
        .conn()
        .prepare("SELECT net_g FROM weighing_index ORDER BY seq")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(nets, vec![Some(30_000), None, None, None], "{nets:?}");
    assert!(ecogate::ledger::verify::verify(tmp.path()).unwrap().ok());
}
