//! Relay/DI module driver against the simulator (127.0.0.1, ephemeral ports).

use std::time::Duration;

use ecogate_drivers::io::{self, IoModule, ModbusIoSettings};
use ecogate_drivers::sim::modbus::{BarrierModel, Fault, Framing, RelaySim, SimConfig};
use ecogate_drivers::{Command, DeviceEvent, EventKind};
use tokio::sync::mpsc;

fn settings(toml_text: &str) -> ModbusIoSettings {
    toml::from_str(toml_text).unwrap()
}

const HOST_PULSE: &str = r#"
timeout_ms = 150
poll_ms = 30
debounce_samples = 2
[outputs]
open = { coil = 0 }
close = { coil = 1 }
[pulse]
mode = "host"
off_retries = 10
"#;

async fn wait_coil(sim: &RelaySim, coil: u16, on: bool, within: Duration) -> bool {
    let until = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < until {
        if sim.coil(coil) == on {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.coil(coil) == on
}

#[tokio::test]
async fn pulse_is_switched_off_when_its_future_is_dropped() {
    let sim = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let m = IoModule::new(&sim.address(), &settings(HOST_PULSE)).unwrap();
    // Dropped 100 ms into a 5 s pulse.
    let r = tokio::time::timeout(Duration::from_millis(100), m.pulse("open", 5_000)).await;
    assert!(r.is_err(), "pulse should still have been running");
    assert!(wait_coil(&sim, 0, false, Duration::from_secs(2)).await);
    let log = sim.coil_log();
    assert_eq!(log.iter().filter(|c| c.coil == 0 && c.on).count(), 1);
    assert!(!log.last().unwrap().on);
}

#[tokio::test]
async fn pulse_is_switched_off_when_its_task_is_aborted() {
    let sim = RelaySim::start(Framing::RtuOverTcp, SimConfig::default())
        .await
        .unwrap();
    let m = IoModule::new(&sim.address(), &settings(HOST_PULSE)).unwrap();
    let task = tokio::spawn({
        let m = m.clone();
        async move { m.pulse("close", 10_000).await }
    });
    assert!(wait_coil(&sim, 1, true, Duration::from_secs(2)).await);
    task.abort();
    assert!(wait_coil(&sim, 1, false, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn off_is_sent_even_when_the_on_write_failed() {
    let sim = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let m = IoModule::new(&sim.address(), &settings(HOST_PULSE)).unwrap();
    // The module applies the ON but its reply comes too late: the gateway sees an error while
    // the relay is energised.
    sim.set_fault(Fault::Late(Duration::from_millis(400)));
    let heal = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        sim.set_fault(Fault::None);
    };
    let (r, ()) = tokio::join!(m.pulse("open", 100), heal);
    assert!(
        r.is_err(),
        "the ON reply timed out, the pulse must report it"
    );
    assert!(wait_coil(&sim, 0, false, Duration::from_secs(3)).await);
    assert!(sim.coil_log().iter().any(|c| c.coil == 0 && c.on));
}

#[tokio::test]
async fn a_silent_module_does_not_block_another() {
    let dead = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let live = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    dead.set_fault(Fault::Silent);
    let slow = settings(&HOST_PULSE.replace("timeout_ms = 150", "timeout_ms = 3000"));
    let fast = settings(HOST_PULSE);
    let (tx, _rx) = mpsc::channel(64);
    let d = io::spawn("io-dead", &dead.address(), &slow, tx.clone()).unwrap();
    let l = io::spawn("io-live", &live.address(), &fast, tx).unwrap();
    d.commands.send(Command::BarrierOpen).await.unwrap();
    d.commands.send(Command::BarrierClose).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    l.commands
        .send(Command::RelayPulse {
            output: "close".into(),
            ms: 50,
        })
        .await
        .unwrap();
    // The live module's pulse (on + off) completes long before the dead one's first timeout.
    let done = tokio::time::timeout(Duration::from_millis(2000), async {
        loop {
            let log = live.coil_log();
            if log.iter().any(|c| c.coil == 1 && c.on) && !live.coil(1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "live module's pulse was held up");
    assert!(!dead.coil(0), "the silent module never acts");
}

async fn next_input(
    rx: &mut mpsc::Receiver<DeviceEvent>,
    within: Duration,
) -> Option<(String, bool)> {
    let until = tokio::time::Instant::now() + within;
    loop {
        let left = until.checked_duration_since(tokio::time::Instant::now())?;
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(DeviceEvent {
                kind: EventKind::Input { input, active },
                ..
            })) => return Some((input, active)),
            Ok(Some(_)) => continue,
            _ => return None,
        }
    }
}

const BARRIER: &str = r#"
timeout_ms = 300
poll_ms = 20
debounce_samples = 2
[outputs]
open = { coil = 0 }
close = { coil = 1 }
[inputs]
loop = { di = 0, polarity = "nc" }
limit_open = { di = 1 }
limit_closed = { di = 2 }
[pulse]
mode = "device"
[barrier]
pulse_ms = 300
close_inhibit = "loop"
"#;

fn barrier_sim() -> SimConfig {
    SimConfig {
        barrier: Some(BarrierModel {
            open_coil: 0,
            close_coil: 1,
            limit_open_di: 1,
            limit_closed_di: 2,
            travel: Duration::from_millis(150),
            auto_close: Some(Duration::from_millis(400)),
        }),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn barrier_state_follows_limit_switches_and_loop_polarity() {
    let sim = RelaySim::start(Framing::RtuOverTcp, barrier_sim())
        .await
        .unwrap();
    // NC loop detector: contact closed (level high) while the lane is empty.
    sim.set_input(0, true);
    let (tx, mut rx) = mpsc::channel(64);
    let h = io::spawn("io1", &sim.address(), &settings(BARRIER), tx).unwrap();
    let mut initial = Vec::new();
    for _ in 0..3 {
        initial.push(next_input(&mut rx, Duration::from_secs(2)).await.unwrap());
    }
    initial.sort();
    assert_eq!(
        initial,
        vec![
            ("limit_closed".to_string(), true),
            ("limit_open".to_string(), false),
            ("loop".to_string(), false),
        ]
    );
    h.commands.send(Command::BarrierOpen).await.unwrap();
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("limit_closed".into(), false))
    );
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("limit_open".into(), true))
    );
    // Vehicle on the loop: NC contact opens → active.
    sim.set_input(0, false);
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("loop".into(), true))
    );
    // The device-timed flash went out, not an ON/OFF pair from the gateway.
    assert!(sim
        .frames()
        .iter()
        .any(|f| f[..6] == [0x01, 0x05, 0x02, 0x00, 0x00, 0x03]));
    // Auto-close of the model brings it down.
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("limit_open".into(), false))
    );
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("limit_closed".into(), true))
    );
}

