use super::*;
use crate::config::diag::SourceFile;

#[derive(serde::Deserialize)]
struct Wrapper {
    #[serde(default)]
    policy: PolicyConfig,
}

fn compile(text: &str) -> Result<Policy, Vec<crate::config::diag::Diagnostic>> {
    let file = SourceFile::new("t.toml", text.to_string());
    let w: Wrapper = toml::from_str(text).expect("test TOML parses");
    w.policy
        .compile(&file, &["1".to_string(), "east".to_string()])
}

fn ok(text: &str) -> Policy {
    compile(text).unwrap_or_else(|e| panic!("{e:#?}"))
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn road(vtype: &str) -> VehicleFacts {
    VehicleFacts {
        plate: "冀F12345".into(),
        color: PlateColor::Yellow,
        registry: RegistryKind::Transport,
        stage: EmissionStage::China(5),
        fuel: Fuel::Diesel,
        vehicle_type: vtype.into(),
        use_character: None,
        obd_online: None,
    }
}

#[test]
fn empty_config_compiles_to_the_defaults() {
    let p = ok("");
    let d = Policy::default();
    assert_eq!(p.normal, d.normal);
    assert_eq!(p.levels, d.levels);
    assert_eq!(p.class_prefixes, d.class_prefixes);
    assert_eq!(
        (p.unknown, p.unknown_in_warning, p.exit, p.stage_x),
        (Mode::AllowFlag, Mode::Deny, ExitMode::Allow, Mode::Deny)
    );
    assert!(p.new_energy_plates && !p.require_registered && !p.s4_stops_new_energy);
    assert!(PolicyConfig::default()
        .compile(&SourceFile::new("x", String::new()), &[])
        .is_ok());
}

#[test]
fn classes_by_longest_prefix_and_case_insensitive() {
    let p = Policy::default();
    let cases = [
        ("H11", VehicleClass::HeavyGoods),
        ("Q12", VehicleClass::HeavyGoods),
        ("h17", VehicleClass::HeavyGoods),
        ("H21", VehicleClass::LightGoods),
        ("Q31", VehicleClass::LightGoods),
        ("K33", VehicleClass::Passenger),
        ("Z11", VehicleClass::Other),
        ("H", VehicleClass::Other),
        ("", VehicleClass::Other),
    ];
    for (code, class) in cases {
        assert_eq!(p.classify(&road(code)), class, "{code}");
    }
    // The classification agrees with VehicleFacts::is_heavy_goods for the default prefixes.
    for code in ["H11", "Q19", "H21", "K11", "Q2", "X99"] {
        let f = road(code);
        assert_eq!(
            p.classify(&f) == VehicleClass::HeavyGoods,
            f.is_heavy_goods()
        );
    }
    let custom = ok("[policy.classes]\nlight_goods = [\"h\", \"Q\"]\npassenger = [\"K1\"]\n");
    assert_eq!(custom.classify(&road("H11")), VehicleClass::HeavyGoods);
    assert_eq!(custom.classify(&road("H99")), VehicleClass::LightGoods);
    assert_eq!(custom.classify(&road("K11")), VehicleClass::Passenger);
    assert_eq!(custom.classify(&road("K33")), VehicleClass::Other);
    let mut machine = road("H11");
    machine.registry = RegistryKind::NonRoad;
    assert_eq!(custom.classify(&machine), VehicleClass::NonRoad);
}

#[test]
fn unparseable_stage_spelling_is_an_error_not_a_silent_zero() {
    let errs = compile("[policy.normal]\nnon_road = \"第三阶段\"\n").unwrap_err();
    assert_eq!((errs[0].line, errs[0].col), (2, 12));
    assert!(errs[0].message.contains("not an emission stage"));
}

#[test]
fn stage_spellings_in_rules() {
    let p = ok(r#"
[policy.normal]
heavy_goods = { all = "国Ⅵ", gas = 5 }
passenger = { other = "D" }
non_road = "国三"
[policy.levels.blue]
light_goods = { diesel = "新能源" }
"#);
    assert_eq!(p.normal.road[0], [6, 5, 6]);
    // passenger: diesel and gas keep the default 4, other is new energy only.
    assert_eq!(p.normal.road[2], [4, 4, NEW_ENERGY_ONLY]);
    assert_eq!(p.normal.non_road, 3);
    assert_eq!(p.levels[0].road[1], [NEW_ENERGY_ONLY, 0, 0]);
    assert!(p.levels[0].restricts() && !p.levels[1].restricts());
}

#[test]
fn time_spellings() {
    let p = ok(r#"
[[policy.measures]]
level = "红色"
start = 2026-12-01T06:00+08:00
end = "2026-12-01 08:00:00.5+08:00"
[[policy.measures]]
level = "黄"
start = 2026-12-01T00:00:00Z
[[policy.measures]]
level = "3"
start = "2026-11-30T22:00:00-00:00"
"#);
    assert_eq!(p.measures[0].level, WarningLevel::Red);
    assert_eq!(p.measures[0].start, utc("2026-11-30T22:00:00Z"));
    assert_eq!(p.measures[0].end, Some(utc("2026-12-01T00:00:00.5Z")));
    assert_eq!(p.measures[1].level, WarningLevel::Yellow);
    assert_eq!(p.measures[1].start, utc("2026-12-01T00:00:00Z"));
    assert_eq!(p.measures[2].level, WarningLevel::Red);
    assert_eq!(p.measures[2].start, utc("2026-11-30T22:00:00Z"));
}

#[test]
fn date_only_and_garbage_times_are_rejected_with_a_hint() {
    let text = "[[policy.measures]]\nlevel = \"red\"\nstart = 2026-12-01\nend = \"tomorrow\"\n";
    let errs = compile(text).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!((errs[0].line, errs[0].col), (3, 9));
    assert!(errs[0].message.contains("not a full date-time"));
    assert!(errs[0].help.as_deref().unwrap_or("").contains("+08:00"));
    assert_eq!((errs[1].line, errs[1].col), (4, 7));
    assert!(errs[1].message.contains("not a date-time"));
}

#[test]
fn unknown_gate_suggests_the_closest() {
    let errs = compile("[[policy.black]]\nplate = \"冀F1\"\ngates = [\"eats\"]\n").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].help.as_deref(),
        Some("did you mean `east`? known gates: 1, east")
    );
}

#[test]
fn platform_codes() {
    assert_eq!(
        WarningLevel::from_platform_code(1),
        Some(WarningLevel::Yellow)
    );
    assert_eq!(WarningLevel::from_platform_code(3), Some(WarningLevel::Red));
    assert_eq!(WarningLevel::from_platform_code(4), None);
    for s in Strategy::ALL {
        assert_eq!(Strategy::from_code(s.code()), Some(s));
    }
    assert_eq!(Strategy::from_code(0), None);
    assert_eq!(Strategy::from_code(5), None);
}

#[test]
fn reason_codes_are_unique_snake_case() {
    let mut seen = std::collections::HashSet::new();
    for r in Reason::ALL {
        let c = r.code();
        assert!(c
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
        assert!(seen.insert(c), "duplicate {c}");
        assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(c));
        assert_eq!(
            serde_json::from_value::<Reason>(serde_json::json!(c)).unwrap(),
            r
        );
    }
}

#[test]
fn decision_on_a_clean_truck_allocates_only_its_text() {
    let p = Policy::default();
    let f = road("H11");
    let mut s = PolicyState::default();
    s.add_measure(ControlMeasure {
        level: WarningLevel::Yellow,
        strategy: Some(Strategy::S1),
        start: utc("2026-12-01T00:00:00Z"),
        end: None,
        gates: Some(vec!["east".into()]),
        source: "platform".into(),
    });
    let d = p.decide(
        &DecisionInput {
            plate: &f.plate,
            color: f.color,
            facts: Some(&f),
            gate: "east",
            direction: Direction::In,
            now: utc("2026-12-02T00:00:00Z"),
        },
        &s,
    );
    assert_eq!(
        d,
        Decision {
            allow: true,
            reason: Reason::Ok,
            text: "国五柴油车 允许通行".into(),
            review: false,
            measure: Some(WarningLevel::Yellow),
        }
    );
    assert_eq!(
        p.highest_level(&s, "1", utc("2026-12-02T00:00:00Z")),
        None,
        "the measure is scoped to gate east"
    );
}

/// The site loader finds unknown keys with serde_ignored; the spanned values must survive it
/// and real typos must be reported.
#[test]
fn works_under_serde_ignored() {
    let text = r#"
[policy]
unknwon = "deny"
[policy.levels.purple]
non_road = 3
[[policy.measures]]
level = "red"
strategy = 4
start = 2026-12-01T06:00:00+08:00
gate = ["1"]
"#;
    let de = toml::Deserializer::parse(text).unwrap();
    let mut ignored = Vec::new();
    let w: Wrapper = serde_ignored::deserialize(de, |path| ignored.push(path.to_string())).unwrap();
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "policy.levels.purple",
            "policy.measures.0.gate",
            "policy.unknwon"
        ]
    );
    let p = w
        .policy
        .compile(&SourceFile::new("t.toml", text.into()), &["1".into()])
        .unwrap();
    assert_eq!(p.measures[0].strategy, Some(Strategy::S4));
}

