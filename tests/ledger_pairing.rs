//! Entry/exit pairing (reference §3.5) over a real ledger: simple visits, visits across
//! midnight, unmatched exits, a second entry without exit, colours, denied attempts, manual
//! releases, backfills, corrections, weighings and "in the plant now".

mod ledger_support;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ecogate::ledger::views::VisitFlag;
use ecogate::ledger::{
    local_day_start, BarrierMode, Correction, Decision, Direction, EventBody, Ledger,
    ManualRelease, Weighing,
};
use ecogate::vehicle::PlateColor;
use ecogate_drivers::Mass;
use ledger_support::{at, pass, pass_attempt};

fn day(d: u32) -> DateTime<Utc> {
    local_day_start(NaiveDate::from_ymd_opt(2026, 3, d).unwrap())
}

/// Local GMT+8 time on 2026-03-dd.
fn local(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    day(d) + Duration::hours(h as i64) + Duration::minutes(m as i64)
}

fn rec(l: &Ledger, body: EventBody, t: DateTime<Utc>) -> String {
    l.append_blocking(body, vec![], t).unwrap().id
}

#[test]
fn entry_and_exit_make_one_visit_and_midnight_does_not_split_it() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(&l, pass("1-in", "豫A00001", Direction::In), local(1, 9, 0));
    rec(
        &l,
        pass("1-out", "豫A00001", Direction::Out),
        local(1, 10, 30),
    );
    // Across midnight (GMT+8): in at 23:50 on the 1st, out at 00:20 on the 2nd.
    rec(
        &l,
        pass("1-in", "豫A00002", Direction::In),
        local(1, 23, 50),
    );
    rec(
        &l,
        pass("1-out", "豫A00002", Direction::Out),
        local(2, 0, 20),
    );
    let r = l.reader().unwrap();

    let d1 = r.visits(day(1), day(2)).unwrap();
    assert_eq!(d1.len(), 2);
    for v in &d1 {
        assert!(v.entry.is_some() && v.exit.is_some(), "{v:?}");
        assert!(v.flags.is_empty(), "{:?}", v.flags);
    }
    assert_eq!(d1[1].plate, "豫A00002");
    assert_eq!(d1[1].exit.as_ref().unwrap().at, local(2, 0, 20));
    // The next day's ledger does not show the exit again as a visit of its own.
    assert!(r.visits(day(2), day(3)).unwrap().is_empty());
    // A range that starts after the entry still pairs the exit with it (filed on day 1).
    assert!(r.visits(local(2, 0, 0), local(2, 1, 0)).unwrap().is_empty());
}

#[test]
fn unmatched_exit_is_kept_and_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(
        &l,
        pass("1-out", "豫A00003", Direction::Out),
        local(1, 8, 0),
    );
    let v = l.reader().unwrap().visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 1);
    assert!(v[0].entry.is_none());
    assert_eq!(v[0].flags, vec![VisitFlag::UnmatchedExit]);
}

#[test]
fn exit_before_entry_is_not_paired_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    // Recorded in the opposite order of their times: pairing follows occurrence time.
    rec(&l, pass("1-in", "豫A00004", Direction::In), local(1, 9, 0));
    rec(
        &l,
        pass("1-out", "豫A00004", Direction::Out),
        local(1, 8, 0),
    );
    let v = l.reader().unwrap().visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].flags, vec![VisitFlag::UnmatchedExit]);
    assert_eq!(v[1].flags, vec![VisitFlag::InPlant]);
}

#[test]
fn second_entry_without_exit_closes_the_first_as_no_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(&l, pass("1-in", "豫A00005", Direction::In), local(1, 8, 0));
    rec(&l, pass("2-in", "豫A00005", Direction::In), local(1, 12, 0));
    rec(
        &l,
        pass("1-out", "豫A00005", Direction::Out),
        local(1, 13, 0),
    );
    let v = l.reader().unwrap().visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].entry.as_ref().unwrap().at, local(1, 8, 0));
    assert!(v[0].exit.is_none());
    assert_eq!(v[0].flags, vec![VisitFlag::NoExit]);
    assert_eq!(v[1].entry.as_ref().unwrap().at, local(1, 12, 0));
    assert_eq!(v[1].exit.as_ref().unwrap().at, local(1, 13, 0));
    assert!(v[1].flags.is_empty());
}

#[test]
fn colour_is_part_of_the_key_and_denied_attempts_are_not_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(&l, pass("1-in", "豫A00006", Direction::In), local(1, 8, 0));
    let mut blue_out = pass_attempt("1-out", "豫A00006", Direction::Out);
    blue_out.color = PlateColor::Blue;
    rec(&l, EventBody::PassAttempt(blue_out), local(1, 9, 0));
    let mut denied = pass_attempt("1-in", "豫A00007", Direction::In);
    denied.decision = Decision::Deny;
    denied.opened = false;
    rec(&l, EventBody::PassAttempt(denied), local(1, 9, 30));
    let v = l.reader().unwrap().visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].flags, vec![VisitFlag::InPlant]);
    assert_eq!(v[1].flags, vec![VisitFlag::UnmatchedExit]);
    assert_eq!(v[1].color, PlateColor::Blue);
}

