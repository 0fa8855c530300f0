//! The outbox of one destination: a cursor over the ledger plus the delivery state of the
//! records above it. The records themselves are never copied — after a restart they are read
//! again from the ledger — so the outbox cannot drift from what the ledger holds.
//!
//! Order: one record at a time. Records that happened within `live_window` go first so the
//! platform sees the present; everything older (the backlog) drains oldest first. Before any
//! record of a vehicle goes, every earlier pending record of that vehicle goes (entry before
//! exit), and a record's photos follow its acknowledgement before the next record is sent.

use super::transport_control::{serial_for, PassRecord, SendError, SiteFacts, TcClient};
use super::RegulatorError;
use crate::ledger::{EventBody, EventRecord, Ledger, LedgerReader};
use chrono::{DateTime, Utc};
use ecogate_drivers::plate::PlateColor;
use ecogate_drivers::Backoff;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Persisted per destination in `data_dir/uplink/<name>.state` (JSON, replaced atomically).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutboxState {
    /// Every event with `seq <= cursor` is settled (delivered or not for upload).
    pub cursor: i64,
    /// Highest seq examined; `captured` counts the uploadable events up to here.
    pub scanned: i64,
    /// Delivered (record and photos acknowledged) above the cursor.
    #[serde(default)]
    pub done: BTreeSet<i64>,
    /// Record acknowledged, photos not all yet: seq → photos acknowledged so far.
    #[serde(default)]
    pub photos_sent: BTreeMap<i64, usize>,
    /// Refused by the platform: seq → its answer. Retried once per start; they do not hold up
    /// the vehicle's later records.
    #[serde(default)]
    pub rejected: BTreeMap<i64, String>,
    #[serde(default)]
    pub kpi: Kpis,
}

/// Key performance figures of one destination (issue 7 item 4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Kpis {
    /// Passes in the ledger that are due for upload (摆杆通行, manual releases, backfills).
    pub captured: u64,
    /// Record uploads attempted (including retries and resends).
    pub sent: u64,
    /// Records the platform acknowledged (each counted once).
    pub acknowledged: u64,
    pub photos_acknowledged: u64,
    /// Failed attempts (network, 5xx, refusals). Never reset: the history of trouble.
    pub failed: u64,
    /// Records currently refused by the platform.
    pub rejected: u64,
    /// Records waiting (not yet acknowledged with all photos).
    pub backlog: u64,
    /// Pass time of the oldest waiting record.
    pub oldest_pending: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_ack_at: Option<DateTime<Utc>>,
    pub logins: u64,
}

impl Kpis {
    /// Acknowledged ÷ captured (1.0 when nothing was captured). A crash between the
    /// platform's acknowledgement and the state write makes the resend count again, so the
    /// ratio is capped at 1.
    pub fn completeness(&self) -> f64 {
        if self.captured == 0 {
            1.0
        } else {
            (self.acknowledged as f64 / self.captured as f64).min(1.0)
        }
    }

    pub fn backlog_age(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.oldest_pending
            .map(|t| (now - t).to_std().unwrap_or(Duration::ZERO))
    }
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

fn save_state(path: &Path, s: &OutboxState) -> Result<(), RegulatorError> {
    let err = |e: std::io::Error| RegulatorError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(err)?;
    }
    let tmp = path.with_extension("state.tmp");
    let text = serde_json::to_vec(s).map_err(|e| RegulatorError::State {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&text).map_err(err)?;
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
    /// How often the ledger head is looked at when idle.
    pub poll: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl OutboxConfig {
    pub fn new(name: &str, data_dir: &Path, site: SiteFacts) -> OutboxConfig {
        OutboxConfig {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            site,
            lane_gates: HashMap::new(),
            live_window: Duration::from_secs(60),
            poll: Duration::from_millis(500),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
        }
    }
}

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
    })
}

pub(crate) struct Outbox {
    cfg: OutboxConfig,
    path: PathBuf,
    state: OutboxState,
    /// Waiting records keyed by (pass time, seq): the backlog order.
    pending: BTreeMap<(DateTime<Utc>, i64), PassRecord>,
    /// Refused in this run: skipped until the next start.
    parked: BTreeSet<i64>,
    kpis: Arc<Mutex<Kpis>>,
}

const SCAN_BATCH: usize = 1000;

impl Outbox {
    pub(crate) fn open(
        cfg: OutboxConfig,
        reader: &LedgerReader,
        kpis: Arc<Mutex<Kpis>>,
    ) -> Result<Outbox, RegulatorError> {
        let path = state_path(&cfg.data_dir, &cfg.name);
        let state = load_state(&path)?;
        let mut o = Outbox {
            cfg,
            path,
            state,
            pending: BTreeMap::new(),
            parked: BTreeSet::new(),
            kpis,
        };
        // Rebuild the waiting set from the ledger itself: nothing about a record but its
        // delivery progress is kept outside the ledger.
        let mut after = o.state.cursor;
        loop {
            let batch = reader.events_after(after, SCAN_BATCH)?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for e in &batch {
                o.consider(e);
            }
        }
        o.state.scanned = o.state.scanned.max(after);
        o.settle();
        o.save();
        Ok(o)
    }

