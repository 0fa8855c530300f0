//! Access policy: who may pass a gate, now.
//!
//! [`Policy::decide`] is a pure function of the vehicle facts (or their absence), the lane's gate
//! and direction, the clock, and the runtime [`PolicyState`] (control measures and lists, fed by
//! the site config, the platform downlink and operators). The rules themselves are data: the
//! `[policy]` table of the site TOML, compiled once by [`PolicyConfig::compile`] into lookup
//! tables so a decision is a handful of comparisons.
//!
//! The decision order, the reason codes and the strategy table are documented in
//! `docs/policy.md`; `tests/policy_table.rs` checks the engine against the table printed there.

mod config;
mod text;

pub use config::{ClassesConfig, LevelsConfig, RulesConfig, Strategy4Config};
pub use config::{ExitMode, FuelMinsConfig, ListEntryConfig, MeasureConfig, Mode, PolicyConfig};

use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

pub use crate::vehicle::Direction;

/// 预警等级. The platform codes start at yellow (1 黄 2 橙 3 红); blue is the advisory level some
/// city plans add below yellow. Ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningLevel {
    Blue,
    Yellow,
    Orange,
    Red,
}

impl WarningLevel {
    pub const ALL: [WarningLevel; 4] = [
        WarningLevel::Blue,
        WarningLevel::Yellow,
        WarningLevel::Orange,
        WarningLevel::Red,
    ];

    /// From the platform's controlLevel (1 黄色, 2 橙色, 3 红色). Code 4 (其他) has no meaning
    /// the gate could act on, so it maps to nothing.
    pub fn from_platform_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(WarningLevel::Yellow),
            2 => Some(WarningLevel::Orange),
            3 => Some(WarningLevel::Red),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WarningLevel::Blue => "blue",
            WarningLevel::Yellow => "yellow",
            WarningLevel::Orange => "orange",
            WarningLevel::Red => "red",
        }
    }

    /// 蓝色 / 黄色 / 橙色 / 红色, as shown on the LED.
    pub fn chinese(self) -> &'static str {
        match self {
            WarningLevel::Blue => "蓝色",
            WarningLevel::Yellow => "黄色",
            WarningLevel::Orange => "橙色",
            WarningLevel::Red => "红色",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for WarningLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// 管控策略, the platform's controlStrategy 1–4 (regulatory-domain §2.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum Strategy {
    /// 禁行国三及以下重型柴油(燃气)车
    S1,
    /// 禁行国四及以下重型柴油(燃气)车
    S2,
    /// 禁行国四及以下重型柴油车与国五及以下燃气车
    S3,
    /// 停止公路运输
    S4,
}

