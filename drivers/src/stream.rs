//! Byte-stream transport shared by the stream-protocol drivers (scales, LED/voice cards, UPS).
//!
//! Field devices sit either on a local RS-232/485 port (`serial:///dev/ttyS1?baud=9600`) or
//! behind a serial device server in transparent TCP mode (`serial-over-tcp://10.0.0.5:4001`).
//! Both become one boxed `AsyncRead + AsyncWrite`, so every codec, driver and simulator is
//! written once. Reconnect pacing uses [`crate::Backoff`]; health goes out through a
//! `watch` channel ([`HealthReporter`]).

use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::address::{Address, Parity};
use crate::health::DeviceHealth;

/// Errors from the stream drivers: connecting, talking to the device, or reading a profile.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("{driver} cannot use a `{scheme}` address; use serial:///dev/… or serial-over-tcp://host:port")]
    UnsupportedAddress {
        driver: &'static str,
        scheme: &'static str,
    },
    #[error("connecting to {address} timed out after {after:?}")]
    ConnectTimeout { address: String, after: Duration },
    #[error("connecting to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("opening serial port {path}: {message}")]
    Serial { path: String, message: String },
    #[error("i/o with the device: {0}")]
    Io(#[from] std::io::Error),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("device settings: {0}")]
    Settings(String),
    #[error("text cannot be sent to the sign: {0}")]
    Text(#[from] crate::led::TextError),
    #[error("the device did not acknowledge {what}")]
    NoAck { what: &'static str },
    #[error("the device refused {what} (error code {code:#04x})")]
    Nack { what: &'static str, code: u8 },
    #[error("unexpected reply from the device: {0}")]
    Reply(String),
    #[error("the device closed the connection")]
    Closed,
}

/// Anything a stream driver can read from and write to.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

pub type BoxStream = Box<dyn ByteStream>;

/// Opens the transport an address names, giving up after `timeout`.
///
/// Only `serial` and `serial-over-tcp` are stream transports; any other scheme is refused with
/// a message naming the driver, so a site-file mistake is reported at start, not as silence.
pub async fn connect(
    driver: &'static str,
    address: &Address,
    timeout: Duration,
) -> Result<BoxStream, DriverError> {
    match address {
        // `tcp://` is the same byte stream; only network sign controllers (BX) are given one.
        Address::SerialOverTcp { host, port } | Address::Tcp { host, port } => {
            let target = format!("{host}:{port}");
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(&target))
                .await
                .map_err(|_| DriverError::ConnectTimeout {
                    address: address.to_string(),
                    after: timeout,
                })?
                .map_err(|source| DriverError::Connect {
                    address: address.to_string(),
                    source,
                })?;
            // Small request frames (Q1\r, ACKs) must not wait for Nagle.
            tcp.set_nodelay(true)?;
            Ok(Box::new(tcp))
        }
        Address::Serial { path, serial } => {
            use tokio_serial::SerialPortBuilderExt;
            let parity = match serial.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            };
            let data_bits = match serial.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            };
            let stop_bits = if serial.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            };
            let port = tokio_serial::new(path.as_str(), serial.baud)
                .parity(parity)
                .data_bits(data_bits)
                .stop_bits(stop_bits)
                .timeout(timeout)
                .open_native_async()
                .map_err(|e| DriverError::Serial {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            // Bytes that reached the port while it was closed (a reply to a request that timed
            // out, frames sent before a reconnect) answer nothing of ours: a UPS or sign driver
            // would take the stale reply for the answer to its next request.
            if let Err(e) = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input)
            {
                tracing::debug!(path = %path, error = %e, "could not clear the serial input buffer");
            }
            Ok(Box::new(port))
        }
        other => Err(DriverError::UnsupportedAddress {
            driver,
            scheme: other.scheme(),
        }),
    }
}

/// Refuses non-stream addresses up front (used by every `spawn`). `allow_tcp` admits plain
/// `tcp://` for devices with their own network port (Onbon BX controllers).
pub fn check_address(
    driver: &'static str,
    address: &Address,
    allow_tcp: bool,
) -> Result<(), DriverError> {
    match address {
        Address::Serial { .. } | Address::SerialOverTcp { .. } => Ok(()),
        Address::Tcp { .. } if allow_tcp => Ok(()),
        other => Err(DriverError::UnsupportedAddress {
            driver,
            scheme: other.scheme(),
        }),
    }
}

/// Connection timing every stream driver shares. Field names match the profile keys.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct LinkSettings {
    /// Give up a connection attempt after this many milliseconds.
    pub connect_timeout_ms: u64,
    /// First reconnect delay; doubles per failure up to `reconnect_max_ms` (jittered).
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for LinkSettings {
    fn default() -> Self {
        LinkSettings {
            connect_timeout_ms: 3000,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
        }
    }
}

impl LinkSettings {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }
    pub fn backoff(&self) -> crate::Backoff {
        crate::Backoff::new(
            Duration::from_millis(self.reconnect_initial_ms.max(1)),
            Duration::from_millis(self.reconnect_max_ms.max(self.reconnect_initial_ms.max(1))),
        )
    }
}

/// Publishes a device's health and remembers whether the last published state was online,
/// so drivers emit `Link` events only on transitions.
#[derive(Debug)]
pub struct HealthReporter {
    tx: watch::Sender<DeviceHealth>,
    last_frame: Option<tokio::time::Instant>,
}

