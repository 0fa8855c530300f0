//! Downlink from regulator platforms (reference §5): the vehicle check before opening
//! (getCheckVehicle), control measures and white lists polled into the [`PolicyState`], and the
//! heartbeats platforms use to mark a site online (putdcstatus, gateStatusReport).
//!
//! The operation names, paths and reply fields come from the profile's optional `[downlink]`
//! section ([`DownlinkShape`]); the site's `[[uplinks.platforms]]` says which of them run
//! ([`DownlinkPlan`]). docs/platforms.md, "Downlink", describes both.
//!
//! Nothing here may stall a lane: the check is bounded by the platform's timeout and every
//! failure falls back to the local registry and policy; heartbeats and polls run in their own
//! tasks and only count their failures.

use super::auth::Credentials;
use super::kaifeng::KaifengClient;
use super::profile::{FieldMap, PlatformProfile, Protocol};
use super::transport_control::{local, SendError, TcClient};
use super::RegulatorError;
use crate::config::plan::{Plan, PlatformPlan};
use crate::health::Alarm;
use crate::lane::builtin::Role;
use crate::ledger::Direction;
use crate::ledger::{site_zone, EventBody, Ledger, MeasureChange};
use crate::policy::{ControlMeasure, ListEntry, PolicyState, Strategy, WarningLevel};
use crate::vehicle::{EmissionStage, Fuel};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use ecogate_drivers::plate::PlateColor;
use ecogate_drivers::DeviceHealth;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

// ---------------------------------------------------------------------------------------------
// Profile section

/// `[downlink]` of a platform profile. Every part is optional: a platform without a vehicle
/// check simply has no `[downlink.check]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownlinkShape {
    pub check: Option<CheckShape>,
    pub heartbeat: Option<HeartbeatShape>,
    pub gate_status: Option<GateStatusShape>,
    pub policy: Option<PolicyShape>,
    pub white_list: Option<WhiteListShape>,
}

/// The vehicle check (transportControl getCheckVehicle, kaifeng `/transport/check`): request
/// fields by logical name, reply field names.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckShape {
    pub path: String,
    /// The envelope's operation name (transportControl); kaifeng has none.
    #[serde(default)]
    pub operation: String,
    /// Logical request field → wire names: `plate`, `plate_color`, `enterprise`, `gate`,
    /// `direction` (the profile's `[codes.direction]` code of the lane).
    pub request: FieldMap,
    pub reply: CheckReply,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckReply {
    /// The field saying whether the vehicle is controlled (`isControl`).
    pub control: String,
    /// Values of `control` meaning "may pass" (`["0"]`).
    pub allow: Vec<String>,
    /// Values meaning "controlled: refuse". Any other value makes the reply garbled (the
    /// site's fallback decides), so a new code never silently opens or closes a barrier.
    pub deny: Vec<String>,
    /// The reason text shown on the LED when controlled (`controlReason`).
    pub reason: String,
    /// Names the emission stage may come under; the first present one is used.
    #[serde(default)]
    pub stage: Vec<String>,
    #[serde(default)]
    pub fuel: Vec<String>,
    /// GA 24.4 vehicle type code, when the platform sends one. Without it a vehicle missing
    /// from the local registry stays unknown to the local policy (see docs/platforms.md).
    #[serde(default)]
    pub vehicle_type: Vec<String>,
    #[serde(default)]
    pub use_character: Vec<String>,
    /// Names of a platform-issued serial (kaifeng `serialNum`): the serial the pass is then
    /// uploaded under. Platforms that leave numbering to the gate have none.
    #[serde(default)]
    pub serial: Vec<String>,
}

/// putdcstatus: one entry per barrier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatShape {
    pub path: String,
    pub operation: String,
    /// Logical entry field → wire names: `gate` (道闸编号), `barrier`, `camera`.
    pub fields: FieldMap,
    /// Status codes: device answering / not answering.
    pub ok: String,
    pub fault: String,
}

/// gateStatusReport: one report per barrier with the site's identity and the time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateStatusShape {
    pub path: String,
    pub operation: String,
    /// Logical field → wire names: `enterprise`, `gate`, `status`, `camera`, `time`.
    pub fields: FieldMap,
    pub ok: String,
    pub fault: String,
}

/// shareOneCtrlOnePolicyData: the control measures in force for the enterprise.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyShape {
    pub path: String,
    pub operation: String,
    /// Logical request field → wire names (`enterprise`).
    #[serde(default)]
    pub request: FieldMap,
    /// The key of the array in the reply's value; absent: the value is the array itself.
    pub list: Option<String>,
    /// Wire names of each measure's fields.
    pub level: String,
    pub response: String,
    pub strategy: String,
    pub start: String,
    pub end: String,
    /// Gate ids the measure applies to (comma separated); absent or empty: every gate.
    pub gates: Option<String>,
}

/// The platform white list (白名单 mj_bmd).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhiteListShape {
    pub path: String,
    pub operation: String,
    #[serde(default)]
    pub request: FieldMap,
    pub list: Option<String>,
    pub plate: String,
    pub color: String,
    pub from: String,
    pub until: String,
    pub gates: String,
}

const CHECK_REQUEST: &[&str] = &["plate", "plate_color", "enterprise", "gate", "direction"];
const HEARTBEAT_FIELDS: &[&str] = &["gate", "barrier", "camera"];
const GATE_STATUS_FIELDS: &[&str] = &["enterprise", "gate", "status", "camera", "time"];
const QUERY_REQUEST: &[&str] = &["enterprise"];

fn check_map(what: &str, map: &FieldMap, known: &[&str], need: &[&str]) -> Result<(), String> {
    for (k, v) in map {
        if !known.contains(&k.as_str()) {
            return Err(format!(
                "unknown field `{k}` in [{what}] (known: {})",
                known.join(", ")
            ));
        }
        if v.is_empty() || v.iter().any(|n| n.is_empty()) {
            return Err(format!("[{what}] `{k}` needs at least one non-empty name"));
        }
    }
    for n in need {
        if !map.contains_key(*n) {
            return Err(format!("[{what}] must name the `{n}` field"));
        }
    }
    Ok(())
}

