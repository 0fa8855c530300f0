//! Field-device side of ecogate: the typed [`DeviceEvent`]s devices produce, the [`Command`]s
//! the lanes send them, transports (Modbus, serial, serial-over-TCP, HTTP ingest), device codecs
//! and drivers, and a simulator for every protocol.
//!
//! The core never speaks a wire protocol and drivers never decide policy: this crate is the
//! boundary between the two.

pub mod address;
pub mod backoff;
pub mod camera;
pub mod command;
pub mod event;
pub mod health;
pub mod io;
pub mod led;
pub mod mass;
pub mod modbus;
pub mod plate;
pub mod scale;
pub mod sim;
pub mod stream;
pub mod ups;

pub use address::{Address, AddressError, Parity, SerialSettings};
pub use backoff::Backoff;
pub use command::{Command, DeviceCommand};
pub use event::{DeviceEvent, EventKind, Image, ImageKind, PlateRead, UpsStatus};
pub use health::{DeviceHandle, DeviceHealth};
pub use mass::Mass;
pub use plate::PlateColor;
