//! `ecogate sim …` driven the way a script drives the binary: arguments through clap, commands
//! on a stdin pipe, events read back line by line from a stdout pipe, and the simulated device
//! exercised over 127.0.0.1 with the drivers crate's own encoders and decoders.

use std::future::Future;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use ecogate::sim_cli::{check_bind, check_loopback_url, SimCommand};
use ecogate_drivers::led::{sign_frames, SignProtocol, SignSettings};
use ecogate_drivers::modbus::tcp_frame;
use ecogate_drivers::scale::{DecoderOptions, ScaleDecoder, ScaleFormat};
use ecogate_drivers::{Command, Mass};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Parser, Debug)]
struct Wrapper {
    #[command(subcommand)]
    sim: SimCommand,
}

fn parse(args: &[&str]) -> Result<SimCommand, clap::Error> {
    let mut v = vec!["ecogate-sim"];
    v.extend_from_slice(args);
    Wrapper::try_parse_from(v).map(|w| w.sim)
}

/// A simulator running on in-memory stdin/stdout pipes.
struct Running {
    out: tokio::io::Lines<BufReader<DuplexStream>>,
    stdin: Option<DuplexStream>,
    task: JoinHandle<anyhow::Result<()>>,
    seen: Vec<String>,
}

const WAIT: Duration = Duration::from_secs(10);

impl Running {
    fn start(args: &[&str]) -> Running {
        let cmd = match parse(args) {
            Ok(c) => c,
            Err(e) => panic!("arguments {args:?} refused: {e}"),
        };
        let (out_w, out_r) = tokio::io::duplex(1 << 16);
        let (in_w, in_r) = tokio::io::duplex(1 << 16);
        let task = tokio::spawn(cmd.run_with(out_w, BufReader::new(in_r)));
        Running {
            out: BufReader::new(out_r).lines(),
            stdin: Some(in_w),
            task,
            seen: Vec::new(),
        }
    }

    async fn line(&mut self) -> Option<String> {
        let l = tokio::time::timeout(WAIT, self.out.next_line())
            .await
            .ok()?
            .ok()??;
        self.seen.push(l.clone());
        Some(l)
    }

    /// The port from the first line, `listening on 127.0.0.1:PORT`.
    async fn addr(&mut self) -> String {
        let l = self.line().await.expect("first line");
        let a = l
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line is `{l}`"));
        assert!(a.starts_with("127.0.0.1:"), "{a}");
        a.to_string()
    }

    /// Reads lines until one contains `needle`; panics with everything seen otherwise.
    async fn expect(&mut self, needle: &str) -> String {
        while let Some(l) = self.line().await {
            if l.contains(needle) {
                return l;
            }
        }
        panic!(
            "no line containing `{needle}`; output was:\n{}",
            self.seen.join("\n")
        );
    }

    /// Reads lines until each needle appeared in some line, in any order.
    async fn expect_all(&mut self, needles: &[&str]) {
        let mut left: Vec<&str> = needles.to_vec();
        while !left.is_empty() {
            let Some(l) = self.line().await else {
                panic!("never saw {left:?}; output was:\n{}", self.seen.join("\n"));
            };
            left.retain(|n| !l.contains(n));
        }
    }

    async fn send(&mut self, line: &str) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        w.flush().await.unwrap();
    }

    /// Closes stdin and returns what the run returned (with `--until-eof` it must end).
    async fn finish(mut self) -> anyhow::Result<()> {
        self.stdin = None;
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("simulator did not stop at end of input")
            .expect("simulator task panicked")
    }
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

// ---------------------------------------------------------------------------------------------
// arguments

#[test]
fn clap_definition_is_consistent() {
    Wrapper::command().debug_assert();
}

#[test]
fn bad_arguments_are_clap_errors_not_panics() {
    for args in [
        &["scale", "--format", "xyz"][..],
        &["scale"],
        &["scale", "--format", "a9", "--repeat"],
        &["scale", "--format", "a9", "--vehicle", "lots"],
        &["scale", "--format", "a9", "--interval-ms", "0"],
        &["io", "--silent", "--late-ms", "5"],
        &["io", "--exception-every", "0"],
        &["io", "--unit", "0"],
        &["io", "--port", "70000"],
        &["led", "--protocol", "morse"],
        &["ups", "--duration", "-1"],
        &["ups", "--duration", "soon"],
        &["camera"],
        &[
            "camera",
            "--url",
            "http://127.0.0.1:1/x",
            "--color",
            "purple",
        ],
        &["teleport"],
        &["camera", "--kind", "hik", "--isapi"],
        &["camera", "--kind", "json"],
        &["led", "--protocol", "modbus"],
    ] {
        assert!(parse(args).is_err(), "{args:?} was accepted");
    }
    assert!(parse(&[
        "io",
        "--rtu-over-tcp",
        "--exception-every",
        "3",
        "--port",
        "0"
    ])
    .is_ok());
    assert!(parse(&[
        "scale",
        "--format",
        "st-gs",
        "--vehicle",
        "32000",
        "--repeat"
    ])
    .is_ok());
    for ok in [
        &["scale", "--format", "modbus-indicator", "--rtu-over-tcp"][..],
        &[
            "led",
            "--protocol",
            "modbus-text",
            "--profile",
            "led/modbus-text",
        ],
        &["camera", "--kind", "hik", "--isapi", "--password", "p"],
        &[
            "camera",
            "--kind",
            "generic-json",
            "--url",
            "http://127.0.0.1:1/x",
        ],
    ] {
        if let Err(e) = parse(ok) {
            panic!("{ok:?} refused: {e}");
        }
    }
}

