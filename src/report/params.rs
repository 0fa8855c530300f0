//! Request parameters as they arrive (query strings, CLI flags): every field is text, so a
//! malformed value is reported by [`ReportError::BadParam`] naming the field instead of a
//! generic deserialisation failure. Times are RFC 3339 or `yyyy-MM-dd[ HH:mm[:ss]]` in GMT+8.

use super::ReportError;
use crate::ledger::{local_day_start, parse_date, parse_local_time, BarrierMode, Decision};
use crate::vehicle::{Direction, EmissionStage, PlateColor};
use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use serde::Deserialize;

/// Largest page of a pass search.
pub const MAX_PER_PAGE: u32 = 500;
pub const DEFAULT_PER_PAGE: u32 = 50;

/// `GET /api/v1/passes` query. Unknown parameters are ignored (serde's default).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct PassQuery {
    pub plate: Option<String>,
    /// `exact` (default), `prefix` or `contains`. A `*` at the end of `plate` means prefix.
    pub plate_match: Option<String>,
    pub color: Option<String>,
    pub gate: Option<String>,
    pub lane: Option<String>,
    /// `in` or `out`.
    pub direction: Option<String>,
    /// Stage code or name: `6`, `国六`, `D`, `X`.
    pub stage: Option<String>,
    /// `allow` or `deny`.
    pub decision: Option<String>,
    /// `auto`, `manual` or `remote`.
    pub barrier: Option<String>,
    /// `pass_attempt`, `manual_release` or `backfill`.
    pub kind: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub page: Option<String>,
    pub per_page: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlateMatch {
    Exact,
    Prefix,
    Contains,
}

/// A [`PassQuery`] checked and converted.
#[derive(Debug, Clone, PartialEq)]
pub struct PassFilter {
    pub plate: Option<(String, PlateMatch)>,
    pub color: Option<PlateColor>,
    pub gate: Option<String>,
    pub lane: Option<String>,
    pub direction: Option<Direction>,
    pub stage: Option<EmissionStage>,
    pub decision: Option<Decision>,
    pub barrier: Option<BarrierMode>,
    pub kind: Option<&'static str>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub page: u32,
    pub per_page: u32,
}

fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// A range start: a day (its start in GMT+8) or an instant.
pub fn parse_from(field: &str, s: &str) -> Result<DateTime<Utc>, ReportError> {
    if let Some(d) = parse_date(s) {
        return Ok(local_day_start(d));
    }
    parse_local_time(s).ok_or_else(|| {
        ReportError::bad(
            field,
            format!("`{s}` is not a date (yyyy-MM-dd) or time (yyyy-MM-dd HH:mm:ss, RFC 3339)"),
        )
    })
}

/// A range end: a day is inclusive (up to the start of the next day), an instant exclusive.
pub fn parse_to(field: &str, s: &str) -> Result<DateTime<Utc>, ReportError> {
    if let Some(d) = parse_date(s) {
        return Ok(local_day_start(d) + Duration::days(1));
    }
    parse_local_time(s).ok_or_else(|| {
        ReportError::bad(
            field,
            format!("`{s}` is not a date (yyyy-MM-dd) or time (yyyy-MM-dd HH:mm:ss, RFC 3339)"),
        )
    })
}

fn parse_num(field: &str, v: &Option<String>, default: u32, max: u32) -> Result<u32, ReportError> {
    match text(v) {
        None => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ReportError::bad(
                field,
                format!("`{s}` is not a whole number from 1 to {max}"),
            )),
        },
    }
}

