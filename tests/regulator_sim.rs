//! `ecogate sim platform` driven like the binary: clap arguments, commands on a stdin pipe,
//! lines read back from stdout, and a real uplink delivering to it over 127.0.0.1.

use clap::Parser;
use ecogate::ledger::{BarrierMode, Decision, Direction, EventBody, Ledger, PassAttempt};
use ecogate::regulator::profile::PlatformProfile;
use ecogate::regulator::transport_control::SiteFacts;
use ecogate::regulator::{OutboxConfig, RegulatorUplink};
use ecogate::sim_cli::SimCommand;
use ecogate::vehicle::PlateColor;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser, Debug)]
struct Wrapper {
    #[command(subcommand)]
    sim: SimCommand,
}

fn parse(args: &[&str]) -> Result<SimCommand, clap::Error> {
    let mut v = vec!["ecogate-sim"];
    v.extend_from_slice(args);
    Wrapper::try_parse_from(v).map(|w| w.sim)
}

async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .ok()
        .and_then(|l| l.ok().flatten())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_platform_accepts_an_uplink_and_obeys_fault_commands() {
    let cmd = parse(&[
        "platform",
        "--profile",
        "transport-control",
        "--listen",
        "127.0.0.1:0",
        "--username",
        "u",
        "--password",
        "p",
        "--until-eof",
    ])
    .unwrap();
    let (out_w, out_r) = tokio::io::duplex(1 << 16);
    let (mut in_w, in_r) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(cmd.run_with(out_w, BufReader::new(in_r)));
    let mut lines = BufReader::new(out_r).lines();
    let first = next(&mut lines).await;
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {first}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"));

    in_w.write_all(b"down\n").await.unwrap();
    let mut seen = Vec::new();
    loop {
        let l = next(&mut lines).await;
        assert!(!l.is_empty(), "no reply to `down`: {seen:?}");
        seen.push(l.clone());
        if l.contains("down true") {
            break;
        }
    }
    in_w.write_all(b"up\n").await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger
        .append(
            EventBody::PassAttempt(PassAttempt {
                lane: "in".into(),
                gate: None,
                direction: Direction::In,
                plate: "豫A54321".into(),
                color: PlateColor::Blue,
                decision: Decision::Allow,
                reason: "ok".into(),
                reason_text: String::new(),
                barrier: BarrierMode::Auto,
                opened: true,
                stage: None,
                fuel: None,
                registry: None,
                photo_kinds: vec![],
                read_id: None,
                check: None,
            }),
            vec![],
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let mut cfg = OutboxConfig::new(
        "sim",
        dir.path(),
        SiteFacts {
            enterprise: "E1".into(),
            enterprise_name: "x".into(),
        },
    );
    cfg.poll = Duration::from_millis(20);
    cfg.backoff_initial = Duration::from_millis(10);
    let up = RegulatorUplink::start_with(
        cfg,
        PlatformProfile::builtin("transport-control").unwrap(),
        &format!("http://{addr}"),
        "u",
        "p",
        ledger.clone(),
    )
    .unwrap();
    let accepted = loop {
        let l = next(&mut lines).await;
        assert!(!l.is_empty(), "no accepted record: {seen:?}");
        seen.push(l.clone());
        if l.contains("accepted record") {
            break l;
        }
    };
    assert!(accepted.contains("豫A54321"), "{accepted}");
    // Unknown stage and fuel go out as X and Z, which the strict mock accepts.
    assert!(accepted.contains(r#""emissionStandard":"X""#), "{accepted}");
    assert!(accepted.contains(r#""cpys":"0""#), "{accepted}");
    up.stop().await.unwrap();
    drop(in_w);
    task.await.unwrap().unwrap();
}

#[test]
fn sim_platform_refuses_non_loopback_addresses() {
    let cmd = parse(&["platform", "--listen", "0.0.0.0:0", "--until-eof"]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(cmd.run_with(tokio::io::sink(), tokio::io::empty()));
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("127.0.0.1 only"), "{e}");
}
