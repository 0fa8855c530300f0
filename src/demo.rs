//! `ecogate demo`: a whole simulated site on one machine, no hardware and no setup.
//!
//! The site is generated as TOML and loaded through the same two-phase loader as a real site;
//! lanes run in the same lane tasks as production, recording into a real ledger. Devices are
//! in-process stand-ins (cameras, relay/limit-switch modules, weighbridges, LED signs) that
//! speak the driver-side event and command types; trucks are agents that react to what the
//! lane does (weigh when asked, declare cargo, reverse when refused, drive through when the
//! barrier is seen open). Half-way a heavy-pollution warning (orange, strategy 2) is declared.

use crate::decide::SiteDecider;
use crate::lane::engine::{Input, Lane, Record, Release};
use crate::policy::{ControlMeasure, ListEntry, Strategy, WarningLevel};
use crate::registry::MemoryRegistry;
use crate::runtime::{self, CommandBus, LaneDeps, LaneHandle, LaneStatus, RecordSink};
use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use anyhow::Context as _;
use chrono::Utc;
use ecogate_drivers::{Command, DeviceEvent, EventKind, Mass, PlateRead};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of vehicles to run; without it the demo runs until Ctrl-C.
    #[arg(long)]
    pub vehicles: Option<u64>,
    /// Number of lanes (1–64), paired into gates: even lanes enter, odd lanes exit.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub lanes: u16,
    /// Seed of the vehicle stream; the same seed gives the same vehicles.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the ledger and the generated site file go (default: a new temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print only the summary.
    #[arg(long)]
    pub quiet: bool,
}

/// SplitMix64: tiny, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One truck of the stream.
#[derive(Debug, Clone)]
pub struct DemoVehicle {
    pub plate: String,
    pub color: PlateColor,
    /// None: not in the registry.
    pub facts: Option<VehicleFacts>,
    pub gross: Mass,
    pub black: bool,
}

const PLATE_LETTERS: &[u8] = b"ABCDEFGHJKLMNPQRSTUV";
const CITY: &[u8] = b"ABCDEFGHJKLMNPQRSU";

/// The vehicle with index `i` of the stream for `seed`: a realistic 2026 Henan mix of heavy
/// trucks (mostly 国五/国六 diesel, some gas, some electric), a few old or unregistered ones,
/// light vehicles, and a black-listed one now and then.
pub fn vehicle(seed: u64, i: u64) -> DemoVehicle {
    let mut r = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ i.wrapping_mul(0x9E37_79B9));
    r.next();
    let city = CITY[r.below(CITY.len() as u64) as usize] as char;
    let mut tail = String::new();
    for _ in 0..5 {
        if r.chance(20) {
            tail.push(PLATE_LETTERS[r.below(PLATE_LETTERS.len() as u64) as usize] as char);
        } else {
            tail.push(char::from(b'0' + r.below(10) as u8));
        }
    }
    let roll = r.below(1000);
    let (color, stage, fuel, vtype, registered) = match roll {
        0..=59 => (
            PlateColor::YellowGreen,
            EmissionStage::Electric,
            Fuel::Electric,
            "Q11",
            true,
        ),
        60..=109 => (
            PlateColor::Yellow,
            EmissionStage::China(6),
            Fuel::NaturalGas,
            "Q11",
            true,
        ),
        110..=139 => (
            PlateColor::Yellow,
            EmissionStage::China(5),
            Fuel::NaturalGas,
            "Q11",
            true,
        ),
        140..=589 => (
            PlateColor::Yellow,
            EmissionStage::China(6),
            Fuel::Diesel,
            "Q11",
            true,
        ),
        590..=809 => (
            PlateColor::Yellow,
            EmissionStage::China(5),
            Fuel::Diesel,
            "H11",
            true,
        ),
        810..=889 => (
            PlateColor::Yellow,
            EmissionStage::China(4),
            Fuel::Diesel,
            "H17",
            true,
        ),
        890..=909 => (
            PlateColor::Yellow,
            EmissionStage::China(3),
            Fuel::Diesel,
            "H17",
            true,
        ),
        910..=949 => (
            PlateColor::Blue,
            EmissionStage::China(6),
            Fuel::Petrol,
            "H31",
            true,
        ),
        _ => (
            PlateColor::Yellow,
            EmissionStage::China(5),
            Fuel::Diesel,
            "H11",
            false,
        ),
    };
    let plate = match color {
        PlateColor::YellowGreen => format!("豫{city}{}D", &tail[..5]),
        _ => format!("豫{city}{tail}"),
    };
    let gross = if vtype.starts_with("H3") {
        Mass::from_kg(3_000 + r.below(2_000) as i64)
    } else {
        Mass::from_kg(25_000 + r.below(24_000) as i64)
    };
    let black = registered && r.chance(1);
    let facts = registered.then(|| VehicleFacts {
        plate: plate.clone(),
        color,
        registry: RegistryKind::Transport,
        stage,
        fuel,
        vehicle_type: vtype.to_string(),
        use_character: Some('F'),
        obd_online: Some(true),
    });
    DemoVehicle {
        plate,
        color,
        facts,
        gross,
        black,
    }
}

