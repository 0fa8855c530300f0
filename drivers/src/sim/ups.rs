//! Megatec Q1 UPS simulator: answers `Q1`, `F` and `I` over TCP with a settable state
//! (on battery, battery low, voltages) and fault injection. Unknown commands are echoed back,
//! as real units do.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::stream_faults::{lock, write_frame, Faults, Rng, SimControl};
use crate::ups::{encode_q1, Q1Flags, Q1Reply};

struct Shared {
    state: Mutex<Q1Reply>,
    polls: Mutex<u64>,
    control: Arc<SimControl>,
}

pub struct UpsSim {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for UpsSim {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.control.disconnect_all();
    }
}

/// A healthy line-interactive UPS on mains.
pub fn on_mains() -> Q1Reply {
    Q1Reply {
        input_voltage: Some(226.0),
        input_fault_voltage: Some(195.0),
        output_voltage: Some(226.0),
        load_percent: Some(14.0),
        frequency_hz: Some(49.9),
        battery_voltage: Some(27.5),
        temperature_c: Some(30.0),
        flags: Q1Flags {
            standby_type: true,
            ..Default::default()
        },
    }
}

impl UpsSim {
    pub async fn bind(addr: &str) -> std::io::Result<(UpsSim, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(on_mains()),
            polls: Mutex::new(0),
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
        Ok((UpsSim { shared, task }, local))
    }

    /// Mains lost (b7) — and the input voltage drops to 0 as on a real unit.
    pub fn set_on_battery(&self, on: bool) {
        let mut s = lock(&self.shared.state);
        s.flags.utility_fail = on;
        s.input_voltage = Some(if on { 0.0 } else { 226.0 });
    }

    pub fn set_battery_low(&self, low: bool) {
        lock(&self.shared.state).flags.battery_low = low;
    }

    pub fn set_state(&self, r: Q1Reply) {
        *lock(&self.shared.state) = r;
    }

    /// Q1 requests answered or ignored so far.
    pub fn polls(&self) -> u64 {
        *lock(&self.shared.polls)
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
    let mut rng = Rng::new(0x0B5 ^ n);
    let mut gone = shared.control.subscribe();
    let mut line = Vec::new();
    let mut buf = [0u8; 128];
    loop {
        let n = tokio::select! {
            _ = gone.changed() => return,
            r = sock.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        for &b in &buf[..n] {
            if b != b'\r' {
                line.push(b);
                if line.len() > 64 {
                    line.clear();
                }
                continue;
            }
            let cmd = std::mem::take(&mut line);
            let reply = match cmd.as_slice() {
                b"Q1" => {
                    *lock(&shared.polls) += 1;
                    encode_q1(&lock(&shared.state))
                }
                b"F" => b"#220.0 000 024.0 50.0\r".to_vec(),
                b"I" => b"#ECOGATE SIM    UPS-1K    0.1       \r".to_vec(),
                other => {
                    let mut e = other.to_vec();
                    e.push(b'\r');
                    e
                }
            };
            let faults = shared.control.faults();
            if faults.silent {
                continue;
            }
            if !faults.delay.is_zero() {
                tokio::time::sleep(faults.delay).await;
            }
            if write_frame(&mut sock, &reply, &faults, &mut rng, b"(\r")
                .await
                .is_err()
            {
                return;
            }
        }
    }
}
