//! The plant's registries (一车一档): transport vehicles, in-plant vehicles and non-road
//! machinery, kept in SQLite next to the event log. Every change is also a `registry_change`
//! event in the chain, committed in the same transaction, so the tables can be rebuilt from
//! the ledger and an edit behind its back shows up against the history.

use super::events::{EventBody, RegistryChange, RegistryOp};
use super::store::{open_ro, Ledger};
use super::{chain, db_time, parse_date, LedgerError};
use crate::registry::VehicleRegistry;
use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use chrono::Utc;
use ecogate_drivers::Mass;
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS transport_vehicles(
    plate TEXT NOT NULL, color TEXT NOT NULL, vin TEXT NOT NULL, engine_no TEXT NOT NULL,
    vehicle_type TEXT NOT NULL, use_character TEXT, fuel TEXT NOT NULL, stage TEXT NOT NULL,
    stage_basis TEXT, registered_on TEXT NOT NULL, fleet TEXT NOT NULL, brand_model TEXT,
    obd_online TEXT, license_photo TEXT, list_photo TEXT,
    updated_at TEXT NOT NULL, event_seq INTEGER NOT NULL,
    PRIMARY KEY(plate, color)
);
CREATE TABLE IF NOT EXISTS in_plant_vehicles(
    code TEXT NOT NULL PRIMARY KEY, plate TEXT, color TEXT, vin TEXT NOT NULL, engine_no TEXT,
    vehicle_type TEXT, fuel TEXT NOT NULL, stage TEXT NOT NULL, registered_on TEXT,
    brand_model TEXT, owner TEXT, license_photo TEXT, list_photo TEXT,
    updated_at TEXT NOT NULL, event_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS in_plant_plate ON in_plant_vehicles(plate);
CREATE TABLE IF NOT EXISTS non_road_machines(
    reg_code TEXT NOT NULL PRIMARY KEY, pin TEXT, machine_code TEXT, machine_kind TEXT,
    model TEXT NOT NULL, fuel TEXT NOT NULL, stage TEXT NOT NULL, produced_on TEXT,
    engine_model TEXT, engine_no TEXT, engine_maker TEXT, engine_power_kw TEXT, owner TEXT,
    plate TEXT, engine_plate_photo TEXT, machine_plate_photo TEXT, label_photo TEXT,
    updated_at TEXT NOT NULL, event_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS non_road_plate ON non_road_machines(plate);
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Text(usize),
    Plate,
    Color,
    Vin,
    Fuel,
    /// Road stages 0–7, D, X.
    Stage,
    /// Non-road stages 0–4, D, X.
    NonRoadStage,
    Date,
    Bool01,
    Letter,
    Kw,
    /// A path (relative to the CSV file) of a photo to store.
    Photo,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    chinese: &'static str,
    required: bool,
    check: Check,
}

const fn f(name: &'static str, chinese: &'static str, required: bool, check: Check) -> Field {
    Field {
        name,
        chinese,
        required,
        check,
    }
}

const TRANSPORT: &[Field] = &[
    f("plate", "车牌号码", true, Check::Plate),
    f("color", "车牌颜色", true, Check::Color),
    f("vin", "车辆识别代号", true, Check::Vin),
    f("engine_no", "发动机号码", true, Check::Text(100)),
    f("vehicle_type", "车辆类型", true, Check::Text(3)),
    f("use_character", "使用性质", false, Check::Letter),
    f("fuel", "燃料类型", true, Check::Fuel),
    f("stage", "排放阶段", true, Check::Stage),
    f("stage_basis", "排放阶段依据", false, Check::Text(200)),
    f("registered_on", "注册日期", true, Check::Date),
    f("fleet", "车队名称", true, Check::Text(100)),
    f("brand_model", "品牌型号", false, Check::Text(100)),
    f("obd_online", "联网状态", false, Check::Bool01),
    f("license_photo", "行驶证", false, Check::Photo),
    f("list_photo", "随车清单", false, Check::Photo),
];

const IN_PLANT: &[Field] = &[
    f("code", "登记编码", true, Check::Text(32)),
    f("plate", "车牌号码", false, Check::Plate),
    f("color", "车牌颜色", false, Check::Color),
    f("vin", "车辆识别代号", true, Check::Vin),
    f("engine_no", "发动机号码", false, Check::Text(100)),
    f("vehicle_type", "车辆类型", false, Check::Text(3)),
    f("fuel", "燃料类型", true, Check::Fuel),
    f("stage", "排放阶段", true, Check::Stage),
    f("registered_on", "注册日期", false, Check::Date),
    f("brand_model", "品牌型号", false, Check::Text(100)),
    f("owner", "所有人", false, Check::Text(100)),
    f("license_photo", "行驶证", false, Check::Photo),
    f("list_photo", "随车清单", false, Check::Photo),
];

const NON_ROAD: &[Field] = &[
    f("reg_code", "环保登记编码", true, Check::Text(32)),
    f("pin", "产品识别码", false, Check::Text(64)),
    f("machine_code", "机械环保代码", false, Check::Text(64)),
    f("machine_kind", "机械种类", false, Check::Text(32)),
    f("model", "机械型号", true, Check::Text(100)),
    f("fuel", "燃料类型", true, Check::Fuel),
    f("stage", "排放阶段", true, Check::NonRoadStage),
    f("produced_on", "生产日期", false, Check::Date),
    f("engine_model", "发动机型号", false, Check::Text(100)),
    f("engine_no", "发动机编号", false, Check::Text(100)),
    f("engine_maker", "发动机生产厂", false, Check::Text(100)),
    f("engine_power_kw", "发动机功率", false, Check::Kw),
    f("owner", "所有人", false, Check::Text(100)),
    f("plate", "车牌号码", false, Check::Plate),
    f("engine_plate_photo", "发动机铭牌", false, Check::Photo),
    f("machine_plate_photo", "机械铭牌", false, Check::Photo),
    f("label_photo", "环保信息标签", false, Check::Photo),
];

fn spec(kind: RegistryKind) -> (&'static str, &'static [Field], &'static [&'static str]) {
    match kind {
        RegistryKind::Transport => ("transport_vehicles", TRANSPORT, &["plate", "color"]),
        RegistryKind::InPlant => ("in_plant_vehicles", IN_PLANT, &["code"]),
        RegistryKind::NonRoad => ("non_road_machines", NON_ROAD, &["reg_code"]),
    }
}

