//! `ecogate bench`: the core's speed on this machine — config check of a large site, the lane
//! interpreter, and policy decisions. Figures and how to reproduce them: docs/benchmarks.md.

use crate::lane::engine::{Decider, Input, Lane, LaneSpec, Output, Verdict};
use crate::vehicle::PlateColor;
use chrono::{DateTime, Utc};
use ecogate_drivers::{Mass, PlateRead};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Which benchmark: check, lane, policy or all.
    #[arg(default_value = "all")]
    pub which: String,
    /// Scale the iteration counts (1 = default).
    #[arg(long, default_value_t = 1)]
    pub scale: u32,
}

struct Allow;
impl Decider for Allow {
    fn decide(&self, _: &LaneSpec, _: &str, _: PlateColor, _: DateTime<Utc>) -> Verdict {
        Verdict {
            allow: true,
            reason: "ok".into(),
            text: "欢迎".into(),
            review: false,
            facts: None,
            measure: None,
            check: None,
        }
    }
    fn measure_active(&self, _: &str, _: DateTime<Utc>) -> bool {
        false
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn bench_check(scale: u32) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("ecogate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let site = dir.join("site64.toml");
    std::fs::write(&site, crate::demo::site_toml(64, &dir.join("ledger")))?;
    let runs = 20 * scale as usize;
    let mut times = Vec::with_capacity(runs);
    let mut lanes = 0;
    for _ in 0..runs {
        let t = Instant::now();
        let plan = crate::config::load(&site).map_err(|d| anyhow::anyhow!("{d}"))?;
        times.push(t.elapsed());
        lanes = plan.lanes.len();
    }
    times.sort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "check: {lanes}-lane site, {runs} runs: median {:.2} ms, max {:.2} ms",
        pct(&times, 0.5).as_secs_f64() * 1e3,
        pct(&times, 1.0).as_secs_f64() * 1e3
    ))
}

pub fn bench_lane(scale: u32) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("ecogate-bench-lane-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let site = dir.join("site.toml");
    std::fs::write(&site, crate::demo::site_toml(2, &dir.join("ledger")))?;
    let plan = crate::config::load(&site).map_err(|d| anyhow::anyhow!("{d}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let lp = plan
        .lane("1-in")
        .ok_or_else(|| anyhow::anyhow!("demo site has no lane 1-in"))?;
    let mut lane = Lane::new(lp.spec.clone(), Arc::clone(&lp.machine));
    let d = Allow;
    let mut out: Vec<Output> = Vec::with_capacity(64);
    let mut now = Utc::now();
    lane.start(now, &d, &mut out);
    let plate = PlateRead {
        plate: "豫A12345".into(),
        color: PlateColor::Yellow,
        confidence: 98,
        source_id: None,
        captured_at: None,
        offline_replay: false,
        images: Vec::new(),
    };
    // One vehicle through entry-weigh: 9 external inputs (plus the internal `allow`).
    let cycle = [
        Input::LoopOn,
        Input::Plate(plate),
        Input::Weight {
            mass: Mass::from_kg(20_000),
            stable: false,
        },
        Input::Weight {
            mass: Mass::from_kg(31_000),
            stable: false,
        },
        Input::Weight {
            mass: Mass::from_kg(32_000),
            stable: true,
        },
        Input::BarrierOpened,
        Input::WeightZero,
        Input::LoopOff,
        Input::BarrierClosed,
    ];
    let vehicles = 50_000 * scale as u64;
    let t = Instant::now();
    let mut outputs = 0usize;
    for _ in 0..vehicles {
        for i in &cycle {
            now += chrono::Duration::milliseconds(100);
            lane.handle(i.clone(), now, &d, &mut out);
            outputs += out.len();
            out.clear();
        }
        lane.advance(now, &d, &mut out);
        out.clear();
    }
    let el = t.elapsed();
    let events = vehicles * cycle.len() as u64;
    anyhow::ensure!(
        lane.state_name() == "idle",
        "lane ended in {} instead of idle",
        lane.state_name()
    );
    Ok(format!(
        "lane: {events} events ({vehicles} vehicles through entry-weigh) in {:.2} s on one core: {:.0} events/s, {:.0} outputs/s",
        el.as_secs_f64(),
        events as f64 / el.as_secs_f64(),
        outputs as f64 / el.as_secs_f64()
    ))
}

pub fn bench_policy(scale: u32) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("ecogate-bench-pol-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let site = dir.join("site.toml");
    std::fs::write(&site, crate::demo::site_toml(2, &dir.join("ledger")))?;
    let plan = crate::config::load(&site).map_err(|d| anyhow::anyhow!("{d}"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let registry = Arc::new(crate::registry::MemoryRegistry::new());
    let vehicles: Vec<_> = (0..10_000).map(|i| crate::demo::vehicle(7, i)).collect();
    for v in &vehicles {
        if let Some(f) = v.facts.clone() {
            registry.insert(f);
        }
    }
    let decider = crate::decide::SiteDecider::new(plan.policy.clone(), registry);
    decider.add_measure(crate::policy::ControlMeasure {
        level: crate::policy::WarningLevel::Orange,
        strategy: Some(crate::policy::Strategy::S2),
        start: Utc::now() - chrono::Duration::hours(1),
        end: None,
        gates: None,
        source: "bench".into(),
    });
    let lp = plan
        .lane("1-in")
        .ok_or_else(|| anyhow::anyhow!("no lane 1-in"))?;
    let n = 200_000 * scale as usize;
    let now = Utc::now();
    let mut allowed = 0usize;
    let t = Instant::now();
    for i in 0..n {
        let v = &vehicles[i % vehicles.len()];
        if decider.decide(&lp.spec, &v.plate, v.color, now).allow {
            allowed += 1;
        }
    }
    let el = t.elapsed();
    Ok(format!(
        "policy: {n} decisions (registry lookup + policy, orange warning in force) in {:.2} s: {:.2} µs per decision ({allowed} allowed)",
        el.as_secs_f64(),
        el.as_secs_f64() * 1e6 / n as f64
    ))
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let all = args.which == "all";
    let mut ran = false;
    if all || args.which == "check" {
        println!("{}", bench_check(args.scale)?);
        ran = true;
    }
    if all || args.which == "lane" {
        println!("{}", bench_lane(args.scale)?);
        ran = true;
    }
    if all || args.which == "policy" {
        println!("{}", bench_policy(args.scale)?);
        ran = true;
    }
    if !ran {
        anyhow::bail!(
            "unknown benchmark `{}`: use check, lane, policy or all",
            args.which
        );
    }
    Ok(ExitCode::SUCCESS)
}