impl Strategy {
    pub const ALL: [Strategy; 4] = [Strategy::S1, Strategy::S2, Strategy::S3, Strategy::S4];

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Strategy::S1),
            2 => Some(Strategy::S2),
            3 => Some(Strategy::S3),
            4 => Some(Strategy::S4),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8 + 1
    }

    pub fn description(self) -> &'static str {
        match self {
            Strategy::S1 => "禁行国三及以下重型柴油(燃气)车",
            Strategy::S2 => "禁行国四及以下重型柴油(燃气)车",
            Strategy::S3 => "禁行国四及以下重型柴油车与国五及以下燃气车",
            Strategy::S4 => "停止公路运输",
        }
    }

    /// Minimum stage a heavy goods vehicle of this fuel group must reach under strategies 1–3
    /// ("禁行国三及以下" = at least 国四). 0 means the strategy says nothing about the group.
    fn heavy_min(self, group: FuelGroup) -> u8 {
        match (self, group) {
            (Strategy::S1, FuelGroup::Diesel | FuelGroup::Gas) => 4,
            (Strategy::S2, FuelGroup::Diesel | FuelGroup::Gas) => 5,
            (Strategy::S3, FuelGroup::Diesel) => 5,
            (Strategy::S3, FuelGroup::Gas) => 6,
            _ => 0,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl From<Strategy> for u8 {
    fn from(s: Strategy) -> u8 {
        s.code()
    }
}

impl TryFrom<u8> for Strategy {
    type Error = String;
    fn try_from(code: u8) -> Result<Self, String> {
        Strategy::from_code(code).ok_or_else(|| format!("control strategy {code} is not 1-4"))
    }
}

/// Vehicle classes the rules are written for. Road vehicles are classed by GA 24.4 type-code
/// prefix (`[policy.classes]`); anything registered as non-road machinery is `NonRoad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VehicleClass {
    /// 重型货车 and 重型牵引车 (H1x, Q1x by default).
    HeavyGoods,
    /// Medium, light, mini and low-speed goods vehicles and tractors.
    LightGoods,
    /// 客车 (K).
    Passenger,
    /// Every other road vehicle (专项作业车, unknown codes, …).
    Other,
    /// 非道路移动机械.
    NonRoad,
}

impl VehicleClass {
    pub const ROAD: [VehicleClass; 4] = [
        VehicleClass::HeavyGoods,
        VehicleClass::LightGoods,
        VehicleClass::Passenger,
        VehicleClass::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            VehicleClass::HeavyGoods => "heavy_goods",
            VehicleClass::LightGoods => "light_goods",
            VehicleClass::Passenger => "passenger",
            VehicleClass::Other => "other",
            VehicleClass::NonRoad => "non_road",
        }
    }

    fn road_index(self) -> Option<usize> {
        match self {
            VehicleClass::HeavyGoods => Some(0),
            VehicleClass::LightGoods => Some(1),
            VehicleClass::Passenger => Some(2),
            VehicleClass::Other => Some(3),
            VehicleClass::NonRoad => None,
        }
    }
}

/// How the rules group fuels: the strategies treat diesel and gas apart; zero-emission fuels
/// never reach the groups (they are new energy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FuelGroup {
    /// B 柴油
    Diesel,
    /// E 天然气, F 液化石油气
    Gas,
    /// everything else that burns something (petrol, mixed oil, methanol, hybrid, …)
    Other,
}

impl FuelGroup {
    fn of(fuel: Fuel) -> Self {
        if fuel == Fuel::Diesel {
            FuelGroup::Diesel
        } else if fuel.is_gas() {
            FuelGroup::Gas
        } else {
            FuelGroup::Other
        }
    }
}

/// A minimum stage of 8 means "new energy only"; 0 means "no minimum".
pub(crate) const NEW_ENERGY_ONLY: u8 = 8;

/// Minimum stages for one situation (normal days, or one warning level).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Rules {
    /// `[class][fuel group]`, class in `VehicleClass::ROAD` order, group Diesel, Gas, Other.
    road: [[u8; 3]; 4],
    non_road: u8,
}

impl Rules {
    fn min(&self, class: VehicleClass, group: FuelGroup) -> u8 {
        match class.road_index() {
            Some(c) => self.road[c][group as usize],
            None => self.non_road,
        }
    }

    fn restricts(&self) -> bool {
        self.non_road > 0 || self.road.iter().flatten().any(|m| *m > 0)
    }
}

/// A control measure (管控措施): from the config, the platform downlink or an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlMeasure {
    pub level: WarningLevel,
    pub strategy: Option<Strategy>,
    /// Active from `start` (inclusive) …
    pub start: DateTime<Utc>,
    /// … until `end` (exclusive); open-ended when None.
    pub end: Option<DateTime<Utc>>,
    /// Gates it applies to; all gates when None.
    pub gates: Option<Vec<String>>,
    /// Who set it: "config", "platform", "operator:NAME", … Used to replace one source's
    /// measures without touching the others'.
    pub source: String,
}

impl ControlMeasure {
    pub fn is_active(&self, gate: &str, now: DateTime<Utc>) -> bool {
        self.start <= now
            && self.end.map_or(true, |e| now < e)
            && in_scope(self.gates.as_deref(), gate)
    }
}

/// A white or black list entry (白名单 mj_bmd: cphm, cpys, sxsj, zzsj, crkbh).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub plate: String,
    /// Any colour when None.
    pub color: Option<PlateColor>,
    /// 生效时间 (inclusive); valid from the start of time when None.
    pub from: Option<DateTime<Utc>>,
    /// 终止时间 (exclusive); valid forever when None.
    pub until: Option<DateTime<Utc>>,
    /// 可通行门; all gates when None.
    pub gates: Option<Vec<String>>,
    /// White list only: the entry also exempts the vehicle from warning-time rules (special,
    /// hazmat, emergency, 民生保障 vehicles).
    #[serde(default)]
    pub exempt_warnings: bool,
    #[serde(default)]
    pub note: String,
    pub source: String,
}

