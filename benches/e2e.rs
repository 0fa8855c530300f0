//! Camera push received → barrier command on the wire, with the durable ledger commit in
//! between, across 16 busy lanes on loopback simulators, through the whole `ecogate run`
//! gateway (VZ HTTP ingest, lane tasks, SQLite ledger with synchronous=FULL, Modbus TCP driver).
//!
//! `cargo bench --bench e2e` (E2E_VEHICLES=N per lane, default 100; E2E_LANES, default 16).
//!
//! Second part: the whole gateway (`Gateway::start`: ledger, HTTP, lanes, router, drivers)
//! polling 1,000 Modbus points — 125 relay/DI modules × 8 inputs every 100 ms — from TCP
//! simulators in a child process (this binary re-executed with `--sims N`), so the CPU and RSS
//! figures are the gateway's alone.

use ecogate::gateway::Gateway;
use ecogate::registry::MemoryRegistry;
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use ecogate_drivers::sim::camera::{CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{Framing, RelaySim, SimConfig};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn plate(lane: usize, k: usize) -> String {
    format!("豫A{lane:02}{k:03}")
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn site_header(id: &str) -> String {
    format!("[site]\nid = \"{id}\"\n[enterprise]\nname = \"基准\"\ncredit_code = \"91350100M000100Y43\"\npermit_no = \"91350100M000100Y43001P\"\nindustry = \"steel\"\ngrade = \"B\"\nregion = \"410500\"\n[storage]\ndata_dir = \"ledger\"\n")
}

/// Child: N relay simulators; prints their addresses, serves until stdin closes.
async fn sims_child(n: usize) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut sims = Vec::new();
    for _ in 0..n {
        let s = RelaySim::start(Framing::Tcp, SimConfig::default()).await?;
        println!("{}", s.addr());
        sims.push(s);
    }
    let mut buf = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut buf).await;
    Ok(())
}

async fn modbus_polling() -> anyhow::Result<()> {
    use std::io::BufRead;
    let modules = env("E2E_MODULES", 125);
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--sims", &modules.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no child stdout"))?;
    let addrs: Vec<String> = std::io::BufReader::new(out)
        .lines()
        .take(modules)
        .collect::<Result<_, _>>()?;
    let dir = tempfile::tempdir()?;
    let mut site = site_header("poll");
    site.push_str("[[gates]]\nid = \"1\"\nname = \"1\"\n[[gates.lanes]]\nid = \"1-in\"\ndirection = \"in\"\nmachine = \"entry\"\ncamera = \"cam1\"\nbarrier = \"io1\"\nsign = \"led1\"\nvoice = \"led1\"\n[devices.cam1]\nprofile = \"camera/vz-ivs\"\naddress = \"ingest:cam1\"\n[devices.led1]\nprofile = \"led/parking-0x64\"\nvia = \"cam1\"\n");
    for (i, a) in addrs.iter().enumerate() {
        let _ = write!(site, "[devices.io{}]\nprofile = \"io/modbus-relay-8ch\"\naddress = \"tcp://{a}\"\ntimeout = \"300ms\"\npoll = \"100ms\"\n", i + 1);
    }
    let path = dir.path().join("site.toml");
    std::fs::write(&path, site)?;
    let plan = ecogate::config::load(&path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let gw = Gateway::start(
        plan,
        Some("127.0.0.1:0".parse()?),
        Some(Arc::new(MemoryRegistry::new())),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let online = gw
        .devices
        .handles
        .values()
        .filter(|h| h.health.borrow().online)
        .count();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed());
    let errors: u64 = gw
        .devices
        .handles
        .values()
        .map(|h| h.health.borrow().errors)
        .sum();
    println!(
        "modbus: whole gateway polling {} points ({modules} modules × 8 DIs every 100 ms), {online} modules online: CPU {:.1} % of one core over {:.0} s, RSS {:.1} MiB, {errors} failed requests",
        modules * 8,
        100.0 * cpu / wall.as_secs_f64(),
        wall.as_secs_f64(),
        rss_mib()
    );
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--sims") {
        let n = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(125);
        return sims_child(n).await;
    }
    let only = std::env::var("E2E_ONLY").unwrap_or_default();
    if only != "modbus" {
        latency().await?;
    }
    if only != "latency" {
        modbus_polling().await?;
    }
    Ok(())
}

