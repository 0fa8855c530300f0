//! Acceptance tests of the access policy: the strategy table (checked three ways: the table
//! printed in docs/policy.md, an oracle written from the strategy texts of regulatory-domain
//! §2.9, and the engine), lists, unknown vehicles, non-road machinery, exits, measure windows,
//! strictest-wins, invariants under random input, and config diagnostics.

use chrono::{DateTime, Duration, Utc};
use ecogate::config::diag::SourceFile;
use ecogate::policy::{
    ControlMeasure, Decision, DecisionInput, Direction, ListEntry, Policy, PolicyConfig,
    PolicyState, Strategy, WarningLevel,
};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use proptest::prelude::*;
use proptest::strategy::Strategy as _;

#[derive(serde::Deserialize)]
struct Wrapper {
    #[serde(default)]
    policy: PolicyConfig,
}

const GATES: [&str; 2] = ["1", "2"];

fn gate_ids() -> Vec<String> {
    GATES.iter().map(|g| g.to_string()).collect()
}

fn compile(toml_text: &str) -> Result<Policy, Vec<ecogate::config::diag::Diagnostic>> {
    let file = SourceFile::new("site.toml", toml_text.to_string());
    let w: Wrapper = toml::from_str(toml_text).expect("test TOML parses");
    w.policy.compile(&file, &gate_ids())
}

fn policy(toml_text: &str) -> Policy {
    match compile(toml_text) {
        Ok(p) => p,
        Err(e) => panic!("{e:#?}"),
    }
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time")
        .with_timezone(&Utc)
}

fn now() -> DateTime<Utc> {
    t("2026-12-02T10:00:00+08:00")
}

fn facts(
    plate: &str,
    color: PlateColor,
    kind: RegistryKind,
    vtype: &str,
    stage: EmissionStage,
    fuel: Fuel,
) -> VehicleFacts {
    VehicleFacts {
        plate: plate.into(),
        color,
        registry: kind,
        stage,
        fuel,
        vehicle_type: vtype.into(),
        use_character: Some('F'),
        obd_online: Some(true),
    }
}

fn heavy(stage: EmissionStage, fuel: Fuel) -> VehicleFacts {
    facts(
        "豫A12345",
        PlateColor::Yellow,
        RegistryKind::Transport,
        "H11",
        stage,
        fuel,
    )
}

fn measure(level: WarningLevel, strategy: Option<Strategy>) -> ControlMeasure {
    ControlMeasure {
        level,
        strategy,
        start: t("2026-12-01T06:00:00+08:00"),
        end: Some(t("2026-12-04T00:00:00+08:00")),
        gates: None,
        source: "platform".into(),
    }
}

fn decide_in(
    p: &Policy,
    s: &PolicyState,
    f: Option<&VehicleFacts>,
    plate: &str,
    c: PlateColor,
) -> Decision {
    p.decide(
        &DecisionInput {
            plate,
            color: c,
            facts: f,
            gate: "1",
            direction: Direction::In,
            now: now(),
        },
        s,
    )
}

fn decide_facts(p: &Policy, s: &PolicyState, f: &VehicleFacts) -> Decision {
    decide_in(p, s, Some(f), &f.plate, f.color)
}

