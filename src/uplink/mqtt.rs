//! MQTT bridge to plant SCADA (topic tree and guarantees: `docs/mqtt.md`).
//!
//! One task owns the rumqttc event loop and does all publishing, so the order in which publish
//! requests enter the client is the order in which their packet ids are assigned: that is how a
//! PUBACK is traced back to a ledger sequence number. Events come from a persisted ledger cursor
//! that advances only over acknowledged events, so a broker or gateway restart resends what was
//! not acknowledged (at-least-once; consumers de-dup by event id).

use crate::alarm::{ActiveAlarm, AlarmBoard};
use crate::config::plan::{MqttPlan, Secret};
use crate::health::UplinkKpis;
use crate::lane::engine::{Input, Release};
use crate::ledger::{EventRecord, Ledger, LedgerReader};
use crate::runtime::{LaneHandle, LaneStatus};
use crate::uplink::cursor::{Cursor, CursorError};
use chrono::{DateTime, Utc};
use ecogate_drivers::DeviceHealth;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Version of the topic tree and payloads; part of every topic (`ecogate/v1/...`).
pub const TOPIC_VERSION: &str = "v1";
/// Name of the cursor file under the data directory.
pub const CURSOR_FILE: &str = "mqtt.cursor";

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT url `{url}`: {reason}")]
    Url { url: String, reason: String },
    #[error("MQTT password: {0}")]
    Secret(String),
    #[error("MQTT TLS file {}: {reason}", path.display())]
    TlsFile { path: PathBuf, reason: String },
    #[error("MQTT topic segment `{0}` is empty or contains `/`, `+` or `#`")]
    Topic(String),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    #[error("reading the ledger for MQTT: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
}

/// Connection settings. `Debug` never shows the password.
#[derive(Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Also the bound on how long a dead gateway shows `online` (the broker fires the will
    /// after 1.5 × keep-alive without traffic).
    pub keep_alive: Duration,
    /// Ledger events published but not yet acknowledged, at most.
    pub max_inflight: usize,
    /// How often the ledger and the lane/device state are checked for changes.
    pub poll_interval: Duration,
    /// Wait before reconnecting after a connection error.
    pub reconnect_delay: Duration,
    /// How often uplink KPIs are read (published when they changed).
    pub kpi_interval: Duration,
    /// `mqtts://`: the CA (PEM) and the optional client certificate and key (PEM), already read.
    pub tls: Option<TlsMaterial>,
}

/// TLS files as read at start. `Debug` shows sizes only (the key is a secret).
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_bytes", &self.ca.len())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the PEM files; each must exist and hold a PEM block.
    pub fn read(ca: &Path, client: Option<(&Path, &Path)>) -> Result<TlsMaterial, MqttError> {
        let pem = |path: &Path| -> Result<Vec<u8>, MqttError> {
            let bytes = std::fs::read(path).map_err(|e| MqttError::TlsFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(MqttError::TlsFile {
                    path: path.to_path_buf(),
                    reason: "not a PEM file (no -----BEGIN line)".into(),
                });
            }
            Ok(bytes)
        };
        Ok(TlsMaterial {
            ca: pem(ca)?,
            client: match client {
                Some((c, k)) => Some((pem(c)?, pem(k)?)),
                None => None,
            },
        })
    }
}

impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("keep_alive", &self.keep_alive)
            .field("max_inflight", &self.max_inflight)
            .field("tls", &self.tls)
            .finish()
    }
}

impl MqttConfig {
    /// Defaults for a broker at `host:port`; the client id is `ecogate-{site}`.
    pub fn new(host: &str, port: u16, site: &str) -> MqttConfig {
        MqttConfig {
            host: host.to_string(),
            port,
            client_id: format!("ecogate-{site}"),
            username: None,
            password: None,
            keep_alive: Duration::from_secs(30),
            max_inflight: 100,
            poll_interval: Duration::from_millis(100),
            reconnect_delay: Duration::from_secs(1),
            kpi_interval: Duration::from_secs(2),
            tls: None,
        }
    }

