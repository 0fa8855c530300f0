//! Policy decision throughput over a realistic gate mix.
//!
//! Run: `cargo bench --bench policy`. Prints ns per decision and decisions per second for the
//! mix and for each kind of vehicle in it.

use chrono::{DateTime, Duration, Utc};
use ecogate::policy::{
    ControlMeasure, DecisionInput, Direction, ListEntry, Policy, PolicyState, Strategy,
    WarningLevel,
};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use std::hint::black_box;
use std::time::Instant;

/// Deterministic pseudo-random numbers, so runs are comparable.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn plate(prefix: &str, i: usize) -> String {
    format!("{prefix}{i:05}")
}

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-12-02T10:00:00+08:00")
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn main() {
    let policy = Policy::default();
    let mut state = PolicyState::default();
    let t0 = now();
    let window =
        |level, strategy, gates: Option<Vec<String>>, start_h: i64, end_h: i64| ControlMeasure {
            level,
            strategy,
            start: t0 + Duration::hours(start_h),
            end: Some(t0 + Duration::hours(end_h)),
            gates,
            source: "platform".into(),
        };
    // 3 active measures, 2 that ended or have not begun.
    state.add_measure(window(
        WarningLevel::Orange,
        Some(Strategy::S2),
        Some(vec!["1".into()]),
        -10,
        30,
    ));
    state.add_measure(window(
        WarningLevel::Yellow,
        Some(Strategy::S1),
        None,
        -10,
        30,
    ));
    state.add_measure(window(WarningLevel::Blue, None, None, -48, 48));
    state.add_measure(window(
        WarningLevel::Red,
        Some(Strategy::S4),
        None,
        -72,
        -48,
    ));
    state.add_measure(window(WarningLevel::Red, Some(Strategy::S4), None, 24, 48));
    for i in 0..1000 {
        state.add_white(ListEntry {
            plate: plate("豫W", i),
            color: Some(PlateColor::Yellow),
            from: Some(t0 - Duration::days(30)),
            until: Some(t0 + Duration::days(30)),
            gates: if i % 2 == 0 {
                Some(vec!["1".into()])
            } else {
                None
            },
            exempt_warnings: i % 10 == 0,
            note: String::new(),
            source: "platform".into(),
        });
    }
    for i in 0..100 {
        state.add_black(ListEntry {
            plate: plate("豫B", i),
            color: None,
            from: None,
            until: None,
            gates: None,
            exempt_warnings: false,
            note: String::new(),
            source: "operator".into(),
        });
    }

    let mut rng = Lcg(42);
    let types = ["H11", "H17", "Q11", "H21", "K33", "Z11"];
    let fuels = [
        Fuel::Diesel,
        Fuel::Diesel,
        Fuel::Diesel,
        Fuel::NaturalGas,
        Fuel::Electric,
        Fuel::Petrol,
    ];
    let registry: Vec<VehicleFacts> = (0..2000)
        .map(|i| {
            let nonroad = i % 20 == 0;
            VehicleFacts {
                plate: plate("豫A", i),
                color: if i % 15 == 0 {
                    PlateColor::YellowGreen
                } else {
                    PlateColor::Yellow
                },
                registry: if nonroad {
                    RegistryKind::NonRoad
                } else {
                    RegistryKind::Transport
                },
                stage: match rng.below(10) {
                    0 => EmissionStage::Unknown,
                    1 => EmissionStage::Electric,
                    n => EmissionStage::China((n as u8).min(6)),
                },
                fuel: fuels[rng.below(fuels.len() as u64) as usize],
                vehicle_type: types[rng.below(types.len() as u64) as usize].into(),
                use_character: Some('F'),
                obd_online: Some(true),
            }
        })
        .collect();

    // (label, plate, colour, facts index)
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Registered,
        Unknown,
        White,
        Black,
    }
    let unknown_plates: Vec<String> = (0..500).map(|i| plate("豫U", i)).collect();
    let white_plates: Vec<String> = (0..1000).map(|i| plate("豫W", i)).collect();
    let black_plates: Vec<String> = (0..100).map(|i| plate("豫B", i)).collect();
    let mut inputs = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let roll = rng.below(100);
        let kind = match roll {
            0..=69 => Kind::Registered,
            70..=84 => Kind::Unknown,
            85..=94 => Kind::White,
            _ => Kind::Black,
        };
        let gate = if rng.below(2) == 0 { "1" } else { "2" };
        let direction = if rng.below(5) == 0 {
            Direction::Out
        } else {
            Direction::In
        };
        let (plate, color, facts) = match kind {
            Kind::Registered => {
                let f = &registry[rng.below(registry.len() as u64) as usize];
                (f.plate.as_str(), f.color, Some(f))
            }
            Kind::Unknown => (
                unknown_plates[rng.below(500) as usize].as_str(),
                PlateColor::Yellow,
                None,
            ),
            Kind::White => {
                let p = white_plates[rng.below(1000) as usize].as_str();
                let f = if rng.below(2) == 0 {
                    Some(&registry[0])
                } else {
                    None
                };
                (p, PlateColor::Yellow, f)
            }
            Kind::Black => (
                black_plates[rng.below(100) as usize].as_str(),
                PlateColor::Yellow,
                Some(&registry[1]),
            ),
        };
        inputs.push((
            kind,
            DecisionInput {
                plate,
                color,
                facts,
                gate,
                direction,
                now: t0,
            },
        ));
    }

    let run = |label: &str, sel: &dyn Fn(Kind) -> bool| {
        let batch: Vec<&DecisionInput> = inputs
            .iter()
            .filter(|(k, _)| sel(*k))
            .map(|(_, i)| i)
            .collect();
        // Warm up, then time enough rounds for ~2M decisions.
        let mut allowed = 0usize;
        for i in &batch {
            allowed += usize::from(policy.decide(i, &state).allow);
        }
        let rounds = (2_000_000 / batch.len()).max(1);
        let start = Instant::now();
        for _ in 0..rounds {
            for i in &batch {
                let d = policy.decide(black_box(i), black_box(&state));
                allowed += usize::from(black_box(d).allow);
            }
        }
        let elapsed = start.elapsed();
        let n = rounds * batch.len();
        let ns = elapsed.as_nanos() as f64 / n as f64;
        println!(
            "{label:<22} {n:>9} decisions  {ns:>7.1} ns/decision  {:>12.0} decisions/s  (allowed {:.0}%)",
            1e9 / ns,
            100.0 * allowed as f64 / ((rounds + 1) * batch.len()) as f64
        );
    };
    println!(
        "policy bench: {} white entries, {} black entries, {} measures (3 active at gate 1, 2 at gate 2)",
        state.white_len(),
        state.black_len(),
        state.measures().len()
    );
    run("mix", &|_| true);
    run("registered", &|k| k == Kind::Registered);
    run("unknown", &|k| k == Kind::Unknown);
    run("white list", &|k| k == Kind::White);
    run("black list", &|k| k == Kind::Black);
}
