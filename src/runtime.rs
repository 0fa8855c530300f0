//! Running lanes: one task per lane drives its [`Lane`] interpreter with inputs from the
//! router and its own timers, and performs the outputs in order. A record must be durable
//! before any command after it in the same batch goes out; if it fails, those commands are
//! dropped and the lane gets `record_failed`. A machine file that has no answer to
//! `record_failed` still gets `ledger_write_failed` raised and the `fault` text on its sign, so
//! a failed record is never silent. tests/record_before_barrier.rs proves this on the whole
//! gateway with slow, failing and broken ledgers.

use crate::config::plan::LanePlan;
use crate::config::Plan;
use crate::lane::builtin::Role;
use crate::lane::engine::{Decider, Input, Lane, Output, Record, Verdict};
use chrono::{DateTime, Utc};
use ecogate_drivers::{Command, DeviceCommand, DeviceEvent, EventKind, Mass, PlateColor};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

pub use crate::health::Alarm;

/// The alarm a lane raises when a record could not be made durable.
pub const LEDGER_WRITE_FAILED: &str = "ledger_write_failed";

/// Where lane records go: the ledger in production; slow and failing sinks in
/// tests/record_before_barrier.rs (through `Gateway::start_with_sink`).
pub trait RecordSink: Send + Sync + 'static {
    /// Resolves once the record is durable; the value is its ledger sequence number.
    fn record(&self, r: &Record) -> impl Future<Output = Result<u64, String>> + Send;
}

/// The lane's live state, for consoles, MQTT (retained) and the demo's vehicles.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LaneStatus {
    pub lane: String,
    pub state: String,
    pub plate: Option<String>,
    pub color: Option<PlateColor>,
    pub verdict: Option<Verdict>,
    pub barrier_open: bool,
    pub records: u64,
    pub record_failures: u64,
    pub updated: Option<DateTime<Utc>>,
}

/// Device command queues by device name. Sending never waits: a device that is not draining
/// its queue (dead, babbling) must not stall the lane (invariant 4).
#[derive(Clone, Default)]
pub struct CommandBus {
    queues: HashMap<String, mpsc::Sender<Command>>,
}

impl CommandBus {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn attach(&mut self, device: &str, tx: mpsc::Sender<Command>) {
        self.queues.insert(device.to_string(), tx);
    }

    /// Queues a command; Err names why it was not queued.
    pub fn send(&self, device: &str, c: Command) -> Result<(), String> {
        match self.queues.get(device) {
            None => Err(format!("device `{device}` is not running")),
            Some(q) => q.try_send(c).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    format!("device `{device}` command queue is full")
                }
                mpsc::error::TrySendError::Closed(_) => format!("device `{device}` has stopped"),
            }),
        }
    }
}

/// A lane, the input an active signal means, and the input an inactive one means.
type InputRoute = (usize, Option<Input>, Option<Input>);

/// Routes device events to lane inputs, as the site's bindings say.
pub struct Router {
    /// (device, input channel) → routes
    inputs: HashMap<(String, String), Vec<InputRoute>>,
    cameras: HashMap<String, usize>,
    scales: HashMap<String, Vec<usize>>,
    devices: HashMap<String, Vec<usize>>,
    loaded: HashMap<String, bool>,
    /// Below this a scale counts as empty (`weight_zero`).
    pub zero_below: Mass,
}

impl Router {
    pub fn new(plan: &Plan) -> Router {
        let mut r = Router {
            inputs: HashMap::new(),
            cameras: HashMap::new(),
            scales: HashMap::new(),
            devices: HashMap::new(),
            loaded: HashMap::new(),
            zero_below: Mass::from_kg(200),
        };
        for (i, l) in plan.lanes.iter().enumerate() {
            r.add_lane(i, l);
        }
        r
    }

