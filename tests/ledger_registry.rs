//! Registries: CSV import with row-level errors, all-or-nothing, `--skip-bad`, the chain
//! records every change, and the policy engine's lookup.

use ecogate::ledger::registry::{import_csv, list, remove, ImportError};
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
    let seq = ecogate::ledger::registry::upsert(&ledger, RegistryKind::Transport, &rec, "platform")
        .unwrap();
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
