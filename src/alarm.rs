//! The alarm board: which alarms are active right now, how severe, and who acknowledged them.
//!
//! Every raise, clear and acknowledgement is a ledger event first (`alarm`, `alarm_ack`); the
//! board is the live view built from the same facts, for the HTTP API and MQTT. An alarm stays
//! on the board until its condition has cleared *and* an operator has acknowledged it, in
//! either order (so a short outage in the night is still seen in the morning); `info` alarms
//! need no acknowledgement and leave the board when they clear. Severities: `docs/mqtt.md`.
//!
//! At start the board is rebuilt from the ledger ([`AlarmBoard::restore`]): alarms that were
//! raised when the gateway stopped are closed with a clear recorded at the restart (the
//! process that watched the condition is gone; its monitor raises it again if it persists),
//! and everything not yet acknowledged stays on the board — a restart never hides an alarm
//! nobody has seen.

use crate::health::Alarm;
use crate::ledger::events::{Alarm as AlarmBody, AlarmAck, EventBody};
use crate::ledger::Ledger;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// Severity of each alarm code; codes not listed (a site's own lane machines may raise any
/// code) are warnings. Kept in step with the table in `docs/mqtt.md` by a test.
pub const SEVERITIES: &[(&str, Severity)] = &[
    ("ups_battery_low", Severity::Critical),
    ("ledger_write_failed", Severity::Critical),
    ("disk_space", Severity::Critical),
    ("power_loss", Severity::Critical),
    ("machine_loop", Severity::Critical),
    ("ups_on_battery", Severity::Warning),
    ("device_offline", Severity::Warning),
    ("device_command_failed", Severity::Warning),
    ("camera_silent", Severity::Warning),
    ("scale_stuck", Severity::Warning),
    ("upload_backlog", Severity::Warning),
    ("clock_drift", Severity::Warning),
    ("platform_policy_garbled", Severity::Warning),
    ("lane_stuck", Severity::Warning),
    ("weight_missing", Severity::Warning),
    ("weigh_timeout", Severity::Info),
    ("no_plate", Severity::Info),
    ("cargo_not_declared", Severity::Info),
];

/// How far back [`AlarmBoard::restore`] reads: an alarm left unacknowledged for longer than
/// this is in the ledger's history, not on the board.
pub const RESTORE_WINDOW: chrono::Duration = chrono::Duration::days(90);

pub fn severity(code: &str) -> Severity {
    SEVERITIES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, s)| *s)
        .unwrap_or(Severity::Warning)
}

/// One alarm on the board.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActiveAlarm {
    pub source: String,
    pub code: String,
    pub severity: Severity,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
    /// false once the condition cleared (the alarm waits for its acknowledgement).
    pub raised: bool,
    pub raised_at: DateTime<Utc>,
    pub cleared_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl ActiveAlarm {
    pub fn acknowledged(&self) -> bool {
        self.acknowledged_by.is_some()
    }

    /// Done: nothing left to show.
    fn finished(&self) -> bool {
        !self.raised && (self.acknowledged() || self.severity == Severity::Info)
    }
}

/// A change on the board: the alarm as it is now, or `removed` when it left the board.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmChange {
    pub source: String,
    pub code: String,
    /// `None`: the alarm left the board (cleared and acknowledged).
    pub alarm: Option<ActiveAlarm>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AlarmError {
    #[error("no alarm `{code}` from `{source_name}` is on the board")]
    NotFound { source_name: String, code: String },
    #[error("alarm `{code}` from `{source_name}` was already acknowledged by {by}")]
    AlreadyAcknowledged {
        source_name: String,
        code: String,
        by: String,
    },
    #[error("an operator identity is required to acknowledge an alarm")]
    NoOperator,
    #[error("acknowledgement not recorded in the ledger: {0}")]
    Ledger(String),
}

type Key = (String, String);

struct Inner {
    ledger: Ledger,
    alarms: Mutex<BTreeMap<Key, ActiveAlarm>>,
    /// Serialises ledger append + board update, so the board applies facts in ledger order.
    writer: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<AlarmChange>,
}

