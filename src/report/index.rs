//! `pass_index` and `weighing_index`: flat, derived tables kept in step with `events` by
//! `AFTER INSERT` triggers, so searches and reports read indexed columns instead of decoding
//! a million JSON bodies. They are not part of the hash chain (`ledger verify` reads `events`
//! only) and can be dropped and rebuilt from the events at any time ([`rebuild`]).
//!
//! Corrections are applied by a trigger too (plate, colour, direction, cargo, net, void), so a
//! search finds a pass under its corrected plate, like the views do.
//!
//! Per-day aggregates sit on top of them, so a period report reads a few rows per day instead
//! of every pass (docs/reports.md, "How the report is computed"):
//!
//! * `pass_day_counts`: passes by day × local hour × gate × entry/exit × manual-or-remote ×
//!   entry stage × entry fuel, and denied attempts by day;
//! * `pass_day_vehicles`: per day and plate + colour, its passes and its last entry (time, seq,
//!   stage, fuel), for distinct vehicles per day and "the stage of a vehicle's last entry";
//! * `weighing_day_totals`: weighed trips and net grams by day × cargo × stage × fuel.
//!
//! Triggers on `pass_index` / `weighing_index` keep them: an insert adds to them, an update (a
//! correction: plate, colour, direction, cargo, net, void) takes the old row out and puts the
//! new one in; a vehicle-day whose pass changed is recounted from `pass_index`. [`rebuild`]
//! fills them with `GROUP BY` instead, an independent computation the tests compare with.

use super::aggregates;
use crate::ledger::LedgerError;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;

/// Bumped when the tables or triggers change: a ledger whose marker differs is rebuilt at open.
pub const VERSION: &str = "3";
const MARKER: &str = "pass_index_version";

/// Column expressions of a pass row, over the body of event `{e}`; `{p}` is the JSON path of
/// the pass inside the body (`$` for pass attempts and releases, `$.pass` for backfills).
const PASS_COLUMNS: &str = "seq, occurred_at, day, hour, kind, lane, gate, direction, plate, \
     color, decision, reason, barrier, stage, fuel, registry, operator, is_pass";

fn pass_select(e: &str, kind: &str) -> String {
    let common = |p: &str| {
        format!(
            "{e}.seq, {e}.occurred_at, date({e}.occurred_at, '+8 hours'), \
             CAST(strftime('%H', {e}.occurred_at, '+8 hours') AS INTEGER), {e}.kind, \
             json_extract({e}.body, '{p}.lane'), json_extract({e}.body, '{p}.gate'), \
             json_extract({e}.body, '{p}.direction'), json_extract({e}.body, '{p}.plate'), \
             json_extract({e}.body, '{p}.color')"
        )
    };
    match kind {
        "pass_attempt" => format!(
            "{}, json_extract({e}.body, '$.decision'), json_extract({e}.body, '$.reason'), \
             json_extract({e}.body, '$.barrier'), json_extract({e}.body, '$.stage'), \
             json_extract({e}.body, '$.fuel'), json_extract({e}.body, '$.registry'), NULL, \
             coalesce(json_extract({e}.body, '$.opened'), 0)",
            common("$")
        ),
        // A release is a person's decision, not the policy's: no decision value.
        "manual_release" => format!(
            "{}, NULL, json_extract({e}.body, '$.reason'), json_extract({e}.body, '$.mode'), \
             NULL, NULL, NULL, json_extract({e}.body, '$.operator'), \
             json_extract({e}.body, '$.plate') IS NOT NULL",
            common("$")
        ),
        _ => format!(
            "{}, json_extract({e}.body, '$.pass.decision'), json_extract({e}.body, '$.reason'), \
             json_extract({e}.body, '$.pass.barrier'), json_extract({e}.body, '$.pass.stage'), \
             json_extract({e}.body, '$.pass.fuel'), json_extract({e}.body, '$.pass.registry'), \
             json_extract({e}.body, '$.operator'), 1",
            common("$.pass")
        ),
    }
}

