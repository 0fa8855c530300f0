//! UPS driver against the Q1 simulator on loopback: debounced on-battery, battery low,
//! offline after missed polls, recovery, noisy replies.

use std::net::SocketAddr;
use std::time::Duration;

use ecogate_drivers::sim::stream_faults::Faults;
use ecogate_drivers::sim::ups::UpsSim;
use ecogate_drivers::ups::{self, UpsSettings};
use ecogate_drivers::{Address, DeviceEvent, EventKind, UpsStatus};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(15);

fn addr(a: SocketAddr) -> Address {
    format!("serial-over-tcp://{a}").parse().unwrap()
}

fn settings(on_battery_polls: u32) -> UpsSettings {
    UpsSettings {
        poll_interval_ms: 40,
        reply_timeout_ms: 1000,
        on_battery_polls,
        offline_after_polls: 3,
        report_every_ms: 0,
        link: ecogate_drivers::stream::LinkSettings {
            connect_timeout_ms: 500,
            reconnect_initial_ms: 20,
            reconnect_max_ms: 100,
        },
        ..UpsSettings::default()
    }
}

async fn next_ups(rx: &mut mpsc::Receiver<DeviceEvent>) -> UpsStatus {
    loop {
        let ev = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .expect("no UPS event in time")
            .expect("driver ended");
        if let EventKind::Ups(s) = ev.kind {
            return s;
        }
    }
}

async fn next_link(rx: &mut mpsc::Receiver<DeviceEvent>) -> (bool, Option<String>) {
    loop {
        let ev = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .expect("no Link event in time")
            .expect("driver ended");
        if let EventKind::Link { online, error } = ev.kind {
            return (online, error);
        }
    }
}

#[tokio::test]
async fn on_battery_is_reported_after_the_debounce_polls() {
    let (sim, a) = UpsSim::bind("127.0.0.1:0").await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    // A slow poll period keeps the "one more poll in flight" slack below one poll even when
    // the test machine is busy.
    let s = UpsSettings {
        poll_interval_ms: 150,
        ..settings(3)
    };
    let h = ups::spawn("ups", &addr(a), &s, tx).unwrap();
    let first = next_ups(&mut rx).await;
    assert!(!first.on_battery && !first.battery_low);
    assert_eq!(first.input_voltage, Some(226.0));
    assert!(h.health.borrow().online);

    let before = sim.polls();
    sim.set_on_battery(true);
    let s = next_ups(&mut rx).await;
    let polls = sim.polls() - before;
    assert!(s.on_battery, "{s:?}");
    assert_eq!(s.input_voltage, Some(0.0));
    // Reported on the third on-battery poll; another may be in flight by the time we look.
    assert!((3..=5).contains(&polls), "reported after {polls} polls");

    sim.set_battery_low(true);
    let s = next_ups(&mut rx).await;
    assert!(s.on_battery && s.battery_low, "{s:?}");

    sim.set_battery_low(false);
    sim.set_on_battery(false);
    let s = next_ups(&mut rx).await;
    assert!(
        !s.on_battery && !s.battery_low,
        "mains return is immediate: {s:?}"
    );
}

#[tokio::test]
async fn a_blip_shorter_than_the_debounce_is_not_reported() {
    let (sim, a) = UpsSim::bind("127.0.0.1:0").await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let _h = ups::spawn("ups", &addr(a), &settings(1000), tx).unwrap();
    next_ups(&mut rx).await;
    sim.set_on_battery(true);
    let start = sim.polls();
    while sim.polls() < start + 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sim.set_on_battery(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    while let Ok(ev) = rx.try_recv() {
        if let EventKind::Ups(s) = ev.kind {
            panic!("nothing should be reported for a short transfer: {s:?}");
        }
    }
}

#[tokio::test]
async fn silence_takes_it_offline_and_it_recovers() {
    let (sim, a) = UpsSim::bind("127.0.0.1:0").await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let h = ups::spawn("ups", &addr(a), &settings(2), tx).unwrap();
    assert_eq!(next_link(&mut rx).await, (true, None));

    sim.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    let (online, error) = next_link(&mut rx).await;
    assert!(!online);
    assert!(error.unwrap().contains("Q1 reply"), "timeout named");
    assert!(!h.health.borrow().online);
    // Each timeout reopened the connection (stale-reply hazard).
    assert!(sim.connections() >= 3, "{}", sim.connections());

    sim.set_faults(Faults::default());
    assert_eq!(next_link(&mut rx).await, (true, None));
}

#[tokio::test]
async fn late_garbled_and_split_replies_still_parse() {
    let (sim, a) = UpsSim::bind("127.0.0.1:0").await.unwrap();
    sim.set_faults(Faults {
        delay: Duration::from_millis(30),
        garbage: 6,
        split: true,
        ..Faults::default()
    });
    sim.set_on_battery(true);
    let (tx, mut rx) = mpsc::channel(64);
    let h = ups::spawn("ups", &addr(a), &settings(2), tx).unwrap();
    let first = next_ups(&mut rx).await;
    assert!(!first.on_battery, "debounce holds the first poll back");
    let s = next_ups(&mut rx).await;
    assert!(s.on_battery);
    assert_eq!(h.health.borrow().errors, 0);
}

#[tokio::test]
async fn reconnects_after_a_drop() {
    let (sim, a) = UpsSim::bind("127.0.0.1:0").await.unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let _h = ups::spawn("ups", &addr(a), &settings(2), tx).unwrap();
    assert_eq!(next_link(&mut rx).await, (true, None));
    sim.disconnect();
    let before = sim.polls();
    while sim.polls() < before + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sim.connections() >= 2);
}
