//! `ecogate ledger verify`: walk the whole chain and every photo and name the first broken
//! link.

use super::chain::{self, Hash, RowFields, GENESIS};
use super::events::Purge;
use super::photos::{is_photo_hash, PhotoState, PhotoStore};
use super::store::{open_ro, ChainHead, PHOTOS_DIR};
use super::LedgerError;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// A head published earlier (by an uplink, or printed by `ledger head`). The chain must
    /// contain it unchanged; without it, removing the newest events cannot be detected.
    pub expect_head: Option<ChainHead>,
    /// Hash every photo file (default on; off for a quick chain-only check).
    pub skip_photos: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The row's content no longer matches its hash: it was edited.
    Changed,
    /// This seq is missing: the event was deleted.
    Deleted,
    /// The row is intact but not where it was written: `original_seq` is where it was (events
    /// reordered), or `None` when its predecessor is not the event it was chained to (the
    /// event before it was rewritten together with its hash, or replaced).
    Moved { original_seq: Option<i64> },
    /// This row was not written by the ledger: later rows are shifted by one.
    Inserted,
    /// The ledger ends before the head published earlier: newest events removed.
    Truncated { expected_seq: i64 },
    /// The event at the published head's seq has another hash: history was rewritten.
    HeadMismatch { expected: String },
    /// A photo named by the event is not in the photo store (and no purge removed it).
    PhotoMissing { hash: String },
    /// A photo file's content does not hash to the name the event gives it.
    PhotoChanged { hash: String, actual: String },
    /// The row cannot be read (bad hash length, bad photo list).
    Malformed(String),
    /// A registry table no longer matches what its `registry_change` events say: a record was
    /// edited, added or removed behind the ledger's back.
    RegistryEdited { registry: String, record: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    /// Event id when the row exists (empty for a deleted event).
    pub id: String,
    pub what: BreakKind,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = if self.id.is_empty() {
            format!("event seq {}", self.seq)
        } else {
            format!("event seq {} (id {})", self.seq, self.id)
        };
        match &self.what {
            BreakKind::Changed => write!(f, "{who}: content changed after it was recorded"),
            BreakKind::Deleted => write!(f, "{who}: deleted"),
            BreakKind::Moved {
                original_seq: Some(o),
            } => write!(f, "{who}: this is event seq {o} moved here (events reordered)"),
            BreakKind::Moved { original_seq: None } => write!(
                f,
                "{who}: not chained to the event before it (that event was rewritten or replaced)"
            ),
            BreakKind::Inserted => {
                write!(f, "{who}: inserted (the events after it are shifted by one)")
            }
            BreakKind::Truncated { expected_seq } => write!(
                f,
                "{who}: the ledger ends here but the published head is seq {expected_seq} (newest events removed)"
            ),
            BreakKind::HeadMismatch { expected } => write!(
                f,
                "{who}: hash differs from the published head {expected} (history rewritten)"
            ),
            BreakKind::PhotoMissing { hash } => write!(f, "{who}: photo {hash} is missing"),
            BreakKind::PhotoChanged { hash, actual } => write!(
                f,
                "{who}: photo file {hash}.jpg has been swapped or edited (its content hashes to {actual})"
            ),
            BreakKind::Malformed(m) => write!(f, "{who}: malformed row: {m}"),
            BreakKind::RegistryEdited { registry, record } => write!(
                f,
                "registry `{registry}`: record {record} differs from its registry_change events (the table was edited outside the ledger)"
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub events: u64,
    pub head: ChainHead,
    pub photos_checked: u64,
    /// Photos legitimately removed by a recorded purge.
    pub photos_purged: u64,
    /// The first broken link; `None` when the ledger verifies.
    pub broken: Option<Broken>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(
                f,
                "OK: {} events, head {}, {} photos checked, {} purged by retention",
                self.events, self.head, self.photos_checked, self.photos_purged
            ),
            Some(b) => write!(
                f,
                "BROKEN at {b} ({} events read before the break)",
                self.events
            ),
        }
    }
}

pub fn verify(data_dir: &Path) -> Result<VerifyReport, LedgerError> {
    verify_with(data_dir, &VerifyOptions::default())
}

