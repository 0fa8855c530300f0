//! Shared by the MQTT tests: a subscriber, a private Mosquitto on a free port, ledger helpers.
#![allow(dead_code)]

use chrono::Utc;
use ecogate::ledger::events::{Alarm, EventBody};
use ecogate::ledger::Ledger;
use ecogate::uplink::MqttConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub const BROKER: &str = "127.0.0.1:1883";

pub fn require_broker() {
    let addr = BROKER.parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "these tests need a Mosquitto broker on {BROKER} (CI starts one; locally run `mosquitto -d`)"
        );
    }
}

pub fn unique_site(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn config(site: &str) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", 1883, site);
    c.keep_alive = Duration::from_secs(5);
    c.reconnect_delay = Duration::from_millis(200);
    c
}

#[derive(Debug)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

pub struct Sub {
    pub rx: mpsc::UnboundedReceiver<Msg>,
    pub client: AsyncClient,
    pub task: tokio::task::JoinHandle<()>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sub {
    /// Subscribes (QoS 1) and returns once the broker acknowledged the subscription.
    pub async fn new(id: &str, persistent: bool, filters: &[String]) -> Sub {
        require_broker();
        Sub::on_port(1883, id, persistent, filters).await
    }

    pub async fn on_port(port: u16, id: &str, persistent: bool, filters: &[String]) -> Sub {
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(!persistent);
        let (client, mut el) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let c2 = client.clone();
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce))
            .collect();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c2.subscribe_many(filters.clone()).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(t) = ready_tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx)
            .await
            .unwrap_or_else(|_| {
                panic!("subscription to the broker on 127.0.0.1:{port} not acknowledged in 10 s")
            })
            .expect("subscriber task ended");
        Sub { rx, client, task }
    }

    /// The next message whose topic ends with `suffix` and that `pred` accepts.
    pub async fn wait_for(&mut self, suffix: &str, pred: impl Fn(&Value) -> bool) -> Msg {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no message on …{suffix} within 20 s"))
                .expect("subscriber stopped");
            if m.topic.ends_with(suffix) && pred(&m.json()) {
                return m;
            }
        }
    }
}

pub async fn clear_retained(site: &str, topics: &[&str]) {
    let mut opts = MqttOptions::new(format!("{site}-cleaner"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut el) = AsyncClient::new(opts, 100);
    for t in topics {
        let _ = client
            .publish(
                format!("ecogate/v1/{site}/{t}"),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}

pub fn alarm(i: usize) -> EventBody {
    EventBody::Alarm(Alarm {
        source: "test".into(),
        code: format!("code_{i}"),
        message: String::new(),
        active: i % 2 == 0,
        lane: None,
    })
}

/// Appends `n` events; returns their (seq, id).
pub async fn append(ledger: &Ledger, from: usize, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for i in from..from + n {
        let r = ledger
            .append(alarm(i), Vec::new(), Utc::now())
            .await
            .unwrap();
        out.push((r.seq, r.id));
    }
    out
}

pub fn read_cursor(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(ecogate::uplink::mqtt::CURSOR_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn wait_cursor(dir: &Path, at_least: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = read_cursor(dir);
        if c >= at_least {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "cursor stuck at {c}, expected {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Receives event messages until every id in `want` was seen; returns (seq, id) in arrival order.
pub async fn collect_events(sub: &mut Sub, want: &HashSet<String>) -> Vec<(i64, String)> {
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !want.is_subset(&seen) {
        let m = match tokio::time::timeout_at(deadline, sub.rx.recv()).await {
            Ok(Some(m)) => m,
            _ => panic!(
                "missing events after 60 s: {} of {} seen; missing {:?}",
                want.intersection(&seen).count(),
                want.len(),
                want.difference(&seen).take(40).collect::<Vec<_>>()
            ),
        };
        if !m.topic.contains("/events/") {
            continue;
        }
        let v = m.json();
        assert!(!m.retain, "events are not retained");
        let id = v["id"].as_str().expect("event has an id").to_string();
        let seq = v["seq"].as_i64().expect("event has a seq");
        assert_eq!(m.topic.rsplit('/').next(), v["kind"].as_str());
        seen.insert(id.clone());
        got.push((seq, id));
    }
    got
}

/// A private Mosquitto on a free 127.0.0.1 port, with persistence so that sessions survive a
/// graceful restart.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

pub struct Broker {
    pub child: Option<std::process::Child>,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(|_| String::new())
    }

    /// `extra(dir)` is appended to the configuration (more listeners, TLS files in `dir`).
    pub fn start_with(extra: impl FnOnce(&Path) -> String) -> Broker {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to its own user, which must still write its database.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let conf = dir.path().join("mosquitto.conf");
        let more = extra(dir.path());
        std::fs::write(
            &conf,
            format!(
                "per_listener_settings true\npersistence true\npersistence_location {}/\nlog_dest none\nlistener {port} 127.0.0.1\nallow_anonymous true\n{more}",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut b = Broker {
            child: None,
            port,
            dir,
        };
        b.up();
        b
    }

    pub fn up(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("this test starts its own `mosquitto` (not runnable: {e})"));
        self.child = Some(child);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..100 {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto did not listen on {addr} within 5 s");
    }

    /// Graceful stop (SIGTERM), so mosquitto saves its sessions.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One gate with one entry lane (push camera, LED behind it, Modbus relay module at
/// `io_addr`), for site files in tests; append `[storage]`, `[uplinks.mqtt]` and so on.
pub fn one_lane(io_addr: &str) -> String {
    crate::support::one_lane_gate(io_addr, false, "100ms")
}
