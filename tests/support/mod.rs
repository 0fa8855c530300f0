//! Shared by the integration tests that write a site file.
// Each test binary uses only some of these helpers.
#![allow(dead_code)]

/// `[site]` and `[enterprise]` of a test site (a valid credit code and permit number).
pub fn site_header(id: &str) -> String {
    format!(
        "[site]\nid = \"{id}\"\n[enterprise]\nname = \"测试\"\ncredit_code = \"91350100M000100Y43\"\npermit_no = \"91350100M000100Y43001P\"\nindustry = \"steel\"\ngrade = \"B\"\nregion = \"410500\"\n"
    )
}

/// A site of one gate with one entry lane: a VZ camera pushing to the HTTP ingest (`cam1`), a
/// Modbus relay module at `io` for barrier and loop (`io1`), the LED sign behind the camera
/// (`led1`), the ledger in `ledger/`. `tail` adds sections (`[http]`, `[policy]`, …).
pub fn one_lane_site(id: &str, io: std::net::SocketAddr, tail: &str) -> String {
    format!(
        "{header}{gate}timeout = \"300ms\"\n[storage]\ndata_dir = \"ledger\"\n{tail}",
        header = site_header(id),
        gate = one_lane_gate(&io.to_string(), true, "50ms")
    )
}

/// The `[[gates]]` and `[devices]` of [`one_lane_site`]: gate `1`, entry lane `1-in` with
/// camera `cam1`, relay module `io1` at `io` polled every `poll` (its loop detector as the
/// lane's `loop` when `with_loop`), sign and voice `led1` behind the camera. Ends inside
/// `[devices.io1]`, so keys for that device may follow.
pub fn one_lane_gate(io: &str, with_loop: bool, poll: &str) -> String {
    let loop_line = if with_loop { "loop = \"io1\"\n" } else { "" };
    format!(
        r#"[[gates]]
id = "1"
name = "东门"
[[gates.lanes]]
id = "1-in"
direction = "in"
machine = "entry"
camera = "cam1"
barrier = "io1"
{loop_line}sign = "led1"
voice = "led1"
[devices.cam1]
profile = "camera/vz-ivs"
address = "ingest:cam1"
[devices.led1]
profile = "led/parking-0x64"
via = "cam1"
[devices.io1]
profile = "io/modbus-relay-8ch"
address = "tcp://{io}"
poll = "{poll}"
"#
    )
}

/// The Modbus relay simulator wired as `one_lane_site`'s `io1` expects: open/close coils 0/1,
/// limit switches on inputs 1 (open) and 2 (closed), 100 ms travel, closing by itself after
/// `auto_close`.
pub async fn barrier_relay(
    auto_close: std::time::Duration,
) -> ecogate_drivers::sim::modbus::RelaySim {
    use ecogate_drivers::sim::modbus::{BarrierModel, Framing, RelaySim, SimConfig};
    let cfg = SimConfig {
        barrier: Some(BarrierModel {
            open_coil: 0,
            close_coil: 1,
            limit_open_di: 1,
            limit_closed_di: 2,
            travel: std::time::Duration::from_millis(100),
            auto_close: Some(auto_close),
        }),
        ..SimConfig::default()
    };
    RelaySim::start(Framing::Tcp, cfg)
        .await
        .expect("relay simulator on loopback")
}