impl HealthReporter {
    pub fn new() -> (Self, watch::Receiver<DeviceHealth>) {
        let (tx, rx) = watch::channel(DeviceHealth::default());
        (
            HealthReporter {
                tx,
                last_frame: None,
            },
            rx,
        )
    }

    pub fn is_online(&self) -> bool {
        self.tx.borrow().online
    }

    /// A valid frame or reply arrived. Returns true when this brought the device online.
    pub fn seen(&mut self, rtt: Option<Duration>) -> bool {
        let now = tokio::time::Instant::now();
        let rtt = rtt.or_else(|| self.last_frame.map(|t| now - t));
        self.last_frame = Some(now);
        let mut came_online = false;
        self.tx.send_modify(|h| {
            came_online = !h.online;
            h.online = true;
            h.rtt = rtt;
            h.last_seen = Some(Utc::now());
        });
        came_online
    }

    /// The link failed or went silent. Returns true when this took the device offline.
    pub fn offline(&mut self, error: &str) -> bool {
        self.last_frame = None;
        let mut went_offline = false;
        self.tx.send_modify(|h| {
            went_offline = h.online;
            h.online = false;
            h.errors += 1;
            h.last_error = Some(error.to_string());
        });
        went_offline
    }

    /// A frame was rejected or a request failed without losing the link.
    pub fn error(&mut self, error: &str) {
        self.tx.send_modify(|h| {
            h.errors += 1;
            h.last_error = Some(error.to_string());
        });
    }

    pub fn snapshot(&self) -> DeviceHealth {
        self.tx.borrow().clone()
    }
}

/// Sends one `Link` event. Returns false when the event receiver is gone (the gateway is
/// shutting down), which ends the driver task.
pub(crate) async fn send_link(
    events: &tokio::sync::mpsc::Sender<crate::DeviceEvent>,
    name: &str,
    online: bool,
    error: Option<String>,
) -> bool {
    send_event(events, name, crate::EventKind::Link { online, error }).await
}

pub(crate) async fn send_event(
    events: &tokio::sync::mpsc::Sender<crate::DeviceEvent>,
    name: &str,
    kind: crate::EventKind,
) -> bool {
    events
        .send(crate::DeviceEvent {
            device: name.to_string(),
            at: Utc::now(),
            kind,
        })
        .await
        .is_ok()
}

/// Parses driver settings from a profile's `[settings]` table (possibly merged with a device
/// instance's overrides). Unknown keys are accepted so older binaries read newer profiles.
pub fn settings_from_toml<T: serde::de::DeserializeOwned>(
    value: &toml::Value,
) -> Result<T, DriverError> {
    value
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| DriverError::Settings(e.to_string()))
}

/// CRC-16 with the reflected 0xA001 polynomial: `init` 0xFFFF gives CRC16/Modbus (LED 0x64
/// cards), 0x0000 gives CRC16/ARC (Onbon BX).
pub fn crc16(init: u16, data: &[u8]) -> u16 {
    let mut crc = init;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Hex dump for debug logs.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl std::fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_stream_schemes() {
        let a: Address = "rtu-over-tcp://127.0.0.1:502".parse().unwrap();
        let err = connect("scale-stream", &a, Duration::from_millis(100))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("`rtu-over-tcp`"), "{err}");
        assert!(check_address("x", &a, true).is_err());
        let t: Address = "tcp://127.0.0.1:5005".parse().unwrap();
        assert!(check_address("x", &t, false).is_err());
        assert!(check_address("x", &t, true).is_ok());
    }

    #[tokio::test]
    async fn connects_over_tcp_and_reports_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let a: Address = format!("serial-over-tcp://127.0.0.1:{port}")
            .parse()
            .unwrap();
        assert!(connect("t", &a, Duration::from_secs(2)).await.is_ok());
        drop(l);
        let err = connect("t", &a, Duration::from_secs(2))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, DriverError::Connect { .. }), "{err}");
    }

    #[test]
    fn missing_serial_port_is_a_clear_error() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let a: Address = "serial:///dev/ecogate-no-such-port".parse().unwrap();
        let err = rt
            .block_on(connect("t", &a, Duration::from_millis(100)))
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("/dev/ecogate-no-such-port"),
            "{err}"
        );
    }

    #[test]
    fn health_transitions_are_reported_once() {
        let (mut h, rx) = HealthReporter::new();
        assert!(h.seen(None));
        assert!(!h.seen(None));
        assert!(rx.borrow().online);
        assert!(h.offline("idle"));
        assert!(!h.offline("idle"));
        assert_eq!(rx.borrow().errors, 2);
        assert_eq!(rx.borrow().last_error.as_deref(), Some("idle"));
    }

    #[test]
    fn crc_variants_match_reference_frames() {
        // LED 0x64 ACK: CRC16/Modbus over the header and data, sent low byte first.
        let ack = [0x00, 0x64, 0xFF, 0xFF, 0x30, 0x01, 0x00];
        assert_eq!(crc16(0xFFFF, &ack).to_le_bytes(), [0x36, 0xBB]);
        // BX ping body: CRC16/ARC.
        let body = [
            0x01, 0x00, 0x00, 0x80, 0, 0, 0, 0, 0, 0, 0xFE, 0x02, 0x05, 0x00, 0xA2, 0x00, 0x01,
            0x00, 0x00,
        ];
        assert_eq!(crc16(0x0000, &body).to_le_bytes(), [0x68, 0xF8]);
    }
}
