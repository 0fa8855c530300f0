//! Registries: CSV import with row-level errors, all-or-nothing, `--skip-bad`, the chain
//! records every change, and the policy engine's lookup.

use chrono::Utc;
use ecogate::ledger::registry::{as_of, import_csv, list, remove, upsert, ImportError};
use ecogate::ledger::{verify, EventBody, Ledger, LedgerReader, SqliteRegistry};
use ecogate::registry::VehicleRegistry;
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind};
use std::path::Path;

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const HEADER: &str = "plate,color,vin,engine_no,vehicle_type,use_character,fuel,stage,stage_basis,registered_on,fleet,license_photo,list_photo";

#[test]
fn good_transport_import_is_recorded_and_looked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::write(tmp.path().join("xsz1.jpg"), b"driving licence 1").unwrap();
    let csv = write(
        tmp.path(),
        "v.csv",
        &format!(
            "\u{feff}{HEADER}\n\
             豫A12345,黄,LZZ1CLVB7KA123456,E123,H11,F,B,6,随车清单,2021-05-01,某运输公司,xsz1.jpg,\n\
             豫B67890,1,LZZ1CLVB7KA654321,-,Q11,,天然气,国Ⅴ,,20190302,个人,,\n"
        ),
    );
    let ledger = Ledger::open(&data).unwrap();
    let report = import_csv(&ledger, RegistryKind::Transport, &csv, false).unwrap();
    assert_eq!(report.imported, 2);
    assert!(report.errors.is_empty());
    // Advisory (reference §3.1): the row without 行驶证 or 随车清单 is imported and flagged.
    let warned: Vec<(u64, &str)> = report
        .warnings
        .iter()
        .map(|w| (w.line, w.column.as_str()))
        .collect();
    assert_eq!(warned, vec![(3, "license_photo/list_photo")]);
    assert_eq!(ledger.head().seq, 2);

    let reg = SqliteRegistry::open(&data).unwrap();
    let f = reg.lookup("豫A12345", PlateColor::Yellow).unwrap();
    assert_eq!(f.registry, RegistryKind::Transport);
    assert_eq!(f.stage, EmissionStage::China(6));
    assert_eq!(f.fuel, Fuel::Diesel);
    assert_eq!(f.vehicle_type, "H11");
    assert_eq!(f.use_character, Some('F'));
    let g = reg.lookup("豫B67890", PlateColor::Yellow).unwrap();
    assert_eq!(
        (g.stage, g.fuel),
        (EmissionStage::China(5), Fuel::NaturalGas)
    );
    assert!(reg.lookup("豫A12345", PlateColor::Blue).is_none());

    // The change is in the chain with its photo.
    let events = LedgerReader::open(&data)
        .unwrap()
        .events_after(0, 10)
        .unwrap();
    let EventBody::RegistryChange(rc) = &events[0].body else {
        panic!("expected a registry change, got {:?}", events[0].body)
    };
    assert_eq!(rc.key, "豫A12345 yellow");
    assert_eq!(rc.source, "import:v.csv:2");
    assert_eq!(events[0].photos.len(), 1);
    let rep = verify(&data).unwrap();
    assert!(rep.ok(), "{rep}");
    assert_eq!(rep.photos_checked, 1);

    // Re-import replaces, and a delete is recorded too.
    import_csv(&ledger, RegistryKind::Transport, &csv, false).unwrap();
    let conn = LedgerReader::open(&data).unwrap();
    assert_eq!(list(conn.conn(), RegistryKind::Transport).unwrap().len(), 2);
    assert!(remove(
        &ledger,
        RegistryKind::Transport,
        vec!["豫B67890".into(), "yellow".into()]
    )
    .unwrap());
    assert!(reg.lookup("豫B67890", PlateColor::Yellow).is_none());
    assert_eq!(ledger.head().seq, 5);
}

