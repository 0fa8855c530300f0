//! Modbus transport: TCP, RTU on a local serial port, and RTU framing through a serial device
//! server (`rtu-over-tcp://`).
//!
//! One owner task per bus serialises every request, keeps the RTU inter-frame gap and wraps each
//! call in a timeout. After a timeout or any protocol/transport error the context is dropped and
//! the port or connection is reopened before the next request, so a late reply can never be taken
//! as the answer to the next request (reference field-devices §7.2; tokio-modbus issues #113,
//! #12, #324). Per-device health (online, round-trip time, errors) is published on a
//! `watch<DeviceHealth>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use crate::address::{Address, Parity, SerialSettings};
use crate::backoff::Backoff;
use crate::health::DeviceHealth;

/// Where a bus lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
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
}

impl Transport {
    pub fn from_address(address: &Address) -> Result<Self, ModbusError> {
        match address {
            Address::Tcp { host, port } => Ok(Transport::Tcp {
                host: host.clone(),
                port: *port,
            }),
            Address::Rtu { path, serial } => Ok(Transport::Rtu {
                path: path.clone(),
                serial: *serial,
            }),
            Address::RtuOverTcp { host, port } => Ok(Transport::RtuOverTcp {
                host: host.clone(),
                port: *port,
            }),
            other => Err(ModbusError::Address(format!(
                "`{other}` is not a Modbus address; use tcp://, rtu:// or rtu-over-tcp://"
            ))),
        }
    }

    fn is_rtu(&self) -> bool {
        !matches!(self, Transport::Tcp { .. })
    }

    fn key(&self) -> String {
        match self {
            Transport::Tcp { host, port } => format!("tcp://{host}:{port}"),
            Transport::Rtu { path, .. } => format!("rtu://{path}"),
            Transport::RtuOverTcp { host, port } => format!("rtu-over-tcp://{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModbusError {
    #[error("{0}")]
    Address(String),
    #[error("no reply from unit {unit} within {timeout_ms} ms")]
    Timeout { unit: u8, timeout_ms: u64 },
    #[error("unit {unit} answered with Modbus exception {code}")]
    Exception { unit: u8, code: String },
    #[error("cannot connect to {bus}: {reason}")]
    Connect { bus: String, reason: String },
    #[error("bus {bus} is offline; next reconnect attempt in {retry_in_ms} ms")]
    Offline { bus: String, retry_in_ms: u64 },
    #[error("unit {unit}: {reason}")]
    Protocol { unit: u8, reason: String },
    #[error("the bus task for {0} has stopped")]
    BusGone(String),
}

impl ModbusError {
    /// Exceptions are answers: the device is alive even if it refused the request.
    pub fn device_alive(&self) -> bool {
        matches!(self, ModbusError::Exception { .. })
    }
}

/// Timing of one bus.
#[derive(Debug, Clone, Copy)]
pub struct BusOptions {
    /// How long to wait for one reply.
    pub timeout: Duration,
    /// How long to wait for a TCP connect or a serial open.
    pub connect_timeout: Duration,
    /// Extra silence kept between an RTU reply and the next request (device turnaround), on top
    /// of the 3.5-character gap.
    pub turnaround: Duration,
    /// After an RTU timeout the port is reopened and must then stay silent for this long (at
    /// least `timeout`) before the next request: bytes of a late reply that arrive meanwhile are
    /// read and thrown away. RTU frames carry no transaction id, so this is the only thing that
    /// keeps a late answer from being taken for the next one.
    pub quiet_after_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        BusOptions {
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            turnaround: Duration::from_millis(2),
            quiet_after_timeout: Duration::ZERO,
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
        }
    }
}

enum Op {
    Modbus(Request<'static>),
    /// FC05 with a raw value (vendor "flash" pulse: value = time in 100 ms units).
    /// tokio-modbus only encodes and decodes FF00/0000 for FC05, so this goes out as a hand-built
    /// frame on a fresh connection of its own.
    RawCoil {
        addr: u16,
        value: u16,
    },
}

struct Job {
    unit: u8,
    request: Op,
    reply: oneshot::Sender<Result<(Response, Duration), ModbusError>>,
}

/// A handle on one bus's owner task. Cheap to clone.
#[derive(Clone)]
pub struct ModbusBus {
    tx: mpsc::Sender<Job>,
    name: Arc<str>,
    opts: BusOptions,
}

fn buses() -> &'static Mutex<HashMap<String, ModbusBus>> {
    static BUSES: OnceLock<Mutex<HashMap<String, ModbusBus>>> = OnceLock::new();
    BUSES.get_or_init(|| Mutex::new(HashMap::new()))
}

impl ModbusBus {
    /// Start a bus owner task (needs a tokio runtime).
    pub fn open(transport: Transport, opts: BusOptions) -> ModbusBus {
        let (tx, rx) = mpsc::channel(64);
        let name: Arc<str> = Arc::from(transport.key());
        tokio::spawn(run_bus(transport, opts, rx, name.clone()));
        ModbusBus { tx, name, opts }
    }

    /// The bus for `transport`, shared by every device on it: several units on one RS-485 line
    /// (or behind one serial server) must go through one owner task. The first opener's options
    /// win.
    pub fn shared(transport: Transport, opts: BusOptions) -> ModbusBus {
        let key = transport.key();
        let mut map = buses().lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, b| !b.tx.is_closed());
        map.entry(key)
            .or_insert_with(|| ModbusBus::open(transport, opts))
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A device (unit id) on this bus with its own health channel.
    pub fn device(&self, unit: u8) -> ModbusDevice {
        let (health, _) = watch::channel(DeviceHealth::default());
        ModbusDevice {
            bus: self.clone(),
            unit,
            health: Arc::new(health),
        }
    }

    async fn call(&self, unit: u8, request: Op) -> Result<(Response, Duration), ModbusError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                unit,
                request,
                reply,
            })
            .await
            .map_err(|_| ModbusError::BusGone(self.name.to_string()))?;
        rx.await
            .map_err(|_| ModbusError::BusGone(self.name.to_string()))?
    }
}