    fn add_lane(&mut self, i: usize, l: &LanePlan) {
        let b = &l.spec.bindings;
        if let Some(c) = b.get(&Role::Camera) {
            self.cameras.insert(c.device.clone(), i);
        }
        if let Some(s) = b.get(&Role::Scale) {
            self.scales.entry(s.device.clone()).or_default().push(i);
        }
        if let Some(lp) = b.get(&Role::Loop) {
            let ch = lp.channel.clone().unwrap_or_else(|| "loop".into());
            self.inputs
                .entry((lp.device.clone(), ch))
                .or_default()
                .push((i, Some(Input::LoopOn), Some(Input::LoopOff)));
        }
        for (r, on) in [
            (&l.limit_open, Input::BarrierOpened),
            (&l.limit_closed, Input::BarrierClosed),
        ] {
            if let (false, Some(ch)) = (r.device.is_empty(), r.channel.clone()) {
                self.inputs
                    .entry((r.device.clone(), ch))
                    .or_default()
                    .push((i, Some(on), None));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for d in b.values() {
            if seen.insert(d.device.clone()) {
                self.devices.entry(d.device.clone()).or_default().push(i);
            }
        }
    }

    /// The lane inputs one device event becomes.
    pub fn route(&mut self, ev: DeviceEvent) -> Vec<(usize, Input)> {
        let mut out = Vec::new();
        match ev.kind {
            EventKind::Plate(p) => {
                if let Some(&i) = self.cameras.get(&ev.device) {
                    if p.plate.is_empty() {
                        out.push((i, Input::NoPlate));
                    } else {
                        out.push((i, Input::Plate(p)));
                    }
                }
            }
            EventKind::Input { input, active } => {
                if let Some(targets) = self.inputs.get(&(ev.device.clone(), input)) {
                    for (i, on, off) in targets {
                        let inp = if active { on } else { off };
                        if let Some(inp) = inp {
                            out.push((*i, inp.clone()));
                        }
                    }
                }
            }
            EventKind::Weight { mass, stable, .. } => {
                let lanes = self.scales.get(&ev.device).cloned().unwrap_or_default();
                let was = self.loaded.get(&ev.device).copied().unwrap_or(false);
                let now_loaded = mass >= self.zero_below;
                self.loaded.insert(ev.device.clone(), now_loaded);
                for i in lanes {
                    if !now_loaded {
                        if was {
                            out.push((i, Input::WeightZero));
                        }
                    } else {
                        out.push((i, Input::Weight { mass, stable }));
                    }
                }
            }
            EventKind::Link { online, .. } => {
                for &i in self
                    .devices
                    .get(&ev.device)
                    .map(|v| v.as_slice())
                    .unwrap_or(&[])
                {
                    let inp = if online {
                        Input::DeviceOnline(ev.device.clone())
                    } else {
                        Input::DeviceOffline(ev.device.clone())
                    };
                    out.push((i, inp));
                }
            }
            EventKind::Ups(_) => {}
        }
        out
    }
}

/// What the gateway holds for a running lane.
#[derive(Clone)]
pub struct LaneHandle {
    pub id: String,
    pub inputs: mpsc::Sender<Input>,
    pub status: watch::Receiver<LaneStatus>,
}

/// Everything a lane task needs besides its lane.
pub struct LaneDeps<D, S> {
    pub decider: Arc<D>,
    pub sink: Arc<S>,
    pub bus: Arc<CommandBus>,
    pub alarms: mpsc::UnboundedSender<Alarm>,
}

impl<D, S> Clone for LaneDeps<D, S> {
    fn clone(&self) -> Self {
        LaneDeps {
            decider: Arc::clone(&self.decider),
            sink: Arc::clone(&self.sink),
            bus: Arc::clone(&self.bus),
            alarms: self.alarms.clone(),
        }
    }
}

/// Starts one task for a lane and returns its handle.
pub fn spawn_lane<D, S>(
    lane: Lane,
    deps: LaneDeps<D, S>,
) -> (LaneHandle, tokio::task::JoinHandle<()>)
where
    D: Decider + Send + Sync + 'static,
    S: RecordSink,
{
    let (tx, rx) = mpsc::channel(256);
    let status = LaneStatus {
        lane: lane.spec.id.clone(),
        state: lane.state_name().to_string(),
        ..Default::default()
    };
    let (stx, srx) = watch::channel(status);
    let id = lane.spec.id.clone();
    let task = tokio::spawn(run_lane(lane, rx, deps, stx));
    (
        LaneHandle {
            id,
            inputs: tx,
            status: srx,
        },
        task,
    )
}

fn to_instant(deadline: DateTime<Utc>) -> tokio::time::Instant {
    let now = Utc::now();
    let wait = (deadline - now).to_std().unwrap_or_default();
    tokio::time::Instant::now() + wait
}

async fn run_lane<D, S>(
    mut lane: Lane,
    mut rx: mpsc::Receiver<Input>,
    deps: LaneDeps<D, S>,
    status: watch::Sender<LaneStatus>,
) where
    D: Decider + Send + Sync + 'static,
    S: RecordSink,
{
    let mut out = Vec::new();
    let mut counters = Tally::default();
    lane.start(Utc::now(), deps.decider.as_ref(), &mut out);
    perform(&mut lane, &mut out, &deps, &mut counters).await;
    publish(&lane, &status, counters);
    loop {
        let deadline = lane.next_deadline();
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                // The platform vehicle check runs here, in the lane's task, so the read and the
                // inputs behind it keep their order; the hook bounds its own wait (the
                // platform's check timeout), and the lane stays synchronous.
                if let Input::Plate(p) = &input {
                    if !p.plate.is_empty() && !p.offline_replay {
                        if let Some(hook) = deps.decider.before_plate(&lane.spec, p) {
                            hook.await;
                        }
                    }
                }
                let barrier = match &input {
                    Input::BarrierOpened => Some(true),
                    Input::BarrierClosed => Some(false),
                    _ => None,
                };
                lane.handle(input, Utc::now(), deps.decider.as_ref(), &mut out);
                if let Some(b) = barrier {
                    status.send_modify(|s| s.barrier_open = b);
                }
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(to_instant(d)).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                lane.advance(Utc::now(), deps.decider.as_ref(), &mut out);
            }
        }
        perform(&mut lane, &mut out, &deps, &mut counters).await;
        publish(&lane, &status, counters);
    }
}

