//! Invariant 1 at runtime: a pass is durable in the ledger before any barrier command goes out.
//!
//! The whole `ecogate run` path over loopback — a VZ camera push to the ingest listener, the
//! lane task, the policy, `runtime::perform`, the Modbus relay simulator for the barrier and a
//! Modbus register sign — with the lanes' records going through a sink the test controls
//! (`Gateway::start_with_sink`), or through the real SQLite ledger made to fail mid-run.
//! Ordering is checked on the simulators' own logs against the moment the sink confirmed, not
//! against any timing threshold.

mod support;

use ecogate::gateway::Gateway;
use ecogate::lane::engine::{Input, Record};
use ecogate::ledger::store::LedgerReader;
use ecogate::ledger::Ledger;
use ecogate::runtime::RecordSink;
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{Framing, RelaySim};
use ecogate_drivers::sim::modbus_regs::{RegSim, RegSimConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The relay module's open coil (support::barrier_relay).
const OPEN_COIL: u16 = 0;

/// A one-lane entry site: camera `cam1` on the ingest listener, barrier on relay module `io1`,
/// sign and voice on a Modbus register sign `led1` (its text is readable from the simulator).
fn site(dir: &Path, io: std::net::SocketAddr, sign: std::net::SocketAddr) -> PathBuf {
    let text = format!(
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
[devices.io1]
profile = "io/modbus-relay-8ch"
address = "tcp://{io}"
poll = "50ms"
[devices.led1]
profile = "led/modbus-text"
address = "tcp://{sign}"
[storage]
data_dir = "ledger"
[http]
listen = "127.0.0.1:0"
[policy]
unknown = "allow_flag"
"#,
        header = support::site_header("durable"),
    );
    let p = dir.join("site.toml");
    std::fs::write(&p, text).unwrap();
    p
}

struct Site {
    _dir: tempfile::TempDir,
    data: PathBuf,
    relay: Arc<RelaySim>,
    sign: RegSim,
    gw: Gateway,
    cam: CameraSim,
}

impl Site {
    /// Starts the gateway with `sink(ledger)` recording the lanes' records, and waits until the
    /// relay module and the sign are online and the sign shows its idle text.
    async fn start<S, F>(relay: Arc<RelaySim>, sink: F) -> Site
    where
        S: RecordSink,
        F: FnOnce(Ledger) -> S + Send,
    {
        let dir = tempfile::tempdir().unwrap();
        let sign = RegSim::start(Framing::Tcp, RegSimConfig::default())
            .await
            .unwrap();
        let plan = ecogate::config::load(&site(dir.path(), relay.addr(), sign.addr())).unwrap();
        let gw = Gateway::start_with_sink(plan, None, None, sink)
            .await
            .unwrap();
        assert!(gw.device_errors.is_empty(), "{:?}", gw.device_errors);
        for d in ["io1", "led1"] {
            let h = gw.devices.handles[d].health.clone();
            wait(&format!("{d} online"), || h.borrow().online.then_some(())).await;
        }
        wait("the idle text on the sign", || {
            (!sign.block_text(0, 32).is_empty()).then_some(())
        })
        .await;
        let cam = CameraSim::new(format!("http://{}/ingest/vz/cam1", gw.http_addr));
        Site {
            data: dir.path().join("ledger"),
            _dir: dir,
            relay,
            sign,
            gw,
            cam,
        }
    }

    async fn push(&self, plate: &str, id: u64, image_bytes: usize) {
        let mut p = VzPlate::new(plate, id);
        p.image_bytes = image_bytes;
        let reply = self.cam.vz_plate(&p).await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    fn lane(&self) -> ecogate::runtime::LaneStatus {
        self.gw.lanes[0].status.borrow().clone()
    }

    /// Every barrier open the relay module has seen (a coil write or a device-timed pulse).
    fn opens(&self) -> Vec<Instant> {
        opens(&self.relay)
    }
}

fn opens(relay: &RelaySim) -> Vec<Instant> {
    relay
        .coil_log()
        .iter()
        .filter(|c| c.coil == OPEN_COIL && c.on)
        .map(|c| c.at)
        .collect()
}

async fn relay() -> Arc<RelaySim> {
    // Closing by itself long after the test is done: only the open command matters here.
    Arc::new(support::barrier_relay(Duration::from_secs(30)).await)
}

async fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events(data: &Path, kind: &str) -> Vec<ecogate::ledger::EventRecord> {
    LedgerReader::open(data)
        .unwrap()
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == kind)
        .collect()
}

fn plate_of(e: &ecogate::ledger::EventRecord) -> String {
    serde_json::to_value(&e.body).unwrap()["plate"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// What the slow sink saw when it confirmed a record.
#[derive(Debug, Clone)]
struct Confirmed {
    plate: String,
    seq: u64,
    at: Instant,
    /// Barrier opens the relay module had seen at that moment.
    opens_before: usize,
}

/// The real ledger behind a commit that takes `hold` longer: a slow disk.
struct SlowSink {
    ledger: Ledger,
    hold: Duration,
    relay: Arc<RelaySim>,
    confirmed: Arc<Mutex<Vec<Confirmed>>>,
}

impl RecordSink for SlowSink {
    async fn record(&self, r: &Record) -> Result<u64, String> {
        tokio::time::sleep(self.hold).await;
        let seq = self.ledger.record(r).await?;
        let plate = match r {
            Record::Pass(p) => p.plate.clone(),
            _ => String::new(),
        };
        self.confirmed.lock().unwrap().push(Confirmed {
            plate,
            seq,
            opens_before: opens(&self.relay).len(),
            at: Instant::now(),
        });
        Ok(seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_holds_the_barrier_until_the_sink_confirms() {
    let relay = relay().await;
    let confirmed = Arc::new(Mutex::new(Vec::new()));
    let site = {
        let (relay, confirmed) = (relay.clone(), confirmed.clone());
        Site::start(relay.clone(), move |ledger| SlowSink {
            ledger,
            hold: Duration::from_millis(300),
            relay,
            confirmed,
        })
        .await
    };
    let pushed = Instant::now();
    site.push("豫A12345", 1, 0).await;

    let opened = wait("the barrier open at the relay module", || {
        site.opens().first().copied()
    })
    .await;
    let c = wait("the sink's confirmation", || {
        let c = confirmed.lock().unwrap().clone();
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0].plate, "豫A12345");
    assert_eq!(
        c[0].opens_before, 0,
        "the relay module saw the barrier open before the record was confirmed"
    );
    assert!(
        opened > c[0].at,
        "barrier open at {opened:?}, record confirmed at {:?}",
        c[0].at
    );
    // Nothing else of the batch behind the record left early either: the sign got no text
    // between the push and the confirmation, and got the welcome after it.
    let writes = site.sign.writes();
    assert!(
        writes.iter().all(|w| w.at < pushed || w.at > c[0].at),
        "a sign write went out while the record was pending: {writes:?}"
    );
    assert!(writes.iter().any(|w| w.at > c[0].at));

    // The confirmed seq is the pass in the ledger, recorded as opened.
    let passes = events(&site.data, "pass_attempt");
    assert_eq!(passes.len(), 1);
    assert_eq!(passes[0].seq as u64, c[0].seq);
    assert_eq!(plate_of(&passes[0]), "豫A12345");
    let status = site.lane();
    assert_eq!((status.records, status.record_failures), (1, 0));
}

/// A ledger that refuses every record, as a full or failing disk would.
struct FailingSink {
    attempts: Arc<AtomicUsize>,
}

impl RecordSink for FailingSink {
    async fn record(&self, _r: &Record) -> Result<u64, String> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err("ledger write failed: disk I/O error".into())
    }
}

/// The lane is in `fault`, counts one failed record, shows the fault text and has raised
/// `ledger_write_failed`; then an operator reset brings it back to `idle`.
async fn assert_faulted_then_reset(site: &Site) {
    let status = site.gw.lanes[0].status.clone();
    wait("the lane in fault", || {
        (status.borrow().state == "fault").then_some(())
    })
    .await;
    assert_eq!(site.lane().record_failures, 1);
    wait("系统故障 on the sign", || {
        (site.sign.block_text(0, 32) == "系统故障").then_some(())
    })
    .await;
    let alarm = wait("alarm ledger_write_failed", || {
        site.gw.alarms.get("lane:1-in", "ledger_write_failed")
    })
    .await;
    assert!(alarm.raised);

    // The lane task survived the failure: it still takes inputs and leaves the fault on reset.
    site.gw.lanes[0].inputs.send(Input::Reset).await.unwrap();
    wait("the lane back in idle", || {
        (status.borrow().state == "idle").then_some(())
    })
    .await;
    wait("the alarm cleared", || {
        site.gw
            .alarms
            .get("lane:1-in", "ledger_write_failed")
            .filter(|a| !a.raised)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_never_moves_the_barrier_and_faults_the_lane() {
    let relay = relay().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let site = {
        let attempts = attempts.clone();
        Site::start(relay, move |_ledger| FailingSink { attempts }).await
    };
    site.push("豫A12345", 1, 0).await;
    assert_faulted_then_reset(&site).await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);

    // Long enough for a dropped command to have reached the module (it polls every 50 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        site.relay.coil_log().iter().all(|c| !c.on),
        "the barrier moved without a record: {:?}",
        site.relay.coil_log()
    );
    assert!(events(&site.data, "pass_attempt").is_empty());
    // The alarm itself went to the ledger (the board records every raise and clear).
    let alarms = events(&site.data, "alarm");
    assert!(alarms.len() >= 2, "{alarms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_ledger_failing_mid_run_withholds_the_barrier() {
    let relay = relay().await;
    let site = Site::start(relay, |ledger| ledger).await;
    let photos = site.data.join("photos");

    // First vehicle: recorded with its photos, then the barrier opens.
    site.push("豫A11111", 1, 20_000).await;
    wait("the first barrier open", || {
        (!site.opens().is_empty()).then_some(())
    })
    .await;
    let first = events(&site.data, "pass_attempt");
    assert_eq!(first.len(), 1);
    assert!(
        !first[0].photos.is_empty(),
        "the camera's photos are recorded"
    );
    site.relay.take_coil_log();

    // The photo store becomes unusable: its directory is replaced by a plain file, which no
    // amount of privilege can write a photo into (root ignores permissions, not ENOTDIR).
    let aside = site.data.join("photos.aside");
    std::fs::rename(&photos, &aside).unwrap();
    std::fs::write(&photos, b"not a directory").unwrap();
    site.push("豫A22222", 2, 20_000).await;
    assert_faulted_then_reset(&site).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        site.opens().is_empty(),
        "the barrier opened for a pass whose photos could not be stored"
    );

    // The SQLite write lock held by another process for longer than the writer's busy timeout
    // (10 s): the group commit itself fails.
    std::fs::remove_file(&photos).unwrap();
    std::fs::rename(&aside, &photos).unwrap();
    let blocker = rusqlite::Connection::open(site.data.join(ecogate::ledger::DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    site.push("豫A33333", 3, 0).await;
    let status = site.gw.lanes[0].status.clone();
    wait("the lane in fault after the busy timeout", || {
        (status.borrow().state == "fault").then_some(())
    })
    .await;
    assert!(
        site.opens().is_empty(),
        "the barrier opened while the commit could not happen"
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    assert_eq!(site.lane().record_failures, 2);
    site.gw.lanes[0].inputs.send(Input::Reset).await.unwrap();
    wait("the lane back in idle", || {
        (status.borrow().state == "idle").then_some(())
    })
    .await;

    // Once the disk is healthy again the next vehicle is recorded and let through.
    site.push("豫A44444", 4, 20_000).await;
    wait("the barrier open for the next vehicle", || {
        (!site.opens().is_empty()).then_some(())
    })
    .await;
    let plates: Vec<String> = events(&site.data, "pass_attempt")
        .iter()
        .map(plate_of)
        .collect();
    assert_eq!(plates, ["豫A11111", "豫A44444"]);
    let report = ecogate::ledger::verify(&site.data).unwrap();
    assert!(report.ok(), "{report}");
    assert!(report.photos_checked >= 2, "{report}");
}

/// The next item on a channel, within 10 s.
macro_rules! next {
    ($rx:expr, $what:expr) => {
        tokio::time::timeout(Duration::from_secs(10), $rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {}", $what))
            .unwrap_or_else(|| panic!("channel closed waiting for {}", $what))
    };
}

/// An entry machine whose author forgot `record_failed` (and has no fault state).
const NO_FAULT_MACHINE: &str = r#"
initial = "idle"
[states.idle]
entry = ["sign.show(idle)"]
on.plate = { to = "deciding" }
[states.deciding]
entry = ["policy.decide"]
on.allow = { to = "opening", do = ["ledger.record", "sign.show(allowed)"] }
on.deny = { to = "idle", do = ["ledger.record"] }
[states.opening]
entry = ["barrier.open"]
on.plate = [{ guard = "plate.same" }, { to = "deciding" }]
after."60s" = { to = "idle", do = ["vehicle.clear"] }
"#;

struct AllowAll;
impl ecogate::lane::engine::Decider for AllowAll {
    fn decide(
        &self,
        _: &ecogate::lane::engine::LaneSpec,
        _: &str,
        _: ecogate::vehicle::PlateColor,
        _: chrono::DateTime<chrono::Utc>,
    ) -> ecogate::lane::engine::Verdict {
        ecogate::lane::engine::Verdict {
            allow: true,
            reason: "ok".into(),
            text: "欢迎".into(),
            review: false,
            facts: None,
            measure: None,
            check: None,
        }
    }
    fn measure_active(&self, _: &str, _: chrono::DateTime<chrono::Utc>) -> bool {
        false
    }
}

/// Fails while `failing` is set; afterwards hands out sequence numbers.
struct SwitchSink {
    failing: Arc<std::sync::atomic::AtomicBool>,
    seq: AtomicUsize,
}

impl RecordSink for SwitchSink {
    async fn record(&self, _r: &Record) -> Result<u64, String> {
        if self.failing.load(Ordering::SeqCst) {
            return Err("ledger write failed: disk I/O error".into());
        }
        Ok(self.seq.fetch_add(1, Ordering::SeqCst) as u64 + 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_without_record_failed_still_alarms_and_shows_the_fault() {
    use ecogate::lane::builtin::Role;
    use ecogate::lane::engine::{DeviceRef, Direction, Lane, LaneSpec};
    use ecogate::runtime::{spawn_lane, CommandBus, LaneDeps};
    use ecogate_drivers::{Command, PlateRead};
    use tokio::sync::mpsc;

    let file = ecogate::config::diag::SourceFile::new("no-fault.toml", NO_FAULT_MACHINE.into());
    let machine = Arc::new(ecogate::lane::machine::load("no-fault", &file).unwrap());
    let d = |n: &str, c: Option<&str>| DeviceRef {
        device: n.into(),
        channel: c.map(String::from),
    };
    let texts = Arc::new(ecogate::config::plan::default_texts());
    let fault_lines = texts.sign["fault"].clone();
    let spec = LaneSpec {
        id: "1-in".into(),
        gate: "1".into(),
        barrier_no: "01".into(),
        direction: Direction::In,
        bindings: [
            (Role::Camera, d("cam1", None)),
            (Role::Barrier, d("io1", Some("out1"))),
            (Role::Sign, d("led1", None)),
        ]
        .into_iter()
        .collect(),
        texts,
        default_cargo: None,
        pulse_ms: 500,
    };
    let (io_tx, mut io_rx) = mpsc::channel(16);
    let (led_tx, mut led_rx) = mpsc::channel(16);
    let mut bus = CommandBus::new();
    bus.attach("io1", io_tx);
    bus.attach("led1", led_tx);
    let (alarm_tx, mut alarm_rx) = mpsc::unbounded_channel();
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let deps = LaneDeps {
        decider: Arc::new(AllowAll),
        sink: Arc::new(SwitchSink {
            failing: failing.clone(),
            seq: AtomicUsize::new(0),
        }),
        bus: Arc::new(bus),
        alarms: alarm_tx,
    };
    let (lane, _task) = spawn_lane(Lane::new(spec, machine), deps);
    let plate = |p: &str| {
        Input::Plate(PlateRead {
            plate: p.into(),
            color: ecogate_drivers::PlateColor::Yellow,
            confidence: 97,
            source_id: None,
            captured_at: None,
            offline_replay: false,
            images: vec![],
        })
    };
    let idle = next!(led_rx, "the idle text");
    assert!(matches!(idle, Command::SignShow { .. }));

    lane.inputs.send(plate("豫A12345")).await.unwrap();
    let alarm = next!(alarm_rx, "ledger_write_failed");
    assert_eq!(
        (alarm.code.as_str(), alarm.raised),
        ("ledger_write_failed", true)
    );
    let shown = next!(led_rx, "the fault text");
    assert_eq!(
        shown,
        Command::SignShow { lines: fault_lines },
        "the welcome must not be shown for an unrecorded pass"
    );
    assert!(io_rx.try_recv().is_err(), "a barrier command went out");
    wait("the failure counted", || {
        (lane.status.borrow().record_failures == 1).then_some(())
    })
    .await;

    // The disk recovers: the next vehicle is recorded, the barrier opens, the alarm clears.
    failing.store(false, Ordering::SeqCst);
    lane.inputs.send(plate("豫A67890")).await.unwrap();
    let open = next!(io_rx, "the barrier command");
    assert!(matches!(
        open,
        Command::RelayPulse { .. } | Command::BarrierOpen
    ));
    let cleared = next!(alarm_rx, "the alarm cleared");
    assert_eq!(
        (cleared.code.as_str(), cleared.raised),
        ("ledger_write_failed", false)
    );
    wait("the record counted", || {
        (lane.status.borrow().records == 1).then_some(())
    })
    .await;
    assert_eq!(lane.status.borrow().record_failures, 1);
}