/// One unit on a bus.
#[derive(Clone)]
pub struct ModbusDevice {
    bus: ModbusBus,
    unit: u8,
    health: Arc<watch::Sender<DeviceHealth>>,
}

impl ModbusDevice {
    pub fn unit(&self) -> u8 {
        self.unit
    }

    pub fn health(&self) -> watch::Receiver<DeviceHealth> {
        self.health.subscribe()
    }

    pub fn timeout(&self) -> Duration {
        self.bus.opts.timeout
    }

    /// One request. Never waits longer than the queue ahead of it plus one timeout.
    pub async fn call(&self, request: Request<'static>) -> Result<Response, ModbusError> {
        self.call_op(Op::Modbus(request)).await
    }

    async fn call_op(&self, op: Op) -> Result<Response, ModbusError> {
        let res = self.bus.call(self.unit, op).await;
        let now = Utc::now();
        self.health.send_modify(|h| match &res {
            Ok((_, rtt)) => {
                h.online = true;
                h.last_error = None;
                h.rtt = Some(*rtt);
                h.last_seen = Some(now);
            }
            Err(e) => {
                h.errors += 1;
                h.last_error = Some(e.to_string());
                if e.device_alive() {
                    h.online = true;
                    h.last_seen = Some(now);
                } else {
                    h.online = false;
                }
            }
        });
        res.map(|(r, _)| r)
    }

    pub async fn read_coils(&self, addr: u16, count: u16) -> Result<Vec<bool>, ModbusError> {
        match self.call(Request::ReadCoils(addr, count)).await? {
            Response::ReadCoils(mut v) => {
                check_len(self.unit, v.len(), count)?;
                v.truncate(count as usize);
                Ok(v)
            }
            other => Err(self.mismatch("ReadCoils", &other)),
        }
    }

