//! Phase one: the site file as written (`site.toml`). Nothing here is checked beyond TOML
//! types; [`super::plan`] validates it into a [`super::Plan`].

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
pub struct RawSite {
    pub site: RawSiteInfo,
    pub enterprise: RawEnterprise,
    #[serde(default)]
    pub gates: Vec<RawGate>,
    #[serde(default)]
    pub devices: BTreeMap<String, RawDevice>,
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub texts: RawTexts,
    #[serde(default)]
    pub uplinks: RawUplinks,
    #[serde(default)]
    pub console: RawConsole,
    #[serde(default)]
    pub health: RawHealth,
}

/// `[health]`: thresholds of the site's health alarms (docs/configuration.md). Absent keys take
/// the defaults in [`super::plan::HealthPlan`].
#[derive(Debug, Deserialize, Default)]
pub struct RawHealth {
    /// A camera that is online but reads no plate for this long raises `camera_silent`.
    pub camera_silent_after: Option<String>,
    /// A scale whose reading has not changed while its lane is busy for this long raises
    /// `scale_stuck`.
    pub scale_stuck_after: Option<String>,
    /// Records waiting for upload at one platform above this raise `upload_backlog`.
    pub backlog_alarm: Option<u64>,
    /// Difference between the local clock and the platform's above this raises `clock_drift`.
    pub clock_drift_alarm: Option<String>,
    /// Disk space must last at least this many days of measured growth.
    pub disk_reserve_days: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct RawSiteInfo {
    /// Short id used in MQTT topics and file names: letters, digits, `-`, `_`.
    pub id: String,
    /// Where to look for lane machines before the built-in ones (relative to the site file).
    pub lanes_dir: Option<String>,
    /// Where to look for device profiles before the built-in ones (relative to the site file).
    pub profiles_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawEnterprise {
    pub name: String,
    /// 统一社会信用代码 (18 characters, GB 32100 check digit).
    pub credit_code: String,
    /// 排污许可证编号.
    pub permit_no: String,
    /// steel, coking, cement, … (checked in phase two so every error is reported at once).
    pub industry: String,
    /// 绩效分级: leading, A, B, B-, C, D.
    pub grade: String,
    /// 行政区划代码 (6 digits).
    pub region: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Industry {
    Steel,
    Coking,
    Cement,
    Nonferrous,
    ThermalPower,
    Coal,
    Glass,
    Ceramics,
    Refractory,
    Lime,
    Chemical,
    Coating,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grade {
    /// 引领性
    Leading,
    A,
    B,
    BMinus,
    C,
    D,
}

impl Industry {
    pub const ALL: [(Industry, &'static str); 13] = [
        (Industry::Steel, "steel"),
        (Industry::Coking, "coking"),
        (Industry::Cement, "cement"),
        (Industry::Nonferrous, "nonferrous"),
        (Industry::ThermalPower, "thermal_power"),
        (Industry::Coal, "coal"),
        (Industry::Glass, "glass"),
        (Industry::Ceramics, "ceramics"),
        (Industry::Refractory, "refractory"),
        (Industry::Lime, "lime"),
        (Industry::Chemical, "chemical"),
        (Industry::Coating, "coating"),
        (Industry::Other, "other"),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(i, _)| *i == self)
            .map(|(_, n)| *n)
            .unwrap_or("other")
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(i, _)| *i)
    }
}

impl Grade {
    pub const ALL: [Grade; 6] = [
        Grade::Leading,
        Grade::A,
        Grade::B,
        Grade::BMinus,
        Grade::C,
        Grade::D,
    ];

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Grade::Leading => "leading",
            Grade::A => "A",
            Grade::B => "B",
            Grade::BMinus => "B-",
            Grade::C => "C",
            Grade::D => "D",
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RawGate {
    /// 出入口编号.
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub lanes: Vec<RawLane>,
}

#[derive(Debug, Deserialize)]
pub struct RawLane {
    pub id: String,
    /// `in` or `out`.
    pub direction: String,
    pub machine: String,
    /// 道闸编号; defaults to the lane id.
    pub barrier_no: Option<String>,
    pub camera: Option<String>,
    pub barrier: Option<String>,
    #[serde(rename = "loop")]
    pub loop_: Option<String>,
    pub scale: Option<String>,
    pub sign: Option<String>,
    pub voice: Option<String>,
    /// Limit-switch inputs when they are not named `limit_open`/`limit_closed` on the barrier device.
    pub limit_open: Option<String>,
    pub limit_closed: Option<String>,
    pub default_cargo: Option<String>,
    pub pulse_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct RawDevice {
    /// Profile name, e.g. `io/modbus-relay-8ch` (profiles/io/modbus-relay-8ch.toml).
    pub profile: String,
    pub address: Option<String>,
    /// Modbus unit (slave) id.
    pub unit: Option<u8>,
    /// Another device whose passthrough this one is reached through (an LED card behind a
    /// camera's RS-485).
    pub via: Option<String>,
    pub timeout: Option<String>,
    pub poll: Option<String>,
    pub username: Option<String>,
    /// Name of the environment variable holding the password (never the password itself).
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<String>,
    /// Overrides of the profile's `[settings]`.
    #[serde(default)]
    pub settings: toml::Table,
}

#[derive(Debug, Deserialize)]
pub struct RawStorage {
    #[serde(default = "default_data_dir")]
    pub data_dir: String,
    #[serde(default = "default_retention")]
    pub retention_months: u32,
}

fn default_data_dir() -> String {
    "data".into()
}
fn default_retention() -> u32 {
    24
}

impl Default for RawStorage {
    fn default() -> Self {
        RawStorage {
            data_dir: default_data_dir(),
            retention_months: default_retention(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct RawHttp {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Networks (CIDR) cameras may push from, e.g. `["192.168.10.0/24"]`; empty = any.
    #[serde(default)]
    pub ingest_allow: Vec<String>,
    /// Environment variable / file holding the token cameras must send (header
    /// `X-Ingest-Token` or `?token=`).
    pub ingest_token_env: Option<String>,
    pub ingest_token_file: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: default_listen(),
            ingest_allow: Vec::new(),
            ingest_token_env: None,
            ingest_token_file: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct RawTexts {
    #[serde(default)]
    pub sign: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub voice: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawUplinks {
    pub mqtt: Option<RawMqtt>,
    #[serde(default)]
    pub platforms: Vec<RawPlatform>,
}

#[derive(Debug, Deserialize)]
pub struct RawMqtt {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    /// e.g. `30s`; also bounds how long a dead gateway shows online (1.5 × keep-alive).
    pub keep_alive: Option<String>,
    /// Events published and not yet acknowledged, at most.
    pub max_inflight: Option<u32>,
    /// PEM file of the CA that signed the broker's certificate (required with mqtts://).
    pub ca_file: Option<String>,
    /// PEM client certificate and key, for brokers that require client certificates.
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    /// Publishing styles: `json` (the `ecogate/v1/…` tree) and/or `sparkplug` (Sparkplug B on
    /// its own connection); `["json"]` when absent.
    pub styles: Option<Vec<String>>,
    /// Sparkplug group id (`ecogate` when absent).
    pub sparkplug_group: Option<String>,
    /// Sparkplug edge node id (the site id when absent).
    pub sparkplug_node: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawPlatform {
    pub name: String,
    /// Platform protocol profile, e.g. `platform/transport-control`.
    pub profile: String,
    pub url: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    // downlink keys (docs/platforms.md, "Downlink")
    /// Ask this platform about every vehicle before deciding (getCheckVehicle).
    #[serde(default)]
    pub check: bool,
    /// How long a lane waits for the check answer (default 1500).
    pub check_timeout_ms: Option<u64>,
    /// Seconds the platform is not asked after 3 unanswered checks in a row (default 30; 0 =
    /// always ask).
    pub check_pause_secs: Option<u64>,
    /// No usable answer: `registry_then_policy` (default), `registry_then_deny`,
    /// `registry_then_allow`.
    pub fallback: Option<String>,
    /// putdcstatus / gateStatusReport period in seconds (default 60; 0 = off).
    pub heartbeat_secs: Option<u64>,
    /// Control-measure and white-list poll period in seconds (default 0 = off).
    pub policy_poll_secs: Option<u64>,
    // end of downlink keys
    // outbox + auth keys (platforms)
    /// Records in flight at once (each with its photos).
    pub window: Option<u64>,
    /// Longest wait for one HTTP exchange, e.g. `15s`.
    pub request_timeout: Option<String>,
    /// First pause after a failed upload, e.g. `1s`; doubles (jittered) up to `backoff_max`.
    pub backoff_initial: Option<String>,
    pub backoff_max: Option<String>,
    /// Passes younger than this overtake the backlog, e.g. `60s`.
    pub live_window: Option<String>,
    /// The secret of `static_token` / `signed` auth and the hebei `Client_secret`.
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    /// Where the site publishes its evidence store for photo encoding `url`.
    pub photo_url_base: Option<String>,
}

fn yes() -> bool {
    true
}

/// `[console]`: the operator console and its HTTP API.
#[derive(Debug, Deserialize, Default)]
pub struct RawConsole {
    /// Idle time after which a session ends (sliding), e.g. `12h`, `30m`.
    pub session_ttl: Option<String>,
    /// Reasons a guard may give for a manual release; the built-in list when absent.
    pub release_reasons: Option<Vec<RawReleaseReason>>,
}

#[derive(Debug, Deserialize)]
pub struct RawReleaseReason {
    pub code: String,
    pub label: String,
    /// A guard may release alone for this reason (no second person).
    #[serde(default)]
    pub solo: bool,
}
