//! `scale-modbus` against the register simulator on 127.0.0.1 (ephemeral ports).

use std::time::Duration;

use ecogate_drivers::scale::modbus::{self, ModbusScaleSettings, StatusSettings, WordOrder};
use ecogate_drivers::scale::StabilitySettings;
use ecogate_drivers::sim::modbus::{Fault, Framing};
use ecogate_drivers::sim::modbus_regs::{RegSim, RegSimConfig};
use ecogate_drivers::{DeviceEvent, EventKind, Mass};
use tokio::sync::mpsc;

const WEIGHT_REG: u16 = 4;

fn words(kg: i32, order: WordOrder) -> [u16; 2] {
    let v = kg as u32;
    let (hi, lo) = ((v >> 16) as u16, v as u16);
    match order {
        WordOrder::HiLo => [hi, lo],
        WordOrder::LoHi => [lo, hi],
    }
}

fn settings(order: WordOrder) -> ModbusScaleSettings {
    ModbusScaleSettings {
        timeout_ms: 150,
        poll_ms: 20,
        weight_register: WEIGHT_REG,
        word_order: order,
        offline_after: 2,
        max_samples_per_sec: 5,
        stability: StabilitySettings {
            min_weight: Mass::from_kg(500),
            division: Mass::from_kg(20),
            equal_count: 0,
            window_ms: 400,
            hold_ms: 300,
            ..StabilitySettings::default()
        },
        ..ModbusScaleSettings::default()
    }
}

/// Deterministic noise in [-10, 10] kg: within one 20 kg division.
struct Noise(u32);

impl Noise {
    fn next(&mut self) -> i32 {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        ((self.0 >> 16) % 21) as i32 - 10
    }
}

/// Drives one vehicle over the platform: ramp up, noisy plateau, ramp down, empty platform.
async fn vehicle(sim: &RegSim, order: WordOrder, target: i32, noise: &mut Noise) {
    let step = Duration::from_millis(20);
    for i in 1..=10 {
        sim.set_registers(WEIGHT_REG, &words(target * i / 10 + noise.next(), order));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for _ in 0..90 {
        sim.set_registers(WEIGHT_REG, &words(target + noise.next(), order));
        tokio::time::sleep(step).await;
    }
    for i in (0..10).rev() {
        sim.set_registers(WEIGHT_REG, &words(target * i / 10, order));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for _ in 0..25 {
        sim.set_registers(WEIGHT_REG, &words(noise.next().abs(), order));
        tokio::time::sleep(step).await;
    }
}

fn drain(rx: &mut mpsc::Receiver<DeviceEvent>) -> Vec<EventKind> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e.kind);
    }
    out
}

