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
    assert!(alarms(dir.path()).contains(&("device:ups".into(), "ups_battery_low".into(), true)));
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
