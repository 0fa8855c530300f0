//! Device addresses as written in the site file.
//!
//! - `tcp://host:port` — Modbus TCP, or a TCP protocol (BX sign, ISAPI) as the profile says
//! - `rtu:///dev/ttyS1?baud=9600&parity=N&data=8&stop=1` — Modbus RTU on a local serial port
//! - `rtu-over-tcp://host:port` — Modbus RTU framing through a serial device server
//! - `serial:///dev/ttyS1?baud=9600` — a stream protocol (scale, LED card, UPS) on a local port
//! - `serial-over-tcp://host:port` — the same through a serial device server
//! - `http://host:port` — a device the gateway calls over HTTP (ISAPI, VZ control)
//! - `ingest:ID` — a camera that pushes to the gateway's HTTP listener under `ID`

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp {
        host: String,
        port: u16,
    },
    Rtu {
        path: String,
        serial: SerialSettings,
    },
    RtuOverTcp {
        host: String,
        port: u16,
    },
    Serial {
        path: String,
        serial: SerialSettings,
    },
    SerialOverTcp {
        host: String,
        port: u16,
    },
    Http {
        host: String,
        port: u16,
    },
    Ingest {
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SerialSettings {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        }
    }
}

impl SerialSettings {
    /// Modbus RTU inter-frame silence: 3.5 characters, fixed at 1.75 ms above 19200 baud.
    pub fn frame_gap(&self) -> Duration {
        if self.baud > 19_200 {
            return Duration::from_micros(1750);
        }
        let bits_per_char = 1
            + u64::from(self.data_bits)
            + u64::from(self.stop_bits)
            + u64::from(self.parity != Parity::None);
        Duration::from_micros(bits_per_char * 3_500_000 / u64::from(self.baud.max(1)))
    }
}

impl Address {
    /// The scheme as written, for messages.
    pub fn scheme(&self) -> &'static str {
        match self {
            Address::Tcp { .. } => "tcp",
            Address::Rtu { .. } => "rtu",
            Address::RtuOverTcp { .. } => "rtu-over-tcp",
            Address::Serial { .. } => "serial",
            Address::SerialOverTcp { .. } => "serial-over-tcp",
            Address::Http { .. } => "http",
            Address::Ingest { .. } => "ingest",
        }
    }

    pub const SCHEMES: [&'static str; 7] = [
        "tcp",
        "rtu",
        "rtu-over-tcp",
        "serial",
        "serial-over-tcp",
        "http",
        "ingest",
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address `{0}` has no scheme; write e.g. tcp://127.0.0.1:502, rtu:///dev/ttyS1?baud=9600, serial-over-tcp://10.0.0.5:4001 or ingest:cam1")]
    NoScheme(String),
    #[error("unknown address scheme `{0}`; expected one of tcp, rtu, rtu-over-tcp, serial, serial-over-tcp, http, ingest")]
    UnknownScheme(String),
    #[error("`{0}` needs host:port, e.g. {1}://127.0.0.1:502")]
    HostPort(String, &'static str),
    #[error("port `{0}` is not a number from 1 to 65535")]
    BadPort(String),
    #[error("`{0}` needs a device path, e.g. {1}:///dev/ttyS1?baud=9600")]
    NoPath(String, &'static str),
    #[error("serial option `{0}`: {1}")]
    SerialOption(String, String),
    #[error("ingest id is empty; write ingest:cam1")]
    EmptyIngest,
}

fn host_port(rest: &str, scheme: &'static str) -> Result<(String, u16), AddressError> {
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| AddressError::HostPort(rest.to_string(), scheme))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(AddressError::HostPort(rest.to_string(), scheme));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| AddressError::BadPort(port.to_string()))?;
    Ok((host.to_string(), port))
}

