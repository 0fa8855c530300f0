//! A Modbus relay/DI module simulator (Waveshare-style map: coil n = relay n, DI n = input n,
//! FC05 to `flash_base + n` with a time in 100 ms = device-timed pulse), served on a TCP listener
//! either as Modbus TCP or as RTU framing (a simulated serial device server), or on a stream
//! (one end of a pty pair). Several modules can share one line (`RelaySim::start_line`): each
//! answers its own unit id and stays silent for the others, as on a multi-drop RS-485 bus.
//!
//! The frame handling is written here rather than with tokio-modbus's server because that server
//! rejects the vendor flash frame (FC05 with a value other than FF00/0000) and because tests need
//! the raw bytes, late replies, silence, and faults of the wire itself (garbage, split writes,
//! dropped connections).
//!
//! RTU over TCP behaves like a serial device server in transparent mode: the TCP connections
//! share one serial line, so whatever a module sends goes to the connection that is current when
//! the bytes leave it — a late reply lands on the gateway's *new* connection after a reconnect,
//! exactly the hazard of reference field-devices §7.2. Modbus TCP replies go back on the
//! connection their request came in on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::modbus::{crc16, rtu_frame, tcp_frame};
use crate::sim::stream_faults::{garbage, Rng};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP (MBAP header).
    Tcp,
    /// RTU frames over TCP (what a serial device server in transparent mode carries).
    RtuOverTcp,
}

/// What a simulated module does with the next requests addressed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Never answer.
    Silent,
    /// Answer, but only after this delay.
    Late(Duration),
    /// Answer every request with this exception code.
    Exception(u8),
    /// Answer every `every`-th request to this unit (counted over all connections) with
    /// exception `code`.
    ExceptionEvery {
        code: u8,
        every: u64,
    },
    /// Close the connection when a request arrives.
    Disconnect,
}

/// Faults of the wire rather than of one module: what line noise or a serial device server's
/// packetising does to every reply of a simulator. They combine with each other and with the
/// modules' [`Fault`]s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireFaults {
    /// Random bytes written before each reply.
    pub garbage: usize,
    /// Each reply is written in random pieces with 1–3 ms between them, as a serial server may
    /// forward one frame in several TCP packets.
    pub split: bool,
}

/// The connections of one simulator and the faults of its wire.
pub(crate) struct Wire {
    /// RTU framing: the connections share one serial line, so output goes to the newest open
    /// connection instead of the one the request came in on.
    shared_line: bool,
    faults: Mutex<WireFaults>,
    rng: Mutex<Rng>,
    /// Open connections, oldest first, each with the sender its writer drains.
    conns: Mutex<Vec<(u64, mpsc::UnboundedSender<Vec<u8>>)>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    /// Reply pieces delivered to another connection than the one their request came on.
    rerouted: AtomicU64,
    disconnect: watch::Sender<u64>,
}

impl Wire {
    pub(crate) fn new(framing: Framing) -> Arc<Wire> {
        Arc::new(Wire {
            shared_line: framing == Framing::RtuOverTcp,
            faults: Mutex::new(WireFaults::default()),
            // Fixed seed: a failing fault test replays the same garbage.
            rng: Mutex::new(Rng::new(0x5EED_0DB5)),
            conns: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            rerouted: AtomicU64::new(0),
            disconnect: watch::channel(0).0,
        })
    }

    pub(crate) fn faults(&self) -> WireFaults {
        *lock(&self.faults)
    }

    pub(crate) fn set_faults(&self, f: WireFaults) {
        *lock(&self.faults) = f;
    }

    /// Closes every open connection now; returns how many there were. New ones are accepted.
    pub(crate) fn disconnect_all(&self) -> usize {
        let n = lock(&self.conns).len();
        self.disconnect.send_modify(|g| *g += 1);
        n
    }

