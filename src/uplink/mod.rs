//! Uplinks: how the site's facts leave the gateway. [`mqtt`] bridges to plant SCADA.

pub mod cursor;
pub mod mqtt;
pub mod sparkplug;
pub mod task;

pub use mqtt::{MqttBridge, MqttConfig, MqttError};