impl DownlinkShape {
    /// Checks the section for a profile of `protocol`; the profile loader calls it. Only the
    /// transportControl shape has heartbeats and policy queries; kaifeng has the vehicle check
    /// (its `/transport/check`, without an envelope operation, issuing the pass's serial);
    /// hebei has no downlink described.
    pub fn check(&self, protocol: Protocol) -> Result<(), String> {
        match protocol {
            Protocol::TransportControl => {}
            Protocol::Kaifeng => {
                for (part, present) in [
                    ("heartbeat", self.heartbeat.is_some()),
                    ("gate_status", self.gate_status.is_some()),
                    ("policy", self.policy.is_some()),
                    ("white_list", self.white_list.is_some()),
                ] {
                    if present {
                        return Err(format!(
                            "[downlink.{part}] is not described for the kaifeng shape (only [downlink.check])"
                        ));
                    }
                }
            }
            Protocol::Hebei => {
                return Err(
                    "[downlink] is not described for the hebei shape (no vehicle check, heartbeat or policy query)"
                        .into(),
                )
            }
        }
        if let Some(c) = &self.check {
            let need: &[&str] = match protocol {
                Protocol::Kaifeng => &["plate", "plate_color", "enterprise", "gate", "direction"],
                _ => &["plate"],
            };
            check_map("downlink.check.request", &c.request, CHECK_REQUEST, need)?;
            match protocol {
                Protocol::Kaifeng if !c.operation.is_empty() => {
                    return Err("[downlink.check] `operation` is for transportControl envelopes; a kaifeng check is its `path` alone".into())
                }
                Protocol::TransportControl if c.operation.is_empty() => {
                    return Err("[downlink.check] needs `operation` (the envelope's ipctype, e.g. getCheckVehicle)".into())
                }
                Protocol::TransportControl if !c.reply.serial.is_empty() => {
                    return Err("[downlink.check.reply] `serial` is for platforms that number passes (kaifeng); transportControl gates number their own".into())
                }
                _ => {}
            }
            if c.reply.serial.iter().any(|n| n.is_empty()) {
                return Err("[downlink.check.reply] `serial` names must not be empty".into());
            }
            if c.reply.allow.is_empty() || c.reply.deny.is_empty() {
                return Err("[downlink.check.reply] needs `allow` and `deny` values".into());
            }
            if c.reply.allow.iter().any(|a| c.reply.deny.contains(a)) {
                return Err("[downlink.check.reply] `allow` and `deny` share a value".into());
            }
        }
        if let Some(h) = &self.heartbeat {
            check_map(
                "downlink.heartbeat.fields",
                &h.fields,
                HEARTBEAT_FIELDS,
                &["gate"],
            )?;
        }
        if let Some(g) = &self.gate_status {
            check_map(
                "downlink.gate_status.fields",
                &g.fields,
                GATE_STATUS_FIELDS,
                &["gate"],
            )?;
        }
        if let Some(p) = &self.policy {
            check_map("downlink.policy.request", &p.request, QUERY_REQUEST, &[])?;
        }
        if let Some(w) = &self.white_list {
            check_map(
                "downlink.white_list.request",
                &w.request,
                QUERY_REQUEST,
                &[],
            )?;
        }
        Ok(())
    }
}

fn put(obj: &mut Map<String, Value>, fields: &FieldMap, key: &str, v: &str) {
    if let Some(names) = fields.get(key) {
        for n in names {
            obj.insert(n.clone(), Value::String(v.to_string()));
        }
    }
}

/// A scalar reply field as text (platforms send codes as strings or numbers).
fn scalar(v: &Map<String, Value>, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn first(v: &Map<String, Value>, keys: &[String]) -> Option<String> {
    keys.iter()
        .filter_map(|k| scalar(v, k))
        .find(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Site keys

/// What the site does when no platform answers the vehicle check (`fallback` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// Registered vehicles: the local policy on the registry's facts; unknown vehicles: the
    /// `[policy] unknown` rule, as if no platform were configured.
    #[default]
    RegistryThenPolicy,
    /// … unknown vehicles are refused (`unknown_vehicle`).
    RegistryThenDeny,
    /// … unknown vehicles are let through flagged for review (`unknown_vehicle`).
    RegistryThenAllow,
}

impl Fallback {
    pub const NAMES: &'static str = "registry_then_policy, registry_then_deny, registry_then_allow";

    pub fn parse(s: &str) -> Option<Fallback> {
        match s {
            "registry_then_policy" => Some(Fallback::RegistryThenPolicy),
            "registry_then_deny" => Some(Fallback::RegistryThenDeny),
            "registry_then_allow" => Some(Fallback::RegistryThenAllow),
            _ => None,
        }
    }
}

/// The downlink keys of one `[[uplinks.platforms]]` entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DownlinkPlan {
    /// Ask this platform about every vehicle before deciding.
    pub check: bool,
    pub check_timeout: Duration,
    /// After [`PAUSE_AFTER`] checks in a row got no answer, the platform is not asked for this
    /// long (the fallback decides at once); zero: always ask.
    pub check_pause: Duration,
    pub fallback: Fallback,
    /// putdcstatus (and gateStatusReport) period; None: off.
    pub heartbeat: Option<Duration>,
    /// Control-measure and white-list poll period; None: off.
    pub policy_poll: Option<Duration>,
}

impl Default for DownlinkPlan {
    fn default() -> Self {
        DownlinkPlan {
            check: false,
            check_timeout: Duration::from_millis(1500),
            check_pause: Duration::from_secs(30),
            fallback: Fallback::default(),
            heartbeat: Some(Duration::from_secs(60)),
            policy_poll: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Vehicle check

/// What a platform said about a vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformAnswer {
    /// The platform controls the vehicle: refuse it.
    pub control: bool,
    /// The platform's reason text (LED) when controlled.
    pub reason: String,
    pub stage: Option<EmissionStage>,
    pub fuel: Option<Fuel>,
    pub vehicle_type: Option<String>,
    pub use_character: Option<char>,
    /// The serial the platform issued for this pass (kaifeng), recorded on the pass and used
    /// by its upload.
    pub serial: Option<String>,
}

/// The outcome of asking the checking platforms about one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    Answered {
        platform: String,
        answer: PlatformAnswer,
    },
    /// No usable answer: why, per platform.
    Failed { error: String },
}

/// Reads a getCheckVehicle reply value. A reply without a known control value is garbled.
pub fn parse_check_reply(shape: &CheckReply, v: &Value) -> Result<PlatformAnswer, String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("check reply value is not an object: {}", short(v)))?;
    let control = scalar(obj, &shape.control)
        .ok_or_else(|| format!("check reply has no `{}`", shape.control))?;
    let control = if shape.allow.contains(&control) {
        false
    } else if shape.deny.contains(&control) {
        true
    } else {
        return Err(format!(
            "check reply `{}` = `{control}` is neither an allow ({}) nor a deny ({}) value",
            shape.control,
            shape.allow.join(", "),
            shape.deny.join(", ")
        ));
    };
    let stage = first(obj, &shape.stage).and_then(|s| s.parse::<EmissionStage>().ok());
    let fuel = first(obj, &shape.fuel).and_then(|s| s.parse::<Fuel>().ok());
    Ok(PlatformAnswer {
        control,
        reason: scalar(obj, &shape.reason).unwrap_or_default(),
        stage,
        fuel,
        vehicle_type: first(obj, &shape.vehicle_type),
        use_character: first(obj, &shape.use_character).and_then(|s| s.chars().next()),
        serial: first(obj, &shape.serial),
    })
}

