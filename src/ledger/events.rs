//! The facts the ledger records. Every fact is one appended event; nothing is edited in
//! place, so a correction is itself an event that names the one it corrects.

use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind};
use chrono::{DateTime, NaiveDate, Utc};
use ecogate_drivers::Mass;
use serde::{Deserialize, Serialize};

/// One ledger fact. Serialized with an internal `kind` tag; the stored body is the canonical
/// JSON of this value (see [`crate::ledger::chain`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    PassAttempt(PassAttempt),
    Weighing(Weighing),
    ManualRelease(ManualRelease),
    BarrierException(BarrierException),
    RegistryChange(RegistryChange),
    MeasureChange(MeasureChange),
    Backfill(Backfill),
    Alarm(Alarm),
    Correction(Correction),
    Purge(Purge),
    UplinkResend(UplinkResend),
    UserChange(UserChange),
    ReleaseRequest(ReleaseRequest),
    ReleaseDecision(ReleaseDecision),
    AlarmAck(AlarmAck),
    TransportTonnage(TransportTonnage),
}

impl EventBody {
    /// The `kind` tag, also stored in its own column for indexed queries.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::PassAttempt(_) => "pass_attempt",
            EventBody::Weighing(_) => "weighing",
            EventBody::ManualRelease(_) => "manual_release",
            EventBody::BarrierException(_) => "barrier_exception",
            EventBody::RegistryChange(_) => "registry_change",
            EventBody::MeasureChange(_) => "measure_change",
            EventBody::Backfill(_) => "backfill",
            EventBody::Alarm(_) => "alarm",
            EventBody::Correction(_) => "correction",
            EventBody::Purge(_) => "purge",
            EventBody::UplinkResend(_) => "uplink_resend",
            EventBody::UserChange(_) => "user_change",
            EventBody::ReleaseRequest(_) => "release_request",
            EventBody::ReleaseDecision(_) => "release_decision",
            EventBody::AlarmAck(_) => "alarm_ack",
            EventBody::TransportTonnage(_) => "transport_tonnage",
        }
    }
}

pub use crate::vehicle::Direction;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

/// How the barrier was (or would have been) opened: bgzt 2 automatic / 1 manual, plus remote
/// (software or platform) openings which §6.3 asks to keep apart from manual ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BarrierMode {
    Auto,
    Manual,
    Remote,
}

impl BarrierMode {
    pub fn chinese(self) -> &'static str {
        match self {
            BarrierMode::Auto => "自动抬杆",
            BarrierMode::Manual => "手动抬杆",
            BarrierMode::Remote => "遥控抬杆",
        }
    }

    pub fn parse(s: &str) -> Option<BarrierMode> {
        match s.trim() {
            "auto" | "自动" | "自动抬杆" => Some(BarrierMode::Auto),
            "manual" | "手动" | "手动抬杆" => Some(BarrierMode::Manual),
            "remote" | "遥控" | "遥控抬杆" => Some(BarrierMode::Remote),
            _ => None,
        }
    }
}

/// A vehicle at a lane and what was decided. Recorded before any barrier command goes out;
/// `opened` says whether the barrier was commanded open for it (摆杆通行 vs 未摆杆).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassAttempt {
    pub lane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    pub direction: Direction,
    pub plate: String,
    pub color: PlateColor,
    pub decision: Decision,
    /// Machine reason code (policy rule id, `platform_unreachable`, …).
    pub reason: String,
    /// The short text shown on the LED, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason_text: String,
    pub barrier: BarrierMode,
    pub opened: bool,
    /// Stage and fuel as known at the moment of decision (snapshot, not a registry pointer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<EmissionStage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<Fuel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryKind>,
    /// Role of each attached photo, in the order the photos were given (`head`, `body`, `plate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub photo_kinds: Vec<String>,
    /// The camera's own id for the plate read, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_id: Option<String>,
    /// Where the vehicle check came from when the site asks a platform before opening
    /// (`check = true`); absent otherwise, so older events hash as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<PassCheck>,
}

/// Which source decided a pass on a site that checks vehicles with a platform (docs/ledger.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckSource {
    /// The platform answered (its control decided, or its answer fed the local policy).
    Platform,
    /// No usable platform answer; the vehicle is in the local registry and the local policy
    /// decided on the registry's facts.
    FallbackRegistry,
    /// No usable platform answer and the vehicle is not registered: the site's fallback
    /// default decided.
    FallbackDefault,
}

impl CheckSource {
    pub fn name(self) -> &'static str {
        match self {
            CheckSource::Platform => "platform",
            CheckSource::FallbackRegistry => "fallback_registry",
            CheckSource::FallbackDefault => "fallback_default",
        }
    }
}

