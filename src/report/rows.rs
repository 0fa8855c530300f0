//! The pass row every listing returns (search, inspection sample, video window).

use super::ReportError;
use crate::ledger::{BarrierMode, Decision, EventBody, LedgerReader};
use crate::vehicle::{Direction, EmissionStage, Fuel, PlateColor};
use chrono::{DateTime, Utc};
use rusqlite::Row;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub total: u64,
    pub page: u32,
    pub per_page: u32,
    pub items: Vec<T>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhotoRef {
    /// `head`, `body`, `plate`, or `photo` when the event does not say.
    pub kind: String,
    pub sha256: String,
    /// `/api/v1/photos/{sha256}`.
    pub url: String,
}

impl PhotoRef {
    pub fn new(kind: &str, sha256: &str) -> PhotoRef {
        PhotoRef {
            kind: kind.to_string(),
            sha256: sha256.to_string(),
            url: format!("/api/v1/photos/{sha256}"),
        }
    }
}

/// One pass-like event (attempt, manual release, backfill) as the ledger holds it, with
/// corrections applied to plate, colour and direction.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PassRow {
    pub seq: i64,
    pub id: String,
    pub at: DateTime<Utc>,
    /// `pass_attempt`, `manual_release` or `backfill`.
    pub kind: String,
    pub lane: String,
    pub gate: Option<String>,
    pub direction: Option<Direction>,
    pub plate: String,
    pub color: Option<PlateColor>,
    /// The policy's decision; none for a manual release.
    pub decision: Option<Decision>,
    pub reason: String,
    pub reason_text: String,
    pub barrier: Option<BarrierMode>,
    pub stage: Option<EmissionStage>,
    pub fuel: Option<Fuel>,
    /// The barrier opened for it (a pass of the ledger, not a denied attempt).
    pub opened: bool,
    pub corrected: bool,
    pub voided: bool,
    pub operator: Option<String>,
    pub photos: Vec<PhotoRef>,
}

/// Columns of `pass_index` read by [`from_index`], in this order.
pub const ROW_COLUMNS: &str = "p.seq, p.kind, p.lane, p.gate, p.direction, p.plate, p.color, \
     p.decision, p.reason, p.barrier, p.stage, p.fuel, p.is_pass, p.corrected, p.voided, \
     p.operator, e.id, e.occurred_at, e.body, e.photos";

fn enum_of<T: serde::de::DeserializeOwned>(s: Option<String>) -> Option<T> {
    s.and_then(|v| serde_json::from_value(serde_json::Value::String(v)).ok())
}

/// Build a row from a `SELECT {ROW_COLUMNS} FROM pass_index p JOIN events e USING(seq)`.
pub fn from_index(r: &Row<'_>) -> Result<PassRow, ReportError> {
    let seq: i64 = r.get(0)?;
    let body: String = r.get(18)?;
    let photos: String = r.get(19)?;
    let occurred: String = r.get(17)?;
    let bad = |reason: String| crate::ledger::LedgerError::Malformed { seq, reason };
    let body: EventBody = serde_json::from_str(&body).map_err(|e| bad(format!("body: {e}")))?;
    let hashes: Vec<String> =
        serde_json::from_str(&photos).map_err(|e| bad(format!("photos: {e}")))?;
    let (kinds, reason_text): (&[String], String) = match &body {
        EventBody::PassAttempt(p) => (&p.photo_kinds, p.reason_text.clone()),
        EventBody::ManualRelease(m) => (&m.photo_kinds, String::new()),
        EventBody::Backfill(b) => (&b.pass.photo_kinds, b.pass.reason_text.clone()),
        _ => (&[], String::new()),
    };
    let photos = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| PhotoRef::new(kinds.get(i).map_or("photo", String::as_str), h))
        .collect();
    Ok(PassRow {
        seq,
        id: r.get(16)?,
        at: crate::ledger::parse_db_time(&occurred)
            .ok_or_else(|| bad(format!("occurred_at `{occurred}`")))?,
        kind: r.get(1)?,
        lane: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        gate: r.get(3)?,
        direction: enum_of(r.get(4)?),
        plate: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
        color: enum_of(r.get(6)?),
        decision: enum_of(r.get(7)?),
        reason: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
        reason_text,
        barrier: enum_of(r.get(9)?),
        stage: enum_of(r.get(10)?),
        fuel: enum_of(r.get(11)?),
        opened: r.get::<_, i64>(12)? != 0,
        corrected: r.get::<_, i64>(13)? != 0,
        voided: r.get::<_, i64>(14)? != 0,
        operator: r.get(15)?,
        photos,
    })
}

/// Rows for the given seqs, in the order given.
pub fn rows_for(reader: &LedgerReader, seqs: &[i64]) -> Result<Vec<PassRow>, ReportError> {
    let mut stmt = reader.conn().prepare_cached(&format!(
        "SELECT {ROW_COLUMNS} FROM pass_index p JOIN events e ON e.seq = p.seq WHERE p.seq = ?1"
    ))?;
    let mut out = Vec::with_capacity(seqs.len());
    for s in seqs {
        let mut rows = stmt.query([s])?;
        if let Some(r) = rows.next()? {
            out.push(from_index(r)?);
        }
    }
    Ok(out)
}