#[test]
fn bad_rows_are_named_and_nothing_is_imported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let csv = write(
        tmp.path(),
        "bad.csv",
        &format!(
            "{HEADER}\n\
             豫A12345,黄,LZZ1CLVB7KA123456,E1,H11,F,B,6,,2021-05-01,fleet,,\n\
             豫A22222,黄,SHORTVIN,E1,H11,F,B,6,,2021-05-01,fleet,,\n\
             豫A33333,紫,LZZ1CLVB7KA123457,E1,H11,F,B,9,,2021-13-01,fleet,,\n\
             豫A12345,黄,LZZ1CLVB7KA123458,E1,H11,F,B,6,,2021-05-01,fleet,missing.jpg,\n\
             豫A44444,黄,LZZ1CLVB7KA123459,E1,H11,F,B,6,,2021-05-01,,,\n\
             豫A55555,黄,LZZ1CLVB7KA123450\n"
        ),
    );
    let ledger = Ledger::open(&data).unwrap();
    let err = import_csv(&ledger, RegistryKind::Transport, &csv, false).unwrap_err();
    let ImportError::BadRows(errs) = &err else {
        panic!("{err}")
    };
    let got: Vec<(u64, &str)> = errs.iter().map(|e| (e.line, e.column.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (3, "vin"),
            (4, "color"),
            (4, "stage"),
            (4, "registered_on"),
            (5, "license_photo"),
            (6, "fleet"),
            (7, ""),
        ],
        "{err}"
    );
    assert!(err.to_string().contains("line 3, column `vin`"), "{err}");
    assert_eq!(ledger.head().seq, 0, "nothing may be imported");
    let reg = SqliteRegistry::open(&data).unwrap();
    assert!(reg.lookup("豫A12345", PlateColor::Yellow).is_none());

    let report = import_csv(&ledger, RegistryKind::Transport, &csv, true).unwrap();
    assert_eq!(report.imported, 1);
    assert_eq!(report.skipped, 5);
    assert_eq!(report.errors.len(), 7);
    assert!(reg.lookup("豫A12345", PlateColor::Yellow).is_some());
}

#[test]
fn duplicate_keys_and_header_problems() {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(&tmp.path().join("d")).unwrap();
    let dup = write(
        tmp.path(),
        "dup.csv",
        &format!(
            "{HEADER}\n\
             豫A12345,黄,LZZ1CLVB7KA123456,E1,H11,F,B,6,,2021-05-01,fleet,,\n\
             豫A12345,yellow,LZZ1CLVB7KA123457,E1,H11,F,B,6,,2021-05-01,fleet,,\n"
        ),
    );
    let ImportError::BadRows(errs) =
        import_csv(&ledger, RegistryKind::Transport, &dup, false).unwrap_err()
    else {
        panic!()
    };
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column.as_str()), (3, "plate+color"));
    assert!(errs[0].reason.contains("line 2"));

    let hdr = write(tmp.path(), "hdr.csv", "plate,colour,vin\n豫A1,黄,x\n");
    let ImportError::BadRows(errs) =
        import_csv(&ledger, RegistryKind::Transport, &hdr, false).unwrap_err()
    else {
        panic!()
    };
    assert!(errs.iter().all(|e| e.line == 1));
    assert!(errs
        .iter()
        .any(|e| e.column == "colour" && e.reason.contains("unknown")));
    assert!(errs
        .iter()
        .any(|e| e.column == "color" && e.reason.contains("missing")));
}

#[test]
fn in_plant_without_plate_and_non_road_stage_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ledger = Ledger::open(&data).unwrap();
    let inplant = write(
        tmp.path(),
        "inplant.csv",
        "登记编码,车牌号码,车牌颜色,车辆识别代号,燃料类型,排放阶段\n\
         CN-001,,,LZZ1CLVB7KA000001,C,D\n\
         CN-002,豫A9999F,绿,LZZ1CLVB7KA000002,C,D\n",
    );
    assert_eq!(
        import_csv(&ledger, RegistryKind::InPlant, &inplant, false)
            .unwrap()
            .imported,
        2
    );
    let reg = SqliteRegistry::open(&data).unwrap();
    let f = reg.lookup("CN-001", PlateColor::Other).unwrap();
    assert_eq!(f.registry, RegistryKind::InPlant);
    assert_eq!(f.stage, EmissionStage::Electric);
    assert!(reg.lookup("豫A9999F", PlateColor::Green).is_some());

    let nonroad = write(
        tmp.path(),
        "nr.csv",
        "reg_code,model,fuel,stage,engine_power_kw\n\
         HB-1,ZL50,B,4,162.5\n\
         HB-2,ZL50,B,5,162\n\
         HB-3,ZL50,B,X,abc\n",
    );
    let ImportError::BadRows(errs) =
        import_csv(&ledger, RegistryKind::NonRoad, &nonroad, false).unwrap_err()
    else {
        panic!()
    };
    let got: Vec<(u64, &str)> = errs.iter().map(|e| (e.line, e.column.as_str())).collect();
    assert_eq!(got, vec![(3, "stage"), (4, "engine_power_kw")]);
    import_csv(&ledger, RegistryKind::NonRoad, &nonroad, true).unwrap();
    let f = reg.lookup("HB-1", PlateColor::Other).unwrap();
    assert_eq!(f.registry, RegistryKind::NonRoad);
    assert_eq!(f.stage, EmissionStage::China(4));
    assert!(verify(&data).unwrap().ok());
}

