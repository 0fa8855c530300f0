//! Sparkplug B edge node against a real Mosquitto: births, report by exception, device
//! death and rebirth, NCMD rebirth (and a malformed NCMD), the NDEATH Will of a killed gateway,
//! bdSeq persisted across restarts and advanced on reconnect, and the config keys.

mod mqtt_support;
mod support;

use ecogate::lane::engine::Input;
use ecogate::runtime::{LaneHandle, LaneStatus};
use ecogate::uplink::sparkplug::proto::{DataType, Metric, MetricValue, Payload};
use ecogate::uplink::sparkplug::{Sources, SparkplugConfig, SparkplugNode, BDSEQ_FILE, REBIRTH};
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{BarrierModel, Fault, Framing, RelaySim, SimConfig};
use mqtt_support::*;
use prost::Message as _;
use rumqttc::QoS;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One decoded Sparkplug message of the node under test.
#[derive(Debug, Clone)]
struct Sp {
    kind: String,
    device: Option<String>,
    payload: Payload,
}

impl Sp {
    fn metric(&self, name: &str) -> Option<&Metric> {
        self.payload
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
    }
    fn long(&self, name: &str) -> Option<u64> {
        match self.metric(name)?.value {
            Some(MetricValue::LongValue(v)) => Some(v),
            _ => None,
        }
    }
    fn bool(&self, name: &str) -> Option<bool> {
        self.metric(name)?.as_bool()
    }
    fn string(&self, name: &str) -> Option<&str> {
        match self.metric(name)?.value.as_ref()? {
            MetricValue::StringValue(s) => Some(s),
            _ => None,
        }
    }
}

/// Reads the node's messages in order and checks what must hold for every one of them: a
/// protobuf payload with a timestamp, `seq` 0 on NBIRTH and one more than the message before
/// on everything else (mod 256), no `seq` on NDEATH, births only for born nodes.
struct Watch {
    sub: Sub,
    prefix: String,
    node: String,
    next_seq: Option<u64>,
    births: usize,
    alive: BTreeSet<String>,
    log: Vec<Sp>,
}

impl Watch {
    async fn new(group: &str, node: &str, port: u16) -> Watch {
        let sub = Sub::on_port(
            port,
            &format!("{group}-sub"),
            false,
            &[format!("spBv1.0/{group}/#")],
        )
        .await;
        Watch {
            sub,
            prefix: format!("spBv1.0/{group}/"),
            node: node.into(),
            next_seq: None,
            births: 0,
            alive: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    async fn next(&mut self) -> Sp {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = tokio::time::timeout_at(deadline, self.sub.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("no Sparkplug message within 20 s; seen {:#?}", self.tail())
                })
                .expect("subscriber stopped");
            let rest = m.topic.strip_prefix(&self.prefix).expect("our group");
            let parts: Vec<&str> = rest.split('/').collect();
            if parts[0] == "NCMD" || parts[0] == "DCMD" {
                continue; // the test's own commands
            }
            assert_eq!(parts.get(1), Some(&self.node.as_str()), "{}", m.topic);
            assert!(
                !m.retain,
                "Sparkplug messages are never retained: {}",
                m.topic
            );
            let payload = Payload::decode(m.payload.as_slice())
                .unwrap_or_else(|e| panic!("{}: not a Sparkplug payload: {e}", m.topic));
            let sp = Sp {
                kind: parts[0].to_string(),
                device: parts.get(2).map(|d| d.to_string()),
                payload,
            };
            assert!(
                sp.payload.timestamp.is_some(),
                "{} has no timestamp",
                m.topic
            );
            match sp.kind.as_str() {
                "NDEATH" => {
                    assert_eq!(sp.payload.seq, None, "NDEATH carries no seq");
                    self.next_seq = None;
                    self.alive.clear();
                }
                "NBIRTH" => {
                    assert_eq!(sp.payload.seq, Some(0), "NBIRTH seq is 0");
                    self.births += 1;
                    self.next_seq = Some(1);
                    self.alive.clear();
                }
                _ => {
                    let want = self
                        .next_seq
                        .unwrap_or_else(|| panic!("{} before any NBIRTH", m.topic));
                    assert_eq!(
                        sp.payload.seq,
                        Some(want),
                        "seq of {} after {:#?}",
                        m.topic,
                        self.tail()
                    );
                    self.next_seq = Some((want + 1) % 256);
                    let dev = sp.device.clone().unwrap_or_default();
                    match sp.kind.as_str() {
                        "DBIRTH" => {
                            self.alive.insert(dev);
                        }
                        "DDEATH" => {
                            assert!(self.alive.remove(&dev), "DDEATH of unborn {dev}");
                        }
                        "DDATA" => assert!(self.alive.contains(&dev), "DDATA of dead {dev}"),
                        _ => {}
                    }
                }
            }
            self.log.push(sp.clone());
            return sp;
        }
    }