impl ListEntry {
    fn matches(&self, color: PlateColor, gate: &str, now: DateTime<Utc>) -> bool {
        self.color.map_or(true, |c| c == color)
            && self.from.map_or(true, |f| f <= now)
            && self.until.map_or(true, |u| now < u)
            && in_scope(self.gates.as_deref(), gate)
    }

    fn expired(&self, now: DateTime<Utc>) -> bool {
        self.until.is_some_and(|u| u <= now)
    }
}

fn in_scope(gates: Option<&[String]>, gate: &str) -> bool {
    gates.map_or(true, |g| g.iter().any(|x| x == gate))
}

/// A list keyed by plate so a lookup is one hash probe, whatever the list's size.
#[derive(Debug, Clone, Default)]
struct PlateList {
    by_plate: HashMap<String, Vec<ListEntry>>,
}

impl PlateList {
    /// Plates are stored as the camera reports them: trimmed, ASCII letters upper-case.
    fn add(&mut self, mut entry: ListEntry) {
        if entry.plate.trim().len() != entry.plate.len()
            || entry.plate.bytes().any(|b| b.is_ascii_lowercase())
        {
            entry.plate = entry.plate.trim().to_ascii_uppercase();
        }
        self.by_plate
            .entry(entry.plate.clone())
            .or_default()
            .push(entry);
    }

    fn retain(&mut self, mut keep: impl FnMut(&ListEntry) -> bool) -> usize {
        let mut removed = 0;
        self.by_plate.retain(|_, entries| {
            let before = entries.len();
            entries.retain(&mut keep);
            removed += before - entries.len();
            !entries.is_empty()
        });
        removed
    }

    fn candidates(&self, plate: &str) -> &[ListEntry] {
        self.by_plate.get(plate).map_or(&[], Vec::as_slice)
    }

    fn iter(&self) -> impl Iterator<Item = &ListEntry> {
        self.by_plate.values().flatten()
    }

    fn len(&self) -> usize {
        self.by_plate.values().map(Vec::len).sum()
    }
}

/// The runtime inputs that change while the gateway runs: control measures and the two lists.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    measures: Vec<ControlMeasure>,
    white: PlateList,
    black: PlateList,
}

impl PolicyState {
    /// The measures and lists declared in the site config (source "config").
    pub fn from_config(policy: &Policy) -> Self {
        let mut state = PolicyState {
            measures: policy.measures.clone(),
            ..PolicyState::default()
        };
        for e in &policy.white {
            state.white.add(e.clone());
        }
        for e in &policy.black {
            state.black.add(e.clone());
        }
        state
    }

    pub fn measures(&self) -> &[ControlMeasure] {
        &self.measures
    }

    pub fn add_measure(&mut self, measure: ControlMeasure) {
        self.measures.push(measure);
    }

    /// Replaces every measure from `source` (e.g. a full platform push) and keeps the others.
    pub fn replace_measures_from(
        &mut self,
        source: &str,
        measures: impl IntoIterator<Item = ControlMeasure>,
    ) {
        self.measures.retain(|m| m.source != source);
        self.measures.extend(measures);
    }

    /// Removes the measures `keep` rejects; returns how many went.
    pub fn retain_measures(&mut self, keep: impl FnMut(&ControlMeasure) -> bool) -> usize {
        let before = self.measures.len();
        self.measures.retain(keep);
        before - self.measures.len()
    }

    pub fn remove_measures_from(&mut self, source: &str) -> usize {
        self.retain_measures(|m| m.source != source)
    }

    pub fn add_white(&mut self, entry: ListEntry) {
        self.white.add(entry);
    }

    pub fn add_black(&mut self, entry: ListEntry) {
        self.black.add(entry);
    }