    /// From the site plan: parses `mqtt://host[:port]` (or `tcp://`) and reads the password
    /// from its env variable or file.
    pub fn from_plan(plan: &MqttPlan, site: &str) -> Result<MqttConfig, MqttError> {
        let (host, port, tls) = parse_url(&plan.url)?;
        let mut c = MqttConfig::new(&host, port, site);
        c.keep_alive = plan.keep_alive;
        c.max_inflight = plan.max_inflight;
        c.tls = match (&plan.tls, tls) {
            (Some(t), true) => {
                let client = match (&t.client_cert, &t.client_key) {
                    (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
                    _ => None,
                };
                Some(TlsMaterial::read(&t.ca_file, client)?)
            }
            (None, true) => {
                return Err(MqttError::Url {
                    url: plan.url.clone(),
                    reason: "mqtts:// needs ca_file".into(),
                })
            }
            (_, false) => None,
        };
        if let Some(id) = plan.client_id.as_ref().filter(|s| !s.is_empty()) {
            c.client_id = id.clone();
        }
        c.username = plan.username.clone();
        c.password = match &plan.password {
            Some(s) => Some(read_secret(s)?),
            None => None,
        };
        Ok(c)
    }
}

/// `(host, port, tls)`.
fn parse_url(url: &str) -> Result<(String, u16, bool), MqttError> {
    let bad = |reason: &str| MqttError::Url {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let (rest, tls) = if let Some(r) = url.strip_prefix("mqtt://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("tcp://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (r, true)
    } else if let Some(r) = url.strip_prefix("ssl://") {
        (r, true)
    } else {
        return Err(bad("expected mqtt://host[:port] or mqtts://host[:port]"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad(
            "expected mqtt://host[:port] (credentials go in username/password)",
        ));
    }
    // `[::1]:1883` style IPv6 literals keep their brackets out of the host.
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, p) = r.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        (h, p.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    let port = match port {
        None if tls => 8883,
        None => 1883,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("port must be 1-65535"))?,
    };
    Ok((host.to_string(), port, tls))
}

fn read_secret(s: &Secret) -> Result<String, MqttError> {
    if let Some(var) = &s.env {
        return std::env::var(var)
            .map_err(|_| MqttError::Secret(format!("environment variable `{var}` is not set")));
    }
    if let Some(path) = &s.file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MqttError::Secret(format!("{}: {e}", path.display())))?;
        return Ok(text.trim_end_matches(['\r', '\n']).to_string());
    }
    Err(MqttError::Secret("neither env nor file is given".into()))
}

/// The topic tree of one site.
#[derive(Debug, Clone)]
pub struct Topics {
    root: String,
}

impl Topics {
    pub fn new(site: &str) -> Result<Topics, MqttError> {
        check_segment(site)?;
        Ok(Topics {
            root: format!("ecogate/{TOPIC_VERSION}/{site}"),
        })
    }
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn status(&self) -> String {
        format!("{}/status", self.root)
    }
    pub fn lane(&self, lane: &str) -> String {
        format!("{}/lanes/{lane}", self.root)
    }
    pub fn device(&self, device: &str) -> String {
        format!("{}/devices/{device}", self.root)
    }
    pub fn ledger_head(&self) -> String {
        format!("{}/ledger/head", self.root)
    }
    pub fn event(&self, kind: &str) -> String {
        format!("{}/events/{kind}", self.root)
    }
    pub fn alarm(&self, source: &str, code: &str) -> String {
        format!("{}/alarms/{source}/{code}", self.root)
    }
    pub fn alarms(&self) -> String {
        format!("{}/alarms/#", self.root)
    }
    pub fn uplink(&self, name: &str) -> String {
        format!("{}/uplinks/{name}", self.root)
    }
    pub fn commands(&self) -> String {
        format!("{}/cmd/#", self.root)
    }
    pub fn command_prefix(&self) -> String {
        format!("{}/cmd/", self.root)
    }
    pub fn response(&self) -> String {
        format!("{}/cmd-response", self.root)
    }
}

fn check_segment(s: &str) -> Result<(), MqttError> {
    if s.is_empty() || s.contains(['/', '+', '#', '\0']) {
        return Err(MqttError::Topic(s.to_string()));
    }
    Ok(())
}

/// `…/status` payload.
#[derive(Debug, Serialize)]
struct SiteStatus<'a> {
    state: &'a str,
    since: Option<DateTime<Utc>>,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

/// `…/events/{kind}` payload.
#[derive(Debug, Serialize)]
struct EventMessage<'a> {
    site: &'a str,
    seq: i64,
    id: &'a str,
    kind: &'a str,
    recorded_at: DateTime<Utc>,
    occurred_at: DateTime<Utc>,
    body: &'a crate::ledger::EventBody,
    photos: &'a [String],
}

/// `…/devices/{name}` payload.
#[derive(Debug, Serialize)]
struct DeviceMessage<'a> {
    device: &'a str,
    #[serde(flatten)]
    health: &'a DeviceHealth,
}

/// `…/cmd/lanes/{lane}/open` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenCommand {
    #[serde(default)]
    operator: String,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    plate: Option<String>,
    /// When SCADA issued the command (RFC 3339). Required: a QoS 1 command queued in the
    /// persistent session while the gateway was away must not lift a barrier minutes later.
    #[serde(default)]
    issued_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[allow(dead_code)] // read separately so even a rejected payload gets its id back
    request_id: Option<serde_json::Value>,
}

/// How old (or how far in the future, for clock skew) a remote open may be when it arrives.
pub const OPEN_MAX_AGE: Duration = Duration::from_secs(30);

