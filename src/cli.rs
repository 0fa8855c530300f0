//! The `ecogate` command line. `main` only parses and dispatches; each subcommand lives with
//! the module it drives.

use clap::{Parser, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "ecogate",
    version,
    about = "环保门禁电子台账 gateway (HJ 1321-2023): gates, lanes, ledger, uplinks"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `ecogate=debug`.
    #[arg(long, global = true, env = "ECOGATE_LOG", default_value = "warn")]
    pub log: String,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Validate a site configuration; print every error with file:line:col, or a summary.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a site: devices, lanes, ledger, HTTP listener (camera ingest, /healthz, /metrics).
    Run(crate::gateway::RunArgs),
    /// Lane machine tools.
    Lane {
        #[command(subcommand)]
        command: LaneCmd,
    },
    /// The tamper-evident ledger: verify, export, backfill (补录), purge, head.
    Ledger {
        #[command(subcommand)]
        command: crate::ledger::cli::LedgerCommand,
    },
    /// The vehicle registries (一车一档, in-plant vehicles, non-road machinery).
    Registry {
        #[command(subcommand)]
        command: crate::ledger::cli::RegistryCommand,
    },
    /// Reports (stage mix, clean-transport ratio, …) and the inspection (核查) set.
    Report {
        #[command(subcommand)]
        command: crate::report::cli::ReportCommand,
    },
    /// Regulator uplinks: delivery state per platform.
    Uplink {
        #[command(subcommand)]
        command: UplinkCmd,
    },
    /// Run a whole simulated site: no hardware, no setup.
    Demo(crate::demo::DemoArgs),
    /// Run a device simulator on 127.0.0.1 (docs/simulators.md).
    Sim {
        #[command(subcommand)]
        command: crate::sim_cli::SimCommand,
    },
    /// Measure the core's speed (config check, lane interpreter, policy).
    Bench(crate::bench::BenchArgs),
    /// Operator accounts of the console and HTTP API.
    User {
        #[command(subcommand)]
        command: crate::api::cli::UserCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum UplinkCmd {
    /// Captured, sent, acknowledged, failed, backlog and completeness per platform and day.
    Status {
        #[arg(long)]
        data_dir: PathBuf,
        /// Day rows to print (the most recent days with passes; 0 = all kept).
        #[arg(long, default_value_t = 14)]
        days: usize,
    },
    /// Queue the passes of a time range again for one platform (recorded in the ledger).
    Resend {
        #[arg(long)]
        data_dir: PathBuf,
        /// The platform's name as in `[[uplinks.platforms]]`.
        #[arg(long)]
        platform: String,
        /// `yyyy-MM-dd HH:mm:ss` or `yyyy-MM-dd` (GMT+8), pass time, inclusive.
        #[arg(long)]
        from: String,
        /// `yyyy-MM-dd HH:mm:ss` (exclusive) or `yyyy-MM-dd` (the whole day included).
        #[arg(long)]
        to: String,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum LaneCmd {
    /// Replay a scripted list of events through one lane and print each transition and command.
    Trace {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        lane: String,
        #[arg(long)]
        events: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Check { config } => Ok(check(&config)),
        Cmd::Lane {
            command:
                LaneCmd::Trace {
                    config,
                    lane,
                    events,
                },
        } => trace(&config, &lane, &events),
        Cmd::Run(args) => crate::gateway::run(args),
        Cmd::Ledger { command } => command.run().map(|()| ExitCode::SUCCESS),
        Cmd::Registry { command } => command.run().map(|()| ExitCode::SUCCESS),
        Cmd::Report { command } => command.run().map(|()| ExitCode::SUCCESS),
        Cmd::Uplink {
            command: UplinkCmd::Status { data_dir, days },
        } => {
            let _ = write!(
                std::io::stdout(),
                "{}",
                crate::regulator::status_days(&data_dir, days)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Uplink {
            command:
                UplinkCmd::Resend {
                    data_dir,
                    platform,
                    from,
                    to,
                    operator,
                    reason,
                },
        } => {
            let bound = |s: &str, end: bool, what: &str| {
                crate::regulator::parse_bound(s, end).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{what} `{s}` is neither `yyyy-MM-dd HH:mm:ss` nor `yyyy-MM-dd`"
                    )
                })
            };
            let (f, t) = (bound(&from, false, "--from")?, bound(&to, true, "--to")?);
            let ledger = crate::ledger::Ledger::open(&data_dir)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let seq = rt.block_on(crate::regulator::request_resend(
                &ledger, &platform, f, t, &operator, &reason,
            ))?;
            println!(
                "resend of {} – {} to `{platform}` recorded as ledger event {seq}; the uplink sends those passes and their cargo records again with their serials",
                crate::ledger::local_time(f),
                crate::ledger::local_time(t)
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo(args) => crate::demo::run(args),
        Cmd::Sim { command } => command.run(),
        Cmd::Bench(args) => crate::bench::run(args),
        Cmd::User { command } => crate::api::cli::run(command),
    }
}

fn check(config: &std::path::Path) -> ExitCode {
    match crate::config::load(config) {
        Ok(plan) => {
            // A closed pipe (`ecogate check … | head`) is not an error worth a panic.
            let _ = writeln!(
                std::io::stdout(),
                "{}: ok\n{}",
                config.display(),
                plan.summary()
            );
            ExitCode::SUCCESS
        }
        Err(diags) => {
            eprintln!("{diags}");
            ExitCode::FAILURE
        }
    }
}

fn trace(
    config: &std::path::Path,
    lane_id: &str,
    events: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let plan = match crate::config::load(config) {
        Ok(p) => p,
        Err(diags) => {
            eprintln!("{diags}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(lp) = plan.lane(lane_id) else {
        let ids: Vec<&str> = plan.lanes.iter().map(|l| l.spec.id.as_str()).collect();
        anyhow::bail!(
            "no lane `{lane_id}` in {}; lanes: {}",
            config.display(),
            ids.join(", ")
        );
    };
    let text = std::fs::read_to_string(events)
        .map_err(|e| anyhow::anyhow!("cannot read events file {}: {e}", events.display()))?;
    let file = crate::config::diag::SourceFile::new(events, text);
    let registry = std::sync::Arc::new(crate::registry::MemoryRegistry::new());
    let steps = match crate::lane::trace::parse_script(&file, &registry) {
        Ok(s) => s,
        Err(diags) => {
            eprintln!("{}", crate::config::Diagnostics(diags));
            return Ok(ExitCode::FAILURE);
        }
    };
    let decider = crate::decide::SiteDecider::new(plan.policy.clone(), registry);
    let mut lane =
        crate::lane::engine::Lane::new(lp.spec.clone(), std::sync::Arc::clone(&lp.machine));
    let start = chrono::DateTime::parse_from_rfc3339("2026-12-01T08:00:00+08:00")
        .map(|d| d.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now());
    println!(
        "lane {} ({}, machine {}), trace starts {}",
        lp.spec.id,
        lp.spec.direction.name(),
        lp.machine.name,
        start
            .with_timezone(&crate::time::site_zone())
            .format("%Y-%m-%d %H:%M:%S%:z")
    );
    print!(
        "{}",
        crate::lane::trace::run(&mut lane, &steps, start, &decider)
    );
    Ok(ExitCode::SUCCESS)
}