    pub(crate) fn open_connections(&self) -> usize {
        lock(&self.conns).len()
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn rerouted(&self) -> u64 {
        self.rerouted.load(Ordering::Relaxed)
    }

    fn attach(&self, tx: mpsc::UnboundedSender<Vec<u8>>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        lock(&self.conns).push((id, tx));
        id
    }

    fn detach(&self, id: u64) {
        lock(&self.conns).retain(|(i, _)| *i != id);
    }

    /// Hands bytes to the connection that gets them now; false when there is none (the bytes
    /// are lost, as they would be on a line nobody listens to).
    fn send(&self, from: u64, bytes: Vec<u8>) -> bool {
        let conns = lock(&self.conns);
        let target = if self.shared_line {
            conns.last()
        } else {
            conns.iter().find(|(id, _)| *id == from)
        };
        let Some((id, tx)) = target else {
            return false;
        };
        if *id != from {
            self.rerouted.fetch_add(1, Ordering::Relaxed);
        }
        tx.send(bytes).is_ok()
    }

    /// Sends one reply frame after `delay`, shaped by the wire faults in force now.
    fn emit(self: &Arc<Self>, from: u64, frame: Vec<u8>, delay: Duration) {
        let faults = self.faults();
        // (pause before the piece, piece)
        let mut pieces: Vec<(Duration, Vec<u8>)> = Vec::new();
        {
            let mut rng = lock(&self.rng);
            if faults.garbage > 0 {
                pieces.push((Duration::ZERO, garbage(&mut rng, faults.garbage, &[])));
            }
            if faults.split && frame.len() > 1 {
                let mut rest = frame.as_slice();
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len() as u64) as usize;
                    let gap = if pieces.is_empty() {
                        Duration::ZERO
                    } else {
                        Duration::from_millis(1 + rng.below(3))
                    };
                    pieces.push((gap, rest[..n].to_vec()));
                    rest = &rest[n..];
                }
            } else {
                pieces.push((Duration::ZERO, frame));
            }
        }
        if delay.is_zero() && pieces.iter().all(|(gap, _)| gap.is_zero()) {
            for (_, p) in pieces {
                self.send(from, p);
            }
            return;
        }
        let wire = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for (gap, p) in pieces {
                if !gap.is_zero() {
                    tokio::time::sleep(gap).await;
                }
                // Each piece is routed when it leaves: a reconnect in the middle of a reply
                // gets the rest of it, as on a real serial server.
                wire.send(from, p);
            }
        });
    }
}

/// A barrier wired to the module: OPEN/CLOSE contacts on two coils, limit switches on two DIs.
#[derive(Debug, Clone, Copy)]
pub struct BarrierModel {
    pub open_coil: u16,
    pub close_coil: u16,
    pub limit_open_di: u16,
    pub limit_closed_di: u16,
    pub travel: Duration,
    pub auto_close: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub unit: u8,
    pub channels: u16,
    pub flash_base: u16,
    pub barrier: Option<BarrierModel>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            unit: 1,
            channels: 8,
            flash_base: 0x0200,
            barrier: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoilChange {
    pub coil: u16,
    pub on: bool,
    pub at: Instant,
}

struct State {
    cfg: SimConfig,
    coils: Vec<bool>,
    dis: Vec<bool>,
    fault: Fault,
    frames: Vec<Vec<u8>>,
    coil_log: Vec<CoilChange>,
    requests: u64,
    replies: u64,
    /// Bumped on every barrier command so an older travel timer does not act.
    barrier_gen: u64,
}

impl State {
    fn new(cfg: SimConfig) -> State {
        let n = cfg.channels as usize;
        let mut dis = vec![false; n];
        if let Some(b) = cfg.barrier {
            // The barrier starts down.
            if let Some(d) = dis.get_mut(b.limit_closed_di as usize) {
                *d = true;
            }
        }
        State {
            cfg,
            coils: vec![false; n],
            dis,
            fault: Fault::None,
            frames: Vec::new(),
            coil_log: Vec::new(),
            requests: 0,
            replies: 0,
            barrier_gen: 0,
        }
    }
}

type Shared = Arc<Mutex<State>>;

fn lock<T>(s: &Mutex<T>) -> MutexGuard<'_, T> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// One simulated relay module (a unit id), on its own or on a shared line. Cheap to clone.
#[derive(Clone)]
pub struct RelayUnit {
    state: Shared,
}

impl RelayUnit {
    pub fn unit(&self) -> u8 {
        lock(&self.state).cfg.unit
    }

    pub fn set_fault(&self, fault: Fault) {
        lock(&self.state).fault = fault;
    }

    pub fn fault(&self) -> Fault {
        lock(&self.state).fault
    }

    /// Set a raw DI level (a loop detector contact, a limit switch).
    pub fn set_input(&self, di: u16, level: bool) {
        if let Some(d) = lock(&self.state).dis.get_mut(di as usize) {
            *d = level;
        }
    }

    pub fn input(&self, di: u16) -> bool {
        lock(&self.state)
            .dis
            .get(di as usize)
            .copied()
            .unwrap_or(false)
    }