/// Refuses an open command issued too long ago (or too far ahead: a wrong SCADA clock).
fn check_fresh(issued: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Result<(), String> {
    let Some(t) = issued else {
        return Err(
            "`issued_at` (RFC 3339, e.g. 2026-12-03T08:15:00Z) is required for a remote open"
                .into(),
        );
    };
    let max = OPEN_MAX_AGE.as_secs() as i64;
    let age = (now - t).num_seconds();
    if age > max {
        return Err(format!(
            "command issued {age} s ago (at {t}); a remote open older than {max} s is not executed"
        ));
    }
    if -age > max {
        return Err(format!(
            "command issued {} s in the future (at {t}); check the SCADA clock",
            -age
        ));
    }
    Ok(())
}

/// `…/cmd/alarms/ack` payload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckCommand {
    source: String,
    code: String,
    #[serde(default)]
    operator: String,
    #[serde(default)]
    note: String,
    #[serde(default)]
    #[allow(dead_code)] // read separately so even a rejected payload gets its id back
    request_id: Option<serde_json::Value>,
}

/// `…/alarms/{source}/{code}` payload.
#[derive(Debug, Serialize)]
struct AlarmMessage<'a> {
    site: &'a str,
    /// `raised` or `cleared` (cleared, waiting for its acknowledgement).
    state: &'a str,
    acknowledged: bool,
    #[serde(flatten)]
    alarm: &'a ActiveAlarm,
}

/// `…/uplinks/{name}` payload.
#[derive(Debug, Serialize)]
struct UplinkMessage<'a> {
    uplink: &'a str,
    #[serde(flatten)]
    kpis: &'a crate::regulator::Kpis,
    completeness: f64,
    backlog_age_s: Option<f64>,
}

/// Optional parts of the tree: the alarm board (and `cmd/alarms/ack`) and the regulator
/// uplinks' KPIs.
#[derive(Clone, Default)]
pub struct BridgeExtras {
    pub alarms: Option<AlarmBoard>,
    pub uplinks: Option<UplinkKpis>,
}

/// An answer computed off the bridge task (an acknowledgement waits for the ledger).
type Reply = (String, Option<serde_json::Value>, Result<String, String>);

/// `…/cmd-response` payload.
#[derive(Debug, Serialize)]
struct Response<'a> {
    request_id: Option<serde_json::Value>,
    command: &'a str,
    ok: bool,
    message: String,
    at: DateTime<Utc>,
}

/// Why a publish request was made: ledger events are tracked to their PUBACK, the rest only
/// needs its packet id accounted for.
#[derive(Debug, Clone, Copy)]
enum Tag {
    Event(i64),
    Other,
}

/// A running bridge. Dropping it aborts the connection without DISCONNECT (the broker then
/// publishes the will: status offline); [`MqttBridge::shutdown`] says goodbye properly.
pub struct MqttBridge {
    task: super::task::StoppableTask,
    cursor_path: PathBuf,
}

impl MqttBridge {
    /// Connects (in the background: a broker that is down is retried, never fatal) and starts
    /// publishing. Fails only on a bad config, topic names or an unreadable cursor/ledger.
    pub async fn start(
        cfg: MqttConfig,
        site: &str,
        ledger: Ledger,
        lanes: Vec<LaneHandle>,
        devices: Vec<(String, watch::Receiver<DeviceHealth>)>,
        data_dir: &Path,
    ) -> Result<MqttBridge, MqttError> {
        Self::start_with(
            cfg,
            site,
            ledger,
            lanes,
            devices,
            data_dir,
            BridgeExtras::default(),
        )
        .await
    }

