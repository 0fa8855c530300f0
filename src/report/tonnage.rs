//! Tonnage moved by rail, water, belt or pipeline, entered by hand as `transport_tonnage`
//! ledger events (the railway, port or belt-scale figures are not on any weighbridge here).

use super::params::{parse_from, parse_to};
use super::ReportError;
use crate::ledger::{
    local_day_start, parse_date, EventBody, Ledger, LedgerReader, Receipt, TransportMode,
    TransportTonnage,
};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use ecogate_drivers::Mass;
use serde::{Deserialize, Serialize};

/// `POST /api/v1/transport-tonnage` body.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct TonnageInput {
    /// `yyyy-MM-dd` (GMT+8).
    pub date: String,
    /// `rail`, `water`, `belt` or `pipeline` (also 铁路, 水路, 皮带, 管道).
    pub mode: String,
    pub cargo: String,
    /// Tonnes, a JSON number or a decimal string, up to 6 decimals (whole grams).
    pub tonnes: serde_json::Value,
    pub note: String,
}

pub fn parse_mode(s: &str) -> Option<TransportMode> {
    match s.trim() {
        "rail" | "铁路" => Some(TransportMode::Rail),
        "water" | "水路" | "水运" => Some(TransportMode::Water),
        "belt" | "皮带" | "皮带通廊" | "管状带式输送机" => Some(TransportMode::Belt),
        "pipeline" | "管道" => Some(TransportMode::Pipeline),
        _ => None,
    }
}

pub fn mode_name(m: TransportMode) -> &'static str {
    match m {
        TransportMode::Rail => "rail",
        TransportMode::Water => "water",
        TransportMode::Belt => "belt",
        TransportMode::Pipeline => "pipeline",
    }
}

pub fn mode_chinese(m: TransportMode) -> &'static str {
    match m {
        TransportMode::Rail => "铁路",
        TransportMode::Water => "水路",
        TransportMode::Belt => "皮带",
        TransportMode::Pipeline => "管道",
    }
}

/// Exact tonnes → grams: `12.5` → 12,500,000 g. At most 6 decimals, positive, < 10^7 t.
pub fn parse_tonnes(field: &str, s: &str) -> Result<Mass, ReportError> {
    let bad = || {
        ReportError::bad(
            field,
            format!("`{s}` is not a positive number of tonnes with at most 6 decimals"),
        )
    };
    let t = s.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    if int.is_empty()
        || int.len() > 7
        || frac.len() > 6
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let mut f = frac.to_string();
    while f.len() < 6 {
        f.push('0');
    }
    let grams =
        int.parse::<i64>().map_err(|_| bad())? * 1_000_000 + f.parse::<i64>().map_err(|_| bad())?;
    if grams <= 0 {
        return Err(bad());
    }
    Ok(Mass::from_grams(grams))
}

/// Check an input and make the event body (operator = the user who entered it).
pub fn tonnage_event(input: &TonnageInput, operator: &str) -> Result<EventBody, ReportError> {
    let date = parse_date(&input.date).ok_or_else(|| {
        ReportError::bad(
            "date",
            format!("`{}` is not a date (yyyy-MM-dd)", input.date),
        )
    })?;
    let mode = parse_mode(&input.mode).ok_or_else(|| {
        ReportError::bad(
            "mode",
            format!("`{}` is not rail, water, belt or pipeline", input.mode),
        )
    })?;
    let cargo = input.cargo.trim();
    if cargo.is_empty() || cargo.chars().count() > 100 {
        return Err(ReportError::bad(
            "cargo",
            "give the goods name (1–100 characters)",
        ));
    }
    let tonnes = match &input.tonnes {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => return Err(ReportError::bad("tonnes", "required")),
        other => other.to_string(),
    };
    let mass = parse_tonnes("tonnes", &tonnes)?;
    if input.note.chars().count() > 500 {
        return Err(ReportError::bad("note", "at most 500 characters"));
    }
    if operator.trim().is_empty() {
        return Err(ReportError::bad("operator", "required"));
    }
    Ok(EventBody::TransportTonnage(TransportTonnage {
        date,
        mode,
        cargo: cargo.to_string(),
        mass,
        note: input.note.trim().to_string(),
        operator: operator.trim().to_string(),
    }))
}

/// The event is filed at the start of its day (GMT+8), so period queries find it by time.
fn filed_at(body: &EventBody) -> DateTime<Utc> {
    match body {
        EventBody::TransportTonnage(t) => local_day_start(t.date),
        _ => Utc::now(),
    }
}

