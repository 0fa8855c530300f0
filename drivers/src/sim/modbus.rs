//! A Modbus relay/DI module simulator (Waveshare-style map: coil n = relay n, DI n = input n,
//! FC05 to `flash_base + n` with a time in 100 ms = device-timed pulse), served on a TCP listener
//! either as Modbus TCP or as RTU framing (a simulated serial device server).
//!
//! The frame handling is written here rather than with tokio-modbus's server because that server
//! rejects the vendor flash frame (FC05 with a value other than FF00/0000) and because tests need
//! the raw bytes, late replies on the same connection, and silence.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::modbus::{crc16, rtu_frame, tcp_frame};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP (MBAP header).
    Tcp,
    /// RTU frames over TCP (what a serial device server in transparent mode carries).
    RtuOverTcp,
}

/// What the simulated module does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Never answer.
    Silent,
    /// Answer, but only after this delay.
    Late(Duration),
    /// Answer every request with this exception code.
    Exception(u8),
    /// Answer every `every`-th request (counted over all connections) with exception `code`.
    ExceptionEvery {
        code: u8,
        every: u64,
    },
    /// Close the connection when a request arrives.
    Disconnect,
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
    /// Bumped on every barrier command so an older travel timer does not act.
    barrier_gen: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator. Dropping it stops the listener (open connections end with it).
pub struct RelaySim {
    addr: SocketAddr,
    framing: Framing,
    state: Shared,
    task: JoinHandle<()>,
}

impl Drop for RelaySim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RelaySim {
    /// Listen on 127.0.0.1 with an ephemeral port.
    pub async fn start(framing: Framing, cfg: SimConfig) -> std::io::Result<RelaySim> {
        Self::bind("127.0.0.1:0", framing, cfg).await
    }

    /// Listen on `addr` (`ecogate sim io --port N` needs a fixed port).
    pub async fn bind(addr: &str, framing: Framing, cfg: SimConfig) -> std::io::Result<RelaySim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let n = cfg.channels as usize;
        let mut dis = vec![false; n];
        if let Some(b) = cfg.barrier {
            if let Some(d) = dis.get_mut(b.limit_closed_di as usize) {
                *d = true;
            }
        }
        let state = Arc::new(Mutex::new(State {
            cfg,
            coils: vec![false; n],
            dis,
            fault: Fault::None,
            frames: Vec::new(),
            coil_log: Vec::new(),
            requests: 0,
            barrier_gen: 0,
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                tokio::spawn(serve_conn(sock, framing, st.clone()));
            }
        });
        Ok(RelaySim {
            addr,
            framing,
            state,
            task,
        })
    }

    /// Serve RTU frames on an existing stream (one end of a pty pair, a duplex pipe) instead of
    /// a listener. `addr()`/`address()` mean nothing for such a simulator.
    pub fn serve_rtu_stream<S>(stream: S, cfg: SimConfig) -> RelaySim
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let n = cfg.channels as usize;
        let state = Arc::new(Mutex::new(State {
            cfg,
            coils: vec![false; n],
            dis: vec![false; n],
            fault: Fault::None,
            frames: Vec::new(),
            coil_log: Vec::new(),
            requests: 0,
            barrier_gen: 0,
        }));
        let task = tokio::spawn(serve_conn(stream, Framing::RtuOverTcp, state.clone()));
        RelaySim {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            framing: Framing::RtuOverTcp,
            state,
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

    pub fn set_fault(&self, fault: Fault) {
        lock(&self.state).fault = fault;
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

    /// Raw request frames received (RTU with CRC, or TCP with MBAP), in order.
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

    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }
}

/// What a simulated slave does with a request; the connection loop (framing, unit filter,
/// faults, late replies) is the same for every Modbus simulator.
pub(crate) trait SimSlave: Send + 'static {
    /// Counts (and logs) one request; returns the fault in force, this slave's unit and the
    /// request's number.
    fn request(&self, raw: Vec<u8>) -> (Fault, u8, u64);
    /// The reply PDU for a request PDU.
    fn process(&self, pdu: &[u8]) -> Vec<u8>;
}

impl SimSlave for Shared {
    fn request(&self, raw: Vec<u8>) -> (Fault, u8, u64) {
        let mut s = lock(self);
        s.frames.push(raw);
        s.requests += 1;
        (s.fault, s.cfg.unit, s.requests)
    }

    fn process(&self, pdu: &[u8]) -> Vec<u8> {
        process(self, pdu)
    }
}

pub(crate) async fn serve_conn<S, T>(sock: S, framing: Framing, slave: T)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    T: SimSlave,
{
    let (mut rd, wr) = tokio::io::split(sock);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let parsed = match framing {
                Framing::Tcp => take_tcp(&mut buf),
                Framing::RtuOverTcp => take_rtu(&mut buf),
            };
            let Some((raw, header, unit, pdu)) = parsed else {
                break;
            };
            let (fault, my_unit, nth) = slave.request(raw);
            if unit != my_unit {
                // Another slave on the same bus: stay silent, as a multi-drop line would.
                continue;
            }
            let reply_pdu = match fault {
                // A silent device takes no writes either.
                Fault::Silent => continue,
                Fault::Disconnect => return,
                Fault::Exception(code) => vec![pdu.first().copied().unwrap_or(0) | 0x80, code],
                Fault::ExceptionEvery { code, every } if nth % every.max(1) == 0 => {
                    vec![pdu.first().copied().unwrap_or(0) | 0x80, code]
                }
                Fault::ExceptionEvery { .. } | Fault::None | Fault::Late(_) => slave.process(&pdu),
            };
            let frame = match framing {
                Framing::Tcp => tcp_frame(header, unit, &reply_pdu),
                Framing::RtuOverTcp => rtu_frame(unit, &reply_pdu),
            };
            if let Fault::Late(d) = fault {
                let wr = wr.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = wr.lock().await.write_all(&frame).await;
                });
            } else if wr.lock().await.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
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
