//! Sparkplug B edge node: the site's live state as Eclipse Sparkplug B 3.0 births, data and
//! deaths (`spBv1.0/{group}/…/{node}[/{device}]`, protobuf payloads), next to the JSON topic tree
//! of [`super::mqtt`]. Topics, metrics and the bdSeq handling: `docs/mqtt.md`.
//!
//! Sparkplug is state, not the event log: messages are QoS 0 on a clean session, and whatever a
//! connection loses is made good by the births after the next connect. Passes, weighings and
//! alarm history stay on the JSON tree, which delivers them at least once from the ledger.
//!
//! The edge node has its own MQTT connection because its Will (the NDEATH with this connection's
//! bdSeq) and its session rules differ from the JSON bridge's.

pub mod metrics;
pub mod proto;

use crate::alarm::AlarmBoard;
use crate::config::plan::MqttPlan;
use crate::health::UplinkKpis;
use crate::ledger::Ledger;
use crate::runtime::LaneHandle;
use crate::uplink::mqtt::{MqttConfig, MqttError};
use chrono::Utc;
use ecogate_drivers::DeviceHealth;
use metrics::{NodeFacts, Point};
use prost::Message as _;
use proto::{DataType, Metric, MetricValue, Payload};
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
/// Name of the file under the data directory that keeps the last bdSeq used.
pub const BDSEQ_FILE: &str = "sparkplug.bdseq";
/// The node metric a host sets to true (in an NCMD) to ask for new births.
pub const REBIRTH: &str = "Node Control/Rebirth";
/// Appended to the JSON bridge's client id: two connections may not share one id.
pub const CLIENT_ID_SUFFIX: &str = "-spb";

#[derive(Debug, thiserror::Error)]
pub enum SparkplugError {
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    #[error(
        "Sparkplug {what} `{value}` is empty or contains `/`, `+`, `#` or a control character"
    )]
    Id { what: &'static str, value: String },
    #[error("bdSeq file {}: {reason}", path.display())]
    BdSeq { path: PathBuf, reason: String },
}

/// Connection and naming of the edge node.
#[derive(Debug, Clone)]
pub struct SparkplugConfig {
    /// Broker, credentials, TLS, keep-alive, reconnect delay and poll interval; the client id is
    /// used as is.
    pub mqtt: MqttConfig,
    pub group: String,
    pub node: String,
}

impl SparkplugConfig {
    /// From the site plan, when `styles` includes `sparkplug`: the JSON bridge's connection
    /// settings with the client id suffixed by [`CLIENT_ID_SUFFIX`].
    pub fn from_plan(
        plan: &MqttPlan,
        site: &str,
    ) -> Result<Option<SparkplugConfig>, SparkplugError> {
        let Some(sp) = &plan.sparkplug else {
            return Ok(None);
        };
        let mut mqtt = MqttConfig::from_plan(plan, site)?;
        mqtt.client_id.push_str(CLIENT_ID_SUFFIX);
        Ok(Some(SparkplugConfig {
            mqtt,
            group: sp.group.clone(),
            node: sp.node.clone(),
        }))
    }
}

/// True for a valid group, edge node or device id: not empty, none of `/ + #`, no control
/// characters or spaces at either end.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(['/', '+', '#'])
        && !s.chars().any(char::is_control)
        && s.trim() == s
}