    pub async fn read_discrete_inputs(
        &self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<bool>, ModbusError> {
        match self.call(Request::ReadDiscreteInputs(addr, count)).await? {
            Response::ReadDiscreteInputs(mut v) => {
                check_len(self.unit, v.len(), count)?;
                v.truncate(count as usize);
                Ok(v)
            }
            other => Err(self.mismatch("ReadDiscreteInputs", &other)),
        }
    }

    pub async fn read_holding_registers(
        &self,
        addr: u16,
        count: u16,
    ) -> Result<Vec<u16>, ModbusError> {
        match self
            .call(Request::ReadHoldingRegisters(addr, count))
            .await?
        {
            Response::ReadHoldingRegisters(v) if v.len() == count as usize => Ok(v),
            other => Err(self.mismatch("ReadHoldingRegisters", &other)),
        }
    }

    pub async fn write_single_coil(&self, addr: u16, on: bool) -> Result<(), ModbusError> {
        match self.call(Request::WriteSingleCoil(addr, on)).await? {
            Response::WriteSingleCoil(a, _) if a == addr => Ok(()),
            other => Err(self.mismatch("WriteSingleCoil", &other)),
        }
    }

    /// FC05 with a raw 16-bit value: the vendor "flash" command (`01 05 02 00 00 07 8D B0` = relay
    /// 0 on for 700 ms, timed by the module). The device echoes the request.
    pub async fn write_single_coil_raw(&self, addr: u16, value: u16) -> Result<(), ModbusError> {
        match self.call_op(Op::RawCoil { addr, value }).await? {
            Response::WriteSingleCoil(a, _) if a == addr => Ok(()),
            other => Err(self.mismatch("WriteSingleCoil(raw)", &other)),
        }
    }

    pub async fn write_single_register(&self, addr: u16, value: u16) -> Result<(), ModbusError> {
        match self.call(Request::WriteSingleRegister(addr, value)).await? {
            Response::WriteSingleRegister(a, _) if a == addr => Ok(()),
            other => Err(self.mismatch("WriteSingleRegister", &other)),
        }
    }

    fn mismatch(&self, what: &str, got: &Response) -> ModbusError {
        ModbusError::Protocol {
            unit: self.unit,
            reason: format!("{what}: unexpected reply {got:?}"),
        }
    }
}

fn check_len(unit: u8, got: usize, want: u16) -> Result<(), ModbusError> {
    if got < want as usize {
        return Err(ModbusError::Protocol {
            unit,
            reason: format!("asked for {want} bits, reply carries {got}"),
        });
    }
    Ok(())
}

/// Read and discard until the line has been silent for `quiet` (bounded, for a babbling device).
async fn drain<S: tokio::io::AsyncRead + Unpin>(s: &mut S, quiet: Duration) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let cap = Instant::now() + quiet * 4 + Duration::from_secs(1);
    let mut buf = [0u8; 256];
    let mut dropped = 0usize;
    loop {
        if Instant::now() > cap {
            return Err(format!("line never went quiet ({dropped} bytes discarded)"));
        }
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) => return Err("connection closed while waiting for silence".into()),
            Ok(Ok(n)) => dropped += n,
            Ok(Err(e)) => return Err(e.to_string()),
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "discarded late bytes after an RTU timeout");
    }
    Ok(())
}

async fn connect(
    transport: &Transport,
    unit: u8,
    quiet: Option<Duration>,
) -> Result<Context, String> {
    match transport {
        Transport::Tcp { host, port } => {
            let s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            Ok(tokio_modbus::client::tcp::attach_slave(s, Slave(unit)))
        }
        Transport::RtuOverTcp { host, port } => {
            let mut s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| e.to_string())?;
            let _ = s.set_nodelay(true);
            if let Some(q) = quiet {
                drain(&mut s, q).await?;
            }
            Ok(tokio_modbus::client::rtu::attach_slave(s, Slave(unit)))
        }
        Transport::Rtu { .. } => {
            let mut port = open_serial(transport)?;
            if let Some(q) = quiet {
                drain(&mut port, q).await?;
            }
            Ok(tokio_modbus::client::rtu::attach_slave(port, Slave(unit)))
        }
    }
}

