//! Sign driver against the LED simulator on loopback: what reaches the wire, GBK handling,
//! BX ACKs.

use std::net::SocketAddr;
use std::time::Duration;

use ecogate_drivers::led::p64::P64Message;
use ecogate_drivers::led::{self, ShowMode, SignProtocol, SignSettings, Unencodable};
use ecogate_drivers::sim::led::{LedSim, LedSimConfig, SignReceived};
use ecogate_drivers::sim::stream_faults::Faults;
use ecogate_drivers::{Address, Command, DeviceEvent, EventKind};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(10);

fn addr(a: SocketAddr) -> Address {
    format!("serial-over-tcp://{a}").parse().unwrap()
}

fn show(lines: &[&str]) -> Command {
    Command::SignShow {
        lines: lines.iter().map(|s| s.to_string()).collect(),
    }
}

/// Sends a harmless marker and waits for it, so everything sent before it has been processed.
async fn barrier(sim: &LedSim, cmds: &mpsc::Sender<Command>, frames_before: usize) {
    cmds.send(Command::VoiceSay {
        text: "欢迎光临".into(),
    })
    .await
    .unwrap();
    let got = sim.wait_frames(frames_before + 1, LIMIT).await;
    assert_eq!(got.len(), frames_before + 1, "{got:?}");
}

#[tokio::test]
async fn unencodable_text_never_reaches_the_wire() {
    let (sim, a) = LedSim::bind("127.0.0.1:0", LedSimConfig::new(SignProtocol::P64))
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel::<DeviceEvent>(64);
    let h = led::spawn("led1", &addr(a), &SignSettings::default(), tx).unwrap();
    h.commands
        .send(show(&["粤A12345", "欢迎😀"]))
        .await
        .unwrap();
    h.commands
        .send(Command::VoiceSay {
            text: "请𠀀入场".into(),
        })
        .await
        .unwrap();
    barrier(&sim, &h.commands, 0).await;

    let wire = sim.received_bytes();
    assert!(
        !wire.windows(2).any(|w| w == b"&#"),
        "HTML reference on the wire"
    );
    // Only the marker went out: the rejected commands sent nothing at all, not even line 1.
    assert_eq!(
        sim.texts(),
        vec!["欢迎光临".to_string()],
        "{:?}",
        sim.received()
    );
    let health = h.health.borrow().clone();
    assert_eq!(health.errors, 2, "{health:?}");
    assert!(health.last_error.unwrap().contains("GBK"));
}

#[tokio::test]
async fn unencodable_text_is_replaced_when_the_profile_says_so() {
    let (sim, a) = LedSim::bind("127.0.0.1:0", LedSimConfig::new(SignProtocol::P64))
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel::<DeviceEvent>(64);
    let s = SignSettings {
        unencodable: Unencodable::Replace,
        show_mode: ShowMode::Multi,
        ..SignSettings::default()
    };
    let h = led::spawn("led1", &addr(a), &s, tx).unwrap();
    h.commands
        .send(show(&["粤A12345", "欢迎😀𠀀"]))
        .await
        .unwrap();
    let got = sim.wait_frames(1, LIMIT).await;
    assert_eq!(
        got.iter()
            .map(|r| match r {
                SignReceived::P64 { message, .. } => message.clone(),
                other => panic!("{other:?}"),
            })
            .collect::<Vec<_>>(),
        vec![P64Message::MultiLine {
            lines: vec!["粤A12345".into(), "欢迎??".into()],
            voice: String::new()
        }]
    );
    let wire = sim.received_bytes();
    assert!(!wire.windows(2).any(|w| w == b"&#"));
}

