//! The kaifeng (开封 中科九州) and hebei (河北 一体化) shapes and the auth kinds, against their strict
//! mocks over a real ledger on 127.0.0.1.

use bytes::Bytes;
use chrono::{Duration as CDuration, Utc};
use clap::Parser;
use ecogate::ledger::{BarrierMode, Decision, Direction, EventBody, Ledger, PassAttempt, Weighing};
use ecogate::regulator::mock::{MockPlatform, MockStats};
use ecogate::regulator::profile::PlatformProfile;
use ecogate::regulator::transport_control::SiteFacts;
use ecogate::regulator::{request_resend, Credentials, Kpis, OutboxConfig, RegulatorUplink};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor};
use ecogate_drivers::Mass;
use serde_json::{json, Value};
use sha2::Digest;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const ORGAN: &str = "91410200MA0002";
const PHOTO_BASE: &str = "https://evidence.example.cn/photos";

async fn mock(profile: &PlatformProfile) -> MockPlatform {
    let m = MockPlatform::start(profile.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    m.require_credentials("gate", "s3cret");
    m.require_organ(ORGAN);
    m
}

fn cfg(dir: &Path, window: usize) -> OutboxConfig {
    let mut c = OutboxConfig::new(
        "prov",
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
    c.window = window;
    c.photo_url_base = Some(PHOTO_BASE.into());
    c
}

fn creds(secret: &str) -> Credentials {
    Credentials {
        username: "gate".into(),
        password: "s3cret".into(),
        secret: secret.into(),
    }
}

fn start(
    dir: &Path,
    ledger: &Ledger,
    m: &MockPlatform,
    p: &PlatformProfile,
    secret: &str,
) -> RegulatorUplink {
    RegulatorUplink::start_with_credentials(
        cfg(dir, 4),
        p.clone(),
        &m.url(),
        creds(secret),
        ledger.clone(),
    )
    .unwrap()
}

struct PassSpec {
    plate: String,
    dir: Direction,
    color: PlateColor,
    stage: EmissionStage,
    fuel: Fuel,
}

fn pass(s: &PassSpec) -> EventBody {
    EventBody::PassAttempt(PassAttempt {
        lane: if s.dir == Direction::In {
            "east-in"
        } else {
            "east-out"
        }
        .into(),
        gate: Some("east".into()),
        direction: s.dir,
        plate: s.plate.clone(),
        color: s.color,
        decision: Decision::Allow,
        reason: "test".into(),
        reason_text: String::new(),
        barrier: BarrierMode::Auto,
        opened: true,
        stage: Some(s.stage),
        fuel: Some(s.fuel),
        registry: None,
        photo_kinds: vec!["head".into(), "body".into()],
        read_id: None,
        check: None,
    })
}

fn weighing(plate: &str, kg: i64, cargo: &str) -> EventBody {
    EventBody::Weighing(Weighing {
        lane: "east-in".into(),
        scale: "s1".into(),
        plate: plate.into(),
        color: PlateColor::Yellow,
        gross: Some(Mass::from_kg(kg + 15_000)),
        tare: Some(Mass::from_kg(15_000)),
        net: Some(Mass::from_kg(kg)),
        cargo: Some(cargo.into()),
        direction: Some(Direction::In),
        pass_ref: None,
    })
}

fn spec(plate: &str, dir: Direction) -> PassSpec {
    PassSpec {
        plate: plate.into(),
        dir,
        color: PlateColor::Yellow,
        stage: EmissionStage::China(6),
        fuel: Fuel::Diesel,
    }
}

/// Appends a pass with two distinct photos; returns the sha256 of its head photo.
async fn add_pass(ledger: &Ledger, s: &PassSpec, at: chrono::DateTime<Utc>, n: usize) -> String {
    let mut head = ecogate_drivers::sim::camera::fake_jpeg(600);
    head[5] = (n % 251) as u8;
    head[6] = (n / 251) as u8;
    let mut body = head.clone();
    body[7] = 0x55;
    let sha = hex::encode(sha2::Sha256::digest(&head));
    ledger
        .append(pass(s), vec![Bytes::from(head), Bytes::from(body)], at)
        .await
        .unwrap();
    sha
}

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

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

fn kaifeng() -> PlatformProfile {
    PlatformProfile::builtin("kaifeng").unwrap()
}

fn hebei() -> PlatformProfile {
    PlatformProfile::builtin("hebei").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaifeng_drain_uses_platform_serials_and_sends_cargo_after_its_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = kaifeng();
    let m = mock(&p).await;
    let t0 = Utc::now() - CDuration::hours(3);
    let mut heads = HashMap::new();
    let mut n = 0;
    // 8 vehicles: in, weighing with cargo, out.
    for v in 0..8 {
        let plate = format!("豫B1000{v}");
        let t = t0 + CDuration::minutes(10 * v);
        n += 1;
        let h = add_pass(&ledger, &spec(&plate, Direction::In), t, n).await;
        heads.insert((plate.clone(), "A"), h);
        ledger
            .append(
                weighing(&plate, 30_000 + v * 10, "煤"),
                vec![],
                t + CDuration::minutes(2),
            )
            .await
            .unwrap();
        n += 1;
        let h = add_pass(
            &ledger,
            &spec(&plate, Direction::Out),
            t + CDuration::minutes(5),
            n,
        )
        .await;
        heads.insert((plate.clone(), "B"), h);
    }
    let up = start(dir.path(), &ledger, &m, &p, "");
    until("drain", &up, &m, |k, s| drained(k) && s.cargo.len() == 8).await;
    let st = m.stats();
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    assert_eq!(st.records.len(), 16, "every pass exactly once");
    assert_eq!(st.duplicate_records, 0);
    let issued: HashSet<&str> = st.issued_serials.iter().map(String::as_str).collect();
    assert_eq!(issued.len(), 16, "one serial asked for per pass");
    let mut serial_of = HashMap::new();
    for r in &st.records {
        let serial = s(r, "serialNum");
        assert!(
            issued.contains(serial),
            "{serial} was not issued by the platform"
        );
        let key = (
            s(r, "license").to_string(),
            if s(r, "passStatus") == "A" { "A" } else { "B" },
        );
        assert_eq!(s(r, "imageType"), if key.1 == "A" { "1" } else { "2" });
        assert_eq!(
            s(r, "imageUrl"),
            format!("{PHOTO_BASE}/{}.jpg", heads[&key])
        );
        assert_eq!(s(r, "gateCode"), if key.1 == "A" { "01" } else { "02" });
        assert_eq!(s(r, "companyCode"), ORGAN);
        serial_of.insert(key, serial.to_string());
    }
    for c in &st.cargo {
        let plate = s(c, "license").to_string();
        assert_eq!(
            s(c, "serialNum"),
            serial_of[&(plate.clone(), "A")],
            "cargo of {plate} under its entry's serial"
        );
        assert_eq!(s(c, "cargoWeightUnit"), "吨（T）");
        assert!(s(c, "cargoWeight").starts_with("30."), "{c}");
    }
    assert_eq!(up.kpis().cargo_acknowledged, 8);
    // The serials are in the outbox journal; a resend after a restart reuses them.
    up.stop().await.unwrap();
    let journal = std::fs::read_to_string(dir.path().join("uplink/prov.ids")).unwrap();
    for serial in serial_of.values() {
        assert!(journal.contains(serial.as_str()), "{serial} not persisted");
    }
    m.duplicate_replies(true);
    request_resend(
        &ledger,
        "prov",
        t0 - CDuration::minutes(1),
        Utc::now(),
        "ops",
        "platform lost data",
    )
    .await
    .unwrap();
    let up = start(dir.path(), &ledger, &m, &p, "");
    until("resend", &up, &m, |k, _| k.resent == 16 && k.backlog == 0).await;
    let st2 = m.stats();
    assert_eq!(
        st2.issued_serials.len(),
        16,
        "no new serial asked for on resend"
    );
    let resent: HashSet<&str> = st2.duplicate_serials.iter().map(String::as_str).collect();
    let first: HashSet<&str> = serial_of.values().map(String::as_str).collect();
    assert_eq!(resent, first, "every pass resent under its first serial");
    assert!(
        st2.rejections.iter().all(|r| r.contains("流水号重复")),
        "{:?}",
        st2.rejections
    );
    assert_eq!(st2.records.len(), 16);
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaifeng_retry_after_a_lost_answer_reuses_the_issued_serial() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = kaifeng();
    let m = mock(&p).await;
    m.lose_pass_answers(2);
    let t0 = Utc::now() - CDuration::minutes(30);
    add_pass(&ledger, &spec("豫B20001", Direction::In), t0, 1).await;
    let up = start(dir.path(), &ledger, &m, &p, "");
    until("drain", &up, &m, |k, _| drained(k)).await;
    let st = m.stats();
    assert_eq!(
        st.issued_serials.len(),
        1,
        "the retries reuse the serial: {:?}",
        st.issued_serials
    );
    assert_eq!(st.records.len(), 1);
    assert_eq!(st.duplicate_serials, vec![st.issued_serials[0].clone(); 2]);
    assert!(up.kpis().failed >= 2);
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hebei_exits_echo_their_entry_through_id_and_lone_exits_go_unpaired() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = hebei();
    let m = mock(&p).await;
    m.require_secret("client-secret");
    let t0 = Utc::now() - CDuration::hours(2);
    let mut n = 0;
    for v in 0..6 {
        let plate = format!("冀F3000{v}");
        let t = t0 + CDuration::minutes(7 * v);
        n += 1;
        add_pass(&ledger, &spec(&plate, Direction::In), t, n).await;
        n += 1;
        add_pass(
            &ledger,
            &spec(&plate, Direction::Out),
            t + CDuration::minutes(20),
            n,
        )
        .await;
    }
    // An exit whose entry was never recorded.
    add_pass(
        &ledger,
        &spec("冀F39999", Direction::Out),
        t0 + CDuration::minutes(3),
        99,
    )
    .await;
    let up = start(dir.path(), &ledger, &m, &p, "client-secret");
    until("drain", &up, &m, |k, _| drained(k)).await;
    let st = m.stats();
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    assert_eq!(st.records.len(), 13);
    assert_eq!(st.unpaired_exits, 1, "the lone exit is sent, unpaired");
    let entries: Vec<&Value> = st
        .records
        .iter()
        .filter(|r| r.get("carInTime").is_some())
        .collect();
    let exits: Vec<&Value> = st
        .records
        .iter()
        .filter(|r| r.get("carOutTime").is_some())
        .collect();
    assert_eq!((entries.len(), exits.len()), (6, 7));
    let mut ids = HashSet::new();
    for e in &exits {
        let plate = s(e, "carPlate");
        if plate == "冀F39999" {
            assert!(e.get("throughId").is_none());
            continue;
        }
        let id = s(e, "throughId");
        assert!(id.starts_with("TH"), "exit of {plate} unpaired: {e}");
        assert!(ids.insert(id.to_string()), "throughId {id} used twice");
        assert!(s(e, "factoryHeadPic").starts_with(PHOTO_BASE));
        assert_eq!(s(e, "exportGateNumber"), "02");
    }
    for e in &entries {
        assert!(s(e, "entryBodyPic").ends_with(".jpg"));
        assert_eq!(s(e, "carPalteColor"), "1");
    }
    // Each exit's throughId is the one the journal holds for that plate's entry.
    up.stop().await.unwrap();
    let journal = std::fs::read_to_string(dir.path().join("uplink/prov.ids")).unwrap();
    let mut entry_ids: HashMap<String, String> = HashMap::new();
    for l in journal.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["acked"]["direction"] == json!("in") {
            entry_ids.insert(
                s(&v, "plate").into(),
                v["acked"]["through_id"].as_str().unwrap().into(),
            );
        }
    }
    for e in &exits {
        if let Some(id) = e.get("throughId") {
            assert_eq!(id.as_str().unwrap(), entry_ids[s(e, "carPlate")]);
        }
    }
    // A resend echoes the same throughIds (the mock refuses an id it never issued).
    request_resend(
        &ledger,
        "prov",
        t0 - CDuration::minutes(1),
        Utc::now(),
        "ops",
        "check",
    )
    .await
    .unwrap();
    let up = start(dir.path(), &ledger, &m, &p, "client-secret");
    until("resend", &up, &m, |k, _| k.resent == 13 && k.backlog == 0).await;
    let st2 = m.stats();
    assert!(st2.rejections.is_empty(), "{:?}", st2.rejections);
    assert_eq!(st2.records.len(), 13);
    assert_eq!(st2.duplicate_records, 13);
    up.stop().await.unwrap();
}

async fn token_expiry_mid_drain(p: PlatformProfile, secret: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let m = mock(&p).await;
    if !secret.is_empty() {
        m.require_secret(secret);
    }
    let t0 = Utc::now() - CDuration::hours(5);
    for i in 0..40 {
        let plate = format!("豫C5{i:04}");
        add_pass(
            &ledger,
            &spec(&plate, Direction::In),
            t0 + CDuration::minutes(i),
            i as usize,
        )
        .await;
    }
    m.set_delay(Duration::from_millis(5));
    let up = start(dir.path(), &ledger, &m, &p, secret);
    until("some records", &up, &m, |_, s| s.records.len() >= 5).await;
    m.expire_tokens();
    until("more records", &up, &m, |_, s| s.records.len() >= 20).await;
    m.expire_tokens();
    until("drain", &up, &m, |k, _| drained(k)).await;
    let st = m.stats();
    assert_eq!(st.records.len(), 40, "nothing lost");
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    assert!(
        st.logins >= 3,
        "logged in again after each expiry: {}",
        st.logins
    );
    assert!(st.token_refusals >= 1);
    assert!(up.kpis().logins >= 3);
    up.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaifeng_token_expiry_mid_drain_loses_nothing() {
    token_expiry_mid_drain(kaifeng(), "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hebei_token_expiry_mid_drain_loses_nothing() {
    token_expiry_mid_drain(hebei(), "cs").await;
}

/// Every plate colour × direction (kaifeng) and every colour, stage and fuel (hebei) goes
/// through the strict mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_code_table_value_is_accepted_by_the_strict_mocks() {
    let mut stages: Vec<EmissionStage> = (0..=7).map(EmissionStage::China).collect();
    stages.extend([EmissionStage::Electric, EmissionStage::Unknown]);
    for (p, secret) in [(kaifeng(), ""), (hebei(), "cs")] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let m = mock(&p).await;
        if !secret.is_empty() {
            m.require_secret(secret);
        }
        let t0 = Utc::now() - CDuration::hours(8);
        let mut n = 0usize;
        let mut combos = Vec::new();
        for c in PlateColor::ALL {
            for d in [Direction::In, Direction::Out] {
                combos.push((c, d));
            }
        }
        let rows = combos.len().max(stages.len()).max(Fuel::ALL.len());
        for i in 0..rows {
            let (color, dir) = combos[i % combos.len()];
            let sp = PassSpec {
                plate: format!("豫D{i:05}"),
                dir,
                color,
                stage: stages[i % stages.len()],
                fuel: Fuel::ALL[i % Fuel::ALL.len()],
            };
            n += 1;
            add_pass(&ledger, &sp, t0 + CDuration::minutes(i as i64), n).await;
        }
        let up = start(dir.path(), &ledger, &m, &p, secret);
        until("drain", &up, &m, |k, _| drained(k)).await;
        let st = m.stats();
        assert!(st.rejections.is_empty(), "{}: {:?}", p.name, st.rejections);
        assert_eq!(st.records.len(), rows);
        let colour_key = if p.name == "kaifeng" {
            "licenseColor"
        } else {
            "carPalteColor"
        };
        let seen: HashSet<&str> = st.records.iter().map(|r| s(r, colour_key)).collect();
        assert_eq!(seen.len(), 7, "{}: all seven colours: {seen:?}", p.name);
        if p.name == "hebei" {
            let stages_seen: HashSet<&str> =
                st.records.iter().map(|r| s(r, "dischargeStage")).collect();
            assert_eq!(stages_seen.len(), 10);
            let fuels: HashSet<&str> = st.records.iter().map(|r| s(r, "carFuel")).collect();
            assert_eq!(fuels.len(), 14);
        } else {
            let dirs: HashSet<&str> = st.records.iter().map(|r| s(r, "passStatus")).collect();
            assert_eq!(dirs, HashSet::from(["A", "B"]));
        }
        up.stop().await.unwrap();
    }
}

async fn post(url: &str, headers: &[(&str, &str)], body: Value) -> Value {
    let mut r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mocks_refuse_wrong_codes_and_foreign_ids() {
    // kaifeng
    let p = kaifeng();
    let m = mock(&p).await;
    let login = post(
        &format!("{}/transport/login", m.url()),
        &[],
        json!({"companyCode": ORGAN, "companynum": "gate", "companypassword": "s3cret"}),
    )
    .await;
    let token = login["data"]["token"].as_str().unwrap().to_string();
    let check = |color: &str, status: &str| {
        json!({"license": "豫B1", "companyCode": ORGAN, "licenseColor": color,
               "passStatus": status, "gateCode": "01"})
    };
    let url = format!("{}/transport/check", m.url());
    let ok = post(&url, &[("token", &token)], check("1", "A")).await;
    assert_eq!(ok["success"], json!(true), "{ok}");
    for (c, st) in [("9", "A"), ("1", "C"), ("蓝", "A")] {
        let r = post(&url, &[("token", &token)], check(c, st)).await;
        assert_eq!(r["success"], json!(false), "{c}/{st} accepted: {r}");
    }
    let r = post(&url, &[("token", "forged")], check("1", "A")).await;
    assert!(
        r["message"].as_str().unwrap().contains("Token验证不通过"),
        "{r}"
    );
    let pass = |serial: &str| {
        json!({"serialNum": serial, "companyCode": ORGAN, "gateCode": "01", "license": "豫B1",
               "licenseColor": "1", "passStatus": "A", "gateSignal": "0",
               "passTime": "2026-01-01 08:00:00", "imageNo": "0", "imageType": "1",
               "imageUrl": "", "imageRecordTime": "2026-01-01 08:00:00"})
    };
    let purl = format!("{}/transport/record/pass", m.url());
    let r = post(&purl, &[("token", &token)], pass("KF999999999999")).await;
    assert_eq!(
        r["success"],
        json!(false),
        "a serial the platform never issued: {r}"
    );
    let serial = ok["data"]["serialNum"].as_str().unwrap();
    let r = post(&purl, &[("token", &token)], pass(serial)).await;
    assert_eq!(r["success"], json!(true), "{r}");
    let mut wrong = pass(serial);
    wrong["imageType"] = json!("2");
    let r = post(&purl, &[("token", &token)], wrong).await;
    assert_eq!(r["success"], json!(false), "imageType 2 on an entry: {r}");

    // hebei
    let p = hebei();
    let m = mock(&p).await;
    m.require_secret("cs");
    let form = format!(
        "username=gate&password={}",
        ecogate::regulator::auth::md5_hex("s3cret")
    );
    let tok: Value = reqwest::Client::new()
        .post(format!("{}/api/api-auth/oauth/user/passEncToken", m.url()))
        .header("Client_id", "ecogate")
        .header("Client_secret", "cs")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap();
    assert_eq!(tok["code"], json!("10000"), "{tok}");
    let bearer = format!("Bearer {}", tok["data"]["access_token"].as_str().unwrap());
    let up = format!(
        "{}/api/api-low-emission/access/upload-control-vehicles",
        m.url()
    );
    let exit = |stage: &str, fuel: &str, color: &str, through: Option<&str>| {
        let mut v = json!({"exportNumber": "02", "exportGateNumber": "02",
            "carOutTime": "2026-01-01 09:00:00", "factoryHeadPic": "", "factoryBodyPic": "",
            "carPlate": "冀F1", "carPalteColor": color, "dischargeStage": stage, "carFuel": fuel,
            "networkingStatus": "1"});
        if let Some(t) = through {
            v["throughId"] = json!(t);
        }
        v
    };
    for (st, f, c) in [("8", "B", "1"), ("6", "K", "1"), ("6", "B", "7")] {
        let r = post(&up, &[("Authorization", &bearer)], exit(st, f, c, None)).await;
        assert_ne!(r["code"], json!("10000"), "{st}/{f}/{c} accepted: {r}");
    }
    let r = post(
        &up,
        &[("Authorization", &bearer)],
        exit("6", "B", "1", Some("TH-never")),
    )
    .await;
    assert_ne!(r["code"], json!("10000"), "an unissued throughId: {r}");
    let r = post(
        &up,
        &[("Authorization", "Bearer forged")],
        exit("6", "B", "1", None),
    )
    .await;
    assert_eq!(r["code"], json!("401"), "{r}");
    let r = post(
        &up,
        &[("Authorization", &bearer)],
        exit("6", "B", "1", None),
    )
    .await;
    assert_eq!(r["code"], json!("10000"), "{r}");
    assert_eq!(m.stats().unpaired_exits, 1);
}

fn with_auth(p: &PlatformProfile, text: &str, auth: &str) -> PlatformProfile {
    let start = text.find("[auth]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let t = format!("{}{}{}", &text[..start], auth, &text[end..]);
    PlatformProfile::parse(&t, &format!("{}-variant", p.name)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_headers_and_static_tokens_are_verified_by_the_mock() {
    let kf_text = include_str!("../profiles/platform/kaifeng.toml");
    let signed = with_auth(
        &kaifeng(),
        kf_text,
        "[auth]\nkind = \"signed\"\nusername = \"companynum\"\npassword = \"companypassword\"",
    );
    let hb_text = include_str!("../profiles/platform/hebei.toml");
    let static_token = with_auth(
        &hebei(),
        hb_text,
        "[auth]\nkind = \"static_token\"\ntoken_header = \"Authorization\"\ntoken_prefix = \"Bearer \"",
    );
    for p in [signed, static_token] {
        // Right secret: drains without a single login.
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let m = mock(&p).await;
        m.require_secret("k3y-of-site");
        let t0 = Utc::now() - CDuration::hours(1);
        for i in 0..5 {
            add_pass(
                &ledger,
                &spec(&format!("豫E0000{i}"), Direction::In),
                t0 + CDuration::minutes(i),
                i as usize,
            )
            .await;
        }
        let up = start(dir.path(), &ledger, &m, &p, "k3y-of-site");
        until("drain", &up, &m, |k, _| drained(k)).await;
        let st = m.stats();
        assert_eq!(st.records.len(), 5);
        assert_eq!(st.logins, 0, "{}: no login with header auth", p.name);
        up.stop().await.unwrap();

        // Wrong secret: refused, nothing accepted, retried (not dropped).
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let m = mock(&p).await;
        m.require_secret("k3y-of-site");
        add_pass(&ledger, &spec("豫E99999", Direction::In), t0, 1).await;
        let up = start(dir.path(), &ledger, &m, &p, "wrong");
        until("refusals", &up, &m, |k, s| {
            s.token_refusals >= 2 && k.failed >= 2
        })
        .await;
        assert_eq!(m.stats().records.len(), 0);
        assert_eq!(
            up.kpis().backlog,
            1,
            "{}: still waiting, not dropped",
            p.name
        );
        up.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_control_share_goods_record_follows_its_pass() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = PlatformProfile::builtin("transport-control").unwrap();
    let m = mock(&p).await;
    let t0 = Utc::now() - CDuration::hours(2);
    for v in 0..4 {
        let plate = format!("豫A7000{v}");
        let t = t0 + CDuration::minutes(10 * v);
        add_pass(&ledger, &spec(&plate, Direction::In), t, v as usize).await;
        ledger
            .append(
                weighing(&plate, 25_500, "焦炭"),
                vec![],
                t + CDuration::minutes(1),
            )
            .await
            .unwrap();
    }
    // A weighing without a cargo name is not a cargo record.
    ledger
        .append(
            weighing("豫A70000", 1, " "),
            vec![],
            t0 + CDuration::minutes(3),
        )
        .await
        .unwrap();
    let mut c = cfg(dir.path(), 4);
    c.photo_url_base = None;
    let up = RegulatorUplink::start_with(c, p.clone(), &m.url(), "gate", "s3cret", ledger.clone())
        .unwrap();
    until("drain", &up, &m, |k, s| drained(k) && s.cargo.len() == 4).await;
    let st = m.stats();
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    let lsh: HashMap<&str, &str> = st
        .records
        .iter()
        .map(|r| (s(r, "cphm"), s(r, "lsh")))
        .collect();
    for g in &st.cargo {
        assert_eq!(
            s(g, "lsh"),
            lsh[s(g, "cphm")],
            "cargo under its pass's serial: {g}"
        );
        assert_eq!(s(g, "serialNum"), s(g, "lsh"));
        assert_eq!(
            (s(g, "hwmc"), s(g, "ysl"), s(g, "ysldw")),
            ("焦炭", "25.500", "t")
        );
        assert_eq!(s(g, "qybh"), ORGAN);
    }
    let k = up.kpis();
    assert_eq!(
        (k.captured, k.acknowledged, k.cargo_acknowledged),
        (4, 4, 4)
    );
    up.stop().await.unwrap();
}

/// Killing the kaifeng uplink again and again mid-drain: every pass reaches the platform under
/// exactly one serial (a serial is on disk before the pass that carries it is sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaifeng_crashes_never_upload_a_pass_under_two_serials() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = kaifeng();
    let m = mock(&p).await;
    m.set_delay(Duration::from_millis(3));
    let t0 = Utc::now() - CDuration::hours(4);
    for i in 0..30 {
        let plate = format!("豫B6{i:04}");
        add_pass(
            &ledger,
            &spec(&plate, Direction::In),
            t0 + CDuration::minutes(i),
            i as usize,
        )
        .await;
    }
    let mut kills = 0;
    loop {
        let up = start(dir.path(), &ledger, &m, &p, "");
        tokio::time::sleep(Duration::from_millis(15 + (kills * 7) % 40)).await;
        let done = drained(&up.kpis());
        drop(up); // abort: like a crash, nothing is flushed
        if done {
            break;
        }
        kills += 1;
        assert!(kills < 300, "never drained: {}", m.summary());
    }
    let up = start(dir.path(), &ledger, &m, &p, "");
    until("drain", &up, &m, |k, _| drained(k)).await;
    let st = m.stats();
    assert!(
        kills >= 3,
        "the uplink was killed mid-drain only {kills} times"
    );
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    let plates: Vec<&str> = st.records.iter().map(|r| s(r, "license")).collect();
    let distinct: HashSet<&str> = plates.iter().copied().collect();
    assert_eq!(distinct.len(), 30);
    assert_eq!(
        plates.len(),
        30,
        "a pass was uploaded under two serials: {plates:?}"
    );
    up.stop().await.unwrap();
}

#[derive(Parser, Debug)]
struct SimWrapper {
    #[command(subcommand)]
    sim: ecogate::sim_cli::SimCommand,
}

/// `ecogate sim platform --profile kaifeng|hebei` serves the shape and an uplink drains to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_platform_serves_the_kaifeng_and_hebei_shapes() {
    std::env::set_var("ECOGATE_TEST_PLATFORM_SECRET", "sim-secret");
    for (name, p) in [("kaifeng", kaifeng()), ("hebei", hebei())] {
        let cmd = SimWrapper::try_parse_from([
            "ecogate-sim",
            "platform",
            "--profile",
            name,
            "--listen",
            "127.0.0.1:0",
            "--username",
            "gate",
            "--password",
            "s3cret",
            "--organ",
            ORGAN,
            "--secret-env",
            "ECOGATE_TEST_PLATFORM_SECRET",
            "--until-eof",
        ])
        .unwrap()
        .sim;
        let (out_w, out_r) = tokio::io::duplex(1 << 16);
        let (in_w, in_r) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(cmd.run_with(out_w, BufReader::new(in_r)));
        let mut lines = BufReader::new(out_r).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let addr = first.strip_prefix("listening on ").unwrap().to_string();
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let t0 = Utc::now() - CDuration::minutes(10);
        add_pass(&ledger, &spec("豫A88888", Direction::In), t0, 1).await;
        add_pass(
            &ledger,
            &spec("豫A88888", Direction::Out),
            t0 + CDuration::minutes(1),
            2,
        )
        .await;
        let up = RegulatorUplink::start_with_credentials(
            cfg(dir.path(), 4),
            p,
            &format!("http://{addr}"),
            creds("sim-secret"),
            ledger.clone(),
        )
        .unwrap();
        let mut seen = Vec::new();
        while seen
            .iter()
            .filter(|l: &&String| l.contains("accepted record"))
            .count()
            < 2
        {
            let l = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{name}: no accepted records: {seen:?}"))
                .unwrap()
                .unwrap_or_default();
            assert!(!l.contains("refused:"), "{name}: {l}");
            seen.push(l);
        }
        assert!(seen.iter().any(|l| l.contains("豫A88888")), "{seen:?}");
        up.stop().await.unwrap();
        drop(in_w);
        task.await.unwrap().unwrap();
    }
}

/// An outage (HTTP 503 for everything) in the middle of a drain, for both shapes: the records
/// wait and all arrive once when the platform is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_mid_drain_loses_nothing_for_both_shapes() {
    for (p, secret) in [(kaifeng(), ""), (hebei(), "cs")] {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let m = mock(&p).await;
        if !secret.is_empty() {
            m.require_secret(secret);
        }
        let t0 = Utc::now() - CDuration::hours(1);
        for i in 0..10 {
            let plate = format!("豫F8{i:04}");
            add_pass(
                &ledger,
                &spec(&plate, Direction::In),
                t0 + CDuration::minutes(i),
                i as usize,
            )
            .await;
        }
        let up = start(dir.path(), &ledger, &m, &p, secret);
        until("first records", &up, &m, |_, s| !s.records.is_empty()).await;
        m.set_down(true);
        for i in 10..20 {
            let plate = format!("豫F8{i:04}");
            add_pass(
                &ledger,
                &spec(&plate, Direction::In),
                t0 + CDuration::minutes(i),
                i as usize,
            )
            .await;
        }
        until("failures", &up, &m, |k, _| k.failed >= 2).await;
        m.set_down(false);
        until("drain", &up, &m, |k, _| drained(k) && k.captured == 20).await;
        let st = m.stats();
        assert_eq!(st.records.len(), 20, "{}", p.name);
        assert!(st.rejections.is_empty(), "{}: {:?}", p.name, st.rejections);
        assert!(st.faults_served >= 2);
        up.stop().await.unwrap();
    }
}

fn weighing_as(
    plate: &str,
    kg: i64,
    dir: Option<Direction>,
    pass_ref: Option<String>,
) -> EventBody {
    EventBody::Weighing(Weighing {
        lane: "east-out".into(),
        scale: "s2".into(),
        plate: plate.into(),
        color: PlateColor::Yellow,
        gross: Some(Mass::from_kg(kg + 15_000)),
        tare: Some(Mass::from_kg(15_000)),
        net: Some(Mass::from_kg(kg)),
        cargo: Some("钢材".into()),
        direction: dir,
        pass_ref,
    })
}

/// The serial each accepted pass went under, by (plate, passStatus).
fn pass_serials(st: &MockStats) -> HashMap<(String, String), String> {
    st.records
        .iter()
        .map(|r| {
            (
                (s(r, "license").to_string(), s(r, "passStatus").to_string()),
                s(r, "serialNum").to_string(),
            )
        })
        .collect()
}

/// The serial each accepted cargo record went under, by plate and weight.
fn cargo_serial(st: &MockStats, plate: &str, weight: &str) -> Option<String> {
    st.cargo
        .iter()
        .find(|c| s(c, "license") == plate && s(c, "cargoWeight") == weight)
        .map(|c| s(c, "serialNum").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaifeng_cargo_goes_under_the_entry_or_exit_serial_and_resend_repeats_it() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let p = kaifeng();
    let m = mock(&p).await;
    let t0 = Utc::now() - CDuration::hours(5);
    let mins = |n: i64| t0 + CDuration::minutes(n);
    // 1: 进货 weighed after the entry → entry serial; 出货 weighed before the exit pass is
    //    recorded → exit serial.
    add_pass(&ledger, &spec("豫B30001", Direction::In), mins(0), 1).await;
    for (kg, dir, at) in [(20_000, Direction::In, 2), (31_000, Direction::Out, 20)] {
        ledger
            .append(
                weighing_as("豫B30001", kg, Some(dir), None),
                vec![],
                mins(at),
            )
            .await
            .unwrap();
    }
    add_pass(&ledger, &spec("豫B30001", Direction::Out), mins(25), 2).await;
    // 2: a weighing naming its pass (the exit) with no direction → that pass's serial, though
    //    it was weighed before the exit and the entry is the last pass before it.
    add_pass(&ledger, &spec("豫B30002", Direction::In), mins(30), 3).await;
    add_pass(&ledger, &spec("豫B30002", Direction::Out), mins(50), 4).await;
    let exit2 = ledger
        .reader()
        .unwrap()
        .events_after(0, 100)
        .unwrap()
        .into_iter()
        .rfind(|e| e.kind == "pass_attempt")
        .unwrap()
        .id;
    ledger
        .append(
            weighing_as("豫B30002", 32_000, None, Some(exit2)),
            vec![],
            mins(40),
        )
        .await
        .unwrap();
    // 3: 出货 and no exit recorded within two hours → the last pass before it (the entry).
    add_pass(&ledger, &spec("豫B30003", Direction::In), mins(60), 5).await;
    ledger
        .append(
            weighing_as("豫B30003", 33_000, Some(Direction::Out), None),
            vec![],
            mins(70),
        )
        .await
        .unwrap();
    // 4: 出货 weighed just now, the exit not recorded yet: the cargo waits for it.
    let now = Utc::now();
    add_pass(
        &ledger,
        &spec("豫B30004", Direction::In),
        now - CDuration::minutes(10),
        6,
    )
    .await;
    ledger
        .append(
            weighing_as("豫B30004", 34_000, Some(Direction::Out), None),
            vec![],
            now - CDuration::minutes(1),
        )
        .await
        .unwrap();

    let up = start(dir.path(), &ledger, &m, &p, "");
    until("the first records", &up, &m, |k, s| {
        k.acknowledged == 6 && s.cargo.len() == 4
    })
    .await;
    let st = m.stats();
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    assert_eq!(
        cargo_serial(&st, "豫B30004", "34.000"),
        None,
        "出货 cargo waits for its exit pass"
    );
    add_pass(&ledger, &spec("豫B30004", Direction::Out), Utc::now(), 7).await;
    until("the exit's cargo", &up, &m, |k, s| {
        drained(k) && s.cargo.len() == 5
    })
    .await;
    let st = m.stats();
    assert!(st.rejections.is_empty(), "{:?}", st.rejections);
    let serials = pass_serials(&st);
    let of = |plate: &str, ps: &str| serials[&(plate.to_string(), ps.to_string())].clone();
    assert_eq!(
        cargo_serial(&st, "豫B30001", "20.000"),
        Some(of("豫B30001", "A"))
    );
    assert_eq!(
        cargo_serial(&st, "豫B30001", "31.000"),
        Some(of("豫B30001", "B"))
    );
    assert_eq!(
        cargo_serial(&st, "豫B30002", "32.000"),
        Some(of("豫B30002", "B"))
    );
    assert_eq!(
        cargo_serial(&st, "豫B30003", "33.000"),
        Some(of("豫B30003", "A"))
    );
    assert_eq!(
        cargo_serial(&st, "豫B30004", "34.000"),
        Some(of("豫B30004", "B"))
    );
    let cargo_gate = |plate: &str, w: &str| {
        st.cargo
            .iter()
            .find(|c| s(c, "license") == plate && s(c, "cargoWeight") == w)
            .map(|c| s(c, "gateCode").to_string())
    };
    assert_eq!(
        cargo_gate("豫B30001", "31.000").as_deref(),
        Some("02"),
        "the exit's gate"
    );
    assert_eq!(up.kpis().cargo_acknowledged, 5);

    // `uplink resend` sends the cargo records again too, under the serials they went under
    // (the mock counts a cargo record with a known serial and time as a duplicate; under any
    // other serial it would be a new record).
    up.stop().await.unwrap();
    let dups = st.duplicate_records;
    request_resend(
        &ledger,
        "prov",
        t0 - CDuration::minutes(1),
        Utc::now(),
        "ops",
        "lost",
    )
    .await
    .unwrap();
    let up = start(dir.path(), &ledger, &m, &p, "");
    until("resend", &up, &m, |k, s| {
        k.resent == 7 && k.backlog == 0 && s.duplicate_records >= dups + 12
    })
    .await;
    let st2 = m.stats();
    assert!(st2.rejections.is_empty(), "{:?}", st2.rejections);
    assert_eq!(
        st2.duplicate_records,
        dups + 12,
        "7 passes and 5 cargo records"
    );
    assert_eq!(st2.cargo.len(), 5, "no cargo record under a new serial");
    assert_eq!(st2.issued_serials.len(), st.issued_serials.len());
    assert_eq!(
        up.kpis().cargo_acknowledged,
        5,
        "a resend is not a new record"
    );
    up.stop().await.unwrap();
}
