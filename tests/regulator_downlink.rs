//! The platform downlink over loopback: a one-lane site against the strict mock platform.
//! Vehicle checks before opening (platform control, fallback when the platform is down),
//! control measures polled into the policy (and recorded), heartbeats per barrier.

mod support;

use ecogate::gateway::Gateway;
use ecogate::ledger::store::LedgerReader;
use ecogate::registry::MemoryRegistry;
use ecogate::regulator::mock::{MockPlatform, MockVehicle};
use ecogate::regulator::profile::PlatformProfile;
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{BarrierModel, Framing, RelaySim, SimConfig};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Site {
    dir: tempfile::TempDir,
    gw: Gateway,
    mock: MockPlatform,
    cam: CameraSim,
    _relay: RelaySim,
    next_id: AtomicU64,
}

fn truck(plate: &str, stage: u8) -> VehicleFacts {
    VehicleFacts {
        plate: plate.into(),
        color: PlateColor::Yellow,
        registry: RegistryKind::Transport,
        stage: EmissionStage::China(stage),
        fuel: Fuel::Diesel,
        vehicle_type: "H11".into(),
        use_character: Some('F'),
        obd_online: None,
    }
}

/// A one-lane site whose platform `city` is the mock, with `keys` added to the platform entry
/// and `policy` under `[policy]`; the registry holds `fleet`.
async fn site(keys: &str, policy: &str, fleet: &[VehicleFacts]) -> Site {
    site_with(keys, policy, fleet, "").await
}

/// A second lane at the same gate: the exit, barrier on its camera's relay, 道闸编号 02.
const EXIT_LANE: &str = "[[gates.lanes]]\nid = \"1-out\"\ndirection = \"out\"\nmachine = \"exit\"\nbarrier_no = \"02\"\ncamera = \"cam2\"\nbarrier = \"cam2\"\nsign = \"led2\"\nvoice = \"led2\"\n[devices.cam2]\nprofile = \"camera/vz-ivs\"\naddress = \"ingest:cam2\"\n[devices.led2]\nprofile = \"led/parking-0x64\"\nvia = \"cam2\"\n";

/// [`site`] with `more` (lanes, devices) added to the site file.
async fn site_with(keys: &str, policy: &str, fleet: &[VehicleFacts], more: &str) -> Site {
    site_of("transport-control", keys, policy, fleet, more).await
}