/// A lane id or device name made fit for a topic level: `/ + #` and control characters become
/// `_`.
pub fn sanitize(s: &str) -> String {
    let t: String = s
        .trim()
        .chars()
        .map(|c| {
            if matches!(c, '/' | '+' | '#') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if t.is_empty() {
        "_".into()
    } else {
        t
    }
}

/// The Sparkplug topics of one edge node.
#[derive(Debug, Clone)]
pub struct Topics {
    group: String,
    node: String,
}

impl Topics {
    pub fn new(group: &str, node: &str) -> Result<Topics, SparkplugError> {
        if !valid_id(group) {
            return Err(SparkplugError::Id {
                what: "group id",
                value: group.into(),
            });
        }
        if !valid_id(node) {
            return Err(SparkplugError::Id {
                what: "edge node id",
                value: node.into(),
            });
        }
        Ok(Topics {
            group: group.into(),
            node: node.into(),
        })
    }
    /// `spBv1.0/{group}/{kind}/{node}` (NBIRTH, NDEATH, NDATA, NCMD).
    pub fn node(&self, kind: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}", self.group, self.node)
    }
    /// `spBv1.0/{group}/{kind}/{node}/{device}` (DBIRTH, DDEATH, DDATA, DCMD).
    pub fn device(&self, kind: &str, device: &str) -> String {
        format!("{NAMESPACE}/{}/{kind}/{}/{device}", self.group, self.node)
    }
}

/// Where the edge node reads the site's state; absent parts are simply not reported.
#[derive(Clone, Default)]
pub struct Sources {
    pub lanes: Vec<LaneHandle>,
    pub devices: Vec<(String, watch::Receiver<DeviceHealth>)>,
    pub ledger: Option<Ledger>,
    pub alarms: Option<AlarmBoard>,
    pub uplinks: Option<UplinkKpis>,
}

/// The persisted bdSeq: the value in the Will of the latest CONNECT. Written (write, fsync,
/// rename) before the CONNECT that uses it, so a crash never lets two sessions share a bdSeq.
#[derive(Debug)]
struct BdSeqStore {
    path: PathBuf,
}

impl BdSeqStore {
    /// The last bdSeq used, or None when this node never connected from this data directory.
    fn load(&self) -> Result<Option<u8>, SparkplugError> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => t
                .trim()
                .parse::<u8>()
                .map(Some)
                .map_err(|_| SparkplugError::BdSeq {
                    path: self.path.clone(),
                    reason: format!(
                        "`{}` is not a bdSeq (0-255)",
                        t.trim().chars().take(20).collect::<String>()
                    ),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SparkplugError::BdSeq {
                path: self.path.clone(),
                reason: e.to_string(),
            }),
        }
    }

    fn store(&self, v: u8) -> Result<(), SparkplugError> {
        let err = |e: std::io::Error| SparkplugError::BdSeq {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            writeln!(f, "{v}").map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

fn bdseq_metric(v: u8, at: u64) -> Metric {
    Metric {
        name: Some("bdSeq".into()),
        timestamp: Some(at),
        datatype: Some(DataType::Int64.code()),
        value: Some(MetricValue::LongValue(u64::from(v))),
        ..Default::default()
    }
}

/// The NDEATH payload: the bdSeq alone, no seq (the specification forbids one).
pub fn ndeath_payload(bdseq: u8) -> Vec<u8> {
    let at = now_ms();
    Payload {
        timestamp: Some(at),
        metrics: vec![bdseq_metric(bdseq, at)],
        ..Default::default()
    }
    .encode_to_vec()
}

/// A running edge node. Dropping it aborts the connection without DISCONNECT (the broker then
/// publishes the NDEATH Will); [`SparkplugNode::shutdown`] publishes NDEATH and disconnects.
pub struct SparkplugNode {
    task: super::task::StoppableTask,
    bdseq_path: PathBuf,
}

impl SparkplugNode {
    /// Connects in the background (a broker that is down is retried) and publishes. Fails on
    /// bad ids or an unreadable bdSeq file.
    pub async fn start(
        cfg: SparkplugConfig,
        site: &str,
        sources: Sources,
        data_dir: &Path,
    ) -> Result<SparkplugNode, SparkplugError> {
        let topics = Topics::new(&cfg.group, &cfg.node)?;
        let store = BdSeqStore {
            path: data_dir.join(BDSEQ_FILE),
        };
        let bdseq = match store.load()? {
            Some(last) => last.wrapping_add(1),
            None => 0,
        };
        store.store(bdseq)?;

        let mut devs = Vec::new();
        let mut taken = std::collections::HashSet::new();
        let mut unique = |base: String| {
            let mut id = base.clone();
            let mut n = 2;
            while !taken.insert(id.clone()) {
                id = format!("{base}~{n}");
                n += 1;
            }
            if id != base {
                tracing::warn!(device = %base, id = %id, "Sparkplug device id taken; renamed");
            }
            id
        };
        for (i, l) in sources.lanes.iter().enumerate() {
            devs.push(Dev {
                id: unique(format!("lane-{}", sanitize(&l.id))),
                source: DevSource::Lane(i),
                alive: false,
                last: Vec::new(),
            });
        }
        for (i, (name, _)) in sources.devices.iter().enumerate() {
            devs.push(Dev {
                id: unique(sanitize(name)),
                source: DevSource::Device(i),
                alive: false,
                last: Vec::new(),
            });
        }

        let m = &cfg.mqtt;
        let mut opts = MqttOptions::new(m.client_id.clone(), m.host.clone(), m.port);
        opts.set_keep_alive(m.keep_alive.max(Duration::from_secs(1)));
        // Sparkplug 3.0 with MQTT 3.1.1: clean session; births restore state on every connect.
        opts.set_clean_session(true);
        if let Some(t) = &m.tls {
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: t.ca.clone(),
                alpn: None,
                client_auth: t.client.clone(),
            }));
        }
        if let Some(u) = &m.username {
            opts.set_credentials(u.clone(), m.password.clone().unwrap_or_default());
        }
        opts.set_last_will(will(&topics, bdseq));
        let cap = 256 + 4 * devs.len();
        let (client, eventloop) = AsyncClient::new(opts, cap);
        let mut node = Node {
            site: site.to_string(),
            topics,
            client,
            sources,
            store,
            bdseq,
            session_used: false,
            seq: 0,
            connected: false,
            need_birth: false,
            node_last: Vec::new(),
            devs,
            poll_interval: m.poll_interval,
            reconnect_delay: m.reconnect_delay,
        };
        let bdseq_path = node.store.path.clone();
        let task =
            super::task::StoppableTask::spawn("Sparkplug edge node", move |stop_rx| async move {
                node.run(eventloop, stop_rx).await
            });
        Ok(SparkplugNode { task, bdseq_path })
    }

    /// Where the last bdSeq used is kept.
    pub fn bdseq_path(&self) -> &Path {
        &self.bdseq_path
    }

    /// Publishes NDEATH, disconnects and waits (at most 5 s) for the task to end.
    pub async fn shutdown(self) {
        self.task.shutdown().await
    }
}

