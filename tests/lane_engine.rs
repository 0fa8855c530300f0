//! Lane interpreter behaviour: record before barrier, manual release, timers, exceptions,
//! loops; and property tests over random event sequences on every shipped machine.

use chrono::{DateTime, TimeZone, Utc};
use ecogate::config::diag::SourceFile;
use ecogate::lane::builtin::Role;
use ecogate::lane::engine::{
    BarrierMode, Decider, DeviceRef, Direction, Input, Lane, LaneSpec, Output, Record, Release,
    Verdict,
};
use ecogate::lane::machine::{self, Machine};
use ecogate_drivers::{Command, Mass, PlateColor, PlateRead};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Denies plates ending in an odd digit; everything else is allowed.
struct OddDenied;
impl Decider for OddDenied {
    fn decide(&self, _: &LaneSpec, plate: &str, _: PlateColor, _: DateTime<Utc>) -> Verdict {
        let odd = plate
            .chars()
            .last()
            .and_then(|c| c.to_digit(10))
            .is_some_and(|d| d % 2 == 1);
        Verdict {
            allow: !odd,
            reason: if odd {
                "normal_min_stage".into()
            } else {
                "ok".into()
            },
            text: if odd {
                "国Ⅳ柴油车 禁止通行".into()
            } else {
                "欢迎".into()
            },
            review: false,
            facts: None,
            measure: None,
            check: None,
        }
    }
    fn measure_active(&self, _: &str, _: DateTime<Utc>) -> bool {
        false
    }
}

fn load_machine(name: &str) -> Arc<Machine> {
    let path = format!("config/lanes/{name}.toml");
    let f = SourceFile::new(&path, std::fs::read_to_string(&path).unwrap());
    Arc::new(machine::load(name, &f).unwrap())
}

