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

/// A local serial port keeps bytes that arrived while the driver had it closed (a late reply
/// to a poll that timed out). The driver clears them when it (re)opens the port, so they are
/// not taken for the answer to its next poll.
#[cfg(unix)]
#[tokio::test]
async fn stale_bytes_in_a_serial_port_are_not_taken_for_the_reply() {
    use ecogate_drivers::ups::{encode_q1, Q1Flags, Q1Reply};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPort;

    let (mut master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("pty slave has a path");
    // What a UPS on battery with a low battery said to a poll nobody waits for any more.
    let stale = encode_q1(&Q1Reply {
        input_voltage: Some(0.0),
        flags: Q1Flags {
            utility_fail: true,
            battery_low: true,
            ..Q1Flags::default()
        },
        ..Q1Reply::default()
    });
    master.write_all(&stale).await.unwrap();
    // The bytes must sit in the port's input queue before the driver opens it.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while slave.bytes_to_read().unwrap_or(0) < stale.len() as u32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stale bytes never reached the port"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let address: Address = format!("serial://{path}?baud=2400").parse().unwrap();
    let s = UpsSettings {
        poll_interval_ms: 100,
        on_battery_polls: 1,
        battery_low_polls: 1,
        ..settings(1)
    };
    let (tx, mut rx) = mpsc::channel(64);
    let _h = ups::spawn("ups", &address, &s, tx).unwrap();
    // The UPS answers every poll: on mains, battery fine.
    let fresh = encode_q1(&Q1Reply {
        input_voltage: Some(226.0),
        ..Q1Reply::default()
    });
    let ups = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let n = match master.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            seen.extend_from_slice(&buf[..n]);
            while let Some(end) = seen.windows(3).position(|w| w == b"Q1\r") {
                seen.drain(..end + 3);
                if master.write_all(&fresh).await.is_err() {
                    return;
                }
            }
        }
    });
    let first = next_ups(&mut rx).await;
    ups.abort();
    drop(slave);
    assert!(
        !first.on_battery && !first.battery_low,
        "the stale reply was taken for the answer: {first:?}"
    );
    assert_eq!(first.input_voltage, Some(226.0));
}