/// Options that parse but do not fit together stop the simulator before it listens.
#[tokio::test]
async fn mismatched_mode_options_are_refused_at_start() {
    for (args, says) in [
        (
            &["scale", "--format", "a9", "--rtu-over-tcp"][..],
            "modbus-indicator only",
        ),
        (
            &[
                "scale",
                "--format",
                "modbus-indicator",
                "--profile",
                "scale/yaohua-xk3190-a9",
            ],
            "is for driver `scale-stream`",
        ),
        (
            &[
                "scale",
                "--format",
                "modbus-indicator",
                "--profile",
                "scale/no-such",
            ],
            "no profile `scale/no-such`",
        ),
        (
            &["led", "--protocol", "bx", "--profile", "led/modbus-text"],
            "modbus-text only",
        ),
        (
            &["led", "--protocol", "modbus-text", "--no-ack"],
            "p64 / bx only",
        ),
        (
            &["camera", "--kind", "vz", "--isapi", "--password", "p"],
            "--kind hik",
        ),
        (
            &[
                "camera",
                "--url",
                "http://127.0.0.1:1/x",
                "--profile",
                "camera/generic-json",
            ],
            "--kind json only",
        ),
    ] {
        let cmd = parse(args).unwrap();
        let (w, mut r) = tokio::io::duplex(1024);
        let e = within(cmd.run_with(w, BufReader::new(tokio::io::empty())))
            .await
            .unwrap_err();
        assert!(format!("{e:#}").contains(says), "{args:?}: {e:#}");
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert!(!s.contains("listening"), "{args:?}: {s}");
    }
}

#[test]
fn only_loopback_127_0_0_1_may_be_bound() {
    assert!(check_bind("127.0.0.1").is_ok());
    assert!(check_bind("localhost").is_ok());
    for bad in ["0.0.0.0", "192.168.1.10", "::", "::1", "example.com", ""] {
        let e = check_bind(bad).unwrap_err().to_string();
        assert!(e.contains("127.0.0.1 only"), "{bad}: {e}");
    }
}

#[tokio::test]
async fn a_sim_given_a_public_bind_address_refuses_to_start() {
    let cmd = parse(&["ups", "--bind", "0.0.0.0", "--until-eof"]).unwrap();
    let (w, mut r) = tokio::io::duplex(1024);
    let e = within(cmd.run_with(w, BufReader::new(tokio::io::empty())))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("refusing to bind"), "{e}");
    // Nothing claimed to be listening.
    let mut s = String::new();
    r.read_to_string(&mut s).await.unwrap();
    assert!(!s.contains("listening"), "{s}");
}

#[test]
fn camera_urls_must_be_loopback() {
    for ok in [
        "http://127.0.0.1:8080/ingest/vz/cam1",
        "http://127.8.9.10/ingest",
        "http://localhost:1/x",
        "http://LOCALHOST/x",
        "http://[::1]:8080/x",
    ] {
        assert!(check_loopback_url(ok).is_ok(), "{ok}");
    }
    for bad in [
        "http://10.0.0.5/ingest",
        "http://example.com/ingest",
        "http://127.0.0.1.example.com/x",
        "http://[2001:db8::1]/x",
        "ftp://127.0.0.1/x",
        "not a url",
        "http://0.0.0.0:80/x",
    ] {
        assert!(check_loopback_url(bad).is_err(), "{bad} accepted");
    }
}

