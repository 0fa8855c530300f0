//! The closed set of events, guards and actions a lane machine may name. The TOML says *what*;
//! this module says what each name means and what it needs from the lane.

use ecogate_drivers::Mass;
use std::fmt;

/// Device roles a lane binds to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Camera,
    Barrier,
    Loop,
    Scale,
    Sign,
    Voice,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Camera,
        Role::Barrier,
        Role::Loop,
        Role::Scale,
        Role::Sign,
        Role::Voice,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Camera => "camera",
            Role::Barrier => "barrier",
            Role::Loop => "loop",
            Role::Scale => "scale",
            Role::Sign => "sign",
            Role::Voice => "voice",
        }
    }

    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! events {
    ($($variant:ident = $name:literal, $role:expr, $doc:literal;)*) => {
        /// Events a lane machine reacts to.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventName { $($variant),* }

        impl EventName {
            pub const ALL: &'static [EventName] = &[$(EventName::$variant),*];
            pub fn name(self) -> &'static str {
                match self { $(EventName::$variant => $name),* }
            }
            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($name => Some(EventName::$variant),)* _ => None }
            }
            /// The device role that produces it, if any.
            pub fn role(self) -> Option<Role> {
                match self { $(EventName::$variant => $role),* }
            }
            pub fn doc(self) -> &'static str {
                match self { $(EventName::$variant => $doc),* }
            }
            pub fn index(self) -> usize { self as usize }
        }
    };
}

events! {
    Plate = "plate", Some(Role::Camera), "the lane camera read a plate (after de-duplication and debounce)";
    NoPlate = "no_plate", Some(Role::Camera), "the camera saw a vehicle but read no plate";
    Allow = "allow", None, "policy.decide allowed the current vehicle";
    Deny = "deny", None, "policy.decide refused the current vehicle";
    LoopOn = "loop_on", Some(Role::Loop), "the loop detector (or IR beam) became occupied";
    LoopOff = "loop_off", Some(Role::Loop), "the loop detector became free";
    BarrierOpened = "barrier_opened", Some(Role::Barrier), "the barrier's open limit switch became active";
    BarrierClosed = "barrier_closed", Some(Role::Barrier), "the barrier's closed limit switch became active";
    Weight = "weight", Some(Role::Scale), "an unstable weight sample (rate-limited by the driver)";
    WeightStable = "weight_stable", Some(Role::Scale), "the scale reports a stable weight above its minimum (once per vehicle)";
    WeightZero = "weight_zero", Some(Role::Scale), "the scale went back below its minimum weight";
    CargoDeclared = "cargo_declared", None, "an operator or the metering system declared the cargo for the current vehicle";
    ManualRelease = "manual_release", None, "an operator or SCADA released the barrier (operator, role and reason attached)";
    DeviceOffline = "device_offline", None, "one of the lane's devices went offline";
    DeviceOnline = "device_online", None, "one of the lane's devices came back online";
    PowerLoss = "power_loss", None, "the UPS reports battery low: the site is shutting down";
    RecordFailed = "record_failed", None, "ledger.record could not make the record durable; actuation that followed it was skipped";
    Reset = "reset", None, "an operator reset the lane";
}

/// Whether a weighing is the loaded (gross) or empty (tare) weight; `auto` lets the ledger pair
/// it with the other weighing of the same visit and call the larger one gross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeighKind {
    Gross,
    Tare,
    Auto,
}

