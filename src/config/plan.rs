//! Phase two: the raw site checked and resolved into a [`Plan`] the gateway runs. Every problem
//! is collected (not just the first) and reported at its file:line:col with a fix.

use super::diag::{closest, Diagnostic, Diagnostics, SourceFile};
use super::document::{self, At, Seg};
use super::profile::{DeviceKind, Library, Profile};
use super::site::{Grade, Industry, RawDevice, RawLane, RawSite};
use crate::lane::builtin::Role;
use crate::lane::engine::{DeviceRef, Direction, LaneSpec, Texts};
use crate::lane::machine::{self, parse_duration, Machine};
use crate::path;
use ecogate_drivers::Address;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Enterprise {
    pub name: String,
    pub credit_code: String,
    pub permit_no: String,
    pub industry: Industry,
    pub grade: Grade,
    pub region: String,
}

#[derive(Debug, Clone)]
pub struct Gate {
    pub id: String,
    pub name: String,
    /// Indexes into [`Plan::lanes`].
    pub lanes: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct LanePlan {
    pub spec: LaneSpec,
    pub machine: Arc<Machine>,
    /// Input channel names on the barrier device for its limit switches.
    pub limit_open: DeviceRef,
    pub limit_closed: DeviceRef,
}

#[derive(Debug, Clone)]
pub struct Secret {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DevicePlan {
    pub name: String,
    pub profile_name: String,
    pub profile: Arc<Profile>,
    pub address: Option<Address>,
    pub unit: Option<u8>,
    pub via: Option<String>,
    pub timeout: Duration,
    pub poll: Option<Duration>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Profile `[settings]` with the device's overrides applied.
    pub settings: toml::Table,
}

#[derive(Debug, Clone)]
pub struct MqttPlan {
    pub url: String,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub keep_alive: Duration,
    pub max_inflight: usize,
    /// With `mqtts://`.
    pub tls: Option<MqttTls>,
    /// Publish the JSON topic tree (style `json`).
    pub json: bool,
    /// Run a Sparkplug B edge node (style `sparkplug`).
    pub sparkplug: Option<SparkplugPlan>,
}

/// Sparkplug B naming: `spBv1.0/{group}/…/{node}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkplugPlan {
    pub group: String,
    pub node: String,
}

/// TLS to the broker: the CA to trust, and the client certificate when the broker asks for one.
#[derive(Debug, Clone)]
pub struct MqttTls {
    pub ca_file: PathBuf,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Thresholds of the health alarms (`[health]`).
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPlan {
    pub camera_silent_after: Duration,
    pub scale_stuck_after: Duration,
    pub backlog_alarm: u64,
    pub clock_drift_alarm: Duration,
    pub disk_reserve_days: u32,
}

impl Default for HealthPlan {
    fn default() -> Self {
        HealthPlan {
            camera_silent_after: Duration::from_secs(2 * 3600),
            scale_stuck_after: Duration::from_secs(120),
            backlog_alarm: 500,
            clock_drift_alarm: Duration::from_secs(60),
            disk_reserve_days: 30,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlatformPlan {
    pub name: String,
    pub profile: String,
    pub url: String,
    pub enabled: bool,
    pub username: Option<String>,
    pub password: Option<Secret>,
    // downlink keys
    pub downlink: crate::regulator::downlink::DownlinkPlan,
    // outbox + auth keys (platforms)
    pub secret: Option<Secret>,
    pub outbox: PlatformOutbox,
}

/// The outbox keys of one `[[uplinks.platforms]]` entry; `None` keeps the default of
/// [`crate::regulator::OutboxConfig::new`].
#[derive(Debug, Clone, Default)]
pub struct PlatformOutbox {
    pub window: Option<usize>,
    pub request_timeout: Option<Duration>,
    pub backoff_initial: Option<Duration>,
    pub backoff_max: Option<Duration>,
    pub live_window: Option<Duration>,
    pub photo_url_base: Option<String>,
}

impl PlatformOutbox {
    pub fn apply(&self, c: &mut crate::regulator::OutboxConfig) {
        if let Some(w) = self.window {
            c.window = w;
        }
        if let Some(d) = self.request_timeout {
            c.request_timeout = d;
        }
        if let Some(d) = self.backoff_initial {
            c.backoff_initial = d;
        }
        if let Some(d) = self.backoff_max {
            c.backoff_max = d;
        }
        if let Some(d) = self.live_window {
            c.live_window = d;
        }
        if let Some(u) = &self.photo_url_base {
            c.photo_url_base = Some(u.clone());
        }
    }
}

/// A network cameras may push from (`192.168.10.0/24`, `127.0.0.1/32`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: std::net::IpAddr = a
            .parse()
            .map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`/{p}` is not a prefix length (0–{max})"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Who may push to `/ingest/...`: cameras authenticate apart from the console's users.
#[derive(Debug, Clone, Default)]
pub struct IngestAuth {
    /// Empty: any source address.
    pub allow: Vec<IpNet>,
    pub token: Option<Secret>,
}

/// One reason a guard can pick for a manual release.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReleaseReason {
    pub code: String,
    pub label: String,
    pub solo: bool,
}

/// `[console]`, validated.
#[derive(Debug, Clone)]
pub struct ConsolePlan {
    pub session_ttl: Duration,
    pub release_reasons: Vec<ReleaseReason>,
}

impl Default for ConsolePlan {
    fn default() -> Self {
        ConsolePlan {
            session_ttl: Duration::from_secs(12 * 3600),
            release_reasons: default_release_reasons(),
        }
    }
}

/// The reasons a site gets when `[console]` lists none.
pub fn default_release_reasons() -> Vec<ReleaseReason> {
    [
        ("emergency", "应急车辆", true),
        ("plate_unreadable", "车牌识别失败", false),
        ("system_fault", "系统故障", false),
        ("visitor", "临时来访", false),
        ("other", "其他", false),
    ]
    .into_iter()
    .map(|(code, label, solo)| ReleaseReason {
        code: code.into(),
        label: label.into(),
        solo,
    })
    .collect()
}

/// A validated site, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub site_file: PathBuf,
    pub site_id: String,
    pub enterprise: Enterprise,
    pub gates: Vec<Gate>,
    pub lanes: Vec<LanePlan>,
    pub devices: BTreeMap<String, DevicePlan>,
    pub machines: BTreeMap<String, Arc<Machine>>,
    pub policy: crate::policy::Policy,
    pub data_dir: PathBuf,
    pub retention_months: u32,
    pub http_listen: SocketAddr,
    pub texts: Arc<Texts>,
    pub mqtt: Option<MqttPlan>,
    pub platforms: Vec<PlatformPlan>,
    pub health: HealthPlan,
    pub ingest: IngestAuth,
    pub console: ConsolePlan,
}

impl Plan {
    pub fn lane(&self, id: &str) -> Option<&LanePlan> {
        self.lanes.iter().find(|l| l.spec.id == id)
    }