/// The platform vehicle check behind a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassCheck {
    pub source: CheckSource,
    /// The platform that answered (`source = platform`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Why no platform answer was used (timeout, HTTP error, garbled reply), per platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The serial the answering platform issued for this pass (kaifeng `/transport/check`);
    /// the pass is uploaded to that platform under it. Absent otherwise, so older events hash
    /// as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// A stable weight taken on a weighbridge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Weighing {
    pub lane: String,
    pub scale: String,
    pub plate: String,
    pub color: PlateColor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gross: Option<Mass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tare: Option<Mass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Mass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<String>,
    /// 进货 (in) or 出货 (out), when the weighbridge system says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// Event id of the pass this weight belongs to, when the lane knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_ref: Option<String>,
}

/// A person opened the barrier (手工放行). Recorded before actuation. When it names a plate and
/// direction it is the pass record of that vehicle (the lane records no PassAttempt as well).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManualRelease {
    pub lane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    pub direction: Direction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<PlateColor>,
    pub mode: BarrierMode,
    pub operator: String,
    pub role: String,
    pub reason: String,
    /// Who approved, when the site requires a second person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Event id of the `release_request` this release carries out (console workflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub photo_kinds: Vec<String>,
}

/// The barrier was seen opening with no command and no plate (abnormal opening, §6.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BarrierException {
    pub lane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    pub mode: BarrierMode,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub photo_kinds: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryOp {
    Upsert,
    Delete,
}

/// A registry record was added, changed or removed. `record` is the full new record so the
/// registry can be rebuilt from the ledger alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryChange {
    pub registry: RegistryKind,
    pub op: RegistryOp,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<serde_json::Value>,
    /// Where it came from: `import:FILE`, `api`, `platform`.
    pub source: String,
}

/// A control measure (重污染天气 warning, strategy, list) started, changed or ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeasureChange {
    pub measure: String,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    pub source: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

/// A pass written on the paper log during an outage and entered later (补录). The event's
/// `occurred_at` is the time written on paper; `recorded_at` is when it was typed in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backfill {
    pub operator: String,
    pub reason: String,
    /// File and line the row came from.
    pub source: String,
    pub line: u64,
    pub pass: PassAttempt,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Mass>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// Device or subsystem name as in the site config.
    pub source: String,
    pub code: String,
    pub message: String,
    /// true when raised, false when cleared.
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
}

/// An operator acknowledged an alarm (named by source and code), raised or already cleared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmAck {
    pub source: String,
    pub code: String,
    pub operator: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A correction of an earlier pass-like event (pass attempt, manual release, backfill or
/// weighing). Fields left out are unchanged; `void` withdraws the referenced event from the
/// ledger views (it stays in the log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// Event id of the corrected event.
    pub refs: String,
    pub operator: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub void: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<PlateColor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Mass>,
}

/// Evidence older than the retention limit was removed: the photo files listed here were
/// deleted. The events that name them stay, so the chain still verifies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Purge {
    pub before: DateTime<Utc>,
    pub operator: String,
    pub reason: String,
    /// sha256 (hex) of every photo file removed.
    pub photos: Vec<String>,
}

/// Someone asked for the passes of `[from, to)` (pass time) to be uploaded again to one
/// regulator platform (`ecogate uplink resend`). The uplink re-sends them with their original
/// serials; recording the request here keeps who asked, when and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UplinkResend {
    pub platform: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub operator: String,
    pub reason: String,
}

/// An operator account was created or changed. Never carries the password or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserChange {
    pub username: String,
    /// `create`, `update`, `password`.
    pub op: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Who did it: a username, or `cli` for the command line.
    pub actor: String,
}

/// A person asked for a manual release (手工放行申请). The event id is the request id; the
/// photos are the lane's latest camera shots, the snapshot the approver judges by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub lane: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub plate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub color: Option<PlateColor>,
    pub reason_code: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason_text: String,
    pub requested_by: String,
    pub role: String,
    /// Event id of the lane's latest pass attempt when the request was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub photo_kinds: Vec<String>,
}

/// A release request was approved or rejected. `by` is the approver, or `rule:solo` when the
/// site lets the requester release alone for that reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseDecision {
    /// Event id of the `release_request`.
    pub request: String,
    pub approved: bool,
    pub by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// A clean (non-road) transport mode whose tonnage is entered by hand (§7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportMode {
    /// 铁路
    Rail,
    /// 水路
    Water,
    /// 管状带式输送机 / 皮带通廊
    Belt,
    /// 管道
    Pipeline,
}

/// Bulk goods one day moved by rail, water, belt or pipeline, copied from the railway, port or
/// belt-scale records: the clean-transport ratio counts it beside truck weighings. `mass` is
/// exact grams like every mass in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransportTonnage {
    pub date: NaiveDate,
    pub mode: TransportMode,
    pub cargo: String,
    pub mass: Mass,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    pub operator: String,
}