async fn run_bus(
    transport: Transport,
    opts: BusOptions,
    mut rx: mpsc::Receiver<Job>,
    name: Arc<str>,
) {
    let gap = match &transport {
        Transport::Rtu { serial, .. } => serial.frame_gap() + opts.turnaround,
        // A serial server's line speed is unknown here; 9600 8N1 is the common case.
        Transport::RtuOverTcp { .. } => SerialSettings::default().frame_gap() + opts.turnaround,
        Transport::Tcp { .. } => Duration::ZERO,
    };
    let mut ctx: Option<Context> = None;
    let mut backoff = Backoff::new(opts.backoff_initial, opts.backoff_max);
    let mut retry_at: Option<Instant> = None;
    let mut last_io = Instant::now();
    // Set after an RTU timeout: the next open must wait for silence first.
    let mut drain_next = false;
    let quiet = opts.quiet_after_timeout.max(opts.timeout);

    while let Some(job) = rx.recv().await {
        if job.reply.is_closed() {
            continue;
        }
        if let Op::RawCoil { addr, value } = job.request {
            // The raw frame needs the stream to itself: close the context, and reopen it on the
            // next ordinary request.
            ctx = None;
            let q = std::mem::take(&mut drain_next).then_some(quiet);
            let ready = last_io + gap;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready.into()).await;
            }
            let started = Instant::now();
            let res = tokio::time::timeout(
                opts.connect_timeout
                    + opts.timeout
                    + q.map(|q| q * 4 + Duration::from_secs(1))
                        .unwrap_or_default(),
                raw_write_coil(&transport, job.unit, addr, value, opts.timeout, q),
            )
            .await;
            last_io = Instant::now();
            let out = match res {
                Ok(Ok(())) => Ok((
                    Response::WriteSingleCoil(addr, value != 0),
                    last_io - started,
                )),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ModbusError::Timeout {
                    unit: job.unit,
                    timeout_ms: opts.timeout.as_millis() as u64,
                }),
            };
            if out.is_err() && transport.is_rtu() {
                drain_next = true;
            }
            let _ = job.reply.send(out);
            continue;
        }
        let Op::Modbus(request) = job.request else {
            continue;
        };
        if ctx.is_none() {
            if let Some(at) = retry_at {
                let now = Instant::now();
                if now < at {
                    // Fail fast while backing off: a dead device must not make callers queue.
                    let _ = job.reply.send(Err(ModbusError::Offline {
                        bus: name.to_string(),
                        retry_in_ms: (at - now).as_millis() as u64,
                    }));
                    continue;
                }
            }
            let q = drain_next.then_some(quiet);
            let limit = opts.connect_timeout
                + q.map(|q| q * 4 + Duration::from_secs(1))
                    .unwrap_or_default();
            match tokio::time::timeout(limit, connect(&transport, job.unit, q)).await {
                Ok(Ok(c)) => {
                    tracing::debug!(bus = %name, "modbus connected");
                    ctx = Some(c);
                    retry_at = None;
                    drain_next = false;
                }
                failed => {
                    let reason = match failed {
                        Ok(Err(e)) => e,
                        _ => format!(
                            "no connection within {} ms",
                            opts.connect_timeout.as_millis()
                        ),
                    };
                    let delay = backoff.next_delay();
                    retry_at = Some(Instant::now() + delay);
                    tracing::warn!(bus = %name, retry_ms = delay.as_millis() as u64, %reason, "modbus connect failed");
                    let _ = job.reply.send(Err(ModbusError::Connect {
                        bus: name.to_string(),
                        reason,
                    }));
                    continue;
                }
            }
        }
        let Some(c) = ctx.as_mut() else { continue };
        if !gap.is_zero() {
            let ready = last_io + gap;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready.into()).await;
            }
        }
        c.set_slave(Slave(job.unit));
        let started = Instant::now();
        let res = tokio::time::timeout(opts.timeout, c.call(request)).await;
        last_io = Instant::now();
        let rtt = last_io - started;
        let out = match res {
            Ok(Ok(Ok(resp))) => {
                backoff.reset();
                Ok((resp, rtt))
            }
            Ok(Ok(Err(code))) => Err(ModbusError::Exception {
                unit: job.unit,
                code: exception_name(code),
            }),
            Ok(Err(e)) => {
                // Header mismatch (TCP transaction id), CRC trouble, closed socket: the stream
                // can no longer be trusted to line up replies with requests.
                tracing::warn!(bus = %name, unit = job.unit, error = %e, "modbus error; reconnecting");
                ctx = None;
                Err(ModbusError::Protocol {
                    unit: job.unit,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                tracing::warn!(bus = %name, unit = job.unit, timeout_ms = opts.timeout.as_millis() as u64, "modbus timeout; reopening");
                ctx = None;
                if transport.is_rtu() {
                    drain_next = true;
                }
                Err(ModbusError::Timeout {
                    unit: job.unit,
                    timeout_ms: opts.timeout.as_millis() as u64,
                })
            }
        };
        let _ = job.reply.send(out);
    }
}

fn exception_name(code: ExceptionCode) -> String {
    format!("{code:?}")
}

/// CRC16/Modbus (poly 0xA001 reflected, init 0xFFFF), sent low byte first.
pub fn crc16(data: &[u8]) -> u16 {
    crate::stream::crc16(0xFFFF, data)
}

