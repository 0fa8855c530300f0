//! (in progress)
pub const SCHEMA: &str = "";
pub struct SqliteRegistry;