    /// A short human summary, printed by `ecogate check`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let e = &self.enterprise;
        s.push_str(&format!(
            "site `{}`: {} ({}), grade {}, region {}\n",
            self.site_id,
            e.name,
            e.credit_code,
            e.grade.name(),
            e.region
        ));
        s.push_str(&format!(
            "  {} gate(s), {} lane(s), {} device(s), {} lane machine(s)\n",
            self.gates.len(),
            self.lanes.len(),
            self.devices.len(),
            self.machines.len()
        ));
        for g in &self.gates {
            s.push_str(&format!("  gate {} {}\n", g.id, g.name));
            for &i in &g.lanes {
                let l = &self.lanes[i].spec;
                let mut roles: Vec<_> = l
                    .bindings
                    .iter()
                    .map(|(r, d)| match &d.channel {
                        Some(c) => format!("{r}={}.{c}", d.device),
                        None => format!("{r}={}", d.device),
                    })
                    .collect();
                roles.sort();
                s.push_str(&format!(
                    "    lane {} ({}) machine {} [{}]\n",
                    l.id,
                    l.direction.name(),
                    self.lanes[i].machine.name,
                    roles.join(" ")
                ));
            }
        }
        s.push_str(&format!(
            "  ledger in {} (kept {} months); HTTP on {}",
            self.data_dir.display(),
            self.retention_months,
            self.http_listen
        ));
        if let Some(m) = &self.mqtt {
            s.push_str(&format!("; MQTT {}", m.url));
            if let Some(sp) = &m.sparkplug {
                s.push_str(&format!(" (Sparkplug B {}/{})", sp.group, sp.node));
            }
        }
        if !self.platforms.is_empty() {
            s.push_str(&format!("; {} platform uplink(s)", self.platforms.len()));
        }
        s
    }
}

/// Loads and validates a site file with everything it names.
pub fn load(path: &Path) -> Result<Plan, Diagnostics> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Diagnostics(vec![Diagnostic::file(
            path,
            format!("cannot read the site file: {e}"),
        )
        .help(
            "pass the path of a site TOML file, e.g. --config config/site.example.toml",
        )])
    })?;
    let file = SourceFile::new(path, text);
    let (raw, mut diags): (RawSite, _) =
        document::parse(&file).map_err(|d| Diagnostics(d).sorted())?;
    let plan = Validator {
        file: &file,
        diags: &mut diags,
        lib: Library::for_site(
            path,
            raw.site.profiles_dir.as_deref(),
            raw.site.lanes_dir.as_deref(),
        ),
    }
    .validate(&raw);
    match plan {
        Some(p) if diags.is_empty() => Ok(p),
        _ => Err(Diagnostics(diags).sorted()),
    }
}

struct Validator<'a> {
    file: &'a SourceFile,
    diags: &'a mut Vec<Diagnostic>,
    lib: Library,
}

/// GB 32100-2015 check character of a 统一社会信用代码.
pub fn credit_code_valid(code: &str) -> bool {
    const CHARS: &str = "0123456789ABCDEFGHJKLMNPQRTUWXY";
    const W: [u32; 17] = [
        1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
    ];
    let vals: Option<Vec<u32>> = code
        .chars()
        .map(|c| CHARS.find(c).map(|i| i as u32))
        .collect();
    let Some(vals) = vals else { return false };
    if vals.len() != 18 {
        return false;
    }
    let sum: u32 = vals[..17].iter().zip(W).map(|(v, w)| v * w).sum();
    let check = (31 - sum % 31) % 31;
    vals[17] == check
}

