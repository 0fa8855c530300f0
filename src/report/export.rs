//! CSV and XLSX of a [`Report`] (one section = one CSV block = one sheet, Chinese headers) and
//! the inspection workbook with the sampled passes' photos embedded.
//!
//! Both formats are written from the same [`Section`] tables, so the CSV and the workbook
//! cannot disagree. Times are `yyyy-MM-dd HH:mm:ss` GMT+8, tonnes with 3 decimals, ratios as
//! fractions (CSV, 4 decimals) or percent-formatted numbers (XLSX).

use super::inspection::{Inspection, RecheckRow};
use super::rows::PassRow;
use super::summary::{CleanRow, DayAverage, DayRow, Report};
use super::ReportError;
use crate::ledger::photos::PhotoStore;
use crate::ledger::{local_time, BarrierMode, Decision};

#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(u64),
    Tonnes(f64),
    Ratio(Option<f64>),
}

impl Cell {
    /// The cell as CSV text.
    pub fn csv_text(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(n) => n.to_string(),
            Cell::Tonnes(t) => format!("{t:.3}"),
            Cell::Ratio(Some(r)) => format!("{r:.4}"),
            Cell::Ratio(None) => String::new(),
        }
    }
}

fn t(s: impl Into<String>) -> Cell {
    Cell::Text(s.into())
}

/// One table of a report: a CSV block and an XLSX sheet.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Sheet name (≤ 31 characters).
    pub title: &'static str,
    pub headers: Vec<&'static str>,
    pub rows: Vec<Vec<Cell>>,
}

fn clean_cells(r: &CleanRow) -> Vec<Cell> {
    vec![
        t(r.cargo.clone()),
        Cell::Int(r.truck_trips),
        Cell::Int(r.new_energy_trips),
        Cell::Int(r.guo6_trips),
        Cell::Int(r.other_trips),
        Cell::Tonnes(r.truck_t),
        Cell::Tonnes(r.new_energy_t),
        Cell::Tonnes(r.guo6_t),
        Cell::Tonnes(r.other_truck_t),
        Cell::Tonnes(r.rail_t),
        Cell::Tonnes(r.water_t),
        Cell::Tonnes(r.belt_t),
        Cell::Tonnes(r.pipeline_t),
        Cell::Tonnes(r.clean_t),
        Cell::Tonnes(r.total_t),
        Cell::Ratio(r.ratio_tonnage),
        Cell::Ratio(r.ratio_tonnage_incl_guo6),
        Cell::Ratio(r.ratio_trips),
    ]
}

pub const CLEAN_HEADERS: &[&str] = &[
    "货物名称",
    "货车过磅车次",
    "新能源车次",
    "国六车次",
    "其他车次",
    "货车运量(吨)",
    "新能源货车运量(吨)",
    "国六货车运量(吨)",
    "其他货车运量(吨)",
    "铁路(吨)",
    "水路(吨)",
    "皮带(吨)",
    "管道(吨)",
    "清洁运量(吨)",
    "总运量(吨)",
    "清洁运输比例(按运量)",
    "清洁及国六比例(按运量)",
    "清洁运输比例(按车次)",
];

fn avg_row(label: &str, a: &DayAverage) -> Vec<Cell> {
    let n = |v: Option<f64>| t(v.map(|x| format!("{x:.2}")).unwrap_or_default());
    vec![
        t(label),
        Cell::Int(u64::from(a.days)),
        n(a.avg_entries),
        n(a.avg_exits),
        n(a.avg_vehicles),
    ]
}

fn day_cells(d: &DayRow) -> Vec<Cell> {
    vec![
        t(d.day.format("%Y-%m-%d").to_string()),
        t(d.warning.as_deref().map(level_chinese).unwrap_or("无")),
        Cell::Int(d.entries),
        Cell::Int(d.exits),
        Cell::Int(d.vehicles),
    ]
}

fn level_chinese(l: &str) -> &'static str {
    match l {
        "yellow" => "黄色",
        "orange" => "橙色",
        "red" => "红色",
        _ => "其他",
    }
}

