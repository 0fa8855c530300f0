//! `ecogate sim …`: the drivers crate's device simulators run standalone on 127.0.0.1, so an
//! integrator can point a gateway (or a test script) at a fake relay module, weighbridge, sign,
//! UPS or camera and play vehicles by hand from the terminal.
//!
//! Every simulator prints `listening on 127.0.0.1:PORT` (or, for the camera, `posting to URL`)
//! as its first stdout line, then one timestamped line per event. Stdin lines are commands
//! (`help` lists them). Each `run_*` function takes its output and input streams as arguments so
//! tests drive them through in-memory pipes exactly as a script drives the binary.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ecogate_drivers::led::p64::P64Message;
use ecogate_drivers::led::SignProtocol;
use ecogate_drivers::mass::Mass;
use ecogate_drivers::plate::PlateColor;
use ecogate_drivers::scale::codec::ScaleFormat;
use ecogate_drivers::sim::camera::fake_jpeg;
use ecogate_drivers::sim::camera::{hik_anpr_xml, multipart_body, CameraSim, Reply, VzPlate};
use ecogate_drivers::sim::led::{LedSim, LedSimConfig, SignReceived};
use ecogate_drivers::sim::modbus::{BarrierModel, Fault, Framing, RelaySim, SimConfig, WireFaults};
use ecogate_drivers::sim::scale::{ScaleSim, ScaleSimConfig, Segment};
use ecogate_drivers::sim::stream_faults::Faults;
use ecogate_drivers::sim::ups::UpsSim;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

/// The `ecogate sim` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Push plate reads to a gateway's camera ingest URL, like a VZ or Hikvision camera.
    Camera(CameraArgs),
    /// A Modbus relay/DI module with a barrier wired to it.
    Io(IoArgs),
    /// A weighbridge indicator streaming weight frames.
    Scale(ScaleArgs),
    /// An LED/voice sign that prints every text it receives.
    Led(LedArgs),
    /// A Megatec Q1 UPS.
    Ups(UpsArgs),
    /// A strict mock regulator platform (profiles/platform/NAME.toml) with fault injection.
    Platform(PlatformArgs),
}

impl SimCommand {
    /// Runs the simulator on its own tokio runtime until Ctrl-C, `--duration` or (with
    /// `--until-eof`) the end of stdin.
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the simulator runtime")?;
        let result = rt.block_on(async move {
            let out = tokio::io::stdout();
            let input = tokio::io::BufReader::new(tokio::io::stdin());
            tokio::select! {
                r = self.run_with(out, input) => r,
                r = tokio::signal::ctrl_c() => {
                    r.context("waiting for Ctrl-C")?;
                    let mut o = tokio::io::stdout();
                    let _ = o.write_all(format!("{} stopping: interrupted\n", stamp()).as_bytes()).await;
                    let _ = o.flush().await;
                    Ok(())
                }
            }
        });
        // A blocking stdin read may still be pending; do not wait for it.
        rt.shutdown_background();
        result.map(|()| ExitCode::SUCCESS)
    }

    /// Runs the simulator with the given output and command input (stdout/stdin for the CLI).
    pub async fn run_with<W, R>(self, out: W, input: R) -> anyhow::Result<()>
    where
        W: AsyncWrite + Unpin + Send,
        R: AsyncBufRead + Unpin + Send,
    {
        match self {
            SimCommand::Camera(a) => run_camera(a, out, input).await,
            SimCommand::Io(a) => run_io(a, out, input).await,
            SimCommand::Scale(a) => run_scale(a, out, input).await,
            SimCommand::Led(a) => run_led(a, out, input).await,
            SimCommand::Ups(a) => run_ups(a, out, input).await,
            SimCommand::Platform(a) => run_platform(a, out, input).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared options

/// When the simulator stops (besides Ctrl-C).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StopArgs {
    /// Stop when stdin reaches end-of-file (for scripts and tests). Without it, stdin EOF only
    /// ends command input and the simulator keeps running.
    #[arg(long)]
    pub until_eof: bool,
    /// Stop by itself after this many seconds (decimals allowed).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
}

/// Where a simulator listens. Only loopback: a simulator on a plant network could be mistaken
/// for (or answer in place of) a real device.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on; only 127.0.0.1 (or `localhost`) is accepted.
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub bind: String,
    /// TCP port; 0 picks a free one (read it from the first output line).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[command(flatten)]
    pub stop: StopArgs,
}

impl ServeArgs {
    /// The socket address to bind, or an error for anything but loopback 127.0.0.1.
    pub fn socket_addr(&self) -> anyhow::Result<SocketAddr> {
        let ip = check_bind(&self.bind)?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// `127.0.0.1` or `localhost` → 127.0.0.1; anything else is refused.
pub fn check_bind(addr: &str) -> anyhow::Result<IpAddr> {
    let a = addr.trim();
    if a.eq_ignore_ascii_case("localhost")
        || a.parse::<IpAddr>().ok() == Some(Ipv4Addr::LOCALHOST.into())
    {
        return Ok(Ipv4Addr::LOCALHOST.into());
    }
    bail!("refusing to bind `{addr}`: simulators listen on 127.0.0.1 only")
}

/// Fault injection shared by the stream simulators (scale, LED, UPS).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StreamFaultArgs {
    /// Send nothing (no frames, replies or ACKs).
    #[arg(long)]
    pub silent: bool,
    /// Wait this long before each frame or reply.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub delay_ms: u64,
    /// Write random bytes before each frame or reply (8 if no count is given).
    #[arg(long, value_name = "BYTES", num_args = 0..=1, default_missing_value = "8")]
    pub garbage: Option<usize>,
    /// Write each frame in random pieces.
    #[arg(long)]
    pub split: bool,
}

impl StreamFaultArgs {
    fn faults(&self) -> Faults {
        Faults {
            silent: self.silent,
            delay: Duration::from_millis(self.delay_ms),
            garbage: self.garbage.unwrap_or(0),
            split: self.split,
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("`{s}`: the duration must be more than 0 seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|_| format!("`{s}` seconds is out of range"))
}

fn stamp() -> String {
    chrono::Local::now().format("%H:%M:%S%.3f").to_string()
}

async fn emit<W: AsyncWrite + Unpin>(out: &mut W, lines: &[String]) -> anyhow::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let ts = stamp();
    let mut buf = String::new();
    for l in lines {
        buf.push_str(&ts);
        buf.push(' ');
        buf.push_str(l);
        buf.push('\n');
    }
    out.write_all(buf.as_bytes())
        .await
        .context("writing simulator output")?;
    out.flush().await.context("writing simulator output")
}

async fn first_line<W: AsyncWrite + Unpin>(out: &mut W, line: String) -> anyhow::Result<()> {
    out.write_all(format!("{line}\n").as_bytes())
        .await
        .context("writing simulator output")?;
    out.flush().await.context("writing simulator output")
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A simulator seen from the terminal: stdin commands in, event lines out.
trait Console {
    /// Handles one command line; returns the lines to print.
    fn command(&mut self, line: &str) -> Vec<String>;
    /// Events since the last call.
    fn poll(&mut self) -> Vec<String>;
    fn help(&self) -> &'static str;
}

/// The loop every listening simulator runs: commands from `input`, events polled every 20 ms,
/// until `--duration` or (with `--until-eof`) end of input.
async fn drive<C, W, R>(c: &mut C, stop: &StopArgs, out: &mut W, input: R) -> anyhow::Result<()>
where
    C: Console,
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let deadline = stop.duration.map(|d| Instant::now() + d);
    let mut lines = input.lines();
    let mut stdin_open = true;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = sleep_until_opt(deadline) => {
                emit(out, &c.poll()).await?;
                return emit(out, &["stopping: duration elapsed".to_string()]).await;
            }
            l = lines.next_line(), if stdin_open => match l {
                Ok(Some(l)) => {
                    let t = l.trim();
                    if t.is_empty() || t.starts_with('#') {
                        continue;
                    }
                    // Events that happened before the command print before its answer.
                    emit(out, &c.poll()).await?;
                    let reply = if t == "help" {
                        c.help().lines().map(str::to_string).collect()
                    } else {
                        c.command(t)
                    };
                    emit(out, &reply).await?;
                }
                Ok(None) => {
                    if stop.until_eof {
                        emit(out, &c.poll()).await?;
                        return emit(out, &["stopping: end of input".to_string()]).await;
                    }
                    stdin_open = false;
                }
                Err(e) => {
                    if stop.until_eof {
                        return Err(anyhow!(e).context("reading commands from stdin"));
                    }
                    emit(out, &[format!("error: reading stdin: {e}; commands disabled")]).await?;
                    stdin_open = false;
                }
            },
            _ = tick.tick() => emit(out, &c.poll()).await?,
        }
    }
}

fn on_off(w: Option<&str>) -> Result<bool, String> {
    match w {
        Some("on" | "1" | "high" | "true") => Ok(true),
        Some("off" | "0" | "low" | "false") => Ok(false),
        Some(o) => Err(format!("`{o}` is not on/off")),
        None => Err("missing on/off".into()),
    }
}

/// `fault …` / `disconnect` for the stream simulators; `None` when the line is not one of them.
fn stream_fault_command(cur: &Faults, line: &str) -> Option<Result<Faults, String>> {
    let w: Vec<&str> = line.split_whitespace().collect();
    if w.first() != Some(&"fault") {
        return None;
    }
    let mut f = cur.clone();
    let num = |i: usize| -> Result<u64, String> {
        w.get(i)
            .ok_or_else(|| format!("`{line}`: missing number"))?
            .parse::<u64>()
            .map_err(|_| format!("`{line}`: not a whole number"))
    };
    let r = match w.get(1).copied() {
        Some("none") => Ok(Faults::default()),
        Some("silent") => on_off(w.get(2).copied().or(Some("on"))).map(|v| {
            f.silent = v;
            f
        }),
        Some("split") => on_off(w.get(2).copied().or(Some("on"))).map(|v| {
            f.split = v;
            f
        }),
        Some("delay") => num(2).map(|ms| {
            f.delay = Duration::from_millis(ms);
            f
        }),
        Some("garbage") => num(2).and_then(|n| {
            if n > 4096 {
                return Err("garbage is limited to 4096 bytes".into());
            }
            f.garbage = n as usize;
            Ok(f)
        }),
        _ => Err(format!(
            "`{line}`: expected fault none | silent [on|off] | split [on|off] | delay MS | garbage N"
        )),
    };
    Some(r)
}

fn describe_faults(f: &Faults) -> String {
    if *f == Faults::default() {
        return "faults: none".into();
    }
    format!(
        "faults: silent={} delay={}ms garbage={} split={}",
        f.silent,
        f.delay.as_millis(),
        f.garbage,
        f.split
    )
}

// ---------------------------------------------------------------------------------------------
// io

/// `ecogate sim io`.
#[derive(clap::Args, Debug, Clone)]
pub struct IoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Modbus unit (slave) id the module answers to.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=247))]
    pub unit: u8,
    /// Speak RTU frames over TCP (a serial device server) instead of Modbus TCP.
    #[arg(long)]
    pub rtu_over_tcp: bool,
    /// Relays and inputs on the module.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub channels: u16,
    /// No barrier wired: limit-switch inputs stay where you set them.
    #[arg(long)]
    pub no_barrier: bool,
    /// Barrier travel time between limit switches.
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub travel_ms: u64,
    /// The barrier closes by itself this long after opening (0 = never).
    #[arg(long, value_name = "MS", default_value_t = 10000)]
    pub auto_close_ms: u64,
    /// Relay wired to the barrier's OPEN contact.
    #[arg(long, default_value_t = 0)]
    pub open_coil: u16,
    /// Relay wired to the barrier's CLOSE contact.
    #[arg(long, default_value_t = 1)]
    pub close_coil: u16,
    /// Input the vehicle loop detector is wired to (`loop on|off`).
    #[arg(long, default_value_t = 0)]
    pub loop_di: u16,
    /// The loop detector contact is normally closed (input high while the lane is empty).
    #[arg(long)]
    pub loop_nc: bool,
    /// Input of the "barrier open" limit switch.
    #[arg(long, default_value_t = 1)]
    pub limit_open_di: u16,
    /// Input of the "barrier closed" limit switch.
    #[arg(long, default_value_t = 2)]
    pub limit_closed_di: u16,
    /// Never answer.
    #[arg(long, group = "io_fault")]
    pub silent: bool,
    /// Answer every request this late.
    #[arg(long, value_name = "MS", group = "io_fault")]
    pub late_ms: Option<u64>,
    /// Answer every N-th request with a Modbus exception.
    #[arg(long, value_name = "N", group = "io_fault",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub exception_every: Option<u64>,
    /// Exception code for `--exception-every` (4 = slave device failure).
    #[arg(long, default_value_t = 4)]
    pub exception_code: u8,
    /// Write random bytes before each reply (8 if no count is given): line noise.
    #[arg(long, value_name = "BYTES", num_args = 0..=1, default_missing_value = "8",
          value_parser = clap::value_parser!(u64).range(0..=MAX_IO_GARBAGE))]
    pub garbage: Option<u64>,
    /// Write each reply in random pieces 1–3 ms apart, as a serial server may packetise it.
    #[arg(long)]
    pub split: bool,
}

