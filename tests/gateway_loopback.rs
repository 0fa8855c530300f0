//! A whole site over loopback with the real drivers: a VZ camera pushes to the gateway's
//! ingest listener, the lane decides and records, the Modbus relay simulator sees the barrier
//! pulse and reports the barrier open on its limit switch, and the LED text goes back to the
//! camera as `serialData`.

mod support;

use ecogate::gateway::Gateway;
use ecogate::ledger::store::LedgerReader;
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{Framing, RelaySim};
use std::time::{Duration, Instant};

async fn relay() -> RelaySim {
    support::barrier_relay(Duration::from_millis(800)).await
}

fn site(dir: &std::path::Path, io_addr: std::net::SocketAddr, policy: &str) -> std::path::PathBuf {
    let text = support::one_lane_site(
        "loopback",
        io_addr,
        &format!("[http]\nlisten = \"127.0.0.1:0\"\n[policy]\n{policy}\n"),
    );
    let p = dir.join("site.toml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn passes(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let r = LedgerReader::open(&dir.join("ledger")).unwrap();
    r.events_after(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "pass_attempt")
        .map(|e| serde_json::to_value(&e.body).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn camera_push_records_then_opens_the_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let sim = relay().await;
    let plan =
        ecogate::config::load(&site(dir.path(), sim.addr(), "unknown = \"allow_flag\"")).unwrap();
    let gw = Gateway::start(plan, None, None).await.unwrap();
    assert!(gw.device_errors.is_empty(), "{:?}", gw.device_errors);
    let io = gw.devices.handles["io1"].health.clone();
    wait("io1 online", || io.borrow().online.then_some(())).await;

    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    let reply = cam.vz_plate(&VzPlate::new("豫A12345", 1)).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);

    // The barrier: the sim sees a pulse (device-timed flash frame or coil 0 on) …
    wait("the barrier pulse", || {
        let flash = sim
            .frames()
            .iter()
            .any(|f| f.len() >= 12 && f[7] == 0x05 && u16::from_be_bytes([f[8], f[9]]) == 0x0200);
        (flash || sim.coil_log().iter().any(|c| c.coil == 0 && c.on)).then_some(())
    })
    .await;
    // … and the lane sees it open on the limit switch, not on the command reply.
    let status = gw.lanes[0].status.clone();
    wait("barrier_open from the limit switch", || {
        status.borrow().barrier_open.then_some(())
    })
    .await;

    // The pass is in the ledger, allowed, unregistered and so flagged.
    let p = passes(dir.path());
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0]["plate"], "豫A12345");
    assert_eq!(p[0]["decision"], "allow");
    assert_eq!(p[0]["opened"], true);

    // The LED text rides back to the camera as serialData (on a reply or the next heartbeat).
    let got_serial = {
        let start = Instant::now();
        loop {
            if cam.replies().iter().any(|r| r.body.contains("serialData")) {
                break true;
            }
            if start.elapsed() > Duration::from_secs(5) {
                break false;
            }
            let _ = cam.vz_heartbeat().await;
        }
    };
    assert!(got_serial, "no serialData in {:#?}", cam.replies());

    // Health and metrics on the same listener.
    let metrics = reqwest::get(format!("http://{}/metrics", gw.http_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ecogate_lane_records_total{site=\"loopback\",lane=\"1-in\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ecogate_device_online{site=\"loopback\",device=\"io1\"} 1"),
        "{metrics}"
    );
    let health: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("http://{}/healthz", gw.http_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(health["site"], "loopback");
    assert_eq!(health["lanes"][0]["lane"], "1-in");
    assert_eq!(health["devices"]["io1"]["online"], true);
    assert!(ecogate::ledger::verify::verify(&dir.path().join("ledger"))
        .unwrap()
        .ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_vehicle_never_moves_the_barrier() {
    let dir = tempfile::tempdir().unwrap();
    let sim = relay().await;
    let plan =
        ecogate::config::load(&site(dir.path(), sim.addr(), "require_registered = true")).unwrap();
    let gw = Gateway::start(plan, None, None).await.unwrap();
    let io = gw.devices.handles["io1"].health.clone();
    wait("io1 online", || io.borrow().online.then_some(())).await;

    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    cam.vz_plate(&VzPlate::new("豫A99999", 7)).await.unwrap();
    let p = wait("the refused pass in the ledger", || {
        let p = passes(dir.path());
        (!p.is_empty()).then_some(p)
    })
    .await;
    assert_eq!(p[0]["decision"], "deny");
    assert_eq!(p[0]["reason"], "not_registered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flash = sim.frames().iter().any(|f| f.len() >= 12 && f[7] == 0x05);
    assert!(
        !flash && !sim.coil_log().iter().any(|c| c.on),
        "the barrier moved for a refused vehicle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_modbus_register_indicator_weighs_and_a_modbus_text_sign_shows_the_weight() {
    use ecogate_drivers::sim::modbus_regs::{RegSim, RegSimConfig};
    let dir = tempfile::tempdir().unwrap();
    let relay = relay().await;
    let scale = RegSim::start(Framing::Tcp, RegSimConfig::default())
        .await
        .unwrap();
    let sign = RegSim::start(Framing::Tcp, RegSimConfig::default())
        .await
        .unwrap();
    let text = format!(
        r#"{header}[[gates]]
id = "1"
name = "东门"
[[gates.lanes]]
id = "1-in"
direction = "in"
machine = "entry-weigh"
camera = "cam1"
barrier = "io1"
scale = "scale1"
sign = "led1"
voice = "led1"
[devices.cam1]
profile = "camera/vz-ivs"
address = "ingest:cam1"
[devices.io1]
profile = "io/modbus-relay-8ch"
address = "tcp://{}"
poll = "50ms"
[devices.scale1]
profile = "scale/modbus-indicator"
address = "tcp://{}"
poll = "50ms"
[devices.led1]
profile = "led/modbus-text"
address = "tcp://{}"
[storage]
data_dir = "ledger"
[http]
listen = "127.0.0.1:0"
[policy]
unknown = "allow_flag"
"#,
        relay.addr(),
        scale.addr(),
        sign.addr(),
        header = support::site_header("regs"),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    let plan = ecogate::config::load(&path).unwrap();
    let gw = Gateway::start(plan, None, None).await.unwrap();
    assert!(gw.device_errors.is_empty(), "{:?}", gw.device_errors);
    let h = gw.devices.handles["scale1"].health.clone();
    wait("scale1 online", || h.borrow().online.then_some(())).await;
    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    cam.vz_plate(&VzPlate::new("豫A12345", 11)).await.unwrap();
    let status = gw.lanes[0].status.clone();
    wait("weighing state", || {
        (status.borrow().state == "weighing").then_some(())
    })
    .await;
    // 32,460 kg, stable bit set: registers 0-1 hold the i32 weight (hi-lo), register 2 the status.
    scale.set_registers(0, &[0, 32_460, 1]);
    wait("the weighing in the ledger", || {
        let r = LedgerReader::open(&dir.path().join("ledger")).unwrap();
        let w: Vec<_> = r
            .events_after(0, 100)
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == "weighing")
            .collect();
        (!w.is_empty()).then_some(w)
    })
    .await;
    wait("the barrier opened", || {
        (status.borrow().state == "opening").then_some(())
    })
    .await;
    // The sign shows texts.sign.weighed = ["{plate}", "{weight}kg"]: line 1 in registers 0..16,
    // line 2 in 16..32 (profile led/modbus-text), GBK two bytes per register.
    wait("32460kg on the Modbus sign", || {
        (sign.block_text(16, 32) == "32460kg").then_some(())
    })
    .await;
    assert_eq!(sign.block_text(0, 32), "豫A12345");
}