    fn consider(&mut self, e: &EventRecord) {
        let Some(r) = pass_record(e, &self.cfg.site.enterprise, &self.cfg.lane_gates) else {
            return;
        };
        if e.seq > self.state.scanned {
            self.state.kpi.captured += 1;
        }
        if !self.state.done.contains(&e.seq) && e.seq > self.state.cursor {
            self.pending.insert((r.time, r.seq), r);
        }
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
                self.consider(e);
            }
            self.state.scanned = last;
            any = true;
        }
        if any {
            self.settle();
            self.save();
        }
        Ok(any)
    }

    /// The next record to send, if any.
    pub(crate) fn pick(&self, now: DateTime<Utc>) -> Option<PassRecord> {
        let live_from = now
            - chrono::Duration::from_std(self.cfg.live_window).unwrap_or(chrono::Duration::zero());
        let open = |(_, r): &(&(DateTime<Utc>, i64), &PassRecord)| !self.parked.contains(&r.seq);
        let live = self
            .pending
            .range((live_from, i64::MIN)..)
            .find(|x| open(x))
            .map(|(_, r)| r);
        match live {
            // The vehicle's own earlier records go first (entry before exit).
            Some(l) => self
                .pending
                .iter()
                .filter(|x| open(x))
                .find(|(_, r)| r.plate == l.plate)
                .map(|(_, r)| r.clone()),
            None => self
                .pending
                .iter()
                .find(|x| open(x))
                .map(|(_, r)| r.clone()),
        }
    }

    /// Moves the cursor up to just below the oldest unsettled seq.
    fn settle(&mut self) {
        let lowest = self
            .pending
            .values()
            .map(|r| r.seq)
            .min()
            .unwrap_or(i64::MAX);
        let cursor = self.state.scanned.min(lowest.saturating_sub(1));
        if cursor > self.state.cursor {
            self.state.cursor = cursor;
        }
        let c = self.state.cursor;
        self.state.done.retain(|s| *s > c);
        self.state.photos_sent.retain(|s, _| *s > c);
    }

    fn publish(&mut self) {
        let k = &mut self.state.kpi;
        k.backlog = self.pending.len() as u64;
        k.oldest_pending = self.pending.keys().next().map(|(t, _)| *t);
        k.rejected = self.state.rejected.len() as u64;
        if let Ok(mut g) = self.kpis.lock() {
            *g = k.clone();
        }
    }

    fn save(&mut self) {
        self.publish();
        if let Err(e) = save_state(&self.path, &self.state) {
            // Losing the state only means resending with the same serials; say so loudly.
            tracing::error!(destination = %self.cfg.name, error = %e, "cannot save outbox state");
        }
    }

    fn note_failure(&mut self, r: &PassRecord, e: &SendError) {
        self.state.kpi.failed += 1;
        self.state.kpi.last_error = Some(format!("{} ({}): {e}", r.serial, r.plate));
        self.state.kpi.last_error_at = Some(Utc::now());
        tracing::warn!(destination = %self.cfg.name, serial = %r.serial, plate = %r.plate,
            seq = r.seq, error = %e, "upload failed");
        if let SendError::Rejected(m) = e {
            self.state.rejected.insert(r.seq, m.clone());
            self.parked.insert(r.seq);
        }
        self.save();
    }

    /// Sends `r` and its photos. Ok(()) when all are acknowledged.
    pub(crate) async fn deliver(
        &mut self,
        client: &mut TcClient,
        ledger: &Ledger,
        r: &PassRecord,
    ) -> Result<(), SendError> {
        if !self.state.photos_sent.contains_key(&r.seq) {
            self.state.kpi.sent += 1;
            let res = client.send_record(&self.cfg.site, r).await;
            self.state.kpi.logins = client.logins;
            if let Err(e) = res {
                self.note_failure(r, &e);
                return Err(e);
            }
            self.state.photos_sent.insert(r.seq, 0);
            self.state.rejected.remove(&r.seq);
            self.state.kpi.acknowledged += 1;
            self.state.kpi.last_ack_at = Some(Utc::now());
            self.save();
        }
        let from = self.state.photos_sent.get(&r.seq).copied().unwrap_or(0);
        for (i, (role, hash)) in r.photos.iter().enumerate().skip(from) {
            match ledger.photos().get(hash) {
                Ok(bytes) => {
                    let res = client
                        .send_photo(&self.cfg.site, r, i + 1, role, &bytes)
                        .await;
                    self.state.kpi.logins = client.logins;
                    if let Err(e) = res {
                        self.note_failure(r, &e);
                        return Err(e);
                    }
                    self.state.kpi.photos_acknowledged += 1;
                }
                Err(e) => {
                    // Purged or lost evidence: the record stands without it (verify reports it).
                    tracing::warn!(destination = %self.cfg.name, serial = %r.serial, photo = %hash,
                        error = %e, "photo not readable; not uploaded");
                }
            }
            self.state.photos_sent.insert(r.seq, i + 1);
            self.save();
        }
        self.state.photos_sent.remove(&r.seq);
        self.state.done.insert(r.seq);
        self.pending.remove(&(r.time, r.seq));
        self.settle();
        self.save();
        tracing::debug!(destination = %self.cfg.name, serial = %r.serial, "delivered");
        Ok(())
    }
}

/// The delivery loop: scan, pick, deliver, back off on failure. Ends when `stop` turns true.
pub(crate) async fn run(
    cfg: OutboxConfig,
    mut client: TcClient,
    ledger: Ledger,
    kpis: Arc<Mutex<Kpis>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RegulatorError> {
    let reader = ledger.reader()?;
    let poll = cfg.poll;
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let name = cfg.name.clone();
    let mut ob = Outbox::open(cfg, &reader, kpis)?;
    tracing::info!(destination = %name, backlog = ob.pending.len(), cursor = ob.state.cursor,
        "regulator uplink started");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
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
        let wait = match ob.pick(Utc::now()) {
            Some(r) => match ob.deliver(&mut client, &ledger, &r).await {
                Ok(()) => {
                    backoff.reset();
                    continue;
                }
                Err(SendError::Rejected(_)) => Duration::ZERO,
                Err(SendError::Transient(_)) => backoff.next_delay(),
            },
            None => poll,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}