/// The CSV columns of a registry, in order: `(name, chinese name, required)`.
pub fn columns(kind: RegistryKind) -> Vec<(&'static str, &'static str, bool)> {
    spec(kind)
        .1
        .iter()
        .map(|f| (f.name, f.chinese, f.required))
        .collect()
}

pub fn parse_kind(s: &str) -> Option<RegistryKind> {
    match s.trim() {
        "transport" | "transport_vehicles" | "进出厂运输车辆" => {
            Some(RegistryKind::Transport)
        }
        "in_plant" | "in-plant" | "inplant" | "厂内运输车辆" => Some(RegistryKind::InPlant),
        "non_road" | "non-road" | "nonroad" | "非道路移动机械" => {
            Some(RegistryKind::NonRoad)
        }
        _ => None,
    }
}

/// One bad cell or row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line in the file (the header is line 1).
    pub line: u64,
    /// Column name as in the header, or empty for a whole-row problem.
    pub column: String,
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column.is_empty() {
            write!(f, "line {}: {}", self.line, self.reason)
        } else {
            write!(
                f,
                "line {}, column `{}`: {}",
                self.line, self.column, self.reason
            )
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub imported: usize,
    /// Rows left out (only with `skip_bad`).
    pub skipped: usize,
    pub errors: Vec<RowError>,
    /// Seq of the last registry_change event written.
    pub last_seq: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{} bad row(s), nothing imported (use --skip-bad to import the good rows):\n{}", .0.len(), join(.0))]
    BadRows(Vec<RowError>),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

fn join(errs: &[RowError]) -> String {
    errs.iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A validated row: one normalised value per field of the spec (None = empty).
struct GoodRow {
    line: u64,
    values: Vec<Option<String>>,
    /// Photo bytes to store, by field index.
    photos: Vec<(usize, Vec<u8>)>,
}

fn check_value(check: Check, raw: &str, base: &Path) -> Result<(String, Option<Vec<u8>>), String> {
    let v = raw.trim();
    let ok = |s: String| Ok((s, None));
    match check {
        Check::Text(max) => {
            if v.chars().count() > max {
                Err(format!("longer than {max} characters"))
            } else {
                ok(v.to_string())
            }
        }
        Check::Plate => {
            let n = v.chars().count();
            if !(5..=10).contains(&n) || v.chars().any(|c| c.is_whitespace()) {
                Err(format!(
                    "`{v}` is not a plate number (5–10 characters, no spaces)"
                ))
            } else {
                ok(v.to_string())
            }
        }
        Check::Color => v
            .parse::<PlateColor>()
            .map(|c| (c.name().to_string(), None))
            .map_err(|e| e.to_string()),
        Check::Vin => {
            if v.len() == 17 && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                ok(v.to_ascii_uppercase())
            } else {
                Err(format!(
                    "`{v}` is not a VIN (exactly 17 letters and digits)"
                ))
            }
        }
        Check::Fuel => v
            .parse::<Fuel>()
            .map(|f| (f.code().to_string(), None))
            .map_err(|e| e.to_string()),
        Check::Stage => v
            .parse::<EmissionStage>()
            .map(|s| (s.code(), None))
            .map_err(|e| e.to_string()),
        Check::NonRoadStage => match v.parse::<EmissionStage>() {
            Ok(EmissionStage::China(n)) if n > 4 => Err(format!(
                "non-road machinery stages are 0–4, D or X, not `{v}`"
            )),
            Ok(s) => ok(s.code()),
            Err(e) => Err(e.to_string()),
        },
        Check::Date => parse_date(v)
            // NaiveDate's Display is yyyy-MM-dd, and much cheaper than a format string.
            .map(|d| (d.to_string(), None))
            .ok_or_else(|| format!("`{v}` is not a date (yyyy-MM-dd)")),
        Check::Bool01 => match v {
            "0" | "否" | "未联网" | "false" => ok("0".into()),
            "1" | "是" | "已联网" | "true" => ok("1".into()),
            _ => Err(format!("`{v}` is not 0 or 1")),
        },
        Check::Letter => {
            if v.len() == 1 && v.bytes().all(|b| b.is_ascii_alphabetic()) {
                ok(v.to_ascii_uppercase())
            } else {
                Err(format!("`{v}` is not a single-letter code"))
            }
        }
        // Same grammar as a kg weight: a decimal with up to three fractional digits.
        Check::Kw => v
            .parse::<Mass>()
            .map(|m| (m.to_string(), None))
            .map_err(|_| format!("`{v}` is not a power in kW (a decimal number)")),
        Check::Photo => {
            let p = base.join(v);
            std::fs::read(&p)
                .map(|bytes| (String::new(), Some(bytes)))
                .map_err(|e| format!("cannot read photo {}: {e}", p.display()))
        }
    }
}

/// Validate a CSV file against the spec; returns good rows and row errors.
fn validate(
    kind: RegistryKind,
    file: &Path,
) -> Result<(Vec<GoodRow>, Vec<RowError>, usize), LedgerError> {
    let (_, fields, key) = spec(kind);
    let base = file.parent().unwrap_or(Path::new(".")).to_path_buf();
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
    // Column index in the file for each spec field.
    let mut col_of: Vec<Option<usize>> = vec![None; fields.len()];
    for (i, h) in headers.iter().enumerate() {
        let h = h.trim_start_matches('\u{feff}').trim();
        match fields.iter().position(|f| f.name == h || f.chinese == h) {
            Some(fi) if col_of[fi].is_none() => col_of[fi] = Some(i),
            Some(_) => errors.push(RowError {
                line: 1,
                column: h.to_string(),
                reason: "column appears twice".into(),
            }),
            None => errors.push(RowError {
                line: 1,
                column: h.to_string(),
                reason: format!(
                    "unknown column (expected: {})",
                    fields.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                ),
            }),
        }
    }
    for (fi, f) in fields.iter().enumerate() {
        if f.required && col_of[fi].is_none() {
            errors.push(RowError {
                line: 1,
                column: f.name.to_string(),
                reason: "required column is missing".into(),
            });
        }
    }
    if !errors.is_empty() {
        return Ok((Vec::new(), errors, 0));
    }
    let key_idx: Vec<usize> = key
        .iter()
        .filter_map(|k| fields.iter().position(|f| f.name == *k))
        .collect();
    let mut seen = std::collections::HashMap::<Vec<String>, u64>::new();
    let mut good = Vec::new();
    let mut total = 0usize;
    let mut rec = csv::StringRecord::new();
    loop {
        match rdr.read_record(&mut rec) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                errors.push(RowError {
                    line,
                    column: String::new(),
                    reason: format!("unreadable CSV: {e}"),
                });
                total += 1;
                continue;
            }
        }
        total += 1;
        let line = rec.position().map(|p| p.line()).unwrap_or(total as u64 + 1);
        if rec.iter().all(|c| c.is_empty()) {
            total -= 1;
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
        let mut row_ok = true;
        let mut values = vec![None; fields.len()];
        let mut photos = Vec::new();
        for (fi, f) in fields.iter().enumerate() {
            let raw = col_of[fi].and_then(|c| rec.get(c)).unwrap_or("");
            if raw.trim().is_empty() {
                if f.required {
                    errors.push(RowError {
                        line,
                        column: f.name.into(),
                        reason: "required value is empty".into(),
                    });
                    row_ok = false;
                }
                continue;
            }
            match check_value(f.check, raw, &base) {
                Ok((v, bytes)) => {
                    if let Some(b) = bytes {
                        photos.push((fi, b));
                    } else {
                        values[fi] = Some(v);
                    }
                }
                Err(reason) => {
                    errors.push(RowError {
                        line,
                        column: f.name.into(),
                        reason,
                    });
                    row_ok = false;
                }
            }
        }
        if kind == RegistryKind::InPlant && values[1].is_some() != values[2].is_some() {
            errors.push(RowError {
                line,
                column: "color".into(),
                reason: "plate and colour go together: give both or neither".into(),
            });
            row_ok = false;
        }
        if !row_ok {
            continue;
        }
        let k: Vec<String> = key_idx
            .iter()
            .map(|i| values[*i].clone().unwrap_or_default())
            .collect();
        if let Some(first) = seen.insert(k.clone(), line) {
            errors.push(RowError {
                line,
                column: key.join("+"),
                reason: format!("`{}` already appears on line {first}", k.join(" ")),
            });
            continue;
        }
        good.push(GoodRow {
            line,
            values,
            photos,
        });
    }
    Ok((good, errors, total))
}

