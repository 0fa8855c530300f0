//! Deciding when a vehicle's weight is final: exactly one locked weighing per vehicle.
//!
//! A reading counts as steady when the indicator says so (`ST`, Toledo motion bit clear) or,
//! for formats without a flag, when the last `equal_count` readings are identical or the
//! readings over `window_ms` spread by at most `division`. Steadiness must hold for `hold_ms`
//! with the weight above `min_weight` before the weighing locks. After a lock the engine is
//! disarmed until the weight falls below `rearm_below` (the vehicle has left), so a truck that
//! sits on the platform for minutes is still weighed once.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::mass::Mass;

/// Profile keys under `[settings.stability]`. Masses are decimal kg strings or numbers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct StabilitySettings {
    /// Use the indicator's stable flag when the format has one.
    pub use_indicator_flag: bool,
    /// Weighings below this are not vehicles (people, debris, drift).
    #[serde(with = "kg")]
    pub min_weight: Mass,
    /// The engine re-arms for the next vehicle when the weight falls below this. Defaults to
    /// `min_weight`.
    #[serde(with = "opt_kg")]
    pub rearm_below: Option<Mass>,
    /// The scale's division (d): the allowed spread within the window.
    #[serde(with = "kg")]
    pub division: Mass,
    /// Steady when this many consecutive readings are identical (0 disables).
    pub equal_count: usize,
    /// Steady when every reading in this window is within one division (0 disables).
    pub window_ms: u64,
    /// Steadiness must last this long before the weighing locks.
    pub hold_ms: u64,
}

impl Default for StabilitySettings {
    fn default() -> Self {
        StabilitySettings {
            use_indicator_flag: true,
            min_weight: Mass::from_kg(500),
            rearm_below: None,
            division: Mass::from_kg(20),
            equal_count: 5,
            window_ms: 1500,
            hold_ms: 1000,
        }
    }
}

impl StabilitySettings {
    pub fn rearm_threshold(&self) -> Mass {
        self.rearm_below.unwrap_or(self.min_weight)
    }
}

/// What one reading did to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing locked; `steady` tells whether the reading looked steady.
    Sample { steady: bool },
    /// The weighing for this vehicle locked at this mass (emitted once per vehicle).
    Locked(Mass),
    /// The weight fell back below the re-arm threshold: the vehicle left.
    Cleared,
}

#[derive(Debug, Clone)]
pub struct StabilityEngine {
    s: StabilitySettings,
    /// Ready to lock the next vehicle.
    armed: bool,
    /// Weight has been above `min_weight` since it was last below the re-arm threshold.
    loaded: bool,
    recent: VecDeque<(Instant, Mass)>,
    steady_since: Option<(Instant, Mass)>,
}

impl StabilityEngine {
    pub fn new(settings: StabilitySettings) -> Self {
        StabilityEngine {
            s: settings,
            armed: true,
            loaded: false,
            recent: VecDeque::new(),
            steady_since: None,
        }
    }

    pub fn settings(&self) -> &StabilitySettings {
        &self.s
    }

    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Feeds one reading taken at `at`; `flag` is the indicator's stable flag, if any.
    pub fn push(&mut self, at: Instant, mass: Mass, flag: Option<bool>) -> Verdict {
        self.recent.push_back((at, mass));
        let window = Duration::from_millis(self.s.window_ms);
        let keep = self.s.equal_count.max(3);
        // Keep one reading at or beyond the window edge so "the window is covered" can be told.
        while self.recent.len() > keep
            && self
                .recent
                .get(1)
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= window)
        {
            self.recent.pop_front();
        }
        // A burst of readings with one timestamp must not grow the history without bound.
        while self.recent.len() > 4096 {
            self.recent.pop_front();
        }

        if mass < self.s.rearm_threshold() {
            let was_loaded = self.loaded;
            self.loaded = false;
            self.armed = true;
            self.steady_since = None;
            return if was_loaded {
                Verdict::Cleared
            } else {
                Verdict::Sample {
                    steady: self.steady_now(at, flag),
                }
            };
        }
        if mass >= self.s.min_weight {
            self.loaded = true;
        }
        let steady = self.steady_now(at, flag);
        if !steady || mass < self.s.min_weight || !self.armed {
            if !steady || mass < self.s.min_weight {
                self.steady_since = None;
            }
            return Verdict::Sample { steady };
        }
        // A flag that says "stable" while the weight wanders by more than a division is
        // a new steady period, not a continuation.
        let since = match self.steady_since {
            Some((t, m)) if m.abs_diff(mass) <= self.s.division => t,
            _ => {
                self.steady_since = Some((at, mass));
                at
            }
        };
        if at.saturating_duration_since(since) >= Duration::from_millis(self.s.hold_ms) {
            self.armed = false;
            self.steady_since = None;
            return Verdict::Locked(mass);
        }
        Verdict::Sample { steady }
    }

    fn steady_now(&self, at: Instant, flag: Option<bool>) -> bool {
        if self.s.use_indicator_flag {
            if let Some(f) = flag {
                return f;
            }
        }
        let n = self.s.equal_count;
        let equal = n >= 2
            && self.recent.len() >= n
            && self
                .recent
                .iter()
                .rev()
                .take(n)
                .all(|(_, m)| Some(*m) == self.recent.back().map(|x| x.1));
        if equal {
            return true;
        }
        if self.s.window_ms == 0 {
            return false;
        }
        // The window must be covered by readings, or two samples 1 ms apart would count.
        let window = Duration::from_millis(self.s.window_ms);
        let Some((first, _)) = self.recent.front() else {
            return false;
        };
        if at.saturating_duration_since(*first) < window || self.recent.len() < 3 {
            return false;
        }
        let in_window = self
            .recent
            .iter()
            .filter(|(t, _)| at.saturating_duration_since(*t) <= window);
        let (lo, hi) = in_window.fold((i64::MAX, i64::MIN), |(lo, hi), (_, m)| {
            (lo.min(m.grams), hi.max(m.grams))
        });
        lo <= hi && hi - lo <= self.s.division.grams
    }
}