fn short(v: &Value) -> String {
    v.to_string().chars().take(120).collect()
}

/// The client a check goes through, per protocol shape.
pub enum CheckClient {
    /// getCheckVehicle in the transportControl envelope; the data is the reply's `value`.
    TransportControl(TcClient),
    /// `/transport/check`; the data is the reply's `data`.
    Kaifeng(KaifengClient),
}

impl CheckClient {
    fn profile(&self) -> &PlatformProfile {
        match self {
            CheckClient::TransportControl(c) => c.profile(),
            CheckClient::Kaifeng(c) => c.profile(),
        }
    }
}

/// One platform the site checks vehicles with.
pub struct CheckTarget {
    pub name: String,
    pub client: CheckClient,
    /// The enterprise code the platform knows the site by (organ / companyCode).
    pub organ: String,
    pub timeout: Duration,
    /// How long the platform is left alone after [`PAUSE_AFTER`] unanswered checks in a row;
    /// zero: never.
    pub pause: Duration,
    unanswered: Mutex<Unanswered>,
}

/// Checks in a row without an answer (timeouts, connection errors, HTTP errors) after which a
/// platform is paused: while it is away every truck would otherwise wait the whole timeout.
pub const PAUSE_AFTER: u32 = 3;

#[derive(Default)]
struct Unanswered {
    in_a_row: u32,
    paused_until: Option<std::time::Instant>,
}

impl CheckTarget {
    /// The request body of a check of `plate` at barrier `gate` in `direction`.
    pub fn request(
        &self,
        shape: &CheckShape,
        gate: &str,
        direction: Direction,
        plate: &str,
        color: PlateColor,
    ) -> Value {
        let p = self.client.profile();
        let mut v = Map::new();
        let code = |table: &BTreeMap<String, String>, key: &str| {
            table.get(key).cloned().unwrap_or_default()
        };
        put(&mut v, &shape.request, "plate", plate);
        put(
            &mut v,
            &shape.request,
            "plate_color",
            &code(&p.codes.plate_color, color.name()),
        );
        put(&mut v, &shape.request, "enterprise", &self.organ);
        put(&mut v, &shape.request, "gate", gate);
        put(
            &mut v,
            &shape.request,
            "direction",
            &code(&p.codes.direction, super::client::direction_key(direction)),
        );
        Value::Object(v)
    }

    async fn ask(
        &self,
        gate: &str,
        direction: Direction,
        plate: &str,
        color: PlateColor,
    ) -> Result<PlatformAnswer, String> {
        let p = self.client.profile();
        let Some(shape) = p.downlink.as_ref().and_then(|d| d.check.as_ref()) else {
            return Err("the profile has no [downlink.check]".into());
        };
        if let Some(left) = self.paused_for() {
            return Err(format!(
                "not asked: {PAUSE_AFTER} checks in a row got no answer; asked again in {} s",
                left.as_secs().max(1)
            ));
        }
        let body = self.request(shape, gate, direction, plate, color);
        let call = async {
            match &self.client {
                CheckClient::TransportControl(c) => {
                    c.query(&shape.path, &shape.operation, body).await
                }
                CheckClient::Kaifeng(c) => c.query(&shape.path, &body).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => {
                self.note_answer(false);
                Err(format!("no answer within {} ms", self.timeout.as_millis()))
            }
            Ok(Err(e)) => {
                self.note_answer(false);
                Err(e.to_string())
            }
            // Reachable: an unreadable reply falls back for this vehicle but pauses nothing.
            Ok(Ok(value)) => {
                self.note_answer(true);
                parse_check_reply(&shape.reply, &value)
            }
        }
    }

    /// How long the platform stays paused, if it is.
    fn paused_for(&self) -> Option<Duration> {
        let u = self.unanswered.lock().unwrap_or_else(|e| e.into_inner());
        let until = u.paused_until?;
        until.checked_duration_since(std::time::Instant::now())
    }

    fn note_answer(&self, answered: bool) {
        let mut u = self.unanswered.lock().unwrap_or_else(|e| e.into_inner());
        if answered {
            if u.paused_until.is_some() {
                tracing::info!(platform = %self.name, "platform answers vehicle checks again");
            }
            *u = Unanswered::default();
            return;
        }
        u.in_a_row = u.in_a_row.saturating_add(1);
        if self.pause.is_zero() || u.in_a_row < PAUSE_AFTER {
            return;
        }
        tracing::warn!(platform = %self.name, pause_s = self.pause.as_secs(), "vehicle checks paused: no answer");
        u.paused_until = Some(std::time::Instant::now() + self.pause);
        // The first check after the pause is a probe: no answer pauses again at once.
        u.in_a_row = PAUSE_AFTER - 1;
    }
}

/// Asks every checking platform at once; the first usable answer decides.
pub struct VehicleChecker {
    pub targets: Vec<Arc<CheckTarget>>,
    pub fallback: Fallback,
}

impl VehicleChecker {
    /// Asks the platforms about `plate` at barrier `gate` (道闸编号) going `direction`. Bounded
    /// by the longest platform timeout; never fails (a failure is an outcome the decider falls
    /// back on).
    pub async fn check(
        &self,
        gate: &str,
        direction: Direction,
        plate: &str,
        color: PlateColor,
    ) -> CheckOutcome {
        let mut set = tokio::task::JoinSet::new();
        for t in &self.targets {
            let t = Arc::clone(t);
            let (gate, plate) = (gate.to_string(), plate.to_string());
            set.spawn(async move {
                let r = t.ask(&gate, direction, &plate, color).await;
                (t.name.clone(), r)
            });
        }
        let mut errors = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((platform, Ok(answer))) => {
                    // Dropping the set cancels the slower platforms' calls.
                    return CheckOutcome::Answered { platform, answer };
                }
                Ok((platform, Err(e))) => {
                    tracing::warn!(%platform, %plate, error = %e, "platform vehicle check failed");
                    errors.push(format!("{platform}: {e}"));
                }
                Err(e) => errors.push(format!("check task: {e}")),
            }
        }
        if errors.is_empty() {
            errors.push("no platform checks vehicles".into());
        }
        CheckOutcome::Failed {
            error: errors.join("; "),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Control measures and white lists

/// Parses a platform time in the profile's format (or a bare date), in the site zone.
fn parse_time(p: &PlatformProfile, s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    let naive = NaiveDateTime::parse_from_str(s, &p.time.format)
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    site_zone()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

fn gates(s: Option<String>) -> Option<Vec<String>> {
    let list: Vec<String> = s?
        .split([',', '，', ';', '；'])
        .map(|g| g.trim().to_string())
        .filter(|g| !g.is_empty())
        .collect();
    (!list.is_empty()).then_some(list)
}

fn items<'a>(v: &'a Value, list: Option<&str>) -> Result<&'a [Value], String> {
    let arr = match list {
        Some(k) => v.get(k).unwrap_or(&Value::Null),
        None => v,
    };
    match arr {
        Value::Array(a) => Ok(a),
        // An empty answer means "nothing in force".
        Value::Null if list.is_none() => Ok(&[]),
        other => Err(format!(
            "expected a list{} in the reply, got {}",
            list.map(|k| format!(" under `{k}`")).unwrap_or_default(),
            short(other)
        )),
    }
}

fn code_of(obj: &Map<String, Value>, key: &str, what: &str) -> Result<Option<u8>, String> {
    match scalar(obj, key) {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => s
            .parse::<u8>()
            .map(Some)
            .map_err(|_| format!("{what} `{key}` = `{s}` is not a number")),
    }
}

/// The control measures of a policy reply, under `source`. Any malformed entry makes the whole
/// reply garbled: a half-read policy must not replace a good one.
pub fn parse_measures(
    p: &PlatformProfile,
    shape: &PolicyShape,
    v: &Value,
    source: &str,
) -> Result<Vec<ControlMeasure>, String> {
    let mut out = Vec::new();
    for (i, item) in items(v, shape.list.as_deref())?.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| format!("measure {i} is not an object: {}", short(item)))?;
        let level_code = code_of(obj, &shape.level, "warning level")?;
        let response = code_of(obj, &shape.response, "response level")?;
        let strategy = match code_of(obj, &shape.strategy, "strategy")? {
            None => None,
            Some(c) => Some(
                Strategy::from_code(c)
                    .ok_or_else(|| format!("measure {i}: strategy {c} is not 1-4"))?,
            ),
        };
        if let Some(c) = level_code {
            if !(1..=4).contains(&c) {
                return Err(format!("measure {i}: warning level {c} is not 1-4"));
            }
        }
        if let Some(c) = response {
            if !(1..=4).contains(&c) {
                return Err(format!("measure {i}: response level {c} is not 1-4"));
            }
        }
        // controlLevel first; else the response level (Ⅰ red, Ⅱ orange, Ⅲ yellow); a
        // strategy with neither ("其他") still binds, at yellow.
        let level = level_code
            .and_then(WarningLevel::from_platform_code)
            .or(match response {
                Some(1) => Some(WarningLevel::Red),
                Some(2) => Some(WarningLevel::Orange),
                Some(3) => Some(WarningLevel::Yellow),
                _ => None,
            })
            .or(strategy.map(|_| WarningLevel::Yellow));
        let Some(level) = level else {
            tracing::info!(%source, entry = i, "platform measure with level 其他 and no strategy: nothing to enforce");
            continue;
        };
        let start_s = scalar(obj, &shape.start).unwrap_or_default();
        let start = parse_time(p, &start_s)
            .ok_or_else(|| format!("measure {i}: start `{start_s}` is not `{}`", p.time.format))?;
        let end = match scalar(obj, &shape.end).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(
                parse_time(p, &s)
                    .ok_or_else(|| format!("measure {i}: end `{s}` is not `{}`", p.time.format))?,
            ),
        };
        out.push(ControlMeasure {
            level,
            strategy,
            start,
            end,
            gates: gates(shape.gates.as_ref().and_then(|g| scalar(obj, g))),
            source: source.to_string(),
        });
    }
    Ok(out)
}