    /// [`MqttBridge::start`] with alarms and uplink KPIs.
    pub async fn start_with(
        cfg: MqttConfig,
        site: &str,
        ledger: Ledger,
        lanes: Vec<LaneHandle>,
        devices: Vec<(String, watch::Receiver<DeviceHealth>)>,
        data_dir: &Path,
        extras: BridgeExtras,
    ) -> Result<MqttBridge, MqttError> {
        let topics = Topics::new(site)?;
        for l in &lanes {
            check_segment(&l.id)?;
        }
        for (d, _) in &devices {
            check_segment(d)?;
        }
        let cursor_path = data_dir.join(CURSOR_FILE);
        let cursor = Cursor::open(&cursor_path)?;
        let reader = ledger.reader()?;

        let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        opts.set_keep_alive(cfg.keep_alive.max(Duration::from_secs(1)));
        if let Some(t) = &cfg.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: t.ca.clone(),
                alpn: None,
                client_auth: t.client.clone(),
            }));
        }
        opts.set_clean_session(cfg.client_id.is_empty());
        if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
            opts.set_credentials(u.clone(), p.clone());
        } else if let Some(u) = &cfg.username {
            opts.set_credentials(u.clone(), "");
        }
        let max_inflight = cfg.max_inflight.clamp(1, 1000);
        // Room for the state messages on top of the events, so a republish never stalls events.
        let rumq_inflight = u16::try_from(max_inflight + 64).unwrap_or(u16::MAX);
        opts.set_inflight(rumq_inflight);
        let will = serde_json::to_vec(&SiteStatus {
            state: "offline",
            since: None,
            version: env!("CARGO_PKG_VERSION"),
            reason: Some("connection_lost"),
        })
        .unwrap_or_default();
        opts.set_last_will(LastWill::new(topics.status(), will, QoS::AtLeastOnce, true));
        let (client, eventloop) = AsyncClient::new(opts, 4 * usize::from(rumq_inflight));

        let (replies_tx, replies_rx) = mpsc::unbounded_channel();
        let alarm_rx = extras.alarms.as_ref().map(|b| b.subscribe());
        let head_rx = Some(ledger.subscribe_head());
        let mut bridge = Bridge {
            board: extras.alarms,
            alarm_rx,
            alarm_last: BTreeMap::new(),
            uplinks: extras.uplinks,
            kpi_interval: cfg.kpi_interval,
            kpi_last: BTreeMap::new(),
            replies_tx,
            replies_rx: Some(replies_rx),
            head_rx,
            site: site.to_string(),
            topics,
            client,
            ledger,
            reader: Arc::new(Mutex::new(reader)),
            lanes,
            devices,
            cursor,
            max_inflight,
            poll_interval: cfg.poll_interval,
            reconnect_delay: cfg.reconnect_delay,
            connected: false,
            online_since: Utc::now(),
            sent_upto: 0,
            inflight: BTreeSet::new(),
            fifo: VecDeque::new(),
            by_pkid: HashMap::new(),
            collision: None,
            backlog: true,
            last_head: None,
            last_cursor_write: Instant::now(),
        };
        bridge.check_cursor_against_head();
        let task = super::task::StoppableTask::spawn("MQTT bridge", move |stop_rx| async move {
            bridge.run(eventloop, stop_rx).await
        });
        Ok(MqttBridge { task, cursor_path })
    }

    /// Where the cursor (last acknowledged ledger seq) is kept.
    pub fn cursor_path(&self) -> &Path {
        &self.cursor_path
    }

    /// Publishes status offline, disconnects and waits (at most 5 s) for the task to end.
    pub async fn shutdown(self) {
        self.task.shutdown().await
    }
}

struct Bridge {
    board: Option<AlarmBoard>,
    alarm_rx: Option<broadcast::Receiver<crate::alarm::AlarmChange>>,
    /// Alarm topics as last published (retained), with their payloads.
    alarm_last: BTreeMap<String, Vec<u8>>,
    uplinks: Option<UplinkKpis>,
    kpi_interval: Duration,
    /// Uplink topics as last published (payload without its time stamp).
    kpi_last: BTreeMap<String, serde_json::Value>,
    replies_tx: mpsc::UnboundedSender<Reply>,
    replies_rx: Option<mpsc::UnboundedReceiver<Reply>>,
    /// Wakes the bridge on every ledger commit; the tick remains the fallback.
    head_rx: Option<watch::Receiver<crate::ledger::ChainHead>>,
    site: String,
    topics: Topics,
    client: AsyncClient,
    ledger: Ledger,
    reader: Arc<Mutex<LedgerReader>>,
    lanes: Vec<LaneHandle>,
    devices: Vec<(String, watch::Receiver<DeviceHealth>)>,
    cursor: Cursor,
    max_inflight: usize,
    poll_interval: Duration,
    reconnect_delay: Duration,
    connected: bool,
    online_since: DateTime<Utc>,
    /// Highest ledger seq handed to the client in this connection.
    sent_upto: i64,
    /// Event seqs published and not yet acknowledged.
    inflight: BTreeSet<i64>,
    /// Publish requests not yet given a packet id, in the order they were made.
    fifo: VecDeque<Tag>,
    by_pkid: HashMap<u16, Tag>,
    /// A publish rumqttc holds back because its packet id is still in flight.
    collision: Option<(u16, Tag)>,
    /// The last ledger read was full: read again as soon as there is room.
    backlog: bool,
    last_head: Option<crate::ledger::ChainHead>,
    last_cursor_write: Instant,
}

impl Bridge {
    fn check_cursor_against_head(&mut self) {
        let head = self.ledger.head().seq;
        if self.cursor.get() > head {
            // The ledger is behind the cursor (restored from an older copy): events with the
            // seqs in between are new and must not be skipped.
            tracing::warn!(
                cursor = self.cursor.get(),
                head,
                "MQTT cursor is ahead of the ledger; restarting from the ledger head"
            );
            if let Err(e) = self.cursor.store(head) {
                tracing::error!(error = %e, "MQTT cursor not stored");
            }
        }
        self.sent_upto = self.cursor.get();
    }