#[test]
fn runtime_state_serializes_with_platform_codes() {
    let m = ControlMeasure {
        level: WarningLevel::Orange,
        strategy: Some(Strategy::S3),
        start: utc("2026-12-01T00:00:00Z"),
        end: None,
        gates: None,
        source: "platform".into(),
    };
    let v = serde_json::to_value(&m).unwrap();
    assert_eq!(v["level"], "orange");
    assert_eq!(v["strategy"], 3);
    assert_eq!(serde_json::from_value::<ControlMeasure>(v).unwrap(), m);
    assert!(serde_json::from_value::<Strategy>(serde_json::json!(5)).is_err());
}

#[test]
fn runtime_list_plates_are_normalised_like_config_ones() {
    let mut s = PolicyState::default();
    s.add_black(ListEntry {
        plate: " 冀f12345 ".into(),
        color: None,
        from: None,
        until: None,
        gates: None,
        exempt_warnings: false,
        note: String::new(),
        source: "operator".into(),
    });
    let f = road("H11");
    let d = Policy::default().decide(
        &DecisionInput {
            plate: "冀F12345",
            color: PlateColor::Yellow,
            facts: Some(&f),
            gate: "1",
            direction: Direction::In,
            now: utc("2026-12-02T00:00:00Z"),
        },
        &s,
    );
    assert_eq!(d.reason, Reason::BlackList);
    assert_eq!(
        s.remove_black("冀F12345", Some(PlateColor::Yellow)),
        0,
        "entry has no colour"
    );
    assert_eq!(s.remove_black("冀F12345", None), 1);
}
