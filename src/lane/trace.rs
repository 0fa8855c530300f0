//! `ecogate lane trace`: replay a scripted list of events through one lane with no devices and
//! print every transition, record and command. Integrators commission lanes with it.
//!
//! Script format, one event per line (`#` starts a comment):
//!
//! ```text
//! 0s     plate 豫A12345 yellow stage=5 fuel=B type=H11   # facts are put in the trace's registry
//! 1s     loop_on
//! 4s     weight_stable 32000
//! 5s     cargo_declared 钢材
//! 6s     manual_release operator=张三 role=guard reason=应急车辆 plate=豫A00001 remote
//! 90s    tick                                               # only advance the clock
//! ```
//! Times are offsets from the start of the trace and never go backwards.

use super::engine::{BarrierMode, Decider, Input, Lane, Output, Record, Release};
use crate::config::diag::{Diagnostic, SourceFile};
use crate::registry::MemoryRegistry;
use crate::vehicle::{EmissionStage, Fuel, PlateColor, RegistryKind, VehicleFacts};
use chrono::{DateTime, Utc};
use ecogate_drivers::{Command, Mass, PlateRead};
use std::fmt::Write as _;
use std::time::Duration;

/// One scripted step.
#[derive(Debug, Clone)]
pub struct Step {
    pub at: Duration,
    pub line: usize,
    /// None: just advance the clock (`tick`).
    pub input: Option<Input>,
}

fn col_of(line: &str, token: &str) -> usize {
    let byte = token.as_ptr() as usize - line.as_ptr() as usize;
    line[..byte.min(line.len())].chars().count() + 1
}

