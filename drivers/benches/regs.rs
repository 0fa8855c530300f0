//! Modbus-register scale and sign benchmarks (run: `cargo bench -p ecogate-drivers --bench regs`).
//!
//! 1. One scale poll (weight + status in one FC03 read, decode) against the register simulator
//!    over loopback Modbus TCP and RTU-over-TCP: round-trip percentiles.
//! 2. One `sign.show` of four 32-byte GBK lines plus the commit register (FC16 and FC06):
//!    planning (GBK + packing) alone, and the complete write sequence.
//!
//! The simulator runs in the same process, so the figures include its side; they bound what
//! the driver adds, not what a real RS-485 line at 9600 baud costs (≈ 10 ms a frame).

use std::time::{Duration, Instant};

use ecogate_drivers::led::modbus::{sign_writes, write_all, ModbusSignSettings, WriteFunction};
use ecogate_drivers::modbus::{BusOptions, ModbusBus, Transport};
use ecogate_drivers::scale::modbus::{read_image, ModbusScaleSettings, StatusSettings};
use ecogate_drivers::sim::modbus::Framing;
use ecogate_drivers::sim::modbus_regs::{RegSim, RegSimConfig};
use ecogate_drivers::Command;

const N: usize = 2000;

fn pct(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    format!(
        "p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

async fn scale(framing: Framing) {
    let sim = RegSim::start(framing, RegSimConfig::default())
        .await
        .expect("simulator");
    sim.set_registers(0, &[0, 15_000, 1]);
    let s = ModbusScaleSettings {
        status: StatusSettings {
            register: Some(2),
            stable_bit: Some(0),
            ..Default::default()
        },
        ..Default::default()
    };
    let t = Transport::from_address(&sim.address()).expect("address");
    let dev = ModbusBus::open(t, BusOptions::default()).device(1);
    let mut times = Vec::with_capacity(N);
    for _ in 0..N {
        let t0 = Instant::now();
        let img = read_image(&dev, &s).await.expect("poll");
        let r = s.decode(&img).expect("decode");
        std::hint::black_box(r);
        times.push(t0.elapsed());
    }
    println!("scale poll+decode {framing:?}: {N} polls, {}", pct(times));
}

async fn sign(function: WriteFunction) {
    let sim = RegSim::start(Framing::Tcp, RegSimConfig::default())
        .await
        .expect("simulator");
    let s = ModbusSignSettings {
        write_function: function,
        commit: Some(ecogate_drivers::led::modbus::CommitRegister {
            register: 100,
            value: 1,
        }),
        ..Default::default()
    };
    let cmd = Command::SignShow {
        lines: vec![
            "粤A12345 请上磅".into(),
            "毛重 49.98 吨".into(),
            "国六 柴油 合规".into(),
            "欢迎光临,请慢行,谢谢配合".into(),
        ],
    };
    let t = Transport::from_address(&sim.address()).expect("address");
    let dev = ModbusBus::open(t, BusOptions::default()).device(1);
    let n = 300;
    let mut plan = Vec::with_capacity(n);
    let mut full = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let w = sign_writes(&s, &cmd).expect("plan");
        plan.push(t0.elapsed());
        write_all(&dev, function, &w).await.expect("write");
        full.push(t0.elapsed());
    }
    println!(
        "sign.show 4 lines {function:?}: plan {}; plan+write {}",
        pct(plan),
        pct(full)
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        scale(Framing::Tcp).await;
        scale(Framing::RtuOverTcp).await;
        sign(WriteFunction::Multiple).await;
        sign(WriteFunction::Single).await;
    });
}