/// Noise before one reply is bounded so a typo cannot flood the gateway.
const MAX_IO_GARBAGE: u64 = 4096;

impl IoArgs {
    fn sim_config(&self) -> anyhow::Result<SimConfig> {
        let mut wires = vec![("--loop-di", self.loop_di)];
        if !self.no_barrier {
            wires.extend([
                ("--open-coil", self.open_coil),
                ("--close-coil", self.close_coil),
                ("--limit-open-di", self.limit_open_di),
                ("--limit-closed-di", self.limit_closed_di),
            ]);
        }
        for (name, n) in wires {
            if n >= self.channels {
                bail!(
                    "{name} {n} is outside the module's {} channels (0..{})",
                    self.channels,
                    self.channels - 1
                );
            }
        }
        let barrier = (!self.no_barrier).then(|| BarrierModel {
            open_coil: self.open_coil,
            close_coil: self.close_coil,
            limit_open_di: self.limit_open_di,
            limit_closed_di: self.limit_closed_di,
            travel: Duration::from_millis(self.travel_ms),
            auto_close: (self.auto_close_ms > 0).then(|| Duration::from_millis(self.auto_close_ms)),
        });
        Ok(SimConfig {
            unit: self.unit,
            channels: self.channels,
            barrier,
            ..SimConfig::default()
        })
    }

    fn wire_faults(&self) -> WireFaults {
        WireFaults {
            garbage: self.garbage.unwrap_or(0) as usize,
            split: self.split,
        }
    }

    fn fault(&self) -> Fault {
        if self.silent {
            Fault::Silent
        } else if let Some(ms) = self.late_ms {
            Fault::Late(Duration::from_millis(ms))
        } else if let Some(every) = self.exception_every {
            Fault::ExceptionEvery {
                code: self.exception_code,
                every,
            }
        } else {
            Fault::None
        }
    }
}

struct IoConsole {
    sim: RelaySim,
    args: IoArgs,
    flash_base: u16,
    dis: Vec<bool>,
}

impl IoConsole {
    fn di_label(&self, di: u16) -> String {
        let a = &self.args;
        let name = if di == a.loop_di {
            Some("loop")
        } else if !a.no_barrier && di == a.limit_open_di {
            Some("limit_open")
        } else if !a.no_barrier && di == a.limit_closed_di {
            Some("limit_closed")
        } else {
            None
        };
        match name {
            Some(n) => format!("DI {di} ({n})"),
            None => format!("DI {di}"),
        }
    }

    fn coil_label(&self, coil: u16) -> String {
        let a = &self.args;
        if !a.no_barrier && coil == a.open_coil {
            format!("relay {coil} (open)")
        } else if !a.no_barrier && coil == a.close_coil {
            format!("relay {coil} (close)")
        } else {
            format!("relay {coil}")
        }
    }

    /// A line for each write request; reads are the gateway's polling and would flood the
    /// terminal.
    fn describe_frame(&self, raw: &[u8]) -> Option<String> {
        let (unit, pdu) = if self.args.rtu_over_tcp {
            (*raw.first()?, raw.get(1..raw.len().checked_sub(2)?)?)
        } else {
            (*raw.get(6)?, raw.get(7..)?)
        };
        let fc = *pdu.first()?;
        let a = u16::from_be_bytes([*pdu.get(1)?, *pdu.get(2)?]);
        let v = u16::from_be_bytes([*pdu.get(3)?, *pdu.get(4)?]);
        let n = self.args.channels;
        let what = match fc {
            0x05 if a < n && v == 0xFF00 => format!("write {} ON", self.coil_label(a)),
            0x05 if a < n && v == 0x0000 => format!("write {} OFF", self.coil_label(a)),
            0x05 if a >= self.flash_base && a < self.flash_base + n => format!(
                "pulse {} for {} ms (device-timed flash)",
                self.coil_label(a - self.flash_base),
                u64::from(v) * 100
            ),
            0x05 => format!("write coil {a} value 0x{v:04X} (refused)"),
            0x06 => format!("write register {a} = {v}"),
            0x0F => {
                let data = pdu.get(6..).unwrap_or(&[]);
                let bits: String = (0..v)
                    .map(|i| {
                        let b = data.get(i as usize / 8).copied().unwrap_or(0);
                        if b & (1 << (i % 8)) != 0 {
                            '1'
                        } else {
                            '0'
                        }
                    })
                    .collect();
                format!("write coils {a}..{} = {bits}", u32::from(a) + u32::from(v))
            }
            0x10 => format!("write {v} registers from {a}"),
            _ => return None,
        };
        Some(if unit == self.args.unit {
            format!("command: {what}")
        } else {
            format!("command for unit {unit} (not me, ignored): {what}")
        })
    }

    fn status(&self) -> Vec<String> {
        let n = self.args.channels;
        let coils: String = (0..n)
            .map(|i| if self.sim.coil(i) { '1' } else { '0' })
            .collect();
        let dis: String = (0..n)
            .map(|i| if self.sim.input(i) { '1' } else { '0' })
            .collect();
        vec![format!(
            "status: relays {coils} inputs {dis} (channel 0 first)"
        )]
    }
}