impl Validator<'_> {
    fn err(&mut self, p: &[Seg], at: At, msg: impl Into<String>, help: impl Into<String>) {
        let d = self.file.error_at(p, at, msg).help(help);
        self.diags.push(d);
    }

    fn secret(
        &mut self,
        base: &[Seg],
        env: &Option<String>,
        file: &Option<String>,
    ) -> Option<Secret> {
        if env.is_some() && file.is_some() {
            let mut p = base.to_vec();
            p.push("password_file".into());
            self.err(
                &p,
                At::Key,
                "give the password either by `password_env` or by `password_file`, not both",
                "remove one of them",
            );
        }
        if env.is_none() && file.is_none() {
            return None;
        }
        let base_dir = self.file.path.parent().unwrap_or(Path::new("."));
        Some(Secret {
            env: env.clone(),
            file: file.as_ref().map(|f| base_dir.join(f)),
        })
    }

    fn validate(mut self, raw: &RawSite) -> Option<Plan> {
        let site_id = raw.site.id.clone();
        if site_id.is_empty()
            || !site_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.err(
                &path!["site", "id"],
                At::Value,
                format!("site id `{site_id}` must be non-empty ASCII letters, digits, `-` or `_`"),
                "it is used in MQTT topics and file names, e.g. id = \"anyang-steel-1\"",
            );
        }
        let e = &raw.enterprise;
        if !credit_code_valid(&e.credit_code) {
            self.err(&path!["enterprise", "credit_code"], At::Value,
                format!("`{}` is not a valid 统一社会信用代码", e.credit_code),
                "it has 18 characters (digits and capitals except I, O, S, V, Z) and its last character is a GB 32100 check character; copy it from the business licence");
        }
        if e.permit_no.trim().len() < 18 {
            self.err(&path!["enterprise", "permit_no"], At::Value, "排污许可证编号 is too short", "copy the permit number from the pollutant discharge permit, e.g. 91410100XXXXXXXXXX001P");
        }
        if e.region.len() != 6 || !e.region.chars().all(|c| c.is_ascii_digit()) {
            self.err(
                &path!["enterprise", "region"],
                At::Value,
                format!("region `{}` is not a 6-digit 行政区划代码", e.region),
                "e.g. region = \"410500\" for 安阳市",
            );
        }

        let industry = Industry::from_name(&e.industry).unwrap_or_else(|| {
            let names: Vec<&str> = Industry::ALL.iter().map(|(_, n)| *n).collect();
            self.err(
                &path!["enterprise", "industry"],
                At::Value,
                format!("unknown industry `{}`", e.industry),
                format!("industries: {}", names.join(", ")),
            );
            Industry::Other
        });
        let grade = Grade::from_name(&e.grade).unwrap_or_else(|| {
            self.err(
                &path!["enterprise", "grade"],
                At::Value,
                format!("unknown performance grade `{}`", e.grade),
                "绩效分级 is one of leading, A, B, B-, C, D",
            );
            Grade::D
        });
        let devices = self.devices(raw);
        let machines = self.machines(raw);
        let texts = Arc::new(self.texts(raw));
        let (gates, lanes) = self.gates(raw, &devices, &machines, &texts);
        let gate_ids: Vec<String> = raw.gates.iter().map(|g| g.id.clone()).collect();
        let policy = match raw.policy.compile(self.file, &gate_ids) {
            Ok(p) => Some(p),
            Err(errs) => {
                self.diags.extend(errs);
                None
            }
        };

        let data_dir = {
            let base = self.file.path.parent().unwrap_or(Path::new("."));
            base.join(&raw.storage.data_dir)
        };
        if raw.storage.retention_months < 24 {
            self.err(
                &path!["storage", "retention_months"],
                At::Value,
                format!(
                    "retention of {} months is shorter than the 24 months HJ 1321 requires",
                    raw.storage.retention_months
                ),
                "set retention_months = 24 or more",
            );
        }
        let http_listen = match raw.http.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    &path!["http", "listen"],
                    At::Value,
                    format!("`{}` is not an address:port", raw.http.listen),
                    "write e.g. listen = \"0.0.0.0:8080\"",
                );
                None
            }
        };
        let mqtt = raw.uplinks.mqtt.as_ref().map(|m| self.mqtt(m, &site_id));
        let health = self.health(&raw.health);
        let mut platforms = Vec::new();
        for (i, p) in raw.uplinks.platforms.iter().enumerate() {
            if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
                self.err(
                    &path!["uplinks", "platforms", i, "url"],
                    At::Value,
                    format!("`{}` is not an HTTP URL", p.url),
                    "write the platform's base URL, e.g. https://platform.example.gov.cn/api",
                );
            }
            let loaded =
                crate::regulator::profile::PlatformProfile::load(&self.file.path, &p.profile);
            if let Err(e) = &loaded {
                self.err(
                    &path!["uplinks", "platforms", i, "profile"],
                    At::Value,
                    format!("platform profile `{}`: {e}", p.profile),
                    "name a profile under profiles/platform/ (built in: transport-control), or fix that file; see docs/platforms.md",
                );
            }
            let profile = loaded.as_ref().ok();
            let password = self.secret(
                &path!["uplinks", "platforms", i],
                &p.password_env,
                &p.password_file,
            );
            // outbox + auth keys (platforms)
            let (secret, outbox) = self.platform_outbox(i, p);
            if let Ok(prof) = &loaded {
                self.platform_needs(i, prof, &secret, &outbox);
            }
            platforms.push(PlatformPlan {
                name: p.name.clone(),
                profile: p.profile.clone(),
                url: p.url.clone(),
                enabled: p.enabled,
                username: p.username.clone(),
                password,
                // downlink keys
                downlink: self.downlink(i, p, profile),
                secret,
                outbox,
            });
        }

        // downlink keys: the fallback is the site's, so every checking platform must agree.
        let checking: Vec<(usize, &PlatformPlan)> = platforms
            .iter()
            .enumerate()
            .filter(|(_, p)| p.enabled && p.downlink.check)
            .collect();
        if let Some((_, first)) = checking.first() {
            if let Some((i, other)) = checking
                .iter()
                .find(|(_, p)| p.downlink.fallback != first.downlink.fallback)
            {
                let (i, name, first_name) = (*i, other.name.clone(), first.name.clone());
                self.err(
                    &path!["uplinks", "platforms", i, "fallback"],
                    At::Key,
                    format!("platform `{name}` has another fallback than `{first_name}`"),
                    "the fallback decides when no platform answers, so it is one per site: give every checking platform the same",
                );
            }
        }

        let ingest = self.ingest(raw);
        let console = self.console(raw);
        Some(Plan {
            site_file: self.file.path.clone(),
            site_id,
            enterprise: Enterprise {
                name: e.name.clone(),
                credit_code: e.credit_code.clone(),
                permit_no: e.permit_no.clone(),
                industry,
                grade,
                region: e.region.clone(),
            },
            gates,
            lanes,
            devices,
            machines,
            policy: policy?,
            data_dir,
            retention_months: raw.storage.retention_months,
            http_listen: http_listen?,
            texts,
            mqtt,
            platforms,
            ingest,
            console,
            health,
        })
    }

    // downlink keys
    fn downlink(
        &mut self,
        i: usize,
        p: &crate::config::site::RawPlatform,
        profile: Option<&crate::regulator::profile::PlatformProfile>,
    ) -> crate::regulator::downlink::DownlinkPlan {
        use crate::regulator::downlink::{DownlinkPlan, Fallback};
        use crate::regulator::profile::Protocol;
        let mut d = DownlinkPlan {
            check: p.check,
            ..DownlinkPlan::default()
        };
        let shape = profile.and_then(|pr| pr.downlink.as_ref());
        let protocol = profile.map(|pr| pr.protocol);
        if p.check && profile.is_some() && shape.and_then(|s| s.check.as_ref()).is_none() {
            let message = match protocol {
                Some(Protocol::Hebei) => format!(
                    "platform profile `{}` is of the hebei shape: no vehicle check is described for that shape",
                    p.profile
                ),
                _ => format!("platform profile `{}` has no [downlink.check]", p.profile),
            };
            self.err(
                &path!["uplinks", "platforms", i, "check"],
                At::Value,
                message,
                "use a profile that describes the vehicle check (built in: transport-control, kaifeng), or set check = false",
            );
        }
        if let Some(ms) = p.check_timeout_ms {
            if !(100..=10_000).contains(&ms) {
                self.err(
                    &path!["uplinks", "platforms", i, "check_timeout_ms"],
                    At::Value,
                    format!("check_timeout_ms = {ms} is outside 100..=10000"),
                    "a lane waits this long for the platform before falling back; e.g. check_timeout_ms = 1500",
                );
            }
            d.check_timeout = Duration::from_millis(ms);
        }
        if let Some(secs) = p.check_pause_secs {
            if secs > 3600 {
                self.err(
                    &path!["uplinks", "platforms", i, "check_pause_secs"],
                    At::Value,
                    format!("check_pause_secs = {secs} is outside 0..=3600"),
                    "after 3 unanswered checks the platform is left alone this long; e.g. check_pause_secs = 30, or 0 to always ask",
                );
            }
            d.check_pause = Duration::from_secs(secs);
        }
        if let Some(f) = &p.fallback {
            match Fallback::parse(f) {
                Some(f) => d.fallback = f,
                None => self.err(
                    &path!["uplinks", "platforms", i, "fallback"],
                    At::Value,
                    format!("unknown fallback `{f}`"),
                    format!("one of {}", Fallback::NAMES),
                ),
            }
        }
        for (v, slot) in [
            (p.heartbeat_secs, &mut d.heartbeat),
            (p.policy_poll_secs, &mut d.policy_poll),
        ] {
            match v {
                None => {}
                Some(0) => *slot = None,
                Some(n) => *slot = Some(Duration::from_secs(n)),
            }
        }
        // Heartbeats and policy polls are described for the transportControl shape only.
        if let Some(proto @ (Protocol::Kaifeng | Protocol::Hebei)) = protocol {
            let name = if proto == Protocol::Kaifeng {
                "kaifeng"
            } else {
                "hebei"
            };
            for (key, v) in [
                ("heartbeat_secs", p.heartbeat_secs),
                ("policy_poll_secs", p.policy_poll_secs),
            ] {
                if v.is_some_and(|n| n > 0) {
                    self.err(
                        &path!["uplinks", "platforms", i, key],
                        At::Value,
                        format!("`{key}` is not supported for the {name} shape of profile `{}`: it describes no heartbeat or policy query", p.profile),
                        format!("remove `{key}` (or set it to 0); only transportControl platforms have them"),
                    );
                }
            }
            d.heartbeat = None;
            d.policy_poll = None;
            return d;
        }
        if d.policy_poll.is_some()
            && profile.is_some()
            && !shape.is_some_and(|s| s.policy.is_some() || s.white_list.is_some())
        {
            self.err(
                &path!["uplinks", "platforms", i, "policy_poll_secs"],
                At::Value,
                format!(
                    "platform profile `{}` has no [downlink.policy] or [downlink.white_list]",
                    p.profile
                ),
                "use a profile that describes them, or set policy_poll_secs = 0",
            );
        }
        d
    }

    // outbox + auth keys (platforms)
    fn platform_outbox(
        &mut self,
        i: usize,
        p: &super::site::RawPlatform,
    ) -> (Option<Secret>, PlatformOutbox) {
        if p.secret_env.is_some() && p.secret_file.is_some() {
            self.err(
                &path!["uplinks", "platforms", i, "secret_file"],
                At::Key,
                "give the secret either by `secret_env` or by `secret_file`, not both",
                "remove one of them",
            );
        }
        let secret = if p.secret_env.is_none() && p.secret_file.is_none() {
            None
        } else {
            let base_dir = self.file.path.parent().unwrap_or(Path::new("."));
            Some(Secret {
                env: p.secret_env.clone(),
                file: p.secret_file.as_ref().map(|f| base_dir.join(f)),
            })
        };
        let mut dur = |key: &str, v: &Option<String>| -> Option<Duration> {
            v.as_ref()?;
            let d = self.duration(&path!["uplinks", "platforms", i, key], v, Duration::ZERO);
            (!d.is_zero()).then_some(d)
        };
        let mut o = PlatformOutbox {
            window: None,
            request_timeout: dur("request_timeout", &p.request_timeout),
            backoff_initial: dur("backoff_initial", &p.backoff_initial),
            backoff_max: dur("backoff_max", &p.backoff_max),
            live_window: dur("live_window", &p.live_window),
            photo_url_base: None,
        };
        if let Some(w) = p.window {
            if w == 0 || w > 256 {
                self.err(
                    &path!["uplinks", "platforms", i, "window"],
                    At::Value,
                    format!("window = {w} is outside 1..=256"),
                    "records in flight at once; the default is 16",
                );
            } else {
                o.window = Some(w as usize);
            }
        }
        if let (Some(a), Some(b)) = (o.backoff_initial, o.backoff_max) {
            if a > b {
                self.err(
                    &path!["uplinks", "platforms", i, "backoff_max"],
                    At::Value,
                    "backoff_max is shorter than backoff_initial",
                    "e.g. backoff_initial = \"1s\", backoff_max = \"5m\"",
                );
            }
        }
        if let Some(u) = &p.photo_url_base {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                self.err(
                    &path!["uplinks", "platforms", i, "photo_url_base"],
                    At::Value,
                    format!("`{u}` is not an HTTP URL"),
                    "the URL under which the site publishes its photos as <sha256>.jpg",
                );
            } else {
                o.photo_url_base = Some(u.trim_end_matches('/').to_string());
            }
        }
        (secret, o)
    }

    /// What the platform's profile needs from the site: a secret for header auth and the
    /// hebei Client_secret, a photo URL base for photo encoding `url`.
    fn platform_needs(
        &mut self,
        i: usize,
        prof: &crate::regulator::profile::PlatformProfile,
        secret: &Option<Secret>,
        outbox: &PlatformOutbox,
    ) {
        use crate::regulator::profile::{AuthKind, PhotoEncoding, Protocol};
        let needs_secret = matches!(prof.auth.kind, AuthKind::StaticToken | AuthKind::Signed)
            || prof.protocol == Protocol::Hebei;
        if needs_secret && secret.is_none() {
            self.err(
                &path!["uplinks", "platforms", i, "profile"],
                At::Value,
                format!(
                    "platform profile `{}` authenticates with a secret (auth kind {:?}{}), but none is given",
                    prof.name,
                    prof.auth.kind,
                    if prof.protocol == Protocol::Hebei { ", hebei Client_secret" } else { "" }
                ),
                "add secret_env = \"VAR\" or secret_file = \"path\" to this [[uplinks.platforms]] entry",
            );
        }
        if prof.photo.encoding == PhotoEncoding::Url && outbox.photo_url_base.is_none() {
            self.err(
                &path!["uplinks", "platforms", i, "profile"],
                At::Value,
                format!(
                    "platform profile `{}` sends photos as URLs, but `photo_url_base` is not set",
                    prof.name
                ),
                "add photo_url_base = \"https://…/photos\" (the site publishes its evidence store there as <sha256>.jpg); see docs/platforms.md",
            );
        }
    }

    fn duration(&mut self, p: &[Seg], v: &Option<String>, default: Duration) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.err(
                    p,
                    At::Value,
                    "must be longer than zero",
                    "e.g. 30s, 10m or 2h",
                );
                default
            }
            Err(e) => {
                self.err(p, At::Value, e, "e.g. 30s, 10m or 2h");
                default
            }
        }
    }

    fn mqtt(&mut self, m: &super::site::RawMqtt, site_id: &str) -> MqttPlan {
        let tls = m.url.starts_with("mqtts://");
        if !tls && !m.url.starts_with("mqtt://") {
            self.err(
                &path!["uplinks", "mqtt", "url"],
                At::Value,
                format!("`{}` is not an MQTT URL", m.url),
                "write mqtt://host:1883, or mqtts://host:8883 with ca_file",
            );
        }
        let password = self.secret(&path!["uplinks", "mqtt"], &m.password_env, &m.password_file);
        let keep_alive = self.duration(
            &path!["uplinks", "mqtt", "keep_alive"],
            &m.keep_alive,
            Duration::from_secs(30),
        );
        if keep_alive < Duration::from_secs(1) || keep_alive > Duration::from_secs(65535) {
            self.err(
                &path!["uplinks", "mqtt", "keep_alive"],
                At::Value,
                "keep-alive must be between 1s and 65535s",
                "MQTT counts it in whole seconds, e.g. keep_alive = \"30s\"",
            );
        }
        let max_inflight = m.max_inflight.unwrap_or(100);
        if !(1..=1000).contains(&max_inflight) {
            self.err(
                &path!["uplinks", "mqtt", "max_inflight"],
                At::Value,
                format!("max_inflight = {max_inflight} is outside 1-1000"),
                "100 keeps a LAN broker busy; more only helps over slow links",
            );
        }
        let base_dir = self
            .file
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let file = |v: &Option<String>| v.as_ref().map(|f| base_dir.join(f));
        if m.client_cert.is_some() != m.client_key.is_some() {
            let key = if m.client_cert.is_some() {
                "client_cert"
            } else {
                "client_key"
            };
            self.err(
                &path!["uplinks", "mqtt", key],
                At::Key,
                "client_cert and client_key go together",
                "give both PEM files (the certificate and its private key), or neither",
            );
        }
        let tls = match (tls, &m.ca_file) {
            (true, Some(_)) => Some(MqttTls {
                ca_file: file(&m.ca_file).unwrap_or_default(),
                client_cert: file(&m.client_cert),
                client_key: file(&m.client_key),
            }),
            (true, None) => {
                self.err(
                    &path!["uplinks", "mqtt", "url"],
                    At::Value,
                    "mqtts:// needs `ca_file`, the CA that signed the broker's certificate",
                    "add ca_file = \"/etc/ecogate/mqtt-ca.pem\" to [uplinks.mqtt]",
                );
                None
            }
            (false, _) => {
                for key in ["ca_file", "client_cert", "client_key"] {
                    let set = match key {
                        "ca_file" => m.ca_file.is_some(),
                        "client_cert" => m.client_cert.is_some(),
                        _ => m.client_key.is_some(),
                    };
                    if set {
                        self.err(
                            &path!["uplinks", "mqtt", key],
                            At::Key,
                            format!("`{key}` is only used with an mqtts:// url"),
                            "write the url as mqtts://host:8883, or remove the key",
                        );
                    }
                }
                None
            }
        };
        let (json, sparkplug) = self.mqtt_styles(m, site_id);
        MqttPlan {
            url: m.url.clone(),
            client_id: m.client_id.clone(),
            username: m.username.clone(),
            password,
            keep_alive,
            max_inflight: max_inflight.clamp(1, 1000) as usize,
            tls,
            json,
            sparkplug,
        }
    }

    /// `styles`, `sparkplug_group`, `sparkplug_node`.
    fn mqtt_styles(
        &mut self,
        m: &super::site::RawMqtt,
        site_id: &str,
    ) -> (bool, Option<SparkplugPlan>) {
        let styles = m.styles.clone().unwrap_or_else(|| vec!["json".into()]);
        if styles.is_empty() {
            self.err(
                &path!["uplinks", "mqtt", "styles"],
                At::Value,
                "no MQTT publishing style",
                "write styles = [\"json\"], [\"sparkplug\"] or both, or remove [uplinks.mqtt]",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in styles.iter().enumerate() {
            if s != "json" && s != "sparkplug" {
                self.err(
                    &path!["uplinks", "mqtt", "styles", i],
                    At::Value,
                    format!("unknown MQTT style `{s}`"),
                    "the styles are \"json\" (the ecogate/v1 tree) and \"sparkplug\" (Sparkplug B)",
                );
            } else if !seen.insert(s.as_str()) {
                self.err(
                    &path!["uplinks", "mqtt", "styles", i],
                    At::Value,
                    format!("style `{s}` is listed twice"),
                    "list each style once",
                );
            }
        }
        let json = seen.contains("json");
        if !seen.contains("sparkplug") {
            for (key, set) in [
                ("sparkplug_group", m.sparkplug_group.is_some()),
                ("sparkplug_node", m.sparkplug_node.is_some()),
            ] {
                if set {
                    self.err(
                        &path!["uplinks", "mqtt", key],
                        At::Key,
                        format!("`{key}` is only used with the sparkplug style"),
                        "add \"sparkplug\" to styles, or remove the key",
                    );
                }
            }
            return (json, None);
        }
        let mut id = |key: &str, v: &Option<String>, default: &str| -> String {
            let v = v.clone().unwrap_or_else(|| default.to_string());
            if !crate::uplink::sparkplug::valid_id(&v) {
                self.err(
                    &path!["uplinks", "mqtt", key],
                    At::Value,
                    format!(
                        "Sparkplug id `{v}` is empty or contains `/`, `+`, `#`, a control character or outer spaces"
                    ),
                    "it is a topic level: spBv1.0/{group}/NBIRTH/{node}, e.g. \"plant-a\"",
                );
            }
            v
        };
        let group = id("sparkplug_group", &m.sparkplug_group, "ecogate");
        let node = id("sparkplug_node", &m.sparkplug_node, site_id);
        (json, Some(SparkplugPlan { group, node }))
    }

    fn health(&mut self, h: &super::site::RawHealth) -> HealthPlan {
        let d = HealthPlan::default();
        let plan = HealthPlan {
            camera_silent_after: self.duration(
                &path!["health", "camera_silent_after"],
                &h.camera_silent_after,
                d.camera_silent_after,
            ),
            scale_stuck_after: self.duration(
                &path!["health", "scale_stuck_after"],
                &h.scale_stuck_after,
                d.scale_stuck_after,
            ),
            backlog_alarm: h.backlog_alarm.unwrap_or(d.backlog_alarm),
            clock_drift_alarm: self.duration(
                &path!["health", "clock_drift_alarm"],
                &h.clock_drift_alarm,
                d.clock_drift_alarm,
            ),
            disk_reserve_days: h.disk_reserve_days.unwrap_or(d.disk_reserve_days),
        };
        if plan.backlog_alarm == 0 {
            self.err(
                &path!["health", "backlog_alarm"],
                At::Value,
                "backlog_alarm = 0 would raise the alarm for every pass waiting a moment",
                "give a number of waiting records, e.g. backlog_alarm = 500",
            );
        }
        if plan.clock_drift_alarm < Duration::from_secs(2) {
            self.err(
                &path!["health", "clock_drift_alarm"],
                At::Value,
                "the platform's clock is read from its HTTP Date header (whole seconds), so a threshold under 2s would raise false alarms",
                "e.g. clock_drift_alarm = \"60s\"",
            );
        }
        if plan.disk_reserve_days == 0 {
            self.err(
                &path!["health", "disk_reserve_days"],
                At::Value,
                "disk_reserve_days = 0 would only warn when the disk is already full",
                "e.g. disk_reserve_days = 30",
            );
        }
        plan
    }

    fn ingest(&mut self, raw: &RawSite) -> IngestAuth {
        let mut allow = Vec::new();
        for (i, a) in raw.http.ingest_allow.iter().enumerate() {
            match IpNet::parse(a) {
                Ok(n) => allow.push(n),
                Err(e) => self.err(
                    &path!["http", "ingest_allow", i],
                    At::Value,
                    e,
                    "write a network as address/prefix, e.g. \"192.168.10.0/24\" or \"127.0.0.1/32\"",
                ),
            }
        }
        let (env, file) = (&raw.http.ingest_token_env, &raw.http.ingest_token_file);
        if env.is_some() && file.is_some() {
            self.err(
                &path!["http", "ingest_token_file"],
                At::Key,
                "give the ingest token either by `ingest_token_env` or by `ingest_token_file`, not both",
                "remove one of them",
            );
        }
        let base_dir = self.file.path.parent().unwrap_or(Path::new("."));
        let token = (env.is_some() || file.is_some()).then(|| Secret {
            env: env.clone(),
            file: file.as_ref().map(|f| base_dir.join(f)),
        });
        IngestAuth { allow, token }
    }

    fn console(&mut self, raw: &RawSite) -> ConsolePlan {
        let mut plan = ConsolePlan::default();
        if let Some(t) = &raw.console.session_ttl {
            match parse_duration(t) {
                Ok(d) if d >= Duration::from_secs(1) => plan.session_ttl = d,
                Ok(_) => self.err(
                    &path!["console", "session_ttl"],
                    At::Value,
                    format!("session_ttl `{t}` is shorter than one second"),
                    "write e.g. session_ttl = \"12h\"",
                ),
                Err(e) => self.err(
                    &path!["console", "session_ttl"],
                    At::Value,
                    e,
                    "write e.g. session_ttl = \"12h\"",
                ),
            }
        }
        if let Some(list) = &raw.console.release_reasons {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            for (i, r) in list.iter().enumerate() {
                let code = r.code.trim();
                if code.is_empty()
                    || !code
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    self.err(
                        &path!["console", "release_reasons", i, "code"],
                        At::Value,
                        format!(
                            "release reason code `{}` must be ASCII letters, digits, `_` or `-`",
                            r.code
                        ),
                        "e.g. code = \"emergency\"",
                    );
                } else if !seen.insert(code.to_string()) {
                    self.err(
                        &path!["console", "release_reasons", i, "code"],
                        At::Value,
                        format!("release reason `{code}` is listed twice"),
                        "give every reason its own code",
                    );
                }
                if r.label.trim().is_empty() {
                    self.err(
                        &path!["console", "release_reasons", i, "label"],
                        At::Value,
                        "the label of a release reason is empty",
                        "write the text the guard picks, e.g. label = \"应急车辆\"",
                    );
                }
                out.push(ReleaseReason {
                    code: code.to_string(),
                    label: r.label.trim().to_string(),
                    solo: r.solo,
                });
            }
            if out.is_empty() {
                self.err(
                    &path!["console", "release_reasons"],
                    At::Key,
                    "no release reasons: guards could not request a manual release",
                    "list at least one [[console.release_reasons]], or remove the key for the built-in list",
                );
            }
            plan.release_reasons = out;
        }
        plan
    }

    fn devices(&mut self, raw: &RawSite) -> BTreeMap<String, DevicePlan> {
        let mut out = BTreeMap::new();
        let mut profiles: HashMap<String, Arc<Profile>> = HashMap::new();
        for (name, d) in &raw.devices {
            let p = path!["devices", name].to_vec();
            if let Some(dp) = self.device(name, d, &p, &mut profiles) {
                out.insert(name.clone(), dp);
            }
        }
        // `via` must name a device that exists and can carry the passthrough.
        for (name, d) in &raw.devices {
            if let Some(via) = &d.via {
                let p = path!["devices", name, "via"].to_vec();
                match out.get(via) {
                    None => {
                        let help = closest(via, raw.devices.keys().map(|s| s.as_str()))
                            .map(|s| format!("did you mean `{s}`?"))
                            .unwrap_or_else(|| "name a device defined under [devices]".into());
                        self.err(
                            &p,
                            At::Value,
                            format!("`via` names undefined device `{via}`"),
                            help,
                        );
                    }
                    Some(v) if v.profile.kind != DeviceKind::Camera => {
                        self.err(&p, At::Value, format!("`via` device `{via}` is not a camera (its kind is {}); only a camera's serial passthrough can carry another device", v.profile.kind.name()), "point via at the camera whose RS-485 port the sign is wired to, or give the sign its own address");
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn device(
        &mut self,
        name: &str,
        d: &RawDevice,
        p: &[Seg],
        profiles: &mut HashMap<String, Arc<Profile>>,
    ) -> Option<DevicePlan> {
        let mut pp = p.to_vec();
        pp.push("profile".into());
        let profile = match profiles.get(&d.profile) {
            Some(pr) => Arc::clone(pr),
            None => {
                let Some(found) = self.lib.find_profile(&d.profile) else {
                    let known: Vec<&str> = Library::profile_names().collect();
                    let help = match closest(&d.profile, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "built-in profiles: {}; or add profiles/{}.toml",
                            known.join(", "),
                            d.profile
                        ),
                    };
                    self.err(
                        &pp,
                        At::Value,
                        format!("unknown profile `{}`", d.profile),
                        help,
                    );
                    return None;
                };
                match self.lib.load_profile_usable(&found) {
                    Ok((pr, unknown_keys)) => {
                        self.diags.extend(unknown_keys);
                        let pr = Arc::new(pr);
                        profiles.insert(d.profile.clone(), Arc::clone(&pr));
                        pr
                    }
                    Err(errs) => {
                        self.diags.extend(errs);
                        return None;
                    }
                }
            }
        };
        let mut ap = p.to_vec();
        ap.push("address".into());
        let address = match (&d.address, &d.via) {
            (Some(_), Some(_)) => {
                self.err(&ap, At::Key, format!("device `{name}` has both `address` and `via`"), "a device reached through another device's passthrough has no address of its own; remove one");
                None
            }
            (Some(a), None) => match a.parse::<Address>() {
                Ok(addr) => {
                    if !profile.transports.is_empty()
                        && !profile.transports.iter().any(|t| t == addr.scheme())
                    {
                        self.err(
                            &ap,
                            At::Value,
                            format!("profile `{}` does not speak `{}`", d.profile, addr.scheme()),
                            format!("this device accepts: {}", profile.transports.join(", ")),
                        );
                    }
                    Some(addr)
                }
                Err(e) => {
                    self.err(
                        &ap,
                        At::Value,
                        format!("bad address: {e}"),
                        "see docs/configuration.md#devices for address forms",
                    );
                    None
                }
            },
            (None, None) => {
                if !profile.transports.is_empty() {
                    self.err(
                        p,
                        At::Key,
                        format!("device `{name}` has no `address`"),
                        format!(
                            "add address = \"…\"; profile `{}` accepts {}",
                            d.profile,
                            profile.transports.join(", ")
                        ),
                    );
                }
                None
            }
            (None, Some(_)) => None,
        };
        let dur = |this: &mut Self, key: &str, v: &Option<String>| -> Option<Duration> {
            let v = v.as_ref()?;
            match parse_duration(v) {
                Ok(d) => Some(d),
                Err(msg) => {
                    let mut kp = p.to_vec();
                    kp.push(key.into());
                    this.err(&kp, At::Value, msg, "write e.g. 500ms or 2s");
                    None
                }
            }
        };
        let timeout = dur(self, "timeout", &d.timeout).unwrap_or(Duration::from_millis(1000));
        let poll = dur(self, "poll", &d.poll);
        let password = self.secret(p, &d.password_env, &d.password_file);
        let mut settings = profile.settings.clone();
        for (k, v) in &d.settings {
            settings.insert(k.clone(), v.clone());
        }
        let plan = DevicePlan {
            name: name.to_string(),
            profile_name: d.profile.clone(),
            profile,
            address,
            unit: d.unit,
            via: d.via.clone(),
            timeout,
            poll,
            username: d.username.clone(),
            password,
            settings,
        };
        if !crate::devices::DRIVERS.contains(&plan.profile.driver.as_str()) {
            self.err(
                &pp,
                At::Value,
                format!(
                    "profile `{}` names driver `{}`, which ecogate does not have",
                    d.profile, plan.profile.driver
                ),
                format!("drivers are: {}", crate::devices::DRIVERS.join(", ")),
            );
        } else if let Err(e) = crate::devices::check(&plan) {
            let mut sp = p.to_vec();
            sp.push(
                if d.settings.is_empty() {
                    "profile"
                } else {
                    "settings"
                }
                .into(),
            );
            self.err(
                &sp,
                At::Key,
                format!(
                    "device `{name}`: its settings do not fit driver `{}`: {e}",
                    plan.profile.driver
                ),
                format!(
                    "fix [settings] in {} or [devices.{name}.settings]; see docs/profiles.md",
                    plan.profile.source.display()
                ),
            );
        }
        Some(plan)
    }

    fn machines(&mut self, raw: &RawSite) -> BTreeMap<String, Arc<Machine>> {
        let mut out = BTreeMap::new();
        for (gi, g) in raw.gates.iter().enumerate() {
            for (li, l) in g.lanes.iter().enumerate() {
                if out.contains_key(&l.machine) {
                    continue;
                }
                let Some(found) = self.lib.find_machine(&l.machine) else {
                    let known: Vec<&str> = Library::machine_names().collect();
                    let help = match closest(&l.machine, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!(
                            "built-in machines: {}; or add lanes/{}.toml next to the site file",
                            known.join(", "),
                            l.machine
                        ),
                    };
                    self.err(
                        &path!["gates", gi, "lanes", li, "machine"],
                        At::Value,
                        format!("unknown lane machine `{}`", l.machine),
                        help,
                    );
                    continue;
                };
                match machine::load_usable(&l.machine, &found.file) {
                    Ok((m, unknown_keys)) => {
                        self.diags.extend(unknown_keys);
                        out.insert(l.machine.clone(), Arc::new(m));
                    }
                    Err(errs) => {
                        self.diags.extend(errs);
                        // Remember the failure so other lanes naming it don't repeat the errors.
                        out.insert(
                            l.machine.clone(),
                            Arc::new(Machine {
                                name: String::new(),
                                description: String::new(),
                                initial: 0,
                                states: Vec::new(),
                            }),
                        );
                    }
                }
            }
        }
        out.retain(|_, m| !m.states.is_empty());
        out
    }

    fn texts(&mut self, raw: &RawSite) -> Texts {
        let mut t = default_texts();
        for (k, lines) in &raw.texts.sign {
            if lines.is_empty() || lines.len() > 4 {
                self.err(
                    &path!["texts", "sign", k],
                    At::Value,
                    format!("sign text `{k}` has {} lines", lines.len()),
                    "give 1 to 4 lines, one string per line",
                );
            }
            t.sign.insert(k.clone(), lines.clone());
        }
        for (k, v) in &raw.texts.voice {
            t.voice.insert(k.clone(), v.clone());
        }
        for (k, lines) in &t.sign {
            for l in lines {
                if let Some(bad) = unknown_placeholder(l) {
                    self.err(
                        &path!["texts", "sign", k],
                        At::Value,
                        format!("unknown placeholder `{{{bad}}}` in sign text `{k}`"),
                        format!("placeholders are: {}", PLACEHOLDERS.join(", ")),
                    );
                }
            }
        }
        for (k, v) in &t.voice {
            if let Some(bad) = unknown_placeholder(v) {
                self.err(
                    &path!["texts", "voice", k],
                    At::Value,
                    format!("unknown placeholder `{{{bad}}}` in voice text `{k}`"),
                    format!("placeholders are: {}", PLACEHOLDERS.join(", ")),
                );
            }
        }
        t
    }

    fn device_ref(
        &mut self,
        p: &[Seg],
        v: &str,
        role: Role,
        devices: &BTreeMap<String, DevicePlan>,
        raw: &RawSite,
    ) -> Option<DeviceRef> {
        let (dev, channel) = match v.split_once('.') {
            Some((d, c)) => (d, Some(c.to_string())),
            None => (v, None),
        };
        let Some(d) = devices.get(dev) else {
            if !raw.devices.contains_key(dev) {
                let help = closest(dev, raw.devices.keys().map(|s| s.as_str()))
                    .map(|s| format!("did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("define it under [devices.{dev}]"));
                self.err(
                    p,
                    At::Value,
                    format!("{role} device `{dev}` is not defined"),
                    help,
                );
            }
            return None;
        };
        if let Some(ch) = &channel {
            let (outputs, inputs) = crate::devices::channels(d);
            let (names, what) = if role == Role::Barrier {
                (outputs, "output")
            } else {
                (inputs, "input")
            };
            if !names.is_empty() && !names.contains(ch) {
                let list: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
                let help = match closest(ch, list.iter().copied()) {
                    Some(s) => format!(
                        "did you mean `{dev}.{s}`? {what}s of `{dev}`: {}",
                        list.join(", ")
                    ),
                    None => format!(
                        "{what}s of `{dev}`: {} (from its profile's [settings.{what}s])",
                        list.join(", ")
                    ),
                };
                self.err(
                    p,
                    At::Value,
                    format!("device `{dev}` has no {what} `{ch}`"),
                    help,
                );
            }
        }
        let roles = &d.profile.roles;
        if !roles.iter().any(|r| r == role.name()) {
            self.err(
                p,
                At::Value,
                format!(
                    "device `{dev}` ({} `{}`) cannot serve as {role}",
                    d.profile.kind.name(),
                    d.profile_name
                ),
                format!(
                    "its profile provides: {}; bind a device whose profile lists `{role}` in roles",
                    roles.join(", ")
                ),
            );
        }
        Some(DeviceRef {
            device: dev.to_string(),
            channel,
        })
    }

    fn gates(
        &mut self,
        raw: &RawSite,
        devices: &BTreeMap<String, DevicePlan>,
        machines: &BTreeMap<String, Arc<Machine>>,
        texts: &Arc<Texts>,
    ) -> (Vec<Gate>, Vec<LanePlan>) {
        let mut gates = Vec::new();
        let mut lanes = Vec::new();
        let mut lane_ids: HashMap<String, Vec<Seg>> = HashMap::new();
        let mut gate_ids: HashMap<String, ()> = HashMap::new();
        let mut cameras: HashMap<String, String> = HashMap::new();
        if raw.gates.is_empty() {
            self.err(
                &[],
                At::Key,
                "the site has no gates",
                "add a [[gates]] table with its [[gates.lanes]]",
            );
        }
        for (gi, g) in raw.gates.iter().enumerate() {
            if gate_ids.insert(g.id.clone(), ()).is_some() {
                self.err(
                    &path!["gates", gi, "id"],
                    At::Value,
                    format!("gate id `{}` is used twice", g.id),
                    "出入口编号 must be unique",
                );
            }
            if g.lanes.is_empty() {
                self.err(
                    &path!["gates", gi],
                    At::Key,
                    format!("gate `{}` has no lanes", g.id),
                    "add [[gates.lanes]] tables under it",
                );
            }
            let mut idxs = Vec::new();
            for (li, l) in g.lanes.iter().enumerate() {
                let lp = path!["gates", gi, "lanes", li].to_vec();
                if let Some(prev) = lane_ids.insert(l.id.clone(), lp.clone()) {
                    let (pl, _) = self.file.line_col(self.file.span_of(&prev, At::Key).start);
                    let mut ip = lp.clone();
                    ip.push("id".into());
                    self.err(
                        &ip,
                        At::Value,
                        format!("lane id `{}` is already used (line {pl})", l.id),
                        "lane ids must be unique across the site",
                    );
                }
                if let Some(cam) = &l.camera {
                    let dev = cam.split('.').next().unwrap_or(cam).to_string();
                    if let Some(other) = cameras.insert(dev.clone(), l.id.clone()) {
                        let mut cp = lp.clone();
                        cp.push("camera".into());
                        self.err(
                            &cp,
                            At::Value,
                            format!("camera `{dev}` is already the camera of lane `{other}`"),
                            "a plate read belongs to one lane; give each lane its own camera",
                        );
                    }
                }
                if let Some(plan) = self.lane(raw, &g.id, l, &lp, devices, machines, texts) {
                    idxs.push(lanes.len());
                    lanes.push(plan);
                }
            }
            gates.push(Gate {
                id: g.id.clone(),
                name: g.name.clone(),
                lanes: idxs,
            });
        }
        (gates, lanes)
    }

    #[allow(clippy::too_many_arguments)]
    fn lane(
        &mut self,
        raw: &RawSite,
        gate: &str,
        l: &RawLane,
        lp: &[Seg],
        devices: &BTreeMap<String, DevicePlan>,
        machines: &BTreeMap<String, Arc<Machine>>,
        texts: &Arc<Texts>,
    ) -> Option<LanePlan> {
        let mut bindings = HashMap::new();
        let fields = [
            (Role::Camera, "camera", &l.camera),
            (Role::Barrier, "barrier", &l.barrier),
            (Role::Loop, "loop", &l.loop_),
            (Role::Scale, "scale", &l.scale),
            (Role::Sign, "sign", &l.sign),
            (Role::Voice, "voice", &l.voice),
        ];
        for (role, key, v) in fields {
            if let Some(v) = v {
                let mut p = lp.to_vec();
                p.push(key.into());
                if let Some(r) = self.device_ref(&p, v, role, devices, raw) {
                    bindings.insert(role, r);
                }
            }
        }
        let machine = machines.get(&l.machine).cloned();
        if let Some(m) = &machine {
            let mut mp = lp.to_vec();
            mp.push("machine".into());
            for (role, why) in m.required_roles() {
                let declared = match role {
                    Role::Camera => &l.camera,
                    Role::Barrier => &l.barrier,
                    Role::Loop => &l.loop_,
                    Role::Scale => &l.scale,
                    Role::Sign => &l.sign,
                    Role::Voice => &l.voice,
                };
                if declared.is_none() {
                    self.err(
                        &mp,
                        At::Value,
                        format!(
                            "machine `{}` needs a {role} ({why}) but lane `{}` has none",
                            m.name, l.id
                        ),
                        format!(
                            "add {role} = \"<device>\" to this lane, or use a machine without it"
                        ),
                    );
                }
            }
            let (sign_keys, voice_keys) = m.text_keys();
            for k in sign_keys.iter().filter(|k| !texts.sign.contains_key(*k)) {
                self.err(
                    &mp,
                    At::Value,
                    format!(
                        "machine `{}` shows sign text `{k}`, which is not defined",
                        m.name
                    ),
                    format!("add [texts.sign] {k} = [\"line 1\", \"line 2\"] to the site file"),
                );
            }
            for k in voice_keys.iter().filter(|k| !texts.voice.contains_key(*k)) {
                self.err(
                    &mp,
                    At::Value,
                    format!(
                        "machine `{}` speaks voice text `{k}`, which is not defined",
                        m.name
                    ),
                    format!("add [texts.voice] {k} = \"…\" to the site file"),
                );
            }
        }
        let barrier_dev = bindings.get(&Role::Barrier).map(|r| r.device.clone());
        let limit = |v: &Option<String>, default: &str| -> Option<DeviceRef> {
            match v {
                Some(v) => {
                    let (d, c) = v.split_once('.').unwrap_or((v, default));
                    Some(DeviceRef {
                        device: d.to_string(),
                        channel: Some(c.to_string()),
                    })
                }
                None => barrier_dev.as_ref().map(|d| DeviceRef {
                    device: d.clone(),
                    channel: Some(default.to_string()),
                }),
            }
        };
        for (key, v) in [
            ("limit_open", &l.limit_open),
            ("limit_closed", &l.limit_closed),
        ] {
            if let Some(v) = v {
                let dev = v.split('.').next().unwrap_or(v);
                if !devices.contains_key(dev) && !raw.devices.contains_key(dev) {
                    let mut p = lp.to_vec();
                    p.push(key.into());
                    self.err(
                        &p,
                        At::Value,
                        format!("{key} device `{dev}` is not defined"),
                        "name an IO device and its input, e.g. \"io1.in3\"",
                    );
                }
            }
        }
        let limit_open = limit(&l.limit_open, "limit_open");
        let limit_closed = limit(&l.limit_closed, "limit_closed");
        if let Some(ms) = l.pulse_ms {
            if !(50..=10_000).contains(&ms) {
                let mut p = lp.to_vec();
                p.push("pulse_ms".into());
                self.err(
                    &p,
                    At::Value,
                    format!("pulse_ms = {ms} is outside 50–10000"),
                    "barrier controllers want a 200–1000 ms contact closure",
                );
            }
        }
        let direction = match l.direction.as_str() {
            "in" => Some(Direction::In),
            "out" => Some(Direction::Out),
            other => {
                let mut p = lp.to_vec();
                p.push("direction".into());
                self.err(
                    &p,
                    At::Value,
                    format!("unknown direction `{other}`"),
                    "a lane is direction = \"in\" (进) or \"out\" (出)",
                );
                None
            }
        };
        let machine = machine?;
        let direction = direction?;
        let none = DeviceRef {
            device: String::new(),
            channel: None,
        };
        Some(LanePlan {
            spec: LaneSpec {
                id: l.id.clone(),
                gate: gate.to_string(),
                barrier_no: l.barrier_no.clone().unwrap_or_else(|| l.id.clone()),
                direction,
                bindings,
                texts: Arc::clone(texts),
                default_cargo: l.default_cargo.clone(),
                pulse_ms: l.pulse_ms.unwrap_or(500),
            },
            machine,
            limit_open: limit_open.unwrap_or_else(|| none.clone()),
            limit_closed: limit_closed.unwrap_or(none),
        })
    }
}

pub const PLACEHOLDERS: [&str; 8] = [
    "{plate}", "{color}", "{reason}", "{weight}", "{stage}", "{gate}", "{lane}", "{cargo}",
];

fn unknown_placeholder(s: &str) -> Option<String> {
    let mut rest = s;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        let end = tail.find('}')?;
        let ph = &tail[..=end];
        if !PLACEHOLDERS.contains(&ph) {
            return Some(ph.trim_matches(|c| c == '{' || c == '}').to_string());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// The texts every site starts with; `[texts]` in the site file overrides or adds.
pub fn default_texts() -> Texts {
    let sign = [
        ("idle", vec!["环保门禁", "欢迎光临"]),
        ("allowed", vec!["{plate}", "请通行"]),
        ("denied", vec!["{plate}", "{reason}"]),
        ("weigh", vec!["{plate}", "请上磅称重"]),
        ("weighed", vec!["{plate}", "{weight}kg"]),
        ("declare_cargo", vec!["{plate}", "请申报货物"]),
        ("review", vec!["{plate}", "待人工核验"]),
        ("released", vec!["{plate}", "人工放行"]),
        ("goodbye", vec!["{plate}", "一路平安"]),
        ("fault", vec!["系统故障", "请联系门卫"]),
        ("power_loss", vec!["停电", "请听从指挥"]),
    ];
    let voice = [
        ("allowed", "{plate}，请通行"),
        ("denied", "{plate}，{reason}"),
        ("weigh", "请上磅称重"),
        ("weighed", "称重完成，请通行"),
        ("declare_cargo", "请申报货物"),
        ("review", "请等待人工核验"),
        ("released", "人工放行，请通行"),
        ("goodbye", "一路平安"),
        ("fault", "系统故障，请联系门卫"),
    ];
    Texts {
        sign: sign
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect(),
        voice: voice
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_code_check_character() {
        assert!(credit_code_valid("91350100M000100Y43"));
        assert!(!credit_code_valid("91350100M000100Y44"));
        assert!(!credit_code_valid("91350100M000100Y4"));
        assert!(!credit_code_valid("91350100M000100YI3"));
    }

    #[test]
    fn placeholders() {
        assert_eq!(unknown_placeholder("{plate} ok {weight}"), None);
        assert_eq!(unknown_placeholder("{plat}"), Some("plat".into()));
    }
}