    async fn run(&mut self, mut eventloop: EventLoop, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut kpi_tick = tokio::time::interval(self.kpi_interval.max(Duration::from_millis(10)));
        kpi_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut head_rx = self.head_rx.take();
        let mut alarm_rx = self.alarm_rx.take();
        let mut replies_rx = self.replies_rx.take();
        loop {
            // One poll future is driven to completion, never dropped half-way: an interrupted
            // poll can leave a publish registered in rumqttc's state but never written, which
            // would hold the cursor until the next reconnect.
            let ev = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    if self.connected {
                        self.pump_events().await;
                    }
                    tokio::select! {
                        ev = &mut poll => break Some(ev),
                        _ = tick.tick() => {
                            self.backlog = true;
                            if self.connected {
                                self.publish_changes();
                            }
                            self.save_cursor(false);
                        }
                        _ = &mut stop => break None,
                        open = head_changed(&mut head_rx) => {
                            if !open {
                                head_rx = None;
                            }
                            self.backlog = true;
                        }
                        open = alarm_changed(&mut alarm_rx) => {
                            if !open {
                                alarm_rx = None;
                            }
                            if self.connected {
                                self.sync_alarms();
                            }
                        }
                        reply = next_reply(&mut replies_rx) => match reply {
                            Some((command, id, result)) => self.respond(&command, id, result),
                            None => replies_rx = None,
                        },
                        _ = kpi_tick.tick() => {
                            if self.connected {
                                self.publish_kpis(false);
                            }
                        }
                    }
                }
            };
            match ev {
                None => {
                    self.goodbye(&mut eventloop).await;
                    return;
                }
                Some(Ok(ev)) => self.on_event(ev),
                Some(Err(e)) => {
                    if self.connected {
                        tracing::warn!(error = %e, "MQTT connection lost");
                    } else {
                        tracing::debug!(error = %e, "MQTT connect failed");
                    }
                    self.reset(&mut eventloop);
                    tokio::select! {
                        _ = tokio::time::sleep(self.reconnect_delay) => {}
                        _ = &mut stop => {
                            self.save_cursor(true);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// After a connection error nothing in flight is trusted: rumqttc's retransmit queue is
    /// dropped (a broker that lost the session would drop it anyway) and events are resent from
    /// the cursor with fresh packet ids, which keeps the packet-id → seq mapping exact.
    fn reset(&mut self, eventloop: &mut EventLoop) {
        self.save_cursor(true);
        eventloop.pending.clear();
        eventloop.state.collision = None;
        self.connected = false;
        self.inflight.clear();
        self.fifo.clear();
        self.by_pkid.clear();
        self.collision = None;
        self.sent_upto = self.cursor.get();
        self.backlog = true;
        // Events rumqttc queued before the error would otherwise be read after the next
        // ConnAck: stale packet ids would then be matched against new publishes. Commands
        // already received (and acknowledged to the broker) are still answered.
        let stale: Vec<Event> = eventloop.state.events.drain(..).collect();
        for ev in stale {
            if let Event::Incoming(Packet::Publish(p)) = ev {
                self.on_publish(&p.topic, p.retain, &p.payload);
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                tracing::info!(session_present = ack.session_present, "MQTT connected");
                self.connected = true;
                self.online_since = Utc::now();
                // Subscriptions may be gone (broker restarted without persistence).
                if let Err(e) = self
                    .client
                    .try_subscribe(self.topics.commands(), QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "MQTT command subscription not queued");
                }
                // The broker hands back the retained alarms it holds, so alarms that ended
                // while this gateway was away (or in its previous run) can be cleared.
                if self.board.is_some() {
                    if let Err(e) = self
                        .client
                        .try_subscribe(self.topics.alarms(), QoS::AtLeastOnce)
                    {
                        tracing::error!(error = %e, "MQTT alarm subscription not queued");
                    }
                }
                self.republish_all();
            }
            Event::Incoming(Packet::PubAck(ack)) => self.on_puback(ack.pkid),
            Event::Incoming(Packet::Publish(p)) => self.on_publish(&p.topic, p.retain, &p.payload),
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = match self.collision {
                    Some((p, tag)) if p == pkid => {
                        self.collision = None;
                        Some(tag)
                    }
                    _ => self.fifo.pop_front(),
                };
                match tag {
                    Some(tag) => {
                        self.by_pkid.insert(pkid, tag);
                    }
                    None => tracing::error!(pkid, "MQTT publish that the bridge did not make"),
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                if let Some(tag) = self.fifo.pop_front() {
                    self.collision = Some((pkid, tag));
                }
            }
            _ => {}
        }
    }

    fn on_puback(&mut self, pkid: u16) {
        if let Some(Tag::Event(seq)) = self.by_pkid.remove(&pkid) {
            self.inflight.remove(&seq);
            self.save_cursor(false);
        }
    }

    /// The highest seq with every event up to it acknowledged.
    fn acked_upto(&self) -> i64 {
        match self.inflight.first() {
            Some(first) => first - 1,
            None => self.sent_upto,
        }
    }

    /// Writes the cursor when it moved; at most every 250 ms unless forced or idle, since a
    /// lagging cursor only costs duplicates.
    fn save_cursor(&mut self, force: bool) {
        let upto = self.acked_upto().max(self.cursor.get());
        if upto == self.cursor.get() {
            return;
        }
        if !force
            && !self.inflight.is_empty()
            && self.last_cursor_write.elapsed() < Duration::from_millis(250)
        {
            return;
        }
        match self.cursor.store(upto) {
            Ok(()) => self.last_cursor_write = Instant::now(),
            Err(e) => tracing::error!(error = %e, "MQTT cursor not stored"),
        }
    }

    /// Publishes ledger events after `sent_upto` while there is room in flight.
    async fn pump_events(&mut self) {
        if !self.backlog || self.inflight.len() * 2 > self.max_inflight {
            return;
        }
        let room = self.max_inflight - self.inflight.len();
        let after = self.sent_upto;
        let reader = Arc::clone(&self.reader);
        let read = tokio::task::spawn_blocking(move || {
            let r = reader
                .lock()
                .map_err(|_| "ledger reader lock poisoned".to_string())?;
            r.events_after(after, room).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let batch = match read {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading the ledger for MQTT failed");
                self.backlog = false;
                return;
            }
        };
        self.backlog = batch.len() == room;
        for rec in &batch {
            if !self.publish_event(rec) {
                self.backlog = true;
                break;
            }
        }
    }

    fn publish_event(&mut self, rec: &EventRecord) -> bool {
        let msg = EventMessage {
            site: &self.site,
            seq: rec.seq,
            id: &rec.id,
            kind: &rec.kind,
            recorded_at: rec.recorded_at,
            occurred_at: rec.occurred_at,
            body: &rec.body,
            photos: &rec.photos,
        };
        let payload = match serde_json::to_vec(&msg) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(seq = rec.seq, error = %e, "ledger event not encodable; skipped");
                self.sent_upto = rec.seq;
                return true;
            }
        };
        if !self.publish(
            self.topics.event(&rec.kind),
            false,
            payload,
            Tag::Event(rec.seq),
        ) {
            return false;
        }
        self.inflight.insert(rec.seq);
        self.sent_upto = rec.seq;
        true
    }

    /// Queues a QoS 1 publish; false if the client queue is full.
    fn publish(&mut self, topic: String, retain: bool, payload: Vec<u8>, tag: Tag) -> bool {
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload)
        {
            Ok(()) => {
                self.fifo.push_back(tag);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "MQTT publish not queued");
                false
            }
        }
    }