/// The generated site file for `lanes` lanes.
pub fn site_toml(lanes: u16, data_dir: &Path) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"# Generated by `ecogate demo`.
[site]
id = "demo"

[enterprise]
name = "演示钢铁有限公司"
credit_code = "91350100M000100Y43"
permit_no = "91350100M000100Y43001P"
industry = "steel"
grade = "B"
region = "410500"

[storage]
data_dir = {:?}

[http]
listen = "127.0.0.1:0"

[policy]
unknown = "allow_flag"
exit = "allow"
"#,
        data_dir.display().to_string()
    );
    let gates = lanes.div_ceil(2);
    for g in 1..=gates {
        let weigh = g % 2 == 1;
        let _ = write!(s, "\n[[gates]]\nid = \"{g}\"\nname = \"{g}号门\"\n");
        for (k, dir) in [(0u16, "in"), (1, "out")] {
            let i = (g - 1) * 2 + k + 1;
            if i > lanes {
                break;
            }
            let machine = match (weigh, dir) {
                (true, "in") => "entry-weigh",
                (true, _) => "exit-weigh-cargo",
                (false, "in") => "entry",
                (false, _) => "exit",
            };
            let _ = write!(
                s,
                "\n[[gates.lanes]]\nid = \"{g}-{dir}\"\ndirection = \"{dir}\"\nmachine = \"{machine}\"\nbarrier_no = \"{i:02}\"\ncamera = \"cam{i}\"\nbarrier = \"io{i}\"\nloop = \"io{i}\"\nsign = \"led{i}\"\nvoice = \"led{i}\"\n",
            );
            if weigh {
                let _ = writeln!(s, "scale = \"scale{i}\"");
            }
        }
    }
    for i in 1..=lanes {
        // One relay/DI module per lane; a gate's modules share one RS-485 bus.
        let g = (i - 1) / 2 + 1;
        let _ = write!(s, "\n[devices.io{i}]\nprofile = \"io/modbus-relay-8ch\"\naddress = \"rtu-over-tcp://127.0.0.1:{}\"\nunit = {}\n", 15020 + g, (i - 1) % 2 + 1);
    }
    for i in 1..=lanes {
        // Odd gates weigh: each of their lanes has its own weighbridge.
        if ((i - 1) / 2 + 1) % 2 == 1 {
            let _ = write!(s, "\n[devices.scale{i}]\nprofile = \"scale/yaohua-xk3190-a9\"\naddress = \"serial-over-tcp://127.0.0.1:{}\"\n", 14000 + i);
        }
    }
    for i in 1..=lanes {
        let _ = write!(s, "\n[devices.cam{i}]\nprofile = \"camera/vz-ivs\"\naddress = \"ingest:cam{i}\"\n\n[devices.led{i}]\nprofile = \"led/parking-0x64\"\nvia = \"cam{i}\"\n");
    }
    s
}

/// Tallies what the lanes record, and forwards each record to the ledger.
struct DemoSink {
    ledger: crate::ledger::Ledger,
    tally: Mutex<Tally>,
}

#[derive(Default, Debug, Clone)]
struct Tally {
    allowed: u64,
    denied: u64,
    manual: u64,
    review: u64,
    weighings: u64,
    exceptions: u64,
    denied_by: BTreeMap<String, (u64, String)>,
}