fn state_with(measures: Vec<ControlMeasure>) -> PolicyState {
    let mut s = PolicyState::default();
    for m in measures {
        s.add_measure(m);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The strategy table.

/// Normal-day minimums and level rules switched off, so the table shows the strategies alone.
const STRATEGIES_ONLY: &str = r#"
[policy.normal]
heavy_goods = { all = 0 }
light_goods = { all = 0 }
passenger = { all = 0 }
other = { all = 0 }
[policy.levels.orange]
heavy_goods = { all = 0 }
non_road = 0
[policy.levels.red]
heavy_goods = { all = 0 }
non_road = 0
"#;

const STAGES: [&str; 9] = ["0", "1", "2", "3", "4", "5", "6", "D", "X"];
const FUELS: [char; 5] = ['B', 'E', 'F', 'A', 'C'];

/// Written from the strategy texts (§2.9), not from the engine: "禁行国N及以下" bans stages
/// 0..=N; stage X counts as not proven above N; new energy (green/yellow-green plate, stage D,
/// fuel C) is never banned by 1–3, and by default not by 4 either; 4 (停止公路运输) stops every
/// other goods vehicle.
fn oracle(heavy: bool, strategy: Option<u8>, stage: &str, fuel: char, color: PlateColor) -> bool {
    let new_energy =
        matches!(color, PlateColor::Green | PlateColor::YellowGreen) || stage == "D" || fuel == 'C';
    if new_energy {
        return true;
    }
    let banned_up_to = match (strategy, fuel) {
        (None, _) => return true,
        (Some(4), _) => return false,
        _ if !heavy => return true,
        (Some(1), 'B' | 'E' | 'F') => 3,
        (Some(2), 'B' | 'E' | 'F') => 4,
        (Some(3), 'B') => 4,
        (Some(3), 'E' | 'F') => 5,
        _ => return true,
    };
    match stage.parse::<u8>() {
        Ok(n) => n > banned_up_to,
        Err(_) => false,
    }
}

struct DocRow {
    class: String,
    fuels: Vec<char>,
    colors: Vec<PlateColor>,
    stages: Vec<String>,
    /// none, 1, 2, 3, 4
    allow: [bool; 5],
}

fn expand_stages(cell: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in cell.split(',').map(str::trim) {
        if part == "any" {
            out.extend(STAGES.iter().map(|s| s.to_string()));
        } else if let Some((a, b)) = part.split_once('–').or_else(|| part.split_once('-')) {
            let (a, b): (u8, u8) = (a.trim().parse().unwrap(), b.trim().parse().unwrap());
            out.extend((a..=b).map(|n| n.to_string()));
        } else {
            out.push(part.to_string());
        }
    }
    out
}

fn doc_table() -> Vec<DocRow> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/policy.md");
    let doc = std::fs::read_to_string(path).expect("docs/policy.md exists");
    let start = doc
        .find("<!-- strategy-table:begin -->")
        .expect("table begin marker");
    let end = doc
        .find("<!-- strategy-table:end -->")
        .expect("table end marker");
    let mut rows = Vec::new();
    for line in doc[start..end]
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 9, "row `{line}`");
        let fuels = if cells[1] == "any" {
            FUELS.to_vec()
        } else {
            cells[1]
                .split(',')
                .map(|f| f.trim().chars().next().unwrap())
                .collect()
        };
        let colors = cells[2]
            .split_whitespace()
            .map(|c| c.parse::<PlateColor>().unwrap())
            .collect();
        let mut allow = [false; 5];
        for (a, cell) in allow.iter_mut().zip(&cells[4..]) {
            *a = match *cell {
                "✓" => true,
                "✗" => false,
                other => panic!("cell `{other}` in `{line}`"),
            };
        }
        rows.push(DocRow {
            class: cells[0].to_string(),
            fuels,
            colors,
            stages: expand_stages(cells[3]),
            allow,
        });
    }
    rows
}

fn doc_lookup(
    rows: &[DocRow],
    class: &str,
    fuel: char,
    color: PlateColor,
    stage: &str,
) -> [bool; 5] {
    let hits: Vec<&DocRow> = rows
        .iter()
        .filter(|r| {
            r.class == class
                && r.fuels.contains(&fuel)
                && r.colors.contains(&color)
                && r.stages.iter().any(|s| s == stage)
        })
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "docs table must cover {class} {fuel} {color} stage {stage} exactly once"
    );
    hits[0].allow
}

