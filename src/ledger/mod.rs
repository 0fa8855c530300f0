//! The tamper-evident e-ledger (电子台账): an append-only, hash-chained event log in SQLite,
//! content-addressed photos, the vehicle registries, and the three HJ 1321 ledgers as views.
//!
//! Entry points: [`Ledger::open`] and [`Ledger::append`] (durable before it returns),
//! [`verify()`], [`LedgerReader`] for views, exports and uplink cursors, [`SqliteRegistry`] for
//! the policy engine, and [`cli`] for the `ecogate ledger …` / `ecogate registry …` commands.
//! docs/ledger.md describes the schema, encoding, pairing rules and file formats.

pub mod backfill;
pub mod chain;
pub mod cli;
pub mod correct;
pub mod events;
pub mod export;
pub mod photos;
pub mod registry;
pub mod retention;
pub mod store;
pub mod verify;
pub mod views;

pub use events::*;
pub use registry::SqliteRegistry;
pub use store::{ChainHead, EventRecord, Ledger, LedgerReader, Receipt, Txn, DB_FILE};
pub use verify::{verify, verify_with, BreakKind, Broken, VerifyOptions, VerifyReport};

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
    /// A commit failed; every append in the failed group gets this (the error text of SQLite).
    #[error("ledger write failed: {0}")]
    Write(String),
    #[error("the ledger writer has stopped")]
    Closed,
    #[error("event {seq} is malformed: {reason}")]
    Malformed { seq: i64, reason: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Input(String),
}

/// The site's zone: GMT+8 (invariant 6: stored as UTC, shown in the site's zone).
pub fn site_zone() -> FixedOffset {
    #[allow(clippy::expect_used)]
    FixedOffset::east_opt(8 * 3600).expect("8 h is within the ±24 h chrono accepts")
}

/// Storage form of an instant: fixed width, so text order is time order.
pub fn db_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

pub fn parse_db_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `yyyy-MM-dd HH:mm:ss` in GMT+8, the format of exports and platforms.
pub fn local_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&site_zone())
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

/// Parse `yyyy-MM-dd HH:mm:ss` (or with `T`, or minutes only) as GMT+8, or RFC 3339 with zone.
pub fn parse_local_time(s: &str) -> Option<DateTime<Utc>> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Some(dt.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y/%m/%d %H:%M:%S",
        "%Y/%m/%d %H:%M",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return site_zone()
                .from_local_datetime(&n)
                .single()
                .map(|d| d.with_timezone(&Utc));
        }
    }
    None
}

/// Parse a date `yyyy-MM-dd` (also `yyyyMMdd`, `yyyy/MM/dd`).
pub fn parse_date(s: &str) -> Option<chrono::NaiveDate> {
    let t = s.trim();
    // Fast path for the usual yyyy-MM-dd: bulk imports parse one per row, and chrono's
    // format-string parser costs more than the rest of the row's checks.
    let b = t.as_bytes();
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        let num = |r: std::ops::Range<usize>| t.get(r).and_then(|x| x.parse::<u32>().ok());
        if let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) {
            return chrono::NaiveDate::from_ymd_opt(y as i32, m, d);
        }
    }
    ["%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"]
        .iter()
        .find_map(|f| chrono::NaiveDate::parse_from_str(t, f).ok())
}

/// Start of a local (GMT+8) day as a UTC instant.
pub fn local_day_start(d: chrono::NaiveDate) -> DateTime<Utc> {
    let n = d.and_hms_opt(0, 0, 0).unwrap_or_default();
    site_zone()
        .from_local_datetime(&n)
        .single()
        .map(|x| x.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_are_gmt8() {
        let t = parse_local_time("2026-03-01 23:50:00").unwrap();
        assert_eq!(db_time(t), "2026-03-01T15:50:00.000000Z");
        assert_eq!(local_time(t), "2026-03-01 23:50:00");
        assert_eq!(parse_db_time(&db_time(t)), Some(t));
        assert!(parse_local_time("2026-02-30 08:00:00").is_none());
        assert_eq!(parse_date("2026-03-02"), parse_date("20260302"));
        assert!(parse_date("2026-02-30").is_none());
        assert!(parse_date("2026-1-301").is_none());
        let d = parse_date("20260302").unwrap();
        assert_eq!(db_time(local_day_start(d)), "2026-03-01T16:00:00.000000Z");
    }
}
