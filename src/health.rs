//! Site health: device-offline and UPS alarms, and the recorder that makes every alarm (lane,
//! device, UPS) a ledger event — alarms are part of what an inspector reviews.

use crate::ledger::Ledger;
use chrono::{DateTime, Utc};
use ecogate_drivers::{DeviceHealth, UpsStatus};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// One alarm raised or cleared.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Alarm {
    /// `lane:<id>`, `device:<name>`, `site`.
    pub source: String,
    pub code: String,
    pub message: String,
    pub raised: bool,
    pub lane: Option<String>,
    pub at: DateTime<Utc>,
}

impl Alarm {
    pub fn lane(lane: &str, code: impl Into<String>, raised: bool) -> Alarm {
        Alarm {
            source: format!("lane:{lane}"),
            code: code.into(),
            message: String::new(),
            raised,
            lane: Some(lane.to_string()),
            at: Utc::now(),
        }
    }

    pub fn device(name: &str, code: &str, message: impl Into<String>, raised: bool) -> Alarm {
        Alarm {
            source: format!("device:{name}"),
            code: code.into(),
            message: message.into(),
            raised,
            lane: None,
            at: Utc::now(),
        }
    }
}

/// Records every alarm in the ledger (and the log) on a board of its own. Returns the sender
/// the rest of the site raises alarms on. Sites that show alarms keep the
/// [`crate::alarm::AlarmBoard`] and use its `spawn_recorder`.
pub fn spawn_recorder(ledger: Ledger) -> mpsc::UnboundedSender<Alarm> {
    crate::alarm::AlarmBoard::new(ledger).spawn_recorder()
}

/// Raises `device_offline` when a device that was online goes offline (its driver decides
/// after its own missed polls or heartbeats), or when it has not come online within `grace`
/// of start; clears it when the device is back.
pub fn watch_device(
    name: String,
    mut health: watch::Receiver<DeviceHealth>,
    grace: Duration,
    alarms: mpsc::UnboundedSender<Alarm>,
) {
    tokio::spawn(async move {
        let mut raised = false;
        // Start-up: give the device `grace` to answer the first time.
        let first = tokio::time::timeout(grace, health.wait_for(|h| h.online))
            .await
            .map(|r| r.is_ok());
        match first {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                let msg = health
                    .borrow()
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "never answered".into());
                raised = alarms
                    .send(Alarm::device(&name, "device_offline", msg, true))
                    .is_ok();
            }
        }
        loop {
            let (online, last_error) = {
                let h = health.borrow_and_update();
                (h.online, h.last_error.clone())
            };
            if online && raised {
                let _ = alarms.send(Alarm::device(&name, "device_offline", "back online", false));
                raised = false;
            } else if !online && !raised {
                let msg = last_error.unwrap_or_default();
                let _ = alarms.send(Alarm::device(&name, "device_offline", msg, true));
                raised = true;
            }
            if health.changed().await.is_err() {
                return;
            }
        }
    });
}

/// UPS alarms from the (already debounced) UPS status.
#[derive(Debug, Default)]
pub struct UpsMonitor {
    on_battery: bool,
    battery_low: bool,
}

impl UpsMonitor {
    /// Raises/clears `ups_on_battery` and `ups_battery_low`; true when battery-low just began
    /// (the site must put its lanes into power-loss mode).
    pub fn update(
        &mut self,
        device: &str,
        s: &UpsStatus,
        alarms: &mpsc::UnboundedSender<Alarm>,
    ) -> bool {
        if s.on_battery != self.on_battery {
            let msg = s
                .load_percent
                .map(|l| format!("load {l:.0} %"))
                .unwrap_or_default();
            let _ = alarms.send(Alarm::device(device, "ups_on_battery", msg, s.on_battery));
            self.on_battery = s.on_battery;
        }
        let began = s.battery_low && !self.battery_low;
        if s.battery_low != self.battery_low {
            let msg = s
                .battery_voltage
                .map(|v| format!("battery {v:.1} V"))
                .unwrap_or_default();
            let _ = alarms.send(Alarm::device(device, "ups_battery_low", msg, s.battery_low));
            self.battery_low = s.battery_low;
        }
        began
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ups_alarms_follow_transitions_once() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut m = UpsMonitor::default();
        let on = UpsStatus {
            on_battery: true,
            ..Default::default()
        };
        assert!(!m.update("ups", &on, &tx));
        assert!(!m.update("ups", &on, &tx));
        let low = UpsStatus {
            on_battery: true,
            battery_low: true,
            ..Default::default()
        };
        assert!(m.update("ups", &low, &tx));
        assert!(!m.update("ups", &low, &tx));
        assert!(!m.update("ups", &UpsStatus::default(), &tx));
        let mut got = Vec::new();
        while let Ok(a) = rx.try_recv() {
            got.push((a.code, a.raised));
        }
        assert_eq!(
            got,
            vec![
                ("ups_on_battery".to_string(), true),
                ("ups_battery_low".to_string(), true),
                ("ups_on_battery".to_string(), false),
                ("ups_battery_low".to_string(), false),
            ]
        );
    }
}
