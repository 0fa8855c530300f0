//! Retention (reference §6.1): the ledger and its photos are kept at least 24 months. Purging
//! older evidence is an explicit command and is itself recorded.
//!
//! Design: a purge removes photo FILES only. The events stay (they are small text and the chain
//! runs through them), and a `purge` event lists the hash of every file removed. `verify`
//! accepts a missing photo only when a purge event in the (verified) chain names it, so the
//! chain stays verifiable and a purge cannot be used to hide a swapped photo of a recent pass.

use super::events::{EventBody, Purge};
use super::store::Ledger;
use super::LedgerError;
use chrono::{DateTime, Months, Utc};
use std::collections::HashSet;

pub const RETENTION_MONTHS: u32 = 24;

/// The latest `before` a purge may use at `now`: nothing younger than 24 months goes.
pub fn latest_cutoff(now: DateTime<Utc>) -> DateTime<Utc> {
    now.checked_sub_months(Months::new(RETENTION_MONTHS))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

#[derive(Debug, Clone, Default)]
pub struct PurgeReport {
    pub seq: i64,
    pub photos_removed: usize,
}

/// Remove the photos of events that occurred before `before`, which must be at least 24
/// months before `now`. Photos also used by a younger event or by a registry record stay.
pub fn purge(
    ledger: &Ledger,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    operator: &str,
    reason: &str,
) -> Result<PurgeReport, LedgerError> {
    let limit = latest_cutoff(now);
    if before > limit {
        return Err(LedgerError::Refused(format!(
            "refusing to purge evidence younger than {RETENTION_MONTHS} months: --before must be on or before {}",
            super::local_time(limit)
        )));
    }
    if operator.trim().is_empty() || reason.trim().is_empty() {
        return Err(LedgerError::Input(
            "a purge needs the operator and the reason".into(),
        ));
    }
    let (operator, reason) = (operator.to_string(), reason.to_string());
    let (seq, photos) = ledger.transaction_blocking(move |txn| {
        let before_text = super::db_time(before);
        let mut old: Vec<String> = Vec::new();
        let mut keep: HashSet<String> = HashSet::new();
        let mut already: HashSet<String> = HashSet::new();
        {
            let conn = txn.conn();
            let mut stmt = conn.prepare(
                "SELECT occurred_at, kind, body, photos FROM events WHERE photos != '[]' OR kind = 'purge'",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let occurred: String = r.get(0)?;
                let kind: String = r.get(1)?;
                if kind == "purge" {
                    let body: String = r.get(2)?;
                    if let Ok(EventBody::Purge(p)) = serde_json::from_str(&body) {
                        already.extend(p.photos);
                    }
                }
                let photos: String = r.get(3)?;
                let list: Vec<String> = serde_json::from_str(&photos).unwrap_or_default();
                if occurred < before_text {
                    old.extend(list);
                } else {
                    keep.extend(list);
                }
            }
            for sql in [
                "SELECT license_photo FROM transport_vehicles UNION SELECT list_photo FROM transport_vehicles",
                "SELECT license_photo FROM in_plant_vehicles UNION SELECT list_photo FROM in_plant_vehicles",
                "SELECT engine_plate_photo FROM non_road_machines UNION SELECT machine_plate_photo FROM non_road_machines UNION SELECT label_photo FROM non_road_machines",
            ] {
                let mut stmt = conn.prepare(sql)?;
                let hashes = stmt.query_map([], |r| r.get::<_, Option<String>>(0))?;
                for h in hashes.flatten().flatten() {
                    keep.insert(h);
                }
            }
        }
        let mut seen = HashSet::new();
        let photos: Vec<String> = old
            .into_iter()
            .filter(|h| !keep.contains(h) && !already.contains(h) && seen.insert(h.clone()))
            .collect();
        let body = EventBody::Purge(Purge {
            before,
            operator,
            reason,
            photos: photos.clone(),
        });
        // The record comes first: a crash between commit and deletion leaves files that the
        // ledger says are gone, which verify tolerates; the reverse would look like tampering.
        let r = txn.append(&body, &[], now)?;
        Ok((r.seq, photos))
    })?;
    let mut removed = 0;
    for h in &photos {
        if ledger.photos().remove(h)? {
            removed += 1;
        }
    }
    tracing::info!(seq, photos = removed, before = %before, "retention purge recorded");
    Ok(PurgeReport {
        seq,
        photos_removed: removed,
    })
}
