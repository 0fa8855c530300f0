//! `ecogate ledger …` and `ecogate registry …`: clap subcommands the `ecogate` binary mounts.

use super::export::{self, Format, LedgerKind};
use super::registry::{self, ImportError};
use super::store::{ChainHead, Ledger, LedgerReader};
use super::verify::{verify_with, VerifyOptions};
use super::{backfill, local_day_start, parse_date, parse_local_time, retention};
use crate::vehicle::RegistryKind;
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Duration, Utc};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check the whole hash chain and every photo; name the first broken link.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
        /// A head published earlier, `SEQ:HASH` (as printed by `ledger head`): also detects
        /// removal of the newest events.
        #[arg(long)]
        expect_head: Option<String>,
        /// Check the chain only, not the photo files.
        #[arg(long)]
        skip_photos: bool,
    },
    /// Export one ledger for a date range as CSV or XLSX (national column order, GMT+8).
    Export {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, value_enum)]
        ledger: LedgerKind,
        /// First day (`yyyy-MM-dd`, GMT+8) or instant (`yyyy-MM-dd HH:mm:ss`).
        #[arg(long)]
        from: String,
        /// Last day, inclusive (`yyyy-MM-dd`), or an exclusive instant (`yyyy-MM-dd HH:mm:ss`).
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        #[arg(long)]
        out: PathBuf,
    },
    /// Record the rows of a paper log (补录) as backfill events.
    Backfill {
        #[arg(long)]
        data_dir: PathBuf,
        file: PathBuf,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
    /// Remove photo files of events older than DATE (at least 24 months ago); recorded in the
    /// ledger.
    Purge {
        #[arg(long)]
        data_dir: PathBuf,
        /// `yyyy-MM-dd` (GMT+8): photos of events before the start of this day go.
        #[arg(long)]
        before: String,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
    /// Correct an earlier pass, manual release, backfill or weighing (更正): a new event that
    /// references it. Fields left out stay as they were; --void withdraws the record.
    Correct {
        #[arg(long)]
        data_dir: PathBuf,
        /// Event id of the record to correct (as shown by the console or the API).
        #[arg(long = "ref")]
        refs: String,
        #[arg(long)]
        plate: Option<String>,
        /// Plate colour: blue, yellow, green, yellow_green, white, black, other (or 蓝/黄/…).
        #[arg(long)]
        color: Option<String>,
        /// in / out (进 / 出).
        #[arg(long)]
        direction: Option<String>,
        #[arg(long)]
        cargo: Option<String>,
        /// Net weight in kg.
        #[arg(long)]
        net_kg: Option<String>,
        /// Withdraw the record from the ledgers (it stays in the log).
        #[arg(long)]
        void: bool,
        #[arg(long)]
        operator: String,
        #[arg(long)]
        reason: String,
    },
    /// Print the chain head `SEQ:HASH`.
    Head {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// List the vehicles in the plant now (last pass within the window is an entry).
    InPlant {
        #[arg(long)]
        data_dir: PathBuf,
        /// How many days back to look for entries.
        #[arg(long, default_value_t = 7)]
        days: i64,
    },
}

fn parse_from(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Some(d) = parse_date(s) {
        return Ok(local_day_start(d));
    }
    parse_local_time(s)
        .ok_or_else(|| anyhow!("`{s}` is not a date (yyyy-MM-dd) or time (yyyy-MM-dd HH:mm:ss)"))
}

fn parse_to(s: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Some(d) = parse_date(s) {
        return Ok(local_day_start(d) + Duration::days(1));
    }
    parse_local_time(s)
        .ok_or_else(|| anyhow!("`{s}` is not a date (yyyy-MM-dd) or time (yyyy-MM-dd HH:mm:ss)"))
}

fn print_row_errors(e: ImportError) -> anyhow::Error {
    anyhow!("{e}")
}

impl LedgerCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            LedgerCommand::Verify {
                data_dir,
                expect_head,
                skip_photos,
            } => {
                let expect_head = match expect_head {
                    Some(h) => Some(
                        ChainHead::parse(&h)
                            .ok_or_else(|| anyhow!("--expect-head `{h}` is not SEQ:HEX64"))?,
                    ),
                    None => None,
                };
                let report = verify_with(
                    &data_dir,
                    &VerifyOptions {
                        expect_head,
                        skip_photos,
                    },
                )
                .with_context(|| format!("verifying {}", data_dir.display()))?;
                if report.ok() {
                    println!("{report}");
                    Ok(())
                } else {
                    bail!("{report}")
                }
            }
            LedgerCommand::Export {
                data_dir,
                ledger,
                from,
                to,
                format,
                out,
            } => {
                let (from, to) = (parse_from(&from)?, parse_to(&to)?);
                if to <= from {
                    bail!("--to must be after --from");
                }
                let reader = LedgerReader::open(&data_dir)?;
                let n = export::export(&reader, ledger, from, to, format, &out)?;
                println!(
                    "{} rows of {} written to {}",
                    n,
                    ledger.title(),
                    out.display()
                );
                Ok(())
            }
            LedgerCommand::Backfill {
                data_dir,
                file,
                operator,
                reason,
            } => {
                let ledger = Ledger::open(&data_dir)?;
                let r = backfill::backfill_csv(&ledger, &file, &operator, &reason)
                    .map_err(print_row_errors)?;
                println!(
                    "{} paper-log rows recorded as 补录 (seq {}–{})",
                    r.recorded,
                    r.first_seq.unwrap_or(0),
                    r.last_seq.unwrap_or(0)
                );
                Ok(())
            }
            LedgerCommand::Correct {
                data_dir,
                refs,
                plate,
                color,
                direction,
                cargo,
                net_kg,
                void,
                operator,
                reason,
            } => {
                let color = match color {
                    Some(c) => Some(
                        c.parse::<crate::vehicle::PlateColor>()
                            .map_err(|_| anyhow!("--color `{c}` is not a plate colour"))?,
                    ),
                    None => None,
                };
                let direction = match direction {
                    Some(d) => Some(
                        crate::vehicle::Direction::parse(&d)
                            .ok_or_else(|| anyhow!("--direction `{d}` is neither in nor out"))?,
                    ),
                    None => None,
                };
                let net = match net_kg {
                    Some(n) => Some(
                        n.parse::<ecogate_drivers::Mass>()
                            .map_err(|e| anyhow!("--net-kg: {e}"))?,
                    ),
                    None => None,
                };
                let c = super::events::Correction {
                    refs,
                    operator,
                    reason,
                    void,
                    plate: plate.map(|p| p.trim().to_string()),
                    color,
                    direction,
                    cargo: cargo.map(|c| c.trim().to_string()),
                    net,
                };
                let ledger = Ledger::open(&data_dir)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let receipt = rt.block_on(super::correct::record(&ledger, c))?;
                println!(
                    "correction recorded as ledger event {} ({}); the ledgers and reports show the corrected record",
                    receipt.seq, receipt.id
                );
                Ok(())
            }
            LedgerCommand::Purge {
                data_dir,
                before,
                operator,
                reason,
            } => {
                let day = parse_date(&before)
                    .ok_or_else(|| anyhow!("--before `{before}` is not a date (yyyy-MM-dd)"))?;
                let ledger = Ledger::open(&data_dir)?;
                let r = retention::purge(
                    &ledger,
                    local_day_start(day),
                    Utc::now(),
                    &operator,
                    &reason,
                )?;
                println!(
                    "purge recorded as event seq {}; {} photo files removed",
                    r.seq, r.photos_removed
                );
                Ok(())
            }
            LedgerCommand::Head { data_dir } => {
                let reader = LedgerReader::open(&data_dir)?;
                println!("{}", reader.head()?);
                Ok(())
            }
            LedgerCommand::InPlant { data_dir, days } => {
                let reader = LedgerReader::open(&data_dir)?;
                let visits = reader.in_plant_now(Utc::now(), Duration::days(days))?;
                for v in &visits {
                    let entry = v.entry.as_ref();
                    println!(
                        "{}\t{}\t{}\t{}",
                        v.plate,
                        v.color.chinese(),
                        entry.map(|p| super::local_time(p.at)).unwrap_or_default(),
                        entry.map(|p| p.lane.as_str()).unwrap_or_default()
                    );
                }
                eprintln!("{} vehicles in the plant", visits.len());
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RegistryArg {
    #[value(name = "transport")]
    Transport,
    #[value(name = "in_plant", alias = "in-plant")]
    InPlant,
    #[value(name = "non_road", alias = "non-road")]
    NonRoad,
}

impl From<RegistryArg> for RegistryKind {
    fn from(a: RegistryArg) -> RegistryKind {
        match a {
            RegistryArg::Transport => RegistryKind::Transport,
            RegistryArg::InPlant => RegistryKind::InPlant,
            RegistryArg::NonRoad => RegistryKind::NonRoad,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Import a registry CSV: all rows or none, unless --skip-bad.
    Import {
        #[arg(value_enum)]
        kind: RegistryArg,
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// Import the good rows and report the bad ones instead of importing nothing.
        #[arg(long)]
        skip_bad: bool,
    },
    /// List a registry as CSV on stdout.
    List {
        #[arg(value_enum)]
        kind: RegistryArg,
        #[arg(long)]
        data_dir: PathBuf,
    },
}

impl RegistryCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            RegistryCommand::Import {
                kind,
                file,
                data_dir,
                skip_bad,
            } => {
                let ledger = Ledger::open(&data_dir)?;
                let r = registry::import_csv(&ledger, kind.into(), &file, skip_bad)
                    .map_err(print_row_errors)?;
                for e in &r.errors {
                    eprintln!("skipped: {e}");
                }
                // A first import of a fleet without scans warns on every row: show a sample.
                const SHOWN: usize = 20;
                for w in r.warnings.iter().take(SHOWN) {
                    eprintln!("warning: {w}");
                }
                if r.warnings.len() > SHOWN {
                    eprintln!("warning: … and {} more rows", r.warnings.len() - SHOWN);
                }
                println!(
                    "{} rows imported, {} skipped, {} flagged for review",
                    r.imported,
                    r.skipped,
                    r.warnings.len()
                );
                Ok(())
            }
            RegistryCommand::List { kind, data_dir } => {
                let reader = LedgerReader::open(&data_dir)?;
                let rows = registry::list(reader.conn(), kind.into())?;
                let mut w = csv::Writer::from_writer(std::io::stdout().lock());
                let header: Vec<String> = match rows.first() {
                    Some(r) => r.iter().map(|(k, _)| k.clone()).collect(),
                    None => registry::columns(kind.into())
                        .iter()
                        .map(|c| c.0.to_string())
                        .collect(),
                };
                w.write_record(&header)?;
                for r in rows {
                    w.write_record(r.iter().map(|(_, v)| v))?;
                }
                w.flush()?;
                Ok(())
            }
        }
    }
}
