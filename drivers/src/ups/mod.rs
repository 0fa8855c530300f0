//! UPS monitoring over Megatec "Q1" (RS-232, 2400 8N1 typically, or through a serial device
//! server).
//!
//! Request `Q1\r`; reply `(MMM.M NNN.N PPP.P QQQ RR.R S.SS TT.T b7b6b5b4b3b2b1b0\r`: input V,
//! input-fault V, output V, load %, input Hz, battery V, temperature °C, then status bits
//! b7 utility fail (on battery), b6 battery low, b5 bypass/boost/buck, b4 UPS failed, b3
//! standby/line-interactive, b2 self-test, b1 shutdown active, b0 beeper. Fields some models
//! leave empty (`---.-`) become `None`, as NUT's blazer driver does.
//!
//! A UPS with only dry contacts (AC fail, battery low) is not handled here: wire the contacts
//! to a Modbus DI module and give the inputs the roles `ups_on_battery` / `ups_battery_low`
//! in that module's profile; they arrive as `EventKind::Input`.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::address::Address;
use crate::command::Command;
use crate::event::{DeviceEvent, EventKind, UpsStatus};
use crate::health::DeviceHandle;
use crate::stream::{self, BoxStream, DriverError, HealthReporter, LinkSettings};

pub const DRIVER: &str = "ups-megatec";
pub const Q1_REQUEST: &[u8] = b"Q1\r";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Q1Flags {
    pub utility_fail: bool,
    pub battery_low: bool,
    pub bypass_active: bool,
    pub ups_failed: bool,
    pub standby_type: bool,
    pub test_running: bool,
    pub shutdown_active: bool,
    pub beeper_on: bool,
}