fn publish(lane: &Lane, status: &watch::Sender<LaneStatus>, counters: Tally) {
    status.send_modify(|s| {
        s.state = lane.state_name().to_string();
        let cur = lane.current_plate();
        s.plate = cur.map(|(p, _)| p.to_string());
        s.color = cur.map(|(_, c)| c);
        s.verdict = lane.last_verdict().cloned();
        s.records = counters.records;
        s.record_failures = counters.failures;
        s.updated = Some(Utc::now());
    });
}

/// A lane task's record outcomes.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    records: u64,
    failures: u64,
    /// `ledger_write_failed` is up because the runtime raised it for a machine that does not
    /// handle `record_failed`; the next durable record clears it.
    alarm_raised: bool,
}

/// When a record failed and the machine's answer to `record_failed` (in `out`) neither raised
/// `ledger_write_failed` nor wrote to the sign, adds both: the alarm, and the `fault` text.
/// Returns whether it raised the alarm.
fn refuse_unrecorded(lane: &Lane, out: &mut Vec<Output>) -> bool {
    let sign = lane
        .spec
        .bindings
        .get(&Role::Sign)
        .map(|b| b.device.clone());
    let mut raised = false;
    let mut signed = false;
    for o in out.iter() {
        match o {
            Output::Alarm { code, raised: true } if code == LEDGER_WRITE_FAILED => raised = true,
            Output::Command(c) if Some(&c.device) == sign.as_ref() => signed = true,
            _ => {}
        }
    }
    if let (Some(device), false) = (sign, signed) {
        let lines = lane
            .spec
            .texts
            .sign
            .get("fault")
            .cloned()
            .unwrap_or_else(|| vec!["fault".into()]);
        out.push(Output::Command(DeviceCommand {
            device,
            command: Command::SignShow { lines },
        }));
    }
    if raised {
        return false;
    }
    out.push(Output::Alarm {
        code: LEDGER_WRITE_FAILED.into(),
        raised: true,
    });
    true
}

/// Performs a batch of outputs in order. Recursion is bounded: a `record_failed` batch that
/// fails to record again only raises an alarm.
async fn perform<D, S>(
    lane: &mut Lane,
    out: &mut Vec<Output>,
    deps: &LaneDeps<D, S>,
    counters: &mut Tally,
) where
    D: Decider + Send + Sync + 'static,
    S: RecordSink,
{
    for round in 0..2 {
        let mut failed = false;
        for o in out.drain(..) {
            match o {
                Output::Transition(_) => {}
                Output::Record(r) => {
                    // Later records are still attempted (the failure may be transient); only
                    // actuation after a failed record is withheld.
                    match deps.sink.record(&r).await {
                        Ok(_) => {
                            counters.records += 1;
                            if std::mem::take(&mut counters.alarm_raised) {
                                let _ = deps.alarms.send(Alarm::lane(
                                    &lane.spec.id,
                                    LEDGER_WRITE_FAILED,
                                    false,
                                ));
                            }
                        }
                        Err(e) => {
                            counters.failures += 1;
                            failed = true;
                            tracing::error!(lane = %lane.spec.id, error = %e, "ledger record failed; skipping the actuation that follows it");
                        }
                    }
                }
                Output::Command(c) => {
                    if failed {
                        tracing::warn!(lane = %lane.spec.id, device = %c.device, command = c.command.name(), "command dropped: its record is not durable");
                        continue;
                    }
                    if let Err(e) = deps.bus.send(&c.device, c.command) {
                        tracing::warn!(lane = %lane.spec.id, error = %e, "command not sent");
                        let _ = deps.alarms.send(Alarm::lane(
                            &lane.spec.id,
                            "device_command_failed",
                            true,
                        ));
                    }
                }
                Output::Alarm { code, raised } => {
                    let _ = deps.alarms.send(Alarm::lane(&lane.spec.id, code, raised));
                }
            }
        }
        if !failed {
            return;
        }
        if round == 0 {
            lane.handle(Input::RecordFailed, Utc::now(), deps.decider.as_ref(), out);
            counters.alarm_raised |= refuse_unrecorded(lane, out);
        } else {
            out.clear();
            counters.alarm_raised = true;
            let _ = deps
                .alarms
                .send(Alarm::lane(&lane.spec.id, LEDGER_WRITE_FAILED, true));
        }
    }
}
