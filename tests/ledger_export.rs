//! Export (CSV/XLSX through the CLI), paper backfill (补录) and retention purge.

mod ledger_support;

use bytes::Bytes;
use chrono::{DateTime, Duration, Months, NaiveDate, Utc};
use clap::Parser;
use ecogate::ledger::cli::{LedgerCommand, RegistryCommand};
use ecogate::ledger::export::{
    table, LedgerKind, IN_PLANT_COLUMNS, NON_ROAD_COLUMNS, TRANSPORT_COLUMNS,
};
use ecogate::ledger::registry::{self, ImportError};
use ecogate::ledger::views::VisitFlag;
use ecogate::ledger::{
    backfill::backfill_csv, local_day_start, retention, verify, BreakKind, Direction, EventBody,
    Ledger, LedgerReader, Weighing,
};
use ecogate::vehicle::{PlateColor, RegistryKind};
use ecogate_drivers::Mass;
use ledger_support::pass;
use std::io::Read;
use std::path::Path;

#[derive(Parser)]
enum Cli {
    #[command(subcommand)]
    Ledger(LedgerCommand),
    #[command(subcommand)]
    Registry(RegistryCommand),
}

fn run(args: &[&str]) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(std::iter::once("ecogate").chain(args.iter().copied()))?;
    match cli {
        Cli::Ledger(c) => c.run(),
        Cli::Registry(c) => c.run(),
    }
}

fn local(d: u32, h: u32, m: u32) -> DateTime<Utc> {
    local_day_start(NaiveDate::from_ymd_opt(2026, 3, d).unwrap())
        + Duration::hours(h as i64)
        + Duration::minutes(m as i64)
}

fn read_csv(p: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(p).unwrap();
    let text = text
        .strip_prefix('\u{feff}')
        .expect("exports start with a UTF-8 BOM");
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect()
}

