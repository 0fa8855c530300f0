//! Weighbridge indicator simulator: streams continuous-output frames in any supported format
//! to every TCP client, following a scriptable weight profile (ramp up with noise, hold, ramp
//! down), with fault injection.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ecogate_drivers::sim::scale::{ScaleSim, ScaleSimConfig, Segment};
//! use ecogate_drivers::{scale::ScaleFormat, Mass};
//! use std::time::Duration;
//! let (sim, addr) = ScaleSim::bind("127.0.0.1:0", ScaleSimConfig::new(ScaleFormat::A9)).await?;
//! sim.play(Segment::vehicle(Mass::from_kg(32_000), Duration::from_secs(2), Duration::from_secs(3)));
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::stream_faults::{lock, write_frame, Faults, Rng, SimControl};
use crate::mass::Mass;
use crate::scale::codec::{encode, EncodeInput, ScaleFormat, Unit, WeightKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScaleSimConfig {
    pub format: ScaleFormat,
    /// Time between frames (indicators send 10–20 per second).
    pub interval: Duration,
    pub decimals: u8,
    pub unit: Unit,
    /// Output is rounded to this step (the scale division).
    pub division: Mass,
    /// ± amplitude of noise while the weight is moving.
    pub noise: Mass,
    pub toledo_checksum: bool,
    pub seed: u64,
}

impl ScaleSimConfig {
    pub fn new(format: ScaleFormat) -> Self {
        ScaleSimConfig {
            format,
            interval: Duration::from_millis(50),
            decimals: 0,
            unit: Unit::Kg,
            division: Mass::from_kg(20),
            noise: Mass::from_kg(200),
            toledo_checksum: true,
            seed: 0x5CA1E,
        }
    }
}

/// One step of the weight script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Move linearly to `to` over `over`, with noise.
    Ramp { to: Mass, over: Duration },
    /// Stay at the current weight.
    Hold { duration: Duration },
}

impl Segment {
    /// A vehicle drives on, stands still for `hold`, and drives off.
    pub fn vehicle(gross: Mass, ramp: Duration, hold: Duration) -> Vec<Segment> {
        vec![
            Segment::Ramp {
                to: gross,
                over: ramp,
            },
            Segment::Hold { duration: hold },
            Segment::Ramp {
                to: Mass::ZERO,
                over: ramp,
            },
            Segment::Hold {
                duration: Duration::from_millis(500),
            },
        ]
    }

    fn duration(&self) -> Duration {
        match self {
            Segment::Ramp { over, .. } => *over,
            Segment::Hold { duration } => *duration,
        }
    }
}

#[derive(Debug)]
struct Script {
    queue: VecDeque<Segment>,
    /// Start of the segment at the queue front, and the weight it starts from.
    started: Instant,
    from: Mass,
    /// Weight when the script is idle (after the last segment).
    rest: Mass,
    rng: Rng,
    /// Finished segments go back to the end of the queue (endless traffic for `ecogate sim`).
    repeat: bool,
}

impl Script {
    /// The weight now and whether it is steady, advancing through finished segments.
    fn sample(&mut self, cfg: &ScaleSimConfig, now: Instant) -> (Mass, bool) {
        loop {
            let Some(seg) = self.queue.front().copied() else {
                return (self.rest, true);
            };
            let elapsed = now.saturating_duration_since(self.started);
            if elapsed >= seg.duration() {
                if let Segment::Ramp { to, .. } = seg {
                    self.from = to;
                }
                self.rest = self.from;
                self.started += seg.duration();
                self.queue.pop_front();
                if self.repeat {
                    self.queue.push_back(seg);
                }
                continue;
            }
            return match seg {
                Segment::Hold { .. } => (self.from, true),
                Segment::Ramp { to, over } => {
                    let f = elapsed.as_secs_f64() / over.as_secs_f64().max(1e-9);
                    let g = self.from.grams as f64 + (to.grams - self.from.grams) as f64 * f;
                    let noisy = g as i64 + self.rng.symmetric(cfg.noise.grams);
                    (Mass::from_grams(noisy.max(0)), false)
                }
            };
        }
    }
}

