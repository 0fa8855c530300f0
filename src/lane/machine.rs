//! Lane machines as written in `lanes/*.toml`, and their compiled form.
//!
//! ```toml
//! description = "Entry lane"
//! initial = "idle"
//! [states.idle]
//! on.plate = { to = "deciding" }
//! [states.deciding]
//! entry = ["policy.decide"]
//! on.allow = { to = "opening", do = ["ledger.record", "sign.show(allowed)"] }
//! on.deny = [{ guard = "decision.review", to = "idle" }, { to = "idle", do = ["ledger.record"] }]
//! [states.opening]
//! entry = ["barrier.open"]
//! on.loop_off = { to = "idle" }
//! after."60s" = { to = "idle", do = ["alarm.raise(lane_stuck)"] }
//! ```

use super::builtin::{self, Action, EventName, Guard, Role};
use crate::config::diag::{Diagnostic, SourceFile};
use crate::config::document::{self, At, Seg};
use crate::path;
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub struct RawMachine {
    #[serde(default)]
    pub description: String,
    pub initial: String,
    #[serde(default)]
    pub states: BTreeMap<String, RawState>,
    /// Transitions that apply in every state that does not handle the event itself
    /// (power loss, reset, record failure).
    #[serde(default)]
    pub any: RawAny,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawAny {
    #[serde(default)]
    pub on: BTreeMap<String, OneOrMany>,
}

#[derive(Debug, Deserialize, Default)]
pub struct RawState {
    #[serde(default)]
    pub entry: Vec<String>,
    #[serde(default)]
    pub exit: Vec<String>,
    #[serde(default)]
    pub on: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    pub after: BTreeMap<String, RawTransition>,
}

#[derive(Debug, Deserialize, Default, Clone)]
pub struct RawTransition {
    pub to: Option<String>,
    pub guard: Option<String>,
    #[serde(default, rename = "do")]
    pub actions: Vec<String>,
}

/// `on.x = { … }` or `on.x = [{ … }, { … }]` (tried in order; the first whose guard holds wins).
#[derive(Debug)]
pub struct OneOrMany(pub Vec<RawTransition>, pub bool);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a transition table { to = \"state\", guard = \"…\", do = [\"…\"] } or an array of them")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<OneOrMany, A::Error> {
                let t =
                    RawTransition::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(OneOrMany(vec![t], false))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(t) = seq.next_element::<RawTransition>()? {
                    v.push(t);
                }
                Ok(OneOrMany(v, true))
            }
        }
        d.deserialize_any(V)
    }
}

pub type StateId = usize;

#[derive(Debug, Clone)]
pub struct Transition {
    pub guard: Option<Guard>,
    /// None: an internal transition (actions only; no exit/entry, timers keep running).
    pub target: Option<StateId>,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone)]
pub struct Timer {
    pub after: Duration,
    pub label: String,
    pub transition: Transition,
}

#[derive(Debug, Clone)]
pub struct State {
    pub name: String,
    pub entry: Vec<Action>,
    pub exit: Vec<Action>,
    /// Indexed by `EventName::index()`.
    pub on: Vec<Vec<Transition>>,
    pub after: Vec<Timer>,
}

/// A validated lane machine, shared by every lane that uses it.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub description: String,
    pub initial: StateId,
    pub states: Vec<State>,
}

impl Machine {
    pub fn state_id(&self, name: &str) -> Option<StateId> {
        self.states.iter().position(|s| s.name == name)
    }

    fn all_actions(&self) -> impl Iterator<Item = &Action> {
        self.states.iter().flat_map(|s| {
            s.entry
                .iter()
                .chain(s.exit.iter())
                .chain(s.on.iter().flatten().flat_map(|t| t.actions.iter()))
                .chain(s.after.iter().flat_map(|t| t.transition.actions.iter()))
        })
    }

    fn all_guards(&self) -> impl Iterator<Item = &Guard> {
        self.states.iter().flat_map(|s| {
            s.on.iter()
                .flatten()
                .filter_map(|t| t.guard.as_ref())
                .chain(s.after.iter().filter_map(|t| t.transition.guard.as_ref()))
        })
    }

