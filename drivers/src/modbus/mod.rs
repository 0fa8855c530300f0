//! Modbus transport: TCP, RTU on a local serial port, and RTU framing through a serial device
//! server (`rtu-over-tcp://`).
//!
//! One owner task per bus serialises every request, keeps the RTU inter-frame gap and wraps each
//! call in a timeout. After a timeout or any protocol/transport error the context is dropped and
//! the port or connection is reopened before the next request, so a late reply can never be taken
//! as the answer to the next request (reference field-devices §7.2; tokio-modbus issues #113,
//! #12, #324). Per-device health (online, round-trip time, errors) is published on a
//! `watch<DeviceHealth>`.
//!
//! Several units share one bus, so one dead unit must not eat the line: every request to it costs
//! a timeout plus a silence wait. After `offline_after` consecutive timeouts a unit is taken for
//! offline and its requests fail at once without touching the wire, except one probe per
//! (jittered, growing) backoff interval; any answer brings it back. Writes go ahead of queued
//! reads, so a relay OFF after a pulse waits for at most the request already on the wire.

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
    #[error("unit {unit} is offline (no reply to the last {timeouts} requests); next probe in {retry_in_ms} ms")]
    UnitOffline {
        unit: u8,
        timeouts: u32,
        retry_in_ms: u64,
    },
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

    /// When retrying can succeed at the earliest, for errors that fail fast while backing off.
    pub fn retry_in(&self) -> Option<Duration> {
        match self {
            ModbusError::Offline { retry_in_ms, .. }
            | ModbusError::UnitOffline { retry_in_ms, .. } => {
                Some(Duration::from_millis(*retry_in_ms))
            }
            _ => None,
        }
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
    /// Reconnect pacing of the bus (TCP connect, serial open).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Consecutive timeouts after which a unit is taken for offline: its requests then fail at
    /// once without touching the line, except one probe per backoff interval. 0 = never.
    pub offline_after: u32,
    /// Probe pacing of an offline unit (jittered exponential, from `probe_initial` up to
    /// `probe_max`). Each failed probe costs the bus a timeout plus a silence wait.
    pub probe_initial: Duration,
    pub probe_max: Duration,
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
            offline_after: 3,
            probe_initial: Duration::from_secs(1),
            probe_max: Duration::from_secs(10),
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

impl Op {
    /// Writes change the plant (a relay OFF ending a pulse, a sign's text) and go ahead of
    /// queued reads; reads are polls that the next cycle repeats anyway.
    fn is_write(&self) -> bool {
        match self {
            Op::RawCoil { .. } => true,
            Op::Modbus(r) => !matches!(
                r,
                Request::ReadCoils(..)
                    | Request::ReadDiscreteInputs(..)
                    | Request::ReadHoldingRegisters(..)
                    | Request::ReadInputRegisters(..)
            ),
        }
    }
}

struct Job {
    unit: u8,
    request: Op,
    reply: oneshot::Sender<Result<(Response, Duration), ModbusError>>,
}

/// A handle on one bus's owner task. Cheap to clone.
#[derive(Clone)]
pub struct ModbusBus {
    reads: mpsc::Sender<Job>,
    writes: mpsc::Sender<Job>,
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
        let (reads, reads_rx) = mpsc::channel(64);
        let (writes, writes_rx) = mpsc::channel(64);
        let name: Arc<str> = Arc::from(transport.key());
        let task = BusTask::new(transport, opts, name.clone());
        tokio::spawn(task.run(writes_rx, reads_rx));
        ModbusBus {
            reads,
            writes,
            name,
            opts,
        }
    }

    /// The bus for `transport`, shared by every device on it: several units on one RS-485 line
    /// (or behind one serial server) must go through one owner task. The first opener's options
    /// win.
    pub fn shared(transport: Transport, opts: BusOptions) -> ModbusBus {
        let key = transport.key();
        let mut map = buses().lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, b| !b.reads.is_closed());
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
        let queue = if request.is_write() {
            &self.writes
        } else {
            &self.reads
        };
        queue
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

    /// FC0F: several relays in one frame (`01 0F 00 00 00 08 01 FF BE D5` = all 8 on).
    pub async fn write_multiple_coils(&self, addr: u16, coils: &[bool]) -> Result<(), ModbusError> {
        let n = coils.len();
        match self
            .call(Request::WriteMultipleCoils(addr, coils.to_vec().into()))
            .await?
        {
            Response::WriteMultipleCoils(a, q) if a == addr && q as usize == n => Ok(()),
            other => Err(self.mismatch("WriteMultipleCoils", &other)),
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

/// What the bus knows about one unit on it.
#[derive(Debug)]
struct UnitHealth {
    /// Consecutive requests that timed out.
    timeouts: u32,
    offline: bool,
    /// While offline: the earliest time the next request may go out as a probe.
    next_probe: Instant,
    probe: Backoff,
}

/// Whether a request may go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Send,
    /// The unit is offline and its probe is due: this request is the probe.
    Probe,
    /// Fail fast: the unit is offline and the next probe is this far away.
    Refuse(Duration),
}

/// How a request ended, as far as the unit's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A reply or an exception: the unit is alive.
    Answered,
    Timeout,
    /// Garbled reply, closed connection, unreachable bus: says nothing certain about the unit.
    Other,
}

impl UnitHealth {
    fn new(opts: &BusOptions, now: Instant) -> Self {
        UnitHealth {
            timeouts: 0,
            offline: false,
            next_probe: now,
            probe: Backoff::new(opts.probe_initial, opts.probe_max),
        }
    }

    fn gate(&self, now: Instant) -> Gate {
        if !self.offline {
            Gate::Send
        } else if now >= self.next_probe {
            Gate::Probe
        } else {
            Gate::Refuse(self.next_probe - now)
        }
    }

    /// Records a request's outcome; returns the change of state worth logging, if any.
    fn record(&mut self, outcome: Outcome, offline_after: u32, now: Instant) -> Option<bool> {
        match outcome {
            Outcome::Answered => {
                self.timeouts = 0;
                self.probe.reset();
                let was = std::mem::replace(&mut self.offline, false);
                was.then_some(true)
            }
            Outcome::Timeout => {
                self.timeouts = self.timeouts.saturating_add(1);
                if self.offline {
                    self.next_probe = now + self.probe.next_delay();
                    None
                } else if offline_after > 0 && self.timeouts >= offline_after {
                    self.offline = true;
                    self.next_probe = now + self.probe.next_delay();
                    Some(false)
                } else {
                    None
                }
            }
            Outcome::Other => {
                // A failed probe all the same: wait a full interval before the next one.
                if self.offline {
                    self.next_probe = now + self.probe.next_delay();
                }
                None
            }
        }
    }
}

/// The owner task of one bus: the only code that touches its port or connection.
struct BusTask {
    transport: Transport,
    opts: BusOptions,
    name: Arc<str>,
    /// Silence kept between frames (RTU 3.5-character gap plus device turnaround).
    gap: Duration,
    ctx: Option<Context>,
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_io: Instant,
    /// Set after an RTU timeout or garbled exchange: the next open must wait for silence first.
    drain_next: bool,
    quiet: Duration,
    units: HashMap<u8, UnitHealth>,
}

impl BusTask {
    fn new(transport: Transport, opts: BusOptions, name: Arc<str>) -> Self {
        let gap = match &transport {
            Transport::Rtu { serial, .. } => serial.frame_gap() + opts.turnaround,
            // A serial server's line speed is unknown here; 9600 8N1 is the common case.
            Transport::RtuOverTcp { .. } => SerialSettings::default().frame_gap() + opts.turnaround,
            Transport::Tcp { .. } => Duration::ZERO,
        };
        BusTask {
            gap,
            ctx: None,
            backoff: Backoff::new(opts.backoff_initial, opts.backoff_max),
            retry_at: None,
            last_io: Instant::now(),
            drain_next: false,
            quiet: opts.quiet_after_timeout.max(opts.timeout),
            units: HashMap::new(),
            transport,
            opts,
            name,
        }
    }

    async fn run(mut self, mut writes: mpsc::Receiver<Job>, mut reads: mpsc::Receiver<Job>) {
        loop {
            let job = tokio::select! {
                biased;
                Some(job) = writes.recv() => job,
                Some(job) = reads.recv() => job,
                else => break,
            };
            if job.reply.is_closed() {
                continue;
            }
            let now = Instant::now();
            let opts = self.opts;
            let unit = self
                .units
                .entry(job.unit)
                .or_insert_with(|| UnitHealth::new(&opts, now));
            match unit.gate(now) {
                Gate::Refuse(wait) => {
                    let _ = job.reply.send(Err(ModbusError::UnitOffline {
                        unit: job.unit,
                        timeouts: unit.timeouts,
                        retry_in_ms: wait.as_millis() as u64,
                    }));
                    continue;
                }
                Gate::Probe => {
                    tracing::debug!(bus = %self.name, unit = job.unit, "probing offline unit");
                }
                Gate::Send => {}
            }
            let out = match job.request {
                Op::RawCoil { addr, value } => self.raw_coil(job.unit, addr, value).await,
                Op::Modbus(request) => self.modbus(job.unit, request).await,
            };
            let outcome = match &out {
                Ok(_) | Err(ModbusError::Exception { .. }) => Outcome::Answered,
                Err(ModbusError::Timeout { .. }) => Outcome::Timeout,
                Err(_) => Outcome::Other,
            };
            if let Some(unit) = self.units.get_mut(&job.unit) {
                match unit.record(outcome, opts.offline_after, Instant::now()) {
                    Some(true) => {
                        tracing::info!(bus = %self.name, unit = job.unit, "unit answers again");
                    }
                    Some(false) => tracing::warn!(
                        bus = %self.name,
                        unit = job.unit,
                        timeouts = unit.timeouts,
                        next_probe_ms = unit.next_probe.saturating_duration_since(Instant::now()).as_millis() as u64,
                        "unit offline; its requests fail fast until a probe is answered"
                    ),
                    None => {}
                }
            }
            let _ = job.reply.send(out);
        }
    }

    /// How long to wait before the next frame may go out (the context is not `Sync`, so this
    /// task never holds `&self` across an await).
    fn gap_wait(&self) -> Option<Instant> {
        let ready = self.last_io + self.gap;
        (!self.gap.is_zero() && Instant::now() < ready).then_some(ready)
    }

    fn timeout_error(&self, unit: u8) -> ModbusError {
        ModbusError::Timeout {
            unit,
            timeout_ms: self.opts.timeout.as_millis() as u64,
        }
    }

    async fn raw_coil(
        &mut self,
        unit: u8,
        addr: u16,
        value: u16,
    ) -> Result<(Response, Duration), ModbusError> {
        // The raw frame needs the stream to itself: close the context, and reopen it on the
        // next ordinary request.
        self.ctx = None;
        let q = std::mem::take(&mut self.drain_next).then_some(self.quiet);
        if let Some(ready) = self.gap_wait() {
            tokio::time::sleep_until(ready.into()).await;
        }
        let started = Instant::now();
        let res = tokio::time::timeout(
            self.opts.connect_timeout
                + self.opts.timeout
                + q.map(|q| q * 4 + Duration::from_secs(1))
                    .unwrap_or_default(),
            raw_write_coil(&self.transport, unit, addr, value, self.opts.timeout, q),
        )
        .await;
        self.last_io = Instant::now();
        let out = match res {
            Ok(Ok(())) => Ok((
                Response::WriteSingleCoil(addr, value != 0),
                self.last_io - started,
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.timeout_error(unit)),
        };
        if matches!(&out, Err(e) if !e.device_alive()) && self.transport.is_rtu() {
            self.drain_next = true;
        }
        out
    }

    async fn modbus(
        &mut self,
        unit: u8,
        request: Request<'static>,
    ) -> Result<(Response, Duration), ModbusError> {
        if self.ctx.is_none() {
            self.connect(unit).await?;
        }
        if let Some(ready) = self.gap_wait() {
            tokio::time::sleep_until(ready.into()).await;
        }
        let Some(c) = self.ctx.as_mut() else {
            return Err(ModbusError::BusGone(self.name.to_string()));
        };
        c.set_slave(Slave(unit));
        let started = Instant::now();
        let res = tokio::time::timeout(self.opts.timeout, c.call(request)).await;
        self.last_io = Instant::now();
        let rtt = self.last_io - started;
        match res {
            Ok(Ok(Ok(resp))) => {
                self.backoff.reset();
                Ok((resp, rtt))
            }
            Ok(Ok(Err(code))) => Err(ModbusError::Exception {
                unit,
                code: exception_name(code),
            }),
            Ok(Err(e)) => {
                // Header mismatch (TCP transaction id), CRC trouble, closed socket: the stream
                // can no longer be trusted to line up replies with requests. On RTU the rest of
                // a garbled reply may still be on its way, so the reopened line must go quiet
                // first.
                tracing::warn!(bus = %self.name, unit, error = %e, "modbus error; reconnecting");
                self.ctx = None;
                if self.transport.is_rtu() {
                    self.drain_next = true;
                }
                Err(ModbusError::Protocol {
                    unit,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                tracing::warn!(bus = %self.name, unit, timeout_ms = self.opts.timeout.as_millis() as u64, "modbus timeout; reopening");
                self.ctx = None;
                if self.transport.is_rtu() {
                    self.drain_next = true;
                }
                Err(self.timeout_error(unit))
            }
        }
    }

    async fn connect(&mut self, unit: u8) -> Result<(), ModbusError> {
        if let Some(at) = self.retry_at {
            let now = Instant::now();
            if now < at {
                // Fail fast while backing off: a dead bus must not make callers queue.
                return Err(ModbusError::Offline {
                    bus: self.name.to_string(),
                    retry_in_ms: (at - now).as_millis() as u64,
                });
            }
        }
        let q = self.drain_next.then_some(self.quiet);
        let limit = self.opts.connect_timeout
            + q.map(|q| q * 4 + Duration::from_secs(1))
                .unwrap_or_default();
        match tokio::time::timeout(limit, connect(&self.transport, unit, q)).await {
            Ok(Ok(c)) => {
                tracing::debug!(bus = %self.name, "modbus connected");
                self.ctx = Some(c);
                self.retry_at = None;
                self.drain_next = false;
                // The silence wait kept the line idle; the gap is measured from here.
                self.last_io = Instant::now();
                Ok(())
            }
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e,
                    _ => format!(
                        "no connection within {} ms",
                        self.opts.connect_timeout.as_millis()
                    ),
                };
                let delay = self.backoff.next_delay();
                self.retry_at = Some(Instant::now() + delay);
                tracing::warn!(bus = %self.name, retry_ms = delay.as_millis() as u64, %reason, "modbus connect failed");
                Err(ModbusError::Connect {
                    bus: self.name.to_string(),
                    reason,
                })
            }
        }
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
            code: exception_name(ExceptionCode::new(reply_pdu.get(1).copied().unwrap_or(0))),
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
        let mut buf: Vec<u8> = Vec::with_capacity(64);
        let mut chunk = [0u8; 64];
        loop {
            if let Some(frame) = take_raw_reply(&mut buf, unit) {
                return Ok::<_, std::io::Error>(frame);
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let frame = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ModbusError::Timeout {
            unit,
            timeout_ms: timeout.as_millis() as u64,
        })?
        .map_err(|e| proto(e.to_string()))?;
    Ok(frame[1..frame.len() - 2].to_vec())
}

/// The first CRC-valid FC05 echo or FC05 exception from `unit` in `buf`. Line noise before it is
/// skipped, as tokio-modbus's codec does for ordinary requests; a partial frame waits for more
/// bytes. The buffer stays bounded however long a babbling line goes on.
fn take_raw_reply(buf: &mut Vec<u8>, unit: u8) -> Option<Vec<u8>> {
    for start in 0..buf.len() {
        let len = match (buf.get(start), buf.get(start + 1)) {
            (Some(u), Some(0x05)) if *u == unit => 8,
            (Some(u), Some(0x85)) if *u == unit => 5,
            _ => continue,
        };
        let Some(frame) = buf.get(start..start + len) else {
            continue;
        };
        if crc16(&frame[..len - 2]).to_le_bytes() == frame[len - 2..] {
            let frame = frame.to_vec();
            if start > 0 {
                tracing::debug!(unit, dropped = start, "skipped noise before a reply");
            }
            buf.drain(..start + len);
            return Some(frame);
        }
    }
    if buf.len() > 512 {
        buf.drain(..buf.len() - 8);
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BusOptions {
        BusOptions {
            offline_after: 3,
            probe_initial: Duration::from_millis(400),
            probe_max: Duration::from_millis(1600),
            ..BusOptions::default()
        }
    }

    #[test]
    fn unit_goes_offline_after_consecutive_timeouts_only() {
        let o = opts();
        let t0 = Instant::now();
        let mut u = UnitHealth::new(&o, t0);
        // Two timeouts, an answer, two more: never three in a row.
        for outcome in [
            Outcome::Timeout,
            Outcome::Timeout,
            Outcome::Answered,
            Outcome::Timeout,
            Outcome::Other,
            Outcome::Timeout,
        ] {
            assert_eq!(u.record(outcome, o.offline_after, t0), None);
            assert_eq!(u.gate(t0), Gate::Send);
        }
        assert_eq!(u.record(Outcome::Timeout, o.offline_after, t0), Some(false));
        match u.gate(t0) {
            Gate::Refuse(wait) => {
                assert!(
                    wait >= o.probe_initial / 2 && wait <= o.probe_initial,
                    "{wait:?}"
                )
            }
            other => panic!("offline unit must fail fast, got {other:?}"),
        }
    }

    #[test]
    fn one_probe_per_growing_interval_then_back_online() {
        let o = opts();
        let mut now = Instant::now();
        let mut u = UnitHealth::new(&o, now);
        for _ in 0..3 {
            u.record(Outcome::Timeout, o.offline_after, now);
        }
        let mut last_wait = Duration::ZERO;
        for i in 0..4 {
            let Gate::Refuse(wait) = u.gate(now) else {
                panic!("probe {i}: refused expected")
            };
            // Just before the probe is due: still refused; at the due time: the probe.
            assert!(matches!(
                u.gate(now + wait - Duration::from_millis(1)),
                Gate::Refuse(_)
            ));
            now += wait;
            assert_eq!(u.gate(now), Gate::Probe);
            // The probe times out too: the next one is a full (larger) interval away.
            assert_eq!(u.record(Outcome::Timeout, o.offline_after, now), None);
            let cap = o
                .probe_initial
                .saturating_mul(1 << (i + 1))
                .min(o.probe_max);
            let Gate::Refuse(next) = u.gate(now) else {
                panic!("a failed probe must not open the gate")
            };
            assert!(
                next >= cap / 2 && next <= cap,
                "probe {i}: {next:?} vs {cap:?}"
            );
            last_wait = next;
        }
        assert!(last_wait >= o.probe_max / 2);
        now += last_wait;
        assert_eq!(u.gate(now), Gate::Probe);
        // A garbled answer to a probe is no proof of life either.
        assert_eq!(u.record(Outcome::Other, o.offline_after, now), None);
        assert!(matches!(u.gate(now), Gate::Refuse(_)));
        now += o.probe_max;
        assert_eq!(u.gate(now), Gate::Probe);
        assert_eq!(
            u.record(Outcome::Answered, o.offline_after, now),
            Some(true)
        );
        assert_eq!(u.gate(now), Gate::Send);
        // Back online, the count starts again from zero and the backoff from the start.
        u.record(Outcome::Timeout, o.offline_after, now);
        u.record(Outcome::Timeout, o.offline_after, now);
        assert_eq!(u.gate(now), Gate::Send);
        assert_eq!(
            u.record(Outcome::Timeout, o.offline_after, now),
            Some(false)
        );
        let Gate::Refuse(wait) = u.gate(now) else {
            panic!()
        };
        assert!(wait <= o.probe_initial, "{wait:?}");
    }

    #[test]
    fn offline_after_zero_never_refuses() {
        let o = BusOptions {
            offline_after: 0,
            ..opts()
        };
        let now = Instant::now();
        let mut u = UnitHealth::new(&o, now);
        for _ in 0..50 {
            assert_eq!(u.record(Outcome::Timeout, o.offline_after, now), None);
        }
        assert_eq!(u.gate(now), Gate::Send);
    }

    #[test]
    fn writes_are_told_apart_from_reads() {
        assert!(!Op::Modbus(Request::ReadCoils(0, 8)).is_write());
        assert!(!Op::Modbus(Request::ReadDiscreteInputs(0, 8)).is_write());
        assert!(!Op::Modbus(Request::ReadHoldingRegisters(0, 2)).is_write());
        assert!(!Op::Modbus(Request::ReadInputRegisters(0, 2)).is_write());
        assert!(Op::Modbus(Request::WriteSingleCoil(0, false)).is_write());
        assert!(Op::Modbus(Request::WriteMultipleCoils(0, vec![true; 8].into())).is_write());
        assert!(Op::Modbus(Request::WriteSingleRegister(0, 1)).is_write());
        assert!(Op::Modbus(Request::WriteMultipleRegisters(0, vec![1, 2].into())).is_write());
        assert!(Op::RawCoil {
            addr: 0x200,
            value: 7
        }
        .is_write());
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn raw_reply_is_found_behind_noise_and_across_pieces() {
        let echo = hex("01 05 02 00 00 07 8D B0");
        // Noise that includes a false start (unit id then 0x05 with a wrong CRC).
        let mut wire = hex("FF 00 01 05 02 00 13 37 AA 01");
        wire.extend_from_slice(&echo);
        wire.extend_from_slice(&hex("01 02"));
        // Fed in every split: never a wrong frame, and the echo once all of it is there.
        for cut in 0..wire.len() {
            let mut buf = wire[..cut].to_vec();
            let early = take_raw_reply(&mut buf, 1);
            if let Some(f) = &early {
                assert_eq!(f, &echo, "cut {cut}");
            }
            buf.extend_from_slice(&wire[cut..]);
            let got = early.or_else(|| take_raw_reply(&mut buf, 1));
            assert_eq!(got.as_deref(), Some(&echo[..]), "cut {cut}");
        }
        // Reference exception frame: FC05 illegal data address.
        let mut buf = hex("00 01 85 02 C3 51");
        assert_eq!(take_raw_reply(&mut buf, 1), Some(hex("01 85 02 C3 51")));
        // Another unit's reply is not ours.
        let mut buf = rtu_frame(2, &hex("05 02 00 00 07"));
        assert_eq!(take_raw_reply(&mut buf, 1), None);
    }

    #[test]
    fn raw_reply_buffer_stays_bounded() {
        let mut buf = Vec::new();
        for _ in 0..100 {
            buf.extend_from_slice(&[0xAA; 64]);
            assert_eq!(take_raw_reply(&mut buf, 1), None);
            assert!(buf.len() <= 512 + 64);
        }
    }

    #[test]
    fn reference_frames_encode_byte_for_byte() {
        assert_eq!(
            rtu_frame(1, &hex("05 00 00 FF 00")),
            hex("01 05 00 00 FF 00 8C 3A")
        );
        assert_eq!(rtu_frame(1, &hex("02 01 05")), hex("01 02 01 05 61 8B"));
        assert_eq!(rtu_frame(1, &hex("85 02")), hex("01 85 02 C3 51"));
        assert_eq!(
            rtu_frame(1, &hex("0F 00 00 00 08 01 FF")),
            hex("01 0F 00 00 00 08 01 FF BE D5")
        );
        assert_eq!(
            tcp_frame(1, 1, &hex("05 00 00 FF 00")),
            hex("00 01 00 00 00 06 01 05 00 00 FF 00")
        );
    }
}
