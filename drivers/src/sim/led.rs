//! LED/voice sign simulators. [`LedSim`] accepts 0x64 or BX frames over TCP, checks them,
//! records every received byte and the decoded text (so tests assert on what reached the
//! "wire"), and answers with ACKs unless told to stay silent. [`RegSignSim`] is a Modbus
//! register text sign that decodes the GBK blocks a driver writes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::modbus::Framing;
use super::modbus_regs::{RegFront, RegSim, RegWriteLog};
use super::stream_faults::{lock, write_frame, Faults, Rng, SimControl};
use crate::led::bx::{self, BxDecoder};
use crate::led::modbus::{ByteOrder, ModbusSignSettings, TextBlock};
use crate::led::p64::{self, P64Decoder, P64Message};
use crate::led::SignProtocol;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedSimConfig {
    pub protocol: SignProtocol,
    /// 0x64 cards: send the ACK frame (cards in "no reply" mode do not).
    pub ack_p64: bool,
    /// BX: refuse every frame with this error code instead of ACKing.
    pub bx_nack: Option<u8>,
}

impl LedSimConfig {
    pub fn new(protocol: SignProtocol) -> Self {
        LedSimConfig {
            protocol,
            ack_p64: true,
            bx_nack: None,
        }
    }
}

/// One checked frame the sign received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignReceived {
    P64 {
        raw: Vec<u8>,
        message: P64Message,
    },
    BxText {
        raw: Vec<u8>,
        area: u8,
        text: String,
    },
    BxOther {
        raw: Vec<u8>,
        command: Option<(u8, u8)>,
    },
}

impl SignReceived {
    /// Texts this frame displays or speaks.
    pub fn texts(&self) -> Vec<String> {
        match self {
            SignReceived::P64 { message, .. } => message.texts(),
            SignReceived::BxText { text, .. } => vec![text.clone()],
            SignReceived::BxOther { .. } => Vec::new(),
        }
    }
}

#[derive(Default)]
struct Log {
    bytes: Vec<u8>,
    frames: Vec<SignReceived>,
    rejected: u64,
}

struct Shared {
    cfg: LedSimConfig,
    log: Mutex<Log>,
    control: Arc<SimControl>,
    live: broadcast::Sender<SignReceived>,
}

pub struct LedSim {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for LedSim {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.control.disconnect_all();
    }
}

impl LedSim {
    pub async fn bind(addr: &str, cfg: LedSimConfig) -> std::io::Result<(LedSim, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            log: Mutex::new(Log::default()),
            control: SimControl::new(),
            live: broadcast::channel(64).0,
        });
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((sock, _)) = listener.accept().await {
                s2.control.count_accept();
                n += 1;
                tokio::spawn(serve(sock, s2.clone(), n));
            }
        });
        Ok((LedSim { shared, task }, local))
    }

    /// Every byte received on any connection, in order.
    pub fn received_bytes(&self) -> Vec<u8> {
        lock(&self.shared.log).bytes.clone()
    }

    /// Every valid frame received, decoded.
    pub fn received(&self) -> Vec<SignReceived> {
        lock(&self.shared.log).frames.clone()
    }

    /// Frames as they arrive (for a console that prints what the sign shows).
    pub fn subscribe(&self) -> broadcast::Receiver<SignReceived> {
        self.shared.live.subscribe()
    }

    /// Every text displayed or spoken so far.
    pub fn texts(&self) -> Vec<String> {
        self.received().iter().flat_map(|r| r.texts()).collect()
    }

    /// Candidate frames that failed their CRC or shape.
    pub fn rejected(&self) -> u64 {
        lock(&self.shared.log).rejected
    }

    /// Waits until at least `n` frames arrived or `timeout` passed; returns the frames.
    pub async fn wait_frames(&self, n: usize, timeout: Duration) -> Vec<SignReceived> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.received();
            if r.len() >= n || tokio::time::Instant::now() >= deadline {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn set_faults(&self, f: Faults) {
        self.shared.control.set_faults(f);
    }

    pub fn disconnect(&self) {
        self.shared.control.disconnect_all();
    }

    pub fn connections(&self) -> u64 {
        self.shared.control.accepted()
    }
}

