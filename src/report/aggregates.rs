//! Per-day aggregates of `pass_index` and `weighing_index` (see [`super::index`]): what a period
//! report reads instead of every pass. Derived like the index: not in the hash chain, dropped
//! and refilled by [`super::index::rebuild`].
//!
//! A `pass_index` row counts when it is not voided and is a pass (`is_pass`) or a denied
//! attempt; a `weighing_index` row when it is not voided and has a net mass. NULL text keys are
//! stored as `''` (the report reads NULL and `''` alike).

/// Tables; created with the index tables.
pub(crate) const TABLES: &str = "
CREATE TABLE IF NOT EXISTS pass_day_counts(
    day TEXT NOT NULL, hour INTEGER NOT NULL, gate TEXT NOT NULL, entry INTEGER NOT NULL,
    manual INTEGER NOT NULL, stage TEXT NOT NULL, fuel TEXT NOT NULL,
    passes INTEGER NOT NULL, denied INTEGER NOT NULL,
    PRIMARY KEY(day, hour, gate, entry, manual, stage, fuel)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pass_day_vehicles(
    day TEXT NOT NULL, plate TEXT NOT NULL, color TEXT NOT NULL,
    passes INTEGER NOT NULL,
    last_in_at TEXT, last_in_seq INTEGER, last_in_stage TEXT, last_in_fuel TEXT,
    PRIMARY KEY(day, plate, color)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS weighing_day_totals(
    day TEXT NOT NULL, cargo TEXT NOT NULL, stage TEXT NOT NULL, fuel TEXT NOT NULL,
    trips INTEGER NOT NULL, grams INTEGER NOT NULL,
    PRIMARY KEY(day, cargo, stage, fuel)
) WITHOUT ROWID;
";

const COUNT_KEY: &str = "day, hour, gate, entry, manual, stage, fuel";
const VEHICLE_COLUMNS: &str =
    "day, plate, color, passes, last_in_at, last_in_seq, last_in_stage, last_in_fuel";

/// Whether pass row `r` is counted at all.
fn counted(r: &str) -> String {
    format!("({r}.voided = 0 AND ({r}.is_pass <> 0 OR {r}.decision IS 'deny'))")
}

/// `pass_day_counts` key of row `r` (the columns of [`COUNT_KEY`]). A denied attempt only
/// counts per day, so its other key columns are fixed; stage and fuel matter for entries only
/// (the mix is of entries).
fn count_key(r: &str) -> String {
    let pass = format!("{r}.is_pass <> 0");
    let entry = format!("({pass} AND {r}.direction IS 'in')");
    format!(
        "{r}.day, CASE WHEN {pass} THEN {r}.hour ELSE 0 END, \
         CASE WHEN {pass} THEN coalesce({r}.gate, '') ELSE '' END, {entry}, \
         ({pass} AND ({r}.barrier IS NOT 'auto' OR {r}.kind = 'manual_release')), \
         CASE WHEN {entry} THEN coalesce({r}.stage, '') ELSE '' END, \
         CASE WHEN {entry} THEN coalesce({r}.fuel, '') ELSE '' END"
    )
}

/// `passes` and `denied` increments of a counted row `r`.
fn count_incr(r: &str) -> String {
    format!("({r}.is_pass <> 0), ({r}.is_pass = 0)")
}

fn count_add(r: &str) -> String {
    format!(
        "INSERT INTO pass_day_counts({COUNT_KEY}, passes, denied)
         SELECT {}, {} WHERE {}
         ON CONFLICT({COUNT_KEY}) DO UPDATE SET
             passes = passes + excluded.passes, denied = denied + excluded.denied;",
        count_key(r),
        count_incr(r),
        counted(r)
    )
}

fn count_remove(r: &str) -> String {
    let key = count_key(r);
    format!(
        "UPDATE pass_day_counts SET passes = passes - ({r}.is_pass <> 0),
                                    denied = denied - ({r}.is_pass = 0)
         WHERE {} AND ({COUNT_KEY}) = ({key});
         DELETE FROM pass_day_counts
         WHERE passes = 0 AND denied = 0 AND ({COUNT_KEY}) = ({key});",
        counted(r)
    )
}

/// The vehicle-day of row `r` gains it: one pass more, and its last entry when `r` is an
/// entry later (time, then seq) than the one recorded.
fn vehicle_add(r: &str) -> String {
    let entry = format!("{r}.direction IS 'in'");
    let later = "excluded.last_in_at IS NOT NULL AND (last_in_at IS NULL \
                 OR (excluded.last_in_at, excluded.last_in_seq) >= (last_in_at, last_in_seq))";
    let pick = |c: &str| format!("{c} = CASE WHEN {later} THEN excluded.{c} ELSE {c} END");
    format!(
        "INSERT INTO pass_day_vehicles({VEHICLE_COLUMNS})
         SELECT {r}.day, coalesce({r}.plate, ''), coalesce({r}.color, ''), 1,
                CASE WHEN {entry} THEN {r}.occurred_at END, CASE WHEN {entry} THEN {r}.seq END,
                CASE WHEN {entry} THEN coalesce({r}.stage, '') END,
                CASE WHEN {entry} THEN coalesce({r}.fuel, '') END
         WHERE {r}.voided = 0 AND {r}.is_pass <> 0
         ON CONFLICT(day, plate, color) DO UPDATE SET passes = passes + 1, {}, {}, {}, {};",
        pick("last_in_at"),
        pick("last_in_seq"),
        pick("last_in_stage"),
        pick("last_in_fuel"),
    )
}

/// Recount the vehicle-day of row `r` from `pass_index` (after a correction moved a pass in or
/// out of it). `p.plate = P OR (P = '' AND p.plate IS NULL)` lets the plate index serve.
fn vehicle_recount(r: &str) -> String {
    let (day, plate, color) = (
        format!("{r}.day"),
        format!("coalesce({r}.plate, '')"),
        format!("coalesce({r}.color, '')"),
    );
    let matching = format!(
        "p.day = {day} AND (p.plate = {plate} OR ({plate} = '' AND p.plate IS NULL))
         AND coalesce(p.color, '') = {color} AND p.is_pass <> 0 AND p.voided = 0"
    );
    format!(
        "DELETE FROM pass_day_vehicles WHERE day = {day} AND plate = {plate} AND color = {color};
         INSERT INTO pass_day_vehicles({VEHICLE_COLUMNS})
         SELECT {day}, {plate}, {color}, c.n, l.occurred_at, l.seq, l.stage, l.fuel
         FROM (SELECT count(*) AS n FROM pass_index p WHERE {matching}) AS c
         LEFT JOIN (SELECT p.occurred_at, p.seq, coalesce(p.stage, '') AS stage,
                           coalesce(p.fuel, '') AS fuel
                    FROM pass_index p WHERE {matching} AND p.direction = 'in'
                    ORDER BY p.occurred_at DESC, p.seq DESC LIMIT 1) AS l
         WHERE c.n > 0;"
    )
}

fn weighing_counted(r: &str) -> String {
    format!("({r}.voided = 0 AND {r}.net_g IS NOT NULL)")
}

fn weighing_key(r: &str) -> String {
    format!("{r}.day, coalesce({r}.cargo, ''), coalesce({r}.stage, ''), coalesce({r}.fuel, '')")
}

/// Triggers; created after the tables are filled (by [`fill`] in a rebuild), so a rebuild
/// does not count twice.
pub(crate) fn triggers() -> String {
    format!(
        "CREATE TRIGGER IF NOT EXISTS pass_index_agg_insert AFTER INSERT ON pass_index
         WHEN {counted_new}
         BEGIN
             {add_new}
             {vehicle_new}
         END;
         CREATE TRIGGER IF NOT EXISTS pass_index_agg_update AFTER UPDATE ON pass_index
         BEGIN
             {remove_old}
             {add_new}
             {recount_old}
             {recount_new}
         END;
         CREATE TRIGGER IF NOT EXISTS weighing_index_agg_insert AFTER INSERT ON weighing_index
         WHEN {w_new}
         BEGIN
             INSERT INTO weighing_day_totals(day, cargo, stage, fuel, trips, grams)
             VALUES ({w_key_new}, 1, NEW.net_g)
             ON CONFLICT(day, cargo, stage, fuel) DO UPDATE SET
                 trips = trips + 1, grams = grams + excluded.grams;
         END;
         CREATE TRIGGER IF NOT EXISTS weighing_index_agg_update AFTER UPDATE ON weighing_index
         BEGIN
             UPDATE weighing_day_totals SET trips = trips - 1, grams = grams - OLD.net_g
             WHERE {w_old} AND (day, cargo, stage, fuel) = ({w_key_old});
             DELETE FROM weighing_day_totals
             WHERE trips = 0 AND (day, cargo, stage, fuel) = ({w_key_old});
             INSERT INTO weighing_day_totals(day, cargo, stage, fuel, trips, grams)
             SELECT {w_key_new}, 1, NEW.net_g WHERE {w_new}
             ON CONFLICT(day, cargo, stage, fuel) DO UPDATE SET
                 trips = trips + 1, grams = grams + excluded.grams;
         END;
        ",
        counted_new = counted("NEW"),
        add_new = count_add("NEW"),
        vehicle_new = vehicle_add("NEW"),
        remove_old = count_remove("OLD"),
        recount_old = vehicle_recount("OLD"),
        recount_new = vehicle_recount("NEW"),
        w_new = weighing_counted("NEW"),
        w_old = weighing_counted("OLD"),
        w_key_new = weighing_key("NEW"),
        w_key_old = weighing_key("OLD"),
    )
}

/// Fill the (empty) aggregate tables from the index tables with `GROUP BY`: the same figures
/// as the triggers, computed the other way round.
pub(crate) fn fill(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "INSERT INTO pass_day_counts({COUNT_KEY}, passes, denied)
         SELECT {key}, sum({pass}), sum({denied}) FROM pass_index p WHERE {counted}
         GROUP BY 1, 2, 3, 4, 5, 6, 7;
         INSERT INTO pass_day_vehicles({VEHICLE_COLUMNS})
         SELECT c.day, c.plate, c.color, c.n, l.occurred_at, l.seq, l.stage, l.fuel
         FROM (SELECT day, coalesce(plate, '') AS plate, coalesce(color, '') AS color,
                      count(*) AS n
               FROM pass_index WHERE voided = 0 AND is_pass <> 0 GROUP BY 1, 2, 3) AS c
         LEFT JOIN (
             SELECT day, plate, color, occurred_at, seq, stage, fuel FROM (
                 SELECT day, coalesce(plate, '') AS plate, coalesce(color, '') AS color,
                        occurred_at, seq, coalesce(stage, '') AS stage,
                        coalesce(fuel, '') AS fuel,
                        row_number() OVER (PARTITION BY day, coalesce(plate, ''),
                                                        coalesce(color, '')
                                           ORDER BY occurred_at DESC, seq DESC) AS rn
                 FROM pass_index
                 WHERE voided = 0 AND is_pass <> 0 AND direction = 'in')
             WHERE rn = 1) AS l
           ON l.day = c.day AND l.plate = c.plate AND l.color = c.color;
         INSERT INTO weighing_day_totals(day, cargo, stage, fuel, trips, grams)
         SELECT {w_key}, count(*), sum(w.net_g) FROM weighing_index w WHERE {w_counted}
         GROUP BY 1, 2, 3, 4;",
        key = count_key("p"),
        pass = "p.is_pass <> 0",
        denied = "p.is_pass = 0",
        counted = counted("p"),
        w_key = weighing_key("w"),
        w_counted = weighing_counted("w"),
    ))
}
