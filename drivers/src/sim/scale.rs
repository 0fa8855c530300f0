//! Weighbridge indicator simulators, following a scriptable weight profile (ramp up with noise,
//! hold, ramp down), with fault injection: [`ScaleSim`] streams continuous-output frames in any
//! supported format to every TCP client; [`RegScaleSim`] keeps the weight in Modbus registers as
//! a profile (`driver = "scale-modbus"`) describes them.
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

use super::modbus::Framing;
use super::modbus_regs::{RegFront, RegSim};
use super::stream_faults::{lock, write_frame, Faults, Rng, SimControl};
use crate::mass::Mass;
use crate::scale::codec::{encode, EncodeInput, ScaleFormat, Unit, WeightKind};
use crate::scale::modbus::{ModbusScaleSettings, WeightType, WordOrder};

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
    fn sample(&mut self, noise: Mass, now: Instant) -> (Mass, bool) {
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
                    let noisy = g as i64 + self.rng.symmetric(noise.grams);
                    (Mass::from_grams(noisy.max(0)), false)
                }
            };
        }
    }
}

/// The weight on the bridge over time, shared by the stream and the register indicator.
struct Weights {
    noise: Mass,
    script: Mutex<Script>,
}

impl Weights {
    fn new(noise: Mass, seed: u64) -> Self {
        Weights {
            noise,
            script: Mutex::new(Script {
                queue: VecDeque::new(),
                started: Instant::now(),
                from: Mass::ZERO,
                rest: Mass::ZERO,
                rng: Rng::new(seed),
                repeat: false,
            }),
        }
    }

    fn sample(&self) -> (Mass, bool) {
        lock(&self.script).sample(self.noise, Instant::now())
    }

    fn play(&self, segments: impl IntoIterator<Item = Segment>) {
        let mut s = lock(&self.script);
        let now = Instant::now();
        // Settle finished segments so an idle script starts its new segments now.
        s.sample(self.noise, now);
        if s.queue.is_empty() {
            s.started = now;
        }
        s.queue.extend(segments);
    }

    fn set_repeat(&self, repeat: bool) {
        lock(&self.script).repeat = repeat;
    }

    fn set_weight(&self, m: Mass) {
        let mut s = lock(&self.script);
        s.queue.clear();
        s.from = m;
        s.rest = m;
        s.started = Instant::now();
    }

    fn idle(&self) -> bool {
        let mut s = lock(&self.script);
        s.sample(self.noise, Instant::now());
        s.queue.is_empty()
    }
}

struct Shared {
    cfg: ScaleSimConfig,
    weights: Weights,
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
            weights: Weights::new(cfg.noise, cfg.seed),
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
        self.shared.weights.play(segments);
    }

    /// Replays the script endlessly (each finished segment is queued again).
    pub fn set_repeat(&self, repeat: bool) {
        self.shared.weights.set_repeat(repeat);
    }

    /// Sets the weight at once and clears the script.
    pub fn set_weight(&self, m: Mass) {
        self.shared.weights.set_weight(m);
    }

    /// The weight the simulator is showing now.
    pub fn weight(&self) -> Mass {
        self.shared.weights.sample().0
    }

    /// True when every scripted segment has played.
    pub fn idle(&self) -> bool {
        self.shared.weights.idle()
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
        let (mass, steady) = shared.weights.sample();
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

/// Settings of [`RegScaleSim`] besides the register map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegScaleSimConfig {
    /// How often the indicator refreshes its registers.
    pub interval: Duration,
    /// ± amplitude of noise while the weight is moving.
    pub noise: Mass,
    pub seed: u64,
}

impl Default for RegScaleSimConfig {
    fn default() -> Self {
        RegScaleSimConfig {
            interval: Duration::from_millis(50),
            noise: Mass::from_kg(200),
            seed: 0x5CA1E,
        }
    }
}

/// Why a register map cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegScaleSimError {
    #[error("{0}")]
    Settings(String),
    #[error("starting the register simulator: {0}")]
    Io(String),
}

/// A weighbridge indicator read over Modbus registers (`driver = "scale-modbus"`): the weight
/// script of [`ScaleSim`] written into the registers the profile names — weight in its type,
/// word order, decimals and unit, the status word's stable/motion bits, the decimals register —
/// every [`RegScaleSimConfig::interval`], behind a [`FaultyFront`] for the stream faults.
pub struct RegScaleSim {
    port: RegFront,
    weights: Arc<Weights>,
    settings: ModbusScaleSettings,
    task: JoinHandle<()>,
}

/// The port's faults, counters and address are the simulator's own.
impl std::ops::Deref for RegScaleSim {
    type Target = RegFront;
    fn deref(&self) -> &RegFront {
        &self.port
    }
}

