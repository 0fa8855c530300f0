//! Tamper tests: every kind of edit to a ledger written by ecogate is detected by `verify`,
//! which names the event; an untouched ledger verifies.

mod ledger_support;

use bytes::Bytes;
use ecogate::ledger::chain::{row_hash, RowFields};
use ecogate::ledger::{verify, verify_with, BreakKind, Direction, Ledger, Receipt, VerifyOptions};
use ledger_support::{at, pass, Rng};
use rusqlite::{params, Connection};
use std::path::Path;

const N: u64 = 60;

/// A ledger of N passes, every third with two unique photos.
fn build(dir: &Path) -> Vec<Receipt> {
    let ledger = Ledger::open(dir).unwrap();
    let mut receipts = Vec::new();
    for i in 0..N {
        let dirn = if i % 2 == 0 {
            Direction::In
        } else {
            Direction::Out
        };
        let photos = if i % 3 == 0 {
            vec![
                Bytes::from(format!("jpeg head {i}")),
                Bytes::from(format!("jpeg plate {i}")),
            ]
        } else {
            vec![]
        };
        let plate = format!("豫A{:05}", i / 2);
        receipts.push(
            ledger
                .append_blocking(pass("1-in", &plate, dirn), photos, at(i as i64))
                .unwrap(),
        );
    }
    receipts
}

/// Open the database behind the ledger's back, as an attacker with file access would.
fn raw(dir: &Path) -> Connection {
    let c = Connection::open(dir.join("ledger.db")).unwrap();
    c.execute_batch("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;")
        .unwrap();
    c
}

fn broken(dir: &Path) -> ecogate::ledger::Broken {
    let report = verify(dir).unwrap();
    eprintln!("{report}");
    report.broken.expect("tampering must be detected")
}

#[test]
fn untouched_ledger_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let receipts = build(tmp.path());
    let report = verify(tmp.path()).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.events, N);
    assert_eq!(report.head.seq, receipts.last().unwrap().seq);
    assert_eq!(report.head.hash, receipts.last().unwrap().hash);
    assert_eq!(report.photos_checked, 2 * N.div_ceil(3));
    // A published head that matches is accepted too.
    let opts = VerifyOptions {
        expect_head: Some(report.head),
        ..Default::default()
    };
    assert!(verify_with(tmp.path(), &opts).unwrap().ok());
}

#[test]
fn triggers_refuse_update_and_delete() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let c = Connection::open(tmp.path().join("ledger.db")).unwrap();
    let e = c
        .execute("UPDATE events SET body = '{}' WHERE seq = 3", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = c
        .execute("DELETE FROM events WHERE seq = 3", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(verify(tmp.path()).unwrap().ok());
}

#[test]
fn update_of_a_random_event_is_named() {
    let mut rng = Rng::from_env_or_time("update");
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let receipts = build(tmp.path());
        let k = rng.range(1, N + 1) as i64;
        let c = raw(tmp.path());
        let n = c
            .execute(
                "UPDATE events SET body = replace(body, '豫A', '豫B') WHERE seq = ?1",
                [k],
            )
            .unwrap();
        assert_eq!(n, 1);
        let b = broken(tmp.path());
        assert_eq!((b.seq, b.what), (k, BreakKind::Changed));
        assert_eq!(b.id, receipts[(k - 1) as usize].id);
    }
}

#[test]
fn update_of_the_occurrence_time_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    raw(tmp.path())
        .execute(
            "UPDATE events SET occurred_at = '2026-03-01T01:00:00.000000Z' WHERE seq = 7",
            [],
        )
        .unwrap();
    let b = broken(tmp.path());
    assert_eq!((b.seq, b.what), (7, BreakKind::Changed));
}

#[test]
fn delete_of_a_random_event_is_named() {
    let mut rng = Rng::from_env_or_time("delete");
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path());
        let k = rng.range(1, N) as i64;
        raw(tmp.path())
            .execute("DELETE FROM events WHERE seq = ?1", [k])
            .unwrap();
        let b = broken(tmp.path());
        assert_eq!((b.seq, b.what), (k, BreakKind::Deleted));
    }
}