/// Masses in profiles are written in kg: `500`, `0.5` or `"12340.5"`.
pub(crate) mod kg {
    use crate::mass::Mass;
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Kg {
        Int(i64),
        Float(f64),
        Text(String),
    }

    fn to_mass<E: serde::de::Error>(v: Kg) -> Result<Mass, E> {
        match v {
            Kg::Int(i) => i
                .checked_mul(1000)
                .map(Mass::from_grams)
                .ok_or_else(|| E::custom(format!("{i} kg is out of range"))),
            // Through text so 0.1 kg is exactly 100 g, not 99.99…
            Kg::Float(f) => format!("{f}")
                .parse()
                .map_err(|e: crate::mass::BadMass| E::custom(e)),
            Kg::Text(s) => s.parse().map_err(|e: crate::mass::BadMass| E::custom(e)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mass, D::Error> {
        to_mass(Kg::deserialize(d)?)
    }

    pub(crate) mod opt {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Mass>, D::Error> {
            Option::<Kg>::deserialize(d)?.map(to_mass).transpose()
        }
    }
}

use kg::opt as opt_kg;

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        engine: &mut StabilityEngine,
        t0: Instant,
        kg: &[(u64, i64, Option<bool>)],
    ) -> Vec<Verdict> {
        kg.iter()
            .map(|&(ms, w, f)| engine.push(t0 + Duration::from_millis(ms), Mass::from_kg(w), f))
            .filter(|v| !matches!(v, Verdict::Sample { .. }))
            .collect()
    }

    fn series(from_ms: u64, step: u64, ws: &[i64]) -> Vec<(u64, i64, Option<bool>)> {
        ws.iter()
            .enumerate()
            .map(|(i, &w)| (from_ms + step * i as u64, w, None))
            .collect()
    }

    #[test]
    fn one_lock_per_vehicle_without_flag() {
        let mut e = StabilityEngine::new(StabilitySettings::default());
        let t0 = Instant::now();
        let mut ws: Vec<i64> = vec![0, 0, 3000, 9000, 15000, 15020, 14980];
        ws.extend(std::iter::repeat_n(15000, 40)); // 4 s on the platform at 10 Hz
        ws.extend([9000, 2000, 0, 0]);
        ws.extend([4000, 20000, 20100]);
        ws.extend(std::iter::repeat_n(20040, 30));
        ws.extend([100, 0]);
        let v = run(&mut e, t0, &series(0, 100, &ws));
        assert_eq!(
            v,
            vec![
                Verdict::Locked(Mass::from_kg(15000)),
                Verdict::Cleared,
                Verdict::Locked(Mass::from_kg(20040)),
                Verdict::Cleared
            ]
        );
    }

    #[test]
    fn light_loads_never_lock() {
        let mut e = StabilityEngine::new(StabilitySettings::default());
        let v = run(&mut e, Instant::now(), &series(0, 100, &[300; 50]));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn indicator_flag_wins_and_hold_is_required() {
        let mut e = StabilityEngine::new(StabilitySettings {
            hold_ms: 500,
            ..Default::default()
        });
        let t0 = Instant::now();
        // Identical readings flagged "motion" never lock while the flag is trusted.
        let moving: Vec<_> = (0..20).map(|i| (i * 100, 15000, Some(false))).collect();
        assert!(run(&mut e, t0, &moving).is_empty());
        let v = run(
            &mut e,
            t0,
            &[
                (2000, 15000, Some(true)),
                (2300, 15000, Some(true)),
                (2600, 15000, Some(true)),
                (2900, 15000, Some(true)),
            ],
        );
        assert_eq!(v, vec![Verdict::Locked(Mass::from_kg(15000))]);
    }

    #[test]
    fn window_mode_accepts_spread_within_a_division() {
        let mut e = StabilityEngine::new(StabilitySettings {
            equal_count: 0,
            window_ms: 1000,
            hold_ms: 500,
            division: Mass::from_kg(20),
            ..Default::default()
        });
        let noisy: Vec<i64> = (0..40).map(|i| 15000 + [0, 10, -10, 10][i % 4]).collect();
        let v = run(&mut e, Instant::now(), &series(0, 100, &noisy));
        assert_eq!(v.len(), 1, "{v:?}");
        let mut e = StabilityEngine::new(StabilitySettings {
            equal_count: 0,
            window_ms: 1000,
            hold_ms: 500,
            ..Default::default()
        });
        let wild: Vec<i64> = (0..40).map(|i| 15000 + [0, 40, -40][i % 3]).collect();
        assert!(run(&mut e, Instant::now(), &series(0, 100, &wild)).is_empty());
    }

    #[test]
    fn settings_parse_from_toml_kg() {
        let s: StabilitySettings =
            toml::from_str("min_weight = 0.5\ndivision = \"10\"\nrearm_below = 200\n").unwrap();
        assert_eq!(s.min_weight, Mass::from_grams(500));
        assert_eq!(s.division, Mass::from_kg(10));
        assert_eq!(s.rearm_threshold(), Mass::from_kg(200));
        assert_eq!(s.equal_count, 5);
        assert!(toml::from_str::<StabilitySettings>("min_weight = \"heavy\"").is_err());
    }
}