impl WeighKind {
    pub fn name(self) -> &'static str {
        match self {
            WeighKind::Gross => "gross",
            WeighKind::Tare => "tare",
            WeighKind::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The last decision allowed the vehicle but flagged it for review.
    DecisionReview,
    /// The current vehicle is in the registry.
    VehicleRegistered,
    /// The current vehicle is new-energy (plate colour, stage D or zero-emission fuel).
    VehicleNewEnergy,
    /// The last weight (captured, else last sample) is above / below a value in kg.
    WeightAbove(Mass),
    WeightBelow(Mass),
    /// The lane has a device bound to this role.
    LaneHas(Role),
    /// The plate just read is the current vehicle's plate (a repeat read).
    PlateSame,
    /// The barrier's last observed state is open.
    BarrierOpen,
    /// The loop detector is occupied.
    LoopOccupied,
    /// The current vehicle has a declared cargo (or the lane has a default).
    CargoKnown,
    /// A warning-level control measure is in force.
    MeasureActive,
    Not(Box<Guard>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    PolicyDecide,
    LedgerRecord,
    LedgerWeight(WeighKind),
    LedgerException(String),
    BarrierOpen,
    BarrierClose,
    SignShow(String),
    VoiceSay(String),
    ScaleCapture,
    AlarmRaise(String),
    AlarmClear(String),
    CameraTrigger,
    VehicleClear,
    RelayPulse { output: String, ms: u32 },
}

/// A built-in as documented: name, parameters, meaning, role it needs.
pub struct Builtin {
    pub name: &'static str,
    pub params: &'static str,
    pub doc: &'static str,
    pub role: Option<Role>,
}

pub const GUARDS: &[Builtin] = &[
    Builtin { name: "decision.review", params: "", doc: "the last decision allowed the vehicle but flagged it for review", role: None },
    Builtin { name: "vehicle.registered", params: "", doc: "the current vehicle is in the registry", role: None },
    Builtin { name: "vehicle.new_energy", params: "", doc: "the current vehicle is new-energy (green/yellow-green plate, stage D, electric or hydrogen fuel)", role: None },
    Builtin { name: "weight.above", params: "(kg)", doc: "the captured weight (else the last sample) is above kg", role: Some(Role::Scale) },
    Builtin { name: "weight.below", params: "(kg)", doc: "the captured weight (else the last sample) is below kg", role: Some(Role::Scale) },
    Builtin { name: "lane.has", params: "(role)", doc: "the lane binds a device to role (camera, barrier, loop, scale, sign, voice)", role: None },
    Builtin { name: "plate.same", params: "", doc: "the plate just read equals the current vehicle's plate and colour", role: None },
    Builtin { name: "barrier.is_open", params: "", doc: "the barrier's last observed limit-switch state is open", role: Some(Role::Barrier) },
    Builtin { name: "loop.occupied", params: "", doc: "the loop detector is occupied", role: Some(Role::Loop) },
    Builtin { name: "cargo.known", params: "", doc: "the current vehicle has a declared cargo, or the lane has a default cargo", role: None },
    Builtin { name: "measure.active", params: "", doc: "a heavy-pollution warning measure is in force for this gate", role: None },
];

pub const ACTIONS: &[Builtin] = &[
    Builtin { name: "policy.decide", params: "", doc: "look up the vehicle of the last plate read and run the access policy; raises `allow` or `deny` after the current transition completes", role: None },
    Builtin { name: "ledger.record", params: "", doc: "append the pass attempt (decision, reason, barrier mode, stage and fuel snapshot, photos) to the ledger and wait until it is durable; actuation after it runs only if it succeeded", role: None },
    Builtin { name: "ledger.weight", params: "(gross|tare|auto)", doc: "append the captured weighing (with cargo and scale) to the ledger, durably", role: Some(Role::Scale) },
    Builtin { name: "ledger.exception", params: "(code)", doc: "append an exception record (e.g. barrier_without_plate) to the ledger, durably", role: None },
    Builtin { name: "barrier.open", params: "", doc: "open the barrier (a relay pulse when the lane names a channel, e.g. barrier = \"io1.out1\")", role: Some(Role::Barrier) },
    Builtin { name: "barrier.close", params: "", doc: "close the barrier", role: Some(Role::Barrier) },
    Builtin { name: "sign.show", params: "(text)", doc: "show the lines of [texts.sign.<text>] on the LED sign, placeholders filled in", role: Some(Role::Sign) },
    Builtin { name: "voice.say", params: "(text)", doc: "speak [texts.voice.<text>], placeholders filled in", role: Some(Role::Voice) },
    Builtin { name: "scale.capture", params: "", doc: "take the last stable weight as the current vehicle's weight", role: Some(Role::Scale) },
    Builtin { name: "alarm.raise", params: "(code)", doc: "raise a lane alarm (published, and recorded in the ledger)", role: None },
    Builtin { name: "alarm.clear", params: "(code)", doc: "clear a lane alarm", role: None },
    Builtin { name: "camera.trigger", params: "", doc: "ask the lane camera for a fresh capture", role: Some(Role::Camera) },
    Builtin { name: "vehicle.clear", params: "", doc: "forget the current vehicle (plate, decision, weight, cargo)", role: None },
    Builtin { name: "relay.pulse", params: "(output, ms)", doc: "pulse an output of the barrier device for ms milliseconds", role: Some(Role::Barrier) },
];

/// Splits `name(arg, arg)` into the name and trimmed, unquoted arguments.
pub fn split_call(s: &str) -> Result<(&str, Vec<String>), String> {
    let s = s.trim();
    let Some(open) = s.find('(') else {
        return Ok((s, Vec::new()));
    };
    let Some(inner) = s[open + 1..].strip_suffix(')') else {
        return Err(format!("`{s}` opens `(` but does not end with `)`"));
    };
    let args = if inner.trim().is_empty() {
        Vec::new()
    } else {
        inner
            .split(',')
            .map(|a| a.trim().trim_matches('"').trim_matches('\'').to_string())
            .collect()
    };
    Ok((s[..open].trim(), args))
}

fn arity(name: &str, args: &[String], n: usize, params: &str) -> Result<(), String> {
    if args.len() == n {
        Ok(())
    } else if n == 0 {
        Err(format!("`{name}` takes no arguments"))
    } else {
        Err(format!(
            "`{name}` takes {n} argument{}: {name}{params}",
            if n == 1 { "" } else { "s" }
        ))
    }
}

fn mass_arg(name: &str, a: &str) -> Result<Mass, String> {
    a.parse::<Mass>()
        .map_err(|_| format!("`{name}` needs a weight in kg such as 1000, got `{a}`"))
}

fn ident_arg(name: &str, a: &str) -> Result<String, String> {
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    {
        Ok(a.to_string())
    } else {
        Err(format!(
            "`{name}` needs a name made of letters, digits, `_` or `-`, got `{a}`"
        ))
    }
}

/// Error from parsing a guard or action: the message, and a close known name when it was a typo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinError {
    pub message: String,
    pub suggestion: Option<&'static str>,
}

fn unknown(kind: &str, name: &str, table: &'static [Builtin]) -> BuiltinError {
    BuiltinError {
        message: format!("unknown {kind} `{name}`"),
        suggestion: crate::config::diag::closest(name, table.iter().map(|b| b.name)),
    }
}

impl From<String> for BuiltinError {
    fn from(message: String) -> Self {
        BuiltinError {
            message,
            suggestion: None,
        }
    }
}

pub fn parse_guard(s: &str) -> Result<Guard, BuiltinError> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix('!') {
        return Ok(Guard::Not(Box::new(parse_guard(rest)?)));
    }
    let (name, args) = split_call(t)?;
    let g = match name {
        "decision.review" => Guard::DecisionReview,
        "vehicle.registered" => Guard::VehicleRegistered,
        "vehicle.new_energy" => Guard::VehicleNewEnergy,
        "plate.same" => Guard::PlateSame,
        "barrier.is_open" => Guard::BarrierOpen,
        "loop.occupied" => Guard::LoopOccupied,
        "cargo.known" => Guard::CargoKnown,
        "measure.active" => Guard::MeasureActive,
        "weight.above" => {
            arity(name, &args, 1, "(kg)")?;
            return Ok(Guard::WeightAbove(mass_arg(name, &args[0])?));
        }
        "weight.below" => {
            arity(name, &args, 1, "(kg)")?;
            return Ok(Guard::WeightBelow(mass_arg(name, &args[0])?));
        }
        "lane.has" => {
            arity(name, &args, 1, "(role)")?;
            let role = Role::from_name(&args[0]).ok_or_else(|| {
                format!(
                    "`lane.has` needs a role (camera, barrier, loop, scale, sign, voice), got `{}`",
                    args[0]
                )
            })?;
            return Ok(Guard::LaneHas(role));
        }
        _ => return Err(unknown("guard", name, GUARDS)),
    };
    arity(name, &args, 0, "")?;
    Ok(g)
}

