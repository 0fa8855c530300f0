//! Camera ingest (VZ, Hikvision, generic JSON) and ISAPI control, all on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use ecogate_drivers::camera::{self, generic, hik, vz, IngestRegistry};
use ecogate_drivers::sim::camera::{hik_anpr_xml, multipart_body, CameraSim, IsapiSim, VzPlate};
use ecogate_drivers::{Address, Command, DeviceEvent, EventKind, ImageKind, PlateColor, PlateRead};
use tokio::sync::mpsc;

async fn serve(reg: IngestRegistry) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(l, camera::ingest_router(reg)).await.unwrap();
    });
    addr
}

fn ingest(id: &str) -> Address {
    format!("ingest:{id}").parse().unwrap()
}

/// Events that arrive within `within`, filtered to plate reads.
async fn plates(rx: &mut mpsc::Receiver<DeviceEvent>, within: Duration) -> Vec<PlateRead> {
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + within;
    while let Ok(Some(ev)) = tokio::time::timeout_at(until, rx.recv()).await {
        if let EventKind::Plate(p) = ev.kind {
            out.push(p);
        }
    }
    out
}

struct Vz {
    sim: CameraSim,
    rx: mpsc::Receiver<DeviceEvent>,
    handle: ecogate_drivers::DeviceHandle,
    reg: IngestRegistry,
}

async fn vz_camera(settings: vz::VzSettings) -> Vz {
    let reg = IngestRegistry::new();
    let (tx, rx) = mpsc::channel(64);
    let handle = vz::spawn("cam1", &ingest("gate1-in"), &settings, tx, &reg).unwrap();
    let addr = serve(reg.clone()).await;
    Vz {
        sim: CameraSim::new(format!("http://{addr}/ingest/vz/gate1-in")),
        rx,
        handle,
        reg,
    }
}

fn quick() -> vz::VzSettings {
    vz::VzSettings {
        comet_hold_ms: 0,
        ..Default::default()
    }
}

#[tokio::test]
async fn offline_replay_sent_twice_is_one_event_and_is_acknowledged() {
    let mut c = vz_camera(quick()).await;
    let mut p = VzPlate::new("豫A12345", 21085);
    p.offline = true;
    p.sec = 1_686_299_994;
    let r1 = c.sim.vz_plate(&p).await.unwrap();
    let r2 = c.sim.vz_plate(&p).await.unwrap();
    assert_eq!((r1.status, r2.status), (200, 200));
    for r in [&r1, &r2] {
        let ack = &r.json()["Response_AlarmInfoPlate"]["ContinuePushOffline"];
        assert_eq!(ack["plateid"], 21085);
        assert_eq!(ack["continue"], 1);
    }
    let got = plates(&mut c.rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].plate, "豫A12345");
    assert_eq!(got[0].color, PlateColor::Yellow);
    assert_eq!(got[0].source_id.as_deref(), Some("21085"));
    assert_eq!(got[0].captured_at.unwrap().timestamp(), 1_686_299_994);
}

#[tokio::test]
async fn repeats_of_one_plate_within_the_window_are_one_event() {
    let mut c = vz_camera(quick()).await;
    let now = chrono::Utc::now().timestamp();
    // Two trigger types of one pass (video + virtual loop), one second apart.
    let mut a = VzPlate::new("豫A12345", 1);
    a.sec = now;
    a.trigger = 1;
    let mut b = VzPlate::new("豫A12345", 2);
    b.sec = now + 1;
    let other = VzPlate::new("豫B54321", 3);
    for p in [&a, &b, &other] {
        assert_eq!(c.sim.vz_plate(p).await.unwrap().status, 200);
    }
    let got: Vec<String> = plates(&mut c.rx, Duration::from_millis(300))
        .await
        .into_iter()
        .map(|p| p.plate)
        .collect();
    assert_eq!(got, vec!["豫A12345".to_string(), "豫B54321".to_string()]);
    // Same plate again, well outside the 5 s window by camera time: a new pass.
    let mut later = VzPlate::new("豫A12345", 4);
    later.sec = now + 60;
    c.sim.vz_plate(&later).await.unwrap();
    assert_eq!(plates(&mut c.rx, Duration::from_millis(300)).await.len(), 1);
}

