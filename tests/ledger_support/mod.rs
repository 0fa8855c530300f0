//! Shared helpers for the ledger integration tests.
#![allow(dead_code)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use ecogate::ledger::{BarrierMode, Decision, Direction, EventBody, PassAttempt};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor};

/// Small deterministic PRNG (xorshift64*), seeded per test and printed so a failure replays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }

    pub fn from_env_or_time(name: &str) -> Self {
        let seed = std::env::var("LEDGER_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("{name}: LEDGER_TEST_SEED={seed}");
        Rng::new(seed)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

pub fn pass(lane: &str, plate: &str, direction: Direction) -> EventBody {
    EventBody::PassAttempt(pass_attempt(lane, plate, direction))
}

pub fn pass_attempt(lane: &str, plate: &str, direction: Direction) -> PassAttempt {
    PassAttempt {
        lane: lane.into(),
        gate: Some("1".into()),
        direction,
        plate: plate.into(),
        color: PlateColor::Yellow,
        decision: Decision::Allow,
        reason: "registered_stage_ok".into(),
        reason_text: "欢迎".into(),
        barrier: BarrierMode::Auto,
        opened: true,
        stage: Some(EmissionStage::China(6)),
        fuel: Some(Fuel::Diesel),
        registry: None,
        photo_kinds: vec![],
        read_id: None,
        check: None,
    }
}

/// 2026-03-01 08:00 GMT+8 plus `minutes`.
pub fn at(minutes: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
        .single()
        .unwrap_or_default()
        + Duration::minutes(minutes)
}
