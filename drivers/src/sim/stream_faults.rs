//! Fault injection shared by the stream simulators (scale, LED, UPS): silence, late replies,
//! garbage bytes, frames written in random pieces, and dropped connections.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Faults in force; change them at any time with the simulator's `set_faults`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Send nothing: no frames (scale), no replies or ACKs (UPS, LED).
    pub silent: bool,
    /// Wait this long before each reply (UPS, LED ACK) or frame (scale).
    pub delay: Duration,
    /// Write this many random bytes before each frame or reply.
    pub garbage: usize,
    /// Write each frame in random pieces with a short pause between them.
    pub split: bool,
}

/// State every simulator keeps: the faults and a disconnect counter that connection tasks
/// watch.
#[derive(Debug)]
pub struct SimControl {
    faults: Mutex<Faults>,
    disconnect: watch::Sender<u64>,
    accepted: Mutex<u64>,
}

impl SimControl {
    pub fn new() -> Arc<Self> {
        Arc::new(SimControl {
            faults: Mutex::new(Faults::default()),
            disconnect: watch::channel(0).0,
            accepted: Mutex::new(0),
        })
    }

    pub fn faults(&self) -> Faults {
        lock(&self.faults).clone()
    }

    pub fn set_faults(&self, f: Faults) {
        *lock(&self.faults) = f;
    }

    /// Drops every open connection (new ones are still accepted).
    pub fn disconnect_all(&self) {
        self.disconnect.send_modify(|g| *g += 1);
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.disconnect.subscribe()
    }

    pub fn count_accept(&self) {
        *lock(&self.accepted) += 1;
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> u64 {
        *lock(&self.accepted)
    }
}

/// A poisoned simulator mutex only means a test thread panicked; the data is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Small deterministic PRNG (xorshift64*): simulators need noise, not cryptography, and
/// reproducible runs help when a test fails.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `-amp..=amp`.
    pub fn symmetric(&mut self, amp: i64) -> i64 {
        if amp <= 0 {
            return 0;
        }
        self.below(2 * amp as u64 + 1) as i64 - amp
    }
}

/// Garbage that cannot be mistaken for a frame start in the protocol under test.
pub fn garbage(rng: &mut Rng, n: usize, avoid: &[u8]) -> Vec<u8> {
    let mut g = Vec::with_capacity(n);
    while g.len() < n {
        let b = rng.below(256) as u8;
        if !avoid.contains(&b) {
            g.push(b);
        }
    }
    g
}

/// Writes `frame` honouring `faults` (garbage before it, random split points).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
    faults: &Faults,
    rng: &mut Rng,
    avoid: &[u8],
) -> std::io::Result<()> {
    if faults.garbage > 0 {
        w.write_all(&garbage(rng, faults.garbage, avoid)).await?;
    }
    if faults.split && frame.len() > 1 {
        let mut rest = frame;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len() as u64) as usize;
            w.write_all(&rest[..n]).await?;
            w.flush().await?;
            rest = &rest[n..];
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    } else {
        w.write_all(frame).await?;
    }
    w.flush().await
}
