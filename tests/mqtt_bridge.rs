//! The MQTT bridge against the real Mosquitto at 127.0.0.1:1883 (CI starts one). Each test uses
//! its own site id, so retained messages of one test never reach another, and clears the
//! retained topics it made.

mod mqtt_support;
mod support;

use ecogate::lane::engine::Input;
use ecogate::ledger::Ledger;
use ecogate::runtime::{LaneHandle, LaneStatus};
use ecogate::uplink::MqttBridge;
use ecogate_drivers::DeviceHealth;
use mqtt_support::*;
use rumqttc::QoS;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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
    let now = chrono::Utc::now();
    let stale = format!(
        r#"{{"operator":"wang","reason":"x","issued_at":"{}","request_id":"stale"}}"#,
        (now - chrono::Duration::seconds(45)).to_rfc3339()
    );
    let ahead = format!(
        r#"{{"operator":"wang","reason":"x","issued_at":"{}","request_id":"ahead"}}"#,
        (now + chrono::Duration::seconds(300)).to_rfc3339()
    );
    let refused: [(&str, String, &[u8]); 8] = [
        (
            "no-time",
            open.clone(),
            br#"{"operator":"wang","reason":"x","request_id":"no-time"}"#,
        ),
        ("stale", open.clone(), stale.as_bytes()),
        ("ahead", open.clone(), ahead.as_bytes()),
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
            format!(
                r#"{{"operator":"wang.li","role":"dispatcher","reason":"camera down","plate":"ABC123","issued_at":"{}","request_id":7}}"#,
                chrono::Utc::now().to_rfc3339()
            )
            .into_bytes(),
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
            format!(
                r#"{{"operator":"wang","reason":"x","issued_at":"{}","request_id":"old"}}"#,
                chrono::Utc::now().to_rfc3339()
            )
            .into_bytes(),
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