/// Record one entry (async: for the HTTP handlers).
pub async fn record_tonnage(
    ledger: &Ledger,
    input: &TonnageInput,
    operator: &str,
) -> Result<Receipt, ReportError> {
    let body = tonnage_event(input, operator)?;
    let at = filed_at(&body);
    Ok(ledger.append(body, vec![], at).await?)
}

/// [`record_tonnage`] for synchronous callers (the CLI, tests).
pub fn record_tonnage_blocking(
    ledger: &Ledger,
    input: &TonnageInput,
    operator: &str,
) -> Result<Receipt, ReportError> {
    let body = tonnage_event(input, operator)?;
    let at = filed_at(&body);
    Ok(ledger.append_blocking(body, vec![], at)?)
}

/// `GET /api/v1/transport-tonnage?from=&to=` (days, `to` inclusive).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct TonnageQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TonnageRow {
    pub seq: i64,
    pub id: String,
    pub date: NaiveDate,
    pub mode: TransportMode,
    pub mode_text: &'static str,
    pub cargo: String,
    pub tonnes: f64,
    /// Exact mass in grams (tonnes is for display).
    pub grams: i64,
    pub note: String,
    pub operator: String,
    pub recorded_at: DateTime<Utc>,
}

pub fn list_tonnage(
    reader: &LedgerReader,
    q: &TonnageQuery,
) -> Result<Vec<TonnageRow>, ReportError> {
    let from = match q.from.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => parse_from("from", s)?,
        None => return Err(ReportError::bad("from", "required")),
    };
    let to = match q.to.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(s) => parse_to("to", s)?,
        None => return Err(ReportError::bad("to", "required")),
    };
    if to <= from {
        return Err(ReportError::bad("to", "must be after `from`"));
    }
    tonnage_between(reader, from, to)
}

/// Entries filed in `[from, to)`, voided ones (a `correction` with `void`) left out.
pub fn tonnage_between(
    reader: &LedgerReader,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<TonnageRow>, ReportError> {
    let events = reader.events_between(&["transport_tonnage"], from, to)?;
    let mut voided = std::collections::HashSet::new();
    if !events.is_empty() {
        let far = to + Duration::days(365 * 100);
        for c in reader.events_between(&["correction"], from, far)? {
            if let EventBody::Correction(c) = c.body {
                if c.void {
                    voided.insert(c.refs);
                }
            }
        }
    }
    let mut out = Vec::new();
    for e in events {
        if voided.contains(&e.id) {
            continue;
        }
        if let EventBody::TransportTonnage(t) = e.body {
            out.push(TonnageRow {
                seq: e.seq,
                id: e.id,
                date: t.date,
                mode: t.mode,
                mode_text: mode_chinese(t.mode),
                cargo: t.cargo,
                tonnes: t.mass.grams as f64 / 1e6,
                grams: t.mass.grams,
                note: t.note,
                operator: t.operator,
                recorded_at: e.recorded_at,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonnes_are_exact_grams() {
        assert_eq!(parse_tonnes("t", "12.5").unwrap().grams, 12_500_000);
        assert_eq!(parse_tonnes("t", "0.000001").unwrap().grams, 1);
        assert!(parse_tonnes("t", "0").is_err());
        assert!(parse_tonnes("t", "-3").is_err());
        assert!(parse_tonnes("t", "1.0000001").is_err());
        assert!(parse_tonnes("t", "1e3").is_err());
    }

    #[test]
    fn input_errors_name_the_field() {
        let good = TonnageInput {
            date: "2026-11-01".into(),
            mode: "rail".into(),
            cargo: "煤".into(),
            tonnes: serde_json::json!(1200.5),
            note: String::new(),
        };
        assert!(tonnage_event(&good, "env").is_ok());
        let e = tonnage_event(
            &TonnageInput {
                mode: "truck".into(),
                ..good.clone()
            },
            "env",
        );
        assert_eq!(e.unwrap_err().field(), Some("mode"));
        let e = tonnage_event(
            &TonnageInput {
                tonnes: serde_json::json!("lots"),
                ..good.clone()
            },
            "env",
        );
        assert_eq!(e.unwrap_err().field(), Some("tonnes"));
        let e = tonnage_event(
            &TonnageInput {
                date: "2026-13-01".into(),
                ..good
            },
            "env",
        );
        assert_eq!(e.unwrap_err().field(), Some("date"));
    }
}