pub fn parse_action(s: &str) -> Result<Action, BuiltinError> {
    let (name, args) = split_call(s)?;
    let one = |params: &str| -> Result<String, BuiltinError> {
        arity(name, &args, 1, params)?;
        Ok(ident_arg(name, &args[0])?)
    };
    let a = match name {
        "policy.decide" => Action::PolicyDecide,
        "ledger.record" => Action::LedgerRecord,
        "barrier.open" => Action::BarrierOpen,
        "barrier.close" => Action::BarrierClose,
        "scale.capture" => Action::ScaleCapture,
        "camera.trigger" => Action::CameraTrigger,
        "vehicle.clear" => Action::VehicleClear,
        "ledger.weight" => {
            let kind = if args.is_empty() {
                WeighKind::Auto
            } else {
                arity(name, &args, 1, "(gross|tare|auto)")?;
                match args[0].as_str() {
                    "gross" => WeighKind::Gross,
                    "tare" => WeighKind::Tare,
                    "auto" => WeighKind::Auto,
                    other => {
                        return Err(format!(
                            "`ledger.weight` takes gross, tare or auto, got `{other}`"
                        )
                        .into())
                    }
                }
            };
            return Ok(Action::LedgerWeight(kind));
        }
        "ledger.exception" => return Ok(Action::LedgerException(one("(code)")?)),
        "sign.show" => return Ok(Action::SignShow(one("(text)")?)),
        "voice.say" => return Ok(Action::VoiceSay(one("(text)")?)),
        "alarm.raise" => return Ok(Action::AlarmRaise(one("(code)")?)),
        "alarm.clear" => return Ok(Action::AlarmClear(one("(code)")?)),
        "relay.pulse" => {
            arity(name, &args, 2, "(output, ms)")?;
            let output = ident_arg(name, &args[0])?;
            let ms = args[1]
                .parse::<u32>()
                .ok()
                .filter(|ms| (10..=60_000).contains(ms))
                .ok_or_else(|| {
                    format!(
                        "`relay.pulse` needs a pulse length in ms from 10 to 60000, got `{}`",
                        args[1]
                    )
                })?;
            return Ok(Action::RelayPulse { output, ms });
        }
        _ => return Err(unknown("action", name, ACTIONS)),
    };
    arity(name, &args, 0, "")?;
    Ok(a)
}