    fn publish_json<T: Serialize>(&mut self, topic: String, retain: bool, v: &T) {
        match serde_json::to_vec(v) {
            Ok(p) => {
                self.publish(topic, retain, p, Tag::Other);
            }
            Err(e) => tracing::error!(topic, error = %e, "MQTT payload not encodable"),
        }
    }

    fn republish_all(&mut self) {
        let status = SiteStatus {
            state: "online",
            since: Some(self.online_since),
            version: env!("CARGO_PKG_VERSION"),
            reason: None,
        };
        self.publish_json(self.topics.status(), true, &status);
        for i in 0..self.lanes.len() {
            self.publish_lane(i);
        }
        for i in 0..self.devices.len() {
            self.publish_device(i);
        }
        self.last_head = None;
        self.publish_head();
        // Everything as if never published: the broker may have lost it.
        for v in self.alarm_last.values_mut() {
            v.clear();
        }
        self.sync_alarms();
        self.publish_kpis(true);
    }

    /// Publishes the alarms whose state changed (retained) and an empty retained payload for
    /// those that left the board, which removes them from the broker.
    fn sync_alarms(&mut self) {
        let Some(board) = &self.board else {
            return;
        };
        let mut now = BTreeMap::new();
        for a in board.active() {
            if check_segment(&a.source).is_err() || check_segment(&a.code).is_err() {
                tracing::warn!(source = %a.source, code = %a.code, "alarm not publishable: `/`, `+` or `#` in its name");
                continue;
            }
            let msg = AlarmMessage {
                site: &self.site,
                state: if a.raised { "raised" } else { "cleared" },
                acknowledged: a.acknowledged(),
                alarm: &a,
            };
            match serde_json::to_vec(&msg) {
                Ok(p) => {
                    now.insert(self.topics.alarm(&a.source, &a.code), p);
                }
                Err(e) => tracing::error!(error = %e, "alarm payload not encodable"),
            }
        }
        let old = std::mem::take(&mut self.alarm_last);
        for (topic, payload) in &now {
            if old.get(topic) != Some(payload) {
                self.publish(topic.clone(), true, payload.clone(), Tag::Other);
            }
        }
        for topic in old.keys().filter(|t| !now.contains_key(*t)) {
            self.publish(topic.clone(), true, Vec::new(), Tag::Other);
        }
        self.alarm_last = now;
    }

    /// Uplink KPIs, retained, when they changed since the last publication (or `force`).
    fn publish_kpis(&mut self, force: bool) {
        let Some(source) = &self.uplinks else {
            return;
        };
        let now = Utc::now();
        for (name, kpis) in source() {
            if check_segment(&name).is_err() {
                continue;
            }
            let topic = self.topics.uplink(&name);
            let key = serde_json::to_value(&kpis).unwrap_or_default();
            if !force && self.kpi_last.get(&topic) == Some(&key) {
                continue;
            }
            let msg = UplinkMessage {
                uplink: &name,
                kpis: &kpis,
                completeness: kpis.completeness(),
                backlog_age_s: kpis.backlog_age(now).map(|d| d.as_secs_f64()),
            };
            let mut v = serde_json::to_value(&msg).unwrap_or_default();
            v["at"] = serde_json::json!(now);
            self.publish_json(topic.clone(), true, &v);
            self.kpi_last.insert(topic, key);
        }
    }