impl Console for IoConsole {
    fn help(&self) -> &'static str {
        "commands:
  loop on|off        vehicle on / off the loop detector (honours --loop-nc)
  in N on|off        set input N's raw level
  status             print relays and inputs
  fault none | silent | late MS | exception-every N | garbage N | split [on|off]
  disconnect         close every client connection now"
    }

    fn command(&mut self, line: &str) -> Vec<String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let r: Result<String, String> = match w.as_slice() {
            ["loop", rest @ ..] => on_off(rest.first().copied()).map(|on| {
                let level = on != self.args.loop_nc;
                self.sim.set_input(self.args.loop_di, level);
                format!(
                    "loop {} (DI {} {})",
                    if on { "occupied" } else { "clear" },
                    self.args.loop_di,
                    if level { "high" } else { "low" }
                )
            }),
            ["in", n, rest @ ..] => match n.parse::<u16>() {
                Ok(n) if n < self.args.channels => on_off(rest.first().copied()).map(|on| {
                    self.sim.set_input(n, on);
                    format!(
                        "{} set {}",
                        self.di_label(n),
                        if on { "high" } else { "low" }
                    )
                }),
                _ => Err(format!(
                    "`{n}` is not an input number (0..{})",
                    self.args.channels - 1
                )),
            },
            ["status"] => return self.status(),
            ["fault", "none"] => {
                self.sim.set_fault(Fault::None);
                self.sim.set_wire_faults(WireFaults::default());
                Ok("fault: none".into())
            }
            ["fault", "garbage", n] => match n.parse::<u64>() {
                Ok(n) if n <= MAX_IO_GARBAGE => {
                    let wire = WireFaults {
                        garbage: n as usize,
                        ..self.sim.wire_faults()
                    };
                    self.sim.set_wire_faults(wire);
                    Ok(format!("fault: {n} random bytes before each reply"))
                }
                _ => Err(format!(
                    "`{n}` is not a whole number up to {MAX_IO_GARBAGE}"
                )),
            },
            ["fault", "split", rest @ ..] => {
                on_off(rest.first().copied().or(Some("on"))).map(|split| {
                    let wire = WireFaults {
                        split,
                        ..self.sim.wire_faults()
                    };
                    self.sim.set_wire_faults(wire);
                    format!(
                        "fault: replies {}",
                        if split {
                            "split into random pieces"
                        } else {
                            "written whole"
                        }
                    )
                })
            }
            ["disconnect"] => Ok(format!(
                "disconnected {} client connection(s)",
                self.sim.disconnect_all()
            )),
            ["fault", "silent"] => {
                self.sim.set_fault(Fault::Silent);
                Ok("fault: silent".into())
            }
            ["fault", "late", ms] => ms
                .parse::<u64>()
                .map_err(|_| format!("`{ms}` is not a number of ms"))
                .map(|ms| {
                    self.sim.set_fault(Fault::Late(Duration::from_millis(ms)));
                    format!("fault: replies {ms} ms late")
                }),
            ["fault", "exception-every", n] => match n.parse::<u64>() {
                Ok(every) if every > 0 => {
                    self.sim.set_fault(Fault::ExceptionEvery {
                        code: self.args.exception_code,
                        every,
                    });
                    Ok(format!("fault: exception on every {every}. request"))
                }
                _ => Err(format!("`{n}` is not a positive whole number")),
            },
            _ => Err(format!("unknown command `{line}` (try `help`)")),
        };
        vec![r.unwrap_or_else(|e| format!("error: {e}"))]
    }

    fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        for f in self.sim.take_frames() {
            lines.extend(self.describe_frame(&f));
        }
        for c in self.sim.take_coil_log() {
            lines.push(format!(
                "{} {}",
                self.coil_label(c.coil),
                if c.on { "on" } else { "off" }
            ));
        }
        for i in 0..self.args.channels {
            let now = self.sim.input(i);
            if let Some(prev) = self.dis.get_mut(i as usize) {
                if *prev != now {
                    *prev = now;
                    lines.push(format!(
                        "{} {}",
                        self.di_label(i),
                        if now { "high" } else { "low" }
                    ));
                }
            }
        }
        lines
    }
}

/// `ecogate sim io`: see [`IoArgs`].
pub async fn run_io<W, R>(args: IoArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let addr = args.serve.socket_addr()?;
    let cfg = args.sim_config()?;
    let flash_base = cfg.flash_base;
    let framing = if args.rtu_over_tcp {
        Framing::RtuOverTcp
    } else {
        Framing::Tcp
    };
    let sim = RelaySim::bind(&addr.to_string(), framing, cfg)
        .await
        .with_context(|| format!("binding the io simulator to {addr}"))?;
    sim.set_fault(args.fault());
    sim.set_wire_faults(args.wire_faults());
    if args.loop_nc {
        // NC contact: closed (high) while the lane is empty.
        sim.set_input(args.loop_di, true);
    }
    let dis = (0..args.channels).map(|i| sim.input(i)).collect();
    first_line(&mut out, format!("listening on {}", sim.addr())).await?;
    let stop = args.serve.stop.clone();
    let mut c = IoConsole {
        sim,
        args,
        flash_base,
        dis,
    };
    let mut intro = vec![format!(
        "modbus {} unit {}; {}",
        if c.args.rtu_over_tcp {
            "RTU over TCP"
        } else {
            "TCP"
        },
        c.args.unit,
        if c.args.no_barrier {
            "no barrier".to_string()
        } else {
            format!(
                "barrier: open relay {}, close relay {}, limit_open DI {}, limit_closed DI {}, travel {} ms",
                c.args.open_coil,
                c.args.close_coil,
                c.args.limit_open_di,
                c.args.limit_closed_di,
                c.args.travel_ms
            )
        }
    )];
    let wire = c.args.wire_faults();
    if wire != WireFaults::default() {
        intro.push(format!(
            "wire faults: {} random bytes before each reply, split replies {}",
            wire.garbage,
            if wire.split { "on" } else { "off" }
        ));
    }
    intro.extend(c.status());
    emit(&mut out, &intro).await?;
    drive(&mut c, &stop, &mut out, input).await
}

// ---------------------------------------------------------------------------------------------
// scale

use ecogate_drivers::scale::modbus::ModbusScaleSettings;
use ecogate_drivers::sim::scale::{RegScaleSim, RegScaleSimConfig};

/// `[settings]` of profile `name` (`./profiles/NAME.toml` in this directory or up to three
/// levels above it, else the built-in copy), refused unless the profile is for `driver`.
fn profile_settings(name: &str, driver: &str) -> anyhow::Result<toml::Value> {
    use crate::config::profile::Library;
    let lib = Library::for_site(std::path::Path::new("./site.toml"), None, None);
    let found = lib
        .find_profile(name)
        .ok_or_else(|| anyhow!("no profile `{name}` in ./profiles or among the built-in ones"))?;
    let p = lib.load_profile(&found).map_err(|d| {
        anyhow!(
            "profile `{name}`: {}",
            d.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    if p.driver != driver {
        bail!(
            "profile `{name}` is for driver `{}`; this simulator speaks `{driver}`",
            p.driver
        );
    }
    Ok(toml::Value::Table(p.settings))
}

/// What `ecogate sim scale --format` plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleOutput {
    /// Continuous-output frames (`scale-stream` profiles).
    Stream(ScaleFormat),
    /// Weight and status words in Modbus registers (`scale-modbus` profiles).
    ModbusIndicator,
}

fn parse_scale_output(s: &str) -> Result<ScaleOutput, String> {
    if s.trim() == "modbus-indicator" {
        return Ok(ScaleOutput::ModbusIndicator);
    }
    s.trim()
        .parse::<ScaleFormat>()
        .map(ScaleOutput::Stream)
        .map_err(|e| format!("{e}, or modbus-indicator"))
}

/// `ecogate sim scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Output format: a9, a12, reversed, st-gs, toledo (streamed frames), or modbus-indicator
    /// (weight and status registers polled over Modbus).
    #[arg(long, value_parser = parse_scale_output)]
    pub format: ScaleOutput,
    /// modbus-indicator: the profile whose register map to serve (default
    /// scale/modbus-indicator).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// modbus-indicator: RTU frames over TCP (a serial device server) instead of Modbus TCP.
    #[arg(long)]
    pub rtu_over_tcp: bool,
    /// Play a vehicle of this gross weight (kg) at start: ramp up, hold, ramp down.
    #[arg(long, value_name = "KG")]
    pub vehicle: Option<Mass>,
    /// Time a vehicle takes to drive on or off (also used by `load`/`unload`).
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub ramp_ms: u64,
    /// Time a `--vehicle` stands still on the bridge.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub hold_ms: u64,
    /// Replay `--vehicle` endlessly.
    #[arg(long, requires = "vehicle")]
    pub repeat: bool,
    /// Time between frames (modbus-indicator: between register updates).
    #[arg(long, value_name = "MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub interval_ms: u64,
    #[command(flatten)]
    pub faults: StreamFaultArgs,
}

fn parse_kg(s: Option<&str>) -> Result<Mass, String> {
    let s = s.ok_or("missing weight in kg")?;
    let m: Mass = s.parse().map_err(|e| format!("{e}"))?;
    if m.grams < 0 {
        return Err(format!("`{s}`: a weight cannot be negative"));
    }
    Ok(m)
}

/// The indicator behind `ecogate sim scale`: frames on a stream, or Modbus registers.
enum Bridge {
    Stream(ScaleSim),
    Regs(RegScaleSim),
}

impl Bridge {
    fn play(&self, segments: Vec<Segment>) {
        match self {
            Bridge::Stream(s) => s.play(segments),
            Bridge::Regs(s) => s.play(segments),
        }
    }
    fn set_repeat(&self, repeat: bool) {
        match self {
            Bridge::Stream(s) => s.set_repeat(repeat),
            Bridge::Regs(s) => s.set_repeat(repeat),
        }
    }
    fn set_weight(&self, m: Mass) {
        match self {
            Bridge::Stream(s) => s.set_weight(m),
            Bridge::Regs(s) => s.set_weight(m),
        }
    }
    fn weight(&self) -> Mass {
        match self {
            Bridge::Stream(s) => s.weight(),
            Bridge::Regs(s) => s.weight(),
        }
    }
    fn idle(&self) -> bool {
        match self {
            Bridge::Stream(s) => s.idle(),
            Bridge::Regs(s) => s.idle(),
        }
    }
    fn set_faults(&self, f: Faults) {
        match self {
            Bridge::Stream(s) => s.set_faults(f),
            Bridge::Regs(s) => s.set_faults(f),
        }
    }
    fn disconnect(&self) {
        match self {
            Bridge::Stream(s) => s.disconnect(),
            Bridge::Regs(s) => s.disconnect(),
        }
    }
    fn connections(&self) -> u64 {
        match self {
            Bridge::Stream(s) => s.connections(),
            Bridge::Regs(s) => s.connections(),
        }
    }
}

/// `fault exception-every N|off` of the Modbus register simulators; `None` when the line is not
/// one.
fn exception_command(line: &str) -> Option<Result<Option<u64>, String>> {
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["fault", "exception-every", "off" | "0"] => Some(Ok(None)),
        ["fault", "exception-every", n] => Some(
            n.parse::<u64>()
                .map(Some)
                .map_err(|_| format!("`{n}` is not a positive whole number (or off)")),
        ),
        ["fault", "exception-every"] => Some(Err("missing N (or off)".into())),
        _ => None,
    }
}

