//! The regulator uplink against the strict mock platform, over a real ledger, on 127.0.0.1.

use bytes::Bytes;
use chrono::{DateTime, Duration as CDuration, Utc};
use ecogate::ledger::{
    BarrierMode, Decision, Direction, EventBody, Ledger, ManualRelease, PassAttempt,
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
    RegulatorUplink::start_with(
        cfg(dir),
        profile(),
        &m.url(),
        "gate",
        "s3cret",
        ledger.clone(),
    )
    .unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_delivers_all_once_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock().await;
    m.set_down(true);
    let up = start(dir.path(), &ledger, &m);
    let t0 = Utc::now() - CDuration::hours(3);
    let n = 30;
    // Recorded during the outage, each vehicle in then out; times out of seq order on purpose
    // (backfill-like) so "oldest first" is about pass time, not ledger order.
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
    // Oldest first by pass time.
    let times: Vec<String> = s
        .records
        .iter()
        .map(|r| field(r, "date").to_string())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
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
    let up = start(dir.path(), &ledger, &m);
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
    for i in 0..12 {
        ledger
            .append(
                pass(&format!("豫C{i:05}"), Direction::In, true),
                vec![],
                t0 + CDuration::seconds(i),
            )
            .await
            .unwrap();
    }
    let up = start(dir.path(), &ledger, &m);
    until("some records", &up, &m, |k, _| k.acknowledged >= 3).await;
    m.expire_tokens();
    until("drain", &up, &m, |k, _| drained(k)).await;
    let s = m.stats();
    assert!(s.token_refusals >= 1, "{}", m.summary());
    assert!(s.logins >= 2, "{}", m.summary());
    assert_eq!(s.records.len(), 12);
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
    let up = start(dir.path(), &ledger, &m);
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
        s.duplicate_records <= 1,
        "at most the record in flight is resent"
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