/// The report as tables, in the order of the report.
pub fn report_sections(r: &Report) -> Vec<Section> {
    let p = &r.passes;
    let mut s = vec![Section {
        title: "概况",
        headers: vec!["项目", "数值"],
        rows: vec![
            vec![
                t("统计起始日"),
                t(r.first_day.format("%Y-%m-%d").to_string()),
            ],
            vec![
                t("统计截止日"),
                t(r.last_day.format("%Y-%m-%d").to_string()),
            ],
            vec![t("天数"), Cell::Int(u64::from(r.days))],
            vec![t("通行总数"), Cell::Int(p.total)],
            vec![t("进厂车次"), Cell::Int(p.entries)],
            vec![t("出厂车次"), Cell::Int(p.exits)],
            vec![t("手动或遥控抬杆"), Cell::Int(p.manual_or_remote)],
            vec![t("拒绝通行次数"), Cell::Int(p.denied_attempts)],
            vec![t("生成时间"), t(local_time(r.generated_at))],
        ],
    }];
    s.push(Section {
        title: "按门岗",
        headers: vec!["门岗", "进厂", "出厂", "合计"],
        rows: p
            .by_gate
            .iter()
            .map(|g| {
                vec![
                    t(g.gate.clone()),
                    Cell::Int(g.entries),
                    Cell::Int(g.exits),
                    Cell::Int(g.entries + g.exits),
                ]
            })
            .collect(),
    });
    s.push(Section {
        title: "按小时",
        headers: vec!["小时", "进厂", "出厂"],
        rows: p
            .by_hour
            .iter()
            .map(|h| {
                vec![
                    t(format!("{:02}", h.hour)),
                    Cell::Int(h.entries),
                    Cell::Int(h.exits),
                ]
            })
            .collect(),
    });
    for (title, mix, code) in [
        ("排放阶段构成", &r.stage_mix, "排放阶段代码"),
        ("燃料类型构成", &r.fuel_mix, "燃料类型代码"),
    ] {
        s.push(Section {
            title,
            headers: vec![code, "名称", "进厂车次", "车次占比", "车辆数", "车辆占比"],
            rows: mix
                .iter()
                .map(|m| {
                    vec![
                        t(m.code.clone()),
                        t(m.label.clone()),
                        Cell::Int(m.trips),
                        Cell::Ratio(Some(m.trip_share)),
                        Cell::Int(m.vehicles),
                        Cell::Ratio(Some(m.vehicle_share)),
                    ]
                })
                .collect(),
        });
    }
    let g = &r.transport_grade;
    s.push(Section {
        title: "运输车辆绩效分级对照",
        headers: vec!["口径", "总数", "达标数", "达标比例", "对应级别", "规则"],
        rows: vec![
            vec![
                t("进厂车次"),
                Cell::Int(g.trips),
                Cell::Int(g.compliant_trips),
                Cell::Ratio(g.trip_share),
                t(g.grade_by_trips),
                t(g.rule),
            ],
            vec![
                t("进厂车辆"),
                Cell::Int(g.vehicles),
                Cell::Int(g.compliant_vehicles),
                Cell::Ratio(g.vehicle_share),
                t(g.grade_by_vehicles),
                t(g.rule),
            ],
        ],
    });
    let c = &r.clean_transport;
    let mut rows: Vec<Vec<Cell>> = c.by_cargo.iter().map(clean_cells).collect();
    rows.push(clean_cells(&c.total));
    s.push(Section {
        title: "清洁运输比例",
        headers: CLEAN_HEADERS.to_vec(),
        rows,
    });
    s.push(Section {
        title: "清洁运输公式",
        headers: vec!["项目", "内容"],
        rows: vec![
            vec![t("按运量"), t(c.formula)],
            vec![t("按车次"), t(c.formula_trips)],
            vec![t("定义"), t(c.definitions)],
        ],
    });
    s.push(Section {
        title: "非公路运输录入",
        headers: vec![
            "记录编号",
            "日期",
            "运输方式",
            "货物名称",
            "运量(吨)",
            "录入人",
            "备注",
        ],
        rows: c
            .other_modes
            .iter()
            .map(|m| {
                vec![
                    t(m.id.clone()),
                    t(m.date.format("%Y-%m-%d").to_string()),
                    t(m.mode_text),
                    t(m.cargo.clone()),
                    Cell::Tonnes(m.tonnes),
                    t(m.operator.clone()),
                    t(m.note.clone()),
                ]
            })
            .collect(),
    });
    s.push(Section {
        title: "厂内车辆与非道路机械",
        headers: vec![
            "类别",
            "要求",
            "总数",
            "达标数",
            "达标比例",
            "A级",
            "B级",
            "排放阶段分布",
            "不达标编码",
            "登记截至",
        ],
        rows: r
            .fleet_shares
            .iter()
            .map(|f| {
                let yes = |b: bool| t(if b { "达到" } else { "未达到" });
                vec![
                    t(f.label),
                    t(f.rule),
                    Cell::Int(f.total),
                    Cell::Int(f.compliant),
                    Cell::Ratio(f.share),
                    yes(f.meets_a),
                    yes(f.meets_b),
                    t(f.by_stage
                        .iter()
                        .map(|b| format!("{} {}", b.label, b.count))
                        .collect::<Vec<_>>()
                        .join("; ")),
                    t(f.non_compliant.join(" ")),
                    t(crate::ledger::local_time(f.as_of)),
                ]
            })
            .collect(),
    });
    s.push(Section {
        title: "每日车辆",
        headers: vec!["日期", "预警等级", "进厂车次", "出厂车次", "车辆数"],
        rows: r.daily.days.iter().map(day_cells).collect(),
    });
    s.push(Section {
        title: "日均对比",
        headers: vec!["类别", "天数", "日均进厂车次", "日均出厂车次", "日均车辆数"],
        rows: vec![
            avg_row("非预警日", &r.daily.normal),
            avg_row("预警日", &r.daily.warning),
        ],
    });
    let m = &r.manual_releases;
    let mut rows = vec![
        vec![t("合计"), t(""), Cell::Int(m.total)],
        vec![t("未登记车牌"), t(""), Cell::Int(m.without_plate)],
    ];
    rows.extend(
        m.by_operator
            .iter()
            .map(|o| vec![t("操作员"), t(o.name.clone()), Cell::Int(o.count)]),
    );
    rows.extend(
        m.by_reason
            .iter()
            .map(|o| vec![t("原因"), t(o.name.clone()), Cell::Int(o.count)]),
    );
    s.push(Section {
        title: "手工放行",
        headers: vec!["分类", "名称", "次数"],
        rows,
    });
    s.push(Section {
        title: "上传完整率",
        headers: vec![
            "平台",
            "应上传",
            "已确认",
            "失败次数",
            "积压",
            "完整率",
            "最近错误",
        ],
        rows: r
            .uploads
            .iter()
            .map(|u| {
                vec![
                    t(u.platform.clone()),
                    Cell::Int(u.captured),
                    Cell::Int(u.acknowledged),
                    Cell::Int(u.failed),
                    Cell::Int(u.backlog),
                    Cell::Ratio(Some(u.completeness)),
                    t(u.error
                        .clone()
                        .or_else(|| u.last_error.clone())
                        .unwrap_or_default()),
                ]
            })
            .collect(),
    });
    s
}

