//! A Modbus register-table simulator: a weighbridge indicator's weight and status words, or a
//! PLC-style LED sign's text blocks. Tests (and `ecogate sim`) set registers the driver reads and
//! read back the blocks it writes, with the relay simulator's faults (silent, late, exception,
//! exception every n-th request, disconnect on request) and wire faults (garbage before replies,
//! split replies, dropping every connection now). Served on 127.0.0.1 as Modbus TCP or RTU framing
//! over TCP; RTU over TCP behaves like a serial device server (a late reply goes to the
//! connection that is current when it is sent).
//!
//! FC03 and FC04 read the same table: indicators differ in which one they answer, and a test
//! chooses the function in the driver's settings, not in the simulator.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::address::Address;
use crate::sim::modbus::{spawn_listener, Fault, Framing, SimSlave, Slaves, Wire, WireFaults};

#[derive(Debug, Clone)]
pub struct RegSimConfig {
    pub unit: u8,
    /// Registers 0..size exist; anything beyond answers exception 02 (illegal address).
    pub size: u16,
}

impl Default for RegSimConfig {
    fn default() -> Self {
        RegSimConfig {
            unit: 1,
            size: 1024,
        }
    }
}

/// One write the simulator accepted, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegWriteLog {
    /// 0x06 or 0x10.
    pub function: u8,
    pub register: u16,
    pub values: Vec<u16>,
    pub at: Instant,
}

struct State {
    cfg: RegSimConfig,
    regs: Vec<u16>,
    fault: Fault,
    writes: Vec<RegWriteLog>,
    requests: u64,
    replies: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running register simulator. Dropping it stops the listener and closes its connections.
pub struct RegSim {
    addr: SocketAddr,
    framing: Framing,
    state: Shared,
    wire: Arc<Wire>,
    task: JoinHandle<()>,
}

impl Drop for RegSim {
    fn drop(&mut self) {
        self.task.abort();
        self.wire.disconnect_all();
    }
}

impl RegSim {
    /// Listen on 127.0.0.1 with an ephemeral port.
    pub async fn start(framing: Framing, cfg: RegSimConfig) -> std::io::Result<RegSim> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            regs: vec![0; cfg.size as usize],
            cfg,
            fault: Fault::None,
            writes: Vec::new(),
            requests: 0,
            replies: 0,
        }));
        let slaves: Slaves = vec![Arc::new(state.clone()) as Arc<dyn SimSlave>].into();
        let wire = Wire::new(framing);
        let task = spawn_listener(listener, framing, slaves, wire.clone());
        Ok(RegSim {
            addr,
            framing,
            state,
            wire,
            task,
        })
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

    pub fn set_wire_faults(&self, faults: WireFaults) {
        self.wire.set_faults(faults);
    }

    /// Closes every open client connection now (new ones are still accepted); returns how many
    /// were open.
    pub fn disconnect_all(&self) -> usize {
        self.wire.disconnect_all()
    }

    /// Sets consecutive registers from `start` in one step, so a poll never sees half of a
    /// 32-bit value (an indicator updates its map between requests, not inside one).
    pub fn set_registers(&self, start: u16, values: &[u16]) {
        let mut s = lock(&self.state);
        for (i, v) in values.iter().enumerate() {
            if let Some(r) = s.regs.get_mut(start as usize + i) {
                *r = *v;
            }
        }
    }

    pub fn set_register(&self, register: u16, value: u16) {
        self.set_registers(register, &[value]);
    }

    pub fn registers(&self, start: u16, count: u16) -> Vec<u16> {
        let s = lock(&self.state);
        (start..start.saturating_add(count))
            .map(|r| s.regs.get(r as usize).copied().unwrap_or(0))
            .collect()
    }

    pub fn register(&self, register: u16) -> u16 {
        self.registers(register, 1)[0]
    }

    /// The bytes of a text block (`max_bytes` long, two per register, high byte first) up to the
    /// first NUL, as a sign controller would read them.
    pub fn block_bytes(&self, start: u16, max_bytes: usize) -> Vec<u8> {
        let words = self.registers(start, max_bytes.div_ceil(2) as u16);
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        bytes.truncate(max_bytes);
        if let Some(end) = bytes.iter().position(|b| *b == 0) {
            bytes.truncate(end);
        }
        bytes
    }

    /// A text block decoded from GBK.
    pub fn block_text(&self, start: u16, max_bytes: usize) -> String {
        crate::led::gbk_to_string(&self.block_bytes(start, max_bytes))
    }

    /// Every accepted write so far, in order.
    pub fn writes(&self) -> Vec<RegWriteLog> {
        lock(&self.state).writes.clone()
    }

    pub fn clear_writes(&self) {
        lock(&self.state).writes.clear();
    }

    /// Requests addressed to this simulator's unit, answered or not.
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }

    /// Replies (answers and exceptions) sent.
    pub fn replies(&self) -> u64 {
        lock(&self.state).replies
    }
}

impl SimSlave for Shared {
    fn unit(&self) -> u8 {
        lock(self).cfg.unit
    }