const WEIGHING_COLUMNS: &str =
    "seq, occurred_at, day, kind, plate, color, cargo, net_g, direction, pass_seq, stage, fuel";

/// Seq named by an event id `<instance>-<seq>` (the instance part has no dash).
fn id_seq(expr: &str) -> String {
    format!("CAST(substr({expr}, instr({expr}, '-') + 1) AS INTEGER)")
}

/// The pass a weighing belongs to: the one it names, else the latest pass of the same plate
/// and colour at or before it (the lane weighs after the entry pass).
fn weighing_pass(e: &str) -> String {
    let named = id_seq(&format!("json_extract({e}.body, '$.pass_ref')"));
    format!(
        "coalesce((SELECT p.seq FROM pass_index p JOIN events x ON x.seq = p.seq \
            WHERE p.seq = {named} AND x.id = json_extract({e}.body, '$.pass_ref')), \
         (SELECT p.seq FROM pass_index p WHERE p.plate = json_extract({e}.body, '$.plate') \
            AND p.color = json_extract({e}.body, '$.color') AND p.is_pass = 1 \
            AND p.occurred_at <= {e}.occurred_at ORDER BY p.occurred_at DESC LIMIT 1))"
    )
}

/// Grams beyond this (a million tonnes) are no weighing: such a value is left out of the index
/// instead of making SQLite's integer arithmetic (`abs`, `-`, the day sums) overflow, which
/// would fail the trigger and with it the append of the event itself.
const MAX_INDEXED_GRAMS: i64 = 1_000_000_000_000;

/// `x` when it is a plausible mass in grams, else NULL.
fn bounded_grams(x: &str) -> String {
    format!("(CASE WHEN ({x}) BETWEEN -{MAX_INDEXED_GRAMS} AND {MAX_INDEXED_GRAMS} THEN ({x}) END)")
}

/// `abs(x)` when `x` is a plausible mass in grams, else NULL.
fn plausible_grams(x: &str) -> String {
    format!("abs({})", bounded_grams(x))
}

fn weighing_select(e: &str) -> String {
    let pass = weighing_pass(e);
    let net = plausible_grams(&format!("json_extract({e}.body, '$.net')"));
    let gross = bounded_grams(&format!("json_extract({e}.body, '$.gross')"));
    let tare = bounded_grams(&format!("json_extract({e}.body, '$.tare')"));
    // A net that is given but absurd stays out; gross − tare stands in only for a missing net.
    format!(
        "{e}.seq, {e}.occurred_at, date({e}.occurred_at, '+8 hours'), {e}.kind, \
         json_extract({e}.body, '$.plate'), json_extract({e}.body, '$.color'), \
         json_extract({e}.body, '$.cargo'), \
         (CASE WHEN json_extract({e}.body, '$.net') IS NOT NULL THEN {net} \
               ELSE abs({gross} - {tare}) END), \
         json_extract({e}.body, '$.direction'), {pass}, \
         (SELECT p.stage FROM pass_index p WHERE p.seq = {pass}), \
         (SELECT p.fuel FROM pass_index p WHERE p.seq = {pass})"
    )
}

/// A backfilled pass that carries a net mass is a weighed trip of its own.
fn backfill_weighing_select(e: &str) -> String {
    let net = plausible_grams(&format!("json_extract({e}.body, '$.net')"));
    format!(
        "{e}.seq, {e}.occurred_at, date({e}.occurred_at, '+8 hours'), {e}.kind, \
         json_extract({e}.body, '$.pass.plate'), json_extract({e}.body, '$.pass.color'), \
         json_extract({e}.body, '$.cargo'), {net}, \
         json_extract({e}.body, '$.pass.direction'), {e}.seq, \
         json_extract({e}.body, '$.pass.stage'), json_extract({e}.body, '$.pass.fuel')"
    )
}