    pub fn coil(&self, n: u16) -> bool {
        lock(&self.state)
            .coils
            .get(n as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Every coil change so far, in order.
    pub fn coil_log(&self) -> Vec<CoilChange> {
        lock(&self.state).coil_log.clone()
    }

    /// Raw request frames heard on the line (RTU with CRC, or TCP with MBAP), in order — also
    /// those addressed to other units, which a multi-drop device hears too.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        lock(&self.state).frames.clone()
    }

    /// Removes and returns the request frames logged so far: a long-running simulator
    /// (`ecogate sim io`) would otherwise keep every poll of a days-long session.
    pub fn take_frames(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut lock(&self.state).frames)
    }

    /// Removes and returns the coil changes logged so far.
    pub fn take_coil_log(&self) -> Vec<CoilChange> {
        std::mem::take(&mut lock(&self.state).coil_log)
    }

    /// Requests addressed to this unit, answered or not.
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }

    /// Replies (answers and exceptions) this unit has sent; silent and dropped requests do not
    /// count.
    pub fn replies(&self) -> u64 {
        lock(&self.state).replies
    }
}

/// A running simulator: one module, or several on one line. Dropping it stops the listener and
/// closes its connections. The per-module methods act on the first module.
pub struct RelaySim {
    addr: SocketAddr,
    framing: Framing,
    units: Vec<RelayUnit>,
    wire: Arc<Wire>,
    task: JoinHandle<()>,
}

impl Drop for RelaySim {
    fn drop(&mut self) {
        self.task.abort();
        self.wire.disconnect_all();
    }
}

fn units_of(cfgs: Vec<SimConfig>) -> std::io::Result<(Vec<RelayUnit>, Slaves)> {
    if cfgs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a simulated line needs at least one module",
        ));
    }
    let mut seen = Vec::new();
    let mut units = Vec::new();
    let mut slaves: Vec<Arc<dyn SimSlave>> = Vec::new();
    for cfg in cfgs {
        if seen.contains(&cfg.unit) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unit {} appears twice on one line", cfg.unit),
            ));
        }
        seen.push(cfg.unit);
        let state: Shared = Arc::new(Mutex::new(State::new(cfg)));
        slaves.push(Arc::new(state.clone()));
        units.push(RelayUnit { state });
    }
    Ok((units, slaves.into()))
}

impl RelaySim {
    /// Listen on 127.0.0.1 with an ephemeral port.
    pub async fn start(framing: Framing, cfg: SimConfig) -> std::io::Result<RelaySim> {
        Self::bind("127.0.0.1:0", framing, cfg).await
    }

    /// Listen on `addr` (`ecogate sim io --port N` needs a fixed port).
    pub async fn bind(addr: &str, framing: Framing, cfg: SimConfig) -> std::io::Result<RelaySim> {
        Self::bind_line(addr, framing, vec![cfg]).await
    }

    /// Several modules on one line (distinct unit ids), on 127.0.0.1 with an ephemeral port:
    /// an RS-485 bus behind a serial device server (`RtuOverTcp`), or units behind one Modbus
    /// TCP gateway (`Tcp`).
    pub async fn start_line(framing: Framing, cfgs: Vec<SimConfig>) -> std::io::Result<RelaySim> {
        Self::bind_line("127.0.0.1:0", framing, cfgs).await
    }

    pub async fn bind_line(
        addr: &str,
        framing: Framing,
        cfgs: Vec<SimConfig>,
    ) -> std::io::Result<RelaySim> {
        let (units, slaves) = units_of(cfgs)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let wire = Wire::new(framing);
        let task = spawn_listener(listener, framing, slaves, wire.clone());
        Ok(RelaySim {
            addr,
            framing,
            units,
            wire,
            task,
        })
    }