#[test]
fn transport_ledger_export_has_national_columns_and_gmt8_times() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    std::fs::write(tmp.path().join("list.jpg"), b"suiche qingdan").unwrap();
    std::fs::write(
        tmp.path().join("v.csv"),
        "plate,color,vin,engine_no,vehicle_type,fuel,stage,registered_on,fleet,list_photo\n\
         豫A12345,黄,LZZ1CLVB7KA123456,E123,H11,B,6,2021-05-01,某运输公司,list.jpg\n",
    )
    .unwrap();
    run(&[
        "registry",
        "import",
        "transport",
        tmp.path().join("v.csv").to_str().unwrap(),
        "--data-dir",
        data_s,
    ])
    .unwrap();

    let l = Ledger::open(&data).unwrap();
    let entry = l
        .append_blocking(
            pass("1-in", "豫A12345", Direction::In),
            vec![Bytes::from_static(b"head"), Bytes::from_static(b"plate")],
            local(1, 23, 50),
        )
        .unwrap();
    l.append_blocking(
        EventBody::Weighing(Weighing {
            lane: "1-in".into(),
            scale: "scale1".into(),
            plate: "豫A12345".into(),
            color: PlateColor::Yellow,
            gross: Some(Mass::from_kg(47_460)),
            tare: Some(Mass::from_kg(14_960)),
            net: Some(Mass::from_kg(32_500)),
            cargo: Some("煤".into()),
            direction: Some(Direction::In),
            pass_ref: Some(entry.id.clone()),
        }),
        vec![],
        local(1, 23, 55),
    )
    .unwrap();
    let exit = l
        .append_blocking(
            pass("1-out", "豫A12345", Direction::Out),
            vec![],
            local(2, 0, 20),
        )
        .unwrap();
    l.append_blocking(
        pass("1-out", "豫B00001", Direction::Out),
        vec![],
        local(1, 12, 0),
    )
    .unwrap();
    drop(l);

    let out = tmp.path().join("t.csv");
    run(&[
        "ledger",
        "export",
        "--data-dir",
        data_s,
        "--ledger",
        "transport",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-01",
        "--format",
        "csv",
        "--out",
        out.to_str().unwrap(),
    ])
    .unwrap();
    let rows = read_csv(&out);
    assert_eq!(rows[0], TRANSPORT_COLUMNS);
    assert_eq!(rows.len(), 3, "{rows:?}");
    let col = |name: &str| TRANSPORT_COLUMNS.iter().position(|c| *c == name).unwrap();
    // Unmatched exit at 12:00 first, then the visit across midnight.
    assert_eq!(rows[1][col("出厂时间")], "2026-03-01 12:00:00");
    assert_eq!(rows[1][col("进厂时间")], "");
    assert_eq!(rows[1][col("备注")], "无进厂记录");
    let r = &rows[2];
    assert_eq!(r[col("序号")], "2");
    assert_eq!(r[col("进厂时间")], "2026-03-01 23:50:00");
    assert_eq!(r[col("出厂时间")], "2026-03-02 00:20:00");
    assert_eq!(r[col("车牌号码")], "豫A12345");
    assert_eq!(r[col("车牌颜色")], "黄");
    assert_eq!(r[col("注册日期")], "2021-05-01");
    assert_eq!(r[col("车辆识别代号(VIN)")], "LZZ1CLVB7KA123456");
    assert_eq!(r[col("发动机号码")], "E123");
    assert_eq!(r[col("排放阶段")], "6");
    assert_eq!(r[col("运输货物名称")], "煤");
    assert_eq!(r[col("运输量(吨)")], "32.5");
    assert_eq!(r[col("车队名称")], "某运输公司");
    assert_eq!(r[col("进厂记录编号")], entry.id);
    assert_eq!(r[col("出厂记录编号")], exit.id);
    // Photo cells lead to the files.
    let photos: Vec<&str> = r[col("进厂照片")].split(';').collect();
    assert_eq!(photos.len(), 2);
    assert_eq!(std::fs::read(data.join(photos[0])).unwrap(), b"head");
    assert_eq!(
        std::fs::read(data.join(&r[col("随车清单")])).unwrap(),
        b"suiche qingdan"
    );

    // XLSX of the same range: a real zip container, written from the same table.
    let xlsx = tmp.path().join("t.xlsx");
    run(&[
        "ledger",
        "export",
        "--data-dir",
        data_s,
        "--ledger",
        "transport",
        "--from",
        "2026-03-01",
        "--to",
        "2026-03-01",
        "--format",
        "xlsx",
        "--out",
        xlsx.to_str().unwrap(),
    ])
    .unwrap();
    // Opened as a workbook: one sheet named after the ledger, the national header row, and
    // the very cells of the CSV (times as `yyyy-MM-dd HH:mm:ss` GMT+8 text).
    let book = Xlsx::open(&std::fs::read(&xlsx).unwrap());
    assert_eq!(book.names, vec!["进出厂运输车辆电子台账"]);
    let sheet = &book.sheets[0];
    assert_eq!(sheet[0], TRANSPORT_COLUMNS);
    let x = &sheet[2];
    assert_eq!(x[col("进厂时间")], "2026-03-01 23:50:00");
    assert_eq!(x[col("出厂时间")], "2026-03-02 00:20:00");
    assert_eq!(x[col("车牌号码")], "豫A12345");
    assert_eq!(x[col("运输量(吨)")], "32.5");
    assert_eq!(x[col("车队名称")], "某运输公司");
    assert_eq!(x[col("进厂记录编号")], entry.id);
    assert_eq!(sheet[1][col("出厂时间")], "2026-03-01 12:00:00");
    for row in &sheet[1..] {
        for c in ["进厂时间", "出厂时间"] {
            let t = &row[col(c)];
            assert!(t.is_empty() || is_local_time(t), "{c} `{t}`");
        }
    }
    // Cell for cell the CSV (trailing empty cells are absent from the sheet XML).
    let pad = |mut r: Vec<String>| {
        r.resize(TRANSPORT_COLUMNS.len(), String::new());
        r
    };
    let from_xlsx: Vec<Vec<String>> = sheet.iter().cloned().map(pad).collect();
    assert_eq!(from_xlsx, rows);

    // The next day holds nothing: the visit is filed under its entry.
    let out2 = tmp.path().join("t2.csv");
    run(&[
        "ledger",
        "export",
        "--data-dir",
        data_s,
        "--ledger",
        "transport",
        "--from",
        "2026-03-02",
        "--to",
        "2026-03-02",
        "--out",
        out2.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(read_csv(&out2).len(), 1);

    assert!(run(&[
        "ledger",
        "export",
        "--data-dir",
        data_s,
        "--ledger",
        "transport",
        "--from",
        "yesterday",
        "--to",
        "2026-03-02",
        "--out",
        "x.csv"
    ])
    .is_err());
}

#[test]
fn in_plant_and_non_road_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    std::fs::write(
        tmp.path().join("ip.csv"),
        "code,vin,fuel,stage,registered_on\nNB-01,LZZ1CLVB7KA000001,C,D,2022-01-02\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("nr.csv"),
        "reg_code,model,fuel,stage,produced_on,pin\nHB41-0001,ZL50,B,4,2020-06-01,PIN123\n",
    )
    .unwrap();
    for (kind, f) in [("in_plant", "ip.csv"), ("non_road", "nr.csv")] {
        run(&[
            "registry",
            "import",
            kind,
            tmp.path().join(f).to_str().unwrap(),
            "--data-dir",
            data_s,
        ])
        .unwrap();
    }
    // Far enough ahead whatever the local (GMT+8) date is now.
    let today = "2099-12-31".to_string();
    let (ip, nr) = (tmp.path().join("ip-out.csv"), tmp.path().join("nr-out.csv"));
    for (kind, out) in [("in_plant", &ip), ("non_road", &nr)] {
        run(&[
            "ledger",
            "export",
            "--data-dir",
            data_s,
            "--ledger",
            kind,
            "--from",
            "2020-01-01",
            "--to",
            &today,
            "--out",
            out.to_str().unwrap(),
        ])
        .unwrap();
    }
    let rows = read_csv(&ip);
    assert_eq!(rows[0], IN_PLANT_COLUMNS);
    assert_eq!(
        &rows[1][..6],
        &["1", "NB-01", "2022-01-02", "LZZ1CLVB7KA000001", "", "D"]
    );
    let rows = read_csv(&nr);
    assert_eq!(rows[0], NON_ROAD_COLUMNS);
    assert_eq!(&rows[1][..4], &["1", "HB41-0001", "2020-06-01", "4"]);
    assert_eq!(rows[1][8], "PIN123");
    // As of a day before the import, the registry was empty.
    run(&[
        "ledger",
        "export",
        "--data-dir",
        data_s,
        "--ledger",
        "non_road",
        "--from",
        "2020-01-01",
        "--to",
        "2020-12-31",
        "--out",
        nr.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(read_csv(&nr).len(), 1);
}

#[test]
fn paper_backfill_becomes_flagged_events_with_original_times() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(tmp.path().join("sheet.jpg"), b"paper sheet photo").unwrap();
    let csv = tmp.path().join("paper.csv");
    std::fs::write(
        &csv,
        "通行时间,进出类型,车牌号码,车牌颜色,车道,运输货物名称,运输量(吨),纸质台账照片\n\
         2026-03-01 08:10:00,进,豫A77777,黄,1-in,焦炭,30.25,sheet.jpg\n\
         2026-03-01 09:40:00,出,豫A77777,黄,1-out,,,sheet.jpg\n",
    )
    .unwrap();
    let l = Ledger::open(&data).unwrap();
    let r = backfill_csv(&l, &csv, "王五", "gateway down 08:00-10:00").unwrap();
    assert_eq!((r.recorded, r.first_seq, r.last_seq), (2, Some(1), Some(2)));
    let reader = LedgerReader::open(&data).unwrap();
    let e = reader.event(1).unwrap().unwrap();
    let EventBody::Backfill(b) = &e.body else {
        panic!("{:?}", e.body)
    };
    assert_eq!(b.operator, "王五");
    assert_eq!(b.line, 2);
    assert_eq!(b.net, Some(Mass::from_kg(30_250)));
    assert_eq!(e.occurred_at, local(1, 8, 10));
    assert!(e.recorded_at > e.occurred_at);
    assert_eq!(e.photos.len(), 1);
    let v = reader.visits(local(1, 0, 0), local(2, 0, 0)).unwrap();
    assert_eq!(v.len(), 1);
    assert!(v[0].exit.is_some());
    assert_eq!(v[0].flags, vec![VisitFlag::Backfill]);
    assert_eq!(v[0].cargo(), vec!["焦炭".to_string()]);
    // Uplinks see them on the cursor like any pass.
    assert_eq!(reader.events_after(0, 100).unwrap().len(), 2);
    assert!(verify(&data).unwrap().ok());

    // Bad rows: named, nothing recorded.
    let bad = tmp.path().join("bad.csv");
    std::fs::write(
        &bad,
        "time,direction,plate,color,lane\n\
         2026-03-01 08:10:00,sideways,豫A1,黄,1\n\
         2999-01-01 00:00:00,in,豫A1,黄,1\n\
         2026-02-30 08:00:00,in,豫A1,黄,1\n",
    )
    .unwrap();
    let Err(ImportError::BadRows(errs)) = backfill_csv(&l, &bad, "王五", "x") else {
        panic!("bad rows must be refused")
    };
    let got: Vec<(u64, &str)> = errs.iter().map(|e| (e.line, e.column.as_str())).collect();
    assert_eq!(got, vec![(2, "direction"), (3, "time"), (4, "time")]);
    assert!(errs[1].reason.contains("future"));
    assert_eq!(l.head().seq, 2);
    assert!(backfill_csv(&l, &csv, "", "no operator").is_err());
}

#[test]
fn purge_refuses_young_evidence_records_itself_and_keeps_the_chain_verifiable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let l = Ledger::open(&data).unwrap();
    let now = Utc::now();
    let old = now.checked_sub_months(Months::new(26)).unwrap();
    let young = now - Duration::days(30);
    let shared = Bytes::from_static(b"same bytes old and young");
    let r_old = l
        .append_blocking(
            pass("1-in", "豫A1", Direction::In),
            vec![Bytes::from_static(b"old only"), shared.clone()],
            old,
        )
        .unwrap();
    let r_young = l
        .append_blocking(
            pass("1-in", "豫A2", Direction::In),
            vec![Bytes::from_static(b"young"), shared],
            young,
        )
        .unwrap();

    // Nothing younger than 24 months: refused, and nothing recorded.
    let e = retention::purge(&l, now - Duration::days(365), now, "admin", "space").unwrap_err();
    assert!(e.to_string().contains("24 months"), "{e}");
    assert!(run(&[
        "ledger",
        "purge",
        "--data-dir",
        data.to_str().unwrap(),
        "--before",
        &(now - Duration::days(700)).format("%Y-%m-%d").to_string(),
        "--operator",
        "a",
        "--reason",
        "b"
    ])
    .is_err());
    assert_eq!(l.head().seq, 2);

    let cutoff = now.checked_sub_months(Months::new(25)).unwrap();
    let p = retention::purge(&l, cutoff, now, "admin", "retention").unwrap();
    assert_eq!(p.seq, 3);
    assert_eq!(p.photos_removed, 1);
    let store = l.photos();
    assert!(!store.path_for(&r_old.photos[0]).exists());
    assert!(
        store.path_for(&r_old.photos[1]).exists(),
        "shared photo kept"
    );
    let EventBody::Purge(pe) = LedgerReader::open(&data)
        .unwrap()
        .event(3)
        .unwrap()
        .unwrap()
        .body
    else {
        panic!()
    };
    assert_eq!(pe.photos, vec![r_old.photos[0].clone()]);
    assert_eq!(pe.operator, "admin");
    let rep = verify(&data).unwrap();
    assert!(rep.ok(), "{rep}");
    assert_eq!(rep.photos_purged, 1);

    // A purge does not excuse a young photo going missing.
    std::fs::remove_file(store.path_for(&r_young.photos[0])).unwrap();
    let b = verify(&data).unwrap().broken.unwrap();
    assert_eq!(b.seq, r_young.seq);
    assert!(matches!(b.what, BreakKind::PhotoMissing { .. }));
}

