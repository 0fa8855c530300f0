//! Every event kind goes through the log and comes back unchanged on the uplink cursor, in
//! order, from concurrent writers; the CLI's verify fails on a broken ledger.

mod ledger_support;

use chrono::{Duration, Utc};
use ecogate::ledger::cli::LedgerCommand;
use ecogate::ledger::{
    verify, Alarm, Backfill, BarrierException, BarrierMode, Correction, Direction, EventBody,
    Ledger, LedgerReader, ManualRelease, MeasureChange, Purge, RegistryChange, RegistryOp,
    Weighing,
};
use ecogate::vehicle::{PlateColor, RegistryKind};
use ecogate_drivers::Mass;
use ledger_support::{at, pass, pass_attempt};
use std::collections::HashSet;

fn one_of_each() -> Vec<EventBody> {
    vec![
        pass("1-in", "豫A12345", Direction::In),
        EventBody::Weighing(Weighing {
            lane: "1-in".into(),
            scale: "scale1".into(),
            plate: "豫A12345".into(),
            color: PlateColor::Yellow,
            gross: Some(Mass::from_grams(49_980_500)),
            tare: Some(Mass::from_kg(15_000)),
            net: Some(Mass::from_grams(34_980_500)),
            cargo: Some("铁矿石".into()),
            direction: Some(Direction::In),
            pass_ref: Some("x-1".into()),
        }),
        EventBody::ManualRelease(ManualRelease {
            lane: "2-out".into(),
            gate: Some("2".into()),
            direction: Direction::Out,
            plate: None,
            color: None,
            mode: BarrierMode::Remote,
            operator: "张三".into(),
            role: "值班长".into(),
            reason: "消防车".into(),
            approval: Some("李四".into()),
            request: None,
            photo_kinds: vec!["scene".into()],
        }),
        EventBody::BarrierException(BarrierException {
            lane: "2-out".into(),
            gate: None,
            mode: BarrierMode::Manual,
            note: "limit switch opened with no command".into(),
            photo_kinds: vec![],
        }),
        EventBody::RegistryChange(RegistryChange {
            registry: RegistryKind::NonRoad,
            op: RegistryOp::Delete,
            key: "HB-1".into(),
            record: None,
            source: "api".into(),
        }),
        EventBody::MeasureChange(MeasureChange {
            measure: "orange-2026-03".into(),
            active: true,
            level: Some("orange".into()),
            starts_at: Some(at(0)),
            ends_at: Some(at(60 * 48)),
            source: "platform".into(),
            detail: serde_json::json!({"strategy": 2, "note": "禁行国四及以下"}),
        }),
        EventBody::Backfill(Backfill {
            operator: "王五".into(),
            reason: "outage".into(),
            source: "paper.csv".into(),
            line: 7,
            pass: pass_attempt("1-in", "豫B1", Direction::In),
            cargo: Some("煤".into()),
            net: Some(Mass::from_kg(30_000)),
            note: String::new(),
        }),
        EventBody::Alarm(Alarm {
            source: "scale1".into(),
            code: "offline".into(),
            message: "no frame for 10 s".into(),
            active: true,
            lane: Some("1-in".into()),
        }),
        EventBody::Correction(Correction {
            refs: "x-1".into(),
            operator: "李四".into(),
            reason: "misread".into(),
            void: false,
            plate: Some("豫A12346".into()),
            color: Some(PlateColor::YellowGreen),
            direction: None,
            cargo: None,
            net: None,
        }),
        EventBody::Purge(Purge {
            before: at(0) - Duration::days(800),
            operator: "admin".into(),
            reason: "retention".into(),
            photos: vec!["ab".repeat(32)],
        }),
    ]
}

#[test]
fn every_kind_round_trips_through_the_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    let bodies = one_of_each();
    for (i, b) in bodies.iter().enumerate() {
        let r = l.append_blocking(b.clone(), vec![], at(i as i64)).unwrap();
        assert_eq!(r.seq, i as i64 + 1);
    }
    let reader = LedgerReader::open(tmp.path()).unwrap();
    let back = reader.events_after(0, 100).unwrap();
    assert_eq!(back.len(), bodies.len());
    for (e, b) in back.iter().zip(&bodies) {
        assert_eq!(&e.body, b);
        assert_eq!(e.kind, b.kind());
    }
    // Paging from a delivery position.
    let page = reader.events_after(3, 2).unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(reader.event_by_id(&back[4].id).unwrap().unwrap().seq, 5);
    assert!(reader.event_by_id("nope-5").unwrap().is_none());
    assert!(verify(tmp.path()).unwrap().ok());
}

#[test]
fn concurrent_lanes_get_a_gapless_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seqs: Vec<i64> = rt.block_on(async {
        let mut tasks = Vec::new();
        for lane in 0..16 {
            let l = l.clone();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..25 {
                    let r = l
                        .append(
                            pass(
                                &format!("{lane}"),
                                &format!("豫A{lane:02}{i:03}"),
                                Direction::In,
                            ),
                            vec![bytes::Bytes::from(format!("{lane}/{i}"))],
                            Utc::now(),
                        )
                        .await
                        .unwrap();
                    out.push(r.seq);
                }
                out
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let unique: HashSet<i64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), 400);
    assert_eq!(*seqs.iter().max().unwrap(), 400);
    assert_eq!(l.head().seq, 400);
    let report = verify(tmp.path()).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.photos_checked, 400);
}

#[test]
fn two_handles_on_one_ledger_do_not_fork_the_chain() {
    // The gateway and a CLI backfill may write the same ledger at once.
    let tmp = tempfile::tempdir().unwrap();
    let a = Ledger::open(tmp.path()).unwrap();
    let b = Ledger::open(tmp.path()).unwrap();
    let ta = {
        let a = a.clone();
        std::thread::spawn(move || {
            for i in 0..50 {
                a.append_blocking(
                    pass("a", &format!("豫A{i:05}"), Direction::In),
                    vec![],
                    at(i),
                )
                .unwrap();
            }
        })
    };
    for i in 0..50 {
        b.append_blocking(
            pass("b", &format!("豫B{i:05}"), Direction::In),
            vec![],
            at(i),
        )
        .unwrap();
    }
    ta.join().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.events, 100);
}

#[test]
fn cli_verify_fails_on_a_broken_ledger_and_head_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let l = Ledger::open(tmp.path()).unwrap();
    for i in 0..5 {
        l.append_blocking(pass("1", "豫A1", Direction::In), vec![], at(i))
            .unwrap();
    }
    let head = l.head();
    assert_eq!(
        ecogate::ledger::ChainHead::parse(&head.to_string()),
        Some(head)
    );
    drop(l);
    let verify_cmd = |expect: Option<String>| LedgerCommand::Verify {
        data_dir: tmp.path().to_path_buf(),
        expect_head: expect,
        skip_photos: false,
    };
    verify_cmd(Some(head.to_string())).run().unwrap();
    let c = rusqlite::Connection::open(tmp.path().join("ledger.db")).unwrap();
    c.execute_batch(
        "DROP TRIGGER events_no_update; UPDATE events SET body = replace(body, '豫A1', '豫A2') WHERE seq = 2;",
    )
    .unwrap();
    let err = verify_cmd(None).run().unwrap_err().to_string();
    assert!(err.contains("event seq 2"), "{err}");
    assert!(err.contains("content changed"), "{err}");
    assert!(verify_cmd(Some("garbage".into())).run().is_err());
}