    /// Removes white-list entries for a plate (of one colour, or all colours when None).
    pub fn remove_white(&mut self, plate: &str, color: Option<PlateColor>) -> usize {
        self.white
            .retain(|e| !(e.plate == plate && (color.is_none() || e.color == color)))
    }

    pub fn remove_black(&mut self, plate: &str, color: Option<PlateColor>) -> usize {
        self.black
            .retain(|e| !(e.plate == plate && (color.is_none() || e.color == color)))
    }

    /// Replaces every white-list entry from `source` (a full platform list push).
    pub fn replace_white_from(
        &mut self,
        source: &str,
        entries: impl IntoIterator<Item = ListEntry>,
    ) {
        self.white.retain(|e| e.source != source);
        for e in entries {
            self.white.add(e);
        }
    }

    pub fn replace_black_from(
        &mut self,
        source: &str,
        entries: impl IntoIterator<Item = ListEntry>,
    ) {
        self.black.retain(|e| e.source != source);
        for e in entries {
            self.black.add(e);
        }
    }

    pub fn white_entries(&self) -> impl Iterator<Item = &ListEntry> {
        self.white.iter()
    }

    pub fn black_entries(&self) -> impl Iterator<Item = &ListEntry> {
        self.black.iter()
    }

    pub fn white_len(&self) -> usize {
        self.white.len()
    }

    pub fn black_len(&self) -> usize {
        self.black.len()
    }

    /// Drops measures and list entries that ended at or before `now`; returns how many. Only
    /// housekeeping: expired entries never match anyway.
    pub fn prune_expired(&mut self, now: DateTime<Utc>) -> usize {
        self.retain_measures(|m| m.end.map_or(true, |e| now < e))
            + self.white.retain(|e| !e.expired(now))
            + self.black.retain(|e| !e.expired(now))
    }

    fn black_match(&self, plate: &str, color: PlateColor, gate: &str, now: DateTime<Utc>) -> bool {
        self.black
            .candidates(plate)
            .iter()
            .any(|e| e.matches(color, gate, now))
    }

    /// The matching white-list entry, preferring one that exempts from warnings.
    fn white_match(
        &self,
        plate: &str,
        color: PlateColor,
        gate: &str,
        now: DateTime<Utc>,
    ) -> Option<&ListEntry> {
        let mut found = None;
        for e in self.white.candidates(plate) {
            if e.matches(color, gate, now) {
                if e.exempt_warnings {
                    return Some(e);
                }
                found.get_or_insert(e);
            }
        }
        found
    }
}

/// One decision request.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    pub plate: &'a str,
    pub color: PlateColor,
    /// None when the vehicle is in no registry (and the platform gave no facts).
    pub facts: Option<&'a VehicleFacts>,
    pub gate: &'a str,
    pub direction: Direction,
    pub now: DateTime<Utc>,
}

/// Why: a stable code for the ledger, MQTT and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "&'static str", try_from = "String")]
pub enum Reason {
    /// Allowed: meets every active rule.
    Ok,
    /// Allowed: new-energy vehicle.
    NewEnergy,
    /// Allowed: emission stage X, `stage_x = "allow_flag"` (review).
    StageUnknown,
    /// Allowed: white list.
    WhiteList,
    /// Allowed under a warning: white-list entry with `exempt_warnings`.
    WhiteListExempt,
    /// Allowed: leaving the plant (`exit = "allow"`).
    Exit,
    /// Allowed to leave although black-listed (review).
    ExitBlackList,
    /// Denied: black list.
    BlackList,
    /// Denied: not in any registry and `require_registered = true`.
    NotRegistered,
    /// Not in any registry: denied (`unknown = "deny"`) or allowed with review.
    UnknownVehicle,
    /// Not in any registry while a warning restricts traffic.
    UnknownInWarning,
    /// Denied by platform control strategy 1–4.
    Strategy(Strategy),
    /// Denied by the site's per-level minimum stages.
    LevelMinStage,
    /// Denied by the normal-day minimum stages.
    NormalMinStage,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::NewEnergy => "new_energy",
            Reason::StageUnknown => "stage_unknown",
            Reason::WhiteList => "white_list",
            Reason::WhiteListExempt => "white_list_exempt",
            Reason::Exit => "exit",
            Reason::ExitBlackList => "exit_black_list",
            Reason::BlackList => "black_list",
            Reason::NotRegistered => "not_registered",
            Reason::UnknownVehicle => "unknown_vehicle",
            Reason::UnknownInWarning => "unknown_in_warning",
            Reason::Strategy(Strategy::S1) => "strategy_1",
            Reason::Strategy(Strategy::S2) => "strategy_2",
            Reason::Strategy(Strategy::S3) => "strategy_3",
            Reason::Strategy(Strategy::S4) => "strategy_4",
            Reason::LevelMinStage => "level_min_stage",
            Reason::NormalMinStage => "normal_min_stage",
        }
    }

    pub const ALL: [Reason; 17] = [
        Reason::Ok,
        Reason::NewEnergy,
        Reason::StageUnknown,
        Reason::WhiteList,
        Reason::WhiteListExempt,
        Reason::Exit,
        Reason::ExitBlackList,
        Reason::BlackList,
        Reason::NotRegistered,
        Reason::UnknownVehicle,
        Reason::UnknownInWarning,
        Reason::Strategy(Strategy::S1),
        Reason::Strategy(Strategy::S2),
        Reason::Strategy(Strategy::S3),
        Reason::Strategy(Strategy::S4),
        Reason::LevelMinStage,
        Reason::NormalMinStage,
    ];
}