/// Parses a script; facts given on plate lines are added to `registry`.
pub fn parse_script(
    file: &SourceFile,
    registry: &MemoryRegistry,
) -> Result<Vec<Step>, Vec<Diagnostic>> {
    let mut steps = Vec::new();
    let mut diags = Vec::new();
    let mut last = Duration::ZERO;
    for (i, raw_line) in file.text.lines().enumerate() {
        let line_no = i + 1;
        let content = raw_line.split('#').next().unwrap_or("");
        let toks: Vec<&str> = content.split_whitespace().collect();
        if toks.is_empty() {
            continue;
        }
        let err = |tok: &str, msg: String, help: &str| Diagnostic {
            file: file.path.clone(),
            line: line_no,
            col: col_of(raw_line, tok),
            message: msg,
            help: Some(help.to_string()),
            stand_in: false,
        };
        let at = match super::machine::parse_duration(toks[0]).or_else(|e| {
            if toks[0] == "0" || toks[0] == "0s" {
                Ok(Duration::ZERO)
            } else {
                Err(e)
            }
        }) {
            Ok(d) => d,
            Err(msg) => {
                diags.push(err(
                    toks[0],
                    msg,
                    "each line starts with a time offset such as 0s, 1500ms or 2m",
                ));
                continue;
            }
        };
        if at < last {
            diags.push(err(
                toks[0],
                format!("time {} goes back before {}", toks[0], fmt_dur(last)),
                "list events in time order",
            ));
            continue;
        }
        last = at;
        let Some(&ev) = toks.get(1) else {
            diags.push(err(
                toks[0],
                "missing event after the time".into(),
                "write e.g. `0s plate 豫A12345 yellow`",
            ));
            continue;
        };
        let args = &toks[2..];
        let mut kv = std::collections::HashMap::new();
        let mut flags = Vec::new();
        for a in args {
            match a.split_once('=') {
                Some((k, v)) => {
                    kv.insert(k, (v, *a));
                }
                None => flags.push(*a),
            }
        }
        let input = match ev {
            "tick" => None,
            "plate" => {
                let (Some(plate), Some(color_tok)) = (flags.first(), flags.get(1)) else {
                    diags.push(err(
                        ev,
                        "plate needs the plate text and its colour".into(),
                        "write `plate 豫A12345 yellow [stage=5 fuel=B type=H11 kind=transport]`",
                    ));
                    continue;
                };
                let color = match color_tok.parse::<PlateColor>() {
                    Ok(c) => c,
                    Err(e) => {
                        diags.push(err(
                            color_tok,
                            e.to_string(),
                            "colours: blue, yellow, white, black, green, yellow_green, other",
                        ));
                        continue;
                    }
                };
                if kv.contains_key("stage") || kv.contains_key("fuel") || kv.contains_key("type") {
                    let mut facts = VehicleFacts {
                        plate: plate.to_string(),
                        color,
                        registry: RegistryKind::Transport,
                        stage: EmissionStage::Unknown,
                        fuel: Fuel::Diesel,
                        vehicle_type: "H11".into(),
                        use_character: Some('F'),
                        obd_online: None,
                    };
                    let mut ok = true;
                    if let Some((v, tok)) = kv.get("stage") {
                        match v.parse() {
                            Ok(s) => facts.stage = s,
                            Err(e) => {
                                diags.push(err(tok, format!("{e}"), "stage=0..6, D or X"));
                                ok = false;
                            }
                        }
                    }
                    if let Some((v, tok)) = kv.get("fuel") {
                        match v.parse() {
                            Ok(f) => facts.fuel = f,
                            Err(e) => {
                                diags.push(err(
                                    tok,
                                    format!("{e}"),
                                    "fuel=A (petrol), B (diesel), C (electric), E (natural gas), …",
                                ));
                                ok = false;
                            }
                        }
                    }
                    if let Some((v, _)) = kv.get("type") {
                        facts.vehicle_type = v.to_string();
                    }
                    if let Some((v, tok)) = kv.get("kind") {
                        facts.registry = match *v {
                            "transport" => RegistryKind::Transport,
                            "in_plant" => RegistryKind::InPlant,
                            "non_road" => RegistryKind::NonRoad,
                            _ => {
                                diags.push(err(
                                    tok,
                                    format!("unknown registry kind `{v}`"),
                                    "kind=transport, in_plant or non_road",
                                ));
                                ok = false;
                                RegistryKind::Transport
                            }
                        };
                    }
                    if !ok {
                        continue;
                    }
                    registry.insert(facts);
                }
                Some(Input::Plate(PlateRead {
                    plate: plate.to_string(),
                    color,
                    confidence: 95,
                    source_id: None,
                    captured_at: None,
                    offline_replay: false,
                    images: Vec::new(),
                }))
            }
            "weight" | "weight_stable" => {
                let Some(tok) = args.first() else {
                    diags.push(err(
                        ev,
                        format!("{ev} needs a weight in kg"),
                        "write e.g. `4s weight_stable 32000`",
                    ));
                    continue;
                };
                match tok.parse::<Mass>() {
                    Ok(mass) => Some(Input::Weight {
                        mass,
                        stable: ev == "weight_stable",
                    }),
                    Err(e) => {
                        diags.push(err(
                            tok,
                            e.to_string(),
                            "weights are kg, e.g. 32000 or 32000.5",
                        ));
                        continue;
                    }
                }
            }
            "cargo_declared" => match args.first() {
                Some(c) => Some(Input::CargoDeclared(c.to_string())),
                None => {
                    diags.push(err(
                        ev,
                        "cargo_declared needs the cargo name".into(),
                        "write e.g. `5s cargo_declared 钢材`",
                    ));
                    continue;
                }
            },
            "manual_release" => {
                let get = |k: &str| kv.get(k).map(|(v, _)| v.to_string());
                let (Some(operator), Some(reason)) = (get("operator"), get("reason")) else {
                    diags.push(err(
                        ev,
                        "manual_release needs operator= and reason=".into(),
                        "write e.g. `6s manual_release operator=张三 role=guard reason=应急车辆`",
                    ));
                    continue;
                };
                Some(Input::ManualRelease(Release {
                    operator,
                    role: get("role").unwrap_or_else(|| "guard".into()),
                    reason,
                    remote: flags.contains(&"remote"),
                    plate: get("plate"),
                    approval: None,
                    request: None,
                }))
            }
            "no_plate" => Some(Input::NoPlate),
            "loop_on" => Some(Input::LoopOn),
            "loop_off" => Some(Input::LoopOff),
            "barrier_opened" => Some(Input::BarrierOpened),
            "barrier_closed" => Some(Input::BarrierClosed),
            "weight_zero" => Some(Input::WeightZero),
            "device_offline" => Some(Input::DeviceOffline(
                args.first().unwrap_or(&"?").to_string(),
            )),
            "device_online" => Some(Input::DeviceOnline(
                args.first().unwrap_or(&"?").to_string(),
            )),
            "power_loss" => Some(Input::PowerLoss),
            "record_failed" => Some(Input::RecordFailed),
            "reset" => Some(Input::Reset),
            other => {
                diags.push(err(other, format!("unknown event `{other}`"), "events: plate, no_plate, loop_on, loop_off, barrier_opened, barrier_closed, weight, weight_stable, weight_zero, cargo_declared, manual_release, device_offline, device_online, power_loss, record_failed, reset, tick"));
                continue;
            }
        };
        steps.push(Step {
            at,
            line: line_no,
            input,
        });
    }
    if diags.is_empty() {
        Ok(steps)
    } else {
        Err(diags)
    }
}

