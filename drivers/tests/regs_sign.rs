//! `sign-modbus` against the register simulator on 127.0.0.1 (ephemeral ports).

use std::time::Duration;

use ecogate_drivers::led::modbus::{
    self, CommitRegister, ModbusSignSettings, TextBlock, WriteFunction,
};
use ecogate_drivers::led::Unencodable;
use ecogate_drivers::sim::modbus::{Fault, Framing};
use ecogate_drivers::sim::modbus_regs::{RegSim, RegSimConfig};
use ecogate_drivers::{Command, DeviceEvent, DeviceHandle, EventKind};
use tokio::sync::mpsc;

const COMMIT: u16 = 300;
const VOICE: u16 = 200;

fn settings() -> ModbusSignSettings {
    ModbusSignSettings {
        timeout_ms: 150,
        lines: vec![
            TextBlock {
                register: 0,
                max_bytes: 16,
            },
            TextBlock {
                register: 20,
                max_bytes: 11,
            },
        ],
        commit: Some(CommitRegister {
            register: COMMIT,
            value: 1,
        }),
        voice: Some(TextBlock {
            register: VOICE,
            max_bytes: 64,
        }),
        voice_commit: Some(CommitRegister {
            register: VOICE + 40,
            value: 3,
        }),
        ..ModbusSignSettings::default()
    }
}

async fn start(
    framing: Framing,
    s: &ModbusSignSettings,
) -> (RegSim, DeviceHandle, mpsc::Receiver<DeviceEvent>) {
    let sim = RegSim::start(framing, RegSimConfig::default())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(64);
    let h = modbus::spawn("sign1", &sim.address(), s, tx).unwrap();
    (sim, h, rx)
}

/// Waits until the simulator has taken a write to `register` (commands run in order, so every
/// command sent before it has been handled).
async fn wait_write(sim: &RegSim, register: u16) {
    for _ in 0..500 {
        if sim.writes().iter().any(|w| w.register == register) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no write to register {register}: {:?}", sim.writes());
}

fn show(lines: &[&str]) -> Command {
    Command::SignShow {
        lines: lines.iter().map(|l| l.to_string()).collect(),
    }
}

#[tokio::test]
async fn lines_land_in_their_blocks_then_commit() {
    let (sim, h, _rx) = start(Framing::Tcp, &settings()).await;
    // Stale text from before: a one-line show must blank line 2.
    sim.set_registers(20, &[0x4142; 6]);
    h.commands.send(show(&["粤A12345"])).await.unwrap();
    wait_write(&sim, COMMIT).await;
    assert_eq!(sim.block_text(0, 16), "粤A12345");
    // 粤 = D4 C1, high byte first.
    assert_eq!(sim.registers(0, 2), vec![0xD4C1, 0x4131]);
    assert_eq!(sim.block_text(20, 11), "");
    let w = sim.writes();
    assert_eq!(
        w.iter().map(|w| w.register).collect::<Vec<_>>(),
        vec![0, 20, COMMIT]
    );
    assert_eq!(w[0].function, 0x10);
    assert_eq!(w[1].values.len(), 6);
    assert_eq!(w.last().map(|w| w.values.clone()), Some(vec![1]));

    h.commands
        .send(Command::VoiceSay {
            text: "欢迎光临,请上磅".into(),
        })
        .await
        .unwrap();
    wait_write(&sim, VOICE + 40).await;
    assert_eq!(sim.block_text(VOICE, 64), "欢迎光临,请上磅");
    assert_eq!(sim.register(VOICE + 40), 3);
}

#[tokio::test]
async fn long_lines_are_cut_on_a_gbk_boundary() {
    let (sim, h, _rx) = start(Framing::RtuOverTcp, &settings()).await;
    // Line 2 holds 11 bytes: "A" + 5 hanzi = 11 fits; "AB" + 5 hanzi = 12 must drop the 5th
    // hanzi entirely, never keep its first byte.
    h.commands
        .send(show(&["请上磅称重,谢谢配合", "AB请上磅称重"]))
        .await
        .unwrap();
    wait_write(&sim, COMMIT).await;
    assert_eq!(sim.block_text(0, 16), "请上磅称重,谢谢");
    assert_eq!(sim.block_text(20, 11), "AB请上磅称");
    let bytes = sim.block_bytes(20, 12);
    assert_eq!(bytes.len(), 10, "{bytes:02X?}");
    assert!(!sim.block_text(20, 12).contains('\u{FFFD}'));
}

#[tokio::test]
async fn unencodable_text_never_reaches_the_registers() {
    // Reject: the whole command is refused, nothing is written (not even the commit).
    let (sim, h, _rx) = start(Framing::Tcp, &settings()).await;
    for bad in [
        show(&["粤A12345", "欢迎😀"]),
        show(&["𠀀"]),
        Command::VoiceSay {
            text: "请上磅😀".into(),
        },
    ] {
        h.commands.send(bad).await.unwrap();
    }
    h.commands
        .send(Command::VoiceSay { text: "ok".into() })
        .await
        .unwrap();
    wait_write(&sim, VOICE + 40).await;
    let w = sim.writes();
    assert_eq!(
        w.iter().map(|w| w.register).collect::<Vec<_>>(),
        vec![VOICE, VOICE + 40],
        "{w:?}"
    );
    assert_eq!(sim.block_text(0, 16), "");

    // Replace: `?` in place of each unencodable character, never `&#…;`.
    let s = ModbusSignSettings {
        unencodable: Unencodable::Replace,
        ..settings()
    };
    let (sim, h, _rx) = start(Framing::Tcp, &s).await;
    h.commands.send(show(&["欢迎😀", "𠀀A"])).await.unwrap();
    wait_write(&sim, COMMIT).await;
    assert_eq!(sim.block_text(0, 16), "欢迎?");
    assert_eq!(sim.block_text(20, 11), "?A");
    for start in [0u16, 20] {
        let b = sim.block_bytes(start, 16);
        assert!(!b.windows(2).any(|w| w == b"&#"), "{b:02X?}");
    }
}

#[tokio::test]
async fn single_register_writes_for_controllers_without_fc16() {
    let s = ModbusSignSettings {
        write_function: WriteFunction::Single,
        ..settings()
    };
    let (sim, h, _rx) = start(Framing::RtuOverTcp, &s).await;
    h.commands.send(show(&["A1", "请"])).await.unwrap();
    wait_write(&sim, COMMIT).await;
    let w = sim.writes();
    assert!(w.iter().all(|w| w.function == 0x06), "{w:?}");
    // 8 + 6 registers of text, then the commit.
    assert_eq!(w.len(), 15);
    assert_eq!(sim.block_text(0, 16), "A1");
    assert_eq!(sim.block_text(20, 11), "请");
}

async fn link(rx: &mut mpsc::Receiver<DeviceEvent>) -> Option<bool> {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .ok()??;
        if let EventKind::Link { online, .. } = ev.kind {
            return Some(online);
        }
    }
}

#[tokio::test]
async fn silent_sign_goes_offline_and_back_online() {
    let (sim, h, mut rx) = start(Framing::Tcp, &settings()).await;
    h.commands.send(show(&["1"])).await.unwrap();
    assert_eq!(link(&mut rx).await, Some(true));
    sim.set_fault(Fault::Silent);
    h.commands.send(show(&["2"])).await.unwrap();
    assert_eq!(link(&mut rx).await, Some(false));
    assert!(!h.health.borrow().online);
    sim.set_fault(Fault::None);
    h.commands.send(show(&["3"])).await.unwrap();
    assert_eq!(link(&mut rx).await, Some(true));
    assert_eq!(sim.block_text(0, 16), "3");
}
