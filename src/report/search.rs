//! Pass search over `pass_index`: every filter is an indexed column, newest first, paged.
//!
//! Plate exact and prefix use the `(plate, occurred_at)` index; `contains` has to scan the
//! rows of the time range (give `from`/`to` to keep it quick).

use super::params::{PassQuery, PlateMatch};
use super::rows::{from_index, Page, PassRow, ROW_COLUMNS};
use super::ReportError;
use crate::ledger::{db_time, LedgerReader};
use rusqlite::types::Value;

/// Search pass-like events (attempts, allowed or denied; manual releases; backfills).
/// Voided events are listed (flagged): an inspector must see them.
pub fn search_passes(reader: &LedgerReader, q: &PassQuery) -> Result<Page<PassRow>, ReportError> {
    let f = q.validate()?;
    let mut cond: Vec<String> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let mut push = |c: &str, v: Value, cond: &mut Vec<String>| {
        args.push(v);
        cond.push(c.replace('?', &format!("?{}", args.len())));
    };
    if let Some((plate, m)) = &f.plate {
        match m {
            PlateMatch::Exact => push("p.plate = ?", Value::Text(plate.clone()), &mut cond),
            PlateMatch::Prefix => {
                // A range on the index instead of LIKE, which SQLite will not index here.
                push("p.plate >= ?", Value::Text(plate.clone()), &mut cond);
                push(
                    "p.plate < ?",
                    Value::Text(format!("{plate}\u{10FFFF}")),
                    &mut cond,
                );
            }
            PlateMatch::Contains => push(
                "instr(p.plate, ?) > 0",
                Value::Text(plate.clone()),
                &mut cond,
            ),
        }
    }
    if let Some(c) = f.color {
        push("p.color = ?", Value::Text(c.name().into()), &mut cond);
    }
    if let Some(g) = &f.gate {
        push("p.gate = ?", Value::Text(g.clone()), &mut cond);
    }
    if let Some(l) = &f.lane {
        push("p.lane = ?", Value::Text(l.clone()), &mut cond);
    }
    if let Some(d) = f.direction {
        push("p.direction = ?", Value::Text(d.name().into()), &mut cond);
    }
    if let Some(s) = f.stage {
        push("p.stage = ?", Value::Text(s.code()), &mut cond);
    }
    if let Some(d) = f.decision {
        let name = match d {
            crate::ledger::Decision::Allow => "allow",
            crate::ledger::Decision::Deny => "deny",
        };
        push("p.decision = ?", Value::Text(name.into()), &mut cond);
    }
    if let Some(b) = f.barrier {
        let name = match b {
            crate::ledger::BarrierMode::Auto => "auto",
            crate::ledger::BarrierMode::Manual => "manual",
            crate::ledger::BarrierMode::Remote => "remote",
        };
        push("p.barrier = ?", Value::Text(name.into()), &mut cond);
    }
    if let Some(k) = f.kind {
        push("p.kind = ?", Value::Text(k.into()), &mut cond);
    }
    if let Some(t) = f.from {
        push("p.occurred_at >= ?", Value::Text(db_time(t)), &mut cond);
    }
    if let Some(t) = f.to {
        push("p.occurred_at < ?", Value::Text(db_time(t)), &mut cond);
    }
    let filter = if cond.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", cond.join(" AND "))
    };
    let conn = reader.conn();
    let total: i64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM pass_index p {filter}"))?
        .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?;
    let offset = i64::from(f.page - 1) * i64::from(f.per_page);
    let mut items = Vec::new();
    if offset < total {
        let n = args.len();
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM pass_index p JOIN events e ON e.seq = p.seq {filter}
             ORDER BY p.occurred_at DESC, p.seq DESC LIMIT ?{} OFFSET ?{}",
            n + 1,
            n + 2
        );
        let mut all = args.clone();
        all.push(Value::Integer(i64::from(f.per_page)));
        all.push(Value::Integer(offset));
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(rusqlite::params_from_iter(all.iter()))?;
        while let Some(r) = rows.next()? {
            items.push(from_index(r)?);
        }
    }
    Ok(Page {
        total: u64::try_from(total).unwrap_or(0),
        page: f.page,
        per_page: f.per_page,
        items,
    })
}