fn describe_reg_faults(f: &Faults, exception_every: Option<u64>) -> String {
    match exception_every {
        None => describe_faults(f),
        Some(n) => format!("{}; exception 04 on every {n}. request", describe_faults(f)),
    }
}

/// The register spans a master polls, as `start: hex words`.
fn describe_registers(sim: &RegScaleSim) -> String {
    let spans: Vec<String> = sim
        .settings()
        .read_plan()
        .iter()
        .map(|(start, n)| {
            let words: Vec<String> = sim
                .registers(*start, *n)
                .iter()
                .map(|w| format!("{w:04X}"))
                .collect();
            format!("{start}: {}", words.join(" "))
        })
        .collect();
    format!("registers {}", spans.join("; "))
}

struct ScaleConsole {
    sim: Bridge,
    ramp: Duration,
    connections: u64,
    idle: bool,
    faults: Faults,
}

impl ScaleConsole {
    /// Takes the bridge over from any script (even a repeating one) and ramps to `to`.
    fn ramp_to(&mut self, to: Mass) {
        let now = self.sim.weight();
        self.sim.set_repeat(false);
        self.sim.set_weight(now);
        self.sim.play(vec![Segment::Ramp {
            to,
            over: self.ramp,
        }]);
        self.idle = false;
    }
}

impl Console for ScaleConsole {
    fn help(&self) -> &'static str {
        match self.sim {
            Bridge::Stream(_) => {
                "commands:
  load KG            a vehicle drives on (ramps to KG over --ramp-ms)
  unload             the vehicle drives off
  set KG             show KG at once, steady
  weight             print the weight shown now
  fault none | silent [on|off] | split [on|off] | delay MS | garbage N
  disconnect         drop every open connection"
            }
            Bridge::Regs(_) => {
                "commands:
  load KG            a vehicle drives on (ramps to KG over --ramp-ms)
  unload             the vehicle drives off
  set KG             show KG at once, steady
  weight             print the weight shown now
  registers          print the polled registers (hex)
  fault none | silent [on|off] | split [on|off] | delay MS | garbage N
  fault exception-every N|off   answer every N-th request with exception 04
  disconnect         drop every open connection"
            }
        }
    }

    fn command(&mut self, line: &str) -> Vec<String> {
        if let Bridge::Regs(r) = &self.sim {
            if let Some(e) = exception_command(line) {
                return vec![match e {
                    Ok(every) => {
                        r.set_exception_every(every);
                        describe_reg_faults(&self.faults, r.exception_every())
                    }
                    Err(e) => format!("error: {e}"),
                }];
            }
            if line == "registers" {
                return vec![describe_registers(r)];
            }
        }
        if let Some(r) = stream_fault_command(&self.faults, line) {
            return vec![match r {
                Ok(f) => {
                    let none = line.split_whitespace().nth(1) == Some("none");
                    self.sim.set_faults(f.clone());
                    self.faults = f;
                    match &self.sim {
                        Bridge::Regs(r) => {
                            if none {
                                r.set_exception_every(None);
                            }
                            describe_reg_faults(&self.faults, r.exception_every())
                        }
                        Bridge::Stream(_) => describe_faults(&self.faults),
                    }
                }
                Err(e) => format!("error: {e}"),
            }];
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let r = match w.as_slice() {
            ["load", rest @ ..] => parse_kg(rest.first().copied()).map(|m| {
                self.ramp_to(m);
                format!("load {m} kg over {} ms", self.ramp.as_millis())
            }),
            ["unload"] => {
                self.ramp_to(Mass::ZERO);
                Ok(format!("unload over {} ms", self.ramp.as_millis()))
            }
            ["set", rest @ ..] => parse_kg(rest.first().copied()).map(|m| {
                self.sim.set_repeat(false);
                self.sim.set_weight(m);
                format!("weight set to {m} kg")
            }),
            ["weight"] => Ok(format!("weight {} kg", self.sim.weight())),
            ["disconnect"] => {
                self.sim.disconnect();
                Ok("dropped every connection".into())
            }
            _ => Err(format!("unknown command `{line}` (try `help`)")),
        };
        vec![r.unwrap_or_else(|e| format!("error: {e}"))]
    }

    fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(new_clients(&mut self.connections, self.sim.connections()));
        let idle = self.sim.idle();
        if idle && !self.idle {
            lines.push(format!("steady at {} kg", self.sim.weight()));
        }
        self.idle = idle;
        lines
    }
}