fn serial(rest: &str, scheme: &'static str) -> Result<(String, SerialSettings), AddressError> {
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || !path.starts_with('/') {
        return Err(AddressError::NoPath(rest.to_string(), scheme));
    }
    let mut s = SerialSettings::default();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let bad = |why: &str| AddressError::SerialOption(kv.to_string(), why.to_string());
        match k {
            "baud" => {
                s.baud = v
                    .parse()
                    .ok()
                    .filter(|b| (300..=4_000_000).contains(b))
                    .ok_or_else(|| bad("baud must be a number such as 9600 or 19200"))?
            }
            "parity" => {
                s.parity = match v {
                    "N" | "n" | "none" => Parity::None,
                    "E" | "e" | "even" => Parity::Even,
                    "O" | "o" | "odd" => Parity::Odd,
                    _ => return Err(bad("parity must be N, E or O")),
                }
            }
            "data" => {
                s.data_bits = v
                    .parse()
                    .ok()
                    .filter(|d| (5..=8).contains(d))
                    .ok_or_else(|| bad("data bits must be 5 to 8"))?
            }
            "stop" => {
                s.stop_bits = v
                    .parse()
                    .ok()
                    .filter(|d| (1..=2).contains(d))
                    .ok_or_else(|| bad("stop bits must be 1 or 2"))?
            }
            _ => return Err(bad("unknown option; use baud, parity, data, stop")),
        }
    }
    Ok((path.to_string(), s))
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, AddressError> {
        let s = s.trim();
        if let Some(id) = s.strip_prefix("ingest:") {
            let id = id.trim_start_matches("//");
            if id.is_empty() {
                return Err(AddressError::EmptyIngest);
            }
            return Ok(Address::Ingest { id: id.to_string() });
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| AddressError::NoScheme(s.to_string()))?;
        Ok(match scheme {
            "tcp" => {
                let (host, port) = host_port(rest, "tcp")?;
                Address::Tcp { host, port }
            }
            "rtu-over-tcp" => {
                let (host, port) = host_port(rest, "rtu-over-tcp")?;
                Address::RtuOverTcp { host, port }
            }
            "serial-over-tcp" => {
                let (host, port) = host_port(rest, "serial-over-tcp")?;
                Address::SerialOverTcp { host, port }
            }
            "http" => {
                let (host, port) = host_port(rest, "http")?;
                Address::Http { host, port }
            }
            "rtu" => {
                let (path, serial) = serial(rest, "rtu")?;
                Address::Rtu { path, serial }
            }
            "serial" => {
                let (path, serial) = serial(rest, "serial")?;
                Address::Serial { path, serial }
            }
            other => return Err(AddressError::UnknownScheme(other.to_string())),
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port }
            | Address::RtuOverTcp { host, port }
            | Address::SerialOverTcp { host, port }
            | Address::Http { host, port } => write!(f, "{}://{host}:{port}", self.scheme()),
            Address::Rtu { path, serial } | Address::Serial { path, serial } => {
                let p = match serial.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                };
                write!(
                    f,
                    "{}://{path}?baud={}&parity={p}&data={}&stop={}",
                    self.scheme(),
                    serial.baud,
                    serial.data_bits,
                    serial.stop_bits
                )
            }
            Address::Ingest { id } => write!(f, "ingest:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme_and_round_trips() {
        for s in [
            "tcp://127.0.0.1:502",
            "rtu:///dev/ttyS1?baud=19200&parity=E&data=8&stop=1",
            "rtu-over-tcp://10.0.0.5:4001",
            "serial:///dev/ttyUSB0?baud=9600&parity=N&data=8&stop=1",
            "serial-over-tcp://127.0.0.1:4002",
            "http://127.0.0.1:8080",
            "ingest:cam1",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
    }

    #[test]
    fn rejects_bad_addresses_with_a_reason() {
        assert!(matches!(
            "127.0.0.1:502".parse::<Address>(),
            Err(AddressError::NoScheme(_))
        ));
        assert!(matches!(
            "udp://h:1".parse::<Address>(),
            Err(AddressError::UnknownScheme(_))
        ));
        assert!(matches!(
            "tcp://host".parse::<Address>(),
            Err(AddressError::HostPort(..))
        ));
        assert!(matches!(
            "tcp://host:99999".parse::<Address>(),
            Err(AddressError::BadPort(_))
        ));
        assert!(matches!(
            "rtu://ttyS1".parse::<Address>(),
            Err(AddressError::NoPath(..))
        ));
        assert!(matches!(
            "rtu:///dev/ttyS1?baud=fast".parse::<Address>(),
            Err(AddressError::SerialOption(..))
        ));
        assert!(matches!(
            "ingest:".parse::<Address>(),
            Err(AddressError::EmptyIngest)
        ));
    }

    #[test]
    fn frame_gap_follows_baud() {
        let s = SerialSettings::default();
        // 10 bits/char at 9600 baud: 3.5 chars ≈ 3.645 ms
        assert_eq!(s.frame_gap(), Duration::from_micros(3645));
        let fast = SerialSettings { baud: 115_200, ..s };
        assert_eq!(fast.frame_gap(), Duration::from_micros(1750));
    }
}
