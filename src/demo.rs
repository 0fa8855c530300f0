//! `ecogate demo`: a whole simulated site on one machine, no hardware and no setup.
//!
//! The site is generated as TOML and loaded through the same two-phase loader as a real site;
//! lanes run in the same lane tasks as production, recording into a real ledger. Devices are
//! in-process stand-ins (cameras, relay/limit-switch modules, weighbridges, LED signs) that
//! speak the driver-side event and command types; trucks are agents that react to what the
//! lane does (weigh when asked, declare cargo, reverse when refused, drive through when the
//! barrier is seen open). Half-way a heavy-pollution warning (orange, strategy 2) is declared.

use crate::decide::SiteDecider;
use crate::lane::engine::{Input, Lane, Release};
use crate::policy::{ControlMeasure, ListEntry, Strategy, WarningLevel};
use crate::registry::MemoryRegistry;
use crate::runtime::{self, CommandBus, LaneDeps, LaneHandle, LaneStatus};
use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use anyhow::Context as _;
use chrono::Utc;
use ecogate_drivers::scale::codec::ScaleFormat;
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{BarrierModel, Framing, RelaySim, SimConfig};
use ecogate_drivers::sim::scale::{ScaleSim, ScaleSimConfig, Segment};
use ecogate_drivers::{Command, DeviceEvent, EventKind, Mass, PlateRead};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    /// Run the real drivers against the in-repo device simulators over loopback (Modbus relay
    /// modules, weighbridge indicators, VZ cameras pushing to the HTTP ingest, signs through the
    /// cameras' passthrough) instead of in-process stand-ins. Slower: trucks wait for polls and
    /// for the scale to settle.
    #[arg(long)]
    pub simulators: bool,
    /// Publish the site's whole MQTT topic tree to this broker (e.g. mqtt://127.0.0.1:1883);
    /// watch it with `mosquitto_sub -t 'ecogate/#' -v`; a Sparkplug B edge node too (`spBv1.0/#`).
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Where the console and the HTTP API listen (camera ingest too with --simulators).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Pause between one truck and the next on each lane (e.g. 3s, 500ms; 0s = as fast as the
    /// lanes go). Default: 3s when the demo runs until Ctrl-C, so a person can follow it in the
    /// console; 0s with --vehicles.
    #[arg(long, value_parser = crate::lane::machine::parse_duration)]
    pub interval: Option<Duration>,
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

/// Lanes of odd-numbered gates weigh (entry-weigh / exit-weigh-cargo).
fn weighs(lane: u16) -> bool {
    ((lane - 1) / 2 + 1) % 2 == 1
}

/// The generated site file for `lanes` lanes.
pub fn site_toml(lanes: u16, data_dir: &Path) -> String {
    site_toml_with(lanes, data_dir, None)
}

/// The generated site; with `sims`, each lane's relay module (and scale) address points at its
/// loopback simulator.
fn site_toml_with(
    lanes: u16,
    data_dir: &Path,
    sims: Option<&[(SocketAddr, Option<SocketAddr>)]>,
) -> String {
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
        let sim = sims.and_then(|a| a.get(usize::from(i) - 1));
        match sim {
            Some((io, _)) => {
                let _ = write!(s, "\n[devices.io{i}]\nprofile = \"io/modbus-relay-8ch\"\naddress = \"tcp://{io}\"\ntimeout = \"300ms\"\npoll = \"50ms\"\n");
            }
            None => {
                // One relay/DI module per lane; a gate's modules share one RS-485 bus.
                let g = (i - 1) / 2 + 1;
                let _ = write!(s, "\n[devices.io{i}]\nprofile = \"io/modbus-relay-8ch\"\naddress = \"rtu-over-tcp://127.0.0.1:{}\"\nunit = {}\n", 15020 + g, (i - 1) % 2 + 1);
            }
        }
        if weighs(i) {
            let addr = sim
                .and_then(|(_, sc)| *sc)
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("127.0.0.1:{}", 14000 + i));
            let _ = write!(s, "\n[devices.scale{i}]\nprofile = \"scale/yaohua-xk3190-a9\"\naddress = \"serial-over-tcp://{addr}\"\n");
            if sim.is_some() {
                // Settle faster than a real site would, so the demo keeps moving.
                let _ = write!(s, "[devices.scale{i}.settings.stability]\nuse_indicator_flag = true\nmin_weight = 500\ndivision = 20\nequal_count = 3\nwindow_ms = 400\nhold_ms = 300\n");
            }
        }
    }
    for i in 1..=lanes {
        let _ = write!(s, "\n[devices.cam{i}]\nprofile = \"camera/vz-ivs\"\naddress = \"ingest:cam{i}\"\n\n[devices.led{i}]\nprofile = \"led/parking-0x64\"\nvia = \"cam{i}\"\n");
    }
    s
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