/// `ecogate sim scale`: see [`ScaleArgs`].
pub async fn run_scale<W, R>(args: ScaleArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let addr = args.serve.socket_addr()?;
    if let Some(v) = args.vehicle {
        if v.grams <= 0 {
            bail!("--vehicle {v}: the gross weight must be more than 0 kg");
        }
    }
    let faults = args.faults.faults();
    let interval = Duration::from_millis(args.interval_ms);
    let (sim, local, mut intro) = match args.format {
        ScaleOutput::Stream(format) => {
            if args.profile.is_some() || args.rtu_over_tcp {
                bail!("--profile and --rtu-over-tcp apply to --format modbus-indicator only");
            }
            let cfg = ScaleSimConfig {
                interval,
                ..ScaleSimConfig::new(format)
            };
            let (sim, local) = ScaleSim::bind(&addr.to_string(), cfg)
                .await
                .with_context(|| format!("binding the scale simulator to {addr}"))?;
            let intro = format!(
                "scale format {} every {} ms; {}",
                format.name(),
                args.interval_ms,
                describe_faults(&faults)
            );
            (Bridge::Stream(sim), local, intro)
        }
        ScaleOutput::ModbusIndicator => {
            let name = args.profile.as_deref().unwrap_or("scale/modbus-indicator");
            let settings = ModbusScaleSettings::from_toml(&profile_settings(name, "scale-modbus")?)
                .map_err(|e| anyhow!("profile `{name}`: {e}"))?;
            let framing = if args.rtu_over_tcp {
                Framing::RtuOverTcp
            } else {
                Framing::Tcp
            };
            let cfg = RegScaleSimConfig {
                interval,
                ..RegScaleSimConfig::default()
            };
            let (sim, local) = RegScaleSim::bind(&addr.to_string(), framing, &settings, cfg)
                .await
                .with_context(|| format!("binding the scale simulator to {addr}"))?;
            let s = &settings;
            let status = match s.status.register {
                Some(r) => format!(
                    ", status register {r}{}{}",
                    s.status
                        .stable_bit
                        .map(|b| format!(" stable bit {b}"))
                        .unwrap_or_default(),
                    s.status
                        .motion_bit
                        .map(|b| format!(" motion bit {b}"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            };
            use ecogate_drivers::scale::codec::Unit;
            use ecogate_drivers::scale::modbus::{WeightType, WordOrder};
            let ty = match s.weight_type {
                WeightType::I32 => "i32",
                WeightType::U32 => "u32",
                WeightType::I16 => "i16",
                WeightType::U16 => "u16",
                WeightType::F32 => "f32",
            };
            let order = match (s.weight_type.words(), s.word_order) {
                (1, _) => "",
                (_, WordOrder::HiLo) => " hi-lo",
                (_, WordOrder::LoHi) => " lo-hi",
            };
            let unit = match s.weight_unit {
                Unit::G => "g",
                Unit::Kg => "kg",
                Unit::T => "t",
            };
            let intro = format!(
                "modbus-indicator ({name}) {} unit {}: weight {ty}{order} at register {}, {} decimals in {unit}{status}; refreshed every {} ms; {}",
                if args.rtu_over_tcp { "RTU over TCP" } else { "TCP" },
                s.unit,
                s.weight_register,
                s.decimals,
                args.interval_ms,
                describe_faults(&faults)
            );
            (Bridge::Regs(sim), local, intro)
        }
    };
    sim.set_faults(faults.clone());
    first_line(&mut out, format!("listening on {local}")).await?;
    let ramp = Duration::from_millis(args.ramp_ms);
    let mut lines = vec![std::mem::take(&mut intro)];
    if let Some(v) = args.vehicle {
        sim.play(Segment::vehicle(
            v,
            ramp,
            Duration::from_millis(args.hold_ms),
        ));
        sim.set_repeat(args.repeat);
        lines.push(format!(
            "vehicle {v} kg: ramp {} ms, hold {} ms{}",
            args.ramp_ms,
            args.hold_ms,
            if args.repeat { ", repeating" } else { "" }
        ));
    }
    emit(&mut out, &lines).await?;
    let mut c = ScaleConsole {
        idle: sim.idle(),
        sim,
        ramp,
        connections: 0,
        faults,
    };
    drive(&mut c, &args.serve.stop, &mut out, input).await
}

// ---------------------------------------------------------------------------------------------
// led

use ecogate_drivers::led::modbus::ModbusSignSettings;
use ecogate_drivers::sim::led::{RegSignShown, RegSignSim};

/// Sign protocol for `ecogate sim led`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedProtocol {
    /// Parking LED + voice card (VR=0x64).
    P64,
    /// Onbon BX-5K/6K.
    Bx,
    /// PLC-style text sign: GBK text in Modbus holding registers (`sign-modbus` profiles).
    ModbusText,
}

/// `ecogate sim led`.
#[derive(clap::Args, Debug, Clone)]
pub struct LedArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[arg(long, value_enum, default_value = "p64")]
    pub protocol: LedProtocol,
    /// 0x64: behave like a card in "no reply" mode (no ACK frames).
    #[arg(long)]
    pub no_ack: bool,
    /// BX: refuse every frame with this error code instead of ACKing.
    #[arg(long, value_name = "CODE")]
    pub nack: Option<u8>,
    /// modbus-text: the profile whose register layout to serve (default led/modbus-text).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// modbus-text: RTU frames over TCP (a serial device server) instead of Modbus TCP.
    #[arg(long)]
    pub rtu_over_tcp: bool,
    #[command(flatten)]
    pub faults: StreamFaultArgs,
}

/// Control characters would garble the terminal; CJK text is printed as is.
fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// One line per text shown or spoken, or one line for a non-text frame.
/// "client connected" once per new connection a simulator counted since the last poll.
fn new_clients(seen: &mut u64, now: u64) -> Option<String> {
    (now > *seen).then(|| {
        *seen = now;
        format!("client connected ({now} so far)")
    })
}

/// Everything a simulator broadcast since the last poll, described; a lagging receiver says how
/// many it missed instead of failing.
fn drain_received<T: Clone>(
    rx: &mut tokio::sync::broadcast::Receiver<T>,
    describe: impl Fn(&T) -> Vec<String>,
    what: &str,
) -> Vec<String> {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut lines = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(r) => lines.extend(describe(&r)),
            Err(TryRecvError::Lagged(k)) => {
                lines.push(format!("({k} {what} arrived too fast to print)"))
            }
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    lines
}

pub fn describe_sign_frame(r: &SignReceived) -> Vec<String> {
    match r {
        SignReceived::P64 { message, .. } => match message {
            P64Message::Voice { text, .. } => vec![format!("voice: {}", printable(text))],
            P64Message::TempText { line, text } => {
                vec![format!("line {line}: {}", printable(text))]
            }
            P64Message::MultiLine { lines, voice } => {
                let mut v: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("line {}: {}", i + 1, printable(t)))
                    .collect();
                if !voice.is_empty() {
                    v.push(format!("voice: {}", printable(voice)));
                }
                v
            }
            P64Message::Relay { ch, seconds } => {
                vec![format!("relay {ch} for {seconds} s")]
            }
            P64Message::Clock(c) => vec![format!("clock set: {c:?}")],
            P64Message::Other { cmd, data } => {
                vec![format!("command 0x{cmd:02X} ({} data bytes)", data.len())]
            }
        },
        SignReceived::BxText { area, text, .. } => {
            vec![format!("area {area}: {}", printable(text))]
        }
        SignReceived::BxOther { command, raw } => vec![match command {
            Some((g, c)) => format!("bx command {g:02X} {c:02X} ({} bytes)", raw.len()),
            None => format!("bx frame without command ({} bytes)", raw.len()),
        }],
    }
}

struct LedConsole {
    sim: LedSim,
    rx: tokio::sync::broadcast::Receiver<SignReceived>,
    connections: u64,
    rejected: u64,
    faults: Faults,
}

impl Console for LedConsole {
    fn help(&self) -> &'static str {
        "commands:
  fault none | silent [on|off] | split [on|off] | delay MS | garbage N
  disconnect         drop every open connection"
    }

    fn command(&mut self, line: &str) -> Vec<String> {
        if line == "disconnect" {
            self.sim.disconnect();
            return vec!["dropped every connection".into()];
        }
        vec![match stream_fault_command(&self.faults, line) {
            Some(Ok(f)) => {
                self.sim.set_faults(f.clone());
                self.faults = f;
                describe_faults(&self.faults)
            }
            Some(Err(e)) => format!("error: {e}"),
            None => format!("error: unknown command `{line}` (try `help`)"),
        }]
    }

    fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(new_clients(&mut self.connections, self.sim.connections()));
        lines.extend(drain_received(&mut self.rx, describe_sign_frame, "frames"));
        let rej = self.sim.rejected();
        if rej > self.rejected {
            lines.push(format!(
                "rejected {} frame(s) with a bad checksum or shape ({rej} so far)",
                rej - self.rejected
            ));
            self.rejected = rej;
        }
        lines
    }
}

/// `ecogate sim led`: see [`LedArgs`].
pub async fn run_led<W, R>(args: LedArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let addr = args.serve.socket_addr()?;
    let protocol = match args.protocol {
        LedProtocol::P64 => SignProtocol::P64,
        LedProtocol::Bx => SignProtocol::Bx,
        LedProtocol::ModbusText => return run_reg_sign(args, out, input).await,
    };
    if args.profile.is_some() || args.rtu_over_tcp {
        bail!("--profile and --rtu-over-tcp apply to --protocol modbus-text only");
    }
    if args.no_ack && protocol != SignProtocol::P64 {
        bail!("--no-ack applies to --protocol p64 only");
    }
    if args.nack.is_some() && protocol != SignProtocol::Bx {
        bail!("--nack applies to --protocol bx only");
    }
    let cfg = LedSimConfig {
        ack_p64: !args.no_ack,
        bx_nack: args.nack,
        ..LedSimConfig::new(protocol)
    };
    let (sim, local) = LedSim::bind(&addr.to_string(), cfg)
        .await
        .with_context(|| format!("binding the LED simulator to {addr}"))?;
    let faults = args.faults.faults();
    sim.set_faults(faults.clone());
    let rx = sim.subscribe();
    first_line(&mut out, format!("listening on {local}")).await?;
    emit(
        &mut out,
        &[format!(
            "sign protocol {:?}; {}",
            args.protocol,
            describe_faults(&faults)
        )],
    )
    .await?;
    let mut c = LedConsole {
        sim,
        rx,
        connections: 0,
        rejected: 0,
        faults,
    };
    drive(&mut c, &args.serve.stop, &mut out, input).await
}

/// One line per line block or voice text a Modbus text sign took.
pub fn describe_reg_sign(r: &RegSignShown) -> Vec<String> {
    let line = |i: usize, t: &str| {
        if t.is_empty() {
            format!("line {}: (blank)", i + 1)
        } else {
            format!("line {}: {}", i + 1, printable(t))
        }
    };
    match r {
        RegSignShown::Lines(lines) => lines.iter().enumerate().map(|(i, t)| line(i, t)).collect(),
        RegSignShown::Line { index, text } => vec![line(*index, text)],
        RegSignShown::Voice(t) => vec![format!("voice: {}", printable(t))],
    }
}

struct RegSignConsole {
    sim: RegSignSim,
    rx: tokio::sync::broadcast::Receiver<RegSignShown>,
    connections: u64,
    faults: Faults,
}

impl Console for RegSignConsole {
    fn help(&self) -> &'static str {
        "commands:
  fault none | silent [on|off] | split [on|off] | delay MS | garbage N
  fault exception-every N|off   answer every N-th request with exception 04
  disconnect         drop every open connection"
    }

    fn command(&mut self, line: &str) -> Vec<String> {
        if line == "disconnect" {
            self.sim.disconnect();
            return vec!["dropped every connection".into()];
        }
        if let Some(e) = exception_command(line) {
            return vec![match e {
                Ok(every) => {
                    self.sim.set_exception_every(every);
                    describe_reg_faults(&self.faults, self.sim.exception_every())
                }
                Err(e) => format!("error: {e}"),
            }];
        }
        vec![match stream_fault_command(&self.faults, line) {
            Some(Ok(f)) => {
                if line.split_whitespace().nth(1) == Some("none") {
                    self.sim.set_exception_every(None);
                }
                self.sim.set_faults(f.clone());
                self.faults = f;
                describe_reg_faults(&self.faults, self.sim.exception_every())
            }
            Some(Err(e)) => format!("error: {e}"),
            None => format!("error: unknown command `{line}` (try `help`)"),
        }]
    }

    fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(new_clients(&mut self.connections, self.sim.connections()));
        lines.extend(drain_received(&mut self.rx, describe_reg_sign, "updates"));
        lines
    }
}