/// Deleting and renumbering the rest so seq stays gapless.
#[test]
fn delete_with_renumbering_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let k = 20i64;
    let c = raw(tmp.path());
    c.execute("DELETE FROM events WHERE seq = ?1", [k]).unwrap();
    c.execute("UPDATE events SET seq = -seq WHERE seq > ?1", [k])
        .unwrap();
    c.execute("UPDATE events SET seq = -seq - 1 WHERE seq < 0", [])
        .unwrap();
    let b = broken(tmp.path());
    assert_eq!((b.seq, b.what), (k, BreakKind::Deleted));
}

#[test]
fn deleting_the_newest_events_is_caught_against_the_published_head() {
    let tmp = tempfile::tempdir().unwrap();
    let receipts = build(tmp.path());
    let published = Ledger::open(tmp.path()).unwrap().head();
    assert_eq!(published.seq, receipts.last().unwrap().seq);
    raw(tmp.path())
        .execute("DELETE FROM events WHERE seq > ?1", [N as i64 - 3])
        .unwrap();
    let opts = VerifyOptions {
        expect_head: Some(published),
        ..Default::default()
    };
    let b = verify_with(tmp.path(), &opts).unwrap().broken.unwrap();
    assert_eq!(b.seq, N as i64 - 2);
    assert_eq!(
        b.what,
        BreakKind::Truncated {
            expected_seq: N as i64
        }
    );
}

#[test]
fn insert_of_a_forged_event_is_named() {
    let mut rng = Rng::from_env_or_time("insert");
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        let receipts = build(tmp.path());
        let k = rng.range(2, N) as i64;
        let c = raw(tmp.path());
        // Make room at k, then insert a forged row chained correctly onto k-1: the attacker
        // knows the algorithm, so the forged row itself is internally consistent.
        c.execute("UPDATE events SET seq = -seq WHERE seq >= ?1", [k])
            .unwrap();
        c.execute("UPDATE events SET seq = -seq + 1 WHERE seq < 0", [])
            .unwrap();
        let prev = receipts[(k - 2) as usize].hash;
        let body = r#"{"kind":"alarm","source":"x","code":"forged","message":"","active":false}"#;
        let (t, id) = ("2026-03-01T00:00:00.000000Z", "forged-1");
        let h = row_hash(
            &prev,
            &RowFields {
                seq: k,
                id,
                recorded_at: t,
                occurred_at: t,
                kind: "alarm",
                body,
                photos: "[]",
            },
        );
        c.execute(
            "INSERT INTO events VALUES (?1, ?2, ?3, ?3, 'alarm', ?4, '[]', ?5, ?6)",
            params![k, id, t, body, &prev[..], &h[..]],
        )
        .unwrap();
        let b = broken(tmp.path());
        assert_eq!((b.seq, b.what), (k, BreakKind::Inserted));
    }
}

#[test]
fn appended_forgery_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let c = raw(tmp.path());
    c.execute(
        "INSERT INTO events VALUES (?1, 'x-999', 't', 't', 'alarm', '{}', '[]', ?2, ?2)",
        params![N as i64 + 1, &[7u8; 32][..]],
    )
    .unwrap();
    let b = broken(tmp.path());
    assert_eq!(b.seq, N as i64 + 1);
    assert_eq!(b.what, BreakKind::Changed);
}

#[test]
fn reorder_of_random_events_is_named() {
    let mut rng = Rng::from_env_or_time("reorder");
    for _ in 0..5 {
        let tmp = tempfile::tempdir().unwrap();
        build(tmp.path());
        let a = rng.range(1, N - 2) as i64;
        let b = rng.range(a as u64 + 1, N + 1) as i64;
        let c = raw(tmp.path());
        c.execute("UPDATE events SET seq = -1 WHERE seq = ?1", [a])
            .unwrap();
        c.execute("UPDATE events SET seq = ?1 WHERE seq = ?2", [a, b])
            .unwrap();
        c.execute("UPDATE events SET seq = ?1 WHERE seq = -1", [b])
            .unwrap();
        let br = broken(tmp.path());
        assert_eq!(br.seq, a, "{br}");
        let expected = BreakKind::Moved {
            original_seq: Some(b),
        };
        assert_eq!(br.what, expected, "{br}");
    }
}