    /// Serve RTU frames on an existing stream (one end of a pty pair, a duplex pipe) instead of
    /// a listener. `addr()`/`address()` mean nothing for such a simulator.
    pub fn serve_rtu_stream<S>(stream: S, cfg: SimConfig) -> RelaySim
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let state: Shared = Arc::new(Mutex::new(State::new(cfg)));
        let slaves: Slaves = vec![Arc::new(state.clone()) as Arc<dyn SimSlave>].into();
        Self::on_stream(stream, vec![RelayUnit { state }], slaves)
    }

    /// Several modules on one RTU line served on an existing stream (a pty: the gateway opens
    /// the other end as its serial port).
    pub fn serve_rtu_stream_line<S>(stream: S, cfgs: Vec<SimConfig>) -> std::io::Result<RelaySim>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (units, slaves) = units_of(cfgs)?;
        Ok(Self::on_stream(stream, units, slaves))
    }

    fn on_stream<S>(stream: S, units: Vec<RelayUnit>, slaves: Slaves) -> RelaySim
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let wire = Wire::new(Framing::RtuOverTcp);
        let task = tokio::spawn(serve_conn(
            stream,
            Framing::RtuOverTcp,
            slaves,
            wire.clone(),
        ));
        RelaySim {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            framing: Framing::RtuOverTcp,
            units,
            wire,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address a driver would be configured with.
    pub fn address(&self) -> Address {
        let host = self.addr.ip().to_string();
        let port = self.addr.port();
        match self.framing {
            Framing::Tcp => Address::Tcp { host, port },
            Framing::RtuOverTcp => Address::RtuOverTcp { host, port },
        }
    }

    /// The module answering `unit`, if it is on this line.
    pub fn unit(&self, unit: u8) -> Option<&RelayUnit> {
        self.units.iter().find(|u| u.unit() == unit)
    }

    pub fn units(&self) -> &[RelayUnit] {
        &self.units
    }

    fn first(&self) -> &RelayUnit {
        // Constructors refuse an empty line.
        &self.units[0]
    }

    pub fn set_wire_faults(&self, faults: WireFaults) {
        self.wire.set_faults(faults);
    }

    pub fn wire_faults(&self) -> WireFaults {
        self.wire.faults()
    }

    /// Closes every open client connection now (new ones are still accepted); returns how many
    /// were open. On a stream-served simulator this ends the simulator.
    pub fn disconnect_all(&self) -> usize {
        self.wire.disconnect_all()
    }

    /// Client connections open now.
    pub fn connections(&self) -> usize {
        self.wire.open_connections()
    }

    /// Client connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.wire.accepted()
    }

    /// Reply pieces that went out on a newer connection than their request came in on (RTU
    /// over TCP: a late reply after the gateway reconnected). Tests use it to prove that a
    /// stale reply really reached the driver.
    pub fn rerouted(&self) -> u64 {
        self.wire.rerouted()
    }

    pub fn set_fault(&self, fault: Fault) {
        self.first().set_fault(fault);
    }

    /// Set a raw DI level (a loop detector contact, a limit switch).
    pub fn set_input(&self, di: u16, level: bool) {
        self.first().set_input(di, level);
    }

    pub fn input(&self, di: u16) -> bool {
        self.first().input(di)
    }

    pub fn coil(&self, n: u16) -> bool {
        self.first().coil(n)
    }

    /// Every coil change so far, in order.
    pub fn coil_log(&self) -> Vec<CoilChange> {
        self.first().coil_log()
    }

    /// Raw request frames heard (RTU with CRC, or TCP with MBAP), in order.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.first().frames()
    }

    /// Removes and returns the request frames logged so far.
    pub fn take_frames(&self) -> Vec<Vec<u8>> {
        self.first().take_frames()
    }

    /// Removes and returns the coil changes logged so far.
    pub fn take_coil_log(&self) -> Vec<CoilChange> {
        self.first().take_coil_log()
    }

    pub fn requests(&self) -> u64 {
        self.first().requests()
    }

    pub fn replies(&self) -> u64 {
        self.first().replies()
    }
}

/// What a simulated slave does with a request; the connection loop (framing, unit filter,
/// faults, late replies, wire faults) is the same for every Modbus simulator.
pub(crate) trait SimSlave: Send + Sync + 'static {
    fn unit(&self) -> u8;
    /// Every frame on the line, addressed to this unit or not.
    fn heard(&self, raw: &[u8]);
    /// Counts one request addressed to this unit; returns the fault in force and the request's
    /// number.
    fn request(&self) -> (Fault, u64);
    /// The reply PDU for a request PDU.
    fn process(&self, pdu: &[u8]) -> Vec<u8>;
    /// Counts one reply sent.
    fn answered(&self);
}

/// The modules on one line.
pub(crate) type Slaves = Arc<[Arc<dyn SimSlave>]>;

impl SimSlave for Shared {
    fn unit(&self) -> u8 {
        lock(self).cfg.unit
    }

    fn heard(&self, raw: &[u8]) {
        lock(self).frames.push(raw.to_vec());
    }

    fn request(&self) -> (Fault, u64) {
        let mut s = lock(self);
        s.requests += 1;
        (s.fault, s.requests)
    }

    fn process(&self, pdu: &[u8]) -> Vec<u8> {
        process(self, pdu)
    }

    fn answered(&self) {
        lock(self).replies += 1;
    }
}

