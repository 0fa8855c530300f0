//! Vehicle facts and the national code tables they use (regulatory-domain §2). Codes are named
//! enums inside the gateway; platform numbering happens only at the edges.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub use ecogate_drivers::PlateColor;

/// 排放阶段. Road vehicles 0–6 (7 reserved), non-road machinery 0–4; `D` electric, `X` none/unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EmissionStage {
    /// 国0 … 国7 as 0 … 7.
    China(u8),
    /// 电动 / 新能源.
    Electric,
    /// 无排放阶段 / unknown.
    Unknown,
}

impl EmissionStage {
    pub fn code(self) -> String {
        match self {
            EmissionStage::China(n) => n.to_string(),
            EmissionStage::Electric => "D".into(),
            EmissionStage::Unknown => "X".into(),
        }
    }

    pub fn chinese(self) -> String {
        const ROMAN: [&str; 8] = ["0", "Ⅰ", "Ⅱ", "Ⅲ", "Ⅳ", "Ⅴ", "Ⅵ", "Ⅶ"];
        match self {
            EmissionStage::China(n) => format!("国{}", ROMAN.get(n as usize).unwrap_or(&"?")),
            EmissionStage::Electric => "电动".into(),
            EmissionStage::Unknown => "未知".into(),
        }
    }

    /// Numeric stage when the vehicle burns fuel; electric and unknown have none.
    pub fn number(self) -> Option<u8> {
        match self {
            EmissionStage::China(n) => Some(n),
            _ => None,
        }
    }
}

impl fmt::Display for EmissionStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unknown emission stage `{0}` (expected 0-7, D for electric or X for none/unknown)")]
pub struct BadStage(pub String);

impl FromStr for EmissionStage {
    type Err = BadStage;
    fn from_str(s: &str) -> Result<Self, BadStage> {
        let t = s.trim();
        match t {
            "D" | "d" | "电动" | "新能源" => return Ok(EmissionStage::Electric),
            "X" | "x" | "未知" | "无" => return Ok(EmissionStage::Unknown),
            _ => {}
        }
        let digits = t.trim_start_matches('国');
        // Registries and platform exports write the stage every way: 国Ⅴ, 国V, 国五, 5.
        let n = match digits {
            "零" => Some(0),
            "Ⅰ" | "I" | "一" => Some(1),
            "Ⅱ" | "II" | "二" => Some(2),
            "Ⅲ" | "III" | "三" => Some(3),
            "Ⅳ" | "IV" | "四" => Some(4),
            "Ⅴ" | "V" | "五" => Some(5),
            "Ⅵ" | "VI" | "六" => Some(6),
            "Ⅶ" | "VII" | "七" => Some(7),
            d => d.parse::<u8>().ok().filter(|n| *n <= 7),
        };
        n.map(EmissionStage::China)
            .ok_or_else(|| BadStage(s.to_string()))
    }
}

impl TryFrom<String> for EmissionStage {
    type Error = BadStage;
    fn try_from(s: String) -> Result<Self, BadStage> {
        s.parse()
    }
}

impl From<EmissionStage> for String {
    fn from(s: EmissionStage) -> String {
        s.code()
    }
}

/// 燃料类型, GA 24.9 letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Fuel {
    /// A 汽油
    Petrol,
    /// B 柴油
    Diesel,
    /// C 电
    Electric,
    /// D 混合油
    MixedOil,
    /// E 天然气
    NaturalGas,
    /// F 液化石油气
    Lpg,
    /// L 甲醇
    Methanol,
    /// M 乙醇
    Ethanol,
    /// N 太阳能
    Solar,
    /// O 混合动力
    Hybrid,
    /// P 氢
    Hydrogen,
    /// Q 生物燃料
    Biofuel,
    /// Y 无
    None,
    /// Z 其他
    Other,
}

impl Fuel {
    pub const ALL: [Fuel; 14] = [
        Fuel::Petrol,
        Fuel::Diesel,
        Fuel::Electric,
        Fuel::MixedOil,
        Fuel::NaturalGas,
        Fuel::Lpg,
        Fuel::Methanol,
        Fuel::Ethanol,
        Fuel::Solar,
        Fuel::Hybrid,
        Fuel::Hydrogen,
        Fuel::Biofuel,
        Fuel::None,
        Fuel::Other,
    ];

    pub fn code(self) -> char {
        match self {
            Fuel::Petrol => 'A',
            Fuel::Diesel => 'B',
            Fuel::Electric => 'C',
            Fuel::MixedOil => 'D',
            Fuel::NaturalGas => 'E',
            Fuel::Lpg => 'F',
            Fuel::Methanol => 'L',
            Fuel::Ethanol => 'M',
            Fuel::Solar => 'N',
            Fuel::Hybrid => 'O',
            Fuel::Hydrogen => 'P',
            Fuel::Biofuel => 'Q',
            Fuel::None => 'Y',
            Fuel::Other => 'Z',
        }
    }

