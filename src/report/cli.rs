//! `ecogate report …`: the period report, the inspection set and hand-entered tonnage.

use super::export::{inspection_csv, inspection_sections, report_sections, Cell, Section};
use super::inspection::InspectionParams;
use super::tonnage::{TonnageInput, TonnageQuery};
use super::{
    build_inspection, build_report, inspection_xlsx, list_tonnage, record_tonnage_blocking,
    report_csv, report_xlsx, ReportError, ReportParams,
};
use crate::ledger::{Ledger, LedgerReader};
use anyhow::{anyhow, Context};
use clap::{Subcommand, ValueEnum};
use std::io::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    Table,
    Csv,
    Xlsx,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// The period report: passes, stage/fuel mix, clean-transport ratio, fleet shares, daily
    /// volumes on normal vs warning days, manual releases, upload completeness.
    Summary {
        #[arg(long)]
        data_dir: PathBuf,
        /// First day (`yyyy-MM-dd`, GMT+8) or instant.
        #[arg(long)]
        from: Option<String>,
        /// Last day, inclusive, or an exclusive instant.
        #[arg(long)]
        to: Option<String>,
        /// One day instead of --from/--to.
        #[arg(long)]
        day: Option<String>,
        /// One month (`yyyy-MM`) instead of --from/--to.
        #[arg(long)]
        month: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutFormat,
        /// Required for xlsx; stdout otherwise.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The inspection (核查) set: random sample with photos, daily averages, a video window,
    /// the stage re-check list.
    Inspection {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        day: Option<String>,
        #[arg(long)]
        month: Option<String>,
        /// Sample size (default 10, at most 200).
        #[arg(long)]
        sample: Option<String>,
        /// Seed of the sample (printed; give it again to draw the same rows).
        #[arg(long)]
        seed: Option<String>,
        /// Comma-separated days or `a..b`.
        #[arg(long)]
        normal_days: Option<String>,
        #[arg(long)]
        warning_days: Option<String>,
        #[arg(long)]
        window_from: Option<String>,
        #[arg(long)]
        window_to: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: OutFormat,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Record tonnage moved by rail, water, belt or pipeline (a ledger event).
    TonnageAdd {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        date: String,
        /// rail, water, belt or pipeline.
        #[arg(long)]
        mode: String,
        #[arg(long)]
        cargo: String,
        #[arg(long)]
        tonnes: String,
        #[arg(long, default_value = "")]
        note: String,
        #[arg(long)]
        operator: String,
    },
    /// List tonnage entries of a period.
    TonnageList {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Rebuild the derived pass and weighing index from the events.
    Reindex {
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// A parameter error as the command line spells it: `--window-from: …`.
fn cli_err(e: ReportError) -> anyhow::Error {
    match e {
        ReportError::BadParam { field, message } => {
            anyhow!("--{}: {message}", field.replace('_', "-"))
        }
        other => anyhow!(other),
    }
}

fn open_reader(data_dir: &Path) -> anyhow::Result<LedgerReader> {
    super::index::ensure_at(data_dir)
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    LedgerReader::open(data_dir).with_context(|| format!("--data-dir {}", data_dir.display()))
}

fn table(sections: &[Section]) -> String {
    let mut out = String::new();
    for s in sections {
        out.push_str(&format!("== {} ==\n", s.title));
        let mut rows: Vec<Vec<String>> = vec![s.headers.iter().map(|h| h.to_string()).collect()];
        rows.extend(s.rows.iter().map(|r| {
            r.iter()
                .map(|c| match c {
                    Cell::Ratio(Some(v)) => format!("{:.2}%", v * 100.0),
                    other => other.csv_text(),
                })
                .collect()
        }));
        let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| {
                rows.iter()
                    .filter_map(|r| r.get(c))
                    .map(|v| v.chars().count())
                    .max()
                    .unwrap_or(0)
                    .min(40)
            })
            .collect();
        for r in rows {
            let line: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let pad = width
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(v.chars().count());
                    format!("{v}{}", " ".repeat(pad))
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn emit(text: &[u8], out: Option<&Path>) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, text).with_context(|| format!("--out {}", p.display())),
        None => {
            // A closed pipe (`… | head`) is not worth an error.
            let _ = std::io::stdout().write_all(text);
            Ok(())
        }
    }
}

impl ReportCommand {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            ReportCommand::Summary {
                data_dir,
                from,
                to,
                day,
                month,
                format,
                out,
            } => {
                let params = ReportParams {
                    from,
                    to,
                    day,
                    month,
                };
                params.period().map_err(cli_err)?;
                let reader = open_reader(&data_dir)?;
                let r = build_report(&reader, &params).map_err(cli_err)?;
                let bytes = match format {
                    OutFormat::Table => table(&report_sections(&r)).into_bytes(),
                    OutFormat::Csv => report_csv(&r).into_bytes(),
                    OutFormat::Json => serde_json::to_vec_pretty(&r)?,
                    OutFormat::Xlsx => {
                        if out.is_none() {
                            anyhow::bail!("--out: required with --format xlsx");
                        }
                        report_xlsx(&r).map_err(cli_err)?
                    }
                };
                emit(&bytes, out.as_deref())
            }
            ReportCommand::Inspection {
                data_dir,
                from,
                to,
                day,
                month,
                sample,
                seed,
                normal_days,
                warning_days,
                window_from,
                window_to,
                format,
                out,
            } => {
                let params = InspectionParams {
                    from,
                    to,
                    day,
                    month,
                    sample,
                    seed,
                    normal_days,
                    warning_days,
                    window_from,
                    window_to,
                };
                let reader = open_reader(&data_dir)?;
                let i = build_inspection(&reader, &params).map_err(cli_err)?;
                let bytes = match format {
                    OutFormat::Table => {
                        let mut s = inspection_sections(&i);
                        s.insert(
                            1,
                            Section {
                                title: "抽样记录",
                                headers: super::export::PASS_HEADERS.to_vec(),
                                rows: i.sample.iter().map(super::export::pass_row_cells).collect(),
                            },
                        );
                        table(&s).into_bytes()
                    }
                    OutFormat::Csv => inspection_csv(&i).into_bytes(),
                    OutFormat::Json => serde_json::to_vec_pretty(&i)?,
                    OutFormat::Xlsx => {
                        if out.is_none() {
                            anyhow::bail!("--out: required with --format xlsx");
                        }
                        inspection_xlsx(&i, &reader.photos()).map_err(cli_err)?
                    }
                };
                eprintln!(
                    "sample seed {} ({} of {} passes)",
                    i.seed,
                    i.sample.len(),
                    i.population
                );
                emit(&bytes, out.as_deref())
            }
            ReportCommand::TonnageAdd {
                data_dir,
                date,
                mode,
                cargo,
                tonnes,
                note,
                operator,
            } => {
                let input = TonnageInput {
                    date,
                    mode,
                    cargo,
                    tonnes: serde_json::Value::String(tonnes),
                    note,
                };
                // Check before opening (and maybe creating) anything.
                super::tonnage::tonnage_event(&input, &operator).map_err(cli_err)?;
                if !data_dir.join(crate::ledger::DB_FILE).exists() {
                    anyhow::bail!("--data-dir {}: no ledger database here", data_dir.display());
                }
                let ledger = Ledger::open(&data_dir)?;
                let r = record_tonnage_blocking(&ledger, &input, &operator).map_err(cli_err)?;
                println!("recorded as event seq {} ({})", r.seq, r.id);
                Ok(())
            }
            ReportCommand::TonnageList { data_dir, from, to } => {
                let reader = open_reader(&data_dir)?;
                let rows = list_tonnage(
                    &reader,
                    &TonnageQuery {
                        from: Some(from),
                        to: Some(to),
                    },
                )
                .map_err(cli_err)?;
                let mut w = csv::Writer::from_writer(std::io::stdout().lock());
                let _ = w.write_record([
                    "记录编号",
                    "日期",
                    "运输方式",
                    "货物名称",
                    "运量(吨)",
                    "录入人",
                    "备注",
                ]);
                for r in rows {
                    let _ = w.write_record([
                        r.id,
                        r.date.format("%Y-%m-%d").to_string(),
                        r.mode_text.to_string(),
                        r.cargo,
                        format!("{:.3}", r.tonnes),
                        r.operator,
                        r.note,
                    ]);
                }
                let _ = w.flush();
                Ok(())
            }
            ReportCommand::Reindex { data_dir } => {
                let path = data_dir.join(crate::ledger::DB_FILE);
                if !path.exists() {
                    anyhow::bail!("--data-dir {}: no ledger database here", data_dir.display());
                }
                let conn = crate::ledger::store::open_rw(&path)?;
                super::index::ensure(&conn)?;
                super::index::rebuild(&conn)?;
                println!("pass index rebuilt");
                Ok(())
            }
        }
    }
}