struct Shared {
    cfg: ScaleSimConfig,
    script: Mutex<Script>,
    control: Arc<SimControl>,
}

/// A running scale simulator. Dropping it stops the listener and all connections.
pub struct ScaleSim {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for ScaleSim {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.control.disconnect_all();
    }
}

impl ScaleSim {
    pub async fn bind(addr: &str, cfg: ScaleSimConfig) -> std::io::Result<(ScaleSim, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg,
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                started: Instant::now(),
                from: Mass::ZERO,
                rest: Mass::ZERO,
                rng: Rng::new(cfg.seed),
                repeat: false,
            }),
            control: SimControl::new(),
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
        Ok((ScaleSim { shared, task }, local))
    }

    /// Appends segments to the script; they start after those already queued.
    pub fn play(&self, segments: impl IntoIterator<Item = Segment>) {
        let mut s = lock(&self.shared.script);
        let now = Instant::now();
        // Settle finished segments so an idle script starts its new segments now.
        let cfg = self.shared.cfg;
        s.sample(&cfg, now);
        if s.queue.is_empty() {
            s.started = now;
        }
        s.queue.extend(segments);
    }

    /// Replays the script endlessly (each finished segment is queued again).
    pub fn set_repeat(&self, repeat: bool) {
        lock(&self.shared.script).repeat = repeat;
    }

    /// Sets the weight at once and clears the script.
    pub fn set_weight(&self, m: Mass) {
        let mut s = lock(&self.shared.script);
        s.queue.clear();
        s.from = m;
        s.rest = m;
        s.started = Instant::now();
    }

    /// The weight the simulator is showing now.
    pub fn weight(&self) -> Mass {
        let cfg = self.shared.cfg;
        lock(&self.shared.script).sample(&cfg, Instant::now()).0
    }

    /// True when every scripted segment has played.
    pub fn idle(&self) -> bool {
        let cfg = self.shared.cfg;
        let mut s = lock(&self.shared.script);
        s.sample(&cfg, Instant::now());
        s.queue.is_empty()
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
    let cfg = shared.cfg;
    let mut rng = Rng::new(cfg.seed ^ n.rotate_left(32));
    let mut gone = shared.control.subscribe();
    let mut tick = tokio::time::interval(cfg.interval);
    let avoid: &[u8] = match cfg.format {
        ScaleFormat::A9 | ScaleFormat::Toledo => &[0x02],
        ScaleFormat::A12 => b"w",
        // Anything that could extend an unterminated `=` payload or start a new one.
        ScaleFormat::Reversed => b"=0123456789.+- ",
        ScaleFormat::StGs => b"",
    };
    let mut sink = [0u8; 64];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gone.changed() => return,
            // Scales ignore input; reading notices a client that went away.
            r = sock.read(&mut sink) => if matches!(r, Ok(0) | Err(_)) { return },
        }
        let faults = shared.control.faults();
        if faults.silent {
            continue;
        }
        if !faults.delay.is_zero() {
            tokio::time::sleep(faults.delay).await;
        }
        let (mass, steady) = lock(&shared.script).sample(&cfg, Instant::now());
        let d = cfg.division.grams.max(1);
        let shown = Mass::from_grams((mass.grams + d / 2).div_euclid(d) * d);
        let frame = encode(
            cfg.format,
            &EncodeInput {
                mass: shown,
                stable: steady,
                decimals: cfg.decimals,
                unit: cfg.unit,
                kind: WeightKind::Gross,
                toledo_checksum: cfg.toledo_checksum,
            },
        );
        if write_frame(&mut sock, &frame, &faults, &mut rng, avoid)
            .await
            .is_err()
        {
            return;
        }
    }
}
