//! In-process device simulators: each serves its protocol on a 127.0.0.1 port (as a serial
//! device server or the device itself would), with fault injection for tests and `ecogate sim`.

pub mod camera;
pub mod led;
pub mod modbus;
pub mod modbus_regs;
pub mod scale;
pub mod stream_faults;
pub mod ups;
