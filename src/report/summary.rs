//! The period report (day, month, any range of GMT+8 days). docs/reports.md defines every
//! figure; the definitions live in this file's doc comments too, next to the code.
//!
//! Inputs: `pass_index` (passes: barrier opened, not voided), `weighing_index` (truck net
//! masses with the stage of the pass they belong to), `transport_tonnage` events, the
//! `measure_change` events (warning days), the in-plant and non-road registries (their state
//! now) and the uplink state files (cumulative KPIs, not limited to the period).

use super::params::{Period, ReportParams};
use super::tonnage::{mode_chinese, mode_name, tonnage_between, TonnageRow};
use super::ReportError;
use crate::ledger::{db_time, local_day_start, site_zone, EventBody, LedgerReader, TransportMode};
use crate::vehicle::{EmissionStage, Fuel};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// First and last local day covered (`yyyy-MM-dd`).
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub days: u32,
    pub generated_at: DateTime<Utc>,
    pub passes: PassCounts,
    /// Emission-stage mix of entries (trips) and of the vehicles that entered.
    pub stage_mix: Vec<MixRow>,
    pub fuel_mix: Vec<MixRow>,
    /// 国五及以上 (incl. gas) or new-energy among transport entries, against A/B/C.
    pub transport_grade: GradeCheck,
    pub clean_transport: CleanTransport,
    /// In-plant vehicles and non-road machinery against the A/B requirement (registries now).
    pub fleet_shares: Vec<FleetShare>,
    pub daily: DailyVolumes,
    pub manual_releases: ManualReleases,
    pub uploads: Vec<UploadRow>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PassCounts {
    pub total: u64,
    pub entries: u64,
    pub exits: u64,
    /// Passes whose barrier was opened by a person or remotely (manual releases included).
    pub manual_or_remote: u64,
    pub by_gate: Vec<GateCount>,
    /// Local hour 0–23.
    pub by_hour: Vec<HourCount>,
    /// Denied attempts (未摆杆) in the period: not passes, counted for context.
    pub denied_attempts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateCount {
    pub gate: String,
    pub entries: u64,
    pub exits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HourCount {
    pub hour: u32,
    pub entries: u64,
    pub exits: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MixRow {
    /// Stage code (`0`–`7`, `D`, `X`, empty = not recorded) or fuel letter.
    pub code: String,
    pub label: String,
    pub trips: u64,
    pub trip_share: f64,
    pub vehicles: u64,
    pub vehicle_share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradeCheck {
    pub rule: &'static str,
    pub trips: u64,
    pub compliant_trips: u64,
    pub trip_share: Option<f64>,
    pub vehicles: u64,
    pub compliant_vehicles: u64,
    pub vehicle_share: Option<f64>,
    /// Best grade whose threshold the trip share meets: A (100 %), B (≥ 80 %), C (≥ 50 %), or `-`.
    pub grade_by_trips: &'static str,
    pub grade_by_vehicles: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CleanTransport {
    pub formula: &'static str,
    pub formula_trips: &'static str,
    pub definitions: &'static str,
    /// All cargo together.
    pub total: CleanRow,
    pub by_cargo: Vec<CleanRow>,
    /// The hand-entered rail/water/belt/pipeline entries that went in (inputs).
    pub other_modes: Vec<TonnageRow>,
}

/// One cargo (or all). Tonnes are exact sums of grams ÷ 10^6.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanRow {
    pub cargo: String,
    /// Weighed truck trips (one per weighing with a net mass).
    pub truck_trips: u64,
    pub new_energy_trips: u64,
    pub guo6_trips: u64,
    pub other_trips: u64,
    pub truck_t: f64,
    pub new_energy_t: f64,
    pub guo6_t: f64,
    pub other_truck_t: f64,
    pub rail_t: f64,
    pub water_t: f64,
    pub belt_t: f64,
    pub pipeline_t: f64,
    /// rail + water + belt + pipeline.
    pub clean_modes_t: f64,
    /// clean modes + new-energy trucks.
    pub clean_t: f64,
    /// truck + clean modes.
    pub total_t: f64,
    /// clean_t ÷ total_t.
    pub ratio_tonnage: Option<f64>,
    /// (clean_t + guo6_t) ÷ total_t: clean modes or the 国六/new-energy fallback.
    pub ratio_tonnage_incl_guo6: Option<f64>,
    /// new_energy_trips ÷ truck_trips.
    pub ratio_trips: Option<f64>,
    pub guo6_trip_share: Option<f64>,
    #[serde(skip)]
    grams: [i64; 8],
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetShare {
    /// `in_plant` or `non_road`.
    pub registry: &'static str,
    pub label: &'static str,
    pub rule: &'static str,
    pub total: u64,
    pub compliant: u64,
    pub share: Option<f64>,
    /// A and B both require 100 % (regulatory-domain §5.3).
    pub meets_a: bool,
    pub meets_b: bool,
    pub by_stage: Vec<StageCount>,
    /// Registration codes of the ones that fall short.
    pub non_compliant: Vec<String>,
    /// The registry as it stood at this instant: the end of the period (or now, for a period
    /// still running), rebuilt from the `registry_change` events.
    pub as_of: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageCount {
    pub code: String,
    pub label: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DailyVolumes {
    pub days: Vec<DayRow>,
    pub normal: DayAverage,
    pub warning: DayAverage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DayRow {
    pub day: NaiveDate,
    /// Highest warning level in force during the day (`yellow`/`orange`/`red`), if any.
    pub warning: Option<String>,
    pub entries: u64,
    pub exits: u64,
    /// Distinct plate + colour with a pass that day (each unplated pass counts once).
    pub vehicles: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DayAverage {
    pub days: u32,
    pub avg_entries: Option<f64>,
    pub avg_exits: Option<f64>,
    pub avg_vehicles: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ManualReleases {
    pub total: u64,
    /// Releases that named no plate (not a pass of the ledger).
    pub without_plate: u64,
    pub by_operator: Vec<NamedCount>,
    pub by_reason: Vec<NamedCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedCount {
    pub name: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UploadRow {
    pub platform: String,
    pub captured: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub backlog: u64,
    pub completeness: f64,
    pub last_error: Option<String>,
    /// The state file could not be read.
    pub error: Option<String>,
}

pub const CLEAN_FORMULA: &str = "清洁运输比例(按运量) = (铁路 + 水路 + 皮带 + 管道 + 新能源货车) 吨 ÷ (货车 + 铁路 + 水路 + 皮带 + 管道) 吨";
pub const CLEAN_FORMULA_TRIPS: &str = "清洁运输比例(按车次) = 新能源货车过磅车次 ÷ 货车过磅车次";
pub const CLEAN_DEFINITIONS: &str = "新能源 = 排放阶段 D 或燃料 电/氢/太阳能; 国六 = 排放阶段 6 或 7 的燃油/燃气车, 单列(达到替代要求, 但不是清洁运输方式); 货车运量 = 地磅净重 (过磅记录与补录净重), 排放阶段取该车次通行记录的快照";

/// Zero tailpipe emissions: stage D or an electric/hydrogen/solar fuel.
pub fn is_new_energy(stage: Option<EmissionStage>, fuel: Option<Fuel>) -> bool {
    stage == Some(EmissionStage::Electric) || fuel.is_some_and(Fuel::is_zero_emission)
}

/// Stage at least `min` (国 n) or new energy.
pub fn at_least(stage: Option<EmissionStage>, fuel: Option<Fuel>, min: u8) -> bool {
    is_new_energy(stage, fuel)
        || stage
            .and_then(EmissionStage::number)
            .is_some_and(|n| n >= min)
}

fn stage_of(code: &str) -> Option<EmissionStage> {
    code.parse().ok()
}

fn fuel_of(code: &str) -> Option<Fuel> {
    code.parse().ok()
}

fn stage_label(code: &str) -> String {
    if code.is_empty() {
        "未录入".into()
    } else {
        stage_of(code).map_or_else(|| code.to_string(), EmissionStage::chinese)
    }
}

fn fuel_label(code: &str) -> String {
    if code.is_empty() {
        "未录入".into()
    } else {
        fuel_of(code).map_or_else(|| code.to_string(), |f| f.chinese().to_string())
    }
}

fn share(n: u64, d: u64) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

fn grade(share: Option<f64>) -> &'static str {
    match share {
        Some(s) if s >= 1.0 => "A",
        Some(s) if s >= 0.8 => "B",
        Some(s) if s >= 0.5 => "C",
        _ => "-",
    }
}

pub fn build_report(reader: &LedgerReader, p: &ReportParams) -> Result<Report, ReportError> {
    let period = p.period()?;
    build_report_for(reader, period)
}

/// [`build_report`] for a checked period.
pub fn build_report_for(reader: &LedgerReader, period: Period) -> Result<Report, ReportError> {
    // Reading a month of the index through mmap saves a copy per page; failure is harmless.
    let _ = reader.conn().pragma_update(None, "mmap_size", 1i64 << 30);
    let days = period.days();
    let source = if whole_days(period, &days) {
        Source::Aggregates
    } else {
        Source::Rows
    };
    build_report_from(reader, period, &days, source)
}

/// Where the pass and weighing figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The per-day aggregate tables (a period of whole local days).
    Aggregates,
    /// The `pass_index` / `weighing_index` rows (any period; also the tests' reference).
    Rows,
}

/// Whether `period` is exactly the local days `days` (then the per-day aggregates cover it).
fn whole_days(period: Period, days: &[NaiveDate]) -> bool {
    match (days.first(), days.last()) {
        (Some(first), Some(last)) => {
            period.from == local_day_start(*first)
                && period.to == local_day_start(*last) + Duration::days(1)
        }
        _ => false,
    }
}

fn build_report_from(
    reader: &LedgerReader,
    period: Period,
    days: &[NaiveDate],
    source: Source,
) -> Result<Report, ReportError> {
    // One read snapshot for every section (the aggregates are several queries): a pass
    // committed meanwhile is in all of them or in none. Dropping it ends the read.
    let _snapshot = if reader.conn().is_autocommit() {
        Some(reader.conn().unchecked_transaction()?)
    } else {
        None
    };
    let warn = warning_days(reader, period.from, period.to)?;
    let (scan, clean) = match source {
        Source::Aggregates => (
            scan_aggregates(reader, days)?,
            clean_transport_aggregates(reader, period, days)?,
        ),
        Source::Rows => (
            scan_passes(reader, period, days)?,
            clean_transport(reader, period)?,
        ),
    };
    let daily = daily_volumes(days, &scan.daily, &warn);
    Ok(Report {
        from: period.from,
        to: period.to,
        first_day: days.first().copied().unwrap_or_default(),
        last_day: days.last().copied().unwrap_or_default(),
        days: days.len() as u32,
        generated_at: Utc::now(),
        passes: scan.counts,
        stage_mix: scan.stage_mix,
        fuel_mix: scan.fuel_mix,
        transport_grade: scan.grade,
        clean_transport: clean,
        fleet_shares: fleet_shares(reader, period.to.min(Utc::now()))?,
        daily,
        manual_releases: manual_releases(reader, period)?,
        uploads: uploads(reader),
    })
}

#[derive(Default, Clone, Copy)]
pub(crate) struct DayTally {
    pub entries: u64,
    pub exits: u64,
    pub vehicles: u64,
}

struct Scan {
    counts: PassCounts,
    stage_mix: Vec<MixRow>,
    fuel_mix: Vec<MixRow>,
    grade: GradeCheck,
    daily: Vec<DayTally>,
}

/// FNV-1a: plate keys are short and trusted (our own index), so the std SipHash's DoS
/// resistance is not needed and its cost shows over a million rows.
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Index of `key` in a short list, appended when new (gates, stage/fuel pairs: a handful).
fn intern<T>(list: &mut Vec<(String, T)>, key: &str, new: impl FnOnce() -> T) -> usize {
    match list.iter().position(|(k, _)| k == key) {
        Some(i) => i,
        None => {
            list.push((key.to_string(), new()));
            list.len() - 1
        }
    }
}

/// One pass over the period's rows of `pass_index`; everything keyed by small integers so a
/// month of a million passes stays well under a second.
fn scan_passes(
    reader: &LedgerReader,
    period: Period,
    days: &[NaiveDate],
) -> Result<Scan, ReportError> {
    let day_names: Vec<String> = days
        .iter()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect();
    let mut counts = PassCounts::default();
    // gate → (entries, exits)
    let mut gates: Vec<(String, (u64, u64))> = Vec::new();
    let mut hours = [(0u64, 0u64); 24];
    let mut vehicles: FnvMap<String, u32> = FnvMap::default();
    // "stage|fuel" → (entry trips, compliant)
    let mut pairs: Vec<(String, (u64, bool))> = Vec::new();
    // Per vehicle: the pair of its last entry and that entry's time (text orders as time).
    let mut last_entry: Vec<Option<(usize, String)>> = Vec::new();
    // Per vehicle: a bit per day it passed.
    let mut seen_days: Vec<Vec<u64>> = Vec::new();
    let words = days.len() / 64 + 1;
    let mut daily = vec![DayTally::default(); days.len()];
    let mut unplated = vec![0u64; days.len()];
    let mut key = String::new();
    let mut last_day: Option<(usize, usize)> = None;
    let conn = reader.conn();
    // Rows come in seq order, which is time order except for backfills; nothing below depends
    // on the order except "last entry", which compares the times.
    let (lo, hi): (Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT min(seq), max(seq) FROM pass_index WHERE occurred_at >= ?1 AND occurred_at < ?2",
        )?
        .query_row([db_time(period.from), db_time(period.to)], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let mut stmt = conn.prepare_cached(
        "SELECT day, hour, direction, gate, plate, color, stage, fuel, barrier, kind,
                is_pass, voided, decision, occurred_at
         FROM pass_index WHERE seq >= ?3 AND seq <= ?4
           AND +occurred_at >= ?1 AND +occurred_at < ?2",
    )?;
    let mut rows = stmt.query(rusqlite::params![
        db_time(period.from),
        db_time(period.to),
        lo.unwrap_or(1),
        hi.unwrap_or(0)
    ])?;
    while let Some(r) = rows.next()? {
        if r.get::<_, i64>(11)? != 0 {
            continue;
        }
        if r.get::<_, i64>(10)? == 0 {
            // Not a pass: a denied attempt (未摆杆) or a release that named no plate.
            if r.get_ref(12)?.as_str_or_null()? == Some("deny") {
                counts.denied_attempts += 1;
            }
            continue;
        }
        let day = r.get_ref(0)?.as_str().unwrap_or("");
        let hour = r.get::<_, i64>(1)?.clamp(0, 23) as usize;
        let entry = r.get_ref(2)?.as_str_or_null()?.unwrap_or("") == "in";
        let gate = r.get_ref(3)?.as_str_or_null()?.unwrap_or("");
        let plate = r.get_ref(4)?.as_str_or_null()?.unwrap_or("");
        let color = r.get_ref(5)?.as_str_or_null()?.unwrap_or("");
        let barrier = r.get_ref(8)?.as_str_or_null()?.unwrap_or("");
        let kind = r.get_ref(9)?.as_str()?;
        counts.total += 1;
        if barrier != "auto" || kind == "manual_release" {
            counts.manual_or_remote += 1;
        }
        let g = intern(&mut gates, gate, || (0, 0));
        let d = match last_day {
            Some((name, i)) if day_names.get(name).is_some_and(|n| n == day) => Some(i),
            _ => {
                let i = day_names.iter().position(|n| n == day);
                last_day = i.map(|i| (i, i));
                i
            }
        };
        if entry {
            counts.entries += 1;
            hours[hour].0 += 1;
            gates[g].1 .0 += 1;
        } else {
            counts.exits += 1;
            hours[hour].1 += 1;
            gates[g].1 .1 += 1;
        }
        let vid = if plate.trim().is_empty() {
            None
        } else {
            key.clear();
            key.push_str(plate);
            key.push('|');
            key.push_str(color);
            Some(match vehicles.get(key.as_str()) {
                Some(v) => *v as usize,
                None => {
                    let n = last_entry.len();
                    vehicles.insert(key.clone(), n as u32);
                    last_entry.push(None);
                    seen_days.push(vec![0; words]);
                    n
                }
            })
        };
        if let Some(d) = d {
            if entry {
                daily[d].entries += 1;
            } else {
                daily[d].exits += 1;
            }
            match vid {
                Some(v) => {
                    let w = &mut seen_days[v][d / 64];
                    if *w & (1 << (d % 64)) == 0 {
                        *w |= 1 << (d % 64);
                        daily[d].vehicles += 1;
                    }
                }
                None => unplated[d] += 1,
            }
        }
        if entry {
            let stage = r.get_ref(6)?.as_str_or_null()?.unwrap_or("");
            let fuel = r.get_ref(7)?.as_str_or_null()?.unwrap_or("");
            key.clear();
            key.push_str(stage);
            key.push('|');
            key.push_str(fuel);
            let p = intern(&mut pairs, &key, || {
                (0, at_least(stage_of(stage), fuel_of(fuel), 5))
            });
            pairs[p].1 .0 += 1;
            if let Some(v) = vid {
                let at = r.get_ref(13)?.as_str()?;
                match &mut last_entry[v] {
                    Some((pair, t)) => {
                        if at >= t.as_str() {
                            *pair = p;
                            t.clear();
                            t.push_str(at);
                        }
                    }
                    slot => *slot = Some((p, at.to_string())),
                }
            }
        }
    }
    let last_pairs: Vec<usize> = last_entry.iter().flatten().map(|(p, _)| *p).collect();
    Ok(finish_scan(
        counts,
        gates,
        hours,
        &pairs,
        &last_pairs,
        daily,
        &unplated,
    ))
}

/// Per (stage|fuel) pair: entry trips and whether it meets 国五+ or new energy.
type Pairs = Vec<(String, (u64, bool))>;

/// The figures of a scan from its tallies (shared by the row and the aggregate source).
/// `last_pairs`: for each vehicle that entered, the pair of its last entry.
fn finish_scan(
    mut counts: PassCounts,
    mut gates: Vec<(String, (u64, u64))>,
    hours: [(u64, u64); 24],
    pairs: &Pairs,
    last_pairs: &[usize],
    mut daily: Vec<DayTally>,
    unplated: &[u64],
) -> Scan {
    for (i, t) in daily.iter_mut().enumerate() {
        t.vehicles += unplated[i];
    }
    gates.sort_by(|a, b| a.0.cmp(&b.0));
    let split = |pair: &str| {
        let (s, f) = pair.split_once('|').unwrap_or((pair, ""));
        (s.to_string(), f.to_string())
    };
    let mut stage_trips: BTreeMap<String, u64> = BTreeMap::new();
    let mut fuel_trips: BTreeMap<String, u64> = BTreeMap::new();
    let mut compliant_trips = 0u64;
    for (k, (n, ok)) in pairs {
        let (s, f) = split(k);
        *stage_trips.entry(s).or_default() += n;
        *fuel_trips.entry(f).or_default() += n;
        if *ok {
            compliant_trips += n;
        }
    }
    counts.by_gate = gates
        .into_iter()
        .map(|(gate, (entries, exits))| GateCount {
            gate,
            entries,
            exits,
        })
        .collect();
    counts.by_hour = hours
        .iter()
        .enumerate()
        .map(|(h, (i, o))| HourCount {
            hour: h as u32,
            entries: *i,
            exits: *o,
        })
        .collect();
    let mut stage_veh: BTreeMap<String, u64> = BTreeMap::new();
    let mut fuel_veh: BTreeMap<String, u64> = BTreeMap::new();
    let mut compliant_veh = 0u64;
    let mut entered = 0u64;
    for p in last_pairs {
        let (k, (_, ok)) = &pairs[*p];
        let (s, f) = split(k);
        *stage_veh.entry(s).or_default() += 1;
        *fuel_veh.entry(f).or_default() += 1;
        entered += 1;
        if *ok {
            compliant_veh += 1;
        }
    }
    let mix =
        |trips: &BTreeMap<String, u64>, veh: &BTreeMap<String, u64>, label: fn(&str) -> String| {
            let mut codes: Vec<&String> = trips.keys().chain(veh.keys()).collect();
            codes.sort();
            codes.dedup();
            codes
                .into_iter()
                .map(|c| {
                    let t = trips.get(c).copied().unwrap_or(0);
                    let v = veh.get(c).copied().unwrap_or(0);
                    MixRow {
                        code: c.clone(),
                        label: label(c),
                        trips: t,
                        trip_share: share(t, counts.entries).unwrap_or(0.0),
                        vehicles: v,
                        vehicle_share: share(v, entered).unwrap_or(0.0),
                    }
                })
                .collect::<Vec<_>>()
        };
    let stage_mix = mix(&stage_trips, &stage_veh, stage_label);
    let fuel_mix = mix(&fuel_trips, &fuel_veh, fuel_label);
    let trip_share = share(compliant_trips, counts.entries);
    let vehicle_share = share(compliant_veh, entered);
    Scan {
        grade: GradeCheck {
            rule: "国五及以上(含燃气)或新能源; A = 100%, B ≥ 80%, C ≥ 50%",
            trips: counts.entries,
            compliant_trips,
            trip_share,
            vehicles: entered,
            compliant_vehicles: compliant_veh,
            vehicle_share,
            grade_by_trips: grade(trip_share),
            grade_by_vehicles: grade(vehicle_share),
        },
        counts,
        stage_mix,
        fuel_mix,
        daily,
    }
}

/// Index of a day name in the period's days; rows come grouped by day, so the last answer is
/// tried first.
struct DayCursor<'a> {
    names: &'a [String],
    last: Option<usize>,
}

impl DayCursor<'_> {
    fn index(&mut self, day: &str) -> Option<usize> {
        if let Some(i) = self.last {
            if self.names[i] == day {
                return Some(i);
            }
        }
        self.last = self.names.iter().position(|n| n == day);
        self.last
    }
}

fn day_names(days: &[NaiveDate]) -> Vec<String> {
    days.iter()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect()
}

/// [`scan_passes`] for whole local days, from `pass_day_counts` and `pass_day_vehicles`:
/// a month is a row per day × hour × gate × direction × stage/fuel that occurred and one per
/// vehicle per day it passed, instead of one per pass.
fn scan_aggregates(reader: &LedgerReader, days: &[NaiveDate]) -> Result<Scan, ReportError> {
    let names = day_names(days);
    let (Some(first), Some(last)) = (names.first().cloned(), names.last().cloned()) else {
        return Ok(finish_scan(
            PassCounts::default(),
            Vec::new(),
            [(0, 0); 24],
            &Vec::new(),
            &[],
            Vec::new(),
            &[],
        ));
    };
    let mut cursor = DayCursor {
        names: &names,
        last: None,
    };
    let mut counts = PassCounts::default();
    let mut gates: Vec<(String, (u64, u64))> = Vec::new();
    let mut hours = [(0u64, 0u64); 24];
    let mut pairs: Pairs = Vec::new();
    let mut daily = vec![DayTally::default(); days.len()];
    let mut unplated = vec![0u64; days.len()];
    let mut key = String::new();
    let conn = reader.conn();
    let mut stmt = conn.prepare_cached(
        "SELECT day, hour, gate, entry, manual, stage, fuel, passes, denied
         FROM pass_day_counts WHERE day >= ?1 AND day <= ?2",
    )?;
    let mut rows = stmt.query([&first, &last])?;
    while let Some(r) = rows.next()? {
        counts.denied_attempts += r.get::<_, i64>(8)?.max(0) as u64;
        let n = r.get::<_, i64>(7)?;
        if n <= 0 {
            continue;
        }
        let n = n as u64;
        let day = r.get_ref(0)?.as_str()?;
        let hour = r.get::<_, i64>(1)?.clamp(0, 23) as usize;
        let gate = r.get_ref(2)?.as_str()?;
        let entry = r.get::<_, i64>(3)? != 0;
        counts.total += n;
        if r.get::<_, i64>(4)? != 0 {
            counts.manual_or_remote += n;
        }
        let g = intern(&mut gates, gate, || (0, 0));
        let d = cursor.index(day);
        if entry {
            counts.entries += n;
            hours[hour].0 += n;
            gates[g].1 .0 += n;
            if let Some(d) = d {
                daily[d].entries += n;
            }
            let stage = r.get_ref(5)?.as_str()?;
            let fuel = r.get_ref(6)?.as_str()?;
            key.clear();
            key.push_str(stage);
            key.push('|');
            key.push_str(fuel);
            let p = intern(&mut pairs, &key, || {
                (0, at_least(stage_of(stage), fuel_of(fuel), 5))
            });
            pairs[p].1 .0 += n;
        } else {
            counts.exits += n;
            hours[hour].1 += n;
            gates[g].1 .1 += n;
            if let Some(d) = d {
                daily[d].exits += n;
            }
        }
    }
    // Per vehicle (plate|colour, as the row scan keys it): its last entry in the period, as
    // (pair, time, seq); a later time wins, then a later seq.
    let mut vehicles: FnvMap<String, u32> = FnvMap::default();
    let mut last_entry: Vec<(usize, String, i64)> = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT day, plate, color, passes, last_in_at, last_in_seq, last_in_stage, last_in_fuel
         FROM pass_day_vehicles WHERE day >= ?1 AND day <= ?2",
    )?;
    let mut rows = stmt.query([&first, &last])?;
    while let Some(r) = rows.next()? {
        let d = cursor.index(r.get_ref(0)?.as_str()?);
        let plate = r.get_ref(1)?.as_str()?;
        if plate.trim().is_empty() {
            // Each unplated pass counts as a vehicle of its day.
            if let Some(d) = d {
                unplated[d] += r.get::<_, i64>(3)?.max(0) as u64;
            }
            continue;
        }
        if let Some(d) = d {
            daily[d].vehicles += 1;
        }
        let Some(at) = r.get_ref(4)?.as_str_or_null()? else {
            continue;
        };
        let seq: i64 = r.get(5)?;
        let stage = r.get_ref(6)?.as_str_or_null()?.unwrap_or("");
        let fuel = r.get_ref(7)?.as_str_or_null()?.unwrap_or("");
        key.clear();
        key.push_str(plate);
        key.push('|');
        key.push_str(r.get_ref(2)?.as_str()?);
        let slot = match vehicles.get(key.as_str()) {
            Some(v) => {
                let cur = &last_entry[*v as usize];
                if (at, seq) < (cur.1.as_str(), cur.2) {
                    continue;
                }
                *v as usize
            }
            None => {
                vehicles.insert(key.clone(), last_entry.len() as u32);
                last_entry.push((0, String::new(), 0));
                last_entry.len() - 1
            }
        };
        key.clear();
        key.push_str(stage);
        key.push('|');
        key.push_str(fuel);
        let p = intern(&mut pairs, &key, || {
            (0, at_least(stage_of(stage), fuel_of(fuel), 5))
        });
        let cur = &mut last_entry[slot];
        cur.0 = p;
        cur.1.clear();
        cur.1.push_str(at);
        cur.2 = seq;
    }
    let last_pairs: Vec<usize> = last_entry.iter().map(|(p, _, _)| *p).collect();
    Ok(finish_scan(
        counts,
        gates,
        hours,
        &pairs,
        &last_pairs,
        daily,
        &unplated,
    ))
}

fn bump(m: &mut BTreeMap<String, u64>, k: &str) {
    match m.get_mut(k) {
        Some(n) => *n += 1,
        None => {
            m.insert(k.to_string(), 1);
        }
    }
}

const TRUCK_NE: usize = 0;
const TRUCK_G6: usize = 1;
const TRUCK_OTHER: usize = 2;
fn mode_slot(m: TransportMode) -> usize {
    match m {
        TransportMode::Rail => 3,
        TransportMode::Water => 4,
        TransportMode::Belt => 5,
        TransportMode::Pipeline => 6,
    }
}

impl CleanRow {
    fn new(cargo: &str) -> CleanRow {
        CleanRow {
            cargo: cargo.to_string(),
            ..Default::default()
        }
    }

    fn add_truck(&mut self, grams: i64, stage: Option<EmissionStage>, fuel: Option<Fuel>) {
        self.add_trucks(1, grams, stage, fuel);
    }

    /// `trips` weighed trips of one stage and fuel, `grams` net together.
    fn add_trucks(
        &mut self,
        trips: u64,
        grams: i64,
        stage: Option<EmissionStage>,
        fuel: Option<Fuel>,
    ) {
        self.truck_trips += trips;
        let slot = if is_new_energy(stage, fuel) {
            self.new_energy_trips += trips;
            TRUCK_NE
        } else if stage
            .and_then(EmissionStage::number)
            .is_some_and(|n| n >= 6)
        {
            self.guo6_trips += trips;
            TRUCK_G6
        } else {
            self.other_trips += trips;
            TRUCK_OTHER
        };
        self.grams[slot] += grams;
    }

    fn merge(&mut self, o: &CleanRow) {
        self.truck_trips += o.truck_trips;
        self.new_energy_trips += o.new_energy_trips;
        self.guo6_trips += o.guo6_trips;
        self.other_trips += o.other_trips;
        for (a, b) in self.grams.iter_mut().zip(o.grams) {
            *a += b;
        }
    }

    /// Tonnes and ratios from the exact gram sums.
    fn finish(&mut self) {
        let t = |g: i64| g as f64 / 1e6;
        let g = self.grams;
        let truck = g[TRUCK_NE] + g[TRUCK_G6] + g[TRUCK_OTHER];
        let modes = g[3] + g[4] + g[5] + g[6];
        let clean = modes + g[TRUCK_NE];
        let total = truck + modes;
        self.truck_t = t(truck);
        self.new_energy_t = t(g[TRUCK_NE]);
        self.guo6_t = t(g[TRUCK_G6]);
        self.other_truck_t = t(g[TRUCK_OTHER]);
        self.rail_t = t(g[3]);
        self.water_t = t(g[4]);
        self.belt_t = t(g[5]);
        self.pipeline_t = t(g[6]);
        self.clean_modes_t = t(modes);
        self.clean_t = t(clean);
        self.total_t = t(total);
        self.ratio_tonnage = (total > 0).then(|| clean as f64 / total as f64);
        self.ratio_tonnage_incl_guo6 =
            (total > 0).then(|| (clean + g[TRUCK_G6]) as f64 / total as f64);
        self.ratio_trips = share(self.new_energy_trips, self.truck_trips);
        self.guo6_trip_share = share(self.guo6_trips, self.truck_trips);
    }
}

/// Cargo name used when a weighing names none.
pub const NO_CARGO: &str = "未填写货物";

fn clean_transport(reader: &LedgerReader, period: Period) -> Result<CleanTransport, ReportError> {
    let mut by: BTreeMap<String, CleanRow> = BTreeMap::new();
    let mut stmt = reader.conn().prepare_cached(
        "SELECT cargo, net_g, stage, fuel FROM weighing_index
         WHERE occurred_at >= ?1 AND occurred_at < ?2 AND voided = 0 AND net_g IS NOT NULL",
    )?;
    let mut rows = stmt.query([db_time(period.from), db_time(period.to)])?;
    while let Some(r) = rows.next()? {
        let cargo = r
            .get_ref(0)?
            .as_str_or_null()?
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .unwrap_or(NO_CARGO);
        let grams: i64 = r.get(1)?;
        let stage = r.get_ref(2)?.as_str_or_null()?.and_then(stage_of);
        let fuel = r.get_ref(3)?.as_str_or_null()?.and_then(fuel_of);
        by.entry(cargo.to_string())
            .or_insert_with(|| CleanRow::new(cargo))
            .add_truck(grams, stage, fuel);
    }
    clean_transport_finish(reader, period, by)
}

/// [`clean_transport`] for whole local days, from `weighing_day_totals`.
fn clean_transport_aggregates(
    reader: &LedgerReader,
    period: Period,
    days: &[NaiveDate],
) -> Result<CleanTransport, ReportError> {
    let mut by: BTreeMap<String, CleanRow> = BTreeMap::new();
    let names = day_names(days);
    if let (Some(first), Some(last)) = (names.first(), names.last()) {
        let mut stmt = reader.conn().prepare_cached(
            "SELECT cargo, stage, fuel, sum(trips), sum(grams) FROM weighing_day_totals
             WHERE day >= ?1 AND day <= ?2 GROUP BY cargo, stage, fuel",
        )?;
        let mut rows = stmt.query([first, last])?;
        while let Some(r) = rows.next()? {
            let cargo = r.get_ref(0)?.as_str()?.trim();
            let cargo = if cargo.is_empty() { NO_CARGO } else { cargo };
            let stage = stage_of(r.get_ref(1)?.as_str()?);
            let fuel = fuel_of(r.get_ref(2)?.as_str()?);
            let trips = r.get::<_, i64>(3)?.max(0) as u64;
            let grams: i64 = r.get(4)?;
            match by.get_mut(cargo) {
                Some(row) => row.add_trucks(trips, grams, stage, fuel),
                None => {
                    let mut row = CleanRow::new(cargo);
                    row.add_trucks(trips, grams, stage, fuel);
                    by.insert(cargo.to_string(), row);
                }
            }
        }
    }
    clean_transport_finish(reader, period, by)
}

/// Add the hand-entered tonnage to the truck rows and work out the ratios.
fn clean_transport_finish(
    reader: &LedgerReader,
    period: Period,
    mut by: BTreeMap<String, CleanRow>,
) -> Result<CleanTransport, ReportError> {
    let other_modes = tonnage_between(reader, period.from, period.to)?;
    for t in &other_modes {
        let row = by
            .entry(t.cargo.clone())
            .or_insert_with(|| CleanRow::new(&t.cargo));
        row.grams[mode_slot(t.mode)] += t.grams;
    }
    let mut total = CleanRow::new("合计");
    for r in by.values() {
        total.merge(r);
    }
    total.finish();
    let by_cargo = by
        .into_values()
        .map(|mut r| {
            r.finish();
            r
        })
        .collect();
    Ok(CleanTransport {
        formula: CLEAN_FORMULA,
        formula_trips: CLEAN_FORMULA_TRIPS,
        definitions: CLEAN_DEFINITIONS,
        total,
        by_cargo,
        other_modes,
    })
}

/// Warning level names that make a day a warning day (blue is advisory and does not).
pub fn warning_level(s: &str) -> Option<&'static str> {
    match s.trim() {
        "yellow" | "黄色" | "黄" | "1" | "Ⅲ级" | "III" => Some("yellow"),
        "orange" | "橙色" | "橙" | "2" | "Ⅱ级" | "II" => Some("orange"),
        "red" | "红色" | "红" | "3" | "Ⅰ级" | "I" => Some("red"),
        _ => None,
    }
}

fn level_rank(l: &str) -> u8 {
    match l {
        "yellow" => 1,
        "orange" => 2,
        "red" => 3,
        _ => 0,
    }
}

/// A measure in force: start, announced end, level.
type OpenSpan = (DateTime<Utc>, Option<DateTime<Utc>>, &'static str);

/// Local days in `[from, to)` with a yellow/orange/red measure in force, with the highest level.
///
/// A `measure_change` with `active: true` opens its measure from `starts_at` (else the event
/// time) to `ends_at` (else until the next change of the same measure, else open-ended); one
/// with `active: false` ends it at `ends_at`/`starts_at`/the event time.
pub fn warning_days(
    reader: &LedgerReader,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<BTreeMap<NaiveDate, String>, ReportError> {
    let origin = DateTime::<Utc>::MIN_UTC;
    let events = reader.events_between(&["measure_change"], origin, to)?;
    let mut open: HashMap<String, OpenSpan> = HashMap::new();
    let mut spans: Vec<(DateTime<Utc>, DateTime<Utc>, &'static str)> = Vec::new();
    let far = to + Duration::days(1);
    for e in &events {
        let EventBody::MeasureChange(m) = &e.body else {
            continue;
        };
        let at = m.starts_at.unwrap_or(e.occurred_at);
        if let Some((s, end, l)) = open.remove(&m.measure) {
            // A new activation replaces the open span; a deactivation ends it.
            let stop = if m.active {
                at
            } else {
                m.ends_at.or(m.starts_at).unwrap_or(e.occurred_at)
            };
            spans.push((s, end.map_or(stop, |x| x.min(stop)), l));
        }
        if m.active {
            if let Some(level) = m.level.as_deref().and_then(warning_level) {
                open.insert(m.measure.clone(), (at, m.ends_at, level));
            }
        }
    }
    for (_, (s, end, l)) in open {
        spans.push((s, end.unwrap_or(far), l));
    }
    let mut out: BTreeMap<NaiveDate, String> = BTreeMap::new();
    let zone = site_zone();
    let first = from.with_timezone(&zone).date_naive();
    let last = (to - Duration::microseconds(1))
        .with_timezone(&zone)
        .date_naive();
    for d in first.iter_days().take_while(|d| *d <= last) {
        let (ds, de) = (local_day_start(d), local_day_start(d) + Duration::days(1));
        for (s, e, l) in &spans {
            if *s < de && ds < *e {
                let better = out
                    .get(&d)
                    .map_or(true, |cur| level_rank(l) > level_rank(cur));
                if better {
                    out.insert(d, (*l).to_string());
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn average(rows: &[&DayRow]) -> DayAverage {
    let n = rows.len() as u64;
    let sum = |f: fn(&DayRow) -> u64| share(rows.iter().map(|r| f(r)).sum(), n);
    DayAverage {
        days: n as u32,
        avg_entries: sum(|r| r.entries),
        avg_exits: sum(|r| r.exits),
        avg_vehicles: sum(|r| r.vehicles),
    }
}

fn daily_volumes(
    days: &[NaiveDate],
    tallies: &[DayTally],
    warn: &BTreeMap<NaiveDate, String>,
) -> DailyVolumes {
    let rows: Vec<DayRow> = days
        .iter()
        .zip(tallies)
        .map(|(d, t)| DayRow {
            day: *d,
            warning: warn.get(d).cloned(),
            entries: t.entries,
            exits: t.exits,
            vehicles: t.vehicles,
        })
        .collect();
    let normal: Vec<&DayRow> = rows.iter().filter(|r| r.warning.is_none()).collect();
    let warning: Vec<&DayRow> = rows.iter().filter(|r| r.warning.is_some()).collect();
    DailyVolumes {
        normal: average(&normal),
        warning: average(&warning),
        days: rows,
    }
}

/// Per-day tallies for chosen days (the inspection's daily averages).
pub(crate) fn day_rows(
    reader: &LedgerReader,
    days: &[NaiveDate],
    warn: &BTreeMap<NaiveDate, String>,
) -> Result<Vec<DayRow>, ReportError> {
    let mut out = Vec::new();
    for d in days {
        let p = Period {
            from: local_day_start(*d),
            to: local_day_start(*d) + Duration::days(1),
        };
        let s = if whole_days(p, &[*d]) {
            scan_aggregates(reader, &[*d])?
        } else {
            scan_passes(reader, p, &[*d])?
        };
        let t = s.daily.first().copied().unwrap_or_default();
        out.push(DayRow {
            day: *d,
            warning: warn.get(d).cloned(),
            entries: t.entries,
            exits: t.exits,
            vehicles: t.vehicles,
        });
    }
    Ok(out)
}

fn fleet_shares(
    reader: &LedgerReader,
    as_of: DateTime<Utc>,
) -> Result<Vec<FleetShare>, ReportError> {
    let specs = [
        (
            crate::vehicle::RegistryKind::InPlant,
            "in_plant",
            "厂内运输车辆",
            "国五及以上或新能源",
            "code",
            5u8,
        ),
        (
            crate::vehicle::RegistryKind::NonRoad,
            "non_road",
            "非道路移动机械",
            "国三及以上或新能源",
            "reg_code",
            3u8,
        ),
    ];
    let mut out = Vec::new();
    for (kind, registry, label, rule, key, min) in specs {
        // The fleet as it stood at the end of the period, not as it is today: a machine
        // registered later, or upgraded since, does not change a past month's figure.
        let records = crate::ledger::registry::as_of(reader.conn(), kind, as_of)?;
        let get = |rec: &[(String, String)], c: &str| {
            rec.iter()
                .find(|(k, _)| k == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut total = 0u64;
        let mut compliant = 0u64;
        let mut by: BTreeMap<String, u64> = BTreeMap::new();
        let mut non_compliant = Vec::new();
        for r in &records {
            let (code, stage, fuel) = (get(r, key), get(r, "stage"), get(r, "fuel"));
            total += 1;
            bump(&mut by, &stage);
            if at_least(stage_of(&stage), fuel_of(&fuel), min) {
                compliant += 1;
            } else {
                non_compliant.push(code);
            }
        }
        let s = share(compliant, total);
        let full = total > 0 && compliant == total;
        out.push(FleetShare {
            registry,
            label,
            rule,
            total,
            compliant,
            share: s,
            meets_a: full,
            meets_b: full,
            by_stage: by
                .into_iter()
                .map(|(code, count)| StageCount {
                    label: stage_label(&code),
                    code,
                    count,
                })
                .collect(),
            non_compliant,
            as_of,
        });
    }
    Ok(out)
}

fn manual_releases(reader: &LedgerReader, period: Period) -> Result<ManualReleases, ReportError> {
    let mut m = ManualReleases::default();
    let mut ops: BTreeMap<String, u64> = BTreeMap::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut stmt = reader.conn().prepare_cached(
        "SELECT coalesce(operator, ''), coalesce(reason, ''), plate IS NULL, count(*)
         FROM pass_index WHERE voided = 0 AND seq IN (
             SELECT seq FROM events WHERE kind = 'manual_release'
               AND occurred_at >= ?1 AND occurred_at < ?2)
         GROUP BY 1, 2, 3",
    )?;
    let mut rows = stmt.query([db_time(period.from), db_time(period.to)])?;
    while let Some(r) = rows.next()? {
        let op: String = r.get(0)?;
        let reason: String = r.get(1)?;
        let no_plate: bool = r.get(2)?;
        let n = r.get::<_, i64>(3)? as u64;
        m.total += n;
        if no_plate {
            m.without_plate += n;
        }
        *ops.entry(op).or_default() += n;
        *reasons.entry(reason).or_default() += n;
    }
    let sorted = |m: BTreeMap<String, u64>| {
        let mut v: Vec<NamedCount> = m
            .into_iter()
            .map(|(name, count)| NamedCount { name, count })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.name.cmp(&b.name)));
        v
    };
    m.by_operator = sorted(ops);
    m.by_reason = sorted(reasons);
    Ok(m)
}

/// Every `uplink/<platform>.state` beside the ledger (read-only).
fn uploads(reader: &LedgerReader) -> Vec<UploadRow> {
    let dir = reader.data_dir.join("uplink");
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().to_string();
                n.strip_suffix(".state").map(str::to_string)
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let path = crate::regulator::outbox::state_path(&reader.data_dir, &name);
            match crate::regulator::outbox::load_state(&path) {
                Ok(s) => UploadRow {
                    completeness: s.kpi.completeness(),
                    captured: s.kpi.captured,
                    acknowledged: s.kpi.acknowledged,
                    failed: s.kpi.failed,
                    backlog: s.kpi.backlog,
                    last_error: s.kpi.last_error.clone(),
                    error: None,
                    platform: name,
                },
                Err(e) => UploadRow {
                    platform: name,
                    captured: 0,
                    acknowledged: 0,
                    failed: 0,
                    backlog: 0,
                    completeness: 0.0,
                    last_error: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .collect()
}

/// Mode names for the exports.
pub fn mode_label(m: TransportMode) -> (&'static str, &'static str) {
    (mode_name(m), mode_chinese(m))
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod aggregate_tests;