/// An RTU frame: unit, PDU, CRC (low byte first).
pub fn rtu_frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(pdu.len() + 3);
    f.push(unit);
    f.extend_from_slice(pdu);
    let crc = crc16(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

/// A Modbus TCP frame: MBAP header (transaction, protocol 0, length, unit) and PDU.
pub fn tcp_frame(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(pdu.len() + 7);
    f.extend_from_slice(&transaction.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&((pdu.len() as u16 + 1).to_be_bytes()));
    f.push(unit);
    f.extend_from_slice(pdu);
    f
}

async fn raw_write_coil(
    transport: &Transport,
    unit: u8,
    addr: u16,
    value: u16,
    timeout: Duration,
    quiet: Option<Duration>,
) -> Result<(), ModbusError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut pdu = vec![0x05];
    pdu.extend_from_slice(&addr.to_be_bytes());
    pdu.extend_from_slice(&value.to_be_bytes());
    let connect_err = |reason: String| ModbusError::Connect {
        bus: transport.key(),
        reason,
    };
    let proto = |reason: String| ModbusError::Protocol { unit, reason };
    let timed_out = || ModbusError::Timeout {
        unit,
        timeout_ms: timeout.as_millis() as u64,
    };
    let reply_pdu: Vec<u8> = match transport {
        Transport::Tcp { host, port } => {
            let mut s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            let tid = 0x4500;
            s.write_all(&tcp_frame(tid, unit, &pdu))
                .await
                .map_err(|e| proto(e.to_string()))?;
            let read = async {
                let mut hdr = [0u8; 7];
                s.read_exact(&mut hdr).await?;
                let len = u16::from_be_bytes([hdr[4], hdr[5]]) as usize;
                let mut body = vec![0u8; len.saturating_sub(1).min(260)];
                s.read_exact(&mut body).await?;
                Ok::<_, std::io::Error>((hdr, body))
            };
            let (hdr, body) = tokio::time::timeout(timeout, read)
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| proto(e.to_string()))?;
            if hdr[..2] != tid.to_be_bytes() {
                return Err(proto("reply carries another transaction id".into()));
            }
            body
        }
        Transport::RtuOverTcp { host, port } => {
            let mut s = TcpStream::connect((host.as_str(), *port))
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            if let Some(q) = quiet {
                drain(&mut s, q).await.map_err(connect_err)?;
            }
            rtu_exchange(s, unit, &pdu, timeout).await?
        }
        Transport::Rtu { .. } => {
            let mut port = open_serial(transport).map_err(connect_err)?;
            if let Some(q) = quiet {
                drain(&mut port, q).await.map_err(connect_err)?;
            }
            rtu_exchange(port, unit, &pdu, timeout).await?
        }
    };
    match reply_pdu.first() {
        Some(0x05) if reply_pdu == pdu => Ok(()),
        Some(0x85) => Err(ModbusError::Exception {
            unit,
            code: format!("0x{:02X}", reply_pdu.get(1).copied().unwrap_or(0)),
        }),
        _ => Err(proto(format!(
            "flash write: unexpected reply {reply_pdu:02X?}"
        ))),
    }
}

async fn rtu_exchange<S>(
    mut s: S,
    unit: u8,
    pdu: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ModbusError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proto = |reason: String| ModbusError::Protocol { unit, reason };
    s.write_all(&rtu_frame(unit, pdu))
        .await
        .map_err(|e| proto(e.to_string()))?;
    let read = async {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await?;
        // FC05 echo is 8 bytes, an exception 5.
        let rest = if head[1] & 0x80 != 0 { 3 } else { 6 };
        let mut tail = vec![0u8; rest];
        s.read_exact(&mut tail).await?;
        let mut frame = head.to_vec();
        frame.extend_from_slice(&tail);
        Ok::<_, std::io::Error>(frame)
    };
    let frame = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ModbusError::Timeout {
            unit,
            timeout_ms: timeout.as_millis() as u64,
        })?
        .map_err(|e| proto(e.to_string()))?;
    let n = frame.len();
    if crc16(&frame[..n - 2]).to_le_bytes() != frame[n - 2..] {
        return Err(proto(format!("bad CRC in reply {frame:02X?}")));
    }
    if frame[0] != unit {
        return Err(proto(format!(
            "reply from unit {} instead of {unit}",
            frame[0]
        )));
    }
    Ok(frame[1..n - 2].to_vec())
}

fn open_serial(transport: &Transport) -> Result<tokio_serial::SerialStream, String> {
    use tokio_serial::SerialPort;
    let Transport::Rtu { path, serial } = transport else {
        return Err("not a serial transport".into());
    };
    let builder = tokio_serial::new(path, serial.baud)
        .parity(match serial.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        })
        .data_bits(match serial.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        })
        .stop_bits(if serial.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        });
    let port = tokio_serial::SerialStream::open(&builder).map_err(|e| format!("{path}: {e}"))?;
    // Bytes that arrived while the port was closed belong to no request of ours.
    let _ = port.clear(tokio_serial::ClearBuffer::Input);
    Ok(port)
}