/// `ecogate sim led --protocol modbus-text`.
async fn run_reg_sign<W, R>(args: LedArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let addr = args.serve.socket_addr()?;
    if args.no_ack || args.nack.is_some() {
        bail!("--no-ack and --nack apply to --protocol p64 / bx only");
    }
    let name = args.profile.as_deref().unwrap_or("led/modbus-text");
    let settings = ModbusSignSettings::from_toml(&profile_settings(name, "sign-modbus")?)
        .map_err(|e| anyhow!("profile `{name}`: {e}"))?;
    let framing = if args.rtu_over_tcp {
        Framing::RtuOverTcp
    } else {
        Framing::Tcp
    };
    let (sim, local) = RegSignSim::bind(&addr.to_string(), framing, &settings)
        .await
        .with_context(|| format!("binding the LED simulator to {addr}"))?;
    let faults = args.faults.faults();
    sim.set_faults(faults.clone());
    let rx = sim.subscribe();
    first_line(&mut out, format!("listening on {local}")).await?;
    let blocks: Vec<String> = settings
        .lines
        .iter()
        .map(|b| format!("{}+{}", b.register, b.registers()))
        .collect();
    let trigger = |c: Option<ecogate_drivers::led::modbus::CommitRegister>| match c {
        Some(c) => format!("register {} = {}", c.register, c.value),
        None => "each write".into(),
    };
    let voice = match &settings.voice {
        Some(v) => format!(
            "; voice block {}+{}, spoken on {}",
            v.register,
            v.registers(),
            trigger(settings.voice_commit)
        ),
        None => String::new(),
    };
    emit(
        &mut out,
        &[format!(
            "sign protocol modbus-text ({name}) {} unit {}: line blocks {} (start+registers), shown on {}{voice}; {}",
            if args.rtu_over_tcp { "RTU over TCP" } else { "TCP" },
            settings.unit,
            blocks.join(", "),
            trigger(settings.commit),
            describe_faults(&faults)
        )],
    )
    .await?;
    let mut c = RegSignConsole {
        sim,
        rx,
        connections: 0,
        faults,
    };
    drive(&mut c, &args.serve.stop, &mut out, input).await
}

// ---------------------------------------------------------------------------------------------
// ups

/// `ecogate sim ups`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpsArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Start on battery (mains failed).
    #[arg(long)]
    pub on_battery: bool,
    /// Start with the battery-low flag set.
    #[arg(long)]
    pub battery_low: bool,
    #[command(flatten)]
    pub faults: StreamFaultArgs,
}

struct UpsConsole {
    sim: UpsSim,
    on_battery: bool,
    low: bool,
    polls: u64,
    connections: u64,
    faults: Faults,
}

impl UpsConsole {
    fn state(&self) -> &'static str {
        match (self.on_battery, self.low) {
            (false, false) => "on mains",
            (false, true) => "on mains, battery low",
            (true, false) => "on battery",
            (true, true) => "on battery, battery low",
        }
    }
}

impl Console for UpsConsole {
    fn help(&self) -> &'static str {
        "commands:
  battery            mains lost: running on battery
  battery-low        on battery and the battery is low
  mains              mains back, battery fine
  fault none | silent [on|off] | split [on|off] | delay MS | garbage N
  disconnect         drop every open connection"
    }

    fn command(&mut self, line: &str) -> Vec<String> {
        if let Some(r) = stream_fault_command(&self.faults, line) {
            return vec![match r {
                Ok(f) => {
                    self.sim.set_faults(f.clone());
                    self.faults = f;
                    describe_faults(&self.faults)
                }
                Err(e) => format!("error: {e}"),
            }];
        }
        let (bat, low) = match line {
            "battery" => (true, false),
            "battery-low" => (true, true),
            "mains" => (false, false),
            "disconnect" => {
                self.sim.disconnect();
                return vec!["dropped every connection".into()];
            }
            _ => return vec![format!("error: unknown command `{line}` (try `help`)")],
        };
        self.on_battery = bat;
        self.low = low;
        self.sim.set_on_battery(bat);
        self.sim.set_battery_low(low);
        vec![format!("state: {}", self.state())]
    }

    fn poll(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        lines.extend(new_clients(&mut self.connections, self.sim.connections()));
        let p = self.sim.polls();
        if p > self.polls {
            let first = self.polls + 1;
            self.polls = p;
            lines.push(if first == p {
                format!("Q1 poll #{p} ({})", self.state())
            } else {
                format!("Q1 polls #{first}..#{p} ({})", self.state())
            });
        }
        lines
    }
}

/// `ecogate sim ups`: see [`UpsArgs`].
pub async fn run_ups<W, R>(args: UpsArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let addr = args.serve.socket_addr()?;
    let (sim, local) = UpsSim::bind(&addr.to_string())
        .await
        .with_context(|| format!("binding the UPS simulator to {addr}"))?;
    let faults = args.faults.faults();
    sim.set_faults(faults.clone());
    let on_battery = args.on_battery || args.battery_low;
    sim.set_on_battery(on_battery);
    sim.set_battery_low(args.battery_low);
    first_line(&mut out, format!("listening on {local}")).await?;
    let mut c = UpsConsole {
        sim,
        on_battery,
        low: args.battery_low,
        polls: 0,
        connections: 0,
        faults,
    };
    emit(
        &mut out,
        &[format!(
            "Megatec Q1 UPS, {}; {}",
            c.state(),
            describe_faults(&c.faults)
        )],
    )
    .await?;
    drive(&mut c, &args.serve.stop, &mut out, input).await
}

// ---------------------------------------------------------------------------------------------
// camera

use ecogate_drivers::camera::generic::JsonSettings;
use ecogate_drivers::sim::camera::{
    json_push_body, IsapiFaults, IsapiLogEntry, IsapiOutcome, IsapiSim, JsonPlate,
};

/// Push format for `ecogate sim camera`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraKind {
    /// VZ (臻识) `AlarmInfoPlate` JSON.
    Vz,
    /// Hikvision listening-mode multipart `anpr.xml` + JPEGs.
    Hik,
    /// Any JSON camera described by a `json-push` profile's JSON pointers.
    #[value(alias = "generic-json")]
    Json,
}

/// `ecogate sim camera`.
#[derive(clap::Args, Debug, Clone)]
pub struct CameraArgs {
    /// The gateway's ingest URL, e.g. http://127.0.0.1:8080/ingest/vz/cam1 (loopback only).
    /// May be left out with --isapi (the camera then only serves control requests).
    #[arg(long, required_unless_present = "isapi")]
    pub url: Option<String>,
    #[arg(long, value_enum, default_value = "vz")]
    pub kind: CameraKind,
    /// --kind json: the profile whose JSON pointers shape the push (default camera/generic-json).
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
    /// Plate text to read.
    #[arg(long, default_value = "豫A12345")]
    pub plate: String,
    /// Plate colour: blue, yellow, white, black, green, yellow_green, other (or 蓝/黄/…).
    #[arg(long, default_value = "yellow")]
    pub color: PlateColor,
    /// Number of reads to post.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub count: u32,
    /// Time between reads.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub interval_ms: u64,
    /// Size of the scene image in KiB (0 = no image).
    #[arg(long, value_name = "KIB", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=16_384))]
    pub image_kb: u32,
    /// Post every read twice (same id), as a camera retrying does.
    #[arg(long)]
    pub duplicate: bool,
    /// Mark reads as offline replays: VZ `isoffline=1` captured 10 minutes ago, Hikvision
    /// `isDataRetransmission=true`, JSON captured 10 minutes ago.
    #[arg(long)]
    pub offline_replay: bool,
    /// --kind hik: also serve the camera's ISAPI control endpoint (barrier, IO outputs) with
    /// HTTP Digest on 127.0.0.1, printing every request.
    #[arg(long, requires = "password")]
    pub isapi: bool,
    /// Port of the ISAPI endpoint; 0 picks a free one (read it from the first output line).
    #[arg(long, default_value_t = 0)]
    pub isapi_port: u16,
    /// ISAPI Digest user name.
    #[arg(long, default_value = "admin")]
    pub username: String,
    /// ISAPI Digest password (what the gateway's `password_env` variable must hold).
    #[arg(long)]
    pub password: Option<String>,
    /// Read stdin until EOF: `PLATE [COLOR]` lines post a read, `fault …` lines change the
    /// faults; the camera stops at EOF once the scripted reads are posted.
    #[arg(long)]
    pub until_eof: bool,
    /// Stop by itself after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,
}

/// Accepts http(s) URLs whose host is 127.0.0.0/8, `localhost` or `[::1]`.
pub fn check_loopback_url(url: &str) -> anyhow::Result<()> {
    let u = reqwest::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    if !matches!(u.scheme(), "http" | "https") {
        bail!("`{url}`: only http:// or https:// ingest URLs are supported");
    }
    let host = u.host_str().unwrap_or("");
    let ok = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !ok {
        bail!("refusing to post to `{url}`: the camera simulator only talks to loopback (127.0.0.0/8, localhost, [::1])");
    }
    Ok(())
}

/// Faults of the pushing side of the camera.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PushFaults {
    duplicate: bool,
    offline: bool,
}

struct CameraRun {
    sim: Option<CameraSim>,
    args: CameraArgs,
    json: Option<JsonSettings>,
    isapi: Option<IsapiSim>,
    push: PushFaults,
    next_id: u64,
    posted: u64,
    failed: u64,
    isapi_accepted: u64,
    isapi_refused: u64,
    isapi_unauthorized: u64,
}

/// `<tag>value</tag>` from a small ISAPI body.
fn xml_value<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find('<')? + start;
    Some(body[start..end].trim())
}

