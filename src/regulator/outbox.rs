//! The outbox of one destination: a cursor over the ledger plus the delivery state of the
//! records above it. The records themselves are never copied — after a restart they are read
//! again from the ledger — so the outbox cannot drift from what the ledger holds.
//!
//! Order: up to `window` records are in flight at once, but never two of one vehicle, and a
//! vehicle's record goes only when all its earlier waiting records are acknowledged (entry
//! before exit). Records that happened within `live_window` are picked first so the platform
//! sees the present; everything older (the backlog) drains oldest first. A record's photos
//! follow its acknowledgement within the same delivery.
//!
//! Durability: acknowledgements are applied in groups and the state file is written (fsync,
//! rename) once per group. A window slot is freed only once its outcome is on disk, so a crash
//! resends at most the `window` records that were in flight — each with the serial it had.

use super::client::{CargoRecord, Issued, LinkedPass, PhotoSource, PlatformClient};
use super::transport_control::{serial_for, PassRecord, SendError, SiteFacts};
use super::RegulatorError;
use crate::ledger::{
    local_day_start, parse_date, site_zone, Direction, EventBody, EventRecord, Ledger, LedgerReader,
};
use chrono::{DateTime, Utc};
use ecogate_drivers::plate::PlateColor;
use ecogate_drivers::Backoff;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Persisted per destination in `data_dir/uplink/<name>.state` (JSON, replaced atomically).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboxState {
    /// Every event with `seq <= cursor` is settled (delivered or not for upload).
    pub cursor: i64,
    /// Highest seq examined; `captured` counts the uploadable events up to here.
    pub scanned: i64,
    /// Settled above the cursor: delivered (record and photos acknowledged) or not for upload.
    /// Kept as ranges, so a record that holds the cursor back for long (refused, waiting for
    /// its vehicle) does not make the state file grow with every later event.
    #[serde(default)]
    pub done: SeqRanges,
    /// Record acknowledged, photos not all yet: seq → photos acknowledged so far.
    #[serde(default)]
    pub photos_sent: BTreeMap<i64, usize>,
    /// Refused by the platform: seq → its answer. Retried once per start; they do not hold up
    /// the vehicle's later records.
    #[serde(default)]
    pub rejected: BTreeMap<i64, String>,
    /// Delivered once, re-queued by an `uplink_resend` ledger event, not yet sent again.
    #[serde(default)]
    pub resend: BTreeSet<i64>,
    #[serde(default)]
    pub kpi: Kpis,
}

/// A set of ledger seqs stored as inclusive ranges. Serialized as `[[from, to], …]`; a plain
/// list of seqs (the earlier form) is read too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqRanges(BTreeMap<i64, i64>);

impl SeqRanges {
    pub fn contains(&self, s: &i64) -> bool {
        self.0.range(..=*s).next_back().is_some_and(|(_, e)| e >= s)
    }

    pub fn insert(&mut self, s: i64) {
        if self.contains(&s) {
            return;
        }
        let mut start = s;
        let mut end = s;
        if let Some((a, b)) = self.0.range(..s).next_back() {
            if *b == s - 1 {
                start = *a;
            }
        }
        if let Some(e) = self.0.remove(&(s + 1)) {
            end = e;
        }
        self.0.insert(start, end);
    }

    /// Adds `a..=b`, merging with what overlaps or touches it.
    pub fn insert_range(&mut self, a: i64, b: i64) {
        let (mut start, mut end) = (a, b);
        let touching: Vec<(i64, i64)> = self
            .0
            .range(..=b.saturating_add(1))
            .filter(|(_, e)| **e >= a.saturating_sub(1))
            .map(|(x, y)| (*x, *y))
            .collect();
        for (x, y) in touching {
            self.0.remove(&x);
            start = start.min(x);
            end = end.max(y);
        }
        self.0.insert(start, end);
    }

    /// Drops everything at or below `c`.
    pub fn retain_above(&mut self, c: i64) {
        let below: Vec<i64> = self.0.range(..=c).map(|(a, _)| *a).collect();
        for a in below {
            if let Some(e) = self.0.remove(&a) {
                if e > c {
                    self.0.insert(c + 1, e);
                }
            }
        }
    }

    /// Number of ranges (what the state file holds).
    pub fn ranges(&self) -> usize {
        self.0.len()
    }
}

impl Serialize for SeqRanges {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(a, b)| [*a, *b]))
    }
}

impl<'de> Deserialize<'de> for SeqRanges {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            One(i64),
            Range([i64; 2]),
        }
        let mut r = SeqRanges::default();
        for it in Vec::<Item>::deserialize(d)? {
            match it {
                Item::One(s) => r.insert(s),
                Item::Range([a, b]) => {
                    if b < a {
                        return Err(serde::de::Error::custom(format!(
                            "range [{a}, {b}] runs backwards"
                        )));
                    }
                    r.insert_range(a, b);
                }
            }
        }
        Ok(r)
    }
}

/// Key performance figures of one destination (issue 7 item 4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Kpis {
    /// Passes in the ledger that are due for upload (摆杆通行, manual releases, backfills).
    pub captured: u64,
    /// Record uploads attempted (including retries and resends).
    pub sent: u64,
    /// Records the platform acknowledged (each counted once; resends are counted in `resent`).
    pub acknowledged: u64,
    pub photos_acknowledged: u64,
    /// Failed attempts (network, 5xx, refusals). Never reset: the history of trouble.
    pub failed: u64,
    /// Records currently refused by the platform.
    pub rejected: u64,
    /// Records waiting (not yet acknowledged with all photos), resends included.
    pub backlog: u64,
    /// Records acknowledged again after an `uplink resend`.
    #[serde(default)]
    pub resent: u64,
    /// Pass time of the oldest waiting record.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_ack_at: Option<DateTime<Utc>>,
    pub logins: u64,
    /// Cargo records (weighings with a cargo) the platform acknowledged.
    #[serde(default)]
    pub cargo_acknowledged: u64,
    /// The same figures per local (GMT+8) day of the pass time, `YYYY-MM-DD`, for the last
    /// [`KEPT_DAYS`] days that had passes.
    #[serde(default)]
    pub days: BTreeMap<String, DayKpis>,
}

/// One day's figures of one destination, by the pass's own (GMT+8) date: a pass recorded on
/// Monday and acknowledged on Thursday counts for Monday.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DayKpis {
    pub captured: u64,
    /// Record uploads attempted (with retries and resends).
    pub sent: u64,
    pub acknowledged: u64,
    /// Failed attempts.
    pub failed: u64,
    pub resent: u64,
    /// Waiting now.
    pub backlog: u64,
    pub oldest_pending: Option<DateTime<Utc>>,
}

impl DayKpis {
    /// Acknowledged ÷ captured (1.0 for a day with nothing captured).
    pub fn completeness(&self) -> f64 {
        ratio(self.acknowledged, self.captured)
    }
}

/// Days of figures kept in the state file (older days are dropped, the totals stay).
pub const KEPT_DAYS: usize = 366;

fn ratio(acknowledged: u64, captured: u64) -> f64 {
    if captured == 0 {
        1.0
    } else {
        // Counters and delivery marks are saved together, so a crash rolls both back and the
        // resend counts once; the cap is only a guard.
        (acknowledged as f64 / captured as f64).min(1.0)
    }
}

