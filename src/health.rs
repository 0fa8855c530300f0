//! Site health: device-offline and UPS alarms, and the recorder that makes every alarm (lane,
//! device, UPS) a ledger event — alarms are part of what an inspector reviews.

use crate::config::plan::HealthPlan;
use crate::ledger::Ledger;
use crate::runtime::LaneStatus;
use chrono::{DateTime, Utc};
use ecogate_drivers::{DeviceEvent, DeviceHealth, EventKind, Mass, UpsStatus};
use serde::Serialize;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The regulator uplinks' KPIs by destination name, read on demand (health checks, MQTT).
pub type UplinkKpis =
    std::sync::Arc<dyn Fn() -> Vec<(String, crate::regulator::Kpis)> + Send + Sync>;

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

/// What the health checks need to know of the site's traffic: when each camera last read a
/// plate, and what each scale last showed. Fed by the gateway's event router.
#[derive(Clone, Default)]
pub struct Activity {
    inner: Arc<Mutex<ActivityState>>,
}

#[derive(Default)]
struct ActivityState {
    plates: HashMap<String, Instant>,
    scales: HashMap<String, ScaleSeen>,
}

#[derive(Clone, Copy)]
struct ScaleSeen {
    value: Mass,
    /// When the reading last differed from the one before.
    changed_at: Instant,
}

impl Activity {
    pub fn observe(&self, ev: &DeviceEvent) {
        let now = Instant::now();
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match &ev.kind {
            EventKind::Plate(p) if !p.offline_replay => {
                st.plates.insert(ev.device.clone(), now);
            }
            EventKind::Weight { mass, .. } => {
                let e = st.scales.entry(ev.device.clone()).or_insert(ScaleSeen {
                    value: *mass,
                    changed_at: now,
                });
                if e.value != *mass {
                    e.value = *mass;
                    e.changed_at = now;
                }
            }
            _ => {}
        }
    }

    fn last_plate(&self, camera: &str) -> Option<Instant> {
        let st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.plates.get(camera).copied()
    }

    fn scale(&self, scale: &str) -> Option<ScaleSeen> {
        let st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.scales.get(scale).copied()
    }
}

/// A clock to compare the local one with.
pub trait ClockSource: Send + Sync {
    /// Named in the alarm message.
    fn name(&self) -> String;
    /// Reference time minus local time, measured now.
    fn offset(&self)
        -> Pin<Box<dyn Future<Output = Result<chrono::Duration, String>> + Send + '_>>;
}

/// The platform's clock as its web server states it in the HTTP `Date` header (whole seconds,
/// so the measurement is good to about ±1 s plus half the round trip).
pub struct HttpDateClock {
    url: String,
    client: reqwest::Client,
}

impl HttpDateClock {
    pub fn new(url: &str) -> Result<HttpDateClock, String> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpDateClock {
            url: url.to_string(),
            client,
        })
    }
}

impl ClockSource for HttpDateClock {
    fn name(&self) -> String {
        self.url.clone()
    }

    fn offset(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<chrono::Duration, String>> + Send + '_>> {
        Box::pin(async move {
            let t0 = Utc::now();
            let resp = self
                .client
                .head(&self.url)
                .send()
                .await
                .map_err(|e| format!("{}: {e}", self.url))?;
            let t1 = Utc::now();
            let date = resp
                .headers()
                .get(reqwest::header::DATE)
                .ok_or_else(|| format!("{}: no Date header", self.url))?
                .to_str()
                .map_err(|_| format!("{}: Date header is not text", self.url))?
                .to_string();
            let server = DateTime::parse_from_rfc2822(&date)
                .map_err(|e| format!("{}: Date header `{date}`: {e}", self.url))?
                .with_timezone(&Utc);
            // The header is truncated to the second: the server's time was somewhere in the
            // following second, so its middle is the best estimate.
            let server = server + chrono::Duration::milliseconds(500);
            let local = t0 + (t1 - t0) / 2;
            Ok(server - local)
        })
    }
}

