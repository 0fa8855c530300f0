//! Site configuration: TOML in, a validated [`Plan`] out.
//!
//! Loading has two phases, as in ripgrep: [`site`] is the file as written (serde types, unknown
//! keys collected), [`plan`] checks and resolves it (profiles, lane machines, device roles,
//! addresses) into what the gateway runs. Every error is a [`diag::Diagnostic`] naming
//! file:line:col and how to fix it.

pub mod diag;
pub mod document;
pub mod plan;
pub mod profile;
pub mod site;

pub use diag::{Diagnostic, Diagnostics};
pub use plan::{load, Plan};