impl Kpis {
    /// Acknowledged ÷ captured (1.0 when nothing was captured).
    pub fn completeness(&self) -> f64 {
        ratio(self.acknowledged, self.captured)
    }

    pub fn backlog_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.oldest_pending
            .map(|t| (now - t).to_std().unwrap_or(Duration::ZERO))
    }
}

/// The local (GMT+8) date of a pass time, as the per-day key.
pub fn day_key(t: DateTime<Utc>) -> String {
    t.with_timezone(&site_zone()).format("%Y-%m-%d").to_string()
}

pub fn state_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("uplink").join(format!("{name}.state"))
}

pub fn load_state(path: &Path) -> Result<OutboxState, RegulatorError> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| RegulatorError::State {
            path: path.to_path_buf(),
            message: format!("not a valid outbox state: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(OutboxState::default()),
        Err(e) => Err(RegulatorError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
    }
}

fn write_state(path: &Path, text: &[u8]) -> Result<(), RegulatorError> {
    let err = |e: std::io::Error| RegulatorError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("state.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(text).map_err(err)?;
        // The rename must not reach the disk before the data it names.
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// How the outbox runs; [`super::RegulatorUplink::start`] fills it from the site plan.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub site: SiteFacts,
    /// Lane id → 道闸编号.
    pub lane_gates: HashMap<String, String>,
    /// Records younger than this are "live" and overtake the backlog.
    pub live_window: Duration,
    /// How often the ledger head is looked at when nothing else wakes the outbox.
    pub poll: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Records in flight at once (each with its photos). Also the most a crash can resend.
    pub window: usize,
    /// Longest wait for one HTTP exchange (connect included) before it counts as failed.
    pub request_timeout: Duration,
    /// Base URL under which the site publishes its evidence store (photo encoding `url`).
    pub photo_url_base: Option<String>,
}

impl OutboxConfig {
    pub fn new(name: &str, data_dir: &Path, site: SiteFacts) -> OutboxConfig {
        OutboxConfig {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            site,
            lane_gates: HashMap::new(),
            live_window: Duration::from_secs(60),
            poll: Duration::from_millis(100),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            window: 16,
            request_timeout: Duration::from_secs(15),
            photo_url_base: None,
        }
    }
}

/// The ledger kinds that can be a pass record.
pub const PASS_KINDS: &[&str] = &["pass_attempt", "manual_release", "backfill"];

/// The pass record an event stands for, if it is one that is uploaded (the barrier opened).
pub fn pass_record(
    e: &EventRecord,
    enterprise: &str,
    lane_gates: &HashMap<String, String>,
) -> Option<PassRecord> {
    let gate_of = |lane: &str, gate: &Option<String>| {
        lane_gates
            .get(lane)
            .cloned()
            .or_else(|| gate.clone())
            .unwrap_or_else(|| lane.to_string())
    };
    let kinds = |k: &[String]| -> Vec<(String, String)> {
        e.photos
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    k.get(i).cloned().unwrap_or_else(|| "other".into()),
                    h.clone(),
                )
            })
            .collect()
    };
    let (gate, direction, plate, color, barrier, stage, fuel, photos) = match &e.body {
        EventBody::PassAttempt(p) if p.opened => (
            gate_of(&p.lane, &p.gate),
            p.direction,
            p.plate.clone(),
            p.color,
            p.barrier,
            p.stage,
            p.fuel,
            kinds(&p.photo_kinds),
        ),
        EventBody::ManualRelease(m) => {
            let plate = m.plate.clone().filter(|p| !p.trim().is_empty())?;
            (
                gate_of(&m.lane, &m.gate),
                m.direction,
                plate,
                m.color.unwrap_or(PlateColor::Other),
                m.mode,
                None,
                None,
                kinds(&m.photo_kinds),
            )
        }
        EventBody::Backfill(b) if !b.pass.plate.trim().is_empty() => (
            gate_of(&b.pass.lane, &b.pass.gate),
            b.pass.direction,
            b.pass.plate.clone(),
            b.pass.color,
            b.pass.barrier,
            b.pass.stage,
            b.pass.fuel,
            kinds(&b.pass.photo_kinds),
        ),
        _ => return None,
    };
    Some(PassRecord {
        seq: e.seq,
        event_id: e.id.clone(),
        serial: serial_for(enterprise, &gate, direction, e.occurred_at, e.seq),
        gate,
        direction,
        plate,
        color,
        time: e.occurred_at,
        barrier,
        stage,
        fuel,
        photos,
        backfill: matches!(e.body, EventBody::Backfill(_)),
    })
}

/// The cargo record a `weighing` event stands for: one with a cargo name and a weight.
pub fn cargo_record(e: &EventRecord, lane_gates: &HashMap<String, String>) -> Option<CargoRecord> {
    let EventBody::Weighing(w) = &e.body else {
        return None;
    };
    let name = w
        .cargo
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())?;
    if w.plate.trim().is_empty() {
        return None;
    }
    let weight = w.net.or(w.gross)?;
    Some(CargoRecord {
        seq: e.seq,
        plate: w.plate.clone(),
        color: w.color,
        time: e.occurred_at,
        gate: lane_gates
            .get(&w.lane)
            .cloned()
            .unwrap_or_else(|| w.lane.clone()),
        name: name.to_string(),
        weight,
        direction: w.direction,
        pass: None,
    })
}

/// The serial platform `name` issued for the pass `e` at the vehicle check before opening.
fn check_serial(e: &EventRecord, name: &str) -> Option<String> {
    let EventBody::PassAttempt(p) = &e.body else {
        return None;
    };
    let c = p.check.as_ref()?;
    (c.platform.as_deref() == Some(name))
        .then(|| c.serial.clone())
        .flatten()
}

/// How long after an 出货 (outgoing goods) weighing its vehicle's exit pass is looked for: the
/// cargo waits this long for the exit to be recorded before it falls back to the vehicle's
/// last pass (the report's visit pairing uses the same span for a weighing before a lone exit).
pub const EXIT_WAIT: Duration = Duration::from_secs(2 * 3600);

/// The pass a cargo record goes under, when the ledger says which (docs/platforms.md, "Cargo
/// records"): the pass its `pass_ref` names (same plate, a pass that is uploaded); else for
/// an 出货 weighing the vehicle's first exit pass within [`EXIT_WAIT`] after it. `Ok(None)`:
/// the vehicle's last acknowledged pass before the weighing decides. `Err(())`: an 出货
/// weighing whose exit is not recorded yet but may still come.
fn cargo_link(
    w: &crate::ledger::Weighing,
    at: DateTime<Utc>,
    reader: &LedgerReader,
    cfg: &OutboxConfig,
    now: DateTime<Utc>,
) -> Result<Result<Option<LinkedPass>, ()>, RegulatorError> {
    let (enterprise, lane_gates) = (cfg.site.enterprise.as_str(), &cfg.lane_gates);
    let linked = |e: &EventRecord, r: PassRecord| LinkedPass {
        seq: r.seq,
        direction: r.direction,
        time: r.time,
        gate: r.gate,
        // The serial this platform issued at the check before opening, else the gate's.
        serial: check_serial(e, &cfg.name).unwrap_or(r.serial),
        through_id: None,
    };
    if let Some(id) = w.pass_ref.as_deref() {
        if let Some(e) = reader.event_by_id(id)? {
            if let Some(r) = pass_record(&e, enterprise, lane_gates).filter(|r| r.plate == w.plate)
            {
                return Ok(Ok(Some(linked(&e, r))));
            }
        }
    }
    if w.direction != Some(Direction::Out) {
        return Ok(Ok(None));
    }
    let wait = chrono::Duration::from_std(EXIT_WAIT).unwrap_or(chrono::Duration::zero());
    let exit = reader
        .events_between(PASS_KINDS, at, at + wait)?
        .into_iter()
        .filter_map(|e| pass_record(&e, enterprise, lane_gates).map(|r| (e, r)))
        .filter(|(_, r)| r.plate == w.plate && r.direction == Direction::Out && r.time >= at)
        .min_by_key(|(_, r)| (r.time, r.seq));
    match exit {
        Some((e, r)) => Ok(Ok(Some(linked(&e, r)))),
        None if now < at + wait => Ok(Err(())),
        None => Ok(Ok(None)),
    }
}

