//! In-process device simulators for tests and `ecogate sim`.

pub mod camera;
pub mod modbus;