#[test]
fn swapped_photo_is_named() {
    let mut rng = Rng::from_env_or_time("photo");
    let tmp = tempfile::tempdir().unwrap();
    let receipts = build(tmp.path());
    let with_photos: Vec<&Receipt> = receipts.iter().filter(|r| !r.photos.is_empty()).collect();
    let victim = with_photos[rng.range(0, with_photos.len() as u64) as usize];
    let donor = with_photos.iter().find(|r| r.seq != victim.seq).unwrap();
    let store = ecogate::ledger::photos::PhotoStore::new(tmp.path().join("photos"));
    let donor_bytes = std::fs::read(store.path_for(&donor.photos[0])).unwrap();
    std::fs::write(store.path_for(&victim.photos[1]), &donor_bytes).unwrap();
    let b = broken(tmp.path());
    assert_eq!(b.seq, victim.seq);
    assert_eq!(b.id, victim.id);
    assert_eq!(
        b.what,
        BreakKind::PhotoChanged {
            hash: victim.photos[1].clone(),
            actual: donor.photos[0].clone()
        }
    );
}

#[test]
fn missing_photo_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let receipts = build(tmp.path());
    let victim = receipts
        .iter()
        .rev()
        .find(|r| !r.photos.is_empty())
        .unwrap();
    let store = ecogate::ledger::photos::PhotoStore::new(tmp.path().join("photos"));
    std::fs::remove_file(store.path_for(&victim.photos[0])).unwrap();
    let b = broken(tmp.path());
    assert_eq!(b.seq, victim.seq);
    assert_eq!(
        b.what,
        BreakKind::PhotoMissing {
            hash: victim.photos[0].clone()
        }
    );
}

/// The registry tables hold each record's latest version and the chain every change: a record
/// edited, removed or added in a table behind the ledger's back is named by `verify`.
#[test]
fn a_registry_table_edited_behind_the_ledger_is_named() {
    use ecogate::ledger::registry::upsert;
    use ecogate::vehicle::RegistryKind;
    let tmp = tempfile::tempdir().unwrap();
    {
        let l = Ledger::open(tmp.path()).unwrap();
        for (plate, stage) in [("豫A10001", "6"), ("豫A10002", "4")] {
            upsert(
                &l,
                RegistryKind::Transport,
                &[
                    ("plate", plate),
                    ("color", "yellow"),
                    ("vin", "LZZ1CLVB7KA999999"),
                    ("engine_no", "E1"),
                    ("vehicle_type", "H11"),
                    ("fuel", "B"),
                    ("stage", stage),
                    ("registered_on", "2022-01-01"),
                    ("fleet", "车队"),
                ],
                "test",
            )
            .unwrap();
        }
        // Changed once the right way: a new version with its event.
        upsert(
            &l,
            RegistryKind::InPlant,
            &[
                ("code", "CN-1"),
                ("vin", "LZZ12345678910001"),
                ("fuel", "B"),
                ("stage", "4"),
            ],
            "test",
        )
        .unwrap();
        upsert(
            &l,
            RegistryKind::InPlant,
            &[
                ("code", "CN-1"),
                ("vin", "LZZ12345678910001"),
                ("fuel", "B"),
                ("stage", "6"),
            ],
            "test",
        )
        .unwrap();
        l.append_blocking(pass("1-in", "豫A10001", Direction::In), vec![], at(0))
            .unwrap();
    }
    assert!(verify(tmp.path()).unwrap().ok());
    let named = |needle: &str| {
        let r = verify(tmp.path()).unwrap();
        let text = r.to_string();
        assert!(!r.ok(), "the edit went unnoticed: {text}");
        assert!(
            matches!(
                r.broken.as_ref().map(|b| &b.what),
                Some(BreakKind::RegistryEdited { .. })
            ),
            "{text}"
        );
        assert!(text.contains(needle), "`{text}` should name {needle}");
    };
    let c = raw(tmp.path());
    // A 国四 truck made 国六 in the table only.
    c.execute(
        "UPDATE transport_vehicles SET stage = '6' WHERE plate = '豫A10002'",
        [],
    )
    .unwrap();
    named("豫A10002");
    c.execute(
        "UPDATE transport_vehicles SET stage = '4' WHERE plate = '豫A10002'",
        [],
    )
    .unwrap();
    assert!(verify(tmp.path()).unwrap().ok(), "restored");
    // A record removed from the table only.
    c.execute("DELETE FROM in_plant_vehicles WHERE code = 'CN-1'", [])
        .unwrap();
    named("in_plant");
}