#[tokio::test]
async fn close_is_refused_while_the_loop_is_occupied() {
    let sim = RelaySim::start(Framing::Tcp, barrier_sim()).await.unwrap();
    sim.set_input(0, false); // NC loop open = occupied
    let (tx, mut rx) = mpsc::channel(64);
    let h = io::spawn("io1", &sim.address(), &settings(BARRIER), tx).unwrap();
    let mut seen_loop = false;
    for _ in 0..3 {
        if next_input(&mut rx, Duration::from_secs(2)).await == Some(("loop".into(), true)) {
            seen_loop = true;
        }
    }
    assert!(seen_loop);
    h.commands.send(Command::BarrierClose).await.unwrap();
    h.commands
        .send(Command::RelayPulse {
            output: "open".into(),
            ms: 100,
        })
        .await
        .unwrap();
    // The pulse after the refused close proves the worker got past it.
    assert!(wait_coil(&sim, 0, true, Duration::from_secs(2)).await);
    assert!(!sim.coil_log().iter().any(|c| c.coil == 1));
}

#[tokio::test]
async fn short_glitches_are_debounced_and_link_state_is_reported() {
    let sim = RelaySim::start(Framing::Tcp, SimConfig::default())
        .await
        .unwrap();
    let s = settings(
        r#"
timeout_ms = 100
poll_ms = 40
debounce_samples = 3
[inputs]
loop = { di = 4 }
"#,
    );
    let (tx, mut rx) = mpsc::channel(64);
    let h = io::spawn("io1", &sim.address(), &s, tx).unwrap();
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("loop".into(), false))
    );
    // A 15 ms chatter is shorter than one poll period: never three equal samples.
    sim.set_input(4, true);
    tokio::time::sleep(Duration::from_millis(15)).await;
    sim.set_input(4, false);
    assert_eq!(next_input(&mut rx, Duration::from_millis(400)).await, None);
    sim.set_input(4, true);
    assert_eq!(
        next_input(&mut rx, Duration::from_secs(2)).await,
        Some(("loop".into(), true))
    );
    sim.set_fault(Fault::Silent);
    let mut offline = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until && !offline {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            if let EventKind::Link {
                online: false,
                error,
            } = ev.kind
            {
                assert!(error.is_some());
                offline = true;
            }
        }
    }
    assert!(offline);
    assert!(!h.health.borrow().online);
    sim.set_fault(Fault::None);
    let mut back = false;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until && !back {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            back = matches!(ev.kind, EventKind::Link { online: true, .. });
        }
    }
    assert!(back);
}
