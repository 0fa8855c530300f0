//! Field-device side of ecogate: the typed [`Event`]s devices produce, the [`Command`]s the
//! lanes send them, and (filled in by the drivers work) transports, codecs and simulators.
//!
//! The core never speaks a wire protocol and drivers never decide policy: this crate is the
//! boundary between the two.

pub mod address;
pub mod backoff;
pub mod command;
pub mod event;
pub mod health;
pub mod mass;
pub mod plate;

pub use address::{Address, AddressError, Parity, SerialSettings};
pub use backoff::Backoff;
pub use command::{Command, DeviceCommand};
pub use event::{DeviceEvent, EventKind, Image, ImageKind, PlateRead, UpsStatus};
pub use health::{DeviceHandle, DeviceHealth};
pub use mass::Mass;
pub use plate::PlateColor;
pub mod camera;
pub mod io;
pub mod modbus;
pub mod sim;
