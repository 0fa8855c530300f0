//! Scale driver against the scale simulator on loopback: one stable weighing per vehicle in
//! every format, through garbage and split frames, and reconnection after drops and silence.

use std::net::SocketAddr;
use std::time::Duration;

use ecogate_drivers::scale::{self, ScaleFormat, ScaleSettings, StabilitySettings};
use ecogate_drivers::sim::scale::{ScaleSim, ScaleSimConfig, Segment};
use ecogate_drivers::sim::stream_faults::Faults;
use ecogate_drivers::{Address, DeviceEvent, EventKind, Mass};
use tokio::sync::mpsc;

/// Generous bound on how long a scripted scenario may take; only there so a broken driver
/// fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

fn addr(a: SocketAddr) -> Address {
    format!("serial-over-tcp://{a}").parse().unwrap()
}

fn settings(format: ScaleFormat) -> ScaleSettings {
    ScaleSettings {
        format,
        idle_timeout_ms: 1000,
        max_samples_per_sec: 5,
        stability: StabilitySettings {
            hold_ms: 300,
            ..StabilitySettings::default()
        },
        link: ecogate_drivers::stream::LinkSettings {
            connect_timeout_ms: 1000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 200,
        },
        ..ScaleSettings::default()
    }
}

fn sim_config(format: ScaleFormat) -> ScaleSimConfig {
    ScaleSimConfig {
        interval: Duration::from_millis(20),
        ..ScaleSimConfig::new(format)
    }
}

#[derive(Debug, Default)]
struct Seen {
    stable: Vec<Mass>,
    cleared: usize,
    samples: usize,
    online: usize,
    offline: Vec<String>,
}

/// Collects events until `done` says so or the limit passes.
async fn collect(
    rx: &mut mpsc::Receiver<DeviceEvent>,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done(seen) {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => ev,
            _ => return,
        };
        match ev.kind {
            EventKind::Weight { mass, stable, raw } => {
                assert!(!raw.is_empty());
                if stable {
                    seen.stable.push(mass);
                } else if mass < Mass::from_kg(500) {
                    seen.cleared += 1;
                } else {
                    seen.samples += 1;
                }
            }
            EventKind::Link { online: true, .. } => seen.online += 1,
            EventKind::Link {
                online: false,
                error,
            } => seen.offline.push(error.unwrap_or_default()),
            other => panic!("unexpected event {other:?}"),
        }
    }
}

async fn two_vehicles(format: ScaleFormat, faults: Faults) {
    let (sim, a) = ScaleSim::bind("127.0.0.1:0", sim_config(format))
        .await
        .unwrap();
    sim.set_faults(faults);
    let (tx, mut rx) = mpsc::channel(256);
    let handle = scale::spawn("scale1", &addr(a), &settings(format), tx).unwrap();
    let mut seen = Seen::default();
    collect(&mut rx, &mut seen, |s| s.online >= 1).await;
    assert_eq!(seen.online, 1, "{format:?} never came online");

    let (first, second) = (Mass::from_kg(32_400), Mass::from_kg(18_020));
    let ramp = Duration::from_millis(300);
    let hold = Duration::from_millis(1200);
    let mut script = Segment::vehicle(first, ramp, hold);
    script.extend(Segment::vehicle(second, ramp, hold));
    sim.play(script);

    collect(&mut rx, &mut seen, |s| {
        s.stable.len() >= 2 && s.cleared >= 2
    })
    .await;
    while !sim.idle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything still in flight after the script ended must not be a third weighing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(ev) = rx.try_recv() {
        if let EventKind::Weight {
            stable: true, mass, ..
        } = ev.kind
        {
            seen.stable.push(mass);
        }
    }
    assert_eq!(seen.stable, vec![first, second], "{format:?}: {seen:?}");
    assert!(seen.cleared >= 2, "{format:?}: {seen:?}");
    assert!(seen.offline.is_empty(), "{format:?}: {seen:?}");
    assert!(handle.health.borrow().online);
}

#[tokio::test]
async fn a9_two_vehicles_two_weighings() {
    two_vehicles(ScaleFormat::A9, Faults::default()).await;
}

#[tokio::test]
async fn toledo_two_vehicles_two_weighings() {
    two_vehicles(ScaleFormat::Toledo, Faults::default()).await;
}

#[tokio::test]
async fn st_gs_two_vehicles_two_weighings() {
    two_vehicles(ScaleFormat::StGs, Faults::default()).await;
}

#[tokio::test]
async fn a12_two_vehicles_two_weighings() {
    two_vehicles(ScaleFormat::A12, Faults::default()).await;
}

#[tokio::test]
async fn reversed_two_vehicles_two_weighings() {
    two_vehicles(ScaleFormat::Reversed, Faults::default()).await;
}

