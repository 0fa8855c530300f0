//! The MQTT bridge against the real Mosquitto at 127.0.0.1:1883 (CI starts one). Each test uses
//! its own site id, so retained messages of one test never reach another, and clears the
//! retained topics it made.

use chrono::Utc;
use ecogate::lane::engine::Input;
use ecogate::ledger::events::{Alarm, EventBody};
use ecogate::ledger::Ledger;
use ecogate::runtime::{LaneHandle, LaneStatus};
use ecogate::uplink::{MqttBridge, MqttConfig};
use ecogate_drivers::DeviceHealth;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

const BROKER: &str = "127.0.0.1:1883";

fn require_broker() {
    let addr = BROKER.parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "these tests need a Mosquitto broker on {BROKER} (CI starts one; locally run `mosquitto -d`)"
        );
    }
}

fn unique_site(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn config(site: &str) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", 1883, site);
    c.keep_alive = Duration::from_secs(5);
    c.reconnect_delay = Duration::from_millis(200);
    c
}

#[derive(Debug)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
}

struct Sub {
    rx: mpsc::UnboundedReceiver<Msg>,
    client: AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sub {
    /// Subscribes (QoS 1) and returns once the broker acknowledged the subscription.
    async fn new(id: &str, persistent: bool, filters: &[String]) -> Sub {
        require_broker();
        Sub::on_port(1883, id, persistent, filters).await
    }

    async fn on_port(port: u16, id: &str, persistent: bool, filters: &[String]) -> Sub {
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
    async fn wait_for(&mut self, suffix: &str, pred: impl Fn(&Value) -> bool) -> Msg {
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

async fn clear_retained(site: &str, topics: &[&str]) {
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

fn alarm(i: usize) -> EventBody {
    EventBody::Alarm(Alarm {
        source: "test".into(),
        code: format!("code_{i}"),
        message: String::new(),
        active: i % 2 == 0,
        lane: None,
    })
}

/// Appends `n` events; returns their (seq, id).
async fn append(ledger: &Ledger, from: usize, n: usize) -> Vec<(i64, String)> {
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

fn read_cursor(dir: &Path) -> i64 {
    std::fs::read_to_string(dir.join(ecogate::uplink::mqtt::CURSOR_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn wait_cursor(dir: &Path, at_least: i64) -> i64 {
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
async fn collect_events(sub: &mut Sub, want: &HashSet<String>) -> Vec<(i64, String)> {
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

#[tokio::test]
async fn events_arrive_in_order_exactly_once() {
    require_broker();
    let site = unique_site("order");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[format!("ecogate/v1/{site}/events/#")],
    )
    .await;
    let before = append(&ledger, 0, 20).await;
    let bridge = MqttBridge::start(
        config(&site),
        &site,
        ledger.clone(),
        vec![],
        vec![],
        dir.path(),
    )
    .await
    .unwrap();
    let after = append(&ledger, 20, 130).await;
    let all: Vec<(i64, String)> = before.into_iter().chain(after).collect();
    let want: HashSet<String> = all.iter().map(|(_, id)| id.clone()).collect();
    let got = collect_events(&mut sub, &want).await;
    // Nothing extra turns up shortly after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(m) = sub.rx.try_recv() {
        panic!("unexpected extra message on {}", m.topic);
    }
    assert_eq!(got, all, "every event once, in ledger order");
    let head = ledger.head().seq;
    assert_eq!(wait_cursor(dir.path(), head).await, head);
    bridge.shutdown().await;
    clear_retained(&site, &["status", "ledger/head"]).await;
}

#[tokio::test]
async fn restart_resends_what_was_not_acknowledged() {
    require_broker();
    let site = unique_site("restart");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        true,
        &[format!("ecogate/v1/{site}/events/#")],
    )
    .await;
    let bridge = MqttBridge::start(
        config(&site),
        &site,
        ledger.clone(),
        vec![],
        vec![],
        dir.path(),
    )
    .await
    .unwrap();
    let first = append(&ledger, 0, 40).await;
    // Wait for some, then kill the bridge mid-stream (no DISCONNECT, no final cursor write).
    let early: HashSet<String> = first[..10].iter().map(|(_, id)| id.clone()).collect();
    let seen_before: HashSet<String> = collect_events(&mut sub, &early)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    drop(bridge);
    let cursor_after_kill = read_cursor(dir.path());
    assert!(cursor_after_kill <= ledger.head().seq);
    let second = append(&ledger, 40, 40).await;
    let bridge = MqttBridge::start(
        config(&site),
        &site,
        ledger.clone(),
        vec![],
        vec![],
        dir.path(),
    )
    .await
    .unwrap();
    let all: HashSet<String> = first
        .iter()
        .chain(&second)
        .map(|(_, id)| id.clone())
        .collect();
    let want: HashSet<String> = all.difference(&seen_before).cloned().collect();
    let got = collect_events(&mut sub, &want).await;
    // Duplicates are allowed (at-least-once); what matters is that none is missing.
    let received: HashSet<String> = got.into_iter().map(|(_, id)| id).collect();
    assert!(want.is_subset(&received));
    let union: HashSet<String> = seen_before.union(&want).cloned().collect();
    assert_eq!(union, all, "none missing");
    let head = ledger.head().seq;
    let c = wait_cursor(dir.path(), head).await;
    assert!(
        c > cursor_after_kill,
        "cursor advanced ({cursor_after_kill} → {c})"
    );
    assert_eq!(c, head);
    bridge.shutdown().await;
    clear_retained(&site, &["status", "ledger/head"]).await;
}

fn fake_lane(id: &str) -> (LaneHandle, mpsc::Receiver<Input>, watch::Sender<LaneStatus>) {
    let (tx, rx) = mpsc::channel(8);
    let (stx, srx) = watch::channel(LaneStatus {
        lane: id.into(),
        state: "idle".into(),
        ..Default::default()
    });
    (
        LaneHandle {
            id: id.into(),
            inputs: tx,
            status: srx,
        },
        rx,
        stx,
    )
}

#[tokio::test]
async fn remote_open_needs_operator_and_reason() {
    require_broker();
    let site = unique_site("cmd");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let (lane, mut lane_rx, _status) = fake_lane("L1");
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[
            format!("ecogate/v1/{site}/cmd-response"),
            format!("ecogate/v1/{site}/status"),
        ],
    )
    .await;
    let bridge = MqttBridge::start(config(&site), &site, ledger, vec![lane], vec![], dir.path())
        .await
        .unwrap();
    sub.wait_for("/status", |v| v["state"] == "online").await;
    let open = format!("ecogate/v1/{site}/cmd/lanes/L1/open");
    let refused: [(&str, String, &[u8]); 5] = [
        (
            "no-operator",
            open.clone(),
            br#"{"reason":"stuck truck","request_id":"no-operator"}"#,
        ),
        (
            "blank-operator",
            open.clone(),
            br#"{"operator":"  ","reason":"x","request_id":"blank-operator"}"#,
        ),
        (
            "no-reason",
            open.clone(),
            br#"{"operator":"wang","request_id":"no-reason"}"#,
        ),
        (
            "no-lane",
            format!("ecogate/v1/{site}/cmd/lanes/L9/open"),
            br#"{"operator":"wang","reason":"x","request_id":"no-lane"}"#,
        ),
        (
            "unknown",
            format!("ecogate/v1/{site}/cmd/lanes/L1/explode"),
            br#"{"operator":"wang","reason":"x","request_id":"unknown"}"#,
        ),
    ];
    for (rid, topic, payload) in refused {
        sub.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .await
            .unwrap();
        let r = sub
            .wait_for("/cmd-response", |v| v["request_id"] == rid)
            .await
            .json();
        assert_eq!(r["ok"], false, "{rid}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Malformed JSON: no request id to echo, still an error.
    sub.client
        .publish(open.clone(), QoS::AtLeastOnce, false, b"{not json".to_vec())
        .await
        .unwrap();
    let r = sub
        .wait_for("/cmd-response", |v| v["request_id"].is_null())
        .await
        .json();
    assert_eq!(r["ok"], false);
    assert!(
        lane_rx.try_recv().is_err(),
        "a refused command reached the lane"
    );

    sub.client
        .publish(
            open.clone(),
            QoS::AtLeastOnce,
            false,
            br#"{"operator":"wang.li","role":"dispatcher","reason":"camera down","plate":"ABC123","request_id":7}"#.to_vec(),
        )
        .await
        .unwrap();
    let r = sub
        .wait_for("/cmd-response", |v| v["request_id"] == 7)
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    match lane_rx.try_recv() {
        Ok(Input::ManualRelease(rel)) => {
            assert!(rel.remote);
            assert_eq!(rel.operator, "wang.li");
            assert_eq!(rel.role, "dispatcher");
            assert_eq!(rel.reason, "camera down");
            assert_eq!(rel.plate.as_deref(), Some("ABC123"));
        }
        other => panic!("expected a manual release, got {other:?}"),
    }
    bridge.shutdown().await;
    clear_retained(&site, &["status", "lanes/L1", "ledger/head"]).await;
}

#[tokio::test]
async fn retained_command_never_actuates() {
    require_broker();
    let site = unique_site("retained");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let (lane, mut lane_rx, _status) = fake_lane("L1");
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[format!("ecogate/v1/{site}/cmd-response")],
    )
    .await;
    // A valid open left retained on the broker before the bridge starts.
    let cmd = format!("ecogate/v1/{site}/cmd/lanes/L1/open");
    sub.client
        .publish(
            cmd.clone(),
            QoS::AtLeastOnce,
            true,
            br#"{"operator":"wang","reason":"x","request_id":"old"}"#.to_vec(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bridge = MqttBridge::start(config(&site), &site, ledger, vec![lane], vec![], dir.path())
        .await
        .unwrap();
    let r = sub
        .wait_for("/cmd-response", |v| v["request_id"] == "old")
        .await
        .json();
    assert_eq!(r["ok"], false);
    assert!(lane_rx.try_recv().is_err());
    bridge.shutdown().await;
    clear_retained(
        &site,
        &["status", "lanes/L1", "ledger/head", "cmd/lanes/L1/open"],
    )
    .await;
}

#[tokio::test]
async fn state_is_retained_and_follows_changes() {
    require_broker();
    let site = unique_site("state");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    append(&ledger, 0, 3).await;
    let (lane, _lane_rx, status) = fake_lane("L1");
    let (htx, hrx) = watch::channel(DeviceHealth {
        online: true,
        ..Default::default()
    });
    let bridge = MqttBridge::start(
        config(&site),
        &site,
        ledger.clone(),
        vec![lane],
        vec![("cam1".into(), hrx)],
        dir.path(),
    )
    .await
    .unwrap();
    // A subscriber arriving later still sees the state: it is retained.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[
            format!("ecogate/v1/{site}/lanes/+"),
            format!("ecogate/v1/{site}/devices/+"),
            format!("ecogate/v1/{site}/ledger/head"),
        ],
    )
    .await;
    let m = sub.wait_for("/lanes/L1", |v| v["lane"] == "L1").await;
    assert!(m.retain);
    let m = sub.wait_for("/devices/cam1", |v| v["online"] == true).await;
    assert!(m.retain);
    let head = ledger.head();
    sub.wait_for("/ledger/head", |v| {
        v["seq"] == head.seq && v["hash"] == head.hash_hex().as_str()
    })
    .await;

    status.send_modify(|s| s.plate = Some("XYZ789".into()));
    sub.wait_for("/lanes/L1", |v| v["plate"] == "XYZ789").await;
    htx.send_modify(|h| {
        h.online = false;
        h.last_error = Some("timeout".into());
    });
    sub.wait_for("/devices/cam1", |v| {
        v["online"] == false && v["last_error"] == "timeout"
    })
    .await;
    append(&ledger, 3, 1).await;
    let head = ledger.head().seq;
    sub.wait_for("/ledger/head", |v| v["seq"] == head).await;
    bridge.shutdown().await;
    clear_retained(
        &site,
        &["status", "lanes/L1", "devices/cam1", "ledger/head"],
    )
    .await;
}

#[tokio::test]
async fn killed_bridge_goes_offline_via_last_will() {
    require_broker();
    let site = unique_site("lwt");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[format!("ecogate/v1/{site}/status")],
    )
    .await;
    let bridge = MqttBridge::start(config(&site), &site, ledger, vec![], vec![], dir.path())
        .await
        .unwrap();
    let m = sub.wait_for("/status", |v| v["state"] == "online").await;
    assert!(m.json()["since"].is_string());
    // Abort: the connection goes without DISCONNECT, as when the process is killed.
    drop(bridge);
    let m = sub.wait_for("/status", |v| v["state"] == "offline").await;
    assert_eq!(m.json()["reason"], "connection_lost");
    // The retained value a newcomer sees is offline too.
    let mut late = Sub::new(
        &format!("{site}-late"),
        false,
        &[format!("ecogate/v1/{site}/status")],
    )
    .await;
    let m = late.wait_for("/status", |_| true).await;
    assert!(m.retain);
    assert_eq!(m.json()["state"], "offline");
    clear_retained(&site, &["status", "ledger/head"]).await;
}

#[tokio::test]
async fn clean_shutdown_publishes_offline() {
    require_broker();
    let site = unique_site("bye");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[format!("ecogate/v1/{site}/status")],
    )
    .await;
    let bridge = MqttBridge::start(config(&site), &site, ledger, vec![], vec![], dir.path())
        .await
        .unwrap();
    sub.wait_for("/status", |v| v["state"] == "online").await;
    bridge.shutdown().await;
    let m = sub.wait_for("/status", |v| v["state"] == "offline").await;
    assert_eq!(m.json()["reason"], "shutdown");
    assert!(m.json()["since"].is_string());
    clear_retained(&site, &["status", "ledger/head"]).await;
}

/// A private Mosquitto on a free 127.0.0.1 port, with persistence so that sessions survive a
/// graceful restart.
struct Broker {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port on 127.0.0.1");
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to its own user, which must still write its database.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest none\n",
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

    fn up(&mut self) {
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
    fn down(&mut self) {
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

#[tokio::test]
async fn broker_restarts_lose_nothing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("ecogate=debug")
        .try_init();
    let mut broker = Broker::start();
    let site = unique_site("restarts");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let mut sub = Sub::on_port(
        broker.port,
        &format!("{site}-sub"),
        true,
        &[format!("ecogate/v1/{site}/events/#")],
    )
    .await;
    let mut cfg = config(&site);
    cfg.port = broker.port;
    let bridge = MqttBridge::start(cfg, &site, ledger.clone(), vec![], vec![], dir.path())
        .await
        .unwrap();
    let writer = {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..400 {
                ids.extend(append(&ledger, i, 1).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            ids
        })
    };
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        broker.down();
        tokio::time::sleep(Duration::from_millis(200)).await;
        broker.up();
    }
    let ids = writer.await.unwrap();
    let want: HashSet<String> = ids.iter().map(|(_, id)| id.clone()).collect();
    let got = collect_events(&mut sub, &want).await;
    assert!(got.len() >= want.len());
    let head = ledger.head().seq;
    assert_eq!(wait_cursor(dir.path(), head).await, head);
    bridge.shutdown().await;
}