/// `ecogate registry import KIND FILE.csv`: all rows or none (unless `skip_bad`). Each row is
/// upserted and recorded as a `registry_change` event, in one transaction.
pub fn import_csv(
    ledger: &Ledger,
    kind: RegistryKind,
    file: &Path,
    skip_bad: bool,
) -> Result<ImportReport, ImportError> {
    let (mut good, errors, total) = validate(kind, file)?;
    if !errors.is_empty() && !skip_bad {
        return Err(ImportError::BadRows(errors));
    }
    // Photos go to disk (durably) before the transaction that names them.
    let store = ledger.photos().clone();
    for row in &mut good {
        for (fi, bytes) in std::mem::take(&mut row.photos) {
            row.values[fi] = Some(store.put(&bytes)?);
        }
    }
    let source = format!(
        "import:{}",
        file.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let imported = good.len();
    let last_seq = write_rows(ledger, kind, good, source, true)?;
    Ok(ImportReport {
        imported,
        skipped: total - imported,
        errors,
        last_seq,
    })
}

/// Add or replace one registry record given as `(column, value)` pairs (English or Chinese
/// column names, as in the CSV). Photo columns take a path. For the HTTP API and platform
/// registry downloads; recorded as a `registry_change` event with `source`.
pub fn upsert(
    ledger: &Ledger,
    kind: RegistryKind,
    record: &[(&str, &str)],
    source: &str,
) -> Result<i64, ImportError> {
    let (_, fields, _) = spec(kind);
    let mut errors = Vec::new();
    let mut values = vec![None; fields.len()];
    let mut photos = Vec::new();
    for (name, raw) in record {
        let Some(fi) = fields
            .iter()
            .position(|f| f.name == *name || f.chinese == *name)
        else {
            errors.push(RowError {
                line: 0,
                column: name.to_string(),
                reason: "unknown field".into(),
            });
            continue;
        };
        if raw.trim().is_empty() {
            continue;
        }
        match check_value(fields[fi].check, raw, Path::new(".")) {
            Ok((_, Some(bytes))) => photos.push((fi, bytes)),
            Ok((v, None)) => values[fi] = Some(v),
            Err(reason) => errors.push(RowError {
                line: 0,
                column: fields[fi].name.into(),
                reason,
            }),
        }
    }
    for (fi, f) in fields.iter().enumerate() {
        let reported = errors.iter().any(|e| e.column == f.name);
        if f.required && !reported && values[fi].is_none() && !photos.iter().any(|(p, _)| *p == fi)
        {
            errors.push(RowError {
                line: 0,
                column: f.name.into(),
                reason: "required value is missing".into(),
            });
        }
    }
    if kind == RegistryKind::InPlant && values[1].is_some() != values[2].is_some() {
        errors.push(RowError {
            line: 0,
            column: "color".into(),
            reason: "plate and colour go together: give both or neither".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ImportError::BadRows(errors));
    }
    for (fi, bytes) in photos {
        values[fi] = Some(ledger.photos().put(&bytes)?);
    }
    let row = GoodRow {
        line: 0,
        values,
        photos: Vec::new(),
    };
    let seq = write_rows(ledger, kind, vec![row], source.to_string(), false)?;
    seq.ok_or_else(|| ImportError::Ledger(LedgerError::Write("nothing written".into())))
}

/// Upsert validated rows and append one `registry_change` event per row, in one transaction.
fn write_rows(
    ledger: &Ledger,
    kind: RegistryKind,
    good: Vec<GoodRow>,
    source: String,
    with_line: bool,
) -> Result<Option<i64>, LedgerError> {
    ledger.transaction_blocking(move |txn| {
        let (table, fields, key) = spec(kind);
        let cols: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let sql = format!(
            "INSERT OR REPLACE INTO {table}({}, updated_at, event_seq) VALUES ({})",
            cols.join(", "),
            (1..=cols.len() + 2)
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let now = Utc::now();
        let now_text = db_time(now);
        let mut stmt = txn.conn().prepare(&sql)?;
        let mut last = None;
        // Canonical JSON needs the record's keys in byte order.
        let mut sorted: Vec<usize> = (0..fields.len()).collect();
        sorted.sort_by_key(|i| fields[*i].name.as_bytes());
        let key_idx: Vec<usize> = key
            .iter()
            .filter_map(|k| fields.iter().position(|f| f.name == *k))
            .collect();
        let mut buf: Vec<u8> = Vec::with_capacity(1024);
        let mut photos = Vec::new();
        for row in &good {
            photos.clear();
            for (f, v) in fields.iter().zip(&row.values) {
                if let (Some(v), Check::Photo) = (v, f.check) {
                    photos.push(v.clone());
                }
            }
            let key_text = key_idx
                .iter()
                .filter_map(|i| row.values[*i].as_deref())
                .collect::<Vec<_>>()
                .join(" ");
            // The canonical JSON of `EventBody::RegistryChange`, written directly (keys in
            // byte order: key, kind, op, record, registry, source); the unit test below
            // checks it against the serde path.
            buf.clear();
            buf.extend_from_slice(b"{\"key\":");
            chain::push_json_str(&mut buf, &key_text);
            buf.extend_from_slice(b",\"kind\":\"registry_change\",\"op\":\"upsert\",\"record\":{");
            let mut first = true;
            for i in &sorted {
                if let Some(v) = &row.values[*i] {
                    if !first {
                        buf.push(b',');
                    }
                    first = false;
                    chain::push_json_str(&mut buf, fields[*i].name);
                    buf.push(b':');
                    chain::push_json_str(&mut buf, v);
                }
            }
            buf.extend_from_slice(b"},\"registry\":");
            chain::push_json_str(&mut buf, kind.name());
            buf.extend_from_slice(b",\"source\":");
            if with_line {
                chain::push_json_str(&mut buf, &format!("{source}:{}", row.line));
            } else {
                chain::push_json_str(&mut buf, &source);
            }
            buf.push(b'}');
            let body = std::str::from_utf8(&buf)
                .map_err(|e| LedgerError::Write(format!("registry body: {e}")))?;
            let r = txn.append_canonical("registry_change", body, &photos, now)?;
            let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(row.values.len() + 2);
            params.extend(row.values.iter().map(|v| v as &dyn rusqlite::ToSql));
            params.push(&now_text);
            params.push(&r.seq);
            stmt.execute(params.as_slice())?;
            last = Some(r.seq);
        }
        Ok(last)
    })
}

/// Remove a registry record (recorded as a `registry_change` delete event).
pub fn remove(ledger: &Ledger, kind: RegistryKind, key: Vec<String>) -> Result<bool, LedgerError> {
    remove_by(ledger, kind, key, "cli")
}

/// [`remove`] recording who did it in `source` (`api:<user>` for the console).
pub fn remove_by(
    ledger: &Ledger,
    kind: RegistryKind,
    key: Vec<String>,
    source: &str,
) -> Result<bool, LedgerError> {
    let source = source.to_string();
    ledger.transaction_blocking(move |txn| {
        let (table, _, key_cols) = spec(kind);
        if key.len() != key_cols.len() {
            return Err(LedgerError::Input(format!(
                "the key of {} is {}",
                kind.name(),
                key_cols.join(" + ")
            )));
        }
        let cond = key_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c} = ?{}", i + 1))
            .collect::<Vec<_>>()
            .join(" AND ");
        let n = txn.conn().execute(
            &format!("DELETE FROM {table} WHERE {cond}"),
            params_from_iter(&key),
        )?;
        if n > 0 {
            let body = EventBody::RegistryChange(RegistryChange {
                registry: kind,
                op: RegistryOp::Delete,
                key: key.join(" "),
                record: None,
                source,
            });
            txn.append(&body, &[], Utc::now())?;
        }
        Ok(n > 0)
    })
}

/// All records of a registry as `(column, value)` lists, ordered by key.
pub fn list(
    conn: &Connection,
    kind: RegistryKind,
) -> Result<Vec<Vec<(String, String)>>, LedgerError> {
    let (table, fields, key) = spec(kind);
    let cols: Vec<&str> = fields.iter().map(|f| f.name).collect();
    let sql = format!(
        "SELECT {}, updated_at FROM {table} ORDER BY {}",
        cols.join(", "),
        key.join(", ")
    );
    let mut stmt = conn.prepare(&sql)?;
    let n = cols.len();
    let rows = stmt.query_map([], |r| {
        let mut out = Vec::with_capacity(n + 1);
        for (i, c) in cols.iter().enumerate() {
            out.push((
                c.to_string(),
                r.get::<_, Option<String>>(i)?.unwrap_or_default(),
            ));
        }
        out.push(("updated_at".into(), r.get::<_, String>(n)?));
        Ok(out)
    })?;
    rows.collect::<Result<_, _>>().map_err(Into::into)
}

/// Registry attributes a transport-ledger row shows next to the passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportRecord {
    pub plate: String,
    pub color: String,
    pub vin: String,
    pub engine_no: String,
    pub vehicle_type: String,
    pub fuel: String,
    pub stage: String,
    pub registered_on: String,
    pub fleet: String,
    pub license_photo: Option<String>,
    pub list_photo: Option<String>,
}

pub fn transport_record(
    conn: &Connection,
    plate: &str,
    color: PlateColor,
) -> Result<Option<TransportRecord>, LedgerError> {
    let mut stmt = conn.prepare_cached(
        "SELECT plate, color, vin, engine_no, vehicle_type, fuel, stage, registered_on, fleet,
                license_photo, list_photo
         FROM transport_vehicles WHERE plate = ?1 AND color = ?2",
    )?;
    stmt.query_row([plate, color.name()], |r| {
        Ok(TransportRecord {
            plate: r.get(0)?,
            color: r.get(1)?,
            vin: r.get(2)?,
            engine_no: r.get(3)?,
            vehicle_type: r.get(4)?,
            fuel: r.get(5)?,
            stage: r.get(6)?,
            registered_on: r.get(7)?,
            fleet: r.get(8)?,
            license_photo: r.get(9)?,
            list_photo: r.get(10)?,
        })
    })
    .optional()
    .map_err(Into::into)
}

/// The registries as the policy engine sees them. Reads through its own read-only
/// connection, so lookups never wait behind the ledger writer.
pub struct SqliteRegistry {
    conn: Mutex<Connection>,
    data_dir: PathBuf,
}

impl SqliteRegistry {
    pub fn open(data_dir: &Path) -> Result<SqliteRegistry, LedgerError> {
        Ok(SqliteRegistry {
            conn: Mutex::new(open_ro(data_dir)?),
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn try_lookup(
        conn: &Connection,
        plate: &str,
        color: PlateColor,
    ) -> Result<Option<VehicleFacts>, rusqlite::Error> {
        type Row = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let facts = |kind: RegistryKind, row: Row| {
            let (stage, fuel, vtype, usec, obd) = row;
            Some(VehicleFacts {
                plate: plate.to_string(),
                color,
                registry: kind,
                stage: stage.parse().ok()?,
                fuel: fuel.parse().ok()?,
                vehicle_type: vtype.unwrap_or_default(),
                use_character: usec.and_then(|u| u.chars().next()),
                obd_online: obd.map(|o| o == "1"),
            })
        };
        let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        };
        if let Some(row) = conn
            .prepare_cached(
                "SELECT stage, fuel, vehicle_type, use_character, obd_online
                 FROM transport_vehicles WHERE plate = ?1 AND color = ?2",
            )?
            .query_row([plate, color.name()], get)
            .optional()?
        {
            return Ok(facts(RegistryKind::Transport, row));
        }
        if let Some(row) = conn
            .prepare_cached(
                "SELECT stage, fuel, vehicle_type, NULL, NULL FROM in_plant_vehicles
                 WHERE (plate = ?1 AND color = ?2) OR code = ?1 LIMIT 1",
            )?
            .query_row([plate, color.name()], get)
            .optional()?
        {
            return Ok(facts(RegistryKind::InPlant, row));
        }
        if let Some(row) = conn
            .prepare_cached(
                "SELECT stage, fuel, NULL, NULL, NULL FROM non_road_machines
                 WHERE plate = ?1 OR reg_code = ?1 LIMIT 1",
            )?
            .query_row([plate], get)
            .optional()?
        {
            return Ok(facts(RegistryKind::NonRoad, row));
        }
        Ok(None)
    }
}

impl VehicleRegistry for SqliteRegistry {
    fn lookup(&self, plate: &str, color: PlateColor) -> Option<VehicleFacts> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        match Self::try_lookup(&conn, plate, color) {
            Ok(f) => f,
            Err(e) => {
                // The policy treats "not found" as unregistered; a read error must not be
                // silent, but it must not stop the lane either.
                tracing::error!(plate, error = %e, "registry lookup failed");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_registry_body_is_the_serde_body() {
        let tmp = tempfile::tempdir().unwrap();
        let csv = tmp.path().join("x.csv");
        std::fs::write(
            &csv,
            "plate,color,vin,engine_no,vehicle_type,fuel,stage,registered_on,fleet,stage_basis\n\
             豫A12345,黄,LZZ1CLVB7KA123456,\"E\"\"1\\\",H11,B,6,2021-05-01,某运输公司,\n",
        )
        .unwrap();
        let ledger = Ledger::open(&tmp.path().join("d")).unwrap();
        import_csv(&ledger, RegistryKind::Transport, &csv, false).unwrap();
        let conn = open_ro(&tmp.path().join("d")).unwrap();
        let stored: String = conn
            .query_row("SELECT body FROM events WHERE seq = 1", [], |r| r.get(0))
            .unwrap();
        let parsed: EventBody = serde_json::from_str(&stored).unwrap();
        assert_eq!(chain::canonical_json(&parsed).unwrap(), stored);
        let EventBody::RegistryChange(rc) = parsed else {
            panic!()
        };
        assert_eq!(rc.record.unwrap()["engine_no"], "E\"1\\");
        assert_eq!(rc.source, "import:x.csv:2");
    }
}
