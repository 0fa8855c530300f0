//! Per-device health as every driver reports it: online/offline, last error, round-trip time.
//! Published through a `tokio::sync::watch` channel so the health monitor, MQTT bridge and API
//! read the latest value without queueing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

use crate::command::Command;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceHealth {
    pub online: bool,
    pub last_error: Option<String>,
    /// Round-trip time of the last successful request (polling drivers) or the time since the
    /// previous frame (streaming drivers).
    #[serde(with = "opt_millis")]
    pub rtt: Option<Duration>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Requests or frames that failed (timeouts, bad checksums, exceptions) since start.
    pub errors: u64,
}

mod opt_millis {
    use serde::Serializer;
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
            None => s.serialize_none(),
        }
    }
}

/// What the gateway holds for a running device: where to send commands and where to read its
/// health. Dropping the command sender stops the device task.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    pub name: String,
    pub commands: mpsc::Sender<Command>,
    pub health: watch::Receiver<DeviceHealth>,
}
