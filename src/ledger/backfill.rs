//! `ecogate ledger backfill FILE.csv`: passes written on the paper log during an outage become
//! `backfill` events (补录) with operator, reason and the original times. They are ordinary
//! events of the chain, so the uplinks deliver them like any pass; pairing uses their
//! original time.

use super::events::{Backfill, BarrierMode, Decision, Direction, EventBody, PassAttempt};
use super::registry::{photo_root, read_confined, ImportError, RowError};
use super::store::Ledger;
use super::{parse_local_time, LedgerError};
use crate::vehicle::{EmissionStage, Fuel, PlateColor};
use chrono::{DateTime, Utc};
use ecogate_drivers::Mass;
use std::path::Path;

/// Columns of the backfill CSV: `(name, chinese name, required)`.
pub const COLUMNS: &[(&str, &str, bool)] = &[
    ("time", "通行时间", true),
    ("direction", "进出类型", true),
    ("plate", "车牌号码", true),
    ("color", "车牌颜色", true),
    ("lane", "车道", true),
    ("gate", "道口", false),
    ("barrier", "抬杆方式", false),
    ("stage", "排放阶段", false),
    ("fuel", "燃料类型", false),
    ("cargo", "运输货物名称", false),
    ("net_t", "运输量(吨)", false),
    ("note", "备注", false),
    ("sheet_photo", "纸质台账照片", false),
];

#[derive(Debug, Clone, Default)]
pub struct BackfillReport {
    pub recorded: usize,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
}

struct Row {
    line: u64,
    at: DateTime<Utc>,
    body: Backfill,
    photo: Option<Vec<u8>>,
}

/// The largest load a paper row may give, in tonnes. A road vehicle's whole gross mass is far
/// below it (the heaviest Chinese trucks are 49 t), and it fits the national 运输量 column
/// number(4,1) (reference §3.1); a bigger figure is a slip of the pen, not a load.
pub const MAX_NET_T: i64 = 200;

/// Tonnes as written on paper (`32.5`) to an exact mass.
fn parse_tonnes(s: &str) -> Option<Mass> {
    // A tonne value with up to three decimals is a whole number of kg: parse it with the kg
    // grammar and scale by 1000.
    let m: Mass = s.trim().parse().ok()?;
    m.grams.checked_mul(1000).map(Mass::from_grams)
}

/// A paper row's load: a number of tonnes with `0 < t ≤ MAX_NET_T`.
fn check_net(s: &str) -> Result<Mass, String> {
    let m = parse_tonnes(s).ok_or_else(|| {
        format!("`{s}` is not a weight in tonnes (a decimal with up to 3 places)")
    })?;
    if m.grams <= 0 || m.grams > MAX_NET_T * 1_000_000 {
        return Err(format!(
            "`{s}` t is out of range: a load is more than 0 and at most {MAX_NET_T} t"
        ));
    }
    Ok(m)
}