#[tokio::test]
async fn malformed_pushes_get_400_and_no_event() {
    let mut c = vz_camera(quick()).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "application/json",
            br#"{"AlarmInfoPlate":{"result":"#.to_vec(),
        ),
        (
            "application/json",
            br#"{"AlarmInfoPlate":{"result":{}}}"#.to_vec(),
        ),
        (
            "application/json",
            br#"{"AlarmInfoPlate":{"result":{"PlateResult":{"colorType":1}}}}"#.to_vec(),
        ),
        ("application/json", br#"{"Something":1}"#.to_vec()),
        ("image/jpeg", vec![0xFF, 0xD8, 0xFF, 0xD9]),
    ];
    for (ct, body) in cases {
        let r = c.sim.post_raw(ct, body.clone()).await.unwrap();
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(!r.body.trim().is_empty(), "400 must say why");
    }
    assert!(c.sim.replies()[2].body.contains("license"));
    assert!(plates(&mut c.rx, Duration::from_millis(200))
        .await
        .is_empty());
    assert!(c.handle.health.borrow().errors >= 5);
    let unknown = CameraSim::new(c.sim.url().replace("gate1-in", "nope"));
    let r = unknown.vz_heartbeat().await.unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn images_are_decoded_and_labelled() {
    let mut c = vz_camera(quick()).await;
    let mut p = VzPlate::new("豫A12345", 7);
    p.image_bytes = 300_000;
    assert_eq!(c.sim.vz_plate(&p).await.unwrap().status, 200);
    let got = plates(&mut c.rx, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1);
    let imgs = &got[0].images;
    assert_eq!(imgs.len(), 2);
    let scene = imgs.iter().find(|i| i.kind == ImageKind::Scene).unwrap();
    assert_eq!(scene.jpeg.len(), 300_000);
    assert_eq!(&scene.jpeg[..2], &[0xFF, 0xD8]);
    assert!(imgs.iter().any(|i| i.kind == ImageKind::Plate));
}

#[tokio::test]
async fn commands_ride_on_heartbeat_replies() {
    let settings = vz::VzSettings {
        comet_hold_ms: 0,
        outputs: [("light".to_string(), 2u8)].into_iter().collect(),
        close_io: Some(1),
        ..Default::default()
    };
    let c = vz_camera(settings).await;
    // Idle poll: a neutral body.
    let idle = c.sim.vz_heartbeat().await.unwrap();
    assert_eq!(idle.json(), serde_json::json!({"status": "ok"}));
    c.handle.commands.send(Command::BarrierOpen).await.unwrap();
    c.handle
        .commands
        .send(Command::RelayPulse {
            output: "light".into(),
            ms: 700,
        })
        .await
        .unwrap();
    c.handle.commands.send(Command::BarrierClose).await.unwrap();
    // Commands and passthrough bytes come through separate queues; let the commands land first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let led = Bytes::from_static(&[0x00, 0x64, 0xFF, 0xFF, 0x62, 0x01]);
    c.reg
        .vz_passthrough("cam1")
        .unwrap()
        .send(vz::SerialOut {
            channel: None,
            data: led.clone(),
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r1 = c.sim.vz_heartbeat().await.unwrap().json();
    let o = &r1["Response_AlarmInfoPlate"];
    assert_eq!(o["info"], "ok");
    assert_eq!(
        o["ivs_ioctrl"],
        serde_json::json!({"io": 2, "value": 2, "delay": 700})
    );
    // The close pulse conflicts with the light pulse (one ivs_ioctrl per reply): next reply.
    assert!(o.get("serialData").is_none());
    let r2 = c.sim.vz_heartbeat().await.unwrap().json();
    let o2 = &r2["Response_AlarmInfoPlate"];
    assert_eq!(
        o2["ivs_ioctrl"],
        serde_json::json!({"io": 1, "value": 2, "delay": 500})
    );
    let sd = &o2["serialData"][0];
    assert_eq!(sd["serialChannel"], 0);
    assert_eq!(sd["dataLen"], 6);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sd["data"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, led.to_vec());
    assert_eq!(
        c.sim.vz_heartbeat().await.unwrap().json(),
        serde_json::json!({"status": "ok"})
    );
}

#[tokio::test]
async fn comet_poll_is_held_until_a_command_arrives() {
    let settings = vz::VzSettings {
        comet_hold_ms: 5_000,
        ..Default::default()
    };
    let c = vz_camera(settings).await;
    let cmds = c.handle.commands.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cmds.send(Command::BarrierOpen).await.unwrap();
    });
    let r = c.sim.vz_heartbeat().await.unwrap().json();
    assert_eq!(r["Response_AlarmInfoPlate"]["info"], "ok");
}