impl RecordSink for DemoSink {
    async fn record(&self, r: &Record) -> Result<u64, String> {
        let seq = crate::recorder::record_lane(&self.ledger, r)
            .await
            .map_err(|e| e.to_string())?;
        let mut t = self.tally.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Record::Pass(p) if p.release.is_some() => t.manual += 1,
            Record::Pass(p) => match &p.verdict {
                Some(v) if v.allow => {
                    t.allowed += 1;
                    if v.review {
                        t.review += 1;
                    }
                }
                Some(v) => {
                    t.denied += 1;
                    let e = t
                        .denied_by
                        .entry(v.reason.clone())
                        .or_insert((0, v.text.clone()));
                    e.0 += 1;
                }
                None => t.exceptions += 1,
            },
            Record::Weighing(_) => t.weighings += 1,
            Record::Exception(_) => t.exceptions += 1,
        }
        Ok(seq)
    }
}

/// In-process relay/limit-switch module: `barrier.open` on it makes its limit inputs report
/// the barrier open 10 ms later, and closed again 40 ms after that.
async fn io_standin(
    name: String,
    mut rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<DeviceEvent>,
) {
    while let Some(c) = rx.recv().await {
        if !matches!(c, Command::BarrierOpen | Command::RelayPulse { .. }) {
            continue;
        }
        let (events, name) = (events.clone(), name.clone());
        tokio::spawn(async move {
            let ev = |input: &str, active: bool| DeviceEvent {
                device: name.clone(),
                at: Utc::now(),
                kind: EventKind::Input {
                    input: input.to_string(),
                    active,
                },
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
            for e in [ev("limit_closed", false), ev("limit_open", true)] {
                let _ = events.send(e).await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
            for e in [ev("limit_open", false), ev("limit_closed", true)] {
                let _ = events.send(e).await;
            }
        });
    }
}

/// A sign or camera stand-in: takes commands and counts them.
async fn sink_standin(mut rx: mpsc::Receiver<Command>, shown: Arc<AtomicU64>) {
    while rx.recv().await.is_some() {
        shown.fetch_add(1, Ordering::Relaxed);
    }
}

async fn wait_for(
    rx: &mut watch::Receiver<LaneStatus>,
    pred: impl Fn(&LaneStatus) -> bool,
) -> Option<LaneStatus> {
    let r = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| pred(s))).await;
    match r {
        Ok(Ok(s)) => Some(s.clone()),
        _ => None,
    }
}

struct Shared {
    seed: u64,
    limit: Option<u64>,
    done: AtomicU64,
    stuck: AtomicU64,
    warning_at: u64,
    warning_on: AtomicBool,
    stop: AtomicBool,
}

struct LaneKit {
    handle: LaneHandle,
    camera: String,
    io: String,
    loop_in: String,
    scale: Option<String>,
}

async fn send(events: &mpsc::Sender<DeviceEvent>, device: &str, kind: EventKind) {
    let _ = events
        .send(DeviceEvent {
            device: device.to_string(),
            at: Utc::now(),
            kind,
        })
        .await;
}

