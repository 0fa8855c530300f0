//! What each Sparkplug edge node and device reports: the metric set (names, types, units) built
//! from the same live state the JSON tree reads, and the comparison that decides what a DDATA
//! or NDATA carries (report by exception). The table in `docs/mqtt.md` lists these metrics.

use super::proto::{DataType, Metric, MetricValue, PropertySet, PropertyValue, PropertyValueKind};
use crate::alarm::{ActiveAlarm, Severity};
use crate::runtime::LaneStatus;
use chrono::{DateTime, Utc};
use ecogate_drivers::DeviceHealth;

/// A metric value; `None` in [`Point::value`] is sent as `is_null`.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Bool(bool),
    I32(i32),
    I64(i64),
    U64(u64),
    Text(String),
    /// Milliseconds since the Unix epoch.
    Time(i64),
}

/// One metric of a node or device, as computed from live state.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub name: &'static str,
    pub datatype: DataType,
    /// Engineering unit, sent as the `engUnit` property in births.
    pub unit: Option<&'static str>,
    pub value: Option<Val>,
    /// Change below which a new value is not reported: the larger of a fraction of the old
    /// value and an absolute amount ((0, 0): any change is). Keeps a jittering round-trip time
    /// from turning every poll into a DDATA.
    pub deadband: (f64, f64),
}

impl Point {
    fn new(name: &'static str, datatype: DataType, value: Option<Val>) -> Point {
        Point {
            name,
            datatype,
            unit: None,
            value,
            deadband: (0.0, 0.0),
        }
    }

    fn unit(mut self, unit: &'static str) -> Point {
        self.unit = Some(unit);
        self
    }

    /// True when `self` (new) differs from `old` enough to be reported.
    pub fn changed_from(&self, old: &Point) -> bool {
        match (&self.value, &old.value) {
            (Some(Val::I64(a)), Some(Val::I64(b))) if self.deadband != (0.0, 0.0) => {
                let (rel, abs) = self.deadband;
                let band = (rel * (*b as f64).abs()).max(abs);
                ((*a - *b) as f64).abs() >= band
            }
            (a, b) => a != b,
        }
    }

    /// The wire form: births carry the datatype, the unit and every value; data messages the
    /// datatype too (allowed, and it spares hosts a lookup).
    pub fn to_metric(&self, birth: bool, at_ms: u64) -> Metric {
        let value = self.value.as_ref().map(|v| match v {
            Val::Bool(b) => MetricValue::BooleanValue(*b),
            // Signed values travel as their two's complement bit pattern.
            Val::I32(i) => MetricValue::IntValue(*i as u32),
            Val::I64(i) | Val::Time(i) => MetricValue::LongValue(*i as u64),
            Val::U64(u) => MetricValue::LongValue(*u),
            Val::Text(s) => MetricValue::StringValue(s.clone()),
        });
        let properties = match (birth, self.unit) {
            (true, Some(u)) => Some(PropertySet {
                keys: vec!["engUnit".into()],
                values: vec![PropertyValue {
                    r#type: Some(DataType::String.code()),
                    is_null: None,
                    value: Some(PropertyValueKind::StringValue(u.into())),
                }],
            }),
            _ => None,
        };
        Metric {
            name: Some(self.name.to_string()),
            timestamp: Some(at_ms),
            datatype: Some(self.datatype.code()),
            is_null: value.is_none().then_some(true),
            properties,
            value,
            ..Default::default()
        }
    }
}

/// Metrics whose value in `new` differs from `old` (a metric absent from `old` counts as
/// changed).
pub fn changes<'a>(new: &'a [Point], old: &[Point]) -> Vec<&'a Point> {
    new.iter()
        .filter(|p| match old.iter().find(|o| o.name == p.name) {
            Some(o) => p.changed_from(o),
            None => true,
        })
        .collect()
}

fn text(s: Option<&str>) -> Option<Val> {
    s.map(|s| Val::Text(s.to_string()))
}

fn time(t: Option<DateTime<Utc>>) -> Option<Val> {
    t.map(|t| Val::Time(t.timestamp_millis()))
}

fn count(n: usize) -> Option<Val> {
    Some(Val::I32(i32::try_from(n).unwrap_or(i32::MAX)))
}

/// Site-wide figures for the edge node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeFacts {
    pub site: String,
    pub ledger_head: Option<i64>,
    pub uplink_backlog: Option<u64>,
}