    /// A message on a subscribed topic: a command, or a retained alarm left on the broker.
    fn on_publish(&mut self, topic: &str, retain: bool, payload: &[u8]) {
        let alarms_prefix = format!("{}/alarms/", self.topics.root());
        if topic.starts_with(&alarms_prefix) {
            // Our own publications come back too; only a retained alarm this board does not
            // have is stale.
            if retain && !payload.is_empty() && !self.alarm_last.contains_key(topic) {
                tracing::info!(
                    topic,
                    "clearing a retained alarm that is no longer on the board"
                );
                self.publish(topic.to_string(), true, Vec::new(), Tag::Other);
            }
            return;
        }
        self.on_command(topic, retain, payload);
    }

    /// `cmd/alarms/ack`: checked here, acknowledged (a ledger append) off the bridge task; the
    /// answer comes back through `replies`.
    fn start_ack(&mut self, command: &str, request_id: Option<serde_json::Value>, payload: &[u8]) {
        let refuse = |s: &mut Bridge, m: String| s.respond(command, request_id.clone(), Err(m));
        let cmd: AckCommand = match serde_json::from_slice(payload) {
            Ok(c) => c,
            Err(e) => return refuse(self, format!("malformed alarm acknowledge: {e}")),
        };
        if cmd.operator.trim().is_empty() {
            return refuse(
                self,
                "operator identity is required to acknowledge an alarm".into(),
            );
        }
        let Some(board) = self.board.clone() else {
            return refuse(self, "this gateway publishes no alarm board".into());
        };
        let tx = self.replies_tx.clone();
        let command = command.to_string();
        tokio::spawn(async move {
            let r = board
                .acknowledge(&cmd.source, &cmd.code, &cmd.operator, &cmd.note)
                .await
                .map(|a| {
                    format!(
                        "alarm `{}` from `{}` acknowledged by {}",
                        a.code,
                        a.source,
                        cmd.operator.trim()
                    )
                })
                .map_err(|e| e.to_string());
            let _ = tx.send((command, request_id, r));
        });
    }

    fn publish_lane(&mut self, i: usize) {
        let Some(l) = self.lanes.get_mut(i) else {
            return;
        };
        let st: LaneStatus = l.status.borrow_and_update().clone();
        let topic = self.topics.lane(&l.id);
        self.publish_json(topic, true, &st);
    }

    fn publish_device(&mut self, i: usize) {
        let Some((name, rx)) = self.devices.get_mut(i) else {
            return;
        };
        let h = rx.borrow_and_update().clone();
        let name = name.clone();
        let msg = DeviceMessage {
            device: &name,
            health: &h,
        };
        let topic = self.topics.device(&name);
        self.publish_json(topic, true, &msg);
    }

    fn publish_head(&mut self) {
        let head = self.ledger.head();
        if self.last_head == Some(head) {
            return;
        }
        self.last_head = Some(head);
        let v = serde_json::json!({
            "seq": head.seq,
            "hash": head.hash_hex(),
            "at": Utc::now(),
        });
        self.publish_json(self.topics.ledger_head(), true, &v);
    }

    /// State that changed since the last look is published as state (retained), never as an
    /// event.
    fn publish_changes(&mut self) {
        for i in 0..self.lanes.len() {
            if self.lanes[i].status.has_changed().unwrap_or(false) {
                self.publish_lane(i);
            }
        }
        for i in 0..self.devices.len() {
            if self.devices[i].1.has_changed().unwrap_or(false) {
                self.publish_device(i);
            }
        }
        self.publish_head();
    }

    fn respond(
        &mut self,
        command: &str,
        request_id: Option<serde_json::Value>,
        result: Result<String, String>,
    ) {
        let (ok, message) = match result {
            Ok(m) => (true, m),
            Err(m) => {
                tracing::warn!(command, error = %m, "MQTT command refused");
                (false, m)
            }
        };
        let r = Response {
            request_id,
            command,
            ok,
            message,
            at: Utc::now(),
        };
        self.publish_json(self.topics.response(), false, &r);
    }

    fn on_command(&mut self, topic: &str, retain: bool, payload: &[u8]) {
        let Some(command) = topic.strip_prefix(&self.topics.command_prefix()) else {
            return;
        };
        let command = command.to_string();
        let value: Option<serde_json::Value> = if payload.is_empty() {
            None
        } else {
            serde_json::from_slice(payload).ok()
        };
        let request_id = value
            .as_ref()
            .and_then(|v| v.get("request_id"))
            .filter(|v| v.is_string() || v.is_number())
            .cloned();
        // A retained command would replay on every reconnect: an old "open" must never
        // actuate a barrier again.
        if retain {
            if !payload.is_empty() {
                self.respond(
                    &command,
                    request_id,
                    Err("retained commands are refused; publish with retain=false".into()),
                );
            }
            return;
        }
        if command == "alarms/ack" {
            return self.start_ack(&command, request_id, payload);
        }
        let result = self.execute(&command, payload);
        self.respond(&command, request_id, result);
    }