/// The white-list entries of a reply, under `source`; malformed entries make it garbled.
pub fn parse_white_list(
    p: &PlatformProfile,
    shape: &WhiteListShape,
    v: &Value,
    source: &str,
) -> Result<Vec<ListEntry>, String> {
    let mut out = Vec::new();
    for (i, item) in items(v, shape.list.as_deref())?.iter().enumerate() {
        let obj = item
            .as_object()
            .ok_or_else(|| format!("white-list entry {i} is not an object: {}", short(item)))?;
        let plate = scalar(obj, &shape.plate)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| format!("white-list entry {i} has no `{}`", shape.plate))?;
        let color = match scalar(obj, &shape.color).filter(|s| !s.is_empty()) {
            None => None,
            Some(c) => Some(
                p.codes
                    .plate_color
                    .iter()
                    .find(|(_, code)| **code == c)
                    .and_then(|(name, _)| PlateColor::ALL.into_iter().find(|pc| pc.name() == name))
                    .ok_or_else(|| {
                        format!("white-list entry {i}: plate colour `{c}` is not a known code")
                    })?,
            ),
        };
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, String> {
            match scalar(obj, key).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(s) => parse_time(p, &s)
                    .map(Some)
                    .ok_or_else(|| format!("white-list entry {i}: `{key}` = `{s}` is not a time")),
            }
        };
        out.push(ListEntry {
            plate,
            color,
            from: time(&shape.from)?,
            until: time(&shape.until)?,
            gates: gates(scalar(obj, &shape.gates)),
            exempt_warnings: false,
            note: String::new(),
            source: source.to_string(),
        });
    }
    Ok(out)
}

fn measure_name(m: &ControlMeasure) -> String {
    match m.strategy {
        Some(s) => format!("{} {} strategy {}", m.source, m.level.name(), s.code()),
        None => format!("{} {}", m.source, m.level.name()),
    }
}

fn measure_event(m: &ControlMeasure, active: bool) -> EventBody {
    EventBody::MeasureChange(MeasureChange {
        measure: measure_name(m),
        active,
        level: Some(m.level.name().to_string()),
        starts_at: Some(m.start),
        ends_at: m.end,
        source: m.source.clone(),
        detail: serde_json::json!({
            "strategy": m.strategy.map(|s| s.code()),
            "gates": m.gates,
        }),
    })
}