/// Apply the correction whose body is `body` (an SQL expression) to the derived rows.
fn correction_sql(body: &str) -> String {
    let target = id_seq(&format!("json_extract({body}, '$.refs')"));
    // The id must match too: a ref from another ledger instance names nothing here.
    let guard = format!(
        "EXISTS (SELECT 1 FROM events x WHERE x.seq = {target} \
         AND x.id = json_extract({body}, '$.refs'))"
    );
    let net = plausible_grams(&format!("json_extract({body}, '$.net')"));
    format!(
        "UPDATE pass_index SET \
            plate = coalesce(json_extract({body}, '$.plate'), plate), \
            color = coalesce(json_extract({body}, '$.color'), color), \
            direction = coalesce(json_extract({body}, '$.direction'), direction), \
            voided = max(voided, coalesce(json_extract({body}, '$.void'), 0)), \
            corrected = 1 \
         WHERE seq = {target} AND {guard};
         UPDATE weighing_index SET \
            cargo = coalesce(json_extract({body}, '$.cargo'), cargo), \
            net_g = coalesce({net}, net_g), \
            voided = max(voided, coalesce(json_extract({body}, '$.void'), 0)) \
         WHERE seq = {target} AND {guard};"
    )
}

/// Tables, indexes and triggers; executed by `Ledger::open` after the event schema.
pub fn schema() -> String {
    let mut s = base_schema();
    s.push_str(&aggregates::triggers());
    s
}

/// [`schema`] without the aggregate triggers (a rebuild fills the aggregates first).
fn base_schema() -> String {
    let mut s = String::from(
        "CREATE TABLE IF NOT EXISTS pass_index(
            seq         INTEGER PRIMARY KEY,
            occurred_at TEXT NOT NULL,
            day         TEXT NOT NULL,
            hour        INTEGER NOT NULL,
            kind        TEXT NOT NULL,
            lane TEXT, gate TEXT, direction TEXT, plate TEXT, color TEXT, decision TEXT,
            reason TEXT, barrier TEXT, stage TEXT, fuel TEXT, registry TEXT, operator TEXT,
            is_pass     INTEGER NOT NULL,
            voided      INTEGER NOT NULL DEFAULT 0,
            corrected   INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS pass_index_plate ON pass_index(plate, occurred_at);
        CREATE INDEX IF NOT EXISTS pass_index_time ON pass_index(occurred_at);
        CREATE INDEX IF NOT EXISTS pass_index_gate ON pass_index(gate, occurred_at);
        CREATE TABLE IF NOT EXISTS weighing_index(
            seq         INTEGER PRIMARY KEY,
            occurred_at TEXT NOT NULL,
            day         TEXT NOT NULL,
            kind        TEXT NOT NULL,
            plate TEXT, color TEXT, cargo TEXT, net_g INTEGER, direction TEXT,
            pass_seq INTEGER, stage TEXT, fuel TEXT,
            voided      INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS weighing_index_time ON weighing_index(occurred_at);
        ",
    );
    for kind in ["pass_attempt", "manual_release", "backfill"] {
        s.push_str(&format!(
            "CREATE TRIGGER IF NOT EXISTS pass_index_{kind} AFTER INSERT ON events
             WHEN NEW.kind = '{kind}'
             BEGIN
                 INSERT OR REPLACE INTO pass_index({PASS_COLUMNS}) SELECT {};
             END;\n",
            pass_select("NEW", kind)
        ));
    }
    s.push_str(&format!(
        "CREATE TRIGGER IF NOT EXISTS weighing_index_weighing AFTER INSERT ON events
         WHEN NEW.kind = 'weighing'
         BEGIN
             INSERT OR REPLACE INTO weighing_index({WEIGHING_COLUMNS}) SELECT {};
         END;
         CREATE TRIGGER IF NOT EXISTS weighing_index_backfill AFTER INSERT ON events
         WHEN NEW.kind = 'backfill' AND json_extract(NEW.body, '$.net') IS NOT NULL
         BEGIN
             INSERT OR REPLACE INTO weighing_index({WEIGHING_COLUMNS}) SELECT {};
         END;
         CREATE TRIGGER IF NOT EXISTS pass_index_correction AFTER INSERT ON events
         WHEN NEW.kind = 'correction'
         BEGIN
             {}
         END;\n",
        weighing_select("NEW"),
        backfill_weighing_select("NEW"),
        correction_sql("NEW.body"),
    ));
    s.push_str(aggregates::TABLES);
    s
}

/// Create the tables and triggers, and fill them from the events when this ledger was written
/// before they existed (or by another index version). Returns whether it rebuilt.
pub fn ensure(conn: &Connection) -> Result<bool, LedgerError> {
    let current: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [MARKER], |r| {
            r.get(0)
        })
        .optional()?;
    if current.as_deref() == Some(VERSION) {
        conn.execute_batch(&schema())?;
        return Ok(false);
    }
    rebuild(conn)?;
    Ok(true)
}

