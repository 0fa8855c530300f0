//! Alarms and uplink KPIs on MQTT (against the Mosquitto at 127.0.0.1:1883), and TLS with
//! client certificates against a private Mosquitto.

mod mqtt_support;
mod support;

use ecogate::alarm::AlarmBoard;
use ecogate::health::Alarm;
use ecogate::ledger::Ledger;
use ecogate::uplink::mqtt::BridgeExtras;
use ecogate::uplink::{MqttBridge, MqttConfig};
use mqtt_support::*;
use rumqttc::QoS;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

async fn command(sub: &Sub, site: &str, cmd: &str, payload: serde_json::Value) {
    sub.client
        .publish(
            format!("ecogate/v1/{site}/cmd/{cmd}"),
            QoS::AtLeastOnce,
            false,
            payload.to_string(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn alarms_are_retained_while_on_the_board_and_acknowledged_over_mqtt() {
    require_broker();
    let site = unique_site("alarms");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let board = AlarmBoard::new(ledger.clone());
    let alarms = board.spawn_recorder();

    // A retained alarm left on the broker by an earlier run that this board does not have.
    let stale = format!("ecogate/v1/{site}/alarms/device:ghost/device_offline");
    {
        let s = Sub::new(
            &format!("{site}-stale"),
            false,
            std::slice::from_ref(&stale),
        )
        .await;
        s.client
            .publish(
                stale.clone(),
                QoS::AtLeastOnce,
                true,
                r#"{"state":"raised"}"#,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[
            format!("ecogate/v1/{site}/alarms/#"),
            format!("ecogate/v1/{site}/cmd-response"),
        ],
    )
    .await;
    let bridge = MqttBridge::start_with(
        config(&site),
        &site,
        ledger.clone(),
        vec![],
        vec![],
        dir.path(),
        BridgeExtras {
            alarms: Some(board.clone()),
            uplinks: None,
        },
    )
    .await
    .unwrap();
    // The stale alarm is removed (empty retained payload).
    loop {
        let m = sub
            .wait_for("/alarms/device:ghost/device_offline", |_| true)
            .await;
        if m.payload.is_empty() {
            break;
        }
    }

    alarms
        .send(Alarm::device("ups", "ups_on_battery", "load 40 %", true))
        .unwrap();
    let m = sub
        .wait_for("/alarms/device:ups/ups_on_battery", |v| {
            v["state"] == "raised"
        })
        .await;
    let v = m.json();
    assert_eq!(v["severity"], "warning");
    assert_eq!(v["acknowledged"], false);
    assert_eq!(v["message"], "load 40 %");
    assert!(v["raised_at"].is_string());

    // Refused: no operator, unknown alarm, unknown field.
    command(
        &sub,
        &site,
        "alarms/ack",
        serde_json::json!({"source": "device:ups", "code": "ups_on_battery", "request_id": 1}),
    )
    .await;
    let r = sub
        .wait_for("/cmd-response", |v| v["request_id"] == 1)
        .await;
    assert_eq!(r.json()["ok"], false);
    assert!(r.json()["message"].as_str().unwrap().contains("operator"));
    command(
        &sub,
        &site,
        "alarms/ack",
        serde_json::json!({"source": "device:nope", "code": "x", "operator": "wang", "request_id": 2}),
    )
    .await;
    let r = sub
        .wait_for("/cmd-response", |v| v["request_id"] == 2)
        .await;
    assert_eq!(r.json()["ok"], false);
    assert!(r.json()["message"].as_str().unwrap().contains("no alarm"));
    command(
        &sub,
        &site,
        "alarms/ack",
        serde_json::json!({"source": "device:ups", "code": "ups_on_battery", "operator": "wang", "opertor": "x", "request_id": 3}),
    )
    .await;
    let r = sub
        .wait_for("/cmd-response", |v| v["request_id"] == 3)
        .await;
    assert_eq!(r.json()["ok"], false);
    assert!(board
        .get("device:ups", "ups_on_battery")
        .is_some_and(|a| !a.acknowledged()));

    command(
        &sub,
        &site,
        "alarms/ack",
        serde_json::json!({"source": "device:ups", "code": "ups_on_battery", "operator": "wang", "note": "generator starting", "request_id": "r4"}),
    )
    .await;
    // The retained alarm and the answer are two publishes from two paths of the bridge: take
    // them in whichever order they arrive.
    let (mut m, mut r) = (None, None);
    while m.is_none() || r.is_none() {
        let x = sub.wait_for("", |_| true).await;
        if x.topic.ends_with("/alarms/device:ups/ups_on_battery")
            && x.json()["acknowledged"] == true
        {
            m = Some(x);
        } else if x.topic.ends_with("/cmd-response") && x.json()["request_id"] == "r4" {
            r = Some(x);
        }
    }
    let (m, r) = (m.unwrap(), r.unwrap());
    assert_eq!(r.json()["ok"], true, "{}", r.json());
    let v = m.json();
    assert_eq!(v["state"], "raised");
    assert_eq!(v["acknowledged_by"], "wang");
    assert_eq!(v["note"], "generator starting");

    // Cleared after the acknowledgement: done, so the retained alarm is removed.
    alarms
        .send(Alarm::device("ups", "ups_on_battery", "", false))
        .unwrap();
    let m = sub
        .wait_for("/alarms/device:ups/ups_on_battery", |v| v.is_null())
        .await;
    assert!(m.payload.is_empty());
    assert!(board.active().is_empty());

    // A late subscriber finds no retained alarm at all.
    let mut late = Sub::new(
        &format!("{site}-late"),
        false,
        &[format!("ecogate/v1/{site}/alarms/#")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(m) = late.rx.try_recv() {
        assert!(m.payload.is_empty() || !m.retain, "stale alarm {}", m.topic);
    }

    // The ledger has the raise, the acknowledgement and the clear.
    let r = ecogate::ledger::LedgerReader::open(dir.path()).unwrap();
    let kinds: Vec<String> = r
        .events_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec!["alarm", "alarm_ack", "alarm"]);
    bridge.shutdown().await;
    clear_retained(&site, &["status", "ledger/head"]).await;
}

#[tokio::test]
async fn uplink_kpis_are_retained_and_published_when_they_change() {
    require_broker();
    let site = unique_site("kpis");
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let backlog = Arc::new(AtomicU64::new(3));
    let b = backlog.clone();
    let mut sub = Sub::new(
        &format!("{site}-sub"),
        false,
        &[format!("ecogate/v1/{site}/uplinks/#")],
    )
    .await;
    let mut cfg = config(&site);
    cfg.kpi_interval = Duration::from_millis(100);
    let bridge = MqttBridge::start_with(
        cfg,
        &site,
        ledger,
        vec![],
        vec![],
        dir.path(),
        BridgeExtras {
            alarms: None,
            uplinks: Some(Arc::new(move || {
                let k = ecogate::regulator::Kpis {
                    captured: 10,
                    acknowledged: 7,
                    backlog: b.load(AtomicOrdering::SeqCst),
                    ..Default::default()
                };
                vec![("henan".to_string(), k)]
            })),
        },
    )
    .await
    .unwrap();
    let m = sub.wait_for("/uplinks/henan", |v| v["backlog"] == 3).await;
    assert!(m.retain || m.json()["uplink"] == "henan");
    assert_eq!(m.json()["completeness"], 0.7);
    // Unchanged figures are not published again (ten KPI intervals).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut repeats = 0;
    while let Ok(m) = sub.rx.try_recv() {
        if m.topic.ends_with("/uplinks/henan") {
            repeats += 1;
        }
    }
    assert_eq!(repeats, 0, "unchanged KPIs were published again");
    backlog.store(5, AtomicOrdering::SeqCst);
    sub.wait_for("/uplinks/henan", |v| v["backlog"] == 5).await;
    bridge.shutdown().await;
    clear_retained(&site, &["status", "ledger/head", "uplinks/henan"]).await;
}

/// A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, by the
/// openssl command line.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("this test needs the `openssl` command: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509", "-days", "2", "-subj", "/CN=ecogate test CA"];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&a);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for who in ["server", "client"] {
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        let subj = format!("/CN={who}");
        let mut a = vec!["req", "-subj", &subj];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr]);
        run(&a);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }
    // Mosquitto may read them after dropping root.
    use std::os::unix::fs::PermissionsExt as _;
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o644));
    }
}