/// `yyyy-MM-dd HH:mm:ss`, digits where digits go.
fn is_local_time(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        })
}

/// Just enough of an XLSX reader (zip + the sheet XML): sheet names, cell text by row.
struct Xlsx {
    names: Vec<String>,
    sheets: Vec<Vec<Vec<String>>>,
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let i = tag.find(&key)? + key.len();
    let j = tag[i..].find('"')? + i;
    Some(&tag[i..j])
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Text of every `<t>` / `<t …>` element inside `xml`.
fn texts(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<t") {
        let after = &rest[i + 2..];
        if !(after.starts_with('>') || after.starts_with(' ')) {
            rest = after;
            continue;
        }
        let body = &after[after.find('>').unwrap() + 1..];
        let close = body.find("</t>").unwrap();
        out.push_str(&unescape(&body[..close]));
        rest = &body[close..];
    }
    out
}

fn col_index(r: &str) -> usize {
    r.chars()
        .take_while(char::is_ascii_alphabetic)
        .fold(0, |n, ch| n * 26 + (ch as usize - 'A' as usize + 1))
        - 1
}

impl Xlsx {
    fn open(bytes: &[u8]) -> Xlsx {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
        let mut read = |name: &str| -> Option<String> {
            let mut f = zip.by_name(name).ok()?;
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            Some(s)
        };
        let shared: Vec<String> = read("xl/sharedStrings.xml")
            .map(|x| x.split("<si>").skip(1).map(texts).collect())
            .unwrap_or_default();
        let names: Vec<String> = read("xl/workbook.xml")
            .unwrap()
            .split("<sheet ")
            .skip(1)
            .map(|t| unescape(attr(&format!(" {t}"), "name").unwrap()))
            .collect();
        let mut sheets = Vec::new();
        for i in 1..=names.len() {
            let xml = read(&format!("xl/worksheets/sheet{i}.xml")).unwrap();
            let mut rows = Vec::new();
            for row in xml.split("<row ").skip(1) {
                let mut cells: Vec<String> = Vec::new();
                for c in row.split("<c ").skip(1) {
                    let head = format!(" {}", &c[..c.find('>').unwrap()]);
                    let col = col_index(attr(&head, "r").unwrap());
                    let value = if head.trim_end().ends_with('/') {
                        String::new()
                    } else {
                        let v = c.find("<v>").map(|a| {
                            let b = c[a..].find("</v>").unwrap() + a;
                            c[a + 3..b].to_string()
                        });
                        match attr(&head, "t") {
                            Some("s") => shared[v.unwrap().parse::<usize>().unwrap()].clone(),
                            Some("inlineStr") | Some("str") => texts(c),
                            _ => v.unwrap_or_default(),
                        }
                    };
                    if cells.len() <= col {
                        cells.resize(col + 1, String::new());
                    }
                    cells[col] = value;
                }
                rows.push(cells);
            }
            sheets.push(rows);
        }
        Xlsx { names, sheets }
    }
}

