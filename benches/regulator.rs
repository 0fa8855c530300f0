//! Regulator uplink drain rate: a backlog of passes (every other one with a 30 KB photo) in a
//! real ledger, delivered to the strict mock platform on 127.0.0.1. Every acknowledgement is
//! made durable in the outbox state (fsync + rename), which is what bounds the rate.
//!
//! `cargo bench --bench regulator` (REGULATOR_BENCH_PASSES changes the 2,000).

use bytes::Bytes;
use chrono::{Duration as CDuration, Utc};
use ecogate::ledger::{BarrierMode, Decision, Direction, EventBody, Ledger, PassAttempt};
use ecogate::regulator::mock::MockPlatform;
use ecogate::regulator::profile::PlatformProfile;
use ecogate::regulator::transport_control::SiteFacts;
use ecogate::regulator::{OutboxConfig, RegulatorUplink};
use ecogate::vehicle::{EmissionStage, Fuel, PlateColor};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("REGULATOR_BENCH_PASSES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let ledger = Ledger::open(dir.path())?;
        let t0 = Utc::now() - CDuration::hours(6);
        let photo = ecogate_drivers::sim::camera::fake_jpeg(30_000);
        for i in 0..n {
            let body = EventBody::PassAttempt(PassAttempt {
                lane: "in".into(),
                gate: None,
                direction: if i % 2 == 0 { Direction::In } else { Direction::Out },
                plate: format!("豫A{:05}", i / 2),
                color: PlateColor::Yellow,
                decision: Decision::Allow,
                reason: "ok".into(),
                reason_text: String::new(),
                barrier: BarrierMode::Auto,
                opened: true,
                stage: Some(EmissionStage::China(6)),
                fuel: Some(Fuel::Diesel),
                registry: None,
                photo_kinds: if i % 2 == 0 { vec!["head".into()] } else { vec![] },
                read_id: None,
            });
            let photos = if i % 2 == 0 {
                let mut p = photo.clone();
                p[20] = (i % 251) as u8;
                p[21] = (i / 251) as u8;
                vec![Bytes::from(p)]
            } else {
                vec![]
            };
            ledger
                .append(body, photos, t0 + CDuration::seconds(i as i64))
                .await?;
        }
        let profile = PlatformProfile::builtin("transport-control")?;
        let mock = MockPlatform::start(profile.clone(), "127.0.0.1:0".parse()?).await?;
        let mut cfg = OutboxConfig::new(
            "bench",
            dir.path(),
            SiteFacts {
                enterprise: "E1".into(),
                enterprise_name: "x".into(),
            },
        );
        cfg.poll = Duration::from_millis(5);
        let start = Instant::now();
        let up = RegulatorUplink::start_with(cfg, profile, &mock.url(), "u", "p", ledger)?;
        loop {
            let k = up.kpis();
            if k.captured == n as u64 && k.backlog == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let el = start.elapsed();
        let s = mock.stats();
        println!(
            "drained {n} passes ({} photos of 30 KB) in {:.2} s: {:.0} records/s, {:.0} HTTP requests/s",
            s.photos.len(),
            el.as_secs_f64(),
            n as f64 / el.as_secs_f64(),
            (s.records.len() + s.photos.len()) as f64 / el.as_secs_f64()
        );
        up.stop().await?;
        anyhow::Ok(())
    })
}