#[test]
fn every_strategy_stage_fuel_and_plate_colour_gives_the_documented_decision() {
    let p = policy(STRATEGIES_ONLY);
    let rows = doc_table();
    let strategies: [Option<u8>; 5] = [None, Some(1), Some(2), Some(3), Some(4)];
    let mut checked = 0;
    for (class, vtype) in [
        ("heavy_goods", "H11"),
        ("heavy_goods", "Q11"),
        ("light_goods", "H21"),
        ("passenger", "K11"),
        ("other", "Z51"),
    ] {
        for stage in STAGES {
            for fuel in FUELS {
                for color in PlateColor::ALL {
                    let documented = doc_lookup(&rows, class, fuel, color, stage);
                    for (i, strategy) in strategies.iter().enumerate() {
                        let goods = class.ends_with("_goods");
                        let expected =
                            !goods || oracle(class == "heavy_goods", *strategy, stage, fuel, color);
                        assert_eq!(
                            documented[i], expected,
                            "docs vs oracle: {class} strategy {strategy:?} stage {stage} fuel {fuel} {color}"
                        );
                        let f = facts(
                            "豫A12345",
                            color,
                            RegistryKind::Transport,
                            vtype,
                            stage.parse().unwrap(),
                            fuel.to_string().parse().unwrap(),
                        );
                        // The level rules are zeroed in STRATEGIES_ONLY, so whichever level
                        // carries the strategy, only the strategy acts.
                        for (level, word) in [
                            (WarningLevel::Yellow, "黄色"),
                            (WarningLevel::Orange, "橙色"),
                            (WarningLevel::Red, "红色"),
                        ] {
                            let state = state_with(
                                strategy
                                    .and_then(Strategy::from_code)
                                    .map(|s| measure(level, Some(s)))
                                    .into_iter()
                                    .collect(),
                            );
                            let d = decide_facts(&p, &state, &f);
                            assert_eq!(
                                d.allow, expected,
                                "engine: {class} {vtype} {level:?} strategy {strategy:?} stage {stage} fuel {fuel} {color}: {d:?}"
                            );
                            if !d.allow {
                                let code = format!("strategy_{}", strategy.unwrap());
                                assert_eq!(d.reason.code(), code);
                                assert!(d.text.contains(&format!("{word}预警禁行")), "{}", d.text);
                            }
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 5 * 9 * 5 * 7 * 5 * 3);
}

#[test]
fn an_eight_character_plate_counts_as_new_energy_unless_switched_off() {
    let f = facts(
        "豫AD12345",
        PlateColor::Blue,
        RegistryKind::Transport,
        "H11",
        EmissionStage::China(3),
        Fuel::Diesel,
    );
    let state = state_with(vec![measure(WarningLevel::Orange, Some(Strategy::S3))]);
    let d = decide_facts(&policy(STRATEGIES_ONLY), &state, &f);
    assert!(d.allow);
    assert_eq!(d.reason.code(), "new_energy");
    let strict = policy(&format!(
        "[policy]\nnew_energy_plates = false\n{STRATEGIES_ONLY}"
    ));
    assert_eq!(
        decide_facts(&strict, &state, &f).reason.code(),
        "strategy_3"
    );
}

#[test]
fn strategy_4_stops_new_energy_goods_vehicles_only_when_configured() {
    let ev = heavy(EmissionStage::Electric, Fuel::Electric);
    let bus = facts(
        "豫A11111",
        PlateColor::Yellow,
        RegistryKind::Transport,
        "K11",
        EmissionStage::China(3),
        Fuel::Diesel,
    );
    let state = state_with(vec![measure(WarningLevel::Red, Some(Strategy::S4))]);
    let default = policy(STRATEGIES_ONLY);
    assert!(decide_facts(&default, &state, &ev).allow);
    assert!(
        decide_facts(&default, &state, &bus).allow,
        "a bus is not goods transport"
    );
    let stop_all = policy(&format!(
        "{STRATEGIES_ONLY}\n[policy.strategy4]\nstop_new_energy = true\nclasses = [\"heavy_goods\", \"light_goods\", \"passenger\"]\n"
    ));
    let d = decide_facts(&stop_all, &state, &ev);
    assert!(!d.allow);
    assert_eq!(d.reason.code(), "strategy_4");
    assert_eq!(d.text, "停止公路运输 红色预警禁行");
    assert!(!decide_facts(&stop_all, &state, &bus).allow);
}

#[test]
fn stage_x_can_be_let_through_for_review() {
    let p = policy(&format!(
        "[policy]\nstage_x = \"allow_flag\"\n{STRATEGIES_ONLY}"
    ));
    let state = state_with(vec![measure(WarningLevel::Orange, Some(Strategy::S2))]);
    let d = decide_facts(&p, &state, &heavy(EmissionStage::Unknown, Fuel::Diesel));
    assert!(d.allow && d.review);
    assert_eq!(d.reason.code(), "stage_unknown");
    // But not through strategy 4, which does not look at stages.
    let state = state_with(vec![measure(WarningLevel::Orange, Some(Strategy::S4))]);
    assert!(!decide_facts(&p, &state, &heavy(EmissionStage::Unknown, Fuel::Diesel)).allow);
}

// ---------------------------------------------------------------------------------------------
// Defaults, level rules and strictest-wins.

#[test]
fn national_defaults_on_normal_days() {
    let p = Policy::default();
    let s = PolicyState::default();
    // (type code, stage, fuel, allowed)
    let table = [
        ("H11", 4, Fuel::Diesel, false),
        ("H11", 5, Fuel::Diesel, true),
        ("Q11", 4, Fuel::NaturalGas, false),
        ("Q11", 5, Fuel::NaturalGas, true),
        ("H11", 4, Fuel::Petrol, true),
        ("H11", 3, Fuel::Petrol, false),
        ("H21", 4, Fuel::Diesel, true),
        ("H31", 3, Fuel::Diesel, false),
        ("K33", 4, Fuel::Petrol, true),
        ("K33", 3, Fuel::Petrol, false),
        ("Z11", 3, Fuel::Diesel, false),
        ("", 4, Fuel::Diesel, true),
    ];
    for (vtype, stage, fuel, allowed) in table {
        let f = facts(
            "豫A12345",
            PlateColor::Yellow,
            RegistryKind::Transport,
            vtype,
            EmissionStage::China(stage),
            fuel,
        );
        let d = decide_facts(&p, &s, &f);
        assert_eq!(d.allow, allowed, "{vtype} {stage} {fuel:?}: {d:?}");
        if !allowed {
            assert_eq!(d.reason.code(), "normal_min_stage");
        }
    }
    let d = decide_facts(&p, &s, &heavy(EmissionStage::China(4), Fuel::Diesel));
    assert_eq!(d.text, "国四柴油车 不达标禁行");
    let d = decide_facts(&p, &s, &heavy(EmissionStage::China(6), Fuel::Diesel));
    assert_eq!(
        (d.reason.code(), d.text.as_str()),
        ("ok", "国六柴油车 允许通行")
    );
}

#[test]
fn strictest_rule_wins_whatever_its_source() {
    let p = policy(
        r#"
[policy.normal]
heavy_goods = { diesel = 4, gas = 4 }
[policy.levels.orange]
heavy_goods = { gas = "6" }
[policy.levels.red]
heavy_goods = { all = "D" }
"#,
    );
    // (measures, stage, fuel, expected reason)
    let orange_s1 = vec![measure(WarningLevel::Orange, Some(Strategy::S1))];
    let orange_s3 = vec![measure(WarningLevel::Orange, Some(Strategy::S3))];
    let yellow_s1_and_red = vec![
        measure(WarningLevel::Yellow, Some(Strategy::S1)),
        measure(WarningLevel::Red, None),
    ];
    let cases: Vec<(Vec<ControlMeasure>, u8, Fuel, &str)> = vec![
        (vec![], 4, Fuel::Diesel, "ok"),
        (vec![], 3, Fuel::Diesel, "normal_min_stage"),
        // Strategy 1 allows a 国五 gas truck; the site's orange rule (gas ≥ 6) does not.
        (orange_s1.clone(), 5, Fuel::NaturalGas, "level_min_stage"),
        (orange_s1.clone(), 5, Fuel::Diesel, "ok"),
        (orange_s1.clone(), 4, Fuel::Diesel, "level_min_stage"),
        (orange_s1.clone(), 3, Fuel::Diesel, "strategy_1"),
        // Orange default diesel ≥ 5 survives the override of gas only.
        (
            vec![measure(WarningLevel::Orange, None)],
            4,
            Fuel::Diesel,
            "level_min_stage",
        ),
        (orange_s3.clone(), 5, Fuel::NaturalGas, "strategy_3"),
        (orange_s3, 6, Fuel::NaturalGas, "ok"),
        // Two measures: the stricter (red: new energy only) wins over strategy 1.
        (
            yellow_s1_and_red.clone(),
            6,
            Fuel::Diesel,
            "level_min_stage",
        ),
    ];
    for (measures, stage, fuel, reason) in cases {
        let s = state_with(measures.clone());
        let d = decide_facts(&p, &s, &heavy(EmissionStage::China(stage), fuel));
        assert_eq!(
            d.reason.code(),
            reason,
            "{measures:?} {stage} {fuel:?}: {d:?}"
        );
        assert_eq!(d.allow, reason == "ok");
    }
    let s = state_with(yellow_s1_and_red);
    let d = decide_facts(&p, &s, &heavy(EmissionStage::China(6), Fuel::Diesel));
    assert_eq!(d.measure, Some(WarningLevel::Red));
    assert_eq!(d.text, "国六柴油车 红色预警禁行");
    let d = decide_facts(&p, &s, &heavy(EmissionStage::Electric, Fuel::Electric));
    assert!(d.allow);
    assert_eq!(d.reason.code(), "new_energy");
}

#[test]
fn measure_windows_start_inclusive_end_exclusive_and_gate_scope() {
    let p = Policy::default();
    let f = heavy(EmissionStage::China(5), Fuel::Diesel);
    let start = t("2026-12-02T06:00:00+08:00");
    let end = t("2026-12-02T20:00:00+08:00");
    let m = ControlMeasure {
        level: WarningLevel::Red,
        strategy: Some(Strategy::S4),
        start,
        end: Some(end),
        gates: Some(vec!["2".into()]),
        source: "platform".into(),
    };
    let s = state_with(vec![m.clone()]);
    let open_ended = state_with(vec![ControlMeasure { end: None, ..m }]);
    let second = Duration::seconds(1);
    // (state, gate, time, allowed)
    let cases = [
        (&s, "2", start - second, true),
        (&s, "2", start, false),
        (&s, "2", end - second, false),
        (&s, "2", end, true),
        (&s, "1", start, true),
        (&open_ended, "2", end + Duration::days(400), false),
    ];
    for (state, gate, at, allowed) in cases {
        let d = p.decide(
            &DecisionInput {
                plate: &f.plate,
                color: f.color,
                facts: Some(&f),
                gate,
                direction: Direction::In,
                now: at,
            },
            state,
        );
        assert_eq!(d.allow, allowed, "gate {gate} at {at}: {d:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Lists.

fn entry(plate: &str) -> ListEntry {
    ListEntry {
        plate: plate.into(),
        color: Some(PlateColor::Yellow),
        from: Some(t("2026-12-01T00:00:00+08:00")),
        until: Some(t("2026-12-31T00:00:00+08:00")),
        gates: Some(vec!["1".into()]),
        exempt_warnings: false,
        note: String::new(),
        source: "operator".into(),
    }
}

#[test]
fn white_list_validity_gate_and_colour() {
    let p = Policy::default();
    let old = heavy(EmissionStage::China(3), Fuel::Diesel);
    let mut s = PolicyState::default();
    s.add_white(entry("豫A12345"));
    let from = t("2026-12-01T00:00:00+08:00");
    let until = t("2026-12-31T00:00:00+08:00");
    // (gate, colour, time, reason)
    let cases = [
        ("1", PlateColor::Yellow, from, "white_list"),
        (
            "1",
            PlateColor::Yellow,
            until - Duration::seconds(1),
            "white_list",
        ),
        ("1", PlateColor::Yellow, until, "normal_min_stage"),
        (
            "1",
            PlateColor::Yellow,
            from - Duration::seconds(1),
            "normal_min_stage",
        ),
        ("2", PlateColor::Yellow, from, "normal_min_stage"),
        ("1", PlateColor::Blue, from, "normal_min_stage"),
    ];
    for (gate, color, at, reason) in cases {
        let d = p.decide(
            &DecisionInput {
                plate: "豫A12345",
                color,
                facts: Some(&old),
                gate,
                direction: Direction::In,
                now: at,
            },
            &s,
        );
        assert_eq!(d.reason.code(), reason, "{gate} {color} {at}");
    }
}

#[test]
fn white_list_under_warnings_needs_exempt_warnings() {
    let p = Policy::default();
    let old = heavy(EmissionStage::China(4), Fuel::Diesel);
    let orange = measure(WarningLevel::Orange, Some(Strategy::S2));
    let mut s = state_with(vec![orange]);
    s.add_white(entry("豫A12345"));
    let d = decide_facts(&p, &s, &old);
    assert_eq!((d.allow, d.reason.code()), (false, "strategy_2"));
    // A white-listed 国五 passes the warning (normal minimums are skipped anyway).
    let ok = heavy(EmissionStage::China(5), Fuel::Diesel);
    assert_eq!(decide_facts(&p, &s, &ok).reason.code(), "white_list");
    // Unknown (unregistered) white-listed vehicle: skips registration, not the warning.
    let d = decide_in(&p, &s, None, "豫A12345", PlateColor::Yellow);
    assert_eq!((d.allow, d.reason.code()), (false, "unknown_in_warning"));
    s.remove_white("豫A12345", None);
    s.add_white(ListEntry {
        exempt_warnings: true,
        ..entry("豫A12345")
    });
    let d = decide_facts(&p, &s, &old);
    assert_eq!((d.allow, d.reason.code()), (true, "white_list_exempt"));
    let d = decide_in(&p, &s, None, "豫A12345", PlateColor::Yellow);
    assert_eq!((d.allow, d.reason.code()), (true, "white_list_exempt"));
}

#[test]
fn black_list_denies_in_and_flags_out() {
    let p = Policy::default();
    let clean = heavy(EmissionStage::China(6), Fuel::Diesel);
    let mut s = PolicyState::default();
    s.add_white(ListEntry {
        exempt_warnings: true,
        ..entry("豫A12345")
    });
    s.add_black(ListEntry {
        color: None,
        gates: None,
        ..entry("豫A12345")
    });
    let d = decide_facts(&p, &s, &clean);
    assert_eq!((d.allow, d.reason.code()), (false, "black_list"));
    assert_eq!(d.text, "黑名单车辆 禁止通行");
    let out = |p: &Policy| {
        p.decide(
            &DecisionInput {
                plate: "豫A12345",
                color: PlateColor::Yellow,
                facts: Some(&clean),
                gate: "1",
                direction: Direction::Out,
                now: now(),
            },
            &s,
        )
    };
    let d = out(&p);
    assert_eq!(
        (d.allow, d.review, d.reason.code()),
        (true, true, "exit_black_list")
    );
    let d = out(&policy("[policy]\nexit = \"check\"\n"));
    assert_eq!((d.allow, d.reason.code()), (false, "black_list"));
    // Outside its window the black entry no longer matches.
    let later = p.decide(
        &DecisionInput {
            plate: "豫A12345",
            color: PlateColor::Yellow,
            facts: Some(&clean),
            gate: "1",
            direction: Direction::In,
            now: t("2027-01-01T00:00:00+08:00"),
        },
        &s,
    );
    assert_eq!(later.reason.code(), "ok");
}

#[test]
fn state_replaces_one_sources_entries_and_measures() {
    let mut s = PolicyState::default();
    s.add_white(ListEntry {
        source: "config".into(),
        ..entry("豫A00001")
    });
    s.replace_white_from(
        "platform",
        vec![entry("豫A00002"), entry("豫A00003")]
            .into_iter()
            .map(|e| ListEntry {
                source: "platform".into(),
                ..e
            }),
    );
    assert_eq!(s.white_len(), 3);
    s.replace_white_from(
        "platform",
        std::iter::once(ListEntry {
            source: "platform".into(),
            ..entry("豫A00004")
        }),
    );
    let mut plates: Vec<&str> = s.white_entries().map(|e| e.plate.as_str()).collect();
    plates.sort();
    assert_eq!(plates, ["豫A00001", "豫A00004"]);
    s.add_measure(measure(WarningLevel::Red, None));
    s.replace_measures_from("platform", vec![measure(WarningLevel::Yellow, None)]);
    assert_eq!(s.measures().len(), 1);
    assert_eq!(s.measures()[0].level, WarningLevel::Yellow);
    assert_eq!(s.prune_expired(t("2027-01-01T00:00:00+08:00")), 3);
    assert_eq!(s.white_len(), 0);
}

// ---------------------------------------------------------------------------------------------
// Unknown vehicles, registration, non-road machinery, exits.

#[test]
fn unknown_vehicles_by_mode_warning_and_plate() {
    let orange = || state_with(vec![measure(WarningLevel::Orange, Some(Strategy::S2))]);
    let blue_advisory = || state_with(vec![measure(WarningLevel::Blue, None)]);
    let red_s4 = || state_with(vec![measure(WarningLevel::Red, Some(Strategy::S4))]);
    let none = PolicyState::default;
    // (config, state, colour, allow, review, reason)
    let cases: Vec<(&str, PolicyState, PlateColor, bool, bool, &str)> = vec![
        (
            "",
            none(),
            PlateColor::Yellow,
            true,
            true,
            "unknown_vehicle",
        ),
        (
            "",
            blue_advisory(),
            PlateColor::Yellow,
            true,
            true,
            "unknown_vehicle",
        ),
        (
            "",
            orange(),
            PlateColor::Yellow,
            false,
            false,
            "unknown_in_warning",
        ),
        (
            "",
            orange(),
            PlateColor::Green,
            true,
            true,
            "unknown_vehicle",
        ),
        (
            "",
            red_s4(),
            PlateColor::YellowGreen,
            true,
            true,
            "unknown_vehicle",
        ),
        (
            "unknown = \"deny\"",
            none(),
            PlateColor::Yellow,
            false,
            false,
            "unknown_vehicle",
        ),
        (
            "unknown = \"deny\"",
            orange(),
            PlateColor::Green,
            false,
            false,
            "unknown_vehicle",
        ),
        (
            "unknown_in_warning = \"allow_flag\"",
            orange(),
            PlateColor::Yellow,
            true,
            true,
            "unknown_in_warning",
        ),
        // Never weaker than `unknown`.
        (
            "unknown = \"deny\"\nunknown_in_warning = \"allow_flag\"",
            orange(),
            PlateColor::Yellow,
            false,
            false,
            "unknown_vehicle",
        ),
        (
            "require_registered = true",
            none(),
            PlateColor::Green,
            false,
            false,
            "not_registered",
        ),
        (
            "require_registered = true\nunknown = \"allow_flag\"",
            orange(),
            PlateColor::Yellow,
            false,
            false,
            "not_registered",
        ),
    ];
    for (cfg, state, color, allow, review, reason) in cases {
        let p = policy(&format!("[policy]\n{cfg}\n"));
        let d = decide_in(&p, &state, None, "豫A99999", color);
        assert_eq!(
            (d.allow, d.review, d.reason.code()),
            (allow, review, reason),
            "{cfg:?} {color}: {d:?}"
        );
    }
    let p = policy("[policy]\nrequire_registered = true\n");
    assert_eq!(
        decide_in(
            &p,
            &PolicyState::default(),
            None,
            "豫A99999",
            PlateColor::Blue
        )
        .text,
        "未登记车辆 禁止通行"
    );
    let d = decide_in(
        &Policy::default(),
        &orange(),
        None,
        "豫A99999",
        PlateColor::Yellow,
    );
    assert_eq!(d.text, "未登记车辆 橙色预警禁行");
}

#[test]
fn non_road_machinery_by_level() {
    let p = policy("[policy.normal]\nnon_road = \"2\"\n");
    let machine = |stage: EmissionStage| {
        facts(
            "",
            PlateColor::Other,
            RegistryKind::NonRoad,
            "",
            stage,
            Fuel::Diesel,
        )
    };
    let orange = state_with(vec![measure(WarningLevel::Orange, Some(Strategy::S4))]);
    let yellow = state_with(vec![measure(WarningLevel::Yellow, Some(Strategy::S3))]);
    let none = PolicyState::default();
    use EmissionStage::{China, Electric, Unknown};
    // (state, stage, allowed, reason)
    let cases = [
        (&none, China(1), false, "normal_min_stage"),
        (&none, China(2), true, "ok"),
        // Road strategies, even 停止公路运输, do not touch non-road machinery; the orange
        // level's non_road = 3 does.
        (&yellow, China(2), true, "ok"),
        (&orange, China(2), false, "level_min_stage"),
        (&orange, China(3), true, "ok"),
        (&orange, China(4), true, "ok"),
        (&orange, Electric, true, "new_energy"),
        (&orange, Unknown, false, "level_min_stage"),
    ];
    for (state, stage, allowed, reason) in cases {
        let m = machine(stage);
        let d = decide_in(&p, state, Some(&m), "", PlateColor::Other);
        assert_eq!((d.allow, d.reason.code()), (allowed, reason), "{stage:?}");
    }
    let m = machine(China(2));
    assert_eq!(
        decide_in(&p, &orange, Some(&m), "", PlateColor::Other).text,
        "国二机械 橙色预警禁行"
    );
}

#[test]
fn exits_are_allowed_unless_checked() {
    let old = heavy(EmissionStage::China(3), Fuel::Diesel);
    let red = state_with(vec![measure(WarningLevel::Red, Some(Strategy::S4))]);
    let out = |p: &Policy, f: Option<&VehicleFacts>| {
        p.decide(
            &DecisionInput {
                plate: "豫A12345",
                color: PlateColor::Yellow,
                facts: f,
                gate: "1",
                direction: Direction::Out,
                now: now(),
            },
            &red,
        )
    };
    let d = out(&Policy::default(), Some(&old));
    assert_eq!((d.allow, d.review, d.reason.code()), (true, false, "exit"));
    assert_eq!(d.measure, Some(WarningLevel::Red));
    assert!(out(&Policy::default(), None).allow);
    let check = policy("[policy]\nexit = \"check\"\n");
    assert_eq!(out(&check, Some(&old)).reason.code(), "strategy_4");
}

// ---------------------------------------------------------------------------------------------
// Invariants under random input.

fn any_stage() -> impl proptest::strategy::Strategy<Value = EmissionStage> {
    prop_oneof![
        (0u8..=7).prop_map(EmissionStage::China),
        Just(EmissionStage::Electric),
        Just(EmissionStage::Unknown),
    ]
}

fn any_facts() -> impl proptest::strategy::Strategy<Value = VehicleFacts> {
    (
        prop::sample::select(PlateColor::ALL.to_vec()),
        prop::sample::select(vec![
            RegistryKind::Transport,
            RegistryKind::InPlant,
            RegistryKind::NonRoad,
        ]),
        prop::sample::select(vec![
            "H11", "Q12", "H21", "H3", "K33", "Z11", "", "X99", "h17",
        ]),
        any_stage(),
        prop::sample::select(Fuel::ALL.to_vec()),
    )
        .prop_map(|(color, kind, vtype, stage, fuel)| {
            facts("豫A12345", color, kind, vtype, stage, fuel)
        })
}

fn any_measure() -> impl proptest::strategy::Strategy<Value = ControlMeasure> {
    (
        prop::sample::select(WarningLevel::ALL.to_vec()),
        prop::option::of(prop::sample::select(Strategy::ALL.to_vec())),
        -48i64..48,
        prop::option::of(1i64..96),
        prop::option::of(prop::sample::select(vec!["1", "2"])),
    )
        .prop_map(|(level, strategy, start_h, len_h, gate)| {
            let start = now() + Duration::hours(start_h);
            ControlMeasure {
                level,
                strategy,
                start,
                end: len_h.map(|h| start + Duration::hours(h)),
                gates: gate.map(|g| vec![g.to_string()]),
                source: "platform".into(),
            }
        })
}

fn any_policy() -> impl proptest::strategy::Strategy<Value = Policy> {
    (
        prop::sample::select(vec!["deny", "allow_flag"]),
        prop::sample::select(vec!["deny", "allow_flag"]),
        prop::sample::select(vec!["deny", "allow_flag"]),
        any::<bool>(),
        any::<bool>(),
        prop::sample::select(vec!["allow", "check"]),
    )
        .prop_map(|(unknown, uiw, stage_x, req, stop_ne, exit)| {
            policy(&format!(
                "[policy]\nunknown = \"{unknown}\"\nunknown_in_warning = \"{uiw}\"\nstage_x = \"{stage_x}\"\nrequire_registered = {req}\nexit = \"{exit}\"\n[policy.strategy4]\nstop_new_energy = {stop_ne}\n[policy.levels.yellow]\nheavy_goods = {{ diesel = 6 }}\nlight_goods = {{ all = \"D\" }}\n"
            ))
        })
}

proptest! {
    #[test]
    fn black_listed_never_enter_and_measures_only_tighten(
        p in any_policy(),
        f in prop::option::of(any_facts()),
        measures in prop::collection::vec(any_measure(), 0..4),
        extra in any_measure(),
        white in any::<bool>(),
        exempt in any::<bool>(),
        gate in prop::sample::select(vec!["1", "2"]),
        out in any::<bool>(),
    ) {
        let color = f.as_ref().map_or(PlateColor::Yellow, |f| f.color);
        let mut s = state_with(measures);
        if white {
            s.add_white(ListEntry { exempt_warnings: exempt, gates: None, ..entry("豫A12345") });
        }
        let input = DecisionInput {
            plate: "豫A12345",
            color,
            facts: f.as_ref(),
            gate,
            direction: if out { Direction::Out } else { Direction::In },
            now: now(),
        };
        let before = p.decide(&input, &s);
        prop_assert!(!before.text.is_empty());

        let mut tighter = s.clone();
        tighter.add_measure(extra);
        let after = p.decide(&input, &tighter);
        prop_assert!(before.allow || !after.allow, "adding a measure allowed a denied vehicle: {before:?} -> {after:?}");

        s.add_black(ListEntry { gates: None, color: None, ..entry("豫A12345") });
        let black = p.decide(&DecisionInput { direction: Direction::In, ..input }, &s);
        prop_assert!(!black.allow);
        prop_assert_eq!(black.reason.code(), "black_list");
    }
}

// ---------------------------------------------------------------------------------------------
// Config diagnostics.

fn errors(toml_text: &str) -> Vec<(usize, usize, String)> {
    match compile(toml_text) {
        Ok(_) => panic!("expected errors for {toml_text}"),
        Err(e) => e.into_iter().map(|d| (d.line, d.col, d.message)).collect(),
    }
}

#[test]
fn config_errors_point_at_the_value() {
    let text = r#"[policy]
unknown = "deny"
[policy.normal]
heavy_goods = { diesel = "8", gas = "X" }
non_road = 5
[[policy.measures]]
level = "orange"
strategy = 5
start = 2026-12-01T06:00:00
end = 2026-12-03T00:00:00+08:00
[[policy.measures]]
level = "purple"
start = "2026-12-03T06:00:00+08:00"
end = "2026-12-03T05:00:00+08:00"
gates = ["1", "3"]
[[policy.white]]
plate = "豫A12345"
color = "pink"
from = 2026-12-01T00:00:00+08:00
until = 2026-11-01T00:00:00+08:00
[[policy.black]]
plate = "豫B1"
exempt_warnings = true
gates = []
[policy.classes]
light_goods = ["H1"]
[policy.strategy4]
classes = ["heavy_good"]
"#;
    if std::env::var_os("PRINT_DIAGNOSTICS").is_some() {
        for d in compile(text).err().unwrap_or_default() {
            println!("{d}");
        }
    }
    let errs = errors(text);
    let at = |line: usize, col: usize| {
        errs.iter()
            .find(|(l, c, _)| *l == line && *c == col)
            .map(|(_, _, m)| m.as_str())
            .unwrap_or_else(|| panic!("no error at {line}:{col} in {errs:#?}"))
    };
    assert!(at(4, 26).contains("not an emission stage"));
    assert!(at(4, 37).contains("unknown stage"));
    assert!(at(5, 12).contains("non-road"));
    assert!(at(8, 12).contains("not a control strategy"));
    assert!(at(9, 9).contains("no UTC offset"));
    assert!(at(12, 9).contains("not a warning level"));
    assert!(at(14, 7).contains("not after"));
    assert!(at(15, 15).contains("unknown gate `3`"));
    assert!(at(18, 9).contains("not a plate colour"));
    assert!(at(20, 9).contains("not after"));
    assert!(at(23, 19).contains("exempt_warnings"));
    assert!(at(24, 9).contains("empty gate list"));
    assert!(at(26, 16).contains("already in class `heavy_goods`"));
    assert!(at(28, 12).contains("unknown vehicle class"));
    assert_eq!(errs.len(), 14, "{errs:#?}");
}

#[test]
fn config_accepts_toml_and_rfc3339_times_in_site_time() {
    let p = policy(
        r#"
[[policy.measures]]
level = 2
strategy = "3"
start = 2026-12-01T06:00:00+08:00
end = "2026-12-01T08:00:00+08:00"
gates = ["2"]
[[policy.white]]
plate = "豫a12345"
color = "黄"
until = "2026-12-31T00:00:00Z"
exempt_warnings = true
note = "危化品运输"
"#,
    );
    let s = PolicyState::from_config(&p);
    let m = &s.measures()[0];
    assert_eq!(m.level, WarningLevel::Orange);
    assert_eq!(m.strategy, Some(Strategy::S3));
    assert_eq!(m.start, t("2026-11-30T22:00:00Z"));
    assert_eq!(m.end, Some(t("2026-12-01T00:00:00Z")));
    assert_eq!(m.gates.as_deref(), Some(&["2".to_string()][..]));
    assert_eq!(m.source, "config");
    let w: Vec<&ListEntry> = s.white_entries().collect();
    assert_eq!(w[0].plate, "豫A12345");
    assert_eq!(w[0].color, Some(PlateColor::Yellow));
    assert!(w[0].exempt_warnings);
    assert_eq!(w[0].until, Some(t("2026-12-31T00:00:00Z")));
}

#[test]
fn the_quick_example_in_the_docs_compiles_and_means_what_it_says() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/policy.md");
    let doc = std::fs::read_to_string(path).expect("docs/policy.md exists");
    let start = doc.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("end of the example");
    let p = policy(&doc[start..end]);
    let s = PolicyState::from_config(&p);
    assert_eq!(s.measures().len(), 1);
    assert_eq!(s.white_len(), 1);
    assert_eq!(s.black_len(), 1);
    // Inside the orange measure at gate 1: strategy 2 plus the site's orange gas ≥ 6.
    let gas5 = VehicleFacts {
        plate: "豫A77777".into(),
        ..heavy(EmissionStage::China(5), Fuel::NaturalGas)
    };
    let d = decide_facts(&p, &s, &gas5);
    assert_eq!((d.allow, d.reason.code()), (false, "level_min_stage"));
    assert_eq!(d.text, "国五燃气车 橙色预警禁行");
    // The white-listed hazmat truck is exempt.
    let hazmat = heavy(EmissionStage::China(3), Fuel::Diesel);
    assert_eq!(
        decide_facts(&p, &s, &hazmat).reason.code(),
        "white_list_exempt"
    );
    let d = decide_in(&p, &s, None, "豫B54321", PlateColor::Blue);
    assert_eq!(d.reason.code(), "black_list");
}