#[test]
fn manual_release_pairs_and_is_flagged() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(&l, pass("1-in", "豫A00008", Direction::In), local(1, 8, 0));
    let manual = ManualRelease {
        lane: "1-out".into(),
        gate: None,
        direction: Direction::Out,
        plate: Some("豫A00008".into()),
        color: Some(PlateColor::Yellow),
        mode: BarrierMode::Manual,
        operator: "张三".into(),
        role: "guard".into(),
        reason: "camera down".into(),
        approval: None,
        request: None,
        photo_kinds: vec![],
    };
    rec(&l, EventBody::ManualRelease(manual), local(1, 9, 0));
    let v = l.reader().unwrap().visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 1);
    assert!(v[0].exit.is_some());
    assert_eq!(v[0].flags, vec![VisitFlag::Manual]);
    assert_eq!(v[0].exit.as_ref().unwrap().barrier, BarrierMode::Manual);
}

#[test]
fn corrections_fix_a_misread_plate_and_void_a_ghost() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    let misread = rec(&l, pass("1-in", "豫A0OO09", Direction::In), local(1, 8, 0));
    let ghost = rec(&l, pass("1-in", "豫A00010", Direction::In), local(1, 8, 5));
    rec(
        &l,
        pass("1-out", "豫A00009", Direction::Out),
        local(1, 9, 0),
    );
    let fix = |refs: String, plate: Option<&str>, void: bool| {
        EventBody::Correction(Correction {
            refs,
            operator: "李四".into(),
            reason: "复核".into(),
            void,
            plate: plate.map(Into::into),
            color: None,
            direction: None,
            cargo: None,
            net: None,
        })
    };
    let r = l.reader().unwrap();
    assert_eq!(r.visits(day(1), day(2)).unwrap().len(), 3);
    rec(
        &l,
        fix(misread.clone(), Some("豫A00009"), false),
        local(1, 10, 0),
    );
    rec(&l, fix(ghost, None, true), local(1, 10, 1));
    let v = r.visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 1, "{v:#?}");
    assert_eq!(v[0].plate, "豫A00009");
    assert!(v[0].exit.is_some());
    assert!(v[0].flags.contains(&VisitFlag::Corrected));
    // The original event is unchanged in the log.
    let EventBody::PassAttempt(p) = r.event_by_id(&misread).unwrap().unwrap().body else {
        panic!()
    };
    assert_eq!(p.plate, "豫A0OO09");
}

#[test]
fn weighings_attach_to_their_visit() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(&l, pass("1-in", "豫A00011", Direction::In), local(1, 8, 0));
    let w = |net_kg: i64, cargo: &str| {
        EventBody::Weighing(Weighing {
            lane: "1-in".into(),
            scale: "scale1".into(),
            plate: "豫A00011".into(),
            color: PlateColor::Yellow,
            gross: Some(Mass::from_kg(15_000 + net_kg)),
            tare: Some(Mass::from_kg(15_000)),
            net: None,
            cargo: Some(cargo.into()),
            direction: None,
            pass_ref: None,
        })
    };
    rec(&l, w(32_500, "煤"), local(1, 8, 5));
    rec(
        &l,
        pass("1-out", "豫A00011", Direction::Out),
        local(1, 9, 0),
    );
    // A later weighing of the same truck belongs to its next visit, not this one.
    rec(&l, w(1_000, "石灰石"), local(1, 11, 0));
    let v = l.reader().unwrap().visits(day(1), day(2)).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].cargo(), vec!["煤".to_string()]);
    assert_eq!(v[0].net(), Some(Mass::from_kg(32_500)));
}

#[test]
fn vehicles_in_the_plant_now() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    rec(&l, pass("1-in", "豫A00012", Direction::In), at(0));
    rec(&l, pass("1-in", "豫A00013", Direction::In), at(5));
    rec(&l, pass("1-out", "豫A00012", Direction::Out), at(30));
    rec(&l, pass("1-in", "豫A00014", Direction::In), at(40));
    let r = l.reader().unwrap();
    let now = r.in_plant_now(at(60), Duration::days(7)).unwrap();
    let plates: Vec<&str> = now.iter().map(|v| v.plate.as_str()).collect();
    assert_eq!(plates, vec!["豫A00013", "豫A00014"]);
    // Asked at an earlier moment, the answer is as it was then.
    let then = r.in_plant_now(at(10), Duration::days(7)).unwrap();
    let plates: Vec<&str> = then.iter().map(|v| v.plate.as_str()).collect();
    assert_eq!(plates, vec!["豫A00012", "豫A00013"]);
}