/// Drop the derived tables and their triggers, create them again and fill them from `events`
/// in seq order — all in one `BEGIN IMMEDIATE`, so a writer in another process waits and no
/// event slips between the fill and the triggers.
pub fn rebuild(conn: &Connection) -> Result<(), LedgerError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let triggers: Vec<String> = {
        let mut stmt = tx.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'
               AND (name LIKE 'pass_index_%' OR name LIKE 'weighing_index_%')",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for t in triggers {
        tx.execute_batch(&format!("DROP TRIGGER \"{}\";", t.replace('"', "")))?;
    }
    tx.execute_batch(
        "DROP TABLE IF EXISTS pass_index; DROP TABLE IF EXISTS weighing_index;
         DROP TABLE IF EXISTS pass_day_counts; DROP TABLE IF EXISTS pass_day_vehicles;
         DROP TABLE IF EXISTS weighing_day_totals;",
    )?;
    tx.execute_batch(&base_schema())?;
    for kind in ["pass_attempt", "manual_release", "backfill"] {
        tx.execute(
            &format!(
                "INSERT INTO pass_index({PASS_COLUMNS}) SELECT {} FROM events e
                 WHERE e.kind = ?1 ORDER BY e.seq",
                pass_select("e", kind)
            ),
            [kind],
        )?;
    }
    tx.execute(
        &format!(
            "INSERT INTO weighing_index({WEIGHING_COLUMNS}) SELECT {} FROM events e
             WHERE e.kind = 'weighing' ORDER BY e.seq",
            weighing_select("e")
        ),
        [],
    )?;
    tx.execute(
        &format!(
            "INSERT INTO weighing_index({WEIGHING_COLUMNS}) SELECT {} FROM events e
             WHERE e.kind = 'backfill' AND json_extract(e.body, '$.net') IS NOT NULL
             ORDER BY e.seq",
            backfill_weighing_select("e")
        ),
        [],
    )?;
    // Corrections in ledger order: a later one overrides an earlier one, as in the views.
    let seqs: Vec<i64> = {
        let mut stmt =
            tx.prepare("SELECT seq FROM events WHERE kind = 'correction' ORDER BY seq")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let sql = correction_sql("(SELECT body FROM events WHERE seq = ?1)");
    for seq in seqs {
        // Two statements, both bound to the correction's seq.
        for stmt in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            tx.execute(stmt, [seq])?;
        }
    }
    aggregates::fill(&tx)?;
    tx.execute_batch(&aggregates::triggers())?;
    tx.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)",
        [MARKER, VERSION],
    )?;
    tx.commit()?;
    tracing::info!(version = VERSION, "pass index rebuilt from the events");
    Ok(())
}

/// [`ensure`] on the ledger in `data_dir` without starting a writer (the report commands run
/// it first, so a ledger last written by an older version can be searched).
pub fn ensure_at(data_dir: &Path) -> Result<bool, LedgerError> {
    let path = data_dir.join(crate::ledger::DB_FILE);
    if !path.exists() {
        return Err(LedgerError::Io {
            path,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no ledger database here"),
        });
    }
    let conn = crate::ledger::store::open_rw(&path)?;
    ensure(&conn)
}