    /// Events the machine handles in some state.
    pub fn events(&self) -> BTreeSet<&'static str> {
        let mut out = BTreeSet::new();
        for s in &self.states {
            for (i, ts) in s.on.iter().enumerate() {
                if !ts.is_empty() {
                    out.insert(EventName::ALL[i].name());
                }
            }
        }
        out
    }

    /// Roles a lane must bind to run this machine: those its actions drive and those whose
    /// events it waits for. Guards such as `lane.has(scale)` make a role optional, so guard
    /// roles are not required.
    pub fn required_roles(&self) -> BTreeMap<Role, String> {
        let mut out = BTreeMap::new();
        for a in self.all_actions() {
            if let Some(r) = a.role() {
                out.entry(r).or_insert_with(|| format!("action `{a}`"));
            }
        }
        for s in &self.states {
            for (i, ts) in s.on.iter().enumerate() {
                let ev = EventName::ALL[i];
                // A transition guarded by lane.has(role) is written for lanes that may lack it.
                let conditional = ts
                    .iter()
                    .all(|t| matches!(t.guard, Some(Guard::LaneHas(_))));
                if let (false, Some(r)) = (ts.is_empty() || conditional, ev.role()) {
                    out.entry(r)
                        .or_insert_with(|| format!("event `{}`", ev.name()));
                }
            }
        }
        out
    }

    /// Text keys used by `sign.show` and `voice.say`.
    pub fn text_keys(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut sign = BTreeSet::new();
        let mut voice = BTreeSet::new();
        for a in self.all_actions() {
            match a {
                Action::SignShow(k) => {
                    sign.insert(k.clone());
                }
                Action::VoiceSay(k) => {
                    voice.insert(k.clone());
                }
                _ => {}
            }
        }
        (sign, voice)
    }

    pub fn uses_guard(&self, g: &Guard) -> bool {
        self.all_guards().any(|x| x == g)
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a combination such as `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration; write e.g. 500ms, 30s, 2m or 1h30m");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let d = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(d);
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(format!("`{s}` is zero; a timer needs a positive duration"));
    }
    Ok(total)
}

/// Loads and validates a machine file. All errors are returned, each at its position.
pub fn load(name: &str, file: &SourceFile) -> Result<Machine, Vec<Diagnostic>> {
    match load_usable(name, file)? {
        (m, unknown) if unknown.is_empty() => Ok(m),
        (_, unknown) => Err(unknown),
    }
}

/// Like [`load`], but a machine whose only faults are unknown keys still comes back, with those
/// errors beside it: the site check can then go on to check the lanes that use it, so that one
/// misspelt key does not hide every other error.
pub fn load_usable(
    name: &str,
    file: &SourceFile,
) -> Result<(Machine, Vec<Diagnostic>), Vec<Diagnostic>> {
    let (raw, unknown) = document::parse_documented::<RawMachine>(file, "docs/lanes.md")?;
    let mut diags = Vec::new();
    let machine = compile(name, &raw, file, &mut diags);
    match machine {
        Some(m) if diags.is_empty() => Ok((m, unknown)),
        _ => {
            diags.extend(unknown);
            diags.sort_by_key(|d| (d.line, d.col));
            Err(diags)
        }
    }
}

fn builtin_diag(file: &SourceFile, p: &[Seg], e: builtin::BuiltinError, kind: &str) -> Diagnostic {
    let help = match e.suggestion {
        Some(s) => format!("did you mean `{s}`? See docs/lanes.md for every {kind}"),
        None => format!("see docs/lanes.md for every {kind} and its parameters"),
    };
    file.error_at(p, At::Value, e.message).help(help)
}

fn compile(
    name: &str,
    raw: &RawMachine,
    file: &SourceFile,
    diags: &mut Vec<Diagnostic>,
) -> Option<Machine> {
    let names: Vec<&String> = raw.states.keys().collect();
    if names.is_empty() {
        diags.push(
            file.error(0..0, "the machine has no states")
                .help("add at least one [states.NAME] table"),
        );
        return None;
    }
    let id_of = |n: &str| names.iter().position(|s| s.as_str() == n);
    let suggest = |n: &str| {
        crate::config::diag::closest(n, names.iter().map(|s| s.as_str()))
            .map(|s| format!("did you mean `{s}`? States here: {}", list(&names)))
            .unwrap_or_else(|| format!("states here: {}", list(&names)))
    };
    let initial = id_of(&raw.initial);
    if initial.is_none() {
        diags.push(
            file.error_at(
                &path!["initial"],
                At::Value,
                format!("initial state `{}` is not defined", raw.initial),
            )
            .help(suggest(&raw.initial)),
        );
    }

    let actions = |list: &[String], p: Vec<Seg>, diags: &mut Vec<Diagnostic>| -> Vec<Action> {
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            let mut ap = p.clone();
            ap.push(Seg::Index(i));
            match builtin::parse_action(a) {
                Ok(a) => out.push(a),
                Err(e) => diags.push(builtin_diag(file, &ap, e, "action")),
            }
        }
        out
    };
    let transition = |t: &RawTransition, p: Vec<Seg>, diags: &mut Vec<Diagnostic>| -> Transition {
        let guard = t
            .guard
            .as_ref()
            .and_then(|g| match builtin::parse_guard(g) {
                Ok(g) => Some(g),
                Err(e) => {
                    let mut gp = p.clone();
                    gp.push("guard".into());
                    diags.push(builtin_diag(file, &gp, e, "guard"));
                    None
                }
            });
        let target = t.to.as_ref().and_then(|to| {
            let id = id_of(to);
            if id.is_none() {
                let mut tp = p.clone();
                tp.push("to".into());
                diags.push(
                    file.error_at(
                        &tp,
                        At::Value,
                        format!("transition to undefined state `{to}`"),
                    )
                    .help(suggest(to)),
                );
            }
            id
        });
        let mut dp = p.clone();
        dp.push("do".into());
        Transition {
            guard,
            target,
            actions: actions(&t.actions, dp, diags),
        }
    };

    let mut any: Vec<(EventName, Vec<Transition>)> = Vec::new();
    for (ev, ts) in &raw.any.on {
        let ep = path!["any", "on", ev].to_vec();
        let Some(e) = EventName::from_name(ev) else {
            diags.push(
                file.error_at(&ep, At::Key, format!("unknown event `{ev}`"))
                    .help("see docs/lanes.md for every event"),
            );
            continue;
        };
        let mut v = Vec::new();
        for (i, t) in ts.0.iter().enumerate() {
            let mut tp = ep.clone();
            if ts.1 {
                tp.push(Seg::Index(i));
            }
            v.push(transition(t, tp, diags));
        }
        any.push((e, v));
    }

    let mut states = Vec::new();
    for (sname, s) in &raw.states {
        let sp = path!["states", sname].to_vec();
        let mut on = vec![Vec::new(); EventName::ALL.len()];
        for (ev, ts) in &s.on {
            let mut ep = sp.clone();
            ep.extend(path!["on", ev]);
            let Some(e) = EventName::from_name(ev) else {
                let known = EventName::ALL.iter().map(|e| e.name());
                let help = match crate::config::diag::closest(ev, known) {
                    Some(k) => format!("did you mean `{k}`? See docs/lanes.md for every event"),
                    None => format!(
                        "events are: {}",
                        EventName::ALL
                            .iter()
                            .map(|e| e.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                diags.push(
                    file.error_at(&ep, At::Key, format!("unknown event `{ev}`"))
                        .help(help),
                );
                continue;
            };
            for (i, t) in ts.0.iter().enumerate() {
                let mut tp = ep.clone();
                if ts.1 {
                    tp.push(Seg::Index(i));
                }
                on[e.index()].push(transition(t, tp, diags));
            }
        }
        let mut after = Vec::new();
        for (label, t) in &s.after {
            let mut tp = sp.clone();
            tp.extend(path!["after", label]);
            match parse_duration(label) {
                Ok(d) => after.push(Timer {
                    after: d,
                    label: label.clone(),
                    transition: transition(t, tp, diags),
                }),
                Err(msg) => diags.push(
                    file.error_at(&tp, At::Key, msg)
                        .help("timers are written after.\"30s\" = { to = \"state\" }"),
                ),
            }
        }
        after.sort_by_key(|t| t.after);
        for (e, ts) in &any {
            if on[e.index()].is_empty() {
                on[e.index()] = ts.clone();
            }
        }
        let mut entry_p = sp.clone();
        entry_p.push("entry".into());
        let mut exit_p = sp.clone();
        exit_p.push("exit".into());
        states.push(State {
            name: sname.clone(),
            entry: actions(&s.entry, entry_p, diags),
            exit: actions(&s.exit, exit_p, diags),
            on,
            after,
        });
    }
    let initial = initial?;
    let m = Machine {
        name: name.to_string(),
        description: raw.description.clone(),
        initial,
        states,
    };
    check_graph(&m, file, diags);
    Some(m)
}

fn list(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn successors(s: &State) -> impl Iterator<Item = StateId> + '_ {
    s.on.iter()
        .flatten()
        .chain(s.after.iter().map(|t| &t.transition))
        .filter_map(|t| t.target)
}

/// Unreachable states, states with no way out, and events that can never happen.
fn check_graph(m: &Machine, file: &SourceFile, diags: &mut Vec<Diagnostic>) {
    let mut seen = vec![false; m.states.len()];
    let mut queue = VecDeque::from([m.initial]);
    seen[m.initial] = true;
    while let Some(s) = queue.pop_front() {
        for n in successors(&m.states[s]) {
            if !seen[n] {
                seen[n] = true;
                queue.push_back(n);
            }
        }
    }
    for (i, s) in m.states.iter().enumerate() {
        let p = path!["states", &s.name].to_vec();
        if !seen[i] {
            diags.push(
                file.error_at(
                    &p,
                    At::Key,
                    format!(
                        "state `{}` is unreachable from `{}`",
                        s.name, m.states[m.initial].name
                    ),
                )
                .help("add a transition into it, or remove it"),
            );
        }
        if !successors(s).any(|n| n != i) {
            diags.push(
                file.error_at(&p, At::Key, format!("state `{}` has no way out: no transition leads to another state", s.name))
                    .help("add an on.<event> or after.\"<duration>\" transition to another state, so a lane can never get stuck here"),
            );
        }
    }
    let decides = m.all_actions().any(|a| *a == Action::PolicyDecide);
    if !decides {
        for s in &m.states {
            for ev in [EventName::Allow, EventName::Deny] {
                if !s.on[ev.index()].is_empty() {
                    diags.push(
                        file.error_at(&path!["states", &s.name, "on", ev.name()], At::Key, format!("event `{}` can never happen: no `policy.decide` action in this machine", ev.name()))
                            .help("add policy.decide to the state that should decide (usually as an entry action)"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(s: &str) -> Result<Machine, Vec<Diagnostic>> {
        load("t", &SourceFile::new("t.toml", s.to_string()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    #[test]
    fn reports_every_problem_with_position() {
        let src = r#"initial = "idle"
[states.idle]
on.plate = { to = "decidng" }
on.plat = { to = "idle" }
[states.deciding]
entry = ["policy.decide", "barier.open"]
on.allow = [{ guard = "weight.above(x)", to = "idle" }, { to = "idle" }]
after."soon" = { to = "idle" }
[states.orphan]
on.deny = { to = "idle" }
[states.stuck]
"#;
        let errs = load_str(src).unwrap_err();
        let got: Vec<(usize, usize, &str)> = errs
            .iter()
            .map(|d| (d.line, d.col, d.message.as_str()))
            .collect();
        let want_fragments = [
            (3, 19, "undefined state `decidng`"),
            (4, 4, "unknown event `plat`"),
            (6, 27, "unknown action `barier.open`"),
            (7, 23, "`weight.above` needs a weight"),
            (8, 7, "`soon` is not a duration"),
            (5, 9, "`deciding` is unreachable"),
            (9, 9, "`orphan` is unreachable"),
            (11, 9, "`stuck` is unreachable"),
            (11, 9, "`stuck` has no way out"),
        ];
        for (l, c, frag) in want_fragments {
            assert!(
                got.iter()
                    .any(|(gl, gc, m)| *gl == l && *gc == c && m.contains(frag)),
                "missing {l}:{c} {frag} in {got:#?}"
            );
        }
        assert!(errs.iter().any(|d| d
            .help
            .as_deref()
            .unwrap_or("")
            .contains("did you mean `deciding`")));
    }

    #[test]
    fn roles_follow_actions_and_events() {
        let m = load_str(
            r#"initial = "idle"
[states.idle]
on.plate = { to = "deciding" }
[states.deciding]
entry = ["policy.decide"]
on.allow = { to = "idle", do = ["ledger.record", "barrier.open", "sign.show(allowed)"] }
on.deny = { to = "idle" }
on.weight_stable = { guard = "lane.has(scale)", to = "idle" }
"#,
        )
        .unwrap();
        let roles: Vec<Role> = m.required_roles().into_keys().collect();
        assert_eq!(roles, vec![Role::Camera, Role::Barrier, Role::Sign]);
    }
}