/// What waits in the outbox: a pass, or a cargo record that follows its vehicle's pass.
#[derive(Debug, Clone)]
enum Item {
    Pass(PassRecord),
    Cargo(CargoRecord),
}

impl Item {
    fn plate(&self) -> &str {
        match self {
            Item::Pass(r) => &r.plate,
            Item::Cargo(c) => &c.plate,
        }
    }
    /// The time the record is ordered by. A cargo record linked to a pass comes just after
    /// that pass, also when the pass was recorded after the weighing (出货 on an exit
    /// weighbridge): a vehicle's records go in this order, so its pass is acknowledged first.
    fn time(&self) -> DateTime<Utc> {
        match self {
            Item::Pass(r) => r.time,
            Item::Cargo(c) => match &c.pass {
                Some(p) if p.time >= c.time => p.time + chrono::Duration::milliseconds(1),
                _ => c.time,
            },
        }
    }
    fn seq(&self) -> i64 {
        match self {
            Item::Pass(r) => r.seq,
            Item::Cargo(c) => c.seq,
        }
    }
    /// For logs and `last_error`.
    fn label(&self) -> String {
        match self {
            Item::Pass(r) => r.serial.clone(),
            Item::Cargo(c) => format!("cargo {}", c.seq),
        }
    }
}

/// One line of `<name>.ids`: ids a platform issued for a record, and/or the record's
/// acknowledgement as the vehicle's latest pass (pairing, cargo). Append-only, fsynced before
/// the state that counts the delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JournalLine {
    seq: i64,
    #[serde(default, skip_serializing_if = "Issued::is_empty")]
    issued: Issued,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acked: Option<LinkedPass>,
}

pub fn journal_path(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("uplink").join(format!("{name}.ids"))
}

/// Issued ids by seq, the last acknowledged pass of each plate, and how many lines held them.
type JournalContents = (HashMap<i64, Issued>, HashMap<String, LinkedPass>, usize);

/// Reads the journal line by line (it can hold years of acknowledgements until compacted):
/// issued ids by seq, and the last acknowledged pass of each plate. A torn last line (crash
/// mid-append) is skipped; its delivery was not counted in the state either.
fn load_journal(path: &Path) -> Result<JournalContents, RegulatorError> {
    use std::io::BufRead as _;
    let state_err = |message: String| RegulatorError::State {
        path: path.to_path_buf(),
        message,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((HashMap::new(), HashMap::new(), 0))
        }
        Err(e) => return Err(state_err(e.to_string())),
    };
    let mut issued = HashMap::new();
    let mut last: HashMap<String, LinkedPass> = HashMap::new();
    let mut lines = 0;
    // A line that did not parse is an error only when another line follows it.
    let mut bad: Option<String> = None;
    for (i, l) in std::io::BufReader::new(file).lines().enumerate() {
        let l = l.map_err(|e| state_err(e.to_string()))?;
        if l.trim().is_empty() {
            continue;
        }
        if let Some(e) = bad.take() {
            return Err(state_err(e));
        }
        let j: JournalLine = match serde_json::from_str(&l) {
            Ok(j) => j,
            Err(e) => {
                bad = Some(format!("line {}: {e}", i + 1));
                continue;
            }
        };
        lines += 1;
        if !j.issued.is_empty() {
            issued.insert(j.seq, j.issued);
        }
        if let (Some(plate), Some(a)) = (j.plate, j.acked) {
            let newer = last
                .get(&plate)
                .map_or(true, |o| (o.time, o.seq) <= (a.time, a.seq));
            if newer {
                last.insert(plate, a);
            }
        }
    }
    Ok((issued, last, lines))
}

/// Lines beyond what the journal's contents need before it is rewritten at open.
const COMPACT_SLACK: usize = 10_000;

