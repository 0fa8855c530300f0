//! Site health over loopback: a Modbus module that falls silent raises `device_offline` (and
//! clears it when it answers again); a UPS on battery raises `ups_on_battery`; battery low puts
//! every lane into its power-loss state. Every alarm is a ledger event.

mod support;

use ecogate::gateway::Gateway;
use ecogate::ledger::store::LedgerReader;
use ecogate_drivers::sim::modbus::{Fault, Framing, RelaySim, SimConfig};
use ecogate_drivers::sim::ups::UpsSim;
use std::time::{Duration, Instant};

fn alarms(dir: &std::path::Path) -> Vec<(String, String, bool)> {
    let r = LedgerReader::open(&dir.join("ledger")).unwrap();
    r.events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "alarm")
        .map(|e| {
            let v = serde_json::to_value(&e.body).unwrap();
            (
                v["source"].as_str().unwrap_or("").to_string(),
                v["code"].as_str().unwrap_or("").to_string(),
                v["active"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

async fn wait(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_and_ups_alarms_reach_the_ledger_and_battery_low_stops_the_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let (ups, ups_addr) = UpsSim::bind("127.0.0.1:0").await.unwrap();
    let site = format!(
        r#"{header}[[gates]]
id = "1"
name = "东门"
[[gates.lanes]]
id = "1-in"
direction = "in"
machine = "entry"
camera = "cam1"
barrier = "io1"
sign = "led1"
voice = "led1"
[devices.cam1]
profile = "camera/vz-ivs"
address = "ingest:cam1"
[devices.cam1.settings]
offline_after_s = 0
[devices.led1]
profile = "led/parking-0x64"
via = "cam1"
[devices.io1]
profile = "io/modbus-relay-8ch"
address = "tcp://{}"
timeout = "200ms"
poll = "50ms"
[devices.ups]
profile = "ups/megatec-q1"
address = "serial-over-tcp://{ups_addr}"
[devices.ups.settings]
poll_interval_ms = 100
[storage]
data_dir = "ledger"
[http]
listen = "127.0.0.1:0"
"#,
        relay.addr(),
        header = support::site_header("health"),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, site).unwrap();
    let plan = ecogate::config::load(&path).unwrap();
    let gw = Gateway::start(plan, None, None).await.unwrap();
    assert!(gw.device_errors.is_empty(), "{:?}", gw.device_errors);
    let io = gw.devices.handles["io1"].health.clone();
    wait("io1 online", 5, || io.borrow().online).await;

    relay.set_fault(Fault::Silent);
    wait("device_offline raised", 10, || {
        alarms(dir.path()).contains(&("device:io1".into(), "device_offline".into(), true))
    })
    .await;
    relay.set_fault(Fault::None);
    wait("device_offline cleared", 10, || {
        alarms(dir.path()).contains(&("device:io1".into(), "device_offline".into(), false))
    })
    .await;

    ups.set_on_battery(true);
    wait("ups_on_battery raised", 10, || {
        alarms(dir.path()).contains(&("device:ups".into(), "ups_on_battery".into(), true))
    })
    .await;
    ups.set_battery_low(true);
    let status = gw.lanes[0].status.clone();
    wait("lane in power-loss mode", 10, || {
        status.borrow().state == "power_loss"
    })
    .await;
    // The lane reacts to the UPS event directly; the alarm reaches the ledger through the alarm
    // board's own task, so it may land a moment later.
    wait("ups_battery_low raised", 10, || {
        alarms(dir.path()).contains(&("device:ups".into(), "ups_battery_low".into(), true))
    })
    .await;
    assert!(ecogate::ledger::verify::verify(&dir.path().join("ledger"))
        .unwrap()
        .ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_contact_ups_on_an_io_module_raises_the_same_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let lane_io = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let ups_io = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let site = format!(
        r#"{header}[[gates]]
id = "1"
name = "东门"
[[gates.lanes]]
id = "1-in"
direction = "in"
machine = "entry"
camera = "cam1"
barrier = "io1"
sign = "led1"
voice = "led1"
[devices.cam1]
profile = "camera/vz-ivs"
address = "ingest:cam1"
[devices.led1]
profile = "led/parking-0x64"
via = "cam1"
[devices.io1]
profile = "io/modbus-relay-8ch"
address = "tcp://{}"
poll = "50ms"
[devices.ups-io]
profile = "io/modbus-relay-8ch"
address = "tcp://{}"
poll = "50ms"
[devices.ups-io.settings.inputs]
ups_on_battery = {{ di = 5, polarity = "no" }}
ups_battery_low = {{ di = 6, polarity = "no" }}
[storage]
data_dir = "ledger"
[http]
listen = "127.0.0.1:0"
"#,
        lane_io.addr(),
        ups_io.addr(),
        header = support::site_header("dry"),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, site).unwrap();
    let plan = ecogate::config::load(&path).unwrap();
    let gw = Gateway::start(plan, None, None).await.unwrap();
    assert!(gw.device_errors.is_empty(), "{:?}", gw.device_errors);
    let h = gw.devices.handles["ups-io"].health.clone();
    wait("ups-io online", 5, || h.borrow().online).await;
    ups_io.set_input(5, true);
    wait("ups_on_battery raised", 10, || {
        alarms(dir.path()).contains(&("device:ups-io".into(), "ups_on_battery".into(), true))
    })
    .await;
    ups_io.set_input(6, true);
    let status = gw.lanes[0].status.clone();
    wait("lane in power-loss mode", 10, || {
        status.borrow().state == "power_loss"
    })
    .await;
    ups_io.set_input(5, false);
    ups_io.set_input(6, false);
    wait("ups_on_battery cleared", 10, || {
        alarms(dir.path()).contains(&("device:ups-io".into(), "ups_on_battery".into(), false))
    })
    .await;
}

// ---- The periodic health checks, each driven through its real inputs into the alarm board
// ---- and the ledger.

use ecogate::alarm::AlarmBoard;
use ecogate::config::plan::HealthPlan;
use ecogate::health::{Activity, ClockSource, HealthChecks};
use ecogate::ledger::Ledger;
use ecogate::runtime::LaneStatus;
use ecogate_drivers::{DeviceEvent, DeviceHealth, EventKind, Mass};
use std::sync::Arc;
use tokio::sync::watch;

fn fast_plan() -> HealthPlan {
    HealthPlan {
        camera_silent_after: Duration::from_millis(600),
        scale_stuck_after: Duration::from_millis(600),
        backlog_alarm: 10,
        clock_drift_alarm: Duration::from_secs(5),
        disk_reserve_days: 30,
    }
}

fn checks(dir: &std::path::Path) -> (HealthChecks, AlarmBoard) {
    let ledger = Ledger::open(&dir.join("ledger")).unwrap();
    let board = AlarmBoard::new(ledger.clone());
    let mut c = HealthChecks::new(fast_plan(), ledger, 24);
    c.every = Duration::from_millis(50);
    c.clock_every = Duration::from_millis(100);
    // A disk with plenty of room unless a test says otherwise.
    c.space = Arc::new(|_: &std::path::Path| Ok(u64::MAX / 2));
    (c, board)
}

fn weight(dev: &str, kg: i64) -> DeviceEvent {
    DeviceEvent {
        device: dev.into(),
        at: chrono::Utc::now(),
        kind: EventKind::Weight {
            mass: Mass::from_kg(kg),
            stable: true,
            raw: bytes::Bytes::from_static(b"frame"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_online_without_plates_raises_camera_silent_until_a_plate_comes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, board) = checks(dir.path());
    let (cam_tx, cam_rx) = watch::channel(DeviceHealth::default());
    c.cameras.push(("cam1".into(), cam_rx));
    let activity = Activity::default();
    c.spawn(activity.clone(), board.spawn_recorder());

    // Offline cameras are device_offline's business, not silent.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(board.get("device:cam1", "camera_silent").is_none());
    cam_tx.send_modify(|h| h.online = true);
    wait("camera_silent raised", 5, || {
        board
            .get("device:cam1", "camera_silent")
            .is_some_and(|a| a.raised)
    })
    .await;
    activity.observe(&DeviceEvent {
        device: "cam1".into(),
        at: chrono::Utc::now(),
        kind: EventKind::Plate(ecogate_drivers::PlateRead {
            plate: "豫A12345".into(),
            color: ecogate_drivers::PlateColor::Yellow,
            confidence: 90,
            source_id: None,
            captured_at: None,
            offline_replay: false,
            images: vec![],
        }),
    });
    wait("camera_silent cleared", 5, || {
        alarms(dir.path()).contains(&("device:cam1".into(), "camera_silent".into(), false))
    })
    .await;
    assert!(alarms(dir.path()).contains(&("device:cam1".into(), "camera_silent".into(), true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_that_does_not_move_while_its_lane_is_busy_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, board) = checks(dir.path());
    let (lane_tx, lane_rx) = watch::channel(LaneStatus::default());
    c.scales.push(("scale1".into(), vec![lane_rx]));
    let activity = Activity::default();
    c.spawn(activity.clone(), board.spawn_recorder());

    // A healthy scale: a vehicle drives on and the reading changes.
    activity.observe(&weight("scale1", 0));
    lane_tx.send_modify(|s| s.plate = Some("豫A11111".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    activity.observe(&weight("scale1", 30_000));
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(board.get("device:scale1", "scale_stuck").is_none());
    lane_tx.send_modify(|s| s.plate = None);
    activity.observe(&weight("scale1", 0));

    // Idle with identical frames: nothing to say.
    for _ in 0..10 {
        activity.observe(&weight("scale1", 0));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert!(board.get("device:scale1", "scale_stuck").is_none());

    // Next vehicle: identical frames the whole time it is in the lane.
    lane_tx.send_modify(|s| s.plate = Some("豫A22222".into()));
    for _ in 0..10 {
        activity.observe(&weight("scale1", 0));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    wait("scale_stuck raised", 5, || {
        board
            .get("device:scale1", "scale_stuck")
            .is_some_and(|a| a.raised)
    })
    .await;
    activity.observe(&weight("scale1", 25_000));
    wait("scale_stuck cleared", 5, || {
        alarms(dir.path()).contains(&("device:scale1".into(), "scale_stuck".into(), false))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_backlog_over_the_threshold_raises_and_clears() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, board) = checks(dir.path());
    let backlog = Arc::new(std::sync::atomic::AtomicU64::new(3));
    let b = backlog.clone();
    c.uplinks = Some(Arc::new(move || {
        let k = ecogate::regulator::Kpis {
            backlog: b.load(std::sync::atomic::Ordering::SeqCst),
            ..Default::default()
        };
        vec![("henan".to_string(), k)]
    }));
    c.spawn(Activity::default(), board.spawn_recorder());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(board.get("uplink:henan", "upload_backlog").is_none());
    backlog.store(11, std::sync::atomic::Ordering::SeqCst);
    wait("upload_backlog raised", 5, || {
        board
            .get("uplink:henan", "upload_backlog")
            .is_some_and(|a| a.raised && a.message.contains("11 record"))
    })
    .await;
    backlog.store(10, std::sync::atomic::Ordering::SeqCst);
    wait("upload_backlog cleared", 5, || {
        alarms(dir.path()).contains(&("uplink:henan".into(), "upload_backlog".into(), false))
    })
    .await;
}

/// A platform web server whose clock runs `skew` ahead of ours.
async fn skewed_server(skew: chrono::Duration) -> String {
    let app = axum::Router::new().route(
        "/",
        axum::routing::any(move || async move {
            let t = chrono::Utc::now() + skew;
            (
                [(
                    axum::http::header::DATE,
                    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string(),
                )],
                "ok",
            )
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    format!("http://{addr}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_drift_against_the_platforms_date_header() {
    let dir = tempfile::tempdir().unwrap();
    let (mut c, board) = checks(dir.path());
    // In step (to the second): no alarm.
    let good = ecogate::health::HttpDateClock::new(&skewed_server(chrono::Duration::zero()).await)
        .unwrap();
    let off = good.offset().await.unwrap();
    assert!(off.num_milliseconds().abs() < 1_500, "offset {off}");
    let url = skewed_server(chrono::Duration::seconds(3600)).await;
    let clock = ecogate::health::HttpDateClock::new(&url).unwrap();
    let off = clock.offset().await.unwrap();
    assert!((off.num_seconds() - 3600).abs() <= 1, "offset {off}");
    // Two platforms: the city's clock is right, the province's an hour ahead. Only the
    // province's uplink has the alarm.
    c.clocks = vec![
        ("city".into(), Arc::new(good)),
        ("province".into(), Arc::new(clock)),
    ];
    c.spawn(Activity::default(), board.spawn_recorder());
    wait("clock_drift raised", 5, || {
        board
            .get("uplink:province", "clock_drift")
            .is_some_and(|a| a.raised && a.message.contains("behind"))
    })
    .await;
    assert!(board.get("uplink:city", "clock_drift").is_none());
    assert!(alarms(dir.path()).contains(&("uplink:province".into(), "clock_drift".into(), true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_space_short_of_the_retention_period_raises_disk_space() {
    let dir = tempfile::tempdir().unwrap();
    // Real statvfs on a real directory: a few bytes of ledger need far less than is free.
    let (c, board) = checks(dir.path());
    let mut c = c;
    c.space = Arc::new(|p: &std::path::Path| ecogate::health::available_space(p));
    c.spawn(Activity::default(), board.spawn_recorder());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(board.get("site", "disk_space").is_none());

    // 1 MB of photos written today; 4 KB free is not 24 months of that.
    let dir2 = tempfile::tempdir().unwrap();
    let (mut c, board) = checks(dir2.path());
    std::fs::write(
        dir2.path().join("ledger/photos/big.jpg"),
        vec![0u8; 1 << 20],
    )
    .unwrap();
    c.space = Arc::new(|_: &std::path::Path| Ok(4096));
    c.spawn(Activity::default(), board.spawn_recorder());
    wait("disk_space raised", 5, || {
        board
            .get("site", "disk_space")
            .is_some_and(|a| a.raised && a.severity == ecogate::alarm::Severity::Critical)
    })
    .await;
    let a = board.get("site", "disk_space").unwrap();
    assert!(a.message.contains("MiB needed"), "{}", a.message);
}

#[test]
fn disk_need_is_growth_times_the_days_until_retention_frees_space() {
    use ecogate::health::disk_needed;
    let day = Duration::from_secs(86_400);
    // 10 days old, 100 MB: 10 MB/day, 720 days of retention left → 7.2 GB.
    let (rate, need) = disk_needed(100_000_000, day * 10, 730, 30);
    assert!((rate - 10_000_000.0).abs() < 1.0);
    assert_eq!(need, 7_200_000_000);
    // Older than retention: purges free what is written, keep the reserve.
    let (_, need) = disk_needed(1_000_000_000, day * 1000, 730, 30);
    assert_eq!(need, 30_000_000);
    // A new ledger counts as a day old.
    let (rate, _) = disk_needed(5_000, Duration::from_secs(60), 730, 30);
    assert_eq!(rate, 5_000.0);
}