/// An instant after every event recorded so far; the next event is recorded after it.
fn after_everything(data: &Path) -> DateTime<Utc> {
    let r = LedgerReader::open(data).unwrap();
    let last = r.event(r.head().unwrap().seq).unwrap().unwrap();
    let t = last.occurred_at + Duration::microseconds(1);
    // Stored times have microseconds: wait out the one that `t` falls in.
    while Utc::now() <= t + Duration::microseconds(1) {
        std::hint::spin_loop();
    }
    t
}

#[test]
fn registry_ledgers_show_each_record_as_it_stood_at_the_end_of_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(
        tmp.path().join("ip.csv"),
        "code,vin,fuel,stage,owner\n\
         NB-01,LZZ1CLVB7KA000001,B,5,甲公司\n\
         NB-02,LZZ1CLVB7KA000002,C,D,乙公司\n",
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("nr.csv"),
        "reg_code,model,fuel,stage\nHB-1,ZL50,B,3\n",
    )
    .unwrap();
    let l = Ledger::open(&data).unwrap();
    registry::import_csv(&l, RegistryKind::InPlant, &tmp.path().join("ip.csv"), false).unwrap();
    registry::import_csv(&l, RegistryKind::NonRoad, &tmp.path().join("nr.csv"), false).unwrap();
    let first = LedgerReader::open(&data)
        .unwrap()
        .event(1)
        .unwrap()
        .unwrap()
        .occurred_at;
    let to = after_everything(&data);

    // After the range: NB-01 edited, NB-02 removed, NB-03 added, HB-1 upgraded.
    registry::upsert(
        &l,
        RegistryKind::InPlant,
        &[
            ("code", "NB-01"),
            ("vin", "LZZ1CLVB7KA000001"),
            ("fuel", "C"),
            ("stage", "D"),
            ("owner", "丙公司"),
        ],
        "api",
    )
    .unwrap();
    assert!(registry::remove(&l, RegistryKind::InPlant, vec!["NB-02".into()]).unwrap());
    registry::upsert(
        &l,
        RegistryKind::InPlant,
        &[
            ("code", "NB-03"),
            ("vin", "LZZ1CLVB7KA000003"),
            ("fuel", "C"),
            ("stage", "D"),
        ],
        "api",
    )
    .unwrap();
    registry::upsert(
        &l,
        RegistryKind::NonRoad,
        &[
            ("reg_code", "HB-1"),
            ("model", "ZL50"),
            ("fuel", "B"),
            ("stage", "4"),
        ],
        "api",
    )
    .unwrap();

    let reader = LedgerReader::open(&data).unwrap();
    let from = local(1, 0, 0);
    let col = |name: &str| IN_PLANT_COLUMNS.iter().position(|c| *c == name).unwrap();
    let cells = |rows: &[Vec<String>], names: &[&str]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|r| names.iter().map(|n| r[col(n)].clone()).collect())
            .collect()
    };
    let keys = ["登记编码或内部管理号牌", "排放阶段", "燃料类型", "所有人"];
    let then = table(&reader, LedgerKind::InPlant, from, to).unwrap();
    assert_eq!(
        cells(&then.rows, &keys),
        vec![
            vec!["NB-01", "5", "柴油", "甲公司"],
            vec!["NB-02", "D", "电", "乙公司"],
        ]
    );
    // Its time is the change that made that version, in GMT+8.
    assert_eq!(
        then.rows[0][col("更新时间")],
        ecogate::ledger::local_time(first)
    );
    let now = table(
        &reader,
        LedgerKind::InPlant,
        from,
        Utc::now() + Duration::days(1),
    )
    .unwrap();
    assert_eq!(
        cells(&now.rows, &["登记编码或内部管理号牌", "所有人"]),
        vec![vec!["NB-01", "丙公司"], vec!["NB-03", ""]]
    );
    assert_eq!(now.rows[1][col("序号")], "2");
    let stage = |t: &ecogate::ledger::export::Table| -> Vec<String> {
        t.rows.iter().map(|r| r[3].clone()).collect()
    };
    assert_eq!(NON_ROAD_COLUMNS[3], "排放阶段");
    assert_eq!(
        stage(&table(&reader, LedgerKind::NonRoad, from, to).unwrap()),
        vec!["3"]
    );
    assert_eq!(
        stage(
            &table(
                &reader,
                LedgerKind::NonRoad,
                from,
                Utc::now() + Duration::days(1)
            )
            .unwrap()
        ),
        vec!["4"]
    );
}