fn fmt_dur(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// Formats one output line of a trace.
pub fn format_output(o: &Output, start: DateTime<Utc>) -> String {
    match o {
        Output::Transition(t) => {
            let dt = (t.at - start).to_std().unwrap_or_default();
            let cause = if t.cause.is_empty() {
                String::new()
            } else {
                format!("  ({})", t.cause)
            };
            format!(
                "{:>9}  {} -> {}  on {}{}",
                fmt_dur(dt),
                t.from,
                t.to,
                t.event,
                cause
            )
        }
        Output::Record(r) => format_record(r),
        Output::Command(c) => {
            let detail = match &c.command {
                Command::SignShow { lines } => format!(" {:?}", lines),
                Command::VoiceSay { text } => format!(" {text:?}"),
                Command::RelayPulse { output, ms } => format!(" {output} {ms}ms"),
                _ => String::new(),
            };
            format!(
                "           command {} -> {}{}",
                c.command.name(),
                c.device,
                detail
            )
        }
        Output::Alarm { code, raised } => {
            format!(
                "           alarm {} {}",
                code,
                if *raised { "raised" } else { "cleared" }
            )
        }
    }
}

fn format_record(r: &Record) -> String {
    match r {
        Record::Pass(p) => {
            let mut s = format!(
                "           record pass {} {} mode={}",
                p.plate,
                p.color,
                match p.mode {
                    BarrierMode::Auto => "auto",
                    BarrierMode::Manual => "manual",
                    BarrierMode::Remote => "remote",
                }
            );
            if let Some(v) = &p.verdict {
                let _ = write!(
                    s,
                    " {} reason={} text=\"{}\"",
                    if v.allow { "allow" } else { "deny" },
                    v.reason,
                    v.text
                );
                if v.review {
                    s.push_str(" review");
                }
                if let Some(f) = &v.facts {
                    let _ = write!(
                        s,
                        " stage={} fuel={} type={}",
                        f.stage, f.fuel, f.vehicle_type
                    );
                } else {
                    s.push_str(" (not registered)");
                }
            }
            if let Some(r) = &p.release {
                let _ = write!(
                    s,
                    " operator={} role={} reason=\"{}\"",
                    r.operator, r.role, r.reason
                );
            }
            s
        }
        Record::Weighing(w) => {
            let mut s = format!(
                "           record weighing {} {} {} kg ({}) scale={}",
                w.plate, w.color, w.mass, w.kind, w.scale
            );
            if let Some(c) = &w.cargo {
                let _ = write!(s, " cargo={c}");
            }
            s
        }
        Record::Exception(e) => format!(
            "           record exception {}{}",
            e.code,
            e.plate
                .as_ref()
                .map(|p| format!(" plate={p}"))
                .unwrap_or_default()
        ),
    }
}

/// Runs a script through a lane and returns the printed trace.
pub fn run(lane: &mut Lane, steps: &[Step], start: DateTime<Utc>, decider: &dyn Decider) -> String {
    let mut text = String::new();
    let mut out = Vec::new();
    lane.start(start, decider, &mut out);
    let emit = |out: &mut Vec<Output>, text: &mut String| {
        for o in out.drain(..) {
            text.push_str(&format_output(&o, start));
            text.push('\n');
        }
    };
    emit(&mut out, &mut text);
    for s in steps {
        let at = start + chrono::Duration::from_std(s.at).unwrap_or_default();
        lane.advance(at, decider, &mut out);
        emit(&mut out, &mut text);
        if let Some(input) = &s.input {
            lane.handle(input.clone(), at, decider, &mut out);
            emit(&mut out, &mut text);
        }
    }
    let _ = writeln!(text, "           (end in state {})", lane.state_name());
    text
}