/// All sections, each as `# title`, header, rows, then a blank line.
pub fn sections_csv(sections: &[Section]) -> String {
    let mut w = csv::WriterBuilder::new()
        .flexible(true)
        .from_writer(Vec::new());
    for (i, s) in sections.iter().enumerate() {
        if i > 0 {
            let _ = w.write_record([""]);
        }
        // Writing to a Vec cannot fail.
        let _ = w.write_record([format!("# {}", s.title)]);
        let _ = w.write_record(&s.headers);
        for r in &s.rows {
            let _ = w.write_record(r.iter().map(Cell::csv_text));
        }
    }
    let bytes = w.into_inner().unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

pub fn report_csv(r: &Report) -> String {
    sections_csv(&report_sections(r))
}

fn write_section(wb: &mut rust_xlsxwriter::Workbook, s: &Section) -> Result<(), ReportError> {
    use rust_xlsxwriter::Format;
    let bold = Format::new().set_bold();
    let tonnes = Format::new().set_num_format("0.000");
    let pct = Format::new().set_num_format("0.00%");
    let ws = wb.add_worksheet();
    ws.set_name(s.title)?;
    for (c, h) in s.headers.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, *h, &bold)?;
        ws.set_column_width(c as u16, (h.chars().count() as f64 * 2.2).max(10.0))?;
    }
    for (i, row) in s.rows.iter().enumerate() {
        let rr = (i + 1) as u32;
        for (c, cell) in row.iter().enumerate() {
            let c = c as u16;
            match cell {
                Cell::Text(v) => {
                    ws.write_string(rr, c, v)?;
                }
                Cell::Int(n) => {
                    ws.write_number(rr, c, *n as f64)?;
                }
                Cell::Tonnes(v) => {
                    ws.write_number_with_format(rr, c, *v, &tonnes)?;
                }
                Cell::Ratio(Some(v)) => {
                    ws.write_number_with_format(rr, c, *v, &pct)?;
                }
                Cell::Ratio(None) => {}
            }
        }
    }
    Ok(())
}

