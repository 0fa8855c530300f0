//! The lane interpreter: one instance per lane, run-to-completion, no I/O.
//!
//! Like rumqtt's protocol state, the interpreter only turns inputs into an ordered list of
//! [`Output`]s; the runtime performs them in order (awaiting the ledger before any command that
//! follows a record), and the trace command prints them. That keeps the machine testable
//! without devices and makes "record before barrier" a property of the output order.

use super::builtin::{Action, EventName, Guard, Role, WeighKind};
use super::machine::{Machine, StateId, Transition};
use crate::ledger::PassCheck;
use crate::vehicle::{EmissionStage, PlateColor, VehicleFacts};
use chrono::{DateTime, Utc};
use ecogate_drivers::{Command, DeviceCommand, Image, Mass, PlateRead};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// Internal events raised by one external input before the lane is declared looping.
const MAX_STEPS: usize = 64;
/// A barrier seen opening this long after the last open command was not commanded by us.
const COMMAND_WINDOW_SECS: i64 = 30;

pub use crate::vehicle::Direction;

/// A device bound to a lane role, optionally one channel of it (`io1.out1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRef {
    pub device: String,
    pub channel: Option<String>,
}

/// Texts for `sign.show(key)` (lines) and `voice.say(key)`, with `{plate}`-style placeholders.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    pub sign: HashMap<String, Vec<String>>,
    pub voice: HashMap<String, String>,
}

/// What a lane instance knows about its place in the site.
#[derive(Debug, Clone)]
pub struct LaneSpec {
    pub id: String,
    pub gate: String,
    /// 道闸编号 as uploaded to platforms.
    pub barrier_no: String,
    pub direction: Direction,
    pub bindings: HashMap<Role, DeviceRef>,
    pub texts: Arc<Texts>,
    pub default_cargo: Option<String>,
    /// Length of the open pulse when the barrier is a relay channel.
    pub pulse_ms: u32,
}

/// The outcome of `policy.decide` as the lane needs it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub allow: bool,
    /// Stable reason code (docs/policy.md).
    pub reason: String,
    /// Short Chinese text for the LED.
    pub text: String,
    pub review: bool,
    /// Registry facts, None for an unknown vehicle.
    pub facts: Option<VehicleFacts>,
    /// Warning level in force when decided, if any.
    pub measure: Option<String>,
    /// The platform vehicle check behind the decision, on sites that check (issue 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<PassCheck>,
}

/// Work the runtime awaits before a plate read enters the lane (the platform vehicle check).
pub type PlateHook = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The policy and registry, as the lane calls them.
pub trait Decider {
    fn decide(
        &self,
        lane: &LaneSpec,
        plate: &str,
        color: PlateColor,
        now: DateTime<Utc>,
    ) -> Verdict;
    fn measure_active(&self, gate: &str, now: DateTime<Utc>) -> bool;
    /// Asynchronous work to finish before `read` enters the (synchronous) lane, e.g. asking a
    /// platform about the vehicle so that `decide` finds the answer. None: nothing to do.
    fn before_plate(&self, _lane: &LaneSpec, _read: &PlateRead) -> Option<PlateHook> {
        None
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub operator: String,
    pub role: String,
    pub reason: String,
    /// Released from SCADA / the platform rather than the gate house.
    pub remote: bool,
    /// A plate typed by the operator when the camera read none or misread it.
    pub plate: Option<String>,
    /// Who approved it, when a second person had to (console release workflow).
    pub approval: Option<String>,
    /// Ledger id of the release request it carries out.
    pub request: Option<String>,
}

/// Inputs to a lane: device events already routed to it, operator actions, site events.
#[derive(Debug, Clone)]
pub enum Input {
    Plate(PlateRead),
    NoPlate,
    LoopOn,
    LoopOff,
    BarrierOpened,
    BarrierClosed,
    Weight { mass: Mass, stable: bool },
    WeightZero,
    CargoDeclared(String),
    ManualRelease(Release),
    DeviceOffline(String),
    DeviceOnline(String),
    PowerLoss,
    RecordFailed,
    Reset,
}

impl Input {
    pub fn event(&self) -> EventName {
        match self {
            Input::Plate(_) => EventName::Plate,
            Input::NoPlate => EventName::NoPlate,
            Input::LoopOn => EventName::LoopOn,
            Input::LoopOff => EventName::LoopOff,
            Input::BarrierOpened => EventName::BarrierOpened,
            Input::BarrierClosed => EventName::BarrierClosed,
            Input::Weight { stable: true, .. } => EventName::WeightStable,
            Input::Weight { stable: false, .. } => EventName::Weight,
            Input::WeightZero => EventName::WeightZero,
            Input::CargoDeclared(_) => EventName::CargoDeclared,
            Input::ManualRelease(_) => EventName::ManualRelease,
            Input::DeviceOffline(_) => EventName::DeviceOffline,
            Input::DeviceOnline(_) => EventName::DeviceOnline,
            Input::PowerLoss => EventName::PowerLoss,
            Input::RecordFailed => EventName::RecordFailed,
            Input::Reset => EventName::Reset,
        }
    }

