//! MQTT bridge against the Mosquitto on 127.0.0.1:1883: how fast a ledger backlog is drained
//! to a QoS 1 subscriber, sustained forwarding while 16 writers record, and pass recorded →
//! message at the subscriber latency.
//! Run: `cargo bench --bench mqtt` (needs `mosquitto` listening on 127.0.0.1:1883).
//! `MQTT_BENCH_N` sets the number of events of the throughput runs (default 20000).

use chrono::Utc;
use ecogate::ledger::events::{BarrierMode, Decision, Direction, EventBody, PassAttempt};
use ecogate::ledger::Ledger;
use ecogate::uplink::{MqttBridge, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn pass(i: usize) -> EventBody {
    EventBody::PassAttempt(PassAttempt {
        lane: format!("{}-in", i % 16),
        gate: Some("1".into()),
        direction: Direction::In,
        plate: format!("豫A{:05}", i % 100_000),
        color: ecogate::vehicle::PlateColor::Yellow,
        decision: Decision::Allow,
        reason: "registered_stage_ok".into(),
        reason_text: "欢迎光临".into(),
        barrier: BarrierMode::Auto,
        opened: true,
        stage: None,
        fuel: None,
        registry: None,
        photo_kinds: vec![],
        read_id: None,
        check: None,
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
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
    let n: usize = std::env::var("MQTT_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let site = format!("bench{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    // The backlog, recorded by 16 concurrent writers (group commit) before the bridge starts.
    let mut fill = Vec::new();
    for w in 0..16 {
        let ledger = ledger.clone();
        fill.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                ledger
                    .append(pass(i), Vec::new(), Utc::now())
                    .await
                    .unwrap();
            }
        }));
    }
    for f in fill {
        f.await.unwrap();
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
        "backlog: {n} pass events in {:.2} s = {:.0} QoS 1 messages/s (in-flight 100)",
        backlog.as_secs_f64(),
        n as f64 / backlog.as_secs_f64()
    );

    // Sustained: 16 lanes record as fast as the ledger commits while the bridge forwards.
    let t = Instant::now();
    let mut writers = Vec::new();
    for w in 0..16 {
        let ledger = ledger.clone();
        writers.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                ledger
                    .append(pass(n + i), Vec::new(), Utc::now())
                    .await
                    .unwrap();
            }
        }));
    }
    receive_all(&mut rx, n).await;
    let live = t.elapsed();
    for w in writers {
        w.await.unwrap();
    }
    println!(
        "sustained: {n} passes recorded by 16 writers and delivered in {:.2} s = {:.0} QoS 1 messages/s",
        live.as_secs_f64(),
        n as f64 / live.as_secs_f64()
    );

    // Latency: one pass at a time (10 ms apart, like separate vehicles): from the moment the
    // append returned (the pass is durable) to the message at the subscriber, and from the
    // append call (durable commit included).
    let mut lat = Vec::new();
    let mut total = Vec::new();
    for i in 0..1000 {
        let t = Instant::now();
        ledger
            .append(pass(3 * n + i), Vec::new(), Utc::now())
            .await
            .unwrap();
        let recorded = Instant::now();
        receive_all(&mut rx, 1).await;
        lat.push(recorded.elapsed());
        total.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lat.sort();
    total.sort();
    println!(
        "latency: pass recorded → subscriber over 1000 passes: p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&lat, 0.50),
        pct(&lat, 0.95),
        pct(&lat, 0.99),
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    println!(
        "          append call (incl. durable commit) → subscriber: p50 {:.2} ms, p99 {:.2} ms",
        pct(&total, 0.50),
        pct(&total, 0.99),
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