/// A sign or camera stand-in: takes commands (the trace shows them; here they only drain).
async fn sink_standin(mut rx: mpsc::Receiver<Command>) {
    while rx.recv().await.is_some() {}
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
    /// How long a truck waits for its lane before it counts the lane as not responding.
    patience: Duration,
    /// Pause between trucks on one lane.
    interval: Duration,
}

/// How a truck acts on its lane: through in-process stand-ins (device events straight into the
/// router), or through the in-repo simulators over loopback, which the real drivers read.
enum Field {
    StandIn {
        events: mpsc::Sender<DeviceEvent>,
        camera: String,
        io: String,
        loop_in: String,
        scale: Option<String>,
    },
    Sim {
        camera: CameraSim,
        relay: Arc<RelaySim>,
        scale: Option<Arc<ScaleSim>>,
    },
}

struct LaneKit {
    handle: LaneHandle,
    field: Field,
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

impl LaneKit {
    fn has_scale(&self) -> bool {
        match &self.field {
            Field::StandIn { scale, .. } => scale.is_some(),
            Field::Sim { scale, .. } => scale.is_some(),
        }
    }

    /// The truck on (or off) the lane's loop detector.
    async fn set_loop(&self, on: bool) {
        match &self.field {
            Field::StandIn {
                events,
                io,
                loop_in,
                ..
            } => {
                send(
                    events,
                    io,
                    EventKind::Input {
                        input: loop_in.clone(),
                        active: on,
                    },
                )
                .await
            }
            // DI 0 is the trigger loop of the modbus-relay-8ch profile. A truck stays on a loop
            // for seconds; hold the level for a few polls so the debounced driver sees it.
            Field::Sim { relay, .. } => {
                relay.set_input(0, on);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    async fn show_plate(&self, v: &DemoVehicle, rng: &mut Rng) {
        let id = rng.next() % 1_000_000_000;
        match &self.field {
            Field::StandIn { events, camera, .. } => {
                let read = PlateRead {
                    plate: v.plate.clone(),
                    color: v.color,
                    confidence: 90 + rng.below(10) as u8,
                    source_id: Some(id.to_string()),
                    captured_at: Some(Utc::now()),
                    offline_replay: false,
                    images: Vec::new(),
                };
                send(events, camera, EventKind::Plate(read)).await
            }
            Field::Sim { camera, .. } => {
                let mut p = VzPlate::new(&v.plate, id);
                p.color = ecogate_drivers::camera::vz::color_code(v.color);
                p.image_bytes = 20_000;
                if let Err(e) = camera.vz_plate(&p).await {
                    tracing::warn!(error = %e, "camera simulator could not push");
                }
            }
        }
    }

    /// The truck drives onto the weighbridge and stands still.
    async fn load(&self, gross: Mass) {
        match &self.field {
            Field::StandIn {
                events,
                scale: Some(scale),
                ..
            } => {
                for frac in [40, 85, 98] {
                    let m = Mass::from_grams(gross.grams * frac / 100);
                    send(
                        events,
                        scale,
                        EventKind::Weight {
                            mass: m,
                            stable: false,
                            raw: bytes::Bytes::new(),
                        },
                    )
                    .await;
                }
                send(
                    events,
                    scale,
                    EventKind::Weight {
                        mass: gross,
                        stable: true,
                        raw: bytes::Bytes::new(),
                    },
                )
                .await;
            }
            Field::Sim {
                scale: Some(scale), ..
            } => scale.play(vec![
                Segment::Ramp {
                    to: gross,
                    over: Duration::from_millis(300),
                },
                Segment::Hold {
                    duration: Duration::from_secs(3600),
                },
            ]),
            _ => {}
        }
    }

    /// The truck leaves the weighbridge.
    async fn unload(&self) {
        match &self.field {
            Field::StandIn {
                events,
                scale: Some(scale),
                ..
            } => {
                send(
                    events,
                    scale,
                    EventKind::Weight {
                        mass: Mass::ZERO,
                        stable: true,
                        raw: bytes::Bytes::new(),
                    },
                )
                .await
            }
            Field::Sim {
                scale: Some(scale), ..
            } => scale.set_weight(Mass::ZERO),
            _ => {}
        }
    }
}

/// One lane's stream of trucks.
/// Lane `first` of `step` lanes takes vehicles first, first + step, …: which lane (and so which
/// direction) a vehicle uses depends only on the seed, not on timing.
async fn lane_agent(
    kit: LaneKit,
    (first, step): (u64, u64),
    shared: Arc<Shared>,
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
        if !shared.interval.is_zero() && i >= step {
            // Sleep in short steps so Ctrl-C still ends the demo at once.
            let until = Instant::now() + shared.interval;
            while Instant::now() < until && !shared.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50).min(shared.interval)).await;
            }
        }
        let v = vehicle(shared.seed, i);
        let mut rng = Rng(shared.seed ^ i.rotate_left(32));
        let ok = drive(&kit, &v, &mut status, &mut rng, shared.patience).await;
        if !ok {
            shared.stuck.fetch_add(1, Ordering::Relaxed);
            let _ = kit.handle.inputs.send(Input::Reset).await;
            let _ = wait_for(&mut status, |s| s.state == "idle").await;
        }
        shared.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// One truck through one lane, reacting to what the lane shows; false when the lane did not
/// respond as expected within `patience`.
async fn drive(
    kit: &LaneKit,
    v: &DemoVehicle,
    status: &mut watch::Receiver<LaneStatus>,
    rng: &mut Rng,
    patience: Duration,
) -> bool {
    // The next truck arrives once the previous one's barrier is down again.
    if wait_for(status, |s| !s.barrier_open).await.is_none() {
        return false;
    }
    status.mark_unchanged();
    kit.set_loop(true).await;
    kit.show_plate(v, rng).await;
    let (mut weighed, mut declared, mut handled_refusal, mut left) = (false, false, false, false);
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let st = status.borrow_and_update().clone();
        let ours = st.plate.as_deref() == Some(v.plate.as_str());
        match st.state.as_str() {
            "idle" if left => return true,
            "weighing" if ours && !weighed => {
                if !kit.has_scale() {
                    return false;
                }
                kit.load(v.gross).await;
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
                        approval: None,
                        request: None,
                    };
                    let _ = kit.handle.inputs.send(Input::ManualRelease(release)).await;
                } else {
                    // Turned away: the truck reverses off the loop (and the scale).
                    kit.unload().await;
                    kit.set_loop(false).await;
                    left = true;
                }
            }
            // Drive through once the barrier is seen open (limit switch), off the scale and loop.
            "opening" | "released" if ours && st.barrier_open && !left => {
                kit.unload().await;
                kit.set_loop(false).await;
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

/// Demo accounts, created when the demo's users database is empty (a fresh data dir). The
/// passwords are printed and in the README: this is a demo, not a site.
pub const DEMO_USERS: [(&str, &str, &str, crate::api::auth::Role); 5] = [
    (
        "guard",
        "guard123",
        "门卫张三",
        crate::api::auth::Role::Guard,
    ),
    (
        "supervisor",
        "super123",
        "值班主管李四",
        crate::api::auth::Role::Supervisor,
    ),
    (
        "envmgr",
        "env123",
        "环保专员王五",
        crate::api::auth::Role::EnvManager,
    ),
    (
        "admin",
        "admin123",
        "系统管理员",
        crate::api::auth::Role::Admin,
    ),
    (
        "inspector",
        "insp123",
        "核查人员",
        crate::api::auth::Role::Inspector,
    ),
];

async fn add_demo_users(
    api: &crate::api::ApiState,
) -> anyhow::Result<Vec<(&'static str, &'static str, &'static str, &'static str)>> {
    let users = &api.inner.users;
    if !users.is_empty()? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (name, pw, display, role) in DEMO_USERS {
        users.create(name, display, role, pw)?;
        api.inner
            .ledger
            .append(
                crate::ledger::events::EventBody::UserChange(crate::ledger::events::UserChange {
                    username: name.into(),
                    op: "create".into(),
                    role: Some(role.name().into()),
                    display_name: Some(display.into()),
                    actor: "demo".into(),
                }),
                Vec::new(),
                Utc::now(),
            )
            .await?;
        out.push((name, pw, display, role.name()));
    }
    Ok(out)
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

/// Loopback simulators for one lane: its relay/DI module and, on weighing lanes, its scale.
struct LaneSims {
    relay: Arc<RelaySim>,
    scale: Option<(Arc<ScaleSim>, SocketAddr)>,
}

/// The summary, read back from the ledger (not from the lanes' own counting).
#[derive(Default)]
struct Summary {
    allowed: u64,
    denied: u64,
    manual: u64,
    weighings: u64,
    exceptions: u64,
    alarms: u64,
    denied_by: BTreeMap<String, (u64, String)>,
}

fn summarize(data_dir: &Path) -> anyhow::Result<Summary> {
    use crate::ledger::events::{Decision, EventBody};
    let reader = crate::ledger::store::LedgerReader::open(data_dir)?;
    let mut sum = Summary::default();
    let mut after = 0;
    loop {
        let batch = reader.events_after(after, 10_000)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in batch {
            match e.body {
                EventBody::PassAttempt(p) if p.decision == Decision::Allow => sum.allowed += 1,
                EventBody::PassAttempt(p) => {
                    sum.denied += 1;
                    let d = sum
                        .denied_by
                        .entry(p.reason.clone())
                        .or_insert((0, p.reason_text.clone()));
                    d.0 += 1;
                }
                EventBody::ManualRelease(_) => sum.manual += 1,
                EventBody::Weighing(_) => sum.weighings += 1,
                EventBody::BarrierException(_) => sum.exceptions += 1,
                EventBody::Alarm(a) if a.active => sum.alarms += 1,
                _ => {}
            }
        }
    }
    Ok(sum)
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
    let ledger_dir = data_dir.join("ledger");

    // With --simulators every lane gets a Modbus relay simulator and weighing lanes a scale
    // simulator, all on 127.0.0.1 ephemeral ports; the generated site points the real drivers
    // at them.
    let mut sims: Vec<LaneSims> = Vec::new();
    if args.simulators {
        for i in 1..=args.lanes {
            let cfg = SimConfig {
                barrier: Some(BarrierModel {
                    open_coil: 0,
                    close_coil: 1,
                    limit_open_di: 1,
                    limit_closed_di: 2,
                    travel: Duration::from_millis(60),
                    auto_close: Some(Duration::from_millis(400)),
                }),
                ..SimConfig::default()
            };
            let relay = Arc::new(
                RelaySim::start(Framing::Tcp, cfg)
                    .await
                    .context("starting a relay simulator")?,
            );
            let scale = if weighs(i) {
                let mut c = ScaleSimConfig::new(ScaleFormat::A9);
                c.noise = Mass::from_kg(40);
                let (sim, addr) = ScaleSim::bind("127.0.0.1:0", c)
                    .await
                    .context("starting a scale simulator")?;
                Some((Arc::new(sim), addr))
            } else {
                None
            };
            sims.push(LaneSims { relay, scale });
        }
    }
    let site_file = data_dir.join("site.toml");
    let addrs: Vec<(SocketAddr, Option<SocketAddr>)> = sims
        .iter()
        .map(|s| (s.relay.addr(), s.scale.as_ref().map(|x| x.1)))
        .collect();
    std::fs::write(
        &site_file,
        site_toml_with(
            args.lanes,
            &ledger_dir,
            args.simulators.then_some(addrs.as_slice()),
        ) + &args
            .mqtt
            .as_ref()
            .map(|u| format!("\n[uplinks.mqtt]\nurl = {u:?}\nstyles = [\"json\", \"sparkplug\"]\n"))
            .unwrap_or_default(),
    )
    .with_context(|| format!("writing {}", site_file.display()))?;
    let plan = crate::config::load(&site_file)
        .map_err(|d| anyhow::anyhow!("the generated demo site does not validate:\n{d}"))?;

    // The registry knows every registered truck of the stream; a few are black-listed.
    let registry = Arc::new(MemoryRegistry::new());
    let limit = args.vehicles;
    let fleet = limit.unwrap_or(100_000).min(100_000);
    let mut black = Vec::new();
    for i in 0..fleet {
        let v = vehicle(args.seed, i);
        if let Some(f) = v.facts.clone() {
            registry.insert(f);
        }
        if v.black {
            black.push(ListEntry {
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

    let (handles, decider, ledger, mut kits, mut gateway, mut bridge, mut sparkplug, api) = if args
        .simulators
    {
        let gw =
            crate::gateway::Gateway::start(plan, Some(args.listen), Some(registry.clone())).await?;
        anyhow::ensure!(
            gw.device_errors.is_empty(),
            "devices did not start: {:?}",
            gw.device_errors
        );
        let mut kits = Vec::new();
        for (i, l) in gw.plan.lanes.iter().enumerate() {
            let cam = l
                .spec
                .bindings
                .get(&crate::lane::builtin::Role::Camera)
                .map(|c| c.device.clone())
                .unwrap_or_default();
            kits.push(LaneKit {
                handle: gw.lanes[i].clone(),
                field: Field::Sim {
                    camera: CameraSim::new(format!("http://{}/ingest/vz/{cam}", gw.http_addr)),
                    relay: Arc::clone(&sims[i].relay),
                    scale: sims[i].scale.as_ref().map(|s| Arc::clone(&s.0)),
                },
            });
        }
        let api = (gw.http_addr, gw.api.clone());
        (
            gw.lanes.clone(),
            Arc::clone(&gw.decider),
            gw.ledger.clone(),
            kits,
            Some(gw),
            None,
            None,
            api,
        )
    } else {
        let decider = Arc::new(SiteDecider::new(plan.policy.clone(), registry.clone()));
        let ledger = crate::ledger::Ledger::open(&plan.data_dir)
            .with_context(|| format!("opening the ledger in {}", plan.data_dir.display()))?;
        let (events_tx, mut events_rx) = mpsc::channel::<DeviceEvent>(4096);
        let board = crate::alarm::AlarmBoard::new(ledger.clone());
        let alarm_tx = board.spawn_recorder();
        let mut bus = CommandBus::new();
        for (name, d) in &plan.devices {
            let (tx, rx) = mpsc::channel(64);
            bus.attach(name, tx);
            if d.profile.kind == crate::config::profile::DeviceKind::Io {
                tokio::spawn(io_standin(name.clone(), rx, events_tx.clone()));
            } else {
                tokio::spawn(sink_standin(rx));
            }
        }
        let deps = LaneDeps {
            decider: Arc::clone(&decider),
            sink: Arc::new(ledger.clone()),
            bus: Arc::new(bus),
            alarms: alarm_tx,
        };
        let mut handles = Vec::new();
        for l in &plan.lanes {
            let (h, _task) = runtime::spawn_lane(
                Lane::new(l.spec.clone(), Arc::clone(&l.machine)),
                deps.clone(),
            );
            handles.push(h);
        }
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
        let mut kits = Vec::new();
        for (i, l) in plan.lanes.iter().enumerate() {
            use crate::lane::builtin::Role;
            let b = &l.spec.bindings;
            let (Some(cam), Some(lp)) =
                (b.get(&Role::Camera).cloned(), b.get(&Role::Loop).cloned())
            else {
                continue;
            };
            kits.push(LaneKit {
                handle: handles[i].clone(),
                field: Field::StandIn {
                    events: events_tx.clone(),
                    camera: cam.device,
                    io: lp.device,
                    loop_in: lp.channel.unwrap_or_else(|| "loop".into()),
                    scale: b.get(&Role::Scale).map(|s| s.device.clone()),
                },
            });
        }
        let bridge = match &plan.mqtt {
            Some(m) => Some(
                crate::uplink::MqttBridge::start_with(
                    crate::uplink::MqttConfig::from_plan(m, &plan.site_id)?,
                    &plan.site_id,
                    ledger.clone(),
                    handles.clone(),
                    Vec::new(),
                    &plan.data_dir,
                    crate::uplink::mqtt::BridgeExtras {
                        alarms: Some(board.clone()),
                        uplinks: None,
                    },
                )
                .await?,
            ),
            None => None,
        };
        let sparkplug = match plan.mqtt.as_ref() {
            Some(m) => {
                match crate::uplink::sparkplug::SparkplugConfig::from_plan(m, &plan.site_id)? {
                    Some(cfg) => Some(
                        crate::uplink::sparkplug::SparkplugNode::start(
                            cfg,
                            &plan.site_id,
                            crate::uplink::sparkplug::Sources {
                                lanes: handles.clone(),
                                ledger: Some(ledger.clone()),
                                alarms: Some(board.clone()),
                                ..Default::default()
                            },
                            &plan.data_dir,
                        )
                        .await?,
                    ),
                    None => None,
                }
            }
            None => None,
        };
        let api = crate::api::ApiState::new(crate::api::ApiParts {
            plan: Arc::new(plan.clone()),
            lanes: handles.clone(),
            ledger: ledger.clone(),
            decider: Arc::clone(&decider),
            devices: Vec::new(),
            uplinks: Vec::new(),
            alarms: board.clone(),
        })
        .context("opening the operator accounts")?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding the console on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let app =
            crate::api::routes(api.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "console listener stopped");
            }
        });
        (
            handles,
            decider,
            ledger,
            kits,
            None,
            bridge,
            sparkplug,
            (addr, api),
        )
    };
    let demo_users = add_demo_users(&api.1).await?;
    {
        let state = decider.state();
        let mut state = state.write().unwrap_or_else(|e| e.into_inner());
        for e in black {
            state.add_black(e);
        }
    }
    if args.simulators {
        // The relay modules must be polled once before the first truck, or its loop is missed.
        for kit in &kits {
            if let Field::Sim { .. } = kit.field {
                let mut st = kit.handle.status.clone();
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    st.wait_for(|s| s.updated.is_some()),
                )
                .await;
            }
        }
        if let Some(gw) = &gateway {
            for (name, h) in &gw.devices.handles {
                let mut rx = h.health.clone();
                if gw
                    .plan
                    .devices
                    .get(name)
                    .is_some_and(|d| d.profile.kind == crate::config::profile::DeviceKind::Io)
                {
                    let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|h| h.online))
                        .await;
                }
            }
        }
    }

    let shared = Arc::new(Shared {
        seed: args.seed,
        limit,
        done: AtomicU64::new(0),
        stuck: AtomicU64::new(0),
        warning_at: limit.map(|n| n / 2).unwrap_or(200),
        warning_on: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        patience: if args.simulators {
            Duration::from_secs(15)
        } else {
            Duration::from_secs(5)
        },
        interval: args.interval.unwrap_or(if limit.is_some() {
            Duration::ZERO
        } else {
            Duration::from_secs(3)
        }),
    });
    let started = Instant::now();
    if !args.quiet {
        let mode = if args.simulators {
            "real drivers against loopback simulators"
        } else {
            "in-process device stand-ins"
        };
        println!(
            "ecogate demo: {} lane(s), seed {}, {mode}; ledger in {}",
            handles.len(),
            args.seed,
            ledger_dir.display()
        );
        println!(
            "console: open http://{}/  (API http://{}/api/v1)",
            api.0, api.0
        );
        for (name, pw, display, role) in &demo_users {
            println!("  user {name} / {pw}  ({display}, {role})");
        }
        if let Some(gw) = &gateway {
            println!(
                "HTTP on {} (try: curl http://{}/healthz)",
                gw.http_addr, gw.http_addr
            );
        }
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
    let step = kits.len() as u64;
    for (i, kit) in kits.drain(..).enumerate() {
        agents.push(tokio::spawn(lane_agent(
            kit,
            (i as u64, step),
            Arc::clone(&shared),
            Arc::clone(&decider),
        )));
    }
    let progress = {
        let shared = Arc::clone(&shared);
        let ledger = ledger.clone();
        let quiet = args.quiet;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if !quiet {
                    let done = shared.done.load(Ordering::Relaxed);
                    let of = shared.limit.map(|n| format!("/{n}")).unwrap_or_default();
                    let warn = if shared.warning_on.load(Ordering::Relaxed) {
                        "orange warning (strategy 2)"
                    } else {
                        "normal day"
                    };
                    println!(
                        "[{:>6.1}s] {done}{of} vehicles | ledger {} events | {warn}",
                        started.elapsed().as_secs_f64(),
                        ledger.head().seq
                    );
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
    // Let the last alarms land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let elapsed = started.elapsed();
    let done = shared.done.load(Ordering::SeqCst);
    let stuck = shared.stuck.load(Ordering::SeqCst);
    // Let the bridge publish the tail of the ledger, then go offline cleanly.
    if let Some(b) = bridge
        .take()
        .or_else(|| gateway.as_mut().and_then(|g| g.mqtt.take()))
    {
        if args.mqtt.is_some() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        b.shutdown().await;
    }
    if let Some(n) = sparkplug
        .take()
        .or_else(|| gateway.as_mut().and_then(|g| g.sparkplug.take()))
    {
        n.shutdown().await;
    }
    drop(ledger);
    drop(gateway);
    let t = summarize(&ledger_dir)?;
    let report = crate::ledger::verify(&ledger_dir);

    println!("\n== ecogate demo summary ==");
    println!(
        "vehicles            {done} in {:.1}s ({:.0}/s) on {} lane(s)",
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64().max(1e-9),
        handles.len()
    );
    println!("allowed             {}", t.allowed);
    println!("denied              {}", t.denied);
    for (reason, (n, text)) in &t.denied_by {
        println!("  {reason:<22}{n:>6}  {text}");
    }
    println!("manual releases     {} (denied vehicles released by the guard, recorded before the barrier)", t.manual);
    println!("weighings           {}", t.weighings);
    println!("exceptions          {}", t.exceptions);
    println!("alarms raised       {}", t.alarms);
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