    fn cause(&self) -> String {
        match self {
            Input::Plate(p) => format!("plate {} {}", p.plate, p.color),
            Input::Weight { mass, .. } => format!("{mass} kg"),
            Input::CargoDeclared(c) => format!("cargo {c}"),
            Input::ManualRelease(r) => format!("by {} ({}): {}", r.operator, r.role, r.reason),
            Input::DeviceOffline(d) | Input::DeviceOnline(d) => format!("device {d}"),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BarrierMode {
    Auto,
    Manual,
    Remote,
}

#[derive(Debug, Clone, Serialize)]
pub struct PassRecord {
    pub lane: String,
    pub gate: String,
    pub barrier_no: String,
    pub direction: Direction,
    pub plate: String,
    pub color: PlateColor,
    pub verdict: Option<Verdict>,
    pub mode: BarrierMode,
    pub release: Option<Release>,
    pub confidence: u8,
    pub camera_id: Option<String>,
    #[serde(skip)]
    pub images: Vec<Image>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeighRecord {
    pub lane: String,
    pub gate: String,
    pub direction: Direction,
    pub plate: String,
    pub color: PlateColor,
    pub mass: Mass,
    pub kind: &'static str,
    pub cargo: Option<String>,
    pub scale: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExceptionRecord {
    pub lane: String,
    pub gate: String,
    pub code: String,
    pub plate: Option<String>,
    pub at: DateTime<Utc>,
}

/// A fact the lane asks the ledger to make durable.
// One per vehicle and moved once into the ledger: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Pass(PassRecord),
    Weighing(WeighRecord),
    Exception(ExceptionRecord),
}

#[derive(Debug, Clone, Serialize)]
pub struct TransitionLog {
    pub lane: String,
    pub from: String,
    pub to: String,
    pub event: String,
    pub cause: String,
    pub at: DateTime<Utc>,
}

/// What the lane asks the outside world to do, in order.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Output {
    Transition(TransitionLog),
    /// Must be durable before any later `Command` of the same batch is sent.
    Record(Record),
    Command(DeviceCommand),
    Alarm {
        code: String,
        raised: bool,
    },
}

#[derive(Debug, Clone)]
struct Vehicle {
    plate: String,
    color: PlateColor,
    read: Option<PlateRead>,
    verdict: Option<Verdict>,
    weight: Option<Mass>,
    cargo: Option<String>,
    release: Option<Release>,
    recorded: bool,
}

/// One running lane.
pub struct Lane {
    pub spec: LaneSpec,
    machine: Arc<Machine>,
    state: StateId,
    timers: Vec<Option<DateTime<Utc>>>,
    vehicle: Option<Vehicle>,
    last_plate: Option<PlateRead>,
    last_weight: Option<Mass>,
    loop_occupied: bool,
    barrier_open: bool,
    last_open_command: Option<DateTime<Utc>>,
    queue: Vec<(EventName, String)>,
}

impl Lane {
    /// A lane in its initial state. Call [`Lane::start`] to run the initial state's entry actions.
    pub fn new(spec: LaneSpec, machine: Arc<Machine>) -> Self {
        let state = machine.initial;
        Lane {
            spec,
            timers: Vec::new(),
            state,
            machine,
            vehicle: None,
            last_plate: None,
            last_weight: None,
            loop_occupied: false,
            barrier_open: false,
            last_open_command: None,
            queue: Vec::new(),
        }
    }

    pub fn state_name(&self) -> &str {
        &self.machine.states[self.state].name
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The current vehicle's plate, if any.
    pub fn current_plate(&self) -> Option<(&str, PlateColor)> {
        self.vehicle.as_ref().map(|v| (v.plate.as_str(), v.color))
    }

    pub fn last_verdict(&self) -> Option<&Verdict> {
        self.vehicle.as_ref().and_then(|v| v.verdict.as_ref())
    }

    /// Runs the initial state's entry actions and starts its timers.
    pub fn start(&mut self, now: DateTime<Utc>, d: &dyn Decider, out: &mut Vec<Output>) {
        let entry = self.machine.states[self.state].entry.clone();
        self.arm_timers(now);
        for a in &entry {
            self.act(a, now, d, out);
        }
        self.drain(now, d, out);
    }

    /// The earliest pending timer deadline.
    pub fn next_deadline(&self) -> Option<DateTime<Utc>> {
        self.timers.iter().flatten().min().copied()
    }

    /// Fires every timer due at or before `now`, each at its own deadline, in order.
    pub fn advance(&mut self, now: DateTime<Utc>, d: &dyn Decider, out: &mut Vec<Output>) {
        while let Some((i, at)) = self
            .timers
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .filter(|(_, t)| *t <= now)
            .min_by_key(|(_, t)| *t)
        {
            self.timers[i] = None;
            let timer = self.machine.states[self.state].after[i].clone();
            let label = format!("after {}", timer.label);
            let machine = Arc::clone(&self.machine);
            if self.guard_holds(timer.transition.guard.as_ref(), at, d) {
                self.fire(
                    &machine,
                    &timer.transition,
                    &label,
                    String::new(),
                    at,
                    d,
                    out,
                );
            }
            self.drain(at, d, out);
        }
    }

    /// Handles one input to completion: its transition and every internal event it raises.
    pub fn handle(
        &mut self,
        input: Input,
        now: DateTime<Utc>,
        d: &dyn Decider,
        out: &mut Vec<Output>,
    ) {
        // A read the camera buffered while we were unreachable is history: the truck is gone
        // (or the camera's offline mode let it through). Record it; never decide or actuate.
        if let Input::Plate(p) = &input {
            if p.offline_replay {
                out.push(Output::Record(Record::Exception(ExceptionRecord {
                    lane: self.spec.id.clone(),
                    gate: self.spec.gate.clone(),
                    code: "camera_offline_record".into(),
                    plate: Some(p.plate.clone()),
                    at: p.captured_at.unwrap_or(now),
                })));
                return;
            }
        }
        let ev = input.event();
        let cause = input.cause();
        self.absorb(input, now, out);
        self.dispatch(ev, cause, now, d, out);
        self.drain(now, d, out);
    }

    /// Updates what the lane observes, whatever the machine does with the event.
    fn absorb(&mut self, input: Input, now: DateTime<Utc>, out: &mut Vec<Output>) {
        match input {
            Input::Plate(p) => self.last_plate = Some(p),
            Input::LoopOn => self.loop_occupied = true,
            Input::LoopOff => self.loop_occupied = false,
            Input::BarrierOpened => {
                self.barrier_open = true;
                let commanded = self
                    .last_open_command
                    .is_some_and(|t| (now - t).num_seconds() <= COMMAND_WINDOW_SECS);
                if !commanded {
                    // Invariant 1: a barrier seen opening with no command is an exception.
                    out.push(Output::Record(Record::Exception(ExceptionRecord {
                        lane: self.spec.id.clone(),
                        gate: self.spec.gate.clone(),
                        code: "barrier_opened_without_command".into(),
                        plate: self.vehicle.as_ref().map(|v| v.plate.clone()),
                        at: now,
                    })));
                }
            }
            Input::BarrierClosed => self.barrier_open = false,
            Input::Weight { mass, .. } => self.last_weight = Some(mass),
            Input::WeightZero => self.last_weight = Some(Mass::ZERO),
            Input::CargoDeclared(c) => {
                if let Some(v) = self.vehicle.as_mut() {
                    v.cargo = Some(c);
                }
            }
            Input::ManualRelease(r) => {
                let typed = r.plate.clone();
                let v = self.vehicle.get_or_insert_with(|| {
                    let (plate, color, read) = match &self.last_plate {
                        Some(p) => (p.plate.clone(), p.color, Some(p.clone())),
                        None => (String::new(), PlateColor::Other, None),
                    };
                    Vehicle {
                        plate,
                        color,
                        read,
                        verdict: None,
                        weight: None,
                        cargo: None,
                        release: None,
                        recorded: false,
                    }
                });
                if let Some(p) = typed {
                    v.plate = p;
                }
                v.release = Some(r);
                // A release is a new fact about the vehicle: it must be recorded again.
                v.recorded = false;
            }
            _ => {}
        }
    }

    fn drain(&mut self, now: DateTime<Utc>, d: &dyn Decider, out: &mut Vec<Output>) {
        let mut steps = 0;
        while !self.queue.is_empty() {
            steps += 1;
            if steps > MAX_STEPS {
                self.queue.clear();
                tracing::error!(lane = %self.spec.id, state = %self.state_name(), "lane machine raised events in a loop; stopped");
                out.push(Output::Alarm {
                    code: "machine_loop".into(),
                    raised: true,
                });
                return;
            }
            let (ev, cause) = self.queue.remove(0);
            self.dispatch(ev, cause, now, d, out);
        }
    }

    fn dispatch(
        &mut self,
        ev: EventName,
        cause: String,
        now: DateTime<Utc>,
        d: &dyn Decider,
        out: &mut Vec<Output>,
    ) {
        let machine = Arc::clone(&self.machine);
        let transitions = &machine.states[self.state].on[ev.index()];
        let chosen = transitions
            .iter()
            .find(|t| self.guard_holds(t.guard.as_ref(), now, d));
        match chosen {
            Some(t) => self.fire(&machine, t, ev.name(), cause, now, d, out),
            None => {
                tracing::trace!(lane = %self.spec.id, state = %self.state_name(), event = ev.name(), "event not handled in this state")
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        machine: &Machine,
        t: &Transition,
        event: &str,
        cause: String,
        now: DateTime<Utc>,
        d: &dyn Decider,
        out: &mut Vec<Output>,
    ) {
        let from = self.state;
        let to = t.target.unwrap_or(from);
        let log = TransitionLog {
            lane: self.spec.id.clone(),
            from: machine.states[from].name.clone(),
            to: machine.states[to].name.clone(),
            event: event.to_string(),
            cause,
            at: now,
        };
        tracing::info!(lane = %log.lane, from = %log.from, to = %log.to, event = %log.event, cause = %log.cause, "transition");
        out.push(Output::Transition(log));
        if t.target.is_some() {
            for a in &machine.states[from].exit {
                self.act(a, now, d, out);
            }
        }
        for a in &t.actions {
            self.act(a, now, d, out);
        }
        if let Some(target) = t.target {
            self.state = target;
            self.arm_timers(now);
            for a in &machine.states[target].entry {
                self.act(a, now, d, out);
            }
        }
    }

    fn arm_timers(&mut self, now: DateTime<Utc>) {
        let after = &self.machine.states[self.state].after;
        self.timers.clear();
        self.timers.extend(after.iter().map(|t| {
            chrono::Duration::from_std(t.after)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
        }));
    }

    fn guard_holds(&self, g: Option<&Guard>, now: DateTime<Utc>, d: &dyn Decider) -> bool {
        let Some(g) = g else { return true };
        let weight = self
            .vehicle
            .as_ref()
            .and_then(|v| v.weight)
            .or(self.last_weight);
        match g {
            Guard::Not(inner) => !self.guard_holds(Some(inner), now, d),
            Guard::DecisionReview => self.last_verdict().is_some_and(|v| v.review),
            Guard::VehicleRegistered => self.last_verdict().is_some_and(|v| v.facts.is_some()),
            Guard::VehicleNewEnergy => self.vehicle.as_ref().is_some_and(|v| {
                v.color.is_new_energy()
                    || v.verdict
                        .as_ref()
                        .and_then(|x| x.facts.as_ref())
                        .is_some_and(|f| {
                            f.stage == EmissionStage::Electric || f.fuel.is_zero_emission()
                        })
            }),
            Guard::WeightAbove(m) => weight.is_some_and(|w| w > *m),
            Guard::WeightBelow(m) => weight.is_some_and(|w| w < *m),
            Guard::LaneHas(r) => self.spec.bindings.contains_key(r),
            Guard::PlateSame => match (&self.vehicle, &self.last_plate) {
                (Some(v), Some(p)) => v.plate == p.plate && v.color == p.color,
                _ => false,
            },
            Guard::BarrierOpen => self.barrier_open,
            Guard::LoopOccupied => self.loop_occupied,
            Guard::CargoKnown => {
                self.vehicle.as_ref().is_some_and(|v| v.cargo.is_some())
                    || self.spec.default_cargo.is_some()
            }
            Guard::MeasureActive => d.measure_active(&self.spec.gate, now),
        }
    }

    fn command(&mut self, role: Role, command: Command, out: &mut Vec<Output>) {
        // Roles a machine needs are checked against the lane's bindings at load time; a lane
        // that lacks one (only possible when guarded by lane.has) just skips the command.
        if let Some(r) = self.spec.bindings.get(&role) {
            out.push(Output::Command(DeviceCommand {
                device: r.device.clone(),
                command,
            }));
        }
    }

    fn render(&self, template: &str) -> String {
        let v = self.vehicle.as_ref();
        let verdict = v.and_then(|v| v.verdict.as_ref());
        let mut s = template.to_string();
        let subs: [(&str, String); 8] = [
            ("{plate}", v.map(|v| v.plate.clone()).unwrap_or_default()),
            (
                "{color}",
                v.map(|v| v.color.chinese().to_string()).unwrap_or_default(),
            ),
            (
                "{reason}",
                verdict.map(|x| x.text.clone()).unwrap_or_default(),
            ),
            (
                "{weight}",
                v.and_then(|v| v.weight)
                    .or(self.last_weight)
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            ),
            (
                "{stage}",
                verdict
                    .and_then(|x| x.facts.as_ref())
                    .map(|f| f.stage.chinese())
                    .unwrap_or_default(),
            ),
            ("{gate}", self.spec.gate.clone()),
            ("{lane}", self.spec.id.clone()),
            (
                "{cargo}",
                v.and_then(|v| v.cargo.clone())
                    .or_else(|| self.spec.default_cargo.clone())
                    .unwrap_or_default(),
            ),
        ];
        for (k, val) in subs {
            if s.contains(k) {
                s = s.replace(k, &val);
            }
        }
        s
    }

    /// The record for the current vehicle (or, with none, an exception), so nothing passes
    /// unrecorded.
    fn pass_record(&mut self, now: DateTime<Utc>) -> Record {
        match self.vehicle.as_mut() {
            Some(v) => {
                v.recorded = true;
                let mode = match &v.release {
                    None => BarrierMode::Auto,
                    Some(r) if r.remote => BarrierMode::Remote,
                    Some(_) => BarrierMode::Manual,
                };
                let read = v.read.as_ref();
                Record::Pass(PassRecord {
                    lane: self.spec.id.clone(),
                    gate: self.spec.gate.clone(),
                    barrier_no: self.spec.barrier_no.clone(),
                    direction: self.spec.direction,
                    plate: v.plate.clone(),
                    color: v.color,
                    verdict: v.verdict.clone(),
                    mode,
                    release: v.release.clone(),
                    confidence: read.map(|r| r.confidence).unwrap_or(0),
                    camera_id: read.and_then(|r| r.source_id.clone()),
                    images: read.map(|r| r.images.clone()).unwrap_or_default(),
                    at: now,
                })
            }
            None => Record::Exception(ExceptionRecord {
                lane: self.spec.id.clone(),
                gate: self.spec.gate.clone(),
                code: "barrier_without_vehicle".into(),
                plate: None,
                at: now,
            }),
        }
    }

    fn act(&mut self, a: &Action, now: DateTime<Utc>, d: &dyn Decider, out: &mut Vec<Output>) {
        match a {
            Action::PolicyDecide => {
                let (plate, color, read) = match &self.last_plate {
                    Some(p) => (p.plate.clone(), p.color, Some(p.clone())),
                    None => (String::new(), PlateColor::Other, None),
                };
                let verdict = if plate.is_empty() {
                    Verdict {
                        allow: false,
                        reason: "no_plate".into(),
                        text: "未识别车牌".into(),
                        review: false,
                        facts: None,
                        measure: None,
                        check: None,
                    }
                } else {
                    d.decide(&self.spec, &plate, color, now)
                };
                let ev = if verdict.allow {
                    EventName::Allow
                } else {
                    EventName::Deny
                };
                let cause = format!("{} {}", verdict.reason, verdict.text);
                self.vehicle = Some(Vehicle {
                    plate,
                    color,
                    read,
                    verdict: Some(verdict),
                    weight: None,
                    cargo: None,
                    release: None,
                    recorded: false,
                });
                self.queue.push((ev, cause));
            }
            Action::LedgerRecord => {
                let r = self.pass_record(now);
                out.push(Output::Record(r));
            }
            Action::LedgerWeight(kind) => {
                let Some(v) = self.vehicle.as_ref() else {
                    return;
                };
                let Some(mass) = v.weight.or(self.last_weight) else {
                    out.push(Output::Alarm {
                        code: "weight_missing".into(),
                        raised: true,
                    });
                    return;
                };
                let scale = self
                    .spec
                    .bindings
                    .get(&Role::Scale)
                    .map(|r| r.device.clone())
                    .unwrap_or_default();
                out.push(Output::Record(Record::Weighing(WeighRecord {
                    lane: self.spec.id.clone(),
                    gate: self.spec.gate.clone(),
                    direction: self.spec.direction,
                    plate: v.plate.clone(),
                    color: v.color,
                    mass,
                    kind: kind_name(*kind),
                    cargo: v.cargo.clone().or_else(|| self.spec.default_cargo.clone()),
                    scale,
                    at: now,
                })));
            }
            Action::LedgerException(code) => {
                out.push(Output::Record(Record::Exception(ExceptionRecord {
                    lane: self.spec.id.clone(),
                    gate: self.spec.gate.clone(),
                    code: code.clone(),
                    plate: self.vehicle.as_ref().map(|v| v.plate.clone()),
                    at: now,
                })))
            }
            Action::BarrierOpen => {
                // Invariant 1, whatever the machine file says: the barrier never opens for a
                // vehicle (or release) that is not yet in the ledger.
                if !self.vehicle.as_ref().is_some_and(|v| v.recorded) {
                    let r = self.pass_record(now);
                    out.push(Output::Record(r));
                }
                self.last_open_command = Some(now);
                let cmd = match self
                    .spec
                    .bindings
                    .get(&Role::Barrier)
                    .and_then(|r| r.channel.clone())
                {
                    Some(output) => Command::RelayPulse {
                        output,
                        ms: self.spec.pulse_ms,
                    },
                    None => Command::BarrierOpen,
                };
                self.command(Role::Barrier, cmd, out);
            }
            Action::BarrierClose => self.command(Role::Barrier, Command::BarrierClose, out),
            Action::RelayPulse { output, ms } => self.command(
                Role::Barrier,
                Command::RelayPulse {
                    output: output.clone(),
                    ms: *ms,
                },
                out,
            ),
            Action::SignShow(key) => {
                let texts = Arc::clone(&self.spec.texts);
                let lines = texts
                    .sign
                    .get(key)
                    .map(|ls| ls.iter().map(|l| self.render(l)).collect())
                    .unwrap_or_else(|| vec![key.clone()]);
                self.command(Role::Sign, Command::SignShow { lines }, out);
            }
            Action::VoiceSay(key) => {
                let texts = Arc::clone(&self.spec.texts);
                let text = texts
                    .voice
                    .get(key)
                    .map(|t| self.render(t))
                    .unwrap_or_else(|| key.clone());
                self.command(Role::Voice, Command::VoiceSay { text }, out);
            }
            Action::ScaleCapture => {
                let w = self.last_weight;
                if let Some(v) = self.vehicle.as_mut() {
                    v.weight = w;
                }
            }
            Action::AlarmRaise(code) => out.push(Output::Alarm {
                code: code.clone(),
                raised: true,
            }),
            Action::AlarmClear(code) => out.push(Output::Alarm {
                code: code.clone(),
                raised: false,
            }),
            Action::CameraTrigger => self.command(Role::Camera, Command::CameraTrigger, out),
            Action::VehicleClear => {
                self.vehicle = None;
                self.last_plate = None;
            }
        }
    }
}

fn kind_name(k: WeighKind) -> &'static str {
    k.name()
}
