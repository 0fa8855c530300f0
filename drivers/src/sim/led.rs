//! LED/voice sign simulator: accepts 0x64 or BX frames over TCP, checks them, records every
//! received byte and the decoded text (so tests assert on what reached the "wire"), and
//! answers with ACKs unless told to stay silent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::stream_faults::{lock, write_frame, Faults, Rng, SimControl};
use crate::led::bx::{self, BxDecoder};
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