#[test]
fn single_record_upsert_validates_and_records() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let ledger = Ledger::open(&data).unwrap();
    let mut rec = vec![
        ("plate", "豫A54321"),
        ("车牌颜色", "黄"),
        ("vin", "LZZ1CLVB7KA999999"),
        ("engine_no", "-"),
        ("vehicle_type", "Q11"),
        ("fuel", "B"),
        ("stage", "国Ⅵ"),
        ("registered_on", "2023-07-01"),
        ("fleet", "自有车队"),
    ];
    let done =
        ecogate::ledger::registry::upsert(&ledger, RegistryKind::Transport, &rec, "platform")
            .unwrap();
    let seq = done.seq;
    // No 行驶证 / 随车清单: stored, and flagged for review.
    assert_eq!(done.warnings.len(), 1, "{:?}", done.warnings);
    assert!(done.warnings[0].reason.contains("行驶证"));
    let reg = SqliteRegistry::open(&data).unwrap();
    let f = reg.lookup("豫A54321", PlateColor::Yellow).unwrap();
    assert_eq!(f.stage, EmissionStage::China(6));
    let e = LedgerReader::open(&data)
        .unwrap()
        .event(seq)
        .unwrap()
        .unwrap();
    let EventBody::RegistryChange(rc) = e.body else {
        panic!()
    };
    assert_eq!(rc.source, "platform");

    rec[6] = ("stage", "9");
    rec.push(("colour", "x"));
    let Err(ImportError::BadRows(errs)) =
        ecogate::ledger::registry::upsert(&ledger, RegistryKind::Transport, &rec, "api")
    else {
        panic!("bad record must be refused")
    };
    let cols: Vec<&str> = errs.iter().map(|e| e.column.as_str()).collect();
    assert_eq!(cols, vec!["stage", "colour"]);
    assert_eq!(ledger.head().seq, seq);
}

/// A valid transport row with `photo` in the 行驶证 column.
fn row_with_license(plate: &str, photo: &str) -> String {
    format!("{plate},黄,LZZ1CLVB7KA123456,E1,H11,F,B,6,,2021-05-01,fleet,{photo},\n")
}

