//! The `[policy]` table as written by the integrator, and its compilation into [`Policy`].
//!
//! Values that can be semantically wrong (stages, levels, strategies, times, gates, colours,
//! class names) are kept as `Spanned` so each error points at the offending value. Unknown
//! keys are the loader's business (serde_ignored), so nothing here denies them.

use super::{
    ControlMeasure, ListEntry, Policy, Rules, Strategy, VehicleClass, WarningLevel, NEW_ENERGY_ONLY,
};
use crate::config::diag::{closest, Diagnostic, SourceFile};
use crate::vehicle::{EmissionStage, PlateColor};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use toml::value::{Datetime, Offset};
use toml::{Spanned, Value};

/// Deny, or allow and flag the pass for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Deny,
    AllowFlag,
}

/// What to do with vehicles leaving the plant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitMode {
    /// Always let them out (never trap a truck inside); a black-listed one is flagged.
    Allow,
    /// Apply the same rules as on entry.
    Check,
}

/// The `[policy]` table. Every key is optional; what is left out keeps the national default
/// (see `docs/policy.md`), so `PolicyConfig::default()` compiles to the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Vehicles in no registry: "allow_flag" (default) or "deny".
    pub unknown: Option<Mode>,
    /// Vehicles in no registry while a warning restricts traffic: "deny" (default) or
    /// "allow_flag". Never weaker than `unknown`.
    pub unknown_in_warning: Option<Mode>,
    /// Deny every vehicle that is in no registry ("未登记车辆禁止通行"), whatever `unknown` says.
    pub require_registered: bool,
    /// "allow" (default) or "check".
    pub exit: Option<ExitMode>,
    /// Emission stage X (unknown) against a minimum: "deny" (default) or "allow_flag".
    pub stage_x: Option<Mode>,
    /// Whether a green / yellow-green or 8-character plate alone proves new energy (default true).
    pub new_energy_plates: Option<bool>,
    pub classes: ClassesConfig,
    /// Normal-day minimum stages.
    pub normal: RulesConfig,
    /// Extra minimum stages while a measure of that level is active (一厂一策).
    pub levels: LevelsConfig,
    pub strategy4: Strategy4Config,
    pub measures: Vec<MeasureConfig>,
    pub white: Vec<ListEntryConfig>,
    pub black: Vec<ListEntryConfig>,
}

/// `[policy.classes]`: GA 24.4 type-code prefixes per class; the longest matching prefix wins
/// and codes matching none are `other`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ClassesConfig {
    pub heavy_goods: Option<Vec<Spanned<String>>>,
    pub light_goods: Option<Vec<Spanned<String>>>,
    pub passenger: Option<Vec<Spanned<String>>>,
}

/// Minimum stages per class (and `non_road`). A stage is "0"–"7" (or an integer), "D" for new
/// energy only; "0" means no minimum.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RulesConfig {
    pub heavy_goods: Option<FuelMinsConfig>,
    pub light_goods: Option<FuelMinsConfig>,
    pub passenger: Option<FuelMinsConfig>,
    pub other: Option<FuelMinsConfig>,
    pub non_road: Option<Spanned<Value>>,
}

/// `{ diesel = "5", gas = "5", other = "4" }`; `all` sets the three at once, the specific keys
/// override it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct FuelMinsConfig {
    pub all: Option<Spanned<Value>>,
    pub diesel: Option<Spanned<Value>>,
    pub gas: Option<Spanned<Value>>,
    pub other: Option<Spanned<Value>>,
}

/// `[policy.levels.<level>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LevelsConfig {
    pub blue: Option<RulesConfig>,
    pub yellow: Option<RulesConfig>,
    pub orange: Option<RulesConfig>,
    pub red: Option<RulesConfig>,
}