fn spec(with_scale: bool, with_loop: bool) -> LaneSpec {
    let mut bindings = HashMap::new();
    let d = |n: &str, c: Option<&str>| DeviceRef {
        device: n.into(),
        channel: c.map(String::from),
    };
    bindings.insert(Role::Camera, d("cam1", None));
    bindings.insert(Role::Barrier, d("io1", Some("out1")));
    bindings.insert(Role::Sign, d("led1", None));
    bindings.insert(Role::Voice, d("led1", None));
    if with_loop {
        bindings.insert(Role::Loop, d("io1", Some("in1")));
    }
    if with_scale {
        bindings.insert(Role::Scale, d("scale1", None));
    }
    LaneSpec {
        id: "1-in".into(),
        gate: "1".into(),
        barrier_no: "01".into(),
        direction: Direction::In,
        bindings,
        texts: Arc::new(ecogate::config::plan::default_texts()),
        default_cargo: None,
        pulse_ms: 500,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().unwrap()
}

fn at(s: i64) -> DateTime<Utc> {
    t0() + chrono::Duration::seconds(s)
}

fn plate(p: &str) -> Input {
    Input::Plate(PlateRead {
        plate: p.into(),
        color: PlateColor::Yellow,
        confidence: 97,
        source_id: None,
        captured_at: None,
        offline_replay: false,
        images: vec![],
    })
}

fn is_barrier(o: &Output) -> bool {
    matches!(o, Output::Command(c) if matches!(c.command, Command::RelayPulse { .. } | Command::BarrierOpen))
}

fn first_pass_index(out: &[Output]) -> Option<usize> {
    out.iter()
        .position(|o| matches!(o, Output::Record(Record::Pass(_))))
}

#[test]
fn allowed_vehicle_is_recorded_before_the_barrier_opens() {
    let mut lane = Lane::new(spec(false, true), load_machine("entry"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    out.clear();
    lane.handle(plate("豫A12344"), at(1), &OddDenied, &mut out);
    let rec = first_pass_index(&out).expect("a pass record");
    let bar = out.iter().position(is_barrier).expect("a barrier command");
    assert!(
        rec < bar,
        "record at {rec} must precede barrier at {bar}: {out:#?}"
    );
    assert_eq!(lane.state_name(), "opening");
    match &out[rec] {
        Output::Record(Record::Pass(p)) => {
            assert_eq!(p.mode, BarrierMode::Auto);
            assert_eq!(p.plate, "豫A12344");
            assert!(p.verdict.as_ref().is_some_and(|v| v.allow));
        }
        _ => unreachable!(),
    }
    out.clear();
    lane.handle(Input::LoopOff, at(3), &OddDenied, &mut out);
    assert_eq!(lane.state_name(), "idle");
}

#[test]
fn denied_vehicle_is_recorded_and_the_barrier_stays_shut() {
    let mut lane = Lane::new(spec(false, true), load_machine("entry"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    out.clear();
    lane.handle(plate("豫A12345"), at(1), &OddDenied, &mut out);
    assert!(first_pass_index(&out).is_some());
    assert!(!out.iter().any(is_barrier), "{out:#?}");
    assert_eq!(lane.state_name(), "refused");
    // The reason reaches the LED.
    assert!(out.iter().any(|o| matches!(o, Output::Command(c) if matches!(&c.command, Command::SignShow { lines } if lines.iter().any(|l| l.contains("禁止通行"))))));
    // A repeat read of the same plate is ignored; the refusal times out after 30 s.
    out.clear();
    lane.handle(plate("豫A12345"), at(2), &OddDenied, &mut out);
    assert!(out.iter().all(|o| !matches!(o, Output::Record(_))));
    lane.advance(at(40), &OddDenied, &mut out);
    assert_eq!(lane.state_name(), "idle");
}

#[test]
fn manual_release_records_operator_before_actuation() {
    let mut lane = Lane::new(spec(false, true), load_machine("entry"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    lane.handle(plate("豫A12345"), at(1), &OddDenied, &mut out);
    out.clear();
    let r = Release {
        operator: "张三".into(),
        role: "guard".into(),
        reason: "应急车辆".into(),
        remote: true,
        plate: None,
        approval: None,
        request: None,
    };
    lane.handle(Input::ManualRelease(r), at(5), &OddDenied, &mut out);
    let rec = first_pass_index(&out).expect("release record");
    let bar = out.iter().position(is_barrier).expect("barrier");
    assert!(rec < bar);
    match &out[rec] {
        Output::Record(Record::Pass(p)) => {
            assert_eq!(p.mode, BarrierMode::Remote);
            assert_eq!(
                p.release.as_ref().map(|r| r.operator.as_str()),
                Some("张三")
            );
        }
        _ => unreachable!(),
    }
}

#[test]
fn barrier_open_in_a_machine_that_forgot_to_record_still_records_first() {
    let src = r#"initial = "idle"
[states.idle]
on.plate = { to = "deciding" }
[states.deciding]
entry = ["policy.decide"]
on.allow = { to = "idle", do = ["barrier.open", "vehicle.clear"] }
on.deny = { to = "idle" }
"#;
    let m =
        Arc::new(machine::load("careless", &SourceFile::new("careless.toml", src.into())).unwrap());
    let mut lane = Lane::new(spec(false, false), m);
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    lane.handle(plate("豫A10000"), at(1), &OddDenied, &mut out);
    let rec = first_pass_index(&out).expect("the engine inserts the record");
    let bar = out.iter().position(is_barrier).expect("barrier");
    assert!(rec < bar);
}

#[test]
fn barrier_seen_opening_without_a_command_is_an_exception() {
    let mut lane = Lane::new(spec(false, true), load_machine("entry"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    out.clear();
    lane.handle(Input::BarrierOpened, at(1), &OddDenied, &mut out);
    assert!(out.iter().any(|o| matches!(o, Output::Record(Record::Exception(e)) if e.code == "barrier_opened_without_command")), "{out:#?}");
    // …but not when we opened it.
    lane.handle(plate("豫A12344"), at(10), &OddDenied, &mut out);
    out.clear();
    lane.handle(Input::BarrierOpened, at(11), &OddDenied, &mut out);
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Record(Record::Exception(_)))));
}

#[test]
fn weighing_lane_records_the_stable_weight_once() {
    let mut lane = Lane::new(spec(true, false), load_machine("entry-weigh"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    lane.handle(plate("豫A12344"), at(1), &OddDenied, &mut out);
    assert_eq!(lane.state_name(), "weighing");
    out.clear();
    lane.handle(
        Input::Weight {
            mass: Mass::from_kg(20_000),
            stable: false,
        },
        at(2),
        &OddDenied,
        &mut out,
    );
    assert!(!out
        .iter()
        .any(|o| matches!(o, Output::Record(Record::Weighing(_)))));
    lane.handle(
        Input::Weight {
            mass: Mass::from_kg(41_260),
            stable: true,
        },
        at(4),
        &OddDenied,
        &mut out,
    );
    let w: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Record(Record::Weighing(w)) => Some(w),
            _ => None,
        })
        .collect();
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].mass, Mass::from_kg(41_260));
    assert_eq!(lane.state_name(), "opening");
    assert!(out.iter().any(is_barrier));
}

#[test]
fn an_offline_camera_replay_is_recorded_but_never_actuates() {
    let mut lane = Lane::new(spec(false, true), load_machine("entry"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    out.clear();
    let captured = at(-3600);
    let read = PlateRead {
        plate: "豫A12344".into(),
        color: PlateColor::Yellow,
        confidence: 97,
        source_id: Some("9".into()),
        captured_at: Some(captured),
        offline_replay: true,
        images: vec![],
    };
    lane.handle(Input::Plate(read), at(1), &OddDenied, &mut out);
    assert_eq!(lane.state_name(), "idle");
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Transition(_) | Output::Command(_))),
        "{out:#?}"
    );
    assert!(
        matches!(&out[..], [Output::Record(Record::Exception(e))] if e.code == "camera_offline_record" && e.at == captured),
        "{out:#?}"
    );
}

#[test]
fn timers_are_cancelled_when_the_state_is_left() {
    let mut lane = Lane::new(spec(false, true), load_machine("entry"));
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    lane.handle(plate("豫A12344"), at(0), &OddDenied, &mut out);
    assert_eq!(lane.next_deadline(), Some(at(60)));
    lane.handle(Input::LoopOff, at(5), &OddDenied, &mut out);
    assert_eq!(lane.state_name(), "idle");
    assert_eq!(
        lane.next_deadline(),
        None,
        "the opening timer must be cancelled"
    );
    out.clear();
    lane.advance(at(100), &OddDenied, &mut out);
    assert!(
        out.is_empty(),
        "no timer may fire after its state was left: {out:#?}"
    );
}

#[test]
fn an_event_loop_in_a_machine_is_stopped_with_an_alarm() {
    let src = r#"initial = "idle"
[states.idle]
on.plate = { to = "deciding" }
[states.deciding]
entry = ["policy.decide"]
on.allow = { to = "deciding" }
on.deny = { to = "idle" }
"#;
    let m = Arc::new(machine::load("loop", &SourceFile::new("loop.toml", src.into())).unwrap());
    let mut lane = Lane::new(spec(false, false), m);
    let mut out = Vec::new();
    lane.start(t0(), &OddDenied, &mut out);
    lane.handle(plate("豫A10000"), at(1), &OddDenied, &mut out);
    assert!(out
        .iter()
        .any(|o| matches!(o, Output::Alarm { code, raised: true } if code == "machine_loop")));
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        prop::sample::select(vec!["豫A12344", "豫A12345", "豫B00001", ""]).prop_map(|p| {
            if p.is_empty() {
                Input::NoPlate
            } else {
                plate(p)
            }
        }),
        Just(Input::LoopOn),
        Just(Input::LoopOff),
        Just(Input::BarrierOpened),
        Just(Input::BarrierClosed),
        (0i64..60_000, any::<bool>()).prop_map(|(kg, stable)| Input::Weight {
            mass: Mass::from_kg(kg),
            stable
        }),
        Just(Input::WeightZero),
        Just(Input::CargoDeclared("焦炭".into())),
        Just(Input::ManualRelease(Release {
            operator: "op".into(),
            role: "guard".into(),
            reason: "r".into(),
            remote: false,
            plate: None,
            approval: None,
            request: None,
        })),
        Just(Input::DeviceOffline("cam1".into())),
        Just(Input::DeviceOnline("cam1".into())),
        Just(Input::PowerLoss),
        Just(Input::RecordFailed),
        Just(Input::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn random_sequences_never_break_a_lane(
        machine_idx in 0usize..4,
        steps in prop::collection::vec((0i64..200_000, arb_input()), 1..80),
    ) {
        let name = ["entry", "exit", "entry-weigh", "exit-weigh-cargo"][machine_idx];
        let m = load_machine(name);
        let states: Vec<String> = m.states.iter().map(|s| s.name.clone()).collect();
        let mut lane = Lane::new(spec(true, true), Arc::clone(&m));
        let mut out = Vec::new();
        let mut now = t0();
        lane.start(now, &OddDenied, &mut out);
        // Record before barrier across the whole run: after any new decision or release, no
        // barrier command may go out until a record has.
        let mut any_record = false;
        let mut unrecorded_decision = false;
        for (gap_ms, input) in steps {
            now += chrono::Duration::milliseconds(gap_ms);
            let due = lane.next_deadline();
            lane.advance(now, &OddDenied, &mut out);
            // A timer that came due fired at its own deadline (the shipped machines guard no
            // timer, so firing always shows as a transition)…
            if let Some(d) = due.filter(|d| *d <= now) {
                prop_assert!(
                    out.iter().any(|o| matches!(o, Output::Transition(t) if t.at == d && t.event.starts_with("after "))),
                    "timer due at {d} did not fire by {now}: {out:#?}"
                );
            }
            // …none is left overdue after advance…
            if let Some(d) = lane.next_deadline() {
                prop_assert!(d > now, "timer due at {d} still pending at {now}");
            }
            // …and a pending timer goes away only with a transition that leaves its state.
            let pending = lane.next_deadline();
            let mark = out.len();
            lane.handle(input, now, &OddDenied, &mut out);
            if !out[mark..].iter().any(|o| matches!(o, Output::Transition(_))) {
                prop_assert_eq!(lane.next_deadline(), pending, "a timer changed without a transition");
            }
            prop_assert!(states.iter().any(|s| s == lane.state_name()));
            for o in &out {
                match o {
                    Output::Transition(t) if matches!(t.event.as_str(), "allow" | "deny" | "manual_release") => unrecorded_decision = true,
                    Output::Record(_) => {
                        any_record = true;
                        unrecorded_decision = false;
                    }
                    o if is_barrier(o) => {
                        prop_assert!(any_record && !unrecorded_decision, "barrier before the record: {out:#?}");
                    }
                    _ => {}
                }
            }
            out.clear();
        }
    }
}
