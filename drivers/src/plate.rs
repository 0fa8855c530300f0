//! Plate colour, kept as a named enum: every platform numbers colours differently
//! (reference regulatory-domain §2.3), so numbers exist only at the edges.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum PlateColor {
    Blue,
    Yellow,
    White,
    Black,
    /// Small new-energy plate (8 characters, green).
    Green,
    /// Large new-energy plate (yellow-green).
    YellowGreen,
    Other,
}

impl PlateColor {
    pub const ALL: [PlateColor; 7] = [
        PlateColor::Blue,
        PlateColor::Yellow,
        PlateColor::White,
        PlateColor::Black,
        PlateColor::Green,
        PlateColor::YellowGreen,
        PlateColor::Other,
    ];

    /// The code used by HJ 1321 ledgers and most Henan/Hebei platforms
    /// (0 蓝 1 黄 2 白 3 黑 4 绿 5 其他 6 黄绿).
    pub fn national_code(self) -> u8 {
        match self {
            PlateColor::Blue => 0,
            PlateColor::Yellow => 1,
            PlateColor::White => 2,
            PlateColor::Black => 3,
            PlateColor::Green => 4,
            PlateColor::Other => 5,
            PlateColor::YellowGreen => 6,
        }
    }

    pub fn from_national_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.national_code() == code)
    }

    pub fn chinese(self) -> &'static str {
        match self {
            PlateColor::Blue => "蓝",
            PlateColor::Yellow => "黄",
            PlateColor::White => "白",
            PlateColor::Black => "黑",
            PlateColor::Green => "绿",
            PlateColor::YellowGreen => "黄绿",
            PlateColor::Other => "其他",
        }
    }

    /// New-energy plates are green (small) or yellow-green (large).
    pub fn is_new_energy(self) -> bool {
        matches!(self, PlateColor::Green | PlateColor::YellowGreen)
    }

    pub fn name(self) -> &'static str {
        match self {
            PlateColor::Blue => "blue",
            PlateColor::Yellow => "yellow",
            PlateColor::White => "white",
            PlateColor::Black => "black",
            PlateColor::Green => "green",
            PlateColor::YellowGreen => "yellow_green",
            PlateColor::Other => "other",
        }
    }
}

impl fmt::Display for PlateColor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown plate colour `{0}` (expected blue, yellow, white, black, green, yellow_green, other, a national code 0-6, or 蓝/黄/白/黑/绿/黄绿/其他)")]
pub struct UnknownPlateColor(pub String);

impl FromStr for PlateColor {
    type Err = UnknownPlateColor;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(c) = Self::ALL
            .into_iter()
            .find(|c| c.name() == t || c.chinese() == t || format!("{}色", c.chinese()) == t)
        {
            return Ok(c);
        }
        if let Ok(n) = t.parse::<u8>() {
            if let Some(c) = Self::from_national_code(n) {
                return Ok(c);
            }
        }
        Err(UnknownPlateColor(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_parse_all_spellings() {
        for c in PlateColor::ALL {
            assert_eq!(PlateColor::from_national_code(c.national_code()), Some(c));
            assert_eq!(c.name().parse::<PlateColor>().ok(), Some(c));
            assert_eq!(c.chinese().parse::<PlateColor>().ok(), Some(c));
        }
        assert_eq!("黄色".parse::<PlateColor>().ok(), Some(PlateColor::Yellow));
        assert!("purple".parse::<PlateColor>().is_err());
        assert!("7".parse::<PlateColor>().is_err());
    }
}
