//! Inspection mode (核查, regulatory-domain §7.3): what an inspector asks for, in one set.
//!
//! 1. A random sample of N passes of the period (seeded; the seed is in the result, so the
//!    same ledger and seed always draw the same rows) with their photos.
//! 2. Daily averages for chosen normal days and chosen warning days (by default every normal
//!    and every warning day of the period, from the `measure_change` events).
//! 3. Every pass-like event in a time window (denied attempts too: every vehicle seen on the
//!    video must be in the ledger), to hold against the gate video.
//! 4. A stage re-check list: vehicles that entered in the period whose stage deserves a
//!    second look (reasons in [`RecheckReason`]).

use super::params::{parse_days, parse_from, parse_to, period, Period};
use super::rng::SplitMix64;
use super::rows::{rows_for, PassRow};
use super::summary::{
    at_least, average, day_rows, is_new_energy, warning_days, DayAverage, DayRow,
};
use super::ReportError;
use crate::ledger::{db_time, LedgerReader};
use crate::vehicle::{EmissionStage, Fuel};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub const DEFAULT_SAMPLE: u32 = 10;
pub const MAX_SAMPLE: u32 = 200;
/// Longest video window, and most rows listed for it.
pub const MAX_WINDOW_HOURS: i64 = 24;
pub const MAX_WINDOW_ROWS: usize = 5_000;
/// Most vehicles on the re-check list (the total is reported).
pub const MAX_RECHECK: usize = 2_000;

/// `GET /api/v1/inspection` query.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct InspectionParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub day: Option<String>,
    pub month: Option<String>,
    /// Sample size N (default 10, at most 200).
    pub sample: Option<String>,
    /// Unsigned 64-bit seed; drawn from the clock when absent (and reported).
    pub seed: Option<String>,
    /// Comma-separated days or `a..b`; default: the period's days without a warning.
    pub normal_days: Option<String>,
    /// Default: the period's days with a yellow/orange/red warning in force.
    pub warning_days: Option<String>,
    pub window_from: Option<String>,
    pub window_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub seed: u64,
    /// Passes of the period the sample was drawn from.
    pub population: u64,
    pub sample: Vec<PassRow>,
    pub normal_days: Vec<DayRow>,
    pub normal_average: DayAverage,
    pub warning_days: Vec<DayRow>,
    pub warning_average: DayAverage,
    pub window: Option<Window>,
    pub recheck: Vec<RecheckRow>,
    /// Vehicles that qualified for the re-check list (it lists at most [`MAX_RECHECK`]).
    pub recheck_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Oldest first, as the video runs.
    pub passes: Vec<PassRow>,
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecheckReason {
    /// Not in the transport registry: the stage came from the platform or was unknown.
    NotRegistered,
    /// In the registry without a stage basis (排放阶段依据).
    BasisMissing,
    /// The basis says the stage was typed in by hand or told by the driver.
    BasisWeak,
    /// The pass snapshots of the period disagree with each other or with the registry now.
    StageChanged,
    /// A pass recorded stage X or none.
    StageUnknown,
    /// 国五 or below (not new-energy) entered on a warning day.
    LowStageOnWarningDay,
}