#[tokio::test]
async fn a_quick_lane_decision_rides_on_the_plate_reply() {
    let settings = vz::VzSettings {
        reply_wait_ms: 2_000,
        comet_hold_ms: 0,
        ..Default::default()
    };
    let mut c = vz_camera(settings).await;
    let cmds = c.handle.commands.clone();
    let lane = tokio::spawn(async move {
        while let Some(ev) = c.rx.recv().await {
            if let EventKind::Plate(p) = ev.kind {
                if p.plate == "豫A12345" {
                    cmds.send(Command::BarrierOpen).await.unwrap();
                    return;
                }
            }
        }
    });
    let r = c
        .sim
        .vz_plate(&VzPlate::new("豫A12345", 99))
        .await
        .unwrap()
        .json();
    let o = &r["Response_AlarmInfoPlate"];
    assert_eq!(o["info"], "ok");
    assert_eq!(o["plateid"], 99);
    assert!(o.get("ContinuePushOffline").is_none());
    lane.await.unwrap();
}

#[tokio::test]
async fn io_inputs_and_link_state_from_pushes() {
    let settings = vz::VzSettings {
        inputs: [("loop".to_string(), 1u8)].into_iter().collect(),
        ..quick()
    };
    let mut c = vz_camera(settings).await;
    c.sim.vz_heartbeat().await.unwrap();
    c.sim.vz_gio(1, 1).await.unwrap();
    c.sim.vz_gio(3, 1).await.unwrap(); // not mapped: ignored
    c.sim.vz_gio(1, 0).await.unwrap();
    let mut kinds = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), c.rx.recv()).await {
        kinds.push(match ev.kind {
            EventKind::Link { online, .. } => format!("link:{online}"),
            EventKind::Input { input, active } => format!("{input}:{active}"),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(kinds, vec!["link:true", "loop:true", "loop:false"]);
    assert!(c.handle.health.borrow().online);
}

#[tokio::test]
async fn silence_marks_the_camera_offline() {
    let settings = vz::VzSettings {
        offline_after_s: 0.2,
        ..quick()
    };
    let mut c = vz_camera(settings).await;
    c.sim.vz_heartbeat().await.unwrap();
    let mut seen = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(600), c.rx.recv()).await {
        if let EventKind::Link { online, .. } = ev.kind {
            seen.push(online);
        }
    }
    assert_eq!(seen, vec![true, false]);
    assert!(!c.handle.health.borrow().online);
}

#[tokio::test]
async fn dropping_the_handle_unregisters_the_ingest_id() {
    let c = vz_camera(quick()).await;
    assert_eq!(c.reg.ids(), vec!["vz/gate1-in".to_string()]);
    drop(c.handle);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(c.reg.ids().is_empty());
    assert_eq!(c.sim.vz_heartbeat().await.unwrap().status, 404);
}

// ---------------------------------------------------------------- Hikvision

async fn hik_camera(
    settings: hik::HikSettings,
) -> (
    CameraSim,
    mpsc::Receiver<DeviceEvent>,
    ecogate_drivers::DeviceHandle,
) {
    let reg = IngestRegistry::new();
    let (tx, rx) = mpsc::channel(64);
    let h = hik::spawn("cam2", &ingest("gate2"), &settings, tx, &reg).unwrap();
    let addr = serve(reg).await;
    (
        CameraSim::new(format!("http://{addr}/ingest/hik/gate2")),
        rx,
        h,
    )
}

#[tokio::test]
async fn hik_multipart_push_with_uuid_dedupe() {
    let (sim, mut rx, _h) = hik_camera(hik::HikSettings::default()).await;
    let uuid = "a0fe72d4-3652-464a-aebd-3f9190010236";
    assert_eq!(
        sim.hik_anpr("京A12345", uuid, 50_000).await.unwrap().status,
        200
    );
    assert_eq!(
        sim.hik_anpr("京A12345", uuid, 50_000).await.unwrap().status,
        200
    );
    let got = plates(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1);
    let p = &got[0];
    assert_eq!(p.plate, "京A12345");
    assert_eq!(p.color, PlateColor::Blue);
    assert_eq!(p.confidence, 99);
    assert_eq!(p.source_id.as_deref(), Some(uuid));
    assert_eq!(
        p.captured_at.unwrap().to_rfc3339(),
        "2024-05-07T09:48:03.847+00:00"
    );
    let mut kinds: Vec<(ImageKind, usize)> =
        p.images.iter().map(|i| (i.kind, i.jpeg.len())).collect();
    kinds.sort_by_key(|k| k.1);
    assert_eq!(
        kinds,
        vec![(ImageKind::Plate, 2564), (ImageKind::Scene, 50_000)]
    );
}

#[tokio::test]
async fn hik_plate_only_push_waits_for_the_full_one() {
    let (sim, mut rx, _h) = hik_camera(hik::HikSettings {
        more_data_wait_ms: 2_000,
        ..Default::default()
    })
    .await;
    let uuid = "11111111-2222-3333-4444-555555555555";
    let xml = hik_anpr_xml("京B00001", uuid, "yellow", true);
    let b = "bnd";
    let body = multipart_body(
        b,
        &[("xml_file", Some("anpr.xml"), "text/xml", xml.as_bytes())],
    );
    let r = sim
        .post_raw(&format!("multipart/form-data; boundary={b}"), body)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    sim.hik_anpr("京B00001", uuid, 10_000).await.unwrap();
    let got = plates(&mut rx, Duration::from_millis(2_500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].images.len(), 2, "the full push with pictures wins");
}

#[tokio::test]
async fn hik_bare_xml_other_namespaces_and_bad_bodies() {
    let (sim, mut rx, _h) = hik_camera(hik::HikSettings::default()).await;
    let old = r#"<?xml version="1.0"?><hik:EventNotificationAlert xmlns:hik="http://www.hikvision.com/ver10/XMLSchema">
      <hik:eventType>ANPR</hik:eventType><hik:ANPR><hik:originalLicensePlate>冀C99999</hik:originalLicensePlate>
      <hik:confidenceLevel>87</hik:confidenceLevel><hik:plateColor>yellow</hik:plateColor></hik:ANPR>
      <hik:UUID>u-1</hik:UUID></hik:EventNotificationAlert>"#;
    assert_eq!(
        sim.post_raw("application/xml", old.as_bytes().to_vec())
            .await
            .unwrap()
            .status,
        200
    );
    let heartbeat = r#"<EventNotificationAlert><eventType>videoloss</eventType><eventState>inactive</eventState></EventNotificationAlert>"#;
    assert_eq!(
        sim.post_raw("text/xml", heartbeat.as_bytes().to_vec())
            .await
            .unwrap()
            .status,
        200
    );
    let bad = [
        (
            "application/xml",
            b"<EventNotificationAlert><eventType>ANPR".to_vec(),
        ),
        ("application/json", b"{}".to_vec()),
        (
            "multipart/form-data; boundary=x",
            b"--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnot xml\r\n--x--\r\n"
                .to_vec(),
        ),
    ];
    for (ct, body) in bad {
        let r = sim.post_raw(ct, body).await.unwrap();
        assert_eq!(r.status, 400, "{ct}: {}", r.body);
    }
    let got = plates(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].plate, "冀C99999");
    assert_eq!(got[0].color, PlateColor::Yellow);
    assert_eq!(got[0].confidence, 87);
}

