//! Weights as exact decimals. Scales report in divisions of 10/20/50 kg or in tonnes with
//! three decimals; a float would turn 49.98 t into 49979.99 kg on an inspector's export.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A mass in whole grams (exact), displayed in kg.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Mass {
    pub grams: i64,
}

impl Mass {
    pub const ZERO: Mass = Mass { grams: 0 };

    pub fn from_kg(kg: i64) -> Self {
        Mass { grams: kg * 1000 }
    }

    pub fn from_grams(grams: i64) -> Self {
        Mass { grams }
    }

    pub fn kg_f64(self) -> f64 {
        self.grams as f64 / 1000.0
    }

    pub fn abs_diff(self, other: Mass) -> Mass {
        Mass {
            grams: (self.grams - other.grams).abs(),
        }
    }
}

impl std::ops::Sub for Mass {
    type Output = Mass;
    fn sub(self, rhs: Mass) -> Mass {
        Mass {
            grams: self.grams - rhs.grams,
        }
    }
}

impl fmt::Display for Mass {
    /// `12340 kg`-style decimal kg without trailing zeros: `12340`, `12340.5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.grams < 0 { "-" } else { "" };
        let g = self.grams.unsigned_abs();
        let (kg, rem) = (g / 1000, g % 1000);
        if rem == 0 {
            write!(f, "{sign}{kg}")
        } else {
            let frac = format!("{rem:03}");
            write!(f, "{sign}{kg}.{}", frac.trim_end_matches('0'))
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a weight in kg (expected a decimal such as 12340 or 12340.5)")]
pub struct BadMass(pub String);

impl FromStr for Mass {
    type Err = BadMass;
    /// Parses decimal kg with up to three fractional digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadMass(s.to_string());
        let t = s.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        if !int.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        if frac.len() > 3 && frac[3..].chars().any(|c| c != '0') {
            return Err(bad());
        }
        let kg: i64 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad())?
        };
        let mut f = frac.chars().take(3).collect::<String>();
        while f.len() < 3 {
            f.push('0');
        }
        let g: i64 = f.parse().map_err(|_| bad())?;
        let grams = kg
            .checked_mul(1000)
            .and_then(|v| v.checked_add(g))
            .ok_or_else(bad)?;
        Ok(Mass {
            grams: if neg { -grams } else { grams },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        assert_eq!("12340".parse::<Mass>(), Ok(Mass::from_kg(12340)));
        assert_eq!("49.98".parse::<Mass>().map(|m| m.grams), Ok(49_980));
        assert_eq!(Mass::from_grams(49_980).to_string(), "49.98");
        assert_eq!(Mass::from_grams(-1500).to_string(), "-1.5");
        assert!("1.2345".parse::<Mass>().is_err());
        assert!("abc".parse::<Mass>().is_err());
        assert!(".".parse::<Mass>().is_err());
    }
}