#[test]
fn csv_photo_paths_stay_inside_the_csv_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, b"not a photo: a file elsewhere on the gateway").unwrap();
    let dir = tmp.path().join("fleet");
    std::fs::create_dir_all(dir.join("scans")).unwrap();
    std::fs::write(dir.join("scans/ok.jpg"), b"licence scan").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&secret, dir.join("link.jpg")).unwrap();
    let mut text = format!("{HEADER}\n");
    text += &row_with_license("豫A00001", "../secret.txt");
    text += &row_with_license("豫A00002", secret.to_str().unwrap());
    text += &row_with_license("豫A00003", "scans/../../secret.txt");
    text += &row_with_license("豫A00004", "scans");
    text += &row_with_license("豫A00005", "scans/ok.jpg");
    text += &row_with_license("豫A00006", dir.join("scans/ok.jpg").to_str().unwrap());
    #[cfg(unix)]
    {
        text += &row_with_license("豫A00007", "link.jpg");
    }
    let csv = write(&dir, "v.csv", &text);
    let ledger = Ledger::open(&data).unwrap();
    let err = import_csv(&ledger, RegistryKind::Transport, &csv, false).unwrap_err();
    let ImportError::BadRows(errs) = &err else {
        panic!("{err}")
    };
    let got: Vec<(u64, &str)> = errs.iter().map(|e| (e.line, e.column.as_str())).collect();
    let mut want = vec![
        (2, "license_photo"),
        (3, "license_photo"),
        (4, "license_photo"),
        (5, "license_photo"),
    ];
    if cfg!(unix) {
        want.push((8, "license_photo"));
    }
    assert_eq!(got, want, "{err}");
    assert!(errs[0].reason.contains(".."), "{}", errs[0].reason);
    assert!(errs[1].reason.contains("outside"), "{}", errs[1].reason);
    assert!(
        errs[3].reason.contains("regular file"),
        "{}",
        errs[3].reason
    );
    assert_eq!(ledger.head().seq, 0, "nothing may be imported");

    // --skip-bad imports the two rows whose photo is inside the folder, and nothing else
    // reaches the photo store.
    let report = import_csv(&ledger, RegistryKind::Transport, &csv, true).unwrap();
    assert_eq!(report.imported, 2);
    let stored: Vec<Vec<u8>> = walk(&data.join("photos"))
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert_eq!(stored, vec![b"licence scan".to_vec()]);
    assert!(verify(&data).unwrap().ok());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn single_record_writes_refuse_every_photo_field_and_keep_stored_photos() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, b"server file").unwrap();
    let secret_s = secret.to_str().unwrap();
    let ledger = Ledger::open(&data).unwrap();
    let transport = [
        ("plate", "豫A54321"),
        ("color", "黄"),
        ("vin", "LZZ1CLVB7KA999999"),
        ("engine_no", "-"),
        ("vehicle_type", "Q11"),
        ("fuel", "B"),
        ("stage", "6"),
        ("registered_on", "2023-07-01"),
        ("fleet", "自有车队"),
    ];
    let in_plant = [
        ("code", "CN-1"),
        ("vin", "LZZ1CLVB7KA000001"),
        ("fuel", "C"),
        ("stage", "D"),
    ];
    let non_road = [
        ("reg_code", "HB-1"),
        ("model", "ZL50"),
        ("fuel", "B"),
        ("stage", "4"),
    ];
    type Case<'a> = (RegistryKind, &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: [Case; 3] = [
        (
            RegistryKind::Transport,
            &transport,
            &["license_photo", "行驶证", "list_photo", "随车清单"],
        ),
        (
            RegistryKind::InPlant,
            &in_plant,
            &["license_photo", "行驶证", "list_photo", "随车清单"],
        ),
        (
            RegistryKind::NonRoad,
            &non_road,
            &[
                "engine_plate_photo",
                "发动机铭牌",
                "machine_plate_photo",
                "机械铭牌",
                "label_photo",
                "环保信息标签",
            ],
        ),
    ];
    for (kind, base, photo_names) in cases {
        for name in photo_names {
            for value in [secret_s, "secret.txt", ""] {
                let mut rec = base.to_vec();
                rec.push((name, value));
                let Err(ImportError::BadRows(errs)) = upsert(&ledger, kind, &rec, "api") else {
                    panic!("{kind:?} `{name}` = `{value}` must be refused")
                };
                assert_eq!(errs.len(), 1, "{errs:?}");
                assert!(errs[0].column.ends_with("_photo"), "{errs:?}");
                assert!(errs[0].reason.contains("registry import"), "{errs:?}");
            }
        }
    }
    assert_eq!(ledger.head().seq, 0, "nothing may be recorded");
    assert!(walk(&data.join("photos")).is_empty());

    // A record with its 行驶证 from a CSV import keeps it when a single-record write replaces
    // the record without photos.
    std::fs::write(tmp.path().join("xsz.jpg"), b"licence").unwrap();
    let csv = write(
        tmp.path(),
        "v.csv",
        &format!("{HEADER}\n{}", row_with_license("豫A54321", "xsz.jpg")),
    );
    let rep = import_csv(&ledger, RegistryKind::Transport, &csv, false).unwrap();
    assert!(rep.warnings.is_empty(), "{:?}", rep.warnings);
    let conn = LedgerReader::open(&data).unwrap();
    let photo_of = || {
        list(conn.conn(), RegistryKind::Transport).unwrap()[0]
            .iter()
            .find(|(k, _)| k == "license_photo")
            .unwrap()
            .1
            .clone()
    };
    let hash = photo_of();
    assert_eq!(hash.len(), 64);
    let mut edit = transport.to_vec();
    edit[8] = ("fleet", "新车队");
    let done = upsert(&ledger, RegistryKind::Transport, &edit, "api").unwrap();
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    assert_eq!(photo_of(), hash);
    let fleet = &list(conn.conn(), RegistryKind::Transport).unwrap()[0]
        .iter()
        .find(|(k, _)| k == "fleet")
        .unwrap()
        .1
        .clone();
    assert_eq!(fleet, "新车队");
    // The event records the record as stored, photo included, so the chain can rebuild it.
    let e = conn.event(done.seq).unwrap().unwrap();
    assert_eq!(e.photos, vec![hash.clone()]);
    let rebuilt = as_of(conn.conn(), RegistryKind::Transport, Utc::now()).unwrap();
    assert_eq!(rebuilt, list(conn.conn(), RegistryKind::Transport).unwrap());
    assert!(verify(&data).unwrap().ok());
}