pub fn sections_xlsx(sections: &[Section]) -> Result<Vec<u8>, ReportError> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    for s in sections {
        write_section(&mut wb, s)?;
    }
    Ok(wb.save_to_buffer()?)
}

pub fn report_xlsx(r: &Report) -> Result<Vec<u8>, ReportError> {
    sections_xlsx(&report_sections(r))
}

pub const PASS_HEADERS: &[&str] = &[
    "记录编号",
    "时间",
    "类型",
    "车道",
    "门岗",
    "方向",
    "车牌号码",
    "车牌颜色",
    "判定",
    "原因",
    "抬杆方式",
    "排放阶段",
    "燃料类型",
    "已抬杆",
    "已更正",
    "已作废",
    "照片",
];

pub fn pass_row_cells(p: &PassRow) -> Vec<Cell> {
    let kind = match p.kind.as_str() {
        "pass_attempt" => "自动识别",
        "manual_release" => "手工放行",
        "backfill" => "补录",
        other => other,
    };
    let yes = |b: bool| t(if b { "是" } else { "否" });
    vec![
        t(p.id.clone()),
        t(local_time(p.at)),
        t(kind),
        t(p.lane.clone()),
        t(p.gate.clone().unwrap_or_default()),
        t(p.direction.map(|d| d.chinese()).unwrap_or("")),
        t(p.plate.clone()),
        t(p.color.map(|c| c.chinese()).unwrap_or("")),
        t(match p.decision {
            Some(Decision::Allow) => "放行",
            Some(Decision::Deny) => "拒绝",
            None => "",
        }),
        t(if p.reason_text.is_empty() {
            p.reason.clone()
        } else {
            format!("{} ({})", p.reason_text, p.reason)
        }),
        t(p.barrier.map(BarrierMode::chinese).unwrap_or("")),
        t(p.stage.map(|s| s.chinese()).unwrap_or_default()),
        t(p.fuel.map(|f| f.chinese()).unwrap_or("")),
        yes(p.opened),
        yes(p.corrected),
        yes(p.voided),
        t(p.photos
            .iter()
            .map(|f| format!("{}:{}", f.kind, f.sha256))
            .collect::<Vec<_>>()
            .join(" ")),
    ]
}