    fn execute(&mut self, command: &str, payload: &[u8]) -> Result<String, String> {
        let parts: Vec<&str> = command.split('/').collect();
        match parts.as_slice() {
            ["republish"] => {
                self.republish_all();
                Ok("state republished".into())
            }
            ["lanes", lane, "open"] => self.remote_open(lane, payload),
            _ => Err(format!("unknown command `{command}`")),
        }
    }

    fn remote_open(&mut self, lane: &str, payload: &[u8]) -> Result<String, String> {
        let cmd: OpenCommand =
            serde_json::from_slice(payload).map_err(|e| format!("malformed open command: {e}"))?;
        let operator = cmd.operator.trim();
        let reason = cmd.reason.trim();
        if operator.is_empty() {
            return Err("operator identity is required for a remote open".into());
        }
        if reason.is_empty() {
            return Err("a reason is required for a remote open".into());
        }
        check_fresh(cmd.issued_at, Utc::now())?;
        let handle = self
            .lanes
            .iter()
            .find(|l| l.id == lane)
            .ok_or_else(|| format!("no lane `{lane}`"))?;
        let release = Release {
            operator: operator.to_string(),
            role: cmd
                .role
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| "scada".into()),
            reason: reason.to_string(),
            remote: true,
            plate: cmd
                .plate
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty()),
            approval: None,
            request: None,
        };
        tracing::info!(lane, operator = %release.operator, reason = %release.reason, "remote open requested over MQTT");
        handle
            .inputs
            .try_send(Input::ManualRelease(release))
            .map_err(|e| match e {
                tokio::sync::mpsc::error::TrySendError::Full(_) => {
                    format!("lane `{lane}` is busy; try again")
                }
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    format!("lane `{lane}` is not running")
                }
            })?;
        Ok(format!(
            "release queued on lane `{lane}`; the lane records it before opening"
        ))
    }

    async fn goodbye(&mut self, eventloop: &mut EventLoop) {
        if self.connected {
            let status = SiteStatus {
                state: "offline",
                since: Some(Utc::now()),
                version: env!("CARGO_PKG_VERSION"),
                reason: Some("shutdown"),
            };
            self.publish_json(self.topics.status(), true, &status);
            let _ = self.client.try_disconnect();
            // Drive the loop until the disconnect went out (or give up after 2 s).
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::PubAck(a))) => self.on_puback(a.pkid),
                        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                            if let Some(t) = self.fifo.pop_front() {
                                self.by_pkid.insert(pkid, t);
                            }
                        }
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        self.save_cursor(true);
    }
}

async fn head_changed(rx: &mut Option<watch::Receiver<crate::ledger::ChainHead>>) -> bool {
    match rx {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn alarm_changed(rx: &mut Option<broadcast::Receiver<crate::alarm::AlarmChange>>) -> bool {
    match rx {
        // Lagged: some changes were missed, but the board is re-read as a whole anyway.
        Some(r) => !matches!(r.recv().await, Err(broadcast::error::RecvError::Closed)),
        None => std::future::pending().await,
    }
}

async fn next_reply(rx: &mut Option<mpsc::UnboundedReceiver<Reply>>) -> Option<Reply> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("mqtt://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884, false)
        );
        assert_eq!(
            parse_url("mqtt://broker").unwrap(),
            ("broker".into(), 1883, false)
        );
        assert_eq!(
            parse_url("tcp://[::1]:9").unwrap(),
            ("::1".into(), 9, false)
        );
        assert_eq!(
            parse_url("mqtts://broker").unwrap(),
            ("broker".into(), 8883, true)
        );
        assert!(parse_url("http://broker").is_err());
        assert!(parse_url("mqtt://broker:0").is_err());
        assert!(parse_url("mqtt://broker:70000").is_err());
        assert!(parse_url("mqtt://u:p@broker").is_err());
        assert!(parse_url("mqtt://").is_err());
    }

    #[test]
    fn topic_segments_are_checked() {
        assert!(Topics::new("a/b").is_err());
        assert!(Topics::new("#").is_err());
        assert!(Topics::new("").is_err());
        assert_eq!(
            Topics::new("s1").unwrap().lane("L1"),
            "ecogate/v1/s1/lanes/L1"
        );
    }

    #[test]
    fn password_is_not_in_debug() {
        let mut c = MqttConfig::new("h", 1, "s");
        c.password = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn secrets_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let s = Secret {
            env: None,
            file: Some(f),
        };
        assert_eq!(read_secret(&s).unwrap(), "s3cret");
        let missing = Secret {
            env: Some("ECOGATE_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert!(read_secret(&missing).is_err());
    }
}