async fn two_vehicles(framing: Framing, order: WordOrder) {
    let sim = RegSim::start(framing, RegSimConfig::default())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(4096);
    let handle = modbus::spawn("scale1", &sim.address(), &settings(order), tx).unwrap();
    let mut noise = Noise(7);
    tokio::time::sleep(Duration::from_millis(100)).await;
    vehicle(&sim, order, 15_000, &mut noise).await;
    vehicle(&sim, order, 32_460, &mut noise).await;
    let events = drain(&mut rx);
    drop(handle);

    let stable: Vec<(Mass, Vec<u8>)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Weight {
                mass,
                stable: true,
                raw,
            } => Some((*mass, raw.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(stable.len(), 2, "{framing:?} {order:?}: {stable:?}");
    for ((mass, raw), target) in stable.iter().zip([15_000, 32_460]) {
        assert!(
            mass.abs_diff(Mass::from_kg(target)) <= Mass::from_kg(10),
            "{mass} vs {target}"
        );
        // `raw` is the weight registers as read, in register order.
        let kg = mass.grams / 1000;
        let w = words(kg as i32, order);
        assert_eq!(raw, &[w[0].to_be_bytes(), w[1].to_be_bytes()].concat());
    }
    let cleared = events
        .iter()
        .filter(|e| {
            matches!(e, EventKind::Weight { mass, stable: false, .. } if *mass < Mass::from_kg(500))
        })
        .count();
    assert!(cleared >= 2, "each vehicle's exit is reported: {events:?}");
    assert!(matches!(
        events.first(),
        Some(EventKind::Link { online: true, .. })
    ));
    // Rate limit: 5 unstable samples/s over ~5 s of polling at 50 Hz is far below one per poll.
    let unstable = events
        .iter()
        .filter(|e| matches!(e, EventKind::Weight { stable: false, .. }))
        .count();
    assert!(unstable < 60, "{unstable} unstable samples forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_ramp_two_vehicles_two_weighings_tcp_hi_lo() {
    two_vehicles(Framing::Tcp, WordOrder::HiLo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noisy_ramp_two_vehicles_two_weighings_rtu_lo_hi() {
    two_vehicles(Framing::RtuOverTcp, WordOrder::LoHi).await;
}

async fn next_event(rx: &mut mpsc::Receiver<DeviceEvent>, within: Duration) -> Option<EventKind> {
    tokio::time::timeout(within, rx.recv())
        .await
        .ok()
        .flatten()
        .map(|e| e.kind)
}

#[tokio::test]
async fn status_stable_bit_is_honoured() {
    let sim = RegSim::start(Framing::Tcp, RegSimConfig::default())
        .await
        .unwrap();
    let mut s = settings(WordOrder::HiLo);
    s.status = StatusSettings {
        register: Some(WEIGHT_REG + 2),
        stable_bit: Some(3),
        ..Default::default()
    };
    // Without the flag, identical readings would lock after a few polls.
    s.stability.equal_count = 3;
    s.stability.hold_ms = 100;
    s.max_samples_per_sec = 0;
    sim.set_registers(WEIGHT_REG, &[0, 20_000, 0]);
    let (tx, mut rx) = mpsc::channel(256);
    let _h = modbus::spawn("scale1", &sim.address(), &s, tx).unwrap();
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        Some(EventKind::Link { online: true, .. })
    ));
    // A steady 20 t with the indicator saying "not stable": no weighing.
    let none = next_event(&mut rx, Duration::from_millis(800)).await;
    assert!(none.is_none(), "{none:?}");
    sim.set_register(WEIGHT_REG + 2, 1 << 3);
    match next_event(&mut rx, Duration::from_secs(5)).await {
        Some(EventKind::Weight {
            mass,
            stable: true,
            raw,
        }) => {
            assert_eq!(mass, Mass::from_kg(20_000));
            assert_eq!(&raw[..], &[0, 0, 0x4E, 0x20, 0, 8]);
        }
        other => panic!("expected the stable weighing, got {other:?}"),
    }
    // Still on the platform, still flagged stable: no second weighing.
    let again = next_event(&mut rx, Duration::from_millis(500)).await;
    assert!(again.is_none(), "{again:?}");
}

#[tokio::test]
async fn silent_indicator_goes_offline_and_back_online() {
    let sim = RegSim::start(Framing::Tcp, RegSimConfig::default())
        .await
        .unwrap();
    let mut s = settings(WordOrder::HiLo);
    s.timeout_ms = 100;
    s.max_samples_per_sec = 0;
    let (tx, mut rx) = mpsc::channel(256);
    let h = modbus::spawn("scale1", &sim.address(), &s, tx).unwrap();
    let mut health = h.health.clone();
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        Some(EventKind::Link { online: true, .. })
    ));
    sim.set_fault(Fault::Silent);
    match next_event(&mut rx, Duration::from_secs(5)).await {
        Some(EventKind::Link {
            online: false,
            error: Some(e),
        }) => assert!(e.contains("no reply"), "{e}"),
        other => panic!("expected offline, got {other:?}"),
    }
    assert!(!health.borrow_and_update().online);
    sim.set_fault(Fault::None);
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        Some(EventKind::Link { online: true, .. })
    ));
    assert!(health.borrow_and_update().online);
}

#[tokio::test]
async fn late_replies_never_become_weights() {
    // Replies arriving after the timeout belong to requests already given up on; with the bus
    // reopened after each timeout none of them may be decoded as a later poll's answer.
    let sim = RegSim::start(Framing::Tcp, RegSimConfig::default())
        .await
        .unwrap();
    let mut s = settings(WordOrder::HiLo);
    s.timeout_ms = 60;
    s.max_samples_per_sec = 100;
    sim.set_registers(WEIGHT_REG, &[0, 9_000]);
    sim.set_fault(Fault::Late(Duration::from_millis(150)));
    let (tx, mut rx) = mpsc::channel(256);
    let _h = modbus::spawn("scale1", &sim.address(), &s, tx).unwrap();
    match next_event(&mut rx, Duration::from_secs(5)).await {
        Some(EventKind::Link { online: false, .. }) => {}
        other => panic!("expected offline, got {other:?}"),
    }
    sim.set_registers(WEIGHT_REG, &[0, 1_000]);
    sim.set_fault(Fault::None);
    // The samples of the next twenty good polls (they keep coming; stop counting there).
    let mut weights = Vec::new();
    while weights.len() < 20 {
        match next_event(&mut rx, Duration::from_secs(5)).await {
            Some(EventKind::Weight { mass, .. }) => weights.push(mass),
            Some(_) => {}
            None => break,
        }
    }
    assert!(!weights.is_empty());
    assert!(
        weights.iter().all(|m| *m == Mass::from_kg(1_000)),
        "{weights:?}"
    );
}
