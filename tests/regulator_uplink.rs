//! The regulator uplink against the strict mock platform, over a real ledger, on 127.0.0.1.

use bytes::Bytes;
use chrono::{DateTime, Duration as CDuration, Utc};
use ecogate::ledger::{
    Backfill, BarrierMode, Decision, Direction, EventBody, Ledger, ManualRelease, PassAttempt,
};
use ecogate::regulator::mock::{MockPlatform, MockStats};
use ecogate::regulator::profile::PlatformProfile;
use ecogate::regulator::transport_control::SiteFacts;
use ecogate::regulator::{status, Kpis, OutboxConfig, RegulatorUplink};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const ORGAN: &str = "91410100MA0001";

fn profile() -> PlatformProfile {
    PlatformProfile::builtin("transport-control").unwrap()
}

async fn mock() -> MockPlatform {
    let m = MockPlatform::start(profile(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    m.require_credentials("gate", "s3cret");
    m.require_organ(ORGAN);
    m
}

fn cfg(dir: &Path) -> OutboxConfig {
    let mut c = OutboxConfig::new(
        "city",
        dir,
        SiteFacts {
            enterprise: ORGAN.into(),
            enterprise_name: "某钢铁公司".into(),
        },
    );
    c.lane_gates.insert("east-in".into(), "01".into());
    c.lane_gates.insert("east-out".into(), "02".into());
    c.poll = Duration::from_millis(20);
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(200);
    c
}

fn start(dir: &Path, ledger: &Ledger, m: &MockPlatform) -> RegulatorUplink {
    start_w(dir, ledger, m, OutboxConfig::new("x", dir, site()).window)
}

fn site() -> SiteFacts {
    SiteFacts {
        enterprise: ORGAN.into(),
        enterprise_name: "某钢铁公司".into(),
    }
}

/// With `window` records in flight at once (1 = the strict one-by-one order).
fn start_w(dir: &Path, ledger: &Ledger, m: &MockPlatform, window: usize) -> RegulatorUplink {
    let mut c = cfg(dir);
    c.window = window;
    RegulatorUplink::start_with(c, profile(), &m.url(), "gate", "s3cret", ledger.clone()).unwrap()
}

fn pass(plate: &str, dir: Direction, opened: bool) -> EventBody {
    EventBody::PassAttempt(PassAttempt {
        lane: if dir == Direction::In {
            "east-in"
        } else {
            "east-out"
        }
        .into(),
        gate: Some("east".into()),
        direction: dir,
        plate: plate.into(),
        color: PlateColor::Yellow,
        decision: if opened {
            Decision::Allow
        } else {
            Decision::Deny
        },
        reason: "test".into(),
        reason_text: String::new(),
        barrier: BarrierMode::Auto,
        opened,
        stage: Some(EmissionStage::China(6)),
        fuel: Some(Fuel::Diesel),
        registry: None,
        photo_kinds: vec![],
        read_id: None,
        check: None,
    })
}

/// Waits (bounded, so a bug fails instead of hanging) until `f` holds.
async fn until(
    what: &str,
    up: &RegulatorUplink,
    m: &MockPlatform,
    f: impl Fn(&Kpis, &MockStats) -> bool,
) {
    for _ in 0..1500 {
        if f(&up.kpis(), &m.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "gave up waiting for {what}: kpis {:?}, mock {}",
        up.kpis(),
        m.summary()
    );
}

fn drained(k: &Kpis) -> bool {
    k.captured > 0 && k.backlog == 0 && k.acknowledged >= k.captured
}

fn serials(s: &MockStats) -> Vec<String> {
    s.records
        .iter()
        .map(|r| r["lsh"].as_str().unwrap_or("").to_string())
        .collect()
}

/// No record arrives after more than `slack` records that are younger than it.
fn assert_oldest_first(times: &[String], slack: usize) {
    for (i, t) in times.iter().enumerate() {
        let younger_before = times[..i].iter().filter(|x| *x > t).count();
        assert!(
            younger_before <= slack,
            "record {i} ({t}) came after {younger_before} younger ones: {times:?}"
        );
    }
}

fn field<'a>(r: &'a Value, k: &str) -> &'a str {
    r[k].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opened_passes_reach_the_mock_once_with_fields_codes_and_photos() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    let t0 = Utc::now() - CDuration::minutes(30);
    let mut photo = ecogate_drivers::sim::camera::fake_jpeg(2000);
    photo[10] = 7;
    let mut with_photos = pass("豫A12345", Direction::In, true);
    if let EventBody::PassAttempt(p) = &mut with_photos {
        p.photo_kinds = vec!["head".into(), "plate".into()];
    }
    ledger
        .append(
            with_photos,
            vec![
                Bytes::from(photo.clone()),
                Bytes::from_static(b"\xFF\xD8plate\xFF\xD9"),
            ],
            t0,
        )
        .await
        .unwrap();
    // Denied: stays local (未摆杆).
    ledger
        .append(
            pass("豫B00001", Direction::In, false),
            vec![],
            t0 + CDuration::minutes(1),
        )
        .await
        .unwrap();
    let manual = EventBody::ManualRelease(ManualRelease {
        lane: "east-out".into(),
        gate: None,
        direction: Direction::Out,
        plate: Some("豫A12345".into()),
        color: Some(PlateColor::Yellow),
        mode: BarrierMode::Manual,
        operator: "guard".into(),
        role: "guard".into(),
        reason: "camera fault".into(),
        approval: None,
        request: None,
        photo_kinds: vec![],
    });
    ledger
        .append(manual, vec![], t0 + CDuration::minutes(40))
        .await
        .unwrap();

    let up = start(dir.path(), &ledger, &m);
    until("delivery", &up, &m, |k, _| drained(k)).await;
    let s = m.stats();
    let k = up.kpis();
    assert_eq!(k.captured, 2, "the denied attempt is not for upload");
    assert_eq!(s.records.len(), 2);
    assert_eq!(s.duplicate_records, 0);
    assert!(s.rejections.is_empty(), "{:?}", s.rejections);
    let (entry, exit) = (&s.records[0], &s.records[1]);
    assert_eq!(field(entry, "cphm"), "豫A12345");
    assert_eq!(field(entry, "license"), "豫A12345");
    assert_eq!(field(entry, "cpys"), "1");
    assert_eq!(field(entry, "tgzt"), "1");
    assert_eq!(field(entry, "bgzt"), "2");
    assert_eq!(field(entry, "dzbh"), "01");
    assert_eq!(field(entry, "emissionStandard"), "6");
    assert_eq!(field(entry, "fuelType"), "B");
    assert_eq!(field(entry, "date"), ecogate::ledger::local_time(t0));
    assert!(field(entry, "lsh").starts_with(&format!("{ORGAN}01A")));
    assert_eq!(field(exit, "tgzt"), "2");
    assert_eq!(field(exit, "bgzt"), "1", "manual release is 手动抬杆");
    assert!(field(exit, "lsh").starts_with(&format!("{ORGAN}02B")));
    // Photos follow their record, in order, with their roles and the exact bytes.
    assert_eq!(s.photos.len(), 2);
    assert_eq!(field(&s.photos[0], "lsh"), field(entry, "lsh"));
    assert_eq!(field(&s.photos[0], "zplx"), "1");
    assert_eq!(field(&s.photos[1], "zplx"), "3");
    assert_eq!(
        field(&s.photos[0], "base64Image"),
        ecogate::regulator::transport_control::base64(&photo)
    );
    assert_eq!(k.photos_acknowledged, 2);
    up.stop().await.unwrap();
    let text = status(dir.path());
    assert!(text.contains("city: captured 2 acknowledged 2"), "{text}");
    assert!(text.contains("completeness 100.0%"), "{text}");
}

/// The built-in transportControl profile with a 补录 flag field `sfbl` (是否补录), as a city
/// platform that has one would map it (the reference shapes have none).
fn profile_with_backfill_flag() -> PlatformProfile {
    let text = include_str!("../profiles/platform/transport-control.toml");
    let mapped = text.replacen(
        "fuel = [\"fuelType\"]\n",
        "fuel = [\"fuelType\"]\nbackfill = [\"sfbl\"]\n",
        1,
    );
    assert_ne!(mapped, text);
    let e = PlatformProfile::parse(&mapped, "no-codes.toml").unwrap_err();
    assert!(e.to_string().contains("[codes.backfill]"), "{e}");
    PlatformProfile::parse(
        &format!("{mapped}\n[codes.backfill]\nyes = \"1\"\nno = \"0\"\n"),
        "sfbl.toml",
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_pass_reaches_the_platform_with_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = profile_with_backfill_flag();
    let m = MockPlatform::start(p.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    m.require_credentials("gate", "s3cret");
    m.require_organ(ORGAN);
    let t0 = Utc::now() - CDuration::hours(3);
    ledger
        .append(pass("豫A12345", Direction::In, true), vec![], t0)
        .await
        .unwrap();
    let EventBody::PassAttempt(mut paper) = pass("豫A77777", Direction::In, true) else {
        unreachable!()
    };
    paper.barrier = BarrierMode::Manual;
    paper.reason = "paper_log".into();
    let written_at = t0 + CDuration::minutes(5);
    ledger
        .append(
            EventBody::Backfill(Backfill {
                operator: "王五".into(),
                reason: "gateway down".into(),
                source: "paper.csv".into(),
                line: 2,
                pass: paper,
                cargo: None,
                net: None,
                note: String::new(),
            }),
            vec![],
            written_at,
        )
        .await
        .unwrap();
    let up = RegulatorUplink::start_with(
        cfg(dir.path()),
        p,
        &m.url(),
        "gate",
        "s3cret",
        ledger.clone(),
    )
    .unwrap();
    until("delivery", &up, &m, |k, _| drained(k)).await;
    let s = m.stats();
    assert!(s.rejections.is_empty(), "{:?}", s.rejections);
    assert_eq!(s.records.len(), 2);
    let by_plate = |plate: &str| {
        s.records
            .iter()
            .find(|r| field(r, "cphm") == plate)
            .unwrap()
    };
    let live = by_plate("豫A12345");
    let backfilled = by_plate("豫A77777");
    assert_eq!(field(live, "sfbl"), "0");
    assert_eq!(field(backfilled, "sfbl"), "1");
    // Sent with the time written on paper, as a manual opening.
    assert_eq!(
        field(backfilled, "date"),
        ecogate::ledger::local_time(written_at)
    );
    assert_eq!(field(backfilled, "bgzt"), "1");
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_delivers_all_once_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    m.set_down(true);
    let window = 4;
    let up = start_w(dir.path(), &ledger, &m, window);
    let t0 = Utc::now() - CDuration::hours(3);
    let n = 60;
    // Recorded during the outage: all entries, then all exits, at pass times that are not in
    // ledger order, so "oldest first" is about pass time.
    for d in [Direction::In, Direction::Out] {
        for v in 0..n / 2 {
            let t = t0
                + CDuration::minutes(((v * 7) % (n / 2)) as i64 * 3)
                + if d == Direction::Out {
                    CDuration::minutes(1)
                } else {
                    CDuration::zero()
                };
            let at: DateTime<Utc> = t;
            ledger
                .append(pass(&format!("豫A{v:05}"), d, true), vec![], at)
                .await
                .unwrap();
        }
    }
    until("failures during the outage", &up, &m, |k, _| {
        k.failed >= 3 && k.captured == n as u64
    })
    .await;
    assert_eq!(m.stats().records.len(), 0);
    let k = up.kpis();
    assert_eq!(k.backlog, n as u64);
    assert!(
        k.last_error.as_deref().unwrap_or("").contains("503"),
        "{k:?}"
    );
    m.set_down(false);
    until("drain", &up, &m, |k, _| drained(k)).await;
    let s = m.stats();
    let got = serials(&s);
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), n, "every pass exactly once");
    assert_eq!(got.len(), n);
    // Oldest first by pass time, up to the window: a record is overtaken only by records
    // sent while it was in flight or waiting for its vehicle's earlier record (at most one
    // window each).
    let times: Vec<String> = s
        .records
        .iter()
        .map(|r| field(r, "date").to_string())
        .collect();
    assert_oldest_first(&times, 2 * window);
    // Causal per vehicle: entry before exit.
    for v in 0..n / 2 {
        let plate = format!("豫A{v:05}");
        let dirs: Vec<&str> = s
            .records
            .iter()
            .filter(|r| field(r, "cphm") == plate)
            .map(|r| field(r, "tgzt"))
            .collect();
        assert_eq!(dirs, ["1", "2"], "{plate}");
    }
    let k = up.kpis();
    assert!((k.completeness() - 1.0).abs() < 1e-9);
    assert!(k.failed >= 3);
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_passes_overtake_the_backlog_but_not_their_own_entry() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    let now = Utc::now();
    let old = now - CDuration::hours(2);
    for i in 0..5 {
        ledger
            .append(
                pass(&format!("豫B{i:05}"), Direction::In, true),
                vec![],
                old + CDuration::minutes(i),
            )
            .await
            .unwrap();
    }
    ledger
        .append(
            pass("豫P00001", Direction::In, true),
            vec![],
            old + CDuration::minutes(30),
        )
        .await
        .unwrap();
    ledger
        .append(pass("豫P00001", Direction::Out, true), vec![], now)
        .await
        .unwrap();
    ledger
        .append(
            pass("豫Q00001", Direction::In, true),
            vec![],
            now + CDuration::seconds(1),
        )
        .await
        .unwrap();
    // One at a time, so the mock sees exactly the order the outbox picks.
    let up = start_w(dir.path(), &ledger, &m, 1);
    until("drain", &up, &m, |k, _| drained(k)).await;
    let s = m.stats();
    let order: Vec<(String, String)> = s
        .records
        .iter()
        .map(|r| (field(r, "cphm").to_string(), field(r, "tgzt").to_string()))
        .collect();
    let mut want: Vec<(String, String)> = vec![
        ("豫P00001".into(), "1".into()),
        ("豫P00001".into(), "2".into()),
        ("豫Q00001".into(), "1".into()),
    ];
    for i in 0..5 {
        want.push((format!("豫B{i:05}"), "1".into()));
    }
    assert_eq!(order, want);
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_mid_drain_logs_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    m.set_delay(Duration::from_millis(30));
    let t0 = Utc::now() - CDuration::hours(1);
    for i in 0..60 {
        ledger
            .append(
                pass(&format!("豫C{i:05}"), Direction::In, true),
                vec![],
                t0 + CDuration::seconds(i),
            )
            .await
            .unwrap();
    }
    let up = start_w(dir.path(), &ledger, &m, 4);
    until("some records", &up, &m, |k, _| k.acknowledged >= 8).await;
    m.expire_tokens();
    until("drain", &up, &m, |k, _| drained(k)).await;
    let s = m.stats();
    assert!(s.token_refusals >= 1, "{}", m.summary());
    assert!(s.logins >= 2, "{}", m.summary());
    assert_eq!(s.records.len(), 60);

    assert!(s.rejections.is_empty(), "{:?}", s.rejections);
    assert_eq!(up.kpis().failed, 0, "a refreshed token is not a failure");
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resends_nothing_acknowledged_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    let t0 = Utc::now() - CDuration::hours(1);
    for i in 0..5 {
        ledger
            .append(
                pass(&format!("豫D{i:05}"), Direction::In, true),
                vec![],
                t0 + CDuration::seconds(i),
            )
            .await
            .unwrap();
    }
    let up = start(dir.path(), &ledger, &m);
    until("first five", &up, &m, |k, _| {
        drained(k) && k.acknowledged == 5
    })
    .await;
    up.stop().await.unwrap();
    // Recorded while the uplink is down.
    for i in 5..10 {
        ledger
            .append(
                pass(&format!("豫D{i:05}"), Direction::In, true),
                vec![],
                t0 + CDuration::seconds(i),
            )
            .await
            .unwrap();
    }
    let up = start(dir.path(), &ledger, &m);
    until("all ten", &up, &m, |k, _| drained(k) && k.captured == 10).await;
    let s = m.stats();
    assert_eq!(s.records.len(), 10);
    assert_eq!(s.duplicate_records, 0, "nothing acknowledged is sent again");
    assert_eq!(up.kpis().acknowledged, 10);
    up.stop().await.unwrap();

    // A crash in the middle (task aborted): whatever is resent carries the same serial.
    m.set_delay(Duration::from_millis(40));
    for i in 10..20 {
        ledger
            .append(
                pass(&format!("豫D{i:05}"), Direction::In, true),
                vec![],
                t0 + CDuration::seconds(i),
            )
            .await
            .unwrap();
    }
    let window = 4;
    let up = start_w(dir.path(), &ledger, &m, window);
    until("a few more", &up, &m, |_, s| s.records.len() >= 13).await;
    drop(up);
    m.set_delay(Duration::ZERO);
    let up = start(dir.path(), &ledger, &m);
    until("all twenty", &up, &m, |k, _| drained(k) && k.captured == 20).await;
    let s = m.stats();
    assert_eq!(s.records.len(), 20, "nothing lost, nothing accepted twice");
    let mut u = serials(&s);
    u.sort();
    u.dedup();
    assert_eq!(u.len(), 20);
    assert!(
        s.duplicate_records <= window as u64,
        "at most the records in flight are resent: {}",
        s.duplicate_records
    );
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_reported_and_does_not_block_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    let t0 = Utc::now() - CDuration::hours(1);
    // An opened pass with no plate text (a real site could record one after a manual entry
    // went wrong): the platform refuses it.
    ledger
        .append(pass("", Direction::In, true), vec![], t0)
        .await
        .unwrap();
    ledger
        .append(
            pass("豫E00001", Direction::In, true),
            vec![],
            t0 + CDuration::seconds(5),
        )
        .await
        .unwrap();
    let up = start(dir.path(), &ledger, &m);
    until("the good one", &up, &m, |k, s| {
        // The mock counts a record before its answer reaches the uplink, and the backlog
        // shrinks only after the acknowledgement is saved: wait for all of it.
        k.rejected == 1 && k.acknowledged == 1 && k.backlog == 1 && s.records.len() == 1
    })
    .await;
    let k = up.kpis();
    assert_eq!(k.acknowledged, 1);
    assert_eq!(k.backlog, 1, "the refused record still counts as waiting");
    // The ledger keeps microseconds.
    assert_eq!(
        k.oldest_pending.map(ecogate::ledger::db_time),
        Some(ecogate::ledger::db_time(t0))
    );
    let err = k.last_error.clone().unwrap_or_default();
    assert!(err.contains("`cphm` is empty"), "{err}");
    assert!(k.completeness() < 1.0);
    up.stop().await.unwrap();
    let text = status(dir.path());
    assert!(text.contains("refused: event 1:"), "{text}");
    assert!(text.contains("completeness 50.0%"), "{text}");

    // The refused record holds the cursor at 0 from now on; what is delivered after it (and the
    // events that are not uploaded) must not make the state grow with every event.
    for i in 0..150 {
        ledger
            .append(
                pass(&format!("豫E{:05}", i + 2), Direction::In, i % 3 != 0),
                vec![],
                t0 + CDuration::seconds(10 + i),
            )
            .await
            .unwrap();
    }
    let up = start(dir.path(), &ledger, &m);
    until("the rest", &up, &m, |k, _| {
        k.acknowledged == 101 && k.backlog == 1
    })
    .await;
    up.stop().await.unwrap();
    let st = ecogate::regulator::outbox::load_state(&dir.path().join("uplink/city.state")).unwrap();
    assert_eq!(st.cursor, 0);
    assert_eq!(st.done.ranges(), 1, "{:?}", st.done);
    assert!(st.done.contains(&152) && !st.done.contains(&1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_mock_names_what_is_wrong() {
    let m = mock().await;
    let p = profile();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http
            .post(format!("{}{}", m.url(), path))
            .header("content-type", "application/json")
            .body(body.to_string());
        async move {
            let t = req.send().await.unwrap().text().await.unwrap();
            serde_json::from_str::<Value>(&t).unwrap()
        }
    };
    let bad_login = post(
        &p.paths.login,
        serde_json::json!({"organ": ORGAN, "ipctype": "getAccessToken", "username": "gate", "password": "no", "value": {}}),
    )
    .await;
    assert_eq!(bad_login["code"], "403");
    let login = post(
        &p.paths.login,
        serde_json::json!({"organ": ORGAN, "ipctype": "getAccessToken", "username": "gate", "password": "s3cret", "value": {}}),
    )
    .await;
    assert_eq!(login["code"], "200");
    let token = login["access_token"].as_str().unwrap().to_string();

    let site = SiteFacts {
        enterprise: ORGAN.into(),
        enterprise_name: "某钢铁公司".into(),
    };
    let rec = ecogate::regulator::transport_control::PassRecord {
        seq: 1,
        event_id: "x-1".into(),
        serial: format!("{ORGAN}01A2401150830000001"),
        gate: "01".into(),
        direction: Direction::In,
        plate: "豫A12345".into(),
        color: PlateColor::Yellow,
        time: Utc::now(),
        barrier: BarrierMode::Auto,
        stage: None,
        fuel: None,
        photos: vec![],
        backfill: false,
    };
    let good = ecogate::regulator::transport_control::record_value(&p, &site, &rec);
    let env = |v: Value, tok: &str| {
        ecogate::regulator::mock::envelope(&p, ORGAN, "shareDrivingRecord", tok, v)
    };
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("cphm");
    let r = post(&p.paths.record, env(missing, &token)).await;
    assert_eq!(r["code"], "400");
    assert!(
        r["status"]
            .as_str()
            .unwrap()
            .contains("missing field `cphm`"),
        "{r}"
    );

    let mut bad_color = good.clone();
    bad_color["cpys"] = "9".into();
    bad_color["licenseColor"] = "9".into();
    let r = post(&p.paths.record, env(bad_color, &token)).await;
    assert!(
        r["status"]
            .as_str()
            .unwrap()
            .contains("`9` is not a known code"),
        "{r}"
    );

    let mut disagree = good.clone();
    disagree["license"] = "豫A99999".into();
    let r = post(&p.paths.record, env(disagree, &token)).await;
    assert!(r["status"].as_str().unwrap().contains("disagrees"), "{r}");

    let mut bad_time = good.clone();
    for k in ["tgsjq", "tgsjz", "date"] {
        bad_time[k] = "2024/01/15 08:30".into();
    }
    let r = post(&p.paths.record, env(bad_time, &token)).await;
    assert!(
        r["status"]
            .as_str()
            .unwrap()
            .contains("is not `%Y-%m-%d %H:%M:%S`"),
        "{r}"
    );

    let r = post(&p.paths.record, env(good.clone(), "forged")).await;
    assert_eq!(r["code"], "401");

    // A photo for a record the platform never accepted.
    let photo =
        ecogate::regulator::transport_control::photo_value(&p, &site, &rec, 1, "head", b"jpeg");
    let r = post(
        &p.paths.photo,
        ecogate::regulator::mock::envelope(&p, ORGAN, "sharePhotoInfo", &token, photo.clone()),
    )
    .await;
    assert!(
        r["status"].as_str().unwrap().contains("no driving record"),
        "{r}"
    );

    // The good record, twice: accepted once, the second counted as a duplicate.
    for _ in 0..2 {
        let r = post(&p.paths.record, env(good.clone(), &token)).await;
        assert_eq!(r["code"], "200", "{r}");
    }
    let r = post(
        &p.paths.photo,
        ecogate::regulator::mock::envelope(&p, ORGAN, "sharePhotoInfo", &token, photo),
    )
    .await;
    assert_eq!(r["code"], "200", "{r}");
    let s = m.stats();
    assert_eq!(s.records.len(), 1);
    assert_eq!(s.duplicate_records, 1);
    assert_eq!(s.photos.len(), 1);
    assert_eq!(s.rejections.len(), 6, "{:?}", s.rejections);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_is_refused_at_start_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    std::fs::create_dir_all(dir.path().join("uplink")).unwrap();
    std::fs::write(dir.path().join("uplink/city.state"), b"{\"cursor\": 3, tru").unwrap();
    let e = match RegulatorUplink::start_with(
        cfg(dir.path()),
        profile(),
        &m.url(),
        "gate",
        "s3cret",
        ledger,
    ) {
        Ok(_) => panic!("a damaged state was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("city.state") && e.contains("not a valid outbox state"),
        "{e}"
    );
}

fn at_day(day: &str, hms: &str) -> DateTime<Utc> {
    ecogate::ledger::parse_local_time(&format!("{day} {hms}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_per_day_and_a_resend_goes_again_with_the_original_serials() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    m.set_down(true);
    let days = [("2026-03-01", 4), ("2026-03-02", 3), ("2026-03-03", 2)];
    for (d, n) in days {
        for i in 0..n {
            ledger
                .append(
                    pass(&format!("豫F{i:05}"), Direction::In, true),
                    vec![],
                    at_day(d, &format!("08:{:02}:00", 10 + i)),
                )
                .await
                .unwrap();
        }
    }
    // Denied: not captured on any day.
    ledger
        .append(
            pass("豫F99999", Direction::In, false),
            vec![],
            at_day("2026-03-02", "09:00:00"),
        )
        .await
        .unwrap();
    let up = start(dir.path(), &ledger, &m);
    until("the outage to show", &up, &m, |k, _| {
        k.captured == 9 && k.failed >= 1
    })
    .await;
    let k = up.kpis();
    assert_eq!(k.days.len(), 3, "{:?}", k.days);
    for (d, n) in days {
        let row = &k.days[d];
        assert_eq!(row.captured, n, "{d}");
        assert_eq!(row.backlog, n, "{d}");
        assert_eq!(row.acknowledged, 0, "{d}");
        assert_eq!(row.oldest_pending, Some(at_day(d, "08:10:00")), "{d}");
        assert_eq!(row.completeness(), 0.0);
    }
    m.set_down(false);
    until("drain", &up, &m, |k, _| drained(k)).await;
    let k = up.kpis();
    for (d, n) in days {
        let row = &k.days[d];
        assert_eq!(
            (row.captured, row.acknowledged, row.backlog),
            (n, n, 0),
            "{d}"
        );
        assert_eq!(row.oldest_pending, None);
        assert!((row.completeness() - 1.0).abs() < 1e-9);
    }
    let failed_days: u64 = k.days.values().map(|d| d.failed).sum();
    assert_eq!(failed_days, k.failed, "every failure belongs to a day");
    up.stop().await.unwrap();
    let first = m.stats();
    assert_eq!(first.records.len(), 9);
    let day2: Vec<String> = first
        .records
        .iter()
        .filter(|r| field(r, "date").starts_with("2026-03-02"))
        .map(|r| field(r, "lsh").to_string())
        .collect();
    assert_eq!(day2.len(), 3);

    // Wrong platform names and empty ranges are refused, and nothing is recorded.
    let head = ledger.head().seq;
    let e = ecogate::regulator::request_resend(
        &ledger,
        "cty",
        at_day("2026-03-02", "00:00:00"),
        at_day("2026-03-03", "00:00:00"),
        "op",
        "platform lost data",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("`cty`") && e.contains("known: city"), "{e}");
    let e = ecogate::regulator::request_resend(
        &ledger,
        "city",
        at_day("2026-03-03", "00:00:00"),
        at_day("2026-03-02", "00:00:00"),
        "op",
        "x",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("is not before"), "{e}");
    assert_eq!(ledger.head().seq, head);

    // Day 2 again, recorded while the platform is down and the uplink stopped; the request
    // survives a restart before anything went.
    m.set_down(true);
    let from = ecogate::regulator::parse_bound("2026-03-02", false).unwrap();
    let to = ecogate::regulator::parse_bound("2026-03-02", true).unwrap();
    let seq =
        ecogate::regulator::request_resend(&ledger, "city", from, to, "op", "platform lost data")
            .await
            .unwrap();
    let ev = ledger.reader().unwrap().event(seq).unwrap().unwrap();
    assert_eq!(ev.kind, "uplink_resend");
    let up = start(dir.path(), &ledger, &m);
    until("the resend queued", &up, &m, |k, _| k.backlog == 3).await;
    assert_eq!(up.kpis().days["2026-03-02"].backlog, 3);
    up.stop().await.unwrap();
    m.set_down(false);
    let up = start(dir.path(), &ledger, &m);
    until("the resend delivered", &up, &m, |k, _| {
        k.backlog == 0 && k.resent == 3
    })
    .await;
    let s = m.stats();
    let mut again = s.duplicate_serials.clone();
    again.sort();
    let mut want = day2.clone();
    want.sort();
    assert_eq!(again, want, "day 2 exactly, with its original serials");
    assert_eq!(s.records.len(), 9, "nothing new");
    let k = up.kpis();
    assert_eq!(
        k.acknowledged, 9,
        "a resend is not a second acknowledgement"
    );
    assert_eq!(k.days["2026-03-02"].resent, 3);
    assert_eq!(k.days["2026-03-01"].resent, 0);
    assert!((k.completeness() - 1.0).abs() < 1e-9);
    up.stop().await.unwrap();
    // The request is not acted on twice after another restart.
    let up = start(dir.path(), &ledger, &m);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.kpis().backlog, 0);
    assert_eq!(m.stats().duplicate_records, 3);
    up.stop().await.unwrap();
    let text = status(dir.path());
    assert!(
        text.contains("2026-03-02") && text.contains("100.0%") && text.contains("resent 3"),
        "{text}"
    );
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("2026-03-01"))
        .unwrap_or_default();
    let cols: Vec<&str> = row.split_whitespace().collect();
    // day captured sent acknowledged failed resent backlog complete oldest
    assert_eq!(cols[1], "4", "{row}");
    assert_eq!(cols[3], "4", "{row}");
    assert_eq!(cols[6], "0", "{row}");
    assert_eq!(cols[7], "100.0%", "{row}");
}

#[test]
fn uplink_cli_resend_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ecogate");
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let d = dir.path().to_str().unwrap();
    {
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .append_blocking(
                pass("豫G00001", Direction::In, true),
                vec![],
                at_day("2026-03-01", "08:00:00"),
            )
            .unwrap();
    }
    std::fs::create_dir_all(dir.path().join("uplink")).unwrap();
    std::fs::write(
        dir.path().join("uplink/city.state"),
        "{\"cursor\":0,\"scanned\":0}",
    )
    .unwrap();
    let (ok, out) = run(&[
        "uplink",
        "resend",
        "--data-dir",
        d,
        "--platform",
        "city",
        "--from",
        "2026-03-01",
        "--to",
        "31.03.2026",
        "--operator",
        "op",
        "--reason",
        "r",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("--to `31.03.2026`"), "{out}");
    let (ok, out) = run(&[
        "uplink",
        "resend",
        "--data-dir",
        d,
        "--platform",
        "town",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-01",
        "--operator",
        "op",
        "--reason",
        "r",
    ]);
    assert!(!ok && out.contains("`town`"), "{out}");
    let (ok, out) = run(&[
        "uplink",
        "resend",
        "--data-dir",
        d,
        "--platform",
        "city",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-01",
        "--operator",
        "op",
        "--reason",
        "platform lost data",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2026-03-01 00:00:00 – 2026-03-02 00:00:00") && out.contains("ledger event 2"),
        "{out}"
    );
    let ev = ecogate::ledger::LedgerReader::open(dir.path())
        .unwrap()
        .event(2)
        .unwrap()
        .unwrap();
    match ev.body {
        EventBody::UplinkResend(r) => {
            assert_eq!(r.platform, "city");
            assert_eq!(r.operator, "op");
            assert_eq!(r.reason, "platform lost data");
            assert_eq!(r.from, at_day("2026-03-01", "00:00:00"));
            assert_eq!(r.to, at_day("2026-03-02", "00:00:00"));
        }
        b => panic!("{b:?}"),
    }
    let (ok, out) = run(&["uplink", "status", "--data-dir", d, "--days", "3"]);
    assert!(ok && out.contains("city: captured 0"), "{out}");
}

/// Every serial the ledger's uploadable passes stand for.
fn ledger_serials(dir: &Path) -> Vec<String> {
    let reader = ecogate::ledger::LedgerReader::open(dir).unwrap();
    let c = cfg(dir);
    let mut v: Vec<String> = reader
        .events_after(0, 1_000_000)
        .unwrap()
        .iter()
        .filter_map(|e| ecogate::regulator::outbox::pass_record(e, ORGAN, &c.lane_gates))
        .map(|r| r.serial)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_every_fault_the_mock_injects() {
    for fault in [
        "503",
        "timeout",
        "slow",
        "token-expiry",
        "reset",
        "reset-after",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let m = mock().await;
        let t0 = Utc::now() - CDuration::hours(2);
        for i in 0..24 {
            let mut body = pass(
                &format!("豫H{:05}", i / 2),
                if i % 2 == 0 {
                    Direction::In
                } else {
                    Direction::Out
                },
                true,
            );
            let mut photos = vec![];
            if i % 3 == 0 {
                if let EventBody::PassAttempt(p) = &mut body {
                    p.photo_kinds = vec!["head".into()];
                }
                photos.push(Bytes::from(format!("\u{FF}jpeg {i}").into_bytes()));
            }
            ledger
                .append(body, photos, t0 + CDuration::seconds(i))
                .await
                .unwrap();
        }
        match fault {
            "503" => m.fail_next(6),
            "timeout" | "slow" => m.set_delay(Duration::from_millis(300)),
            // Slow enough that the drain outlives the first token.
            "token-expiry" => {
                m.set_token_ttl(Duration::from_millis(100));
                m.set_delay(Duration::from_millis(40));
            }
            "reset" => m.reset_next(6),
            // Injected once records flow (a reset login would only be a login again).
            "reset-after" => m.set_delay(Duration::from_millis(30)),
            _ => unreachable!(),
        }
        let mut c = cfg(dir.path());
        c.window = 4;
        c.request_timeout = if fault == "timeout" {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        let up =
            RegulatorUplink::start_with(c, profile(), &m.url(), "gate", "s3cret", ledger.clone())
                .unwrap();
        if fault == "timeout" {
            until("timeouts", &up, &m, |k, _| k.failed >= 2).await;
            m.set_delay(Duration::ZERO);
        }
        if fault == "reset-after" {
            until("first records", &up, &m, |_, s| s.records.len() >= 2).await;
            m.reset_after_next(6);
        }
        until(fault, &up, &m, |k, _| drained(k) && k.captured == 24).await;
        up.stop().await.unwrap();
        let s = m.stats();
        let k = status(dir.path());
        let mut got = serials(&s);
        got.sort();
        assert_eq!(got, ledger_serials(dir.path()), "{fault}: each pass once");
        assert_eq!(s.photos.len(), 8, "{fault}: {}", m.summary());
        assert!(s.rejections.is_empty(), "{fault}: {:?}", s.rejections);
        assert!(k.contains("completeness 100.0%"), "{fault}: {k}");
        for d in &s.duplicate_serials {
            assert!(
                got.contains(d),
                "{fault}: a duplicate with a new serial {d}"
            );
        }
        match fault {
            "503" | "reset" => {
                assert!(s.faults_served >= 6, "{fault}: {}", m.summary());
                assert!(!k.contains("failed 0 "), "{fault}: {k}");
            }
            "timeout" => assert!(!k.contains("failed 0 "), "{fault}: {k}"),
            "slow" => assert!(k.contains("failed 0 "), "{fault}: slow is not failed: {k}"),
            "token-expiry" => assert!(s.logins >= 2, "{fault}: {}", m.summary()),
            "reset-after" => {
                assert_eq!(s.faults_served, 6, "{fault}: {}", m.summary());
                // Whatever the mock took before the reset came again with its serial.
                assert!(
                    s.duplicate_records + s.duplicate_photos >= 1,
                    "{fault}: {}",
                    m.summary()
                );
            }
            _ => unreachable!(),
        }
    }
}