async fn latency() -> anyhow::Result<()> {
    let lanes = env("E2E_LANES", 16);
    let per_lane = env("E2E_VEHICLES", 100);
    let dir = tempfile::tempdir()?;
    let mut sims = Vec::new();
    for _ in 0..lanes {
        sims.push(Arc::new(
            RelaySim::start(Framing::Tcp, SimConfig::default()).await?,
        ));
    }
    let mut site = site_header("e2e");
    site.push_str("[policy]\nunknown = \"deny\"\n");
    for (i, sim) in sims.iter().enumerate() {
        let n = i + 1;
        let _ = write!(
            site,
            "[[gates]]\nid = \"{n}\"\nname = \"{n}\"\n[[gates.lanes]]\nid = \"{n}-in\"\ndirection = \"in\"\nmachine = \"entry\"\ncamera = \"cam{n}\"\nbarrier = \"io{n}\"\nsign = \"led{n}\"\nvoice = \"led{n}\"\n\
             [devices.cam{n}]\nprofile = \"camera/vz-ivs\"\naddress = \"ingest:cam{n}\"\n[devices.cam{n}.settings]\nreply_wait_ms = 0\ndebounce_s = 0\n\
             [devices.led{n}]\nprofile = \"led/parking-0x64\"\nvia = \"cam{n}\"\n\
             [devices.io{n}]\nprofile = \"io/modbus-relay-8ch\"\naddress = \"tcp://{}\"\ntimeout = \"300ms\"\npoll = \"100ms\"\n[devices.io{n}.settings.barrier]\nopen = \"open\"\nclose = \"close\"\npulse_ms = 100\n",
            sim.addr()
        );
    }
    let path = dir.path().join("site.toml");
    std::fs::write(&path, site)?;
    let plan = ecogate::config::load(&path).map_err(|d| anyhow::anyhow!("{d}"))?;
    let registry = Arc::new(MemoryRegistry::new());
    for l in 1..=lanes {
        for k in 0..per_lane {
            registry.insert(VehicleFacts {
                plate: plate(l, k),
                color: PlateColor::Yellow,
                registry: RegistryKind::Transport,
                stage: EmissionStage::China(6),
                fuel: Fuel::Diesel,
                vehicle_type: "Q11".into(),
                use_character: Some('F'),
                obd_online: Some(true),
            });
        }
    }
    let gw = Gateway::start(plan, Some("127.0.0.1:0".parse()?), Some(registry)).await?;
    anyhow::ensure!(gw.device_errors.is_empty(), "{:?}", gw.device_errors);
    for h in gw.devices.handles.values() {
        let mut rx = h.health.clone();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|h| h.online)).await;
    }
    let http = gw.http_addr;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, sim) in sims.iter().enumerate() {
        let sim = Arc::clone(sim);
        let lane = i + 1;
        tasks.push(tokio::spawn(async move {
            let cam = CameraSim::new(format!("http://{http}/ingest/vz/cam{lane}"));
            let mut lat = Vec::with_capacity(per_lane);
            for k in 0..per_lane {
                // Wait for the previous pulse to end (device-timed, 100 ms).
                while sim.coil(0) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let seen = sim.coil_log().len();
                let t0 = Instant::now();
                let mut p = VzPlate::new(&plate(lane, k), (lane * 10_000 + k) as u64);
                p.image_bytes = 0;
                if cam.vz_plate(&p).await.is_err() {
                    continue;
                }
                let deadline = t0 + Duration::from_secs(5);
                loop {
                    let on = sim
                        .coil_log()
                        .into_iter()
                        .skip(seen)
                        .find(|c| c.coil == 0 && c.on);
                    if let Some(c) = on {
                        lat.push(c.at.saturating_duration_since(t0));
                        break;
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "e2e: {lanes} lanes × {per_lane} vehicles: {} barrier pulses in {:.1} s ({:.0} passes/s); push → pulse on the wire: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(0.99)),
        ms(pct(1.0)),
    );
    let missing = lanes * per_lane - all.len();
    anyhow::ensure!(missing == 0, "{missing} pushes never reached the barrier");
    let report = ecogate::ledger::verify(&dir.path().join("ledger"))?;
    println!("ledger: {report}");
    Ok(())
}