/// Cheap to clone; every clone is the same board.
#[derive(Clone)]
pub struct AlarmBoard {
    inner: Arc<Inner>,
}

impl AlarmBoard {
    pub fn new(ledger: Ledger) -> AlarmBoard {
        let (changes, _) = broadcast::channel(256);
        AlarmBoard {
            inner: Arc::new(Inner {
                ledger,
                alarms: Mutex::new(BTreeMap::new()),
                writer: tokio::sync::Mutex::new(()),
                changes,
            }),
        }
    }

    /// Alarms on the board, most severe first, then oldest first.
    pub fn active(&self) -> Vec<ActiveAlarm> {
        let mut v: Vec<ActiveAlarm> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| {
            b.severity
                .cmp(&a.severity)
                .then(a.raised_at.cmp(&b.raised_at))
        });
        v
    }

    pub fn get(&self, source: &str, code: &str) -> Option<ActiveAlarm> {
        self.lock()
            .get(&(source.to_string(), code.to_string()))
            .cloned()
    }

    /// Every change from now on. A receiver that lags gets `Lagged` and should re-read
    /// [`AlarmBoard::active`].
    pub fn subscribe(&self) -> broadcast::Receiver<AlarmChange> {
        self.inner.changes.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, ActiveAlarm>> {
        self.inner.alarms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a raise or clear in the ledger, then updates the board. A clear of an alarm that
    /// is not raised, or a raise of one already raised, is still recorded (it is a fact the
    /// source reported) but changes nothing on the board.
    pub async fn record(&self, a: Alarm) {
        let _w = self.inner.writer.lock().await;
        if a.raised {
            tracing::warn!(source = %a.source, code = %a.code, message = %a.message, "alarm raised");
        } else {
            tracing::info!(source = %a.source, code = %a.code, "alarm cleared");
        }
        let body = EventBody::Alarm(AlarmBody {
            source: a.source.clone(),
            code: a.code.clone(),
            message: a.message.clone(),
            active: a.raised,
            lane: a.lane.clone(),
        });
        if let Err(e) = self.inner.ledger.append(body, Vec::new(), a.at).await {
            // Still shown: an alarm nobody sees is worse than one missing from the ledger.
            tracing::error!(error = %e, "alarm not recorded in the ledger");
        }
        self.apply(a);
    }

    fn apply(&self, a: Alarm) {
        let key = (a.source.clone(), a.code.clone());
        let change = {
            let mut map = self.lock();
            match (map.get_mut(&key), a.raised) {
                (Some(cur), true) => {
                    if cur.raised {
                        return;
                    }
                    // Back again before anyone acknowledged the last episode: one alarm, raised.
                    cur.raised = true;
                    cur.raised_at = a.at;
                    cur.cleared_at = None;
                    cur.message = a.message;
                    cur.acknowledged_by = None;
                    cur.acknowledged_at = None;
                    cur.note.clear();
                    Some(cur.clone())
                }
                (Some(cur), false) => {
                    if !cur.raised {
                        return;
                    }
                    cur.raised = false;
                    cur.cleared_at = Some(a.at);
                    if cur.finished() {
                        map.remove(&key);
                        None
                    } else {
                        Some(cur.clone())
                    }
                }
                (None, true) => {
                    let new = ActiveAlarm {
                        source: a.source,
                        code: a.code.clone(),
                        severity: severity(&a.code),
                        message: a.message,
                        lane: a.lane,
                        raised: true,
                        raised_at: a.at,
                        cleared_at: None,
                        acknowledged_by: None,
                        acknowledged_at: None,
                        note: String::new(),
                    };
                    map.insert(key.clone(), new.clone());
                    Some(new)
                }
                (None, false) => return,
            }
        };
        let _ = self.inner.changes.send(AlarmChange {
            source: key.0,
            code: key.1,
            alarm: change,
        });
    }

    /// An operator acknowledges an alarm on the board: recorded in the ledger (`alarm_ack`),
    /// then the board shows who and when; a cleared alarm leaves the board.
    pub async fn acknowledge(
        &self,
        source: &str,
        code: &str,
        operator: &str,
        note: &str,
    ) -> Result<ActiveAlarm, AlarmError> {
        let operator = operator.trim();
        if operator.is_empty() {
            return Err(AlarmError::NoOperator);
        }
        let key = (source.to_string(), code.to_string());
        let _w = self.inner.writer.lock().await;
        match self.lock().get(&key) {
            None => {
                return Err(AlarmError::NotFound {
                    source_name: key.0,
                    code: key.1,
                })
            }
            Some(a) => {
                if let Some(by) = &a.acknowledged_by {
                    return Err(AlarmError::AlreadyAcknowledged {
                        source_name: key.0,
                        code: key.1,
                        by: by.clone(),
                    });
                }
            }
        }
        let now = Utc::now();
        let body = EventBody::AlarmAck(AlarmAck {
            source: key.0.clone(),
            code: key.1.clone(),
            operator: operator.to_string(),
            note: note.trim().to_string(),
        });
        self.inner
            .ledger
            .append(body, Vec::new(), now)
            .await
            .map_err(|e| AlarmError::Ledger(e.to_string()))?;
        tracing::info!(source, code, operator, "alarm acknowledged");
        // Only this writer removes entries, and it holds the writer lock.
        self.apply_ack(&key, operator, note.trim(), now)
            .ok_or(AlarmError::NotFound {
                source_name: key.0,
                code: key.1,
            })
    }

    /// Marks the alarm acknowledged (leaving the board if it has cleared) and announces it.
    fn apply_ack(
        &self,
        key: &Key,
        operator: &str,
        note: &str,
        at: DateTime<Utc>,
    ) -> Option<ActiveAlarm> {
        let (acked, remains) = {
            let mut map = self.lock();
            let a = map.get_mut(key)?;
            a.acknowledged_by = Some(operator.to_string());
            a.acknowledged_at = Some(at);
            a.note = note.to_string();
            let acked = a.clone();
            if acked.finished() {
                map.remove(key);
                (acked, false)
            } else {
                (acked, true)
            }
        };
        let _ = self.inner.changes.send(AlarmChange {
            source: key.0.clone(),
            code: key.1.clone(),
            alarm: remains.then(|| acked.clone()),
        });
        Some(acked)
    }

    /// Rebuilds the board from the ledger's `alarm` and `alarm_ack` events of the last
    /// [`RESTORE_WINDOW`], in ledger order, then records a clear for every alarm still raised
    /// (message: the restart) so the ledger's raise/clear pairs stay balanced. Call once at
    /// start, before the monitors report. Returns how many alarms are on the board.
    pub async fn restore(&self) -> Result<usize, crate::ledger::LedgerError> {
        let dir = self.inner.ledger.data_dir().to_path_buf();
        let now = Utc::now();
        let mut events = tokio::task::spawn_blocking(move || {
            crate::ledger::LedgerReader::open(&dir)?.events_between(
                &["alarm", "alarm_ack"],
                now - RESTORE_WINDOW,
                now + chrono::Duration::minutes(1),
            )
        })
        .await
        .map_err(|e| crate::ledger::LedgerError::Write(format!("reading alarms: {e}")))??;
        events.sort_by_key(|e| e.seq);
        for e in events {
            match e.body {
                EventBody::Alarm(a) => self.apply(Alarm {
                    source: a.source,
                    code: a.code,
                    message: a.message,
                    raised: a.active,
                    lane: a.lane,
                    at: e.occurred_at,
                }),
                EventBody::AlarmAck(k) => {
                    self.apply_ack(&(k.source, k.code), &k.operator, &k.note, e.occurred_at);
                }
                _ => {}
            }
        }
        let stale: Vec<ActiveAlarm> = self.active().into_iter().filter(|a| a.raised).collect();
        for a in stale {
            self.record(Alarm {
                source: a.source,
                code: a.code,
                message: "gateway restarted; raised again if the condition persists".into(),
                raised: false,
                lane: a.lane,
                at: Utc::now(),
            })
            .await;
        }
        Ok(self.lock().len())
    }

    /// The channel the rest of the site raises alarms on; a task records each in order.
    pub fn spawn_recorder(&self) -> mpsc::UnboundedSender<Alarm> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Alarm>();
        let board = self.clone();
        tokio::spawn(async move {
            while let Some(a) = rx.recv().await {
                board.record(a).await;
            }
        });
        tx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(dir: &std::path::Path) -> Vec<String> {
        let r = crate::ledger::LedgerReader::open(dir).unwrap();
        r.events_after(0, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }

    #[tokio::test]
    async fn clear_then_ack_and_ack_then_clear_both_end_the_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let board = AlarmBoard::new(Ledger::open(dir.path()).unwrap());
        let mut changes = board.subscribe();

        board
            .record(Alarm::device("ups", "ups_on_battery", "load 40 %", true))
            .await;
        let a = board.get("device:ups", "ups_on_battery").unwrap();
        assert_eq!(a.severity, Severity::Warning);
        assert!(a.raised && !a.acknowledged());
        // Cleared but not acknowledged: stays, marked cleared.
        board
            .record(Alarm::device("ups", "ups_on_battery", "", false))
            .await;
        let a = board.get("device:ups", "ups_on_battery").unwrap();
        assert!(!a.raised && a.cleared_at.is_some());
        let acked = board
            .acknowledge("device:ups", "ups_on_battery", "wang", "mains back")
            .await
            .unwrap();
        assert_eq!(acked.acknowledged_by.as_deref(), Some("wang"));
        assert!(board.active().is_empty());

        // Ack while raised: stays (acknowledged) until it clears.
        board
            .record(Alarm::device("io1", "device_offline", "timeout", true))
            .await;
        board
            .acknowledge("device:io1", "device_offline", "li", "")
            .await
            .unwrap();
        let a = board.get("device:io1", "device_offline").unwrap();
        assert!(a.raised && a.acknowledged());
        assert_eq!(
            board
                .acknowledge("device:io1", "device_offline", "zhao", "")
                .await,
            Err(AlarmError::AlreadyAcknowledged {
                source_name: "device:io1".into(),
                code: "device_offline".into(),
                by: "li".into()
            })
        );
        board
            .record(Alarm::device("io1", "device_offline", "back", false))
            .await;
        assert!(board.active().is_empty());

        let mut seen = Vec::new();
        while let Ok(c) = changes.try_recv() {
            seen.push((c.code, c.alarm.map(|a| (a.raised, a.acknowledged()))));
        }
        assert_eq!(
            seen,
            vec![
                ("ups_on_battery".to_string(), Some((true, false))),
                ("ups_on_battery".to_string(), Some((false, false))),
                ("ups_on_battery".to_string(), None),
                ("device_offline".to_string(), Some((true, false))),
                ("device_offline".to_string(), Some((true, true))),
                ("device_offline".to_string(), None),
            ]
        );
        let k = kinds(dir.path());
        assert_eq!(
            k,
            vec!["alarm", "alarm", "alarm_ack", "alarm", "alarm_ack", "alarm"]
        );
    }

    fn site(code: &str, raised: bool) -> Alarm {
        Alarm {
            source: "site".into(),
            code: code.into(),
            message: String::new(),
            raised,
            lane: None,
            at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_restart_keeps_unacknowledged_alarms_and_closes_raised_ones() {
        let dir = tempfile::tempdir().unwrap();
        {
            let board = AlarmBoard::new(Ledger::open(dir.path()).unwrap());
            // Raised and acknowledged, still raised at the stop.
            board
                .record(Alarm::device("io1", "device_offline", "timeout", true))
                .await;
            board
                .acknowledge("device:io1", "device_offline", "li", "")
                .await
                .unwrap();
            // Raised, never acknowledged.
            board
                .record(Alarm::device("ups", "ups_on_battery", "load 40 %", true))
                .await;
            // Cleared, never acknowledged.
            board.record(site("upload_backlog", true)).await;
            board.record(site("upload_backlog", false)).await;
            // Over: cleared and acknowledged.
            board.record(site("clock_drift", true)).await;
            board
                .acknowledge("site", "clock_drift", "wang", "")
                .await
                .unwrap();
            board.record(site("clock_drift", false)).await;
            // Info, still raised.
            board.record(Alarm::lane("L1", "no_plate", true)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let board = AlarmBoard::new(Ledger::open(dir.path()).unwrap());
        assert_eq!(board.restore().await.unwrap(), 2);
        let mut on: Vec<_> = board
            .active()
            .into_iter()
            .map(|a| (a.code.clone(), a.raised, a.acknowledged()))
            .collect();
        on.sort();
        assert_eq!(
            on,
            vec![
                ("upload_backlog".to_string(), false, false),
                ("ups_on_battery".to_string(), false, false),
            ]
        );
        // Every raise in the ledger has its clear: three restart clears were recorded.
        let r = crate::ledger::LedgerReader::open(dir.path()).unwrap();
        let alarms: Vec<_> = r
            .events_after(0, 1000)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.body {
                EventBody::Alarm(a) => Some(a),
                _ => None,
            })
            .collect();
        let raises = alarms.iter().filter(|a| a.active).count();
        assert_eq!(raises, alarms.len() - raises);
        assert!(alarms
            .iter()
            .rev()
            .take(3)
            .all(|a| !a.active && a.message.contains("restarted")));
        // The monitor raises the UPS again: the same alarm is raised once more, unacknowledged.
        board
            .record(Alarm::device("ups", "ups_on_battery", "load 41 %", true))
            .await;
        let a = board.get("device:ups", "ups_on_battery").unwrap();
        assert!(a.raised && !a.acknowledged());
        // A second restart with nothing raised records nothing more.
        let before = r.events_after(0, 1000).unwrap().len();
        board
            .acknowledge("device:ups", "ups_on_battery", "li", "")
            .await
            .unwrap();
        board
            .record(Alarm::device("ups", "ups_on_battery", "", false))
            .await;
        drop(board);
        let board = AlarmBoard::new(Ledger::open(dir.path()).unwrap());
        assert_eq!(board.restore().await.unwrap(), 1);
        assert_eq!(r.events_after(0, 1000).unwrap().len(), before + 2);
    }

    #[tokio::test]
    async fn refusals_record_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let board = AlarmBoard::new(Ledger::open(dir.path()).unwrap());
        assert!(matches!(
            board
                .acknowledge("device:x", "device_offline", "wang", "")
                .await,
            Err(AlarmError::NotFound { .. })
        ));
        board
            .record(Alarm::device("x", "device_offline", "", true))
            .await;
        assert_eq!(
            board
                .acknowledge("device:x", "device_offline", "  ", "")
                .await,
            Err(AlarmError::NoOperator)
        );
        assert_eq!(kinds(dir.path()), vec!["alarm"]);
    }

    #[tokio::test]
    async fn info_alarms_leave_when_cleared_and_severe_ones_sort_first() {
        let dir = tempfile::tempdir().unwrap();
        let board = AlarmBoard::new(Ledger::open(dir.path()).unwrap());
        board.record(Alarm::lane("L1", "no_plate", true)).await;
        board
            .record(Alarm::device("ups", "ups_battery_low", "", true))
            .await;
        let codes: Vec<_> = board.active().into_iter().map(|a| a.code).collect();
        assert_eq!(codes, vec!["ups_battery_low", "no_plate"]);
        board.record(Alarm::lane("L1", "no_plate", false)).await;
        assert!(board.get("lane:L1", "no_plate").is_none());
        assert_eq!(severity("some_site_code"), Severity::Warning);
    }
}