    pub fn chinese(self) -> &'static str {
        match self {
            Fuel::Petrol => "汽油",
            Fuel::Diesel => "柴油",
            Fuel::Electric => "电",
            Fuel::MixedOil => "混合油",
            Fuel::NaturalGas => "天然气",
            Fuel::Lpg => "液化石油气",
            Fuel::Methanol => "甲醇",
            Fuel::Ethanol => "乙醇",
            Fuel::Solar => "太阳能",
            Fuel::Hybrid => "混合动力",
            Fuel::Hydrogen => "氢",
            Fuel::Biofuel => "生物燃料",
            Fuel::None => "无",
            Fuel::Other => "其他",
        }
    }

    /// Gas-fuelled (燃气): treated apart from diesel by control strategies 1–3.
    pub fn is_gas(self) -> bool {
        matches!(self, Fuel::NaturalGas | Fuel::Lpg)
    }

    /// Zero tailpipe emissions (new energy).
    pub fn is_zero_emission(self) -> bool {
        matches!(self, Fuel::Electric | Fuel::Hydrogen | Fuel::Solar)
    }
}

impl fmt::Display for Fuel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code())
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unknown fuel `{0}` (expected a GA 24.9 letter: A petrol, B diesel, C electric, D mixed oil, E natural gas, F LPG, L methanol, M ethanol, N solar, O hybrid, P hydrogen, Q biofuel, Y none, Z other)")]
pub struct BadFuel(pub String);

impl FromStr for Fuel {
    type Err = BadFuel;
    fn from_str(s: &str) -> Result<Self, BadFuel> {
        let t = s.trim();
        Fuel::ALL
            .into_iter()
            .find(|f| {
                t.len() == 1 && t.eq_ignore_ascii_case(&f.code().to_string()) || t == f.chinese()
            })
            .ok_or_else(|| BadFuel(s.to_string()))
    }
}

impl TryFrom<String> for Fuel {
    type Error = BadFuel;
    fn try_from(s: String) -> Result<Self, BadFuel> {
        s.parse()
    }
}

impl From<Fuel> for String {
    fn from(f: Fuel) -> String {
        f.code().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// Which way a vehicle goes through a gate: 进 (in) or 出 (out).
pub enum Direction {
    /// 进厂
    In,
    /// 出厂
    Out,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }

    pub fn chinese(self) -> &'static str {
        match self {
            Direction::In => "进",
            Direction::Out => "出",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s.trim() {
            "in" | "IN" | "In" | "进" | "进厂" | "1" | "A" => Some(Direction::In),
            "out" | "OUT" | "Out" | "出" | "出厂" | "2" | "B" => Some(Direction::Out),
            _ => None,
        }
    }
}

/// Which of the three HJ 1321 registries a vehicle belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryKind {
    /// 进出厂运输车辆
    Transport,
    /// 厂内运输车辆
    InPlant,
    /// 非道路移动机械
    NonRoad,
}

impl RegistryKind {
    pub fn name(self) -> &'static str {
        match self {
            RegistryKind::Transport => "transport",
            RegistryKind::InPlant => "in_plant",
            RegistryKind::NonRoad => "non_road",
        }
    }
}

/// What the gateway knows about one vehicle when it decides: from the registry, the platform
/// check, or only the camera (plate and colour) for an unknown vehicle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VehicleFacts {
    pub plate: String,
    pub color: PlateColor,
    pub registry: RegistryKind,
    pub stage: EmissionStage,
    pub fuel: Fuel,
    /// GA 24.4 vehicle type code, e.g. `H11` (重型普通货车), `Q11` (重型半挂牵引车).
    pub vehicle_type: String,
    /// GA 24.3 use character letter, e.g. `F` (货运), `R` (危化品运输).
    pub use_character: Option<char>,
    /// 联网状态 (OBD remote monitoring); None when not known.
    pub obd_online: Option<bool>,
}

impl VehicleFacts {
    /// Heavy goods vehicles and tractors (H1x, Q1x): the class every emergency strategy targets.
    pub fn is_heavy_goods(&self) -> bool {
        let t = self.vehicle_type.as_bytes();
        t.len() >= 2 && (t[0] == b'H' || t[0] == b'Q') && t[1] == b'1'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_spellings() {
        assert_eq!("国Ⅵ".parse(), Ok(EmissionStage::China(6)));
        assert_eq!("国五".parse(), Ok(EmissionStage::China(5)));
        assert_eq!("国三".parse(), Ok(EmissionStage::China(3)));
        assert_eq!("国V".parse(), Ok(EmissionStage::China(5)));
        assert_eq!("5".parse(), Ok(EmissionStage::China(5)));
        assert_eq!("D".parse(), Ok(EmissionStage::Electric));
        assert_eq!("X".parse(), Ok(EmissionStage::Unknown));
        assert!("8".parse::<EmissionStage>().is_err());
        assert_eq!(EmissionStage::China(4).chinese(), "国Ⅳ");
    }

    #[test]
    fn fuel_codes() {
        for f in Fuel::ALL {
            assert_eq!(f.code().to_string().parse(), Ok(f));
            assert_eq!(f.chinese().parse(), Ok(f));
        }
        assert!("G".parse::<Fuel>().is_err());
    }
}