/// What an ISAPI control request asks for, in words.
fn describe_isapi(e: &IsapiLogEntry) -> String {
    let r = &e.request;
    let what = if let Some(mode) = xml_value(&r.body, "ctrlMode") {
        format!("barrier {mode}")
    } else if let Some(state) = xml_value(&r.body, "outputState") {
        let n = r
            .path
            .split("/outputs/")
            .nth(1)
            .and_then(|t| t.split('/').next())
            .unwrap_or("?");
        format!("output {n} {state}")
    } else if r.body.trim().is_empty() {
        "no body".to_string()
    } else {
        let b: String = r.body.trim().chars().take(80).collect();
        printable(&b)
    };
    let head = format!("ISAPI {} {}: {what}", r.method, printable(&r.path));
    match e.outcome {
        IsapiOutcome::Accepted => head,
        IsapiOutcome::Refused => format!("{head} → refused (statusCode 4)"),
        IsapiOutcome::Unauthorized => {
            format!("{head} → 401, Digest challenge sent (no or wrong credentials)")
        }
    }
}

impl CameraRun {
    fn help(&self) -> String {
        let mut h = String::from(
            "commands:
  PLATE [COLOR]             post a read of PLATE (colour: --color)
  status                    reads posted, failures, faults
  fault none                clear every fault
  fault duplicate [on|off]  post every read twice with the same id
  fault offline [on|off]    mark reads as offline replays",
        );
        if self.isapi.is_some() {
            h.push_str(
                "
  fault silent [on|off]     ISAPI control never answers
  fault delay MS            ISAPI control answers MS late
  fault refuse [on|off]     ISAPI control answers statusCode 4 (refused)",
            );
        }
        h
    }

    fn describe_faults(&self) -> String {
        let p = self.push;
        let mut s = format!("faults: duplicate={} offline={}", p.duplicate, p.offline);
        if let Some(i) = &self.isapi {
            let f = i.faults();
            s.push_str(&format!(
                "; isapi silent={} delay={}ms refuse={}",
                f.silent,
                f.delay.as_millis(),
                f.refuse
            ));
        }
        s
    }

    fn status(&self) -> String {
        let mut s = format!(
            "status: {} posted, {} failed; {}",
            self.posted,
            self.failed,
            self.describe_faults()
        );
        if self.isapi.is_some() {
            s.push_str(&format!(
                "; isapi {} accepted, {} refused, {} unauthorized",
                self.isapi_accepted, self.isapi_refused, self.isapi_unauthorized
            ));
        }
        s
    }

    /// `fault …`: `None` when the line is not a fault command.
    fn fault_command(&mut self, line: &str) -> Option<Result<String, String>> {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first() != Some(&"fault") {
            return None;
        }
        let flag = |i: usize| on_off(w.get(i).copied().or(Some("on")));
        let isapi = self.isapi.as_ref();
        let need_isapi = || "only with --isapi".to_string();
        let set_isapi = |f: &dyn Fn(&mut IsapiFaults)| -> Result<(), String> {
            let i = isapi.ok_or_else(need_isapi)?;
            let mut cur = i.faults();
            f(&mut cur);
            i.set_faults(cur);
            Ok(())
        };
        let r = match w.get(1).copied() {
            Some("none") => {
                self.push = PushFaults::default();
                if let Some(i) = isapi {
                    i.set_faults(IsapiFaults::default());
                }
                Ok(())
            }
            Some("duplicate") => flag(2).map(|v| self.push.duplicate = v),
            Some("offline") => flag(2).map(|v| self.push.offline = v),
            Some("silent") => flag(2).and_then(|v| set_isapi(&|f| f.silent = v)),
            Some("refuse") => flag(2).and_then(|v| set_isapi(&|f| f.refuse = v)),
            Some("delay") => w
                .get(2)
                .ok_or_else(|| "missing MS".to_string())
                .and_then(|ms| {
                    ms.parse::<u64>()
                        .map_err(|_| format!("`{ms}` is not a whole number of ms"))
                })
                .and_then(|ms| set_isapi(&|f| f.delay = Duration::from_millis(ms))),
            _ => Err(format!(
                "`{line}`: expected fault none | duplicate [on|off] | offline [on|off]{}",
                if isapi.is_some() {
                    " | silent [on|off] | delay MS | refuse [on|off]"
                } else {
                    ""
                }
            )),
        };
        Some(r.map(|()| self.describe_faults()))
    }

    /// New ISAPI requests, one line each.
    fn poll_isapi(&mut self) -> Vec<String> {
        let Some(i) = &self.isapi else {
            return Vec::new();
        };
        let log = i.take_log();
        for e in &log {
            match e.outcome {
                IsapiOutcome::Accepted => self.isapi_accepted += 1,
                IsapiOutcome::Refused => self.isapi_refused += 1,
                IsapiOutcome::Unauthorized => self.isapi_unauthorized += 1,
            }
        }
        log.iter().map(describe_isapi).collect()
    }

    async fn post_once(
        &self,
        sim: &CameraSim,
        plate: &str,
        color: PlateColor,
        id: u64,
    ) -> anyhow::Result<Reply> {
        let a = &self.args;
        let image = a.image_kb as usize * 1024;
        let offline = self.push.offline;
        match a.kind {
            CameraKind::Vz => {
                let mut p = VzPlate::new(plate, id);
                p.color = ecogate_drivers::camera::vz::color_code(color);
                p.image_bytes = image;
                if offline {
                    p.offline = true;
                    p.sec -= 600;
                }
                Ok(sim.vz_plate(&p).await?)
            }
            CameraKind::Json => {
                let s = self
                    .json
                    .as_ref()
                    .ok_or_else(|| anyhow!("no json-push profile loaded"))?;
                let mut p = JsonPlate::new(plate, id.to_string());
                p.color = color;
                p.image_bytes = image;
                if offline {
                    p.captured_at -= chrono::Duration::minutes(10);
                }
                let body = json_push_body(s, &p)?;
                Ok(sim.post_raw("application/json", body).await?)
            }
            CameraKind::Hik => {
                let uuid = format!("ecogate-sim-{id}");
                let mut xml = hik_anpr_xml(plate, &uuid, color.name(), false);
                if offline {
                    xml = xml.replace("<isDataRetransmission>false", "<isDataRetransmission>true");
                }
                let crop = fake_jpeg(image / 20 + 64);
                let scene = fake_jpeg(image.max(64));
                let b = "hiksimboundary";
                let body = multipart_body(
                    b,
                    &[
                        (
                            "anpr.xml",
                            Some("anpr.xml"),
                            "application/xml",
                            xml.as_bytes(),
                        ),
                        (
                            "licensePlatePicture.jpg",
                            Some("licensePlatePicture.jpg"),
                            "image/jpeg",
                            &crop,
                        ),
                        (
                            "detectionPicture.jpg",
                            Some("detectionPicture.jpg"),
                            "image/jpeg",
                            &scene,
                        ),
                    ],
                );
                Ok(sim
                    .post_raw(&format!("multipart/form-data; boundary={b}"), body)
                    .await?)
            }
        }
    }

    /// One read (twice with the duplicate fault), each reply printed.
    async fn read<W: AsyncWrite + Unpin>(
        &mut self,
        out: &mut W,
        plate: &str,
        color: PlateColor,
    ) -> anyhow::Result<()> {
        let Some(sim) = self.sim.clone() else {
            return emit(
                out,
                &["error: no --url: this camera only serves ISAPI control".to_string()],
            )
            .await;
        };
        let id = self.next_id;
        self.next_id += 1;
        let times = if self.push.duplicate { 2 } else { 1 };
        for k in 0..times {
            self.posted += 1;
            let tag = format!(
                "read {id} {plate} {}{}",
                color.name(),
                if k > 0 { " (duplicate)" } else { "" }
            );
            let line = match self.post_once(&sim, plate, color, id).await {
                Ok(r) => format!(
                    "{tag} → {} {}",
                    r.status,
                    r.body.trim().replace(['\r', '\n'], " ")
                ),
                Err(e) => {
                    self.failed += 1;
                    format!("{tag} → error: {e:#}")
                }
            };
            emit(out, &[line]).await?;
        }
        Ok(())
    }

    /// One stdin line: a command or `PLATE [COLOR]`.
    async fn line<W: AsyncWrite + Unpin>(&mut self, out: &mut W, line: &str) -> anyhow::Result<()> {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            return Ok(());
        }
        let mut before = self.poll_isapi();
        if t == "help" {
            before.extend(self.help().lines().map(str::to_string));
            return emit(out, &before).await;
        }
        if t == "status" {
            before.push(self.status());
            return emit(out, &before).await;
        }
        if let Some(r) = self.fault_command(t) {
            before.push(r.unwrap_or_else(|e| format!("error: {e}")));
            return emit(out, &before).await;
        }
        emit(out, &before).await?;
        let w: Vec<&str> = t.split_whitespace().collect();
        match w.as_slice() {
            [p] => self.read(out, p, self.args.color).await,
            [p, c] => match c.parse::<PlateColor>() {
                Ok(c) => self.read(out, p, c).await,
                Err(e) => emit(out, &[format!("error: {e}")]).await,
            },
            _ => {
                emit(
                    out,
                    &[format!(
                        "error: `{t}`: expected `PLATE [COLOR]` or a command (try `help`)"
                    )],
                )
                .await
            }
        }
    }
}