/// One lane's stream of trucks.
/// Lane `first` of `step` lanes takes vehicles first, first + step, …: which lane (and so which
/// direction) a vehicle uses depends only on the seed, not on timing.
async fn lane_agent(
    kit: LaneKit,
    (first, step): (u64, u64),
    shared: Arc<Shared>,
    events: mpsc::Sender<DeviceEvent>,
    decider: Arc<SiteDecider>,
) {
    let mut status = kit.handle.status.clone();
    let mut next = first;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let i = next;
        next += step;
        if shared.limit.is_some_and(|n| i >= n) {
            return;
        }
        // The warning starts between vehicle warning_at-1 and warning_at, whatever the lanes'
        // timing, so a seed always gives the same decisions.
        if i == shared.warning_at {
            while shared.done.load(Ordering::SeqCst) < i && !shared.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            decider.add_measure(ControlMeasure {
                level: WarningLevel::Orange,
                strategy: Some(Strategy::S2),
                start: Utc::now(),
                end: None,
                gates: None,
                source: "demo".into(),
            });
            shared.warning_on.store(true, Ordering::SeqCst);
        } else if i > shared.warning_at {
            while !shared.warning_on.load(Ordering::SeqCst) && !shared.stop.load(Ordering::Relaxed)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let v = vehicle(shared.seed, i);
        let mut rng = Rng(shared.seed ^ i.rotate_left(32));
        let ok = drive(&kit, &v, &mut status, &events, &mut rng).await;
        if !ok {
            shared.stuck.fetch_add(1, Ordering::Relaxed);
            let _ = kit.handle.inputs.send(Input::Reset).await;
            let _ = wait_for(&mut status, |s| s.state == "idle").await;
        }
        shared.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// One truck through one lane, reacting to what the lane shows; false when the lane did not
/// respond as expected within 5 s.
async fn drive(
    kit: &LaneKit,
    v: &DemoVehicle,
    status: &mut watch::Receiver<LaneStatus>,
    events: &mpsc::Sender<DeviceEvent>,
    rng: &mut Rng,
) -> bool {
    // The next truck arrives once the previous one's barrier is down again.
    if wait_for(status, |s| !s.barrier_open).await.is_none() {
        return false;
    }
    let plate_read = PlateRead {
        plate: v.plate.clone(),
        color: v.color,
        confidence: 90 + rng.below(10) as u8,
        source_id: Some(format!("{}", rng.next() % 1_000_000)),
        captured_at: Some(Utc::now()),
        images: Vec::new(),
    };
    let weigh = |mass: Mass, stable: bool| EventKind::Weight {
        mass,
        stable,
        raw: bytes::Bytes::new(),
    };
    let loop_input = |active| EventKind::Input {
        input: kit.loop_in.clone(),
        active,
    };
    status.mark_unchanged();
    send(events, &kit.io, loop_input(true)).await;
    send(events, &kit.camera, EventKind::Plate(plate_read)).await;
    let (mut weighed, mut declared, mut handled_refusal, mut left) = (false, false, false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let st = status.borrow_and_update().clone();
        let ours = st.plate.as_deref() == Some(v.plate.as_str());
        match st.state.as_str() {
            "idle" if left => return true,
            "weighing" if ours && !weighed => {
                let Some(scale) = kit.scale.as_deref() else {
                    return false;
                };
                for frac in [40, 85, 98] {
                    send(
                        events,
                        scale,
                        weigh(Mass::from_grams(v.gross.grams * frac / 100), false),
                    )
                    .await;
                }
                send(events, scale, weigh(v.gross, true)).await;
                weighed = true;
            }
            "awaiting_cargo" if ours && !declared => {
                let cargo = ["钢材", "焦炭", "铁精粉", "石灰石"][rng.below(4) as usize];
                let _ = kit
                    .handle
                    .inputs
                    .send(Input::CargoDeclared(cargo.into()))
                    .await;
                declared = true;
            }
            "refused" if ours && !handled_refusal => {
                handled_refusal = true;
                if rng.chance(5) {
                    let release = Release {
                        operator: "门卫王师傅".into(),
                        role: "guard".into(),
                        reason: "抢险救援车辆".into(),
                        remote: false,
                        plate: None,
                    };
                    let _ = kit.handle.inputs.send(Input::ManualRelease(release)).await;
                } else {
                    // Turned away: the truck reverses off the loop (and the scale).
                    if let Some(scale) = kit.scale.as_deref() {
                        send(events, scale, weigh(Mass::ZERO, true)).await;
                    }
                    send(events, &kit.io, loop_input(false)).await;
                    left = true;
                }
            }
            // Drive through once the barrier is seen open (limit switch), off the scale and loop.
            "opening" | "released" if ours && st.barrier_open && !left => {
                if let Some(scale) = kit.scale.as_deref() {
                    send(events, scale, weigh(Mass::ZERO, true)).await;
                }
                send(events, &kit.io, loop_input(false)).await;
                left = true;
            }
            "fault" | "power_loss" => return false,
            _ => {}
        }
        if tokio::time::timeout_at(deadline, status.changed())
            .await
            .is_err()
        {
            let st = status.borrow();
            tracing::warn!(lane = %st.lane, state = %st.state, plate = %v.plate, barrier_open = st.barrier_open, weighed, declared, left, "demo vehicle got no response from its lane");
            return false;
        }
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "ecogate-demo-{}-{}",
            std::process::id(),
            Utc::now().timestamp()
        )),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize().unwrap_or(data_dir);
    let site_file = data_dir.join("site.toml");
    std::fs::write(&site_file, site_toml(args.lanes, &data_dir.join("ledger")))
        .with_context(|| format!("writing {}", site_file.display()))?;
    let plan = crate::config::load(&site_file)
        .map_err(|d| anyhow::anyhow!("the generated demo site does not validate:\n{d}"))?;
    let plan = Arc::new(plan);

    // The registry knows every registered truck of the stream; a few are black-listed.
    let registry = Arc::new(MemoryRegistry::new());
    let limit = args.vehicles;
    let fleet = limit.unwrap_or(100_000).min(100_000);
    let decider = Arc::new(SiteDecider::new(plan.policy.clone(), registry.clone()));
    {
        let state = decider.state();
        let mut state = state.write().unwrap_or_else(|e| e.into_inner());
        for i in 0..fleet {
            let v = vehicle(args.seed, i);
            if let Some(f) = v.facts.clone() {
                registry.insert(f);
            }
            if v.black {
                state.add_black(ListEntry {
                    plate: v.plate.clone(),
                    color: Some(v.color),
                    from: None,
                    until: None,
                    gates: None,
                    exempt_warnings: false,
                    note: "演示黑名单".into(),
                    source: "demo".into(),
                });
            }
        }
    }

    let ledger = crate::ledger::Ledger::open(&plan.data_dir)
        .with_context(|| format!("opening the ledger in {}", plan.data_dir.display()))?;
    let sink = Arc::new(DemoSink {
        ledger: ledger.clone(),
        tally: Mutex::new(Tally::default()),
    });
    let (events_tx, mut events_rx) = mpsc::channel::<DeviceEvent>(4096);
    let (alarm_tx, mut alarm_rx) = mpsc::unbounded_channel();
    let shown = Arc::new(AtomicU64::new(0));
    let mut bus = CommandBus::new();
    for (name, d) in &plan.devices {
        let (tx, rx) = mpsc::channel(64);
        bus.attach(name, tx);
        match d.profile.kind {
            crate::config::profile::DeviceKind::Io => {
                tokio::spawn(io_standin(name.clone(), rx, events_tx.clone()));
            }
            _ => {
                tokio::spawn(sink_standin(rx, Arc::clone(&shown)));
            }
        }
    }
    let deps = LaneDeps {
        decider: Arc::clone(&decider),
        sink: Arc::clone(&sink),
        bus: Arc::new(bus),
        alarms: alarm_tx,
    };
    let mut handles = Vec::new();
    for l in &plan.lanes {
        let lane = Lane::new(l.spec.clone(), Arc::clone(&l.machine));
        let (h, _task) = runtime::spawn_lane(lane, deps.clone());
        handles.push(h);
    }
    // Router: device events → lane inputs.
    let mut router = runtime::Router::new(&plan);
    let lane_inputs: Vec<_> = handles.iter().map(|h| h.inputs.clone()).collect();
    tokio::spawn(async move {
        while let Some(ev) = events_rx.recv().await {
            for (i, input) in router.route(ev) {
                if let Some(tx) = lane_inputs.get(i) {
                    let _ = tx.send(input).await;
                }
            }
        }
    });
    let alarms = Arc::new(AtomicU64::new(0));
    {
        let alarms = Arc::clone(&alarms);
        tokio::spawn(async move {
            while let Some(a) = alarm_rx.recv().await {
                if a.raised {
                    alarms.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    let shared = Arc::new(Shared {
        seed: args.seed,
        limit,
        done: AtomicU64::new(0),
        stuck: AtomicU64::new(0),
        warning_at: limit.map(|n| n / 2).unwrap_or(200),
        warning_on: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    if !args.quiet {
        println!(
            "ecogate demo: {} lane(s), seed {}, ledger in {}",
            plan.lanes.len(),
            args.seed,
            plan.data_dir.display()
        );
        println!(
            "site file: {}  (try: ecogate check --config {})",
            site_file.display(),
            site_file.display()
        );
        match limit {
            Some(n) => println!("{n} vehicles; an orange warning (strategy 2: 禁行国四及以下重型柴油(燃气)车) starts at vehicle {}", n / 2),
            None => println!("running until Ctrl-C; an orange warning starts at vehicle 200"),
        }
    }
    let mut agents = Vec::new();
    let step = plan.lanes.len() as u64;
    for (i, l) in plan.lanes.iter().enumerate() {
        let b = &l.spec.bindings;
        let role = |r| b.get(&r).cloned();
        use crate::lane::builtin::Role;
        let (Some(cam), Some(lp)) = (role(Role::Camera), role(Role::Loop)) else {
            continue;
        };
        let kit = LaneKit {
            handle: handles[i].clone(),
            camera: cam.device,
            io: lp.device,
            loop_in: lp.channel.unwrap_or_else(|| "loop".into()),
            scale: role(Role::Scale).map(|s| s.device),
        };
        agents.push(tokio::spawn(lane_agent(
            kit,
            (i as u64, step),
            Arc::clone(&shared),
            events_tx.clone(),
            Arc::clone(&decider),
        )));
    }
    let progress = {
        let shared = Arc::clone(&shared);
        let sink = Arc::clone(&sink);
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if !quiet {
                    let t = sink.tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let done = shared.done.load(Ordering::Relaxed);
                    let of = shared.limit.map(|n| format!("/{n}")).unwrap_or_default();
                    let warn = if shared.warning_on.load(Ordering::Relaxed) {
                        "orange warning (strategy 2)"
                    } else {
                        "normal day"
                    };
                    println!("[{:>6.1}s] {done}{of} vehicles | allowed {} denied {} manual {} | weighings {} | {warn}", started.elapsed().as_secs_f64(), t.allowed, t.denied, t.manual, t.weighings);
                }
            }
        })
    };
    let ctrl_c = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::SeqCst);
            }
        })
    };
    for a in agents {
        let _ = a.await;
    }
    progress.abort();
    ctrl_c.abort();
    // Let the last records land.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let elapsed = started.elapsed();
    let t = sink.tally.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let done = shared.done.load(Ordering::SeqCst);
    let stuck = shared.stuck.load(Ordering::SeqCst);
    drop(ledger);
    let report = crate::ledger::verify(&plan.data_dir);

    println!("\n== ecogate demo summary ==");
    println!(
        "vehicles            {done} in {:.1}s ({:.0}/s) on {} lane(s)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64().max(1e-9),
        plan.lanes.len()
    );
    println!(
        "allowed             {} (of which flagged for review: {})",
        t.allowed, t.review
    );
    println!("denied              {}", t.denied);
    for (reason, (n, text)) in &t.denied_by {
        println!("  {reason:<22}{n:>6}  {text}");
    }
    println!("manual releases     {} (denied vehicles released by the guard, recorded before the barrier)", t.manual);
    println!("weighings           {}", t.weighings);
    println!("exceptions          {}", t.exceptions);
    println!("LED/voice commands  {}", shown.load(Ordering::Relaxed));
    println!("lane alarms         {}", alarms.load(Ordering::Relaxed));
    println!("lanes not responding {stuck}");
    let ok_ledger = match &report {
        Ok(r) if r.ok() => {
            println!(
                "ledger              {} events, chain verified, head {}",
                r.events, r.head
            );
            true
        }
        Ok(r) => {
            println!("ledger              VERIFY FAILED: {r}");
            false
        }
        Err(e) => {
            println!("ledger              cannot verify: {e}");
            false
        }
    };
    println!("data                {}", data_dir.display());
    let adds_up = t.allowed + t.denied == done && stuck == 0;
    if adds_up {
        println!(
            "check               allowed + denied = vehicles ({} + {} = {done})",
            t.allowed, t.denied
        );
    } else {
        println!("check               MISMATCH: allowed {} + denied {} != vehicles {done} (stuck {stuck})", t.allowed, t.denied);
    }
    Ok(if adds_up && ok_ledger {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
