//! Network driver benchmarks (run: `cargo bench -p ecogate-drivers --bench net`).
//!
//! 1. Modbus polling: 125 relay/DI modules × 8 inputs = 1,000 points, each module polled every
//!    100 ms over Modbus TCP. The simulators run in a child process (this binary re-executed
//!    with `--sims`) so the CPU and RSS figures are the gateway side only.
//! 2. VZ camera push of ~2 MB (two base64 JPEGs): parse + image decode time per push, and the
//!    same through the axum ingest router over loopback HTTP.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use ecogate_drivers::camera::{self, vz, IngestRegistry};
use ecogate_drivers::io::{IoModule, ModbusIoSettings};
use ecogate_drivers::sim::camera::{vz_plate_json, CameraSim, VzPlate};
use ecogate_drivers::sim::modbus::{Framing, RelaySim, SimConfig};
use ecogate_drivers::Address;

const MODULES: usize = 125;
const POINTS_PER_MODULE: u16 = 8;
const RUN: Duration = Duration::from_secs(10);

fn cpu_seconds() -> f64 {
    // utime + stime in USER_HZ (100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command name start at state (field 3): utime is 14, stime 15.
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn run_sims() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut sims = Vec::new();
        for _ in 0..MODULES {
            let s = RelaySim::start(
                Framing::Tcp,
                SimConfig {
                    channels: POINTS_PER_MODULE,
                    ..SimConfig::default()
                },
            )
            .await
            .expect("sim");
            println!("{}", s.addr().port());
            sims.push(s);
        }
        println!("ready");
        std::io::stdout().flush().ok();
        // Live until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
    });
}

fn modbus_bench() {
    let exe = std::env::current_exe().expect("exe");
    let mut child = Proc::new(exe)
        .arg("--sims")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sims");
    let mut ports = Vec::new();
    let out = child.stdout.take().expect("stdout");
    for line in BufReader::new(out).lines() {
        let line = line.expect("line");
        if line == "ready" {
            break;
        }
        ports.push(line.parse::<u16>().expect("port"));
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (ok, err, cpu, wall, rss) = rt.block_on(async {
        let mut settings = ModbusIoSettings::default();
        for i in 0..POINTS_PER_MODULE {
            settings.inputs.insert(
                format!("in{i}"),
                toml::from_str(&format!("di = {i}")).expect("spec"),
            );
        }
        let modules: Vec<IoModule> = ports
            .iter()
            .map(|p| {
                let a: Address = format!("tcp://127.0.0.1:{p}").parse().expect("addr");
                IoModule::new(&a, &settings).expect("module")
            })
            .collect();
        // Warm up: connect everything.
        for m in &modules {
            let _ = m.sample_inputs().await;
        }
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for m in modules {
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut err) = (0u64, 0u64);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let until = tokio::time::Instant::now() + RUN;
                while tokio::time::Instant::now() < until {
                    tick.tick().await;
                    match m.sample_inputs().await {
                        Ok(_) => ok += 1,
                        Err(_) => err += 1,
                    }
                }
                (ok, err)
            }));
        }
        let (mut ok, mut err) = (0, 0);
        for t in tasks {
            let (o, e) = t.await.expect("task");
            ok += o;
            err += e;
        }
        (ok, err, cpu_seconds() - cpu0, t0.elapsed(), rss_kib())
    });
    drop(child.stdin.take());
    let _ = child.wait();
    let points = MODULES * POINTS_PER_MODULE as usize;
    println!(
        "modbus poll: {points} points on {MODULES} TCP modules every 100 ms for {:.1} s: \
         {ok} polls ok, {err} failed ({:.0} polls/s); CPU {:.1} % of one core; RSS {} KiB",
        wall.as_secs_f64(),
        ok as f64 / wall.as_secs_f64(),
        100.0 * cpu / wall.as_secs_f64(),
        rss
    );
}

fn vz_bench() {
    let mut p = VzPlate::new("豫A12345", 1);
    p.image_bytes = 1_500_000;
    let body = vz_plate_json(&p);
    let n = 50;
    // Warm-up.
    let _ = vz::parse_push(&body, true, 8);
    let t0 = Instant::now();
    for _ in 0..n {
        let m = vz::parse_push(&body, true, 8).expect("parse");
        std::hint::black_box(m);
    }
    let per = t0.elapsed() / n;
    let t1 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(vz::parse_push(&body, false, 8).expect("parse"));
    }
    let json_only = t1.elapsed() / n;
    println!(
        "vz push parse without image decode (JSON only): {:.3} ms per push",
        json_only.as_secs_f64() * 1000.0
    );
    println!(
        "vz push parse: {:.2} MB body with images decoded: {:.3} ms per push ({n} runs)",
        body.len() as f64 / 1e6,
        per.as_secs_f64() * 1000.0
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let reg = IngestRegistry::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let settings = vz::VzSettings {
            debounce_s: 0.0,
            comet_hold_ms: 0,
            ..Default::default()
        };
        let _h = vz::spawn("cam", &"ingest:b".parse().expect("addr"), &settings, tx, &reg)
            .expect("spawn");
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(l, camera::ingest_router(reg)).await;
        });
        let sim = CameraSim::new(format!("http://{addr}/ingest/vz/b"));
        let n = 20u64;
        let mut p = p.clone();
        let t0 = Instant::now();
        for i in 0..n {
            p.plateid = 100 + i;
            let r = sim.vz_plate(&p).await.expect("post");
            assert_eq!(r.status, 200);
        }
        let per = t0.elapsed() / n as u32;
        println!(
            "vz push over HTTP (loopback, client+server in one process): {:.3} ms per 2 MB push ({n} runs)",
            per.as_secs_f64() * 1000.0
        );
    });
}

fn main() {
    if std::env::args().any(|a| a == "--sims") {
        run_sims();
        return;
    }
    // `cargo bench` passes `--bench`; any other word selects one benchmark (vz, modbus).
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if want("vz") {
        vz_bench();
    }
    if want("modbus") {
        modbus_bench();
    }
}