    fn heard(&self, _raw: &[u8]) {}

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

fn u16_at(pdu: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([
        pdu.get(i).copied().unwrap_or(0),
        pdu.get(i + 1).copied().unwrap_or(0),
    ])
}

fn process(st: &Shared, pdu: &[u8]) -> Vec<u8> {
    let fc = pdu.first().copied().unwrap_or(0);
    let exc = |code: u8| vec![fc | 0x80, code];
    let a = u16_at(pdu, 1);
    let v = u16_at(pdu, 3);
    let mut s = lock(st);
    let size = s.regs.len();
    match fc {
        0x03 | 0x04 => {
            if v == 0 || v > 125 || a as usize + v as usize > size {
                return exc(0x02);
            }
            let mut out = vec![fc, (v * 2) as u8];
            for r in &s.regs[a as usize..a as usize + v as usize] {
                out.extend_from_slice(&r.to_be_bytes());
            }
            out
        }
        0x06 => {
            if a as usize >= size {
                return exc(0x02);
            }
            s.regs[a as usize] = v;
            s.writes.push(RegWriteLog {
                function: 0x06,
                register: a,
                values: vec![v],
                at: Instant::now(),
            });
            pdu[..5.min(pdu.len())].to_vec()
        }
        0x10 => {
            let bytes = pdu.get(5).copied().unwrap_or(0) as usize;
            let data = pdu.get(6..).unwrap_or(&[]);
            if v == 0 || v > 123 || bytes != v as usize * 2 || data.len() < bytes {
                return exc(0x03);
            }
            if a as usize + v as usize > size {
                return exc(0x02);
            }
            let values: Vec<u16> = (0..v as usize).map(|i| u16_at(data, i * 2)).collect();
            s.regs[a as usize..a as usize + v as usize].copy_from_slice(&values);
            s.writes.push(RegWriteLog {
                function: 0x10,
                register: a,
                values,
                at: Instant::now(),
            });
            pdu[..5.min(pdu.len())].to_vec()
        }
        _ => exc(0x01),
    }
}

/// A register simulator behind a [`FaultyFront`](super::stream_faults::FaultyFront) on a fixed
/// address: the part the register scale and the register sign share — the wire faults, the
/// table's own exception fault, and the address a driver is configured with.
pub struct RegFront {
    regs: Arc<RegSim>,
    front: super::stream_faults::FaultyFront,
    local: SocketAddr,
    framing: Framing,
    exception_every: Mutex<Option<u64>>,
}

impl RegFront {
    /// Starts a table of `size` registers for `unit` and a front for it on `addr` (port 0 = a
    /// free one); `seed` drives the front's random faults.
    pub async fn bind(
        addr: &str,
        framing: Framing,
        unit: u8,
        size: u16,
        seed: u64,
    ) -> std::io::Result<RegFront> {
        let regs = Arc::new(RegSim::start(framing, RegSimConfig { unit, size }).await?);
        let (front, local) =
            super::stream_faults::FaultyFront::bind(addr, regs.addr(), seed).await?;
        Ok(RegFront {
            regs,
            front,
            local,
            framing,
            exception_every: Mutex::new(None),
        })
    }

    /// The register table (the simulator's own task writes and watches it).
    pub fn table(&self) -> &Arc<RegSim> {
        &self.regs
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address a driver would be configured with.
    pub fn address(&self) -> Address {
        let host = self.local.ip().to_string();
        let port = self.local.port();
        match self.framing {
            Framing::Tcp => Address::Tcp { host, port },
            Framing::RtuOverTcp => Address::RtuOverTcp { host, port },
        }
    }

    /// Register values now, as a master would read them.
    pub fn registers(&self, start: u16, count: u16) -> Vec<u16> {
        self.regs.registers(start, count)
    }

    /// Stream faults on the replies. `silent` also stops the table taking requests (and so
    /// writes) at all.
    pub fn set_faults(&self, f: super::stream_faults::Faults) {
        self.front.set_faults(f);
        self.apply_modbus_fault();
    }

    pub fn faults(&self) -> super::stream_faults::Faults {
        self.front.faults()
    }

    /// Answer every n-th request with exception 04 (slave device failure); `None` = never.
    pub fn set_exception_every(&self, every: Option<u64>) {
        *super::stream_faults::lock(&self.exception_every) = every.filter(|n| *n > 0);
        self.apply_modbus_fault();
    }

    pub fn exception_every(&self) -> Option<u64> {
        *super::stream_faults::lock(&self.exception_every)
    }

    fn apply_modbus_fault(&self) {
        self.regs.set_fault(Self::table_fault(
            self.front.faults().silent,
            *super::stream_faults::lock(&self.exception_every),
        ));
    }

    /// Drops every open connection.
    pub fn disconnect(&self) {
        self.front.disconnect();
    }

    pub fn connections(&self) -> u64 {
        self.front.connections()
    }

    /// Requests the register table has seen.
    pub fn requests(&self) -> u64 {
        self.regs.requests()
    }

    /// The register table's own fault for the stream faults in force: a silent device takes no
    /// requests (and so no writes) either.
    fn table_fault(silent: bool, exception_every: Option<u64>) -> Fault {
        match (silent, exception_every) {
            (true, _) => Fault::Silent,
            (false, Some(every)) => Fault::ExceptionEvery { code: 4, every },
            (false, None) => Fault::None,
        }
    }
}
