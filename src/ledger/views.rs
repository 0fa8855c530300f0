//! The ledgers as views over the event log: passes (with corrections applied), visits (entry
//! paired with exit, reference §3.5) and the vehicles in the plant now.
//!
//! Pairing rules, applied to passes in time order:
//! * an entry opens a visit for its plate + colour;
//! * an exit closes the open visit of the same plate + colour (whose entry is earlier, since
//!   passes are taken in time order); with none open it becomes a visit of its own, flagged
//!   `unmatched_exit` — kept, never dropped;
//! * a second entry while a visit is open closes the old visit as `no_exit` (it stays in the
//!   ledger, flagged) and opens a new one;
//! * passes without a plate are never paired: each is its own visit, flagged `unplated`;
//! * visits are matched by time, not by calendar day, so one across midnight is one visit.

use super::events::{BarrierMode, Direction, EventBody};
use super::store::{EventRecord, LedgerReader};
use super::LedgerError;
use crate::vehicle::{EmissionStage, Fuel, PlateColor};
use chrono::{DateTime, Duration, Utc};
use ecogate_drivers::Mass;
use std::collections::HashMap;

/// How far before a range the views look for the entry of a visit whose exit is inside it,
/// and after it for the exit of a visit whose entry is inside it.
pub const PAIRING_WINDOW_DAYS: i64 = 7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassSource {
    /// Automatic decision by the gateway.
    Auto,
    /// 手工放行: a person released the barrier.
    Manual { operator: String, reason: String },
    /// 补录: entered later from the paper log.
    Backfill { operator: String, reason: String },
}

/// One vehicle through the barrier.
#[derive(Debug, Clone, PartialEq)]
pub struct Pass {
    pub seq: i64,
    pub id: String,
    pub at: DateTime<Utc>,
    pub lane: String,
    pub gate: Option<String>,
    pub direction: Direction,
    pub plate: String,
    pub color: PlateColor,
    pub barrier: BarrierMode,
    pub stage: Option<EmissionStage>,
    pub fuel: Option<Fuel>,
    pub photos: Vec<String>,
    pub source: PassSource,
    pub cargo: Option<String>,
    pub net: Option<Mass>,
    /// Ids of corrections applied.
    pub corrections: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WeighingRow {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub plate: String,
    pub color: PlateColor,
    pub cargo: Option<String>,
    pub net: Option<Mass>,
    pub pass_ref: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VisitFlag {
    /// An exit with no open entry for the plate.
    UnmatchedExit,
    /// A later entry of the same plate arrived before any exit.
    NoExit,
    /// Entered and not yet out.
    InPlant,
    Unplated,
    Manual,
    Backfill,
    Corrected,
}

impl VisitFlag {
    pub fn name(self) -> &'static str {
        match self {
            VisitFlag::UnmatchedExit => "unmatched_exit",
            VisitFlag::NoExit => "no_exit",
            VisitFlag::InPlant => "in_plant",
            VisitFlag::Unplated => "unplated",
            VisitFlag::Manual => "manual",
            VisitFlag::Backfill => "backfill",
            VisitFlag::Corrected => "corrected",
        }
    }

    pub fn chinese(self) -> &'static str {
        match self {
            VisitFlag::UnmatchedExit => "无进厂记录",
            VisitFlag::NoExit => "无出厂记录",
            VisitFlag::InPlant => "在厂",
            VisitFlag::Unplated => "无牌",
            VisitFlag::Manual => "手工放行",
            VisitFlag::Backfill => "补录",
            VisitFlag::Corrected => "已更正",
        }
    }
}

/// One row of the 进出厂运输车辆 ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Visit {
    pub plate: String,
    pub color: PlateColor,
    pub entry: Option<Pass>,
    pub exit: Option<Pass>,
    pub weighings: Vec<WeighingRow>,
    pub flags: Vec<VisitFlag>,
}

impl Visit {
    /// The time the visit is filed under: its entry, or its exit when it has no entry.
    pub fn anchor(&self) -> Option<DateTime<Utc>> {
        self.entry.as_ref().or(self.exit.as_ref()).map(|p| p.at)
    }

    fn passes(&self) -> impl Iterator<Item = &Pass> {
        self.entry.iter().chain(self.exit.iter())
    }