pub fn verify_with(data_dir: &Path, opts: &VerifyOptions) -> Result<VerifyReport, LedgerError> {
    let conn = open_ro(data_dir)?;
    // One read transaction: a consistent snapshot even while the gateway keeps appending.
    conn.execute_batch("BEGIN")?;
    let mut stmt = conn.prepare(
        "SELECT seq, id, recorded_at, occurred_at, kind, body, photos, prev_hash, hash
         FROM events ORDER BY seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut prev: Hash = GENESIS;
    let mut expected_seq: i64 = 1;
    let mut events: u64 = 0;
    let mut head = ChainHead::EMPTY;
    let mut photo_refs: Vec<(i64, String, String)> = Vec::new();
    let mut purged: HashMap<String, i64> = HashMap::new();
    let mut last_ref: HashMap<String, i64> = HashMap::new();
    let report = |broken: Broken, events: u64, head: ChainHead| VerifyReport {
        events,
        head,
        photos_checked: 0,
        photos_purged: 0,
        broken: Some(broken),
    };

    while let Some(r) = rows.next()? {
        let seq: i64 = r.get(0)?;
        let cols = (|| -> Result<_, String> {
            Ok((
                r.get_ref(1)
                    .map_err(|e| e.to_string())?
                    .as_str()
                    .map_err(|e| e.to_string())?,
                r.get_ref(2)
                    .map_err(|e| e.to_string())?
                    .as_str()
                    .map_err(|e| e.to_string())?,
                r.get_ref(3)
                    .map_err(|e| e.to_string())?
                    .as_str()
                    .map_err(|e| e.to_string())?,
                r.get_ref(4)
                    .map_err(|e| e.to_string())?
                    .as_str()
                    .map_err(|e| e.to_string())?,
                r.get_ref(5)
                    .map_err(|e| e.to_string())?
                    .as_str()
                    .map_err(|e| e.to_string())?,
                r.get_ref(6)
                    .map_err(|e| e.to_string())?
                    .as_str()
                    .map_err(|e| e.to_string())?,
                r.get_ref(7)
                    .map_err(|e| e.to_string())?
                    .as_blob()
                    .map_err(|e| e.to_string())?,
                r.get_ref(8)
                    .map_err(|e| e.to_string())?
                    .as_blob()
                    .map_err(|e| e.to_string())?,
            ))
        })();
        let (id, recorded_at, occurred_at, kind, body, photos, stored_prev, stored_hash) =
            match cols {
                Ok(c) => c,
                Err(e) => {
                    return Ok(report(
                        Broken {
                            seq,
                            id: String::new(),
                            what: BreakKind::Malformed(format!("column type: {e}")),
                        },
                        events,
                        head,
                    ))
                }
            };
        let broken = |what| Broken {
            seq,
            id: id.to_string(),
            what,
        };

        let (Some(stored_prev), Some(stored_hash)) = (
            chain::hash_from_slice(stored_prev),
            chain::hash_from_slice(stored_hash),
        ) else {
            return Ok(report(
                broken(BreakKind::Malformed("hash is not 32 bytes".into())),
                events,
                head,
            ));
        };
        let fields = RowFields {
            seq,
            id,
            recorded_at,
            occurred_at,
            kind,
            body,
            photos,
        };
        let content_ok = chain::row_hash(&stored_prev, &fields) == stored_hash;

        if seq > expected_seq {
            // A plain DELETE leaves a gap in the gapless seq.
            return Ok(report(
                Broken {
                    seq: expected_seq,
                    id: String::new(),
                    what: BreakKind::Deleted,
                },
                events,
                head,
            ));
        }
        if seq < expected_seq || stored_prev != prev || !content_ok {
            if content_ok {
                return Ok(report(
                    broken(BreakKind::Moved { original_seq: None }),
                    events,
                    head,
                ));
            }
            // Ids carry the seq the writer gave the event: if the row still hashes under that
            // seq, it is an intact event that was renumbered.
            let original = id
                .rsplit('-')
                .next()
                .and_then(|s| s.parse::<i64>().ok())
                .filter(|o| *o != seq)
                .filter(|o| {
                    chain::row_hash(&stored_prev, &RowFields { seq: *o, ..fields }) == stored_hash
                });
            let what = match original {
                Some(o) if o == seq - 1 => {
                    return Ok(report(
                        Broken {
                            seq: seq - 1,
                            id: String::new(),
                            what: BreakKind::Inserted,
                        },
                        events,
                        head,
                    ))
                }
                Some(o) if o == seq + 1 && !hash_exists(&conn, &stored_prev)? => {
                    // Its predecessor is nowhere in the ledger: it was deleted.
                    return Ok(report(
                        Broken {
                            seq,
                            id: String::new(),
                            what: BreakKind::Deleted,
                        },
                        events,
                        head,
                    ));
                }
                Some(o) => BreakKind::Moved {
                    original_seq: Some(o),
                },
                None => BreakKind::Changed,
            };
            return Ok(report(broken(what), events, head));
        }

        if photos != "[]" {
            match serde_json::from_str::<Vec<String>>(photos) {
                Ok(list) => {
                    for h in list {
                        last_ref.insert(h.clone(), seq);
                        photo_refs.push((seq, id.to_string(), h));
                    }
                }
                Err(e) => {
                    return Ok(report(
                        broken(BreakKind::Malformed(format!("photo list: {e}"))),
                        events,
                        head,
                    ))
                }
            }
        }
        if kind == "purge" {
            // The purge body is covered by the chain, so it cannot excuse photos it did not remove.
            if let Ok(super::events::EventBody::Purge(Purge { photos, .. })) =
                serde_json::from_str(body)
            {
                for h in photos {
                    purged.insert(h, seq);
                }
            }
        }
        if let Some(exp) = opts.expect_head {
            if seq == exp.seq && stored_hash != exp.hash {
                return Ok(report(
                    broken(BreakKind::HeadMismatch {
                        expected: exp.to_string(),
                    }),
                    events,
                    head,
                ));
            }
        }

        prev = stored_hash;
        head = ChainHead {
            seq,
            hash: stored_hash,
        };
        events += 1;
        expected_seq += 1;
    }
    drop(rows);

    if let Some(exp) = opts.expect_head {
        if head.seq < exp.seq {
            return Ok(report(
                Broken {
                    seq: head.seq + 1,
                    id: String::new(),
                    what: BreakKind::Truncated {
                        expected_seq: exp.seq,
                    },
                },
                events,
                head,
            ));
        }
    }

    let mut checked = 0u64;
    let mut purged_count = 0u64;
    if !opts.skip_photos {
        let store = PhotoStore::new(data_dir.join(PHOTOS_DIR));
        let mut seen: HashSet<&str> = HashSet::new();
        for (seq, id, h) in &photo_refs {
            if !seen.insert(h.as_str()) {
                continue;
            }
            let bad = |what| Broken {
                seq: *seq,
                id: id.clone(),
                what,
            };
            if !is_photo_hash(h) {
                return Ok(report(
                    bad(BreakKind::Malformed(format!("photo hash `{h}`"))),
                    events,
                    head,
                ));
            }
            match store.check(h) {
                PhotoState::Ok => checked += 1,
                // Excused only when the purge came after every event that names the photo.
                PhotoState::Missing if purged.get(h).is_some_and(|p| Some(p) > last_ref.get(h)) => {
                    purged_count += 1
                }
                PhotoState::Missing => {
                    return Ok(report(
                        bad(BreakKind::PhotoMissing { hash: h.clone() }),
                        events,
                        head,
                    ))
                }
                PhotoState::Changed { actual } => {
                    return Ok(report(
                        bad(BreakKind::PhotoChanged {
                            hash: h.clone(),
                            actual,
                        }),
                        events,
                        head,
                    ))
                }
            }
        }
    }
    if let Some(what) = registry_edited(&conn)? {
        return Ok(VerifyReport {
            events,
            head,
            photos_checked: checked,
            photos_purged: purged_count,
            broken: Some(Broken {
                seq: head.seq,
                id: String::new(),
                what,
            }),
        });
    }
    Ok(VerifyReport {
        events,
        head,
        photos_checked: checked,
        photos_purged: purged_count,
        broken: None,
    })
}

/// The registry tables hold only each record's latest version; the chain holds every change.
/// Replaying the changes must give the tables back, record for record.
fn registry_edited(conn: &rusqlite::Connection) -> Result<Option<BreakKind>, LedgerError> {
    use crate::vehicle::RegistryKind;
    let far = chrono::Utc::now() + chrono::Duration::days(365 * 100);
    for kind in [
        RegistryKind::Transport,
        RegistryKind::InPlant,
        RegistryKind::NonRoad,
    ] {
        let table = super::registry::list(conn, kind)?;
        let history = super::registry::as_of(conn, kind, far)?;
        let describe = |r: &[(String, String)]| {
            let key: Vec<&str> = r.iter().take(2).map(|(_, v)| v.as_str()).collect();
            format!("`{}`", key.join(" "))
        };
        let differs = table
            .iter()
            .zip(history.iter())
            .find(|(t, h)| t != h)
            .map(|(t, _)| describe(t))
            .or_else(|| {
                // One side has records the other lacks.
                let longer = if table.len() > history.len() {
                    &table
                } else {
                    &history
                };
                longer
                    .get(table.len().min(history.len()))
                    .map(|r| describe(r))
            });
        if let Some(record) = differs {
            return Ok(Some(BreakKind::RegistryEdited {
                registry: kind.name().to_string(),
                record,
            }));
        }
    }
    Ok(None)
}

fn hash_exists(conn: &rusqlite::Connection, h: &Hash) -> Result<bool, LedgerError> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row(
            "SELECT 1 FROM events WHERE hash = ?1 LIMIT 1",
            [&h[..]],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}
