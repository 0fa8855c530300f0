//! `ecogate ledger export`: the three HJ 1321 ledgers as CSV or XLSX, columns in the order of
//! the national tables (reference §3.1), times as `yyyy-MM-dd HH:mm:ss` in GMT+8.

use super::registry::{self, transport_record};
use super::store::{LedgerReader, PHOTOS_DIR};
use super::views::Visit;
use super::{local_time, LedgerError};
use crate::vehicle::RegistryKind;
use chrono::{DateTime, Utc};
use ecogate_drivers::Mass;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LedgerKind {
    /// 进出厂运输车辆电子台账 (one row per visit).
    Transport,
    /// 厂内运输车辆电子台账.
    #[value(name = "in_plant", alias = "in-plant")]
    InPlant,
    /// 非道路移动机械电子台账.
    #[value(name = "non_road", alias = "non-road")]
    NonRoad,
}

impl LedgerKind {
    pub fn title(self) -> &'static str {
        match self {
            LedgerKind::Transport => "进出厂运输车辆电子台账",
            LedgerKind::InPlant => "厂内运输车辆电子台账",
            LedgerKind::NonRoad => "非道路移动机械电子台账",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Csv,
    Xlsx,
}

/// A ledger ready to write: header and text cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub title: &'static str,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

pub const TRANSPORT_COLUMNS: &[&str] = &[
    "序号",
    "进厂时间",
    "出厂时间",
    "进厂照片",
    "出厂照片",
    "车牌号码",
    "车牌颜色",
    "注册日期",
    "车辆识别代号(VIN)",
    "发动机号码",
    "排放阶段",
    "随车清单",
    "行驶证",
    "运输货物名称",
    "运输量(吨)",
    "车队名称",
    "燃料类型",
    "进厂车道",
    "出厂车道",
    "通行方式",
    "备注",
    "进厂记录编号",
    "出厂记录编号",
];

pub const IN_PLANT_COLUMNS: &[&str] = &[
    "序号",
    "登记编码或内部管理号牌",
    "注册日期",
    "车辆识别代号(VIN)",
    "发动机号码",
    "排放阶段",
    "随车清单",
    "行驶证",
    "车牌号码",
    "燃料类型",
    "品牌型号",
    "所有人",
    "更新时间",
];

pub const NON_ROAD_COLUMNS: &[&str] = &[
    "序号",
    "环保登记编码",
    "生产日期",
    "排放阶段",
    "机械环保代码",
    "发动机铭牌",
    "机械铭牌",
    "环保信息标签",
    "产品识别码(PIN)",
    "机械种类",
    "机械型号",
    "燃料类型",
    "发动机型号",
    "发动机编号",
    "发动机生产厂",
    "发动机功率(kW)",
    "所有人",
    "车牌号码",
    "更新时间",
];

/// Photo hash → path relative to the data directory, so a row leads to its evidence.
fn photo_path(hash: &str) -> String {
    match (hash.get(0..2), hash.get(2..4)) {
        (Some(a), Some(b)) => format!("{PHOTOS_DIR}/{a}/{b}/{hash}.jpg"),
        _ => String::new(),
    }
}

fn photo_paths(hashes: &[String]) -> String {
    hashes
        .iter()
        .map(|h| photo_path(h))
        .collect::<Vec<_>>()
        .join(";")
}

/// Tonnes with one decimal (national number(4,1)), rounded half away from zero. Any mass,
/// however absurd, formats (unsigned arithmetic: no overflow at the i64 ends).
pub fn tonnes(m: Mass) -> String {
    let g = m.grams;
    let tenths = g.unsigned_abs() / 100_000 + u64::from(g.unsigned_abs() % 100_000 >= 50_000);
    let sign = if g < 0 { "-" } else { "" };
    format!("{sign}{}.{}", tenths / 10, tenths % 10)
}

fn transport_row(reader: &LedgerReader, n: usize, v: &Visit) -> Result<Vec<String>, LedgerError> {
    let reg = transport_record(reader.conn(), &v.plate, v.color)?;
    let reg = reg.unwrap_or_default();
    let t =
        |p: &Option<super::views::Pass>| p.as_ref().map(|p| local_time(p.at)).unwrap_or_default();
    let photos = |p: &Option<super::views::Pass>| {
        p.as_ref()
            .map(|p| photo_paths(&p.photos))
            .unwrap_or_default()
    };
    let lane =
        |p: &Option<super::views::Pass>| p.as_ref().map(|p| p.lane.clone()).unwrap_or_default();
    let id = |p: &Option<super::views::Pass>| p.as_ref().map(|p| p.id.clone()).unwrap_or_default();
    let stage = v.stage().map(|s| s.code()).unwrap_or(reg.stage.clone());
    let fuel = v
        .fuel()
        .map(|f| f.chinese().to_string())
        .or_else(|| {
            reg.fuel
                .parse::<crate::vehicle::Fuel>()
                .ok()
                .map(|f| f.chinese().to_string())
        })
        .unwrap_or_default();
    let modes: Vec<&str> = v
        .entry
        .iter()
        .chain(v.exit.iter())
        .map(|p| p.barrier.chinese())
        .collect();
    let mut modes_dedup: Vec<&str> = Vec::new();
    for m in modes {
        if !modes_dedup.contains(&m) {
            modes_dedup.push(m);
        }
    }
    Ok(vec![
        n.to_string(),
        t(&v.entry),
        t(&v.exit),
        photos(&v.entry),
        photos(&v.exit),
        v.plate.clone(),
        v.color.chinese().to_string(),
        reg.registered_on,
        reg.vin,
        reg.engine_no,
        stage,
        reg.list_photo
            .as_deref()
            .map(photo_path)
            .unwrap_or_default(),
        reg.license_photo
            .as_deref()
            .map(photo_path)
            .unwrap_or_default(),
        v.cargo().join("、"),
        v.net().map(tonnes).unwrap_or_default(),
        reg.fleet,
        fuel,
        lane(&v.entry),
        lane(&v.exit),
        modes_dedup.join("/"),
        v.flags
            .iter()
            .map(|f| f.chinese())
            .collect::<Vec<_>>()
            .join("、"),
        id(&v.entry),
        id(&v.exit),
    ])
}

fn registry_rows(
    reader: &LedgerReader,
    kind: RegistryKind,
    to: DateTime<Utc>,
    order: &[&str],
) -> Result<Vec<Vec<String>>, LedgerError> {
    let mut rows = Vec::new();
    // The version of each record valid at `to`, from the chain: the table holds only the
    // latest, and a record edited after `to` must still show as it stood then.
    for rec in registry::as_of(reader.conn(), kind, to)? {
        let get = |c: &str| {
            rec.iter()
                .find(|(k, _)| k == c)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let mut row = vec![(rows.len() + 1).to_string()];
        for c in order {
            let v = get(c);
            let v = match *c {
                "license_photo"
                | "list_photo"
                | "engine_plate_photo"
                | "machine_plate_photo"
                | "label_photo" => {
                    if v.is_empty() {
                        v
                    } else {
                        photo_path(&v)
                    }
                }
                "fuel" => v
                    .parse::<crate::vehicle::Fuel>()
                    .map(|f| f.chinese().to_string())
                    .unwrap_or(v),
                "updated_at" => super::parse_db_time(&v).map(local_time).unwrap_or(v),
                _ => v,
            };
            row.push(v);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Build the ledger table for `[from, to)`. Transport rows are visits filed by entry time; the
/// in-plant and non-road ledgers list the registry as it stood at `to` (each record in the
/// version its last change before `to` made, rebuilt from the chain; records deleted before
/// `to` left out).
pub fn table(
    reader: &LedgerReader,
    kind: LedgerKind,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Table, LedgerError> {
    let (headers, rows) = match kind {
        LedgerKind::Transport => {
            let visits = reader.visits(from, to)?;
            let mut rows = Vec::with_capacity(visits.len());
            for (i, v) in visits.iter().enumerate() {
                rows.push(transport_row(reader, i + 1, v)?);
            }
            (TRANSPORT_COLUMNS, rows)
        }
        LedgerKind::InPlant => (
            IN_PLANT_COLUMNS,
            registry_rows(
                reader,
                RegistryKind::InPlant,
                to,
                &[
                    "code",
                    "registered_on",
                    "vin",
                    "engine_no",
                    "stage",
                    "list_photo",
                    "license_photo",
                    "plate",
                    "fuel",
                    "brand_model",
                    "owner",
                    "updated_at",
                ],
            )?,
        ),
        LedgerKind::NonRoad => (
            NON_ROAD_COLUMNS,
            registry_rows(
                reader,
                RegistryKind::NonRoad,
                to,
                &[
                    "reg_code",
                    "produced_on",
                    "stage",
                    "machine_code",
                    "engine_plate_photo",
                    "machine_plate_photo",
                    "label_photo",
                    "pin",
                    "machine_kind",
                    "model",
                    "fuel",
                    "engine_model",
                    "engine_no",
                    "engine_maker",
                    "engine_power_kw",
                    "owner",
                    "plate",
                    "updated_at",
                ],
            )?,
        ),
    };
    Ok(Table {
        title: kind.title(),
        headers: headers.to_vec(),
        rows,
    })
}

/// CSV, UTF-8 with a byte-order mark so that Excel on a Chinese Windows opens it correctly.
pub fn write_csv(table: &Table, out: &Path) -> Result<(), LedgerError> {
    let io = |e: std::io::Error| LedgerError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    let mut file = std::fs::File::create(out).map_err(io)?;
    std::io::Write::write_all(&mut file, "\u{feff}".as_bytes()).map_err(io)?;
    let mut w = csv::Writer::from_writer(file);
    let csv_err = |e: csv::Error| LedgerError::Input(format!("{}: {e}", out.display()));
    w.write_record(&table.headers).map_err(csv_err)?;
    for r in &table.rows {
        w.write_record(r).map_err(csv_err)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

pub fn write_xlsx(table: &Table, out: &Path) -> Result<(), LedgerError> {
    use rust_xlsxwriter::{Format as XFormat, Workbook};
    let x = |e: rust_xlsxwriter::XlsxError| LedgerError::Input(format!("{}: {e}", out.display()));
    let mut wb = Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name(table.title).map_err(x)?;
    let bold = XFormat::new().set_bold();
    for (c, h) in table.headers.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, *h, &bold)
            .map_err(x)?;
    }
    for (r, row) in table.rows.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            ws.write_string(r as u32 + 1, c as u16, v).map_err(x)?;
        }
    }
    ws.set_freeze_panes(1, 0).map_err(x)?;
    ws.autofit();
    wb.save(out).map_err(x)?;
    Ok(())
}

/// Export one ledger; returns the number of rows written.
pub fn export(
    reader: &LedgerReader,
    kind: LedgerKind,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: Format,
    out: &Path,
) -> Result<usize, LedgerError> {
    let t = table(reader, kind, from, to)?;
    match format {
        Format::Csv => write_csv(&t, out)?,
        Format::Xlsx => write_xlsx(&t, out)?,
    }
    Ok(t.rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonnes_round_half_away_from_zero_to_one_decimal() {
        assert_eq!(tonnes(Mass::from_kg(32_500)), "32.5");
        assert_eq!(tonnes(Mass::from_kg(32_449)), "32.4");
        assert_eq!(tonnes(Mass::from_kg(32_450)), "32.5");
        assert_eq!(tonnes(Mass::from_kg(40)), "0.0");
        assert_eq!(tonnes(Mass::from_kg(-1_250)), "-1.3");
        // The i64 ends: formatted, not an overflow panic.
        assert_eq!(tonnes(Mass::from_grams(i64::MAX)), "9223372036854.8");
        assert_eq!(tonnes(Mass::from_grams(i64::MIN)), "-9223372036854.8");
    }

    #[test]
    fn photo_cells_are_relative_paths() {
        let h = "ab".repeat(32);
        assert_eq!(photo_path(&h), format!("photos/ab/ab/{h}.jpg"));
        assert_eq!(photo_paths(&[h.clone(), h.clone()]).matches(';').count(), 1);
    }
}