fn tls_site(
    dir: &std::path::Path,
    site: &str,
    port: u16,
    client_cert: bool,
    ca: &str,
) -> MqttConfig {
    let certs = if client_cert {
        "client_cert = \"client.pem\"\nclient_key = \"client.key\"\n"
    } else {
        ""
    };
    let text = format!(
        "{header}{lane}[storage]\ndata_dir = \"data\"\n[uplinks.mqtt]\nurl = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{ca}\"\n{certs}keep_alive = \"5s\"\nmax_inflight = 20\n",
        header = support::site_header(site),
        lane = one_lane(&format!("127.0.0.1:{}", free_port())),
    );
    let path = dir.join(format!("{site}.toml"));
    std::fs::write(&path, text).unwrap();
    let plan = ecogate::config::load(&path).unwrap_or_else(|d| panic!("{d}"));
    let m = plan.mqtt.as_ref().unwrap();
    assert_eq!(m.keep_alive, Duration::from_secs(5));
    assert_eq!(m.max_inflight, 20);
    let mut c = MqttConfig::from_plan(m, site).unwrap();
    c.reconnect_delay = Duration::from_millis(200);
    c
}

#[tokio::test]
async fn tls_with_a_client_certificate_the_broker_requires() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let tls_port = free_port();
    let cdir = certs.path().to_path_buf();
    let broker = Broker::start_with(move |_| {
        format!(
            "listener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\nrequire_certificate true\n",
            cdir.display()
        )
    });
    let site = unique_site("tls");
    // The test listens on the plain listener of the same broker.
    let mut sub = Sub::on_port(
        broker.port,
        &format!("{site}-sub"),
        false,
        &[format!("ecogate/v1/{site}/#")],
    )
    .await;

    // Without a client certificate the broker refuses the connection: never online.
    let nocert = unique_site("tls-nocert");
    let data = tempfile::tempdir().unwrap();
    let cfg = tls_site(certs.path(), &nocert, tls_port, false, "ca.pem");
    let b = MqttBridge::start(
        cfg,
        &nocert,
        Ledger::open(data.path()).unwrap(),
        vec![],
        vec![],
        data.path(),
    )
    .await
    .unwrap();
    // A CA that did not sign the server certificate: refused by the gateway.
    let wrong = unique_site("tls-wrongca");
    let data2 = tempfile::tempdir().unwrap();
    let cfg = tls_site(certs.path(), &wrong, tls_port, true, "client.pem");
    let b2 = MqttBridge::start(
        cfg,
        &wrong,
        Ledger::open(data2.path()).unwrap(),
        vec![],
        vec![],
        data2.path(),
    )
    .await
    .unwrap();

    let data3 = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(data3.path()).unwrap();
    let cfg = tls_site(certs.path(), &site, tls_port, true, "ca.pem");
    let bridge = MqttBridge::start(cfg, &site, ledger.clone(), vec![], vec![], data3.path())
        .await
        .unwrap();
    sub.wait_for("/status", |v| v["state"] == "online").await;
    let r = ledger
        .append(
            ecogate::ledger::events::EventBody::Alarm(ecogate::ledger::events::Alarm {
                source: "tls".into(),
                code: "over_tls".into(),
                message: String::new(),
                active: true,
                lane: None,
            }),
            Vec::new(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let m = sub.wait_for("/events/alarm", |_| true).await;
    assert_eq!(m.json()["id"], r.id.as_str());

    let mut others = Sub::on_port(
        broker.port,
        &format!("{site}-others"),
        false,
        &[
            format!("ecogate/v1/{nocert}/#"),
            format!("ecogate/v1/{wrong}/#"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if let Ok(m) = others.rx.try_recv() {
        panic!(
            "a bridge without valid TLS credentials got through: {}",
            m.topic
        );
    }
    drop(b);
    drop(b2);
    bridge.shutdown().await;
}

#[test]
fn tls_files_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
    let text = format!(
        "{header}{lane}[uplinks.mqtt]\nurl = \"mqtts://127.0.0.1:8883\"\nca_file = \"ca.pem\"\n",
        header = support::site_header("tlsbad"),
        lane = one_lane(&format!("127.0.0.1:{}", free_port())),
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, text).unwrap();
    let plan = ecogate::config::load(&path).unwrap();
    let err = MqttConfig::from_plan(plan.mqtt.as_ref().unwrap(), "tlsbad").unwrap_err();
    assert!(err.to_string().contains("not a PEM file"), "{err}");
    assert!(err.to_string().contains("ca.pem"), "{err}");
}

#[test]
fn severity_table_in_docs_matches_the_code() {
    let doc = std::fs::read_to_string("docs/mqtt.md").unwrap();
    for (code, sev) in ecogate::alarm::SEVERITIES {
        let name = serde_json::to_value(sev).unwrap();
        let row = format!("| `{code}` | {} |", name.as_str().unwrap());
        assert!(doc.contains(&row), "docs/mqtt.md lacks the row {row}");
    }
    let rows = doc
        .lines()
        .filter(|l| {
            l.starts_with("| `")
                && (l.contains("| critical |")
                    || l.contains("| warning |")
                    || l.contains("| info |"))
        })
        .count();
    assert_eq!(
        rows,
        ecogate::alarm::SEVERITIES.len(),
        "docs list codes the code does not"
    );
}