/// Rewrites the journal with one line per issued id set and one per plate's last pass: every
/// acknowledgement appends a line, so without this the file (and the time to read it at start)
/// would grow with every pass for the 24 months a site runs. Written aside, fsynced and renamed
/// over the old file, so a crash leaves either journal whole.
fn compact_journal(
    path: &Path,
    issued: &HashMap<i64, Issued>,
    last: &HashMap<String, LinkedPass>,
) -> Result<(), RegulatorError> {
    use std::io::Write as _;
    let err = |e: std::io::Error| RegulatorError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut lines: Vec<JournalLine> = issued
        .iter()
        .map(|(seq, i)| JournalLine {
            seq: *seq,
            issued: i.clone(),
            plate: None,
            acked: None,
        })
        .collect();
    lines.extend(last.iter().map(|(plate, a)| JournalLine {
        seq: a.seq,
        issued: Issued::default(),
        plate: Some(plate.clone()),
        acked: Some(a.clone()),
    }));
    lines.sort_by_key(|l| l.seq);
    let mut buf = String::new();
    for l in &lines {
        let text = serde_json::to_string(l).map_err(|e| RegulatorError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        buf.push_str(&text);
        buf.push('\n');
    }
    let tmp = path.with_extension("ids.compact");
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(buf.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(d) = path.parent() {
        std::fs::File::open(d)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// The journal file, shared by the outbox (acknowledgements) and the delivery tasks (ids issued
/// mid-delivery, written before the record that carries them is sent).
pub(crate) struct Journal {
    path: PathBuf,
    lock: Mutex<()>,
}

impl Journal {
    fn append(&self, lines: &[String]) -> Result<(), RegulatorError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        append_journal(&self.path, lines)
    }
}

fn append_journal(path: &Path, lines: &[String]) -> Result<(), RegulatorError> {
    use std::io::Write as _;
    let err = |e: std::io::Error| RegulatorError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(err)?;
    let mut buf = String::new();
    for l in lines {
        buf.push_str(l);
        buf.push('\n');
    }
    f.write_all(buf.as_bytes()).map_err(err)?;
    f.sync_data().map_err(err)
}

type Key = (DateTime<Utc>, i64);

struct Pending {
    rec: Item,
    /// Sent again after an `uplink resend` (already counted as acknowledged once).
    resend: bool,
}

/// One delivery handed to a task: the record, and where its photos stand.
struct Job {
    key: Key,
    rec: Item,
    /// `Some(n)`: the record is acknowledged and `n` photos too; `None`: send the record first.
    photos_from: Option<usize>,
    /// What the platform issued for this record before.
    issued: Issued,
    /// The vehicle's last acknowledged pass.
    last: Option<LinkedPass>,
}

/// What a delivery task did.
struct Outcome {
    key: Key,
    /// The record upload was attempted.
    attempted: bool,
    /// The record was acknowledged in this delivery.
    record_acked: bool,
    /// Photos acknowledged in this delivery.
    photos_acked: u64,
    /// Photos settled so far (acknowledged or unreadable), when the record is acknowledged.
    photos_done: Option<usize>,
    result: Result<(), SendError>,
    logins: u64,
    /// What the platform has issued for the record by now (kept even when the delivery failed).
    issued: Issued,
    /// What the delivery itself wrote to the journal.
    journaled: Issued,
}

pub(crate) struct Outbox {
    cfg: OutboxConfig,
    path: PathBuf,
    state: OutboxState,
    /// Waiting records keyed by (pass time, seq): the backlog order.
    pending: BTreeMap<Key, Pending>,
    /// Waiting records of each plate, in pass-time order (causal order per vehicle).
    by_plate: HashMap<String, BTreeSet<Key>>,
    /// Seqs of waiting records that are not resends: the lowest bounds the cursor.
    fresh: BTreeSet<i64>,
    /// Waiting records per day, for the per-day backlog.
    pending_days: BTreeMap<String, u64>,
    /// Refused in this run: skipped until the next start (or a resend).
    parked: BTreeSet<i64>,
    /// In flight: handed to a task, outcome not yet on disk.
    busy: HashSet<i64>,
    busy_plates: HashSet<String>,
    kpis: Arc<Mutex<Kpis>>,
    dirty: bool,
    /// Weighings with a cargo are uploaded (the shape has a cargo form).
    cargo: bool,
    journal: Arc<Journal>,
    issued: HashMap<i64, Issued>,
    last_pass: HashMap<String, LinkedPass>,
    /// Journal lines not yet on disk.
    journal_out: Vec<String>,
    /// 出货 cargo records waiting for their vehicle's exit pass to be recorded, by seq, with
    /// whether they are resends. Their seqs hold the cursor (in `fresh`) so a restart finds
    /// them again.
    awaiting_exit: BTreeMap<i64, (CargoRecord, bool)>,
}

const SCAN_BATCH: usize = 1000;

impl Outbox {
    pub(crate) fn open(
        cfg: OutboxConfig,
        reader: &LedgerReader,
        kpis: Arc<Mutex<Kpis>>,
        cargo: bool,
    ) -> Result<Outbox, RegulatorError> {
        let path = state_path(&cfg.data_dir, &cfg.name);
        let state = load_state(&path)?;
        let journal = journal_path(&cfg.data_dir, &cfg.name);
        let (issued, last_pass, lines) = load_journal(&journal)?;
        if lines > issued.len() + last_pass.len() + COMPACT_SLACK {
            compact_journal(&journal, &issued, &last_pass)?;
            tracing::info!(destination = %cfg.name, lines, kept = issued.len() + last_pass.len(), "issued-id journal compacted");
        }
        let journal = Arc::new(Journal {
            path: journal,
            lock: Mutex::new(()),
        });
        let mut o = Outbox {
            cargo,
            journal,
            issued,
            last_pass,
            journal_out: Vec::new(),
            awaiting_exit: BTreeMap::new(),
            cfg,
            path,
            state,
            pending: BTreeMap::new(),
            by_plate: HashMap::new(),
            fresh: BTreeSet::new(),
            pending_days: BTreeMap::new(),
            parked: BTreeSet::new(),
            busy: HashSet::new(),
            busy_plates: HashSet::new(),
            kpis,
            dirty: true,
        };
        // Rebuild the waiting set from the ledger itself: nothing about a record but its
        // delivery progress is kept outside the ledger.
        let requeued: Vec<i64> = o.state.resend.iter().copied().collect();
        for seq in requeued {
            if seq > o.state.cursor && !o.state.done.contains(&seq) {
                continue; // still waiting as a first delivery; the scan below finds it
            }
            match reader.event(seq)? {
                Some(e) => o.consider(&e, reader)?,
                None => {
                    o.state.resend.remove(&seq);
                }
            }
        }
        let mut after = o.state.cursor;
        loop {
            let batch = reader.events_after(after, SCAN_BATCH)?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                o.consider(e, reader)?;
            }
        }
        o.state.scanned = o.state.scanned.max(after);
        o.settle();
        o.publish();
        Ok(o)
    }

    fn day_mut(&mut self, t: DateTime<Utc>) -> &mut DayKpis {
        let key = day_key(t);
        let days = &mut self.state.kpi.days;
        if !days.contains_key(&key) {
            days.insert(key.clone(), DayKpis::default());
            while days.len() > KEPT_DAYS {
                days.pop_first();
            }
        }
        // An old backfill can name a day that was just dropped; it gets a fresh row.
        days.entry(key).or_default()
    }

    fn insert_pending(&mut self, r: Item, resend: bool) {
        let key = (r.time(), r.seq());
        if self.pending.contains_key(&key) {
            return;
        }
        self.by_plate
            .entry(r.plate().to_string())
            .or_default()
            .insert(key);
        if !resend {
            self.fresh.insert(r.seq());
        }
        *self.pending_days.entry(day_key(r.time())).or_default() += 1;
        self.pending.insert(key, Pending { rec: r, resend });
    }

    fn remove_pending(&mut self, key: &Key) -> Option<Pending> {
        let p = self.pending.remove(key)?;
        if let Some(s) = self.by_plate.get_mut(p.rec.plate()) {
            s.remove(key);
            if s.is_empty() {
                self.by_plate.remove(p.rec.plate());
            }
        }
        self.fresh.remove(&p.rec.seq());
        let day = day_key(p.rec.time());
        if let Some(n) = self.pending_days.get_mut(&day) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending_days.remove(&day);
            }
        }
        Some(p)
    }

    fn consider(&mut self, e: &EventRecord, reader: &LedgerReader) -> Result<(), RegulatorError> {
        if let EventBody::UplinkResend(rs) = &e.body {
            if rs.platform == self.cfg.name && e.seq > self.state.scanned {
                self.requeue(rs.from, rs.to, reader)?;
            }
        }
        let Some(r) = pass_record(e, &self.cfg.site.enterprise, &self.cfg.lane_gates) else {
            let cargo = if self.cargo {
                cargo_record(e, &self.cfg.lane_gates)
            } else {
                None
            };
            let fresh = e.seq > self.state.cursor && !self.state.done.contains(&e.seq);
            match cargo {
                Some(c) if fresh => self.queue_cargo(e, c, false, reader)?,
                Some(c) if self.state.resend.contains(&e.seq) => {
                    self.queue_cargo(e, c, true, reader)?
                }
                _ => {
                    // Nothing to send: settled (keeps the settled ranges whole).
                    if e.seq > self.state.cursor {
                        self.state.done.insert(e.seq);
                    }
                }
            }
            return Ok(());
        };
        self.note_check_serial(e);
        if r.direction == Direction::Out {
            self.exit_recorded(&r);
        }
        if e.seq > self.state.scanned {
            self.state.kpi.captured += 1;
            self.day_mut(r.time).captured += 1;
            self.dirty = true;
        }
        let fresh = e.seq > self.state.cursor && !self.state.done.contains(&e.seq);
        if fresh {
            self.insert_pending(Item::Pass(r), false);
        } else if self.state.resend.contains(&e.seq) {
            self.insert_pending(Item::Pass(r), true);
        }
        Ok(())
    }

    /// A pass the site's vehicle check numbered with this platform's serial (kaifeng
    /// `/transport/check` before opening, recorded as `check.serial`) is uploaded under it:
    /// the platform is not asked for another.
    fn note_check_serial(&mut self, e: &EventRecord) {
        let Some(serial) = check_serial(e, &self.cfg.name) else {
            return;
        };
        let issued = self.issued.entry(e.seq).or_default();
        if issued.serial.is_none() {
            issued.serial = Some(serial);
        }
    }

    /// Queues a cargo record, linked to its pass when the ledger says which; an 出货 weighing
    /// whose exit pass is not recorded yet waits for it (see [`cargo_link`]).
    fn queue_cargo(
        &mut self,
        e: &EventRecord,
        mut c: CargoRecord,
        resend: bool,
        reader: &LedgerReader,
    ) -> Result<(), RegulatorError> {
        let EventBody::Weighing(w) = &e.body else {
            return Ok(());
        };
        match cargo_link(w, e.occurred_at, reader, &self.cfg, Utc::now())? {
            Ok(link) => {
                c.pass = link;
                self.insert_pending(Item::Cargo(c), resend);
            }
            Err(()) => {
                if !resend {
                    self.fresh.insert(c.seq);
                }
                self.awaiting_exit.insert(c.seq, (c, resend));
            }
        }
        Ok(())
    }

    /// An exit pass was recorded: the 出货 cargo records of its vehicle waiting for it go.
    fn exit_recorded(&mut self, r: &PassRecord) {
        let wait = chrono::Duration::from_std(EXIT_WAIT).unwrap_or(chrono::Duration::zero());
        let due: Vec<i64> = self
            .awaiting_exit
            .iter()
            .filter(|(_, (c, _))| c.plate == r.plate && c.time <= r.time && r.time <= c.time + wait)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            if let Some((mut c, resend)) = self.awaiting_exit.remove(&seq) {
                c.pass = Some(LinkedPass {
                    seq: r.seq,
                    direction: r.direction,
                    time: r.time,
                    gate: r.gate.clone(),
                    serial: r.serial.clone(),
                    through_id: None,
                });
                self.insert_pending(Item::Cargo(c), resend);
            }
        }
    }

    /// 出货 cargo records whose exit pass did not come within [`EXIT_WAIT`] go under the
    /// vehicle's last pass before the weighing.
    pub(crate) fn expire_awaiting_exit(&mut self, now: DateTime<Utc>) {
        let wait = chrono::Duration::from_std(EXIT_WAIT).unwrap_or(chrono::Duration::zero());
        let due: Vec<i64> = self
            .awaiting_exit
            .iter()
            .filter(|(_, (c, _))| now >= c.time + wait)
            .map(|(s, _)| *s)
            .collect();
        for seq in due {
            if let Some((c, resend)) = self.awaiting_exit.remove(&seq) {
                tracing::info!(destination = %self.cfg.name, plate = %c.plate, seq,
                    "no exit pass after the 出货 weighing; its cargo goes under the last pass");
                self.insert_pending(Item::Cargo(c), resend);
                self.dirty = true;
            }
        }
    }

    /// Queues again every delivered pass and cargo record of `[from, to)`; refused ones get
    /// another try. Cargo records go again under the serial they were sent under.
    fn requeue(
        &mut self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reader: &LedgerReader,
    ) -> Result<(), RegulatorError> {
        let mut n = 0u64;
        let mut cargo = 0u64;
        for e in reader.events_between(PASS_KINDS, from, to)? {
            let Some(r) = pass_record(&e, &self.cfg.site.enterprise, &self.cfg.lane_gates) else {
                continue;
            };
            self.parked.remove(&e.seq);
            let delivered = e.seq <= self.state.cursor || self.state.done.contains(&e.seq);
            if delivered && self.state.resend.insert(e.seq) {
                self.note_check_serial(&e);
                self.insert_pending(Item::Pass(r), true);
                n += 1;
            }
        }
        if self.cargo {
            for e in reader.events_between(&["weighing"], from, to)? {
                let Some(c) = cargo_record(&e, &self.cfg.lane_gates) else {
                    continue;
                };
                self.parked.remove(&e.seq);
                let delivered = e.seq <= self.state.cursor || self.state.done.contains(&e.seq);
                if delivered && self.state.resend.insert(e.seq) {
                    self.queue_cargo(&e, c, true, reader)?;
                    cargo += 1;
                }
            }
        }
        self.dirty = true;
        tracing::info!(destination = %self.cfg.name, from = %from, to = %to, records = n,
            cargo, "passes and cargo records queued again by uplink_resend");
        Ok(())
    }

    /// Reads new events; true if any arrived.
    pub(crate) fn scan(&mut self, reader: &LedgerReader) -> Result<bool, RegulatorError> {
        let mut any = false;
        loop {
            let batch = reader.events_after(self.state.scanned, SCAN_BATCH)?;
            let Some(last) = batch.last().map(|e| e.seq) else {
                break;
            };
            for e in &batch {
                self.consider(e, reader)?;
            }
            self.state.scanned = last;
            any = true;
        }
        if any {
            self.dirty = true;
            self.settle();
        }
        Ok(any)
    }

    /// May `key` go now? Not refused in this run, not in flight, its vehicle has nothing in
    /// flight, and it is the vehicle's earliest record still to go.
    fn ready(&self, key: &Key, p: &Pending) -> bool {
        !self.parked.contains(&key.1)
            && !self.busy.contains(&key.1)
            && !self.busy_plates.contains(p.rec.plate())
            && self.first_open_of(p.rec.plate()) == Some(*key)
    }

    fn first_open_of(&self, plate: &str) -> Option<Key> {
        self.by_plate
            .get(plate)?
            .iter()
            .find(|k| !self.parked.contains(&k.1))
            .copied()
    }

    /// The next record to send, if any: the earliest live record's vehicle first (its own
    /// earlier records before it), else the oldest of the backlog.
    pub(crate) fn pick(&self, now: DateTime<Utc>) -> Option<Key> {
        let live_from = now
            - chrono::Duration::from_std(self.cfg.live_window).unwrap_or(chrono::Duration::zero());
        for (k, p) in self.pending.range((live_from, i64::MIN)..) {
            if self.parked.contains(&k.1)
                || self.busy.contains(&k.1)
                || self.busy_plates.contains(p.rec.plate())
            {
                continue;
            }
            if let Some(first) = self.first_open_of(p.rec.plate()) {
                return Some(first);
            }
        }
        self.pending
            .iter()
            .find(|(k, p)| self.ready(k, p))
            .map(|(k, _)| *k)
    }

    fn take_job(&mut self, key: Key) -> Option<Job> {
        let p = self.pending.get(&key)?;
        let mut rec = p.rec.clone();
        if let Item::Cargo(c) = &mut rec {
            // The linked pass is known by the serial the platform issued for it, if any.
            if let Some(lp) = &mut c.pass {
                if let Some(s) = self.issued.get(&lp.seq).and_then(|i| i.serial.clone()) {
                    lp.serial = s;
                }
            }
        }
        self.busy.insert(key.1);
        self.busy_plates.insert(rec.plate().to_string());
        Some(Job {
            key,
            photos_from: self.state.photos_sent.get(&key.1).copied(),
            issued: self.issued.get(&key.1).cloned().unwrap_or_default(),
            last: self.last_pass.get(rec.plate()).cloned(),
            rec,
        })
    }

    /// Moves the cursor up to just below the oldest unsettled first delivery.
    fn settle(&mut self) {
        let lowest = self.fresh.first().copied().unwrap_or(i64::MAX);
        let cursor = self.state.scanned.min(lowest.saturating_sub(1));
        if cursor > self.state.cursor {
            self.state.cursor = cursor;
        }
        let c = self.state.cursor;
        let resend = &self.state.resend;
        self.state.done.retain_above(c);
        self.state
            .photos_sent
            .retain(|s, _| *s > c || resend.contains(s));
    }

    fn publish(&mut self) {
        let k = &mut self.state.kpi;
        // 出货 cargo records waiting for their exit pass are waiting too.
        k.backlog = (self.pending.len() + self.awaiting_exit.len()) as u64;
        k.oldest_pending = self.pending.keys().next().map(|(t, _)| *t);
        k.rejected = self.state.rejected.len() as u64;
        for (day, d) in k.days.iter_mut() {
            match self.pending_days.get(day) {
                Some(n) => {
                    d.backlog = *n;
                    d.oldest_pending = parse_date(day)
                        .map(local_day_start)
                        .and_then(|start| self.pending.range((start, i64::MIN)..).next())
                        .map(|(k, _)| k.0);
                }
                None => {
                    d.backlog = 0;
                    d.oldest_pending = None;
                }
            }
        }
        if let Ok(mut g) = self.kpis.lock() {
            *g = k.clone();
        }
    }

    /// Writes the state if it changed (one fsync for every outcome applied since the last
    /// write) and publishes the figures.
    async fn save(&mut self) {
        if !self.dirty {
            return;
        }
        self.publish();
        let text = match serde_json::to_vec(&self.state) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(destination = %self.cfg.name, error = %e, "cannot encode outbox state");
                return;
            }
        };
        let path = self.path.clone();
        let journal = self.journal.clone();
        let lines = std::mem::take(&mut self.journal_out);
        let r = tokio::task::spawn_blocking(move || {
            // Issued ids reach the disk before the state that counts their delivery.
            if !lines.is_empty() {
                if let Err(e) = journal.append(&lines) {
                    return (Err(e), lines);
                }
            }
            (write_state(&path, &text), Vec::new())
        })
        .await;
        let r = match r {
            Ok((r, unwritten)) => {
                if !unwritten.is_empty() {
                    self.journal_out = unwritten;
                }
                r
            }
            Err(e) => Err(RegulatorError::State {
                path: self.path.clone(),
                message: format!("writer task failed: {e}"),
            }),
        };
        match r {
            Ok(()) => self.dirty = false,
            // Losing the state only means resending with the same serials; say so loudly.
            Err(e) => {
                tracing::error!(destination = %self.cfg.name, error = %e, "cannot save outbox state")
            }
        }
    }

    fn note_failure(&mut self, r: &Item, e: &SendError) {
        self.state.kpi.failed += 1;
        if let Item::Pass(p) = r {
            self.day_mut(p.time).failed += 1;
        }
        let label = r.label();
        self.state.kpi.last_error = Some(format!("{label} ({}): {e}", r.plate()));
        self.state.kpi.last_error_at = Some(Utc::now());
        tracing::warn!(destination = %self.cfg.name, serial = %label, plate = %r.plate(),
            seq = r.seq(), error = %e, "upload failed");
        if let SendError::Rejected(m) = e {
            self.state.rejected.insert(r.seq(), m.clone());
            self.parked.insert(r.seq());
        }
    }

    /// Keeps what the platform issued for `seq` (memory now, journal at the next save unless
    /// the delivery already wrote exactly that).
    fn note_issued(&mut self, seq: i64, issued: &Issued, journaled: &Issued) {
        if issued.is_empty() || self.issued.get(&seq) == Some(issued) {
            return;
        }
        self.issued.insert(seq, issued.clone());
        if issued == journaled {
            return;
        }
        self.push_journal(JournalLine {
            seq,
            issued: issued.clone(),
            plate: None,
            acked: None,
        });
    }

    fn push_journal(&mut self, line: JournalLine) {
        match serde_json::to_string(&line) {
            Ok(l) => self.journal_out.push(l),
            Err(e) => {
                tracing::error!(destination = %self.cfg.name, error = %e, "cannot encode journal line")
            }
        }
    }

    /// Applies a finished delivery to the state (in memory; [`Outbox::save`] makes it durable).
    fn apply(&mut self, o: Outcome) {
        self.dirty = true;
        self.state.kpi.logins = self.state.kpi.logins.max(o.logins);
        let seq = o.key.1;
        self.busy.remove(&seq);
        let Some(p) = self.pending.get(&o.key) else {
            return;
        };
        let (item, resend) = (p.rec.clone(), p.resend);
        self.busy_plates.remove(item.plate());
        self.note_issued(seq, &o.issued, &o.journaled);
        let rec = match item {
            Item::Pass(r) => r,
            Item::Cargo(c) => {
                match &o.result {
                    Ok(()) => {
                        if resend {
                            self.state.resend.remove(&seq);
                        } else {
                            self.state.kpi.cargo_acknowledged += 1;
                            self.state.done.insert(seq);
                        }
                        self.state.rejected.remove(&seq);
                        self.remove_pending(&o.key);
                    }
                    Err(e) => self.note_failure(&Item::Cargo(c), e),
                }
                return;
            }
        };
        if o.attempted {
            self.state.kpi.sent += 1;
            self.day_mut(rec.time).sent += 1;
        }
        if o.record_acked {
            let linked = LinkedPass {
                seq,
                direction: rec.direction,
                time: rec.time,
                gate: rec.gate.clone(),
                serial: o
                    .issued
                    .serial
                    .clone()
                    .unwrap_or_else(|| rec.serial.clone()),
                through_id: o.issued.through_id.clone(),
            };
            let newer = self
                .last_pass
                .get(&rec.plate)
                .map_or(true, |l| (l.time, l.seq) <= (linked.time, linked.seq));
            if newer {
                self.last_pass.insert(rec.plate.clone(), linked.clone());
            }
            self.push_journal(JournalLine {
                seq,
                issued: Issued::default(),
                plate: Some(rec.plate.clone()),
                acked: Some(linked),
            });
            self.state.rejected.remove(&seq);
            let now = Utc::now();
            self.state.kpi.last_ack_at = Some(now);
            if resend {
                self.state.kpi.resent += 1;
                self.day_mut(rec.time).resent += 1;
            } else {
                self.state.kpi.acknowledged += 1;
                self.day_mut(rec.time).acknowledged += 1;
            }
        }
        self.state.kpi.photos_acknowledged += o.photos_acked;
        if let Some(n) = o.photos_done {
            self.state.photos_sent.insert(seq, n);
        }
        match &o.result {
            Ok(()) => {
                self.state.photos_sent.remove(&seq);
                if resend {
                    self.state.resend.remove(&seq);
                } else {
                    self.state.done.insert(seq);
                }
                self.remove_pending(&o.key);
                tracing::debug!(destination = %self.cfg.name, serial = %rec.serial, "delivered");
            }
            Err(e) => self.note_failure(&Item::Pass(rec), e),
        }
    }
}