impl PassQuery {
    /// Check every field; the first bad one is named in the error.
    pub fn validate(&self) -> Result<PassFilter, ReportError> {
        let mode = match text(&self.plate_match) {
            None | Some("exact") => None,
            Some("prefix") => Some(PlateMatch::Prefix),
            Some("contains") => Some(PlateMatch::Contains),
            Some(o) => {
                return Err(ReportError::bad(
                    "plate_match",
                    format!("`{o}` is not one of exact, prefix, contains"),
                ))
            }
        };
        let plate = match text(&self.plate) {
            None => None,
            Some(p) => {
                let (p, star) = match p.strip_suffix('*') {
                    Some(rest) => (rest.trim(), true),
                    None => (p, false),
                };
                if p.is_empty() || p.contains('*') || p.contains('%') || p.contains('_') {
                    return Err(ReportError::bad(
                        "plate",
                        "give a plate or its start followed by `*` (no other wildcards)",
                    ));
                }
                let m = mode.unwrap_or(if star {
                    PlateMatch::Prefix
                } else {
                    PlateMatch::Exact
                });
                Some((p.to_string(), m))
            }
        };
        let color = text(&self.color)
            .map(|s| {
                s.parse::<PlateColor>().map_err(|_| {
                    ReportError::bad(
                        "color",
                        format!("`{s}` is not a plate colour (blue, yellow, white, black, green, yellow_green, other, or 蓝/黄/… or 0–6)"),
                    )
                })
            })
            .transpose()?;
        let direction = text(&self.direction)
            .map(|s| {
                Direction::parse(s)
                    .ok_or_else(|| ReportError::bad("direction", format!("`{s}` is not in or out")))
            })
            .transpose()?;
        let stage = text(&self.stage)
            .map(|s| {
                s.parse::<EmissionStage>()
                    .map_err(|e| ReportError::bad("stage", e.to_string()))
            })
            .transpose()?;
        let decision = match text(&self.decision) {
            None => None,
            Some("allow") => Some(Decision::Allow),
            Some("deny") => Some(Decision::Deny),
            Some(o) => {
                return Err(ReportError::bad(
                    "decision",
                    format!("`{o}` is not allow or deny"),
                ))
            }
        };
        let barrier = text(&self.barrier)
            .map(|s| {
                BarrierMode::parse(s).ok_or_else(|| {
                    ReportError::bad("barrier", format!("`{s}` is not auto, manual or remote"))
                })
            })
            .transpose()?;
        let kind = match text(&self.kind) {
            None => None,
            Some("pass_attempt") => Some("pass_attempt"),
            Some("manual_release") => Some("manual_release"),
            Some("backfill") => Some("backfill"),
            Some(o) => {
                return Err(ReportError::bad(
                    "kind",
                    format!("`{o}` is not pass_attempt, manual_release or backfill"),
                ))
            }
        };
        let from = text(&self.from)
            .map(|s| parse_from("from", s))
            .transpose()?;
        let to = text(&self.to).map(|s| parse_to("to", s)).transpose()?;
        if let (Some(f), Some(t)) = (from, to) {
            if t <= f {
                return Err(ReportError::bad("to", "must be after `from`"));
            }
        }
        Ok(PassFilter {
            plate,
            color,
            gate: text(&self.gate).map(str::to_string),
            lane: text(&self.lane).map(str::to_string),
            direction,
            stage,
            decision,
            barrier,
            kind,
            from,
            to,
            page: parse_num("page", &self.page, 1, 1_000_000)?,
            per_page: parse_num("per_page", &self.per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
        })
    }
}

/// `GET /api/v1/reports/summary` query: `from` + `to`, or one `day`, or one `month` (`yyyy-MM`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ReportParams {
    pub from: Option<String>,
    pub to: Option<String>,
    pub day: Option<String>,
    pub month: Option<String>,
}

/// Longest period one report covers.
pub const MAX_REPORT_DAYS: i64 = 731;

/// A checked period: whole local days when given as days or a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Period {
    /// Local (GMT+8) days the period touches, first to last.
    pub fn days(&self) -> Vec<NaiveDate> {
        let zone = crate::ledger::site_zone();
        let first = self.from.with_timezone(&zone).date_naive();
        let last = (self.to - Duration::microseconds(1))
            .with_timezone(&zone)
            .date_naive();
        first.iter_days().take_while(|d| *d <= last).collect()
    }
}

pub fn parse_month(field: &str, s: &str) -> Result<(NaiveDate, NaiveDate), ReportError> {
    let bad = || ReportError::bad(field, format!("`{s}` is not a month (yyyy-MM)"));
    let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
    let first = NaiveDate::from_ymd_opt(
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        1,
    )
    .ok_or_else(bad)?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    }
    .ok_or_else(bad)?;
    Ok((first, next))
}