#[tokio::test]
async fn long_lines_are_cut_on_a_character_boundary() {
    let (sim, a) = LedSim::bind("127.0.0.1:0", LedSimConfig::new(SignProtocol::P64))
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel::<DeviceEvent>(64);
    let s = SignSettings {
        line_max_bytes: 6, // 粤A请 is 5 bytes; 上 would need 7
        ..SignSettings::default()
    };
    let h = led::spawn("led1", &addr(a), &s, tx).unwrap();
    h.commands.send(show(&["粤A请上磅称重"])).await.unwrap();
    let got = sim.wait_frames(1, LIMIT).await;
    assert_eq!(got[0].texts(), vec!["粤A请".to_string()]);
}

#[tokio::test]
async fn p64_ack_is_awaited_when_configured_and_silence_is_an_error() {
    let (sim, a) = LedSim::bind("127.0.0.1:0", LedSimConfig::new(SignProtocol::P64))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel::<DeviceEvent>(64);
    let s = SignSettings {
        wait_ack: true,
        ack_timeout_ms: 1000,
        ..SignSettings::default()
    };
    let h = led::spawn("led1", &addr(a), &s, tx).unwrap();
    h.commands.send(show(&["请上磅"])).await.unwrap();
    let ev = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev.kind, EventKind::Link { online: true, .. }),
        "{ev:?}"
    );
    assert!(h.health.borrow().rtt.is_some());

    sim.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    h.commands.send(show(&["禁止通行"])).await.unwrap();
    let ev = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    match ev.kind {
        EventKind::Link {
            online: false,
            error,
        } => assert!(error.unwrap().contains("acknowledge"), "no-ACK error"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bx_text_is_acked_and_a_missing_ack_is_an_error() {
    let (sim, a) = LedSim::bind("127.0.0.1:0", LedSimConfig::new(SignProtocol::Bx))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel::<DeviceEvent>(64);
    let s = SignSettings {
        protocol: SignProtocol::Bx,
        ack_timeout_ms: 1000,
        ..SignSettings::default()
    };
    let h = led::spawn("led1", &addr(a), &s, tx).unwrap();
    h.commands
        .send(show(&["粤A12345", "请上磅"]))
        .await
        .unwrap();
    let ev = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev.kind, EventKind::Link { online: true, .. }),
        "{ev:?}"
    );
    let got = sim.received();
    assert!(
        matches!(&got[..], [SignReceived::BxText { area: 0, text, .. }] if text == "粤A12345\n请上磅"),
        "{got:?}"
    );

    // Split and garbage-laden ACKs are still ACKs.
    sim.set_faults(Faults {
        split: true,
        garbage: 9,
        ..Faults::default()
    });
    let errors = h.health.borrow().errors;
    h.commands.send(show(&["称重完成"])).await.unwrap();
    assert_eq!(sim.wait_frames(2, LIMIT).await.len(), 2);
    // A missing ACK would show as a Link-offline event once the ACK timeout has passed.
    let quiet = tokio::time::timeout(Duration::from_millis(2000), rx.recv()).await;
    assert!(quiet.is_err(), "{quiet:?}");
    assert!(h.health.borrow().online);
    assert_eq!(h.health.borrow().errors, errors);

    sim.set_faults(Faults {
        silent: true,
        ..Faults::default()
    });
    h.commands.send(show(&["禁止通行"])).await.unwrap();
    let ev = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev.kind, EventKind::Link { online: false, .. }),
        "{ev:?}"
    );
    assert!(!h.health.borrow().online);

    // Back to normal: the next command reconnects and succeeds.
    sim.set_faults(Faults::default());
    tokio::time::sleep(Duration::from_millis(600)).await; // past the reconnect back-off
    h.commands.send(show(&["欢迎"])).await.unwrap();
    let ev = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ev.kind, EventKind::Link { online: true, .. }),
        "{ev:?}"
    );
    assert!(sim.connections() >= 2);
}