async fn serve(mut sock: TcpStream, shared: Arc<Shared>, n: u64) {
    let _ = sock.set_nodelay(true);
    let mut rng = Rng::new(0x1ED ^ n);
    let mut gone = shared.control.subscribe();
    let mut p64d = P64Decoder::default();
    let mut bxd = BxDecoder::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::select! {
            _ = gone.changed() => return,
            r = sock.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        let mut replies = Vec::new();
        {
            let mut log = lock(&shared.log);
            log.bytes.extend_from_slice(&buf[..n]);
            match shared.cfg.protocol {
                SignProtocol::P64 => {
                    let mut out = Vec::new();
                    p64d.push(&buf[..n], &mut out);
                    log.rejected = p64d.rejected;
                    for (f, raw) in out {
                        if shared.cfg.ack_p64 {
                            replies.push(p64::ack(f.da, f.cmd));
                        }
                        let r = SignReceived::P64 {
                            message: p64::decode_message(&f),
                            raw,
                        };
                        let _ = shared.live.send(r.clone());
                        log.frames.push(r);
                    }
                }
                SignProtocol::Bx => {
                    let mut out = Vec::new();
                    bxd.push(&buf[..n], &mut out);
                    log.rejected = bxd.rejected;
                    for (f, raw) in out {
                        replies.push(match shared.cfg.bx_nack {
                            Some(code) => bx::nack_for(&f, code),
                            None => bx::ack_for(&f),
                        });
                        let r = match f.dynamic_text() {
                            Some((area, text)) => SignReceived::BxText { raw, area, text },
                            None => SignReceived::BxOther {
                                raw,
                                command: f.command(),
                            },
                        };
                        let _ = shared.live.send(r.clone());
                        log.frames.push(r);
                    }
                }
            }
        }
        let faults = shared.control.faults();
        if faults.silent {
            continue;
        }
        let avoid: &[u8] = match shared.cfg.protocol {
            SignProtocol::P64 => &[0x64],
            SignProtocol::Bx => &[0xA5, 0x5A],
        };
        for r in replies {
            if !faults.delay.is_zero() {
                tokio::time::sleep(faults.delay).await;
            }
            if write_frame(&mut sock, &r, &faults, &mut rng, avoid)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// What a Modbus-register text sign ([`RegSignSim`]) shows or speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegSignShown {
    /// The commit register was written with its value: every line block as the controller
    /// redraws it, top first (a blank line is "").
    Lines(Vec<String>),
    /// A line block was written (profiles without a commit register redraw on each write).
    Line { index: usize, text: String },
    /// The voice commit register was written (or, without one, the voice block): the text.
    Voice(String),
}

/// A PLC-style LED text sign (`driver = "sign-modbus"`): a Modbus register table with the line,
/// commit and voice blocks a profile describes, behind a [`FaultyFront`] for the stream faults.
/// It decodes the GBK blocks when the controller would redraw or speak.
pub struct RegSignSim {
    port: RegFront,
    settings: ModbusSignSettings,
    shown: Arc<Mutex<Vec<RegSignShown>>>,
    live: broadcast::Sender<RegSignShown>,
    task: JoinHandle<()>,
}

/// The port's faults, counters and address are the simulator's own.
impl std::ops::Deref for RegSignSim {
    type Target = RegFront;
    fn deref(&self) -> &RegFront {
        &self.port
    }
}

impl Drop for RegSignSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The text in a block: two bytes per register in `order`, up to the first NUL, from GBK.
pub fn block_text(words: &[u16], block: &TextBlock, order: ByteOrder) -> String {
    let mut bytes: Vec<u8> = words
        .iter()
        .flat_map(|w| match order {
            ByteOrder::HighFirst => w.to_be_bytes(),
            ByteOrder::LowFirst => w.to_le_bytes(),
        })
        .collect();
    bytes.truncate(block.max_bytes);
    if let Some(end) = bytes.iter().position(|b| *b == 0) {
        bytes.truncate(end);
    }
    crate::led::gbk_to_string(&bytes)
}

impl RegSignSim {
    /// Listens on `addr` (port 0 = a free one) with the register layout of `settings`.
    pub async fn bind(
        addr: &str,
        framing: Framing,
        settings: &ModbusSignSettings,
    ) -> Result<(RegSignSim, SocketAddr), RegSignSimError> {
        settings
            .validate()
            .map_err(|e| RegSignSimError::Settings(e.to_string()))?;
        let io = |e: std::io::Error| RegSignSimError::Io(e.to_string());
        // Every block and trigger the validated layout names fits below 65535.
        let port = RegFront::bind(addr, framing, settings.unit, u16::MAX, 0x1ED)
            .await
            .map_err(io)?;
        let regs = port.table().clone();
        let local = port.local_addr();
        let shown: Arc<Mutex<Vec<RegSignShown>>> = Arc::default();
        let live = broadcast::channel(64).0;
        let task = tokio::spawn(watch_writes(
            regs.clone(),
            settings.clone(),
            shown.clone(),
            live.clone(),
        ));
        Ok((
            RegSignSim {
                port,
                settings: settings.clone(),
                shown,
                live,
                task,
            },
            local,
        ))
    }

    pub fn settings(&self) -> &ModbusSignSettings {
        &self.settings
    }

    /// Everything shown or spoken so far, in order.
    pub fn shown(&self) -> Vec<RegSignShown> {
        lock(&self.shown).clone()
    }

    /// Shown texts as they happen (for a console).
    pub fn subscribe(&self) -> broadcast::Receiver<RegSignShown> {
        self.live.subscribe()
    }

    /// The text in line block `index` now.
    pub fn line(&self, index: usize) -> Option<String> {
        let b = self.settings.lines.get(index)?;
        Some(block_text(
            &self.port.registers(b.register, b.registers()),
            b,
            self.settings.byte_order,
        ))
    }
}

/// Why a sign layout cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegSignSimError {
    #[error("{0}")]
    Settings(String),
    #[error("starting the register simulator: {0}")]
    Io(String),
}

/// Turns accepted writes into what the sign shows, in arrival order.
async fn watch_writes(
    regs: Arc<RegSim>,
    s: ModbusSignSettings,
    shown: Arc<Mutex<Vec<RegSignShown>>>,
    live: broadcast::Sender<RegSignShown>,
) {
    let touches = |w: &RegWriteLog, start: u16, count: u16| {
        let (a, b) = (
            u32::from(w.register),
            u32::from(w.register) + w.values.len() as u32,
        );
        let (c, d) = (u32::from(start), u32::from(start) + u32::from(count));
        a < d && c < b
    };
    let value_at = |w: &RegWriteLog, r: u16| {
        r.checked_sub(w.register)
            .and_then(|i| w.values.get(i as usize).copied())
    };
    let text =
        |b: &TextBlock| block_text(&regs.registers(b.register, b.registers()), b, s.byte_order);
    let mut seen = 0usize;
    let mut requests = 0u64;
    let mut recheck = false;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        // Copying the write log only when requests came in keeps an idle sign cheap. A request
        // is counted just before its write is logged, so the tick after a change looks again.
        let n = regs.requests();
        if n == requests && !recheck {
            continue;
        }
        recheck = n != requests;
        requests = n;
        let writes = regs.writes();
        for w in writes.iter().skip(seen) {
            let mut out = Vec::new();
            match s.commit {
                Some(c) if value_at(w, c.register) == Some(c.value) => {
                    out.push(RegSignShown::Lines(s.lines.iter().map(text).collect()));
                }
                Some(_) => {}
                None => {
                    for (index, b) in s.lines.iter().enumerate() {
                        if touches(w, b.register, b.registers()) {
                            out.push(RegSignShown::Line {
                                index,
                                text: text(b),
                            });
                        }
                    }
                }
            }
            if let Some(v) = &s.voice {
                let speak = match s.voice_commit {
                    Some(c) => value_at(w, c.register) == Some(c.value),
                    None => touches(w, v.register, v.registers()),
                };
                if speak {
                    out.push(RegSignShown::Voice(text(v)));
                }
            }
            for e in out {
                let _ = live.send(e.clone());
                lock(&shown).push(e);
            }
        }
        seen = writes.len();
        // The table's write log only grows; a sign left running for days would copy an ever
        // longer one every tick. A write landing between the copy above and this clear is not
        // printed — acceptable for a console, which is all this log feeds.
        if seen > 4096 {
            regs.clear_writes();
            seen = 0;
        }
    }
}
