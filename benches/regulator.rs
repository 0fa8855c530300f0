//! Regulator uplink figures against the strict mock platform on 127.0.0.1, over a real ledger,
//! with the shipped outbox settings (window 16, state written once per group of outcomes).
//!
//! - `drain`: a backlog of passes without photos drained to the mock (records/s), then the
//!   same with a 30 KB photo on every other pass (for comparison; photos are extra requests).
//! - `live`: a 100,000-pass backlog drains while live passes are recorded every 200 ms; the
//!   latency of each live pass from its ledger append to the mock accepting it (p50/p99/max).
//!
//! `cargo bench --bench regulator` (`REGULATOR_BENCH=drain,live` selects;
//! `REGULATOR_BENCH_PASSES` sets the drain backlog, default 20,000;
//! `REGULATOR_BENCH_BACKLOG` the live run's backlog, default 100,000).

use bytes::Bytes;
use chrono::{DateTime, Duration as CDuration, Utc};
use ecogate::ledger::{BarrierMode, Decision, Direction, EventBody, Ledger, PassAttempt};
use ecogate::regulator::mock::MockPlatform;
use ecogate::regulator::profile::PlatformProfile;
use ecogate::regulator::transport_control::{serial_for, SiteFacts};
use ecogate::regulator::{OutboxConfig, RegulatorUplink};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor};
use std::time::{Duration, Instant};

const ORGAN: &str = "E1";

fn env_n(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

fn pass(i: usize, with_photo: bool) -> EventBody {
    EventBody::PassAttempt(attempt(i, "豫A", with_photo))
}

fn attempt(i: usize, prefix: &str, with_photo: bool) -> PassAttempt {
    PassAttempt {
        lane: "in".into(),
        gate: None,
        direction: if i % 2 == 0 {
            Direction::In
        } else {
            Direction::Out
        },
        plate: format!("{prefix}{:05}", (i / 2) % 100_000),
        color: PlateColor::Yellow,
        decision: Decision::Allow,
        reason: "ok".into(),
        reason_text: String::new(),
        barrier: BarrierMode::Auto,
        opened: true,
        stage: Some(EmissionStage::China(6)),
        fuel: Some(Fuel::Diesel),
        registry: None,
        photo_kinds: if with_photo {
            vec!["head".into()]
        } else {
            vec![]
        },
        read_id: None,
        check: None,
    }
}

/// `n` passes one second apart from `t0`, in one ledger transaction (setting up is not what
/// is measured); every other one with a 30 KB photo when `photos`.
async fn fill(ledger: &Ledger, n: usize, t0: DateTime<Utc>, photos: bool) -> anyhow::Result<()> {
    let mut hashes = Vec::new();
    if photos {
        let photo = ecogate_drivers::sim::camera::fake_jpeg(30_000);
        for i in (0..n).step_by(2) {
            let mut p = photo.clone();
            p[20] = (i % 251) as u8;
            p[21] = (i / 251 % 251) as u8;
            p[22] = (i / 63001) as u8;
            hashes.push(ledger.photos().put(&Bytes::from(p))?);
        }
    }
    ledger
        .transaction(move |tx| {
            for i in 0..n {
                let ph = photos && i % 2 == 0;
                let hs = if ph {
                    vec![hashes[i / 2].clone()]
                } else {
                    vec![]
                };
                tx.append(&pass(i, ph), &hs, t0 + CDuration::seconds(i as i64))?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

fn config(dir: &std::path::Path) -> OutboxConfig {
    OutboxConfig::new(
        "bench",
        dir,
        SiteFacts {
            enterprise: ORGAN.into(),
            enterprise_name: "x".into(),
        },
    )
}

async fn wait_drained(up: &RegulatorUplink, n: u64) {
    loop {
        let k = up.kpis();
        if k.captured >= n && k.backlog == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn drain(n: usize, photos: bool) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(dir.path())?;
    fill(&ledger, n, Utc::now() - CDuration::days(3), photos).await?;
    let profile = PlatformProfile::builtin("transport-control")?;
    let mock = MockPlatform::start(profile.clone(), "127.0.0.1:0".parse()?).await?;
    let start = Instant::now();
    let up =
        RegulatorUplink::start_with(config(dir.path()), profile, &mock.url(), "u", "p", ledger)?;
    wait_drained(&up, n as u64).await;
    let el = start.elapsed().as_secs_f64();
    up.stop().await?;
    let s = mock.stats();
    println!(
        "drain {n} passes{}: {:.2} s, {:.0} records/s ({:.0} HTTP requests/s); accepted {}, duplicates {}",
        if photos { " (every other with a 30 KB photo)" } else { " (no photos)" },
        el,
        n as f64 / el,
        (s.records.len() + s.photos.len()) as f64 / el,
        s.records.len(),
        s.duplicate_records
    );
    anyhow::ensure!(s.records.len() == n, "not every record arrived");
    Ok(())
}

async fn live(backlog: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ledger = Ledger::open(dir.path())?;
    let t0 = Utc::now() - CDuration::days(3);
    let t = Instant::now();
    fill(&ledger, backlog, t0, false).await?;
    println!(
        "live: {backlog}-pass backlog recorded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let profile = PlatformProfile::builtin("transport-control")?;
    let mock = MockPlatform::start(profile.clone(), "127.0.0.1:0".parse()?).await?;
    let start = Instant::now();
    let up = RegulatorUplink::start_with(
        config(dir.path()),
        profile,
        &mock.url(),
        "u",
        "p",
        ledger.clone(),
    )?;
    // The live passes start once the uplink has read its backlog back from the ledger (a
    // restart in the middle of an outage delays the first live passes by that much; it is
    // printed separately).
    while up.kpis().captured < backlog as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "live: uplink started over the backlog in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    // Live passes every 200 ms until the backlog is gone: (serial, appended at).
    let mut sent: Vec<(String, Instant)> = Vec::new();
    let mut i = 0usize;
    loop {
        let k = up.kpis();
        if k.captured >= backlog as u64 && k.backlog == 0 {
            break;
        }
        let now = Utc::now();
        let body = EventBody::PassAttempt(attempt(i, "豫L", false));
        let dir_ = if i % 2 == 0 {
            Direction::In
        } else {
            Direction::Out
        };
        let r = ledger.append(body, vec![], now).await?;
        sent.push((serial_for(ORGAN, "in", dir_, now, r.seq), Instant::now()));
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let el = start.elapsed().as_secs_f64();
    wait_drained(&up, (backlog + sent.len()) as u64).await;
    up.stop().await?;
    let mut lat: Vec<f64> = Vec::new();
    for (serial, at) in &sent {
        match mock.arrival(serial) {
            Some(a) => lat.push(a.saturating_duration_since(*at).as_secs_f64() * 1000.0),
            None => anyhow::bail!("live pass {serial} never arrived"),
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "live: backlog drained in {el:.1} s ({:.0} records/s) while {} live passes were recorded; live append → accepted: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        backlog as f64 / el,
        lat.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let which = std::env::var("REGULATOR_BENCH").unwrap_or_else(|_| "drain,live".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        if which.contains("drain") {
            let n = env_n("REGULATOR_BENCH_PASSES", 20_000);
            drain(n, false).await?;
            drain(n / 10, true).await?;
        }
        if which.contains("live") {
            live(env_n("REGULATOR_BENCH_BACKLOG", 100_000)).await?;
        }
        anyhow::Ok(())
    })
}