/// Free bytes for unprivileged writers on the file system holding `path`.
pub fn available_space(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Bytes the data directory still needs: its growth rate (`used` over `age`, at least a day)
/// times the days it must keep growing before retention starts freeing space, and never fewer
/// than `reserve_days`. Returns (bytes per day, bytes needed).
pub fn disk_needed(used: u64, age: Duration, retention_days: u64, reserve_days: u64) -> (f64, u64) {
    let age_days = (age.as_secs_f64() / 86_400.0).max(1.0);
    let per_day = used as f64 / age_days;
    let remaining = (retention_days as f64 - age_days).max(0.0);
    let days = remaining.max(reserve_days as f64);
    (per_day, (per_day * days).ceil() as u64)
}

/// Total size of the files under `dir` (the ledger database with its WAL, and the photos).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

pub type SpaceProbe = Arc<dyn Fn(&Path) -> std::io::Result<u64> + Send + Sync>;

/// The periodic health checks: `camera_silent`, `scale_stuck`, `upload_backlog`,
/// `clock_drift`, `disk_space` (thresholds from `[health]`).
pub struct HealthChecks {
    pub plan: HealthPlan,
    /// Cameras: name and health (silence only counts while the camera is online).
    pub cameras: Vec<(String, watch::Receiver<DeviceHealth>)>,
    /// Scales with the lanes that weigh on them.
    pub scales: Vec<(String, Vec<watch::Receiver<LaneStatus>>)>,
    pub uplinks: Option<UplinkKpis>,
    /// Each platform's clock, by platform name: a drift is that platform's alarm
    /// (`uplink:<name>`), since it is that platform that judges our pass times.
    pub clocks: Vec<(String, Arc<dyn ClockSource>)>,
    pub ledger: Ledger,
    pub retention_months: u32,
    pub space: SpaceProbe,
    pub every: Duration,
    pub clock_every: Duration,
    pub disk_every: Duration,
}

impl HealthChecks {
    pub fn new(plan: HealthPlan, ledger: Ledger, retention_months: u32) -> HealthChecks {
        HealthChecks {
            plan,
            cameras: Vec::new(),
            scales: Vec::new(),
            uplinks: None,
            clocks: Vec::new(),
            ledger,
            retention_months,
            space: Arc::new(|p: &Path| available_space(p)),
            every: Duration::from_secs(1),
            clock_every: Duration::from_secs(600),
            disk_every: Duration::from_secs(3600),
        }
    }

    /// Starts the checks with a fresh [`Activity`] (returned, for the event router to feed).
    pub fn spawn_with(self, alarms: mpsc::UnboundedSender<Alarm>) -> Activity {
        let activity = Activity::default();
        self.spawn(activity.clone(), alarms);
        activity
    }

    /// Runs the checks until `alarms` is closed.
    pub fn spawn(
        self,
        activity: Activity,
        alarms: mpsc::UnboundedSender<Alarm>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run(activity, alarms).await })
    }

    async fn run(self, activity: Activity, alarms: mpsc::UnboundedSender<Alarm>) {
        let start = Instant::now();
        let mut raised: HashMap<(String, String), bool> = HashMap::new();
        // Sends a raise or clear only when the state changes.
        let mut set = |source: String, code: &str, on: bool, message: String| -> bool {
            let key = (source.clone(), code.to_string());
            let was = raised.get(&key).copied().unwrap_or(false);
            if was == on {
                return true;
            }
            raised.insert(key, on);
            let a = Alarm {
                source,
                code: code.to_string(),
                message,
                raised: on,
                lane: None,
                at: Utc::now(),
            };
            alarms.send(a).is_ok()
        };
        let mut busy_since: HashMap<String, Instant> = HashMap::new();
        let mut stuck: HashMap<String, Instant> = HashMap::new();
        // The first look at the platform's clock waits a little, so it never competes with the
        // uplink's own start (login, backlog).
        let mut next_clock = Instant::now() + self.clock_every / 10;
        let mut next_disk = Instant::now();
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            for (name, health) in &self.cameras {
                let online = health.borrow().online;
                let last = activity.last_plate(name).unwrap_or(start);
                let silent = now.duration_since(last);
                let on = online && silent >= self.plan.camera_silent_after;
                let msg = format!("online but no plate read for {} s", silent.as_secs());
                if !set(format!("device:{name}"), "camera_silent", on, msg) {
                    return;
                }
            }
            for (name, lanes) in &self.scales {
                let busy = lanes.iter().any(|l| l.borrow().plate.is_some());
                let since = if busy {
                    *busy_since.entry(name.clone()).or_insert(now)
                } else {
                    busy_since.remove(name);
                    now
                };
                let Some(seen) = activity.scale(name) else {
                    continue;
                };
                // Stuck: a vehicle has been in the lane for the whole window and the reading
                // has not moved since before it arrived. Clears when the reading changes.
                let on = match stuck.get(name) {
                    Some(changed_at) => seen.changed_at == *changed_at,
                    None => {
                        busy && seen.changed_at <= since
                            && now.duration_since(since) >= self.plan.scale_stuck_after
                    }
                };
                if on {
                    stuck.insert(name.clone(), seen.changed_at);
                } else {
                    stuck.remove(name);
                }
                let msg = format!(
                    "reading {} kg unchanged while the lane is busy",
                    seen.value.grams as f64 / 1000.0
                );
                if !set(format!("device:{name}"), "scale_stuck", on, msg) {
                    return;
                }
            }
            if let Some(src) = &self.uplinks {
                for (name, k) in src() {
                    let on = k.backlog > self.plan.backlog_alarm;
                    let msg = format!(
                        "{} record(s) waiting for upload (alarm above {}), oldest from {}",
                        k.backlog,
                        self.plan.backlog_alarm,
                        k.oldest_pending
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into())
                    );
                    if !set(format!("uplink:{name}"), "upload_backlog", on, msg) {
                        return;
                    }
                }
            }
            if !self.clocks.is_empty() && now >= next_clock {
                next_clock = now + self.clock_every;
                for (platform, clock) in &self.clocks {
                    match clock.offset().await {
                        Ok(off) => {
                            let drift = off.abs().to_std().unwrap_or(Duration::ZERO);
                            let on = drift >= self.plan.clock_drift_alarm;
                            let dir = if off > chrono::Duration::zero() {
                                "behind"
                            } else {
                                "ahead of"
                            };
                            let msg = format!(
                                "local clock {:.1} s {dir} platform `{platform}` ({}, HTTP Date)",
                                drift.as_secs_f64(),
                                clock.name()
                            );
                            if !set(format!("uplink:{platform}"), "clock_drift", on, msg) {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(platform = %platform, error = %e, "platform clock not read")
                        }
                    }
                }
            }
            if now >= next_disk {
                next_disk = now + self.disk_every;
                match self.disk().await {
                    Ok((on, msg)) => {
                        if !set("site".into(), "disk_space", on, msg) {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "disk space not measured"),
                }
            }
        }
    }

    /// (alarm, message) for the data directory.
    async fn disk(&self) -> Result<(bool, String), String> {
        let dir = self.ledger.data_dir().to_path_buf();
        let probe = self.space.clone();
        let ledger = self.ledger.clone();
        let retention_days = u64::from(self.retention_months) * 31;
        let reserve = u64::from(self.plan.disk_reserve_days);
        tokio::task::spawn_blocking(move || {
            let free = probe(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let used = dir_size(&dir);
            let first = ledger
                .reader()
                .and_then(|r| r.events_after(0, 1))
                .map_err(|e| e.to_string())?;
            let age = first
                .first()
                .and_then(|e| (Utc::now() - e.recorded_at).to_std().ok())
                .unwrap_or(Duration::ZERO);
            let (per_day, needed) = disk_needed(used, age, retention_days, reserve);
            let mib = |b: f64| b / (1024.0 * 1024.0);
            Ok((
                free < needed,
                format!(
                    "{:.1} MiB free in {}, {:.1} MiB needed ({:.2} MiB/day of ledger and photos)",
                    mib(free as f64),
                    dir.display(),
                    mib(needed as f64),
                    mib(per_day)
                ),
            ))
        })
        .await
        .map_err(|e| e.to_string())?
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