#[tokio::test]
async fn camera_refuses_a_remote_url_before_posting() {
    let cmd = parse(&["camera", "--url", "http://192.0.2.1/ingest/vz/cam1"]).unwrap();
    let (w, _r) = tokio::io::duplex(1024);
    let e = within(cmd.run_with(w, BufReader::new(tokio::io::empty())))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("loopback"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// led

#[tokio::test]
async fn led_prints_the_texts_the_sign_driver_sends() {
    let mut sim = Running::start(&["led", "--protocol", "p64", "--until-eof"]);
    let addr = sim.addr().await;
    let settings = SignSettings::default();
    let mut frames = sign_frames(
        &settings,
        &Command::SignShow {
            lines: vec!["豫A12345".into(), "请上磅".into()],
        },
    )
    .unwrap();
    frames.extend(
        sign_frames(
            &settings,
            &Command::VoiceSay {
                text: "请减速慢行".into(),
            },
        )
        .unwrap(),
    );
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    for f in &frames {
        sock.write_all(f).await.unwrap();
    }
    // One bad frame: CRC broken.
    let mut bad = frames[0].to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0xFF;
    sock.write_all(&bad).await.unwrap();
    assert!(sim.expect("line 0: 豫A12345").await.contains("line 0"));
    sim.expect("line 1: 请上磅").await;
    sim.expect("voice: 请减速慢行").await;
    sim.expect("rejected 1 frame").await;
    // The card ACKs each good frame (the driver waits for them when wait_ack is on).
    let mut ack = vec![0u8; 64];
    let got = within(sock.read(&mut ack)).await.unwrap();
    assert!(got > 0);
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn led_bx_decodes_dynamic_area_text() {
    let mut sim = Running::start(&["led", "--protocol", "bx", "--until-eof"]);
    let addr = sim.addr().await;
    let settings = SignSettings {
        protocol: SignProtocol::Bx,
        ..SignSettings::default()
    };
    let frames = sign_frames(
        &settings,
        &Command::SignShow {
            lines: vec!["冀B88888 超标".into()],
        },
    )
    .unwrap();
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    for f in &frames {
        sock.write_all(f).await.unwrap();
    }
    sim.expect("area 0: 冀B88888 超标").await;
    sim.finish().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// scale

/// Readings from the sim's stream until `pred` holds for one of them.
async fn read_until(
    sock: &mut TcpStream,
    format: ScaleFormat,
    pred: impl Fn(Mass, Option<bool>) -> bool,
) -> Mass {
    let mut dec = ScaleDecoder::new(DecoderOptions::new(format));
    let mut buf = [0u8; 512];
    let mut out = Vec::new();
    loop {
        let n = within(sock.read(&mut buf)).await.unwrap();
        assert!(n > 0, "scale closed the connection");
        dec.push(&buf[..n], &mut out);
        for r in out.drain(..) {
            if pred(r.mass, r.stable) {
                return r.mass;
            }
        }
    }
}

#[tokio::test]
async fn scale_set_and_load_show_in_every_format() {
    for fmt in ["a9", "a12", "reversed", "st-gs", "toledo"] {
        let format: ScaleFormat = fmt.parse().unwrap();
        let mut sim = Running::start(&[
            "scale",
            "--format",
            fmt,
            "--interval-ms",
            "5",
            "--ramp-ms",
            "100",
            "--until-eof",
        ]);
        let addr = sim.addr().await;
        let mut sock = TcpStream::connect(&addr).await.unwrap();
        sim.send("set 18240").await;
        sim.expect("weight set to 18240 kg").await;
        let m = read_until(&mut sock, format, |m, _| m == Mass::from_kg(18_240)).await;
        assert_eq!(m, Mass::from_kg(18_240), "{fmt}");
        sim.send("load 32000").await;
        sim.expect("load 32000 kg").await;
        // The ramp ends and the bridge settles at the loaded weight.
        sim.expect("steady at 32000 kg").await;
        let m = read_until(&mut sock, format, |m, st| {
            m == Mass::from_kg(32_000) && st != Some(false)
        })
        .await;
        assert_eq!(m, Mass::from_kg(32_000), "{fmt}");
        sim.send("unload").await;
        sim.expect("steady at 0 kg").await;
        read_until(&mut sock, format, |m, _| m == Mass::ZERO).await;
        sim.send("load -5").await;
        sim.expect("error: ").await;
        sim.finish().await.unwrap();
    }
}

#[tokio::test]
async fn scale_vehicle_profile_reaches_the_configured_gross_despite_garbage() {
    let mut sim = Running::start(&[
        "scale",
        "--format",
        "toledo",
        "--vehicle",
        "32000",
        "--ramp-ms",
        "100",
        "--hold-ms",
        "5000",
        "--interval-ms",
        "5",
        "--garbage",
        "--split",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let m = read_until(&mut sock, ScaleFormat::Toledo, |m, st| {
        m == Mass::from_kg(32_000) && st == Some(true)
    })
    .await;
    assert_eq!(m, Mass::from_kg(32_000));
    sim.expect("client connected (1 so far)").await;
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn scale_silent_fault_stops_the_stream() {
    let mut sim = Running::start(&[
        "scale",
        "--format",
        "a9",
        "--interval-ms",
        "5",
        "--silent",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    sim.expect("client connected").await;
    let mut buf = [0u8; 64];
    // Nothing arrives while silent …
    let quiet = tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await;
    assert!(quiet.is_err(), "bytes arrived from a silent scale");
    // … and frames flow once the fault is lifted from stdin.
    sim.send("fault none").await;
    sim.expect("faults: none").await;
    read_until(&mut sock, ScaleFormat::A9, |_, _| true).await;
    sim.finish().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// io

async fn modbus(sock: &mut TcpStream, tid: u16, pdu: &[u8]) -> Vec<u8> {
    sock.write_all(&tcp_frame(tid, 1, pdu)).await.unwrap();
    let mut head = [0u8; 7];
    within(sock.read_exact(&mut head)).await.unwrap();
    let len = u16::from_be_bytes([head[4], head[5]]) as usize;
    let mut pdu = vec![0u8; len - 1];
    within(sock.read_exact(&mut pdu)).await.unwrap();
    assert_eq!(u16::from_be_bytes([head[0], head[1]]), tid);
    pdu
}

#[tokio::test]
async fn io_prints_pulses_and_limit_switches_and_stdin_sets_the_loop() {
    let mut sim = Running::start(&[
        "io",
        "--travel-ms",
        "50",
        "--auto-close-ms",
        "0",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    // Lane empty: DI0 (loop) low, DI2 (limit_closed) high.
    let r = modbus(&mut sock, 1, &[0x02, 0x00, 0x00, 0x00, 0x08]).await;
    assert_eq!(r, vec![0x02, 0x01, 0b0000_0100]);
    sim.send("loop on").await;
    sim.expect("loop occupied").await;
    let r = modbus(&mut sock, 2, &[0x02, 0x00, 0x00, 0x00, 0x08]).await;
    assert_eq!(r[2] & 1, 1, "loop DI not active: {r:?}");
    // Device-timed pulse of the OPEN relay: 3 × 100 ms.
    let r = modbus(&mut sock, 3, &[0x05, 0x02, 0x00, 0x00, 0x03]).await;
    assert_eq!(r, vec![0x05, 0x02, 0x00, 0x00, 0x03]);
    sim.expect_all(&[
        "command: pulse relay 0 (open) for 300 ms",
        "DI 2 (limit_closed) low",
        "DI 1 (limit_open) high",
        "relay 0 (open) off",
    ])
    .await;
    // Close contact via a plain coil write.
    modbus(&mut sock, 4, &[0x05, 0x00, 0x01, 0xFF, 0x00]).await;
    sim.expect_all(&[
        "command: write relay 1 (close) ON",
        "DI 1 (limit_open) low",
        "DI 2 (limit_closed) high",
    ])
    .await;
    sim.send("in 5 on").await;
    sim.expect("DI 5 set high").await;
    sim.send("in 99 on").await;
    sim.expect("error: `99` is not an input number").await;
    sim.send("status").await;
    let st = sim.expect("status: relays").await;
    assert!(st.contains("inputs 10100100"), "{st}");
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn io_loop_nc_inverts_the_contact() {
    let mut sim = Running::start(&["io", "--loop-nc", "--loop-di", "3", "--until-eof"]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let r = modbus(&mut sock, 1, &[0x02, 0x00, 0x03, 0x00, 0x01]).await;
    assert_eq!(
        r,
        vec![0x02, 0x01, 0x01],
        "NC loop should read high while clear"
    );
    sim.send("loop on").await;
    sim.expect("loop occupied (DI 3 low)").await;
    let r = modbus(&mut sock, 2, &[0x02, 0x00, 0x03, 0x00, 0x01]).await;
    assert_eq!(r, vec![0x02, 0x01, 0x00]);
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn io_exception_every_n_requests() {
    let mut sim = Running::start(&["io", "--exception-every", "3", "--until-eof"]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let mut exceptions = Vec::new();
    for tid in 1..=6u16 {
        let r = modbus(&mut sock, tid, &[0x01, 0x00, 0x00, 0x00, 0x08]).await;
        if r[0] & 0x80 != 0 {
            assert_eq!(r, vec![0x81, 0x04]);
            exceptions.push(tid);
        }
    }
    assert_eq!(exceptions, vec![3, 6]);
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn io_rejects_wiring_outside_the_module() {
    let cmd = parse(&["io", "--channels", "4", "--limit-closed-di", "4"]).unwrap();
    let (w, _r) = tokio::io::duplex(1024);
    let e = within(cmd.run_with(w, BufReader::new(tokio::io::empty())))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("--limit-closed-di 4"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// ups

async fn q1(sock: &mut TcpStream) -> ecogate_drivers::ups::Q1Reply {
    sock.write_all(b"Q1\r").await.unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        within(sock.read_exact(&mut b)).await.unwrap();
        line.push(b[0]);
        if b[0] == b'\r' {
            break;
        }
    }
    ecogate_drivers::ups::parse_q1(&line).unwrap()
}

#[tokio::test]
async fn ups_state_follows_stdin_and_polls_are_printed() {
    let mut sim = Running::start(&["ups", "--until-eof"]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let r = q1(&mut sock).await;
    assert!(!r.flags.utility_fail && !r.flags.battery_low);
    sim.expect("Q1 poll #1 (on mains)").await;
    sim.send("battery").await;
    sim.expect("state: on battery").await;
    let r = q1(&mut sock).await;
    assert!(r.flags.utility_fail && !r.flags.battery_low);
    sim.send("battery-low").await;
    sim.expect("state: on battery, battery low").await;
    let r = q1(&mut sock).await;
    assert!(r.flags.utility_fail && r.flags.battery_low);
    sim.send("mains").await;
    sim.expect("state: on mains").await;
    let r = q1(&mut sock).await;
    assert!(!r.flags.utility_fail && !r.flags.battery_low);
    sim.send("fly").await;
    sim.expect("error: unknown command `fly`").await;
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn duration_stops_a_sim_by_itself() {
    // No --until-eof and stdin left open: only --duration can end it.
    let mut sim = Running::start(&["ups", "--duration", "0.2"]);
    sim.addr().await;
    sim.expect("stopping: duration elapsed").await;
    within(sim.task).await.unwrap().unwrap();
}

#[tokio::test]
async fn without_until_eof_end_of_input_does_not_stop_the_sim() {
    let mut sim = Running::start(&["ups", "--duration", "2"]);
    let addr = sim.addr().await;
    sim.stdin = None;
    // Still serving after stdin closed.
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    q1(&mut sock).await;
    sim.expect("stopping: duration elapsed").await;
}

// ---------------------------------------------------------------------------------------------
// camera

/// A one-route HTTP stand-in for the gateway: records request bodies, answers `reply`.
async fn fake_gateway(reply: &'static str) -> (String, JoinHandle<Vec<Vec<u8>>>, u32) {
    fake_gateway_n(reply, 2).await
}

/// [`fake_gateway`] taking `expect` requests.
async fn fake_gateway_n(
    reply: &'static str,
    expect: u32,
) -> (String, JoinHandle<Vec<Vec<u8>>>, u32) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for _ in 0..expect {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client hung up mid-request");
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break buf[end + 4..end + 4 + len].to_vec();
                }
            };
            bodies.push(body);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                reply.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        }
        bodies
    });
    (
        format!("http://127.0.0.1:{port}/ingest/vz/cam1"),
        task,
        expect,
    )
}

#[tokio::test]
async fn camera_posts_vz_reads_and_prints_the_gateway_reply() {
    let reply = r#"{"Response_AlarmInfoPlate":{"info":"ok","serialData":[{"serialChannel":0,"data":"ZAA=","dataLen":2}]}}"#;
    let (url, gw, n) = fake_gateway(reply).await;
    assert_eq!(n, 2);
    let mut sim = Running::start(&[
        "camera",
        "--url",
        &url,
        "--plate",
        "豫A12345",
        "--color",
        "yellow",
        "--duplicate",
        "--image-kb",
        "4",
    ]);
    assert_eq!(sim.line().await.unwrap(), format!("posting to {url}"));
    let first = sim.expect("豫A12345 yellow →").await;
    assert!(
        first.contains("200") && first.contains("serialData"),
        "{first}"
    );
    let dup = sim.expect("(duplicate) →").await;
    assert!(dup.contains("serialData"), "{dup}");
    within(sim.task).await.unwrap().unwrap();
    let bodies = gw.await.unwrap();
    let j: Vec<serde_json::Value> = bodies
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect();
    let pr = &j[0]["AlarmInfoPlate"]["result"]["PlateResult"];
    assert_eq!(pr["license"], "豫A12345");
    assert_eq!(pr["colorType"], 2);
    assert_eq!(pr["isoffline"], 0);
    assert_eq!(pr["imageFileLen"], 4096);
    // The duplicate carries the same id, as a camera's retry does.
    assert_eq!(
        j[0]["AlarmInfoPlate"]["result"]["PlateResult"]["plateid"],
        j[1]["AlarmInfoPlate"]["result"]["PlateResult"]["plateid"]
    );
}

#[tokio::test]
async fn camera_offline_replay_and_stdin_plates() {
    let (url, gw, _) = fake_gateway(r#"{"Response_AlarmInfoPlate":{"info":"ok"}}"#).await;
    let mut sim = Running::start(&[
        "camera",
        "--url",
        &url,
        "--plate",
        "冀B11111",
        "--color",
        "blue",
        "--offline-replay",
        "--until-eof",
    ]);
    sim.expect("冀B11111 blue →").await;
    sim.send("晋C22222 green").await;
    sim.expect("晋C22222 green →").await;
    sim.finish().await.unwrap();
    let bodies = gw.await.unwrap();
    let j: serde_json::Value = serde_json::from_slice(&bodies[1]).unwrap();
    let pr = &j["AlarmInfoPlate"]["result"]["PlateResult"];
    assert_eq!(pr["license"], "晋C22222");
    assert_eq!(pr["colorType"], 5);
    assert_eq!(pr["isoffline"], 1);
    let sec = pr["timeStamp"]["Timeval"]["sec"].as_i64().unwrap();
    assert!(
        sec < chrono::Utc::now().timestamp() - 300,
        "capture time not in the past"
    );
}

#[tokio::test]
async fn camera_reports_failed_posts_as_an_error() {
    // A port with nothing listening.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let url = format!("http://127.0.0.1:{port}/ingest/vz/cam1");
    let mut sim = Running::start(&[
        "camera",
        "--url",
        &url,
        "--count",
        "2",
        "--interval-ms",
        "1",
    ]);
    sim.expect("→ error:").await;
    let e = within(sim.task).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("2 of 2 posts failed"), "{e}");
}

#[tokio::test]
async fn camera_hik_posts_anpr_xml_with_plate_and_colour() {
    let (url, gw, _) = fake_gateway("").await;
    let mut sim = Running::start(&[
        "camera",
        "--url",
        &url,
        "--kind",
        "hik",
        "--plate",
        "沪D12345",
        "--color",
        "white",
        "--count",
        "2",
        "--interval-ms",
        "1",
        "--offline-replay",
    ]);
    sim.expect("沪D12345 white → 200").await;
    within(sim.task).await.unwrap().unwrap();
    let bodies = gw.await.unwrap();
    assert_eq!(bodies.len(), 2);
    let b = String::from_utf8_lossy(&bodies[0]);
    assert!(b.contains("<licensePlate>沪D12345</licensePlate>"), "{b}");
    assert!(b.contains("<plateColor>white</plateColor>"), "{b}");
    assert!(b.contains("filename=\"detectionPicture.jpg\""), "{b}");
    assert!(
        b.contains("<isDataRetransmission>true</isDataRetransmission>"),
        "{b}"
    );
    // Two reads, two event ids.
    let uuid = |s: &str| {
        s.split("<UUID>")
            .nth(1)
            .and_then(|r| r.split("</UUID>").next())
            .map(str::to_string)
    };
    assert_ne!(uuid(&b), uuid(&String::from_utf8_lossy(&bodies[1])));
}

#[tokio::test]
async fn io_rtu_over_tcp_prints_writes_and_ignores_other_units() {
    use ecogate_drivers::modbus::rtu_frame;
    let mut sim = Running::start(&[
        "io",
        "--rtu-over-tcp",
        "--unit",
        "7",
        "--no-barrier",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    // A request for unit 3 on the same line: printed as not ours, never answered.
    sock.write_all(&rtu_frame(3, &[0x05, 0x00, 0x02, 0xFF, 0x00]))
        .await
        .unwrap();
    sim.expect("command for unit 3 (not me, ignored): write relay 2 ON")
        .await;
    sock.write_all(&rtu_frame(7, &[0x05, 0x00, 0x02, 0xFF, 0x00]))
        .await
        .unwrap();
    let mut reply = [0u8; 8];
    within(sock.read_exact(&mut reply)).await.unwrap();
    // The echo of our own request is the first reply on the line: unit 3 got nothing.
    assert_eq!(
        reply.to_vec(),
        rtu_frame(7, &[0x05, 0x00, 0x02, 0xFF, 0x00])
    );
    sim.expect_all(&["command: write relay 2 ON", "relay 2 on"])
        .await;
    sim.finish().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Modbus register indicator and text sign, JSON camera, ISAPI control

use ecogate_drivers::{Address, DeviceEvent, EventKind};
use tokio::sync::mpsc;

/// `[settings]` of a stock profile, read from the checkout's profiles/ directory.
fn profile_settings(name: &str) -> toml::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(format!("{name}.toml"));
    let t: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    t["settings"].clone()
}

fn tcp_address(addr: &str) -> Address {
    format!("tcp://{addr}").parse().unwrap()
}

/// Events until one satisfies `pred`; panics with the events seen if none does in time.
async fn event_where(
    rx: &mut mpsc::Receiver<DeviceEvent>,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> EventKind {
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(e)) if pred(&e.kind) => return e.kind,
            Ok(Some(e)) => seen.push(e.kind),
            _ => panic!("no matching event; saw {seen:?}"),
        }
    }
}

#[tokio::test]
async fn scale_modbus_indicator_registers_follow_a_weight_ramp() {
    use ecogate_drivers::scale::modbus::{self as regs_scale, ModbusScaleSettings};
    let mut sim = Running::start(&[
        "scale",
        "--format",
        "modbus-indicator",
        "--interval-ms",
        "10",
        "--ramp-ms",
        "1500",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    sim.expect("modbus-indicator (scale/modbus-indicator) TCP unit 1")
        .await;
    // The driver as a site would configure it from the same profile, polling faster.
    let mut settings =
        ModbusScaleSettings::from_toml(&profile_settings("scale/modbus-indicator")).unwrap();
    settings.poll_ms = 20;
    settings.max_samples_per_sec = 50;
    settings.stability.hold_ms = 100;
    let (tx, mut rx) = mpsc::channel(4096);
    let _h = regs_scale::spawn("scale1", &tcp_address(&addr), &settings, tx).unwrap();
    sim.expect("client connected (1 so far)").await;
    sim.send("load 32000").await;
    sim.expect("load 32000 kg over 1500 ms").await;
    let mut ramp = Vec::new();
    let stable = loop {
        match event_where(&mut rx, |k| matches!(k, EventKind::Weight { .. })).await {
            EventKind::Weight {
                mass, stable: true, ..
            } => break mass,
            EventKind::Weight { mass, .. } => ramp.push(mass),
            _ => unreachable!(),
        }
    };
    assert_eq!(stable, Mass::from_kg(32_000));
    // On its way up the weight passed through values between empty and loaded.
    let between: Vec<Mass> = ramp
        .iter()
        .copied()
        .filter(|m| *m > Mass::from_kg(1_000) && *m < Mass::from_kg(31_000))
        .collect();
    assert!(between.len() >= 2, "no ramp seen: {ramp:?}");
    assert!(between.windows(2).any(|w| w[0] != w[1]), "{between:?}");
    // The words themselves: i32 high word first at register 0, stable bit 0 of register 2.
    sim.expect("steady at 32000 kg").await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let r = modbus(&mut sock, 1, &[0x03, 0x00, 0x00, 0x00, 0x03]).await;
    assert_eq!(r, vec![0x03, 6, 0x00, 0x00, 0x7D, 0x00, 0x00, 0x01]);
    sim.send("registers").await;
    sim.expect("registers 0: 0000 7D00 0001").await;
    // Silence takes the indicator offline for the driver; lifting it brings it back.
    sim.send("fault silent").await;
    sim.expect("faults: silent=true").await;
    event_where(&mut rx, |k| {
        matches!(k, EventKind::Link { online: false, .. })
    })
    .await;
    sim.send("fault none").await;
    sim.expect("faults: none").await;
    event_where(&mut rx, |k| {
        matches!(k, EventKind::Link { online: true, .. })
    })
    .await;
    sim.finish().await.unwrap();
}

/// One RTU request to unit 1 and its reply (an exception or a register read).
async fn rtu(sock: &mut TcpStream, pdu: &[u8]) -> Vec<u8> {
    use ecogate_drivers::modbus::rtu_frame;
    sock.write_all(&rtu_frame(1, pdu)).await.unwrap();
    let mut head = [0u8; 3];
    within(sock.read_exact(&mut head)).await.unwrap();
    let rest = if head[1] & 0x80 != 0 {
        2
    } else {
        head[2] as usize + 2
    };
    let mut tail = vec![0u8; rest];
    within(sock.read_exact(&mut tail)).await.unwrap();
    let mut frame = head.to_vec();
    frame.extend_from_slice(&tail);
    let n = frame.len();
    assert_eq!(
        ecogate_drivers::modbus::crc16(&frame[..n - 2]).to_le_bytes(),
        frame[n - 2..],
        "bad CRC: {frame:02X?}"
    );
    frame[1..n - 2].to_vec()
}

#[tokio::test]
async fn scale_modbus_indicator_over_rtu_takes_faults_from_stdin() {
    let mut sim = Running::start(&[
        "scale",
        "--format",
        "modbus-indicator",
        "--rtu-over-tcp",
        "--interval-ms",
        "10",
        "--split",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    sim.expect("RTU over TCP").await;
    sim.send("set 18240").await;
    sim.expect("weight set to 18240 kg").await;
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    // Replies written in pieces still make whole frames; the weight is there at once.
    let r = rtu(&mut sock, &[0x03, 0x00, 0x00, 0x00, 0x03]).await;
    assert_eq!(r, vec![0x03, 6, 0x00, 0x00, 0x47, 0x40, 0x00, 0x01]);
    sim.send("fault exception-every 1").await;
    sim.expect("exception 04 on every 1. request").await;
    assert_eq!(
        rtu(&mut sock, &[0x03, 0x00, 0x00, 0x00, 0x02]).await,
        vec![0x83, 0x04]
    );
    sim.send("fault exception-every off").await;
    sim.expect("faults: silent=false delay=0ms garbage=0 split=true")
        .await;
    assert_eq!(
        rtu(&mut sock, &[0x04, 0x00, 0x02, 0x00, 0x01]).await,
        vec![0x04, 2, 0x00, 0x01]
    );
    sim.send("fault silent on").await;
    sim.expect("faults: silent=true").await;
    sock.write_all(&ecogate_drivers::modbus::rtu_frame(
        1,
        &[0x03, 0x00, 0x00, 0x00, 0x02],
    ))
    .await
    .unwrap();
    let mut buf = [0u8; 16];
    let quiet = tokio::time::timeout(Duration::from_millis(200), sock.read(&mut buf)).await;
    assert!(quiet.is_err(), "a silent indicator answered");
    sim.send("disconnect").await;
    sim.expect("dropped every connection").await;
    let n = within(sock.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "connection still open after disconnect");
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn led_modbus_text_shows_the_gbk_text_the_sign_driver_writes() {
    use ecogate_drivers::led::modbus::{self as regs_sign, ModbusSignSettings};
    let mut sim = Running::start(&["led", "--protocol", "modbus-text", "--until-eof"]);
    let addr = sim.addr().await;
    sim.expect("sign protocol modbus-text (led/modbus-text) TCP unit 1")
        .await;
    let settings = ModbusSignSettings::from_toml(&profile_settings("led/modbus-text")).unwrap();
    let (tx, mut rx) = mpsc::channel(64);
    let h = regs_sign::spawn("sign1", &tcp_address(&addr), &settings, tx).unwrap();
    h.commands
        .send(Command::SignShow {
            lines: vec!["豫A12345".into(), "请上磅".into()],
        })
        .await
        .unwrap();
    sim.expect_all(&[
        "line 1: 豫A12345",
        "line 2: 请上磅",
        "line 3: (blank)",
        "line 4: (blank)",
    ])
    .await;
    h.commands
        .send(Command::VoiceSay {
            text: "请减速慢行".into(),
        })
        .await
        .unwrap();
    sim.expect("voice: 请减速慢行").await;
    event_where(&mut rx, |k| {
        matches!(k, EventKind::Link { online: true, .. })
    })
    .await;
    // The first line block holds the GBK bytes, high byte first, zero-padded.
    let gbk = ecogate_drivers::led::to_gbk("豫A12345", ecogate_drivers::led::Unencodable::Reject)
        .unwrap();
    let mut sock = TcpStream::connect(&addr).await.unwrap();
    let r = modbus(&mut sock, 1, &[0x03, 0x00, 0x00, 0x00, 0x08]).await;
    let mut want = gbk.clone();
    want.resize(16, 0);
    assert_eq!(&r[2..], &want[..]);
    // A silent sign makes the driver's writes fail; after `fault none` they land again.
    sim.send("fault silent").await;
    sim.expect("faults: silent=true").await;
    h.commands
        .send(Command::SignShow {
            lines: vec!["禁止通行".into()],
        })
        .await
        .unwrap();
    event_where(&mut rx, |k| {
        matches!(k, EventKind::Link { online: false, .. })
    })
    .await;
    sim.send("fault none").await;
    sim.expect("faults: none").await;
    h.commands
        .send(Command::SignShow {
            lines: vec!["冀B88888".into(), "超标".into()],
        })
        .await
        .unwrap();
    sim.expect_all(&["line 1: 冀B88888", "line 2: 超标"]).await;
    event_where(&mut rx, |k| {
        matches!(k, EventKind::Link { online: true, .. })
    })
    .await;
    sim.finish().await.unwrap();
}

#[tokio::test]
async fn camera_json_push_parses_with_the_generic_profile() {
    use ecogate_drivers::camera::generic::{self, JsonSettings};
    use ecogate_drivers::PlateColor;
    let (vz_url, gw, _) = fake_gateway_n(r#"{"Response":{"StatusCode":0}}"#, 4).await;
    let url = vz_url.replace("/ingest/vz/", "/ingest/json/");
    let mut sim = Running::start(&[
        "camera",
        "--kind",
        "json",
        "--url",
        &url,
        "--plate",
        "冀B12345",
        "--color",
        "green",
        "--image-kb",
        "2",
        "--until-eof",
    ]);
    assert_eq!(sim.line().await.unwrap(), format!("posting to {url}"));
    sim.expect("冀B12345 green → 200").await;
    sim.send("fault duplicate on").await;
    sim.expect("faults: duplicate=true offline=false").await;
    sim.send("晋C22222 blue").await;
    sim.expect("晋C22222 blue →").await;
    sim.expect("晋C22222 blue (duplicate) →").await;
    sim.send("fault none").await;
    sim.send("fault offline").await;
    sim.expect("faults: duplicate=false offline=true").await;
    sim.send("沪D33333").await;
    sim.expect("沪D33333 green →").await;
    sim.send("fault teleport").await;
    sim.expect("error: `fault teleport`").await;
    sim.finish().await.unwrap();

    let settings: JsonSettings = profile_settings("camera/generic-json").try_into().unwrap();
    let bodies = gw.await.unwrap();
    let reads: Vec<_> = bodies
        .iter()
        .map(|b| generic::parse(b, &settings).unwrap())
        .collect();
    assert_eq!(reads[0].plate, "冀B12345");
    assert_eq!(reads[0].color, PlateColor::Green);
    assert_eq!(reads[0].images.len(), 2, "scene and plate image");
    assert_eq!(reads[0].images[0].jpeg.len(), 2048);
    assert_eq!(reads[1].plate, "晋C22222");
    assert_eq!(reads[1].color, PlateColor::Blue);
    // The duplicate repeats the read's id; the next read has another.
    assert_eq!(reads[1].source_id, reads[2].source_id);
    assert_ne!(reads[0].source_id, reads[1].source_id);
    assert_ne!(reads[2].source_id, reads[3].source_id);
    let now = chrono::Utc::now();
    let live = reads[0].captured_at.unwrap();
    assert!((now - live).num_seconds().abs() < 120, "{live}");
    let replay = reads[3].captured_at.unwrap();
    assert!(now - replay > chrono::Duration::minutes(5), "{replay}");
}

#[tokio::test]
async fn camera_isapi_control_demands_the_right_digest_password() {
    use ecogate_drivers::camera::hik::{HikControl, HikSettings};
    let mut sim = Running::start(&[
        "camera",
        "--kind",
        "hik",
        "--isapi",
        "--password",
        "Hik12345",
        "--until-eof",
    ]);
    let addr = sim.addr().await;
    sim.expect("no --url: control only").await;
    let dir = tempfile::tempdir().unwrap();
    let control = |pass: &str, timeout_ms: u64| {
        let file = dir.path().join(format!("pw-{pass}"));
        std::fs::write(&file, pass).unwrap();
        let settings = HikSettings {
            control: Some(format!("http://{addr}")),
            password_file: Some(file.to_string_lossy().into_owned()),
            request_timeout_ms: timeout_ms,
            ..HikSettings::default()
        };
        std::sync::Arc::new(HikControl::new(&settings).unwrap().unwrap())
    };
    let wrong = control("wrong", 3000);
    let e = wrong.barrier("open").await.unwrap_err();
    assert!(e.contains("401"), "{e}");
    sim.expect("barrierGate: barrier open → 401").await;
    let right = control("Hik12345", 3000);
    right.barrier("open").await.unwrap();
    sim.expect("ISAPI PUT /ISAPI/Parking/channels/1/barrierGate: barrier open")
        .await;
    right.output(1, true).await.unwrap();
    sim.expect("ISAPI PUT /ISAPI/System/IO/outputs/1/trigger: output 1 high")
        .await;
    // The camera refuses (statusCode 4): the driver reports it instead of taking it for done.
    sim.send("fault refuse on").await;
    sim.expect("isapi silent=false delay=0ms refuse=true").await;
    let e = right.barrier("close").await.unwrap_err();
    assert!(e.contains("refused"), "{e}");
    sim.expect("barrier close → refused (statusCode 4)").await;
    // A silent camera: the client's timeout ends the request.
    sim.send("fault none").await;
    sim.send("fault silent").await;
    sim.expect("isapi silent=true").await;
    let quick = control("Hik12345", 300);
    assert!(quick.barrier("open").await.is_err());
    sim.send("fault none").await;
    sim.send("status").await;
    let st = sim.expect("status: 0 posted").await;
    assert!(st.contains("isapi 2 accepted, 1 refused"), "{st}");
    sim.finish().await.unwrap();
}