/// One record and its photos, as a task of its own so that several can be in flight.
async fn deliver(
    client: Arc<PlatformClient>,
    photos: PhotoSource,
    site: SiteFacts,
    journal: Arc<Journal>,
    job: Job,
) -> Outcome {
    let mut out = Outcome {
        key: job.key,
        attempted: false,
        record_acked: false,
        photos_acked: 0,
        photos_done: job.photos_from,
        result: Ok(()),
        logins: 0,
        issued: job.issued.clone(),
        journaled: Issued::default(),
    };
    let r = match &job.rec {
        Item::Pass(r) => r,
        Item::Cargo(c) => {
            // Its pass: the serial it was sent under before (a resend), else the pass the
            // ledger links it to, else the vehicle's last acknowledged pass before the
            // weighing (the outbox sends a vehicle's records in time order, so that pass
            // went first).
            out.attempted = true;
            let before = job.issued.serial.clone().map(|serial| LinkedPass {
                seq: 0,
                direction: c.direction.unwrap_or(Direction::In),
                time: c.time,
                gate: job
                    .issued
                    .pass_gate
                    .clone()
                    .unwrap_or_else(|| c.gate.clone()),
                serial,
                through_id: None,
            });
            let pass = before
                .or_else(|| c.pass.clone())
                .or_else(|| job.last.clone().filter(|l| l.time <= c.time));
            out.result = match pass {
                Some(pass) => {
                    out.issued.serial = Some(pass.serial.clone());
                    out.issued.pass_gate = Some(pass.gate.clone());
                    client.send_cargo(&site, c, &pass).await
                }
                None => Err(SendError::Rejected(format!(
                    "no acknowledged pass of {} before this weighing to attach the cargo to",
                    c.plate
                ))),
            };
            out.logins = client.logins();
            return out;
        }
    };
    let from = match job.photos_from {
        Some(n) => n,
        None => {
            out.attempted = true;
            // Ids the platform issues before the upload (kaifeng serials) are on disk before
            // the record goes: a crash after the upload then resends under the same serial.
            if let Err(e) = client.prepare(r, &mut out.issued).await {
                out.result = Err(e);
                out.logins = client.logins();
                return out;
            }
            if out.issued != job.issued {
                let line = JournalLine {
                    seq: r.seq,
                    issued: out.issued.clone(),
                    plate: None,
                    acked: None,
                };
                let j = journal.clone();
                let l = serde_json::to_string(&line).unwrap_or_default();
                let w = tokio::task::spawn_blocking(move || j.append(&[l])).await;
                match w {
                    Ok(Ok(())) => out.journaled = out.issued.clone(),
                    Ok(Err(e)) => {
                        out.result = Err(SendError::Transient(format!("journal: {e}")));
                        return out;
                    }
                    Err(e) => {
                        out.result = Err(SendError::Transient(format!("journal writer: {e}")));
                        return out;
                    }
                }
            }
            let res = client
                .send_pass(&site, r, job.last.as_ref(), &photos, &mut out.issued)
                .await;
            if let Err(e) = res {
                out.result = Err(e);
                out.logins = client.logins();
                return out;
            }
            out.record_acked = true;
            out.photos_done = Some(0);
            0
        }
    };
    if !client.separate_photos() {
        out.photos_done = Some(r.photos.len());
        out.logins = client.logins();
        return out;
    }
    for (i, (role, hash)) in r.photos.iter().enumerate().skip(from) {
        let store = photos.store.clone();
        let h = hash.clone();
        let bytes = tokio::task::spawn_blocking(move || store.get(&h)).await;
        match bytes {
            Ok(Ok(bytes)) => {
                if let Err(e) = client.send_photo(&site, r, i + 1, role, &bytes).await {
                    out.result = Err(e);
                    break;
                }
                out.photos_acked += 1;
            }
            Ok(Err(e)) => {
                // Purged or lost evidence: the record stands without it (verify reports it).
                tracing::warn!(serial = %r.serial, photo = %hash, error = %e,
                    "photo not readable; not uploaded");
            }
            Err(e) => {
                out.result = Err(SendError::Transient(format!("photo reader failed: {e}")));
                break;
            }
        }
        out.photos_done = Some(i + 1);
    }
    out.logins = client.logins();
    out
}