impl Reason {
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl TryFrom<String> for Reason {
    type Error = String;
    fn try_from(code: String) -> Result<Self, String> {
        Reason::from_code(&code).ok_or_else(|| format!("unknown policy reason code `{code}`"))
    }
}

impl From<Reason> for &'static str {
    fn from(r: Reason) -> &'static str {
        r.code()
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
    /// Two short lines for the LED, separated by one space (each ≤ 8 Chinese characters).
    pub text: String,
    /// A person should look at this pass later (allowed on incomplete facts, black-listed exit).
    pub review: bool,
    /// The warning level that decided a denial, else the highest level active at this gate.
    pub measure: Option<WarningLevel>,
}

/// The compiled `[policy]`: precomputed tables, evaluated by [`Policy::decide`].
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) unknown: Mode,
    pub(crate) unknown_in_warning: Mode,
    pub(crate) require_registered: bool,
    pub(crate) exit: ExitMode,
    pub(crate) stage_x: Mode,
    pub(crate) new_energy_plates: bool,
    /// Type-code prefixes, longest first, so `H1` can be heavy while `H` is light.
    pub(crate) class_prefixes: Vec<(String, VehicleClass)>,
    pub(crate) normal: Rules,
    pub(crate) levels: [Rules; 4],
    pub(crate) s4_classes: [bool; 4],
    pub(crate) s4_stops_new_energy: bool,
    pub(crate) measures: Vec<ControlMeasure>,
    pub(crate) white: Vec<ListEntry>,
    pub(crate) black: Vec<ListEntry>,
}

impl Default for Policy {
    /// The national defaults (the same as compiling an empty `[policy]`).
    fn default() -> Self {
        config::defaults()
    }
}

/// What the active measures at one gate add up to.
#[derive(Debug, Clone, Copy, Default)]
struct Active {
    /// The highest level among the active measures carrying each strategy.
    strategies: [Option<WarningLevel>; 4],
    levels: [bool; 4],
    highest: Option<WarningLevel>,
}

/// Outcome of one stage rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Pass,
    /// Passes only because stage X is let through (`stage_x = "allow_flag"`).
    Flag,
    Fail,
}

/// The vehicle as the rules see it.
#[derive(Debug, Clone, Copy)]
struct Subject {
    class: VehicleClass,
    group: FuelGroup,
    stage: EmissionStage,
    fuel: Fuel,
    new_energy: bool,
}