impl RecheckReason {
    pub fn chinese(self) -> &'static str {
        match self {
            RecheckReason::NotRegistered => "未登记(排放阶段来自平台或未知)",
            RecheckReason::BasisMissing => "排放阶段依据缺失",
            RecheckReason::BasisWeak => "排放阶段依据薄弱(人工录入/自述)",
            RecheckReason::StageChanged => "排放阶段前后不一致",
            RecheckReason::StageUnknown => "排放阶段未知",
            RecheckReason::LowStageOnWarningDay => "预警日国五及以下车辆进厂",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecheckRow {
    pub plate: String,
    pub color: String,
    pub reasons: Vec<RecheckReason>,
    pub reason_text: String,
    pub registry_stage: Option<String>,
    pub stage_basis: Option<String>,
    /// Distinct stage snapshots of the period's entries (`` = none recorded).
    pub stages_seen: Vec<String>,
    pub entries: u64,
    pub warning_day_entries: u64,
    pub last_seq: i64,
    pub last_at: DateTime<Utc>,
}

const WEAK_BASIS: &[&str] = &[
    "人工", "手工", "手动", "自述", "口述", "估计", "待核", "manual", "driver", "unknown", "未知",
];

pub fn build_inspection(
    reader: &LedgerReader,
    p: &InspectionParams,
) -> Result<Inspection, ReportError> {
    let per = period(
        p.from.as_deref(),
        p.to.as_deref(),
        p.day.as_deref(),
        p.month.as_deref(),
    )?;
    let text = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let n = match text(&p.sample) {
        None => DEFAULT_SAMPLE,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_SAMPLE).contains(n))
            .ok_or_else(|| {
                ReportError::bad(
                    "sample",
                    format!("`{s}` is not a whole number from 1 to {MAX_SAMPLE}"),
                )
            })?,
    };
    let seed = match text(&p.seed) {
        Some(s) => s.parse::<u64>().map_err(|_| {
            ReportError::bad("seed", format!("`{s}` is not an unsigned 64-bit number"))
        })?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    let window = match (text(&p.window_from), text(&p.window_to)) {
        (None, None) => None,
        (Some(a), Some(b)) => {
            let a = parse_from("window_from", &a)?;
            let b = parse_to("window_to", &b)?;
            if b <= a {
                return Err(ReportError::bad("window_to", "must be after `window_from`"));
            }
            if b - a > Duration::hours(MAX_WINDOW_HOURS) {
                return Err(ReportError::bad(
                    "window_to",
                    format!("a video window is at most {MAX_WINDOW_HOURS} hours"),
                ));
            }
            Some((a, b))
        }
        (Some(_), None) => {
            return Err(ReportError::bad("window_to", "required with `window_from`"))
        }
        (None, Some(_)) => {
            return Err(ReportError::bad("window_from", "required with `window_to`"))
        }
    };
    let all_days = per.days();
    let mut chosen_normal = text(&p.normal_days)
        .map(|s| parse_days("normal_days", &s))
        .transpose()?;
    let mut chosen_warning = text(&p.warning_days)
        .map(|s| parse_days("warning_days", &s))
        .transpose()?;
    for (f, v) in [
        ("normal_days", &chosen_normal),
        ("warning_days", &chosen_warning),
    ] {
        if v.as_ref().is_some_and(|d| d.len() > 62) {
            return Err(ReportError::bad(f, "at most 62 days"));
        }
    }
    // Warning levels for every day that may be listed.
    let mut span_days: Vec<NaiveDate> = all_days.clone();
    span_days.extend(chosen_normal.iter().flatten());
    span_days.extend(chosen_warning.iter().flatten());
    let lo = span_days.iter().min().copied().unwrap_or_default();
    let hi = span_days.iter().max().copied().unwrap_or_default();
    let warn = warning_days(
        reader,
        crate::ledger::local_day_start(lo),
        crate::ledger::local_day_start(hi) + Duration::days(1),
    )?;
    let normal = chosen_normal.take().unwrap_or_else(|| {
        all_days
            .iter()
            .filter(|d| !warn.contains_key(d))
            .copied()
            .collect()
    });
    let warning = chosen_warning.take().unwrap_or_else(|| {
        all_days
            .iter()
            .filter(|d| warn.contains_key(d))
            .copied()
            .collect()
    });
    let normal_days = day_rows(reader, &normal, &warn)?;
    let warning_days_rows = day_rows(reader, &warning, &warn)?;

    let (population, sample) = draw_sample(reader, per, n, seed)?;
    let window = window
        .map(|(a, b)| -> Result<Window, ReportError> {
            let mut stmt = reader.conn().prepare_cached(
                "SELECT seq FROM pass_index WHERE occurred_at >= ?1 AND occurred_at < ?2
                 ORDER BY occurred_at, seq LIMIT ?3",
            )?;
            let seqs: Vec<i64> = stmt
                .query_map(
                    rusqlite::params![db_time(a), db_time(b), (MAX_WINDOW_ROWS + 1) as i64],
                    |r| r.get(0),
                )?
                .collect::<Result<_, _>>()?;
            let truncated = seqs.len() > MAX_WINDOW_ROWS;
            Ok(Window {
                from: a,
                to: b,
                passes: rows_for(reader, &seqs[..seqs.len().min(MAX_WINDOW_ROWS)])?,
                truncated,
            })
        })
        .transpose()?;
    let (recheck, recheck_total) = recheck(reader, per, &warn)?;
    Ok(Inspection {
        from: per.from,
        to: per.to,
        generated_at: Utc::now(),
        seed,
        population,
        sample,
        normal_average: average(&normal_days.iter().collect::<Vec<_>>()),
        normal_days,
        warning_average: average(&warning_days_rows.iter().collect::<Vec<_>>()),
        warning_days: warning_days_rows,
        window,
        recheck,
        recheck_total,
    })
}

/// Partial Fisher–Yates over the period's pass seqs (ascending), so the draw depends only on
/// the seed and the ledger; the sample is listed in time order.
fn draw_sample(
    reader: &LedgerReader,
    per: Period,
    n: u32,
    seed: u64,
) -> Result<(u64, Vec<PassRow>), ReportError> {
    let mut stmt = reader.conn().prepare_cached(
        "SELECT seq FROM pass_index WHERE occurred_at >= ?1 AND occurred_at < ?2
           AND is_pass = 1 AND voided = 0 ORDER BY seq",
    )?;
    let mut seqs: Vec<i64> = stmt
        .query_map([db_time(per.from), db_time(per.to)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let population = seqs.len() as u64;
    let k = (n as usize).min(seqs.len());
    let mut rng = SplitMix64::new(seed);
    for i in 0..k {
        let j = i + rng.below((seqs.len() - i) as u64) as usize;
        seqs.swap(i, j);
    }
    seqs.truncate(k);
    let mut rows = rows_for(reader, &seqs)?;
    rows.sort_by_key(|r| (r.at, r.seq));
    Ok((population, rows))
}

struct Seen {
    stages: BTreeSet<String>,
    entries: u64,
    warning_entries: u64,
    low_on_warning: bool,
    unknown: bool,
    last_seq: i64,
    last_at: String,
}

fn recheck(
    reader: &LedgerReader,
    per: Period,
    warn: &BTreeMap<NaiveDate, String>,
) -> Result<(Vec<RecheckRow>, u64), ReportError> {
    let warn_days: BTreeSet<String> = warn
        .keys()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect();
    let mut seen: BTreeMap<(String, String), Seen> = BTreeMap::new();
    let mut stmt = reader.conn().prepare_cached(
        "SELECT plate, coalesce(color, ''), coalesce(stage, ''), coalesce(fuel, ''), day, seq, occurred_at
         FROM pass_index WHERE occurred_at >= ?1 AND occurred_at < ?2
           AND is_pass = 1 AND voided = 0 AND direction = 'in' AND coalesce(plate, '') <> ''
         ORDER BY seq",
    )?;
    let mut rows = stmt.query([db_time(per.from), db_time(per.to)])?;
    while let Some(r) = rows.next()? {
        let plate: String = r.get(0)?;
        let color: String = r.get(1)?;
        let stage: String = r.get(2)?;
        let fuel: String = r.get(3)?;
        let day: String = r.get(4)?;
        let s = seen.entry((plate, color)).or_insert_with(|| Seen {
            stages: BTreeSet::new(),
            entries: 0,
            warning_entries: 0,
            low_on_warning: false,
            unknown: false,
            last_seq: 0,
            last_at: String::new(),
        });
        let st = stage.parse::<EmissionStage>().ok();
        let fu = fuel.parse::<Fuel>().ok();
        s.entries += 1;
        s.unknown |= matches!(st, None | Some(EmissionStage::Unknown)) && !is_new_energy(st, fu);
        if warn_days.contains(&day) {
            s.warning_entries += 1;
            // 国五 and below, not new energy: the class emergency orders restrict.
            if !is_new_energy(st, fu) && !at_least(st, fu, 6) {
                s.low_on_warning = true;
            }
        }
        s.stages.insert(stage);
        s.last_seq = r.get(5)?;
        s.last_at = r.get(6)?;
    }
    let mut reg = reader.conn().prepare_cached(
        "SELECT stage, coalesce(stage_basis, '') FROM transport_vehicles WHERE plate = ?1 AND color = ?2",
    )?;
    let mut out = Vec::new();
    for ((plate, color), s) in seen {
        let registered: Option<(String, String)> = reg
            .query_row([&plate, &color], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let mut reasons = Vec::new();
        match &registered {
            None => reasons.push(RecheckReason::NotRegistered),
            Some((stage, basis)) => {
                let b = basis.trim().to_lowercase();
                if b.is_empty() {
                    reasons.push(RecheckReason::BasisMissing);
                } else if WEAK_BASIS.iter().any(|w| b.contains(w)) {
                    reasons.push(RecheckReason::BasisWeak);
                }
                if s.stages.iter().any(|x| x != stage) {
                    reasons.push(RecheckReason::StageChanged);
                }
            }
        }
        if registered.is_none() && s.stages.len() > 1 {
            reasons.push(RecheckReason::StageChanged);
        }
        if s.unknown {
            reasons.push(RecheckReason::StageUnknown);
        }
        if s.low_on_warning {
            reasons.push(RecheckReason::LowStageOnWarningDay);
        }
        if reasons.is_empty() {
            continue;
        }
        reasons.sort();
        out.push(RecheckRow {
            reason_text: reasons
                .iter()
                .map(|r| r.chinese())
                .collect::<Vec<_>>()
                .join("; "),
            plate,
            color,
            reasons,
            registry_stage: registered.as_ref().map(|r| r.0.clone()),
            stage_basis: registered.map(|r| r.1).filter(|b| !b.is_empty()),
            stages_seen: s.stages.into_iter().collect(),
            entries: s.entries,
            warning_day_entries: s.warning_entries,
            last_seq: s.last_seq,
            last_at: crate::ledger::parse_db_time(&s.last_at).unwrap_or_default(),
        });
    }
    // Most reasons first, then warning-day entries, then plate.
    out.sort_by(|a, b| {
        b.reasons
            .len()
            .cmp(&a.reasons.len())
            .then(b.warning_day_entries.cmp(&a.warning_day_entries))
            .then(a.plate.cmp(&b.plate))
    });
    let total = out.len() as u64;
    out.truncate(MAX_RECHECK);
    Ok((out, total))
}