    async fn wait(&mut self, what: &str, pred: impl Fn(&Sp) -> bool) -> Sp {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not seen in 30 s; last messages {:#?}",
                self.tail()
            );
            let sp = self.next().await;
            if pred(&sp) {
                return sp;
            }
        }
    }

    /// A message already seen that `pred` accepts, or the next one that it accepts.
    async fn seen_or_wait(&mut self, what: &str, pred: impl Fn(&Sp) -> bool) -> Sp {
        if let Some(s) = self.log.iter().find(|s| pred(s)) {
            return s.clone();
        }
        self.wait(what, pred).await
    }

    /// The value of a string metric of `device` as a host would hold it: from the latest
    /// DBIRTH or DDATA that carried it.
    fn current(&self, device: &str, metric: &str) -> Option<String> {
        self.log
            .iter()
            .rev()
            .filter(|s| s.device.as_deref() == Some(device))
            .find_map(|s| s.metric(metric))
            .and_then(|m| match m.value.as_ref()? {
                MetricValue::StringValue(v) => Some(v.clone()),
                _ => None,
            })
    }

    /// Reads (and checks) everything that arrives within `d`.
    async fn drain(&mut self, d: Duration) -> Vec<Sp> {
        let mut out = Vec::new();
        let end = tokio::time::Instant::now() + d;
        while let Ok(s) = tokio::time::timeout_at(end, self.next()).await {
            out.push(s);
        }
        out
    }

    fn tail(&self) -> Vec<(String, Option<String>, Option<u64>, String)> {
        self.log
            .iter()
            .rev()
            .take(12)
            .map(|s| {
                (
                    s.kind.clone(),
                    s.device.clone(),
                    s.payload.seq,
                    s.payload
                        .metrics
                        .iter()
                        .map(|m| format!("{}={:?}", m.name.clone().unwrap_or_default(), m.value))
                        .collect::<Vec<_>>()
                        .join(","),
                )
            })
            .collect()
    }

    /// NBIRTH and the DBIRTHs (and DDEATHs of devices that are down) that follow it.
    async fn births(&mut self, devices: &[&str]) -> (Sp, BTreeMap<String, Sp>) {
        let nbirth = self.wait("NBIRTH", |s| s.kind == "NBIRTH").await;
        let mut dbirths = BTreeMap::new();
        while dbirths.len() < devices.len() {
            let s = self.next().await;
            assert_eq!(s.kind, "DBIRTH", "DBIRTHs follow the NBIRTH directly");
            dbirths.insert(s.device.clone().unwrap(), s);
        }
        let want: BTreeSet<String> = devices.iter().map(|d| d.to_string()).collect();
        assert_eq!(dbirths.keys().cloned().collect::<BTreeSet<_>>(), want);
        (nbirth, dbirths)
    }
}

fn ncmd(metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(1),
        metrics,
        ..Default::default()
    }
    .encode_to_vec()
}

fn rebirth_cmd() -> Vec<u8> {
    ncmd(vec![Metric {
        name: Some(REBIRTH.into()),
        datatype: Some(DataType::Boolean.code()),
        value: Some(MetricValue::BooleanValue(true)),
        ..Default::default()
    }])
}

