//! The `ecogate` binary as an integrator uses it: check, lane trace, demo.

mod support;

use std::process::Command;

fn ecogate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ecogate"))
}

#[test]
fn check_prints_a_summary_for_a_good_site() {
    let out = ecogate()
        .args(["check", "--config", "config/site.example.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("4 lane(s)"), "{stdout}");
    assert!(
        stdout.contains("lane 1-in (in) machine entry-weigh"),
        "{stdout}"
    );
}

#[test]
fn check_reports_every_error_and_exits_nonzero() {
    let out = ecogate()
        .args(["check", "--config", "tests/configs/broken/devices.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("14 errors found"), "{stderr}");
    assert!(
        stderr.contains(
            "tests/configs/broken/devices.toml:20:10: error: camera device `cam9` is not defined"
        ),
        "{stderr}"
    );
}

#[test]
fn check_of_a_missing_file_names_it() {
    let out = ecogate()
        .args(["check", "--config", "no/such/site.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("no/such/site.toml:1:1: error: cannot read the site file"));
}

#[test]
fn lane_trace_replays_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("events.txt");
    std::fs::write(
        &script,
        "# a loaded truck with a 国Ⅵ diesel engine\n0s plate 豫A12344 yellow stage=6 fuel=B type=Q11\n1s weight 20000\n2s weight_stable 32000\n3s barrier_opened\n4s weight_zero\n",
    )
    .unwrap();
    let out = ecogate()
        .args([
            "lane",
            "trace",
            "--config",
            "config/site.example.toml",
            "--lane",
            "1-in",
            "--events",
        ])
        .arg(&script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no `{needle}` in\n{stdout}"))
    };
    assert!(pos("idle -> deciding  on plate") < pos("deciding -> weighing  on allow"));
    let record = pos("record pass");
    let weighing = pos("record weighing");
    let barrier = pos("command barrier.open -> io1");
    assert!(record < weighing && weighing < barrier, "{stdout}");
    assert!(stdout.contains("(end in state idle)"), "{stdout}");
}

#[test]
fn lane_trace_points_at_a_bad_script_line() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("events.txt");
    std::fs::write(
        &script,
        "0s plate 豫A12344 yellow\n2s weight_stable heavy\n1s loop_on\n",
    )
    .unwrap();
    let out = ecogate()
        .args([
            "lane",
            "trace",
            "--config",
            "config/site.example.toml",
            "--lane",
            "1-in",
            "--events",
        ])
        .arg(&script)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("events.txt:2:18: error: `heavy` is not a weight in kg"),
        "{stderr}"
    );
    assert!(
        stderr.contains("events.txt:3:1: error: time 1s goes back before 2.000s"),
        "{stderr}"
    );
}

#[test]
fn demo_runs_500_vehicles_and_its_summary_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = ecogate()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--vehicles",
            "500",
            "--lanes",
            "4",
            "--seed",
            "7",
            "--quiet",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let num = |label: &str| -> u64 {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no `{label}` in\n{stdout}"));
        line[label.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (vehicles, allowed, denied) = (num("vehicles"), num("allowed"), num("denied"));
    assert_eq!(vehicles, 500);
    assert_eq!(allowed + denied, vehicles, "{stdout}");
    // The denials by reason add up to `denied`, and the warning half-way shows in them: some
    // trucks are turned away by a warning-only rule, which no normal-day rule would refuse.
    let reasons: Vec<(String, u64)> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("denied"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(
        reasons.iter().map(|(_, n)| n).sum::<u64>(),
        denied,
        "{stdout}"
    );
    let warning_only: u64 = reasons
        .iter()
        .filter(|(r, _)| {
            r.starts_with("strategy_") || r == "unknown_in_warning" || r == "level_min_stage"
        })
        .map(|(_, n)| n)
        .sum();
    assert!(
        warning_only > 0,
        "the orange warning must turn some trucks away: {stdout}"
    );
    assert!(num("weighings") > 0, "{stdout}");
    assert!(stdout.contains("chain verified"), "{stdout}");
    // The ledger it left verifies on its own.
    let verify = ecogate()
        .args(["ledger", "verify", "--data-dir"])
        .arg(dir.path().join("ledger"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn demo_over_real_drivers_and_loopback_simulators_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = ecogate()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--simulators",
            "--vehicles",
            "24",
            "--lanes",
            "4",
            "--seed",
            "3",
            "--quiet",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("allowed + denied = vehicles"), "{stdout}");
    let weighings = stdout
        .lines()
        .find(|l| l.starts_with("weighings"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        weighings.is_some_and(|w| w > 0),
        "the scale simulators' weights must reach the ledger: {stdout}"
    );
}

/// `ecogate demo --mqtt` publishes the site's topic tree: every pass reaches a subscriber.
/// Needs Mosquitto on 127.0.0.1:1883 (`.ci/run` starts one).
#[test]
fn demo_publishes_every_pass_over_mqtt() {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let site_topic = "ecogate/v1/demo/#";
    let mut opts = MqttOptions::new(
        format!("cli-test-{}", std::process::id()),
        "127.0.0.1",
        1883,
    );
    opts.set_keep_alive(std::time::Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 1000);
    client.subscribe(site_topic, QoS::AtLeastOnce).unwrap();
    let collector = std::thread::spawn(move || {
        let mut passes = std::collections::HashSet::new();
        let mut online = false;
        for ev in conn.iter() {
            match ev {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let body: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if p.topic.ends_with("/events/pass_attempt") {
                        passes.insert(body["id"].as_str().unwrap_or("").to_string());
                    }
                    if p.topic == "ecogate/v1/demo/status" && body["state"] == "offline" && online {
                        break;
                    }
                    if p.topic == "ecogate/v1/demo/status" && body["state"] == "online" {
                        online = true;
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("no MQTT broker on 127.0.0.1:1883 (start mosquitto): {e}"),
            }
        }
        passes
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let out = ecogate()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--vehicles",
            "30",
            "--lanes",
            "2",
            "--seed",
            "5",
            "--quiet",
            "--mqtt",
            "mqtt://127.0.0.1:1883",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passes = collector.join().unwrap();
    assert_eq!(
        passes.len(),
        30,
        "distinct pass events received over MQTT: {}",
        passes.len()
    );
}

/// `ecogate run`: UPS battery low → lanes to power-loss mode → the process stops by itself,
/// exit 0, with a ledger that verifies and records the alarm.
#[test]
fn run_stops_cleanly_on_ups_battery_low() {
    use std::io::{BufRead, BufReader};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (ups, ups_addr) = rt
        .block_on(ecogate_drivers::sim::ups::UpsSim::bind("127.0.0.1:0"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = format!(
        r#"{header}[[gates]]
id = "1"
name = "东门"
[[gates.lanes]]
id = "1-in"
direction = "in"
machine = "entry"
camera = "cam1"
barrier = "cam1"
sign = "led1"
voice = "led1"
[devices.cam1]
profile = "camera/vz-ivs"
address = "ingest:cam1"
[devices.led1]
profile = "led/parking-0x64"
via = "cam1"
[devices.ups]
profile = "ups/megatec-q1"
address = "serial-over-tcp://{ups_addr}"
[devices.ups.settings]
poll_interval_ms = 100
[storage]
data_dir = "ledger"
"#,
        header = support::site_header("power")
    );
    let path = dir.path().join("site.toml");
    std::fs::write(&path, site).unwrap();
    let mut child = ecogate()
        .args(["run", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("running"), "{first}");
    ups.set_on_battery(true);
    ups.set_battery_low(true);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(20) {
            let _ = child.kill();
            panic!("ecogate run did not stop after UPS battery low");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("UPS battery low")),
        "{rest:?}"
    );
    let verify = ecogate()
        .args(["ledger", "verify", "--data-dir"])
        .arg(dir.path().join("ledger"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let r = ecogate::ledger::store::LedgerReader::open(&dir.path().join("ledger")).unwrap();
    let alarms: Vec<String> = r
        .events_after(0, 1000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "alarm")
        .map(|e| {
            serde_json::to_value(&e.body).unwrap()["code"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(alarms.iter().any(|c| c == "ups_battery_low"), "{alarms:?}");
    drop(ups);
}

#[test]
fn ledger_backfill_records_flagged_rows_and_refuses_a_bad_file_whole() {
    use ecogate::ledger::{EventBody, LedgerReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    std::fs::write(dir.path().join("sheet.jpg"), b"paper sheet").unwrap();
    let good = dir.path().join("paper.csv");
    std::fs::write(
        &good,
        "通行时间,进出类型,车牌号码,车牌颜色,车道,运输货物名称,运输量(吨),纸质台账照片\n\
         2026-03-01 08:10:00,进,豫A77777,黄,1-in,焦炭,30.25,sheet.jpg\n\
         2026-03-01 09:40:00,出,豫A77777,黄,1-out,,,sheet.jpg\n",
    )
    .unwrap();
    let run = |file: &std::path::Path| {
        ecogate()
            .args(["ledger", "backfill", "--data-dir", data_s])
            .arg(file)
            .args(["--operator", "王五", "--reason", "网关停电 08:00-10:00"])
            .output()
            .unwrap()
    };
    let out = run(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("2 paper-log rows recorded as 补录"),
        "{stdout}"
    );

    let reader = LedgerReader::open(&data).unwrap();
    let events = reader.events_after(0, 100).unwrap();
    assert_eq!(events.len(), 2);
    let times: Vec<String> = events
        .iter()
        .map(|e| ecogate::ledger::local_time(e.occurred_at))
        .collect();
    assert_eq!(times, ["2026-03-01 08:10:00", "2026-03-01 09:40:00"]);
    for (e, line) in events.iter().zip([2, 3]) {
        assert_eq!(e.kind, "backfill");
        let EventBody::Backfill(b) = &e.body else {
            panic!("{:?}", e.body)
        };
        assert_eq!(b.operator, "王五");
        assert_eq!(b.reason, "网关停电 08:00-10:00");
        assert_eq!((b.source.as_str(), b.line), ("paper.csv", line));
        assert!(e.recorded_at > e.occurred_at, "recorded now, dated then");
        assert_eq!(e.photos.len(), 1);
    }
    drop(reader);

    // The transport ledger shows the visit flagged 补录.
    let export = dir.path().join("t.csv");
    let out = ecogate()
        .args([
            "ledger",
            "export",
            "--data-dir",
            data_s,
            "--ledger",
            "transport",
            "--from",
            "2026-03-01",
            "--to",
            "2026-03-01",
            "--out",
        ])
        .arg(&export)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    let rows: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(text.trim_start_matches('\u{feff}').as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    let col = |n: &str| rows[0].iter().position(|c| c == n).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][col("备注")], "补录");
    assert_eq!(rows[1][col("进厂时间")], "2026-03-01 08:10:00");
    assert_eq!(rows[1][col("运输量(吨)")], "30.3");

    // One bad row (an absurd load; a photo outside the folder): named by line and column,
    // and the good rows around it are not recorded either.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let bad = sub.join("bad.csv");
    std::fs::write(
        &bad,
        "time,direction,plate,color,lane,net_t,sheet_photo\n\
         2026-03-02 08:00:00,in,豫A88888,黄,1-in,31,\n\
         2026-03-02 08:05:00,in,豫A88889,黄,1-in,922337203685477,\n\
         2026-03-02 08:06:00,in,豫A88890,黄,1-in,0,\n\
         2026-03-02 08:07:00,in,豫A88891,黄,1-in,,../sheet.jpg\n",
    )
    .unwrap();
    let out = run(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 bad row(s), nothing imported"),
        "{stderr}"
    );
    assert!(stderr.contains("line 3, column `net_t`"), "{stderr}");
    assert!(stderr.contains("line 4, column `net_t`"), "{stderr}");
    assert!(stderr.contains("line 5, column `sheet_photo`"), "{stderr}");
    assert!(!stderr.contains("line 2"), "{stderr}");
    let head = ecogate()
        .args(["ledger", "head", "--data-dir", data_s])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&head.stdout).starts_with("2:"));
}