impl Drop for RegScaleSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The register words an indicator configured as `s` shows for `m` (weight registers in address
/// order).
pub fn weight_words(s: &ModbusScaleSettings, m: Mass) -> Vec<u16> {
    let scale = 10f64.powi(i32::from(s.decimals));
    let value = m.grams as f64 * scale / s.weight_unit.grams() as f64;
    let split = |v: u32| -> Vec<u16> {
        let (hi, lo) = ((v >> 16) as u16, v as u16);
        match s.word_order {
            WordOrder::HiLo => vec![hi, lo],
            WordOrder::LoHi => vec![lo, hi],
        }
    };
    // `as` saturates: a weight beyond the type's range shows as its limit, as an indicator's
    // display would overflow.
    match s.weight_type {
        WeightType::U16 => vec![value.round() as u16],
        WeightType::I16 => vec![value.round() as i16 as u16],
        WeightType::U32 => split(value.round() as u32),
        WeightType::I32 => split(value.round() as i32 as u32),
        WeightType::F32 => split((value as f32).to_bits()),
    }
}

impl RegScaleSim {
    /// Listens on `addr` (port 0 = a free one) with the register map of `settings`.
    pub async fn bind(
        addr: &str,
        framing: Framing,
        settings: &ModbusScaleSettings,
        cfg: RegScaleSimConfig,
    ) -> Result<(RegScaleSim, SocketAddr), RegScaleSimError> {
        settings
            .validate()
            .map_err(|e| RegScaleSimError::Settings(e.to_string()))?;
        let highest = settings
            .read_plan()
            .iter()
            .map(|(start, n)| u32::from(*start) + u32::from(*n))
            .max()
            .unwrap_or(0);
        let size = u16::try_from(highest.max(1024)).map_err(|_| {
            RegScaleSimError::Settings(format!(
                "the register map reaches register {}; the simulator holds registers 0-65534",
                highest - 1
            ))
        })?;
        let io = |e: std::io::Error| RegScaleSimError::Io(e.to_string());
        let port = RegFront::bind(addr, framing, settings.unit, size, cfg.seed)
            .await
            .map_err(io)?;
        let regs = port.table().clone();
        let local = port.local_addr();
        let weights = Arc::new(Weights::new(cfg.noise, cfg.seed));
        // Registers are valid from the first request on, not from the first refresh.
        publish(&regs, &weights, settings);
        let task = tokio::spawn(refresh(
            regs.clone(),
            weights.clone(),
            settings.clone(),
            cfg.interval,
        ));
        Ok((
            RegScaleSim {
                port,
                weights,
                settings: settings.clone(),
                task,
            },
            local,
        ))
    }

    pub fn settings(&self) -> &ModbusScaleSettings {
        &self.settings
    }

    /// Appends segments to the weight script.
    pub fn play(&self, segments: impl IntoIterator<Item = Segment>) {
        self.weights.play(segments);
    }

    pub fn set_repeat(&self, repeat: bool) {
        self.weights.set_repeat(repeat);
    }

    /// Sets the weight at once (the registers show it before this returns) and clears the
    /// script.
    pub fn set_weight(&self, m: Mass) {
        self.weights.set_weight(m);
        publish(self.port.table(), &self.weights, &self.settings);
    }

    /// The weight on the bridge now (before rounding to the division).
    pub fn weight(&self) -> Mass {
        self.weights.sample().0
    }

    pub fn idle(&self) -> bool {
        self.weights.idle()
    }
}

/// Refreshes the indicator's registers every `interval`.
async fn refresh(
    regs: Arc<RegSim>,
    weights: Arc<Weights>,
    s: ModbusScaleSettings,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        publish(&regs, &weights, &s);
    }
}

/// Writes the weight, status and decimals registers for the weight now, in one step per polled
/// span, so a poll never sees the weight of one instant with the status of another. The script
/// stays locked meanwhile: a `set` racing a refresh cannot be overwritten by an older sample.
fn publish(regs: &RegSim, weights: &Weights, s: &ModbusScaleSettings) {
    let mut script = lock(&weights.script);
    let (mass, steady) = script.sample(weights.noise, Instant::now());
    let d = s.stability.division.grams.max(1);
    let shown = Mass::from_grams((mass.grams + d / 2).div_euclid(d) * d);
    let mut values: Vec<(u16, u16)> = weight_words(s, shown)
        .into_iter()
        .enumerate()
        .map(|(i, w)| (s.weight_register + i as u16, w))
        .collect();
    if let Some(r) = s.status.register {
        let mut word = 0u16;
        if let Some(b) = s.status.stable_bit.filter(|_| steady) {
            word |= 1 << b;
        }
        if let Some(b) = s.status.motion_bit.filter(|_| !steady) {
            word |= 1 << b;
        }
        values.push((r, word));
    }
    if let Some(r) = s.decimals_register {
        values.push((r, u16::from(s.decimals)));
    }
    for (start, count) in s.read_plan() {
        let mut block = regs.registers(start, count);
        for (r, v) in &values {
            if let Some(slot) = r.checked_sub(start).and_then(|i| block.get_mut(i as usize)) {
                *slot = *v;
            }
        }
        regs.set_registers(start, &block);
    }
}
