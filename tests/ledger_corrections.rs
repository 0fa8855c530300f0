//! `ecogate ledger correct` over a real ledger file: the correction is a new event naming the
//! old one, the views apply it, and what cannot be corrected is refused with nothing written.

mod ledger_support;

use chrono::Duration;
use ecogate::ledger::{Direction, EventBody, Ledger, LedgerReader, Weighing};
use ecogate::vehicle::PlateColor;
use ecogate_drivers::Mass;
use ledger_support::{at, pass};
use std::path::Path;
use std::process::Command;

fn correct(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ecogate"))
        .args(["ledger", "correct", "--data-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn cli_corrections_are_applied_by_the_views_and_bad_ones_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let (entry, weighing, exit) = {
        let l = Ledger::open(&dir).unwrap();
        let entry = l
            .append_blocking(pass("1-in", "豫A00011", Direction::In), vec![], at(0))
            .unwrap();
        let weighing = l
            .append_blocking(
                EventBody::Weighing(Weighing {
                    lane: "1-in".into(),
                    scale: "scale1".into(),
                    plate: "豫A00011".into(),
                    color: PlateColor::Yellow,
                    gross: Some(Mass::from_kg(45_000)),
                    tare: Some(Mass::from_kg(15_000)),
                    net: Some(Mass::from_kg(30_000)),
                    cargo: Some("煤".into()),
                    direction: None,
                    pass_ref: Some(entry.id.clone()),
                }),
                vec![],
                at(5),
            )
            .unwrap();
        let exit = l
            .append_blocking(pass("1-out", "豫A00011", Direction::Out), vec![], at(60))
            .unwrap();
        (entry, weighing, exit)
    };
    let op = ["--operator", "王工"];

    // The plate of the entry was misread; the weighing's cargo and net were keyed wrong.
    let (ok, out) = correct(
        &dir,
        &[
            &[
                "--ref",
                &entry.id,
                "--plate",
                "豫A00012",
                "--reason",
                "识别错误",
            ],
            &op[..],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    let (ok, out) = correct(
        &dir,
        &[
            &[
                "--ref",
                &weighing.id,
                "--cargo",
                "焦炭",
                "--net-kg",
                "31250.5",
                "--reason",
                "录错",
            ],
            &op[..],
        ]
        .concat(),
    );
    assert!(ok, "{out}");

    let r = LedgerReader::open(&dir).unwrap();
    let passes = r.passes(at(-10), at(120)).unwrap();
    assert_eq!(passes.len(), 2);
    assert_eq!(passes[0].plate, "豫A00012", "corrected plate in the view");
    assert_eq!(passes[0].corrections.len(), 1);
    assert_eq!(passes[1].plate, "豫A00011", "the exit is untouched");
    let ws = r.weighings(at(-10), at(120)).unwrap();
    assert_eq!(ws.len(), 1);
    assert_eq!(ws[0].cargo.as_deref(), Some("焦炭"));
    assert_eq!(ws[0].net, Some("31250.5".parse::<Mass>().unwrap()));
    let corrections = r
        .events_between(
            &["correction"],
            at(-10),
            chrono::Utc::now() + Duration::days(1),
        )
        .unwrap();
    assert_eq!(corrections.len(), 2);
    let head = r.head().unwrap();

    // Refused, naming the reason, and nothing written.
    let refused: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--ref", "nope", "--void", "--reason", "x"],
            "no event with id `nope`",
        ),
        (
            vec!["--ref", &entry.id, "--reason", "x"],
            "nothing to correct",
        ),
        (
            vec![
                "--ref",
                &entry.id,
                "--void",
                "--plate",
                "豫A00013",
                "--reason",
                "x",
            ],
            "cannot be combined",
        ),
        (
            vec!["--ref", &weighing.id, "--direction", "out", "--reason", "x"],
            "correct the pass instead",
        ),
        (
            vec!["--ref", &weighing.id, "--net-kg", "250000", "--reason", "x"],
            "outside 0–200000 kg",
        ),
        (
            vec!["--ref", &weighing.id, "--net-kg", "abc", "--reason", "x"],
            "--net-kg",
        ),
        (
            vec!["--ref", &entry.id, "--color", "pink", "--reason", "x"],
            "--color `pink`",
        ),
        (
            vec!["--ref", &corrections[0].id, "--void", "--reason", "x"],
            "only pass_attempt",
        ),
    ];
    for (args, names) in refused {
        let (ok, out) = correct(&dir, &[&args[..], &op[..]].concat());
        assert!(!ok, "{args:?} should be refused: {out}");
        assert!(
            out.contains(names),
            "{args:?}: `{out}` should say `{names}`"
        );
    }
    assert_eq!(r.head().unwrap(), head, "a refused correction was written");

    // Void withdraws the exit from the views; a second void is refused.
    let (ok, out) = correct(
        &dir,
        &[
            &["--ref", &exit.id, "--void", "--reason", "测试车辆"],
            &op[..],
        ]
        .concat(),
    );
    assert!(ok, "{out}");
    let passes = r.passes(at(-10), at(120)).unwrap();
    assert_eq!(passes.len(), 1, "the voided exit left the view");
    let (ok, out) = correct(
        &dir,
        &[&["--ref", &exit.id, "--void", "--reason", "again"], &op[..]].concat(),
    );
    assert!(!ok && out.contains("voided"), "{out}");
    // The chain still verifies with the corrections in it.
    assert!(ecogate::ledger::verify::verify(&dir).unwrap().ok());
}