/// Puts `measures` in place of `source`'s and returns the ledger events for what changed
/// (a measure that went is recorded ended, a new one started). Nothing changes when equal.
pub fn apply_measures(
    state: &RwLock<PolicyState>,
    source: &str,
    measures: Vec<ControlMeasure>,
) -> Vec<EventBody> {
    let mut g = state.write().unwrap_or_else(|e| e.into_inner());
    let old: Vec<ControlMeasure> = g
        .measures()
        .iter()
        .filter(|m| m.source == source)
        .cloned()
        .collect();
    let mut events: Vec<EventBody> = old
        .iter()
        .filter(|m| !measures.contains(m))
        .map(|m| measure_event(m, false))
        .collect();
    events.extend(
        measures
            .iter()
            .filter(|m| !old.contains(m))
            .map(|m| measure_event(m, true)),
    );
    if !events.is_empty() {
        g.replace_measures_from(source, measures);
    }
    events
}

/// How far back the ledger is read for the platform's measures at start; a measure older than
/// this that never ended is taken as over.
pub const RESTORE_WINDOW: chrono::Duration = chrono::Duration::days(90);

/// The measures `source` had in force when the gateway stopped, rebuilt from the ledger's
/// `measure_change` events: without them a restart while the platform is unreachable would let
/// trucks in that the warning in force refuses, and the first poll would record the same
/// measures as new. Measures that have ended by `now` are left out. White lists are not
/// rebuilt (their events name plates, not validity windows): missing one until the first poll
/// only refuses what the list would have let in.
pub fn restore_measures(
    ledger: &Ledger,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ControlMeasure>, crate::ledger::LedgerError> {
    let reader = ledger.reader()?;
    let far = now + chrono::Duration::days(365 * 100);
    let mut measures: Vec<ControlMeasure> = Vec::new();
    for e in reader.events_between(&["measure_change"], now - RESTORE_WINDOW, far)? {
        let EventBody::MeasureChange(c) = e.body else {
            continue;
        };
        if c.source != source {
            continue;
        }
        let Some(m) = measure_of(&c) else { continue };
        measures.retain(|x| *x != m);
        if c.active {
            measures.push(m);
        }
    }
    measures.retain(|m| !matches!(m.end, Some(end) if end <= now));
    Ok(measures)
}

/// The measure a `measure_change` event describes ([`measure_event`] in reverse); None for a
/// white-list change.
fn measure_of(c: &MeasureChange) -> Option<ControlMeasure> {
    let level = WarningLevel::ALL
        .into_iter()
        .find(|l| Some(l.name()) == c.level.as_deref())?;
    let strategy = c
        .detail
        .get("strategy")
        .and_then(Value::as_u64)
        .and_then(|n| u8::try_from(n).ok())
        .and_then(Strategy::from_code);
    let gates = c.detail.get("gates").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    Some(ControlMeasure {
        level,
        strategy,
        start: c.starts_at?,
        end: c.ends_at,
        gates,
        source: c.source.clone(),
    })
}

fn entry_key(e: &ListEntry) -> String {
    match e.color {
        Some(c) => format!("{} {}", e.plate, c.name()),
        None => e.plate.clone(),
    }
}

/// Puts `entries` in place of `source`'s white list; one `measure_change` event when it
/// changed (detail: the plates added and removed).
pub fn apply_white_list(
    state: &RwLock<PolicyState>,
    source: &str,
    entries: Vec<ListEntry>,
) -> Option<EventBody> {
    let mut g = state.write().unwrap_or_else(|e| e.into_inner());
    let old: Vec<ListEntry> = g
        .white_entries()
        .filter(|e| e.source == source)
        .cloned()
        .collect();
    let added: Vec<String> = entries
        .iter()
        .filter(|e| !old.contains(e))
        .map(entry_key)
        .collect();
    let removed: Vec<String> = old
        .iter()
        .filter(|e| !entries.contains(e))
        .map(entry_key)
        .collect();
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    let total = entries.len();
    g.replace_white_from(source, entries);
    Some(EventBody::MeasureChange(MeasureChange {
        measure: format!("{source} white_list"),
        active: total > 0,
        level: None,
        starts_at: None,
        ends_at: None,
        source: source.to_string(),
        detail: serde_json::json!({ "entries": total, "added": added, "removed": removed }),
    }))
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// One barrier as the heartbeat reports it.
#[derive(Clone)]
pub struct BarrierHealth {
    /// 道闸编号.
    pub gate: String,
    pub barrier: Option<watch::Receiver<DeviceHealth>>,
    pub camera: Option<watch::Receiver<DeviceHealth>>,
}

/// Counters of one platform's downlink (logs, tests, the status pages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownlinkStats {
    pub heartbeats: u64,
    pub heartbeat_failures: u64,
    pub policy_polls: u64,
    pub policy_failures: u64,
    /// Replies that could not be read (nothing was changed).
    pub policy_garbled: u64,
    pub measure_changes: u64,
    pub last_error: Option<String>,
    /// `platform_policy_garbled` is raised (cleared by the next readable reply).
    pub garbled_alarm: bool,
}

/// What the downlink tasks of one platform need.
pub struct DownlinkDeps {
    pub name: String,
    pub client: Arc<TcClient>,
    pub plan: DownlinkPlan,
    pub barriers: Vec<BarrierHealth>,
    pub state: Arc<RwLock<PolicyState>>,
    pub ledger: Option<Ledger>,
    pub alarms: Option<mpsc::UnboundedSender<Alarm>>,
}

/// The running heartbeat and poll tasks of one platform. Dropping it stops them.
pub struct Downlink {
    name: String,
    stats: Arc<Mutex<DownlinkStats>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Downlink {
    /// Starts the tasks the plan and the profile call for (call inside a runtime). None when
    /// there is nothing to run.
    pub fn start(d: DownlinkDeps) -> Option<Downlink> {
        let shape = d.client.profile().downlink.clone()?;
        let stats = Arc::new(Mutex::new(DownlinkStats::default()));
        let (stop, rx) = watch::channel(false);
        let d = Arc::new(d);
        let mut tasks = Vec::new();
        if let (Some(every), true) = (
            d.plan.heartbeat,
            shape.heartbeat.is_some() || shape.gate_status.is_some(),
        ) {
            tasks.push(tokio::spawn(every_period(every, rx.clone(), {
                let (d, stats, shape) = (Arc::clone(&d), Arc::clone(&stats), shape.clone());
                move || {
                    let (d, stats, shape) = (Arc::clone(&d), Arc::clone(&stats), shape.clone());
                    async move { heartbeat(&d, &shape, &stats).await }
                }
            })));
        }
        if let (Some(every), true) = (
            d.plan.policy_poll,
            shape.policy.is_some() || shape.white_list.is_some(),
        ) {
            tasks.push(tokio::spawn(every_period(every, rx.clone(), {
                let (d, stats, shape) = (Arc::clone(&d), Arc::clone(&stats), shape.clone());
                move || {
                    let (d, stats, shape) = (Arc::clone(&d), Arc::clone(&stats), shape.clone());
                    async move { poll_policy(&d, &shape, &stats).await }
                }
            })));
        }
        if tasks.is_empty() {
            return None;
        }
        tracing::info!(platform = %d.name, tasks = tasks.len(), "platform downlink running");
        Some(Downlink {
            name: d.name.clone(),
            stats,
            stop,
            tasks,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn stats(&self) -> DownlinkStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The live counters, for readers that outlive a borrow (`/metrics`).
    pub fn stats_handle(&self) -> Arc<Mutex<DownlinkStats>> {
        Arc::clone(&self.stats)
    }

    /// Stops after the call in flight, if any.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

impl Drop for Downlink {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Runs `f` now and then every `every` until told to stop.
async fn every_period<F, Fut>(every: Duration, mut stop: watch::Receiver<bool>, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = f() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn note_error(stats: &Mutex<DownlinkStats>, f: impl FnOnce(&mut DownlinkStats), e: String) {
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut s);
    s.last_error = Some(e);
}

fn online(h: &Option<watch::Receiver<DeviceHealth>>) -> bool {
    h.as_ref().is_some_and(|h| h.borrow().online)
}

async fn heartbeat(d: &DownlinkDeps, shape: &DownlinkShape, stats: &Mutex<DownlinkStats>) {
    let code = |ok: bool, okc: &str, fault: &str| if ok { okc } else { fault }.to_string();
    if let Some(h) = &shape.heartbeat {
        let entries: Vec<Value> = d
            .barriers
            .iter()
            .map(|b| {
                let mut v = Map::new();
                put(&mut v, &h.fields, "gate", &b.gate);
                put(
                    &mut v,
                    &h.fields,
                    "barrier",
                    &code(online(&b.barrier), &h.ok, &h.fault),
                );
                put(
                    &mut v,
                    &h.fields,
                    "camera",
                    &code(online(&b.camera), &h.ok, &h.fault),
                );
                Value::Object(v)
            })
            .collect();
        match d
            .client
            .query(&h.path, &h.operation, Value::Array(entries))
            .await
        {
            Ok(_) => stats.lock().unwrap_or_else(|e| e.into_inner()).heartbeats += 1,
            Err(e) => {
                tracing::warn!(platform = %d.name, error = %e, "heartbeat not delivered");
                note_error(stats, |s| s.heartbeat_failures += 1, e.to_string());
            }
        }
    }
    if let Some(g) = &shape.gate_status {
        let now = local(d.client.profile(), Utc::now());
        for b in &d.barriers {
            let mut v = Map::new();
            put(&mut v, &g.fields, "enterprise", d.client.organ());
            put(&mut v, &g.fields, "gate", &b.gate);
            put(
                &mut v,
                &g.fields,
                "status",
                &code(online(&b.barrier), &g.ok, &g.fault),
            );
            put(
                &mut v,
                &g.fields,
                "camera",
                &code(online(&b.camera), &g.ok, &g.fault),
            );
            put(&mut v, &g.fields, "time", &now);
            if let Err(e) = d
                .client
                .query(&g.path, &g.operation, Value::Object(v))
                .await
            {
                tracing::warn!(platform = %d.name, gate = %b.gate, error = %e, "gate status report not delivered");
                note_error(stats, |s| s.heartbeat_failures += 1, e.to_string());
            }
        }
    }
}

fn query_value(d: &DownlinkDeps, request: &FieldMap) -> Value {
    let mut v = Map::new();
    put(&mut v, request, "enterprise", d.client.organ());
    Value::Object(v)
}

/// The policy and white-list source name of a platform in the [`PolicyState`].
pub fn source_of(platform: &str) -> String {
    format!("platform:{platform}")
}

async fn poll_policy(d: &DownlinkDeps, shape: &DownlinkShape, stats: &Mutex<DownlinkStats>) {
    let p = d.client.profile();
    let source = source_of(&d.name);
    let mut events = Vec::new();
    let mut garbled: Vec<String> = Vec::new();
    let mut readable = false;
    if let Some(ps) = &shape.policy {
        stats.lock().unwrap_or_else(|e| e.into_inner()).policy_polls += 1;
        match d
            .client
            .query(&ps.path, &ps.operation, query_value(d, &ps.request))
            .await
        {
            Err(e) => {
                // Unreachable: keep the measures we last heard of.
                tracing::warn!(platform = %d.name, error = %e, "control-measure poll failed");
                note_error(stats, |s| s.policy_failures += 1, e.to_string());
            }
            Ok(v) => match parse_measures(p, ps, &v, &source) {
                Ok(m) => {
                    readable = true;
                    events.extend(apply_measures(&d.state, &source, m));
                }
                Err(e) => garbled.push(format!("control measures: {e}")),
            },
        }
    }
    // The white list is read even when the policy reply was garbled: each reply stands alone.
    if let Some(ws) = &shape.white_list {
        match d
            .client
            .query(&ws.path, &ws.operation, query_value(d, &ws.request))
            .await
        {
            Err(e) => {
                tracing::warn!(platform = %d.name, error = %e, "white-list poll failed");
                note_error(stats, |s| s.policy_failures += 1, e.to_string());
            }
            Ok(v) => match parse_white_list(p, ws, &v, &source) {
                Ok(list) => {
                    readable = true;
                    events.extend(apply_white_list(&d.state, &source, list));
                }
                Err(e) => garbled.push(format!("white list: {e}")),
            },
        }
    }
    let raised = stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .garbled_alarm;
    if !garbled.is_empty() {
        let e = &garbled.join("; ");
        tracing::error!(platform = %d.name, error = %e, "garbled policy reply; nothing changed");
        note_error(
            stats,
            |s| {
                s.policy_garbled += 1;
                s.garbled_alarm = true;
            },
            format!("garbled {e}"),
        );
        if let (Some(a), false) = (&d.alarms, raised) {
            let _ = a.send(platform_alarm(&d.name, e, true));
        }
    } else if raised && readable {
        stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .garbled_alarm = false;
        if let Some(a) = &d.alarms {
            let _ = a.send(platform_alarm(
                &d.name,
                "policy reply readable again",
                false,
            ));
        }
    }
    if events.is_empty() {
        return;
    }
    stats
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .measure_changes += events.len() as u64;
    for ev in events {
        tracing::info!(platform = %d.name, event = ?ev, "platform control change");
        if let Some(l) = &d.ledger {
            if let Err(e) = l.append(ev, vec![], Utc::now()).await {
                tracing::error!(platform = %d.name, error = %e, "control change not recorded");
            }
        }
    }
}

fn platform_alarm(name: &str, message: &str, raised: bool) -> Alarm {
    Alarm {
        // The alarm board's convention for a platform (docs/mqtt.md).
        source: format!("uplink:{name}"),
        code: "platform_policy_garbled".into(),
        message: message.to_string(),
        raised,
        lane: None,
        at: Utc::now(),
    }
}

/// Builds the check target of a platform (its own client, so a slow upload never holds the
/// check's token lock, with the check timeout as the HTTP timeout).
pub fn check_target(
    name: &str,
    profile: Arc<PlatformProfile>,
    url: &str,
    organ: &str,
    creds: Credentials,
    timeout: Duration,
) -> Result<CheckTarget, SendError> {
    // The HTTP timeout a little past the check's own, so that a slow platform is reported as
    // "no answer within …" rather than as reqwest's opaque send error.
    let http_timeout = timeout + Duration::from_millis(250);
    let client = match profile.protocol {
        Protocol::TransportControl => CheckClient::TransportControl(TcClient::new(
            url,
            profile,
            organ,
            &creds.username,
            &creds.password,
            http_timeout,
        )?),
        Protocol::Kaifeng => CheckClient::Kaifeng(KaifengClient::new(
            url,
            profile,
            organ,
            creds,
            http_timeout,
        )?),
        Protocol::Hebei => {
            return Err(SendError::Rejected(
                "no vehicle check is described for the hebei shape".into(),
            ))
        }
    };
    Ok(CheckTarget {
        name: name.to_string(),
        client,
        organ: organ.to_string(),
        timeout,
        pause: DownlinkPlan::default().check_pause,
        unanswered: Mutex::new(Unanswered::default()),
    })
}

// ---------------------------------------------------------------------------------------------
// Site wiring

fn credentials(platform: &PlatformPlan) -> Result<Credentials, RegulatorError> {
    let secret_of = |s: &Option<crate::config::plan::Secret>| match s {
        Some(s) => super::read_secret(s).map_err(|message| RegulatorError::Config {
            platform: platform.name.clone(),
            message,
        }),
        None => Ok(String::new()),
    };
    Ok(Credentials {
        username: platform.username.clone().unwrap_or_default(),
        password: secret_of(&platform.password)?,
        secret: secret_of(&platform.secret)?,
    })
}

/// The vehicle checker of a site: every enabled platform with `check = true`, in site order.
/// None when no platform checks.
pub fn checker_for(plan: &Plan) -> Result<Option<VehicleChecker>, RegulatorError> {
    let mut targets = Vec::new();
    let mut fallback = Fallback::default();
    for p in plan
        .platforms
        .iter()
        .filter(|p| p.enabled && p.downlink.check)
    {
        let profile = PlatformProfile::load(&plan.site_file, &p.profile)?;
        fallback = p.downlink.fallback;
        let mut t = check_target(
            &p.name,
            Arc::new(profile),
            &p.url,
            &plan.enterprise.credit_code,
            credentials(p)?,
            p.downlink.check_timeout,
        )
        .map_err(|e| RegulatorError::Config {
            platform: p.name.clone(),
            message: e.to_string(),
        })?;
        t.pause = p.downlink.check_pause;
        targets.push(Arc::new(t));
    }
    Ok((!targets.is_empty()).then_some(VehicleChecker { targets, fallback }))
}

/// Starts the heartbeat and poll tasks of one platform, as the site and the profile say.
pub fn start_for(
    plan: &Plan,
    platform: &PlatformPlan,
    health: &BTreeMap<String, watch::Receiver<DeviceHealth>>,
    state: Arc<RwLock<PolicyState>>,
    ledger: Option<Ledger>,
    alarms: Option<mpsc::UnboundedSender<Alarm>>,
) -> Result<Option<Downlink>, RegulatorError> {
    let profile = PlatformProfile::load(&plan.site_file, &platform.profile)?;
    // Heartbeats and policy polls are described for the transportControl shape only (the
    // profile check refuses them elsewhere); the kaifeng check runs in the lanes.
    if profile.downlink.is_none() || profile.protocol != Protocol::TransportControl {
        return Ok(None);
    }
    let creds = credentials(platform)?;
    let client = TcClient::new(
        &platform.url,
        Arc::new(profile),
        &plan.enterprise.credit_code,
        &creds.username,
        &creds.password,
        DOWNLINK_REQUEST_TIMEOUT,
    )
    .map_err(|e| RegulatorError::Config {
        platform: platform.name.clone(),
        message: e.to_string(),
    })?;
    let device = |l: &crate::config::plan::LanePlan, r: Role| {
        l.spec
            .bindings
            .get(&r)
            .and_then(|d| health.get(&d.device))
            .cloned()
    };
    let barriers = plan
        .lanes
        .iter()
        .map(|l| BarrierHealth {
            gate: l.spec.barrier_no.clone(),
            barrier: device(l, Role::Barrier),
            camera: device(l, Role::Camera),
        })
        .collect();
    if let Some(l) = &ledger {
        let source = source_of(&platform.name);
        match restore_measures(l, &source, Utc::now()) {
            Ok(m) if !m.is_empty() => {
                tracing::info!(platform = %platform.name, measures = m.len(), "platform measures restored from the ledger");
                state
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .replace_measures_from(&source, m);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(platform = %platform.name, error = %e, "platform measures not restored");
            }
        }
    }
    Ok(Downlink::start(DownlinkDeps {
        name: platform.name.clone(),
        client: Arc::new(client),
        plan: platform.downlink.clone(),
        barriers,
        state,
        ledger,
        alarms,
    }))
}

/// Heartbeats and polls are not urgent; a slow platform may take this long per request.
const DOWNLINK_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> PlatformProfile {
        PlatformProfile::builtin("transport-control").unwrap()
    }

    #[test]
    fn check_reply_allow_deny_and_garbled() {
        let p = profile();
        let shape = &p.downlink.as_ref().unwrap().check.as_ref().unwrap().reply;
        let a = parse_check_reply(
            shape,
            &serde_json::json!({"isControl": "0", "emissionStandard": "国五", "fuelType": "B"}),
        )
        .unwrap();
        assert!(!a.control);
        assert_eq!(a.stage, Some(EmissionStage::China(5)));
        assert_eq!(a.fuel, Some(Fuel::Diesel));
        let d = parse_check_reply(
            shape,
            &serde_json::json!({"isControl": 1, "controlReason": "国四禁行"}),
        )
        .unwrap();
        assert!(d.control);
        assert_eq!(d.reason, "国四禁行");
        for bad in [
            serde_json::json!({"isControl": "7"}),
            serde_json::json!({"controlReason": "x"}),
            serde_json::json!("ok"),
            serde_json::json!({"isControl": {"a": 1}}),
        ] {
            assert!(parse_check_reply(shape, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kaifeng_check_reply_carries_the_issued_serial() {
        let p = PlatformProfile::builtin("kaifeng").unwrap();
        let shape = &p.downlink.as_ref().unwrap().check.as_ref().unwrap().reply;
        let a = parse_check_reply(
            shape,
            &serde_json::json!({"isAllowPass": "1", "passReason": "", "serialNum": "KF7",
                "fuelType": "B", "emissionStandard": "6"}),
        )
        .unwrap();
        assert!(!a.control);
        assert_eq!(a.serial.as_deref(), Some("KF7"));
        assert_eq!(a.stage, Some(EmissionStage::China(6)));
        let d = parse_check_reply(
            shape,
            &serde_json::json!({"isAllowPass": 0, "passReason": "超标车辆", "serialNum": ""}),
        )
        .unwrap();
        assert!(d.control, "\"0\" is a deny for kaifeng");
        assert_eq!(d.reason, "超标车辆");
        assert_eq!(d.serial, None, "an empty serial is none");
        assert!(parse_check_reply(shape, &serde_json::json!({"isAllowPass": "2"})).is_err());
    }

    #[test]
    fn the_kaifeng_check_request_names_the_lane_direction() {
        let p = Arc::new(PlatformProfile::builtin("kaifeng").unwrap());
        let t = check_target(
            "kf",
            Arc::clone(&p),
            "http://127.0.0.1:1",
            "ORG",
            Credentials {
                username: "u".into(),
                password: "p".into(),
                secret: String::new(),
            },
            Duration::from_millis(500),
        )
        .unwrap();
        let shape = p.downlink.as_ref().unwrap().check.as_ref().unwrap();
        let v = t.request(shape, "02", Direction::Out, "豫A1", PlateColor::Yellow);
        assert_eq!(
            v,
            serde_json::json!({"license": "豫A1", "licenseColor": "1", "companyCode": "ORG",
                "gateCode": "02", "passStatus": "B"})
        );
    }

    #[test]
    fn measures_parse_and_a_bad_entry_spoils_the_reply() {
        let p = profile();
        let shape = p.downlink.as_ref().unwrap().policy.as_ref().unwrap();
        let v = serde_json::json!([
            {"controlLevel": "2", "responseLevel": "2", "controlStrategy": "2",
             "startTime": "2026-12-01 00:00:00", "endTime": ""},
            {"controlLevel": "4", "responseLevel": "1", "controlStrategy": "",
             "startTime": "2026-12-01", "endTime": "2026-12-03 00:00:00"},
        ]);
        let m = parse_measures(&p, shape, &v, "platform:x").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].level, WarningLevel::Orange);
        assert_eq!(m[0].strategy, Some(Strategy::S2));
        assert_eq!(m[0].end, None);
        assert_eq!(m[1].level, WarningLevel::Red, "response level Ⅰ is red");
        assert_eq!(
            m[1].start,
            crate::ledger::parse_local_time("2026-12-01 00:00:00").unwrap()
        );
        let bad = serde_json::json!([
            {"controlLevel": "2", "controlStrategy": "2", "startTime": "2026-12-01 00:00:00"},
            {"controlLevel": "2", "controlStrategy": "9", "startTime": "2026-12-01 00:00:00"},
        ]);
        assert!(parse_measures(&p, shape, &bad, "s").is_err());
        assert!(parse_measures(&p, shape, &serde_json::json!({"a": 1}), "s").is_err());
        assert!(parse_measures(
            &p,
            shape,
            &serde_json::json!([{"controlLevel": "2", "startTime": "yesterday"}]),
            "s"
        )
        .is_err());
    }

    #[test]
    fn a_measure_event_reads_back_as_the_same_measure() {
        let t = Utc::now();
        for (strategy, gates, end) in [
            (
                Some(Strategy::S2),
                Some(vec!["1".to_string()]),
                Some(t + chrono::Duration::hours(5)),
            ),
            (None, None, None),
        ] {
            let m = ControlMeasure {
                level: WarningLevel::Red,
                strategy,
                start: t,
                end,
                gates,
                source: "platform:city".into(),
            };
            let EventBody::MeasureChange(c) = measure_event(&m, true) else {
                panic!("not a measure change");
            };
            assert_eq!(measure_of(&c), Some(m));
        }
        let w = apply_white_list(
            &RwLock::new(PolicyState::default()),
            "s",
            vec![ListEntry {
                plate: "豫A1".into(),
                color: None,
                from: None,
                until: None,
                gates: None,
                exempt_warnings: false,
                note: String::new(),
                source: "s".into(),
            }],
        );
        let Some(EventBody::MeasureChange(c)) = w else {
            panic!("no white-list event");
        };
        assert_eq!(measure_of(&c), None, "a white-list change is no measure");
    }

    #[test]
    fn applying_measures_records_only_changes() {
        let p = profile();
        let shape = p.downlink.as_ref().unwrap().policy.as_ref().unwrap();
        let state = RwLock::new(PolicyState::default());
        let v = serde_json::json!([{"controlLevel": "2", "controlStrategy": "2",
            "startTime": "2026-12-01 00:00:00"}]);
        let m = parse_measures(&p, shape, &v, "platform:x").unwrap();
        let ev = apply_measures(&state, "platform:x", m.clone());
        assert_eq!(ev.len(), 1);
        assert!(apply_measures(&state, "platform:x", m).is_empty());
        let ev = apply_measures(&state, "platform:x", vec![]);
        assert!(matches!(&ev[..], [EventBody::MeasureChange(c)] if !c.active));
        assert!(state.read().unwrap().measures().is_empty());
    }

    #[test]
    fn white_list_entries_parse() {
        let p = profile();
        let shape = p.downlink.as_ref().unwrap().white_list.as_ref().unwrap();
        let v = serde_json::json!([{"cphm": "豫A11111", "cpys": "1", "sxsj": "2026-12-01 00:00:00",
            "zzsj": "2026-12-31 00:00:00", "crkbh": "1,2"}]);
        let l = parse_white_list(&p, shape, &v, "platform:x").unwrap();
        assert_eq!(l[0].color, Some(PlateColor::Yellow));
        assert_eq!(
            l[0].gates.as_deref(),
            Some(&["1".to_string(), "2".to_string()][..])
        );
        let bad = serde_json::json!([{"cphm": "豫A11111", "cpys": "9"}]);
        assert!(parse_white_list(&p, shape, &bad, "s").is_err());
        let state = RwLock::new(PolicyState::default());
        assert!(apply_white_list(&state, "platform:x", l.clone()).is_some());
        assert!(apply_white_list(&state, "platform:x", l).is_none());
    }
}
