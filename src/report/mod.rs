//! Reports, search and inspection (核查) over the ledger: what the environmental manager and
//! the inspectors read. Everything here is read-only over the event log except
//! [`tonnage::record_tonnage`], which appends a `transport_tonnage` event.
//!
//! * [`index`]: the derived `pass_index` / `weighing_index` tables the triggers keep in step,
//!   and the per-day aggregates over them (`aggregates`) that the period report reads.
//! * [`search::search_passes`]: filtered, paged pass search (`GET /api/v1/passes`).
//! * [`summary::build_report`]: the period report (`GET /api/v1/reports/summary`).
//! * [`inspection::build_inspection`]: the 核查 set (`GET /api/v1/inspection`).
//! * [`export`]: CSV and XLSX of a report and of an inspection set.
//!
//! docs/reports.md gives every figure with its formula and inputs.

mod aggregates;
pub mod cli;
pub mod export;
pub mod index;
pub mod inspection;
pub mod params;
mod rng;
mod rows;
pub mod search;
pub mod summary;
pub mod tonnage;

pub use export::{inspection_xlsx, report_csv, report_xlsx};
pub use inspection::{build_inspection, Inspection, InspectionParams, RecheckRow};
pub use params::{PassQuery, ReportParams};
pub use rows::{Page, PassRow, PhotoRef};
pub use search::search_passes;
pub use summary::{build_report, Report};
pub use tonnage::{
    list_tonnage, record_tonnage, record_tonnage_blocking, TonnageInput, TonnageQuery, TonnageRow,
};

use crate::ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A request or command-line value is wrong; `field` names it as the caller spelled it.
    #[error("`{field}`: {message}")]
    BadParam { field: String, message: String },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ledger database value: {0}")]
    Value(#[from] rusqlite::types::FromSqlError),
    #[error("cannot write the workbook: {0}")]
    Xlsx(String),
}

impl ReportError {
    pub fn bad(field: &str, message: impl Into<String>) -> ReportError {
        ReportError::BadParam {
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// The offending field of a [`ReportError::BadParam`] (HTTP 400 names it).
    pub fn field(&self) -> Option<&str> {
        match self {
            ReportError::BadParam { field, .. } => Some(field),
            _ => None,
        }
    }
}

impl From<rust_xlsxwriter::XlsxError> for ReportError {
    fn from(e: rust_xlsxwriter::XlsxError) -> Self {
        ReportError::Xlsx(e.to_string())
    }
}