impl Action {
    /// The role the action needs the lane to bind.
    pub fn role(&self) -> Option<Role> {
        match self {
            Action::BarrierOpen | Action::BarrierClose | Action::RelayPulse { .. } => {
                Some(Role::Barrier)
            }
            Action::SignShow(_) => Some(Role::Sign),
            Action::VoiceSay(_) => Some(Role::Voice),
            Action::ScaleCapture | Action::LedgerWeight(_) => Some(Role::Scale),
            Action::CameraTrigger => Some(Role::Camera),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::PolicyDecide => f.write_str("policy.decide"),
            Action::LedgerRecord => f.write_str("ledger.record"),
            Action::LedgerWeight(k) => write!(f, "ledger.weight({})", k.name()),
            Action::LedgerException(c) => write!(f, "ledger.exception({c})"),
            Action::BarrierOpen => f.write_str("barrier.open"),
            Action::BarrierClose => f.write_str("barrier.close"),
            Action::SignShow(t) => write!(f, "sign.show({t})"),
            Action::VoiceSay(t) => write!(f, "voice.say({t})"),
            Action::ScaleCapture => f.write_str("scale.capture"),
            Action::AlarmRaise(c) => write!(f, "alarm.raise({c})"),
            Action::AlarmClear(c) => write!(f, "alarm.clear({c})"),
            Action::CameraTrigger => f.write_str("camera.trigger"),
            Action::VehicleClear => f.write_str("vehicle.clear"),
            Action::RelayPulse { output, ms } => write!(f, "relay.pulse({output}, {ms})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_calls_and_rejects_bad_arity() {
        assert_eq!(
            parse_action("sign.show(welcome)"),
            Ok(Action::SignShow("welcome".into()))
        );
        assert_eq!(
            parse_action("relay.pulse(out2, 500)"),
            Ok(Action::RelayPulse {
                output: "out2".into(),
                ms: 500
            })
        );
        assert_eq!(
            parse_action("ledger.weight"),
            Ok(Action::LedgerWeight(WeighKind::Auto))
        );
        assert!(parse_action("barrier.open(1)").is_err());
        assert!(parse_action("sign.show").is_err());
        assert!(parse_action("sign.show(a b)").is_err());
        assert!(parse_action("relay.pulse(o, 5)").is_err());
        let e = parse_action("barier.open").unwrap_err();
        assert_eq!(e.suggestion, Some("barrier.open"));
        assert_eq!(
            parse_guard("!weight.above(1000.5)"),
            Ok(Guard::Not(Box::new(Guard::WeightAbove(Mass::from_grams(
                1_000_500
            )))))
        );
        assert!(parse_guard("lane.has(printer)").is_err());
        assert!(parse_guard("weight.above(heavy)").is_err());
        assert!(split_call("a.b(").is_err());
    }

    #[test]
    fn every_documented_builtin_parses() {
        for b in ACTIONS {
            let call = match b.params {
                "" => b.name.to_string(),
                "(output, ms)" => format!("{}(out1, 500)", b.name),
                _ => format!("{}(gross)", b.name),
            };
            assert!(parse_action(&call).is_ok(), "{call}");
        }
        for b in GUARDS {
            let call = match b.params {
                "" => b.name.to_string(),
                "(role)" => format!("{}(scale)", b.name),
                _ => format!("{}(100)", b.name),
            };
            assert!(parse_guard(&call).is_ok(), "{call}");
        }
    }
}