fn validate(
    file: &Path,
    operator: &str,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<(Vec<Row>, Vec<RowError>), LedgerError> {
    let mut rdr = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(file)
        .map_err(|e| LedgerError::Input(format!("{}: {e}", file.display())))?;
    let headers = rdr
        .headers()
        .map_err(|e| LedgerError::Input(format!("{}: header: {e}", file.display())))?
        .clone();
    let mut errors = Vec::new();
    let mut col: Vec<Option<usize>> = vec![None; COLUMNS.len()];
    for (i, h) in headers.iter().enumerate() {
        let h = h.trim_start_matches('\u{feff}').trim();
        match COLUMNS.iter().position(|(n, c, _)| *n == h || *c == h) {
            Some(ci) if col[ci].is_none() => col[ci] = Some(i),
            _ => errors.push(RowError {
                line: 1,
                column: h.to_string(),
                reason: format!(
                    "unknown or repeated column (expected: {})",
                    COLUMNS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
    for (ci, (name, _, required)) in COLUMNS.iter().enumerate() {
        if *required && col[ci].is_none() {
            errors.push(RowError {
                line: 1,
                column: name.to_string(),
                reason: "required column is missing".into(),
            });
        }
    }
    if !errors.is_empty() {
        return Ok((Vec::new(), errors));
    }
    let root = photo_root(file)?;
    let source = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                errors.push(RowError {
                    line: e.position().map(|p| p.line()).unwrap_or(0),
                    column: String::new(),
                    reason: format!("unreadable CSV: {e}"),
                });
                continue;
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().all(|c| c.is_empty()) {
            continue;
        }
        if rec.len() != headers.len() {
            errors.push(RowError {
                line,
                column: String::new(),
                reason: format!("{} fields, the header has {}", rec.len(), headers.len()),
            });
            continue;
        }
        let get = |name: &str| -> &str {
            COLUMNS
                .iter()
                .position(|c| c.0 == name)
                .and_then(|ci| col[ci])
                .and_then(|i| rec.get(i))
                .unwrap_or("")
        };
        let n_errors = errors.len();
        let mut err = |column: &str, reason: String| {
            errors.push(RowError {
                line,
                column: column.into(),
                reason,
            })
        };
        for (name, _, required) in COLUMNS {
            if *required && get(name).is_empty() {
                err(name, "required value is empty".into());
            }
        }
        let at = match parse_local_time(get("time")) {
            Some(t) if t > now => {
                err("time", format!("`{}` is in the future", get("time")));
                None
            }
            Some(t) => Some(t),
            None => {
                if !get("time").is_empty() {
                    err(
                        "time",
                        format!(
                            "`{}` is not a time (yyyy-MM-dd HH:mm:ss, GMT+8)",
                            get("time")
                        ),
                    );
                }
                None
            }
        };
        let direction = Direction::parse(get("direction"));
        if direction.is_none() && !get("direction").is_empty() {
            err(
                "direction",
                format!("`{}` is not in/out (进/出)", get("direction")),
            );
        }
        let color = get("color").parse::<PlateColor>().ok();
        if color.is_none() && !get("color").is_empty() {
            err("color", format!("unknown plate colour `{}`", get("color")));
        }
        let barrier = match get("barrier") {
            "" => Some(BarrierMode::Manual),
            s => BarrierMode::parse(s),
        };
        if barrier.is_none() {
            err(
                "barrier",
                format!("`{}` is not auto/manual/remote", get("barrier")),
            );
        }
        let stage = match get("stage") {
            "" => None,
            s => match s.parse::<EmissionStage>() {
                Ok(v) => Some(v),
                Err(e) => {
                    err("stage", e.to_string());
                    None
                }
            },
        };
        let fuel = match get("fuel") {
            "" => None,
            s => match s.parse::<Fuel>() {
                Ok(v) => Some(v),
                Err(e) => {
                    err("fuel", e.to_string());
                    None
                }
            },
        };
        let net = match get("net_t") {
            "" => None,
            s => match check_net(s) {
                Ok(m) => Some(m),
                Err(reason) => {
                    err("net_t", reason);
                    None
                }
            },
        };
        let photo = match get("sheet_photo") {
            "" => None,
            s => match read_confined(&root, s) {
                Ok(b) => Some(b),
                Err(reason) => {
                    err("sheet_photo", reason);
                    None
                }
            },
        };
        if errors.len() > n_errors {
            continue;
        }
        let (Some(at), Some(direction), Some(color), Some(barrier)) =
            (at, direction, color, barrier)
        else {
            continue;
        };
        let pass = PassAttempt {
            lane: get("lane").to_string(),
            gate: Some(get("gate").to_string()).filter(|g| !g.is_empty()),
            direction,
            plate: get("plate").to_string(),
            color,
            decision: Decision::Allow,
            reason: "paper_log".into(),
            reason_text: String::new(),
            barrier,
            opened: true,
            stage,
            fuel,
            registry: None,
            photo_kinds: if photo.is_some() {
                vec!["paper_sheet".into()]
            } else {
                vec![]
            },
            read_id: None,
            check: None,
        };
        rows.push(Row {
            line,
            at,
            body: Backfill {
                operator: operator.to_string(),
                reason: reason.to_string(),
                source: source.clone(),
                line,
                pass,
                cargo: Some(get("cargo").to_string()).filter(|c| !c.is_empty()),
                net,
                note: get("note").to_string(),
            },
            photo,
        });
    }
    Ok((rows, errors))
}

/// Record every row of a paper-log CSV as a `backfill` event, all or none.
pub fn backfill_csv(
    ledger: &Ledger,
    file: &Path,
    operator: &str,
    reason: &str,
) -> Result<BackfillReport, ImportError> {
    if operator.trim().is_empty() || reason.trim().is_empty() {
        return Err(ImportError::Ledger(LedgerError::Input(
            "a backfill needs the operator and the reason".into(),
        )));
    }
    let (rows, errors) = validate(file, operator, reason, Utc::now())?;
    if !errors.is_empty() {
        return Err(ImportError::BadRows(errors));
    }
    let mut prepared = Vec::with_capacity(rows.len());
    for r in rows {
        let photos = match &r.photo {
            Some(b) => vec![ledger.photos().put(b)?],
            None => vec![],
        };
        prepared.push((r.line, r.at, EventBody::Backfill(r.body), photos));
    }
    let n = prepared.len();
    let (first, last) = ledger.transaction_blocking(move |txn| {
        let mut first = None;
        let mut last = None;
        for (_, at, body, photos) in &prepared {
            let r = txn.append(body, photos, *at)?;
            first.get_or_insert(r.seq);
            last = Some(r.seq);
        }
        Ok((first, last))
    })?;
    tracing::info!(rows = n, file = %file.display(), operator, "paper log backfilled");
    Ok(BackfillReport {
        recorded: n,
        first_seq: first,
        last_seq: last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_loads_are_bounded() {
        assert_eq!(check_net("32.5"), Ok(Mass::from_kg(32_500)));
        assert_eq!(check_net("200"), Ok(Mass::from_kg(200_000)));
        assert_eq!(check_net("0.001"), Ok(Mass::from_kg(1)));
        for bad in ["0", "0.000", "-1", "200.001", "1e9", "9223372036854775"] {
            assert!(check_net(bad).is_err(), "{bad} must be refused");
        }
    }
}