fn recheck_cells(r: &RecheckRow) -> Vec<Cell> {
    vec![
        t(r.plate.clone()),
        t(r.color
            .parse::<crate::vehicle::PlateColor>()
            .map(|c| c.chinese())
            .unwrap_or("")),
        t(r.reason_text.clone()),
        t(r.registry_stage.clone().unwrap_or_default()),
        t(r.stage_basis.clone().unwrap_or_default()),
        t(r.stages_seen
            .iter()
            .map(|s| {
                if s.is_empty() {
                    "未录入".to_string()
                } else {
                    s.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")),
        Cell::Int(r.entries),
        Cell::Int(r.warning_day_entries),
        t(local_time(r.last_at)),
    ]
}

/// The inspection sections other than the photo sheet.
pub fn inspection_sections(i: &Inspection) -> Vec<Section> {
    let mut s = vec![Section {
        title: "核查概况",
        headers: vec!["项目", "内容"],
        rows: vec![
            vec![t("核查期间起"), t(local_time(i.from))],
            vec![t("核查期间止(不含)"), t(local_time(i.to))],
            vec![t("抽样种子"), t(i.seed.to_string())],
            vec![t("期间通行记录数"), Cell::Int(i.population)],
            vec![t("抽样数"), Cell::Int(i.sample.len() as u64)],
            vec![t("复核车辆数"), Cell::Int(i.recheck_total)],
            vec![t("生成时间"), t(local_time(i.generated_at))],
        ],
    }];
    let mut rows: Vec<Vec<Cell>> = Vec::new();
    for d in &i.normal_days {
        let mut r = vec![t("非预警日")];
        r.extend(day_cells(d));
        rows.push(r);
    }
    for d in &i.warning_days {
        let mut r = vec![t("预警日")];
        r.extend(day_cells(d));
        rows.push(r);
    }
    for (label, a) in [
        ("非预警日平均", &i.normal_average),
        ("预警日平均", &i.warning_average),
    ] {
        let n = |v: Option<f64>| t(v.map(|x| format!("{x:.2}")).unwrap_or_default());
        rows.push(vec![
            t(label),
            t(format!("{} 天", a.days)),
            t(""),
            n(a.avg_entries),
            n(a.avg_exits),
            n(a.avg_vehicles),
        ]);
    }
    s.push(Section {
        title: "日均车辆",
        headers: vec!["类别", "日期", "预警等级", "进厂车次", "出厂车次", "车辆数"],
        rows,
    });
    if let Some(w) = &i.window {
        let mut rows: Vec<Vec<Cell>> = w.passes.iter().map(pass_row_cells).collect();
        if w.truncated {
            rows.push(vec![t("(仅列出前 5000 条)")]);
        }
        s.push(Section {
            title: "视频时段通行记录",
            headers: PASS_HEADERS.to_vec(),
            rows,
        });
    }
    s.push(Section {
        title: "排放阶段复核",
        headers: vec![
            "车牌号码",
            "车牌颜色",
            "复核原因",
            "登记排放阶段",
            "排放阶段依据",
            "通行记录排放阶段",
            "进厂车次",
            "预警日进厂车次",
            "最近通行时间",
        ],
        rows: i.recheck.iter().map(recheck_cells).collect(),
    });
    s
}

/// Photo column width and row height for the embedded thumbnails.
const PHOTO_COL_WIDTH: f64 = 24.0;
const PHOTO_ROW_HEIGHT: f64 = 90.0;
const PHOTO_COLUMNS: usize = 3;

/// The whole inspection set in one workbook; the sample sheet embeds up to three photos per
/// row (a photo missing from the store or not an image leaves its sha256 in the cell).
pub fn inspection_xlsx(i: &Inspection, photos: &PhotoStore) -> Result<Vec<u8>, ReportError> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let sections = inspection_sections(i);
    write_section(&mut wb, &sections[0])?;
    {
        use rust_xlsxwriter::{Format, Image};
        let bold = Format::new().set_bold();
        let ws = wb.add_worksheet();
        ws.set_name("抽样记录")?;
        let base = PASS_HEADERS.len() as u16;
        for (c, h) in PASS_HEADERS.iter().enumerate() {
            ws.write_string_with_format(0, c as u16, *h, &bold)?;
            ws.set_column_width(c as u16, 12.0)?;
        }
        for k in 0..PHOTO_COLUMNS {
            let c = base + k as u16;
            ws.write_string_with_format(0, c, format!("照片{}", k + 1), &bold)?;
            ws.set_column_width(c, PHOTO_COL_WIDTH)?;
        }
        for (n, p) in i.sample.iter().enumerate() {
            let row = (n + 1) as u32;
            for (c, cell) in pass_row_cells(p).iter().enumerate() {
                ws.write_string(row, c as u16, cell.csv_text())?;
            }
            if !p.photos.is_empty() {
                ws.set_row_height(row, PHOTO_ROW_HEIGHT)?;
            }
            for (k, ph) in p.photos.iter().take(PHOTO_COLUMNS).enumerate() {
                let col = base + k as u16;
                let image = photos
                    .get(&ph.sha256)
                    .ok()
                    .and_then(|bytes| Image::new_from_buffer(&bytes).ok());
                match image {
                    Some(img) => {
                        let img = img.set_alt_text(format!("{} {}", ph.kind, ph.sha256));
                        ws.insert_image_fit_to_cell(row, col, &img, true)?;
                    }
                    None => {
                        ws.write_string(row, col, format!("{} {} (照片缺失)", ph.kind, ph.sha256))?;
                    }
                }
            }
        }
    }
    for s in &sections[1..] {
        write_section(&mut wb, s)?;
    }
    Ok(wb.save_to_buffer()?)
}

/// The inspection set as CSV blocks (sample rows with photo hashes instead of images).
pub fn inspection_csv(i: &Inspection) -> String {
    let mut sections = inspection_sections(i);
    sections.insert(
        1,
        Section {
            title: "抽样记录",
            headers: PASS_HEADERS.to_vec(),
            rows: i.sample.iter().map(pass_row_cells).collect(),
        },
    );
    sections_csv(&sections)
}