/// `[policy.strategy4]`: what 停止公路运输 stops.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Strategy4Config {
    /// Classes it stops (default heavy_goods and light_goods: the goods vehicles).
    pub classes: Option<Vec<Spanned<String>>>,
    /// Whether it stops new-energy goods vehicles too (default false).
    pub stop_new_energy: Option<bool>,
}

/// `[[policy.measures]]`: a control measure declared in the config.
#[derive(Debug, Clone, Deserialize)]
pub struct MeasureConfig {
    /// "blue" | "yellow" | "orange" | "red" (or 黄色…, or the platform code 1–3).
    pub level: Spanned<Value>,
    /// Platform strategy 1–4.
    pub strategy: Option<Spanned<Value>>,
    pub start: Spanned<Value>,
    pub end: Option<Spanned<Value>>,
    pub gates: Option<Spanned<Vec<Spanned<String>>>>,
    pub source: Option<String>,
}

/// `[[policy.white]]` / `[[policy.black]]`.
#[derive(Debug, Clone, Deserialize)]
pub struct ListEntryConfig {
    pub plate: Spanned<String>,
    pub color: Option<Spanned<Value>>,
    pub from: Option<Spanned<Value>>,
    pub until: Option<Spanned<Value>>,
    pub gates: Option<Spanned<Vec<Spanned<String>>>>,
    pub exempt_warnings: Option<Spanned<bool>>,
    pub note: Option<String>,
}

/// A validity window: start (inclusive) and end (exclusive), each optional.
type Window = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

const CLASS_NAMES: [&str; 4] = ["heavy_goods", "light_goods", "passenger", "other"];

/// The national defaults (docs/policy.md, "Defaults").
pub(super) fn defaults() -> Policy {
    let normal = Rules {
        road: [[5, 5, 4], [4, 4, 4], [4, 4, 4], [4, 4, 4]],
        non_road: 0,
    };
    // Typical city orders for orange/red: no 国四及以下 heavy trucks (gas included), no 国二及以下
    // non-road machinery (regulatory-domain §5.3).
    let severe = Rules {
        road: [[5, 5, 0], [0; 3], [0; 3], [0; 3]],
        non_road: 3,
    };
    let mut class_prefixes: Vec<(String, VehicleClass)> = Vec::new();
    for p in ["H1", "Q1"] {
        class_prefixes.push((p.into(), VehicleClass::HeavyGoods));
    }
    for p in ["H2", "H3", "H4", "H5", "Q2", "Q3"] {
        class_prefixes.push((p.into(), VehicleClass::LightGoods));
    }
    class_prefixes.push(("K".into(), VehicleClass::Passenger));
    sort_prefixes(&mut class_prefixes);
    Policy {
        unknown: Mode::AllowFlag,
        unknown_in_warning: Mode::Deny,
        require_registered: false,
        exit: ExitMode::Allow,
        stage_x: Mode::Deny,
        new_energy_plates: true,
        class_prefixes,
        normal,
        levels: [Rules::default(), Rules::default(), severe, severe],
        s4_classes: [true, true, false, false],
        s4_stops_new_energy: false,
        measures: Vec::new(),
        white: Vec::new(),
        black: Vec::new(),
    }
}

fn sort_prefixes(p: &mut [(String, VehicleClass)]) {
    p.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
}

/// Collects diagnostics while compiling.
struct Ctx<'a> {
    file: &'a SourceFile,
    gate_ids: &'a [String],
    errors: Vec<Diagnostic>,
}