fn relay_cfg() -> SimConfig {
    SimConfig {
        barrier: Some(BarrierModel {
            open_coil: 0,
            close_coil: 1,
            limit_open_di: 1,
            limit_closed_di: 2,
            travel: Duration::from_millis(100),
            auto_close: Some(Duration::from_millis(800)),
        }),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_births_reports_by_exception_and_rebirths_on_ncmd() {
    require_broker();
    let group = unique_site("spg");
    let site = unique_site("sp");
    let dir = tempfile::tempdir().unwrap();
    let sim = RelaySim::start(Framing::Tcp, relay_cfg()).await.unwrap();
    let text = support::one_lane_site(
        &site,
        sim.addr(),
        &format!(
            "[uplinks.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nkeep_alive = \"5s\"\nstyles = [\"sparkplug\"]\nsparkplug_group = \"{group}\"\n"
        ),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    let plan = ecogate::config::load(&path).unwrap_or_else(|d| panic!("{d}"));
    let mut w = Watch::new(&group, &site, 1883).await;
    let mut json = Sub::new(
        &format!("{site}-json"),
        false,
        &[format!("ecogate/v1/{site}/#")],
    )
    .await;
    let mut gw = ecogate::gateway::Gateway::start(plan, Some("127.0.0.1:0".parse().unwrap()), None)
        .await
        .unwrap();
    assert!(
        gw.mqtt.is_none(),
        "styles = [\"sparkplug\"] runs no JSON bridge"
    );

    let devices = ["lane-1-in", "cam1", "io1", "led1"];
    let (nbirth, dbirths) = w.births(&devices).await;
    let bdseq = nbirth.long("bdSeq").expect("NBIRTH has bdSeq");
    assert_eq!(bdseq, 0, "a fresh data directory starts at bdSeq 0");
    assert_eq!(
        nbirth.metric("bdSeq").unwrap().datatype,
        Some(4),
        "bdSeq is Int64"
    );
    assert_eq!(nbirth.bool(REBIRTH), Some(false));
    assert_eq!(nbirth.string("Properties/Site"), Some(site.as_str()));
    let head0 = nbirth
        .long("Ledger/Head Seq")
        .expect("ledger head in NBIRTH");
    let lane = &dbirths["lane-1-in"];
    assert_eq!(lane.string("State"), Some("idle"));
    assert_eq!(lane.bool("Barrier Open"), Some(false));
    assert!(
        lane.metric("Plate").unwrap().is_null == Some(true),
        "no plate yet"
    );
    let rtt = dbirths["io1"].metric("RTT").unwrap();
    assert_eq!(
        rtt.properties.as_ref().and_then(|p| p.string("engUnit")),
        Some("ms"),
        "units travel as engUnit properties"
    );

    // The relay module answers its polls: io1 is (or becomes) alive.
    if !w.alive.contains("io1") {
        w.wait("io1 DBIRTH", |s| {
            s.kind == "DBIRTH" && s.device.as_deref() == Some("io1")
        })
        .await;
    }

    // A vehicle at the camera: the camera comes alive (DBIRTH), the lane's metrics change and
    // arrive as DDATA, the ledger head as NDATA.
    // The first read wakes the camera (a push camera is offline until it pushes; the lane
    // may record that read as an exception); the second is the vehicle.
    let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
    let r = cam.vz_plate(&VzPlate::new("豫A00001", 1)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    if !w.alive.contains("cam1") {
        let c = w
            .seen_or_wait("cam1 DBIRTH", |s| {
                s.kind == "DBIRTH"
                    && s.device.as_deref() == Some("cam1")
                    && s.bool("Online") == Some(true)
            })
            .await;
        assert_eq!(c.string("Properties/Device"), Some("cam1"));
    }
    w.drain(Duration::from_millis(300)).await;
    let plate = "豫A12345";
    let r = cam.vz_plate(&VzPlate::new(plate, 2)).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let d = w
        .wait("lane DDATA with the plate", |s| {
            s.kind == "DDATA"
                && s.device.as_deref() == Some("lane-1-in")
                && s.string("Plate") == Some(plate)
        })
        .await;
    assert!(
        d.metric("Properties/Kind").is_none(),
        "DDATA carries only what changed"
    );
    // Report by exception: the decision is in this DDATA unless it equals the one before.
    let decision = w.current("lane-1-in", "Decision");
    assert!(
        matches!(decision.as_deref(), Some("allow" | "deny")),
        "{decision:?}"
    );
    w.seen_or_wait("NDATA with a new ledger head", |s| {
        s.kind == "NDATA" && s.long("Ledger/Head Seq").is_some_and(|h| h > head0)
    })
    .await;

    // The relay module stops answering: a last DDATA says offline, then DDEATH; back: DBIRTH.
    sim.set_fault(Fault::Silent);
    w.wait("io1 DDEATH", |s| {
        s.kind == "DDEATH" && s.device.as_deref() == Some("io1")
    })
    .await;
    let before = &w.log[w.log.len() - 2];
    assert!(
        before.kind == "DDATA"
            && before.device.as_deref() == Some("io1")
            && before.bool("Online") == Some(false),
        "a DDATA with Online=false precedes the DDEATH: {before:?}"
    );
    sim.set_fault(Fault::None);
    let back = w
        .wait("io1 DBIRTH again", |s| {
            s.kind == "DBIRTH" && s.device.as_deref() == Some("io1")
        })
        .await;
    assert_eq!(back.bool("Online"), Some(true));
    assert!(
        back.metric("Errors").is_some(),
        "a DBIRTH carries every metric"
    );

    // A malformed NCMD is ignored; a rebirth request gets a full set of births, same bdSeq.
    let births_before = w.births;
    let ncmd_topic = format!("spBv1.0/{group}/NCMD/{site}");
    w.sub
        .client
        .publish(&ncmd_topic, QoS::AtMostOnce, false, vec![0xff; 11])
        .await
        .unwrap();
    w.sub
        .client
        .publish(
            &ncmd_topic,
            QoS::AtMostOnce,
            false,
            b"{\"rebirth\":true}".to_vec(),
        )
        .await
        .unwrap();
    for s in w.drain(Duration::from_millis(700)).await {
        assert_ne!(s.kind, "NBIRTH", "a malformed NCMD caused a birth");
    }
    w.sub
        .client
        .publish(&ncmd_topic, QoS::AtMostOnce, false, rebirth_cmd())
        .await
        .unwrap();
    let (again, dbirths) = w.births(&devices).await;
    assert_eq!(w.births, births_before + 1);
    assert_eq!(
        again.long("bdSeq"),
        Some(bdseq),
        "a rebirth keeps the bdSeq"
    );
    assert_eq!(again.bool(REBIRTH), Some(false));
    assert_eq!(dbirths["lane-1-in"].string("Plate"), Some(plate));

    // A clean stop says NDEATH itself (with the session's bdSeq) before disconnecting.
    gw.stop().await;
    let death = w.wait("NDEATH", |s| s.kind == "NDEATH").await;
    assert_eq!(death.long("bdSeq"), Some(bdseq));
    assert!(
        std::iter::from_fn(|| json.rx.try_recv().ok())
            .next()
            .is_none(),
        "styles = [\"sparkplug\"] publishes nothing on the JSON tree"
    );
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_gateway(site_file: &std::path::Path) -> Child {
    Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_ecogate"))
            .args(["run", "--listen", "127.0.0.1:0", "--config"])
            .arg(site_file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ecogate binary"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateway_leaves_its_ndeath_and_the_next_run_takes_the_next_bdseq() {
    require_broker();
    let group = unique_site("spk");
    let site = unique_site("spk");
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{header}{lane}[storage]\ndata_dir = \"data\"\n[uplinks.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\nkeep_alive = \"2s\"\nstyles = [\"json\", \"sparkplug\"]\nsparkplug_group = \"{group}\"\nsparkplug_node = \"edge-{site}\"\n",
        header = support::site_header(&site),
        lane = one_lane(&format!("127.0.0.1:{}", free_port())),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    let node = format!("edge-{site}");
    let mut w = Watch::new(&group, &node, 1883).await;
    let mut json = Sub::new(
        &format!("{site}-json"),
        false,
        &[format!("ecogate/v1/{site}/status")],
    )
    .await;

    let child = spawn_gateway(&path);
    let (nbirth, _) = w.births(&["lane-1-in", "cam1", "io1", "led1"]).await;
    let first = nbirth.long("bdSeq").unwrap();
    // Both styles run side by side.
    json.wait_for("/status", |v| v["state"] == "online").await;
    let bdseq_file = dir.path().join("data").join(BDSEQ_FILE);
    assert_eq!(
        std::fs::read_to_string(&bdseq_file).unwrap().trim(),
        first.to_string(),
        "the bdSeq in use is on disk before the connection"
    );

    // SIGKILL: no DISCONNECT, so the broker publishes the Will: NDEATH with the same bdSeq.
    drop(child);
    let death = w.wait("NDEATH", |s| s.kind == "NDEATH").await;
    assert_eq!(
        death.long("bdSeq"),
        Some(first),
        "NDEATH matches the NBIRTH"
    );
    assert_eq!(
        death.payload.metrics.len(),
        1,
        "NDEATH carries the bdSeq only"
    );

    let child = spawn_gateway(&path);
    let (nbirth, _) = w.births(&["lane-1-in", "cam1", "io1", "led1"]).await;
    assert_eq!(
        nbirth.long("bdSeq"),
        Some((first + 1) % 256),
        "bdSeq persisted and incremented"
    );
    drop(child);
    let death = w.wait("NDEATH", |s| s.kind == "NDEATH").await;
    assert_eq!(death.long("bdSeq"), Some((first + 1) % 256));
    clear_retained(&site, &["status", "ledger/head", "lanes/1-in"]).await;
}

fn fake_lane(id: &str) -> (LaneHandle, mpsc::Receiver<Input>, watch::Sender<LaneStatus>) {
    let (tx, rx) = mpsc::channel(8);
    let (stx, srx) = watch::channel(LaneStatus {
        lane: id.into(),
        state: "idle".into(),
        ..Default::default()
    });
    (
        LaneHandle {
            id: id.into(),
            inputs: tx,
            status: srx,
        },
        rx,
        stx,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_gives_new_births_with_the_next_bdseq_and_a_stopped_lane_dies() {
    let mut broker = Broker::start();
    let group = unique_site("spr");
    let dir = tempfile::tempdir().unwrap();
    // A bdSeq left by an earlier run at the top of its range: the next one wraps to 0.
    std::fs::write(dir.path().join(BDSEQ_FILE), "255\n").unwrap();
    let (lane, _inputs, status) = fake_lane("A/1");
    let (_h1, h1) = watch::channel(ecogate_drivers::DeviceHealth {
        online: true,
        ..Default::default()
    });
    let mut mqtt = config("unused");
    mqtt.port = broker.port;
    mqtt.client_id = format!("{group}-node");
    // Slower than the subscriber's 100 ms, so it has subscribed again before the births.
    mqtt.reconnect_delay = Duration::from_millis(1500);
    let cfg = SparkplugConfig {
        mqtt,
        group: group.clone(),
        node: "n1".into(),
    };
    let mut w = Watch::new(&group, "n1", broker.port).await;
    let ledger_dir = tempfile::tempdir().unwrap();
    let ledger = ecogate::ledger::Ledger::open(ledger_dir.path()).unwrap();
    let board = ecogate::alarm::AlarmBoard::new(ledger.clone());
    let alarms = board.spawn_recorder();
    let node = SparkplugNode::start(
        cfg,
        "s",
        Sources {
            lanes: vec![lane],
            devices: vec![("scale#1".into(), h1)],
            ledger: Some(ledger.clone()),
            alarms: Some(board.clone()),
            uplinks: None,
        },
        dir.path(),
    )
    .await
    .unwrap();
    // Topic characters are replaced in device ids.
    let devices = ["lane-A_1", "scale_1"];
    let (nbirth, _) = w.births(&devices).await;
    assert_eq!(nbirth.long("bdSeq"), Some(0), "255 wraps to 0");

    status.send_modify(|s| s.state = "deciding".into());
    let d = w.wait("DDATA", |s| s.kind == "DDATA").await;
    assert_eq!(d.string("State"), Some("deciding"));
    assert_eq!(d.payload.metrics.len(), 1, "only what changed: {d:?}");

    // A UPS on battery: the node's power and alarm metrics, and the device's own alarm count.
    assert_eq!(nbirth.bool("Power/On Battery"), Some(false));
    alarms
        .send(ecogate::health::Alarm::device(
            "scale#1",
            "ups_on_battery",
            "",
            true,
        ))
        .unwrap();
    let n = w
        .wait("NDATA on battery", |s| {
            s.kind == "NDATA" && s.bool("Power/On Battery") == Some(true)
        })
        .await;
    assert!(
        n.metric("Ledger/Head Seq").is_some(),
        "the alarm is a ledger event"
    );
    let dev = w
        .seen_or_wait("device alarm count", |s| {
            s.kind == "DDATA"
                && s.device.as_deref() == Some("scale_1")
                && s.metric("Alarms/Active").is_some()
        })
        .await;
    assert!(matches!(
        dev.metric("Alarms/Active").unwrap().value,
        Some(MetricValue::IntValue(1))
    ));

    broker.down();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.up();
    let (nbirth, _) = w.births(&devices).await;
    assert_eq!(
        nbirth.long("bdSeq"),
        Some(1),
        "a new connection takes the next bdSeq"
    );
    assert_eq!(
        std::fs::read_to_string(node.bdseq_path()).unwrap().trim(),
        "1"
    );

    // The lane task ends: DDEATH.
    drop(status);
    w.wait("lane DDEATH", |s| {
        s.kind == "DDEATH" && s.device.as_deref() == Some("lane-A_1")
    })
    .await;
    node.shutdown().await;
    let death = w.wait("NDEATH", |s| s.kind == "NDEATH").await;
    assert_eq!(death.long("bdSeq"), Some(1));
}

fn load_err(tail: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}{}[uplinks.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n{tail}",
        support::site_header("cfg"),
        one_lane("127.0.0.1:5020")
    );
    let p = dir.path().join("site.toml");
    std::fs::write(&p, &text).unwrap();
    match ecogate::config::load(&p) {
        Ok(_) => panic!("accepted:\n{tail}"),
        Err(d) => d.to_string(),
    }
}

fn line_of(tail: &str, needle: &str) -> usize {
    let text = format!(
        "{}{}[uplinks.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
        support::site_header("cfg"),
        one_lane("127.0.0.1:5020")
    );
    text.lines().count() + tail.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn sparkplug_config_errors_point_at_the_key() {
    let tail = "styles = [\"json\", \"spb\"]\n";
    let e = load_err(tail);
    assert!(
        e.contains(&format!("site.toml:{}:19", line_of(tail, "styles")))
            && e.contains("unknown MQTT style `spb`"),
        "{e}"
    );
    let tail = "styles = [\"sparkplug\"]\nsparkplug_group = \"a/b\"\n";
    let e = load_err(tail);
    assert!(
        e.contains(&format!("site.toml:{}:", line_of(tail, "sparkplug_group")))
            && e.contains("`a/b`"),
        "{e}"
    );
    let tail = "sparkplug_node = \"n\"\n";
    let e = load_err(tail);
    assert!(
        e.contains(&format!("site.toml:{}:1", line_of(tail, "sparkplug_node")))
            && e.contains("only used with the sparkplug style"),
        "{e}"
    );
    let e = load_err("styles = []\n");
    assert!(e.contains("no MQTT publishing style"), "{e}");

    // Defaults: JSON only; with sparkplug, group `ecogate` and the site id as node.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("site.toml");
    let base = format!(
        "{}{}[uplinks.mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n",
        support::site_header("cfg"),
        one_lane("127.0.0.1:5020")
    );
    std::fs::write(&p, &base).unwrap();
    let m = ecogate::config::load(&p).unwrap().mqtt.unwrap();
    assert!(m.json && m.sparkplug.is_none());
    std::fs::write(&p, format!("{base}styles = [\"json\", \"sparkplug\"]\n")).unwrap();
    let m = ecogate::config::load(&p).unwrap().mqtt.unwrap();
    let sp = m.sparkplug.clone().unwrap();
    assert!(m.json);
    assert_eq!((sp.group.as_str(), sp.node.as_str()), ("ecogate", "cfg"));
    let cfg = SparkplugConfig::from_plan(&m, "cfg").unwrap().unwrap();
    assert_eq!(cfg.mqtt.client_id, "ecogate-cfg-spb", "its own client id");
}

#[test]
fn every_metric_is_documented_with_its_type_and_unit() {
    use ecogate::uplink::sparkplug::metrics;
    let doc = std::fs::read_to_string("docs/mqtt.md").unwrap();
    let facts = metrics::NodeFacts::default();
    let all = metrics::node_points(&facts, &[])
        .into_iter()
        .chain(metrics::lane_points(&LaneStatus::default(), "L", &[]))
        .chain(metrics::device_points(&Default::default(), "d", &[]));
    for p in all {
        let unit = p.unit.map(|u| format!(" {u} ")).unwrap_or(" ".into());
        let row = format!("| `{}` | {:?} |{unit}|", p.name, p.datatype);
        assert!(doc.contains(&row), "docs/mqtt.md lacks the row {row}");
    }
    for name in ["bdSeq", REBIRTH] {
        assert!(doc.contains(&format!("| `{name}` |")), "{name}");
    }
}