    /// Cargo names from weighings and backfilled passes, distinct, in order.
    pub fn cargo(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let names = self
            .weighings
            .iter()
            .filter_map(|w| w.cargo.clone())
            .chain(self.passes().filter_map(|p| p.cargo.clone()));
        for n in names {
            if !n.is_empty() && !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// Net mass carried: the sum of the weighings' nets (or of the passes' when no weighing).
    pub fn net(&self) -> Option<Mass> {
        let from_w: Vec<Mass> = self.weighings.iter().filter_map(|w| w.net).collect();
        let nets: Vec<Mass> = if from_w.is_empty() {
            self.passes().filter_map(|p| p.net).collect()
        } else {
            from_w
        };
        if nets.is_empty() {
            None
        } else {
            // Saturating: a corrupt or absurd weight must not panic an export or a report.
            Some(Mass::from_grams(nets.iter().fold(0i64, |sum, m| {
                sum.saturating_add(m.grams.saturating_abs())
            })))
        }
    }

    /// Emission stage: the snapshot at entry, else at exit.
    pub fn stage(&self) -> Option<EmissionStage> {
        self.entry
            .as_ref()
            .and_then(|p| p.stage)
            .or_else(|| self.exit.as_ref().and_then(|p| p.stage))
    }

    pub fn fuel(&self) -> Option<Fuel> {
        self.entry
            .as_ref()
            .and_then(|p| p.fuel)
            .or_else(|| self.exit.as_ref().and_then(|p| p.fuel))
    }
}

/// Pair passes (any order) into visits, by the rules in the module documentation.
pub fn pair(passes: &[Pass]) -> Vec<Visit> {
    let mut sorted: Vec<&Pass> = passes.iter().collect();
    sorted.sort_by_key(|a| (a.at, a.seq));
    let mut visits: Vec<Visit> = Vec::new();
    let mut open: HashMap<(&str, PlateColor), usize> = HashMap::new();
    for p in sorted {
        let mut flags = Vec::new();
        match &p.source {
            PassSource::Auto => {}
            PassSource::Manual { .. } => flags.push(VisitFlag::Manual),
            PassSource::Backfill { .. } => flags.push(VisitFlag::Backfill),
        }
        if !p.corrections.is_empty() {
            flags.push(VisitFlag::Corrected);
        }
        if p.plate.trim().is_empty() {
            flags.push(VisitFlag::Unplated);
            let (entry, exit) = match p.direction {
                Direction::In => (Some(p.clone()), None),
                Direction::Out => (None, Some(p.clone())),
            };
            visits.push(Visit {
                plate: String::new(),
                color: p.color,
                entry,
                exit,
                weighings: vec![],
                flags,
            });
            continue;
        }
        let key = (p.plate.as_str(), p.color);
        match p.direction {
            Direction::In => {
                if let Some(i) = open.remove(&key) {
                    visits[i].flags.push(VisitFlag::NoExit);
                }
                open.insert(key, visits.len());
                visits.push(Visit {
                    plate: p.plate.clone(),
                    color: p.color,
                    entry: Some(p.clone()),
                    exit: None,
                    weighings: vec![],
                    flags,
                });
            }
            Direction::Out => match open.remove(&key) {
                Some(i) => {
                    let v = &mut visits[i];
                    v.exit = Some(p.clone());
                    for f in flags {
                        if !v.flags.contains(&f) {
                            v.flags.push(f);
                        }
                    }
                }
                None => {
                    flags.insert(0, VisitFlag::UnmatchedExit);
                    visits.push(Visit {
                        plate: p.plate.clone(),
                        color: p.color,
                        entry: None,
                        exit: Some(p.clone()),
                        weighings: vec![],
                        flags,
                    });
                }
            },
        }
    }
    for i in open.into_values() {
        visits[i].flags.push(VisitFlag::InPlant);
    }
    visits
}

/// Attach each weighing to the visit it belongs to: the pass it names, else the visit of the
/// same plate + colour whose time span contains it.
pub fn attach_weighings(visits: &mut [Visit], weighings: &[WeighingRow]) {
    'w: for w in weighings {
        if let Some(r) = &w.pass_ref {
            for v in visits.iter_mut() {
                if v.passes().any(|p| &p.id == r) {
                    v.weighings.push(w.clone());
                    continue 'w;
                }
            }
        }
        for v in visits.iter_mut() {
            if v.plate != w.plate || v.color != w.color {
                continue;
            }
            let start = v.entry.as_ref().map(|p| p.at);
            let end = v.exit.as_ref().map(|p| p.at);
            let inside = match (start, end) {
                (Some(s), Some(e)) => s <= w.at && w.at <= e,
                (Some(s), None) => s <= w.at,
                // A lone exit: the weighing just before it on the way out.
                (None, Some(e)) => w.at <= e && e - w.at <= Duration::hours(2),
                (None, None) => false,
            };
            if inside {
                v.weighings.push(w.clone());
                continue 'w;
            }
        }
    }
}

struct Fix {
    id: String,
    void: bool,
    plate: Option<String>,
    color: Option<PlateColor>,
    direction: Option<Direction>,
    cargo: Option<String>,
    net: Option<Mass>,
}

fn pass_of(e: &EventRecord) -> Option<Pass> {
    let base = |lane: &str, gate: &Option<String>, direction, plate: &str, color| Pass {
        seq: e.seq,
        id: e.id.clone(),
        at: e.occurred_at,
        lane: lane.to_string(),
        gate: gate.clone(),
        direction,
        plate: plate.to_string(),
        color,
        barrier: BarrierMode::Auto,
        stage: None,
        fuel: None,
        photos: e.photos.clone(),
        source: PassSource::Auto,
        cargo: None,
        net: None,
        corrections: vec![],
    };
    match &e.body {
        EventBody::PassAttempt(p) if p.opened => Some(Pass {
            barrier: p.barrier,
            stage: p.stage,
            fuel: p.fuel,
            ..base(&p.lane, &p.gate, p.direction, &p.plate, p.color)
        }),
        EventBody::ManualRelease(m) => {
            let plate = m.plate.as_deref()?;
            Some(Pass {
                barrier: m.mode,
                source: PassSource::Manual {
                    operator: m.operator.clone(),
                    reason: m.reason.clone(),
                },
                ..base(
                    &m.lane,
                    &m.gate,
                    m.direction,
                    plate,
                    m.color.unwrap_or(PlateColor::Other),
                )
            })
        }
        EventBody::Backfill(b) => {
            let p = &b.pass;
            Some(Pass {
                barrier: p.barrier,
                stage: p.stage,
                fuel: p.fuel,
                source: PassSource::Backfill {
                    operator: b.operator.clone(),
                    reason: b.reason.clone(),
                },
                cargo: b.cargo.clone(),
                net: b.net,
                ..base(&p.lane, &p.gate, p.direction, &p.plate, p.color)
            })
        }
        _ => None,
    }
}

impl LedgerReader {
    fn corrections_since(
        &self,
        from: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<Fix>>, LedgerError> {
        let far = from + Duration::days(365 * 100);
        let mut out: HashMap<String, Vec<Fix>> = HashMap::new();
        for e in self.events_between(&["correction"], from, far)? {
            if let EventBody::Correction(c) = e.body {
                out.entry(c.refs.clone()).or_default().push(Fix {
                    id: e.id,
                    void: c.void,
                    plate: c.plate,
                    color: c.color,
                    direction: c.direction,
                    cargo: c.cargo,
                    net: c.net,
                });
            }
        }
        Ok(out)
    }

    /// Passes (barrier opened: automatic, manual release with a plate, or backfilled) whose
    /// time lies in `[from, to)`, corrections applied, voided ones left out.
    pub fn passes(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Vec<Pass>, LedgerError> {
        let fixes = self.corrections_since(from)?;
        let events =
            self.events_between(&["pass_attempt", "manual_release", "backfill"], from, to)?;
        let mut out = Vec::new();
        for e in &events {
            let Some(mut p) = pass_of(e) else { continue };
            let mut void = false;
            for fx in fixes.get(&p.id).into_iter().flatten() {
                p.corrections.push(fx.id.clone());
                void |= fx.void;
                if let Some(v) = &fx.plate {
                    p.plate = v.clone();
                }
                if let Some(v) = fx.color {
                    p.color = v;
                }
                if let Some(v) = fx.direction {
                    p.direction = v;
                }
                if let Some(v) = &fx.cargo {
                    p.cargo = Some(v.clone());
                }
                if let Some(v) = fx.net {
                    p.net = Some(v);
                }
            }
            if !void {
                out.push(p);
            }
        }
        Ok(out)
    }

    pub fn weighings(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<WeighingRow>, LedgerError> {
        let fixes = self.corrections_since(from)?;
        let mut out = Vec::new();
        for e in self.events_between(&["weighing"], from, to)? {
            if let EventBody::Weighing(w) = e.body {
                let mut row = WeighingRow {
                    seq: e.seq,
                    at: e.occurred_at,
                    plate: w.plate,
                    color: w.color,
                    cargo: w.cargo,
                    net: w.net.or_else(|| match (w.gross, w.tare) {
                        (Some(g), Some(t)) => g.grams.checked_sub(t.grams).map(Mass::from_grams),
                        _ => None,
                    }),
                    pass_ref: w.pass_ref,
                };
                let mut void = false;
                for fx in fixes.get(&e.id).into_iter().flatten() {
                    void |= fx.void;
                    if let Some(v) = &fx.cargo {
                        row.cargo = Some(v.clone());
                    }
                    if let Some(v) = fx.net {
                        row.net = Some(v);
                    }
                }
                if !void {
                    out.push(row);
                }
            }
        }
        Ok(out)
    }

    /// The 进出厂运输车辆 ledger for `[from, to)`: visits filed under their entry time (or exit
    /// time when there is no entry), paired with passes up to [`PAIRING_WINDOW_DAYS`] around.
    pub fn visits(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Visit>, LedgerError> {
        let w = Duration::days(PAIRING_WINDOW_DAYS);
        let passes = self.passes(from - w, to + w)?;
        let mut visits = pair(&passes);
        attach_weighings(&mut visits, &self.weighings(from - w, to + w)?);
        visits.retain(|v| v.anchor().is_some_and(|t| from <= t && t < to));
        visits.sort_by_key(|v| v.anchor());
        Ok(visits)
    }

    /// Vehicles whose last pass (within `window` before `now`) is an entry.
    pub fn in_plant_now(
        &self,
        now: DateTime<Utc>,
        window: Duration,
    ) -> Result<Vec<Visit>, LedgerError> {
        let passes = self.passes(now - window, now + Duration::seconds(1))?;
        let mut visits = pair(&passes);
        visits.retain(|v| v.flags.contains(&VisitFlag::InPlant));
        visits.sort_by_key(|v| v.anchor());
        Ok(visits)
    }
}