#[tokio::test]
async fn bx_refusal_is_reported() {
    let cfg = LedSimConfig {
        bx_nack: Some(0x07),
        ..LedSimConfig::new(SignProtocol::Bx)
    };
    let (_sim, a) = LedSim::bind("127.0.0.1:0", cfg).await.unwrap();
    let (tx, mut rx) = mpsc::channel::<DeviceEvent>(64);
    let s = SignSettings {
        protocol: SignProtocol::Bx,
        ..SignSettings::default()
    };
    let h = led::spawn("led1", &addr(a), &s, tx).unwrap();
    h.commands.send(show(&["欢迎"])).await.unwrap();
    let mut health = h.health.clone();
    let health = tokio::time::timeout(LIMIT, health.wait_for(|x| x.last_error.is_some()))
        .await
        .unwrap()
        .unwrap()
        .clone();
    assert!(rx.try_recv().is_err(), "never online, so no Link event");
    assert!(
        health.last_error.as_deref().unwrap_or("").contains("0x07"),
        "{health:?}"
    );
}

#[tokio::test]
async fn serial_data_passthrough_frames_match_what_the_driver_sends() {
    let (sim, a) = LedSim::bind("127.0.0.1:0", LedSimConfig::new(SignProtocol::P64))
        .await
        .unwrap();
    let (tx, _rx) = mpsc::channel::<DeviceEvent>(64);
    let s = SignSettings::default();
    let cmd = Command::VoiceSay {
        text: "欢迎光临".into(),
    };
    let frames = led::sign_frames(&s, &cmd).unwrap();
    let mut live = sim.subscribe();
    let h = led::spawn("led1", &addr(a), &s, tx).unwrap();
    h.commands.send(cmd).await.unwrap();
    let got = tokio::time::timeout(LIMIT, live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.texts(), vec!["欢迎光临".to_string()]);
    assert_eq!(sim.received_bytes(), frames.concat());
}

/// Bytes left in a local serial port from before the driver opened it (here a refusal of an
/// earlier text) are cleared on open: the answer the driver waits for is the card's reply to
/// its own frame.
#[cfg(unix)]
#[tokio::test]
async fn stale_bytes_in_a_serial_port_are_not_taken_for_the_ack() {
    use ecogate_drivers::led::p64::{self, P64Decoder};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_serial::SerialPort;

    let (mut master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("pty slave has a path");
    // A card's "refused" reply (data byte 1) to a temporary-text frame.
    let stale = p64::frame(0, p64::CMD_TEMP_TEXT, &[1]).unwrap();
    master.write_all(&stale).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while slave.bytes_to_read().unwrap_or(0) < stale.len() as u32 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stale bytes never reached the port"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let address: Address = format!("serial://{path}?baud=9600").parse().unwrap();
    let s = SignSettings {
        wait_ack: true,
        ack_timeout_ms: 2000,
        ..SignSettings::default()
    };
    let (tx, mut rx) = mpsc::channel::<DeviceEvent>(64);
    let h = led::spawn("led1", &address, &s, tx).unwrap();
    // The card ACKs every frame and remembers the texts.
    let (texts_tx, mut texts) = mpsc::channel::<String>(16);
    let card = tokio::spawn(async move {
        let mut dec = P64Decoder::default();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            let n = match master.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            dec.push(&buf[..n], &mut out);
            for (f, _) in out.drain(..) {
                if master.write_all(&p64::ack(f.da, f.cmd)).await.is_err() {
                    return;
                }
                for t in p64::decode_message(&f).texts() {
                    let _ = texts_tx.send(t).await;
                }
            }
        }
    });
    h.commands.send(show(&["请上磅"])).await.unwrap();
    // A refused frame leaves a never-online sign without a Link event: only the error shows.
    let ev = tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no Link event; last error: {:?}",
                h.health.borrow().last_error
            )
        })
        .unwrap();
    let got = tokio::time::timeout(LIMIT, texts.recv()).await.unwrap();
    card.abort();
    drop(slave);
    assert!(
        matches!(ev.kind, EventKind::Link { online: true, .. }),
        "the stale refusal was taken for the answer: {ev:?}"
    );
    assert_eq!(got.as_deref(), Some("请上磅"));
}