impl PolicyConfig {
    /// Validates against the site's gate ids and compiles. Every error is a Diagnostic at the
    /// offending value; all of them are collected.
    pub fn compile(
        &self,
        file: &SourceFile,
        gate_ids: &[String],
    ) -> Result<Policy, Vec<Diagnostic>> {
        let mut cx = Ctx {
            file,
            gate_ids,
            errors: Vec::new(),
        };
        let mut p = defaults();
        p.unknown = self.unknown.unwrap_or(p.unknown);
        p.unknown_in_warning = self.unknown_in_warning.unwrap_or(p.unknown_in_warning);
        p.require_registered = self.require_registered;
        p.exit = self.exit.unwrap_or(p.exit);
        p.stage_x = self.stage_x.unwrap_or(p.stage_x);
        p.new_energy_plates = self.new_energy_plates.unwrap_or(p.new_energy_plates);

        cx.classes(&self.classes, &mut p.class_prefixes);
        cx.rules(&self.normal, &mut p.normal);
        let levels = [
            &self.levels.blue,
            &self.levels.yellow,
            &self.levels.orange,
            &self.levels.red,
        ];
        for (rules, cfg) in p.levels.iter_mut().zip(levels) {
            if let Some(cfg) = cfg {
                cx.rules(cfg, rules);
            }
        }
        if let Some(classes) = &self.strategy4.classes {
            p.s4_classes = [false; 4];
            for name in classes {
                match CLASS_NAMES
                    .iter()
                    .position(|c| *c == name.get_ref().as_str())
                {
                    Some(i) => p.s4_classes[i] = true,
                    None => cx.push(
                        name.span(),
                        format!("unknown vehicle class `{}`", name.get_ref()),
                        did_you_mean(name.get_ref(), CLASS_NAMES),
                    ),
                }
            }
        }
        p.s4_stops_new_energy = self
            .strategy4
            .stop_new_energy
            .unwrap_or(p.s4_stops_new_energy);

        p.measures = self.measures.iter().filter_map(|m| cx.measure(m)).collect();
        p.white = self
            .white
            .iter()
            .filter_map(|e| cx.list_entry(e, true))
            .collect();
        p.black = self
            .black
            .iter()
            .filter_map(|e| cx.list_entry(e, false))
            .collect();

        if cx.errors.is_empty() {
            Ok(p)
        } else {
            cx.errors.sort_by_key(|d| (d.line, d.col));
            Err(cx.errors)
        }
    }
}

fn did_you_mean<'a>(name: &str, known: impl IntoIterator<Item = &'a str> + Clone) -> String {
    match closest(name, known.clone()) {
        Some(k) => format!("did you mean `{k}`?"),
        None => format!(
            "expected one of: {}",
            known.into_iter().collect::<Vec<_>>().join(", ")
        ),
    }
}