pub(crate) fn spawn_listener(
    listener: TcpListener,
    framing: Framing,
    slaves: Slaves,
    wire: Arc<Wire>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(serve_conn(sock, framing, slaves.clone(), wire.clone()));
        }
    })
}

/// A client that sends bytes that never form a frame must not grow the buffer without end.
const MAX_BUFFERED: usize = 4096;

pub(crate) async fn serve_conn<S>(sock: S, framing: Framing, slaves: Slaves, wire: Arc<Wire>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(sock);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let mut gone = wire.disconnect.subscribe();
    let id = wire.attach(tx);
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    'conn: loop {
        tokio::select! {
            r = rd.read(&mut chunk) => {
                let n = match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_BUFFERED {
                    buf.drain(..buf.len() - 512);
                }
                loop {
                    let parsed = match framing {
                        Framing::Tcp => take_tcp(&mut buf),
                        Framing::RtuOverTcp => take_rtu(&mut buf),
                    };
                    let Some(req) = parsed else { break };
                    if !handle(req, framing, &slaves, &wire, id) {
                        break 'conn;
                    }
                }
            }
            Some(bytes) = rx.recv() => {
                if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
            }
            _ = gone.changed() => break,
        }
    }
    wire.detach(id);
    let _ = wr.shutdown().await;
}

/// One request off the wire; false when the connection is to be closed.
fn handle(
    (raw, header, unit, pdu): (Vec<u8>, u16, u8, Vec<u8>),
    framing: Framing,
    slaves: &Slaves,
    wire: &Arc<Wire>,
    conn: u64,
) -> bool {
    for s in slaves.iter() {
        s.heard(&raw);
    }
    let Some(slave) = slaves.iter().find(|s| s.unit() == unit) else {
        // Nobody on the line has this unit id: silence, as on a multi-drop bus.
        return true;
    };
    let (fault, nth) = slave.request();
    let exception = |code: u8| vec![pdu.first().copied().unwrap_or(0) | 0x80, code];
    let reply_pdu = match fault {
        // A silent device takes no writes either.
        Fault::Silent => return true,
        Fault::Disconnect => return false,
        Fault::Exception(code) => exception(code),
        Fault::ExceptionEvery { code, every } if nth % every.max(1) == 0 => exception(code),
        Fault::ExceptionEvery { .. } | Fault::None | Fault::Late(_) => slave.process(&pdu),
    };
    slave.answered();
    let frame = match framing {
        Framing::Tcp => tcp_frame(header, unit, &reply_pdu),
        Framing::RtuOverTcp => rtu_frame(unit, &reply_pdu),
    };
    let delay = match fault {
        Fault::Late(d) => d,
        _ => Duration::ZERO,
    };
    wire.emit(conn, frame, delay);
    true
}

/// One Modbus TCP ADU from the front of `buf`: (raw, transaction id, unit, pdu).
pub(crate) fn take_tcp(buf: &mut Vec<u8>) -> Option<(Vec<u8>, u16, u8, Vec<u8>)> {
    if buf.len() < 7 {
        return None;
    }
    let len = u16::from_be_bytes([buf[4], buf[5]]) as usize;
    if !(2..=254).contains(&len) {
        buf.clear();
        return None;
    }
    if buf.len() < 6 + len {
        return None;
    }
    let raw: Vec<u8> = buf.drain(..6 + len).collect();
    let tid = u16::from_be_bytes([raw[0], raw[1]]);
    Some((raw.clone(), tid, raw[6], raw[7..].to_vec()))
}

/// One RTU frame from the front of `buf`, resyncing on CRC failure.
pub(crate) fn take_rtu(buf: &mut Vec<u8>) -> Option<(Vec<u8>, u16, u8, Vec<u8>)> {
    loop {
        if buf.len() < 2 {
            return None;
        }
        let need = match buf[1] {
            0x01..=0x06 => 8,
            0x0F | 0x10 => {
                if buf.len() < 7 {
                    return None;
                }
                9 + buf[6] as usize
            }
            _ => {
                buf.remove(0);
                continue;
            }
        };
        if buf.len() < need {
            return None;
        }
        let crc = crc16(&buf[..need - 2]).to_le_bytes();
        if crc != buf[need - 2..need] {
            buf.remove(0);
            continue;
        }
        let raw: Vec<u8> = buf.drain(..need).collect();
        let pdu = raw[1..need - 2].to_vec();
        return Some((raw.clone(), 0, raw[0], pdu));
    }
}