/// The delivery loop: scan, fill the window, apply outcomes in groups, back off on failure.
/// Ends when `stop` turns true, after the deliveries in flight have finished.
pub(crate) async fn run(
    cfg: OutboxConfig,
    client: PlatformClient,
    ledger: Ledger,
    kpis: Arc<Mutex<Kpis>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RegulatorError> {
    let reader = ledger.reader()?;
    let poll = cfg.poll;
    let window = cfg.window.max(1);
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let name = cfg.name.clone();
    let site = cfg.site.clone();
    let photos = PhotoSource {
        store: ledger.photos().clone(),
        url_base: cfg.photo_url_base.clone(),
    };
    let cargo = client.uploads_cargo();
    let client = Arc::new(client);
    // Reading a large backlog back from the ledger takes a while: not on a runtime thread.
    let (mut ob, reader) = tokio::task::spawn_blocking(move || {
        Outbox::open(cfg, &reader, kpis, cargo).map(|ob| (ob, reader))
    })
    .await
    .map_err(|e| RegulatorError::Config {
        platform: name.clone(),
        message: format!("opening the outbox failed: {e}"),
    })??;
    ob.save().await;
    tracing::info!(destination = %name, backlog = ob.pending.len(), cursor = ob.state.cursor,
        "regulator uplink started");
    let mut tasks: tokio::task::JoinSet<Outcome> = tokio::task::JoinSet::new();
    let mut running: HashMap<tokio::task::Id, Key> = HashMap::new();
    // After a transient failure: nothing new goes before `paused_until`, then one record at a
    // time until one gets through (an outage costs one failed attempt per pause, not `window`).
    let mut paused_until: Option<Instant> = None;
    let mut probing = false;
    loop {
        if *stop.borrow() {
            break;
        }
        ob.expire_awaiting_exit(Utc::now());
        if ledger.head().seq > ob.state.scanned {
            if let Err(e) = ob.scan(&reader) {
                // A ledger read error must not end the uplink quietly: count it, show it, and
                // try again after a pause.
                ob.state.kpi.failed += 1;
                ob.state.kpi.last_error = Some(format!("reading the ledger: {e}"));
                ob.state.kpi.last_error_at = Some(Utc::now());
                ob.publish();
                tracing::error!(destination = %name, error = %e, "cannot read the ledger");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        }
        ob.save().await;
        let now = Instant::now();
        if paused_until.is_some_and(|t| now >= t) {
            paused_until = None;
        }
        if paused_until.is_none() {
            let cap = if probing { 1 } else { window };
            while tasks.len() < cap {
                let Some(job) = ob.pick(Utc::now()).and_then(|k| ob.take_job(k)) else {
                    break;
                };
                let key = job.key;
                let h = tasks.spawn(deliver(
                    client.clone(),
                    photos.clone(),
                    site.clone(),
                    ob.journal.clone(),
                    job,
                ));
                running.insert(h.id(), key);
            }
        }
        let wait = paused_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(poll)
            .min(poll);
        if tasks.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        tokio::select! {
            first = tasks.join_next_with_id() => {
                let mut next = first;
                // Everything that has finished by now goes into one state write.
                while let Some(r) = next {
                    let o = outcome_of(r, &mut running);
                    match &o.result {
                        Ok(()) => {
                            backoff.reset();
                            probing = false;
                        }
                        Err(SendError::Transient(_)) => {
                            probing = true;
                            if paused_until.is_none() {
                                paused_until = Some(Instant::now() + backoff.next_delay());
                            }
                        }
                        Err(SendError::Rejected(_)) => {}
                    }
                    ob.apply(o);
                    next = tasks.try_join_next_with_id();
                }
                ob.settle();
                ob.save().await;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    // Stopping: let what is in flight finish so its outcome is kept.
    while let Some(r) = tasks.join_next_with_id().await {
        let o = outcome_of(r, &mut running);
        ob.apply(o);
    }
    ob.settle();
    ob.save().await;
    Ok(())
}

fn outcome_of(
    r: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>,
    running: &mut HashMap<tokio::task::Id, Key>,
) -> Outcome {
    match r {
        Ok((id, o)) => {
            running.remove(&id);
            o
        }
        Err(e) => {
            // A delivery task that panicked: its record goes again, like after a failure.
            let key = running
                .remove(&e.id())
                .unwrap_or((DateTime::<Utc>::UNIX_EPOCH, i64::MIN));
            tracing::error!(seq = key.1, error = %e, "delivery task failed");
            Outcome {
                key,
                attempted: false,
                record_acked: false,
                photos_acked: 0,
                photos_done: None,
                result: Err(SendError::Transient(format!("delivery task failed: {e}"))),
                logins: 0,
                issued: Issued::default(),
                journaled: Issued::default(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_ranges_merge_trim_and_read_both_forms() {
        let mut r = SeqRanges::default();
        for s in [5, 7, 6, 10, 1, 2, 12, 11] {
            r.insert(s);
        }
        assert_eq!(serde_json::to_string(&r).unwrap(), "[[1,2],[5,7],[10,12]]");
        assert!(r.contains(&6) && r.contains(&12) && !r.contains(&3) && !r.contains(&13));
        r.retain_above(6);
        assert_eq!(serde_json::to_string(&r).unwrap(), "[[7,7],[10,12]]");
        r.insert_range(3, 9);
        assert_eq!(serde_json::to_string(&r).unwrap(), "[[3,12]]");
        let old: SeqRanges = serde_json::from_str("[4, 5, 6, 9]").unwrap();
        assert_eq!(serde_json::to_string(&old).unwrap(), "[[4,6],[9,9]]");
        let mixed: SeqRanges = serde_json::from_str("[[1,3], 4, [8, 9], [2, 8]]").unwrap();
        assert_eq!(mixed.ranges(), 1);
        assert!(serde_json::from_str::<SeqRanges>("[[5, 1]]").is_err());
    }

    #[test]
    fn journal_keeps_issued_ids_and_the_latest_pass_per_plate_and_skips_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uplink/x.ids");
        let t = |m: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(m);
        let acked = |seq: i64, m: i64, dir: crate::ledger::Direction, id: &str| JournalLine {
            seq,
            issued: Issued::default(),
            plate: Some("豫A1".into()),
            acked: Some(LinkedPass {
                seq,
                direction: dir,
                time: t(m),
                gate: "01".into(),
                serial: format!("S{seq}"),
                through_id: Some(id.into()),
            }),
        };
        let issued = JournalLine {
            seq: 7,
            issued: Issued {
                serial: Some("KF1".into()),
                through_id: None,
                pass_gate: None,
            },
            plate: None,
            acked: None,
        };
        let lines: Vec<String> = [
            issued,
            acked(9, 30, crate::ledger::Direction::In, "T9"),
            // A backfill of an older pass, acknowledged later: not the vehicle's latest.
            acked(12, 10, crate::ledger::Direction::Out, "T12"),
        ]
        .iter()
        .map(|l| serde_json::to_string(l).unwrap())
        .collect();
        append_journal(&path, &lines).unwrap();
        // A crash mid-append leaves half a line.
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":13,\"iss").unwrap();
        let (ids, last, _) = load_journal(&path).unwrap();
        assert_eq!(ids[&7].serial.as_deref(), Some("KF1"));
        assert_eq!(last["豫A1"].seq, 9);
        assert_eq!(last["豫A1"].through_id.as_deref(), Some("T9"));
        // Damage before the last line is an error, not silently skipped.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("garbage\n{text}")).unwrap();
        assert!(load_journal(&path).is_err());
    }

    #[test]
    fn a_compacted_journal_reads_back_the_same_and_keeps_one_line_per_need() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uplink/x.ids");
        let t = |m: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(m);
        let mut lines = Vec::new();
        // 5 plates, 400 acknowledged passes each, and every 10th pass with issued ids.
        for seq in 1..=2000i64 {
            if seq % 10 == 0 {
                lines.push(JournalLine {
                    seq,
                    issued: Issued {
                        serial: Some(format!("KF{seq}")),
                        through_id: None,
                        pass_gate: None,
                    },
                    plate: None,
                    acked: None,
                });
            }
            lines.push(JournalLine {
                seq,
                issued: Issued::default(),
                plate: Some(format!("豫A{}", seq % 5)),
                acked: Some(LinkedPass {
                    seq,
                    direction: crate::ledger::Direction::In,
                    time: t(seq),
                    gate: "01".into(),
                    serial: format!("S{seq}"),
                    through_id: None,
                }),
            });
        }
        let text: Vec<String> = lines
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect();
        append_journal(&path, &text).unwrap();
        let (ids, last, n) = load_journal(&path).unwrap();
        assert_eq!((ids.len(), last.len(), n), (200, 5, 2200));
        compact_journal(&path, &ids, &last).unwrap();
        let (ids2, last2, n2) = load_journal(&path).unwrap();
        assert_eq!(n2, 205, "one line per issued set and per plate");
        assert_eq!(ids2, ids);
        assert_eq!(last2, last);
        assert_eq!(last2["豫A0"].seq, 2000);
        // Appends after compaction are read as before.
        append_journal(&path, &text[..1]).unwrap();
        assert_eq!(load_journal(&path).unwrap().2, 206);
    }

    #[test]
    fn cargo_tonnes_have_three_decimals() {
        let c = CargoRecord {
            seq: 1,
            plate: "豫A1".into(),
            color: PlateColor::Yellow,
            time: Utc::now(),
            gate: "01".into(),
            name: "煤".into(),
            weight: ecogate_drivers::Mass::from_grams(32_505_000),
            direction: None,
            pass: None,
        };
        assert_eq!(c.tonnes(), "32.505");
        let c = CargoRecord {
            weight: ecogate_drivers::Mass::from_kg(40),
            ..c
        };
        assert_eq!(c.tonnes(), "0.040");
    }
}
