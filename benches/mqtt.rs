//! MQTT bridge throughput against the Mosquitto on 127.0.0.1:1883: how fast a ledger backlog
//! is drained to a QoS 1 subscriber, and how fast live appends are forwarded.
//! Run: `cargo bench --bench mqtt` (needs `mosquitto` listening on 127.0.0.1:1883).

use chrono::Utc;
use ecogate::ledger::events::{Alarm, EventBody};
use ecogate::ledger::Ledger;
use ecogate::uplink::{MqttBridge, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn alarm(i: usize) -> EventBody {
    EventBody::Alarm(Alarm {
        source: "bench".into(),
        code: format!("c{i}"),
        message: String::new(),
        active: true,
        lane: None,
    })
}

async fn subscriber(site: &str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut opts = MqttOptions::new(format!("{site}-sub"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (client, mut el) = AsyncClient::new(opts, 100);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready = Some(ready_tx);
    let filter = format!("ecogate/v1/{site}/events/#");
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    let _ = tx.send(v["id"].as_str().unwrap_or_default().to_string());
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e} (is mosquitto running on 127.0.0.1:1883?)"),
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready_rx)
        .await
        .expect("no SUBACK from 127.0.0.1:1883 in 10 s")
        .expect("subscriber stopped");
    rx
}

async fn receive_all(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, n: usize) {
    let mut seen = HashSet::new();
    while seen.len() < n {
        let id = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("events stopped arriving")
            .expect("subscriber stopped");
        seen.insert(id);
    }
}

#[tokio::main]
async fn main() {
    let n = 5000;
    let site = format!("bench{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    for i in 0..n {
        ledger
            .append(alarm(i), Vec::new(), Utc::now())
            .await
            .unwrap();
    }
    let mut rx = subscriber(&site).await;

    let t = Instant::now();
    let bridge = MqttBridge::start(
        MqttConfig::new("127.0.0.1", 1883, &site),
        &site,
        ledger.clone(),
        vec![],
        vec![],
        dir.path(),
    )
    .await
    .unwrap();
    receive_all(&mut rx, n).await;
    let backlog = t.elapsed();
    println!(
        "backlog: {n} events in {:.2} s = {:.0} events/s (QoS 1, in-flight 100)",
        backlog.as_secs_f64(),
        n as f64 / backlog.as_secs_f64()
    );

    // Live: one append at a time, waiting for it to arrive (append → subscriber latency).
    let mut lat = Vec::new();
    for i in 0..200 {
        let t = Instant::now();
        ledger
            .append(alarm(n + i), Vec::new(), Utc::now())
            .await
            .unwrap();
        receive_all(&mut rx, 1).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "live: append→subscriber latency over 200 events: median {:.1} ms, p95 {:.1} ms, max {:.1} ms (poll interval 100 ms)",
        lat[100].as_secs_f64() * 1e3,
        lat[190].as_secs_f64() * 1e3,
        lat[199].as_secs_f64() * 1e3
    );
    bridge.shutdown().await;
    // Leave no retained state of the bench behind.
    let mut opts = MqttOptions::new(format!("{site}-clean"), "127.0.0.1", 1883);
    opts.set_keep_alive(Duration::from_secs(10));
    let (c, mut el) = AsyncClient::new(opts, 10);
    for t in ["status", "ledger/head"] {
        let _ = c
            .publish(
                format!("ecogate/v1/{site}/{t}"),
                QoS::AtLeastOnce,
                true,
                Vec::new(),
            )
            .await;
    }
    let _ = c.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while el.poll().await.is_ok() {}
    })
    .await;
}
