//! LED texts. The usual gate sign shows 2 lines of 8–16 half-width columns, so every text is
//! two lines of at most 8 Chinese characters, separated by one space (the sign driver breaks
//! the line there). Numerals are written 国三/国四, not 国Ⅲ: cheap sign fonts lack Roman
//! numerals.

use super::{Reason, VehicleClass, WarningLevel};
use crate::vehicle::{EmissionStage, Fuel};

/// The text of reasons whose text never varies.
pub(super) fn fixed(reason: Reason, allow: bool) -> &'static str {
    match (reason, allow) {
        (Reason::Exit, _) => "出厂车辆 一路平安",
        (Reason::ExitBlackList, _) => "黑名单车辆 出厂放行",
        (Reason::BlackList, _) => "黑名单车辆 禁止通行",
        (Reason::WhiteList, _) => "白名单车辆 允许通行",
        (Reason::WhiteListExempt, _) => "豁免车辆 允许通行",
        (Reason::NotRegistered, _) => "未登记车辆 禁止通行",
        (Reason::UnknownVehicle | Reason::UnknownInWarning, true) => "车辆信息待核 允许通行",
        (Reason::UnknownVehicle, false) => "车辆信息未知 禁止通行",
        (Reason::UnknownInWarning, false) => "未登记车辆 预警期间禁行",
        (Reason::NewEnergy, _) => "新能源车 允许通行",
        (Reason::StageUnknown, _) => "排放阶段待核 允许通行",
        (Reason::Ok, _) => "排放达标 允许通行",
        (Reason::Strategy(_) | Reason::LevelMinStage | Reason::NormalMinStage, _) => {
            "排放不达标 禁止通行"
        }
    }
}

pub(super) fn allowed(
    reason: Reason,
    stage: EmissionStage,
    fuel: Fuel,
    class: VehicleClass,
) -> String {
    match reason {
        Reason::Ok => {
            let mut t = String::with_capacity(48);
            push_label(&mut t, stage, fuel, class);
            t.push_str(" 允许通行");
            t
        }
        other => fixed(other, true).to_string(),
    }
}

pub(super) fn denied(
    reason: Reason,
    level: Option<WarningLevel>,
    stage: EmissionStage,
    fuel: Fuel,
    class: VehicleClass,
) -> String {
    let mut t = String::with_capacity(48);
    match reason {
        Reason::Strategy(super::Strategy::S4) => {
            t.push_str("停止公路运输 ");
            push_level(&mut t, level);
        }
        Reason::Strategy(_) | Reason::LevelMinStage => {
            push_label(&mut t, stage, fuel, class);
            t.push(' ');
            push_level(&mut t, level);
        }
        Reason::NormalMinStage => {
            push_label(&mut t, stage, fuel, class);
            t.push_str(" 不达标禁行");
        }
        other => t.push_str(fixed(other, false)),
    }
    t
}

pub(super) fn unknown_in_warning(level: Option<WarningLevel>) -> String {
    let mut t = String::with_capacity(48);
    t.push_str("未登记车辆 ");
    push_level(&mut t, level);
    t
}

fn push_level(t: &mut String, level: Option<WarningLevel>) {
    if let Some(l) = level {
        t.push_str(l.chinese());
    }
    t.push_str("预警禁行");
}

/// "国四柴油车", "国二机械", "排放未知燃气车".
fn push_label(t: &mut String, stage: EmissionStage, fuel: Fuel, class: VehicleClass) {
    const DIGITS: [&str; 8] = ["0", "一", "二", "三", "四", "五", "六", "七"];
    match stage {
        EmissionStage::China(n) => {
            t.push('国');
            t.push_str(DIGITS.get(usize::from(n)).copied().unwrap_or("?"));
        }
        EmissionStage::Electric => t.push_str("电动"),
        EmissionStage::Unknown => t.push_str("排放未知"),
    }
    t.push_str(match (class, fuel) {
        (VehicleClass::NonRoad, _) => "机械",
        (_, Fuel::Diesel) => "柴油车",
        (_, Fuel::NaturalGas | Fuel::Lpg) => "燃气车",
        (_, Fuel::Petrol) => "汽油车",
        _ => "车",
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Strategy;

    /// Every text must fit the sign: two lines, each at most 8 characters.
    fn fits(t: &str) -> bool {
        let lines: Vec<&str> = t.split(' ').collect();
        lines.len() == 2
            && lines
                .iter()
                .all(|l| !l.is_empty() && l.chars().count() <= 8)
    }

    #[test]
    fn every_text_fits_a_two_line_sign() {
        let stages = [
            EmissionStage::China(0),
            EmissionStage::China(4),
            EmissionStage::Electric,
            EmissionStage::Unknown,
        ];
        let classes = [VehicleClass::HeavyGoods, VehicleClass::NonRoad];
        for reason in Reason::ALL {
            for allow in [true, false] {
                assert!(fits(fixed(reason, allow)), "{reason} {allow}");
            }
            for stage in stages {
                for fuel in Fuel::ALL {
                    for class in classes {
                        let a = allowed(reason, stage, fuel, class);
                        assert!(fits(&a), "{a}");
                        for level in [None, Some(WarningLevel::Orange)] {
                            let d = denied(reason, level, stage, fuel, class);
                            assert!(fits(&d), "{d}");
                        }
                    }
                }
            }
        }
        assert!(fits(&unknown_in_warning(Some(WarningLevel::Red))));
    }

    #[test]
    fn denial_names_stage_fuel_and_level() {
        assert_eq!(
            denied(
                Reason::Strategy(Strategy::S2),
                Some(WarningLevel::Orange),
                EmissionStage::China(4),
                Fuel::Diesel,
                VehicleClass::HeavyGoods
            ),
            "国四柴油车 橙色预警禁行"
        );
        assert_eq!(
            denied(
                Reason::LevelMinStage,
                Some(WarningLevel::Red),
                EmissionStage::China(2),
                Fuel::Diesel,
                VehicleClass::NonRoad
            ),
            "国二机械 红色预警禁行"
        );
        assert_eq!(
            denied(
                Reason::NormalMinStage,
                None,
                EmissionStage::Unknown,
                Fuel::NaturalGas,
                VehicleClass::HeavyGoods
            ),
            "排放未知燃气车 不达标禁行"
        );
    }
}