impl Policy {
    /// Decides one pass. Allocates only the LED text.
    pub fn decide(&self, input: &DecisionInput, state: &PolicyState) -> Decision {
        let active = self.active(state, input.gate, input.now);
        let restricting = self.restricting(&active);

        if state.black_match(input.plate, input.color, input.gate, input.now) {
            if input.direction == Direction::Out && self.exit == ExitMode::Allow {
                return decision(true, Reason::ExitBlackList, true, active.highest);
            }
            return decision(false, Reason::BlackList, false, active.highest);
        }
        if input.direction == Direction::Out && self.exit == ExitMode::Allow {
            return decision(true, Reason::Exit, false, active.highest);
        }

        let plate_new_energy = self.new_energy_plates
            && (input.color.is_new_energy() || input.plate.chars().count() == 8);

        if let Some(white) = state.white_match(input.plate, input.color, input.gate, input.now) {
            if !restricting {
                return decision(true, Reason::WhiteList, false, active.highest);
            }
            if white.exempt_warnings {
                return decision(true, Reason::WhiteListExempt, false, active.highest);
            }
            // A white list skips registration and the normal-day minimums, not the warning.
            let flag = match input.facts {
                Some(facts) => {
                    let subject = self.subject(facts, plate_new_energy);
                    match self.check_measures(&subject, &active) {
                        Err(denial) => return self.deny(denial, &subject),
                        Ok(flag) => flag,
                    }
                }
                None => {
                    if !self.unknown_passes_measures(plate_new_energy, &active) {
                        if self.unknown_in_warning == Mode::Deny {
                            return self.deny_unknown_in_warning(&active);
                        }
                        true
                    } else {
                        false
                    }
                }
            };
            return decision(true, Reason::WhiteList, flag, active.highest);
        }

        let Some(facts) = input.facts else {
            if self.require_registered {
                return decision(false, Reason::NotRegistered, false, active.highest);
            }
            let mut review = false;
            if restricting && !self.unknown_passes_measures(plate_new_energy, &active) {
                if self.unknown_in_warning == Mode::Deny {
                    return self.deny_unknown_in_warning(&active);
                }
                review = true;
            }
            return match self.unknown {
                Mode::Deny => decision(false, Reason::UnknownVehicle, false, active.highest),
                Mode::AllowFlag => {
                    let reason = if review {
                        Reason::UnknownInWarning
                    } else {
                        Reason::UnknownVehicle
                    };
                    decision(true, reason, true, active.highest)
                }
            };
        };

        let subject = self.subject(facts, plate_new_energy);
        let mut flag = match self.check_measures(&subject, &active) {
            Err(denial) => return self.deny(denial, &subject),
            Ok(flag) => flag,
        };
        match self.stage_check(&subject, self.normal.min(subject.class, subject.group)) {
            Check::Fail => {
                return self.deny((Reason::NormalMinStage, active.highest), &subject);
            }
            Check::Flag => flag = true,
            Check::Pass => {}
        }
        let reason = if subject.new_energy {
            Reason::NewEnergy
        } else if flag {
            Reason::StageUnknown
        } else {
            Reason::Ok
        };
        Decision {
            allow: true,
            reason,
            text: text::allowed(reason, subject.stage, subject.fuel, subject.class),
            review: flag,
            measure: active.highest,
        }
    }

    /// The highest warning level active at `gate` at `now`, for displays.
    pub fn highest_level(
        &self,
        state: &PolicyState,
        gate: &str,
        now: DateTime<Utc>,
    ) -> Option<WarningLevel> {
        self.active(state, gate, now).highest
    }