impl Q1Flags {
    fn bits(&self) -> [bool; 8] {
        [
            self.utility_fail,
            self.battery_low,
            self.bypass_active,
            self.ups_failed,
            self.standby_type,
            self.test_running,
            self.shutdown_active,
            self.beeper_on,
        ]
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Q1Reply {
    pub input_voltage: Option<f32>,
    pub input_fault_voltage: Option<f32>,
    pub output_voltage: Option<f32>,
    pub load_percent: Option<f32>,
    pub frequency_hz: Option<f32>,
    pub battery_voltage: Option<f32>,
    pub temperature_c: Option<f32>,
    pub flags: Q1Flags,
}

impl Q1Reply {
    pub fn to_status(&self) -> UpsStatus {
        UpsStatus {
            on_battery: self.flags.utility_fail,
            battery_low: self.flags.battery_low,
            load_percent: self.load_percent,
            input_voltage: self.input_voltage,
            output_voltage: self.output_voltage,
            battery_voltage: self.battery_voltage,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Q1Error {
    #[error("Q1 reply does not start with `(`: {0:?}")]
    NoParen(String),
    #[error("Q1 reply has {0} fields, expected 8: {1:?}")]
    FieldCount(usize, String),
    #[error("Q1 status `{0}` is not 8 characters of 0/1")]
    Status(String),
}

/// Parses one reply line (with or without the trailing CR).
pub fn parse_q1(line: &[u8]) -> Result<Q1Reply, Q1Error> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    let body = text
        .strip_prefix('(')
        .ok_or_else(|| Q1Error::NoParen(text.to_string()))?;
    let fields: Vec<&str> = body.split_whitespace().collect();
    if fields.len() != 8 {
        return Err(Q1Error::FieldCount(fields.len(), text.to_string()));
    }
    let status = fields[7];
    if status.len() != 8 || !status.bytes().all(|b| b == b'0' || b == b'1') {
        return Err(Q1Error::Status(status.to_string()));
    }
    let bit = |i: usize| status.as_bytes()[i] == b'1';
    // Non-numeric fields (`---.-`, `NA`) mean "not measured", not a broken reply.
    let num = |i: usize| fields[i].parse::<f32>().ok().filter(|v| v.is_finite());
    Ok(Q1Reply {
        input_voltage: num(0),
        input_fault_voltage: num(1),
        output_voltage: num(2),
        load_percent: num(3),
        frequency_hz: num(4),
        battery_voltage: num(5),
        temperature_c: num(6),
        flags: Q1Flags {
            utility_fail: bit(0),
            battery_low: bit(1),
            bypass_active: bit(2),
            ups_failed: bit(3),
            standby_type: bit(4),
            test_running: bit(5),
            shutdown_active: bit(6),
            beeper_on: bit(7),
        },
    })
}

/// The reply line a UPS would send for `r` (simulator).
pub fn encode_q1(r: &Q1Reply) -> Vec<u8> {
    fn f(v: Option<f32>, width: usize, decimals: usize) -> String {
        match v {
            Some(v) => format!("{v:0width$.decimals$}"),
            None => {
                let mut s = "-".repeat(width - decimals - 1);
                if decimals > 0 {
                    s.push('.');
                    s.push_str(&"-".repeat(decimals));
                } else {
                    s.push('-');
                }
                s
            }
        }
    }
    let bits: String = r
        .flags
        .bits()
        .iter()
        .map(|b| if *b { '1' } else { '0' })
        .collect();
    format!(
        "({} {} {} {} {} {} {} {}\r",
        f(r.input_voltage, 5, 1),
        f(r.input_fault_voltage, 5, 1),
        f(r.output_voltage, 5, 1),
        f(r.load_percent, 3, 0),
        f(r.frequency_hz, 4, 1),
        f(r.battery_voltage, 4, 2),
        f(r.temperature_c, 4, 1),
        bits
    )
    .into_bytes()
}

/// `[settings]` of a UPS profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UpsSettings {
    pub poll_interval_ms: u64,
    pub reply_timeout_ms: u64,
    /// Consecutive polls with utility fail before on-battery is reported (ignores short
    /// transfers). Return to mains is reported at once.
    pub on_battery_polls: u32,
    /// Consecutive polls with battery low before it is reported.
    pub battery_low_polls: u32,
    /// Missed replies in a row before the UPS is reported offline.
    pub offline_after_polls: u32,
    /// Send the full status at least this often even when nothing changed (0 = only changes).
    pub report_every_ms: u64,
    #[serde(flatten)]
    pub link: LinkSettings,
}

impl Default for UpsSettings {
    fn default() -> Self {
        UpsSettings {
            poll_interval_ms: 5000,
            reply_timeout_ms: 1500,
            on_battery_polls: 2,
            battery_low_polls: 1,
            offline_after_polls: 3,
            report_every_ms: 60_000,
            link: LinkSettings::default(),
        }
    }
}

impl UpsSettings {
    pub fn from_toml(v: &toml::Value) -> Result<Self, DriverError> {
        stream::settings_from_toml(v)
    }
}

/// Turns raw polls into the reported on-battery / battery-low states.
#[derive(Debug, Clone, Default)]
pub struct Debounce {
    on_battery_streak: u32,
    low_streak: u32,
    pub on_battery: bool,
    pub battery_low: bool,
}

impl Debounce {
    /// Feeds one successful poll; returns the status to report.
    pub fn push(&mut self, s: &UpsSettings, raw: &Q1Reply) -> UpsStatus {
        self.on_battery_streak = if raw.flags.utility_fail {
            self.on_battery_streak.saturating_add(1)
        } else {
            0
        };
        self.low_streak = if raw.flags.battery_low {
            self.low_streak.saturating_add(1)
        } else {
            0
        };
        self.on_battery = self.on_battery_streak >= s.on_battery_polls.max(1);
        self.battery_low = self.low_streak >= s.battery_low_polls.max(1);
        UpsStatus {
            on_battery: self.on_battery,
            battery_low: self.battery_low,
            ..raw.to_status()
        }
    }
}

/// Starts the UPS poller. Needs a Tokio runtime; ends when the command senders are dropped.
pub fn spawn(
    name: &str,
    address: &Address,
    settings: &UpsSettings,
    events: mpsc::Sender<DeviceEvent>,
) -> Result<DeviceHandle, DriverError> {
    stream::check_address(DRIVER, address, false)?;
    let (tx, rx) = mpsc::channel(4);
    let (health, health_rx) = HealthReporter::new();
    let task = UpsTask {
        name: name.to_string(),
        address: address.clone(),
        s: settings.clone(),
        events,
        health,
        debounce: Debounce::default(),
        missed: 0,
        last_report: None,
    };
    tokio::spawn(task.run(rx));
    Ok(DeviceHandle {
        name: name.to_string(),
        commands: tx,
        health: health_rx,
    })
}

struct UpsTask {
    name: String,
    address: Address,
    s: UpsSettings,
    events: mpsc::Sender<DeviceEvent>,
    health: HealthReporter,
    debounce: Debounce,
    missed: u32,
    last_report: Option<(Instant, bool, bool)>,
}

impl UpsTask {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut backoff = self.s.link.backoff();
        let mut conn: Option<BoxStream> = None;
        let period = Duration::from_millis(self.s.poll_interval_ms.max(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry_at: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                c = commands.recv() => match c {
                    None => return,
                    Some(c) => { warn!(device = %self.name, command = c.name(), "UPS takes no commands; ignored"); continue; }
                },
            }
            if conn.is_none() && retry_at.is_none_or_past() {
                match stream::connect(DRIVER, &self.address, self.s.link.connect_timeout()).await {
                    Ok(c) => {
                        info!(device = %self.name, address = %self.address, "UPS connected");
                        conn = Some(c);
                        retry_at = None;
                    }
                    Err(e) => {
                        retry_at = Some(Instant::now() + backoff.next_delay());
                        if !self.missed_poll(&e.to_string()).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else {
                if !self.missed_poll("reconnect back-off").await {
                    return;
                }
                continue;
            };
            let started = Instant::now();
            match poll(c, Duration::from_millis(self.s.reply_timeout_ms.max(1))).await {
                Ok(reply) => {
                    backoff.reset();
                    self.missed = 0;
                    if self.health.seen(Some(started.elapsed()))
                        && !stream::send_link(&self.events, &self.name, true, None).await
                    {
                        return;
                    }
                    if !self.report(&reply).await {
                        return;
                    }
                }
                Err(e) => {
                    // After a timeout a late reply may still arrive; reading it as the answer to
                    // the next poll would be wrong, so the connection is reopened.
                    conn = None;
                    if !self.missed_poll(&e.to_string()).await {
                        return;
                    }
                }
            }
        }
    }

    async fn missed_poll(&mut self, why: &str) -> bool {
        self.missed = self.missed.saturating_add(1);
        debug!(device = %self.name, missed = self.missed, error = %why, "UPS poll failed");
        if self.missed >= self.s.offline_after_polls.max(1) {
            if self.health.offline(why) {
                warn!(device = %self.name, error = %why, "UPS offline");
                return stream::send_link(&self.events, &self.name, false, Some(why.to_string()))
                    .await;
            }
        } else {
            self.health.error(why);
        }
        true
    }

    async fn report(&mut self, reply: &Q1Reply) -> bool {
        let status = self.debounce.push(&self.s, reply);
        let now = Instant::now();
        let due = match self.last_report {
            None => true,
            Some((t, ob, low)) => {
                ob != status.on_battery
                    || low != status.battery_low
                    || (self.s.report_every_ms > 0
                        && now - t >= Duration::from_millis(self.s.report_every_ms))
            }
        };
        if !due {
            return true;
        }
        if let Some((_, ob, _)) = self.last_report {
            if ob != status.on_battery {
                info!(device = %self.name, on_battery = status.on_battery, "UPS power source changed");
            }
        }
        self.last_report = Some((now, status.on_battery, status.battery_low));
        stream::send_event(&self.events, &self.name, EventKind::Ups(status)).await
    }
}

trait PastExt {
    fn is_none_or_past(&self) -> bool;
}

impl PastExt for Option<Instant> {
    fn is_none_or_past(&self) -> bool {
        match self {
            None => true,
            Some(t) => Instant::now() >= *t,
        }
    }
}

/// One Q1 exchange: write the request, read to CR, parse. Bytes before the last `(` on the line
/// (line noise, a stale echo) are ignored.
async fn poll(conn: &mut BoxStream, timeout: Duration) -> Result<Q1Reply, DriverError> {
    tokio::time::timeout(timeout, async {
        conn.write_all(Q1_REQUEST).await?;
        conn.flush().await?;
        let mut line = Vec::with_capacity(64);
        let mut buf = [0u8; 128];
        loop {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                return Err(DriverError::Closed);
            }
            for &b in &buf[..n] {
                if b == b'\r' {
                    let start = line.iter().rposition(|&c| c == b'(').unwrap_or(0);
                    return parse_q1(&line[start..]).map_err(|e| DriverError::Reply(e.to_string()));
                }
                line.push(b);
                if line.len() > 256 {
                    line.drain(..128);
                }
            }
        }
    })
    .await
    .map_err(|_| DriverError::Timeout {
        what: "Q1 reply",
        after: timeout,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_reply() {
        let r = parse_q1(b"(226.0 195.0 226.0 014 49.0 27.5 30.0 00001000\r").unwrap();
        assert_eq!(r.input_voltage, Some(226.0));
        assert_eq!(r.load_percent, Some(14.0));
        assert_eq!(r.battery_voltage, Some(27.5));
        assert!(r.flags.standby_type);
        assert!(!r.flags.utility_fail);
        let s = r.to_status();
        assert!(!s.on_battery && !s.battery_low);
    }

    #[test]
    fn dashes_are_none_and_bits_map() {
        let r = parse_q1(b"(---.- 195.0 226.0 014 ---.- 2.27 ---.- 11000000").unwrap();
        assert_eq!(r.input_voltage, None);
        assert_eq!(r.frequency_hz, None);
        assert_eq!(r.battery_voltage, Some(2.27));
        assert!(r.flags.utility_fail && r.flags.battery_low);
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(matches!(parse_q1(b"Q1\r"), Err(Q1Error::NoParen(_))));
        assert!(matches!(
            parse_q1(b"(226.0 195.0 00001000"),
            Err(Q1Error::FieldCount(3, _))
        ));
        assert!(matches!(
            parse_q1(b"(226.0 195.0 226.0 014 49.0 27.5 30.0 0000100"),
            Err(Q1Error::Status(_))
        ));
        assert!(parse_q1(b"(ACK").is_err());
    }

    #[test]
    fn encode_round_trips() {
        let r = Q1Reply {
            input_voltage: Some(226.0),
            input_fault_voltage: Some(195.0),
            output_voltage: None,
            load_percent: Some(14.0),
            frequency_hz: Some(49.9),
            battery_voltage: Some(2.25),
            temperature_c: Some(30.0),
            flags: Q1Flags {
                utility_fail: true,
                beeper_on: true,
                ..Default::default()
            },
        };
        let line = encode_q1(&r);
        assert_eq!(parse_q1(&line).unwrap(), r);
        let txt = String::from_utf8(line).unwrap();
        assert!(
            txt.contains("---.-") && txt.ends_with("10000001\r"),
            "{txt}"
        );
    }

    #[test]
    fn on_battery_is_debounced_and_mains_return_is_immediate() {
        let s = UpsSettings {
            on_battery_polls: 3,
            ..Default::default()
        };
        let mut d = Debounce::default();
        let mut ob = Q1Reply::default();
        ob.flags.utility_fail = true;
        let seen: Vec<bool> = [true, true, true, true, false, true]
            .iter()
            .map(|&on| {
                let r = if on { ob.clone() } else { Q1Reply::default() };
                d.push(&s, &r).on_battery
            })
            .collect();
        assert_eq!(seen, [false, false, true, true, false, false]);
    }
}
