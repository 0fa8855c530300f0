//! Fault injection shared by the stream simulators (scale, LED, UPS): silence, late replies,
//! garbage bytes, frames written in random pieces, and dropped connections. [`FaultyFront`]
//! applies the same faults in front of the Modbus register simulators.

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

/// A TCP front for a request/reply simulator (the Modbus register tables): it listens where it
/// is told to (`ecogate sim … --port N`), forwards every connection to the simulator behind it
/// and applies the stream faults to the replies on their way back — silence, late replies,
/// garbage before a reply, replies in pieces — and drops every connection on
/// [`disconnect`](Self::disconnect), as a serial device server losing its link would.
pub struct FaultyFront {
    control: Arc<SimControl>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyFront {
    fn drop(&mut self) {
        self.task.abort();
        self.control.disconnect_all();
    }
}

impl FaultyFront {
    /// Listens on `addr` and forwards to `backend`. Returns the front and its local address.
    pub async fn bind(
        addr: &str,
        backend: std::net::SocketAddr,
        seed: u64,
    ) -> std::io::Result<(FaultyFront, std::net::SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let control = SimControl::new();
        let c2 = control.clone();
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((sock, _)) = listener.accept().await {
                c2.count_accept();
                n += 1;
                tokio::spawn(relay(
                    sock,
                    backend,
                    c2.clone(),
                    Rng::new(seed ^ n.rotate_left(32)),
                ));
            }
        });
        Ok((FaultyFront { control, task }, local))
    }

    pub fn faults(&self) -> Faults {
        self.control.faults()
    }

    pub fn set_faults(&self, f: Faults) {
        self.control.set_faults(f);
    }

    /// Drops every open connection (new ones are still accepted).
    pub fn disconnect(&self) {
        self.control.disconnect_all();
    }

    /// Connections accepted since start.
    pub fn connections(&self) -> u64 {
        self.control.accepted()
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    backend: std::net::SocketAddr,
    control: Arc<SimControl>,
    mut rng: Rng,
) {
    use tokio::io::AsyncReadExt;
    let mut gone = control.subscribe();
    let Ok(server) = tokio::net::TcpStream::connect(backend).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        // The client hung up: let the simulator see it too, which ends the reply direction.
        let _ = server_wr.shutdown().await;
    };
    let replies = async {
        let mut buf = [0u8; 1024];
        loop {
            let n = match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let f = control.faults();
            if f.silent {
                continue;
            }
            if !f.delay.is_zero() {
                tokio::time::sleep(f.delay).await;
            }
            if write_frame(&mut client_wr, &buf[..n], &f, &mut rng, &[])
                .await
                .is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = gone.changed() => {}
        _ = async { tokio::join!(requests, replies) } => {}
    }
}