#[test]
fn absurd_weights_do_not_overflow_the_transport_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let l = Ledger::open(&data).unwrap();
    let entry = l
        .append_blocking(
            pass("1-in", "豫A12345", Direction::In),
            vec![],
            local(1, 8, 0),
        )
        .unwrap();
    // Two weighings (of different cargo, so the day totals stay apart) whose nets sum past i64.
    let huge = Mass::from_grams(i64::MAX - 10);
    for (i, cargo) in ["煤", "焦炭"].into_iter().enumerate() {
        l.append_blocking(
            EventBody::Weighing(Weighing {
                lane: "1-in".into(),
                scale: "scale1".into(),
                plate: "豫A12345".into(),
                color: PlateColor::Yellow,
                gross: None,
                tare: None,
                net: Some(huge),
                cargo: Some(cargo.into()),
                direction: Some(Direction::In),
                pass_ref: Some(entry.id.clone()),
            }),
            vec![],
            local(1, 8, 1 + i as u32),
        )
        .unwrap();
    }
    let reader = LedgerReader::open(&data).unwrap();
    let v = reader.visits(local(1, 0, 0), local(2, 0, 0)).unwrap();
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].net(), Some(Mass::from_grams(i64::MAX)), "saturates");
    let t = table(
        &reader,
        LedgerKind::Transport,
        local(1, 0, 0),
        local(2, 0, 0),
    )
    .unwrap();
    let col = TRANSPORT_COLUMNS
        .iter()
        .position(|c| *c == "运输量(吨)")
        .unwrap();
    assert_eq!(t.rows[0][col], "9223372036854.8");
}