fn password_file(pass: &str) -> String {
    let p = std::env::temp_dir().join(format!(
        "ecogate-test-pw-{}-{}",
        std::process::id(),
        pass.len()
    ));
    std::fs::write(&p, format!("{pass}\n")).unwrap();
    p.to_string_lossy().into_owned()
}

#[tokio::test]
async fn isapi_barrier_and_relay_pulse_with_digest() {
    let isapi = IsapiSim::start("admin", "Hik12345").await.unwrap();
    let settings = hik::HikSettings {
        control: Some(format!("http://{}", isapi.addr())),
        password_file: Some(password_file("Hik12345")),
        outputs: [("open".to_string(), 1u32)].into_iter().collect(),
        ..Default::default()
    };
    let (_sim, _rx, h) = hik_camera(settings).await;
    h.commands.send(Command::BarrierOpen).await.unwrap();
    h.commands
        .send(Command::RelayPulse {
            output: "open".into(),
            ms: 50,
        })
        .await
        .unwrap();
    h.commands.send(Command::BarrierClose).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while isapi.requests().len() < 4 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reqs = isapi.requests();
    let seen: Vec<(String, String, bool)> = reqs
        .iter()
        .map(|r| {
            (
                r.method.clone(),
                r.path.clone(),
                r.body.contains("open") || r.body.contains("high"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "PUT".into(),
                "/ISAPI/Parking/channels/1/barrierGate".into(),
                true
            ),
            (
                "PUT".into(),
                "/ISAPI/System/IO/outputs/1/trigger".into(),
                true
            ),
            (
                "PUT".into(),
                "/ISAPI/System/IO/outputs/1/trigger".into(),
                false
            ),
            (
                "PUT".into(),
                "/ISAPI/Parking/channels/1/barrierGate".into(),
                false
            ),
        ]
    );
    assert!(reqs[3].body.contains("<ctrlMode>close</ctrlMode>"));
    // One challenge for the first request; the nonce is reused after that.
    assert_eq!(isapi.unauthorized(), 1);
}

#[tokio::test]
async fn isapi_wrong_password_backs_off_instead_of_hammering() {
    let isapi = IsapiSim::start("admin", "right").await.unwrap();
    let settings = hik::HikSettings {
        control: Some(format!("http://{}", isapi.addr())),
        password_file: Some(password_file("wrong-password")),
        ..Default::default()
    };
    let (_sim, _rx, h) = hik_camera(settings).await;
    for _ in 0..6 {
        h.commands.send(Command::BarrierOpen).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(isapi.requests().is_empty());
    // Challenge + one refused answer; the other five commands never reach the camera.
    assert_eq!(isapi.unauthorized(), 2);
    assert!(h
        .health
        .borrow()
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("401"));
}

// ---------------------------------------------------------------- generic JSON

#[tokio::test]
async fn generic_json_profile_maps_fields() {
    let settings: generic::JsonSettings = toml::from_str(
        r#"
plate = "/StructureInfo/ObjInfo/VehicleInfoList/0/PlateAttributeInfo/PlateNo"
color = "/StructureInfo/ObjInfo/VehicleInfoList/0/PlateAttributeInfo/Color"
color_map = { "2" = "yellow", "0" = "blue" }
time = "/StructureInfo/PassTime"
time_format = "%Y-%m-%d %H:%M:%S"
id = "/StructureInfo/RecordId"
images = [{ path = "/StructureInfo/ImageInfoList/0/Data", kind = "scene" }]
reply = '{"Response":{"StatusCode":0}}'
strip_control_chars = true
"#,
    )
    .unwrap();
    let reg = IngestRegistry::new();
    let (tx, mut rx) = mpsc::channel(64);
    let _h = generic::spawn("cam3", &ingest("unv"), &settings, tx, &reg).unwrap();
    let addr = serve(reg).await;
    let sim = CameraSim::new(format!("http://{addr}/ingest/json/unv"));
    let jpeg = base64::engine::general_purpose::STANDARD.encode([0xFF, 0xD8, 1, 2, 3, 0xFF, 0xD9]);
    let body = |id: u32, plate: &str| {
        format!(
            "{{\"StructureInfo\":{{\"RecordId\":{id},\"PassTime\":\"2024-05-07 17:48:03\",\u{1}\
             \"ObjInfo\":{{\"VehicleInfoList\":[{{\"PlateAttributeInfo\":{{\"PlateNo\":\"{plate}\",\"Color\":2}}}}]}},\
             \"ImageInfoList\":[{{\"Data\":\"{jpeg}\"}}]}}}}"
        )
        .into_bytes()
    };
    let r = sim
        .post_raw("application/json", body(1, "豫A12345"))
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, r#"{"Response":{"StatusCode":0}}"#)
    );
    sim.post_raw("application/json", body(1, "豫A12345"))
        .await
        .unwrap();
    let r = sim
        .post_raw("application/json", br#"{"StructureInfo":{}}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("plate"));
    let got = plates(&mut rx, Duration::from_millis(300)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].plate, "豫A12345");
    assert_eq!(got[0].color, PlateColor::Yellow);
    assert_eq!(got[0].source_id.as_deref(), Some("1"));
    assert_eq!(
        got[0].captured_at.unwrap().to_rfc3339(),
        "2024-05-07T09:48:03+00:00"
    );
    assert_eq!(got[0].images[0].jpeg.len(), 7);
}

#[test]
fn vz_clone_spellings_parse() {
    let body = r#"{"AlarmInfoPlate":{"seriaIno":"x","result":{"PlateResult":{
        "license":"_无_","platecolor":"蓝","confidence":"88.6","recotime":"2019-10-22 10:12:13",
        "plateid":"17","isoffline":"1"}}}}"#;
    let m = vz::parse_push(body.as_bytes(), true, 8).unwrap();
    let vz::VzMessage::Plate { read, plateid } = m else {
        panic!("not a plate")
    };
    assert_eq!(read.plate, "");
    assert_eq!(read.color, PlateColor::Blue);
    assert_eq!(read.confidence, 88);
    assert_eq!(plateid, Some(17));
    assert!(read.offline_replay);
    assert_eq!(
        read.captured_at.unwrap().to_rfc3339(),
        "2019-10-22T02:12:13+00:00"
    );
}
