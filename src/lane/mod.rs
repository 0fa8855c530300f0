//! Lane state machines: definitions in TOML, a run-to-completion interpreter, and tracing.

pub mod builtin;
pub mod engine;
pub mod machine;
pub mod trace;