    /// The class the rules put a vehicle in.
    pub fn classify(&self, facts: &VehicleFacts) -> VehicleClass {
        if facts.registry == RegistryKind::NonRoad {
            return VehicleClass::NonRoad;
        }
        let code = facts.vehicle_type.trim().as_bytes();
        self.class_prefixes
            .iter()
            .find(|(p, _)| {
                code.len() >= p.len() && code[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            })
            .map_or(VehicleClass::Other, |(_, c)| *c)
    }

    fn active(&self, state: &PolicyState, gate: &str, now: DateTime<Utc>) -> Active {
        let mut a = Active::default();
        for m in state.measures.iter().filter(|m| m.is_active(gate, now)) {
            a.levels[m.level.index()] = true;
            a.highest = a.highest.max(Some(m.level));
            if let Some(s) = m.strategy {
                let slot = &mut a.strategies[s.index()];
                *slot = (*slot).max(Some(m.level));
            }
        }
        a
    }

    /// Whether the active measures restrict anything at all (a blue advisory with no rules
    /// does not).
    fn restricting(&self, a: &Active) -> bool {
        a.strategies.iter().any(Option::is_some)
            || WarningLevel::ALL
                .iter()
                .any(|l| a.levels[l.index()] && self.levels[l.index()].restricts())
    }

    /// An unregistered vehicle is known only by its plate: it passes the warning rules only
    /// when the plate says new energy and no rule stops new-energy vehicles.
    fn unknown_passes_measures(&self, plate_new_energy: bool, a: &Active) -> bool {
        if !self.restricting(a) {
            return true;
        }
        plate_new_energy
            && !(a.strategies[Strategy::S4.index()].is_some() && self.s4_stops_new_energy)
    }

    fn subject(&self, facts: &VehicleFacts, plate_new_energy: bool) -> Subject {
        let class = self.classify(facts);
        Subject {
            class,
            group: FuelGroup::of(facts.fuel),
            stage: facts.stage,
            fuel: facts.fuel,
            new_energy: plate_new_energy
                || (self.new_energy_plates && facts.color.is_new_energy())
                || facts.stage == EmissionStage::Electric
                || facts.fuel.is_zero_emission(),
        }
    }

    fn stage_check(&self, s: &Subject, min: u8) -> Check {
        if min == 0 || s.new_energy {
            return Check::Pass;
        }
        if min == NEW_ENERGY_ONLY {
            return Check::Fail;
        }
        match s.stage {
            EmissionStage::China(n) if n >= min => Check::Pass,
            EmissionStage::China(_) => Check::Fail,
            EmissionStage::Electric => Check::Pass,
            EmissionStage::Unknown => match self.stage_x {
                Mode::Deny => Check::Fail,
                Mode::AllowFlag => Check::Flag,
            },
        }
    }

    /// Every active measure must pass. Order of the checks only decides which reason a denial
    /// names: stop-transport first, then the strictest strategy, then the highest level.
    fn check_measures(
        &self,
        s: &Subject,
        a: &Active,
    ) -> Result<bool, (Reason, Option<WarningLevel>)> {
        let mut flag = false;
        if let (Some(level), Some(ci)) = (a.strategies[Strategy::S4.index()], s.class.road_index())
        {
            if self.s4_classes[ci] && (!s.new_energy || self.s4_stops_new_energy) {
                return Err((Reason::Strategy(Strategy::S4), Some(level)));
            }
        }
        if s.class == VehicleClass::HeavyGoods {
            for strategy in [Strategy::S3, Strategy::S2, Strategy::S1] {
                if let Some(level) = a.strategies[strategy.index()] {
                    match self.stage_check(s, strategy.heavy_min(s.group)) {
                        Check::Fail => return Err((Reason::Strategy(strategy), Some(level))),
                        Check::Flag => flag = true,
                        Check::Pass => {}
                    }
                }
            }
        }
        for level in WarningLevel::ALL.iter().rev() {
            if a.levels[level.index()] {
                let min = self.levels[level.index()].min(s.class, s.group);
                match self.stage_check(s, min) {
                    Check::Fail => return Err((Reason::LevelMinStage, Some(*level))),
                    Check::Flag => flag = true,
                    Check::Pass => {}
                }
            }
        }
        Ok(flag)
    }

    fn deny(&self, (reason, level): (Reason, Option<WarningLevel>), s: &Subject) -> Decision {
        Decision {
            allow: false,
            reason,
            text: text::denied(reason, level, s.stage, s.fuel, s.class),
            review: false,
            measure: level,
        }
    }

    fn deny_unknown_in_warning(&self, a: &Active) -> Decision {
        Decision {
            allow: false,
            reason: Reason::UnknownInWarning,
            text: text::unknown_in_warning(a.highest),
            review: false,
            measure: a.highest,
        }
    }
}

fn decision(allow: bool, reason: Reason, review: bool, measure: Option<WarningLevel>) -> Decision {
    Decision {
        allow,
        reason,
        text: text::fixed(reason, allow).to_string(),
        review,
        measure,
    }
}

#[cfg(test)]
mod tests;