/// `ecogate sim camera`: see [`CameraArgs`].
pub async fn run_camera<W, R>(args: CameraArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    if let Some(url) = &args.url {
        check_loopback_url(url)?;
    }
    let plate = args.plate.trim().to_string();
    if plate.is_empty() {
        bail!("--plate must not be empty");
    }
    if args.isapi && args.kind != CameraKind::Hik {
        bail!("--isapi is the Hikvision control endpoint: use it with --kind hik");
    }
    if args.profile.is_some() && args.kind != CameraKind::Json {
        bail!("--profile applies to --kind json only");
    }
    let json = match args.kind {
        CameraKind::Json => {
            let name = args.profile.as_deref().unwrap_or("camera/generic-json");
            let s: JsonSettings = profile_settings(name, "json-push")?
                .try_into()
                .map_err(|e: toml::de::Error| anyhow!("profile `{name}`: {}", e.message()))?;
            // A profile whose pointers cannot all be set is refused before anything is posted.
            json_push_body(&s, &JsonPlate::new(&plate, "0"))
                .map_err(|e| anyhow!("profile `{name}`: {e}"))?;
            Some(s)
        }
        _ => None,
    };
    let isapi = if args.isapi {
        let pass = args.password.clone().unwrap_or_default();
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), args.isapi_port);
        Some(
            IsapiSim::bind(&addr.to_string(), &args.username, &pass)
                .await
                .with_context(|| format!("binding the ISAPI endpoint to {addr}"))?,
        )
    } else {
        None
    };
    let deadline = args.duration.map(|d| Instant::now() + d);
    match (&isapi, &args.url) {
        (Some(i), url) => {
            first_line(&mut out, format!("listening on {}", i.addr())).await?;
            emit(
                &mut out,
                &[format!(
                    "Hikvision ISAPI control, Digest user `{}`; {}",
                    args.username,
                    match url {
                        Some(u) => format!("posting to {u}"),
                        None => "no --url: control only".to_string(),
                    }
                )],
            )
            .await?;
        }
        (None, Some(url)) => first_line(&mut out, format!("posting to {url}")).await?,
        (None, None) => bail!("--url is needed unless --isapi is given"),
    }
    let push = PushFaults {
        duplicate: args.duplicate,
        offline: args.offline_replay,
    };
    let mut run = CameraRun {
        sim: args.url.clone().map(CameraSim::new),
        // Ids from the clock so reads of successive runs are not taken for replays.
        next_id: u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(1) * 10,
        json,
        isapi,
        push,
        posted: 0,
        failed: 0,
        isapi_accepted: 0,
        isapi_refused: 0,
        isapi_unauthorized: 0,
        args,
    };
    let color = run.args.color;
    let interval = Duration::from_millis(run.args.interval_ms);
    let serving = run.isapi.is_some();
    let until_eof = run.args.until_eof;
    let mut left = if run.sim.is_some() { run.args.count } else { 0 };
    let mut next_read = Instant::now();
    // Stdin is read with --until-eof, or while the ISAPI endpoint keeps the camera running.
    let mut stdin_open = until_eof || serving;
    let mut lines = input.lines();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // Done once the scripted reads are posted and stdin (if read at all) has ended; an
        // ISAPI endpoint keeps serving past EOF unless --until-eof says otherwise.
        if left == 0 && !stdin_open && (!serving || until_eof) {
            if until_eof {
                let mut l = run.poll_isapi();
                l.push("stopping: end of input".to_string());
                emit(&mut out, &l).await?;
            }
            break;
        }
        tokio::select! {
            _ = sleep_until_opt(deadline) => {
                let mut l = run.poll_isapi();
                l.push("stopping: duration elapsed".to_string());
                emit(&mut out, &l).await?;
                break;
            }
            _ = tokio::time::sleep_until(next_read), if left > 0 => {
                run.read(&mut out, &plate, color).await?;
                left -= 1;
                next_read = Instant::now() + interval;
            }
            l = lines.next_line(), if stdin_open => match l {
                Ok(Some(l)) => run.line(&mut out, &l).await?,
                Ok(None) => stdin_open = false,
                Err(e) => {
                    if until_eof {
                        return Err(anyhow!(e).context("reading commands from stdin"));
                    }
                    emit(&mut out, &[format!("error: reading stdin: {e}; commands disabled")]).await?;
                    stdin_open = false;
                }
            },
            _ = tick.tick(), if serving => {
                let l = run.poll_isapi();
                emit(&mut out, &l).await?;
            }
        }
    }
    if run.failed > 0 {
        bail!("{} of {} posts failed", run.failed, run.posted);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// platform

/// `ecogate sim platform`: the strict mock of a regulator platform.
#[derive(clap::Args, Debug, Clone)]
pub struct PlatformArgs {
    /// Platform profile name (profiles/platform/NAME.toml, or a built-in).
    #[arg(long, default_value = "transport-control")]
    pub profile: String,
    /// Address to listen on (127.0.0.1 only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Accept only this login (with --password).
    #[arg(long, requires = "password")]
    pub username: Option<String>,
    #[arg(long, requires = "username")]
    pub password: Option<String>,
    /// Accept only this organ (enterprise code).
    #[arg(long)]
    pub organ: Option<String>,
    /// Token lifetime in seconds (default: the profile's).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub token_ttl: Option<Duration>,
    /// Environment variable holding the secret that static-token and signed auth, and the hebei
    /// Client_secret, must prove (default: any token, signatures over an empty secret).
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,
    #[command(flatten)]
    pub stop: StopArgs,
}

struct PlatformConsole {
    mock: crate::regulator::mock::MockPlatform,
    records: usize,
    photos: usize,
    rejections: usize,
}

impl Console for PlatformConsole {
    fn help(&self) -> &'static str {
        "commands:
  status             counts and faults
  down | up          answer every request with HTTP 503 / serve again
  fail N             answer the next N requests with HTTP 503
  reset N            reset the connection of the next N requests before processing them
  reset-after N      process the next N requests, then reset instead of answering
  delay MS           wait before every answer (longer than the client timeout = timeout)
  expire             forget every issued token
  ttl SECS           lifetime of new tokens"
    }

    fn command(&mut self, line: &str) -> Vec<String> {
        let w: Vec<&str> = line.split_whitespace().collect();
        let m = &self.mock;
        let r = match w.as_slice() {
            ["status"] => Ok(()),
            ["down"] => {
                m.set_down(true);
                Ok(())
            }
            ["up"] => {
                m.set_down(false);
                Ok(())
            }
            ["fail", n] => n
                .parse::<u32>()
                .map(|n| m.fail_next(n))
                .map_err(|_| format!("`{n}` is not a whole number")),
            ["reset", n] => n
                .parse::<u32>()
                .map(|n| m.reset_next(n))
                .map_err(|_| format!("`{n}` is not a whole number")),
            ["reset-after", n] => n
                .parse::<u32>()
                .map(|n| m.reset_after_next(n))
                .map_err(|_| format!("`{n}` is not a whole number")),
            ["delay", ms] => ms
                .parse::<u64>()
                .map(|ms| m.set_delay(Duration::from_millis(ms)))
                .map_err(|_| format!("`{ms}` is not a whole number of ms")),
            ["expire"] => {
                m.expire_tokens();
                Ok(())
            }
            ["ttl", s] => parse_secs(s).map(|d| m.set_token_ttl(d)),
            _ => Err(format!("unknown command `{line}` (try `help`)")),
        };
        vec![match r {
            Ok(()) => m.summary(),
            Err(e) => format!("error: {e}"),
        }]
    }

    fn poll(&mut self) -> Vec<String> {
        let (records, photos, rejections) =
            self.mock.since(self.records, self.photos, self.rejections);
        let mut lines = Vec::new();
        for r in &records {
            lines.push(format!("accepted record {r}"));
        }
        for mut p in photos.iter().cloned() {
            // A photo line with its whole base64 body would flood the terminal.
            if let Some(o) = p.as_object_mut() {
                for v in o.values_mut() {
                    if v.as_str().is_some_and(|t| t.len() > 64) {
                        *v = format!("<{} chars>", v.as_str().map_or(0, str::len)).into();
                    }
                }
            }
            lines.push(format!("accepted photo {p}"));
        }
        for e in &rejections {
            lines.push(format!("refused: {e}"));
        }
        self.records += records.len();
        self.photos += photos.len();
        self.rejections += rejections.len();
        lines
    }
}

pub async fn run_platform<W, R>(args: PlatformArgs, mut out: W, input: R) -> anyhow::Result<()>
where
    W: AsyncWrite + Unpin,
    R: AsyncBufRead + Unpin,
{
    let listen: SocketAddr = args
        .listen
        .parse()
        .with_context(|| format!("`{}` is not ADDR:PORT", args.listen))?;
    check_bind(&listen.ip().to_string())?;
    let profile = crate::regulator::profile::PlatformProfile::load(
        std::path::Path::new("./site.toml"),
        &args.profile,
    )?;
    let mock = crate::regulator::mock::MockPlatform::start(profile, listen).await?;
    if let (Some(u), Some(p)) = (&args.username, &args.password) {
        mock.require_credentials(u, p);
    }
    if let Some(o) = &args.organ {
        mock.require_organ(o);
    }
    if let Some(t) = args.token_ttl {
        mock.set_token_ttl(t);
    }
    if let Some(var) = &args.secret_env {
        let secret = std::env::var(var)
            .with_context(|| format!("--secret-env: environment variable `{var}` is not set"))?;
        mock.require_secret(&secret);
    }
    first_line(&mut out, format!("listening on {}", mock.addr())).await?;
    emit(
        &mut out,
        &[format!(
            "mock platform `{}`; {}",
            args.profile,
            mock.summary()
        )],
    )
    .await?;
    let mut c = PlatformConsole {
        mock,
        records: 0,
        photos: 0,
        rejections: 0,
    };
    drive(&mut c, &args.stop, &mut out, input).await
}