fn will(topics: &Topics, bdseq: u8) -> LastWill {
    // QoS 1, not retained: both required of the NDEATH Will.
    LastWill::new(
        topics.node("NDEATH"),
        ndeath_payload(bdseq),
        QoS::AtLeastOnce,
        false,
    )
}

#[derive(Debug, Clone, Copy)]
enum DevSource {
    Lane(usize),
    Device(usize),
}

/// A Sparkplug device: a lane or a field device.
struct Dev {
    id: String,
    source: DevSource,
    /// Born (DBIRTH sent, no DDEATH since) in this session.
    alive: bool,
    /// Metrics as last published.
    last: Vec<Point>,
}

struct Node {
    site: String,
    topics: Topics,
    client: AsyncClient,
    sources: Sources,
    store: BdSeqStore,
    /// In the Will of the current (or next) CONNECT.
    bdseq: u8,
    /// A CONNACK was received with the current bdSeq: the next CONNECT needs a new one.
    session_used: bool,
    /// Next `seq` to send.
    seq: u8,
    connected: bool,
    /// A birth could not be queued completely; births are repeated on the next tick.
    need_birth: bool,
    node_last: Vec<Point>,
    devs: Vec<Dev>,
    poll_interval: Duration,
    reconnect_delay: Duration,
}

impl Node {
    async fn run(&mut self, mut eventloop: EventLoop, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(self.poll_interval.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let ev = {
                let poll = eventloop.poll();
                tokio::pin!(poll);
                loop {
                    tokio::select! {
                        ev = &mut poll => break Some(ev),
                        _ = tick.tick() => {
                            if self.connected {
                                self.report();
                            }
                        }
                        _ = &mut stop => break None,
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
                        tracing::warn!(error = %e, "Sparkplug connection lost");
                    } else {
                        tracing::debug!(error = %e, "Sparkplug connect failed");
                    }
                    self.connected = false;
                    // Nothing from the old session may follow the next NBIRTH (a rebirth request
                    // still queued is moot: the next connection gets births anyway).
                    eventloop.pending.clear();
                    eventloop.state.events.clear();
                    if self.session_used {
                        self.next_bdseq(&mut eventloop);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(self.reconnect_delay) => {}
                        _ = &mut stop => return,
                    }
                }
            }
        }
    }

