//! The `serial://` transport on a real (pseudo-)terminal: the scale driver opens the pty by
//! path, exactly as it would open /dev/ttyS1.

#![cfg(unix)]

use std::time::Duration;

use ecogate_drivers::scale::{self, EncodeInput, ScaleFormat, ScaleSettings, StabilitySettings};
use ecogate_drivers::{Address, EventKind, Mass};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_serial::SerialPort;

#[tokio::test]
async fn scale_over_a_pty() {
    let (mut master, slave) = tokio_serial::SerialStream::pair().expect("pty pair");
    let path = slave.name().expect("pty slave has a path");
    let address: Address = format!("serial://{path}?baud=9600").parse().unwrap();
    let settings = ScaleSettings {
        format: ScaleFormat::A9,
        stability: StabilitySettings {
            hold_ms: 100,
            ..StabilitySettings::default()
        },
        ..ScaleSettings::default()
    };
    let (tx, mut rx) = mpsc::channel(64);
    let _h = scale::spawn("scale1", &address, &settings, tx).unwrap();

    let frame = scale::encode(
        ScaleFormat::A9,
        &EncodeInput::kg(Mass::from_kg(21_560), true),
    );
    let writer = tokio::spawn(async move {
        for _ in 0..200 {
            if master.write_all(&frame).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut stable = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stable.is_none() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) => {
                if let EventKind::Weight {
                    mass, stable: true, ..
                } = ev.kind
                {
                    stable = Some(mass);
                }
            }
            _ => break,
        }
    }
    writer.abort();
    drop(slave);
    assert_eq!(stable, Some(Mass::from_kg(21_560)));
}