/// Check `from`/`to` (both required unless `day`/`month` is given).
pub fn period(
    from: Option<&str>,
    to: Option<&str>,
    day: Option<&str>,
    month: Option<&str>,
) -> Result<Period, ReportError> {
    fn nz(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|s| !s.is_empty())
    }
    let p = match (nz(from), nz(to), nz(day), nz(month)) {
        (None, None, Some(d), None) => {
            let day = parse_date(d).ok_or_else(|| {
                ReportError::bad("day", format!("`{d}` is not a date (yyyy-MM-dd)"))
            })?;
            Period {
                from: local_day_start(day),
                to: local_day_start(day) + Duration::days(1),
            }
        }
        (None, None, None, Some(m)) => {
            let (a, b) = parse_month("month", m)?;
            Period {
                from: local_day_start(a),
                to: local_day_start(b),
            }
        }
        (Some(f), Some(t), None, None) => Period {
            from: parse_from("from", f)?,
            to: parse_to("to", t)?,
        },
        (None, _, None, None) => {
            return Err(ReportError::bad("from", "required (or give day or month)"))
        }
        (Some(_), None, None, None) => return Err(ReportError::bad("to", "required")),
        _ => {
            return Err(ReportError::bad(
                "from",
                "give either from and to, or day, or month — not several",
            ))
        }
    };
    if p.to <= p.from {
        return Err(ReportError::bad("to", "must be after `from`"));
    }
    if p.to - p.from > Duration::days(MAX_REPORT_DAYS) {
        return Err(ReportError::bad(
            "to",
            format!("a report covers at most {MAX_REPORT_DAYS} days"),
        ));
    }
    Ok(p)
}

impl ReportParams {
    pub fn period(&self) -> Result<Period, ReportError> {
        period(
            self.from.as_deref(),
            self.to.as_deref(),
            self.day.as_deref(),
            self.month.as_deref(),
        )
    }
}

/// A comma-separated list of days (`2026-11-01,2026-11-02`); also `2026-11-01..2026-11-05`.
pub fn parse_days(field: &str, s: &str) -> Result<Vec<NaiveDate>, ReportError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let one = |t: &str| {
            parse_date(t)
                .ok_or_else(|| ReportError::bad(field, format!("`{t}` is not a date (yyyy-MM-dd)")))
        };
        if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (one(a)?, one(b)?);
            if b < a || (b - a).num_days() > MAX_REPORT_DAYS {
                return Err(ReportError::bad(
                    field,
                    format!("`{part}` is not a valid day range"),
                ));
            }
            out.extend(a.iter_days().take_while(|d| *d <= b));
        } else {
            out.push(one(part)?);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_field() {
        let q = PassQuery {
            per_page: Some("501".into()),
            ..Default::default()
        };
        assert_eq!(q.validate().unwrap_err().field(), Some("per_page"));
        let q = PassQuery {
            direction: Some("up".into()),
            ..Default::default()
        };
        assert_eq!(q.validate().unwrap_err().field(), Some("direction"));
        assert_eq!(
            period(Some("2026-11-05"), Some("2026-11-01"), None, None)
                .unwrap_err()
                .field(),
            Some("to")
        );
        assert_eq!(
            parse_days("warning_days", "2026-11-01,x")
                .unwrap_err()
                .field(),
            Some("warning_days")
        );
    }

    #[test]
    fn month_and_day_periods_are_local_days() {
        let p = period(None, None, None, Some("2026-12")).unwrap();
        assert_eq!(p.days().len(), 31);
        assert_eq!(
            crate::ledger::db_time(p.from),
            "2026-11-30T16:00:00.000000Z"
        );
        let d = period(None, None, Some("2026-11-02"), None).unwrap();
        assert_eq!(
            d.days(),
            vec![NaiveDate::from_ymd_opt(2026, 11, 2).unwrap()]
        );
        let r = period(Some("2026-11-01"), Some("2026-11-03"), None, None).unwrap();
        assert_eq!(r.days().len(), 3);
    }
}