#[tokio::test]
async fn garbage_and_split_frames_are_survived() {
    let faults = Faults {
        garbage: 5,
        split: true,
        ..Faults::default()
    };
    two_vehicles(ScaleFormat::A9, faults.clone()).await;
    two_vehicles(ScaleFormat::Toledo, faults).await;
}

#[tokio::test]
async fn reconnects_after_the_simulator_drops_the_connection() {
    let (sim, a) = ScaleSim::bind("127.0.0.1:0", sim_config(ScaleFormat::A9))
        .await
        .unwrap();
    sim.set_weight(Mass::ZERO);
    let (tx, mut rx) = mpsc::channel(256);
    let handle = scale::spawn("scale1", &addr(a), &settings(ScaleFormat::A9), tx).unwrap();
    let mut seen = Seen::default();
    collect(&mut rx, &mut seen, |s| s.online >= 1).await;
    assert_eq!(sim.connections(), 1);

    sim.disconnect();
    collect(&mut rx, &mut seen, |s| s.online >= 2).await;
    assert_eq!(seen.offline.len(), 1, "{seen:?}");
    assert_eq!(seen.online, 2, "{seen:?}");
    assert_eq!(sim.connections(), 2);

    // After reconnecting, weighing still works.
    sim.play(Segment::vehicle(
        Mass::from_kg(25_000),
        Duration::from_millis(200),
        Duration::from_millis(1000),
    ));
    collect(&mut rx, &mut seen, |s| !s.stable.is_empty()).await;
    assert_eq!(seen.stable, vec![Mass::from_kg(25_000)]);
    assert!(handle.health.borrow().errors >= 1);
}

#[tokio::test]
async fn a_silent_scale_goes_offline_and_comes_back() {
    let (sim, a) = ScaleSim::bind("127.0.0.1:0", sim_config(ScaleFormat::Toledo))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(256);
    let mut s = settings(ScaleFormat::Toledo);
    s.idle_timeout_ms = 300;
    let handle = scale::spawn("scale1", &addr(a), &s, tx).unwrap();
    let mut seen = Seen::default();
    collect(&mut rx, &mut seen, |s| s.online >= 1).await;

    sim.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    collect(&mut rx, &mut seen, |s| !s.offline.is_empty()).await;
    assert!(
        seen.offline[0].contains("no valid frame"),
        "{:?}",
        seen.offline
    );
    assert!(!handle.health.borrow().online);

    sim.set_faults(Faults::default());
    collect(&mut rx, &mut seen, |s| s.online >= 2).await;
    assert_eq!(seen.online, 2);
    // The watchdog reopened the connection rather than waiting on the dead one.
    assert!(sim.connections() >= 2);
}

#[tokio::test]
async fn garbage_only_is_offline_too() {
    // A babbling line (wrong baud rate, wrong format) must not count as alive.
    let (sim, a) = ScaleSim::bind("127.0.0.1:0", sim_config(ScaleFormat::A9))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(256);
    let mut s = settings(ScaleFormat::StGs); // indicator actually sends A9
    s.idle_timeout_ms = 300;
    let handle = scale::spawn("scale1", &addr(a), &s, tx).unwrap();
    let mut seen = Seen::default();
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Ok(ev) = rx.try_recv() {
        if let EventKind::Link { online: true, .. } = ev.kind {
            seen.online += 1;
        }
    }
    assert_eq!(seen.online, 0);
    let h = handle.health.borrow().clone();
    assert!(!h.online);
    assert!(h.errors >= 1, "{h:?}");
    drop(sim);
}

#[tokio::test]
async fn dropping_the_handle_stops_the_driver() {
    let (sim, a) = ScaleSim::bind("127.0.0.1:0", sim_config(ScaleFormat::A9))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(256);
    let handle = scale::spawn("scale1", &addr(a), &settings(ScaleFormat::A9), tx).unwrap();
    let mut seen = Seen::default();
    collect(&mut rx, &mut seen, |s| s.online >= 1).await;
    drop(handle);
    // The task owns the only event sender: the channel closes when it ends.
    let closed = tokio::time::timeout(LIMIT, async { while rx.recv().await.is_some() {} }).await;
    assert!(closed.is_ok());
    drop(sim);
}

#[tokio::test]
async fn a_repeating_script_keeps_weighing_vehicles() {
    let (sim, a) = ScaleSim::bind("127.0.0.1:0", sim_config(ScaleFormat::StGs))
        .await
        .unwrap();
    sim.set_repeat(true);
    sim.play(Segment::vehicle(
        Mass::from_kg(12_000),
        Duration::from_millis(150),
        Duration::from_millis(700),
    ));
    let (tx, mut rx) = mpsc::channel(256);
    let _h = scale::spawn("scale1", &addr(a), &settings(ScaleFormat::StGs), tx).unwrap();
    let mut seen = Seen::default();
    collect(&mut rx, &mut seen, |s| s.stable.len() >= 3).await;
    assert_eq!(seen.stable, vec![Mass::from_kg(12_000); 3]);
    assert!(seen.cleared >= 2);
}