/// The node's metrics besides `bdSeq` and `Node Control/Rebirth` (which only births carry).
pub fn node_points(facts: &NodeFacts, alarms: &[ActiveAlarm]) -> Vec<Point> {
    let raised = |code: &str| alarms.iter().any(|a| a.raised && a.code == code);
    vec![
        Point::new(
            "Properties/Software Version",
            DataType::String,
            text(Some(env!("CARGO_PKG_VERSION"))),
        ),
        Point::new("Properties/Site", DataType::String, text(Some(&facts.site))),
        Point::new(
            "Ledger/Head Seq",
            DataType::Int64,
            facts.ledger_head.map(Val::I64),
        ),
        Point::new("Alarms/Active", DataType::Int32, count(alarms.len())),
        Point::new(
            "Alarms/Critical",
            DataType::Int32,
            count(
                alarms
                    .iter()
                    .filter(|a| a.raised && a.severity == Severity::Critical)
                    .count(),
            ),
        ),
        Point::new(
            "Alarms/Unacknowledged",
            DataType::Int32,
            count(
                alarms
                    .iter()
                    .filter(|a| a.severity != Severity::Info && !a.acknowledged())
                    .count(),
            ),
        ),
        Point::new(
            "Power/On Battery",
            DataType::Boolean,
            Some(Val::Bool(raised("ups_on_battery"))),
        ),
        Point::new(
            "Power/Battery Low",
            DataType::Boolean,
            Some(Val::Bool(raised("ups_battery_low"))),
        ),
        Point::new(
            "Uplinks/Backlog",
            DataType::UInt64,
            facts.uplink_backlog.map(Val::U64),
        )
        .unit("records"),
    ]
}

/// A lane's metrics.
pub fn lane_points(st: &LaneStatus, lane: &str, alarms: &[ActiveAlarm]) -> Vec<Point> {
    let source = format!("lane:{lane}");
    let color = st
        .color
        .and_then(|c| serde_json::to_value(c).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    let v = st.verdict.as_ref();
    vec![
        Point::new("Properties/Kind", DataType::String, text(Some("lane"))),
        Point::new("Properties/Lane", DataType::String, text(Some(lane))),
        Point::new("State", DataType::String, text(Some(&st.state))),
        Point::new("Plate", DataType::String, text(st.plate.as_deref())),
        Point::new("Plate Color", DataType::String, color.map(Val::Text)),
        Point::new(
            "Decision",
            DataType::String,
            text(v.map(|v| if v.allow { "allow" } else { "deny" })),
        ),
        Point::new(
            "Decision/Reason",
            DataType::String,
            text(v.map(|v| v.reason.as_str())),
        ),
        Point::new(
            "Decision/Review",
            DataType::Boolean,
            v.map(|v| Val::Bool(v.review)),
        ),
        Point::new(
            "Barrier Open",
            DataType::Boolean,
            Some(Val::Bool(st.barrier_open)),
        ),
        Point::new("Records", DataType::UInt64, Some(Val::U64(st.records))),
        Point::new(
            "Record Failures",
            DataType::UInt64,
            Some(Val::U64(st.record_failures)),
        ),
        Point::new("Updated", DataType::DateTime, time(st.updated)),
        Point::new(
            "Alarms/Active",
            DataType::Int32,
            count(
                alarms
                    .iter()
                    .filter(|a| a.source == source || a.lane.as_deref() == Some(lane))
                    .count(),
            ),
        ),
    ]
}

/// A field device's metrics.
pub fn device_points(h: &DeviceHealth, device: &str, alarms: &[ActiveAlarm]) -> Vec<Point> {
    let source = format!("device:{device}");
    let mut rtt = Point::new(
        "RTT",
        DataType::Int64,
        h.rtt
            .map(|d| Val::I64(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
    )
    .unit("ms");
    // LAN round trips jitter by milliseconds: only a move of 10 ms and 50 % is news.
    rtt.deadband = (0.5, 10.0);
    vec![
        Point::new("Properties/Kind", DataType::String, text(Some("device"))),
        Point::new("Properties/Device", DataType::String, text(Some(device))),
        Point::new("Online", DataType::Boolean, Some(Val::Bool(h.online))),
        rtt,
        Point::new("Errors", DataType::UInt64, Some(Val::U64(h.errors))),
        Point::new(
            "Last Error",
            DataType::String,
            text(h.last_error.as_deref()),
        ),
        Point::new(
            "Alarms/Active",
            DataType::Int32,
            count(alarms.iter().filter(|a| a.source == source).count()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_jitter_inside_the_deadband_is_not_reported() {
        let h = |ms| DeviceHealth {
            online: true,
            rtt: Some(std::time::Duration::from_millis(ms)),
            ..Default::default()
        };
        let old = device_points(&h(40), "io1", &[]);
        assert!(changes(&device_points(&h(55), "io1", &[]), &old).is_empty());
        let small = device_points(&h(2), "io1", &[]);
        assert!(changes(&device_points(&h(11), "io1", &[]), &small).is_empty());
        let moved = device_points(&h(60), "io1", &[]);
        let c = changes(&moved, &old);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].name, "RTT");
    }

    #[test]
    fn null_values_are_flagged_and_units_only_in_births() {
        let h = DeviceHealth::default();
        let pts = device_points(&h, "io1", &[]);
        let rtt = pts.iter().find(|p| p.name == "RTT").unwrap();
        let m = rtt.to_metric(true, 5);
        assert_eq!(m.is_null, Some(true));
        assert_eq!(m.value, None);
        assert_eq!(m.properties.unwrap().string("engUnit"), Some("ms"));
        assert!(rtt.to_metric(false, 5).properties.is_none());
        let errors = pts.iter().find(|p| p.name == "Errors").unwrap();
        assert_eq!(errors.to_metric(false, 5).is_null, None);
    }
}