impl Ctx<'_> {
    fn push(&mut self, span: std::ops::Range<usize>, msg: String, help: impl Into<String>) {
        self.errors.push(self.file.error(span, msg).help(help));
    }

    fn classes(&mut self, cfg: &ClassesConfig, out: &mut Vec<(String, VehicleClass)>) {
        let given = [
            (&cfg.heavy_goods, VehicleClass::HeavyGoods),
            (&cfg.light_goods, VehicleClass::LightGoods),
            (&cfg.passenger, VehicleClass::Passenger),
        ];
        // A class written in the config replaces that class's default prefixes only.
        for (list, class) in &given {
            if list.is_some() {
                out.retain(|(_, c)| c != class);
            }
        }
        let mut seen: HashMap<String, VehicleClass> =
            out.iter().map(|(p, c)| (p.clone(), *c)).collect();
        for (list, class) in given {
            for prefix in list.iter().flatten() {
                let text = prefix.get_ref().trim().to_ascii_uppercase();
                if text.is_empty()
                    || text.len() > 3
                    || !text.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    self.push(
                        prefix.span(),
                        format!("`{}` is not a vehicle type-code prefix", prefix.get_ref()),
                        "write 1 to 3 letters/digits of a GA 24.4 code, e.g. \"H1\" or \"Q1\"",
                    );
                    continue;
                }
                if let Some(other) = seen.get(&text) {
                    self.push(
                        prefix.span(),
                        format!("prefix `{text}` is already in class `{}`", other.name()),
                        "a prefix can belong to one class only; remove one of them (list the class whose default you override in full)",
                    );
                    continue;
                }
                seen.insert(text.clone(), class);
                out.push((text, class));
            }
        }
        sort_prefixes(out);
    }

    fn rules(&mut self, cfg: &RulesConfig, out: &mut Rules) {
        let classes = [
            &cfg.heavy_goods,
            &cfg.light_goods,
            &cfg.passenger,
            &cfg.other,
        ];
        for (row, fm) in out.road.iter_mut().zip(classes) {
            let Some(fm) = fm else { continue };
            if let Some(v) = &fm.all {
                if let Some(m) = self.min_stage(v, false) {
                    *row = [m; 3];
                }
            }
            for (slot, v) in row.iter_mut().zip([&fm.diesel, &fm.gas, &fm.other]) {
                if let Some(v) = v {
                    if let Some(m) = self.min_stage(v, false) {
                        *slot = m;
                    }
                }
            }
        }
        if let Some(v) = &cfg.non_road {
            if let Some(m) = self.min_stage(v, true) {
                out.non_road = m;
            }
        }
    }

    /// A minimum stage: 0 (none) … 7, or NEW_ENERGY_ONLY for "D".
    fn min_stage(&mut self, v: &Spanned<Value>, non_road: bool) -> Option<u8> {
        let max = if non_road { 4 } else { 7 };
        let help = if non_road {
            "write a non-road stage \"0\"–\"4\" (\"0\" = no minimum) or \"D\" (electric only)"
        } else {
            "write a stage \"0\"–\"7\" (\"0\" = no minimum, \"5\" = 国五 and above) or \"D\" (new energy only)"
        };
        let n = match v.get_ref() {
            Value::Integer(n) => u8::try_from(*n).ok().filter(|n| *n <= 7),
            Value::String(s) => match s.trim() {
                "D" | "d" | "电动" | "新能源" => return Some(NEW_ENERGY_ONLY),
                t if chinese_numeral_stage(t).is_some() => chinese_numeral_stage(t),
                t => match t.parse::<EmissionStage>() {
                    Ok(EmissionStage::China(n)) => Some(n),
                    Ok(EmissionStage::Electric) => return Some(NEW_ENERGY_ONLY),
                    Ok(EmissionStage::Unknown) => {
                        self.push(
                            v.span(),
                            format!("`{s}` (unknown stage) cannot be a minimum"),
                            help,
                        );
                        return None;
                    }
                    Err(_) => None,
                },
            },
            _ => None,
        };
        match n {
            Some(n) if n <= max => Some(n),
            Some(n) => {
                self.push(
                    v.span(),
                    format!("non-road machinery has no stage {n} (its stages are 0–4)"),
                    help,
                );
                None
            }
            None => {
                self.push(
                    v.span(),
                    format!("`{}` is not an emission stage", show(v.get_ref())),
                    help,
                );
                None
            }
        }
    }

    fn time(&mut self, v: &Spanned<Value>) -> Option<DateTime<Utc>> {
        let parsed = match v.get_ref() {
            Value::Datetime(dt) => Ok(*dt),
            Value::String(s) => s.trim().parse::<Datetime>().map_err(|_| ()),
            _ => Err(()),
        };
        let Ok(dt) = parsed else {
            self.push(
                v.span(),
                format!("`{}` is not a date-time", show(v.get_ref())),
                "write a date-time with its UTC offset, e.g. 2026-12-01T06:00:00+08:00",
            );
            return None;
        };
        match to_utc(&dt) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.push(
                    v.span(),
                    msg,
                    "write the site's local time with its offset, e.g. 2026-12-01T06:00:00+08:00",
                );
                None
            }
        }
    }

    /// A window `from`/`until` (or `start`/`end`); the end must come after the start.
    /// `Err(())`: the error is already in `self.errors`.
    fn window(
        &mut self,
        start: Option<&Spanned<Value>>,
        end: Option<&Spanned<Value>>,
        end_key: &str,
        start_key: &str,
    ) -> Result<Window, ()> {
        let s = start.map(|v| self.time(v).ok_or(()));
        let e = end.map(|v| self.time(v).ok_or(()));
        let s = s.transpose()?;
        let e = e.transpose()?;
        if let (Some(s), Some(e), Some(sv), Some(ev)) = (s, e, start, end) {
            if e <= s {
                self.push(
                    ev.span(),
                    format!(
                        "`{end_key}` {} is not after `{start_key}` {}",
                        show(ev.get_ref()),
                        show(sv.get_ref())
                    ),
                    format!("`{end_key}` is exclusive and must come after `{start_key}`"),
                );
                return Err(());
            }
        }
        Ok((s, e))
    }

    fn gates(&mut self, gates: &Option<Spanned<Vec<Spanned<String>>>>) -> Option<Vec<String>> {
        let gates = gates.as_ref()?;
        if gates.get_ref().is_empty() {
            self.push(
                gates.span(),
                "an empty gate list would apply to no gate".into(),
                "leave `gates` out to mean every gate, or list gate ids",
            );
        }
        let mut out = Vec::with_capacity(gates.get_ref().len());
        for g in gates.get_ref() {
            if self.gate_ids.iter().any(|id| id == g.get_ref()) {
                out.push(g.get_ref().clone());
            } else {
                let known = self.gate_ids.join(", ");
                // Gate ids are often "1", "2": every short id is one edit from every other,
                // so only longer ids get a guess.
                let guess = if g.get_ref().chars().count() >= 3 {
                    closest(g.get_ref(), self.gate_ids.iter().map(String::as_str))
                } else {
                    None
                };
                let help = match guess {
                    _ if self.gate_ids.is_empty() => "the site declares no [[gates]]".to_string(),
                    Some(k) => format!("did you mean `{k}`? known gates: {known}"),
                    None => format!("known gates: {known}"),
                };
                self.push(g.span(), format!("unknown gate `{}`", g.get_ref()), help);
            }
        }
        Some(out)
    }

    fn measure(&mut self, m: &MeasureConfig) -> Option<ControlMeasure> {
        let errors_before = self.errors.len();
        let level = parse_level(m.level.get_ref());
        if level.is_none() {
            self.push(
                m.level.span(),
                format!("`{}` is not a warning level", show(m.level.get_ref())),
                "write \"blue\", \"yellow\", \"orange\" or \"red\" (or the platform code 1 黄, 2 橙, 3 红)",
            );
        }
        let strategy = m.strategy.as_ref().and_then(|s| {
            let parsed = match s.get_ref() {
                Value::Integer(n) => u8::try_from(*n).ok().and_then(Strategy::from_code),
                Value::String(t) => t.trim().parse().ok().and_then(Strategy::from_code),
                _ => None,
            };
            if parsed.is_none() {
                self.push(
                    s.span(),
                    format!("`{}` is not a control strategy", show(s.get_ref())),
                    "write 1, 2, 3 or 4 (1 禁行国三及以下重型柴油(燃气)车, 2 国四及以下, 3 国四及以下柴油与国五及以下燃气, 4 停止公路运输), or leave it out",
                );
            }
            parsed
        });
        let window = self.window(Some(&m.start), m.end.as_ref(), "end", "start");
        let gates = self.gates(&m.gates);
        if self.errors.len() != errors_before {
            return None;
        }
        let (Some(level), Ok((Some(start), end))) = (level, window) else {
            return None;
        };
        Some(ControlMeasure {
            level,
            strategy,
            start,
            end,
            gates,
            source: m.source.clone().unwrap_or_else(|| "config".into()),
        })
    }

    fn list_entry(&mut self, e: &ListEntryConfig, white: bool) -> Option<ListEntry> {
        let errors_before = self.errors.len();
        let plate = e.plate.get_ref().trim().to_uppercase();
        if plate.is_empty() || plate.chars().any(char::is_whitespace) {
            self.push(
                e.plate.span(),
                format!("`{}` is not a plate number", e.plate.get_ref()),
                "write the plate as the camera reads it, e.g. \"豫A12345\"",
            );
        }
        let color = e.color.as_ref().and_then(|c| {
            let parsed = match c.get_ref() {
                Value::Integer(n) => u8::try_from(*n).ok().and_then(PlateColor::from_national_code),
                Value::String(s) => s.parse::<PlateColor>().ok(),
                _ => None,
            };
            if parsed.is_none() {
                self.push(
                    c.span(),
                    format!("`{}` is not a plate colour", show(c.get_ref())),
                    "write blue, yellow, white, black, green, yellow_green or other (or 蓝/黄/…, or the national code 0–6); leave it out to match any colour",
                );
            }
            parsed
        });
        let window = self.window(e.from.as_ref(), e.until.as_ref(), "until", "from");
        let gates = self.gates(&e.gates);
        let exempt = match &e.exempt_warnings {
            Some(x) if !white => {
                self.push(
                    x.span(),
                    "`exempt_warnings` has no meaning on a black-list entry".into(),
                    "remove it; a black-listed vehicle is always denied",
                );
                false
            }
            Some(x) => *x.get_ref(),
            None => false,
        };
        if self.errors.len() != errors_before {
            return None;
        }
        let (from, until) = window.ok()?;
        Some(ListEntry {
            plate,
            color,
            from,
            until,
            gates,
            exempt_warnings: exempt,
            note: e.note.clone().unwrap_or_default(),
            source: "config".into(),
        })
    }
}