/// [`site_with`] against a mock of the built-in profile `profile`.
async fn site_of(
    profile: &str,
    keys: &str,
    policy: &str,
    fleet: &[VehicleFacts],
    more: &str,
) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockPlatform::start(
        PlatformProfile::builtin(profile).unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let relay = RelaySim::start(
        Framing::Tcp,
        SimConfig {
            barrier: Some(BarrierModel {
                open_coil: 0,
                close_coil: 1,
                limit_open_di: 1,
                limit_closed_di: 2,
                travel: Duration::from_millis(50),
                auto_close: Some(Duration::from_millis(300)),
            }),
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let text = support::one_lane_site(
        "downlink",
        relay.addr(),
        &format!(
            // Reads of one plate a moment apart are separate vehicles here.
            "{more}[devices.cam1.settings]\ndebounce_s = 0\n[http]\nlisten = \"127.0.0.1:0\"\n[policy]\n{policy}\n[[uplinks.platforms]]\nname = \"city\"\nprofile = \"platform/{profile}\"\nurl = \"{}\"\nusername = \"gate\"\n{keys}\n",
            mock.url()
        ),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    let plan = match ecogate::config::load(&path) {
        Ok(p) => p,
        Err(d) => panic!("{d}"),
    };
    let registry = Arc::new(MemoryRegistry::new());
    for f in fleet {
        registry.insert(f.clone());
    }
    let gw = Gateway::start(plan, None, Some(registry)).await.unwrap();
    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    Site {
        dir,
        gw,
        mock,
        cam,
        _relay: relay,
        next_id: AtomicU64::new(1),
    }
}

impl Site {
    async fn read(&self, plate: &str) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let r = self.cam.vz_plate(&VzPlate::new(plate, id)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let r = LedgerReader::open(&self.dir.path().join("ledger")).unwrap();
        r.events_after(0, 10_000)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| serde_json::to_value(&e.body).unwrap())
            .collect()
    }

    /// The `n`-th (0-based) pass of `plate`, waiting for it at most `secs`.
    async fn pass(&self, plate: &str, n: usize, secs: u64) -> Value {
        wait(&format!("pass {n} of {plate}"), secs, || {
            self.events("pass_attempt")
                .into_iter()
                .filter(|p| p["plate"] == plate)
                .nth(n)
        })
        .await
    }

    /// Reads `plate` and returns its new pass.
    async fn decide(&self, plate: &str) -> Value {
        let n = self
            .events("pass_attempt")
            .iter()
            .filter(|p| p["plate"] == plate)
            .count();
        self.read(plate).await;
        self.pass(plate, n, 10).await
    }
}

async fn wait<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

const CHECK: &str = "check = true\ncheck_timeout_ms = 400\nheartbeat_secs = 0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vehicle_the_platform_controls_is_refused_with_its_reason() {
    let s = site(CHECK, "", &[truck("豫A10001", 6), truck("豫A10002", 6)]).await;
    s.mock
        .set_vehicle("豫A10001", MockVehicle::allowed("6", "B"));
    s.mock
        .set_vehicle("豫A10002", MockVehicle::allowed("6", "B"));

    // A registered 国六 truck the local policy lets in…
    let p = s.decide("豫A10001").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(
        p["check"],
        json!({"source": "platform", "platform": "city"})
    );
    s.decide("豫A10002").await;

    s.mock
        .set_vehicle("豫A10001", MockVehicle::controlled("重污染管控 禁止入场"));
    // …is refused when the platform controls it, with the platform's reason on the LED.
    let p = s.decide("豫A10001").await;
    assert_eq!(p["decision"], "deny", "{p}");
    assert_eq!(p["reason"], "platform_control");
    assert_eq!(p["reason_text"], "重污染管控 禁止入场");
    assert_eq!(p["opened"], false);
    assert_eq!(p["check"]["source"], "platform");
    assert_eq!(p["check"]["platform"], "city");
    // `reason_text` is the verdict's text, which the lane's `denied` sign shows as
    // "{plate}" / "{reason}" (the loop may clear the lane's own status right after).

    // The platform was asked with the site's codes: plate, colour code 1 (yellow), the
    // lane's 道闸编号, and the enterprise as organ (the mock checks it).
    let asked = s.mock.checks();
    assert!(
        asked
            .iter()
            .any(|c| c.plate == "豫A10001" && c.color == "1" && c.gate == "1-in"),
        "{asked:?}"
    );
    assert!(
        s.mock.stats().rejections.is_empty(),
        "{:?}",
        s.mock.stats().rejections
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_down_falls_back_to_the_registry_then_the_site_default() {
    let s = site(
        // Every check asked, however many went unanswered (the pause has its own test).
        &format!("{CHECK}\nfallback = \"registry_then_deny\"\ncheck_pause_secs = 0"),
        // Without the platform fallback an unknown vehicle would be let in.
        "unknown = \"allow_flag\"",
        &[truck("豫B20001", 6), truck("豫B20002", 3)],
    )
    .await;
    // Answers take far longer than the 400 ms the site waits.
    s.mock.set_delay(Duration::from_secs(20));

    let start = Instant::now();
    s.read("豫B20001").await;
    // Bounded well below the platform's delay: the lane did not wait for the platform.
    let p = s.pass("豫B20001", 0, 8).await;
    assert!(start.elapsed() < Duration::from_secs(8));
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(p["check"]["source"], "fallback_registry");
    let err = p["check"]["error"].as_str().unwrap_or("");
    assert!(err.contains("city") && err.contains("400 ms"), "{err}");

    // The registry still decides by the local rules: a registered 国三 truck is refused by
    // the normal-day minimum, not let through because the platform is away.
    let p = s.decide("豫B20002").await;
    assert_eq!(p["check"]["source"], "fallback_registry");
    assert_eq!(p["decision"], "deny", "{p}");
    assert_eq!(p["reason"], "normal_min_stage");

    // Unknown here and no platform answer: the site's default (deny).
    let p = s.decide("豫B29999").await;
    assert_eq!(p["decision"], "deny", "{p}");
    assert_eq!(p["reason"], "unknown_vehicle");
    assert_eq!(p["check"]["source"], "fallback_default");

    // A platform answering 503 is the same as a silent one.
    s.mock.set_delay(Duration::ZERO);
    s.mock.set_down(true);
    let p = s.decide("豫B29998").await;
    assert_eq!(p["check"]["source"], "fallback_default");
    assert!(
        p["check"]["error"].as_str().unwrap_or("").contains("503"),
        "{p}"
    );

    // Back up: the platform decides again.
    s.mock.set_down(false);
    s.mock
        .set_vehicle("豫B29997", MockVehicle::allowed("6", "B"));
    let p = s.decide("豫B29997").await;
    assert_eq!(p["check"]["source"], "platform", "{p}");
    assert!(
        ecogate::ledger::verify::verify(&s.dir.path().join("ledger"))
            .unwrap()
            .ok()
    );
}

/// While the platform does not answer, trucks should not each wait the whole timeout: after
/// three unanswered checks it is left alone for `check_pause_secs`, then asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswering_platform_is_paused_then_asked_again() {
    let plates = ["豫B30001", "豫B30002", "豫B30003", "豫B30004", "豫B30005"];
    let fleet: Vec<VehicleFacts> = plates.iter().map(|p| truck(p, 6)).collect();
    let s = site(&format!("{CHECK}\ncheck_pause_secs = 2"), "", &fleet).await;
    // Down: every request (the token and the check) gets a 503.
    s.mock.set_down(true);
    for plate in &plates[..3] {
        let p = s.decide(plate).await;
        assert_eq!(p["check"]["source"], "fallback_registry", "{p}");
        let err = p["check"]["error"].as_str().unwrap_or("");
        assert!(err.contains("503"), "{err}");
    }
    let asked = s.mock.stats().faults_served;
    assert!(asked >= 3, "each of the three was asked: {asked}");
    // Paused: decided by the fallback without asking, and the record says why.
    let paused_at = Instant::now();
    let p = s.decide(plates[3]).await;
    assert_eq!(p["check"]["source"], "fallback_registry", "{p}");
    let err = p["check"]["error"].as_str().unwrap_or("");
    assert!(err.contains("not asked"), "{err}");
    assert_eq!(
        s.mock.stats().faults_served,
        asked,
        "a paused platform was asked"
    );
    assert_eq!(p["decision"], "allow", "the registry still decides: {p}");

    // Back, and the pause over: the platform decides again.
    s.mock.set_down(false);
    s.mock
        .set_vehicle(plates[4], MockVehicle::allowed("6", "B"));
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(paused_at.elapsed())).await;
    let p = s.decide(plates[4]).await;
    assert_eq!(p["check"]["source"], "platform", "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_then_allow_lets_an_unknown_vehicle_in_for_review() {
    let s = site(
        &format!("{CHECK}\nfallback = \"registry_then_allow\""),
        "unknown = \"deny\"",
        &[],
    )
    .await;
    s.mock.set_down(true);
    let p = s.decide("豫C30001").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(p["check"]["source"], "fallback_default");
    // With the platform answering, the local `unknown = "deny"` applies again.
    s.mock.set_down(false);
    let p = s.decide("豫C30002").await;
    assert_eq!(p["check"]["source"], "platform");
    assert_eq!(p["decision"], "deny", "{p}");
    assert_eq!(p["reason"], "unknown_vehicle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_measure_refuses_a_guo4_truck_until_it_ends() {
    let s = site(
        "policy_poll_secs = 1\nheartbeat_secs = 0",
        // 国四 heavy trucks may come in on normal days here.
        "[policy.normal]\nheavy_goods = { all = 4 }",
        &[truck("豫D40004", 4), truck("豫D60006", 6)],
    )
    .await;
    let p = s.decide("豫D40004").await;
    assert_eq!(p["decision"], "allow", "{p}");

    let start = ecogate::ledger::local_time(chrono::Utc::now() - chrono::Duration::hours(1));
    let orange = json!([{ "controlLevel": "2", "responseLevel": "2", "controlStrategy": "2",
        "startTime": start, "endTime": "" }]);
    s.mock.set_policy_reply(orange.clone());
    let started = wait("the measure recorded", 10, || {
        s.events("measure_change")
            .into_iter()
            .find(|m| m["active"] == true)
    })
    .await;
    assert_eq!(started["source"], "platform:city");
    assert_eq!(started["level"], "orange");
    assert_eq!(started["detail"]["strategy"], 2);

    // 国四 heavy diesel under strategy 2 (禁行国四及以下): refused now.
    s.decide("豫D60006").await;
    let p = s.decide("豫D40004").await;
    assert_eq!(p["decision"], "deny", "{p}");
    assert_eq!(p["reason"], "strategy_2");

    // A garbled reply changes nothing: the measure stays, nothing is recorded as changed,
    // and the site is alarmed.
    let polls = s.mock.policy_queries();
    s.mock
        .set_policy_reply(json!([{ "controlLevel": "2", "controlStrategy": "9",
        "startTime": start }]));
    wait("two more policy polls", 10, || {
        (s.mock.policy_queries() >= polls + 2).then_some(())
    })
    .await;
    assert_eq!(s.events("measure_change").len(), 1);
    s.decide("豫D60006").await;
    let p = s.decide("豫D40004").await;
    assert_eq!(p["reason"], "strategy_2", "{p}");
    let alarm = wait("the garbled-policy alarm", 10, || {
        s.events("alarm")
            .into_iter()
            .find(|a| a["code"] == "platform_policy_garbled")
    })
    .await;
    assert_eq!(alarm["source"], "uplink:city");

    // The platform ends the measure: recorded, and the truck is let in again.
    s.mock.set_policy_reply(json!([]));
    let ended = wait("the measure's end recorded", 10, || {
        s.events("measure_change")
            .into_iter()
            .find(|m| m["active"] == false)
    })
    .await;
    assert_eq!(ended["level"], "orange");
    s.decide("豫D60006").await;
    let p = s.decide("豫D40004").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert!(
        ecogate::ledger::verify::verify(&s.dir.path().join("ledger"))
            .unwrap()
            .ok()
    );
}

/// The platform's measure was in force when the gateway stopped and the platform is down when
/// it starts again: the measure still refuses, and is not recorded again once the platform
/// answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_measures_survive_a_restart_while_the_platform_is_down() {
    let mut s = site(
        "policy_poll_secs = 1\nheartbeat_secs = 0",
        "[policy.normal]\nheavy_goods = { all = 4 }",
        &[truck("豫D40014", 4), truck("豫D60016", 6)],
    )
    .await;
    let start = ecogate::ledger::local_time(chrono::Utc::now() - chrono::Duration::hours(1));
    let orange = json!([{ "controlLevel": "2", "responseLevel": "2", "controlStrategy": "2",
        "startTime": start, "endTime": "" }]);
    s.mock.set_policy_reply(orange.clone());
    wait("the measure recorded", 10, || {
        s.events("measure_change")
            .into_iter()
            .find(|m| m["active"] == true)
    })
    .await;
    let p = s.decide("豫D40014").await;
    assert_eq!(p["reason"], "strategy_2", "{p}");

    // Restart on the same data dir with the platform unreachable.
    s.mock.set_down(true);
    s.gw.stop().await;
    let plan = ecogate::config::load(&s.dir.path().join("site.toml")).unwrap();
    let registry = Arc::new(MemoryRegistry::new());
    for f in [truck("豫D40014", 4), truck("豫D60016", 6)] {
        registry.insert(f);
    }
    s.gw = Gateway::start(plan, None, Some(registry)).await.unwrap();
    s.cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", s.gw.http_addr));
    s.decide("豫D60016").await;
    let p = s.decide("豫D40014").await;
    assert_eq!(p["decision"], "deny", "the restored measure refuses: {p}");
    assert_eq!(p["reason"], "strategy_2", "{p}");

    // The platform is back with the same measure: nothing new is recorded.
    let polls = s.mock.policy_queries();
    s.mock.set_down(false);
    wait("two policy polls after the platform came back", 10, || {
        (s.mock.policy_queries() >= polls + 2).then_some(())
    })
    .await;
    let changes = s.events("measure_change");
    assert_eq!(
        changes.len(),
        1,
        "recorded again after the restart: {changes:?}"
    );

    // It ends while the gateway runs: recorded once, and the truck is let in.
    s.mock.set_policy_reply(json!([]));
    wait("the measure's end recorded", 10, || {
        s.events("measure_change")
            .into_iter()
            .find(|m| m["active"] == false)
    })
    .await;
    s.decide("豫D60016").await;
    let p = s.decide("豫D40014").await;
    assert_eq!(p["decision"], "allow", "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_white_list_lets_an_unknown_vehicle_in() {
    let s = site(
        "policy_poll_secs = 1\nheartbeat_secs = 0",
        "unknown = \"deny\"",
        &[],
    )
    .await;
    let p = s.decide("豫E50001").await;
    assert_eq!(p["decision"], "deny", "{p}");
    s.mock
        .set_white_list_reply(json!([{ "cphm": "豫E50001", "cpys": "1",
        "sxsj": "2020-01-01 00:00:00", "zzsj": "2099-01-01 00:00:00", "crkbh": "" }]));
    let change = wait("the white list recorded", 10, || {
        s.events("measure_change")
            .into_iter()
            .find(|m| m["measure"] == "platform:city white_list")
    })
    .await;
    assert_eq!(change["detail"]["added"], json!(["豫E50001 yellow"]));
    s.decide("豫E59999").await;
    let p = s.decide("豫E50001").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(p["reason"], "white_list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reach_the_platform_for_every_barrier_and_never_block_the_lane() {
    let s = site_with(
        "heartbeat_secs = 1",
        "unknown = \"allow_flag\"",
        &[],
        EXIT_LANE,
    )
    .await;
    let barrier = s.gw.plan.lanes[0].spec.barrier_no.clone();
    assert_eq!(s.gw.plan.lanes[1].spec.barrier_no, "02");
    let io = s.gw.devices.handles["io1"].health.clone();
    wait("io1 online", 5, || io.borrow().online.then_some(())).await;
    let (beats, exit) = wait("three heartbeats per barrier", 10, || {
        let h = s.mock.heartbeats();
        let a = h.get(&barrier).filter(|b| b.len() >= 3).cloned()?;
        let b = h.get("02").filter(|b| b.len() >= 3).cloned()?;
        Some((a, b))
    })
    .await;
    // The entry's relay module answers: "0" (normal). The exit's barrier is its camera, which
    // has pushed nothing yet: "1" (fault) for both barrier and camera.
    assert_eq!(beats.last().map(|b| b.barrier.as_str()), Some("0"));
    let last = exit.last().unwrap();
    assert_eq!((last.barrier.as_str(), last.camera.as_str()), ("1", "1"));
    // Never two in one burst: they come once per period.
    for w in beats.windows(2) {
        assert!(w[1].at > w[0].at + Duration::from_millis(500));
    }
    let reports = s.mock.gate_reports();
    assert!(
        reports.iter().any(|r| r["gateCodeB"] == barrier.as_str()),
        "{reports:?}"
    );

    // The platform goes away: heartbeats fail and are counted; the lane goes on deciding.
    s.mock.set_down(true);
    wait("a failed heartbeat counted", 10, || {
        s.gw.downlinks[0]
            .stats()
            .heartbeat_failures
            .gt(&0)
            .then_some(())
    })
    .await;
    let p = s.decide("豫F60001").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert!(p.get("check").is_none(), "no check configured: {p}");

    // Prometheus sees the same counters, and the uplink's, labelled by platform.
    let stats = s.gw.downlinks[0].stats();
    let metrics = reqwest::get(format!("http://{}/metrics", s.gw.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{site=\"downlink\",platform=\"city\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("ecogate_downlink_heartbeats_total") >= stats.heartbeats);
    assert!(value("ecogate_downlink_heartbeats_total") >= 2);
    assert!(value("ecogate_downlink_heartbeat_failures_total") >= 1);
    // The uplink families are there for the platform (value() fails on a missing line).
    for name in [
        "ecogate_uplink_acknowledged_total",
        "ecogate_uplink_failed_total",
        "ecogate_uplink_backlog",
        "ecogate_uplink_oldest_pending_seconds",
    ] {
        value(name);
    }
}

#[test]
fn bad_downlink_keys_are_named_with_their_place() {
    let dir = tempfile::tempdir().unwrap();
    let text = support::one_lane_site(
        "bad",
        "127.0.0.1:5020".parse().unwrap(),
        "[[uplinks.platforms]]\nname = \"city\"\nprofile = \"platform/transport-control\"\nurl = \"http://127.0.0.1:1\"\ncheck = true\ncheck_timeout_ms = 50\nfallback = \"maybe\"\n[[uplinks.platforms]]\nname = \"province\"\nprofile = \"platform/transport-control\"\nurl = \"http://127.0.0.1:2\"\ncheck = true\nfallback = \"registry_then_allow\"\n",
    );
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |needle: &str| lines.iter().position(|l| l.starts_with(needle)).unwrap() + 1;
    let path = dir.path().join("site.toml");
    std::fs::write(&path, &text).unwrap();
    let e = match ecogate::config::load(&path) {
        Ok(_) => panic!("a site with bad downlink keys loaded"),
        Err(d) => d.to_string(),
    };
    assert!(
        e.contains(&format!(
            "site.toml:{}:20: error: check_timeout_ms = 50",
            line_of("check_timeout_ms")
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "site.toml:{}:12: error: unknown fallback `maybe`",
            line_of("fallback")
        )),
        "{e}"
    );
    assert!(
        e.contains("registry_then_deny"),
        "the help lists the names: {e}"
    );
    assert!(
        e.contains("platform `province` has another fallback than `city`"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_checking_platforms_the_first_usable_answer_decides() {
    let province = MockPlatform::start(
        PlatformProfile::builtin("transport-control").unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let s = site(
        &format!(
            "{CHECK}\n[[uplinks.platforms]]\nname = \"province\"\nprofile = \"platform/transport-control\"\nurl = \"{}\"\nusername = \"gate\"\n{CHECK}",
            province.url()
        ),
        "",
        &[truck("豫G70001", 6)],
    )
    .await;
    // The city platform fails at once; the province answers.
    s.mock.set_down(true);
    province.set_vehicle("豫G70001", MockVehicle::allowed("6", "B"));
    let p = s.decide("豫G70001").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(
        p["check"],
        json!({"source": "platform", "platform": "province"})
    );

    // The city platform hangs; the province's control decides without waiting for it.
    s.mock.set_down(false);
    s.mock.set_delay(Duration::from_secs(20));
    province.set_vehicle("豫G70002", MockVehicle::controlled("省级管控"));
    let p = s.decide("豫G70002").await;
    assert_eq!(p["reason"], "platform_control", "{p}");
    assert_eq!(p["reason_text"], "省级管控");
    assert_eq!(p["check"]["platform"], "province");

    // Neither answers: the fallback names both.
    province.set_down(true);
    let p = s.decide("豫G70001").await;
    assert_eq!(p["check"]["source"], "fallback_registry", "{p}");
    let err = p["check"]["error"].as_str().unwrap_or("");
    assert!(err.contains("city:") && err.contains("province:"), "{err}");
}

/// The kaifeng check keys: photos published under a URL (the profile's encoding).
const KF_CHECK: &str =
    "check = true\ncheck_timeout_ms = 400\nphoto_url_base = \"https://evidence.example.cn/p\"";

/// The accepted kaifeng pass uploads of `plate`.
fn kf_passes(m: &MockPlatform, plate: &str) -> Vec<Value> {
    m.stats()
        .records
        .into_iter()
        .filter(|r| r["license"] == plate)
        .collect()
}

fn checks_of(m: &MockPlatform, plate: &str) -> usize {
    m.checks().iter().filter(|c| c.plate == plate).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaifeng_check_decides_and_its_serial_numbers_the_upload() {
    let s = site_of(
        "kaifeng",
        &format!("{KF_CHECK}\nfallback = \"registry_then_deny\""),
        "",
        &[
            truck("豫D40001", 6),
            truck("豫D40002", 6),
            truck("豫D40003", 6),
        ],
        "",
    )
    .await;
    s.mock
        .set_vehicle("豫D40001", MockVehicle::allowed("6", "B"));

    // Allowed: the platform's answer, with the serial it issued, is on the pass…
    let p = s.decide("豫D40001").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(p["check"]["source"], "platform");
    assert_eq!(p["check"]["platform"], "city");
    let serial = p["check"]["serial"].as_str().unwrap().to_string();
    assert!(s.mock.stats().issued_serials.contains(&serial), "{serial}");
    // …and the upload goes under it without asking the platform again.
    let up = wait("the pass upload", 15, || {
        kf_passes(&s.mock, "豫D40001").into_iter().next()
    })
    .await;
    assert_eq!(up["serialNum"], serial.as_str());
    assert_eq!(up["passStatus"], "A");
    assert_eq!(checks_of(&s.mock, "豫D40001"), 1, "one check per pass");
    let asked = s.mock.checks();
    assert!(
        asked
            .iter()
            .any(|c| c.plate == "豫D40001" && c.color == "1" && c.gate == "1-in"),
        "{asked:?}"
    );

    // Denied: refused with the platform's passReason on the LED; nothing is uploaded.
    s.mock
        .set_vehicle("豫D40002", MockVehicle::controlled("国四车辆 禁止通行"));
    let p = s.decide("豫D40002").await;
    assert_eq!(p["decision"], "deny", "{p}");
    assert_eq!(p["reason"], "platform_control");
    assert_eq!(p["reason_text"], "国四车辆 禁止通行");
    assert_eq!(p["opened"], false);
    assert_eq!(p["check"]["source"], "platform");

    // Platform down: the registry decides, the fallback is recorded with no serial, and the
    // upload asks the platform for one once it is back.
    s.mock.set_down(true);
    let p = s.decide("豫D40003").await;
    assert_eq!(p["decision"], "allow", "{p}");
    assert_eq!(p["check"]["source"], "fallback_registry");
    assert!(p["check"].get("serial").is_none(), "{p}");
    assert!(
        p["check"]["error"].as_str().unwrap_or("").contains("503"),
        "{p}"
    );
    s.mock.set_down(false);
    let up = wait("the fallback pass upload", 30, || {
        kf_passes(&s.mock, "豫D40003").into_iter().next()
    })
    .await;
    let issued = s.mock.stats().issued_serials;
    assert!(
        issued.iter().any(|i| up["serialNum"] == i.as_str()),
        "{up} under an issued serial"
    );
    assert_eq!(checks_of(&s.mock, "豫D40003"), 1, "asked once, at upload");
    assert!(
        s.mock.stats().rejections.is_empty(),
        "{:?}",
        s.mock.stats().rejections
    );
    assert!(
        ecogate::ledger::verify::verify(&s.dir.path().join("ledger"))
            .unwrap()
            .ok()
    );
}

#[test]
fn kaifeng_and_hebei_downlink_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let text = support::one_lane_site(
        "bad",
        "127.0.0.1:5020".parse().unwrap(),
        "[[uplinks.platforms]]\nname = \"kf\"\nprofile = \"platform/kaifeng\"\nurl = \"http://127.0.0.1:1\"\nphoto_url_base = \"https://e.example/p\"\ncheck = true\nheartbeat_secs = 30\n[[uplinks.platforms]]\nname = \"hb\"\nprofile = \"platform/hebei\"\nurl = \"http://127.0.0.1:2\"\nphoto_url_base = \"https://e.example/p\"\ncheck = true\npolicy_poll_secs = 60\n",
    );
    let lines: Vec<&str> = text.lines().collect();
    let nth_line = |needle: &str, n: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with(needle))
            .nth(n)
            .unwrap()
            .0
            + 1
    };
    let path = dir.path().join("site.toml");
    std::fs::write(&path, &text).unwrap();
    let e = match ecogate::config::load(&path) {
        Ok(_) => panic!("a site with bad downlink keys loaded"),
        Err(d) => d.to_string(),
    };
    // kaifeng: the check is fine, heartbeats are not described.
    assert!(
        e.contains(&format!(
            "site.toml:{}:18: error: `heartbeat_secs` is not supported for the kaifeng shape",
            nth_line("heartbeat_secs", 0)
        )),
        "{e}"
    );
    assert!(
        !e.contains(&format!("site.toml:{}:", nth_line("check = true", 0))),
        "check = true is valid for kaifeng: {e}"
    );
    // hebei: no vehicle check and no policy query.
    assert!(
        e.contains(&format!(
            "site.toml:{}:9: error: platform profile `platform/hebei` is of the hebei shape: no vehicle check is described for that shape",
            nth_line("check = true", 1)
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "site.toml:{}:20: error: `policy_poll_secs` is not supported for the hebei shape",
            nth_line("policy_poll_secs", 0)
        )),
        "{e}"
    );
}
