//! In-process device simulators: each serves its protocol on a TCP port, as a serial device
//! server would, with fault injection for tests and for `ecogate sim`.

pub mod led;
pub mod scale;
pub mod stream_faults;
pub mod ups;