    /// A new bdSeq for the next CONNECT: persisted first, then put in the Will.
    fn next_bdseq(&mut self, eventloop: &mut EventLoop) {
        let next = self.bdseq.wrapping_add(1);
        if let Err(e) = self.store.store(next) {
            tracing::error!(error = %e, "Sparkplug bdSeq not stored");
        }
        self.bdseq = next;
        self.session_used = false;
        eventloop
            .mqtt_options
            .set_last_will(will(&self.topics, next));
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                tracing::info!(bdseq = self.bdseq, node = %self.topics.node("NBIRTH"), "Sparkplug connected");
                self.connected = true;
                self.session_used = true;
                if let Err(e) = self
                    .client
                    .try_subscribe(self.topics.node("NCMD"), QoS::AtLeastOnce)
                {
                    tracing::error!(error = %e, "Sparkplug NCMD subscription not queued");
                }
                self.birth();
            }
            Event::Incoming(Packet::Publish(p)) => {
                if p.topic == self.topics.node("NCMD") {
                    self.on_ncmd(&p.payload);
                } else {
                    tracing::debug!(topic = %p.topic, "Sparkplug message on an unexpected topic ignored");
                }
            }
            _ => {}
        }
    }

    fn on_ncmd(&mut self, payload: &[u8]) {
        let p = match Payload::decode(payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, bytes = payload.len(), "malformed Sparkplug NCMD ignored");
                return;
            }
        };
        let mut rebirth = false;
        for m in &p.metrics {
            match (m.name.as_deref(), m.as_bool()) {
                (Some(REBIRTH), Some(true)) => rebirth = true,
                (Some(REBIRTH), Some(false)) => {}
                (name, _) => {
                    tracing::warn!(metric = ?name, "Sparkplug NCMD metric not supported; ignored")
                }
            }
        }
        if rebirth {
            tracing::info!("Sparkplug rebirth requested");
            self.birth();
        }
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    /// Queues a QoS 0 publish; false when the client queue is full.
    fn send(&mut self, topic: String, metrics: Vec<Metric>, at: u64) -> bool {
        let payload = Payload {
            timestamp: Some(at),
            metrics,
            seq: Some(self.next_seq()),
            ..Default::default()
        };
        match self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, payload.encode_to_vec())
        {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "Sparkplug publish not queued");
                false
            }
        }
    }

    fn alarms(&self) -> Vec<crate::alarm::ActiveAlarm> {
        self.sources
            .alarms
            .as_ref()
            .map(|b| b.active())
            .unwrap_or_default()
    }

    fn node_facts(&self) -> NodeFacts {
        NodeFacts {
            site: self.site.clone(),
            ledger_head: self.sources.ledger.as_ref().map(|l| l.head().seq),
            uplink_backlog: self
                .sources
                .uplinks
                .as_ref()
                .map(|f| f().iter().map(|(_, k)| k.backlog).sum()),
        }
    }

    /// The device's metrics now, and whether it is up (lane task running, device online).
    fn device_state(
        &mut self,
        i: usize,
        alarms: &[crate::alarm::ActiveAlarm],
    ) -> (Vec<Point>, bool) {
        match self.devs[i].source {
            DevSource::Lane(l) => {
                let h = &mut self.sources.lanes[l];
                // Closed: the lane task ended (the sender lives as long as the lane runs).
                let running = h.status.has_changed().is_ok();
                let st = h.status.borrow_and_update().clone();
                (metrics::lane_points(&st, &h.id, alarms), running)
            }
            DevSource::Device(d) => {
                let (name, rx) = &mut self.sources.devices[d];
                let running = rx.has_changed().is_ok();
                let h = rx.borrow_and_update().clone();
                let online = running && h.online;
                (metrics::device_points(&h, name, alarms), online)
            }
        }
    }

    /// NBIRTH (seq 0, this connection's bdSeq), a DBIRTH for every lane and device, then a
    /// DDEATH for those that are down, so a host learns their metrics and their state.
    fn birth(&mut self) {
        self.need_birth = false;
        self.seq = 0;
        let at = now_ms();
        let alarms = self.alarms();
        let points = metrics::node_points(&self.node_facts(), &alarms);
        let mut m = vec![
            bdseq_metric(self.bdseq, at),
            Metric {
                name: Some(REBIRTH.into()),
                timestamp: Some(at),
                datatype: Some(DataType::Boolean.code()),
                value: Some(MetricValue::BooleanValue(false)),
                ..Default::default()
            },
        ];
        m.extend(points.iter().map(|p| p.to_metric(true, at)));
        let mut ok = self.send(self.topics.node("NBIRTH"), m, at);
        self.node_last = points;
        let mut down = Vec::new();
        for i in 0..self.devs.len() {
            let (points, up) = self.device_state(i, &alarms);
            let metrics = points.iter().map(|p| p.to_metric(true, at)).collect();
            let topic = self.topics.device("DBIRTH", &self.devs[i].id);
            ok &= self.send(topic, metrics, at);
            self.devs[i].last = points;
            self.devs[i].alive = up;
            if !up {
                down.push(i);
            }
        }
        for i in down {
            let topic = self.topics.device("DDEATH", &self.devs[i].id);
            ok &= self.send(topic, Vec::new(), at);
        }
        if !ok {
            self.need_birth = true;
        }
    }

    /// Report by exception: NDATA/DDATA with the metrics that changed, DDEATH for a device that
    /// went down (after a last DDATA saying why), DBIRTH for one that came back.
    fn report(&mut self) {
        if self.need_birth {
            self.birth();
            return;
        }
        let at = now_ms();
        let alarms = self.alarms();
        let points = metrics::node_points(&self.node_facts(), &alarms);
        let changed: Vec<Metric> = metrics::changes(&points, &self.node_last)
            .into_iter()
            .map(|p| p.to_metric(false, at))
            .collect();
        // A message that could not be queued leaves a gap in seq and a host with stale values:
        // births on the next tick repair both.
        let mut ok = true;
        if !changed.is_empty() {
            let t = self.topics.node("NDATA");
            ok &= self.send(t, changed, at);
            self.node_last = points;
        }
        for i in 0..self.devs.len() {
            let (points, up) = self.device_state(i, &alarms);
            let id = self.devs[i].id.clone();
            let changed: Vec<Metric> = metrics::changes(&points, &self.devs[i].last)
                .into_iter()
                .map(|p| p.to_metric(false, at))
                .collect();
            match (self.devs[i].alive, up) {
                (true, true) => {
                    if !changed.is_empty() {
                        ok &= self.send(self.topics.device("DDATA", &id), changed, at);
                    }
                }
                (true, false) => {
                    if !changed.is_empty() {
                        ok &= self.send(self.topics.device("DDATA", &id), changed, at);
                    }
                    tracing::info!(device = %id, "Sparkplug device down: DDEATH");
                    ok &= self.send(self.topics.device("DDEATH", &id), Vec::new(), at);
                    self.devs[i].alive = false;
                }
                (false, true) => {
                    let metrics = points.iter().map(|p| p.to_metric(true, at)).collect();
                    tracing::info!(device = %id, "Sparkplug device up: DBIRTH");
                    ok &= self.send(self.topics.device("DBIRTH", &id), metrics, at);
                    self.devs[i].alive = true;
                }
                (false, false) => {}
            }
            self.devs[i].last = points;
        }
        if !ok {
            self.need_birth = true;
        }
    }

    /// NDEATH, then DISCONNECT (the Will is not sent after a DISCONNECT).
    async fn goodbye(&mut self, eventloop: &mut EventLoop) {
        if !self.connected {
            return;
        }
        let _ = self.client.try_publish(
            self.topics.node("NDEATH"),
            QoS::AtLeastOnce,
            false,
            ndeath_payload(self.bdseq),
        );
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_topics() {
        assert_eq!(sanitize("a/b+c#d"), "a_b_c_d");
        assert_eq!(sanitize(""), "_");
        assert!(valid_id("ecogate"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(""));
        assert!(!valid_id(" x"));
        let t = Topics::new("g", "site-1").unwrap();
        assert_eq!(t.node("NBIRTH"), "spBv1.0/g/NBIRTH/site-1");
        assert_eq!(
            t.device("DDATA", "lane-1-in"),
            "spBv1.0/g/DDATA/site-1/lane-1-in"
        );
        assert!(Topics::new("g#", "n").is_err());
    }

    #[test]
    fn bdseq_store_wraps_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let s = BdSeqStore {
            path: dir.path().join(BDSEQ_FILE),
        };
        assert_eq!(s.load().unwrap(), None);
        s.store(255).unwrap();
        assert_eq!(s.load().unwrap(), Some(255));
        assert_eq!(s.load().unwrap().unwrap().wrapping_add(1), 0);
        std::fs::write(&s.path, "256\n").unwrap();
        assert!(s.load().is_err());
    }

    #[test]
    fn ndeath_has_bdseq_and_no_seq() {
        let p = Payload::decode(ndeath_payload(7).as_slice()).unwrap();
        assert_eq!(p.seq, None);
        assert!(p.timestamp.is_some());
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(p.metrics[0].datatype, Some(4));
        assert_eq!(p.metrics[0].value, Some(MetricValue::LongValue(7)));
    }
}