/// "国三", "国四": integrators write stages with Chinese numerals as often as with 国Ⅲ.
fn chinese_numeral_stage(t: &str) -> Option<u8> {
    const NUMERALS: [&str; 8] = ["零", "一", "二", "三", "四", "五", "六", "七"];
    let n = t.strip_prefix('国')?;
    NUMERALS
        .iter()
        .position(|x| *x == n)
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_level(v: &Value) -> Option<WarningLevel> {
    match v {
        Value::Integer(n) => u8::try_from(*n)
            .ok()
            .and_then(WarningLevel::from_platform_code),
        Value::String(s) => {
            let t = s.trim();
            WarningLevel::ALL
                .into_iter()
                .find(|l| {
                    l.name().eq_ignore_ascii_case(t)
                        || l.chinese() == t
                        || l.chinese().starts_with(t) && t.chars().count() == 1
                })
                .or_else(|| t.parse().ok().and_then(WarningLevel::from_platform_code))
        }
        _ => None,
    }
}

/// A value as the integrator wrote it, for messages.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn to_utc(dt: &Datetime) -> Result<DateTime<Utc>, String> {
    let (Some(date), Some(time)) = (dt.date, dt.time) else {
        return Err(format!(
            "`{dt}` is not a full date-time (date and time of day)"
        ));
    };
    let Some(offset) = dt.offset else {
        return Err(format!(
            "date-time `{dt}` has no UTC offset, so it could be read in any time zone"
        ));
    };
    let minutes = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i32::from(minutes),
    };
    let naive_date = NaiveDate::from_ymd_opt(
        i32::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    );
    let naive_time = NaiveTime::from_hms_nano_opt(
        u32::from(time.hour),
        u32::from(time.minute),
        u32::from(time.second.unwrap_or(0)),
        time.nanosecond.unwrap_or(0),
    );
    let tz = FixedOffset::east_opt(minutes * 60);
    match (naive_date, naive_time, tz) {
        (Some(d), Some(t), Some(tz)) => d
            .and_time(t)
            .and_local_timezone(tz)
            .single()
            .map(|x| x.with_timezone(&Utc))
            .ok_or_else(|| format!("`{dt}` is not a valid date-time")),
        _ => Err(format!("`{dt}` is not a valid date-time")),
    }
}