fn u16_at(pdu: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([
        pdu.get(i).copied().unwrap_or(0),
        pdu.get(i + 1).copied().unwrap_or(0),
    ])
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

fn process(st: &Shared, pdu: &[u8]) -> Vec<u8> {
    let fc = pdu.first().copied().unwrap_or(0);
    let exc = |code: u8| vec![fc | 0x80, code];
    let a = u16_at(pdu, 1);
    let v = u16_at(pdu, 3);
    match fc {
        0x01 | 0x02 => {
            let s = lock(st);
            let src = if fc == 0x01 { &s.coils } else { &s.dis };
            let (start, end) = (a as usize, a as usize + v as usize);
            if v == 0 || v > 2000 || end > src.len() {
                return exc(0x02);
            }
            let bytes = pack_bits(&src[start..end]);
            let mut out = vec![fc, bytes.len() as u8];
            out.extend_from_slice(&bytes);
            out
        }
        0x03 | 0x04 => {
            let n = lock(st).cfg.channels;
            if v == 0 || v > 125 || a.saturating_add(v) > n {
                return exc(0x02);
            }
            let mut out = vec![fc, (v * 2) as u8];
            out.resize(2 + v as usize * 2, 0);
            out
        }
        0x05 => {
            let (n, flash_base) = {
                let s = lock(st);
                (s.cfg.channels, s.cfg.flash_base)
            };
            if a < n {
                match v {
                    0xFF00 => set_coil(st, a, true),
                    0x0000 => set_coil(st, a, false),
                    _ => return exc(0x03),
                }
            } else if a >= flash_base && a < flash_base + n {
                // Device-timed pulse: on now, off after v × 100 ms, whatever the master does.
                let coil = a - flash_base;
                set_coil(st, coil, true);
                let st2 = st.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(u64::from(v) * 100)).await;
                    set_coil(&st2, coil, false);
                });
            } else {
                return exc(0x02);
            }
            pdu.to_vec()
        }
        0x06 => {
            let n = lock(st).cfg.channels;
            if a >= n {
                return exc(0x02);
            }
            pdu[..5.min(pdu.len())].to_vec()
        }
        0x0F => {
            let n = lock(st).cfg.channels;
            if v == 0 || a.saturating_add(v) > n {
                return exc(0x02);
            }
            let data = pdu.get(6..).unwrap_or(&[]);
            for i in 0..v {
                let byte = data.get(i as usize / 8).copied().unwrap_or(0);
                set_coil(st, a + i, byte & (1 << (i % 8)) != 0);
            }
            pdu[..5.min(pdu.len())].to_vec()
        }
        _ => exc(0x01),
    }
}

fn set_coil(st: &Shared, coil: u16, on: bool) {
    let mut s = lock(st);
    let Some(c) = s.coils.get_mut(coil as usize) else {
        return;
    };
    let was = *c;
    *c = on;
    if was != on {
        s.coil_log.push(CoilChange {
            coil,
            on,
            at: Instant::now(),
        });
    }
    let Some(b) = s.cfg.barrier else { return };
    if !on || was {
        return;
    }
    // The barrier controller reacts to the rising edge of its OPEN/CLOSE contact.
    if coil == b.open_coil {
        s.barrier_gen += 1;
        let gen = s.barrier_gen;
        set_di(&mut s, b.limit_closed_di, false);
        drop(s);
        let st2 = st.clone();
        tokio::spawn(async move {
            tokio::time::sleep(b.travel).await;
            {
                let mut s = lock(&st2);
                if s.barrier_gen != gen {
                    return;
                }
                set_di(&mut s, b.limit_open_di, true);
            }
            if let Some(ac) = b.auto_close {
                tokio::time::sleep(ac).await;
                start_close(&st2, b, gen);
            }
        });
    } else if coil == b.close_coil {
        s.barrier_gen += 1;
        let gen = s.barrier_gen;
        drop(s);
        start_close(st, b, gen);
    }
}

fn start_close(st: &Shared, b: BarrierModel, gen: u64) {
    {
        let mut s = lock(st);
        if s.barrier_gen != gen {
            return;
        }
        set_di(&mut s, b.limit_open_di, false);
    }
    let st2 = st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(b.travel).await;
        let mut s = lock(&st2);
        if s.barrier_gen == gen {
            set_di(&mut s, b.limit_closed_di, true);
        }
    });
}

fn set_di(s: &mut State, di: u16, level: bool) {
    if let Some(d) = s.dis.get_mut(di as usize) {
        *d = level;
    }
}
