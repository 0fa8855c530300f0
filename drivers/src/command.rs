//! What the lanes ask devices to do. A command is confirmed by observed state (limit switch,
//! ACK frame), never by a reply that merely says "ok".

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    BarrierOpen,
    BarrierClose,
    /// Lines of text for an LED sign, top to bottom.
    SignShow {
        lines: Vec<String>,
    },
    /// A phrase for the voice module.
    VoiceSay {
        text: String,
    },
    /// Pulse an output for `ms` milliseconds (device-timed where the module supports it).
    RelayPulse {
        output: String,
        ms: u32,
    },
    /// Ask the camera for a fresh capture (soft trigger).
    CameraTrigger,
}

impl Command {
    /// Short name used in traces and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::BarrierOpen => "barrier.open",
            Command::BarrierClose => "barrier.close",
            Command::SignShow { .. } => "sign.show",
            Command::VoiceSay { .. } => "voice.say",
            Command::RelayPulse { .. } => "relay.pulse",
            Command::CameraTrigger => "camera.trigger",
        }
    }
}

/// A command addressed to one device instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCommand {
    pub device: String,
    pub command: Command,
}
